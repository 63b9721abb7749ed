//! The storage contract every backend implements, and nothing more.
//!
//! The engine owns workers, deadlines, attempts, the retry/dead-letter decision, panics and
//! shutdown. A backend stores messages, groups and pending claims, and answers these calls:
//! [`Backend`] for delivery, [`BackendAdmin`] for the operator's views and repairs
//! ([`Admin`](crate::admin::Admin)), which stay off the delivery path.
//! Every call that settles a claim (ack, retry, dead-letter, release) is fenced by its
//! [`ClaimToken`]: when the claim has since been taken over, the call has no effect (S7).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use crate::admin::{GroupStats, PendingEntry, ReadFrom, StreamInfo};
use crate::error::Result;
use crate::message::{Message, MessageId, NewMessage};
use crate::options::{StartPosition, Trim};

pub(crate) use connecting::{hint_refused, no_answer};
pub use connecting::{ConnectOptions, DEFAULT_CONNECT_TIMEOUT};
pub use redact::redact_url;
pub(crate) use redact::{redact_in, redact_text};

mod closed;
mod connecting;
pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
mod redact;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// A boxed, sendable future: what [`Backend`] methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The proof of one claim. A claim taken over by another worker gets a new token, and
/// every settling call made with the old one is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClaimToken(pub u64);

/// A claimed message ready for a handler: `message.attempt` is its delivery count.
#[derive(Clone, Debug)]
pub struct Claimed {
    /// The message.
    pub message: Message,
    /// The claim's token.
    pub token: ClaimToken,
}

/// What settling calls name: a message id and the token of the claim being settled.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Claim {
    /// The claimed message.
    pub id: MessageId,
    /// The claim's token.
    pub token: ClaimToken,
}

impl Claimed {
    /// The [`Claim`] that settles this delivery.
    pub fn claim(&self) -> Claim {
        Claim {
            id: self.message.id.clone(),
            token: self.token,
        }
    }
}

/// A consumer group of one stream, as seen by one consumer instance.
#[derive(Clone, Copy, Debug)]
pub struct GroupRef<'a> {
    /// Full stream name.
    pub stream: &'a str,
    /// Group name.
    pub group: &'a str,
    /// A name unique to this subscription in this process (Redis uses it as the consumer name).
    pub consumer: &'a str,
}

