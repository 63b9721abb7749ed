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
//! # Retries and dead letters
//!
//! A handler error leaves the message pending; it comes back after the retry delay
//! ([`RetryDelay`]; default: the visibility timeout). After `max_retries + 1` attempts, or at
//! once for [`HandlerError::permanent`], or for a panic on the last attempt, the message moves to
//! the dead-letter stream (`<stream>.dead` by default), an ordinary stream with the
//! [`dead_letter_headers`] added. A handler that never returns ends there too: its expired
//! claim is dead-lettered when reclaimed on its last attempt.
//!
//! # Architecture
//!
//! The contract every backend keeps is the same; the engine that delivers messages exists
//! once ([`engine`]), and backends ([`backend`]) only store.
#![warn(missing_docs)]

pub mod backend;
pub mod engine;
mod error;
mod message;
mod naming;
mod options;
pub mod registry;
mod service;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use backend::{Backend, ClaimToken};
pub use engine::{dead_letter_headers, handler_fn, CloseReport, Handler};
pub use error::{BoxError, Error, HandlerError, Result};
pub use message::{Headers, Message, MessageId, NewMessage};
pub use naming::{
    dead_letter_stream, format_stream, DEFAULT_APP, DEFAULT_NAMESPACE, MAX_NAME_BYTES,
};
pub use options::{
    MaxRetries, PublishOptions, RetryDelay, ServiceConfig, StartPosition, SubscribeOptions, Trim,
    DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_MAX_RETRIES, DEFAULT_POLL_INTERVAL,
    DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_VISIBILITY_TIMEOUT,
};
pub use registry::State;
pub use service::{Consumer, Producer, Service, Subscriber};
