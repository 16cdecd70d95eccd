//! Spreading calls over replicas: a client given several server addresses
//! (`--server http://a:50051,http://b:50051`), or a name with several DNS records (Docker
//! Swarm's `tasks.<service>`), sends each call to the next replica in turn, and retries a call
//! that is safe to repeat on another replica when one answers UNAVAILABLE.
//!
//! Why calls and not connections: gRPC keeps one long-lived HTTP/2 connection, so a virtual
//! IP in front of replicas balances connections, and a client's every call lands on the one
//! replica it first reached. Here each replica gets its own (lazy, self-reconnecting) tonic
//! channel and the calls go round-robin over them, as gRPC's own `round_robin` policy does.
//! tonic's `Channel::balance_list` picks a ready replica at random (power of two choices, all
//! loads 0), and a replica whose port refuses connections counts as ready, so a retry through
//! it may land on the same dead replica again; round-robin retries on the *next* one, and
//! spreads calls evenly. [`lazy_channel`] uses tonic's balancer where a plain [`Channel`] is
//! needed (the auth service's audit delivery, which retries by itself).
//!
//! Names are resolved again every [`REFRESH_INTERVAL`], so replicas that start later (a scale
//! up, a rolling update) get calls, and those gone from DNS get none.
//!
//! What is retried ([`Policy`]): calls that read (SayHello, GetFilesList, random numbers,
//! the time streams, ValidateSession, QueryLogs, health checks) on any UNAVAILABLE; a
//! LogActivity with an event id likewise (the logger keeps one row per event id); other unary
//! calls (Login, Logout, WriteFile, an event without id) only when the connection failed
//! before the request left (refused), so a login is never made twice; calls that stream
//! requests (uploads, chat) never, and they are not buffered.

use std::{
    collections::HashMap,
    future::Future,
    hash::{BuildHasher as _, Hasher as _},
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use tonic::{
    body::Body,
    transport::{Channel, Endpoint, channel::Change},
};
use tower::ServiceExt as _;

use crate::tls::ClientTls;

/// How often names are resolved again while a connection is in use.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(3);

/// A boxed error, what tonic's generated clients accept from a transport.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The future of one call through a [`crate::cli::Connection`].
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

/// Resolves `host:port` to its addresses (with that port); tests give their own.
pub type Resolver = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>
        + Send
        + Sync,
>;

/// The system's resolver.
pub fn system_resolver() -> Resolver {
    Arc::new(|address: String| {
        Box::pin(async move { Ok(tokio::net::lookup_host(address).await?.collect()) })
    })
}

/// The addresses of a `--server`-style list: comma-separated, blanks ignored.
pub fn split(list: &str) -> Vec<&str> {
    list.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect()
}

/// One address the user gave.
#[derive(Debug, Clone)]
struct Target {
    /// As given, e.g. `http://tasks.file:50051`.
    url: String,
    /// `host:port` to resolve, when the host is a name (not an IP literal).
    lookup: Option<String>,
    scheme: String,
    host: String,
}

impl Target {
    fn parse(url: &str) -> anyhow::Result<Self> {
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("invalid server URL {url:?}"))?;
        let scheme = uri.scheme_str().unwrap_or("http").to_owned();
        let host = uri
            .host()
            .with_context(|| format!("{url:?} names no host"))?
            .to_owned();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let lookup = bare
            .parse::<IpAddr>()
            .is_err()
            .then(|| format!("{host}:{port}"));
        Ok(Self {
            url: url.to_owned(),
            lookup,
            scheme,
            host,
        })
    }
}

/// One replica to dial: a URL, and the name its TLS certificate carries when the URL holds
/// an address found for that name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Replica {
    url: String,
    tls_name: Option<String>,
}

