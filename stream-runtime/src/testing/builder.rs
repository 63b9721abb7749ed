//! [`TestAppBuilder`]: which consumers, which configuration, which state.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::journal::{self, Journal};
use super::recorder::Recorder;
use super::{AppConsumer, TestApp};
use crate::backend::memory::MemoryBackend;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::registry::{self, Built, States};
use crate::service::Service;

/// Builds a [`TestApp`]: which consumers, which configuration, which state.
#[derive(Debug)]
pub struct TestAppBuilder {
    pub(super) config: ConfigSource,
    pub(super) selected: Option<Vec<String>>,
    pub(super) states: States,
    pub(super) middleware: crate::middleware::Chain,
    pub(super) settle_timeout: Duration,
}

#[derive(Debug)]
pub(super) enum ConfigSource {
    Defaults,
    Toml(String),
    File(PathBuf),
    Given(Box<Config>),
}

impl TestAppBuilder {
    /// Runs only these consumers (by name: the function's name unless `name = "..."`).
    /// Calls add up. Without any, every registered consumer runs.
    pub fn consumers<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.selected
            .get_or_insert_with(Vec::new)
            .extend(names.into_iter().map(Into::into));
        self
    }

    /// Reads the configuration from this TOML text (the format of `Streams.toml`).
    pub fn config_toml(mut self, toml: impl Into<String>) -> Self {
        self.config = ConfigSource::Toml(toml.into());
        self
    }

    /// Reads the configuration from this file (it must exist), e.g. the app's `Streams.toml`.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config = ConfigSource::File(path.into());
        self
    }

    /// Uses a configuration built in code.
    pub fn config(mut self, config: Config) -> Self {
        self.config = ConfigSource::Given(Box::new(config));
        self
    }

    /// Adds shared state for handlers taking a [`State<T>`](crate::State) argument.
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.states.insert(value);
        self
    }

    /// Adds middleware around the handler of every consumer, as
    /// [`Runtime::middleware`](crate::Runtime::middleware) does.
    pub fn middleware(mut self, middleware: impl crate::middleware::Middleware) -> Self {
        self.middleware.push(Arc::new(middleware));
        self
    }

    /// How long [`TestApp::settle`] waits in wall-clock time (default
    /// [`DEFAULT_SETTLE_TIMEOUT`](super::DEFAULT_SETTLE_TIMEOUT)).
    pub fn settle_timeout(mut self, timeout: Duration) -> Self {
        self.settle_timeout = timeout;
        self
    }

    /// Starts the consumers on a fresh in-memory backend. An error names what is wrong: a
    /// bad configuration, a consumer name that is not registered (the registered ones are
    /// listed), a selected consumer the configuration disables, a missing state.
    pub async fn start(self) -> Result<TestApp> {
        let config = match self.config {
            ConfigSource::Defaults => Config::default(),
            ConfigSource::Toml(toml) => Config::from_toml_str(&toml)?,
            ConfigSource::File(path) => Config::loader()
                .file(path)
                .env(Vec::<(String, String)>::new())
                .load()?,
            ConfigSource::Given(config) => *config,
        };
        let defs = registry::consumers()?;
        config.check_consumer_names(defs.iter().map(|d| d.name))?;
        if let Some(selected) = &self.selected {
            let unknown: Vec<&str> = selected
                .iter()
                .map(String::as_str)
                .filter(|name| !defs.iter().any(|d| d.name == *name))
                .collect();
            if !unknown.is_empty() {
                let registered: Vec<&str> = defs.iter().map(|d| d.name).collect();
                return Err(Error::Registry(format!(
                    "no consumer named {} is registered in this test binary (registered: {}); \
                     a consumer in a library crate is linked once the test uses that crate \
                     (`use my_crate as _;`), one in a binary is not visible to tests",
                    unknown.join(", "),
                    if registered.is_empty() {
                        "none".to_owned()
                    } else {
                        registered.join(", ")
                    }
                )));
            }
        }

        let memory = Arc::new(MemoryBackend::new());
        let journal = Journal::new();
        let backend = Recorder {
            memory: memory.clone(),
            journal: journal.clone(),
        };
        let service = Service::new(backend, config.service_config());
        for middleware in self.middleware.iter() {
            service.add_shared_middleware(middleware.clone());
        }
        let mut consumers = Vec::new();
        for def in defs {
            let chosen = self
                .selected
                .as_ref()
                .is_none_or(|names| names.iter().any(|n| n == def.name));
            if !chosen {
                continue;
            }
            let resolved = config.resolve(def.name, &def.attributes);
            if !resolved.enabled {
                if self.selected.is_some() {
                    return Err(Error::Config(format!(
                        "consumer {} is selected but the configuration disables it \
                         (enabled = false); remove it from the selection or enable it",
                        def.name
                    )));
                }
                continue;
            }
            let publisher = crate::publisher::Publisher::new(
                service.clone(),
                resolved.options.app.as_deref(),
                resolved.options.namespace.as_deref(),
            );
            let handler = match def.handler(&self.states, publisher)? {
                Built::Message(handler) => Built::Message(journal::record(
                    journal.clone(),
                    def.name,
                    def.group,
                    handler,
                )),
                Built::Batch(handler) => Built::Batch(journal::record_batch(
                    journal.clone(),
                    def.name,
                    def.group,
                    handler,
                )),
            };
            let consumer = handler
                .subscribe(&service, def, resolved.options.clone())
                .await
                .map_err(|e| def.start_error(e.to_string(), e))?;
            consumers.push(AppConsumer {
                name: def.name,
                options: resolved.options,
                consumer,
            });
        }
        Ok(TestApp {
            service,
            memory,
            journal,
            consumers,
            settle_timeout: self.settle_timeout,
        })
    }
}
