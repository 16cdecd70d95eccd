//! The command-line flags every server and every client of the suite shares, written once.
//!
//! Each binary flattens [`ServerArgs`] or [`ClientArgs`] into its own clap `Parser` and
//! parses with [`parse`], naming its service once in a [`Service`]. That fills in what
//! differs per service (the `FILE_SERVICE_ADDR`-style environment variables and the default
//! port), so a flag added here reaches all five servers or every client at once, with the
//! same name and the same environment fallback rule: flag, then environment, then default.
//!
//! Libraries never see these types: a binary turns them into the library's plain `Config`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{CommandFactory, Parser};
use tokio::net::TcpListener;

use crate::cli::Connection;
use crate::server::{self, ConnectionLimits, Listener};
use crate::session_guard::SessionGuard;
use crate::tls::{ClientTls, ClientTlsFiles, ServerTls, ServerTlsFiles};

/// What the shared flags need to know about the service a binary belongs to.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// The prefix of the service's environment variables, e.g. `FILE_SERVICE` for
    /// `FILE_SERVICE_ADDR` (servers) and `FILE_SERVICE_URL` (clients).
    pub env_prefix: &'static str,
    /// The port the service listens on by default (the crate's `DEFAULT_PORT`).
    pub default_port: u16,
}

/// Flags every server takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Address to listen on, HOST:PORT; a host name is resolved (`localhost:50051`).
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: String,
    /// Ask the server at --addr whether it is serving (exit 0) or not (exit 1), then exit.
    #[arg(long)]
    pub health_check: bool,
    /// Serve TLS with this certificate chain (PEM, leaf first); needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Also require client certificates signed by this CA (mutual TLS); needs --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Close a connection that has not sent the HTTP/2 preface within this many seconds.
    #[arg(long, value_name = "SECONDS", value_parser = seconds,
        default_value = seconds_text(server::DEFAULT_HANDSHAKE_TIMEOUT))]
    pub handshake_timeout: Duration,
    /// Send an HTTP/2 PING to each peer this often (seconds; 0 sends none), so a peer that
    /// vanished is dropped within --keepalive-interval + --keepalive-timeout.
    #[arg(long, value_name = "SECONDS", value_parser = seconds,
        default_value = seconds_text(server::DEFAULT_KEEPALIVE_INTERVAL))]
    pub keepalive_interval: Duration,
    /// Close a connection whose peer has not answered a PING within this many seconds.
    #[arg(long, value_name = "SECONDS", value_parser = seconds,
        default_value = seconds_text(server::DEFAULT_KEEPALIVE_TIMEOUT))]
    pub keepalive_timeout: Duration,
    /// Serve at most this many connections at once; further ones are closed on accept.
    #[arg(long, value_name = "N", default_value_t = server::DEFAULT_MAX_CONNECTIONS,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Let one connection run at most this many calls at once.
    #[arg(long, value_name = "N", default_value_t = server::DEFAULT_MAX_STREAMS_PER_CONNECTION,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_connection: u32,
    /// Serve Prometheus metrics at GET /metrics on this address, HOST:PORT (plain HTTP, a
    /// port of its own); off when not given.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// How log lines are written to stderr: text, or one JSON object per line.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = crate::cli::LogFormat::Text)]
    pub log_format: crate::cli::LogFormat,
}

/// Flags of the servers that can require sessions (file, random, streaming): where the
/// auth service is, and how to reach it.
#[derive(Debug, Clone, clap::Args)]
pub struct SessionArgs {
    /// Require a live session on every call (but health and reflection), checked with the
    /// auth service at this URL (or HOST:PORT). Without it the service is open. Several
    /// replicas: comma-separated URLs, or a name with several DNS records (tasks.auth).
    #[arg(long, value_name = "URL[,URL...]", value_parser = server_urls)]
    pub auth_url: Option<String>,
    /// Trust this CA (PEM) for an https:// auth service instead of the system's roots.
    #[arg(long, value_name = "PEM", requires = "auth_url")]
    pub auth_ca_cert: Option<PathBuf>,
    /// Present this client certificate (PEM) to the auth service; needs --auth-tls-key.
    #[arg(long, value_name = "PEM", requires = "auth_tls_key")]
    pub auth_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --auth-tls-cert.
    #[arg(long, value_name = "PEM", requires = "auth_tls_cert")]
    pub auth_tls_key: Option<PathBuf>,
}

