//! The benchmark harness (issue 7): every workload through the framework, beside the same
//! work written directly against the backend's client library, in one run.
//!
//! ```text
//! cargo run --release -p stream-bench -- --backend memory,sqlite,postgres,redis [--quick]
//! ```
//!
//! Options: `--backend LIST` (default all four), `--quick` (small counts, one repetition),
//! `--reps N` (repetitions, no time budget), `--only LIST` (workloads: `publish`, `batch`,
//! `consume`, `e2e`), `--concurrency LIST`, `--backlog LIST`, `--json PATH` (JSON lines;
//! default `target/stream-bench.jsonl`, `-` for stdout), `--count-calls` (count the engine's
//! claim and ack calls), `--no-warmup`, `--no-raw`. Services: `STREAMS_TEST_POSTGRES_URL`,
//! `STREAMS_TEST_REDIS_URL`. See BENCHMARKS.md for what each workload and ceiling is.

mod counting;
mod ours;
mod raw;
mod stats;

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stream_runtime::{Service, ServiceConfig};

use raw::Raw;
use stats::{human, round, Percentiles, Summary};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Payload size of every workload.
pub const PAYLOAD: usize = 256;
const UNAVAILABLE: &str = "backend unavailable";
/// Batch size of the batched publish.
const BATCH: usize = 100;
/// Concurrency of the consumer in the latency workload.
const E2E_CONCURRENCY: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Memory,
    Sqlite,
    Postgres,
    Redis,
}

impl Kind {
    fn parse(s: &str) -> Result<Kind, BoxError> {
        Ok(match s {
            "memory" => Kind::Memory,
            "sqlite" => Kind::Sqlite,
            "postgres" => Kind::Postgres,
            "redis" => Kind::Redis,
            other => return Err(format!("unknown backend {other:?}").into()),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Memory => "memory",
            Kind::Sqlite => "sqlite",
            Kind::Postgres => "postgres",
            Kind::Redis => "redis",
        }
    }

    /// Message counts: the in-process backend gets more, so its runs are long enough to time.
    fn scale(self) -> usize {
        match self {
            Kind::Memory => 20,
            Kind::Redis => 4,
            Kind::Sqlite | Kind::Postgres => 1,
        }
    }
}

/// What one run measures.
#[derive(Clone, Debug)]
struct Plan {
    quick: bool,
    max_reps: usize,
    /// Time after which no further repetition of one figure starts.
    budget: Duration,
    publish_one: usize,
    publish_batch: usize,
    backlogs: Vec<usize>,
    concurrencies: Vec<usize>,
    e2e_rate: u32,
    e2e_seconds: u32,
    /// A consume run stops timing after this long even if the backlog is not drained.
    cap: Duration,
    workloads: Vec<String>,
    /// Wrap the backend to count claim and ack calls (`--count-calls`).
    count_calls: bool,
    /// Run every path once, unrecorded, before measuring (`--no-warmup` skips it, to
    /// profile one workload alone).
    warmup: bool,
    /// Measure the raw ceilings too (`--no-raw` skips them, to profile ours alone).
    raw: bool,
}

impl Plan {
    fn new(quick: bool) -> Plan {
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
            workloads: ["publish", "batch", "consume", "e2e"]
                .map(String::from)
                .to_vec(),
            count_calls: false,
            warmup: true,
            raw: true,
        }
    }

    fn wants(&self, workload: &str) -> bool {
        self.workloads.iter().any(|w| w == workload)
    }
}

/// One line of the report.
struct Row {
    backend: Kind,
    workload: String,
    label: String,
    count: usize,
    concurrency: Option<usize>,
    batch: Option<usize>,
    reps: usize,
    durability: String,
    figure: Figure,
    error: Option<String>,
    /// Consume runs: the fewest messages a repetition handled before the time cap.
    fewest_handled: Option<usize>,
    /// With `--count-calls`: the engine's backend calls in the last repetition.
    calls: Option<Value>,
}

enum Figure {
    /// Messages per second.
    Throughput {
        ours: Option<Summary>,
        raw: Option<Summary>,
    },
    /// Milliseconds from scheduled send to handler start.
    Latency {
        ours: Option<[Summary; 3]>,
        raw: Option<[Summary; 3]>,
    },
}

