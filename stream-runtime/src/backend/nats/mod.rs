//! The NATS JetStream backend (feature `nats`): one JetStream stream per stream, each
//! group's state one message in a JetStream stream of its own, changed only by
//! compare-and-set.
//!
//! # Layout
//!
//! | what | where |
//! |---|---|
//! | messages of stream `N` | JetStream stream `ST-<enc N>`, subject `streams.<enc N>`; the id is the stream sequence |
//! | headers | NATS header `Streams-Headers`: the headers as JSON (non-ASCII escaped) |
//! | group `G` of `N` | the last message on `streams-groups.<enc N>.<enc G>` of JetStream stream `STREAMS-GROUPS` (one kept per subject): cursor, last token, pending entries |
//!
//! `<enc X>` keeps ASCII letters, digits and `-` and writes every other byte as `_XX` (hex),
//! so any name maps to a valid stream name and subject token, and back.
//!
//! # Claims and fencing
//!
//! Every change to a group (claim, ack, retry, release, dead-letter) reads its state and
//! publishes the new state with `Nats-Expected-Last-Subject-Sequence` set to the sequence it
//! read; a concurrent change makes the publish fail and the call starts again from a fresh
//! read. A claim gets a new token from the group's counter, so a settle with an older token
//! finds another token recorded and does nothing. JetStream consumers and their acks are not
//! used: see docs/nats.md for why.
//!
//! # Dead letters
//!
//! The entry is first leased to the dead-lettering call (deadline pushed out, token kept),
//! then the message is published to the dead-letter stream with a `Nats-Msg-Id` naming
//! stream, group and id, then the entry is removed. A crash after the publish leaves the
//! entry to be claimed again; its next dead-letter publish has the same `Nats-Msg-Id` and
//! is dropped as a duplicate within the duplicate window (two minutes).

mod admin;
mod js;
pub mod names;
mod ordered;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::{
    hint_refused, no_answer, redact_url, Backend, BoxFuture, Claim, ClaimToken, Claimed,
    ConnectOptions, GroupRef, Wakeup, WakeupHub,
};
use crate::backend::closed::Closed;
use crate::error::{BoxError, Error, Result};
use crate::message::{Headers, Message, MessageId, NewMessage};
use crate::options::{StartPosition, Trim};

use js::StoredMessage;

const NAME: &str = "nats";
/// The JetStream stream holding every group's state.
pub const GROUPS_STREAM: &str = "STREAMS-GROUPS";
/// The subject prefix of group states.
const GROUPS_SUBJECT: &str = "streams-groups";
/// The header holding a message's headers.
const HEADERS_HEADER: &str = "Streams-Headers";
/// How long a dead-letter move holds the entry against takeover while it publishes.
const DEAD_LETTER_LEASE: Duration = Duration::from_secs(30);

/// The `Nats-Msg-Id` of the dead letter of message `seq` of `stream` in `group`: the same
/// for every attempt to move it, so a repeated publish after a crash is a duplicate.
pub fn dead_letter_msg_id(stream: &str, group: &str, seq: u64) -> String {
    format!(
        "dl.{}.{}.{seq}",
        names::encode_ascii(stream),
        names::encode_ascii(group)
    )
}

