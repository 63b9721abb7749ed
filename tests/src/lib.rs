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

/// [`nats_backend`], shared, with the streams the test touches deleted from the server when
/// the test drops it ([`NatsCleanup`]). The first call in a process also deletes the
/// streams earlier runs left behind (a killed run, a test that panicked first): those not
/// written to for [`NATS_SWEEP_IDLE`].
pub async fn shared_nats() -> Option<SharedBackend> {
    let backend = nats_backend().await?;
    static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SWEPT.swap(true, std::sync::atomic::Ordering::SeqCst) {
        match backend.delete_idle_streams("", NATS_SWEEP_IDLE).await {
            Ok(deleted) if !deleted.is_empty() => {
                eprintln!(
                    "deleted {} idle test streams from the NATS server",
                    deleted.len()
                );
            }
            Ok(_) => {}
            Err(e) => eprintln!("sweeping idle test streams off the NATS server: {e}"),
        }
    }
    let cleanup = Arc::new(NatsCleanup {
        url: nats_url(),
        streams: Mutex::default(),
    });
    Some(stream_runtime::conformance::intercept::intercept(
        Arc::new(backend),
        cleanup,
    ))
}

/// How long a stream on the shared NATS server must have gone unwritten before the sweep
/// of [`shared_nats`] deletes it: longer than any test runs.
pub const NATS_SWEEP_IDLE: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// Records the streams a test appends to, creates groups on or dead-letters to, and
/// deletes them (with their groups' records) from the NATS server when dropped, so the
/// shared server does not fill up with test streams.
#[derive(Debug)]
pub struct NatsCleanup {
    url: String,
    streams: Mutex<std::collections::HashSet<String>>,
}

impl NatsCleanup {
    fn record(&self, stream: &str) {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        if !streams.contains(stream) {
            streams.insert(stream.to_owned());
        }
    }
}

impl stream_runtime::conformance::intercept::Intercept for NatsCleanup {
    fn append<'a>(
        &'a self,
        inner: &'a dyn stream_runtime::backend::Backend,
        stream: &'a str,
        messages: Vec<stream_runtime::NewMessage>,
        trim: stream_runtime::Trim,
    ) -> stream_runtime::backend::BoxFuture<
        'a,
        stream_runtime::Result<Vec<stream_runtime::MessageId>>,
    > {
        self.record(stream);
        inner.append(stream, messages, trim)
    }

    fn ensure_group<'a>(
        &'a self,
        inner: &'a dyn stream_runtime::backend::Backend,
        stream: &'a str,
        group: &'a str,
        start: &'a stream_runtime::StartPosition,
    ) -> stream_runtime::backend::BoxFuture<'a, stream_runtime::Result<()>> {
        self.record(stream);
        inner.ensure_group(stream, group, start)
    }

    fn dead_letter<'a>(
        &'a self,
        inner: &'a dyn stream_runtime::backend::Backend,
        group: stream_runtime::backend::GroupRef<'a>,
        claim: &'a stream_runtime::backend::Claim,
        to: &'a str,
        message: stream_runtime::NewMessage,
    ) -> stream_runtime::backend::BoxFuture<'a, stream_runtime::Result<bool>> {
        self.record(to);
        inner.dead_letter(group, claim, to, message)
    }
}

impl Drop for NatsCleanup {
    fn drop(&mut self) {
        let streams =
            std::mem::take(&mut *self.streams.lock().unwrap_or_else(PoisonError::into_inner));
        if streams.is_empty() {
            return;
        }
        let url = self.url.clone();
        // On a thread and runtime of its own: this may run while the test's runtime shuts
        // down, and the backend it wrapped is closed by then.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(backend) = stream_runtime::backend::nats::NatsBackend::connect(&url).await
                else {
                    return;
                };
                for stream in &streams {
                    if let Err(e) = backend.delete_stream(stream).await {
                        eprintln!("deleting test stream {stream:?} from the NATS server: {e}");
                    }
                }
                let _ = stream_runtime::backend::Backend::close(&backend).await;
            });
        })
        .join();
    }
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
    pub const SCHEMA: &str = "stream_tests_v6";

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

