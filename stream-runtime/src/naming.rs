//! Stream names (S1): `<app>.<namespace>.<name>`.

use crate::error::{Error, Result};

/// The app used when none is set.
pub const DEFAULT_APP: &str = "app";
/// The namespace used when none is set.
pub const DEFAULT_NAMESPACE: &str = "default";
/// The longest full stream name accepted, in bytes.
pub use stream_rules::MAX_NAME_BYTES;
/// What the default dead-letter stream appends to the full stream name.
pub const DEAD_LETTER_SUFFIX: &str = ".dead";

/// Checks one part of a name: not empty, no whitespace or control characters, at most
/// [`MAX_NAME_BYTES`] bytes.
pub fn validate(what: &'static str, value: &str) -> Result<()> {
    match stream_rules::name_problem(value) {
        Some(problem) => Err(Error::invalid_name(what, value, problem)),
        None => Ok(()),
    }
}

/// Formats and validates a full stream name: `<app>.<namespace>.<name>`.
///
/// ```
/// assert_eq!(stream_runtime::format_stream("shop", "eu", "orders").unwrap(), "shop.eu.orders");
/// assert!(stream_runtime::format_stream("shop", "eu", "with space").is_err());
/// ```
pub fn format_stream(app: &str, namespace: &str, name: &str) -> Result<String> {
    validate("app", app)?;
    validate("namespace", namespace)?;
    validate("stream", name)?;
    let full = format!("{app}.{namespace}.{name}");
    validate("stream", &full)?;
    Ok(full)
}

/// The default dead-letter stream of a full stream name: `<full>.dead`.
pub fn dead_letter_stream(full: &str) -> String {
    format!("{full}{DEAD_LETTER_SUFFIX}")
}

/// Picks the override when it is set and not empty (an empty override is ignored, S1).
pub(crate) fn pick<'a>(override_: Option<&'a str>, default: &'a str) -> &'a str {
    match override_ {
        Some(v) if !v.is_empty() => v,
        _ => default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_names() {
        for bad in ["", " ", "a b", "tab\there", "nl\n", "bell\u{7}"] {
            assert!(format_stream("app", "ns", bad).is_err(), "{bad:?} accepted");
        }
        assert!(format_stream("app", "ns", &"x".repeat(MAX_NAME_BYTES)).is_err());
        assert!(format_stream("app", "ns", &"x".repeat(MAX_NAME_BYTES - 7)).is_ok());
        assert_eq!(
            format_stream("App", "NS", "Orders").unwrap(),
            "App.NS.Orders"
        );
    }

    #[test]
    fn empty_override_is_ignored() {
        assert_eq!(pick(Some(""), "d"), "d");
        assert_eq!(pick(None, "d"), "d");
        assert_eq!(pick(Some("o"), "d"), "o");
    }
}
