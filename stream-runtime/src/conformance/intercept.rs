//! A pass-through [`Backend`] that hands every call to hooks first: to count calls, to see
//! when a consumer went idle ([`CallWatch`]), or to make a backend hang or answer late, as a slow or lost
//! server would.
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//!
//! use stream_runtime::backend::memory::MemoryBackend;
//! use stream_runtime::backend::{Backend, BoxFuture, Claim, GroupRef};
//! use stream_runtime::conformance::intercept::{intercept, Intercept};
//!
//! /// Counts acks; every other call passes straight through.
//! #[derive(Default)]
//! struct Acks(AtomicU64);
//!
//! impl Intercept for Acks {
//!     fn ack<'a>(
//!         &'a self,
//!         inner: &'a dyn Backend,
//!         group: GroupRef<'a>,
//!         claims: &'a [Claim],
//!     ) -> BoxFuture<'a, stream_runtime::Result<()>> {
//!         self.0.fetch_add(1, Ordering::Relaxed);
//!         inner.ack(group, claims)
//!     }
//! }
//!
//! let acks = Arc::new(Acks::default());
//! let backend = intercept(Arc::new(MemoryBackend::new()), acks.clone());
//! # drop(backend);
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::wait_for;
use crate::backend::{Backend, BoxFuture, Claim, Claimed, GroupRef, SharedBackend, Wakeup};
use crate::error::Result;
use crate::message::{MessageId, NewMessage};
use crate::options::{StartPosition, Trim};

/// Hooks around each [`Backend`] call. Every method gets the wrapped backend as `inner` and
/// by default passes the call on unchanged, so an implementation overrides only the calls
/// it watches.
#[allow(missing_docs)]
pub trait Intercept: Send + Sync + 'static {
    fn append<'a>(
        &'a self,
        inner: &'a dyn Backend,
        stream: &'a str,
        messages: Vec<NewMessage>,
        trim: Trim,
    ) -> BoxFuture<'a, Result<Vec<MessageId>>> {
        inner.append(stream, messages, trim)
    }

    fn ensure_group<'a>(
        &'a self,
        inner: &'a dyn Backend,
        stream: &'a str,
        group: &'a str,
        start: &'a StartPosition,
    ) -> BoxFuture<'a, Result<()>> {
        inner.ensure_group(stream, group, start)
    }

    fn claim<'a>(
        &'a self,
        inner: &'a dyn Backend,
        group: GroupRef<'a>,
        max: usize,
        visibility: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claimed>>> {
        inner.claim(group, max, visibility)
    }

    fn ack<'a>(
        &'a self,
        inner: &'a dyn Backend,
        group: GroupRef<'a>,
        claims: &'a [Claim],
    ) -> BoxFuture<'a, Result<()>> {
        inner.ack(group, claims)
    }

    fn retry<'a>(
        &'a self,
        inner: &'a dyn Backend,
        group: GroupRef<'a>,
        claim: &'a Claim,
        delay: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        inner.retry(group, claim, delay)
    }

    fn dead_letter<'a>(
        &'a self,
        inner: &'a dyn Backend,
        group: GroupRef<'a>,
        claim: &'a Claim,
        to: &'a str,
        message: NewMessage,
    ) -> BoxFuture<'a, Result<bool>> {
        inner.dead_letter(group, claim, to, message)
    }

    fn release<'a>(
        &'a self,
        inner: &'a dyn Backend,
        group: GroupRef<'a>,
        claims: &'a [Claim],
    ) -> BoxFuture<'a, Result<()>> {
        inner.release(group, claims)
    }

    fn extend<'a>(
        &'a self,
        inner: &'a dyn Backend,
        group: GroupRef<'a>,
        claims: &'a [Claim],
        visibility: Duration,
    ) -> BoxFuture<'a, Result<Vec<bool>>> {
        inner.extend(group, claims, visibility)
    }

    fn postpone<'a>(
        &'a self,
        inner: &'a dyn Backend,
        group: GroupRef<'a>,
        claim: &'a Claim,
        delay: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        inner.postpone(group, claim, delay)
    }

    fn ping<'a>(&'a self, inner: &'a dyn Backend) -> BoxFuture<'a, Result<()>> {
        inner.ping()
    }

    fn wakeup(&self, inner: &dyn Backend, stream: &str) -> Wakeup {
        inner.wakeup(stream)
    }

    fn close<'a>(&'a self, inner: &'a dyn Backend) -> BoxFuture<'a, Result<()>> {
        inner.close()
    }

    fn claim_ordered<'a>(
        &'a self,
        inner: &'a dyn Backend,
        group: GroupRef<'a>,
        max: usize,
        visibility: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claimed>>> {
        inner.claim_ordered(group, max, visibility)
    }

    fn ack_ordered<'a>(
        &'a self,
        inner: &'a dyn Backend,
        group: GroupRef<'a>,
        claims: &'a [Claim],
    ) -> BoxFuture<'a, Result<()>> {
        inner.ack_ordered(group, claims)
    }

    fn dead_letter_ordered<'a>(
        &'a self,
        inner: &'a dyn Backend,
        group: GroupRef<'a>,
        claim: &'a Claim,
        to: &'a str,
        message: NewMessage,
    ) -> BoxFuture<'a, Result<bool>> {
        inner.dead_letter_ordered(group, claim, to, message)
    }
}

