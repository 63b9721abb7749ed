//! `Streams.toml`: the backend, stream naming, trim defaults and consumer settings (D5).
//!
//! # Where the settings come from
//!
//! [`Config::load`] reads, in this order, each layer replacing the keys it sets:
//!
//! 1. built-in defaults (no file at all means the embedded SQLite database
//!    `sqlite://streams.db` in the working directory);
//! 2. the file: `$STREAMS_CONFIG` if set (it must exist), else `Streams.toml` in the working
//!    directory if there is one;
//! 3. environment variables `STREAMS_<KEY>`, nested keys joined by `__`:
//!    `STREAMS_BACKEND`, `STREAMS_APP`, `STREAMS_DEFAULTS__MAX_RETRIES`,
//!    `STREAMS_CONSUMERS__BILL__CONCURRENCY`. Variables whose first part is not a top-level
//!    key (such as `STREAMS_CONFIG` or `STREAMS_TEST_...`) are not configuration and are
//!    ignored; any other such variable (`STREAMS_BAKEND`) is most likely a typo and is
//!    ignored with a warning. Keys are lower-cased, so the environment can only override consumers whose
//!    names are lower case.
//!
//! # Precedence of consumer settings
//!
//! Each setting of a consumer is taken from the first of these that sets it:
//!
//! 1. `[consumers.<name>]` in the file, or its `STREAMS_CONSUMERS__<NAME>__<KEY>` variable
//!    (the variable wins over the file);
//! 2. the `#[consumer(...)]` attribute;
//! 3. `[defaults]` in the file, or its `STREAMS_DEFAULTS__<KEY>` variable;
//! 4. the built-in default.
//!
//! The specific beats the general: `[defaults]` sets what a consumer did not say in code,
//! `[consumers.<name>]` overrides the code for one consumer at deploy time.
//!
//! # Errors
//!
//! Unknown keys, values of the wrong type, bad durations and `[consumers.<name>]` tables that
//! name no registered consumer are errors naming the key and where it came from (the file's
//! path or the environment variable). Connection URLs are only ever shown through
//! [`redact_url`](crate::backend::redact_url): keep passwords in `STREAMS_BACKEND`, not in
//! the file.
//!
//! # Reference
//!
//! Every key, with its default, as [`REFERENCE`] (parsed by a test):
//!
//! ```toml
#![doc = include_str!("reference.toml")]
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::options::{MaxRetries, RetryDelay, ServiceConfig, SubscribeOptions};
use crate::registry::Attributes;

/// The reference `Streams.toml`: every key, commented, with its default.
pub const REFERENCE: &str = include_str!("reference.toml");

/// The file read when `STREAMS_CONFIG` is not set.
pub const DEFAULT_FILE: &str = "Streams.toml";

/// The variable naming another config file.
pub const CONFIG_PATH_VAR: &str = "STREAMS_CONFIG";

/// How often the runtime samples lag and pending counts unless `metrics_interval` says.
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(5);

/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "STREAMS_";

/// The backend used when nothing names one: an embedded SQLite file in the working directory.
pub const DEFAULT_BACKEND: &str = "sqlite://streams.db";

const TOP_LEVEL_KEYS: &[&str] = &[
    "backend",
    "app",
    "namespace",
    "max_len",
    "max_age",
    "max_payload_bytes",
    "connect_timeout",
    "metrics_interval",
    "defaults",
    "consumers",
    "http",
];

