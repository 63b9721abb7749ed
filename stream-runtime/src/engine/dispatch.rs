//! The workers of a subscription: they claim as many messages as there are free workers,
//! run them, back off on backend failures, and drain at shutdown.

use std::collections::{BinaryHeap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::catch_unwind::CatchUnwind;
use super::deliver::run_one;
use super::telemetry::SubscriptionMetrics;
use super::{consumer_name, CloseReport, Subscription, SubscriptionState};
use crate::backend::{Claim, Claimed, Wakeup};
use crate::time::after;

/// The workers of a subscription and the messages handed to them.
///
/// There is no dispatcher task: a worker that finds nothing queued takes the claimer's part
/// (when nobody holds it), claims as many messages as there are free workers, keeps one and
/// queues the rest. So with one worker, or a backlog that keeps every worker busy, a message
/// goes from its claim to its handler without a hand-over between tasks, and its ack is sent
/// with the next claim.
///
/// `busy` counts the messages claimed and not yet handled (the concurrency's slots in use). A
/// handler past its visibility deadline gives its slot back but keeps its worker. There are
/// always at least as many workers in `waking` (told of a job, or just started, and about to
/// look at the queue) as jobs queued: whoever queues a job wakes an idle worker or starts one
/// when there are not, so a job never waits for a busy worker.
#[derive(Default)]
pub(super) struct Pool {
    queue: VecDeque<Claimed>,
    /// Handled messages to ack, sent by the claimer in batches.
    pub(super) acks: Vec<Claim>,
    /// The claimer waits and wants `claimer_wake` on a new ack or a freed slot.
    pub(super) claimer_waiting: bool,
    /// The claimer's state; `None` while a worker holds it.
    claimer: Option<Claimer>,
    /// Slots in use: messages claimed and not yet handled (nor past their deadline).
    busy: usize,
    /// Workers alive.
    workers: usize,
    /// Workers waiting for a job and not yet told of one.
    idle: usize,
    /// Workers told of a job (or just started) that have not yet looked at the queue: they
    /// will take a queued job, so a job queued meanwhile needs no other worker.
    waking: usize,
    /// Set at shutdown (or when the backend closed): workers finish what is queued and end,
    /// and nobody claims.
    closing: bool,
    /// Set at the shutdown deadline: no worker starts any more.
    aborting: bool,
    tasks: JoinSet<()>,
}

/// What the claimer carries from one claim to the next.
pub(super) struct Claimer {
    wakeup: Wakeup,
    stop: watch::Receiver<bool>,
    /// The last claim came back short: wait for new work before the next one.
    idle: bool,
    failures: u32,
    claimed_at: Instant,
}

/// The most messages one claim asks for.
const MAX_CLAIM: usize = 512;

/// What a worker does next.
enum Next {
    Run(Claimed),
    Claim(Claimer),
    Wait,
}

pub(super) async fn dispatch(sub: Subscription, mut stop: watch::Receiver<bool>) -> CloseReport {
    let concurrency = sub.concurrency.max(1);
    let claimer = Claimer {
        wakeup: sub.backend.wakeup(&sub.stream),
        stop: stop.clone(),
        idle: false,
        failures: 0,
        claimed_at: Instant::now(),
    };
    let consumer = consumer_name();
    let leases = Arc::new(super::lease::Leases::new(
        sub.backend.clone(),
        &sub.stream,
        &sub.group,
        &consumer,
        sub.visibility_timeout,
        sub.heartbeat,
    ));
    let state = Arc::new(SubscriptionState {
        consumer,
        metrics: SubscriptionMetrics::new(&sub.stream, &sub.group),
        claimer_wake: Notify::new(),
        aborted: Arc::new(Mutex::new(Vec::new())),
        retries_due: Mutex::new(BinaryHeap::new()),
        retry_scheduled: Notify::new(),
        pool: Mutex::new(Pool {
            queue: VecDeque::new(),
            acks: Vec::new(),
            claimer_waiting: false,
            claimer: Some(claimer),
            busy: 0,
            workers: 1,
            idle: 0,
            waking: 0,
            closing: false,
            aborting: false,
            tasks: JoinSet::new(),
        }),
        work: Notify::new(),
        ended: Notify::new(),
        concurrency,
        leases,
        sub,
    });
    // Runs until the drain is over: handlers finishing during the drain keep their claims.
    let heartbeat = super::lease::start_heartbeat(&state.leases);
    state.pool().tasks.spawn(worker(state.clone(), false));
    // Ends at close, or when the backend closed under the claimer.
    tokio::select! {
        biased;
        _ = stop.wait_for(|s| *s) => {}
        _ = state.ended.notified() => {}
    }
    let deadline = after(state.sub.shutdown_timeout);
    let report = drain(&state, deadline).await;
    drop(heartbeat);
    report
}

impl Pool {
    /// Gives back a slot; tells a waiting claimer.
    fn free_slot(&mut self, wake: &Notify) {
        self.busy = self.busy.saturating_sub(1);
        self.wake_claimer(wake);
    }

    /// Makes sure the queued jobs have workers about to take them: wakes idle workers, and
    /// returns how many were woken and how many must be started (counted in `workers`).
    fn staff_queue(&mut self) -> (usize, usize) {
        let need = self.queue.len().saturating_sub(self.waking);
        let wake = need.min(self.idle);
        self.idle -= wake;
        let start = need - wake;
        self.waking += need;
        self.workers += start;
        (wake, start)
    }

    /// Wakes one idle worker (to take the claimer's part), if there is one.
    fn wake_one_idle(&mut self) -> bool {
        let wake = self.idle > 0;
        if wake {
            self.idle -= 1;
            self.waking += 1;
        }
        wake
    }

    fn wake_claimer(&mut self, wake: &Notify) {
        if self.claimer_waiting {
            self.claimer_waiting = false;
            wake.notify_one();
        }
    }
}

/// A worker: runs queued messages one at a time, and claims when nothing is queued and
/// nobody else claims, until the subscription closes. Ends early when more workers are
/// alive than the concurrency (after a handler passed its visibility deadline) and nothing
/// is queued.
async fn worker(state: Arc<SubscriptionState>, mut counted: bool) {
    // What the last message left to do, done under the next lock of the pool: its slot
    // (still held unless given back at its deadline) and its ack.
    let mut held = false;
    let mut ack: Option<Claim> = None;
    loop {
        let notified = state.work.notified();
        tokio::pin!(notified);
        let next = {
            let mut pool = state.pool();
            if std::mem::take(&mut counted) {
                pool.waking = pool.waking.saturating_sub(1);
            }
            if let Some(ack) = ack.take() {
                pool.acks.push(ack);
                pool.wake_claimer(&state.claimer_wake);
            }
            if std::mem::take(&mut held) {
                pool.free_slot(&state.claimer_wake);
            }
            if let Some(job) = pool.queue.pop_front() {
                Next::Run(job)
            } else if let Some(claimer) = pool.claimer.take().filter(|_| !pool.closing) {
                Next::Claim(claimer)
            } else if pool.closing || pool.workers > state.concurrency {
                pool.workers -= 1;
                if pool.workers == 0 {
                    state.ended.notify_one();
                }
                return;
            } else {
                pool.idle += 1;
                // Registered before the lock is let go: a job queued for this worker from
                // now on wakes it.
                notified.as_mut().enable();
                Next::Wait
            }
        };
        let claimed = match next {
            Next::Run(job) => job,
            Next::Wait => {
                notified.await;
                counted = true;
                continue;
            }
            Next::Claim(mut claimer) => match claim(&state, &mut claimer).await {
                Round::Keep(job) => {
                    give_back(&state, claimer);
                    job
                }
                Round::Again => {
                    state.pool().claimer = Some(claimer);
                    continue;
                }
                Round::End => {
                    state.pool().closing = true;
                    state.work.notify_waiters();
                    state.ended.notify_one();
                    continue;
                }
            },
        };
        held = true;
        let outcome = {
            let run = std::pin::pin!(run_one(&state, claimed, &mut held));
            // Handler panics are caught inside; this catches one in the engine's own
            // settling, so the worker lives on (the claim comes back after its visibility
            // timeout).
            CatchUnwind(run).await
        };
        match outcome {
            Ok(to_ack) => ack = to_ack,
            Err(panic) => tracing::error!(
                stream = %state.sub.stream, group = %state.sub.group, panic = %panic,
                "settling a message panicked; it comes back after the visibility timeout"
            ),
        }
    }
}

/// Called when a handler passed its visibility deadline and gave its slot back while still
/// running: the slot is claimed for at once. Wakes an idle worker, or starts one, to take the
/// claimer's part if nobody holds it.
pub(super) fn slot_freed_early(state: &Arc<SubscriptionState>) {
    let wake = {
        let mut pool = state.pool();
        pool.free_slot(&state.claimer_wake);
        if pool.closing || pool.claimer.is_none() {
            return;
        }
        if pool.wake_one_idle() {
            true
        } else {
            pool.workers += 1;
            pool.waking += 1;
            pool.tasks.spawn(worker(state.clone(), true));
            false
        }
    };
    if wake {
        state.work.notify_one();
    }
}

/// Hands the claimer's part back; an idle worker (if any) is woken to take it, so a worker
/// that went idle while the claim was in flight does not wait for the next handler to end.
fn give_back(state: &SubscriptionState, claimer: Claimer) {
    let wake = {
        let mut pool = state.pool();
        pool.claimer = Some(claimer);
        pool.wake_one_idle()
    };
    if wake {
        state.work.notify_one();
    }
}

/// What one claim round gave the claiming worker.
enum Round {
    /// A message for the claimer itself (the claim was full: the rest went to others).
    Keep(Claimed),
    /// Nothing for the claimer: it stays the claimer and claims again (after waiting for
    /// work when the claim came back short).
    Again,
    /// The subscription is closing: nobody claims any more.
    End,
}

/// One claim round: waits for work if the last claim came back short, then claims as many
/// messages as there are free slots (sending the queued acks first) and queues them,
/// keeping one for the claimer when the claim was full.
async fn claim(state: &Arc<SubscriptionState>, c: &mut Claimer) -> Round {
    if *c.stop.borrow() {
        return Round::End;
    }
    if c.idle
        && !state
            .wait_for_work(&mut c.wakeup, &mut c.stop, c.claimed_at)
            .await
    {
        return Round::End;
    }
    // Reserve the free slots; while there are none, acks are sent as they come. The acks
    // queued when slots are free go with the claim.
    let (asked, acks) = loop {
        let (free, acks) = {
            let mut pool = state.pool();
            // At most MAX_CLAIM per claim: a huge concurrency (a typo in a config) must not
            // make one claim ask for that many.
            let free = state.concurrency.saturating_sub(pool.busy).min(MAX_CLAIM);
            pool.busy += free;
            let acks = std::mem::take(&mut pool.acks);
            if free == 0 && acks.is_empty() {
                pool.claimer_waiting = true;
            }
            (free, acks)
        };
        if free > 0 {
            break (free, acks);
        }
        if !acks.is_empty() {
            state.send_acks(&acks).await;
        } else {
            tokio::select! {
                biased;
                _ = c.stop.wait_for(|s| *s) => return Round::End,
                _ = state.claimer_wake.notified() => {}
            }
        }
    };
    c.wakeup.mark_seen();
    c.claimed_at = Instant::now();
    // The acks travel beside the claim (on another connection where the backend has a
    // pool): the claim does not wait for them. They name messages this subscription holds,
    // which the claim cannot take.
    let claiming = async {
        if state.sub.ordered {
            // The acks release keys the claim should see free: sent first.
            state.send_acks(&acks).await;
            return state
                .sub
                .backend
                .claim_ordered(state.group(), asked, state.sub.visibility_timeout)
                .await;
        }
        let (_, claimed) = tokio::join!(
            state.send_acks(&acks),
            state
                .sub
                .backend
                .claim(state.group(), asked, state.sub.visibility_timeout)
        );
        claimed
    };
    tokio::pin!(claiming);
    let answered = tokio::select! {
        biased;
        result = &mut claiming => Some(result),
        _ = c.stop.wait_for(|s| *s) => None,
    };
    let mut stopping = false;
    let result = match answered {
        Some(result) => result,
        None => {
            // Closed while a claim is in flight (a slow or unreachable backend): it gets
            // the shutdown budget, no more. What it claims in time is handled and drained
            // like the rest; if it never answers, its claims (if any) come back after the
            // visibility timeout.
            stopping = true;
            match tokio::time::timeout_at(after(state.sub.shutdown_timeout), claiming).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!(
                        stream = %state.sub.stream, group = %state.sub.group,
                        "a claim was still in flight at the shutdown deadline; abandoned"
                    );
                    return Round::End;
                }
            }
        }
    };
    let mut claimed = match result {
        Ok(claimed) => {
            c.failures = 0;
            claimed
        }
        Err(crate::Error::Closed) => return Round::End,
        Err(e) => {
            unreserve(state, asked);
            c.failures += 1;
            let backoff = backoff(c.failures, state.sub.poll_interval);
            tracing::warn!(
                stream = %state.sub.stream, group = %state.sub.group, error = %e,
                retry_in = ?backoff, "claiming messages failed; retrying"
            );
            tokio::select! {
                biased;
                _ = c.stop.wait_for(|s| *s) => return Round::End,
                _ = tokio::time::sleep(backoff) => {}
            }
            return Round::Again;
        }
    };
    c.idle = claimed.len() < asked;
    // Slots reserved for nothing (a short claim) go back.
    unreserve(state, asked - claimed.len().min(asked));
    let kept = if c.idle || stopping {
        // Short: the claimer goes back to waiting for work, so every message goes to
        // another worker. Stopping: the claim's messages are drained by the workers.
        None
    } else {
        claimed.pop()
    };
    hand_over(state, claimed);
    if stopping {
        return Round::End;
    }
    match kept {
        Some(job) => Round::Keep(job),
        None => Round::Again,
    }
}

