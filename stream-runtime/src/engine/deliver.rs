//! Delivering one claimed message: runs its handler (catching panics, watching the
//! visibility deadline) and settles the outcome: ack, retry or dead letter.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tracing::Instrument;

use super::catch_unwind::{self, CatchUnwind};
use super::settle::{dead_letter, dead_letter_expired, Original};
use super::telemetry::{self, Outcome};
use super::{random_u64, Subscription, SubscriptionState};
use crate::backend::{Claim, Claimed};
use crate::error::HandlerError;
use crate::options::RetryDelay;

/// Puts a claim on the release list if its task is dropped (aborted) before settling it.
struct InFlight<'a> {
    claim: Claim,
    settling: bool,
    state: &'a SubscriptionState,
}

impl InFlight<'_> {
    /// Marks the claim as being settled by this task and returns it.
    fn settle(&mut self) -> &Claim {
        self.settling = true;
        &self.claim
    }

    /// Marks the claim as being settled elsewhere (acked by the dispatcher) and hands it over.
    fn take(mut self) -> Claim {
        self.settling = true;
        let placeholder = Claim {
            id: crate::message::MessageId::new(String::new()),
            token: self.claim.token,
        };
        std::mem::replace(&mut self.claim, placeholder)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.settling {
            self.state
                .aborted
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(self.claim.clone());
        }
    }
}

/// Runs one claimed message; returns its claim when it is to be acked. `slot` says whether
/// the message still counts against the concurrency: it is given back early (set to false)
/// when the handler passes its visibility deadline.
pub(super) async fn run_one(
    state: &Arc<SubscriptionState>,
    claimed: Claimed,
    slot: &mut bool,
) -> Option<Claim> {
    let mut guard = InFlight {
        claim: claimed.claim(),
        settling: false,
        state: state.as_ref(),
    };
    let mut message = claimed.message;
    // A message not yet due (delayed publish) waits in the group until its time.
    if super::delay::wait_or_park(state, &guard.claim, &message.headers).await {
        guard.settle();
        return None;
    }
    message.token = claimed.token;
    message.lease = Some(super::lease::LeaseHandle(state.leases.clone()));
    let attempt = message.attempt;
    let max_attempts = state.sub.max_retries.max_attempts();

    // S9: a claim that expired on its last attempt is dead-lettered on reclaim.
    if max_attempts.is_some_and(|max| attempt > max) {
        let claim = guard.settle();
        dead_letter_expired(state, claim, message).await;
        return None;
    }

    // Kept for a dead letter; cheap: the payload is shared, empty headers do not allocate.
    let original = Original {
        payload: message.payload.clone(),
        headers: message.headers.clone(),
    };
    let id = message.id.clone();
    let span = telemetry::span_at!(
        state.sub.span_level,
        "stream.handle",
        stream = %state.sub.stream,
        group = %state.sub.group,
        consumer = %state.sub.name,
        message_id = %id,
        attempt,
        outcome = tracing::field::Empty,
        reason = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    );
    #[cfg(feature = "opentelemetry")]
    telemetry::trace_context::extract(&span, &message.headers);
    let started_at = state.metrics.started(message.created_at);
    let lease = state.leases.hold(&guard.claim);

    // A handler still running at its visibility deadline has lost its claim: another worker
    // may take the message over, so its slot is freed for that; the handler runs on (its
    // settling is fenced), and a stuck handler cannot starve the subscription.
    // A handler that panics before returning its future (work done outside its `async`
    // block) fails like one that panics inside it (S11), instead of killing this task.
    let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        span.in_scope(|| (state.sub.handler)(message))
    }));
    let future = started.unwrap_or_else(|panic| {
        let error = HandlerError::retry(format!(
            "handler panicked: {}",
            catch_unwind::panic_message(panic.as_ref())
        ));
        Box::pin(std::future::ready(Err(error)))
    });
    // The span moves into the future (no clone): `handler.span()` records the outcome.
    let mut handler = CatchUnwind(future).instrument(span);
    let outcome = tokio::select! {
        biased;
        outcome = &mut handler => outcome,
        _ = state.leases.expired(lease.claim()) => {
            tracing::warn!(
                stream = %state.sub.stream, group = %state.sub.group, %id, attempt,
                timeout = ?state.sub.visibility_timeout, heartbeat = state.sub.heartbeat,
                "handler passed its claim's deadline; the message may be redelivered"
            );
            *slot = false;
            super::dispatch::slot_freed_early(state);
            (&mut handler).await
        }
    };
    drop(lease);
    let took = state.metrics.finished(started_at);
    let error = match outcome {
        Ok(Ok(())) => {
            state.metrics.outcome(Outcome::Ok);
            telemetry::record(handler.span(), Outcome::Ok, None, took);
            // A transactional handler acked inside its own transaction.
            if state.sub.transactional {
                guard.settle();
                return None;
            }
            return Some(guard.take());
        }
        Ok(Err(error)) => error,
        Err(panic) => HandlerError::retry(format!("handler panicked: {panic}")),
    };
    let exhausted = max_attempts.is_some_and(|max| attempt >= max);
    let outcome = if error.is_permanent() || exhausted {
        Outcome::DeadLetter
    } else {
        Outcome::Retry
    };
    state.metrics.outcome(outcome);
    telemetry::record(handler.span(), outcome, Some(error.message()), took);
    handler.span().in_scope(|| {
        tracing::warn!(
            stream = %state.sub.stream, group = %state.sub.group, %id,
            attempt, permanent = error.is_permanent(), error = %error, "handler failed"
        );
    });
    if outcome == Outcome::DeadLetter {
        let claim = guard.settle();
        dead_letter(state, claim, original, attempt, error.message()).await;
    } else {
        let claim = guard.settle();
        retry_later(state, claim, attempt).await;
    }
    None
}

