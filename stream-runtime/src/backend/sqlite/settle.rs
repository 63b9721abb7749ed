//! Settling claims: acks and releases in batches, retries and dead-letter moves, each
//! fenced by the claim's token.

use std::time::Duration;

use sqlx::Sqlite;

use super::{duration_ms, now_ms, SqliteBackend, CHUNK};
use crate::backend::{Claim, GroupRef};
use crate::error::Result;
use crate::message::NewMessage;

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
    /// Acks (deletes) or releases (makes claimable now) the pending entries of `claims` still
    /// held with their tokens: one statement (atomic on its own) for up to [`CHUNK`] claims,
    /// else one transaction of one statement per [`CHUNK`] claims.
    pub(super) async fn settle_batch(
        &self,
        group: GroupRef<'_>,
        claims: &[Claim],
        settle: Settle,
        what: &str,
    ) -> Result<()> {
        self.closed.check()?;
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

    /// Schedules a retry of `claim` after `delay`; whether the claim was still held.
    pub(super) async fn retry_claim(
        &self,
        group: GroupRef<'_>,
        claim: &Claim,
        delay: Duration,
    ) -> Result<bool> {
        self.closed.check()?;
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
    }

    /// Pushes the deadlines of the held `claims` to now + `visibility`; for each claim,
    /// whether it was held. One statement per [`CHUNK`] claims.
    pub(super) async fn extend_claims(
        &self,
        group: GroupRef<'_>,
        claims: &[Claim],
        visibility: Duration,
    ) -> Result<Vec<bool>> {
        self.closed.check()?;
        let pairs = parse_claims(claims);
        let mut extended = std::collections::HashSet::new();
        if !pairs.is_empty() {
            let what = format!(
                "extending claims of {} for group {}",
                group.stream, group.group
            );
            let deadline = now_ms().saturating_add(duration_ms(visibility));
            for chunk in pairs.chunks(CHUNK) {
                let sql = format!(
                    "UPDATE stream_pending SET deadline = ?{}                      WHERE stream = ?1 AND group_name = ?2 AND (id, token) IN (VALUES {})                      RETURNING id, token",
                    3 + 2 * chunk.len(),
                    placeholders(chunk.len(), 2, 3, "")
                );
                let mut query = sqlx::query_as::<_, (i64, i64)>(&sql)
                    .bind(group.stream)
                    .bind(group.group);
                for &(id, token) in chunk {
                    query = query.bind(id).bind(token);
                }
                let rows = query
                    .bind(deadline)
                    .fetch_all(&self.writer)
                    .await
                    .map_err(|e| self.err(what.clone(), e))?;
                extended.extend(rows);
            }
        }
        Ok(claims
            .iter()
            .map(|c| {
                let id = c.id.as_str().parse::<i64>().ok();
                let token = i64::try_from(c.token.0).ok();
                id.zip(token).is_some_and(|pair| extended.contains(&pair))
            })
            .collect())
    }

    /// Makes `claim` claimable again after `delay` and gives its delivery back; whether the
    /// claim was still held.
    pub(super) async fn postpone_claim(
        &self,
        group: GroupRef<'_>,
        claim: &Claim,
        delay: Duration,
    ) -> Result<bool> {
        self.closed.check()?;
        let Some(&(id, token)) = parse_claims(std::slice::from_ref(claim)).first() else {
            return Ok(false);
        };
        let what = format!("postponing message {id} of {}", group.stream);
        let done = sqlx::query(
            "UPDATE stream_pending SET token = 0, deadline = ?5, released = released + 1
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
    }

    /// Moves `claim`'s message to `to` as `message`; whether the claim was still held.
    pub(super) async fn dead_letter_claim(
        &self,
        group: GroupRef<'_>,
        claim: &Claim,
        to: &str,
        message: NewMessage,
    ) -> Result<bool> {
        self.closed.check()?;
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
    }
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
pub(super) enum Settle {
    Ack,
    Release,
}
