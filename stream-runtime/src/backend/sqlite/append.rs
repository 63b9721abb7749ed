//! Appending: multi-row inserts and exact trims.

use std::borrow::Cow;

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, SqliteConnection};

use super::{duration_ms, now_ms, SqliteBackend, CHUNK, NAME};
use crate::error::{Error, Result};
use crate::message::NewMessage;
use crate::options::Trim;

impl SqliteBackend {
    /// Inserts messages into `stream` on `conn`, within its transaction; returns their ids
    /// in order.
    pub(super) async fn insert(
        &self,
        conn: &mut SqliteConnection,
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
                .fetch_all(&mut *conn)
                .await
                .map_err(|e| self.err(what, e))?;
            ids.extend(self.inserted_ids(&rows, what)?);
        }
        Ok(ids)
    }

    /// Inserts up to [`CHUNK`] messages into `stream` with one statement, atomic on its own,
    /// outside any transaction; returns their ids in order.
    pub(super) async fn insert_alone(
        &self,
        stream: &str,
        messages: Vec<NewMessage>,
        what: &str,
    ) -> Result<Vec<i64>> {
        self.closed.check()?;
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

    /// Trims `stream` exactly on `conn`, within its transaction, dropping trimmed messages'
    /// pending entries.
    pub(super) async fn trim(
        &self,
        conn: &mut SqliteConnection,
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
            .execute(&mut *conn)
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
            .execute(&mut *conn)
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
            .execute(&mut *conn)
            .await
            .map_err(|e| self.err(what, e))?;
        }
        Ok(())
    }
}

/// A multi-row insert of `rows` messages: payload and headers per row as anonymous `?`
/// placeholders in a `VALUES` list (the first `2 * rows` parameters), then the stream bound
/// once after them. Anonymous placeholders because sqlx looks the name of each numbered
/// parameter up, a linear scan in SQLite, which made binding quadratic in the number of
/// rows; the stream's number follows them in the text, so sqlx's count of anonymous
/// parameters and SQLite's numbering agree. Rows are inserted in the order of the list, so
/// ids are assigned in message order.
/// With `now_in_sql`, created_at is SQLite's clock (the same system clock, in whole
/// milliseconds) when the statement runs, after it has taken the write lock, rather than a
/// bound parameter (the last one); 'now' is the same for every row (all the rows of an
/// `INSERT ... RETURNING` are written in its first step).
fn insert_sql(rows: usize, now_in_sql: bool) -> String {
    use std::fmt::Write as _;
    let mut sql = String::with_capacity(220 + 8 * rows);
    sql.push_str("WITH m (payload, headers) AS (VALUES ");
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str("(?, ?)");
    }
    let stream = 2 * rows + 1;
    let _ = write!(
        sql,
        ") INSERT INTO stream_messages (stream, payload, headers, created_at) SELECT ?{stream}, \
         payload, headers, "
    );
    if now_in_sql {
        sql.push_str("CAST(ROUND((julianday('now') - 2440587.5) * 86400000) AS INTEGER)");
    } else {
        let _ = write!(sql, "?{}", stream + 1);
    }
    sql.push_str(" FROM m RETURNING id");
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
            Cow::Borrowed("{}")
        } else {
            Cow::Owned(
                serde_json::to_string(&message.headers)
                    .map_err(|e| Error::backend(NAME, what.to_owned(), e))?,
            )
        };
        query = query.bind(Vec::from(message.payload)).bind(headers);
    }
    query = query.bind(stream);
    if let Some(created_at) = created_at {
        query = query.bind(created_at);
    }
    Ok(query)
}
