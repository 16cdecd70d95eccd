//! The logger service's failures, and the one place they become gRPC statuses.

use std::sync::Arc;

use tonic::Status;

use crate::store::StoreError;

/// Why a logger service call failed.
#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    /// LogActivity without an event type.
    #[error("event_type is empty")]
    EmptyEventType,
    /// An event type longer than the limit.
    #[error("event_type is {chars} characters; the limit is {limit}")]
    EventTypeTooLong {
        /// Characters sent.
        chars: usize,
        /// Characters allowed.
        limit: usize,
    },
    /// Details larger than the limit.
    #[error("details is {bytes} bytes; the limit is {limit} bytes")]
    DetailsTooLong {
        /// Bytes sent.
        bytes: usize,
        /// Bytes allowed.
        limit: usize,
    },
    /// An event id longer than the limit.
    #[error("event_id is {chars} characters; the limit is {limit}")]
    EventIdTooLong {
        /// Characters sent.
        chars: usize,
        /// Characters allowed.
        limit: usize,
    },
    /// A timestamp not in the contract's format.
    #[error("timestamp {value:?} is not in the format YYYY-MM-DD HH:MM:SS.mmm")]
    BadTimestamp {
        /// What was sent.
        value: String,
    },
    /// A count field below zero.
    #[error("{field} is {value}; it must be 0 or more")]
    Negative {
        /// The request field.
        field: &'static str,
        /// What was sent.
        value: i32,
    },
    /// A row id past what the contract's int32 `id` can carry.
    #[error("log id {0} does not fit the contract's 32-bit id")]
    IdOutOfRange(i64),
    /// The database failed, or the writer has stopped.
    #[error(transparent)]
    Store(#[from] Arc<StoreError>),
}

impl From<StoreError> for LoggerError {
    fn from(error: StoreError) -> Self {
        Self::Store(Arc::new(error))
    }
}

impl From<LoggerError> for Status {
    fn from(error: LoggerError) -> Self {
        match &error {
            LoggerError::EmptyEventType
            | LoggerError::EventTypeTooLong { .. }
            | LoggerError::DetailsTooLong { .. }
            | LoggerError::EventIdTooLong { .. }
            | LoggerError::BadTimestamp { .. }
            | LoggerError::Negative { .. } => Status::invalid_argument(error.to_string()),
            LoggerError::Store(cause) if matches!(**cause, StoreError::WriterStopped) => {
                // Not stored; the client may retry against the restarted server.
                Status::unavailable("the logger is shutting down; the event was not stored")
            }
            LoggerError::Store(cause) if cause.is_unreachable() => {
                // A database that is down or unreachable comes back (or another replica
                // reaches it): worth retrying, as the client would a restarting server.
                tracing::error!(%error, "log storage unreachable");
                Status::unavailable(
                    "the logger cannot reach its database right now; the event was not stored",
                )
            }
            LoggerError::IdOutOfRange(_) | LoggerError::Store(_) => {
                // SQLite's words stay in the server log; the client learns the outcome.
                tracing::error!(%error, "log storage failed");
                Status::internal("the server could not access its log database")
            }
        }
    }
}
