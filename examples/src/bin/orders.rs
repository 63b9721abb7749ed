//! The orders example: typed orders billed and shipped by two consumer groups, a failure
//! that succeeds on retry, billing publishing an invoice for each order (consume, then
//! publish) that a third consumer sends, and a poison message reaching the dead-letter
//! stream, where a fourth consumer logs it. Then it shuts down cleanly on its own (or on
//! Ctrl-C). The consumers are in the library (`stream_examples::orders`), so tests can link
//! them too.
//!
//! ```sh
//! cargo run -p stream-examples --bin orders                        # Streams.toml: SQLite
//! STREAMS_BACKEND=memory:// cargo run -p stream-examples --bin orders
//! STREAMS_BACKEND=postgres://postgres@127.0.0.1:5432/test cargo run -p stream-examples --bin orders
//! STREAMS_BACKEND=redis://127.0.0.1:6379 cargo run -p stream-examples --bin orders
//! ORDERS_RUN_FOREVER=1 cargo run -p stream-examples --bin orders   # publish until Ctrl-C
//! cargo run -p stream-examples --bin orders -- --serve   # demo, then serve until Ctrl-C
//! ```
//!
//! With `--serve` the example keeps running after its demo, so its `[http]` endpoint
//! (Streams.toml: 127.0.0.1:9464) can be looked at: `curl 127.0.0.1:9464/metrics`,
//! `/healthz`, `/readyz`.

use std::sync::PoisonError;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use stream_examples::orders::{Order, Shop, FLAKY};
use stream_runtime::prelude::*;
use tokio::sync::watch;

/// Orders in one run of the demo.
const ORDERS: u64 = 5;
/// How long the demo may take before it gives up (and exits non-zero).
const DEMO_DEADLINE: Duration = Duration::from_secs(60);

// ---- the demo driver ------------------------------------------------------------------

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Publishes this run's orders and a poison message, then waits until every order is billed
/// and shipped and the poison message reached the dead-letter stream from both groups.
async fn demo(
    service: Service,
    shop: Shop,
    mut changed: watch::Receiver<()>,
) -> Result<(), BoxError> {
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)?
        .as_millis()
        .to_string();
    let base = (SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() % 1_000_000) * 1000;
    let ids: Vec<u64> = (1..=ORDERS).map(|i| base + i).collect();
    let options = PublishOptions::new().header("run", run.clone());
    for (i, id) in ids.iter().enumerate() {
        let order = Order {
            id: *id,
            customer: ["ada", "grace", "barbara", "edsger", "donald"][i % 5].to_owned(),
            total_cents: 1250 * (i as i64 + 1),
        };
        let msg_id = service
            .publish_json("orders", &order, options.clone())
            .await?;
        tracing::info!("published order {} as message {msg_id}", order.id);
    }
    let msg_id = service
        .publish("orders", "{\"id\": 42, \"customer\": oops", options.clone())
        .await?;
    tracing::info!("published a poison message (not JSON) as message {msg_id}");

    if std::env::var("ORDERS_RUN_FOREVER").is_ok_and(|v| v == "1") {
        tracing::info!(
            "ORDERS_RUN_FOREVER=1: publishing an order every 100ms until Ctrl-C / SIGTERM"
        );
        let mut next = base + ORDERS;
        loop {
            next += 1;
            let order = Order {
                id: next,
                customer: "loop".to_owned(),
                total_cents: 100,
            };
            service
                .publish_json("orders", &order, options.clone())
                .await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Streams.toml may switch consumers off (`enabled = false`): wait only for the others
    // (the runtime has logged which ones).
    let (billing, shipping, auditing) =
        (enabled("bill")?, enabled("ship")?, enabled("dead_letters")?);
    let mailing = billing && enabled("send_invoice")?;
    let done = || {
        (!billing || shop.has_all(&shop.billed, &ids))
            && (!mailing || shop.has_all(&shop.invoiced, &ids))
            && (!shipping || shop.has_all(&shop.shipped, &ids))
            && (!auditing
                || shop.dead_letters_of(&run) >= usize::from(billing) + usize::from(shipping))
    };
    tokio::time::timeout(DEMO_DEADLINE, async {
        while !done() {
            // A poke after the check is not lost: `changed` remembers it.
            let _ = changed.changed().await;
        }
    })
    .await
    .map_err(|_| format!("the demo did not finish within {DEMO_DEADLINE:?}"))?;
    let serve = std::env::args().skip(1).any(|a| a == "--serve");
    if billing && shipping && auditing && mailing {
        tracing::info!(
            "demo complete: {ORDERS} orders billed, invoiced and shipped, order {} billed on \
             its retry, the poison message dead-lettered by both groups{}",
            base + FLAKY,
            if serve { "" } else { "; shutting down" }
        );
    } else {
        tracing::info!("demo complete for the enabled consumers; shutting down");
    }
    if serve {
        tracing::info!("--serve: running until Ctrl-C / SIGTERM (see [http] in Streams.toml)");
        std::future::pending::<()>().await;
    }
    Ok(())
}

/// Whether the config (`Streams.toml` and the environment) leaves a consumer enabled.
fn enabled(name: &str) -> Result<bool, BoxError> {
    let config = stream_runtime::config::Config::load()?;
    let def = stream_runtime::registry::consumers()?
        .into_iter()
        .find(|def| def.name == name)
        .ok_or_else(|| format!("no consumer named {name}"))?;
    Ok(config.resolve(name, &def.attributes).enabled)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    stream_examples::init_logging();
    let shop = Shop::default();
    let (tx, changed) = watch::channel(());
    *shop.changed.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx);
    let driver = shop.clone();
    let result = Runtime::new()
        .state(shop)
        .run_until(move |service| demo(service, driver, changed))
        .await;
    // The runtime has logged any failure already: only the exit code is left to set.
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(_) => std::process::ExitCode::FAILURE,
    }
}
