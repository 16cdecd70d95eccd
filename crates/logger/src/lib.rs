//! The logger service (port 50055): the suite's system of record, on SQLite or, shared by
//! several replicas, on PostgreSQL.
//!
//! - [`serve`] runs the gRPC service (LogActivity, QueryLogs, FollowLogs) on an
//!   already-bound listener until a shutdown token fires, over a [`Store`] opened with
//!   [`open_store`]; the `logger_server` binary and the tests start it the same way.
//! - [`store`] owns the database: the contract's `logs` table, one writer thread with group
//!   commit (an acknowledged row is durable), read-only connections for queries.
//! - [`client`] is what `logger_client` does; [`query`] is what `logger_query` does, reading
//!   the file directly; both print through [`table`], so their output is the same.

pub mod client;
mod error;
pub mod query;
mod service;
pub mod store;
pub mod table;
pub mod tokens;
pub mod validate;

use std::{path::PathBuf, time::Duration};

use grpc_suite::{
    logger::logger_service_server::LoggerServiceServer, server::GZIP, server::GrpcServer,
    server::Listener,
};
use tokio_util::sync::CancellationToken;

pub use error::LoggerError;
pub use service::LoggerService;
pub use store::{Store, StoreError};

/// The port the old system used, and ours by default.
pub const DEFAULT_PORT: u16 = grpc_suite::logger::DEFAULT_PORT;

/// How this service's binaries name their settings: `LOGGER_SERVICE_*` environment variables
/// (`LOGGER_SERVICE_ADDR`, `LOGGER_SERVICE_URL`, …) and [`DEFAULT_PORT`].
pub const SERVICE: grpc_suite::args::Service = grpc_suite::args::Service {
    env_prefix: "LOGGER_SERVICE",
    default_port: DEFAULT_PORT,
};

/// The database the old system used, relative to the working folder.
pub const DEFAULT_DB: &str = "logs_data/logs.db";

/// The most rows one QueryLogs (or one follow backlog) returns by default.
pub const DEFAULT_MAX_QUERY_LIMIT: u32 = 1000;

/// How long shutdown waits for the writer to commit what is queued and close the file.
const WRITER_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the server needs to know, as plain values (the binary builds it from flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// The SQLite file; it and its folder are created if missing. Unused when
    /// `postgres_url` is set.
    pub db_path: PathBuf,
    /// A `postgres://` URL: store in that PostgreSQL database instead of SQLite.
    pub postgres_url: Option<String>,
    /// The cap on QueryLogs' `limit` and FollowLogs' `backlog`.
    pub max_query_limit: u32,
    /// Print each committed row as `[LOG] <event_type>: <details>` on stdout (the binary
    /// does, as the old server did; in-process tests need not).
    pub echo: bool,
    /// The tokens LogActivity, and QueryLogs/FollowLogs, need; none means open.
    pub tokens: tokens::Tokens,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            db_path: PathBuf::from(DEFAULT_DB),
            postgres_url: None,
            max_query_limit: DEFAULT_MAX_QUERY_LIMIT,
            echo: false,
            tokens: tokens::Tokens::default(),
        }
    }
}

/// Opens the SQLite database (creating it, its folder and our index and side table) and
/// starts its writer, for the caller to report before serving. A configuration naming
/// PostgreSQL is refused ([`StoreError::NotSqlite`]): [`open`] opens either.
pub fn open_store(config: &Config) -> Result<Store, StoreError> {
    if config.postgres_url.is_some() {
        return Err(StoreError::NotSqlite);
    }
    Store::open(&config.db_path, config.echo)
}

/// Opens the configured database, SQLite or PostgreSQL (creating the schema if missing),
/// and starts its writer.
pub async fn open(config: &Config) -> Result<Store, StoreError> {
    match &config.postgres_url {
        Some(url) => Store::open_postgres(url, config.echo).await,
        None => open_store(config),
    }
}

/// Where the database is, for messages: the file, or the URL without its password.
pub fn describe_database(config: &Config) -> String {
    match &config.postgres_url {
        Some(url) => grpc_suite::postgres::redact(url),
        None => config.db_path.display().to_string(),
    }
}

/// Serves the logger service, with health and reflection, until `shutdown` is cancelled;
/// then lets in-flight calls finish, ends follow streams, and stops the writer once what
/// it has queued is committed and no connection or follower of the server is left.
pub async fn serve(
    listener: impl Into<Listener>,
    store: Store,
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let service = LoggerService::new(store.clone(), config.max_query_limit, shutdown.clone())
        .with_tokens(config.tokens.clone());
    let served = GrpcServer::new()
        .track_tasks(service.task_tracker())
        // NOT_SERVING while commits fail: a logger that cannot store is not serving.
        .health_follows(store.committing())
        .add_service(
            LoggerServiceServer::new(service)
                .accept_compressed(GZIP)
                .send_compressed(GZIP),
        )
        .serve(listener, shutdown)
        .await;
    // After the drain, so calls still in flight get their rows committed and answered.
    store.close(WRITER_STOP_TIMEOUT).await;
    served
}
