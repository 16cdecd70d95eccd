//! The LoggerService handlers: validate, hand writes to the store's writer thread, run
//! reads on the blocking pool, and feed followers from the committed-rows broadcast.

use grpc_suite::{logger as pb, server::run_blocking};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Request, Response, Status};

use crate::{
    LoggerError,
    store::{self, LogRow, Store},
    validate,
};

/// Rows buffered between a follower's producer task and its HTTP/2 stream. Small: a slow
/// client should hold back its own producer (which then catches up from the database),
/// not grow the server's memory.
const FOLLOW_BUFFER: usize = 64;

/// Rows read from the database per query while a lagging follower catches up.
const CATCH_UP_PAGE: u32 = 512;

/// The service state: the store, the query cap, the server's shutdown token so that
/// follow streams end themselves when the server stops, and the followers' tracker.
#[derive(Debug, Clone)]
pub struct LoggerService {
    store: Store,
    max_query_limit: u32,
    shutdown: CancellationToken,
    /// Every follower runs on it, so the server can wait until none is left before the
    /// store's writer is stopped.
    tasks: TaskTracker,
}

impl LoggerService {
    /// A service over `store`, answering at most `max_query_limit` rows per query (and per
    /// follow backlog), ending follow streams when `shutdown` fires.
    pub fn new(store: Store, max_query_limit: u32, shutdown: CancellationToken) -> Self {
        Self {
            store,
            max_query_limit,
            shutdown,
            tasks: TaskTracker::new(),
        }
    }

    /// Follower tasks that have not ended yet.
    pub fn running_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// The tracker followers are spawned on, for the server to wait on.
    pub(crate) fn task_tracker(&self) -> TaskTracker {
        self.tasks.clone()
    }

    /// Runs a read on a pooled read-only connection, on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
        run_blocking(move || store.read(work))
            .await?
            .map_err(|error| LoggerError::from(error).into())
    }
}

/// A stored row as the wire's LogEntry.
fn to_entry(row: LogRow) -> Result<pb::LogEntry, LoggerError> {
    Ok(pb::LogEntry {
        id: i32::try_from(row.id).map_err(|_| LoggerError::IdOutOfRange(row.id))?,
        event_type: row.event_type,
        details: row.details,
        timestamp: row.timestamp,
    })
}

#[tonic::async_trait]
impl pb::logger_service_server::LoggerService for LoggerService {
    // Fields are skipped: details may carry user data; the type is logged once checked.
    #[tracing::instrument(skip_all)]
    async fn log_activity(
        &self,
        request: Request<pb::LogRequest>,
    ) -> Result<Response<pb::LogResponse>, Status> {
        let entry = validate::new_entry(request.into_inner(), chrono::Local::now().naive_local())?;
        let event_type = entry.event_type.clone();
        let appended = self.store.append(entry).await.map_err(LoggerError::from)?;
        tracing::debug!(%event_type, id = appended.id, duplicate = appended.duplicate, "logged");
        // A duplicate event id is answered as logged: the event is stored (once), which is
        // what a retrying sender needs to hear.
        Ok(Response::new(pb::LogResponse { logged: true }))
    }

    #[tracing::instrument(skip_all)]
    async fn query_logs(
        &self,
        request: Request<pb::LogQueryRequest>,
    ) -> Result<Response<pb::LogQueryResponse>, Status> {
        let pb::LogQueryRequest { limit, event_type } = request.into_inner();
        let limit = validate::query_limit(limit, self.max_query_limit)?;
        let filter = validate::type_filter(event_type);
        let rows = self
            .read(move |connection| store::newest(connection, limit, filter.as_deref()))
            .await?;
        let logs = rows.into_iter().map(to_entry).collect::<Result<_, _>>()?;
        Ok(Response::new(pb::LogQueryResponse { logs }))
    }

    type FollowLogsStream = ReceiverStream<Result<pb::LogEntry, Status>>;

