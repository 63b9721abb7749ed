//! The conformance suite on the SQLite backend, each case on a fresh database file.

stream_runtime::conformance_tests!(sqlite, async {
    let url = stream_tests::sqlite_url();
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
