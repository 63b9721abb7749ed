//! Runs the `streams` binary against SQLite, Postgres and Redis while a consumer in this
//! process handles the stream: publish (argument and stdin), list, groups, tail (and
//! --follow), pending, dlq list/redrive/purge, confirmation, exit codes, password redaction.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use stream_runtime::admin::REDRIVEN_FROM;
use stream_runtime::conformance::{skip_or_fail, unique_name, Recorder, WAIT};
use stream_runtime::{
    HandlerError, Message, Service, ServiceConfig, StartPosition, SubscribeOptions,
};

const NAMESPACE: &str = "cli";

/// The binary, with one backend and app, run outside any Streams.toml and environment.
#[derive(Clone)]
struct Streams {
    backend: String,
    app: String,
}

impl Streams {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_streams"));
        command
            .env_clear()
            .current_dir(std::env::temp_dir())
            .args(["--backend", &self.backend, "--app", &self.app])
            .args(["--namespace", NAMESPACE])
            .args(args);
        command
    }

    /// Runs to the end with `input` on standard input.
    async fn run_with(&self, args: &[&str], input: &[u8]) -> Output {
        let mut command = self.command(args);
        let input = input.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut child = command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start streams");
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(&input).expect("write stdin");
            }
            child.wait_with_output().expect("run streams")
        })
        .await
        .expect("blocking task")
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, b"").await
    }

    /// Runs, expecting exit 0; returns standard output.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "streams {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs with `--json`, expecting exit 0 and a JSON array.
    async fn json(&self, args: &[&str]) -> Vec<Value> {
        let mut args = args.to_vec();
        args.push("--json");
        let text = self.ok(&args).await;
        match serde_json::from_str(&text) {
            Ok(Value::Array(rows)) => rows,
            other => panic!("streams {args:?} printed {text:?}, not a JSON array ({other:?})"),
        }
    }
}

