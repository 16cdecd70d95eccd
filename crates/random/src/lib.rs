//! The random number service (port 50052): `GetRandomNumbers` streams `count` numbers drawn
//! uniformly from `[min, max]`, `delay` milliseconds apart, produced one at a time as the
//! client reads them.
//!
//! [`serve`] runs it on an already-bound listener until a shutdown token fires, so the
//! `random_server` binary and the tests start it the same way; [`serve_with`] serves a
//! [`RandomService`] the caller built on a [`GrpcServer`] it configured, so tests can keep
//! the service's [`StreamMetrics`] and choose a short grace period. [`client`] holds what
//! `random_client` does: the old script's prompts and table, written against any input and
//! output.

pub mod client;
mod error;
mod metrics;
mod service;

use grpc_suite::{
    random::random_number_service_server::RandomNumberServiceServer, server::GZIP,
    server::GrpcServer, server::Listener,
};
use tokio_util::sync::CancellationToken;

pub use error::RandomServiceError;
pub use metrics::StreamMetrics;
pub use service::RandomService;

/// The port the old system used, and ours by default.
pub const DEFAULT_PORT: u16 = grpc_suite::random::DEFAULT_PORT;

/// How this service's binaries name their settings: `RANDOM_SERVICE_*` environment variables
/// (`RANDOM_SERVICE_ADDR`, `RANDOM_SERVICE_URL`, …) and [`DEFAULT_PORT`].
pub const SERVICE: grpc_suite::args::Service = grpc_suite::args::Service {
    env_prefix: "RANDOM_SERVICE",
    default_port: DEFAULT_PORT,
};

/// The most numbers one request may ask for, by default.
pub const DEFAULT_MAX_COUNT: u32 = 1_000_000;

/// The longest delay between numbers one request may ask for, by default (one minute).
pub const DEFAULT_MAX_DELAY_MS: u32 = 60_000;

/// What the server needs to know, as plain values (the binary builds it from flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Requests asking for more numbers than this are refused.
    pub max_count: u32,
    /// Requests asking for a longer delay (milliseconds) than this are refused.
    pub max_delay_ms: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_count: DEFAULT_MAX_COUNT,
            max_delay_ms: DEFAULT_MAX_DELAY_MS,
        }
    }
}

/// Serves the random number service, with health and reflection, until `shutdown` is
/// cancelled. Open streams watch the same token and end themselves with UNAVAILABLE, so a
/// long slow stream never holds the server up until the grace period runs out; returns once
/// every connection is closed and every producer has ended.
pub async fn serve(
    listener: impl Into<Listener>,
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_with(
        listener,
        GrpcServer::new(),
        RandomService::new(*config),
        shutdown,
    )
    .await
}

/// [`serve`] for a `service` the caller built, on a `server` it configured (a grace period,
/// other services). The service's streams end when `shutdown` fires, and the server waits
/// for its producers before returning.
pub async fn serve_with(
    listener: impl Into<Listener>,
    server: GrpcServer,
    service: RandomService,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let service = service.ending_streams_on(shutdown.clone());
    server
        .track_tasks(service.task_tracker())
        .add_service(
            RandomNumberServiceServer::new(service)
                .accept_compressed(GZIP)
                .send_compressed(GZIP),
        )
        .serve(listener, shutdown)
        .await
}
