//! The runtime end to end (D5, D6, D8): registered consumers started from a config, typed
//! payloads, retries, dead letters, overrides, disabled consumers, startup and shutdown
//! errors; on every backend in the build (memory and SQLite always; Postgres and Redis
//! when their servers answer).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use stream_runtime::config::Config;
use stream_runtime::conformance::{eventually, WAIT};
use stream_runtime::engine::Handler;
use stream_runtime::registry::{Attributes, ConsumerDef, Location, States};
use stream_runtime::runtime::{Runtime, Started};
use stream_runtime::{
    dead_letter_headers, handler_fn, HandlerError, MaxRetries, Message, PublishOptions, Publisher,
    Service, ServiceConfig, StartPosition, State, SubscribeOptions,
};
use stream_tests::{temp_dir, Logs};
use tokio::sync::watch;

// ---------------------------------------------------------------------------------------
// Consumers, registered by hand as `#[consumer]` would register them.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u32,
    amount_cents: i64,
}

/// Shared state every test consumer records into; one per runtime.
#[derive(Clone, Default)]
struct Probe(Arc<ProbeInner>);

#[derive(Default)]
struct ProbeInner {
    events: Mutex<Vec<String>>,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    gate: Mutex<Option<watch::Receiver<bool>>>,
}

impl Probe {
    fn record(&self, event: impl Into<String>) {
        self.0
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event.into());
    }

    fn events(&self) -> Vec<String> {
        self.0
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn count(&self, prefix: &str) -> usize {
        self.events()
            .iter()
            .filter(|e| e.starts_with(prefix))
            .count()
    }

    /// Waits until `done` holds, or panics with the events after [`WAIT`].
    async fn wait_for(&self, what: &str, done: impl Fn(&Probe) -> bool) {
        if !eventually(WAIT, || std::future::ready(done(self))).await {
            panic!(
                "timed out after {WAIT:?} waiting for {what}; events: {:?}",
                self.events()
            );
        }
    }
}

fn probe(states: &States) -> stream_runtime::Result<Probe> {
    states
        .get::<Probe>()
        .map(|state| Probe::clone(&state))
        .ok_or_else(|| stream_runtime::Error::Config("the tests' Probe state is missing".into()))
}

/// What `#[consumer]` generates for a typed payload: decode JSON, a decode failure is
/// permanent (D8).
fn json_handler<T, F, Fut>(f: F) -> Handler
where
    T: serde::de::DeserializeOwned + Send + 'static,
    F: Fn(T, Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let f = Arc::new(f);
    handler_fn(move |msg: Message| {
        let f = f.clone();
        async move {
            let value: T = msg.json().map_err(|e| {
                HandlerError::permanent(format!(
                    "could not decode the payload as {}: {e}",
                    std::any::type_name::<T>()
                ))
            })?;
            f(value, msg).await
        }
    })
}

const fn here(line: u32) -> Location {
    Location {
        file: file!(),
        line,
    }
}

/// Typed orders: records each decoded order.
fn build_typed(states: &States) -> stream_runtime::Result<Handler> {
    let probe = probe(states)?;
    Ok(json_handler(move |order: Order, msg: Message| {
        let probe = probe.clone();
        async move {
            probe.record(format!(
                "typed {} {} {}",
                order.id, order.amount_cents, msg.attempt
            ));
            Ok(())
        }
    }))
}
inventory::submit! {
    ConsumerDef::__new("typed", "orders", "billing", Attributes::NONE, here(line!()), "Order", build_typed)
}

/// Fails the first attempt of every message, then succeeds.
fn build_flaky(states: &States) -> stream_runtime::Result<Handler> {
    let probe = probe(states)?;
    Ok(json_handler(move |order: Order, msg: Message| {
        let probe = probe.clone();
        async move {
            probe.record(format!("flaky {} attempt {}", order.id, msg.attempt));
            if msg.attempt == 1 {
                return Err(HandlerError::retry("card declined, try again"));
            }
            probe.record(format!("flaky-ok {}", order.id));
            Ok(())
        }
    }))
}
inventory::submit! {
    ConsumerDef::__new("flaky", "payments", "charge", Attributes::NONE, here(line!()), "Order", build_flaky)
}

/// Always fails; the attribute allows one retry.
const ONE_RETRY: Attributes = {
    let mut a = Attributes::NONE;
    a.max_retries = Some(MaxRetries::Limited(1));
    a
};
fn build_always_fails(states: &States) -> stream_runtime::Result<Handler> {
    let probe = probe(states)?;
    Ok(handler_fn(move |msg: Message| {
        let probe = probe.clone();
        async move {
            probe.record(format!("fails attempt {}", msg.attempt));
            Err(HandlerError::retry("warehouse offline"))
        }
    }))
}
inventory::submit! {
    ConsumerDef::__new("always_fails", "shipments", "shipping", ONE_RETRY, here(line!()), "bytes", build_always_fails)
}

