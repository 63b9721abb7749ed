//! The `orders` example's consumers (`stream_examples::orders`) under the test harness
//! (`stream_runtime::testing`), with the example's own `Streams.toml`: the happy path, the
//! retry of the flaky order, the poison message in the dead-letter stream, and a handler
//! that publishes. Each runs on tokio's paused clock, so retry delays cost no wall time.

use std::collections::BTreeSet;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use stream_examples::orders::{Invoice, Order, Shop, FLAKY};
use stream_runtime::testing::{Counts, Failure, Outcome, TestApp, TestAppBuilder};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The example's consumers with its `Streams.toml` (its `backend` is ignored: the harness
/// runs in memory).
fn orders_app(shop: &Shop) -> TestAppBuilder {
    TestApp::builder()
        .consumers(["bill", "ship", "dead_letters"])
        .config_file(concat!(env!("CARGO_MANIFEST_DIR"), "/../Streams.toml"))
        .state(shop.clone())
}

fn order(id: u64) -> Order {
    Order {
        id,
        customer: "ada".to_owned(),
        total_cents: 1250,
    }
}

fn ids(set: &std::sync::Mutex<BTreeSet<u64>>) -> Vec<u64> {
    set.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .copied()
        .collect()
}

fn under_a_second(wall: Instant) {
    let took = wall.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?} of wall time");
}

fn succeeded(n: usize) -> Counts {
    Counts {
        deliveries: n,
        succeeded: n,
        ..Counts::default()
    }
}

#[tokio::test(start_paused = true)]
async fn every_order_is_billed_and_shipped_once() -> TestResult {
    let wall = Instant::now();
    let shop = Shop::default();
    let app = orders_app(&shop).start().await?;
    assert_eq!(app.options("bill").map(|o| o.concurrency), Some(2));
    for id in [1001, 1003, 1004] {
        app.publish("orders", &order(id)).await?;
    }
    app.settle().await?;

    assert_eq!(app.counts("bill"), succeeded(3));
    assert_eq!(app.counts("ship"), succeeded(3));
    assert_eq!(app.counts("dead_letters"), Counts::default());
    assert_eq!(ids(&shop.billed), [1001, 1003, 1004]);
    assert_eq!(ids(&shop.shipped), [1001, 1003, 1004]);
    assert_eq!(app.published("orders").len(), 3);
    assert!(app.dead_letters("orders").is_empty());
    assert!(app.failures().is_empty(), "{:?}", app.failures());
    app.shutdown().await?;
    under_a_second(wall);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn the_flaky_order_fails_its_first_billing_and_is_billed_on_the_retry() -> TestResult {
    let wall = Instant::now();
    let shop = Shop::default();
    let app = orders_app(&shop).start().await?;
    app.publish("orders", &order(1000 + FLAKY)).await?;
    app.settle().await?;

    assert_eq!(
        app.counts("bill"),
        Counts {
            deliveries: 2,
            succeeded: 1,
            failed: 1,
            retried: 1,
            ..Counts::default()
        }
    );
    let bills = app.deliveries_of("bill");
    assert_eq!(bills.iter().map(|d| d.attempt).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(
        bills[0].failure(),
        Some(&failure("payment gateway timed out"))
    );
    assert!(matches!(bills[0].outcome, Outcome::Retried(_)));
    assert_eq!(bills[1].outcome, Outcome::Succeeded);
    assert_eq!(app.counts("ship"), succeeded(1));
    assert_eq!(ids(&shop.billed), [1002]);
    assert!(app.dead_letters("orders").is_empty());
    app.shutdown().await?;
    under_a_second(wall);
    Ok(())
}

fn failure(error: &str) -> Failure {
    Failure {
        error: error.to_owned(),
        permanent: false,
        panicked: false,
    }
}

#[tokio::test(start_paused = true)]
async fn a_poison_message_is_dead_lettered_by_both_groups_and_audited() -> TestResult {
    let wall = Instant::now();
    let shop = Shop::default();
    let app = orders_app(&shop).start().await?;
    let id = app
        .publish_raw("orders", "{\"id\": 42, \"customer\": oops")
        .await?;
    app.settle().await?;

    let poisoned = Counts {
        deliveries: 1,
        failed: 1,
        dead_lettered: 1,
        ..Counts::default()
    };
    assert_eq!(app.counts("bill"), poisoned);
    assert_eq!(app.counts("ship"), poisoned);
    // `dead_letters` consumes `orders.dead`: it saw both.
    assert_eq!(app.counts("dead_letters"), succeeded(2));
    assert_eq!(
        shop.dead_letters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len(),
        2
    );

    let dead = app.dead_letters("orders");
    assert_eq!(dead.len(), 2);
    let groups: BTreeSet<&str> = dead.iter().map(|d| d.group.as_str()).collect();
    assert_eq!(groups, BTreeSet::from(["billing", "shipping"]));
    for d in &dead {
        assert_eq!(d.original_id, id.to_string());
        assert_eq!(d.attempts, 1);
        assert_eq!(d.from_stream, "shop.demo.orders");
        assert!(
            d.reason.starts_with("payload is not a valid"),
            "{}",
            d.reason
        );
        assert_eq!(&d.message.payload[..], b"{\"id\": 42, \"customer\": oops");
    }
    assert_eq!(app.published("orders.dead").len(), 2);
    assert!(ids(&shop.billed).is_empty());
    app.shutdown().await?;
    under_a_second(wall);
    Ok(())
}

// ---- a handler that publishes ---------------------------------------------------------

/// Billing publishes an invoice per billed order (through its `Publisher` argument), which
/// `send_invoice` consumes: settling waits for both hops.
#[tokio::test(start_paused = true)]
async fn billing_publishes_an_invoice_that_is_sent() -> TestResult {
    let wall = Instant::now();
    let shop = Shop::default();
    // No selection: every consumer of the example.
    let app = TestApp::builder()
        .config_file(concat!(env!("CARGO_MANIFEST_DIR"), "/../Streams.toml"))
        .state(shop.clone())
        .start()
        .await?;
    assert_eq!(
        app.consumer_names(),
        ["bill", "dead_letters", "send_invoice", "ship"]
    );
    app.publish("orders", &order(1001)).await?;
    app.publish("orders", &order(1000 + FLAKY)).await?;
    app.settle().await?;

    let mut invoices: Vec<Invoice> = app.published_json("invoices")?;
    invoices.sort_by_key(|i| i.order);
    assert_eq!(
        invoices
            .iter()
            .map(|i| (i.order, i.total_cents))
            .collect::<Vec<_>>(),
        [(1001, 1250), (1002, 1250)],
        "one invoice per billed order, none for the failed attempt"
    );
    assert_eq!(app.counts("send_invoice"), succeeded(2));
    assert_eq!(app.counts("bill").succeeded, 2);
    assert_eq!(app.counts("ship"), succeeded(2));
    assert_eq!(ids(&shop.invoiced), [1001, 1002]);
    app.shutdown().await?;
    under_a_second(wall);
    Ok(())
}