    /// Sends the newest `backlog` rows oldest first (so the whole stream reads in commit
    /// order, like `tail -f`), then each row as it is committed.
    #[tracing::instrument(skip_all)]
    async fn follow_logs(
        &self,
        request: Request<pb::LogFollowRequest>,
    ) -> Result<Response<Self::FollowLogsStream>, Status> {
        let pb::LogFollowRequest {
            backlog,
            event_type,
        } = request.into_inner();
        let backlog = validate::backlog(backlog, self.max_query_limit)?;
        let filter = validate::type_filter(event_type);
        // Subscribe before the snapshot: a row committed in between is then both in the
        // snapshot and on the channel, and the cursor drops the second copy; the other way
        // round it would be in neither.
        let live = self.store.subscribe();
        let snapshot_filter = filter.clone();
        let (cursor, backlog_rows) = self
            .read(move |connection| {
                store::snapshot(connection, backlog, snapshot_filter.as_deref())
            })
            .await?;
        let (sender, receiver) = mpsc::channel(FOLLOW_BUFFER);
        let follower = Follower {
            store: self.store.clone(),
            filter,
            cursor,
            sender,
            shutdown: self.shutdown.clone(),
        };
        let counted =
            grpc_suite::metrics::Live::enter(grpc_suite::metrics::LOGGER_FOLLOWERS.clone());
        self.tasks.spawn(async move {
            follower.run(backlog_rows, live).await;
            drop(counted)
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// One FollowLogs stream's producer.
struct Follower {
    store: Store,
    filter: Option<String>,
    /// The id of the newest row already accounted for: sent, or filtered out. Rows at or
    /// below it that arrive on the broadcast are duplicates of what was read from the
    /// database and are skipped.
    cursor: i64,
    sender: mpsc::Sender<Result<pb::LogEntry, Status>>,
    shutdown: CancellationToken,
}

impl Follower {
    /// Sends the backlog, then live rows, until the client goes away, the server shuts
    /// down (the stream then ends normally) or the writer stops.
    async fn run(mut self, backlog: Vec<LogRow>, mut live: broadcast::Receiver<LogRow>) {
        for row in backlog {
            if !self.send(row).await {
                return;
            }
        }
        loop {
            let received = tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = self.sender.closed() => return,
                received = live.recv() => received,
            };
            match received {
                Ok(row) => {
                    if row.id <= self.cursor {
                        continue;
                    }
                    self.cursor = row.id;
                    if self.wants(&row) && !self.send(row).await {
                        return;
                    }
                }
                // This follower fell more than the broadcast's capacity behind. Every row it
                // missed was committed before it was broadcast, so the database has them:
                // read them back in order and carry on, so a slow follower never skips a row.
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "follower lagged; catching up from the database");
                    if !self.catch_up().await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    fn wants(&self, row: &LogRow) -> bool {
        self.filter
            .as_deref()
            .is_none_or(|event_type| event_type == row.event_type)
    }

    /// Sends every stored row after the cursor; false when the stream should end.
    async fn catch_up(&mut self) -> bool {
        loop {
            let store = self.store.clone();
            let (cursor, filter) = (self.cursor, self.filter.clone());
            let page = run_blocking(move || {
                store.read(|connection| {
                    store::after(connection, cursor, CATCH_UP_PAGE, filter.as_deref())
                })
            })
            .await;
            let rows = match page {
                Ok(Ok(rows)) => rows,
                Ok(Err(error)) => return self.fail(LoggerError::from(error).into()).await,
                Err(status) => return self.fail(status).await,
            };
            if rows.is_empty() {
                return true;
            }
            for row in rows {
                // With a filter only matching rows come back; the rows skipped in between
                // are of other types and would be dropped by the filter anyway.
                self.cursor = row.id;
                if !self.send(row).await {
                    return false;
                }
            }
        }
    }

    /// Sends one row; false when the client is gone or the server is stopping.
    async fn send(&mut self, row: LogRow) -> bool {
        let entry = match to_entry(row) {
            Ok(entry) => entry,
            Err(error) => return self.fail(error.into()).await,
        };
        tokio::select! {
            () = self.shutdown.cancelled() => false,
            sent = self.sender.send(Ok(entry)) => sent.is_ok(),
        }
    }

    /// Ends the stream with `status`; always false, for `return self.fail(..)`.
    async fn fail(&self, status: Status) -> bool {
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            _ = self.sender.send(Err(status)) => {}
        }
        false
    }
}
