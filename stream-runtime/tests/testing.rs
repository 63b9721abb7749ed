//! The test harness (`stream_runtime::testing`) on consumers declared in this test binary:
//! settling chains of publishes, paused time, the timeout report, selection, errors and
//! panics, configuration.
#![cfg(feature = "testing")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use stream_runtime::prelude::*;
use stream_runtime::testing::{Counts, Outcome, TestApp};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The service handlers publish with, set once the app has started.
#[derive(Clone, Default)]
struct Outbox(Arc<OnceLock<Service>>);

impl Outbox {
    async fn send(&self, stream: &str, value: &Step) -> Result<(), HandlerError> {
        let service = self
            .0
            .get()
            .ok_or_else(|| HandlerError::retry("the outbox has no service yet"))?;
        service
            .publish_json(stream, value, PublishOptions::new())
            .await?;
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Step {
    n: u32,
}

// ---- a chain: chain_a publishes to chain.b, chain_b to chain.c (twice), chain_c ends it --

#[consumer(stream = "chain.a", group = "relay")]
async fn chain_a(step: Step, out: State<Outbox>) -> Result<(), HandlerError> {
    out.send("chain.b", &Step { n: step.n + 1 }).await
}

#[consumer(stream = "chain.b", group = "relay")]
async fn chain_b(step: Step, out: State<Outbox>) -> Result<(), HandlerError> {
    // A short real pause: settle must not mistake a running handler for a quiet app.
    tokio::time::sleep(Duration::from_millis(20)).await;
    out.send("chain.c", &Step { n: step.n + 1 }).await?;
    out.send("chain.c", &Step { n: step.n + 10 }).await
}

#[consumer(stream = "chain.c", group = "sink")]
async fn chain_c(_step: Step) -> Result<(), HandlerError> {
    Ok(())
}

async fn start_with_outbox(names: &[&str]) -> Result<TestApp, stream_runtime::Error> {
    let outbox = Outbox::default();
    let app = TestApp::builder()
        .consumers(names.iter().copied())
        .state(outbox.clone())
        .start()
        .await?;
    let _ = outbox.0.set(app.service().clone());
    Ok(app)
}

#[tokio::test]
async fn settle_waits_for_messages_that_handlers_publish() -> TestResult {
    let app = start_with_outbox(&["chain_a", "chain_b", "chain_c"]).await?;
    app.publish("chain.a", &Step { n: 1 }).await?;
    app.publish("chain.a", &Step { n: 100 }).await?;
    app.settle().await?;

    assert_eq!(app.counts("chain_a"), succeeded(2));
    assert_eq!(app.counts("chain_b"), succeeded(2));
    assert_eq!(app.counts("chain_c"), succeeded(4));
    let c: Vec<Step> = app.published_json("chain.c")?;
    let mut ns: Vec<u32> = c.iter().map(|s| s.n).collect();
    ns.sort_unstable();
    assert_eq!(ns, [3, 12, 102, 111]);
    assert_eq!(app.published("chain.b").len(), 2);
    assert!(app.failures().is_empty(), "{:?}", app.failures());
    app.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn settle_returns_at_once_when_nothing_was_published() -> TestResult {
    let app = start_with_outbox(&["chain_c"]).await?;
    let wall = Instant::now();
    app.settle().await?;
    assert!(wall.elapsed() < Duration::from_millis(500));
    assert!(app.deliveries().is_empty());
    app.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_backlog_with_concurrent_workers_settles_with_every_message_handled_once() -> TestResult {
    let app = TestApp::builder()
        .consumers(["chain_c"])
        .config_toml("[consumers.chain_c]\nconcurrency = 8")
        .start()
        .await?;
    for n in 0..500 {
        app.publish("chain.c", &Step { n }).await?;
    }
    app.settle().await?;
    assert_eq!(app.counts("chain_c"), succeeded(500));
    let mut seen: Vec<u32> = app
        .deliveries()
        .iter()
        .map(|d| d.json::<Step>().map(|s| s.n))
        .collect::<Result<_, _>>()?;
    seen.sort_unstable();
    assert_eq!(seen, (0..500).collect::<Vec<_>>());
    app.shutdown().await?;
    Ok(())
}

fn succeeded(n: usize) -> Counts {
    Counts {
        deliveries: n,
        succeeded: n,
        ..Counts::default()
    }
}

// ---- paused time ------------------------------------------------------------------------

#[consumer(stream = "slow.retries", group = "g", max_retries = 3)]
async fn always_fails(_step: Step) -> Result<(), HandlerError> {
    Err(HandlerError::retry("the gateway is down"))
}

#[tokio::test(start_paused = true)]
async fn a_30s_retry_delay_costs_no_wall_time_under_a_paused_clock() -> TestResult {
    let app = TestApp::builder()
        .consumers(["always_fails"])
        .config_toml("[consumers.always_fails]\nretry_delay = \"30s\"")
        .start()
        .await?;
    let (wall, virtual_start) = (Instant::now(), tokio::time::Instant::now());
    app.publish("slow.retries", &Step { n: 1 }).await?;
    app.settle().await?;

    assert!(
        wall.elapsed() < Duration::from_secs(1),
        "took {:?}",
        wall.elapsed()
    );
    // Three retries, 30 s apart, really passed on the test's clock.
    assert!(virtual_start.elapsed() >= Duration::from_secs(90));
    assert_eq!(
        app.counts("always_fails"),
        Counts {
            deliveries: 4,
            failed: 4,
            retried: 3,
            dead_lettered: 1,
            ..Counts::default()
        }
    );
    let attempts: Vec<u32> = app.deliveries().iter().map(|d| d.attempt).collect();
    assert_eq!(attempts, [1, 2, 3, 4]);
    let dead = app.dead_letters("slow.retries");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "the gateway is down");
    assert_eq!(dead[0].attempts, 4);
    assert_eq!(dead[0].group, "g");
    assert_eq!(dead[0].message.json::<Step>()?, Step { n: 1 });
    app.shutdown().await?;
    Ok(())
}

#[consumer(
    stream = "slow.hangs",
    group = "g",
    max_retries = 1,
    visibility_timeout = "30s"
)]
async fn hangs(_step: Step) -> Result<(), HandlerError> {
    std::future::pending::<()>().await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_hangs_is_dead_lettered_after_its_visibility_timeouts_in_no_wall_time(
) -> TestResult {
    let app = TestApp::builder().consumers(["hangs"]).start().await?;
    let wall = Instant::now();
    app.publish("slow.hangs", &Step { n: 1 }).await?;
    app.settle().await?;
    assert!(
        wall.elapsed() < Duration::from_secs(1),
        "took {:?}",
        wall.elapsed()
    );
    let dead = app.dead_letters("slow.hangs");
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("visibility timeout"),
        "{}",
        dead[0].reason
    );
    // Two deliveries ran (and still hang); the second was given up on at the reclaim.
    let deliveries = app.deliveries_of("hangs");
    assert_eq!(deliveries.len(), 2);
    assert_eq!(deliveries[0].outcome, Outcome::Running);
    assert!(matches!(deliveries[1].outcome, Outcome::DeadLettered(_)));
    Ok(())
}

// ---- the timeout report -------------------------------------------------------------------

#[consumer(stream = "stuck", group = "forever", max_retries = "unlimited")]
async fn never_succeeds(_step: Step) -> Result<(), HandlerError> {
    Err(HandlerError::retry("the database is read-only"))
}

#[tokio::test]
async fn settle_times_out_listing_what_is_pending() -> TestResult {
    let app = TestApp::builder()
        .consumers(["never_succeeds"])
        .config_toml("[defaults]\nretry_delay = \"1h\"")
        .start()
        .await?;
    let id = app.publish("stuck", &Step { n: 1 }).await?;
    let wall = Instant::now();
    let error = match app.settle_within(Duration::from_millis(100)).await {
        Ok(()) => return Err("settle returned while a retry was due in an hour".into()),
        Err(e) => e,
    };
    assert!(wall.elapsed() >= Duration::from_millis(100));
    assert!(wall.elapsed() < Duration::from_secs(2));
    let text = format!("{error:?}");
    assert!(
        text.starts_with("the app did not settle within 100ms"),
        "{text}"
    );
    assert_eq!(error.pending.len(), 1, "{text}");
    let line = &error.pending[0];
    for part in [
        "consumer never_succeeds",
        "stream app.default.stuck",
        "group forever",
        &format!("message {id} waiting for attempt 2 (due in 3599."),
        "last attempt error: the database is read-only",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line:?}");
    }
    Ok(())
}

