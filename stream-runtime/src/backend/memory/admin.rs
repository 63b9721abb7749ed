//! [`BackendAdmin`] for the memory backend: the reference for the other backends.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;

use super::{MemoryBackend, Stream};
use crate::admin::{GroupStats, PendingEntry, ReadFrom, StreamInfo};
use crate::backend::{BackendAdmin, BoxFuture};
use crate::error::Result;
use crate::message::{Message, MessageId, NewMessage};

/// The wall-clock time of an `Instant`.
fn wall_clock(at: Instant) -> SystemTime {
    let (now, wall) = (Instant::now(), SystemTime::now());
    if at >= now {
        wall.checked_add(at - now).unwrap_or(wall)
    } else {
        wall.checked_sub(now - at).unwrap_or(wall)
    }
}

fn seq_of(id: &MessageId) -> Option<u64> {
    id.as_str().parse::<u64>().ok()
}

impl Stream {
    /// The sequence numbers of the messages held, oldest first.
    fn seqs(&self) -> impl DoubleEndedIterator<Item = u64> + '_ {
        let first = self.first_seq;
        self.entries
            .iter()
            .enumerate()
            .filter_map(move |(i, e)| e.as_ref().map(|_| first + i as u64))
    }

    /// Deletes a message and its pending entries; whether it was held.
    fn delete(&mut self, seq: u64) -> bool {
        let Some(index) = seq
            .checked_sub(self.first_seq)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return false;
        };
        let Some(slot) = self.entries.get_mut(index) else {
            return false;
        };
        if slot.take().is_none() {
            return false;
        }
        self.holes += 1;
        self.drop_front_holes();
        for group in self.groups.values_mut() {
            group.pending.remove(&seq);
        }
        true
    }
}

impl BackendAdmin for MemoryBackend {
    fn list_streams<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<StreamInfo>>> {
        Box::pin(async move {
            let state = self.lock()?;
            let mut streams: Vec<StreamInfo> = state
                .streams
                .iter()
                .filter(|(name, _)| name.starts_with(prefix))
                .map(|(name, s)| {
                    let last = s.seqs().next_back();
                    StreamInfo {
                        stream: name.clone(),
                        length: s.len() as u64,
                        first_id: s.seqs().next().map(|seq| MessageId::new(seq.to_string())),
                        last_id: last.map(|seq| MessageId::new(seq.to_string())),
                        last_append: last.and_then(|seq| s.entry(seq)).map(|e| e.created_at),
                    }
                })
                .collect();
            streams.sort_by(|a, b| a.stream.cmp(&b.stream));
            Ok(streams)
        })
    }

    fn list_groups<'a>(&'a self, stream: &'a str) -> BoxFuture<'a, Result<Vec<GroupStats>>> {
        Box::pin(async move {
            let state = self.lock()?;
            let Some(s) = state.streams.get(stream) else {
                return Ok(Vec::new());
            };
            let mut groups: Vec<GroupStats> = s
                .groups
                .iter()
                .map(|(name, g)| GroupStats {
                    group: name.clone(),
                    cursor: MessageId::new(g.cursor.to_string()),
                    lag: s.seqs().rev().take_while(|&seq| seq > g.cursor).count() as u64,
                    pending: g.pending.len() as u64,
                    oldest_claimed_at: g.pending.values().map(|p| p.claimed_at).min(),
                })
                .collect();
            groups.sort_by(|a, b| a.group.cmp(&b.group));
            Ok(groups)
        })
    }

    fn read<'a>(
        &'a self,
        stream: &'a str,
        from: &'a ReadFrom,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<Message>>> {
        Box::pin(async move {
            let after = match from {
                ReadFrom::After(id) => {
                    Some(super::super::integer_start_id("memory", id.as_str())?.unsigned_abs())
                }
                _ => None,
            };
            let state = self.lock()?;
            let Some(s) = state.streams.get(stream) else {
                return Ok(Vec::new());
            };
            let seqs: Vec<u64> = match (from, after) {
                (ReadFrom::Last, _) => {
                    let mut last: Vec<u64> = s.seqs().rev().take(max).collect();
                    last.reverse();
                    last
                }
                (_, after) => s
                    .seqs()
                    .filter(|&seq| after.is_none_or(|a| seq > a))
                    .take(max)
                    .collect(),
            };
            let stream: Arc<str> = Arc::from(stream);
            Ok(seqs
                .into_iter()
                .filter_map(|seq| s.message(&stream, seq, 0))
                .collect())
        })
    }

    fn list_pending<'a>(
        &'a self,
        stream: &'a str,
        group: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<PendingEntry>>> {
        Box::pin(async move {
            let state = self.lock()?;
            let Some(g) = state.streams.get(stream).and_then(|s| s.groups.get(group)) else {
                return Ok(Vec::new());
            };
            Ok(g.pending
                .iter()
                .take(max)
                .map(|(seq, p)| {
                    PendingEntry::at(
                        MessageId::new(seq.to_string()),
                        p.deliveries,
                        p.token != 0,
                        wall_clock(p.deadline),
                        None,
                    )
                })
                .collect())
        })
    }

    fn move_message<'a>(
        &'a self,
        from: &'a str,
        id: &'a MessageId,
        to: &'a str,
        message: NewMessage,
    ) -> BoxFuture<'a, Result<Option<MessageId>>> {
        Box::pin(async move {
            let moved = {
                let mut state = self.lock()?;
                let held = seq_of(id)
                    .is_some_and(|seq| state.streams.get_mut(from).is_some_and(|s| s.delete(seq)));
                held.then(|| {
                    let seq = state
                        .streams
                        .entry(to.to_owned())
                        .or_insert_with(|| Stream::new(to))
                        .push(message);
                    MessageId::from_u64(seq)
                })
            };
            if moved.is_some() {
                self.wakeups.notify(to);
            }
            Ok(moved)
        })
    }

    fn delete_messages<'a>(
        &'a self,
        stream: &'a str,
        ids: &'a [MessageId],
    ) -> BoxFuture<'a, Result<Vec<MessageId>>> {
        Box::pin(async move {
            let mut state = self.lock()?;
            let Some(s) = state.streams.get_mut(stream) else {
                return Ok(Vec::new());
            };
            Ok(ids
                .iter()
                .filter(|id| seq_of(id).is_some_and(|seq| s.delete(seq)))
                .cloned()
                .collect())
        })
    }
}
