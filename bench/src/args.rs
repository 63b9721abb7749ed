//! The command line.

use std::time::Duration;

use clap::Parser;

use crate::run::Plan;
use crate::Kind;

/// Measures every workload through the framework, beside the same work written directly
/// against each backend's client library (its raw ceiling).
#[derive(Debug, Parser)]
#[command(name = "stream-bench")]
pub struct Args {
    /// The backends to measure.
    #[arg(
        long,
        alias = "backends",
        value_delimiter = ',',
        default_value = "memory,sqlite,postgres,redis"
    )]
    pub backend: Vec<Kind>,

    /// Small counts and one repetition: a smoke run.
    #[arg(long)]
    pub quick: bool,

    /// Repetitions of each figure, with no time budget.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub reps: Option<u64>,

    /// The workloads to run.
    #[arg(long, value_delimiter = ',')]
    pub only: Option<Vec<Workload>>,

    /// Where the JSON lines go (`-` for stdout).
    #[arg(long, default_value = "target/stream-bench.jsonl")]
    pub json: String,

    /// Count the engine's claim and ack calls and their sizes.
    #[arg(long)]
    pub count_calls: bool,

    /// Consumer concurrencies of the consume workload.
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Option<Vec<usize>>,

    /// Backlog sizes of the consume workload.
    #[arg(long, value_delimiter = ',')]
    pub backlog: Option<Vec<usize>>,

    /// Skip the unrecorded warm-up run of every path (to profile one workload alone).
    #[arg(long)]
    pub no_warmup: bool,

    /// Run with telemetry on: a Prometheus `metrics` recorder and/or a `tracing` subscriber
    /// at INFO (fmt writing to nowhere, a bare registry, or an OpenTelemetry layer), so every
    /// handler call builds its span and updates its metrics (`--telemetry` alone: metrics
    /// and fmt spans). Compare with a run without it.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "all")]
    pub telemetry: Option<Telemetry>,

    /// The level of the engine's per-message and publish spans (`span_level`): `info` (the
    /// default), `debug`, `trace` or `off`. With `--telemetry=spans --span-level debug`, an
    /// INFO formatter runs beside spans it does not enable.
    #[arg(long, default_value = "info", value_parser = parse_span_level)]
    pub span_level: stream_runtime::SpanLevel,

    /// Skip the raw ceilings (to profile the framework alone).
    #[arg(long)]
    pub no_raw: bool,

    /// Consume with the lease heartbeat on (`SubscribeOptions::heartbeat`), to compare with
    /// a run without it.
    #[arg(long)]
    pub heartbeat: bool,

    /// The latency workload's poll interval (`500ms`, `1s`, `10s`): with push wake-ups the
    /// latency should not depend on it.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    pub bench: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |at| text.split_at(at));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit, like 500ms or 1s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        _ => Err(format!("{text:?}: the unit is ms or s, like 500ms or 1s")),
    }
}

fn parse_span_level(level: &str) -> Result<stream_runtime::SpanLevel, String> {
    use stream_runtime::SpanLevel;
    match level {
        "info" => Ok(SpanLevel::Info),
        "debug" => Ok(SpanLevel::Debug),
        "trace" => Ok(SpanLevel::Trace),
        "off" => Ok(SpanLevel::Off),
        other => Err(format!("{other:?}: expected info, debug, trace or off")),
    }
}

/// What `--telemetry` switches on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Telemetry {
    /// The metrics recorder only.
    Metrics,
    /// The tracing subscriber (fmt at INFO, to nowhere) only.
    Spans,
    /// A bare `tracing` registry (spans kept, nothing formatted) only.
    Registry,
    /// The tracing subscriber as `spans`, without ANSI colours (as when logging to a file).
    SpansPlain,
    /// An OpenTelemetry layer (`tracing-opentelemetry` over the SDK's batch span processor,
    /// exporting to nowhere) on a registry only: what shipping traces costs in-process.
    Otel,
    /// Both.
    All,
}

/// A workload of `--only`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Publish one message at a time.
    Publish,
    /// Publish in batches.
    Batch,
    /// Consume a backlog.
    Consume,
    /// Latency from publish to handler at a fixed rate.
    E2e,
    /// Consume a backlog with a transactional handler, beside the plain handler (SQLite and
    /// Postgres only).
    Tx,
    /// Consume a backlog over 100 keys by a group ordered by key, beside the same backlog
    /// unordered (in the raw column).
    Ordered,
}

impl Workload {
    pub const ALL: [Workload; 6] = [
        Workload::Publish,
        Workload::Batch,
        Workload::Consume,
        Workload::E2e,
        Workload::Tx,
        Workload::Ordered,
    ];
}

impl Args {
    /// What to measure.
    pub fn plan(&self) -> Plan {
        let mut plan = Plan::new(self.quick);
        plan.count_calls = self.count_calls;
        plan.warmup = !self.no_warmup;
        plan.raw = !self.no_raw;
        plan.span_level = self.span_level;
        plan.heartbeat = self.heartbeat;
        plan.poll_interval = self.poll_interval;
        if let Some(c) = &self.concurrency {
            plan.concurrencies = c.clone();
        }
        if let Some(b) = &self.backlog {
            plan.backlogs = b.clone();
        }
        if let Some(r) = self.reps {
            plan.max_reps = usize::try_from(r).unwrap_or(usize::MAX);
            plan.budget = Duration::from_secs(3600);
        }
        if let Some(only) = &self.only {
            plan.workloads = only.clone();
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn documented_flags_parse() {
        let args = Args::try_parse_from([
            "stream-bench",
            "--backends",
            "memory,redis",
            "--only",
            "consume,e2e",
            "--reps",
            "3",
            "--concurrency",
            "1,8",
            "--backlog",
            "1000",
            "--json",
            "-",
            "--count-calls",
            "--no-warmup",
            "--no-raw",
            "--quick",
            "--poll-interval",
            "1s",
            "--bench",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(args.backend, [Kind::Memory, Kind::Redis]);
        let plan = args.plan();
        assert_eq!(plan.workloads, [Workload::Consume, Workload::E2e]);
        assert_eq!(plan.max_reps, 3);
        assert_eq!(plan.concurrencies, [1, 8]);
        assert_eq!(plan.backlogs, [1000]);
        assert!(plan.count_calls && !plan.warmup && !plan.raw && plan.quick);
        assert_eq!(plan.poll_interval, Duration::from_secs(1));
        assert!(Args::try_parse_from(["stream-bench", "--poll-interval", "1h"]).is_err());
        let defaults = Args::try_parse_from(["stream-bench"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(defaults.backend.len(), 4);
        assert_eq!(defaults.plan().workloads, Workload::ALL);
        assert!(Args::try_parse_from(["stream-bench", "--reps", "0"]).is_err());
        assert!(Args::try_parse_from(["stream-bench", "--backend", "mysql"]).is_err());
    }
}
