//! Raw publishing: one message per call, batches, and filling a queue for the consume runs.

use super::*;

impl Raw {
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
            Raw::Nats { client, prefix, .. } => {
                let subject = format!("{prefix}.publish");
                let body = bytes::Bytes::copy_from_slice(payload);
                let start = Instant::now();
                for _ in 0..n {
                    nats::publish(client, &subject, body.clone()).await?;
                }
                let elapsed = start.elapsed();
                self.clear("publish").await?;
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
    pub(super) async fn fill(
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
                    // One array parameter (`unnest`) rather than a `VALUES` row of parameters
                    // per message: one statement text for every batch size, one bind.
                    let sql = format!(
                        "INSERT INTO {schema}.raw_{which} (payload) \
                         SELECT * FROM unnest($1::bytea[]) RETURNING id"
                    );
                    sqlx::query(&sql)
                        .bind(vec![payload; k])
                        .fetch_all(&*pool)
                        .await?;
                }
                Raw::Redis { con, prefix, .. } => {
                    let key = format!("{prefix}:{which}");
                    let mut pipe = redis::pipe();
                    for _ in 0..k {
                        pipe.cmd("XADD").arg(&key).arg("*").arg("p").arg(payload);
                    }
                    let _: Vec<String> = pipe.query_async(con).await?;
                }
                Raw::Nats { client, prefix, .. } => {
                    // Every publish of the batch sent at once, their acks awaited together.
                    let subject = format!("{prefix}.{which}");
                    let body = bytes::Bytes::copy_from_slice(payload);
                    futures_util::future::try_join_all(
                        (0..k).map(|_| nats::publish(client, &subject, body.clone())),
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }
}
