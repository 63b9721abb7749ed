//! Review of the engine and the backends: races between claim, ack, retry, trim and
//! dead-letter at the `Backend` level on every backend, odd names, start positions, and the
//! engine's close/panic paths.

mod pg;

use std::time::Duration;

use stream_runtime::backend::{Claim, GroupRef, SharedBackend};
use stream_runtime::conformance::unique_name;
use stream_runtime::{NewMessage, StartPosition, Trim};

fn g<'a>(stream: &'a str, group: &'a str, consumer: &'a str) -> GroupRef<'a> {
    GroupRef {
        stream,
        group,
        consumer,
    }
}

fn text(payload: &[u8]) -> String {
    String::from_utf8_lossy(payload).into_owned()
}

async fn append(b: &SharedBackend, stream: &str, payloads: &[&str], trim: Trim) -> Vec<String> {
    b.append(
        stream,
        payloads.iter().map(|p| NewMessage::new(*p)).collect(),
        trim,
    )
    .await
    .expect("append")
    .into_iter()
    .map(String::from)
    .collect()
}

/// Everything claimable now for the group, as payloads (claims with a long visibility).
async fn drain_payloads(b: &SharedBackend, stream: &str, group: &str) -> Vec<String> {
    let claimed = b
        .claim(g(stream, group, "drainer"), 100, Duration::from_secs(60))
        .await
        .expect("claim");
    claimed.iter().map(|c| text(&c.message.payload)).collect()
}

/// The visibility timeout of claims meant to expire.
const VIS: Duration = Duration::from_millis(300);

/// A stream name no other case uses.
fn stream() -> String {
    format!("{}.ns.s", unique_name("rc"))
}

