//! Service, publish and subscribe options and their defaults.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use crate::message::Headers;
use crate::naming::{DEFAULT_APP, DEFAULT_NAMESPACE};

/// Default number of retries after the first attempt (4 attempts in all).
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// Default fallback poll interval when no push wake-up arrives.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Default time a claimed message stays hidden from the group's other workers.
pub const DEFAULT_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time `close` waits for in-flight handlers.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default largest payload accepted by publish.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// Settings shared by every publish and subscribe of a [`Service`](crate::Service).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// App prefix of every stream name (default `"app"`).
    pub app: String,
    /// Namespace of every stream name (default `"default"`).
    pub namespace: String,
    /// Default `max_len` trim for publishes (0 = keep everything).
    pub max_len: u64,
    /// Default `max_age` trim for publishes (zero = keep everything).
    pub max_age: Duration,
    /// Largest payload publish accepts, in bytes.
    pub max_payload_bytes: usize,
    /// How long [`Service::connect`](crate::Service::connect) waits for a server (Postgres,
    /// Redis) before it fails with "no answer within ..." (default 15 s).
    pub connect_timeout: Duration,
    /// The isolation level of the transactions the service begins: those of transactional
    /// handlers and of [`Service::begin`](crate::Service::begin) (default read committed).
    /// Postgres only: a SQLite transaction is always serializable.
    pub transaction_isolation: Isolation,
    /// The level of the per-message `stream.handle` span and of the `stream.publish` span
    /// (default [`SpanLevel::Info`]). Config key `span_level`.
    pub span_level: SpanLevel,
}

/// The level of the spans the engine opens for every handler call (`stream.handle`) and
/// every publish (`stream.publish`). A subscriber builds (and a formatting layer formats) a
/// span only when its filter enables the span's level, so a level below the application's
/// log filter keeps them off that subscriber at no cost, while a subscriber that enables it
/// (an OpenTelemetry layer filtered at DEBUG, say) still gets every span. Config key
/// `span_level`: `"info"`, `"debug"`, `"trace"` or `"off"` (no span at all).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SpanLevel {
    /// `TRACE`.
    Trace,
    /// `DEBUG`.
    Debug,
    /// `INFO`, the default: the spans are part of an INFO trace.
    #[default]
    Info,
    /// No span is opened (trace context is still carried in the headers).
    Off,
}

/// The isolation level of a transaction the service begins (Postgres; SQLite transactions
/// are always serializable). Config key `transaction_isolation`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Isolation {
    /// `READ COMMITTED`, Postgres's default.
    #[default]
    ReadCommitted,
    /// `REPEATABLE READ`.
    RepeatableRead,
    /// `SERIALIZABLE`: a conflict fails the handler with a serialization error, and the
    /// message is retried as usual.
    Serializable,
}

impl Isolation {
    /// The statement that begins a Postgres transaction at this level.
    #[cfg(feature = "postgres")]
    pub(crate) fn postgres_begin(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "BEGIN ISOLATION LEVEL READ COMMITTED",
            Isolation::RepeatableRead => "BEGIN ISOLATION LEVEL REPEATABLE READ",
            Isolation::Serializable => "BEGIN ISOLATION LEVEL SERIALIZABLE",
        }
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            app: DEFAULT_APP.to_owned(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            max_len: 0,
            max_age: Duration::ZERO,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            connect_timeout: crate::backend::DEFAULT_CONNECT_TIMEOUT,
            transaction_isolation: Isolation::ReadCommitted,
            span_level: SpanLevel::Info,
        }
    }
}

impl ServiceConfig {
    /// Sets the app; an empty value is ignored.
    pub fn app(mut self, app: impl Into<String>) -> Self {
        set_if_not_empty(&mut self.app, app.into());
        self
    }

