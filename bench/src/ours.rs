//! The framework's side of each workload, through the public `Service` API only, so every
//! backend runs the very same code.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use stream_runtime::{NewMessage, Order, PublishOptions, Service, StartPosition, SubscribeOptions};
use tokio::sync::Notify;

use crate::{paced, BoxError};

/// The header carrying a message's scheduled send time (ns since the run's epoch).
pub const SCHEDULED_HEADER: &str = "x-bench-scheduled-ns";

/// The poll interval of the consume workloads: long, so that a drained backlog does not
/// poll. The latency workload takes its own (`--poll-interval`, 10 s by default, so that
/// push wake-ups are what it measures).
pub const POLL_INTERVAL: Duration = Duration::from_secs(10);

/// How long one consume or latency run may take before it counts as failed.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// `n` publishes of one message each, one after the other.
pub async fn publish_one(
    service: &Service,
    stream: &str,
    n: usize,
    payload: &[u8],
) -> Result<Duration, BoxError> {
    let start = Instant::now();
    for _ in 0..n {
        service
            .publish(stream, payload.to_vec(), PublishOptions::new())
            .await?;
    }
    Ok(start.elapsed())
}

/// `n` messages published with `Service::publish_batch`, `batch` at a time.
pub async fn publish_batch(
    service: &Service,
    stream: &str,
    n: usize,
    batch: usize,
    payload: &[u8],
) -> Result<Duration, BoxError> {
    let start = Instant::now();
    let mut left = n;
    while left > 0 {
        let k = left.min(batch);
        left -= k;
        service
            .publish_batch(
                stream,
                (0..k).map(|_| payload.to_vec()),
                PublishOptions::new(),
            )
            .await?;
    }
    Ok(start.elapsed())
}

/// Fills `stream` with `n` messages over `keys` ordering keys, round robin (not timed).
pub async fn prefill_keyed(
    service: &Service,
    stream: &str,
    n: usize,
    keys: usize,
    payload: &[u8],
) -> Result<(), BoxError> {
    for start in (0..n).step_by(500) {
        let batch = (start..(start + 500).min(n))
            .map(|i| NewMessage::new(payload.to_vec()).key(format!("k{}", i % keys)));
        service
            .publish_batch(stream, batch, PublishOptions::new())
            .await?;
    }
    Ok(())
}

/// Fills `stream` with `n` messages (not timed).
pub async fn prefill(
    service: &Service,
    stream: &str,
    n: usize,
    payload: &[u8],
) -> Result<(), BoxError> {
    publish_batch(service, stream, n, 500, payload).await?;
    Ok(())
}

/// Subscribes a new group at `Earliest` with a no-op handler and `concurrency` workers to a
/// stream holding `n` messages; returns how many were handled and the time from subscribing
/// until all `n` were, or until `cap` passed, whichever came first.
pub async fn consume(
    service: &Service,
    stream: &str,
    group: &str,
    n: usize,
    concurrency: usize,
    cap: Duration,
) -> Result<(usize, Duration), BoxError> {
    consume_with(
        service,
        stream,
        group,
        (n, concurrency),
        cap,
        false,
        Order::None,
    )
    .await
}

/// [`consume`] of `(n, concurrency)`, with the lease heartbeat on or off, by a group ordered
/// by `order`.
pub async fn consume_with(
    service: &Service,
    stream: &str,
    group: &str,
    (n, concurrency): (usize, usize),
    cap: Duration,
    heartbeat: bool,
    order: Order,
) -> Result<(usize, Duration), BoxError> {
    let handled = Arc::new(AtomicUsize::new(0));
    let all = Arc::new(Notify::new());
    let (h, a) = (handled.clone(), all.clone());
    let start = Instant::now();
    let consumer = service
        .subscribe(
            stream,
            group,
            move |_message| {
                if h.fetch_add(1, Ordering::Relaxed) + 1 == n {
                    a.notify_one();
                }
                async { Ok(()) }
            },
            SubscribeOptions::new()
                .start(StartPosition::Earliest)
                .concurrency(concurrency)
                .poll_interval(POLL_INTERVAL)
                .heartbeat(heartbeat)
                .ordered(order),
        )
        .await?;
    let finished = tokio::time::timeout(cap, all.notified()).await;
    let elapsed = start.elapsed();
    let count = handled.load(Ordering::Relaxed).min(n);
    consumer.close().await;
    if finished.is_err() && count == 0 {
        return Err(format!("no message handled within {cap:?}").into());
    }
    Ok((count, elapsed))
}

/// [`consume`] with a no-op batch handler taking up to `batch_size` messages per call
/// (`concurrency` batches at once), its acks one call per batch.
pub async fn consume_batch(
    service: &Service,
    stream: &str,
    group: &str,
    n: usize,
    concurrency: usize,
    batch_size: usize,
    cap: Duration,
) -> Result<(usize, Duration), BoxError> {
    let handled = Arc::new(AtomicUsize::new(0));
    let all = Arc::new(Notify::new());
    let (h, a) = (handled.clone(), all.clone());
    let start = Instant::now();
    let consumer = service
        .subscribe_batch(
            stream,
            group,
            move |batch: stream_runtime::Batch<stream_runtime::Raw>| {
                let len = batch.len();
                let before = h.fetch_add(len, Ordering::Relaxed);
                if before < n && before + len >= n {
                    a.notify_one();
                }
                async { Ok::<(), stream_runtime::HandlerError>(()) }
            },
            SubscribeOptions::new()
                .start(StartPosition::Earliest)
                .concurrency(concurrency)
                .batch_size(batch_size)
                .poll_interval(POLL_INTERVAL),
        )
        .await?;
    let finished = tokio::time::timeout(cap, all.notified()).await;
    let elapsed = start.elapsed();
    let count = handled.load(Ordering::Relaxed).min(n);
    consumer.close().await;
    if finished.is_err() && count == 0 {
        return Err(format!("no message handled within {cap:?}").into());
    }
    Ok((count, elapsed))
}

