//! The Redis Streams backend (feature `redis`): one Redis stream per stream, consumer
//! groups and pending lists are Redis's own, every multi-step operation is a Lua script (an
//! append without an age trim is a `MULTI`/`EXEC` transaction of `XADD`s).
//!
//! # Key layout
//!
//! For a full stream name `N` (with `%`, `{` and `}` percent-encoded as `%25`, `%7B`, `%7D`,
//! so the hash tag is always exactly `{N}`):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `streams:{N}` | stream | the messages; consumer groups and their pending lists |
//! | `streams:{N}:retry:<group>` | sorted set | ids parked for a retry, scored by retry time (ms) |
//! | `streams:{N}:deadlines:<group>` | sorted set | claimed ids, scored by their claim's deadline (ms); a claim of new messages is one member `@<cursor before> <cursor after> <count> <consumer>` for all of them |
//! | `streams:{N}:claiming:<group>` | string | the group's cursor before a claim's read, for the claim's last step (only inside the claim's transaction) |
//!
//! The hash tag keeps a stream and its side keys in one cluster slot. On a Redis Cluster, a
//! dead letter or a redrive moves a message between two slots in three steps (see
//! `cluster.rs`), with these keys beside them:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `streams:{D}:dead:<len>:<N>:<group>:<id>` | string | the id of the dead letter of `<id>` of `N` in dead-letter stream `D` (kept for [`MARKER_LIFE`]) |
//! | `streams:{T}:moved:<N>:<id>` | string | the id of the copy of `<id>` of `N` redriven to `T` (kept for [`MARKER_LIFE`]) |
//! | `streams:{N}:redrive:<id>` | string | the lock of a redrive of `<id>` in progress (for [`RedisBackend::move_lease`]) |
//!
//! # Entry layout
//!
//! Field `payload` holds the payload bytes, field `h:<name>` each header; other fields (from
//! other clients) are ignored. `created_at` is the time part of the id (the server's clock
//! at the first append), so `redis-cli XRANGE streams:{app.default.orders} - +` shows every
//! message as plain fields.
//!
//! # Claims
//!
//! A claim's token is the entry's delivery count when it was claimed, and the owner is the
//! subscription's consumer name ([`GroupRef::consumer`]): ack, retry, release and dead-letter
//! scripts act only if `XPENDING` still shows both. A retry (or release) hands the entry to
//! the group's parking consumer `~parked` and records its retry time in the group's retry
//! set; claims take due retries first, then claims past their deadline (each claim records
//! now + the visibility it was claimed with, so a worker with another visibility timeout
//! neither steals a claim early nor waits past its deadline), then new messages
//! (`XREADGROUP`). See `scripts.rs`.

mod admin;
mod cluster;
mod conn;
mod consumers;
mod entries;
mod keys;
mod ordered;
mod scripts;
mod watch;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ::redis::aio::ConnectionManager;
use ::redis::{ErrorKind, RedisError, RedisResult, ServerErrorKind, Value};

use super::{
    hint_refused, no_answer, redact_url, Backend, BoxFuture, Claim, Claimed, ConnectOptions,
    GroupRef, Wakeup, WakeupHub,
};
use crate::backend::closed::Closed;
use crate::error::{Error, Result};
use crate::message::{MessageId, NewMessage};
use crate::options::{StartPosition, Trim};

pub use cluster::{DEFAULT_MOVE_LEASE, MARKER_LIFE};
use conn::{Conn, Target};
use consumers::Consumers;
use entries::{claimed_entries, created_at, parse_claimed, parse_start_id, read_entries};
pub use keys::stream_key;
use keys::{claiming_key, deadlines_key, escape, retry_key};
use scripts::Scripts;

const NAME: &str = "redis";
/// The consumer that holds entries parked for a retry.
const PARKED: &str = "~parked";
/// The field holding the payload.
const PAYLOAD_FIELD: &str = "payload";
/// The prefix of header fields.
const HEADER_PREFIX: &str = "h:";
/// The oldest server this backend supports (`XCLAIM` drops entries deleted by trimming
/// from the pending list).
const MIN_VERSION: (u32, u32) = (7, 0);

/// How often a transaction refused by a cluster node that moved its slot is sent again.
const MOVED_RETRIES: u32 = 5;

/// The default of [`RedisBackend::idle_consumer_timeout`].
pub const DEFAULT_IDLE_CONSUMER_TIMEOUT: Duration = Duration::from_secs(60);

