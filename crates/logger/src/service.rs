//! The LoggerService handlers: validate, hand writes to the store's writer thread, run
//! reads on the blocking pool, and feed followers from the committed-rows broadcast.

use std::{pin::Pin, sync::Arc};

use grpc_suite::logger as pb;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc};
use tokio_stream::{Stream, StreamExt as _, wrappers::ReceiverStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Request, Response, Status};

use crate::{
    LoggerError,
    store::{LogRow, Store},
    tokens::Tokens,
    validate,
};

/// Rows buffered between a follower's producer task and its HTTP/2 stream. Small: a slow
/// client should hold back its own producer (which then catches up from the database),
/// not grow the server's memory.
const FOLLOW_BUFFER: usize = 64;

/// The same buffer's bound in bytes of row text, which is what memory is made of: one row
/// may carry 64 KiB of details, so 64 rows alone could hold 4 MiB per follower that stopped
/// reading. A row larger than the whole budget still goes, alone.
const FOLLOW_BUFFER_BYTES: usize = 128 * 1024;

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
    /// Who may write and read (open when unset).
    tokens: Tokens,
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
            tokens: Tokens::default(),
        }
    }

    /// Requires these tokens for writes and reads.
    pub fn with_tokens(mut self, tokens: Tokens) -> Self {
        self.tokens = tokens;
        self
    }

    /// Follower tasks that have not ended yet.
    pub fn running_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// The tracker followers are spawned on, for the server to wait on.
    pub(crate) fn task_tracker(&self) -> TaskTracker {
        self.tasks.clone()
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
    #[tracing::instrument(level = "debug", skip_all)]
    async fn log_activity(
        &self,
        request: Request<pb::LogRequest>,
    ) -> Result<Response<pb::LogResponse>, Status> {
        self.tokens.check_write(request.metadata())?;
        let entry = validate::new_entry(request.into_inner(), chrono::Local::now().naive_local())?;
        let event_type = entry.event_type.clone();
        let appended = self.store.append(entry).await.map_err(LoggerError::from)?;
        tracing::debug!(%event_type, id = appended.id, duplicate = appended.duplicate, "logged");
        // A duplicate event id is answered as logged: the event is stored (once), which is
        // what a retrying sender needs to hear.
        Ok(Response::new(pb::LogResponse { logged: true }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn query_logs(
        &self,
        request: Request<pb::LogQueryRequest>,
    ) -> Result<Response<pb::LogQueryResponse>, Status> {
        self.tokens.check_read(request.metadata())?;
        let pb::LogQueryRequest { limit, event_type } = request.into_inner();
        let limit = validate::query_limit(limit, self.max_query_limit)?;
        let filter = validate::type_filter(event_type);
        let rows = self
            .store
            .newest(limit, filter)
            .await
            .map_err(LoggerError::from)?;
        let logs = rows.into_iter().map(to_entry).collect::<Result<_, _>>()?;
        Ok(Response::new(pb::LogQueryResponse { logs }))
    }

    type FollowLogsStream = FollowStream;

    /// Sends the newest `backlog` rows oldest first (so the whole stream reads in commit
    /// order, like `tail -f`), then each row as it is committed.
    #[tracing::instrument(level = "debug", skip_all)]
    async fn follow_logs(
        &self,
        request: Request<pb::LogFollowRequest>,
    ) -> Result<Response<Self::FollowLogsStream>, Status> {
        self.tokens.check_read(request.metadata())?;
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
        let (cursor, backlog_rows) = self
            .store
            .snapshot(backlog, filter.clone())
            .await
            .map_err(LoggerError::from)?;
        let (sender, receiver) = mpsc::channel(FOLLOW_BUFFER);
        let follower = Follower {
            store: self.store.clone(),
            filter,
            cursor,
            sender,
            budget: Arc::new(Semaphore::new(FOLLOW_BUFFER_BYTES)),
            shutdown: self.shutdown.clone(),
        };
        let counted =
            grpc_suite::metrics::Live::enter(grpc_suite::metrics::LOGGER_FOLLOWERS.clone());
        self.tasks.spawn(async move {
            follower.run(backlog_rows, live).await;
            drop(counted)
        });
        // The bytes a row holds are given back as the HTTP/2 stream takes it.
        let stream = ReceiverStream::new(receiver).map(|(item, _budget)| item);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// A FollowLogs response stream: rows as the follower's task produces them.
pub type FollowStream = Pin<Box<dyn Stream<Item = Result<pb::LogEntry, Status>> + Send>>;

/// A row on its way to the client, with the share of the byte budget it holds until taken.
type Queued = (Result<pb::LogEntry, Status>, Option<OwnedSemaphorePermit>);

/// One FollowLogs stream's producer.
struct Follower {
    store: Store,
    filter: Option<String>,
    /// The id of the newest row already accounted for: sent, or filtered out. Rows at or
    /// below it that arrive on the broadcast are duplicates of what was read from the
    /// database and are skipped.
    cursor: i64,
    sender: mpsc::Sender<Queued>,
    /// [`FOLLOW_BUFFER_BYTES`] of row text: a row waits for its share before it is queued,
    /// so a client that stops reading holds back its producer after that many bytes, which
    /// later catches up from the database instead of from memory.
    budget: Arc<Semaphore>,
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
            let page = self
                .store
                .after(self.cursor, CATCH_UP_PAGE, self.filter.clone())
                .await;
            let rows = match page {
                Ok(rows) => rows,
                Err(error) => return self.fail(LoggerError::from(error).into()).await,
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
        let size = entry.details.len() + entry.event_type.len() + entry.timestamp.len();
        let share = u32::try_from(size.clamp(1, FOLLOW_BUFFER_BYTES)).unwrap_or(u32::MAX);
        let budget = Arc::clone(&self.budget);
        tokio::select! {
            () = self.shutdown.cancelled() => false,
            () = self.sender.closed() => false,
            sent = async {
                // The semaphore is never closed, so an error cannot happen; treat it as gone.
                let Ok(permit) = budget.acquire_many_owned(share).await else {
                    return false;
                };
                self.sender.send((Ok(entry), Some(permit))).await.is_ok()
            } => sent,
        }
    }

    /// Ends the stream with `status`; always false, for `return self.fail(..)`.
    async fn fail(&self, status: Status) -> bool {
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            _ = self.sender.send((Err(status), None)) => {}
        }
        false
    }
}
