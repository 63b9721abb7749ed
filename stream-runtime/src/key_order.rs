//! Ordering by key (issue 16, part 2): what a keyed message and an ordered group are.
//!
//! A message published with [`PublishOptions::key`](crate::PublishOptions::key) carries its
//! key in the header [`KEY_HEADER`]. A group subscribed with
//! [`SubscribeOptions::ordered`](crate::SubscribeOptions::ordered) set to [`Order::Key`]
//! handles the messages that share a key one at a time and in stream order, across every
//! process of the group; messages of different keys run in parallel up to the
//! concurrency, and messages without a key are unordered.
//!
//! The rule lives in the backends' ordered claim ([`Backend::claim_ordered`]): a keyed
//! message is claimable only when no earlier message of its key is pending in the group
//! (held, retrying, or waiting itself). So a retrying message holds back the later messages
//! of its key and no other key; an ack or a dead-letter move releases the key; a crashed
//! holder's claim expires as usual and, being the earliest of its key, comes back first.
//!
//! [`Backend::claim_ordered`]: crate::Backend::claim_ordered

use std::fmt;
use std::str::FromStr;

/// The header that carries a message's ordering key.
pub const KEY_HEADER: &str = "x-stream-key";

/// The backends whose ordered claims are supported, for error messages.
pub const ORDERED_BACKENDS: &str = "memory, sqlite, postgres, redis (and Redis Cluster), nats";

/// How a group orders its messages. Config value `ordered = "key"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Order {
    /// No order: any free worker takes any message (the default).
    #[default]
    None,
    /// Messages sharing a key ([`KEY_HEADER`]) are handled one at a time, in stream order.
    Key,
}

impl Order {
    /// Whether the group is ordered by key.
    pub fn is_key(self) -> bool {
        self == Order::Key
    }
}

/// What an unknown `ordered` value is told.
pub const ORDER_EXPECTED: &str =
    "\"key\" (messages sharing a key one at a time, in order) or \"none\"";

impl FromStr for Order {
    type Err = String;

    /// `"key"` or `"none"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "key" => Ok(Order::Key),
            "none" => Ok(Order::None),
            other => Err(format!(
                "unknown ordering {other:?}: expected {ORDER_EXPECTED}"
            )),
        }
    }
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Order::None => "none",
            Order::Key => "key",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Order;

    #[test]
    fn order_parses_and_prints() {
        assert_eq!("key".parse::<Order>(), Ok(Order::Key));
        assert_eq!("none".parse::<Order>(), Ok(Order::None));
        assert!("partition"
            .parse::<Order>()
            .unwrap_err()
            .contains("\"key\""));
        assert_eq!(Order::Key.to_string(), "key");
    }
}
