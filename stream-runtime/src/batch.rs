//! Batch handlers: one handler call for up to `batch_size` messages.
//!
//! A batch handler takes a [`Batch<T>`] (each message's decoded payload beside its
//! [`Message`]) or, with `#[consumer]`, a plain `Vec<T>` of payloads. The engine claims up
//! to [`batch_size`](crate::SubscribeOptions::batch_size) messages, waits up to
//! [`batch_wait`](crate::SubscribeOptions::batch_wait) for more when the claim came back
//! short, and calls the handler once:
//!
//! - `Ok(())` acknowledges every message of the batch together (one backend call);
//! - `Err(e)` fails every message of the batch: each one is retried, or dead-lettered, by
//!   the usual rules (its own attempt count, `max_retries`, a permanent error);
//! - a [`BatchResult`] fails only the messages it names, and acknowledges the rest.
//!
//! A payload that does not decode is dead-lettered alone, on its first attempt (D8): the
//! handler gets the other messages, and the batch does not fail for it.
//!
//! ```
//! use stream_runtime::{Batch, BatchResult, HandlerError, PublishOptions, Service, SubscribeOptions};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Order {
//!     id: u64,
//!     total_cents: i64,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), stream_runtime::Error> {
//! let service = Service::memory();
//! let (done, mut handled) = tokio::sync::mpsc::unbounded_channel();
//! let consumer = service
//!     .subscribe_batch(
//!         "orders",
//!         "billing",
//!         move |orders: Batch<Order>| {
//!             let done = done.clone();
//!             async move {
//!                 let mut result = BatchResult::new();
//!                 for order in &orders {
//!                     if order.payload.total_cents < 0 {
//!                         // Only this message fails (and is dead-lettered at once).
//!                         result.fail(&order.message.id, HandlerError::permanent("negative total"));
//!                     }
//!                 }
//!                 done.send(orders.len()).ok();
//!                 result
//!             }
//!         },
//!         SubscribeOptions::new().batch_size(100),
//!     )
//!     .await?;
//! let orders = (1..=3).map(|id| serde_json::to_vec(&Order { id, total_cents: 100 }).unwrap());
//! service.publish_batch("orders", orders, PublishOptions::new()).await?;
//! assert_eq!(handled.recv().await, Some(3)); // one call for the three
//! consumer.close().await;
//! service.close().await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;

use crate::backend::BoxFuture;
use crate::codec::Payload;
use crate::error::HandlerError;
use crate::message::{Message, MessageId};

/// Default most messages one batch handler call gets.
pub const DEFAULT_BATCH_SIZE: usize = 100;

pub use stream_rules::MAX_BATCH_SIZE;

/// A type-erased batch handler as the engine runs it: it gets the claimed messages and says
/// which of them failed.
pub type BatchHandler =
    Arc<dyn Fn(Vec<Message>) -> BoxFuture<'static, BatchResult> + Send + Sync + 'static>;

/// The messages of one batch handler call, in stream order: each one's decoded payload
/// beside the message it came from (id, headers, attempt, ...).
#[derive(Debug)]
pub struct Batch<T> {
    items: Vec<BatchItem<T>>,
}

/// One message of a [`Batch`].
#[derive(Debug)]
#[non_exhaustive]
pub struct BatchItem<T> {
    /// The decoded payload.
    pub payload: T,
    /// The message (its `payload` field holds the bytes as published).
    pub message: Message,
}

impl<T> Batch<T> {
    /// A batch of these items (for tests of a handler).
    pub fn new(items: impl IntoIterator<Item = (T, Message)>) -> Self {
        Batch {
            items: items
                .into_iter()
                .map(|(payload, message)| BatchItem { payload, message })
                .collect(),
        }
    }

    /// How many messages the batch holds (at least 1 when the engine calls a handler).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The items, in stream order.
    pub fn iter(&self) -> std::slice::Iter<'_, BatchItem<T>> {
        self.items.iter()
    }

    /// The payloads, in stream order.
    pub fn payloads(&self) -> impl Iterator<Item = &T> {
        self.items.iter().map(|item| &item.payload)
    }

    /// The messages, in stream order.
    pub fn messages(&self) -> impl Iterator<Item = &Message> {
        self.items.iter().map(|item| &item.message)
    }

    /// The payloads alone, in stream order (what a `Vec<T>` handler argument gets).
    pub fn into_payloads(self) -> Vec<T> {
        self.items.into_iter().map(|item| item.payload).collect()
    }

    /// The items, in stream order.
    pub fn into_items(self) -> Vec<BatchItem<T>> {
        self.items
    }
}

