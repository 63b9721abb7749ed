//! Ordering by key end to end (issue 16, part 2): messages over 100 keys, concurrency 16,
//! two services in one group (two OS processes on every backend that processes can share;
//! two services in this process on memory), one handling in twenty failing at random and
//! retried. For every key the successful handlings are in strictly increasing publish order
//! and no two handlings of one key ever overlap in time; every message succeeds exactly
//! once. The same run without `ordered` prints its throughput beside it
//! (`key_order <backend>: ...`).
//!
//! 2,000 messages a run in CI (500 on NATS); 10,000 with `STREAMS_SOAK=1`. The workers are this test
//! binary run again (`worker_child`, which does nothing unless [`URL_ENV`] is set).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use stream_runtime::conformance::{eventually, unique_name};
use stream_runtime::{
    HandlerError, Message, NewMessage, Order, PublishOptions, RetryDelay, Service, ServiceConfig,
    SubscribeOptions,
};
use stream_tests::{backend_url, shared_cluster, ChildProcess};

const URL_ENV: &str = "STREAMS_KEY_ORDER_URL";
const APP_ENV: &str = "STREAMS_KEY_ORDER_APP";
const ORDERED_ENV: &str = "STREAMS_KEY_ORDER_ORDERED";
const STREAM: &str = "orders";
const GROUP: &str = "g";
const KEYS: usize = 100;

/// Messages a run publishes: 10,000 with `STREAMS_SOAK=1`; in CI 2,000, and 500 on NATS,
/// whose claims read one message per round trip.
fn messages(backend: &str) -> usize {
    if std::env::var("STREAMS_SOAK").is_ok_and(|v| v == "1") {
        10_000
    } else if backend == "nats" {
        500
    } else {
        2_000
    }
}

fn options(ordered: bool) -> SubscribeOptions {
    SubscribeOptions::new()
        .ordered(if ordered { Order::Key } else { Order::None })
        .concurrency(16)
        .unlimited_retries()
        .retry_delay(RetryDelay::Fixed(Duration::from_millis(20)))
        .poll_interval(Duration::from_millis(100))
        .visibility_timeout(Duration::from_secs(30))
        .shutdown_timeout(Duration::from_secs(10))
}

/// One handling: its message, when it ran (ns since the Unix epoch, one clock for every
/// process of this machine) and whether it succeeded.
#[derive(Clone, Debug)]
struct Handling {
    key: String,
    seq: u64,
    start: u128,
    end: u128,
    ok: bool,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Whether this handling fails: one in twenty, at random.
fn fails() -> bool {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        .is_multiple_of(20)
}

/// The handler both services run: it reports each handling to `report`.
fn handler(
    report: Arc<dyn Fn(Handling) + Send + Sync>,
) -> impl Fn(
    Message,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), HandlerError>> + Send>>
       + Send
       + Sync
       + 'static {
    move |m: Message| {
        let report = report.clone();
        Box::pin(async move {
            let key = m.key().unwrap_or_default().to_owned();
            let seq: u64 = String::from_utf8_lossy(&m.payload).parse().unwrap_or(0);
            let start = now_ns();
            tokio::time::sleep(Duration::from_millis(1)).await;
            let ok = !fails();
            report(Handling {
                key,
                seq,
                start,
                end: now_ns(),
                ok,
            });
            if ok {
                Ok(())
            } else {
                Err(HandlerError::retry("a random failure"))
            }
        })
    }
}

/// A worker process: runs the handler in group `g`, printing each handling, until `stop`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_child() {
    let (Ok(url), Ok(app)) = (std::env::var(URL_ENV), std::env::var(APP_ENV)) else {
        return;
    };
    let ordered = std::env::var(ORDERED_ENV).is_ok_and(|v| v == "1");
    let service = Service::connect(&url, ServiceConfig::default().app(app))
        .await
        .expect("worker: connect");
    let report: Arc<dyn Fn(Handling) + Send + Sync> = Arc::new(|h: Handling| {
        println!(
            "CHILD h {} {} {} {} {}",
            h.key,
            h.seq,
            h.start,
            h.end,
            u8::from(h.ok)
        );
    });
    service
        .subscribe(STREAM, GROUP, handler(report), options(ordered))
        .await
        .expect("worker: subscribe");
    println!("CHILD ready");
    let mut rx = stream_tests::stdin_lines();
    while let Some(line) = rx.recv().await {
        if line == "stop" {
            break;
        }
    }
    service.close().await.expect("worker: close");
    println!("CHILD closed");
}

