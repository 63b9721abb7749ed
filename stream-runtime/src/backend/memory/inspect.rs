//! A read-only view of the memory backend's streams, groups and pending claims, for the
//! test harness ([`crate::testing`]).

use std::sync::Arc;
use tokio::time::Instant;

use super::{Group, MemoryBackend, Stream};
use crate::message::Message;

/// One stream as stored.
#[derive(Debug)]
pub(crate) struct StreamView {
    /// Full name.
    pub name: String,
    /// Every retained message, in id order (`attempt` is 0: not a delivery).
    pub messages: Vec<Message>,
    /// The stream's consumer groups.
    pub groups: Vec<GroupView>,
}

/// One consumer group of a stream.
#[derive(Debug)]
pub(crate) struct GroupView {
    /// Group name.
    pub name: String,
    /// Ids of retained messages past the group's cursor: not yet claimed.
    pub unclaimed: Vec<u64>,
    /// Claimed messages not yet acknowledged or dead-lettered.
    pub pending: Vec<PendingView>,
}

/// One pending message of a group.
#[derive(Debug)]
pub(crate) struct PendingView {
    /// Its id.
    pub id: u64,
    /// Deliveries so far.
    pub deliveries: u32,
    /// A worker holds the claim (false: waiting for a retry or released).
    pub held: bool,
    /// When it becomes claimable again (the claim's deadline, or the retry's due time).
    pub visible_at: Instant,
}

impl MemoryBackend {
    /// Whether any of these `(stream, group)` pairs has a message pending or not yet
    /// claimed. Cheap: copies nothing.
    pub(crate) fn has_work<'a>(
        &self,
        groups: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> bool {
        let state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        groups.into_iter().any(|(stream, group)| {
            state.streams.get(stream).is_some_and(|s| {
                s.groups.get(group).is_some_and(|g| {
                    !g.pending.is_empty()
                        || g.cursor.max(s.first_seq.saturating_sub(1)) + 1 < s.next_seq()
                })
            })
        })
    }

    /// Every stream, sorted by name, with its messages and groups (each sorted).
    pub(crate) fn streams(&self) -> Vec<StreamView> {
        let state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut streams: Vec<StreamView> = state
            .streams
            .iter()
            .map(|(name, s)| {
                let next = s.next_seq();
                let shared: Arc<str> = Arc::from(name.as_str());
                let messages = (s.first_seq..next)
                    .filter_map(|seq| s.message(&shared, seq, 0))
                    .collect();
                let mut groups: Vec<GroupView> = s
                    .groups
                    .iter()
                    .map(|(group, g)| GroupView {
                        name: group.clone(),
                        unclaimed: (first_unclaimed(s, g)..next).collect(),
                        pending: g
                            .pending
                            .iter()
                            .map(|(&id, p)| PendingView {
                                id,
                                deliveries: p.deliveries,
                                held: p.token != 0,
                                visible_at: p.deadline,
                            })
                            .collect(),
                    })
                    .collect();
                groups.sort_by(|a, b| a.name.cmp(&b.name));
                StreamView {
                    name: name.clone(),
                    messages,
                    groups,
                }
            })
            .collect();
        streams.sort_by(|a, b| a.name.cmp(&b.name));
        streams
    }
}

/// The first retained message past the group's cursor.
fn first_unclaimed(s: &Stream, g: &Group) -> u64 {
    g.cursor.max(s.first_seq.saturating_sub(1)) + 1
}
