//! Serving a set of gRPC services the way every server of the suite does: health
//! (`grpc.health.v1`, overall and per service), reflection (v1 and v1alpha), TCP_NODELAY,
//! a readable status for over-limit requests, and graceful shutdown with a bounded drain.

use std::{convert::Infallible, time::Duration};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{
    Code, Status,
    body::Body,
    server::NamedService,
    service::{Routes, RoutesBuilder},
    transport::server::TcpIncoming,
};
use tonic_health::ServingStatus;

/// How long in-flight calls may run on after shutdown starts, unless a server chooses
/// otherwise. Docker's default stop timeout is 10 s; this leaves room to exit cleanly.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(8);

/// The health service's name, as reflection lists it.
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// A set of services to serve together, with the plumbing every server shares.
///
/// ```no_run
/// # async fn demo<S>(listener: tokio::net::TcpListener, service: S, shutdown: tokio_util::sync::CancellationToken) -> anyhow::Result<()>
/// # where S: tower::Service<http::Request<tonic::body::Body>, Error = std::convert::Infallible, Response = http::Response<tonic::body::Body>>
/// #     + tonic::server::NamedService + Clone + Send + Sync + 'static, S::Future: Send + 'static {
/// grpc_suite::server::GrpcServer::new()
///     .add_service(service)
///     .serve(listener, shutdown)
///     .await
/// # }
/// ```
#[derive(Debug)]
pub struct GrpcServer {
    routes: RoutesBuilder,
    /// Fully qualified names (`file.FileService`) that health reports one by one.
    service_names: Vec<&'static str>,
    grace_period: Duration,
}

impl Default for GrpcServer {
    fn default() -> Self {
        Self::new()
    }
}

impl GrpcServer {
    /// An empty set with the default grace period.
    pub fn new() -> Self {
        Self {
            routes: RoutesBuilder::default(),
            service_names: Vec::new(),
            grace_period: DEFAULT_GRACE_PERIOD,
        }
    }

    /// Adds a generated `*Server<T>`; health reports it under its proto name.
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Error = Infallible, Response = http::Response<Body>>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.service_names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// How long in-flight calls may go on once shutdown starts; after it, the remaining
    /// connections are dropped. tonic alone would wait for them without a deadline.
    pub fn grace_period(mut self, grace_period: Duration) -> Self {
        self.grace_period = grace_period;
        self
    }

    /// Serves on an already-bound listener (tests bind `127.0.0.1:0`) until `shutdown` is
    /// cancelled, then stops accepting, reports NOT_SERVING and lets in-flight calls finish
    /// within the grace period. Long streams should watch the same token and end themselves.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let local_addr = listener
            .local_addr()
            .context("reading the listener's address")?;
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        // The empty name is the server as a whole, which is what plain health probes ask.
        for name in std::iter::once("").chain(self.service_names.iter().copied()) {
            health_reporter
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }

        // Reflection lists what this server serves, not every service in the protos.
        let reflection = |reflection_name: &str| {
            let mut builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .with_service_name(HEALTH_SERVICE)
                .with_service_name(reflection_name);
            for name in &self.service_names {
                builder = builder.with_service_name(*name);
            }
            builder
        };
        let reflection_v1 = reflection("grpc.reflection.v1.ServerReflection")
            .build_v1()
            .context("building the reflection service")?;
        let reflection_v1alpha = reflection("grpc.reflection.v1alpha.ServerReflection")
            .build_v1alpha()
            .context("building the reflection service")?;

        let mut routes = self.routes;
        routes
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        let routes: Routes = routes.routes();

        let service_names = self.service_names;
        let signal = {
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                tracing::info!("shutting down: no new connections, draining in-flight calls");
                // Tell health watchers first, so a balancer stops sending us work.
                for name in std::iter::once("").chain(service_names.iter().copied()) {
                    health_reporter
                        .set_service_status(name, ServingStatus::NotServing)
                        .await;
                }
            }
        };

        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = tonic::transport::Server::builder()
            .layer(tower::util::MapResponseLayer::new(
                relabel_oversized_request::<Body>,
            ))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, signal);
        tracing::info!(%local_addr, "serving");

        let grace_period = self.grace_period;
        let drain_deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(grace_period).await;
        };
        tokio::select! {
            result = server => result.context("serving gRPC")?,
            () = drain_deadline => {
                tracing::warn!(?grace_period, "grace period over: closing the remaining connections");
            }
        }
        tracing::info!("server stopped");
        Ok(())
    }
}