fn parse(line: &str) -> Option<Handling> {
    let mut parts = line.strip_prefix("h ")?.split(' ');
    Some(Handling {
        key: parts.next()?.to_owned(),
        seq: parts.next()?.parse().ok()?,
        start: parts.next()?.parse().ok()?,
        end: parts.next()?.parse().ok()?,
        ok: parts.next()? == "1",
    })
}

/// Where the two services run.
enum Consumers {
    /// Two OS processes.
    Processes(Vec<ChildProcess>),
    /// Two services in this process, reporting here.
    InProcess(Vec<Service>, Arc<Mutex<Vec<Handling>>>),
}

impl Consumers {
    async fn start(
        url: &str,
        app: &str,
        ordered: bool,
        shared: Option<stream_runtime::backend::SharedBackend>,
    ) -> Consumers {
        let Some(backend) = shared else {
            let flag = if ordered { "1" } else { "0" };
            let workers: Vec<ChildProcess> = (0..2)
                .map(|_| {
                    ChildProcess::spawn(
                        "worker_child",
                        &[(URL_ENV, url), (APP_ENV, app), (ORDERED_ENV, flag)],
                    )
                })
                .collect();
            for (i, worker) in workers.iter().enumerate() {
                let ready = eventually(Duration::from_secs(60), || {
                    std::future::ready(worker.has_line("ready"))
                })
                .await;
                assert!(ready, "worker {i} did not subscribe");
            }
            return Consumers::Processes(workers);
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut services = Vec::new();
        for _ in 0..2 {
            let service = Service::from_shared(backend.clone(), ServiceConfig::default().app(app));
            let sink = log.clone();
            let report: Arc<dyn Fn(Handling) + Send + Sync> = Arc::new(move |h| {
                sink.lock().unwrap_or_else(PoisonError::into_inner).push(h);
            });
            service
                .subscribe(STREAM, GROUP, handler(report), options(ordered))
                .await
                .expect("subscribe");
            services.push(service);
        }
        Consumers::InProcess(services, log)
    }

    fn handlings(&self) -> Vec<Handling> {
        match self {
            Consumers::Processes(workers) => workers
                .iter()
                .flat_map(|w| {
                    w.with_lines(|lines| lines.iter().filter_map(|l| parse(l)).collect::<Vec<_>>())
                })
                .collect(),
            Consumers::InProcess(_, log) => {
                log.lock().unwrap_or_else(PoisonError::into_inner).clone()
            }
        }
    }

    fn succeeded(&self) -> usize {
        let mut seen = std::collections::HashSet::new();
        for h in self.handlings() {
            if h.ok {
                seen.insert(h.seq);
            }
        }
        seen.len()
    }

    async fn stop(self) {
        match self {
            Consumers::Processes(mut workers) => {
                for worker in &mut workers {
                    worker.send("stop");
                }
                for (i, worker) in workers.iter().enumerate() {
                    let closed = eventually(Duration::from_secs(30), || {
                        std::future::ready(worker.has_line("closed"))
                    })
                    .await;
                    assert!(closed, "worker {i} did not close");
                }
            }
            Consumers::InProcess(services, _) => {
                for service in services {
                    service.close().await.expect("close");
                }
            }
        }
    }
}

/// One run: publishes the messages (message `i` has key `k<i % 100>`), waits until each
/// succeeded, and returns the handlings and how long that took.
async fn run(
    backend: &str,
    url: &str,
    ordered: bool,
    processes: bool,
) -> (Vec<Handling>, Duration) {
    let total = messages(backend);
    let app = unique_name("keyorder");
    let backend = stream_runtime::backend::connect(url)
        .await
        .expect("connect");
    let publisher = Service::from_shared(backend.clone(), ServiceConfig::default().app(&app));
    // In this process, the services share the publisher's backend (memory has no other).
    let shared = (!processes).then_some(backend);
    let consumers = Consumers::start(url, &app, ordered, shared).await;
    let started = Instant::now();
    for batch in 0..total.div_ceil(100) {
        let messages: Vec<NewMessage> = (batch * 100..((batch + 1) * 100).min(total))
            .map(|i| NewMessage::new(i.to_string()).key(format!("k{}", i % KEYS)))
            .collect();
        publisher
            .publish_batch(STREAM, messages, PublishOptions::new())
            .await
            .expect("publish");
    }
    let all = eventually(Duration::from_secs(180), || {
        std::future::ready(consumers.succeeded() >= total)
    })
    .await;
    let elapsed = started.elapsed();
    let handlings = consumers.handlings();
    consumers.stop().await;
    publisher.close().await.expect("close");
    assert!(all, "only {} of {total} messages succeeded", {
        let mut ok: Vec<u64> = handlings.iter().filter(|h| h.ok).map(|h| h.seq).collect();
        ok.sort_unstable();
        ok.dedup();
        ok.len()
    });
    (handlings, elapsed)
}

/// The contract: per key, no two handlings overlap and the successes are in publish order;
/// every message succeeded exactly once.
fn check_order(backend: &str, handlings: &[Handling]) {
    let total = messages(backend);
    let mut by_key: HashMap<&str, Vec<&Handling>> = HashMap::new();
    for h in handlings {
        by_key.entry(&h.key).or_default().push(h);
    }
    assert_eq!(by_key.len(), KEYS, "{backend}: keys seen");
    let mut succeeded = 0;
    for (key, hs) in &mut by_key {
        hs.sort_by_key(|h| h.start);
        for pair in hs.windows(2) {
            assert!(
                pair[0].end <= pair[1].start,
                "{backend}: two handlings of key {key} overlap: {:?} and {:?}",
                pair[0],
                pair[1]
            );
        }
        let ok: Vec<u64> = hs.iter().filter(|h| h.ok).map(|h| h.seq).collect();
        assert!(
            ok.windows(2).all(|w| w[0] < w[1]),
            "{backend}: key {key} succeeded out of order: {ok:?}"
        );
        succeeded += ok.len();
    }
    assert_eq!(
        succeeded, total,
        "{backend}: successes (each message exactly once)"
    );
}

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn ordered_beside_unordered(backend: &str, url: String, processes: bool) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let total = messages(backend);
    let (handlings, ordered) = run(backend, &url, true, processes).await;
    check_order(backend, &handlings);
    let failures = handlings.iter().filter(|h| !h.ok).count();
    assert!(
        failures > 0,
        "{backend}: no handler failed; the test would prove nothing"
    );
    let (_, unordered) = run(backend, &url, false, processes).await;
    let rate = |d: Duration| total as f64 / d.as_secs_f64();
    eprintln!(
        "key_order {backend}: {total} messages over {KEYS} keys, concurrency 16 x 2 {}, \
         {failures} failures retried: ordered {:.2} s ({:.0} msg/s), unordered {:.2} s \
         ({:.0} msg/s)",
        if processes { "processes" } else { "services" },
        ordered.as_secs_f64(),
        rate(ordered),
        unordered.as_secs_f64(),
        rate(unordered),
    );
}

async fn run_on(kind: &str, processes: bool) {
    if std::env::var_os(URL_ENV).is_some() {
        return;
    }
    if let Some(url) = backend_url(kind).await {
        ordered_beside_unordered(kind, url, processes).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_order_two_services_memory() {
    run_on("memory", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_order_two_processes_sqlite() {
    run_on("sqlite", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_order_two_processes_postgres() {
    run_on("postgres", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_order_two_processes_redis() {
    run_on("redis", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_order_two_processes_nats() {
    run_on("nats", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_order_two_processes_redis_cluster() {
    if std::env::var_os(URL_ENV).is_some() {
        return;
    }
    if let Some(cluster) = tokio::task::spawn_blocking(|| shared_cluster().map(|c| c.url()))
        .await
        .expect("starting the cluster")
    {
        ordered_beside_unordered("redis_cluster", cluster, true).await;
    }
}
