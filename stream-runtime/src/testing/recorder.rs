//! The harness's backend: the memory backend, with every change told to the journal, so
//! that `settle` wakes when something happened and each delivery learns its fate.

use std::sync::Arc;
use std::time::Duration;

use super::journal::{Journal, Settled};
use crate::backend::memory::MemoryBackend;
use crate::backend::{Backend, BoxFuture, Claim, Claimed, GroupRef, Wakeup};
use crate::dead_letter_headers;
use crate::error::Result;
use crate::message::{MessageId, NewMessage};
use crate::options::{StartPosition, Trim};

pub(crate) struct Recorder {
    pub(crate) memory: Arc<MemoryBackend>,
    pub(crate) journal: Arc<Journal>,
}

impl Recorder {
    fn settled(&self, group: GroupRef<'_>, claims: &[Claim], how: impl Fn() -> Settled<'static>) {
        for claim in claims {
            self.journal
                .settled(group.stream, group.group, claim.id.as_str(), how());
        }
        self.journal.changed();
    }
}

crate::delegate_backend_admin!(Recorder, memory);

impl Backend for Recorder {
    fn name(&self) -> &'static str {
        self.memory.name()
    }

    fn append<'a>(
        &'a self,
        stream: &'a str,
        messages: Vec<NewMessage>,
        trim: Trim,
    ) -> BoxFuture<'a, Result<Vec<MessageId>>> {
        Box::pin(async move {
            let ids = self.memory.append(stream, messages, trim).await;
            self.journal.changed();
            ids
        })
    }

    fn ensure_group<'a>(
        &'a self,
        stream: &'a str,
        group: &'a str,
        start: &'a StartPosition,
    ) -> BoxFuture<'a, Result<()>> {
        self.memory.ensure_group(stream, group, start)
    }

    fn claim<'a>(
        &'a self,
        group: GroupRef<'a>,
        max: usize,
        visibility: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claimed>>> {
        Box::pin(async move {
            let claimed = self.memory.claim(group, max, visibility).await;
            if claimed.as_ref().is_ok_and(|c| !c.is_empty()) {
                self.journal.changed();
            }
            claimed
        })
    }

    fn ack<'a>(&'a self, group: GroupRef<'a>, claims: &'a [Claim]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let done = self.memory.ack(group, claims).await;
            self.settled(group, claims, || Settled::Acked);
            done
        })
    }

    fn retry<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        delay: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let held = self.memory.retry(group, claim, delay).await;
            if matches!(held, Ok(true)) {
                self.settled(group, std::slice::from_ref(claim), || Settled::Retried);
            }
            held
        })
    }

    fn dead_letter<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        to: &'a str,
        message: NewMessage,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let reason = message
                .headers
                .get(dead_letter_headers::REASON)
                .cloned()
                .unwrap_or_default();
            let held = self.memory.dead_letter(group, claim, to, message).await;
            if matches!(held, Ok(true)) {
                self.journal.settled(
                    group.stream,
                    group.group,
                    claim.id.as_str(),
                    Settled::DeadLettered { reason: &reason },
                );
                self.journal.changed();
            }
            held
        })
    }

    fn release<'a>(
        &'a self,
        group: GroupRef<'a>,
        claims: &'a [Claim],
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let done = self.memory.release(group, claims).await;
            self.journal.changed();
            done
        })
    }

    fn extend<'a>(
        &'a self,
        group: GroupRef<'a>,
        claims: &'a [Claim],
        visibility: Duration,
    ) -> BoxFuture<'a, Result<Vec<bool>>> {
        self.memory.extend(group, claims, visibility)
    }

    fn postpone<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        delay: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let held = self.memory.postpone(group, claim, delay).await;
            self.journal.changed();
            held
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<()>> {
        self.memory.ping()
    }

    fn wakeup(&self, stream: &str) -> Wakeup {
        self.memory.wakeup(stream)
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        self.memory.close()
    }

    fn key_order_supported(&self) -> bool {
        true
    }

    fn claim_ordered<'a>(
        &'a self,
        group: GroupRef<'a>,
        max: usize,
        visibility: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claimed>>> {
        Box::pin(async move {
            let claimed = self.memory.claim_ordered(group, max, visibility).await;
            if claimed.as_ref().is_ok_and(|c| !c.is_empty()) {
                self.journal.changed();
            }
            claimed
        })
    }
}
