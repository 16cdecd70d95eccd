//! The streaming service (port 50053): the server's time as a stream, chunked file
//! uploads, and a chat room.
//!
//! - [`time`]: StreamServerTime, one time a second until the client goes.
//! - [`upload`]: StreamUploadFile, written to disk as it arrives and put in place only when
//!   complete and as declared.
//! - [`chat`]: ChatStream's room: names, one order, history, `/who`, and a queue per
//!   member bounded in messages and bytes; [`chat::nats`]: the same room shared by every
//!   replica through NATS JetStream (`--chat-bus`).
//! - [`service`]: the gRPC handlers over those; [`error`](StreamingError): the statuses.
//! - [`client`]: what `streaming_client` does, against any input and output.
//!
//! [`serve`] runs a [`StreamingService`] on an already-bound listener until a shutdown token
//! fires, so the `streaming_server` binary and the tests start it the same way;
//! [`serve_with`] does it on a [`GrpcServer`] the caller configured (tests: a short grace
//! period).

pub mod activity;
pub mod chat;
pub mod client;
mod error;
mod service;
pub mod time;
pub mod upload;

use std::{num::NonZeroUsize, path::PathBuf};

use grpc_suite::{
    server::GZIP, server::GrpcServer, server::Listener, storage::StorageDir,
    streaming::streaming_service_server::StreamingServiceServer,
};
use tokio_util::sync::CancellationToken;

pub use error::StreamingError;
pub use service::StreamingService;

/// The port the old system used, and ours by default.
pub const DEFAULT_PORT: u16 = grpc_suite::streaming::DEFAULT_PORT;

/// How this service's binaries name their settings: `STREAMING_SERVICE_*` environment variables
/// (`STREAMING_SERVICE_ADDR`, `STREAMING_SERVICE_URL`, …) and [`DEFAULT_PORT`].
pub const SERVICE: grpc_suite::args::Service = grpc_suite::args::Service {
    env_prefix: "STREAMING_SERVICE",
    default_port: DEFAULT_PORT,
};

/// The largest upload accepted by default: 8 GiB.
pub const DEFAULT_MAX_UPLOAD_SIZE: u64 = 8 * 1024 * 1024 * 1024;

/// The longest chat message accepted by default: 64 KiB.
pub const DEFAULT_MAX_CHAT_MESSAGE_SIZE: usize = 64 * 1024;

/// Chat messages that may wait for one slow client before it is cut off. At the default
/// message limit that bounds one client's backlog to 16 MiB; ordinary chat lines are tiny.
pub const DEFAULT_CHAT_QUEUE_CAPACITY: NonZeroUsize = NonZeroUsize::new(256).unwrap();

/// Bytes of chat messages that may wait for one slow client before it is cut off: 64
/// messages at the default message limit, far more ordinary lines than the queue's count
/// allows. Messages are shared between members, so this bounds what a stuck client pins,
/// not a copy per client.
pub const DEFAULT_CHAT_BACKLOG_BYTES: usize = 4 * 1024 * 1024;

/// Chat messages a newcomer receives from before it joined.
pub const DEFAULT_CHAT_HISTORY: usize = 20;

/// The size of upload chunks the clients send.
pub const CHUNK_SIZE: usize = 1024 * 1024;

/// The largest single message the server decodes: chunks of up to 8 MiB, well past the
/// clients' 1 MiB and tonic's 4 MiB default. A larger message is refused by tonic with
/// RESOURCE_EXHAUSTED (relabelled by the shared server) before it is buffered.
pub const MAX_MESSAGE_SIZE: usize = 8 * 1024 * 1024 + 64 * 1024;

/// What the server needs to know, as plain values (the binary builds it from flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// Where uploads are stored; created at start.
    pub upload_dir: PathBuf,
    /// The largest upload accepted, in bytes.
    pub max_upload_size: u64,
    /// The longest chat message accepted, in bytes.
    pub max_chat_message_size: usize,
    /// Messages that may wait for one chat client before it is cut off.
    pub chat_queue_capacity: NonZeroUsize,
    /// Bytes of messages that may wait for one chat client before it is cut off.
    pub chat_backlog_bytes: usize,
    /// Chat messages replayed to a newcomer (0: none).
    pub chat_history: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            upload_dir: PathBuf::from("streamed_files"),
            max_upload_size: DEFAULT_MAX_UPLOAD_SIZE,
            max_chat_message_size: DEFAULT_MAX_CHAT_MESSAGE_SIZE,
            chat_queue_capacity: DEFAULT_CHAT_QUEUE_CAPACITY,
            chat_backlog_bytes: DEFAULT_CHAT_BACKLOG_BYTES,
            chat_history: DEFAULT_CHAT_HISTORY,
        }
    }
}

/// Opens the upload folder (creating it), for the caller to report before serving, and
/// removes the unfinished files an earlier run of this server left there (logging how many).
pub fn open_storage(config: &Config) -> std::io::Result<StorageDir> {
    StorageDir::open_for_server(&config.upload_dir, "streaming")
}

/// Serves `service`, with health and reflection, until `shutdown` is cancelled; then ends
/// its long streams (chat members are told) and lets the server drain. Returns once every
/// connection is closed and every per-stream task has ended.
pub async fn serve(
    listener: impl Into<Listener>,
    service: StreamingService,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_with(listener, GrpcServer::new(), service, shutdown).await
}

/// [`serve`] on a `server` the caller configured (a grace period, other services).
pub async fn serve_with(
    listener: impl Into<Listener>,
    server: GrpcServer,
    service: StreamingService,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let server = server
        .track_tasks(service.task_tracker())
        .add_service(
            StreamingServiceServer::new(service.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .accept_compressed(GZIP)
                .send_compressed(GZIP),
        )
        .serve(listener, shutdown.clone());
    // The server's drain waits for in-flight calls, and time and chat streams never end on
    // their own: they must be told, as soon as shutdown starts. The server itself then waits
    // for their tasks, after its connections are closed.
    let end_streams = async {
        shutdown.cancelled().await;
        service.shut_down();
        std::future::pending::<()>().await;
    };
    let result = tokio::select! {
        result = server => result,
        () = end_streams => Ok(()),
    };
    // Also when serving failed before shutdown: nothing should be left accepting streams.
    service.shut_down();
    result
}
