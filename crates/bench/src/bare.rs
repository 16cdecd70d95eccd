//! The hidden `grpc_bench serve bare` side: the bare tonic server that is the reference
//! for what our shared plumbing, our chat room and our uploads cost: SayHello; ChatStream
//! as an echo (memory per client) or over a broadcast channel (fan-out); and with
//! `--upload-dir`, StreamUploadFile as a plain sink that writes the chunks to a file and
//! syncs it once at the end (or never, with `--no-sync`). It has no binary of its own, so
//! grpc_bench re-executes itself to run it: its memory and CPU time are then read from a
//! process of its own, exactly as each real server's are.

use std::{
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    time::Duration,
};

use anyhow::Context as _;
use grpc_suite::tls::{ServerTls, ServerTlsFiles};
use tokio::{net::TcpListener, sync::broadcast};
use tokio_stream::{Stream, StreamExt as _, wrappers::BroadcastStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming, transport::server::TcpIncoming};

/// The file and streaming services generated with tonic's stock codec (build.rs), so the
/// reference pays what plain tonic pays.
mod stock {
    pub mod file {
        tonic::include_proto!("file");
    }
    pub mod streaming {
        tonic::include_proto!("streaming");
    }
}

use stock::{file as pb, streaming};

/// What the bare server's ChatStream and StreamUploadFile do.
#[derive(Debug, Clone, Default)]
pub struct BareOptions {
    /// ChatStream relays every message to every open stream (a broadcast channel, no
    /// names, no limits) instead of echoing it to its sender.
    pub chat_broadcast: bool,
    /// Where StreamUploadFile writes; without it, uploads are refused.
    pub upload_dir: Option<PathBuf>,
    /// Whether the upload sink syncs the file once at the end (same durability as ours).
    pub upload_sync: bool,
}

/// Binds `addr`, prints `Bench bare server started on port N` (the parent reads the port
/// from it, as from every server's startup line), and serves until SIGTERM or Ctrl+C; over
/// TLS when `tls` names a certificate and key (checked before anything listens, as the
/// real servers do).
pub async fn serve_main(
    addr: SocketAddr,
    tls: Option<ServerTlsFiles>,
    options: BareOptions,
) -> anyhow::Result<()> {
    let tls = tls.map(|files| files.load()).transpose()?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let port = listener
        .local_addr()
        .context("reading the bound address")?
        .port();
    println!("Bench bare server started on port {port}");
    let shutdown = grpc_suite::server::shutdown_on_signals();
    serve_bare(listener, tls, options, shutdown).await
}

/// How long the bare server lets calls finish at shutdown; the benchmark has stopped
/// sending by then, so this only bounds a bug.
const BARE_DRAIN: Duration = Duration::from_secs(2);

/// The reference: tonic's Greeter example shape (`Server::builder().add_service(..)`),
/// serving the file service's SayHello, ChatStream and StreamUploadFile as `options`
/// says, nothing else. TCP_NODELAY is
/// on, as tonic's builder sets it by default when it binds the address itself. With `tls`,
/// tonic's own TLS (`tls_config`, rustls), as the real servers use it: the TLS reference.
pub async fn serve_bare(
    listener: TcpListener,
    tls: Option<ServerTls>,
    options: BareOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let signal = shutdown.clone().cancelled_owned();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        builder = builder.tls_config(tls.config()).context("setting up TLS")?;
    }
    let server = builder
        .add_service(pb::file_service_server::FileServiceServer::new(BareGreeter))
        .add_service(
            streaming::streaming_service_server::StreamingServiceServer::new(BareStreaming::new(
                options,
            ))
            // As our streaming server: an upload chunk is up to a few MiB.
            .max_decoding_message_size(UPLOAD_MESSAGE_LIMIT),
        )
        .serve_with_incoming_shutdown(incoming, signal);
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(BARE_DRAIN).await;
    };
    tokio::select! {
        result = server => result.context("serving gRPC"),
        () = deadline => Ok(()),
    }
}

/// SayHello as the file service answers it, without anything around it.
#[derive(Debug, Clone, Copy, Default)]
pub struct BareGreeter;

#[tonic::async_trait]
impl pb::file_service_server::FileService for BareGreeter {
    async fn say_hello(
        &self,
        request: Request<pb::HelloRequest>,
    ) -> Result<Response<pb::HelloResponse>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(pb::HelloResponse {
            message: format!("Hello, {name}!"),
        }))
    }

    async fn say_goodbye(
        &self,
        _request: Request<pb::GoodbyeRequest>,
    ) -> Result<Response<pb::GoodbyeResponse>, Status> {
        Err(Status::unimplemented(
            "the bare reference serves SayHello only",
        ))
    }

    async fn get_server_time(
        &self,
        _request: Request<pb::Empty>,
    ) -> Result<Response<pb::TimeResponse>, Status> {
        Err(Status::unimplemented(
            "the bare reference serves SayHello only",
        ))
    }

    async fn write_file(
        &self,
        _request: Request<pb::FileRequest>,
    ) -> Result<Response<pb::FileResponse>, Status> {
        Err(Status::unimplemented(
            "the bare reference serves SayHello only",
        ))
    }

    async fn get_files_list(
        &self,
        _request: Request<pb::Empty>,
    ) -> Result<Response<pb::FilesListResponse>, Status> {
        Err(Status::unimplemented(
            "the bare reference serves SayHello only",
        ))
    }
}

