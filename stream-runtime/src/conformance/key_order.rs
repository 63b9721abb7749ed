//! Ordering by key ([`crate::key_order`]): the backend's ordered claim and settling calls,
//! and a group ordered by key end to end. On a backend that cannot order by key
//! ([`Backend::key_order_supported`](crate::Backend::key_order_supported) is false), every
//! case checks the refusal instead: the ordered claim and an ordered subscribe both fail
//! with [`Error::OrderingUnsupported`].

use super::support::*;
use super::WAIT;
use crate::key_order::{Order, KEY_HEADER};

/// Appends `(payload, key)` pairs straight to the backend; returns their ids.
async fn append_keyed(b: &SharedBackend, stream: &str, messages: &[(&str, Option<&str>)]) {
    let batch = messages
        .iter()
        .map(|(payload, key)| match key {
            Some(key) => NewMessage::new(*payload).key(*key),
            None => NewMessage::new(*payload),
        })
        .collect();
    b.append(stream, batch, Trim::NONE).await.expect("append");
}

/// A fresh stream with a group created at its start, for the backend-level cases; `None`
/// (after checking the refusal) when the backend cannot order by key.
async fn ordered_group(h: &Harness) -> Option<(String, String)> {
    let stream = backend_stream();
    let g = group();
    h.backend
        .ensure_group(&stream, &g, &StartPosition::Earliest)
        .await
        .expect("ensure_group");
    if h.backend.key_order_supported() {
        return Some((stream, g));
    }
    match h.backend.claim_ordered(at(&stream, &g, "c"), 10, VIS).await {
        Err(Error::OrderingUnsupported { backend }) => assert_eq!(backend, h.backend.name()),
        other => panic!("an ordered claim on a backend without key order: {other:?}"),
    }
    let refused = h
        .service
        .subscribe(
            "ko-refused",
            &group(),
            |_m: Message| async { Ok(()) },
            h.options().ordered(Order::Key),
        )
        .await;
    match refused {
        Err(e @ Error::OrderingUnsupported { .. }) => {
            let text = e.to_string();
            assert!(text.contains(h.backend.name()), "{text}");
            assert!(
                text.contains("postgres") && text.contains("redis"),
                "{text}"
            );
        }
        Err(other) => panic!("not the ordering refusal: {other}"),
        Ok(_) => panic!("an ordered subscribe on a backend without key order succeeded"),
    }
    None
}

/// Claims (ordered) and returns the payloads with their claims.
async fn claim_ordered(
    h: &Harness,
    stream: &str,
    g: &str,
    max: usize,
    visibility: Duration,
) -> Vec<(String, Claim, u32)> {
    h.backend
        .claim_ordered(at(stream, g, "c"), max, visibility)
        .await
        .expect("claim_ordered")
        .into_iter()
        .map(|c| (text(&c.message), c.claim(), c.message.attempt))
        .collect()
}