impl<T> IntoIterator for Batch<T> {
    type Item = BatchItem<T>;
    type IntoIter = std::vec::IntoIter<BatchItem<T>>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter()
    }
}

impl<'a, T> IntoIterator for &'a Batch<T> {
    type Item = &'a BatchItem<T>;
    type IntoIter = std::slice::Iter<'a, BatchItem<T>>;
    fn into_iter(self) -> Self::IntoIter {
        self.items.iter()
    }
}

/// What a batch handler says of each message: the ones it names failed (and are retried or
/// dead-lettered by the usual rules, each with its own error); the others are acknowledged.
///
/// Name a message by its id ([`fail`](Self::fail)) or, from a handler taking `Vec<T>`, by
/// its index in that `Vec` ([`fail_at`](Self::fail_at)). A name that is not in the batch is
/// ignored. Failing one message twice keeps the first error.
#[derive(Debug, Default)]
#[must_use = "a batch result says which messages failed; return it from the handler"]
pub struct BatchResult {
    by_id: Vec<(MessageId, HandlerError)>,
    by_index: Vec<(usize, HandlerError)>,
    /// Fails every message the result does not name otherwise.
    rest: Option<HandlerError>,
}

impl BatchResult {
    /// Every message succeeded (so far).
    pub fn new() -> Self {
        Self::default()
    }

    /// Every message failed with `error` (what `Err(error)` from a handler means).
    pub fn all_failed(error: HandlerError) -> Self {
        BatchResult {
            rest: Some(error),
            ..Self::default()
        }
    }

    /// Fails the message with this id.
    pub fn fail(&mut self, id: &MessageId, error: HandlerError) -> &mut Self {
        self.by_id.push((id.clone(), error));
        self
    }

    /// Fails the message at `index` of the batch as the handler got it (its `Vec<T>` or
    /// [`Batch::iter`] order).
    pub fn fail_at(&mut self, index: usize, error: HandlerError) -> &mut Self {
        self.by_index.push((index, error));
        self
    }

    /// Whether no message failed.
    pub fn is_ok(&self) -> bool {
        self.by_id.is_empty() && self.by_index.is_empty() && self.rest.is_none()
    }

    /// Names by id the messages failed by index, given the ids of the batch in the
    /// handler's order.
    fn resolve_indexes(&mut self, ids: &[MessageId]) {
        for (index, error) in std::mem::take(&mut self.by_index) {
            match ids.get(index) {
                Some(id) => self.by_id.push((id.clone(), error)),
                None => tracing::warn!(
                    index,
                    len = ids.len(),
                    "a batch handler failed an index outside its batch; ignored"
                ),
            }
        }
    }

    /// The failure of each message, `None` for those that succeeded: a message named by
    /// id or by index fails with the first error naming it, the others with the error
    /// that fails the rest, if any. `ids` are the batch's messages in the handler's order.
    pub(crate) fn outcomes(&self, ids: &[MessageId]) -> Vec<Option<HandlerError>> {
        let mut out: Vec<Option<HandlerError>> = vec![None; ids.len()];
        if self.by_id.is_empty() && self.by_index.is_empty() {
            if let Some(rest) = &self.rest {
                out.fill(Some(rest.clone()));
            }
            return out;
        }
        let mut by_id: HashMap<&MessageId, &HandlerError> =
            HashMap::with_capacity(self.by_id.len());
        for (id, error) in &self.by_id {
            by_id.entry(id).or_insert(error);
        }
        for (slot, id) in out.iter_mut().zip(ids) {
            *slot = by_id.get(id).map(|e| (*e).clone());
        }
        for (index, error) in &self.by_index {
            if let Some(slot) = out.get_mut(*index) {
                slot.get_or_insert_with(|| error.clone());
            }
        }
        if let Some(rest) = &self.rest {
            for slot in &mut out {
                slot.get_or_insert_with(|| rest.clone());
            }
        }
        out
    }
}

