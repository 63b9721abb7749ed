//! Running every workload on one backend, ours and raw, repetition by repetition.

use std::time::{Duration, Instant};

use stream_runtime::{Service, ServiceConfig};

use crate::args::Workload;
use crate::raw::Raw;
use crate::report::{Figure, Row};
use crate::stats::{Percentiles, Summary};
use crate::{counting, ours, BoxError, Kind, PAYLOAD};

const UNAVAILABLE: &str = "backend unavailable";
/// Batch size of the batched publish.
const BATCH: usize = 100;
/// Keys of the ordered-consume workload's messages.
const ORDERED_KEYS: usize = 100;
/// Messages per call of the batch handler in the consume workload.
const BATCH_SIZE: usize = 100;

/// Concurrency of the consumer in the latency workload.
const E2E_CONCURRENCY: usize = 8;

/// What one run measures.
#[derive(Clone, Debug)]
pub struct Plan {
    pub quick: bool,
    pub max_reps: usize,
    /// Time after which no further repetition of one figure starts.
    pub budget: Duration,
    pub publish_one: usize,
    pub publish_batch: usize,
    pub backlogs: Vec<usize>,
    pub concurrencies: Vec<usize>,
    pub e2e_rate: u32,
    pub e2e_seconds: u32,
    /// A consume run stops timing after this long even if the backlog is not drained.
    pub cap: Duration,
    pub workloads: Vec<Workload>,
    /// Wrap the backend to count claim and ack calls (`--count-calls`).
    pub count_calls: bool,
    /// Run every path once, unrecorded, before measuring (`--no-warmup` skips it, to
    /// profile one workload alone).
    pub warmup: bool,
    /// Measure the raw ceilings too (`--no-raw` skips them, to profile ours alone).
    pub raw: bool,
    /// The engine's span level (`--span-level`).
    pub span_level: stream_runtime::SpanLevel,
    /// Consume with the lease heartbeat on (`--heartbeat`).
    pub heartbeat: bool,
    /// The latency workload's poll interval (`--poll-interval`).
    pub poll_interval: Duration,
}

impl Plan {
    pub fn new(quick: bool) -> Plan {
        Plan {
            quick,
            max_reps: if quick { 1 } else { 5 },
            budget: Duration::from_secs(if quick { 0 } else { 12 }),
            publish_one: if quick { 200 } else { 1_000 },
            publish_batch: if quick { 2_000 } else { 10_000 },
            backlogs: if quick {
                vec![1_000, 10_000]
            } else {
                vec![10_000, 100_000]
            },
            concurrencies: vec![1, 8, 64],
            e2e_rate: 500,
            e2e_seconds: if quick { 1 } else { 3 },
            cap: Duration::from_secs(if quick { 2 } else { 6 }),
            workloads: Workload::ALL.to_vec(),
            count_calls: false,
            span_level: stream_runtime::SpanLevel::Info,
            warmup: true,
            raw: true,
            heartbeat: false,
            poll_interval: ours::POLL_INTERVAL,
        }
    }

    fn wants(&self, workload: Workload) -> bool {
        self.workloads.contains(&workload)
    }
}

/// Repetitions of one figure: up to `max_reps`, stopping early once the budget is spent
/// (after at least two, or one when only one is asked for).
struct Reps {
    start: Instant,
    done: usize,
    max: usize,
    budget: Duration,
}

impl Reps {
    fn new(plan: &Plan) -> Reps {
        Reps {
            start: Instant::now(),
            done: 0,
            max: plan.max_reps,
            budget: plan.budget,
        }
    }

    fn next(&mut self) -> Option<usize> {
        if self.done >= self.max {
            return None;
        }
        if self.done >= 2.min(self.max) {
            let per_rep = self.start.elapsed() / self.done as u32;
            if self.start.elapsed() + per_rep > self.budget {
                return None;
            }
        }
        self.done += 1;
        Some(self.done - 1)
    }
}