/// The replicas `targets` stand for now. A name with several addresses of one family is one
/// replica per address (Swarm's `tasks.<service>`, DNS round robin); a name with one address
/// per family (`localhost`: 127.0.0.1 and ::1) is one server, dialled by name as before, as is
/// a name that does not resolve right now.
async fn replicas(targets: &[Target], resolve: &Resolver) -> Vec<Replica> {
    let mut found = Vec::new();
    for target in targets {
        let addresses = match &target.lookup {
            Some(lookup) => resolve(lookup.clone()).await.unwrap_or_default(),
            None => Vec::new(),
        };
        let v4 = addresses.iter().filter(|address| address.is_ipv4()).count();
        if v4 < 2 && addresses.len() - v4 < 2 {
            found.push(Replica {
                url: target.url.clone(),
                tls_name: None,
            });
            continue;
        }
        // The port is the one asked for (what a resolver answers with).
        for address in addresses {
            found.push(Replica {
                url: format!("{}://{address}", target.scheme),
                tls_name: Some(target.host.clone()),
            });
        }
    }
    let mut unique = Vec::new();
    for replica in found {
        if !unique.contains(&replica) {
            unique.push(replica);
        }
    }
    unique
}

/// How a connection's endpoints are set up (timeouts, keep-alive, deadline).
pub type Configure = Arc<dyn Fn(Endpoint) -> Endpoint + Send + Sync>;

/// What [`Spread`] and [`lazy_channel`] need to make an endpoint for a replica.
#[derive(Clone)]
struct Dialer {
    tls: ClientTls,
    configure: Configure,
}

impl Dialer {
    fn endpoint(&self, replica: &Replica) -> anyhow::Result<Endpoint> {
        let endpoint =
            crate::tls::endpoint_named(&replica.url, &self.tls, replica.tls_name.as_deref())?;
        Ok((self.configure)(endpoint))
    }
}

/// True when `list` (a `--server`-style list) is one address whose host is an IP literal:
/// nothing to spread and nothing to resolve again.
pub fn is_single_address(list: &str) -> bool {
    let parts = split(list);
    parts.len() == 1 && Target::parse(parts[0]).is_ok_and(|target| target.lookup.is_none())
}

/// The set of replicas of a [`crate::cli::Connection`] that spreads its calls.
pub struct Spread {
    channels: RwLock<Vec<(Replica, Channel)>>,
    next: AtomicUsize,
    dialer: Dialer,
}

impl std::fmt::Debug for Spread {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self
            .read()
            .iter()
            .map(|(replica, _)| replica.url.clone())
            .collect();
        formatter
            .debug_struct("Spread")
            .field("replicas", &urls)
            .finish()
    }
}

impl Spread {
    /// The replicas of `list` (resolved now), each with a lazy channel, names resolved again
    /// every `refresh` in the background for as long as the set is in use.
    pub async fn new(
        list: &str,
        tls: &ClientTls,
        configure: Configure,
        resolve: Resolver,
        refresh: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        let targets = parse_targets(list)?;
        let spread = Self::empty(tls, configure);
        spread.update(replicas(&targets, &resolve).await)?;
        spread.watch(targets, resolve, refresh, false);
        Ok(spread)
    }

    /// The same, without resolving first (for a constructor that cannot wait): the
    /// addresses as given until the first refresh, which starts at once.
    pub fn new_lazy(
        list: &str,
        tls: &ClientTls,
        configure: Configure,
        resolve: Resolver,
        refresh: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        let targets = parse_targets(list)?;
        let spread = Self::empty(tls, configure);
        spread.update(as_given(&targets))?;
        spread.watch(targets, resolve, refresh, true);
        Ok(spread)
    }

    fn empty(tls: &ClientTls, configure: Configure) -> Arc<Self> {
        Arc::new(Self {
            channels: RwLock::new(Vec::new()),
            // A random start, so one-shot clients do not all begin with the first replica.
            next: AtomicUsize::new(random_start()),
            dialer: Dialer {
                tls: tls.clone(),
                configure,
            },
        })
    }

    /// Resolves the names among `targets` every `refresh` while the set is in use.
    fn watch(
        self: &Arc<Self>,
        targets: Vec<Target>,
        resolve: Resolver,
        refresh: Duration,
        at_once: bool,
    ) {
        let weak = Arc::downgrade(self);
        spawn_refresh(targets, resolve, refresh, at_once, move |found| {
            let Some(spread) = weak.upgrade() else {
                return false;
            };
            if let Err(error) = spread.update(found) {
                tracing::warn!(%error, "cannot use the replicas found");
            }
            true
        });
    }

    /// The URLs of the replicas calls go to now.
    pub fn replica_urls(&self) -> Vec<String> {
        self.read()
            .iter()
            .map(|(replica, _)| replica.url.clone())
            .collect()
    }

