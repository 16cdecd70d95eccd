//! `file_client`: calls the file service. With no command it runs the old script's demo.

use std::process::ExitCode;

use clap::Parser;
use file_service::client::Command;

/// Calls the file service; with no command, runs the demo the old client ran.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The file server's URL.
    #[arg(
        long,
        env = "FILE_SERVICE_URL",
        default_value = "http://localhost:50051"
    )]
    server: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[tokio::main]
async fn main() -> ExitCode {
    grpc_suite::cli::init_tracing("warn");
    grpc_suite::cli::exit_code(run(Args::parse()).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let channel = grpc_suite::cli::connect(&args.server).await?;
    let command = args.command.unwrap_or(Command::Demo);
    file_service::client::run(channel, command, &mut std::io::stdout().lock()).await
}

#[cfg(test)]
mod tests {
    /// The flag definitions are consistent (clap checks names, defaults, env vars).
    #[test]
    fn args_are_well_formed() {
        <super::Args as clap::CommandFactory>::command().debug_assert();
    }
}
