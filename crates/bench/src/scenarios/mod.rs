//! The scenarios, each driving one service over loopback from this process while the
//! server runs in a child process (its real binary, see [`crate::servers`]), and the
//! load-generating loops they share.

pub mod auth;
pub mod auth_flood;
pub mod chat;
pub mod hello;
pub mod logger;
pub mod random;
pub mod sessions;
pub mod stuck;
pub mod tls;
pub mod upload;

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tonic::transport::{Channel, Endpoint};

use crate::{
    report::{Measurement, mib},
    servers::{Server, ServerKind},
    stats::Latencies,
};

/// How long one call may take before the scenario fails: far beyond any latency we
/// measure, it only turns a hung server into an error instead of a hung benchmark.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// One of the benchmark's scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Scenario {
    /// Unary SayHello on the file service and on the bare tonic reference.
    Hello,
    /// A client-streamed upload to the streaming service.
    Upload,
    /// One GetRandomNumbers stream with delay 0.
    Random,
    /// Chat fan-out, and many clients joining.
    Chat,
    /// Concurrent durable LogActivity calls.
    Logger,
    /// Logins, logouts and the cost of one password check.
    Auth,
    /// `hello` over TLS: the file service and the bare reference both serving TLS.
    TlsHello,
    /// `upload` over TLS.
    TlsUpload,
    /// SayHello on the file service with sessions off, then on (`--auth-url`).
    Sessions,
    /// Logout and ValidateSession latency idle and during a wrong-password flood, and
    /// unknown-user against wrong-password login times.
    AuthFlood,
    /// Chat members that never read while one sender sends 64 KiB messages: the server's
    /// peak memory, a reading member's latency, and memory once everyone left.
    ChatStuck,
    /// The same for log followers that never read while rows with large details are
    /// written.
    FollowersStuck,
}

impl Scenario {
    /// Every scenario, in the order a full run measures them.
    pub const ALL: [Scenario; 12] = [
        Self::Hello,
        Self::Upload,
        Self::Random,
        Self::Chat,
        Self::Logger,
        Self::Auth,
        Self::TlsHello,
        Self::TlsUpload,
        Self::Sessions,
        Self::AuthFlood,
        Self::ChatStuck,
        Self::FollowersStuck,
    ];

    /// The name on `scenario=` lines.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::Upload => "upload",
            Self::Random => "random",
            Self::Chat => "chat",
            Self::Logger => "logger",
            Self::Auth => "auth",
            Self::TlsHello => "tls-hello",
            Self::TlsUpload => "tls-upload",
            Self::Sessions => "sessions",
            Self::AuthFlood => "auth-flood",
            Self::ChatStuck => "chat-stuck",
            Self::FollowersStuck => "followers-stuck",
        }
    }

    /// The servers it starts, so a run can check their binaries before measuring anything.
    pub fn servers(self) -> &'static [ServerKind] {
        match self {
            Self::Hello => &[ServerKind::Bare, ServerKind::File],
            Self::Upload => &[ServerKind::Streaming],
            Self::Random => &[ServerKind::Random],
            Self::Chat => &[ServerKind::Streaming, ServerKind::Bare],
            Self::Logger => &[ServerKind::Logger],
            Self::Auth => &[ServerKind::Logger, ServerKind::Auth],
            Self::TlsHello => &[ServerKind::Bare, ServerKind::File],
            Self::TlsUpload => &[ServerKind::Streaming],
            Self::Sessions => &[ServerKind::Logger, ServerKind::Auth, ServerKind::File],
            Self::AuthFlood => &[ServerKind::Logger, ServerKind::Auth],
            Self::ChatStuck => &[ServerKind::Streaming],
            Self::FollowersStuck => &[ServerKind::Logger],
        }
    }
}