/// The loaded configuration. Its `Debug` output shows the backend URL redacted.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct Config {
    /// Backend URL: `sqlite://PATH`, `postgres://...`, `redis://...` or `memory://`.
    pub backend: String,
    /// App prefix of stream names.
    pub app: String,
    /// Namespace of stream names.
    pub namespace: String,
    /// Default `max_len` trim of publishes (0 = none).
    #[serde(deserialize_with = "de_max_len")]
    pub max_len: u64,
    /// Default `max_age` trim of publishes (zero = none).
    #[serde(deserialize_with = "de_duration")]
    pub max_age: Duration,
    /// Largest payload accepted by publish.
    #[serde(deserialize_with = "de_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// How long connecting to a server (Postgres, Redis) may take.
    #[serde(deserialize_with = "de_connect_timeout")]
    pub connect_timeout: Duration,
    /// How often the runtime samples its groups' lag and pending counts into the
    /// `streams_lag` / `streams_pending` gauges (zero = never).
    #[serde(deserialize_with = "de_duration")]
    pub metrics_interval: Duration,
    /// Settings for every consumer.
    pub defaults: ConsumerSettings,
    /// Per-consumer overrides, by consumer name.
    pub consumers: BTreeMap<String, ConsumerSettings>,
    /// The runtime's HTTP endpoint (`/metrics`, `/healthz`, `/readyz`); off when unset.
    pub http: Option<HttpSettings>,
    /// Where the file was read from, if any.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("backend", &crate::backend::redact_url(&self.backend))
            .field("app", &self.app)
            .field("namespace", &self.namespace)
            .field("max_len", &self.max_len)
            .field("max_age", &self.max_age)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("connect_timeout", &self.connect_timeout)
            .field("metrics_interval", &self.metrics_interval)
            .field("defaults", &self.defaults)
            .field("consumers", &self.consumers)
            .field("http", &self.http)
            .field("source", &self.source)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        let service = ServiceConfig::default();
        Config {
            backend: DEFAULT_BACKEND.to_owned(),
            app: service.app,
            namespace: service.namespace,
            max_len: service.max_len,
            max_age: service.max_age,
            max_payload_bytes: service.max_payload_bytes,
            connect_timeout: service.connect_timeout,
            metrics_interval: DEFAULT_METRICS_INTERVAL,
            defaults: ConsumerSettings::default(),
            consumers: BTreeMap::new(),
            http: None,
            source: None,
        }
    }
}

/// The `[http]` table: where the runtime serves `/metrics` (Prometheus text format, with the
/// `http` feature), `/healthz` and `/readyz`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HttpSettings {
    /// The address to listen on, e.g. `"127.0.0.1:9464"` (`STREAMS_HTTP__ADDR`).
    pub addr: std::net::SocketAddr,
}

/// Consumer settings from `[defaults]` or `[consumers.<name>]`; `None` = not set here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ConsumerSettings {
    /// `false` keeps the consumer from starting.
    pub enabled: Option<bool>,
    /// Retries after the first attempt: a number or `"unlimited"`.
    #[serde(default, deserialize_with = "de_max_retries")]
    pub max_retries: Option<MaxRetries>,
    /// Workers (at least 1).
    #[serde(default, deserialize_with = "de_concurrency")]
    pub concurrency: Option<usize>,
    /// How long a claim hides a message (longer than zero).
    #[serde(default, deserialize_with = "de_visibility_timeout")]
    pub visibility_timeout: Option<Duration>,
    /// Fallback poll cadence (longer than zero).
    #[serde(default, deserialize_with = "de_poll_interval")]
    pub poll_interval: Option<Duration>,
    /// Drain budget at shutdown.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub shutdown_timeout: Option<Duration>,
    /// Delay before a failed message comes back.
    #[serde(default, deserialize_with = "de_retry_delay")]
    pub retry_delay: Option<RetryDelay>,
    /// `"latest"`, `"earliest"` or a message id; used when the group is created.
    #[serde(default, deserialize_with = "de_start")]
    pub start: Option<String>,
    /// Dead-letter stream short name.
    #[serde(default, deserialize_with = "de_name")]
    pub dead_letter: Option<String>,
    /// App override (only in `[consumers.<name>]`).
    #[serde(default, deserialize_with = "de_name")]
    pub app: Option<String>,
    /// Namespace override (only in `[consumers.<name>]`).
    #[serde(default, deserialize_with = "de_name")]
    pub namespace: Option<String>,
}

/// One consumer's settings after the precedence chain.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Resolved {
    /// Whether the consumer runs.
    pub enabled: bool,
    /// Its subscription options.
    pub options: SubscribeOptions,
}

