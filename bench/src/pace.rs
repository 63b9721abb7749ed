//! Sending at a fixed rate, for the latency workloads.

use std::time::{Duration, Instant};

use crate::BoxError;

/// Calls `send` with each scheduled send time (since `epoch`) of `count` messages at `rate`
/// msg/s, at that time. The pacing runs on its own thread with a precise sleep, so timer
/// granularity does not show up as latency; `send` must not block.
pub async fn paced(
    epoch: Instant,
    rate: u32,
    count: usize,
    mut send: impl FnMut(Duration) + Send + 'static,
) -> Result<(), BoxError> {
    tokio::task::spawn_blocking(move || {
        let interval = Duration::from_secs(1) / rate.max(1);
        let first = epoch.elapsed() + Duration::from_millis(20);
        for i in 0..count {
            let scheduled = first + interval * u32::try_from(i).unwrap_or(u32::MAX);
            let now = epoch.elapsed();
            if scheduled > now {
                std::thread::sleep(scheduled - now);
            }
            send(scheduled);
        }
    })
    .await?;
    Ok(())
}
