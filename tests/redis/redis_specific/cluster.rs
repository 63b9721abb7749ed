//! Redis Cluster faults, on a cluster of the test's own: a failover of the primary serving
//! a stream's slot in the middle of a run.

use stream_tests::ThrowawayCluster;

use super::faults::run_through;
use super::*;

/// A replica takes over the primary serving the stream's slot mid-run (`CLUSTER FAILOVER`
/// on the replica), and the old primary is then killed (SIGKILL): every acknowledged
/// message is handled, and every claim is settled on the new primary (nothing is left
/// pending), as after a server restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_loses_nothing() {
    let cluster = match tokio::task::spawn_blocking(ThrowawayCluster::start).await {
        Ok(Ok(cluster)) => cluster,
        Ok(Err(e)) => {
            let _: Option<()> = stream_tests::skip_or_fail("redis cluster", &e);
            return;
        }
        Err(e) => panic!("starting the cluster: {e}"),
    };
    let backend: SharedBackend = Arc::new(
        RedisBackend::connect(&cluster.url())
            .await
            .expect("connect to the cluster"),
    );
    let svc = service(backend);
    let key = stream_key(&svc.stream_name("failover").expect("name"));
    let (primary, replicas) = cluster.serving(&key).expect("the slot's nodes");
    let replica = *replicas.first().expect("the primary has a replica");
    let old_pid = cluster.pid(primary).expect("the primary's pid");

    run_through(&svc, "failover", async || {
        let answer = cluster
            .cli(replica, &["cluster", "failover"])
            .expect("CLUSTER FAILOVER");
        assert!(
            answer.contains("OK"),
            "CLUSTER FAILOVER answered {answer:?}"
        );
        let promoted = eventually(Duration::from_secs(30), || {
            std::future::ready(
                cluster
                    .cli(replica, &["role"])
                    .is_ok_and(|r| r.starts_with("master")),
            )
        })
        .await;
        assert!(promoted, "the replica was not promoted");
        // The old primary, now a replica, crashes: connections to it break too.
        let killed = std::process::Command::new("kill")
            .args(["-9", &old_pid.to_string()])
            .status()
            .expect("kill");
        assert!(killed.success(), "kill -9 {old_pid} failed");
    })
    .await;
    let admin = svc.admin();
    let settled = eventually(Duration::from_secs(30), || async {
        admin
            .groups("failover")
            .await
            .is_ok_and(|groups| groups.iter().all(|g| g.pending == 0 && g.lag == 0))
    })
    .await;
    assert!(settled, "claims left unsettled after the failover");
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
    let admin = svc.admin();
    let settled = eventually(Duration::from_secs(30), || async {
        admin
            .groups("reshard")
            .await
            .is_ok_and(|groups| groups.iter().all(|g| g.pending == 0 && g.lag == 0))
    })
    .await;
    assert!(settled, "claims left unsettled after the resharding");
    // Every node learns the new owner by gossip.
    let moved = eventually(Duration::from_secs(10), || {
        std::future::ready(cluster.serving(&key).is_ok_and(|(p, _)| p == to))
    })
    .await;
    assert!(moved, "the slot moved to the other primary");
    svc.close().await.expect("close");
}
