//! The ordered claim ([`crate::key_order`]) on NATS: the group's state is one document
//! changed by compare-and-set, so the claim is the memory backend's, applied to it.
//!
//! The state keeps the key of each keyed pending entry ([`GroupState::keys`]). A claim walks
//! the pending entries in id order, noting each key it meets, and takes an entry whose
//! deadline passed only if its key was not met before; then it reads messages past the
//! cursor: one whose key was met waits (a pending entry with no token and no delivery,
//! claimable at once when it is the earliest of its key), the others are claimed. Acks and
//! dead-letter moves remove the entry from the state, which is all a release needs. The
//! whole change is written with the revision it read, so claims of several processes never
//! hand out two entries of one key.

use std::collections::HashSet;
use std::time::Duration;

use super::{after_ms, decode_headers, now_ms, GroupState, NatsBackend, Pending};
use crate::backend::{Claimed, GroupRef};
use crate::error::Result;
use crate::key_order::KEY_HEADER;

/// The most waiting entries a group's state holds: past it, a claim reads no further past
/// the cursor (the state is one JetStream message, whose size is limited).
const MAX_WAITING: usize = 2000;

impl NatsBackend {
    pub(super) async fn claim_by_key(
        &self,
        group: GroupRef<'_>,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<Claimed>> {
        if max == 0 || !self.find_stream(group.stream).await? {
            return Ok(Vec::new());
        }
        loop {
            let Some((mut state, revision)) = self.load(group.stream, group.group).await? else {
                return Ok(Vec::new());
            };
            let GroupState { pending, keys, .. } = &mut state;
            keys.retain(|seq, _| pending.contains_key(seq));
            let now = now_ms();
            let deadline = after_ms(visibility);
            let mut changed = false;
            let mut held: HashSet<String> = HashSet::new();
            let mut picked = Vec::new();
            let mut gone = Vec::new();
            let mut waiting = 0;
            for (&seq, p) in state.pending.iter() {
                let key = state.keys.get(&seq);
                let first_of_key = key.is_none_or(|k| held.insert(k.clone()));
                if !first_of_key {
                    waiting += 1;
                }
                if !first_of_key || picked.len() == max || p.deadline > now {
                    continue;
                }
                match self.get(group.stream, seq, false).await? {
                    Some(m) => picked.push(m),
                    None => {
                        // Gone (trimmed, deleted): its key goes to the next entry.
                        if let Some(k) = key {
                            held.remove(k);
                        }
                        gone.push(seq);
                    }
                }
            }
            for seq in &gone {
                state.pending.remove(seq);
                state.keys.remove(seq);
                changed = true;
            }
            let mut next = state.cursor + 1;
            while picked.len() < max && waiting < MAX_WAITING {
                let Some(m) = self.get(group.stream, next, true).await? else {
                    break;
                };
                next = m.seq + 1;
                state.cursor = m.seq;
                changed = true;
                let key = decode_headers(&m).remove(KEY_HEADER);
                let free = key.as_ref().is_none_or(|k| held.insert(k.clone()));
                if let Some(k) = key {
                    state.keys.insert(m.seq, k);
                }
                if free {
                    picked.push(m);
                } else {
                    waiting += 1;
                    state.pending.insert(
                        m.seq,
                        Pending {
                            token: 0,
                            deadline: 0,
                            deliveries: 0,
                            claimed_at: now,
                        },
                    );
                }
            }
            if picked.is_empty() && !changed {
                return Ok(Vec::new());
            }
            let mut claimed = state.take(group.stream, &picked, deadline, now);
            claimed.sort_unstable_by_key(|c| c.message.id.as_str().parse::<u64>().unwrap_or(0));
            if self
                .store(group.stream, group.group, &state, revision)
                .await?
            {
                return Ok(claimed);
            }
        }
    }
}
