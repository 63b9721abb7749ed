//! The error type of every fallible call in this crate.

use std::fmt;

/// A boxed error from a backend's client library.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, and where possible what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The service (or the consumer) was closed; nothing more can be published or subscribed.
    #[error("the stream service is closed; create a new one to publish or subscribe again")]
    Closed,

    /// A stream, group, app, namespace or dead-letter name broke the naming rules.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// Which name: `"stream"`, `"group"`, `"app"`, ...
        what: &'static str,
        /// The rejected value (debug-escaped when printed).
        value: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A start id that the backend cannot parse.
    #[error("invalid start id {id:?}: {reason}")]
    InvalidStartId {
        /// The rejected id.
        id: String,
        /// What a valid id looks like on this backend.
        reason: String,
    },

    /// A payload over the service's `max_payload_bytes`.
    #[error("payload of {size} bytes is over the limit of {limit} bytes; raise `max_payload_bytes` or publish a reference to the data instead")]
    PayloadTooLarge {
        /// The payload's size.
        size: usize,
        /// The configured limit.
        limit: usize,
    },

    /// A value could not be encoded as a payload.
    #[error("could not encode the payload: {0}")]
    Encode(#[source] BoxError),

    /// The backend failed: the server is unreachable, a query failed, the file is unreadable.
    #[error("{backend} backend: {context}: {source}")]
    Backend {
        /// `"memory"`, `"sqlite"`, `"postgres"` or `"redis"`.
        backend: &'static str,
        /// What was being done, e.g. `"claiming messages from app.default.orders"`.
        context: String,
        /// The client library's error.
        #[source]
        source: BoxError,
    },

    /// A write reached the backend, but the connection was lost (or timed out) before its
    /// answer came: it may or may not have taken effect. For a publish, the messages may be
    /// stored; publishing them again may store them twice. Every other publish error means
    /// nothing was stored. See "Publishing exactly once" in the crate docs for how to retry
    /// safely.
    #[error(
        "{backend} backend: {context}: the connection was lost before the answer came, so it \
         is unknown whether this took effect (the messages may be stored; publishing them \
         again may store them twice; make the retry idempotent with a key the consumer \
         checks): {source}"
    )]
    OutcomeUnknown {
        /// `"postgres"` or `"redis"` (SQLite and memory always know).
        backend: &'static str,
        /// What was being done, e.g. `"appending to app.default.orders"`.
        context: String,
        /// The client library's error.
        #[source]
        source: BoxError,
    },

    /// A backend URL names a backend whose cargo feature is off in this build.
    #[error(
        "backend URL {url}: this build lacks the `{feature}` feature of stream-runtime; \
         enable it in Cargo.toml"
    )]
    FeatureDisabled {
        /// The stream-runtime feature to enable: `"sqlite"`, `"postgres"`, `"redis"` or
        /// `"tls"`.
        feature: &'static str,
        /// The URL, with its password redacted.
        url: String,
    },

    /// A transaction (a publish inside the caller's transaction, a transactional handler,
    /// [`Service::begin`](crate::Service::begin)) on a backend that keeps its streams
    /// elsewhere than the transaction's database.
    #[error(
        "{what} needs the streams in the transaction's database: this service's backend is \
         {backend}, the transaction is a {requested} one; transactions work on the postgres \
         and sqlite backends, with a transaction of the same kind on the service's database"
    )]
    TransactionsUnsupported {
        /// What was asked: `"publishing inside a transaction"`, `"a transactional handler"`.
        what: &'static str,
        /// This service's backend: `"memory"`, `"redis"`, `"sqlite"` or `"postgres"`.
        backend: &'static str,
        /// The transaction's database: `"postgres"` or `"sqlite"`.
        requested: &'static str,
    },

    /// A transaction pool ([`Service::set_transaction_pool`](crate::Service::set_transaction_pool),
    /// [`Runtime::transaction_pool`](crate::Runtime::transaction_pool)) that does not reach
    /// the database the service's backend keeps its streams in.
    #[error(
        "the transaction pool reaches {found}, but the service's streams are in {expected}; \
         give a pool connected to the backend's own database (or none: the service's pool is \
         the default)"
    )]
    TransactionPoolMismatch {
        /// The service's database: name, server and schema (Postgres) or file (SQLite).
        expected: String,
        /// The pool's database, described the same way.
        found: String,
    },

    /// A plain publish from inside a transactional handler on SQLite, whose transaction
    /// holds the database's one write lock: the publish could only wait for it.
    #[error(
        "publishing to {stream} from inside a transactional handler on SQLite would wait for \
         the write lock the handler's own transaction holds; publish through the \
         transaction instead: publish_in(&mut **tx, ...) (the message then commits with the \
         handler's writes and its ack)"
    )]
    PublishOutsideTransaction {
        /// The stream of the refused publish.
        stream: String,
    },

    /// A backend URL whose scheme names no backend.
    #[error(
        "backend URL {url} has an unknown scheme; use memory://, sqlite://PATH, \
         postgres://... or redis://..."
    )]
    UnknownScheme {
        /// The URL, with its password redacted.
        url: String,
    },

    /// A backend broke its contract, e.g. it returned no id for a published message.
    /// This is a bug in the backend, not in the caller.
    #[error("{backend} backend: {what}; this is a bug in the backend, please report it")]
    BackendContract {
        /// The backend's name.
        backend: &'static str,
        /// What it did wrong.
        what: String,
    },

    /// A consumer could not start: subscribing it failed. The cause is the `source`.
    #[error(
        "consumer {consumer} ({location}) could not start on stream {stream:?}, group \
         {group:?}: {reason}"
    )]
    ConsumerStart {
        /// The consumer's name.
        consumer: &'static str,
        /// Where it was registered.
        location: crate::registry::Location,
        /// The stream it consumes (its short name).
        stream: &'static str,
        /// Its consumer group.
        group: &'static str,
        /// The cause's text, with the backend URL's password redacted.
        reason: String,
        /// The error subscribing returned.
        #[source]
        source: Box<Error>,
    },

    /// `Streams.toml`, the environment or a connection URL is wrong.
    #[error("configuration error: {0}")]
    Config(String),

    /// Registered consumers conflict with each other.
    #[error("consumer registry: {0}")]
    Registry(String),

    /// The runtime could not start every consumer, or could not shut down cleanly.
    #[error("runtime: {0}")]
    Runtime(String),

    /// The application's own future (given to `Runtime::run_until`) failed.
    #[error("application failed: {0}")]
    Application(#[source] BoxError),

    /// A subscription ordered by key ([`Order::Key`](crate::Order::Key)) on a backend that
    /// cannot keep that order.
    #[error(
        "the {backend} backend cannot order a group by key; ordered consumers run on the \
         {} backends: subscribe without `ordered` here, or use one of those",
        crate::key_order::ORDERED_BACKENDS
    )]
    OrderingUnsupported {
        /// This service's backend.
        backend: &'static str,
    },
}

