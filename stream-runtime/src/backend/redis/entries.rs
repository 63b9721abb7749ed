//! Stream entries as this backend reads them: start ids, an id's time, claimed entries.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redis::Value;

use super::{unexpected, HEADER_PREFIX, NAME, PAYLOAD_FIELD};
use crate::backend::{ClaimToken, Claimed};
use crate::error::{Error, Result};
use crate::message::{Headers, Message, MessageId};

/// Checks a start id: `<ms>-<seq>` (or `<ms>`, meaning `<ms>-0`), both unsigned 64-bit.
pub(super) fn parse_start_id(id: &str) -> Result<String> {
    let invalid = || Error::InvalidStartId {
        id: id.to_owned(),
        reason: "Redis stream ids look like \"1700000000000-0\" (milliseconds-sequence)".to_owned(),
    };
    let number = |s: &str| {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        s.parse::<u64>().map_err(|_| invalid())
    };
    match id.split_once('-') {
        Some((ms, seq)) => Ok(format!("{}-{}", number(ms)?, number(seq)?)),
        None => Ok(format!("{}-0", number(id)?)),
    }
}

/// The time part of an id as a time.
pub(super) fn created_at(id: &str) -> SystemTime {
    let ms = id
        .split_once('-')
        .and_then(|(ms, _)| ms.parse::<u64>().ok())
        .unwrap_or_default();
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// One reclaimed entry from the claim's first step: `{id, deliveries, {field, value, ...}}`.
pub(super) fn parse_claimed(stream: &Arc<str>, value: Value) -> Result<Claimed> {
    let bad = |value: &Value| unexpected("the claim script", value);
    let Value::Array(parts) = value else {
        return Err(bad(&value));
    };
    let parts: [Value; 3] = match parts.try_into() {
        Ok(parts) => parts,
        Err(parts) => return Err(bad(&Value::Array(parts))),
    };
    let [id, deliveries, entry_fields] = parts;
    let deliveries = match deliveries {
        Value::Int(n) => u32::try_from(n).map_err(|_| bad(&deliveries))?,
        other => return Err(bad(&other)),
    };
    claimed(stream, id, deliveries, entry_fields, "the claim script")
}

/// The entries of a claim script's reply (`{id, delivery count, {field, value, ...}}` each;
/// nil or an empty array: none).
pub(super) fn claimed_entries(stream: &str, reply: Value, what: &str) -> Result<Vec<Claimed>> {
    match reply {
        Value::Array(entries) => {
            let stream: Arc<str> = Arc::from(stream);
            entries
                .into_iter()
                .map(|entry| parse_claimed(&stream, entry))
                .collect()
        }
        Value::Nil => Ok(Vec::new()),
        other => Err(unexpected(what, &other)),
    }
}

/// The first `keep` entries of an `XREADGROUP` reply of one stream (`[[stream, [[id,
/// [field, value, ...]], ...]]]`, nil when nothing was read), each a first delivery.
pub(super) fn read_entries(stream: &Arc<str>, reply: Value, keep: usize) -> Result<Vec<Claimed>> {
    const WHAT: &str = "XREADGROUP";
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams,
        other => return Err(unexpected(WHAT, &other)),
    };
    let Some(Value::Array(read)) = streams.into_iter().next() else {
        return Ok(Vec::new());
    };
    let Some(Value::Array(entries)) = read.into_iter().nth(1) else {
        return Ok(Vec::new());
    };
    entries
        .into_iter()
        .take(keep)
        .map(|entry| match entry {
            Value::Array(parts) => {
                let mut parts = parts.into_iter();
                match (parts.next(), parts.next()) {
                    (Some(id), Some(fields)) => claimed(stream, id, 1, fields, WHAT),
                    _ => Err(unexpected(WHAT, &Value::Nil)),
                }
            }
            other => Err(unexpected(WHAT, &other)),
        })
        .collect()
}

/// A claimed entry from its id, its delivery count and its `[field, value, ...]`.
fn claimed(
    stream: &Arc<str>,
    id: Value,
    deliveries: u32,
    entry_fields: Value,
    what: &str,
) -> Result<Claimed> {
    let reading = || format!("reading the reply of {what}");
    let id = match id {
        Value::BulkString(b) => {
            String::from_utf8(b).map_err(|e| Error::backend(NAME, reading(), e))?
        }
        other => return Err(unexpected(what, &other)),
    };
    let Value::Array(entry_fields) = entry_fields else {
        return Err(unexpected(what, &entry_fields));
    };
    let mut payload = Vec::new();
    let mut headers = Headers::new();
    let mut entry_fields = entry_fields.into_iter();
    while let (Some(field), Some(value)) = (entry_fields.next(), entry_fields.next()) {
        let (Value::BulkString(field), Value::BulkString(value)) = (field, value) else {
            return Err(Error::backend(
                NAME,
                reading(),
                format!("entry {id} has a field that is not a string"),
            ));
        };
        if field == PAYLOAD_FIELD.as_bytes() {
            payload = value;
        } else if let Some(name) = field.strip_prefix(HEADER_PREFIX.as_bytes()) {
            headers.insert(
                String::from_utf8_lossy(name).into_owned(),
                String::from_utf8(value)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            );
        }
    }
    let created_at = created_at(&id);
    let message = Message::new(
        MessageId::new(id),
        Arc::clone(stream),
        payload,
        headers,
        created_at,
        deliveries,
    );
    Ok(Claimed {
        message,
        token: ClaimToken(u64::from(deliveries)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_ids_are_validated() {
        assert_eq!(
            parse_start_id("1700000000000-3").ok().as_deref(),
            Some("1700000000000-3")
        );
        assert_eq!(parse_start_id("42").ok().as_deref(), Some("42-0"));
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "a-1",
            "1-b",
            "not an id",
            "1-2-3",
            "+1-0",
            "99999999999999999999-0",
        ] {
            assert!(
                matches!(parse_start_id(bad), Err(Error::InvalidStartId { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn created_at_is_the_id_time() {
        assert_eq!(
            created_at("1700000000123-4"),
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
        );
    }
}
