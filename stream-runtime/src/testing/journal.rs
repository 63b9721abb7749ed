//! What the harness saw: every delivery to a handler and what became of it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use crate::engine::catch_unwind::{panic_message, CatchUnwind};
use crate::engine::Handler;
use crate::error::HandlerError;
use crate::message::Message;

/// One call of a handler.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Delivery {
    /// The consumer's name (the function's name unless `name = "..."`).
    pub consumer: &'static str,
    /// Its consumer group.
    pub group: &'static str,
    /// The message as the handler got it (`message.stream` is the full stream name).
    pub message: Message,
    /// The delivery count: 1 on the first delivery (the same as `message.attempt`).
    pub attempt: u32,
    /// What became of it.
    pub outcome: Outcome,
}

impl Delivery {
    /// The failure, unless the handler succeeded or is still running.
    pub fn failure(&self) -> Option<&Failure> {
        match &self.outcome {
            Outcome::Failed(f) | Outcome::Retried(f) | Outcome::DeadLettered(f) => Some(f),
            Outcome::Running | Outcome::Succeeded => None,
        }
    }

    /// The message's payload decoded from JSON (for assertions on what a handler got).
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        self.message.json()
    }
}

/// What became of a [`Delivery`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler has not returned yet.
    Running,
    /// The handler returned `Ok`: the message is acknowledged.
    Succeeded,
    /// The handler failed and the failure is not settled (yet): its retry or dead-letter
    /// move did not happen, e.g. because the claim had expired and was taken over.
    Failed(Failure),
    /// The handler failed; the message comes back after the retry delay.
    Retried(Failure),
    /// The message moved to the dead-letter stream: a permanent error, a payload that does
    /// not decode, the last attempt failing, or a handler still running past its visibility
    /// timeout on its last attempt.
    DeadLettered(Failure),
}

/// Why a delivery failed (built in assertions, hence not `non_exhaustive`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The error's text (for a panic, its message; for a timeout, the engine's reason).
    pub error: String,
    /// The error was marked permanent ([`HandlerError::permanent`]), as a payload that does
    /// not decode is.
    pub permanent: bool,
    /// The handler panicked.
    pub panicked: bool,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.panicked {
            write!(f, "panicked: {}", self.error)
        } else if self.permanent {
            write!(f, "permanent error: {}", self.error)
        } else {
            write!(f, "error: {}", self.error)
        }
    }
}

/// How many deliveries a consumer had, by outcome. Compare it whole in assertions:
/// `assert_eq!(app.counts("bill"), Counts { deliveries: 2, succeeded: 1, failed: 1, retried: 1, ..Counts::default() })`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Handler calls.
    pub deliveries: usize,
    /// Calls that returned `Ok`.
    pub succeeded: usize,
    /// Calls that failed (an error or a panic), whatever became of the message.
    pub failed: usize,
    /// Of the failed: those that panicked.
    pub panicked: usize,
    /// Of the failed: those retried later.
    pub retried: usize,
    /// Deliveries whose message was dead-lettered.
    pub dead_lettered: usize,
}

/// The record, shared by the handler wrappers and the recording backend.
#[derive(Debug)]
pub(crate) struct Journal {
    inner: Mutex<Inner>,
    changes: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    deliveries: Vec<Delivery>,
    /// (full stream, group, message id) -> the latest delivery of that message not settled.
    open: HashMap<(String, String, String), usize>,
}

/// How a settling call of the engine ended a delivery.
pub(crate) enum Settled<'a> {
    Acked,
    Retried,
    DeadLettered { reason: &'a str },
}

impl Journal {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Journal {
            inner: Mutex::new(Inner::default()),
            changes: watch::channel(0).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Tells `settle` to look again.
    pub(crate) fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub(crate) fn deliveries(&self) -> Vec<Delivery> {
        self.lock().deliveries.clone()
    }

    /// The last failure seen for a message in a group, for the settle report.
    pub(crate) fn last_failure(&self, stream: &str, group: &str, id: &str) -> Option<Failure> {
        self.lock()
            .deliveries
            .iter()
            .rev()
            .find(|d| {
                d.group == group && &*d.message.stream == stream && d.message.id.as_str() == id
            })
            .and_then(|d| d.failure().cloned())
    }

    fn begin(&self, consumer: &'static str, group: &'static str, message: &Message) -> usize {
        let mut inner = self.lock();
        let index = inner.deliveries.len();
        inner.deliveries.push(Delivery {
            consumer,
            group,
            message: message.clone(),
            attempt: message.attempt,
            outcome: Outcome::Running,
        });
        let key = (
            message.stream.to_string(),
            group.to_owned(),
            message.id.as_str().to_owned(),
        );
        inner.open.insert(key, index);
        drop(inner);
        self.changed();
        index
    }

