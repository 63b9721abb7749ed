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

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Executor, Row, Sqlite, Transaction};

use super::{
    redact_url, Backend, BoxFuture, Claim, ClaimToken, Claimed, GroupRef, Wakeup, WakeupHub,
};
use crate::error::{Error, Result};
use crate::message::{Headers, Message, MessageId, NewMessage};
use crate::options::{StartPosition, Trim};

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

/// The schema, one migration per entry; entry `i` is version `i + 1`. Never edit an entry
/// that has shipped: append a new one.
///
/// A claim's token is its pending entry's delivery count after the claim. An entry is
/// created once per group and message (when the group's cursor passes the message) and its
/// delivery count only grows (a release counts in `released` instead), so no token is ever
/// issued twice for one entry, by any process sharing the file.
pub const MIGRATIONS: &[&str] = &[
    // 1: messages, groups and pending claims.
    "CREATE TABLE stream_messages (
         id         INTEGER PRIMARY KEY AUTOINCREMENT,
         stream     TEXT    NOT NULL,
         payload    BLOB    NOT NULL,
         headers    TEXT    NOT NULL,  -- JSON object of strings
         created_at INTEGER NOT NULL   -- milliseconds since the Unix epoch
     );
     -- Age trims seek by id too: ids are assigned under the write lock, so created_at grows
     -- with the id, and no second index has to be written per message.
     CREATE INDEX stream_messages_by_stream ON stream_messages (stream, id);
     CREATE TABLE stream_groups (
         stream     TEXT    NOT NULL,
         group_name TEXT    NOT NULL,
         cursor     INTEGER NOT NULL,  -- the last message id handed out to the group
         PRIMARY KEY (stream, group_name)
     ) WITHOUT ROWID;
     CREATE TABLE stream_pending (
         stream     TEXT    NOT NULL,
         group_name TEXT    NOT NULL,
         id         INTEGER NOT NULL,  -- stream_messages.id
         token      INTEGER NOT NULL,  -- the current claim's token; 0 while nobody holds it
         deadline   INTEGER NOT NULL,  -- claimable again from then (ms since the Unix epoch)
         deliveries INTEGER NOT NULL,  -- claims so far; only grows
         released   INTEGER NOT NULL DEFAULT 0,  -- claims given back by a release
         PRIMARY KEY (stream, group_name, id)
     ) WITHOUT ROWID;
     CREATE INDEX stream_pending_by_deadline ON stream_pending (stream, group_name, deadline);
     -- A claim is one INSERT ... ON CONFLICT DO UPDATE into stream_pending; inserting a
     -- pending entry (a message handed to the group for the first time) advances the
     -- group's cursor past it (never back).
     CREATE TRIGGER stream_pending_advance_cursor AFTER INSERT ON stream_pending
     BEGIN
         UPDATE stream_groups SET cursor = NEW.id
         WHERE stream = NEW.stream AND group_name = NEW.group_name AND cursor < NEW.id;
     END;",
];

/// Streams in one SQLite database file (or in memory with `sqlite::memory:`).
#[derive(Debug)]
pub struct SqliteBackend {
    /// One connection: every write transaction of this process, queued in order.
    writer: SqlitePool,
    /// Read-only checks; the writer itself for an in-memory database.
    reader: SqlitePool,
    /// The URL as given (no secrets in SQLite URLs), for error messages.
    location: String,
    wakeups: WakeupHub,
    closed: AtomicBool,
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

/// `"?1, ?2, ..."`-style numbered placeholder rows: `rows` groups of `width`, numbered from
/// `first`.
fn placeholders(rows: usize, width: usize, first: usize, prefix: &str) -> String {
    let mut sql = String::new();
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        sql.push_str(prefix);
        for c in 0..width {
            if c > 0 || !prefix.is_empty() {
                sql.push_str(", ");
            }
            sql.push('?');
            sql.push_str(&(first + r * width + c).to_string());
        }
        sql.push(')');
    }
    sql
}

