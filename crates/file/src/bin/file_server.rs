//! `file_server`: the file service on port 50051 (see the `file_service` library).

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Parser;

/// Serves the file service: greetings, server time, file writes and listing.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "FILE_SERVICE_ADDR", default_value = "[::]:50051")]
    addr: SocketAddr,
    /// Folder that receives written files (created if missing).
    #[arg(long, env = "FILE_SERVICE_DIR", default_value = "uploaded_files")]
    dir: PathBuf,
    /// Largest file content accepted, in bytes.
    #[arg(long, env = "FILE_SERVICE_MAX_FILE_SIZE", default_value_t = file_service::DEFAULT_MAX_FILE_SIZE)]
    max_file_size: usize,
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
    let config = file_service::Config {
        upload_dir: args.dir,
        max_file_size: args.max_file_size,
    };
    let storage = file_service::open_storage(&config)
        .with_context(|| format!("opening the upload folder {}", config.upload_dir.display()))?;
    let listener = grpc_suite::cli::bind_announced(args.addr, "File Service").await?;
    println!("Files will be stored in: {}", storage.absolute().display());
    let shutdown = grpc_suite::server::shutdown_on_signals();
    file_service::serve(listener, storage, &config, shutdown).await
}

#[cfg(test)]
mod tests {
    /// The flag definitions are consistent (clap checks names, defaults, env vars).
    #[test]
    fn args_are_well_formed() {
        <super::Args as clap::CommandFactory>::command().debug_assert();
    }
}
