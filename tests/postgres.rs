//! The Postgres backend: the whole conformance suite, plus what only Postgres can get wrong
//! (late commits under concurrent publishers, concurrent migrations, orphan pending rows,
//! connection errors).

stream_runtime::conformance_tests!(postgres, stream_tests::pg::shared_backend());

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

/// Several processes connecting at once to a fresh schema migrate it exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connects_migrate_once() {
    let schema = unique_name("pgmig_");
    let url = pg::url();
    let connects: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            let schema = schema.clone();
            tokio::spawn(async move { PostgresBackend::connect_with_schema(&url, &schema).await })
        })
        .collect();
    let mut backends = Vec::new();
    for connect in connects {
        match connect.await.expect("join") {
            Ok(backend) => backends.push(backend),
            Err(e) => {
                let _: Option<()> =
                    stream_runtime::conformance::skip_or_fail("postgres", &e.to_string());
                return;
            }
        }
    }
    let versions: i64 =
        sqlx::query_scalar(&format!("SELECT count(*) FROM \"{schema}\".schema_version"))
            .fetch_one(backends[0].pool())
            .await
            .expect("count versions");
    // Every migration applied exactly once.
    assert_eq!(versions as usize, MIGRATIONS.len());
    let ids = backends[1]
        .append("s", vec![NewMessage::new("x")], Trim::NONE)
        .await
        .expect("append on the fresh schema");
    assert_eq!(ids[0].as_str(), "1");
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(backends[0].pool())
        .await
        .expect("drop schema");
    for backend in backends {
        backend.close().await.expect("close");
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

fn assert_redacted(error: &Error, host_port: &str) {
    let text = error.to_string();
    eprintln!("the error reads: {text}");
    assert!(!text.contains("s3cret"), "password leaked: {text}");
    assert!(text.contains("***"), "no redacted URL in: {text}");
    assert!(text.contains(host_port), "no server named in: {text}");
}

/// Bad input: an unreachable server fails at once with the URL redacted.
#[tokio::test]
async fn unreachable_server_is_a_clear_error() {
    let started = Instant::now();
    let url = "postgres://app:s3cret@127.0.0.1:1/db";
    let Err(error) = stream_runtime::backend::connect(url).await else {
        panic!("connected to port 1");
    };
    assert_redacted(&error, "127.0.0.1:1");
    assert!(
        matches!(
            error,
            Error::Backend {
                backend: "postgres",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

/// Bad input: wrong credentials are refused with the URL redacted.
#[tokio::test]
async fn wrong_credentials_are_a_clear_error() {
    if pg::backend_at(&pg::url()).await.is_none() {
        return;
    }
    let url = pg::url();
    let host = url
        .split_once("://")
        .map(|(_, rest)| rest.rsplit_once('@').map_or(rest, |(_, host)| host))
        .expect("a URL");
    let bad = format!("postgres://no_such_role_x:s3cret@{host}");
    let Err(error) = stream_runtime::backend::connect(&bad).await else {
        panic!("connected with a role that does not exist");
    };
    let host_port = host.split('/').next().unwrap_or(host);
    assert_redacted(&error, host_port);
    assert!(error.to_string().contains("no_such_role_x"), "{error}");
}

/// Bad input: a schema name that is not a plain identifier; a URL that does not parse.
#[tokio::test]
async fn bad_schema_name_is_rejected() {
    let error = PostgresBackend::connect("postgres://u:s3cret@127.0.0.1:1/db?schema=a;drop")
        .await
        .expect_err("accepted a bad schema");
    assert!(error.to_string().contains("schema"), "{error}");
    let error = PostgresBackend::connect("postgres://u:s3cret@127.0.0.1:notaport/db")
        .await
        .expect_err("accepted a bad port");
    assert!(matches!(error, Error::Config(_)), "{error:?}");
    assert!(!error.to_string().contains("s3cret"), "{error}");
    eprintln!("the error reads: {error}");
}

/// Faults: killing the backend's server connections mid-run loses nothing; the pool
/// reconnects, claims and acks carry on, expired claims are redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_lose_nothing() {
    const TOTAL: usize = 400;
    let app_name = unique_name("pgfault");
    let Some(consumer_backend) = pg::backend_at(&pg::url_with_app_name(&app_name)).await else {
        return;
    };
    let Some(publisher_backend) = pg::shared_backend().await else {
        return;
    };
    let app = unique_name("pgfault");
    let consumer = Service::new(consumer_backend, ServiceConfig::default().app(app.clone()));
    let publisher = Service::from_shared(publisher_backend, ServiceConfig::default().app(app));
    let rec = Recorder::new();
    let handler = rec.then(|_m: stream_runtime::Message| {
        async {
            // Handling takes a moment, so kills land while messages are in flight.
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok(())
        }
    });
    consumer
        .subscribe(
            "fault",
            "g",
            handler,
            SubscribeOptions::new()
                .concurrency(4)
                .visibility_timeout(Duration::from_secs(1))
                .poll_interval(Duration::from_millis(200)),
        )
        .await
        .expect("subscribe");

    let publishing = tokio::spawn(async move {
        for batch in 0..TOTAL / 20 {
            publisher
                .publish_batch(
                    "fault",
                    (0..20).map(|i| format!("m{}", batch * 20 + i)),
                    PublishOptions::new(),
                )
                .await
                .expect("publish");
            // Paced, so the publishing spans the kills below.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        publisher
    });
    let pool = admin_pool().await;
    let mut killed = 0;
    for _ in 0..5 {
        // Time is the subject: kills spread over the run.
        tokio::time::sleep(Duration::from_millis(100)).await;
        killed += kill_connections(&pool, &app_name).await;
    }
    assert!(killed > 0, "no connection was killed");
    let publisher = publishing.await.expect("publisher");
    let distinct = || {
        let mut payloads = rec.payloads();
        payloads.sort();
        payloads.dedup();
        payloads.len()
    };
    wait_for("every message handled despite the kills", || {
        distinct() >= TOTAL
    })
    .await;
    consumer.close().await.expect("close");
    publisher.close().await.expect("close");
}

/// A small pool of its own for admin queries (counting, killing connections).
async fn admin_pool() -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&pg::url())
        .await
        .expect("admin pool")
}

/// S14 after a fault: the LISTEN connection is killed, reconnects by itself, and wakes
/// the consumer for messages published by another process, without waiting for the poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_reconnects_after_kill() {
    let app_name = unique_name("pglisten");
    let Some(consumer_backend) = pg::backend_at(&pg::url_with_app_name(&app_name)).await else {
        return;
    };
    let Some(publisher_backend) = pg::shared_backend().await else {
        return;
    };
    let pool = admin_pool().await;
    let app = unique_name("pglisten");
    let consumer = Service::new(consumer_backend, ServiceConfig::default().app(app.clone()));
    let publisher = Service::from_shared(publisher_backend, ServiceConfig::default().app(app));
    let rec = Recorder::new();
    consumer
        .subscribe(
            "wake",
            "g",
            rec.handler(),
            SubscribeOptions::new().poll_interval(Duration::from_secs(30)),
        )
        .await
        .expect("subscribe");
    let listening = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
                     AND query ILIKE 'LISTEN%'";
    wait_count(&pool, listening, &app_name, 1, "the LISTEN connection").await;
    for round in 0..3 {
        assert!(kill_connections(&pool, &app_name).await > 0);
        wait_count(
            &pool,
            listening,
            &app_name,
            1,
            "the LISTEN connection to come back",
        )
        .await;
        let started = Instant::now();
        publisher
            .publish("wake", format!("m{round}"), PublishOptions::new())
            .await
            .expect("publish");
        rec.wait_payload(&format!("m{round}")).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "woken only after {:?}",
            started.elapsed()
        );
    }
    consumer.close().await.expect("close");
    publisher.close().await.expect("close");
}

/// The `synchronous_commit` a statement leaves in force for the rest of its transaction:
/// runs `call` (binding `$1` = stream, `$2` = group) in a transaction on `conn`, reads the
/// setting there, commits, and checks the connection's next transaction is back at `base`.
async fn setting_after(
    conn: &mut sqlx::PgConnection,
    call: &str,
    stream: &str,
    base: &str,
) -> String {
    use sqlx::Connection;
    let mut tx = conn.begin().await.expect("begin");
    sqlx::query(call)
        .bind(stream)
        .bind("g")
        .fetch_all(&mut *tx)
        .await
        .unwrap_or_else(|e| panic!("{call}: {e}"));
    let inside: String = sqlx::query_scalar("SELECT current_setting('synchronous_commit')")
        .fetch_one(&mut *tx)
        .await
        .expect("read the setting");
    tx.commit().await.expect("commit");
    let after: String = sqlx::query_scalar("SELECT current_setting('synchronous_commit')")
        .fetch_one(&mut *conn)
        .await
        .expect("read the setting");
    assert_eq!(after, base, "{call} left its setting on the connection");
    inside
}

/// Claims, acks, retries and releases commit asynchronously, in their own transaction only;
/// appends (S17) and dead letters (S12) keep the server's synchronous commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_claim_ack_retry_release_commit_asynchronously() {
    let Some(backend) = pg::backend_at(&pg::url()).await else {
        return;
    };
    let s = pg::SCHEMA;
    let stream = unique_name("async.Commit.");
    backend
        .ensure_group(&stream, "g", &StartPosition::Earliest)
        .await
        .expect("ensure_group");
    let mut conn = backend.pool().acquire().await.expect("acquire");
    let base: String = sqlx::query_scalar("SELECT current_setting('synchronous_commit')")
        .fetch_one(&mut *conn)
        .await
        .expect("read the setting");
    assert_ne!(
        base, "off",
        "the test server must commit synchronously by default"
    );

    let append = format!(
        "SELECT a FROM {s}.append($1, ARRAY['m'::bytea, 'n'::bytea, 'o'::bytea], \
         ARRAY['{{}}'::jsonb, '{{}}'::jsonb, '{{}}'::jsonb], 0, interval '0') AS a \
         WHERE $2 <> ''"
    );
    assert_eq!(
        setting_after(&mut conn, &append, &stream, &base).await,
        base
    );

    // Claim all three; their tokens drive the other calls.
    let claim = format!("SELECT r_id FROM {s}.claim($1, $2, 'c', 3, interval '1 minute')");
    assert_eq!(
        setting_after(&mut conn, &claim, &stream, &base).await,
        "off"
    );
    let tokens: Vec<(i64, i64)> = sqlx::query_as(&format!(
        "SELECT p.msg_id, p.token FROM {s}.pending p JOIN {s}.groups g USING (group_id) \
         JOIN {s}.streams st USING (stream_id) WHERE st.name = $1 ORDER BY p.msg_id"
    ))
    .bind(&stream)
    .fetch_all(&mut *conn)
    .await
    .expect("pending rows");
    assert_eq!(tokens.len(), 3, "{tokens:?}");
    let ((m1, t1), (m2, t2), (m3, t3)) = (tokens[0], tokens[1], tokens[2]);

    let ack = format!("SELECT {s}.ack($1, $2, ARRAY[{m1}::bigint], ARRAY[{t1}::bigint])");
    assert_eq!(setting_after(&mut conn, &ack, &stream, &base).await, "off");
    let retry = format!("SELECT {s}.retry($1, $2, {m2}, {t2}, interval '1 hour')");
    assert_eq!(
        setting_after(&mut conn, &retry, &stream, &base).await,
        "off"
    );
    let release = format!("SELECT {s}.release($1, $2, ARRAY[{m3}::bigint], ARRAY[{t3}::bigint])");
    assert_eq!(
        setting_after(&mut conn, &release, &stream, &base).await,
        "off"
    );

    // Message 3 was released: claim it again, then dead-letter it.
    let token: i64 = sqlx::query_scalar(&format!(
        "SELECT r_token FROM {s}.claim($1, $2, 'c', 1, interval '1 minute')"
    ))
    .bind(&stream)
    .bind("g")
    .fetch_one(&mut *conn)
    .await
    .expect("claim again");
    let dead_letter = format!(
        "SELECT {s}.dead_letter($1, $2, {m3}, {token}, $1 || '.dlq', 'x'::bytea, '{{}}'::jsonb) \
         AS new_id"
    );
    assert_eq!(
        setting_after(&mut conn, &dead_letter, &stream, &base).await,
        base
    );

    // The backend's own calls leave the pooled connections at the server's setting too.
    drop(conn);
    let group = group_ref(&stream, "g");
    backend
        .append(&stream, vec![NewMessage::new("p")], Trim::NONE)
        .await
        .expect("append");
    let claimed = backend
        .claim(group, 1, Duration::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    backend
        .ack(group, &[claimed[0].claim()])
        .await
        .expect("ack");
    let settings: Vec<String> = sqlx::query_scalar("SELECT current_setting('synchronous_commit')")
        .fetch_all(backend.pool())
        .await
        .expect("read the setting");
    assert_eq!(settings, vec![base]);
    backend.close().await.expect("close");
}

/// A schema created by migration 1 alone (an older build) is upgraded in place on connect,
/// keeping its streams, groups and claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_1_schema_is_upgraded() {
    let Some(admin) = pg::backend_at(&pg::url()).await else {
        return;
    };
    let schema = unique_name("pgup_");
    let s = format!("\"{schema}\"");
    let v1 = include_str!("../stream-runtime/src/backend/postgres/migrations/0001_initial.sql")
        .replace("{S}", &s);
    let setup = format!(
        "CREATE SCHEMA {s}; \
         CREATE TABLE {s}.schema_version (version integer PRIMARY KEY, \
             applied_at timestamptz NOT NULL DEFAULT now()); \
         {v1}; \
         INSERT INTO {s}.schema_version (version) VALUES (1); \
         SELECT {s}.ensure_group('old', 'g', 'earliest', 0); \
         SELECT {s}.append('old', ARRAY['a'::bytea, 'b'::bytea], \
             ARRAY['{{}}'::jsonb, '{{}}'::jsonb], 0, interval '0'); \
         SELECT * FROM {s}.claim('old', 'g', 'c', 1, interval '1 hour');"
    );
    sqlx::raw_sql(&setup)
        .execute(admin.pool())
        .await
        .expect("create a version 1 schema");

    let backend = PostgresBackend::connect_with_schema(&pg::url(), &schema)
        .await
        .expect("connect and upgrade");
    let versions: Vec<i32> = sqlx::query_scalar(&format!(
        "SELECT version FROM {s}.schema_version ORDER BY version"
    ))
    .fetch_all(backend.pool())
    .await
    .expect("versions");
    let all: Vec<i32> = (1..=MIGRATIONS.len() as i32).collect();
    assert_eq!(versions, all);
    // Message 1 is still held by the old claim; message 2 is next.
    let group = group_ref("old", "g");
    let claimed = backend
        .claim(group, 10, Duration::from_secs(60))
        .await
        .expect("claim");
    let ids: Vec<&str> = claimed.iter().map(|c| c.message.id.as_str()).collect();
    assert_eq!(ids, vec!["2"]);
    backend
        .ack(group, &[claimed[0].claim()])
        .await
        .expect("ack");
    let left: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {s}.pending"))
        .fetch_one(backend.pool())
        .await
        .expect("count pending");
    assert_eq!(left, 1);
    sqlx::query(&format!("DROP SCHEMA {s} CASCADE"))
        .execute(admin.pool())
        .await
        .expect("drop schema");
    backend.close().await.expect("close");
    admin.close().await.expect("close");
}

/// Connecting to a schema that already exists logs nothing from the server: no
/// `NOTICE: schema "..." already exists, skipping` on every start of every application.
#[tokio::test(flavor = "current_thread")]
async fn reconnecting_to_an_existing_schema_is_quiet() {
    let (logs, _guard) = Logs::capture();
    let schema = unique_name("quiet").replace(['.', '-'], "_");
    for _ in 0..2 {
        let backend = match PostgresBackend::connect_with_schema(&pg::url(), &schema).await {
            Ok(backend) => backend,
            Err(e) => {
                let _: Option<()> =
                    stream_runtime::conformance::skip_or_fail("postgres", &e.to_string());
                return;
            }
        };
        backend.close().await.expect("close");
    }
    let text = logs.text();
    assert!(!text.contains("already exists"), "{text}");
    // Clean up the schema of this test.
    let pool = sqlx::PgPool::connect(&pg::url()).await.expect("admin pool");
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(&pool)
        .await
        .expect("drop schema");
}
