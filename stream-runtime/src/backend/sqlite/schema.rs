//! The SQLite schema: numbered migrations (`migrations/NNNN_*.sql`) recorded in
//! `stream_schema_migrations`, applied on connect.

use sqlx::Executor;

use super::{now_ms, SqliteBackend, NAME};
use crate::error::{Error, Result};

/// The schema, one migration per entry; entry `i` is version `i + 1`. Never edit an entry
/// that has shipped: append a new one.
pub const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_initial.sql"),
    include_str!("migrations/0002_claimed_at.sql"),
    include_str!("migrations/0003_key_order.sql"),
];

impl SqliteBackend {
    /// Applies every migration this database lacks, in one transaction.
    pub(super) async fn migrate(&self) -> Result<()> {
        let what = "creating the schema";
        let mut tx = self.begin(what).await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS stream_schema_migrations (
                 version    INTEGER PRIMARY KEY,
                 applied_at INTEGER NOT NULL
             )",
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(what, e))?;
        let current: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM stream_schema_migrations")
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| self.err(what, e))?;
        let known = MIGRATIONS.len() as i64;
        if current > known {
            return Err(Error::backend(
                NAME,
                format!("opening database {}", self.location),
                format!(
                    "its schema is at version {current}, newer than this build knows ({known}); \
                     upgrade stream-runtime"
                ),
            ));
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            let version = index as i64 + 1;
            let what = format!("applying schema migration {version}");
            // `Executor::execute` on the connection, not `RawSql::execute(&mut *tx)`: the
            // latter's future is not `Send` for SQLite connections (sqlx's higher-ranked
            // `Executor` bound), which would make `connect` unusable in `tokio::spawn`.
            (&mut *tx)
                .execute(sqlx::raw_sql(sql))
                .await
                .map_err(|e| self.err(what.clone(), e))?;
            sqlx::query(
                "INSERT INTO stream_schema_migrations (version, applied_at) VALUES (?1, ?2)",
            )
            .bind(version)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(what.clone(), e))?;
        }
        // A database opened read-only passes everything above once its schema exists; find
        // out now, not at the first publish. Rewriting one row costs one page.
        sqlx::query(
            "UPDATE stream_schema_migrations SET applied_at = applied_at WHERE version = 1",
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err("checking that the database is writable", e))?;
        self.commit(tx, what).await
    }
}
