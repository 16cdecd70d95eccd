//! `streaming_server`: the streaming service (see the `streaming_service`
//! library).

use std::{num::NonZeroUsize, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Parser;
use grpc_suite::args::{ServerArgs, Service, SessionArgs};

/// Serves the streaming service: a time stream, chunked uploads and a chat room.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    sessions: SessionArgs,
    /// Folder that receives uploaded files (created if missing).
    #[arg(long, env = "STREAMING_SERVICE_DIR", default_value = "streamed_files")]
    dir: PathBuf,
    /// Largest upload accepted, in bytes.
    #[arg(long, env = "STREAMING_SERVICE_MAX_UPLOAD_SIZE", default_value_t = streaming_service::DEFAULT_MAX_UPLOAD_SIZE)]
    max_upload_size: u64,
    /// Longest chat message accepted, in bytes.
    #[arg(long, env = "STREAMING_SERVICE_MAX_CHAT_MESSAGE_SIZE", default_value_t = streaming_service::DEFAULT_MAX_CHAT_MESSAGE_SIZE)]
    max_chat_message_size: usize,
    /// Chat messages that may wait for one client before it is cut off (at least 1).
    #[arg(long, env = "STREAMING_SERVICE_CHAT_QUEUE", default_value_t = streaming_service::DEFAULT_CHAT_QUEUE_CAPACITY)]
    chat_queue: NonZeroUsize,
}

const SERVICE: Service = Service {
    env_prefix: "STREAMING_SERVICE",
    default_port: streaming_service::DEFAULT_PORT,
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
    let config = streaming_service::Config {
        upload_dir: args.dir,
        max_upload_size: args.max_upload_size,
        max_chat_message_size: args.max_chat_message_size,
        chat_queue_capacity: args.chat_queue,
    };
    let storage = streaming_service::open_storage(&config)
        .with_context(|| format!("opening the upload folder {}", config.upload_dir.display()))?;
    let guard = args.sessions.guard()?;
    let listener = args
        .server
        .bind_announced("Streaming Service")
        .await?
        .with_session_guard(guard);
    println!("Files will be stored in: {}", storage.absolute().display());
    let shutdown = grpc_suite::server::shutdown_on_signals();
    let service = streaming_service::StreamingService::new(storage, &config);
    streaming_service::serve(listener, service, shutdown).await
}

#[cfg(test)]
mod tests {
    /// The flag definitions are consistent (clap checks names, defaults, env vars).
    #[test]
    fn args_are_well_formed() {
        grpc_suite::args::command::<super::Args>(super::SERVICE).debug_assert();
    }
}
