//! The Postgres backend: the whole conformance suite, plus what only Postgres can get wrong
//! (late commits under concurrent publishers, concurrent migrations, orphan pending rows,
//! connection errors).

stream_runtime::conformance_tests!(postgres, stream_tests::pg::shared_backend());

mod connections;
mod schema;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use stream_runtime::backend::postgres::{PostgresBackend, MIGRATIONS};
use stream_runtime::backend::{Backend, GroupRef};
use stream_runtime::conformance::{unique_name, wait_for, wait_for_async, Recorder};
use stream_runtime::{
    Error, NewMessage, PublishOptions, Service, ServiceConfig, StartPosition, SubscribeOptions,
    Trim,
};
use stream_tests::{pg, Logs};

fn group_ref<'a>(stream: &'a str, group: &'a str) -> GroupRef<'a> {
    GroupRef {
        stream,
        group,
        consumer: "test",
    }
}

/// Waits until `sql` (one bigint column, binding `$1 = app_name`) is at least `n`.
async fn wait_count(pool: &sqlx::PgPool, sql: &str, app_name: &str, n: i64, what: &str) {
    wait_for_async(what, || async {
        let count: i64 = sqlx::query_scalar(sql)
            .bind(app_name)
            .fetch_one(pool)
            .await
            .expect("counting");
        count >= n
    })
    .await;
}

/// Kills every server connection opened with `application_name = app_name`.
async fn kill_connections(pool: &sqlx::PgPool, app_name: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
         AND application_name = $1",
    )
    .bind(app_name)
    .fetch_one(pool)
    .await
    .expect("pg_terminate_backend")
}

/// A message whose append committed after a later-started append must not be skipped by
/// the group's cursor: appends to a stream are serialised, so ids commit in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_commit_is_not_skipped() {
    let app_name = unique_name("pglate");
    let Some(backend) = pg::backend_at(&pg::url_with_app_name(&app_name)).await else {
        return;
    };
    let backend = Arc::new(backend);
    let stream = unique_name("late.Stream.");
    backend
        .ensure_group(&stream, "g", &StartPosition::Latest)
        .await
        .expect("ensure_group");

    // Publisher 1 appends inside a transaction it keeps open.
    let mut tx = backend.pool().begin().await.expect("begin");
    let first: i64 = sqlx::query_scalar(&format!(
        "SELECT a FROM {}.append($1, ARRAY['first'::bytea], ARRAY['{{}}'::jsonb], 0, \
         interval '0') AS a",
        pg::SCHEMA
    ))
    .bind(&stream)
    .fetch_one(&mut *tx)
    .await
    .expect("append in open transaction");

    // Publisher 2 starts later and must wait for publisher 1 to commit.
    let second = tokio::spawn({
        let backend = backend.clone();
        let stream = stream.clone();
        async move {
            backend
                .append(&stream, vec![NewMessage::new("second")], Trim::NONE)
                .await
        }
    });
    wait_count(
        backend.pool(),
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
         AND wait_event_type = 'Lock'",
        &app_name,
        1,
        "publisher 2 to wait for publisher 1's lock",
    )
    .await;
    let claimed = backend
        .claim(group_ref(&stream, "g"), 10, Duration::from_secs(30))
        .await
        .expect("claim");
    assert!(
        claimed.is_empty(),
        "claimed past an uncommitted append: {claimed:?}"
    );

    tx.commit().await.expect("commit");
    let second = second.await.expect("join").expect("append 2");
    let second: i64 = second[0].as_str().parse().expect("numeric id");
    assert!(
        second > first,
        "ids out of commit order: {first} then {second}"
    );
    let claimed = backend
        .claim(group_ref(&stream, "g"), 10, Duration::from_secs(30))
        .await
        .expect("claim");
    let payloads: Vec<_> = claimed.iter().map(|c| c.message.payload.clone()).collect();
    assert_eq!(payloads, [b"first".to_vec(), b"second".to_vec()]);
    backend.close().await.expect("close");
}

