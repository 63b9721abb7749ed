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

// ---------------------------------------------------------------------------------------
// Cases, each an async fn of the backend URL.

async fn typed_payload_decoded(url: String) {
    let probe = Probe::default();
    let rt = start(config(&url, "typed", "", &[]), &probe).await;
    let order = Order {
        id: 7,
        amount_cents: 1999,
    };
    rt.service()
        .publish_json("orders", &order, PublishOptions::new())
        .await
        .expect("publish");
    probe
        .wait_for("the typed order", |p| p.count("typed 7 1999 1") == 1)
        .await;
    rt.shutdown().await.expect("clean shutdown");
}

async fn failed_attempt_is_retried(url: String) {
    let probe = Probe::default();
    let rt = start(config(&url, "retry", "", &[]), &probe).await;
    for id in 1..=3 {
        let order = Order {
            id,
            amount_cents: 100,
        };
        rt.service()
            .publish_json("payments", &order, PublishOptions::new())
            .await
            .expect("publish");
    }
    probe
        .wait_for("three orders to succeed on their second attempt", |p| {
            p.count("flaky-ok") == 3
        })
        .await;
    for id in 1..=3 {
        assert_eq!(probe.count(&format!("flaky {id} attempt 1")), 1);
        assert_eq!(probe.count(&format!("flaky {id} attempt 2")), 1);
    }
    rt.shutdown().await.expect("clean shutdown");
}

async fn exhausted_and_poison_messages_are_dead_lettered(url: String) {
    let probe = Probe::default();
    let rt = start(config(&url, "dead", "", &[]), &probe).await;
    let service = rt.service().clone();
    service
        .publish("shipments", "parcel", PublishOptions::new())
        .await
        .expect("publish");
    service
        .publish("orders", "{not json", PublishOptions::new())
        .await
        .expect("publish poison");
    probe
        .wait_for("two dead letters", |p| p.count("dead ") == 2)
        .await;
    let events = probe.events();
    let shipments = service.stream_name("shipments").expect("name");
    let orders = service.stream_name("orders").expect("name");
    assert!(
        events.contains(&format!(
            "dead from={shipments} attempts=2 reason=warehouse offline"
        )),
        "max_retries = 1 from the attribute gives two attempts: {events:?}"
    );
    assert_eq!(probe.count("fails attempt"), 2, "{events:?}");
    let poison = events
        .iter()
        .find(|e| e.starts_with(&format!("dead from={orders} attempts=1 ")))
        .unwrap_or_else(|| panic!("poison message dead-lettered on its first attempt: {events:?}"));
    assert!(poison.contains("could not decode"), "{poison}");
    assert_eq!(
        probe.count("typed"),
        0,
        "the poison never reached the handler"
    );
    rt.shutdown().await.expect("clean shutdown");
}

/// Publishes 8 messages to the gated consumer and returns how many ran at once.
async fn observed_concurrency(url: &str, test: &str, extra: &str, env: &[(&str, &str)]) -> u64 {
    let probe = Probe::default();
    let (open, gate) = watch::channel(false);
    *probe.0.gate.lock().unwrap_or_else(|e| e.into_inner()) = Some(gate);
    let config = config(url, test, extra, env);
    let expected = config
        .resolve("gated", &Attributes::NONE)
        .options
        .concurrency as u64;
    let rt = start(config, &probe).await;
    let options = &rt
        .consumers()
        .iter()
        .find(|c| c.name == "gated")
        .expect("gated started")
        .options;
    assert_eq!(options.concurrency as u64, expected);
    for i in 0..8 {
        rt.service()
            .publish("work", format!("job {i}"), PublishOptions::new())
            .await
            .expect("publish");
    }
    probe
        .wait_for("the workers to fill up", |p| {
            p.0.in_flight.load(Ordering::SeqCst) == expected
        })
        .await;
    open.send_replace(true);
    probe
        .wait_for("every job", |p| p.count("gated done") == 8)
        .await;
    rt.shutdown().await.expect("clean shutdown");
    probe.0.max_in_flight.load(Ordering::SeqCst)
}

async fn config_override_changes_concurrency(url: String) {
    let seen =
        observed_concurrency(&url, "conc", "[consumers.gated]\nconcurrency = 3\n", &[]).await;
    assert_eq!(seen, 3);
}

