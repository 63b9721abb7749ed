//! Transactions on the streams' own database (Postgres and SQLite): publishing inside the
//! caller's transaction, and handlers whose writes commit together with their ack.
//!
//! - [`Service::publish_in`](crate::Service::publish_in) (and `publish_batch_in`,
//!   `publish_json_in`) append inside a transaction the caller holds: the messages exist
//!   only if and when it commits, consumers are woken after the commit, and a rollback
//!   leaves no trace. It takes a `&mut` [`TxConnection`]: a `sqlx::PgConnection` or
//!   `sqlx::SqliteConnection`, which a `sqlx::Transaction` derefs to (`&mut *tx`).
//! - A transactional handler ([`Service::subscribe_transactional`](crate::Service::subscribe_transactional),
//!   or `#[consumer(..., transactional)]` with a `tx: &mut PostgresTx` / `&mut SqliteTx`
//!   argument) runs inside a transaction the engine begins; after the handler returns `Ok`,
//!   the engine acknowledges the message in the same transaction, fenced by its claim, and
//!   commits. A claim taken over meanwhile, an error or a panic roll everything back.
//!
//! On the memory and Redis backends (and with a transaction of the other SQL database)
//! these calls fail with [`Error::TransactionsUnsupported`].
//!
//! See `docs/transactions.md` for what becomes exactly-once and what stays at-least-once.

use std::sync::Arc;

use crate::backend::{BoxFuture, Claim, SharedBackend, SqlBackend};
use crate::engine::catch_unwind::CatchUnwind;
use crate::engine::Handler;
use crate::error::{Error, HandlerError, Result};
use crate::message::{Message, MessageId, NewMessage};
use crate::options::{Isolation, Trim};

/// The transaction a transactional handler receives on the Postgres backend.
#[cfg(feature = "postgres")]
pub type PostgresTx = sqlx::Transaction<'static, sqlx::Postgres>;

/// The transaction a transactional handler receives on the SQLite backend.
#[cfg(feature = "sqlite")]
pub type SqliteTx = sqlx::Transaction<'static, sqlx::Sqlite>;

mod sealed {
    use super::*;

    /// What the engine does with a connection or a transaction of one SQL database.
    pub trait Connection: Send {
        /// Appends on this connection, in its transaction.
        fn append_in<'a>(
            &'a mut self,
            backend: &'a SharedBackend,
            stream: &'a str,
            messages: Vec<NewMessage>,
            trim: Trim,
        ) -> BoxFuture<'a, Result<Vec<MessageId>>>;
    }

    pub trait Transaction: Sized + Send + 'static {
        /// `"postgres"` or `"sqlite"`.
        const DATABASE: &'static str;

        /// Begins on `pool` when given (checked to reach the backend's database), else on
        /// the backend's own pool.
        fn begin<'a>(
            backend: &'a SharedBackend,
            pool: Option<&'a TransactionPool>,
            isolation: Isolation,
        ) -> BoxFuture<'a, Result<Self>>;

        /// The fenced ack: false when the claim is no longer held.
        fn ack_in<'a>(
            &'a mut self,
            backend: &'a SharedBackend,
            stream: &'a str,
            group: &'a str,
            claim: &'a Claim,
        ) -> BoxFuture<'a, Result<bool>>;

        fn commit(self) -> BoxFuture<'static, std::result::Result<(), sqlx::Error>>;

        fn rollback(self) -> BoxFuture<'static, std::result::Result<(), sqlx::Error>>;
    }
}

/// A connection a publish can run on inside the caller's transaction: `sqlx::PgConnection`
/// (Postgres backend) or `sqlx::SqliteConnection` (SQLite backend). A `sqlx::Transaction`
/// derefs to one: pass `&mut *tx`. Sealed.
pub trait TxConnection: sealed::Connection {}

