//! Transactions on Postgres and SQLite: publishing inside the caller's transaction, and
//! transactional handlers whose writes commit together with their ack. The same cases run
//! on both backends (`postgres::transactional_*`, `sqlite::transactional_*`); memory and
//! Redis answer with an error naming the backends that support transactions.

mod macro_consumer;
mod unsupported;

use std::time::Duration;

use stream_runtime::admin::ReadFrom;
use stream_runtime::conformance::unique_name;
use stream_runtime::{Message, Service, ServiceConfig, StartPosition, SubscribeOptions};
use tokio::sync::mpsc;

/// How long a test waits for a message that must come.
const WAIT: Duration = Duration::from_secs(15);

/// A fresh service of `kind` with an app of its own, and its URL; `None` when skipped.
async fn service(kind: &str) -> Option<(Service, String)> {
    let url = stream_tests::backend_url(kind).await?;
    let config = ServiceConfig::default().app(unique_name("tx"));
    match Service::connect(&url, config).await {
        Ok(service) => Some((service, url)),
        Err(e) => panic!("connecting to the {kind} backend: {e}"),
    }
}

/// A second service on the same database and app (another process, in effect).
async fn twin(service: &Service, url: &str) -> Service {
    let config = ServiceConfig::default().app(service.config().app.clone());
    Service::connect(url, config)
        .await
        .expect("connecting a second service")
}

/// Subscribes a plain consumer that sends `(id, payload)` of each message to the receiver.
async fn collect(
    service: &Service,
    stream: &str,
    options: SubscribeOptions,
) -> mpsc::UnboundedReceiver<(String, String)> {
    let (tx, rx) = mpsc::unbounded_channel();
    service
        .subscribe(
            stream,
            "collector",
            move |m: Message| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((
                        m.id.to_string(),
                        String::from_utf8_lossy(&m.payload).into_owned(),
                    ));
                    Ok(())
                }
            },
            options.start(StartPosition::Earliest),
        )
        .await
        .expect("subscribe");
    rx
}

