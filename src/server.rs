//! Serving a set of gRPC services the way every server of the suite does: health
//! (`grpc.health.v1`, overall and per service), reflection (v1 and v1alpha), TCP_NODELAY,
//! a readable status for over-limit requests, and graceful shutdown with a bounded drain
//! after which nothing of the server runs on: no connection, no task its services spawned.

mod connections;

use std::{convert::Infallible, pin::pin, time::Duration};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{
    Code, Status,
    body::Body,
    server::NamedService,
    service::{Routes, RoutesBuilder},
    transport::server::TcpIncoming,
};
use tonic_health::ServingStatus;

use crate::tls::ServerTls;

/// How long in-flight calls may run on after shutdown starts, unless a server chooses
/// otherwise. Docker's default stop timeout is 10 s; this leaves room to exit cleanly.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(8);

/// How long, after the grace period, closed connections and the services' tasks may take to
/// end. Both end at their next poll once told, so this only bounds a bug; passing it is
/// logged, naming what is left.
const STOP_BOUND: Duration = Duration::from_secs(2);

/// The health service's name, as reflection lists it.
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// Where a server listens: a bound socket, and the TLS it serves with, if any. A plain
/// `TcpListener` converts into one without TLS, so tests and plaintext servers pass the
/// socket as it is.
#[derive(Debug)]
pub struct Listener {
    tcp: TcpListener,
    tls: Option<ServerTls>,
}

impl Listener {
    /// A bound socket that serves TLS (mutual TLS when `tls` names a client CA).
    pub fn with_tls(tcp: TcpListener, tls: Option<ServerTls>) -> Self {
        Self { tcp, tls }
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.tcp.local_addr()
    }
}

impl From<TcpListener> for Listener {
    fn from(tcp: TcpListener) -> Self {
        Self { tcp, tls: None }
    }
}

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
    /// The trackers of every task the services spawn (stream producers, followers, chat
    /// readers). [`GrpcServer::serve`] waits for them, so none outlives it.
    task_trackers: Vec<TaskTracker>,
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
            task_trackers: Vec::new(),
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
    /// connections are closed. tonic alone would wait for them without a deadline.
    pub fn grace_period(mut self, grace_period: Duration) -> Self {
        self.grace_period = grace_period;
        self
    }

    /// Makes [`GrpcServer::serve`] close `tasks` and wait for it once its connections are
    /// closed: a service spawns its per-stream tasks on a tracker given here instead of a
    /// bare `tokio::spawn`, so that none of them runs on after the server returned.
    pub fn track_tasks(mut self, tasks: TaskTracker) -> Self {
        self.task_trackers.push(tasks);
        self
    }

    /// Serves on an already-bound listener (tests bind `127.0.0.1:0`) until `shutdown` is
    /// cancelled, then stops accepting, reports NOT_SERVING and lets in-flight calls finish
    /// within the grace period. Long streams should watch the same token and end themselves.
    ///
    /// Returns only once nothing of the server runs: when the grace period is over, the
    /// connections still open are closed (their clients see the stream fail), and then the
    /// tasks of every tracker given to [`GrpcServer::track_tasks`] are awaited. Each of those
    /// two waits is bounded; passing the bound is logged with what is left.
    pub async fn serve(
        self,
        listener: impl Into<Listener>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let Listener { tcp: listener, tls } = listener.into();
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

        // Each accepted socket is registered, so that the grace period can end it: tonic's
        // per-connection tasks cannot be reached any other way.
        let connections = connections::Connections::default();
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true)).map({
            let connections = connections.clone();
            move |accepted| accepted.map(|stream| connections.track(stream))
        });
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &tls {
            // The handshake runs on the connection's own task, bounded by the TLS config's
            // timeout, so a peer that never finishes it cannot hold up accepting others.
            builder = builder
                .tls_config(tls.config())
                .context("setting up TLS")?;
        }
        let server = builder
            .layer(tower::util::MapResponseLayer::new(
                relabel_oversized_request::<Body>,
            ))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, signal);
        let transport = match &tls {
            None => "plaintext",
            Some(tls) if tls.is_mutual() => "mutual TLS",
            Some(_) => "TLS",
        };
        tracing::info!(%local_addr, transport, "serving");
        let mut server = pin!(server);

        let grace_period = self.grace_period;
        let drain_deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(grace_period).await;
        };
        let drained = tokio::select! {
            result = &mut server => Some(result),
            () = drain_deadline => None,
        };
        let served = match drained {
            Some(result) => result.context("serving gRPC"),
            None => {
                tracing::warn!(
                    ?grace_period,
                    connections = connections.live(),
                    "grace period over: closing the remaining connections"
                );
                connections.close_all();
                // tonic's future ends once every connection task has let go of its
                // connection, which closing them makes happen at their next poll.
                tokio::time::timeout(STOP_BOUND, &mut server)
                    .await
                    .unwrap_or(Ok(()))
                    .context("serving gRPC")
            }
        };
        // Whatever ended serving (the drain, the deadline or an error), no connection may
        // outlive this call.
        connections.close_all();
        if tokio::time::timeout(STOP_BOUND, connections.wait_until_closed())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = connections.live(),
                "connections still open after being closed"
            );
        }
        // After the connections: a producer blocked on a client that stopped reading ends
        // only once its connection, and with it its response stream, is gone.
        wait_for_tasks(&self.task_trackers).await;
        tracing::info!("server stopped");
        served
    }
}

