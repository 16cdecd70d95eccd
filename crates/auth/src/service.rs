//! The AuthService handlers: check the request, verify the password on a blocking thread,
//! keep the session, and record the audit event durably before answering.

use std::{
    net::{IpAddr, Ipv6Addr},
    sync::Arc,
    time::{Instant, SystemTime},
};

use grpc_suite::{auth as pb, server::run_blocking, wire_time};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use crate::{
    AuthError,
    credentials::Credentials,
    outbox::{AuditEvent, Outbox, SessionChange},
    sessions::{Session, SessionStore},
    shared::SharedSessions,
    throttle::Throttle,
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
    state: State,
    throttle: Arc<Throttle>,
    /// One argon2id check takes ~19 MiB and a core for tens of milliseconds; this bounds how
    /// many run at once, so a burst of logins queues instead of exhausting memory, and one
    /// core is left for everything else (logouts, validations, the runtime itself) while a
    /// flood of wrong passwords keeps the pool busy.
    password_checks: Arc<Semaphore>,
}

/// Where sessions and audit events are kept.
#[derive(Debug, Clone)]
enum State {
    /// This process: sessions in memory, mirrored with the outbox in a local SQLite file.
    Local {
        sessions: Arc<SessionStore>,
        outbox: Outbox,
    },
    /// PostgreSQL, shared with every replica (`--sessions-db`).
    Shared {
        shared: SharedSessions,
        /// Session lifetime, at most [`crate::MAX_SESSION_TTL`].
        ttl: std::time::Duration,
    },
}

impl AuthService {
    /// A service over these accounts, sessions and outbox.
    pub fn new(
        credentials: Credentials,
        sessions: Arc<SessionStore>,
        outbox: Outbox,
        throttle: Arc<Throttle>,
    ) -> Self {
        Self::with_state(credentials, State::Local { sessions, outbox }, throttle)
    }

    /// A service whose sessions and outbox are in PostgreSQL, shared with other replicas;
    /// sessions last `ttl` (at most [`crate::MAX_SESSION_TTL`]).
    pub fn shared(
        credentials: Credentials,
        shared: SharedSessions,
        ttl: std::time::Duration,
        throttle: Arc<Throttle>,
    ) -> Self {
        let ttl = ttl.min(crate::MAX_SESSION_TTL);
        Self::with_state(credentials, State::Shared { shared, ttl }, throttle)
    }