/// Claims whose ids this backend could have issued: `(id, token)`.
fn parse_claims(claims: &[Claim]) -> Vec<(i64, i64)> {
    claims
        .iter()
        .filter_map(|c| {
            let id = c.id.as_str().parse::<i64>().ok()?;
            let token = i64::try_from(c.token.0).ok().filter(|&t| t != 0)?;
            Some((id, token))
        })
        .collect()
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
            wakeups: WakeupHub::new(),
            closed: AtomicBool::new(false),
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

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Starts a write transaction holding the database's write lock.
    async fn begin(&self, what: &str) -> Result<Transaction<'static, Sqlite>> {
        self.check_open()?;
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| self.err(what, e))
    }

    async fn commit(&self, tx: Transaction<'static, Sqlite>, what: &str) -> Result<()> {
        tx.commit().await.map_err(|e| self.err(what, e))
    }

    /// Applies every migration this database lacks, in one transaction.
    async fn migrate(&self) -> Result<()> {
        let what = "creating the schema";
        let mut tx = self.begin(what).await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS stream_schema_migrations (
                 version    INTEGER PRIMARY KEY,
                 applied_at INTEGER NOT NULL
             )",
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(what, e))?;
        let current: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM stream_schema_migrations")
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| self.err(what, e))?;
        let known = MIGRATIONS.len() as i64;
        if current > known {
            return Err(Error::backend(
                NAME,
                format!("opening database {}", self.location),
                format!(
                    "its schema is at version {current}, newer than this build knows ({known}); \
                     upgrade stream-runtime"
                ),
            ));
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let version = index as i64 + 1;
            let what = format!("applying schema migration {version}");
            // `Executor::execute` on the connection, not `RawSql::execute(&mut *tx)`: the
            // latter's future is not `Send` for SQLite connections (sqlx's higher-ranked
            // `Executor` bound), which would make `connect` unusable in `tokio::spawn`.
            (&mut *tx)
                .execute(sqlx::raw_sql(sql))
                .await
                .map_err(|e| self.err(what.clone(), e))?;
            sqlx::query(
                "INSERT INTO stream_schema_migrations (version, applied_at) VALUES (?1, ?2)",
            )
            .bind(version)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(what.clone(), e))?;
        }
        // A database opened read-only passes everything above once its schema exists; find
        // out now, not at the first publish. Rewriting one row costs one page.
        sqlx::query(
            "UPDATE stream_schema_migrations SET applied_at = applied_at WHERE version = 1",
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err("checking that the database is writable", e))?;
        self.commit(tx, what).await
    }

    /// Inserts messages into `stream` within `tx`; returns their ids in order.
    async fn insert(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        stream: &str,
        messages: Vec<NewMessage>,
        what: &str,
    ) -> Result<Vec<i64>> {
        let created_at = now_ms();
        let mut ids = Vec::with_capacity(messages.len());
        let mut rest = messages.into_iter().peekable();
        while rest.peek().is_some() {
            let chunk: Vec<NewMessage> = rest.by_ref().take(CHUNK).collect();
            let sql = insert_sql(chunk.len(), false);
            let query = insert_query(&sql, stream, Some(created_at), chunk, what)?;
            let rows = query
                .fetch_all(&mut **tx)
                .await
                .map_err(|e| self.err(what, e))?;
            ids.extend(self.inserted_ids(&rows, what)?);
        }
        Ok(ids)
    }

    /// Inserts up to [`CHUNK`] messages into `stream` with one statement, atomic on its own,
    /// outside any transaction; returns their ids in order.
    async fn insert_alone(
        &self,
        stream: &str,
        messages: Vec<NewMessage>,
        what: &str,
    ) -> Result<Vec<i64>> {
        self.check_open()?;
        // created_at read by the statement under the write lock, as `insert` does within its
        // transaction: ids and created_at grow together (age trims rely on it).
        let sql = insert_sql(messages.len(), true);
        let rows = insert_query(&sql, stream, None, messages, what)?
            .fetch_all(&self.writer)
            .await
            .map_err(|e| self.err(what, e))?;
        self.inserted_ids(&rows, what)
    }

    /// The ids an insert returned, in order.
    fn inserted_ids(&self, rows: &[SqliteRow], what: &str) -> Result<Vec<i64>> {
        let mut ids: Vec<i64> = rows
            .iter()
            .map(|row| row.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(what, e))?;
        // RETURNING yields rows in no promised order; the ids were assigned in order.
        ids.sort_unstable();
        Ok(ids)
    }

    /// Trims `stream` exactly within `tx`, dropping trimmed messages' pending entries.
    async fn trim(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        stream: &str,
        trim: Trim,
        what: &str,
    ) -> Result<()> {
        let mut dropped = 0;
        if trim.max_len > 0 {
            let keep = i64::try_from(trim.max_len).unwrap_or(i64::MAX);
            dropped += sqlx::query(
                "DELETE FROM stream_messages WHERE stream = ?1 AND id <= (
                     SELECT id FROM stream_messages WHERE stream = ?1
                     ORDER BY id DESC LIMIT 1 OFFSET ?2)",
            )
            .bind(stream)
            .bind(keep)
            .execute(&mut **tx)
            .await
            .map_err(|e| self.err(what, e))?
            .rows_affected();
        }
        if !trim.max_age.is_zero() {
            let oldest_kept = now_ms().saturating_sub(duration_ms(trim.max_age));
            // Every message older than the oldest one kept: ids and created_at grow together
            // (both are assigned under the write lock), so walk the stream in id order from
            // its oldest message up to the first one young enough to keep.
            dropped += sqlx::query(
                "DELETE FROM stream_messages WHERE stream = ?1 AND id < COALESCE(
                     (SELECT id FROM stream_messages WHERE stream = ?1 AND created_at >= ?2
                      ORDER BY id LIMIT 1),
                     id + 1)",
            )
            .bind(stream)
            .bind(oldest_kept)
            .execute(&mut **tx)
            .await
            .map_err(|e| self.err(what, e))?
            .rows_affected();
        }
        if dropped > 0 {
            sqlx::query(
                "DELETE FROM stream_pending WHERE stream = ?1 AND NOT EXISTS (
                     SELECT 1 FROM stream_messages m WHERE m.id = stream_pending.id)",
            )
            .bind(stream)
            .execute(&mut **tx)
            .await
            .map_err(|e| self.err(what, e))?;
        }
        Ok(())
    }

    /// Whether the last claim of `group` in this backend came back full.
    fn was_full(&self, group: GroupRef<'_>) -> bool {
        self.full
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(group.stream)
            .is_some_and(|groups| groups.contains(group.group))
    }

    fn set_full(&self, group: GroupRef<'_>, full: bool) {
        let mut map = self.full.lock().unwrap_or_else(PoisonError::into_inner);
        if full {
            if !map
                .get(group.stream)
                .is_some_and(|groups| groups.contains(group.group))
            {
                map.entry(group.stream.to_owned())
                    .or_default()
                    .insert(group.group.to_owned());
            }
        } else if let Some(groups) = map.get_mut(group.stream) {
            if groups.remove(group.group) && groups.is_empty() {
                map.remove(group.stream);
            }
        }
    }

    /// Whether a claim could find anything: an expired pending entry or a message past the
    /// cursor. A plain read, so idle consumers never take the write lock.
    async fn has_work(&self, group: GroupRef<'_>, now: i64, what: &str) -> Result<bool> {
        self.check_open()?;
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM stream_pending
                            WHERE stream = ?1 AND group_name = ?2 AND deadline <= ?3)
                 OR EXISTS (SELECT 1 FROM stream_groups g JOIN stream_messages m
                              ON m.stream = g.stream AND m.id > g.cursor
                            WHERE g.stream = ?1 AND g.group_name = ?2)",
        )
        .bind(group.stream)
        .bind(group.group)
        .bind(now)
        .fetch_one(&self.reader)
        .await
        .map_err(|e| self.err(what, e))
    }

    /// Acks (deletes) or releases (makes claimable now) the pending entries of `claims` still
    /// held with their tokens: one statement (atomic on its own) for up to [`CHUNK`] claims,
    /// else one transaction of one statement per [`CHUNK`] claims.
    async fn settle_batch(
        &self,
        group: GroupRef<'_>,
        claims: &[Claim],
        settle: Settle,
        what: &str,
    ) -> Result<()> {
        self.check_open()?;
        let pairs = parse_claims(claims);
        if pairs.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let statement = |chunk: &[(i64, i64)]| {
            let fenced = format!(
                "WHERE stream = ?1 AND group_name = ?2 AND (id, token) IN (VALUES {})",
                placeholders(chunk.len(), 2, 3, "")
            );
            match settle {
                Settle::Ack => format!("DELETE FROM stream_pending {fenced}"),
                Settle::Release => {
                    let now_param = 3 + 2 * chunk.len();
                    format!(
                        "UPDATE stream_pending SET token = 0, deadline = ?{now_param}, \
                         released = released + 1 {fenced}"
                    )
                }
            }
        };
        if pairs.len() <= CHUNK {
            // One statement is atomic on its own: no BEGIN/COMMIT round trips.
            let sql = statement(&pairs);
            settle_query(&sql, group, &pairs, settle, now)
                .execute(&self.writer)
                .await
                .map_err(|e| self.err(what, e))?;
            return Ok(());
        }
        let mut tx = self.begin(what).await?;
        for chunk in pairs.chunks(CHUNK) {
            let sql = statement(chunk);
            settle_query(&sql, group, chunk, settle, now)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.err(what, e))?;
        }
        self.commit(tx, what).await
    }
}