impl Row {
    fn json(&self) -> Value {
        let mut v = json!({
            "backend": self.backend.name(),
            "workload": self.workload,
            "count": self.count,
            "payload_bytes": PAYLOAD,
            "reps": self.reps,
            "durability": self.durability,
        });
        if let Some(c) = self.concurrency {
            v["concurrency"] = json!(c);
        }
        if let Some(b) = self.batch {
            v["batch"] = json!(b);
        }
        if let Some(f) = self.fewest_handled {
            v["fewest_handled"] = json!(f);
            v["time_capped"] = json!(f < self.count);
        }
        match &self.figure {
            Figure::Throughput { ours, raw } => {
                v["unit"] = json!("msg/s");
                v["ours"] = ours.map_or(Value::Null, |s| s.json());
                v["raw"] = raw.map_or(Value::Null, |s| s.json());
                if let (Some(o), Some(r)) = (ours, raw) {
                    v["ratio"] = json!(round(o.median / r.median));
                    v["overhead_us_per_msg"] = json!(round(overhead_us(o.median, r.median)));
                }
            }
            Figure::Latency { ours, raw } => {
                v["unit"] = json!("ms");
                let pct = |s: &Option<[Summary; 3]>| {
                    s.map_or(Value::Null, |[p50, p99, p999]| {
                        json!({ "p50": p50.json(), "p99": p99.json(), "p99.9": p999.json() })
                    })
                };
                v["ours"] = pct(ours);
                v["raw"] = pct(raw);
                if let (Some(o), Some(r)) = (ours, raw) {
                    v["ratio"] = json!(round(o[0].median / r[0].median));
                    v["overhead_us_per_msg"] = json!(round((o[0].median - r[0].median) * 1e3));
                }
            }
        }
        if let Some(calls) = &self.calls {
            v["calls"] = calls.clone();
        }
        if let Some(e) = &self.error {
            v["error"] = json!(e);
        }
        v
    }

    fn table_line(&self) -> String {
        let (ours, raw, ratio, overhead) = match &self.figure {
            Figure::Throughput { ours, raw } => {
                let fmt = |s: &Option<Summary>| {
                    s.map_or("-".to_owned(), |s| {
                        format!("{} ({}-{})", human(s.median), human(s.min), human(s.max))
                    })
                };
                let (ratio, overhead) = match (ours, raw) {
                    (Some(o), Some(r)) => (
                        format!("{:.2}", o.median / r.median),
                        format!("{:.1}", overhead_us(o.median, r.median)),
                    ),
                    _ => ("-".to_owned(), "-".to_owned()),
                };
                (fmt(ours), fmt(raw), ratio, overhead)
            }
            Figure::Latency { ours, raw } => {
                let fmt = |s: &Option<[Summary; 3]>| {
                    s.map_or("-".to_owned(), |[a, b, c]| {
                        format!("{} / {} / {} ms", ms(a.median), ms(b.median), ms(c.median))
                    })
                };
                let (ratio, overhead) = match (ours, raw) {
                    (Some(o), Some(r)) => (
                        format!("{:.2}", o[0].median / r[0].median),
                        format!("{:.0}", (o[0].median - r[0].median) * 1e3),
                    ),
                    _ => ("-".to_owned(), "-".to_owned()),
                };
                (fmt(ours), fmt(raw), ratio, overhead)
            }
        };
        let mut line = format!(
            "| {:<8} | {:<36} | {:>28} | {:>28} | {:>8} | {:>9} | {:>4} |",
            self.backend.name(),
            self.label,
            ours,
            raw,
            ratio,
            overhead,
            self.reps
        );
        if let Some(e) = &self.error {
            line.push_str(&format!(" error: {e}"));
        }
        line
    }
}

fn ms(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.1}")
    }
}

/// Per-message time of ours minus raw, in µs.
fn overhead_us(ours: f64, raw: f64) -> f64 {
    (1.0 / ours - 1.0 / raw) * 1e6
}

