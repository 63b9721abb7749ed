//! `streams`: look into running streams and repair them, on any backend.
//!
//! It reads the same configuration as the runtime (`Streams.toml`, `STREAMS_*`), so run it
//! where the application runs; `--backend`, `--app` and `--namespace` override it. See
//! `docs/cli.md` for every subcommand.
//!
//! Exit codes: 0 done, 1 error (the message says what to do), 2 usage.

mod output;

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use stream_runtime::admin::{Admin, ReadFrom, Selection};
use stream_runtime::backend::redact_url;
use stream_runtime::config::Config;
use stream_runtime::{dead_letter_headers as dlh, MessageId, PublishOptions, Service};

use output::{cut, epoch_ms, human, message_json, message_row, ms, relative, MESSAGE_HEADER};

/// Inspect and repair durable streams: lag, pending claims, dead letters, redrive.
///
/// Settings come from Streams.toml (or $STREAMS_CONFIG) and STREAMS_* variables, as for the
/// application; the options below override them. Streams are named short (`orders`) or in
/// full (`<app>.<namespace>.orders`).
#[derive(Debug, Parser)]
#[command(name = "streams", version)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// Backend URL (overrides `backend` of Streams.toml and STREAMS_BACKEND); keep
    /// passwords in STREAMS_BACKEND rather than on the command line.
    #[arg(long, global = true, value_name = "URL")]
    backend: Option<String>,
    /// App prefix of stream names (overrides `app`).
    #[arg(long, global = true)]
    app: Option<String>,
    /// Namespace of stream names (overrides `namespace`).
    #[arg(long, global = true)]
    namespace: Option<String>,
    /// The config file to read instead of $STREAMS_CONFIG or ./Streams.toml.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print JSON (one array) instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The streams of the app and namespace: length, first and last id, last append.
    List,
    /// The consumer groups of a stream: cursor, lag, pending, oldest pending, dead letters.
    Groups {
        /// The stream.
        stream: String,
    },
    /// The last messages of a stream, then (with --follow) new ones as they arrive.
    Tail {
        /// The stream.
        stream: String,
        /// How many of the last messages to show first.
        #[arg(short = 'n', long = "lines", default_value_t = 10)]
        lines: usize,
        /// Keep printing new messages until Ctrl-C (with --json: one object per line).
        #[arg(short, long)]
        follow: bool,
    },
    /// The pending messages of a group: handed out and not yet settled.
    Pending {
        /// The stream.
        stream: String,
        /// The consumer group.
        group: String,
        /// At most this many entries.
        #[arg(short = 'n', long = "max", default_value_t = 100)]
        max: usize,
    },
    /// The dead-letter stream of a stream: list, redrive, purge.
    #[command(subcommand)]
    Dlq(Dlq),
    /// Publishes one message.
    Publish {
        /// The stream.
        stream: String,
        /// The payload, or `-` to read it from standard input.
        payload: String,
        /// A header, as `name=value` (repeatable).
        #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
        headers: Vec<(String, String)>,
    },
}

#[derive(Debug, Subcommand)]
enum Dlq {
    /// The dead letters of a stream, oldest first.
    List {
        #[command(flatten)]
        target: DlqTarget,
    },
    /// Moves dead letters back to the stream they came from, as new messages.
    Redrive {
        #[command(flatten)]
        target: DlqTarget,
        #[command(flatten)]
        choice: Choice,
        /// Do not ask before moving more than one message.
        #[arg(short, long)]
        yes: bool,
    },
    /// Deletes dead letters.
    Purge {
        #[command(flatten)]
        target: DlqTarget,
        #[command(flatten)]
        choice: Choice,
        /// Do not ask before deleting more than one message.
        #[arg(short, long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
struct DlqTarget {
    /// The stream whose dead letters these are (not the dead-letter stream itself).
    stream: String,
    /// Only the dead letters of this group.
    #[arg(long)]
    group: Option<String>,
    /// The dead-letter stream, for consumers with a `dead_letter` setting (default:
    /// `<stream>.dead`).
    #[arg(long, value_name = "STREAM")]
    dead_letter: Option<String>,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct Choice {
    /// A dead letter's id in the dead-letter stream (repeatable).
    #[arg(long = "id", value_name = "ID")]
    ids: Vec<String>,
    /// Every dead letter (of --group, if given).
    #[arg(long)]
    all: bool,
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

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

fn selection(target: &DlqTarget, choice: Option<&Choice>) -> Selection {
    let mut selection = match choice {
        Some(choice) if !choice.all => {
            Selection::ids(choice.ids.iter().map(|id| MessageId::new(id.as_str())))
        }
        _ => Selection::all(),
    };
    if let Some(group) = &target.group {
        selection = selection.group(group.as_str());
    }
    if let Some(dead) = &target.dead_letter {
        selection = selection.dead_letter(dead.as_str());
    }
    selection
}

async fn dlq_list(admin: &Admin, target: &DlqTarget, json: bool) -> Outcome {
    let letters = admin
        .dead_letters(&target.stream, &selection(target, None))
        .await?;
    if json {
        let rows: Vec<Value> = letters
            .iter()
            .map(|m| {
                let mut row = message_json(m);
                row["origin"] = json!(m.header(dlh::STREAM));
                row["group"] = json!(m.header(dlh::GROUP));
                row["attempts"] =
                    json!(m.header(dlh::ATTEMPTS).and_then(|a| a.parse::<u64>().ok()));
                row["reason"] = json!(m.header(dlh::REASON));
                row
            })
            .collect();
        return Ok(output::json(&Value::Array(rows))?);
    }
    let header = |m: &stream_runtime::Message, name: &str| {
        m.header(name).unwrap_or("-").escape_debug().to_string()
    };
    let rows: Vec<Vec<String>> = letters
        .iter()
        .map(|m| {
            vec![
                m.id.to_string(),
                relative(m.created_at),
                header(m, dlh::GROUP),
                header(m, dlh::ATTEMPTS),
                cut(&header(m, dlh::REASON), 60),
                cut(&output::payload_text(&m.payload), 60),
            ]
        })
        .collect();
    if rows.is_empty() {
        eprintln!(
            "no dead letters in {}",
            admin.dead_letter_stream(&target.stream, &selection(target, None))?
        );
        return Ok(());
    }
    Ok(output::table(
        &["ID", "AGE", "GROUP", "ATTEMPTS", "REASON", "PAYLOAD"],
        &rows,
    )?)
}

/// Asks before acting on more than one message, unless `--yes`.
fn confirm(what: &str, count: usize, yes: bool) -> Outcome {
    if count <= 1 || yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure(format!(
            "this would {what} {count} dead letters; pass --yes to confirm (standard input is \
             not a terminal, so there is no one to ask)"
        )));
    }
    eprint!("{what} {count} dead letters? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| Failure(format!("reading the answer failed: {e}")))?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Failure(format!(
            "not confirmed; nothing done (pass --yes to {what} without asking)"
        )))
    }
}

