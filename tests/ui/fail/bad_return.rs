use stream_runtime::prelude::*;

struct Opaque;

#[consumer(stream = "orders", group = "billing")]
async fn bill(_order: String) -> Result<(), Opaque> {
    Ok(())
}

fn main() {}
