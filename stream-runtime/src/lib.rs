//! Durable event streams with consumer groups: at-least-once delivery, retries, dead-letter
//! streams and graceful shutdown, on SQLite (the embedded default), Postgres, Redis Streams
//! or in memory.
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