    /// Replaces the set, keeping the channels (and their connections) of replicas still in
    /// it. An empty answer (DNS briefly without records) keeps the old set.
    fn update(&self, found: Vec<Replica>) -> anyhow::Result<()> {
        if found.is_empty() {
            return Ok(());
        }
        let mut channels = Vec::with_capacity(found.len());
        {
            let current = self.read();
            for replica in found {
                let kept = current
                    .iter()
                    .find(|(known, _)| *known == replica)
                    .map(|(_, channel)| channel.clone());
                let channel = match kept {
                    Some(channel) => channel,
                    None => self.dialer.endpoint(&replica)?.connect_lazy(),
                };
                channels.push((replica, channel));
            }
        }
        let mut current = self
            .channels
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.len() != channels.len()
            || current
                .iter()
                .zip(&channels)
                .any(|((old, _), (new, _))| old != new)
        {
            let urls: Vec<&str> = channels
                .iter()
                .map(|(replica, _)| replica.url.as_str())
                .collect();
            tracing::debug!(?urls, "replicas");
        }
        *current = channels;
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<(Replica, Channel)>> {
        // Every write replaces the whole vector, so a poisoned lock still holds a valid one.
        self.channels
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The channels in the order this call tries them: the next replica in turn first.
    fn order(&self) -> Vec<Channel> {
        let channels = self.read();
        if channels.is_empty() {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % channels.len();
        channels[start..]
            .iter()
            .chain(&channels[..start])
            .map(|(_, channel)| channel.clone())
            .collect()
    }

    /// Sends `request` to the next replica; on UNAVAILABLE, to the following ones as far as
    /// the call's [`Policy`] allows.
    pub async fn send(
        self: Arc<Self>,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, BoxError> {
        let mut order = self.order().into_iter();
        let Some(first) = order.next() else {
            return Err("no server address to send the call to".into());
        };
        let policy = Policy::of(request.uri().path());
        if order.len() == 0 || policy == Policy::Never {
            return first.oneshot(request).await.map_err(Into::into);
        }
        // A unary or server-streaming call: its request is one message, kept for the retries.
        let (parts, body) = request.into_parts();
        let bytes = body.collect().await?.to_bytes();
        let policy = policy.refine(parts.uri.path(), &bytes);
        let mut channel = first;
        loop {
            let request = rebuild(&parts, bytes.clone());
            let last = order.len() == 0;
            match channel.oneshot(request).await {
                Ok(response) if !last && policy == Policy::Always && is_unavailable(&response) => {
                    tracing::debug!(
                        path = parts.uri.path(),
                        "UNAVAILABLE; trying another replica"
                    );
                }
                Ok(response) => return Ok(response),
                Err(error) if !last && policy.retries_error(&error) => {
                    tracing::debug!(path = parts.uri.path(), %error, "trying another replica");
                }
                Err(error) => return Err(error.into()),
            }
            let Some(next) = order.next() else {
                return Err("no replica left to try".into());
            };
            channel = next;
        }
    }
}

fn parse_targets(list: &str) -> anyhow::Result<Vec<Target>> {
    let targets = split(list)
        .into_iter()
        .map(Target::parse)
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!targets.is_empty(), "no server address given");
    Ok(targets)
}

fn random_start() -> usize {
    let seed = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    usize::try_from(seed % 1024).unwrap_or_default()
}

/// The replicas of `targets` as given, before any lookup.
fn as_given(targets: &[Target]) -> Vec<Replica> {
    targets
        .iter()
        .map(|target| Replica {
            url: target.url.clone(),
            tls_name: None,
        })
        .collect()
}

/// Resolves `targets` every `interval` (the first time at once, or after one interval) and
/// hands the replicas found to `apply`, until it returns false. Nothing to do when no
/// target is a name.
fn spawn_refresh<F>(
    targets: Vec<Target>,
    resolve: Resolver,
    interval: Duration,
    at_once: bool,
    mut apply: F,
) where
    F: FnMut(Vec<Replica>) -> bool + Send + 'static,
{
    if targets.iter().all(|target| target.lookup.is_none()) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("no async runtime: the server names will not be resolved again");
        return;
    };
    runtime.spawn(async move {
        if !at_once {
            tokio::time::sleep(interval).await;
        }
        loop {
            let found = replicas(&targets, &resolve).await;
            if !apply(found) {
                return;
            }
            tokio::time::sleep(interval).await;
        }
    });
}

/// A plain [`Channel`] over the replicas of `list` (tonic's balancer, fed with the replicas
/// found again every [`REFRESH_INTERVAL`]), connecting lazily. For callers that need a
/// `Channel` and retry by themselves; one IP address is today's single lazy channel.
pub fn lazy_channel(list: &str, tls: &ClientTls, configure: Configure) -> anyhow::Result<Channel> {
    let dialer = Dialer {
        tls: tls.clone(),
        configure,
    };
    let targets = parse_targets(list)?;
    if is_single_address(list) {
        let replica = Replica {
            url: targets[0].url.clone(),
            tls_name: None,
        };
        return Ok(dialer.endpoint(&replica)?.connect_lazy());
    }
    let (channel, changes) = Channel::balance_channel::<String>(64);
    let mut current: HashMap<String, Replica> = HashMap::new();
    let mut apply = move |found: Vec<Replica>| -> bool {
        if found.is_empty() {
            return true;
        }
        for (url, _) in current.clone() {
            if !found.iter().any(|replica| replica.url == url) {
                current.remove(&url);
                if changes.try_send(Change::Remove(url)).is_err() {
                    return !changes.is_closed();
                }
            }
        }
        for replica in found {
            if current.contains_key(&replica.url) {
                continue;
            }
            match dialer.endpoint(&replica) {
                Ok(endpoint) => {
                    if changes
                        .try_send(Change::Insert(replica.url.clone(), endpoint))
                        .is_err()
                    {
                        return !changes.is_closed();
                    }
                    current.insert(replica.url.clone(), replica);
                }
                Err(error) => tracing::warn!(%error, url = replica.url, "cannot dial a replica"),
            }
        }
        true
    };
    apply(as_given(&targets));
    spawn_refresh(targets, system_resolver(), REFRESH_INTERVAL, true, apply);
    Ok(channel)
}

/// Whether a call may be sent again to another replica after an UNAVAILABLE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Safe to repeat: it only reads, or the server recognises a repeat.
    Always,
    /// A unary call that changes something: repeated only when it never left.
    IfNeverSent,
    /// A call that streams requests (an upload, the chat), or one this crate does not
    /// know: never repeated, never buffered.
    Never,
}

/// Calls that only read, or that the server recognises when repeated.
const IDEMPOTENT: &[&str] = &[
    "/file.FileService/SayHello",
    "/file.FileService/SayGoodbye",
    "/file.FileService/GetServerTime",
    "/file.FileService/GetFilesList",
    "/random.RandomNumberService/GetRandomNumbers",
    "/streaming.StreamingService/StreamServerTime",
    "/AuthService/ValidateSession",
    "/LoggerService/QueryLogs",
    "/LoggerService/FollowLogs",
    "/grpc.health.v1.Health/Check",
];

/// Unary calls that change something.
const UNARY_WRITES: &[&str] = &[
    "/file.FileService/WriteFile",
    "/AuthService/Login",
    "/AuthService/Logout",
    "/LoggerService/LogActivity",
];

const LOG_ACTIVITY: &str = "/LoggerService/LogActivity";

impl Policy {
    /// The policy of the method at `path`.
    pub fn of(path: &str) -> Self {
        if IDEMPOTENT.contains(&path) {
            Self::Always
        } else if UNARY_WRITES.contains(&path) {
            Self::IfNeverSent
        } else {
            Self::Never
        }
    }

