//! The streaming service's failures, and the one place they become gRPC statuses.

use grpc_suite::storage::FileNameError;
use tonic::Status;

/// Why an upload or a chat stream failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    /// The first chunk's file name is not a usable plain name.
    #[error(transparent)]
    BadFileName(#[from] FileNameError),
    /// A later chunk named another file than the first one did.
    #[error("chunk {index} names file {found:?}, but this upload is for {expected:?}")]
    FileNameChanged {
        /// Position of the offending chunk, counting from 1.
        index: u64,
        /// The first chunk's file name.
        expected: String,
        /// What the later chunk said.
        found: String,
    },
    /// The stream ended before a chunk with `is_last_chunk=true`: an aborted upload.
    #[error(
        "the upload ended after {received} bytes without a chunk with is_last_chunk=true; nothing was stored"
    )]
    Incomplete {
        /// Bytes received before the stream ended.
        received: u64,
    },
    /// A chunk came after the one marked last.
    #[error("a chunk arrived after the chunk with is_last_chunk=true; nothing was stored")]
    ChunkAfterLast,
    /// The declared SHA-256 is not 64 hexadecimal digits.
    #[error("sha256 must be 64 hexadecimal digits, got {0:?}")]
    BadDeclaredSha256(String),
    /// The declared size is over the server's limit.
    #[error("declared total_size is {declared} bytes; the limit is {limit} bytes")]
    DeclaredTooLarge {
        /// What the client declared.
        declared: u64,
        /// The server's maximum upload size.
        limit: u64,
    },
    /// The content grew past the server's limit.
    #[error("the upload exceeds the limit of {limit} bytes; nothing was stored")]
    TooLarge {
        /// The server's maximum upload size.
        limit: u64,
    },
    /// The content is not as long as the client declared.
    #[error(
        "declared total_size is {declared} bytes but {received} bytes were sent; nothing was stored"
    )]
    SizeMismatch {
        /// What the client declared.
        declared: u64,
        /// What arrived (at least this much, when the upload was stopped early).
        received: u64,
    },
    /// The content's digest is not the one the client declared.
    #[error(
        "declared sha256 is {declared} but the content received has sha256 {received}; nothing was stored"
    )]
    HashMismatch {
        /// What the client declared.
        declared: String,
        /// The digest of what arrived.
        received: String,
    },
    /// The inbound stream failed (a cancelled call, a broken connection, a chunk over the
    /// decode limit); tonic's status is passed on.
    #[error("the request stream failed: {0}")]
    Inbound(Status),
    /// The disk refused (full, read-only, permissions). The server's fault, not the client's.
    #[error("storage failed: {0}")]
    Storage(#[from] std::io::Error),
    /// A worker task died; logged, reported as internal.
    #[error("a server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// A chat message longer than the server accepts.
    #[error(
        "chat message is {size} bytes; the limit is {limit} bytes ({})",
        grpc_suite::size::Size(*limit as u64)
    )]
    ChatMessageTooLong {
        /// Bytes in the `message` field.
        size: usize,
        /// The server's maximum.
        limit: usize,
    },
    /// A chat member's queue overflowed: it is cut off.
    #[error(
        "you fell too far behind: {capacity} messages or {} were waiting for you; you have been removed from the chat",
        grpc_suite::size::Size(*bytes as u64)
    )]
    FellBehind {
        /// The per-client queue size, in messages.
        capacity: usize,
        /// The per-client queue size, in bytes.
        bytes: usize,
    },
    /// The server is stopping and takes no new streams.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The chat spans replicas through a bus (`--chat-bus`) that cannot be reached now.
    #[error("the chat is unavailable: {0}")]
    ChatBusUnavailable(String),
}

impl From<StreamingError> for Status {
    fn from(error: StreamingError) -> Self {
        use StreamingError as E;
        match error {
            // The request contradicts itself or the protocol: the client's mistake, and
            // resending the same request gets the same answer. A size or digest mismatch is
            // also INVALID_ARGUMENT rather than DATA_LOSS: the server stored nothing and
            // lost nothing; it only refuses content that differs from what was declared
            // (in practice, a file that changed while being read).
            E::BadFileName(_)
            | E::FileNameChanged { .. }
            | E::Incomplete { .. }
            | E::ChunkAfterLast
            | E::BadDeclaredSha256(_)
            | E::SizeMismatch { .. }
            | E::HashMismatch { .. }
            | E::ChatMessageTooLong { .. } => Status::invalid_argument(error.to_string()),
            E::DeclaredTooLarge { .. } | E::TooLarge { .. } | E::FellBehind { .. } => {
                Status::resource_exhausted(error.to_string())
            }
            E::ShuttingDown | E::ChatBusUnavailable(_) => Status::unavailable(error.to_string()),
            E::Inbound(status) => status,
            // Full disk, folder in the way, or internal; the OS's words stay in the log.
            E::Storage(cause) => grpc_suite::storage::storage_status(&cause),
            E::Task(cause) => {
                tracing::error!(error = %cause, "a server task failed");
                Status::internal("the server failed while handling this request")
            }
        }
    }
}
