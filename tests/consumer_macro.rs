//! `#[consumer]` end to end: what it registers (D1, D4), and a built handler running on the
//! memory backend (D2, D8).
// Helpers and handlers outside `#[test]` functions unwrap too: a poisoned lock is a test bug.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use stream_runtime::conformance::wait_for;
use stream_runtime::dead_letter_headers::{ATTEMPTS, REASON};
use stream_runtime::prelude::*;
use stream_runtime::registry::{self, Attributes, ConsumerDef, Location, States};
use stream_runtime::{handler_fn, Handler, MaxRetries, MessageId, RetryDelay};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Order {
    id: u32,
    /// "ok", "retry once" or "permanent".
    behaviour: String,
}

/// What the handlers saw: (order id or byte count, attempt, header `trace`).
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<(u32, u32, Option<String>)>>,
}

impl Recorder {
    fn calls(&self) -> Vec<(u32, u32, Option<String>)> {
        self.calls.lock().unwrap().clone()
    }
}

const RECORD_LINE: u32 = line!() + 1;
#[consumer(stream = "macro-orders", group = "billing")]
async fn record(order: Order, msg: &Message, seen: State<Recorder>) -> Result<(), HandlerError> {
    seen.calls.lock().unwrap().push((
        order.id,
        msg.attempt,
        msg.header("trace").map(str::to_owned),
    ));
    match order.behaviour.as_str() {
        "retry once" if msg.attempt == 1 => Err(HandlerError::retry("not yet")),
        "permanent" => Err(HandlerError::permanent(format!(
            "order {} can never be billed",
            order.id
        ))),
        _ => Ok(()),
    }
}

/// Raw bytes, state before `&Message`, and a plain `String` error (retryable).
#[consumer(stream = "macro-raw", group = "audit", max_retries = 1)]
async fn raw_bytes(payload: Raw, seen: State<Recorder>, msg: &Message) -> Result<(), String> {
    let len = u32::try_from(payload.len()).map_err(|e| e.to_string())?;
    seen.calls.lock().unwrap().push((len, msg.attempt, None));
    if &*payload == b"fail once" && msg.attempt == 1 {
        return Err("first attempt fails".to_owned());
    }
    Ok(())
}

/// Every setting, to check what is registered (never run).
#[consumer(
    stream = "macro-settings",
    group = "reports",
    max_retries = 5,
    concurrency = 4,
    visibility_timeout = "1m30s",
    poll_interval = "250ms",
    shutdown_timeout = "10s",
    retry_delay(base = "100ms", max = "5s"),
    start = "earliest",
    dead_letter = "failed-settings",
    app = "shop",
    namespace = "eu",
    name = "all_settings",
    crate = "::stream_runtime"
)]
async fn settings(_order: Order) -> Result<(), std::io::Error> {
    Ok(())
}

#[consumer(
    stream = "macro-settings",
    group = "unlimited",
    max_retries = "unlimited",
    retry_delay = "5s",
    visibility_timeout = "1d"
)]
async fn unlimited(_order: Order) -> Result<(), HandlerError> {
    Ok(())
}

/// `heartbeat` as a flag, and with a value.
#[consumer(stream = "macro-settings", group = "leased", heartbeat)]
async fn leased(_order: Order) -> Result<(), HandlerError> {
    Ok(())
}

#[consumer(stream = "macro-settings", group = "unleased", heartbeat = false)]
async fn unleased(_order: Order) -> Result<(), HandlerError> {
    Ok(())
}

#[test]
fn heartbeat_is_a_flag_or_a_bool() {
    assert_eq!(def("leased").attributes.heartbeat, Some(true));
    assert_eq!(def("unleased").attributes.heartbeat, Some(false));
    assert_eq!(def("record").attributes.heartbeat, None);
}

fn def(name: &str) -> &'static ConsumerDef {
    registry::consumers()
        .expect("registered consumers are valid")
        .into_iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("consumer {name} is not registered"))
}

fn fast_options() -> SubscribeOptions {
    SubscribeOptions::new()
        .start(StartPosition::Earliest)
        .poll_interval(Duration::from_millis(20))
        .retry_delay(RetryDelay::Fixed(Duration::from_millis(10)))
}

