use stream_runtime::prelude::*;

#[consumer(stream = "orders", group = "billing")]
async fn bill(_order: String, _limit: u32) -> Result<(), String> {
    Ok(())
}

fn main() {}
