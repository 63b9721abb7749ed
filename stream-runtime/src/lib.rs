//! Durable event streams with consumer groups: at-least-once delivery, retries, dead-letter
//! streams and graceful shutdown, on SQLite (the embedded default), Postgres, Redis Streams
//! or in memory.
//!
//! # Quickstart (the programmatic API)
//!
//! ```
//! use stream_runtime::{HandlerError, Message, PublishOptions, Service, SubscribeOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), stream_runtime::Error> {
//! let service = Service::memory(); // or Service::connect("sqlite://streams.db", ..)
//! let (done, mut handled) = tokio::sync::mpsc::unbounded_channel();
//! let consumer = service
//!     .subscribe(
//!         "orders",
//!         "billing",
//!         move |msg: Message| {
//!             let done = done.clone();
//!             async move {
//!                 let order: serde_json::Value = msg.json()?;
//!                 if order["total"].as_i64() < Some(0) {
//!                     return Err(HandlerError::permanent("negative total")); // dead-letter now
//!                 }
//!                 done.send(order["id"].as_u64())?;
//!                 Ok(())
//!             }
//!         },
//!         SubscribeOptions::new().concurrency(4).max_retries(5),
//!     )
//!     .await?;
//! service
//!     .publish_json("orders", &serde_json::json!({"id": 7, "total": 1200}), PublishOptions::new())
//!     .await?;
//! assert_eq!(handled.recv().await, Some(Some(7)));
//! consumer.close().await; // drains in-flight handlers
//! service.close().await?;
//! # Ok(()) }
//! ```
//!
//! # Declaring consumers
//!
//! Most programs declare their consumers with [`#[consumer]`](consumer) instead: the
//! payload arrives typed (any `serde::Deserialize` type, or [`Raw`] bytes), and the runtime
//! starts every registered consumer with its settings from the attribute and `Streams.toml`.
//!
//! ```
//! use stream_runtime::prelude::*;
//!
//! #[derive(serde::Deserialize)]
//! struct Order {
//!     id: u64,
//! }
//!
//! #[consumer(stream = "orders", group = "billing", max_retries = 5)]
//! async fn bill(order: Order, msg: &Message) -> Result<(), HandlerError> {
//!     println!("order {} (attempt {})", order.id, msg.attempt);
//!     Ok(())
//! }
//!
//! # async fn demo() -> Result<(), stream_runtime::Error> {
//! // In main: Streams.toml -> connect -> run every consumer -> drain on SIGINT / SIGTERM.
//! // (Install a `tracing` subscriber first to see the runtime's log.)
//! stream_runtime::run().await
//! # }
//! ```
//!
//! [`run`] and [`Runtime`] are described in [`runtime`]; the `Streams.toml` keys and their
//! precedence over the attribute in [`config`].
//!
//! # Reading model
//!
//! Every subscription names a stream and a consumer group. Members of one group share the
//! work: each message goes to one of them, in this process or another. Different groups each
//! get every message. A stream's full name is `<app>.<namespace>.<name>`.
//!
//! # Delivery and idempotency
//!
//! Delivery is at-least-once. A message may be handled more than once when a handler runs
//! past the visibility timeout (another worker takes it over), when the acknowledgement is lost
//! (the message comes back after the visibility timeout), or when the process dies
//! mid-handler. Make handler effects idempotent (unique keys, upserts) and look at
//! [`Message::attempt`] to spot redeliveries.
//!
//! # Long handlers and delayed messages
//!
//! A handler that may run longer than the visibility timeout keeps its message with the
//! lease heartbeat ([`SubscribeOptions::heartbeat`], `heartbeat` in `#[consumer]` and
//! `Streams.toml`), or extends its own claim ([`Message::extend_lease`]). A message published
//! with [`PublishOptions::deliver_after`] or [`PublishOptions::deliver_at`] is stored at once
//! and handed to no handler before its time (docs/semantics.md, S18 and S19).
//!
//! ```
//! use std::time::Duration;
//! use stream_runtime::{HandlerError, Message, PublishOptions, Service, SubscribeOptions};
//!
//! # async fn demo(service: &Service) -> Result<(), stream_runtime::Error> {
//! service
//!     .subscribe(
//!         "reports",
//!         "render",
//!         |msg: Message| async move {
//!             // Ten minutes from now, whatever the visibility timeout.
//!             let held = msg
//!                 .extend_lease(Duration::from_secs(600))
//!                 .await
//!                 .map_err(|e| HandlerError::retry(e.to_string()))?;
//!             if !held {
//!                 return Err(HandlerError::retry("the claim was taken over"));
//!             }
//!             Ok(())
//!         },
//!         SubscribeOptions::new().heartbeat(true),
//!     )
//!     .await?;
//! service
//!     .publish(
//!         "reminders",
//!         "renew the subscription",
//!         PublishOptions::new().deliver_after(Duration::from_secs(24 * 3600)),
//!     )
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Publishing exactly once
//!
//! A publish that returns `Ok` stored its messages. One that fails with
//! [`Error::OutcomeUnknown`] (Postgres or Redis: the connection was lost after the request
//! was sent) may or may not have stored them; every other error means nothing was stored.
//! Retrying after an unknown outcome can store a message twice, so give each message a key of
//! its own and let consumers skip keys they have handled:
//!
//! ```
//! use stream_runtime::{Error, PublishOptions, Service};
//!
//! # async fn demo(service: &Service, order_id: u64) -> Result<(), Error> {
//! let order = serde_json::json!({ "id": order_id });
//! let options = PublishOptions::new().header("idempotency-key", format!("order-{order_id}"));
//! let mut tries = 0;
//! loop {
//!     match service.publish_json("orders", &order, options.clone()).await {
//!         Ok(_) => break,
//!         // Maybe stored: the same key makes a second copy harmless to the consumer,
//!         // which records the keys it handled (a unique column, a set) and skips repeats.
//!         Err(e) if e.outcome_is_unknown() && tries < 3 => tries += 1,
//!         Err(e) => return Err(e),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Retries and dead letters
//!
//! A handler error leaves the message pending; it comes back after the retry delay
//! ([`RetryDelay`]; default: the visibility timeout). After `max_retries + 1` attempts, or at
//! once for [`HandlerError::permanent`], or for a panic on the last attempt, the message moves to
//! the dead-letter stream (`<stream>.dead` by default), an ordinary stream with the
//! [`dead_letter_headers`] added. A handler that never returns ends there too: its expired
//! claim is dead-lettered when reclaimed on its last attempt.
//!
//! An attempt is a delivery: every claim counts one, whether the handler finished, failed,
//! hung or never got to run because the process died between the claim and the handler's
//! start (the engine claims only for free workers, so that window is short, but a crash can
//! hit it; with `max_retries = 0` such a message is dead-lettered when reclaimed, as with
//! SQS's receive count). Recording each handler start would cost a write per message. The
//! one exception is a shutdown: handlers that [`Consumer::close`] aborts at its deadline have
//! their claims released, and a release gives the attempt back.
//!
//! # Testing your consumers
//!
//! With the `testing` feature (in your dev-dependencies), `stream_runtime::testing::TestApp`
//! runs your registered consumers in memory with your state and configuration: publish,
//! `settle().await` until everything is handled (retry delays cost no wall time under
//! `#[tokio::test(start_paused = true)]`), then assert on every delivery, the dead letters
//! and the published messages. The module's documentation has a complete example.
//!
//! # Operating it
//!
//! [`Service::admin`] gives an [`Admin`]: the streams, each group's cursor, lag, pending
//! claims and dead letters, range reads, and the redrive and purge of dead letters, the same
//! on every backend. The `streams` command-line tool (package `stream-cli`) is built on it.
//!
//! # Architecture
//!
//! The contract every backend keeps is the same; the engine that delivers messages exists
//! once ([`engine`]), and backends ([`backend`]) only store.
//!
//! The contract itself (names, groups, visibility, fencing, retries, dead letters, shutdown,
//! order, durability) is written out rule by rule in `docs/semantics.md` in the repository;
//! comments and tests cite its rules by number (S1-S17 for streams, D1-D8 for the
//! declarative layer), and the `conformance` suite (feature `conformance`) proves each
//! backend keeps them.
#![warn(missing_docs)]
// On docs.rs, each item gated by a cargo feature says which one (`doc_cfg` marks them
// from their `#[cfg]`s).
#![cfg_attr(docsrs, feature(doc_cfg))]