impl SessionArgs {
    /// The guard, when `--auth-url` is given; its TLS files are checked here.
    pub fn guard(&self) -> anyhow::Result<Option<SessionGuard>> {
        let Some(url) = &self.auth_url else {
            return Ok(None);
        };
        let tls = ClientTlsFiles {
            ca_cert: self.auth_ca_cert.clone(),
            cert: self.auth_tls_cert.clone(),
            key: self.auth_tls_key.clone(),
        }
        .load()
        .context("the auth service's TLS files")?;
        Ok(Some(SessionGuard::new(url, &tls)?))
    }
}

/// Flags every client takes to reach its server. `--server` may stand before or after a
/// subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The server: a URL such as http://localhost:50051, or HOST:PORT (plaintext). Several,
    /// comma-separated, or a name with several DNS records (Swarm's tasks.<service>): calls
    /// are spread over them, and those safe to repeat retried on another on UNAVAILABLE.
    #[arg(long, global = true, value_name = "URL[,URL...]", value_parser = server_urls)]
    pub server: String,
    /// Trust this CA (PEM) for an https:// server instead of the system's roots.
    #[arg(long, global = true, value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
    /// Present this client certificate (PEM) to the server (mutual TLS); needs --tls-key.
    #[arg(
        long = "tls-cert",
        id = "client_cert",
        global = true,
        value_name = "PEM"
    )]
    pub client_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long = "tls-key", id = "client_key", global = true, value_name = "PEM")]
    pub client_key: Option<PathBuf>,
    /// Send this session (from `auth_client --print-session`) with every call, for servers
    /// started with --auth-url.
    #[arg(
        long,
        env = "SUITE_SESSION",
        global = true,
        value_name = "ID",
        hide_env_values = true
    )]
    pub session: Option<String>,
    /// Give up on a call the server has not answered within this many seconds.
    #[arg(long, global = true, value_name = "SECONDS", value_parser = seconds,
        default_value = seconds_text(crate::cli::DEFAULT_CALL_TIMEOUT))]
    pub timeout: Duration,
}

/// Parses the process's arguments into `A`, with the shared flags' environment variables
/// and defaults filled in for `service`. Prints help, version or a usage error and exits
/// the way clap does.
pub fn parse<A: Parser>(service: Service) -> A {
    let matches = command::<A>(service).get_matches();
    A::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
}

/// The `main` of every server binary: parses `A` for `service`, starts tracing in the
/// format `--log-format` asks for, answers `--health-check` itself, and otherwise runs
/// `serve` with the flags; its result becomes the exit code (one `error:` line and 1 on
/// failure). `server_args` picks the flattened [`ServerArgs`] out of `A`.
pub fn server_main<A, F, Fut>(
    service: Service,
    server_args: fn(&A) -> &ServerArgs,
    serve: F,
) -> ExitCode
where
    A: Parser,
    F: FnOnce(A) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let args: A = parse(service);
    let server = server_args(&args);
    // Held to the end: dropping it writes out the log lines still queued.
    let _log_guard = crate::cli::init_server_tracing("info", server.log_format);
    let probe = server.health_check.then(|| server.clone());
    let result = tokio::runtime::Runtime::new()
        .context("starting the async runtime")
        .and_then(|runtime| {
            runtime.block_on(async move {
                match probe {
                    Some(server) => server.probe_health().await,
                    None => serve(args).await,
                }
            })
        });
    crate::cli::exit_code(result)
}

