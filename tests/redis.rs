//! The Redis Streams backend: the conformance suite against the shared server
//! (`STREAMS_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`), plus Redis-specific cases:
//! entries readable by other clients, reconnects after `CLIENT KILL` and a server restart
//! (on a throwaway server of its own).

stream_runtime::conformance_tests!(redis, stream_tests::shared_redis());

/// Cases only the Redis backend has: its key and field layout, its retry parking, consumer
/// cleanup, push wake-ups across connections, and reconnects on a throwaway server.
mod redis_specific {
    use std::collections::{BTreeSet, HashSet};
    use std::process::{Child, Command, Stdio};
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::{Duration, Instant};

    use redis::AsyncCommands;
    use stream_runtime::backend::redis::{stream_key, RedisBackend};
    use stream_runtime::backend::{GroupRef, SharedBackend};
    use stream_runtime::conformance::{
        eventually, unique_name, wait_for, wait_for_async, Recorder,
    };
    use stream_runtime::{
        HandlerError, Message, NewMessage, PublishOptions, RetryDelay, Service, ServiceConfig,
        StartPosition, SubscribeOptions, Trim,
    };

    use stream_tests::{redis_backend, redis_url, shared_redis, CallWatch};

    fn service(backend: SharedBackend) -> Service {
        Service::from_shared(backend, ServiceConfig::default().app(unique_name("rt")))
    }

    fn fast() -> SubscribeOptions {
        SubscribeOptions::new()
            .poll_interval(Duration::from_millis(25))
            .visibility_timeout(Duration::from_secs(10))
            .shutdown_timeout(Duration::from_secs(5))
            .retry_delay(RetryDelay::Fixed(Duration::from_millis(20)))
    }

    async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
        redis::Client::open(url)
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("raw redis connection")
    }

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
        let consumers =
            |mut conn: redis::aio::MultiplexedConnection, key: String, group: String| async move {
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
        let consumer_svc =
            Service::from_shared(consumer_backend, ServiceConfig::default().app(&app));
        let producer_svc =
            Service::from_shared(producer_backend, ServiceConfig::default().app(&app));
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

    /// An unreachable server is an error naming the URL without its password.
    #[tokio::test]
    async fn unreachable_server_is_reported_redacted() {
        let err = RedisBackend::connect("redis://:hunter2@127.0.0.1:1/0")
            .await
            .expect_err("port 1 has no redis");
        let text = err.to_string();
        assert!(text.contains("redis://:***@127.0.0.1:1/0"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    /// A redis-server of this test's own, with AOF, on a free port in a temp directory.
    struct Throwaway {
        child: Option<Child>,
        port: u16,
        dir: std::path::PathBuf,
    }

    impl Throwaway {
        async fn start() -> Option<Throwaway> {
            let mut port = 0;
            for _ in 0..50 {
                let candidate = 16390 + (rand() % 2000) as u16;
                if std::net::TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
                    port = candidate;
                    break;
                }
            }
            if port == 0 {
                return stream_runtime::conformance::skip_or_fail("redis-server", "no free port");
            }
            let dir = stream_tests::temp_dir("redis-server");
            let mut server = Throwaway {
                child: None,
                port,
                dir,
            };
            if let Err(e) = server.spawn().await {
                return stream_runtime::conformance::skip_or_fail("redis-server", &e);
            }
            Some(server)
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.port)
        }

        async fn spawn(&mut self) -> Result<(), String> {
            let child = Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--save",
                    "",
                ])
                .arg("--dir")
                .arg(&self.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start redis-server: {e}"))?;
            self.child = Some(child);
            let url = self.url();
            let answers = eventually(Duration::from_secs(10), || async {
                let Ok(client) = redis::Client::open(url.as_str()) else {
                    return false;
                };
                let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                    return false;
                };
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut conn).await;
                pong.is_ok()
            })
            .await;
            if answers {
                Ok(())
            } else {
                Err("redis-server did not answer within 10 s".to_owned())
            }
        }

        /// Stops the server (SHUTDOWN, which finishes the AOF, or SIGKILL for a crash), waits
        /// for the process, and starts it again on the same directory.
        async fn restart(&mut self, crash: bool, down_for: Duration) {
            if crash {
                if let Some(child) = self.child.as_mut() {
                    let _ = child.kill();
                }
            } else {
                let mut conn = raw(&self.url()).await;
                let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").query_async(&mut conn).await;
            }
            if let Some(mut child) = self.child.take() {
                let _ = child.wait();
            }
            // Time is the subject: the server stays down this long.
            tokio::time::sleep(down_for).await;
            self.spawn().await.expect("restart redis-server");
        }
    }

    impl Drop for Throwaway {
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn rand() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        h.finish()
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

    async fn run_through_fault(fault: impl AsyncFnOnce(&mut Throwaway)) {
        let Some(mut server) = Throwaway::start().await else {
            return;
        };
        let backend: SharedBackend = Arc::new(
            RedisBackend::connect(&server.url())
                .await
                .expect("connect to the throwaway server"),
        );
        let svc = service(backend);
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
            "faults",
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
            tokio::spawn(async move { publish_through_faults(&svc, "faults", 400).await })
        };
        let count = || handled.lock().unwrap_or_else(PoisonError::into_inner).len();
        wait_for("the first hundred messages", || count() >= 100).await;
        fault(&mut server).await;
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
        svc.close().await.expect("close");
    }

    /// `CLIENT KILL TYPE normal` mid-stream: connections come back by themselves and every
    /// acknowledged message is handled.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn survives_client_kill() {
        run_through_fault(async |server: &mut Throwaway| {
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
        run_through_fault(async |server: &mut Throwaway| {
            server.restart(false, Duration::from_secs(3)).await;
        })
        .await;
    }

    /// A server crash mid-run (SIGKILL; the throwaway server runs `appendfsync always`):
    /// nothing acknowledged is lost, and every acknowledged message is handled.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn survives_server_crash() {
        run_through_fault(async |server: &mut Throwaway| {
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
}
