//! The ordered claim ([`crate::key_order`]): the `claim_ordered` function of
//! migrations/0006_key_order.sql, one transaction serialised by the group's row lock; and
//! the call both claims share.

use std::sync::Arc;
use std::time::Duration;

use super::{claimed_from_row, micros, PostgresBackend, NAME};
use crate::backend::{Claimed, GroupRef};
use crate::error::{Error, Result};

impl PostgresBackend {
    /// Runs a claim statement (`claim` or `claim_ordered`, of the same columns) for up to
    /// `max` messages; `what` names the group in errors ("group", "ordered group").
    pub(super) async fn run_claim(
        &self,
        sql: &str,
        what: &str,
        group: GroupRef<'_>,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<Claimed>> {
        self.closed.check()?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let context = || {
            format!(
                "claiming messages of {} for {what} {}",
                group.stream, group.group
            )
        };
        let rows = sqlx::query(sql)
            .bind(group.stream)
            .bind(group.group)
            .bind(group.consumer)
            .bind(i32::try_from(max).unwrap_or(i32::MAX))
            .bind(micros(visibility))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.error(context(), e))?;
        let stream: Arc<str> = Arc::from(group.stream);
        rows.iter()
            .map(|row| {
                claimed_from_row(&stream, row).map_err(|e| Error::backend(NAME, context(), e))
            })
            .collect()
    }

    pub(super) async fn claim_by_key(
        &self,
        group: GroupRef<'_>,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<Claimed>> {
        let sql = &self.sql.claim_ordered;
        let mut claimed = self
            .run_claim(sql, "ordered group", group, max, visibility)
            .await?;
        // Each pass of the function returns its rows in id order; passes may interleave.
        claimed.sort_unstable_by_key(|c| c.message.id.as_str().parse::<i64>().unwrap_or(0));
        Ok(claimed)
    }
}
