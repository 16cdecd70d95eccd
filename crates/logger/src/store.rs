//! The log store: [`Store`], over SQLite (this file: the schema, the one writer thread with
//! group commit, and read-only connections for queries) or PostgreSQL ([`postgres`]), so
//! the service is written once against [`Store`]'s methods.
//!
//! Writes go through [`Store::append`] to a dedicated OS thread that owns the only
//! read-write connection ([`grpc_suite::group_commit`]). It blocks for one request, then
//! takes whatever else is queued (up to [`MAX_BATCH`]) and writes the lot in one
//! transaction, so N concurrent callers share one disk sync instead of paying for N. Nobody
//! is answered before the commit returns, so every `logged=true` is on disk. Committed rows
//! are then published on a broadcast channel for followers and handed to the echo thread.
//!
//! The `[LOG] <event_type>: <details>` echo has its own thread, fed without waiting
//! ([`grpc_suite::log_writer`], as the servers' log lines): a stdout nobody reads (a paused
//! pager, a stuck container log driver) fills its pipe and blocks whoever writes to it, and
//! that must never be the writer, or logging would stop. When the echo falls 1 MiB behind,
//! lines are dropped and counted instead ([`StoreStats`]).
//!
//! Reads open read-only connections (kept in a small pool) and run on tokio's blocking
//! pool; WAL mode lets them proceed while the writer commits.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

mod postgres;

pub(crate) use postgres::newest as newest_postgres;

use grpc_suite::{
    group_commit::{GroupCommit, SubmitError},
    log_writer::{LogWriter, LogWriterGuard},
};
use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};
use tokio::sync::{broadcast, watch};

/// The timestamp format of the contract's `logs.timestamp` column.
pub use grpc_suite::wire_time::LOG_TIMESTAMP as TIMESTAMP_FORMAT;

/// The most queued writes committed in one transaction. Large enough that a burst of
/// callers shares a handful of syncs; small enough that one transaction (and the wait of
/// the first caller in it) stays short.
pub const MAX_BATCH: usize = 1024;

/// Writes waiting for the writer thread. When full, callers wait in `send` (backpressure)
/// instead of piling up memory; it holds a few batches so the writer never starves.
const QUEUE_CAPACITY: usize = 4 * MAX_BATCH;

/// Committed rows kept for followers that fall behind. A follower further behind than this
/// reads what it missed back from the database (see `service.rs`), so the size only trades
/// memory against how often that happens.
const BROADCAST_CAPACITY: usize = 1024;

/// How long SQLite waits on another process's lock (an old tool writing the same file)
/// before giving up, instead of failing at once with SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Read-only connections kept open for reuse; more may exist for a moment under load.
const READ_POOL_SIZE: usize = 8;

/// The contract's table, exactly (the old tools read and write it), plus what we add
/// beside it. Every statement is idempotent, so opening an old system's file adds only the
/// index and the side table and touches no row.
///
/// Event ids live in a side table rather than in an extra `logs` column: the `logs` table
/// keeps exactly the contract's four columns, so even a tool that inserts positionally
/// (`INSERT INTO logs VALUES (NULL, ?, ?, ?)`) or reads `SELECT *` by position keeps
/// working on our file. The primary key makes the id unique; rows logged without an id
/// have no entry, so they cost nothing.
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS logs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event_type TEXT NOT NULL,
        details TEXT NOT NULL,
        timestamp TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS idx_logs_event_type ON logs(event_type);
    CREATE TABLE IF NOT EXISTS log_event_ids (
        event_id TEXT PRIMARY KEY,
        log_id INTEGER NOT NULL
    ) WITHOUT ROWID;
";

/// One stored row, as the contract's `logs` table has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRow {
    /// The row id: commit order, the newest the largest.
    pub id: i64,
    /// The event's type, e.g. `SESSION_STARTED`.
    pub event_type: String,
    /// Free text.
    pub details: String,
    /// When it happened, in [`TIMESTAMP_FORMAT`].
    pub timestamp: String,
}

