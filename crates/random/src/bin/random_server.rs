//! `random_server`: the random number service on port 50052 (see the `random_service` library).

use std::{net::SocketAddr, process::ExitCode};

use clap::Parser;

/// Serves the random number service: streams of uniformly drawn numbers.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "RANDOM_SERVICE_ADDR", default_value = "[::]:50052")]
    addr: SocketAddr,
    /// Most numbers one request may ask for.
    #[arg(long, env = "RANDOM_SERVICE_MAX_COUNT", default_value_t = random_service::DEFAULT_MAX_COUNT)]
    max_count: u32,
    /// Longest delay between numbers one request may ask for, in milliseconds.
    #[arg(long, env = "RANDOM_SERVICE_MAX_DELAY_MS", default_value_t = random_service::DEFAULT_MAX_DELAY_MS)]
    max_delay_ms: u32,
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
    let config = random_service::Config {
        max_count: args.max_count,
        max_delay_ms: args.max_delay_ms,
    };
    let listener = grpc_suite::cli::bind_announced(args.addr, "Random Number Service").await?;
    let shutdown = grpc_suite::server::shutdown_on_signals();
    random_service::serve(listener, &config, shutdown).await
}

#[cfg(test)]
mod tests {
    /// The flag definitions are consistent (clap checks names, defaults, env vars).
    #[test]
    fn args_are_well_formed() {
        <super::Args as clap::CommandFactory>::command().debug_assert();
    }
}
