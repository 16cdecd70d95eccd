//! `logger_server`: the logger service on port 50055 (see the `logger_service` library).

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Parser;

/// Serves the logger service: stores events in SQLite, answers queries, streams new events.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "LOGGER_SERVICE_ADDR", default_value = "[::]:50055")]
    addr: SocketAddr,
    /// The SQLite database file (it and its folder are created if missing).
    #[arg(long, env = "LOGGER_SERVICE_DB", default_value = logger_service::DEFAULT_DB)]
    db: PathBuf,
    /// The most rows one query (or one follow backlog) returns.
    #[arg(
        long,
        env = "LOGGER_SERVICE_MAX_QUERY_LIMIT",
        default_value_t = logger_service::DEFAULT_MAX_QUERY_LIMIT,
        value_parser = clap::value_parser!(u32).range(1..),
    )]
    max_query_limit: u32,
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
    if args.health_check {
        return grpc_suite::cli::probe_health(args.addr).await;
    }
    let config = logger_service::Config {
        db_path: args.db,
        max_query_limit: args.max_query_limit,
        echo: true,
    };
    let store = logger_service::open_store(&config)
        .with_context(|| format!("opening the database {}", config.db_path.display()))?;
    let listener = grpc_suite::cli::bind_announced(args.addr, "Logger Service").await?;
    let shown = std::fs::canonicalize(&config.db_path).unwrap_or_else(|_| config.db_path.clone());
    println!("Logs stored in: {}", shown.display());
    let shutdown = grpc_suite::server::shutdown_on_signals();
    logger_service::serve(listener, store, &config, shutdown).await
}

#[cfg(test)]
mod tests {
    /// The flag definitions are consistent (clap checks names, defaults, env vars).
    #[test]
    fn args_are_well_formed() {
        <super::Args as clap::CommandFactory>::command().debug_assert();
    }
}
