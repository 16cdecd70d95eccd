//! `file_server`: the file service (see the `file_service` library).

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Parser;
use grpc_suite::{
    args::{ServerArgs, SessionArgs},
    size::Size,
};

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
    /// Largest file content accepted: bytes, or a size such as 64MiB.
    #[arg(long, env = "FILE_SERVICE_MAX_FILE_SIZE", value_name = "SIZE",
          default_value_t = Size(file_service::DEFAULT_MAX_FILE_SIZE as u64))]
    max_file_size: Size,
}

pub(crate) fn main() -> ExitCode {
    grpc_suite::args::server_main(file_service::SERVICE, |args: &Args| &args.server, run)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = file_service::Config {
        upload_dir: args.dir,
        max_file_size: usize::try_from(args.max_file_size.bytes())
            .context("--max-file-size is larger than this machine can address")?,
    };
    let storage = file_service::open_storage(&config)
        .with_context(|| format!("opening the upload folder {}", config.upload_dir.display()))?;
    let listener = args
        .server
        .bind_guarded("File Service", &args.sessions)
        .await?;
    println!("Files will be stored in: {}", storage.absolute().display());
    let shutdown = grpc_suite::server::shutdown_on_signals();
    file_service::serve(listener, storage, &config, shutdown).await
}

#[cfg(test)]
mod tests {
    /// The flag definitions are consistent (clap checks names, defaults, env vars).
    #[test]
    fn args_are_well_formed() {
        grpc_suite::args::command::<super::Args>(file_service::SERVICE).debug_assert();
    }
}
