//! Trimming by length and age, and what happens to trimmed messages still pending.

use super::support::*;

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
    let handler = rec.then(move |m: Message| async move {
        if text(&m) == "victim" {
            Err(HandlerError::retry("keep it pending"))
        } else {
            Ok(())
        }
    });
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

/// S3, S7: a message trimmed between claim and settle: ack, retry and dead-letter are
/// harmless no-ops (no error, no dead letter of a message that is gone) and the group
/// goes on with the retained messages.
pub async fn trim_between_claim_and_settle(h: &Harness) {
    let b = &h.backend;
    let s = backend_stream();
    let dead = format!("{s}.dead");
    b.ensure_group(&s, "grp", &StartPosition::Earliest)
        .await
        .expect("group");
    b.ensure_group(&dead, "dl", &StartPosition::Earliest)
        .await
        .expect("dead-letter group");
    append(b, &s, &["m1", "m2", "m3"], Trim::NONE).await;
    let claimed = b
        .claim(at(&s, "grp", "A"), 3, Duration::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 3);
    append(
        b,
        &s,
        &["m4"],
        Trim {
            max_len: 1,
            max_age: Duration::ZERO,
        },
    )
    .await;
    b.ack(at(&s, "grp", "A"), &[claimed[0].claim()])
        .await
        .expect("ack of a trimmed message");
    let retried = b
        .retry(at(&s, "grp", "A"), &claimed[1].claim(), Duration::ZERO)
        .await
        .expect("retry of a trimmed message");
    let moved = b
        .dead_letter(
            at(&s, "grp", "A"),
            &claimed[2].claim(),
            &dead,
            NewMessage::new("m3"),
        )
        .await
        .expect("dead-letter of a trimmed message");
    // Whatever the backend answered, the trimmed messages never come back.
    let _ = (retried, moved);
    assert_eq!(drain_payloads(b, &s, "grp").await, ["m4"]);
}
