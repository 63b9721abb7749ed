//! The handle users hold: publish, subscribe, close.

use std::future::Future;
use std::sync::{Arc, PoisonError};

use serde::Serialize;
use tokio::sync::RwLock;
use tracing::Instrument;

use crate::backend::{Backend, BoxFuture, SharedBackend};
use crate::engine::{self, CloseReport, Handler, Running, Subscription};
use crate::error::{Error, HandlerError, Result};
use crate::message::{Message, MessageId, NewMessage};
use crate::middleware::{Chain, Middleware};
use crate::naming::{self, format_stream};
use crate::options::{PublishOptions, ServiceConfig, SubscribeOptions, Trim};
use crate::publisher::Publisher;

/// Publishes messages. [`Service`] implements it; implement it yourself to mock the
/// producing side in tests.
pub trait Producer: Send + Sync {
    /// Appends one message to `stream` (a short name) and returns its id.
    fn publish<'a>(
        &'a self,
        stream: &'a str,
        message: NewMessage,
        options: PublishOptions,
    ) -> BoxFuture<'a, Result<MessageId>>;
}

/// Subscribes handlers. [`Service`] implements it; implement it yourself to mock the
/// consuming side in tests.
pub trait Subscriber: Send + Sync {
    /// Runs `handler` for the messages of `stream` (a short name) in consumer group `group`.
    fn subscribe_handler<'a>(
        &'a self,
        stream: &'a str,
        group: &'a str,
        handler: Handler,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Consumer>>;
}

