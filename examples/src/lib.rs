//! Support shared by the example binaries (`src/bin/`).
//!
//! Until `#[consumer]` is available the examples register their consumers by hand, the way
//! the attribute does; [`json_handler`] is the typed decoding it generates.

use std::future::Future;
use std::sync::Arc;

use stream_runtime::{handler_fn, Handler, HandlerError, Message};

/// A handler decoding its payload as JSON; a payload that fails to decode is a permanent
/// error, dead-lettered on its first attempt (D8).
pub fn json_handler<T, F, Fut>(f: F) -> Handler
where
    T: serde::de::DeserializeOwned + Send + 'static,
    F: Fn(T, Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let f = Arc::new(f);
    handler_fn(move |msg: Message| {
        let f = f.clone();
        async move {
            let value: T = msg.json().map_err(|e| {
                HandlerError::permanent(format!(
                    "payload is not a valid {}: {e}",
                    std::any::type_name::<T>()
                ))
            })?;
            f(value, msg).await
        }
    })
}

/// Logs to stderr at `info` (or `RUST_LOG`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}
