//! The chat room under load, in two phases, each on a fresh server:
//!
//! - **Fan-out**: K clients (one connection each) join, then each sends M messages. Every
//!   message is delivered to all K members (the sender too), so K×K×M deliveries. At most
//!   [`WINDOW`] messages are in flight across the room (a message leaves the window once
//!   every member has it), so no member's queue on the server nears the 256 at which it is
//!   cut off, and the latency measured is the room's, not a backlog the bench built up.
//!   A message carries its id and send time (nanoseconds since a shared start), so every
//!   delivery's send-to-receive latency is known.
//! - **Joins**: N clients connect and join, `chat_join_parallelism` at a time; the time
//!   until each has seen its own join announcement is the join time. Once every
//!   announcement has been read the server's memory is sampled: its growth over N is the
//!   memory per connected client.
//! - **Fan-out against bare tonic**: the same K clients and M messages through the bare
//!   reference's ChatStream over one broadcast channel (`grpc_bench serve bare
//!   --chat-broadcast`: no names, no limits, no announcements); `fanout_ratio` is ours /
//!   bare in deliveries per second.
//! - **Joins against bare tonic**: N clients, in the same connection layout, each open
//!   ChatStream on the bare reference (`grpc_bench serve bare`, which echoes each message
//!   to its sender), send one message and read its echo; the bare server's growth over N
//!   is tonic's and hyper's own cost per connected client, the floor ours is compared with.
//!
//! - **Across replicas** (`--chat-replicas N`): the fan-out again with the room on a NATS
//!   bus (`streaming_server --chat-bus`, a fresh `nats-server -js` each time), first with
//!   every member on one replica, then with members spread round-robin over N replicas:
//!   what the bus costs against the in-process room, and what spreading members buys.
//!
//! The join phase's clients each have their own HTTP/2 connection, or, with
//! `chat_join_connections` = K > 0, share K connections round-robin (K = 1: every client
//! is a stream on one connection), which separates the per-connection cost from the
//! per-stream cost.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use grpc_suite::streaming as pb;
use pb::streaming_service_client::StreamingServiceClient;
use tokio::sync::{Barrier, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Streaming, transport::Channel};

use super::{CALL_TIMEOUT, Context, add_server_figures, connect, connect_many};
use crate::{
    report::{Measurement, mib},
    servers::{Server, ServerKind},
    stats::{Latencies, per_second},
};

/// The sender name of the server's announcements.
pub(crate) const SYSTEM: &str = "System";

/// How a join announcement ends.
const JOINED: &str = " has joined the chat";

