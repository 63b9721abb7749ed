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
use stream_runtime::registry::{Attributes, ConsumerDef, Location, States};
use stream_runtime::{Handler, HandlerError, Message, PublishOptions, Runtime};

#[derive(Debug, Serialize, Deserialize)]
struct Greeting {
    name: String,
}

/// How many greetings were handled.
#[derive(Default)]
struct Greeted(AtomicUsize);

async fn greet(greeting: Greeting, msg: &Message, greeted: &Greeted) -> Result<(), HandlerError> {
    tracing::info!(
        "hello, {}! (message {} on {})",
        greeting.name,
        msg.id,
        msg.stream
    );
    greeted.0.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

// What `#[consumer(stream = "greetings", group = "greeters")]` on `greet` registers.
fn build_greet(states: &States) -> stream_runtime::Result<Handler> {
    let greeted = states
        .get::<Arc<Greeted>>()
        .ok_or_else(|| stream_runtime::Error::Config("Greeted state missing".into()))?;
    Ok(stream_examples::json_handler(
        move |g: Greeting, msg: Message| {
            let greeted = greeted.clone();
            async move { greet(g, &msg, &greeted).await }
        },
    ))
}
inventory::submit! {
    ConsumerDef::__new(
        "greet", "greetings", "greeters", Attributes::NONE,
        Location { file: file!(), line: line!() }, "Greeting", build_greet,
    )
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    stream_examples::init_logging();
    let mut config = Config::default();
    config.backend = "memory://".to_owned();
    config.app = "quickstart".to_owned();

    let greeted = Arc::new(Greeted::default());
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
                while seen.0.load(Ordering::SeqCst) < 3 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .map_err(|_| "the greetings were not handled within 10s")?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}
