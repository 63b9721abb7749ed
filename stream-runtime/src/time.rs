//! Deadlines on tokio's clock, shared by the engine and the in-memory backend.

use std::time::Duration;

// tokio's clock, not std's: under a paused test clock (`start_paused`) retry delays,
// visibility deadlines and poll intervals pass without costing wall time.
use tokio::time::Instant;

/// `Instant::now() + d`, or a time a century away when that overflows: durations such as
/// `Duration::MAX` ("never poll", "wait forever") must not panic the dispatcher.
pub(crate) fn after(d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let now = Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(FAR))
        .unwrap_or(now)
}
