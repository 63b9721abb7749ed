//! The engine's close and panic paths, on the memory backend (and behind an interceptor
//! that makes its claims hang or answer late, as an unreachable or slow server would).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stream_runtime::backend::memory::MemoryBackend;
use stream_runtime::backend::{Backend, BoxFuture, Claimed, GroupRef, SharedBackend};
use stream_runtime::conformance::intercept::{intercept, Intercept};
use stream_runtime::conformance::{wait_for, Recorder};
use stream_runtime::{
    Message, PublishOptions, Result, RetryDelay, Service, ServiceConfig, SubscribeOptions,
};

/// Claims that never answer once `hang` is set, and that answer 100 ms late (a slow round
/// trip) while `slow` is set.
#[derive(Default)]
struct HangingClaims {
    hang: AtomicBool,
    hanging: AtomicUsize,
    slow: AtomicBool,
}

impl Intercept for HangingClaims {
    fn claim<'a>(
        &'a self,
        inner: &'a dyn Backend,
        group: GroupRef<'a>,
        max: usize,
        visibility: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claimed>>> {
        if self.hang.load(Ordering::SeqCst) {
            self.hanging.fetch_add(1, Ordering::SeqCst);
            return Box::pin(std::future::pending());
        }
        if self.slow.load(Ordering::SeqCst) {
            return Box::pin(async move {
                let claimed = inner.claim(group, max, visibility).await;
                // Time is the subject: a round trip this slow.
                tokio::time::sleep(Duration::from_millis(100)).await;
                claimed
            });
        }
        inner.claim(group, max, visibility)
    }
}

/// A memory backend behind [`HangingClaims`].
fn hanging_backend() -> (SharedBackend, Arc<HangingClaims>) {
    let hooks = Arc::new(HangingClaims::default());
    (
        intercept(Arc::new(MemoryBackend::new()), hooks.clone()),
        hooks,
    )
}

fn fast() -> SubscribeOptions {
    SubscribeOptions::new()
        .poll_interval(Duration::from_millis(10))
        .visibility_timeout(Duration::from_secs(30))
        .shutdown_timeout(Duration::from_millis(300))
        .retry_delay(RetryDelay::Fixed(Duration::from_millis(10)))
}

/// S15: close while a claim is in flight on a backend that stopped answering returns
/// within the shutdown timeout instead of waiting for the claim forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_while_a_claim_hangs_keeps_the_shutdown_timeout() {
    let (backend, hooks) = hanging_backend();
    let service = Service::from_shared(backend, ServiceConfig::default());
    let consumer = service
        .subscribe("s", "g", Recorder::new().handler(), fast())
        .await
        .expect("subscribe");
    hooks.hang.store(true, Ordering::SeqCst);
    wait_for("a hanging claim", || {
        hooks.hanging.load(Ordering::SeqCst) > 0
    })
    .await;
    let started = Instant::now();
    let report = tokio::time::timeout(Duration::from_secs(5), consumer.close())
        .await
        .expect("close returned within the shutdown timeout");
    assert_eq!(report.aborted, 0);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(5), service.close())
        .await
        .expect("service close returned")
        .expect("service close");
}

/// S9, S14: a retry that falls due while a claim is in flight is claimed when that
/// claim returns, not at the next poll (here: an hour away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_due_during_a_slow_claim_is_not_left_to_the_poll() {
    let (backend, hooks) = hanging_backend();
    hooks.slow.store(true, Ordering::SeqCst);
    let service = Service::from_shared(backend, ServiceConfig::default());
    let rec = Recorder::new();
    let handler = rec.then(move |m: Message| {
        let first = m.attempt == 1;
        async move {
            if first {
                Err(stream_runtime::HandlerError::retry("once"))
            } else {
                Ok(())
            }
        }
    });
    let options = fast()
        .poll_interval(Duration::from_secs(3600))
        .retry_delay(RetryDelay::Fixed(Duration::from_millis(30)));
    let consumer = service
        .subscribe("s", "g", handler, options)
        .await
        .expect("subscribe");
    service
        .publish("s", "m", PublishOptions::new())
        .await
        .expect("publish");
    rec.wait_len(2, "the retry").await;
    consumer.close().await;
    service.close().await.expect("close");
}

/// S13, bad input: an absurd concurrency (a typo in a config) neither panics the
/// dispatcher (tokio's semaphore limit) nor makes a claim allocate a permit per worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_concurrency_works() {
    let service = Service::memory();
    let rec = Recorder::new();
    let consumer = service
        .subscribe("s", "g", rec.handler(), fast().concurrency(usize::MAX))
        .await
        .expect("subscribe");
    service
        .publish_batch("s", ["a", "b", "c"], PublishOptions::new())
        .await
        .expect("publish");
    rec.wait_len(3, "three messages").await;
    assert_eq!(consumer.close().await.aborted, 0);
    service.close().await.expect("close");
}

/// S15: a close whose future is dropped half-way (a timeout around it) does not make the
/// next close return at once with an empty report while handlers still run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_survives_a_cancelled_close() {
    let service = Service::memory();
    let started = Arc::new(AtomicBool::new(false));
    let handler = {
        let started = started.clone();
        move |_m: Message| {
            started.store(true, Ordering::SeqCst);
            std::future::pending::<std::result::Result<(), stream_runtime::HandlerError>>()
        }
    };
    let consumer = service
        .subscribe("s", "g", handler, fast())
        .await
        .expect("subscribe");
    service
        .publish("s", "m", PublishOptions::new())
        .await
        .expect("publish");
    wait_for("the handler", || started.load(Ordering::SeqCst)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(20), consumer.close())
            .await
            .is_err(),
        "close waits for the drain"
    );
    let report = consumer.close().await;
    assert_eq!(report.aborted, 1, "the second close waited for the drain");
    service.close().await.expect("close");
}

/// S11: a handler that panics before returning its future (outside its `async` block)
/// counts as an error: retried after the retry delay, not after the visibility timeout,
/// and not reported as aborted at close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_before_the_future_counts_as_an_error() {
    let service = Service::memory();
    let rec = Recorder::new();
    let handler = rec.then(move |m: Message| {
        if m.attempt == 1 {
            panic!("boom before the future");
        }
        std::future::ready(Ok(()))
    });
    let consumer = service
        .subscribe("s", "g", handler, fast())
        .await
        .expect("subscribe");
    service
        .publish("s", "m", PublishOptions::new())
        .await
        .expect("publish");
    rec.wait_len(2, "the retry after the panic").await;
    assert_eq!(rec.messages()[1].attempt, 2);
    assert_eq!(consumer.close().await.aborted, 0);
    service.close().await.expect("close");
}