/// A multi-row insert of `rows` messages. Anonymous `?` placeholders, the stream and time
/// bound again in every row: sqlx looks the name of each numbered parameter up, a linear
/// scan in SQLite, which made binding quadratic in the number of rows.
/// With `now_in_sql`, created_at is SQLite's clock (the same system clock, in whole
/// milliseconds) when the statement runs, after it has taken the write lock, rather than a
/// bound parameter; 'now' is the same for every row (all the rows of an `INSERT ...
/// RETURNING` are written in its first step).
fn insert_sql(rows: usize, now_in_sql: bool) -> String {
    let row = if now_in_sql {
        "(?, ?, ?, CAST(ROUND((julianday('now') - 2440587.5) * 86400000) AS INTEGER))"
    } else {
        "(?, ?, ?, ?)"
    };
    let mut sql = String::with_capacity(90 + (row.len() + 2) * rows);
    sql.push_str("INSERT INTO stream_messages (stream, payload, headers, created_at) VALUES ");
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(row);
    }
    sql.push_str(" RETURNING id");
    sql
}

/// `sql` (from [`insert_sql`]) with `messages` bound, and `created_at` unless the statement
/// reads the clock itself.
fn insert_query<'q>(
    sql: &'q str,
    stream: &'q str,
    created_at: Option<i64>,
    messages: Vec<NewMessage>,
    what: &str,
) -> Result<sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>> {
    let mut query = sqlx::query(sql);
    for message in messages {
        let headers = if message.headers.is_empty() {
            "{}".to_owned()
        } else {
            serde_json::to_string(&message.headers)
                .map_err(|e| Error::backend(NAME, what.to_owned(), e))?
        };
        query = query
            .bind(stream)
            .bind(Vec::from(message.payload))
            .bind(headers);
        if let Some(created_at) = created_at {
            query = query.bind(created_at);
        }
    }
    Ok(query)
}

