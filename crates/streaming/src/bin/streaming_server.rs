//! `streaming_server`: the streaming service (see the `streaming_service`
//! library).

use std::{num::NonZeroUsize, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Parser;
use grpc_suite::{
    args::{ServerArgs, SessionArgs},
    size::Size,
};

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
    /// Largest upload accepted (bytes, or with a unit: 512MiB, 8GiB).
    #[arg(long, env = "STREAMING_SERVICE_MAX_UPLOAD_SIZE", value_name = "SIZE",
          default_value_t = Size(streaming_service::DEFAULT_MAX_UPLOAD_SIZE))]
    max_upload_size: Size,
    /// Longest chat message accepted (bytes, or with a unit: 64KiB); a longer one is
    /// refused to its sender alone.
    #[arg(long, env = "STREAMING_SERVICE_MAX_CHAT_MESSAGE_SIZE", value_name = "SIZE",
          default_value_t = Size(streaming_service::DEFAULT_MAX_CHAT_MESSAGE_SIZE as u64))]
    max_chat_message_size: Size,
    /// Chat messages that may wait for one client before it is cut off (at least 1).
    #[arg(long, env = "STREAMING_SERVICE_CHAT_QUEUE", default_value_t = streaming_service::DEFAULT_CHAT_QUEUE_CAPACITY)]
    chat_queue: NonZeroUsize,
    /// Bytes of chat messages that may wait for one client before it is cut off (bytes,
    /// or with a unit: 4MiB).
    #[arg(long, env = "STREAMING_SERVICE_CHAT_BACKLOG", value_name = "SIZE",
          default_value_t = Size(streaming_service::DEFAULT_CHAT_BACKLOG_BYTES as u64))]
    chat_backlog: Size,
    /// Chat messages a newcomer is shown from before it joined (0: none).
    #[arg(long, env = "STREAMING_SERVICE_CHAT_HISTORY", value_name = "N",
          default_value_t = streaming_service::DEFAULT_CHAT_HISTORY)]
    chat_history: usize,
    /// Share the chat room with every streaming_server on this NATS server (JetStream
    /// enabled), e.g. nats://nats:4222: one room, one order, unique Client(N) across
    /// replicas. Without it the room is in this process.
    #[arg(long, env = "STREAMING_SERVICE_CHAT_BUS", value_name = "URL")]
    chat_bus: Option<String>,
}

pub(crate) fn main() -> ExitCode {
    grpc_suite::args::server_main(streaming_service::SERVICE, |args: &Args| &args.server, run)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = streaming_service::Config {
        upload_dir: args.dir,
        max_upload_size: args.max_upload_size.bytes(),
        max_chat_message_size: usize::try_from(args.max_chat_message_size.bytes())
            .context("--max-chat-message-size is too large")?,
        chat_queue_capacity: args.chat_queue,
        chat_backlog_bytes: usize::try_from(args.chat_backlog.bytes())
            .context("--chat-backlog is too large")?,
        chat_history: args.chat_history,
    };
    let storage = streaming_service::open_storage(&config)
        .with_context(|| format!("opening the upload folder {}", config.upload_dir.display()))?;
    // Before listening, so an unusable address stops the server before it says it started
    // (an unreachable NATS does not: the bus keeps trying and the chat waits for it).
    let bus = match &args.chat_bus {
        None => None,
        Some(url) => {
            let bus = streaming_service::chat::nats::Bus::connect(url).await?;
            tracing::info!(%url, replica = bus.replica(), "chat room shared through NATS");
            Some(bus)
        }
    };
    let listener = args
        .server
        .bind_guarded("Streaming Service", &args.sessions)
        .await?;
    // The old script's words (tests compare them with the seed README).
    println!(
        "Streamed files will be stored in: {}",
        storage.absolute().display()
    );
    let shutdown = grpc_suite::server::shutdown_on_signals();
    let service = match bus {
        None => streaming_service::StreamingService::new(storage, &config),
        Some(bus) => streaming_service::StreamingService::with_chat_bus(storage, &config, bus),
    };
    streaming_service::serve(listener, service, shutdown).await
}

#[cfg(test)]
mod tests {
    /// The flag definitions are consistent (clap checks names, defaults, env vars).
    #[test]
    fn args_are_well_formed() {
        grpc_suite::args::command::<super::Args>(streaming_service::SERVICE).debug_assert();
    }
}