#[test]
fn registers_name_stream_group_and_every_setting() {
    let d = def("all_settings");
    assert_eq!((d.stream, d.group), ("macro-settings", "reports"));
    assert_eq!(d.payload_type, "Order");
    assert!(
        d.location.file.ends_with("consumer_macro.rs"),
        "{}",
        d.location
    );
    assert!(d.location.line > 0);
    let a = d.attributes;
    assert_eq!(a.max_retries, Some(MaxRetries::Limited(5)));
    assert_eq!(a.concurrency, Some(4));
    assert_eq!(a.visibility_timeout, Some(Duration::from_secs(90)));
    assert_eq!(a.poll_interval, Some(Duration::from_millis(250)));
    assert_eq!(a.shutdown_timeout, Some(Duration::from_secs(10)));
    assert_eq!(
        a.retry_delay,
        Some(RetryDelay::Exponential {
            base: Duration::from_millis(100),
            max: Duration::from_secs(5)
        })
    );
    assert_eq!(a.start, Some("earliest"));
    assert_eq!(a.dead_letter, Some("failed-settings"));
    assert_eq!(a.app, Some("shop"));
    assert_eq!(a.namespace, Some("eu"));

    let d = def("record");
    assert_eq!((d.stream, d.group), ("macro-orders", "billing"));
    assert_eq!(d.location.line, RECORD_LINE, "the attribute's line");
    assert_eq!(d.attributes, Attributes::NONE);

    let d = def("unlimited");
    assert_eq!(d.attributes.max_retries, Some(MaxRetries::Unlimited));
    // The attribute takes the durations Streams.toml takes ("1d"), and the same retry delays.
    assert_eq!(
        d.attributes.retry_delay,
        Some(RetryDelay::Fixed(Duration::from_secs(5)))
    );
    assert_eq!(
        d.attributes.visibility_timeout,
        Some(Duration::from_secs(86_400))
    );
    assert_eq!(def("raw_bytes").payload_type, "Raw");
}

