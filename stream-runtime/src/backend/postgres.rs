//! The Postgres backend (feature `postgres`): durable streams shared by many processes.
//!
//! URL: `postgres://user:password@host:5432/db?schema=streams&application_name=app`.
//! `schema` (default `streams`) names the schema holding the tables; it is created and
//! migrated on connect, under an advisory lock, so processes may start at once. Every other
//! parameter is sqlx's (`sslmode`, `application_name`, `options`, ...); `max_connections`
//! sizes the pool for queries (default 10; one more connection is kept for `LISTEN`).
//! See `docs/postgres.md` for the tables, wake-ups and scaling notes.
//!
//! Each operation is one round trip: the work runs in plpgsql functions the migrations
//! create (`append`, `ensure_group`, `claim`, `ack`, `retry`, `release`, `dead_letter`),
//! each one transaction. `claim`, `ack`, `retry` and `release` commit asynchronously
//! (`synchronous_commit = off` for their own transaction only): a server crash may lose the
//! last of them, which only means a redelivery. `append` and `dead_letter` stay synchronous.
//! Appends lock their stream's row, so a stream's ids are assigned and committed in order
//! and a group's cursor never skips a message that committed late. Timestamps (deadlines,
//! `created_at`, age trims) come from the database's clock only. Wake-ups travel by
//! `LISTEN`/`NOTIFY` on one fixed channel with the stream name as payload.

mod admin;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Executor, Row};
use tokio::task::JoinHandle;

use super::{
    hint_refused, no_answer, redact_url, Backend, BoxFuture, Claim, ClaimToken, Claimed,
    ConnectOptions, GroupRef, Wakeup, WakeupHub,
};
use crate::error::{Error, Result};
use crate::message::{Headers, Message, MessageId, NewMessage};
use crate::options::{StartPosition, Trim};

const NAME: &str = "postgres";

/// The schema used when the URL names none.
pub const DEFAULT_SCHEMA: &str = "streams";

/// The `NOTIFY` channel every append signals on; the payload is the full stream name, so
/// stream names of any case and length work (channel names are identifiers of 63 bytes).
pub const WAKEUP_CHANNEL: &str = "stream_runtime_wakeup";

/// The migrations, in order; `{S}` stands for the quoted schema name.
/// Never edit an applied one: add the next file.
pub const MIGRATIONS: &[&str] = &[
    include_str!("postgres_schema.sql"),
    include_str!("postgres_schema_2.sql"),
    include_str!("postgres_schema_3.sql"),
];

/// Streams, groups and pending claims in Postgres tables.
pub struct PostgresBackend {
    pool: PgPool,
    schema: String,
    sql: Sql,
    wakeups: Arc<WakeupHub>,
    listener: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
}

impl std::fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// The statements, with the schema filled in once.
#[derive(Debug)]
struct Sql {
    append: String,
    ensure_group: String,
    claim: String,
    ack: String,
    retry: String,
    release: String,
    dead_letter: String,
}

impl Sql {
    fn new(s: &str) -> Self {
        Sql {
            append: format!(
                "SELECT a FROM {s}.append($1, $2::bytea[], $3::text[]::jsonb[], $4, \
                 $5 * interval '1 microsecond') AS a"
            ),
            ensure_group: format!("SELECT {s}.ensure_group($1, $2, $3, $4)"),
            claim: format!(
                "SELECT r_id, r_payload, r_headers::text AS r_headers, \
                 (extract(epoch FROM r_created_at) * 1000000)::bigint AS r_created_us, \
                 r_deliveries, r_token \
                 FROM {s}.claim($1, $2, $3, $4, $5 * interval '1 microsecond')"
            ),
            ack: format!("SELECT {s}.ack($1, $2, $3::bigint[], $4::bigint[])"),
            retry: format!("SELECT {s}.retry($1, $2, $3, $4, $5 * interval '1 microsecond')"),
            release: format!("SELECT {s}.release($1, $2, $3::bigint[], $4::bigint[])"),
            dead_letter: format!("SELECT {s}.dead_letter($1, $2, $3, $4, $5, $6, $7::text::jsonb)"),
        }
    }
}