/// S5: `Earliest` after trimming starts at the first retained message; `Latest` on a stream
/// that does not exist yet sees its first message; `FromId(last)` sees only later ones.
pub async fn start_positions_at_the_edges(b: SharedBackend) {
    let s = stream();
    append(&b, &s, &["a", "b", "c", "d"], Trim::NONE).await;
    append(
        &b,
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
    assert_eq!(drain_payloads(&b, &s, "early").await, ["d", "e"]);

    let empty = stream();
    b.ensure_group(&empty, "late", &StartPosition::Latest)
        .await
        .expect("latest on a missing stream");
    append(&b, &empty, &["first"], Trim::NONE).await;
    assert_eq!(drain_payloads(&b, &empty, "late").await, ["first"]);

    let s2 = stream();
    let ids = append(&b, &s2, &["x", "y"], Trim::NONE).await;
    b.ensure_group(&s2, "from", &StartPosition::FromId(ids[1].clone()))
        .await
        .expect("from the last id");
    assert!(drain_payloads(&b, &s2, "from").await.is_empty());
    append(&b, &s2, &["z"], Trim::NONE).await;
    assert_eq!(drain_payloads(&b, &s2, "from").await, ["z"]);
}

/// S7: one ack batch mixing a stale claim (taken over since) with fresh ones acks only the
/// fresh ones; the new owner's claim stays pending.
pub async fn mixed_stale_and_fresh_ack_batch(b: SharedBackend) {
    let s = stream();
    b.ensure_group(&s, "grp", &StartPosition::Earliest)
        .await
        .expect("group");
    append(&b, &s, &["m1", "m2", "m3"], Trim::NONE).await;
    // Consumer A claims all three; they expire. (Redis measures expiry by the reclaimer's
    // visibility timeout, so every claim here uses the same one.)
    let first = b.claim(g(&s, "grp", "A"), 3, VIS).await.expect("claim");
    assert_eq!(first.len(), 3);
    tokio::time::sleep(VIS + Duration::from_millis(50)).await;
    // Consumer B takes m1 over, then A takes m2 and m3 again (fresh tokens).
    let taken = b
        .claim(g(&s, "grp", "B"), 1, VIS)
        .await
        .expect("reclaim m1");
    assert_eq!(taken.len(), 1, "m1 reclaimed");
    assert_eq!(text(&taken[0].message.payload), "m1");
    assert_eq!(taken[0].message.attempt, 2);
    let rest = b
        .claim(g(&s, "grp", "A"), 2, VIS)
        .await
        .expect("reclaim m2, m3");
    assert_eq!(rest.len(), 2);
    let a = &first[..1];
    let mut batch: Vec<Claim> = vec![a[0].claim()];
    batch.extend(rest.iter().map(|c| c.claim()));
    b.ack(g(&s, "grp", "A"), &batch).await.expect("mixed ack");
    // m1 is still B's: B's retry works (so the stale ack did not remove it).
    assert!(b
        .retry(g(&s, "grp", "B"), &taken[0].claim(), Duration::ZERO)
        .await
        .expect("retry"));
    let again = b
        .claim(g(&s, "grp", "C"), 10, VIS)
        .await
        .expect("claim after retry");
    assert_eq!(
        again
            .iter()
            .map(|c| text(&c.message.payload))
            .collect::<Vec<_>>(),
        ["m1"],
        "m2 and m3 were acked, m1 came back"
    );
    assert_eq!(again[0].message.attempt, 3);
}

/// S3, S7: a message trimmed between claim and settle: ack, retry and dead-letter are
/// harmless no-ops (no error, no dead letter of a message that is gone) and the group
/// goes on with the retained messages.
pub async fn trim_between_claim_and_settle(b: SharedBackend) {
    let s = stream();
    let dead = format!("{s}.dead");
    b.ensure_group(&s, "grp", &StartPosition::Earliest)
        .await
        .expect("group");
    b.ensure_group(&dead, "dl", &StartPosition::Earliest)
        .await
        .expect("dead-letter group");
    append(&b, &s, &["m1", "m2", "m3"], Trim::NONE).await;
    let claimed = b
        .claim(g(&s, "grp", "A"), 3, Duration::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 3);
    append(
        &b,
        &s,
        &["m4"],
        Trim {
            max_len: 1,
            max_age: Duration::ZERO,
        },
    )
    .await;
    b.ack(g(&s, "grp", "A"), &[claimed[0].claim()])
        .await
        .expect("ack of a trimmed message");
    let retried = b
        .retry(g(&s, "grp", "A"), &claimed[1].claim(), Duration::ZERO)
        .await
        .expect("retry of a trimmed message");
    let moved = b
        .dead_letter(
            g(&s, "grp", "A"),
            &claimed[2].claim(),
            &dead,
            NewMessage::new("m3"),
        )
        .await
        .expect("dead-letter of a trimmed message");
    // Whatever the backend answered, the trimmed messages never come back.
    let _ = (retried, moved);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(drain_payloads(&b, &s, "grp").await, ["m4"]);
}

/// S7, S12: a dead-letter move racing a reclaim: the stale owner's move does nothing, the
/// new owner's moves exactly one copy.
pub async fn dead_letter_racing_reclaim(b: SharedBackend) {
    let s = stream();
    let dead = format!("{s}.dead");
    b.ensure_group(&s, "grp", &StartPosition::Earliest)
        .await
        .expect("group");
    b.ensure_group(&dead, "dl", &StartPosition::Earliest)
        .await
        .expect("dead-letter group");
    append(&b, &s, &["m"], Trim::NONE).await;
    let old = b.claim(g(&s, "grp", "A"), 1, VIS).await.expect("claim");
    tokio::time::sleep(VIS + Duration::from_millis(50)).await;
    let new = b
        .claim(g(&s, "grp", "A"), 1, VIS)
        .await
        .expect("reclaim by the same consumer");
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].message.attempt, 2);
    assert!(!b
        .dead_letter(
            g(&s, "grp", "A"),
            &old[0].claim(),
            &dead,
            NewMessage::new("stale")
        )
        .await
        .expect("stale move"));
    assert!(b
        .dead_letter(
            g(&s, "grp", "A"),
            &new[0].claim(),
            &dead,
            NewMessage::new("fresh")
        )
        .await
        .expect("fresh move"));
    assert!(!b
        .dead_letter(
            g(&s, "grp", "A"),
            &new[0].claim(),
            &dead,
            NewMessage::new("twice")
        )
        .await
        .expect("second move"));
    assert_eq!(drain_payloads(&b, &dead, "dl").await, ["fresh"]);
    assert!(drain_payloads(&b, &s, "grp").await.is_empty());
}

/// S4, S5: many concurrent creators of one group: no error, one group, one cursor.
pub async fn concurrent_group_creation(b: SharedBackend) {
    let s = stream();
    append(&b, &s, &["old"], Trim::NONE).await;
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
    append(&b, &s, &["new"], Trim::NONE).await;
    let first = drain_payloads(&b, &s, "racing").await;
    assert!(
        first == ["old", "new"] || first == ["new"],
        "one cursor: {first:?}"
    );
    assert!(drain_payloads(&b, &s, "racing").await.is_empty());
}

