//! Runs the `orders` example binary as a child process: it finishes its demo and exits 0 by
//! itself, and with `ORDERS_RUN_FOREVER=1` it drains on SIGTERM and exits 0.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A backend URL for one test: a fresh SQLite file when this build has SQLite, else memory.
fn backend(test: &str) -> String {
    let dir = std::env::temp_dir().join(format!(
        "streams-orders-{test}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let sqlite = format!("sqlite://{}", dir.join("streams.db").display());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(stream_runtime::backend::connect(&sqlite)) {
        Ok(backend) => {
            let _ = runtime.block_on(backend.close());
            sqlite
        }
        Err(e) => {
            eprintln!(
                "!!!! SQLite unavailable in this build ({e}); running the example on memory://"
            );
            "memory://".to_owned()
        }
    }
}

/// Starts the example from the repository root (so it reads the root Streams.toml),
/// with its log lines arriving on a channel.
fn spawn(test: &str, forever: bool) -> (Child, mpsc::Receiver<String>) {
    spawn_with(&[("STREAMS_BACKEND", &backend(test))], forever)
}

fn spawn_with(env: &[(&str, &str)], forever: bool) -> (Child, mpsc::Receiver<String>) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut command = Command::new(env!("CARGO_BIN_EXE_orders"));
    command
        .current_dir(root)
        .env_remove("STREAMS_CONFIG")
        .env_remove("STREAMS_BACKEND")
        // Tests run the example side by side: each endpoint on a port of its own.
        .env("STREAMS_HTTP__ADDR", "127.0.0.1:0")
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        // The output is a pipe: the example must see that and leave out colour by itself.
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if forever {
        command.env("ORDERS_RUN_FOREVER", "1");
    }
    let mut child = command.spawn().expect("start the orders example");
    let (tx, rx) = mpsc::channel();
    for out in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    (child, rx)
}

/// Reads lines until one matches, failing after a deadline.
fn wait_for_line(
    rx: &mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    what: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if what(&line) {
                    return line;
                }
            }
            Err(e) => panic!(
                "no matching line ({e}); output so far:\n{}",
                seen.join("\n")
            ),
        }
    }
}

/// Waits for the child to exit, failing after a deadline.
fn wait_exit(child: &mut Child, seen: &[String]) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait for the example") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the example did not exit; output:\n{}", seen.join("\n"));
        }
        // The poll step of this wait: a child's exit has no channel to wait on.
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn drain(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>) {
    // The readers end when the child's pipes close.
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        seen.push(line);
    }
}

