//! The runtime: load the config, connect, start every enabled consumer, run until a signal
//! or the application's future ends, then drain (D6).
//!
//! ```no_run
//! #[tokio::main]
//! async fn main() -> Result<(), stream_runtime::Error> {
//!     // The runtime logs through `tracing`: install a subscriber first, e.g.
//!     // `tracing_subscriber::fmt::init();` (without one it says so on stderr).
//!     // Runs every `#[consumer]` until SIGINT or SIGTERM.
//!     stream_runtime::run().await
//! }
//! ```
//!
//! With shared state and an application future that publishes:
//!
//! ```no_run
//! use stream_runtime::runtime::Runtime;
//! use stream_runtime::PublishOptions;
//!
//! struct Db;
//!
//! # async fn demo() -> Result<(), stream_runtime::Error> {
//! Runtime::new()
//!     .config_file("Streams.toml")
//!     .state(Db)
//!     .run_until(|service| async move {
//!         service.publish_json("orders", &42, PublishOptions::new()).await?;
//!         Ok::<_, stream_runtime::Error>(())
//!     })
//!     .await
//! # }
//! ```
//!
//! The runtime returns an error (so `main` exits non-zero) when the config is wrong, the
//! backend is unreachable, a consumer cannot start, handlers were still running at the end
//! of their `shutdown_timeout` and had to be aborted, or the application future failed.
//! [`Runtime::run`] and [`Runtime::run_until`] log each failure once (at `ERROR`) before
//! returning it; [`Runtime::start`] and [`Started::shutdown`] only return theirs.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use crate::backend::{redact_in, redact_url};
use crate::config::{format_duration, Config};
use crate::error::{BoxError, Error, Result};
use crate::middleware::{Chain, Middleware};
use crate::naming;
use crate::options::SubscribeOptions;
use crate::publisher::Publisher;
use crate::registry::{self, ConsumerDef, States};
use crate::service::{Consumer, Service};

/// Runs every registered consumer with the config from `Streams.toml` and the environment
/// until SIGINT or SIGTERM, then drains. Shorthand for `Runtime::new().run()`.
pub async fn run() -> Result<()> {
    Runtime::new().run().await
}

/// Builds and runs the runtime.
#[derive(Debug, Default)]
pub struct Runtime {
    config: Option<Config>,
    config_file: Option<PathBuf>,
    states: States,
    middleware: Chain,
    transaction_pool: TransactionPool,
}

/// The pool transactional consumers begin on, when not the service's.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
type TransactionPool = Option<crate::transaction::TransactionPool>;
#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
type TransactionPool = ();

/// A consumer the runtime started.
#[derive(Debug, Clone)]
pub struct StartedConsumer {
    /// The consumer's name.
    pub name: &'static str,
    /// Its settings after the precedence chain.
    pub options: SubscribeOptions,
    /// Its running handle.
    pub consumer: Consumer,
}

/// A started runtime: the service to publish with, and the running consumers.
#[derive(Debug)]
pub struct Started {
    service: Service,
    consumers: Vec<StartedConsumer>,
    http: Option<Http>,
    /// Stops the lag/pending sampler (dropped with `Started`, which stops it too).
    sampler: Option<tokio::sync::watch::Sender<bool>>,
}

/// The `[http]` endpoint and what its `/readyz` looks at.
struct Http {
    server: crate::http::Server,
    readiness: Arc<crate::http::Readiness>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("addr", &self.server.addr)
            .finish()
    }
}

impl Runtime {
    /// Config from `$STREAMS_CONFIG` / `./Streams.toml` and the environment, no state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads this config file (it must exist) instead of `$STREAMS_CONFIG` /
    /// `./Streams.toml`; the environment still applies.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }

    /// Uses a config already loaded (see [`Config::loader`]).
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// Adds shared state for handlers taking a [`State<T>`](crate::State) argument.
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.states.insert(value);
        self
    }

    /// Adds middleware around the handler of every consumer (see
    /// [`middleware`](crate::middleware)); the first added runs outermost.
    pub fn middleware(mut self, middleware: impl Middleware) -> Self {
        self.middleware.push(Arc::new(middleware));
        self
    }

    /// Takes the transactions of every `transactional` consumer from `pool` (a
    /// `sqlx::PgPool` or `sqlx::SqlitePool` of your own on the backend's database) instead
    /// of the service's pool; checked at start (see
    /// [`Service::set_transaction_pool`](crate::Service::set_transaction_pool)).
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub fn transaction_pool(
        mut self,
        pool: impl Into<crate::transaction::TransactionPool>,
    ) -> Self {
        self.transaction_pool = Some(pool.into());
        self
    }

    /// Loads the config, connects and starts every enabled consumer. Stop it with
    /// [`Started::shutdown`].
    pub async fn start(self) -> Result<Started> {
        let config = match (self.config, self.config_file) {
            (Some(config), _) => config,
            (None, Some(path)) => Config::loader().file(path).load()?,
            (None, None) => Config::load()?,
        };
        let defs = registry::consumers()?;
        config.check_consumer_names(defs.iter().map(|d| d.name))?;
        if defs.is_empty() {
            tracing::warn!(
                "no #[consumer] is registered in this program; consumers defined in a library \
                 crate that nothing references are dropped by the linker: add \
                 `use that_crate as _;` to main.rs"
            );
        }

        // Build every handler before connecting: a missing state is a fast, clear error.
        // Each consumer's `Publisher` is bound to its app and namespace, and to the service
        // once connected.
        let connected = Arc::new(OnceLock::new());
        let mut plan = Vec::new();
        for def in &defs {
            let resolved = config.resolve(def.name, &def.attributes);
            if !resolved.enabled {
                let table = match config.consumers.get(def.name).and_then(|c| c.enabled) {
                    Some(false) => format!("consumers.{}", def.name),
                    _ => "defaults".to_owned(),
                };
                let var = format!(
                    "{}{}__ENABLED",
                    crate::config::ENV_PREFIX,
                    table.replace('.', "__").to_ascii_uppercase()
                );
                let origin = match &config.source {
                    Some(path) => format!("{} or {var}", path.display()),
                    None => var,
                };
                tracing::info!(
                    "consumer {} disabled: enabled = false in [{table}] ({origin})",
                    def.name
                );
                continue;
            }
            let publisher = Publisher::pending(
                connected.clone(),
                resolved.options.app.as_deref(),
                resolved.options.namespace.as_deref(),
            );
            let handler = def.handler(&self.states, publisher)?;
            plan.push((*def, resolved.options, handler));
        }

        // The endpoint starts first (so /healthz answers while connecting), and the metrics
        // recorder is installed before any consumer registers its metric handles.
        let http = match &config.http {
            Some(settings) => {
                let readiness = Arc::new(crate::http::Readiness::default());
                let metrics = crate::http::Metrics::install();
                let server =
                    crate::http::Server::start(settings.addr, readiness.clone(), metrics).await?;
                Some(Http { server, readiness })
            }
            None => None,
        };
        let connecting = Self::connect_and_subscribe(
            &config,
            plan,
            &connected,
            (&self.middleware, self.transaction_pool),
            http.as_ref(),
        );
        match connecting.await {
            Ok((service, consumers)) => {
                let sampler =
                    (!config.metrics_interval.is_zero() && !consumers.is_empty()).then(|| {
                        let mut streams: Vec<String> = consumers
                            .iter()
                            .map(|c| c.consumer.stream().to_owned())
                            .collect();
                        streams.sort();
                        streams.dedup();
                        let (stop, stopped) = tokio::sync::watch::channel(false);
                        tokio::spawn(crate::engine::telemetry::sample_groups(
                            service.backend().clone(),
                            streams,
                            config.metrics_interval,
                            stopped,
                        ));
                        stop
                    });
                Ok(Started {
                    service,
                    consumers,
                    http,
                    sampler,
                })
            }
            Err(e) => {
                if let Some(http) = http {
                    http.server.stop().await;
                }
                Err(e)
            }
        }
    }

    async fn connect_and_subscribe(
        config: &Config,
        plan: Vec<(
            &'static ConsumerDef,
            SubscribeOptions,
            crate::registry::Built,
        )>,
        connected: &OnceLock<Service>,
        (middleware, transaction_pool): (&Chain, TransactionPool),
        http: Option<&Http>,
    ) -> Result<(Service, Vec<StartedConsumer>)> {
        let url = redact_url(&config.backend);
        tracing::info!(
            "connecting to {url} (app {:?}, namespace {:?}; config: {})",
            config.app,
            config.namespace,
            config.origin()
        );
        let service = Service::connect(&config.backend, config.service_config())
            .await
            .map_err(|e| {
                // The backend's error names the (redacted) URL already.
                Error::Runtime(format!(
                    "could not connect to the backend: {}",
                    redact_in(&e.to_string(), &config.backend)
                ))
            })?;
        let _ = connected.set(service.clone());
        for middleware in middleware.iter() {
            service.add_shared_middleware(middleware.clone());
        }
        #[cfg(any(feature = "sqlite", feature = "postgres"))]
        if let Some(pool) = transaction_pool {
            if let Err(e) = service.set_transaction_pool(pool).await {
                if let Err(close) = service.close().await {
                    tracing::error!("closing the backend after a failed start: {close}");
                }
                return Err(e);
            }
        }
        #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
        let () = transaction_pool;

        if let Some(http) = http {
            http.readiness.connected(service.clone());
        }
        let mut consumers = Vec::with_capacity(plan.len());
        for (def, options, handler) in plan {
            match handler.subscribe(&service, def, options.clone()).await {
                Ok(consumer) => {
                    log_started(&service, def, &options, &consumer);
                    if let Some(http) = http {
                        http.readiness.started(def.name, consumer.clone());
                    }
                    consumers.push(StartedConsumer {
                        name: def.name,
                        options,
                        consumer,
                    });
                }
                Err(e) => {
                    let reason = redact_in(&e.to_string(), &config.backend);
                    let error = def.start_error(reason, e);
                    if let Err(close) = service.close().await {
                        tracing::error!("closing the backend after a failed start: {close}");
                    }
                    return Err(error);
                }
            }
        }
        tracing::info!("{} consumer(s) running on {url}", consumers.len());
        Ok((service, consumers))
    }

    /// Starts, then runs until SIGINT or SIGTERM, then drains. Failures are logged, then
    /// returned (see [`run_until`](Self::run_until)).
    pub async fn run(self) -> Result<()> {
        self.run_until(|_service| std::future::pending::<Result<()>>())
            .await
    }

    /// Starts, then runs `app` with the [`Service`] (to publish) until it returns or SIGINT /
    /// SIGTERM arrives (then `app` is dropped), then drains. An error from `app` is returned
    /// as [`Error::Application`] after the drain.
    ///
    /// Every failure is logged once through `tracing` (at `ERROR`) as it happens, then
    /// returned: the caller only has to turn it into an exit code.
    pub async fn run_until<F, Fut, E>(self, app: F) -> Result<()>
    where
        F: FnOnce(Service) -> Fut,
        Fut: Future<Output = std::result::Result<(), E>>,
        E: Into<BoxError>,
    {
        warn_without_subscriber();
        // Listen before starting, so a signal during startup is not the default kill.
        let mut signals = Signals::listen().inspect_err(|e| tracing::error!("{e}"))?;
        // A signal while starting (say, a backend that does not answer) stops at once.
        let started = tokio::select! {
            started = self.start() => started.inspect_err(|e| tracing::error!("{e}"))?,
            name = signals.recv() => {
                let error = Error::Runtime(format!(
                    "received {name} while starting: stopped before every consumer was running"
                ));
                tracing::error!("{error}");
                return Err(error);
            }
        };
        let outcome = tokio::select! {
            result = app(started.service.clone()) => result.map_err(|e| Error::Application(e.into())),
            name = signals.recv() => {
                tracing::info!("received {name}: shutting down (send it again to stop without draining)");
                Ok(())
            }
        };
        if let Err(e) = &outcome {
            tracing::error!("{e}; shutting down");
        }
        let shutdown = tokio::select! {
            result = started.shutdown() => result,
            name = signals.recv() => {
                Err(Error::Runtime(format!(
                    "received {name} again: stopped without draining; running handlers' \
                     messages will be redelivered after their visibility timeout"
                )))
            }
        };
        // Logged even when the application's error is the one returned.
        if let Err(e) = &shutdown {
            tracing::error!("{e}");
        }
        outcome.and(shutdown)
    }
}

