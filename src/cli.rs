//! What every binary's `main` shares: the tracing subscriber, turning a result into an exit
//! code with one readable line, connecting to a server, and describing a refused call.

use std::{io, process::ExitCode, time::Duration};

use anyhow::Context as _;
use tonic::{
    Code, Status,
    transport::{Channel, Endpoint},
};

use crate::tls::ClientTls;

/// How long a client waits for the TCP/HTTP2 connection before saying the server is down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a client waits for the answer to a call by default (`--timeout`): far above
/// any answer a working server gives, short enough that a hung server is noticed.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Installs the `tracing` subscriber for a binary: human-readable lines on stderr, filtered
/// by `RUST_LOG` (default `info` for servers, `warn` for clients, via `default_filter`).
pub fn init_tracing(default_filter: &str) {
    init_tracing_with(default_filter, LogFormat::Text);
}

/// How a server writes its log lines (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// [`init_tracing`] in the given format. Colour codes only when stderr is a terminal: piped
/// output and container logs get plain text.
pub fn init_tracing_with(default_filter: &str, format: LogFormat) {
    install_subscriber(default_filter, format, io::stderr);
}

/// Keeps a server's log writer thread running; dropping it writes out every line still
/// waiting (for at most a second) and stops the thread. Hold it until the server has
/// stopped.
#[must_use = "dropping the guard stops the log writer"]
#[derive(Debug)]
pub struct LogGuard {
    _writer: Option<crate::log_writer::LogWriterGuard>,
}

/// [`init_tracing_with`] for servers: the lines are formatted on the calling thread and
/// written to stderr in batches by a thread of their own ([`crate::log_writer`]), so a
/// call that logs never waits on stderr, and if stderr stops taking lines, later ones are
/// dropped (and counted) rather than slowing calls or piling up. The returned guard writes
/// what is waiting when dropped: keep it until the end of `main`. If the thread cannot be
/// started, lines go straight to stderr.
pub fn init_server_tracing(default_filter: &str, format: LogFormat) -> LogGuard {
    let (writer, guard) = match crate::log_writer::spawn("log-output", io::stderr(), "stderr") {
        Ok(started) => started,
        Err(error) => {
            install_subscriber(default_filter, format, io::stderr);
            tracing::warn!(%error, "no log writer thread: logging straight to stderr");
            return LogGuard { _writer: None };
        }
    };
    if install_subscriber(default_filter, format, writer) {
        LogGuard {
            _writer: Some(guard),
        }
    } else {
        // Tracing was already set up (tests running a server twice): that writer stays.
        LogGuard { _writer: None }
    }
}

/// Installs the subscriber writing to `writer`; false if one was already installed (a
/// second call, e.g. tests calling a binary's `run` twice, keeps the first).
fn install_subscriber<W>(default_filter: &str, format: LogFormat, writer: W) -> bool
where
    W: for<'writer> tracing_subscriber::fmt::MakeWriter<'writer> + Send + Sync + 'static,
{
    use std::io::IsTerminal as _;
    use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let (targets, env_filter) = log_filter(default_filter);
    let ansi = io::stderr().is_terminal();
    let (text, json) = match format {
        LogFormat::Text => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_ansi(ansi),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(writer)
                    .with_ansi(ansi),
            ),
        ),
    };
    tracing_subscriber::registry()
        .with(targets)
        .with(env_filter)
        .with(text)
        .with(json)
        .try_init()
        .is_ok()
}

/// The filter `RUST_LOG` asks for (`default_filter` when it is unset or invalid). Plain
/// `target=level` lists, which is what people write, become a
/// [`Targets`](tracing_subscriber::filter::Targets) filter, decided once per call site;
/// only directives that select spans or field values (`[span{field=value}]`) need
/// `EnvFilter`, which consults a shared table each time any span is entered or left, a
/// cost every call of a busy server pays several times over (measured: about 0.5 µs of
/// a SayHello's 14 µs of server CPU).
fn log_filter(default_filter: &str) -> (Option<Targets>, Option<tracing_subscriber::EnvFilter>) {
    log_filter_from(std::env::var("RUST_LOG").ok().as_deref(), default_filter)
}

type Targets = tracing_subscriber::filter::Targets;

