//! Settling outcomes other than acks (which the dispatcher sends in batches): dead-letter
//! moves with their headers.

use super::{dead_letter_headers, SubscriptionState, MAX_REASON_BYTES};
use crate::backend::Claim;
use crate::message::{Bytes, Headers, NewMessage};

/// What a dead letter keeps of the original message.
pub(super) struct Original {
    pub(super) payload: Bytes,
    pub(super) headers: Headers,
}

pub(super) async fn dead_letter(
    state: &SubscriptionState,
    claim: &Claim,
    original: Original,
    attempts: u32,
    reason: &str,
) {
    use dead_letter_headers as h;
    let mut headers = original.headers;
    headers.insert(h::STREAM.to_owned(), state.sub.stream.clone());
    headers.insert(h::ID.to_owned(), claim.id.to_string());
    headers.insert(h::GROUP.to_owned(), state.sub.group.clone());
    headers.insert(h::ATTEMPTS.to_owned(), attempts.to_string());
    headers.insert(
        h::REASON.to_owned(),
        truncate(reason, MAX_REASON_BYTES).to_owned(),
    );
    let dead = NewMessage {
        payload: original.payload,
        headers,
    };
    let backend = &state.sub.backend;
    let moved = if state.sub.ordered {
        backend.dead_letter_ordered(state.group(), claim, &state.sub.dead_letter, dead)
    } else {
        backend.dead_letter(state.group(), claim, &state.sub.dead_letter, dead)
    };
    match moved.await {
        Ok(true) => tracing::warn!(
            stream = %state.sub.stream, group = %state.sub.group, id = %claim.id, attempts,
            dead_letter = %state.sub.dead_letter, "message moved to the dead-letter stream"
        ),
        Ok(false) => tracing::debug!(
            id = %claim.id, "claim was taken over before the dead-letter move; left to its new owner"
        ),
        Err(e) => tracing::warn!(
            stream = %state.sub.stream, group = %state.sub.group, id = %claim.id, error = %e,
            "moving to the dead-letter stream failed; the message comes back after the visibility timeout"
        ),
    }
}

/// S9: dead-letters a message reclaimed after its claim expired on its last attempt.
pub(super) async fn dead_letter_expired(
    state: &SubscriptionState,
    claim: &Claim,
    message: crate::message::Message,
) {
    let reason = format!(
        "the handler did not finish within the visibility timeout ({:?}) on its last attempt",
        state.sub.visibility_timeout
    );
    let original = Original {
        payload: message.payload,
        headers: message.headers,
    };
    state.metrics.outcome(super::telemetry::Outcome::DeadLetter);
    dead_letter(state, claim, original, message.attempt - 1, &reason).await;
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
