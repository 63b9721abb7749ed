use stream_runtime::prelude::*;

#[consumer(stream = "orders", group = "billing", visibility_timeout = "30")]
async fn bill(_order: String) -> Result<(), String> {
    Ok(())
}

fn main() {}
