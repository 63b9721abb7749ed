use stream_runtime::prelude::*;

#[consumer(stream = "orders", group = "billing")]
async fn bill<T: serde::de::DeserializeOwned>(_order: T) -> Result<(), String> {
    Ok(())
}

fn main() {}