/// Watches the dead-letter streams of `orders` and `shipments`.
fn build_dead_watch(states: &States) -> stream_runtime::Result<Handler> {
    let probe = probe(states)?;
    Ok(handler_fn(move |msg: Message| {
        let probe = probe.clone();
        async move {
            probe.record(format!(
                "dead from={} attempts={} reason={}",
                msg.header(dead_letter_headers::STREAM).unwrap_or("?"),
                msg.header(dead_letter_headers::ATTEMPTS).unwrap_or("?"),
                msg.header(dead_letter_headers::REASON).unwrap_or("?"),
            ));
            Ok(())
        }
    }))
}
const EARLIEST: Attributes = {
    let mut a = Attributes::NONE;
    a.start = Some("earliest");
    a
};
inventory::submit! {
    ConsumerDef::__new("dead_orders", "orders.dead", "audit", EARLIEST, here(line!()), "bytes", build_dead_watch)
}
inventory::submit! {
    ConsumerDef::__new("dead_shipments", "shipments.dead", "audit", EARLIEST, here(line!()), "bytes", build_dead_watch)
}

/// Holds every message until the test opens the gate, counting how many run at once.
fn build_gated(states: &States) -> stream_runtime::Result<Handler> {
    let probe = probe(states)?;
    Ok(handler_fn(move |_msg: Message| {
        let probe = probe.clone();
        async move {
            let now = probe.0.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            probe.0.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let gate = probe
                .0
                .gate
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(mut gate) = gate {
                let _ = gate.wait_for(|open| *open).await;
            }
            probe.0.in_flight.fetch_sub(1, Ordering::SeqCst);
            probe.record("gated done");
            Ok(())
        }
    }))
}
inventory::submit! {
    ConsumerDef::__new("gated", "work", "workers", Attributes::NONE, here(line!()), "bytes", build_gated)
}

/// Started only when a test enables it.
fn build_optional(states: &States) -> stream_runtime::Result<Handler> {
    let probe = probe(states)?;
    Ok(handler_fn(move |_msg: Message| {
        let probe = probe.clone();
        async move {
            probe.record("optional");
            Ok(())
        }
    }))
}
inventory::submit! {
    ConsumerDef::__new("optional", "extras", "extras", Attributes::NONE, here(line!()), "bytes", build_optional)
}

// ---------------------------------------------------------------------------------------
// Harness.

/// Consume, then publish: a real `#[consumer]` taking a `Publisher`, bound to the
/// consumer's namespace (`accounts`), so "invoices" is `<app>.accounts.invoices`.
#[stream_runtime::consumer(stream = "checkout", group = "invoicing", namespace = "accounts")]
async fn invoice(order: Order, publisher: Publisher) -> Result<(), stream_runtime::Error> {
    publisher
        .publish_json(
            "invoices",
            &order,
            PublishOptions::new().header("from", "invoice"),
        )
        .await?;
    Ok(())
}

/// Reads what `invoice` published.
#[stream_runtime::consumer(stream = "invoices", group = "mailing", namespace = "accounts")]
async fn mail_invoice(order: Order, msg: &Message, probe: State<Probe>) -> Result<(), String> {
    probe.record(format!(
        "invoice {} on {} from {}",
        order.id,
        msg.stream,
        msg.header("from").unwrap_or("?")
    ));
    Ok(())
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn unique(test: &str) -> String {
    format!(
        "{test}-{}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default()
    )
}

/// The error of a runtime on memory that fails to start.
async fn startup_error(test: &str, extra: &str, env: &[(&str, &str)], why: &str) -> String {
    startup_failure(test, extra, env, why).await.to_string()
}

/// The error `start` returns for a config that cannot start.
async fn startup_failure(
    test: &str,
    extra: &str,
    env: &[(&str, &str)],
    why: &str,
) -> stream_runtime::Error {
    Runtime::new()
        .config(config("memory://", test, extra, env))
        .state(Probe::default())
        .start()
        .await
        .expect_err(why)
}

/// A config for one test: its own app name, fast timings, plus `extra` TOML.
fn config(url: &str, test: &str, extra: &str, env: &[(&str, &str)]) -> Config {
    let dir = temp_dir(test);
    let path = dir.join("Streams.toml");
    let app = format!("t{}", unique(test).replace('-', ""));
    let text = format!(
        r#"
backend = "{url}"
app = "{app}"
namespace = "e2e"

[defaults]
poll_interval = "20ms"
visibility_timeout = "5s"
retry_delay = "20ms"
shutdown_timeout = "5s"
start = "earliest"

{extra}
"#
    );
    std::fs::write(&path, text).expect("write Streams.toml");
    Config::loader()
        .file(&path)
        .env(env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .load()
        .expect("test config loads")
}

async fn start(config: Config, probe: &Probe) -> Started {
    Runtime::new()
        .config(config)
        .state(probe.clone())
        .start()
        .await
        .expect("runtime starts")
}

mod cases;
mod secrets;
mod startup;

use cases::*;

macro_rules! backend_cases {
    ($kind:ident: $($case:ident),* $(,)?) => {
        mod $kind {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(url) = stream_tests::backend_url(stringify!($kind)).await {
                        super::$case(url).await;
                    }
                }
            )*
        }
    };
}

macro_rules! all_backends {
    ($($kind:ident),*) => {
        $(backend_cases!($kind:
            typed_payload_decoded,
            failed_attempt_is_retried,
            exhausted_and_poison_messages_are_dead_lettered,
            config_override_changes_concurrency,
            env_override_wins_over_file,
            disabled_consumer_is_not_started,
            handler_publishes_through_the_macro_and_the_runtime,
            handler_publishes_through_the_programmatic_api,
            middleware_wraps_every_consumer,
        );)*
    };
}

all_backends!(memory, sqlite, postgres, redis);
