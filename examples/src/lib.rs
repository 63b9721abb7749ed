//! Support shared by the example binaries (`src/bin/`), and the `orders` example's
//! consumers.

pub mod orders;

use std::io::IsTerminal;

/// Logs to stdout at `info` (or `RUST_LOG`), in colour only on a terminal: redirected to a
/// file or a pipe, the lines carry no ANSI codes (nor with `NO_COLOR` set).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = std::io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(colour)
        .init();
}
