//! Lease extension: the heartbeat that keeps the claims of running handlers, and the
//! explicit extension a handler asks for ([`Message::extend_lease`](crate::Message::extend_lease)).
//!
//! A subscription's [`Leases`] holds the engine's view of the claims it extends: each with the
//! deadline the engine knows the backend holds for it. With the heartbeat on, every handler's
//! claim is in it while the handler runs, and one task per subscription calls
//! [`Backend::extend`](crate::Backend::extend) for all of them, every third of the
//! visibility timeout: one backend call per subscription and period, fenced by the claims'
//! tokens. A claim the backend no longer holds (taken over after a missed extension) leaves
//! the table, and its handler gives its slot back as any handler past its deadline does.
//! With the heartbeat off, the table is empty unless a handler extended its claim itself;
//! the delivery path then reads one atomic flag and nothing else.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::{Claim, ClaimToken, GroupRef, SharedBackend};
use crate::error::Result;
use crate::message::MessageId;
use crate::time::after;

/// The claims a subscription extends, and what it needs to extend them.
pub(crate) struct Leases {
    backend: SharedBackend,
    stream: String,
    group: String,
    consumer: String,
    visibility: Duration,
    heartbeat: bool,
    /// Set once a handler extended its claim itself: handlers then look at the table.
    explicit: AtomicBool,
    /// Claim -> the deadline the backend holds for it (as far as the engine knows).
    table: Mutex<HashMap<Claim, Instant>>,
}

impl Leases {
    pub(super) fn new(
        backend: SharedBackend,
        stream: &str,
        group: &str,
        consumer: &str,
        visibility: Duration,
        heartbeat: bool,
    ) -> Self {
        Leases {
            backend,
            stream: stream.to_owned(),
            group: group.to_owned(),
            consumer: consumer.to_owned(),
            visibility,
            heartbeat,
            explicit: AtomicBool::new(false),
            table: Mutex::new(HashMap::new()),
        }
    }

    fn group_ref(&self) -> GroupRef<'_> {
        GroupRef {
            stream: &self.stream,
            group: &self.group,
            consumer: &self.consumer,
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<Claim, Instant>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether handlers must look at the table: the heartbeat is on, or a handler extended
    /// its claim itself.
    fn tracking(&self) -> bool {
        self.heartbeat || self.explicit.load(Ordering::Relaxed)
    }

    /// Starts extending `claim` (heartbeat on), whose handler starts now; the returned guard
    /// stops it when the handler ends (or its task is aborted).
    pub(super) fn hold(&self, claim: &Claim) -> Held<'_> {
        if self.heartbeat {
            self.table().insert(claim.clone(), after(self.visibility));
        }
        Held {
            leases: self,
            claim: claim.clone(),
        }
    }

    /// The deadline the engine knows for `claim` beyond its first one, if it was extended.
    fn deadline(&self, claim: &Claim) -> Option<Instant> {
        if !self.tracking() {
            return None;
        }
        self.table().get(claim).copied()
    }

    /// Resolves when `claim`, claimed as its handler started, has passed its deadline: the
    /// visibility timeout, pushed out by every extension since.
    pub(super) async fn expired(&self, claim: &Claim) {
        tokio::time::sleep(self.visibility).await;
        while let Some(deadline) = self.deadline(claim).filter(|d| *d > Instant::now()) {
            tokio::time::sleep_until(deadline).await;
        }
    }

    /// Extends one claim by `extra` from now, at a handler's request; whether it was held.
    pub(crate) async fn extend_one(
        &self,
        id: &MessageId,
        token: ClaimToken,
        extra: Duration,
    ) -> Result<bool> {
        let claim = Claim {
            id: id.clone(),
            token,
        };
        let asked = after(extra);
        let held = self
            .backend
            .extend(self.group_ref(), std::slice::from_ref(&claim), extra)
            .await?
            .first()
            .copied()
            .unwrap_or(false);
        let mut table = self.table();
        if held {
            self.explicit.store(true, Ordering::Relaxed);
            table.insert(claim, asked);
        } else {
            table.remove(&claim);
        }
        Ok(held)
    }

    /// One heartbeat: extends, in one backend call, every held claim whose deadline is less
    /// than a visibility timeout away (a handler's own longer extension is left alone).
    async fn beat(&self) {
        let now = Instant::now();
        let claims: Vec<Claim> = self
            .table()
            .iter()
            .filter(|(_, deadline)| deadline.saturating_duration_since(now) < self.visibility)
            .map(|(claim, _)| claim.clone())
            .collect();
        if claims.is_empty() {
            return;
        }
        let deadline = after(self.visibility);
        match self
            .backend
            .extend(self.group_ref(), &claims, self.visibility)
            .await
        {
            Ok(held) => {
                let mut table = self.table();
                for (claim, held) in claims.iter().zip(held.iter().copied()) {
                    if held {
                        // Only claims still running: a finished handler removed its own.
                        if let Some(d) = table.get_mut(claim) {
                            *d = (*d).max(deadline);
                        }
                    } else {
                        table.remove(claim);
                    }
                }
            }
            Err(crate::Error::Closed) => {}
            Err(e) => tracing::warn!(
                stream = %self.stream, group = %self.group, error = %e, count = claims.len(),
                "extending the claims of running handlers failed; trying again at the next \
                 heartbeat (a claim not extended in time may be redelivered)"
            ),
        }
    }
}

impl fmt::Debug for Leases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leases")
            .field("stream", &self.stream)
            .field("group", &self.group)
            .field("heartbeat", &self.heartbeat)
            .finish_non_exhaustive()
    }
}

/// A running handler's claim in the table; removed on drop.
pub(super) struct Held<'a> {
    leases: &'a Leases,
    claim: Claim,
}

impl Held<'_> {
    /// The claim held.
    pub(super) fn claim(&self) -> &Claim {
        &self.claim
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.leases.tracking() {
            self.leases.table().remove(&self.claim);
        }
    }
}

/// How often the heartbeat runs: a third of the visibility timeout (at least 1 ms).
pub(crate) fn period(visibility: Duration) -> Duration {
    (visibility / 3).max(Duration::from_millis(1))
}

/// A running heartbeat task; stopped when dropped (also when the dispatcher's own task is
/// dropped half-way).
pub(super) struct Heartbeat(tokio::task::JoinHandle<()>);

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the heartbeat of a subscription whose option is on; `None` when it is off (or the
/// visibility timeout never expires).
pub(super) fn start_heartbeat(leases: &Arc<Leases>) -> Option<Heartbeat> {
    if !leases.heartbeat || leases.visibility >= Duration::from_secs(100 * 365 * 24 * 3600) {
        return None;
    }
    let leases = Arc::clone(leases);
    let period = period(leases.visibility);
    Some(Heartbeat(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            leases.beat().await;
        }
    })))
}

/// A delivery's handle on its subscription's leases, carried by the [`Message`]
/// (crate::Message) a handler gets.
#[derive(Clone)]
pub(crate) struct LeaseHandle(pub(crate) Arc<Leases>);

impl fmt::Debug for LeaseHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
