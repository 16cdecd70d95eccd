//! The tower layer that records every call in the `grpc_server_*` families of
//! [`crate::metrics`]: started, handled by its real status code, handling time, and the
//! messages each way.
//!
//! A call's status is known only at its very end: in the response headers for a call
//! refused before it produced anything, else in the trailers after the last message. So the
//! layer wraps the response body and finishes the call when the trailers go by, or, should
//! the body be dropped first (the client went away), as CANCELLED. Messages are counted by
//! reading the gRPC framing (a 5-byte header before each message) of both bodies, without
//! decoding anything.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use bytes::{Buf as _, Bytes};
use http_body::Frame;
use prometheus::{Histogram, IntCounter};
use prost::Message as _;
use tonic::{Code, body::Body};

use crate::metrics::{
    GRPC_HANDLED, GRPC_HANDLING_SECONDS, GRPC_MSG_RECEIVED, GRPC_MSG_SENT, GRPC_STARTED,
};

/// The metric children of one method, resolved once when the layer is built so that a
/// call costs a map lookup and a few atomic adds, not a label hash per family.
#[derive(Debug)]
struct MethodMetrics {
    started: IntCounter,
    received: IntCounter,
    sent: IntCounter,
    handling: Histogram,
    /// Indexed by the numeric gRPC code, 0 (OK) to 16 (UNAUTHENTICATED).
    handled: Vec<IntCounter>,
}

/// Records every call of the known methods. Built from the descriptors of what the server
/// serves: a path no method has (a client may send any) passes unrecorded, so a client
/// cannot grow the label sets without bound.
#[derive(Debug, Clone)]
pub(crate) struct CallMetricsLayer {
    methods: Arc<HashMap<String, Arc<MethodMetrics>>>,
}

impl CallMetricsLayer {
    /// A layer for the methods of `service_names` (e.g. `file.FileService`) found in
    /// `descriptor_sets`, plus health and reflection, which every server serves.
    pub(crate) fn new(descriptor_sets: &[&[u8]], service_names: &[&str]) -> Self {
        let mut methods = HashMap::new();
        let mut add = |service: &str, method: &str, kind: &str| {
            let labels = [kind, service, method];
            let handled = (0..=16)
                .map(|code| {
                    let code = crate::cli::code_name(Code::from_i32(code));
                    GRPC_HANDLED.with_label_values(&[kind, service, method, code])
                })
                .collect();
            methods.insert(
                format!("/{service}/{method}"),
                Arc::new(MethodMetrics {
                    started: GRPC_STARTED.with_label_values(&labels),
                    received: GRPC_MSG_RECEIVED.with_label_values(&labels),
                    sent: GRPC_MSG_SENT.with_label_values(&labels),
                    handling: GRPC_HANDLING_SECONDS.with_label_values(&labels),
                    handled,
                }),
            );
        };
        for set in descriptor_sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
                tracing::error!("cannot decode a descriptor set: its calls are not measured");
                continue;
            };
            for file in &set.file {
                for service in &file.service {
                    let name = match file.package() {
                        "" => service.name().to_owned(),
                        package => format!("{package}.{}", service.name()),
                    };
                    if !service_names.contains(&name.as_str()) {
                        continue;
                    }
                    for method in &service.method {
                        let kind = match (method.client_streaming(), method.server_streaming()) {
                            (false, false) => "unary",
                            (true, false) => "client_stream",
                            (false, true) => "server_stream",
                            (true, true) => "bidi_stream",
                        };
                        add(&name, method.name(), kind);
                    }
                }
            }
        }
        for reflection in [
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            add(reflection, "ServerReflectionInfo", "bidi_stream");
        }
        Self {
            methods: Arc::new(methods),
        }
    }
}

impl<S> tower::Layer<S> for CallMetricsLayer {
    type Service = CallMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallMetrics {
            inner,
            methods: Arc::clone(&self.methods),
        }
    }
}

