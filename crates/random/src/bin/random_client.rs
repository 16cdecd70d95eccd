//! `random_client`: asks the random number service for a stream and prints it as a table.
//! Flags left out are asked for with the old script's prompts.

use std::{io, process::ExitCode};

use anyhow::Context as _;
use clap::Parser;
use grpc_suite::args::{ClientArgs, Service};
use random_service::client::{self, Choices, Ending};

/// Streams random numbers from the random number service and prints them as a table.
/// Any of --min, --max, --count, --delay left out is asked for on standard input.
#[derive(Debug, Parser)]
#[command(version, allow_negative_numbers = true)]
struct Args {
    #[command(flatten)]
    connection: ClientArgs,
    /// Smallest number that may be drawn.
    #[arg(long)]
    min: Option<i32>,
    /// Largest number that may be drawn.
    #[arg(long)]
    max: Option<i32>,
    /// How many numbers to draw.
    #[arg(long)]
    count: Option<i32>,
    /// Milliseconds between numbers.
    #[arg(long)]
    delay: Option<i32>,
}

const SERVICE: Service = Service {
    env_prefix: "RANDOM_SERVICE",
    default_port: random_service::DEFAULT_PORT,
};

#[tokio::main]
async fn main() -> ExitCode {
    grpc_suite::cli::init_tracing("warn");
    grpc_suite::cli::exit_code(run(grpc_suite::args::parse(SERVICE)).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let given = Choices {
        min: args.min,
        max: args.max,
        count: args.count,
        delay: args.delay,
    };
    // Reading the terminal blocks, so it runs off the async executor.
    let request = tokio::task::spawn_blocking(move || {
        client::complete_request(given, &mut io::stdin().lock(), &mut io::stdout().lock())
    })
    .await
    .context("asking for the request")?
    .context("reading the answers")?;
    let Some(request) = request else {
        // End of input before every answer: the user is done.
        return Ok(());
    };
    let channel = args.connection.connect().await?;
    let summary =
        client::print_stream(channel, request, &mut io::stdout().lock(), ctrl_c()).await?;
    if summary.ending == Ending::Interrupted {
        eprintln!(
            "Client terminated by user ({} numbers received)",
            summary.received
        );
    }
    Ok(())
}

/// Resolves at Ctrl+C. If the handler cannot be installed the stream simply runs to its end.
async fn ctrl_c() {
    if let Err(error) = tokio::signal::ctrl_c().await {
        tracing::warn!(%error, "cannot listen for Ctrl+C");
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    /// The flag definitions are consistent (clap checks names, defaults, env vars).
    #[test]
    fn args_are_well_formed() {
        grpc_suite::args::command::<super::Args>(super::SERVICE).debug_assert();
    }
}