/// `sql` (from `settle_batch`) with its parameters bound.
fn settle_query<'q>(
    sql: &'q str,
    group: GroupRef<'q>,
    chunk: &[(i64, i64)],
    settle: Settle,
    now: i64,
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    let mut query = sqlx::query(sql).bind(group.stream).bind(group.group);
    for &(id, token) in chunk {
        query = query.bind(id).bind(token);
    }
    if let Settle::Release = settle {
        query = query.bind(now);
    }
    query
}

/// What [`SqliteBackend::settle_batch`] does to held claims.
#[derive(Clone, Copy, Debug)]
enum Settle {
    Ack,
    Release,
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

fn decode_message(
    stream: &Arc<str>,
    row: &SqliteRow,
    attempt: i64,
) -> std::result::Result<Message, String> {
    let id: i64 = row.try_get("id").map_err(|e| e.to_string())?;
    let payload: Vec<u8> = row.try_get("payload").map_err(|e| e.to_string())?;
    let headers: String = row.try_get("headers").map_err(|e| e.to_string())?;
    let headers: Headers = serde_json::from_str(&headers)
        .map_err(|e| format!("headers of message {id} are not a JSON string map: {e}"))?;
    let created_at: i64 = row.try_get("created_at").map_err(|e| e.to_string())?;
    Ok(Message::new(
        MessageId::new(id.to_string()),
        Arc::clone(stream),
        payload,
        headers,
        time_of(created_at),
        u32::try_from(attempt).unwrap_or(u32::MAX),
    ))
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
            self.check_open()?;
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
        Box::pin(async move {
            let what = format!(
                "claiming messages of {} for group {}",
                group.stream, group.group
            );
            if max == 0 {
                return Ok(Vec::new());
            }
            if self.was_full(group) {
                self.check_open()?;
            } else if !self.has_work(group, now_ms(), &what).await? {
                return Ok(Vec::new());
            }
            let limit = i64::try_from(max).unwrap_or(i64::MAX);
            let now = now_ms();
            let deadline = now.saturating_add(duration_ms(visibility));
            let decode = |e: String| Error::backend(NAME, what.clone(), e);
            // One statement, so atomic without a transaction: the first `max` of the expired
            // pending entries (in id order), then of the messages past the cursor. Expired
            // entries conflict with their pending row and are taken over (DO UPDATE); new
            // ones are inserted with one delivery, and the schema's trigger advances the
            // group's cursor past each. A claim's token is the entry's new delivery count
            // (see MIGRATIONS).
            let rows = sqlx::query(
                "INSERT INTO stream_pending (stream, group_name, id, token, deadline, deliveries)
                 SELECT ?1, ?2, id, 1, ?4, 1 FROM (
                     SELECT id, 0 AS kind FROM (
                         SELECT id FROM stream_pending
                         WHERE stream = ?1 AND group_name = ?2 AND deadline <= ?3
                         ORDER BY id LIMIT ?5)
                     UNION ALL
                     SELECT id, 1 AS kind FROM (
                         SELECT m.id AS id FROM stream_groups g JOIN stream_messages m
                           ON m.stream = g.stream AND m.id > g.cursor
                         WHERE g.stream = ?1 AND g.group_name = ?2
                         ORDER BY m.id LIMIT ?5)
                     ORDER BY kind, id LIMIT ?5)
                 WHERE true
                 ON CONFLICT (stream, group_name, id) DO UPDATE
                     SET deliveries = deliveries + 1, token = deliveries + 1,
                         deadline = excluded.deadline
                 RETURNING id, deliveries, deliveries - released AS attempt, token,
                     (SELECT payload FROM stream_messages m
                      WHERE m.id = stream_pending.id) AS payload,
                     (SELECT headers FROM stream_messages m
                      WHERE m.id = stream_pending.id) AS headers,
                     (SELECT created_at FROM stream_messages m
                      WHERE m.id = stream_pending.id) AS created_at",
            )
            .bind(group.stream)
            .bind(group.group)
            .bind(now)
            .bind(deadline)
            .bind(limit)
            .fetch_all(&self.writer)
            .await
            .map_err(|e| self.err(what.clone(), e))?;
            // RETURNING yields rows in no promised order: expired entries (delivered before)
            // first, then new ones, each in id order.
            let mut keyed = Vec::with_capacity(rows.len());
            for row in rows {
                let id: i64 = row.try_get("id").map_err(|e| self.err(what.clone(), e))?;
                let deliveries: i64 = row
                    .try_get("deliveries")
                    .map_err(|e| self.err(what.clone(), e))?;
                keyed.push((deliveries == 1, id, row));
            }
            keyed.sort_unstable_by_key(|&(fresh, id, _)| (fresh, id));
            let mut claimed = Vec::with_capacity(keyed.len());
            let stream: Arc<str> = Arc::from(group.stream);
            for (_, _, row) in keyed {
                let attempt: i64 = row
                    .try_get("attempt")
                    .map_err(|e| self.err(what.clone(), e))?;
                let token: i64 = row
                    .try_get("token")
                    .map_err(|e| self.err(what.clone(), e))?;
                let message = decode_message(&stream, &row, attempt).map_err(decode)?;
                claimed.push(Claimed {
                    message,
                    token: ClaimToken(u64::try_from(token).unwrap_or(0)),
                });
            }
            self.set_full(group, claimed.len() >= max);
            Ok(claimed)
        })
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
        Box::pin(async move {
            self.check_open()?;
            let Some(&(id, token)) = parse_claims(std::slice::from_ref(claim)).first() else {
                return Ok(false);
            };
            let what = format!("scheduling a retry of message {id} of {}", group.stream);
            let done = sqlx::query(
                "UPDATE stream_pending SET token = 0, deadline = ?5
                 WHERE stream = ?1 AND group_name = ?2 AND id = ?3 AND token = ?4",
            )
            .bind(group.stream)
            .bind(group.group)
            .bind(id)
            .bind(token)
            .bind(now_ms().saturating_add(duration_ms(delay)))
            .execute(&self.writer)
            .await
            .map_err(|e| self.err(what, e))?
            .rows_affected();
            Ok(done > 0)
        })
    }

    fn dead_letter<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        to: &'a str,
        message: NewMessage,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.check_open()?;
            let Some(&(id, token)) = parse_claims(std::slice::from_ref(claim)).first() else {
                return Ok(false);
            };
            let what = format!("moving message {id} of {} to {to}", group.stream);
            let mut tx = self.begin(&what).await?;
            let held = sqlx::query(
                "DELETE FROM stream_pending
                 WHERE stream = ?1 AND group_name = ?2 AND id = ?3 AND token = ?4",
            )
            .bind(group.stream)
            .bind(group.group)
            .bind(id)
            .bind(token)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(what.clone(), e))?
            .rows_affected()
                > 0;
            if !held {
                tx.rollback().await.map_err(|e| self.err(what, e))?;
                return Ok(false);
            }
            self.insert(&mut tx, to, vec![message], &what).await?;
            self.commit(tx, &what).await?;
            self.wakeups.notify(to);
            Ok(true)
        })
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

    fn ping(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.check_open()?;
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

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if !self.closed.swap(true, Ordering::AcqRel) {
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
