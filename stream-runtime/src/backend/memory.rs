//! The in-memory backend: the reference implementation of [`Backend`], for tests and
//! single-process development. Nothing survives the process.

mod admin;
mod ordered;

use std::collections::{BTreeMap, VecDeque};

// Streams and groups are looked up by name on every claim and ack: a fast hasher (seeded
// per process) instead of SipHash.
use foldhash::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

// The engine's clock (tokio's), so a paused test clock moves deadlines too.
use tokio::time::Instant;

use super::{Backend, BoxFuture, Claim, ClaimToken, Claimed, GroupRef, Wakeup, WakeupHub};
use crate::backend::closed::Closed;
use crate::error::Result;
use crate::message::{Bytes, Headers, Message, MessageId, NewMessage};
use crate::options::{StartPosition, Trim};

#[cfg(feature = "testing")]
pub(crate) mod inspect;

/// Streams, groups and claims in process memory, with in-process push wake-ups.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    state: Mutex<State>,
    wakeups: WakeupHub,
    closed: Closed,
}

#[derive(Debug, Default)]
struct State {
    streams: HashMap<String, Stream>,
    last_token: u64,
}

#[derive(Debug)]
struct Stream {
    /// The stream's full name, shared by the messages claimed from it.
    name: Arc<str>,
    /// Sequence number of `entries[0]` (or of the next append when empty).
    first_seq: u64,
    /// `None`: a message deleted by an operator (purge, redrive), never at the front.
    entries: VecDeque<Option<Entry>>,
    /// How many of `entries` are `None`.
    holes: usize,
    groups: HashMap<String, Group>,
}

#[derive(Debug)]
struct Entry {
    payload: Bytes,
    headers: Headers,
    created_at: SystemTime,
}

#[derive(Debug, Default)]
struct Group {
    /// The last sequence number handed out to this group.
    cursor: u64,
    pending: BTreeMap<u64, Pending>,
    /// No pending entry's deadline is earlier than this (a lower bound: a claim looks for
    /// expired entries only once it has passed).
    earliest_deadline: Option<Instant>,
}

impl Group {
    /// Notes a pending entry's new deadline.
    fn deadline_set(&mut self, deadline: Instant) {
        self.earliest_deadline = Some(self.earliest_deadline.map_or(deadline, |d| d.min(deadline)));
    }
}

#[derive(Debug)]
struct Pending {
    /// 0 while nobody holds the claim (after a retry or release).
    token: u64,
    deadline: Instant,
    deliveries: u32,
    /// When the entry was last claimed (a retry or release keeps it).
    claimed_at: SystemTime,
}

impl Stream {
    fn new(name: &str) -> Self {
        Stream {
            name: Arc::from(name),
            first_seq: 1,
            entries: VecDeque::new(),
            holes: 0,
            groups: HashMap::default(),
        }
    }

    fn next_seq(&self) -> u64 {
        self.first_seq + self.entries.len() as u64
    }

    fn entry(&self, seq: u64) -> Option<&Entry> {
        let index = seq.checked_sub(self.first_seq)?;
        self.entries.get(usize::try_from(index).ok()?)?.as_ref()
    }

    /// Messages held (deleted ones left out).
    fn len(&self) -> usize {
        self.entries.len() - self.holes
    }

    /// Drops the front entry (a message or a hole).
    fn pop_front(&mut self) {
        if let Some(popped) = self.entries.pop_front() {
            self.first_seq += 1;
            if popped.is_none() {
                self.holes -= 1;
            }
        }
    }

    fn push(&mut self, message: NewMessage) -> u64 {
        let seq = self.next_seq();
        self.entries.push_back(Some(Entry {
            payload: message.payload,
            headers: message.headers,
            created_at: SystemTime::now(),
        }));
        seq
    }

    fn trim(&mut self, trim: Trim) {
        let first_seq = self.first_seq;
        if trim.max_len > 0 {
            while self.len() as u64 > trim.max_len {
                self.pop_front();
            }
        }
        if !trim.max_age.is_zero() {
            let oldest_kept = SystemTime::now()
                .checked_sub(trim.max_age)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            while self
                .entries
                .front()
                .is_some_and(|e| e.as_ref().is_none_or(|e| e.created_at < oldest_kept))
            {
                self.pop_front();
            }
        }
        self.drop_front_holes();
        if self.first_seq > first_seq {
            for group in self.groups.values_mut() {
                group.pending = group.pending.split_off(&self.first_seq);
            }
        }
    }

    /// Pops deleted entries off the front, so the front is always a message.
    fn drop_front_holes(&mut self) {
        while matches!(self.entries.front(), Some(None)) {
            self.pop_front();
        }
    }

