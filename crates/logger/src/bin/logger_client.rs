//! `logger_client`: logs an event, queries the newest ones, or follows the log live.

use std::process::ExitCode;

use clap::Parser;
use logger_service::client::Command;

/// Calls the logger service.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The logger server's URL.
    #[arg(
        long,
        env = "LOGGER_SERVICE_URL",
        default_value = "http://localhost:50055"
    )]
    server: String,
    #[command(subcommand)]
    command: Command,
}

#[tokio::main]
async fn main() -> ExitCode {
    grpc_suite::cli::init_tracing("warn");
    let args = Args::parse();
    // Ctrl+C is how a user stops `follow`: a normal end, exit 0, not a signal death.
    let result = tokio::select! {
        result = run(args) => result,
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    grpc_suite::cli::exit_code(result)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let channel = grpc_suite::cli::connect(&args.server).await?;
    logger_service::client::run(channel, args.command, &mut std::io::stdout().lock()).await
}

#[cfg(test)]
mod tests {
    /// The flag definitions are consistent (clap checks names, defaults, env vars).
    #[test]
    fn args_are_well_formed() {
        <super::Args as clap::CommandFactory>::command().debug_assert();
    }
}
