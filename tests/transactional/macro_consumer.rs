//! `#[consumer(..., transactional)]` run by the runtime: the generated handler takes the
//! transaction, and its row and its publish commit with the ack.

use std::time::Duration;

use stream_runtime::config::Config;
use stream_runtime::prelude::*;
use stream_runtime::{Runtime, SqliteTx};

#[consumer(
    stream = "orders",
    group = "billing",
    transactional,
    max_retries = 5,
    retry_delay = "10ms"
)]
async fn bill_in_tx(
    order: String,
    msg: &Message,
    tx: &mut SqliteTx,
    publisher: Publisher,
) -> Result<(), HandlerError> {
    sqlx::query("INSERT INTO effects (msg, attempt) VALUES ($1, $2)")
        .bind(&order)
        .bind(i32::try_from(msg.attempt).unwrap_or(i32::MAX))
        .execute(&mut **tx)
        .await
        .map_err(HandlerError::retry)?;
    publisher
        .publish_json_in(&mut **tx, "invoices", &order, PublishOptions::new())
        .await
        .map_err(HandlerError::retry)?;
    if msg.attempt == 1 {
        return Err(HandlerError::retry("the first attempt fails after writing"));
    }
    Ok(())
}

mod sqlite {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transactional_consumer_macro_commits_rows_publishes_and_ack_together() {
        let url = stream_tests::sqlite_url();
        let dir = stream_tests::temp_dir("tx-macro");
        let path = dir.join("Streams.toml");
        std::fs::write(
            &path,
            format!(
                "backend = \"{url}\"\napp = \"txmacro\"\ntransaction_isolation = \"serializable\"\n\
                 [defaults]\nstart = \"earliest\"\npoll_interval = \"20ms\"\n"
            ),
        )
        .expect("writing Streams.toml");
        let config = Config::loader()
            .file(&path)
            .load()
            .expect("the config loads");
        assert_eq!(
            config.transaction_isolation,
            stream_runtime::Isolation::Serializable
        );
        let started = Runtime::new()
            .config(config)
            .start()
            .await
            .expect("the runtime starts");
        let service = started.service().clone();
        let mut tx: SqliteTx = service.begin().await.expect("begin");
        sqlx::query("CREATE TABLE effects (msg TEXT NOT NULL, attempt INTEGER NOT NULL)")
            .execute(&mut *tx)
            .await
            .expect("creating the table");
        tx.commit().await.expect("commit");

        service
            .publish_json("orders", "m1", PublishOptions::new())
            .await
            .expect("publish");
        crate::wait_settled(&service, "orders", "billing").await;
        let rows: Vec<(String, i32)> = sqlx::query_as("SELECT msg, attempt FROM effects")
            .fetch_all(service.sqlite_pool().expect("a sqlite service"))
            .await
            .expect("reading the table");
        assert_eq!(rows, [("m1".to_owned(), 2)]);
        assert_eq!(crate::payloads(&service, "invoices").await, ["\"m1\""]);
        tokio::time::timeout(Duration::from_secs(10), started.shutdown())
            .await
            .expect("shutdown in time")
            .expect("shutdown");
    }
}