/// A validated event to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// The event's type.
    pub event_type: String,
    /// Free text.
    pub details: String,
    /// When it happened, in [`TIMESTAMP_FORMAT`].
    pub timestamp: String,
    /// A client-chosen id; a second entry with the same id is not stored again.
    pub event_id: Option<String>,
}

/// What became of an appended entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The row that holds the event.
    pub id: i64,
    /// True when the event id was already stored, so no new row was written.
    pub duplicate: bool,
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed (disk full, I/O error, a corrupt file, …).
    #[error("{context}: {source}")]
    Sqlite {
        /// What we were doing.
        context: &'static str,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The folder for the database could not be created.
    #[error("creating the folder {path}: {source}")]
    Folder {
        /// The folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file has a `logs` table without the contract's columns.
    #[error(
        "the logs table in {path} does not have the columns id, event_type, details, timestamp: {source}"
    )]
    WrongSchema {
        /// The database file.
        path: PathBuf,
        /// SQLite's error preparing the contract's query.
        source: rusqlite::Error,
    },
    /// PostgreSQL failed (connection lost, a constraint, …).
    #[error("{context}: {source}")]
    Postgres {
        /// What we were doing.
        context: &'static str,
        /// The driver's error.
        source: grpc_suite::postgres::tokio_postgres::Error,
    },
    /// No PostgreSQL connection could be had (the database is down or unreachable).
    #[error("connecting to PostgreSQL: {0}")]
    PostgresPool(#[from] grpc_suite::postgres::PoolError),
    /// The PostgreSQL URL or schema could not be set up.
    #[error("{0}")]
    PostgresSetup(String),
    /// A PostgreSQL commit took longer than allowed; whether it happened is unknown (a
    /// retry with the same event id is stored once).
    #[error("PostgreSQL did not confirm the commit within {0:?}")]
    PostgresTimeout(Duration),
    /// The configuration names PostgreSQL where only SQLite can be opened
    /// ([`open_store`](crate::open_store)); use [`open`](crate::open).
    #[error("a PostgreSQL database is opened with logger_service::open")]
    NotSqlite,
    /// A read on the blocking pool failed to run.
    #[error("the read task failed: {0}")]
    ReadTask(String),
    /// The writer (or the echo) thread could not be started.
    #[error("starting the log writer thread: {0}")]
    Thread(std::io::Error),
    /// The writer has stopped (the server is shutting down).
    #[error("the log writer has stopped")]
    WriterStopped,
    /// The writer gave no outcome for an entry (a bug): whether it was stored is unknown.
    #[error("the log writer gave no answer for this entry")]
    Unanswered,
}

/// Adds what we were doing to a SQLite error.
trait SqliteContext<T> {
    fn context(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T> SqliteContext<T> for rusqlite::Result<T> {
    fn context(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sqlite { context, source })
    }
}

impl StoreError {
    /// True when the database could not be reached or did not answer (worth retrying
    /// elsewhere or later), as opposed to the database refusing the work.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Self::PostgresPool(_) | Self::PostgresTimeout(_) => true,
            Self::Postgres { source, .. } => source.is_closed() || source.as_db_error().is_none(),
            _ => false,
        }
    }
}

/// Counters that tests and operators can read.
#[derive(Debug, Default)]
pub struct StoreStats {
    commits: AtomicU64,
    rows: AtomicU64,
    echo_dropped: AtomicU64,
}

impl StoreStats {
    /// Transactions committed by the writer.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Rows written by the writer (duplicates excluded).
    pub fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// `[LOG]` echo lines dropped because stdout was not keeping up (the rows are stored).
    pub fn echo_dropped(&self) -> u64 {
        self.echo_dropped.load(Ordering::Relaxed)
    }
}

/// The open log database, SQLite or PostgreSQL. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Sqlite(SqliteStore),
    Postgres(postgres::PgStore),
}

