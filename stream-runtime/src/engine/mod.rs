//! The one delivery engine: workers, deadlines, attempts, the retry/dead-letter decision,
//! panics, shutdown and drain (S6-S16), on top of any [`Backend`](crate::Backend).
//!
//! Each subscription runs one dispatcher task. It claims only as many messages as it has
//! free workers, so a claim's visibility deadline starts when its handler starts (S6), and
//! runs each handler in its own task. Acks are batched by a settler task; retries and
//! dead-letter moves are issued by the handler's task.

pub(crate) mod catch_unwind;
pub mod telemetry;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
// tokio's clock, not std's: under a paused test clock (`start_paused`) retry delays,
// visibility deadlines and poll intervals pass without costing wall time.
use tokio::time::Instant;

use crate::backend::{BoxFuture, Claim, Claimed, GroupRef, SharedBackend, Wakeup};
use crate::error::HandlerError;
use crate::message::{Bytes, Headers, Message, NewMessage};
use crate::options::{MaxRetries, RetryDelay};
use crate::time::after;

use catch_unwind::CatchUnwind;
use telemetry::{Outcome, SubscriptionMetrics};
use tracing::Instrument;

/// A type-erased handler as the engine runs it.
pub type Handler =
    Arc<dyn Fn(Message) -> BoxFuture<'static, Result<(), HandlerError>> + Send + Sync + 'static>;

/// Wraps an async closure as a [`Handler`].
pub fn handler_fn<F, Fut>(f: F) -> Handler
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    Arc::new(move |message| Box::pin(f(message)))
}

/// Headers a dead-lettered message gets (S12).
pub mod dead_letter_headers {
    /// The full name of the stream the message came from.
    pub const STREAM: &str = "x-dead-letter-stream";
    /// Its id there.
    pub const ID: &str = "x-dead-letter-id";
    /// The group that gave up on it.
    pub const GROUP: &str = "x-dead-letter-group";
    /// How many attempts it had.
    pub const ATTEMPTS: &str = "x-dead-letter-attempts";
    /// Why: the last error (at most 1 KiB).
    pub const REASON: &str = "x-dead-letter-reason";
}

/// The longest dead-letter reason kept, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;

/// What `Consumer::close` reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CloseReport {
    /// Handlers still running at the shutdown deadline: aborted, and their messages released
    /// for redelivery.
    pub aborted: usize,
}

/// Everything a subscription needs, resolved.
#[derive(Clone)]
pub(crate) struct Subscription {
    pub backend: SharedBackend,
    pub stream: String,
    pub group: String,
    pub dead_letter: String,
    pub handler: Handler,
    pub concurrency: usize,
    pub max_retries: MaxRetries,
    pub visibility_timeout: Duration,
    pub poll_interval: Duration,
    pub shutdown_timeout: Duration,
    pub retry_delay: RetryDelay,
    /// The consumer's name in spans.
    pub name: String,
}

struct Worker {
    sub: Subscription,
    consumer: String,
    metrics: SubscriptionMetrics,
    acks: mpsc::UnboundedSender<Claim>,
    /// Claims of handlers aborted at shutdown, to release.
    aborted: Arc<Mutex<Vec<Claim>>>,
    /// When retried messages of this subscription become claimable, so an idle dispatcher
    /// wakes for them instead of waiting for the next poll.
    retries_due: Mutex<BinaryHeap<Reverse<Instant>>>,
    retry_scheduled: Notify,
}

/// The most messages one claim asks for.
const MAX_CLAIM: usize = 512;

/// A claim slower than this was a round trip to a server or a file lock.
const SLOW_CLAIM: Duration = Duration::from_micros(50);

/// Slack added to a retry's due time, for backends whose clock (the database's) runs a
/// little behind ours.
const RETRY_SLACK: Duration = Duration::from_millis(5);

