//! The NATS JetStream backend: the conformance suite against the shared server
//! (`STREAMS_TEST_NATS_URL`, default `nats://127.0.0.1:4222`).

stream_runtime::conformance_tests!(nats, stream_tests::shared_nats());

/// A three-node cluster of the test's own, its stream leader killed mid-run.
mod nats_cluster;

/// Cases only the NATS backend has.
mod nats_specific {
    use std::time::Duration;

    use stream_runtime::admin::ReadFrom;
    use stream_runtime::backend::nats::{dead_letter_msg_id, names};
    use stream_runtime::backend::{Backend, BackendAdmin, GroupRef};
    use stream_runtime::conformance::unique_name;
    use stream_runtime::{NewMessage, StartPosition, Trim};

    /// A dead-letter move cut off after its publish (the process died before removing the
    /// entry) is finished by the next one without a second dead letter: the publish is
    /// deduplicated by its `Nats-Msg-Id`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dead_letter_after_a_crash_between_publish_and_removal_is_not_doubled() {
        let Some(b) = stream_tests::nats_backend().await else {
            return;
        };
        let stream = format!("{}.orders", unique_name("natsdl"));
        let dead = format!("{stream}.dead");
        let at = GroupRef {
            stream: &stream,
            group: "g",
            consumer: "c",
        };
        b.ensure_group(&stream, "g", &StartPosition::Earliest)
            .await
            .expect("group");
        b.append(&stream, vec![NewMessage::new("m")], Trim::NONE)
            .await
            .expect("append");
        let first = b
            .claim(at, 1, Duration::from_millis(200))
            .await
            .expect("claim");
        assert_eq!(first.len(), 1);
        let seq: u64 = first[0].message.id.as_str().parse().expect("numeric id");
        // What the crashed process got done: the dead letter published, the entry kept.
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            dead_letter_msg_id(&stream, "g", seq).as_str(),
        );
        b.append(&dead, Vec::new(), Trim::NONE)
            .await
            .expect("dead-letter stream");
        let ack = b
            .client()
            .request_with_headers(names::subject(&dead), headers, "m".into())
            .await
            .expect("publishing the first dead letter");
        assert!(!ack.payload.is_empty());
        // The claim expires; the message comes back and is dead-lettered again.
        let second = loop {
            let claimed = b
                .claim(at, 1, Duration::from_secs(60))
                .await
                .expect("reclaim");
            if let Some(c) = claimed.into_iter().next() {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(second.message.attempt, 2);
        assert!(b
            .dead_letter(at, &second.claim(), &dead, NewMessage::new("m"))
            .await
            .expect("dead-letter"));
        let letters = b
            .read(&dead, &ReadFrom::Start, 10)
            .await
            .expect("read dead letters");
        assert_eq!(letters.len(), 1, "the dead letter was doubled");
        assert!(b
            .list_pending(&stream, "g", 10)
            .await
            .expect("pending")
            .is_empty());
        let deleted = b.delete_streams(&stream).await.expect("delete the streams");
        assert_eq!(
            deleted.len(),
            2,
            "the stream and its dead letters: {deleted:?}"
        );
    }

    /// The streams a test touches through `shared_nats` are deleted from the server (with
    /// their groups) when the test drops its backend.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn test_streams_are_deleted_when_the_test_drops_its_backend() {
        let Some(shared) = stream_tests::shared_nats().await else {
            return;
        };
        let stream = format!("{}.orders", unique_name("natsclean"));
        shared
            .ensure_group(&stream, "g", &StartPosition::Earliest)
            .await
            .expect("group");
        shared
            .append(&stream, vec![NewMessage::new("m")], Trim::NONE)
            .await
            .expect("append");
        drop(shared);
        let Some(b) = stream_tests::nats_backend().await else {
            return;
        };
        let left = b.list_streams(&stream).await.expect("list streams");
        assert!(left.is_empty(), "left on the server: {left:?}");
        let groups = b.list_groups(&stream).await.expect("list groups");
        assert!(groups.is_empty(), "group records left: {groups:?}");
    }

    /// `delete_idle_streams` deletes streams idle for longer than asked, and only those.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_streams_are_swept() {
        let Some(b) = stream_tests::nats_backend().await else {
            return;
        };
        let prefix = unique_name("natsidle");
        let stream = format!("{prefix}.orders");
        b.append(&stream, vec![NewMessage::new("m")], Trim::NONE)
            .await
            .expect("append");
        let kept = b
            .delete_idle_streams(&prefix, Duration::from_secs(3600))
            .await
            .expect("sweep");
        assert!(kept.is_empty(), "a fresh stream was swept: {kept:?}");
        assert_eq!(b.list_streams(&prefix).await.expect("list").len(), 1);
        let swept = b
            .delete_idle_streams(&prefix, Duration::ZERO)
            .await
            .expect("sweep");
        assert_eq!(swept, vec![stream.clone()]);
        assert!(b.list_streams(&prefix).await.expect("list").is_empty());
    }
}
