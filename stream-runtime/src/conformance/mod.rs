//! The backend conformance suite: one set of cases, run against every backend.
//!
//! ```text
//! // tests/memory.rs
//! stream_runtime::conformance_tests!(memory, async {
//!     Some(std::sync::Arc::new(stream_runtime::backend::memory::MemoryBackend::new())
//!         as stream_runtime::backend::SharedBackend)
//! });
//! ```
//!
//! Each case is its own `#[tokio::test]` named after the backend and the case
//! (`memory::retry_then_dead_letter`), and runs under its own random app name, so cases run
//! in parallel against one shared server without seeing each other's streams.
//!
//! The cases live in one file per area ([`delivery`], [`groups`], [`retries`], [`fencing`],
//! [`trim`], [`names`], [`shutdown`], [`backend`], [`admin`], [`heartbeat`], [`delayed`],
//! [`key_order`], [`batch`]); each `pub async fn` there is a case, and
//! the list in [`conformance_tests!`](crate::conformance_tests) must name it (a unit test
//! fails otherwise). [`intercept`] wraps a backend to watch or disturb its calls.

pub mod admin;
pub mod backend;
pub mod batch;
pub mod delayed;
pub mod delivery;
pub mod fencing;
pub mod groups;
pub mod heartbeat;
pub mod intercept;
pub mod key_order;
pub mod names;
pub mod retries;
pub mod shutdown;
mod support;
pub mod trim;

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use self::intercept::{Call, CallWatch};
use crate::backend::SharedBackend;
use crate::error::HandlerError;
use crate::message::Message;
use crate::options::{RetryDelay, ServiceConfig, SubscribeOptions};
use crate::service::Service;

/// How long a case waits for a condition before failing.
pub const WAIT: Duration = Duration::from_secs(15);

/// Returns `None` after printing a loud notice that `backend`'s suite is skipped, or panics
/// when `STREAMS_TEST_REQUIRE_SERVICES=1` (as in CI), where a skip would hide a failure.
pub fn skip_or_fail<T>(backend: &str, reason: &str) -> Option<T> {
    if std::env::var("STREAMS_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
        panic!("{backend} is required (STREAMS_TEST_REQUIRE_SERVICES=1) but unavailable: {reason}");
    }
    eprintln!(
        "\n!!!! SKIPPING {backend} test: {reason}\n!!!! set STREAMS_TEST_REQUIRE_SERVICES=1 to make this a failure\n"
    );
    None
}

/// Generates one `#[tokio::test]` per conformance case in `mod $module`, each getting a
/// backend from `$factory` (an expression evaluating to a future of
/// `Option<SharedBackend>`; `None` skips the case).
#[macro_export]
macro_rules! conformance_tests {
    ($module:ident, $factory:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            use $crate::__conformance_cases;
            $crate::__conformance_list!(__conformance_cases[$factory]);
        }
    };
}

