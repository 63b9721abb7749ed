//! Batch subscriptions: one claimer fills batches of up to `batch_size` messages (waiting
//! up to `batch_wait` for a short one to fill) and hands each to a runner, at most
//! `concurrency` batches at a time. A runner calls the batch handler once, acknowledges the
//! messages that succeeded in one backend call, and retries or dead-letters each failed one
//! by the usual rules (its own attempt, `max_retries`, permanence).
//!
//! The claimer claims only when a runner is free, so a batch's visibility deadline runs
//! from its claim plus at most `batch_wait` (which must be shorter than the visibility
//! timeout) before its handler starts.

use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;

use super::catch_unwind::{self, CatchUnwind};
use super::deliver::retry_later;
use super::settle::{dead_letter, dead_letter_expired, Original};
use super::telemetry::{self, Outcome, SubscriptionMetrics};
use super::{consumer_name, CloseReport, Subscription, SubscriptionState};
use crate::backend::{Claim, Claimed};
use crate::batch::BatchHandler;
use crate::error::HandlerError;
use crate::message::{Message, MessageId};
use crate::time::after;

/// The batch settings of a subscription.
#[derive(Clone)]
pub(crate) struct BatchSpec {
    pub handler: BatchHandler,
    /// The most messages one call gets (at least 1).
    pub size: usize,
    /// How long a short batch waits to fill.
    pub wait: Duration,
}

/// The most messages one claim asks for; a larger batch is filled by several claims.
const MAX_CLAIM: usize = 512;

pub(super) async fn dispatch(
    sub: Subscription,
    spec: BatchSpec,
    mut stop: watch::Receiver<bool>,
) -> CloseReport {
    let concurrency = sub.concurrency.max(1);
    let mut wakeup = sub.backend.wakeup(&sub.stream);
    let consumer = consumer_name();
    // Batch subscriptions refuse `heartbeat` (`check_options`): nothing is extended.
    let leases = Arc::new(super::lease::Leases::new(
        sub.backend.clone(),
        &sub.stream,
        &sub.group,
        &consumer,
        sub.visibility_timeout,
        false,
    ));
    let state = Arc::new(SubscriptionState {
        consumer,
        metrics: SubscriptionMetrics::new(&sub.stream, &sub.group),
        claimer_wake: Notify::new(),
        aborted: Arc::new(Mutex::new(Vec::new())),
        retries_due: Mutex::new(BinaryHeap::new()),
        retry_scheduled: Notify::new(),
        pool: Mutex::new(super::dispatch::Pool::default()),
        work: Notify::new(),
        ended: Notify::new(),
        concurrency,
        leases,
        sub,
    });
    let size = spec.size.max(1);
    let runners_free = Arc::new(Semaphore::new(concurrency));
    let mut runners = JoinSet::new();
    let mut idle = false;
    let mut failures = 0u32;
    let mut claimed_at = Instant::now();
    'claiming: loop {
        let permit = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            permit = runners_free.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        while runners.try_join_next().is_some() {}
        if idle
            && !state
                .wait_for_work(&mut wakeup, &mut stop, claimed_at)
                .await
        {
            break;
        }
        wakeup.mark_seen();
        claimed_at = Instant::now();
        let mut batch = match claim_up_to(&state, size).await {
            Ok(batch) => {
                failures = 0;
                batch
            }
            Err(crate::Error::Closed) => break,
            Err(e) => {
                failures += 1;
                let backoff = super::dispatch::backoff(failures, state.sub.poll_interval);
                tracing::warn!(
                    stream = %state.sub.stream, group = %state.sub.group, error = %e,
                    retry_in = ?backoff, "claiming a batch failed; retrying"
                );
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                continue;
            }
        };
        // A short batch waits up to `batch_wait` (from its first claim) for more.
        if !batch.is_empty() && batch.len() < size && !spec.wait.is_zero() {
            let fill_until = claimed_at + spec.wait;
            while batch.len() < size {
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => {
                        // What was claimed is handled (and drained) like any batch.
                        runners.spawn(run_batch(state.clone(), spec.handler.clone(), batch, permit));
                        break 'claiming;
                    }
                    _ = wakeup.changed() => {}
                    _ = tokio::time::sleep_until(fill_until) => break,
                }
                wakeup.mark_seen();
                match claim_up_to(&state, size - batch.len()).await {
                    Ok(more) => batch.extend(more),
                    Err(e) => {
                        tracing::warn!(
                            stream = %state.sub.stream, group = %state.sub.group, error = %e,
                            "claiming more for a batch failed; handling what it holds"
                        );
                        break;
                    }
                }
            }
        }
        idle = batch.len() < size;
        if batch.is_empty() {
            continue;
        }
        runners.spawn(run_batch(
            state.clone(),
            spec.handler.clone(),
            batch,
            permit,
        ));
    }
    drain(&state, runners).await
}

