//! The runtime's HTTP endpoint (`[http] addr` in `Streams.toml`): `/metrics` in Prometheus
//! text format (feature `prometheus`), `/healthz` (the process is up) and `/readyz` (the
//! backend answers and every enabled consumer runs; `503` with a JSON reason otherwise).
//!
//! Three read-only `GET` routes need no HTTP framework: each connection sends one request
//! and gets one response, then the connection is closed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::service::{Consumer, Service};

/// How long `/readyz` waits for the backend's answer.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest request head read.
const MAX_REQUEST: usize = 8 * 1024;

/// What `/readyz` looks at, filled in as the runtime starts.
#[derive(Default)]
pub(crate) struct Readiness {
    service: OnceLock<Service>,
    consumers: Mutex<Vec<(&'static str, Consumer)>>,
    stopping: std::sync::atomic::AtomicBool,
}

impl Readiness {
    pub(crate) fn connected(&self, service: Service) {
        let _ = self.service.set(service);
    }

    pub(crate) fn started(&self, name: &'static str, consumer: Consumer) {
        self.consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name, consumer));
    }

    pub(crate) fn stopping(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// `Ok` when ready, else why not.
    async fn check(&self) -> std::result::Result<(), String> {
        if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return Err("shutting down".to_owned());
        }
        let Some(service) = self.service.get() else {
            return Err("starting: not connected to the backend yet".to_owned());
        };
        match tokio::time::timeout(PING_TIMEOUT, service.backend().ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("the backend does not answer: {e}")),
            Err(_) => {
                return Err(format!(
                    "the backend did not answer within {}",
                    crate::config::format_duration(PING_TIMEOUT)
                ))
            }
        }
        let consumers = self
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((name, _)) = consumers.iter().find(|(_, c)| !c.is_running()) {
            return Err(format!("consumer {name} is not running"));
        }
        Ok(())
    }
}

/// The running endpoint.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    /// Binds `addr` and serves until [`Server::stop`].
    pub(crate) async fn start(
        addr: SocketAddr,
        readiness: Arc<Readiness>,
        metrics: Option<Metrics>,
    ) -> Result<Server> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            Error::Config(format!(
                "cannot serve HTTP on {addr} (`[http] addr` / STREAMS_HTTP__ADDR): {e}; \
                 is another process listening there? pick another address"
            ))
        })?;
        let addr = listener.local_addr().unwrap_or(addr);
        let (stop, mut stopped) = watch::channel(false);
        let routes = Arc::new(Routes { readiness, metrics });
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    // The only change ever sent is the stop.
                    _ = stopped.changed() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            tokio::spawn(respond(stream, routes.clone()));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "accepting an HTTP connection failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                }
            }
        });
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
        Ok(Server { addr, stop, task })
    }

    pub(crate) async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

/// Renders the metrics of the recorder the runtime installed.
#[derive(Clone)]
pub(crate) struct Metrics {
    #[cfg(feature = "prometheus")]
    handle: metrics_exporter_prometheus::PrometheusHandle,
}

impl Metrics {
    /// Installs a Prometheus recorder as the global `metrics` recorder, unless the
    /// application installed one already (then `/metrics` says so). Without the
    /// `prometheus` feature, `None`.
    pub(crate) fn install() -> Option<Metrics> {
        #[cfg(feature = "prometheus")]
        {
            use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
            const BUCKETS: &[f64] = &[
                0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ];
            let recorder = match PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), BUCKETS)
            {
                Ok(builder) => builder.build_recorder(),
                Err(e) => {
                    tracing::warn!(error = %e, "could not set up the Prometheus recorder");
                    return None;
                }
            };
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "a metrics recorder is installed already; /metrics does not serve it \
                     (export it your own way, or leave the recorder to the runtime)"
                );
                return None;
            }
            Some(Metrics { handle })
        }
        #[cfg(not(feature = "prometheus"))]
        None
    }

    fn render(&self) -> String {
        #[cfg(feature = "prometheus")]
        {
            self.handle.run_upkeep();
            self.handle.render()
        }
        #[cfg(not(feature = "prometheus"))]
        String::new()
    }
}

struct Routes {
    readiness: Arc<Readiness>,
    metrics: Option<Metrics>,
}

async fn respond(mut stream: TcpStream, routes: Arc<Routes>) {
    let Ok(Some(path)) = tokio::time::timeout(REQUEST_TIMEOUT, read_path(&mut stream)).await else {
        let _ = write(
            &mut stream,
            "400 Bad Request",
            "text/plain",
            "bad request\n",
        )
        .await;
        return;
    };
    let (status, kind, body) = match path.as_str() {
        "/healthz" => ("200 OK", "text/plain", "ok\n".to_owned()),
        "/readyz" => match routes.readiness.check().await {
            Ok(()) => (
                "200 OK",
                "application/json",
                "{\"ready\":true}\n".to_owned(),
            ),
            Err(reason) => (
                "503 Service Unavailable",
                "application/json",
                format!(
                    "{}\n",
                    serde_json::json!({ "ready": false, "reason": reason })
                ),
            ),
        },
        "/metrics" => match &routes.metrics {
            Some(metrics) => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
            None => (
                "404 Not Found",
                "text/plain",
                "no metrics here: build stream-runtime with its `prometheus` feature, and \
                 install no other metrics recorder\n"
                    .to_owned(),
            ),
        },
        _ => (
            "404 Not Found",
            "text/plain",
            "not found; try /metrics, /healthz or /readyz\n".to_owned(),
        ),
    };
    let _ = write(&mut stream, status, kind, &body).await;
}

/// The path of a `GET` (or `HEAD`) request; `None` for anything else.
async fn read_path(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 || head.len() + n > MAX_REQUEST {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?;
    let target = parts.next()?;
    if method != "GET" && method != "HEAD" {
        return None;
    }
    Some(target.split('?').next().unwrap_or(target).to_owned())
}

async fn write(
    stream: &mut TcpStream,
    status: &str,
    kind: &str,
    body: &str,
) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
