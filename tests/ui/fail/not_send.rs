use std::rc::Rc;
use stream_runtime::prelude::*;

#[consumer(stream = "orders", group = "billing")]
async fn bill(order: String) -> Result<(), String> {
    let local = Rc::new(order);
    tokio::task::yield_now().await;
    drop(local);
    Ok(())
}

fn main() {}
