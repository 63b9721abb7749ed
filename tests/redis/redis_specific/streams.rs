//! How streams, groups and consumers look in Redis: plain fields, retry parking, trimmed
//! pending entries, consumer cleanup, wake-ups and groups across connections.

use super::*;

/// Other clients see a message as plain fields: `payload` and `h:<name>`.
#[tokio::test]
async fn entries_are_plain_fields() {
    let Some(backend) = shared_redis().await else {
        return;
    };
    let svc = service(backend);
    let id = svc
        .publish(
            "fields",
            "hello",
            PublishOptions::new()
                .header("trace", "t-1")
                .header("Kind", "A"),
        )
        .await
        .expect("publish");
    let key = stream_key(&svc.stream_name("fields").expect("name"));
    let mut conn = raw(&redis_url()).await;
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].0, id.as_str());
    let fields: BTreeSet<(String, String)> = entries[0].1.iter().cloned().collect();
    let expected: BTreeSet<(String, String)> =
        [("payload", "hello"), ("h:trace", "t-1"), ("h:Kind", "A")]
            .into_iter()
            .map(|(f, v)| (f.to_owned(), v.to_owned()))
            .collect();
    assert_eq!(fields, expected);
    let _: () = conn.del(&key).await.expect("DEL");
    svc.close().await.expect("close");
}

/// A retry delay longer than the visibility timeout holds: the parked entry is not
/// redelivered early by a reclaim, and its attempt count stays exact.
#[tokio::test]
async fn retry_delay_longer_than_visibility() {
    let Some(backend) = shared_redis().await else {
        return;
    };
    let svc = service(backend);
    let seen = Arc::new(Mutex::new(Vec::<(u32, Instant)>::new()));
    let handler = {
        let seen = seen.clone();
        move |m: Message| {
            seen.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((m.attempt, Instant::now()));
            async move {
                if m.attempt < 3 {
                    Err(HandlerError::retry("not yet"))
                } else {
                    Ok(())
                }
            }
        }
    };
    svc.subscribe(
        "longdelay",
        &unique_name("g"),
        handler,
        fast()
            .visibility_timeout(Duration::from_millis(150))
            .retry_delay(RetryDelay::Fixed(Duration::from_millis(700))),
    )
    .await
    .expect("subscribe");
    svc.publish("longdelay", "m", PublishOptions::new())
        .await
        .expect("publish");
    wait_for("three attempts", || {
        seen.lock().unwrap_or_else(PoisonError::into_inner).len() >= 3
    })
    .await;
    // Time is the subject: an early fourth delivery would show up within this window.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = seen.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let attempts: Vec<u32> = seen.iter().map(|(a, _)| *a).collect();
    assert_eq!(attempts, [1, 2, 3]);
    for pair in seen.windows(2) {
        let gap = pair[1].1 - pair[0].1;
        assert!(
            gap >= Duration::from_millis(650),
            "redelivered after {gap:?}"
        );
    }
    svc.close().await.expect("close");
}

/// A message trimmed while pending leaves the pending list (XCLAIM drops deleted
/// entries), and the claim that found it goes on to the live messages.
#[tokio::test]
async fn trimmed_pending_leaves_the_pel() {
    let Some(backend) = shared_redis().await else {
        return;
    };
    let stream = format!("{}.default.trim", unique_name("rt"));
    let group = unique_name("g");
    backend
        .ensure_group(&stream, &group, &StartPosition::Latest)
        .await
        .expect("group");
    let g = GroupRef {
        stream: &stream,
        group: &group,
        consumer: "c1",
    };
    backend
        .append(&stream, vec![NewMessage::new("old")], Trim::NONE)
        .await
        .expect("append");
    let claimed = backend
        .claim(g, 1, Duration::from_millis(50))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    let trim = Trim {
        max_len: 1,
        max_age: Duration::ZERO,
    };
    backend
        .append(&stream, vec![NewMessage::new("new")], trim)
        .await
        .expect("append");
    // Time is the subject: the 50 ms claim expires.
    tokio::time::sleep(Duration::from_millis(80)).await;
    let claimed = backend
        .claim(g, 10, Duration::from_millis(50))
        .await
        .expect("claim");
    let payloads: Vec<&[u8]> = claimed.iter().map(|c| &c.message.payload[..]).collect();
    assert_eq!(payloads, [b"new"]);
    let mut conn = raw(&redis_url()).await;
    let summary: (u64, Option<String>, Option<String>, redis::Value) = redis::cmd("XPENDING")
        .arg(stream_key(&stream))
        .arg(&group)
        .query_async(&mut conn)
        .await
        .expect("XPENDING");
    assert_eq!(summary.0, 1, "only the live claim is pending");
    backend.close().await.expect("close");
    let _: () = conn.del(stream_key(&stream)).await.expect("DEL");
}

