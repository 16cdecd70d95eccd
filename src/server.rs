//! Serving a set of gRPC services the way every server of the suite does: health
//! (`grpc.health.v1`, overall and per service), reflection (v1 and v1alpha), TCP_NODELAY,
//! a readable status for over-limit requests, and graceful shutdown with a bounded drain
//! after which nothing of the server runs on: no connection, no task its services spawned.

mod call_log;
mod call_metrics;
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

use crate::{
    session_guard::{SessionGuard, SessionGuardLayer},
    tls::ServerTls,
};

/// How long in-flight calls may run on after shutdown starts, unless a server chooses
/// otherwise. Docker's default stop timeout is 10 s; this leaves room to exit cleanly.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(8);

/// How long, after the grace period, closed connections and the services' tasks may take to
/// end. Both end at their next poll once told, so this only bounds a bug; passing it is
/// logged, naming what is left.
const STOP_BOUND: Duration = Duration::from_secs(2);

/// The compression every server accepts on requests and uses for answers to clients that
/// ask for it (`grpc-accept-encoding`): grpcio clients may send gzip, and tonic refuses a
/// compressed request with UNIMPLEMENTED unless the generated server enables it:
/// `XServer::new(service).accept_compressed(GZIP).send_compressed(GZIP)`.
pub const GZIP: tonic::codec::CompressionEncoding = tonic::codec::CompressionEncoding::Gzip;

/// How often a server hands memory its allocator holds free back to the OS. See
/// [`release_free_memory`].
const TRIM_INTERVAL: Duration = Duration::from_secs(2);

/// The health service's name, as reflection lists it.
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";

/// What a server grants one peer, so that callers that are broken or hostile cost bounded
/// resources: idle sockets, vanished peers and connection floods are all cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A connection that has not sent the HTTP/2 preface within this long is closed: a
    /// socket that never speaks would otherwise hold a file handle for ever.
    pub handshake_timeout: Duration,
    /// How often an HTTP/2 PING goes to a peer, so that one that vanished without a FIN
    /// (cable pulled, process frozen) is noticed; `None` sends none.
    pub keepalive_interval: Option<Duration>,
    /// How long a PING may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// Connections served at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Concurrent streams (calls) one connection may open; HTTP/2 refuses the rest.
    pub max_streams_per_connection: u32,
}

/// [`ConnectionLimits::handshake_timeout`] by default.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// [`ConnectionLimits::keepalive_interval`] by default: well under the idle timeouts of
/// common NATs and load balancers (60 s and more), rare enough to cost nothing.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// [`ConnectionLimits::keepalive_timeout`] by default.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// [`ConnectionLimits::max_connections`] by default: far above the suite's own use, and
/// below the common limit of 1024 open files, so the cap is met before the OS refuses.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1000;
/// [`ConnectionLimits::max_streams_per_connection`] by default.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 256;

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            keepalive_interval: Some(DEFAULT_KEEPALIVE_INTERVAL),
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS as usize,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
        }
    }
}

/// Where a server meets its callers: a bound socket, the TLS it serves with, what it
/// grants each connection, and the session guard its calls pass, if any. A plain
/// `TcpListener` converts into one without TLS or guard and with the default limits, so
/// tests and open plaintext servers pass the socket as it is, and no service library needs
/// a parameter for any of them.
#[derive(Debug)]
pub struct Listener {
    tcp: TcpListener,
    tls: Option<ServerTls>,
    guard: Option<SessionGuard>,
    limits: ConnectionLimits,
    /// Where to serve `GET /metrics` (plain HTTP), if anywhere. Carried with the gRPC socket
    /// so that a binary's `--metrics-addr` reaches the server without passing through each
    /// service's library.
    metrics: Option<TcpListener>,
}

impl Listener {
    /// A bound socket that serves TLS (mutual TLS when `tls` names a client CA).
    pub fn with_tls(tcp: TcpListener, tls: Option<ServerTls>) -> Self {
        Self {
            tcp,
            tls,
            guard: None,
            limits: ConnectionLimits::default(),
            metrics: None,
        }
    }

    /// Every call but health and reflection must then carry a live session.
    pub fn with_session_guard(mut self, guard: Option<SessionGuard>) -> Self {
        self.guard = guard;
        self
    }