/// The service [`CallMetricsLayer`] wraps around the server's routes.
#[derive(Debug, Clone)]
pub(crate) struct CallMetrics<S> {
    inner: S,
    methods: Arc<HashMap<String, Arc<MethodMetrics>>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower::Service<http::Request<Body>> for CallMetrics<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone that was polled ready handles this call; a fresh clone waits for the
        // next (tower's rule for services called from a boxed future).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // One lookup per call; the method's metrics then travel with it.
        let Some(method) = self.methods.get(request.uri().path()).cloned() else {
            return Box::pin(inner.call(request));
        };
        Box::pin(async move {
            method.started.inc();
            let started = Instant::now();
            let request = request.map(|body| {
                Body::new(CountedBody {
                    inner: body,
                    messages: MessageCounter::default(),
                    counter: method.received.clone(),
                    call: None,
                })
            });
            let response = inner.call(request).await?;
            let sent = method.sent.clone();
            let mut call = FinishedCall { method, started };
            // A trailers-only response (the call failed before any message) carries its
            // status in the headers; the body then holds nothing.
            let call = match header_code(response.headers()) {
                Some(code) => {
                    call.finish(code);
                    None
                }
                None => Some(call),
            };
            Ok(response.map(|body| {
                Body::new(CountedBody {
                    inner: body,
                    messages: MessageCounter::default(),
                    counter: sent,
                    call,
                })
            }))
        })
    }
}

/// The code in a `grpc-status` header, if there is one.
fn header_code(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?;
    let number: i32 = value.to_str().ok()?.parse().ok()?;
    Some(Code::from_i32(number))
}

/// A call whose end is still to be recorded.
#[derive(Debug)]
struct FinishedCall {
    method: Arc<MethodMetrics>,
    started: Instant,
}

impl FinishedCall {
    fn finish(&mut self, code: Code) {
        let index = usize::try_from(i32::from(code)).unwrap_or(2);
        if let Some(counter) = self.method.handled.get(index) {
            counter.inc();
        }
        self.method
            .handling
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// Counts the gRPC messages in a body's data, across frame boundaries: each message is a
/// 1-byte flag and a 4-byte big-endian length, then that many bytes.
#[derive(Debug, Default)]
struct MessageCounter {
    header: [u8; 5],
    header_filled: usize,
    payload_left: u64,
}

impl MessageCounter {
    /// How many messages start in `data`.
    fn count(&mut self, mut data: &[u8]) -> u64 {
        let mut started = 0;
        while !data.is_empty() {
            if self.payload_left > 0 {
                let skip = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                data = &data[skip..];
                self.payload_left -= skip as u64;
                continue;
            }
            let take = (5 - self.header_filled).min(data.len());
            self.header[self.header_filled..self.header_filled + take]
                .copy_from_slice(&data[..take]);
            self.header_filled += take;
            data = &data[take..];
            if self.header_filled == 5 {
                let length = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                self.payload_left = u64::from(length);
                self.header_filled = 0;
                started += 1;
            }
        }
        started
    }
}

pin_project_lite::pin_project! {
    /// A request or response body that counts its messages and, for a response, records the
    /// call's end when its trailers pass or when it is dropped unfinished.
    struct CountedBody {
        #[pin]
        inner: Body,
        messages: MessageCounter,
        counter: IntCounter,
        call: Option<FinishedCall>,
    }

    impl PinnedDrop for CountedBody {
        fn drop(this: Pin<&mut Self>) {
            // Dropped before its status went by: the client cancelled or the connection
            // closed, which go-grpc-prometheus also counts as CANCELLED.
            if let Some(mut call) = this.project().call.take() {
                call.finish(Code::Cancelled);
            }
        }
    }
}

impl http_body::Body for CountedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(context);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let started = this.messages.count(data.chunk());
                    if started > 0 {
                        this.counter.inc_by(started);
                    }
                } else if let Some(trailers) = frame.trailers_ref()
                    && let Some(mut call) = this.call.take()
                {
                    call.finish(header_code(trailers).unwrap_or(Code::Unknown));
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => {
                // An end without trailers: no status reached the client.
                if let Some(mut call) = this.call.take() {
                    call.finish(Code::Unknown);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages are counted whether frames split them or carry several at once.
    #[test]
    fn counts_messages_across_frames() {
        let mut counter = MessageCounter::default();
        // Two messages of 3 and 0 bytes in one frame.
        assert_eq!(counter.count(&[0, 0, 0, 0, 3, 1, 2, 3, 0, 0, 0, 0, 0]), 2);
        // One of 4 bytes split inside its header and its payload.
        assert_eq!(counter.count(&[0, 0, 0]), 0);
        assert_eq!(counter.count(&[0, 4, 9]), 1);
        assert_eq!(counter.count(&[9, 9, 9]), 0);
        assert_eq!(counter.count(&[0, 0, 0, 0, 1, 7]), 1);
    }
}
