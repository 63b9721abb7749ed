//! The operator's view: what streams exist, how far behind each group is, what is pending,
//! what is in the dead-letter streams, and how to put dead letters back.
//!
//! [`Admin`] is reached from a [`Service`] ([`Service::admin`]) and works the same on every
//! backend, through the [`BackendAdmin`](crate::backend::BackendAdmin) calls each of them
//! implements. On SQLite, Postgres and Redis it works from another process while consumers
//! run; on memory, from the process that holds the backend. Nothing here is on the delivery
//! path: claims and acks do no extra work for it.
//!
//! ```
//! use stream_runtime::admin::Selection;
//! use stream_runtime::{HandlerError, PublishOptions, Service, StartPosition, SubscribeOptions};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), stream_runtime::Error> {
//! let service = Service::memory();
//! let admin = service.admin();
//! // A consumer that rejects everything not yet redriven.
//! let consumer = service
//!     .subscribe("orders", "billing", |msg| async move {
//!         match msg.header("x-redriven-from") {
//!             Some(_) => Ok(()),
//!             None => Err(HandlerError::permanent("the bug")),
//!         }
//!     }, SubscribeOptions::new().start(StartPosition::Earliest))
//!     .await?;
//! service.publish("orders", "order #1", PublishOptions::new()).await?;
//! while admin.dead_letters("orders", &Selection::all()).await?.is_empty() {
//!     tokio::task::yield_now().await;
//! }
//! // The bug is fixed: put the dead letter back.
//! let report = admin.redrive("orders", &Selection::all()).await?;
//! assert_eq!(report.moved.len(), 1);
//! while admin.groups("orders").await?[0].lag > 0 || admin.groups("orders").await?[0].pending > 0 {
//!     tokio::task::yield_now().await;
//! }
//! assert_eq!(admin.groups("orders").await?[0].dead, 0);
//! consumer.close().await;
//! service.close().await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};

use crate::engine::dead_letter_headers;
use crate::error::{Error, Result};
use crate::message::{Message, MessageId, NewMessage};
use crate::naming;
use crate::service::Service;

/// The header a redriven message carries: `<dead-letter stream>/<dead letter's id>`.
pub const REDRIVEN_FROM: &str = "x-redriven-from";

/// The prefix of the headers a dead letter gets (and a redrive removes).
pub const DEAD_LETTER_HEADER_PREFIX: &str = "x-dead-letter-";

/// How many messages one backend read fetches while scanning a dead-letter stream.
const PAGE: usize = 500;

/// One stream, as [`BackendAdmin::list_streams`](crate::backend::BackendAdmin::list_streams)
/// sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    /// The full name.
    pub stream: String,
    /// Messages it holds now.
    pub length: u64,
    /// Its oldest message's id, if it holds any.
    pub first_id: Option<MessageId>,
    /// Its newest message's id, if it holds any.
    pub last_id: Option<MessageId>,
    /// When its newest message was appended, if it holds any.
    pub last_append: Option<SystemTime>,
}

/// One group of a stream, as the backend stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStats {
    /// The group's name.
    pub group: String,
    /// The last id handed out to the group: new claims take the messages after it (`"0"`,
    /// or `"0-0"` on Redis, before the first).
    pub cursor: MessageId,
    /// Messages after the cursor: not yet handed to the group.
    pub lag: u64,
    /// Messages handed out and not yet settled (claimed, or waiting for a retry).
    pub pending: u64,
    /// When the pending entry claimed the longest ago was last claimed, if any is pending
    /// (an entry waiting for a retry counts from the claim that failed).
    pub oldest_claimed_at: Option<SystemTime>,
}

/// One group of a stream, with its dead letters: what [`Admin::groups`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupInfo {
    /// The group's name.
    pub group: String,
    /// The last id handed out to the group.
    pub cursor: MessageId,
    /// Messages not yet handed to the group.
    pub lag: u64,
    /// Messages handed out and not yet settled.
    pub pending: u64,
    /// The age of the oldest pending claim: how long ago the pending entry claimed the
    /// longest ago was last claimed (an entry waiting for a retry counts from the claim that
    /// failed), if any is pending. A handler stuck on a message shows here as a growing age.
    pub oldest_pending_age: Option<Duration>,
    /// The group's messages in the stream's dead-letter stream.
    pub dead: u64,
}