/// Gives back slots reserved for a claim that did not fill them.
fn unreserve(state: &SubscriptionState, count: usize) {
    if count > 0 {
        let mut pool = state.pool();
        pool.busy = pool.busy.saturating_sub(count);
    }
}

/// Queues claimed messages for the workers: wakes idle workers for them, and starts a
/// worker for each message beyond those (see [`Pool`]).
fn hand_over(state: &Arc<SubscriptionState>, claimed: Vec<Claimed>) {
    if claimed.is_empty() {
        return;
    }
    let wake = {
        let mut pool = state.pool();
        if pool.aborting {
            // Past the shutdown deadline: released with the aborted ones.
            state
                .aborted
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(claimed.iter().map(Claimed::claim));
            return;
        }
        pool.queue.extend(claimed);
        let (wake, start) = pool.staff_queue();
        if start > 0 {
            while pool.tasks.try_join_next().is_some() {}
            for _ in 0..start {
                pool.tasks.spawn(worker(state.clone(), true));
            }
        }
        wake
    };
    for _ in 0..wake {
        state.work.notify_one();
    }
}

/// Exponential backoff for backend failures: 50 ms doubling up to the poll interval
/// (at least 1 s).
pub(super) fn backoff(failures: u32, poll_interval: Duration) -> Duration {
    let cap = poll_interval.max(Duration::from_secs(1));
    Duration::from_millis(50)
        .saturating_mul(1 << failures.min(10))
        .min(cap)
}

