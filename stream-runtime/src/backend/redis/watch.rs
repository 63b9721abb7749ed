//! Push wake-ups: one task per watched stream blocks in `XREAD` on its own connection and
//! notifies the backend's [`WakeupHub`] when the stream grows, so consumers in this process
//! hear about appends from any process without waiting for their poll interval (S14).

use std::sync::Arc;
use std::time::Duration;

use ::redis::{RedisResult, Value};

use super::conn::{Conn, Target};
use crate::backend::WakeupHub;

/// How long one `XREAD` blocks before it is issued again.
pub(super) const BLOCK: Duration = Duration::from_secs(5);

/// Watches `key` until aborted (by the backend's close or drop).
pub(super) async fn watch(target: Target, stream: String, key: String, hub: Arc<WakeupHub>) {
    let mut failures = 0u32;
    loop {
        let result = match target.connect_own(BLOCK + Duration::from_secs(5)).await {
            Ok(conn) => follow(conn, &stream, &key, &hub, &mut failures).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            failures += 1;
            let delay = Duration::from_millis(100)
                .saturating_mul(1 << failures.min(5))
                .min(Duration::from_secs(2));
            tracing::debug!(%stream, error = %e, retry_in = ?delay, "redis wake-up reader failed; reconnecting");
            tokio::time::sleep(delay).await;
        }
    }
}

/// Follows the stream on one connection until an error.
async fn follow(
    mut conn: Conn,
    stream: &str,
    key: &str,
    hub: &WakeupHub,
    failures: &mut u32,
) -> RedisResult<()> {
    // Start from the newest entry, then wake everyone: anything appended up to here is
    // found by the claims that follow this notify, anything later by the XREAD below.
    let mut last = newest(&mut conn, key).await?;
    hub.notify(stream);
    *failures = 0;
    loop {
        let reply: Value = ::redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(u64::try_from(BLOCK.as_millis()).unwrap_or(5000))
            .arg("STREAMS")
            .arg(key)
            .arg(&last)
            .query_async(&mut conn)
            .await?;
        if matches!(reply, Value::Nil) {
            continue;
        }
        // Skip to the newest entry before notifying: one wake-up covers the whole burst.
        last = newest(&mut conn, key).await?;
        hub.notify(stream);
    }
}

/// The id of the newest entry, or `0-0` for an empty or missing stream.
async fn newest(conn: &mut Conn, key: &str) -> RedisResult<String> {
    let reply: Vec<(String, Value)> = ::redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(reply
        .into_iter()
        .next()
        .map_or_else(|| "0-0".to_owned(), |(id, _)| id))
}
