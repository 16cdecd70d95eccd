//! The process's Prometheus metrics: one registry, the per-call `grpc_server_*` families
//! (recorded by a layer of [`GrpcServer`](crate::server::GrpcServer), never by handlers), the
//! few figures each service knows and an operator needs, and the plain HTTP endpoint that
//! serves them as text at `GET /metrics`.
//!
//! Services record where the event happens, in one line:
//! `grpc_suite::metrics::CHAT_MEMBERS_CUT_OFF.inc()`; a live count kept by a
//! [`Gauge`](crate::gauge::Gauge) is exported with [`Gauge::exported`](crate::gauge::Gauge::exported). The families are process-wide statics, as
//! go-grpc-prometheus's are: a process runs one server, and a test that starts several in
//! one process asserts on increases, not absolute values. A family shows in the output
//! from its first use, so each server exports only its own.

use std::{
    convert::Infallible,
    sync::LazyLock,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use prometheus::{
    Encoder as _, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Every metric of the process. Our own rather than the `prometheus` crate's default
/// registry, so a dependency registering there cannot add to or break our output.
static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

/// The registry [`render`] writes out.
pub fn registry() -> &'static Registry {
    &REGISTRY
}

/// Registers `metric` (built from constant names, which [`tests`] checks are valid) in the
/// process registry and returns it.
// Only constants of this file reach the expect below, never a request, a file or the
// network; the workspace's lint is lifted for that one call.
#[allow(clippy::expect_used)]
fn register<M>(metric: prometheus::Result<M>) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    // Names and labels are constants of this file; the test below builds every metric, so
    // a bad one fails there rather than in a server.
    let metric = metric.expect("metric names in grpc_suite::metrics are valid");
    if let Err(error) = REGISTRY.register(Box::new(metric.clone())) {
        tracing::error!(%error, "cannot register a metric");
    }
    metric
}

fn counter(name: &str, help: &str) -> IntCounter {
    register(IntCounter::new(name, help))
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels))
}

fn gauge(name: &str, help: &str) -> IntGauge {
    register(IntGauge::new(name, help))
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(IntGaugeVec::new(Opts::new(name, help), labels))
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    register(Histogram::with_opts(
        HistogramOpts::new(name, help).buckets(buckets),
    ))
}

// ---- per call: the names go-grpc-prometheus and the grpc-ecosystem dashboards use ----

/// The labels of every per-call family but `grpc_server_handled_total`.
const CALL_LABELS: &[&str] = &["grpc_type", "grpc_service", "grpc_method"];

/// RPCs started on the server.
pub(crate) static GRPC_STARTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "grpc_server_started_total",
        "Total number of RPCs started on the server.",
        CALL_LABELS,
    )
});

/// RPCs completed on the server, by their real status code.
pub(crate) static GRPC_HANDLED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "grpc_server_handled_total",
        "Total number of RPCs completed on the server, regardless of success or failure.",
        &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
    )
});

/// Seconds from a call's request headers to its status.
pub(crate) static GRPC_HANDLING_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(HistogramVec::new(
        HistogramOpts::new(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
        ),
        CALL_LABELS,
    ))
});

/// Request messages read from clients.
pub(crate) static GRPC_MSG_RECEIVED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "grpc_server_msg_received_total",
        "Total number of RPC stream messages received on the server.",
        CALL_LABELS,
    )
});

/// Response messages sent to clients.
pub(crate) static GRPC_MSG_SENT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "grpc_server_msg_sent_total",
        "Total number of gRPC stream messages sent by the server.",
        CALL_LABELS,
    )
});

// ---- streaming: the chat room and uploads ----

/// Chat members connected now.
pub static CHAT_MEMBERS: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("chat_members_connected", "Chat members connected now."));

/// Chat messages delivered to members (one per member a message reached).
pub static CHAT_MESSAGES_FANNED_OUT: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "chat_messages_fanned_out_total",
        "Chat messages queued for members, one per member reached.",
    )
});

/// Chat members disconnected for falling behind.
pub static CHAT_MEMBERS_CUT_OFF: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "chat_members_cut_off_total",
        "Chat members disconnected because they fell too far behind.",
    )
});

/// Uploads being received now, by service (`file`, `streaming`).
pub static UPLOADS_IN_FLIGHT: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "uploads_in_flight",
        "Uploads being received now.",
        &["service"],
    )
});

/// Bytes of uploaded files stored, by service.
pub static UPLOAD_BYTES_STORED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "upload_stored_bytes_total",
        "Bytes of uploaded files stored.",
        &["service"],
    )
});

// ---- random ----

/// Random number streams open now.
pub static RANDOM_STREAMS_OPEN: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("random_streams_open", "Random number streams open now."));

// ---- logger ----

/// Rows per commit of the logger's writer.
pub static LOGGER_COMMIT_BATCH_ROWS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "logger_commit_batch_rows",
        "Log rows written per commit.",
        vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
    )
});

