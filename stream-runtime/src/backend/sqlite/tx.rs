//! Transactions of the caller: appends inside them, wake-ups once they commit, and the
//! fenced ack of a transactional handler.
//!
//! SQLite has one writer at a time, so a transaction that appended holds the database's
//! write lock until it ends: no other id can be assigned before it commits, and no cursor
//! can skip it. The in-process wake-up must come after the commit, when a consumer's claim
//! can see the messages; SQLite's commit hook runs just before the commit is written, so
//! the hook only starts a task that waits until the ids are visible to a fresh read, then
//! wakes the streams' waiters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::sqlite::SqlitePool;
use sqlx::SqliteConnection;

use super::{SqliteBackend, NAME};
use crate::backend::{Claim, WakeupHub};
use crate::error::Result;
use crate::message::{MessageId, NewMessage};
use crate::options::Trim;

/// How long a committed transaction's wake-up waits for its ids to become visible before it
/// wakes the waiters anyway (a commit that failed after the hook ran).
const VISIBLE_WITHIN: Duration = Duration::from_secs(1);

/// Appends made inside transactions not yet ended, by connection: the streams to wake and
/// the highest id to wait for.
#[derive(Debug, Default)]
pub(super) struct Deferred {
    by_connection: Mutex<HashMap<usize, Vec<(String, i64)>>>,
}

impl Deferred {
    fn push(&self, connection: usize, stream: &str, id: i64) {
        self.by_connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(connection)
            .or_default()
            .push((stream.to_owned(), id));
    }

    fn take(&self, connection: usize) -> Vec<(String, i64)> {
        self.by_connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&connection)
            .unwrap_or_default()
    }
}

impl SqliteBackend {
    /// Appends inside the caller's transaction on `conn`: the same insert and trim as
    /// `append`; the stream's waiters in this process are woken once it commits.
    pub(crate) async fn append_in(
        &self,
        conn: &mut SqliteConnection,
        stream: &str,
        messages: Vec<NewMessage>,
        trim: Trim,
    ) -> Result<Vec<MessageId>> {
        self.closed.check()?;
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let what = format!("appending to {stream} in a transaction");
        let ids = self.insert(conn, stream, messages, &what).await?;
        self.trim(conn, stream, trim, &what).await?;
        if let Some(&last) = ids.last() {
            self.wake_after_commit(conn, stream, last, &what).await?;
        }
        Ok(ids
            .into_iter()
            .map(|id| MessageId::new(id.to_string()))
            .collect())
    }

    /// Arranges for `stream`'s waiters to be woken when `conn`'s transaction commits (and
    /// `last` is visible), and for nothing to happen if it rolls back.
    async fn wake_after_commit(
        &self,
        conn: &mut SqliteConnection,
        stream: &str,
        last: i64,
        what: &str,
    ) -> Result<()> {
        let runtime = tokio::runtime::Handle::current();
        let mut handle = conn.lock_handle().await.map_err(|e| self.err(what, e))?;
        // The connection's address identifies it to both hooks.
        let connection = handle.as_raw_handle().as_ptr() as usize;
        self.deferred.push(connection, stream, last);
        let (deferred, wakeups, reader) = (
            self.deferred.clone(),
            self.wakeups.clone(),
            self.reader.clone(),
        );
        handle.set_commit_hook(move || {
            let appended = deferred.take(connection);
            if !appended.is_empty() {
                runtime.spawn(wake_when_visible(reader.clone(), wakeups.clone(), appended));
            }
            true
        });
        let deferred = self.deferred.clone();
        handle.set_rollback_hook(move || drop(deferred.take(connection)));
        Ok(())
    }

    /// Begins a transaction for a transactional handler or [`crate::Service::begin`], on
    /// the writer connection, holding the write lock from the start. SQLite transactions
    /// are serializable whatever `_isolation` asks.
    pub(crate) async fn begin_tx(
        &self,
        _isolation: crate::options::Isolation,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.begin("beginning a transaction").await
    }

