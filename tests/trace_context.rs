//! Trace context across services (feature `opentelemetry`), with an in-memory OpenTelemetry
//! exporter. A test binary of its own: its subscriber is the only one in the process, so no
//! other test's threads share the callsites' cached interest.

use stream_runtime::conformance::{unique_name, wait_for, Recorder};
use stream_runtime::{HandlerError, Message, PublishOptions, Service, ServiceConfig};
use stream_tests::fast_options;
use tracing_subscriber::layer::SubscriberExt;

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
            fast_options(),
        )
        .await
        .expect("subscribe orders");
    service
        .subscribe("invoices", "mail", invoiced.handler(), fast_options())
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

/// With `span_level = "off"` a publish opens no span of its own, and its messages carry the
/// trace context of the caller's current span, so the trace is not cut at the stream.
#[tokio::test(flavor = "current_thread")]
async fn without_a_publish_span_the_callers_context_is_carried() {
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
        ServiceConfig::default()
            .app(unique_name("otel-off"))
            .span_level(stream_runtime::SpanLevel::Off),
    );
    let handled = Recorder::new();
    service
        .subscribe("orders", "billing", handled.handler(), fast_options())
        .await
        .expect("subscribe");
    {
        let request = tracing::info_span!("request");
        let _entered = request.enter();
        service
            .publish("orders", "order-1", PublishOptions::new())
            .await
            .expect("publish");
    }
    handled.wait_len(1, "the delivery").await;
    let traceparent = handled.messages()[0]
        .header("traceparent")
        .map(str::to_owned)
        .expect("the message carries the caller's traceparent");
    service.close().await.expect("close");
    let spans = exporter.get_finished_spans().expect("finished spans");
    let request = spans
        .iter()
        .find(|s| s.name == "request")
        .expect("the request span");
    assert_eq!(
        traceparent,
        format!(
            "00-{}-{}-{:02x}",
            request.span_context.trace_id(),
            request.span_context.span_id(),
            request.span_context.trace_flags().to_u8()
        )
    );
    assert!(
        spans.iter().all(|s| s.name == "request"),
        "no stream span with span_level off: {spans:?}"
    );
}