#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a transaction a transactional consumer can take",
    label = "take `&mut PostgresTx` (Postgres backend) or `&mut SqliteTx` (SQLite backend)",
    note = "a transactional handler runs in a transaction on the streams' own database"
)]
/// A transaction type a transactional handler can take, and [`Service::begin`](crate::Service::begin)
/// can return: [`PostgresTx`] or [`SqliteTx`]. Sealed.
pub trait DatabaseTx: sealed::Transaction {}

fn unsupported(what: &'static str, backend: &SharedBackend, requested: &'static str) -> Error {
    Error::TransactionsUnsupported {
        what,
        backend: backend.name(),
        requested,
    }
}

const PUBLISHING: &str = "publishing inside a transaction";

/// The sealed traits for one SQL database: its connection type and transaction type, whose
/// calls go to its backend (`SqlBackend::$variant`) or fail naming what supports them.
macro_rules! sql_database {
    ($feature:literal, $module:ident, $name:literal, $variant:ident, $conn:ty, $tx:ty) => {
        #[cfg(feature = $feature)]
        mod $module {
            use super::*;

            impl sealed::Connection for $conn {
                fn append_in<'a>(
                    &'a mut self,
                    backend: &'a SharedBackend,
                    stream: &'a str,
                    messages: Vec<NewMessage>,
                    trim: Trim,
                ) -> BoxFuture<'a, Result<Vec<MessageId>>> {
                    Box::pin(async move {
                        match backend.sql() {
                            Some(SqlBackend::$variant(db)) => {
                                db.append_in(self, stream, messages, trim).await
                            }
                            _ => Err(unsupported(PUBLISHING, backend, $name)),
                        }
                    })
                }
            }
            impl TxConnection for $conn {}

            impl sealed::Transaction for $tx {
                const DATABASE: &'static str = $name;

                fn begin<'a>(
                    backend: &'a SharedBackend,
                    pool: Option<&'a TransactionPool>,
                    isolation: Isolation,
                ) -> BoxFuture<'a, Result<Self>> {
                    Box::pin(async move {
                        match (backend.sql(), pool) {
                            (Some(SqlBackend::$variant(db)), None) => db.begin_tx(isolation).await,
                            (
                                Some(SqlBackend::$variant(db)),
                                Some(TransactionPool::$variant(pool)),
                            ) => db.begin_tx_on(pool, isolation).await,
                            _ => Err(unsupported("a transaction", backend, $name)),
                        }
                    })
                }

                fn ack_in<'a>(
                    &'a mut self,
                    backend: &'a SharedBackend,
                    stream: &'a str,
                    group: &'a str,
                    claim: &'a Claim,
                ) -> BoxFuture<'a, Result<bool>> {
                    Box::pin(async move {
                        match backend.sql() {
                            Some(SqlBackend::$variant(db)) => {
                                db.ack_in(self, stream, group, claim).await
                            }
                            _ => Err(unsupported("a transactional handler", backend, $name)),
                        }
                    })
                }

                fn commit(self) -> BoxFuture<'static, std::result::Result<(), sqlx::Error>> {
                    Box::pin(sqlx::Transaction::commit(self))
                }

                fn rollback(self) -> BoxFuture<'static, std::result::Result<(), sqlx::Error>> {
                    Box::pin(sqlx::Transaction::rollback(self))
                }
            }
            impl DatabaseTx for $tx {}
        }
    };
}

sql_database!(
    "postgres",
    postgres_impls,
    "postgres",
    Postgres,
    sqlx::PgConnection,
    PostgresTx
);
sql_database!(
    "sqlite",
    sqlite_impls,
    "sqlite",
    Sqlite,
    sqlx::SqliteConnection,
    SqliteTx
);

/// Appends on `conn`, in its transaction, if `backend` keeps its streams in that database.
pub(crate) async fn append_in<C: TxConnection>(
    conn: &mut C,
    backend: &SharedBackend,
    stream: &str,
    messages: Vec<NewMessage>,
    trim: Trim,
) -> Result<Vec<MessageId>> {
    sealed::Connection::append_in(conn, backend, stream, messages, trim).await
}