/// A stream service on one backend: cheap to clone, shared by every clone.
///
/// ```
/// use stream_runtime::{Service, SubscribeOptions, PublishOptions, StartPosition};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), stream_runtime::Error> {
/// let service = Service::memory();
/// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
/// let consumer = service
///     .subscribe("orders", "billing", move |msg| {
///         let tx = tx.clone();
///         async move {
///             tx.send(String::from_utf8_lossy(&msg.payload).into_owned())?;
///             Ok(())
///         }
///     }, SubscribeOptions::new())
///     .await?;
/// service.publish("orders", "order #1", PublishOptions::new()).await?;
/// assert_eq!(rx.recv().await.as_deref(), Some("order #1"));
/// consumer.close().await;
/// service.close().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    backend: SharedBackend,
    config: ServiceConfig,
    /// Read once per subscription, never per message.
    middleware: std::sync::RwLock<Chain>,
    /// The pool the service begins transactions on, when not its own.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    transaction_pool: std::sync::RwLock<Option<crate::transaction::TransactionPool>>,
    /// Write-locked only by close, so publish and subscribe see `closed` settle once.
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    /// Set when close starts: no more subscriptions.
    closing: bool,
    /// Set once every consumer drained: no more publishes either.
    closed: bool,
    consumers: Vec<Consumer>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("backend", &self.inner.backend.name())
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Service {
    /// A service over any backend.
    pub fn new(backend: impl Backend, config: ServiceConfig) -> Self {
        Self::from_shared(Arc::new(backend), config)
    }

    /// A service over a shared backend.
    pub fn from_shared(backend: SharedBackend, config: ServiceConfig) -> Self {
        Service {
            inner: Arc::new(Inner {
                backend,
                config,
                middleware: std::sync::RwLock::new(Chain::default()),
                #[cfg(any(feature = "sqlite", feature = "postgres"))]
                transaction_pool: std::sync::RwLock::new(None),
                state: RwLock::new(State::default()),
            }),
        }
    }

    /// A service on a fresh in-memory backend with default settings.
    pub fn memory() -> Self {
        Self::new(
            crate::backend::memory::MemoryBackend::new(),
            ServiceConfig::default(),
        )
    }

    /// Connects to the backend a URL names (`memory://`, `sqlite://streams.db`,
    /// `postgres://...`, `redis://...`) and creates its schema.
    /// Servers that do not answer within `config.connect_timeout` are an error.
    pub async fn connect(url: &str, config: ServiceConfig) -> Result<Self> {
        let options = crate::backend::ConnectOptions::new().connect_timeout(config.connect_timeout);
        Ok(Self::from_shared(
            crate::backend::connect_with(url, options).await?,
            config,
        ))
    }

    /// The service's settings.
    pub fn config(&self) -> &ServiceConfig {
        &self.inner.config
    }

    /// The backend.
    pub fn backend(&self) -> &SharedBackend {
        &self.inner.backend
    }

    /// The operator's view of this service's streams: lag, pending claims, dead letters and
    /// their redrive. See [`Admin`](crate::admin::Admin).
    pub fn admin(&self) -> crate::admin::Admin {
        crate::admin::Admin::new(self.clone())
    }

    /// The full name of a stream on this service: `<app>.<namespace>.<name>`.
    pub fn stream_name(&self, name: &str) -> Result<String> {
        format_stream(&self.inner.config.app, &self.inner.config.namespace, name)
    }

    /// Appends one message and returns its id. Headers and trim come from `options`.
    pub async fn publish(
        &self,
        stream: &str,
        payload: impl Into<Vec<u8>>,
        options: PublishOptions,
    ) -> Result<MessageId> {
        let mut ids = self
            .publish_batch(stream, [NewMessage::new(payload)], options)
            .await?;
        ids.pop().ok_or_else(|| self.no_id())
    }

    /// Serializes `value` as JSON and publishes it (D7).
    pub async fn publish_json<T: Serialize + ?Sized>(
        &self,
        stream: &str,
        value: &T,
        options: PublishOptions,
    ) -> Result<MessageId> {
        let payload = serde_json::to_vec(value).map_err(|e| Error::Encode(Box::new(e)))?;
        self.publish(stream, payload, options).await
    }

    /// Appends many messages in one backend call, in order, and returns their ids. The
    /// options' headers are added to each message.
    pub async fn publish_batch<M: Into<NewMessage>>(
        &self,
        stream: &str,
        messages: impl IntoIterator<Item = M>,
        options: PublishOptions,
    ) -> Result<Vec<MessageId>> {
        let Some(batch) = self.prepare(stream, messages, &options)? else {
            return Ok(Vec::new());
        };
        let state = self.inner.state.read().await;
        if state.closed {
            return Err(Error::Closed);
        }
        let count = batch.messages.len();
        let ids = self
            .inner
            .backend
            .append(&batch.stream, batch.messages, batch.trim)
            .instrument(batch.span)
            .await;
        if ids.is_ok() {
            metrics::counter!(crate::engine::telemetry::names::PUBLISHED, "stream" => batch.stream)
                .increment(count as u64);
        }
        drop(state);
        ids
    }

    /// What a publish appends: the full stream name, the messages with the options' headers
    /// (checked against the payload limit), the trim, and the publish's span. `None` for no
    /// message at all.
    fn prepare<M: Into<NewMessage>>(
        &self,
        stream: &str,
        messages: impl IntoIterator<Item = M>,
        options: &PublishOptions,
    ) -> Result<Option<Batch>> {
        let config = &self.inner.config;
        let full = format_stream(
            naming::pick(options.app.as_deref(), &config.app),
            naming::pick(options.namespace.as_deref(), &config.namespace),
            stream,
        )?;
        let span = crate::engine::telemetry::span_at!(
            config.span_level,
            "stream.publish",
            stream = %full,
            count = tracing::field::Empty
        );
        // The delivery time, written once as the reserved header's value.
        let deliver_at = options
            .deliver
            .map(|at| crate::engine::delay::header_value(at.time()));
        let messages = messages
            .into_iter()
            .map(|m| {
                let mut m = m.into();
                #[cfg(feature = "opentelemetry")]
                crate::engine::telemetry::trace_context::inject(&span, &mut m.headers);
                if m.payload.len() > config.max_payload_bytes {
                    return Err(Error::PayloadTooLarge {
                        size: m.payload.len(),
                        limit: config.max_payload_bytes,
                    });
                }
                for (k, v) in &options.headers {
                    m.headers.entry(k.clone()).or_insert_with(|| v.clone());
                }
                if let Some(at) = &deliver_at {
                    m.headers.insert(
                        crate::engine::delay::DELIVER_AT_HEADER.to_owned(),
                        at.clone(),
                    );
                }
                if let Some(key) = &options.key {
                    m.headers
                        .entry(crate::key_order::KEY_HEADER.to_owned())
                        .or_insert_with(|| key.clone());
                }
                Ok(m)
            })
            .collect::<Result<Vec<_>>>()?;
        if messages.is_empty() {
            return Ok(None);
        }
        span.record("count", messages.len());
        let trim = Trim {
            max_len: options.max_len.unwrap_or(config.max_len),
            max_age: options.max_age.unwrap_or(config.max_age),
        };
        Ok(Some(Batch {
            stream: full,
            messages,
            trim,
            span,
        }))
    }

    /// The error for a backend that stored one message but returned no id for it.
    fn no_id(&self) -> Error {
        Error::BackendContract {
            backend: self.inner.backend.name(),
            what: "returned no id for a published message".to_owned(),
        }
    }

    /// Appends one message inside the caller's transaction on `conn` (a `sqlx::PgConnection`
    /// on the Postgres backend, a `sqlx::SqliteConnection` on SQLite; pass `&mut *tx` for a
    /// `sqlx::Transaction`) and returns its id. The message exists only if and when that
    /// transaction commits; consumers are woken after the commit; a rollback leaves no
    /// trace. The transaction must be on this service's database, e.g. from
    /// [`begin`](Self::begin) or a pool of your own on the same database. Other backends
    /// answer [`Error::TransactionsUnsupported`].
    ///
    /// Until the transaction ends, other publishes to the same stream wait for it (that is
    /// what keeps ids committing in order): keep such transactions short.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub async fn publish_in<C: crate::transaction::TxConnection>(
        &self,
        conn: &mut C,
        stream: &str,
        payload: impl Into<Vec<u8>>,
        options: PublishOptions,
    ) -> Result<MessageId> {
        let mut ids = self
            .publish_batch_in(conn, stream, [NewMessage::new(payload)], options)
            .await?;
        ids.pop().ok_or_else(|| self.no_id())
    }

    /// [`publish_in`](Self::publish_in) with `value` serialized as JSON.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub async fn publish_json_in<C: crate::transaction::TxConnection, T: Serialize + ?Sized>(
        &self,
        conn: &mut C,
        stream: &str,
        value: &T,
        options: PublishOptions,
    ) -> Result<MessageId> {
        let payload = serde_json::to_vec(value).map_err(|e| Error::Encode(Box::new(e)))?;
        self.publish_in(conn, stream, payload, options).await
    }

    /// [`publish_batch`](Self::publish_batch) inside the caller's transaction on `conn`
    /// (see [`publish_in`](Self::publish_in)).
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub async fn publish_batch_in<C: crate::transaction::TxConnection, M: Into<NewMessage>>(
        &self,
        conn: &mut C,
        stream: &str,
        messages: impl IntoIterator<Item = M>,
        options: PublishOptions,
    ) -> Result<Vec<MessageId>> {
        let Some(batch) = self.prepare(stream, messages, &options)? else {
            return Ok(Vec::new());
        };
        let state = self.inner.state.read().await;
        if state.closed {
            return Err(Error::Closed);
        }
        let ids = crate::transaction::append_in(
            conn,
            &self.inner.backend,
            &batch.stream,
            batch.messages,
            batch.trim,
        )
        .instrument(batch.span)
        .await;
        drop(state);
        ids
    }

    /// Begins a transaction on this service's own database, at the configured
    /// [`transaction_isolation`](ServiceConfig::transaction_isolation): a [`PostgresTx`](crate::PostgresTx)
    /// on Postgres, a [`SqliteTx`](crate::SqliteTx) on SQLite (`BEGIN IMMEDIATE` on the
    /// service's one writer connection: every other write of this process waits until it
    /// ends). Use it for your own rows and [`publish_in`](Self::publish_in) together. It
    /// comes from the [transaction pool](Self::set_transaction_pool) when one is set.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub async fn begin<T: crate::transaction::DatabaseTx>(&self) -> Result<T> {
        crate::backend::check_database(
            &*self.inner.backend,
            "a transaction",
            crate::transaction::database::<T>(),
        )?;
        let pool = self.transaction_pool();
        crate::transaction::begin::<T>(
            &self.inner.backend,
            pool.as_ref(),
            self.inner.config.transaction_isolation,
        )
        .await
    }

    /// Makes the transactions this service begins (every transactional handler's, and
    /// [`begin`](Self::begin)'s) come from `pool`, a `sqlx::PgPool` or `sqlx::SqlitePool` of
    /// your own, instead of the service's pool: e.g. to size it for your handlers, or to
    /// connect as another role. Checked first: `pool` must reach the database the backend
    /// keeps its streams in (Postgres: the same server, database and visible stream schema;
    /// SQLite: the same database file), else [`Error::TransactionPoolMismatch`] naming both
    /// (a pool of the other SQL database is [`Error::TransactionsUnsupported`]). Applies
    /// from the next transaction on, to handlers already running too.
    ///
    /// On SQLite the service's own pool is its one writer connection; a pool of your own
    /// adds writers that wait for each other on the database's lock (`busy_timeout`).
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub async fn set_transaction_pool(
        &self,
        pool: impl Into<crate::transaction::TransactionPool>,
    ) -> Result<()> {
        let pool = pool.into();
        crate::transaction::check_pool(&self.inner.backend, &pool).await?;
        *self
            .inner
            .transaction_pool
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(pool);
        Ok(())
    }

    /// The pool set by [`set_transaction_pool`](Self::set_transaction_pool), if any.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub fn transaction_pool(&self) -> Option<crate::transaction::TransactionPool> {
        self.inner
            .transaction_pool
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The Postgres backend's connection pool, for your own queries and transactions on the
    /// same database; `None` on other backends.
    #[cfg(feature = "postgres")]
    pub fn postgres_pool(&self) -> Option<&sqlx::PgPool> {
        match self.inner.backend.sql() {
            Some(crate::backend::SqlBackend::Postgres(pg)) => Some(pg.pool()),
            _ => None,
        }
    }

    /// The SQLite backend's writer pool (one connection, which every write of this process
    /// goes through), for your own queries and transactions on the same database; `None`
    /// on other backends.
    #[cfg(feature = "sqlite")]
    pub fn sqlite_pool(&self) -> Option<&sqlx::SqlitePool> {
        match self.inner.backend.sql() {
            Some(crate::backend::SqlBackend::Sqlite(lite)) => Some(lite.pool()),
            _ => None,
        }
    }

    /// Runs a transactional `handler` for the messages of `stream` in group `group`: the
    /// engine begins a transaction (`T` is [`PostgresTx`](crate::PostgresTx) or
    /// [`SqliteTx`](crate::SqliteTx), matching the backend), runs the handler with it, then
    /// acknowledges the message in the same transaction, fenced by its claim, and commits.
    /// The handler's writes and the ack commit together, or not at all: a claim taken
    /// over meanwhile, an error or a panic roll the transaction back before the usual
    /// retry or dead-letter decision. Publish from the handler with
    /// [`publish_in`](Self::publish_in) on `&mut **tx` to make the publish part of the
    /// same commit. Another backend is an [`Error::TransactionsUnsupported`] here.
    ///
    /// The handler returns a boxed future borrowing the transaction:
    /// `|msg, tx| Box::pin(async move { ...; Ok(()) })`.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub async fn subscribe_transactional<T, F>(
        &self,
        stream: &str,
        group: &str,
        handler: F,
        mut options: SubscribeOptions,
    ) -> Result<Consumer>
    where
        T: crate::transaction::DatabaseTx,
        F: for<'t> Fn(Message, &'t mut T) -> BoxFuture<'t, Result<(), HandlerError>>
            + Send
            + Sync
            + 'static,
    {
        let slot = Arc::new(std::sync::OnceLock::new());
        let _ = slot.set(self.clone());
        let handler = crate::transaction::wrap(
            slot,
            Arc::from(group),
            options.transaction_isolation,
            handler,
        );
        options.transactional = Some(crate::transaction::database::<T>());
        self.subscribe_handler_inner(stream, group, handler, options, None)
            .await
    }

    /// Adds middleware around every handler of the subscriptions made from now on (see
    /// [`middleware`](crate::middleware)); the first added runs outermost.
    pub fn add_middleware(&self, middleware: impl Middleware) {
        self.add_shared_middleware(Arc::new(middleware));
    }

    pub(crate) fn add_shared_middleware(&self, middleware: Arc<dyn Middleware>) {
        self.inner
            .middleware
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(middleware);
    }

    /// A [`Publisher`] bound to this service's app and namespace.
    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.clone(), None, None)
    }

    /// Like [`subscribe`](Self::subscribe), with a [`Publisher`] handed to the handler
    /// with each message, bound to the subscription's app and namespace (consume, then
    /// publish). Publishing works while the consumer drains at shutdown.
    ///
    /// ```
    /// use stream_runtime::{Message, Publisher, PublishOptions, Service, SubscribeOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), stream_runtime::Error> {
    /// let service = Service::memory();
    /// service
    ///     .subscribe_with_publisher(
    ///         "orders",
    ///         "billing",
    ///         |msg: Message, publisher: Publisher| async move {
    ///             publisher.publish("invoices", msg.payload.to_vec(), PublishOptions::new()).await?;
    ///             Ok(())
    ///         },
    ///         SubscribeOptions::new(),
    ///     )
    ///     .await?;
    /// # service.close().await?;
    /// # Ok(()) }
    /// ```
    pub async fn subscribe_with_publisher<F, Fut>(
        &self,
        stream: &str,
        group: &str,
        handler: F,
        options: SubscribeOptions,
    ) -> Result<Consumer>
    where
        F: Fn(Message, Publisher) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let publisher = Publisher::new(
            self.clone(),
            options.app.as_deref(),
            options.namespace.as_deref(),
        );
        let handler = engine::handler_fn(move |message| handler(message, publisher.clone()));
        self.subscribe_handler_inner(stream, group, handler, options, None)
            .await
    }

    /// Runs `handler` for the messages of `stream` in consumer group `group`, creating the
    /// group on first use. Returns the consumer's handle; dropping it does not stop it, only
    /// [`Consumer::close`] or [`Service::close`] does.
    pub async fn subscribe<F, Fut>(
        &self,
        stream: &str,
        group: &str,
        handler: F,
        options: SubscribeOptions,
    ) -> Result<Consumer>
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.subscribe_handler_inner(stream, group, engine::handler_fn(handler), options, None)
            .await
    }

    /// Runs a batch `handler` for the messages of `stream` in consumer group `group`: each
    /// call gets up to [`batch_size`](SubscribeOptions::batch_size) messages, their payloads
    /// decoded as `T` (JSON for a `serde::Deserialize` type, [`Raw`](crate::Raw) for the
    /// bytes). `Ok` acknowledges them together, `Err` fails them all (each is retried or
    /// dead-lettered by the usual rules), a [`BatchResult`](crate::BatchResult) fails only
    /// those it names. A payload that does not decode is dead-lettered alone, and the
    /// handler gets the others. `concurrency` is the number of batches handled at once.
    /// Middleware (which wraps one message's handling) does not run around batch handlers.
    /// See [`batch`](crate::batch) for an example.
    pub async fn subscribe_batch<T, F, Fut>(
        &self,
        stream: &str,
        group: &str,
        handler: F,
        options: SubscribeOptions,
    ) -> Result<Consumer>
    where
        T: crate::Payload + Send + 'static,
        F: Fn(crate::Batch<T>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: crate::BatchOutput,
    {
        let handler = crate::batch::batch_handler_fn(std::any::type_name::<T>(), handler);
        self.subscribe_batch_handler(stream, group, handler, options)
            .await
    }

    /// Runs a type-erased batch handler (see [`subscribe_batch`](Self::subscribe_batch)),
    /// which gets the messages as claimed and decodes them itself.
    pub async fn subscribe_batch_handler(
        &self,
        stream: &str,
        group: &str,
        handler: crate::batch::BatchHandler,
        options: SubscribeOptions,
    ) -> Result<Consumer> {
        engine::batch::check_options(&options)?;
        let unused = engine::batch::no_message_handler();
        self.subscribe_handler_inner(stream, group, unused, options, Some(handler))
            .await
    }

    async fn subscribe_handler_inner(
        &self,
        stream: &str,
        group: &str,
        handler: Handler,
        options: SubscribeOptions,
        batch: Option<crate::batch::BatchHandler>,
    ) -> Result<Consumer> {
        let config = &self.inner.config;
        let app = naming::pick(options.app.as_deref(), &config.app);
        let namespace = naming::pick(options.namespace.as_deref(), &config.namespace);
        let full = format_stream(app, namespace, stream)?;
        naming::validate("group", group)?;
        let dead_letter = match options.dead_letter.as_deref() {
            Some(name) if !name.is_empty() => {
                format_stream(app, namespace, name).map_err(|e| match e {
                    // The name at fault is the dead-letter option, not the stream.
                    Error::InvalidName {
                        what: "stream",
                        value,
                        reason,
                    } => Error::InvalidName {
                        what: "dead_letter",
                        value,
                        reason,
                    },
                    other => other,
                })?
            }
            _ => naming::dead_letter_stream(&full),
        };
        if dead_letter == full {
            // Every dead letter would come back to this very group, forever.
            return Err(Error::invalid_name(
                "dead_letter",
                options.dead_letter.as_deref().unwrap_or_default(),
                format!(
                    "it is the consumer's own stream {full}, so every dead letter would come \
                     back to it, forever; name another stream (the default is {})",
                    naming::dead_letter_stream(&full)
                ),
            ));
        }
        // The default `<full>.dead` may pass the length limit: it must stay a stream the
        // same subscribe call can read (S1).
        if dead_letter.len() > naming::MAX_NAME_BYTES {
            return Err(Error::invalid_name(
                "dead-letter stream",
                &dead_letter,
                format!(
                    "it is {} bytes long; the limit is {}: shorten the stream name or set a \
                     shorter dead_letter name",
                    dead_letter.len(),
                    naming::MAX_NAME_BYTES
                ),
            ));
        }
        if options.ordered.is_key() && !self.inner.backend.key_order_supported() {
            return Err(Error::OrderingUnsupported {
                backend: self.inner.backend.name(),
            });
        }
        if let Some(database) = options.transactional {
            crate::backend::check_database(
                &*self.inner.backend,
                "a transactional handler",
                database,
            )?;
        }
        let mut state = self.inner.state.write().await;
        if state.closing {
            return Err(Error::Closed);
        }
        self.inner
            .backend
            .ensure_group(&full, group, &options.start)
            .await?;
        let handler = self
            .inner
            .middleware
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .wrap(handler, group);
        let running = engine::start(Subscription {
            backend: self.inner.backend.clone(),
            stream: full.clone(),
            group: group.to_owned(),
            dead_letter,
            handler,
            concurrency: options.concurrency.max(1),
            max_retries: options.max_retries,
            visibility_timeout: options.visibility_timeout,
            poll_interval: options.poll_interval,
            shutdown_timeout: options.shutdown_timeout,
            retry_delay: options.retry_delay,
            name: options.name.clone().unwrap_or_else(|| group.to_owned()),
            transactional: options.transactional.is_some(),
            span_level: self.inner.config.span_level,
            heartbeat: options.heartbeat,
            ordered: options.ordered.is_key(),
            batch: batch.map(|handler| engine::batch::BatchSpec {
                handler,
                size: options.batch_size,
                wait: options.batch_wait,
            }),
        });
        let consumer = Consumer {
            inner: Arc::new(ConsumerInner {
                stream: full,
                group: group.to_owned(),
                running,
            }),
        };
        state.consumers.push(consumer.clone());
        Ok(consumer)
    }

    /// Closes every consumer (each drains within its shutdown timeout), then the backend.
    /// Idempotent. Subscribing stops at once; publishing works until the consumers have
    /// drained (so handlers finishing during the drain can still publish). Afterwards
    /// publish and subscribe return [`Error::Closed`].
    pub async fn close(&self) -> Result<CloseReport> {
        let consumers = {
            let mut state = self.inner.state.write().await;
            if state.closing {
                return Ok(CloseReport::default());
            }
            state.closing = true;
            std::mem::take(&mut state.consumers)
        };
        let mut handles = Vec::with_capacity(consumers.len());
        for consumer in consumers {
            handles.push(tokio::spawn(async move { consumer.close().await }));
        }
        let mut aborted = 0;
        for handle in handles {
            aborted += handle.await.map(|r| r.aborted).unwrap_or_default();
        }
        // Waits for publishes in flight.
        self.inner.state.write().await.closed = true;
        self.inner.backend.close().await?;
        Ok(CloseReport { aborted })
    }
}

