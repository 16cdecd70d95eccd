//! `random_client`: asks the random number service for a stream and prints it as a table.
//! Flags left out are asked for with the old script's prompts.

use std::{
    io::{self, IsTerminal as _},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::Parser;
use grpc_suite::args::ClientArgs;
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

#[tokio::main]
pub(crate) async fn main() -> ExitCode {
    grpc_suite::cli::init_tracing("warn");
    grpc_suite::cli::exit_code(run(grpc_suite::args::parse(random_service::SERVICE)).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let given = Choices {
        min: args.min,
        max: args.max,
        count: args.count,
        delay: args.delay,
    };
    client::check_given(given).map_err(anyhow::Error::msg)?;
    // Reach the server before asking anything: finding it down after four answers makes
    // the user start again.
    let channel = args.connection.connect_with_deadline().await?;
    let mut interrupt = std::pin::pin!(ctrl_c());
    let request = tokio::select! {
        answers = ask(given) => answers?,
        () = &mut interrupt => return terminated(None),
    };
    let Some(request) = request else {
        // End of input before every answer: the user is done.
        return Ok(());
    };
    let summary =
        client::print_stream(channel, request, &mut io::stdout().lock(), interrupt).await?;
    if summary.ending == Ending::Interrupted {
        return terminated(Some(summary.received));
    }
    Ok(())
}

/// Asks for the fields the flags left out. The terminal is read on a plain thread, not
/// tokio's blocking pool: at Ctrl+C the read is still waiting, and a detached thread does
/// not hold up the process's exit.
async fn ask(given: Choices) -> anyhow::Result<Option<grpc_suite::random::RandomNumberRequest>> {
    let (answer, answered) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let request =
            client::complete_request(given, &mut io::stdin().lock(), &mut io::stdout().lock());
        let _ = answer.send(request);
    });
    answered
        .await
        .context("asking for the request")?
        .context("reading the answers")
}

/// The old script's farewell at Ctrl+C, on a line of its own (the terminal shows `^C`
/// where the cursor was), with how many numbers came when the stream had started.
fn terminated(received: Option<u64>) -> anyhow::Result<()> {
    if io::stderr().is_terminal() {
        eprintln!();
    }
    match received {
        Some(received) => eprintln!("{} ({received} numbers received)", client::TERMINATED),
        None => eprintln!("{}", client::TERMINATED),
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
        grpc_suite::args::command::<super::Args>(random_service::SERVICE).debug_assert();
    }
}
