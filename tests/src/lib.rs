//! What the test files share: scratch directories, the URLs of the test servers and the
//! skip-or-require rule for them, log capture and the Postgres helpers.
//!
//! The servers come from `STREAMS_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) and `STREAMS_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`). A test whose server does not answer is skipped loudly, or fails
//! when `STREAMS_TEST_REQUIRE_SERVICES=1` ([`skip_or_fail`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use stream_runtime::backend::redis::RedisBackend;
use stream_runtime::backend::SharedBackend;
use stream_runtime::conformance::unique_name;
use stream_runtime::{Service, ServiceConfig};

pub use stream_runtime::conformance::intercept::CallWatch;
pub use stream_runtime::conformance::skip_or_fail;

/// A new, empty directory of its own under the system's temp directory.
pub fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir()
        .join(format!("stream-tests-{}", std::process::id()))
        .join(unique_name(prefix));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("creating {}: {e}", dir.display());
    }
    dir
}

/// A `sqlite://` URL naming a new database file.
pub fn sqlite_url() -> String {
    format!(
        "sqlite://{}",
        temp_dir("sqlite").join("streams.db").display()
    )
}

/// The test Postgres server's URL.
pub fn postgres_url() -> String {
    std::env::var("STREAMS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The test Redis server's URL.
pub fn redis_url() -> String {
    std::env::var("STREAMS_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A backend on the shared Redis server, or `None` (a loud skip) when it is unreachable.
pub async fn redis_backend() -> Option<RedisBackend> {
    match RedisBackend::connect(&redis_url()).await {
        Ok(backend) => Some(backend),
        Err(e) => skip_or_fail("redis", &e.to_string()),
    }
}

/// [`redis_backend`], shared.
pub async fn shared_redis() -> Option<SharedBackend> {
    Some(Arc::new(redis_backend().await?))
}

/// The test NATS server's URL (JetStream enabled).
pub fn nats_url() -> String {
    std::env::var("STREAMS_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A backend on the shared NATS server, or `None` (a loud skip) when it is unreachable.
pub async fn nats_backend() -> Option<stream_runtime::backend::nats::NatsBackend> {
    match stream_runtime::backend::nats::NatsBackend::connect(&nats_url()).await {
        Ok(backend) => Some(backend),
        Err(e) => skip_or_fail("nats", &e.to_string()),
    }
}

/// [`nats_backend`], shared.
pub async fn shared_nats() -> Option<SharedBackend> {
    Some(Arc::new(nats_backend().await?))
}

/// The URL of a backend of this `kind` (`memory`, `sqlite`, `postgres`, `redis`) for one
/// test (Postgres on the tests' schema, [`pg::SCHEMA`]), or `None` (loudly) when it is not in
/// the build or its server does not answer.
pub async fn backend_url(kind: &str) -> Option<String> {
    let url = match kind {
        "memory" => "memory://".to_owned(),
        "sqlite" => sqlite_url(),
        "postgres" => pg::url_with("schema", pg::SCHEMA),
        "redis" => redis_url(),
        "nats" => nats_url(),
        other => panic!("unknown backend kind {other}"),
    };
    match Service::connect(&url, ServiceConfig::default()).await {
        Ok(service) => {
            let _ = service.close().await;
            Some(url)
        }
        // A backend not merged into this build yet is not a missing service.
        Err(error @ stream_runtime::Error::FeatureDisabled { .. }) => {
            eprintln!("!!!! SKIPPING {kind} test: {error}");
            None
        }
        Err(e) => skip_or_fail(kind, &e.to_string()),
    }
}

/// The Postgres tests' schema and connections.
pub mod pg {
    use std::sync::Arc;

    use stream_runtime::backend::postgres::PostgresBackend;
    use stream_runtime::backend::SharedBackend;

    pub use super::postgres_url as url;

    /// The schema the Postgres tests share; every case uses its own random app name.
    /// Named after the latest migration: a build refuses a schema newer than it knows, so
    /// branches still at an older version keep their own schema on the shared test server.
    pub const SCHEMA: &str = "stream_tests_v3";

    /// The URL with an `application_name`, so a fault test kills only its own connections.
    pub fn url_with_app_name(app_name: &str) -> String {
        url_with("application_name", app_name)
    }

    /// The test server's URL with one more query parameter.
    pub fn url_with(key: &str, value: &str) -> String {
        let url = url();
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}{key}={value}")
    }

    /// A backend on the shared test schema, or `None` (a loud skip) when the server is down.
    pub async fn backend_at(url: &str) -> Option<PostgresBackend> {
        match PostgresBackend::connect_with_schema(url, SCHEMA).await {
            Ok(backend) => Some(backend),
            Err(e) => super::skip_or_fail("postgres", &e.to_string()),
        }
    }

    /// [`backend_at`] the test server, shared.
    pub async fn shared_backend() -> Option<SharedBackend> {
        Some(Arc::new(backend_at(&url()).await?) as SharedBackend)
    }
}

/// Formatted log lines, captured by [`Logs::capture`].
#[derive(Clone, Debug, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Installs a `tracing` subscriber writing into the returned `Logs` for this thread,
    /// until the guard is dropped.
    pub fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Subscribe options for telemetry tests: a 25 ms poll and a 10 ms retry delay.
pub fn fast_options() -> stream_runtime::SubscribeOptions {
    stream_runtime::SubscribeOptions::new()
        .poll_interval(std::time::Duration::from_millis(25))
        .retry_delay(stream_runtime::RetryDelay::Fixed(
            std::time::Duration::from_millis(10),
        ))
}

/// A handler that fails every attempt of the payload `bad` (retryable, "bad payload") and
/// handles the rest, counting its calls in `handled`.
pub fn fails_bad(
    handled: Arc<std::sync::atomic::AtomicU32>,
) -> impl Fn(stream_runtime::Message) -> std::future::Ready<Result<(), stream_runtime::HandlerError>>
       + Send
       + Sync
       + 'static {
    move |m: stream_runtime::Message| {
        handled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::ready(if &m.payload[..] == b"bad" {
            Err(stream_runtime::HandlerError::retry("bad payload"))
        } else {
            Ok(())
        })
    }
}

/// A redis-server of a test's own, with AOF, on a free loopback port in a temp directory,
/// stopped by pid (never the shared server).
#[derive(Debug)]
pub struct ThrowawayRedis {
    child: Option<std::process::Child>,
    port: u16,
    dir: PathBuf,
}

impl ThrowawayRedis {
    /// Starts one and waits until it answers, or `None` (a loud skip) when it cannot.
    pub async fn start() -> Option<ThrowawayRedis> {
        let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
            Ok(addr) => addr.port(),
            Err(e) => return skip_or_fail("redis-server", &format!("no free port: {e}")),
        };
        let mut server = ThrowawayRedis {
            child: None,
            port,
            dir: temp_dir("redis-server"),
        };
        if let Err(e) = server.spawn().await {
            return skip_or_fail("redis-server", &e);
        }
        Some(server)
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server process (again, after [`stop`](Self::stop)) on the same port and
    /// directory, and waits until it answers `PING`.
    pub async fn spawn(&mut self) -> Result<(), String> {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}"))?;
        self.child = Some(child);
        let url = self.url();
        let answers =
            stream_runtime::conformance::eventually(std::time::Duration::from_secs(10), || async {
                let Ok(client) = redis::Client::open(url.as_str()) else {
                    return false;
                };
                let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                    return false;
                };
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut conn).await;
                pong.is_ok()
            })
            .await;
        if answers {
            Ok(())
        } else {
            Err("redis-server did not answer within 10 s".to_owned())
        }
    }

    /// Kills the server process (a crash) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server (`SHUTDOWN`, which finishes the AOF, or SIGKILL for a crash), keeps
    /// it down for `down_for`, and starts it again on the same directory.
    pub async fn restart(&mut self, crash: bool, down_for: std::time::Duration) {
        if crash {
            self.stop();
        } else {
            if let Ok(client) = redis::Client::open(self.url()) {
                if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                    let _: redis::RedisResult<()> =
                        redis::cmd("SHUTDOWN").query_async(&mut conn).await;
                }
            }
            if let Some(mut child) = self.child.take() {
                let _ = child.wait();
            }
        }
        // Time is the subject: the server stays down this long.
        tokio::time::sleep(down_for).await;
        if let Err(e) = self.spawn().await {
            panic!("restarting redis-server: {e}");
        }
    }
}

impl Drop for ThrowawayRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// This test binary run again as a child process (running only the test `test`, with
/// `envs` set), its `CHILD ` lines collected; killed if the parent test fails half-way.
#[derive(Debug)]
pub struct ChildGuard {
    /// The process.
    pub child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl ChildGuard {
    /// Starts the child.
    pub fn spawn(test: &str, envs: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = std::process::Command::new(exe)
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .envs(envs.iter().copied())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawning the child process");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("child stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest may print "test child_process ... " on the same line first.
                if let Some(at) = line.find("CHILD ") {
                    sink.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(line[at + "CHILD ".len()..].to_owned());
                }
            }
        });
        ChildGuard {
            child,
            stdin,
            lines,
        }
    }

    /// The `CHILD ` lines so far, without the prefix.
    pub fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the child printed `CHILD <line>`.
    pub fn has_line(&self, line: &str) -> bool {
        self.lines().iter().any(|l| l == line)
    }

    /// Writes a line to the child's stdin.
    pub fn send(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("child stdin");
        writeln!(stdin, "{line}").expect("writing to the child");
        stdin.flush().expect("flushing the child's stdin");
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
