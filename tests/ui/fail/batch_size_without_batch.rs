// `batch_size` or `batch_wait` on a handler that takes one message.
use stream_runtime::prelude::*;

#[consumer(stream = "orders", group = "a", batch_size = 100)]
async fn one(order: String) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

#[consumer(stream = "orders", group = "b", batch_wait = "50ms")]
async fn wait_only(order: String) -> Result<(), HandlerError> {
    let _ = order;
    Ok(())
}

fn main() {}