/// Seconds per commit of the logger's writer.
pub static LOGGER_COMMIT_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "logger_commit_seconds",
        "Time per commit of the log store, in seconds.",
        prometheus::exponential_buckets(0.0005, 2.0, 14).unwrap_or_default(),
    )
});

/// Log rows stored.
pub static LOGGER_ROWS_STORED: LazyLock<IntCounter> =
    LazyLock::new(|| counter("logger_rows_stored_total", "Log rows stored."));

/// Followers (`FollowLogs` streams) connected now.
pub static LOGGER_FOLLOWERS: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("logger_followers", "Clients following the log stream now."));

// ---- auth ----

/// Logins by outcome (`success`, `bad_credentials`, ...).
pub static AUTH_LOGINS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "auth_logins_total",
        "Login attempts by outcome.",
        &["outcome"],
    )
});

/// Sessions live now.
pub static AUTH_SESSIONS_LIVE: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("auth_sessions_live", "Sessions live now."));

/// Audit events waiting in the outbox for the logger.
pub static AUTH_OUTBOX_BACKLOG: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "auth_outbox_backlog",
        "Audit events waiting in the outbox to be delivered to the logger.",
    )
});

/// Age of the oldest undelivered audit event, 0 when none waits.
pub static AUTH_OUTBOX_OLDEST_AGE_SECONDS: LazyLock<Gauge> = LazyLock::new(|| {
    register(Gauge::new(
        "auth_outbox_oldest_age_seconds",
        "Age in seconds of the oldest undelivered audit event; 0 when none waits.",
    ))
});

/// Keeps a gauge one higher for its own lifetime, so the count cannot drift when the work
/// between entering and leaving returns early with an error or its task is dropped.
#[derive(Debug)]
#[must_use = "the gauge falls back when this is dropped"]
pub struct Live(IntGauge);

