//! A JetStream cluster of the test's own (three `nats-server -js` nodes on loopback ports,
//! streams with three replicas): the leader of the stream being consumed is killed
//! (SIGKILL) mid-run. Every acknowledged publish is handled; a message is handled more often
//! than it is stored only when its claim was in flight across the election (its settle
//! failed, so it came back after the visibility timeout).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use stream_runtime::admin::ReadFrom;
use stream_runtime::backend::nats::{names, NatsBackend};
use stream_runtime::backend::SharedBackend;
use stream_runtime::conformance::{eventually, unique_name, wait_for};
use stream_runtime::{Message, PublishOptions, Service, ServiceConfig, SubscribeOptions};
use stream_tests::{nats_stream_leader, ThrowawayNatsCluster};

const MESSAGES: usize = 300;
const CONCURRENCY: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_leader_killed_mid_run_loses_nothing() {
    let Some(cluster) = ThrowawayNatsCluster::start().await else {
        return;
    };
    let backend = NatsBackend::connect(&cluster.url())
        .await
        .expect("connect to the cluster");
    let client = backend.client().clone();
    let backend: SharedBackend = Arc::new(backend);
    let svc = Service::from_shared(
        backend,
        ServiceConfig::default().app(unique_name("natscluster")),
    );
    let full = svc.stream_name("orders").expect("name");
    let jetstream = names::jetstream_name(&full);

    let handled: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let handler = {
        let handled = handled.clone();
        move |m: Message| {
            *handled
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(String::from_utf8_lossy(&m.payload).into_owned())
                .or_default() += 1;
            async { Ok(()) }
        }
    };
    svc.subscribe(
        "orders",
        "g",
        handler,
        SubscribeOptions::new()
            .concurrency(CONCURRENCY)
            .visibility_timeout(Duration::from_secs(2))
            .poll_interval(Duration::from_millis(100)),
    )
    .await
    .expect("subscribe");

    let publisher = {
        let svc = svc.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..MESSAGES {
                let payload = format!("m{i}");
                // Retried until the cluster takes it (it refuses while it elects a leader).
                let published = eventually(Duration::from_secs(30), || async {
                    svc.publish("orders", payload.clone(), PublishOptions::new())
                        .await
                        .is_ok()
                })
                .await;
                assert!(published, "publishing {payload} kept failing");
                acked.push(payload);
                // Paced, so the kill lands in the middle of the run.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            acked
        })
    };
    let count = || handled.lock().unwrap_or_else(PoisonError::into_inner).len();
    wait_for("the first hundred messages", || count() >= 100).await;

    let leader = nats_stream_leader(&client, &jetstream)
        .await
        .expect("the stream's leader");
    cluster.kill(&leader).expect("killing the leader");
    let acked = publisher.await.expect("publisher");

    // Every acknowledged publish is handled.
    stream_tests::wait_all_handled(&acked, Duration::from_secs(60), |p| {
        handled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(p)
    })
    .await;
    let new_leader = nats_stream_leader(&client, &jetstream).await;
    assert!(
        new_leader.as_ref().is_some_and(|l| *l != leader),
        "a new leader took over from {leader}: {new_leader:?}"
    );
    let admin = svc.admin();
    let settled = eventually(Duration::from_secs(30), || async {
        admin
            .groups("orders")
            .await
            .is_ok_and(|groups| groups.iter().all(|g| g.pending == 0 && g.lag == 0))
    })
    .await;
    assert!(settled, "claims left unsettled after the election");

    // A publish retried after a lost answer may be stored twice: those copies are the
    // publisher's, not the consumer's. Duplicates are the handlings beyond the copies.
    let stored = admin
        .read("orders", &ReadFrom::Start, 10 * MESSAGES)
        .await
        .expect("read the stream");
    let mut copies: HashMap<String, usize> = HashMap::new();
    for m in &stored {
        *copies
            .entry(String::from_utf8_lossy(&m.payload).into_owned())
            .or_default() += 1;
    }
    let handled = handled
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let duplicates: usize = handled
        .iter()
        .map(|(p, n)| n.saturating_sub(copies.get(p).copied().unwrap_or(0)))
        .sum();
    let stored_twice = copies.values().filter(|n| **n > 1).count();
    println!(
        "leader {leader} killed: {} published, {} stored, {} handled, {duplicates} \
         duplicate handlings, {stored_twice} stored twice by publish retries; new leader {:?}",
        acked.len(),
        stored.len(),
        handled.values().sum::<usize>(),
        new_leader
    );
    // In flight across the election: at most the workers' claims, each redelivered once or
    // twice while the settles failed.
    assert!(
        duplicates <= 2 * CONCURRENCY,
        "{duplicates} duplicate handlings: more than the claims in flight"
    );
    svc.close().await.expect("close");
}