/// Streams, groups and claims in Redis, with push wake-ups from blocking reads.
pub struct RedisBackend {
    target: Target,
    conn: Conn,
    url: String,
    scripts: Scripts,
    wakeups: Arc<WakeupHub>,
    watchers: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// The consumers this backend claimed for, and when each last claimed.
    consumers: Mutex<Consumers>,
    idle_consumer_timeout: Duration,
    /// How long a move across cluster slots holds its message ([`RedisBackend::move_lease`]).
    move_lease: Duration,
    /// The step after which the next move across slots stops (0: none); a test's fault hook.
    stop_after: std::sync::atomic::AtomicU8,
    closed: Closed,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.url)
            .field("closed", &self.closed.is_closed())
            .finish_non_exhaustive()
    }
}

/// Takes `cacert=PATH` (the CA that signed the server's certificate, PEM) out of the
/// URL's query: the URL the `redis` crate reads, and the CA's certificates.
fn take_cacert(url: &str, shown: &str) -> Result<(String, Option<Vec<u8>>)> {
    let Some((head, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None));
    };
    let mut path = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("cacert=") {
            Some(p) => {
                path = Some(p);
                false
            }
            None => true,
        })
        .collect();
    let Some(path) = path else {
        return Ok((url.to_owned(), None));
    };
    if !cfg!(feature = "tls") {
        return Err(Error::FeatureDisabled {
            feature: "tls",
            url: shown.to_owned(),
        });
    }
    let pem = std::fs::read(path).map_err(|e| {
        Error::Config(format!(
            "cannot read the CA certificate {path} (cacert= of backend URL {shown}): {e}"
        ))
    })?;
    let url = if rest.is_empty() {
        head.to_owned()
    } else {
        format!("{head}?{}", rest.join("&"))
    };
    Ok((url, Some(pem)))
}

/// Clients that check the server's certificate against a CA of the URL's `cacert=`.
mod tls {
    use ::redis::cluster::ClusterClientBuilder;
    use ::redis::{Client, RedisResult};

    #[cfg(feature = "tls")]
    fn certificates(ca: Vec<u8>) -> ::redis::TlsCertificates {
        ::redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca),
        }
    }

    #[cfg(feature = "tls")]
    pub(super) fn client_with_ca(url: &str, ca: Vec<u8>) -> RedisResult<Client> {
        Client::build_with_tls(url, certificates(ca))
    }

    #[cfg(feature = "tls")]
    pub(super) fn cluster_with_ca(
        builder: ClusterClientBuilder,
        ca: Option<Vec<u8>>,
    ) -> ClusterClientBuilder {
        match ca {
            Some(ca) => builder.certs(certificates(ca)),
            None => builder,
        }
    }

    // Without the feature a `cacert=` is refused before these are reached.
    #[cfg(not(feature = "tls"))]
    pub(super) fn client_with_ca(url: &str, _ca: Vec<u8>) -> RedisResult<Client> {
        Client::open(url)
    }

    #[cfg(not(feature = "tls"))]
    pub(super) fn cluster_with_ca(
        builder: ClusterClientBuilder,
        _ca: Option<Vec<u8>>,
    ) -> ClusterClientBuilder {
        builder
    }
}

/// A connection error naming the server, with a hint when it was refused.
fn connect_failed(what: &str, shown: &str, e: RedisError) -> Error {
    let refused = e.is_connection_refusal();
    Error::backend(NAME, format!("{what} {shown}"), hint_refused(e, refused))
}

/// Errors worth retrying a settling call for: the connection dropped or the server is
/// restarting. Settling scripts are fenced, so running one twice does nothing new.
fn transient(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
            )
        )
}

/// Whether a failed request may have been executed by the server: the connection dropped
/// or timed out (rather than refused, or answered with an error).
fn lost_after_sending(e: &RedisError) -> bool {
    !e.is_connection_refusal() && (e.is_io_error() || e.is_timeout() || e.is_connection_dropped())
}

fn unexpected(what: &str, value: &Value) -> Error {
    Error::backend(
        NAME,
        format!("reading the reply of {what}"),
        format!("unexpected reply {value:?}"),
    )
}

/// What a failed claim of `group` was doing, for its error.
fn claiming_what(group: GroupRef<'_>) -> String {
    format!("claiming messages of {}/{}", group.stream, group.group)
}