/// One pending entry of a group: a message handed out and not yet settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingEntry {
    /// The message's id.
    pub id: MessageId,
    /// Deliveries so far (the `attempt` of the latest).
    pub attempt: u32,
    /// While a worker holds the claim: when it expires (then another worker may take it).
    pub deadline: Option<SystemTime>,
    /// While nobody holds it (after a handler error, or a release at shutdown): when it may
    /// be claimed again.
    pub retry_at: Option<SystemTime>,
    /// The consumer holding it, where the backend records one (Postgres, Redis).
    pub consumer: Option<String>,
}

impl PendingEntry {
    /// The entry of a backend that keeps one time per entry: the claim's deadline while a
    /// worker holds it (`held`), else the time it may be claimed again.
    pub fn at(
        id: MessageId,
        attempt: u32,
        held: bool,
        time: SystemTime,
        consumer: Option<String>,
    ) -> Self {
        PendingEntry {
            id,
            attempt,
            deadline: held.then_some(time),
            retry_at: (!held).then_some(time),
            consumer: consumer.filter(|_| held),
        }
    }
}

/// Where [`BackendAdmin::read`](crate::backend::BackendAdmin::read) starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// The oldest messages.
    Start,
    /// The messages after this id.
    After(MessageId),
    /// The newest messages (still returned oldest first).
    Last,
}

/// Which dead letters a redrive or purge acts on: all, or chosen ids; optionally only
/// those of one group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    ids: Option<Vec<MessageId>>,
    group: Option<String>,
    dead_letter: Option<String>,
}

impl Selection {
    /// Every dead letter.
    pub fn all() -> Self {
        Self::default()
    }

    /// These dead letters (ids in the dead-letter stream).
    pub fn ids(ids: impl IntoIterator<Item = MessageId>) -> Self {
        Selection {
            ids: Some(ids.into_iter().collect()),
            ..Self::default()
        }
    }

    /// Only the dead letters of this group (`x-dead-letter-group`).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Reads this dead-letter stream (short or full name) instead of `<stream>.dead`: for
    /// consumers with a `dead_letter` setting.
    pub fn dead_letter(mut self, stream: impl Into<String>) -> Self {
        self.dead_letter = Some(stream.into());
        self
    }

    fn matches(&self, message: &Message) -> bool {
        self.ids
            .as_ref()
            .is_none_or(|ids| ids.contains(&message.id))
            && self
                .group
                .as_deref()
                .is_none_or(|group| message.header(dead_letter_headers::GROUP) == Some(group))
    }
}

/// One dead letter put back.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Redriven {
    /// Its id in the dead-letter stream (now deleted there).
    pub dead_letter_id: MessageId,
    /// The stream it went back to (full name).
    pub stream: String,
    /// Its new id there.
    pub id: MessageId,
}

/// What [`Admin::redrive`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedriveReport {
    /// The dead letters moved back, in id order.
    pub moved: Vec<Redriven>,
    /// Chosen ids the dead-letter stream does not hold (any more).
    pub not_found: Vec<MessageId>,
    /// Messages left where they are, with the reason (not a dead letter).
    pub skipped: Vec<(MessageId, String)>,
}

/// What [`Admin::purge`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PurgeReport {
    /// The dead letters deleted, in id order.
    pub deleted: Vec<MessageId>,
    /// Chosen ids the dead-letter stream does not hold, and listed ones gone before they
    /// could be deleted.
    pub not_found: Vec<MessageId>,
}