fn progress(count: usize) -> indicatif::ProgressBar {
    if count <= 1 {
        return indicatif::ProgressBar::hidden();
    }
    // Drawn on standard error, and only when it is a terminal.
    indicatif::ProgressBar::new(count as u64)
}

/// Chosen ids not found: an error after the rest is done.
fn missing(not_found: &[MessageId], dead_stream: &str) -> Outcome {
    if not_found.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = not_found.iter().map(MessageId::as_str).collect();
    Err(Failure(format!(
        "{dead_stream} holds no message {} (see `streams dlq list`)",
        ids.join(", ")
    )))
}

async fn dlq_redrive(
    admin: &Admin,
    target: &DlqTarget,
    choice: &Choice,
    yes: bool,
    json: bool,
) -> Outcome {
    let selection = selection(target, Some(choice));
    let dead_stream = admin.dead_letter_stream(&target.stream, &selection)?;
    let letters = admin.dead_letters(&target.stream, &selection).await?;
    let mut not_found = chosen_not_found(choice, &letters);
    confirm("redrive", letters.len(), yes)?;
    let bar = progress(letters.len());
    let (mut moved, mut skipped) = (Vec::new(), Vec::new());
    for letter in &letters {
        match admin.redrive_one(letter).await {
            Ok(Some(m)) => moved.push(m),
            Ok(None) => not_found.push(letter.id.clone()),
            Err(stream_runtime::Error::InvalidName { reason, .. }) => {
                skipped.push((letter.id.clone(), reason));
            }
            Err(e) => {
                bar.abandon();
                return Err(e.into());
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if json {
        let rows: Vec<Value> = moved
            .iter()
            .map(|m| {
                json!({
                    "dead_letter_id": m.dead_letter_id.as_str(),
                    "stream": m.stream,
                    "id": m.id.as_str(),
                })
            })
            .collect();
        output::json(&Value::Array(rows))?;
    } else if moved.is_empty() {
        eprintln!("nothing redriven from {dead_stream}");
    } else {
        let rows: Vec<Vec<String>> = moved
            .iter()
            .map(|m| {
                vec![
                    m.dead_letter_id.to_string(),
                    m.stream.clone(),
                    m.id.to_string(),
                ]
            })
            .collect();
        output::table(&["DEAD LETTER", "MOVED TO", "NEW ID"], &rows)?;
    }
    for (id, reason) in &skipped {
        eprintln!("skipped {id}: {reason}");
    }
    missing(&not_found, &dead_stream)
}

fn chosen_not_found(choice: &Choice, letters: &[stream_runtime::Message]) -> Vec<MessageId> {
    choice
        .ids
        .iter()
        .filter(|id| !letters.iter().any(|m| m.id.as_str() == id.as_str()))
        .map(|id| MessageId::new(id.as_str()))
        .collect()
}

/// Dead letters deleted per backend call.
const PURGE_CHUNK: usize = 100;

async fn dlq_purge(
    admin: &Admin,
    target: &DlqTarget,
    choice: &Choice,
    yes: bool,
    json: bool,
) -> Outcome {
    let selection = selection(target, Some(choice));
    let dead_stream = admin.dead_letter_stream(&target.stream, &selection)?;
    let letters = admin.dead_letters(&target.stream, &selection).await?;
    let not_found = chosen_not_found(choice, &letters);
    confirm("purge", letters.len(), yes)?;
    let bar = progress(letters.len());
    let ids: Vec<MessageId> = letters.into_iter().map(|m| m.id).collect();
    let mut deleted = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(PURGE_CHUNK) {
        match admin
            .delete_dead_letters(&target.stream, &selection, chunk)
            .await
        {
            Ok(ids) => deleted.extend(ids),
            Err(e) => {
                bar.abandon();
                return Err(e.into());
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let gone = ids.len() - deleted.len();
    if gone > 0 {
        eprintln!("{gone} dead letter(s) were gone before they could be deleted (redriven or purged by someone else)");
    }
    if json {
        output::json(&json!(deleted
            .iter()
            .map(MessageId::as_str)
            .collect::<Vec<_>>()))?;
    } else {
        println!(
            "deleted {} dead letter(s) from {dead_stream}",
            deleted.len()
        );
    }
    missing(&not_found, &dead_stream)
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