/// S1: names with upper case, dots, quotes, braces, percent signs, unicode and 200 bytes
/// reach the backend safely and stay distinct.
pub async fn odd_names(b: SharedBackend) {
    let base = unique_name("rc");
    let long = format!("{base}.{}", "é".repeat((200 - base.len() - 1) / 2));
    assert!(long.len() <= 200);
    let names = [
        format!("{base}.NS.Orders.V2"),
        format!("{base}.ns.it's\"quoted\";--"),
        format!("{base}.ns.{{brace}}%25%"),
        format!("{base}.ns.日本語-ストリーム"),
        long,
    ];
    for (i, name) in names.iter().enumerate() {
        let group = format!("Gr'{i}{{}}%\"é");
        b.ensure_group(name, &group, &StartPosition::Earliest)
            .await
            .unwrap_or_else(|e| panic!("group on {name:?}: {e}"));
        append(&b, name, &[&format!("p{i}")], Trim::NONE).await;
    }
    for (i, name) in names.iter().enumerate() {
        let group = format!("Gr'{i}{{}}%\"é");
        let claimed = b
            .claim(g(name, &group, "c"), 10, Duration::from_secs(60))
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 1, "{name:?}");
        assert_eq!(text(&claimed[0].message.payload), format!("p{i}"));
        assert_eq!(claimed[0].message.stream, *name);
        b.ack(g(name, &group, "c"), &[claimed[0].claim()])
            .await
            .expect("ack");
    }
}

/// "Never" durations (`Duration::MAX` poll interval, visibility, retry delay and shutdown
/// timeout) work instead of panicking the dispatcher or failing every claim.
pub async fn never_durations(b: SharedBackend) {
    use stream_runtime::conformance::Recorder;
    use stream_runtime::{
        HandlerError, Message, PublishOptions, RetryDelay, Service, ServiceConfig, SubscribeOptions,
    };
    let service = Service::from_shared(b, ServiceConfig::default().app(unique_name("rc")));
    let rec = Recorder::new();
    let handler = {
        let rec = rec.clone();
        move |m: Message| {
            rec.record(&m);
            let fail = m.payload[..] == b"fail"[..];
            async move {
                if fail {
                    Err(HandlerError::retry("again, some day"))
                } else {
                    Ok(())
                }
            }
        }
    };
    let options = SubscribeOptions::new()
        .poll_interval(Duration::MAX)
        .visibility_timeout(Duration::MAX)
        .shutdown_timeout(Duration::MAX)
        .retry_delay(RetryDelay::Fixed(Duration::MAX));
    let consumer = service
        .subscribe("never", "g", handler, options)
        .await
        .expect("subscribe");
    for payload in ["fail", "ok"] {
        service
            .publish("never", payload, PublishOptions::new())
            .await
            .expect("publish");
    }
    rec.wait_len(2, "both messages").await;
    let report = tokio::time::timeout(Duration::from_secs(5), consumer.close())
        .await
        .expect("close returns");
    assert_eq!(report.aborted, 0);
}

/// S6, S13: a claim is hidden until ITS deadline (claim time + the visibility it was claimed
/// with), whatever visibility the worker trying to reclaim it uses: a short-visibility worker
/// must not steal a long claim early, and a long-visibility worker may take an expired short
/// claim. (Workers of one group can differ: two services, or a rolling deploy changing
/// `visibility_timeout`.)
pub async fn claim_deadline_is_the_claimers(b: SharedBackend) {
    let s = stream();
    b.ensure_group(&s, "grp", &StartPosition::Earliest)
        .await
        .expect("group");
    append(&b, &s, &["long", "short"], Trim::NONE).await;
    let long = b
        .claim(g(&s, "grp", "A"), 1, Duration::from_secs(60))
        .await
        .expect("claim long");
    let short = b
        .claim(g(&s, "grp", "A"), 1, Duration::from_millis(100))
        .await
        .expect("claim short");
    assert_eq!((long.len(), short.len()), (1, 1));
    tokio::time::sleep(Duration::from_millis(250)).await;
    // A worker with a 10 ms visibility: only "short" has passed its deadline.
    let stolen = b
        .claim(g(&s, "grp", "B"), 10, Duration::from_millis(10))
        .await
        .expect("claim with a short visibility");
    assert_eq!(
        stolen
            .iter()
            .map(|c| text(&c.message.payload))
            .collect::<Vec<_>>(),
        ["short"],
        "the 60 s claim was taken after 250 ms"
    );
    // A worker with a 60 s visibility takes an expired 100 ms claim.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let taken = b
        .claim(g(&s, "grp", "C"), 10, Duration::from_secs(60))
        .await
        .expect("claim with a long visibility");
    assert_eq!(
        taken
            .iter()
            .map(|c| text(&c.message.payload))
            .collect::<Vec<_>>(),
        ["short"],
        "the expired 10 ms claim was not taken"
    );
}

