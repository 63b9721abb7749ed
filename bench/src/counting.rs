//! Counts the engine's calls (`--count-calls`), by intercepting the backend: how many claims
//! and acks a workload took, and how many messages each carried on average. Diagnostic only;
//! it adds one boxed future per claim.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use stream_runtime::backend::{BoxFuture, Claim, Claimed, GroupRef, SharedBackend};
use stream_runtime::conformance::intercept::{intercept, Intercept};
use stream_runtime::{Backend, MessageId, NewMessage, Result, Trim};

#[derive(Debug, Default)]
pub struct Counters {
    claims: AtomicU64,
    claimed: AtomicU64,
    empty_claims: AtomicU64,
    acks: AtomicU64,
    acked: AtomicU64,
    appends: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Snapshot {
    claims: u64,
    claimed: u64,
    empty_claims: u64,
    acks: u64,
    acked: u64,
    appends: u64,
}

impl Counters {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            claims: self.claims.load(Ordering::Relaxed),
            claimed: self.claimed.load(Ordering::Relaxed),
            empty_claims: self.empty_claims.load(Ordering::Relaxed),
            acks: self.acks.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            appends: self.appends.load(Ordering::Relaxed),
        }
    }
}

impl Snapshot {
    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: Snapshot) -> Value {
        let claims = self.claims - earlier.claims;
        let claimed = self.claimed - earlier.claimed;
        let acks = self.acks - earlier.acks;
        let acked = self.acked - earlier.acked;
        let per = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        json!({
            "claim_calls": claims,
            "empty_claims": self.empty_claims - earlier.empty_claims,
            "msgs_per_claim": crate::stats::round(per(claimed, claims)),
            "ack_calls": acks,
            "msgs_per_ack": crate::stats::round(per(acked, acks)),
            "append_calls": self.appends - earlier.appends,
        })
    }
}

impl Counters {
    /// `inner`, with its calls counted into the returned counters.
    pub fn wrap(inner: SharedBackend) -> (SharedBackend, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        (intercept(inner, counters.clone()), counters)
    }
}

impl Intercept for Counters {
    fn append<'a>(
        &'a self,
        inner: &'a dyn Backend,
        stream: &'a str,
        messages: Vec<NewMessage>,
        trim: Trim,
    ) -> BoxFuture<'a, Result<Vec<MessageId>>> {
        self.appends.fetch_add(1, Ordering::Relaxed);
        inner.append(stream, messages, trim)
    }

    fn claim<'a>(
        &'a self,
        inner: &'a dyn Backend,
        group: GroupRef<'a>,
        max: usize,
        visibility: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claimed>>> {
        Box::pin(async move {
            let claimed = inner.claim(group, max, visibility).await?;
            self.claims.fetch_add(1, Ordering::Relaxed);
            self.claimed
                .fetch_add(claimed.len() as u64, Ordering::Relaxed);
            if claimed.is_empty() {
                self.empty_claims.fetch_add(1, Ordering::Relaxed);
            }
            Ok(claimed)
        })
    }

    fn ack<'a>(
        &'a self,
        inner: &'a dyn Backend,
        group: GroupRef<'a>,
        claims: &'a [Claim],
    ) -> BoxFuture<'a, Result<()>> {
        self.acks.fetch_add(1, Ordering::Relaxed);
        self.acked.fetch_add(claims.len() as u64, Ordering::Relaxed);
        inner.ack(group, claims)
    }
}
