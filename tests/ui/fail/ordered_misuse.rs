// `ordered` without a value, with an ordering that does not exist, and not as a string.
use stream_runtime::prelude::*;

#[consumer(stream = "orders", group = "a", ordered)]
async fn flag_alone(_order: String) -> Result<(), HandlerError> {
    Ok(())
}

#[consumer(stream = "orders", group = "b", ordered = "partition")]
async fn unknown_ordering(_order: String) -> Result<(), HandlerError> {
    Ok(())
}

#[consumer(stream = "orders", group = "c", ordered = true)]
async fn not_a_string(_order: String) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