/// Claims up to `count` messages, in claims of at most [`MAX_CLAIM`]; stops at the first
/// short one.
async fn claim_up_to(state: &SubscriptionState, count: usize) -> crate::Result<Vec<Claimed>> {
    let mut claimed: Vec<Claimed> = Vec::new();
    while claimed.len() < count {
        let asked = (count - claimed.len()).min(MAX_CLAIM);
        let more = state
            .sub
            .backend
            .claim(state.group(), asked, state.sub.visibility_timeout)
            .await;
        let more = match more {
            Ok(more) => more,
            // Messages claimed already are handled; the error shows at the next claim.
            Err(_) if !claimed.is_empty() => break,
            Err(e) => return Err(e),
        };
        let short = more.len() < asked;
        if claimed.is_empty() {
            claimed = more;
        } else {
            claimed.extend(more);
        }
        if short {
            break;
        }
    }
    Ok(claimed)
}

/// Waits for the runners within the shutdown timeout, aborts the rest and releases their
/// messages.
async fn drain(state: &Arc<SubscriptionState>, mut runners: JoinSet<()>) -> CloseReport {
    let deadline = after(state.sub.shutdown_timeout);
    let finished = tokio::time::timeout_at(deadline, async {
        while runners.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if !finished {
        runners.abort_all();
        while runners.join_next().await.is_some() {}
    }
    let aborted =
        std::mem::take(&mut *state.aborted.lock().unwrap_or_else(PoisonError::into_inner));
    state.release_aborted(&aborted).await;
    CloseReport {
        aborted: aborted.len(),
    }
}

/// Puts a batch's claims on the release list if its task is dropped (aborted at the
/// shutdown deadline) before its handler returned.
struct InFlight<'a> {
    claims: Vec<Claim>,
    state: &'a SubscriptionState,
}

impl InFlight<'_> {
    /// The handler returned: this task settles the claims.
    fn settle(mut self) -> Vec<Claim> {
        std::mem::take(&mut self.claims)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.claims.is_empty() {
            self.state
                .aborted
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .append(&mut self.claims);
        }
    }
}

/// One message of a running batch, as settling needs it.
struct Entry {
    original: Original,
    attempt: u32,
}

/// Runs one batch: dead-letters the messages whose claim expired on their last attempt,
/// calls the handler with the others, and settles each message by its outcome.
async fn run_batch(
    state: Arc<SubscriptionState>,
    handler: BatchHandler,
    claimed: Vec<Claimed>,
    permit: OwnedSemaphorePermit,
) {
    let mut permit = Some(permit);
    let max_attempts = state.sub.max_retries.max_attempts();
    let mut messages: Vec<Message> = Vec::with_capacity(claimed.len());
    let mut claims: Vec<Claim> = Vec::with_capacity(claimed.len());
    let mut entries: Vec<Entry> = Vec::with_capacity(claimed.len());
    for Claimed { mut message, token } in claimed {
        let claim = Claim {
            id: message.id.clone(),
            token,
        };
        // S9: a claim that expired on its last attempt is dead-lettered on reclaim.
        if max_attempts.is_some_and(|max| message.attempt > max) {
            dead_letter_expired(&state, &claim, message).await;
            continue;
        }
        message.token = token;
        entries.push(Entry {
            original: Original {
                payload: message.payload.clone(),
                headers: message.headers.clone(),
            },
            attempt: message.attempt,
        });
        claims.push(claim);
        messages.push(message);
    }
    let Some(first) = messages.first() else {
        return;
    };
    let ids: Vec<MessageId> = claims.iter().map(|c| c.id.clone()).collect();
    let guard = InFlight {
        claims,
        state: &state,
    };
    let span = tracing::info_span!(
        "stream.handle_batch",
        stream = %state.sub.stream,
        group = %state.sub.group,
        consumer = %state.sub.name,
        first_id = %first.id,
        size = messages.len(),
        outcome = tracing::field::Empty,
        reason = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    );
    let started_at = state.metrics.started(first.created_at);
    let count = messages.len();
    // A handler that panics before returning its future fails like one that panics inside
    // it (S11).
    let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        span.in_scope(|| handler(messages))
    }));
    let future = started.unwrap_or_else(|panic| {
        let error = HandlerError::retry(format!(
            "handler panicked: {}",
            catch_unwind::panic_message(panic.as_ref())
        ));
        Box::pin(std::future::ready(crate::batch::BatchResult::all_failed(
            error,
        )))
    });
    let mut running = CatchUnwind(future).instrument(span);
    let result = tokio::select! {
        biased;
        result = &mut running => result,
        _ = tokio::time::sleep(state.sub.visibility_timeout) => {
            tracing::warn!(
                stream = %state.sub.stream, group = %state.sub.group, size = count,
                timeout = ?state.sub.visibility_timeout,
                "batch handler passed its visibility timeout; its messages may be redelivered"
            );
            // Its runner slot goes to the next batch, which may take these messages over;
            // this one's settling is fenced.
            permit.take();
            (&mut running).await
        }
    };
    let took = state.metrics.finished(started_at);
    let outcomes = match result {
        Ok(result) => result.outcomes(&ids),
        Err(panic) => {
            let error = HandlerError::retry(format!("handler panicked: {panic}"));
            ids.iter().map(|_| Some(error.clone())).collect()
        }
    };
    let claims = guard.settle();
    let failed = outcomes.iter().filter(|o| o.is_some()).count();
    if failed == 0 {
        telemetry::record(running.span(), Outcome::Ok, None, took);
    } else {
        let reason = format!("{failed} of {count} messages failed");
        telemetry::record(running.span(), Outcome::Retry, Some(&reason), took);
    }
    drop(running);
    let mut acks = Vec::with_capacity(count - failed);
    let mut failures = Vec::with_capacity(failed);
    for ((claim, entry), outcome) in claims.into_iter().zip(entries).zip(outcomes) {
        match outcome {
            None => {
                state.metrics.outcome(Outcome::Ok);
                acks.push(claim);
            }
            Some(error) => failures.push((claim, entry, error)),
        }
    }
    state.send_acks(&acks).await;
    for (claim, entry, error) in failures {
        settle_failure(&state, &claim, entry, &error).await;
    }
}

