// A transactional consumer on each SQL backend: the transaction beside the other arguments,
// in any order, writes and publishes through it.
use stream_runtime::prelude::*;
use stream_runtime::{PostgresTx, SqliteTx};

#[derive(serde::Deserialize)]
struct Order {
    id: u64,
}

#[consumer(stream = "orders", group = "billing", transactional)]
async fn bill(order: Order, tx: &mut PostgresTx, publisher: Publisher) -> Result<(), HandlerError> {
    sqlx::query("INSERT INTO invoices (order_id) VALUES ($1)")
        .bind(i64::try_from(order.id).unwrap_or_default())
        .execute(&mut **tx)
        .await
        .map_err(HandlerError::retry)?;
    publisher
        .publish_in(&mut **tx, "invoices", order.id.to_string(), PublishOptions::new())
        .await
        .map_err(HandlerError::retry)?;
    Ok(())
}

#[consumer(stream = "orders", group = "audit", transactional, concurrency = 2)]
async fn audit(_order: Order, msg: &Message, tx: &mut SqliteTx) -> Result<(), String> {
    sqlx::query("INSERT INTO audit (id) VALUES (?1)")
        .bind(msg.id.to_string())
        .execute(&mut **tx)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn main() {}
