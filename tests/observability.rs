//! Spans, metrics and trace context of the engine, on the memory backend: metric values
//! through a recording `metrics` recorder, span fields through a capturing `tracing` layer,
//! and one trace id across two hops with an in-memory OpenTelemetry exporter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::CompositeKey;
use stream_runtime::conformance::{unique_name, wait_for, Recorder};
use stream_runtime::engine::telemetry::names;
use stream_runtime::{
    HandlerError, Message, PublishOptions, RetryDelay, Service, ServiceConfig, SubscribeOptions,
};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

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

fn fast() -> SubscribeOptions {
    SubscribeOptions::new()
        .poll_interval(Duration::from_millis(25))
        .retry_delay(RetryDelay::Fixed(Duration::from_millis(10)))
}

/// A handler that fails every attempt of "bad" and handles the rest.
fn scripted(
    handled: Arc<AtomicU32>,
) -> impl Fn(Message) -> std::future::Ready<Result<(), HandlerError>> + Send + Sync + 'static {
    move |m: Message| {
        handled.fetch_add(1, Ordering::SeqCst);
        std::future::ready(if &m.payload[..] == b"bad" {
            Err(HandlerError::retry("bad payload"))
        } else {
            Ok(())
        })
    }
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
            scripted(handled.clone()),
            fast().max_retries(2),
        )
        .await
        .expect("subscribe");
    service
        .subscribe("orders.dead", "audit", dead.handler(), fast())
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

/// The spans a test saw close: name and fields.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<ClosedSpan>>>);

/// A span's name and its fields.
type ClosedSpan = (String, HashMap<String, String>);

struct Fields(HashMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S> Layer<S> for Spans
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields(HashMap::new());
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<Fields>() {
                values.record(fields);
            }
        }
    }
    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            let fields = span
                .extensions_mut()
                .remove::<Fields>()
                .map(|f| f.0)
                .unwrap_or_default();
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((span.name().to_owned(), fields));
        }
    }
}

impl Spans {
    fn named(&self, name: &str) -> Vec<HashMap<String, String>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .collect()
    }
}

/// Every handler call runs in a `stream.handle` span with stream, group, consumer, message
/// id and attempt, and its outcome, reason and duration recorded; a publish in
/// `stream.publish`. (A current-thread runtime: the engine's tasks run on the thread whose
/// default subscriber captures them.)
#[tokio::test(flavor = "current_thread")]
async fn spans_carry_the_delivery() {
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
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
            scripted(handled.clone()),
            fast().max_retries(1).name("bill"),
        )
        .await
        .expect("subscribe");
    service
        .subscribe("orders.dead", "audit", dead.handler(), fast())
        .await
        .expect("subscribe to the dead letters");
    let ok_id = service
        .publish("orders", "ok", PublishOptions::new())
        .await
        .expect("publish");
    service
        .publish("orders", "bad", PublishOptions::new())
        .await
        .expect("publish");
    dead.wait_payload("bad").await;
    wait_for("the spans of three billing deliveries", || {
        spans
            .named("stream.handle")
            .iter()
            .filter(|f| f.get("group").map(String::as_str) == Some("billing"))
            .count()
            == 3
    })
    .await;
    let billing: Vec<_> = spans
        .named("stream.handle")
        .into_iter()
        .filter(|f| f.get("group").map(String::as_str) == Some("billing"))
        .collect();
    for fields in &billing {
        assert_eq!(fields["stream"], full);
        assert_eq!(fields["consumer"], "bill");
        assert!(fields.contains_key("message_id") && fields.contains_key("attempt"));
        assert!(fields["duration_ms"].parse::<f64>().is_ok(), "{fields:?}");
    }
    let ok = billing
        .iter()
        .find(|f| f["message_id"] == ok_id.to_string())
        .expect("the span of the ok message");
    assert_eq!(ok["outcome"], "ok");
    assert_eq!(ok["attempt"], "1");
    let mut failed: Vec<_> = billing.iter().filter(|f| f["outcome"] != "ok").collect();
    failed.sort_by_key(|f| f["attempt"].clone());
    assert_eq!(failed.len(), 2);
    assert_eq!(failed[0]["outcome"], "retry");
    assert_eq!(failed[1]["outcome"], "dead_letter");
    assert_eq!(failed[1]["reason"], "bad payload");
    let publishes = spans.named("stream.publish");
    assert!(
        publishes.iter().filter(|f| f["stream"] == full).count() >= 2,
        "{publishes:?}"
    );
    service.close().await.expect("close");
}

/// With feature `opentelemetry`: a request span publishes to `orders`, whose handler
/// publishes to `invoices`, whose handler runs: every span of the chain has one trace id.
#[tokio::test(flavor = "current_thread")]
async fn one_trace_across_two_hops() {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let service = Service::new(
        stream_runtime::backend::memory::MemoryBackend::new(),
        ServiceConfig::default().app(unique_name("otel")),
    );
    let invoiced = Recorder::new();
    let forwarding = service.clone();
    service
        .subscribe(
            "orders",
            "billing",
            move |m: Message| {
                let service = forwarding.clone();
                async move {
                    service
                        .publish("invoices", m.payload.to_vec(), PublishOptions::new())
                        .await
                        .map_err(HandlerError::retry)?;
                    Ok(())
                }
            },
            fast(),
        )
        .await
        .expect("subscribe orders");
    service
        .subscribe("invoices", "mail", invoiced.handler(), fast())
        .await
        .expect("subscribe invoices");
    {
        let request = tracing::info_span!("request");
        let _entered = request.enter();
        service
            .publish("orders", "order-1", PublishOptions::new())
            .await
            .expect("publish");
    }
    invoiced.wait_payload("order-1").await;
    let traceparent = invoiced.messages()[0]
        .header("traceparent")
        .map(str::to_owned)
        .expect("the second hop's message carries a traceparent");
    wait_for("the spans to be exported", || {
        exporter
            .get_finished_spans()
            .map(|s| s.iter().filter(|s| s.name == "stream.handle").count() >= 2)
            .unwrap_or(false)
    })
    .await;
    let spans = exporter.get_finished_spans().expect("finished spans");
    let request = spans
        .iter()
        .find(|s| s.name == "request")
        .expect("the request span");
    let trace_id = request.span_context.trace_id();
    for name in ["stream.publish", "stream.handle"] {
        let of_name: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
        assert!(of_name.len() >= 2, "two {name} spans: {spans:?}");
        for span in of_name {
            assert_eq!(
                span.span_context.trace_id(),
                trace_id,
                "{name} in another trace"
            );
        }
    }
    assert!(
        traceparent.contains(&trace_id.to_string()),
        "{traceparent} names trace {trace_id}"
    );
    service.close().await.expect("close");
}
