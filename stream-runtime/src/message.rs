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
///
/// Cheap to clone: an id of up to 22 bytes (every integer id, and Redis ids) is stored
/// inline, a longer one is shared.
#[derive(Clone)]
pub struct MessageId(Repr);

/// The longest id kept inline.
const INLINE: usize = 22;

#[derive(Clone)]
enum Repr {
    Inline(u8, [u8; INLINE]),
    Shared(Arc<str>),
}

impl MessageId {
    /// Wraps an id as the backend spells it.
    pub fn new(id: impl Into<String>) -> Self {
        let id: String = id.into();
        Self::from_str_ref(&id).unwrap_or_else(|| MessageId(Repr::Shared(Arc::from(id))))
    }

    /// The id inline, when it is short enough.
    fn from_str_ref(id: &str) -> Option<Self> {
        let len = id.len();
        if len > INLINE {
            return None;
        }
        let mut buf = [0u8; INLINE];
        buf[..len].copy_from_slice(id.as_bytes());
        Some(MessageId(Repr::Inline(len as u8, buf)))
    }

    /// The id of a backend whose ids are integers, without going through a `String`.
    pub fn from_u64(n: u64) -> Self {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut n = n;
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let len = digits.len() - at;
        let mut buf = [0u8; INLINE];
        buf[..len].copy_from_slice(&digits[at..]);
        MessageId(Repr::Inline(len as u8, buf))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Always valid: copied from a `str` of exactly this length, or ASCII digits.
            Repr::Inline(len, buf) => std::str::from_utf8(&buf[..usize::from(*len)]).unwrap_or(""),
            Repr::Shared(id) => id,
        }
    }
}

impl PartialEq for MessageId {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for MessageId {}

impl std::hash::Hash for MessageId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.as_str())
    }
}

impl From<MessageId> for String {
    fn from(id: MessageId) -> String {
        id.as_str().to_owned()
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
    /// The subscription's leases, for [`extend_lease`](Self::extend_lease) (`None` outside
    /// a delivery).
    pub(crate) lease: Option<crate::engine::lease::LeaseHandle>,
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
            lease: None,
        }
    }

    /// Extends this delivery's claim: the message stays hidden from the group's other
    /// workers until `extra` from now, as if just claimed with that visibility timeout
    /// (shorter than what is left shortens it). For a handler that knows it needs longer
    /// than the visibility timeout; with `heartbeat` on, the engine extends running
    /// handlers' claims by itself. Returns whether the claim was still held: `false` when it
    /// expired and was taken over (another worker may be handling the message), or for a
    /// message that is not a delivery (built by hand). One backend call.
    pub async fn extend_lease(&self, extra: std::time::Duration) -> crate::Result<bool> {
        match &self.lease {
            Some(lease) => lease.0.extend_one(&self.id, self.token, extra).await,
            None => Ok(false),
        }
    }

    /// One header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The ordering key it was published with
    /// ([`PublishOptions::key`](crate::PublishOptions::key)), if any.
    pub fn key(&self) -> Option<&str> {
        self.header(crate::key_order::KEY_HEADER)
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

    /// Sets the ordering key (the [`KEY_HEADER`](crate::KEY_HEADER) header): a group
    /// ordered by key handles the messages sharing it one at a time, in stream order.
    pub fn key(self, key: impl Into<String>) -> Self {
        self.header(crate::key_order::KEY_HEADER, key)
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

#[cfg(test)]
mod id_tests {
    use super::MessageId;

    #[test]
    fn ids_compare_by_text_whatever_their_length() {
        for n in [0u64, 7, 42, 1_000_000, u64::MAX] {
            assert_eq!(MessageId::from_u64(n), MessageId::new(n.to_string()));
            assert_eq!(MessageId::from_u64(n).as_str(), n.to_string());
        }
        let long = "x".repeat(40);
        let id = MessageId::new(long.clone());
        assert_eq!(id.as_str(), long);
        assert_eq!(id.clone(), MessageId::new(long.clone()));
        assert_eq!(String::from(id), long);
        let redis = MessageId::new("1700000000000-12");
        assert_eq!(redis.as_str(), "1700000000000-12");
        assert_eq!(format!("{redis:?}"), "MessageId(1700000000000-12)");
    }
}