/// A token cancelled at the first Ctrl+C (SIGINT) or SIGTERM, for a server binary to hand to
/// its library. Must be called inside a tokio runtime.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        trigger.cancel();
    });
    token
}

/// Resolves at the first Ctrl+C (SIGINT) or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl+C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received Ctrl+C"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
}

/// Runs `work` on tokio's blocking pool: storage work must never stall the async executor. Joins the task and maps a panic in it to an `internal` status.
pub async fn run_blocking<T, F>(work: F) -> Result<T, Status>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work).await.map_err(|error| {
        tracing::error!(%error, "blocking task failed");
        Status::internal("the server failed while handling this request")
    })
}

/// The start of the message tonic gives when a request exceeds the decode limit.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large";

/// tonic refuses a message over its decode limit with OUT_OF_RANGE and its own wording; the
/// client sent more than the server accepts, which gRPC calls RESOURCE_EXHAUSTED. Returns
/// that status relabelled, naming both sizes, and any other status unchanged. A handler
/// reading a request stream applies it to the errors the stream yields; [`GrpcServer`] applies
/// it to unary answers, where the handler never ran.
pub fn relabel_oversized(status: Status) -> Status {
    if status.code() != Code::OutOfRange || !status.message().starts_with(TONIC_TOO_LARGE) {
        return status;
    }
    match parse_sizes(status.message()) {
        Some((found, limit)) => Status::resource_exhausted(format!(
            "request message is {found} bytes; this server accepts at most {limit} bytes"
        )),
        None => Status::resource_exhausted("request message is larger than this server accepts"),
    }
}

/// [`relabel_oversized`] for an answer already turned into HTTP: a unary call refused before
/// its handler ran carries its status in the response headers.
fn relabel_oversized_request<B>(mut response: http::Response<B>) -> http::Response<B> {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    if status.code() != Code::OutOfRange {
        return response;
    }
    let relabelled = relabel_oversized(status);
    if relabelled.code() == Code::ResourceExhausted
        && let Err(error) = relabelled.add_header(response.headers_mut())
    {
        tracing::warn!(%error, "could not relabel an over-limit status");
    }
    response
}

/// Reads `found N bytes, the limit is: M bytes` out of tonic's message.
fn parse_sizes(message: &str) -> Option<(u64, u64)> {
    let number_after = |marker: &str| -> Option<u64> {
        let rest = &message[message.find(marker)? + marker.len()..];
        let digits: String = rest
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    Some((number_after("found")?, number_after("the limit is:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// tonic's wording yields both sizes, so the relabelled message can name the limit.
    #[test]
    fn parses_tonic_decode_limit_message() {
        let message = "Error, decoded message length too large: found 5000000 bytes, the limit is: 4194304 bytes";
        assert_eq!(parse_sizes(message), Some((5_000_000, 4_194_304)));
        assert_eq!(parse_sizes("something else"), None);
    }

    /// Only tonic's decode-limit answer is relabelled; other statuses pass through.
    #[test]
    fn relabels_only_the_decode_limit_status() {
        let oversized = Status::out_of_range(format!(
            "{TONIC_TOO_LARGE}: found 10 bytes, the limit is: 4 bytes"
        ));
        let response = relabel_oversized_request(oversized.into_http::<()>());
        let status = Status::from_header_map(response.headers()).expect("status header");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "request message is 10 bytes; this server accepts at most 4 bytes"
        );

        let other = Status::out_of_range("sequence out of range");
        let response = relabel_oversized_request(other.into_http::<()>());
        let status = Status::from_header_map(response.headers()).expect("status header");
        assert_eq!(status.code(), Code::OutOfRange);
    }
}
