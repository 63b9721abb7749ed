//! The runtime's `[http]` endpoint: `/healthz`, `/metrics` (Prometheus text) with the
//! consumers' figures, and `/readyz` turning 503 while a (throwaway) Redis server is down and
//! 200 again once it is back.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use stream_runtime::config::Config;
use stream_runtime::conformance::unique_name;
use stream_runtime::prelude::*;
use stream_runtime::{PublishOptions, Runtime};
use stream_tests::ThrowawayRedis;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[consumer(stream = "pings", group = "http-test", poll_interval = "50ms")]
async fn http_test_consumer(_payload: stream_runtime::Raw) -> Result<(), HandlerError> {
    Ok(())
}

/// `GET path` on `addr`: status code and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to the endpoint");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").as_bytes())
        .await
        .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read the response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn wait_for_status(addr: SocketAddr, path: &str, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (got, body) = get(addr, path).await;
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} did not answer {status} within 20 s; last: {got} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_backend_and_metrics_are_served() {
    let Some(mut redis) = ThrowawayRedis::start().await else {
        return;
    };
    let app = unique_name("http");
    let toml = format!(
        "backend = \"{}\"\napp = \"{app}\"\nmetrics_interval = \"50ms\"\n\
         [http]\naddr = \"127.0.0.1:0\"\n",
        redis.url()
    );
    let config = Config::from_toml_str(&toml).expect("config");
    let started = Runtime::new()
        .config(config)
        .start()
        .await
        .expect("start the runtime");
    let addr = started.http_addr().expect("the endpoint is configured");

    assert_eq!(get(addr, "/healthz").await.0, 200);
    let ready = wait_for_status(addr, "/readyz", 200).await;
    assert!(ready.contains("\"ready\":true"), "{ready}");

    for i in 0..3 {
        started
            .service()
            .publish("pings", format!("p{i}"), PublishOptions::new())
            .await
            .expect("publish");
    }
    let full = started.service().stream_name("pings").expect("name");
    // 3 handled, and the sampled gauges caught up: nothing behind, nothing pending.
    let group = format!("stream=\"{full}\",group=\"http-test\"");
    let handled_ok = |body: &str| {
        body.lines().any(|l| {
            l.starts_with("streams_handled_total{")
                && l.contains(&format!("stream=\"{full}\""))
                && l.contains("outcome=\"ok\"")
                && l.ends_with(" 3")
        }) && body
            .lines()
            .any(|l| l == format!("streams_lag{{{group}}} 0"))
            && body
                .lines()
                .any(|l| l == format!("streams_pending{{{group}}} 0"))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let (status, body) = get(addr, "/metrics").await;
        if status == 200 && handled_ok(&body) {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "/metrics never showed 3 handled:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for name in [
        "streams_published_total",
        "streams_handler_seconds_bucket",
        "streams_in_flight",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }

    redis.stop();
    let down = wait_for_status(addr, "/readyz", 503).await;
    assert!(
        down.contains("\"ready\":false") && down.contains("backend"),
        "{down}"
    );
    assert_eq!(
        get(addr, "/healthz").await.0,
        200,
        "the process is still up"
    );

    if let Err(e) = redis.spawn().await {
        panic!("restarting redis-server: {e}");
    }
    wait_for_status(addr, "/readyz", 200).await;

    started.shutdown().await.expect("shutdown");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the endpoint stops with the runtime"
    );
}
