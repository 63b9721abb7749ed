//! Durations in `Streams.toml`: the grammar is `stream_rules::parse_duration`'s; these adapt
//! it to serde, with the rules of the keys that must be longer than zero.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

use super::parse_duration;

pub(super) struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration string such as \"30s\", \"250ms\" or \"2m\"")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }
}

pub(super) fn de_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Duration, D::Error> {
    d.deserialize_str(DurationVisitor)
}

/// A duration that must be longer than zero, as the attribute requires.
pub(super) fn de_nonzero_duration<'de, D: Deserializer<'de>>(
    key: &'static str,
    d: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    let duration = d.deserialize_str(DurationVisitor)?;
    match stream_rules::duration_problem(key, duration) {
        Some(problem) => Err(de::Error::custom(problem)),
        None => Ok(Some(duration)),
    }
}

pub(super) fn de_connect_timeout<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Duration, D::Error> {
    let duration = d.deserialize_str(DurationVisitor)?;
    match stream_rules::duration_problem("connect_timeout", duration) {
        Some(problem) => Err(de::Error::custom(problem)),
        None => Ok(duration),
    }
}

pub(super) fn de_visibility_timeout<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    de_nonzero_duration("visibility_timeout", d)
}

pub(super) fn de_poll_interval<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    de_nonzero_duration("poll_interval", d)
}

pub(super) fn de_opt_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    d.deserialize_str(DurationVisitor).map(Some)
}