/// Runs the fan-out phase, then the join phase.
pub async fn run(context: &Context<'_>) -> anyhow::Result<Measurement> {
    let settings = context.settings;
    let mut measurement = Measurement::new("chat");
    measurement
        .set("clients", settings.chat_clients as f64)
        .set("messages", settings.chat_messages as f64);

    let server = Server::start(ServerKind::Streaming, &context.server_dir("fanout"), &[]).await?;
    let (clients, messages) = (settings.chat_clients, settings.chat_messages);
    let ours = fan_out(&[server.url()], clients, messages, Room::Ours).await;
    let peak_fan_out = server.memory()?.peak_kib;
    server.stop();
    let ours_rate = ours.context("fan-out phase")?.record(&mut measurement, "");
    measurement.set("fanout_peak_rss_mib", mib(peak_fan_out));
    if settings.chat_replicas > 0 {
        bus_fan_outs(context, &mut measurement, ours_rate).await?;
    }

    let server = Server::start(
        ServerKind::Bare,
        &context.server_dir("bare-fanout"),
        &["--chat-broadcast"],
    )
    .await?;
    let bare = fan_out(&[server.url()], clients, messages, Room::BareBroadcast).await;
    server.stop();
    let bare_rate = bare
        .context("fan-out phase against the bare broadcast")?
        .record(&mut measurement, "bare_");
    measurement.set("fanout_ratio", ours_rate / bare_rate.max(f64::MIN_POSITIVE));

    let layout = JoinLayout {
        count: settings.chat_joins,
        parallelism: settings.chat_join_parallelism,
        connections: settings.chat_join_connections,
        echoes: settings.chat_echo_messages,
    };
    let server = Server::start(ServerKind::Streaming, &context.server_dir("joins"), &[]).await?;
    let joined = joins(&server, &layout).await;
    add_server_figures(&mut measurement, "", &server)?;
    server.stop();
    let joined = joined.context("join phase")?;

    let server = Server::start(ServerKind::Bare, &context.server_dir("bare"), &[]).await?;
    let echoed = echo_joins(&server, &layout).await;
    server.stop();
    let echoed = echoed.context("join phase against the bare reference")?;

    let clients = settings.chat_joins.max(1) as f64;
    let per_client = joined.growth_kib / clients;
    let bare_per_client = echoed.growth_kib / clients;
    measurement
        .set("joins", settings.chat_joins as f64)
        .set("join_connections", layout.connection_count() as f64)
        .set("join_ms", joined.elapsed.as_secs_f64() * 1e3)
        .set("rss_per_client_kib", per_client)
        .set("bare_rss_per_client_kib", bare_per_client)
        .set(
            "rss_ratio_to_bare",
            per_client / bare_per_client.max(f64::MIN_POSITIVE),
        )
        .set("bare_join_ms", echoed.elapsed.as_secs_f64() * 1e3);
    Ok(measurement)
}

/// What the fan-out phase measured.
struct FanOut {
    deliveries: u64,
    elapsed: Duration,
    latencies: Latencies,
}

impl FanOut {
    /// Sets `<prefix>deliveries_per_s`, `<prefix>p50_ms` and `<prefix>p99_ms`; returns the
    /// rate.
    fn record(mut self, measurement: &mut Measurement, prefix: &str) -> f64 {
        let rate = per_second(self.deliveries, self.elapsed);
        measurement
            .set(&format!("{prefix}deliveries_per_s"), rate)
            .set(
                &format!("{prefix}p50_ms"),
                self.latencies.quantile_us(0.50) / 1e3,
            )
            .set(
                &format!("{prefix}p99_ms"),
                self.latencies.quantile_us(0.99) / 1e3,
            );
        rate
    }
}

/// One connected chat member, as the bench holds it.
pub(crate) struct Member {
    /// Its request stream: a message sent here is said in the room.
    pub(crate) outgoing: mpsc::Sender<pb::ChatMessage>,
    /// Its response stream: what the room delivers to it.
    pub(crate) incoming: Streaming<pb::ChatMessage>,
}

/// Joins over `channel`; returns once the own announcement arrived.
pub(crate) async fn join(channel: Channel, queue: usize) -> anyhow::Result<Member> {
    let mut client = StreamingServiceClient::new(channel);
    let (outgoing, requests) = mpsc::channel(queue.max(1));
    let mut incoming = tokio::time::timeout(
        CALL_TIMEOUT,
        client.chat_stream(ReceiverStream::new(requests)),
    )
    .await
    .context("ChatStream did not answer")?
    .context("ChatStream")?
    .into_inner();
    let first = next_message(&mut incoming)
        .await?
        .context("the chat ended before announcing the join")?;
    // The room announces a join to the newcomer first of all.
    anyhow::ensure!(
        first.sender == SYSTEM && first.message.ends_with(JOINED),
        "expected a join announcement first, got {first:?}"
    );
    Ok(Member { outgoing, incoming })
}

/// The next message on `incoming`, waiting at most [`CALL_TIMEOUT`].
pub(crate) async fn next_message(
    incoming: &mut Streaming<pb::ChatMessage>,
) -> anyhow::Result<Option<pb::ChatMessage>> {
    tokio::time::timeout(CALL_TIMEOUT, incoming.message())
        .await
        .context("no chat message within 30 s")?
        .context("reading the chat stream")
}

