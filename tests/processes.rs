//! Four OS processes in one group, on each backend that several processes can share
//! (Postgres, Redis, a Redis Cluster, one SQLite file): the parent publishes while they
//! consume, kills one (SIGKILL) and closes another gracefully in the middle of the run.
//! Every message is handled; a message is handled twice only if the killed process handled
//! it (its claims in flight, never acknowledged, are delivered again); and the two processes
//! that run to the end each handle at least 15% of the messages.
//!
//! 50,000 messages a run; the runs take turns (each starts five processes) and print their
//! figures (`processes <backend>: ...`).
//!
//! The workers are this test binary run again (`worker_child`, which does nothing unless
//! [`URL_ENV`] is set).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use stream_runtime::conformance::{eventually, unique_name};
use stream_runtime::{Message, PublishOptions, Service, ServiceConfig, SubscribeOptions};
use stream_tests::{backend_url, shared_cluster, ChildProcess};

/// The backend URL, set only in a worker.
const URL_ENV: &str = "STREAMS_PROCS_URL";
const APP_ENV: &str = "STREAMS_PROCS_APP";
const WORKERS: usize = 4;
const STREAM: &str = "work";
const GROUP: &str = "g";

/// How many messages a run publishes.
const MESSAGES: usize = 50_000;

fn options() -> SubscribeOptions {
    SubscribeOptions::new()
        .concurrency(8)
        .poll_interval(Duration::from_millis(100))
        // Far longer than a claim lives here (a no-op handler): only the killed worker's
        // claims expire.
        .visibility_timeout(Duration::from_secs(5))
        .shutdown_timeout(Duration::from_secs(10))
}

/// A worker: handles `work` in group `g`, printing `CHILD done <payload>` for each message
/// its handler finished (before the acknowledgement), until `stop` on stdin closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_child() {
    let (Ok(url), Ok(app)) = (std::env::var(URL_ENV), std::env::var(APP_ENV)) else {
        return;
    };
    let service = Service::connect(&url, ServiceConfig::default().app(app))
        .await
        .expect("worker: connect");
    service
        .subscribe(
            STREAM,
            GROUP,
            |m: Message| {
                println!("CHILD done {}", String::from_utf8_lossy(&m.payload));
                std::future::ready(Ok(()))
            },
            options(),
        )
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

/// The payloads a worker handled.
fn handled(worker: &ChildProcess) -> Vec<String> {
    worker.with_lines(|lines| {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix("done ").map(str::to_owned))
            .collect()
    })
}

fn handled_count(workers: &[ChildProcess]) -> usize {
    workers
        .iter()
        .map(|w| w.with_lines(|lines| lines.iter().filter(|l| l.starts_with("done ")).count()))
        .sum()
}

/// Waits up to two minutes for `cond` (a run of 50,000 takes a while on a busy machine).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    if !eventually(Duration::from_secs(120), || std::future::ready(cond())).await {
        panic!("timed out after 120 s waiting for {what}");
    }
}