/// `"name"` with embedded quotes doubled: a safe SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn check_schema(schema: &str) -> Result<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && schema
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !schema.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "postgres schema {schema:?} is not valid: use 1 to 63 ASCII letters, digits and \
             underscores, not starting with a digit"
        )))
    }
}

/// Takes our own parameters (`schema`, `max_connections`) out of the URL's query.
fn split_params(url: &str) -> Result<(String, Option<String>, Option<u32>)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None, None));
    };
    let (mut schema, mut max_connections, mut rest) = (None, None, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("schema", value)) => schema = Some(value.to_owned()),
            Some(("max_connections", value)) => {
                max_connections = Some(value.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(
                    || {
                        Error::Config(format!(
                            "backend URL {}: max_connections must be a positive integer, got {value:?}",
                            redact_url(url)
                        ))
                    },
                )?);
            }
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, schema, max_connections))
}

fn micros(d: Duration) -> i64 {
    // Capped at about 100 years: Postgres intervals have a finite range.
    const CAP: u128 = 100 * 365 * 24 * 3600 * 1_000_000;
    i64::try_from(d.as_micros().min(CAP)).unwrap_or(i64::MAX)
}

fn parse_id(id: &str) -> Option<i64> {
    id.parse::<i64>().ok().filter(|n| *n >= 0)
}

fn to_token(token: i64) -> ClaimToken {
    ClaimToken(u64::try_from(token).unwrap_or_default())
}

fn from_token(token: ClaimToken) -> i64 {
    i64::try_from(token.0).unwrap_or(-1)
}

/// Whether a query failed on a deadlock or serialization conflict: safe to run again.
fn is_conflict(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if matches!(e.code().as_deref(), Some("40P01" | "40001")))
}

