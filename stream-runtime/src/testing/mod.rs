//! A test harness for your own `#[consumer]`s (feature `testing`).
//!
//! [`TestApp`] runs the registered consumers (all, or the ones you name) with your state on
//! the in-memory backend, with the same configuration rules as the [runtime](crate::runtime).
//! You publish to short stream names, call [`TestApp::settle`] to run until nothing is left
//! to do, then look at what happened: every delivery and its outcome, the dead letters with
//! their reasons, the messages of any stream, per-consumer counts.
//!
//! ```
//! use stream_runtime::prelude::*;
//! use stream_runtime::testing::{Counts, TestApp};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Order {
//!     id: u64,
//!     total_cents: i64,
//! }
//!
//! #[consumer(stream = "orders", group = "billing", max_retries = 3)]
//! async fn bill(order: Order, msg: &Message) -> Result<(), HandlerError> {
//!     if order.total_cents < 0 {
//!         return Err(HandlerError::permanent("negative total"));
//!     }
//!     if order.id == 2 && msg.attempt == 1 {
//!         return Err(HandlerError::retry("payment gateway timed out"));
//!     }
//!     Ok(())
//! }
//!
//! // In your crate: #[tokio::test(start_paused = true)]
//! async fn billing() -> Result<(), Box<dyn std::error::Error>> {
//!     let app = TestApp::builder()
//!         .consumers(["bill"])
//!         .config_toml("[defaults]\nretry_delay = \"30s\"")
//!         .start()
//!         .await?;
//!     app.publish("orders", &Order { id: 1, total_cents: 1200 }).await?;
//!     app.publish("orders", &Order { id: 2, total_cents: 800 }).await?;
//!     app.publish("orders", &Order { id: 3, total_cents: -5 }).await?;
//!     app.publish_raw("orders", "not json").await?;
//!
//!     // Order 2 is retried after 30 s: no wall time under the paused clock.
//!     app.settle().await?;
//!
//!     assert_eq!(
//!         app.counts("bill"),
//!         Counts { deliveries: 5, succeeded: 2, failed: 3, retried: 1, dead_lettered: 2, panicked: 0 }
//!     );
//!     let dead = app.dead_letters("orders");
//!     assert_eq!(dead.len(), 2);
//!     assert_eq!(dead[0].reason, "negative total");
//!     assert!(dead[1].reason.starts_with("payload is not a valid"), "{}", dead[1].reason);
//!     app.shutdown().await?;
//!     Ok(())
//! }
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! #     let wall = std::time::Instant::now();
//! #     billing().await?;
//! #     assert!(wall.elapsed() < std::time::Duration::from_secs(5));
//! #     Ok(())
//! # }
//! ```
//!
//! # Time
//!
//! Under tokio's paused clock (`#[tokio::test(start_paused = true)]`, which this feature
//! enables through tokio's `test-util`), retry delays, visibility timeouts and poll
//! intervals pass as soon as nothing else can run, so a consumer with a 30 s retry delay
//! and three retries settles in milliseconds. Without it they take the time they say.
//! The [settle timeout](TestAppBuilder::settle_timeout) is wall-clock time either way.
//!
//! # Which consumers run
//!
//! Every `#[consumer]` linked into the test binary, or only those named with
//! [`TestAppBuilder::consumers`]; the others do not run, even on the same streams. An
//! integration test (`tests/*.rs`) links your library crate once it uses anything from it;
//! if it uses nothing, add `use my_crate as _;`. Consumers defined in a binary
//! (`src/main.rs`) are not visible to tests: move them into the library.
//!
//! # Configuration
//!
//! The same rules as the runtime ([`crate::config`]): `[consumers.<name>]` > the attribute >
//! `[defaults]` > built-in defaults, `enabled = false` included, from an inline TOML text
//! ([`config_toml`](TestAppBuilder::config_toml)), a file
//! ([`config_file`](TestAppBuilder::config_file)) or built-in defaults. The `backend` key is
//! ignored (the harness always runs in memory) and the environment is not read, so a
//! `STREAMS_*` variable on a developer's machine never changes a test's outcome.

mod builder;
mod journal;
mod recorder;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::backend::memory::inspect::StreamView;
use crate::backend::memory::MemoryBackend;
use crate::config::format_duration;
use crate::dead_letter_headers;
use crate::error::{Error, Result};
use crate::message::{Message, MessageId, NewMessage};
use crate::options::{PublishOptions, SubscribeOptions};
use crate::registry::States;
use crate::service::{Consumer, Service};

use builder::ConfigSource;
pub use builder::TestAppBuilder;
use journal::Journal;
pub use journal::{Counts, Delivery, Failure, Outcome};

/// How long [`TestApp::settle`] waits, in wall-clock time, unless told otherwise.
pub const DEFAULT_SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Registered consumers running in memory, with a record of everything they did. See the
/// [module docs](self).
#[derive(Debug)]
pub struct TestApp {
    service: Service,
    memory: Arc<MemoryBackend>,
    journal: Arc<Journal>,
    consumers: Vec<AppConsumer>,
    settle_timeout: Duration,
}

