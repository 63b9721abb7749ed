//! What the engine tells the outside world: a `tracing` span around every handler call and
//! publish, and metrics through the [`metrics`] facade (no exporter is forced on the
//! application; the runtime's `[http]` endpoint installs a Prometheus one).
//!
//! Metric handles of a subscription are registered once, when it starts, with the recorder
//! installed at that moment: install yours before subscribing. Without a recorder every
//! update is a no-op; without a `tracing` subscriber interested in the spans, they are never
//! built.

use std::time::{Duration, Instant, SystemTime};

use metrics::{Counter, Gauge, Histogram};

/// The metric names, as documented in `docs/observability.md`.
pub mod names {
    /// Counter `{stream}`: messages appended by publishes of this process.
    pub const PUBLISHED: &str = "streams_published_total";
    /// Counter `{stream, group, outcome}`: handler outcomes, `ok`, `retry` or `dead_letter`.
    pub const HANDLED: &str = "streams_handled_total";
    /// Histogram `{stream, group}`: handler run time in seconds.
    pub const HANDLER_SECONDS: &str = "streams_handler_seconds";
    /// Histogram `{stream, group}`: from a message's `created_at` to its handler's start.
    pub const DELIVERY_DELAY_SECONDS: &str = "streams_delivery_delay_seconds";
    /// Gauge `{stream, group}`: handlers running now.
    pub const IN_FLIGHT: &str = "streams_in_flight";
    /// Gauge `{stream, group}`: messages after the group's cursor (sampled by the runtime).
    pub const LAG: &str = "streams_lag";
    /// Gauge `{stream, group}`: claimed, not yet settled messages (sampled by the runtime).
    pub const PENDING: &str = "streams_pending";
}

/// How a delivery ended, as the `outcome` label and span field say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Retry,
    DeadLetter,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Retry => "retry",
            Outcome::DeadLetter => "dead_letter",
        }
    }
}

/// One subscription's metric handles.
pub(crate) struct SubscriptionMetrics {
    ok: Counter,
    retry: Counter,
    dead_letter: Counter,
    handler_seconds: Histogram,
    delivery_delay: Histogram,
    in_flight: Gauge,
}

impl SubscriptionMetrics {
    pub(crate) fn new(stream: &str, group: &str) -> Self {
        let handled = |outcome: Outcome| {
            metrics::counter!(names::HANDLED, "stream" => stream.to_owned(),
                "group" => group.to_owned(), "outcome" => outcome.as_str())
        };
        SubscriptionMetrics {
            ok: handled(Outcome::Ok),
            retry: handled(Outcome::Retry),
            dead_letter: handled(Outcome::DeadLetter),
            handler_seconds: metrics::histogram!(names::HANDLER_SECONDS,
                "stream" => stream.to_owned(), "group" => group.to_owned()),
            delivery_delay: metrics::histogram!(names::DELIVERY_DELAY_SECONDS,
                "stream" => stream.to_owned(), "group" => group.to_owned()),
            in_flight: metrics::gauge!(names::IN_FLIGHT,
                "stream" => stream.to_owned(), "group" => group.to_owned()),
        }
    }

    /// A handler starts on a message created at `created_at`.
    pub(crate) fn started(&self, created_at: SystemTime) -> Instant {
        self.in_flight.increment(1.0);
        let delay = SystemTime::now()
            .duration_since(created_at)
            .unwrap_or(Duration::ZERO);
        self.delivery_delay.record(delay.as_secs_f64());
        Instant::now()
    }

    /// The handler started at `started` returned.
    pub(crate) fn finished(&self, started: Instant) -> Duration {
        let took = started.elapsed();
        self.in_flight.decrement(1.0);
        self.handler_seconds.record(took.as_secs_f64());
        took
    }

    /// A delivery ended with `outcome`.
    pub(crate) fn outcome(&self, outcome: Outcome) {
        match outcome {
            Outcome::Ok => &self.ok,
            Outcome::Retry => &self.retry,
            Outcome::DeadLetter => &self.dead_letter,
        }
        .increment(1);
    }
}