fn throughput(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

struct Collected {
    ours: Vec<f64>,
    raw: Vec<f64>,
    errors: Vec<String>,
    /// The fewest messages one repetition handled (consume runs stop at a time cap).
    fewest: Option<usize>,
}

impl Collected {
    fn new() -> Self {
        Collected {
            ours: Vec::new(),
            raw: Vec::new(),
            errors: Vec::new(),
            fewest: None,
        }
    }

    /// Records a run that handled some messages in some time.
    fn push_counted(
        &mut self,
        which: &str,
        r: Result<(usize, Duration), BoxError>,
        into_raw: bool,
    ) {
        if let Ok((n, _)) = &r {
            self.fewest = Some(self.fewest.map_or(*n, |f| f.min(*n)));
        }
        self.push(
            which,
            r.as_ref().map_or(0, |(n, _)| *n),
            r.map(|(_, d)| d),
            into_raw,
        );
    }

    fn push(&mut self, which: &str, n: usize, r: Result<Duration, BoxError>, into_raw: bool) {
        match r {
            Ok(d) if into_raw => self.raw.push(throughput(n, d)),
            Ok(d) => self.ours.push(throughput(n, d)),
            Err(e) => self.errors.push(format!("{which}: {e}")),
        }
    }

    fn error(&self) -> Option<String> {
        (!self.errors.is_empty()).then(|| self.errors.join("; "))
    }
}

fn url_for(kind: Kind, dir: &std::path::Path, tag: &str) -> (String, String) {
    match kind {
        Kind::Memory => ("memory://".to_owned(), String::new()),
        Kind::Sqlite => (
            format!("sqlite://{}", dir.join("ours.db").display()),
            format!("sqlite://{}", dir.join("raw.db").display()),
        ),
        Kind::Postgres => {
            let base = std::env::var("STREAMS_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
            let sep = if base.contains('?') { '&' } else { '?' };
            (format!("{base}{sep}schema=bench_{tag}"), base)
        }
        Kind::Redis => {
            let base = std::env::var("STREAMS_TEST_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
            (base.clone(), base)
        }
        Kind::Nats => {
            let base = std::env::var("STREAMS_TEST_NATS_URL")
                .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
            (base.clone(), base)
        }
    }
}

/// Every workload on one backend.
pub async fn run_backend(
    kind: Kind,
    plan: &Plan,
    tag: &str,
    emit: &mut dyn FnMut(Row),
) -> Result<(), BoxError> {
    let dir = std::env::temp_dir().join(format!("stream-bench-{tag}"));
    std::fs::create_dir_all(&dir)?;
    let (ours_url, raw_url) = url_for(kind, &dir, tag);
    let app = format!("bench{tag}");
    // Without the backend (not in this build, say) the raw ceilings are still measured.
    let config = ServiceConfig::default()
        .app(app.clone())
        .span_level(plan.span_level);
    let mut counters = None;
    let service = match stream_runtime::backend::connect(&ours_url).await {
        Ok(backend) if plan.count_calls => {
            let (backend, c) = counting::Counters::wrap(backend);
            counters = Some(c);
            Some(Service::from_shared(backend, config))
        }
        Ok(backend) => Some(Service::from_shared(backend, config)),
        Err(e) => {
            eprintln!("== {}: our backend is unavailable: {e}", kind.name());
            None
        }
    };
    let mut raw = Raw::connect(kind, &raw_url, tag)
        .await
        .map_err(|e| format!("connecting the raw {} client: {e}", kind.name()))?;
    let durability = raw.durability().await?;
    eprintln!("== {}: durability {durability}", kind.name());
    let payload = vec![0xa5u8; PAYLOAD];
    let scale = kind.scale();

    // Warm-up: every path once at a small size, not recorded.
    if plan.warmup {
        let t = Instant::now();
        if let Some(service) = &service {
            ours::publish_one(service, "warmup", 50 * scale, &payload).await?;
            ours::publish_batch(service, "warmup", 1_000 * scale, BATCH, &payload).await?;
            let n = 1_000 * scale + 50 * scale;
            ours::consume(service, "warmup", "warmup", n, 8, plan.cap).await?;
        }
        if plan.raw {
            raw.publish_one(50 * scale, &payload).await?;
            raw.publish_batch(1_000 * scale, BATCH, &payload).await?;
            raw.consume(1_000 * scale, 8, &payload, plan.cap).await?;
        }
        if plan.wants(Workload::E2e) {
            if let Some(service) = &service {
                ours::e2e(
                    service,
                    "warmup-e2e",
                    plan.e2e_rate,
                    100,
                    E2E_CONCURRENCY,
                    plan.poll_interval,
                    &payload,
                )
                .await?;
            }
            if plan.raw {
                raw.e2e(plan.e2e_rate, 100).await?;
            }
        }
        eprintln!("   warm-up done in {:.1?}", t.elapsed());
    }

    let row = |workload: String,
               label: String,
               count: usize,
               concurrency: Option<usize>,
               batch: Option<usize>,
               reps: usize,
               c: Collected| Row {
        backend: kind,
        workload,
        label,
        count,
        concurrency,
        batch,
        reps,
        durability: durability.clone(),
        error: c.error(),
        fewest_handled: c.fewest,
        calls: None,
        rss_kib: None,
        figure: Figure::Throughput {
            ours: Summary::of(&c.ours),
            raw: Summary::of(&c.raw),
        },
    };

    if plan.wants(Workload::Publish) {
        let n = plan.publish_one * scale;
        let mut c = Collected::new();
        let mut reps = Reps::new(plan);
        while let Some(rep) = reps.next() {
            let stream = format!("publish-one-{rep}");
            c.push(
                "ours",
                n,
                match &service {
                    Some(s) => ours::publish_one(s, &stream, n, &payload).await,
                    None => Err(UNAVAILABLE.into()),
                },
                false,
            );
            if plan.raw {
                c.push("raw", n, raw.publish_one(n, &payload).await, true);
            }
        }
        let reps = reps.done;
        emit(row(
            "publish_one".into(),
            "publish, one at a time".into(),
            n,
            None,
            Some(1),
            reps,
            c,
        ));
    }

    if plan.wants(Workload::Batch) {
        let n = plan.publish_batch * scale;
        let mut c = Collected::new();
        let mut reps = Reps::new(plan);
        while let Some(rep) = reps.next() {
            let stream = format!("publish-batch-{rep}");
            c.push(
                "ours",
                n,
                match &service {
                    Some(s) => ours::publish_batch(s, &stream, n, BATCH, &payload).await,
                    None => Err(UNAVAILABLE.into()),
                },
                false,
            );
            if plan.raw {
                c.push("raw", n, raw.publish_batch(n, BATCH, &payload).await, true);
            }
        }
        let reps = reps.done;
        emit(row(
            format!("publish_batch{BATCH}"),
            format!("publish, batches of {BATCH}"),
            n,
            None,
            Some(BATCH),
            reps,
            c,
        ));
    }

    if plan.wants(Workload::Consume) {
        for &backlog in &plan.backlogs {
            let stream = format!("backlog-{backlog}");
            let t = Instant::now();
            if let Some(service) = &service {
                ours::prefill(service, &stream, backlog, &payload).await?;
            }
            eprintln!("   prefilled {backlog} in {:.1?}", t.elapsed());
            for &concurrency in &plan.concurrencies {
                let mut c = Collected::new();
                let mut calls = None;
                let mut reps = Reps::new(plan);
                while let Some(rep) = reps.next() {
                    let group = format!("c{concurrency}-r{rep}");
                    let before = counters.as_ref().map(|c| c.snapshot());
                    let measured = match &service {
                        Some(s) => {
                            ours::consume_with(
                                s,
                                &stream,
                                &group,
                                (backlog, concurrency),
                                plan.cap,
                                plan.heartbeat,
                                stream_runtime::Order::None,
                            )
                            .await
                        }
                        None => Err(UNAVAILABLE.into()),
                    };
                    c.push_counted("ours", measured, false);
                    if let (Some(counters), Some(before)) = (&counters, before) {
                        calls = Some(counters.snapshot().since(before));
                    }
                    if plan.raw {
                        c.push_counted(
                            "raw",
                            raw.consume(backlog, concurrency, &payload, plan.cap).await,
                            true,
                        );
                    }
                }
                let reps = reps.done;
                let capped = c.fewest.is_some_and(|f| f < backlog);
                if let Some(calls) = &calls {
                    eprintln!("   calls: {calls}");
                }
                let mut r = row(
                    format!(
                        "consume_backlog{backlog}_c{concurrency}{}",
                        if plan.heartbeat { "_heartbeat" } else { "" }
                    ),
                    format!(
                        "consume {}k backlog, concurrency {concurrency}{}{}",
                        backlog / 1000,
                        if plan.heartbeat { ", heartbeat on" } else { "" },
                        if capped { " †" } else { "" }
                    ),
                    backlog,
                    Some(concurrency),
                    Some(concurrency),
                    reps,
                    c,
                );
                r.calls = calls;
                r.rss_kib = crate::report::rss_kib();
                emit(r);

                // The same backlog through a batch handler, the raw ceiling beside it.
                let mut c = Collected::new();
                let mut reps = Reps::new(plan);
                while let Some(rep) = reps.next() {
                    let group = format!("b{concurrency}-r{rep}");
                    let measured = match &service {
                        Some(s) => {
                            ours::consume_batch(
                                s,
                                &stream,
                                &group,
                                backlog,
                                concurrency,
                                BATCH_SIZE,
                                plan.cap,
                            )
                            .await
                        }
                        None => Err(UNAVAILABLE.into()),
                    };
                    c.push_counted("ours", measured, false);
                    if plan.raw {
                        c.push_counted(
                            "raw",
                            raw.consume(backlog, concurrency, &payload, plan.cap).await,
                            true,
                        );
                    }
                }
                let reps = reps.done;
                let capped = c.fewest.is_some_and(|f| f < backlog);
                emit(row(
                    format!("consume_batch{BATCH_SIZE}_backlog{backlog}_c{concurrency}"),
                    format!(
                        "consume {}k backlog, batch handler ({BATCH_SIZE} a call), {concurrency} at once{}",
                        backlog / 1000,
                        if capped { " †" } else { "" }
                    ),
                    backlog,
                    Some(concurrency),
                    Some(BATCH_SIZE),
                    reps,
                    c,
                ));
            }
        }
    }

    // Transactional handlers, beside the plain handler in the raw column.
    if plan.wants(Workload::Tx) && matches!(kind, Kind::Sqlite | Kind::Postgres) {
        if let Some(service) = &service {
            let backlog = plan.backlogs.first().copied().unwrap_or(1_000);
            let stream = format!("tx-backlog-{backlog}");
            ours::prefill(service, &stream, backlog, &payload).await?;
            for &concurrency in &plan.concurrencies {
                let mut c = Collected::new();
                let mut reps = Reps::new(plan);
                while let Some(rep) = reps.next() {
                    let measured = ours::consume_tx(
                        service,
                        &stream,
                        &format!("tx{concurrency}-r{rep}"),
                        backlog,
                        concurrency,
                        plan.cap,
                    )
                    .await;
                    c.push_counted("transactional", measured, false);
                    let plain = ours::consume(
                        service,
                        &stream,
                        &format!("plain{concurrency}-r{rep}"),
                        backlog,
                        concurrency,
                        plan.cap,
                    )
                    .await;
                    c.push_counted("plain", plain, true);
                }
                let reps = reps.done;
                let capped = c.fewest.is_some_and(|f| f < backlog);
                emit(row(
                    format!("tx_consume_backlog{backlog}_c{concurrency}"),
                    format!(
                        "transactional handler (raw = plain handler), {}k backlog, concurrency {concurrency}{}",
                        backlog / 1000,
                        if capped { " †" } else { "" }
                    ),
                    backlog,
                    Some(concurrency),
                    Some(concurrency),
                    reps,
                    c,
                ));
            }
        }
    }

    // A group ordered by key, beside the same keyed backlog unordered in the raw column.
    if plan.wants(Workload::Ordered) {
        if let Some(service) = &service {
            let backlog = plan.backlogs.first().copied().unwrap_or(1_000);
            let stream = format!("ordered-backlog-{backlog}");
            ours::prefill_keyed(service, &stream, backlog, ORDERED_KEYS, &payload).await?;
            for &concurrency in &plan.concurrencies {
                let mut c = Collected::new();
                let mut reps = Reps::new(plan);
                while let Some(rep) = reps.next() {
                    for (label, order, raw) in [
                        ("ordered", stream_runtime::Order::Key, false),
                        ("unordered", stream_runtime::Order::None, true),
                    ] {
                        let measured = ours::consume_with(
                            service,
                            &stream,
                            &format!("{label}{concurrency}-r{rep}"),
                            (backlog, concurrency),
                            plan.cap,
                            false,
                            order,
                        )
                        .await;
                        c.push_counted(label, measured, raw);
                    }
                }
                let reps = reps.done;
                let capped = c.fewest.is_some_and(|f| f < backlog);
                emit(row(
                    format!("ordered_consume_backlog{backlog}_c{concurrency}"),
                    format!(
                        "consume ordered by key, {ORDERED_KEYS} keys (raw = unordered), {}k \
                         backlog, concurrency {concurrency}{}",
                        backlog / 1000,
                        if capped { " †" } else { "" }
                    ),
                    backlog,
                    Some(concurrency),
                    Some(concurrency),
                    reps,
                    c,
                ));
            }
        }
    }

    if plan.wants(Workload::E2e) {
        let count = (plan.e2e_rate * plan.e2e_seconds) as usize;
        let mut ours_p = Vec::new();
        let mut raw_p = Vec::new();
        let mut errors = Vec::new();
        let mut reps = Reps::new(plan);
        while let Some(rep) = reps.next() {
            let stream = format!("e2e-{rep}");
            let measured = match &service {
                Some(s) => {
                    ours::e2e(
                        s,
                        &stream,
                        plan.e2e_rate,
                        count,
                        E2E_CONCURRENCY,
                        plan.poll_interval,
                        &payload,
                    )
                    .await
                }
                None => Err(UNAVAILABLE.into()),
            };
            match measured {
                Ok(l) => ours_p.push(Percentiles::of(l)),
                Err(e) => errors.push(format!("ours: {e}")),
            }
            let measured = if plan.raw {
                raw.e2e(plan.e2e_rate, count).await
            } else {
                Ok(None)
            };
            match measured {
                Ok(Some(l)) => raw_p.push(Percentiles::of(l)),
                Ok(None) => {}
                Err(e) => errors.push(format!("raw: {e}")),
            }
        }
        let reps = reps.done;
        let summarize = |p: &[Percentiles]| -> Option<[Summary; 3]> {
            Some([
                Summary::of(&p.iter().map(|p| p.p50).collect::<Vec<_>>())?,
                Summary::of(&p.iter().map(|p| p.p99).collect::<Vec<_>>())?,
                Summary::of(&p.iter().map(|p| p.p999).collect::<Vec<_>>())?,
            ])
        };
        emit(Row {
            backend: kind,
            workload: format!(
                "e2e_latency_{}rps_poll_{}ms",
                plan.e2e_rate,
                plan.poll_interval.as_millis()
            ),
            label: format!(
                "e2e p50/p99/p99.9 @{} msg/s, poll {:?}",
                plan.e2e_rate, plan.poll_interval
            ),
            count,
            concurrency: Some(E2E_CONCURRENCY),
            batch: None,
            reps,
            durability: durability.clone(),
            error: (!errors.is_empty()).then(|| errors.join("; ")),
            fewest_handled: None,
            calls: None,
            rss_kib: None,
            figure: Figure::Latency {
                ours: summarize(&ours_p),
                raw: summarize(&raw_p),
            },
        });
    }

    if let Some(service) = service {
        service.close().await?;
    }
    cleanup(kind, &mut raw, &raw_url, &app, tag).await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Drops what the run created on the shared servers.
async fn cleanup(
    kind: Kind,
    raw: &mut Raw,
    raw_url: &str,
    app: &str,
    tag: &str,
) -> Result<(), BoxError> {
    raw.cleanup().await?;
    match kind {
        Kind::Postgres => {
            let mut con = <sqlx::PgConnection as sqlx::Connection>::connect(raw_url).await?;
            sqlx::query(&format!("DROP SCHEMA IF EXISTS bench_{tag} CASCADE"))
                .execute(&mut con)
                .await?;
        }
        Kind::Redis => {
            let client = redis::Client::open(raw_url)?;
            let mut con = client.get_multiplexed_async_connection().await?;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("*{app}*"))
                .query_async(&mut con)
                .await?;
            for chunk in keys.chunks(500) {
                let _: () = redis::cmd("DEL").arg(chunk).query_async(&mut con).await?;
            }
        }
        Kind::Nats => {
            let backend = stream_runtime::backend::nats::NatsBackend::connect(raw_url).await?;
            backend.delete_streams(&format!("{app}.")).await?;
            stream_runtime::Backend::close(&backend).await?;
        }
        Kind::Memory | Kind::Sqlite => {}
    }
    Ok(())
}
