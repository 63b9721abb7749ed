//! Code around every handler call: timing, checking headers, custom logging, rate limits.
//!
//! A [`Middleware`] gets each message before the handler and decides what happens: call
//! [`Next::run`] to go on (and look at the outcome afterwards), or return an error without
//! calling it (the message is then retried or dead-lettered like any handler error; a
//! [`HandlerError::permanent`] dead-letters it at once). Middleware added to a
//! [`Service`](crate::Service) with [`add_middleware`](crate::Service::add_middleware), or to
//! the runtime with [`Runtime::middleware`](crate::Runtime::middleware), wraps every
//! subscription made afterwards, `#[consumer]`s included; the first added runs outermost.
//!
//! The wrapping is done once, when a subscription starts: with no middleware the engine
//! calls the handler itself, with nothing in between.
//!
//! ```
//! use std::time::Instant;
//! use stream_runtime::middleware::Next;
//! use stream_runtime::{HandlerError, Message, Service};
//!
//! let service = Service::memory();
//! service.add_middleware(|msg: Message, next: Next| async move {
//!     if msg.header("tenant").is_none() {
//!         return Err(HandlerError::permanent("no tenant header"));
//!     }
//!     let (stream, group, started) = (msg.stream.clone(), next.group().to_owned(), Instant::now());
//!     let outcome = next.run(msg).await;
//!     tracing::info!(%stream, %group, took = ?started.elapsed(), ok = outcome.is_ok(), "handled");
//!     outcome
//! });
//! ```

use std::future::Future;
use std::sync::Arc;

use crate::backend::BoxFuture;
use crate::engine::Handler;
use crate::error::HandlerError;
use crate::message::Message;

/// Runs around each handler call of a subscription. Implemented for every
/// `Fn(Message, Next) -> impl Future<Output = Result<(), HandlerError>>` closure.
pub trait Middleware: Send + Sync + 'static {
    /// Handles `message`: usually by calling `next.run(message)` and returning its outcome.
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, Result<(), HandlerError>>;
}

impl<F, Fut> Middleware for F
where
    F: Fn(Message, Next) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn call(&self, message: Message, next: Next) -> BoxFuture<'static, Result<(), HandlerError>> {
        Box::pin(self(message, next))
    }
}

/// The rest of the chain: the next middleware, or the handler.
pub struct Next {
    handler: Handler,
    group: Arc<str>,
}

impl std::fmt::Debug for Next {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Next")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl Next {
    /// Runs the rest of the chain on `message`.
    pub fn run(self, message: Message) -> BoxFuture<'static, Result<(), HandlerError>> {
        (self.handler)(message)
    }

    /// The consumer group the message was claimed for (its stream is `message.stream`).
    pub fn group(&self) -> &str {
        &self.group
    }
}

/// The middleware a service applies, in the order added.
#[derive(Clone, Default)]
pub(crate) struct Chain(Vec<Arc<dyn Middleware>>);

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} middleware", self.0.len())
    }
}

impl Chain {
    pub(crate) fn push(&mut self, middleware: Arc<dyn Middleware>) {
        self.0.push(middleware);
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<dyn Middleware>> {
        self.0.iter()
    }

    /// `handler` wrapped by every middleware, the first outermost; `handler` itself when
    /// there is none.
    pub(crate) fn wrap(&self, handler: Handler, group: &str) -> Handler {
        if self.0.is_empty() {
            return handler;
        }
        let group: Arc<str> = Arc::from(group);
        self.0.iter().rev().fold(handler, |inner, middleware| {
            let (middleware, group) = (middleware.clone(), group.clone());
            Arc::new(move |message| {
                let next = Next {
                    handler: inner.clone(),
                    group: group.clone(),
                };
                middleware.call(message, next)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Message {
        Message::new(
            crate::MessageId::new("1"),
            "app.default.s",
            Vec::new(),
            Default::default(),
            std::time::SystemTime::now(),
            1,
        )
    }

    #[tokio::test]
    async fn no_middleware_leaves_the_handler_as_it_is_and_the_first_runs_outermost() {
        let handler = crate::engine::handler_fn(|_| async { Ok(()) });
        let same = Chain::default().wrap(handler.clone(), "g");
        assert!(Arc::ptr_eq(&handler, &same));

        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut chain = Chain::default();
        for name in ["outer", "inner"] {
            let order = order.clone();
            chain.push(Arc::new(move |msg: Message, next: Next| {
                let order = order.clone();
                async move {
                    order
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(format!("{name} {}", next.group()));
                    next.run(msg).await
                }
            }));
        }
        let wrapped = chain.wrap(handler, "billing");
        assert!(wrapped(message()).await.is_ok());
        assert_eq!(
            *order
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            ["outer billing", "inner billing"]
        );
    }
}