/// Many publishers on several connections pools and many workers in two "processes"
/// (separate backends): every message handled exactly once, ids strictly increasing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_and_workers_lose_nothing() {
    const PUBLISHERS: usize = 6;
    const PER_PUBLISHER: usize = 200;
    let app = unique_name("pgstress");
    let mut services = Vec::new();
    for _ in 0..3 {
        let Some(backend) = pg::shared_backend().await else {
            return;
        };
        services.push(Service::from_shared(
            backend,
            ServiceConfig::default().app(app.clone()),
        ));
    }
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let options = SubscribeOptions::new()
        .concurrency(8)
        .poll_interval(Duration::from_millis(200));
    for service in &services[..2] {
        let seen = seen.clone();
        service
            .subscribe(
                "stress",
                "g",
                move |m| {
                    let payload = String::from_utf8_lossy(&m.payload).into_owned();
                    *seen
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .entry(payload)
                        .or_default() += 1;
                    async { Ok(()) }
                },
                options.clone(),
            )
            .await
            .expect("subscribe");
    }
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let service = services[p % services.len()].clone();
        publishers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut i = 0;
            while i < PER_PUBLISHER {
                if i % 3 == 0 {
                    let batch: Vec<String> = (i..i + 5).map(|j| format!("p{p}-{j}")).collect();
                    ids.extend(
                        service
                            .publish_batch("stress", batch, PublishOptions::new())
                            .await
                            .expect("publish_batch"),
                    );
                    i += 5;
                } else {
                    ids.push(
                        service
                            .publish("stress", format!("p{p}-{i}"), PublishOptions::new())
                            .await
                            .expect("publish"),
                    );
                    i += 1;
                }
            }
            ids
        }));
    }
    let mut all_ids = Vec::new();
    let mut total = 0;
    for publisher in publishers {
        let ids: Vec<u64> = publisher
            .await
            .expect("publisher")
            .iter()
            .map(|id| id.as_str().parse().expect("numeric id"))
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids not increasing");
        total += ids.len();
        all_ids.extend(ids);
    }
    all_ids.sort_unstable();
    all_ids.dedup();
    assert_eq!(all_ids.len(), total, "an id was handed out twice");

    let handled = || seen.lock().unwrap_or_else(PoisonError::into_inner).len();
    wait_for("every message handled", || handled() >= total).await;
    // Time is the subject: a stray second delivery would show up within this window.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = seen.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert_eq!(seen.len(), total, "lost messages");
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "handled twice: {doubled:?}");
    for service in services {
        service.close().await.expect("close");
    }
}

/// S3: trimming pending messages removes their pending rows in every group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_leaves_no_orphan_pending_rows() {
    let Some(backend) = pg::backend_at(&pg::url()).await else {
        return;
    };
    let stream = unique_name("orphan.");
    for group in ["g1", "g2"] {
        backend
            .ensure_group(&stream, group, &StartPosition::Latest)
            .await
            .expect("ensure_group");
    }
    let batch = (0..5).map(|i| NewMessage::new(format!("m{i}"))).collect();
    backend
        .append(&stream, batch, Trim::NONE)
        .await
        .expect("append");
    for group in ["g1", "g2"] {
        let claimed = backend
            .claim(group_ref(&stream, group), 3, Duration::from_secs(30))
            .await
            .expect("claim");
        assert_eq!(claimed.len(), 3);
    }
    let pending_sql = format!(
        "SELECT count(*) FROM {s}.pending p JOIN {s}.groups g USING (group_id) \
         JOIN {s}.streams s USING (stream_id) WHERE s.name = $1",
        s = pg::SCHEMA
    );
    let pending = || async {
        sqlx::query_scalar::<_, i64>(&pending_sql)
            .bind(&stream)
            .fetch_one(backend.pool())
            .await
            .expect("count pending")
    };
    assert_eq!(pending().await, 6);
    let trim = Trim {
        max_len: 2,
        max_age: Duration::ZERO,
    };
    backend
        .append(&stream, vec![NewMessage::new("m5")], trim)
        .await
        .expect("append and trim");
    // m0..m3 are gone, so only nothing claimed is left pending.
    assert_eq!(pending().await, 0);
    let claimed = backend
        .claim(group_ref(&stream, "g1"), 10, Duration::from_secs(30))
        .await
        .expect("claim");
    let payloads: Vec<_> = claimed.iter().map(|c| c.message.payload.clone()).collect();
    assert_eq!(payloads, [b"m4".to_vec(), b"m5".to_vec()]);
    backend.close().await.expect("close");
}

/// A small pool of its own for admin queries (counting, killing connections).
async fn admin_pool() -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&pg::url())
        .await
        .expect("admin pool")
}