/// Storage for streams, consumer groups and pending claims.
///
/// Implementations: [`memory::MemoryBackend`], and behind features `sqlite`, `postgres` and
/// `redis`. The conformance suite (feature `conformance`) checks an implementation against
/// the whole contract. Every backend also implements [`BackendAdmin`], the inspection and
/// repair calls behind [`Admin`](crate::admin::Admin).
pub trait Backend: BackendAdmin + Send + Sync + 'static {
    /// `"memory"`, `"sqlite"`, `"postgres"`, `"redis"`: used in logs and errors.
    fn name(&self) -> &'static str;

    /// Appends messages in order and returns their ids, then trims the stream (S3): keep at
    /// most `trim.max_len` messages and none older than `trim.max_age` (zero = no limit).
    /// A trimmed message is dropped from every group's pending list.
    fn append<'a>(
        &'a self,
        stream: &'a str,
        messages: Vec<NewMessage>,
        trim: Trim,
    ) -> BoxFuture<'a, Result<Vec<MessageId>>>;

    /// Creates the group at `start` unless it exists (then `start` is ignored, S5).
    /// An unparsable start id is an [`Error::InvalidStartId`](crate::Error::InvalidStartId).
    fn ensure_group<'a>(
        &'a self,
        stream: &'a str,
        group: &'a str,
        start: &'a StartPosition,
    ) -> BoxFuture<'a, Result<()>>;

    /// Claims up to `max` messages for the group: first pending messages whose deadline has
    /// passed (in id order), then new messages past the group's cursor (in id order). Each
    /// claim gets a fresh token, a deadline of now + `visibility`, and one more delivery.
    fn claim<'a>(
        &'a self,
        group: GroupRef<'a>,
        max: usize,
        visibility: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claimed>>>;

    /// Acknowledges handled messages: they leave the group's pending list.
    fn ack<'a>(&'a self, group: GroupRef<'a>, claims: &'a [Claim]) -> BoxFuture<'a, Result<()>>;

    /// Leaves the message pending, claimable again after `delay`. Returns whether the claim
    /// was still held.
    fn retry<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        delay: Duration,
    ) -> BoxFuture<'a, Result<bool>>;

    /// Atomically appends `message` to the stream `to` and removes the claim from the group's
    /// pending list. Returns whether the claim was still held (if not, nothing is appended).
    fn dead_letter<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        to: &'a str,
        message: NewMessage,
    ) -> BoxFuture<'a, Result<bool>>;

    /// Makes held claims claimable again at once, and gives back the delivery each one
    /// counted: the next claim of such a message has the attempt the released one had. Used
    /// for handlers aborted by their consumer's shutdown, which the message must not pay for.
    /// Claims since taken over are left alone (fenced by their tokens, so a repeated release
    /// gives nothing back twice). The consumer named in `group` makes no claim afterwards
    /// (it is closing), so a backend may fence by consumer name and delivery count.
    fn release<'a>(&'a self, group: GroupRef<'a>, claims: &'a [Claim])
        -> BoxFuture<'a, Result<()>>;

    /// Pushes the deadline of every claim in `claims` still held (fenced by its token) to
    /// now + `visibility`, without a new token or delivery: the lease extension of a handler
    /// that is still running (the heartbeat, and `Message::extend_lease`). Claims since taken
    /// over, settled or trimmed away are left alone. Returns, for each claim in order, whether
    /// it was held and so extended. One call for the whole batch: the engine makes one per
    /// subscription and heartbeat period.
    fn extend<'a>(
        &'a self,
        group: GroupRef<'a>,
        claims: &'a [Claim],
        visibility: Duration,
    ) -> BoxFuture<'a, Result<Vec<bool>>>;

    /// Leaves the message pending, claimable again after `delay`, and gives back the
    /// delivery the claim counted (as [`release`](Self::release) does): the next claim of the
    /// message has the attempt this one had. Used for a message published with a delivery
    /// time (`PublishOptions::deliver_after`) that a claim returned early. Fenced by the
    /// token; returns whether the claim was still held. The consumer named in `group` may
    /// claim the message again later (unlike after a release): a backend whose tokens are
    /// delivery counts may issue the postponed claim's token again, which is safe because
    /// the engine drops a postponed claim and never settles it.
    fn postpone<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        delay: Duration,
    ) -> BoxFuture<'a, Result<bool>>;

    /// Checks that the backend answers (a cheap round trip: `SELECT 1`, `PING`): what a
    /// readiness probe asks. [`Error::Closed`](crate::Error::Closed) after [`close`](Self::close).
    fn ping(&self) -> BoxFuture<'_, Result<()>>;

    /// A receiver that is told when `stream` may have new messages (S14). Backends without
    /// push return [`Wakeup::never`], and the engine polls.
    fn wakeup(&self, stream: &str) -> Wakeup;

    /// Releases connections and background tasks. Called once, after every consumer closed.
    fn close(&self) -> BoxFuture<'_, Result<()>>;

    /// The SQL database holding the streams, for transactions ([`crate::transaction`]):
    /// `Some` on Postgres and SQLite, `None` (the default) on backends without them.
    /// A backend wrapping another one returns the inner one's.
    fn sql(&self) -> Option<SqlBackend<'_>> {
        None
    }

    /// Whether this backend keeps groups ordered by key ([`claim_ordered`](Self::claim_ordered)
    /// and the `_ordered` settling calls). `false` by default: subscribing with
    /// [`Order::Key`](crate::Order::Key) then fails with
    /// [`Error::OrderingUnsupported`](crate::Error::OrderingUnsupported). A backend
    /// wrapping another one returns the inner one's (and hands the `_ordered` calls on).
    fn key_order_supported(&self) -> bool {
        false
    }

    /// [`claim`](Self::claim) for a group ordered by key ([`crate::key_order`]): claims up to
    /// `max` messages, in id order, each of which is the earliest pending message of its key
    /// in the group (held, retrying or waiting), so two messages of one key are never held at
    /// once and a retrying one holds its key back. Messages without a key are claimable as
    /// in [`claim`](Self::claim). Messages past the cursor whose key is held are recorded as
    /// pending entries that wait (no delivery counted) until they are the earliest of their
    /// key. Atomic across every process of the group. Only called when
    /// [`key_order_supported`](Self::key_order_supported).
    fn claim_ordered<'a>(
        &'a self,
        group: GroupRef<'a>,
        max: usize,
        visibility: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claimed>>> {
        let _ = (group, max, visibility);
        Box::pin(async move {
            Err(crate::Error::OrderingUnsupported {
                backend: self.name(),
            })
        })
    }

    /// [`ack`](Self::ack) for a group ordered by key: releases each acked message's key, so
    /// the next message of that key becomes claimable. The default is [`ack`](Self::ack), for
    /// backends whose ordered claim finds the earliest pending message of a key by itself.
    fn ack_ordered<'a>(
        &'a self,
        group: GroupRef<'a>,
        claims: &'a [Claim],
    ) -> BoxFuture<'a, Result<()>> {
        self.ack(group, claims)
    }

    /// [`dead_letter`](Self::dead_letter) for a group ordered by key: also releases the
    /// message's key. The default is [`dead_letter`](Self::dead_letter), as for
    /// [`ack_ordered`](Self::ack_ordered).
    fn dead_letter_ordered<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        to: &'a str,
        message: NewMessage,
    ) -> BoxFuture<'a, Result<bool>> {
        self.dead_letter(group, claim, to, message)
    }
}

