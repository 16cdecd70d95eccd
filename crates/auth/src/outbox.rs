//! The audit outbox: events are committed to a local SQLite file before the call that caused
//! them is answered, then a background task delivers them to the logger in order, with
//! retry and backoff, each under its own event id and original time. The logger stores an
//! event id once, so a delivery repeated after a crash or a lost answer is harmless: every
//! event lands exactly once.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use grpc_suite::{
    group_commit::{GroupCommit, SubmitError},
    logger as pb,
    server::run_blocking,
    wire_time,
};
use pb::logger_service_client::LoggerServiceClient;
use rusqlite::{Connection, params};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};

/// Most events written in one transaction. Bounds the writer's batch memory; under load one
/// disk sync is shared by up to this many logins and logouts.
const MAX_WRITE_BATCH: usize = 1024;
/// Queue in front of the writer: callers wait (backpressure) beyond this many.
const WRITE_QUEUE: usize = 4096;
/// Events read per delivery round.
pub(crate) const DELIVERY_BATCH: usize = 256;
/// First retry delay after a failed delivery; doubles up to [`MAX_BACKOFF`].
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(100);
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// One delivery attempt may take this long before it counts as failed.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// One audit event, as the logger will store it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Unique per event; the logger de-duplicates on it.
    pub event_id: String,
    /// `SESSION_STARTED`, `SESSION_TERMINATED` or `LOGIN_FAILED`.
    pub event_type: String,
    /// The human sentence.
    pub details: String,
    /// When it happened, local time in [`wire_time::LOG_TIMESTAMP`], as the logger stores it.
    pub timestamp: String,
}

impl AuditEvent {
    /// A new event happening now, with a fresh id.
    pub fn now(event_type: &str, details: String) -> Self {
        Self {
            event_id: uuid::Uuid::new_v4().to_string(),
            event_type: event_type.to_owned(),
            details,
            timestamp: chrono::Local::now()
                .format(wire_time::LOG_TIMESTAMP)
                .to_string(),
        }
    }
}

/// A change to the kept sessions, committed in the same transaction as its audit event:
/// a session exists on disk exactly when its SESSION_STARTED is recorded and its
/// SESSION_TERMINATED is not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// A login: keep this session until it expires.
    Start {
        /// The session id.
        id: uuid::Uuid,
        /// Its user.
        username: String,
        /// When it expires, in seconds since the Unix epoch.
        expires_at: i64,
    },
    /// A logout: forget this session.
    End {
        /// The session id.
        id: uuid::Uuid,
    },
}

/// What the writer commits: an event, and the session change it records, if any.
#[derive(Debug, Clone)]
struct Entry {
    event: AuditEvent,
    session: Option<SessionChange>,
}

/// Why an event could not be recorded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OutboxError {
    /// SQLite refused (disk full, read-only, corrupt file).
    #[error("audit outbox write failed: {0}")]
    Write(String),
    /// The writer thread is gone (only during shutdown).
    #[error("audit outbox is closed")]
    Closed,
}

/// The handle callers record events through. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    /// The one writer thread, which owns the only write connection: SQLite work never runs
    /// on the async executor, one writer means no lock contention between writers, and
    /// group commit lets concurrent logins share one disk sync.
    writes: GroupCommit<Entry, (), OutboxError>,
    /// Wakes the delivery task when new events are committed. A `Notify` keeps one permit,
    /// so a commit that happens while the task is busy is never missed.
    committed: Arc<Notify>,
    path: PathBuf,
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    // WAL lets the delivery task read while the writer commits; synchronous=FULL makes
    // every commit survive a power cut, which is what "recorded" promises.
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.busy_timeout(Duration::from_secs(5))?;
    Ok(connection)
}

