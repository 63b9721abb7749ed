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

mod duration;
mod load;
mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::Figment;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::options::{MaxRetries, RetryDelay, ServiceConfig, SubscribeOptions};
use crate::registry::Attributes;

use duration::{
    de_connect_timeout, de_duration, de_opt_duration, de_poll_interval, de_visibility_timeout,
};
use load::extract;
pub use load::Loader;
use values::{
    de_batch_size, de_concurrency, de_max_len, de_max_payload_bytes, de_max_retries, de_name,
    de_ordered, de_retry_delay, de_start,
};

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
    "transaction_isolation",
    "metrics_interval",
    "span_level",
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
    /// The isolation level of transactional handlers' and `Service::begin`'s transactions
    /// (Postgres; SQLite's are always serializable).
    pub transaction_isolation: crate::options::Isolation,
    /// How often the runtime samples its groups' lag and pending counts into the
    /// `streams_lag` / `streams_pending` gauges (zero = never).
    #[serde(deserialize_with = "de_duration")]
    pub metrics_interval: Duration,
    /// The level of the `stream.handle` and `stream.publish` spans: `"info"` (default),
    /// `"debug"`, `"trace"` or `"off"`.
    pub span_level: crate::options::SpanLevel,
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
            .field("transaction_isolation", &self.transaction_isolation)
            .field("metrics_interval", &self.metrics_interval)
            .field("span_level", &self.span_level)
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
            transaction_isolation: service.transaction_isolation,
            metrics_interval: DEFAULT_METRICS_INTERVAL,
            span_level: service.span_level,
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
    /// Extend the claims of running handlers (lease heartbeat); default false.
    pub heartbeat: Option<bool>,
    /// `"key"`: the messages sharing a key are handled one at a time, in stream order;
    /// `"none"`: unordered (the default).
    #[serde(default, deserialize_with = "de_ordered")]
    pub ordered: Option<crate::key_order::Order>,
    /// The most messages one batch handler call gets (1 to 10000; batch consumers only).
    #[serde(default, deserialize_with = "de_batch_size")]
    pub batch_size: Option<usize>,
    /// How long a short batch waits to fill (batch consumers only).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub batch_wait: Option<Duration>,
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
            .transaction_isolation(self.transaction_isolation)
            .span_level(self.span_level)
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
            transaction_isolation: None,
            transactional: attributes.transactional,
            heartbeat: pick!(heartbeat).unwrap_or(builtin.heartbeat),
            ordered: pick!(ordered).unwrap_or(builtin.ordered),
            batch_size: pick!(batch_size).unwrap_or(builtin.batch_size),
            batch_wait: pick!(batch_wait).unwrap_or(builtin.batch_wait),
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

pub use stream_rules::{format_duration, parse_duration, DurationError};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_parses() {
        let config = Config::from_toml_str(REFERENCE).expect("reference.toml parses");
        assert_eq!(config.backend, DEFAULT_BACKEND);
    }
}
