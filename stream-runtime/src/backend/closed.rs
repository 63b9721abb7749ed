//! The closed flag every backend keeps: set once by `close`, checked by every call.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// Whether a backend was closed.
#[derive(Debug, Default)]
pub(crate) struct Closed(AtomicBool);

impl Closed {
    /// Whether `close` was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// [`Error::Closed`] once closed.
    pub(crate) fn check(&self) -> Result<()> {
        if self.is_closed() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Marks the backend closed; true for the one call that closed it.
    pub(crate) fn close(&self) -> bool {
        !self.0.swap(true, Ordering::AcqRel)
    }
}
