//! The other values of `Streams.toml` that take more than serde's own checks: whole numbers,
//! names, start positions, retry policies.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::options::{MaxRetries, RetryDelay};

/// A whole number of at least `min`, described in words rather than as a Rust type.
pub(super) struct WholeNumber {
    min: u64,
    expected: &'static str,
}

impl Visitor<'_> for WholeNumber {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expected)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<u64, E> {
        if v < self.min {
            return Err(E::invalid_value(de::Unexpected::Unsigned(v), &self));
        }
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<u64, E> {
        u64::try_from(v)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            .and_then(|v| self.visit_u64(v))
    }
}

pub(super) fn whole_usize<'de, D: Deserializer<'de>>(
    d: D,
    number: WholeNumber,
) -> std::result::Result<usize, D::Error> {
    let v = d.deserialize_any(number)?;
    usize::try_from(v).map_err(|_| de::Error::custom(format!("{v} is too large")))
}

pub(super) fn de_concurrency<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<usize>, D::Error> {
    let expected = stream_rules::CONCURRENCY_EXPECTED;
    whole_usize(d, WholeNumber { min: 1, expected }).map(Some)
}

pub(super) fn de_batch_size<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<usize>, D::Error> {
    let expected = stream_rules::BATCH_SIZE_EXPECTED;
    let size = whole_usize(d, WholeNumber { min: 1, expected })?;
    match stream_rules::batch_size_problem(size as u64) {
        Some(problem) => Err(de::Error::custom(problem)),
        None => Ok(Some(size)),
    }
}

pub(super) fn de_max_len<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    d.deserialize_any(WholeNumber {
        min: 0,
        expected: "a whole number of messages, 0 or more (0 = keep all)",
    })
}

pub(super) fn de_max_payload_bytes<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<usize, D::Error> {
    whole_usize(
        d,
        WholeNumber {
            min: 1,
            expected: "a whole number of bytes, at least 1",
        },
    )
}

pub(super) fn de_start<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    let text = String::deserialize(d)?;
    match stream_rules::start_problem(&text) {
        Some(problem) => Err(de::Error::custom(problem)),
        None => Ok(Some(text)),
    }
}

/// A dead-letter stream, app or namespace: the naming rules (S1). Empty is allowed: an
/// empty override is ignored, as everywhere.
pub(super) fn de_name<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    let text = String::deserialize(d)?;
    match stream_rules::name_problem(&text).filter(|_| !text.is_empty()) {
        Some(problem) => Err(de::Error::custom(format!(
            "invalid name {text:?}: {problem}"
        ))),
        None => Ok(Some(text)),
    }
}

pub(super) fn de_max_retries<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<MaxRetries>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = MaxRetries;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(stream_rules::MAX_RETRIES_EXPECTED)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<MaxRetries, E> {
            u32::try_from(v)
                .map(MaxRetries::Limited)
                .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<MaxRetries, E> {
            u64::try_from(v)
                .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
                .and_then(|v| self.visit_u64(v))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<MaxRetries, E> {
            match v {
                "unlimited" => Ok(MaxRetries::Unlimited),
                _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
            }
        }
    }
    d.deserialize_any(V).map(Some)
}

pub(super) fn de_retry_delay<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<RetryDelay>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = RetryDelay;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(
                "\"visibility_timeout\", a duration such as \"5s\", or { base = \"100ms\", max = \"30s\" }",
            )
        }
        fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<RetryDelay, E> {
            RetryDelay::parse(v).map_err(E::custom)
        }
        fn visit_map<A: de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<RetryDelay, A::Error> {
            let (mut base, mut max) = (None, None);
            while let Some(key) = map.next_key::<String>()? {
                let slot = match key.as_str() {
                    "base" => &mut base,
                    "max" => &mut max,
                    other => return Err(de::Error::unknown_field(other, &["base", "max"])),
                };
                *slot = Some(map.next_value::<String>()?);
            }
            let base = base.ok_or_else(|| de::Error::missing_field("base"))?;
            let max = max.ok_or_else(|| de::Error::missing_field("max"))?;
            RetryDelay::exponential(&base, &max).map_err(de::Error::custom)
        }
    }
    d.deserialize_any(V).map(Some)
}

/// `ordered = "key"` or `"none"`.
pub(super) fn de_ordered<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<crate::key_order::Order>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(de::Error::custom)
}