/// Sizes and durations of every scenario.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long each timed (closed-loop) phase measures.
    pub duration: Duration,
    /// Calls before that, not measured: connections warm, allocators and caches settle.
    pub warmup: Duration,
    /// Calls in flight at once in the SayHello and logger scenarios.
    pub concurrency: usize,
    /// HTTP/2 connections those calls share.
    pub connections: usize,
    /// Bytes in one upload.
    pub upload_bytes: u64,
    /// Bytes per upload chunk.
    pub chunk_bytes: usize,
    /// Numbers in the random stream.
    pub random_count: u32,
    /// Chat clients in the fan-out phase (K).
    pub chat_clients: usize,
    /// Messages each of them sends (M).
    pub chat_messages: usize,
    /// Clients in the join phase.
    pub chat_joins: usize,
    /// Joins in progress at once (connect, join, first message) in the join phase.
    pub chat_join_parallelism: usize,
    /// HTTP/2 connections the join phase's clients share, round-robin; 0: one each.
    pub chat_join_connections: usize,
    /// Messages each join-phase client exchanges with the bare echo (1: one round trip).
    pub chat_echo_messages: usize,
    /// With N > 0, the fan-out runs again with the room on a NATS bus (`--chat-bus`,
    /// needs `nats-server`): on one replica, then spread over N; 0: not measured.
    pub chat_replicas: usize,
    /// Logins in flight at once while measuring logins/s with the real argon2id cost.
    pub login_concurrency: usize,
    /// Sessions opened, then closed, to measure logouts/s.
    pub logout_sessions: usize,
    /// Password checks timed directly, in this process.
    pub password_checks: usize,
    /// Wrong-password logins in flight at once during the auth flood.
    pub flood_logins: usize,
    /// Sequential Logout and ValidateSession calls timed idle, and again during the flood.
    pub probe_calls: usize,
    /// Refused logins timed for an unknown user, and as many for a wrong password.
    pub login_timing_samples: usize,
    /// Chat members that join and never read in `chat-stuck`.
    pub stuck_members: usize,
    /// Messages the sender sends while they are stuck (and as many before, for the
    /// baseline latency).
    pub stuck_messages: usize,
    /// Bytes of each of those messages' text (the chat's limit is 64 KiB).
    pub stuck_message_bytes: usize,
    /// Log followers that never read in `followers-stuck`.
    pub stuck_followers: usize,
    /// Rows written while they are stuck.
    pub stuck_rows: usize,
    /// Bytes of each row's details (the logger's limit is 64 KiB).
    pub stuck_row_bytes: usize,
    /// How long after the stuck clients left the server's memory is sampled again.
    pub settle: Duration,
}

impl Settings {
    /// The figures BENCHMARKS.md publishes: the sizes.
    pub fn full(duration: Duration) -> Self {
        Self {
            duration,
            warmup: Duration::from_secs(1),
            concurrency: 64,
            connections: 4,
            upload_bytes: 1 << 30,
            chunk_bytes: 1 << 20,
            random_count: 1_000_000,
            chat_clients: 100,
            chat_messages: 100,
            chat_joins: 1000,
            chat_join_parallelism: 64,
            chat_join_connections: 0,
            chat_echo_messages: 1,
            chat_replicas: 0,
            login_concurrency: 4,
            logout_sessions: 20_000,
            password_checks: 10,
            flood_logins: 200,
            probe_calls: 1000,
            login_timing_samples: 20,
            stuck_members: 1000,
            stuck_messages: 200,
            stuck_message_bytes: 64 * 1024,
            stuck_followers: 100,
            stuck_rows: 200,
            stuck_row_bytes: 60 * 1024,
            settle: Duration::from_secs(5),
        }
    }

    /// About a second per scenario with small sizes, so CI keeps the tool working.
    pub fn smoke() -> Self {
        Self {
            duration: Duration::from_millis(500),
            warmup: Duration::from_millis(100),
            concurrency: 4,
            connections: 2,
            upload_bytes: 8 << 20,
            chunk_bytes: 1 << 20,
            random_count: 10_000,
            chat_clients: 5,
            chat_messages: 10,
            chat_joins: 20,
            chat_join_parallelism: 64,
            chat_join_connections: 0,
            chat_echo_messages: 1,
            chat_replicas: 0,
            login_concurrency: 2,
            logout_sessions: 200,
            password_checks: 2,
            // Still far more logins than the password pool runs at once: the flood is real.
            flood_logins: 50,
            probe_calls: 30,
            login_timing_samples: 3,
            stuck_members: 20,
            stuck_messages: 10,
            stuck_message_bytes: 64 * 1024,
            stuck_followers: 10,
            stuck_rows: 10,
            stuck_row_bytes: 60 * 1024,
            settle: Duration::from_secs(1),
        }
    }
}