    /// Begins a transaction on a pool of the caller's, checked to reach this database file,
    /// holding the write lock from the start.
    pub(crate) async fn begin_tx_on(
        &self,
        pool: &SqlitePool,
        _isolation: crate::options::Isolation,
    ) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.closed.check()?;
        pool.begin_with("BEGIN IMMEDIATE").await.map_err(|e| {
            // Not `err`: a closed pool here is the caller's, not this backend's.
            crate::Error::backend(
                NAME,
                format!(
                    "beginning a transaction on the transaction pool ({})",
                    self.location
                ),
                e,
            )
        })
    }

    /// Checks that `pool` reaches this backend's database file (the `main` database of
    /// `PRAGMA database_list`, compared after resolving links).
    pub(crate) async fn check_same_database(&self, pool: &SqlitePool) -> Result<()> {
        const SQL: &str = "SELECT file FROM pragma_database_list WHERE name = 'main'";
        let ours: String = sqlx::query_scalar(SQL)
            .fetch_one(&self.reader)
            .await
            .map_err(|e| self.err("identifying the backend's database file", e))?;
        let theirs: String = sqlx::query_scalar(SQL)
            .fetch_one(pool)
            .await
            .map_err(|e| self.err("identifying the transaction pool's database file", e))?;
        let resolve = |file: &str| std::fs::canonicalize(file).unwrap_or_else(|_| file.into());
        if !ours.is_empty() && resolve(&ours) == resolve(&theirs) {
            return Ok(());
        }
        let describe = |file: &str| {
            if file.is_empty() {
                "an in-memory database, which no other pool can reach".to_owned()
            } else {
                format!("database file {file}")
            }
        };
        Err(crate::Error::TransactionPoolMismatch {
            expected: describe(&ours),
            found: describe(&theirs),
        })
    }

    /// Acknowledges `claim` inside the caller's transaction on `conn`, fenced by its token:
    /// false (nothing done) when the claim is no longer held.
    pub(crate) async fn ack_in(
        &self,
        conn: &mut SqliteConnection,
        stream: &str,
        group: &str,
        claim: &Claim,
    ) -> Result<bool> {
        self.closed.check()?;
        let (Ok(id), Ok(token)) = (
            claim.id.as_str().parse::<i64>(),
            i64::try_from(claim.token.0),
        ) else {
            return Ok(false);
        };
        let what = format!("acknowledging message {id} of {stream} in a transaction");
        let done = sqlx::query(
            "DELETE FROM stream_pending
             WHERE stream = ?1 AND group_name = ?2 AND id = ?3 AND token = ?4 AND token <> 0",
        )
        .bind(stream)
        .bind(group)
        .bind(id)
        .bind(token)
        .execute(&mut *conn)
        .await
        .map_err(|e| self.err(what, e))?
        .rows_affected();
        Ok(done > 0)
    }
}

/// Waits until the highest of `appended`'s ids is visible to a new read (the transaction's
/// commit is complete), then wakes their streams.
async fn wake_when_visible(
    reader: SqlitePool,
    wakeups: Arc<WakeupHub>,
    appended: Vec<(String, i64)>,
) {
    let last = appended.iter().map(|(_, id)| *id).max().unwrap_or_default();
    let deadline = tokio::time::Instant::now() + VISIBLE_WITHIN;
    loop {
        // AUTOINCREMENT keeps the highest id ever assigned here, trimmed or not.
        let seen: Option<i64> = sqlx::query_scalar(
            "SELECT seq FROM sqlite_sequence WHERE name = 'stream_messages'",
        )
        .fetch_optional(&reader)
        .await
        .unwrap_or_else(|e| {
            tracing::debug!(backend = NAME, error = %e, "checking a commit's visibility failed");
            None
        });
        if seen.is_some_and(|seen| seen >= last) || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut streams: Vec<String> = appended.into_iter().map(|(s, _)| s).collect();
    streams.sort_unstable();
    streams.dedup();
    for stream in &streams {
        wakeups.notify(stream);
    }
}