/// Closing removes the consumers this process created once they hold nothing.
#[tokio::test]
async fn idle_consumers_removed_on_close() {
    let Some(backend) = shared_redis().await else {
        return;
    };
    let svc = service(backend);
    let group = unique_name("g");
    let rec = Recorder::new();
    svc.subscribe("consumers", &group, rec.handler(), fast().concurrency(3))
        .await
        .expect("subscribe");
    svc.publish("consumers", "m", PublishOptions::new())
        .await
        .expect("publish");
    rec.wait_len(1, "the message").await;
    let key = stream_key(&svc.stream_name("consumers").expect("name"));
    let mut conn = raw(&redis_url()).await;
    let count = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        let key = key.clone();
        let group = group.clone();
        async move {
            let consumers: Vec<redis::Value> = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&key)
                .arg(&group)
                .query_async(&mut conn)
                .await
                .expect("XINFO CONSUMERS");
            consumers.len()
        }
    };
    assert_eq!(count(&mut conn).await, 1);
    svc.close().await.expect("close");
    assert_eq!(count(&mut conn).await, 0);
    let _: () = conn.del(&key).await.expect("DEL");
}

/// A subscription that stops while the backend stays open has its (empty) consumer
/// removed after the idle-consumer timeout, by the claims of the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_subscription_consumer_swept() {
    let Some(backend) = redis_backend().await else {
        return;
    };
    let backend = backend.idle_consumer_timeout(Duration::from_millis(200));
    let svc = service(Arc::new(backend));
    let group = unique_name("g");
    let rec = Recorder::new();
    let stopping = svc
        .subscribe("sweep", &group, rec.handler(), fast())
        .await
        .expect("subscribe");
    svc.subscribe("sweep-other", &group, Recorder::new().handler(), fast())
        .await
        .expect("subscribe");
    svc.publish("sweep", "m", PublishOptions::new())
        .await
        .expect("publish");
    rec.wait_len(1, "the message").await;
    let key = stream_key(&svc.stream_name("sweep").expect("name"));
    let mut conn = raw(&redis_url()).await;
    let consumers = |mut conn: redis::aio::MultiplexedConnection, key: String, group: String| async move {
        let consumers: Vec<redis::Value> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&key)
            .arg(&group)
            .query_async(&mut conn)
            .await
            .expect("XINFO CONSUMERS");
        consumers.len()
    };
    assert_eq!(consumers(conn.clone(), key.clone(), group.clone()).await, 1);
    stopping.close().await;
    wait_for_async("the stopped consumer to be removed", || {
        let (conn, key, group) = (conn.clone(), key.clone(), group.clone());
        async move { consumers(conn, key, group).await == 0 }
    })
    .await;
    svc.close().await.expect("close");
    let _: () = conn.del(&key).await.expect("DEL");
}

/// An append through one connection wakes a consumer on another (a blocking XREAD),
/// long before its poll interval.
#[tokio::test]
async fn push_wakeup_across_connections() {
    let Some(consumer_backend) = shared_redis().await else {
        return;
    };
    let (consumer_backend, idle) = CallWatch::wrap(consumer_backend);
    let Some(producer_backend) = shared_redis().await else {
        return;
    };
    let app = unique_name("rt");
    let consumer_svc = Service::from_shared(consumer_backend, ServiceConfig::default().app(&app));
    let producer_svc = Service::from_shared(producer_backend, ServiceConfig::default().app(&app));
    let rec = Recorder::new();
    consumer_svc
        .subscribe(
            "xpush",
            &unique_name("g"),
            rec.handler(),
            fast().poll_interval(Duration::from_secs(60)),
        )
        .await
        .expect("subscribe");
    idle.wait_idle(".xpush").await;
    for i in 0..3 {
        let started = Instant::now();
        producer_svc
            .publish("xpush", format!("m{i}"), PublishOptions::new())
            .await
            .expect("publish");
        rec.wait_len(i + 1, "the pushed message").await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }
    consumer_svc.close().await.expect("close");
    producer_svc.close().await.expect("close");
}