/// `inner` with every call going through `hooks` (which the caller keeps a handle on).
pub fn intercept<I: Intercept>(inner: SharedBackend, hooks: Arc<I>) -> SharedBackend {
    Arc::new(Intercepted { inner, hooks })
}

/// The wrapper [`intercept`] returns.
struct Intercepted<I> {
    inner: SharedBackend,
    hooks: Arc<I>,
}

crate::delegate_backend_admin!(impl [I: Intercept] Intercepted<I>, inner);

impl<I: Intercept> Backend for Intercepted<I> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn sql(&self) -> Option<crate::backend::SqlBackend<'_>> {
        self.inner.sql()
    }

    fn append<'a>(
        &'a self,
        stream: &'a str,
        messages: Vec<NewMessage>,
        trim: Trim,
    ) -> BoxFuture<'a, Result<Vec<MessageId>>> {
        self.hooks.append(&*self.inner, stream, messages, trim)
    }

    fn ensure_group<'a>(
        &'a self,
        stream: &'a str,
        group: &'a str,
        start: &'a StartPosition,
    ) -> BoxFuture<'a, Result<()>> {
        self.hooks.ensure_group(&*self.inner, stream, group, start)
    }

    fn claim<'a>(
        &'a self,
        group: GroupRef<'a>,
        max: usize,
        visibility: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claimed>>> {
        self.hooks.claim(&*self.inner, group, max, visibility)
    }

    fn ack<'a>(&'a self, group: GroupRef<'a>, claims: &'a [Claim]) -> BoxFuture<'a, Result<()>> {
        self.hooks.ack(&*self.inner, group, claims)
    }

    fn retry<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        delay: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        self.hooks.retry(&*self.inner, group, claim, delay)
    }

    fn dead_letter<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        to: &'a str,
        message: NewMessage,
    ) -> BoxFuture<'a, Result<bool>> {
        self.hooks
            .dead_letter(&*self.inner, group, claim, to, message)
    }

    fn release<'a>(
        &'a self,
        group: GroupRef<'a>,
        claims: &'a [Claim],
    ) -> BoxFuture<'a, Result<()>> {
        self.hooks.release(&*self.inner, group, claims)
    }

    fn extend<'a>(
        &'a self,
        group: GroupRef<'a>,
        claims: &'a [Claim],
        visibility: Duration,
    ) -> BoxFuture<'a, Result<Vec<bool>>> {
        self.hooks.extend(&*self.inner, group, claims, visibility)
    }

    fn postpone<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        delay: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        self.hooks.postpone(&*self.inner, group, claim, delay)
    }

    fn ping(&self) -> BoxFuture<'_, Result<()>> {
        self.hooks.ping(&*self.inner)
    }

    fn wakeup(&self, stream: &str) -> Wakeup {
        self.hooks.wakeup(&*self.inner, stream)
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        self.hooks.close(&*self.inner)
    }

    fn key_order_supported(&self) -> bool {
        self.inner.key_order_supported()
    }

    fn claim_ordered<'a>(
        &'a self,
        group: GroupRef<'a>,
        max: usize,
        visibility: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claimed>>> {
        self.hooks
            .claim_ordered(&*self.inner, group, max, visibility)
    }

    fn ack_ordered<'a>(
        &'a self,
        group: GroupRef<'a>,
        claims: &'a [Claim],
    ) -> BoxFuture<'a, Result<()>> {
        self.hooks.ack_ordered(&*self.inner, group, claims)
    }

    fn dead_letter_ordered<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        to: &'a str,
        message: NewMessage,
    ) -> BoxFuture<'a, Result<bool>> {
        self.hooks
            .dead_letter_ordered(&*self.inner, group, claim, to, message)
    }
}

