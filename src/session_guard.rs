//! Guarding a server's calls with the auth service's sessions (`--auth-url`): every call
//! but health and reflection must carry `authorization: Bearer <session id>` naming a live
//! session, checked with `AuthService/ValidateSession`.
//!
//! It fails closed: no header or a dead session is UNAUTHENTICATED, and an auth service
//! that cannot be asked is UNAVAILABLE, never a pass. Answers are cached for at most
//! [`CACHE_TTL`], so a logout takes effect everywhere within that bound while a busy
//! client costs the auth service one check per [`CACHE_TTL`], not one per call.
//!
//! One tower layer in [`crate::server::GrpcServer`], so no handler can forget it; the
//! caller's name reaches handlers as a [`Caller`] request extension.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tonic::{Code, Status, body::Body};

use crate::{
    auth::{ValidateSessionRequest, auth_service_client::AuthServiceClient},
    tls::ClientTls,
};

/// How long a validation is reused: the bound within which a logout takes effect on every
/// guarded server.
pub const CACHE_TTL: Duration = Duration::from_secs(5);

/// Validations remembered at most; past it, stale ones go first, then all, so a flood of
/// made-up session ids cannot grow memory.
const MAX_CACHED: usize = 10_000;

/// How long one validation may take before the call is refused as UNAVAILABLE.
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(3);

/// Calls that need no session: probes and tools must work without one.
const OPEN_PREFIXES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Who made a guarded call: the session's user. Handlers read it from the request's
/// extensions (`request.extensions().get::<Caller>()`); absent when the server is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The session's username.
    pub username: String,
}

/// The guard: a lazy connection to the auth service and the cache of its answers. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct SessionGuard {
    state: Arc<GuardState>,
}

#[derive(Debug)]
struct GuardState {
    auth: AuthServiceClient<crate::cli::Connection>,
    auth_url: String,
    /// Session id → (when checked, the user if live). A std mutex: held for a map
    /// operation, never across an `.await`.
    cache: Mutex<HashMap<String, (Instant, Option<String>)>>,
}

