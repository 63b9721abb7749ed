//! The conformance cases of the admin calls ([`Admin`](crate::admin::Admin) over
//! [`BackendAdmin`](crate::backend::BackendAdmin)): stream listing, lag and pending figures
//! (exact), range reads, redrive (atomic and fenced: never lost, never doubled) and purge.

#![allow(missing_docs)]

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use super::{unique_name, Harness, Recorder, WAIT};
use crate::admin::{ReadFrom, Selection, REDRIVEN_FROM};
use crate::backend::GroupRef;
use crate::engine::dead_letter_headers as dlh;
use crate::error::HandlerError;
use crate::message::{Message, MessageId};
use crate::options::{PublishOptions, ServiceConfig, StartPosition};

/// Registers the admin cases with [`conformance_tests!`](crate::conformance_tests).
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_admin_cases {
    ($factory:expr) => {
        $crate::__conformance_cases!($factory; in admin;
            admin_lists_streams,
            admin_lag_and_pending_are_exact,
            admin_oldest_pending_age_is_the_claims,
            admin_pending_entries,
            admin_reads_ranges,
            admin_redrive_moves_back,
            admin_redrive_is_fenced,
            admin_purge,
            admin_trim_after_delete
        );
    };
}

/// Awaits `probe` every few milliseconds until it returns true, panicking after [`WAIT`].
async fn until<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !probe().await {
        if Instant::now() > deadline {
            panic!("timed out after {WAIT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn publish_n(h: &Harness, stream: &str, n: usize) -> Vec<MessageId> {
    h.service
        .publish_batch(
            stream,
            (0..n).map(|i| format!("m{i}")),
            PublishOptions::new(),
        )
        .await
        .expect("publish_batch")
}

fn close_to(at: Option<SystemTime>, expected: SystemTime, what: &str) {
    let at = at.unwrap_or_else(|| panic!("{what} is missing"));
    let off = at.duration_since(expected).unwrap_or_else(|e| e.duration());
    assert!(
        off < Duration::from_secs(5),
        "{what} is {at:?}, expected about {expected:?}"
    );
}

/// A handler that dead-letters every message not yet redriven and records the others.
fn fails_until_redriven(
    rec: &Recorder,
) -> impl Fn(Message) -> std::future::Ready<Result<(), HandlerError>> + Send + Sync + 'static {
    let rec = rec.clone();
    move |m: Message| {
        if m.header(REDRIVEN_FROM).is_none() {
            return std::future::ready(Err(HandlerError::permanent("the bug")));
        }
        rec.record(&m);
        std::future::ready(Ok(()))
    }
}

/// Waits until the dead-letter stream of `stream` holds `n` messages; returns them.
async fn wait_dead_letters(h: &Harness, stream: &str, n: usize) -> Vec<Message> {
    let admin = h.service.admin();
    until(&format!("{n} dead letter(s) of {stream}"), || async {
        admin
            .dead_letters(stream, &Selection::all())
            .await
            .expect("dead_letters")
            .len()
            >= n
    })
    .await;
    admin
        .dead_letters(stream, &Selection::all())
        .await
        .expect("dead_letters")
}

/// The service's streams are listed by full name, with exact length, first and last id and
/// the last append time; streams with only a group are listed empty; other apps' are not.
pub async fn admin_lists_streams(h: &Harness) {
    let before = SystemTime::now();
    let alpha = publish_n(h, "alpha", 3).await;
    let beta = publish_n(h, "beta", 1).await;
    let gamma = h.service.stream_name("gamma").expect("name");
    h.backend
        .ensure_group(&gamma, "g", &StartPosition::Latest)
        .await
        .expect("ensure_group");
    let other = h.service_with(|c| ServiceConfig {
        app: unique_name("other"),
        ..c
    });
    other
        .publish("alpha", "elsewhere", PublishOptions::new())
        .await
        .expect("publish");

    let streams = h.service.admin().streams().await.expect("streams");
    let names: Vec<&str> = streams.iter().map(|s| s.stream.as_str()).collect();
    let full = |s: &str| h.service.stream_name(s).expect("name");
    assert_eq!(names, [full("alpha"), full("beta"), gamma.clone()]);
    assert_eq!(streams[0].length, 3);
    assert_eq!(streams[0].first_id.as_ref(), alpha.first());
    assert_eq!(streams[0].last_id.as_ref(), alpha.last());
    close_to(streams[0].last_append, before, "alpha's last append");
    assert_eq!(streams[1].length, 1);
    assert_eq!(streams[1].first_id.as_ref(), beta.first());
    assert_eq!(streams[1].last_id.as_ref(), beta.first());
    assert_eq!(streams[2].length, 0);
    assert_eq!((&streams[2].first_id, &streams[2].last_id), (&None, &None));
    assert_eq!(streams[2].last_append, None);
    other.close().await.expect("close");
}

/// Lag (messages after the cursor), pending (claimed or waiting for a retry), the cursor
/// and the oldest pending message follow every claim, ack and retry exactly.
pub async fn admin_lag_and_pending_are_exact(h: &Harness) {
    let admin = h.service.admin();
    let stream = h.service.stream_name("lag").expect("name");
    let ids = publish_n(h, "lag", 10).await;
    assert!(admin.groups("lag").await.expect("groups").is_empty());
    h.backend
        .ensure_group(&stream, "work", &StartPosition::Earliest)
        .await
        .expect("ensure_group");
    let g = admin.groups("lag").await.expect("groups");
    assert_eq!(g.len(), 1);
    assert_eq!(
        (g[0].group.as_str(), g[0].lag, g[0].pending),
        ("work", 10, 0)
    );
    assert_eq!(g[0].oldest_pending_age, None);

    let group = GroupRef {
        stream: &stream,
        group: "work",
        consumer: "c1",
    };
    let visibility = Duration::from_secs(10);
    let claimed = h.backend.claim(group, 3, visibility).await.expect("claim");
    assert_eq!(claimed.len(), 3);
    let g = &admin.groups("lag").await.expect("groups")[0];
    assert_eq!(g.cursor, ids[2]);
    assert_eq!((g.lag, g.pending, g.dead), (7, 3, 0));
    assert!(g
        .oldest_pending_age
        .is_some_and(|age| age < Duration::from_secs(60)));

    h.backend
        .ack(group, &[claimed[0].claim()])
        .await
        .expect("ack");
    assert!(h
        .backend
        .retry(group, &claimed[1].claim(), Duration::from_secs(60))
        .await
        .expect("retry"));
    let g = &admin.groups("lag").await.expect("groups")[0];
    assert_eq!(
        (g.lag, g.pending),
        (7, 2),
        "the retried message stays pending"
    );

    let rest = h
        .backend
        .claim(group, 100, visibility)
        .await
        .expect("claim");
    assert_eq!(rest.len(), 7);
    let g = &admin.groups("lag").await.expect("groups")[0];
    assert_eq!(g.cursor, ids[9]);
    assert_eq!((g.lag, g.pending), (0, 9));
    let all: Vec<_> = claimed[2..]
        .iter()
        .chain(&rest)
        .map(|c| c.claim())
        .collect();
    h.backend.ack(group, &all).await.expect("ack");
    let g = &admin.groups("lag").await.expect("groups")[0];
    assert_eq!((g.lag, g.pending), (0, 1), "only the parked retry is left");

    // A group created at the end has nothing to do.
    h.backend
        .ensure_group(&stream, "late", &StartPosition::Latest)
        .await
        .expect("ensure_group");
    let groups = admin.groups("lag").await.expect("groups");
    let names: Vec<&str> = groups.iter().map(|g| g.group.as_str()).collect();
    assert_eq!(names, ["late", "work"]);
    assert_eq!((groups[0].lag, groups[0].pending), (0, 0));
}

/// The oldest pending age is the age of the oldest pending claim: it counts from the claim,
/// not from the append (a message appended long ago and claimed just now is young), grows
/// while the claim is held, survives a retry (counted from the claim that failed), and is
/// the oldest claim's when several are pending.
pub async fn admin_oldest_pending_age_is_the_claims(h: &Harness) {
    // Clock steps: SQLite and Redis keep milliseconds.
    const TOLERANCE: Duration = Duration::from_millis(25);
    const MESSAGE_AGE: Duration = Duration::from_millis(500);
    const HELD: Duration = Duration::from_millis(300);
    let admin = h.service.admin();
    let stream = h.service.stream_name("age").expect("name");
    let published = Instant::now();
    let ids = publish_n(h, "age", 2).await;
    h.backend
        .ensure_group(&stream, "work", &StartPosition::Earliest)
        .await
        .expect("ensure_group");
    // The messages must be older than any claim age this case can see right after a claim.
    tokio::time::sleep(MESSAGE_AGE.saturating_sub(published.elapsed())).await;
    let age = || async {
        admin.groups("age").await.expect("groups")[0]
            .oldest_pending_age
            .expect("an entry is pending")
    };
    let group = GroupRef {
        stream: &stream,
        group: "work",
        consumer: "c1",
    };
    let visibility = Duration::from_secs(60);

    let first_claimed = Instant::now();
    let first = h.backend.claim(group, 1, visibility).await.expect("claim");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].message.id, ids[0]);
    let young = age().await;
    assert!(
        young <= first_claimed.elapsed() + TOLERANCE,
        "a claim made {:?} ago of a message appended {:?} ago reports {young:?}",
        first_claimed.elapsed(),
        published.elapsed()
    );

    // Held for at least HELD: reports at least HELD, never more than the time since the claim.
    let deadline = Instant::now() + WAIT;
    loop {
        let (age, since) = (age().await, first_claimed.elapsed());
        assert!(
            age <= since + TOLERANCE,
            "claim age {age:?} exceeds the {since:?} since the claim"
        );
        if age >= HELD {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {WAIT:?} the claim age is still {age:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A retry keeps the time of the claim that failed.
    assert!(h
        .backend
        .retry(group, &first[0].claim(), Duration::from_secs(60))
        .await
        .expect("retry"));
    let parked = age().await;
    assert!(
        parked >= HELD && parked <= first_claimed.elapsed() + TOLERANCE,
        "after the retry the claim age is {parked:?}, expected {HELD:?} to {:?}",
        first_claimed.elapsed()
    );

    // A newer claim does not hide the older one; once settled, the older one is still there.
    let second = h.backend.claim(group, 1, visibility).await.expect("claim");
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].message.id, ids[1]);
    let both = age().await;
    assert!(both >= HELD, "with two claims pending the age is {both:?}");
    h.backend
        .ack(group, &[second[0].claim()])
        .await
        .expect("ack");
    let g = &admin.groups("age").await.expect("groups")[0];
    assert_eq!(g.pending, 1);
    assert!(g.oldest_pending_age.is_some_and(|age| age >= HELD));
}