/// [`log_filter`] for the directives `requested` (the value of `RUST_LOG`, if set).
fn log_filter_from(
    requested: Option<&str>,
    default_filter: &str,
) -> (Option<Targets>, Option<tracing_subscriber::EnvFilter>) {
    // EnvFilter's parser is the judge of what is valid (it is the stricter one); an
    // invalid RUST_LOG gives the default, as it always has.
    let requested = requested
        .filter(|directives| !directives.trim().is_empty())
        .and_then(|directives| {
            let filter = tracing_subscriber::EnvFilter::try_new(directives).ok()?;
            Some((directives, filter))
        });
    if let Some((directives, filter)) = requested {
        return match directives.parse::<Targets>() {
            // As EnvFilter: targets the list does not name still log their errors.
            Ok(targets) => match targets.default_level() {
                Some(_) => (Some(targets), None),
                None => (
                    Some(targets.with_default(tracing::level_filters::LevelFilter::ERROR)),
                    None,
                ),
            },
            Err(_) => (None, Some(filter)),
        };
    }
    match default_filter.parse() {
        Ok(targets) => (Some(targets), None),
        Err(_) => (
            None,
            Some(tracing_subscriber::EnvFilter::new(default_filter)),
        ),
    }
}

/// Turns a binary's result into its exit code: success is 0; an error is printed once as
/// `error: <cause chain>` on stderr and exits 1. A closed stdout (`client | head`) is not an
/// error worth a message, so a broken pipe exits 0, as command-line tools do.
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io_error| io_error.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Connects to `url` (e.g. `http://localhost:50051`; `https://` trusts the system's
/// roots), failing within a few seconds with a message that names the address when nothing
/// answers there.
pub async fn connect(url: &str) -> anyhow::Result<Channel> {
    connect_with(url, &ClientTls::default()).await
}

/// [`connect`] with TLS settings: a private CA, a client certificate.
pub async fn connect_with(url: &str, tls: &ClientTls) -> anyhow::Result<Channel> {
    connect_with_deadline(url, tls, None).await
}

/// [`connect_with`], and every call on the channel fails with "did not answer within the
/// deadline" unless the server answers (sends its response headers) within `deadline`, so
/// a hung server gives one clear line instead of a hang. Servers send the headers of a
/// server stream at once, so it does not cut follow/time streams; it would cut a client
/// stream (an upload) that lasts longer, whose answer comes at its end.
pub async fn connect_with_deadline(
    url: &str,
    tls: &ClientTls,
    deadline: Option<Duration>,
) -> anyhow::Result<Channel> {
    let endpoint = configure_endpoint(crate::tls::endpoint(url, tls)?, deadline);
    let host = endpoint.uri().host().unwrap_or_default().to_owned();
    endpoint
        .connect()
        .await
        .map_err(|error| connect_error(url, &host, tls, &error))
}

/// The settings every client endpoint of the suite uses, and `deadline` on every call.
fn configure_endpoint(endpoint: Endpoint, deadline: Option<Duration>) -> Endpoint {
    let mut endpoint = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        // A long stream (follow, chat, time) to a server that vanished without a FIN would
        // otherwise wait for ever: PINGs find out within interval + timeout. Only while a
        // call is open, so idle clients cost the server nothing.
        .http2_keep_alive_interval(crate::server::DEFAULT_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(crate::server::DEFAULT_KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(false);
    if let Some(deadline) = deadline {
        endpoint = endpoint.timeout(deadline);
    }
    endpoint
}

/// Connects to `servers`: one URL as [`connect_with_deadline`] does, or several
/// (comma-separated), or a name with several DNS records (Swarm's `tasks.<service>`), over
/// which the calls are spread, retrying on another replica where that is safe (see
/// [`crate::balance`]). One address, or a name with one record, is today's single
/// connection, made at once so that a server that is down is reported here.
pub async fn connect_spread(
    servers: &str,
    tls: &ClientTls,
    deadline: Option<Duration>,
) -> anyhow::Result<Connection> {
    let configure: crate::balance::Configure =
        std::sync::Arc::new(move |endpoint| configure_endpoint(endpoint, deadline));
    let parts = crate::balance::split(servers);
    if let [url] = parts.as_slice()
        && crate::balance::is_single_address(url)
    {
        return Ok(connect_with_deadline(url, tls, deadline).await?.into());
    }
    let spread = crate::balance::Spread::new(
        servers,
        tls,
        configure,
        crate::balance::system_resolver(),
        crate::balance::REFRESH_INTERVAL,
    )
    .await?;
    match spread.replica_urls().as_slice() {
        // A name with one record: as before, one connection, made now.
        [url] if parts.len() == 1 && url == parts[0] => {
            Ok(connect_with_deadline(url, tls, deadline).await?.into())
        }
        _ => Ok(Connection::spread(spread)),
    }
}

/// A connection over the replicas of `servers` made without waiting (nothing is dialled
/// until the first call): for servers' own clients (the session guard's auth service), which
/// start whether or not their peer is up. Names are resolved in the background.
pub fn connect_lazy_spread(
    servers: &str,
    tls: &ClientTls,
    connect_timeout: Duration,
) -> anyhow::Result<Connection> {
    let configure: crate::balance::Configure =
        std::sync::Arc::new(move |endpoint: Endpoint| endpoint.connect_timeout(connect_timeout));
    if crate::balance::is_single_address(servers) {
        let url = crate::balance::split(servers).concat();
        return Ok(configure(crate::tls::endpoint(&url, tls)?)
            .connect_lazy()
            .into());
    }
    let spread = crate::balance::Spread::new_lazy(
        servers,
        tls,
        configure,
        crate::balance::system_resolver(),
        crate::balance::REFRESH_INTERVAL,
    )?;
    Ok(Connection::spread(spread))
}

/// One line for a failed connection: a certificate the client could not verify names the
/// host and the trusted CA; a handshake the server refused says so; anything else is the
/// OS's own words.
fn connect_error(
    url: &str,
    host: &str,
    tls: &ClientTls,
    error: &(dyn std::error::Error + 'static),
) -> anyhow::Error {
    let cause = root_cause(error);
    if cause.contains("invalid peer certificate") {
        anyhow::anyhow!(
            "cannot verify the server at {url}: its certificate for {host:?} is not trusted by {} ({cause})",
            tls.trusted()
        )
    } else if answers_in_plaintext(&cause) {
        anyhow::anyhow!(
            "the server at {url} does not speak TLS ({cause}); connect with an http:// URL and no TLS files"
        )
    } else if cause.contains("alert") {
        anyhow::anyhow!(
            "the server at {url} refused the TLS handshake (does it require a client certificate? --tls-cert, --tls-key): {cause}"
        )
    } else {
        anyhow::anyhow!("cannot reach the server at {url}: {cause}")
    }
}

/// A connection to a server that adds this client's credential to every call:
/// `authorization: Bearer <session id>` (`--session`, for servers started with
/// `--auth-url`) or a logger token. Without one it is the plain channel. Client libraries
/// take it wherever they took a `Channel`; a `Channel` converts into one. Made by
/// [`connect_spread`] over several replicas, it spreads the calls over them.
#[derive(Debug, Clone)]
pub struct Connection {
    route: Route,
    authorization: Option<http::HeaderValue>,
}

#[derive(Debug, Clone)]
enum Route {
    /// One server: the channel as it is.
    One(Channel),
    /// Several replicas: each call to the next one, retried where safe.
    Spread(std::sync::Arc<crate::balance::Spread>),
}

impl Connection {
    /// A connection that presents `token` as `authorization: Bearer <token>` on every call.
    pub fn with_bearer(channel: Channel, token: &str) -> anyhow::Result<Self> {
        Self::from(channel).bearer(token)
    }

    /// This connection, presenting `token` as `authorization: Bearer <token>` on every call.
    pub fn bearer(self, token: &str) -> anyhow::Result<Self> {
        let mut value = http::HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| anyhow::anyhow!("a session id or token must be printable ASCII"))?;
        // Kept out of HPACK's table and of any debug output of the header map.
        value.set_sensitive(true);
        Ok(Self {
            route: self.route,
            authorization: Some(value),
        })
    }

    /// A connection spreading its calls over `spread`'s replicas.
    pub fn spread(spread: std::sync::Arc<crate::balance::Spread>) -> Self {
        Self {
            route: Route::Spread(spread),
            authorization: None,
        }
    }
}

impl From<Channel> for Connection {
    fn from(channel: Channel) -> Self {
        Self {
            route: Route::One(channel),
            authorization: None,
        }
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Connection {
    type Response = http::Response<tonic::body::Body>;
    type Error = crate::balance::BoxError;
    type Future = crate::balance::ResponseFuture;

    fn poll_ready(
        &mut self,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        match &mut self.route {
            Route::One(channel) => tower::Service::poll_ready(channel, context).map_err(Into::into),
            // Each call waits for its replica's channel itself.
            Route::Spread(_) => std::task::Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(value) = &self.authorization {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, value.clone());
        }
        match &mut self.route {
            Route::One(channel) => {
                let call = tower::Service::call(channel, request);
                Box::pin(async move { call.await.map_err(Into::into) })
            }
            Route::Spread(spread) => Box::pin(std::sync::Arc::clone(spread).send(request)),
        }
    }
}

/// True when a TLS handshake's cause says the peer answered with something other than TLS
/// records: a plaintext server on the port.
pub(crate) fn answers_in_plaintext(cause: &str) -> bool {
    cause.contains("InvalidContentType")
}

/// The innermost cause, which for a refused connection is the OS's own words.
pub(crate) fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// The `--health-check` mode of every server binary (used by container health checks): asks
/// the plaintext server listening on `listen_addr` (an unspecified address means this host)
/// whether it is SERVING, via `grpc.health.v1`. Ok only for SERVING.
pub async fn probe_health(listen_addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let channel = connect(&format!("http://{}", local_target(listen_addr))).await?;
    check_health(channel).await
}

/// The address a probe dials for a server listening on `listen_addr`: an unspecified
/// address (`[::]`, `0.0.0.0`) means this host.
pub fn local_target(listen_addr: std::net::SocketAddr) -> std::net::SocketAddr {
    let mut target = listen_addr;
    if target.ip().is_unspecified() {
        target.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    target
}

/// Asks the server behind `channel` over `grpc.health.v1`; Ok only for SERVING.
pub async fn check_health(channel: Channel) -> anyhow::Result<()> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let reply = tokio::time::timeout(CONNECT_TIMEOUT, HealthClient::new(channel).check(request))
        .await
        .context("the health check timed out")?
        .map_err(status_error)?;
    let status = reply.into_inner().status();
    anyhow::ensure!(
        status == ServingStatus::Serving,
        "the server reports {}",
        status.as_str_name()
    );
    Ok(())
}

/// Reads a bearer token from a file (surrounding white space ignored): what the auth
/// service and `logger_client` present to a logger started with token files.
pub fn read_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let token = text.trim();
    anyhow::ensure!(
        !token.is_empty(),
        "the token file {} is empty",
        path.display()
    );
    anyhow::ensure!(
        token.bytes().all(|byte| byte.is_ascii_graphic()),
        "the token in {} must be printable ASCII without spaces",
        path.display()
    );
    Ok(token.to_owned())
}

/// The name a client stores a local file under: `--as NAME` when given, else the file's
/// own name (the server keeps only a base name either way).
pub fn upload_name(path: &std::path::Path, store_as: Option<String>) -> anyhow::Result<String> {
    if let Some(name) = store_as {
        return Ok(name);
    }
    let name = path.file_name().and_then(|name| name.to_str());
    let name = name.with_context(|| {
        format!(
            "{} has no usable file name; give one with --as NAME",
            path.display()
        )
    })?;
    Ok(name.to_owned())
}

/// An error for a call the server refused or could not finish, worded for a person:
/// `the server refused the request (INVALID_ARGUMENT): file name is empty`.
pub fn status_error(status: Status) -> anyhow::Error {
    // tonic reports its own client-side deadline as CANCELLED with these words.
    if status.code() == Code::Cancelled && status.message() == "Timeout expired" {
        return anyhow::anyhow!(
            "the server did not answer within the deadline (DEADLINE_EXCEEDED; raise it with --timeout)"
        );
    }
    if let Some(error) = transport_error(&status) {
        return error;
    }
    let message = status.message();
    match status.code() {
        Code::Unavailable => anyhow::anyhow!("the server is unavailable: {message}"),
        Code::DeadlineExceeded => anyhow::anyhow!("the server did not answer in time: {message}"),
        Code::Internal | Code::Unknown | Code::DataLoss => {
            anyhow::anyhow!(
                "the server failed ({}): {message}",
                code_name(status.code())
            )
        }
        code => anyhow::anyhow!(
            "the server refused the request ({}): {message}",
            code_name(code)
        ),
    }
}

/// A status that tonic made up for a connection that failed under the call (the server
/// never answered), worded by what went wrong: a TLS handshake the server refused, or
/// HTTP/2 spoken to a TLS port. None for a status the server sent.
fn transport_error(status: &Status) -> Option<anyhow::Error> {
    let source = std::error::Error::source(status)?;
    let cause = root_cause(source);
    if cause.contains("alert") || cause.contains("certificate") {
        return Some(anyhow::anyhow!(
            "the server refused the TLS handshake (does it require a client certificate? --tls-cert, --tls-key): {cause}"
        ));
    }
    if status.message().contains("h2 protocol error") || cause.contains("frame") {
        return Some(anyhow::anyhow!(
            "the connection failed ({cause}); if the server uses TLS, connect with an https:// URL"
        ));
    }
    // A server that refuses a TLS 1.3 client certificate, or a TLS port spoken to in
    // plaintext, shows the client nothing but a closed connection: name both causes.
    Some(anyhow::anyhow!(
        "the server closed the connection ({cause}); if it uses TLS, connect with an https:// URL, and if it requires a client certificate, pass --tls-cert and --tls-key"
    ))
}

/// The canonical upper-case name of a gRPC code, as grpcurl and the gRPC docs spell it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain level lists become a Targets filter with the levels asked for (unnamed
    /// targets keep their errors, as EnvFilter does); span directives still work through
    /// EnvFilter; an unset, empty or invalid RUST_LOG gives the binary's default.
    #[test]
    fn log_filter_prefers_targets_and_keeps_env_filter_syntax() {
        use tracing::{Level, level_filters::LevelFilter};
        let (targets, env) = log_filter_from(Some("warn,grpc_suite::server=debug"), "info");
        let targets = targets.expect("a Targets filter");
        assert!(env.is_none());
        assert!(targets.would_enable("grpc_suite::server::call_log", &Level::DEBUG));
        assert!(!targets.would_enable("logger_service", &Level::INFO));
        assert!(targets.would_enable("logger_service", &Level::WARN));

        let (targets, _) = log_filter_from(Some("logger_service=debug"), "info");
        let targets = targets.expect("a Targets filter");
        assert_eq!(targets.default_level(), Some(LevelFilter::ERROR));
        assert!(targets.would_enable("h2", &Level::ERROR));

        let (targets, env) = log_filter_from(Some("[call{method=/x}]=debug"), "info");
        assert!(targets.is_none());
        assert!(env.is_some());

        for unset in [None, Some(""), Some("  "), Some("not a [[ filter")] {
            let (targets, env) = log_filter_from(unset, "info");
            let targets = targets.expect("the default as Targets");
            assert!(env.is_none(), "{unset:?}");
            assert_eq!(
                targets.default_level(),
                Some(LevelFilter::INFO),
                "{unset:?}"
            );
        }
    }

    /// A refused call reads as one sentence naming the code and the server's reason.
    #[test]
    fn status_error_names_code_and_reason() {
        let error = status_error(Status::invalid_argument("file name is empty"));
        assert_eq!(
            error.to_string(),
            "the server refused the request (INVALID_ARGUMENT): file name is empty"
        );
    }

    /// `client | head` closing the pipe is a normal end, not a failure.
    #[test]
    fn broken_pipe_exits_zero() {
        let error =
            anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe)).context("printing");
        assert_eq!(exit_code(Err(error)), ExitCode::SUCCESS);
        assert_eq!(exit_code(Err(anyhow::anyhow!("boom"))), ExitCode::FAILURE);
    }

    /// The health probe passes against a serving server and fails against nothing.
    #[tokio::test]
    async fn health_probe_reports_serving() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = tokio_util::sync::CancellationToken::new();
        let server =
            tokio::spawn(crate::server::GrpcServer::new().serve(listener, shutdown.clone()));
        probe_health(addr).await.expect("serving");
        shutdown.cancel();
        server.await.expect("task").expect("clean stop");
        assert!(
            probe_health(addr).await.is_err(),
            "nothing listens after the stop"
        );
    }

    /// Nothing listening gives one line naming the address, not a transport dump.
    #[tokio::test]
    async fn connect_to_nothing_names_the_address() {
        // Bind then drop to get a port that (almost surely) has no listener right now.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let url = format!("http://127.0.0.1:{port}");
        let error = connect(&url).await.expect_err("nothing listens there");
        assert!(
            error
                .to_string()
                .starts_with(&format!("cannot reach the server at {url}: ")),
            "{error}"
        );
    }
}
