//! Typed payloads (D2, D8): how a `#[consumer]` turns a message's bytes into its first
//! argument.
//!
//! Any [`serde::de::DeserializeOwned`] type is decoded as JSON; [`Raw`] takes the bytes as
//! they are. Publish typed values with [`Service::publish_json`](crate::Service::publish_json).
//! A payload that fails to decode is a permanent error: it is dead-lettered on its first
//! attempt with the decode error as the reason, never retried (D8).

use serde::de::DeserializeOwned;

/// A type a consumer can take as its payload: decoded from the message's bytes.
///
/// Implemented for every `serde::Deserialize` type (as JSON) and for [`Raw`]. Implement it
/// for a type of your own (one that is not `Deserialize`) to use another encoding:
///
/// ```
/// use stream_runtime::prelude::*;
///
/// struct Csv(Vec<String>);
///
/// impl stream_runtime::Payload for Csv {
///     fn decode(bytes: &[u8]) -> Result<Self, String> {
///         let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
///         Ok(Csv(text.split(',').map(str::to_owned).collect()))
///     }
/// }
///
/// #[consumer(stream = "rows", group = "import")]
/// async fn import(row: Csv) -> Result<(), HandlerError> {
///     println!("{} columns", row.0.len());
///     Ok(())
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a consumer's payload: it does not implement `serde::Deserialize`",
    label = "this payload type does not implement `serde::Deserialize`",
    note = "derive it with `#[derive(serde::Deserialize)]`, or take the bytes as they are with `stream_runtime::Raw`",
    note = "the first argument is the payload; to see the whole message, take `&Message` after it"
)]
pub trait Payload: Sized {
    /// Decodes a payload; the error text becomes the dead-letter reason.
    fn decode(bytes: &[u8]) -> Result<Self, String>;
}

impl<T: DeserializeOwned> Payload for T {
    fn decode(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// A payload taken as raw bytes, without decoding.
///
/// ```
/// use stream_runtime::prelude::*;
///
/// #[consumer(stream = "images", group = "thumbnails")]
/// async fn thumbnail(image: Raw) -> Result<(), HandlerError> {
///     let Raw(bytes) = image;
///     println!("{} bytes", bytes.len());
///     Ok(())
/// }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Raw(pub Vec<u8>);

impl Payload for Raw {
    fn decode(bytes: &[u8]) -> Result<Self, String> {
        Ok(Raw(bytes.to_vec()))
    }
}

impl std::ops::Deref for Raw {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Raw> for Vec<u8> {
    fn from(raw: Raw) -> Vec<u8> {
        raw.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Order {
        id: u32,
    }

    #[test]
    fn json_and_raw() {
        assert_eq!(Order::decode(br#"{"id":7}"#), Ok(Order { id: 7 }));
        let err = Order::decode(b"not json").unwrap_err();
        assert!(err.contains("expected"), "{err}");
        assert_eq!(Raw::decode(b"\xff\x00"), Ok(Raw(vec![0xff, 0])));
    }
}