/// What a scenario gets: its settings and a folder for its servers' data.
#[derive(Debug)]
pub struct Context<'a> {
    /// Sizes and durations.
    pub settings: &'a Settings,
    /// A fresh folder, deleted after the scenario.
    pub data_dir: PathBuf,
}

impl Context<'_> {
    /// A sub-folder for one server's data.
    pub fn server_dir(&self, name: &str) -> PathBuf {
        self.data_dir.join(name)
    }
}

/// Runs one scenario.
pub async fn run(scenario: Scenario, context: &Context<'_>) -> anyhow::Result<Measurement> {
    let result = match scenario {
        Scenario::Hello => hello::run(context).await,
        Scenario::Upload => upload::run(context).await,
        Scenario::Random => random::run(context).await,
        Scenario::Chat => chat::run(context).await,
        Scenario::Logger => logger::run(context).await,
        Scenario::Auth => auth::run(context).await,
        Scenario::Sessions => sessions::run(context).await,
        Scenario::AuthFlood => auth_flood::run(context).await,
        Scenario::ChatStuck => stuck::chat(context).await,
        Scenario::FollowersStuck => stuck::followers(context).await,
        Scenario::TlsHello => {
            let tls = tls::Transport::tls_in(&context.data_dir.join("certs"))?;
            hello::measure(context, &tls, scenario.name()).await
        }
        Scenario::TlsUpload => {
            let tls = tls::Transport::tls_in(&context.data_dir.join("certs"))?;
            upload::measure(context, &tls, scenario.name()).await
        }
    };
    result.with_context(|| format!("scenario {}", scenario.name()))
}

/// Opens one HTTP/2 connection to `url` (each call makes a new one).
pub async fn connect(url: &str) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("invalid URL {url}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5));
    tokio::time::timeout(CALL_TIMEOUT, endpoint.connect())
        .await
        .with_context(|| format!("connecting to {url} timed out"))?
        .with_context(|| format!("connecting to {url}"))
}

/// How much a client that never reads lets the server send before HTTP/2 flow control
/// stops it: 64 KiB per stream and per connection, the protocol's default (tonic's own
/// defaults are megabytes). A stuck client then buffers almost nothing itself, so what the
/// server does with the rest is what is measured, and a thousand of them do not cost the
/// benchmark gigabytes.
const STUCK_WINDOW: u32 = 64 * 1024;

/// Opens one connection to `url` for a client that will stop reading (see
/// [`STUCK_WINDOW`]).
pub async fn connect_stuck(url: &str) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .with_context(|| format!("invalid URL {url}"))?
        .tcp_nodelay(true)
        .initial_stream_window_size(STUCK_WINDOW)
        .initial_connection_window_size(STUCK_WINDOW)
        .connect_timeout(Duration::from_secs(5));
    tokio::time::timeout(CALL_TIMEOUT, endpoint.connect())
        .await
        .with_context(|| format!("connecting to {url} timed out"))?
        .with_context(|| format!("connecting to {url}"))
}

/// `count` separate connections to `url`.
pub async fn connect_many(url: &str, count: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        channels.push(connect(url).await?);
    }
    Ok(channels)
}

/// Adds a server's startup time and memory figures, prefixed with `prefix` (e.g. `file_`).
pub fn add_server_figures(
    measurement: &mut Measurement,
    prefix: &str,
    server: &Server,
) -> anyhow::Result<()> {
    let now = server.memory()?;
    measurement
        .set(
            &format!("{prefix}startup_ms"),
            server.startup.as_secs_f64() * 1e3,
        )
        .set(&format!("{prefix}idle_rss_mib"), mib(server.idle.rss_kib))
        .set(&format!("{prefix}peak_rss_mib"), mib(now.peak_kib));
    Ok(())
}

/// What a closed loop did in its measured window.
#[derive(Debug)]
pub struct LoopOutcome {
    /// Calls started in the window (and completed).
    pub calls: u64,
    /// The window's length.
    pub elapsed: Duration,
    /// Each of those calls' latency.
    pub latencies: Latencies,
}

