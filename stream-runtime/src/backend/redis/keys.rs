//! Key names: every key of a stream shares its hash tag, so a stream's keys live in one
//! cluster slot.

/// The key of a stream: `streams:{N}`.
pub fn stream_key(stream: &str) -> String {
    format!("streams:{{{}}}", escape(stream))
}

pub(super) fn retry_key(stream: &str, group: &str) -> String {
    format!("streams:{{{}}}:retry:{group}", escape(stream))
}

pub(super) fn deadlines_key(stream: &str, group: &str) -> String {
    format!("streams:{{{}}}:deadlines:{group}", escape(stream))
}

/// Where a claim's first step leaves the group's cursor for its last (inside one
/// transaction, so it never outlives the claim).
pub(super) fn claiming_key(stream: &str, group: &str) -> String {
    format!("streams:{{{}}}:claiming:{group}", escape(stream))
}

/// Percent-encodes `%`, `{` and `}`, so a name can never end the hash tag early.
pub(super) fn escape(name: &str) -> std::borrow::Cow<'_, str> {
    if !name.contains(['%', '{', '}']) {
        return name.into();
    }
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_the_hash_tag_whole() {
        assert_eq!(
            stream_key("app.default.orders"),
            "streams:{app.default.orders}"
        );
        assert_eq!(stream_key("a}b{c%"), "streams:{a%7Db%7Bc%25}");
        assert_eq!(
            retry_key("a.b.C", "billing"),
            "streams:{a.b.C}:retry:billing"
        );
        assert_eq!(
            deadlines_key("a.b.c", "billing"),
            "streams:{a.b.c}:deadlines:billing"
        );
    }
}