impl Store {
    /// Opens (creating it and its folder if needed) the SQLite database at `path`; see
    /// [`SqliteStore::open`].
    pub fn open(path: &Path, echo: bool) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Sqlite(SqliteStore::open(path, echo)?),
        })
    }

    /// Connects to the PostgreSQL database at `url`, creates the schema if missing (safe
    /// when several replicas start at once) and starts the writer and the tailer that
    /// feeds followers with rows committed by any replica.
    pub async fn open_postgres(url: &str, echo: bool) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Postgres(postgres::PgStore::open(url, echo).await?),
        })
    }

    /// Whether the writer can commit: false from a failed commit until one succeeds again.
    pub fn committing(&self) -> watch::Receiver<bool> {
        match &self.backend {
            Backend::Sqlite(store) => store.committing(),
            Backend::Postgres(store) => store.committing(),
        }
    }

    /// The writer's counters.
    pub fn stats(&self) -> Arc<StoreStats> {
        match &self.backend {
            Backend::Sqlite(store) => store.stats(),
            Backend::Postgres(store) => store.stats(),
        }
    }

    /// Stores `entry` and answers once its transaction is committed (so the row is durable).
    pub async fn append(&self, entry: NewEntry) -> Result<Appended, Arc<StoreError>> {
        match &self.backend {
            Backend::Sqlite(store) => store.append(entry).await,
            Backend::Postgres(store) => store.append(entry).await,
        }
    }

    /// A receiver of every row committed from now on, in id order. On PostgreSQL that is
    /// every replica's rows (see [`postgres`]).
    pub fn subscribe(&self) -> broadcast::Receiver<LogRow> {
        match &self.backend {
            Backend::Sqlite(store) => store.subscribe(),
            Backend::Postgres(store) => store.subscribe(),
        }
    }

    /// The newest `limit` rows, newest first, of `event_type` only when given.
    pub async fn newest(
        &self,
        limit: u32,
        event_type: Option<String>,
    ) -> Result<Vec<LogRow>, StoreError> {
        match &self.backend {
            Backend::Sqlite(store) => {
                store
                    .read_blocking(move |connection| {
                        newest(connection, limit, event_type.as_deref())
                    })
                    .await
            }
            Backend::Postgres(store) => store.newest(limit, event_type.as_deref()).await,
        }
    }

    /// Up to `limit` rows with an id above `cursor`, oldest first, of `event_type` only
    /// when given.
    pub async fn after(
        &self,
        cursor: i64,
        limit: u32,
        event_type: Option<String>,
    ) -> Result<Vec<LogRow>, StoreError> {
        match &self.backend {
            Backend::Sqlite(store) => {
                store
                    .read_blocking(move |connection| {
                        after(connection, cursor, limit, event_type.as_deref())
                    })
                    .await
            }
            Backend::Postgres(store) => store.after(cursor, limit, event_type.as_deref()).await,
        }
    }

    /// The newest row id (0 for none) and the newest `backlog` rows, oldest first, as one
    /// consistent read.
    pub async fn snapshot(
        &self,
        backlog: u32,
        event_type: Option<String>,
    ) -> Result<(i64, Vec<LogRow>), StoreError> {
        match &self.backend {
            Backend::Sqlite(store) => {
                store
                    .read_blocking(move |connection| {
                        snapshot(connection, backlog, event_type.as_deref())
                    })
                    .await
            }
            Backend::Postgres(store) => store.snapshot(backlog, event_type.as_deref()).await,
        }
    }

    /// Commits what is queued and stops the writer (waiting at most `limit`); appends
    /// after this are refused with [`StoreError::WriterStopped`].
    pub async fn close(&self, limit: Duration) {
        match &self.backend {
            Backend::Sqlite(store) => store.close(limit).await,
            Backend::Postgres(store) => store.close(limit).await,
        }
    }
}