    /// A LogActivity carrying an event id is safe to repeat: the logger stores an event id
    /// once. `body` is the call's gRPC frame (an uncompressed one is read).
    fn refine(self, path: &str, body: &[u8]) -> Self {
        if path != LOG_ACTIVITY {
            return self;
        }
        let has_event_id = match body {
            [0, _, _, _, _, message @ ..] => {
                <crate::logger::LogRequest as prost::Message>::decode(message)
                    .is_ok_and(|request| !request.event_id.is_empty())
            }
            _ => false,
        };
        if has_event_id { Self::Always } else { self }
    }

    fn retries_error(self, error: &(dyn std::error::Error + 'static)) -> bool {
        match self {
            Self::Always => true,
            Self::IfNeverSent => never_sent(error),
            Self::Never => false,
        }
    }
}

/// True when `error` says the request never reached a server's handler: the connection
/// could not be made (a refused port: a replica that stopped), or the server refused the
/// stream before processing it (HTTP/2 REFUSED_STREAM, from a replica shutting down).
fn never_sent(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(current) = cause {
        let text = current.to_string();
        if current.downcast_ref::<io::Error>().is_some_and(|io_error| {
            matches!(
                io_error.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::HostUnreachable
            )
        }) || text.starts_with("tcp connect error")
            || text.contains("refused stream before processing")
        {
            return true;
        }
        cause = current.source();
    }
    false
}

/// An answer with no message and status UNAVAILABLE in its headers (a server that could
/// not serve the call, e.g. one whose own dependency is down).
fn is_unavailable(response: &http::Response<Body>) -> bool {
    response
        .headers()
        .get("grpc-status")
        .is_some_and(|value| value.as_bytes() == b"14")
}

fn rebuild(parts: &http::request::Parts, body: Bytes) -> http::Request<Body> {
    let mut request = http::Request::new(Body::new(http_body_util::Full::new(body)));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    *request.extensions_mut() = parts.extensions.clone();
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads are repeated, writes only when they never left, streams of requests never.
    #[test]
    fn policies() {
        assert_eq!(Policy::of("/file.FileService/SayHello"), Policy::Always);
        assert_eq!(Policy::of("/AuthService/Login"), Policy::IfNeverSent);
        assert_eq!(
            Policy::of("/streaming.StreamingService/StreamUploadFile"),
            Policy::Never
        );
        assert_eq!(
            Policy::of("/streaming.StreamingService/ChatStream"),
            Policy::Never
        );
    }

    /// A LogActivity is repeated only with an event id.
    #[test]
    fn log_activity_with_event_id_is_idempotent() {
        let frame = |request: crate::logger::LogRequest| {
            let message = prost::Message::encode_to_vec(&request);
            let mut frame = vec![0];
            frame.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
            frame.extend_from_slice(&message);
            frame
        };
        let with_id = frame(crate::logger::LogRequest {
            event_id: "e-1".to_owned(),
            ..Default::default()
        });
        let without = frame(crate::logger::LogRequest::default());
        let policy = Policy::of(LOG_ACTIVITY);
        assert_eq!(policy.refine(LOG_ACTIVITY, &with_id), Policy::Always);
        assert_eq!(policy.refine(LOG_ACTIVITY, &without), Policy::IfNeverSent);
    }

    fn resolver(answers: Vec<SocketAddr>) -> Resolver {
        Arc::new(move |_| {
            let answers = answers.clone();
            Box::pin(async move { Ok(answers) })
        })
    }

    /// A name with several addresses of one family is one replica per address; `localhost`
    /// with one address per family stays one server dialled by name.
    #[tokio::test]
    async fn names_expand_only_to_several_records() {
        let targets = vec![Target::parse("http://tasks.file:50051").expect("parses")];
        let swarm = resolver(vec![
            "10.0.0.5:50051".parse().expect("address"),
            "10.0.0.6:50051".parse().expect("address"),
        ]);
        let found = replicas(&targets, &swarm).await;
        let urls: Vec<&str> = found.iter().map(|replica| replica.url.as_str()).collect();
        assert_eq!(urls, ["http://10.0.0.5:50051", "http://10.0.0.6:50051"]);
        assert_eq!(found[0].tls_name.as_deref(), Some("tasks.file"));
        let localhost = resolver(vec![
            "127.0.0.1:50051".parse().expect("address"),
            "[::1]:50051".parse().expect("address"),
        ]);
        let found = replicas(&targets, &localhost).await;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].url, "http://tasks.file:50051");
    }

    /// Only one IP literal counts as a single address.
    #[test]
    fn single_address() {
        assert!(is_single_address("http://127.0.0.1:1"));
        assert!(!is_single_address("http://127.0.0.1:1,http://127.0.0.1:2"));
        assert!(!is_single_address("http://tasks.auth:50054"));
    }
}
