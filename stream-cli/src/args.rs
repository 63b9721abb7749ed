//! The command line: global options and subcommands (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Inspect and repair durable streams: lag, pending claims, dead letters, redrive.
///
/// Settings come from Streams.toml (or $STREAMS_CONFIG) and STREAMS_* variables, as for the
/// application; the options below override them. Streams are named short (`orders`) or in
/// full (`<app>.<namespace>.orders`).
#[derive(Debug, Parser)]
#[command(name = "streams", version)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Args)]
pub(crate) struct Global {
    /// Backend URL (overrides `backend` of Streams.toml and STREAMS_BACKEND); keep
    /// passwords in STREAMS_BACKEND rather than on the command line.
    #[arg(long, global = true, value_name = "URL")]
    pub(crate) backend: Option<String>,
    /// App prefix of stream names (overrides `app`).
    #[arg(long, global = true)]
    pub(crate) app: Option<String>,
    /// Namespace of stream names (overrides `namespace`).
    #[arg(long, global = true)]
    pub(crate) namespace: Option<String>,
    /// The config file to read instead of $STREAMS_CONFIG or ./Streams.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Print JSON (one array) instead of a table.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
pub(crate) enum Dlq {
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
pub(crate) struct DlqTarget {
    /// The stream whose dead letters these are (not the dead-letter stream itself).
    pub(crate) stream: String,
    /// Only the dead letters of this group.
    #[arg(long)]
    pub(crate) group: Option<String>,
    /// The dead-letter stream, for consumers with a `dead_letter` setting (default:
    /// `<stream>.dead`).
    #[arg(long, value_name = "STREAM")]
    pub(crate) dead_letter: Option<String>,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct Choice {
    /// A dead letter's id in the dead-letter stream (repeatable).
    #[arg(long = "id", value_name = "ID")]
    pub(crate) ids: Vec<String>,
    /// Every dead letter (of --group, if given).
    #[arg(long)]
    pub(crate) all: bool,
}

pub(crate) fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}