/// Two connections (as two processes would) subscribed to one group share its work:
/// every message is handled once, and both get some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_shared_across_connections() {
    let Some(a) = shared_redis().await else {
        return;
    };
    let Some(b) = shared_redis().await else {
        return;
    };
    let app = unique_name("rt");
    let group = unique_name("g");
    let a = Service::from_shared(a, ServiceConfig::default().app(&app));
    let b = Service::from_shared(b, ServiceConfig::default().app(&app));
    let (rec_a, rec_b) = (Recorder::new(), Recorder::new());
    for (svc, rec) in [(&a, &rec_a), (&b, &rec_b)] {
        let rec = rec.clone();
        let slow = move |m: Message| {
            rec.record(&m);
            async {
                // Handling takes a moment, so both connections get a share.
                tokio::time::sleep(Duration::from_millis(2)).await;
                Ok(())
            }
        };
        svc.subscribe("shared", &group, slow, fast().concurrency(2))
            .await
            .expect("subscribe");
    }
    a.publish_batch(
        "shared",
        (0..200).map(|i| format!("m{i}")),
        PublishOptions::new(),
    )
    .await
    .expect("publish");
    wait_for("every message", || rec_a.len() + rec_b.len() >= 200).await;
    // Time is the subject: a stray double delivery would show up within this window.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut all = rec_a.payloads();
    all.extend(rec_b.payloads());
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!((all.len(), distinct.len()), (200, 200));
    assert!(
        !rec_a.is_empty() && !rec_b.is_empty(),
        "one side got nothing"
    );
    a.close().await.expect("close");
    b.close().await.expect("close");
}

/// A claim held by a consumer that went away (a crashed process) is reclaimed by
/// another process after the visibility timeout, with attempt 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_process_claims_are_reclaimed() {
    let Some(crashed) = shared_redis().await else {
        return;
    };
    let Some(survivor) = shared_redis().await else {
        return;
    };
    let svc = service(survivor);
    let stream = svc.stream_name("orphans").expect("name");
    let group = unique_name("g");
    crashed
        .ensure_group(&stream, &group, &StartPosition::Latest)
        .await
        .expect("group");
    crashed
        .append(&stream, vec![NewMessage::new("orphan")], Trim::NONE)
        .await
        .expect("append");
    let g = GroupRef {
        stream: &stream,
        group: &group,
        consumer: "crashed-process",
    };
    let claimed = crashed
        .claim(g, 1, Duration::from_millis(200))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    drop(crashed); // never acks
    let rec = Recorder::new();
    svc.subscribe(
        "orphans",
        &group,
        rec.handler(),
        fast().visibility_timeout(Duration::from_millis(200)),
    )
    .await
    .expect("subscribe");
    rec.wait_len(1, "the reclaimed orphan").await;
    let m = &rec.messages()[0];
    assert_eq!((&m.payload[..], m.attempt), (&b"orphan"[..], 2));
    svc.close().await.expect("close");
}

/// A batch ack settles exactly the claims still held, also when they are scattered among
/// many other pending entries of the same consumer (the script's one look at the pending
/// list over the batch's id range is cut at its count, so the rest are checked one by one):
/// a claim whose token is stale stays pending, and each acked id leaves the deadline set.
#[tokio::test]
async fn batch_ack_among_many_pending() {
    let Some(backend) = shared_redis().await else {
        return;
    };
    let stream = format!("{}.default.ackrange", unique_name("rt"));
    let group = unique_name("g");
    backend
        .ensure_group(&stream, &group, &StartPosition::Latest)
        .await
        .expect("group");
    let g = GroupRef {
        stream: &stream,
        group: &group,
        consumer: "c1",
    };
    let messages = (0..200).map(|i| NewMessage::new(format!("m{i}"))).collect();
    backend
        .append(&stream, messages, Trim::NONE)
        .await
        .expect("append");
    let claimed = backend
        .claim(g, 200, Duration::from_secs(30))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 200);
    let mut stale = claimed[50].claim();
    stale.token.0 += 1;
    // Out of order, as acks arrive from the workers; the range spans all 200 entries.
    let batch = [
        claimed[199].claim(),
        stale,
        claimed[0].claim(),
        claimed[100].claim(),
    ];
    backend.ack(g, &batch).await.expect("ack");
    let mut conn = raw(&redis_url()).await;
    let key = stream_key(&stream);
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(&key)
        .arg(&group)
        .arg("-")
        .arg("+")
        .arg(1000)
        .query_async(&mut conn)
        .await
        .expect("XPENDING");
    let pending: HashSet<String> = pending.into_iter().map(|p| p.0).collect();
    assert_eq!(
        pending.len(),
        197,
        "exactly the three held claims were acked"
    );
    for i in [0, 100, 199] {
        assert!(
            !pending.contains(claimed[i].message.id.as_str()),
            "{i} acked"
        );
    }
    assert!(
        pending.contains(claimed[50].message.id.as_str()),
        "a stale token acks nothing"
    );
    let deadlines_key = format!("{key}:deadlines:{group}");
    // The claim of 200 new messages has one deadline for all of them; no acked id has one
    // of its own.
    let members: Vec<String> = conn.zrange(&deadlines_key, 0, -1).await.expect("ZRANGE");
    assert_eq!(members.len(), 1, "one deadline for the claim: {members:?}");
    assert!(members[0].starts_with('@'), "{members:?}");
    for i in [0, 100, 199] {
        assert!(!members.iter().any(|m| m == claimed[i].message.id.as_str()));
    }
    backend.close().await.expect("close");
    let _: () = conn.del(&[key, deadlines_key]).await.expect("DEL");
}

