//! The AuthService handlers: check the request, verify the password on a blocking thread,
//! keep the session, and record the audit event durably before answering.

use std::{sync::Arc, time::Instant};

use grpc_suite::{auth as pb, server::run_blocking};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use crate::{
    AuthError,
    credentials::Credentials,
    outbox::{AuditEvent, Outbox},
    sessions::SessionStore,
};

/// The longest username accepted (bytes); keeps audit events well inside the logger's limits.
pub const MAX_USERNAME_BYTES: usize = 256;
/// The longest password accepted (bytes).
pub const MAX_PASSWORD_BYTES: usize = 4096;

/// Answer texts the old clients print.
const LOGIN_OK: &str = "Login successful";
const LOGIN_REFUSED: &str = "Invalid username or password";
const LOGOUT_OK: &str = "Logout successful";
const LOGOUT_UNKNOWN: &str = "Unknown session";

/// The service state.
#[derive(Debug, Clone)]
pub struct AuthService {
    credentials: Arc<Credentials>,
    sessions: Arc<SessionStore>,
    outbox: Outbox,
    /// One argon2id check takes ~19 MiB and a core for tens of milliseconds; this bounds how
    /// many run at once, so a burst of logins queues instead of exhausting memory.
    password_checks: Arc<Semaphore>,
}

impl AuthService {
    /// A service over these accounts, sessions and outbox.
    pub fn new(credentials: Credentials, sessions: Arc<SessionStore>, outbox: Outbox) -> Self {
        let parallelism =
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        Self {
            credentials: Arc::new(credentials),
            sessions,
            outbox,
            password_checks: Arc::new(Semaphore::new(parallelism)),
        }
    }

    async fn password_matches(&self, username: String, password: String) -> Result<bool, Status> {
        let _permit = self
            .password_checks
            .acquire()
            .await
            .map_err(|_| Status::unavailable("the server is shutting down"))?;
        let credentials = Arc::clone(&self.credentials);
        run_blocking(move || credentials.verify(&username, &password)).await
    }
}

fn check_username(username: &str) -> Result<(), AuthError> {
    if username.is_empty() {
        return Err(AuthError::BadUsername("username is empty"));
    }
    if username.len() > MAX_USERNAME_BYTES {
        return Err(AuthError::BadUsername("username is longer than 256 bytes"));
    }
    if username.chars().any(char::is_control) {
        return Err(AuthError::BadUsername(
            "username contains a control character",
        ));
    }
    Ok(())
}

fn answer(success: bool, message: &str, session_id: String) -> Response<pb::AuthResponse> {
    Response::new(pb::AuthResponse {
        success,
        message: message.to_owned(),
        session_id,
    })
}

#[tonic::async_trait]
impl pb::auth_service_server::AuthService for AuthService {
    // skip_all: the password must never reach a log.
    #[tracing::instrument(skip_all)]
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::AuthResponse>, Status> {
        let pb::LoginRequest { username, password } = request.into_inner();
        check_username(&username)?;
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(AuthError::PasswordTooLong(MAX_PASSWORD_BYTES).into());
        }
        if !self.password_matches(username.clone(), password).await? {
            let event = AuditEvent::now(
                "LOGIN_FAILED",
                format!("Failed login for user '{username}'"),
            );
            self.outbox.record(event).await.map_err(AuthError::from)?;
            tracing::info!(%username, "login refused");
            grpc_suite::metrics::AUTH_LOGINS
                .with_label_values(&["refused"])
                .inc();
            return Ok(answer(false, LOGIN_REFUSED, String::new()));
        }
        let session_id = self.sessions.start(&username, Instant::now());
        let event = AuditEvent::now("SESSION_STARTED", format!("User '{username}' logged in"));
        if let Err(error) = self.outbox.record(event).await {
            // No audit record, no session: the client may simply try again.
            self.sessions.end(&session_id, Instant::now());
            return Err(AuthError::from(error).into());
        }
        tracing::info!(%username, %session_id, "logged in");
        grpc_suite::metrics::AUTH_LOGINS
            .with_label_values(&["success"])
            .inc();
        Ok(answer(true, LOGIN_OK, session_id.to_string()))
    }

    #[tracing::instrument(skip_all)]
    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::AuthResponse>, Status> {
        let raw_id = request.into_inner().session_id;
        let Ok(session_id) = uuid::Uuid::parse_str(raw_id.trim()) else {
            return Ok(answer(false, LOGOUT_UNKNOWN, raw_id));
        };
        let Some(username) = self.sessions.end(&session_id, Instant::now()) else {
            return Ok(answer(false, LOGOUT_UNKNOWN, raw_id));
        };
        let event = AuditEvent::now(
            "SESSION_TERMINATED",
            format!("Session {session_id} ({username}) ended"),
        );
        self.outbox.record(event).await.map_err(AuthError::from)?;
        tracing::info!(%username, %session_id, "logged out");
        Ok(answer(true, LOGOUT_OK, session_id.to_string()))
    }
}