/// Samples the groups of `streams` (full names) every `every` into the
/// [`LAG`](names::LAG) and [`PENDING`](names::PENDING) gauges, through the backend's admin
/// calls (one `list_groups` per stream), until `stop` is told.
pub(crate) async fn sample_groups(
    backend: crate::backend::SharedBackend,
    streams: Vec<String>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = ticks.tick() => {}
        }
        for stream in &streams {
            match backend.list_groups(stream).await {
                Ok(groups) => {
                    for g in groups {
                        let labels = [("stream", stream.clone()), ("group", g.group)];
                        metrics::gauge!(names::LAG, &labels).set(g.lag as f64);
                        metrics::gauge!(names::PENDING, &labels).set(g.pending as f64);
                    }
                }
                Err(e) => {
                    tracing::debug!(%stream, error = %e, "sampling the groups' lag failed")
                }
            }
        }
    }
}

/// Opens a span at the configured [`SpanLevel`](crate::SpanLevel) (each level is its own
/// callsite, as `tracing` wants a constant level), or none for `Off`.
macro_rules! span_at {
    ($level:expr, $($span:tt)*) => {
        match $level {
            $crate::SpanLevel::Info => ::tracing::info_span!($($span)*),
            $crate::SpanLevel::Debug => ::tracing::debug_span!($($span)*),
            $crate::SpanLevel::Trace => ::tracing::trace_span!($($span)*),
            $crate::SpanLevel::Off => ::tracing::Span::none(),
        }
    };
}
pub(crate) use span_at;

/// Records how a delivery ended on its span: outcome, reason (for failures) and duration,
/// in one call, so a subscriber sees (and a formatting layer formats) one record, not three.
pub(crate) fn record(span: &tracing::Span, outcome: Outcome, reason: Option<&str>, took: Duration) {
    use tracing::field::Value;
    let Some(fields) = span.metadata().map(|m| m.fields()) else {
        return; // disabled: no subscriber wants it
    };
    let (Some(outcome_field), Some(reason_field), Some(duration_field)) = (
        fields.field("outcome"),
        fields.field("reason"),
        fields.field("duration_ms"),
    ) else {
        return;
    };
    let duration_ms = took.as_secs_f64() * 1000.0;
    let outcome = outcome.as_str();
    span.record_all(&fields.value_set(&[
        (&outcome_field, Some(&outcome as &dyn Value)),
        (&reason_field, reason.as_ref().map(|r| r as &dyn Value)),
        (&duration_field, Some(&duration_ms as &dyn Value)),
    ]));
}

/// W3C trace context in message headers (feature `opentelemetry`): publish writes the
/// current span's `traceparent` and `tracestate`; a handler's span takes them as its parent.
#[cfg(feature = "opentelemetry")]
pub(crate) mod trace_context {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use crate::message::Headers;

    /// The W3C header names.
    pub const TRACEPARENT: &str = "traceparent";
    /// The W3C header names.
    pub const TRACESTATE: &str = "tracestate";

    /// Adds `span`'s trace context to `headers` (the caller's current span's when `span` is
    /// disabled, by its level), unless they carry one already.
    pub(crate) fn inject(span: &tracing::Span, headers: &mut Headers) {
        let current;
        let span = if span.is_disabled() {
            current = tracing::Span::current();
            &current
        } else {
            span
        };
        if span.is_disabled() || headers.contains_key(TRACEPARENT) {
            return;
        }
        let context = span.context();
        let span_ref = context.span();
        let sc = span_ref.span_context();
        if !sc.is_valid() {
            return;
        }
        headers.insert(
            TRACEPARENT.to_owned(),
            format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            ),
        );
        let state = sc.trace_state().header();
        if !state.is_empty() {
            headers.insert(TRACESTATE.to_owned(), state);
        }
    }

    /// Makes the trace context in `headers` (if valid) the parent of `span`.
    pub(crate) fn extract(span: &tracing::Span, headers: &Headers) {
        if span.is_disabled() {
            return;
        }
        let Some(sc) = headers
            .get(TRACEPARENT)
            .and_then(|v| parse(v, headers.get(TRACESTATE).map(String::as_str)))
        else {
            return;
        };
        let parent = opentelemetry::Context::new().with_remote_span_context(sc);
        let _ = span.set_parent(parent);
    }

    /// Parses `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
    fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
        let mut parts = traceparent.trim().split('-');
        let version = parts.next()?;
        let trace_id = parts.next()?;
        let span_id = parts.next()?;
        let flags = parts.next()?;
        if version != "00" || trace_id.len() != 32 || span_id.len() != 16 || flags.len() != 2 {
            return None;
        }
        let trace_id = TraceId::from_hex(trace_id).ok()?;
        let span_id = SpanId::from_hex(span_id).ok()?;
        let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?);
        let state = tracestate
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        let sc = SpanContext::new(trace_id, span_id, flags, true, state);
        sc.is_valid().then_some(sc)
    }
}
