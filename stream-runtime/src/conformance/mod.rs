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

pub mod admin;
pub mod cases;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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
            $crate::__conformance_cases!($factory;
                round_trip,
                batch_publish_keeps_order,
                work_shared_within_group,
                groups_each_get_everything,
                start_latest_skips_backlog,
                start_earliest_replays_backlog,
                start_from_id,
                existing_group_ignores_start,
                invalid_start_id_errors,
                reclaim_after_visibility_timeout,
                attempts_are_exact,
                retry_does_not_wait_for_poll,
                retry_then_dead_letter,
                permanent_error_dead_letters_at_once,
                max_retries_zero,
                unlimited_retries,
                hanging_handler_dead_letters,
                stale_ack_ignored,
                stale_dead_letter_ignored,
                panic_counts_as_error,
                headers_round_trip,
                trim_by_length,
                trim_by_age,
                service_default_trim,
                trimmed_pending_does_not_stall,
                custom_dead_letter_stream,
                app_namespace_overrides,
                upper_case_names,
                push_wakeup,
                concurrency_limit,
                close_drains_in_flight,
                close_aborts_past_shutdown_timeout,
                closed_service_rejects,
                dropped_handle_keeps_running,
                order_with_one_worker,
                invalid_names_rejected,
                payload_limit
            );
            $crate::__conformance_admin_cases!($factory);
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($factory:expr; $($case:ident),* $(,)?) => {
        $crate::__conformance_cases!($factory; in cases; $($case),*);
    };
    ($factory:expr; in $module:ident; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(backend) = $factory.await else { return };
                let harness = $crate::conformance::Harness::new(backend);
                $crate::conformance::$module::$case(&harness).await;
                harness.finish().await;
            }
        )*
    };
}

/// A service on the backend under test, under a random app name.
#[allow(missing_debug_implementations)]
pub struct Harness {
    /// The backend under test.
    pub backend: SharedBackend,
    /// A service on it, app = a random name.
    pub service: Service,
}

impl Harness {
    /// A harness with a fresh random app name.
    pub fn new(backend: SharedBackend) -> Self {
        let config = ServiceConfig::default().app(unique_name("conf"));
        Harness {
            service: Service::from_shared(backend.clone(), config.clone()),
            backend,
        }
    }

    /// Another service on the same backend and app, with other settings.
    pub fn service_with(&self, f: impl FnOnce(ServiceConfig) -> ServiceConfig) -> Service {
        Service::from_shared(self.backend.clone(), f(self.service.config().clone()))
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
        let recorder = self.clone();
        move |m| {
            recorder.record(&m);
            std::future::ready(Ok(()))
        }
    }
}

/// Polls `cond` every few milliseconds until it holds, panicking after [`WAIT`].
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        if Instant::now() > deadline {
            panic!("timed out after {WAIT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
