//! Helpers shared by the Postgres test files.
#![allow(dead_code)]

use std::sync::Arc;

use stream_runtime::backend::postgres::PostgresBackend;
use stream_runtime::backend::SharedBackend;

/// The schema the Postgres tests share; every case uses its own random app name.
/// Named after the latest migration: a build refuses a schema newer than it knows, so
/// branches still at an older version keep their own schema on the shared test server.
pub const SCHEMA: &str = "stream_tests_v3";

/// The test server's URL.
pub fn url() -> String {
    std::env::var("STREAMS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The URL with an `application_name`, so a fault test kills only its own connections.
pub fn url_with_app_name(app_name: &str) -> String {
    let url = url();
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}application_name={app_name}")
}

/// A backend on the shared test schema, or `None` (a loud skip) when the server is down.
pub async fn backend_at(url: &str) -> Option<PostgresBackend> {
    match PostgresBackend::connect_with_schema(url, SCHEMA).await {
        Ok(backend) => Some(backend),
        Err(e) => stream_runtime::conformance::skip_or_fail("postgres", &e.to_string()),
    }
}

/// [`backend_at`] the test server, shared.
pub async fn shared_backend() -> Option<SharedBackend> {
    Some(Arc::new(backend_at(&url()).await?) as SharedBackend)
}
