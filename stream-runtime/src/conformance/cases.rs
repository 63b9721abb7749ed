//! The conformance cases, one function per rule worth proving. Each takes a fresh
//! [`Harness`]; the rule it checks is named in its doc comment.

#![allow(missing_docs)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use super::{unique_name, wait_for, Harness, Recorder};
use crate::engine::dead_letter_headers as dlh;
use crate::error::{Error, HandlerError};
use crate::message::{Message, MessageId, NewMessage};
use crate::options::{PublishOptions, RetryDelay, StartPosition};

fn text(m: &Message) -> String {
    String::from_utf8_lossy(&m.payload).into_owned()
}

fn group() -> String {
    unique_name("g")
}

async fn publish(h: &Harness, stream: &str, payload: &str) -> MessageId {
    h.service
        .publish(stream, payload, PublishOptions::new())
        .await
        .expect("publish")
}

async fn publish_n(h: &Harness, stream: &str, prefix: &str, n: usize) -> Vec<MessageId> {
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
async fn dead_letters(h: &Harness, short: &str) -> Recorder {
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
async fn flush(h: &Harness, stream: &str, recorder: &Recorder) {
    let sentinel = unique_name("sentinel-");
    publish(h, stream, &sentinel).await;
    recorder.wait_payload(&sentinel).await;
}

/// S2, S4: a message round-trips with id, full stream name, payload, headers, created_at
/// and attempt 1.
pub async fn round_trip(h: &Harness) {
    let rec = Recorder::new();
    h.service
        .subscribe("orders", &group(), rec.handler(), h.options())
        .await
        .expect("subscribe");
    let before = SystemTime::now() - Duration::from_secs(5);
    let id = h
        .service
        .publish(
            "orders",
            b"\x00binary\xffpayload".to_vec(),
            PublishOptions::new().header("k", "v"),
        )
        .await
        .expect("publish");
    rec.wait_len(1, "the message").await;
    let m = &rec.messages()[0];
    assert_eq!(m.id, id);
    assert_eq!(m.stream, h.service.stream_name("orders").expect("name"));
    assert_eq!(m.payload[..], b"\x00binary\xffpayload"[..]);
    assert_eq!(m.header("k"), Some("v"));
    assert_eq!(m.attempt, 1);
    assert!(m.created_at >= before && m.created_at <= SystemTime::now() + Duration::from_secs(5));
}

/// S3: batch publish returns distinct ids in order; delivery follows them.
pub async fn batch_publish_keeps_order(h: &Harness) {
    let g = group();
    let ids = publish_n(h, "batch", "m", 20).await;
    assert_eq!(ids.len(), 20);
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        20,
        "ids are distinct"
    );
    let rec = Recorder::new();
    h.service
        .subscribe(
            "batch",
            &g,
            rec.handler(),
            h.options().start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe");
    rec.wait_len(20, "20 messages").await;
    let seen: Vec<MessageId> = rec.messages().into_iter().map(|m| m.id).collect();
    assert_eq!(seen, ids);
}

/// S4, S13: 4 concurrent publishers and 4 workers of one group: every message is handled
/// exactly once, by more than one worker.
pub async fn work_shared_within_group(h: &Harness) {
    let g = group();
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let by_worker: Arc<Mutex<HashMap<usize, usize>>> = Arc::default();
    for worker in 0..4 {
        let seen = seen.clone();
        let by_worker = by_worker.clone();
        h.service
            .subscribe(
                "shared",
                &g,
                move |m: Message| {
                    let seen = seen.clone();
                    let by_worker = by_worker.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        *seen
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .entry(text(&m))
                            .or_default() += 1;
                        *by_worker
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .entry(worker)
                            .or_default() += 1;
                        Ok(())
                    }
                },
                h.options(),
            )
            .await
            .expect("subscribe");
    }
    let mut publishers = Vec::new();
    for p in 0..4 {
        let service = h.service.clone();
        publishers.push(tokio::spawn(async move {
            for i in 0..50 {
                service
                    .publish("shared", format!("p{p}-{i}"), PublishOptions::new())
                    .await
                    .expect("publish");
            }
        }));
    }
    for p in publishers {
        p.await.expect("publisher task");
    }
    wait_for("200 distinct messages", || {
        seen.lock().unwrap_or_else(PoisonError::into_inner).len() >= 200
    })
    .await;
    // Give any double delivery a chance to show up before counting.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen = seen.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert_eq!(seen.len(), 200);
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
    assert!(doubled.is_empty(), "delivered more than once: {doubled:?}");
    let workers = by_worker
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .len();
    assert!(workers >= 2, "only {workers} worker(s) got messages");
}

/// S4: different groups each get every message.
pub async fn groups_each_get_everything(h: &Harness) {
    let (a, b) = (Recorder::new(), Recorder::new());
    for rec in [&a, &b] {
        h.service
            .subscribe("fanout", &group(), rec.handler(), h.options())
            .await
            .expect("subscribe");
    }
    publish_n(h, "fanout", "m", 10).await;
    a.wait_len(10, "group a").await;
    b.wait_len(10, "group b").await;
    assert_eq!(a.payloads(), b.payloads());
}

/// S5: `Latest` (the default) sees only messages published after the group is created.
pub async fn start_latest_skips_backlog(h: &Harness) {
    publish_n(h, "latest", "old", 3).await;
    let rec = Recorder::new();
    h.service
        .subscribe("latest", &group(), rec.handler(), h.options())
        .await
        .expect("subscribe");
    publish(h, "latest", "new").await;
    flush(h, "latest", &rec).await;
    assert_eq!(rec.payloads()[0], "new");
    assert_eq!(rec.len(), 2);
}

/// S5: `Earliest` replays the retained backlog.
pub async fn start_earliest_replays_backlog(h: &Harness) {
    publish_n(h, "earliest", "old", 3).await;
    let rec = Recorder::new();
    h.service
        .subscribe(
            "earliest",
            &group(),
            rec.handler(),
            h.options().start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe");
    flush(h, "earliest", &rec).await;
    assert_eq!(&rec.payloads()[..3], ["old0", "old1", "old2"]);
}

/// S5: `FromId(id)` sees ids strictly greater than `id`.
pub async fn start_from_id(h: &Harness) {
    let ids = publish_n(h, "fromid", "m", 5).await;
    let rec = Recorder::new();
    h.service
        .subscribe(
            "fromid",
            &group(),
            rec.handler(),
            h.options()
                .start(StartPosition::FromId(ids[1].as_str().to_owned())),
        )
        .await
        .expect("subscribe");
    flush(h, "fromid", &rec).await;
    assert_eq!(&rec.payloads()[..3], ["m2", "m3", "m4"]);
    assert_eq!(rec.len(), 4);
}

/// S5: an existing group's cursor wins over a later subscription's start option.
pub async fn existing_group_ignores_start(h: &Harness) {
    let g = group();
    let first = Recorder::new();
    let consumer = h
        .service
        .subscribe("cursor", &g, first.handler(), h.options())
        .await
        .expect("subscribe");
    publish_n(h, "cursor", "a", 3).await;
    first.wait_len(3, "first batch").await;
    consumer.close().await;
    publish(h, "cursor", "b0").await;
    let second = Recorder::new();
    h.service
        .subscribe(
            "cursor",
            &g,
            second.handler(),
            h.options().start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe again");
    flush(h, "cursor", &second).await;
    assert_eq!(second.payloads()[0], "b0");
    assert_eq!(second.len(), 2, "saw {:?}", second.payloads());
}

/// S5: an unparsable start id is an error, never a silent fallback.
pub async fn invalid_start_id_errors(h: &Harness) {
    let result = h
        .service
        .subscribe(
            "badstart",
            &group(),
            Recorder::new().handler(),
            h.options()
                .start(StartPosition::FromId("not an id".to_owned())),
        )
        .await;
    assert!(
        matches!(result, Err(Error::InvalidStartId { .. })),
        "got {result:?}"
    );
}

/// S6, S8: a claim not settled within the visibility timeout is reclaimed, with attempt 2.
pub async fn reclaim_after_visibility_timeout(h: &Harness) {
    let rec = Recorder::new();
    let release = Arc::new(Notify::new());
    let handler = {
        let rec = rec.clone();
        let release = release.clone();
        move |m: Message| {
            rec.record(&m);
            let release = release.clone();
            async move {
                if m.attempt == 1 {
                    release.notified().await;
                }
                Ok(())
            }
        }
    };
    let started = Instant::now();
    h.service
        .subscribe(
            "reclaim",
            &group(),
            handler,
            h.options()
                .concurrency(2)
                .visibility_timeout(Duration::from_millis(300)),
        )
        .await
        .expect("subscribe");
    publish(h, "reclaim", "slow").await;
    rec.wait_len(2, "the reclaim").await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    let attempts: Vec<u32> = rec.messages().iter().map(|m| m.attempt).collect();
    assert_eq!(attempts, [1, 2]);
    release.notify_waiters();
}

/// S8, S9: attempt is 1, 2, 3 across handler errors, with the retry delay between them;
/// after success the message does not come back.
pub async fn attempts_are_exact(h: &Harness) {
    let rec = Recorder::new();
    let handler = {
        let rec = rec.clone();
        move |m: Message| {
            rec.record(&m);
            async move {
                if text(&m) == "flaky" && m.attempt < 3 {
                    Err(HandlerError::retry(format!("fail {}", m.attempt)))
                } else {
                    Ok(())
                }
            }
        }
    };
    h.service
        .subscribe(
            "attempts",
            &group(),
            handler,
            h.options()
                .retry_delay(RetryDelay::Fixed(Duration::from_millis(150))),
        )
        .await
        .expect("subscribe");
    publish(h, "attempts", "flaky").await;
    wait_for("three attempts", || rec.len() >= 3).await;
    flush(h, "attempts", &rec).await;
    let flaky: Vec<Message> = rec
        .messages()
        .into_iter()
        .filter(|m| text(m) == "flaky")
        .collect();
    let attempts: Vec<u32> = flaky.iter().map(|m| m.attempt).collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert!(flaky.iter().all(|m| m.id == flaky[0].id));
}

/// S9, S14: a retried message comes back after its retry delay, not at the next poll.
pub async fn retry_does_not_wait_for_poll(h: &Harness) {
    let rec = Recorder::new();
    let handler = {
        let rec = rec.clone();
        move |m: Message| {
            rec.record(&m);
            async move {
                if m.attempt == 1 {
                    Err(HandlerError::retry("once"))
                } else {
                    Ok(())
                }
            }
        }
    };
    h.service
        .subscribe(
            "retrytimer",
            &group(),
            handler,
            h.options()
                .poll_interval(Duration::from_secs(60))
                .retry_delay(RetryDelay::Fixed(Duration::from_millis(200))),
        )
        .await
        .expect("subscribe");
    tokio::time::sleep(Duration::from_millis(50)).await; // let the consumer go idle
    publish(h, "retrytimer", "m").await;
    rec.wait_len(2, "the retry").await;
    let seen = rec.messages();
    assert_eq!(seen[1].attempt, 2);
}

/// S9, S12: a message failing every attempt is dead-lettered after max_retries + 1
/// attempts, keeping payload and headers and adding the envelope headers.
pub async fn retry_then_dead_letter(h: &Harness) {
    let g = group();
    let rec = Recorder::new();
    let handler = {
        let rec = rec.clone();
        move |m: Message| {
            rec.record(&m);
            async move { Err(HandlerError::retry(format!("boom {}", m.attempt))) }
        }
    };
    h.service
        .subscribe("doomed", &g, handler, h.options().max_retries(2))
        .await
        .expect("subscribe");
    let dead = dead_letters(h, "doomed.dead").await;
    let id = h
        .service
        .publish(
            "doomed",
            "payload",
            PublishOptions::new().header("trace", "t1"),
        )
        .await
        .expect("publish");
    dead.wait_len(1, "the dead letter").await;
    let attempts: Vec<u32> = rec.messages().iter().map(|m| m.attempt).collect();
    assert_eq!(attempts, [1, 2, 3]);
    let d = &dead.messages()[0];
    assert_eq!(text(d), "payload");
    assert_eq!(d.header("trace"), Some("t1"));
    let full = h.service.stream_name("doomed").expect("name");
    assert_eq!(d.stream, format!("{full}.dead"));
    assert_eq!(d.header(dlh::STREAM), Some(full.as_str()));
    assert_eq!(d.header(dlh::ID), Some(id.as_str()));
    assert_eq!(d.header(dlh::GROUP), Some(g.as_str()));
    assert_eq!(d.header(dlh::ATTEMPTS), Some("3"));
    assert_eq!(d.header(dlh::REASON), Some("boom 3"));
    assert_eq!(d.attempt, 1);
}

/// S10: a permanent error dead-letters on attempt 1; S12: reasons are capped at 1 KiB.
pub async fn permanent_error_dead_letters_at_once(h: &Harness) {
    let rec = Recorder::new();
    let handler = {
        let rec = rec.clone();
        move |m: Message| {
            rec.record(&m);
            async move { Err(HandlerError::permanent("é".repeat(1000))) }
        }
    };
    h.service
        .subscribe("perm", &group(), handler, h.options().max_retries(5))
        .await
        .expect("subscribe");
    let dead = dead_letters(h, "perm.dead").await;
    publish(h, "perm", "bad").await;
    dead.wait_len(1, "the dead letter").await;
    assert_eq!(rec.len(), 1);
    let d = &dead.messages()[0];
    assert_eq!(d.header(dlh::ATTEMPTS), Some("1"));
    let reason = d.header(dlh::REASON).expect("reason");
    assert_eq!(
        reason.len(),
        1024,
        "reason capped at 1 KiB on a char boundary"
    );
    assert!(reason.chars().all(|c| c == 'é'));
}

/// S9: `max_retries = 0` means one attempt.
pub async fn max_retries_zero(h: &Harness) {
    let rec = Recorder::new();
    let handler = {
        let rec = rec.clone();
        move |m: Message| {
            rec.record(&m);
            async move { Err(HandlerError::retry("nope")) }
        }
    };
    h.service
        .subscribe("once", &group(), handler, h.options().max_retries(0))
        .await
        .expect("subscribe");
    let dead = dead_letters(h, "once.dead").await;
    publish(h, "once", "m").await;
    dead.wait_len(1, "the dead letter").await;
    assert_eq!(rec.len(), 1);
    assert_eq!(dead.messages()[0].header(dlh::ATTEMPTS), Some("1"));
    assert_eq!(dead.messages()[0].header(dlh::REASON), Some("nope"));
}

/// S9: unlimited retries never dead-letter a retryable error.
pub async fn unlimited_retries(h: &Harness) {
    let rec = Recorder::new();
    let handler = {
        let rec = rec.clone();
        move |m: Message| {
            rec.record(&m);
            async move {
                if m.attempt <= 6 {
                    Err(HandlerError::retry("not yet"))
                } else {
                    Ok(())
                }
            }
        }
    };
    h.service
        .subscribe(
            "forever",
            &group(),
            handler,
            h.options().unlimited_retries(),
        )
        .await
        .expect("subscribe");
    let dead = dead_letters(h, "forever.dead").await;
    publish(h, "forever", "m").await;
    rec.wait_len(7, "seven attempts").await;
    flush(h, "forever", &rec).await;
    assert_eq!(rec.messages()[6].attempt, 7);
    assert!(dead.is_empty(), "nothing dead-lettered");
}

/// S9: a handler that always hangs ends in the dead-letter stream, even with one worker:
/// an expired claim that used its attempts is dead-lettered on reclaim.
pub async fn hanging_handler_dead_letters(h: &Harness) {
    let rec = Recorder::new();
    let handler = {
        let rec = rec.clone();
        move |m: Message| {
            rec.record(&m);
            std::future::pending::<Result<(), HandlerError>>()
        }
    };
    h.service
        .subscribe(
            "hang",
            &group(),
            handler,
            h.options()
                .max_retries(1)
                .visibility_timeout(Duration::from_millis(200))
                .shutdown_timeout(Duration::from_millis(50)),
        )
        .await
        .expect("subscribe");
    let dead = dead_letters(h, "hang.dead").await;
    publish(h, "hang", "stuck").await;
    dead.wait_len(1, "the dead letter").await;
    assert_eq!(rec.len(), 2, "two attempts ran");
    let d = &dead.messages()[0];
    assert_eq!(d.header(dlh::ATTEMPTS), Some("2"));
    assert!(d
        .header(dlh::REASON)
        .is_some_and(|r| r.contains("visibility timeout")));
}

/// S7: an ack from a worker whose claim was taken over has no effect: the new owner's
/// claim survives, so its retry brings the message back.
pub async fn stale_ack_ignored(h: &Harness) {
    let rec = Recorder::new();
    let stale_done = Arc::new(AtomicBool::new(false));
    let second_started = Arc::new(AtomicBool::new(false));
    let handler = {
        let rec = rec.clone();
        let stale_done = stale_done.clone();
        let second_started = second_started.clone();
        move |m: Message| {
            rec.record(&m);
            let stale_done = stale_done.clone();
            let second_started = second_started.clone();
            async move {
                match m.attempt {
                    1 => {
                        wait_for("the reclaim", || second_started.load(Ordering::SeqCst)).await;
                        stale_done.store(true, Ordering::SeqCst);
                        Ok(()) // stale ack
                    }
                    2 => {
                        second_started.store(true, Ordering::SeqCst);
                        wait_for("the stale ack", || stale_done.load(Ordering::SeqCst)).await;
                        // Give the stale ack time to reach the backend.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Err(HandlerError::retry("retry after the stale ack"))
                    }
                    _ => Ok(()),
                }
            }
        }
    };
    h.service
        .subscribe(
            "fence",
            &group(),
            handler,
            h.options()
                .concurrency(2)
                .visibility_timeout(Duration::from_millis(300)),
        )
        .await
        .expect("subscribe");
    publish(h, "fence", "m").await;
    rec.wait_len(3, "attempt 3 after the new owner's retry")
        .await;
    assert_eq!(rec.messages()[2].attempt, 3);
}

/// S7: a dead-letter move from a stale worker has no effect.
pub async fn stale_dead_letter_ignored(h: &Harness) {
    let rec = Recorder::new();
    let stale_done = Arc::new(AtomicBool::new(false));
    let second_started = Arc::new(AtomicBool::new(false));
    let handler = {
        let rec = rec.clone();
        let stale_done = stale_done.clone();
        let second_started = second_started.clone();
        move |m: Message| {
            rec.record(&m);
            let stale_done = stale_done.clone();
            let second_started = second_started.clone();
            async move {
                if text(&m) != "m" {
                    return Ok(());
                }
                match m.attempt {
                    1 => {
                        wait_for("the reclaim", || second_started.load(Ordering::SeqCst)).await;
                        stale_done.store(true, Ordering::SeqCst);
                        Err(HandlerError::permanent("stale worker gives up"))
                    }
                    _ => {
                        second_started.store(true, Ordering::SeqCst);
                        wait_for("the stale move", || stale_done.load(Ordering::SeqCst)).await;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok(())
                    }
                }
            }
        }
    };
    h.service
        .subscribe(
            "fence-dl",
            &group(),
            handler,
            h.options()
                .concurrency(2)
                .visibility_timeout(Duration::from_millis(300)),
        )
        .await
        .expect("subscribe");
    let dead = dead_letters(h, "fence-dl.dead").await;
    publish(h, "fence-dl", "m").await;
    rec.wait_len(2, "the reclaim").await;
    flush(h, "fence-dl", &rec).await;
    flush(h, "fence-dl.dead", &dead).await;
    assert_eq!(dead.len(), 1, "only the sentinel: {:?}", dead.payloads());
}

/// S11: a panic counts as an error carrying the panic message; the worker lives on.
pub async fn panic_counts_as_error(h: &Harness) {
    let rec = Recorder::new();
    let handler = {
        let rec = rec.clone();
        move |m: Message| {
            rec.record(&m);
            async move {
                if text(&m) == "explode" {
                    panic!("kaboom {}", m.attempt);
                }
                Ok(())
            }
        }
    };
    h.service
        .subscribe("panics", &group(), handler, h.options().max_retries(1))
        .await
        .expect("subscribe");
    let dead = dead_letters(h, "panics.dead").await;
    publish(h, "panics", "explode").await;
    dead.wait_len(1, "the dead letter").await;
    let reason = dead.messages()[0]
        .header(dlh::REASON)
        .unwrap_or_default()
        .to_owned();
    assert!(reason.contains("kaboom 2"), "reason {reason:?}");
    flush(h, "panics", &rec).await; // the worker still handles messages
}

/// S2: headers round-trip (empty values, unicode) and batch headers go on every message.
pub async fn headers_round_trip(h: &Harness) {
    let rec = Recorder::new();
    h.service
        .subscribe("headers", &group(), rec.handler(), h.options())
        .await
        .expect("subscribe");
    let mut options = PublishOptions::new()
        .header("empty", "")
        .header("ünï", "cødé ✓")
        .header("Upper-Case", "x y");
    h.service
        .publish_batch(
            "headers",
            [
                NewMessage::new("a").header("own", "1"),
                NewMessage::new("b"),
            ],
            options.clone(),
        )
        .await
        .expect("publish");
    // Changing the options afterwards changes nothing published.
    options
        .headers
        .insert("empty".to_owned(), "changed".to_owned());
    rec.wait_len(2, "both messages").await;
    for m in rec.messages() {
        assert_eq!(m.header("empty"), Some(""));
        assert_eq!(m.header("ünï"), Some("cødé ✓"));
        assert_eq!(m.header("Upper-Case"), Some("x y"));
    }
    let msgs = rec.messages();
    assert_eq!(msgs[0].header("own"), Some("1"));
    assert_eq!(msgs[1].header("own"), None);
    assert_eq!(msgs[1].headers.len(), 3);
}

async fn earliest_payloads(h: &Harness, stream: &str) -> Vec<String> {
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

/// S3: trimming by length is exact.
pub async fn trim_by_length(h: &Harness) {
    for i in 0..10 {
        h.service
            .publish("trimlen", format!("m{i}"), PublishOptions::new().max_len(3))
            .await
            .expect("publish");
    }
    assert_eq!(earliest_payloads(h, "trimlen").await, ["m7", "m8", "m9"]);
    h.service
        .publish_batch(
            "trimlen2",
            (0..10).map(|i| format!("m{i}")),
            PublishOptions::new().max_len(4),
        )
        .await
        .expect("publish_batch");
    assert_eq!(
        earliest_payloads(h, "trimlen2").await,
        ["m6", "m7", "m8", "m9"]
    );
}

/// S3: trimming by age is exact.
pub async fn trim_by_age(h: &Harness) {
    publish_n(h, "trimage", "old", 3).await;
    tokio::time::sleep(Duration::from_millis(400)).await; // let the first three age
    h.service
        .publish(
            "trimage",
            "fresh",
            PublishOptions::new().max_age(Duration::from_millis(200)),
        )
        .await
        .expect("publish");
    assert_eq!(earliest_payloads(h, "trimage").await, ["fresh"]);
}

/// S3: the service's default trim applies when a publish sets none, and 0 disables it.
pub async fn service_default_trim(h: &Harness) {
    let service = h.service_with(|c| c.max_len(2));
    for i in 0..5 {
        service
            .publish("deftrim", format!("m{i}"), PublishOptions::new())
            .await
            .expect("publish");
    }
    service
        .publish("deftrim", "m5", PublishOptions::new().max_len(0))
        .await
        .expect("publish");
    assert_eq!(earliest_payloads(h, "deftrim").await, ["m3", "m4", "m5"]);
}

/// S3: a message trimmed while pending is dropped cleanly; the group does not stall.
pub async fn trimmed_pending_does_not_stall(h: &Harness) {
    let rec = Recorder::new();
    let handler = {
        let rec = rec.clone();
        move |m: Message| {
            rec.record(&m);
            async move {
                if text(&m) == "victim" {
                    Err(HandlerError::retry("keep it pending"))
                } else {
                    Ok(())
                }
            }
        }
    };
    h.service
        .subscribe(
            "trimpending",
            &group(),
            handler,
            h.options()
                .unlimited_retries()
                .retry_delay(RetryDelay::Fixed(Duration::from_millis(100))),
        )
        .await
        .expect("subscribe");
    publish(h, "trimpending", "victim").await;
    rec.wait_payload("victim").await;
    for i in 0..3 {
        h.service
            .publish(
                "trimpending",
                format!("n{i}"),
                PublishOptions::new().max_len(1),
            )
            .await
            .expect("publish");
    }
    rec.wait_payload("n2").await;
    let victim_attempts = || rec.payloads().iter().filter(|p| *p == "victim").count();
    let before = victim_attempts();
    tokio::time::sleep(Duration::from_millis(300)).await; // three retry delays
    flush(h, "trimpending", &rec).await;
    assert_eq!(victim_attempts(), before, "the trimmed message came back");
}

/// S1, S12: a custom dead-letter name is a short name, subscribable with the same call.
pub async fn custom_dead_letter_stream(h: &Harness) {
    let handler = |_m: Message| async { Err(HandlerError::permanent("no")) };
    h.service
        .subscribe(
            "custom",
            &group(),
            handler,
            h.options().dead_letter("custom-failures"),
        )
        .await
        .expect("subscribe");
    let dead = dead_letters(h, "custom-failures").await;
    publish(h, "custom", "m").await;
    dead.wait_len(1, "the dead letter").await;
    assert_eq!(
        dead.messages()[0].stream,
        h.service.stream_name("custom-failures").expect("name")
    );
}

/// S1: app and namespace overrides per publish and subscription; empty overrides are
/// ignored.
pub async fn app_namespace_overrides(h: &Harness) {
    let app = unique_name("other");
    let (over, plain) = (Recorder::new(), Recorder::new());
    h.service
        .subscribe(
            "ns",
            &group(),
            over.handler(),
            h.options().app(app.as_str()).namespace("eu"),
        )
        .await
        .expect("subscribe");
    h.service
        .subscribe(
            "ns",
            &group(),
            plain.handler(),
            h.options().app("").namespace(""),
        )
        .await
        .expect("subscribe");
    h.service
        .publish(
            "ns",
            "over",
            PublishOptions::new().app(app.as_str()).namespace("eu"),
        )
        .await
        .expect("publish");
    h.service
        .publish("ns", "plain", PublishOptions::new().app("").namespace(""))
        .await
        .expect("publish");
    over.wait_payload("over").await;
    plain.wait_payload("plain").await;
    assert_eq!(over.messages()[0].stream, format!("{app}.eu.ns"));
    flush(h, "ns", &plain).await;
    assert_eq!(over.len(), 1);
    assert_eq!(plain.payloads()[0], "plain");
}

/// S1, S14: upper-case stream and group names work, push wake-ups included.
pub async fn upper_case_names(h: &Harness) {
    let rec = Recorder::new();
    h.service
        .subscribe(
            "Orders.EU-West",
            "Billing-Group",
            rec.handler(),
            h.options().poll_interval(Duration::from_secs(30)),
        )
        .await
        .expect("subscribe");
    tokio::time::sleep(Duration::from_millis(50)).await; // let the consumer go idle
    publish(h, "Orders.EU-West", "Hello").await;
    rec.wait_payload("Hello").await;
    assert!(rec.messages()[0].stream.ends_with(".Orders.EU-West"));
}

/// S14: a publish wakes an idle consumer without waiting for the poll interval.
pub async fn push_wakeup(h: &Harness) {
    let rec = Recorder::new();
    h.service
        .subscribe(
            "push",
            &group(),
            rec.handler(),
            h.options().poll_interval(Duration::from_secs(60)),
        )
        .await
        .expect("subscribe");
    tokio::time::sleep(Duration::from_millis(100)).await; // let the consumer go idle
    for i in 0..3 {
        let started = Instant::now();
        publish(h, "push", &format!("m{i}")).await;
        rec.wait_len(i + 1, "the pushed message").await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// S13: at most `concurrency` handlers run at once, and all of them are used.
pub async fn concurrency_limit(h: &Harness) {
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (running, peak, done) = (running.clone(), peak.clone(), done.clone());
        move |_m: Message| {
            let (running, peak, done) = (running.clone(), peak.clone(), done.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }
    };
    publish_n(h, "conc", "m", 12).await;
    h.service
        .subscribe(
            "conc",
            &group(),
            handler,
            h.options().concurrency(3).start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe");
    wait_for("12 handled", || done.load(Ordering::SeqCst) == 12).await;
    assert_eq!(peak.load(Ordering::SeqCst), 3);
}

/// S15: close waits for in-flight handlers, which still ack.
pub async fn close_drains_in_flight(h: &Harness) {
    let g = group();
    let started = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let handler = {
        let (started, finished) = (started.clone(), finished.clone());
        move |_m: Message| {
            let (started, finished) = (started.clone(), finished.clone());
            async move {
                started.store(true, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                finished.store(true, Ordering::SeqCst);
                Ok(())
            }
        }
    };
    let consumer = h
        .service
        .subscribe("drain", &g, handler, h.options())
        .await
        .expect("subscribe");
    publish(h, "drain", "slow").await;
    wait_for("the handler to start", || started.load(Ordering::SeqCst)).await;
    let report = consumer.close().await;
    assert!(
        finished.load(Ordering::SeqCst),
        "close returned before the handler"
    );
    assert_eq!(report.aborted, 0);
    assert_eq!(consumer.close().await, report, "close is idempotent");
    // The message was acked: the group does not see it again.
    let rec = Recorder::new();
    h.service
        .subscribe("drain", &g, rec.handler(), h.options())
        .await
        .expect("subscribe again");
    flush(h, "drain", &rec).await;
    assert_eq!(rec.len(), 1, "saw {:?}", rec.payloads());
}

/// S15: handlers still running at the shutdown deadline are aborted, counted, and their
/// messages released for redelivery at once, without using up an attempt.
pub async fn close_aborts_past_shutdown_timeout(h: &Harness) {
    let g = group();
    let started = Arc::new(AtomicBool::new(false));
    let handler = {
        let started = started.clone();
        move |_m: Message| {
            started.store(true, Ordering::SeqCst);
            std::future::pending::<Result<(), HandlerError>>()
        }
    };
    let consumer = h
        .service
        .subscribe(
            "abort",
            &g,
            handler,
            h.options()
                .shutdown_timeout(Duration::from_millis(100))
                .visibility_timeout(Duration::from_secs(60)),
        )
        .await
        .expect("subscribe");
    publish(h, "abort", "stuck").await;
    wait_for("the handler to start", || started.load(Ordering::SeqCst)).await;
    let report = consumer.close().await;
    assert_eq!(report.aborted, 1);
    let rec = Recorder::new();
    let again = Instant::now();
    h.service
        .subscribe("abort", &g, rec.handler(), h.options())
        .await
        .expect("subscribe again");
    rec.wait_payload("stuck").await;
    assert!(
        again.elapsed() < Duration::from_secs(30),
        "not released at once"
    );
    assert_eq!(
        rec.messages()[0].attempt,
        1,
        "the aborted delivery must not count"
    );
}

/// S15, S9: a message whose only attempt (`max_retries = 0`) was cut off by a shutdown is
/// handled by the next consumer, not dead-lettered.
pub async fn aborted_at_shutdown_keeps_its_only_attempt(h: &Harness) {
    let g = group();
    let started = Arc::new(AtomicBool::new(false));
    let handler = {
        let started = started.clone();
        move |_m: Message| {
            started.store(true, Ordering::SeqCst);
            std::future::pending::<Result<(), HandlerError>>()
        }
    };
    let options = h.options().max_retries(0);
    let consumer = h
        .service
        .subscribe(
            "abort-last",
            &g,
            handler,
            options.clone().shutdown_timeout(Duration::from_millis(50)),
        )
        .await
        .expect("subscribe");
    publish(h, "abort-last", "only").await;
    wait_for("the handler to start", || started.load(Ordering::SeqCst)).await;
    assert_eq!(consumer.close().await.aborted, 1);
    let rec = Recorder::new();
    h.service
        .subscribe("abort-last", &g, rec.handler(), options)
        .await
        .expect("subscribe again");
    rec.wait_payload("only").await;
    assert_eq!(rec.messages()[0].attempt, 1);
    let dead = Recorder::new();
    let dead_consumer = h
        .service
        .subscribe(
            "abort-last.dead",
            &group(),
            dead.handler(),
            h.options().start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe to the dead letters");
    // Nothing may reach the dead-letter stream: publish a marker there and see it alone.
    publish(h, "abort-last.dead", "marker").await;
    dead.wait_payload("marker").await;
    assert_eq!(dead.payloads(), ["marker"], "the message was dead-lettered");
    dead_consumer.close().await;
}

/// S15, S7 at the `Backend` level: a release gives the claim's delivery back (the next
/// claim has the same attempt), a repeated release gives nothing back twice, and the
/// released claim's token cannot settle the next claim.
pub async fn release_keeps_the_attempt(h: &Harness) {
    use crate::backend::GroupRef;
    use crate::options::Trim;
    let b = &h.backend;
    let s = format!("{}.ns.release", unique_name("rel"));
    let at = |consumer| GroupRef {
        stream: &s,
        group: "grp",
        consumer,
    };
    let vis = Duration::from_secs(60);
    b.ensure_group(&s, "grp", &StartPosition::Earliest)
        .await
        .expect("group");
    b.append(&s, vec![NewMessage::new("m")], Trim::NONE)
        .await
        .expect("append");
    let first = b.claim(at("a"), 1, vis).await.expect("claim");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].message.attempt, 1);
    b.release(at("a"), &[first[0].claim()])
        .await
        .expect("release");
    b.release(at("a"), &[first[0].claim()])
        .await
        .expect("repeated release");
    let second = b.claim(at("b"), 1, vis).await.expect("claim again");
    assert_eq!(second.len(), 1, "released, so claimable at once");
    assert_eq!(
        second[0].message.attempt, 1,
        "the release gave the attempt back"
    );
    // The released claim is stale: its ack must leave the new claim pending.
    b.ack(at("a"), &[first[0].claim()])
        .await
        .expect("stale ack");
    assert!(
        b.retry(at("b"), &second[0].claim(), Duration::ZERO)
            .await
            .expect("retry"),
        "a released claim's token settled the next claim"
    );
    let third = b.claim(at("c"), 1, vis).await.expect("claim the retry");
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].message.attempt, 2, "a retry counts");
}

/// S15: after close, publish and subscribe fail with `Closed`; close is idempotent.
pub async fn closed_service_rejects(h: &Harness) {
    let service = h.service_with(|c| c);
    let other = h.service.clone();
    other.close().await.expect("close");
    other.close().await.expect("second close");
    let published = other.publish("x", "m", PublishOptions::new()).await;
    assert!(matches!(published, Err(Error::Closed)), "got {published:?}");
    let subscribed = other
        .subscribe("x", "g", Recorder::new().handler(), h.options())
        .await;
    assert!(
        matches!(subscribed, Err(Error::Closed)),
        "got {subscribed:?}"
    );
    drop(service);
}

/// S15: dropping the consumer handle does not stop the subscription.
pub async fn dropped_handle_keeps_running(h: &Harness) {
    let rec = Recorder::new();
    let consumer = h
        .service
        .subscribe("dropped", &group(), rec.handler(), h.options())
        .await
        .expect("subscribe");
    drop(consumer);
    publish(h, "dropped", "still here").await;
    rec.wait_payload("still here").await;
}

/// S16: one worker with no retries handles messages in stream order.
pub async fn order_with_one_worker(h: &Harness) {
    let rec = Recorder::new();
    h.service
        .subscribe("order", &group(), rec.handler(), h.options())
        .await
        .expect("subscribe");
    let mut expected = Vec::new();
    for round in 0..5 {
        let batch: Vec<String> = (0..10).map(|i| format!("r{round}-{i}")).collect();
        expected.extend(batch.iter().cloned());
        h.service
            .publish_batch("order", batch, PublishOptions::new())
            .await
            .expect("publish");
        let single = format!("s{round}");
        publish(h, "order", &single).await;
        expected.push(single);
    }
    rec.wait_len(expected.len(), "all messages").await;
    assert_eq!(rec.payloads(), expected);
}

/// S1: bad names are rejected with a clear error before reaching the backend.
pub async fn invalid_names_rejected(h: &Harness) {
    for bad in ["", "has space", "tab\t", "nul\0", &"x".repeat(250)] {
        let result = h.service.publish(bad, "m", PublishOptions::new()).await;
        assert!(
            matches!(result, Err(Error::InvalidName { .. })),
            "{bad:?}: {result:?}"
        );
    }
    let result = h
        .service
        .subscribe("ok", "bad group", Recorder::new().handler(), h.options())
        .await;
    assert!(
        matches!(result, Err(Error::InvalidName { .. })),
        "{result:?}"
    );
    let message = result.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("bad group"), "{message}");
}

/// Bad input: a payload over the configured cap is rejected and nothing is stored.
pub async fn payload_limit(h: &Harness) {
    let service = h.service_with(|c| c.max_payload_bytes(1024));
    let result = service
        .publish("big", vec![0u8; 1025], PublishOptions::new())
        .await;
    assert!(
        matches!(
            result,
            Err(Error::PayloadTooLarge {
                size: 1025,
                limit: 1024
            })
        ),
        "{result:?}"
    );
    service
        .publish("big", vec![7u8; 1024], PublishOptions::new())
        .await
        .expect("a payload at the cap is fine");
    let payloads = earliest_payloads(h, "big").await;
    assert_eq!(payloads.len(), 1);
}

/// `Backend::ping` answers while the backend is open (what a readiness probe asks) and is
/// `Closed` after the service closed it.
pub async fn ping_answers_until_closed(h: &Harness) {
    h.backend.ping().await.expect("ping an open backend");
    h.service.close().await.expect("close");
    let closed = h.backend.ping().await;
    assert!(matches!(closed, Err(Error::Closed)), "got {closed:?}");
}