impl Outbox {
    /// Opens (creating) the outbox file and starts its writer thread.
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        let mut connection = open_connection(path)?;
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS outbox (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 event_id TEXT NOT NULL,
                 event_type TEXT NOT NULL,
                 details TEXT NOT NULL,
                 timestamp TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS sessions (
                 id TEXT PRIMARY KEY,
                 username TEXT NOT NULL,
                 expires_at INTEGER NOT NULL
             ) WITHOUT ROWID;",
        )?;
        let committed = Arc::new(Notify::new());
        let wake = Arc::clone(&committed);
        let writes = GroupCommit::spawn(
            "audit-outbox-writer",
            WRITE_QUEUE,
            MAX_WRITE_BATCH,
            move |entries: Vec<Entry>| commit(&mut connection, &entries, &wake),
        )
        .map_err(|error| rusqlite::Error::ToSqlConversionFailure(Box::new(error)))?;
        // Events left from an earlier run are waiting: let delivery start at once.
        committed.notify_one();
        Ok(Self {
            writes,
            committed,
            path: path.to_path_buf(),
        })
    }

    /// Commits an event durably; returns once it is on disk.
    pub async fn record(&self, event: AuditEvent) -> Result<(), OutboxError> {
        self.submit(Entry {
            event,
            session: None,
        })
        .await
    }

    /// Commits an event and the session change it records, in one transaction; returns
    /// once both are on disk.
    pub async fn record_session(
        &self,
        event: AuditEvent,
        change: SessionChange,
    ) -> Result<(), OutboxError> {
        self.submit(Entry {
            event,
            session: Some(change),
        })
        .await
    }

    /// The sessions kept on disk that are still live at `now_unix` (seconds since the Unix
    /// epoch), after removing the expired ones; for loading at start.
    pub fn live_sessions(&self, now_unix: i64) -> rusqlite::Result<Vec<(uuid::Uuid, String, i64)>> {
        let connection = open_connection(&self.path)?;
        connection.execute(
            "DELETE FROM sessions WHERE expires_at <= ?1",
            params![now_unix],
        )?;
        let mut select = connection.prepare("SELECT id, username, expires_at FROM sessions")?;
        let rows = select.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?;
        let mut live = Vec::new();
        for row in rows {
            let (id, username, expires_at) = row?;
            // A row this code did not write is skipped rather than trusted.
            if let Ok(id) = uuid::Uuid::parse_str(&id) {
                live.push((id, username, expires_at));
            }
        }
        Ok(live)
    }

    async fn submit(&self, entry: Entry) -> Result<(), OutboxError> {
        match self.writes.submit(entry).await {
            Ok(()) => {
                // Counted here between delivery's reads, which set the exact figure.
                grpc_suite::metrics::AUTH_OUTBOX_BACKLOG.inc();
                Ok(())
            }
            Err(SubmitError::Commit(error)) => Err(error),
            Err(SubmitError::Stopped) => Err(OutboxError::Closed),
            Err(unanswered @ SubmitError::Unanswered) => {
                Err(OutboxError::Write(unanswered.to_string()))
            }
        }
    }

    /// Events not yet delivered, oldest first (for tests and diagnostics).
    pub fn pending(&self) -> rusqlite::Result<Vec<AuditEvent>> {
        let connection = open_connection(&self.path)?;
        Ok(read_batch(&connection, usize::MAX)?
            .into_iter()
            .map(|(_, event)| event)
            .collect())
    }

    /// Delivers committed events to the logger, in order, until `shutdown`. Events it could
    /// not deliver stay in the file for the next run.
    /// `token`, when set, is presented as `authorization: Bearer <token>` (the logger's
    /// `--write-token-file`).
    pub async fn deliver(
        self,
        logger: LoggerServiceClient<Channel>,
        token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
        shutdown: CancellationToken,
    ) {
        let mut reader = match open_connection(&self.path) {
            Ok(connection) => connection,
            Err(error) => {
                tracing::error!(%error, "cannot open the audit outbox for delivery; events stay queued on disk");
                return;
            }
        };
        let mut delivery = Delivery {
            logger,
            token,
            shutdown,
            outage: None,
        };
        loop {
            let read = run_blocking(move || {
                let batch = read_batch(&reader, DELIVERY_BATCH);
                let backlog = count_pending(&reader);
                (reader, batch, backlog)
            })
            .await;
            let Ok((connection, batch, backlog)) = read else {
                return;
            };
            reader = connection;
            if let Ok(backlog) = backlog {
                grpc_suite::metrics::AUTH_OUTBOX_BACKLOG.set(backlog);
            }
            let batch = match batch {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::error!(%error, "reading the audit outbox failed; retrying");
                    if !delivery.pause(MAX_BACKOFF).await {
                        return;
                    }
                    continue;
                }
            };
            let Some(&(last_seq, _)) = batch.last() else {
                // Caught up: nothing is waiting, and an outage that ended is over for good.
                grpc_suite::metrics::AUTH_OUTBOX_OLDEST_AGE_SECONDS.set(0.0);
                delivery.report_caught_up();
                tokio::select! {
                    () = self.committed.notified() => continue,
                    () = delivery.shutdown.cancelled() => return,
                }
            };
            for (_, event) in batch {
                if !delivery.send(event).await {
                    return; // Shutdown: undelivered events stay on disk.
                }
            }
            // One delete for the whole batch. A crash before it only re-sends events the
            // logger already has, which it recognises by event id.
            let deleted = run_blocking(move || {
                let result =
                    reader.execute("DELETE FROM outbox WHERE seq <= ?1", params![last_seq]);
                (reader, result)
            })
            .await;
            let Ok((connection, result)) = deleted else {
                return;
            };
            reader = connection;
            if let Err(error) = result {
                tracing::error!(%error, "removing delivered events from the outbox failed");
            }
        }
    }
}