/// Claims (ordered, long visibility) every few milliseconds, gathering what comes, until
/// `done` holds of it; fails after [`WAIT`].
async fn claim_until(
    h: &Harness,
    stream: &str,
    g: &str,
    what: &str,
    done: impl Fn(&[(String, Claim, u32)]) -> bool,
) -> Vec<(String, Claim, u32)> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    loop {
        got.extend(claim_ordered(h, stream, g, 10, Duration::from_secs(60)).await);
        if done(&got) {
            return got;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn payloads(claimed: &[(String, Claim, u32)]) -> Vec<&str> {
    claimed.iter().map(|(p, _, _)| p.as_str()).collect()
}

/// Two messages of one key are never claimed together: one claim takes the first of each
/// key (and every message without a key), the next takes nothing of a held key, and an ack
/// releases the key to its next message. The key travels as `Message::key`.
pub async fn key_order_one_claim_per_key(h: &Harness) {
    let Some((stream, g)) = ordered_group(h).await else {
        return;
    };
    append_keyed(
        &h.backend,
        &stream,
        &[
            ("a1", Some("a")),
            ("a2", Some("a")),
            ("n1", None),
            ("b1", Some("b")),
            ("a3", Some("a")),
            ("n2", None),
            ("b2", Some("b")),
        ],
    )
    .await;
    let first = h
        .backend
        .claim_ordered(at(&stream, &g, "c"), 10, Duration::from_secs(60))
        .await
        .expect("claim_ordered");
    let got: Vec<String> = first.iter().map(|c| text(&c.message)).collect();
    assert_eq!(
        got,
        ["a1", "n1", "b1", "n2"],
        "the first of each key, in id order"
    );
    assert_eq!(first[0].message.key(), Some("a"));
    assert_eq!(first[0].message.header(KEY_HEADER), Some("a"));
    assert_eq!(first[1].message.key(), None);
    assert!(first.iter().all(|c| c.message.attempt == 1));
    let again = claim_ordered(h, &stream, &g, 10, Duration::from_secs(60)).await;
    assert!(
        again.is_empty(),
        "a held key gives nothing more: {:?}",
        payloads(&again)
    );
    // Acking a1 and b1 frees a2 and b2 (not a3).
    let acks: Vec<Claim> = first
        .iter()
        .filter(|c| c.message.key().is_some())
        .map(|c| c.claim())
        .collect();
    h.backend
        .ack_ordered(at(&stream, &g, "c"), &acks)
        .await
        .expect("ack");
    let next = claim_ordered(h, &stream, &g, 10, Duration::from_secs(60)).await;
    assert_eq!(payloads(&next), ["a2", "b2"]);
    assert!(
        next.iter().all(|(_, _, attempt)| *attempt == 1),
        "waiting costs no attempt"
    );
    // A claim of one message takes one, whatever waits behind it.
    let a2 = next[0].1.clone();
    h.backend
        .ack_ordered(at(&stream, &g, "c"), std::slice::from_ref(&a2))
        .await
        .expect("ack");
    let last = claim_ordered(h, &stream, &g, 1, Duration::from_secs(60)).await;
    assert_eq!(payloads(&last), ["a3"]);
}

/// A message of a key that is retrying holds back the later messages of its key, and no
/// other key; once due it comes back (before them) with its next attempt.
pub async fn key_order_retry_holds_its_key_only(h: &Harness) {
    let Some((stream, g)) = ordered_group(h).await else {
        return;
    };
    append_keyed(
        &h.backend,
        &stream,
        &[("a1", Some("a")), ("a2", Some("a")), ("b1", Some("b"))],
    )
    .await;
    let first = claim_ordered(h, &stream, &g, 10, Duration::from_secs(60)).await;
    assert_eq!(payloads(&first), ["a1", "b1"]);
    let delay = Duration::from_millis(400);
    let retried_at = Instant::now();
    assert!(h
        .backend
        .retry(at(&stream, &g, "c"), &first[0].1, delay)
        .await
        .expect("retry"));
    h.backend
        .ack_ordered(at(&stream, &g, "c"), std::slice::from_ref(&first[1].1))
        .await
        .expect("ack");
    append_keyed(&h.backend, &stream, &[("b2", Some("b")), ("a3", Some("a"))]).await;
    let during = claim_ordered(h, &stream, &g, 10, Duration::from_secs(60)).await;
    if retried_at.elapsed() < delay {
        assert_eq!(
            payloads(&during),
            ["b2"],
            "key a waits for its retry, key b goes on"
        );
    }
    let back = claim_until(h, &stream, &g, "the retried message to come back", |back| {
        back.iter().any(|(p, _, _)| p.starts_with('a'))
    })
    .await;
    let keyed_a: Vec<(&str, u32)> = back
        .iter()
        .filter(|(p, _, _)| p.starts_with('a'))
        .map(|(p, _, attempt)| (p.as_str(), *attempt))
        .collect();
    assert_eq!(
        keyed_a,
        [("a1", 2)],
        "a1 again, alone of its key, attempt 2"
    );
    assert!(retried_at.elapsed() >= delay - Duration::from_millis(50));
}

/// A dead-letter move releases the key: the next message of the key is claimable at once,
/// and the dead letter keeps the key.
pub async fn key_order_dead_letter_releases(h: &Harness) {
    let Some((stream, g)) = ordered_group(h).await else {
        return;
    };
    append_keyed(&h.backend, &stream, &[("a1", Some("a")), ("a2", Some("a"))]).await;
    let first = claim_ordered(h, &stream, &g, 10, Duration::from_secs(60)).await;
    assert_eq!(payloads(&first), ["a1"]);
    let dead = format!("{stream}.dead");
    let moved = h
        .backend
        .dead_letter_ordered(
            at(&stream, &g, "c"),
            &first[0].1,
            &dead,
            NewMessage::new("a1").key("a"),
        )
        .await
        .expect("dead_letter");
    assert!(moved);
    let next = claim_ordered(h, &stream, &g, 10, Duration::from_secs(60)).await;
    assert_eq!(payloads(&next), ["a2"]);
    let audit = group();
    h.backend
        .ensure_group(&dead, &audit, &StartPosition::Earliest)
        .await
        .expect("ensure_group");
    let letters = h
        .backend
        .claim(at(&dead, &audit, "c"), 10, Duration::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].message.key(), Some("a"));
}

/// A crashed holder's claim expires as usual and is redelivered first: the later messages
/// of its key stay behind it, and a claim never hands out the expired one beside them.
pub async fn key_order_crashed_claim_first(h: &Harness) {
    let Some((stream, g)) = ordered_group(h).await else {
        return;
    };
    append_keyed(
        &h.backend,
        &stream,
        &[("a1", Some("a")), ("a2", Some("a")), ("b1", Some("b"))],
    )
    .await;
    let first = claim_ordered(h, &stream, &g, 10, VIS).await;
    assert_eq!(payloads(&first), ["a1", "b1"]);
    // The holder "crashes": nothing is settled. Until the claims expire, nothing of a or b.
    let claimed_at = Instant::now();
    let during = claim_ordered(h, &stream, &g, 10, Duration::from_secs(60)).await;
    if claimed_at.elapsed() < VIS {
        assert!(during.is_empty(), "{:?}", payloads(&during));
    }
    let back = claim_until(h, &stream, &g, "the expired claims to come back", |back| {
        back.len() >= 2
    })
    .await;
    let got: Vec<(&str, u32)> = back.iter().map(|(p, _, a)| (p.as_str(), *a)).collect();
    assert_eq!(
        got,
        [("a1", 2), ("b1", 2)],
        "the expired ones first, a2 behind a1"
    );
    h.backend
        .ack_ordered(at(&stream, &g, "c"), std::slice::from_ref(&back[0].1))
        .await
        .expect("ack");
    let next = claim_ordered(h, &stream, &g, 10, Duration::from_secs(60)).await;
    assert_eq!(payloads(&next), ["a2"]);
}

/// One handling of a key at a time.
#[derive(Default)]
struct KeyLog {
    /// Per key: whether a handling runs, and the ids handled successfully, in order.
    keys: Mutex<HashMap<String, (bool, Vec<u64>)>>,
    overlaps: AtomicUsize,
}

/// End to end through the engine: messages over a few keys, eight workers, some handler
/// failures with retries, two services in one group: for every key the successful
/// handlings are in publish order and never overlap in time; every message is handled.
pub async fn key_order_end_to_end(h: &Harness) {
    const KEYS: usize = 6;
    const PER_KEY: usize = 25;
    let short = "ko-e2e";
    let g = group();
    let log = Arc::new(KeyLog::default());
    let failures = Arc::new(AtomicUsize::new(0));
    let options = h
        .options()
        .ordered(Order::Key)
        .concurrency(8)
        .unlimited_retries()
        .retry_delay(RetryDelay::Fixed(Duration::from_millis(10)));
    if !h.backend.key_order_supported() {
        let refused = h
            .service
            .subscribe(short, &g, |_m: Message| async { Ok(()) }, options)
            .await;
        assert!(
            matches!(refused, Err(Error::OrderingUnsupported { .. })),
            "an ordered subscribe on a backend without key order: {:?}",
            refused.err()
        );
        return;
    }
    let other = h.service_with(|c| c);
    for service in [&h.service, &other] {
        let (log, failures) = (log.clone(), failures.clone());
        service
            .subscribe(
                short,
                &g,
                move |m: Message| {
                    let (log, failures) = (log.clone(), failures.clone());
                    async move {
                        let key = m.key().expect("every message has a key").to_owned();
                        let seq: u64 = text(&m).parse().expect("a number");
                        {
                            let mut keys = log.keys.lock().unwrap_or_else(PoisonError::into_inner);
                            let entry = keys.entry(key.clone()).or_default();
                            if entry.0 {
                                log.overlaps.fetch_add(1, Ordering::SeqCst);
                            }
                            entry.0 = true;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        // Every fifth message fails its first attempt.
                        let fail = seq % 5 == 3 && m.attempt == 1;
                        let mut keys = log.keys.lock().unwrap_or_else(PoisonError::into_inner);
                        let entry = keys.entry(key).or_default();
                        entry.0 = false;
                        if fail {
                            failures.fetch_add(1, Ordering::SeqCst);
                            return Err(HandlerError::retry("the first attempt fails"));
                        }
                        entry.1.push(seq);
                        Ok(())
                    }
                },
                options.clone(),
            )
            .await
            .expect("subscribe ordered");
    }
    // Interleaved keys, each key's messages numbered in publish order.
    let mut seq = 0u64;
    for round in 0..PER_KEY {
        let batch: Vec<NewMessage> = (0..KEYS)
            .map(|k| {
                seq += 1;
                NewMessage::new(seq.to_string()).key(format!("k{k}"))
            })
            .collect();
        let _ = round;
        h.service
            .publish_batch(short, batch, PublishOptions::new())
            .await
            .expect("publish");
    }
    wait_for("every message handled", || {
        let keys = log.keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.values().map(|(_, ids)| ids.len()).sum::<usize>() >= KEYS * PER_KEY
    })
    .await;
    let keys = log.keys.lock().unwrap_or_else(PoisonError::into_inner);
    assert_eq!(
        log.overlaps.load(Ordering::SeqCst),
        0,
        "two handlings of one key overlapped"
    );
    assert!(failures.load(Ordering::SeqCst) > 0);
    for (key, (_, ids)) in keys.iter() {
        assert_eq!(ids.len(), PER_KEY, "key {key}: {ids:?}");
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "key {key} out of order: {ids:?}"
        );
    }
}