/// The stream a dead letter came from and the message to put back there: payload and
/// headers as published (the `x-dead-letter-*` headers removed), plus
/// [`REDRIVEN_FROM`]. An error (the reason) when it is not a dead letter.
pub fn redrive_message(dead_letter: &Message) -> std::result::Result<(String, NewMessage), String> {
    let Some(origin) = dead_letter.header(dead_letter_headers::STREAM) else {
        return Err(format!(
            "it has no {} header, so it is not a dead letter",
            dead_letter_headers::STREAM
        ));
    };
    naming::validate("stream", origin).map_err(|e| {
        format!(
            "its {} header is not a stream: {e}",
            dead_letter_headers::STREAM
        )
    })?;
    if origin == &*dead_letter.stream {
        return Err(format!(
            "its {} header names the stream it is in",
            dead_letter_headers::STREAM
        ));
    }
    let mut message = NewMessage::from_bytes(dead_letter.payload.clone());
    message.headers = dead_letter
        .headers
        .iter()
        .filter(|(k, _)| !k.starts_with(DEAD_LETTER_HEADER_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    message.headers.insert(
        REDRIVEN_FROM.to_owned(),
        format!("{}/{}", dead_letter.stream, dead_letter.id),
    );
    Ok((origin.to_owned(), message))
}

/// The operator's calls on one service's streams. Stream names are short (`orders`, made
/// `<app>.<namespace>.orders`) or full (starting with the service's `<app>.<namespace>.`).
#[derive(Clone, Debug)]
pub struct Admin {
    service: Service,
}

impl Admin {
    pub(crate) fn new(service: Service) -> Self {
        Admin { service }
    }

    /// `<app>.<namespace>.`: the prefix of this service's full stream names.
    pub fn prefix(&self) -> String {
        let config = self.service.config();
        format!("{}.{}.", config.app, config.namespace)
    }

    /// The full name of a short or full stream name.
    pub fn stream_name(&self, name: &str) -> Result<String> {
        if name.starts_with(&self.prefix()) {
            naming::validate("stream", name)?;
            Ok(name.to_owned())
        } else {
            self.service.stream_name(name)
        }
    }

    /// The dead-letter stream `selection` reads for `stream`: its `dead_letter` override,
    /// else `<full name>.dead`.
    pub fn dead_letter_stream(&self, stream: &str, selection: &Selection) -> Result<String> {
        match selection.dead_letter.as_deref() {
            Some(name) if !name.is_empty() => self.stream_name(name),
            _ => Ok(naming::dead_letter_stream(&self.stream_name(stream)?)),
        }
    }

    /// This service's streams (`<app>.<namespace>.*`), dead-letter streams included, by name.
    pub async fn streams(&self) -> Result<Vec<StreamInfo>> {
        self.service.backend().list_streams(&self.prefix()).await
    }

    /// The groups of a stream, by name, with their dead letters in `<stream>.dead`.
    pub async fn groups(&self, stream: &str) -> Result<Vec<GroupInfo>> {
        let full = self.stream_name(stream)?;
        let stats = self.service.backend().list_groups(&full).await?;
        let mut dead: BTreeMap<String, u64> = BTreeMap::new();
        if !stats.is_empty() {
            self.scan(&naming::dead_letter_stream(&full), |m| {
                if m.header(dead_letter_headers::STREAM) == Some(full.as_str()) {
                    if let Some(group) = m.header(dead_letter_headers::GROUP) {
                        *dead.entry(group.to_owned()).or_default() += 1;
                    }
                }
                true
            })
            .await?;
        }
        let now = SystemTime::now();
        Ok(stats
            .into_iter()
            .map(|g| GroupInfo {
                dead: dead.get(&g.group).copied().unwrap_or(0),
                oldest_pending_age: g
                    .oldest_claimed_at
                    .map(|at| now.duration_since(at).unwrap_or(Duration::ZERO)),
                group: g.group,
                cursor: g.cursor,
                lag: g.lag,
                pending: g.pending,
            })
            .collect())
    }

    /// Up to `max` messages of a stream, oldest first (`attempt` is 0: not deliveries).
    pub async fn read(&self, stream: &str, from: &ReadFrom, max: usize) -> Result<Vec<Message>> {
        let full = self.stream_name(stream)?;
        self.service.backend().read(&full, from, max).await
    }

    /// Up to `max` pending entries of a group, in id order.
    pub async fn pending(
        &self,
        stream: &str,
        group: &str,
        max: usize,
    ) -> Result<Vec<PendingEntry>> {
        let full = self.stream_name(stream)?;
        naming::validate("group", group)?;
        self.service.backend().list_pending(&full, group, max).await
    }

    /// The dead letters of a stream that `selection` chooses, in id order.
    pub async fn dead_letters(&self, stream: &str, selection: &Selection) -> Result<Vec<Message>> {
        let dead = self.dead_letter_stream(stream, selection)?;
        let mut found = Vec::new();
        let mut wanted = selection.ids.as_ref().map(Vec::len);
        self.scan(&dead, |m| {
            if selection.matches(m) {
                found.push(m.clone());
                if let Some(left) = &mut wanted {
                    *left = left.saturating_sub(1);
                    return *left > 0;
                }
            }
            true
        })
        .await?;
        Ok(found)
    }

    /// Moves one dead letter (as read from its dead-letter stream) back to the stream it
    /// came from as a new message (see [`redrive_message`]), atomically: the new id, or
    /// `None` when the dead letter is already gone (moved or purged by someone else), so a
    /// message is never lost and never doubled.
    pub async fn redrive_one(&self, dead_letter: &Message) -> Result<Option<Redriven>> {
        let (origin, message) =
            redrive_message(dead_letter).map_err(|reason| Error::InvalidName {
                what: "dead letter",
                value: dead_letter.id.to_string(),
                reason,
            })?;
        let id = self
            .service
            .backend()
            .move_message(&dead_letter.stream, &dead_letter.id, &origin, message)
            .await?;
        Ok(id.map(|id| Redriven {
            dead_letter_id: dead_letter.id.clone(),
            stream: origin,
            id,
        }))
    }

    /// Moves the chosen dead letters of `stream` back where they came from, one atomic move
    /// each ([`Admin::redrive_one`]).
    pub async fn redrive(&self, stream: &str, selection: &Selection) -> Result<RedriveReport> {
        let letters = self.dead_letters(stream, selection).await?;
        let mut report = RedriveReport {
            not_found: not_found(selection, &letters),
            ..RedriveReport::default()
        };
        for letter in &letters {
            match self.redrive_one(letter).await {
                Ok(Some(moved)) => report.moved.push(moved),
                Ok(None) => report.not_found.push(letter.id.clone()),
                Err(Error::InvalidName { reason, .. }) => {
                    report.skipped.push((letter.id.clone(), reason));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }

    /// Deletes these messages of `stream`'s dead-letter stream (the `selection`'s, see
    /// [`Admin::dead_letter_stream`]); returns the ids of those it held.
    pub async fn delete_dead_letters(
        &self,
        stream: &str,
        selection: &Selection,
        ids: &[MessageId],
    ) -> Result<Vec<MessageId>> {
        let dead = self.dead_letter_stream(stream, selection)?;
        self.service.backend().delete_messages(&dead, ids).await
    }

    /// Deletes the chosen dead letters of `stream`.
    pub async fn purge(&self, stream: &str, selection: &Selection) -> Result<PurgeReport> {
        let letters = self.dead_letters(stream, selection).await?;
        let mut report = PurgeReport {
            not_found: not_found(selection, &letters),
            ..PurgeReport::default()
        };
        let ids: Vec<MessageId> = letters.into_iter().map(|m| m.id).collect();
        for chunk in ids.chunks(PAGE) {
            let deleted = self.delete_dead_letters(stream, selection, chunk).await?;
            // Gone since they were listed: purged or redriven by someone else.
            report
                .not_found
                .extend(chunk.iter().filter(|id| !deleted.contains(id)).cloned());
            report.deleted.extend(deleted);
        }
        Ok(report)
    }

    /// Calls `f` on every message of `stream` in id order until it returns false.
    async fn scan(&self, stream: &str, mut f: impl FnMut(&Message) -> bool) -> Result<()> {
        let backend = self.service.backend();
        let mut from = ReadFrom::Start;
        loop {
            let page = backend.read(stream, &from, PAGE).await?;
            for m in &page {
                if !f(m) {
                    return Ok(());
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE => from = ReadFrom::After(last.id.clone()),
                _ => return Ok(()),
            }
        }
    }
}

/// The chosen ids missing from `found`.
fn not_found(selection: &Selection, found: &[Message]) -> Vec<MessageId> {
    let found: HashSet<&MessageId> = found.iter().map(|m| &m.id).collect();
    selection
        .ids
        .iter()
        .flatten()
        .filter(|id| !found.contains(id))
        .cloned()
        .collect()
}
