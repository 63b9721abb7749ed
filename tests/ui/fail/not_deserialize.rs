use stream_runtime::prelude::*;

struct Order {
    id: u64,
}

#[consumer(stream = "orders", group = "billing")]
async fn bill(order: Order) -> Result<(), String> {
    let _ = order.id;
    Ok(())
}

fn main() {}