/// A backend whose streams live in a SQL database, so a caller's transaction on that
/// database can publish and settle messages ([`Backend::sql`]).
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum SqlBackend<'a> {
    /// The Postgres backend.
    #[cfg(feature = "postgres")]
    Postgres(&'a postgres::PostgresBackend),
    /// The SQLite backend.
    #[cfg(feature = "sqlite")]
    Sqlite(&'a sqlite::SqliteBackend),
    #[doc(hidden)]
    __Lifetime(std::marker::PhantomData<&'a ()>),
}

impl SqlBackend<'_> {
    /// `"postgres"` or `"sqlite"`.
    pub fn database(&self) -> &'static str {
        match self {
            #[cfg(feature = "postgres")]
            SqlBackend::Postgres(_) => "postgres",
            #[cfg(feature = "sqlite")]
            SqlBackend::Sqlite(_) => "sqlite",
            SqlBackend::__Lifetime(_) => "",
        }
    }
}

/// Checks that `backend` keeps its streams in `database` (`"postgres"`, `"sqlite"`), so
/// `what` (a transaction of that database) can run there; the error names the backends that
/// can.
pub(crate) fn check_database(
    backend: &dyn Backend,
    what: &'static str,
    database: &'static str,
) -> Result<()> {
    if backend.sql().is_some_and(|sql| sql.database() == database) {
        Ok(())
    } else {
        Err(crate::Error::TransactionsUnsupported {
            what,
            backend: backend.name(),
            requested: database,
        })
    }
}

/// What operators need beside delivery: read-only views of streams, groups and pending
/// claims, one atomic move of a message to another stream, and deletion. Every backend
/// implements it (the conformance suite checks it); none of it is on the delivery path, and
/// none of it adds a write to claims or acks.
///
/// Ids given as `&MessageId` that this backend could never have issued match nothing.
pub trait BackendAdmin: Send + Sync {
    /// The streams whose full names start with `prefix` (`""`: all), by name: every stream
    /// that holds a message or has a group.
    fn list_streams<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<StreamInfo>>>;

    /// The groups of `stream`, by name; empty when the stream has none.
    fn list_groups<'a>(&'a self, stream: &'a str) -> BoxFuture<'a, Result<Vec<GroupStats>>>;

    /// Up to `max` messages of `stream` in id order, chosen by `from`. They are not
    /// deliveries: `attempt` is 0.
    fn read<'a>(
        &'a self,
        stream: &'a str,
        from: &'a ReadFrom,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<Message>>>;

    /// Up to `max` pending entries of the group, in id order.
    fn list_pending<'a>(
        &'a self,
        stream: &'a str,
        group: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<PendingEntry>>>;

    /// Atomically deletes message `id` from stream `from` (and from its groups' pending
    /// lists) and appends `message` to stream `to`. Returns the new id, or `None` when `from`
    /// no longer holds `id` (then nothing is appended): of two moves of one message, exactly
    /// one succeeds.
    fn move_message<'a>(
        &'a self,
        from: &'a str,
        id: &'a MessageId,
        to: &'a str,
        message: NewMessage,
    ) -> BoxFuture<'a, Result<Option<MessageId>>>;

    /// Deletes these messages of `stream` (and their entries in its groups' pending lists);
    /// returns the ids of those it held, in the order given.
    fn delete_messages<'a>(
        &'a self,
        stream: &'a str,
        ids: &'a [MessageId],
    ) -> BoxFuture<'a, Result<Vec<MessageId>>>;
}