    fn message(&self, stream: &Arc<str>, seq: u64, deliveries: u32) -> Option<Message> {
        let entry = self.entry(seq)?;
        Some(Message::new(
            MessageId::from_u64(seq),
            Arc::clone(stream),
            entry.payload.clone(),
            entry.headers.clone(),
            entry.created_at,
            deliveries,
        ))
    }
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.closed.check()?;
        Ok(self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs `f` on a held claim's pending entry; `None` when the claim was taken over.
    fn with_claim<T>(
        &self,
        group: GroupRef<'_>,
        claim: &Claim,
        f: impl FnOnce(&mut Stream, u64) -> T,
    ) -> Result<Option<T>> {
        let mut state = self.lock()?;
        let Ok(seq) = claim.id.as_str().parse::<u64>() else {
            return Ok(None);
        };
        let Some(stream) = state.streams.get_mut(group.stream) else {
            return Ok(None);
        };
        let held = stream
            .groups
            .get(group.group)
            .and_then(|g| g.pending.get(&seq))
            .is_some_and(|p| p.token == claim.token.0 && p.token != 0);
        Ok(held.then(|| f(stream, seq)))
    }
}

impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn append<'a>(
        &'a self,
        stream: &'a str,
        messages: Vec<NewMessage>,
        trim: Trim,
    ) -> BoxFuture<'a, Result<Vec<MessageId>>> {
        Box::pin(async move {
            let ids = {
                let mut state = self.lock()?;
                let s = state
                    .streams
                    .entry(stream.to_owned())
                    .or_insert_with(|| Stream::new(stream));
                let ids = messages
                    .into_iter()
                    .map(|m| MessageId::from_u64(s.push(m)))
                    .collect();
                s.trim(trim);
                ids
            };
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
                    Some(super::integer_start_id("memory", id)?.unsigned_abs())
                }
                _ => None,
            };
            let mut state = self.lock()?;
            let s = state
                .streams
                .entry(stream.to_owned())
                .or_insert_with(|| Stream::new(stream));
            if !s.groups.contains_key(group) {
                let cursor = match (start, from_id) {
                    (_, Some(id)) => id,
                    (StartPosition::Earliest, _) => s.first_seq - 1,
                    _ => s.next_seq() - 1,
                };
                s.groups.insert(
                    group.to_owned(),
                    Group {
                        cursor,
                        pending: BTreeMap::new(),
                        earliest_deadline: None,
                    },
                );
            }
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
            let mut state = self.lock()?;
            let State {
                streams,
                last_token,
            } = &mut *state;
            let Some(s) = streams.get_mut(group.stream) else {
                return Ok(Vec::new());
            };
            let Stream {
                name,
                first_seq,
                entries,
                groups,
                ..
            } = s;
            let Some(g) = groups.get_mut(group.group) else {
                return Ok(Vec::new());
            };
            let now = Instant::now();
            let deadline = crate::time::after(visibility);
            let claimed_at = SystemTime::now();
            let mut claimed = Vec::with_capacity(max.min(64));
            let entry = |seq: u64| {
                let index = usize::try_from(seq.checked_sub(*first_seq)?).ok()?;
                entries.get(index)?.as_ref()
            };
            let mut take = |seq: u64, pending: &mut Pending| {
                *last_token += 1;
                pending.token = *last_token;
                pending.deadline = deadline;
                pending.deliveries += 1;
                pending.claimed_at = claimed_at;
                entry(seq).map(|entry| Claimed {
                    message: Message::new(
                        MessageId::from_u64(seq),
                        Arc::clone(name),
                        entry.payload.clone(),
                        entry.headers.clone(),
                        entry.created_at,
                        pending.deliveries,
                    ),
                    token: ClaimToken(pending.token),
                })
            };
            if g.earliest_deadline.is_some_and(|earliest| earliest <= now) {
                // Expired claims first, in id order; the bound is recomputed over the rest.
                let mut earliest: Option<Instant> = None;
                for (&seq, pending) in g.pending.iter_mut() {
                    if claimed.len() < max && pending.deadline <= now {
                        claimed.extend(take(seq, pending));
                    }
                    earliest = Some(earliest.map_or(pending.deadline, |e| e.min(pending.deadline)));
                }
                g.earliest_deadline = earliest;
            }
            let next = *first_seq + entries.len() as u64;
            let mut seq = g.cursor.max(first_seq.saturating_sub(1)) + 1;
            while claimed.len() < max && seq < next {
                let mut pending = Pending {
                    token: 0,
                    deadline,
                    deliveries: 0,
                    claimed_at,
                };
                if let Some(message) = take(seq, &mut pending) {
                    claimed.push(message);
                    g.pending.insert(seq, pending);
                    g.deadline_set(deadline);
                }
                g.cursor = seq;
                seq += 1;
            }
            Ok(claimed)
        })
    }

    fn ack<'a>(&'a self, group: GroupRef<'a>, claims: &'a [Claim]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut state = self.lock()?;
            let Some(g) = state
                .streams
                .get_mut(group.stream)
                .and_then(|s| s.groups.get_mut(group.group))
            else {
                return Ok(());
            };
            for claim in claims {
                let Ok(seq) = claim.id.as_str().parse::<u64>() else {
                    continue;
                };
                if g.pending
                    .get(&seq)
                    .is_some_and(|p| p.token == claim.token.0 && p.token != 0)
                {
                    g.pending.remove(&seq);
                }
            }
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
            let done = self.with_claim(group, claim, |s, seq| {
                if let Some(g) = s.groups.get_mut(group.group) {
                    let deadline = crate::time::after(delay);
                    if let Some(p) = g.pending.get_mut(&seq) {
                        p.token = 0;
                        p.deadline = deadline;
                    }
                    g.deadline_set(deadline);
                }
            })?;
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
            let done = {
                let mut state = self.lock()?;
                let held = claim.id.as_str().parse::<u64>().ok().filter(|seq| {
                    state
                        .streams
                        .get(group.stream)
                        .and_then(|s| s.groups.get(group.group))
                        .and_then(|g| g.pending.get(seq))
                        .is_some_and(|p| p.token == claim.token.0 && p.token != 0)
                });
                if let Some(seq) = held {
                    if let Some(g) = state
                        .streams
                        .get_mut(group.stream)
                        .and_then(|s| s.groups.get_mut(group.group))
                    {
                        g.pending.remove(&seq);
                    }
                    state
                        .streams
                        .entry(to.to_owned())
                        .or_insert_with(|| Stream::new(to))
                        .push(message);
                }
                held.is_some()
            };
            if done {
                self.wakeups.notify(to);
            }
            Ok(done)
        })
    }

    fn release<'a>(
        &'a self,
        group: GroupRef<'a>,
        claims: &'a [Claim],
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            for claim in claims {
                self.with_claim(group, claim, |s, seq| {
                    if let Some(g) = s.groups.get_mut(group.group) {
                        let now = Instant::now();
                        if let Some(p) = g.pending.get_mut(&seq) {
                            p.token = 0;
                            p.deadline = now;
                            // The handler was cut off by a shutdown: its delivery does not
                            // count.
                            p.deliveries = p.deliveries.saturating_sub(1);
                        }
                        g.deadline_set(now);
                    }
                })?;
            }
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
            let mut state = self.lock()?;
            let Some(g) = state
                .streams
                .get_mut(group.stream)
                .and_then(|s| s.groups.get_mut(group.group))
            else {
                return Ok(vec![false; claims.len()]);
            };
            let deadline = crate::time::after(visibility);
            let held = claims
                .iter()
                .map(|claim| {
                    let Ok(seq) = claim.id.as_str().parse::<u64>() else {
                        return false;
                    };
                    match g.pending.get_mut(&seq) {
                        Some(p) if p.token == claim.token.0 && p.token != 0 => {
                            p.deadline = deadline;
                            true
                        }
                        _ => false,
                    }
                })
                .collect::<Vec<_>>();
            if held.contains(&true) {
                // A shorter visibility than the claim's may bring the deadline forward.
                g.deadline_set(deadline);
            }
            Ok(held)
        })
    }

    fn postpone<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        delay: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let done = self.with_claim(group, claim, |s, seq| {
                if let Some(g) = s.groups.get_mut(group.group) {
                    let deadline = crate::time::after(delay);
                    if let Some(p) = g.pending.get_mut(&seq) {
                        p.token = 0;
                        p.deadline = deadline;
                        // Not due yet: this claim does not count as a delivery.
                        p.deliveries = p.deliveries.saturating_sub(1);
                    }
                    g.deadline_set(deadline);
                }
            })?;
            Ok(done.is_some())
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<()>> {
        let open = self.lock().map(drop);
        Box::pin(std::future::ready(open))
    }

    fn wakeup(&self, stream: &str) -> Wakeup {
        self.wakeups.subscribe(stream)
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        self.closed.close();
        self.wakeups.notify_all();
        Box::pin(async { Ok(()) })
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
        Box::pin(async move { self.claim_by_key(group, max, visibility) })
    }
}
