use stream_runtime::prelude::*;

#[consumer(stream = "orders", group = "billing")]
async fn bill(_msg: &Message) -> Result<(), String> {
    Ok(())
}

fn main() {}