/// What a batch handler returns: `Result<(), E>` (the whole batch succeeds or fails) for any
/// `E: Display`, a [`BatchResult`] (some messages fail), or `Result<BatchResult, E>`.
#[diagnostic::on_unimplemented(
    message = "a batch handler must return `Result<(), E>` (with `E: Display`), `BatchResult` or `Result<BatchResult, E>`, not `{Self}`",
    label = "return `Result<(), E>` or `BatchResult` here",
    note = "`Err` fails every message of the batch; a `BatchResult` fails only the messages it names"
)]
pub trait BatchOutput {
    /// Converts to the engine's result, keeping a `HandlerError`'s permanent flag.
    fn into_batch_result(self) -> BatchResult;
}

impl<E: Display + 'static> BatchOutput for Result<(), E> {
    fn into_batch_result(self) -> BatchResult {
        match self {
            Ok(()) => BatchResult::new(),
            Err(error) => BatchResult::all_failed(HandlerError::from_display(error)),
        }
    }
}

impl BatchOutput for BatchResult {
    fn into_batch_result(self) -> BatchResult {
        self
    }
}

impl<E: Display + 'static> BatchOutput for Result<BatchResult, E> {
    fn into_batch_result(self) -> BatchResult {
        match self {
            Ok(result) => result,
            Err(error) => BatchResult::all_failed(HandlerError::from_display(error)),
        }
    }
}

/// Wraps a typed batch handler as a [`BatchHandler`]: decodes each payload as `T`, fails a
/// payload that does not decode alone (permanently, D8), and calls `handler` with the rest
/// (not at all when none is left). `type_name` names `T` in decode errors.
pub fn batch_handler_fn<T, F, Fut>(type_name: &'static str, handler: F) -> BatchHandler
where
    T: Payload + Send + 'static,
    F: Fn(Batch<T>) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: BatchOutput,
{
    Arc::new(move |messages: Vec<Message>| {
        let mut undecodable = Vec::new();
        let mut items = Vec::with_capacity(messages.len());
        for message in messages {
            match crate::__private::decode::<T>(&message, type_name) {
                Ok(payload) => items.push(BatchItem { payload, message }),
                Err(error) => undecodable.push((message.id.clone(), error)),
            }
        }
        let ids: Vec<MessageId> = items.iter().map(|item| item.message.id.clone()).collect();
        let called = (!items.is_empty()).then(|| handler(Batch { items }));
        Box::pin(async move {
            let mut result = match called {
                Some(future) => future.await.into_batch_result(),
                None => BatchResult::new(),
            };
            result.resolve_indexes(&ids);
            // First: a decode failure is what happened to these messages, whatever the
            // handler returned for the others.
            let mut by_id = undecodable;
            by_id.append(&mut result.by_id);
            result.by_id = by_id;
            result
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u64) -> Vec<MessageId> {
        (1..=n).map(MessageId::from_u64).collect()
    }

    #[test]
    fn outcomes_of_a_result() {
        let ids = ids(4);
        let all_ok = BatchResult::new().outcomes(&ids);
        assert!(all_ok.iter().all(Option::is_none));

        let all = BatchResult::all_failed(HandlerError::retry("down")).outcomes(&ids);
        assert!(all
            .iter()
            .all(|o| o.as_ref().is_some_and(|e| e.message() == "down")));

        let mut some = BatchResult::new();
        some.fail(&ids[1], HandlerError::permanent("bad"))
            .fail_at(3, HandlerError::retry("later"))
            .fail_at(9, HandlerError::retry("ignored"))
            .fail(&ids[1], HandlerError::retry("second"));
        let outcomes = some.outcomes(&ids);
        let texts: Vec<Option<(&str, bool)>> = outcomes
            .iter()
            .map(|o| o.as_ref().map(|e| (e.message(), e.is_permanent())))
            .collect();
        assert_eq!(
            texts,
            [None, Some(("bad", true)), None, Some(("later", false))]
        );
    }

    #[test]
    fn outputs_convert() {
        assert!(Ok::<(), String>(()).into_batch_result().is_ok());
        let ids = ids(1);
        let e = Err::<(), _>(HandlerError::permanent("p"))
            .into_batch_result()
            .outcomes(&ids);
        assert!(e[0].as_ref().is_some_and(HandlerError::is_permanent));
        let e = Err::<BatchResult, _>("text")
            .into_batch_result()
            .outcomes(&ids);
        assert!(e[0]
            .as_ref()
            .is_some_and(|e| !e.is_permanent() && e.message() == "text"));
    }
}
