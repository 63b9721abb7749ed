//! What connecting to a server shares across backends: the options, and the words of its
//! errors ("no answer within 15s", the hint for a refused connection).

use std::fmt;
use std::time::Duration;

use crate::error::BoxError;

/// The default of [`ConnectOptions::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How to connect, besides the URL: see [`connect_with`](super::connect_with).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// How long connecting to a server (Postgres, Redis) and preparing its schema may take
    /// before it fails with "no answer within ..." (default 15 s). Not used by SQLite and
    /// memory, which have no server.
    pub connect_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

impl ConnectOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

/// The error of a server that did not answer in time: the same words on every backend.
pub(crate) fn no_answer(timeout: Duration) -> BoxError {
    format!(
        "no answer within {} (`connect_timeout`); is the server running and reachable, and \
         are the host and port right?",
        crate::config::format_duration(timeout)
    )
    .into()
}

/// What to check when a server refused the connection.
pub(crate) const REFUSED_HINT: &str = "is the server running, and are the host and port right?";

/// A client library's error with a hint of what to check after it; the error stays the
/// source.
#[derive(Debug)]
pub(crate) struct Hinted {
    pub error: BoxError,
    pub hint: &'static str,
}

impl fmt::Display for Hinted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.error, self.hint)
    }
}

impl std::error::Error for Hinted {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.error)
    }
}

/// `error`, with [`REFUSED_HINT`] when `refused`.
pub(crate) fn hint_refused(error: impl Into<BoxError>, refused: bool) -> BoxError {
    let error = error.into();
    if refused {
        Box::new(Hinted {
            error,
            hint: REFUSED_HINT,
        })
    } else {
        error
    }
}
