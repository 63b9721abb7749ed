//! Startup and shutdown errors (memory backend), and what a runtime without a tracing
//! subscriber says.

use super::*;

#[tokio::test]
async fn consumer_that_cannot_start_is_an_error_naming_it() {
    let error = startup_failure(
        "badstart",
        "[consumers.typed]\nstart = \"not-an-id\"\n",
        &[],
        "an unparsable start id stops startup",
    )
    .await;
    let stream_runtime::Error::ConsumerStart {
        consumer,
        location,
        source,
        ..
    } = &error
    else {
        panic!("not a consumer start error: {error:?}");
    };
    assert_eq!(*consumer, "typed");
    assert_eq!(
        location.file,
        here(0).file,
        "names the registration: {error}"
    );
    assert!(
        matches!(**source, stream_runtime::Error::InvalidStartId { ref id, .. } if id == "not-an-id"),
        "keeps its cause: {source:?}"
    );
    let err = error.to_string();
    assert!(err.contains("typed") && err.contains("not-an-id"), "{err}");
}

/// A consumer dead-lettering into its own stream would see every dead letter again, forever:
/// an error naming the consumer, not a hot loop.
#[tokio::test]
async fn dead_letter_into_the_consumers_own_stream_is_an_error() {
    let err = startup_error(
        "selfdead",
        "[consumers.typed]\ndead_letter = \"orders\"\n",
        &[],
        "dead letters into the consumer's own stream",
    )
    .await;
    assert!(
        err.contains("typed") && err.contains("dead_letter") && err.contains("own stream"),
        "{err}"
    );
}

/// An invalid `dead_letter` name is reported as the dead-letter option, not as the stream.
#[tokio::test]
async fn invalid_dead_letter_name_is_named_as_such() {
    // Refused when the file is read, as the attribute refuses it at compile time.
    let path = temp_dir("baddead").join("Streams.toml");
    std::fs::write(
        &path,
        "backend = \"memory://\"\n[consumers.typed]\ndead_letter = \"bad name\"\n",
    )
    .expect("write Streams.toml");
    let err = Config::loader()
        .file(&path)
        .env(Vec::<(String, String)>::new())
        .load()
        .expect_err("a space in the dead-letter name")
        .to_string();
    assert!(
        err.contains("`consumers.typed.dead_letter`")
            && err.contains("invalid name \"bad name\"")
            && err.contains(&path.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn missing_state_is_an_error_naming_the_consumer() {
    let config = config("memory://", "nostate", "", &[]);
    let err = Runtime::new()
        .config(config)
        .start()
        .await
        .expect_err("no Probe state")
        .to_string();
    assert!(err.contains("Probe state is missing"), "{err}");
}

#[tokio::test]
async fn unknown_consumer_table_is_an_error() {
    let err = startup_error("typo", "[consumers.typd]\nconcurrency = 2\n", &[], "typo").await;
    assert!(
        err.contains("[consumers.typd]") && err.contains("typed"),
        "{err}"
    );
}

#[tokio::test]
async fn handlers_aborted_at_shutdown_make_shutdown_fail() {
    let probe = Probe::default();
    let (_open, gate) = watch::channel(false);
    *probe.0.gate.lock().unwrap_or_else(|e| e.into_inner()) = Some(gate);
    let rt = start(
        config(
            "memory://",
            "abort",
            "[consumers.gated]\nshutdown_timeout = \"100ms\"\n",
            &[],
        ),
        &probe,
    )
    .await;
    rt.service()
        .publish("work", "stuck", PublishOptions::new())
        .await
        .expect("publish");
    probe
        .wait_for("the stuck handler", |p| {
            p.0.in_flight.load(Ordering::SeqCst) == 1
        })
        .await;
    let err = rt
        .shutdown()
        .await
        .expect_err("an aborted handler is a failed shutdown");
    assert!(err.to_string().contains("1 handler(s)"), "{err}");
}

#[tokio::test]
async fn run_until_returns_when_the_app_future_ends_and_reports_its_error() {
    let probe = Probe::default();
    let p = probe.clone();
    Runtime::new()
        .config(config("memory://", "rununtil", "", &[]))
        .state(probe.clone())
        .run_until(|service| async move {
            service
                .publish_json(
                    "orders",
                    &Order {
                        id: 3,
                        amount_cents: 5,
                    },
                    PublishOptions::new(),
                )
                .await?;
            p.wait_for("the order", |p| p.count("typed 3") == 1).await;
            Ok::<_, stream_runtime::Error>(())
        })
        .await
        .expect("clean run");

    let err = Runtime::new()
        .config(config("memory://", "rununtil-err", "", &[]))
        .state(probe)
        .run_until(|_service| async { Err::<(), _>("the app gave up") })
        .await
        .expect_err("the app's error is returned");
    assert!(
        matches!(err, stream_runtime::Error::Application(_)),
        "{err}"
    );
}

#[tokio::test]
async fn service_settings_come_from_the_config() {
    let rt = start(
        config(
            "memory://",
            "svc",
            "",
            &[
                ("STREAMS_NAMESPACE", "fromenv"),
                ("STREAMS_MAX_PAYLOAD_BYTES", "16"),
                ("STREAMS_MAX_LEN", "2"),
            ],
        ),
        &Probe::default(),
    )
    .await;
    let service = rt.service().clone();
    assert_eq!(service.config().max_payload_bytes, 16);
    assert_eq!(service.config().max_len, 2);
    assert_eq!(service.config().namespace, "fromenv");
    let err = service
        .publish("extras", vec![0u8; 17], PublishOptions::new())
        .await
        .expect_err("over the configured cap");
    assert!(
        matches!(
            err,
            stream_runtime::Error::PayloadTooLarge {
                size: 17,
                limit: 16
            }
        ),
        "{err}"
    );
    rt.shutdown().await.expect("clean shutdown");
}

/// Set only in the child process of `a_runtime_without_a_subscriber_says_so_on_stderr`.
const SILENT_CHILD_ENV: &str = "STREAMS_TEST_SILENT_RUNTIME_CHILD";

/// The child: runs a runtime with no tracing subscriber installed. Does nothing unless
/// [`SILENT_CHILD_ENV`] is set.
#[tokio::test]
async fn silent_runtime_child() {
    if std::env::var(SILENT_CHILD_ENV).is_err() {
        return;
    }
    Runtime::new()
        .config(config("memory://", "silent", "", &[]))
        .state(Probe::default())
        .run_until(|_service| async { Ok::<_, stream_runtime::Error>(()) })
        .await
        .expect("the runtime runs");
}

/// `stream_runtime::run()` in a `main` with no tracing subscriber would start, fail or stop
/// without a word: the runtime says so on stderr, with the fix.
#[test]
fn a_runtime_without_a_subscriber_says_so_on_stderr() {
    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "startup::silent_runtime_child", "--nocapture"])
        .env(SILENT_CHILD_ENV, "1")
        .output()
        .expect("run the child");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("no tracing subscriber is installed")
            && stderr.contains("tracing_subscriber::fmt::init()"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("no tracing subscriber").count(),
        1,
        "{stderr}"
    );
}