impl Error {
    /// A backend error with the operation it interrupted.
    pub fn backend(
        backend: &'static str,
        context: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Backend {
            backend,
            context: context.into(),
            source: source.into(),
        }
    }

    /// A write whose outcome is unknown: see [`Error::OutcomeUnknown`].
    pub fn outcome_unknown(
        backend: &'static str,
        context: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::OutcomeUnknown {
            backend,
            context: context.into(),
            source: source.into(),
        }
    }

    /// Whether the failed call may still have taken effect (only
    /// [`Error::OutcomeUnknown`]): a publish that failed otherwise stored nothing.
    pub fn outcome_is_unknown(&self) -> bool {
        matches!(self, Error::OutcomeUnknown { .. })
    }

    pub(crate) fn invalid_name(what: &'static str, value: &str, reason: impl Into<String>) -> Self {
        Error::InvalidName {
            what,
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

/// The error a handler returns: retried later, or dead-lettered at once when permanent.
///
/// Any `std::error::Error` converts into it with `?`. A handler declared with
/// `#[consumer]` may return any error type that implements `Display`; returning a
/// `HandlerError` keeps its permanent flag.
///
/// ```
/// use stream_runtime::HandlerError;
///
/// fn check(amount: i64) -> Result<(), HandlerError> {
///     if amount < 0 {
///         // No retry can fix this: straight to the dead-letter stream.
///         return Err(HandlerError::permanent(format!("negative amount {amount}")));
///     }
///     let _parsed: u32 = "42".parse()?; // any std error converts, as a retryable error
///     Ok(())
/// }
/// assert!(check(-1).unwrap_err().is_permanent());
/// ```
#[derive(Clone)]
pub struct HandlerError {
    message: String,
    permanent: bool,
}

impl HandlerError {
    /// A retryable error: the message comes back after the retry delay.
    pub fn retry(error: impl fmt::Display) -> Self {
        HandlerError {
            message: error.to_string(),
            permanent: false,
        }
    }

    /// A permanent error: the message moves to the dead-letter stream on this attempt.
    pub fn permanent(error: impl fmt::Display) -> Self {
        HandlerError {
            message: error.to_string(),
            permanent: true,
        }
    }

    /// Whether this error skips the remaining retries.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The error text, recorded as the dead-letter reason.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// A handler's error as the engine keeps it: a `HandlerError` as it is (its permanent
    /// flag included), anything else as a retryable error with its text.
    pub(crate) fn from_display<E: fmt::Display + 'static>(error: E) -> Self {
        let text = error.to_string();
        match (Box::new(error) as Box<dyn std::any::Any>).downcast::<HandlerError>() {
            Ok(handler_error) => *handler_error,
            Err(_) => HandlerError::retry(text),
        }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(error: E) -> Self {
        HandlerError::retry(error)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("message", &self.message)
            .field("permanent", &self.permanent)
            .finish()
    }
}
