//! Lease extension: `Backend::extend` keeps held claims and ignores stale ones, and the
//! engine's heartbeat (or a handler's own `Message::extend_lease`) keeps a handler that
//! runs longer than the visibility timeout to one delivery.

use super::support::*;

/// `extend` pushes a held claim's deadline out (a reclaim after the first deadline finds
/// nothing) without counting a delivery (the reclaim after the extended deadline has
/// attempt 2), and the extended claim still settles with its token.
pub async fn heartbeat_extend_keeps_held_claims(h: &Harness) {
    let b = &h.backend;
    let s = backend_stream();
    b.ensure_group(&s, "grp", &StartPosition::Earliest)
        .await
        .expect("group");
    append(b, &s, &["kept", "acked"], Trim::NONE).await;
    let claimed = b.claim(at(&s, "grp", "A"), 2, VIS).await.expect("claim");
    assert_eq!(claimed.len(), 2);
    let claims: Vec<Claim> = claimed.iter().map(|c| c.claim()).collect();
    let held = b
        .extend(at(&s, "grp", "A"), &claims, Duration::from_millis(1200))
        .await
        .expect("extend");
    assert_eq!(held, [true, true]);
    // Time is the subject: past the claims' first deadline (300 ms), within the extension.
    tokio::time::sleep(VIS + Duration::from_millis(200)).await;
    let early = b
        .claim(at(&s, "grp", "B"), 10, Duration::from_secs(60))
        .await
        .expect("claim after the first deadline");
    assert!(
        early.is_empty(),
        "extended claims were taken at their first deadline: {:?}",
        early.iter().map(|c| text(&c.message)).collect::<Vec<_>>()
    );
    // The extended claim still settles with its own token.
    b.ack(at(&s, "grp", "A"), &claims[1..]).await.expect("ack");
    let again = b
        .extend(at(&s, "grp", "A"), &claims, VIS)
        .await
        .expect("extend again");
    assert_eq!(again, [true, false], "an acked claim was extended");
    // Past the last extension's deadline the claim comes back, counted once.
    tokio::time::sleep(VIS + Duration::from_millis(100)).await;
    let back = b
        .claim(at(&s, "grp", "B"), 10, Duration::from_secs(60))
        .await
        .expect("claim after the extension");
    let seen: Vec<(String, u32)> = back
        .iter()
        .map(|c| (text(&c.message), c.message.attempt))
        .collect();
    assert_eq!(seen, [("kept".to_owned(), 2)]);
}

/// S7: `extend` with a stale token (the claim was taken over) does nothing and says so,
/// even beside a held claim in the same call; ids the backend never issued are not held.
pub async fn heartbeat_extend_ignores_stale_tokens(h: &Harness) {
    let b = &h.backend;
    let s = backend_stream();
    b.ensure_group(&s, "grp", &StartPosition::Earliest)
        .await
        .expect("group");
    append(b, &s, &["taken", "other"], Trim::NONE).await;
    let a = b
        .claim(at(&s, "grp", "A"), 1, Duration::from_millis(100))
        .await
        .expect("claim by A");
    assert_eq!(a.len(), 1);
    // Time is the subject: A's claim passes its deadline; B takes it over for VIS.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let taken = b
        .claim(at(&s, "grp", "B"), 2, VIS)
        .await
        .expect("claim by B");
    let names: Vec<String> = taken.iter().map(|c| text(&c.message)).collect();
    assert_eq!(names, ["taken", "other"]);
    let other = taken[1].claim();
    let never = Claim {
        id: MessageId::new("not-an-id"),
        token: a[0].token,
    };
    let held = b
        .extend(
            at(&s, "grp", "A"),
            &[a[0].claim(), never],
            Duration::from_secs(60),
        )
        .await
        .expect("extend stale");
    assert_eq!(
        held,
        [false, false],
        "a stale or unknown claim was extended"
    );
    let mixed = b
        .extend(
            at(&s, "grp", "B"),
            &[a[0].claim(), other],
            Duration::from_secs(60),
        )
        .await
        .expect("extend mixed");
    assert_eq!(mixed, [false, true]);
    // B's claim of "taken" kept its own deadline (VIS): the stale extension of 60 s did
    // not reach it, so it comes back after VIS; "other" (extended) does not.
    tokio::time::sleep(VIS + Duration::from_millis(150)).await;
    let back = b
        .claim(at(&s, "grp", "C"), 10, Duration::from_secs(60))
        .await
        .expect("claim by C");
    let names: Vec<String> = back.iter().map(|c| text(&c.message)).collect();
    assert_eq!(names, ["taken"], "the stale extension moved B's deadline");
}