impl Live {
    /// Raises `gauge` by one until the guard is dropped.
    pub fn enter(gauge: IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Everything in the registry, in the Prometheus text format (version 0.0.4).
pub fn render() -> String {
    let mut text = Vec::new();
    if let Err(error) = TextEncoder::new().encode(&REGISTRY.gather(), &mut text) {
        tracing::error!(%error, "cannot encode the metrics");
    }
    String::from_utf8(text).unwrap_or_default()
}

/// How long a scraper may take to send its request head: a client that connects and says
/// nothing must not hold a connection task.
const SCRAPE_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` as plain HTTP/1.1 on `listener` until `shutdown` is cancelled,
/// then stops accepting and ends every open scrape connection; returns once they are gone.
/// Any other path is 404. Errors of one connection are logged and never stop the endpoint,
/// and nothing here shares a task or a socket with gRPC.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    match listener.local_addr() {
        Ok(local_addr) => tracing::info!(%local_addr, "serving metrics at /metrics"),
        Err(error) => tracing::warn!(%error, "serving metrics at /metrics, address unknown"),
    }
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(%error, "metrics endpoint cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(SCRAPE_HEADER_TIMEOUT)
                .serve_connection(
                    hyper_util::rt::TokioIo::new(stream),
                    hyper::service::service_fn(answer),
                );
            tokio::select! {
                // Dropping the connection closes it: a scrape in progress is cut short,
                // which a scraper retries at its next interval.
                () = shutdown.cancelled() => {}
                result = connection => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "metrics connection failed");
                    }
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// The answer to one HTTP request of the metrics endpoint.
async fn answer(
    request: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<http_body_util::Full<bytes::Bytes>>, Infallible> {
    let started = Instant::now();
    let (status, content_type, body) =
        if request.method() == http::Method::GET && request.uri().path() == "/metrics" {
            (
                http::StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                render(),
            )
        } else {
            (
                http::StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found: metrics are at GET /metrics\n".to_owned(),
            )
        };
    let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    tracing::debug!(path = request.uri().path(), elapsed = ?started.elapsed(), "metrics scrape");
    Ok(response)
}

/// Binds the metrics endpoint's address (`--metrics-addr`).
pub async fn bind(address: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the metrics address {address}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family builds and registers (valid names), and the output is the text format.
    #[test]
    fn every_metric_registers_and_renders() {
        GRPC_STARTED.with_label_values(&["unary", "t.T", "M"]).inc();
        GRPC_HANDLED
            .with_label_values(&["unary", "t.T", "M", "OK"])
            .inc();
        GRPC_HANDLING_SECONDS
            .with_label_values(&["unary", "t.T", "M"])
            .observe(0.1);
        GRPC_MSG_RECEIVED
            .with_label_values(&["unary", "t.T", "M"])
            .inc();
        GRPC_MSG_SENT
            .with_label_values(&["unary", "t.T", "M"])
            .inc();
        CHAT_MEMBERS.set(1);
        CHAT_MESSAGES_FANNED_OUT.inc();
        CHAT_MEMBERS_CUT_OFF.inc();
        UPLOADS_IN_FLIGHT.with_label_values(&["file"]).inc();
        UPLOAD_BYTES_STORED.with_label_values(&["file"]).inc_by(3);
        RANDOM_STREAMS_OPEN.inc();
        LOGGER_COMMIT_BATCH_ROWS.observe(3.0);
        drop(LOGGER_COMMIT_SECONDS.start_timer());
        LOGGER_ROWS_STORED.inc();
        let _follower = Live::enter(LOGGER_FOLLOWERS.clone());
        AUTH_LOGINS.with_label_values(&["success"]).inc();
        AUTH_SESSIONS_LIVE.inc();
        AUTH_OUTBOX_BACKLOG.set(2);
        AUTH_OUTBOX_OLDEST_AGE_SECONDS.set(1.5);
        let text = render();
        assert!(
            text.contains("# TYPE grpc_server_handled_total counter"),
            "{text}"
        );
        assert!(text.contains("chat_members_connected 1"), "{text}");
        assert!(text.contains("logger_commit_seconds_bucket"), "{text}");
    }

    /// The value of the sample `series` (name and labels as the text format writes them).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    /// GET `path` from `address` over plain HTTP/1.1; the status line and the body.
    async fn http_get(address: std::net::SocketAddr, path: &str) -> (String, String) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .expect("response");
        let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
        let status = head.lines().next().unwrap_or_default().to_owned();
        (status, body.to_owned())
    }

    /// After some calls, a running server's /metrics counts a refused call under its real
    /// code, counts stream messages, passes `promtool check metrics`, and stops with the
    /// server.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scraped_metrics_count_calls_and_pass_promtool() {
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        const TEST_TIMEOUT: Duration = Duration::from_secs(20);
        let not_found = GRPC_HANDLED.with_label_values(&[
            "unary",
            "grpc.health.v1.Health",
            "Check",
            "NOT_FOUND",
        ]);
        let not_found_before = not_found.get();
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind gRPC");
        let grpc_address = grpc.local_addr().expect("address");
        let metrics = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind metrics");
        let metrics_address = metrics.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        let listener = crate::server::Listener::from(grpc).with_metrics(Some(metrics));
        let server =
            tokio::spawn(crate::server::GrpcServer::new().serve(listener, shutdown.clone()));

        let calls = async {
            let channel = crate::cli::connect(&format!("http://{grpc_address}"))
                .await
                .expect("connect");
            let mut health = HealthClient::new(channel);
            let served = HealthCheckRequest {
                service: String::new(),
            };
            health
                .check(served.clone())
                .await
                .expect("the server is serving");
            let unknown = HealthCheckRequest {
                service: "no.Such".to_owned(),
            };
            let refused = health.check(unknown).await.expect_err("no such service");
            assert_eq!(refused.code(), tonic::Code::NotFound);
            // A server stream: one message, then the client goes away.
            let mut watch = health.watch(served).await.expect("watch").into_inner();
            watch
                .message()
                .await
                .expect("a status")
                .expect("one message");
            drop(watch);
        };
        tokio::time::timeout(TEST_TIMEOUT, calls)
            .await
            .expect("calls in time");

        let (status, text) =
            tokio::time::timeout(TEST_TIMEOUT, http_get(metrics_address, "/metrics"))
                .await
                .expect("scraped in time");
        assert!(status.contains("200"), "{status}");
        let refused = sample(
            &text,
            r#"grpc_server_handled_total{grpc_code="NOT_FOUND",grpc_method="Check",grpc_service="grpc.health.v1.Health",grpc_type="unary"}"#,
        )
        .expect("a handled_total series for Check");
        assert!(refused >= (not_found_before + 1) as f64, "{text}");
        let watched = sample(
            &text,
            r#"grpc_server_msg_sent_total{grpc_method="Watch",grpc_service="grpc.health.v1.Health",grpc_type="server_stream"}"#,
        )
        .expect("a msg_sent series for Watch");
        assert!(watched >= 1.0, "{text}");
        let (missing, _) = http_get(metrics_address, "/other").await;
        assert!(missing.contains("404"), "{missing}");

        match std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                eprintln!(
                    "skipping promtool check: promtool is not installed (apt-get install prometheus; .ci/run does)"
                );
            }
            Err(error) => panic!("cannot run promtool: {error}"),
            Ok(mut promtool) => {
                use std::io::Write as _;
                promtool
                    .stdin
                    .take()
                    .expect("piped stdin")
                    .write_all(text.as_bytes())
                    .expect("metrics written to promtool");
                let output = promtool.wait_with_output().expect("promtool ran");
                assert!(
                    output.status.success(),
                    "promtool check metrics failed:\n{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }

        shutdown.cancel();
        tokio::time::timeout(TEST_TIMEOUT, server)
            .await
            .expect("stopped in time")
            .expect("server task")
            .expect("clean stop");
        assert!(
            tokio::net::TcpStream::connect(metrics_address)
                .await
                .is_err(),
            "the metrics endpoint stops with the server"
        );
    }
}