/// One run at a time: each starts five processes on a machine of two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn four_processes_share_a_group(kind: &str, url: String) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let total = MESSAGES;
    let app = unique_name("procs");
    let service = Service::connect(&url, ServiceConfig::default().app(app.clone()))
        .await
        .expect("connect");
    let mut workers: Vec<ChildProcess> = (0..WORKERS)
        .map(|_| ChildProcess::spawn("worker_child", &[(URL_ENV, &url), (APP_ENV, &app)]))
        .collect();
    for (i, worker) in workers.iter().enumerate() {
        let ready = eventually(Duration::from_secs(60), || {
            std::future::ready(worker.has_line("ready"))
        })
        .await;
        assert!(ready, "worker {i} did not subscribe");
    }

    let started = Instant::now();
    let publisher = {
        let service = service.clone();
        tokio::spawn(async move {
            for batch in 0..total.div_ceil(250) {
                let payloads: Vec<String> = (batch * 250..((batch + 1) * 250).min(total))
                    .map(|i| format!("m{i}"))
                    .collect();
                service
                    .publish_batch(STREAM, payloads, PublishOptions::new())
                    .await
                    .expect("publish");
            }
        })
    };

    // Worker 0 is killed a quarter of the way in, worker 1 closed at half way.
    until("a quarter of the messages handled", || {
        handled_count(&workers) >= total / 4
    })
    .await;
    workers[0].kill();
    until("half of the messages handled", || {
        handled_count(&workers) >= total / 2
    })
    .await;
    workers[1].send("stop");
    let closed = eventually(Duration::from_secs(30), || {
        std::future::ready(workers[1].has_line("closed"))
    })
    .await;
    assert!(closed, "worker 1 did not close");
    publisher.await.expect("publisher");

    let unique = |workers: &[ChildProcess]| -> usize {
        let mut seen = HashSet::new();
        for w in workers {
            w.with_lines(|lines| {
                seen.extend(
                    lines
                        .iter()
                        .filter_map(|l| l.strip_prefix("done ").map(str::to_owned)),
                );
            });
        }
        seen.len()
    };
    // The killed worker's claims come back after their visibility timeout (5 s).
    let all = eventually(Duration::from_secs(120), || {
        std::future::ready(unique(&workers) >= total)
    })
    .await;
    let elapsed = started.elapsed();
    for worker in &mut workers[2..] {
        worker.send("stop");
    }
    for (i, worker) in workers.iter().enumerate().skip(2) {
        let closed = eventually(Duration::from_secs(30), || {
            std::future::ready(worker.has_line("closed"))
        })
        .await;
        assert!(closed, "worker {i} did not close");
    }

    let per_worker: Vec<Vec<String>> = workers.iter().map(handled).collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for payload in per_worker.iter().flatten() {
        *counts.entry(payload.as_str()).or_default() += 1;
    }
    let killed: HashSet<&str> = per_worker[0].iter().map(String::as_str).collect();
    let doubled: Vec<&str> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(p, _)| *p)
        .collect();
    let shares: Vec<String> = per_worker
        .iter()
        .map(|h| format!("{:.1}%", 100.0 * h.len() as f64 / total as f64))
        .collect();
    eprintln!(
        "processes {kind}: {total} messages, {} handled ({} twice) in {:.1} s ({:.0} msg/s); \
         per process (killed, closed, ran to the end x2): {:?} = {shares:?}",
        counts.len(),
        doubled.len(),
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        per_worker.iter().map(Vec::len).collect::<Vec<_>>(),
    );
    assert!(all, "only {} of {total} messages handled", counts.len());
    assert_eq!(
        counts.len(),
        total,
        "handled messages differ from published ones"
    );
    let foreign: Vec<&&str> = doubled.iter().filter(|p| !killed.contains(**p)).collect();
    assert!(
        foreign.is_empty(),
        "handled twice without the killed process having handled them: {:?}",
        &foreign[..foreign.len().min(5)]
    );
    for (i, handled) in per_worker.iter().enumerate().skip(2) {
        assert!(
            handled.len() * 100 >= total * 15,
            "worker {i} handled only {} of {total}",
            handled.len()
        );
    }
    service.close().await.expect("close");
}

/// The run on the backend of `kind` ([`backend_url`]), unless this is a worker.
async fn run_on(kind: &str) {
    if std::env::var_os(URL_ENV).is_some() {
        return;
    }
    if let Some(url) = backend_url(kind).await {
        four_processes_share_a_group(kind, url).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_share_a_group_postgres() {
    run_on("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_share_a_group_redis() {
    run_on("redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_share_a_group_sqlite() {
    run_on("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_share_a_group_redis_cluster() {
    if std::env::var_os(URL_ENV).is_some() {
        return;
    }
    if let Some(cluster) = tokio::task::spawn_blocking(|| shared_cluster().map(|c| c.url()))
        .await
        .expect("starting the cluster")
    {
        four_processes_share_a_group("redis cluster", cluster).await;
    }
}
