//! `streams`: look into running streams and repair them, on any backend.
//!
//! It reads the same configuration as the runtime (`Streams.toml`, `STREAMS_*`), so run it
//! where the application runs; `--backend`, `--app` and `--namespace` override it. See
//! `docs/cli.md` for every subcommand.
//!
//! Exit codes: 0 done, 1 error (the message says what to do), 2 usage.

mod args;
mod dlq;
mod output;

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::{json, Value};
use stream_runtime::admin::{Admin, ReadFrom, Selection};
use stream_runtime::backend::redact_url;
use stream_runtime::config::Config;
use stream_runtime::{dead_letter_headers as dlh, MessageId, PublishOptions, Service};

use args::{Choice, Cli, Command, Dlq, DlqTarget, Global};
use dlq::{dlq_list, dlq_purge, dlq_redrive};
use output::{cut, epoch_ms, human, message_json, message_row, ms, relative, MESSAGE_HEADER};

/// What failed, said so that the fix is plain.
#[derive(Debug)]
struct Failure(String);

impl From<stream_runtime::Error> for Failure {
    fn from(e: stream_runtime::Error) -> Self {
        Failure(e.to_string())
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure(format!("writing the output failed: {e}"))
    }
}

type Outcome = Result<(), Failure>;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("streams: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("streams: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The config of the runtime, with the command line's overrides.
fn load_config(global: &Global) -> Result<Config, Failure> {
    let loader = match &global.config {
        Some(path) => Config::loader().file(path),
        None => Config::loader(),
    };
    let mut config = loader.load()?;
    if let Some(backend) = &global.backend {
        config.backend = backend.clone();
    }
    if let Some(app) = global.app.as_ref().filter(|a| !a.is_empty()) {
        config.app = app.clone();
    }
    if let Some(namespace) = global.namespace.as_ref().filter(|n| !n.is_empty()) {
        config.namespace = namespace.clone();
    }
    Ok(config)
}

/// A SQLite file that does not exist would be created empty: almost always the wrong
/// directory or URL, so say so instead.
fn check_sqlite_file(url: &str, config: &Config) -> Outcome {
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return Ok(());
    };
    let path = rest.strip_prefix("//").unwrap_or(rest);
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path.contains(":memory:") || std::path::Path::new(path).exists() {
        return Ok(());
    }
    Err(Failure(format!(
        "there is no SQLite database at {path} (backend {}, config: {}); run `streams` in the \
         application's directory or pass --backend / set STREAMS_BACKEND",
        redact_url(url),
        config.origin()
    )))
}

async fn connect(global: &Global) -> Result<Service, Failure> {
    let config = load_config(global)?;
    check_sqlite_file(&config.backend, &config)?;
    Service::connect(&config.backend, config.service_config())
        .await
        .map_err(|e| {
            Failure(format!(
                "could not connect to the backend {} (config: {}): {e}; check --backend or \
                 STREAMS_BACKEND and that the server is up",
                redact_url(&config.backend),
                config.origin()
            ))
        })
}

async fn run(cli: Cli) -> Outcome {
    let service = connect(&cli.global).await?;
    let result = command(&service, &cli.global, cli.command).await;
    let closed = service.close().await;
    result?;
    closed?;
    Ok(())
}

async fn command(service: &Service, global: &Global, command: Command) -> Outcome {
    let admin = service.admin();
    let json = global.json;
    match command {
        Command::List => list(&admin, json).await,
        Command::Groups { stream } => groups(&admin, &stream, json).await,
        Command::Tail {
            stream,
            lines,
            follow,
        } => tail(service, &stream, lines, follow, json).await,
        Command::Pending { stream, group, max } => {
            pending(&admin, &stream, &group, max, json).await
        }
        Command::Dlq(Dlq::List { target }) => dlq_list(&admin, &target, json).await,
        Command::Dlq(Dlq::Redrive {
            target,
            choice,
            yes,
        }) => dlq_redrive(&admin, &target, &choice, yes, json).await,
        Command::Dlq(Dlq::Purge {
            target,
            choice,
            yes,
        }) => dlq_purge(&admin, &target, &choice, yes, json).await,
        Command::Publish {
            stream,
            payload,
            headers,
        } => publish(service, &stream, &payload, headers, json).await,
    }
}

async fn list(admin: &Admin, json: bool) -> Outcome {
    let streams = admin.streams().await?;
    if json {
        let rows: Vec<Value> = streams
            .iter()
            .map(|s| {
                json!({
                    "stream": s.stream,
                    "length": s.length,
                    "first_id": s.first_id.as_ref().map(MessageId::as_str),
                    "last_id": s.last_id.as_ref().map(MessageId::as_str),
                    "last_append_ms": s.last_append.map(epoch_ms),
                })
            })
            .collect();
        return Ok(output::json(&Value::Array(rows))?);
    }
    let dash = || "-".to_owned();
    let rows: Vec<Vec<String>> = streams
        .iter()
        .map(|s| {
            vec![
                s.stream.clone(),
                s.length.to_string(),
                s.first_id.as_ref().map_or_else(dash, ToString::to_string),
                s.last_id.as_ref().map_or_else(dash, ToString::to_string),
                s.last_append.map_or_else(dash, relative),
            ]
        })
        .collect();
    Ok(output::table(
        &["STREAM", "LENGTH", "FIRST ID", "LAST ID", "LAST APPEND"],
        &rows,
    )?)
}