/// A Redis Cluster of a test binary's own: three primaries with one replica each, on free
/// loopback ports, each node in its own directory under a temp directory. Every node runs
/// under a small shell that stops it (by pid) when its stdin closes: when this value is
/// dropped, or when the test process exits however it exits.
#[derive(Debug)]
pub struct ThrowawayCluster {
    nodes: Vec<ClusterNode>,
    dir: PathBuf,
}

#[derive(Debug)]
struct ClusterNode {
    port: u16,
    keeper: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
}

/// Whether this process runs as root (servers like Postgres refuse to).
pub fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Starts `program args...` under a shell that stops it (`kill -SIGNAL <pid>`) when the
/// returned stdin closes: when it is dropped, or when the test process exits however it
/// exits. As `user` (through `runuser`) when given and this process runs as root.
pub fn spawn_kept(
    user: Option<&str>,
    program: &str,
    args: &[std::ffi::OsString],
    signal: &str,
) -> Result<(std::process::Child, std::process::ChildStdin), String> {
    let script =
        format!(r#"{program} "$@" & pid=$!; cat >/dev/null; kill -{signal} "$pid"; wait "$pid""#);
    let root = is_root();
    let mut command = match user {
        Some(user) if root => {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", user, "--", "sh"]);
            c
        }
        _ => std::process::Command::new("sh"),
    };
    let mut child = command
        .arg("-c")
        .arg(script)
        .arg("sh")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| format!("no stdin for {program}"))?;
    Ok((child, stdin))
}