/// A claim that reclaims some messages and reads new ones keeps no more than it was asked
/// for: the new ones read beyond are given back as never read (off the pending list, the
/// group's cursor set back), so the next claims get them as first deliveries, in order, and
/// the group's lag still counts them. The claims here are larger than the backend's small
/// claim (one script) where they must run the transaction; the later small ones take the
/// rest, and the first claim's single deadline member expires as a whole.
#[tokio::test]
async fn claim_gives_back_what_it_read_beyond_max() {
    use stream_runtime::backend::Claimed;
    let Some(backend) = shared_redis().await else {
        return;
    };
    let stream = format!("{}.default.giveback", unique_name("rt"));
    let group = unique_name("g");
    backend
        .ensure_group(&stream, &group, &StartPosition::Latest)
        .await
        .expect("group");
    let g = |consumer| GroupRef {
        stream: &stream,
        group: &group,
        consumer,
    };
    let batch = |prefix: &str, n: usize| -> Vec<NewMessage> {
        (0..n)
            .map(|i| NewMessage::new(format!("{prefix}{i:02}")))
            .collect()
    };
    let payloads = |claimed: &[Claimed]| -> Vec<(String, u32)> {
        claimed
            .iter()
            .map(|c| {
                (
                    String::from_utf8_lossy(&c.message.payload).into_owned(),
                    c.message.attempt,
                )
            })
            .collect()
    };
    let expect = |prefix: &str, range: std::ops::Range<usize>, attempt: u32| {
        range
            .map(|i| (format!("{prefix}{i:02}"), attempt))
            .collect::<Vec<_>>()
    };
    backend
        .append(&stream, batch("a", 17), Trim::NONE)
        .await
        .expect("append");
    // Claimed with no visibility: expired at once.
    let expired = backend
        .claim(g("c1"), 17, Duration::ZERO)
        .await
        .expect("claim");
    assert_eq!(expired.len(), 17);
    backend
        .append(&stream, batch("b", 20), Trim::NONE)
        .await
        .expect("append");
    let taken = backend
        .claim(g("c2"), 20, Duration::from_secs(30))
        .await
        .expect("claim");
    let mut want = expect("a", 0..17, 2);
    want.extend(expect("b", 0..3, 1));
    assert_eq!(
        payloads(&taken),
        want,
        "the 17 expired claims, then 3 new messages"
    );
    let lag = backend
        .list_groups(&stream)
        .await
        .expect("groups")
        .into_iter()
        .find(|info| info.group == group)
        .expect("the group")
        .lag;
    assert_eq!(lag, 17, "the 17 given back are still to be read");
    let mut rest = backend
        .claim(g("c2"), 10, Duration::from_secs(30))
        .await
        .expect("claim");
    rest.extend(
        backend
            .claim(g("c2"), 10, Duration::from_secs(30))
            .await
            .expect("claim"),
    );
    assert_eq!(
        payloads(&rest),
        expect("b", 3..20, 1),
        "the rest as first deliveries"
    );
    for claimed in [&taken, &rest] {
        let claims: Vec<_> = claimed.iter().map(|c| c.claim()).collect();
        backend.ack(g("c2"), &claims).await.expect("ack");
    }
    let pending = backend
        .list_pending(&stream, &group, 100)
        .await
        .expect("pending");
    assert!(pending.is_empty(), "{pending:?}");
    backend.close().await.expect("close");
}
