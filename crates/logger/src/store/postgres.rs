//! The log store on PostgreSQL, shared by several logger replicas.
//!
//! - **Schema**: the contract's `logs` table with the same four columns (`id` a
//!   `BIGSERIAL`), and the same side table as on SQLite, `log_event_ids`, whose primary key
//!   is the unique index on event ids. Created if missing under an advisory lock, so
//!   replicas starting together take turns.
//! - **Writes**: the same group-commit writer thread as SQLite ([`GroupCommit`]); each batch
//!   is one transaction whose statements are pipelined on one connection, and callers are
//!   answered after `COMMIT` returns. An event id already stored is skipped by
//!   `INSERT … ON CONFLICT DO NOTHING` and answered as logged, whichever replica stored it.
//! - **Order**: every batch first takes a transaction-level advisory lock, so the replicas'
//!   transactions run one at a time and ids are handed out in commit order, as on SQLite.
//!   Without it, replica A could take id 10, replica B id 11 and commit first: a follower
//!   that saw 11 would move past 10 before it became visible and never send it. The lock
//!   is released only after the commit is visible, so "newest id" and "everything below
//!   it" always agree.
//! - **Follow**: followers on replica A must see rows written through replica B, which no
//!   in-process channel carries. One tailer task per replica reads the rows after the last
//!   it published, in id order, and publishes them on the broadcast followers subscribe
//!   to. It is woken by LISTEN/NOTIFY (every batch sends a NOTIFY, delivered at commit, so
//!   a follower sees a row within a round trip) and also polls every
//!   [`POLL_INTERVAL`], which covers a lost listen connection: NOTIFY is the fast path,
//!   the poll the guarantee. A follower that falls behind catches up from the table as on
//!   SQLite.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use grpc_suite::{
    group_commit::{GroupCommit, SubmitError},
    log_writer::LogWriterGuard,
    postgres::{
        Pool, SchemaError,
        tokio_postgres::{self, AsyncMessage, IsolationLevel, NoTls, Row},
    },
};
use tokio::sync::{Notify, broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::{
    Appended, BROADCAST_CAPACITY, Echo, LogRow, NewEntry, StoreError, StoreStats, WriterParts,
    committed_batch, drain_echo, spawn_writer,
};

/// The idempotent schema: the contract's table and our side table, as on SQLite.
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS logs (
        id BIGSERIAL PRIMARY KEY,
        event_type TEXT NOT NULL,
        details TEXT NOT NULL,
        timestamp TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS idx_logs_event_type ON logs (event_type, id);
    CREATE TABLE IF NOT EXISTS log_event_ids (
        event_id TEXT PRIMARY KEY,
        log_id BIGINT NOT NULL
    );
";

/// The advisory lock key schema creation takes (any constant; "logs" in ASCII).
const SCHEMA_LOCK: i64 = 0x6c6f_6773;
/// The advisory lock key every write transaction takes, so ids follow commit order.
const WRITE_LOCK: i64 = 0x6c6f_6773_7772;
/// The NOTIFY channel committed batches announce themselves on.
const CHANNEL: &str = "logger_rows";
/// How often the tailer looks for new rows when no notification came.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Rows the tailer reads per query.
const TAIL_PAGE: u32 = 512;
/// How long one batch's transaction may take before its callers hear it failed.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pooled connections: the writer's, the tailer's reads, and queries and catch-ups.
const POOL_SIZE: usize = 8;

/// An entry without an event id: a plain insert.
const INSERT: &str =
    "INSERT INTO logs (event_type, details, timestamp) VALUES ($1, $2, $3) RETURNING id, FALSE";

/// An entry with an event id, in one statement: claim the id (nothing if it is already
/// stored, by this batch or any replica), insert the row only if claimed, and answer
/// either the new row or the stored one. The last SELECT sees the table as it was before
/// the statement, so it finds the id exactly when the claim did not.
const INSERT_WITH_ID: &str = "
    WITH claimed AS (
        INSERT INTO log_event_ids (event_id, log_id)
        VALUES ($4, nextval(pg_get_serial_sequence('logs', 'id')))
        ON CONFLICT (event_id) DO NOTHING
        RETURNING log_id
    ), inserted AS (
        INSERT INTO logs (id, event_type, details, timestamp)
        SELECT log_id, $1, $2, $3 FROM claimed
        RETURNING id
    )
    SELECT id, FALSE FROM inserted
    UNION ALL
    SELECT log_id, TRUE FROM log_event_ids WHERE event_id = $4";

const COLUMNS: &str = "id, event_type, details, timestamp";

/// The PostgreSQL store: the writer thread, the read pool, and the tailer.
#[derive(Clone)]
pub(super) struct PgStore {
    pool: Pool,
    writes: GroupCommit<NewEntry, Appended, Arc<StoreError>>,
    committed: broadcast::Sender<LogRow>,
    stats: Arc<StoreStats>,
    committing: watch::Receiver<bool>,
    /// Stops the tailer.
    stop: CancellationToken,
    /// The tailer's task, awaited by [`close`](Self::close).
    tailer: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
    /// As on SQLite: the echo thread's guard, dropped by close.
    echo_finished: Arc<Mutex<Option<LogWriterGuard>>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects, creates the schema if missing, and starts the writer and the tailer.
    /// Call from within a tokio runtime.
    pub(super) async fn open(url: &str, echo: bool) -> Result<Self, StoreError> {
        let config = grpc_suite::postgres::config(url, "logger_server")
            .map_err(StoreError::PostgresSetup)?;
        let pool = grpc_suite::postgres::pool(config.clone(), POOL_SIZE)
            .map_err(StoreError::PostgresSetup)?;
        grpc_suite::postgres::create_schema(&pool, SCHEMA_LOCK, SCHEMA)
            .await
            .map_err(|error| match error {
                SchemaError::Pool(error) => StoreError::PostgresPool(error),
                SchemaError::Sql(source) => StoreError::Postgres {
                    context: "creating the schema",
                    source,
                },
            })?;
        // The contract's columns must be there (a table of that name made by someone else
        // would otherwise fail every write).
        let client = pool.get().await?;
        let start = client
            .query_one("SELECT COALESCE(MAX(id), 0) FROM logs", &[])
            .await
            .map_err(pg("reading the newest id"))?
            .try_get::<_, i64>(0)
            .map_err(pg("reading the newest id"))?;
        client
            .prepare("SELECT id, event_type, details, timestamp FROM logs LIMIT 0")
            .await
            .map_err(pg(
                "the logs table does not have the columns id, event_type, details, timestamp",
            ))?;
        drop(client);

        let (committed, _) = broadcast::channel(BROADCAST_CAPACITY);
        let WriterParts {
            stats,
            echo,
            echo_finished,
            committing_sender,
            committing,
        } = WriterParts::new(echo)?;
        let mut writer = Writer {
            pool: pool.clone(),
            runtime: tokio::runtime::Handle::current(),
            stats: Arc::clone(&stats),
            echo,
            committing: committing_sender,
        };
        let writes = spawn_writer("log-writer-pg", move |batch| writer.commit(batch))?;
        let stop = CancellationToken::new();
        let tailer = Tailer {
            pool: pool.clone(),
            config,
            cursor: start,
            committed: committed.clone(),
            stop: stop.clone(),
        };
        let tailer = tokio::spawn(tailer.run());
        Ok(Self {
            pool,
            writes,
            committed,
            stats,
            committing,
            stop,
            tailer: Arc::new(Mutex::new(Some(tailer))),
            echo_finished: Arc::new(Mutex::new(echo_finished)),
        })
    }

    pub(super) fn committing(&self) -> watch::Receiver<bool> {
        self.committing.clone()
    }

    pub(super) fn stats(&self) -> Arc<StoreStats> {
        Arc::clone(&self.stats)
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<LogRow> {
        self.committed.subscribe()
    }

    pub(super) async fn append(&self, entry: NewEntry) -> Result<Appended, Arc<StoreError>> {
        self.writes
            .submit(entry)
            .await
            .map_err(|error| match error {
                SubmitError::Commit(error) => error,
                SubmitError::Stopped => Arc::new(StoreError::WriterStopped),
                SubmitError::Unanswered => Arc::new(StoreError::Unanswered),
            })
    }

    pub(super) async fn newest(
        &self,
        limit: u32,
        event_type: Option<&str>,
    ) -> Result<Vec<LogRow>, StoreError> {
        let client = self.pool.get().await?;
        newest(&**client, limit, event_type).await
    }

    pub(super) async fn after(
        &self,
        cursor: i64,
        limit: u32,
        event_type: Option<&str>,
    ) -> Result<Vec<LogRow>, StoreError> {
        after(&self.pool, cursor, limit, event_type).await
    }

    pub(super) async fn snapshot(
        &self,
        backlog: u32,
        event_type: Option<&str>,
    ) -> Result<(i64, Vec<LogRow>), StoreError> {
        let mut client = self.pool.get().await?;
        // One snapshot for both reads, so the newest id and the backlog agree.
        let transaction = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg("starting a read transaction"))?;
        let newest_id: i64 = transaction
            .query_one("SELECT COALESCE(MAX(id), 0) FROM logs", &[])
            .await
            .map_err(pg("reading the newest id"))?
            .try_get(0)
            .map_err(pg("reading the newest id"))?;
        let mut rows = if backlog == 0 {
            Vec::new()
        } else {
            newest(&*transaction, backlog, event_type).await?
        };
        transaction
            .commit()
            .await
            .map_err(pg("ending a read transaction"))?;
        rows.reverse();
        Ok((newest_id, rows))
    }

    pub(super) async fn close(&self, limit: Duration) {
        match self.writes.stop(limit).await {
            Ok(()) => tracing::debug!("log writer stopped"),
            Err(error) => tracing::error!(%error, "stopping the log writer"),
        }
        drain_echo(&self.echo_finished).await;
        self.stop.cancel();
        let tailer = self.tailer.lock().ok().and_then(|mut slot| slot.take());
        if let Some(tailer) = tailer {
            let _ = tailer.await;
        }
        self.pool.close();
    }
}

/// Adds what we were doing to a driver error.
fn pg(context: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |source| StoreError::Postgres { context, source }
}

/// The newest `limit` rows, newest first, of `event_type` only when given. Two statements
/// rather than `$1 IS NULL OR …`, so each has a plan that uses its index.
pub(crate) async fn newest(
    client: &impl tokio_postgres::GenericClient,
    limit: u32,
    event_type: Option<&str>,
) -> Result<Vec<LogRow>, StoreError> {
    let limit = i64::from(limit);
    let rows =
        match event_type {
            None => {
                client
                    .query(
                        &format!("SELECT {COLUMNS} FROM logs ORDER BY id DESC LIMIT $1"),
                        &[&limit],
                    )
                    .await
            }
            Some(event_type) => client
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM logs WHERE event_type = $1 ORDER BY id DESC LIMIT $2"
                    ),
                    &[&event_type, &limit],
                )
                .await,
        }
        .map_err(pg("reading the logs"))?;
    rows.iter().map(row_from_sql).collect()
}

