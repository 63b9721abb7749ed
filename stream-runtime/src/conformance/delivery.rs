//! Delivery: what a consumer receives (payload, headers, ids, order), push wake-ups,
//! concurrency limits and the payload cap.

use super::support::*;

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
    assert_eq!(&*m.stream, h.service.stream_name("orders").expect("name"));
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
    h.wait_idle("push").await;
    for i in 0..3 {
        let idle_before = h.calls(Call::ShortClaim, "push");
        let started = Instant::now();
        publish(h, "push", &format!("m{i}")).await;
        rec.wait_len(i + 1, "the pushed message").await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        wait_for("the consumer to go idle again", || {
            h.calls(Call::ShortClaim, "push") > idle_before
        })
        .await;
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
                // Time is the subject: handlers long enough to overlap.
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