    /// Sets the namespace; an empty value is ignored.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        set_if_not_empty(&mut self.namespace, namespace.into());
        self
    }

    /// Sets the default `max_len` trim (0 = none).
    pub fn max_len(mut self, max_len: u64) -> Self {
        self.max_len = max_len;
        self
    }

    /// Sets the default `max_age` trim (zero = none).
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// Sets the payload size cap.
    pub fn max_payload_bytes(mut self, limit: usize) -> Self {
        self.max_payload_bytes = limit;
        self
    }

    /// Sets how long connecting to a server may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the isolation level of the transactions the service begins.
    pub fn transaction_isolation(mut self, isolation: Isolation) -> Self {
        self.transaction_isolation = isolation;
        self
    }

    /// Sets the level of the `stream.handle` and `stream.publish` spans.
    pub fn span_level(mut self, level: SpanLevel) -> Self {
        self.span_level = level;
        self
    }
}

fn set_if_not_empty(slot: &mut String, value: String) {
    if !value.is_empty() {
        *slot = value;
    }
}

/// How a publish trims its stream; zero means no trim on that axis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trim {
    /// Keep at most this many messages (0 = no limit).
    pub max_len: u64,
    /// Drop messages older than this (zero = no limit).
    pub max_age: Duration,
}

impl Trim {
    /// No trimming.
    pub const NONE: Trim = Trim {
        max_len: 0,
        max_age: Duration::ZERO,
    };

    /// Whether this trims anything.
    pub fn is_none(&self) -> bool {
        self.max_len == 0 && self.max_age.is_zero()
    }
}

/// Options of one publish. Unset fields take the service's values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishOptions {
    /// App override (empty = the service's).
    pub app: Option<String>,
    /// Namespace override (empty = the service's).
    pub namespace: Option<String>,
    /// Headers, copied onto the message (onto each message of a batch).
    pub headers: Headers,
    /// `max_len` override (0 = no trim for this publish).
    pub max_len: Option<u64>,
    /// `max_age` override (zero = no trim for this publish).
    pub max_age: Option<Duration>,
    /// When the message becomes deliverable (`None`: at once). The message is appended at
    /// once (it has its id and is durable) but no group hands it to a handler before then.
    pub deliver: Option<DeliverAt>,
    /// The ordering key of the published messages (see [`PublishOptions::key`]).
    pub key: Option<String>,
}

/// When a published message becomes deliverable ([`PublishOptions::deliver_after`],
/// [`PublishOptions::deliver_at`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliverAt {
    /// This long after the publish call.
    After(Duration),
    /// At this time.
    At(SystemTime),
}

impl DeliverAt {
    /// The time this names, for a publish made now.
    pub fn time(self) -> SystemTime {
        match self {
            DeliverAt::After(delay) => SystemTime::now()
                .checked_add(delay)
                .unwrap_or_else(far_future),
            DeliverAt::At(at) => at,
        }
    }
}

/// A time later than any delivery time anyone means (about 100 years from now): what a
/// delay too long for the clock becomes.
fn far_future() -> SystemTime {
    SystemTime::now() + Duration::from_secs(100 * 365 * 24 * 3600)
}

impl PublishOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Overrides the app for this publish.
    pub fn app(mut self, app: impl Into<String>) -> Self {
        self.app = Some(app.into());
        self
    }

    /// Overrides the namespace for this publish.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Adds one header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Adds every header of a map.
    pub fn headers<K: Into<String>, V: Into<String>>(
        mut self,
        headers: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.headers
            .extend(headers.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Trims the stream to at most `max_len` messages (0 = no trim).
    pub fn max_len(mut self, max_len: u64) -> Self {
        self.max_len = Some(max_len);
        self
    }

    /// Trims messages older than `max_age` (zero = no trim).
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// Delays delivery: the message is appended now, and no group hands it to a handler
    /// before `delay` has passed (see docs/semantics.md, "Delayed publish").
    pub fn deliver_after(mut self, delay: Duration) -> Self {
        self.deliver = Some(DeliverAt::After(delay));
        self
    }

    /// Delays delivery until `at` (a time in the past delivers at once).
    pub fn deliver_at(mut self, at: SystemTime) -> Self {
        self.deliver = Some(DeliverAt::At(at));
        self
    }

    /// Gives the published messages an ordering key, e.g. `"order-42"` (stored in the
    /// [`KEY_HEADER`](crate::KEY_HEADER) header; a message of a batch that already has a
    /// key keeps its own). A group ordered by key ([`SubscribeOptions::ordered`]) handles
    /// the messages sharing a key one at a time and in stream order.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
}

/// Where a new consumer group starts reading (S5). Applies only when the group is created;
/// afterwards the group's durable cursor wins.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StartPosition {
    /// Only messages appended after the group is created (default).
    #[default]
    Latest,
    /// The whole retained backlog.
    Earliest,
    /// Messages with ids strictly greater than this one. An id the backend cannot parse is
    /// an [`Error::InvalidStartId`](crate::Error::InvalidStartId).
    FromId(String),
}

