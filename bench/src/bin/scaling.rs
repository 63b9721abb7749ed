//! Consume rate with 1, 2, 4 processes in one group: how far the backend lets a group's
//! work spread over processes.
//!
//! ```text
//! cargo run --release -p stream-bench --bin scaling -- [postgres,redis,...] [1,2,4] [MESSAGES]
//! ```
//!
//! For each backend and process count, three times: a fresh stream is filled with MESSAGES
//! (default 20,000) 256-byte messages; then that many worker processes (this program run
//! again with `--worker`) each subscribe at `Earliest` with concurrency 8 and a no-op
//! handler, all at the same signal, and the time until the group has nothing left (no lag,
//! nothing pending) gives the rate. The median of the three is printed, with the ratio to one
//! process. Services: `STREAMS_TEST_POSTGRES_URL`, `STREAMS_TEST_REDIS_URL`; Postgres uses a
//! fresh schema (`scaling_<tag>`, dropped at the end), Redis the run's keys are deleted.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use stream_runtime::{
    Message, PublishOptions, Service, ServiceConfig, StartPosition, SubscribeOptions,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const STREAM: &str = "scale";
const GROUP: &str = "g";
const REPS: usize = 3;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.first().map(String::as_str) == Some("--worker") {
        let [_, url, app] = &args[..] else {
            return Err("usage: scaling --worker URL APP".into());
        };
        return runtime.block_on(worker(url, app));
    }
    let backends: Vec<String> = args
        .first()
        .map_or("postgres,redis", String::as_str)
        .split(',')
        .map(str::to_owned)
        .collect();
    let counts: Vec<usize> = args
        .get(1)
        .map_or("1,2,4", String::as_str)
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let messages: usize = args.get(2).map_or(Ok(20_000), |n| n.parse())?;
    let tag = format!("{}", std::process::id());
    println!(
        "| backend | processes | consume rate, msg/s (median of {REPS}, min-max) | vs 1 process | server, per run |"
    );
    println!("|---|---|---|---|---|");
    for backend in &backends {
        let url = url_for(backend, &tag)?;
        let mut base = None;
        for &processes in &counts {
            let mut rates = Vec::new();
            let mut notes = Vec::new();
            for rep in 0..REPS {
                let app = format!("scaling{tag}x{processes}x{rep}");
                let (rate, note) =
                    runtime.block_on(measure(backend, &url, &app, processes, messages))?;
                eprintln!("{backend} {processes} process(es), run {rep}: {rate:.0} msg/s; {note}");
                notes.push(note);
                rates.push(rate);
                runtime.block_on(clean_up(backend, &url, &app));
            }
            rates.sort_by(f64::total_cmp);
            let median = rates[rates.len() / 2];
            let base = *base.get_or_insert(median);
            println!(
                "| {backend} | {processes} | {median:.0} ({:.0}-{:.0}) | {:.2} | {} |",
                rates[0],
                rates[rates.len() - 1],
                median / base,
                notes.join("; ")
            );
        }
        if backend == "postgres" {
            runtime.block_on(drop_schema(&tag));
        }
    }
    Ok(())
}