    fn with_state(credentials: Credentials, state: State, throttle: Arc<Throttle>) -> Self {
        let parallelism =
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        Self {
            credentials: Arc::new(credentials),
            state,
            throttle,
            password_checks: Arc::new(Semaphore::new(parallelism.saturating_sub(1).max(1))),
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

    /// Records an event that changes no session.
    async fn record(&self, event: AuditEvent) -> Result<(), AuthError> {
        match &self.state {
            State::Local { outbox, .. } => outbox.record(event).await?,
            State::Shared { shared, .. } => shared.record(&event).await?,
        }
        Ok(())
    }

    /// Starts a session for `username` and records its SESSION_STARTED, together.
    async fn start_session(&self, username: &str) -> Result<uuid::Uuid, AuthError> {
        let event = AuditEvent::now("SESSION_STARTED", format!("User '{username}' logged in"));
        match &self.state {
            State::Local { sessions, outbox } => {
                let (session_id, session) = sessions.issue(username, SystemTime::now());
                let change = SessionChange::Start {
                    id: session_id,
                    username: username.to_owned(),
                    expires_at: unix_seconds(session.expires_at),
                };
                // The session and its audit record are committed together: no record, no
                // session, and the client may simply try again.
                outbox.record_session(event, change).await?;
                sessions.insert(session_id, session);
                Ok(session_id)
            }
            State::Shared { shared, ttl } => {
                let session_id = uuid::Uuid::new_v4();
                let expires_at = unix_seconds(SystemTime::now() + *ttl);
                shared
                    .start(session_id, username, expires_at, &event)
                    .await?;
                Ok(session_id)
            }
        }
    }

    /// Ends the live session `session_id` and records its SESSION_TERMINATED, together;
    /// its username, or `None` when no such session is live.
    async fn end_session(&self, session_id: uuid::Uuid) -> Result<Option<String>, AuthError> {
        let terminated = |username: &str| {
            AuditEvent::now(
                "SESSION_TERMINATED",
                format!("Session {session_id} ({username}) ended"),
            )
        };
        match &self.state {
            State::Local { sessions, outbox } => {
                let Some(session) = sessions.end(&session_id, SystemTime::now()) else {
                    return Ok(None);
                };
                let event = terminated(&session.username);
                let change = SessionChange::End { id: session_id };
                if let Err(error) = outbox.record_session(event, change).await {
                    // Not recorded, so not ended: memory goes back to match the disk.
                    sessions.insert(session_id, session);
                    return Err(error.into());
                }
                Ok(Some(session.username))
            }
            State::Shared { shared, .. } => Ok(shared
                .end(session_id, unix_seconds(SystemTime::now()), terminated)
                .await?),
        }
    }

    /// The live session `session_id`, if any.
    async fn session(&self, session_id: uuid::Uuid) -> Result<Option<Session>, AuthError> {
        match &self.state {
            State::Local { sessions, .. } => Ok(sessions.get(&session_id, SystemTime::now())),
            State::Shared { shared, .. } => {
                let found = shared
                    .get(session_id, unix_seconds(SystemTime::now()))
                    .await?;
                Ok(found.map(|(username, expires_at)| Session {
                    username,
                    expires_at: SystemTime::UNIX_EPOCH
                        + std::time::Duration::from_secs(
                            u64::try_from(expires_at).unwrap_or_default(),
                        ),
                }))
            }
        }
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
    #[tracing::instrument(level = "debug", skip_all)]
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::AuthResponse>, Status> {
        // Without a peer address (not over TCP) every caller shares one throttle bucket.
        let address = request
            .remote_addr()
            .map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), |peer| peer.ip());
        let pb::LoginRequest { username, password } = request.into_inner();
        check_username(&username)?;
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(AuthError::PasswordTooLong(MAX_PASSWORD_BYTES).into());
        }
        if let Err(throttled) = self.throttle.check(&username, address, Instant::now()) {
            if throttled.first_of_burst {
                let event = AuditEvent::now(
                    "LOGIN_THROTTLED",
                    format!(
                        "Logins for user '{username}' from {address} throttled after repeated failures"
                    ),
                );
                self.record(event).await?;
            }
            tracing::info!(%username, %address, "login throttled");
            return Err(AuthError::Throttled(throttled.retry_after).into());
        }
        if !self.password_matches(username.clone(), password).await? {
            self.throttle
                .record_failure(&username, address, Instant::now());
            let event = AuditEvent::now(
                "LOGIN_FAILED",
                format!("Failed login for user '{username}'"),
            );
            self.record(event).await?;
            tracing::info!(%username, "login refused");
            grpc_suite::metrics::AUTH_LOGINS
                .with_label_values(&["refused"])
                .inc();
            return Ok(answer(false, LOGIN_REFUSED, String::new()));
        }
        self.throttle.record_success(&username, address);
        let session_id = self.start_session(&username).await?;
        tracing::info!(%username, %session_id, "logged in");
        grpc_suite::metrics::AUTH_LOGINS
            .with_label_values(&["success"])
            .inc();
        Ok(answer(true, LOGIN_OK, session_id.to_string()))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::AuthResponse>, Status> {
        let raw_id = request.into_inner().session_id;
        let Ok(session_id) = uuid::Uuid::parse_str(raw_id.trim()) else {
            return Ok(answer(false, LOGOUT_UNKNOWN, raw_id));
        };
        let Some(username) = self.end_session(session_id).await? else {
            return Ok(answer(false, LOGOUT_UNKNOWN, raw_id));
        };
        tracing::info!(%username, %session_id, "logged out");
        Ok(answer(true, LOGOUT_OK, session_id.to_string()))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn validate_session(
        &self,
        request: Request<pb::ValidateSessionRequest>,
    ) -> Result<Response<pb::ValidateSessionResponse>, Status> {
        let raw_id = request.into_inner().session_id;
        let session = match uuid::Uuid::parse_str(raw_id.trim()) {
            Ok(id) => self.session(id).await?,
            Err(_) => None,
        };
        let reply = match session {
            Some(session) => pb::ValidateSessionResponse {
                valid: true,
                username: session.username,
                expires_at: chrono::DateTime::<chrono::Utc>::from(session.expires_at)
                    .format(wire_time::SESSION_EXPIRY)
                    .to_string(),
            },
            None => pb::ValidateSessionResponse::default(),
        };
        Ok(Response::new(reply))
    }
}

/// Seconds since the Unix epoch (0 for a time before it, which no expiry is).
pub(crate) fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        })
}
