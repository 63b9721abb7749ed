use stream_runtime::prelude::*;

// A duration needs a unit: a bare number is a mistake the error should explain.
#[consumer(stream = "orders", group = "billing", poll_interval = 250, shutdown_timeout = 5.0)]
async fn bill(_order: String) -> Result<(), String> {
    Ok(())
}

fn main() {}
