use stream_runtime::prelude::*;

#[consumer(stream = "orders", group = "billing", retry_delay = "soon")]
async fn bill(_order: String) -> Result<(), String> {
    Ok(())
}

#[consumer(stream = "orders", group = "shipping", retry_delay(base = "5s", max = "1s"))]
async fn ship(_order: String) -> Result<(), String> {
    Ok(())
}

#[consumer(stream = "orders", group = "audit", retry_delay(base = "1s"), concurrency = 0)]
async fn audit(_order: String) -> Result<(), String> {
    Ok(())
}

fn main() {}
