//! The orders example's consumers: typed orders billed and shipped by two consumer groups,
//! a failure that succeeds on retry, billing publishing an invoice per order that a third
//! consumer sends, and the dead-letter stream's own consumer. The
//! `orders` binary runs them; `tests/harness.rs` tests them with `stream_runtime::testing`.
//! They live in the library so that both link them.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stream_runtime::dead_letter_headers;
use stream_runtime::prelude::*;
use tokio::sync::watch;

/// What the shop publishes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    /// The order number.
    pub id: u64,
    /// Who ordered.
    pub customer: String,
    /// The total, in cents.
    pub total_cents: i64,
}

/// What billing publishes for each order it billed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Invoice {
    /// The order billed.
    pub order: u64,
    /// Who pays.
    pub customer: String,
    /// The amount, in cents.
    pub total_cents: i64,
}

/// The order (modulo 1000) whose first billing attempt fails.
pub const FLAKY: u64 = 2;

/// What the consumers did, shared with the demo driver (cheap to clone).
#[derive(Clone, Debug, Default)]
pub struct Shop(Arc<ShopInner>);

#[derive(Debug, Default)]
pub struct ShopInner {
    /// Orders billed.
    pub billed: Mutex<BTreeSet<u64>>,
    /// Orders whose invoice was sent.
    pub invoiced: Mutex<BTreeSet<u64>>,
    /// Orders shipped.
    pub shipped: Mutex<BTreeSet<u64>>,
    /// The `run` header of each dead letter seen.
    pub dead_letters: Mutex<Vec<String>>,
    /// Told after every change.
    pub changed: Mutex<Option<watch::Sender<()>>>,
}

impl std::ops::Deref for Shop {
    type Target = ShopInner;
    fn deref(&self) -> &ShopInner {
        &self.0
    }
}

impl ShopInner {
    /// Adds `id` to `set` and tells the watcher.
    pub fn note(&self, set: &Mutex<BTreeSet<u64>>, id: u64) {
        set.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id);
        self.poke();
    }

    /// Tells the watcher that something changed.
    pub fn poke(&self) {
        if let Some(tx) = &*self.changed.lock().unwrap_or_else(PoisonError::into_inner) {
            tx.send_replace(());
        }
    }

    /// Whether `set` holds every one of `ids`.
    pub fn has_all(&self, set: &Mutex<BTreeSet<u64>>, ids: &[u64]) -> bool {
        let set = set.lock().unwrap_or_else(PoisonError::into_inner);
        ids.iter().all(|id| set.contains(id))
    }

    /// How many dead letters of one run were seen.
    pub fn dead_letters_of(&self, run: &str) -> usize {
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
pub async fn bill(
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
pub async fn send_invoice(invoice: Invoice, shop: State<Shop>) -> Result<(), HandlerError> {
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
pub async fn ship(order: Order, shop: State<Shop>) -> Result<(), HandlerError> {
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
pub async fn dead_letters(
    _payload: Raw,
    msg: &Message,
    shop: State<Shop>,
) -> Result<(), HandlerError> {
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
