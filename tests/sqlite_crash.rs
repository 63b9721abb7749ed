//! S17 on SQLite: a process killed with SIGKILL while handling loses nothing. Every message
//! whose publish returned is in the file, the group's cursor and pending claims survive, and
//! the in-flight message comes back after its visibility timeout with its delivery count.
//!
//! The test binary re-invokes itself as the child (`crash_child`, which does nothing unless
//! [`CHILD_ENV`] is set).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sqlx::Row;
use stream_runtime::conformance::{wait_for, Recorder};
use stream_runtime::{
    HandlerError, Message, PublishOptions, Service, ServiceConfig, StartPosition, SubscribeOptions,
};

/// Set (to the scratch directory) only in the child process.
const CHILD_ENV: &str = "STREAMS_TEST_SQLITE_CRASH_DIR";
const STREAM: &str = "Orders.v1";
const GROUP: &str = "billing";
/// The payload whose handler hangs until the child is killed.
const STUCK: &str = "m5";
const BACKLOG: usize = 10;
const VISIBILITY: Duration = Duration::from_secs(2);

fn url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("streams.db").display())
}

fn config() -> ServiceConfig {
    ServiceConfig::default().app("crash")
}

fn options() -> SubscribeOptions {
    SubscribeOptions::new()
        .start(StartPosition::Earliest)
        .visibility_timeout(VISIBILITY)
        .poll_interval(Duration::from_millis(20))
}

/// Appends one line with one write, so a kill never leaves half a line behind.
fn append_line(path: &Path, line: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("opening a log file");
    file.write_all(format!("{line}\n").as_bytes())
        .expect("writing a log line");
}

/// Complete lines of a log, split at the first space: `id -> rest`.
fn read_log(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| {
            let (id, rest) = l.trim_end().split_once(' ')?;
            Some((id.to_owned(), rest.to_owned()))
        })
        .collect()
}

/// The child: publishes a backlog, consumes it with one worker whose handler hangs on
/// [`STUCK`], and keeps publishing until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let service = Service::connect(&url(&dir), config())
        .await
        .expect("child: connect");
    let published = dir.join("published");
    let publish = |i: usize| {
        let service = service.clone();
        let published = published.clone();
        async move {
            let payload = format!("m{i}");
            let id = service
                .publish(STREAM, payload.clone(), PublishOptions::new())
                .await
                .expect("child: publish");
            // Logged only after publish returned: S17 promises these survive.
            append_line(&published, &format!("{id} {payload}"));
        }
    };
    for i in 0..BACKLOG {
        publish(i).await;
    }
    let handled = dir.join("handled");
    let stuck = dir.join("stuck");
    service
        .subscribe(
            STREAM,
            GROUP,
            move |m: Message| {
                let handled = handled.clone();
                let stuck = stuck.clone();
                async move {
                    let payload = String::from_utf8_lossy(&m.payload).into_owned();
                    append_line(&handled, &format!("{} {payload} {}", m.id, m.attempt));
                    if payload == STUCK {
                        append_line(&stuck, &format!("{} {payload}", m.id));
                        std::future::pending::<()>().await;
                    }
                    Ok::<(), HandlerError>(())
                }
            },
            options(),
        )
        .await
        .expect("child: subscribe");
    for i in BACKLOG.. {
        publish(i).await;
        // Paced, so publishes are still streaming in when the parent kills this process.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_process_loses_nothing() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = stream_tests::temp_dir("sqlite-crash");
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("starting the child process");

    // Kill it while the stuck handler runs and publishes are still streaming in.
    wait_for("the child to reach the stuck handler", || {
        if let Some(status) = child.try_wait().expect("polling the child") {
            panic!("the child exited early with {status}");
        }
        !read_log(&dir.join("stuck")).is_empty() && read_log(&dir.join("published")).len() >= 40
    })
    .await;
    child.kill().expect("SIGKILL"); // std sends SIGKILL on Unix
    child.wait().expect("reaping the child");

    let published: BTreeMap<i64, String> = read_log(&dir.join("published"))
        .into_iter()
        .map(|(id, payload)| (id.parse().expect("a published id"), payload))
        .collect();
    let stuck_id: i64 = read_log(&dir.join("stuck"))[0]
        .0
        .parse()
        .expect("the stuck id");
    let handled_by_child: BTreeSet<String> = read_log(&dir.join("handled"))
        .into_iter()
        .map(|(_, rest)| rest.split(' ').next().unwrap_or_default().to_owned())
        .collect();

    // The file as the killed process left it.
    let full = config_service_stream_name();
    let pool = sqlx::SqlitePool::connect(&url(&dir))
        .await
        .expect("opening the file after the crash");
    let stored: BTreeSet<i64> = sqlx::query("SELECT id FROM stream_messages WHERE stream = ?1")
        .bind(&full)
        .fetch_all(&pool)
        .await
        .expect("reading messages")
        .iter()
        .map(|r| r.get::<i64, _>("id"))
        .collect();
    let lost: Vec<_> = published.keys().filter(|id| !stored.contains(id)).collect();
    assert!(lost.is_empty(), "published but lost in the crash: {lost:?}");
    let cursor: i64 = sqlx::query_scalar(
        "SELECT cursor FROM stream_groups WHERE stream = ?1 AND group_name = ?2",
    )
    .bind(&full)
    .bind(GROUP)
    .fetch_one(&pool)
    .await
    .expect("the group survived");
    assert_eq!(
        cursor, stuck_id,
        "one worker: the cursor stops at the stuck message"
    );
    let (token, deliveries): (i64, i64) = sqlx::query_as(
        "SELECT token, deliveries FROM stream_pending
         WHERE stream = ?1 AND group_name = ?2 AND id = ?3",
    )
    .bind(&full)
    .bind(GROUP)
    .bind(stuck_id)
    .fetch_one(&pool)
    .await
    .expect("the in-flight claim survived");
    assert!(
        token != 0 && deliveries == 1,
        "token {token}, deliveries {deliveries}"
    );
    pool.close().await;

    // Restart: everything not yet handled is handled, the stuck message on attempt 2.
    let service = Service::connect(&url(&dir), config())
        .await
        .expect("reconnecting after the crash");
    let recorder = Recorder::new();
    service
        .subscribe(STREAM, GROUP, recorder.handler(), options())
        .await
        .expect("subscribing after the crash");
    wait_for("every published message handled at least once", || {
        let seen: BTreeSet<String> = recorder.payloads().into_iter().collect();
        published
            .values()
            .all(|p| seen.contains(p) || (handled_by_child.contains(p) && p != STUCK))
    })
    .await;
    let redelivered: Vec<Message> = recorder
        .messages()
        .into_iter()
        .filter(|m| m.payload == STUCK.as_bytes())
        .collect();
    assert_eq!(redelivered.len(), 1, "the stuck message comes back once");
    assert_eq!(redelivered[0].id.as_str(), stuck_id.to_string());
    assert_eq!(
        redelivered[0].attempt, 2,
        "its delivery count survived the crash"
    );
    // The cursor survived: nothing past it was handled twice in the new process.
    for m in recorder.messages() {
        let id: i64 = m.id.as_str().parse().expect("an id");
        assert!(
            id <= stuck_id || m.attempt == 1,
            "message {id} past the cursor delivered {} times",
            m.attempt
        );
    }
    service.close().await.expect("closing");
    let _ = std::fs::remove_dir_all(&dir);
}

fn config_service_stream_name() -> String {
    let config = config();
    stream_runtime::format_stream(&config.app, &config.namespace, STREAM).expect("a valid name")
}
