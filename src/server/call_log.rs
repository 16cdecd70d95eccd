//! One `info` line per finished call — method, status code, duration, peer address — through
//! tower-http's `TraceLayer` with its gRPC classification. Nothing of a request or response
//! body, header value or metadata is logged, so payloads, passwords and tokens never are.
//!
//! The status of a call is in the response headers when it failed before sending anything
//! (trailers-only) and in the trailers otherwise; the layer reports the first case at the
//! response and the second at the end of the stream, so each call gives exactly one line.

use std::time::Duration;

use tonic::Code;
use tower_http::{
    classify::{GrpcErrorsAsFailures, GrpcFailureClass, SharedClassifier},
    trace::TraceLayer,
};
use tracing::Span;

/// The layer [`GrpcServer`](super::GrpcServer) puts outermost, so the line's duration
/// covers everything a call goes through.
pub(crate) type CallLogLayer = TraceLayer<
    SharedClassifier<GrpcErrorsAsFailures>,
    fn(&http::Request<tonic::body::Body>) -> Span,
    (),
    fn(&http::Response<tonic::body::Body>, Duration, &Span),
    (),
    fn(Option<&http::HeaderMap>, Duration, &Span),
    fn(GrpcFailureClass, Duration, &Span),
>;

/// The call-logging layer.
pub(crate) fn layer() -> CallLogLayer {
    TraceLayer::new_for_grpc()
        .make_span_with(call_span as fn(&http::Request<tonic::body::Body>) -> Span)
        .on_request(())
        .on_response(on_response as fn(&http::Response<tonic::body::Body>, Duration, &Span))
        .on_body_chunk(())
        .on_eos(on_eos as fn(Option<&http::HeaderMap>, Duration, &Span))
        .on_failure(on_failure as fn(GrpcFailureClass, Duration, &Span))
}

/// The span a call's line is written in: the method path and the client's address.
fn call_span(request: &http::Request<tonic::body::Body>) -> Span {
    let peer = peer_address(request);
    tracing::info_span!(
        "call",
        method = request.uri().path(),
        peer = peer.map(tracing::field::display),
    )
}

/// The client's address: tonic puts it in the request's extensions, wrapped once more
/// when the connection is TLS.
fn peer_address(request: &http::Request<tonic::body::Body>) -> Option<std::net::SocketAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
}

/// A trailers-only response carries the call's status in its headers: the call ends here.
fn on_response(response: &http::Response<tonic::body::Body>, latency: Duration, span: &Span) {
    if let Some(code) = header_code(response.headers()) {
        finished(code, latency, span);
    }
}

/// The trailers of a call that sent a response: the call ends here.
fn on_eos(trailers: Option<&http::HeaderMap>, duration: Duration, span: &Span) {
    let code = trailers.and_then(header_code).unwrap_or(Code::Unknown);
    finished(code, duration, span);
}

/// Only a broken response stream is worth a line of its own: a call that failed with a
/// status already gets its line, with that status, from [`on_response`] or [`on_eos`].
fn on_failure(failure: GrpcFailureClass, duration: Duration, span: &Span) {
    if let GrpcFailureClass::Error(error) = failure {
        tracing::warn!(parent: span, %error, duration_ms = millis(duration), "call failed");
    }
}

fn finished(code: Code, duration: Duration, span: &Span) {
    tracing::info!(
        parent: span,
        code = crate::cli::code_name(code),
        duration_ms = millis(duration),
        "call finished"
    );
}

fn millis(duration: Duration) -> f64 {
    // Microsecond precision: enough for a person, and no float noise in the line.
    (duration.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

fn header_code(headers: &http::HeaderMap) -> Option<Code> {
    let number: i32 = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(Code::from_i32(number))
}
