//! Redis Cluster faults, on a cluster of the test's own: a failover of the primary serving
//! a stream's slot in the middle of a run.

use stream_tests::ThrowawayCluster;

use super::faults::run_through;
use super::*;

/// A cluster of the test's own, a service on it, and the nodes of one stream's slot.
struct Fixture {
    cluster: ThrowawayCluster,
    svc: Service,
    /// The stream's key.
    key: String,
    /// The primary serving its slot, its pid, and a replica of it.
    primary: u16,
    pid: u32,
    replica: u16,
}

/// Waits until the node on `replica` is a primary.
async fn wait_promoted(cluster: &ThrowawayCluster, replica: u16) {
    let promoted = eventually(Duration::from_secs(30), || {
        std::future::ready(
            cluster
                .cli(replica, &["role"])
                .is_ok_and(|r| r.starts_with("master")),
        )
    })
    .await;
    assert!(promoted, "the replica was not promoted");
}

/// Waits until every group of `stream` has nothing pending and no lag, after `fault`.
async fn assert_settled(svc: &Service, stream: &str, fault: &str) {
    let admin = svc.admin();
    let settled = eventually(Duration::from_secs(30), || async {
        admin
            .groups(stream)
            .await
            .is_ok_and(|groups| groups.iter().all(|g| g.pending == 0 && g.lag == 0))
    })
    .await;
    assert!(settled, "claims left unsettled after {fault}");
}

/// Starts a cluster for `stream` (of the service's app), or `None` (a loud skip).
async fn own_cluster(stream: &str) -> Option<Fixture> {
    let cluster = match tokio::task::spawn_blocking(ThrowawayCluster::start).await {
        Ok(Ok(cluster)) => cluster,
        Ok(Err(e)) => return stream_tests::skip_or_fail("redis cluster", &e),
        Err(e) => panic!("starting the cluster: {e}"),
    };
    let backend: SharedBackend = Arc::new(
        RedisBackend::connect(&cluster.url())
            .await
            .expect("connect to the cluster"),
    );
    let svc = service(backend);
    let key = stream_key(&svc.stream_name(stream).expect("name"));
    let (primary, replicas) = cluster.serving(&key).expect("the slot's nodes");
    let replica = *replicas.first().expect("the primary has a replica");
    let pid = cluster.pid(primary).expect("the primary's pid");
    Some(Fixture {
        cluster,
        svc,
        key,
        primary,
        pid,
        replica,
    })
}

/// A replica takes over the primary serving the stream's slot mid-run (`CLUSTER FAILOVER`
/// on the replica), and the old primary is then killed (SIGKILL): every acknowledged
/// message is handled, and every claim is settled on the new primary (nothing is left
/// pending), as after a server restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_loses_nothing() {
    let Some(Fixture {
        cluster,
        svc,
        key,
        replica,
        pid: old_pid,
        ..
    }) = own_cluster("failover").await
    else {
        return;
    };

    run_through(&svc, "failover", async || {
        let answer = cluster
            .cli(replica, &["cluster", "failover"])
            .expect("CLUSTER FAILOVER");
        assert!(
            answer.contains("OK"),
            "CLUSTER FAILOVER answered {answer:?}"
        );
        wait_promoted(&cluster, replica).await;
        // The old primary, now a replica, crashes: connections to it break too.
        let killed = std::process::Command::new("kill")
            .args(["-9", &old_pid.to_string()])
            .status()
            .expect("kill");
        assert!(killed.success(), "kill -9 {old_pid} failed");
    })
    .await;
    assert_settled(&svc, "failover", "the failover").await;
    let (now_primary, _) = cluster.serving(&key).expect("the slot's nodes");
    assert_eq!(
        now_primary, replica,
        "the slot moved to the promoted replica"
    );
    svc.close().await.expect("close");
}

