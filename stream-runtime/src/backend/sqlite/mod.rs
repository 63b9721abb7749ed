//! The SQLite backend: the embedded default. One database file holds every stream, group
//! and pending claim; several processes on one machine may share the file.
//!
//! - **Schema**: created on connect by numbered migrations ([`MIGRATIONS`]) recorded in
//!   `stream_schema_migrations`, applied inside one `BEGIN IMMEDIATE` transaction, so two
//!   processes opening a fresh file at once apply each migration exactly once.
//! - **Durability** (S17): WAL journal with `synchronous = NORMAL`. A transaction is in the
//!   WAL before `COMMIT` returns, so a returned publish, ack or claim survives a crash or
//!   SIGKILL of the process. Only an OS crash or power loss may lose the last commits (the WAL
//!   is fsynced at checkpoints, not at every commit); the database is never corrupted.
//! - **Concurrency**: in this process every write goes through one writer connection (so
//!   writers queue fairly instead of spinning on the file lock); other processes are waited
//!   for with `busy_timeout`. Writing transactions start with `BEGIN IMMEDIATE`, which takes
//!   the write lock up front, so a transaction never fails halfway with `SQLITE_BUSY`.
//!   A single statement needs no transaction (it is atomic and takes the write lock when it
//!   starts): a claim, an ack or release of up to 500 claims and an untrimmed append
//!   of up to 500 messages are one statement each.
//!   SQLite has no `SKIP LOCKED`: claims are serialised by that lock, and a claim first
//!   checks for work with a plain read so idle consumers never take it (skipped when the
//!   group's previous claim came back full). A claim's token is the pending entry's
//!   delivery count, so no shared counter row is written per claim.
//! - **Ids** are the global `INTEGER PRIMARY KEY AUTOINCREMENT` rowid: strictly increasing,
//!   never reused, so strictly increasing within each stream too. Start ids are integers.
//! - **Wake-ups**: in this process through a [`WakeupHub`] after each commit; across
//!   processes the engine's poll interval.
//!
//! Not for network filesystems: SQLite's locking needs one machine's local filesystem.

mod admin;
mod append;
mod claim;
mod ordered;
mod schema;
mod settle;
mod tx;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use super::{redact_url, Backend, BoxFuture, Claim, Claimed, GroupRef, Wakeup, WakeupHub};
use crate::backend::closed::Closed;
use crate::error::{Error, Result};
use crate::message::{MessageId, NewMessage};
use crate::options::{StartPosition, Trim};

use claim::decode_message;
pub use schema::MIGRATIONS;
use settle::Settle;

const NAME: &str = "sqlite";

/// How long a statement waits for another process's lock before failing with `SQLITE_BUSY`.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// SQLite's primary result code for writes to a read-only database.
const SQLITE_READONLY: i32 = 8;

/// Connections for reads (the cheap "is there work?" check of a claim).
const READ_CONNECTIONS: u32 = 4;

/// The page cache of each connection, in KiB (allocated as pages are read, not up front).
const CACHE_KIB: u32 = 32 * 1024;

/// Rows per multi-row statement: well under SQLite's limit of 32766 bound parameters.
const CHUNK: usize = 500;