macro_rules! probes {
    ($module:ident, $factory:expr; $($case:ident),* $(,)?) => {
        mod $module {
            #[allow(unused_imports)]
            use std::sync::Arc;
            #[allow(unused_imports)]
            use stream_runtime::backend::{Backend, SharedBackend};
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(backend) = $factory.await else { return };
                    super::$case(backend.clone()).await;
                    backend.close().await.expect("close");
                }
            )*
        }
    };
    ($($module:ident => $factory:expr),* $(,)?) => {
        $(
            probes!($module, $factory;
                start_positions_at_the_edges,
                mixed_stale_and_fresh_ack_batch,
                trim_between_claim_and_settle,
                dead_letter_racing_reclaim,
                concurrent_group_creation,
                odd_names,
                never_durations,
            );
        )*
    };
}

fn sqlite_url() -> String {
    let dir = std::env::temp_dir().join(format!("stream-tests-review-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    format!(
        "sqlite://{}",
        dir.join(format!("{}.db", unique_name("rc"))).display()
    )
}

fn redis_url() -> String {
    std::env::var("STREAMS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

probes! {
    memory => async {
        Some(Arc::new(stream_runtime::backend::memory::MemoryBackend::new()) as SharedBackend)
    },
    sqlite => async {
        Some(stream_runtime::backend::connect(&super::sqlite_url()).await.expect("sqlite"))
    },
    postgres => crate::pg::shared_backend(),
    redis => async {
        match stream_runtime::backend::redis::RedisBackend::connect(&super::redis_url()).await {
            Ok(b) => Some(Arc::new(b) as SharedBackend),
            Err(e) => stream_runtime::conformance::skip_or_fail("redis", &e.to_string()),
        }
    },
}

/// The engine's close and panic paths, on the memory backend (and a wrapper that makes its
/// claims hang, as an unreachable server would).
mod engine {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use stream_runtime::backend::memory::MemoryBackend;
    use stream_runtime::backend::{
        Backend, BoxFuture, Claim, Claimed, GroupRef, SharedBackend, Wakeup,
    };
    use stream_runtime::conformance::{wait_for, Recorder};
    use stream_runtime::{
        Message, MessageId, NewMessage, PublishOptions, Result, RetryDelay, Service, ServiceConfig,
        StartPosition, SubscribeOptions, Trim,
    };

    /// The memory backend, with claims that never answer once `hang` is set, and that
    /// answer 100 ms late (a slow round trip) while `slow` is set.
    #[derive(Default)]
    struct HangingClaims {
        inner: MemoryBackend,
        hang: AtomicBool,
        hanging: AtomicUsize,
        slow: AtomicBool,
    }

    stream_runtime::delegate_backend_admin!(HangingClaims, inner);

    impl Backend for HangingClaims {
        fn name(&self) -> &'static str {
            "hanging"
        }
        fn append<'a>(
            &'a self,
            stream: &'a str,
            messages: Vec<NewMessage>,
            trim: Trim,
        ) -> BoxFuture<'a, Result<Vec<MessageId>>> {
            self.inner.append(stream, messages, trim)
        }
        fn ensure_group<'a>(
            &'a self,
            stream: &'a str,
            group: &'a str,
            start: &'a StartPosition,
        ) -> BoxFuture<'a, Result<()>> {
            self.inner.ensure_group(stream, group, start)
        }
        fn claim<'a>(
            &'a self,
            group: GroupRef<'a>,
            max: usize,
            visibility: Duration,
        ) -> BoxFuture<'a, Result<Vec<Claimed>>> {
            if self.hang.load(Ordering::SeqCst) {
                self.hanging.fetch_add(1, Ordering::SeqCst);
                return Box::pin(std::future::pending());
            }
            if self.slow.load(Ordering::SeqCst) {
                return Box::pin(async move {
                    let claimed = self.inner.claim(group, max, visibility).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    claimed
                });
            }
            self.inner.claim(group, max, visibility)
        }
        fn ack<'a>(
            &'a self,
            group: GroupRef<'a>,
            claims: &'a [Claim],
        ) -> BoxFuture<'a, Result<()>> {
            self.inner.ack(group, claims)
        }
        fn retry<'a>(
            &'a self,
            group: GroupRef<'a>,
            claim: &'a Claim,
            delay: Duration,
        ) -> BoxFuture<'a, Result<bool>> {
            self.inner.retry(group, claim, delay)
        }
        fn dead_letter<'a>(
            &'a self,
            group: GroupRef<'a>,
            claim: &'a Claim,
            to: &'a str,
            message: NewMessage,
        ) -> BoxFuture<'a, Result<bool>> {
            self.inner.dead_letter(group, claim, to, message)
        }
        fn release<'a>(
            &'a self,
            group: GroupRef<'a>,
            claims: &'a [Claim],
        ) -> BoxFuture<'a, Result<()>> {
            self.inner.release(group, claims)
        }
        fn wakeup(&self, stream: &str) -> Wakeup {
            self.inner.wakeup(stream)
        }
        fn close(&self) -> BoxFuture<'_, Result<()>> {
            self.inner.close()
        }
    }

    fn fast() -> SubscribeOptions {
        SubscribeOptions::new()
            .poll_interval(Duration::from_millis(10))
            .visibility_timeout(Duration::from_secs(30))
            .shutdown_timeout(Duration::from_millis(300))
            .retry_delay(RetryDelay::Fixed(Duration::from_millis(10)))
    }

    /// S15: close while a claim is in flight on a backend that stopped answering returns
    /// within the shutdown timeout instead of waiting for the claim forever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_while_a_claim_hangs_keeps_the_shutdown_timeout() {
        let backend = Arc::new(HangingClaims::default());
        let service =
            Service::from_shared(backend.clone() as SharedBackend, ServiceConfig::default());
        let consumer = service
            .subscribe("s", "g", Recorder::new().handler(), fast())
            .await
            .expect("subscribe");
        backend.hang.store(true, Ordering::SeqCst);
        wait_for("a hanging claim", || {
            backend.hanging.load(Ordering::SeqCst) > 0
        })
        .await;
        let started = Instant::now();
        let report = tokio::time::timeout(Duration::from_secs(5), consumer.close())
            .await
            .expect("close returned within the shutdown timeout");
        assert_eq!(report.aborted, 0);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        tokio::time::timeout(Duration::from_secs(5), service.close())
            .await
            .expect("service close returned")
            .expect("service close");
    }

    /// S9, S14: a retry that falls due while a claim is in flight is claimed when that
    /// claim returns, not at the next poll (here: an hour away).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retry_due_during_a_slow_claim_is_not_left_to_the_poll() {
        let backend = Arc::new(HangingClaims::default());
        backend.slow.store(true, Ordering::SeqCst);
        let service =
            Service::from_shared(backend.clone() as SharedBackend, ServiceConfig::default());
        let rec = Recorder::new();
        let handler = {
            let rec = rec.clone();
            move |m: Message| {
                rec.record(&m);
                let first = m.attempt == 1;
                async move {
                    if first {
                        Err(stream_runtime::HandlerError::retry("once"))
                    } else {
                        Ok(())
                    }
                }
            }
        };
        let options = fast()
            .poll_interval(Duration::from_secs(3600))
            .retry_delay(RetryDelay::Fixed(Duration::from_millis(30)));
        let consumer = service
            .subscribe("s", "g", handler, options)
            .await
            .expect("subscribe");
        service
            .publish("s", "m", PublishOptions::new())
            .await
            .expect("publish");
        rec.wait_len(2, "the retry").await;
        consumer.close().await;
        service.close().await.expect("close");
    }

    /// S13, bad input: an absurd concurrency (a typo in a config) neither panics the
    /// dispatcher (tokio's semaphore limit) nor makes a claim allocate a permit per worker.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn huge_concurrency_works() {
        let service = Service::memory();
        let rec = Recorder::new();
        let consumer = service
            .subscribe("s", "g", rec.handler(), fast().concurrency(usize::MAX))
            .await
            .expect("subscribe");
        service
            .publish_batch("s", ["a", "b", "c"], PublishOptions::new())
            .await
            .expect("publish");
        rec.wait_len(3, "three messages").await;
        assert_eq!(consumer.close().await.aborted, 0);
        service.close().await.expect("close");
    }

    /// S15: a close whose future is dropped half-way (a timeout around it) does not make the
    /// next close return at once with an empty report while handlers still run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_survives_a_cancelled_close() {
        let service = Service::memory();
        let started = Arc::new(AtomicBool::new(false));
        let handler = {
            let started = started.clone();
            move |_m: Message| {
                started.store(true, Ordering::SeqCst);
                std::future::pending::<std::result::Result<(), stream_runtime::HandlerError>>()
            }
        };
        let consumer = service
            .subscribe("s", "g", handler, fast())
            .await
            .expect("subscribe");
        service
            .publish("s", "m", PublishOptions::new())
            .await
            .expect("publish");
        wait_for("the handler", || started.load(Ordering::SeqCst)).await;
        assert!(
            tokio::time::timeout(Duration::from_millis(20), consumer.close())
                .await
                .is_err(),
            "close waits for the drain"
        );
        let report = consumer.close().await;
        assert_eq!(report.aborted, 1, "the second close waited for the drain");
        service.close().await.expect("close");
    }

    /// S11: a handler that panics before returning its future (outside its `async` block)
    /// counts as an error: retried after the retry delay, not after the visibility timeout,
    /// and not reported as aborted at close.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn panic_before_the_future_counts_as_an_error() {
        let service = Service::memory();
        let rec = Recorder::new();
        let handler = {
            let rec = rec.clone();
            move |m: Message| {
                rec.record(&m);
                if m.attempt == 1 {
                    panic!("boom before the future");
                }
                std::future::ready(Ok(()))
            }
        };
        let consumer = service
            .subscribe("s", "g", handler, fast())
            .await
            .expect("subscribe");
        service
            .publish("s", "m", PublishOptions::new())
            .await
            .expect("publish");
        rec.wait_len(2, "the retry after the panic").await;
        assert_eq!(rec.messages()[1].attempt, 2);
        assert_eq!(consumer.close().await.aborted, 0);
        service.close().await.expect("close");
    }
}