#[doc(hidden)]
pub mod __private;
pub mod admin;
pub mod backend;
pub mod batch;
mod codec;
pub mod config;
pub mod engine;
mod error;
mod http;
pub mod key_order;
mod message;
pub mod middleware;
mod naming;
mod options;
mod publisher;
pub mod registry;
pub mod runtime;
mod service;
mod time;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod transaction;

#[cfg(feature = "conformance")]
pub mod conformance;

#[cfg(feature = "testing")]
pub mod testing;

pub use admin::Admin;
pub use backend::{Backend, BackendAdmin, ClaimToken};
pub use batch::{Batch, BatchItem, BatchOutput, BatchResult};
pub use codec::{Payload, Raw};
pub use engine::delay::DELIVER_AT_HEADER;
pub use engine::{dead_letter_headers, handler_fn, CloseReport, Handler};
pub use error::{BoxError, Error, HandlerError, Result};
pub use key_order::{Order, KEY_HEADER};
pub use message::{Bytes, Headers, Message, MessageId, NewMessage};
pub use middleware::{Middleware, Next};
pub use naming::{
    dead_letter_stream, format_stream, DEFAULT_APP, DEFAULT_NAMESPACE, MAX_NAME_BYTES,
};
pub use options::{
    DeliverAt, Isolation, MaxRetries, PublishOptions, RetryDelay, ServiceConfig, SpanLevel,
    StartPosition, SubscribeOptions, Trim, DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_MAX_RETRIES,
    DEFAULT_POLL_INTERVAL, DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_VISIBILITY_TIMEOUT,
};
pub use publisher::Publisher;
pub use registry::State;
pub use runtime::{run, Runtime};
pub use service::{Consumer, Producer, Service, Subscriber};
#[cfg(feature = "postgres")]
pub use transaction::PostgresTx;
#[cfg(feature = "sqlite")]
pub use transaction::SqliteTx;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use transaction::{DatabaseTx, TransactionPool, TxConnection};