async fn drain(state: &Arc<SubscriptionState>, deadline: Instant) -> CloseReport {
    {
        let mut pool = state.pool();
        pool.closing = true;
        if pool.workers == 0 {
            state.ended.notify_one();
        }
    }
    state.work.notify_waiters();
    // Handlers that finish during the drain are acked as they finish (S15).
    let all_done = async {
        loop {
            let acks = state.take_acks_or_ask();
            if !acks.is_empty() {
                state.send_acks(&acks).await;
                continue;
            }
            if state.pool().workers == 0 {
                break;
            }
            tokio::select! {
                biased;
                _ = state.claimer_wake.notified() => {}
                _ = state.ended.notified() => {}
            }
        }
    };
    let finished = tokio::time::timeout_at(deadline, all_done).await.is_ok();
    let mut tasks = {
        let mut pool = state.pool();
        pool.aborting = true;
        std::mem::take(&mut pool.tasks)
    };
    if !finished {
        tasks.abort_all();
    }
    while tasks.join_next().await.is_some() {}
    let acks = std::mem::take(&mut state.pool().acks);
    state.send_acks(&acks).await;
    let mut aborted =
        std::mem::take(&mut *state.aborted.lock().unwrap_or_else(PoisonError::into_inner));
    // Messages claimed but not started when the workers were aborted.
    aborted.extend(state.pool().queue.drain(..).map(|claimed| claimed.claim()));
    state.release_aborted(&aborted).await;
    CloseReport {
        aborted: aborted.len(),
    }
}
