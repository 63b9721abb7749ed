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
mod connect;
mod listen;
mod ordered;
mod schema;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use sqlx::postgres::{PgConnection, PgPool, PgRow};
use sqlx::Row;
use tokio::task::JoinHandle;

use super::{Backend, BoxFuture, Claim, ClaimToken, Claimed, GroupRef, Wakeup, WakeupHub};
use crate::backend::closed::Closed;
use crate::error::{Error, Result};
use crate::message::{Headers, Message, MessageId, NewMessage};
use crate::options::{StartPosition, Trim};

use listen::listen;
pub use schema::MIGRATIONS;
use schema::{check_schema, migrate, quote_ident};

const NAME: &str = "postgres";

/// The schema used when the URL names none.
pub const DEFAULT_SCHEMA: &str = "streams";

/// The `NOTIFY` channel every append signals on; the payload is the full stream name, so
/// stream names of any case and length work (channel names are identifiers of 63 bytes).
pub const WAKEUP_CHANNEL: &str = "stream_runtime_wakeup";

/// Streams, groups and pending claims in Postgres tables.
pub struct PostgresBackend {
    pool: PgPool,
    schema: String,
    sql: Sql,
    wakeups: Arc<WakeupHub>,
    listener: Mutex<Option<JoinHandle<()>>>,
    closed: Closed,
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
    /// One fenced ack as a plain statement, for a caller's transaction: the `ack` function
    /// would turn that whole transaction's commit asynchronous.
    ack_one: String,
    /// Pushes held claims' deadlines out (a plain statement: no migration needed).
    extend: String,
    /// Makes a held claim claimable after a delay and gives its delivery back.
    postpone: String,
    /// The claim of a group ordered by key (migrations/0005_key_order.sql).
    claim_ordered: String,
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
            ack_one: format!(
                "DELETE FROM {s}.pending p USING {s}.groups g, {s}.streams st \
                 WHERE st.name = $1 AND g.stream_id = st.stream_id AND g.name = $2 \
                 AND p.group_id = g.group_id AND p.msg_id = $3 AND p.token = $4 \
                 AND p.token <> 0"
            ),
            // Committed asynchronously, like the other settling calls (`set_config` in a
            // CTE applies to the statement's own transaction): a server crash may lose an
            // extension or a postponement, and the claim then expires at its old deadline.
            extend: format!(
                "WITH c AS (SELECT set_config('synchronous_commit', 'off', true)) \
                 UPDATE {s}.pending p \
                 SET deadline = clock_timestamp() + $5 * interval '1 microsecond' \
                 FROM c, {s}.groups g, {s}.streams st \
                 WHERE st.name = $1 AND g.stream_id = st.stream_id AND g.name = $2 \
                 AND p.group_id = g.group_id AND p.token <> 0 \
                 AND (p.msg_id, p.token) IN (SELECT * FROM unnest($3::bigint[], $4::bigint[])) \
                 RETURNING p.msg_id, p.token"
            ),
            postpone: format!(
                "WITH c AS (SELECT set_config('synchronous_commit', 'off', true)) \
                 UPDATE {s}.pending p \
                 SET token = 0, deadline = clock_timestamp() + $5 * interval '1 microsecond', \
                 deliveries = greatest(p.deliveries - 1, 0) \
                 FROM c, {s}.groups g, {s}.streams st \
                 WHERE st.name = $1 AND g.stream_id = st.stream_id AND g.name = $2 \
                 AND p.group_id = g.group_id AND p.msg_id = $3 AND p.token = $4 \
                 AND p.token <> 0"
            ),
            claim_ordered: format!(
                "SELECT r_id, r_payload, r_headers::text AS r_headers, \
                 (extract(epoch FROM r_created_at) * 1000000)::bigint AS r_created_us, \
                 r_deliveries, r_token \
                 FROM {s}.claim_ordered($1, $2, $3, $4, $5 * interval '1 microsecond')"
            ),
        }
    }
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
    /// The schema holding this backend's tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The connection pool, e.g. for inspecting the tables in tests.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn error(&self, context: String, e: sqlx::Error) -> Error {
        if self.closed.is_closed() && matches!(e, sqlx::Error::PoolClosed) {
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
        self.append_on(&mut conn, stream, payloads, headers, trim)
            .await
            .map_err(|e| (Sent::Yes, e))
    }

    /// The append statement on `conn`, in whatever transaction it is in: on its own (one
    /// transaction), or inside a caller's, where its row lock and `NOTIFY` last until that
    /// transaction ends.
    async fn append_on(
        &self,
        conn: &mut PgConnection,
        stream: &str,
        payloads: &[Vec<u8>],
        headers: &[String],
        trim: Trim,
    ) -> std::result::Result<Vec<i64>, sqlx::Error> {
        let rows = sqlx::query(&self.sql.append)
            .bind(stream)
            .bind(payloads)
            .bind(headers)
            .bind(i64::try_from(trim.max_len).unwrap_or(i64::MAX))
            .bind(micros(trim.max_age))
            .fetch_all(&mut *conn)
            .await?;
        rows.iter().map(|r| r.try_get::<i64, _>(0)).collect()
    }

    /// Appends inside the caller's transaction on `conn`. The stream's row stays locked
    /// until that transaction ends, so later appends to the stream wait for it and its ids
    /// commit in order (no cursor skips a late commit); the `NOTIFY` is delivered at commit;
    /// a rollback leaves no trace.
    pub(crate) async fn append_in(
        &self,
        conn: &mut PgConnection,
        stream: &str,
        messages: Vec<NewMessage>,
        trim: Trim,
    ) -> Result<Vec<MessageId>> {
        self.closed.check()?;
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let (payloads, headers) = encode_messages(messages)?;
        let ids = self
            .append_on(conn, stream, &payloads, &headers, trim)
            .await
            .map_err(|e| self.error(format!("appending to {stream} in a transaction"), e))?;
        Ok(ids
            .into_iter()
            .map(|id| MessageId::new(id.to_string()))
            .collect())
    }

    /// Begins a transaction for a transactional handler or [`crate::Service::begin`].
    pub(crate) async fn begin_tx(
        &self,
        isolation: crate::options::Isolation,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        self.closed.check()?;
        self.pool
            .begin_with(isolation.postgres_begin())
            .await
            .map_err(|e| self.error("beginning a transaction".to_owned(), e))
    }

    /// Begins a transaction for a transactional handler or [`crate::Service::begin`] on a
    /// pool of the caller's, checked to reach this database.
    pub(crate) async fn begin_tx_on(
        &self,
        pool: &PgPool,
        isolation: crate::options::Isolation,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        self.closed.check()?;
        pool.begin_with(isolation.postgres_begin())
            .await
            .map_err(|e| {
                self.error(
                    "beginning a transaction on the transaction pool".to_owned(),
                    e,
                )
            })
    }

    /// Checks that `pool` reaches this backend's database: the same server (its port and
    /// start time), the same database, with this backend's schema visible.
    pub(crate) async fn check_same_database(&self, pool: &PgPool) -> Result<()> {
        let sql = format!(
            "SELECT current_database()::text, coalesce(host(inet_server_addr()), 'a local socket'), \
             coalesce(inet_server_port(), 0), pg_postmaster_start_time()::text, \
             to_regclass('{}.schema_version') IS NOT NULL",
            quote_ident(&self.schema).replace('\'', "''")
        );
        type Identity = (String, String, i32, String, bool);
        let describe = |(db, host, port, started, _): &Identity| {
            format!("database {db} on {host} port {port} (server started at {started})")
        };
        let ours: Identity = sqlx::query_as(&sql)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.error("identifying the backend's database".to_owned(), e))?;
        let theirs: Identity = sqlx::query_as(&sql)
            .fetch_one(pool)
            .await
            .map_err(|e| self.error("identifying the transaction pool's database".to_owned(), e))?;
        let same_server = ours.0 == theirs.0 && ours.2 == theirs.2 && ours.3 == theirs.3;
        if same_server && theirs.4 {
            return Ok(());
        }
        let mut found = describe(&theirs);
        if same_server {
            found.push_str(&format!(
                ", where schema {} (the backend's) is not visible",
                self.schema
            ));
        }
        Err(Error::TransactionPoolMismatch {
            expected: format!("{}, schema {}", describe(&ours), self.schema),
            found,
        })
    }

    /// Acknowledges `claim` inside the caller's transaction on `conn`, fenced by its token:
    /// false (nothing done) when the claim is no longer held. The pending row stays locked
    /// until the transaction ends, so no other worker can take the claim over meanwhile.
    pub(crate) async fn ack_in(
        &self,
        conn: &mut PgConnection,
        stream: &str,
        group: &str,
        claim: &Claim,
    ) -> Result<bool> {
        self.closed.check()?;
        let Some(id) = parse_id(claim.id.as_str()) else {
            return Ok(false);
        };
        let done = sqlx::query(&self.sql.ack_one)
            .bind(stream)
            .bind(group)
            .bind(id)
            .bind(from_token(claim.token))
            .execute(&mut *conn)
            .await
            .map_err(|e| {
                self.error(
                    format!("acknowledging {stream} {id} for group {group} in a transaction"),
                    e,
                )
            })?
            .rows_affected();
        Ok(done > 0)
    }
    /// Runs `sql` (the `ack` or `release` statement) on the claims' ids and tokens; false
    /// when there was nothing to settle.
    async fn settle(
        &self,
        sql: &str,
        group: GroupRef<'_>,
        claims: &[Claim],
        doing: &str,
    ) -> Result<bool> {
        self.closed.check()?;
        let (ids, tokens) = claim_arrays(claims);
        if ids.is_empty() {
            return Ok(false);
        }
        sqlx::query(sql)
            .bind(group.stream)
            .bind(group.group)
            .bind(&ids)
            .bind(&tokens)
            .execute(&self.pool)
            .await
            .map_err(|e| {
                self.error(
                    format!(
                        "{doing} messages of {} for group {}",
                        group.stream, group.group
                    ),
                    e,
                )
            })?;
        Ok(true)
    }
}

