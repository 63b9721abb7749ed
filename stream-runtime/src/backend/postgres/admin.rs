//! [`BackendAdmin`] for Postgres: plain reads, and one transaction for each move or
//! deletion (retried on a deadlock), so they work from any process while consumers run.
//! No migration: the statements use the tables and the `append` function as they are.

use sqlx::Row;
use std::sync::Arc;

use super::{
    claimed_from_row, encode_headers, is_conflict, parse_id, quote_ident, time_of_micros,
    PostgresBackend, NAME,
};
use crate::admin::{GroupStats, PendingEntry, ReadFrom, StreamInfo};
use crate::backend::{integer_id, integer_start_id, sql_limit, BackendAdmin, BoxFuture};
use crate::error::{Error, Result};
use crate::message::{Message, MessageId, NewMessage};

/// The columns [`claimed_from_row`] reads, for a plain read of messages `m`.
const MESSAGE_COLUMNS: &str =
    "m.id AS r_id, m.payload AS r_payload, m.headers::text AS r_headers, \
     (extract(epoch FROM m.created_at) * 1000000)::bigint AS r_created_us, \
     0::integer AS r_deliveries, 0::bigint AS r_token";

/// A pending entry counts only while its message exists (a trim may race a claim).
const PENDING_EXISTS: &str =
    "EXISTS (SELECT 1 FROM {S}.messages m WHERE m.stream_id = g.stream_id AND m.id = p.msg_id)";

impl PostgresBackend {
    fn admin_sql(&self, sql: &str) -> String {
        sql.replace("{PENDING_EXISTS}", PENDING_EXISTS)
            .replace("{MESSAGE_COLUMNS}", MESSAGE_COLUMNS)
            .replace("{S}", &quote_ident(&self.schema))
    }

    /// Deletes messages `ids` of `stream` and their pending entries in one transaction;
    /// returns the ids deleted.
    async fn delete_ids(
        &self,
        stream: &str,
        ids: &[i64],
    ) -> std::result::Result<Vec<i64>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let deleted: Vec<i64> = sqlx::query_scalar(&self.admin_sql(
            "DELETE FROM {S}.messages m USING {S}.streams s
             WHERE s.name = $1 AND m.stream_id = s.stream_id AND m.id = ANY($2)
             RETURNING m.id",
        ))
        .bind(stream)
        .bind(ids)
        .fetch_all(&mut *tx)
        .await?;
        if !deleted.is_empty() {
            sqlx::query(&self.admin_sql(
                "DELETE FROM {S}.pending p USING {S}.groups g, {S}.streams s
                 WHERE s.name = $1 AND g.stream_id = s.stream_id AND p.group_id = g.group_id
                   AND p.msg_id = ANY($2)",
            ))
            .bind(stream)
            .bind(&deleted)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(deleted)
    }

    async fn move_once(
        &self,
        from: &str,
        id: i64,
        to: &str,
        payload: &[u8],
        headers: &str,
    ) -> std::result::Result<Option<i64>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let held: Option<i64> = sqlx::query_scalar(&self.admin_sql(
            "DELETE FROM {S}.messages m USING {S}.streams s
             WHERE s.name = $1 AND m.stream_id = s.stream_id AND m.id = $2
             RETURNING m.stream_id",
        ))
        .bind(from)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(stream_id) = held else {
            tx.rollback().await?;
            return Ok(None);
        };
        sqlx::query(&self.admin_sql(
            "DELETE FROM {S}.pending p USING {S}.groups g
             WHERE g.stream_id = $1 AND p.group_id = g.group_id AND p.msg_id = $2",
        ))
        .bind(stream_id)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let new_id: i64 = sqlx::query_scalar(&self.admin_sql(
            "SELECT a FROM {S}.append($1, ARRAY[$2::bytea], ARRAY[$3::text::jsonb], 0, interval '0') AS a",
        ))
        .bind(to)
        .bind(payload)
        .bind(headers)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(new_id))
    }
}

