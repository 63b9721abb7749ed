//! The ordered claim ([`crate::key_order`]): the `claim_ordered` function of
//! migrations/0005_key_order.sql, one transaction serialised by the group's row lock.

use std::sync::Arc;
use std::time::Duration;

use super::{claimed_from_row, micros, PostgresBackend, NAME};
use crate::backend::{Claimed, GroupRef};
use crate::error::{Error, Result};

impl PostgresBackend {
    pub(super) async fn claim_by_key(
        &self,
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
                "claiming messages of {} for ordered group {}",
                group.stream, group.group
            )
        };
        let rows = sqlx::query(&self.sql.claim_ordered)
            .bind(group.stream)
            .bind(group.group)
            .bind(group.consumer)
            .bind(i32::try_from(max).unwrap_or(i32::MAX))
            .bind(micros(visibility))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.error(context(), e))?;
        let stream: Arc<str> = Arc::from(group.stream);
        let mut claimed = rows
            .iter()
            .map(|row| {
                claimed_from_row(&stream, row).map_err(|e| Error::backend(NAME, context(), e))
            })
            .collect::<Result<Vec<_>>>()?;
        // Each pass of the function returns its rows in id order; passes may interleave.
        claimed.sort_unstable_by_key(|c| c.message.id.as_str().parse::<i64>().unwrap_or(0));
        Ok(claimed)
    }
}