/// Streams in one SQLite database file (or in memory with `sqlite::memory:`).
#[derive(Debug)]
pub struct SqliteBackend {
    /// One connection: every write transaction of this process, queued in order.
    writer: SqlitePool,
    /// Read-only checks; the writer itself for an in-memory database.
    reader: SqlitePool,
    /// The URL as given (no secrets in SQLite URLs), for error messages.
    location: String,
    wakeups: Arc<WakeupHub>,
    /// Appends inside callers' transactions, woken when those commit.
    deferred: Arc<tx::Deferred>,
    closed: Closed,
    /// Groups (stream -> group names) whose last claim here came back full: their next claim
    /// skips the `has_work` read, as there is most likely more.
    full: Mutex<HashMap<String, HashSet<String>>>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn time_of(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

impl SqliteBackend {
    /// Opens (creating if missing) the database a URL names and brings its schema up to
    /// date: `sqlite://PATH`, `sqlite:PATH` or `sqlite::memory:`. `sqlite:///abs/path.db` is
    /// an absolute path; `sqlite://streams.db` is relative to the working directory.
    pub async fn connect(url: &str) -> Result<Self> {
        let location = redact_url(url);
        let opening = || format!("opening database {location}");
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::backend(NAME, opening(), e))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(false)
            // Negative: KiB. SQLite's default is 2 MiB; every stream shares the messages
            // table and its indexes, which outgrow that with a few 100k messages.
            .pragma("cache_size", format!("-{CACHE_KIB}"));
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        // Processes opening a new file at the same moment race to switch it to WAL, which
        // SQLite answers with SQLITE_BUSY without waiting for the busy timeout: try again.
        let started = std::time::Instant::now();
        let mut tries = 0u32;
        let (writer, reader) = loop {
            match Self::open_pools(&options, in_memory).await {
                Ok(pools) => break pools,
                Err(e) if is_busy(&e) && started.elapsed() < BUSY_TIMEOUT => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(10 * u64::from(tries.min(20)))).await;
                }
                Err(e) => {
                    return Err(Error::backend(
                        NAME,
                        explain_open_failure(url, &location),
                        e,
                    ))
                }
            }
        };
        let backend = SqliteBackend {
            writer,
            reader,
            location,
            wakeups: Arc::new(WakeupHub::new()),
            deferred: Arc::default(),
            closed: Closed::default(),
            full: Mutex::new(HashMap::new()),
        };
        backend.migrate().await?;
        Ok(backend)
    }

    /// The writer pool (one connection, kept for the backend's life: an in-memory database
    /// lives exactly as long as a connection to it) and the reader pool.
    async fn open_pools(
        options: &SqliteConnectOptions,
        in_memory: bool,
    ) -> Result<(SqlitePool, SqlitePool), sqlx::Error> {
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone())
            .await?;
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(READ_CONNECTIONS)
                .connect_with(options.clone())
                .await?
        };
        Ok((writer, reader))
    }

    fn err(&self, context: impl Into<String>, e: sqlx::Error) -> Error {
        if matches!(e, sqlx::Error::PoolClosed) {
            return Error::Closed;
        }
        let hint = match &e {
            sqlx::Error::Database(db)
                if db
                    .code()
                    .and_then(|code| code.parse::<i32>().ok())
                    .is_some_and(|code| code & 0xff == SQLITE_READONLY) =>
            {
                ": the database is read-only; check the permissions of the file, of its \
                 -wal and -shm files and of their directory, and that the URL has no mode=ro"
            }
            _ => "",
        };
        Error::backend(
            NAME,
            format!("{} ({}){hint}", context.into(), self.location),
            e,
        )
    }

    /// The writer pool: one connection, which every write of this process goes through.
    pub fn pool(&self) -> &SqlitePool {
        &self.writer
    }

    /// Starts a write transaction holding the database's write lock.
    async fn begin(&self, what: &str) -> Result<Transaction<'static, Sqlite>> {
        self.closed.check()?;
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| self.err(what, e))
    }

    async fn commit(&self, tx: Transaction<'static, Sqlite>, what: &str) -> Result<()> {
        tx.commit().await.map_err(|e| self.err(what, e))
    }
}

/// The context of a failed open, with a hint when the cause is plain from the filesystem.
fn explain_open_failure(url: &str, location: &str) -> String {
    let path = url
        .trim_start_matches("sqlite:")
        .trim_start_matches("//")
        .split('?')
        .next()
        .unwrap_or_default();
    let path = Path::new(path);
    let hint = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
            format!(": directory {} does not exist", dir.display())
        }
        _ if path.is_dir() => ": the path is a directory, not a database file".to_owned(),
        _ => String::new(),
    };
    format!("opening database {location}{hint}")
}

