// `batch_size` must be from 1 to 10000, and a number.
use stream_runtime::prelude::*;

#[consumer(stream = "orders", group = "a", batch_size = 0)]
async fn zero(orders: Vec<String>) -> Result<(), HandlerError> {
    let _ = orders;
    Ok(())
}

#[consumer(stream = "orders", group = "b", batch_size = 10001)]
async fn too_many(orders: Vec<String>) -> Result<(), HandlerError> {
    let _ = orders;
    Ok(())
}

#[consumer(stream = "orders", group = "c", batch_size = "100")]
async fn quoted(orders: Vec<String>) -> Result<(), HandlerError> {
    let _ = orders;
    Ok(())
}

fn main() {}
