//! Consumers declared with `#[consumer]`, collected at link time (D4).
//!
//! The attribute registers a [`ConsumerDef`]; [`consumers`] returns them all, validated:
//! two consumers with the same name, or two on the same stream and group, are an error
//! naming both places.
//!
//! **Linker caveat.** Registration rides on the linker: a consumer defined in a library
//! crate that nothing in the final binary references is dropped with that crate. If a
//! consumer is missing at startup, reference its crate from the binary, e.g.
//! `use my_consumers as _;` in `main.rs`.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::batch::BatchHandler;
use crate::engine::Handler;
use crate::error::{Error, Result};
use crate::options::{MaxRetries, RetryDelay};

/// One `#[consumer]` as the attribute declared it.
#[derive(Debug)]
#[non_exhaustive]
pub struct ConsumerDef {
    /// Unique name (the function's name unless `name = "..."`); keys `Streams.toml` overrides.
    pub name: &'static str,
    /// Short stream name.
    pub stream: &'static str,
    /// Consumer group.
    pub group: &'static str,
    /// Settings given in the attribute.
    pub attributes: Attributes,
    /// Where the attribute is.
    pub location: Location,
    /// The payload type's name, for logs.
    pub payload_type: &'static str,
    /// Builds the handler, taking shared state from `states` (an error names a missing one).
    /// For a batch consumer (see `batch`), an error.
    pub build: fn(&States) -> Result<Handler>,
    /// Builds the batch handler of a consumer taking a batch (`Vec<T>` with `batch_size`, or
    /// `Batch<T>`); `None` for a per-message consumer.
    pub batch: Option<fn(&States) -> Result<BatchHandler>>,
}

impl ConsumerDef {
    /// Used by generated code only.
    #[doc(hidden)]
    #[allow(clippy::too_many_arguments)]
    pub const fn __new(
        name: &'static str,
        stream: &'static str,
        group: &'static str,
        attributes: Attributes,
        location: Location,
        payload_type: &'static str,
        build: fn(&States) -> Result<Handler>,
    ) -> Self {
        ConsumerDef {
            name,
            stream,
            group,
            attributes,
            location,
            payload_type,
            build,
            batch: None,
        }
    }

    /// Used by generated code only: a consumer taking a batch.
    #[doc(hidden)]
    pub const fn __new_batch(
        name: &'static str,
        stream: &'static str,
        group: &'static str,
        attributes: Attributes,
        location: Location,
        payload_type: &'static str,
        build: fn(&States) -> Result<BatchHandler>,
    ) -> Self {
        let mut def = Self::__new(
            name,
            stream,
            group,
            attributes,
            location,
            payload_type,
            no_message_handler,
        );
        def.batch = Some(build);
        def
    }
}

/// The per-message `build` of a batch consumer.
fn no_message_handler(_: &States) -> Result<Handler> {
    Err(Error::Registry(
        "this consumer takes a batch: build it with its `batch` function".to_owned(),
    ))
}

/// A consumer's handler, built.
pub(crate) enum Built {
    /// One message per call.
    Message(Handler),
    /// A batch per call.
    Batch(BatchHandler),
}

impl Built {
    /// Subscribes it on `service` with `options`.
    pub(crate) async fn subscribe(
        self,
        service: &crate::Service,
        def: &ConsumerDef,
        options: crate::SubscribeOptions,
    ) -> Result<crate::Consumer> {
        use crate::service::Subscriber;
        match self {
            Built::Message(handler) => {
                service
                    .subscribe_handler(def.stream, def.group, handler, options)
                    .await
            }
            Built::Batch(handler) => {
                service
                    .subscribe_batch_handler(def.stream, def.group, handler, options)
                    .await
            }
        }
    }
}

impl ConsumerDef {
    /// Builds the handler from `states`; the error names the consumer and its place.
    /// Builds the handler with the application's `states` plus `publisher`, which a
    /// `Publisher` argument receives (bound to the consumer's app and namespace).
    pub(crate) fn handler(
        &self,
        states: &States,
        publisher: crate::publisher::Publisher,
    ) -> Result<Built> {
        let mut states = states.clone();
        states.insert(publisher);
        let built = match self.batch {
            None => (self.build)(&states).map(Built::Message),
            Some(build) => build(&states).map(Built::Batch),
        };
        built.map_err(|e| {
            Error::Runtime(format!(
                "consumer {} ({}) could not be built: {e}",
                self.name, self.location
            ))
        })
    }

    /// The error for this consumer failing to start with `source`; `reason` is its text
    /// (redacted where it may name the backend URL).
    pub(crate) fn start_error(&self, reason: String, source: Error) -> Error {
        Error::ConsumerStart {
            consumer: self.name,
            location: self.location,
            stream: self.stream,
            group: self.group,
            reason,
            source: Box::new(source),
        }
    }
}

/// The optional settings of `#[consumer(...)]`; `None` = not given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Attributes {
    /// `max_retries = N` or `"unlimited"`.
    pub max_retries: Option<MaxRetries>,
    /// `concurrency = N`.
    pub concurrency: Option<usize>,
    /// `visibility_timeout = "30s"`.
    pub visibility_timeout: Option<Duration>,
    /// `poll_interval = "1s"`.
    pub poll_interval: Option<Duration>,
    /// `shutdown_timeout = "30s"`.
    pub shutdown_timeout: Option<Duration>,
    /// `retry_delay = "5s"`, `"visibility_timeout"` or `retry_delay(base = "100ms", max = "5s")`.
    pub retry_delay: Option<RetryDelay>,
    /// `start = "latest" | "earliest" | "<id>"`.
    pub start: Option<&'static str>,
    /// `dead_letter = "short-name"`.
    pub dead_letter: Option<&'static str>,
    /// `app = "..."`.
    pub app: Option<&'static str>,
    /// `namespace = "..."`.
    pub namespace: Option<&'static str>,
    /// `transactional`: the handler runs in a transaction that commits with its ack, on
    /// this database (`"postgres"`, `"sqlite"`).
    pub transactional: Option<&'static str>,
    /// `heartbeat` (or `heartbeat = true|false`): extend the claims of running handlers.
    pub heartbeat: Option<bool>,
    /// `ordered = "key"`: messages sharing a key one at a time, in stream order.
    pub ordered: Option<crate::key_order::Order>,
    /// `batch_size = N`: the most messages one call of a batch handler gets.
    pub batch_size: Option<usize>,
    /// `batch_wait = "50ms"`: how long a short batch waits to fill.
    pub batch_wait: Option<Duration>,
}