impl Producer for Service {
    fn publish<'a>(
        &'a self,
        stream: &'a str,
        message: NewMessage,
        options: PublishOptions,
    ) -> BoxFuture<'a, Result<MessageId>> {
        Box::pin(async move {
            let mut ids = self.publish_batch(stream, [message], options).await?;
            ids.pop().ok_or_else(|| self.no_id())
        })
    }
}

impl Subscriber for Service {
    fn subscribe_handler<'a>(
        &'a self,
        stream: &'a str,
        group: &'a str,
        handler: Handler,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Consumer>> {
        Box::pin(self.subscribe_handler_inner(stream, group, handler, options, None))
    }
}

/// A publish ready for the backend.
struct Batch {
    stream: String,
    messages: Vec<NewMessage>,
    trim: Trim,
    span: tracing::Span,
}

/// The handle of one running subscription.
#[derive(Clone)]
pub struct Consumer {
    inner: Arc<ConsumerInner>,
}

struct ConsumerInner {
    stream: String,
    group: String,
    running: Running,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("stream", &self.inner.stream)
            .field("group", &self.inner.group)
            .finish()
    }
}

impl Consumer {
    /// A handle that runs nothing, for a mock [`Subscriber`] to return: it claims no
    /// message, [`is_running`](Self::is_running) is `false` and [`close`](Self::close)
    /// returns an empty report at once.
    ///
    /// ```
    /// use stream_runtime::backend::BoxFuture;
    /// use stream_runtime::{Consumer, Handler, Result, SubscribeOptions, Subscriber};
    ///
    /// /// Records what would have been subscribed.
    /// #[derive(Default)]
    /// struct MockSubscriber(std::sync::Mutex<Vec<(String, String)>>);
    ///
    /// impl Subscriber for MockSubscriber {
    ///     fn subscribe_handler<'a>(
    ///         &'a self,
    ///         stream: &'a str,
    ///         group: &'a str,
    ///         _handler: Handler,
    ///         _options: SubscribeOptions,
    ///     ) -> BoxFuture<'a, Result<Consumer>> {
    ///         self.0.lock().unwrap().push((stream.to_owned(), group.to_owned()));
    ///         Box::pin(async move { Ok(Consumer::detached(stream, group)) })
    ///     }
    /// }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let mock = MockSubscriber::default();
    /// # let handler = stream_runtime::handler_fn(|_msg| async { Ok(()) });
    /// # let consumer = mock
    /// #     .subscribe_handler("orders", "billing", handler, SubscribeOptions::new())
    /// #     .await
    /// #     .unwrap();
    /// # assert!(!consumer.is_running());
    /// # assert_eq!(consumer.close().await.aborted, 0);
    /// # assert_eq!(mock.0.lock().unwrap().len(), 1);
    /// # }
    /// ```
    pub fn detached(stream: impl Into<String>, group: impl Into<String>) -> Self {
        Consumer {
            inner: Arc::new(ConsumerInner {
                stream: stream.into(),
                group: group.into(),
                running: crate::engine::Running::detached(),
            }),
        }
    }

    /// The full stream name.
    pub fn stream(&self) -> &str {
        &self.inner.stream
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.inner.group
    }

    /// Whether the consumer still claims messages: not closed, and its dispatcher did not
    /// end (it ends only by closing, or by a bug: what a readiness probe looks for).
    pub fn is_running(&self) -> bool {
        self.inner.running.is_running()
    }

    /// Stops claiming and waits up to the shutdown timeout for in-flight handlers; those
    /// still running then are aborted and their messages released for redelivery at once.
    /// Idempotent: later calls return the first report.
    pub async fn close(&self) -> CloseReport {
        self.inner.running.close().await
    }
}