impl PostgresBackend {
    /// Connects, creates or migrates the schema named by the URL's `schema` parameter
    /// (default `streams`) and starts the `LISTEN` task. Errors show the URL redacted.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, ConnectOptions::default()).await
    }

    /// Like [`connect`](Self::connect), with options (the connect timeout).
    pub async fn connect_with(url: &str, options: ConnectOptions) -> Result<Self> {
        let (sqlx_url, schema, max_connections) = split_params(url)?;
        let schema = schema.unwrap_or_else(|| DEFAULT_SCHEMA.to_owned());
        let max_connections = max_connections.unwrap_or(10);
        Self::open(url, &sqlx_url, &schema, max_connections, options).await
    }

    /// Like [`connect`](Self::connect), with the schema given here (it wins over the URL's).
    pub async fn connect_with_schema(url: &str, schema: &str) -> Result<Self> {
        let (sqlx_url, _, max_connections) = split_params(url)?;
        let max_connections = max_connections.unwrap_or(10);
        Self::open(
            url,
            &sqlx_url,
            schema,
            max_connections,
            ConnectOptions::default(),
        )
        .await
    }

    async fn open(
        url: &str,
        sqlx_url: &str,
        schema: &str,
        max_connections: u32,
        connect: ConnectOptions,
    ) -> Result<Self> {
        let timeout = connect.connect_timeout;
        check_schema(schema)?;
        let redacted = redact_url(url);
        let options: PgConnectOptions = sqlx_url.parse().map_err(|e| {
            Error::Config(format!(
                "backend URL {redacted} is not a valid Postgres URL: {e}"
            ))
        })?;

        // One direct connection first: a clear error at once when the server is unreachable
        // or refuses us (a pool would retry until its acquire timeout), and the migration.
        let timed_out =
            |what: &str| Error::backend(NAME, format!("{what} {redacted}"), no_answer(timeout));
        let mut conn = tokio::time::timeout(
            timeout,
            sqlx::postgres::PgConnection::connect_with(&options),
        )
        .await
        .map_err(|_| timed_out("connecting to"))?
        .map_err(|e| {
            let refused = matches!(&e, sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused);
            Error::backend(NAME, format!("connecting to {redacted}"), hint_refused(e, refused))
        })?;
        let migrating = async {
            migrate(&mut conn, schema).await?;
            conn.close().await
        };
        tokio::time::timeout(timeout, migrating)
            .await
            .map_err(|_| timed_out("migrating the schema at"))?
            .map_err(|e| {
                Error::backend(
                    NAME,
                    format!("creating or migrating schema {schema:?} at {redacted}"),
                    e,
                )
            })?;

        // One more connection than asked for: the LISTEN task keeps one for itself.
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.saturating_add(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options);
        let wakeups = Arc::new(WakeupHub::new());
        let listener = tokio::spawn(listen(pool.clone(), wakeups.clone()));
        Ok(PostgresBackend {
            sql: Sql::new(&quote_ident(schema)),
            schema: schema.to_owned(),
            pool,
            wakeups,
            listener: Mutex::new(Some(listener)),
            closed: AtomicBool::new(false),
        })
    }

    /// The schema holding this backend's tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The connection pool, e.g. for inspecting the tables in tests.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn error(&self, context: String, e: sqlx::Error) -> Error {
        if self.closed.load(Ordering::Acquire) && matches!(e, sqlx::Error::PoolClosed) {
            return Error::Closed;
        }
        Error::backend(NAME, context, e)
    }

    /// One append call. The connection is acquired first: a failure there sent nothing
    /// (`Sent::No`); a failure of the statement itself may have come after the server
    /// committed it (`Sent::Yes`).
    async fn append_once(
        &self,
        stream: &str,
        payloads: &[Vec<u8>],
        headers: &[String],
        trim: Trim,
    ) -> std::result::Result<Vec<i64>, (Sent, sqlx::Error)> {
        let mut conn = self.pool.acquire().await.map_err(|e| (Sent::No, e))?;
        let rows = sqlx::query(&self.sql.append)
            .bind(stream)
            .bind(payloads)
            .bind(headers)
            .bind(i64::try_from(trim.max_len).unwrap_or(i64::MAX))
            .bind(micros(trim.max_age))
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| (Sent::Yes, e))?;
        rows.iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| (Sent::Yes, e))
    }
}

/// Whether a failed call had reached the server.
#[derive(Clone, Copy, Debug)]
enum Sent {
    No,
    Yes,
}

/// Applies missing migrations in one transaction under an advisory lock on the schema's
/// name, so processes starting at once migrate it exactly once.
fn migrate<'a>(
    conn: &'a mut sqlx::postgres::PgConnection,
    schema: &'a str,
) -> BoxFuture<'a, sqlx::Result<()>> {
    // Boxed as `dyn Send`, which keeps `connect` spawnable (sqlx executors trip the
    // compiler's higher-ranked Send inference otherwise).
    Box::pin(async move {
        let s = quote_ident(schema);
        let mut tx = conn.begin().await?;
        // `IF NOT EXISTS` on every start would otherwise log a server NOTICE ("schema ...
        // already exists, skipping") at INFO through sqlx: noise in every application's log.
        (&mut *tx)
            .execute("SET LOCAL client_min_messages = warning")
            .await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("stream_runtime migrate {schema}"))
            .execute(&mut *tx)
            .await?;
        let create = format!(
            "CREATE SCHEMA IF NOT EXISTS {s}; \
             CREATE TABLE IF NOT EXISTS {s}.schema_version ( \
                 version integer PRIMARY KEY, \
                 applied_at timestamptz NOT NULL DEFAULT now())"
        );
        (&mut *tx).execute(sqlx::raw_sql(&create)).await?;
        let current: i32 = sqlx::query_scalar(&format!(
            "SELECT coalesce(max(version), 0) FROM {s}.schema_version"
        ))
        .fetch_one(&mut *tx)
        .await?;
        let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
        if current > known {
            return Err(sqlx::Error::Protocol(format!(
                "schema {schema:?} is at version {current}, newer than this build knows ({known}); \
                 upgrade stream-runtime"
            )));
        }
        for (version, migration) in (1..)
            .zip(MIGRATIONS)
            .skip(usize::try_from(current).unwrap_or(0))
        {
            let sql = migration.replace("{S}", &s);
            (&mut *tx).execute(sqlx::raw_sql(&sql)).await?;
            sqlx::query(&format!(
                "INSERT INTO {s}.schema_version (version) VALUES ($1)"
            ))
            .bind(version)
            .execute(&mut *tx)
            .await?;
            tracing::info!(schema, version, "applied postgres schema migration");
        }
        tx.commit().await
    })
}

