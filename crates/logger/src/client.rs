//! What `logger_client` does: log an event, query the newest rows (printed exactly as
//! `logger_query` prints them), or follow the log live. Results go to the given writer
//! (stdout in the binary), errors to the caller.

use std::io::Write;

use grpc_suite::{
    cli::{Connection, status_error},
    logger as pb,
};
use pb::logger_service_client::LoggerServiceClient;

use crate::{store::LogRow, table};

/// One call to the logger service (the binary maps its subcommands onto these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Records one event; `timestamp` and `event_id` are optional.
    Log {
        /// The event's type, e.g. SESSION_STARTED.
        event_type: String,
        /// Free text.
        details: String,
        /// When it happened, `YYYY-MM-DD HH:MM:SS.mmm` (default: when the server stores it).
        timestamp: Option<String>,
        /// An id of the caller's choosing; the same id again stores nothing new.
        event_id: Option<String>,
    },
    /// Prints the newest events as a table, newest first.
    Query {
        /// How many rows (default: the server's).
        limit: Option<i32>,
        /// Only events of exactly this type.
        event_type: Option<String>,
    },
    /// Prints the newest `backlog` events, then each new one as it is stored.
    Follow {
        /// Only events of exactly this type.
        event_type: Option<String>,
        /// How many of the newest events to print first.
        backlog: i32,
    },
}

/// Runs one command against a connected server, printing its result to `out`.
pub async fn run(
    channel: impl Into<Connection>,
    command: Command,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut client = LoggerServiceClient::new(channel.into());
    match command {
        Command::Log {
            event_type,
            details,
            timestamp,
            event_id,
        } => {
            let request = pb::LogRequest {
                event_type: event_type.clone(),
                details,
                timestamp: timestamp.unwrap_or_default(),
                event_id: event_id.unwrap_or_default(),
            };
            let reply = client
                .log_activity(request)
                .await
                .map_err(status_error)?
                .into_inner();
            anyhow::ensure!(reply.logged, "the server did not log the event");
            writeln!(out, "Logged {event_type} event")?;
        }
        Command::Query { limit, event_type } => {
            let request = pb::LogQueryRequest {
                limit: limit.unwrap_or(0),
                event_type: event_type.unwrap_or_default(),
            };
            let reply = client
                .query_logs(request)
                .await
                .map_err(status_error)?
                .into_inner();
            let rows: Vec<LogRow> = reply.logs.into_iter().map(from_entry).collect();
            out.write_all(table::render(&rows).as_bytes())?;
        }
        Command::Follow {
            event_type,
            backlog,
        } => {
            let request = pb::LogFollowRequest {
                backlog,
                event_type: event_type.unwrap_or_default(),
            };
            let mut stream = client
                .follow_logs(request)
                .await
                .map_err(status_error)?
                .into_inner();
            while let Some(entry) = stream.message().await.map_err(status_error)? {
                writeln!(out, "{}", follow_line(&from_entry(entry)))?;
                // One event per line as it happens, even when stdout is a pipe.
                out.flush()?;
            }
            eprintln!("the server ended the stream");
        }
    }
    Ok(())
}

/// How `follow` prints one row: `#<id> <timestamp> <event_type>: <details>`.
pub fn follow_line(row: &LogRow) -> String {
    format!(
        "#{} {} {}: {}",
        row.id, row.timestamp, row.event_type, row.details
    )
}

fn from_entry(entry: pb::LogEntry) -> LogRow {
    LogRow {
        id: i64::from(entry.id),
        event_type: entry.event_type,
        details: entry.details,
        timestamp: entry.timestamp,
    }
}
