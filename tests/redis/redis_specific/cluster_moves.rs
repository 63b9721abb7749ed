//! Moves between two slots of a Redis Cluster (a dead letter, a redrive), broken on purpose:
//! the move stops after each of its steps as a crash there would (the backend's fault hook),
//! the process's backend is dropped, and another one finishes the work. Each message must
//! end in its target exactly once, and never be lost. On the cluster the tests of this
//! binary share.

use stream_runtime::admin::ReadFrom;
use stream_runtime::backend::{Backend, BackendAdmin};

use super::*;

/// The lease of the moves here: short, so a move stopped mid-way is picked up again soon.
const LEASE: Duration = Duration::from_millis(300);

async fn cluster_backend() -> Option<RedisBackend> {
    let url = stream_tests::shared_cluster()?.url();
    Some(
        RedisBackend::connect(&url)
            .await
            .expect("connect to the cluster")
            .move_lease(LEASE),
    )
}

fn message(payload: &str) -> NewMessage {
    NewMessage::new(payload.as_bytes().to_vec())
}

/// Everything `stream` holds, as payloads.
async fn payloads(backend: &RedisBackend, stream: &str) -> Vec<String> {
    backend
        .read(stream, &ReadFrom::Start, 100)
        .await
        .expect("read")
        .into_iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}

/// The slot of a key, as the cluster computes it.
fn slot(key: &str) -> u16 {
    let cluster = stream_tests::shared_cluster().expect("the cluster");
    let port = cluster.ports()[0];
    cluster
        .cli(port, &["cluster", "keyslot", key])
        .expect("CLUSTER KEYSLOT")
        .trim()
        .parse()
        .expect("a slot number")
}

/// Two stream names whose keys live in different slots.
fn two_slots(a: &str, b: &str) -> (String, String) {
    loop {
        let (a, b) = (unique_name(a), unique_name(b));
        if slot(&stream_key(&a)) != slot(&stream_key(&b)) {
            return (a, b);
        }
    }
}

/// A dead-letter move stopped after each of its steps (claim leased; dead letter written;
/// original acknowledged), and the backend dropped as a crash would: the message is
/// delivered again after the lease unless its ack went through, the next dead letter finds
/// the first one written, and the dead-letter stream holds the message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_dead_letter_stopped_at_each_step_is_written_once() {
    for step in 1..=3u8 {
        let Some(first) = cluster_backend().await else {
            return;
        };
        let (stream, dead) = two_slots("dlsrc", "dldead");
        first
            .ensure_group(&stream, "g", &StartPosition::Earliest)
            .await
            .expect("group");
        first
            .append(&stream, vec![message("poison")], Trim::default())
            .await
            .expect("append");
        let group = GroupRef {
            stream: &stream,
            group: "g",
            consumer: "first",
        };
        // A visibility shorter than the lease: the lease keeps the claim while it moves.
        let claimed = first
            .claim(group, 1, Duration::from_millis(100))
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1, "step {step}: the message is claimed");
        let claim = claimed[0].claim();
        first.stop_moves_after(Some(step));
        let stopped = first
            .dead_letter(group, &claim, &dead, message("poison"))
            .await;
        assert!(
            stopped.is_err(),
            "step {step}: the fault hook stops the move"
        );
        first.close().await.expect("close");
        drop(first);

        let Some(second) = cluster_backend().await else {
            return;
        };
        let group = GroupRef {
            consumer: "second",
            ..group
        };
        if step < 3 {
            // Not acknowledged: delivered again once the lease passes.
            let again = Mutex::new(Vec::new());
            let redelivered = eventually(Duration::from_secs(10), || async {
                let got = second
                    .claim(group, 1, Duration::from_secs(60))
                    .await
                    .expect("claim again");
                let found = !got.is_empty();
                again
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(got);
                found
            })
            .await;
            assert!(redelivered, "step {step}: the message comes back");
            let claimed = again.into_inner().unwrap_or_else(PoisonError::into_inner);
            assert_eq!(claimed.len(), 1);
            assert_eq!(&claimed[0].message.payload[..], b"poison");
            let moved = second
                .dead_letter(group, &claimed[0].claim(), &dead, message("poison"))
                .await
                .expect("dead letter after the crash");
            assert!(moved, "step {step}: the second move goes through");
        } else {
            // Acknowledged before the stop: nothing is pending (checked below), so it never
            // comes back.
            let got = second
                .claim(group, 10, Duration::from_secs(60))
                .await
                .expect("claim");
            assert!(got.is_empty(), "step {step}: an acked message came back");
        }
        assert_eq!(
            payloads(&second, &dead).await,
            vec!["poison".to_owned()],
            "step {step}: the dead-letter stream holds the message once"
        );
        let pending = second
            .list_pending(&stream, "g", 10)
            .await
            .expect("pending");
        assert!(pending.is_empty(), "step {step}: left pending: {pending:?}");
        second.close().await.expect("close");
    }
}

