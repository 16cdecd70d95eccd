//! `file_server`: the file service (see the `file_service` library).

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Parser;
use grpc_suite::args::{ServerArgs, Service, SessionArgs};

/// Serves the file service: greetings, server time, file writes and listing.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    sessions: SessionArgs,
    /// Folder that receives written files (created if missing).
    #[arg(long, env = "FILE_SERVICE_DIR", default_value = "uploaded_files")]
    dir: PathBuf,
    /// Largest file content accepted, in bytes.
    #[arg(long, env = "FILE_SERVICE_MAX_FILE_SIZE", default_value_t = file_service::DEFAULT_MAX_FILE_SIZE)]
    max_file_size: usize,
}

const SERVICE: Service = Service {
    env_prefix: "FILE_SERVICE",
    default_port: file_service::DEFAULT_PORT,
};

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = grpc_suite::args::parse(SERVICE);
    grpc_suite::cli::init_tracing_with("info", args.server.log_format);
    grpc_suite::cli::exit_code(run(args).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.server.health_check {
        return args.server.probe_health().await;
    }
    let config = file_service::Config {
        upload_dir: args.dir,
        max_file_size: args.max_file_size,
    };
    let storage = file_service::open_storage(&config)
        .with_context(|| format!("opening the upload folder {}", config.upload_dir.display()))?;
    let guard = args.sessions.guard()?;
    let listener = args
        .server
        .bind_announced("File Service")
        .await?
        .with_session_guard(guard);
    println!("Files will be stored in: {}", storage.absolute().display());
    let shutdown = grpc_suite::server::shutdown_on_signals();
    file_service::serve(listener, storage, &config, shutdown).await
}

#[cfg(test)]
mod tests {
    /// The flag definitions are consistent (clap checks names, defaults, env vars).
    #[test]
    fn args_are_well_formed() {
        grpc_suite::args::command::<super::Args>(super::SERVICE).debug_assert();
    }
}