/// Pending entries list id, attempt, and the claim's deadline while held or the retry
/// time while parked, in id order.
pub async fn admin_pending_entries(h: &Harness) {
    let admin = h.service.admin();
    let stream = h.service.stream_name("pend").expect("name");
    let ids = publish_n(h, "pend", 4).await;
    h.backend
        .ensure_group(&stream, "work", &StartPosition::Earliest)
        .await
        .expect("ensure_group");
    assert!(admin
        .pending("pend", "work", 10)
        .await
        .expect("pending")
        .is_empty());
    assert!(admin
        .pending("pend", "nobody", 10)
        .await
        .expect("pending")
        .is_empty());
    let group = GroupRef {
        stream: &stream,
        group: "work",
        consumer: "c1",
    };
    let claimed_at = SystemTime::now();
    let claimed = h
        .backend
        .claim(group, 3, Duration::from_secs(30))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 3);
    assert!(h
        .backend
        .retry(group, &claimed[1].claim(), Duration::from_secs(120))
        .await
        .expect("retry"));
    // Claimed again after a release, which gave its delivery back: still the first attempt.
    h.backend
        .release(group, &[claimed[2].claim()])
        .await
        .expect("release");
    let again = h
        .backend
        .claim(group, 1, Duration::from_secs(30))
        .await
        .expect("claim");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message.id, ids[2]);

    let pending = admin.pending("pend", "work", 10).await.expect("pending");
    let listed: Vec<&MessageId> = pending.iter().map(|p| &p.id).collect();
    assert_eq!(listed, [&ids[0], &ids[1], &ids[2]]);
    let attempts: Vec<u32> = pending.iter().map(|p| p.attempt).collect();
    assert_eq!(attempts, [1, 1, 1]);
    close_to(
        pending[0].deadline,
        claimed_at + Duration::from_secs(30),
        "deadline",
    );
    assert_eq!(pending[0].retry_at, None);
    assert_eq!(pending[1].deadline, None);
    close_to(
        pending[1].retry_at,
        claimed_at + Duration::from_secs(120),
        "retry time",
    );
    close_to(
        pending[2].deadline,
        claimed_at + Duration::from_secs(30),
        "deadline",
    );

    let first = admin.pending("pend", "work", 2).await.expect("pending");
    assert_eq!(first.len(), 2, "at most max entries");
}