/// The two numbers of a stream entry id `<ms>-<seq>`, which order ids as Redis does.
fn entry_id_parts(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The lowest and the highest entry id of `claims`, or `None` if one is not an entry id.
fn id_range(claims: &[Claim]) -> Option<(&str, &str)> {
    type Key<'a> = (u64, u64, &'a str);
    let mut range: Option<(Key<'_>, Key<'_>)> = None;
    for claim in claims {
        let id = claim.id.as_str();
        let (ms, seq) = entry_id_parts(id)?;
        let key = (ms, seq, id);
        range = Some(match range {
            None => (key, key),
            Some((lo, hi)) => (lo.min(key), hi.max(key)),
        });
    }
    range.map(|(lo, hi)| (lo.2, hi.2))
}

/// Payload and headers as stream fields.
fn fields(message: NewMessage) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(2 + 2 * message.headers.len());
    out.push(PAYLOAD_FIELD.as_bytes().to_vec());
    // No copy: a published payload is the only owner of its bytes.
    out.push(Vec::from(message.payload));
    for (name, value) in message.headers {
        out.push(format!("{HEADER_PREFIX}{name}").into_bytes());
        out.push(value.into_bytes());
    }
    out
}

/// A duration in milliseconds as Redis parses them (a signed 64-bit integer): a larger one
/// (`Duration::MAX`) is capped instead of failing every call with "invalid min-idle-time".
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A URL the redis crate refused, said in words (its own text ends in a Debug-printed
/// error kind).
fn invalid_url(shown: &str, e: &RedisError) -> Error {
    let text = e.to_string();
    let what = text.split(" - ").next().unwrap_or(&text).to_lowercase();
    let what = match e.detail() {
        Some(detail) => format!("{what}: {detail}"),
        None => what,
    };
    Error::Config(format!(
        "backend URL {shown} is not a valid Redis URL ({what}); write \
         redis://host[:port][/db], where db is a number such as 0"
    ))
}

impl RedisBackend {
    /// Connects to `redis://[:password@]host[:port][/db]` and checks the server is Redis 7.0
    /// or newer. The connection reconnects by itself after a drop or a server restart.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, ConnectOptions::default()).await
    }

    /// Like [`connect`](Self::connect), with options: connecting and the version check
    /// give up after `connect_timeout` with "no answer within ...".
    ///
    /// `redis+cluster://[:password@]host:port[,host:port...]` (or `rediss+cluster://`)
    /// connects to a Redis Cluster through the listed seed nodes.
    pub async fn connect_with(url: &str, options: ConnectOptions) -> Result<Self> {
        let shown = redact_url(url);
        if url.starts_with("rediss") && !cfg!(feature = "tls") {
            return Err(Error::FeatureDisabled {
                feature: "tls",
                url: shown,
            });
        }
        let (url, ca) = take_cacert(url, &shown)?;
        let url = url.as_str();
        if cluster::is_cluster_url(url) {
            return Self::connect_cluster(url, ca, shown, options).await;
        }
        let client = match ca {
            None => ::redis::Client::open(url),
            Some(ca) => tls::client_with_ca(url, ca),
        }
        .map_err(|e| invalid_url(&shown, &e))?;
        let timeout = options.connect_timeout;
        let failed = |what: &str, e: RedisError| connect_failed(what, &shown, e);
        let timed_out =
            || Error::backend(NAME, format!("connecting to {shown}"), no_answer(timeout));
        // One direct connection first, for a clear error at once: the connection manager
        // retries a refused or silent server for a while before it gives up.
        let (info, cluster_info): (String, String) = tokio::time::timeout(timeout, async {
            let mut direct = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| failed("connecting to", e))?;
            let info = ::redis::cmd("INFO")
                .arg("server")
                .query_async(&mut direct)
                .await
                .map_err(|e| failed("reading the server version of", e))?;
            let cluster_info = ::redis::cmd("INFO")
                .arg("cluster")
                .query_async(&mut direct)
                .await
                .unwrap_or_default();
            Ok::<_, Error>((info, cluster_info))
        })
        .await
        .map_err(|_| timed_out())??;
        check_version(&info, &shown)?;
        if cluster_info.contains("cluster_enabled:1") {
            return Err(Error::Config(format!(
                "the Redis server at {shown} is a Redis Cluster node; write the URL as \
                 redis+cluster://host:port[,host:port...] (rediss+cluster:// with TLS)"
            )));
        }
        let config = ::redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_number_of_retries(4)
            .set_max_delay(Duration::from_secs(2));
        let conn = tokio::time::timeout(
            timeout,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| failed("connecting to", e))?;
        Ok(Self::with(
            Target::Single(Box::new(client)),
            Conn::Managed(conn),
            shown,
        ))
    }

    /// Connects to a cluster through its seed nodes.
    async fn connect_cluster(
        url: &str,
        ca: Option<Vec<u8>>,
        shown: String,
        options: ConnectOptions,
    ) -> Result<Self> {
        let nodes = cluster::node_urls(url).map_err(|why| {
            Error::Config(format!(
                "backend URL {shown} is not a valid Redis Cluster URL ({why}); write \
                 redis+cluster://host:port[,host:port...]"
            ))
        })?;
        let timeout = options.connect_timeout;
        let build = |response_timeout: Duration| {
            let builder = ::redis::cluster::ClusterClient::builder(nodes.clone())
                .connection_timeout(timeout)
                .response_timeout(response_timeout);
            tls::cluster_with_ca(builder, ca.clone())
                .build()
                .map_err(|e| invalid_url(&shown, &e))
        };
        let client = build(Duration::from_secs(10))?;
        let watch_client = build(watch::BLOCK + Duration::from_secs(5))?;
        let timed_out =
            || Error::backend(NAME, format!("connecting to {shown}"), no_answer(timeout));
        let (conn, info) = tokio::time::timeout(timeout, async {
            let mut conn = client
                .get_async_connection()
                .await
                .map_err(|e| connect_failed("connecting to the cluster", &shown, e))?;
            let info: Value = conn
                .route_command(
                    ::redis::cmd("INFO").arg("server").clone(),
                    ::redis::cluster_routing::RoutingInfo::SingleNode(
                        ::redis::cluster_routing::SingleNodeRoutingInfo::RandomPrimary,
                    ),
                )
                .await
                .map_err(|e| connect_failed("reading the server version of", &shown, e))?;
            Ok::<_, Error>((conn, info))
        })
        .await
        .map_err(|_| timed_out())??;
        let info = match info {
            Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            Value::VerbatimString { text, .. } => text,
            Value::SimpleString(s) => s,
            other => return Err(unexpected("INFO server", &other)),
        };
        check_version(&info, &shown)?;
        Ok(Self::with(
            Target::Cluster(Box::new(watch_client)),
            Conn::Cluster(conn),
            shown,
        ))
    }

    fn with(target: Target, conn: Conn, shown: String) -> Self {
        RedisBackend {
            target,
            conn,
            url: shown,
            scripts: Scripts::new(),
            wakeups: Arc::new(WakeupHub::new()),
            watchers: Mutex::new(HashMap::new()),
            consumers: Mutex::new(Consumers {
                last_claim: HashMap::new(),
                last_sweep: Instant::now(),
            }),
            idle_consumer_timeout: DEFAULT_IDLE_CONSUMER_TIMEOUT,
            move_lease: cluster::DEFAULT_MOVE_LEASE,
            stop_after: std::sync::atomic::AtomicU8::new(0),
            closed: Closed::default(),
        }
    }

    /// Whether this backend is connected to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.conn, Conn::Cluster(_))
    }

    /// A backend error naming the server (password redacted).
    fn error(&self, what: String, e: RedisError) -> Error {
        Error::backend(NAME, format!("{what} on {}", self.url), e)
    }

    /// Runs a fenced (so repeatable) script, retrying a few times while the connection is
    /// down or the server restarts.
    async fn run_settling<T: ::redis::FromRedisValue>(
        &self,
        invocation: &::redis::ScriptInvocation<'_>,
        what: impl FnOnce() -> String,
    ) -> Result<T> {
        let mut conn = self.conn.clone();
        let mut delay = Duration::from_millis(50);
        let mut attempts = 0;
        loop {
            match invocation.invoke_async(&mut conn).await {
                Ok(v) => return Ok(v),
                Err(e) if attempts < 6 && transient(&e) => {
                    attempts += 1;
                    tracing::debug!(error = %e, retry_in = ?delay, "redis call failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(self.error(what(), e)),
            }
        }
    }

    /// On a Redis Cluster, a transaction sent to a node that no longer serves its slot is
    /// refused whole (`MOVED` while queueing, then `EXECABORT`), and the client does not learn
    /// the new slot map from that. A plain command on the same key does (the client follows
    /// the redirection and refreshes its map). Returns whether `e` was such a refusal and the
    /// map was refreshed, so the transaction, which did not run, can be sent again.
    async fn follow_moved(&self, e: &RedisError, key: &str) -> bool {
        if !self.is_cluster() {
            return false;
        }
        let moved = e.clone().into_server_errors().is_some_and(|errors| {
            errors.iter().any(|(_, e)| {
                matches!(
                    e.kind(),
                    Some(ServerErrorKind::Moved | ServerErrorKind::Ask | ServerErrorKind::TryAgain)
                )
            })
        });
        if !moved {
            return false;
        }
        let refreshed: RedisResult<i64> = ::redis::cmd("EXISTS")
            .arg(key)
            .query_async(&mut self.conn.clone())
            .await;
        if let Err(e) = refreshed {
            tracing::debug!(error = %e, "refreshing the cluster's slot map failed");
        }
        true
    }

    /// What every claim (plain or ordered by key) does around its attempt: the consumer
    /// bookkeeping, then `attempt` (`None`: the group is missing), and once the group was
    /// found missing, creating it again and one more attempt.
    async fn claiming<F, Fut>(&self, group: GroupRef<'_>, mut attempt: F) -> Result<Vec<Claimed>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<Vec<Claimed>>>>,
    {
        self.closed.check()?;
        let stale = self.remember_consumer(group);
        if !stale.is_empty() {
            self.remove_idle_consumers(stale).await;
        }
        let mut recreated = false;
        loop {
            if let Some(claimed) = attempt().await? {
                return Ok(claimed);
            }
            if recreated {
                return Err(Error::backend(
                    NAME,
                    claiming_what(group),
                    "the consumer group is missing again right after it was created",
                ));
            }
            // The group (or the whole stream) is gone: the server lost its data (a restart
            // without persistence, an old snapshot) or someone deleted it. Create it again
            // from the start of what the stream holds now, so the consumer goes on instead
            // of silently claiming nothing forever.
            recreated = true;
            tracing::warn!(
                stream = %group.stream, group = %group.group,
                "the consumer group is missing on the Redis server (data lost or \
                 deleted); creating it again from the start of the stream"
            );
            self.ensure_group(group.stream, group.group, &StartPosition::Earliest)
                .await?;
        }
    }

    /// A claim of at most [`scripts::SMALL_CLAIM`] messages: one script (see `CLAIM`).
    /// `None`: the group is missing.
    async fn claim_small(
        &self,
        group: GroupRef<'_>,
        max: usize,
        visibility: Duration,
    ) -> Result<Option<Vec<Claimed>>> {
        let result: RedisResult<Value> = self
            .scripts
            .claim
            .key(stream_key(group.stream))
            .key(retry_key(group.stream, group.group))
            .key(deadlines_key(group.stream, group.group))
            .arg(group.group)
            .arg(group.consumer)
            .arg(max)
            .arg(millis(visibility))
            .invoke_async(&mut self.conn.clone())
            .await;
        match result {
            Ok(reply) => claimed_entries(group.stream, reply, "the claim script").map(Some),
            Err(e) if e.code() == Some("NOGROUP") => Ok(None),
            Err(e) => Err(self.error(claiming_what(group), e)),
        }
    }

    /// One claim: a transaction of `CLAIM_BEGIN` (reclaims), a plain
    /// `XREADGROUP` of new messages (their entries never pass through Lua) and
    /// [`scripts::CLAIM_END`] (their deadlines; what the read took beyond `max` is given
    /// back). The reclaimed entries come first, in id order, then the new ones. `None`: the
    /// group is missing.
    async fn claim_once(
        &self,
        group: GroupRef<'_>,
        max: usize,
        visibility: Duration,
    ) -> Result<Option<Vec<Claimed>>> {
        let failed = |e| self.error(claiming_what(group), e);
        let stream = stream_key(group.stream);
        let deadlines = deadlines_key(group.stream, group.group);
        let scratch = claiming_key(group.stream, group.group);
        let mut pipe = ::redis::pipe();
        pipe.atomic().ignore_errors();
        pipe.cmd("EVAL")
            .arg(&self.scripts.claim_begin)
            .arg(4)
            .arg(&stream)
            .arg(retry_key(group.stream, group.group))
            .arg(&deadlines)
            .arg(&scratch)
            .arg(group.group)
            .arg(group.consumer)
            .arg(max)
            .arg(millis(visibility));
        pipe.cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group.group)
            .arg(group.consumer)
            .arg("COUNT")
            .arg(max)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">");
        pipe.cmd("EVAL")
            .arg(&self.scripts.claim_end)
            .arg(3)
            .arg(&stream)
            .arg(&deadlines)
            .arg(&scratch)
            .arg(group.group)
            .arg(group.consumer)
            .arg(max);
        let mut moved = 0;
        let replies: Vec<Value> = loop {
            match pipe.query_async(&mut self.conn.clone()).await {
                Ok(replies) => break replies,
                Err(e) if moved < MOVED_RETRIES && self.follow_moved(&e, &stream).await => {
                    moved += 1;
                }
                Err(e) => return Err(failed(e)),
            }
        };
        let [reclaimed, read, kept]: [Value; 3] = match replies.try_into() {
            Ok(replies) => replies,
            Err(replies) => return Err(unexpected("the claim", &Value::Array(replies))),
        };
        // The first error, the read's first: a missing group is what it reports. Whatever
        // failed, the last step gave back what the read took.
        for reply in [&read, &reclaimed, &kept] {
            if let Value::ServerError(e) = reply {
                if e.code() == "NOGROUP" {
                    return Ok(None);
                }
                return Err(failed(e.clone().into()));
            }
        }
        let kept = match kept {
            Value::Int(-1) => usize::MAX,
            Value::Int(n) => usize::try_from(n).unwrap_or(0),
            other => return Err(unexpected("the claim's last step", &other)),
        };
        let mut claimed = claimed_entries(group.stream, reclaimed, "the claim's first step")?;
        if kept > 0 {
            claimed.extend(read_entries(&Arc::from(group.stream), read, kept)?);
        }
        Ok(Some(claimed))
    }

    /// Parks claims until `now + delay` (retry and release).
    /// Parks held claims until `delay` from now; `refund` gives their deliveries back (a
    /// release).
    async fn park(
        &self,
        group: GroupRef<'_>,
        claims: &[Claim],
        delay: Duration,
        refund: bool,
    ) -> Result<u64> {
        let mut invocation = self.scripts.park.prepare_invoke();
        invocation
            .key(stream_key(group.stream))
            .key(retry_key(group.stream, group.group))
            .key(deadlines_key(group.stream, group.group))
            .arg(group.group)
            .arg(group.consumer)
            .arg(PARKED)
            .arg(millis(delay))
            .arg(u8::from(refund));
        for claim in claims {
            invocation.arg(claim.id.as_str()).arg(claim.token.0);
        }
        self.run_settling(&invocation, || {
            let what = if refund {
                "releasing claims"
            } else {
                "scheduling a retry"
            };
            format!("{what} in {}/{}", group.stream, group.group)
        })
        .await
    }
}

