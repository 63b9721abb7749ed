//! Publishing from inside a handler: consume, then publish (the most common step of an
//! event-driven service).

use std::sync::{Arc, OnceLock};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::message::{MessageId, NewMessage};
use crate::options::PublishOptions;
use crate::service::Service;

/// A handle to publish with, bound to a service and to an app and namespace: short stream
/// names resolve as the consumer's own stream does, unless the [`PublishOptions`] say
/// otherwise. Cheap to clone.
///
/// A `#[consumer]` takes it as an argument (`publisher: Publisher`), bound to the app and
/// namespace the consumer runs under; [`Service::subscribe_with_publisher`] hands one to a
/// closure; [`Service::publisher`] makes one bound to the service's own.
///
/// ```
/// use stream_runtime::prelude::*;
///
/// #[derive(serde::Deserialize, serde::Serialize)]
/// struct Order {
///     id: u64,
/// }
///
/// #[consumer(stream = "orders", group = "billing")]
/// async fn bill(order: Order, publisher: Publisher) -> Result<(), stream_runtime::Error> {
///     // ... bill it, then tell whoever ships it:
///     publisher.publish_json("billed", &order, PublishOptions::new()).await?;
///     Ok(())
/// }
/// ```
#[derive(Clone)]
pub struct Publisher {
    service: Arc<OnceLock<Service>>,
    app: Option<Arc<str>>,
    namespace: Option<Arc<str>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("connected", &self.service.get().is_some())
            .field("app", &self.app)
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl Publisher {
    /// Bound to `service`, with app and namespace overrides (`None` or empty: the
    /// service's).
    pub(crate) fn new(service: Service, app: Option<&str>, namespace: Option<&str>) -> Self {
        let slot = Arc::new(OnceLock::new());
        let _ = slot.set(service);
        Self::pending(slot, app, namespace)
    }

    /// Bound to a service set in `slot` later: the runtime builds handlers before it
    /// connects, so a missing state is reported before any connection is made.
    pub(crate) fn pending(
        slot: Arc<OnceLock<Service>>,
        app: Option<&str>,
        namespace: Option<&str>,
    ) -> Self {
        let bound = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(Arc::from);
        Publisher {
            service: slot,
            app: bound(app),
            namespace: bound(namespace),
        }
    }

    /// Where this publisher finds its service.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub(crate) fn slot(&self) -> Arc<OnceLock<Service>> {
        self.service.clone()
    }

    fn service(&self) -> Result<&Service> {
        self.service.get().ok_or_else(|| {
            Error::Runtime(
                "this Publisher's runtime has not connected yet; publish from handlers or \
                 from the future given to run_until"
                    .to_owned(),
            )
        })
    }

    /// The options with this publisher's app and namespace where they set none.
    fn bind(&self, mut options: PublishOptions) -> PublishOptions {
        if options.app.is_none() {
            options.app = self.app.as_deref().map(str::to_owned);
        }
        if options.namespace.is_none() {
            options.namespace = self.namespace.as_deref().map(str::to_owned);
        }
        options
    }

    /// The full name a short stream name publishes to: `<app>.<namespace>.<name>`.
    pub fn stream_name(&self, name: &str) -> Result<String> {
        let service = self.service()?;
        let config = service.config();
        crate::naming::format_stream(
            self.app.as_deref().unwrap_or(&config.app),
            self.namespace.as_deref().unwrap_or(&config.namespace),
            name,
        )
    }

    /// Appends one message, as [`Service::publish`].
    pub async fn publish(
        &self,
        stream: &str,
        payload: impl Into<Vec<u8>>,
        options: PublishOptions,
    ) -> Result<MessageId> {
        self.service()?
            .publish(stream, payload, self.bind(options))
            .await
    }

    /// Appends one message inside the caller's transaction on `conn`, as
    /// [`Service::publish_in`]: in a transactional handler, `publish_in(&mut **tx, ...)`
    /// makes the publish part of the handler's commit.
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub async fn publish_in<C: crate::transaction::TxConnection>(
        &self,
        conn: &mut C,
        stream: &str,
        payload: impl Into<Vec<u8>>,
        options: PublishOptions,
    ) -> Result<MessageId> {
        self.service()?
            .publish_in(conn, stream, payload, self.bind(options))
            .await
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
        self.service()?
            .publish_json_in(conn, stream, value, self.bind(options))
            .await
    }

    /// Many messages inside the caller's transaction, as [`Service::publish_batch_in`].
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    pub async fn publish_batch_in<C: crate::transaction::TxConnection, M: Into<NewMessage>>(
        &self,
        conn: &mut C,
        stream: &str,
        messages: impl IntoIterator<Item = M>,
        options: PublishOptions,
    ) -> Result<Vec<MessageId>> {
        self.service()?
            .publish_batch_in(conn, stream, messages, self.bind(options))
            .await
    }

    /// Serializes `value` as JSON and publishes it, as [`Service::publish_json`].
    pub async fn publish_json<T: Serialize + ?Sized>(
        &self,
        stream: &str,
        value: &T,
        options: PublishOptions,
    ) -> Result<MessageId> {
        self.service()?
            .publish_json(stream, value, self.bind(options))
            .await
    }

    /// Appends many messages in one backend call, as [`Service::publish_batch`].
    pub async fn publish_batch<M: Into<NewMessage>>(
        &self,
        stream: &str,
        messages: impl IntoIterator<Item = M>,
        options: PublishOptions,
    ) -> Result<Vec<MessageId>> {
        self.service()?
            .publish_batch(stream, messages, self.bind(options))
            .await
    }
}