/// The largest message the bare streaming service decodes: room for 1 MiB upload chunks
/// and more, as our streaming server allows.
const UPLOAD_MESSAGE_LIMIT: usize = 16 << 20;

/// Messages the broadcast room holds for a slow reader; the fan-out keeps at most 128 in
/// flight, so no reader lags this far.
const BROADCAST_CAPACITY: usize = 4096;

/// ChatStream and StreamUploadFile at tonic's floor.
///
/// ChatStream echo (the default): each inbound message is sent straight back to its
/// sender (no room, no broadcast, no task, no queue). The response stream *is* the request
/// stream, so what a connected client costs here is tonic's and hyper's own per-stream
/// state (the request decoder, the response encoder, h2's stream) and, with a connection
/// per client, the connection's. ChatStream broadcast: every message goes to every open
/// stream through one `tokio::sync::broadcast` channel, as the simplest room would.
#[derive(Debug, Clone)]
pub struct BareStreaming {
    room: Option<broadcast::Sender<streaming::ChatMessage>>,
    upload_dir: Option<PathBuf>,
    upload_sync: bool,
}

impl BareStreaming {
    /// The service as `options` set it up.
    pub fn new(options: BareOptions) -> Self {
        Self {
            room: options
                .chat_broadcast
                .then(|| broadcast::channel(BROADCAST_CAPACITY).0),
            upload_dir: options.upload_dir,
            upload_sync: options.upload_sync,
        }
    }
}

/// The bare sink: each chunk written to `dir/<base name>` as it arrives (plain blocking
/// writes in the handler, as the simplest server does), then one sync if `sync`.
async fn sink_upload(
    dir: &Path,
    sync: bool,
    mut chunks: Streaming<streaming::FileChunk>,
) -> Result<u64, Status> {
    let io_error = |error: std::io::Error| Status::internal(error.to_string());
    let mut file: Option<std::fs::File> = None;
    let mut written = 0u64;
    while let Some(chunk) = chunks.message().await? {
        if file.is_none() {
            let name = Path::new(&chunk.filename)
                .file_name()
                .ok_or_else(|| Status::invalid_argument("no file name"))?;
            file = Some(std::fs::File::create(dir.join(name)).map_err(io_error)?);
        }
        if let Some(file) = &mut file {
            file.write_all(&chunk.chunk_data).map_err(io_error)?;
        }
        written += chunk.chunk_data.len() as u64;
        if chunk.is_last_chunk {
            break;
        }
    }
    if sync && let Some(file) = &file {
        file.sync_all().map_err(io_error)?;
    }
    Ok(written)
}

/// A response stream of chat messages, whichever mode produced it.
pub type ChatMessages = Pin<Box<dyn Stream<Item = Result<streaming::ChatMessage, Status>> + Send>>;

#[tonic::async_trait]
impl streaming::streaming_service_server::StreamingService for BareStreaming {
    type StreamServerTimeStream = tokio_stream::Empty<Result<streaming::TimeResponse, Status>>;
    type ChatStreamStream = ChatMessages;

    async fn stream_server_time(
        &self,
        _request: Request<streaming::Empty>,
    ) -> Result<Response<Self::StreamServerTimeStream>, Status> {
        Err(Status::unimplemented(
            "the bare reference serves ChatStream and uploads only",
        ))
    }

    async fn stream_upload_file(
        &self,
        request: Request<Streaming<streaming::FileChunk>>,
    ) -> Result<Response<streaming::FileResponse>, Status> {
        let dir = self
            .upload_dir
            .as_deref()
            .ok_or_else(|| Status::unimplemented("started without --upload-dir"))?;
        let written = sink_upload(dir, self.upload_sync, request.into_inner()).await?;
        Ok(Response::new(streaming::FileResponse {
            success: true,
            bytes_written: written,
            ..Default::default()
        }))
    }

    async fn chat_stream(
        &self,
        request: Request<Streaming<streaming::ChatMessage>>,
    ) -> Result<Response<Self::ChatStreamStream>, Status> {
        let inbound = request.into_inner();
        let Some(room) = &self.room else {
            return Ok(Response::new(Box::pin(inbound)));
        };
        // Subscribed before answering, so a client sees every message sent after its
        // call returned.
        let outbound =
            BroadcastStream::new(room.subscribe()).filter_map(|delivered| delivered.ok().map(Ok));
        let room = room.clone();
        tokio::spawn(async move {
            let mut inbound = inbound;
            while let Ok(Some(message)) = inbound.message().await {
                let _ = room.send(message);
            }
        });
        Ok(Response::new(Box::pin(outbound)))
    }
}