fn failed(context: impl Into<String>, e: impl Into<BoxError>) -> Error {
    Error::backend(NAME, context, e)
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn now_ms() -> u64 {
    millis(SystemTime::now())
}

fn after_ms(d: Duration) -> u64 {
    now_ms().saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn time_of(ms: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .unwrap_or(UNIX_EPOCH)
}

/// A group as stored.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct GroupState {
    /// The last sequence handed out to the group.
    pub cursor: u64,
    /// The last token handed out.
    pub last_token: u64,
    pub pending: BTreeMap<u64, Pending>,
    /// A group ordered by key: the key of each keyed pending entry (entries settled since
    /// are dropped by the next ordered claim). Empty, and not stored, otherwise.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<u64, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Pending {
    /// 0 while nobody holds the claim.
    pub token: u64,
    /// Unix ms: the claim's deadline, or when it may be claimed again.
    pub deadline: u64,
    pub deliveries: u32,
    /// Unix ms of the last claim.
    pub claimed_at: u64,
}

impl GroupState {
    /// Claims the `picked` messages (pending or new) until `deadline`: a new token each,
    /// one more delivery.
    fn take(
        &mut self,
        stream: &str,
        picked: &[StoredMessage],
        deadline: u64,
        now: u64,
    ) -> Vec<Claimed> {
        let mut claimed = Vec::with_capacity(picked.len());
        for m in picked {
            self.last_token += 1;
            let token = self.last_token;
            let pending = self.pending.entry(m.seq).or_insert(Pending {
                token: 0,
                deadline,
                deliveries: 0,
                claimed_at: now,
            });
            pending.token = token;
            pending.deadline = deadline;
            pending.deliveries += 1;
            pending.claimed_at = now;
            claimed.push(Claimed {
                message: NatsBackend::message(stream, m, pending.deliveries),
                token: ClaimToken(token),
            });
        }
        claimed
    }

    fn held(&self, claim: &Claim) -> Option<u64> {
        let seq = claim.id.as_str().parse::<u64>().ok()?;
        self.pending
            .get(&seq)
            .filter(|p| p.token != 0 && p.token == claim.token.0)
            .map(|_| seq)
    }
}

/// Streams, groups and claims in NATS JetStream, with push wake-ups from a core-NATS
/// subscription on each stream's subject.
pub struct NatsBackend {
    client: async_nats::Client,
    js: js::Js,
    url: String,
    replicas: usize,
    /// Streams known to exist.
    streams: Mutex<HashSet<String>>,
    wakeups: Arc<WakeupHub>,
    watchers: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    closed: Closed,
}

impl fmt::Debug for NatsBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsBackend")
            .field("url", &self.url)
            .field("replicas", &self.replicas)
            .field("closed", &self.closed.is_closed())
            .finish_non_exhaustive()
    }
}

/// The stored form of headers: JSON with every non-ASCII character escaped, so it is a
/// valid NATS header value whatever the names and values hold.
fn encode_headers(headers: &Headers) -> Option<String> {
    if headers.is_empty() {
        return None;
    }
    let json = serde_json::to_string(headers).unwrap_or_default();
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    Some(out)
}

fn decode_headers(m: &StoredMessage) -> Headers {
    m.header(HEADERS_HEADER)
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default()
}

/// A URL's `replicas` query parameter (default 1), and the URL without the query.
fn parse_url(url: &str) -> Result<(String, usize)> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut replicas = 1;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("replicas", n)) => {
                replicas = n
                    .parse()
                    .ok()
                    .filter(|n| (1..=5).contains(n))
                    .ok_or_else(|| {
                        Error::Config(format!(
                            "backend URL {}: replicas must be a number from 1 to 5, e.g. \
                         nats://host:4222?replicas=3",
                            redact_url(url)
                        ))
                    })?;
            }
            _ => {
                return Err(Error::Config(format!(
                    "backend URL {}: unknown parameter {pair:?}; the NATS backend accepts \
                     replicas=N",
                    redact_url(url)
                )))
            }
        }
    }
    Ok((base.to_owned(), replicas))
}

/// The servers of `nats://[user:password@]host[:port][,host[:port]...]`: one address per
/// listed server; those written without a scheme get the first's scheme and credentials.
fn server_addresses(base: &str) -> Vec<String> {
    let mut parts = base.split(',').map(str::trim).filter(|p| !p.is_empty());
    let Some(first) = parts.next() else {
        return Vec::new();
    };
    // `nats://user:password@` of the first address, for the others.
    let prefix = match first.split_once("://") {
        Some((scheme, rest)) => match rest.rfind('@') {
            Some(at) => format!("{scheme}://{}", &rest[..=at]),
            None => format!("{scheme}://"),
        },
        None => String::new(),
    };
    std::iter::once(first.to_owned())
        .chain(parts.map(|p| {
            if p.contains("://") {
                p.to_owned()
            } else {
                format!("{prefix}{p}")
            }
        }))
        .collect()
}

