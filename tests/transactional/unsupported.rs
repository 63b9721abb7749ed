//! Backends without transactions (memory, Redis) and a transaction of the other SQL
//! database: a clear error naming the backends that support them, and nothing stored.

use sqlx::Connection;
use stream_runtime::{Error, PublishOptions, Service, ServiceConfig, SqliteTx};

/// Every transactional call on `service` (not a SQLite one) with a SQLite connection.
async fn assert_refused(service: &Service, kind: &str) {
    let mut conn = sqlx::SqliteConnection::connect("sqlite::memory:")
        .await
        .expect("an in-memory SQLite connection");
    let check = |result: Result<(), Error>, what: &str| {
        let err = match result {
            Ok(()) => panic!("{what} worked on the {kind} backend"),
            Err(e) => e,
        };
        let text = err.to_string();
        assert!(
            matches!(&err, Error::TransactionsUnsupported { backend, requested: "sqlite", .. } if *backend == kind),
            "{what}: {err:?}"
        );
        assert!(
            text.contains("postgres and sqlite backends"),
            "{what}: the error does not name the backends that support it: {text}"
        );
    };
    check(
        service
            .publish_in(&mut conn, "orders", "x", PublishOptions::new())
            .await
            .map(drop),
        "publish_in",
    );
    check(
        service
            .publish_batch_in(&mut conn, "orders", ["x", "y"], PublishOptions::new())
            .await
            .map(drop),
        "publish_batch_in",
    );
    check(service.begin::<SqliteTx>().await.map(drop), "begin");
    check(
        service
            .subscribe_transactional::<SqliteTx, _>(
                "orders",
                "g",
                |_m, _tx: &mut SqliteTx| Box::pin(async { Ok(()) }),
                stream_runtime::SubscribeOptions::new(),
            )
            .await
            .map(drop),
        "subscribe_transactional",
    );
    let stored = service
        .admin()
        .streams()
        .await
        .expect("listing streams")
        .iter()
        .map(|s| s.length)
        .sum::<u64>();
    assert_eq!(stored, 0, "a refused publish stored something");
}

mod memory {
    #[tokio::test]
    async fn transactional_calls_name_the_backends_that_support_them() {
        let service = stream_runtime::Service::memory();
        super::assert_refused(&service, "memory").await;
        service.close().await.expect("close");
    }
}

mod redis {
    use stream_runtime::conformance::unique_name;

    #[tokio::test]
    async fn transactional_calls_name_the_backends_that_support_them() {
        let Some(url) = stream_tests::backend_url("redis").await else {
            return;
        };
        let config = super::ServiceConfig::default().app(unique_name("tx"));
        let service = super::Service::connect(&url, config)
            .await
            .expect("connect");
        super::assert_refused(&service, "redis").await;
        service.close().await.expect("close");
    }
}

mod postgres {
    use stream_runtime::conformance::unique_name;

    /// A SQLite connection given to a service on Postgres.
    #[tokio::test]
    async fn transactional_publish_with_a_sqlite_connection_is_refused() {
        let Some(url) = stream_tests::backend_url("postgres").await else {
            return;
        };
        let config = super::ServiceConfig::default().app(unique_name("tx"));
        let service = super::Service::connect(&url, config)
            .await
            .expect("connect");
        super::assert_refused(&service, "postgres").await;
        service.close().await.expect("close");
    }
}
