//! The conformance suite on the SQLite backend, each case on a fresh database file.

/// A `sqlite://` URL naming a new database file in the system's temp directory.
fn fresh_database_url() -> String {
    let dir = std::env::temp_dir().join(format!("stream-tests-sqlite-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("creating {}: {e}", dir.display());
    }
    let file = dir.join(format!(
        "{}.db",
        stream_runtime::conformance::unique_name("case")
    ));
    format!("sqlite://{}", file.display())
}

stream_runtime::conformance_tests!(sqlite, async {
    let url = super::fresh_database_url();
    match stream_runtime::backend::sqlite::SqliteBackend::connect(&url).await {
        Ok(backend) => Some(std::sync::Arc::new(backend) as stream_runtime::backend::SharedBackend),
        Err(e) => panic!("connecting to {url}: {e}"),
    }
});

stream_runtime::conformance_tests!(sqlite_in_memory, async {
    match stream_runtime::backend::connect("sqlite::memory:").await {
        Ok(backend) => Some(backend),
        Err(e) => panic!("connecting to sqlite::memory:: {e}"),
    }
});
