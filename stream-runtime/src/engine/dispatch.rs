//! The dispatcher: claims as many messages as there are free workers, runs each in its
//! own task, backs off on backend failures, and drains at shutdown.

use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::deliver::run_one;
use super::settle::settle_acks;
use super::telemetry::SubscriptionMetrics;
use super::{consumer_name, CloseReport, Subscription, SubscriptionState};
use crate::time::after;

/// The most messages one claim asks for.
const MAX_CLAIM: usize = 512;

/// A claim slower than this was a round trip to a server or a file lock.
const SLOW_CLAIM: Duration = Duration::from_micros(50);

pub(super) async fn dispatch(sub: Subscription, mut stop: watch::Receiver<bool>) -> CloseReport {
    // Beyond MAX_PERMITS the semaphore would panic, killing the subscription silently.
    let concurrency = sub.concurrency.clamp(1, Semaphore::MAX_PERMITS);
    let workers = Arc::new(Semaphore::new(concurrency));
    let (acks, ack_rx) = mpsc::unbounded_channel();
    let state = Arc::new(SubscriptionState {
        consumer: consumer_name(),
        metrics: SubscriptionMetrics::new(&sub.stream, &sub.group),
        acks,
        aborted: Arc::new(Mutex::new(Vec::new())),
        retries_due: Mutex::new(BinaryHeap::new()),
        retry_scheduled: Notify::new(),
        sub,
    });
    // The settler must not hold `state`: it owns the ack sender the settler waits on.
    let settler = tokio::spawn(settle_acks(
        state.sub.clone(),
        state.consumer.clone(),
        ack_rx,
    ));
    let mut wakeup = state.sub.backend.wakeup(&state.sub.stream);
    let mut tasks = JoinSet::new();
    let mut idle = false;
    let mut failures = 0u32;
    let mut claimed_at = Instant::now();
    // Set when close was asked for while a claim was in flight: the drain ends there.
    let mut drain_deadline: Option<Instant> = None;

    loop {
        if idle
            && !state
                .wait_for_work(&mut wakeup, &mut stop, claimed_at)
                .await
        {
            break;
        }
        let first = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            permit = workers.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let mut permits: Vec<OwnedSemaphorePermit> = vec![first];
        // At most MAX_CLAIM free workers per claim: a huge concurrency (a typo in a config)
        // must not make one claim allocate a permit per possible worker.
        while permits.len() < MAX_CLAIM {
            match workers.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        while tasks.try_join_next().is_some() {}

        wakeup.mark_seen();
        claimed_at = Instant::now();
        let claiming =
            state
                .sub
                .backend
                .claim(state.group(), permits.len(), state.sub.visibility_timeout);
        tokio::pin!(claiming);
        let answered = tokio::select! {
            biased;
            result = &mut claiming => Some(result),
            _ = stop.wait_for(|s| *s) => None,
        };
        let result = match answered {
            Some(result) => result,
            None => {
                // Closed while a claim is in flight (a slow or unreachable backend): it gets
                // the shutdown budget, no more. What it claims in time is handled and
                // drained like the rest; if it never answers, its claims (if any) come back
                // after the visibility timeout.
                let deadline = after(state.sub.shutdown_timeout);
                drain_deadline = Some(deadline);
                match tokio::time::timeout_at(deadline, claiming).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!(
                            stream = %state.sub.stream, group = %state.sub.group,
                            "a claim was still in flight at the shutdown deadline; abandoned"
                        );
                        break;
                    }
                }
            }
        };
        let claimed = match result {
            Ok(claimed) => {
                failures = 0;
                claimed
            }
            Err(crate::Error::Closed) => break,
            Err(e) => {
                failures += 1;
                let backoff = backoff(failures, state.sub.poll_interval);
                tracing::warn!(
                    stream = %state.sub.stream, group = %state.sub.group, error = %e,
                    retry_in = ?backoff, "claiming messages failed; retrying"
                );
                drop(permits);
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                continue;
            }
        };
        idle = claimed.len() < permits.len();
        for (claimed, permit) in claimed.into_iter().zip(permits.drain(..)) {
            tasks.spawn(run_one(state.clone(), claimed, permit));
        }
        if drain_deadline.is_some() {
            break;
        }
        if !idle && concurrency > 1 && claimed_at.elapsed() >= SLOW_CLAIM {
            // A backlog behind a claim that took a round trip: let the handlers just
            // started run first, so that fast ones free their workers before the next claim
            // and claims stay as large as the concurrency, instead of settling at half of it
            // (two cohorts of workers alternating around each round trip). A claim quicker
            // than a yield (in memory) gains nothing from it.
            tokio::task::yield_now().await;
        }
    }

    let deadline = drain_deadline.unwrap_or_else(|| after(state.sub.shutdown_timeout));
    let report = drain(&state, &mut tasks, deadline).await;
    drop(state);
    if settler.await.is_err() {
        tracing::error!("ack settler task failed");
    }
    report
}

/// Exponential backoff for backend failures: 50 ms doubling up to the poll interval
/// (at least 1 s).
fn backoff(failures: u32, poll_interval: Duration) -> Duration {
    let cap = poll_interval.max(Duration::from_secs(1));
    Duration::from_millis(50)
        .saturating_mul(1 << failures.min(10))
        .min(cap)
}

async fn drain(
    state: &Arc<SubscriptionState>,
    tasks: &mut JoinSet<()>,
    deadline: Instant,
) -> CloseReport {
    let all_done = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout_at(deadline, all_done).await.is_err() {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    let aborted =
        std::mem::take(&mut *state.aborted.lock().unwrap_or_else(PoisonError::into_inner));
    if !aborted.is_empty() {
        tracing::warn!(
            stream = %state.sub.stream, group = %state.sub.group, count = aborted.len(),
            "handlers still running at the shutdown deadline were aborted; releasing their messages"
        );
        if let Err(e) = state.sub.backend.release(state.group(), &aborted).await {
            tracing::warn!(error = %e, "releasing aborted messages failed; they come back after the visibility timeout");
        }
    }
    CloseReport {
        aborted: aborted.len(),
    }
}
