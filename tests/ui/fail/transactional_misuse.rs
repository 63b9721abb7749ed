// A transactional consumer without its transaction, a transaction without `transactional`,
// `transactional` given a value, and a `&mut` of something that is no transaction.
use stream_runtime::prelude::*;
use stream_runtime::PostgresTx;

#[consumer(stream = "orders", group = "a", transactional)]
async fn no_tx(_order: String) -> Result<(), HandlerError> {
    Ok(())
}

#[consumer(stream = "orders", group = "b")]
async fn tx_without_flag(_order: String, _tx: &mut PostgresTx) -> Result<(), HandlerError> {
    Ok(())
}

#[consumer(stream = "orders", group = "c", transactional = true)]
async fn flag_with_value(_order: String, _tx: &mut PostgresTx) -> Result<(), HandlerError> {
    Ok(())
}

#[consumer(stream = "orders", group = "d", transactional)]
async fn two_tx(_order: String, _tx: &mut PostgresTx, _again: &mut PostgresTx) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
