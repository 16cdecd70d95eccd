//! The random number service's refusals, and the one place they become gRPC statuses.

use tonic::Status;

/// Why a `GetRandomNumbers` request was refused. Every variant is the client's mistake and
/// is found before anything is streamed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RandomServiceError {
    /// The range is empty.
    #[error("min ({min}) must not be greater than max ({max})")]
    EmptyRange {
        /// The requested lower bound.
        min: i32,
        /// The requested upper bound.
        max: i32,
    },
    /// `count` or `delay` is below zero.
    #[error("{field} must not be negative (got {value})")]
    Negative {
        /// The request field: `count` or `delay`.
        field: &'static str,
        /// What the request held.
        value: i32,
    },
    /// `count` or `delay` is above the limit this server was started with.
    #[error("{field} {value} is above this server's limit of {limit} {unit}")]
    AboveLimit {
        /// The request field: `count` or `delay`.
        field: &'static str,
        /// What the request held.
        value: i32,
        /// The configured maximum.
        limit: u32,
        /// What the numbers count: `numbers` or `ms`.
        unit: &'static str,
    },
}

impl From<RandomServiceError> for Status {
    fn from(error: RandomServiceError) -> Self {
        match error {
            // Caps are part of the request's validity, as the issue asks: the client can fix
            // the field, so INVALID_ARGUMENT rather than RESOURCE_EXHAUSTED.
            RandomServiceError::EmptyRange { .. }
            | RandomServiceError::Negative { .. }
            | RandomServiceError::AboveLimit { .. } => Status::invalid_argument(error.to_string()),
        }
    }
}
