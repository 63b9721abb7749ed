//! The Redis Streams backend (feature `redis`): one Redis stream per stream, consumer
//! groups and pending lists are Redis's own, every multi-step operation is a Lua script.
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
//! | `streams:{N}:deadlines:<group>` | sorted set | claimed ids, scored by their claim's deadline (ms) |
//!
//! The hash tag keeps a stream and its side keys in one cluster slot.
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
mod scripts;
mod watch;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::redis::aio::ConnectionManager;
use ::redis::{ErrorKind, RedisError, ServerErrorKind, Value};

use super::{
    hint_refused, no_answer, redact_url, Backend, BoxFuture, Claim, ClaimToken, Claimed,
    ConnectOptions, GroupRef, Wakeup, WakeupHub,
};
use crate::backend::closed::Closed;
use crate::error::{Error, Result};
use crate::message::{Headers, Message, MessageId, NewMessage};
use crate::options::{StartPosition, Trim};

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

/// The default of [`RedisBackend::idle_consumer_timeout`].
pub const DEFAULT_IDLE_CONSUMER_TIMEOUT: Duration = Duration::from_secs(60);

/// (stream, group, consumer name).
type ConsumerKey = (String, String, String);

#[derive(Debug)]
struct Consumers {
    last_claim: HashMap<ConsumerKey, Instant>,
    last_sweep: Instant,
}

/// Streams, groups and claims in Redis, with push wake-ups from blocking reads.
pub struct RedisBackend {
    client: ::redis::Client,
    conn: ConnectionManager,
    url: String,
    scripts: Scripts,
    wakeups: Arc<WakeupHub>,
    watchers: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// The consumers this backend claimed for, and when each last claimed.
    consumers: Mutex<Consumers>,
    idle_consumer_timeout: Duration,
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

/// The key of a stream: `streams:{N}`.
pub fn stream_key(stream: &str) -> String {
    format!("streams:{{{}}}", escape(stream))
}

fn retry_key(stream: &str, group: &str) -> String {
    format!("streams:{{{}}}:retry:{group}", escape(stream))
}

fn deadlines_key(stream: &str, group: &str) -> String {
    format!("streams:{{{}}}:deadlines:{group}", escape(stream))
}

/// Percent-encodes `%`, `{` and `}`, so a name can never end the hash tag early.
fn escape(name: &str) -> std::borrow::Cow<'_, str> {
    if !name.contains(['%', '{', '}']) {
        return name.into();
    }
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out.into()
}

