// Raw payloads, state before `&Message`, several states, and any `Display` error type.
use stream_runtime::prelude::*;

struct Config;
struct Metrics;

#[consumer(stream = "blobs", group = "a", max_retries = "unlimited")]
async fn boxed(_blob: Raw) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    Ok(())
}

#[consumer(stream = "blobs", group = "b", max_retries = 0)]
async fn text(_blob: Raw, _c: State<Config>, _msg: &Message, _m: State<Metrics>) -> Result<(), String> {
    Ok(())
}

#[consumer(stream = "blobs", group = "c")]
async fn io(_value: serde_json::Value) -> std::io::Result<()> {
    Ok(())
}

#[consumer(stream = "blobs", group = "d")]
async fn handler_error(_payload: Vec<u32>) -> Result<(), HandlerError> {
    Err(HandlerError::permanent("never"))
}

fn main() {
    assert_eq!(stream_runtime::registry::consumers().unwrap().len(), 4);
}
