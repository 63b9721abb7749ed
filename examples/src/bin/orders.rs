//! The orders example: typed orders billed and shipped by two consumer groups, a failure
//! that succeeds on retry, billing publishing an invoice for each order (consume, then
//! publish) that a third consumer sends, and a poison message reaching the dead-letter
//! stream, where a fourth consumer logs it. Then it shuts down cleanly on its own (or on
//! Ctrl-C).
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

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use stream_runtime::dead_letter_headers;
use stream_runtime::prelude::*;
use tokio::sync::watch;

/// What the shop publishes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: u64,
    customer: String,
    total_cents: i64,
}

/// What billing publishes for each order it billed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Invoice {
    order: u64,
    customer: String,
    total_cents: i64,
}

/// Orders in one run of the demo.
const ORDERS: u64 = 5;
/// The order whose first billing attempt fails.
const FLAKY: u64 = 2;
/// How long the demo may take before it gives up (and exits non-zero).
const DEMO_DEADLINE: Duration = Duration::from_secs(60);

/// What the consumers did, shared with the demo driver (cheap to clone).
#[derive(Clone, Default)]
struct Shop(Arc<ShopInner>);

#[derive(Default)]
struct ShopInner {
    billed: Mutex<BTreeSet<u64>>,
    invoiced: Mutex<BTreeSet<u64>>,
    shipped: Mutex<BTreeSet<u64>>,
    dead_letters: Mutex<Vec<String>>,
    changed: Mutex<Option<watch::Sender<()>>>,
}

impl std::ops::Deref for Shop {
    type Target = ShopInner;
    fn deref(&self) -> &ShopInner {
        &self.0
    }
}

impl ShopInner {
    fn note(&self, set: &Mutex<BTreeSet<u64>>, id: u64) {
        set.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id);
        self.poke();
    }

    fn poke(&self) {
        if let Some(tx) = &*self.changed.lock().unwrap_or_else(PoisonError::into_inner) {
            tx.send_replace(());
        }
    }

    fn has_all(&self, set: &Mutex<BTreeSet<u64>>, ids: &[u64]) -> bool {
        let set = set.lock().unwrap_or_else(PoisonError::into_inner);
        ids.iter().all(|id| set.contains(id))
    }

    fn dead_letters_of(&self, run: &str) -> usize {
        self.dead_letters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|r| r.as_str() == run)
            .count()
    }
}

// ---- the consumers --------------------------------------------------------------------

/// Billing. The flaky order's first attempt fails; the retry succeeds. Each billed order's
/// invoice is published to `invoices` (in the consumer's own app and namespace).
#[consumer(
    stream = "orders",
    group = "billing",
    max_retries = 5,
    retry_delay(base = "100ms", max = "5s")
)]
async fn bill(
    order: Order,
    msg: &Message,
    shop: State<Shop>,
    publisher: Publisher,
) -> Result<(), HandlerError> {
    if order.id % 1000 == FLAKY && msg.attempt == 1 {
        tracing::warn!(
            "billing order {}: payment gateway timed out (attempt {}), will retry",
            order.id,
            msg.attempt
        );
        return Err(HandlerError::retry("payment gateway timed out"));
    }
    tracing::info!(
        "billed order {} for {} ({}.{:02} EUR, attempt {})",
        order.id,
        order.customer,
        order.total_cents / 100,
        order.total_cents % 100,
        msg.attempt
    );
    let invoice = Invoice {
        order: order.id,
        customer: order.customer,
        total_cents: order.total_cents,
    };
    // Forward the demo's run header, so the invoice belongs to the same run.
    let options = match msg.header("run") {
        Some(run) => PublishOptions::new().header("run", run),
        None => PublishOptions::new(),
    };
    publisher
        .publish_json("invoices", &invoice, options)
        .await
        .map_err(HandlerError::retry)?;
    shop.note(&shop.billed, order.id);
    Ok(())
}

/// Sends the invoices billing published.
#[consumer(stream = "invoices", group = "mailing")]
async fn send_invoice(invoice: Invoice, shop: State<Shop>) -> Result<(), HandlerError> {
    tracing::info!(
        "sent the invoice for order {} to {} ({}.{:02} EUR)",
        invoice.order,
        invoice.customer,
        invoice.total_cents / 100,
        invoice.total_cents % 100
    );
    shop.note(&shop.invoiced, invoice.order);
    Ok(())
}

/// Shipping: a different group, so it sees every order too.
#[consumer(stream = "orders", group = "shipping")]
async fn ship(order: Order, shop: State<Shop>) -> Result<(), HandlerError> {
    // Packing takes a moment: shutdown waits for parcels being packed.
    tracing::info!("packing order {}", order.id);
    tokio::time::sleep(Duration::from_millis(200)).await;
    tracing::info!("shipped order {} to {}", order.id, order.customer);
    shop.note(&shop.shipped, order.id);
    Ok(())
}

/// The dead-letter stream of `orders` is an ordinary stream: this consumer logs what
/// arrives there.
#[consumer(stream = "orders.dead", group = "audit")]
async fn dead_letters(_payload: Raw, msg: &Message, shop: State<Shop>) -> Result<(), HandlerError> {
    tracing::warn!(
        "dead letter from {} (group {}, message {}, {} attempt(s)): {} -- payload {:?}",
        msg.header(dead_letter_headers::STREAM).unwrap_or("?"),
        msg.header(dead_letter_headers::GROUP).unwrap_or("?"),
        msg.header(dead_letter_headers::ID).unwrap_or("?"),
        msg.header(dead_letter_headers::ATTEMPTS).unwrap_or("?"),
        msg.header(dead_letter_headers::REASON).unwrap_or("?"),
        String::from_utf8_lossy(&msg.payload),
    );
    shop.dead_letters
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(msg.header("run").unwrap_or_default().to_owned());
    shop.poke();
    Ok(())
}

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