/// A redrive between two slots stopped after each of its steps (lock taken; copy written;
/// original deleted): once the lock expires, a redrive from another backend finishes it,
/// and the target holds the message exactly once, the source no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_redrive_stopped_at_each_step_moves_once() {
    for step in 1..=3u8 {
        let Some(first) = cluster_backend().await else {
            return;
        };
        let (from, to) = two_slots("mvsrc", "mvdst");
        first
            .ensure_group(&from, "g", &StartPosition::Earliest)
            .await
            .expect("group");
        let ids = first
            .append(&from, vec![message("moved")], Trim::default())
            .await
            .expect("append");
        let id = ids[0].clone();
        first.stop_moves_after(Some(step));
        let stopped = first.move_message(&from, &id, &to, message("moved")).await;
        assert!(
            stopped.is_err(),
            "step {step}: the fault hook stops the move"
        );
        first.close().await.expect("close");
        drop(first);

        let Some(second) = cluster_backend().await else {
            return;
        };
        if step < 3 {
            let finished = eventually(Duration::from_secs(10), || async {
                second
                    .move_message(&from, &id, &to, message("moved"))
                    .await
                    .expect("move again")
                    .is_some()
            })
            .await;
            assert!(finished, "step {step}: the move is finished after the lock");
        } else {
            let again = second
                .move_message(&from, &id, &to, message("moved"))
                .await
                .expect("move again");
            assert_eq!(again, None, "step {step}: the original is gone already");
        }
        assert_eq!(
            payloads(&second, &to).await,
            vec!["moved".to_owned()],
            "step {step}: the target holds the message once"
        );
        assert!(
            payloads(&second, &from).await.is_empty(),
            "step {step}: the original is deleted"
        );
        second.close().await.expect("close");
    }
}

/// Eight backends redrive the same messages at once with a lock that expires almost at
/// once (1 ms), so redrives overlap mid-move: every message still ends in the target once,
/// and leaves the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_racing_redrives_with_expiring_locks_copy_once() {
    let Some(url) = stream_tests::shared_cluster().map(|c| c.url()) else {
        return;
    };
    let (from, to) = two_slots("racesrc", "racedst");
    let mut backends = Vec::new();
    for _ in 0..8 {
        backends.push(Arc::new(
            RedisBackend::connect(&url)
                .await
                .expect("connect")
                .move_lease(Duration::from_millis(1)),
        ));
    }
    let count = 20;
    let ids = backends[0]
        .append(
            &from,
            (0..count).map(|i| message(&format!("m{i}"))).collect(),
            Trim::default(),
        )
        .await
        .expect("append");
    for (i, id) in ids.iter().enumerate() {
        let left = eventually(Duration::from_secs(20), || async {
            let racers = backends.iter().map(|backend| {
                let backend = backend.clone();
                let (from, to, id) = (from.clone(), to.clone(), id.clone());
                tokio::spawn(async move {
                    // An error (the lock expired mid-move) is the expected loss of a race.
                    let _ = backend
                        .move_message(&from, &id, &to, message(&format!("m{i}")))
                        .await;
                })
            });
            for racer in racers.collect::<Vec<_>>() {
                racer.await.expect("racer");
            }
            let remaining = backends[0]
                .read(&from, &ReadFrom::Start, 100)
                .await
                .expect("read");
            !remaining.iter().any(|m| &m.id == id)
        })
        .await;
        assert!(left, "{id} never left the source");
    }
    let mut moved = payloads(&backends[0], &to).await;
    moved.sort();
    let mut expected: Vec<String> = (0..count).map(|i| format!("m{i}")).collect();
    expected.sort();
    assert_eq!(moved, expected, "each message in the target exactly once");
    for backend in &backends {
        backend.close().await.expect("close");
    }
}