/// The database of transaction type `T`: `"postgres"` or `"sqlite"`.
pub(crate) const fn database<T: DatabaseTx>() -> &'static str {
    <T as sealed::Transaction>::DATABASE
}

/// Begins a transaction of type `T` on `pool`, else on `backend`'s own pool.
pub(crate) async fn begin<T: DatabaseTx>(
    backend: &SharedBackend,
    pool: Option<&TransactionPool>,
    isolation: Isolation,
) -> Result<T> {
    <T as sealed::Transaction>::begin(backend, pool, isolation).await
}

/// A pool of your own on the service's database, for the transactions the service begins
/// (transactional handlers, [`Service::begin`](crate::Service::begin)) instead of its own
/// pool: see [`Service::set_transaction_pool`](crate::Service::set_transaction_pool) and
/// [`Runtime::transaction_pool`](crate::Runtime::transaction_pool). Made with `.into()`
/// from a `sqlx::PgPool` or a `sqlx::SqlitePool`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum TransactionPool {
    /// A pool on the Postgres database (and server) of the service's backend.
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
    /// A pool on the SQLite database file of the service's backend.
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
}

impl TransactionPool {
    /// `"postgres"` or `"sqlite"`.
    pub fn database(&self) -> &'static str {
        match *self {
            #[cfg(feature = "postgres")]
            TransactionPool::Postgres(_) => "postgres",
            #[cfg(feature = "sqlite")]
            TransactionPool::Sqlite(_) => "sqlite",
        }
    }
}

#[cfg(feature = "postgres")]
impl From<sqlx::PgPool> for TransactionPool {
    fn from(pool: sqlx::PgPool) -> Self {
        TransactionPool::Postgres(pool)
    }
}

#[cfg(feature = "sqlite")]
impl From<sqlx::SqlitePool> for TransactionPool {
    fn from(pool: sqlx::SqlitePool) -> Self {
        TransactionPool::Sqlite(pool)
    }
}

/// Checks that `pool` reaches the database `backend` keeps its streams in:
/// [`Error::TransactionPoolMismatch`] naming both when not, and
/// [`Error::TransactionsUnsupported`] for a pool of another kind of database.
pub(crate) async fn check_pool(backend: &SharedBackend, pool: &TransactionPool) -> Result<()> {
    match (backend.sql(), pool) {
        #[cfg(feature = "postgres")]
        (Some(SqlBackend::Postgres(db)), TransactionPool::Postgres(pool)) => {
            db.check_same_database(pool).await
        }
        #[cfg(feature = "sqlite")]
        (Some(SqlBackend::Sqlite(db)), TransactionPool::Sqlite(pool)) => {
            db.check_same_database(pool).await
        }
        _ => Err(unsupported("a transaction pool", backend, pool.database())),
    }
}

#[cfg(feature = "sqlite")]
tokio::task_local! {
    /// Set while a transactional handler runs on SQLite: its transaction holds the
    /// database's write lock, so a plain append from it could only wait.
    static IN_SQLITE_HANDLER: ();
}

/// True inside a transactional handler on SQLite (see [`Error::PublishOutsideTransaction`]).
#[cfg(feature = "sqlite")]
pub(crate) fn in_sqlite_handler() -> bool {
    IN_SQLITE_HANDLER.try_with(|_| ()).is_ok()
}

/// Returns `handler` as is: a closure kept in a variable before it is given to
/// [`Service::subscribe_transactional`](crate::Service::subscribe_transactional) needs this
/// to be typed as taking a transaction of any lifetime.
///
/// ```
/// use stream_runtime::{transaction, HandlerError, Message, SqliteTx};
///
/// let handler = transaction::handler_fn(|msg: Message, tx: &mut SqliteTx| {
///     Box::pin(async move {
///         sqlx::query("INSERT INTO seen (id) VALUES ($1)")
///             .bind(msg.id.to_string())
///             .execute(&mut **tx)
///             .await
///             .map_err(HandlerError::retry)?;
///         Ok(())
///     })
/// });
/// # drop(handler);
/// ```
pub fn handler_fn<T, F>(handler: F) -> F
where
    T: DatabaseTx,
    F: for<'t> Fn(Message, &'t mut T) -> BoxFuture<'t, Result<(), HandlerError>>
        + Send
        + Sync
        + 'static,
{
    handler
}