/// Bad input and faults: a password never shows in an error, however the URL spells it.
mod redaction {
    use stream_runtime::backend::{connect, redact_url};

    #[test]
    fn passwords_are_redacted_however_spelled() {
        for (url, shown) in [
            (
                "postgres://app:s3cret@db:5432/x",
                "postgres://app:***@db:5432/x",
            ),
            ("postgres://app:s3#cret@db/x", "postgres://app:***@db/x"),
            ("postgres://app:s3/cret@db/x", "postgres://app:***@db/x"),
            ("postgres://app:s3?cret@db/x", "postgres://app:***@db/x"),
            ("postgres://app:s3@cret@db/x", "postgres://app:***@db/x"),
            (
                "postgres://app@db/x?sslmode=disable&password=s3cret",
                "postgres://app@db/x?sslmode=disable&password=***",
            ),
            (
                "redis+unix:///tmp/r.sock?pass=s3cret",
                "redis+unix:///tmp/r.sock?pass=***",
            ),
            (
                "redis://:s3cret@localhost:6379/0",
                "redis://:***@localhost:6379/0",
            ),
            (
                "sqlite://streams.db?mode=rwc",
                "sqlite://streams.db?mode=rwc",
            ),
            ("sqlite:streams.db", "sqlite:streams.db"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
            assert!(!redact_url(url).contains("s3"), "{url}");
        }
    }

    /// Unreachable servers: the error names the server and hides the password, including
    /// whatever the client libraries put in their own error texts.
    #[tokio::test]
    async fn unreachable_backends_hide_the_password() {
        for url in [
            "postgres://app:s3cret@127.0.0.1:1/db",
            "postgres://app@127.0.0.1:1/db?password=s3cret",
            "postgres://app:s3#cret@127.0.0.1:1/db",
            "redis://:s3cret@127.0.0.1:1",
            "redis://:s3#cret@127.0.0.1:1",
        ] {
            let error = match connect(url).await {
                Ok(_) => panic!("{url} connected"),
                Err(e) => e.to_string(),
            };
            assert!(!error.contains("s3"), "{url}: {error}");
            assert!(
                error.contains("127.0.0.1") || error.contains("URL"),
                "{url}: {error}"
            );
        }
    }
}

/// S1: the default dead-letter stream `<full>.dead` must be readable with the same
/// subscribe call, so a stream whose dead-letter name passes 200 bytes is refused up front.
mod names {
    use stream_runtime::conformance::Recorder;
    use stream_runtime::{Error, Service, SubscribeOptions};

