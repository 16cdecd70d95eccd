//! The auth service's failures, and the one place they become gRPC statuses. A wrong
//! password is not an error: it is an answer (success=false), as the old server gave.

use tonic::Status;

use crate::{outbox::OutboxError, shared::SharedError};

/// Why an auth call failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The username is empty, too long, or has control characters.
    #[error("{0}")]
    BadUsername(&'static str),
    /// The password is longer than any real one.
    #[error("password is longer than {0} bytes")]
    PasswordTooLong(usize),
    /// Too many failed logins for this user or from this address; retry after the delay.
    #[error("too many failed logins; try again in {} s", .0.as_secs().max(1))]
    Throttled(std::time::Duration),
    /// The audit event could not be made durable, so the call was not carried out.
    #[error(transparent)]
    Audit(#[from] OutboxError),
    /// The shared session database (`--sessions-db`) could not be reached or refused.
    #[error(transparent)]
    Shared(#[from] SharedError),
}

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::BadUsername(_) | AuthError::PasswordTooLong(_) => {
                Status::invalid_argument(error.to_string())
            }
            AuthError::Throttled(_) => Status::resource_exhausted(error.to_string()),
            AuthError::Audit(cause) => {
                tracing::error!(error = %cause, "audit event not recorded; refusing the call");
                Status::unavailable("the server cannot record this event right now; try again")
            }
            AuthError::Shared(cause) => {
                tracing::error!(error = %cause, "session database failed; refusing the call");
                Status::unavailable(
                    "the server cannot reach its session database right now; try again",
                )
            }
        }
    }
}
