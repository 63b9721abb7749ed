//! Batch consumers declared with `#[consumer(..., batch_size = N)]`, run by the test
//! harness: registration, batches of at most `batch_size`, poison payloads dead-lettered
//! alone, whole-batch and per-message failures, and `Streams.toml` precedence.
#![cfg(feature = "testing")]

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stream_runtime::prelude::*;
use stream_runtime::registry;
use stream_runtime::testing::{Counts, TestApp};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    id: u64,
    total_cents: i64,
}

/// The ids each call of a batch consumer got.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<Vec<u64>>>>);

impl Calls {
    fn all(&self) -> Vec<Vec<u64>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[consumer(
    stream = "bulk.orders",
    group = "bulk",
    batch_size = 100,
    batch_wait = "50ms"
)]
async fn bulk_bill(orders: Vec<Order>, calls: State<Calls>) -> Result<(), HandlerError> {
    calls
        .0
         .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(orders.iter().map(|o| o.id).collect());
    Ok(())
}

#[consumer(stream = "bulk.partial", group = "bulk", batch_size = 10)]
async fn bulk_partial(orders: Batch<Order>) -> BatchResult {
    let mut result = BatchResult::new();
    for item in &orders {
        if item.payload.total_cents < 0 {
            result.fail(&item.message.id, HandlerError::permanent("negative total"));
        } else if item.payload.id == 2 && item.message.attempt == 1 {
            result.fail(&item.message.id, HandlerError::retry("gateway timed out"));
        }
    }
    result
}

#[consumer(
    stream = "bulk.refused",
    group = "bulk",
    batch_size = 10,
    max_retries = 1
)]
async fn bulk_refused(orders: Vec<Order>) -> Result<(), String> {
    Err(format!("{} orders refused", orders.len()))
}

fn orders(ids: std::ops::Range<u64>) -> Vec<Vec<u8>> {
    ids.map(|id| {
        serde_json::to_vec(&Order {
            id,
            total_cents: 100,
        })
        .unwrap_or_default()
    })
    .collect()
}

#[test]
fn batch_consumers_register_their_settings() {
    let defs = registry::consumers().expect("no duplicates");
    let bill = defs
        .iter()
        .find(|d| d.name == "bulk_bill")
        .expect("bulk_bill is registered");
    assert!(
        bill.batch.is_some(),
        "a Vec<T> with batch_size takes a batch"
    );
    assert_eq!(bill.attributes.batch_size, Some(100));
    assert_eq!(bill.attributes.batch_wait, Some(Duration::from_millis(50)));
    assert_eq!(bill.payload_type, "Vec<Order>");
    let partial = defs
        .iter()
        .find(|d| d.name == "bulk_partial")
        .expect("bulk_partial is registered");
    assert!(partial.batch.is_some());
    assert_eq!(partial.attributes.batch_wait, None);
}

/// 1,000 messages with batch_size 100: at most 10 calls and a few, every message once; a
/// payload that does not decode is dead-lettered alone.
#[tokio::test]
async fn a_thousand_messages_in_batches_of_a_hundred() -> TestResult {
    let calls = Calls::default();
    let app = TestApp::builder()
        .consumers(["bulk_bill"])
        .state(calls.clone())
        .start()
        .await?;
    app.service()
        .publish_batch("bulk.orders", orders(0..500), PublishOptions::new())
        .await?;
    app.publish_raw("bulk.orders", "not json").await?;
    app.service()
        .publish_batch("bulk.orders", orders(500..1000), PublishOptions::new())
        .await?;
    app.settle().await?;
    assert_eq!(
        app.counts("bulk_bill"),
        Counts {
            deliveries: 1001,
            succeeded: 1000,
            failed: 1,
            dead_lettered: 1,
            ..Counts::default()
        }
    );
    let calls = calls.all();
    assert!(calls.len() <= 13, "{} calls", calls.len());
    assert!(calls.iter().all(|c| !c.is_empty() && c.len() <= 100));
    let mut ids: Vec<u64> = calls.into_iter().flatten().collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..1000).collect::<Vec<_>>());
    let dead = app.dead_letters("bulk.orders");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.payload.as_ref(), b"not json");
    assert!(
        dead[0].reason.starts_with("payload is not a valid Order"),
        "{}",
        dead[0].reason
    );
    app.shutdown().await?;
    Ok(())
}

