//! [`BackendAdmin`] for SQLite: plain reads on the reader connections, and one
//! `BEGIN IMMEDIATE` transaction for each move or deletion, so they work from another
//! process sharing the file while consumers run.

use sqlx::Row;
use std::sync::Arc;

use super::{decode_message, time_of, SqliteBackend, NAME};
use crate::admin::{GroupStats, PendingEntry, ReadFrom, StreamInfo};
use crate::backend::{integer_id, integer_start_id, sql_limit, BackendAdmin, BoxFuture};
use crate::error::{Error, Result};
use crate::message::{Message, MessageId, NewMessage};

impl SqliteBackend {
    /// Deletes message `id` of `stream` and its pending entries within `tx`; whether it was
    /// there.
    async fn delete_one(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        stream: &str,
        id: i64,
        what: &str,
    ) -> Result<bool> {
        let deleted = sqlx::query("DELETE FROM stream_messages WHERE stream = ?1 AND id = ?2")
            .bind(stream)
            .bind(id)
            .execute(&mut **tx)
            .await
            .map_err(|e| self.err(what, e))?
            .rows_affected();
        if deleted > 0 {
            sqlx::query("DELETE FROM stream_pending WHERE stream = ?1 AND id = ?2")
                .bind(stream)
                .bind(id)
                .execute(&mut **tx)
                .await
                .map_err(|e| self.err(what, e))?;
        }
        Ok(deleted > 0)
    }
}

impl BackendAdmin for SqliteBackend {
    fn list_streams<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<StreamInfo>>> {
        Box::pin(async move {
            self.closed.check()?;
            let what = "listing streams";
            let rows = sqlx::query(
                "SELECT s.stream AS stream, count(m.id) AS length, min(m.id) AS first_id,
                        max(m.id) AS last_id, max(m.created_at) AS last_at
                 FROM (SELECT DISTINCT stream FROM stream_messages
                       WHERE substr(stream, 1, length(?1)) = ?1
                       UNION
                       SELECT stream FROM stream_groups
                       WHERE substr(stream, 1, length(?1)) = ?1) s
                 LEFT JOIN stream_messages m ON m.stream = s.stream
                 GROUP BY s.stream ORDER BY s.stream",
            )
            .bind(prefix)
            .fetch_all(&self.reader)
            .await
            .map_err(|e| self.err(what, e))?;
            rows.iter()
                .map(|row| {
                    Ok(StreamInfo {
                        stream: row.try_get("stream")?,
                        length: row.try_get::<i64, _>("length")?.unsigned_abs(),
                        first_id: integer_id(row.try_get("first_id")?),
                        last_id: integer_id(row.try_get("last_id")?),
                        last_append: row.try_get::<Option<i64>, _>("last_at")?.map(time_of),
                    })
                })
                .collect::<Result<_, sqlx::Error>>()
                .map_err(|e| self.err(what, e))
        })
    }