#[tokio::test]
async fn the_timeout_report_lists_unclaimed_messages() -> TestResult {
    // A consumer whose poll never comes and that is busy with its first message.
    let app = TestApp::builder()
        .consumers(["hangs"])
        .config_toml("[consumers.hangs]\nvisibility_timeout = \"1h\"")
        .start()
        .await?;
    let first = app.publish("slow.hangs", &Step { n: 1 }).await?;
    app.publish("slow.hangs", &Step { n: 2 }).await?;
    app.publish("slow.hangs", &Step { n: 3 }).await?;
    let Err(error) = app.settle_within(Duration::from_millis(100)).await else {
        return Err("settle returned while a handler hangs".into());
    };
    assert_eq!(error.pending.len(), 2, "{error}");
    assert!(
        error.pending[0].contains(&format!("message {first} being handled (attempt 1")),
        "{error}"
    );
    assert!(
        error.pending[1].contains("2 message(s) not yet claimed"),
        "{error}"
    );
    Ok(())
}

// ---- selection ------------------------------------------------------------------------------

static AUDITED: AtomicUsize = AtomicUsize::new(0);

#[consumer(stream = "picked", group = "billing")]
async fn picked_bill(_step: Step) -> Result<(), HandlerError> {
    Ok(())
}

#[consumer(stream = "picked", group = "audit")]
async fn picked_audit(_step: Step) -> Result<(), HandlerError> {
    AUDITED.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::test]