/// Range reads: from the start, after an id, the newest (oldest first), with payload and
/// headers as published and attempt 0.
pub async fn admin_reads_ranges(h: &Harness) {
    let admin = h.service.admin();
    let ids = publish_n(h, "range", 5).await;
    let id_of = |ms: &[Message]| ms.iter().map(|m| m.id.clone()).collect::<Vec<_>>();
    let first = admin
        .read("range", &ReadFrom::Start, 2)
        .await
        .expect("read");
    assert_eq!(id_of(&first), ids[..2]);
    assert_eq!(&first[0].payload[..], b"m0");
    assert_eq!(first[0].attempt, 0);
    assert_eq!(
        &*first[0].stream,
        h.service.stream_name("range").expect("name")
    );
    let after = admin
        .read("range", &ReadFrom::After(ids[1].clone()), 10)
        .await
        .expect("read");
    assert_eq!(id_of(&after), ids[2..]);
    let last = admin.read("range", &ReadFrom::Last, 2).await.expect("read");
    assert_eq!(id_of(&last), ids[3..]);
    let all = admin
        .read("range", &ReadFrom::Last, 10)
        .await
        .expect("read");
    assert_eq!(id_of(&all), ids);
    let none = admin
        .read("range", &ReadFrom::After(ids[4].clone()), 10)
        .await
        .expect("read");
    assert!(none.is_empty());
    assert!(admin
        .read("nothing-here", &ReadFrom::Start, 10)
        .await
        .expect("read")
        .is_empty());

    let id = h
        .service
        .publish(
            "range",
            "with headers",
            PublishOptions::new().header("k", "v"),
        )
        .await
        .expect("publish");
    let newest = admin.read("range", &ReadFrom::Last, 1).await.expect("read");
    assert_eq!(newest[0].id, id);
    assert_eq!(newest[0].header("k"), Some("v"));
    // A full name works as well as a short one.
    let full = h.service.stream_name("range").expect("name");
    assert_eq!(
        id_of(&admin.read(&full, &ReadFrom::Last, 1).await.expect("read")),
        [id]
    );
}