/// Checks a start id: `<ms>-<seq>` (or `<ms>`, meaning `<ms>-0`), both unsigned 64-bit.
fn parse_start_id(id: &str) -> Result<String> {
    let invalid = || Error::InvalidStartId {
        id: id.to_owned(),
        reason: "Redis stream ids look like \"1700000000000-0\" (milliseconds-sequence)".to_owned(),
    };
    let number = |s: &str| {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        s.parse::<u64>().map_err(|_| invalid())
    };
    match id.split_once('-') {
        Some((ms, seq)) => Ok(format!("{}-{}", number(ms)?, number(seq)?)),
        None => Ok(format!("{}-0", number(id)?)),
    }
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
            ErrorKind::Server(ServerErrorKind::BusyLoading | ServerErrorKind::TryAgain)
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

/// Payload and headers as stream fields.
fn fields(message: NewMessage) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(2 + 2 * message.headers.len());
    out.push(PAYLOAD_FIELD.as_bytes().to_vec());
    out.push(message.payload);
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

/// The time part of an id as a time.
fn created_at(id: &str) -> SystemTime {
    let ms = id
        .split_once('-')
        .and_then(|(ms, _)| ms.parse::<u64>().ok())
        .unwrap_or_default();
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// One claimed entry from the claim script: `{id, deliveries, {field, value, ...}}`.
fn parse_claimed(stream: &str, value: Value) -> Result<Claimed> {
    let bad = |value: &Value| unexpected("the claim script", value);
    let Value::Array(parts) = value else {
        return Err(bad(&value));
    };
    let parts: [Value; 3] = match parts.try_into() {
        Ok(parts) => parts,
        Err(parts) => return Err(bad(&Value::Array(parts))),
    };
    let [id, deliveries, entry_fields] = parts;
    let id = match id {
        Value::BulkString(b) => String::from_utf8(b)
            .map_err(|e| Error::backend(NAME, "reading the reply of the claim script", e))?,
        other => return Err(bad(&other)),
    };
    let deliveries = match deliveries {
        Value::Int(n) => u32::try_from(n).map_err(|_| bad(&deliveries))?,
        other => return Err(bad(&other)),
    };
    let Value::Array(entry_fields) = entry_fields else {
        return Err(bad(&entry_fields));
    };
    let mut payload = Vec::new();
    let mut headers = Headers::new();
    let mut entry_fields = entry_fields.into_iter();
    while let (Some(field), Some(value)) = (entry_fields.next(), entry_fields.next()) {
        let (Value::BulkString(field), Value::BulkString(value)) = (field, value) else {
            return Err(Error::backend(
                NAME,
                "reading the reply of the claim script",
                format!("entry {id} has a field that is not a string"),
            ));
        };
        if field == PAYLOAD_FIELD.as_bytes() {
            payload = value;
        } else if let Some(name) = field.strip_prefix(HEADER_PREFIX.as_bytes()) {
            headers.insert(
                String::from_utf8_lossy(name).into_owned(),
                String::from_utf8(value)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            );
        }
    }
    let created_at = created_at(&id);
    let message = Message::new(
        MessageId::new(id),
        stream,
        payload,
        headers,
        created_at,
        deliveries,
    );
    Ok(Claimed {
        message,
        token: ClaimToken(u64::from(deliveries)),
    })
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
    pub async fn connect_with(url: &str, options: ConnectOptions) -> Result<Self> {
        let shown = redact_url(url);
        let client = ::redis::Client::open(url).map_err(|e| invalid_url(&shown, &e))?;
        let timeout = options.connect_timeout;
        let failed = |what: &str, e: RedisError| {
            let refused = e.is_connection_refusal();
            Error::backend(NAME, format!("{what} {shown}"), hint_refused(e, refused))
        };
        let timed_out =
            || Error::backend(NAME, format!("connecting to {shown}"), no_answer(timeout));
        // One direct connection first, for a clear error at once: the connection manager
        // retries a refused or silent server for a while before it gives up.
        let info: String = tokio::time::timeout(timeout, async {
            let mut direct = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| failed("connecting to", e))?;
            ::redis::cmd("INFO")
                .arg("server")
                .query_async(&mut direct)
                .await
                .map_err(|e| failed("reading the server version of", e))
        })
        .await
        .map_err(|_| timed_out())??;
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
        check_version(&info, &shown)?;
        Ok(RedisBackend {
            client,
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
            closed: Closed::default(),
        })
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

    /// How long a consumer of this backend may go without claiming before it is removed
    /// from its group, if it holds no pending entries (default 60 s). Removing an empty
    /// consumer is always safe (Redis recreates it on its next read); this only keeps
    /// `XINFO CONSUMERS` free of subscriptions that stopped while the backend stays open.
    pub fn idle_consumer_timeout(mut self, timeout: Duration) -> Self {
        self.idle_consumer_timeout = timeout;
        self
    }

    /// Records a claim by `group.consumer`; returns the consumers due for removal when a
    /// sweep is due.
    fn remember_consumer(&self, group: GroupRef<'_>) -> Vec<ConsumerKey> {
        let now = Instant::now();
        let mut consumers = self
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = (
            group.stream.to_owned(),
            group.group.to_owned(),
            group.consumer.to_owned(),
        );
        consumers.last_claim.insert(key, now);
        if now.duration_since(consumers.last_sweep) < self.idle_consumer_timeout {
            return Vec::new();
        }
        consumers.last_sweep = now;
        let timeout = self.idle_consumer_timeout;
        let stale: Vec<ConsumerKey> = consumers
            .last_claim
            .iter()
            .filter(|(_, at)| now.duration_since(**at) >= timeout)
            .map(|(key, _)| key.clone())
            .collect();
        for key in &stale {
            consumers.last_claim.remove(key);
        }
        stale
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

    /// Deletes those of `consumers` that hold no pending entries; the others are kept in
    /// the list for a later sweep (their entries get reclaimed by other consumers).
    async fn remove_idle_consumers(&self, consumers: Vec<ConsumerKey>) {
        let mut conn = self.conn.clone();
        let mut kept = Vec::new();
        for key in consumers {
            let (stream, group, consumer) = &key;
            let result: ::redis::RedisResult<i64> = self
                .scripts
                .remove_idle_consumer
                .key(stream_key(stream))
                .arg(group)
                .arg(consumer)
                .invoke_async(&mut conn)
                .await;
            match result {
                Ok(1) => {}
                Ok(_) => kept.push(key),
                Err(e) => {
                    tracing::debug!(%stream, %group, %consumer, error = %e, "could not remove an idle consumer");
                    kept.push(key);
                }
            }
        }
        if !kept.is_empty() {
            let mut consumers = self
                .consumers
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let long_ago = consumers.last_sweep;
            for key in kept {
                consumers.last_claim.entry(key).or_insert(long_ago);
            }
        }
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
            let mut invocation = self.scripts.append.prepare_invoke();
            invocation
                .key(stream_key(stream))
                .arg(trim.max_len.min(i64::MAX as u64))
                .arg(u64::try_from(trim.max_age.as_millis()).unwrap_or(u64::MAX));
            for message in messages {
                let fields = fields(message);
                invocation.arg(fields.len()).arg(fields);
            }
            let ids: Vec<String> = invocation
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(|e| {
                    let what = format!("appending to {stream}");
                    if lost_after_sending(&e) {
                        Error::outcome_unknown(NAME, format!("{what} on {}", self.url), e)
                    } else {
                        self.error(what, e)
                    }
                })?;
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
            self.closed.check()?;
            if max == 0 {
                return Ok(Vec::new());
            }
            let stale = self.remember_consumer(group);
            if !stale.is_empty() {
                self.remove_idle_consumers(stale).await;
            }
            let mut recreated = false;
            let reply: Value = loop {
                let result = self
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
                    Ok(reply) => break reply,
                    // The group (or the whole stream) is gone: the server lost its data (a
                    // restart without persistence, an old snapshot) or someone deleted it.
                    // Create it again from the start of what the stream holds now, so the
                    // consumer goes on instead of silently claiming nothing forever.
                    Err(e) if !recreated && e.code() == Some("NOGROUP") => {
                        recreated = true;
                        tracing::warn!(
                            stream = %group.stream, group = %group.group,
                            "the consumer group is missing on the Redis server (data lost or \
                             deleted); creating it again from the start of the stream"
                        );
                        self.ensure_group(group.stream, group.group, &StartPosition::Earliest)
                            .await?;
                    }
                    Err(e) => {
                        return Err(self.error(
                            format!("claiming messages of {}/{}", group.stream, group.group),
                            e,
                        ))
                    }
                }
            };
            match reply {
                Value::Array(entries) => entries
                    .into_iter()
                    .map(|entry| parse_claimed(group.stream, entry))
                    .collect(),
                Value::Nil => Ok(Vec::new()),
                other => Err(unexpected("the claim script", &other)),
            }
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
                    self.client.clone(),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_the_hash_tag_whole() {
        assert_eq!(
            stream_key("app.default.orders"),
            "streams:{app.default.orders}"
        );
        assert_eq!(stream_key("a}b{c%"), "streams:{a%7Db%7Bc%25}");
        assert_eq!(
            retry_key("a.b.C", "billing"),
            "streams:{a.b.C}:retry:billing"
        );
        assert_eq!(
            deadlines_key("a.b.c", "billing"),
            "streams:{a.b.c}:deadlines:billing"
        );
    }

    #[test]
    fn start_ids_are_validated() {
        assert_eq!(
            parse_start_id("1700000000000-3").ok().as_deref(),
            Some("1700000000000-3")
        );
        assert_eq!(parse_start_id("42").ok().as_deref(), Some("42-0"));
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "a-1",
            "1-b",
            "not an id",
            "1-2-3",
            "+1-0",
            "99999999999999999999-0",
        ] {
            assert!(
                matches!(parse_start_id(bad), Err(Error::InvalidStartId { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn old_servers_are_refused() {
        assert!(check_version("redis_version:7.0.15\r\n", "x").is_ok());
        assert!(check_version("redis_version:7.2.4\r\n", "x").is_ok());
        assert!(check_version("redis_version:6.2.14\r\n", "x").is_err());
    }

    #[test]
    fn created_at_is_the_id_time() {
        assert_eq!(
            created_at("1700000000123-4"),
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)
        );
    }
}