#[test]
fn a_missing_state_is_a_startup_error_naming_consumer_and_type() {
    let err = match (def("record").build)(&States::new()) {
        Ok(_) => panic!("built without its state"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("\"record\""), "{err}");
    assert!(err.contains("Recorder"), "{err}");
}

#[tokio::test]
async fn the_function_stays_callable() {
    let recorder = Arc::new(Recorder::default());
    let msg = Message::new(
        MessageId::new("1"),
        "app.default.macro-orders",
        Vec::new(),
        Default::default(),
        SystemTime::now(),
        1,
    );
    let order = Order {
        id: 9,
        behaviour: "ok".into(),
    };
    record(order, &msg, State(recorder.clone())).await.unwrap();
    assert_eq!(recorder.calls(), vec![(9, 1, None)]);
}

/// Collects the dead letters of `stream`.
async fn dead_letters(service: &Service, stream: &str) -> Arc<Mutex<Vec<Message>>> {
    let dead = Arc::new(Mutex::new(Vec::new()));
    let sink = dead.clone();
    service
        .subscribe(
            &format!("{stream}.dead"),
            "test",
            move |msg| {
                let sink = sink.clone();
                async move {
                    sink.lock().unwrap().push(msg);
                    Ok(())
                }
            },
            fast_options(),
        )
        .await
        .unwrap();
    dead
}

#[tokio::test]
async fn typed_handler_runs_retries_and_dead_letters() {
    let service = Service::memory();
    let mut states = States::new();
    states.insert(Recorder::default());
    let d = def("record");
    let handler: Handler = (d.build)(&states).unwrap();
    let seen = states.get::<Recorder>().unwrap();
    service
        .subscribe_handler(d.stream, d.group, handler, fast_options().max_retries(3))
        .await
        .unwrap();
    let dead = dead_letters(&service, d.stream).await;

    let publish = |id: u32, behaviour: &str| {
        let service = service.clone();
        let order = Order {
            id,
            behaviour: behaviour.into(),
        };
        async move {
            service
                .publish_json(
                    "macro-orders",
                    &order,
                    PublishOptions::new().header("trace", format!("t{id}")),
                )
                .await
                .unwrap()
        }
    };
    publish(1, "ok").await;
    publish(2, "retry once").await;
    publish(3, "permanent").await;
    service
        .publish("macro-orders", "{not json", PublishOptions::new())
        .await
        .unwrap();

    wait_for("two dead letters and four handler calls", || {
        dead.lock().unwrap().len() == 2 && seen.calls().len() == 4
    })
    .await;
    let mut calls = seen.calls();
    calls.sort();
    assert_eq!(
        calls,
        vec![
            (1, 1, Some("t1".into())),
            (2, 1, Some("t2".into())),
            (2, 2, Some("t2".into())),
            (3, 1, Some("t3".into())),
        ],
        "typed payload, &Message and State reach the handler; a retryable error is retried"
    );

    let dead = dead.lock().unwrap().clone();
    let permanent = &dead[0];
    assert_eq!(permanent.json::<Order>().unwrap().id, 3);
    assert_eq!(permanent.header(ATTEMPTS), Some("1"));
    assert_eq!(
        permanent.header(REASON),
        Some("order 3 can never be billed")
    );
    let poison = &dead[1];
    assert_eq!(poison.payload[..], b"{not json"[..]);
    assert_eq!(
        poison.header(ATTEMPTS),
        Some("1"),
        "poison is never retried (D8)"
    );
    let reason = poison.header(REASON).unwrap();
    assert!(
        reason.starts_with("payload is not a valid Order: "),
        "{reason}"
    );
    service.close().await.unwrap();
}

#[tokio::test]
async fn raw_handler_with_a_string_error_is_retried() {
    let service = Service::memory();
    let mut states = States::new();
    states.insert(Recorder::default());
    let d = def("raw_bytes");
    let handler = (d.build)(&states).unwrap();
    let seen = states.get::<Recorder>().unwrap();
    service
        .subscribe_handler(d.stream, d.group, handler, fast_options())
        .await
        .unwrap();
    service
        .publish("macro-raw", "fail once", PublishOptions::new())
        .await
        .unwrap();
    service
        .publish("macro-raw", b"\xff\xfe".to_vec(), PublishOptions::new())
        .await
        .unwrap();
    wait_for("three handler calls", || seen.calls().len() == 3).await;
    let mut calls = seen.calls();
    calls.sort();
    assert_eq!(calls, vec![(2, 1, None), (9, 1, None), (9, 2, None)]);
    service.close().await.unwrap();
}

fn noop(_: &States) -> stream_runtime::Result<Handler> {
    Ok(handler_fn(|_| async { Ok(()) }))
}

fn leaked(
    name: &'static str,
    stream: &'static str,
    group: &'static str,
    line: u32,
) -> &'static ConsumerDef {
    Box::leak(Box::new(ConsumerDef::__new(
        name,
        stream,
        group,
        Attributes::NONE,
        Location {
            file: "src/consumers.rs",
            line,
        },
        "Order",
        noop,
    )))
}

#[test]
fn registry_rejects_a_name_used_twice_naming_both_places() {
    let err = registry::validate(vec![
        leaked("bill", "orders", "billing", 10),
        leaked("bill", "refunds", "billing", 20),
    ])
    .unwrap_err()
    .to_string();
    assert!(err.contains("\"bill\""), "{err}");
    assert!(
        err.contains("src/consumers.rs:10") && err.contains("src/consumers.rs:20"),
        "{err}"
    );
}

#[test]
fn registry_rejects_a_stream_and_group_registered_twice() {
    let err = registry::validate(vec![
        leaked("bill", "orders", "billing", 10),
        leaked("bill_again", "orders", "billing", 30),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("\"orders\"") && err.contains("\"billing\""),
        "{err}"
    );
    assert!(
        err.contains("src/consumers.rs:10") && err.contains("src/consumers.rs:30"),
        "{err}"
    );
    // Another group on the same stream is fine.
    let ok = registry::validate(vec![
        leaked("bill", "orders", "billing", 10),
        leaked("audit", "orders", "audit", 30),
    ])
    .unwrap();
    assert_eq!(ok.len(), 2);
}