impl Started {
    /// The service, to publish (cheap to clone).
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// The address the `[http]` endpoint listens on, if configured (useful with port 0).
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().map(|h| h.server.addr)
    }

    /// The consumers started, in name order (disabled ones are absent).
    pub fn consumers(&self) -> &[StartedConsumer] {
        &self.consumers
    }

    /// Closes every consumer (each drains within its `shutdown_timeout`), then the backend.
    /// An error if handlers had to be aborted or the backend failed to close.
    pub async fn shutdown(self) -> Result<()> {
        tracing::info!(
            "draining {} consumer(s) (longest shutdown timeout {})",
            self.consumers.len(),
            format_duration(
                self.consumers
                    .iter()
                    .map(|c| c.options.shutdown_timeout)
                    .max()
                    .unwrap_or_default()
            )
        );
        if let Some(http) = &self.http {
            http.readiness.stopping();
        }
        if let Some(sampler) = &self.sampler {
            sampler.send_replace(true);
        }
        let closed = self.service.close().await;
        // The endpoint stops after the drain.
        if let Some(http) = self.http {
            http.server.stop().await;
        }
        let report = closed?;
        if report.aborted > 0 {
            let error = Error::Runtime(format!(
                "{} handler(s) were still running at the shutdown timeout and were aborted; \
                 their messages were released for redelivery",
                report.aborted
            ));
            return Err(error);
        }
        tracing::info!("shut down cleanly");
        Ok(())
    }
}

