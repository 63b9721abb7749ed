//! The smallest program: one consumer, the in-memory backend, three messages, exit.
//!
//! ```sh
//! cargo run -p stream-examples --bin quickstart
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stream_runtime::config::Config;
use stream_runtime::prelude::*;

#[derive(Debug, Serialize, Deserialize)]
struct Greeting {
    name: String,
}

/// How many greetings were handled (shared with `main`, hence the `Arc` inside).
#[derive(Clone, Default)]
struct Greeted {
    count: Arc<AtomicUsize>,
}

#[consumer(stream = "greetings", group = "greeters")]
async fn greet(
    greeting: Greeting,
    msg: &Message,
    greeted: State<Greeted>,
) -> Result<(), HandlerError> {
    tracing::info!(
        "hello, {}! (message {} on {})",
        greeting.name,
        msg.id,
        msg.stream
    );
    greeted.count.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Logs at `info`. (Not `stream_examples::init_logging`: using the library would link
    // the orders example's consumers into this program, and the runtime would start them.)
    tracing_subscriber::fmt().with_target(false).init();
    // No Streams.toml here: the in-memory backend, built in code.
    let mut config = Config::default();
    config.backend = "memory://".to_owned();
    config.app = "quickstart".to_owned();

    let greeted = Greeted::default();
    let seen = greeted.clone();
    let result = Runtime::new()
        .config(config)
        .state(greeted)
        .run_until(|service| async move {
            for name in ["Ada", "Grace", "Barbara"] {
                let greeting = Greeting {
                    name: name.to_owned(),
                };
                service
                    .publish_json("greetings", &greeting, PublishOptions::new())
                    .await?;
            }
            // Wait for the consumer, then return: the runtime drains and exits.
            tokio::time::timeout(Duration::from_secs(10), async {
                while seen.count.load(Ordering::SeqCst) < 3 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .map_err(|_| "the greetings were not handled within 10s")?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .await;
    // The runtime has logged any failure already: only the exit code is left to set.
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(_) => std::process::ExitCode::FAILURE,
    }
}
