//! stream-bench's consume figure, the same work through apalis 1.x: a queue pre-filled with
//! a backlog of N jobs (a 256-byte payload each, pushed with apalis's bulk push, not timed),
//! then one worker with a no-op handler at concurrency c; the time runs from starting the
//! worker until the handler has run N times (capped), then the worker is stopped.
//!
//! ```sh
//! apalis-peer --backend redis,sqlite --concurrency 8,64 --backlog 10000 [--reps 1]
//!             [--cap 60] [--warmup 1000] [--no-promote]
//! ```
//!
//! One JSON line per figure on stdout, a readable line on stderr. Settings, as apalis
//! documents them: `WorkerBuilder::concurrency(c)` with `parallelize(tokio::spawn)`, and the
//! backend's `Config::batch_size(c)` (the fetch size, 10 by default); everything else at its
//! default (task locking, result persistence, Redis pubsub events, heartbeats). Redis from
//! `STREAMS_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`), one namespace per run whose
//! keys are deleted at the end; SQLite a file in a fresh temporary directory, its pool's
//! connections at WAL and `synchronous = NORMAL` (as our backend), set up by
//! `SqliteStorage::setup`. On Redis the pre-fill also moves the pushed jobs from the
//! scheduled set to the active list (see [`promote_due`]; `--no-promote` skips it).

use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_redis::RedisStorage;
use apalis_sqlite::{SqliteConnectOptions, SqlitePool, SqliteStorage};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

type BoxError = Box<dyn Error + Send + Sync>;

const PAYLOAD: usize = 256;
/// Jobs per bulk push while pre-filling.
const PUSH_CHUNK: usize = 1_000;
/// How long a stopping worker may take to wind down.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// The job: one 256-byte field.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    body: String,
}

/// Counts handler runs and wakes the timer at the n-th.
#[derive(Debug)]
struct Counter {
    handled: AtomicUsize,
    n: usize,
    all: Notify,
}

impl Counter {
    fn new(n: usize) -> Arc<Counter> {
        Arc::new(Counter {
            handled: AtomicUsize::new(0),
            n,
            all: Notify::new(),
        })
    }
}

/// The no-op handler.
async fn handle(_job: Job, counter: Data<Arc<Counter>>) -> Result<(), BoxDynError> {
    if counter.handled.fetch_add(1, Ordering::Relaxed) + 1 == counter.n {
        counter.all.notify_one();
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Redis,
    Sqlite,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Redis => "redis",
            Kind::Sqlite => "sqlite",
        }
    }
}

#[derive(Debug)]
struct Args {
    backends: Vec<Kind>,
    concurrency: Vec<usize>,
    backlog: Vec<usize>,
    reps: usize,
    cap: Duration,
    warmup: usize,
    /// Redis: move the pushed jobs from the scheduled set to the active list in chunks
    /// before the timer starts (see [`promote`]).
    promote: bool,
}