/// The runtime reports through `tracing`: without a subscriber, a program would run silently
/// and fail with no word of why. Say so on stderr once.
fn warn_without_subscriber() {
    let silent = tracing::dispatcher::get_default(|d| d.is::<tracing::subscriber::NoSubscriber>());
    if silent {
        eprintln!(
            "stream_runtime: no tracing subscriber is installed, so the runtime's log (startup, \
             retries, dead letters, shutdown, errors) is not shown; install one before running, \
             e.g. `tracing_subscriber::fmt::init();` at the start of main"
        );
    }
}

fn log_started(
    service: &Service,
    def: &ConsumerDef,
    options: &SubscribeOptions,
    consumer: &Consumer,
) {
    let config = service.config();
    let app = naming::pick(options.app.as_deref(), &config.app);
    let namespace = naming::pick(options.namespace.as_deref(), &config.namespace);
    let dead_letter = match options.dead_letter.as_deref() {
        Some(name) if !name.is_empty() => {
            naming::format_stream(app, namespace, name).unwrap_or_else(|_| name.to_owned())
        }
        _ => naming::dead_letter_stream(consumer.stream()),
    };
    tracing::info!(
        "consumer {} started: stream {}, group {}, payload {}, concurrency {}, max_retries {}, \
         visibility_timeout {}, poll_interval {}, shutdown_timeout {}, retry_delay {}, \
         start {} (if the group is new), dead_letter {}, ordered {} ({}){}",
        def.name,
        consumer.stream(),
        consumer.group(),
        def.payload_type,
        options.concurrency.max(1),
        options.max_retries,
        format_duration(options.visibility_timeout),
        format_duration(options.poll_interval),
        format_duration(options.shutdown_timeout),
        options.retry_delay,
        options.start,
        dead_letter,
        options.ordered,
        def.location,
        if options.heartbeat {
            ", heartbeat on"
        } else {
            ""
        },
    );
    if def.batch.is_some() {
        tracing::info!(
            "consumer {} takes batches: batch_size {}, batch_wait {}",
            def.name,
            options.batch_size,
            format_duration(options.batch_wait),
        );
    }
}

/// SIGINT and SIGTERM (Ctrl-C elsewhere), listened to from creation on.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let listen = |kind: SignalKind, name: &str| {
                signal(kind)
                    .map_err(|e| Error::Runtime(format!("could not listen for {name}: {e}")))
            };
            Ok(Signals {
                term: listen(SignalKind::terminate(), "SIGTERM")?,
                int: listen(SignalKind::interrupt(), "SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Signals {})
        }
    }

    /// The name of the next signal received.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
            "Ctrl-C"
        }
    }
}