/// The fan-out with the room on a NATS bus: every member on one replica, then spread
/// round-robin over `chat_replicas`; deliveries/s and latency of each, and their ratios to
/// each other and to the in-process room's `in_process` deliveries/s.
async fn bus_fan_outs(
    context: &Context<'_>,
    measurement: &mut Measurement,
    in_process: f64,
) -> anyhow::Result<()> {
    let settings = context.settings;
    let mut rates = Vec::new();
    for (label, replicas) in [("bus_one", 1), ("bus_spread", settings.chat_replicas)] {
        // A fresh NATS each time: the second run must not replay the first one's room.
        let nats = tokio::task::spawn_blocking(testkit::NatsServer::start)
            .await
            .context("the thread starting nats-server panicked")?
            .context("--chat-replicas needs nats-server (apt-get install nats-server)")?;
        let bus = ["--chat-bus".to_owned(), nats.url()];
        let bus: Vec<&str> = bus.iter().map(String::as_str).collect();
        let mut servers = Vec::with_capacity(replicas);
        for index in 0..replicas {
            let dir = context.server_dir(&format!("{label}-{index}"));
            servers.push(Server::start(ServerKind::Streaming, &dir, &bus).await?);
        }
        let urls: Vec<String> = servers.iter().map(Server::url).collect();
        let result = fan_out(
            &urls,
            settings.chat_clients,
            settings.chat_messages,
            Room::Ours,
        )
        .await;
        servers.into_iter().for_each(Server::stop);
        drop(nats);
        let rate = result
            .with_context(|| format!("fan-out over {replicas} replica(s)"))?
            .record(measurement, &format!("{label}_"));
        rates.push(rate);
    }
    measurement
        .set("bus_replicas", settings.chat_replicas as f64)
        .set(
            "bus_one_ratio_to_in_process",
            rates[0] / in_process.max(f64::MIN_POSITIVE),
        )
        .set(
            "bus_spread_ratio_to_one",
            rates[1] / rates[0].max(f64::MIN_POSITIVE),
        );
    Ok(())
}

/// Joins at `url`, retrying while the chat answers UNAVAILABLE (a replica on a bus accepts
/// members once it reaches NATS), for at most [`CALL_TIMEOUT`].
async fn join_when_ready(url: &str, queue: usize) -> anyhow::Result<Member> {
    let deadline = Instant::now() + CALL_TIMEOUT;
    loop {
        match join(connect(url).await?, queue).await {
            Err(error)
                if Instant::now() < deadline
                    && error
                        .downcast_ref::<tonic::Status>()
                        .is_some_and(|status| status.code() == tonic::Code::Unavailable) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            joined => return joined,
        }
    }
}

/// Which chat room the fan-out drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    /// Our streaming server's room: a member has joined once its announcement arrived.
    Ours,
    /// The bare broadcast reference: a member has joined once its call answered.
    BareBroadcast,
}

/// Opens ChatStream on the bare broadcast reference (subscribed once the call answers).
async fn join_bare(channel: Channel, queue: usize) -> anyhow::Result<Member> {
    let mut client = StreamingServiceClient::new(channel);
    let (outgoing, requests) = mpsc::channel(queue.max(1));
    let incoming = tokio::time::timeout(
        CALL_TIMEOUT,
        client.chat_stream(ReceiverStream::new(requests)),
    )
    .await
    .context("ChatStream did not answer")?
    .context("ChatStream")?
    .into_inner();
    Ok(Member { outgoing, incoming })
}