impl NatsBackend {
    /// Connects to `nats://[user:password@]host[:port][?replicas=N]` (JetStream enabled),
    /// creating the groups stream if missing. New streams get `replicas` replicas (default
    /// 1: a message is on one server's disk; 3: on three, surviving the loss of one).
    ///
    /// A cluster's servers may be listed, `nats://h1:4222,h2:4222,h3:4222?replicas=3`: the
    /// client connects to one of them and moves to another when it goes away (it also
    /// learns the cluster's other servers from the one it is connected to).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, ConnectOptions::default()).await
    }

    /// Like [`connect`](Self::connect), with options: connecting gives up after
    /// `connect_timeout` with "no answer within ...".
    pub async fn connect_with(url: &str, options: ConnectOptions) -> Result<Self> {
        let shown = redact_url(url);
        let (address, replicas) = parse_url(url)?;
        let timeout = options.connect_timeout;
        let connecting = async {
            let client = async_nats::ConnectOptions::new()
                .connection_timeout(timeout)
                .connect(server_addresses(&address))
                .await
                .map_err(|e| {
                    let refused = matches!(e.kind(), async_nats::ConnectErrorKind::Io);
                    failed(format!("connecting to {shown}"), hint_refused(e, refused))
                })?;
            let js = js::Js {
                client: client.clone(),
            };
            js.create_stream(
                GROUPS_STREAM,
                &[format!("{GROUPS_SUBJECT}.>")],
                replicas,
                Some(1),
            )
            .await
            .map_err(|e| {
                failed(
                    format!("preparing the groups stream on {shown}"),
                    format!("{e}; is the server started with JetStream enabled (-js)?"),
                )
            })?;
            Ok::<_, Error>((client, js))
        };
        let (client, js) = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| failed(format!("connecting to {shown}"), no_answer(timeout)))??;
        Ok(NatsBackend {
            client,
            js,
            url: shown,
            replicas,
            streams: Mutex::new(HashSet::new()),
            wakeups: Arc::new(WakeupHub::new()),
            watchers: Mutex::new(HashMap::new()),
            closed: Closed::default(),
        })
    }

    /// Deletes stream `stream` (its JetStream stream `ST-...` and every message in it) and
    /// the state of every group of it. Consumers still running on it see it empty and
    /// their groups gone. Returns whether the stream existed. For tests and operators
    /// removing what they no longer use (this backend never deletes a stream by itself).
    pub async fn delete_stream(&self, stream: &str) -> Result<bool> {
        self.closed.check()?;
        let existed = self
            .js
            .delete_stream(&names::jetstream_name(stream))
            .await?;
        self.js
            .purge_subjects(
                GROUPS_STREAM,
                &format!("{GROUPS_SUBJECT}.{}.>", names::encode(stream)),
            )
            .await?;
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(stream);
        Ok(existed)
    }

    /// [`delete_stream`](Self::delete_stream) for every stream whose name starts with
    /// `prefix` (an app's streams: `"myapp."`); the names deleted.
    pub async fn delete_streams(&self, prefix: &str) -> Result<Vec<String>> {
        let mut deleted = Vec::new();
        for name in self.js.stream_names().await? {
            let Some(stream) = names::stream_of(&name) else {
                continue;
            };
            if stream.starts_with(prefix) && self.delete_stream(&stream).await? {
                deleted.push(stream);
            }
        }
        Ok(deleted)
    }

    /// [`delete_stream`](Self::delete_stream) for every stream whose name starts with
    /// `prefix` and that nothing was appended to (nor created) for `idle`: the names
    /// deleted. The test suites sweep their old streams off a shared server with it.
    pub async fn delete_idle_streams(&self, prefix: &str, idle: Duration) -> Result<Vec<String>> {
        let cutoff = SystemTime::now().checked_sub(idle).unwrap_or(UNIX_EPOCH);
        let mut deleted = Vec::new();
        for name in self.js.stream_names().await? {
            let Some(stream) = names::stream_of(&name) else {
                continue;
            };
            if !stream.starts_with(prefix) {
                continue;
            }
            let idle = self
                .js
                .last_active(&name)
                .await?
                .is_some_and(|last| last < cutoff);
            if idle && self.delete_stream(&stream).await? {
                deleted.push(stream);
            }
        }
        Ok(deleted)
    }

    /// The client, for tools that want to look at the server directly.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    fn known(&self, stream: &str) -> bool {
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(stream)
    }

    fn remember(&self, stream: &str) {
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(stream.to_owned());
    }

    /// Creates the JetStream stream of `stream` if missing.
    async fn ensure_stream(&self, stream: &str) -> Result<()> {
        self.closed.check()?;
        if self.known(stream) {
            return Ok(());
        }
        self.js
            .create_stream(
                &names::jetstream_name(stream),
                &[names::subject(stream)],
                self.replicas,
                None,
            )
            .await?;
        self.remember(stream);
        Ok(())
    }

    /// Whether the JetStream stream of `stream` exists.
    async fn find_stream(&self, stream: &str) -> Result<bool> {
        self.closed.check()?;
        if self.known(stream) {
            return Ok(true);
        }
        let found = self
            .js
            .stream_state(&names::jetstream_name(stream), None)
            .await?
            .is_some();
        if found {
            self.remember(stream);
        }
        Ok(found)
    }

    /// The message of `stream` at `seq` exactly (`next` false) or the first at or after it.
    async fn get(&self, stream: &str, seq: u64, next: bool) -> Result<Option<StoredMessage>> {
        let subject = names::subject(stream);
        let get = if next {
            js::Get::NextFrom(seq, &subject)
        } else {
            js::Get::At(seq)
        };
        self.js.get(&names::jetstream_name(stream), get).await
    }

    fn message(stream: &str, m: &StoredMessage, attempt: u32) -> Message {
        Message::new(
            MessageId::new(m.seq.to_string()),
            stream,
            m.payload.clone(),
            decode_headers(m),
            m.time,
            attempt,
        )
    }

    fn header_map(message: &NewMessage, id: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(encoded) = encode_headers(&message.headers) {
            headers.insert(HEADERS_HEADER, encoded.as_str());
        }
        if let Some(id) = id {
            headers.insert("Nats-Msg-Id", id);
        }
        headers
    }

    /// Publishes one message to `stream` (created if missing) and waits for its ack.
    async fn publish_one(
        &self,
        stream: &str,
        message: NewMessage,
        id: Option<&str>,
    ) -> Result<u64> {
        self.ensure_stream(stream).await?;
        let headers = Self::header_map(&message, id);
        let ack = self
            .js
            .publish(names::subject(stream), headers, message.payload)
            .await?
            .map_err(|e| failed(format!("publishing to {stream:?}"), e))?;
        self.wakeups.notify(stream);
        Ok(ack.seq)
    }

    fn group_subject(stream: &str, group: &str) -> String {
        format!("{GROUPS_SUBJECT}.{}", names::group_key(stream, group))
    }

    /// A group's state and its revision; `None` when the group does not exist.
    async fn load(&self, stream: &str, group: &str) -> Result<Option<(GroupState, u64)>> {
        self.closed.check()?;
        let subject = Self::group_subject(stream, group);
        let Some(entry) = self.js.get(GROUPS_STREAM, js::Get::Last(&subject)).await? else {
            return Ok(None);
        };
        let state = serde_json::from_slice(&entry.payload).map_err(|e| {
            failed(
                format!("reading group {group:?} of {stream:?}"),
                format!("the stored group state is not valid: {e}"),
            )
        })?;
        Ok(Some((state, entry.seq)))
    }

    /// Writes a group's state if the last revision of its subject is still `revision` (0:
    /// the group must not exist); false when another change came first.
    async fn store(
        &self,
        stream: &str,
        group: &str,
        state: &GroupState,
        revision: u64,
    ) -> Result<bool> {
        let value = serde_json::to_vec(state).map_err(|e| failed("encoding group state", e))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            revision.to_string().as_str(),
        );
        match self
            .js
            .publish(Self::group_subject(stream, group), headers, value.into())
            .await?
        {
            Ok(_) => Ok(true),
            Err(e) if e.err_code == js::WRONG_LAST_SEQUENCE => Ok(false),
            Err(e) => Err(failed(format!("writing group {group:?} of {stream:?}"), e)),
        }
    }

    /// Applies `f` to a group's state with compare-and-set, again on a conflict; `None`
    /// when the group does not exist. `f` returning `None` writes nothing.
    async fn update<T>(
        &self,
        stream: &str,
        group: &str,
        mut f: impl FnMut(&mut GroupState) -> Option<T>,
    ) -> Result<Option<T>> {
        loop {
            let Some((mut state, revision)) = self.load(stream, group).await? else {
                return Ok(None);
            };
            let Some(out) = f(&mut state) else {
                return Ok(None);
            };
            if self.store(stream, group, &state, revision).await? {
                return Ok(Some(out));
            }
        }
    }

    /// The groups of `stream`, by name.
    async fn group_names(&self, stream: &str) -> Result<Vec<String>> {
        let prefix = format!("{GROUPS_SUBJECT}.{}.", names::encode(stream));
        let state = self
            .js
            .stream_state(GROUPS_STREAM, Some(&format!("{prefix}*")))
            .await?
            .unwrap_or_default();
        let mut out: Vec<String> = state
            .subjects
            .unwrap_or_default()
            .keys()
            .filter_map(|subject| subject.strip_prefix(&prefix).and_then(names::decode))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Drops pending entries of messages `stream` no longer holds: those before `first`
    /// and those in `deleted`.
    async fn prune(&self, stream: &str, first: u64, deleted: &[u64]) -> Result<()> {
        for group in self.group_names(stream).await? {
            self.update(stream, &group, |state| {
                let before = state.pending.len();
                state.pending = state.pending.split_off(&first);
                for seq in deleted {
                    state.pending.remove(seq);
                }
                (state.pending.len() != before).then_some(())
            })
            .await?;
        }
        Ok(())
    }

    /// Applies a trim (S3) after an append.
    async fn trim(&self, stream: &str, trim: Trim) -> Result<()> {
        let name = names::jetstream_name(stream);
        let mut purged = 0;
        if trim.max_len > 0 {
            purged += self.js.purge(&name, Some(trim.max_len), None).await?;
        }
        if !trim.max_age.is_zero() {
            let oldest_kept = SystemTime::now()
                .checked_sub(trim.max_age)
                .unwrap_or(UNIX_EPOCH);
            let mut seq = 0;
            let mut cut = None;
            while let Some(m) = self.get(stream, seq, true).await? {
                if m.time >= oldest_kept {
                    break;
                }
                cut = Some(m.seq + 1);
                seq = m.seq + 1;
            }
            if let Some(cut) = cut {
                purged += self.js.purge(&name, None, Some(cut)).await?;
            }
        }
        if purged > 0 {
            let first = self.get(stream, 0, true).await?.map_or(u64::MAX, |m| m.seq);
            self.prune(stream, first, &[]).await?;
        }
        Ok(())
    }

    fn watch(&self, stream: &str) {
        let mut watchers = self.watchers.lock().unwrap_or_else(PoisonError::into_inner);
        if watchers.contains_key(stream) || self.closed.is_closed() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let hub = Arc::clone(&self.wakeups);
        let name = stream.to_owned();
        let task = runtime.spawn(async move {
            let Ok(mut subscriber) = client.subscribe(names::subject(&name)).await else {
                tracing::warn!(stream = %name, "could not subscribe for wake-ups; polling");
                return;
            };
            // Whatever was appended while subscribing is found by the next claim.
            hub.notify(&name);
            while subscriber.next().await.is_some() {
                hub.notify(&name);
            }
        });
        watchers.insert(stream.to_owned(), task);
    }
}

