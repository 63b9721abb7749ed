//! The report: a table for people, one JSON object per row for tools.

use std::time::Duration;

use serde_json::{json, Value};

use crate::stats::{human, round, Summary};
use crate::{Kind, PAYLOAD};

/// One line of the report.
pub struct Row {
    pub backend: Kind,
    pub workload: String,
    pub label: String,
    pub count: usize,
    pub concurrency: Option<usize>,
    pub batch: Option<usize>,
    pub reps: usize,
    pub durability: String,
    pub figure: Figure,
    pub error: Option<String>,
    /// Consume runs: the fewest messages a repetition handled before the time cap.
    pub fewest_handled: Option<usize>,
    /// With `--count-calls`: the engine's backend calls in the last repetition.
    pub calls: Option<Value>,
    /// Consume runs: the process's resident set after the row's last repetition and its
    /// peak so far, in KiB (`VmRSS`, `VmHWM` of /proc/self/status).
    pub rss_kib: Option<(u64, u64)>,
}

pub enum Figure {
    /// Messages per second.
    Throughput {
        ours: Option<Summary>,
        raw: Option<Summary>,
    },
    /// Milliseconds from scheduled send to handler start.
    Latency {
        ours: Option<[Summary; 3]>,
        raw: Option<[Summary; 3]>,
    },
}

impl Row {
    pub fn json(&self) -> Value {
        let mut v = json!({
            "backend": self.backend.name(),
            "workload": self.workload,
            "count": self.count,
            "payload_bytes": PAYLOAD,
            "reps": self.reps,
            "durability": self.durability,
        });
        if let Some(c) = self.concurrency {
            v["concurrency"] = json!(c);
        }
        if let Some(b) = self.batch {
            v["batch"] = json!(b);
        }
        if let Some(f) = self.fewest_handled {
            v["fewest_handled"] = json!(f);
            v["time_capped"] = json!(f < self.count);
        }
        match &self.figure {
            Figure::Throughput { ours, raw } => {
                v["unit"] = json!("msg/s");
                v["ours"] = ours.map_or(Value::Null, |s| s.json());
                v["raw"] = raw.map_or(Value::Null, |s| s.json());
                if let (Some(o), Some(r)) = (ours, raw) {
                    v["ratio"] = json!(round(o.median / r.median));
                    v["overhead_us_per_msg"] = json!(round(overhead_us(o.median, r.median)));
                }
            }
            Figure::Latency { ours, raw } => {
                v["unit"] = json!("ms");
                let pct = |s: &Option<[Summary; 3]>| {
                    s.map_or(Value::Null, |[p50, p99, p999]| {
                        json!({ "p50": p50.json(), "p99": p99.json(), "p99.9": p999.json() })
                    })
                };
                v["ours"] = pct(ours);
                v["raw"] = pct(raw);
                if let (Some(o), Some(r)) = (ours, raw) {
                    v["ratio"] = json!(round(o[0].median / r[0].median));
                    v["overhead_us_per_msg"] = json!(round((o[0].median - r[0].median) * 1e3));
                }
            }
        }
        if let Some(calls) = &self.calls {
            v["calls"] = calls.clone();
        }
        if let Some((rss, peak)) = self.rss_kib {
            v["rss_kib"] = json!(rss);
            v["peak_rss_kib"] = json!(peak);
        }
        if let Some(e) = &self.error {
            v["error"] = json!(e);
        }
        v
    }

    pub fn table_line(&self) -> String {
        let (ours, raw, ratio, overhead) = match &self.figure {
            Figure::Throughput { ours, raw } => {
                let fmt = |s: &Option<Summary>| {
                    s.map_or("-".to_owned(), |s| {
                        format!("{} ({}-{})", human(s.median), human(s.min), human(s.max))
                    })
                };
                let (ratio, overhead) = match (ours, raw) {
                    (Some(o), Some(r)) => (
                        format!("{:.2}", o.median / r.median),
                        format!("{:.1}", overhead_us(o.median, r.median)),
                    ),
                    _ => ("-".to_owned(), "-".to_owned()),
                };
                (fmt(ours), fmt(raw), ratio, overhead)
            }
            Figure::Latency { ours, raw } => {
                let fmt = |s: &Option<[Summary; 3]>| {
                    s.map_or("-".to_owned(), |[a, b, c]| {
                        format!("{} / {} / {} ms", ms(a.median), ms(b.median), ms(c.median))
                    })
                };
                let (ratio, overhead) = match (ours, raw) {
                    (Some(o), Some(r)) => (
                        format!("{:.2}", o[0].median / r[0].median),
                        format!("{:.0}", (o[0].median - r[0].median) * 1e3),
                    ),
                    _ => ("-".to_owned(), "-".to_owned()),
                };
                (fmt(ours), fmt(raw), ratio, overhead)
            }
        };
        let mut line = format!(
            "| {:<8} | {:<36} | {:>28} | {:>28} | {:>8} | {:>9} | {:>4} |",
            self.backend.name(),
            self.label,
            ours,
            raw,
            ratio,
            overhead,
            self.reps
        );
        if let Some(e) = &self.error {
            line.push_str(&format!(" error: {e}"));
        }
        line
    }
}

fn ms(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.1}")
    }
}

/// Per-message time of ours minus raw, in µs.
fn overhead_us(ours: f64, raw: f64) -> f64 {
    (1.0 / ours - 1.0 / raw) * 1e6
}

fn table_header() -> String {
    format!(
        "| {:<8} | {:<36} | {:>28} | {:>28} | {:>8} | {:>9} | {:>4} |\n|{}|{}|{}|{}|{}|{}|{}|",
        "backend",
        "workload",
        "ours: median (min-max)",
        "raw ceiling: median (min-max)",
        "ours/raw",
        "µs/msg +",
        "reps",
        "-".repeat(10),
        "-".repeat(38),
        "-".repeat(30),
        "-".repeat(30),
        "-".repeat(10),
        "-".repeat(11),
        "-".repeat(6)
    )
}

/// Prints the table of every row, the durability of each backend and what the columns mean.
pub fn print(rows: &[Row], cap: Duration) {
    println!();
    println!("{}", table_header());
    for row in rows {
        println!("{}", row.table_line());
    }
    println!();
    for row in rows {
        if let Some((rss, peak)) = row.rss_kib {
            println!(
                "RSS after {} / {}: {:.0} MiB (peak so far {:.0} MiB; the harness process, ours \
                 and raw together)",
                row.backend.name(),
                row.label,
                rss as f64 / 1024.0,
                peak as f64 / 1024.0
            );
        }
    }
    let mut seen = Vec::new();
    for row in rows {
        if !seen.contains(&row.backend) {
            seen.push(row.backend);
            println!("durability, {}: {}", row.backend.name(), row.durability);
        }
    }
    println!(
        "Throughput in msg/s; latency from scheduled send to handler start. ours/raw: median \
         ratio (latency: p50 ratio); µs/msg +: per-message time ours minus raw (latency: p50 \
         difference). † the backlog was not drained within the {cap:?} cap: the figure is the \
         rate over the messages handled by then."
    );
}

/// `VmRSS` and `VmHWM` of this process in KiB, where /proc says (Linux).
pub fn rss_kib() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}