impl Config {
    /// Loads `$STREAMS_CONFIG` or `./Streams.toml` (if present), then the process
    /// environment. See the [module docs](self) for the rules.
    pub fn load() -> Result<Config> {
        Loader::new().load()
    }

    /// A loader to choose the file and the environment explicitly.
    pub fn loader() -> Loader {
        Loader::new()
    }

    /// Parses TOML text alone (no file, no environment).
    pub fn from_toml_str(toml: &str) -> Result<Config> {
        extract(Figment::from(Toml::string(toml)), None)
    }

    /// The service settings: app, namespace, trims, payload cap.
    pub fn service_config(&self) -> ServiceConfig {
        ServiceConfig::default()
            .app(self.app.clone())
            .namespace(self.namespace.clone())
            .max_len(self.max_len)
            .max_age(self.max_age)
            .max_payload_bytes(self.max_payload_bytes)
            .connect_timeout(self.connect_timeout)
    }

    /// Where the settings came from, for logs: the file, or "no config file".
    pub fn origin(&self) -> String {
        match &self.source {
            Some(path) => path.display().to_string(),
            None => "no config file (built-in defaults)".to_owned(),
        }
    }

    /// Resolves one consumer's settings: `[consumers.<name>]` > attribute > `[defaults]` >
    /// built-in default.
    pub fn resolve(&self, name: &str, attributes: &Attributes) -> Resolved {
        let file = self.consumers.get(name);
        let defaults = &self.defaults;
        macro_rules! pick {
            ($field:ident) => {
                file.and_then(|f| f.$field.clone())
                    .or(attributes.$field.map(Into::into))
                    .or(defaults.$field.clone())
            };
        }
        let builtin = SubscribeOptions::default();
        let options = SubscribeOptions {
            max_retries: pick!(max_retries).unwrap_or(builtin.max_retries),
            concurrency: pick!(concurrency).unwrap_or(builtin.concurrency),
            visibility_timeout: pick!(visibility_timeout).unwrap_or(builtin.visibility_timeout),
            poll_interval: pick!(poll_interval).unwrap_or(builtin.poll_interval),
            shutdown_timeout: pick!(shutdown_timeout).unwrap_or(builtin.shutdown_timeout),
            start: pick!(start).map_or(builtin.start, |s: String| match s.parse() {
                Ok(start) => start,
                Err(never) => match never {},
            }),
            dead_letter: pick!(dead_letter),
            // `[defaults]` has no app / namespace (the top-level keys are the default).
            app: pick!(app),
            namespace: pick!(namespace),
            retry_delay: pick!(retry_delay).unwrap_or(builtin.retry_delay),
            name: Some(name.to_owned()),
        };
        let enabled = file
            .and_then(|f| f.enabled)
            .or(defaults.enabled)
            .unwrap_or(true);
        Resolved { enabled, options }
    }

    /// Checks that every `[consumers.<name>]` names a registered consumer.
    pub fn check_consumer_names<'a>(
        &self,
        registered: impl IntoIterator<Item = &'a str> + Clone,
    ) -> Result<()> {
        let unknown: Vec<&String> = self
            .consumers
            .keys()
            .filter(|name| !registered.clone().into_iter().any(|r| r == name.as_str()))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let mut known: Vec<&str> = registered.into_iter().collect();
        known.sort_unstable();
        Err(Error::Config(format!(
            "{}: {} no registered consumer; registered consumers: {}",
            self.origin(),
            unknown
                .iter()
                .map(|n| format!("[consumers.{n}] names"))
                .collect::<Vec<_>>()
                .join(", "),
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        )))
    }
}

/// Chooses the config file and the environment; [`Config::load`] uses the defaults.
#[derive(Debug, Default)]
pub struct Loader {
    file: Option<PathBuf>,
    env: Option<Vec<(String, String)>>,
}

