//! The SQLite store: the schema, the one writer thread with group commit, and read-only
//! connections for queries.
//!
//! Writes go through [`Store::append`] to a dedicated OS thread that owns the only
//! read-write connection. It blocks for one request, then takes whatever else is queued
//! (up to [`MAX_BATCH`]) and writes the lot in one transaction, so N concurrent callers
//! share one disk sync instead of paying for N. Nobody is answered before the commit
//! returns, so every `logged=true` is on disk. Committed rows are then echoed to stdout and
//! published on a broadcast channel for followers.
//!
//! Reads open read-only connections (kept in a small pool) and run on tokio's blocking
//! pool; WAL mode lets them proceed while the writer commits.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};
use tokio::sync::{broadcast, mpsc, oneshot};

/// The timestamp format of the contract's `logs.timestamp` column.
pub const TIMESTAMP_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.3f";

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
    /// The writer thread could not be started.
    #[error("starting the log writer thread: {0}")]
    Thread(std::io::Error),
    /// The writer has stopped (the server is shutting down).
    #[error("the log writer has stopped")]
    WriterStopped,
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

/// A write request: the entry and where to send its outcome.
type Reply = oneshot::Sender<Result<Appended, Arc<StoreError>>>;

/// What the writer thread receives.
enum WriterMessage {
    Append(NewEntry, Reply),
    /// Finish what is queued, refuse anything later, and exit.
    Stop,
}

/// Counters that tests and operators can read.
#[derive(Debug, Default)]
pub struct StoreStats {
    commits: AtomicU64,
    rows: AtomicU64,
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
}

/// The open database: a handle to the writer thread and a pool of readers. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    path: PathBuf,
    writes: mpsc::Sender<WriterMessage>,
    committed: broadcast::Sender<LogRow>,
    readers: Arc<Mutex<Vec<Connection>>>,
    stats: Arc<StoreStats>,
    /// The writer thread, joined once by [`Store::close`].
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Store {
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

        let (writes, queue) = mpsc::channel(QUEUE_CAPACITY);
        let (committed, _) = broadcast::channel(BROADCAST_CAPACITY);
        let stats = Arc::new(StoreStats::default());
        let writer = Writer {
            connection,
            queue,
            committed: committed.clone(),
            stats: Arc::clone(&stats),
            echo,
        };
        let handle = std::thread::Builder::new()
            .name("log-writer".to_owned())
            .spawn(move || writer.run())
            .map_err(StoreError::Thread)?;
        Ok(Self {
            path: path.to_path_buf(),
            writes,
            committed,
            readers: Arc::new(Mutex::new(Vec::new())),
            stats,
            writer: Arc::new(Mutex::new(Some(handle))),
        })
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
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(WriterMessage::Append(entry, reply))
            .await
            .map_err(|_| Arc::new(StoreError::WriterStopped))?;
        answer
            .await
            .map_err(|_| Arc::new(StoreError::WriterStopped))?
    }

    /// A receiver of every row committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LogRow> {
        self.committed.subscribe()
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
        // A full queue cannot refuse Stop for long: the writer drains it continuously.
        if self.writes.send(WriterMessage::Stop).await.is_err() {
            return;
        }
        let handle = self.writer.lock().ok().and_then(|mut slot| slot.take());
        if let Some(handle) = handle {
            let joined = tokio::task::spawn_blocking(move || handle.join());
            match tokio::time::timeout(limit, joined).await {
                Ok(Ok(Ok(()))) => tracing::debug!("log writer stopped"),
                Ok(_) => tracing::error!("the log writer panicked"),
                Err(_) => tracing::warn!(?limit, "the log writer did not stop in time"),
            }
        }
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

/// The writer thread's state: the only read-write connection.
struct Writer {
    connection: Connection,
    queue: mpsc::Receiver<WriterMessage>,
    committed: broadcast::Sender<LogRow>,
    stats: Arc<StoreStats>,
    echo: bool,
}

impl Writer {
    /// Commits batches until told to stop or until every [`Store`] is gone.
    fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            // Block for the first request, then take what else is already queued: the
            // requests that arrived while the previous batch was syncing.
            let Some(first) = self.queue.blocking_recv() else {
                // Every sender is gone, or Stop closed the queue and it is now empty.
                return;
            };
            let mut message = Some(first);
            while let Some(current) = message.take() {
                match current {
                    WriterMessage::Append(entry, reply) => batch.push((entry, reply)),
                    // Later sends fail at once; what is already queued is still written,
                    // and the loop ends when `blocking_recv` finds the closed queue empty.
                    WriterMessage::Stop => self.queue.close(),
                }
                if batch.len() < MAX_BATCH {
                    message = self.queue.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit(&mut batch);
            }
        }
    }

    /// Writes `batch` in one transaction, then answers every request in it.
    fn commit(&mut self, batch: &mut Vec<(NewEntry, Reply)>) {
        let entries: Vec<&NewEntry> = batch.iter().map(|(entry, _)| entry).collect();
        match write_batch(&mut self.connection, &entries) {
            Ok(outcomes) => {
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                let mut echo = String::new();
                for ((entry, reply), appended) in batch.drain(..).zip(outcomes) {
                    if !appended.duplicate {
                        self.stats.rows.fetch_add(1, Ordering::Relaxed);
                        if self.echo {
                            echo.push_str(&format!(
                                "[LOG] {}: {}\n",
                                entry.event_type, entry.details
                            ));
                        }
                        // No follower is not an error.
                        let _ = self.committed.send(LogRow {
                            id: appended.id,
                            event_type: entry.event_type,
                            details: entry.details,
                            timestamp: entry.timestamp,
                        });
                    }
                    // The caller may have gone away; the row is stored regardless.
                    let _ = reply.send(Ok(appended));
                }
                if self.echo {
                    // A closed or full stdout must not stop the system of record.
                    let mut stdout = std::io::stdout().lock();
                    let _ = stdout.write_all(echo.as_bytes());
                    let _ = stdout.flush();
                }
            }
            Err(error) => {
                // Nothing in the batch was committed (the transaction rolled back), so each
                // caller hears so and may retry; the cause is a disk or database problem
                // shared by the whole batch, not something one request did.
                tracing::error!(%error, rows = batch.len(), "committing a batch of logs failed");
                let error = Arc::new(error);
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(Arc::clone(&error)));
                }
            }
        }
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
        let rows = store
            .read(|connection| newest(connection, 100, None))
            .expect("read");
        assert_eq!(rows.len(), stored);
        assert_eq!(stored, 50);
        assert_eq!(store.stats().rows(), 50);
    }
}
