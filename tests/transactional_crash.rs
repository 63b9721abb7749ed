//! Exactly-once effects under crashes: a transactional handler inserts one row per message
//! into a table of the user's with no unique constraint (duplicates would show), with 8
//! workers, while the consumer process is SIGKILLed at random moments and restarted. The
//! table ends with exactly one row per message, on Postgres and on SQLite.
//!
//! The full run (20,000 messages, 20 kills) is behind `STREAMS_SOAK=1`; without it the same
//! test runs smaller (2,000 messages, 5 kills). Each run prints its figures.
//!
//! The child is this test binary run again with [`CHILD_ENV`] set: `crash_child` then
//! consumes until it is killed.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stream_runtime::conformance::unique_name;
use stream_runtime::{
    transaction, HandlerError, Message, PublishOptions, Service, ServiceConfig, StartPosition,
    SubscribeOptions,
};

/// Set only in the child: `<kind> <url> <app> <table>`.
const CHILD_ENV: &str = "STREAMS_TX_CRASH_CHILD";
const STREAM: &str = "orders";
const GROUP: &str = "billing";
const CONCURRENCY: usize = 8;
/// How soon a killed child's claims come back to the next one.
const VISIBILITY: Duration = Duration::from_secs(1);

/// Messages and kills: the full figures with `STREAMS_SOAK=1`, a short run otherwise.
fn figures() -> (usize, usize) {
    if std::env::var("STREAMS_SOAK").is_ok_and(|v| v == "1") {
        (20_000, 20)
    } else {
        (2_000, 5)
    }
}

fn options() -> SubscribeOptions {
    SubscribeOptions::new()
        .start(StartPosition::Earliest)
        .concurrency(CONCURRENCY)
        .visibility_timeout(VISIBILITY)
        .poll_interval(Duration::from_millis(50))
        .unlimited_retries()
}

/// A pseudo-random number in `0..n`.
fn random_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish() % n.max(1)
}

/// The child: consumes with a transactional handler until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split(' ').collect();
    let [kind, url, app, table] = parts[..] else {
        panic!("child: bad {CHILD_ENV} {spec:?}");
    };
    let service = Service::connect(url, ServiceConfig::default().app(app))
        .await
        .expect("child: connect");
    let insert = format!("INSERT INTO {table} (msg_id, attempt) VALUES ($1, $2)");
    // The same handler on each database's transaction type.
    macro_rules! subscribe {
        ($tx:ty) => {{
            let handler = transaction::handler_fn(move |m: Message, tx: &mut $tx| {
                let insert = insert.clone();
                Box::pin(async move {
                    sqlx::query(&insert)
                        .bind(m.id.to_string())
                        .bind(i32::try_from(m.attempt).unwrap_or(i32::MAX))
                        .execute(&mut **tx)
                        .await
                        .map_err(HandlerError::retry)?;
                    Ok(())
                })
            });
            service
                .subscribe_transactional(STREAM, GROUP, handler, options())
                .await
                .expect("child: subscribe")
        }};
    }
    let _consumer = match kind {
        "postgres" => subscribe!(stream_runtime::PostgresTx),
        _ => subscribe!(stream_runtime::SqliteTx),
    };
    std::future::pending::<()>().await;
}

fn spawn_child(kind: &str, url: &str, app: &str, table: &str) -> Child {
    Command::new(std::env::current_exe().expect("the test binary"))
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{kind} {url} {app} {table}"))
        .stdout(Stdio::null())
        .spawn()
        .expect("starting the child process")
}

/// Rows in the table: `(all, distinct message ids, committed on a later attempt)`.
async fn count(service: &Service, kind: &str, table: &str) -> (i64, i64, i64) {
    let sql = format!(
        "SELECT count(*), count(DISTINCT msg_id), count(*) FILTER (WHERE attempt > 1) FROM {table}"
    );
    let sqlite_sql =
        format!("SELECT count(*), count(DISTINCT msg_id), sum(attempt > 1) FROM {table}");
    if kind == "postgres" {
        let pool = service.postgres_pool().expect("a postgres service");
        sqlx::query_as(&sql)
            .fetch_one(pool)
            .await
            .expect("counting rows")
    } else {
        let pool = service.sqlite_pool().expect("a sqlite service");
        let (all, distinct, later): (i64, i64, Option<i64>) = sqlx::query_as(&sqlite_sql)
            .fetch_one(pool)
            .await
            .expect("counting rows");
        (all, distinct, later.unwrap_or_default())
    }
}