/// K members, member i on `urls[i % len]`, each sending M messages; see the module doc.
async fn fan_out(
    urls: &[String],
    clients: usize,
    messages: usize,
    room: Room,
) -> anyhow::Result<FanOut> {
    let mut members = Vec::with_capacity(clients);
    for index in 0..clients {
        let url = &urls[index % urls.len().max(1)];
        members.push(match room {
            Room::Ours => join_when_ready(url, messages + 1).await?,
            Room::BareBroadcast => join_bare(connect(url).await?, messages + 1).await?,
        });
    }
    let flow = Arc::new(Flow {
        window: Semaphore::new(WINDOW),
        receipts: (0..clients * messages).map(|_| AtomicU32::new(0)).collect(),
        members: u32::try_from(clients).context("too many clients")?,
        epoch: Instant::now(),
    });
    let expected = clients * messages;
    // Everyone has joined; the last one through the barrier starts the clock.
    let barrier = Arc::new(Barrier::new(2 * clients + 1));
    let mut tasks = tokio::task::JoinSet::new();
    // A member whose request stream ends leaves the room: every sender stays open until
    // all readers are done, though each sender task finishes after its last message.
    let mut keep_open = Vec::with_capacity(clients);
    for (index, Member { outgoing, incoming }) in members.into_iter().enumerate() {
        keep_open.push(outgoing.clone());
        let (sender_flow, sender_barrier) = (Arc::clone(&flow), Arc::clone(&barrier));
        tasks.spawn(async move {
            sender_barrier.wait().await;
            send_messages(outgoing, index, messages, &sender_flow).await?;
            Ok(Latencies::default())
        });
        let (reader_flow, reader_barrier) = (Arc::clone(&flow), Arc::clone(&barrier));
        tasks.spawn(async move {
            reader_barrier.wait().await;
            read_messages(incoming, expected, &reader_flow).await
        });
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut latencies = Latencies::with_capacity(clients * expected);
    while let Some(joined) = tasks.join_next().await {
        latencies.merge(joined.context("a chat client panicked")??);
    }
    drop(keep_open);
    Ok(FanOut {
        deliveries: latencies.len() as u64,
        elapsed: started.elapsed(),
        latencies,
    })
}

/// Messages in flight across the whole room: a message is out of flight once every member
/// has received it. Every member's queue on the server holds at most this many, so it stays
/// below the 256 at which the server cuts a member off. Without such a window, senders
/// that get their own messages back quickly outrun the server's per-connection encoding
/// for slower members, and those are (correctly) cut off.
const WINDOW: usize = 128;

/// The fan-out's shared flow control and clock.
struct Flow {
    /// One permit per message that may be in flight.
    window: Semaphore,
    /// Per message (`client * messages + sequence`): how many members received it.
    receipts: Vec<AtomicU32>,
    /// K.
    members: u32,
    /// Send times travel in the messages as nanoseconds since this instant.
    epoch: Instant,
}

/// Sends one member's `messages` messages, each when the window has room.
async fn send_messages(
    outgoing: mpsc::Sender<pb::ChatMessage>,
    client: usize,
    messages: usize,
    flow: &Flow,
) -> anyhow::Result<()> {
    for sequence in 0..messages {
        tokio::time::timeout(CALL_TIMEOUT, flow.window.acquire())
            .await
            .context("no room in the window for 30 s: messages are not arriving")?
            .context("window closed")?
            .forget();
        let message = pb::ChatMessage {
            sender: String::new(),
            // Which message, and when it left: the server passes the text on as it is.
            message: format!(
                "{} {}",
                client * messages + sequence,
                flow.epoch.elapsed().as_nanos()
            ),
            timestamp: "00:00:00".to_owned(),
            history: false,
        };
        outgoing.send(message).await.context("sending")?;
    }
    Ok(())
}

/// Reads one member's stream until all `expected` chat messages (everyone's) arrived,
/// recording each one's latency and releasing window room for fully delivered messages.
async fn read_messages(
    mut incoming: Streaming<pb::ChatMessage>,
    expected: usize,
    flow: &Flow,
) -> anyhow::Result<Latencies> {
    let mut latencies = Latencies::with_capacity(expected);
    while latencies.len() < expected {
        let message = next_message(&mut incoming)
            .await?
            .context("the chat ended early")?;
        if message.sender == SYSTEM {
            if message.message.ends_with(" has left the chat") {
                bail!("a member left during the fan-out: {}", message.message);
            }
            continue;
        }
        let (id, sent_at) = message
            .message
            .split_once(' ')
            .and_then(|(id, nanos)| Some((id.parse::<usize>().ok()?, nanos.parse::<u64>().ok()?)))
            .filter(|(id, _)| *id < flow.receipts.len())
            .with_context(|| format!("not a bench message: {:?}", message.message))?;
        let now = u64::try_from(flow.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        latencies.record(Duration::from_nanos(now.saturating_sub(sent_at)));
        if flow.receipts[id].fetch_add(1, Ordering::AcqRel) + 1 == flow.members {
            flow.window.add_permits(1);
        }
    }
    Ok(latencies)
}

/// What the join phase measured.
struct Joins {
    elapsed: Duration,
    growth_kib: f64,
}

/// How the join phase's clients reach a server.
struct JoinLayout {
    /// Clients (N).
    count: usize,
    /// Joins in progress at once.
    parallelism: usize,
    /// Connections shared round-robin; 0: one per client.
    connections: usize,
    /// Messages each client sends to the bare echo (and reads back), one at a time.
    echoes: usize,
}

impl JoinLayout {
    /// How many HTTP/2 connections the clients use in all.
    fn connection_count(&self) -> usize {
        if self.connections == 0 {
            self.count
        } else {
            self.connections.min(self.count.max(1))
        }
    }

    /// The shared connections, opened before the clock starts; empty for one per client.
    async fn shared(&self, url: &str) -> anyhow::Result<Arc<Vec<Channel>>> {
        Ok(Arc::new(if self.connections == 0 {
            Vec::new()
        } else {
            connect_many(url, self.connection_count()).await?
        }))
    }
}

/// Client `index`'s connection: a new one, or its share of `shared`.
async fn channel_for(index: usize, url: &str, shared: &[Channel]) -> anyhow::Result<Channel> {
    match shared.len() {
        0 => connect(url).await,
        len => Ok(shared[index % len].clone()),
    }
}

async fn joins(server: &Server, layout: &JoinLayout) -> anyhow::Result<Joins> {
    let (count, parallelism) = (layout.count, layout.parallelism);
    let url = server.url();
    let before = server.memory()?.rss_kib;
    let shared = layout.shared(&url).await?;
    // Every member reads every later member's announcement: n(n+1)/2 in all.
    let expected = (count * (count + 1) / 2) as u64;
    let announcements = Arc::new(AtomicU64::new(0));
    let cut_off = Arc::new(AtomicU64::new(0));
    // Joins in progress at once: connecting, and waiting for the own announcement.
    let in_progress = Arc::new(Semaphore::new(parallelism.max(1)));
    let started = Instant::now();
    let mut joining = tokio::task::JoinSet::new();
    for index in 0..count {
        let (url, shared) = (url.clone(), Arc::clone(&shared));
        let (announcements, cut_off) = (Arc::clone(&announcements), Arc::clone(&cut_off));
        let in_progress = Arc::clone(&in_progress);
        joining.spawn(async move {
            let permit = in_progress
                .acquire_owned()
                .await
                .context("join limiter closed")?;
            let member = join(channel_for(index, &url, &shared).await?, 1).await?;
            drop(permit);
            // Its own announcement was read by `join`; from here on, every later one is
            // read as it comes, so no queue builds up while the others are still joining.
            announcements.fetch_add(1, Ordering::Relaxed);
            let reader = tokio::spawn(drain(member.incoming, announcements, cut_off));
            anyhow::Ok((member.outgoing, reader))
        });
    }
    let mut senders = Vec::with_capacity(count);
    let mut readers = Vec::with_capacity(count);
    while let Some(joined) = joining.join_next().await {
        let (outgoing, reader) = joined.context("a joining client panicked")??;
        senders.push(outgoing);
        readers.push(reader);
    }
    let elapsed = started.elapsed();

    let settled = tokio::time::timeout(CALL_TIMEOUT, async {
        while announcements.load(Ordering::Relaxed) < expected
            && cut_off.load(Ordering::Relaxed) == 0
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let cut = cut_off.load(Ordering::Relaxed);
    if cut > 0 {
        bail!("{cut} of {count} joining clients were cut off for falling behind");
    }
    settled.with_context(|| {
        format!(
            "only {} of {expected} join announcements arrived",
            announcements.load(Ordering::Relaxed)
        )
    })?;
    let after = server.memory()?.rss_kib;
    for reader in readers {
        reader.abort();
    }
    drop(senders);
    Ok(Joins {
        elapsed,
        growth_kib: after.saturating_sub(before) as f64,
    })
}

/// The join phase against the bare reference: each client opens ChatStream (in the same
/// layout, as many at once), sends one message (or `echoes`, one after the other) and
/// reads its echo, and stays connected until the server's memory has been sampled.
async fn echo_joins(server: &Server, layout: &JoinLayout) -> anyhow::Result<Joins> {
    let url = server.url();
    let before = server.memory()?.rss_kib;
    let shared = layout.shared(&url).await?;
    let in_progress = Arc::new(Semaphore::new(layout.parallelism.max(1)));
    let started = Instant::now();
    let mut joining = tokio::task::JoinSet::new();
    let echoes = layout.echoes.max(1);
    for index in 0..layout.count {
        let (url, shared) = (url.clone(), Arc::clone(&shared));
        let in_progress = Arc::clone(&in_progress);
        joining.spawn(async move {
            let _permit = in_progress
                .acquire_owned()
                .await
                .context("join limiter closed")?;
            let channel = channel_for(index, &url, &shared).await?;
            echo(channel, index, echoes).await
        });
    }
    // Every client holds its stream open (both halves) until the sample is taken.
    let mut connected = Vec::with_capacity(layout.count);
    while let Some(joined) = joining.join_next().await {
        connected.push(joined.context("a joining client panicked")??);
    }
    let elapsed = started.elapsed();
    let after = server.memory()?.rss_kib;
    drop(connected);
    Ok(Joins {
        elapsed,
        growth_kib: after.saturating_sub(before) as f64,
    })
}

/// Opens ChatStream over `channel`, then `count` times sends a message and waits for it to
/// come back.
async fn echo(channel: Channel, index: usize, count: usize) -> anyhow::Result<Member> {
    let mut client = StreamingServiceClient::new(channel);
    let (outgoing, requests) = mpsc::channel(1);
    let message = |sequence: usize| pb::ChatMessage {
        sender: String::new(),
        message: format!("echo {index} {sequence}"),
        timestamp: "00:00:00".to_owned(),
        history: false,
    };
    // The first message goes with the call, as a chat client's first line would.
    outgoing
        .send(message(0))
        .await
        .context("queueing the message")?;
    let mut incoming = tokio::time::timeout(
        CALL_TIMEOUT,
        client.chat_stream(ReceiverStream::new(requests)),
    )
    .await
    .context("ChatStream did not answer")?
    .context("ChatStream")?
    .into_inner();
    for sequence in 0..count {
        if sequence > 0 {
            outgoing.send(message(sequence)).await.context("sending")?;
        }
        let echo = next_message(&mut incoming)
            .await?
            .context("the echo stream ended early")?;
        let sent = message(sequence);
        anyhow::ensure!(echo == sent, "expected {sent:?} back, got {echo:?}");
    }
    Ok(Member { outgoing, incoming })
}

/// Counts join announcements until the stream ends; notes a cut-off.
async fn drain(
    mut incoming: Streaming<pb::ChatMessage>,
    announcements: Arc<AtomicU64>,
    cut_off: Arc<AtomicU64>,
) {
    loop {
        match incoming.message().await {
            Ok(Some(message)) => {
                if message.sender == SYSTEM && message.message.ends_with(JOINED) {
                    announcements.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(None) => return,
            Err(_) => {
                cut_off.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}