/// Whether a failed call had reached the server.
#[derive(Clone, Copy, Debug)]
enum Sent {
    No,
    Yes,
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

/// Payloads and JSON headers of `messages`, as the append statement takes them.
fn encode_messages(messages: Vec<NewMessage>) -> Result<(Vec<Vec<u8>>, Vec<String>)> {
    let headers = messages
        .iter()
        .map(|m| encode_headers(&m.headers))
        .collect::<Result<Vec<_>>>()?;
    let payloads = messages.into_iter().map(|m| Vec::from(m.payload)).collect();
    Ok((payloads, headers))
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
            self.closed.check()?;
            if messages.is_empty() {
                return Ok(Vec::new());
            }
            let (payloads, headers) = encode_messages(messages)?;
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
            self.closed.check()?;
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
        Box::pin(self.run_claim(&self.sql.claim, "group", group, max, visibility))
    }

    fn ack<'a>(&'a self, group: GroupRef<'a>, claims: &'a [Claim]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.settle(&self.sql.ack, group, claims, "acknowledging")
                .await
                .map(drop)
        })
    }

    fn retry<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        delay: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.closed.check()?;
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
            self.closed.check()?;
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
            if self
                .settle(&self.sql.release, group, claims, "releasing")
                .await?
            {
                self.wakeups.notify(group.stream);
            }
            Ok(())
        })
    }

    fn extend<'a>(
        &'a self,
        group: GroupRef<'a>,
        claims: &'a [Claim],
        visibility: Duration,
    ) -> BoxFuture<'a, Result<Vec<bool>>> {
        Box::pin(async move {
            self.closed.check()?;
            let (ids, tokens) = claim_arrays(claims);
            let mut extended = std::collections::HashSet::new();
            if !ids.is_empty() {
                let rows: Vec<(i64, i64)> = sqlx::query_as(&self.sql.extend)
                    .bind(group.stream)
                    .bind(group.group)
                    .bind(&ids)
                    .bind(&tokens)
                    .bind(micros(visibility))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|e| {
                        self.error(
                            format!(
                                "extending claims of {} for group {}",
                                group.stream, group.group
                            ),
                            e,
                        )
                    })?;
                extended.extend(rows);
            }
            Ok(claims
                .iter()
                .map(|c| {
                    parse_id(c.id.as_str())
                        .is_some_and(|id| extended.contains(&(id, from_token(c.token))))
                })
                .collect())
        })
    }

    fn postpone<'a>(
        &'a self,
        group: GroupRef<'a>,
        claim: &'a Claim,
        delay: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            self.closed.check()?;
            let Some(id) = parse_id(claim.id.as_str()) else {
                return Ok(false);
            };
            let done = sqlx::query(&self.sql.postpone)
                .bind(group.stream)
                .bind(group.group)
                .bind(id)
                .bind(from_token(claim.token))
                .bind(micros(delay))
                .execute(&self.pool)
                .await
                .map_err(|e| {
                    self.error(
                        format!("postponing {} {id} for group {}", group.stream, group.group),
                        e,
                    )
                })?
                .rows_affected();
            Ok(done > 0)
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.closed.check()?;
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

    fn sql(&self) -> Option<super::SqlBackend<'_>> {
        Some(super::SqlBackend::Postgres(self))
    }

    fn key_order_supported(&self) -> bool {
        true
    }

    fn claim_ordered<'a>(
        &'a self,
        group: GroupRef<'a>,
        max: usize,
        visibility: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claimed>>> {
        Box::pin(self.claim_by_key(group, max, visibility))
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if !self.closed.close() {
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
