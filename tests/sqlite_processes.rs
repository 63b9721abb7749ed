//! Several processes claiming from one SQLite file: every message is claimed exactly once
//! (no visibility timeout expires here), and lock contention between the processes never
//! surfaces as an error (busy_timeout and `BEGIN IMMEDIATE` absorb it), not even when
//! all of them create the schema of a new file at once.
//!
//! The test binary re-invokes itself as the claimers (`claimer_child`, which does nothing
//! unless [`CHILD_ENV`] is set).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use stream_runtime::backend::sqlite::SqliteBackend;
use stream_runtime::backend::{Backend, GroupRef};
use stream_runtime::conformance::eventually;
use stream_runtime::{NewMessage, StartPosition, Trim};

/// Set (to the scratch directory) only in a child process; [`NAME_ENV`] names the child.
const CHILD_ENV: &str = "STREAMS_TEST_SQLITE_PROCS_DIR";
const NAME_ENV: &str = "STREAMS_TEST_SQLITE_PROCS_NAME";
const STREAM: &str = "App.default.Shared-Work.v2";
const GROUP: &str = "Workers";
const CHILDREN: usize = 3;
const MESSAGES: usize = 600;

fn url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("streams.db").display())
}

/// A claimer: claims up to 8 at a time and acks them, logging every claimed id, until the
/// parent is done publishing and a claim comes back empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimer_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let name = std::env::var(NAME_ENV).expect("child name");
    let backend = SqliteBackend::connect(&url(&dir))
        .await
        .expect("child: connect");
    let group = GroupRef {
        stream: STREAM,
        group: GROUP,
        consumer: &name,
    };
    let mut log = std::fs::File::create(dir.join(format!("claimed-{name}")))
        .expect("child: creating the log");
    loop {
        // Read the marker before claiming: once it exists, every message is committed.
        let done = dir.join("done").exists();
        let claimed = backend
            .claim(group, 8, Duration::from_secs(600))
            .await
            .expect("child: claim");
        if claimed.is_empty() {
            if done {
                break;
            }
            // The parent is still publishing: poll again shortly, as a consumer would.
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let mut lines = String::new();
        for c in &claimed {
            assert_eq!(c.message.attempt, 1, "nothing expires in this test");
            lines.push_str(&format!("{}\n", c.message.id));
        }
        log.write_all(lines.as_bytes()).expect("child: logging");
        let claims: Vec<_> = claimed.iter().map(|c| c.claim()).collect();
        backend.ack(group, &claims).await.expect("child: ack");
    }
    backend.close().await.expect("child: close");
}

fn kill_all(children: &mut [Child]) {
    for child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_share_one_file() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = stream_tests::temp_dir("sqlite-procs");
    let exe = std::env::current_exe().expect("the test binary");
    let mut children: Vec<Child> = (0..CHILDREN)
        .map(|i| {
            Command::new(&exe)
                .args([
                    "claimer_child",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, &dir)
                .env(NAME_ENV, format!("c{i}"))
                .stdout(Stdio::null())
                .spawn()
                .expect("starting a child process")
        })
        .collect();

    // The children create the schema at the same moment: the migrations race too.
    let backend = match SqliteBackend::connect(&url(&dir)).await {
        Ok(backend) => backend,
        Err(e) => {
            kill_all(&mut children);
            panic!("connect: {e}");
        }
    };
    if let Err(e) = backend
        .ensure_group(STREAM, GROUP, &StartPosition::Earliest)
        .await
    {
        kill_all(&mut children);
        panic!("ensure_group: {e}");
    }

    // Publish in batches of 1 to 9 while the children claim: writers from four processes.
    let mut published = BTreeSet::new();
    let mut n = 0;
    while n < MESSAGES {
        let size = (n % 9 + 1).min(MESSAGES - n);
        let batch = (n..n + size)
            .map(|i| NewMessage::new(format!("m{i}")))
            .collect();
        let ids = match backend.append(STREAM, batch, Trim::NONE).await {
            Ok(ids) => ids,
            Err(e) => {
                kill_all(&mut children);
                panic!("append under contention failed: {e}");
            }
        };
        published.extend(ids.into_iter().map(|id| id.to_string()));
        n += size;
    }
    std::fs::write(dir.join("done"), b"").expect("writing the done marker");

    for i in 0..children.len() {
        let mut status = None;
        let exited = eventually(Duration::from_secs(60), || {
            status = children[i].try_wait().expect("polling a child");
            std::future::ready(status.is_some())
        })
        .await;
        if !exited {
            kill_all(&mut children);
            panic!("claimer c{i} did not finish");
        }
        if let Some(status) = status.filter(|s| !s.success()) {
            kill_all(&mut children);
            panic!("claimer c{i} failed with {status}; see its output above");
        }
    }

    let mut claimed = Vec::new();
    let mut per_child = Vec::new();
    for i in 0..CHILDREN {
        let log = std::fs::read_to_string(dir.join(format!("claimed-c{i}"))).expect("a log");
        let ids: Vec<String> = log.lines().map(str::to_owned).collect();
        per_child.push(ids.len());
        claimed.extend(ids);
    }
    let unique: BTreeSet<String> = claimed.iter().cloned().collect();
    assert_eq!(unique.len(), claimed.len(), "a message was claimed twice");
    assert_eq!(unique, published, "claimed ids differ from published ids");
    eprintln!("claims per process: {per_child:?}");
    backend.close().await.expect("close");
    let _ = std::fs::remove_dir_all(&dir);
}