    #[tokio::test]
    async fn dead_letter_name_over_the_limit_is_refused() {
        let service = Service::memory();
        // "app.default." is 12 bytes: a 188-byte name makes a full name of exactly 200.
        let name = "x".repeat(188);
        let result = service
            .subscribe(
                &name,
                "g",
                Recorder::new().handler(),
                SubscribeOptions::new(),
            )
            .await;
        match result {
            Err(Error::InvalidName { what, reason, .. }) => {
                assert_eq!(what, "dead-letter stream");
                assert!(reason.contains("dead_letter"), "{reason}");
            }
            other => panic!("expected an invalid dead-letter name, got {other:?}"),
        }
        // With a short custom dead-letter stream it works, and so does a 195-byte full name
        // whose `.dead` stream is exactly 200 bytes.
        let ok = service
            .subscribe(
                &name,
                "g",
                Recorder::new().handler(),
                SubscribeOptions::new().dead_letter("dead"),
            )
            .await
            .expect("custom dead-letter stream");
        ok.close().await;
        let fits = service
            .subscribe(
                &"y".repeat(183),
                "g",
                Recorder::new().handler(),
                SubscribeOptions::new(),
            )
            .await
            .expect("dead-letter stream of exactly 200 bytes");
        fits.close().await;
        service.close().await.expect("close");
    }
}

/// Faults on Redis: data lost under a running consumer (a restart without persistence, an
/// old snapshot, a deleted key) must not stall the consumer silently forever.
mod redis_faults {
    use std::sync::Arc;
    use std::time::Duration;