#[derive(Debug)]
struct AppConsumer {
    name: &'static str,
    options: SubscribeOptions,
    consumer: Consumer,
}

/// A wait for the settle report: `250ms`, `29.9s`.
fn until(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// A message in a dead-letter stream, with the headers the engine added read out.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The message as stored in the dead-letter stream (payload and headers kept).
    pub message: Message,
    /// The full name of the stream it came from.
    pub from_stream: String,
    /// Its id there.
    pub original_id: String,
    /// The group that gave up on it.
    pub group: String,
    /// How many attempts it had.
    pub attempts: u32,
    /// Why: the last error (at most 1 KiB).
    pub reason: String,
}

/// [`TestApp::settle`] ran out of time: what was still pending, per consumer.
#[non_exhaustive]
pub struct SettleError {
    /// The timeout that passed.
    pub timeout: Duration,
    /// One line per consumer group and message still pending.
    pub pending: Vec<String>,
}

impl fmt::Display for SettleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the app did not settle within {} (wall-clock time); still pending:",
            format_duration(self.timeout)
        )?;
        for line in &self.pending {
            write!(f, "\n  - {line}")?;
        }
        Ok(())
    }
}

/// The same text as `Display`, so `.unwrap()` and `?` in a test show it readably.
impl fmt::Debug for SettleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for SettleError {}

