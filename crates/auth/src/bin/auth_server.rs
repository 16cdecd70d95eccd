//! `auth_server`: the auth service on port 50054 (see the `auth_service` library).
//! `auth_server --hash-password` turns a password on stdin into a users-file hash.

use std::{io::BufRead, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use auth_service::Credentials;
use clap::Parser;

/// Serves the auth service: logins, logouts, sessions, audit events to the logger.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "AUTH_SERVICE_ADDR", default_value = "[::]:50054")]
    addr: SocketAddr,
    /// Users file: one `name:<argon2id PHC hash>` a line. Without it, only the demo
    /// account user1/pass123 exists.
    #[arg(long, env = "AUTH_SERVICE_USERS")]
    users: Option<PathBuf>,
    /// Session lifetime in seconds.
    #[arg(long, env = "AUTH_SERVICE_SESSION_TTL_SECS", default_value_t = auth_service::DEFAULT_SESSION_TTL.as_secs())]
    session_ttl_secs: u64,
    /// Folder for the audit outbox file.
    #[arg(long, env = "AUTH_SERVICE_DATA_DIR", default_value = "logs_data")]
    data_dir: PathBuf,
    /// The logger service that receives audit events.
    #[arg(
        long,
        env = "AUTH_SERVICE_LOGGER_ADDR",
        default_value = "http://localhost:50055"
    )]
    logger_addr: String,
    /// Read a password from standard input, print its argon2id hash for a users file, exit.
    #[arg(long)]
    hash_password: bool,
    /// Ask the server at --addr whether it is serving (exit 0) or not (exit 1), then exit.
    #[arg(long)]
    health_check: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    grpc_suite::cli::init_tracing("info");
    grpc_suite::cli::exit_code(run(Args::parse()).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.hash_password {
        return print_hash();
    }
    if args.health_check {
        return grpc_suite::cli::probe_health(args.addr).await;
    }
    let credentials = match &args.users {
        Some(path) => Credentials::load(path)?,
        None => {
            tracing::warn!(
                "NO USERS FILE: serving only the demo account user1 / pass123. Use --users FILE in production."
            );
            eprintln!(
                "WARNING: no --users file given; only the demo account user1 / pass123 can log in."
            );
            Credentials::demo()
                .map_err(|error| anyhow::anyhow!("hashing the demo password: {error}"))?
        }
    };
    let config = auth_service::Config {
        session_ttl: Duration::from_secs(args.session_ttl_secs),
        data_dir: args.data_dir,
        logger_url: args.logger_addr,
    };
    let listener = grpc_suite::cli::bind_announced(args.addr, "Auth Service").await?;
    println!("Audit events go to the logger at {}", config.logger_url);
    let shutdown = grpc_suite::server::shutdown_on_signals();
    auth_service::serve(listener, credentials, &config, shutdown).await
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
        <super::Args as clap::CommandFactory>::command().debug_assert();
    }
}