/// A redrive moves a dead letter back to its stream as a new message with the original
/// payload and headers (dead-letter headers removed, `x-redriven-from` added), and the group
/// handles it; the dead-letter count follows.
pub async fn admin_redrive_moves_back(h: &Harness) {
    let admin = h.service.admin();
    let rec = Recorder::new();
    let consumer = h
        .service
        .subscribe("orders", "billing", fails_until_redriven(&rec), h.options())
        .await
        .expect("subscribe");
    h.service
        .publish("orders", "order-1", PublishOptions::new().header("k", "v"))
        .await
        .expect("publish");
    let dead = wait_dead_letters(h, "orders", 1).await;
    let dead_stream = h.service.stream_name("orders.dead").expect("name");
    assert_eq!(&*dead[0].stream, dead_stream);
    let g = &admin.groups("orders").await.expect("groups")[0];
    assert_eq!(
        (g.group.as_str(), g.lag, g.pending, g.dead),
        ("billing", 0, 0, 1)
    );

    let report = admin
        .redrive("orders", &Selection::all())
        .await
        .expect("redrive");
    assert_eq!(report.moved.len(), 1);
    assert!(report.not_found.is_empty() && report.skipped.is_empty());
    let moved = &report.moved[0];
    assert_eq!(moved.dead_letter_id, dead[0].id);
    assert_eq!(moved.stream, h.service.stream_name("orders").expect("name"));

    rec.wait_len(1, "the redriven message").await;
    let m = &rec.messages()[0];
    assert_eq!(m.id, moved.id);
    assert_eq!(&m.payload[..], b"order-1");
    assert_eq!(m.header("k"), Some("v"));
    assert_eq!(
        m.header(REDRIVEN_FROM),
        Some(format!("{dead_stream}/{}", dead[0].id).as_str())
    );
    assert!(
        !m.headers.keys().any(|k| k.starts_with("x-dead-letter-")),
        "dead-letter headers left: {:?}",
        m.headers
    );
    assert!(admin
        .dead_letters("orders", &Selection::all())
        .await
        .expect("dead_letters")
        .is_empty());
    until("billing to settle the redriven message", || async {
        let g = &admin.groups("orders").await.expect("groups")[0];
        (g.lag, g.pending, g.dead) == (0, 0, 0)
    })
    .await;
    consumer.close().await;
}

