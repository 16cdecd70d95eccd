//! The auth service (port 50054): logins checked against argon2id hashes, sessions with an
//! expiry, and audit events (SESSION_STARTED, SESSION_TERMINATED, LOGIN_FAILED) that reach
//! the logger service exactly once, in order, however long the logger is away.
//!
//! A login or logout is answered once its event is committed to a local outbox file
//! ([`outbox`]); a background task delivers from there. So a slow or absent logger never
//! slows a login, and an event survives an auth server restart.
//!
//! With [`Config::sessions_db`] (`--sessions-db postgres://…`) sessions and the outbox live
//! in PostgreSQL instead ([`shared`]), so several replicas serve the same sessions.

pub mod client;
pub mod credentials;
mod error;
pub mod outbox;
mod service;
pub mod sessions;
pub mod shared;
pub mod throttle;

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use grpc_suite::{
    auth::auth_service_server::AuthServiceServer,
    logger::logger_service_client::LoggerServiceClient, server::GZIP, server::GrpcServer,
    server::Listener, tls::ClientTls,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use credentials::Credentials;
pub use error::AuthError;
pub use service::AuthService;

/// The port the contract fixes (the old server listened elsewhere by mistake).
pub const DEFAULT_PORT: u16 = grpc_suite::auth::DEFAULT_PORT;

/// How this service's binaries name their settings: `AUTH_SERVICE_*` environment variables
/// (`AUTH_SERVICE_ADDR`, `AUTH_SERVICE_URL`, …) and [`DEFAULT_PORT`].
pub const SERVICE: grpc_suite::args::Service = grpc_suite::args::Service {
    env_prefix: "AUTH_SERVICE",
    default_port: DEFAULT_PORT,
};
/// How long a session lasts by default.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest session lifetime accepted: ten years. Longer is a typo, and a lifetime near
/// `u64::MAX` seconds would overflow the clock arithmetic of every expiry.
pub const MAX_SESSION_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// The outbox file's name inside the data folder.
pub const OUTBOX_FILE: &str = "auth_outbox.db";
/// How often expired sessions are swept out of memory.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// What the server needs, as plain values (the binary builds it from flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a session lasts after login.
    pub session_ttl: Duration,
    /// Folder of the outbox file (created if missing).
    pub data_dir: PathBuf,
    /// The logger service, e.g. `http://localhost:50055` (`https://` for TLS).
    pub logger_url: String,
    /// The CA and client certificate for an `https://` logger (default: system roots, no
    /// client certificate).
    pub logger_tls: ClientTls,
    /// Failed-login bounds.
    pub throttle: throttle::ThrottleConfig,
    /// The token the logger's `--write-token-file` holds, presented with every event.
    pub logger_token: Option<String>,
    /// A `postgres://` URL: keep sessions and the audit outbox in that database, shared
    /// with every replica given the same URL, instead of in memory and `data_dir`.
    pub sessions_db: Option<String>,
}

/// Serves the auth service until `shutdown`, delivering audit events in the background.
pub async fn serve(
    listener: impl Into<Listener>,
    credentials: Credentials,
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Lazy: the auth server starts, and answers, whether or not the logger is up yet.
    // Several logger replicas (a list, or tasks.logger) share the deliveries; a failed one
    // is redelivered, and the logger keeps one row per event id.
    let logger_channel = grpc_suite::balance::lazy_channel(
        &config.logger_url,
        &config.logger_tls,
        Arc::new(|endpoint: tonic::transport::Endpoint| {
            endpoint.connect_timeout(Duration::from_secs(2))
        }),
    )
    .context("the logger's address")?;
    let logger_token = config
        .logger_token
        .as_deref()
        .map(|token| format!("Bearer {token}").parse())
        .transpose()
        .context("the logger token must be printable ASCII")?;
    let throttle = Arc::new(throttle::Throttle::new(config.throttle));
    let background = TaskTracker::new();
    let service = match &config.sessions_db {
        Some(url) => {
            let shared = shared::SharedSessions::open(url).await.with_context(|| {
                format!(
                    "opening the session database {}",
                    grpc_suite::postgres::redact(url)
                )
            })?;
            background.spawn(shared.clone().deliver(
                LoggerServiceClient::new(logger_channel),
                logger_token,
                shutdown.clone(),
            ));
            background.spawn(sweep_shared_sessions(shared.clone(), shutdown.clone()));
            AuthService::shared(credentials, shared, config.session_ttl, throttle)
        }
        None => {
            let (sessions, outbox) = open_local(config)?;
            background.spawn(outbox.clone().deliver(
                LoggerServiceClient::new(logger_channel),
                logger_token,
                shutdown.clone(),
            ));
            background.spawn(sweep_sessions(Arc::clone(&sessions), shutdown.clone()));
            AuthService::new(credentials, sessions, outbox, throttle)
        }
    };
    background.close();

    let served = GrpcServer::new()
        .add_service(
            AuthServiceServer::new(service)
                .accept_compressed(GZIP)
                .send_compressed(GZIP),
        )
        .serve(listener, shutdown.clone())
        .await;
    // The gRPC side is done; background tasks watch the same token and stop promptly.
    shutdown.cancel();
    background.wait().await;
    served
}

/// The local outbox file in the data folder, and the sessions kept in it still live.
fn open_local(config: &Config) -> anyhow::Result<(Arc<sessions::SessionStore>, outbox::Outbox)> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data folder {}", config.data_dir.display()))?;
    let outbox_path = config.data_dir.join(OUTBOX_FILE);
    let outbox = outbox::Outbox::open(&outbox_path)
        .with_context(|| format!("opening the audit outbox {}", outbox_path.display()))?;
    let sessions = Arc::new(sessions::SessionStore::new(config.session_ttl));
    // Sessions survive a restart: those still live on disk are served again.
    let now = std::time::SystemTime::now();
    let kept = outbox
        .live_sessions(service::unix_seconds(now))
        .with_context(|| format!("reading the kept sessions in {}", outbox_path.display()))?;
    let restored = kept.len();
    for (id, username, expires_at) in kept {
        let expires_at = std::time::UNIX_EPOCH
            + Duration::from_secs(u64::try_from(expires_at).unwrap_or_default());
        sessions.insert(
            id,
            sessions::Session {
                username,
                expires_at,
            },
        );
    }
    if restored > 0 {
        tracing::info!(restored, "live sessions restored from the data folder");
    }
    Ok((sessions, outbox))
}

/// Removes expired sessions from the shared table now and then (any replica may; the
/// delete is idempotent) and keeps the live-sessions gauge.
async fn sweep_shared_sessions(shared: shared::SharedSessions, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                match shared.sweep(service::unix_seconds(std::time::SystemTime::now())).await {
                    Ok(left) => grpc_suite::metrics::AUTH_SESSIONS_LIVE.set(left),
                    Err(error) => tracing::debug!(%error, "sweeping expired sessions failed"),
                }
            }
            () = shutdown.cancelled() => return,
        }
    }
}

async fn sweep_sessions(sessions: Arc<sessions::SessionStore>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let swept = sessions.sweep(std::time::SystemTime::now());
                if swept > 0 {
                    tracing::debug!(swept, "expired sessions removed");
                }
            }
            () = shutdown.cancelled() => return,
        }
    }
}
