//! PostgreSQL plumbing shared by the logger's store and the auth service's sessions (the
//! `postgres` feature; only those two crates enable it): recognising a `postgres://` flag
//! value, a connection pool with bounded waits, schema creation that two replicas may run
//! at once, and a URL fit for a log line.
//!
//! The driver is tokio-postgres (async, pipelined queries, LISTEN/NOTIFY), pooled by
//! deadpool-postgres, which replaces a broken connection at the next checkout: a database
//! restart heals without restarting our servers.

use std::time::Duration;

pub use deadpool_postgres::{GenericClient, Pool, PoolError};
pub use tokio_postgres;

/// How long opening one connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a caller waits for a free pooled connection before giving up.
const POOL_WAIT: Duration = Duration::from_secs(10);

/// True when a `--db`-like flag value names a PostgreSQL database (`postgres://` or
/// `postgresql://`) rather than a file.
pub fn is_url(value: &str) -> bool {
    value.starts_with("postgres://") || value.starts_with("postgresql://")
}

/// Parses `url` into a connection configuration (with [`CONNECT_TIMEOUT`] unless the URL
/// sets `connect_timeout`, and `application_name` for `pg_stat_activity`).
pub fn config(url: &str, application_name: &str) -> Result<tokio_postgres::Config, String> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|error| format!("{} is not a PostgreSQL URL: {error}", redact(url)))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name(application_name);
    }
    Ok(config)
}

/// A pool of at most `max_size` connections to `config`'s database. Opens nothing yet:
/// connections are made on first use and remade after they break.
pub fn pool(config: tokio_postgres::Config, max_size: usize) -> Result<Pool, String> {
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            // Fast: a connection that broke shows as closed and is replaced; a broken one
            // that looks fine fails its query, and the caller's retry gets a new one.
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|error| format!("building the PostgreSQL pool: {error}"))
}

/// Why [`create_schema`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// No connection could be had.
    #[error("connecting to PostgreSQL: {0}")]
    Pool(#[from] PoolError),
    /// A statement failed.
    #[error("creating the schema: {0}")]
    Sql(#[from] tokio_postgres::Error),
}

/// Runs `schema` (idempotent `CREATE … IF NOT EXISTS` statements) in one transaction under
/// the advisory lock `lock_key`, so replicas starting at once take turns: concurrent
/// `CREATE TABLE IF NOT EXISTS` can otherwise fail on PostgreSQL's catalog constraints.
pub async fn create_schema(pool: &Pool, lock_key: i64, schema: &str) -> Result<(), SchemaError> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key])
        .await?;
    transaction.batch_execute(schema).await?;
    transaction.commit().await?;
    Ok(())
}

/// `url` without its password, for log lines and messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let hidden = if user.len() < userinfo.len() {
                ":***"
            } else {
                ""
            };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_recognised_and_redacted() {
        assert!(is_url("postgres://u@h/db"));
        assert!(is_url("postgresql://u@h/db"));
        assert!(!is_url("logs_data/logs.db"));
        assert_eq!(
            redact("postgres://user:secret@db:5432/logs?sslmode=disable"),
            "postgres://user:***@db:5432/logs?sslmode=disable"
        );
        assert_eq!(redact("postgres://user@db/logs"), "postgres://user@db/logs");
        assert_eq!(redact("postgres://db/logs"), "postgres://db/logs");
    }
}
