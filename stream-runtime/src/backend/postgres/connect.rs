//! Connecting: the URL's own parameters, the first direct connection (a clear error when the
//! server is unreachable), the migration, then the pool and the `LISTEN` task.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::Connection;

use super::{
    check_schema, listen, migrate, quote_ident, PostgresBackend, Sql, DEFAULT_SCHEMA, NAME,
};
use crate::backend::closed::Closed;
use crate::backend::{hint_refused, no_answer, redact_url, ConnectOptions, WakeupHub};
use crate::error::{Error, Result};

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
        // A mode that needs TLS, in a build without it: say which feature to enable
        // (`prefer`, the default, falls back to plain TCP).
        if !cfg!(feature = "tls")
            && ["require", "verify-ca", "verify-full"]
                .iter()
                .any(|mode| sqlx_url.contains(&format!("sslmode={mode}")))
        {
            return Err(Error::FeatureDisabled {
                feature: "tls",
                url: redacted,
            });
        }

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
            closed: Closed::default(),
        })
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
    fn connect_is_send() {
        fn is_send<T: Send>(_: T) {}
        is_send(PostgresBackend::connect(""));
    }
}