/// Every case, by area (`area: case, ...;`, the area being the module of `conformance`
/// that defines them), handed to the macro `$then` (in scope where this is expanded) after
/// `[$args]`. A new area adds its line here.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_list {
    ($then:ident[$($args:tt)*]) => {
        $then! {
            [$($args)*]
            delivery: round_trip, batch_publish_keeps_order, headers_round_trip, push_wakeup,
                concurrency_limit, order_with_one_worker, payload_limit;
            groups: work_shared_within_group, groups_each_get_everything,
                start_latest_skips_backlog, start_earliest_replays_backlog, start_from_id,
                existing_group_ignores_start, invalid_start_id_errors,
                start_positions_at_the_edges, concurrent_group_creation;
            retries: reclaim_after_visibility_timeout, attempts_are_exact,
                retry_does_not_wait_for_poll, retry_then_dead_letter,
                permanent_error_dead_letters_at_once, max_retries_zero, unlimited_retries,
                hanging_handler_dead_letters, panic_counts_as_error;
            fencing: stale_ack_ignored, stale_dead_letter_ignored,
                mixed_stale_and_fresh_ack_batch, dead_letter_racing_reclaim;
            trim: trim_by_length, trim_by_age, service_default_trim,
                trimmed_pending_does_not_stall, trim_between_claim_and_settle;
            names: custom_dead_letter_stream, app_namespace_overrides, upper_case_names,
                invalid_names_rejected, odd_names, dead_letter_name_over_the_limit_is_refused;
            shutdown: close_drains_in_flight, close_aborts_past_shutdown_timeout,
                closed_service_rejects, dropped_handle_keeps_running,
                aborted_at_shutdown_keeps_its_only_attempt, release_keeps_the_attempt;
            backend: claim_deadline_is_the_claimers, never_durations, ping_answers_until_closed,
                sql_database_matches_the_backend;
            admin: admin_lists_streams, admin_lag_and_pending_are_exact,
                admin_oldest_pending_age_is_the_claims, admin_pending_entries,
                admin_reads_ranges, admin_redrive_moves_back, admin_redrive_is_fenced,
                admin_purge, admin_trim_after_delete;
            heartbeat: heartbeat_extend_keeps_held_claims, heartbeat_extend_ignores_stale_tokens,
                heartbeat_long_handler_runs_once, heartbeat_handler_extends_its_own_claim;
            delayed: delayed_postpone_gives_back_the_attempt, delayed_publish_arrives_on_time,
                delayed_message_survives_restart, delayed_deliver_at_in_the_past_is_at_once;
            key_order: key_order_one_claim_per_key, key_order_retry_holds_its_key_only,
                key_order_dead_letter_releases, key_order_crashed_claim_first,
                key_order_end_to_end;
            batch: batch_handler_acks_in_batches, batch_handler_poison_payload_dead_letters_alone,
                batch_handler_err_retries_the_batch, batch_handler_partial_failure,
                batch_handler_waits_to_fill, batch_handler_options_are_checked;
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ([$factory:expr] $($area:ident: $($case:ident),+ $(,)?;)*) => {
        $($(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(backend) = $factory.await else { return };
                let harness = $crate::conformance::Harness::new(backend);
                $crate::conformance::$area::$case(&harness).await;
                harness.finish().await;
            }
        )+)*
    };
}

/// A service on the backend under test, under a random app name.
#[allow(missing_debug_implementations)]
pub struct Harness {
    /// The backend under test.
    pub backend: SharedBackend,
    /// A service on it, app = a random name.
    pub service: Service,
    /// The backend the services use: `backend` behind a [`CallWatch`].
    watched: SharedBackend,
    calls: Arc<CallWatch>,
}

impl Harness {
    /// A harness with a fresh random app name.
    pub fn new(backend: SharedBackend) -> Self {
        let config = ServiceConfig::default().app(unique_name("conf"));
        let (watched, calls) = CallWatch::wrap(backend.clone());
        Harness {
            service: Service::from_shared(watched.clone(), config),
            backend,
            watched,
            calls,
        }
    }

    /// Another service on the same backend and app, with other settings.
    pub fn service_with(&self, f: impl FnOnce(ServiceConfig) -> ServiceConfig) -> Service {
        Service::from_shared(self.watched.clone(), f(self.service.config().clone()))
    }

    /// Waits until a consumer of the stream `short` (of this harness's app) went idle, so
    /// that what it handles next must be pushed to it or polled.
    pub async fn wait_idle(&self, short: &str) {
        self.calls.wait_idle(&self.full_name(short)).await;
    }

    /// How many `call`s the services made on the stream `short` of this harness's app.
    pub fn calls(&self, call: Call, short: &str) -> usize {
        self.calls.count(call, &self.full_name(short))
    }

    /// The watch on the services' calls, for handlers that wait on it.
    pub fn call_watch(&self) -> Arc<CallWatch> {
        self.calls.clone()
    }

    /// The full name of the stream `short` of this harness's app.
    pub fn full_name(&self, short: &str) -> String {
        self.service
            .stream_name(short)
            .expect("a valid stream name")
    }

