//! A pass-through backend that counts the engine's calls (`--count-calls`): how many claims
//! and acks a workload took, and how many messages each carried on average. Diagnostic only;
//! it adds one boxed future per call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use stream_runtime::backend::{BoxFuture, Claim, Claimed, GroupRef, SharedBackend, Wakeup};
use stream_runtime::{Backend, MessageId, NewMessage, Result, StartPosition};

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

/// Wraps a backend, counting calls into shared counters.
pub struct Counting {
    inner: SharedBackend,
    counters: Arc<Counters>,
}

impl Counting {
    pub fn wrap(inner: SharedBackend) -> (SharedBackend, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        (
            Arc::new(Counting {
                inner,
                counters: counters.clone(),
            }),
            counters,
        )
    }
}

stream_runtime::delegate_backend_admin!(Counting, inner);

impl Backend for Counting {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn append<'a>(
        &'a self,
        stream: &'a str,
        messages: Vec<NewMessage>,
        trim: stream_runtime::Trim,
    ) -> BoxFuture<'a, Result<Vec<MessageId>>> {
        self.counters.appends.fetch_add(1, Ordering::Relaxed);
        self.inner.append(stream, messages, trim)
    }

    fn ensure_group<'a>(
        &'a self,
        stream: &'a str,
        group: &'a str,
        start: &'a StartPosition,
    ) -> BoxFuture<'a, Result<()>> {
        self.inner.ensure_group(stream, group, start)
    }

    fn claim<'a>(
        &'a self,
        group: GroupRef<'a>,
        max: usize,
        visibility: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claimed>>> {
        Box::pin(async move {
            let claimed = self.inner.claim(group, max, visibility).await?;
            let c = &self.counters;
            c.claims.fetch_add(1, Ordering::Relaxed);
            c.claimed.fetch_add(claimed.len() as u64, Ordering::Relaxed);
            if claimed.is_empty() {
                c.empty_claims.fetch_add(1, Ordering::Relaxed);
            }
            Ok(claimed)
        })
    }

    fn ack<'a>(&'a self, group: GroupRef<'a>, claims: &'a [Claim]) -> BoxFuture<'a, Result<()>> {
        self.counters.acks.fetch_add(1, Ordering::Relaxed);
        self.counters
            .acked
            .fetch_add(claims.len() as u64, Ordering::Relaxed);
        self.inner.ack(group, claims)
    }

    fn retry<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        delay: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        self.inner.retry(group, claim, delay)
    }

    fn dead_letter<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        to: &'a str,
        message: NewMessage,
    ) -> BoxFuture<'a, Result<bool>> {
        self.inner.dead_letter(group, claim, to, message)
    }

    fn release<'a>(
        &'a self,
        group: GroupRef<'a>,
        claims: &'a [Claim],
    ) -> BoxFuture<'a, Result<()>> {
        self.inner.release(group, claims)
    }

    fn wakeup(&self, stream: &str) -> Wakeup {
        self.inner.wakeup(stream)
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        self.inner.close()
    }
}
