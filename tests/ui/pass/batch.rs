// Batch consumers: `Vec<T>` with `batch_size`, `Batch<T>` (with or without it), state and
// a `Publisher`, and each return type a batch handler may have.
use stream_runtime::prelude::*;

#[derive(serde::Deserialize)]
struct Order {
    id: u64,
}

struct Db;

#[consumer(stream = "orders", group = "a", batch_size = 100, batch_wait = "50ms")]
async fn payloads(orders: Vec<Order>, _db: State<Db>) -> Result<(), HandlerError> {
    let _ = orders.iter().map(|o| o.id).sum::<u64>();
    Ok(())
}

#[consumer(stream = "orders", group = "b", batch_size = 10, concurrency = 2)]
async fn by_message(orders: Batch<Order>, _publisher: Publisher) -> BatchResult {
    let mut result = BatchResult::new();
    for item in &orders {
        if item.payload.id == 0 {
            result.fail(&item.message.id, HandlerError::permanent("no id"));
        }
    }
    result
}

#[consumer(stream = "orders", group = "c")]
async fn default_size(orders: Batch<Raw>) -> Result<BatchResult, String> {
    let mut result = BatchResult::new();
    if orders.is_empty() {
        return Err("empty".to_owned());
    }
    result.fail_at(0, HandlerError::retry("first one later"));
    Ok(result)
}

// Without `batch_size`, a `Vec<T>` is one message's payload (a JSON array).
#[consumer(stream = "orders", group = "d")]
async fn one_array(orders: Vec<Order>) -> Result<(), HandlerError> {
    let _ = orders.len();
    Ok(())
}

fn main() {}