/// Awaits `probe` until it returns true, panicking after [`WAIT`].
async fn until<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !probe().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The whole tour on one backend; `missing_id` is an id the dead-letter stream never held.
async fn scenario(backend: String, missing_id: &str) {
    let app = unique_name("cli");
    let service = match Service::connect(
        &backend,
        ServiceConfig::default()
            .app(app.clone())
            .namespace(NAMESPACE),
    )
    .await
    {
        Ok(service) => service,
        Err(e) => return skip_or_fail(&backend, &e.to_string()).unwrap_or(()),
    };
    let full = format!("{app}.{NAMESPACE}.orders");
    let dead = format!("{full}.dead");
    // The consumer: "poison" is a bug until redriven (the fix).
    let rec = Recorder::new();
    let handler = {
        let rec = rec.clone();
        move |m: Message| {
            let poisoned = &m.payload[..] == b"poison" && m.header(REDRIVEN_FROM).is_none();
            if !poisoned {
                rec.record(&m);
            }
            async move {
                if poisoned {
                    return Err(HandlerError::permanent("cannot bill poison"));
                }
                Ok(())
            }
        }
    };
    let consumer = service
        .subscribe(
            "orders",
            "billing",
            handler,
            SubscribeOptions::new()
                .start(StartPosition::Earliest)
                .poll_interval(Duration::from_millis(50)),
        )
        .await
        .expect("subscribe");
    let cli = Streams { backend, app };

    // publish: argument with a header, then stdin.
    let first = cli
        .ok(&["publish", "orders", r#"{"id": 1}"#, "--header", "k=v"])
        .await
        .trim()
        .to_owned();
    let out = cli.run_with(&["publish", "orders", "-"], b"poison").await;
    assert!(out.status.success(), "{}", stderr(&out));
    let poison = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    rec.wait_payload(r#"{"id": 1}"#).await;
    assert_eq!(rec.messages()[0].header("k"), Some("v"));

    // dlq list shows the poison message once the consumer gave up on it.
    until("the dead letter", || {
        let cli = cli.clone();
        async move { !cli.json(&["dlq", "list", "orders"]).await.is_empty() }
    })
    .await;
    let letters = cli.json(&["dlq", "list", "orders"]).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["payload"], "poison");
    assert_eq!(letters[0]["group"], "billing");
    assert_eq!(letters[0]["origin"], full.as_str());
    assert_eq!(letters[0]["reason"], "cannot bill poison");
    assert_eq!(letters[0]["stream"], dead.as_str());
    let table = cli.ok(&["dlq", "list", "orders"]).await;
    assert!(table.contains("cannot bill poison"), "{table}");

    // groups: lag 0, nothing pending, one dead letter.
    let groups = cli.json(&["groups", "orders"]).await;
    assert_eq!(groups.len(), 1);
    let g = &groups[0];
    assert_eq!(
        (&g["group"], &g["lag"], &g["pending"]),
        (&"billing".into(), &0.into(), &0.into())
    );
    assert_eq!(g["dead"], 1);
    assert_eq!(g["cursor"], poison.as_str());
    assert!(g["oldest_pending_ms"].is_null());
    assert!(cli.ok(&["groups", "orders"]).await.contains("billing"));

    // list: both streams, full names, exact figures.
    let streams = cli.json(&["list"]).await;
    let find = |name: &str| {
        streams
            .iter()
            .find(|s| s["stream"] == name)
            .unwrap_or_else(|| panic!("{name} not listed in {streams:?}"))
            .clone()
    };
    let orders = find(&full);
    assert_eq!(orders["length"], 2);
    assert_eq!(orders["first_id"], first.as_str());
    assert_eq!(orders["last_id"], poison.as_str());
    assert_eq!(find(&dead)["length"], 1);

    // tail: the last messages, payloads as JSON when they are JSON; full names work.
    let last = cli.json(&["tail", "orders", "-n", "1"]).await;
    assert_eq!(last.len(), 1);
    assert_eq!(
        (&last[0]["id"], &last[0]["payload"]),
        (&poison.as_str().into(), &"poison".into())
    );
    let both = cli.json(&["tail", &full, "-n", "5"]).await;
    assert_eq!(both.len(), 2);
    assert_eq!(both[0]["payload"]["id"], 1);
    assert_eq!(both[0]["headers"]["k"], "v");
    let table = cli.ok(&["tail", "orders"]).await;
    assert!(
        table.contains(r#"{"id":1}"#) && table.contains("poison"),
        "{table}"
    );

    // pending: nothing in flight.
    assert!(cli.json(&["pending", "orders", "billing"]).await.is_empty());

    // redrive: back to the stream, handled by the fixed consumer.
    let moved = cli
        .json(&["dlq", "redrive", "orders", "--all", "--yes"])
        .await;
    assert_eq!(moved.len(), 1);
    assert_eq!(moved[0]["stream"], full.as_str());
    assert_eq!(moved[0]["dead_letter_id"], letters[0]["id"]);
    rec.wait_len(2, "the redriven message").await;
    assert_eq!(
        rec.messages()[1].header(REDRIVEN_FROM),
        Some(format!("{dead}/{}", letters[0]["id"].as_str().unwrap_or_default()).as_str())
    );
    until("lag 0 and no dead letters", || {
        let cli = cli.clone();
        async move {
            let g = cli.json(&["groups", "orders"]).await;
            g[0]["lag"] == 0 && g[0]["pending"] == 0 && g[0]["dead"] == 0
        }
    })
    .await;

    // purge: more than one asks for confirmation (refused without a terminal), then --yes.
    cli.ok(&["publish", "orders", "poison"]).await;
    cli.ok(&["publish", "orders", "poison"]).await;
    until("two dead letters", || {
        let cli = cli.clone();
        async move { cli.json(&["dlq", "list", "orders"]).await.len() == 2 }
    })
    .await;
    let refused = cli.run(&["dlq", "purge", "orders", "--all"]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("--yes"), "{}", stderr(&refused));
    assert_eq!(cli.json(&["dlq", "list", "orders"]).await.len(), 2);
    let purged = cli
        .json(&["dlq", "purge", "orders", "--all", "--yes"])
        .await;
    assert_eq!(purged.len(), 2);
    assert!(cli.json(&["dlq", "list", "orders"]).await.is_empty());

    // An id that is not there: an error naming it, exit 1.
    let out = cli
        .run(&["dlq", "redrive", "orders", "--id", missing_id])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(missing_id), "{}", stderr(&out));

    // Usage errors: exit 2.
    for args in [
        &["dlq", "redrive", "orders"][..],
        &["dlq", "purge", "orders", "--id", "1", "--all"],
        &["publish", "orders", "x", "--header", "no-equals-sign"],
        &["no-such-command"],
    ] {
        let out = cli.run(args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }

    follow(&cli, &service).await;
    consumer.close().await;
    service.close().await.expect("close");
}

/// `tail --follow` prints messages published after it started.
async fn follow(cli: &Streams, service: &Service) {
    let mut child = cli
        .command(&["tail", "orders", "-n", "0", "--follow", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start streams tail --follow");
    let (tx, lines) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    // Published until one shows up: those before the follower started are not shown.
    let deadline = Instant::now() + WAIT;
    let mut n = 0;
    let seen = loop {
        assert!(Instant::now() < deadline, "tail --follow printed nothing");
        n += 1;
        service
            .publish(
                "orders",
                format!("follow-{n}"),
                stream_runtime::PublishOptions::new(),
            )
            .await
            .expect("publish");
        match lines.recv_timeout(Duration::from_millis(300)) {
            Ok(line) => break line,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(e) => panic!("tail --follow ended: {e}"),
        }
    };
    let seen: Value = serde_json::from_str(&seen).expect("a JSON object per line");
    assert!(
        seen["payload"]
            .as_str()
            .is_some_and(|p| p.starts_with("follow-")),
        "{seen}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    let dir = std::env::temp_dir().join(format!("streams-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join(format!("{}.db", unique_name("cli")));
    scenario(format!("sqlite://{}", file.display()), "999999").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    let url = std::env::var("STREAMS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let sep = if url.contains('?') { '&' } else { '?' };
    scenario(format!("{url}{sep}schema=stream_tests_v2"), "999999").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis() {
    let url = std::env::var("STREAMS_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    scenario(url, "1-0").await;
}

/// A bad backend is an error (exit 1) that shows the URL without its password; a SQLite
/// file that does not exist is not created.
#[tokio::test]
async fn errors_name_the_fix_and_hide_passwords() {
    let cli = Streams {
        backend: "postgres://app:s3cretpw@127.0.0.1:1/x".to_owned(),
        app: "a".to_owned(),
    };
    let out = cli.run(&["list"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(!err.contains("s3cretpw"), "{err}");
    assert!(
        err.contains("app:***@127.0.0.1:1") && err.contains("--backend"),
        "{err}"
    );

    let missing = std::env::temp_dir()
        .join(unique_name("absent"))
        .join("streams.db");
    let cli = Streams {
        backend: format!("sqlite://{}", missing.display()),
        app: "a".to_owned(),
    };
    let out = cli.run(&["groups", "orders"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no SQLite database"),
        "{}",
        stderr(&out)
    );
    assert!(!missing.exists());
}
