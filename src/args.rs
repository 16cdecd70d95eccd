//! The command-line flags every server and every client of the suite shares, written once.
//!
//! Each binary flattens [`ServerArgs`] or [`ClientArgs`] into its own clap `Parser` and
//! parses with [`parse`], naming its service once in a [`Service`]. That fills in what
//! differs per service (the `FILE_SERVICE_ADDR`-style environment variables and the default
//! port), so a flag added here reaches all five servers or every client at once, with the
//! same name and the same environment fallback rule: flag, then environment, then default.
//!
//! Libraries never see these types: a binary turns them into the library's plain `Config`.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use clap::{CommandFactory, Parser};
use tokio::net::TcpListener;
use tonic::transport::Channel;

use crate::server::Listener;
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
}

/// Flags every client takes to reach its server. `--server` may stand before or after a
/// subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The server: a URL such as http://localhost:50051, or HOST:PORT (plaintext).
    #[arg(long, global = true, value_name = "URL", value_parser = server_url)]
    pub server: String,
    /// Trust this CA (PEM) for an https:// server instead of the system's roots.
    #[arg(long, global = true, value_name = "PEM")]
    pub ca_cert: Option<PathBuf>,
    /// Present this client certificate (PEM) to the server (mutual TLS); needs --tls-key.
    #[arg(long = "tls-cert", id = "client_cert", global = true, value_name = "PEM")]
    pub client_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long = "tls-key", id = "client_key", global = true, value_name = "PEM")]
    pub client_key: Option<PathBuf>,
}

/// Parses the process's arguments into `A`, with the shared flags' environment variables
/// and defaults filled in for `service`. Prints help, version or a usage error and exits
/// the way clap does.
pub fn parse<A: Parser>(service: Service) -> A {
    let matches = command::<A>(service).get_matches();
    A::from_arg_matches(&matches).unwrap_or_else(|error| error.exit())
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
        ("server", "URL"),
        ("ca_cert", "CA_CERT"),
        ("client_cert", "CLIENT_CERT"),
        ("client_key", "CLIENT_KEY"),
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
        println!("{title} started on port {port}");
        Ok(Listener::with_tls(listener, tls))
    }
}

impl ClientArgs {
    /// Connects to `--server`, failing within a few seconds with one line naming the
    /// address when nothing answers there.
    pub async fn connect(&self) -> anyhow::Result<Channel> {
        crate::cli::connect_with(&self.server, &self.tls()?).await
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

/// The first address `host:port` resolves to.
async fn resolve(address: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(address)
        .await
        .with_context(|| format!("resolving {address}"))?
        .next()
        .with_context(|| format!("{address} resolves to no address"))
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
        assert_eq!(server_url("127.0.0.1:9").as_deref(), Ok("http://127.0.0.1:9"));
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
        };
        let listener = args.bind_announced("Test Service").await.expect("binds");
        assert!(listener.local_addr().expect("address").ip().is_loopback());
    }
}