fn table_header() -> String {
    format!(
        "| {:<8} | {:<36} | {:>28} | {:>28} | {:>8} | {:>9} | {:>4} |\n|{}|{}|{}|{}|{}|{}|{}|",
        "backend",
        "workload",
        "ours: median (min-max)",
        "raw ceiling: median (min-max)",
        "ours/raw",
        "µs/msg +",
        "reps",
        "-".repeat(10),
        "-".repeat(38),
        "-".repeat(30),
        "-".repeat(30),
        "-".repeat(10),
        "-".repeat(11),
        "-".repeat(6)
    )
}

/// Calls `send` with each scheduled send time (since `epoch`) of `count` messages at `rate`
/// msg/s, at that time. The pacing runs on its own thread with a precise sleep, so timer
/// granularity does not show up as latency; `send` must not block.
pub async fn paced(
    epoch: Instant,
    rate: u32,
    count: usize,
    mut send: impl FnMut(Duration) + Send + 'static,
) -> Result<(), BoxError> {
    tokio::task::spawn_blocking(move || {
        let interval = Duration::from_secs(1) / rate.max(1);
        let first = epoch.elapsed() + Duration::from_millis(20);
        for i in 0..count {
            let scheduled = first + interval * u32::try_from(i).unwrap_or(u32::MAX);
            let now = epoch.elapsed();
            if scheduled > now {
                std::thread::sleep(scheduled - now);
            }
            send(scheduled);
        }
    })
    .await?;
    Ok(())
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
    }
}

