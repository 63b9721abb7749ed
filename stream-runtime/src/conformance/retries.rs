//! Retries and dead letters: attempts, retry delays, reclaims after the visibility timeout,
//! permanent errors, panics and hanging handlers.

use super::support::*;

/// S6, S8: a claim not settled within the visibility timeout is reclaimed, with attempt 2.
pub async fn reclaim_after_visibility_timeout(h: &Harness) {
    let rec = Recorder::new();
    let release = Arc::new(Notify::new());
    let handler = rec.then({
        let release = release.clone();
        move |m: Message| {
            let release = release.clone();
            async move {
                if m.attempt == 1 {
                    release.notified().await;
                }
                Ok(())
            }
        }
    });
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
    let handler = rec.then(move |m: Message| async move {
        if text(&m) == "flaky" && m.attempt < 3 {
            Err(HandlerError::retry(format!("fail {}", m.attempt)))
        } else {
            Ok(())
        }
    });
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
    let handler = rec.then(move |m: Message| async move {
        if m.attempt == 1 {
            Err(HandlerError::retry("once"))
        } else {
            Ok(())
        }
    });
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
    h.wait_idle("retrytimer").await;
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
    let handler = rec.then(move |m: Message| async move {
        Err(HandlerError::retry(format!("boom {}", m.attempt)))
    });
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
    assert_eq!(&*d.stream, format!("{full}.dead"));
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
    let handler =
        rec.then(|_m: Message| async move { Err(HandlerError::permanent("é".repeat(1000))) });
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
    let handler = rec.then(|_m: Message| async move { Err(HandlerError::retry("nope")) });
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
    let handler = rec.then(move |m: Message| async move {
        if m.attempt <= 6 {
            Err(HandlerError::retry("not yet"))
        } else {
            Ok(())
        }
    });
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
    let handler = rec.then(|_m: Message| std::future::pending::<Result<(), HandlerError>>());
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

/// S11: a panic counts as an error carrying the panic message; the worker lives on.
pub async fn panic_counts_as_error(h: &Harness) {
    let rec = Recorder::new();
    let handler = rec.then(move |m: Message| async move {
        if text(&m) == "explode" {
            panic!("kaboom {}", m.attempt);
        }
        Ok(())
    });
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
