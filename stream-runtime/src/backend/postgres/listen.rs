//! Wake-ups: one `LISTEN` connection feeding `NOTIFY`s into the backend's hub.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};

use super::WAKEUP_CHANNEL;
use crate::backend::WakeupHub;

/// Feeds `NOTIFY`s into the hub. After every (re)connect, when notifications may have been
/// missed, wakes every local waiter.
pub(super) async fn listen(pool: PgPool, hub: Arc<WakeupHub>) {
    let mut failures = 0u32;
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(sqlx::Error::PoolClosed) => return,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "postgres LISTEN connection failed; retrying");
                tokio::time::sleep(backoff(failures)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(WAKEUP_CHANNEL).await {
            failures += 1;
            tracing::warn!(error = %e, "postgres LISTEN failed; retrying");
            tokio::time::sleep(backoff(failures)).await;
            continue;
        }
        if failures > 0 {
            tracing::info!("postgres LISTEN connection restored");
        }
        // Whatever was notified while we were not listening is lost: wake everyone.
        hub.notify_all();
        let listening_since = std::time::Instant::now();
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => hub.notify(n.payload()),
                Ok(None) => {
                    tracing::warn!("postgres LISTEN connection lost; reconnecting");
                    break;
                }
                Err(sqlx::Error::PoolClosed) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "postgres LISTEN connection failed; reconnecting");
                    break;
                }
            }
        }
        // Reconnect at once, unless connections keep dropping right after LISTEN.
        if listening_since.elapsed() < Duration::from_secs(1) {
            failures += 1;
            tokio::time::sleep(backoff(failures)).await;
        } else {
            failures = 1;
        }
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(50)
        .saturating_mul(1 << failures.min(6))
        .min(Duration::from_secs(2))
}
