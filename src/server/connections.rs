//! Every connection a [`GrpcServer`](super::GrpcServer) accepted, so that shutdown can close
//! the ones still open when the grace period ends and know when none is left.
//!
//! tonic spawns one task per connection and hands out no way to stop it: dropping the serve
//! future leaves those tasks running, streams and all. The one thing of a connection we own
//! is its socket, so each accepted [`TcpStream`] is wrapped: once [`Connections::close_all`]
//! fires, every read and write on it fails, hyper ends the connection, and its task drops the
//! socket, which the live count observes.

use std::{
    future::Future as _,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::Sleep,
};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::gauge::{Gauge, GaugeGuard};

/// The length of the HTTP/2 client preface (`PRI * HTTP/2.0...`), which a client sends
/// first; a connection that has sent it is past the point where it could stall us unseen.
const PREFACE_LEN: usize = 24;

/// The registry of one server's accepted connections; cloning shares it.
#[derive(Debug, Clone)]
pub(crate) struct Connections {
    /// How long a new connection may take to send the HTTP/2 preface before it is closed.
    handshake_timeout: Duration,
    /// Cancelled once, when the grace period is over: every tracked socket watches it.
    force_close: CancellationToken,
    /// Sockets not yet dropped. A gauge rather than a counter, so shutdown can await zero.
    live: Gauge,
}

impl Connections {
    /// An empty registry whose connections must send the preface within `handshake_timeout`.
    pub(crate) fn new(handshake_timeout: Duration) -> Self {
        Self {
            handshake_timeout,
            force_close: CancellationToken::default(),
            live: Gauge::default(),
        }
    }

    /// Registers an accepted socket; it counts as live until the returned wrapper is dropped.
    pub(crate) fn track(&self, stream: TcpStream) -> TrackedStream {
        TrackedStream {
            stream,
            closing: Box::pin(self.force_close.clone().cancelled_owned()),
            closed: self.force_close.is_cancelled(),
            handshake_deadline: Some(Box::pin(tokio::time::sleep(self.handshake_timeout))),
            preface_read: 0,
            _live: self.live.enter(),
        }
    }

    /// Makes every tracked socket, present and future, fail its reads and writes.
    pub(crate) fn close_all(&self) {
        self.force_close.cancel();
    }

    /// Sockets still held by a connection task.
    pub(crate) fn live(&self) -> usize {
        self.live.get()
    }

    /// Resolves once no tracked socket is left.
    pub(crate) async fn wait_until_closed(&self) {
        self.live.wait_until(|&count| count == 0).await;
    }
}

/// An accepted socket that fails once its server force-closes connections.
#[derive(Debug)]
pub(crate) struct TrackedStream {
    stream: TcpStream,
    /// Polled on every read and write so that the connection task is woken when the
    /// server closes connections, even while it waits on a client that sends nothing or
    /// reads nothing. Boxed to keep the wrapper `Unpin`, which tonic requires.
    closing: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Set once `closing` has fired, so the finished future is never polled again.
    closed: bool,
    /// When the peer must have sent the HTTP/2 preface by; `None` once it has. Polled on
    /// reads, which hyper keeps pending while it waits for the preface, so it wakes the task.
    /// (Under TLS the TLS handshake's own timeout comes first; the bytes counted here are
    /// then the TLS ones.)
    handshake_deadline: Option<Pin<Box<Sleep>>>,
    /// Bytes read so far, up to [`PREFACE_LEN`].
    preface_read: usize,
    /// Keeps this socket counted as live until hyper drops it.
    _live: GaugeGuard,
}

impl TrackedStream {
    /// Whether the server has closed this connection; registers the task to be woken if not.
    fn force_closed(&mut self, context: &mut Context<'_>) -> bool {
        if !self.closed && self.closing.as_mut().poll(context).is_ready() {
            self.closed = true;
        }
        self.closed
    }
}

/// What hyper sees on a force-closed connection; it ends the connection on it.
fn closed_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the server closed this connection at the end of its shutdown grace period",
    )
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.force_closed(context) {
            return Poll::Ready(Err(closed_error()));
        }
        if let Some(deadline) = this.handshake_deadline.as_mut()
            && deadline.as_mut().poll(context).is_ready()
        {
            this.handshake_deadline = None;
            this.closed = true;
            tracing::debug!("closing a connection that sent no HTTP/2 preface in time");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not complete the HTTP/2 handshake in time",
            )));
        }
        let before = buffer.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(context, buffer);
        if this.handshake_deadline.is_some() {
            this.preface_read += buffer.filled().len() - before;
            if this.preface_read >= PREFACE_LEN {
                this.handshake_deadline = None;
            }
        }
        read
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // A write blocked on a client that stopped reading must end too, not only reads.
        if this.force_closed(context) {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut this.stream).poll_write(context, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.force_closed(context) {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut this.stream).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.force_closed(context) {
            return Poll::Ready(Err(closed_error()));
        }
        Pin::new(&mut this.stream).poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Nothing more will be written to a closed connection: done at once, so shutting it
        // down cannot wait on a client that reads nothing. Dropping the socket closes it.
        if this.force_closed(context) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_shutdown(context)
    }
}

impl Connected for TrackedStream {
    /// The same as a bare `TcpStream`'s, so `Request::remote_addr` keeps working.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}