#[test]
fn the_demo_finishes_and_exits_zero_by_itself() {
    let (mut child, rx) = spawn("demo", false);
    let mut seen = Vec::new();
    wait_for_line(&rx, &mut seen, |l| l.contains("demo complete"));
    let status = wait_exit(&mut child, &seen);
    drain(&rx, &mut seen);
    let text = seen.join("\n");
    assert!(status.success(), "exit status {status}; output:\n{text}");
    assert!(
        text.contains("payment gateway timed out (attempt 1)"),
        "{text}"
    );
    assert!(
        text.contains("attempt 2)"),
        "the flaky order was billed on its retry:\n{text}"
    );
    assert!(
        text.contains("dead letter from") && text.contains("group billing"),
        "{text}"
    );
    assert!(text.contains("group shipping"), "{text}");
    assert!(
        text.contains("sent the invoice for order"),
        "billing published invoices from its handler:\n{text}"
    );
    assert!(text.contains("shut down cleanly"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "no ANSI colour codes when the output is not a terminal:\n{text}"
    );
    assert!(
        text.contains("config: Streams.toml") && text.contains("shop.demo.orders"),
        "the root Streams.toml was read:\n{text}"
    );
}

/// Runs the example to its exit and returns its status and output.
fn run_to_exit(env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let (mut child, rx) = spawn_with(env, false);
    let mut seen = Vec::new();
    let status = wait_exit(&mut child, &seen);
    drain(&rx, &mut seen);
    (status, seen.join("\n"))
}

#[test]
fn a_bad_config_file_exits_non_zero_naming_the_key_and_the_file() {
    let dir = std::env::temp_dir().join(format!("streams-orders-badconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("Bad.toml");
    std::fs::write(
        &path,
        "backend = \"memory://\"\n[defaults]\nvisibility_timeout = \"soon\"\n",
    )
    .expect("write config");
    let path = path.to_string_lossy().into_owned();
    let (status, text) = run_to_exit(&[("STREAMS_CONFIG", &path)]);
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("defaults.visibility_timeout") && text.contains(&path),
        "{text}"
    );
}

#[test]
fn an_unreachable_backend_exits_non_zero_with_the_password_redacted() {
    let (status, text) = run_to_exit(&[(
        "STREAMS_BACKEND",
        "postgres://shop:hunter2@127.0.0.1:1/shop",
    )]);
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("postgres://shop:***@127.0.0.1:1/shop"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

#[cfg(unix)]
#[test]
fn sigterm_while_handling_work_drains_and_exits_zero() {
    let (mut child, rx) = spawn("sigterm", true);
    let mut seen = Vec::new();
    // Let the demo get going, then catch a parcel being packed (packing takes 200ms).
    wait_for_line(&rx, &mut seen, |l| l.contains("publishing an order every"));
    let packing = wait_for_line(&rx, &mut seen, |l| l.contains("packing order"));
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let order = packing.rsplit(' ').next().expect("an order id").to_owned();

    let status = wait_exit(&mut child, &seen);
    drain(&rx, &mut seen);
    let text = seen.join("\n");
    assert!(status.success(), "exit status {status}; output:\n{text}");
    let signal = seen
        .iter()
        .position(|l| l.contains("received SIGTERM"))
        .unwrap_or_else(|| panic!("no SIGTERM line:\n{text}"));
    let shipped = seen
        .iter()
        .position(|l| l.contains(&format!("shipped order {order} ")))
        .unwrap_or_else(|| {
            panic!("order {order} being packed at SIGTERM was not finished:\n{text}")
        });
    let clean = seen
        .iter()
        .position(|l| l.contains("shut down cleanly"))
        .unwrap_or_else(|| panic!("no clean shutdown:\n{text}"));
    assert!(
        signal < shipped && shipped < clean,
        "drained after the signal:\n{text}"
    );
}

#[test]
fn a_consumer_that_cannot_start_exits_non_zero_reporting_it_once() {
    let (status, text) = run_to_exit(&[
        ("STREAMS_BACKEND", "memory://"),
        ("STREAMS_DEFAULTS__START", "Earliest"),
    ]);
    assert!(!status.success(), "{text}");
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("could not start"))
        .collect();
    assert_eq!(errors.len(), 1, "the failure is reported once:\n{text}");
    assert!(
        errors[0].contains("ERROR")
            && errors[0].contains("invalid start id \"Earliest\"")
            && errors[0].contains("examples/src/orders.rs:"),
        "{text}"
    );
}

/// `Streams.toml` suggests `enabled = false` for `ship`: the demo then finishes with the
/// consumers left, instead of waiting in vain and failing.
#[test]
fn the_demo_finishes_with_a_consumer_disabled_by_the_config() {
    let (status, text) = run_to_exit(&[
        ("STREAMS_BACKEND", "memory://"),
        ("STREAMS_CONSUMERS__SHIP__ENABLED", "false"),
    ]);
    assert!(status.success(), "exit status {status}; output:\n{text}");
    assert!(
        text.contains(
            "consumer ship disabled: enabled = false in [consumers.ship] \
             (Streams.toml or STREAMS_CONSUMERS__SHIP__ENABLED)"
        ),
        "{text}"
    );
    assert!(!text.contains("shipped order"), "{text}");
    assert!(text.contains("demo complete"), "{text}");
    assert!(text.contains("shut down cleanly"), "{text}");
}

/// A backend that accepts the connection but never answers: SIGTERM while connecting stops
/// the program at once (not after the connect timeout), non-zero, with the password hidden.
#[cfg(unix)]
#[test]
fn sigterm_while_connecting_stops_at_once() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = silent.local_addr().expect("address").port();
    let url = format!("postgres://shop:hunter2@127.0.0.1:{port}/shop");
    let (mut child, rx) = spawn_with(&[("STREAMS_BACKEND", &url)], false);
    let mut seen = Vec::new();
    wait_for_line(&rx, &mut seen, |l| l.contains("connecting to"));
    // The program is connected and waits for the server's first word, which never comes.
    let (accepted, connected) = mpsc::channel();
    std::thread::spawn(move || {
        let connection = silent.accept().map(|(stream, _)| stream);
        let _ = accepted.send((connection, silent));
    });
    let (connection, _silent) = connected
        .recv_timeout(Duration::from_secs(30))
        .expect("the program connects to the silent server");
    let _connection = connection.expect("accepting the connection");
    let signalled = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let status = wait_exit(&mut child, &seen);
    let waited = signalled.elapsed();
    drain(&rx, &mut seen);
    let text = seen.join("\n");
    assert!(
        waited < Duration::from_secs(5),
        "took {waited:?} to stop:\n{text}"
    );
    assert!(!status.success(), "{text}");
    assert!(text.contains("received SIGTERM while starting"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

/// A misspelt variable is warned about once, however often the program loads its config.
#[test]
fn a_misspelt_variable_is_warned_about_once() {
    let (status, text) = run_to_exit(&[
        ("STREAMS_BACKEND", "memory://"),
        ("STREAMS_BAKEND", "postgres://db/x"),
    ]);
    assert!(status.success(), "exit status {status}; output:\n{text}");
    assert_eq!(
        text.matches("ignoring environment variable STREAMS_BAKEND")
            .count(),
        1,
        "{text}"
    );
}