impl Worker {
    fn schedule_retry_wake(&self, delay: Duration) {
        self.retries_due
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Reverse(after(delay.saturating_add(RETRY_SLACK))));
        self.retry_scheduled.notify_one();
    }

    /// The earliest retry due time, dropping those the last claim (started at
    /// `claimed_at`) already covered. One that fell due while that claim was in flight is
    /// kept: it is in the past, so the wait ends at once and the next claim takes it.
    fn next_retry_due(&self, claimed_at: Instant) -> Option<Instant> {
        let mut due = self
            .retries_due
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while due.peek().is_some_and(|Reverse(at)| *at <= claimed_at) {
            due.pop();
        }
        due.peek().map(|Reverse(at)| *at)
    }

    /// Waits until new messages may be claimable: a wake-up from the backend, a retry
    /// falling due, or the poll interval. Returns false when the consumer is stopping.
    /// `claimed_at` is when the last claim started.
    async fn wait_for_work(
        &self,
        wakeup: &mut Wakeup,
        stop: &mut watch::Receiver<bool>,
        claimed_at: Instant,
    ) -> bool {
        let poll_at = after(self.sub.poll_interval);
        loop {
            let due = self
                .next_retry_due(claimed_at)
                .filter(|at| *at < poll_at)
                .unwrap_or(poll_at);
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return false,
                _ = wakeup.changed() => return true,
                _ = self.retry_scheduled.notified() => continue,
                _ = tokio::time::sleep_until(due) => return true,
            }
        }
    }

    fn group(&self) -> GroupRef<'_> {
        GroupRef {
            stream: &self.sub.stream,
            group: &self.sub.group,
            consumer: &self.consumer,
        }
    }
}

/// A running subscription: stop it with [`Running::close`].
pub(crate) struct Running {
    stop: watch::Sender<bool>,
    dispatcher: tokio::sync::Mutex<Option<tokio::task::JoinHandle<CloseReport>>>,
    report: Mutex<Option<CloseReport>>,
}

impl Running {
    /// Whether the dispatcher still claims: not closed, not ended.
    pub fn is_running(&self) -> bool {
        if *self.stop.borrow() {
            return false;
        }
        // Held only by a close, which is checked above.
        match self.dispatcher.try_lock() {
            Ok(dispatcher) => dispatcher.as_ref().is_some_and(|d| !d.is_finished()),
            Err(_) => false,
        }
    }

    /// Stops claiming, drains within the shutdown timeout, aborts and releases the rest.
    /// Idempotent: later calls return the first report.
    pub async fn close(&self) -> CloseReport {
        self.stop.send_replace(true);
        let mut dispatcher = self.dispatcher.lock().await;
        // The handle is taken only once the dispatcher finished: a close whose future is
        // dropped half-way (a timeout around it) leaves the next close something to wait on.
        if let Some(handle) = dispatcher.as_mut() {
            let report = match handle.await {
                Ok(report) => report,
                Err(e) => {
                    tracing::error!(error = %e, "consumer dispatcher failed");
                    CloseReport::default()
                }
            };
            *dispatcher = None;
            *self.report.lock().unwrap_or_else(PoisonError::into_inner) = Some(report);
        }
        self.report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .unwrap_or_default()
    }
}

static CONSUMER_SEQ: AtomicU64 = AtomicU64::new(0);

fn consumer_name() -> String {
    let seq = CONSUMER_SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{}-{}-{seq}", std::process::id(), process_nonce())
}

/// A random number fixed for the life of the process, so consumer names of two processes
/// that got the same pid (containers) still differ.
fn process_nonce() -> u64 {
    static NONCE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *NONCE.get_or_init(random_u64)
}

pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// Starts the dispatcher of a subscription whose group already exists.
pub(crate) fn start(sub: Subscription) -> Running {
    let (stop, stop_rx) = watch::channel(false);
    let dispatcher = tokio::spawn(dispatch(sub, stop_rx));
    Running {
        stop,
        dispatcher: tokio::sync::Mutex::new(Some(dispatcher)),
        report: Mutex::new(None),
    }
}