/// Up to `limit` rows after `cursor`, oldest first, of `event_type` only when given.
async fn after(
    pool: &Pool,
    cursor: i64,
    limit: u32,
    event_type: Option<&str>,
) -> Result<Vec<LogRow>, StoreError> {
    let client = pool.get().await?;
    let limit = i64::from(limit);
    let rows = match event_type {
        None => {
            client
                .query(
                    &format!("SELECT {COLUMNS} FROM logs WHERE id > $1 ORDER BY id LIMIT $2"),
                    &[&cursor, &limit],
                )
                .await
        }
        Some(event_type) => client
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM logs WHERE id > $1 AND event_type = $2 ORDER BY id LIMIT $3"
                ),
                &[&cursor, &event_type, &limit],
            )
            .await,
    }
    .map_err(pg("reading the logs"))?;
    rows.iter().map(row_from_sql).collect()
}

fn row_from_sql(row: &Row) -> Result<LogRow, StoreError> {
    let read = pg("reading a log row");
    Ok(LogRow {
        id: row.try_get(0).map_err(&read)?,
        event_type: row.try_get(1).map_err(&read)?,
        details: row.try_get(2).map_err(&read)?,
        timestamp: row.try_get(3).map_err(&read)?,
    })
}

/// The writer thread's state. The thread is the shared [`GroupCommit`] one; it drives the
/// async driver on the server's runtime through [`Handle::block_on`], so the batching,
/// backpressure and stop logic are the ones SQLite uses.
///
/// [`Handle::block_on`]: tokio::runtime::Handle::block_on
struct Writer {
    pool: Pool,
    runtime: tokio::runtime::Handle,
    stats: Arc<StoreStats>,
    echo: Option<Echo>,
    committing: watch::Sender<bool>,
}