async fn next(rx: &mut mpsc::UnboundedReceiver<(String, String)>, what: &str) -> (String, String) {
    match tokio::time::timeout(WAIT, rx.recv()).await {
        Ok(Some(got)) => got,
        Ok(None) => panic!("the consumer stopped before {what}"),
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// The payloads a stream holds, oldest first.
async fn payloads(service: &Service, stream: &str) -> Vec<String> {
    service
        .admin()
        .read(stream, &ReadFrom::Start, 1000)
        .await
        .expect("reading the stream")
        .iter()
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
        .collect()
}

/// Waits until `stream`'s group `group` has nothing pending and nothing left to claim.
async fn wait_settled(service: &Service, stream: &str, group: &str) {
    let admin = service.admin();
    stream_runtime::conformance::wait_for_async(
        &format!("group {group} of {stream} to settle"),
        || {
            let admin = admin.clone();
            async move {
                let groups = admin.groups(stream).await.expect("listing groups");
                groups
                    .iter()
                    .any(|g| g.group == group && g.pending == 0 && g.lag == 0)
            }
        },
    )
    .await;
}

fn numeric(id: &str) -> i64 {
    id.parse().expect("an integer id")
}

/// The cases, for one backend: `$tx` is its transaction type, `$kind` its name, `$pool`
/// the pool type of a user-supplied pool on the same database.
macro_rules! transactional_cases {
    ($module:ident, $kind:literal, $tx:ty, $pool:ty) => {
        mod $module {
            use std::sync::atomic::{AtomicU32, Ordering};
            use std::sync::Arc;
            use std::time::{Duration, Instant};

            use stream_runtime::conformance::{unique_name, wait_for_async};
            use stream_runtime::middleware::Next;
            use stream_runtime::{
                transaction, HandlerError, Message, PublishOptions, RetryDelay, Service,
                SubscribeOptions,
            };

            use super::*;

            type Tx = $tx;
            const KIND: &str = $kind;

            /// A user table with no unique constraint: duplicates would show.
            async fn create_table(service: &Service) -> String {
                let table = unique_name("tx_effects_");
                let mut tx: Tx = service.begin().await.expect("begin");
                sqlx::query(&format!("CREATE TABLE {table} (msg TEXT NOT NULL, attempt INTEGER NOT NULL)"))
                    .execute(&mut *tx)
                    .await
                    .expect("creating the table");
                tx.commit().await.expect("commit");
                table
            }

            async fn rows(service: &Service, table: &str) -> Vec<(String, i32)> {
                let mut tx: Tx = service.begin().await.expect("begin");
                let rows: Vec<(String, i32)> =
                    sqlx::query_as(&format!("SELECT msg, attempt FROM {table} ORDER BY attempt"))
                        .fetch_all(&mut *tx)
                        .await
                        .expect("reading the table");
                tx.rollback().await.expect("rollback");
                rows
            }

            async fn drop_table(service: &Service, table: &str) {
                if let Ok(mut tx) = service.begin::<Tx>().await {
                    let _ = sqlx::query(&format!("DROP TABLE {table}")).execute(&mut *tx).await;
                    let _ = tx.commit().await;
                }
            }

            /// Inserts `(payload, attempt)` in the handler's transaction.
            async fn insert(tx: &mut Tx, table: &str, m: &Message) -> Result<(), HandlerError> {
                sqlx::query(&format!("INSERT INTO {table} (msg, attempt) VALUES ($1, $2)"))
                    .bind(String::from_utf8_lossy(&m.payload).into_owned())
                    .bind(i32::try_from(m.attempt).unwrap_or(i32::MAX))
                    .execute(&mut **tx)
                    .await
                    .map_err(HandlerError::retry)?;
                Ok(())
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn transactional_rollback_publishes_nothing() {
                let Some((service, _)) = service(KIND).await else { return };
                let mut rx = collect(&service, "orders", SubscribeOptions::new()).await;
                let mut tx: Tx = service.begin().await.expect("begin");
                service
                    .publish_batch_in(&mut *tx, "orders", ["rolled back 1", "rolled back 2"], PublishOptions::new())
                    .await
                    .expect("publish_batch_in");
                service
                    .publish_in(&mut *tx, "orders", "rolled back 3", PublishOptions::new())
                    .await
                    .expect("publish_in");
                tx.rollback().await.expect("rollback");
                service
                    .publish("orders", "after", PublishOptions::new())
                    .await
                    .expect("publish");
                let (_, first) = next(&mut rx, "the message published after the rollback").await;
                assert_eq!(first, "after", "a rolled-back publish was delivered");
                assert_eq!(payloads(&service, "orders").await, ["after"]);
                service.close().await.expect("close");
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn transactional_commit_publishes_and_wakes_a_waiting_consumer_within_50ms() {
                let Some((service, _)) = service(KIND).await else { return };
                // Only a push wake-up can deliver within the test's bound.
                let options = SubscribeOptions::new().poll_interval(Duration::from_secs(60));
                let mut rx = collect(&service, "orders", options).await;
                service
                    .publish("orders", "warm-up", PublishOptions::new())
                    .await
                    .expect("publish");
                assert_eq!(next(&mut rx, "the warm-up message").await.1, "warm-up");

                let mut worst = Duration::ZERO;
                for round in 0..5 {
                    let mut tx: Tx = service.begin().await.expect("begin");
                    let payload = format!("committed {round}");
                    let id = service
                        .publish_json_in(&mut *tx, "orders", &payload, PublishOptions::new())
                        .await
                        .expect("publish_json_in");
                    assert!(
                        tokio::time::timeout(Duration::from_millis(100), rx.recv()).await.is_err(),
                        "a message was delivered before its transaction committed"
                    );
                    let started = Instant::now();
                    tx.commit().await.expect("commit");
                    let (got, body) = next(&mut rx, "the committed message").await;
                    let took = started.elapsed();
                    assert_eq!((got, body), (id.to_string(), format!("\"{payload}\"")));
                    worst = worst.max(took);
                }
                println!("{KIND}: commit to delivery, worst of 5: {worst:?}");
                assert!(worst < Duration::from_millis(50), "took {worst:?}");
                service.close().await.expect("close");
            }

            /// A transaction that appended and commits late holds up later appends to the
            /// stream, so no cursor moves past its id while it is open; here on a pool of the
            /// caller's own, not the service's.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn transactional_late_commit_is_not_skipped_by_a_cursor() {
                let Some((service, url)) = service(KIND).await else { return };
                let pool = <$pool>::connect(&own_pool_url(&url)).await.expect("connecting a pool of our own");
                let options = SubscribeOptions::new().poll_interval(Duration::from_millis(10));
                let mut rx = collect(&service, "orders", options).await;

                let mut late = pool.begin().await.expect("begin");
                let late_id = service
                    .publish_in(&mut *late, "orders", "late", PublishOptions::new())
                    .await
                    .expect("publish_in");
                let publisher = service.clone();
                let later = tokio::spawn(async move {
                    publisher.publish("orders", "later", PublishOptions::new()).await
                });
                // The consumer polls every 10 ms meanwhile; nothing may be delivered, and the
                // later publish waits for the open transaction.
                assert!(
                    tokio::time::timeout(Duration::from_millis(300), rx.recv()).await.is_err(),
                    "a message was delivered while an earlier id was uncommitted"
                );
                assert!(!later.is_finished(), "a later append did not wait for the open transaction");
                late.commit().await.expect("commit");
                let later_id = later.await.expect("publisher task").expect("publish");
                assert!(
                    numeric(late_id.as_str()) < numeric(later_id.as_str()),
                    "ids {late_id} (committed first) and {later_id}"
                );
                assert_eq!(next(&mut rx, "the late message").await, (late_id.to_string(), "late".to_owned()));
                assert_eq!(next(&mut rx, "the later message").await, (later_id.to_string(), "later".to_owned()));
                pool.close().await;
                service.close().await.expect("close");
            }

            /// The claim expires while a middleware holds the first attempt back, a second
            /// service on the same database takes the message over and commits; then the first
            /// attempt's handler runs, and its transaction cannot commit.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn transactional_handler_whose_claim_was_taken_over_cannot_commit() {
                taken_over_cannot_commit(false).await;
            }

            /// The same, with both services' transactions from a pool of the caller's own.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn transactional_handler_on_a_user_pool_whose_claim_was_taken_over_cannot_commit() {
                taken_over_cannot_commit(true).await;
            }

            async fn taken_over_cannot_commit(user_pool: bool) {
                let Some((service, url)) = service(KIND).await else { return };
                if user_pool {
                    let pool = <$pool>::connect(&own_pool_url(&url)).await.expect("connecting a pool of our own");
                    service.set_transaction_pool(pool).await.expect("set_transaction_pool");
                }
                let table = create_table(&service).await;
                let visibility = Duration::from_millis(300);
                let options = || {
                    SubscribeOptions::new()
                        .start(stream_runtime::StartPosition::Earliest)
                        .visibility_timeout(visibility)
                        .poll_interval(Duration::from_millis(20))
                        .unlimited_retries()
                };
                let handler = {
                    let table = table.clone();
                    transaction::handler_fn(move |m: Message, tx: &mut Tx| {
                        let table = table.clone();
                        Box::pin(async move { insert(tx, &table, &m).await })
                    })
                };
                // The first attempt waits, before its transaction begins, until the second
                // attempt's row committed.
                let (held, mut held_rx) = mpsc::unbounded_channel();
                let first_done = Arc::new(AtomicU32::new(0));
                {
                    let (service2, table, first_done) = (service.clone(), table.clone(), first_done.clone());
                    service.add_middleware(move |m: Message, next: Next| {
                        let (held, service2, table, first_done) =
                            (held.clone(), service2.clone(), table.clone(), first_done.clone());
                        async move {
                            if m.attempt == 1 {
                                let _ = held.send(());
                                wait_for_async("the second attempt's commit", || {
                                    let (service2, table) = (service2.clone(), table.clone());
                                    async move { rows(&service2, &table).await.iter().any(|r| r.1 == 2) }
                                })
                                .await;
                            }
                            let result = next.run(m.clone()).await;
                            if m.attempt == 1 {
                                first_done.store(if result.is_ok() { 1 } else { 2 }, Ordering::SeqCst);
                            }
                            result
                        }
                    });
                }
                let first = service
                    .subscribe_transactional::<Tx, _>("orders", "billing", handler.clone(), options())
                    .await
                    .expect("subscribe_transactional");
                service.publish("orders", "m1", PublishOptions::new()).await.expect("publish");
                tokio::time::timeout(super::WAIT, held_rx.recv()).await.expect("the first attempt");

                let other = twin(&service, &url).await;
                if user_pool {
                    let pool = <$pool>::connect(&own_pool_url(&url)).await.expect("connecting a pool of our own");
                    other.set_transaction_pool(pool).await.expect("set_transaction_pool");
                }
                let second = other
                    .subscribe_transactional::<Tx, _>("orders", "billing", handler, options())
                    .await
                    .expect("subscribe_transactional on the second service");
                wait_for_async("the first attempt to end", || {
                    let first_done = first_done.clone();
                    async move { first_done.load(Ordering::SeqCst) != 0 }
                })
                .await;
                first.close().await;
                second.close().await;
                assert_eq!(first_done.load(Ordering::SeqCst), 2, "the first attempt reported success");
                assert_eq!(rows(&service, &table).await, [("m1".to_owned(), 2)]);
                wait_settled(&service, "orders", "billing").await;
                drop_table(&service, &table).await;
                other.close().await.expect("close");
                service.close().await.expect("close");
            }

            /// An error, then a panic, each after writing a row and publishing through the
            /// transaction: both roll back; the third attempt commits its row, its publish and
            /// its ack together.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn transactional_handler_error_or_panic_rolls_back_its_rows_and_publishes() {
                let Some((service, _)) = service(KIND).await else { return };
                let table = create_table(&service).await;
                let publisher = service.clone();
                let handler = {
                    let table = table.clone();
                    transaction::handler_fn(move |m: Message, tx: &mut Tx| {
                        let (table, publisher) = (table.clone(), publisher.clone());
                        Box::pin(async move {
                            insert(tx, &table, &m).await?;
                            publisher
                                .publish_in(&mut **tx, "invoices", m.payload.to_vec(), PublishOptions::new())
                                .await
                                .map_err(HandlerError::retry)?;
                            match m.attempt {
                                1 => Err(HandlerError::retry("the first attempt fails")),
                                2 => panic!("the second attempt panics"),
                                _ => Ok(()),
                            }
                        })
                    })
                };
                let options = SubscribeOptions::new()
                    .start(stream_runtime::StartPosition::Earliest)
                    .retry_delay(RetryDelay::Fixed(Duration::from_millis(10)))
                    .max_retries(5);
                let consumer = service
                    .subscribe_transactional::<Tx, _>("orders", "billing", handler, options)
                    .await
                    .expect("subscribe_transactional");
                service.publish("orders", "m1", PublishOptions::new()).await.expect("publish");
                wait_settled(&service, "orders", "billing").await;
                consumer.close().await;
                assert_eq!(rows(&service, &table).await, [("m1".to_owned(), 3)]);
                assert_eq!(payloads(&service, "invoices").await, ["m1"]);
                drop_table(&service, &table).await;
                service.close().await.expect("close");
            }

            /// A handler whose transactions come from a pool of the caller's: its row and its
            /// ack commit together on that pool; once the pool is closed, no transaction can
            /// begin, and the next message stays unacknowledged (the service's own pool is not
            /// used behind the caller's back).
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn transactional_handler_on_a_user_pool_commits_rows_and_ack_together() {
                let Some((service, url)) = service(KIND).await else { return };
                let table = create_table(&service).await;
                let pool = <$pool>::connect(&own_pool_url(&url)).await.expect("connecting a pool of our own");
                service.set_transaction_pool(pool.clone()).await.expect("set_transaction_pool");
                assert!(service.transaction_pool().is_some());
                let attempts = Arc::new(AtomicU32::new(0));
                let handler = {
                    let (table, attempts) = (table.clone(), attempts.clone());
                    transaction::handler_fn(move |m: Message, tx: &mut Tx| {
                        let (table, attempts) = (table.clone(), attempts.clone());
                        Box::pin(async move {
                            attempts.fetch_add(1, Ordering::SeqCst);
                            insert(tx, &table, &m).await
                        })
                    })
                };
                let options = SubscribeOptions::new()
                    .start(stream_runtime::StartPosition::Earliest)
                    .retry_delay(RetryDelay::Fixed(Duration::from_millis(10)))
                    .poll_interval(Duration::from_millis(20))
                    .transaction_isolation(stream_runtime::Isolation::Serializable)
                    .unlimited_retries();
                let consumer = service
                    .subscribe_transactional::<Tx, _>("orders", "billing", handler, options)
                    .await
                    .expect("subscribe_transactional");
                service.publish("orders", "m1", PublishOptions::new()).await.expect("publish");
                wait_settled(&service, "orders", "billing").await;
                assert_eq!(rows(&service, &table).await, [("m1".to_owned(), 1)]);

                pool.close().await;
                service.publish("orders", "m2", PublishOptions::new()).await.expect("publish");
                wait_for_async("a failed delivery of m2", || {
                    let service = service.clone();
                    async move {
                        service.admin().pending("orders", "billing", 10).await.is_ok_and(|p| {
                            p.iter().any(|p| p.attempt >= 2)
                        })
                    }
                })
                .await;
                consumer.close().await;
                assert_eq!(attempts.load(Ordering::SeqCst), 1, "a handler ran without the user's pool");
                // `service.begin` takes the closed pool too: look through a second service.
                let other = twin(&service, &url).await;
                assert_eq!(rows(&other, &table).await, [("m1".to_owned(), 1)]);
                drop_table(&other, &table).await;
                other.close().await.expect("close");
                service.close().await.expect("close");
            }

            /// A pool of another database is refused, naming both databases and no secret;
            /// the service's own pool stays in use.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn transactional_pool_of_another_database_is_refused() {
                let Some((service, url)) = service(KIND).await else { return };
                let other = other_database_pool(KIND, &url).await;
                let err = service.set_transaction_pool(other).await.expect_err("a pool of another database was accepted");
                let text = err.to_string();
                assert!(
                    matches!(err, stream_runtime::Error::TransactionPoolMismatch { .. }),
                    "{err:?}"
                );
                let (expected, found) = match &err {
                    stream_runtime::Error::TransactionPoolMismatch { expected, found } => (expected.clone(), found.clone()),
                    _ => unreachable!(),
                };
                assert_ne!(expected, found);
                if KIND == "postgres" {
                    assert!(expected.contains("database test") || expected.contains("database "), "{text}");
                    assert!(found.contains("database postgres"), "{text}");
                } else {
                    assert!(found.contains("other.db"), "{text}");
                    assert!(expected.contains("streams.db"), "{text}");
                }
                assert!(!text.contains("password"), "{text}");
                assert!(service.transaction_pool().is_none());
                service.close().await.expect("close");
            }

            /// A plain publish from inside a transactional handler: on SQLite it fails at once
            /// (it could only wait for the write lock the handler's transaction holds), telling
            /// to publish through the transaction; on Postgres it works, outside the transaction.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn transactional_handler_plain_publish() {
                let Some((service, _)) = service(KIND).await else { return };
                let (sent, mut results) = mpsc::unbounded_channel();
                let publisher = service.clone();
                let handler = transaction::handler_fn(move |_m: Message, _tx: &mut Tx| {
                    let (publisher, sent) = (publisher.clone(), sent.clone());
                    Box::pin(async move {
                        let started = Instant::now();
                        let result = publisher.publish("invoices", "plain", PublishOptions::new()).await;
                        let _ = sent.send((result, started.elapsed()));
                        Ok(())
                    })
                });
                let consumer = service
                    .subscribe_transactional::<Tx, _>(
                        "orders",
                        "billing",
                        handler,
                        SubscribeOptions::new().start(stream_runtime::StartPosition::Earliest),
                    )
                    .await
                    .expect("subscribe_transactional");
                service.publish("orders", "m1", PublishOptions::new()).await.expect("publish");
                let (result, took) = tokio::time::timeout(super::WAIT, results.recv())
                    .await
                    .expect("the handler's publish")
                    .expect("a result");
                wait_settled(&service, "orders", "billing").await;
                consumer.close().await;
                if KIND == "sqlite" {
                    let err = result.expect_err("a plain publish inside a SQLite transactional handler worked");
                    assert!(matches!(err, stream_runtime::Error::PublishOutsideTransaction { .. }), "{err:?}");
                    assert!(err.to_string().contains("publish_in(&mut **tx"), "{err}");
                    assert!(took < Duration::from_secs(1), "the refusal took {took:?}");
                    assert!(payloads(&service, "invoices").await.is_empty());
                    // Outside a handler, a plain publish works again.
                    service.publish("invoices", "after", PublishOptions::new()).await.expect("publish");
                } else {
                    result.expect("a plain publish inside a Postgres transactional handler");
                    assert_eq!(payloads(&service, "invoices").await, ["plain"]);
                }
                service.close().await.expect("close");
            }

            /// An error on the last attempt rolls back before the dead-letter move, which
            /// then happens as usual.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn transactional_handler_error_rolls_back_before_the_dead_letter() {
                let Some((service, _)) = service(KIND).await else { return };
                let table = create_table(&service).await;
                let handler = {
                    let table = table.clone();
                    transaction::handler_fn(move |m: Message, tx: &mut Tx| {
                        let table = table.clone();
                        Box::pin(async move {
                            insert(tx, &table, &m).await?;
                            Err(HandlerError::permanent("never works"))
                        })
                    })
                };
                let options = SubscribeOptions::new().start(stream_runtime::StartPosition::Earliest);
                let consumer = service
                    .subscribe_transactional::<Tx, _>("orders", "billing", handler, options)
                    .await
                    .expect("subscribe_transactional");
                service.publish("orders", "m1", PublishOptions::new()).await.expect("publish");
                wait_settled(&service, "orders", "billing").await;
                consumer.close().await;
                assert_eq!(payloads(&service, "orders.dead").await, ["m1"]);
                assert_eq!(rows(&service, &table).await, []);
                drop_table(&service, &table).await;
                service.close().await.expect("close");
            }

            /// `subscribe_transactional` with the other database's transaction type is an
            /// error naming both.
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn transactional_handler_of_the_other_database_is_refused() {
                let Some((service, _)) = service(KIND).await else { return };
                let err = other_database_subscribe(&service).await;
                let text = err.to_string();
                assert!(
                    matches!(err, stream_runtime::Error::TransactionsUnsupported { backend, .. } if backend == KIND),
                    "{text}"
                );
                assert!(text.contains("postgres and sqlite"), "{text}");
                service.close().await.expect("close");
            }
        }
    };
}