/// Implements [`BackendAdmin`] for a wrapper type by handing every call to one of its
/// fields: for backends that wrap another to change its delivery calls.
///
/// ```
/// use stream_runtime::backend::memory::MemoryBackend;
///
/// struct Wrapper {
///     inner: MemoryBackend,
/// }
/// stream_runtime::delegate_backend_admin!(Wrapper, inner);
/// ```
#[macro_export]
macro_rules! delegate_backend_admin {
    (impl [$($generics:tt)*] $wrapper:ty, $field:ident) => {
        impl<$($generics)*> $crate::backend::BackendAdmin for $wrapper {
            fn list_streams<'a>(
                &'a self,
                prefix: &'a str,
            ) -> $crate::backend::BoxFuture<
                'a,
                $crate::Result<::std::vec::Vec<$crate::admin::StreamInfo>>,
            > {
                self.$field.list_streams(prefix)
            }
            fn list_groups<'a>(
                &'a self,
                stream: &'a str,
            ) -> $crate::backend::BoxFuture<
                'a,
                $crate::Result<::std::vec::Vec<$crate::admin::GroupStats>>,
            > {
                self.$field.list_groups(stream)
            }
            fn read<'a>(
                &'a self,
                stream: &'a str,
                from: &'a $crate::admin::ReadFrom,
                max: usize,
            ) -> $crate::backend::BoxFuture<'a, $crate::Result<::std::vec::Vec<$crate::Message>>>
            {
                self.$field.read(stream, from, max)
            }
            fn list_pending<'a>(
                &'a self,
                stream: &'a str,
                group: &'a str,
                max: usize,
            ) -> $crate::backend::BoxFuture<
                'a,
                $crate::Result<::std::vec::Vec<$crate::admin::PendingEntry>>,
            > {
                self.$field.list_pending(stream, group, max)
            }
            fn move_message<'a>(
                &'a self,
                from: &'a str,
                id: &'a $crate::MessageId,
                to: &'a str,
                message: $crate::NewMessage,
            ) -> $crate::backend::BoxFuture<
                'a,
                $crate::Result<::std::option::Option<$crate::MessageId>>,
            > {
                self.$field.move_message(from, id, to, message)
            }
            fn delete_messages<'a>(
                &'a self,
                stream: &'a str,
                ids: &'a [$crate::MessageId],
            ) -> $crate::backend::BoxFuture<'a, $crate::Result<::std::vec::Vec<$crate::MessageId>>>
            {
                self.$field.delete_messages(stream, ids)
            }
        }
    };
    ($wrapper:ty, $field:ident) => {
        $crate::delegate_backend_admin!(impl [] $wrapper, $field);
    };
}

/// A wake-up signal for one stream: [`Wakeup::changed`] resolves after a notify that came
/// after the last [`Wakeup::mark_seen`], so a notify racing with a claim is never lost.
#[derive(Debug)]
pub struct Wakeup(Option<watch::Receiver<()>>);

impl Wakeup {
    /// A wake-up that never fires: the engine relies on the poll interval.
    pub fn never() -> Self {
        Wakeup(None)
    }

    /// Forgets notifications received so far. Call before looking for work.
    pub fn mark_seen(&mut self) {
        if let Some(rx) = &mut self.0 {
            rx.mark_unchanged();
        }
    }

    /// Resolves at the next notification not yet seen; never for [`Wakeup::never`].
    pub async fn changed(&mut self) {
        match &mut self.0 {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }
}

/// In-process wake-ups by stream name: backends notify after an append (or when a
/// cross-process signal arrives), consumers wait on [`Backend::wakeup`].
#[derive(Debug, Default)]
pub struct WakeupHub {
    streams: Mutex<HashMap<String, watch::Sender<()>>>,
}

impl WakeupHub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// A receiver for `stream`.
    pub fn subscribe(&self, stream: &str) -> Wakeup {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        let sender = streams
            .entry(stream.to_owned())
            .or_insert_with(|| watch::channel(()).0);
        Wakeup(Some(sender.subscribe()))
    }

    /// Wakes every consumer of `stream` in this process.
    pub fn notify(&self, stream: &str) {
        let streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = streams.get(stream) {
            sender.send_replace(());
        }
    }

    /// Wakes every consumer of every stream (after a reconnect, say).
    pub fn notify_all(&self) {
        let streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        for sender in streams.values() {
            sender.send_replace(());
        }
    }
}

/// Shares one backend among services and the engine.
pub type SharedBackend = Arc<dyn Backend>;