impl SessionGuard {
    /// A guard that asks the auth service at `auth_url` (connected lazily, so a server
    /// starts while auth is down and refuses calls as UNAVAILABLE meanwhile).
    pub fn new(auth_url: &str, tls: &ClientTls) -> anyhow::Result<Self> {
        // Several replicas (a list, or tasks.auth): each check goes to the next one, and
        // to another when one is unavailable.
        let channel = crate::cli::connect_lazy_spread(auth_url, tls, VALIDATE_TIMEOUT)
            .context("the auth service's address")?;
        Ok(Self {
            state: Arc::new(GuardState {
                auth: AuthServiceClient::new(channel),
                auth_url: auth_url.to_owned(),
                cache: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The caller named by `headers`' session, or the status refusing the call.
    pub async fn check(&self, headers: &http::HeaderMap) -> Result<Caller, Status> {
        let session_id = bearer_token(headers)?;
        let now = Instant::now();
        if let Some(cached) = self.cached(&session_id, now) {
            return cached;
        }
        let request = ValidateSessionRequest {
            session_id: session_id.clone(),
        };
        let mut auth = self.state.auth.clone();
        let answer = tokio::time::timeout(VALIDATE_TIMEOUT, auth.validate_session(request)).await;
        let user = match answer {
            Ok(Ok(reply)) => {
                let reply = reply.into_inner();
                reply.valid.then_some(reply.username)
            }
            Ok(Err(status)) => return Err(self.unavailable(&status.to_string())),
            Err(_) => return Err(self.unavailable("no answer in time")),
        };
        self.remember(session_id, now, user.clone());
        user.map(|username| Caller { username })
            .ok_or_else(dead_session)
    }

    fn cached(&self, session_id: &str, now: Instant) -> Option<Result<Caller, Status>> {
        let cache = self.lock();
        let (checked_at, user) = cache.get(session_id)?;
        if now.duration_since(*checked_at) >= CACHE_TTL {
            return None;
        }
        Some(match user {
            Some(username) => Ok(Caller {
                username: username.clone(),
            }),
            None => Err(dead_session()),
        })
    }

    fn remember(&self, session_id: String, now: Instant, user: Option<String>) {
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (checked_at, _)| now.duration_since(*checked_at) < CACHE_TTL);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(session_id, (now, user));
    }

    fn unavailable(&self, cause: &str) -> Status {
        tracing::warn!(auth_url = %self.state.auth_url, cause, "cannot validate a session; refusing the call");
        Status::unavailable(format!(
            "cannot check the session: the auth service at {} did not answer ({cause})",
            self.state.auth_url
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Option<String>)>> {
        // Every critical section is one map operation, so a poisoned lock is still usable.
        self.state
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn dead_session() -> Status {
    Status::unauthenticated(
        "the session is unknown, expired or logged out; log in again (auth_client --print-session)",
    )
}

/// The session id of `authorization: Bearer <id>`.
fn bearer_token(headers: &http::HeaderMap) -> Result<String, Status> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Err(Status::unauthenticated(
            "this server needs a session: log in with `auth_client --print-session` and pass the id with --session ID (metadata `authorization: Bearer <session id>`)",
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|token| !token.is_empty());
    token.map(str::to_owned).ok_or_else(|| {
        Status::unauthenticated("the authorization metadata must be `Bearer <session id>`")
    })
}

/// The guard as a tower layer over a server's routes.
#[derive(Debug, Clone)]
pub struct SessionGuardLayer(pub SessionGuard);

impl<S> tower::Layer<S> for SessionGuardLayer {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guarded {
            inner,
            guard: self.0.clone(),
        }
    }
}

/// A service whose calls pass the guard first.
#[derive(Debug, Clone)]
pub struct Guarded<S> {
    inner: S,
    guard: SessionGuard,
}

impl<S> tower::Service<http::Request<Body>> for Guarded<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path();
        if OPEN_PREFIXES.iter().any(|prefix| path.starts_with(prefix)) {
            return Box::pin(self.inner.call(request));
        }
        // The clone that was made ready is the one that serves this call (tower's rule);
        // the fresh clone stays for the next.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        let guard = self.guard.clone();
        Box::pin(async move {
            match guard.check(request.headers()).await {
                Ok(caller) => {
                    request.extensions_mut().insert(caller);
                    inner.call(request).await
                }
                Err(status) => {
                    debug_assert!(status.code() != Code::Ok);
                    Ok(status.into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(value).expect("header value"),
        );
        headers
    }

    /// `Bearer <id>` yields the id, whatever the scheme's case; anything else is refused
    /// as UNAUTHENTICATED.
    #[test]
    fn reads_the_bearer_token() {
        assert_eq!(
            bearer_token(&headers("Bearer abc")).ok().as_deref(),
            Some("abc")
        );
        assert_eq!(
            bearer_token(&headers("bearer  abc ")).ok().as_deref(),
            Some("abc")
        );
        for bad in ["abc", "Basic abc", "Bearer ", "Bearer"] {
            let status = bearer_token(&headers(bad)).expect_err(bad);
            assert_eq!(status.code(), Code::Unauthenticated, "{bad}");
        }
        let missing = bearer_token(&http::HeaderMap::new()).expect_err("missing");
        assert_eq!(missing.code(), Code::Unauthenticated);
        assert!(missing.message().contains("--print-session"), "{missing}");
    }

    /// An auth service that cannot be reached refuses the call as UNAVAILABLE: closed,
    /// never open.
    #[tokio::test]
    async fn unreachable_auth_fails_closed() {
        // A listener that is bound but never accepts: connections wait, the call times out.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", silent.local_addr().expect("addr"));
        let guard = SessionGuard::new(&url, &ClientTls::default()).expect("guard");
        let status = guard
            .check(&headers("Bearer 00000000-0000-0000-0000-000000000000"))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::Unavailable, "{status}");
    }
}
