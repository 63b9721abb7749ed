//! What the cases of every area share: the imports they use, and small helpers for
//! publishing, subscribing and calling a [`Backend`] directly.

pub(crate) use std::collections::{HashMap, HashSet};
pub(crate) use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
pub(crate) use std::sync::{Arc, Mutex, PoisonError};
pub(crate) use std::time::{Duration, Instant, SystemTime};

pub(crate) use tokio::sync::Notify;

pub(crate) use super::intercept::Call;
pub(crate) use super::{unique_name, wait_for, wait_for_async, Harness, Recorder};
pub(crate) use crate::backend::{Claim, GroupRef, SharedBackend};
pub(crate) use crate::engine::dead_letter_headers as dlh;
pub(crate) use crate::error::{Error, HandlerError};
pub(crate) use crate::message::{Message, MessageId, NewMessage};
pub(crate) use crate::options::{
    PublishOptions, RetryDelay, StartPosition, SubscribeOptions, Trim,
};

pub(crate) fn text(m: &Message) -> String {
    String::from_utf8_lossy(&m.payload).into_owned()
}

pub(crate) fn group() -> String {
    unique_name("g")
}

pub(crate) async fn publish(h: &Harness, stream: &str, payload: &str) -> MessageId {
    h.service
        .publish(stream, payload, PublishOptions::new())
        .await
        .expect("publish")
}

pub(crate) async fn publish_n(h: &Harness, stream: &str, prefix: &str, n: usize) -> Vec<MessageId> {
    h.service
        .publish_batch(
            stream,
            (0..n).map(|i| format!("{prefix}{i}")),
            PublishOptions::new(),
        )
        .await
        .expect("publish_batch")
}

/// Subscribes to the dead-letter stream `short` from the earliest message.
pub(crate) async fn dead_letters(h: &Harness, short: &str) -> Recorder {
    let recorder = Recorder::new();
    h.service
        .subscribe(
            short,
            &group(),
            recorder.handler(),
            h.options().start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe to dead-letter stream");
    recorder
}

/// Publishes a sentinel and waits until `recorder` sees it: everything published earlier
/// that this consumer will see (in order, one worker) has been seen.
pub(crate) async fn flush(h: &Harness, stream: &str, recorder: &Recorder) {
    let sentinel = unique_name("sentinel-");
    publish(h, stream, &sentinel).await;
    recorder.wait_payload(&sentinel).await;
}

pub(crate) async fn earliest_payloads(h: &Harness, stream: &str) -> Vec<String> {
    let rec = Recorder::new();
    h.service
        .subscribe(
            stream,
            &group(),
            rec.handler(),
            h.options().start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe");
    flush(h, stream, &rec).await;
    let mut payloads = rec.payloads();
    payloads.pop();
    payloads
}

/// The group `group` of `stream`, as the consumer `consumer` sees it.
pub(crate) fn at<'a>(stream: &'a str, group: &'a str, consumer: &'a str) -> GroupRef<'a> {
    GroupRef {
        stream,
        group,
        consumer,
    }
}

/// Appends `payloads` straight to the backend and returns their ids.
pub(crate) async fn append(
    b: &SharedBackend,
    stream: &str,
    payloads: &[&str],
    trim: Trim,
) -> Vec<String> {
    b.append(
        stream,
        payloads.iter().map(|p| NewMessage::new(*p)).collect(),
        trim,
    )
    .await
    .expect("append")
    .into_iter()
    .map(String::from)
    .collect()
}

/// Everything claimable now for the group, as payloads (claims with a long visibility).
pub(crate) async fn drain_payloads(b: &SharedBackend, stream: &str, group: &str) -> Vec<String> {
    let claimed = b
        .claim(at(stream, group, "drainer"), 100, Duration::from_secs(60))
        .await
        .expect("claim");
    claimed.iter().map(|c| text(&c.message)).collect()
}

/// The visibility timeout of claims meant to expire.
pub(crate) const VIS: Duration = Duration::from_millis(300);

/// A full stream name no other case uses, for cases calling the backend directly.
pub(crate) fn backend_stream() -> String {
    format!("{}.ns.s", unique_name("b"))
}