/// Every workload on one backend.
async fn run_backend(
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
    let config = ServiceConfig::default().app(app.clone());
    let mut counters = None;
    let service = match stream_runtime::backend::connect(&ours_url).await {
        Ok(backend) if plan.count_calls => {
            let (backend, c) = counting::Counting::wrap(backend);
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
        if plan.wants("e2e") {
            if let Some(service) = &service {
                ours::e2e(
                    service,
                    "warmup-e2e",
                    plan.e2e_rate,
                    100,
                    E2E_CONCURRENCY,
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
        figure: Figure::Throughput {
            ours: Summary::of(&c.ours),
            raw: Summary::of(&c.raw),
        },
    };

    if plan.wants("publish") {
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

    if plan.wants("batch") {
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

    if plan.wants("consume") {
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
                            ours::consume(s, &stream, &group, backlog, concurrency, plan.cap).await
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
                    format!("consume_backlog{backlog}_c{concurrency}"),
                    format!(
                        "consume {}k backlog, concurrency {concurrency}{}",
                        backlog / 1000,
                        if capped { " †" } else { "" }
                    ),
                    backlog,
                    Some(concurrency),
                    Some(concurrency),
                    reps,
                    c,
                );
                r.calls = calls;
                emit(r);
            }
        }
    }

    if plan.wants("e2e") {
        let count = (plan.e2e_rate * plan.e2e_seconds) as usize;
        let mut ours_p = Vec::new();
        let mut raw_p = Vec::new();
        let mut errors = Vec::new();
        let mut reps = Reps::new(plan);
        while let Some(rep) = reps.next() {
            let stream = format!("e2e-{rep}");
            let measured = match &service {
                Some(s) => {
                    ours::e2e(s, &stream, plan.e2e_rate, count, E2E_CONCURRENCY, &payload).await
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
            workload: format!("e2e_latency_{}rps", plan.e2e_rate),
            label: format!("e2e p50/p99/p99.9 @{} msg/s", plan.e2e_rate),
            count,
            concurrency: Some(E2E_CONCURRENCY),
            batch: None,
            reps,
            durability: durability.clone(),
            error: (!errors.is_empty()).then(|| errors.join("; ")),
            fewest_handled: None,
            calls: None,
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
        Kind::Memory | Kind::Sqlite => {}
    }
    Ok(())
}

fn usage() -> &'static str {
    "usage: stream-bench [--backend memory,sqlite,postgres,redis] [--quick] [--reps N] \
     [--only publish,batch,consume,e2e] [--json PATH|-] [--count-calls] \
     [--concurrency 1,8,64] [--backlog 10000,100000] [--no-warmup] [--no-raw]"
}

fn main() -> Result<(), BoxError> {
    let mut kinds = vec![Kind::Memory, Kind::Sqlite, Kind::Postgres, Kind::Redis];
    let mut quick = false;
    let mut count_calls = false;
    let mut concurrencies = None;
    let mut backlogs = None;
    let mut no_warmup = false;
    let mut no_raw = false;
    let list = |s: &str| -> Result<Vec<usize>, BoxError> {
        s.split(',')
            .map(|x| x.trim().parse::<usize>().map_err(BoxError::from))
            .collect()
    };
    let mut reps = None;
    let mut only = None;
    let mut json_path = "target/stream-bench.jsonl".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{arg} needs a value\n{}", usage()))
        };
        match arg.as_str() {
            "--backend" | "--backends" => {
                kinds = value()?
                    .split(',')
                    .map(|s| Kind::parse(s.trim()))
                    .collect::<Result<_, _>>()?;
            }
            "--quick" => quick = true,
            "--count-calls" => count_calls = true,
            "--reps" => reps = Some(value()?.parse::<usize>()?.max(1)),
            "--only" => only = Some(value()?),
            "--json" => json_path = value()?,
            "--concurrency" => concurrencies = Some(list(&value()?)?),
            "--backlog" => backlogs = Some(list(&value()?)?),
            "--no-warmup" => no_warmup = true,
            "--no-raw" => no_raw = true,
            "--help" | "-h" => {
                println!("{}", usage());
                return Ok(());
            }
            // `cargo bench` passes --bench; ignore it.
            "--bench" => {}
            other => return Err(format!("unknown argument {other:?}\n{}", usage()).into()),
        }
    }
    let mut plan = Plan::new(quick);
    plan.count_calls = count_calls;
    plan.warmup = !no_warmup;
    plan.raw = !no_raw;
    if let Some(c) = concurrencies {
        plan.concurrencies = c;
    }
    if let Some(b) = backlogs {
        plan.backlogs = b;
    }
    if let Some(r) = reps {
        plan.max_reps = r;
        plan.budget = Duration::from_secs(3600);
    }
    if let Some(only) = only {
        plan.workloads = only.split(',').map(|s| s.trim().to_owned()).collect();
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let tag = format!(
        "{}{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() % 100_000)
            .unwrap_or_default()
    );
    let mut json_out: Box<dyn Write> = if json_path == "-" {
        Box::new(std::io::stdout())
    } else {
        if let Some(parent) = std::path::Path::new(&json_path).parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)?;
            }
        }
        Box::new(std::fs::File::create(&json_path)?)
    };

    let started = Instant::now();
    eprintln!(
        "stream-bench: {} mode, payload {PAYLOAD} B, backends {:?}, up to {} repetition(s)",
        if plan.quick { "quick" } else { "full" },
        kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
        plan.max_reps
    );
    let mut rows: Vec<Row> = Vec::new();
    let mut failed = false;
    for kind in kinds {
        let t = Instant::now();
        let mut emit = |row: Row| {
            eprintln!("{}", row.table_line());
            let _ = writeln!(json_out, "{}", row.json());
            rows.push(row);
        };
        if let Err(e) = runtime.block_on(run_backend(kind, &plan, &tag, &mut emit)) {
            failed = true;
            eprintln!("== {}: FAILED: {e}", kind.name());
            let _ = writeln!(
                json_out,
                "{}",
                json!({ "backend": kind.name(), "error": e.to_string() })
            );
        }
        eprintln!("== {} done in {:.1?}", kind.name(), t.elapsed());
    }
    json_out.flush()?;
    drop(json_out);

    println!();
    println!("{}", table_header());
    for row in &rows {
        println!("{}", row.table_line());
    }
    println!();
    let mut seen = Vec::new();
    for row in &rows {
        if !seen.contains(&row.backend) {
            seen.push(row.backend);
            println!("durability, {}: {}", row.backend.name(), row.durability);
        }
    }
    println!(
        "Throughput in msg/s; latency from scheduled send to handler start. ours/raw: median \
         ratio (latency: p50 ratio); µs/msg +: per-message time ours minus raw (latency: p50 \
         difference). † the backlog was not drained within the {:?} cap: the figure is the \
         rate over the messages handled by then.",
        plan.cap
    );
    println!("total {:.0?}; JSON lines in {json_path}", started.elapsed());
    runtime.shutdown_timeout(Duration::from_secs(5));
    if failed {
        return Err("some backends failed; see above".into());
    }
    Ok(())
}
