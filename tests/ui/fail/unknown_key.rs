use stream_runtime::prelude::*;

#[consumer(stream = "orders", group = "billing", retries = 3)]
async fn bill(_order: String) -> Result<(), String> {
    Ok(())
}

fn main() {}
