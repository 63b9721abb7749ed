//! The engine's spans, through a capturing `tracing` layer. A test binary of its own: its
//! subscriber is the only one in the process, so no other test's threads share the
//! callsites' cached interest.

use std::collections::HashMap;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, PoisonError};

use stream_runtime::conformance::{unique_name, wait_for, Recorder};
use stream_runtime::{PublishOptions, Service, ServiceConfig};
use stream_tests::{fails_bad, fast_options};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

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
            fails_bad(handled.clone()),
            fast_options().max_retries(1).name("bill"),
        )
        .await
        .expect("subscribe");
    service
        .subscribe("orders.dead", "audit", dead.handler(), fast_options())
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

/// `span_level` moves both spans to another level: a subscriber filtered above it never
/// sees them (so a formatter at INFO does not build them), one that enables the level sees
/// every one, and `off` opens none at all.
#[tokio::test(flavor = "current_thread")]
async fn span_level_decides_who_sees_the_spans() {
    use stream_runtime::SpanLevel;
    use tracing_subscriber::filter::LevelFilter;
    let cases = [
        (SpanLevel::Debug, LevelFilter::INFO, false),
        (SpanLevel::Debug, LevelFilter::DEBUG, true),
        (SpanLevel::Trace, LevelFilter::TRACE, true),
        (SpanLevel::Off, LevelFilter::TRACE, false),
    ];
    for (level, filter, seen) in cases {
        let spans = Spans::default();
        let subscriber = tracing_subscriber::registry().with(spans.clone().with_filter(filter));
        let _guard = tracing::subscriber::set_default(subscriber);
        let service = Service::new(
            stream_runtime::backend::memory::MemoryBackend::new(),
            ServiceConfig::default()
                .app(unique_name("level"))
                .span_level(level),
        );
        let handled = Recorder::new();
        service
            .subscribe("orders", "billing", handled.handler(), fast_options())
            .await
            .expect("subscribe");
        service
            .publish("orders", "x", PublishOptions::new())
            .await
            .expect("publish");
        handled.wait_len(1, "the delivery").await;
        // Closing drains the consumer: its span (if any) has closed once this returns.
        service.close().await.expect("close");
        let what = format!("span_level {level:?} under a {filter} filter");
        assert_eq!(
            spans.named("stream.handle").len(),
            usize::from(seen),
            "{what}: stream.handle"
        );
        assert_eq!(
            spans.named("stream.publish").len(),
            usize::from(seen),
            "{what}: stream.publish"
        );
    }
}
