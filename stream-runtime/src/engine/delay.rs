//! Delayed publish: a message published with a delivery time
//! ([`PublishOptions::deliver_after`](crate::PublishOptions::deliver_after)) carries that
//! time in the reserved header [`DELIVER_AT_HEADER`]. It is appended at once, like any
//! message; when a claim hands it out before its time, the engine postpones it
//! ([`Backend::postpone`](crate::Backend::postpone): claimable again shortly before its
//! time, the delivery given back, so it reaches its handler with attempt 1) and schedules a
//! wake-up for then, as for a due retry; the claim then made waits out the last few
//! milliseconds in its worker. No schema or claim changes, and no cost for messages
//! without headers (see docs/semantics.md, "Delayed publish").

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::SubscriptionState;
use crate::backend::Claim;
use crate::message::Headers;

/// The header holding a delayed message's delivery time, in milliseconds since the Unix
/// epoch. Reserved: written by a publish with a delivery time, read by every consumer.
pub const DELIVER_AT_HEADER: &str = "x-deliver-at";

/// Added to a parked message's wake-up (see `park`).
const WAKE_SLACK: Duration = Duration::from_millis(1);

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

/// How long before its time a delayed message is claimed again: the claim's own latency is
/// spent before the time, and the worker waits out the rest, so the handler starts on time.
pub(super) const LEAD: Duration = Duration::from_millis(25);

/// Handles a claimed message's delivery time: returns false when it is due (at once, or after
/// waiting here when it is due within [`LEAD`]); true when it went back to the group until
/// [`LEAD`] before its time (and this subscription wakes for it then).
pub(super) async fn wait_or_park(
    state: &Arc<SubscriptionState>,
    claim: &Claim,
    headers: &Headers,
) -> bool {
    let Some(wait) = not_yet_due(headers) else {
        return false;
    };
    if wait <= LEAD {
        tokio::time::sleep(wait).await;
        return false;
    }
    let delay = wait - LEAD;
    match state
        .sub
        .backend
        .postpone(state.group(), claim, delay)
        .await
    {
        // The backend counted `delay` from when it ran the call, before it answered: a
        // wake-up `delay` from now finds the message claimable. The slack covers the timer's
        // and the backends' millisecond rounding.
        Ok(true) => state.schedule_wake(delay.saturating_add(WAKE_SLACK)),
        Ok(false) => {}
        Err(e) => tracing::warn!(
            stream = %state.sub.stream, group = %state.sub.group, id = %claim.id, error = %e,
            "postponing a message that is not due yet failed; it comes back after the \
             visibility timeout"
        ),
    }
    true
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
