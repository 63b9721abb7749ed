//! The Postgres schema: numbered migrations (`migrations/NNNN_*.sql`, `{S}` standing for
//! the quoted schema name) recorded in `schema_version`, applied on connect.

use sqlx::{Connection, Executor};

use crate::backend::BoxFuture;
use crate::error::{Error, Result};

/// The migrations, in order; `{S}` stands for the quoted schema name.
/// Never edit an applied one: add the next file.
pub const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_initial.sql"),
    include_str!("migrations/0002_async_commit.sql"),
    include_str!("migrations/0003_release_gives_back.sql"),
    include_str!("migrations/0004_claimed_at.sql"),
    include_str!("migrations/0005_no_fk_checks.sql"),
    include_str!("migrations/0006_key_order.sql"),
];

/// `"name"` with embedded quotes doubled: a safe SQL identifier.
pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub(super) fn check_schema(schema: &str) -> Result<()> {
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

/// Applies missing migrations in one transaction under an advisory lock on the schema's
/// name, so processes starting at once migrate it exactly once.
pub(super) fn migrate<'a>(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        assert!(check_schema("streams_1").is_ok());
        for bad in ["", "1x", "a-b", "a\"b", &"x".repeat(64)] {
            assert!(check_schema(bad).is_err(), "{bad}");
        }
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