impl FromStr for StartPosition {
    type Err = std::convert::Infallible;

    /// `"latest"`, `"earliest"`, or anything else as an id.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "latest" => StartPosition::Latest,
            "earliest" => StartPosition::Earliest,
            id => StartPosition::FromId(id.to_owned()),
        })
    }
}

impl fmt::Display for StartPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartPosition::Latest => f.write_str("latest"),
            StartPosition::Earliest => f.write_str("earliest"),
            StartPosition::FromId(id) => f.write_str(id),
        }
    }
}

/// How many times a failed message is tried again before it is dead-lettered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxRetries {
    /// At most this many retries: `Limited(0)` is one attempt, `Limited(3)` four.
    Limited(u32),
    /// Retry forever; only a permanent error dead-letters.
    Unlimited,
}

impl MaxRetries {
    /// The most attempts a message gets, or `None` when unlimited.
    pub fn max_attempts(self) -> Option<u32> {
        match self {
            MaxRetries::Limited(n) => Some(n.saturating_add(1)),
            MaxRetries::Unlimited => None,
        }
    }
}

impl Default for MaxRetries {
    fn default() -> Self {
        MaxRetries::Limited(DEFAULT_MAX_RETRIES)
    }
}

impl fmt::Display for MaxRetries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxRetries::Limited(n) => write!(f, "{n}"),
            MaxRetries::Unlimited => f.write_str("unlimited"),
        }
    }
}

pub use stream_rules::RetryDelay;

/// Options of one subscription, with their defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// App override (empty = the service's).
    pub app: Option<String>,
    /// Namespace override (empty = the service's).
    pub namespace: Option<String>,
    /// Start position when the group is created.
    pub start: StartPosition,
    /// Workers for this subscription (default 1; values < 1 mean 1).
    pub concurrency: usize,
    /// Retries before dead-lettering (default 3).
    pub max_retries: MaxRetries,
    /// Fallback wake-up cadence (default 1 s).
    pub poll_interval: Duration,
    /// How long a claim hides a message from the group's other workers (default 30 s).
    pub visibility_timeout: Duration,
    /// How long `close` waits for in-flight handlers (default 30 s).
    pub shutdown_timeout: Duration,
    /// Delay before a failed message comes back (default: the visibility timeout).
    pub retry_delay: RetryDelay,
    /// Dead-letter stream short name, formatted like any stream name
    /// (default: `<full stream name>.dead`).
    pub dead_letter: Option<String>,
    /// The consumer's name in spans (the `consumer` field); the runtime sets it to the
    /// `#[consumer]`'s name. Default: the group's name.
    pub name: Option<String>,
    /// The isolation level of a transactional handler's transactions (Postgres), instead of
    /// the service's [`transaction_isolation`](ServiceConfig::transaction_isolation).
    /// Only [`Service::subscribe_transactional`](crate::Service::subscribe_transactional)
    /// reads it.
    pub transaction_isolation: Option<Isolation>,
    /// Set for transactional handlers, which ack inside their own transaction: the
    /// database their transaction is on (`"postgres"`, `"sqlite"`).
    pub(crate) transactional: Option<&'static str>,
    /// Extends the claim of every running handler of this subscription, so a handler that
    /// runs longer than the visibility timeout keeps its message (default false). See
    /// [`heartbeat`](Self::heartbeat).
    pub heartbeat: bool,
    /// [`Order::Key`](crate::Order::Key): the messages sharing a key are handled one at a
    /// time and in stream order, across every process of the group (default
    /// [`Order::None`](crate::Order::None)). Every subscription of a group must agree.
    pub ordered: crate::key_order::Order,
    /// The most messages one batch handler call gets (default 100, from 1 to
    /// [`MAX_BATCH_SIZE`](crate::batch::MAX_BATCH_SIZE)). Only batch handlers
    /// ([`Service::subscribe_batch`](crate::Service::subscribe_batch)) read it.
    pub batch_size: usize,
    /// How long a batch that came back short waits for more messages before its handler
    /// runs (default zero: a batch holds what was there). Shorter than the visibility
    /// timeout, which runs from the claim. Only batch handlers read it.
    pub batch_wait: Duration,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            app: None,
            namespace: None,
            start: StartPosition::Latest,
            concurrency: 1,
            max_retries: MaxRetries::default(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            visibility_timeout: DEFAULT_VISIBILITY_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            retry_delay: RetryDelay::VisibilityTimeout,
            dead_letter: None,
            name: None,
            transaction_isolation: None,
            transactional: None,
            heartbeat: false,
            ordered: crate::key_order::Order::None,
            batch_size: crate::batch::DEFAULT_BATCH_SIZE,
            batch_wait: Duration::ZERO,
        }
    }
}