/// [`consume`] with a transactional handler that writes nothing: what begin, the fenced ack
/// inside the transaction and commit cost per message, against the plain handler's batched
/// acks.
pub async fn consume_tx(
    service: &Service,
    stream: &str,
    group: &str,
    n: usize,
    concurrency: usize,
    cap: Duration,
) -> Result<(usize, Duration), BoxError> {
    let handled = Arc::new(AtomicUsize::new(0));
    let all = Arc::new(Notify::new());
    let options = SubscribeOptions::new()
        .start(StartPosition::Earliest)
        .concurrency(concurrency)
        .poll_interval(POLL_INTERVAL);
    let start = Instant::now();
    let consumer = match service.backend().name() {
        "postgres" => {
            let handler = noop_tx::<stream_runtime::PostgresTx>(handled.clone(), all.clone(), n);
            service
                .subscribe_transactional(stream, group, handler, options)
                .await?
        }
        _ => {
            let handler = noop_tx::<stream_runtime::SqliteTx>(handled.clone(), all.clone(), n);
            service
                .subscribe_transactional(stream, group, handler, options)
                .await?
        }
    };
    let finished = tokio::time::timeout(cap, all.notified()).await;
    let elapsed = start.elapsed();
    let count = handled.load(Ordering::Relaxed).min(n);
    consumer.close().await;
    if finished.is_err() && count == 0 {
        return Err(format!("no message handled within {cap:?}").into());
    }
    Ok((count, elapsed))
}

/// A transactional handler that writes nothing and counts, notifying `all` at the `n`th.
fn noop_tx<T: stream_runtime::DatabaseTx>(
    handled: Arc<AtomicUsize>,
    all: Arc<Notify>,
    n: usize,
) -> impl for<'t> Fn(
    stream_runtime::Message,
    &'t mut T,
) -> stream_runtime::backend::BoxFuture<
    't,
    Result<(), stream_runtime::HandlerError>,
> + Send
       + Sync
       + 'static {
    stream_runtime::transaction::handler_fn(move |_m, _tx: &mut T| {
        let (h, a) = (handled.clone(), all.clone());
        Box::pin(async move {
            if h.fetch_add(1, Ordering::Relaxed) + 1 == n {
                a.notify_one();
            }
            Ok(())
        })
    })
}

/// Publishes `count` messages at `rate` msg/s, each stamped with its scheduled send time, to
/// a group subscribed at `Latest` with a long poll interval; returns, per message, the time
/// from its scheduled send to its handler's start, in ms.
pub async fn e2e(
    service: &Service,
    stream: &str,
    rate: u32,
    count: usize,
    concurrency: usize,
    poll_interval: Duration,
    payload: &[u8],
) -> Result<Vec<f64>, BoxError> {
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let all = Arc::new(Notify::new());
    let epoch = Instant::now();
    let (l, a) = (latencies.clone(), all.clone());
    let consumer = service
        .subscribe(
            stream,
            "e2e",
            move |message| {
                let now = epoch.elapsed();
                let scheduled = message
                    .header(SCHEDULED_HEADER)
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(Duration::from_nanos);
                if let Some(scheduled) = scheduled {
                    let mut l = l.lock().unwrap_or_else(PoisonError::into_inner);
                    l.push(now.saturating_sub(scheduled).as_secs_f64() * 1e3);
                    if l.len() == count {
                        a.notify_one();
                    }
                }
                async { Ok(()) }
            },
            SubscribeOptions::new()
                .concurrency(concurrency)
                .poll_interval(poll_interval),
        )
        .await?;
    let failures = Arc::new(AtomicUsize::new(0));
    let runtime = tokio::runtime::Handle::current();
    let (svc, f, name, body) = (
        service.clone(),
        failures.clone(),
        stream.to_owned(),
        payload.to_vec(),
    );
    paced(epoch, rate, count, move |scheduled| {
        let (svc, f, name) = (svc.clone(), f.clone(), name.clone());
        let message = NewMessage::new(body.clone())
            .header(SCHEDULED_HEADER, scheduled.as_nanos().to_string());
        runtime.spawn(async move {
            if svc
                .publish_batch(&name, [message], PublishOptions::new())
                .await
                .is_err()
            {
                f.fetch_add(1, Ordering::Relaxed);
            }
        });
    })
    .await?;
    let finished = tokio::time::timeout(RUN_TIMEOUT, all.notified()).await;
    consumer.close().await;
    let failed = failures.load(Ordering::Relaxed);
    if failed > 0 {
        return Err(format!("{failed} of {count} publishes failed").into());
    }
    if finished.is_err() {
        return Err(format!("not all {count} messages arrived within {RUN_TIMEOUT:?}").into());
    }
    let latencies = std::mem::take(&mut *latencies.lock().unwrap_or_else(PoisonError::into_inner));
    Ok(latencies)
}
