//! The Redis Streams backend: the conformance suite against the shared server
//! (`STREAMS_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`), plus Redis-specific cases:
//! entries readable by other clients, reconnects after `CLIENT KILL` and a server restart
//! (on a throwaway server of its own).

stream_runtime::conformance_tests!(redis, stream_tests::shared_redis());

// The whole suite again on a Redis Cluster of this binary's own (three primaries, one
// replica each, on loopback ports), shared by its cases.
stream_runtime::conformance_tests!(redis_cluster, stream_tests::shared_redis_cluster());

/// Cases only the Redis backend has: its key and field layout, its retry parking, consumer
/// cleanup, push wake-ups across connections, and reconnects on a throwaway server.
mod redis_specific {
    mod cluster;
    mod cluster_moves;
    mod faults;
    mod streams;

    use std::collections::{BTreeSet, HashSet};
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::{Duration, Instant};

    use redis::AsyncCommands;
    use stream_runtime::backend::redis::{stream_key, RedisBackend};
    use stream_runtime::backend::{GroupRef, SharedBackend};
    use stream_runtime::conformance::{
        eventually, unique_name, wait_for, wait_for_async, Recorder,
    };
    use stream_runtime::{
        HandlerError, Message, NewMessage, PublishOptions, RetryDelay, Service, ServiceConfig,
        StartPosition, SubscribeOptions, Trim,
    };

    use stream_tests::{redis_backend, redis_url, shared_redis, CallWatch};

    fn service(backend: SharedBackend) -> Service {
        Service::from_shared(backend, ServiceConfig::default().app(unique_name("rt")))
    }

    fn fast() -> SubscribeOptions {
        SubscribeOptions::new()
            .poll_interval(Duration::from_millis(25))
            .visibility_timeout(Duration::from_secs(10))
            .shutdown_timeout(Duration::from_secs(5))
            .retry_delay(RetryDelay::Fixed(Duration::from_millis(20)))
    }

    async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
        redis::Client::open(url)
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("raw redis connection")
    }
}