impl Backend for NatsBackend {
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
            self.ensure_stream(stream).await?;
            let batch = messages
                .into_iter()
                .map(|m| (Self::header_map(&m, None), m.payload))
                .collect();
            let seqs = self
                .js
                .publish_batch(&names::subject(stream), batch)
                .await?;
            let ids = seqs
                .into_iter()
                .map(|seq| MessageId::new(seq.to_string()))
                .collect();
            self.trim(stream, trim).await?;
            self.wakeups.notify(stream);
            Ok(ids)
        })
    }

    fn ensure_group<'a>(
        &'a self,
        stream: &'a str,
        group: &'a str,
        start: &'a StartPosition,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let from_id = match start {
                StartPosition::FromId(id) => {
                    Some(super::integer_start_id(NAME, id)?.unsigned_abs())
                }
                _ => None,
            };
            self.ensure_stream(stream).await?;
            if self.load(stream, group).await?.is_some() {
                return Ok(());
            }
            let cursor = match (start, from_id) {
                (_, Some(id)) => id,
                (StartPosition::Earliest, _) => 0,
                _ => self
                    .js
                    .stream_state(&names::jetstream_name(stream), None)
                    .await?
                    .map_or(0, |state| state.last_seq),
            };
            let state = GroupState {
                cursor,
                ..GroupState::default()
            };
            // Revision 0: only if no other process created the group first.
            self.store(stream, group, &state, 0).await?;
            Ok(())
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
                return Ok(Vec::new());
            }
            if !self.find_stream(group.stream).await? {
                return Ok(Vec::new());
            }
            loop {
                let Some((mut state, revision)) = self.load(group.stream, group.group).await?
                else {
                    return Ok(Vec::new());
                };
                let now = now_ms();
                let deadline = after_ms(visibility);
                let mut picked = Vec::new();
                let mut gone = Vec::new();
                let due: Vec<u64> = state
                    .pending
                    .iter()
                    .filter(|(_, p)| p.deadline <= now)
                    .map(|(&seq, _)| seq)
                    .collect();
                for seq in due {
                    if picked.len() == max {
                        break;
                    }
                    match self.get(group.stream, seq, false).await? {
                        Some(m) => picked.push(m),
                        None => gone.push(seq),
                    }
                }
                let mut next = state.cursor + 1;
                while picked.len() < max {
                    let Some(m) = self.get(group.stream, next, true).await? else {
                        break;
                    };
                    next = m.seq + 1;
                    state.cursor = m.seq;
                    picked.push(m);
                }
                if picked.is_empty() && gone.is_empty() {
                    return Ok(Vec::new());
                }
                for seq in &gone {
                    state.pending.remove(seq);
                }
                let claimed = state.take(group.stream, &picked, deadline, now);
                if self
                    .store(group.stream, group.group, &state, revision)
                    .await?
                {
                    return Ok(claimed);
                }
            }
        })
    }

    fn ack<'a>(&'a self, group: GroupRef<'a>, claims: &'a [Claim]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.update(group.stream, group.group, |state| {
                let held: Vec<u64> = claims.iter().filter_map(|c| state.held(c)).collect();
                for seq in &held {
                    state.pending.remove(seq);
                }
                (!held.is_empty()).then_some(())
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
            let done = self
                .update(group.stream, group.group, |state| {
                    let seq = state.held(claim)?;
                    let p = state.pending.get_mut(&seq)?;
                    p.token = 0;
                    p.deadline = after_ms(delay);
                    Some(())
                })
                .await?;
            Ok(done.is_some())
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
            // 1. Lease the entry to this call: nobody takes it over while it moves.
            let leased = self
                .update(group.stream, group.group, |state| {
                    let seq = state.held(claim)?;
                    let p = state.pending.get_mut(&seq)?;
                    p.deadline = p.deadline.max(after_ms(DEAD_LETTER_LEASE));
                    Some(seq)
                })
                .await?;
            let Some(seq) = leased else {
                return Ok(false);
            };
            // 2. Publish, deduplicated by stream, group and id.
            let msg_id = dead_letter_msg_id(group.stream, group.group, seq);
            self.publish_one(to, message, Some(&msg_id)).await?;
            // 3. Remove the entry (still ours: the lease holds it).
            self.update(group.stream, group.group, |state| {
                let seq = state.held(claim)?;
                state.pending.remove(&seq);
                Some(())
            })
            .await?;
            Ok(true)
        })
    }

    fn release<'a>(
        &'a self,
        group: GroupRef<'a>,
        claims: &'a [Claim],
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let now = now_ms();
            self.update(group.stream, group.group, |state| {
                let held: Vec<u64> = claims.iter().filter_map(|c| state.held(c)).collect();
                for seq in &held {
                    if let Some(p) = state.pending.get_mut(seq) {
                        p.token = 0;
                        p.deadline = now;
                        // Cut off by a shutdown: this delivery does not count.
                        p.deliveries = p.deliveries.saturating_sub(1);
                    }
                }
                (!held.is_empty()).then_some(())
            })
            .await?;
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
            let mut out = vec![false; claims.len()];
            self.update(group.stream, group.group, |state| {
                let deadline = after_ms(visibility);
                let mut any = false;
                for (claim, held) in claims.iter().zip(out.iter_mut()) {
                    *held = false;
                    if let Some(seq) = state.held(claim) {
                        if let Some(p) = state.pending.get_mut(&seq) {
                            p.deadline = deadline;
                            *held = true;
                            any = true;
                        }
                    }
                }
                any.then_some(())
            })
            .await?;
            Ok(out)
        })
    }

    fn postpone<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        delay: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let done = self
                .update(group.stream, group.group, |state| {
                    let seq = state.held(claim)?;
                    let p = state.pending.get_mut(&seq)?;
                    p.token = 0;
                    p.deadline = after_ms(delay);
                    // Not due yet: this claim does not count as a delivery.
                    p.deliveries = p.deliveries.saturating_sub(1);
                    Some(())
                })
                .await?;
            Ok(done.is_some())
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.closed.check()?;
            self.client
                .flush()
                .await
                .map_err(|e| failed(format!("pinging {}", self.url), e))?;
            Ok(())
        })
    }

    fn wakeup(&self, stream: &str) -> Wakeup {
        let wakeup = self.wakeups.subscribe(stream);
        self.watch(stream);
        wakeup
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.closed.close() {
                let watchers: Vec<_> = self
                    .watchers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .drain()
                    .collect();
                for (_, task) in watchers {
                    task.abort();
                }
                self.wakeups.notify_all();
                let _ = self.client.flush().await;
            }
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
}