impl Loader {
    /// The default file and the process environment.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads this file (it must exist) instead of `$STREAMS_CONFIG` / `./Streams.toml`.
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// Uses these variables instead of the process environment (tests, embedding).
    pub fn env<K: Into<String>, V: Into<String>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.env = Some(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        self
    }

    /// Reads the file and the environment.
    pub fn load(self) -> Result<Config> {
        // The process environment's typos are worth one warning per process, however
        // often the config is loaded.
        static WARNED: std::sync::Once = std::sync::Once::new();
        let mut warn = true;
        let env = match self.env {
            Some(vars) => vars,
            None => {
                warn = !WARNED.is_completed();
                WARNED.call_once(|| ());
                std::env::vars().collect()
            }
        };
        let path = match self.file {
            Some(path) => Some(path),
            None => match env.iter().find(|(k, _)| k == CONFIG_PATH_VAR) {
                Some((_, path)) if !path.is_empty() => Some(PathBuf::from(path)),
                _ => Some(PathBuf::from(DEFAULT_FILE)).filter(|p| p.is_file()),
            },
        };
        let mut figment = Figment::new();
        if let Some(path) = &path {
            if !path.is_file() {
                return Err(Error::Config(format!(
                    "config file {} does not exist (named by {})",
                    path.display(),
                    if path.as_os_str() == DEFAULT_FILE {
                        "default"
                    } else {
                        CONFIG_PATH_VAR
                    }
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let vars = EnvVars::new(env);
        for name in vars.ignored.iter().filter(|_| warn) {
            tracing::warn!(
                "ignoring environment variable {name}: {} is not a Streams.toml key \
                 (top-level keys: {}; nested keys are joined by \"__\")",
                name.strip_prefix(ENV_PREFIX)
                    .unwrap_or(name)
                    .to_ascii_lowercase(),
                TOP_LEVEL_KEYS.join(", ")
            );
        }
        figment = figment.merge(vars);
        extract(figment, path)
    }
}

fn extract(figment: Figment, source: Option<PathBuf>) -> Result<Config> {
    match figment.extract::<Config>() {
        Ok(mut config) => {
            if config.defaults.app.is_some() || config.defaults.namespace.is_some() {
                return Err(Error::Config(format!(
                    "{}: `defaults.app` / `defaults.namespace` are not settings; set the top-level `app` / `namespace` instead",
                    source.as_deref().map_or("config".into(), Path::to_string_lossy)
                )));
            }
            // Stream names are built from these: a bad one is the file's (or variable's)
            // mistake, said here rather than by the first consumer to start.
            // Empty = the built-in default, as for any name override (and as logged).
            if config.app.is_empty() {
                config.app = crate::naming::DEFAULT_APP.to_owned();
            }
            if config.namespace.is_empty() {
                config.namespace = crate::naming::DEFAULT_NAMESPACE.to_owned();
            }
            for (key, value) in [("app", &config.app), ("namespace", &config.namespace)] {
                if let Err(e) = crate::naming::validate(key, value) {
                    return Err(Error::Config(format!(
                        "bad value for `{key}` in {} or {ENV_PREFIX}{}: {e}",
                        source
                            .as_deref()
                            .map_or("config".into(), Path::to_string_lossy),
                        key.to_ascii_uppercase()
                    )));
                }
            }
            config.source = source;
            Ok(config)
        }
        Err(errors) => Err(Error::Config(describe(errors))),
    }
}

/// One line per problem: `` `key` in <where>: <what> ``, with URLs redacted.
fn describe(errors: figment::Error) -> String {
    let mut lines = Vec::new();
    for error in errors {
        let key = error.path.join(".");
        let place = match &error.metadata {
            Some(md) => match &md.source {
                Some(figment::Source::File(path)) => path.display().to_string(),
                _ if md.name == ENV_METADATA_NAME => {
                    let keys: Vec<&str> = error.path.iter().map(String::as_str).collect();
                    format!(
                        "environment variable {}",
                        md.interpolate(&Profile::Default, &keys)
                    )
                }
                _ => md.name.to_string(),
            },
            None => "config".to_owned(),
        };
        let what = match &error.kind {
            figment::error::Kind::UnknownField(field, expected) => {
                let key = if error.path.last() == Some(field) {
                    key.clone()
                } else if key.is_empty() {
                    field.clone()
                } else {
                    format!("{key}.{field}")
                };
                // `[defaults]` shares its type with `[consumers.<name>]` but takes no
                // app / namespace.
                let in_defaults = error.path.first().is_some_and(|p| p == "defaults");
                let valid: Vec<&str> = expected
                    .iter()
                    .copied()
                    .filter(|k| !(in_defaults && matches!(*k, "app" | "namespace")))
                    .collect();
                format!(
                    "unknown key `{key}` in {place}; valid keys here: {}",
                    valid.join(", ")
                )
            }
            // No key: the file itself is not valid TOML (the message gives line and column).
            kind if key.is_empty() => format!("{place} is not valid TOML: {kind}"),
            kind => format!("bad value for `{key}` in {place}: {kind}"),
        };
        lines.push(crate::backend::redact_text(&what));
    }
    lines.join("; ")
}

const ENV_METADATA_NAME: &str = "environment";

/// `STREAMS_*` variables as a figment provider: prefix stripped, lower-cased, `__` nests.
struct EnvVars {
    vars: Vec<(String, String)>,
    /// `STREAMS_*` variables that are not configuration, most likely misspelt
    /// (`STREAMS_CONFIG` and the test suites' `STREAMS_TEST_*` are not listed).
    ignored: Vec<String>,
}

impl EnvVars {
    fn new(all: Vec<(String, String)>) -> Self {
        let (mut vars, mut ignored) = (Vec::new(), Vec::new());
        for (name, value) in all {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let key = rest.to_ascii_lowercase();
            let top = key.split("__").next().unwrap_or_default();
            if TOP_LEVEL_KEYS.contains(&top) {
                vars.push((key, value));
            } else if name != CONFIG_PATH_VAR && !rest.starts_with("TEST_") {
                ignored.push(name);
            }
        }
        ignored.sort();
        EnvVars { vars, ignored }
    }
}

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        Metadata::named(ENV_METADATA_NAME).interpolater(|_: &Profile, keys: &[&str]| {
            format!("{ENV_PREFIX}{}", keys.join("__").to_ascii_uppercase())
        })
    }

    fn data(&self) -> std::result::Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, raw) in &self.vars {
            let parts: Vec<&str> = key.split("__").filter(|p| !p.is_empty()).collect();
            // Strings stay strings for text keys (an app named "123" is still a name).
            let value = if matches!(
                parts.last(),
                Some(&("backend" | "app" | "namespace" | "start" | "dead_letter"))
            ) {
                Value::from(raw.clone())
            } else {
                raw.parse::<Value>()
                    .unwrap_or_else(|_| Value::from(raw.clone()))
            };
            insert(&mut dict, &parts, value);
        }
        let mut map = Map::new();
        map.insert(Profile::Default, dict);
        Ok(map)
    }
}

fn insert(dict: &mut Dict, parts: &[&str], value: Value) {
    match parts {
        [] => {}
        [last] => {
            dict.insert((*last).to_owned(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry((*first).to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if entry.as_dict().is_none() {
                *entry = Value::from(Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

pub use stream_rules::{format_duration, parse_duration, DurationError};

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration string such as \"30s\", \"250ms\" or \"2m\"")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    d.deserialize_str(DurationVisitor)
}

/// A duration that must be longer than zero, as the attribute requires.
fn de_nonzero_duration<'de, D: Deserializer<'de>>(
    key: &'static str,
    d: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    let duration = d.deserialize_str(DurationVisitor)?;
    match stream_rules::duration_problem(key, duration) {
        Some(problem) => Err(de::Error::custom(problem)),
        None => Ok(Some(duration)),
    }
}

fn de_connect_timeout<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    let duration = d.deserialize_str(DurationVisitor)?;
    match stream_rules::duration_problem("connect_timeout", duration) {
        Some(problem) => Err(de::Error::custom(problem)),
        None => Ok(duration),
    }
}

fn de_visibility_timeout<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    de_nonzero_duration("visibility_timeout", d)
}

fn de_poll_interval<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    de_nonzero_duration("poll_interval", d)
}

fn de_opt_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    d.deserialize_str(DurationVisitor).map(Some)
}

/// A whole number of at least `min`, described in words rather than as a Rust type.
struct WholeNumber {
    min: u64,
    expected: &'static str,
}

impl Visitor<'_> for WholeNumber {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expected)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<u64, E> {
        if v < self.min {
            return Err(E::invalid_value(de::Unexpected::Unsigned(v), &self));
        }
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<u64, E> {
        u64::try_from(v)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
            .and_then(|v| self.visit_u64(v))
    }
}

fn whole_usize<'de, D: Deserializer<'de>>(
    d: D,
    number: WholeNumber,
) -> std::result::Result<usize, D::Error> {
    let v = d.deserialize_any(number)?;
    usize::try_from(v).map_err(|_| de::Error::custom(format!("{v} is too large")))
}

fn de_concurrency<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<usize>, D::Error> {
    let expected = stream_rules::CONCURRENCY_EXPECTED;
    whole_usize(d, WholeNumber { min: 1, expected }).map(Some)
}

fn de_max_len<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    d.deserialize_any(WholeNumber {
        min: 0,
        expected: "a whole number of messages, 0 or more (0 = keep all)",
    })
}

fn de_max_payload_bytes<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<usize, D::Error> {
    whole_usize(
        d,
        WholeNumber {
            min: 1,
            expected: "a whole number of bytes, at least 1",
        },
    )
}

fn de_start<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    let text = String::deserialize(d)?;
    match stream_rules::start_problem(&text) {
        Some(problem) => Err(de::Error::custom(problem)),
        None => Ok(Some(text)),
    }
}

