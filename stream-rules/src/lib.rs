//! The value rules of stream-runtime, written once: what a valid name, duration, retry delay,
//! worker count or start position is.
//!
//! Two places check these values: the `#[consumer]` attribute at compile time (a proc-macro
//! crate, which cannot depend on the runtime it generates code for) and the runtime, for
//! `Streams.toml`, the environment and the programmatic API. Both call this crate, so a value
//! accepted in one place is accepted in the other, with the same words when it is not.
//! Users do not need this crate directly: `stream-runtime` re-exports what is public.

use std::fmt;
use std::time::Duration;

/// The longest name (a full stream name, a group, an app, ...) accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 200;

/// Why a name (stream, group, app, namespace, dead-letter stream, consumer) is invalid:
/// empty, over [`MAX_NAME_BYTES`], or holding whitespace or control characters.
///
/// ```
/// assert_eq!(stream_rules::name_problem("orders"), None);
/// assert_eq!(stream_rules::name_problem("").as_deref(), Some("it is empty"));
/// ```
pub fn name_problem(value: &str) -> Option<String> {
    if value.is_empty() {
        return Some("it is empty".to_owned());
    }
    if value.len() > MAX_NAME_BYTES {
        return Some(format!(
            "it is {} bytes long; the limit is {MAX_NAME_BYTES}",
            value.len()
        ));
    }
    value
        .chars()
        .find(|c| c.is_whitespace() || c.is_control())
        .map(|c| format!("it contains {c:?}; whitespace and control characters are not allowed"))
}

/// Why a `start` value is invalid: it must be `"latest"`, `"earliest"` or a message id
/// (not empty, no whitespace or control characters).
pub fn start_problem(value: &str) -> Option<String> {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some(format!(
            "invalid start {value:?}: write \"latest\", \"earliest\" or a message id"
        ))
    } else {
        None
    }
}

/// What `concurrency` takes, for error messages.
pub const CONCURRENCY_EXPECTED: &str = "the number of workers, a whole number of at least 1";

/// Why a worker count is invalid (it must be at least 1).
pub fn concurrency_problem(workers: u64) -> Option<String> {
    (workers == 0).then(|| format!("`concurrency` takes {CONCURRENCY_EXPECTED}, not 0"))
}

/// The largest `batch_size` a batch handler may ask for.
pub const MAX_BATCH_SIZE: usize = 10_000;

/// What `batch_size` takes, for error messages.
pub const BATCH_SIZE_EXPECTED: &str =
    "the most messages one batch handler call gets, a whole number from 1 to 10000";

/// Why a batch size is invalid (it must be from 1 to [`MAX_BATCH_SIZE`]).
pub fn batch_size_problem(size: u64) -> Option<String> {
    (size == 0 || size > MAX_BATCH_SIZE as u64)
        .then(|| format!("`batch_size` takes {BATCH_SIZE_EXPECTED}, not {size}"))
}

/// What `max_retries` takes, for error messages.
pub const MAX_RETRIES_EXPECTED: &str =
    "a whole number of retries, 0 or more (0 = one attempt), or \"unlimited\"";

/// Settings whose duration must be longer than zero (`"0s"` would spin or hide nothing).
pub const NONZERO_DURATIONS: &[&str] = &["visibility_timeout", "poll_interval", "connect_timeout"];

/// Why a duration is invalid for the setting `key`: those in [`NONZERO_DURATIONS`] must be
/// longer than zero.
pub fn duration_problem(key: &str, duration: Duration) -> Option<String> {
    (duration.is_zero() && NONZERO_DURATIONS.contains(&key))
        .then(|| format!("`{key}` must be longer than zero"))
}

/// The units a duration takes.
pub const DURATION_HELP: &str = "write a whole number and a unit (ms, s, m, h, d), e.g. \"30s\", \
                                 \"250ms\", \"1m30s\" or \"7d\"";

/// A duration that does not follow the grammar of [`parse_duration`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurationError {
    text: String,
    problem: String,
}

impl DurationError {
    /// What is wrong with it, e.g. `30 has no unit`.
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad duration {:?}: {}; {DURATION_HELP}",
            self.text, self.problem
        )
    }
}

impl std::error::Error for DurationError {}

/// Parses a duration: whole numbers with units `ms`, `s`, `m`, `h`, `d`, one after the
/// other: `"250ms"`, `"30s"`, `"2m"`, `"1h"`, `"7d"`, `"1m30s"`, `"0s"`.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(stream_rules::parse_duration("1m30s"), Ok(Duration::from_secs(90)));
/// assert!(stream_rules::parse_duration("30").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let fail = |problem: String| DurationError {
        text: text.to_owned(),
        problem,
    };
    if text.is_empty() {
        return Err(fail("it is empty".to_owned()));
    }
    let mut rest = text;
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(fail(format!("expected a number at {rest:?}")));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| fail(format!("{:?} is too large", &rest[..digits])))?;
        rest = &rest[digits..];
        let unit_len = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        let seconds_per = match &rest[..unit_len] {
            "ms" => None,
            "s" => Some(1),
            "m" => Some(60),
            "h" => Some(3_600),
            "d" => Some(86_400),
            "" => return Err(fail(format!("{number} has no unit"))),
            other => return Err(fail(format!("unknown unit {other:?}"))),
        };
        let part = match seconds_per {
            None => Some(Duration::from_millis(number)),
            Some(factor) => number.checked_mul(factor).map(Duration::from_secs),
        };
        total = part
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| fail("it is too long".to_owned()))?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Formats a duration the way the config writes it: `"30s"`, `"250ms"`, `"2m"`, `"7d"`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        if d.is_zero() {
            "0s".to_owned()
        } else {
            format!("{}us", d.as_micros())
        }
    } else if ms % 86_400_000 == 0 {
        format!("{}d", ms / 86_400_000)
    } else if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// How long a failed message waits before it comes back (S9).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RetryDelay {
    /// The visibility timeout (the default).
    #[default]
    VisibilityTimeout,
    /// A fixed delay.
    Fixed(Duration),
    /// `base * 2^(attempt-1)`, capped at `max`, with jitter: the delay is drawn uniformly
    /// from the upper half of that value.
    Exponential {
        /// Delay after the first failed attempt.
        base: Duration,
        /// Upper bound.
        max: Duration,
    },
}