/// Concurrent redrives of one dead letter move it exactly once (never lost, never
/// doubled); a group filter and chosen ids pick only their dead letters; a message that is
/// no dead letter is skipped.
pub async fn admin_redrive_is_fenced(h: &Harness) {
    let admin = h.service.admin();
    let (a, b) = (Recorder::new(), Recorder::new());
    for (group, rec) in [("ga", &a), ("gb", &b)] {
        h.service
            .subscribe("fence", group, fails_until_redriven(rec), h.options())
            .await
            .expect("subscribe");
    }
    h.service
        .publish("fence", "m", PublishOptions::new())
        .await
        .expect("publish");
    wait_dead_letters(h, "fence", 2).await;
    let of_a = admin
        .dead_letters("fence", &Selection::all().group("ga"))
        .await
        .expect("dead_letters");
    assert_eq!(of_a.len(), 1);
    assert_eq!(of_a[0].header(dlh::GROUP), Some("ga"));

    let mut tasks = Vec::new();
    for _ in 0..8 {
        let admin = admin.clone();
        let letter = of_a[0].clone();
        tasks.push(tokio::spawn(
            async move { admin.redrive_one(&letter).await },
        ));
    }
    let mut moved = Vec::new();
    for task in tasks {
        if let Some(m) = task.await.expect("task").expect("redrive_one") {
            moved.push(m);
        }
    }
    assert_eq!(moved.len(), 1, "moved {moved:?}");
    // The redriven message is a new message of the stream: both groups get it, once.
    a.wait_len(1, "group ga").await;
    b.wait_len(1, "group gb").await;
    let left = admin
        .dead_letters("fence", &Selection::all())
        .await
        .expect("dead_letters");
    assert_eq!(left.len(), 1, "only gb's dead letter is left");
    assert_eq!(left[0].header(dlh::GROUP), Some("gb"));

    // Not a dead letter: skipped, left in place.
    let stray = h
        .service
        .publish("fence.dead", "stray", PublishOptions::new())
        .await
        .expect("publish");
    let report = admin
        .redrive(
            "fence",
            &Selection::ids([left[0].id.clone(), stray.clone()]),
        )
        .await
        .expect("redrive");
    assert_eq!(report.moved.len(), 1);
    assert_eq!(report.moved[0].dead_letter_id, left[0].id);
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].0, stray);
    let again = admin
        .redrive("fence", &Selection::ids([left[0].id.clone()]))
        .await
        .expect("redrive");
    assert!(again.moved.is_empty());
    assert_eq!(again.not_found, [left[0].id.clone()]);

    a.wait_len(2, "group ga").await;
    b.wait_len(2, "group gb").await;
    let stream = admin
        .read("fence", &ReadFrom::Start, 10)
        .await
        .expect("read");
    assert_eq!(stream.len(), 3, "the original and two redriven copies");
    let dead = admin
        .read("fence.dead", &ReadFrom::Start, 10)
        .await
        .expect("read");
    assert_eq!(dead.iter().map(|m| &m.id).collect::<Vec<_>>(), [&stray]);
}

