//! Fencing: a settling call made with the token of a claim taken over since has no effect.

use super::support::*;

/// S7: an ack from a worker whose claim was taken over has no effect: the new owner's
/// claim survives, so its retry brings the message back.
pub async fn stale_ack_ignored(h: &Harness) {
    let rec = Recorder::new();
    let second_started = Arc::new(AtomicBool::new(false));
    let (calls, full) = (h.call_watch(), h.full_name("fence"));
    let handler = rec.then({
        let second_started = second_started.clone();
        move |m: Message| {
            let second_started = second_started.clone();
            let (calls, full) = (calls.clone(), full.clone());
            async move {
                match m.attempt {
                    1 => {
                        wait_for("the reclaim", || second_started.load(Ordering::SeqCst)).await;
                        Ok(()) // stale ack
                    }
                    2 => {
                        second_started.store(true, Ordering::SeqCst);
                        wait_for("the stale ack to reach the backend", || {
                            calls.count(Call::Ack, &full) > 0
                        })
                        .await;
                        Err(HandlerError::retry("retry after the stale ack"))
                    }
                    _ => Ok(()),
                }
            }
        }
    });
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
    let second_started = Arc::new(AtomicBool::new(false));
    let (calls, full) = (h.call_watch(), h.full_name("fence-dl"));
    let handler = rec.then({
        let second_started = second_started.clone();
        move |m: Message| {
            let second_started = second_started.clone();
            let (calls, full) = (calls.clone(), full.clone());
            async move {
                if text(&m) != "m" {
                    return Ok(());
                }
                match m.attempt {
                    1 => {
                        wait_for("the reclaim", || second_started.load(Ordering::SeqCst)).await;
                        Err(HandlerError::permanent("stale worker gives up"))
                    }
                    _ => {
                        second_started.store(true, Ordering::SeqCst);
                        wait_for("the stale move to reach the backend", || {
                            calls.count(Call::DeadLetter, &full) > 0
                        })
                        .await;
                        Ok(())
                    }
                }
            }
        }
    });
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

/// S7: one ack batch mixing a stale claim (taken over since) with fresh ones acks only the
/// fresh ones; the new owner's claim stays pending.
pub async fn mixed_stale_and_fresh_ack_batch(h: &Harness) {
    let b = &h.backend;
    let s = backend_stream();
    b.ensure_group(&s, "grp", &StartPosition::Earliest)
        .await
        .expect("group");
    append(b, &s, &["m1", "m2", "m3"], Trim::NONE).await;
    // Consumer A claims all three; they expire. (Redis measures expiry by the reclaimer's
    // visibility timeout, so every claim here uses the same one.)
    let first = b.claim(at(&s, "grp", "A"), 3, VIS).await.expect("claim");
    assert_eq!(first.len(), 3);
    // Time is the subject: the claims expire.
    tokio::time::sleep(VIS + Duration::from_millis(50)).await;
    // Consumer B takes m1 over, then A takes m2 and m3 again (fresh tokens).
    let taken = b
        .claim(at(&s, "grp", "B"), 1, VIS)
        .await
        .expect("reclaim m1");
    assert_eq!(taken.len(), 1, "m1 reclaimed");
    assert_eq!(text(&taken[0].message), "m1");
    assert_eq!(taken[0].message.attempt, 2);
    let rest = b
        .claim(at(&s, "grp", "A"), 2, VIS)
        .await
        .expect("reclaim m2, m3");
    assert_eq!(rest.len(), 2);
    let a = &first[..1];
    let mut batch: Vec<Claim> = vec![a[0].claim()];
    batch.extend(rest.iter().map(|c| c.claim()));
    b.ack(at(&s, "grp", "A"), &batch).await.expect("mixed ack");
    // m1 is still B's: B's retry works (so the stale ack did not remove it).
    assert!(b
        .retry(at(&s, "grp", "B"), &taken[0].claim(), Duration::ZERO)
        .await
        .expect("retry"));
    let again = b
        .claim(at(&s, "grp", "C"), 10, VIS)
        .await
        .expect("claim after retry");
    assert_eq!(
        again.iter().map(|c| text(&c.message)).collect::<Vec<_>>(),
        ["m1"],
        "m2 and m3 were acked, m1 came back"
    );
    assert_eq!(again[0].message.attempt, 3);
}

/// S7, S12: a dead-letter move racing a reclaim: the stale owner's move does nothing, the
/// new owner's moves exactly one copy.
pub async fn dead_letter_racing_reclaim(h: &Harness) {
    let b = &h.backend;
    let s = backend_stream();
    let dead = format!("{s}.dead");
    b.ensure_group(&s, "grp", &StartPosition::Earliest)
        .await
        .expect("group");
    b.ensure_group(&dead, "dl", &StartPosition::Earliest)
        .await
        .expect("dead-letter group");
    append(b, &s, &["m"], Trim::NONE).await;
    let old = b.claim(at(&s, "grp", "A"), 1, VIS).await.expect("claim");
    // Time is the subject: the claims expire.
    tokio::time::sleep(VIS + Duration::from_millis(50)).await;
    let new = b
        .claim(at(&s, "grp", "A"), 1, VIS)
        .await
        .expect("reclaim by the same consumer");
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].message.attempt, 2);
    assert!(!b
        .dead_letter(
            at(&s, "grp", "A"),
            &old[0].claim(),
            &dead,
            NewMessage::new("stale")
        )
        .await
        .expect("stale move"));
    assert!(b
        .dead_letter(
            at(&s, "grp", "A"),
            &new[0].claim(),
            &dead,
            NewMessage::new("fresh")
        )
        .await
        .expect("fresh move"));
    assert!(!b
        .dead_letter(
            at(&s, "grp", "A"),
            &new[0].claim(),
            &dead,
            NewMessage::new("twice")
        )
        .await
        .expect("second move"));
    assert_eq!(drain_payloads(b, &dead, "dl").await, ["fresh"]);
    assert!(drain_payloads(b, &s, "grp").await.is_empty());
}