impl SubscribeOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Overrides the app for this subscription.
    pub fn app(mut self, app: impl Into<String>) -> Self {
        self.app = Some(app.into());
        self
    }

    /// Overrides the namespace for this subscription.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// Sets the start position used when the group is created.
    pub fn start(mut self, start: StartPosition) -> Self {
        self.start = start;
        self
    }

    /// Sets the number of workers (values < 1 mean 1).
    pub fn concurrency(mut self, workers: usize) -> Self {
        self.concurrency = workers;
        self
    }

    /// Sets the number of retries after the first attempt.
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = MaxRetries::Limited(retries);
        self
    }

    /// Retries failed messages forever.
    pub fn unlimited_retries(mut self) -> Self {
        self.max_retries = MaxRetries::Unlimited;
        self
    }

    /// Sets the fallback poll interval.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets the visibility timeout.
    pub fn visibility_timeout(mut self, timeout: Duration) -> Self {
        self.visibility_timeout = timeout;
        self
    }

    /// Sets how long `close` waits for in-flight handlers.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Sets the retry delay policy.
    pub fn retry_delay(mut self, delay: RetryDelay) -> Self {
        self.retry_delay = delay;
        self
    }

    /// Sets a custom dead-letter stream (a short name, formatted like any stream name).
    pub fn dead_letter(mut self, name: impl Into<String>) -> Self {
        self.dead_letter = Some(name.into());
        self
    }

    /// Names the consumer in spans (see [`SubscribeOptions::name`](Self#structfield.name)).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Turns the lease heartbeat on or off (default off). On, the engine extends the claim
    /// of every handler still running, every third of the visibility timeout, in one backend
    /// call per subscription: a live handler keeps its message however long it runs, and a
    /// crashed process's claims expire one visibility timeout after their last extension.
    /// Off, a handler running past the visibility timeout may see its message redelivered
    /// to another worker (S6).
    pub fn heartbeat(mut self, on: bool) -> Self {
        self.heartbeat = on;
        self
    }

    /// Sets the isolation level of this transactional handler's transactions (see
    /// [`SubscribeOptions::transaction_isolation`](Self#structfield.transaction_isolation)).
    pub fn transaction_isolation(mut self, level: Isolation) -> Self {
        self.transaction_isolation = Some(level);
        self
    }

    /// Sets how the group orders its messages (see
    /// [`SubscribeOptions::ordered`](Self#structfield.ordered)).
    pub fn ordered(mut self, order: crate::key_order::Order) -> Self {
        self.ordered = order;
        self
    }

    /// Sets the most messages one batch handler call gets (see
    /// [`SubscribeOptions::batch_size`](Self#structfield.batch_size)).
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size;
        self
    }

    /// Sets how long a short batch waits to fill (see
    /// [`SubscribeOptions::batch_wait`](Self#structfield.batch_wait)).
    pub fn batch_wait(mut self, wait: Duration) -> Self {
        self.batch_wait = wait;
        self
    }
}