/// Counts, per stream, the calls a case waits on: short claims (claims that returned fewer
/// messages than they asked for; after one the engine waits for a wake-up, a retry or its
/// poll interval, so the consumer is idle and what it handles next was pushed to it or
/// polled), and finished ack and dead-letter calls (so a case knows a settling call reached
/// the backend).
#[derive(Debug, Default)]
pub struct CallWatch {
    counts: Mutex<HashMap<(Call, String), usize>>,
}

/// A kind of call [`CallWatch`] counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    /// A claim that returned fewer messages than it asked for.
    ShortClaim,
    /// A finished `ack`.
    Ack,
    /// A finished `dead_letter`.
    DeadLetter,
}

impl CallWatch {
    /// `inner`, watched.
    pub fn wrap(inner: SharedBackend) -> (SharedBackend, Arc<CallWatch>) {
        let watch = Arc::new(CallWatch::default());
        (intercept(inner, watch.clone()), watch)
    }

    /// How many `call`s on the stream whose full name ends with `stream` there were.
    pub fn count(&self, call: Call, stream: &str) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|((c, name), _)| *c == call && name.ends_with(stream))
            .map(|(_, n)| n)
            .sum()
    }

    /// Waits until a consumer of the stream whose full name ends with `stream` went idle.
    pub async fn wait_idle(&self, stream: &str) {
        wait_for(&format!("a consumer of {stream} to go idle"), || {
            self.count(Call::ShortClaim, stream) > 0
        })
        .await;
    }

    /// `call`, counted once it finished.
    fn counted<'a, T: Send + 'a>(
        &'a self,
        call: Call,
        stream: &'a str,
        call_future: BoxFuture<'a, T>,
    ) -> BoxFuture<'a, T> {
        Box::pin(async move {
            let result = call_future.await;
            self.add(call, stream);
            result
        })
    }

    fn add(&self, call: Call, stream: &str) {
        *self
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((call, stream.to_owned()))
            .or_default() += 1;
    }
}

impl Intercept for CallWatch {
    fn claim<'a>(
        &'a self,
        inner: &'a dyn Backend,
        group: GroupRef<'a>,
        max: usize,
        visibility: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claimed>>> {
        Box::pin(async move {
            let claimed = inner.claim(group, max, visibility).await;
            if claimed.as_ref().is_ok_and(|c| c.len() < max) {
                self.add(Call::ShortClaim, group.stream);
            }
            claimed
        })
    }

    fn ack<'a>(
        &'a self,
        inner: &'a dyn Backend,
        group: GroupRef<'a>,
        claims: &'a [Claim],
    ) -> BoxFuture<'a, Result<()>> {
        self.counted(Call::Ack, group.stream, inner.ack(group, claims))
    }

    fn dead_letter<'a>(
        &'a self,
        inner: &'a dyn Backend,
        group: GroupRef<'a>,
        claim: &'a Claim,
        to: &'a str,
        message: NewMessage,
    ) -> BoxFuture<'a, Result<bool>> {
        let moved = inner.dead_letter(group, claim, to, message);
        self.counted(Call::DeadLetter, group.stream, moved)
    }
}
