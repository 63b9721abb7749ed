//! The raw ceiling of each backend: the same work written directly against the client
//! library the backend uses, with the same batch sizes and durability settings, on a
//! minimal table or key of our own. One arm per backend in each method.

use std::str::FromStr;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;
use tokio::sync::mpsc;

use crate::{paced, BoxError, Kind};

mod consume;
mod nats;
mod publish;

/// A connection to one backend's client library, for the raw figures.
pub enum Raw {
    /// A bare tokio mpsc channel.
    Memory,
    /// One connection with the backend's pragmas (WAL, synchronous = NORMAL), as the
    /// backend's single writer connection.
    Sqlite(SqlitePool),
    /// A pool as the backend's, on a schema of our own.
    Postgres { pool: PgPool, schema: String },
    /// A multiplexed connection, plus the client for a second one (blocking reads).
    Redis {
        client: Box<redis::Client>,
        con: MultiplexedConnection,
        prefix: String,
    },
    /// A client and a JetStream stream of our own (file storage, one replica, as the
    /// backend's), spoken to with plain `$JS.API` requests as the backend does.
    Nats {
        client: async_nats::Client,
        /// The JetStream stream's name.
        stream: String,
        /// Its subjects' prefix: `<prefix>.publish`, `<prefix>.queue`.
        prefix: String,
    },
}

impl Raw {
    /// Connects and creates the minimal tables. `tag` makes names unique to this run.
    pub async fn connect(kind: Kind, url: &str, tag: &str) -> Result<Raw, BoxError> {
        match kind {
            Kind::Memory => Ok(Raw::Memory),
            Kind::Sqlite => {
                let options = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(30));
                let pool = SqlitePoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .connect_with(options)
                    .await?;
                for table in ["raw_publish", "raw_queue"] {
                    sqlx::query(&format!(
                        "CREATE TABLE IF NOT EXISTS {table} (
                             id       INTEGER PRIMARY KEY AUTOINCREMENT,
                             payload  BLOB    NOT NULL,
                             token    INTEGER NOT NULL DEFAULT 0,
                             deadline INTEGER NOT NULL DEFAULT 0)"
                    ))
                    .execute(&pool)
                    .await?;
                }
                Ok(Raw::Sqlite(pool))
            }
            Kind::Postgres => {
                let pool = PgPoolOptions::new()
                    .max_connections(10)
                    .connect(url)
                    .await?;
                let schema = format!("bench_raw_{tag}");
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&pool)
                    .await?;
                for table in ["raw_publish", "raw_queue"] {
                    sqlx::query(&format!(
                        "CREATE TABLE {schema}.{table} (
                             id       bigserial PRIMARY KEY,
                             payload  bytea       NOT NULL,
                             token    bigint      NOT NULL DEFAULT 0,
                             deadline timestamptz NOT NULL DEFAULT '-infinity')"
                    ))
                    .execute(&pool)
                    .await?;
                }
                Ok(Raw::Postgres { pool, schema })
            }
            Kind::Redis => {
                let client = redis::Client::open(url)?;
                let con = client.get_multiplexed_async_connection().await?;
                Ok(Raw::Redis {
                    client: Box::new(client),
                    con,
                    prefix: format!("bench-raw:{tag}"),
                })
            }
            Kind::Nats => nats::connect(url, tag).await,
        }
    }

    /// The durability settings in force, read back from the server or connection.
    pub async fn durability(&mut self) -> Result<String, BoxError> {
        match self {
            Raw::Memory => Ok("none (process memory)".to_owned()),
            Raw::Sqlite(pool) => {
                let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
                    .fetch_one(&*pool)
                    .await?;
                let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
                    .fetch_one(&*pool)
                    .await?;
                let sync = match sync {
                    0 => "OFF",
                    1 => "NORMAL",
                    2 => "FULL",
                    _ => "EXTRA",
                };
                Ok(format!(
                    "journal_mode={journal} synchronous={sync} (backend: WAL, NORMAL)"
                ))
            }
            Raw::Postgres { pool, .. } => {
                let mut parts = Vec::new();
                for setting in ["synchronous_commit", "fsync", "wal_sync_method"] {
                    let value: String = sqlx::query_scalar(&format!("SHOW {setting}"))
                        .fetch_one(&*pool)
                        .await?;
                    parts.push(format!("{setting}={value}"));
                }
                Ok(parts.join(" "))
            }
            Raw::Redis { con, .. } => {
                let mut parts = Vec::new();
                for setting in ["appendonly", "appendfsync", "save"] {
                    let reply: Vec<String> = redis::cmd("CONFIG")
                        .arg("GET")
                        .arg(setting)
                        .query_async(con)
                        .await?;
                    let value = reply.get(1).cloned().unwrap_or_default();
                    parts.push(format!("{setting}={value:?}"));
                }
                Ok(parts.join(" "))
            }
            Raw::Nats { .. } => {
                Ok("JetStream file storage, 1 replica (backend: the same)".to_owned())
            }
        }
    }

    pub(super) async fn clear(&mut self, which: &str) -> Result<(), BoxError> {
        match self {
            Raw::Memory => {}
            Raw::Sqlite(pool) => {
                sqlx::query(&format!("DELETE FROM raw_{which}"))
                    .execute(&*pool)
                    .await?;
            }
            Raw::Postgres { pool, schema } => {
                sqlx::query(&format!("TRUNCATE {schema}.raw_{which}"))
                    .execute(&*pool)
                    .await?;
            }
            Raw::Redis { con, prefix, .. } => {
                let _: () = redis::cmd("DEL")
                    .arg(format!("{prefix}:{which}"))
                    .query_async(con)
                    .await?;
            }
            Raw::Nats {
                client,
                stream,
                prefix,
            } => {
                nats::request(
                    client,
                    format!("$JS.API.STREAM.PURGE.{stream}"),
                    serde_json::json!({ "filter": format!("{prefix}.{which}") }),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Drops what this run created.
    pub async fn cleanup(&mut self) -> Result<(), BoxError> {
        match self {
            Raw::Memory | Raw::Sqlite(_) => {}
            Raw::Postgres { pool, schema } => {
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .execute(&*pool)
                    .await?;
            }
            Raw::Redis { con, prefix, .. } => {
                for which in ["publish", "queue", "e2e"] {
                    let _: () = redis::cmd("DEL")
                        .arg(format!("{prefix}:{which}"))
                        .query_async(con)
                        .await?;
                }
            }
            Raw::Nats { client, stream, .. } => {
                nats::request(
                    client,
                    format!("$JS.API.STREAM.DELETE.{stream}"),
                    serde_json::json!({}),
                )
                .await?;
            }
        }
        Ok(())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