impl Attributes {
    /// No setting given.
    pub const NONE: Attributes = Attributes {
        max_retries: None,
        concurrency: None,
        visibility_timeout: None,
        poll_interval: None,
        shutdown_timeout: None,
        retry_delay: None,
        start: None,
        dead_letter: None,
        app: None,
        namespace: None,
        transactional: None,
        heartbeat: None,
        ordered: None,
        batch_size: None,
        batch_wait: None,
    };
}

/// A source location.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// File path as `file!()` gives it.
    pub file: &'static str,
    /// Line.
    pub line: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

inventory::collect!(ConsumerDef);

/// Every registered consumer, sorted by name, after checking for duplicates.
pub fn consumers() -> Result<Vec<&'static ConsumerDef>> {
    validate(inventory::iter::<ConsumerDef>.into_iter().collect())
}

/// Checks a set of definitions for duplicate names and duplicate stream/group pairs.
pub fn validate(mut defs: Vec<&'static ConsumerDef>) -> Result<Vec<&'static ConsumerDef>> {
    defs.sort_by_key(|d| (d.name, d.location.file, d.location.line));
    let mut problems = Vec::new();
    let mut by_name: HashMap<&str, &ConsumerDef> = HashMap::new();
    // (app override, namespace override, stream, group)
    type Target<'a> = (Option<&'a str>, Option<&'a str>, &'a str, &'a str);
    let mut by_target: HashMap<Target<'_>, &ConsumerDef> = HashMap::new();
    for def in &defs {
        if let Some(first) = by_name.insert(def.name, def) {
            problems.push(format!(
                "two consumers are named {:?}: at {} and at {}; give one a different `name = \"...\"`",
                def.name, first.location, def.location
            ));
        }
        let target = (
            def.attributes.app,
            def.attributes.namespace,
            def.stream,
            def.group,
        );
        if let Some(first) = by_target.insert(target, def) {
            problems.push(format!(
                "stream {:?} and group {:?} are registered twice: {} at {} and {} at {}; \
                 use one consumer with `concurrency`, or a different group",
                def.stream, def.group, first.name, first.location, def.name, def.location
            ));
        }
    }
    if problems.is_empty() {
        Ok(defs)
    } else {
        Err(Error::Registry(problems.join("; ")))
    }
}

/// Shared application state handed to handlers that take a [`State<T>`] argument.
#[derive(Clone, Default)]
pub struct States {
    by_type: HashMap<TypeId, (&'static str, Arc<dyn Any + Send + Sync>)>,
}

impl fmt::Debug for States {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("States")
            .field("types", &self.type_names())
            .finish()
    }
}

impl States {
    /// No state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the state of type `T`.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        self.by_type.insert(
            TypeId::of::<T>(),
            (std::any::type_name::<T>(), Arc::new(value)),
        );
    }

    /// The state of type `T`, if given.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<State<T>> {
        self.by_type
            .get(&TypeId::of::<T>())
            .and_then(|(_, any)| any.clone().downcast::<T>().ok())
            .map(State)
    }

    /// The types of the states given, sorted.
    pub fn type_names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.by_type.values().map(|(name, _)| *name).collect();
        names.sort_unstable();
        names
    }

    /// The error for a consumer taking `State<T>` when no `T` was given: it lists the
    /// states that were, and spots an `Arc` too many or too few.
    pub(crate) fn missing<T: 'static>(&self, consumer: &str) -> Error {
        let wanted = std::any::type_name::<T>();
        let given = self.type_names();
        let listed = if given.is_empty() {
            "no state was given at all".to_owned()
        } else {
            format!("states given: {}", given.join(", "))
        };
        let arc = |inner: &str| format!("alloc::sync::Arc<{inner}>");
        let hint = if given.iter().any(|g| *g == arc(wanted)) {
            format!(
                "; an `Arc<{wanted}>` was given: give the value itself with `.state(value)` \
                 (State<T> shares it in an `Arc` already), or take `State<Arc<{wanted}>>`"
            )
        } else if let Some(inner) = wanted
            .strip_prefix("alloc::sync::Arc<")
            .and_then(|w| w.strip_suffix('>'))
            .filter(|inner| given.contains(inner))
        {
            format!("; a `{inner}` was given: take `State<{inner}>`, which is shared already")
        } else {
            String::new()
        };
        Error::Registry(format!(
            "consumer {consumer:?} takes `State<{wanted}>`, but no state of that type was \
             given ({listed}{hint}); add it to the runtime with `.state(value)` before starting"
        ))
    }
}

/// A handler argument giving shared application state of type `T`, added to the runtime
/// with `state(value)`.
#[derive(Debug)]
pub struct State<T>(pub Arc<T>);

impl<T> Clone for State<T> {
    fn clone(&self) -> Self {
        State(self.0.clone())
    }
}

impl<T> std::ops::Deref for State<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}