/// The outcome of one delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// The logger has it (or refused it for good): remove it from the outbox.
    Done,
    /// Not delivered; try again after a pause.
    Retry,
    /// Shutdown came first.
    Shutdown,
}

/// The wire request for `event`, under its own id and original time.
pub(crate) fn log_request(event: AuditEvent) -> pb::LogRequest {
    pb::LogRequest {
        event_type: event.event_type,
        details: event.details,
        timestamp: event.timestamp,
        event_id: event.event_id,
    }
}

/// The delivery side's connection to the logger and its stop signal.
pub(crate) struct Delivery {
    logger: LoggerServiceClient<Channel>,
    /// The `authorization` value every delivery carries, if the logger guards writes.
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    shutdown: CancellationToken,
    /// Set while the logger is failing, and until the events queued meanwhile are out: an
    /// outage gets one warning when it starts and one info line once it is over, not a
    /// warning per retry for as long as it lasts.
    outage: Option<Outage>,
}

/// A period in which delivery failed.
#[derive(Debug)]
struct Outage {
    /// The first failure.
    since: tokio::time::Instant,
    /// The first success after the last failure, once there is one.
    recovered_at: Option<tokio::time::Instant>,
    /// Events delivered since `recovered_at`.
    delivered: u64,
}

impl Delivery {
    /// Sends one event until the logger takes it; false if shutdown came first.
    async fn send(&mut self, event: AuditEvent) -> bool {
        let request = log_request(event);
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.attempt(&request).await {
                Attempt::Done => return true,
                Attempt::Shutdown => return false,
                Attempt::Retry => {}
            }
            if !self.pause(backoff).await {
                return false;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One try at delivering `request`.
    pub(crate) async fn attempt(&mut self, request: &pb::LogRequest) -> Attempt {
        // The event being sent is the oldest undelivered one; refreshed on every retry,
        // so the figure grows for as long as the logger is down.
        grpc_suite::metrics::AUTH_OUTBOX_OLDEST_AGE_SECONDS.set(age_seconds(&request.timestamp));
        let mut call = tonic::Request::new(request.clone());
        if let Some(token) = &self.token {
            call.metadata_mut().insert("authorization", token.clone());
        }
        let attempt = tokio::time::timeout(DELIVERY_TIMEOUT, self.logger.log_activity(call));
        let outcome = tokio::select! {
            outcome = attempt => outcome,
            () = self.shutdown.cancelled() => return Attempt::Shutdown,
        };
        match outcome {
            Ok(Ok(reply)) if reply.get_ref().logged => {
                self.delivered();
                return Attempt::Done;
            }
            Ok(Ok(_)) => self.failed("the logger did not log the event"),
            Ok(Err(status)) if status.code() == Code::InvalidArgument => {
                // Retrying cannot fix a refused event, and holding it would stop every
                // later one: record the loss loudly and move on.
                tracing::error!(event_id = %request.event_id, reason = status.message(), "logger refused an audit event; dropping it");
                return Attempt::Done;
            }
            Ok(Err(status)) => self.failed(&format!(
                "the logger answered {}: {}",
                grpc_suite::cli::code_name(status.code()),
                status.message()
            )),
            Err(_) => self.failed("the logger did not answer in time"),
        }
        Attempt::Retry
    }

    /// Notes a failed attempt: the first of an outage is a warning, the rest are debug.
    fn failed(&mut self, reason: &str) {
        match &mut self.outage {
            None => {
                tracing::warn!(
                    reason,
                    "audit delivery to the logger is failing; events wait in the outbox and are retried"
                );
                self.outage = Some(Outage {
                    since: tokio::time::Instant::now(),
                    recovered_at: None,
                    delivered: 0,
                });
            }
            Some(outage) => {
                // Still the same outage: a success since then was a blip, not the end.
                outage.recovered_at = None;
                outage.delivered = 0;
                tracing::debug!(reason, "audit delivery still failing");
            }
        }
    }

    /// Notes a delivered event, counting it toward the outage being caught up on.
    fn delivered(&mut self) {
        if let Some(outage) = &mut self.outage {
            outage
                .recovered_at
                .get_or_insert_with(tokio::time::Instant::now);
            outage.delivered += 1;
        }
    }

    /// The outbox is empty: if an outage ended, one line says how long it lasted and how
    /// many events were delivered since.
    pub(crate) fn report_caught_up(&mut self) {
        let Some(outage) = self.outage.take_if(|outage| outage.recovered_at.is_some()) else {
            return;
        };
        let recovered_at = outage.recovered_at.unwrap_or(outage.since);
        tracing::info!(
            delivered = outage.delivered,
            outage = ?recovered_at.duration_since(outage.since),
            "audit delivery recovered; the outbox is empty again"
        );
    }

    /// A delivery to `logger`, presenting `token`, until `shutdown`.
    pub(crate) fn new(
        logger: LoggerServiceClient<Channel>,
        token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            logger,
            token,
            shutdown,
            outage: None,
        }
    }

    /// Sleeps, unless shutdown comes first (then false).
    pub(crate) async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.shutdown.cancelled() => false,
        }
    }
}