/// Where a transactional handler finds its service: given at once, or once the runtime has
/// connected.
pub(crate) type ServiceSlot = Arc<std::sync::OnceLock<crate::Service>>;

/// A transactional handler as the engine runs it: begin, run `handler`, ack fenced by the
/// claim in the same transaction, commit; any failure rolls back first.
pub(crate) fn wrap<T, F>(
    service: ServiceSlot,
    group: Arc<str>,
    isolation: Option<Isolation>,
    handler: F,
) -> Handler
where
    T: DatabaseTx,
    F: for<'t> Fn(Message, &'t mut T) -> BoxFuture<'t, Result<(), HandlerError>>
        + Send
        + Sync
        + 'static,
{
    let handler = Arc::new(handler);
    Arc::new(move |message: Message| {
        let (service, group, handler) = (service.clone(), group.clone(), handler.clone());
        Box::pin(async move {
            let Some(service) = service.get() else {
                return Err(HandlerError::retry(
                    "the transactional handler's runtime has not connected yet",
                ));
            };
            run::<T, F>(service, &group, isolation, &*handler, message).await
        })
    })
}

async fn run<T, F>(
    service: &crate::Service,
    group: &str,
    isolation: Option<Isolation>,
    handler: &F,
    message: Message,
) -> Result<(), HandlerError>
where
    T: DatabaseTx,
    F: for<'t> Fn(Message, &'t mut T) -> BoxFuture<'t, Result<(), HandlerError>> + Send + Sync,
{
    let backend = service.backend();
    let isolation = isolation.unwrap_or(service.config().transaction_isolation);
    let pool = service.transaction_pool();
    let mut tx = T::begin(backend, pool.as_ref(), isolation)
        .await
        .map_err(|e| {
            HandlerError::retry(format!("beginning the handler's transaction failed: {e}"))
        })?;
    let claim = Claim {
        id: message.id.clone(),
        token: message.token,
    };
    let stream = message.stream.clone();
    // A panic is caught here so that the rollback runs before the retry decision.
    let running = CatchUnwind(handler(message, &mut tx));
    #[cfg(feature = "sqlite")]
    let running = async {
        if database::<T>() == "sqlite" {
            IN_SQLITE_HANDLER.scope((), running).await
        } else {
            running.await
        }
    };
    let outcome = match running.await {
        Ok(outcome) => outcome,
        Err(panic) => Err(HandlerError::retry(format!("handler panicked: {panic}"))),
    };
    if let Err(error) = outcome {
        rollback(tx).await;
        return Err(error);
    }
    match tx.ack_in(backend, &stream, group, &claim).await {
        Ok(true) => {}
        Ok(false) => {
            rollback(tx).await;
            return Err(HandlerError::retry(format!(
                "the claim on message {} was taken over by another worker (the handler ran past \
                 its visibility timeout); its transaction was rolled back, and the new owner \
                 handles the message",
                claim.id
            )));
        }
        Err(e) => {
            rollback(tx).await;
            return Err(HandlerError::retry(format!(
                "acknowledging inside the handler's transaction failed, so it was rolled back: {e}"
            )));
        }
    }
    tx.commit().await.map_err(|e| {
        HandlerError::retry(format!(
            "committing the handler's transaction failed: {e}; its writes and its ack go \
             together, so the message comes back unless the commit took effect"
        ))
    })
}

async fn rollback<T: DatabaseTx>(tx: T) {
    if let Err(e) = tx.rollback().await {
        // The connection closes on such an error, and the server rolls back then.
        tracing::debug!(error = %e, "rolling a handler's transaction back failed");
    }
}
