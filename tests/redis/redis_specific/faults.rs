//! Faults: an unreachable server, and reconnects after `CLIENT KILL`, a restart and a crash
//! of a throwaway server of the test's own.

use stream_tests::ThrowawayRedis;

use super::*;

#[tokio::test]
async fn unreachable_server_is_reported_redacted() {
    let err = RedisBackend::connect("redis://:hunter2@127.0.0.1:1/0")
        .await
        .expect_err("port 1 has no redis");
    let text = err.to_string();
    assert!(text.contains("redis://:***@127.0.0.1:1/0"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

/// Publishes `n` messages one by one, retrying each until the publish returns Ok, and
/// returns the payloads whose publish was acknowledged.
async fn publish_through_faults(svc: &Service, stream: &str, n: usize) -> HashSet<String> {
    let mut acked = HashSet::new();
    for i in 0..n {
        let payload = format!("m{i}");
        let last_error = Mutex::new(None);
        let published = eventually(Duration::from_secs(30), || async {
            match svc
                .publish(stream, payload.clone(), PublishOptions::new())
                .await
            {
                Ok(_) => true,
                Err(e) => {
                    *last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                    false
                }
            }
        })
        .await;
        if !published {
            let e = last_error
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner);
            panic!("publish {payload} kept failing: {e:?}");
        }
        acked.insert(payload);
        // Paced, so the fault lands in the middle of the publishing.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    acked
}

async fn run_through_fault(fault: impl AsyncFnOnce(&mut ThrowawayRedis)) {
    let Some(mut server) = ThrowawayRedis::start().await else {
        return;
    };
    let backend: SharedBackend = Arc::new(
        RedisBackend::connect(&server.url())
            .await
            .expect("connect to the throwaway server"),
    );
    let svc = service(backend);
    run_through(&svc, "faults", async || fault(&mut server).await).await;
    svc.close().await.expect("close");
}

/// Consumes `stream` while 400 messages are published one by one, runs `fault` once the
/// first hundred are handled, and checks every acknowledged publish is handled.
pub(super) async fn run_through(svc: &Service, stream: &str, fault: impl AsyncFnOnce()) {
    let handled = Arc::new(Mutex::new(HashSet::<String>::new()));
    let handler = {
        let handled = handled.clone();
        move |m: Message| {
            handled
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(String::from_utf8_lossy(&m.payload).into_owned());
            async { Ok(()) }
        }
    };
    svc.subscribe(
        stream,
        "g",
        handler,
        fast()
            .concurrency(4)
            .visibility_timeout(Duration::from_secs(1))
            .poll_interval(Duration::from_millis(50)),
    )
    .await
    .expect("subscribe");
    let publisher = {
        let svc = svc.clone();
        let stream = stream.to_owned();
        tokio::spawn(async move { publish_through_faults(&svc, &stream, 400).await })
    };
    let count = || handled.lock().unwrap_or_else(PoisonError::into_inner).len();
    wait_for("the first hundred messages", || count() >= 100).await;
    fault().await;
    let acked = publisher.await.expect("publisher");
    let missing = || -> Vec<String> {
        let handled = handled.lock().unwrap_or_else(PoisonError::into_inner);
        acked
            .iter()
            .filter(|p| !handled.contains(*p))
            .cloned()
            .collect()
    };
    if !eventually(Duration::from_secs(30), || {
        std::future::ready(missing().is_empty())
    })
    .await
    {
        let missing = missing();
        panic!(
            "{} acknowledged messages never handled, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
}

/// `CLIENT KILL TYPE normal` mid-stream: connections come back by themselves and every
/// acknowledged message is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_client_kill() {
    run_through_fault(async |server: &mut ThrowawayRedis| {
        let mut conn = raw(&server.url()).await;
        for _ in 0..3 {
            let killed: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("normal")
                .query_async(&mut conn)
                .await
                .expect("CLIENT KILL");
            assert!(killed > 0, "no client was killed");
            // Time is the subject: the kills spread over the run.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

/// A server restart mid-run (SHUTDOWN, then start again from the AOF): the group, its
/// cursor and pending claims survive, and every acknowledged message is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_server_restart() {
    run_through_fault(async |server: &mut ThrowawayRedis| {
        server.restart(false, Duration::from_secs(3)).await;
    })
    .await;
}

/// A server crash mid-run (SIGKILL; the throwaway server runs `appendfsync always`):
/// nothing acknowledged is lost, and every acknowledged message is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_server_crash() {
    run_through_fault(async |server: &mut ThrowawayRedis| {
        server.restart(true, Duration::from_millis(300)).await;
    })
    .await;
}

/// Data lost under a running consumer (a restart without persistence, an old snapshot,
/// a deleted key) does not stall the consumer silently forever: it recreates its group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_goes_on_after_its_group_is_lost() {
    let Some(backend) = shared_redis().await else {
        return;
    };
    let service = service(backend);
    let rec = Recorder::new();
    let consumer = service
        .subscribe("lost", "g", rec.handler(), fast())
        .await
        .expect("subscribe");
    service
        .publish("lost", "before", PublishOptions::new())
        .await
        .expect("publish");
    rec.wait_payload("before").await;
    // The server loses the stream with its group.
    let full = service.stream_name("lost").expect("name");
    let mut raw = raw(&redis_url()).await;
    let _: i64 = redis::cmd("DEL")
        .arg(stream_key(&full))
        .query_async(&mut raw)
        .await
        .expect("DEL");
    service
        .publish("lost", "after", PublishOptions::new())
        .await
        .expect("publish after the loss");
    rec.wait_payload("after").await;
    consumer.close().await;
    service.close().await.expect("close");
}
