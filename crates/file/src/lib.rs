//! The file service (port 50051): greetings, the server's time, and small files written
//! atomically into one upload folder.
//!
//! [`serve`] runs it on an already-bound listener until a shutdown token fires, so the
//! `file_server` binary and the tests start it the same way. [`client`] holds what
//! `file_client` does, written against any output so tests can read it.

pub mod client;
mod error;
mod service;

use std::path::PathBuf;

use grpc_suite::{
    file::file_service_server::FileServiceServer,
    server::Listener,
    server::{GZIP, GrpcServer, RequestLimit},
    storage::StorageDir,
};
use tokio_util::sync::CancellationToken;

pub use error::FileServiceError;
pub use service::FileService;

/// The port the old system used, and ours by default.
pub const DEFAULT_PORT: u16 = grpc_suite::file::DEFAULT_PORT;

/// How this service's binaries name their settings: `FILE_SERVICE_*` environment variables
/// (`FILE_SERVICE_ADDR`, `FILE_SERVICE_URL`, …) and [`DEFAULT_PORT`].
pub const SERVICE: grpc_suite::args::Service = grpc_suite::args::Service {
    env_prefix: "FILE_SERVICE",
    default_port: DEFAULT_PORT,
};

/// The largest WriteFile content accepted by default: 64 MiB.
pub const DEFAULT_MAX_FILE_SIZE: usize = 64 * 1024 * 1024;

/// Room in a WriteFile message for everything but the content (the name, framing).
const MESSAGE_OVERHEAD: usize = 64 * 1024;

/// What the server needs to know, as plain values (the binary builds it from flags).
#[derive(Debug, Clone)]
pub struct Config {
    /// Where WriteFile stores files; created at start.
    pub upload_dir: PathBuf,
    /// The largest content WriteFile accepts, in bytes.
    pub max_file_size: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            upload_dir: PathBuf::from("uploaded_files"),
            max_file_size: DEFAULT_MAX_FILE_SIZE,
        }
    }
}

/// Opens the upload folder (creating it), for the caller to report before serving, and
/// removes the unfinished files an earlier run of this server left there (logging how many).
pub fn open_storage(config: &Config) -> std::io::Result<StorageDir> {
    StorageDir::open_for_server(&config.upload_dir, "file")
}

/// Serves the file service, with health and reflection, until `shutdown` is cancelled.
pub async fn serve(
    listener: impl Into<Listener>,
    storage: StorageDir,
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let service = FileService::new(storage, config.max_file_size);
    // Past tonic's 4 MiB default, so that content up to the configured limit decodes and
    // the handler can answer anything larger with a status that names the limit.
    let decode_limit = config.max_file_size.saturating_add(MESSAGE_OVERHEAD);
    GrpcServer::new()
        .request_limit(RequestLimit {
            what: "a file's content",
            bytes: config.max_file_size as u64,
        })
        .add_service(
            FileServiceServer::new(service)
                .max_decoding_message_size(decode_limit)
                .accept_compressed(GZIP)
                .send_compressed(GZIP),
        )
        .serve(listener, shutdown)
        .await
}