/// The SQLite database: a handle to the writer thread and a pool of readers. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    path: PathBuf,
    writes: GroupCommit<NewEntry, Appended, Arc<StoreError>>,
    committed: broadcast::Sender<LogRow>,
    readers: Arc<Mutex<Vec<Connection>>>,
    stats: Arc<StoreStats>,
    /// Whether the last commit succeeded: false while the disk refuses (full, read-only),
    /// so health can say the logger cannot store what it is sent.
    committing: watch::Receiver<bool>,
    /// The echo thread's guard: dropped by [`Store::close`] after the writer's exit, which
    /// lets the thread print the last lines (briefly) and stop. `None` without echo.
    echo_finished: Arc<Mutex<Option<LogWriterGuard>>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating it and its folder if needed) the database at `path`, brings the
    /// schema up to date and starts the writer thread. With `echo`, each committed row is
    /// printed as `[LOG] <event_type>: <details>` on stdout, as the old server did.
    pub fn open(path: &Path, echo: bool) -> Result<Self, StoreError> {
        if let Some(folder) = path
            .parent()
            .filter(|folder| !folder.as_os_str().is_empty())
        {
            std::fs::create_dir_all(folder).map_err(|source| StoreError::Folder {
                path: folder.to_path_buf(),
                source,
            })?;
        }
        let connection = Connection::open(path).context("opening the database")?;
        // WAL: readers never block the writer nor it them, and a commit is one append to
        // the log instead of rewriting pages in place. synchronous=FULL syncs the WAL at
        // every commit, so an acknowledged row survives a power cut, not only a crash of
        // this process (NORMAL would only guarantee the latter). Group commit is what
        // makes paying one sync per transaction affordable.
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .context("switching to WAL mode")?;
        connection
            .pragma_update(None, "synchronous", "FULL")
            .context("setting synchronous=FULL")?;
        connection
            .busy_timeout(BUSY_TIMEOUT)
            .context("setting the busy timeout")?;
        connection
            .execute_batch(SCHEMA)
            .context("creating the schema")?;
        check_schema(&connection, path)?;

        let (committed, _) = broadcast::channel(BROADCAST_CAPACITY);
        let WriterParts {
            stats,
            echo,
            echo_finished,
            committing_sender,
            committing,
        } = WriterParts::new(echo)?;
        let mut writer = Writer {
            connection,
            committed: committed.clone(),
            stats: Arc::clone(&stats),
            echo,
            committing: committing_sender,
        };
        let writes = spawn_writer("log-writer", move |batch| writer.commit(batch))?;
        Ok(Self {
            path: path.to_path_buf(),
            writes,
            committed,
            readers: Arc::new(Mutex::new(Vec::new())),
            stats,
            committing,
            echo_finished: Arc::new(Mutex::new(echo_finished)),
        })
    }

    /// Whether the writer can commit: false from a failed commit until one succeeds again
    /// (callers whose rows failed retry, which is what brings it back).
    pub fn committing(&self) -> watch::Receiver<bool> {
        self.committing.clone()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The writer's counters.
    pub fn stats(&self) -> Arc<StoreStats> {
        Arc::clone(&self.stats)
    }

    /// Stores `entry` and answers once its transaction is committed (so the row is durable).
    pub async fn append(&self, entry: NewEntry) -> Result<Appended, Arc<StoreError>> {
        self.writes
            .submit(entry)
            .await
            .map_err(|error| match error {
                SubmitError::Commit(error) => error,
                SubmitError::Stopped => Arc::new(StoreError::WriterStopped),
                SubmitError::Unanswered => Arc::new(StoreError::Unanswered),
            })
    }

    /// A receiver of every row committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LogRow> {
        self.committed.subscribe()
    }

    /// [`read`](Self::read) on tokio's blocking pool.
    async fn read_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.read(work))
            .await
            .map_err(|error| StoreError::ReadTask(error.to_string()))?
    }

    /// Runs `work` on a read-only connection from the pool (opening one if none is free).
    /// Blocking: call it from the blocking pool.
    pub fn read<T>(
        &self,
        work: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        // The lock is held only to take or return a connection, never while querying.
        let pooled = self.readers.lock().ok().and_then(|mut pool| pool.pop());
        let connection = match pooled {
            Some(connection) => connection,
            None => open_read_only(&self.path).context("opening a read-only connection")?,
        };
        let result = work(&connection).context("reading the logs");
        if let Ok(mut pool) = self.readers.lock()
            && pool.len() < READ_POOL_SIZE
        {
            pool.push(connection);
        }
        result
    }

    /// Asks the writer to commit what is queued and stop, then waits for it (at most
    /// `limit`). Appends after this are refused with [`StoreError::WriterStopped`].
    pub async fn close(&self, limit: Duration) {
        // Readers first: when the writer's connection is the last one to close, SQLite
        // checkpoints the WAL into the main file and removes it, leaving one plain file
        // for tools that copy it or open it read-only.
        if let Ok(mut pool) = self.readers.lock() {
            pool.clear();
        }
        match self.writes.stop(limit).await {
            Ok(()) => tracing::debug!("log writer stopped"),
            Err(error) => tracing::error!(%error, "stopping the log writer"),
        }
        drain_echo(&self.echo_finished).await;
    }
}

