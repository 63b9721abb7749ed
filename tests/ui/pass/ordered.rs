// A consumer ordered by key, and one that says so explicitly that it is not.
use stream_runtime::prelude::*;

#[consumer(stream = "orders", group = "shipping", ordered = "key", concurrency = 16)]
async fn ship(_order: String) -> Result<(), HandlerError> {
    Ok(())
}

#[consumer(stream = "orders", group = "audit", ordered = "none")]
async fn audit(_order: String) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