impl TestApp {
    /// A builder: every registered consumer, built-in defaults, no state.
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            config: ConfigSource::Defaults,
            selected: None,
            states: States::new(),
            middleware: Default::default(),
            settle_timeout: DEFAULT_SETTLE_TIMEOUT,
        }
    }

    /// The service, as a handler or the application would use it (cheap to clone).
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// The names of the consumers running, in name order.
    pub fn consumer_names(&self) -> Vec<&'static str> {
        self.consumers.iter().map(|c| c.name).collect()
    }

    /// The settings a running consumer got from the configuration rules.
    pub fn options(&self, consumer: &str) -> Option<&SubscribeOptions> {
        self.consumers
            .iter()
            .find(|c| c.name == consumer)
            .map(|c| &c.options)
    }

    /// Publishes `value` as JSON to a stream (a short name, as the app would).
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        stream: &str,
        value: &T,
    ) -> Result<MessageId> {
        self.service
            .publish_json(stream, value, PublishOptions::new())
            .await
    }

    /// Publishes bytes as they are (a payload that is not valid JSON, say).
    pub async fn publish_raw(
        &self,
        stream: &str,
        payload: impl Into<Vec<u8>>,
    ) -> Result<MessageId> {
        self.service
            .publish(stream, payload, PublishOptions::new())
            .await
    }

    /// Publishes a message with headers and options.
    pub async fn publish_with(
        &self,
        stream: &str,
        message: NewMessage,
        options: PublishOptions,
    ) -> Result<MessageId> {
        crate::Producer::publish(&self.service, stream, message, options).await
    }

    /// Runs until no message is pending, claimable or due for a retry in any group of the
    /// app's consumers, including messages their handlers published; fails after the
    /// [settle timeout](TestAppBuilder::settle_timeout) listing what is still pending.
    pub async fn settle(&self) -> std::result::Result<(), SettleError> {
        self.settle_within(self.settle_timeout).await
    }

    /// [`settle`](Self::settle) with this timeout (wall-clock time).
    pub async fn settle_within(&self, timeout: Duration) -> std::result::Result<(), SettleError> {
        let deadline = std::time::Instant::now() + timeout;
        let mut changes = self.journal.watch();
        loop {
            changes.borrow_and_update();
            let groups = self
                .consumers
                .iter()
                .map(|c| (c.consumer.stream(), c.consumer.group()));
            if !self.memory.has_work(groups) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                let pending = self.pending();
                // Empty when the last work finished since the check above.
                if pending.is_empty() {
                    return Ok(());
                }
                return Err(SettleError { timeout, pending });
            }
            // Under a paused clock this sleep is virtual, and may end early in wall time:
            // the loop then looks again and sleeps for what is left.
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(left) => {}
            }
        }
    }

    /// One line per message (or run of new messages) still to be handled by the app.
    fn pending(&self) -> Vec<String> {
        let streams = self.memory.streams();
        let now = tokio::time::Instant::now();
        let mut lines = Vec::new();
        for c in &self.consumers {
            let (stream, group) = (c.consumer.stream(), c.consumer.group());
            let Some(g) = streams
                .iter()
                .find(|s| s.name == stream)
                .and_then(|s| s.groups.iter().find(|g| g.name == group))
            else {
                continue;
            };
            let place = format!("consumer {} (stream {stream}, group {group})", c.name);
            for p in &g.pending {
                let last = self
                    .journal
                    .last_failure(stream, group, &p.id.to_string())
                    .map(|f| format!("; last attempt {f}"))
                    .unwrap_or_default();
                let wait = until(p.visible_at.saturating_duration_since(now));
                let what = if p.held {
                    format!(
                        "being handled (attempt {}; the claim expires in {wait})",
                        p.deliveries
                    )
                } else {
                    format!(
                        "waiting for attempt {} (due in {wait})",
                        p.deliveries.saturating_add(1)
                    )
                };
                lines.push(format!("{place}: message {} {what}{last}", p.id));
            }
            if !g.unclaimed.is_empty() {
                let ids: Vec<String> = g.unclaimed.iter().take(10).map(u64::to_string).collect();
                let more = if g.unclaimed.len() > 10 { ", ..." } else { "" };
                lines.push(format!(
                    "{place}: {} message(s) not yet claimed (ids {}{more})",
                    g.unclaimed.len(),
                    ids.join(", ")
                ));
            }
        }
        lines
    }

    /// Every delivery so far, in the order the handlers were called.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.journal.deliveries()
    }

    /// The deliveries to one consumer.
    pub fn deliveries_of(&self, consumer: &str) -> Vec<Delivery> {
        let mut all = self.journal.deliveries();
        all.retain(|d| d.consumer == consumer);
        all
    }

    /// Every delivery that failed (an error or a panic), in order.
    pub fn failures(&self) -> Vec<Delivery> {
        let mut all = self.journal.deliveries();
        all.retain(|d| d.failure().is_some());
        all
    }

    /// How many deliveries one consumer had, by outcome (all zero for a consumer that did
    /// not run).
    pub fn counts(&self, consumer: &str) -> Counts {
        let mut counts = Counts::default();
        for d in self.deliveries_of(consumer) {
            counts.deliveries += 1;
            match &d.outcome {
                Outcome::Succeeded => counts.succeeded += 1,
                Outcome::Retried(_) => counts.retried += 1,
                Outcome::DeadLettered(_) => counts.dead_lettered += 1,
                Outcome::Running | Outcome::Failed(_) => {}
            }
            if let Some(f) = d.failure() {
                counts.failed += 1;
                counts.panicked += usize::from(f.panicked);
            }
        }
        counts
    }

    /// Every message of a stream (a short name, or a full one), in id order: what the test
    /// and the handlers published there. `attempt` is 0 (they are not deliveries).
    pub fn published(&self, stream: &str) -> Vec<Message> {
        let streams = self.memory.streams();
        self.find(&streams, stream)
            .map(|s| s.messages.clone())
            .unwrap_or_default()
    }

    /// The messages of a stream decoded from JSON.
    pub fn published_json<T: serde::de::DeserializeOwned>(
        &self,
        stream: &str,
    ) -> std::result::Result<Vec<T>, serde_json::Error> {
        self.published(stream).iter().map(Message::json).collect()
    }

    /// The dead letters of messages from a stream (a short name, or a full one), from
    /// every dead-letter stream they went to, in order.
    pub fn dead_letters(&self, stream: &str) -> Vec<DeadLetter> {
        use dead_letter_headers as h;
        let streams = self.memory.streams();
        let from = self
            .find(&streams, stream)
            .map(|s| s.name.clone())
            .or_else(|| self.service.stream_name(stream).ok())
            .unwrap_or_else(|| stream.to_owned());
        let mut dead = Vec::new();
        for s in &streams {
            for m in &s.messages {
                if m.header(h::STREAM) != Some(from.as_str()) {
                    continue;
                }
                let header = |name| m.header(name).unwrap_or_default().to_owned();
                dead.push(DeadLetter {
                    from_stream: from.clone(),
                    original_id: header(h::ID),
                    group: header(h::GROUP),
                    attempts: m
                        .header(h::ATTEMPTS)
                        .and_then(|a| a.parse().ok())
                        .unwrap_or_default(),
                    reason: header(h::REASON),
                    message: m.clone(),
                });
            }
        }
        dead
    }

    /// The full names of every stream that has messages or groups, sorted.
    pub fn streams(&self) -> BTreeSet<String> {
        self.memory.streams().into_iter().map(|s| s.name).collect()
    }

    fn find<'a>(&self, streams: &'a [StreamView], stream: &str) -> Option<&'a StreamView> {
        let full = self.service.stream_name(stream).ok();
        streams
            .iter()
            .find(|s| s.name == stream)
            .or_else(|| streams.iter().find(|s| Some(&s.name) == full.as_ref()))
    }

    /// Stops every consumer (each drains within its `shutdown_timeout`). An error if
    /// handlers were still running then and had to be aborted.
    pub async fn shutdown(self) -> Result<()> {
        let report = self.service.close().await?;
        if report.aborted > 0 {
            return Err(Error::Runtime(format!(
                "{} handler(s) were still running at the shutdown timeout and were aborted",
                report.aborted
            )));
        }
        Ok(())
    }
}