/// Retries a failed message of a batch, or dead-letters it (permanent, or out of attempts).
async fn settle_failure(
    state: &SubscriptionState,
    claim: &Claim,
    entry: Entry,
    error: &HandlerError,
) {
    let attempt = entry.attempt;
    let exhausted = state
        .sub
        .max_retries
        .max_attempts()
        .is_some_and(|max| attempt >= max);
    let dead = error.is_permanent() || exhausted;
    state.metrics.outcome(if dead {
        Outcome::DeadLetter
    } else {
        Outcome::Retry
    });
    tracing::warn!(
        stream = %state.sub.stream, group = %state.sub.group, id = %claim.id,
        attempt, permanent = error.is_permanent(), error = %error, "message of a batch failed"
    );
    if dead {
        dead_letter(state, claim, entry.original, attempt, error.message()).await;
        return;
    }
    retry_later(state, claim, attempt).await;
}

/// Checks a batch subscription's options.
pub(crate) fn check_options(options: &crate::SubscribeOptions) -> crate::Result<()> {
    if let Some(problem) = stream_rules::batch_size_problem(options.batch_size as u64) {
        return Err(crate::Error::Config(problem));
    }
    if options.batch_wait >= options.visibility_timeout {
        return Err(crate::Error::Config(format!(
            "`batch_wait` ({:?}) must be shorter than `visibility_timeout` ({:?}): the \
             messages of a batch are claimed while it fills, and their visibility deadline \
             runs from then",
            options.batch_wait, options.visibility_timeout
        )));
    }
    if options.transactional.is_some() {
        return Err(crate::Error::Config(
            "a batch handler cannot be transactional: use a per-message transactional handler, \
             or write the batch in one transaction of your own and make it idempotent"
                .to_owned(),
        ));
    }
    if options.ordered.is_key() {
        return Err(crate::Error::Config(
            "a batch handler cannot be ordered by key (`ordered = \"key\"`): a batch holds \
             several messages of one key at once; use a per-message handler for ordering"
                .to_owned(),
        ));
    }
    if options.heartbeat {
        return Err(crate::Error::Config(
            "a batch handler cannot use the lease heartbeat (`heartbeat`): give it a \
             `visibility_timeout` longer than a batch takes, or use a per-message handler"
                .to_owned(),
        ));
    }
    Ok(())
}

/// The per-message handler of a batch subscription, which the engine never calls.
pub(crate) fn no_message_handler() -> super::Handler {
    super::handler_fn(|_| async {
        Err(HandlerError::permanent(
            "a batch subscription ran its per-message handler; this is a bug in stream-runtime",
        ))
    })
}
