//! Stream and group names as JetStream stream names, subjects and KV keys: reversible, and
//! made of characters every one of them accepts.

/// The prefix of the JetStream stream that holds a stream's messages.
pub(super) const STREAM_PREFIX: &str = "ST-";
/// The prefix of the subject a stream's messages are published on.
pub(super) const SUBJECT_PREFIX: &str = "streams.";

/// Keeps ASCII letters, digits and `-` and every non-ASCII character that is not white
/// space; writes every other byte as `_` and two upper-case hex digits (`.` is `_2E`, `_`
/// is `_5F`). The result is a valid JetStream stream name and subject token (no white
/// space, `.`, `*`, `>` or path separator), as long in bytes as the name when it is
/// letters in any script, and [`decode`] gives the name back.
pub(crate) fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '-' || (!c.is_ascii() && !c.is_whitespace()) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for byte in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("_{byte:02X}"));
            }
        }
    }
    out
}

/// [`encode`] with every non-ASCII byte escaped too: for header values.
pub(crate) fn encode_ascii(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("_{byte:02X}"));
        }
    }
    out
}

/// The name [`encode`] was given, or `None` for text it cannot have written.
pub(crate) fn decode(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hex = encoded.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The JetStream stream holding `stream`'s messages.
pub fn jetstream_name(stream: &str) -> String {
    format!("{STREAM_PREFIX}{}", encode(stream))
}

/// The subject `stream`'s messages are published on.
pub fn subject(stream: &str) -> String {
    format!("{SUBJECT_PREFIX}{}", encode(stream))
}

/// The stream a JetStream stream name of this backend holds, if it is one.
pub(super) fn stream_of(jetstream_name: &str) -> Option<String> {
    decode(jetstream_name.strip_prefix(STREAM_PREFIX)?)
}

/// The KV key of a group's state.
pub(super) fn group_key(stream: &str, group: &str) -> String {
    format!("{}.{}", encode(stream), encode(group))
}

#[cfg(test)]
mod tests {
    use super::{decode, encode, encode_ascii};

    #[test]
    fn names_round_trip_through_safe_characters() {
        for name in [
            "app.default.orders",
            "Upper.Case",
            "odd name/with:*>_%",
            "ünï",
            "tab\there\u{2003}em",
            "",
        ] {
            let encoded = encode(name);
            assert!(
                !encoded.contains(|c: char| c.is_whitespace() || ".*>/\\".contains(c)),
                "{encoded}"
            );
            assert_eq!(decode(&encoded).as_deref(), Some(name));
            let ascii = encode_ascii(name);
            assert!(ascii.is_ascii(), "{ascii}");
            assert_eq!(decode(&ascii).as_deref(), Some(name));
        }
        assert_ne!(encode("a.b"), encode("a_b"));
        assert_eq!(decode("_zz"), None);
    }
}