fn url_for(backend: &str, tag: &str) -> Result<String, BoxError> {
    Ok(match backend {
        "postgres" => {
            let base = std::env::var("STREAMS_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
            let sep = if base.contains('?') { '&' } else { '?' };
            format!("{base}{sep}schema=scaling_{tag}")
        }
        "redis" => std::env::var("STREAMS_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned()),
        "sqlite" => format!(
            "sqlite://{}",
            std::env::temp_dir()
                .join(format!("stream-scaling-{tag}.db"))
                .display()
        ),
        other => return Err(format!("unknown backend {other}").into()),
    })
}

/// One run: fills the stream, starts the workers at one signal, waits for the group to be
/// done. Returns messages per second.
async fn measure(
    backend: &str,
    url: &str,
    app: &str,
    processes: usize,
    messages: usize,
) -> Result<(f64, String), BoxError> {
    let service = Service::connect(url, ServiceConfig::default().app(app)).await?;
    let payload = vec![b'x'; 256];
    for start in (0..messages).step_by(500) {
        let n = 500.min(messages - start);
        service
            .publish_batch(
                STREAM,
                (0..n).map(|_| payload.clone()),
                PublishOptions::new(),
            )
            .await?;
    }
    let exe = std::env::current_exe()?;
    let mut workers: Vec<(Child, ChildStdin, BufReader<std::process::ChildStdout>)> = Vec::new();
    for _ in 0..processes {
        let mut child = Command::new(&exe)
            .args(["--worker", url, app])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no worker stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no worker stdout")?);
        workers.push((child, stdin, stdout));
    }
    for (_, _, stdout) in &mut workers {
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        if line.trim() != "ready" {
            return Err(format!("a worker said {line:?} instead of ready").into());
        }
    }
    let mut probe = Probe::new(backend, url).await;
    let cpu_before = probe.server_cpu().await;
    let started = Instant::now();
    for (_, stdin, _) in &mut workers {
        writeln!(stdin, "go")?;
        stdin.flush()?;
    }
    let admin = service.admin();
    loop {
        let groups = admin.groups(STREAM).await?;
        if groups
            .iter()
            .any(|g| g.group == GROUP && g.lag == 0 && g.pending == 0)
        {
            break;
        }
        probe.sample().await;
        if started.elapsed() > Duration::from_secs(300) {
            return Err("the group did not finish within 300 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let note = probe.note(cpu_before, elapsed).await;
    for (mut child, stdin, _) in workers {
        drop(stdin); // the worker closes and exits
        child.wait()?;
    }
    service.close().await?;
    Ok((messages as f64 / elapsed.as_secs_f64(), note))
}

/// What the server was doing during a run: on Redis the server's CPU time (`INFO cpu`) over
/// the run's time (1.0 = its one thread always busy); on Postgres the share of samples in
/// which some backend of the database waited for a lock (`pg_stat_activity`).
enum Probe {
    Redis(redis::aio::MultiplexedConnection),
    Postgres {
        pool: sqlx::PgPool,
        samples: u32,
        waiting: u32,
    },
    None,
}

impl Probe {
    async fn new(backend: &str, url: &str) -> Probe {
        match backend {
            "redis" => match redis::Client::open(url) {
                Ok(client) => match client.get_multiplexed_async_connection().await {
                    Ok(conn) => Probe::Redis(conn),
                    Err(_) => Probe::None,
                },
                Err(_) => Probe::None,
            },
            "postgres" => {
                let base = url.split('?').next().unwrap_or(url);
                match sqlx::PgPool::connect(base).await {
                    Ok(pool) => Probe::Postgres {
                        pool,
                        samples: 0,
                        waiting: 0,
                    },
                    Err(_) => Probe::None,
                }
            }
            _ => Probe::None,
        }
    }

    async fn server_cpu(&mut self) -> f64 {
        let Probe::Redis(conn) = self else {
            return 0.0;
        };
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .query_async(conn)
            .await
            .unwrap_or_default();
        ["used_cpu_sys:", "used_cpu_user:"]
            .iter()
            .filter_map(|key| {
                info.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .sum()
    }

    async fn sample(&mut self) {
        if let Probe::Postgres {
            pool,
            samples,
            waiting,
        } = self
        {
            let locked: Result<i64, _> = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&*pool)
            .await;
            *samples += 1;
            if locked.is_ok_and(|n| n > 0) {
                *waiting += 1;
            }
        }
    }

    async fn note(&mut self, cpu_before: f64, elapsed: Duration) -> String {
        match self {
            Probe::Redis(_) => {
                let used = self.server_cpu().await - cpu_before;
                format!("server CPU {:.0}%", 100.0 * used / elapsed.as_secs_f64())
            }
            Probe::Postgres {
                samples, waiting, ..
            } => format!(
                "a lock wait in {:.0}% of samples",
                100.0 * f64::from(*waiting) / f64::from((*samples).max(1))
            ),
            Probe::None => String::new(),
        }
    }
}

/// A worker: connects, says `ready`, subscribes on `go`, and closes when stdin closes.
async fn worker(url: &str, app: &str) -> Result<(), BoxError> {
    let service = Service::connect(url, ServiceConfig::default().app(app)).await?;
    println!("ready");
    let go = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await??;
    if go.trim() != "go" {
        return Ok(());
    }
    service
        .subscribe(
            STREAM,
            GROUP,
            |_m: Message| std::future::ready(Ok(())),
            SubscribeOptions::new()
                .start(StartPosition::Earliest)
                .concurrency(8),
        )
        .await?;
    // Until the parent closes stdin.
    tokio::task::spawn_blocking(|| std::io::stdin().lines().count()).await?;
    service.close().await?;
    Ok(())
}

async fn clean_up(backend: &str, url: &str, app: &str) {
    if backend != "redis" {
        return;
    }
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("streams:{{{app}.*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}

async fn drop_schema(tag: &str) {
    let base = std::env::var("STREAMS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    if let Ok(pool) = sqlx::PgPool::connect(&base).await {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS scaling_{tag} CASCADE"))
            .execute(&pool)
            .await;
    }
}
