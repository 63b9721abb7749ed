//! Support shared by the example binaries (`src/bin/`), and the `orders` example's
//! consumers.

pub mod orders;

/// Logs to stdout at `info` (or `RUST_LOG`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}
