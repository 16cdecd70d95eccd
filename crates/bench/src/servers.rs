//! The hidden `grpc_bench serve <kind>` side: one server, run in this process through its
//! crate's library exactly as its own binary runs it, so the benchmark can start it as a
//! child process and read its memory from /proc. Also the bare tonic server (SayHello and a
//! ChatStream echo) that is the reference for what our shared plumbing and our chat room
//! cost.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use grpc_suite::{file as pb, streaming};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming, transport::server::TcpIncoming};

/// Which server `grpc_bench serve` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServerKind {
    /// The file service (`file_service::serve`).
    File,
    /// The random number service (`random_service::serve`).
    Random,
    /// The streaming service (`streaming_service::serve`).
    Streaming,
    /// The logger service (`logger_service::serve`).
    Logger,
    /// The auth service (`auth_service::serve`); needs `--logger-url`.
    Auth,
    /// A bare tonic server answering `file.FileService/SayHello` and echoing
    /// `streaming.StreamingService/ChatStream`, with no health, reflection, tracing or
    /// layers: the reference the file service and the chat room are compared with.
    Bare,
}

impl ServerKind {
    /// The name used on the command line and in log file names.
    pub fn name(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Random => "random",
            Self::Streaming => "streaming",
            Self::Logger => "logger",
            Self::Auth => "auth",
            Self::Bare => "bare",
        }
    }

    /// Whether this server installs a tracing subscriber the way its own binary does. The
    /// bare reference installs none: being plain is its whole point.
    pub fn traces(self) -> bool {
        self != Self::Bare
    }
}

/// Where a served server keeps its data, and what it talks to.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The server's own folder (uploads, databases, outbox); created if missing.
    pub data_dir: PathBuf,
    /// The logger the auth service delivers audit events to.
    pub logger_url: Option<String>,
    /// The auth service's users file (`name:<argon2 PHC hash>` lines).
    pub users: Option<PathBuf>,
}

/// Binds `addr`, prints `Bench <kind> server started on port N` (the parent reads the port
/// from it), and serves until SIGTERM or Ctrl+C.
pub async fn serve_main(
    kind: ServerKind,
    addr: SocketAddr,
    options: ServeOptions,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&options.data_dir)
        .with_context(|| format!("creating {}", options.data_dir.display()))?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let port = listener
        .local_addr()
        .context("reading the bound address")?
        .port();
    println!("Bench {} server started on port {port}", kind.name());
    let shutdown = grpc_suite::server::shutdown_on_signals();
    serve(kind, listener, &options, shutdown).await
}

/// Serves one server on an already-bound listener until `shutdown` is cancelled, set up
/// as that server's own binary sets it up (the logger echoes rows to stdout, as
/// `logger_server` does), with its data under `options.data_dir`.
pub async fn serve(
    kind: ServerKind,
    listener: TcpListener,
    options: &ServeOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let data_dir = &options.data_dir;
    match kind {
        ServerKind::File => {
            let config = file_service::Config {
                upload_dir: data_dir.join("uploaded_files"),
                ..file_service::Config::default()
            };
            let storage =
                file_service::open_storage(&config).context("opening the upload folder")?;
            file_service::serve(listener, storage, &config, shutdown).await
        }
        ServerKind::Random => {
            let config = random_service::Config::default();
            random_service::serve(listener, &config, shutdown).await
        }
        ServerKind::Streaming => {
            let config = streaming_service::Config {
                upload_dir: data_dir.join("streamed_files"),
                ..streaming_service::Config::default()
            };
            let storage =
                streaming_service::open_storage(&config).context("opening the upload folder")?;
            let service = streaming_service::StreamingService::new(storage, &config);
            streaming_service::serve(listener, service, shutdown).await
        }
        ServerKind::Logger => {
            let config = logger_service::Config {
                db_path: data_dir.join("logs.db"),
                echo: true,
                ..logger_service::Config::default()
            };
            let store = logger_service::open_store(&config).context("opening the database")?;
            logger_service::serve(listener, store, &config, shutdown).await
        }
        ServerKind::Auth => {
            let users = options
                .users
                .as_ref()
                .context("the auth server needs --users")?;
            let credentials = auth_service::Credentials::load(users)?;
            let config = auth_service::Config {
                session_ttl: auth_service::DEFAULT_SESSION_TTL,
                data_dir: data_dir.clone(),
                logger_url: options
                    .logger_url
                    .clone()
                    .context("the auth server needs --logger-url")?,
            };
            auth_service::serve(listener, credentials, &config, shutdown).await
        }
        ServerKind::Bare => serve_bare(listener, shutdown).await,
    }
}

/// How long the bare server lets calls finish at shutdown; the benchmark has stopped
/// sending by then, so this only bounds a bug.
const BARE_DRAIN: Duration = Duration::from_secs(2);

/// The reference: tonic's Greeter example shape (`Server::builder().add_service(..)`),
/// serving the file service's SayHello and a ChatStream echo, nothing else. TCP_NODELAY is
/// on, as tonic's builder sets it by default when it binds the address itself.
pub async fn serve_bare(listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let signal = shutdown.clone().cancelled_owned();
    let server = tonic::transport::Server::builder()
        .add_service(pb::file_service_server::FileServiceServer::new(BareGreeter))
        .add_service(streaming::streaming_service_server::StreamingServiceServer::new(BareChat))
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

/// ChatStream at tonic's floor: each inbound message is sent straight back to its sender
/// (no room, no broadcast, no task, no queue). The response stream *is* the request stream,
/// so what a connected client costs here is tonic's and hyper's own per-stream state (the
/// request decoder, the response encoder, h2's stream) and, with a connection per client,
/// the connection's.
#[derive(Debug, Clone, Copy, Default)]
pub struct BareChat;

#[tonic::async_trait]
impl streaming::streaming_service_server::StreamingService for BareChat {
    type StreamServerTimeStream = tokio_stream::Empty<Result<streaming::TimeResponse, Status>>;
    /// The echo's response stream: the inbound stream itself, passed through.
    type ChatStreamStream = Streaming<streaming::ChatMessage>;

    async fn stream_server_time(
        &self,
        _request: Request<streaming::Empty>,
    ) -> Result<Response<Self::StreamServerTimeStream>, Status> {
        Err(Status::unimplemented(
            "the bare reference serves ChatStream only",
        ))
    }

    async fn stream_upload_file(
        &self,
        _request: Request<Streaming<streaming::FileChunk>>,
    ) -> Result<Response<streaming::FileResponse>, Status> {
        Err(Status::unimplemented(
            "the bare reference serves ChatStream only",
        ))
    }

    async fn chat_stream(
        &self,
        request: Request<Streaming<streaming::ChatMessage>>,
    ) -> Result<Response<Self::ChatStreamStream>, Status> {
        Ok(Response::new(request.into_inner()))
    }
}