    fn list_groups<'a>(&'a self, stream: &'a str) -> BoxFuture<'a, Result<Vec<GroupStats>>> {
        Box::pin(async move {
            self.closed.check()?;
            let what = format!("listing the groups of {stream}");
            let rows = sqlx::query(
                "SELECT g.group_name AS group_name, g.cursor AS cursor,
                     (SELECT count(*) FROM stream_messages m
                      WHERE m.stream = g.stream AND m.id > g.cursor) AS lag,
                     (SELECT count(*) FROM stream_pending p
                      WHERE p.stream = g.stream AND p.group_name = g.group_name) AS pending,
                     (SELECT min(p.claimed_at) FROM stream_pending p
                      WHERE p.stream = g.stream AND p.group_name = g.group_name) AS oldest_at
                 FROM stream_groups g WHERE g.stream = ?1 ORDER BY g.group_name",
            )
            .bind(stream)
            .fetch_all(&self.reader)
            .await
            .map_err(|e| self.err(what.clone(), e))?;
            rows.iter()
                .map(|row| {
                    Ok(GroupStats {
                        group: row.try_get("group_name")?,
                        cursor: MessageId::new(row.try_get::<i64, _>("cursor")?.to_string()),
                        lag: row.try_get::<i64, _>("lag")?.unsigned_abs(),
                        pending: row.try_get::<i64, _>("pending")?.unsigned_abs(),
                        oldest_claimed_at: row.try_get::<Option<i64>, _>("oldest_at")?.map(time_of),
                    })
                })
                .collect::<Result<_, sqlx::Error>>()
                .map_err(|e| self.err(what, e))
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
            let what = format!("reading {stream}");
            let query = match from {
                ReadFrom::Last => sqlx::query(
                    "SELECT * FROM (SELECT id, payload, headers, created_at FROM stream_messages
                                    WHERE stream = ?1 ORDER BY id DESC LIMIT ?2)
                     ORDER BY id",
                )
                .bind(stream)
                .bind(sql_limit(max)),
                ReadFrom::Start | ReadFrom::After(_) => {
                    let after = match from {
                        ReadFrom::After(id) => integer_start_id(NAME, id.as_str())?,
                        _ => 0,
                    };
                    sqlx::query(
                        "SELECT id, payload, headers, created_at FROM stream_messages
                         WHERE stream = ?1 AND id > ?3 ORDER BY id LIMIT ?2",
                    )
                    .bind(stream)
                    .bind(sql_limit(max))
                    .bind(after)
                }
            };
            let rows = query
                .fetch_all(&self.reader)
                .await
                .map_err(|e| self.err(what.clone(), e))?;
            let stream: Arc<str> = Arc::from(stream);
            rows.iter()
                .map(|row| {
                    decode_message(&stream, row, 0)
                        .map_err(|e| Error::backend(NAME, what.clone(), e))
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
            let what = format!("listing the pending messages of {stream} for group {group}");
            let rows = sqlx::query(
                "SELECT id, token, deadline, deliveries - released AS deliveries FROM stream_pending
                 WHERE stream = ?1 AND group_name = ?2 ORDER BY id LIMIT ?3",
            )
            .bind(stream)
            .bind(group)
            .bind(sql_limit(max))
            .fetch_all(&self.reader)
            .await
            .map_err(|e| self.err(what.clone(), e))?;
            rows.iter()
                .map(|row| {
                    Ok(PendingEntry::at(
                        MessageId::new(row.try_get::<i64, _>("id")?.to_string()),
                        u32::try_from(row.try_get::<i64, _>("deliveries")?).unwrap_or(u32::MAX),
                        row.try_get::<i64, _>("token")? != 0,
                        time_of(row.try_get("deadline")?),
                        None,
                    ))
                })
                .collect::<Result<_, sqlx::Error>>()
                .map_err(|e| self.err(what, e))
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
            let Ok(id) = id.as_str().parse::<i64>() else {
                return Ok(None);
            };
            let what = format!("moving message {id} of {from} to {to}");
            let mut tx = self.begin(&what).await?;
            if !self.delete_one(&mut tx, from, id, &what).await? {
                tx.rollback().await.map_err(|e| self.err(what, e))?;
                return Ok(None);
            }
            let ids = self.insert(&mut tx, to, vec![message], &what).await?;
            self.commit(tx, &what).await?;
            self.wakeups.notify(to);
            Ok(ids.first().map(|id| MessageId::new(id.to_string())))
        })
    }

    fn delete_messages<'a>(
        &'a self,
        stream: &'a str,
        ids: &'a [MessageId],
    ) -> BoxFuture<'a, Result<Vec<MessageId>>> {
        Box::pin(async move {
            self.closed.check()?;
            let ids: Vec<i64> = ids
                .iter()
                .filter_map(|id| id.as_str().parse().ok())
                .collect();
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let what = format!("deleting messages of {stream}");
            let mut tx = self.begin(&what).await?;
            let mut deleted = Vec::new();
            for id in ids {
                if self.delete_one(&mut tx, stream, id, &what).await? {
                    deleted.push(MessageId::new(id.to_string()));
                }
            }
            self.commit(tx, &what).await?;
            Ok(deleted)
        })
    }
}
