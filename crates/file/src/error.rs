//! The file service's failures, and the one place they become gRPC statuses.

use grpc_suite::storage::FileNameError;
use tonic::Status;

/// Why a file service call failed.
#[derive(Debug, thiserror::Error)]
pub enum FileServiceError {
    /// The client's file name is not a usable plain name.
    #[error(transparent)]
    BadFileName(#[from] FileNameError),
    /// The content is over the configured maximum.
    #[error("file content is {size} bytes; the limit is {limit} bytes")]
    TooLarge {
        /// Bytes sent.
        size: usize,
        /// Bytes allowed.
        limit: usize,
    },
    /// The disk refused: full, read-only, permissions. The server's fault, not the client's.
    #[error("storage failed: {0}")]
    Storage(#[from] std::io::Error),
}

impl From<FileServiceError> for Status {
    fn from(error: FileServiceError) -> Self {
        match error {
            FileServiceError::BadFileName(_) => Status::invalid_argument(error.to_string()),
            FileServiceError::TooLarge { .. } => Status::resource_exhausted(error.to_string()),
            // Full disk, folder in the way, or internal; the OS's words stay in the log.
            FileServiceError::Storage(cause) => grpc_suite::storage::storage_status(&cause),
        }
    }
}