impl BackendAdmin for PostgresBackend {
    fn list_streams<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<StreamInfo>>> {
        Box::pin(async move {
            self.closed.check()?;
            let what = || "listing streams".to_owned();
            let rows = sqlx::query(&self.admin_sql(
                "SELECT s.name, count(m.id) AS length, min(m.id) AS first_id, max(m.id) AS last_id,
                     (extract(epoch FROM max(m.created_at)) * 1000000)::bigint AS last_us
                 FROM {S}.streams s LEFT JOIN {S}.messages m ON m.stream_id = s.stream_id
                 WHERE left(s.name, length($1)) = $1
                 GROUP BY s.name",
            ))
            .bind(prefix)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.error(what(), e))?;
            let mut streams = rows
                .iter()
                .map(|row| {
                    Ok(StreamInfo {
                        stream: row.try_get("name")?,
                        length: row.try_get::<i64, _>("length")?.unsigned_abs(),
                        first_id: integer_id(row.try_get("first_id")?),
                        last_id: integer_id(row.try_get("last_id")?),
                        last_append: row
                            .try_get::<Option<i64>, _>("last_us")?
                            .map(time_of_micros),
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(|e| self.error(what(), e))?;
            streams.sort_by(|a, b| a.stream.cmp(&b.stream));
            Ok(streams)
        })
    }

    fn list_groups<'a>(&'a self, stream: &'a str) -> BoxFuture<'a, Result<Vec<GroupStats>>> {
        Box::pin(async move {
            self.closed.check()?;
            let what = || format!("listing the groups of {stream}");
            let rows = sqlx::query(&self.admin_sql(
                "SELECT g.name, g.cursor_id,
                     (SELECT count(*) FROM {S}.messages m
                      WHERE m.stream_id = g.stream_id AND m.id > g.cursor_id) AS lag,
                     (SELECT count(*) FROM {S}.pending p
                      WHERE p.group_id = g.group_id AND {PENDING_EXISTS}) AS pending,
                     (SELECT (extract(epoch FROM min(p.claimed_at)) * 1000000)::bigint
                      FROM {S}.pending p
                      WHERE p.group_id = g.group_id AND {PENDING_EXISTS}) AS oldest_us
                 FROM {S}.groups g JOIN {S}.streams s ON s.stream_id = g.stream_id
                 WHERE s.name = $1",
            ))
            .bind(stream)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.error(what(), e))?;
            let mut groups = rows
                .iter()
                .map(|row| {
                    Ok(GroupStats {
                        group: row.try_get("name")?,
                        cursor: MessageId::new(row.try_get::<i64, _>("cursor_id")?.to_string()),
                        lag: row.try_get::<i64, _>("lag")?.unsigned_abs(),
                        pending: row.try_get::<i64, _>("pending")?.unsigned_abs(),
                        oldest_claimed_at: row
                            .try_get::<Option<i64>, _>("oldest_us")?
                            .map(time_of_micros),
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(|e| self.error(what(), e))?;
            groups.sort_by(|a, b| a.group.cmp(&b.group));
            Ok(groups)
        })
    }

    fn read<'a>(
        &'a self,
        stream: &'a str,
        from: &'a ReadFrom,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<Message>>> {
        Box::pin(async move {
            self.closed.check()?;
            let what = || format!("reading {stream}");
            let sql = match from {
                ReadFrom::Last => self.admin_sql(
                    "SELECT * FROM (SELECT {MESSAGE_COLUMNS}
                                    FROM {S}.messages m JOIN {S}.streams s ON s.stream_id = m.stream_id
                                    WHERE s.name = $1 AND $3 >= 0 ORDER BY m.id DESC LIMIT $2) r
                     ORDER BY r_id",
                ),
                ReadFrom::Start | ReadFrom::After(_) => self.admin_sql(
                    "SELECT {MESSAGE_COLUMNS}
                     FROM {S}.messages m JOIN {S}.streams s ON s.stream_id = m.stream_id
                     WHERE s.name = $1 AND m.id > $3 ORDER BY m.id LIMIT $2",
                ),
            };
            let after = match from {
                ReadFrom::After(id) => integer_start_id(NAME, id.as_str())?,
                _ => 0,
            };
            let rows = sqlx::query(&sql)
                .bind(stream)
                .bind(sql_limit(max))
                .bind(after)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.error(what(), e))?;
            let stream: Arc<str> = Arc::from(stream);
            rows.iter()
                .map(|row| {
                    claimed_from_row(&stream, row)
                        .map(|c| c.message)
                        .map_err(|e| Error::backend(NAME, what(), e))
                })
                .collect()
        })
    }

    fn list_pending<'a>(
        &'a self,
        stream: &'a str,
        group: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<PendingEntry>>> {
        Box::pin(async move {
            self.closed.check()?;
            let what = || format!("listing the pending messages of {stream} for group {group}");
            let rows = sqlx::query(&self.admin_sql(
                "SELECT p.msg_id, p.token, p.deliveries, p.consumer,
                     (extract(epoch FROM p.deadline) * 1000000)::bigint AS deadline_us
                 FROM {S}.pending p JOIN {S}.groups g ON g.group_id = p.group_id
                   JOIN {S}.streams s ON s.stream_id = g.stream_id
                 WHERE s.name = $1 AND g.name = $2 AND {PENDING_EXISTS}
                 ORDER BY p.msg_id LIMIT $3",
            ))
            .bind(stream)
            .bind(group)
            .bind(sql_limit(max))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.error(what(), e))?;
            rows.iter()
                .map(|row| {
                    Ok(PendingEntry::at(
                        MessageId::new(row.try_get::<i64, _>("msg_id")?.to_string()),
                        u32::try_from(row.try_get::<i32, _>("deliveries")?).unwrap_or_default(),
                        row.try_get::<i64, _>("token")? != 0,
                        time_of_micros(row.try_get("deadline_us")?),
                        row.try_get("consumer")?,
                    ))
                })
                .collect::<Result<_, sqlx::Error>>()
                .map_err(|e| self.error(what(), e))
        })
    }

    fn move_message<'a>(
        &'a self,
        from: &'a str,
        id: &'a MessageId,
        to: &'a str,
        message: NewMessage,
    ) -> BoxFuture<'a, Result<Option<MessageId>>> {
        Box::pin(async move {
            self.closed.check()?;
            let Some(id) = parse_id(id.as_str()) else {
                return Ok(None);
            };
            let headers = encode_headers(&message.headers)?;
            let mut attempt = 0;
            let moved = loop {
                attempt += 1;
                match self
                    .move_once(from, id, to, &message.payload, &headers)
                    .await
                {
                    Ok(moved) => break moved,
                    Err(e) if attempt < 5 && is_conflict(&e) => continue,
                    Err(e) => {
                        return Err(self.error(format!("moving message {id} of {from} to {to}"), e))
                    }
                }
            };
            if moved.is_some() {
                self.wakeups.notify(to);
            }
            Ok(moved.map(|id| MessageId::new(id.to_string())))
        })
    }

    fn delete_messages<'a>(
        &'a self,
        stream: &'a str,
        ids: &'a [MessageId],
    ) -> BoxFuture<'a, Result<Vec<MessageId>>> {
        Box::pin(async move {
            self.closed.check()?;
            let ids: Vec<i64> = ids.iter().filter_map(|id| parse_id(id.as_str())).collect();
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let mut attempt = 0;
            loop {
                attempt += 1;
                match self.delete_ids(stream, &ids).await {
                    Ok(deleted) => {
                        // In the order given, as RETURNING promises none.
                        return Ok(ids
                            .iter()
                            .filter(|id| deleted.contains(id))
                            .map(|id| MessageId::new(id.to_string()))
                            .collect());
                    }
                    Err(e) if attempt < 5 && is_conflict(&e) => continue,
                    Err(e) => return Err(self.error(format!("deleting messages of {stream}"), e)),
                }
            }
        })
    }
}
