//! Two OS processes on one Postgres: they share a group's work without double delivery, and
//! a publish in one wakes the other through LISTEN/NOTIFY, long before the poll interval.
//!
//! The child is this test binary run again with `STREAMS_PG_CHILD_APP` set: the
//! `child_process` test then acts as the second process, driven through stdin/stdout.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use stream_runtime::conformance::{unique_name, wait_for, Recorder};
use stream_runtime::{Message, PublishOptions, Service, ServiceConfig, SubscribeOptions};
use stream_tests::{pg, CallWatch, ChildProcess};

const CHILD_ENV: &str = "STREAMS_PG_CHILD_APP";
/// `share` (default) or `crash`: which part the child plays.
const MODE_ENV: &str = "STREAMS_PG_CHILD_MODE";
/// Far longer than any wait below: deliveries must come from NOTIFY, not from polling.
const POLL: Duration = Duration::from_secs(30);
const SHARED: usize = 200;

fn options() -> SubscribeOptions {
    SubscribeOptions::new().poll_interval(POLL).concurrency(4)
}

/// The second process. Does nothing unless started by the parent test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process() {
    let Ok(app) = std::env::var(CHILD_ENV) else {
        return;
    };
    let backend = pg::shared_backend()
        .await
        .expect("child: postgres unavailable");
    let (backend, idle) = CallWatch::wrap(backend);
    let service = Service::from_shared(backend, ServiceConfig::default().app(app));
    if std::env::var(MODE_ENV).is_ok_and(|m| m == "crash") {
        return crash_child(service).await;
    }
    let printer = |what: &'static str| {
        move |m: Message| {
            println!("CHILD {what} {}", String::from_utf8_lossy(&m.payload));
            async {
                // Handling takes a moment, so both processes get a share of the work.
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(())
            }
        }
    };
    service
        .subscribe("shared", "both", printer("shared"), options())
        .await
        .expect("child: subscribe shared");
    service
        .subscribe("ping", "child-only", printer("ping"), options())
        .await
        .expect("child: subscribe ping");
    // Idle: the ping that comes next must wake it.
    idle.wait_idle(".ping").await;
    println!("CHILD ready");
    let mut rx = stream_tests::stdin_lines();
    while let Some(line) = rx.recv().await {
        if let Some(payload) = line.strip_prefix("publish ") {
            service
                .publish("pong", payload, PublishOptions::new())
                .await
                .expect("child: publish");
        } else if line == "stop" {
            break;
        }
    }
    service.close().await.expect("child: close");
    println!("CHILD stopped");
}

/// The crashing child: takes a message and hangs in its handler until killed.
async fn crash_child(service: Service) {
    service
        .subscribe(
            "crash",
            "g",
            |m: Message| async move {
                println!(
                    "CHILD got {} {}",
                    String::from_utf8_lossy(&m.payload),
                    m.attempt
                );
                std::future::pending::<()>().await;
                Ok(())
            },
            SubscribeOptions::new()
                .visibility_timeout(Duration::from_secs(1))
                .poll_interval(Duration::from_millis(100)),
        )
        .await
        .expect("child: subscribe crash");
    println!("CHILD ready");
    std::future::pending::<()>().await;
}

fn spawn_child(app: &str, mode: &str) -> ChildProcess {
    ChildProcess::spawn("child_process", &[(CHILD_ENV, app), (MODE_ENV, mode)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_work_and_wake_each_other() {
    if std::env::var(CHILD_ENV).is_ok() {
        return; // the child runs only `child_process`
    }
    let Some(backend) = pg::shared_backend().await else {
        return;
    };
    let app = unique_name("pgproc");
    let (backend, idle) = CallWatch::wrap(backend);
    let service = Service::from_shared(backend, ServiceConfig::default().app(app.clone()));
    let shared = Recorder::new();
    let handler = {
        let shared = shared.clone();
        move |m: Message| {
            shared.record(&m);
            async {
                // Handling takes a moment, so both processes get a share of the work.
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(())
            }
        }
    };
    service
        .subscribe("shared", "both", handler, options())
        .await
        .expect("subscribe shared");
    let pongs = Recorder::new();
    service
        .subscribe("pong", "parent-only", pongs.handler(), options())
        .await
        .expect("subscribe pong");

    let mut child = spawn_child(&app, "share");
    // Both idle: what either handles next was pushed to it.
    wait_for("the child to subscribe", || child.has_line("ready")).await;
    idle.wait_idle(".pong").await;

    // This process publishes; the other one is woken.
    for round in 0..3 {
        let started = Instant::now();
        let payload = format!("ping-{round}");
        service
            .publish("ping", payload.as_str(), PublishOptions::new())
            .await
            .expect("publish ping");
        let line = format!("ping {payload}");
        wait_for("the child to handle the ping", || child.has_line(&line)).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "child woken after {:?}",
            started.elapsed()
        );

        // The other process publishes; this one is woken.
        let started = Instant::now();
        let payload = format!("pong-{round}");
        child.send(&format!("publish {payload}"));
        pongs.wait_payload(&payload).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "parent woken after {:?}",
            started.elapsed()
        );
    }

    // One group, two processes: every message handled once, by one of them.
    for batch in 0..SHARED / 10 {
        service
            .publish_batch(
                "shared",
                (0..10).map(|i| format!("s{}", batch * 10 + i)),
                PublishOptions::new(),
            )
            .await
            .expect("publish shared");
    }
    let child_shared = |child: &ChildProcess| -> Vec<String> {
        child
            .lines()
            .iter()
            .filter_map(|l| l.strip_prefix("shared ").map(str::to_owned))
            .collect()
    };
    wait_for("both processes to handle every shared message", || {
        shared.len() + child_shared(&child).len() >= SHARED
    })
    .await;
    // Time is the subject: a stray double delivery would show up within this window.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    let in_parent = shared.payloads();
    let in_child = child_shared(&child);
    for payload in in_parent.iter().chain(&in_child) {
        *counts.entry(payload.clone()).or_default() += 1;
    }
    assert_eq!(counts.len(), SHARED, "lost messages");
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "delivered twice: {doubled:?}");
    assert!(
        !in_parent.is_empty() && !in_child.is_empty(),
        "the work was not shared: parent {}, child {}",
        in_parent.len(),
        in_child.len()
    );

    child.send("stop");
    wait_for("the child to stop", || child.has_line("stopped")).await;
    let mut status = None;
    wait_for("the child to exit", || {
        status = child.child.try_wait().expect("child status");
        status.is_some()
    })
    .await;
    assert!(
        status.is_some_and(|s| s.success()),
        "child failed: {status:?}"
    );
    service.close().await.expect("close");
}

/// S17: a process killed (SIGKILL) while handling a message loses nothing: its claim
/// survives in the database and is redelivered, as attempt 2, once the visibility timeout
/// passes; a message published before the crash and never claimed is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_process_claim_is_redelivered() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let Some(backend) = pg::shared_backend().await else {
        return;
    };
    let app = unique_name("pgcrash");
    let service = Service::from_shared(backend, ServiceConfig::default().app(app.clone()));
    let mut child = spawn_child(&app, "crash");
    wait_for("the child to subscribe", || child.has_line("ready")).await;
    service
        .publish("crash", "victim", PublishOptions::new())
        .await
        .expect("publish");
    wait_for("the child to take the message", || {
        child.has_line("got victim 1")
    })
    .await;
    child.child.kill().expect("killing the child");
    child.child.wait().expect("reaping the child");
    stream_tests::victim_redelivered_after_crash(&service).await;
    service.close().await.expect("close");
}
