//! Bad input on the SQLite backend: paths that cannot be opened, files that are not
//! databases, read-only databases. Every error names the path.

use std::path::PathBuf;

use stream_runtime::backend::sqlite::SqliteBackend;
use stream_runtime::backend::Backend;
use stream_runtime::conformance::unique_name;
use stream_runtime::{Error, StartPosition};

/// A fresh directory in the system's temp directory.
fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name("stream-tests-sqlite-errors-"));
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    dir
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

/// A database file without write permission. Skipped when running with privileges that
/// ignore file permissions (root), where the file stays writable.
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
