//! [`BackendAdmin`] for the NATS backend: views from stream infos, direct message reads and
//! the groups' KV entries; moves deduplicated by `Nats-Msg-Id`.

use std::sync::Arc;

use super::{js, names, time_of, NatsBackend, NAME};
use crate::admin::{GroupStats, PendingEntry, ReadFrom, StreamInfo};
use crate::backend::{BackendAdmin, BoxFuture};
use crate::error::Result;
use crate::message::{Message, MessageId, NewMessage};

fn seq_of(id: &MessageId) -> Option<u64> {
    id.as_str().parse::<u64>().ok()
}

impl NatsBackend {
    /// The first sequence `stream` holds (`u64::MAX` when it holds none).
    async fn first_held(&self, stream: &str) -> Result<u64> {
        if !self.find_stream(stream).await? {
            return Ok(u64::MAX);
        }
        Ok(self.get(stream, 0, true).await?.map_or(u64::MAX, |m| m.seq))
    }

    async fn stream_info(&self, stream: String) -> Result<Option<StreamInfo>> {
        let Some(state) = self
            .js
            .stream_state(&names::jetstream_name(&stream), None)
            .await?
        else {
            return Ok(None);
        };
        let (mut first_id, mut last_id, mut last_append) = (None, None, None);
        if state.messages > 0 {
            if let Some(first) = self.get(&stream, 0, true).await? {
                first_id = Some(MessageId::new(first.seq.to_string()));
            }
            let subject = names::subject(&stream);
            let name = names::jetstream_name(&stream);
            if let Some(last) = self.js.get(&name, js::Get::Last(&subject)).await? {
                last_id = Some(MessageId::new(last.seq.to_string()));
                last_append = Some(last.time);
            }
        }
        Ok(Some(StreamInfo {
            stream,
            length: state.messages,
            first_id,
            last_id,
            last_append,
        }))
    }
}

impl BackendAdmin for NatsBackend {
    fn list_streams<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<StreamInfo>>> {
        Box::pin(async move {
            self.closed.check()?;
            let mut found = Vec::new();
            for name in self.js.stream_names().await? {
                if let Some(stream) = names::stream_of(&name).filter(|s| s.starts_with(prefix)) {
                    found.push(stream);
                }
            }
            found.sort();
            let mut out = Vec::with_capacity(found.len());
            for stream in found {
                out.extend(self.stream_info(stream).await?);
            }
            Ok(out)
        })
    }

    fn list_groups<'a>(&'a self, stream: &'a str) -> BoxFuture<'a, Result<Vec<GroupStats>>> {
        Box::pin(async move {
            if !self.find_stream(stream).await? {
                return Ok(Vec::new());
            }
            let first = self.first_held(stream).await?;
            let mut out = Vec::new();
            for group in self.group_names(stream).await? {
                let Some((state, _)) = self.load(stream, &group).await? else {
                    continue;
                };
                let mut lag = 0;
                let mut next = state.cursor + 1;
                while let Some(m) = self.get(stream, next, true).await? {
                    lag += 1;
                    next = m.seq + 1;
                }
                let pending = state.pending.range(first..);
                out.push(GroupStats {
                    group,
                    cursor: MessageId::new(state.cursor.to_string()),
                    lag,
                    pending: pending.clone().count() as u64,
                    oldest_claimed_at: pending.map(|(_, p)| p.claimed_at).min().map(time_of),
                });
            }
            Ok(out)
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
                    Some(crate::backend::integer_start_id(NAME, id.as_str())?.unsigned_abs())
                }
                _ => None,
            };
            if !self.find_stream(stream).await? {
                return Ok(Vec::new());
            }
            let name: Arc<str> = Arc::from(stream);
            let mut out = Vec::new();
            if let ReadFrom::Last = from {
                let first = self.first_held(stream).await?;
                let last = self
                    .js
                    .stream_state(&names::jetstream_name(stream), None)
                    .await?
                    .map_or(0, |state| state.last_seq);
                let mut seq = last;
                while out.len() < max && seq >= first && seq > 0 {
                    if let Some(m) = self.get(stream, seq, false).await? {
                        out.push(Self::message(&name, &m, 0));
                    }
                    seq -= 1;
                }
                out.reverse();
                return Ok(out);
            }
            let mut next = after.map_or(0, |a| a.saturating_add(1));
            while out.len() < max {
                let Some(m) = self.get(stream, next, true).await? else {
                    break;
                };
                next = m.seq + 1;
                out.push(Self::message(&name, &m, 0));
            }
            Ok(out)
        })
    }

    fn list_pending<'a>(
        &'a self,
        stream: &'a str,
        group: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<PendingEntry>>> {
        Box::pin(async move {
            let Some((state, _)) = self.load(stream, group).await? else {
                return Ok(Vec::new());
            };
            let first = self.first_held(stream).await?;
            Ok(state
                .pending
                .range(first..)
                .take(max)
                .map(|(seq, p)| {
                    PendingEntry::at(
                        MessageId::new(seq.to_string()),
                        p.deliveries,
                        p.token != 0,
                        time_of(p.deadline),
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
            let Some(seq) = seq_of(id) else {
                return Ok(None);
            };
            if !self.find_stream(from).await? {
                return Ok(None);
            }
            if self.get(from, seq, false).await?.is_none() {
                return Ok(None);
            }
            // Publish first, deduplicated: of two moves, or a move repeated after a crash,
            // one message lands; then the delete decides which move succeeded.
            let msg_id = format!("mv.{}.{seq}", names::encode_ascii(from));
            let new_seq = self.publish_one(to, message, Some(&msg_id)).await?;
            if !self.delete_one(from, seq).await? {
                return Ok(None);
            }
            self.prune(from, 0, &[seq]).await?;
            Ok(Some(MessageId::new(new_seq.to_string())))
        })
    }

    fn delete_messages<'a>(
        &'a self,
        stream: &'a str,
        ids: &'a [MessageId],
    ) -> BoxFuture<'a, Result<Vec<MessageId>>> {
        Box::pin(async move {
            if !self.find_stream(stream).await? {
                return Ok(Vec::new());
            }
            let mut deleted = Vec::new();
            let mut seqs = Vec::new();
            for id in ids {
                let Some(seq) = seq_of(id) else { continue };
                if self.delete_one(stream, seq).await? {
                    deleted.push(id.clone());
                    seqs.push(seq);
                }
            }
            if !seqs.is_empty() {
                self.prune(stream, 0, &seqs).await?;
            }
            Ok(deleted)
        })
    }
}

impl NatsBackend {
    /// Deletes one message; whether the stream held it.
    async fn delete_one(&self, stream: &str, seq: u64) -> Result<bool> {
        self.js.delete(&names::jetstream_name(stream), seq).await
    }
}
