// Every key, a typed payload, `&Message`, shared state and a custom error type.
use serde::Deserialize;
use stream_runtime::prelude::*;

#[derive(Deserialize)]
pub struct Order {
    pub id: u64,
}

pub struct Db;

#[derive(Debug)]
pub enum BillingError {
    Declined(u64),
}

impl std::fmt::Display for BillingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BillingError::Declined(id) => write!(f, "order {id} was declined"),
        }
    }
}

#[consumer(
    stream = "orders",
    group = "billing",
    max_retries = 5,
    concurrency = 4,
    visibility_timeout = "30s",
    poll_interval = "250ms",
    shutdown_timeout = "1m30s",
    start = "earliest",
    dead_letter = "failed-orders",
    app = "shop",
    namespace = "eu",
    name = "bill_orders",
    crate = "::stream_runtime"
)]
pub async fn bill(order: Order, msg: &Message, _db: State<Db>) -> Result<(), BillingError> {
    if msg.attempt > 3 {
        return Err(BillingError::Declined(order.id));
    }
    Ok(())
}

fn main() {
    let def = stream_runtime::registry::consumers()
        .unwrap()
        .into_iter()
        .find(|d| d.name == "bill_orders")
        .unwrap();
    assert_eq!((def.stream, def.group), ("orders", "billing"));
}