/// Purge deletes chosen or all dead letters, drops them from the pending lists of the
/// dead-letter stream's own groups, and leaves the stream itself alone.
pub async fn admin_purge(h: &Harness) {
    let admin = h.service.admin();
    let rec = Recorder::new();
    h.service
        .subscribe("p", "work", fails_until_redriven(&rec), h.options())
        .await
        .expect("subscribe");
    publish_n(h, "p", 3).await;
    let dead = wait_dead_letters(h, "p", 3).await;
    let dead_stream = h.service.stream_name("p.dead").expect("name");
    h.backend
        .ensure_group(&dead_stream, "audit", &StartPosition::Earliest)
        .await
        .expect("ensure_group");
    let audit = GroupRef {
        stream: &dead_stream,
        group: "audit",
        consumer: "c1",
    };
    let claimed = h
        .backend
        .claim(audit, 2, Duration::from_secs(30))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 2);
    let pending = |admin: crate::admin::Admin| async move {
        admin.groups("p.dead").await.expect("groups")[0].pending
    };
    assert_eq!(pending(admin.clone()).await, 2);

    let report = admin
        .purge("p", &Selection::ids([dead[0].id.clone()]))
        .await
        .expect("purge");
    assert_eq!(report.deleted, [dead[0].id.clone()]);
    assert!(report.not_found.is_empty());
    assert_eq!(
        pending(admin.clone()).await,
        1,
        "its pending entry went with it"
    );
    let again = admin
        .purge("p", &Selection::ids([dead[0].id.clone()]))
        .await
        .expect("purge");
    assert!(again.deleted.is_empty());
    assert_eq!(again.not_found, [dead[0].id.clone()]);
    // The backend call reports exactly what it deleted.
    let deleted = admin
        .delete_dead_letters(
            "p",
            &Selection::all(),
            &[dead[0].id.clone(), dead[1].id.clone()],
        )
        .await
        .expect("delete");
    assert_eq!(deleted, [dead[1].id.clone()]);

    let report = admin.purge("p", &Selection::all()).await.expect("purge");
    assert_eq!(report.deleted, [dead[2].id.clone()]);
    assert!(admin
        .dead_letters("p", &Selection::all())
        .await
        .expect("dead_letters")
        .is_empty());
    assert_eq!(pending(admin.clone()).await, 0);
    assert!(h
        .backend
        .claim(audit, 10, Duration::ZERO)
        .await
        .expect("claim")
        .is_empty());
    assert_eq!(
        admin
            .read("p", &ReadFrom::Start, 10)
            .await
            .expect("read")
            .len(),
        3,
        "the stream keeps its messages"
    );
    assert!(rec.is_empty());
    assert_eq!(admin.groups("p").await.expect("groups")[0].dead, 0);
}

/// Deleting messages leaves the rest in order: a group still gets every message left, and a
/// trim by length afterwards keeps exactly the newest `max_len`.
pub async fn admin_trim_after_delete(h: &Harness) {
    let admin = h.service.admin();
    let stream = h.service.stream_name("holes").expect("name");
    let ids = publish_n(h, "holes", 5).await;
    let deleted = h
        .backend
        .delete_messages(&stream, &ids[1..3])
        .await
        .expect("delete");
    assert_eq!(deleted, ids[1..3]);
    let left = admin
        .read("holes", &ReadFrom::Start, 10)
        .await
        .expect("read");
    let left: Vec<&MessageId> = left.iter().map(|m| &m.id).collect();
    assert_eq!(left, [&ids[0], &ids[3], &ids[4]]);
    assert_eq!(admin.streams().await.expect("streams")[0].length, 3);

    h.backend
        .ensure_group(&stream, "g", &StartPosition::Earliest)
        .await
        .expect("ensure_group");
    assert_eq!(admin.groups("holes").await.expect("groups")[0].lag, 3);
    let newest = h
        .service
        .publish("holes", "m5", PublishOptions::new().max_len(3))
        .await
        .expect("publish");
    let kept = admin
        .read("holes", &ReadFrom::Start, 10)
        .await
        .expect("read");
    let kept: Vec<&MessageId> = kept.iter().map(|m| &m.id).collect();
    assert_eq!(kept, [&ids[3], &ids[4], &newest]);
    let group = GroupRef {
        stream: &stream,
        group: "g",
        consumer: "c1",
    };
    let claimed = h
        .backend
        .claim(group, 10, Duration::from_secs(10))
        .await
        .expect("claim");
    let claimed: Vec<&MessageId> = claimed.iter().map(|c| &c.message.id).collect();
    assert_eq!(claimed, kept);
    let g = &admin.groups("holes").await.expect("groups")[0];
    assert_eq!((g.lag, g.pending), (0, 3));
}
