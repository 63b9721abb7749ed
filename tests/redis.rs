//! The Redis Streams backend: the conformance suite against the shared server
//! (`STREAMS_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`), plus Redis-specific cases:
//! entries readable by other clients, reconnects after `CLIENT KILL` and a server restart
//! (on a throwaway server of its own).

use stream_runtime::backend::redis::RedisBackend;
use stream_runtime::backend::SharedBackend;

fn redis_url() -> String {
    std::env::var("STREAMS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

async fn shared_backend() -> Option<SharedBackend> {
    match RedisBackend::connect(&redis_url()).await {
        Ok(backend) => Some(std::sync::Arc::new(backend)),
        Err(e) => stream_runtime::conformance::skip_or_fail("redis", &e.to_string()),
    }
}

stream_runtime::conformance_tests!(redis, shared_backend());
