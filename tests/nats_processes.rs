//! S17 on NATS JetStream: a process killed with SIGKILL while handling loses nothing. The
//! claim survives in the group's state on the server and is redelivered, as attempt 2,
//! once its visibility timeout passes; messages published before and after the crash are
//! all delivered, each once.
//!
//! The child is this test binary run again with `STREAMS_NATS_CHILD_APP` set: the
//! `child_process` test then acts as the process that is killed.

use std::collections::HashMap;
use std::time::Duration;

use stream_runtime::conformance::{unique_name, wait_for};
use stream_runtime::{Message, PublishOptions, Service, ServiceConfig, SubscribeOptions};
use stream_tests::{shared_nats, ChildProcess};

const CHILD_ENV: &str = "STREAMS_NATS_CHILD_APP";
const BACKLOG: usize = 5;

/// The process that is killed: takes messages and hangs in its handler on `victim`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_process() {
    let Ok(app) = std::env::var(CHILD_ENV) else {
        return;
    };
    let backend = shared_nats().await.expect("child: nats unavailable");
    let service = Service::from_shared(backend, ServiceConfig::default().app(app));
    service
        .subscribe(
            "crash",
            "g",
            |m: Message| async move {
                let payload = String::from_utf8_lossy(&m.payload).into_owned();
                println!("CHILD got {payload} {}", m.attempt);
                if payload == "victim" {
                    std::future::pending::<()>().await;
                }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_process_claim_is_redelivered() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let Some(backend) = shared_nats().await else {
        return;
    };
    let app = unique_name("natscrash");
    let service = Service::from_shared(backend, ServiceConfig::default().app(app.clone()));
    let mut child = ChildProcess::spawn("child_process", &[(CHILD_ENV, &app)]);
    wait_for("the child to subscribe", || child.has_line("ready")).await;
    service
        .publish("crash", "victim", PublishOptions::new())
        .await
        .expect("publish");
    wait_for("the child to take the message", || {
        child.has_line("got victim 1")
    })
    .await;
    // The child still handles others while one handler hangs; these are acked before the
    // kill, or redelivered after it.
    service
        .publish_batch(
            "crash",
            (0..BACKLOG).map(|i| format!("before{i}")),
            PublishOptions::new(),
        )
        .await
        .expect("publish before the kill");
    child.child.kill().expect("killing the child");
    child.child.wait().expect("reaping the child");
    let handled_by_child: Vec<String> = child
        .lines()
        .iter()
        .filter_map(|l| {
            l.strip_prefix("got before")
                .map(|rest| format!("before{rest}"))
        })
        .collect();
    let rec = stream_tests::victim_redelivered_after_crash(&service).await;
    // Every message published before the kill reached a handler: the child's or ours.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for p in rec.payloads() {
        *seen.entry(p).or_default() += 1;
    }
    for i in 0..BACKLOG {
        let name = format!("before{i}");
        let ours = seen.get(&name).copied().unwrap_or(0);
        let child_saw = handled_by_child.iter().any(|l| l.starts_with(&name));
        assert!(ours + usize::from(child_saw) >= 1, "{name} was lost");
        assert!(ours <= 1, "{name} delivered {ours} times after the crash");
    }
    assert_eq!(seen.get("survivor"), Some(&1));
    service.close().await.expect("close");
}