/// One group commit on the writer thread: writes `entries` in one transaction, then wakes
/// delivery. One `()` per entry on success; the writer answers every caller after this.
fn commit(
    connection: &mut Connection,
    entries: &[Entry],
    committed: &Notify,
) -> Result<Vec<()>, OutboxError> {
    match insert_all(connection, entries) {
        Ok(()) => {
            committed.notify_one();
            Ok(vec![(); entries.len()])
        }
        Err(error) => {
            tracing::error!(%error, events = entries.len(), "audit outbox commit failed");
            Err(OutboxError::Write(error.to_string()))
        }
    }
}

/// Inserts `entries`' events and applies their session changes, in order, in one
/// transaction (rolled back on any failure).
fn insert_all(connection: &mut Connection, entries: &[Entry]) -> rusqlite::Result<()> {
    let transaction = connection.transaction()?;
    {
        let mut insert = transaction.prepare_cached(
            "INSERT INTO outbox (event_id, event_type, details, timestamp) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut start = transaction.prepare_cached(
            "INSERT OR REPLACE INTO sessions (id, username, expires_at) VALUES (?1, ?2, ?3)",
        )?;
        let mut end = transaction.prepare_cached("DELETE FROM sessions WHERE id = ?1")?;
        for Entry { event, session } in entries {
            insert.execute(params![
                event.event_id,
                event.event_type,
                event.details,
                event.timestamp
            ])?;
            match session {
                Some(SessionChange::Start {
                    id,
                    username,
                    expires_at,
                }) => {
                    start.execute(params![id.to_string(), username, expires_at])?;
                }
                Some(SessionChange::End { id }) => {
                    end.execute(params![id.to_string()])?;
                }
                None => {}
            }
        }
    }
    transaction.commit()
}

/// How many events wait in the outbox.
fn count_pending(connection: &Connection) -> rusqlite::Result<i64> {
    connection.query_row("SELECT COUNT(*) FROM outbox", [], |row| row.get(0))
}

/// Seconds since `timestamp` (local time in [`wire_time::LOG_TIMESTAMP`]); 0 if unreadable.
fn age_seconds(timestamp: &str) -> f64 {
    chrono::NaiveDateTime::parse_from_str(timestamp, wire_time::LOG_TIMESTAMP)
        .map(|then| {
            let age = chrono::Local::now().naive_local() - then;
            (age.num_milliseconds() as f64 / 1000.0).max(0.0)
        })
        .unwrap_or(0.0)
}

fn read_batch(connection: &Connection, limit: usize) -> rusqlite::Result<Vec<(i64, AuditEvent)>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut select = connection.prepare_cached(
        "SELECT seq, event_id, event_type, details, timestamp FROM outbox ORDER BY seq LIMIT ?1",
    )?;
    let rows = select.query_map(params![limit], |row| {
        Ok((
            row.get(0)?,
            AuditEvent {
                event_id: row.get(1)?,
                event_type: row.get(2)?,
                details: row.get(3)?,
                timestamp: row.get(4)?,
            },
        ))
    })?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded events are on disk, in order, and survive reopening the file.
    #[tokio::test]
    async fn recorded_events_persist_in_order() {
        let folder = tempfile::tempdir().expect("tempdir");
        let path = folder.path().join("outbox.db");
        let outbox = Outbox::open(&path).expect("open");
        let events: Vec<_> = (0..20)
            .map(|i| AuditEvent::now("TEST", format!("event {i}")))
            .collect();
        let mut writers = Vec::new();
        for event in events.iter().take(10).cloned() {
            outbox.record(event).await.expect("record");
        }
        for event in events.iter().skip(10).cloned() {
            let outbox = outbox.clone();
            writers.push(tokio::spawn(async move { outbox.record(event).await }));
        }
        for writer in writers {
            writer.await.expect("task").expect("record");
        }
        drop(outbox);
        let reopened = Outbox::open(&path).expect("reopen");
        let pending = reopened.pending().expect("pending");
        assert_eq!(pending.len(), 20);
        assert_eq!(
            pending[..10],
            events[..10],
            "sequential records keep their order"
        );
    }
}