/// Runs `concurrency` workers, each calling `call` back to back (the next call starts when
/// the last one answers) for `warmup` then `duration`; only calls started after the warmup
/// are counted and timed. Worker `i` uses `clients[i % clients.len()]`, so the calls spread
/// evenly over the connections.
pub async fn closed_loop<C, F, Fut>(
    clients: &[C],
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    call: F,
) -> anyhow::Result<LoopOutcome>
where
    C: Clone + Send + 'static,
    F: Fn(C) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    anyhow::ensure!(!clients.is_empty(), "no connections to drive");
    let call = Arc::new(call);
    let measure_from = Instant::now() + warmup;
    let end = measure_from + duration;
    let mut workers = tokio::task::JoinSet::new();
    for index in 0..concurrency.max(1) {
        let client = clients[index % clients.len()].clone();
        let call = Arc::clone(&call);
        workers.spawn(async move {
            let mut latencies = Latencies::with_capacity(16 * 1024);
            let mut calls = 0u64;
            loop {
                let started = Instant::now();
                if started >= end {
                    break;
                }
                tokio::time::timeout(CALL_TIMEOUT, call(client.clone()))
                    .await
                    .context("a call did not answer within 30 s")??;
                if started >= measure_from {
                    latencies.record(started.elapsed());
                    calls += 1;
                }
            }
            anyhow::Ok((calls, latencies))
        });
    }
    let mut outcome = LoopOutcome {
        calls: 0,
        elapsed: duration,
        latencies: Latencies::default(),
    };
    while let Some(joined) = workers.join_next().await {
        let (calls, latencies) = joined.context("a load worker panicked")??;
        outcome.calls += calls;
        outcome.latencies.merge(latencies);
    }
    Ok(outcome)
}

/// Runs `call` once for each of `items`, `concurrency` at a time over `clients`, and times
/// the whole batch and each call.
pub async fn fixed_work<C, T, F, Fut>(
    clients: &[C],
    concurrency: usize,
    items: Vec<T>,
    call: F,
) -> anyhow::Result<LoopOutcome>
where
    C: Clone + Send + 'static,
    T: Clone + Send + Sync + 'static,
    F: Fn(C, T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    anyhow::ensure!(!clients.is_empty(), "no connections to drive");
    let call = Arc::new(call);
    let items = Arc::new(items);
    // Workers take the next item by index, so the fastest ones do more, as in a real queue.
    let next = Arc::new(AtomicUsize::new(0));
    let started_all = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for index in 0..concurrency.max(1) {
        let client = clients[index % clients.len()].clone();
        let (call, items, next) = (Arc::clone(&call), Arc::clone(&items), Arc::clone(&next));
        workers.spawn(async move {
            let mut latencies = Latencies::with_capacity(items.len() / concurrency.max(1) + 1);
            loop {
                let taken = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(taken) else {
                    break;
                };
                let started = Instant::now();
                tokio::time::timeout(CALL_TIMEOUT, call(client.clone(), item.clone()))
                    .await
                    .context("a call did not answer within 30 s")??;
                latencies.record(started.elapsed());
            }
            anyhow::Ok(latencies)
        });
    }
    let mut all = Latencies::with_capacity(items.len());
    while let Some(joined) = workers.join_next().await {
        all.merge(joined.context("a load worker panicked")??);
    }
    Ok(LoopOutcome {
        calls: all.len() as u64,
        elapsed: started_all.elapsed(),
        latencies: all,
    })
}

/// Deletes a scenario's data folder, reporting (not failing on) a leftover.
pub fn remove_dir(path: &Path) {
    if let Err(error) = std::fs::remove_dir_all(path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("warning: could not remove {}: {error}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum as _;

    use super::*;

    /// The name a scenario reports under is the one `--scenario` takes, so a reader can
    /// rerun any line of the report.
    #[test]
    fn report_names_are_the_flag_values() {
        for scenario in Scenario::ALL {
            let value = scenario
                .to_possible_value()
                .expect("every scenario is selectable");
            assert_eq!(value.get_name(), scenario.name());
        }
        assert_eq!(Scenario::value_variants().len(), Scenario::ALL.len());
    }
}