    /// The same listener, granting connections `limits` instead of the defaults.
    pub fn with_limits(mut self, limits: ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Also serves Prometheus metrics at `GET /metrics` on `metrics` (plain HTTP), and
    /// records every call in them.
    pub fn with_metrics(mut self, metrics: Option<TcpListener>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.tcp.local_addr()
    }
}

impl From<TcpListener> for Listener {
    fn from(tcp: TcpListener) -> Self {
        Self::with_tls(tcp, None)
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
    /// Whether the services can do their work (a logger that can commit), if one of them
    /// says: health then follows it until shutdown.
    serving: Option<tokio::sync::watch::Receiver<bool>>,
    /// What a request over the decode limit is told the limit is, when that is not the
    /// decode limit itself ([`GrpcServer::request_limit`]).
    request_limit: Option<RequestLimit>,
}

/// The limit a service documents for its requests, named in the answer to one over it.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimit {
    /// What is limited, as a sentence starts: "a file's content".
    pub what: &'static str,
    /// The documented limit, in bytes.
    pub bytes: u64,
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
            serving: None,
            request_limit: None,
        }
    }

    /// Names `limit` in the RESOURCE_EXHAUSTED answer to a unary request too large to
    /// decode, instead of the decode limit: a service that allows room for framing above
    /// its documented limit (the file service's 64 MiB of content) tells the caller the
    /// limit it documents, not that limit plus the room.
    pub fn request_limit(mut self, limit: RequestLimit) -> Self {
        self.request_limit = Some(limit);
        self
    }

    /// Makes health report NOT_SERVING (overall and per service) while `serving` holds
    /// false, and SERVING again once it holds true, until shutdown.
    pub fn health_follows(mut self, serving: tokio::sync::watch::Receiver<bool>) -> Self {
        self.serving = Some(serving);
        self
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
        let Listener {
            tcp: listener,
            tls,
            guard,
            limits,
            metrics,
        } = listener.into();
        let request_limit = self.request_limit;
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

        let service_names_for_health = self.service_names.clone();
        // Built here, while the service names are at hand; used in the layer stack below.
        let call_metrics = metrics.as_ref().map(|_| {
            let descriptor_sets = [
                crate::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            ];
            let mut measured = self.service_names.clone();
            measured.push(HEALTH_SERVICE);
            call_metrics::CallMetricsLayer::new(&descriptor_sets, &measured)
        });
        let service_names = self.service_names;
        let follow_reporter = health_reporter.clone();
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
        let connections = connections::Connections::new(limits.handshake_timeout);
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .filter_map({
                let connections = connections.clone();
                let max_connections = limits.max_connections;
                move |accepted| match accepted {
                    // Past the cap the socket is closed at once (the peer sees its connection
                    // end before any HTTP/2), which costs less than serving it to refuse calls.
                    Ok(stream) if connections.live() >= max_connections => {
                        tracing::warn!(
                            max_connections,
                            peer = ?stream.peer_addr().ok(),
                            "connection refused: too many open connections"
                        );
                        None
                    }
                    accepted => Some(accepted.map(|stream| connections.track(stream))),
                }
            });
        let mut builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(limits.keepalive_interval)
            .http2_keepalive_timeout(Some(limits.keepalive_timeout))
            .max_concurrent_streams(limits.max_streams_per_connection);
        if let Some(tls) = &tls {
            // The handshake runs on the connection's own task, bounded by the TLS config's
            // timeout, so a peer that never finishes it cannot hold up accepting others.
            builder = builder.tls_config(tls.config()).context("setting up TLS")?;
        }
        // ---- the layers every call passes, outermost first ----
        // 1. One log line per finished call; outermost, so its duration covers the others.
        // 2. Per-call metrics, only when metrics are served: off, a call pays nothing.
        // 3. The oversized-request status fix-up, so the log and the metrics see the code
        //    the client gets.
        // 4. The session guard (--auth-url), innermost: its refusals are logged and counted
        //    like any other answer.
        let layers = tower::ServiceBuilder::new()
            .layer(call_log::layer())
            .option_layer(call_metrics)
            .layer(tower::util::MapResponseLayer::new(
                move |response: http::Response<Body>| {
                    relabel_oversized_request(response, request_limit)
                },
            ))
            .option_layer(guard.map(SessionGuardLayer));
        let server = builder
            .layer(layers)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, signal);
        // The metrics endpoint runs beside gRPC on its own socket and task, and stops with
        // the same token; it is awaited below with the services' tasks.
        let metrics_endpoint = TaskTracker::new();
        if let Some(metrics) = metrics {
            metrics_endpoint.spawn(crate::metrics::serve(metrics, shutdown.clone()));
        }
        // ---- end of the layers ----
        let transport = match &tls {
            None => "plaintext",
            Some(tls) if tls.is_mutual() => "mutual TLS",
            Some(_) => "TLS",
        };
        tracing::info!(%local_addr, transport, "serving");
        let mut server = pin!(server);

        // Ends with serve, like the services' own tasks.
        let trimming = TaskTracker::new();
        let stop_trimming = CancellationToken::new();
        if let Some(mut serving) = self.serving {
            let stop = stop_trimming.clone();
            let shutdown = shutdown.clone();
            let names: Vec<&'static str> = std::iter::once("")
                .chain(service_names_for_health.iter().copied())
                .collect();
            trimming.spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = shutdown.cancelled() => return,
                        changed = serving.changed() => if changed.is_err() { return },
                    }
                    // After shutdown started, health stays NOT_SERVING whatever happens.
                    if shutdown.is_cancelled() {
                        return;
                    }
                    let status = if *serving.borrow_and_update() {
                        ServingStatus::Serving
                    } else {
                        ServingStatus::NotServing
                    };
                    tracing::warn!(?status, "health follows the services' state");
                    for name in &names {
                        follow_reporter.set_service_status(*name, status).await;
                    }
                }
            });
        }
        trimming.spawn({
            let stop_trimming = stop_trimming.clone();
            async move {
                let mut interval = tokio::time::interval(TRIM_INTERVAL);
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = stop_trimming.cancelled() => return,
                        _ = interval.tick() => {}
                    }
                    // malloc_trim walks every arena under its lock: not on the executor.
                    let _ = tokio::task::spawn_blocking(release_free_memory).await;
                }
            }
        });

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
        stop_trimming.cancel();
        let mut trackers = self.task_trackers;
        trackers.push(trimming);
        trackers.push(metrics_endpoint);
        wait_for_tasks(&trackers).await;
        tracing::info!("server stopped");
        served
    }
}

