//! The engine's metrics, on the memory backend, through a recording `metrics` recorder
//! (spans: `spans.rs`; trace context across hops: `trace_context.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::CompositeKey;
use stream_runtime::conformance::{unique_name, wait_for, Recorder};
use stream_runtime::engine::telemetry::names;
use stream_runtime::{PublishOptions, Service, ServiceConfig};
use stream_tests::{fails_bad, fast_options};

/// The process's recorder: installed once, before any subscription of this binary.
fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        if recorder.install().is_err() {
            panic!("another metrics recorder is installed in this test binary");
        }
        snapshotter
    })
}

type Key = (String, Vec<(String, String)>);

/// A metric's value summed over every snapshot: the debugging recorder's snapshot drains
/// what it reads (counters and gauges to 0, histograms emptied), so the sum is the value.
#[derive(Clone, Copy, Debug, Default)]
struct Total {
    counter: u64,
    gauge: f64,
    samples: usize,
}

/// Every metric of `stream` (by its `stream` label), summed over all snapshots so far.
fn metrics_of(stream: &str) -> HashMap<Key, Total> {
    static TOTALS: OnceLock<Mutex<HashMap<Key, Total>>> = OnceLock::new();
    let mut totals = TOTALS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    for (key, _, _, value) in snapshotter().snapshot().into_vec() {
        let key: CompositeKey = key;
        let (_, key) = key.into_parts();
        let labels = key
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        let total = totals.entry((key.name().to_owned(), labels)).or_default();
        match value {
            DebugValue::Counter(c) => total.counter += c,
            DebugValue::Gauge(g) => total.gauge += g.into_inner(),
            DebugValue::Histogram(h) => total.samples += h.len(),
        }
    }
    totals
        .iter()
        .filter(|((_, labels), _)| labels.iter().any(|(k, v)| k == "stream" && v == stream))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

fn of<'a>(
    m: &'a HashMap<Key, Total>,
    name: &'a str,
    outcome: Option<&'a str>,
) -> impl Iterator<Item = &'a Total> {
    m.iter()
        .filter(move |((n, labels), _)| {
            n == name
                && outcome.is_none_or(|o| labels.iter().any(|(k, v)| k == "outcome" && v == o))
        })
        .map(|(_, t)| t)
}

fn counter(m: &HashMap<Key, Total>, name: &str, outcome: Option<&str>) -> u64 {
    of(m, name, outcome).map(|t| t.counter).sum()
}

fn samples(m: &HashMap<Key, Total>, name: &str) -> usize {
    of(m, name, None).map(|t| t.samples).sum()
}

fn gauge(m: &HashMap<Key, Total>, name: &str) -> f64 {
    of(m, name, None).map(|t| t.gauge).sum()
}

/// 3 messages handled ok, one failing twice and then dead-lettered (max_retries = 2):
/// exactly 3 ok, 2 retries and 1 dead letter, 6 handler timings and delivery delays, 4
/// published, nothing in flight afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_outcome() {
    snapshotter();
    let service = Service::new(
        stream_runtime::backend::memory::MemoryBackend::new(),
        ServiceConfig::default().app(unique_name("obs")),
    );
    let full = service.stream_name("orders").expect("name");
    let handled = Arc::new(AtomicU32::new(0));
    let dead = Recorder::new();
    service
        .subscribe(
            "orders",
            "billing",
            fails_bad(handled.clone()),
            fast_options().max_retries(2),
        )
        .await
        .expect("subscribe");
    service
        .subscribe("orders.dead", "audit", dead.handler(), fast_options())
        .await
        .expect("subscribe to the dead letters");
    for payload in ["ok1", "bad", "ok2", "ok3"] {
        service
            .publish("orders", payload, PublishOptions::new())
            .await
            .expect("publish");
    }
    dead.wait_payload("bad").await;
    wait_for("the last ack", || {
        counter(&metrics_of(&full), names::HANDLED, Some("ok")) == 3
    })
    .await;
    let m = metrics_of(&full);
    assert_eq!(counter(&m, names::HANDLED, Some("ok")), 3);
    assert_eq!(counter(&m, names::HANDLED, Some("retry")), 2);
    assert_eq!(counter(&m, names::HANDLED, Some("dead_letter")), 1);
    assert_eq!(counter(&m, names::PUBLISHED, None), 4);
    assert_eq!(samples(&m, names::HANDLER_SECONDS), 6);
    assert_eq!(samples(&m, names::DELIVERY_DELAY_SECONDS), 6);
    assert_eq!(gauge(&m, names::IN_FLIGHT), 0.0);
    assert_eq!(handled.load(Ordering::SeqCst), 6);
    service.close().await.expect("close");
}
