use stream_runtime::prelude::*;

#[consumer(stream = "orders", group = "billing", max_retries = "many", concurrency = 0)]
async fn bill(_order: String) -> Result<(), String> {
    Ok(())
}

fn main() {}
