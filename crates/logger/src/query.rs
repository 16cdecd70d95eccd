//! What `logger_query` does: read the newest rows straight from a database file, the old
//! system's or ours, or from the PostgreSQL database the logger servers share, without
//! ever creating, migrating or changing it.

use std::path::Path;

use anyhow::Context as _;
use rusqlite::{ErrorCode, OptionalExtension as _};

use crate::store::{self, LogRow};

/// The newest `limit` rows of the file at `path`, newest first, of `event_type` only when
/// given. A missing file, a file that is not SQLite, or one without a `logs` table is an
/// error that says which, in one line.
pub fn read_logs(path: &Path, limit: u32, event_type: Option<&str>) -> anyhow::Result<Vec<LogRow>> {
    // SQLite's read-only open would refuse a missing file too, as "unable to open database
    // file"; checking first gives a message a person can act on.
    if !path.exists() {
        anyhow::bail!("no database at {}", path.display());
    }
    let not_sqlite = || format!("{} is not an SQLite database", path.display());
    let connection = store::open_read_only(path)
        .with_context(|| format!("cannot open {} read-only", path.display()))?;
    // SQLite reads the header lazily: the first statement is where a foreign file shows.
    let has_logs = connection
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'logs'",
            [],
            |_| Ok(()),
        )
        .optional();
    match has_logs {
        Ok(Some(())) => {}
        Ok(None) => anyhow::bail!("{} has no logs table", path.display()),
        Err(error) if error.sqlite_error_code() == Some(ErrorCode::NotADatabase) => {
            anyhow::bail!(not_sqlite())
        }
        Err(error) => {
            return Err(error).with_context(|| format!("reading {}", path.display()));
        }
    }
    store::newest(&connection, limit, event_type)
        .with_context(|| format!("reading the logs table of {}", path.display()))
}

/// The newest `limit` rows of the PostgreSQL database at `url`, newest first, of
/// `event_type` only when given, in a read-only transaction. An unreachable database or
/// one without a `logs` table is an error that says which.
pub fn read_logs_postgres(
    url: &str,
    limit: u32,
    event_type: Option<&str>,
) -> anyhow::Result<Vec<LogRow>> {
    let shown = grpc_suite::postgres::redact(url);
    let config = grpc_suite::postgres::config(url, "logger_query").map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let (mut client, connection) = config
            .connect(grpc_suite::postgres::tokio_postgres::NoTls)
            .await
            .with_context(|| format!("cannot connect to {shown}"))?;
        let driver = tokio::spawn(connection);
        let transaction = client
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .with_context(|| format!("reading {shown}"))?;
        let has_logs: bool = transaction
            .query_one("SELECT to_regclass('logs') IS NOT NULL", &[])
            .await
            .and_then(|row| row.try_get(0))
            .with_context(|| format!("reading {shown}"))?;
        if !has_logs {
            anyhow::bail!("{shown} has no logs table");
        }
        let rows = store::newest_postgres(&transaction, limit, event_type)
            .await
            .with_context(|| format!("reading the logs table of {shown}"))?;
        drop(transaction);
        drop(client);
        let _ = driver.await;
        Ok(rows)
    })
}
