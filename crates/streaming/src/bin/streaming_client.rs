//! `streaming_client`: calls the streaming service. With no command it runs the old
//! script's three steps: time updates, an upload, the chat.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser;
use streaming_service::client::{Command, FlowOptions, Input, Interrupts, Session};

/// Calls the streaming service; with no command, runs time updates (until Ctrl+C), an
/// upload (asked for at a prompt) and the chat, as the old client did.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The streaming server's URL.
    #[arg(
        long,
        env = "STREAMING_SERVICE_URL",
        default_value = "http://localhost:50053",
        global = true
    )]
    server: String,
    #[command(flatten)]
    flow: FlowOptions,
    #[command(subcommand)]
    command: Option<Command>,
}

#[tokio::main]
async fn main() -> ExitCode {
    grpc_suite::cli::init_tracing("warn");
    grpc_suite::cli::exit_code(run(Args::parse()).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.command.is_none() || args.flow == FlowOptions::default(),
        "--time-updates, --upload and --skip-upload shape the full flow; they cannot be used with a command"
    );
    let channel = grpc_suite::cli::connect(&args.server).await?;
    let mut session = Session::new(
        channel,
        Input::stdin(),
        Interrupts::ctrl_c(),
        std::io::stdout().lock(),
    );
    session.progress = std::io::stderr().is_terminal();
    session.run(args.command, &args.flow).await
}

#[cfg(test)]
mod tests {
    /// The flag definitions are consistent (clap checks names, defaults, env vars).
    #[test]
    fn args_are_well_formed() {
        <super::Args as clap::CommandFactory>::command().debug_assert();
    }
}
