//! Connections: clear errors for unreachable servers and wrong credentials (the URL
//! redacted), and nothing lost when the server kills the connections or the `LISTEN` one.

use super::*;

fn assert_redacted(error: &Error, host_port: &str) {
    let text = error.to_string();
    eprintln!("the error reads: {text}");
    assert!(!text.contains("s3cret"), "password leaked: {text}");
    assert!(text.contains("***"), "no redacted URL in: {text}");
    assert!(text.contains(host_port), "no server named in: {text}");
}

/// Bad input: an unreachable server fails at once with the URL redacted.
#[tokio::test]
async fn unreachable_server_is_a_clear_error() {
    let started = Instant::now();
    let url = "postgres://app:s3cret@127.0.0.1:1/db";
    let Err(error) = stream_runtime::backend::connect(url).await else {
        panic!("connected to port 1");
    };
    assert_redacted(&error, "127.0.0.1:1");
    assert!(
        matches!(
            error,
            Error::Backend {
                backend: "postgres",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

/// Bad input: wrong credentials are refused with the URL redacted.
#[tokio::test]
async fn wrong_credentials_are_a_clear_error() {
    if pg::backend_at(&pg::url()).await.is_none() {
        return;
    }
    let url = pg::url();
    let host = url
        .split_once("://")
        .map(|(_, rest)| rest.rsplit_once('@').map_or(rest, |(_, host)| host))
        .expect("a URL");
    let bad = format!("postgres://no_such_role_x:s3cret@{host}");
    let Err(error) = stream_runtime::backend::connect(&bad).await else {
        panic!("connected with a role that does not exist");
    };
    let host_port = host.split('/').next().unwrap_or(host);
    assert_redacted(&error, host_port);
    assert!(error.to_string().contains("no_such_role_x"), "{error}");
}

/// Faults: killing the backend's server connections mid-run loses nothing; the pool
/// reconnects, claims and acks carry on, expired claims are redelivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_lose_nothing() {
    const TOTAL: usize = 400;
    let app_name = unique_name("pgfault");
    let Some(consumer_backend) = pg::backend_at(&pg::url_with_app_name(&app_name)).await else {
        return;
    };
    let Some(publisher_backend) = pg::shared_backend().await else {
        return;
    };
    let app = unique_name("pgfault");
    let consumer = Service::new(consumer_backend, ServiceConfig::default().app(app.clone()));
    let publisher = Service::from_shared(publisher_backend, ServiceConfig::default().app(app));
    let rec = Recorder::new();
    let handler = rec.then(|_m: stream_runtime::Message| {
        async {
            // Handling takes a moment, so kills land while messages are in flight.
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok(())
        }
    });
    consumer
        .subscribe(
            "fault",
            "g",
            handler,
            SubscribeOptions::new()
                .concurrency(4)
                .visibility_timeout(Duration::from_secs(1))
                .poll_interval(Duration::from_millis(200)),
        )
        .await
        .expect("subscribe");

    let publishing = tokio::spawn(async move {
        for batch in 0..TOTAL / 20 {
            publisher
                .publish_batch(
                    "fault",
                    (0..20).map(|i| format!("m{}", batch * 20 + i)),
                    PublishOptions::new(),
                )
                .await
                .expect("publish");
            // Paced, so the publishing spans the kills below.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        publisher
    });
    let pool = admin_pool().await;
    let mut killed = 0;
    for _ in 0..5 {
        // Time is the subject: kills spread over the run.
        tokio::time::sleep(Duration::from_millis(100)).await;
        killed += kill_connections(&pool, &app_name).await;
    }
    assert!(killed > 0, "no connection was killed");
    let publisher = publishing.await.expect("publisher");
    let distinct = || {
        let mut payloads = rec.payloads();
        payloads.sort();
        payloads.dedup();
        payloads.len()
    };
    wait_for("every message handled despite the kills", || {
        distinct() >= TOTAL
    })
    .await;
    consumer.close().await.expect("close");
    publisher.close().await.expect("close");
}

/// S14 after a fault: the LISTEN connection is killed, reconnects by itself, and wakes
/// the consumer for messages published by another process, without waiting for the poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_reconnects_after_kill() {
    let app_name = unique_name("pglisten");
    let Some(consumer_backend) = pg::backend_at(&pg::url_with_app_name(&app_name)).await else {
        return;
    };
    let Some(publisher_backend) = pg::shared_backend().await else {
        return;
    };
    let pool = admin_pool().await;
    let app = unique_name("pglisten");
    let consumer = Service::new(consumer_backend, ServiceConfig::default().app(app.clone()));
    let publisher = Service::from_shared(publisher_backend, ServiceConfig::default().app(app));
    let rec = Recorder::new();
    consumer
        .subscribe(
            "wake",
            "g",
            rec.handler(),
            SubscribeOptions::new().poll_interval(Duration::from_secs(30)),
        )
        .await
        .expect("subscribe");
    let listening = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
                     AND query ILIKE 'LISTEN%'";
    wait_count(&pool, listening, &app_name, 1, "the LISTEN connection").await;
    for round in 0..3 {
        assert!(kill_connections(&pool, &app_name).await > 0);
        wait_count(
            &pool,
            listening,
            &app_name,
            1,
            "the LISTEN connection to come back",
        )
        .await;
        let started = Instant::now();
        publisher
            .publish("wake", format!("m{round}"), PublishOptions::new())
            .await
            .expect("publish");
        rec.wait_payload(&format!("m{round}")).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "woken only after {:?}",
            started.elapsed()
        );
    }
    consumer.close().await.expect("close");
    publisher.close().await.expect("close");
}
