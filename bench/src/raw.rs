//! The raw ceiling of each backend: the same work written directly against the client
//! library the backend uses, with the same batch sizes and durability settings, on a
//! minimal table or key of our own. One arm per backend in each method.

use std::str::FromStr;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;
use tokio::sync::mpsc;

use crate::{paced, BoxError, Kind};

/// A connection to one backend's client library, for the raw figures.
pub enum Raw {
    /// A bare tokio mpsc channel.
    Memory,
    /// One connection with the backend's pragmas (WAL, synchronous = NORMAL), as the
    /// backend's single writer connection.
    Sqlite(SqlitePool),
    /// A pool as the backend's, on a schema of our own.
    Postgres { pool: PgPool, schema: String },
    /// A multiplexed connection, plus the client for a second one (blocking reads).
    Redis {
        client: Box<redis::Client>,
        con: MultiplexedConnection,
        prefix: String,
    },
}

impl Raw {
    /// Connects and creates the minimal tables. `tag` makes names unique to this run.
    pub async fn connect(kind: Kind, url: &str, tag: &str) -> Result<Raw, BoxError> {
        match kind {
            Kind::Memory => Ok(Raw::Memory),
            Kind::Sqlite => {
                let options = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(30));
                let pool = SqlitePoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .connect_with(options)
                    .await?;
                for table in ["raw_publish", "raw_queue"] {
                    sqlx::query(&format!(
                        "CREATE TABLE IF NOT EXISTS {table} (
                             id       INTEGER PRIMARY KEY AUTOINCREMENT,
                             payload  BLOB    NOT NULL,
                             token    INTEGER NOT NULL DEFAULT 0,
                             deadline INTEGER NOT NULL DEFAULT 0)"
                    ))
                    .execute(&pool)
                    .await?;
                }
                Ok(Raw::Sqlite(pool))
            }
            Kind::Postgres => {
                let pool = PgPoolOptions::new()
                    .max_connections(10)
                    .connect(url)
                    .await?;
                let schema = format!("bench_raw_{tag}");
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&pool)
                    .await?;
                for table in ["raw_publish", "raw_queue"] {
                    sqlx::query(&format!(
                        "CREATE TABLE {schema}.{table} (
                             id       bigserial PRIMARY KEY,
                             payload  bytea       NOT NULL,
                             token    bigint      NOT NULL DEFAULT 0,
                             deadline timestamptz NOT NULL DEFAULT '-infinity')"
                    ))
                    .execute(&pool)
                    .await?;
                }
                Ok(Raw::Postgres { pool, schema })
            }
            Kind::Redis => {
                let client = redis::Client::open(url)?;
                let con = client.get_multiplexed_async_connection().await?;
                Ok(Raw::Redis {
                    client: Box::new(client),
                    con,
                    prefix: format!("bench-raw:{tag}"),
                })
            }
        }
    }

    /// The durability settings in force, read back from the server or connection.
    pub async fn durability(&mut self) -> Result<String, BoxError> {
        match self {
            Raw::Memory => Ok("none (process memory)".to_owned()),
            Raw::Sqlite(pool) => {
                let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
                    .fetch_one(&*pool)
                    .await?;
                let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
                    .fetch_one(&*pool)
                    .await?;
                let sync = match sync {
                    0 => "OFF",
                    1 => "NORMAL",
                    2 => "FULL",
                    _ => "EXTRA",
                };
                Ok(format!(
                    "journal_mode={journal} synchronous={sync} (backend: WAL, NORMAL)"
                ))
            }
            Raw::Postgres { pool, .. } => {
                let mut parts = Vec::new();
                for setting in ["synchronous_commit", "fsync", "wal_sync_method"] {
                    let value: String = sqlx::query_scalar(&format!("SHOW {setting}"))
                        .fetch_one(&*pool)
                        .await?;
                    parts.push(format!("{setting}={value}"));
                }
                Ok(parts.join(" "))
            }
            Raw::Redis { con, .. } => {
                let mut parts = Vec::new();
                for setting in ["appendonly", "appendfsync", "save"] {
                    let reply: Vec<String> = redis::cmd("CONFIG")
                        .arg("GET")
                        .arg(setting)
                        .query_async(con)
                        .await?;
                    let value = reply.get(1).cloned().unwrap_or_default();
                    parts.push(format!("{setting}={value:?}"));
                }
                Ok(parts.join(" "))
            }
        }
    }

    /// `n` single-message appends, one at a time.
    pub async fn publish_one(&mut self, n: usize, payload: &[u8]) -> Result<Duration, BoxError> {
        match self {
            Raw::Memory => {
                let (tx, _rx) = mpsc::unbounded_channel::<Vec<u8>>();
                let start = Instant::now();
                for _ in 0..n {
                    tx.send(payload.to_vec())?;
                }
                Ok(start.elapsed())
            }
            Raw::Sqlite(pool) => {
                let start = Instant::now();
                for _ in 0..n {
                    sqlx::query("INSERT INTO raw_publish (payload) VALUES (?1) RETURNING id")
                        .bind(payload)
                        .fetch_one(&*pool)
                        .await?;
                }
                Ok(start.elapsed())
            }
            Raw::Postgres { pool, schema } => {
                let sql =
                    format!("INSERT INTO {schema}.raw_publish (payload) VALUES ($1) RETURNING id");
                let start = Instant::now();
                for _ in 0..n {
                    sqlx::query(&sql).bind(payload).fetch_one(&*pool).await?;
                }
                Ok(start.elapsed())
            }
            Raw::Redis { con, prefix, .. } => {
                let key = format!("{prefix}:publish");
                let start = Instant::now();
                for _ in 0..n {
                    let _: String = redis::cmd("XADD")
                        .arg(&key)
                        .arg("*")
                        .arg("p")
                        .arg(payload)
                        .query_async(con)
                        .await?;
                }
                let elapsed = start.elapsed();
                let _: () = redis::cmd("DEL").arg(&key).query_async(con).await?;
                Ok(elapsed)
            }
        }
    }

    /// `n` messages appended in batches of `batch`: one multi-row insert or one pipeline each.
    pub async fn publish_batch(
        &mut self,
        n: usize,
        batch: usize,
        payload: &[u8],
    ) -> Result<Duration, BoxError> {
        if let Raw::Memory = self {
            // A channel has no batch send: `batch` sends in a row.
            let (tx, _rx) = mpsc::unbounded_channel::<Vec<u8>>();
            let start = Instant::now();
            for _ in 0..n.div_ceil(batch) {
                for _ in 0..batch {
                    tx.send(payload.to_vec())?;
                }
            }
            return Ok(start.elapsed());
        }
        let start = Instant::now();
        self.fill("publish", n, batch, payload).await?;
        let elapsed = start.elapsed();
        self.clear("publish").await?;
        Ok(elapsed)
    }

    /// Appends `n` messages to table/key `which` in batches of `batch`.
    async fn fill(
        &mut self,
        which: &str,
        n: usize,
        batch: usize,
        payload: &[u8],
    ) -> Result<(), BoxError> {
        let mut left = n;
        while left > 0 {
            let k = left.min(batch);
            left -= k;
            match self {
                Raw::Memory => return Err("memory has no table to fill".into()),
                Raw::Sqlite(pool) => {
                    let values = (1..=k).map(|i| format!("(?{i})")).collect::<Vec<_>>();
                    let sql = format!(
                        "INSERT INTO raw_{which} (payload) VALUES {} RETURNING id",
                        values.join(", ")
                    );
                    let mut query = sqlx::query(&sql);
                    for _ in 0..k {
                        query = query.bind(payload);
                    }
                    query.fetch_all(&*pool).await?;
                }
                Raw::Postgres { pool, schema } => {
                    let values = (1..=k).map(|i| format!("(${i})")).collect::<Vec<_>>();
                    let sql = format!(
                        "INSERT INTO {schema}.raw_{which} (payload) VALUES {} RETURNING id",
                        values.join(", ")
                    );
                    let mut query = sqlx::query(&sql);
                    for _ in 0..k {
                        query = query.bind(payload);
                    }
                    query.fetch_all(&*pool).await?;
                }
                Raw::Redis { con, prefix, .. } => {
                    let key = format!("{prefix}:{which}");
                    let mut pipe = redis::pipe();
                    for _ in 0..k {
                        pipe.cmd("XADD").arg(&key).arg("*").arg("p").arg(payload);
                    }
                    let _: Vec<String> = pipe.query_async(con).await?;
                }
            }
        }
        Ok(())
    }

    async fn clear(&mut self, which: &str) -> Result<(), BoxError> {
        match self {
            Raw::Memory => {}
            Raw::Sqlite(pool) => {
                sqlx::query(&format!("DELETE FROM raw_{which}"))
                    .execute(&*pool)
                    .await?;
            }
            Raw::Postgres { pool, schema } => {
                sqlx::query(&format!("TRUNCATE {schema}.raw_{which}"))
                    .execute(&*pool)
                    .await?;
            }
            Raw::Redis { con, prefix, .. } => {
                let _: () = redis::cmd("DEL")
                    .arg(format!("{prefix}:{which}"))
                    .query_async(con)
                    .await?;
            }
        }
        Ok(())
    }

    /// Consumes a pre-filled backlog of `n` messages (the fill is not timed) with a claim of
    /// up to `batch` then one ack of them, until all are acknowledged or `cap` passed;
    /// returns how many were and the time taken.
    pub async fn consume(
        &mut self,
        n: usize,
        batch: usize,
        payload: &[u8],
        cap: Duration,
    ) -> Result<(usize, Duration), BoxError> {
        if let Raw::Memory = self {
            let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
            for _ in 0..n {
                tx.send(payload.to_vec())?;
            }
            let mut buf = Vec::with_capacity(batch);
            let mut seen = 0;
            let start = Instant::now();
            while seen < n {
                let got = rx.recv_many(&mut buf, batch).await;
                if got == 0 {
                    return Err("channel closed early".into());
                }
                seen += got;
                buf.clear();
            }
            return Ok((seen, start.elapsed()));
        }
        // SQL queues are topped up to `n` rather than refilled, so a capped run that left
        // rows behind does not cost a full rewrite (WAL and checkpoint pressure that would
        // slow the next measurement). A Redis group starts afresh on a new stream.
        let have = match self {
            Raw::Sqlite(pool) => {
                sqlx::query_scalar::<_, i64>("SELECT count(*) FROM raw_queue")
                    .fetch_one(&*pool)
                    .await?
            }
            Raw::Postgres { pool, schema } => {
                sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) FROM {schema}.raw_queue"))
                    .fetch_one(&*pool)
                    .await?
            }
            _ => {
                self.clear("queue").await?;
                0
            }
        };
        let have = usize::try_from(have).unwrap_or(0).min(n);
        self.fill("queue", n - have, 1000, payload).await?;
        let mut seen = 0usize;
        let mut token = 0i64;
        let limit = i64::try_from(batch)?;
        let start;
        match self {
            Raw::Memory => unreachable!("handled above"),
            Raw::Sqlite(pool) => {
                start = Instant::now();
                while seen < n && start.elapsed() < cap {
                    token += 1;
                    let now = now_ms();
                    let rows = sqlx::query(
                        "UPDATE raw_queue SET token = ?1, deadline = ?2 WHERE id IN (
                             SELECT id FROM raw_queue WHERE deadline <= ?3 ORDER BY id LIMIT ?4)
                         RETURNING id, payload",
                    )
                    .bind(token)
                    .bind(now + 30_000)
                    .bind(now)
                    .bind(limit)
                    .fetch_all(&*pool)
                    .await?;
                    if rows.is_empty() {
                        return Err("raw queue ran dry".into());
                    }
                    let mut ids = Vec::with_capacity(rows.len());
                    for row in &rows {
                        let _payload: &[u8] = row.try_get(1)?;
                        ids.push(row.try_get::<i64, _>(0)?);
                    }
                    let marks = (0..ids.len())
                        .map(|i| format!("?{}", i + 2))
                        .collect::<Vec<_>>();
                    let sql = format!(
                        "DELETE FROM raw_queue WHERE token = ?1 AND id IN ({})",
                        marks.join(", ")
                    );
                    let mut query = sqlx::query(&sql).bind(token);
                    for id in &ids {
                        query = query.bind(id);
                    }
                    query.execute(&*pool).await?;
                    seen += ids.len();
                }
            }
            Raw::Postgres { pool, schema } => {
                let claim = format!(
                    "UPDATE {schema}.raw_queue SET token = $1, deadline = now() + interval '30 s'
                     WHERE id IN (SELECT id FROM {schema}.raw_queue WHERE deadline <= now()
                                  ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
                     RETURNING id, payload"
                );
                let ack = format!(
                    "DELETE FROM {schema}.raw_queue WHERE token = $1 AND id = ANY($2::bigint[])"
                );
                start = Instant::now();
                while seen < n && start.elapsed() < cap {
                    token += 1;
                    let rows = sqlx::query(&claim)
                        .bind(token)
                        .bind(limit)
                        .fetch_all(&*pool)
                        .await?;
                    if rows.is_empty() {
                        return Err("raw queue ran dry".into());
                    }
                    let mut ids = Vec::with_capacity(rows.len());
                    for row in &rows {
                        let _payload: &[u8] = row.try_get(1)?;
                        ids.push(row.try_get::<i64, _>(0)?);
                    }
                    sqlx::query(&ack)
                        .bind(token)
                        .bind(&ids)
                        .execute(&*pool)
                        .await?;
                    seen += ids.len();
                }
            }
            Raw::Redis { con, prefix, .. } => {
                let key = format!("{prefix}:queue");
                let _: () = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&key)
                    .arg("g")
                    .arg("0")
                    .query_async(con)
                    .await?;
                start = Instant::now();
                while seen < n && start.elapsed() < cap {
                    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg("g")
                        .arg("c")
                        .arg("COUNT")
                        .arg(batch)
                        .arg("STREAMS")
                        .arg(&key)
                        .arg(">")
                        .query_async(con)
                        .await?;
                    let ids: Vec<String> = reply
                        .keys
                        .into_iter()
                        .flat_map(|k| k.ids)
                        .map(|e| e.id)
                        .collect();
                    if ids.is_empty() {
                        return Err("raw stream ran dry".into());
                    }
                    let _: i64 = redis::cmd("XACK")
                        .arg(&key)
                        .arg("g")
                        .arg(&ids)
                        .query_async(con)
                        .await?;
                    seen += ids.len();
                }
            }
        }
        let elapsed = start.elapsed();
        if let Raw::Redis { .. } = self {
            self.clear("queue").await?;
        }
        Ok((seen.min(n), elapsed))
    }

    /// End-to-end latency of the bare transport at `rate` msg/s, from each message's
    /// scheduled send time to its receipt, in ms. `None` where there is no push to compare
    /// with (SQLite) or it is not written yet.
    pub async fn e2e(&mut self, rate: u32, count: usize) -> Result<Option<Vec<f64>>, BoxError> {
        match self {
            Raw::Memory => {
                let (tx, mut rx) = mpsc::unbounded_channel::<Duration>();
                let epoch = Instant::now();
                let receiver = tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(count);
                    while let Some(sched) = rx.recv().await {
                        lat.push((epoch.elapsed().saturating_sub(sched)).as_secs_f64() * 1e3);
                        if lat.len() == count {
                            break;
                        }
                    }
                    lat
                });
                paced(epoch, rate, count, move |sched| {
                    let _ = tx.send(sched);
                })
                .await?;
                Ok(Some(
                    tokio::time::timeout(Duration::from_secs(60), receiver).await??,
                ))
            }
            Raw::Redis {
                client,
                con,
                prefix,
                ..
            } => {
                let key = format!("{prefix}:e2e");
                let _: () = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&key)
                    .arg("g")
                    .arg("$")
                    .arg("MKSTREAM")
                    .query_async(con)
                    .await?;
                // Blocking reads get their own connection, as a blocking command holds up
                // everything queued behind it on a multiplexed one.
                let mut reader = client.get_multiplexed_async_connection().await?;
                let epoch = Instant::now();
                let rkey = key.clone();
                let receiver = tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(count);
                    while lat.len() < count {
                        let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
                            .arg("GROUP")
                            .arg("g")
                            .arg("c")
                            .arg("COUNT")
                            .arg(100)
                            .arg("BLOCK")
                            .arg(10_000)
                            .arg("STREAMS")
                            .arg(&rkey)
                            .arg(">")
                            .query_async(&mut reader)
                            .await?;
                        let now = epoch.elapsed();
                        let mut ids = Vec::new();
                        for entry in reply.keys.into_iter().flat_map(|k| k.ids) {
                            let sched: u64 = entry.get("t").unwrap_or_default();
                            lat.push(
                                now.saturating_sub(Duration::from_nanos(sched))
                                    .as_secs_f64()
                                    * 1e3,
                            );
                            ids.push(entry.id);
                        }
                        if !ids.is_empty() {
                            let _: i64 = redis::cmd("XACK")
                                .arg(&rkey)
                                .arg("g")
                                .arg(&ids)
                                .query_async(&mut reader)
                                .await?;
                        }
                    }
                    Ok::<_, redis::RedisError>(lat)
                });
                let (sender, skey) = (con.clone(), key.clone());
                let runtime = tokio::runtime::Handle::current();
                let body = vec![0xa5u8; crate::PAYLOAD];
                paced(epoch, rate, count, move |sched| {
                    let mut con = sender.clone();
                    let (key, body) = (skey.clone(), body.clone());
                    runtime.spawn(async move {
                        let _: redis::RedisResult<String> = redis::cmd("XADD")
                            .arg(&key)
                            .arg("*")
                            .arg("t")
                            .arg(u64::try_from(sched.as_nanos()).unwrap_or(u64::MAX))
                            .arg("p")
                            .arg(body)
                            .query_async(&mut con)
                            .await;
                    });
                })
                .await?;
                let lat = tokio::time::timeout(Duration::from_secs(60), receiver).await???;
                let _: () = redis::cmd("DEL").arg(&key).query_async(con).await?;
                Ok(Some(lat))
            }
            Raw::Sqlite(_) | Raw::Postgres { .. } => Ok(None),
        }
    }

    /// Drops what this run created.
    pub async fn cleanup(&mut self) -> Result<(), BoxError> {
        match self {
            Raw::Memory | Raw::Sqlite(_) => {}
            Raw::Postgres { pool, schema } => {
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .execute(&*pool)
                    .await?;
            }
            Raw::Redis { con, prefix, .. } => {
                for which in ["publish", "queue", "e2e"] {
                    let _: () = redis::cmd("DEL")
                        .arg(format!("{prefix}:{which}"))
                        .query_async(con)
                        .await?;
                }
            }
        }
        Ok(())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