impl Writer {
    fn commit(&mut self, batch: Vec<NewEntry>) -> Result<Vec<Appended>, Arc<StoreError>> {
        let _timer = grpc_suite::metrics::LOGGER_COMMIT_SECONDS.start_timer();
        let outcomes = self.runtime.block_on(async {
            tokio::time::timeout(COMMIT_TIMEOUT, write_batch(&self.pool, &batch))
                .await
                .unwrap_or(Err(StoreError::PostgresTimeout(COMMIT_TIMEOUT)))
        });
        self.committing.send_if_modified(|committing| {
            std::mem::replace(committing, outcomes.is_ok()) != outcomes.is_ok()
        });
        let outcomes = outcomes.map_err(|error| {
            tracing::error!(%error, rows = batch.len(), "committing a batch of logs failed");
            Arc::new(error)
        })?;
        // Followers get the rows from the tailer, in id order across replicas.
        committed_batch(batch, &outcomes, &self.stats, self.echo.as_mut(), None);
        Ok(outcomes)
    }
}

/// One batch in one transaction: the write lock, every entry's statement and a NOTIFY for
/// the tailers, pipelined, then COMMIT.
async fn write_batch(pool: &Pool, batch: &[NewEntry]) -> Result<Vec<Appended>, StoreError> {
    let mut client = pool.get().await?;
    let transaction = client
        .transaction()
        .await
        .map_err(pg("starting a transaction"))?;
    // Prepared once per connection (then cached), so that below each statement is one
    // request and they go out in the order they are polled.
    let lock = transaction
        .prepare_cached("SELECT pg_advisory_xact_lock($1)")
        .await
        .map_err(pg("preparing the write lock"))?;
    let insert = transaction
        .prepare_cached(INSERT)
        .await
        .map_err(pg("preparing the insert"))?;
    let insert_with_id = transaction
        .prepare_cached(INSERT_WITH_ID)
        .await
        .map_err(pg("preparing the insert with an event id"))?;
    let notify = transaction
        .prepare_cached("SELECT pg_notify($1, '')")
        .await
        .map_err(pg("preparing the notification"))?;
    // Polled together, the lock, the inserts and the NOTIFY go out back to back on the one
    // connection and run in that order: one round trip's wait for the batch, not one per
    // row. The lock is first, so every insert runs holding it.
    let locked = async {
        transaction
            .execute(&lock, &[&WRITE_LOCK])
            .await
            .map_err(pg("taking the write lock"))
    };
    let statements = batch.iter().map(|entry| {
        let (insert, insert_with_id, transaction) = (&insert, &insert_with_id, &transaction);
        async move {
            let row = match &entry.event_id {
                None => {
                    transaction
                        .query_one(
                            insert,
                            &[&entry.event_type, &entry.details, &entry.timestamp],
                        )
                        .await
                }
                Some(event_id) => {
                    transaction
                        .query_one(
                            insert_with_id,
                            &[
                                &entry.event_type,
                                &entry.details,
                                &entry.timestamp,
                                event_id,
                            ],
                        )
                        .await
                }
            }
            .map_err(pg("inserting a log row"))?;
            Ok::<_, StoreError>(Appended {
                id: row.try_get(0).map_err(pg("reading the new row's id"))?,
                duplicate: row.try_get(1).map_err(pg("reading the new row's id"))?,
            })
        }
    });
    let notified = async {
        transaction
            .execute(&notify, &[&CHANNEL])
            .await
            .map_err(pg("notifying followers"))
    };
    let (_, outcomes, _) = futures_util::future::try_join3(
        locked,
        futures_util::future::try_join_all(statements),
        notified,
    )
    .await?;
    transaction.commit().await.map_err(pg("committing"))?;
    Ok(outcomes)
}