/// Gives the OS back the memory the allocator holds free. glibc keeps what a burst freed
/// in its per-thread arenas (every tokio worker has one) and returns only the top of the
/// main heap by itself, so after 100 stuck clients left, a server stayed hundreds of MiB
/// above idle. `malloc_trim(0)` releases the free pages of every arena (madvise), at the
/// cost of a walk over free chunks: microseconds for an idle heap. We keep glibc's malloc
/// rather than switch allocators (mimalloc, jemalloc): no C build per binary, and one place
/// covers all five servers. Elsewhere (musl, macOS) this does nothing.
// The workspace denies unsafe code; this one FFI call is the documented exception.
#[allow(unsafe_code)]
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only reorganises the allocator's own free lists; it is safe to
    // call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
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
    relabel_oversized_naming(status, None)
}

/// [`relabel_oversized`], naming `limit` instead of the decode limit when given.
fn relabel_oversized_naming(status: Status, limit: Option<RequestLimit>) -> Status {
    if status.code() != Code::OutOfRange || !status.message().starts_with(TONIC_TOO_LARGE) {
        return status;
    }
    match (parse_sizes(status.message()), limit) {
        (Some((found, _)), Some(RequestLimit { what, bytes })) => {
            Status::resource_exhausted(format!(
                "request message is {found} bytes; {what} may be at most {bytes} bytes ({})",
                crate::size::Size(bytes)
            ))
        }
        (Some((found, limit)), None) => Status::resource_exhausted(format!(
            "request message is {found} bytes; this server accepts at most {limit} bytes"
        )),
        (None, _) => {
            Status::resource_exhausted("request message is larger than this server accepts")
        }
    }
}

