//! `random_server`: the random number service (see the `random_service` library).

use std::process::ExitCode;

use clap::Parser;
use grpc_suite::args::{ServerArgs, SessionArgs};

/// Serves the random number service: streams of uniformly drawn numbers.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    sessions: SessionArgs,
    /// Most numbers one request may ask for.
    #[arg(long, env = "RANDOM_SERVICE_MAX_COUNT", default_value_t = random_service::DEFAULT_MAX_COUNT)]
    max_count: u32,
    /// Longest delay between numbers one request may ask for, in milliseconds.
    #[arg(long, env = "RANDOM_SERVICE_MAX_DELAY_MS", default_value_t = random_service::DEFAULT_MAX_DELAY_MS)]
    max_delay_ms: u32,
}

pub(crate) fn main() -> ExitCode {
    grpc_suite::args::server_main(random_service::SERVICE, |args: &Args| &args.server, run)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = random_service::Config {
        max_count: args.max_count,
        max_delay_ms: args.max_delay_ms,
    };
    // The old script's two lines, word for word.
    let listener = args
        .server
        .bind_guarded("Random Number Server", &args.sessions)
        .await?;
    println!("Waiting for client requests...");
    let shutdown = grpc_suite::server::shutdown_on_signals();
    random_service::serve(listener, &config, shutdown).await
}

#[cfg(test)]
mod tests {
    /// The flag definitions are consistent (clap checks names, defaults, env vars).
    #[test]
    fn args_are_well_formed() {
        grpc_suite::args::command::<super::Args>(random_service::SERVICE).debug_assert();
    }
}
