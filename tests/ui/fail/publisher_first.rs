use stream_runtime::prelude::*;

#[consumer(stream = "orders", group = "billing")]
async fn bill(_publisher: Publisher) -> Result<(), String> {
    Ok(())
}

fn main() {}