/// Runs `program args...` to completion, as `user` when given and running as root.
pub fn run_as(
    user: Option<&str>,
    program: &str,
    args: &[std::ffi::OsString],
) -> Result<(), String> {
    let root = is_root();
    let mut command = match user {
        Some(user) if root => {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", user, "--", program]);
            c
        }
        _ => std::process::Command::new(program),
    };
    let out = command
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A free loopback port whose cluster bus port (+10000) is free too.
fn free_cluster_port(taken: &[u16]) -> Result<u16, String> {
    for _ in 0..200 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        if port > 55_000 || taken.contains(&port) || taken.contains(&(port + 10_000)) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free pair of ports for a cluster node".to_owned())
}

/// `redis-cli -p port args...`, its output.
fn redis_cli(port: u16, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .map_err(|e| format!("cannot run redis-cli: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `check` every 100 ms until it holds or `timeout` passes (blocking).
fn poll_until(timeout: std::time::Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

impl ThrowawayCluster {
    /// Starts six nodes, joins them into a cluster (`redis-cli --cluster create ...
    /// --cluster-replicas 1`) and waits until every node reports `cluster_state:ok`.
    /// Blocks for a few seconds.
    pub fn start() -> Result<ThrowawayCluster, String> {
        let dir = temp_dir("redis-cluster");
        let mut cluster = ThrowawayCluster {
            nodes: Vec::new(),
            dir,
        };
        let mut ports = Vec::new();
        for _ in 0..6 {
            let port = free_cluster_port(&ports)?;
            ports.push(port);
            ports.push(port + 10_000);
            let node_dir = cluster.dir.join(port.to_string());
            std::fs::create_dir_all(&node_dir)
                .map_err(|e| format!("creating {}: {e}", node_dir.display()))?;
            let args: Vec<std::ffi::OsString> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-node-timeout",
                "2000",
                "--cluster-config-file",
                "nodes.conf",
                "--appendonly",
                "yes",
                "--save",
                "",
                "--dir",
            ]
            .iter()
            .map(Into::into)
            .chain([node_dir.clone().into_os_string()])
            .collect();
            let (keeper, stdin) = spawn_kept(None, "redis-server", &args, "TERM")?;
            cluster.nodes.push(ClusterNode {
                port,
                keeper,
                stdin: Some(stdin),
            });
        }
        for node in &cluster.nodes {
            let port = node.port;
            if !poll_until(std::time::Duration::from_secs(10), || {
                redis_cli(port, &["ping"]).is_ok_and(|o| o.contains("PONG"))
            }) {
                return Err(format!("cluster node {port} did not answer within 10 s"));
            }
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = std::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("cannot run redis-cli --cluster create: {e}"))?;
        if !created.success() {
            return Err(format!("redis-cli --cluster create failed: {created}"));
        }
        for node in &cluster.nodes {
            let port = node.port;
            if !poll_until(std::time::Duration::from_secs(30), || {
                redis_cli(port, &["cluster", "info"]).is_ok_and(|o| o.contains("cluster_state:ok"))
            }) {
                return Err(format!("cluster node {port} not ok within 30 s"));
            }
            // Every node knows every replica, and each replica is in sync with its primary.
            if !poll_until(std::time::Duration::from_secs(30), || {
                let Ok(nodes) = redis_cli(port, &["cluster", "nodes"]) else {
                    return false;
                };
                let replicas = nodes.lines().filter(|l| l.contains("slave")).count();
                let linked = redis_cli(port, &["info", "replication"]).is_ok_and(|info| {
                    info.contains("role:master") || info.contains("master_link_status:up")
                });
                replicas == 3 && !nodes.contains("fail") && !nodes.contains("handshake") && linked
            }) {
                return Err(format!(
                    "cluster node {port} did not see its replicas within 30 s"
                ));
            }
        }
        Ok(cluster)
    }

    /// Its URL: `redis+cluster://` and the primaries and replicas as seed nodes.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// The nodes' ports.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// `redis-cli` against one node.
    pub fn cli(&self, port: u16, args: &[&str]) -> Result<String, String> {
        redis_cli(port, args)
    }

    /// The port of the primary serving `key`'s slot, and of its replicas.
    pub fn serving(&self, key: &str) -> Result<(u16, Vec<u16>), String> {
        // Asked of the first node that answers (a test may have killed some).
        let (slot, nodes) = self
            .ports()
            .into_iter()
            .find_map(|port| {
                let slot = redis_cli(port, &["cluster", "keyslot", key])
                    .ok()?
                    .trim()
                    .parse::<u16>()
                    .ok()?;
                Some((slot, redis_cli(port, &["cluster", "nodes"]).ok()?))
            })
            .ok_or_else(|| "no cluster node answers CLUSTER KEYSLOT".to_owned())?;
        // <id> <ip:port@bus> <flags> <primary id or -> ... <slot ranges>
        let mut primary = None;
        for line in nodes.lines() {
            let cells: Vec<&str> = line.split_whitespace().collect();
            if cells.len() < 8 || !cells[2].contains("master") || cells[2].contains("fail") {
                continue;
            }
            let serves = cells[8..].iter().any(|range| {
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
            });
            if serves {
                primary = Some((cells[0].to_owned(), node_port(cells[1])?));
            }
        }
        let (id, primary) = primary.ok_or_else(|| format!("no primary serves slot {slot}"))?;
        let replicas = nodes
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|c| c.len() > 3 && c[3] == id && !c[2].contains("fail"))
            .map(|c| node_port(c[1]))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((primary, replicas))
    }

    /// The pid of the redis-server on `port` (from `INFO server`).
    pub fn pid(&self, port: u16) -> Result<u32, String> {
        let info = redis_cli(port, &["info", "server"])?;
        info.lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| format!("no process_id in INFO of node {port}"))
    }

    /// The node id of the node on `port` (`CLUSTER MYID`).
    pub fn node_id(&self, port: u16) -> Result<String, String> {
        let id = redis_cli(port, &["cluster", "myid"])?.trim().to_owned();
        if id.is_empty() {
            return Err(format!("node {port} did not tell its id"));
        }
        Ok(id)
    }

    /// Moves slot `slot` from the primary on `from` to the primary on `to` while clients
    /// run, as `redis-cli --cluster reshard` does for each slot: the target `IMPORTING`, the
    /// source `MIGRATING`, its keys `MIGRATE`d in batches, then `SETSLOT ... NODE` on both
    /// and every other primary (blocking).
    pub fn migrate_slot(&self, slot: u16, from: u16, to: u16) -> Result<(), String> {
        let slot_arg = slot.to_string();
        let (from_id, to_id) = (self.node_id(from)?, self.node_id(to)?);
        let ok = |port: u16, args: &[&str]| -> Result<(), String> {
            let out = redis_cli(port, args)?;
            if out.trim() == "OK" {
                Ok(())
            } else {
                Err(format!("{args:?} on node {port} answered {out:?}"))
            }
        };
        ok(
            to,
            &["cluster", "setslot", &slot_arg, "importing", &from_id],
        )?;
        ok(
            from,
            &["cluster", "setslot", &slot_arg, "migrating", &to_id],
        )?;
        loop {
            let keys = redis_cli(from, &["cluster", "getkeysinslot", &slot_arg, "100"])?;
            let keys: Vec<&str> = keys
                .lines()
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .collect();
            if keys.is_empty() {
                break;
            }
            let to_port = to.to_string();
            let mut args = vec!["migrate", "127.0.0.1", &to_port, "", "0", "5000", "keys"];
            args.extend(keys.iter().copied());
            let out = redis_cli(from, &args)?;
            if !matches!(out.trim(), "OK" | "NOKEY") {
                return Err(format!("MIGRATE answered {out:?}"));
            }
        }
        ok(to, &["cluster", "setslot", &slot_arg, "node", &to_id])?;
        ok(from, &["cluster", "setslot", &slot_arg, "node", &to_id])?;
        Ok(())
    }

    /// The primaries' ports (from `CLUSTER NODES` of the first node that answers).
    pub fn primaries(&self) -> Result<Vec<u16>, String> {
        let nodes = self
            .ports()
            .into_iter()
            .find_map(|port| redis_cli(port, &["cluster", "nodes"]).ok())
            .ok_or_else(|| "no cluster node answers CLUSTER NODES".to_owned())?;
        nodes
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|c| c.len() > 2 && c[2].contains("master") && !c[2].contains("fail"))
            .map(|c| node_port(c[1]))
            .collect()
    }

    /// Waits until every node still running reports `cluster_state:ok` (blocking).
    pub fn wait_ok(&self, skip: &[u16], timeout: std::time::Duration) -> bool {
        self.ports()
            .into_iter()
            .filter(|p| !skip.contains(p))
            .all(|port| {
                poll_until(timeout, || {
                    redis_cli(port, &["cluster", "info"])
                        .is_ok_and(|o| o.contains("cluster_state:ok"))
                })
            })
    }
}

fn node_port(address: &str) -> Result<u16, String> {
    address
        .split('@')
        .next()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("no port in {address}"))
}

