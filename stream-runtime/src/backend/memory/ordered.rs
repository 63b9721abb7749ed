//! The ordered claim of the memory backend: the reference of ordering by key
//! ([`crate::key_order`]).
//!
//! The pending entries of a group are kept in id order, so the earliest pending entry of a
//! key is the first one met in that order: a claim walks them once, noting each key it meets,
//! and takes an entry whose deadline passed only if its key was not met before. Messages
//! past the cursor whose key is pending are recorded as waiting entries (no token, no
//! delivery, claimable at once) and taken when they are the earliest of their key.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{Entry, MemoryBackend, Pending, State, Stream};
use crate::backend::{ClaimToken, Claimed, GroupRef};
use crate::error::Result;
use crate::key_order::KEY_HEADER;
use crate::message::{Message, MessageId};

impl MemoryBackend {
    pub(super) fn claim_by_key(
        &self,
        group: GroupRef<'_>,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<Claimed>> {
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
        let entry = |seq: u64| -> Option<&Entry> {
            let index = usize::try_from(seq.checked_sub(*first_seq)?).ok()?;
            entries.get(index)?.as_ref()
        };
        fn key_of(entry: &Entry) -> Option<&str> {
            entry.headers.get(KEY_HEADER).map(String::as_str)
        }
        let mut claimed = Vec::with_capacity(max.min(64));
        let mut take = |seq: u64, entry: &Entry, pending: &mut Pending| {
            *last_token += 1;
            pending.token = *last_token;
            pending.deadline = deadline;
            pending.deliveries += 1;
            pending.claimed_at = claimed_at;
            Claimed {
                message: Message::new(
                    MessageId::from_u64(seq),
                    Arc::clone(name),
                    entry.payload.clone(),
                    entry.headers.clone(),
                    entry.created_at,
                    pending.deliveries,
                ),
                token: ClaimToken(pending.token),
            }
        };
        // Keys with a pending entry met so far: every later entry of theirs waits.
        let mut held: HashSet<&str> = HashSet::new();
        for (&seq, pending) in g.pending.iter_mut() {
            let Some(e) = entry(seq) else { continue };
            let first_of_key = key_of(e).is_none_or(|key| held.insert(key));
            if first_of_key && claimed.len() < max && pending.deadline <= now {
                claimed.push(take(seq, e, pending));
            }
        }
        let next = *first_seq + entries.len() as u64;
        let mut seq = g.cursor.max(first_seq.saturating_sub(1)) + 1;
        while claimed.len() < max && seq < next {
            if let Some(e) = entry(seq) {
                let mut pending = Pending {
                    token: 0,
                    deadline: now,
                    deliveries: 0,
                    claimed_at,
                };
                let free = key_of(e).is_none_or(|key| held.insert(key));
                if free {
                    claimed.push(take(seq, e, &mut pending));
                }
                // A message of a held key waits, pending, for its turn.
                g.pending.insert(seq, pending);
            }
            g.cursor = seq;
            seq += 1;
        }
        g.deadline_set(now);
        Ok(claimed)
    }
}