async fn groups(admin: &Admin, stream: &str, json: bool) -> Outcome {
    let groups = admin.groups(stream).await?;
    if json {
        let rows: Vec<Value> = groups
            .iter()
            .map(|g| {
                json!({
                    "group": g.group,
                    "cursor": g.cursor.as_str(),
                    "lag": g.lag,
                    "pending": g.pending,
                    "oldest_pending_ms": g.oldest_pending_age.map(ms),
                    "dead": g.dead,
                })
            })
            .collect();
        return Ok(output::json(&Value::Array(rows))?);
    }
    if groups.is_empty() {
        eprintln!("{} has no consumer groups", admin.stream_name(stream)?);
    }
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            vec![
                g.group.clone(),
                g.cursor.to_string(),
                g.lag.to_string(),
                g.pending.to_string(),
                g.oldest_pending_age.map_or_else(|| "-".to_owned(), human),
                g.dead.to_string(),
            ]
        })
        .collect();
    Ok(output::table(
        &[
            "GROUP",
            "CURSOR",
            "LAG",
            "PENDING",
            "OLDEST PENDING",
            "DEAD",
        ],
        &rows,
    )?)
}

/// How often `tail --follow` looks for new messages when no push wake-up comes (SQLite
/// across processes has none).
const FOLLOW_POLL: Duration = Duration::from_millis(500);

async fn tail(service: &Service, stream: &str, lines: usize, follow: bool, json: bool) -> Outcome {
    let admin = service.admin();
    let full = admin.stream_name(stream)?;
    let mut wakeup = service.backend().wakeup(&full);
    wakeup.mark_seen();
    let first = admin.read(&full, &ReadFrom::Last, lines).await?;
    let mut last = match first.last() {
        Some(m) => Some(m.id.clone()),
        None if follow => admin
            .read(&full, &ReadFrom::Last, 1)
            .await?
            .pop()
            .map(|m| m.id),
        None => None,
    };
    print_messages(&first, json, follow)?;
    if !follow {
        return Ok(());
    }
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        wakeup.mark_seen();
        let from = last.clone().map_or(ReadFrom::Start, ReadFrom::After);
        let batch = admin.read(&full, &from, 500).await?;
        if let Some(m) = batch.last() {
            last = Some(m.id.clone());
            print_messages(&batch, json, true)?;
            continue;
        }
        tokio::select! {
            _ = wakeup.changed() => {}
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = &mut interrupted => return Ok(()),
        }
    }
}

fn print_messages(messages: &[stream_runtime::Message], json: bool, lines: bool) -> Outcome {
    if json && lines {
        let mut out = std::io::stdout().lock();
        for m in messages {
            writeln!(out, "{}", message_json(m))?;
        }
        return Ok(out.flush()?);
    }
    if json {
        return Ok(output::json(&Value::Array(
            messages.iter().map(message_json).collect(),
        ))?);
    }
    if messages.is_empty() {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = messages.iter().map(message_row).collect();
    Ok(output::table(MESSAGE_HEADER, &rows)?)
}

async fn pending(admin: &Admin, stream: &str, group: &str, max: usize, json: bool) -> Outcome {
    let entries = admin.pending(stream, group, max).await?;
    if json {
        let rows: Vec<Value> = entries
            .iter()
            .map(|p| {
                json!({
                    "id": p.id.as_str(),
                    "attempt": p.attempt,
                    "deadline_ms": p.deadline.map(epoch_ms),
                    "retry_at_ms": p.retry_at.map(epoch_ms),
                    "consumer": p.consumer,
                })
            })
            .collect();
        return Ok(output::json(&Value::Array(rows))?);
    }
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|p| {
            let (state, due) = match (p.deadline, p.retry_at) {
                (Some(deadline), _) => ("claimed", relative(deadline)),
                (None, Some(retry)) => ("retry", relative(retry)),
                (None, None) => ("-", "-".to_owned()),
            };
            vec![
                p.id.to_string(),
                p.attempt.to_string(),
                state.to_owned(),
                due,
                p.consumer.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    Ok(output::table(
        &["ID", "ATTEMPT", "STATE", "DUE", "CONSUMER"],
        &rows,
    )?)
}

async fn publish(
    service: &Service,
    stream: &str,
    payload: &str,
    headers: Vec<(String, String)>,
    json: bool,
) -> Outcome {
    let admin = service.admin();
    let full = admin.stream_name(stream)?;
    let prefix = admin.prefix();
    let short = full.strip_prefix(&prefix).unwrap_or(&full);
    let payload = if payload == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes).map_err(|e| {
            Failure(format!(
                "reading the payload from standard input failed: {e}"
            ))
        })?;
        bytes
    } else {
        payload.as_bytes().to_vec()
    };
    let mut options = PublishOptions::new();
    for (name, value) in headers {
        options = options.header(name, value);
    }
    let id = service.publish(short, payload, options).await?;
    if json {
        output::json(&json!([{ "stream": full, "id": id.as_str() }]))?;
    } else {
        println!("{id}");
    }
    Ok(())
}
