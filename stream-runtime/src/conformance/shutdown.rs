//! Shutdown: closing drains or aborts in-flight handlers, a closed service refuses work, a
//! dropped handle does not stop its subscription.

use super::support::*;

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
                // Time is the subject: a handler still running when close is called.
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