/// The clap command of `A` with the shared flags filled in for `service`; what [`parse`]
/// uses, exposed so each binary's test can `debug_assert` exactly what users get.
pub fn command<A: CommandFactory>(service: Service) -> clap::Command {
    let prefix = service.env_prefix;
    let port = service.default_port;
    let mut command = A::command();
    // Each shared flag's environment variable, after the service's prefix. Clients and
    // servers use distinct names, so a client run inside a server's container does not
    // pick up the server's key as its own.
    let environment = [
        ("addr", "ADDR"),
        ("tls_cert", "TLS_CERT"),
        ("tls_key", "TLS_KEY"),
        ("tls_client_ca", "TLS_CLIENT_CA"),
        ("auth_url", "AUTH_URL"),
        ("auth_ca_cert", "AUTH_CA_CERT"),
        ("auth_tls_cert", "AUTH_TLS_CERT"),
        ("auth_tls_key", "AUTH_TLS_KEY"),
        ("handshake_timeout", "HANDSHAKE_TIMEOUT"),
        ("keepalive_interval", "KEEPALIVE_INTERVAL"),
        ("keepalive_timeout", "KEEPALIVE_TIMEOUT"),
        ("max_connections", "MAX_CONNECTIONS"),
        ("max_streams_per_connection", "MAX_STREAMS_PER_CONNECTION"),
        ("metrics_addr", "METRICS_ADDR"),
        ("log_format", "LOG_FORMAT"),
        ("server", "URL"),
        ("ca_cert", "CA_CERT"),
        ("client_cert", "CLIENT_CERT"),
        ("client_key", "CLIENT_KEY"),
        ("timeout", "TIMEOUT"),
    ];
    for (id, suffix) in environment {
        if defined(&command, id) {
            command = command.mut_arg(id, |argument| argument.env(format!("{prefix}_{suffix}")));
        }
    }
    if defined(&command, "addr") {
        command = command.mut_arg("addr", |argument| {
            argument
                .default_value(format!("[::]:{port}"))
                // The derive marks a plain `String` required; the default now satisfies it.
                .required(false)
        });
    }
    if defined(&command, "server") {
        command = command.mut_arg("server", |argument| {
            argument
                .default_value(format!("http://localhost:{port}"))
                .required(false)
        });
    }
    command
}

fn defined(command: &clap::Command, id: &str) -> bool {
    command
        .get_arguments()
        .any(|argument| argument.get_id() == id)
}

impl ServerArgs {
    /// The `--health-check` mode: asks the server at `--addr` over `grpc.health.v1`; Ok only
    /// when it reports SERVING.
    pub async fn probe_health(&self) -> anyhow::Result<()> {
        let address = crate::cli::local_target(resolve(&self.addr).await?);
        match self.tls_files() {
            None => crate::cli::probe_health(address).await,
            Some(files) => {
                let channel =
                    crate::tls::probe_channel(address, &files, crate::cli::CONNECT_TIMEOUT).await?;
                crate::cli::check_health(channel).await
            }
        }
    }

    /// The TLS files given, if any.
    pub fn tls_files(&self) -> Option<ServerTlsFiles> {
        Some(ServerTlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }

    /// Loads and checks the TLS files, if any: a missing or unreadable file, a key that
    /// does not match, or an expired certificate is an error here, before anything listens.
    pub fn tls(&self) -> anyhow::Result<Option<ServerTls>> {
        self.tls_files().map(|files| files.load()).transpose()
    }

    /// The per-connection limits the flags ask for.
    pub fn limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            handshake_timeout: self.handshake_timeout,
            keepalive_interval: Some(self.keepalive_interval)
                .filter(|interval| !interval.is_zero()),
            keepalive_timeout: self.keepalive_timeout,
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            max_streams_per_connection: self.max_streams_per_connection,
        }
    }

    /// Loads the TLS files, if any, then binds `--addr` and prints the startup line the old
    /// scripts printed, `<title> started on port <port>` (the real port, so
    /// `--addr 127.0.0.1:0` reports the one the OS picked; tests read it).
    pub async fn bind_announced(&self, title: &str) -> anyhow::Result<Listener> {
        let tls = self.tls()?;
        let listener = TcpListener::bind(self.addr.as_str())
            .await
            .with_context(|| format!("binding {}", self.addr))?;
        let port = listener
            .local_addr()
            .context("reading the bound address")?
            .port();
        let metrics = match &self.metrics_addr {
            Some(address) => Some(crate::metrics::bind(address).await?),
            None => None,
        };
        println!("{title} started on port {port}");
        Ok(Listener::with_tls(listener, tls)
            .with_limits(self.limits())
            .with_metrics(metrics))
    }

    /// [`ServerArgs::bind_announced`] for a server that can require sessions: the guard
    /// (`--auth-url`) is set up first, so a bad TLS file for it stops the server before it
    /// announces anything.
    pub async fn bind_guarded(
        &self,
        title: &str,
        sessions: &SessionArgs,
    ) -> anyhow::Result<Listener> {
        let guard = sessions.guard()?;
        Ok(self.bind_announced(title).await?.with_session_guard(guard))
    }
}