/// Publishes every replica's committed rows to this replica's followers, in id order.
struct Tailer {
    pool: Pool,
    config: tokio_postgres::Config,
    /// The newest id published.
    cursor: i64,
    committed: broadcast::Sender<LogRow>,
    stop: CancellationToken,
}

impl Tailer {
    async fn run(mut self) {
        let wake = Arc::new(Notify::new());
        let mut listener: Option<Listening> = None;
        let mut failing = false;
        loop {
            if listener
                .as_ref()
                .is_none_or(|listening| listening.task.is_finished())
            {
                listener = self.listen(Arc::clone(&wake)).await;
            }
            match self.publish_new().await {
                Ok(()) if failing => {
                    tracing::info!("reading new log rows from PostgreSQL works again");
                    failing = false;
                }
                Ok(()) => {}
                Err(error) if !failing => {
                    tracing::warn!(%error, "reading new log rows for followers failed; retrying");
                    failing = true;
                }
                Err(error) => tracing::debug!(%error, "still failing to read new log rows"),
            }
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(POLL_INTERVAL) => {}
                () = self.stop.cancelled() => break,
            }
        }
        if let Some(listening) = listener {
            listening.task.abort();
        }
    }

    /// Publishes every row after the cursor.
    async fn publish_new(&mut self) -> Result<(), StoreError> {
        loop {
            let rows = after(&self.pool, self.cursor, TAIL_PAGE, None).await?;
            let full = rows.len() == TAIL_PAGE as usize;
            for row in rows {
                self.cursor = row.id;
                // No follower is not an error.
                let _ = self.committed.send(row);
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// A connection that LISTENs on [`CHANNEL`] and wakes the tailer at each
    /// notification; `None` when it cannot be made now (polling covers it; the next
    /// round tries again). The client is returned with the task: the session, and so the
    /// LISTEN, lasts as long as both are held.
    async fn listen(&self, wake: Arc<Notify>) -> Option<Listening> {
        let (client, mut connection) = match self.config.connect(NoTls).await {
            Ok(pair) => pair,
            Err(error) => {
                tracing::debug!(%error, "LISTEN connection failed; polling meanwhile");
                return None;
            }
        };
        let task = tokio::spawn(async move {
            while let Some(message) =
                std::future::poll_fn(|context| connection.poll_message(context)).await
            {
                match message {
                    Ok(AsyncMessage::Notification(_)) => wake.notify_one(),
                    Ok(_) => {}
                    Err(error) => {
                        tracing::debug!(%error, "LISTEN connection lost; polling meanwhile");
                        break;
                    }
                }
            }
        });
        if let Err(error) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
            tracing::debug!(%error, "LISTEN failed; polling meanwhile");
            task.abort();
            return None;
        }
        Some(Listening {
            _client: client,
            task,
        })
    }
}

/// A live LISTEN session: its client and the task driving its connection.
struct Listening {
    _client: tokio_postgres::Client,
    task: tokio::task::JoinHandle<()>,
}
