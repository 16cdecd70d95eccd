//! The hidden `grpc_bench serve bare` side: the bare tonic server (SayHello and a
//! ChatStream echo) that is the reference for what our shared plumbing and our chat room
//! cost. It has no binary of its own, so grpc_bench re-executes itself to run it: its
//! memory is then read from a process of its own, exactly as each real server's is.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use grpc_suite::tls::{ServerTls, ServerTlsFiles};
use tokio::net::TcpListener;
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

/// Binds `addr`, prints `Bench bare server started on port N` (the parent reads the port
/// from it, as from every server's startup line), and serves until SIGTERM or Ctrl+C; over
/// TLS when `tls` names a certificate and key (checked before anything listens, as the
/// real servers do).
pub async fn serve_main(addr: SocketAddr, tls: Option<ServerTlsFiles>) -> anyhow::Result<()> {
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
    serve_bare(listener, tls, shutdown).await
}

/// How long the bare server lets calls finish at shutdown; the benchmark has stopped
/// sending by then, so this only bounds a bug.
const BARE_DRAIN: Duration = Duration::from_secs(2);

/// The reference: tonic's Greeter example shape (`Server::builder().add_service(..)`),
/// serving the file service's SayHello and a ChatStream echo, nothing else. TCP_NODELAY is
/// on, as tonic's builder sets it by default when it binds the address itself. With `tls`,
/// tonic's own TLS (`tls_config`, rustls), as the real servers use it: the TLS reference.
pub async fn serve_bare(
    listener: TcpListener,
    tls: Option<ServerTls>,
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
