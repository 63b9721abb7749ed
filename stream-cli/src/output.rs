//! How the CLI prints: aligned tables for people, JSON for scripts, payloads and times in
//! a readable form.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use stream_runtime::{Headers, Message};

/// Prints rows under a header, columns aligned (elastic tabstops).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut out = tabwriter::TabWriter::new(std::io::stdout().lock()).padding(2);
    writeln!(out, "{}", header.join("\t"))?;
    for row in rows {
        writeln!(out, "{}", row.join("\t"))?;
    }
    out.flush()
}

/// Prints one JSON value (pretty, for people reading it too).
pub fn json(value: &Value) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match serde_json::to_string_pretty(value) {
        Ok(text) => writeln!(out, "{text}"),
        Err(e) => Err(std::io::Error::other(e)),
    }
}

/// A payload as text: compact JSON when it is JSON, else the text with control characters
/// escaped, else the bytes escaped (`\xNN`).
pub fn payload_text(payload: &[u8]) -> String {
    match serde_json::from_slice::<Value>(payload) {
        Ok(value) => value.to_string(),
        Err(_) => escaped(payload),
    }
}

/// A payload as a JSON value: itself when it is JSON, else its text, else its bytes
/// escaped (`\xNN`).
pub fn payload_json(payload: &[u8]) -> Value {
    serde_json::from_slice(payload).unwrap_or_else(|_| {
        Value::String(match std::str::from_utf8(payload) {
            Ok(text) => text.to_owned(),
            Err(_) => payload.escape_ascii().to_string(),
        })
    })
}

fn escaped(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            let mut out = String::with_capacity(text.len());
            for c in text.chars() {
                if c.is_control() || c == '\\' {
                    out.extend(c.escape_default());
                } else {
                    out.push(c);
                }
            }
            out
        }
        Err(_) => bytes.escape_ascii().to_string(),
    }
}

/// At most `max` characters of `text`, with `…` when cut.
pub fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(max.saturating_sub(1)).collect();
    short.push('…');
    short
}

/// Headers as `k=v, k=v` (escaped).
pub fn headers_text(headers: &Headers) -> String {
    headers
        .iter()
        .map(|(k, v)| format!("{}={}", k.escape_debug(), v.escape_debug()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Milliseconds since the Unix epoch.
pub fn epoch_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A duration in ms, for JSON.
pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `850ms`, `12s`, `3m4s`, `2h5m`, `3d4h`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `3s ago` or `in 25s`, relative to now.
pub fn relative(at: SystemTime) -> String {
    match at.duration_since(SystemTime::now()) {
        Ok(ahead) => format!("in {}", human(ahead)),
        Err(e) => format!("{} ago", human(e.duration())),
    }
}

/// A message as a JSON object: id, stream, created_at_ms, headers, payload.
pub fn message_json(m: &Message) -> Value {
    let headers: Map<String, Value> = m
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "id": m.id.as_str(),
        "stream": m.stream,
        "created_at_ms": epoch_ms(m.created_at),
        "headers": headers,
        "payload": payload_json(&m.payload),
    })
}

/// A message as a table row: id, age, headers, payload.
pub fn message_row(m: &Message) -> Vec<String> {
    vec![
        m.id.to_string(),
        relative(m.created_at),
        cut(&headers_text(&m.headers), 60),
        payload_text(&m.payload),
    ]
}

/// The header of [`message_row`].
pub const MESSAGE_HEADER: &[&str] = &["ID", "AGE", "HEADERS", "PAYLOAD"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_show_json_or_escaped_text() {
        assert_eq!(payload_text(br#"{ "id": 1 }"#), r#"{"id":1}"#);
        assert_eq!(payload_text(b"not json\tat all"), "not json\\tat all");
        assert_eq!(payload_text(b"{\"a\": oops"), "{\"a\": oops");
        assert_eq!(payload_text(b"\xff\x00x"), "\\xff\\x00x");
        assert_eq!(payload_json(b"[1]"), json!([1]));
        assert_eq!(payload_json(b"oops"), json!("oops"));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_millis(850)), "850ms");
        assert_eq!(human(Duration::from_secs(184)), "3m4s");
        assert_eq!(human(Duration::from_secs(7500)), "2h5m");
        assert_eq!(human(Duration::from_secs(3 * 86_400 + 4 * 3600)), "3d4h");
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(cut("abc", 4), "abc");
    }
}