impl ClientArgs {
    /// Connects to `--server`, failing within a few seconds with one line naming the
    /// address when nothing answers there. The calls carry `--session` when given, and no
    /// deadline (an upload's answer comes only after its last chunk).
    pub async fn connect(&self) -> anyhow::Result<Connection> {
        self.dial(None, None).await
    }

    /// [`ClientArgs::connect`], with `--timeout` as the deadline of every call's answer
    /// (see [`crate::cli::connect_with_deadline`]): for clients whose calls are unary or
    /// server streams, not uploads.
    pub async fn connect_with_deadline(&self) -> anyhow::Result<Connection> {
        self.dial(Some(self.timeout), None).await
    }

    /// [`ClientArgs::connect_with_deadline`], presenting `token` (a logger token) instead
    /// of any session.
    pub async fn connect_with_token(&self, token: &str) -> anyhow::Result<Connection> {
        self.dial(Some(self.timeout), Some(token)).await
    }

    async fn dial(
        &self,
        deadline: Option<Duration>,
        token: Option<&str>,
    ) -> anyhow::Result<Connection> {
        let connection = crate::cli::connect_spread(&self.server, &self.tls()?, deadline).await?;
        match token.or(self.session.as_deref()) {
            Some(credential) => connection.bearer(credential.trim()),
            None => Ok(connection),
        }
    }

    /// The TLS files given.
    pub fn tls_files(&self) -> ClientTlsFiles {
        ClientTlsFiles {
            ca_cert: self.ca_cert.clone(),
            cert: self.client_cert.clone(),
            key: self.client_key.clone(),
        }
    }

    /// Loads and checks the TLS files given.
    pub fn tls(&self) -> anyhow::Result<ClientTls> {
        self.tls_files().load()
    }
}

/// Parses a number of seconds, fractions allowed (`0.5`), into a duration.
pub fn seconds(text: &str) -> Result<Duration, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .and_then(|value| Duration::try_from_secs_f64(value).ok())
        .ok_or_else(|| format!("{text:?} is not a number of seconds (e.g. 5 or 0.5)"))
}

/// A duration as [`seconds`] reads it, for a flag's default.
fn seconds_text(duration: Duration) -> clap::builder::OsStr {
    clap::builder::OsStr::from(duration.as_secs_f64().to_string())
}

/// The first address `host:port` resolves to.
async fn resolve(address: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(address)
        .await
        .with_context(|| format!("resolving {address}"))?
        .next()
        .with_context(|| format!("{address} resolves to no address"))
}

/// Accepts a comma-separated list of server URLs, each as [`server_url`] reads it; they
/// are the replicas of one service, so they must share a scheme.
pub fn server_urls(text: &str) -> Result<String, String> {
    let urls = crate::balance::split(text)
        .into_iter()
        .map(server_url)
        .collect::<Result<Vec<_>, _>>()?;
    let Some(first) = urls.first() else {
        return Err(format!("{text:?} names no server (e.g. localhost:50051)"));
    };
    let https = |url: &String| url.starts_with("https://");
    if urls.iter().any(|url| https(url) != https(first)) {
        return Err(format!(
            "{text:?}: the replicas of one service are all http:// or all https://"
        ));
    }
    Ok(urls.join(","))
}