/// Feeds `NOTIFY`s into the hub. After every (re)connect, when notifications may have been
/// missed, wakes every local waiter.
async fn listen(pool: PgPool, hub: Arc<WakeupHub>) {
    let mut failures = 0u32;
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(sqlx::Error::PoolClosed) => return,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "postgres LISTEN connection failed; retrying");
                tokio::time::sleep(backoff(failures)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(WAKEUP_CHANNEL).await {
            failures += 1;
            tracing::warn!(error = %e, "postgres LISTEN failed; retrying");
            tokio::time::sleep(backoff(failures)).await;
            continue;
        }
        if failures > 0 {
            tracing::info!("postgres LISTEN connection restored");
        }
        // Whatever was notified while we were not listening is lost: wake everyone.
        hub.notify_all();
        let listening_since = std::time::Instant::now();
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) => hub.notify(n.payload()),
                Ok(None) => {
                    tracing::warn!("postgres LISTEN connection lost; reconnecting");
                    break;
                }
                Err(sqlx::Error::PoolClosed) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "postgres LISTEN connection failed; reconnecting");
                    break;
                }
            }
        }
        // Reconnect at once, unless connections keep dropping right after LISTEN.
        if listening_since.elapsed() < Duration::from_secs(1) {
            failures += 1;
            tokio::time::sleep(backoff(failures)).await;
        } else {
            failures = 1;
        }
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(50)
        .saturating_mul(1 << failures.min(6))
        .min(Duration::from_secs(2))
}

fn claimed_from_row(stream: &Arc<str>, row: &PgRow) -> std::result::Result<Claimed, BoxedError> {
    let id: i64 = row.try_get("r_id")?;
    let payload: Vec<u8> = row.try_get("r_payload")?;
    let headers: String = row.try_get("r_headers")?;
    let headers: Headers = serde_json::from_str(&headers)?;
    let created_at = time_of_micros(row.try_get("r_created_us")?);
    let deliveries: i32 = row.try_get("r_deliveries")?;
    let token: i64 = row.try_get("r_token")?;
    Ok(Claimed {
        message: Message::new(
            MessageId::new(id.to_string()),
            Arc::clone(stream),
            payload,
            headers,
            created_at,
            u32::try_from(deliveries).unwrap_or_default(),
        ),
        token: to_token(token),
    })
}

/// A time given in microseconds since the Unix epoch.
fn time_of_micros(us: i64) -> SystemTime {
    if us >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_micros(us.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_micros(us.unsigned_abs())
    }
}

type BoxedError = Box<dyn std::error::Error + Send + Sync>;

/// Ids and tokens of claims, as two arrays for `unnest`; unparsable ids are left out.
fn claim_arrays(claims: &[Claim]) -> (Vec<i64>, Vec<i64>) {
    claims
        .iter()
        .filter_map(|c| Some((parse_id(c.id.as_str())?, from_token(c.token))))
        .unzip()
}

fn encode_headers(headers: &Headers) -> Result<String> {
    serde_json::to_string(headers).map_err(|e| Error::Encode(Box::new(e)))
}

