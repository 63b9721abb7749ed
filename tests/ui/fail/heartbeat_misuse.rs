// `heartbeat` takes no string, and is given once.
use stream_runtime::prelude::*;

#[consumer(stream = "orders", group = "a", heartbeat = "yes")]
async fn string_value(_order: String) -> Result<(), HandlerError> {
    Ok(())
}

#[consumer(stream = "orders", group = "b", heartbeat, heartbeat = false)]
async fn twice(_order: String) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
