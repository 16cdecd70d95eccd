//! The FileService handlers: validate, do the work (file system work on the blocking pool),
//! answer in the old servers' words.

use grpc_suite::{
    file as pb,
    server::run_blocking,
    storage::{StorageDir, safe_file_name},
};
use tonic::{Request, Response, Status};

use crate::FileServiceError;

/// The service state: where files go and how large they may be.
#[derive(Debug, Clone)]
pub struct FileService {
    storage: StorageDir,
    max_file_size: usize,
}

impl FileService {
    /// A service storing into `storage`, refusing content over `max_file_size` bytes.
    pub fn new(storage: StorageDir, max_file_size: usize) -> Self {
        Self {
            storage,
            max_file_size,
        }
    }
}

/// Server local time in the contract's format.
fn local_time() -> String {
    chrono::Local::now()
        .format(grpc_suite::wire_time::SERVER_TIME)
        .to_string()
}

#[tonic::async_trait]
impl pb::file_service_server::FileService for FileService {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn say_hello(
        &self,
        request: Request<pb::HelloRequest>,
    ) -> Result<Response<pb::HelloResponse>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(pb::HelloResponse {
            message: format!("Hello, {name}!"),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn say_goodbye(
        &self,
        request: Request<pb::GoodbyeRequest>,
    ) -> Result<Response<pb::GoodbyeResponse>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(pb::GoodbyeResponse {
            message: format!("Goodbye, {name}!"),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn get_server_time(
        &self,
        _request: Request<pb::Empty>,
    ) -> Result<Response<pb::TimeResponse>, Status> {
        Ok(Response::new(pb::TimeResponse {
            timestamp: local_time(),
        }))
    }

    // Fields are skipped: the content must never reach a log, and the name is logged
    // only once it has been checked.
    #[tracing::instrument(level = "debug", skip_all)]
    async fn write_file(
        &self,
        request: Request<pb::FileRequest>,
    ) -> Result<Response<pb::FileResponse>, Status> {
        // Who wrote it, when the server requires sessions (--auth-url); absent when open.
        let writer = request
            .extensions()
            .get::<grpc_suite::session_guard::Caller>()
            .map(|caller| caller.username.clone());
        let pb::FileRequest { filename, content } = request.into_inner();
        let name = safe_file_name(&filename).map_err(FileServiceError::from)?;
        if content.len() > self.max_file_size {
            return Err(FileServiceError::TooLarge {
                size: content.len(),
                limit: self.max_file_size,
            }
            .into());
        }
        let size = content.len();
        let storage = self.storage.clone();
        let target = name.clone();
        let _in_flight = grpc_suite::metrics::Live::enter(
            grpc_suite::metrics::UPLOADS_IN_FLIGHT.with_label_values(&["file"]),
        );
        run_blocking(move || storage.write_atomic(&target, &content))
            .await?
            .map_err(FileServiceError::from)?;
        grpc_suite::metrics::UPLOAD_BYTES_STORED
            .with_label_values(&["file"])
            .inc_by(size as u64);
        tracing::info!(file = %name, size, writer = %writer.as_deref().unwrap_or("-"), "file written");
        Ok(Response::new(pb::FileResponse {
            success: true,
            message: format!("File {name} written successfully"),
            file_path: self.storage.shown_path(&name),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn get_files_list(
        &self,
        _request: Request<pb::Empty>,
    ) -> Result<Response<pb::FilesListResponse>, Status> {
        let storage = self.storage.clone();
        let filenames = run_blocking(move || storage.list())
            .await?
            .map_err(FileServiceError::from)?;
        Ok(Response::new(pb::FilesListResponse { filenames }))
    }
}