/// Accepts a server URL, or `host:port` without a scheme, which means plaintext HTTP/2 (how
/// the old scripts wrote addresses). Refuses what could not name a server.
pub fn server_url(text: &str) -> Result<String, String> {
    let url = if text.contains("://") {
        text.to_owned()
    } else {
        format!("http://{text}")
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|error| format!("{text:?} is not a server address ({error})"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(format!(
                "{text:?}: the scheme must be http:// or https:// (e.g. http://localhost:50051)"
            ));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{text:?} names no host (e.g. localhost:50051)"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test binary: a server's flags and a client's flags with a subcommand.
    #[derive(Debug, Parser)]
    struct Server {
        #[command(flatten)]
        server: ServerArgs,
    }

    #[derive(Debug, Parser)]
    struct Client {
        #[command(flatten)]
        connection: ClientArgs,
        #[command(subcommand)]
        command: Option<Sub>,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Sub {
        List,
    }

    const SERVICE: Service = Service {
        env_prefix: "ARGS_TEST_SERVICE",
        default_port: 50099,
    };

    fn parse_from<A: Parser>(words: &[&str]) -> Result<A, clap::Error> {
        let matches = command::<A>(SERVICE).try_get_matches_from(words)?;
        A::from_arg_matches(&matches)
    }

    /// The shared flags' definitions are consistent once filled in for a service.
    #[test]
    fn commands_are_well_formed() {
        command::<Server>(SERVICE).debug_assert();
        command::<Client>(SERVICE).debug_assert();
    }

    /// Defaults come from the service's port: all interfaces for servers, localhost for
    /// clients.
    #[test]
    fn defaults_use_the_service_port() {
        let server: Server = parse_from(&["server"]).expect("parses");
        assert_eq!(server.server.addr, "[::]:50099");
        let client: Client = parse_from(&["client"]).expect("parses");
        assert_eq!(client.connection.server, "http://localhost:50099");
    }

    /// `--server` works before and after the subcommand; `host:port` means plaintext.
    #[test]
    fn server_flag_anywhere_and_without_scheme() {
        let before: Client =
            parse_from(&["client", "--server", "localhost:1", "list"]).expect("before");
        assert_eq!(before.connection.server, "http://localhost:1");
        assert!(matches!(before.command, Some(Sub::List)));
        let after: Client =
            parse_from(&["client", "list", "--server", "https://example.test:2"]).expect("after");
        assert_eq!(after.connection.server, "https://example.test:2");
    }

    /// Addresses that cannot name a server are refused when flags are parsed.
    #[test]
    fn bad_server_addresses_are_refused() {
        assert!(server_url("ftp://host:1").is_err());
        assert!(server_url("http://").is_err());
        assert!(server_url("host with space:1").is_err());
        assert_eq!(
            server_url("127.0.0.1:9").as_deref(),
            Ok("http://127.0.0.1:9")
        );
    }

    /// `--server` takes several replicas, comma-separated, each read as one address is.
    #[test]
    fn server_lists() {
        let client: Client =
            parse_from(&["client", "--server", "a:1, http://b:2", "list"]).expect("parses");
        assert_eq!(client.connection.server, "http://a:1,http://b:2");
        assert!(server_urls("a:1,ftp://b:2").is_err());
        assert!(server_urls("http://a:1,https://b:2").is_err());
        assert!(server_urls(" , ").is_err());
    }

    /// A server binds a host name, not only an IP literal, and announces the real port.
    #[tokio::test]
    async fn server_binds_a_host_name() {
        let args = ServerArgs {
            addr: "localhost:0".to_owned(),
            health_check: false,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            handshake_timeout: Duration::from_secs(1),
            keepalive_interval: Duration::ZERO,
            keepalive_timeout: Duration::from_secs(1),
            max_connections: 1,
            max_streams_per_connection: 1,
            metrics_addr: None,
            log_format: crate::cli::LogFormat::Text,
        };
        let listener = args.bind_announced("Test Service").await.expect("binds");
        assert!(listener.local_addr().expect("address").ip().is_loopback());
    }
}
