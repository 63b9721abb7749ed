//! The message model (S2).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

pub use bytes::Bytes;

/// Message headers: a string map, copied at publish.
pub type Headers = BTreeMap<String, String>;

/// A backend-assigned message id: strictly increasing within a stream, and usable as a start
/// id ([`StartPosition::FromId`](crate::StartPosition::FromId)).
///
/// Its text depends on the backend (`"42"` on SQL and memory, `"1700000000000-0"` on Redis);
/// compare ids of one stream through the backend's order, not as strings.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MessageId(String);

impl MessageId {
    /// Wraps an id as the backend spells it.
    pub fn new(id: impl Into<String>) -> Self {
        MessageId(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.0)
    }
}

impl From<MessageId> for String {
    fn from(id: MessageId) -> String {
        id.0
    }
}

/// A message as delivered to a handler.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Message {
    /// Backend-assigned id.
    pub id: MessageId,
    /// The full stream name (`<app>.<namespace>.<name>`), shared by the messages of a claim.
    pub stream: Arc<str>,
    /// The payload bytes as published (cheap to clone; derefs to `[u8]`).
    pub payload: Bytes,
    /// Headers as published.
    pub headers: Headers,
    /// When the message was first appended.
    pub created_at: SystemTime,
    /// 1 on first delivery, growing by 1 on every redelivery.
    pub attempt: u32,
    /// The token of the claim this delivery holds (zero outside a delivery): what a
    /// transactional handler's ack is fenced by.
    pub(crate) token: crate::backend::ClaimToken,
}

impl Message {
    /// Builds a message; backends and tests use this.
    pub fn new(
        id: MessageId,
        stream: impl Into<Arc<str>>,
        payload: impl Into<Bytes>,
        headers: Headers,
        created_at: SystemTime,
        attempt: u32,
    ) -> Self {
        Message {
            id,
            stream: stream.into(),
            payload: payload.into(),
            headers,
            created_at,
            attempt,
            token: crate::backend::ClaimToken(0),
        }
    }

    /// One header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// Decodes the payload as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }
}

/// A message to append: payload and headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewMessage {
    /// The payload bytes (cheap to clone; a dead letter shares the original's).
    pub payload: Bytes,
    /// The headers.
    pub headers: Headers,
}

impl NewMessage {
    /// A message with a payload and no headers.
    pub fn new(payload: impl Into<Vec<u8>>) -> Self {
        Self::from_bytes(Bytes::from(payload.into()))
    }

    /// A message with a shared payload and no headers: no copy of the bytes.
    pub fn from_bytes(payload: Bytes) -> Self {
        NewMessage {
            payload,
            headers: Headers::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
}

impl From<Vec<u8>> for NewMessage {
    fn from(payload: Vec<u8>) -> Self {
        NewMessage::new(payload)
    }
}

impl From<Bytes> for NewMessage {
    fn from(payload: Bytes) -> Self {
        NewMessage::from_bytes(payload)
    }
}

impl From<&[u8]> for NewMessage {
    fn from(payload: &[u8]) -> Self {
        NewMessage::new(payload)
    }
}

impl From<&str> for NewMessage {
    fn from(payload: &str) -> Self {
        NewMessage::new(payload.as_bytes())
    }
}

impl From<String> for NewMessage {
    fn from(payload: String) -> Self {
        NewMessage::new(payload.into_bytes())
    }
}
