//! Consumer bookkeeping: when each consumer of this backend last claimed, and the sweep that
//! removes those idle for longer than `idle_consumer_timeout` and holding nothing.

use std::collections::HashMap;
use std::sync::PoisonError;
use std::time::{Duration, Instant};

use super::{stream_key, RedisBackend};
use crate::backend::GroupRef;

/// (stream, group, consumer name).
pub(super) type ConsumerKey = (String, String, String);

#[derive(Debug)]
pub(super) struct Consumers {
    pub(super) last_claim: HashMap<ConsumerKey, Instant>,
    pub(super) last_sweep: Instant,
}

impl RedisBackend {
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
    pub(super) fn remember_consumer(&self, group: GroupRef<'_>) -> Vec<ConsumerKey> {
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

    /// Deletes those of `consumers` that hold no pending entries; the others are kept in
    /// the list for a later sweep (their entries get reclaimed by other consumers).
    pub(super) async fn remove_idle_consumers(&self, consumers: Vec<ConsumerKey>) {
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
