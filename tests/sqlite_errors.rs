//! Bad input on the SQLite backend: paths that cannot be opened, files that are not
//! databases, read-only databases. Every error names the path. And schema versions: a newer
//! one is refused, an older one upgraded.

use std::path::PathBuf;

use stream_runtime::backend::sqlite::SqliteBackend;
use stream_runtime::backend::Backend;
use stream_runtime::{Error, StartPosition};

/// A fresh directory in the system's temp directory.
fn scratch_dir() -> PathBuf {
    stream_tests::temp_dir("sqlite-errors")
}

async fn connect_error(url: &str) -> String {
    match SqliteBackend::connect(url).await {
        Ok(_) => panic!("connecting to {url} should fail"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn missing_directory_is_named() {
    let dir = scratch_dir();
    let path = dir.join("no-such-dir").join("streams.db");
    let url = format!("sqlite://{}", path.display());
    let error = connect_error(&url).await;
    assert!(error.contains(&path.display().to_string()), "{error}");
    assert!(
        error.contains(&format!(
            "directory {} does not exist",
            dir.join("no-such-dir").display()
        )),
        "{error}"
    );
}

#[tokio::test]
async fn directory_instead_of_file_is_named() {
    let dir = scratch_dir();
    let url = format!("sqlite://{}", dir.display());
    let error = connect_error(&url).await;
    assert!(error.contains(&dir.display().to_string()), "{error}");
    assert!(error.contains("is a directory"), "{error}");
}

#[tokio::test]
async fn file_that_is_not_a_database_is_named() {
    let path = scratch_dir().join("notes.txt");
    std::fs::write(
        &path,
        "these are not the tables you are looking for\n".repeat(200),
    )
    .expect("writing a text file");
    let url = format!("sqlite:{}", path.display());
    let error = connect_error(&url).await;
    assert!(error.contains(&path.display().to_string()), "{error}");
    assert!(error.contains("not a database"), "{error}");
    // Nothing was overwritten.
    let text = std::fs::read_to_string(&path).expect("reading the text file back");
    assert!(text.starts_with("these are not the tables"));
}

/// A database opened read-only (`?mode=ro`): connecting fails with the path and the reason,
/// rather than failing later at the first publish.
#[tokio::test]
async fn read_only_database_is_named() {
    let path = scratch_dir().join("streams.db");
    let url = format!("sqlite://{}", path.display());
    let backend = SqliteBackend::connect(&url)
        .await
        .expect("creating the database");
    backend.close().await.expect("closing");
    let error = connect_error(&format!("{url}?mode=ro")).await;
    assert!(error.contains(&path.display().to_string()), "{error}");
    assert!(error.contains("read-only"), "{error}");
}

/// Makes a file unwritable even for root (`chattr +i`) until dropped.
struct Immutable(PathBuf);

impl Immutable {
    fn new(path: PathBuf) -> Self {
        let status = std::process::Command::new("chattr")
            .arg("+i")
            .arg(&path)
            .status()
            .expect("running chattr (e2fsprogs)");
        assert!(status.success(), "chattr +i {} failed", path.display());
        Immutable(path)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

/// A database file that cannot be written: connect fails naming the path and saying
/// read-only. Without write permission where permissions apply; made immutable where they
/// do not (root).
#[tokio::test]
async fn read_only_file_is_named() {
    let dir = scratch_dir();
    let made = dir.join("made.db");
    let backend = SqliteBackend::connect(&format!("sqlite://{}", made.display()))
        .await
        .expect("creating the database");
    backend.close().await.expect("closing");
    // A copy, so no file descriptor this process opened on the original (SQLite keeps some
    // for reuse) can reach it.
    let path = dir.join("streams.db");
    std::fs::copy(&made, &path).expect("copying the database");
    for suffix in ["-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", made.display()));
        if from.exists() {
            std::fs::copy(&from, format!("{}{suffix}", path.display())).expect("copying");
        }
    }
    let url = format!("sqlite://{}", path.display());
    let mut perms = std::fs::metadata(&path).expect("metadata").permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(&path, perms).expect("chmod");
    let _immutable = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .is_ok()
        .then(|| Immutable::new(path.clone()));
    assert!(
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .is_err(),
        "the file is still writable"
    );
    let error = connect_error(&url).await;
    assert!(error.contains(&path.display().to_string()), "{error}");
    assert!(error.contains("read-only"), "{error}");
}

#[tokio::test]
async fn bad_url_is_a_clear_error() {
    let error = match stream_runtime::backend::connect("sqlite://x.db?mode=sideways").await {
        Ok(_) => panic!("an unknown mode should fail"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("sqlite://x.db?mode=sideways"), "{error}");
}

#[tokio::test]
async fn start_ids_must_be_non_negative_integers() {
    let backend = SqliteBackend::connect("sqlite::memory:")
        .await
        .expect("connect");
    for bad in ["", "abc", "-1", "1-0", "1.5", "99999999999999999999"] {
        let result = backend
            .ensure_group("s", "g", &StartPosition::FromId(bad.to_owned()))
            .await;
        assert!(
            matches!(result, Err(Error::InvalidStartId { ref id, .. }) if id == bad),
            "{bad:?}: {result:?}"
        );
    }
    backend
        .ensure_group("s", "g", &StartPosition::FromId("0".to_owned()))
        .await
        .expect("0 is a valid start id");
    backend.close().await.expect("close");
}

/// A file whose schema a newer build migrated is refused, not misread.
#[tokio::test]
async fn newer_schema_is_refused() {
    let path = scratch_dir().join("streams.db");
    let url = format!("sqlite://{}", path.display());
    SqliteBackend::connect(&url)
        .await
        .expect("creating the database")
        .close()
        .await
        .expect("closing");
    let pool = sqlx::SqlitePool::connect(&url)
        .await
        .expect("opening with sqlx");
    sqlx::query("INSERT INTO stream_schema_migrations (version, applied_at) VALUES (999, 0)")
        .execute(&pool)
        .await
        .expect("faking a newer schema");
    pool.close().await;
    let error = connect_error(&url).await;
    assert!(error.contains(&path.display().to_string()), "{error}");
    assert!(
        error.contains("version 999, newer than this build"),
        "{error}"
    );
}

/// A file created by migration 1 alone (an older build) is upgraded on connect: a claim
/// pending from before gets its message's append time as its claim time (an upper bound of
/// its age), and new claims record their own.
#[tokio::test]
async fn version_1_file_is_upgraded() {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    use stream_runtime::backend::{BackendAdmin, GroupRef};

    let path = scratch_dir().join("streams.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let pool = sqlx::SqlitePool::connect(&url)
        .await
        .expect("creating the file with sqlx");
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    let appended = now_ms - 60_000;
    let setup = format!(
        "{v1};
         CREATE TABLE stream_schema_migrations (version INTEGER PRIMARY KEY,
                                                applied_at INTEGER NOT NULL);
         INSERT INTO stream_schema_migrations VALUES (1, 0);
         INSERT INTO stream_groups VALUES ('old', 'g', 0);
         INSERT INTO stream_messages (stream, payload, headers, created_at)
             VALUES ('old', x'61', '{{}}', {appended}), ('old', x'62', '{{}}', {appended});
         INSERT INTO stream_pending (stream, group_name, id, token, deadline, deliveries)
             VALUES ('old', 'g', 1, 1, {deadline}, 1);",
        v1 = include_str!("../stream-runtime/src/backend/sqlite/migrations/0001_initial.sql"),
        deadline = now_ms + 3_600_000,
    );
    sqlx::raw_sql(&setup)
        .execute(&pool)
        .await
        .expect("a version 1 file");
    pool.close().await;

    let backend = SqliteBackend::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("connect and upgrade");
    let groups = backend.list_groups("old").await.expect("list_groups");
    assert_eq!(groups.len(), 1);
    assert_eq!((groups[0].lag, groups[0].pending), (1, 1));
    let claimed_before = UNIX_EPOCH + Duration::from_millis(appended as u64);
    assert_eq!(groups[0].oldest_claimed_at, Some(claimed_before));

    // Message 1 is still held; claiming takes message 2, now; acking it leaves message 1's.
    let group = GroupRef {
        stream: "old",
        group: "g",
        consumer: "c",
    };
    let before = SystemTime::now() - Duration::from_millis(1);
    let claimed = backend
        .claim(group, 10, Duration::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].message.id.as_str(), "2");
    let pool = sqlx::SqlitePool::connect(&url)
        .await
        .expect("opening with sqlx");
    let rows: Vec<(i64, i64)> =
        sqlx::query_as("SELECT id, claimed_at FROM stream_pending ORDER BY id")
            .fetch_all(&pool)
            .await
            .expect("pending rows");
    pool.close().await;
    assert_eq!(rows[0], (1, appended));
    let second = UNIX_EPOCH + Duration::from_millis(rows[1].1 as u64);
    assert!(
        second >= before,
        "claim time {second:?} is before the claim"
    );
    let groups = backend.list_groups("old").await.expect("list_groups");
    assert_eq!(groups[0].oldest_claimed_at, Some(claimed_before));
    backend
        .ack(group, &[claimed[0].claim()])
        .await
        .expect("ack");
    backend.close().await.expect("close");
}
