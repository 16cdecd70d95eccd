//! The StreamingService handlers: each starts its stream's work (time producer, upload
//! receiver, chat member) and maps failures to statuses.

use std::sync::Arc;

use grpc_suite::{storage::StorageDir, streaming as pb};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    Config, StreamingError,
    activity::Activity,
    chat::{ChatRoom, Membership, Outbound, RoomLimits, nats::Bus},
    time, upload,
};

/// The service state, shared by every call (cloning shares it).
#[derive(Debug, Clone)]
pub struct StreamingService {
    storage: StorageDir,
    max_upload_size: u64,
    room: Arc<ChatRoom>,
    activity: Activity,
    /// Cancelled by [`StreamingService::shut_down`]: long streams watch it and end
    /// themselves, since the server's drain would otherwise wait for them.
    shutdown: CancellationToken,
    /// The per-stream tasks (time producers, chat readers), so the server can wait for them
    /// before its `serve` returns.
    tasks: TaskTracker,
}

impl StreamingService {
    /// A service storing uploads into `storage`, with `config`'s limits; its chat room is
    /// in this process.
    pub fn new(storage: StorageDir, config: &Config) -> Self {
        let tasks = TaskTracker::new();
        let room = ChatRoom::new(room_limits(config));
        Self::with_room(storage, config, room, tasks)
    }

    /// [`StreamingService::new`] whose chat room is shared with every replica on `bus`
    /// (see [`crate::chat::nats`]). Must be called inside a Tokio runtime.
    pub fn with_chat_bus(storage: StorageDir, config: &Config, bus: Bus) -> Self {
        let tasks = TaskTracker::new();
        let room = ChatRoom::with_bus(room_limits(config), bus, &tasks);
        Self::with_room(storage, config, room, tasks)
    }

    fn with_room(
        storage: StorageDir,
        config: &Config,
        room: Arc<ChatRoom>,
        tasks: TaskTracker,
    ) -> Self {
        Self {
            storage,
            max_upload_size: config.max_upload_size,
            room,
            activity: Activity::default(),
            shutdown: CancellationToken::new(),
            tasks,
        }
    }

    /// Live counts of time streams, uploads and chat members.
    pub fn activity(&self) -> Activity {
        self.activity.clone()
    }

    /// Bytes of distinct chat messages held in members' queues and the history now (a
    /// message queued for many members counted once).
    pub fn chat_held_bytes(&self) -> usize {
        self.room.held_bytes()
    }

    /// Ends every long stream: time streams stop, chat members are told
    /// `Server is shutting down` and their streams end cleanly; new streams are refused.
    pub fn shut_down(&self) {
        self.shutdown.cancel();
        self.room.close();
        self.tasks.close();
    }

    /// Waits for the per-stream tasks to finish (after [`StreamingService::shut_down`]).
    pub async fn wait_for_tasks(&self) {
        self.tasks.wait().await;
    }

    /// Per-stream tasks (time producers, chat readers) that have not ended yet.
    pub fn running_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// The tracker per-stream tasks are spawned on, for the server to wait on.
    pub(crate) fn task_tracker(&self) -> TaskTracker {
        self.tasks.clone()
    }

    fn refuse_if_stopping(&self) -> Result<(), Status> {
        if self.shutdown.is_cancelled() {
            return Err(StreamingError::ShuttingDown.into());
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::streaming_service_server::StreamingService for StreamingService {
    type StreamServerTimeStream = time::TimeStream;
    type ChatStreamStream = Outbound;

    #[tracing::instrument(level = "debug", skip_all)]
    async fn stream_server_time(
        &self,
        _request: Request<pb::Empty>,
    ) -> Result<Response<Self::StreamServerTimeStream>, Status> {
        self.refuse_if_stopping()?;
        let stream = time::start(
            &self.tasks,
            self.shutdown.clone(),
            self.activity.time_streams.enter(),
        );
        Ok(Response::new(stream))
    }

    // Fields are skipped: chunk data must never reach a log.
    #[tracing::instrument(level = "debug", skip_all)]
    async fn stream_upload_file(
        &self,
        request: Request<Streaming<pb::FileChunk>>,
    ) -> Result<Response<pb::FileResponse>, Status> {
        self.refuse_if_stopping()?;
        let chunks = request.into_inner();
        let counted = self.activity.uploads.enter();
        let stored = upload::receive(chunks, &self.storage, self.max_upload_size, counted)
            .await
            .inspect_err(|error| tracing::info!(%error, "upload refused"))?;
        tracing::info!(file = %stored.name, bytes = stored.bytes_written, "file uploaded");
        Ok(Response::new(pb::FileResponse {
            success: true,
            message: format!("File {} uploaded successfully", stored.name),
            file_path: self.storage.shown_path(&stored.name),
            bytes_written: stored.bytes_written,
            sha256: stored.digests.sha256.unwrap_or_default(),
            blake3: stored.digests.blake3.unwrap_or_default(),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn chat_stream(
        &self,
        request: Request<Streaming<pb::ChatMessage>>,
    ) -> Result<Response<Self::ChatStreamStream>, Status> {
        let inbound = request.into_inner();
        let mut member = self.room.join(self.activity.chat_members.enter()).await?;
        let outbound = member.outbound();
        self.tasks.spawn(read_member(inbound, member));
        Ok(Response::new(outbound))
    }
}

fn room_limits(config: &Config) -> RoomLimits {
    RoomLimits {
        queue_capacity: config.chat_queue_capacity.get(),
        max_backlog_bytes: config.chat_backlog_bytes,
        max_message_bytes: config.max_chat_message_size,
        history_length: config.chat_history,
    }
}

/// Relays one client's messages into the room until its stream is over on either side,
/// then makes it leave: the client ended its messages (`quit`), its call failed or was
/// cancelled, its response stream was dropped (a dead connection), it was cut off, or the
/// room closed.
async fn read_member(mut inbound: Streaming<pb::ChatMessage>, mut member: Membership) {
    let outcome = loop {
        tokio::select! {
            () = member.gone() => break Ok(()),
            next = inbound.message() => match next {
                // Refusals (an over-long message) are told to the member alone, in the
                // room; its stream stays open.
                Ok(Some(message)) => member.say(message),
                Ok(None) => break Ok(()),
                Err(status) => {
                    tracing::debug!(member = member.name(), %status, "chat stream failed");
                    // A message over the decode limit arrives here as an error; name it as such.
                    break Err(grpc_suite::server::relabel_oversized(status));
                }
            },
        }
    };
    member.leave(outcome);
}
