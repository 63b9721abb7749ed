//! Delayed publish: a message published with a delivery time
//! ([`PublishOptions::deliver_after`](crate::PublishOptions::deliver_after)) carries that
//! time in the reserved header [`DELIVER_AT_HEADER`]. It is appended at once, like any
//! message; when a claim hands it out before its time, the engine postpones it
//! ([`Backend::postpone`](crate::Backend::postpone): claimable again at its time, the
//! delivery given back, so it reaches its handler with attempt 1) and schedules a wake-up
//! for that time, as for a due retry. No schema or claim changes, and no cost for messages
//! without headers (see docs/semantics.md, "Delayed publish").

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::SubscriptionState;
use crate::backend::Claim;
use crate::message::Headers;

/// The header holding a delayed message's delivery time, in milliseconds since the Unix
/// epoch. Reserved: written by a publish with a delivery time, read by every consumer.
pub const DELIVER_AT_HEADER: &str = "x-deliver-at";

/// The header value for a delivery time.
pub(crate) fn header_value(at: SystemTime) -> String {
    unix_ms(at).to_string()
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// How long until a message with these headers is due; `None` when it is due now (or has
/// no delivery time, or one that is not a number).
pub(super) fn not_yet_due(headers: &Headers) -> Option<Duration> {
    if headers.is_empty() {
        return None;
    }
    let at: u64 = headers.get(DELIVER_AT_HEADER)?.parse().ok()?;
    let wait = at.checked_sub(unix_ms(SystemTime::now()))?;
    (wait > 0).then(|| Duration::from_millis(wait))
}

/// Gives a claim of a message not yet due back to the group until its time, and schedules
/// this subscription's wake-up for then.
pub(super) async fn park(state: &Arc<SubscriptionState>, claim: &Claim, wait: Duration) {
    match state.sub.backend.postpone(state.group(), claim, wait).await {
        Ok(true) => state.schedule_retry_wake(wait),
        Ok(false) => {}
        Err(e) => tracing::warn!(
            stream = %state.sub.stream, group = %state.sub.group, id = %claim.id, error = %e,
            "postponing a message that is not due yet failed; it comes back after the \
             visibility timeout"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_times_are_read_from_the_header() {
        let mut headers = Headers::new();
        assert_eq!(not_yet_due(&headers), None);
        headers.insert("other".into(), "x".into());
        assert_eq!(not_yet_due(&headers), None);
        let soon = SystemTime::now() + Duration::from_secs(60);
        headers.insert(DELIVER_AT_HEADER.into(), header_value(soon));
        let wait = not_yet_due(&headers).expect("a minute to wait");
        assert!(
            wait > Duration::from_secs(59) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        let past = SystemTime::now() - Duration::from_secs(1);
        headers.insert(DELIVER_AT_HEADER.into(), header_value(past));
        assert_eq!(not_yet_due(&headers), None);
        headers.insert(DELIVER_AT_HEADER.into(), "soon".into());
        assert_eq!(
            not_yet_due(&headers),
            None,
            "not a number: delivered at once"
        );
    }
}