fn check_version(info: &str, shown: &str) -> Result<()> {
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(str::trim)
        .unwrap_or("");
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next().flatten();
    let minor = parts.next().flatten();
    match (major, minor) {
        (Some(major), Some(minor)) if (major, minor) >= MIN_VERSION => Ok(()),
        // Not Redis (e.g. a compatible server without a version line): let it try.
        (None, _) | (_, None) => Ok(()),
        _ => Err(Error::Config(format!(
            "the Redis server at {shown} is version {version}; this backend needs Redis {}.{} or newer",
            MIN_VERSION.0, MIN_VERSION.1
        ))),
    }
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        for (_, watcher) in self
            .watchers
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
        {
            watcher.abort();
        }
    }
}

impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn append<'a>(
        &'a self,
        stream: &'a str,
        messages: Vec<NewMessage>,
        trim: Trim,
    ) -> BoxFuture<'a, Result<Vec<MessageId>>> {
        Box::pin(async move {
            self.closed.check()?;
            if messages.is_empty() {
                return Ok(Vec::new());
            }
            let count = messages.len();
            let sent = if trim.max_age.is_zero() {
                // No age trim: a transaction (`MULTI`, one `XADD` per message, `EXEC`) in
                // one round trip, atomic like the script and cheaper for the server than
                // a `redis.call` per message.
                let key = stream_key(stream);
                let mut pipe = ::redis::pipe();
                pipe.atomic();
                for message in messages {
                    let add = pipe.cmd("XADD").arg(&key);
                    if trim.max_len > 0 {
                        add.arg("MAXLEN")
                            .arg("=")
                            .arg(trim.max_len.min(i64::MAX as u64));
                    }
                    add.arg("*").arg(fields(message));
                }
                let mut moved = 0;
                loop {
                    match pipe
                        .query_async::<Vec<String>>(&mut self.conn.clone())
                        .await
                    {
                        Err(e) if moved < MOVED_RETRIES && self.follow_moved(&e, &key).await => {
                            moved += 1;
                        }
                        sent => break sent,
                    }
                }
            } else {
                // An age trim cuts by the newest id's time (the server's clock): the script.
                let mut invocation = self.scripts.append.prepare_invoke();
                invocation
                    .key(stream_key(stream))
                    .arg(trim.max_len.min(i64::MAX as u64))
                    .arg(u64::try_from(trim.max_age.as_millis()).unwrap_or(u64::MAX));
                for message in messages {
                    let fields = fields(message);
                    invocation.arg(fields.len()).arg(fields);
                }
                invocation.invoke_async(&mut self.conn.clone()).await
            };
            let what = || format!("appending to {stream}");
            let ids: Vec<String> = sent.map_err(|e| {
                if lost_after_sending(&e) {
                    Error::outcome_unknown(NAME, format!("{} on {}", what(), self.url), e)
                } else {
                    self.error(what(), e)
                }
            })?;
            if ids.len() != count {
                return Err(Error::backend(
                    NAME,
                    what(),
                    format!("the server returned {} ids for {count} messages", ids.len()),
                ));
            }
            self.wakeups.notify(stream);
            Ok(ids.into_iter().map(MessageId::new).collect())
        })
    }

    fn ensure_group<'a>(
        &'a self,
        stream: &'a str,
        group: &'a str,
        start: &'a StartPosition,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let start = match start {
                StartPosition::Latest => "$".to_owned(),
                StartPosition::Earliest => "0".to_owned(),
                StartPosition::FromId(id) => parse_start_id(id)?,
            };
            self.closed.check()?;
            let result: ::redis::RedisResult<Value> = ::redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream_key(stream))
                .arg(group)
                .arg(&start)
                .arg("MKSTREAM")
                .query_async(&mut self.conn.clone())
                .await;
            match result {
                Ok(_) => Ok(()),
                Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
                Err(e) => Err(self.error(format!("creating group {group} of {stream}"), e)),
            }
        })
    }

    fn claim<'a>(
        &'a self,
        group: GroupRef<'a>,
        max: usize,
        visibility: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claimed>>> {
        Box::pin(async move {
            if max == 0 {
                self.closed.check()?;
                return Ok(Vec::new());
            }
            self.claiming(group, || async move {
                if max <= scripts::SMALL_CLAIM {
                    self.claim_small(group, max, visibility).await
                } else {
                    self.claim_once(group, max, visibility).await
                }
            })
            .await
        })
    }

    fn ack<'a>(&'a self, group: GroupRef<'a>, claims: &'a [Claim]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.closed.check()?;
            if claims.is_empty() {
                return Ok(());
            }
            let mut invocation = self.scripts.ack.prepare_invoke();
            invocation
                .key(stream_key(group.stream))
                .key(deadlines_key(group.stream, group.group))
                .arg(group.group)
                .arg(group.consumer);
            // The batch's id range, for the script's one look at the pending list; an id
            // that is not an entry id makes the range "-" "+" (the script then checks the
            // ids it does not find one by one).
            let range = id_range(claims);
            match range {
                Some((lo, hi)) => invocation.arg(lo).arg(hi),
                None => invocation.arg("-").arg("+"),
            };
            for claim in claims {
                invocation.arg(claim.id.as_str()).arg(claim.token.0);
            }
            let _acked: u64 = self
                .run_settling(&invocation, || {
                    format!("acknowledging messages of {}/{}", group.stream, group.group)
                })
                .await?;
            Ok(())
        })
    }

    fn retry<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        delay: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.closed.check()?;
            Ok(self
                .park(group, std::slice::from_ref(claim), delay, false)
                .await?
                > 0)
        })
    }

    fn dead_letter<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        to: &'a str,
        message: NewMessage,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.closed.check()?;
            if self.is_cluster() {
                return self
                    .dead_letter_across_slots(group, claim, to, message, false)
                    .await;
            }
            let mut invocation = self.scripts.dead_letter.prepare_invoke();
            invocation
                .key(stream_key(group.stream))
                .key(stream_key(to))
                .key(retry_key(group.stream, group.group))
                .key(deadlines_key(group.stream, group.group))
                .arg(group.group)
                .arg(group.consumer)
                .arg(claim.id.as_str())
                .arg(claim.token.0)
                .arg(fields(message));
            let moved: Option<String> = self
                .run_settling(&invocation, || {
                    format!("moving {} of {} to {to}", claim.id, group.stream)
                })
                .await?;
            if moved.is_some() {
                self.wakeups.notify(to);
            }
            Ok(moved.is_some())
        })
    }

    fn release<'a>(
        &'a self,
        group: GroupRef<'a>,
        claims: &'a [Claim],
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.closed.check()?;
            if claims.is_empty() {
                return Ok(());
            }
            self.park(group, claims, Duration::ZERO, true).await?;
            self.wakeups.notify(group.stream);
            Ok(())
        })
    }

    fn extend<'a>(
        &'a self,
        group: GroupRef<'a>,
        claims: &'a [Claim],
        visibility: Duration,
    ) -> BoxFuture<'a, Result<Vec<bool>>> {
        Box::pin(async move {
            self.closed.check()?;
            if claims.is_empty() {
                return Ok(Vec::new());
            }
            let mut invocation = self.scripts.extend.prepare_invoke();
            invocation
                .key(stream_key(group.stream))
                .key(deadlines_key(group.stream, group.group))
                .arg(group.group)
                .arg(group.consumer)
                .arg(millis(visibility));
            for claim in claims {
                invocation.arg(claim.id.as_str()).arg(claim.token.0);
            }
            let held: Vec<u8> = self
                .run_settling(&invocation, || {
                    format!("extending claims in {}/{}", group.stream, group.group)
                })
                .await?;
            Ok(held.into_iter().map(|h| h == 1).collect())
        })
    }

    fn postpone<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        delay: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.closed.check()?;
            // A release with a delay: the delivery is given back.
            Ok(self
                .park(group, std::slice::from_ref(claim), delay, true)
                .await?
                > 0)
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.closed.check()?;
            let _: String = ::redis::cmd("PING")
                .query_async(&mut self.conn.clone())
                .await
                .map_err(|e| self.error("checking the server".to_owned(), e))?;
            Ok(())
        })
    }

    fn wakeup(&self, stream: &str) -> Wakeup {
        let wakeup = self.wakeups.subscribe(stream);
        if self.closed.is_closed() {
            return wakeup;
        }
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        let running = watchers.get(stream).is_some_and(|w| !w.is_finished());
        if !running {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let task = watch::watch(
                    self.target.clone(),
                    stream.to_owned(),
                    stream_key(stream),
                    self.wakeups.clone(),
                );
                watchers.insert(stream.to_owned(), runtime.spawn(task));
            }
        }
        wakeup
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if !self.closed.close() {
                return Ok(());
            }
            let watchers =
                std::mem::take(&mut *self.watchers.lock().unwrap_or_else(PoisonError::into_inner));
            for (_, watcher) in watchers {
                watcher.abort();
            }
            let consumers = std::mem::take(
                &mut self
                    .consumers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .last_claim,
            );
            self.remove_idle_consumers(consumers.into_keys().collect())
                .await;
            self.wakeups.notify_all();
            Ok(())
        })
    }

    fn key_order_supported(&self) -> bool {
        true
    }

    fn claim_ordered<'a>(
        &'a self,
        group: GroupRef<'a>,
        max: usize,
        visibility: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claimed>>> {
        Box::pin(self.claim_by_key(group, max, visibility))
    }

    fn ack_ordered<'a>(
        &'a self,
        group: GroupRef<'a>,
        claims: &'a [Claim],
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(self.ack_by_key(group, claims))
    }

    fn dead_letter_ordered<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        to: &'a str,
        message: NewMessage,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(self.dead_letter_by_key(group, claim, to, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_servers_are_refused() {
        assert!(check_version("redis_version:7.0.15\r\n", "x").is_ok());
        assert!(check_version("redis_version:7.2.4\r\n", "x").is_ok());
        assert!(check_version("redis_version:6.2.14\r\n", "x").is_err());
    }
}