impl Drop for NatsBackend {
    fn drop(&mut self) {
        let watchers = self
            .watchers
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for (_, task) in watchers.drain() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{decode_headers, encode_headers, parse_url, server_addresses, HEADERS_HEADER};
    use crate::message::Headers;

    #[test]
    fn headers_survive_any_characters() {
        let mut headers = Headers::new();
        headers.insert("ünï".into(), "cødé ✓ 😀\nline".into());
        headers.insert("empty".into(), String::new());
        let encoded = encode_headers(&headers).unwrap_or_default();
        assert!(encoded.is_ascii() && !encoded.contains('\n'), "{encoded}");
        let stored = super::StoredMessage {
            seq: 1,
            payload: Default::default(),
            headers: vec![(HEADERS_HEADER.to_owned(), encoded)],
            time: std::time::UNIX_EPOCH,
        };
        assert_eq!(decode_headers(&stored), headers);
    }

    #[test]
    fn a_cluster_url_lists_its_servers() {
        assert_eq!(server_addresses("nats://h1:4222"), vec!["nats://h1:4222"]);
        assert_eq!(
            server_addresses("nats://u:p@h1:1, h2:2,tls://h3:3"),
            vec!["nats://u:p@h1:1", "nats://u:p@h2:2", "tls://h3:3"]
        );
        assert_eq!(server_addresses("h1:1,h2:2"), vec!["h1:1", "h2:2"]);
    }

    #[test]
    fn replicas_come_from_the_url() {
        assert!(matches!(parse_url("nats://h:4222"), Ok((u, 1)) if u == "nats://h:4222"));
        assert!(matches!(parse_url("nats://h?replicas=3"), Ok((_, 3))));
        assert!(parse_url("nats://h?replicas=9").is_err());
        assert!(parse_url("nats://h?x=1").is_err());
    }
}