/// A `BatchResult` fails only what it names: a permanent error dead-letters one message, a
/// retryable one brings one back; the others are acknowledged once.
#[tokio::test(start_paused = true)]
async fn per_message_results() -> TestResult {
    let app = TestApp::builder()
        .consumers(["bulk_partial"])
        .config_toml("[defaults]\nretry_delay = \"30s\"")
        .start()
        .await?;
    let mut payloads = orders(1..3);
    payloads.push(serde_json::to_vec(&Order {
        id: 3,
        total_cents: -5,
    })?);
    payloads.extend(orders(4..5));
    app.service()
        .publish_batch("bulk.partial", payloads, PublishOptions::new())
        .await?;
    app.settle().await?;
    assert_eq!(
        app.counts("bulk_partial"),
        Counts {
            deliveries: 5,
            succeeded: 3,
            failed: 2,
            retried: 1,
            dead_lettered: 1,
            panicked: 0,
        }
    );
    let dead = app.dead_letters("bulk.partial");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "negative total");
    app.shutdown().await?;
    Ok(())
}

/// `Err` fails every message of the batch, each by its own attempts: retried once, then
/// dead-lettered with the batch's error.
#[tokio::test(start_paused = true)]
async fn an_error_fails_the_whole_batch() -> TestResult {
    let app = TestApp::builder()
        .consumers(["bulk_refused"])
        .config_toml("[defaults]\nretry_delay = \"30s\"")
        .start()
        .await?;
    app.service()
        .publish_batch("bulk.refused", orders(0..3), PublishOptions::new())
        .await?;
    app.settle().await?;
    assert_eq!(
        app.counts("bulk_refused"),
        Counts {
            deliveries: 6,
            failed: 6,
            retried: 3,
            dead_lettered: 3,
            ..Counts::default()
        }
    );
    let dead = app.dead_letters("bulk.refused");
    assert_eq!(dead.len(), 3);
    assert!(dead.iter().all(|d| d.reason.ends_with(" orders refused")));
    app.shutdown().await?;
    Ok(())
}

/// `[consumers.<name>]` beats the attribute, which beats `[defaults]`.
#[tokio::test]
async fn batch_size_from_the_config() -> TestResult {
    let calls = Calls::default();
    let app = TestApp::builder()
        .consumers(["bulk_bill", "bulk_partial"])
        .state(calls.clone())
        .config_toml(
            "[defaults]\nbatch_size = 5\nbatch_wait = \"10ms\"\n\
             [consumers.bulk_bill]\nbatch_size = 10\n",
        )
        .start()
        .await?;
    let bill = app.options("bulk_bill").expect("bulk_bill runs");
    assert_eq!(
        bill.batch_size, 10,
        "[consumers.bulk_bill] beats the attribute"
    );
    assert_eq!(
        bill.batch_wait,
        Duration::from_millis(50),
        "the attribute beats [defaults]"
    );
    let partial = app.options("bulk_partial").expect("bulk_partial runs");
    assert_eq!(partial.batch_size, 10, "the attribute beats [defaults]");
    assert_eq!(partial.batch_wait, Duration::from_millis(10), "[defaults]");
    app.service()
        .publish_batch("bulk.orders", orders(0..100), PublishOptions::new())
        .await?;
    app.settle().await?;
    assert_eq!(app.counts("bulk_bill").succeeded, 100);
    assert!(
        calls.all().iter().all(|c| c.len() <= 10),
        "{:?}",
        calls.all()
    );
    app.shutdown().await?;
    Ok(())
}

/// The runtime starts registered batch consumers from the config, on SQLite: 1,000
/// messages in calls of at most the configured `batch_size`, all acknowledged.
#[tokio::test]
async fn the_runtime_runs_batch_consumers() -> TestResult {
    let dir = std::env::temp_dir().join(format!(
        "stream-runtime-batch-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite://{}", dir.join("streams.db").display());
    let config = stream_runtime::config::Config::from_toml_str(&format!(
        "backend = \"{url}\"\n[defaults]\nenabled = false\n\
         [consumers.bulk_bill]\nenabled = true\nbatch_size = 50\n"
    ))?;
    let calls = Calls::default();
    let seen = calls.clone();
    Runtime::new()
        .config(config)
        .state(calls.clone())
        .run_until(|service: Service| async move {
            service
                .publish_batch("bulk.orders", orders(0..1000), PublishOptions::new())
                .await?;
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while seen.all().iter().map(Vec::len).sum::<usize>() < 1000 {
                if std::time::Instant::now() > deadline {
                    return Err("the batch consumer did not handle 1,000 messages in 20 s".into());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let groups = service.admin().groups("bulk.orders").await?;
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let mut groups = groups;
            while !groups
                .iter()
                .any(|g| g.group == "bulk" && g.pending == 0 && g.lag == 0)
            {
                if std::time::Instant::now() > deadline {
                    return Err(format!("not all acknowledged: {groups:?}").into());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                groups = service.admin().groups("bulk.orders").await?;
            }
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        })
        .await?;
    let all = calls.all();
    assert!(
        all.iter().all(|c| !c.is_empty() && c.len() <= 50),
        "{all:?}"
    );
    assert!(
        all.len() <= 25,
        "{} calls for 1,000 messages in batches of 50",
        all.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
