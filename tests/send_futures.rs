//! Every public future of the crate is `Send`, on every backend: each one here must be
//! accepted by `tokio::spawn`. This file failing to compile is the failure.

use std::future::Future;

use stream_runtime::backend::postgres::PostgresBackend;
use stream_runtime::backend::redis::RedisBackend;
use stream_runtime::backend::sqlite::SqliteBackend;
use stream_runtime::prelude::*;
use stream_runtime::{backend, Runtime, ServiceConfig};

/// Spawns `future` (so it must be `Send + 'static`) and aborts it at once: only the type
/// check matters, nothing is connected to.
fn spawn<F>(future: F)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future).abort();
}

const URLS: [&str; 4] = [
    "memory://",
    "sqlite::memory:",
    "postgres://postgres@127.0.0.1:1/none",
    "redis://127.0.0.1:1",
];

#[tokio::test]
async fn public_futures_are_send() {
    for url in URLS {
        spawn(async move { Service::connect(url, ServiceConfig::default()).await });
        spawn(async move { backend::connect(url).await });
    }
    spawn(SqliteBackend::connect("sqlite::memory:"));
    spawn(PostgresBackend::connect(
        "postgres://postgres@127.0.0.1:1/none",
    ));
    spawn(PostgresBackend::connect_with_schema(
        "postgres://postgres@127.0.0.1:1/none",
        "s",
    ));
    spawn(RedisBackend::connect("redis://127.0.0.1:1"));

    spawn(async { Runtime::new().start().await.map(|_| ()) });
    spawn(async { Runtime::new().run().await });
    spawn(async {
        Runtime::new()
            .run_until(|service| async move {
                service
                    .publish("orders", b"x".to_vec(), Default::default())
                    .await?;
                Ok::<_, stream_runtime::Error>(())
            })
            .await
    });
    spawn(async {
        let started = Runtime::new().start().await?;
        started.shutdown().await
    });
    spawn(stream_runtime::run());

    spawn(async {
        let service = Service::connect("sqlite::memory:", ServiceConfig::default()).await?;
        service
            .publish("orders", b"x".to_vec(), Default::default())
            .await?;
        service
            .publish_json("orders", &serde_json::json!({"a": 1}), Default::default())
            .await?;
        service
            .publish_batch("orders", vec![b"x".to_vec()], Default::default())
            .await?;
        let consumer = service
            .subscribe(
                "orders",
                "billing",
                |_msg: Message| async { Ok(()) },
                SubscribeOptions::default(),
            )
            .await?;
        consumer.close().await;
        service.close().await.map(|_| ())
    });
}
