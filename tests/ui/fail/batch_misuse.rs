// A batch handler taking `&Message`, a transactional batch handler, and a batch handler
// returning something that is no batch result.
use stream_runtime::prelude::*;
use stream_runtime::PostgresTx;

#[consumer(stream = "orders", group = "a", batch_size = 10)]
async fn with_message(orders: Vec<String>, msg: &Message) -> Result<(), HandlerError> {
    let _ = (orders, msg);
    Ok(())
}

#[consumer(stream = "orders", group = "b", batch_size = 10, transactional)]
async fn transactional(orders: Vec<String>, tx: &mut PostgresTx) -> Result<(), HandlerError> {
    let _ = (orders, tx);
    Ok(())
}

#[consumer(stream = "orders", group = "c")]
async fn bad_return(orders: Batch<String>) -> Option<()> {
    let _ = orders;
    None
}

fn main() {}
