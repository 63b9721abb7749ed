//! The schema: migrations run once under concurrent connects, upgrade from version 1,
//! stay quiet on reconnect; schema names are checked; which calls commit asynchronously.

use super::*;

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
    let v1 = include_str!("../../stream-runtime/src/backend/postgres/migrations/0001_initial.sql")
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
    // The claim pending from before the upgrade is dated at its message's append.
    let backfilled: bool = sqlx::query_scalar(&format!(
        "SELECT p.claimed_at = m.created_at FROM {s}.pending p JOIN {s}.messages m
         ON m.id = p.msg_id WHERE p.msg_id = 1"
    ))
    .fetch_one(backend.pool())
    .await
    .expect("claimed_at of the old claim");
    assert!(
        backfilled,
        "the old claim's claimed_at is not its message's created_at"
    );
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
