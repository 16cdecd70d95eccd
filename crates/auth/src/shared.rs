//! Sessions and the audit outbox in PostgreSQL (`auth_server --sessions-db postgres://…`),
//! shared by every auth replica: a session made on one is validated and ended on any
//! other, and a replica's loss logs no one out.
//!
//! Each session change and its audit event are written in one transaction, as the SQLite
//! outbox does, so a session exists exactly when its SESSION_STARTED is recorded and its
//! SESSION_TERMINATED is not. Validation reads the table (no cache: another replica may
//! have ended the session a moment ago).
//!
//! Delivery: every replica delivers from the one outbox table. A round claims up to
//! [`DELIVERY_BATCH`] of the oldest rows with `SELECT … FOR UPDATE SKIP LOCKED` in a
//! transaction, sends them, deletes those delivered and commits; the other replicas skip
//! the claimed rows and take the next ones. A replica that dies mid-round releases its
//! claim (its transaction rolls back) and another sends those rows again; the logger
//! stores an event id once, so a re-send is harmless and every event lands exactly once.
//! A failed send ends the round (rolling back the claim of what was not delivered) and
//! backs off, so no transaction stays open through a logger outage.

use std::{sync::Arc, time::Duration};

use grpc_suite::{
    logger::logger_service_client::LoggerServiceClient,
    postgres::{GenericClient, Pool, SchemaError, tokio_postgres},
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::outbox::{
    Attempt, AuditEvent, DELIVERY_BATCH, Delivery, FIRST_BACKOFF, MAX_BACKOFF, log_request,
};

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS auth_sessions (
        id TEXT PRIMARY KEY,
        username TEXT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS idx_auth_sessions_expires_at ON auth_sessions (expires_at);
    CREATE TABLE IF NOT EXISTS auth_outbox (
        seq BIGSERIAL PRIMARY KEY,
        event_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        details TEXT NOT NULL,
        timestamp TEXT NOT NULL
    );
";
/// The advisory lock key schema creation takes ("auth" in ASCII).
const SCHEMA_LOCK: i64 = 0x6175_7468;
/// Connections per replica: logins, logouts and validations, plus delivery.
const POOL_SIZE: usize = 16;
/// How often delivery looks for events other replicas recorded (its own commits wake it
/// at once): a replica that died leaves its events to the others.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Queues `event` for delivery, in `client`'s transaction if it is one.
async fn insert_event(
    client: &impl GenericClient,
    event: &AuditEvent,
) -> Result<(), tokio_postgres::Error> {
    let insert = client.prepare_cached(INSERT_EVENT).await?;
    client
        .execute(
            &insert,
            &[
                &event.event_id,
                &event.event_type,
                &event.details,
                &event.timestamp,
            ],
        )
        .await?;
    Ok(())
}

const INSERT_EVENT: &str =
    "INSERT INTO auth_outbox (event_id, event_type, details, timestamp) VALUES ($1, $2, $3, $4)";

/// Why the shared database could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
#[error("session database: {0}")]
pub struct SharedError(String);

impl From<tokio_postgres::Error> for SharedError {
    fn from(error: tokio_postgres::Error) -> Self {
        Self(error.to_string())
    }
}

impl From<grpc_suite::postgres::PoolError> for SharedError {
    fn from(error: grpc_suite::postgres::PoolError) -> Self {
        Self(error.to_string())
    }
}

/// The sessions and outbox every replica shares. Cheap to clone.
#[derive(Clone)]
pub struct SharedSessions {
    pool: Pool,
    /// Wakes this replica's delivery when it recorded an event.
    committed: Arc<Notify>,
}

impl std::fmt::Debug for SharedSessions {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SharedSessions")
            .finish_non_exhaustive()
    }
}

impl SharedSessions {
    /// Connects to `url` and creates the tables if missing (safe when replicas start at
    /// once).
    pub async fn open(url: &str) -> Result<Self, SharedError> {
        let config = grpc_suite::postgres::config(url, "auth_server").map_err(SharedError)?;
        let pool = grpc_suite::postgres::pool(config, POOL_SIZE).map_err(SharedError)?;
        grpc_suite::postgres::create_schema(&pool, SCHEMA_LOCK, SCHEMA)
            .await
            .map_err(|error| match error {
                SchemaError::Pool(error) => SharedError::from(error),
                SchemaError::Sql(error) => SharedError::from(error),
            })?;
        let committed = Arc::new(Notify::new());
        // Events left by an earlier run (or a replica that died) are waiting.
        committed.notify_one();
        Ok(Self { pool, committed })
    }

    /// Records an event on its own (a refused or throttled login).
    pub async fn record(&self, event: &AuditEvent) -> Result<(), SharedError> {
        let client = self.pool.get().await?;
        insert_event(&client, event).await?;
        self.committed.notify_one();
        Ok(())
    }

    /// Keeps session `id` of `username` until `expires_at` (Unix seconds) and records
    /// `event`, in one transaction.
    pub async fn start(
        &self,
        id: uuid::Uuid,
        username: &str,
        expires_at: i64,
        event: &AuditEvent,
    ) -> Result<(), SharedError> {
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        transaction
            .execute(
                "INSERT INTO auth_sessions (id, username, expires_at) VALUES ($1, $2, $3)",
                &[&id.to_string(), &username, &expires_at],
            )
            .await?;
        insert_event(&transaction, event).await?;
        transaction.commit().await?;
        self.committed.notify_one();
        Ok(())
    }

    /// The live session `id` at `now` (Unix seconds): its user and expiry.
    pub async fn get(
        &self,
        id: uuid::Uuid,
        now: i64,
    ) -> Result<Option<(String, i64)>, SharedError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT username, expires_at FROM auth_sessions WHERE id = $1 AND expires_at > $2",
                &[&id.to_string(), &now],
            )
            .await?;
        Ok(match row {
            Some(row) => Some((row.try_get(0)?, row.try_get(1)?)),
            None => None,
        })
    }

    /// Ends session `id` if it is live at `now`, recording the event `event_for` makes
    /// from its username, in one transaction; the username, or `None` when there was no
    /// such live session (then nothing is recorded). Two replicas ending the same session
    /// at once: the row lock lets one delete it, the other finds nothing.
    pub async fn end(
        &self,
        id: uuid::Uuid,
        now: i64,
        event_for: impl FnOnce(&str) -> AuditEvent,
    ) -> Result<Option<String>, SharedError> {
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        let ended = transaction
            .query_opt(
                "DELETE FROM auth_sessions WHERE id = $1 AND expires_at > $2 RETURNING username",
                &[&id.to_string(), &now],
            )
            .await?;
        let Some(row) = ended else {
            transaction.rollback().await?;
            return Ok(None);
        };
        let username: String = row.try_get(0)?;
        let event = event_for(&username);
        insert_event(&transaction, &event).await?;
        transaction.commit().await?;
        self.committed.notify_one();
        Ok(Some(username))
    }

    /// Removes the sessions expired at `now`; returns how many are left.
    pub async fn sweep(&self, now: i64) -> Result<i64, SharedError> {
        let client = self.pool.get().await?;
        client
            .execute("DELETE FROM auth_sessions WHERE expires_at <= $1", &[&now])
            .await?;
        let left: i64 = client
            .query_one("SELECT count(*) FROM auth_sessions", &[])
            .await?
            .try_get(0)?;
        Ok(left)
    }

    /// Events not yet delivered, oldest first (for tests and diagnostics).
    pub async fn pending(&self) -> Result<Vec<AuditEvent>, SharedError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT event_id, event_type, details, timestamp FROM auth_outbox ORDER BY seq",
                &[],
            )
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// Delivers the shared outbox to the logger, alongside the other replicas, until
    /// `shutdown` (see the module's notes).
    pub async fn deliver(
        self,
        logger: LoggerServiceClient<Channel>,
        token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
        shutdown: CancellationToken,
    ) {
        let mut delivery = Delivery::new(logger, token, shutdown.clone());
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.deliver_round(&mut delivery).await {
                Ok(Round::Delivered) => backoff = FIRST_BACKOFF,
                Ok(Round::Empty) => {
                    grpc_suite::metrics::AUTH_OUTBOX_OLDEST_AGE_SECONDS.set(0.0);
                    delivery.report_caught_up();
                    backoff = FIRST_BACKOFF;
                    tokio::select! {
                        () = self.committed.notified() => {}
                        () = tokio::time::sleep(POLL_INTERVAL) => {}
                        () = shutdown.cancelled() => return,
                    }
                }
                Ok(Round::Failed) => {
                    if !delivery.pause(backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Ok(Round::Shutdown) => return,
                Err(error) => {
                    tracing::warn!(%error, "reading the shared audit outbox failed; retrying");
                    if !delivery.pause(MAX_BACKOFF).await {
                        return;
                    }
                }
            }
        }
    }

    /// Claims a batch, sends it, deletes what was delivered, commits.
    async fn deliver_round(&self, delivery: &mut Delivery) -> Result<Round, SharedError> {
        let mut client = self.pool.get().await?;
        let transaction = client.transaction().await?;
        let limit = i64::try_from(DELIVERY_BATCH).unwrap_or(i64::MAX);
        let rows = transaction
            .query(
                "SELECT seq, event_id, event_type, details, timestamp FROM auth_outbox
                 ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED",
                &[&limit],
            )
            .await?;
        if rows.is_empty() {
            transaction.rollback().await?;
            return Ok(Round::Empty);
        }
        let mut delivered: Vec<i64> = Vec::with_capacity(rows.len());
        let mut round = Round::Delivered;
        for row in &rows {
            let seq: i64 = row.try_get(0)?;
            let request = log_request(event_from_row_at(row, 1)?);
            match delivery.attempt(&request).await {
                Attempt::Done => delivered.push(seq),
                Attempt::Retry => {
                    round = Round::Failed;
                    break;
                }
                Attempt::Shutdown => {
                    round = Round::Shutdown;
                    break;
                }
            }
        }
        if !delivered.is_empty() {
            transaction
                .execute("DELETE FROM auth_outbox WHERE seq = ANY($1)", &[&delivered])
                .await?;
        }
        // A failure here only means those events are sent again, which the logger's
        // event-id check makes harmless.
        transaction.commit().await?;
        let waiting: i64 = client
            .query_one("SELECT count(*) FROM auth_outbox", &[])
            .await?
            .try_get(0)?;
        grpc_suite::metrics::AUTH_OUTBOX_BACKLOG.set(waiting);
        Ok(round)
    }
}

/// How a delivery round ended.
enum Round {
    /// Every claimed event was delivered.
    Delivered,
    /// Nothing was waiting (or all of it is claimed by other replicas).
    Empty,
    /// A send failed; back off.
    Failed,
    Shutdown,
}

fn event_from_row(row: &tokio_postgres::Row) -> Result<AuditEvent, SharedError> {
    event_from_row_at(row, 0)
}

fn event_from_row_at(row: &tokio_postgres::Row, first: usize) -> Result<AuditEvent, SharedError> {
    Ok(AuditEvent {
        event_id: row.try_get(first)?,
        event_type: row.try_get(first + 1)?,
        details: row.try_get(first + 2)?,
        timestamp: row.try_get(first + 3)?,
    })
}