/// Registers an `async fn` as a consumer of a stream (D1-D3).
///
/// ```
/// use serde::Deserialize;
/// use stream_runtime::prelude::*;
///
/// #[derive(Deserialize)]
/// struct Order {
///     id: u64,
///     amount_cents: i64,
/// }
///
/// struct Ledger;
///
/// #[consumer(stream = "orders", group = "billing", max_retries = 5, visibility_timeout = "30s")]
/// async fn bill(order: Order, msg: &Message, ledger: State<Ledger>) -> Result<(), HandlerError> {
///     let _ledger: &Ledger = &ledger;
///     if order.amount_cents < 0 {
///         // No retry can fix this: straight to the dead-letter stream.
///         return Err(HandlerError::permanent(format!("order {} has a negative amount", order.id)));
///     }
///     println!("billing order {} (attempt {})", order.id, msg.attempt);
///     Ok(())
/// }
///
/// // Registered at link time; the runtime starts every registered consumer.
/// let def = stream_runtime::registry::consumers()
///     .unwrap()
///     .into_iter()
///     .find(|d| d.name == "bill")
///     .unwrap();
/// assert_eq!((def.stream, def.group), ("orders", "billing"));
/// ```
///
/// # Keys
///
/// | key | value | default |
/// | --- | --- | --- |
/// | `stream` | the stream's short name (required) | |
/// | `group` | the consumer group (required) | |
/// | `max_retries` | retries after the first attempt, or `"unlimited"` | 3 |
/// | `concurrency` | workers, at least 1 | 1 |
/// | `visibility_timeout` | how long a claim hides a message: `"30s"`, `"250ms"`, `"1m30s"`, `"1d"` (units `ms`, `s`, `m`, `h`, `d`) | `"30s"` |
/// | `poll_interval` | fallback wake-up cadence | `"1s"` |
/// | `shutdown_timeout` | how long shutdown waits for running handlers | `"30s"` |
/// | `retry_delay` | delay before a failed message comes back: `"visibility_timeout"`, a duration (`"5s"`), or exponential backoff with jitter, `retry_delay(base = "100ms", max = "30s")` | `"visibility_timeout"` (a fixed delay equal to the visibility timeout, 30 s by default) |
/// | `start` | where a new group starts: `"latest"`, `"earliest"` or a message id | `"latest"` |
/// | `dead_letter` | dead-letter stream's short name | `<stream>.dead` |
/// | `app`, `namespace` | override the service's | the service's |
/// | `name` | the consumer's unique name, which keys `Streams.toml` overrides | the function's name |
/// | `crate` | path to this crate, when it is re-exported under another name | `"::stream_runtime"` |
/// | `ordered` | `"key"`: the messages sharing a key ([`PublishOptions::key`]) are handled one at a time, in stream order, across every process of the group ([`key_order`]); `"none"` | `"none"` |
/// | `batch_size` | with a `Vec<T>` first argument: a batch handler getting up to this many messages per call (1 to 10000) | 100 for a `Batch<T>` argument |
/// | `batch_wait` | how long a short batch waits for more messages (batch handlers) | `"0s"` |
///
/// At deploy time, `[consumers.<name>]` in `Streams.toml` (or its
/// `STREAMS_CONSUMERS__<NAME>__<KEY>` variable) overrides these settings for this consumer;
/// `[defaults]` only fills in the settings the attribute leaves out. Values follow the same
/// rules in both places (the same duration grammar, at least one worker, ...). See
/// [`config`] for the whole precedence chain.
///
/// # The function
///
/// - It is an `async fn`, not generic, not a method.
/// - Its first argument is the payload: any `serde::Deserialize` type, decoded from JSON, or
///   [`Raw`] for the bytes as they are. A payload that fails to decode is dead-lettered on
///   its first attempt with the decode error as the reason; it is never retried (D8).
/// - After it, in any order: `&Message` for the id, headers and attempt, a [`Publisher`]
///   to publish from the handler (bound to the consumer's app and namespace), and any number
///   of [`State<T>`] arguments for shared application state. A state missing at startup is
///   an error naming the consumer and the type.
/// - It returns `Result<(), E>` for any `E` that implements `Display`. An error is retried
///   after the retry delay until `max_retries` is used up; return
///   [`HandlerError::permanent`] to dead-letter at once.
///
/// # Batch handlers
///
/// A first argument `Vec<T>` with `batch_size`, or [`Batch<T>`] (each payload with its
/// [`Message`]), makes a batch handler: one call for up to `batch_size` messages, acked
/// together on `Ok`, all failed (each by its own attempts) on `Err`, or failed one by one
/// with a [`BatchResult`]. A payload that does not decode is dead-lettered alone. A batch
/// handler takes no `&Message` and cannot be `transactional`. See [`batch`].
///
/// ```
/// use stream_runtime::prelude::*;
///
/// #[derive(serde::Deserialize)]
/// struct Order {
///     id: u64,
/// }
///
/// #[consumer(stream = "orders", group = "warehouse", batch_size = 100, batch_wait = "50ms")]
/// async fn load(orders: Vec<Order>) -> Result<(), HandlerError> {
///     println!("{} orders, the first {:?}", orders.len(), orders.first().map(|o| o.id));
///     Ok(())
/// }
/// ```
///
/// The function stays an ordinary function that you can call (and unit-test) directly.
/// Misuse — a missing key, an unknown or duplicate key, a bad duration, a payload type that
/// is not `Deserialize`, ... — is a compile error pointing at the mistake.
///
/// Registration rides on the linker; see [`registry`] for the one caveat.
pub use stream_macros::consumer;

/// The names most programs need: `use stream_runtime::prelude::*;`.
pub mod prelude {
    pub use crate::{
        consumer, Consumer, Error, HandlerError, Message, MessageId, Producer, PublishOptions,
        Publisher, Raw, Result, Runtime, Service, StartPosition, State, SubscribeOptions,
        Subscriber,
    };
    pub use crate::{Batch, BatchResult};
}