impl Backend for PostgresBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn append<'a>(
        &'a self,
        stream: &'a str,
        messages: Vec<NewMessage>,
        trim: Trim,
    ) -> BoxFuture<'a, Result<Vec<MessageId>>> {
        Box::pin(async move {
            self.check_open()?;
            if messages.is_empty() {
                return Ok(Vec::new());
            }
            let headers = messages
                .iter()
                .map(|m| encode_headers(&m.headers))
                .collect::<Result<Vec<_>>>()?;
            let payloads: Vec<Vec<u8>> =
                messages.into_iter().map(|m| Vec::from(m.payload)).collect();
            let mut attempt = 0;
            let ids = loop {
                attempt += 1;
                match self.append_once(stream, &payloads, &headers, trim).await {
                    Ok(ids) => break ids,
                    // A deadlock with a claim rolled the whole append back: run it again.
                    Err((_, e)) if attempt < 5 && is_conflict(&e) => continue,
                    // The server answered with an error: the append was rolled back.
                    Err((Sent::Yes, e)) if !matches!(e, sqlx::Error::Database(_)) => {
                        return Err(Error::outcome_unknown(
                            NAME,
                            format!("appending to {stream}"),
                            e,
                        ))
                    }
                    Err((_, e)) => return Err(self.error(format!("appending to {stream}"), e)),
                }
            };
            self.wakeups.notify(stream);
            Ok(ids
                .into_iter()
                .map(|id| MessageId::new(id.to_string()))
                .collect())
        })
    }

    fn ensure_group<'a>(
        &'a self,
        stream: &'a str,
        group: &'a str,
        start: &'a StartPosition,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let (kind, from) = match start {
                StartPosition::Latest => ("latest", 0),
                StartPosition::Earliest => ("earliest", 0),
                StartPosition::FromId(id) => ("id", super::integer_start_id(NAME, id)?),
            };
            self.check_open()?;
            sqlx::query(&self.sql.ensure_group)
                .bind(stream)
                .bind(group)
                .bind(kind)
                .bind(from)
                .execute(&self.pool)
                .await
                .map_err(|e| self.error(format!("creating group {group} of {stream}"), e))?;
            Ok(())
        })
    }

    fn claim<'a>(
        &'a self,
        group: GroupRef<'a>,
        max: usize,
        visibility: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claimed>>> {
        Box::pin(async move {
            self.check_open()?;
            if max == 0 {
                return Ok(Vec::new());
            }
            let context = || {
                format!(
                    "claiming messages of {} for group {}",
                    group.stream, group.group
                )
            };
            let rows = sqlx::query(&self.sql.claim)
                .bind(group.stream)
                .bind(group.group)
                .bind(group.consumer)
                .bind(i32::try_from(max).unwrap_or(i32::MAX))
                .bind(micros(visibility))
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.error(context(), e))?;
            let stream: Arc<str> = Arc::from(group.stream);
            rows.iter()
                .map(|row| {
                    claimed_from_row(&stream, row).map_err(|e| Error::backend(NAME, context(), e))
                })
                .collect()
        })
    }

    fn ack<'a>(&'a self, group: GroupRef<'a>, claims: &'a [Claim]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.check_open()?;
            let (ids, tokens) = claim_arrays(claims);
            if ids.is_empty() {
                return Ok(());
            }
            sqlx::query(&self.sql.ack)
                .bind(group.stream)
                .bind(group.group)
                .bind(&ids)
                .bind(&tokens)
                .execute(&self.pool)
                .await
                .map_err(|e| {
                    self.error(
                        format!(
                            "acknowledging messages of {} for group {}",
                            group.stream, group.group
                        ),
                        e,
                    )
                })?;
            Ok(())
        })
    }

    fn retry<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        delay: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.check_open()?;
            let Some(id) = parse_id(claim.id.as_str()) else {
                return Ok(false);
            };
            let held: bool = sqlx::query_scalar(&self.sql.retry)
                .bind(group.stream)
                .bind(group.group)
                .bind(id)
                .bind(from_token(claim.token))
                .bind(micros(delay))
                .fetch_one(&self.pool)
                .await
                .map_err(|e| {
                    self.error(
                        format!(
                            "scheduling a retry of {} {id} for group {}",
                            group.stream, group.group
                        ),
                        e,
                    )
                })?;
            Ok(held)
        })
    }

    fn dead_letter<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        to: &'a str,
        message: NewMessage,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.check_open()?;
            let Some(id) = parse_id(claim.id.as_str()) else {
                return Ok(false);
            };
            let headers = encode_headers(&message.headers)?;
            let context = || {
                format!(
                    "moving {} {id} of group {} to dead-letter stream {to}",
                    group.stream, group.group
                )
            };
            let mut attempt = 0;
            let new_id: Option<i64> = loop {
                attempt += 1;
                let result = sqlx::query_scalar(&self.sql.dead_letter)
                    .bind(group.stream)
                    .bind(group.group)
                    .bind(id)
                    .bind(from_token(claim.token))
                    .bind(to)
                    .bind(&message.payload[..])
                    .bind(&headers)
                    .fetch_one(&self.pool)
                    .await;
                match result {
                    Ok(new_id) => break new_id,
                    Err(e) if attempt < 5 && is_conflict(&e) => continue,
                    Err(e) => return Err(self.error(context(), e)),
                }
            };
            if new_id.is_some() {
                self.wakeups.notify(to);
            }
            Ok(new_id.is_some())
        })
    }

    fn release<'a>(
        &'a self,
        group: GroupRef<'a>,
        claims: &'a [Claim],
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.check_open()?;
            let (ids, tokens) = claim_arrays(claims);
            if ids.is_empty() {
                return Ok(());
            }
            sqlx::query(&self.sql.release)
                .bind(group.stream)
                .bind(group.group)
                .bind(&ids)
                .bind(&tokens)
                .execute(&self.pool)
                .await
                .map_err(|e| {
                    self.error(
                        format!(
                            "releasing messages of {} for group {}",
                            group.stream, group.group
                        ),
                        e,
                    )
                })?;
            self.wakeups.notify(group.stream);
            Ok(())
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.check_open()?;
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map_err(|e| self.error("checking the server".to_owned(), e))?;
            Ok(())
        })
    }

    fn wakeup(&self, stream: &str) -> Wakeup {
        self.wakeups.subscribe(stream)
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.closed.swap(true, Ordering::AcqRel) {
                return Ok(());
            }
            let listener = self
                .listener
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(listener) = listener {
                listener.abort();
            }
            self.pool.close().await;
            self.wakeups.notify_all();
            Ok(())
        })
    }
}

impl Drop for PostgresBackend {
    fn drop(&mut self) {
        if let Some(listener) = self
            .listener
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            listener.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_and_pool_params_are_taken_out_of_the_url() {
        let (url, schema, max) =
            split_params("postgres://u:p@h/db?schema=s1&application_name=x&max_connections=3")
                .expect("valid");
        assert_eq!(url, "postgres://u:p@h/db?application_name=x");
        assert_eq!(schema.as_deref(), Some("s1"));
        assert_eq!(max, Some(3));
        let (url, schema, max) = split_params("postgres://h/db").expect("valid");
        assert_eq!((url.as_str(), schema, max), ("postgres://h/db", None, None));
        let err =
            split_params("postgres://u:secret@h/db?max_connections=x").expect_err("not a number");
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn schema_names_are_checked() {
        assert!(check_schema("streams_1").is_ok());
        for bad in ["", "1x", "a-b", "a\"b", &"x".repeat(64)] {
            assert!(check_schema(bad).is_err(), "{bad}");
        }
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn connect_is_send() {
        fn is_send<T: Send>(_: T) {}
        is_send(PostgresBackend::connect(""));
    }
}
