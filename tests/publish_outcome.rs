//! A publish whose answer is lost says so: through a proxy that cuts every connection as
//! soon as the server answers, an append on Postgres and Redis fails with
//! `Error::OutcomeUnknown` although the server stored the message; a publish that never
//! reached the server fails with an ordinary error and stores nothing.

use stream_tests::pg;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stream_runtime::backend::{GroupRef, SharedBackend};
use stream_runtime::conformance::unique_name;
use stream_runtime::{Error, NewMessage, StartPosition, Trim};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The payload whose request the proxy lets through and whose answer it cuts.
const MARKER: &[u8] = b"cut-the-answer-to-this";

/// A TCP proxy to `upstream` on a loopback port. While `cut` is set, once a client sent a
/// request holding [`MARKER`], the next thing a server sends closes its connection instead
/// of passing on: the request was executed, its answer is lost.
struct CutProxy {
    addr: SocketAddr,
    cut: Arc<Cut>,
    accept: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Cut {
    enabled: AtomicBool,
    armed: AtomicBool,
}

impl CutProxy {
    async fn start(upstream: String) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let cut = Arc::new(Cut::default());
        let flag = cut.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(pump(client, server, flag.clone()));
            }
        });
        CutProxy { addr, cut, accept }
    }

    /// Stops accepting: new connections are refused.
    fn refuse(&self) {
        self.accept.abort();
    }
}

async fn pump(client: TcpStream, server: TcpStream, cut: Arc<Cut>) {
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = client_rx.read(&mut buf).await {
            if cut.enabled.load(Ordering::SeqCst)
                && buf[..n].windows(MARKER.len()).any(|w| w == MARKER)
            {
                cut.armed.store(true, Ordering::SeqCst);
            }
            if server_tx.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = server_rx.read(&mut buf).await {
            if cut.armed.load(Ordering::SeqCst) || client_tx.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    // Whichever side ends first closes both.
    tokio::select! { () = up => {}, () = down => {} }
}

/// `url` with its `host:port` replaced by `addr`.
fn via(url: &str, addr: SocketAddr) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let host_start = url[start..authority_end]
        .rfind('@')
        .map_or(start, |i| start + i + 1);
    format!("{}{addr}{}", &url[..host_start], &url[authority_end..])
}

fn host_port(url: &str, default_port: u16) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let host = authority.rsplit('@').next().unwrap_or(authority);
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:{default_port}")
    }
}

/// The payloads `direct` finds in `stream` from its start.
async fn stored(direct: &SharedBackend, stream: &str) -> Vec<String> {
    let group = unique_name("check");
    direct
        .ensure_group(stream, &group, &StartPosition::Earliest)
        .await
        .expect("group");
    direct
        .claim(
            GroupRef {
                stream,
                group: &group,
                consumer: "checker",
            },
            10,
            Duration::from_secs(60),
        )
        .await
        .expect("claim")
        .into_iter()
        .map(|c| String::from_utf8_lossy(&c.message.payload).into_owned())
        .collect()
}

/// Cuts the answer of one append: it must fail as `OutcomeUnknown`, and the message must
/// be stored all the same.
async fn lost_answer_is_unknown(proxy: &CutProxy, proxied: SharedBackend, direct: SharedBackend) {
    let stream = format!("{}.ns.orders", unique_name("out"));
    // A first append through the proxy, so the connection is open before the cut.
    proxied
        .append(&stream, vec![NewMessage::new("m0")], Trim::NONE)
        .await
        .expect("append through the proxy");
    proxy.cut.enabled.store(true, Ordering::SeqCst);
    let result = proxied
        .append(&stream, vec![NewMessage::new(MARKER)], Trim::NONE)
        .await;
    assert!(
        proxy.cut.armed.load(Ordering::SeqCst),
        "the request passed the proxy"
    );
    let error = result.expect_err("the answer was cut, the append cannot succeed");
    assert!(
        matches!(error, Error::OutcomeUnknown { .. }) && error.outcome_is_unknown(),
        "expected OutcomeUnknown, got {error:?}"
    );
    let text = error.to_string();
    assert!(text.contains("unknown whether"), "message: {text}");
    assert_eq!(
        stored(&direct, &stream).await,
        ["m0", String::from_utf8_lossy(MARKER).as_ref()],
        "the server stored it"
    );
}

/// With the proxy refusing connections, an append fails with an ordinary backend error
/// (nothing reached the server) and stores nothing.
async fn refused_is_not_stored(proxy: &CutProxy, proxied: SharedBackend, direct: SharedBackend) {
    let stream = format!("{}.ns.orders", unique_name("out"));
    // Close the open connections (the answer to this one is cut), then refuse new ones.
    proxy.cut.enabled.store(true, Ordering::SeqCst);
    let _ = proxied
        .append(
            &format!("{stream}.warmup"),
            vec![NewMessage::new(MARKER)],
            Trim::NONE,
        )
        .await;
    proxy.refuse();
    let error = proxied
        .append(&stream, vec![NewMessage::new("never")], Trim::NONE)
        .await
        .expect_err("the server cannot be reached");
    assert!(
        matches!(error, Error::Backend { .. }) && !error.outcome_is_unknown(),
        "expected a plain backend error, got {error:?}"
    );
    assert!(stored(&direct, &stream).await.is_empty());
}

mod postgres {
    use super::*;

    async fn backends(proxy: &CutProxy) -> Option<(SharedBackend, SharedBackend)> {
        let direct = pg::shared_backend().await?;
        // Plain TCP, so the proxy sees the request: with the `tls` feature the default
        // `sslmode=prefer` would encrypt it (the test server has `ssl=on`).
        let plain = pg::url_with("sslmode", "disable");
        let proxied = pg::backend_at(&via(&plain, proxy.addr)).await?;
        Some((Arc::new(proxied), direct))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publish_answer_lost_is_outcome_unknown() {
        let proxy = CutProxy::start(host_port(&pg::url(), 5432)).await;
        let Some((proxied, direct)) = backends(&proxy).await else {
            return;
        };
        lost_answer_is_unknown(&proxy, proxied, direct).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publish_refused_is_not_stored() {
        let proxy = CutProxy::start(host_port(&pg::url(), 5432)).await;
        let Some((proxied, direct)) = backends(&proxy).await else {
            return;
        };
        refused_is_not_stored(&proxy, proxied, direct).await;
    }
}

mod redis {
    use stream_runtime::backend::redis::RedisBackend;

    use super::*;

    use stream_tests::redis_url as url;

    async fn backends(proxy: &CutProxy) -> Option<(SharedBackend, SharedBackend)> {
        let connect = |url: String| async move {
            match RedisBackend::connect(&url).await {
                Ok(b) => Some(Arc::new(b) as SharedBackend),
                Err(e) => stream_runtime::conformance::skip_or_fail("redis", &e.to_string()),
            }
        };
        let direct = connect(url()).await?;
        let proxied = connect(via(&url(), proxy.addr)).await?;
        Some((proxied, direct))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publish_answer_lost_is_outcome_unknown() {
        let proxy = CutProxy::start(host_port(&url(), 6379)).await;
        let Some((proxied, direct)) = backends(&proxy).await else {
            return;
        };
        lost_answer_is_unknown(&proxy, proxied, direct).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publish_refused_is_not_stored() {
        let proxy = CutProxy::start(host_port(&url(), 6379)).await;
        let Some((proxied, direct)) = backends(&proxy).await else {
            return;
        };
        refused_is_not_stored(&proxy, proxied, direct).await;
    }
}
