//! `file_client`: calls the file service. With no command it runs the old script's demo.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use file_service::client::Command;
use grpc_suite::args::ClientArgs;

/// Calls the file service; with no command, runs the demo the old client ran.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    connection: ClientArgs,
    #[command(subcommand)]
    command: Option<Subcommand>,
}

/// One call to the file service.
#[derive(Debug, clap::Subcommand)]
enum Subcommand {
    /// Prints the server's greeting for NAME.
    Hello {
        /// Who to greet.
        name: String,
    },
    /// Prints the server's farewell for NAME.
    Goodbye {
        /// Who to bid farewell.
        name: String,
    },
    /// Prints the server's local time.
    Time,
    /// Uploads a local file (PATH `-` reads standard input; then --as is required).
    Write {
        /// The local file to send, or `-` for standard input.
        path: PathBuf,
        /// The name to store it under (default: the file name of PATH).
        #[arg(long = "as", value_name = "NAME")]
        store_as: Option<String>,
    },
    /// Lists the files stored on the server, one per line.
    List,
    /// Runs the old script's demo (the default with no command).
    Demo,
}

impl From<Subcommand> for Command {
    fn from(subcommand: Subcommand) -> Self {
        match subcommand {
            Subcommand::Hello { name } => Self::Hello { name },
            Subcommand::Goodbye { name } => Self::Goodbye { name },
            Subcommand::Time => Self::Time,
            Subcommand::Write { path, store_as } => Self::Write { path, store_as },
            Subcommand::List => Self::List,
            Subcommand::Demo => Self::Demo,
        }
    }
}

#[tokio::main]
pub(crate) async fn main() -> ExitCode {
    grpc_suite::cli::init_tracing("warn");
    grpc_suite::cli::exit_code(run(grpc_suite::args::parse(file_service::SERVICE)).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let channel = args.connection.connect_with_deadline().await?;
    let command = args.command.map_or(Command::Demo, Command::from);
    file_service::client::run(channel, command, &mut std::io::stdout().lock()).await
}

#[cfg(test)]
mod tests {
    /// The flag definitions are consistent (clap checks names, defaults, env vars).
    #[test]
    fn args_are_well_formed() {
        grpc_suite::args::command::<super::Args>(file_service::SERVICE).debug_assert();
    }
}