/// Parses a start id of a backend whose ids are non-negative integers (memory, SQLite,
/// Postgres); anything else is an [`Error::InvalidStartId`](crate::Error::InvalidStartId).
pub fn integer_start_id(backend: &str, id: &str) -> Result<i64> {
    id.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| crate::Error::InvalidStartId {
            id: id.to_owned(),
            reason: format!("the {backend} backend's ids are non-negative integers, e.g. \"42\""),
        })
}

/// An integer id (SQLite, Postgres) as a [`MessageId`].
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn integer_id(id: Option<i64>) -> Option<MessageId> {
    id.map(|id| MessageId::new(id.to_string()))
}

/// A `LIMIT` for SQL.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn sql_limit(max: usize) -> i64 {
    i64::try_from(max).unwrap_or(i64::MAX)
}

/// Connects to the backend a URL names and creates its schema:
/// `memory://`, `sqlite:` / `sqlite://`, `postgres://` / `postgresql://`, `redis://` /
/// `rediss://`, `redis+cluster://` / `rediss+cluster://` (a Redis Cluster), `nats://`.
/// Errors show the URL with its password redacted.
pub async fn connect(url: &str) -> Result<SharedBackend> {
    connect_with(url, ConnectOptions::default()).await
}

/// [`connect`] with options (the connect timeout).
pub async fn connect_with(url: &str, options: ConnectOptions) -> Result<SharedBackend> {
    let scheme = url.split(':').next().unwrap_or_default();
    match scheme {
        "memory" => Ok(Arc::new(memory::MemoryBackend::new())),
        #[cfg(feature = "redis")]
        "redis" | "rediss" | "redis+cluster" | "rediss+cluster" => Ok(Arc::new(
            self::redis::RedisBackend::connect_with(url, options).await?,
        )),
        #[cfg(feature = "nats")]
        "nats" => Ok(Arc::new(
            self::nats::NatsBackend::connect_with(url, options).await?,
        )),
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(Arc::new(sqlite::SqliteBackend::connect(url).await?)),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(Arc::new(
            postgres::PostgresBackend::connect_with(url, options).await?,
        )),
        // Reached only for the schemes whose backend features are off.
        #[allow(unreachable_patterns)]
        "sqlite" | "postgres" | "postgresql" | "redis" | "rediss" | "redis+cluster"
        | "rediss+cluster" | "nats" => Err(crate::Error::FeatureDisabled {
            feature: match scheme {
                "sqlite" => "sqlite",
                "postgres" | "postgresql" => "postgres",
                "nats" => "nats",
                _ => "redis",
            },
            url: redact_url(url),
        }),
        // A libpq-style `host=... user=...` string: say what to write instead.
        _ if !url.contains("://") && url.contains('=') => Err(crate::Error::Config(format!(
            "backend {} is a key=value connection string; write it as a URL instead, e.g. \
             postgres://user@host:5432/db, with the password after the user name, \
             percent-encoded (user:password@host)",
            redact_url(url)
        ))),
        _ => Err(crate::Error::UnknownScheme {
            url: redact_url(url),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::connect;
    use crate::Error;

    #[tokio::test]
    async fn an_unknown_scheme_is_its_own_error_with_the_password_hidden() {
        match connect("mysql://app:s3cret@db/x").await {
            Err(Error::UnknownScheme { url }) => assert!(!url.contains("s3cret"), "{url}"),
            Err(other) => panic!("not an unknown-scheme error: {other:?}"),
            Ok(_) => panic!("connected to mysql://"),
        }
    }

    /// A build without a backend's feature says which feature to enable (a build with
    /// every feature compiles no case here).
    #[tokio::test]
    async fn a_disabled_backend_names_its_feature() {
        let mut disabled = Vec::new();
        if !cfg!(feature = "sqlite") {
            disabled.push(("sqlite://x.db", "sqlite"));
        }
        if !cfg!(feature = "postgres") {
            disabled.push(("postgresql://app:s3cret@db/x", "postgres"));
        }
        if !cfg!(feature = "redis") {
            disabled.push(("rediss://:s3cret@cache", "redis"));
        }
        if !cfg!(feature = "nats") {
            disabled.push(("nats://app:s3cret@bus:4222", "nats"));
        }
        for (url, wanted) in disabled {
            match connect(url).await {
                Err(Error::FeatureDisabled {
                    feature,
                    url: shown,
                }) => {
                    assert_eq!(feature, wanted, "{url}");
                    assert!(!shown.contains("s3cret"), "{shown}");
                }
                Err(other) => panic!("{url}: not a feature error: {other:?}"),
                Ok(_) => panic!("{url} connected"),
            }
        }
    }
}