/// [`relabel_oversized`] for an answer already turned into HTTP: a unary call refused before
/// its handler ran carries its status in the response headers.
fn relabel_oversized_request<B>(
    mut response: http::Response<B>,
    limit: Option<RequestLimit>,
) -> http::Response<B> {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    if status.code() != Code::OutOfRange {
        return response;
    }
    let relabelled = relabel_oversized_naming(status, limit);
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

    /// Starts an empty server with `limits`; returns its address and shutdown token.
    async fn start_limited(limits: ConnectionLimits) -> (std::net::SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        tokio::spawn(GrpcServer::new().grace_period(SHORT_GRACE).serve(
            Listener::from(listener).with_limits(limits),
            shutdown.clone(),
        ));
        (addr, shutdown)
    }

    /// Reads (and drops) whatever the server sends until it closes the connection; returns
    /// how long that took.
    async fn time_until_closed(client: &mut TcpStream) -> Duration {
        let started = Instant::now();
        let mut buffer = [0_u8; 1024];
        loop {
            match client.read(&mut buffer).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    }

    /// A socket that never sends the HTTP/2 preface is closed once the handshake timeout is
    /// over, not kept for ever.
    #[tokio::test]
    async fn silent_socket_is_closed_after_the_handshake_timeout() {
        let limits = ConnectionLimits {
            handshake_timeout: Duration::from_millis(300),
            ..ConnectionLimits::default()
        };
        let (addr, shutdown) = start_limited(limits).await;
        let mut client = TcpStream::connect(addr).await.expect("connected");
        let took = timeout(TEST_TIMEOUT, time_until_closed(&mut client))
            .await
            .expect("the silent socket was never closed");
        assert!(
            took >= Duration::from_millis(250),
            "closed too early: {took:?}"
        );
        assert!(took < Duration::from_secs(5), "closed late: {took:?}");
        shutdown.cancel();
    }

    /// A peer that completed the handshake but answers no PING (a frozen process, a pulled
    /// cable) is disconnected within keepalive interval + timeout.
    #[tokio::test]
    async fn unresponsive_peer_is_dropped_by_keepalive() {
        let limits = ConnectionLimits {
            keepalive_interval: Some(Duration::from_millis(200)),
            keepalive_timeout: Duration::from_millis(200),
            ..ConnectionLimits::default()
        };
        let (addr, shutdown) = start_limited(limits).await;
        let mut client = TcpStream::connect(addr).await.expect("connected");
        client
            .write_all(CLIENT_PREFACE)
            .await
            .expect("preface sent");
        timeout(TEST_TIMEOUT, read_until_settings_ack(&mut client))
            .await
            .expect("handshake in time");
        let took = timeout(TEST_TIMEOUT, time_until_closed(&mut client))
            .await
            .expect("the unresponsive peer was never dropped");
        assert!(took < Duration::from_secs(5), "dropped late: {took:?}");
        shutdown.cancel();
    }

    /// Past the connection cap a new connection is closed at once, while the ones within
    /// it are served; once one leaves, a new one is served again.
    #[tokio::test]
    async fn connections_past_the_cap_are_refused() {
        let limits = ConnectionLimits {
            max_connections: 2,
            ..ConnectionLimits::default()
        };
        let (addr, shutdown) = start_limited(limits).await;
        let mut served = Vec::new();
        for _ in 0..2 {
            let mut client = TcpStream::connect(addr).await.expect("connected");
            client
                .write_all(CLIENT_PREFACE)
                .await
                .expect("preface sent");
            timeout(TEST_TIMEOUT, read_until_settings_ack(&mut client))
                .await
                .expect("served within the cap");
            served.push(client);
        }
        let mut extra = TcpStream::connect(addr).await.expect("the OS accepts");
        let took = timeout(TEST_TIMEOUT, time_until_closed(&mut extra))
            .await
            .expect("the connection past the cap stayed open");
        assert!(took < Duration::from_secs(2), "refused late: {took:?}");

        drop(served.pop());
        // The server notices the close at its next read; give it a moment.
        let mut again = None;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut client = TcpStream::connect(addr).await.expect("connected");
            if client.write_all(CLIENT_PREFACE).await.is_ok()
                && timeout(
                    Duration::from_millis(500),
                    read_until_settings_ack_or_end(&mut client),
                )
                .await
                .unwrap_or(false)
            {
                again = Some(client);
                break;
            }
        }
        assert!(again.is_some(), "no connection served after one left");
        shutdown.cancel();
    }

    /// Like [`read_until_settings_ack`], but false instead of a panic when the connection ends.
    async fn read_until_settings_ack_or_end(client: &mut TcpStream) -> bool {
        loop {
            let mut header = [0_u8; 9];
            if client.read_exact(&mut header).await.is_err() {
                return false;
            }
            let length =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let mut payload = vec![0_u8; length];
            if client.read_exact(&mut payload).await.is_err() {
                return false;
            }
            if header[3] == 0x4 && header[4] & 0x1 == 0x1 {
                return true;
            }
        }
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
        let response = relabel_oversized_request(oversized.clone().into_http::<()>(), None);
        let status = Status::from_header_map(response.headers()).expect("status header");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "request message is 10 bytes; this server accepts at most 4 bytes"
        );

        // A service's documented limit replaces the decode limit in the message.
        let documented = RequestLimit {
            what: "a file's content",
            bytes: 2048,
        };
        let response = relabel_oversized_request(oversized.into_http::<()>(), Some(documented));
        let status = Status::from_header_map(response.headers()).expect("status header");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "request message is 10 bytes; a file's content may be at most 2048 bytes (2KiB)"
        );

        let other = Status::out_of_range("sequence out of range");
        let response = relabel_oversized_request(other.into_http::<()>(), None);
        let status = Status::from_header_map(response.headers()).expect("status header");
        assert_eq!(status.code(), Code::OutOfRange);
    }
}