/// After the writer's exit (so every committed row's line is queued): lets the echo thread
/// print the last lines and stop. Dropping its guard waits up to a second, as a stdout
/// nobody reads would never take them: on a blocking thread, not a runtime worker.
async fn drain_echo(echo_finished: &Mutex<Option<LogWriterGuard>>) {
    let guard = echo_finished.lock().ok().and_then(|mut slot| slot.take());
    if let Some(guard) = guard {
        let _ = tokio::task::spawn_blocking(move || drop(guard)).await;
    }
}

/// Opens `path` read-only: never creates the file and never writes to it.
pub fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    Ok(connection)
}

/// The contract's query must work on the `logs` table, or nothing else will.
fn check_schema(connection: &Connection, path: &Path) -> Result<(), StoreError> {
    connection
        .prepare("SELECT id, event_type, details, timestamp FROM logs LIMIT 0")
        .map(drop)
        .map_err(|source| StoreError::WrongSchema {
            path: path.to_path_buf(),
            source,
        })
}

/// The newest `limit` rows, newest first, of `event_type` only when given. Newest means
/// the largest id, i.e. the latest committed: client-supplied timestamps may arrive late
/// (a retried delivery), so they do not define order; the id does, and it is indexed.
pub fn newest(
    connection: &Connection,
    limit: u32,
    event_type: Option<&str>,
) -> rusqlite::Result<Vec<LogRow>> {
    let mut statement = connection.prepare_cached(
        "SELECT id, event_type, details, timestamp FROM logs
         WHERE ?1 IS NULL OR event_type = ?1
         ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = statement.query_map(params![event_type, limit], row_from_sql)?;
    rows.collect()
}

/// Up to `limit` rows with an id above `after`, oldest first, of `event_type` only when
/// given: what a follower missed.
pub fn after(
    connection: &Connection,
    after: i64,
    limit: u32,
    event_type: Option<&str>,
) -> rusqlite::Result<Vec<LogRow>> {
    let mut statement = connection.prepare_cached(
        "SELECT id, event_type, details, timestamp FROM logs
         WHERE id > ?1 AND (?2 IS NULL OR event_type = ?2)
         ORDER BY id ASC LIMIT ?3",
    )?;
    let rows = statement.query_map(params![after, event_type, limit], row_from_sql)?;
    rows.collect()
}

/// Where a follower starts: the id of the newest row committed so far (0 for none) and the
/// newest `backlog` rows of `event_type` (all types when `None`), oldest first, both from
/// one read transaction so they agree.
pub fn snapshot(
    connection: &Connection,
    backlog: u32,
    event_type: Option<&str>,
) -> rusqlite::Result<(i64, Vec<LogRow>)> {
    // A read transaction in WAL mode sees one consistent state of the file.
    let transaction = connection.unchecked_transaction()?;
    let newest_id: i64 =
        transaction.query_row("SELECT COALESCE(MAX(id), 0) FROM logs", [], |row| {
            row.get(0)
        })?;
    let mut rows = if backlog == 0 {
        Vec::new()
    } else {
        newest(&transaction, backlog, event_type)?
    };
    transaction.finish()?;
    rows.reverse();
    Ok((newest_id, rows))
}

fn row_from_sql(row: &rusqlite::Row<'_>) -> rusqlite::Result<LogRow> {
    Ok(LogRow {
        id: row.get(0)?,
        event_type: row.get(1)?,
        details: row.get(2)?,
        timestamp: row.get(3)?,
    })
}

/// The writer thread's state: the only read-write connection, and where committed rows go.
struct Writer {
    connection: Connection,
    committed: broadcast::Sender<LogRow>,
    stats: Arc<StoreStats>,
    echo: Option<Echo>,
    /// Told whether each commit succeeded; see [`Store::committing`].
    committing: watch::Sender<bool>,
}

impl Writer {
    /// One group commit: writes `batch` in one transaction, then, before any caller is
    /// answered, counts it, publishes its new rows to followers and hands them to the echo.
    fn commit(&mut self, batch: Vec<NewEntry>) -> Result<Vec<Appended>, Arc<StoreError>> {
        let _timer = grpc_suite::metrics::LOGGER_COMMIT_SECONDS.start_timer();
        let entries: Vec<&NewEntry> = batch.iter().collect();
        let outcomes = write_batch(&mut self.connection, &entries);
        self.committing.send_if_modified(|committing| {
            std::mem::replace(committing, outcomes.is_ok()) != outcomes.is_ok()
        });
        let outcomes = outcomes.map_err(|error| {
            // Nothing in the batch was committed (the transaction rolled back), so each
            // caller hears so and may retry; the cause is a disk or database problem
            // shared by the whole batch, not something one request did.
            tracing::error!(%error, rows = batch.len(), "committing a batch of logs failed");
            Arc::new(error)
        })?;
        committed_batch(
            batch,
            &outcomes,
            &self.stats,
            self.echo.as_mut(),
            Some(&self.committed),
        );
        Ok(outcomes)
    }
}

/// After a commit, before any caller is answered: counts the batch, hands its new rows to
/// the echo and, when given, publishes them to followers.
fn committed_batch(
    batch: Vec<NewEntry>,
    outcomes: &[Appended],
    stats: &StoreStats,
    mut echo: Option<&mut Echo>,
    publish: Option<&broadcast::Sender<LogRow>>,
) {
    stats.commits.fetch_add(1, Ordering::Relaxed);
    grpc_suite::metrics::LOGGER_COMMIT_BATCH_ROWS.observe(batch.len() as f64);
    for (entry, appended) in batch.into_iter().zip(outcomes) {
        if appended.duplicate {
            continue;
        }
        stats.rows.fetch_add(1, Ordering::Relaxed);
        grpc_suite::metrics::LOGGER_ROWS_STORED.inc();
        if let Some(echo) = echo.as_deref_mut() {
            echo.add(&entry);
        }
        if let Some(publish) = publish {
            // No follower is not an error.
            let _ = publish.send(LogRow {
                id: appended.id,
                event_type: entry.event_type,
                details: entry.details,
                timestamp: entry.timestamp,
            });
        }
    }
    if let Some(echo) = echo {
        echo.send();
    }
}

/// What each backend's writer thread starts with: the shared statistics, the `[LOG]`
/// echo thread when asked for (and the signal that it has printed everything), and the
/// `committing` health signal with its sender.
struct WriterParts {
    stats: Arc<StoreStats>,
    echo: Option<Echo>,
    echo_finished: Option<LogWriterGuard>,
    committing_sender: watch::Sender<bool>,
    committing: watch::Receiver<bool>,
}

impl WriterParts {
    fn new(echo: bool) -> Result<Self, StoreError> {
        let stats = Arc::new(StoreStats::default());
        let (echo, echo_finished) = if echo {
            let (echo, finished) = Echo::start(Arc::clone(&stats))?;
            (Some(echo), Some(finished))
        } else {
            (None, None)
        };
        let (committing_sender, committing) = watch::channel(true);
        Ok(Self {
            stats,
            echo,
            echo_finished,
            committing_sender,
            committing,
        })
    }
}

/// Starts a backend's group-commit writer thread, committing each batch with `commit`.
fn spawn_writer(
    thread_name: &str,
    commit: impl FnMut(Vec<NewEntry>) -> Result<Vec<Appended>, Arc<StoreError>> + Send + 'static,
) -> Result<GroupCommit<NewEntry, Appended, Arc<StoreError>>, StoreError> {
    GroupCommit::spawn(thread_name, QUEUE_CAPACITY, MAX_BATCH, commit).map_err(StoreError::Thread)
}

/// The writer's side of the `[LOG]` echo: collects a batch's lines and hands them to the
/// echo thread in one piece without ever waiting, dropping (and counting) what does not fit.
struct Echo {
    output: LogWriter,
    /// This batch's lines, not yet handed over.
    pending: String,
    pending_lines: u64,
    stats: Arc<StoreStats>,
    /// Lines dropped since the echo last kept up; the warning is logged once per episode,
    /// not once per line, so a stuck stdout does not flood stderr too.
    dropping: u64,
}

impl Echo {
    /// Starts the echo thread, writing to stdout; the guard stops it.
    fn start(stats: Arc<StoreStats>) -> Result<(Self, LogWriterGuard), StoreError> {
        let (output, guard) =
            grpc_suite::log_writer::spawn("log-echo", std::io::stdout(), "stdout")
                .map_err(StoreError::Thread)?;
        let echo = Self {
            output,
            pending: String::new(),
            pending_lines: 0,
            stats,
            dropping: 0,
        };
        Ok((echo, guard))
    }

    /// Adds `entry`'s line to this batch's text.
    fn add(&mut self, entry: &NewEntry) {
        use std::fmt::Write as _;
        // Writing to a String cannot fail.
        let _ = writeln!(
            self.pending,
            "[LOG] {}: {}",
            entry.event_type, entry.details
        );
        self.pending_lines += 1;
    }

    /// Hands this batch's lines to the echo thread, or drops them if stdout is too far
    /// behind to queue them.
    fn send(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let lines = std::mem::take(&mut self.pending_lines);
        let queued = self.output.append(self.pending.as_bytes());
        self.pending.clear();
        // A batch with a huge row leaves a huge buffer behind; keep a modest one.
        self.pending.shrink_to(64 * 1024);
        if !queued {
            self.dropped(lines);
        } else if self.dropping > 0
            // Resumed only once half the budget is free again: a stdout that barely keeps
            // up would otherwise flip between the two states, a log line each time.
            && self.output.pending_bytes() <= self.output.max_pending() / 2
        {
            tracing::info!(
                dropped = self.dropping,
                "stdout caught up; [LOG] echo resumed"
            );
            self.dropping = 0;
        }
    }

    /// Counts `lines` dropped, warning once when an episode of dropping starts.
    fn dropped(&mut self, lines: u64) {
        if self.dropping == 0 {
            tracing::warn!(
                buffered_bytes = self.output.max_pending(),
                "stdout is not keeping up; dropping [LOG] echo lines until it does (rows are still stored)"
            );
        }
        self.dropping += lines;
        self.stats.echo_dropped.fetch_add(lines, Ordering::Relaxed);
    }
}

/// Inserts `entries` in one transaction, skipping event ids already stored (including
/// earlier in the same batch), and commits.
fn write_batch(
    connection: &mut Connection,
    entries: &[&NewEntry],
) -> Result<Vec<Appended>, StoreError> {
    let transaction = connection.transaction().context("starting a transaction")?;
    let mut outcomes = Vec::with_capacity(entries.len());
    {
        let mut find_id = transaction
            .prepare_cached("SELECT log_id FROM log_event_ids WHERE event_id = ?1")
            .context("preparing the event id lookup")?;
        let mut insert_log = transaction
            .prepare_cached("INSERT INTO logs (event_type, details, timestamp) VALUES (?1, ?2, ?3)")
            .context("preparing the insert")?;
        let mut insert_id = transaction
            .prepare_cached("INSERT INTO log_event_ids (event_id, log_id) VALUES (?1, ?2)")
            .context("preparing the event id insert")?;
        for entry in entries {
            if let Some(event_id) = &entry.event_id {
                let existing: Option<i64> = find_id
                    .query_row([event_id], |row| row.get(0))
                    .optional()
                    .context("looking up an event id")?;
                if let Some(id) = existing {
                    outcomes.push(Appended {
                        id,
                        duplicate: true,
                    });
                    continue;
                }
            }
            insert_log
                .execute(params![entry.event_type, entry.details, entry.timestamp])
                .context("inserting a log row")?;
            let id = transaction.last_insert_rowid();
            if let Some(event_id) = &entry.event_id {
                insert_id
                    .execute(params![event_id, id])
                    .context("recording an event id")?;
            }
            outcomes.push(Appended {
                id,
                duplicate: false,
            });
        }
    }
    transaction.commit().context("committing")?;
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(event_type: &str, details: &str, event_id: Option<&str>) -> NewEntry {
        NewEntry {
            event_type: event_type.to_owned(),
            details: details.to_owned(),
            timestamp: "2024-05-01 10:00:00.000".to_owned(),
            event_id: event_id.map(str::to_owned),
        }
    }

    /// A batch with a repeated event id stores it once and points both at the same row.
    #[test]
    fn batch_deduplicates_within_itself() {
        let mut connection = Connection::open_in_memory().expect("memory db");
        connection.execute_batch(SCHEMA).expect("schema");
        let first = entry("A", "one", Some("id-1"));
        let again = entry("A", "one again", Some("id-1"));
        let plain = entry("B", "two", None);
        let outcomes = write_batch(&mut connection, &[&first, &again, &plain]).expect("write");
        assert_eq!(
            outcomes,
            [
                Appended {
                    id: 1,
                    duplicate: false
                },
                Appended {
                    id: 1,
                    duplicate: true
                },
                Appended {
                    id: 2,
                    duplicate: false
                },
            ]
        );
        let rows = newest(&connection, 10, None).expect("read");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].details, "two");
        assert_eq!(rows[1].details, "one");
    }

    /// Reads filter by exact type and order newest first or, after an id, oldest first.
    #[test]
    fn reads_filter_and_order() {
        let mut connection = Connection::open_in_memory().expect("memory db");
        connection.execute_batch(SCHEMA).expect("schema");
        let entries = [
            entry("A", "1", None),
            entry("AB", "2", None),
            entry("A", "3", None),
            entry("a", "4", None),
        ];
        write_batch(&mut connection, &entries.iter().collect::<Vec<_>>()).expect("write");
        let details =
            |rows: Vec<LogRow>| rows.into_iter().map(|row| row.details).collect::<Vec<_>>();
        assert_eq!(
            details(newest(&connection, 10, Some("A")).expect("read")),
            ["3", "1"]
        );
        assert_eq!(
            details(newest(&connection, 2, None).expect("read")),
            ["4", "3"]
        );
        assert_eq!(
            details(after(&connection, 1, 10, None).expect("read")),
            ["2", "3", "4"]
        );
        assert_eq!(
            details(after(&connection, 1, 10, Some("A")).expect("read")),
            ["3"]
        );
    }

    /// Close commits every append already queued, then refuses new ones as WriterStopped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_commits_queued_then_refuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("sub/logs.db"), false).expect("open");
        let appends: Vec<_> = (0..50)
            .map(|n| {
                let store = store.clone();
                tokio::spawn(async move { store.append(entry("T", &n.to_string(), None)).await })
            })
            .collect();
        let mut stored = 0;
        for append in appends {
            if append.await.expect("task").is_ok() {
                stored += 1;
            }
        }
        store.close(Duration::from_secs(10)).await;
        let error = store
            .append(entry("T", "late", None))
            .await
            .expect_err("closed");
        assert!(matches!(*error, StoreError::WriterStopped));
        let rows = store.newest(100, None).await.expect("read");
        assert_eq!(rows.len(), stored);
        assert_eq!(stored, 50);
        assert_eq!(store.stats().rows(), 50);
    }
}