/// Makes a failed message claimable again after the retry delay of its `attempt`.
pub(super) async fn retry_later(state: &SubscriptionState, claim: &Claim, attempt: u32) {
    let delay = retry_delay(&state.sub, attempt);
    match state.sub.backend.retry(state.group(), claim, delay).await {
        Ok(true) => state.schedule_retry_wake(delay),
        Ok(false) => {}
        Err(e) => tracing::warn!(
            stream = %state.sub.stream, group = %state.sub.group, id = %claim.id, error = %e,
            "scheduling a retry failed; the message comes back after the visibility timeout"
        ),
    }
}

fn retry_delay(sub: &Subscription, attempt: u32) -> Duration {
    match sub.retry_delay {
        RetryDelay::VisibilityTimeout => sub.visibility_timeout,
        RetryDelay::Fixed(delay) => delay,
        RetryDelay::Exponential { base, max } => {
            let full = base
                .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
                .min(max);
            // Jitter: uniform in [full/2, full].
            let half = full / 2;
            let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
            half + Duration::from_nanos(random_u64() % nanos.max(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::handler_fn;
    use crate::options::MaxRetries;

    #[test]
    fn exponential_delay_is_capped_and_jittered() {
        let sub_delay = |attempt| {
            let d = RetryDelay::Exponential {
                base: Duration::from_millis(100),
                max: Duration::from_secs(1),
            };
            let full = Duration::from_millis(100)
                .saturating_mul(1u32 << (attempt - 1))
                .min(Duration::from_secs(1));
            (d, full)
        };
        for attempt in 1..8u32 {
            let (policy, full) = sub_delay(attempt);
            let sub = Subscription {
                backend: Arc::new(crate::backend::memory::MemoryBackend::new()),
                stream: String::new(),
                group: String::new(),
                dead_letter: String::new(),
                handler: handler_fn(|_| async { Ok(()) }),
                concurrency: 1,
                max_retries: MaxRetries::default(),
                visibility_timeout: Duration::from_secs(30),
                poll_interval: Duration::from_secs(1),
                shutdown_timeout: Duration::from_secs(1),
                retry_delay: policy,
                name: String::new(),
                transactional: false,
                span_level: crate::SpanLevel::Info,
                heartbeat: false,
                ordered: false,
                batch: None,
            };
            let d = retry_delay(&sub, attempt);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} vs {full:?}"
            );
        }
    }
}