    fn finish(&self, index: usize, outcome: Outcome) {
        if let Some(d) = self.lock().deliveries.get_mut(index) {
            // A handler that outlived its claim may finish after the message was settled
            // without it (dead-lettered on reclaim): that outcome stands.
            if d.outcome == Outcome::Running {
                d.outcome = outcome;
            }
        }
        self.changed();
    }

    /// Records what the engine did with a claim of `(stream, group, id)`.
    pub(crate) fn settled(&self, stream: &str, group: &str, id: &str, how: Settled<'_>) {
        let mut inner = self.lock();
        let key = (stream.to_owned(), group.to_owned(), id.to_owned());
        let Some(index) = inner.open.remove(&key) else {
            return;
        };
        let Some(d) = inner.deliveries.get_mut(index) else {
            return;
        };
        d.outcome = match (std::mem::replace(&mut d.outcome, Outcome::Running), how) {
            (Outcome::Failed(f), Settled::Retried) => Outcome::Retried(f),
            (Outcome::Failed(f), Settled::DeadLettered { .. }) => Outcome::DeadLettered(f),
            // The engine gave up on a handler still running past its visibility timeout.
            (Outcome::Running, Settled::DeadLettered { reason }) => {
                Outcome::DeadLettered(Failure {
                    error: reason.to_owned(),
                    permanent: false,
                    panicked: false,
                })
            }
            (outcome, _) => outcome,
        };
    }
}

/// Wraps a consumer's handler so that each call is recorded, with its outcome. A panic is
/// recorded, then resumed, so the engine handles it exactly as without the harness (S11).
pub(crate) fn record(
    journal: Arc<Journal>,
    consumer: &'static str,
    group: &'static str,
    handler: Handler,
) -> Handler {
    use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

    Arc::new(move |message: Message| {
        let index = journal.begin(consumer, group, &message);
        let started = catch_unwind(AssertUnwindSafe(|| handler(message)));
        let journal = journal.clone();
        Box::pin(async move {
            let panicked = |error: String| {
                journal.finish(
                    index,
                    Outcome::Failed(Failure {
                        error,
                        permanent: false,
                        panicked: true,
                    }),
                );
            };
            let future = match started {
                Ok(future) => future,
                Err(panic) => {
                    panicked(panic_message(panic.as_ref()));
                    resume_unwind(panic)
                }
            };
            match CatchUnwind(future).await {
                Ok(result) => {
                    journal.finish(index, outcome_of(&result));
                    result
                }
                Err(message) => {
                    panicked(message.clone());
                    // The engine's own catch turns it into the same error text.
                    resume_unwind(Box::new(message))
                }
            }
        })
    })
}

fn outcome_of(result: &Result<(), HandlerError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Succeeded,
        Err(e) => Outcome::Failed(Failure {
            error: e.message().to_owned(),
            permanent: e.is_permanent(),
            panicked: false,
        }),
    }
}

/// Wraps a batch handler so that each message of each call is recorded as a delivery, with
/// its own outcome. A panic fails every message of the call, as the engine then does.
pub(crate) fn record_batch(
    journal: Arc<Journal>,
    consumer: &'static str,
    group: &'static str,
    handler: crate::batch::BatchHandler,
) -> crate::batch::BatchHandler {
    use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

    Arc::new(move |messages: Vec<Message>| {
        let ids: Vec<crate::message::MessageId> = messages.iter().map(|m| m.id.clone()).collect();
        let indexes: Vec<usize> = messages
            .iter()
            .map(|m| journal.begin(consumer, group, m))
            .collect();
        let started = catch_unwind(AssertUnwindSafe(|| handler(messages)));
        let journal = journal.clone();
        Box::pin(async move {
            let panicked = |error: String| {
                for index in &indexes {
                    journal.finish(
                        *index,
                        Outcome::Failed(Failure {
                            error: error.clone(),
                            permanent: false,
                            panicked: true,
                        }),
                    );
                }
            };
            let future = match started {
                Ok(future) => future,
                Err(panic) => {
                    panicked(panic_message(panic.as_ref()));
                    resume_unwind(panic)
                }
            };
            match CatchUnwind(future).await {
                Ok(result) => {
                    let outcomes = result.outcomes(&ids);
                    for (index, outcome) in indexes.iter().zip(outcomes) {
                        let result = match outcome {
                            None => Ok(()),
                            Some(error) => Err(error),
                        };
                        journal.finish(*index, outcome_of(&result));
                    }
                    result
                }
                Err(message) => {
                    panicked(message.clone());
                    resume_unwind(Box::new(message))
                }
            }
        })
    })
}