async fn dispatch(sub: Subscription, mut stop: watch::Receiver<bool>) -> CloseReport {
    // Beyond MAX_PERMITS the semaphore would panic, killing the subscription silently.
    let concurrency = sub.concurrency.clamp(1, Semaphore::MAX_PERMITS);
    let workers = Arc::new(Semaphore::new(concurrency));
    let (acks, ack_rx) = mpsc::unbounded_channel();
    let worker = Arc::new(Worker {
        consumer: consumer_name(),
        metrics: SubscriptionMetrics::new(&sub.stream, &sub.group),
        acks,
        aborted: Arc::new(Mutex::new(Vec::new())),
        retries_due: Mutex::new(BinaryHeap::new()),
        retry_scheduled: Notify::new(),
        sub,
    });
    // The settler must not hold `worker`: it owns the ack sender the settler waits on.
    let settler = tokio::spawn(settle_acks(
        worker.sub.clone(),
        worker.consumer.clone(),
        ack_rx,
    ));
    let mut wakeup = worker.sub.backend.wakeup(&worker.sub.stream);
    let mut tasks = JoinSet::new();
    let mut idle = false;
    let mut failures = 0u32;
    let mut claimed_at = Instant::now();
    // Set when close was asked for while a claim was in flight: the drain ends there.
    let mut drain_deadline: Option<Instant> = None;

    loop {
        if idle
            && !worker
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
            worker
                .sub
                .backend
                .claim(worker.group(), permits.len(), worker.sub.visibility_timeout);
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
                let deadline = after(worker.sub.shutdown_timeout);
                drain_deadline = Some(deadline);
                match tokio::time::timeout_at(deadline, claiming).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!(
                            stream = %worker.sub.stream, group = %worker.sub.group,
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
                let backoff = backoff(failures, worker.sub.poll_interval);
                tracing::warn!(
                    stream = %worker.sub.stream, group = %worker.sub.group, error = %e,
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
            tasks.spawn(run_one(worker.clone(), claimed, permit));
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

    let deadline = drain_deadline.unwrap_or_else(|| after(worker.sub.shutdown_timeout));
    let report = drain(&worker, &mut tasks, deadline).await;
    drop(worker);
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

async fn drain(worker: &Arc<Worker>, tasks: &mut JoinSet<()>, deadline: Instant) -> CloseReport {
    let all_done = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout_at(deadline, all_done).await.is_err() {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    let aborted = std::mem::take(
        &mut *worker
            .aborted
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    if !aborted.is_empty() {
        tracing::warn!(
            stream = %worker.sub.stream, group = %worker.sub.group, count = aborted.len(),
            "handlers still running at the shutdown deadline were aborted; releasing their messages"
        );
        if let Err(e) = worker.sub.backend.release(worker.group(), &aborted).await {
            tracing::warn!(error = %e, "releasing aborted messages failed; they come back after the visibility timeout");
        }
    }
    CloseReport {
        aborted: aborted.len(),
    }
}

/// Acks handled messages in batches: whatever is queued when the previous batch finishes.
async fn settle_acks(sub: Subscription, consumer: String, mut rx: mpsc::UnboundedReceiver<Claim>) {
    const MAX_BATCH: usize = 512;
    let group = GroupRef {
        stream: &sub.stream,
        group: &sub.group,
        consumer: &consumer,
    };
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        if let Err(e) = sub.backend.ack(group, &batch).await {
            tracing::warn!(
                stream = %sub.stream, group = %sub.group, error = %e,
                count = batch.len(), "acknowledging failed; these messages will be redelivered"
            );
        }
        batch.clear();
    }
}

/// Puts a claim on the release list if its task is dropped (aborted) before settling it.
struct InFlight<'a> {
    claim: Claim,
    settling: bool,
    worker: &'a Worker,
}

impl InFlight<'_> {
    /// Marks the claim as being settled by this task and returns it.
    fn settle(&mut self) -> &Claim {
        self.settling = true;
        &self.claim
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.settling {
            self.worker
                .aborted
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(self.claim.clone());
        }
    }
}

async fn run_one(worker: Arc<Worker>, claimed: Claimed, permit: OwnedSemaphorePermit) {
    let mut guard = InFlight {
        claim: claimed.claim(),
        settling: false,
        worker: &worker,
    };
    let message = claimed.message;
    let attempt = message.attempt;
    let max_attempts = worker.sub.max_retries.max_attempts();

    // S9: a claim that expired on its last attempt is dead-lettered on reclaim.
    if max_attempts.is_some_and(|max| attempt > max) {
        let reason = format!(
            "the handler did not finish within the visibility timeout ({:?}) on its last attempt",
            worker.sub.visibility_timeout
        );
        let original = Original {
            payload: message.payload,
            headers: message.headers,
        };
        let claim = guard.settle();
        worker.metrics.outcome(Outcome::DeadLetter);
        dead_letter(&worker, claim, original, attempt - 1, &reason).await;
        return;
    }

    // Kept for a dead letter; cheap: the payload is shared, empty headers do not allocate.
    let original = Original {
        payload: message.payload.clone(),
        headers: message.headers.clone(),
    };
    let id = message.id.clone();
    let span = tracing::info_span!(
        "stream.handle",
        stream = %worker.sub.stream,
        group = %worker.sub.group,
        consumer = %worker.sub.name,
        message_id = %id,
        attempt,
        outcome = tracing::field::Empty,
        reason = tracing::field::Empty,
        duration_ms = tracing::field::Empty,
    );
    #[cfg(feature = "opentelemetry")]
    telemetry::trace_context::extract(&span, &message.headers);
    let started_at = worker.metrics.started(message.created_at);

    // A handler still running at its visibility deadline has lost its claim: another worker
    // may take the message over, so its slot is freed for that; the handler runs on (its
    // settling is fenced), and a stuck handler cannot starve the subscription.
    // A handler that panics before returning its future (work done outside its `async`
    // block) fails like one that panics inside it (S11), instead of killing this task.
    let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        span.in_scope(|| (worker.sub.handler)(message))
    }));
    let future = started.unwrap_or_else(|panic| {
        let error = HandlerError::retry(format!(
            "handler panicked: {}",
            catch_unwind::panic_message(panic.as_ref())
        ));
        Box::pin(std::future::ready(Err(error)))
    });
    let mut handler = CatchUnwind(future).instrument(span.clone());
    let mut permit = Some(permit);
    let outcome = tokio::select! {
        biased;
        outcome = &mut handler => outcome,
        _ = tokio::time::sleep(worker.sub.visibility_timeout) => {
            tracing::warn!(
                stream = %worker.sub.stream, group = %worker.sub.group, %id, attempt,
                timeout = ?worker.sub.visibility_timeout,
                "handler passed its visibility timeout; the message may be redelivered"
            );
            drop(permit.take());
            handler.await
        }
    };
    let took = worker.metrics.finished(started_at);
    let error = match outcome {
        Ok(Ok(())) => {
            worker.metrics.outcome(Outcome::Ok);
            telemetry::record(&span, Outcome::Ok, None, took);
            let claim = guard.settle().clone();
            // The settler outlives every handler task, so this send only fails after a
            // panic in the settler; the message is then redelivered.
            let _ = worker.acks.send(claim);
            return;
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
    worker.metrics.outcome(outcome);
    telemetry::record(&span, outcome, Some(error.message()), took);
    span.in_scope(|| {
        tracing::warn!(
            stream = %worker.sub.stream, group = %worker.sub.group, %id,
            attempt, permanent = error.is_permanent(), error = %error, "handler failed"
        );
    });
    if outcome == Outcome::DeadLetter {
        let claim = guard.settle();
        dead_letter(&worker, claim, original, attempt, error.message()).await;
    } else {
        let delay = retry_delay(&worker.sub, attempt);
        let claim = guard.settle();
        match worker.sub.backend.retry(worker.group(), claim, delay).await {
            Ok(true) => worker.schedule_retry_wake(delay),
            Ok(false) => {}
            Err(e) => tracing::warn!(
                stream = %worker.sub.stream, group = %worker.sub.group, id = %claim.id, error = %e,
                "scheduling a retry failed; the message comes back after the visibility timeout"
            ),
        }
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

/// What a dead letter keeps of the original message.
struct Original {
    payload: Bytes,
    headers: Headers,
}

async fn dead_letter(
    worker: &Worker,
    claim: &Claim,
    original: Original,
    attempts: u32,
    reason: &str,
) {
    use dead_letter_headers as h;
    let mut headers = original.headers;
    headers.insert(h::STREAM.to_owned(), worker.sub.stream.clone());
    headers.insert(h::ID.to_owned(), claim.id.to_string());
    headers.insert(h::GROUP.to_owned(), worker.sub.group.clone());
    headers.insert(h::ATTEMPTS.to_owned(), attempts.to_string());
    headers.insert(
        h::REASON.to_owned(),
        truncate(reason, MAX_REASON_BYTES).to_owned(),
    );
    let dead = NewMessage {
        payload: original.payload.to_vec(),
        headers,
    };
    match worker
        .sub
        .backend
        .dead_letter(worker.group(), claim, &worker.sub.dead_letter, dead)
        .await
    {
        Ok(true) => tracing::warn!(
            stream = %worker.sub.stream, group = %worker.sub.group, id = %claim.id, attempts,
            dead_letter = %worker.sub.dead_letter, "message moved to the dead-letter stream"
        ),
        Ok(false) => tracing::debug!(
            id = %claim.id, "claim was taken over before the dead-letter move; left to its new owner"
        ),
        Err(e) => tracing::warn!(
            stream = %worker.sub.stream, group = %worker.sub.group, id = %claim.id, error = %e,
            "moving to the dead-letter stream failed; the message comes back after the visibility timeout"
        ),
    }
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
            };
            let d = retry_delay(&sub, attempt);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} vs {full:?}"
            );
        }
    }
}