async fn run(kind: &str) {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let Some(url) = stream_tests::backend_url(kind).await else {
        return;
    };
    let (messages, kills) = figures();
    let app = unique_name("txcrash");
    let service = Service::connect(&url, ServiceConfig::default().app(&app))
        .await
        .expect("connect");
    let table = unique_name("tx_crash_");
    {
        let create =
            format!("CREATE TABLE {table} (msg_id TEXT NOT NULL, attempt INTEGER NOT NULL)");
        macro_rules! create {
            ($tx:ty) => {{
                let mut tx: $tx = service.begin().await.expect("begin");
                sqlx::query(&create)
                    .execute(&mut *tx)
                    .await
                    .expect("create table");
                tx.commit().await.expect("commit");
            }};
        }
        if kind == "postgres" {
            create!(stream_runtime::PostgresTx);
        } else {
            create!(stream_runtime::SqliteTx);
        }
    }
    let payloads: Vec<String> = (0..messages).map(|i| format!("m{i}")).collect();
    for chunk in payloads.chunks(500) {
        service
            .publish_batch(
                STREAM,
                chunk.iter().map(String::as_str),
                PublishOptions::new(),
            )
            .await
            .expect("publish_batch");
    }

    // Kill points spread over the whole run at random: the row counts after which each
    // child is killed, a random moment later (some rows committed, others in flight).
    let n = u64::try_from(messages).expect("a count");
    let mut kill_points: Vec<i64> = (0..kills)
        .map(|_| i64::try_from(n / 50 + random_below(n * 9 / 10)).expect("a count"))
        .collect();
    kill_points.sort_unstable();
    let started = Instant::now();
    let mut killed_at_rows = Vec::new();
    for point in kill_points {
        let mut child = spawn_child(kind, &url, &app, &table);
        let before = count(&service, kind, &table).await.0;
        let target = point.max(before + 1);
        let deadline = Instant::now() + Duration::from_secs(120);
        while count(&service, kind, &table).await.0 < target {
            assert!(
                Instant::now() < deadline,
                "the child committed no rows for 120 s"
            );
            if let Some(status) = child.try_wait().expect("polling the child") {
                panic!("the child exited by itself with {status}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(random_below(50))).await;
        if let Some(status) = child.try_wait().expect("polling the child") {
            panic!("the child exited by itself with {status}");
        }
        child.kill().expect("SIGKILL"); // std sends SIGKILL on Unix
        child.wait().expect("reaping the child");
        killed_at_rows.push(count(&service, kind, &table).await.0);
    }

    // A last child finishes the work.
    let mut child = spawn_child(kind, &url, &app, &table);
    let admin = service.admin();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let groups = admin.groups(STREAM).await.expect("listing groups");
        if groups
            .iter()
            .any(|g| g.group == GROUP && g.lag == 0 && g.pending == 0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the work did not finish: {groups:?}"
        );
        if let Some(status) = child.try_wait().expect("polling the child") {
            panic!("the last child exited by itself with {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    child.kill().expect("SIGKILL");
    child.wait().expect("reaping the child");

    let (rows, distinct, later) = count(&service, kind, &table).await;
    let expected = i64::try_from(messages).expect("a count");
    println!(
        "{kind}: {messages} messages, {kills} SIGKILLs (rows committed at each kill: \
         {killed_at_rows:?}), concurrency {CONCURRENCY}: {rows} rows, {distinct} distinct, \
         {} duplicated, {} missing, {later} committed on a later attempt, in {took:.1?}",
        rows - distinct,
        expected - distinct,
    );
    assert_eq!(distinct, expected, "messages without their row");
    assert_eq!(rows, expected, "rows duplicated");
    if kind == "postgres" {
        let _ = sqlx::query(&format!("DROP TABLE {table}"))
            .execute(service.postgres_pool().expect("a postgres service"))
            .await;
    }
    service.close().await.expect("close");
}

mod postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transactional_effects_exactly_once_under_sigkill() {
        super::run("postgres").await;
    }
}

mod sqlite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transactional_effects_exactly_once_under_sigkill() {
        super::run("sqlite").await;
    }
}
