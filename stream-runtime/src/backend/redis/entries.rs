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

/// One claimed entry from the claim script: `{id, deliveries, {field, value, ...}}`.
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
    let id = match id {
        Value::BulkString(b) => String::from_utf8(b)
            .map_err(|e| Error::backend(NAME, "reading the reply of the claim script", e))?,
        other => return Err(bad(&other)),
    };
    let deliveries = match deliveries {
        Value::Int(n) => u32::try_from(n).map_err(|_| bad(&deliveries))?,
        other => return Err(bad(&other)),
    };
    let Value::Array(entry_fields) = entry_fields else {
        return Err(bad(&entry_fields));
    };
    let mut payload = Vec::new();
    let mut headers = Headers::new();
    let mut entry_fields = entry_fields.into_iter();
    while let (Some(field), Some(value)) = (entry_fields.next(), entry_fields.next()) {
        let (Value::BulkString(field), Value::BulkString(value)) = (field, value) else {
            return Err(Error::backend(
                NAME,
                "reading the reply of the claim script",
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
