//! The ordered claim ([`crate::key_order`]): one `BEGIN IMMEDIATE` transaction, so it is
//! atomic against every process sharing the file (see migrations/0003_key_order.sql).
//!
//! 1. Pending entries whose deadline passed and that are the earliest pending entry of their
//!    key (or have none) are taken, in id order.
//! 2. While the claim is short, a page of the messages past the cursor becomes waiting
//!    pending entries (the schema's trigger advances the cursor), and step 1 runs again.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Row, Sqlite, Transaction};

use super::claim::decode_message;
use super::{duration_ms, now_ms, SqliteBackend, NAME};
use crate::backend::{ClaimToken, Claimed, GroupRef};
use crate::error::{Error, Result};

/// How many pages of new messages one claim moves at most before it returns short.
const MAX_PAGES: usize = 16;

impl SqliteBackend {
    pub(super) async fn claim_by_key(
        &self,
        group: GroupRef<'_>,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<Claimed>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let what = format!(
            "claiming messages of {} for ordered group {}",
            group.stream, group.group
        );
        if !self.has_work(group, now_ms(), &what).await? {
            return Ok(Vec::new());
        }
        let mut tx = self.begin(&what).await?;
        let now = now_ms();
        let deadline = now.saturating_add(duration_ms(visibility));
        let page = i64::try_from(max.max(64)).unwrap_or(i64::MAX);
        let mut claimed = self
            .take_heads(&mut tx, group, max, now, deadline, &what)
            .await?;
        let mut pages = 0;
        while claimed.len() < max && pages < MAX_PAGES {
            pages += 1;
            let moved = sqlx::query(
                "INSERT INTO stream_pending
                     (stream, group_name, id, token, deadline, deliveries, claimed_at, msg_key)
                 SELECT ?1, ?2, m.id, 0, 0, 0, ?3, json_extract(m.headers, '$.\"x-stream-key\"')
                 FROM stream_groups g JOIN stream_messages m
                   ON m.stream = g.stream AND m.id > g.cursor
                 WHERE g.stream = ?1 AND g.group_name = ?2
                 ORDER BY m.id LIMIT ?4",
            )
            .bind(group.stream)
            .bind(group.group)
            .bind(now)
            .bind(page)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(what.clone(), e))?
            .rows_affected();
            if moved == 0 {
                break;
            }
            let more = self
                .take_heads(&mut tx, group, max - claimed.len(), now, deadline, &what)
                .await?;
            claimed.extend(more);
            if (moved as i64) < page {
                break;
            }
        }
        self.commit(tx, &what).await?;
        claimed.sort_unstable_by(|a, b| {
            let id = |c: &Claimed| c.message.id.as_str().parse::<i64>().unwrap_or(0);
            id(a).cmp(&id(b))
        });
        Ok(claimed)
    }

    /// Takes up to `max` due pending entries that are the earliest of their key.
    async fn take_heads(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        group: GroupRef<'_>,
        max: usize,
        now: i64,
        deadline: i64,
        what: &str,
    ) -> Result<Vec<Claimed>> {
        let rows = sqlx::query(
            "UPDATE stream_pending
             SET deliveries = deliveries + 1, token = deliveries + 1, deadline = ?4,
                 claimed_at = ?3
             WHERE stream = ?1 AND group_name = ?2 AND id IN (
                 SELECT p.id FROM stream_pending p
                 WHERE p.stream = ?1 AND p.group_name = ?2 AND p.deadline <= ?3
                   AND (p.msg_key IS NULL OR NOT EXISTS (
                       SELECT 1 FROM stream_pending q
                       WHERE q.stream = ?1 AND q.group_name = ?2 AND q.msg_key = p.msg_key
                         AND q.id < p.id))
                 ORDER BY p.id LIMIT ?5)
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
        .bind(crate::backend::sql_limit(max))
        .fetch_all(&mut **tx)
        .await
        .map_err(|e| self.err(what, e))?;
        let stream: Arc<str> = Arc::from(group.stream);
        let decode = |e: String| Error::backend(NAME, what.to_owned(), e);
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            let attempt: i64 = row.try_get("attempt").map_err(|e| self.err(what, e))?;
            let token: i64 = row.try_get("token").map_err(|e| self.err(what, e))?;
            claimed.push(Claimed {
                message: decode_message(&stream, &row, attempt).map_err(decode)?,
                token: ClaimToken(u64::try_from(token).unwrap_or(0)),
            });
        }
        Ok(claimed)
    }
}
