//! `logger_client`: logs an event, queries the newest ones, or follows the log live.

use std::process::ExitCode;

use clap::Parser;
use grpc_suite::args::ClientArgs;
use logger_service::client::Command;

/// Calls the logger service: log an event, query the newest ones, or follow the log live.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    connection: ClientArgs,
    /// Present the token in this file (a logger started with --write-token-file or
    /// --read-token-file needs it).
    #[arg(
        long,
        env = "LOGGER_SERVICE_TOKEN_FILE",
        global = true,
        value_name = "PATH"
    )]
    token_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Subcommand,
}

/// One call to the logger service.
#[derive(Debug, clap::Subcommand)]
enum Subcommand {
    /// Records one event.
    Log {
        /// The event's type, e.g. SESSION_STARTED (1 to 64 characters).
        #[arg(long = "type", value_name = "TYPE")]
        event_type: String,
        /// Free text (up to 64 KiB).
        #[arg(long)]
        details: String,
        /// When it happened, "YYYY-MM-DD HH:MM:SS.mmm" (default: when the server stores it).
        #[arg(long)]
        timestamp: Option<String>,
        /// An id of your choosing; sending the same id again stores nothing new.
        #[arg(long)]
        event_id: Option<String>,
    },
    /// Prints the newest events as a table, newest first.
    Query {
        /// How many rows (default: the server's, 20; capped by the server).
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
        limit: Option<i32>,
        /// Only events of exactly this type.
        #[arg(long = "type", value_name = "TYPE")]
        event_type: Option<String>,
    },
    /// Prints the newest events, then each new one as it is stored, until Ctrl+C or the
    /// server ends the stream.
    Follow {
        /// Only events of exactly this type.
        #[arg(long = "type", value_name = "TYPE")]
        event_type: Option<String>,
        /// How many of the newest events to print first.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..))]
        backlog: i32,
    },
}

impl From<Subcommand> for Command {
    fn from(subcommand: Subcommand) -> Self {
        match subcommand {
            Subcommand::Log {
                event_type,
                details,
                timestamp,
                event_id,
            } => Self::Log {
                event_type,
                details,
                timestamp,
                event_id,
            },
            Subcommand::Query { limit, event_type } => Self::Query { limit, event_type },
            Subcommand::Follow {
                event_type,
                backlog,
            } => Self::Follow {
                event_type,
                backlog,
            },
        }
    }
}

#[tokio::main]
pub(crate) async fn main() -> ExitCode {
    grpc_suite::cli::init_tracing("warn");
    let args = grpc_suite::args::parse(logger_service::SERVICE);
    // Ctrl+C is how a user stops `follow`: a normal end, exit 0, not a signal death.
    let result = tokio::select! {
        result = run(args) => result,
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    grpc_suite::cli::exit_code(result)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let channel = match &args.token_file {
        Some(path) => {
            let token = grpc_suite::cli::read_token_file(path)?;
            args.connection.connect_with_token(&token).await?
        }
        None => args.connection.connect_with_deadline().await?,
    };
    let command = Command::from(args.command);
    logger_service::client::run(channel, command, &mut std::io::stdout().lock()).await
}

#[cfg(test)]
mod tests {
    /// The flag definitions are consistent (clap checks names, defaults, env vars).
    #[test]
    fn args_are_well_formed() {
        grpc_suite::args::command::<super::Args>(logger_service::SERVICE).debug_assert();
    }
}
