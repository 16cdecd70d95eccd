//! What `logger_query` does: read the newest rows straight from a database file, the old
//! system's or ours, without ever creating, migrating or changing it.

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