fn list<T: std::str::FromStr>(value: &str) -> Result<Vec<T>, BoxError> {
    value
        .split(',')
        .map(|v| {
            v.parse::<T>()
                .map_err(|_| format!("bad value {v:?}").into())
        })
        .collect()
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = Args {
        backends: vec![Kind::Redis, Kind::Sqlite],
        concurrency: vec![8, 64],
        backlog: vec![10_000],
        reps: 1,
        cap: Duration::from_secs(60),
        warmup: 1_000,
        promote: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--no-promote" {
            args.promote = false;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--backend" => {
                args.backends = value
                    .split(',')
                    .map(|b| match b {
                        "redis" => Ok(Kind::Redis),
                        "sqlite" => Ok(Kind::Sqlite),
                        other => Err(format!("unknown backend {other:?}")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--concurrency" => args.concurrency = list(&value)?,
            "--backlog" => args.backlog = list(&value)?,
            "--reps" => args.reps = value.parse()?,
            "--cap" => args.cap = Duration::from_secs_f64(value.parse()?),
            "--warmup" => args.warmup = value.parse()?,
            other => return Err(format!("unknown flag {other:?}").into()),
        }
    }
    if args.concurrency.contains(&0) || args.backlog.contains(&0) {
        return Err("concurrency and backlog must be positive".into());
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    let redis_url = std::env::var("STREAMS_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let mut failed = false;
    let mut runs = 0usize;
    let mut queue = || {
        runs += 1;
        format!("apalis-bench-{}-{runs}", std::process::id())
    };
    for &kind in &args.backends {
        if args.warmup > 0 {
            let t = Instant::now();
            let (handled, _) = consume(
                kind,
                &redis_url,
                &queue(),
                args.warmup,
                8,
                args.cap,
                args.promote,
            )
            .await?;
            eprintln!(
                "apalis {}: warm-up of {} jobs ({handled} handled) in {:.1?}",
                kind.name(),
                args.warmup,
                t.elapsed()
            );
        }
        for &backlog in &args.backlog {
            for &c in &args.concurrency {
                for _ in 0..args.reps {
                    let (handled, elapsed) = match consume(
                        kind,
                        &redis_url,
                        &queue(),
                        backlog,
                        c,
                        args.cap,
                        args.promote,
                    )
                    .await
                    {
                        Ok(figure) => figure,
                        Err(e) => {
                            failed = true;
                            println!(
                                "{}",
                                serde_json::json!({
                                    "peer": "apalis",
                                    "backend": kind.name(),
                                    "concurrency": c,
                                    "backlog": backlog,
                                    "error": e.to_string(),
                                })
                            );
                            eprintln!(
                                "apalis {} consume {backlog} backlog, concurrency {c}: \
                                     FAILED: {e}",
                                kind.name()
                            );
                            continue;
                        }
                    };
                    let rate = handled as f64 / elapsed.as_secs_f64();
                    let capped = handled < backlog;
                    println!(
                        "{}",
                        serde_json::json!({
                            "peer": "apalis",
                            "backend": kind.name(),
                            "concurrency": c,
                            "backlog": backlog,
                            "msgs_per_s": rate.round() as u64,
                            "handled": handled,
                            "seconds": (elapsed.as_secs_f64() * 1e3).round() / 1e3,
                            "time_capped": capped,
                            "batch_size": c,
                        })
                    );
                    eprintln!(
                        "apalis {} consume {backlog} backlog, concurrency {c}: {rate:.0} msg/s \
                         ({handled} handled in {elapsed:.2?}{})",
                        kind.name(),
                        if capped { ", time cap reached" } else { "" }
                    );
                }
            }
        }
    }
    if failed {
        return Err("some figures failed; see above".into());
    }
    Ok(())
}

fn payload() -> Job {
    Job {
        body: "x".repeat(PAYLOAD),
    }
}

/// One figure: a fresh queue `queue` of `n` jobs consumed at concurrency `c`.
async fn consume(
    kind: Kind,
    redis_url: &str,
    queue: &str,
    n: usize,
    c: usize,
    cap: Duration,
    promote: bool,
) -> Result<(usize, Duration), BoxError> {
    match kind {
        Kind::Redis => {
            let result = consume_redis(redis_url, queue, n, c, cap, promote).await;
            let cleaned = delete_namespace(redis_url, queue).await;
            let figure = result?;
            cleaned?;
            Ok(figure)
        }
        Kind::Sqlite => consume_sqlite(queue, n, c, cap).await,
    }
}

async fn consume_redis(
    url: &str,
    queue: &str,
    n: usize,
    c: usize,
    cap: Duration,
    promote: bool,
) -> Result<(usize, Duration), BoxError> {
    let conn = apalis_redis::connect(url).await?;
    let config = apalis_redis::Config::default().queue(queue).batch_size(c);
    let mut storage = RedisStorage::<Job>::new(conn).with_config(config.clone());
    prefill(&mut storage, n).await?;
    if promote {
        promote_due(url, &config).await?;
    }
    let counter = Counter::new(n);
    let start = Instant::now();
    let worker = WorkerBuilder::new(format!("{queue}-worker"))
        .backend(storage)
        .concurrency(c)
        .parallelize(tokio::spawn)
        .data(counter.clone())
        .build(handle);
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(stop_signal(stopped)));
    finish(&counter, start, cap, stop, running).await
}

async fn consume_sqlite(
    queue: &str,
    n: usize,
    c: usize,
    cap: Duration,
) -> Result<(usize, Duration), BoxError> {
    let dir = tempfile::Builder::new().prefix("apalis-bench-").tempdir()?;
    // The durability of our SQLite backend (WAL, synchronous = NORMAL) on every connection
    // of the pool; `setup` then applies apalis's own pragmas (WAL, and synchronous = OFF on
    // the one connection it runs on) and migrations.
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("apalis.db"))
        .create_if_missing(true)
        .pragma("journal_mode", "WAL")
        .pragma("synchronous", "NORMAL");
    let pool = SqlitePool::connect_with(options).await?;
    SqliteStorage::setup(&pool).await?;
    let config = apalis_sqlite::Config::default().queue(queue).batch_size(c);
    let mut storage = SqliteStorage::<Job>::new(&pool).with_config(config);
    prefill(&mut storage, n).await?;
    let counter = Counter::new(n);
    let start = Instant::now();
    let worker = WorkerBuilder::new(format!("{queue}-worker"))
        .backend(storage)
        .concurrency(c)
        .parallelize(tokio::spawn)
        .data(counter.clone())
        .build(handle);
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(worker.run_until(stop_signal(stopped)));
    let figure = finish(&counter, start, cap, stop, running).await;
    pool.close().await;
    figure
}

/// Pushes `n` jobs in bulk pushes of [`PUSH_CHUNK`].
async fn prefill<S, K>(storage: &mut S, n: usize) -> Result<(), BoxError>
where
    S: TaskSink<Job, K>,
    TaskSinkError<S::Error>: Error + Send + Sync + 'static,
{
    let mut left = n;
    while left > 0 {
        let take = left.min(PUSH_CHUNK);
        storage
            .push_bulk((0..take).map(|_| payload()).collect())
            .await?;
        left -= take;
    }
    Ok(())
}

async fn stop_signal(stopped: oneshot::Receiver<()>) -> Result<(), std::io::Error> {
    let _ = stopped.await;
    Ok(())
}

/// Waits until all jobs are handled, the cap passes or the worker ends on its own; then
/// stops the worker.
async fn finish(
    counter: &Counter,
    start: Instant,
    cap: Duration,
    stop: oneshot::Sender<()>,
    mut running: JoinHandle<Result<(), WorkerError>>,
) -> Result<(usize, Duration), BoxError> {
    let ended = tokio::select! {
        _ = counter.all.notified() => None,
        _ = tokio::time::sleep(cap) => None,
        ended = &mut running => Some(ended),
    };
    let elapsed = start.elapsed();
    let count = counter.handled.load(Ordering::Relaxed).min(counter.n);
    match ended {
        Some(ended) => {
            let reason = match ended {
                Ok(Ok(())) => "without an error".to_owned(),
                Ok(Err(e)) => format!("with {e}"),
                Err(e) => format!("by {e}"),
            };
            return Err(format!(
                "the worker ended {reason} after {count} of {} jobs",
                counter.n
            )
            .into());
        }
        None => {
            let _ = stop.send(());
            match tokio::time::timeout(STOP_GRACE, &mut running).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => eprintln!("apalis: the worker stopped with {e}"),
                Ok(Err(e)) => eprintln!("apalis: the worker task failed: {e}"),
                Err(_) => {
                    eprintln!("apalis: the worker did not stop within {STOP_GRACE:?}");
                    running.abort();
                }
            }
        }
    }
    if count == 0 {
        return Err(format!("no job handled within {cap:?}").into());
    }
    Ok((count, elapsed))
}

/// apalis-redis 1.0.0 pushes every job, due now or not, into the queue's scheduled set
/// (`run_at` = now), and its fetch script promotes all due ones in one `RPUSH` of
/// `unpack(ids)`, which Lua refuses past about 8,000 ids ("too many results to unpack"):
/// a backlog of 10,000 pushed through its own API is never consumed. This does that
/// promotion before the timer starts, in chunks, as the fetch script would (scheduled set
/// -> active list, then the signal list reset): the worker then finds the backlog in its
/// active list. `--no-promote` shows the failure.
async fn promote_due(url: &str, config: &apalis_redis::Config) -> Result<(), BoxError> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    loop {
        let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(config.scheduled_jobs_set())
            .arg(0)
            .arg(now)
            .arg("LIMIT")
            .arg(0)
            .arg(PUSH_CHUNK)
            .query_async(&mut conn)
            .await?;
        if ids.is_empty() {
            break;
        }
        let _: () = redis::pipe()
            .atomic()
            .cmd("RPUSH")
            .arg(config.active_jobs_list())
            .arg(&ids)
            .ignore()
            .cmd("ZREM")
            .arg(config.scheduled_jobs_set())
            .arg(&ids)
            .ignore()
            .query_async(&mut conn)
            .await?;
    }
    let _: () = redis::pipe()
        .atomic()
        .cmd("DEL")
        .arg(config.signal_list())
        .ignore()
        .cmd("LPUSH")
        .arg(config.signal_list())
        .arg(1)
        .ignore()
        .query_async(&mut conn)
        .await?;
    Ok(())
}

/// Deletes every key of the namespace `queue` (`SCAN MATCH queue:*` + `DEL`) and its entry
/// in apalis's list of queues. Never the whole database: the server is shared.
async fn delete_namespace(url: &str, queue: &str) -> Result<(), BoxError> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let pattern = format!("{queue}:*");
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1_000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let _: usize = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let _: usize = redis::cmd("ZREM")
        .arg("core:apalis:queues:list")
        .arg(format!("{queue}:workers"))
        .query_async(&mut conn)
        .await?;
    Ok(())
}
