//! The one delivery engine: workers, deadlines, attempts, the retry/dead-letter decision,
//! panics, shutdown and drain (S6-S16), on top of any [`Backend`](crate::Backend).
//!
//! A subscription claims only as many messages as it has free workers, so a claim's
//! visibility deadline starts when its handler starts (S6), and
//! runs them on long-lived worker tasks (one per concurrent handler); a worker with nothing
//! to do claims for itself and the other idle ones (see `dispatch`). Acks are queued and sent
//! in batches by whichever worker claims next, or at once when the claimer waits; retries and
//! dead-letter moves are issued by the worker.

pub(crate) mod batch;
pub(crate) mod catch_unwind;
pub(crate) mod delay;
mod deliver;
mod dispatch;
pub(crate) mod lease;
mod settle;
pub mod telemetry;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{watch, Notify};
// tokio's clock, not std's: under a paused test clock (`start_paused`) retry delays,
// visibility deadlines and poll intervals pass without costing wall time.
use tokio::time::Instant;

use crate::backend::{BoxFuture, Claim, GroupRef, SharedBackend, Wakeup};
use crate::error::HandlerError;
use crate::message::Message;
use crate::options::{MaxRetries, RetryDelay};
use crate::time::after;

use telemetry::SubscriptionMetrics;

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
    /// The handler acks inside its own transaction: a success sends no ack.
    pub transactional: bool,
    /// The level of the `stream.handle` spans.
    pub span_level: crate::SpanLevel,
    /// Extend the claims of running handlers (see `lease`).
    pub heartbeat: bool,
    /// The group is ordered by key: claims, acks and dead-letter moves go through the
    /// backend's `_ordered` calls.
    pub ordered: bool,
    /// Set for a batch handler: `handler` is then not called.
    pub batch: Option<batch::BatchSpec>,
}

/// What a subscription's coordinator and workers share.
struct SubscriptionState {
    sub: Subscription,
    consumer: String,
    metrics: SubscriptionMetrics,
    /// Tells the claimer, when it waits, that acks were queued or a worker was freed.
    claimer_wake: Notify,
    /// Claims of handlers aborted at shutdown, to release.
    aborted: Arc<Mutex<Vec<Claim>>>,
    /// When retried messages of this subscription become claimable, so an idle dispatcher
    /// wakes for them instead of waiting for the next poll.
    retries_due: Mutex<BinaryHeap<Reverse<Instant>>>,
    retry_scheduled: Notify,
    /// The workers and the claimed messages queued for them.
    pool: Mutex<dispatch::Pool>,
    /// Tells an idle worker that a message was queued (or all of them that the pool closes).
    work: Notify,
    /// Told when the last worker ended, or the claimer found the backend closed.
    ended: Notify,
    /// The concurrency in force (at least 1).
    concurrency: usize,
    /// The claims this subscription extends (heartbeat, or a handler's own extension).
    leases: Arc<lease::Leases>,
}

/// Slack added to a retry's due time, for backends whose clock (the database's) runs a
/// little behind ours.
const RETRY_SLACK: Duration = Duration::from_millis(5);

/// The most claims one ack call carries.
const MAX_ACK_BATCH: usize = 512;

impl SubscriptionState {
    /// Takes the queued acks; when there are none, asks to be told of the next one
    /// (through `claimer_wake`).
    fn take_acks_or_ask(&self) -> Vec<Claim> {
        let mut pool = self.pool();
        let acks = std::mem::take(&mut pool.acks);
        if acks.is_empty() {
            pool.claimer_waiting = true;
        }
        acks
    }

    /// Sends acks, in batches of at most [`MAX_ACK_BATCH`].
    async fn send_acks(&self, acks: &[Claim]) {
        for chunk in acks.chunks(MAX_ACK_BATCH) {
            let acked = if self.sub.ordered {
                self.sub.backend.ack_ordered(self.group(), chunk).await
            } else {
                self.sub.backend.ack(self.group(), chunk).await
            };
            if let Err(e) = acked {
                tracing::warn!(
                    stream = %self.sub.stream, group = %self.sub.group, error = %e,
                    count = chunk.len(), "acknowledging failed; these messages will be redelivered"
                );
            }
        }
    }

    /// Releases the claims of handlers aborted at the shutdown deadline, for redelivery.
    async fn release_aborted(&self, aborted: &[Claim]) {
        if aborted.is_empty() {
            return;
        }
        tracing::warn!(
            stream = %self.sub.stream, group = %self.sub.group, count = aborted.len(),
            "handlers still running at the shutdown deadline were aborted; releasing their messages"
        );
        if let Err(e) = self.sub.backend.release(self.group(), aborted).await {
            tracing::warn!(error = %e, "releasing aborted messages failed; they come back after the visibility timeout");
        }
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, dispatch::Pool> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn schedule_retry_wake(&self, delay: Duration) {
        self.schedule_wake(delay.saturating_add(RETRY_SLACK));
    }

    /// Wakes the claimer after `delay` (an idle one, instead of at its next poll).
    fn schedule_wake(&self, delay: Duration) {
        self.retries_due
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Reverse(after(delay)));
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
            // Acks of handlers that finish meanwhile are sent as they come.
            let acks = self.take_acks_or_ask();
            if !acks.is_empty() {
                self.send_acks(&acks).await;
                if self.sub.ordered {
                    // An ack releases its key: the next message of that key may be
                    // claimable now.
                    return true;
                }
                continue;
            }
            let due = self
                .next_retry_due(claimed_at)
                .filter(|at| *at < poll_at)
                .unwrap_or(poll_at);
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => return false,
                // A freed slot of an ordered group may have released a key (an ack sent
                // inside a transaction, a dead-letter move).
                _ = self.claimer_wake.notified() => if self.sub.ordered { return true },
                _ = wakeup.changed() => return true,
                _ = self.retry_scheduled.notified() => {}
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
    /// A subscription with no dispatcher: it claims nothing and closes at once.
    pub fn detached() -> Self {
        Running {
            stop: watch::channel(false).0,
            dispatcher: tokio::sync::Mutex::new(None),
            report: Mutex::new(None),
        }
    }

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
    let dispatcher = match sub.batch.clone() {
        None => tokio::spawn(dispatch::dispatch(sub, stop_rx)),
        Some(spec) => tokio::spawn(batch::dispatch(sub, spec, stop_rx)),
    };
    Running {
        stop,
        dispatcher: tokio::sync::Mutex::new(Some(dispatcher)),
        report: Mutex::new(None),
    }
}
