//! The lease heartbeat and a crash: a process killed (SIGKILL) in the middle of a handler
//! that outlived its visibility timeout several times over (the heartbeat kept its claim, so
//! another consumer of the group did not get the message meanwhile) has its message
//! redelivered within one visibility timeout and one heartbeat period of the kill: a dead
//! process's claims stop being extended, and expire as any other.
//!
//! One short test per durable backend (SQLite, Postgres, Redis, NATS). The child is this test
//! binary run again (`heartbeat_child`, which does nothing unless [`URL_ENV`] is set).

use std::time::{Duration, Instant};

use stream_runtime::conformance::{unique_name, wait_for, Recorder};
use stream_runtime::{Message, PublishOptions, Service, ServiceConfig, SubscribeOptions};
use stream_tests::{backend_url, ChildProcess};

const URL_ENV: &str = "STREAMS_HEARTBEAT_URL";
const APP_ENV: &str = "STREAMS_HEARTBEAT_APP";
const STREAM: &str = "hb";
const GROUP: &str = "g";
const VISIBILITY: Duration = Duration::from_millis(600);
/// How long the child's handler runs before the kill: several visibility timeouts.
const HELD_FOR: Duration = Duration::from_millis(2000);
/// What the parent's consumer adds to the expiry: its poll interval (it has no wake-up for
/// another process's expired claim) and a claim's round trip on a busy machine.
const SLACK: Duration = Duration::from_millis(250);

/// The process that is killed: heartbeat on, a handler that never returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_child() {
    let (Ok(url), Ok(app)) = (std::env::var(URL_ENV), std::env::var(APP_ENV)) else {
        return;
    };
    let service = Service::connect(&url, ServiceConfig::default().app(app))
        .await
        .expect("child: connect");
    service
        .subscribe(
            STREAM,
            GROUP,
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
                .visibility_timeout(VISIBILITY)
                .poll_interval(Duration::from_millis(50))
                .heartbeat(true),
        )
        .await
        .expect("child: subscribe");
    println!("CHILD ready");
    std::future::pending::<()>().await;
}

async fn killed_mid_handler(kind: &str) {
    if std::env::var(URL_ENV).is_ok() {
        return;
    }
    let Some(url) = backend_url(kind).await else {
        return;
    };
    let app = unique_name("hbcrash");
    let service = Service::connect(&url, ServiceConfig::default().app(app.clone()))
        .await
        .expect("connect");
    let mut child = ChildProcess::spawn("heartbeat_child", &[(URL_ENV, &url), (APP_ENV, &app)]);
    wait_for("the child to subscribe", || child.has_line("ready")).await;
    service
        .publish(STREAM, "victim", PublishOptions::new())
        .await
        .expect("publish");
    wait_for("the child to take the message", || {
        child.has_line("got victim 1")
    })
    .await;
    // A consumer of the same group here, polling often: it would take the message at the
    // child's first deadline if the heartbeat did not extend it.
    let rec = Recorder::new();
    let _consumer = service
        .subscribe(
            STREAM,
            GROUP,
            rec.handler(),
            SubscribeOptions::new()
                .visibility_timeout(Duration::from_secs(30))
                .poll_interval(Duration::from_millis(50)),
        )
        .await
        .expect("subscribe");
    // Time is the subject: the handler runs past several visibility timeouts.
    tokio::time::sleep(HELD_FOR).await;
    assert!(
        rec.is_empty(),
        "{kind}: the message was taken over while the heartbeat held it"
    );
    child.kill();
    let killed = Instant::now();
    rec.wait_len(1, "the victim after the kill").await;
    let took = killed.elapsed();
    let period = VISIBILITY / 3;
    let m = &rec.messages()[0];
    assert_eq!(m.attempt, 2, "{kind}: the child's delivery counts");
    assert!(
        took <= VISIBILITY + period + SLACK,
        "{kind}: redelivered {took:?} after the kill; at most the visibility timeout \
         ({VISIBILITY:?}) + one heartbeat period ({period:?}) + {SLACK:?} expected"
    );
    eprintln!("heartbeat_crash {kind}: redelivered {took:?} after the kill");
    service.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_killed_mid_handler() {
    killed_mid_handler("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_mid_handler() {
    killed_mid_handler("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_handler() {
    killed_mid_handler("redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_mid_handler() {
    killed_mid_handler("nats").await;
}