async fn a_consumer_not_selected_does_not_run() -> TestResult {
    let app = TestApp::builder()
        .consumers(["picked_bill"])
        .start()
        .await?;
    assert_eq!(app.consumer_names(), ["picked_bill"]);
    app.publish("picked", &Step { n: 1 }).await?;
    app.publish("picked", &Step { n: 2 }).await?;
    app.settle().await?;
    assert_eq!(app.counts("picked_bill").succeeded, 2);
    assert_eq!(app.counts("picked_audit"), Counts::default());
    assert_eq!(AUDITED.load(Ordering::SeqCst), 0);
    assert!(app.deliveries().iter().all(|d| d.consumer == "picked_bill"));
    app.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn selecting_an_unknown_consumer_is_an_error_listing_the_registered_ones() {
    let error = TestApp::builder()
        .consumers(["picked_bil"])
        .start()
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        error.contains("no consumer named picked_bil is registered"),
        "{error}"
    );
    assert!(error.contains("picked_bill"), "{error}");
    assert!(error.contains("chain_a"), "{error}");
}

#[tokio::test]
async fn a_missing_state_is_an_error_naming_the_consumer() {
    let error = TestApp::builder()
        .consumers(["chain_a"])
        .start()
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("consumer chain_a"), "{error}");
    assert!(error.contains("State<"), "{error}");
    assert!(error.contains("Outbox"), "{error}");
}

// ---- errors, panics, poison, configuration --------------------------------------------------

#[consumer(stream = "flaky", group = "g", max_retries = 2)]
async fn flaky(step: Step, msg: &Message) -> Result<(), HandlerError> {
    if step.n == 1 && msg.attempt == 1 {
        panic!("flaky handler panicked on {}", step.n);
    }
    if step.n == 2 {
        return Err(HandlerError::permanent("step 2 is never valid"));
    }
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn errors_panics_and_poison_are_reported() -> TestResult {
    let app = TestApp::builder().consumers(["flaky"]).start().await?;
    app.publish("flaky", &Step { n: 1 }).await?;
    app.publish("flaky", &Step { n: 2 }).await?;
    app.publish_raw("flaky", "{ not json").await?;
    app.settle().await?;

    assert_eq!(
        app.counts("flaky"),
        Counts {
            deliveries: 4,
            succeeded: 1,
            failed: 3,
            panicked: 1,
            retried: 1,
            dead_lettered: 2,
        }
    );
    let failures = app.failures();
    assert_eq!(failures.len(), 3);
    let panic = failures[0].failure().ok_or("no failure")?;
    assert!(panic.panicked);
    assert_eq!(panic.error, "flaky handler panicked on 1");
    assert!(matches!(failures[0].outcome, Outcome::Retried(_)));
    let dead = app.dead_letters("flaky");
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].reason, "step 2 is never valid");
    assert_eq!(dead[0].attempts, 1);
    assert!(
        dead[1].reason.starts_with("payload is not a valid"),
        "{}",
        dead[1].reason
    );
    assert_eq!(&dead[1].message.payload[..], b"{ not json");
    app.shutdown().await?;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_configuration_follows_the_runtime_rules() -> TestResult {
    // [consumers.<name>] beats the attribute (max_retries = 2): one attempt only.
    let app = TestApp::builder()
        .consumers(["flaky"])
        .config_toml("app = \"shop\"\n[consumers.flaky]\nmax_retries = 0")
        .start()
        .await?;
    assert_eq!(
        app.options("flaky").map(|o| o.max_retries.max_attempts()),
        Some(Some(1))
    );
    app.publish("flaky", &Step { n: 1 }).await?;
    app.settle().await?;
    let dead = app.dead_letters("flaky");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].from_stream, "shop.default.flaky");
    assert_eq!(app.published("shop.default.flaky").len(), 1);
    app.shutdown().await?;

    // A file, as the runtime reads it.
    let dir = std::env::temp_dir().join(format!("stream-testing-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("Streams.toml");
    std::fs::write(
        &file,
        "namespace = \"t\"\n[consumers.flaky]\nenabled = false\n",
    )?;
    let error = TestApp::builder()
        .consumers(["flaky"])
        .config_file(&file)
        .start()
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("consumer flaky is selected but the configuration disables it"));

    let error = TestApp::builder()
        .config_toml("[consumers.nobody]\nconcurrency = 2")
        .start()
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("[consumers.nobody] names no registered consumer"));
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test]
async fn without_a_selection_every_enabled_consumer_runs() -> TestResult {
    let outbox = Outbox::default();
    let app = TestApp::builder()
        .state(outbox.clone())
        .config_toml(
            "[consumers.hangs]\nenabled = false\n[consumers.never_succeeds]\nenabled = false",
        )
        .start()
        .await?;
    let _ = outbox.0.set(app.service().clone());
    let names = app.consumer_names();
    assert_eq!(
        names,
        [
            "always_fails",
            "chain_a",
            "chain_b",
            "chain_c",
            "flaky",
            "picked_audit",
            "picked_bill",
        ]
    );
    app.publish("chain.a", &Step { n: 1 }).await?;
    app.settle().await?;
    assert_eq!(app.counts("chain_c").succeeded, 2);
    app.shutdown().await?;
    Ok(())
}