impl Backend for SqliteBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn append<'a>(
        &'a self,
        stream: &'a str,
        messages: Vec<NewMessage>,
        trim: Trim,
    ) -> BoxFuture<'a, Result<Vec<MessageId>>> {
        Box::pin(async move {
            if messages.is_empty() {
                return Ok(Vec::new());
            }
            if crate::transaction::in_sqlite_handler() {
                return Err(Error::PublishOutsideTransaction {
                    stream: stream.to_owned(),
                });
            }
            let what = format!("appending to {stream}");
            if trim.is_none() && messages.len() <= CHUNK {
                // One statement is atomic on its own: no BEGIN/COMMIT round trips.
                let ids = self.insert_alone(stream, messages, &what).await?;
                self.wakeups.notify(stream);
                return Ok(ids
                    .into_iter()
                    .map(|id| MessageId::new(id.to_string()))
                    .collect());
            }
            let mut tx = self.begin(&what).await?;
            let ids = self.insert(&mut tx, stream, messages, &what).await?;
            self.trim(&mut tx, stream, trim, &what).await?;
            self.commit(tx, &what).await?;
            self.wakeups.notify(stream);
            Ok(ids
                .into_iter()
                .map(|id| MessageId::new(id.to_string()))
                .collect())
        })
    }

    fn ensure_group<'a>(
        &'a self,
        stream: &'a str,
        group: &'a str,
        start: &'a StartPosition,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let from_id = match start {
                StartPosition::FromId(id) => Some(super::integer_start_id(NAME, id)?),
                _ => None,
            };
            self.closed.check()?;
            let what = format!("creating group {group} of {stream}");
            // One statement: atomic, and a no-op when another process created it first.
            let cursor_sql = match (start, from_id) {
                (_, Some(_)) | (StartPosition::Earliest, _) => "?3",
                _ => "(SELECT COALESCE(MAX(id), 0) FROM stream_messages WHERE stream = ?1)",
            };
            let sql = format!(
                "INSERT INTO stream_groups (stream, group_name, cursor) VALUES (?1, ?2, {cursor_sql})
                 ON CONFLICT (stream, group_name) DO NOTHING"
            );
            sqlx::query(&sql)
                .bind(stream)
                .bind(group)
                .bind(from_id.unwrap_or(0))
                .execute(&self.writer)
                .await
                .map_err(|e| self.err(what, e))?;
            Ok(())
        })
    }

    fn claim<'a>(
        &'a self,
        group: GroupRef<'a>,
        max: usize,
        visibility: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claimed>>> {
        Box::pin(async move { self.claim_messages(group, max, visibility).await })
    }

    fn ack<'a>(&'a self, group: GroupRef<'a>, claims: &'a [Claim]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let what = format!(
                "acknowledging messages of {} for group {}",
                group.stream, group.group
            );
            self.settle_batch(group, claims, Settle::Ack, &what).await
        })
    }

    fn retry<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        delay: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move { self.retry_claim(group, claim, delay).await })
    }

    fn dead_letter<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        to: &'a str,
        message: NewMessage,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move { self.dead_letter_claim(group, claim, to, message).await })
    }

    fn release<'a>(
        &'a self,
        group: GroupRef<'a>,
        claims: &'a [Claim],
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let what = format!(
                "releasing messages of {} for group {}",
                group.stream, group.group
            );
            self.settle_batch(group, claims, Settle::Release, &what)
                .await?;
            self.wakeups.notify(group.stream);
            Ok(())
        })
    }

    fn extend<'a>(
        &'a self,
        group: GroupRef<'a>,
        claims: &'a [Claim],
        visibility: Duration,
    ) -> BoxFuture<'a, Result<Vec<bool>>> {
        Box::pin(async move { self.extend_claims(group, claims, visibility).await })
    }

    fn postpone<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        delay: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move { self.postpone_claim(group, claim, delay).await })
    }

    fn ping(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.closed.check()?;
            sqlx::query("SELECT 1")
                .execute(&self.reader)
                .await
                .map_err(|e| self.err("checking the database", e))?;
            Ok(())
        })
    }

    fn wakeup(&self, stream: &str) -> Wakeup {
        self.wakeups.subscribe(stream)
    }

    fn sql(&self) -> Option<super::SqlBackend<'_>> {
        Some(super::SqlBackend::Sqlite(self))
    }

    fn key_order_supported(&self) -> bool {
        true
    }

    fn claim_ordered<'a>(
        &'a self,
        group: GroupRef<'a>,
        max: usize,
        visibility: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claimed>>> {
        Box::pin(self.claim_by_key(group, max, visibility))
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.closed.close() {
                self.wakeups.notify_all();
                self.reader.close().await;
                self.writer.close().await;
            }
            Ok(())
        })
    }
}

/// Whether SQLite answered SQLITE_BUSY or SQLITE_LOCKED (primary or extended code).
fn is_busy(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.code().and_then(|c| c.parse::<i32>().ok()).is_some_and(|c| matches!(c & 0xff, 5 | 6)))
}