async fn env_override_wins_over_file(url: String) {
    let seen = observed_concurrency(
        &url,
        "env",
        "[consumers.gated]\nconcurrency = 2\n",
        &[("STREAMS_CONSUMERS__GATED__CONCURRENCY", "4")],
    )
    .await;
    assert_eq!(seen, 4);
}

async fn disabled_consumer_is_not_started(url: String) {
    let probe = Probe::default();
    let rt = start(
        config(
            &url,
            "disabled",
            "[consumers.optional]\nenabled = false\n",
            &[],
        ),
        &probe,
    )
    .await;
    let names: Vec<&str> = rt.consumers().iter().map(|c| c.name).collect();
    assert!(!names.contains(&"optional"), "{names:?}");
    assert!(names.contains(&"typed"), "{names:?}");
    rt.service()
        .publish("extras", "x", PublishOptions::new())
        .await
        .expect("publish");
    rt.service()
        .publish_json(
            "orders",
            &Order {
                id: 1,
                amount_cents: 1,
            },
            PublishOptions::new(),
        )
        .await
        .expect("publish");
    // The enabled consumer handled its message; by then the disabled one would have had time.
    probe
        .wait_for("the typed order", |p| p.count("typed 1") == 1)
        .await;
    assert_eq!(probe.count("optional"), 0);
    rt.shutdown().await.expect("clean shutdown");
}

async fn handler_publishes_through_the_macro_and_the_runtime(url: String) {
    let probe = Probe::default();
    let rt = start(config(&url, "publishing", "", &[]), &probe).await;
    let order = Order {
        id: 31,
        amount_cents: 100,
    };
    rt.service()
        .publish_json(
            "checkout",
            &order,
            PublishOptions::new().namespace("accounts"),
        )
        .await
        .expect("publish");
    let invoices = rt.service().config().app.clone() + ".accounts.invoices";
    let expected = format!("invoice 31 on {invoices} from invoice");
    probe
        .wait_for("the invoice published by the handler", |p| {
            p.count(&expected) == 1
        })
        .await;
    rt.shutdown().await.expect("clean shutdown");
}

/// Middleware given to the runtime wraps every consumer: it sees each message with its
/// group before the handler, and can refuse one (here permanently: straight to the
/// dead-letter stream, whose consumer it wraps too).
async fn middleware_wraps_every_consumer(url: String) {
    let probe = Probe::default();
    let seen = probe.clone();
    let rt = Runtime::new()
        .config(config(&url, "middleware", "", &[]))
        .state(probe.clone())
        .middleware(move |msg: Message, next: stream_runtime::Next| {
            let seen = seen.clone();
            async move {
                seen.record(format!("mw {} {}", msg.stream, next.group()));
                // A dead letter keeps the original's headers: let it through.
                let dead = msg.header(dead_letter_headers::STREAM).is_some();
                if msg.header("reject").is_some() && !dead {
                    return Err(HandlerError::permanent("refused by the middleware"));
                }
                let outcome = next.run(msg).await;
                seen.record(format!("mw after ok={}", outcome.is_ok()));
                outcome
            }
        })
        .start()
        .await
        .expect("runtime starts");
    let orders = rt.service().stream_name("orders").expect("name");
    let order = Order {
        id: 5,
        amount_cents: 10,
    };
    let service = rt.service();
    service
        .publish_json("orders", &order, PublishOptions::new())
        .await
        .expect("publish");
    service
        .publish_json(
            "orders",
            &order,
            PublishOptions::new().header("reject", "1"),
        )
        .await
        .expect("publish");
    let (billing, audit) = (
        format!("mw {orders} billing"),
        format!("mw {orders}.dead audit"),
    );
    probe
        .wait_for(
            "both messages through the middleware, one dead-lettered",
            |p| {
                p.count(&billing) == 2
                    && p.count("typed 5 10 1") == 1
                    && p.count(&audit) == 1
                    && p.count("dead from=")
                        == p.count(&format!(
                            "dead from={orders} attempts=1 reason=refused by the middleware"
                        ))
                    && p.count("dead from=") == 1
            },
        )
        .await;
    assert!(probe.count("mw after ok=true") >= 2, "{:?}", probe.events());
    rt.shutdown().await.expect("clean shutdown");
}

