//! The benchmark harness: every workload through the framework, beside the same work
//! written directly against the backend's client library, in one run.
//!
//! ```text
//! cargo run --release -p stream-bench -- --backend memory,sqlite,postgres,redis,nats [--quick]
//! ```
//!
//! `--help` lists the options ([`args`]); [`run`] measures, [`report`] prints the table and
//! the JSON lines. Services: `STREAMS_TEST_POSTGRES_URL`, `STREAMS_TEST_REDIS_URL`,
//! `STREAMS_TEST_NATS_URL`. See
//! BENCHMARKS.md for what each workload and ceiling is.

mod args;
mod counting;
mod ours;
mod pace;
mod raw;
mod report;
mod run;
mod stats;

use std::io::Write;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;

pub use pace::paced;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Payload size of every workload.
pub const PAYLOAD: usize = 256;

/// A backend to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Memory,
    Sqlite,
    Postgres,
    Redis,
    Nats,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Memory => "memory",
            Kind::Sqlite => "sqlite",
            Kind::Postgres => "postgres",
            Kind::Redis => "redis",
            Kind::Nats => "nats",
        }
    }

    /// Message counts: the in-process backend gets more, so its runs are long enough to time.
    pub fn scale(self) -> usize {
        match self {
            Kind::Memory => 20,
            Kind::Redis => 4,
            Kind::Nats => 1,
            Kind::Sqlite | Kind::Postgres => 1,
        }
    }
}

/// An exporter that drops every batch: the in-process cost of OpenTelemetry tracing
/// (span data built, queued and handed over in batches) without a collector.
#[derive(Debug)]
struct NoExporter;

impl opentelemetry_sdk::trace::SpanExporter for NoExporter {
    async fn export(
        &self,
        _batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

/// Installs a registry with a `tracing-opentelemetry` layer at INFO over the SDK's batch
/// span processor (the production setup) exporting to [`NoExporter`].
fn install_otel() -> Result<opentelemetry_sdk::trace::SdkTracerProvider, BoxError> {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(NoExporter)
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::INFO)
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("stream-bench")));
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|e| format!("installing the OpenTelemetry layer: {e}"))?;
    Ok(provider)
}

fn main() -> Result<(), BoxError> {
    let args = args::Args::parse();
    let plan = args.plan();
    use args::Telemetry;
    if matches!(args.telemetry, Some(Telemetry::Metrics | Telemetry::All)) {
        // Before any subscription: metric handles are registered when a subscription starts.
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        metrics::set_global_recorder(recorder)
            .map_err(|e| format!("installing the metrics recorder: {e}"))?;
    }
    if args.telemetry == Some(Telemetry::Registry) {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber =
            tracing_subscriber::registry().with(tracing_subscriber::filter::LevelFilter::INFO);
        tracing::subscriber::set_global_default(subscriber)
            .map_err(|e| format!("installing the tracing registry: {e}"))?;
    }
    if matches!(
        args.telemetry,
        Some(Telemetry::Spans | Telemetry::SpansPlain | Telemetry::All)
    ) {
        tracing_subscriber::fmt()
            .with_writer(std::io::sink)
            .with_max_level(tracing::Level::INFO)
            .with_ansi(args.telemetry != Some(Telemetry::SpansPlain))
            .init();
    }
    // Kept until the end, then shut down (which flushes the batch processor).
    let otel = (args.telemetry == Some(Telemetry::Otel))
        .then(install_otel)
        .transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let tag = format!(
        "{}{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() % 100_000)
            .unwrap_or_default()
    );
    let json_path = &args.json;
    let mut json_out: Box<dyn Write> = if json_path == "-" {
        Box::new(std::io::stdout())
    } else {
        if let Some(parent) = std::path::Path::new(json_path).parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)?;
            }
        }
        Box::new(std::fs::File::create(json_path)?)
    };

    let started = Instant::now();
    eprintln!(
        "stream-bench: {} mode{}, payload {PAYLOAD} B, backends {:?}, up to {} repetition(s)",
        if plan.quick { "quick" } else { "full" },
        match args.telemetry {
            Some(t) => format!(", telemetry {t:?}"),
            None => String::new(),
        },
        args.backend.iter().map(|k| k.name()).collect::<Vec<_>>(),
        plan.max_reps
    );
    let mut rows = Vec::new();
    let mut failed = false;
    for &kind in &args.backend {
        let t = Instant::now();
        let mut emit = |row: report::Row| {
            eprintln!("{}", row.table_line());
            let _ = writeln!(json_out, "{}", row.json());
            rows.push(row);
        };
        if let Err(e) = runtime.block_on(run::run_backend(kind, &plan, &tag, &mut emit)) {
            failed = true;
            eprintln!("== {}: FAILED: {e}", kind.name());
            let _ = writeln!(
                json_out,
                "{}",
                json!({ "backend": kind.name(), "error": e.to_string() })
            );
        }
        eprintln!("== {} done in {:.1?}", kind.name(), t.elapsed());
    }
    json_out.flush()?;
    drop(json_out);

    report::print(&rows, plan.cap);
    println!("total {:.0?}; JSON lines in {json_path}", started.elapsed());
    runtime.shutdown_timeout(Duration::from_secs(5));
    if let Some(provider) = otel {
        provider
            .shutdown()
            .map_err(|e| format!("shutting down the OpenTelemetry provider: {e}"))?;
    }
    if failed {
        return Err("some backends failed; see above".into());
    }
    Ok(())
}