    use stream_runtime::backend::redis::{stream_key, RedisBackend};
    use stream_runtime::backend::SharedBackend;
    use stream_runtime::conformance::{unique_name, Recorder};
    use stream_runtime::{PublishOptions, RetryDelay, Service, ServiceConfig, SubscribeOptions};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn consumer_goes_on_after_its_group_is_lost() {
        let url = super::redis_url();
        let backend = match RedisBackend::connect(&url).await {
            Ok(b) => Arc::new(b) as SharedBackend,
            Err(e) => {
                let _: Option<()> =
                    stream_runtime::conformance::skip_or_fail("redis", &e.to_string());
                return;
            }
        };
        let service =
            Service::from_shared(backend, ServiceConfig::default().app(unique_name("rc")));
        let rec = Recorder::new();
        let options = SubscribeOptions::new()
            .poll_interval(Duration::from_millis(25))
            .retry_delay(RetryDelay::Fixed(Duration::from_millis(20)));
        let consumer = service
            .subscribe("lost", "g", rec.handler(), options)
            .await
            .expect("subscribe");
        service
            .publish("lost", "before", PublishOptions::new())
            .await
            .expect("publish");
        rec.wait_payload("before").await;
        // The server loses the stream with its group.
        let full = service.stream_name("lost").expect("name");
        let mut raw = redis::Client::open(url.as_str())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
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

probes!(memory_deadlines, async {
    Some(Arc::new(stream_runtime::backend::memory::MemoryBackend::new()) as SharedBackend)
}; claim_deadline_is_the_claimers);
probes!(sqlite_deadlines, async {
    Some(stream_runtime::backend::connect(&super::sqlite_url()).await.expect("sqlite"))
}; claim_deadline_is_the_claimers);
probes!(postgres_deadlines, crate::pg::shared_backend(); claim_deadline_is_the_claimers);

probes!(redis_deadlines, async {
    match stream_runtime::backend::redis::RedisBackend::connect(&super::redis_url()).await {
        Ok(b) => Some(Arc::new(b) as SharedBackend),
        Err(e) => stream_runtime::conformance::skip_or_fail("redis", &e.to_string()),
    }
}; claim_deadline_is_the_claimers);