/// Closes `trackers` and waits, bounded by [`STOP_BOUND`], until their tasks have all ended.
async fn wait_for_tasks(trackers: &[TaskTracker]) {
    for tracker in trackers {
        tracker.close();
    }
    let all_ended = async {
        for tracker in trackers {
            tracker.wait().await;
        }
    };
    if tokio::time::timeout(STOP_BOUND, all_ended).await.is_err() {
        let remaining: usize = trackers.iter().map(TaskTracker::len).sum();
        tracing::warn!(remaining, "service tasks still running after shutdown");
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
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
        time::{Instant, timeout},
    };

    use super::*;

    /// Every wait in these tests: far longer than any of them should take.
    const TEST_TIMEOUT: Duration = Duration::from_secs(20);

    /// A grace period short enough for tests, long enough to tell "waited" from "did not".
    const SHORT_GRACE: Duration = Duration::from_millis(300);

    /// The HTTP/2 client connection preface followed by an empty SETTINGS frame.
    const CLIENT_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";

    /// Reads HTTP/2 frames until the server acknowledges our SETTINGS, which it does only
    /// once the connection is past its handshake and served.
    async fn read_until_settings_ack(client: &mut TcpStream) {
        loop {
            let mut header = [0_u8; 9];
            client
                .read_exact(&mut header)
                .await
                .expect("a frame header");
            let length =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let mut payload = vec![0_u8; length];
            client
                .read_exact(&mut payload)
                .await
                .expect("a frame payload");
            let (frame_type, flags) = (header[3], header[4]);
            if frame_type == 0x4 && flags & 0x1 == 0x1 {
                return;
            }
        }
    }

    /// A raw client that completes the HTTP/2 handshake and then neither sends nor answers
    /// anything holds the graceful drain open; once the grace period is over `serve` closes
    /// its connection and returns, and the client sees its connection end.
    #[tokio::test]
    async fn grace_period_closes_a_connection_held_open() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(
            GrpcServer::new()
                .grace_period(SHORT_GRACE)
                .serve(listener, shutdown.clone()),
        );
        let mut client = timeout(TEST_TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connected in time")
            .expect("connected");
        client
            .write_all(CLIENT_PREFACE)
            .await
            .expect("preface sent");
        timeout(TEST_TIMEOUT, read_until_settings_ack(&mut client))
            .await
            .expect("handshake in time");

        let shutdown_at = Instant::now();
        shutdown.cancel();
        timeout(TEST_TIMEOUT, server)
            .await
            .expect("serve returned in time")
            .expect("server task")
            .expect("clean stop");
        assert!(
            shutdown_at.elapsed() >= SHORT_GRACE,
            "serve returned after {:?}: the held connection did not hold the drain",
            shutdown_at.elapsed()
        );

        // What the server sent before closing (GOAWAY, PING) is read, then the end.
        let ended = timeout(TEST_TIMEOUT, async {
            let mut buffer = [0_u8; 1024];
            loop {
                match client.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the client's connection stayed open");
    }

    /// `serve` returns only after the tasks spawned on a tracker it was given have ended,
    /// even one that goes on for a while after shutdown.
    #[tokio::test]
    async fn serve_waits_for_tracked_tasks() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let finished = Arc::new(AtomicBool::new(false));
        tasks.spawn({
            let shutdown = shutdown.clone();
            let finished = Arc::clone(&finished);
            async move {
                shutdown.cancelled().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                finished.store(true, Ordering::SeqCst);
            }
        });
        let server = tokio::spawn(
            GrpcServer::new()
                .grace_period(SHORT_GRACE)
                .track_tasks(tasks.clone())
                .serve(listener, shutdown.clone()),
        );
        shutdown.cancel();
        timeout(TEST_TIMEOUT, server)
            .await
            .expect("serve returned in time")
            .expect("server task")
            .expect("clean stop");
        assert!(
            finished.load(Ordering::SeqCst),
            "serve returned before the task ended"
        );
        assert!(tasks.is_empty());
    }

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
