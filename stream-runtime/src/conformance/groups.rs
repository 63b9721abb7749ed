//! Consumer groups: work shared within a group, every group gets everything, start
//! positions, concurrent creation.

use super::support::*;

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
                        // Handling takes a moment, so the workers share the load.
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
    // Time is the subject: a double delivery would show up within this window.
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

/// S5: `Earliest` after trimming starts at the first retained message; `Latest` on a stream
/// that does not exist yet sees its first message; `FromId(last)` sees only later ones.
pub async fn start_positions_at_the_edges(h: &Harness) {
    let b = &h.backend;
    let s = backend_stream();
    append(b, &s, &["a", "b", "c", "d"], Trim::NONE).await;
    append(
        b,
        &s,
        &["e"],
        Trim {
            max_len: 2,
            max_age: Duration::ZERO,
        },
    )
    .await;
    b.ensure_group(&s, "early", &StartPosition::Earliest)
        .await
        .expect("earliest");
    assert_eq!(drain_payloads(b, &s, "early").await, ["d", "e"]);

    let empty = backend_stream();
    b.ensure_group(&empty, "late", &StartPosition::Latest)
        .await
        .expect("latest on a missing stream");
    append(b, &empty, &["first"], Trim::NONE).await;
    assert_eq!(drain_payloads(b, &empty, "late").await, ["first"]);

    let s2 = backend_stream();
    let ids = append(b, &s2, &["x", "y"], Trim::NONE).await;
    b.ensure_group(&s2, "from", &StartPosition::FromId(ids[1].clone()))
        .await
        .expect("from the last id");
    assert!(drain_payloads(b, &s2, "from").await.is_empty());
    append(b, &s2, &["z"], Trim::NONE).await;
    assert_eq!(drain_payloads(b, &s2, "from").await, ["z"]);
}

/// S4, S5: many concurrent creators of one group: no error, one group, one cursor.
pub async fn concurrent_group_creation(h: &Harness) {
    let b = &h.backend;
    let s = backend_stream();
    append(b, &s, &["old"], Trim::NONE).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let b = b.clone();
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let start = if i % 2 == 0 {
                StartPosition::Earliest
            } else {
                StartPosition::Latest
            };
            b.ensure_group(&s, "racing", &start).await
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("ensure_group");
    }
    append(b, &s, &["new"], Trim::NONE).await;
    let first = drain_payloads(b, &s, "racing").await;
    assert!(
        first == ["old", "new"] || first == ["new"],
        "one cursor: {first:?}"
    );
    assert!(drain_payloads(b, &s, "racing").await.is_empty());
}