/// What `retry_delay` takes, for error messages.
pub const RETRY_DELAY_EXPECTED: &str = "\"visibility_timeout\", a duration such as \"5s\", or \
                                        exponential backoff with jitter given by `base` and `max`";

impl RetryDelay {
    /// The text form: `"visibility_timeout"` or a duration (`"5s"`).
    pub fn parse(text: &str) -> Result<RetryDelay, String> {
        if text == "visibility_timeout" {
            return Ok(RetryDelay::VisibilityTimeout);
        }
        parse_duration(text).map(RetryDelay::Fixed).map_err(|e| {
            format!(
                "bad retry delay {text:?}: {}; `retry_delay` takes {RETRY_DELAY_EXPECTED}",
                e.problem()
            )
        })
    }

    /// Exponential backoff from `base` up to `max` (both durations, `base` longer than zero
    /// and not above `max`).
    pub fn exponential(base: &str, max: &str) -> Result<RetryDelay, String> {
        let base_d = parse_duration(base).map_err(|e| format!("`base`: {e}"))?;
        let max_d = parse_duration(max).map_err(|e| format!("`max`: {e}"))?;
        if base_d.is_zero() {
            return Err("`base` must be longer than zero".to_owned());
        }
        if max_d < base_d {
            return Err(format!(
                "`max` ({max}) is shorter than `base` ({base}); the delays grow from base to max"
            ));
        }
        Ok(RetryDelay::Exponential {
            base: base_d,
            max: max_d,
        })
    }
}

impl fmt::Display for RetryDelay {
    /// `visibility_timeout`, `5s`, `exponential 100ms..5s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryDelay::VisibilityTimeout => f.write_str("visibility_timeout"),
            RetryDelay::Fixed(d) => f.write_str(&format_duration(*d)),
            RetryDelay::Exponential { base, max } => write!(
                f,
                "exponential {}..{}",
                format_duration(*base),
                format_duration(*max)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = |s: &str| parse_duration(s).map_err(|e| e.to_string());
        assert_eq!(ok("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(ok("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(ok("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(ok("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(ok("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(ok("0s"), Ok(Duration::ZERO));
        for bad in [
            "",
            "30",
            "s",
            "1.5s",
            "30 s",
            " 30s",
            "10w",
            "-1s",
            "99999999999999999999ms",
            "999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        let e = parse_duration("30").expect_err("no unit");
        assert_eq!(e.problem(), "30 has no unit");
        assert!(e.to_string().contains("\"30s\""), "{e}");
    }

    #[test]
    fn formats_round_trip() {
        for text in ["0s", "250ms", "30s", "2m", "1h", "7d", "90s"] {
            let d = parse_duration(text).expect("valid");
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{text}");
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(86_400)), "1d");
    }

    #[test]
    fn names() {
        for bad in ["", " ", "a b", "tab\there", "nl\n", "bell\u{7}"] {
            assert!(name_problem(bad).is_some(), "{bad:?} accepted");
        }
        assert!(name_problem(&"x".repeat(MAX_NAME_BYTES + 1)).is_some());
        assert_eq!(name_problem(&"x".repeat(MAX_NAME_BYTES)), None);
        assert_eq!(name_problem("Orders.EU"), None);
    }

    #[test]
    fn settings() {
        assert!(concurrency_problem(0).is_some());
        assert_eq!(concurrency_problem(1), None);
        assert!(duration_problem("poll_interval", Duration::ZERO).is_some());
        assert_eq!(duration_problem("shutdown_timeout", Duration::ZERO), None);
        assert!(start_problem("").is_some() && start_problem("a b").is_some());
        assert_eq!(start_problem("earliest"), None);
    }

    #[test]
    fn retry_delays() {
        assert_eq!(
            RetryDelay::parse("visibility_timeout"),
            Ok(RetryDelay::VisibilityTimeout)
        );
        assert_eq!(
            RetryDelay::parse("5s"),
            Ok(RetryDelay::Fixed(Duration::from_secs(5)))
        );
        assert!(RetryDelay::parse("soon").is_err());
        let exp = RetryDelay::exponential("100ms", "5s").expect("valid");
        assert_eq!(exp.to_string(), "exponential 100ms..5s");
        assert!(RetryDelay::exponential("0s", "5s").is_err());
        assert!(RetryDelay::exponential("5s", "1s").is_err());
    }
}
