//! Claiming: one `INSERT ... ON CONFLICT DO UPDATE ... RETURNING` statement, after a plain
//! read that finds out whether there is any work.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{duration_ms, now_ms, time_of, SqliteBackend, NAME};
use crate::backend::{ClaimToken, Claimed, GroupRef};
use crate::error::{Error, Result};
use crate::message::{Headers, Message, MessageId};

impl SqliteBackend {
    /// Claims up to `max` messages of `group` for `visibility`.
    pub(super) async fn claim_messages(
        &self,
        group: GroupRef<'_>,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<Claimed>> {
        let what = format!(
            "claiming messages of {} for group {}",
            group.stream, group.group
        );
        if max == 0 {
            return Ok(Vec::new());
        }
        if self.was_full(group) {
            self.closed.check()?;
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
        // (see migrations/0001_initial.sql); `claimed_at` is now (migrations/0002).
        let rows = sqlx::query(
            "INSERT INTO stream_pending
                 (stream, group_name, id, token, deadline, deliveries, claimed_at)
             SELECT ?1, ?2, id, 1, ?4, 1, ?3 FROM (
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
                     deadline = excluded.deadline, claimed_at = excluded.claimed_at
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
    pub(super) async fn has_work(&self, group: GroupRef<'_>, now: i64, what: &str) -> Result<bool> {
        self.closed.check()?;
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
}

pub(super) fn decode_message(
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
