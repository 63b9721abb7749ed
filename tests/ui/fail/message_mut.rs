use stream_runtime::prelude::*;

#[consumer(stream = "orders", group = "billing")]
async fn bill(_order: String, _msg: &mut Message) -> Result<(), String> {
    Ok(())
}

fn main() {}
