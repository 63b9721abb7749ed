use stream_runtime::prelude::*;

#[consumer(stream = "orders", group = "billing", stream = "refunds")]
async fn bill(_order: String) -> Result<(), String> {
    Ok(())
}

fn main() {}