/// The next outcome a test handler reports, within 10 s.
async fn next(outcomes: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(10), outcomes.recv())
        .await
        .ok()
        .flatten()
        .expect("an outcome within 10s")
}

/// `Service::subscribe_with_publisher`: the handler gets a `Publisher` bound to the
/// subscription's namespace, and can still publish while the consumer drains at close.
async fn handler_publishes_through_the_programmatic_api(url: String) {
    let app = format!("t{}", unique("pubapi").replace('-', ""));
    let service = Service::connect(&url, ServiceConfig::default().app(app.clone()))
        .await
        .expect("connect");
    let (sent, mut outcomes) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (open, gate) = watch::channel(false);
    let fast = SubscribeOptions::new()
        .start(StartPosition::Earliest)
        .poll_interval(Duration::from_millis(20))
        .namespace("accounts");
    let tell = sent.clone();
    service
        .subscribe_with_publisher(
            "checkout",
            "invoicing",
            move |msg: Message, publisher: Publisher| {
                let (tell, mut gate) = (tell.clone(), gate.clone());
                async move {
                    if &msg.payload[..] == b"slow" {
                        let _ = tell.send("slow started".to_owned());
                        let _ = gate.wait_for(|open| *open).await;
                    }
                    let published = publisher
                        .publish("invoices", msg.payload.to_vec(), PublishOptions::new())
                        .await;
                    let _ = tell.send(format!("published: {}", published.is_ok()));
                    published?;
                    Ok(())
                }
            },
            fast.clone(),
        )
        .await
        .expect("subscribe");
    service
        .subscribe(
            "invoices",
            "mailing",
            move |msg: Message| {
                let sent = sent.clone();
                async move {
                    let text = String::from_utf8_lossy(&msg.payload).into_owned();
                    let _ = sent.send(format!("invoice {text} on {}", msg.stream));
                    Ok(())
                }
            },
            fast,
        )
        .await
        .expect("subscribe");
    let accounts = PublishOptions::new().namespace("accounts");
    service
        .publish("checkout", "order-1", accounts.clone())
        .await
        .expect("publish");
    // The reader may see the invoice before the publishing handler reports back.
    let mut two = [next(&mut outcomes).await, next(&mut outcomes).await];
    two.sort();
    assert_eq!(
        two,
        [
            format!("invoice order-1 on {app}.accounts.invoices"),
            "published: true".to_owned()
        ]
    );

    // A handler still running when close starts publishes during the drain.
    service
        .publish("checkout", "slow", accounts)
        .await
        .expect("publish");
    assert_eq!(next(&mut outcomes).await, "slow started");
    let closing = tokio::spawn({
        let service = service.clone();
        async move { service.close().await }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Subscribing is refused as soon as close has started.
        let probe = service
            .subscribe("probe", "g", |_| async { Ok(()) }, SubscribeOptions::new())
            .await;
        if matches!(probe, Err(stream_runtime::Error::Closed)) {
            break;
        }
        assert!(Instant::now() < deadline, "close did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    open.send_replace(true);
    // (The reader, still draining too, may or may not see that invoice first.)
    let mut outcome = next(&mut outcomes).await;
    while outcome.starts_with("invoice slow") {
        outcome = next(&mut outcomes).await;
    }
    assert_eq!(outcome, "published: true");
    let report = closing.await.expect("close task").expect("close");
    assert_eq!(report.aborted, 0);
    let after = service
        .publish("checkout", "late", PublishOptions::new())
        .await;
    assert!(
        matches!(after, Err(stream_runtime::Error::Closed)),
        "{after:?}"
    );
}

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

// ---------------------------------------------------------------------------------------
// Startup and shutdown errors (memory backend).

#[tokio::test]
async fn consumer_that_cannot_start_is_an_error_naming_it() {
    let error = startup_failure(
        "badstart",
        "[consumers.typed]\nstart = \"not-an-id\"\n",
        &[],
        "an unparsable start id stops startup",
    )
    .await;
    let stream_runtime::Error::ConsumerStart {
        consumer,
        location,
        source,
        ..
    } = &error
    else {
        panic!("not a consumer start error: {error:?}");
    };
    assert_eq!(*consumer, "typed");
    assert_eq!(location.file, file!(), "names the registration: {error}");
    assert!(
        matches!(**source, stream_runtime::Error::InvalidStartId { ref id, .. } if id == "not-an-id"),
        "keeps its cause: {source:?}"
    );
    let err = error.to_string();
    assert!(err.contains("typed") && err.contains("not-an-id"), "{err}");
}

/// A consumer dead-lettering into its own stream would see every dead letter again, forever:
/// an error naming the consumer, not a hot loop.
#[tokio::test]
async fn dead_letter_into_the_consumers_own_stream_is_an_error() {
    let err = startup_error(
        "selfdead",
        "[consumers.typed]\ndead_letter = \"orders\"\n",
        &[],
        "dead letters into the consumer's own stream",
    )
    .await;
    assert!(
        err.contains("typed") && err.contains("dead_letter") && err.contains("own stream"),
        "{err}"
    );
}

/// An invalid `dead_letter` name is reported as the dead-letter option, not as the stream.
#[tokio::test]
async fn invalid_dead_letter_name_is_named_as_such() {
    // Refused when the file is read, as the attribute refuses it at compile time.
    let path = temp_dir("baddead").join("Streams.toml");
    std::fs::write(
        &path,
        "backend = \"memory://\"\n[consumers.typed]\ndead_letter = \"bad name\"\n",
    )
    .expect("write Streams.toml");
    let err = Config::loader()
        .file(&path)
        .env(Vec::<(String, String)>::new())
        .load()
        .expect_err("a space in the dead-letter name")
        .to_string();
    assert!(
        err.contains("`consumers.typed.dead_letter`")
            && err.contains("invalid name \"bad name\"")
            && err.contains(&path.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn missing_state_is_an_error_naming_the_consumer() {
    let config = config("memory://", "nostate", "", &[]);
    let err = Runtime::new()
        .config(config)
        .start()
        .await
        .expect_err("no Probe state")
        .to_string();
    assert!(err.contains("Probe state is missing"), "{err}");
}

#[tokio::test]
async fn unknown_consumer_table_is_an_error() {
    let err = startup_error("typo", "[consumers.typd]\nconcurrency = 2\n", &[], "typo").await;
    assert!(
        err.contains("[consumers.typd]") && err.contains("typed"),
        "{err}"
    );
}

#[tokio::test]
async fn handlers_aborted_at_shutdown_make_shutdown_fail() {
    let probe = Probe::default();
    let (_open, gate) = watch::channel(false);
    *probe.0.gate.lock().unwrap_or_else(|e| e.into_inner()) = Some(gate);
    let rt = start(
        config(
            "memory://",
            "abort",
            "[consumers.gated]\nshutdown_timeout = \"100ms\"\n",
            &[],
        ),
        &probe,
    )
    .await;
    rt.service()
        .publish("work", "stuck", PublishOptions::new())
        .await
        .expect("publish");
    probe
        .wait_for("the stuck handler", |p| {
            p.0.in_flight.load(Ordering::SeqCst) == 1
        })
        .await;
    let err = rt
        .shutdown()
        .await
        .expect_err("an aborted handler is a failed shutdown");
    assert!(err.to_string().contains("1 handler(s)"), "{err}");
}

#[tokio::test]
async fn run_until_returns_when_the_app_future_ends_and_reports_its_error() {
    let probe = Probe::default();
    let p = probe.clone();
    Runtime::new()
        .config(config("memory://", "rununtil", "", &[]))
        .state(probe.clone())
        .run_until(|service| async move {
            service
                .publish_json(
                    "orders",
                    &Order {
                        id: 3,
                        amount_cents: 5,
                    },
                    PublishOptions::new(),
                )
                .await?;
            p.wait_for("the order", |p| p.count("typed 3") == 1).await;
            Ok::<_, stream_runtime::Error>(())
        })
        .await
        .expect("clean run");

    let err = Runtime::new()
        .config(config("memory://", "rununtil-err", "", &[]))
        .state(probe)
        .run_until(|_service| async { Err::<(), _>("the app gave up") })
        .await
        .expect_err("the app's error is returned");
    assert!(
        matches!(err, stream_runtime::Error::Application(_)),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// Secrets.

#[tokio::test(flavor = "current_thread")]
async fn password_is_never_logged_or_shown_in_errors() {
    let (logs, _guard) = Logs::capture();

    // The memory backend ignores the rest of the URL: a password there must still be hidden.
    let probe = Probe::default();
    let rt = start(
        config("memory://app:hunter2@localhost", "secret", "", &[]),
        &probe,
    )
    .await;
    rt.shutdown().await.expect("clean shutdown");
    let text = logs.text();
    assert!(text.contains("memory://app:***@localhost"), "{text}");
    assert!(text.contains("consumer typed started: stream "), "{text}");
    // The start position only matters for a new group: on a rerun the cursor wins.
    assert!(
        text.contains("start earliest (if the group is new)"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");

    // An unreachable server: a clear error with the URL redacted.
    let mut vars = BTreeMap::new();
    vars.insert(
        "STREAMS_BACKEND",
        "postgres://app:hunter2@127.0.0.1:1/nothing",
    );
    let err = startup_error(
        "unreachable",
        "",
        &vars.into_iter().collect::<Vec<_>>(),
        "nothing listens on port 1",
    )
    .await;
    assert!(
        err.contains("postgres://app:***@127.0.0.1:1/nothing"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    assert!(!logs.text().contains("hunter2"), "{}", logs.text());
    eprintln!("{}\n{err}", logs.text());
}

#[tokio::test]
async fn service_settings_come_from_the_config() {
    let rt = start(
        config(
            "memory://",
            "svc",
            "",
            &[
                ("STREAMS_NAMESPACE", "fromenv"),
                ("STREAMS_MAX_PAYLOAD_BYTES", "16"),
                ("STREAMS_MAX_LEN", "2"),
            ],
        ),
        &Probe::default(),
    )
    .await;
    let service = rt.service().clone();
    assert_eq!(service.config().max_payload_bytes, 16);
    assert_eq!(service.config().max_len, 2);
    assert_eq!(service.config().namespace, "fromenv");
    let err = service
        .publish("extras", vec![0u8; 17], PublishOptions::new())
        .await
        .expect_err("over the configured cap");
    assert!(
        matches!(
            err,
            stream_runtime::Error::PayloadTooLarge {
                size: 17,
                limit: 16
            }
        ),
        "{err}"
    );
    rt.shutdown().await.expect("clean shutdown");
}

/// Set only in the child process of `a_runtime_without_a_subscriber_says_so_on_stderr`.
const SILENT_CHILD_ENV: &str = "STREAMS_TEST_SILENT_RUNTIME_CHILD";

/// The child: runs a runtime with no tracing subscriber installed. Does nothing unless
/// [`SILENT_CHILD_ENV`] is set.
#[tokio::test]
async fn silent_runtime_child() {
    if std::env::var(SILENT_CHILD_ENV).is_err() {
        return;
    }
    Runtime::new()
        .config(config("memory://", "silent", "", &[]))
        .state(Probe::default())
        .run_until(|_service| async { Ok::<_, stream_runtime::Error>(()) })
        .await
        .expect("the runtime runs");
}

/// `stream_runtime::run()` in a `main` with no tracing subscriber would start, fail or stop
/// without a word: the runtime says so on stderr, with the fix.
#[test]
fn a_runtime_without_a_subscriber_says_so_on_stderr() {
    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "silent_runtime_child", "--nocapture"])
        .env(SILENT_CHILD_ENV, "1")
        .output()
        .expect("run the child");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("no tracing subscriber is installed")
            && stderr.contains("tracing_subscriber::fmt::init()"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("no tracing subscriber").count(),
        1,
        "{stderr}"
    );
}

/// Runs the runtime's startup on `backend` with the log captured: (log, error if any).
async fn start_logged(backend: &str, env: &[(&str, &str)]) -> (String, Option<String>) {
    let (logs, _guard) = Logs::capture();
    let mut vars = vec![("STREAMS_BACKEND", backend)];
    vars.extend_from_slice(env);
    let config = config("memory://", "logged", "", &vars);
    let error = match Runtime::new()
        .config(config)
        .state(Probe::default())
        .start()
        .await
    {
        Ok(started) => {
            started.shutdown().await.expect("clean shutdown");
            None
        }
        Err(e) => Some(e.to_string()),
    };
    (logs.text(), error)
}

/// Every way a driver takes a password (URL userinfo, `?password=`, libpq `key=value`
/// strings, quoted or not), on every backend: the INFO "connecting" line and the error show
/// the string with `***` in its place, and keep the text around it.
#[tokio::test(flavor = "current_thread")]
async fn every_password_form_is_hidden_in_logs_and_errors_on_every_backend() {
    let missing = temp_dir("no-such-dir").join("missing").join("streams.db");
    let sqlite_query = format!("sqlite://{}?password=topsecret", missing.display());
    let sqlite_userinfo = format!("sqlite://u:topsecret@/{}", missing.display());
    let cases: Vec<(&str, &str)> = vec![
        ("memory://u:topsecret@localhost", "topsecret"),
        ("memory://localhost?password=topsecret&x=1", "topsecret"),
        (&sqlite_query, "topsecret"),
        (&sqlite_userinfo, "topsecret"),
        ("postgres://u:topsecret@127.0.0.1:1/db", "topsecret"),
        ("postgres://u:top%40secret@127.0.0.1:1/db", "top%40secret"),
        (
            "postgres://u@127.0.0.1:1/db?password=topsecret",
            "topsecret",
        ),
        (
            "postgresql://u@127.0.0.1:1/db?sslmode=disable&password=topsecret",
            "topsecret",
        ),
        ("redis://:topsecret@127.0.0.1:1", "topsecret"),
        ("redis://u:topsecret@127.0.0.1:1/0", "topsecret"),
        ("redis://127.0.0.1:1/0?password=topsecret", "topsecret"),
        (
            "host=127.0.0.1 port=5499 user=u password=topsecret",
            "topsecret",
        ),
        ("host=127.0.0.1 password='top secret' user=u", "top secret"),
        ("password = topsecret host=127.0.0.1", "topsecret"),
    ];
    for (url, secret) in cases {
        let (log, error) = start_logged(url, &[]).await;
        let shown = stream_runtime::backend::redact_url(url);
        assert!(!shown.contains(secret), "{url} shown as {shown}");
        assert!(
            log.contains(&format!("connecting to {shown} (app")),
            "{url}: the log names the redacted string: {log}"
        );
        for text in [Some(&log), error.as_ref()].into_iter().flatten() {
            assert!(!text.contains(secret), "{url}: {text}");
            assert!(!text.contains("top@secret"), "{url}: {text}");
        }
        if url.starts_with("memory:") {
            assert_eq!(error, None, "{url}");
            continue;
        }
        let error = error.unwrap_or_else(|| panic!("{url} started"));
        assert!(
            error.contains(&format!("{shown}:")) || error.contains(&format!("{shown} ")),
            "{url}: the error names the redacted string with its separator: {error}"
        );
    }
}

/// A refused connection names the server once and says what to check; a server that
/// accepts the connection but never answers fails after `connect_timeout` with the same
/// words on Postgres and Redis.
#[tokio::test(flavor = "current_thread")]
async fn connection_failures_say_what_to_check() {
    for url in ["postgres://u@127.0.0.1:1/db", "redis://127.0.0.1:1"] {
        let (_, error) = start_logged(url, &[]).await;
        let error = error.unwrap_or_else(|| panic!("{url} started"));
        assert_eq!(error.matches(url).count(), 1, "{error}");
        assert!(
            error.contains("is the server running, and are the host and port right?"),
            "{error}"
        );
    }

    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    for url in [
        format!("postgres://u@127.0.0.1:{port}/db"),
        format!("redis://127.0.0.1:{port}"),
    ] {
        let started = Instant::now();
        let (_, error) = start_logged(&url, &[("STREAMS_CONNECT_TIMEOUT", "150ms")]).await;
        let error = error.unwrap_or_else(|| panic!("{url} started"));
        assert!(
            error.contains(&format!("connecting to {url}: no answer within 150ms")),
            "{error}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{url}: {error}");
    }
    silent.abort();

    for (url, what) in [
        ("redis:///abc", "missing hostname"),
        ("redis://127.0.0.1/abc", "invalid database number"),
    ] {
        let (_, error) = start_logged(url, &[]).await;
        let error = error.unwrap_or_else(|| panic!("{url} started"));
        assert!(
            error.contains(&format!(
                "backend URL {url} is not a valid Redis URL ({what}); write redis://host[:port][/db]"
            )),
            "{error}"
        );
        assert!(!error.contains("InvalidClientConfig"), "{error}");
    }
}