impl Drop for ThrowawayCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stdin.take(); // the keeper stops its server
        }
        for node in &mut self.nodes {
            let _ = node.keeper.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The cluster the tests of one binary share (started on first use), or `None` (a loud
/// skip) when it cannot start. Its nodes stop when the test process exits.
pub fn shared_cluster() -> Option<&'static ThrowawayCluster> {
    static CLUSTER: std::sync::OnceLock<Result<ThrowawayCluster, String>> =
        std::sync::OnceLock::new();
    match CLUSTER.get_or_init(ThrowawayCluster::start) {
        Ok(cluster) => Some(cluster),
        Err(e) => skip_or_fail("redis cluster", e),
    }
}

/// A backend on the shared cluster ([`shared_cluster`]), shared.
pub async fn shared_redis_cluster() -> Option<SharedBackend> {
    let url = shared_cluster()?.url();
    match RedisBackend::connect(&url).await {
        Ok(backend) => Some(Arc::new(backend)),
        Err(e) => skip_or_fail("redis cluster", &e.to_string()),
    }
}

/// The lines of this process's stdin, read on a thread of their own (for a child process
/// driven by its parent); the channel closes at the end of input.
pub fn stdin_lines() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    use std::io::BufRead;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// This test binary run again as a child process that runs one test (`test`, with the
/// given environment), its stdin a pipe and its stdout read line by line: the lines holding
/// `CHILD ` are kept (what follows it), the rest dropped. Killed when dropped, if still
/// running.
#[derive(Debug)]
pub struct ChildProcess {
    /// The process.
    pub child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl ChildProcess {
    /// Starts it.
    pub fn spawn(test: &str, env: &[(&str, &str)]) -> ChildProcess {
        use std::io::BufRead;
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = std::process::Command::new(exe)
            .args([test, "--exact", "--nocapture", "--test-threads=1"])
            .envs(env.iter().copied())
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
        ChildProcess {
            child,
            stdin,
            lines,
        }
    }

    /// The lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.with_lines(<[String]>::to_vec)
    }

    /// `f` of the lines so far, without copying them.
    pub fn with_lines<T>(&self, f: impl FnOnce(&[String]) -> T) -> T {
        f(&self.lines.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether it printed `line`.
    pub fn has_line(&self, line: &str) -> bool {
        self.with_lines(|lines| lines.iter().any(|l| l == line))
    }

    /// Writes a line to its stdin.
    pub fn send(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("child stdin");
        writeln!(stdin, "{line}").expect("writing to the child");
        stdin.flush().expect("flushing the child's stdin");
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().expect("killing the child");
        self.child.wait().expect("reaping the child");
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The second half of a crash test: after the process holding `victim` was killed, publishes
/// `survivor` on `crash`, subscribes group `g` in this process, and waits until both arrive;
/// the victim must come back as attempt 2 (its claim's delivery survived the crash). Returns
/// what this process handled.
pub async fn victim_redelivered_after_crash(
    service: &Service,
) -> stream_runtime::conformance::Recorder {
    use stream_runtime::{PublishOptions, SubscribeOptions};
    service
        .publish("crash", "survivor", PublishOptions::new())
        .await
        .expect("publish after the kill");
    let rec = stream_runtime::conformance::Recorder::new();
    service
        .subscribe(
            "crash",
            "g",
            rec.handler(),
            SubscribeOptions::new().poll_interval(std::time::Duration::from_millis(100)),
        )
        .await
        .expect("subscribe after the crash");
    rec.wait_payload("victim").await;
    rec.wait_payload("survivor").await;
    let victim = rec
        .messages()
        .into_iter()
        .find(|m| m.payload[..] == b"victim"[..])
        .expect("victim");
    assert_eq!(victim.attempt, 2, "the victim's delivery count survives");
    rec
}

/// A NATS JetStream cluster of a test's own: three `nats-server -js` nodes on free loopback
/// ports, routed to each other (`-cluster` / `-routes`), each with its own store directory
/// (`-sd`) and pid file, under a keeper shell that stops it when this value is dropped or
/// the test process exits.
#[derive(Debug)]
pub struct ThrowawayNatsCluster {
    nodes: Vec<NatsNode>,
    dir: PathBuf,
}

#[derive(Debug)]
struct NatsNode {
    name: String,
    port: u16,
    pid_file: PathBuf,
    keeper: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
}

/// A free loopback port not in `taken`.
fn free_port(taken: &[u16]) -> Result<u16, String> {
    for _ in 0..200 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        if !taken.contains(&port) {
            return Ok(port);
        }
    }
    Err("no free port".to_owned())
}

impl ThrowawayNatsCluster {
    /// Starts three nodes and waits until a stream with three replicas can be created (the
    /// cluster has elected its meta leader), or `None` (a loud skip) when it cannot.
    pub async fn start() -> Option<ThrowawayNatsCluster> {
        match Self::try_start().await {
            Ok(cluster) => Some(cluster),
            Err(e) => skip_or_fail("nats cluster", &e),
        }
    }

    async fn try_start() -> Result<ThrowawayNatsCluster, String> {
        let dir = temp_dir("nats-cluster");
        let mut taken = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..3 {
            let client = free_port(&taken)?;
            taken.push(client);
            let route = free_port(&taken)?;
            taken.push(route);
            ports.push((client, route));
        }
        let mut cluster = ThrowawayNatsCluster {
            nodes: Vec::new(),
            dir,
        };
        for (i, (client, route)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = cluster.dir.join(&name);
            std::fs::create_dir_all(&store)
                .map_err(|e| format!("creating {}: {e}", store.display()))?;
            let pid_file = cluster.dir.join(format!("{name}.pid"));
            let routes: Vec<String> = ports
                .iter()
                .filter(|(c, _)| c != client)
                .map(|(_, r)| format!("nats://127.0.0.1:{r}"))
                .collect();
            let args: Vec<std::ffi::OsString> = vec![
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                client.to_string().into(),
                "-n".into(),
                name.clone().into(),
                "-js".into(),
                "-sd".into(),
                store.into_os_string(),
                "--cluster_name".into(),
                "streams-test".into(),
                "-cluster".into(),
                format!("nats://127.0.0.1:{route}").into(),
                "-routes".into(),
                routes.join(",").into(),
                "-P".into(),
                pid_file.clone().into_os_string(),
            ];
            let (keeper, stdin) = spawn_kept(None, "nats-server", &args, "TERM")?;
            cluster.nodes.push(NatsNode {
                name,
                port: *client,
                pid_file,
                keeper,
                stdin: Some(stdin),
            });
        }
        // Ready when a three-replica stream can be made: the backend's connect creates its
        // groups stream with the URL's replica count.
        let url = cluster.url();
        let last = Mutex::new(String::new());
        let ready =
            stream_runtime::conformance::eventually(std::time::Duration::from_secs(30), || async {
                match stream_runtime::backend::nats::NatsBackend::connect(&url).await {
                    Ok(backend) => {
                        let _ = stream_runtime::backend::Backend::close(&backend).await;
                        true
                    }
                    Err(e) => {
                        *last.lock().unwrap_or_else(PoisonError::into_inner) = e.to_string();
                        false
                    }
                }
            })
            .await;
        if !ready {
            let last = last.into_inner().unwrap_or_else(PoisonError::into_inner);
            return Err(format!(
                "the NATS cluster was not ready within 30 s: {last}"
            ));
        }
        Ok(cluster)
    }

    /// Its URL: every node listed, streams with three replicas.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("nats://{}?replicas=3", nodes.join(","))
    }

    /// The URL of one node alone (no replica option).
    pub fn node_url(&self, name: &str) -> Option<String> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
    }

    /// The nodes' server names (`n1`, `n2`, `n3`).
    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// Kills the node named `name` with SIGKILL (a crash), by the pid it wrote.
    pub fn kill(&self, name: &str) -> Result<(), String> {
        let node = self
            .nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| format!("no node {name}"))?;
        let pid = std::fs::read_to_string(&node.pid_file)
            .map_err(|e| format!("reading {}: {e}", node.pid_file.display()))?;
        let pid = pid.trim();
        let status = std::process::Command::new("kill")
            .args(["-9", pid])
            .status()
            .map_err(|e| format!("kill: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill -9 {pid} failed: {status}"))
        }
    }
}

impl Drop for ThrowawayNatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stdin.take(); // the keeper stops its server
        }
        for node in &mut self.nodes {
            let _ = node.keeper.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The leader of JetStream stream `name` (its server name), asked over `client`; `None`
/// while there is none (an election) or the request fails.
pub async fn nats_stream_leader(client: &async_nats::Client, name: &str) -> Option<String> {
    let reply = client
        .request(format!("$JS.API.STREAM.INFO.{name}"), "".into())
        .await
        .ok()?;
    let info: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
    info.get("cluster")?
        .get("leader")?
        .as_str()
        .map(str::to_owned)
}

/// Waits up to `timeout` until `handled` holds for every payload of `expected`; panics
/// naming some of those never handled.
pub async fn wait_all_handled(
    expected: &[String],
    timeout: std::time::Duration,
    handled: impl Fn(&str) -> bool,
) {
    let missing = || -> Vec<&String> { expected.iter().filter(|p| !handled(p)).collect() };
    let all = stream_runtime::conformance::eventually(timeout, || {
        std::future::ready(missing().is_empty())
    })
    .await;
    if !all {
        let missing = missing();
        panic!(
            "{} acknowledged messages never handled, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
}
