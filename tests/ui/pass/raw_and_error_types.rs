// Raw payloads, a custom codec, state before `&Message`, several states, and any `Display` error type.
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

/// A payload with its own codec.
struct Csv(Vec<String>);

impl stream_runtime::Payload for Csv {
    fn decode(bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
        Ok(Csv(text.split(',').map(str::to_owned).collect()))
    }
}

#[consumer(stream = "blobs", group = "e")]
async fn csv(row: Csv) -> Result<(), HandlerError> {
    assert!(!row.0.is_empty());
    Ok(())
}

fn main() {
    assert_eq!(stream_runtime::registry::consumers().unwrap().len(), 5);
}