/// The slot of the stream being consumed moves to another primary mid-run (`CLUSTER
/// SETSLOT ... IMPORTING / MIGRATING`, `MIGRATE` of its keys, `SETSLOT ... NODE`), as a
/// `redis-cli --cluster reshard` does slot by slot: every acknowledged message is handled,
/// nothing is left pending, and the slot is served by its new primary. On the cluster the
/// tests of this binary share (a resharding keeps every node up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_slot_resharded_under_load_loses_nothing() {
    let Some(cluster) = stream_tests::shared_cluster() else {
        return;
    };
    let backend: SharedBackend = Arc::new(
        RedisBackend::connect(&cluster.url())
            .await
            .expect("connect to the cluster"),
    );
    let svc = service(backend);
    let key = stream_key(&svc.stream_name("reshard").expect("name"));
    let slot: u16 = cluster
        .cli(cluster.ports()[0], &["cluster", "keyslot", &key])
        .expect("CLUSTER KEYSLOT")
        .trim()
        .parse()
        .expect("a slot");
    let (from, _) = cluster.serving(&key).expect("the slot's nodes");
    let to = cluster
        .primaries()
        .expect("the primaries")
        .into_iter()
        .find(|p| *p != from)
        .expect("another primary");

    run_through(&svc, "reshard", async || {
        let moved = tokio::task::spawn_blocking(move || {
            stream_tests::shared_cluster()
                .expect("the cluster")
                .migrate_slot(slot, from, to)
        })
        .await
        .expect("migrating");
        moved.expect("the slot moves");
    })
    .await;
    assert_settled(&svc, "reshard", "the resharding").await;
    // Every node learns the new owner by gossip.
    let moved = eventually(Duration::from_secs(10), || {
        std::future::ready(cluster.serving(&key).is_ok_and(|(p, _)| p == to))
    })
    .await;
    assert!(moved, "the slot moved to the other primary");
    svc.close().await.expect("close");
}

/// `field:N` of `INFO replication` on node `port`.
fn replication_offset(cluster: &ThrowawayCluster, port: u16, field: &str) -> Option<u64> {
    cluster
        .cli(port, &["info", "replication"])
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|n| n.trim().parse().ok())
}

/// The primary serving the stream's slot is killed outright (SIGKILL, no `CLUSTER
/// FAILOVER`) while its claims are in flight; the cluster promotes its replica by itself
/// (node timeout 2 s). Every message is handled (the backlog was on the replica before the
/// kill: Redis replicates asynchronously, so a write acknowledged in the last instant before
/// a primary dies can be lost, which is Redis's own guarantee), publishing goes on on the new
/// primary, and every claim ends settled there: claims and acks the replica had not seen come
/// back as redeliveries, never as losses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_primary_killed_with_claims_in_flight_loses_nothing() {
    let Some(Fixture {
        cluster,
        svc,
        key,
        primary,
        replica,
        pid,
    }) = own_cluster("killed").await
    else {
        return;
    };

    let backlog = 400;
    svc.publish_batch(
        "killed",
        (0..backlog).map(|i| format!("b{i}")),
        PublishOptions::new(),
    )
    .await
    .expect("publish the backlog");
    let replicated = eventually(Duration::from_secs(10), || {
        let primary_at = replication_offset(&cluster, primary, "master_repl_offset");
        let replica_at = replication_offset(&cluster, replica, "slave_repl_offset");
        std::future::ready(primary_at.is_some() && primary_at == replica_at)
    })
    .await;
    assert!(replicated, "the replica did not catch up with the backlog");

    let handled = Arc::new(Mutex::new(HashSet::<String>::new()));
    let handler = {
        let handled = handled.clone();
        move |m: Message| {
            let handled = handled.clone();
            async move {
                // Some work, so claims are in flight when the primary dies.
                tokio::time::sleep(Duration::from_millis(2)).await;
                handled
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(String::from_utf8_lossy(&m.payload).into_owned());
                Ok(())
            }
        }
    };
    svc.subscribe(
        "killed",
        "g",
        handler,
        fast()
            .start(StartPosition::Earliest)
            .concurrency(4)
            .visibility_timeout(Duration::from_secs(1))
            .poll_interval(Duration::from_millis(50)),
    )
    .await
    .expect("subscribe");
    let count = || handled.lock().unwrap_or_else(PoisonError::into_inner).len();
    wait_for("the first hundred messages", || count() >= 100).await;
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success(), "kill -9 {pid} failed");
    assert!(
        count() < backlog,
        "the backlog was drained before the kill; nothing was in flight"
    );
    wait_promoted(&cluster, replica).await;

    // Publishing goes on, on the new primary.
    let after = 50;
    for i in 0..after {
        let payload = format!("a{i}");
        let published = eventually(Duration::from_secs(30), || async {
            svc.publish("killed", payload.clone(), PublishOptions::new())
                .await
                .is_ok()
        })
        .await;
        assert!(
            published,
            "publishing {payload} after the failover kept failing"
        );
    }
    let expected: Vec<String> = (0..backlog)
        .map(|i| format!("b{i}"))
        .chain((0..after).map(|i| format!("a{i}")))
        .collect();
    stream_tests::wait_all_handled(&expected, Duration::from_secs(60), |p| {
        handled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(p)
    })
    .await;
    assert_settled(&svc, "killed", "the failover").await;
    let (now_primary, _) = cluster.serving(&key).expect("the slot's nodes");
    assert_eq!(now_primary, replica, "the replica serves the slot");
    svc.close().await.expect("close");
}