/// A dead-letter stream, app or namespace: the naming rules (S1). Empty is allowed: an
/// empty override is ignored, as everywhere.
fn de_name<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    let text = String::deserialize(d)?;
    match stream_rules::name_problem(&text).filter(|_| !text.is_empty()) {
        Some(problem) => Err(de::Error::custom(format!(
            "invalid name {text:?}: {problem}"
        ))),
        None => Ok(Some(text)),
    }
}

fn de_max_retries<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<MaxRetries>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = MaxRetries;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(stream_rules::MAX_RETRIES_EXPECTED)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<MaxRetries, E> {
            u32::try_from(v)
                .map(MaxRetries::Limited)
                .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<MaxRetries, E> {
            u64::try_from(v)
                .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
                .and_then(|v| self.visit_u64(v))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<MaxRetries, E> {
            match v {
                "unlimited" => Ok(MaxRetries::Unlimited),
                _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
            }
        }
    }
    d.deserialize_any(V).map(Some)
}

fn de_retry_delay<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<RetryDelay>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = RetryDelay;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(
                "\"visibility_timeout\", a duration such as \"5s\", or { base = \"100ms\", max = \"30s\" }",
            )
        }
        fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<RetryDelay, E> {
            RetryDelay::parse(v).map_err(E::custom)
        }
        fn visit_map<A: de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<RetryDelay, A::Error> {
            let (mut base, mut max) = (None, None);
            while let Some(key) = map.next_key::<String>()? {
                let slot = match key.as_str() {
                    "base" => &mut base,
                    "max" => &mut max,
                    other => return Err(de::Error::unknown_field(other, &["base", "max"])),
                };
                *slot = Some(map.next_value::<String>()?);
            }
            let base = base.ok_or_else(|| de::Error::missing_field("base"))?;
            let max = max.ok_or_else(|| de::Error::missing_field("max"))?;
            RetryDelay::exponential(&base, &max).map_err(de::Error::custom)
        }
    }
    d.deserialize_any(V).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_parses() {
        let config = Config::from_toml_str(REFERENCE).expect("reference.toml parses");
        assert_eq!(config.backend, DEFAULT_BACKEND);
    }
}