/// Issue 16 part 1: visibility 200 ms, a handler of 1 s, the heartbeat on: exactly one
/// delivery, with two subscriptions of the group (in two services) free to take the
/// message over. The same handler without the heartbeat is delivered again (the control:
/// this setup does redeliver a handler that outlives its claim).
pub async fn heartbeat_long_handler_runs_once(h: &Harness) {
    async fn deliveries(h: &Harness, stream: &str, heartbeat: bool) -> Vec<u32> {
        let rec = Recorder::new();
        let done = Arc::new(AtomicUsize::new(0));
        let handler = || {
            let done = done.clone();
            rec.then(move |_m: Message| {
                let done = done.clone();
                async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    done.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            })
        };
        let g = group();
        let options = h
            .options()
            .concurrency(2)
            .visibility_timeout(Duration::from_millis(200))
            .heartbeat(heartbeat);
        let other = h.service_with(|c| c);
        let first = h
            .service
            .subscribe(stream, &g, handler(), options.clone())
            .await
            .expect("subscribe");
        let second = other
            .subscribe(stream, &g, handler(), options)
            .await
            .expect("subscribe a second service");
        publish(h, stream, "long").await;
        // Every delivery starts within the first one's run (1 s): after the first handler
        // finished and was acked, none can start any more.
        wait_for("the first handler to finish", || {
            done.load(Ordering::SeqCst) >= 1
        })
        .await;
        first.close().await;
        second.close().await;
        rec.messages().iter().map(|m| m.attempt).collect()
    }
    assert_eq!(
        deliveries(h, "heartbeat-on", true).await,
        [1],
        "with the heartbeat on, a 1 s handler under a 200 ms visibility ran more than once"
    );
    let control = deliveries(h, "heartbeat-off", false).await;
    assert!(
        control.len() >= 2,
        "without the heartbeat the 1 s handler was not redelivered ({control:?}): the \
         case above proves nothing"
    );
}

/// A handler extends its own claim (`Message::extend_lease`), heartbeat off: a 300 ms
/// visibility, an extension to 3 s, a handler of 1 s: one delivery. A message built by hand
/// holds no claim: its extension says so.
pub async fn heartbeat_handler_extends_its_own_claim(h: &Harness) {
    let rec = Recorder::new();
    let extended = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (extended, done) = (extended.clone(), done.clone());
        rec.then(move |m: Message| {
            let (extended, done) = (extended.clone(), done.clone());
            async move {
                let held = m.extend_lease(Duration::from_secs(3)).await;
                extended
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(held.map_err(|e| e.to_string()));
                tokio::time::sleep(Duration::from_secs(1)).await;
                done.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
    };
    let consumer = h
        .service
        .subscribe(
            "self-extend",
            &group(),
            handler,
            h.options()
                .concurrency(2)
                .visibility_timeout(Duration::from_millis(300)),
        )
        .await
        .expect("subscribe");
    publish(h, "self-extend", "long").await;
    wait_for("the handler to finish", || done.load(Ordering::SeqCst) >= 1).await;
    consumer.close().await;
    let attempts: Vec<u32> = rec.messages().iter().map(|m| m.attempt).collect();
    assert_eq!(attempts, [1], "the extended claim was redelivered");
    assert_eq!(
        *extended.lock().unwrap_or_else(PoisonError::into_inner),
        [Ok(true)]
    );
    let by_hand = Message::new(
        MessageId::new("1"),
        "x.y.z",
        &b"p"[..],
        Default::default(),
        SystemTime::now(),
        1,
    );
    assert!(!by_hand.extend_lease(VIS).await.expect("no call to make"));
}