/// A URL for a pool of the caller's own on the same database.
fn own_pool_url(url: &str) -> String {
    // The Postgres backend's `schema` parameter is not sqlx's.
    url.split_once("?schema=")
        .map_or(url, |(base, _)| base)
        .to_owned()
}

/// A pool on another database than the backend's at `url`: the `postgres` database of the
/// same server, or another SQLite file.
async fn other_database_pool(kind: &str, url: &str) -> stream_runtime::TransactionPool {
    if kind == "postgres" {
        let base = own_pool_url(url);
        let (server, _) = base.rsplit_once('/').expect("a database in the URL");
        sqlx::PgPool::connect(&format!("{server}/postgres"))
            .await
            .expect("connecting to database postgres")
            .into()
    } else {
        let file = stream_tests::temp_dir("sqlite-other").join("other.db");
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(file)
            .create_if_missing(true);
        sqlx::SqlitePool::connect_with(options)
            .await
            .expect("opening another SQLite file")
            .into()
    }
}

transactional_cases!(
    postgres,
    "postgres",
    stream_runtime::PostgresTx,
    sqlx::PgPool
);
transactional_cases!(sqlite, "sqlite", stream_runtime::SqliteTx, sqlx::SqlitePool);

/// Subscribes with the transaction type of the database `service` is not on.
async fn other_database_subscribe(service: &Service) -> stream_runtime::Error {
    fn handler<T: stream_runtime::DatabaseTx>() -> impl for<'t> Fn(
        Message,
        &'t mut T,
    ) -> stream_runtime::backend::BoxFuture<
        't,
        Result<(), stream_runtime::HandlerError>,
    > + Send
           + Sync
           + 'static {
        |_m: Message, _tx: &mut T| Box::pin(async { Ok(()) })
    }
    let result = if service.backend().name() == "postgres" {
        service
            .subscribe_transactional::<stream_runtime::SqliteTx, _>(
                "orders",
                "g",
                handler(),
                SubscribeOptions::new(),
            )
            .await
    } else {
        service
            .subscribe_transactional::<stream_runtime::PostgresTx, _>(
                "orders",
                "g",
                handler(),
                SubscribeOptions::new(),
            )
            .await
    };
    match result {
        Ok(_) => panic!("subscribing with the other database's transaction type worked"),
        Err(e) => e,
    }
}
