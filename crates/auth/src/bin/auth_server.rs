//! `auth_server`: the auth service (see the `auth_service` library).
//! `auth_server --hash-password` turns a password on stdin into a users-file hash.

use std::{io::BufRead, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use auth_service::Credentials;
use clap::Parser;
use grpc_suite::args::ServerArgs;

/// Serves the auth service: logins, logouts, sessions, audit events to the logger.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
    /// Users file: one `name:<argon2id PHC hash>` a line. Without it, only the demo
    /// account user1/pass123 exists.
    #[arg(long, env = "AUTH_SERVICE_USERS")]
    users: Option<PathBuf>,
    /// Session lifetime in seconds (at most ten years).
    #[arg(
        long,
        env = "AUTH_SERVICE_SESSION_TTL_SECS",
        default_value_t = auth_service::DEFAULT_SESSION_TTL.as_secs(),
        value_parser = clap::value_parser!(u64).range(1..=auth_service::MAX_SESSION_TTL.as_secs()),
    )]
    session_ttl_secs: u64,
    /// Folder for the audit outbox file (unused with --sessions-db).
    #[arg(long, env = "AUTH_SERVICE_DATA_DIR", default_value = "logs_data")]
    data_dir: PathBuf,
    /// Keep sessions and the audit outbox in this PostgreSQL database
    /// (postgres://user[:password]@host[:port]/dbname), shared by every auth server given
    /// the same URL: a session made on one is valid on all. Default: this process.
    #[arg(long, env = "AUTH_SERVICE_SESSIONS_DB", value_name = "URL", value_parser = postgres_url)]
    sessions_db: Option<String>,
    /// The logger service that receives audit events: a URL, or HOST:PORT (plaintext).
    /// Several replicas: comma-separated URLs, or a name with several DNS records
    /// (tasks.logger); deliveries are spread over them.
    #[arg(
        long,
        env = "AUTH_SERVICE_LOGGER_ADDR",
        value_name = "URL[,URL...]",
        default_value_t = format!("http://localhost:{}", grpc_suite::logger::DEFAULT_PORT),
        value_parser = grpc_suite::args::server_urls,
    )]
    logger_addr: String,
    /// Trust this CA (PEM) for an https:// logger instead of the system's roots.
    #[arg(long, env = "AUTH_SERVICE_LOGGER_CA_CERT", value_name = "PEM")]
    logger_ca_cert: Option<PathBuf>,
    /// Present this client certificate (PEM) to the logger (mutual TLS); needs
    /// --logger-tls-key.
    #[arg(
        long,
        env = "AUTH_SERVICE_LOGGER_TLS_CERT",
        value_name = "PEM",
        requires = "logger_tls_key"
    )]
    logger_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --logger-tls-cert.
    #[arg(
        long,
        env = "AUTH_SERVICE_LOGGER_TLS_KEY",
        value_name = "PEM",
        requires = "logger_tls_cert"
    )]
    logger_tls_key: Option<PathBuf>,
    /// Present the token in this file to the logger (its --write-token-file).
    #[arg(long, env = "AUTH_SERVICE_LOGGER_TOKEN_FILE", value_name = "PATH")]
    logger_token_file: Option<PathBuf>,
    /// Failed logins of one user from one address, within the window, before that pair is
    /// refused (RESOURCE_EXHAUSTED, no password check) until the window passes.
    #[arg(long, env = "AUTH_SERVICE_LOGIN_FAILURES_PER_USER", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    login_failures_per_user: u32,
    /// Failed logins from one address, any users, within the window, before that address
    /// is refused until the window passes.
    #[arg(long, env = "AUTH_SERVICE_LOGIN_FAILURES_PER_ADDRESS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    login_failures_per_address: u32,
    /// How long failed logins are counted, and how long a throttle lasts, in seconds.
    #[arg(long, env = "AUTH_SERVICE_LOGIN_THROTTLE_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    login_throttle_secs: u64,
    /// Read a password from standard input, print its argon2id hash for a users file, exit.
    #[arg(long)]
    hash_password: bool,
}

pub(crate) fn main() -> ExitCode {
    grpc_suite::args::server_main(auth_service::SERVICE, |args: &Args| &args.server, run)
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.hash_password {
        return print_hash();
    }
    let credentials = match &args.users {
        Some(path) => Credentials::load(path)?,
        None => {
            tracing::warn!(
                "NO USERS FILE: serving only the demo account user1 / pass123. Use --users FILE in production."
            );
            Credentials::demo()
                .map_err(|error| anyhow::anyhow!("hashing the demo password: {error}"))?
        }
    };
    let config = auth_service::Config {
        session_ttl: Duration::from_secs(args.session_ttl_secs),
        data_dir: args.data_dir,
        logger_url: args.logger_addr,
        logger_tls: grpc_suite::tls::ClientTlsFiles {
            ca_cert: args.logger_ca_cert,
            cert: args.logger_tls_cert,
            key: args.logger_tls_key,
        }
        .load()
        .context("the logger's TLS files")?,
        throttle: auth_service::throttle::ThrottleConfig {
            failures_per_user: args.login_failures_per_user,
            failures_per_address: args.login_failures_per_address,
            window: Duration::from_secs(args.login_throttle_secs),
        },
        logger_token: args
            .logger_token_file
            .as_deref()
            .map(grpc_suite::cli::read_token_file)
            .transpose()?,
        sessions_db: args.sessions_db,
    };
    let listener = args.server.bind_announced("Auth Service").await?;
    println!("Audit events go to the logger at {}", config.logger_url);
    let shutdown = grpc_suite::server::shutdown_on_signals();
    auth_service::serve(listener, credentials, &config, shutdown).await
}

/// Accepts only a postgres:// or postgresql:// URL.
fn postgres_url(value: &str) -> Result<String, String> {
    if grpc_suite::postgres::is_url(value) {
        Ok(value.to_owned())
    } else {
        Err("expected a postgres://user@host:port/dbname URL".to_owned())
    }
}

fn print_hash() -> anyhow::Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(!password.is_empty(), "no password on standard input");
    let hash = auth_service::credentials::hash_password(password)
        .map_err(|error| anyhow::anyhow!("hashing: {error}"))?;
    println!("{hash}");
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The flag definitions are consistent (clap checks names, defaults, env vars).
    #[test]
    fn args_are_well_formed() {
        grpc_suite::args::command::<super::Args>(auth_service::SERVICE).debug_assert();
    }

    /// A session lifetime that would overflow the clock is refused when flags are parsed.
    #[test]
    fn absurd_session_lifetime_is_refused() {
        let parse =
            |ttl: &str| {
                grpc_suite::args::command::<super::Args>(auth_service::SERVICE)
                    .try_get_matches_from(["auth_server", "--session-ttl-secs", ttl])
            };
        assert!(parse("3600").is_ok());
        let error = parse("18446744073709551615").expect_err("refused");
        assert_eq!(error.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(parse("0").is_err(), "a session must last some time");
    }
}
