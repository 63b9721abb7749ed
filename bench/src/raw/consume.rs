//! Raw consuming: claim, handle and ack in batches, and publish-to-handler latency.

use super::*;

impl Raw {
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
            Raw::Nats {
                client,
                stream,
                prefix,
            } => {
                start = Instant::now();
                seen = nats::consume(client, stream, prefix, n, batch, start, cap).await?;
            }
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
                // Same durability as the backend: claims and acks commit asynchronously
                // (a lost one means a redelivery), publishes synchronously.
                let claim = format!(
                    "WITH cfg AS (SELECT set_config('synchronous_commit', 'off', true) AS v)
                     UPDATE {schema}.raw_queue SET token = $1, deadline = now() + interval '30 s'
                     WHERE (SELECT v FROM cfg) = 'off'
                       AND id IN (SELECT id FROM {schema}.raw_queue WHERE deadline <= now()
                                  ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
                     RETURNING id, payload"
                );
                let ack = format!(
                    "WITH cfg AS (SELECT set_config('synchronous_commit', 'off', true) AS v)
                     DELETE FROM {schema}.raw_queue
                     WHERE (SELECT v FROM cfg) = 'off' AND token = $1 AND id = ANY($2::bigint[])"
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
                // As a careful user writes it: the acks of the previous batch go in the same
                // pipeline (one round trip) as the read of the next.
                let mut unacked: Vec<String> = Vec::new();
                start = Instant::now();
                while seen < n && start.elapsed() < cap {
                    let mut pipe = redis::pipe();
                    if !unacked.is_empty() {
                        pipe.cmd("XACK").arg(&key).arg("g").arg(&unacked).ignore();
                    }
                    pipe.cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg("g")
                        .arg("c")
                        .arg("COUNT")
                        .arg(batch)
                        .arg("STREAMS")
                        .arg(&key)
                        .arg(">");
                    let (reply,): (redis::streams::StreamReadReply,) =
                        pipe.query_async(con).await?;
                    let ids: Vec<String> = reply
                        .keys
                        .into_iter()
                        .flat_map(|k| k.ids)
                        .map(|e| e.id)
                        .collect();
                    if ids.is_empty() {
                        return Err("raw stream ran dry".into());
                    }
                    seen += ids.len();
                    unacked = ids;
                }
                if !unacked.is_empty() {
                    let _: i64 = redis::cmd("XACK")
                        .arg(&key)
                        .arg("g")
                        .arg(&unacked)
                        .query_async(con)
                        .await?;
                }
            }
        }
        let elapsed = start.elapsed();
        if let Raw::Redis { .. } | Raw::Nats { .. } = self {
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
            Raw::Sqlite(_) | Raw::Postgres { .. } | Raw::Nats { .. } => Ok(None),
        }
    }
}