    /// Subscribe options with small timings so the suite is fast.
    pub fn options(&self) -> SubscribeOptions {
        SubscribeOptions::new()
            .poll_interval(Duration::from_millis(25))
            .visibility_timeout(Duration::from_secs(10))
            .shutdown_timeout(Duration::from_secs(5))
            .retry_delay(RetryDelay::Fixed(Duration::from_millis(20)))
    }

    /// Closes the service (and with it the backend).
    pub async fn finish(self) {
        if let Err(e) = self.service.close().await {
            panic!("closing the service failed: {e}");
        }
    }
}

/// A name unique to this process and moment, e.g. for apps and groups.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}{:016x}", crate::engine::random_u64())
}

/// Records the messages a handler sees.
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    seen: Arc<Mutex<Vec<Message>>>,
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a message.
    pub fn record(&self, message: &Message) {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(message.clone());
    }

    /// Everything recorded so far.
    pub fn messages(&self) -> Vec<Message> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Payloads recorded so far, as text.
    pub fn payloads(&self) -> Vec<String> {
        self.messages()
            .iter()
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .collect()
    }

    /// How many messages were recorded.
    pub fn len(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until at least `n` messages were recorded.
    pub async fn wait_len(&self, n: usize, what: &str) {
        wait_for(what, || self.len() >= n).await;
    }

    /// Waits until a message with this payload was recorded.
    pub async fn wait_payload(&self, payload: &str) {
        wait_for(&format!("payload {payload:?}"), || {
            self.payloads().iter().any(|p| p == payload)
        })
        .await;
    }

    /// A handler that records every message and succeeds.
    pub fn handler(
        &self,
    ) -> impl Fn(Message) -> std::future::Ready<Result<(), HandlerError>> + Send + Sync + 'static
    {
        self.then(|_| std::future::ready(Ok(())))
    }

    /// A handler that records every message, then hands it to `handler`.
    pub fn then<F, Fut>(&self, handler: F) -> impl Fn(Message) -> Fut + Send + Sync + 'static
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let recorder = self.clone();
        move |m| {
            recorder.record(&m);
            handler(m)
        }
    }
}

/// Polls `cond` every few milliseconds until it holds, panicking after [`WAIT`].
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    wait_for_async(what, || std::future::ready(cond())).await;
}

/// [`wait_for`] with a condition that has to await something (a query, a server call).
pub async fn wait_for_async<F: Future<Output = bool>>(what: &str, cond: impl FnMut() -> F) {
    if !eventually(WAIT, cond).await {
        panic!("timed out after {WAIT:?} waiting for {what}");
    }
}

/// Polls `cond` every few milliseconds until it holds (`true`) or `timeout` passes (`false`),
/// for callers that report a timeout their own way.
pub async fn eventually<F: Future<Output = bool>>(
    timeout: Duration,
    mut cond: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + timeout;
    while !cond().await {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    macro_rules! __conformance_names {
        ([] $($area:ident: $($case:ident),+ $(,)?;)*) => {
            [$($(concat!(stringify!($area), "::", stringify!($case))),+),*]
        };
    }

    /// Every `pub async fn` of an area file is a case, so it must be in the list that
    /// `conformance_tests!` expands, or no backend would ever run it.
    #[test]
    fn every_public_case_is_listed() {
        let listed: BTreeSet<&str> = crate::__conformance_list!(__conformance_names[])
            .into_iter()
            .collect();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/conformance");
        let mut defined = BTreeSet::new();
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path();
            let Some(area) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if path.extension().is_none_or(|e| e != "rs") || area == "mod" {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix("pub async fn ") {
                    let name = rest.split(['(', '<']).next().unwrap_or_default();
                    defined.insert(format!("{area}::{name}"));
                }
            }
        }
        let unlisted: Vec<_> = defined
            .iter()
            .filter(|c| !listed.contains(c.as_str()))
            .collect();
        assert!(
            unlisted.is_empty(),
            "cases missing from the list in conformance/mod.rs: {unlisted:?}"
        );
        assert_eq!(listed.len(), defined.len(), "a case is listed twice");
    }
}
