//! The chat across replicas: one room for the members of every `streaming_server` that
//! shares a NATS server (`--chat-bus nats://host:port`).
//!
//! # Design
//!
//! - **One order**: every join, chat message and leave is published to one JetStream
//!   stream ([`STREAM`], subject [`SUBJECT`]). JetStream gives each a stream sequence, and
//!   every replica consumes the stream with an ordered push consumer, applying each event
//!   to its own members in sequence order, as the in-process room does under its lock. So
//!   every member of every replica sees the same sequence.
//! - **Unique `Client(N)`**: N is the stream sequence of the member's join, which the
//!   server hands out once and never again (file storage keeps the sequence across NATS
//!   restarts). Numbers are unique but not consecutive: other events take sequences too.
//! - **Leaving**: a member that leaves (or is cut off) is published as a leave with the
//!   message id `leave-<N>`, so JetStream keeps one even if it is published twice; a leave
//!   for someone no longer in the room is ignored, so every member sees it announced once.
//! - **A dead replica**: each replica publishes a heartbeat every [`HEARTBEAT`]. When a
//!   replica has not been heard for [`DEAD_AFTER`], every survivor publishes `gone` for it
//!   with the message id `gone-<replica>`: JetStream's dedup keeps one, and applying it
//!   announces each of that replica's members as left, once, in the one order. A replica
//!   only judges others while it hears its own heartbeats back (it is not the one cut off).
//!   A replica that stops gracefully publishes its own `gone`.
//! - **Who is in the room**: each replica keeps the roster (every member, with its
//!   replica) from the events it consumed. A replica that starts replays the retained
//!   stream (which also gives it the history for newcomers), announces itself (`hello`),
//!   and every other replica answers with its member list (`roster`); replicas also repeat
//!   their list every [`ROSTER_EVERY`] heartbeats, which corrects a roster a lost leave
//!   left stale (the missing member is announced as left).
//! - **A replica counted out while alive** (cut off from NATS longer than [`DEAD_AFTER`]
//!   while the others were not): when it consumes its own `gone` it ends its members'
//!   streams with UNAVAILABLE, so they reconnect and join again under new numbers, rather
//!   than chatting on in a room that no longer counts them; what they sent meanwhile is
//!   dropped at every replica alike (a message from someone not in the roster).
//! - **NATS unreachable**: new joins get UNAVAILABLE and messages are refused to their
//!   sender; members already in are told with a System message when contact is lost and
//!   when it is back. The consumer resumes where it stopped, so nothing published in the
//!   meantime is skipped.
//! - **Bounded**: the stream keeps at most [`MAX_MESSAGES`] events, [`MAX_BYTES`] bytes
//!   and [`MAX_AGE`] (older events are dropped; history replayed to newcomers stays
//!   within the room's own limits). Messages waiting for their publish acknowledgement
//!   are bounded by the room's per-member backlog in bytes: past it, a sender is told
//!   its message was not sent. Each member's queue is the in-process room's mailbox,
//!   with the same limits.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, consumer::push::OrderedConfig, stream};
use bytes::Bytes;
use grpc_suite::streaming as pb;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt as _;
use tokio_util::task::TaskTracker;
use tonic::Status;

use super::{
    ChatRoom, Mailbox, Membership, RoomLimits, RoomState, StreamingError, left_message,
    member_name, message_cost, system_message,
};
use crate::activity::GaugeGuard;

/// The JetStream stream the room's events go through (created if missing).
pub const STREAM: &str = "STREAMING_CHAT";
/// The subject of the room's events.
pub const SUBJECT: &str = "streaming.chat.room";
/// Events the stream keeps at most (the oldest are dropped first).
pub const MAX_MESSAGES: i64 = 100_000;
/// Bytes the stream keeps at most.
pub const MAX_BYTES: i64 = 256 * 1024 * 1024;
/// How long the stream keeps an event at most.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// How long JetStream remembers message ids to drop duplicates (its default).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How often a replica says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a replica may stay silent before the others announce its members as left.
pub const DEAD_AFTER: Duration = Duration::from_secs(5);
/// A replica repeats its member list every this many heartbeats.
pub const ROSTER_EVERY: u32 = 15;
/// How long a join waits for the stream to take it before giving up with UNAVAILABLE.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopping replica waits for its `gone` to be stored.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(3);
/// Replicas whose `gone` the room remembers (to ignore their stale member lists).
const GONE_REMEMBERED: usize = 1024;
/// Pause between attempts to set up the stream while NATS cannot be reached.
const RETRY: Duration = Duration::from_secs(1);

const LOST_CONTACT: &str =
    "Lost contact with the chat bus: messages cannot be sent until it is back";
const CONTACT_BACK: &str = "Contact with the chat bus is back";
const REMOVED: &str = "this server lost contact with the chat and the room has counted you out; reconnect to join again";

/// The kinds of event in the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
enum Kind {
    /// Unknown to this version: ignored.
    Unspecified = 0,
    /// A replica started.
    Hello = 1,
    /// A replica is alive.
    Heartbeat = 2,
    /// A member joined (`number`: the replica's join ticket); its number is this event's
    /// sequence.
    Join = 3,
    /// Member `number` said `text` at `timestamp`.
    Say = 4,
    /// Member `number` left.
    Leave = 5,
    /// The replica's members are `members`; those of its members that joined at or
    /// before sequence `as_of` and are not listed have left.
    Roster = 6,
    /// Replica `gone` stopped or died: its members have left.
    Gone = 7,
}

/// One event of the room as stored in the stream (protobuf, so a later version can add
/// fields and kinds without breaking a running one).
#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(enumeration = "Kind", tag = "1")]
    kind: i32,
    /// The replica that published it.
    #[prost(string, tag = "2")]
    replica: String,
    #[prost(uint64, tag = "3")]
    number: u64,
    #[prost(string, tag = "4")]
    text: String,
    #[prost(string, tag = "5")]
    timestamp: String,
    #[prost(string, tag = "6")]
    gone: String,
    #[prost(uint64, repeated, tag = "7")]
    members: Vec<u64>,
    #[prost(uint64, tag = "8")]
    as_of: u64,
}

/// A connection to the NATS server a room's replicas share, made at startup (and
/// retried in the background while NATS cannot be reached).
#[derive(Debug)]
pub struct Bus {
    url: String,
    client: async_nats::Client,
    events: mpsc::UnboundedReceiver<async_nats::Event>,
    replica: Arc<str>,
}

impl Bus {
    /// Starts connecting to `url` (`nats://host:port`). Fails only on an unusable address;
    /// an unreachable server is retried, and the chat refuses joins until it answers.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let replica: Arc<str> = Arc::from(uuid::Uuid::new_v4().simple().to_string());
        let (sender, events) = mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .name(format!("streaming_server {replica}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .event_callback(move |event| {
                let sender = sender.clone();
                async move {
                    // The bus task may be gone at shutdown; nothing left to tell then.
                    let _ = sender.send(event);
                }
            })
            .connect(url)
            .await
            .map_err(|error| anyhow::anyhow!("chat bus {url}: {error}"))?;
        Ok(Self {
            url: url.to_owned(),
            client,
            events,
            replica,
        })
    }

    /// The id this replica goes by in the stream (a fresh UUID at each start).
    pub fn replica(&self) -> &str {
        &self.replica
    }
}

/// What a room on a bus holds: the way to its bus task.
#[derive(Debug)]
pub(super) struct Publisher {
    url: String,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    shared: Arc<Shared>,
    /// The budget of bytes of chat messages waiting for their publish acknowledgement.
    in_flight_budget: usize,
}

/// State the room and its bus task both read.
#[derive(Debug, Default)]
struct Shared {
    /// The stream is set up and NATS connected: joins and messages are accepted.
    ready: AtomicBool,
    next_ticket: AtomicU64,
    /// Bytes of chat messages published and not yet acknowledged.
    in_flight: AtomicUsize,
    /// Cancelled when the room closes: the bus task stops waiting for NATS.
    closing: tokio_util::sync::CancellationToken,
}

/// A request from the room to its bus task.
#[derive(Debug)]
enum Outgoing {
    Join {
        ticket: u64,
        reply: oneshot::Sender<Result<u64, String>>,
    },
    Say {
        number: u64,
        message: pb::ChatMessage,
        cost: usize,
    },
    Leave(u64),
    /// The room closed: say this replica is gone, then stop.
    Goodbye,
}

impl ChatRoom {
    /// A room whose members share one chat with every other replica on `bus`. Its bus
    /// task runs on `tasks`, and ends after [`ChatRoom::close`] (having announced this
    /// replica's members as left).
    pub fn with_bus(limits: RoomLimits, bus: Bus, tasks: &TaskTracker) -> Arc<Self> {
        let (room, requests, shared) = Self::on_bus(limits, &bus.url);
        let task = BusTask {
            room: Arc::downgrade(&room),
            replica: Arc::clone(&bus.replica),
            jetstream: jetstream::new(bus.client.clone()),
            client: bus.client,
            shared,
            last_applied: 0,
            hello: u64::MAX,
            heard: HashMap::new(),
            heard_myself: Instant::now(),
            declared: HashSet::new(),
            beats: 0,
        };
        tasks.spawn(task.run(requests, bus.events));
        room
    }

    /// A room whose requests go to the returned receiver (the bus task's, or a test's).
    fn on_bus(
        limits: RoomLimits,
        url: &str,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<Outgoing>, Arc<Shared>) {
        let (outgoing, requests) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let room = Arc::new(Self {
            limits,
            bus: Some(Publisher {
                url: url.to_owned(),
                outgoing,
                shared: Arc::clone(&shared),
                in_flight_budget: limits.max_backlog_bytes,
            }),
            state: std::sync::Mutex::new(RoomState::default()),
        });
        (room, requests, shared)
    }
}

impl Publisher {
    fn unavailable(&self) -> StreamingError {
        StreamingError::ChatBusUnavailable(format!(
            "the chat bus at {} cannot be reached now; try again later",
            self.url
        ))
    }

    /// Publishes a join and waits for its sequence, which is the member's number.
    pub(super) async fn join(
        &self,
        room: &Arc<ChatRoom>,
        counted: GaugeGuard,
    ) -> Result<Membership, StreamingError> {
        if !self.shared.ready.load(Ordering::Acquire) {
            return Err(self.unavailable());
        }
        let ticket = self.shared.next_ticket.fetch_add(1, Ordering::Relaxed) + 1;
        let mailbox = Arc::new(Mailbox::default());
        let (reply, number) = oneshot::channel();
        {
            let mut state = room.lock();
            if state.closed {
                return Err(StreamingError::ShuttingDown);
            }
            state.pending.insert(ticket, Arc::clone(&mailbox));
            if self
                .outgoing
                .send(Outgoing::Join { ticket, reply })
                .is_err()
            {
                state.pending.remove(&ticket);
                return Err(StreamingError::ShuttingDown);
            }
        }
        // If the caller goes away (the client cancelled its call) before the number comes
        // back, no one will read this mailbox: the join must be treated as abandoned.
        let mut abandoned = Abandoned {
            room,
            ticket: Some(ticket),
        };
        let outcome = match tokio::time::timeout(JOIN_TIMEOUT, number).await {
            Ok(Ok(Ok(number))) => Ok(number),
            Ok(Ok(Err(error))) => Err(error),
            Ok(Err(_)) => Err("the chat bus task stopped".to_owned()),
            Err(_) => Err(format!("no answer within {JOIN_TIMEOUT:?}")),
        };
        match outcome {
            Ok(number) => {
                abandoned.ticket = None;
                Ok(room.membership(number, ticket, mailbox, counted))
            }
            Err(error) => {
                tracing::warn!(%error, "chat join not published");
                Err(self.unavailable())
            }
        }
    }

    /// Queues a member's message for publishing; the reason if it cannot be sent.
    pub(super) fn say(&self, number: u64, message: &pb::ChatMessage) -> Result<(), String> {
        if !self.shared.ready.load(Ordering::Acquire) {
            return Err(format!(
                "the chat bus at {} cannot be reached now",
                self.url
            ));
        }
        let cost = message_cost(message);
        let in_flight = &self.shared.in_flight;
        let taken = in_flight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
            (now == 0 || now.saturating_add(cost) <= self.in_flight_budget)
                .then_some(now.saturating_add(cost))
        });
        if taken.is_err() {
            return Err("the chat bus is falling behind; try again in a moment".to_owned());
        }
        let request = Outgoing::Say {
            number,
            message: message.clone(),
            cost,
        };
        if self.outgoing.send(request).is_err() {
            in_flight.fetch_sub(cost, Ordering::AcqRel);
            return Err("the server is shutting down".to_owned());
        }
        Ok(())
    }

    /// Queues the leave of member `number` (kept even while NATS is away: it is published
    /// when it returns).
    pub(super) fn leave(&self, number: u64) {
        // After shutdown the bus task has announced the whole replica gone.
        let _ = self.outgoing.send(Outgoing::Leave(number));
    }

    /// Asks the bus task to announce this replica's members as left and stop.
    pub(super) fn close(&self) {
        let _ = self.outgoing.send(Outgoing::Goodbye);
        self.shared.closing.cancel();
    }
}

/// A join whose caller stopped waiting: its ticket leaves `pending`, so if the join was
/// stored after all, the bus task finds no one waiting for it and publishes the leave.
struct Abandoned<'a> {
    room: &'a ChatRoom,
    ticket: Option<u64>,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket {
            self.room.lock().pending.remove(&ticket);
        }
    }
}

/// What a finished publish was for.
enum Acked {
    Join(oneshot::Sender<Result<u64, String>>),
    Say { number: u64, cost: usize },
    Other(Kind),
}

/// The one task of a room on a bus: publishes the room's requests, consumes the stream
/// and applies it to the room, keeps the heartbeats.
struct BusTask {
    room: Weak<ChatRoom>,
    replica: Arc<str>,
    client: async_nats::Client,
    jetstream: jetstream::Context,
    shared: Arc<Shared>,
    /// The last stream sequence applied to the room.
    last_applied: u64,
    /// The sequence of this replica's own `hello`: later hellos are answered.
    hello: u64,
    /// When each other replica was last heard from.
    heard: HashMap<Arc<str>, Instant>,
    /// When this replica last consumed its own heartbeat.
    heard_myself: Instant,
    /// Replicas this one has already published `gone` for.
    declared: HashSet<Arc<str>>,
    beats: u32,
}

type Acks = tokio::task::JoinSet<(Acked, Result<u64, String>)>;

impl BusTask {
    async fn run(
        mut self,
        mut requests: mpsc::UnboundedReceiver<Outgoing>,
        mut events: mpsc::UnboundedReceiver<async_nats::Event>,
    ) {
        let mut acks = Acks::new();
        // Set up the stream, announce this replica and subscribe, retrying while NATS
        // cannot be reached; requests meanwhile are refused (joins) or dropped.
        let closing = self.shared.closing.clone();
        let mut messages = loop {
            tokio::select! {
                started = self.start() => match started {
                    Ok(messages) => break messages,
                    Err(error) => tracing::warn!(%error, "chat bus not ready; retrying"),
                },
                () = closing.cancelled() => return,
            }
            let deadline = tokio::time::sleep(RETRY);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    () = &mut deadline => break,
                    request = requests.recv() => match request {
                        None | Some(Outgoing::Goodbye) => return,
                        Some(Outgoing::Join { reply, .. }) => {
                            let _ = reply.send(Err("not connected".to_owned()));
                        }
                        Some(Outgoing::Say { cost, .. }) => {
                            self.shared.in_flight.fetch_sub(cost, Ordering::AcqRel);
                        }
                        Some(Outgoing::Leave(_)) => {}
                    },
                    Some(_) = events.recv() => {}
                }
            }
        };
        self.shared.ready.store(true, Ordering::Release);
        tracing::info!(replica = %self.replica, "chat bus ready");
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                request = requests.recv() => match request {
                    None => break,
                    Some(Outgoing::Goodbye) => {
                        self.goodbye(&mut acks).await;
                        break;
                    }
                    Some(request) => self.publish_request(request, &mut acks).await,
                },
                message = messages.next() => match message {
                    Some(Ok(message)) => self.consume(&message, &mut acks).await,
                    Some(Err(error)) => tracing::warn!(%error, "chat bus consumer"),
                    None => {
                        tracing::warn!("chat bus consumer ended; resubscribing");
                        match self.subscribe(self.last_applied + 1).await {
                            Ok(resumed) => messages = resumed,
                            Err(error) => {
                                tracing::warn!(%error, "chat bus: cannot resubscribe");
                                tokio::time::sleep(RETRY).await;
                            }
                        }
                    }
                },
                Some(done) = acks.join_next() => {
                    if let Ok((what, outcome)) = done {
                        self.acknowledged(what, outcome);
                    }
                }
                _ = heartbeat.tick() => self.beat(&mut acks).await,
                Some(event) = events.recv() => self.connection_event(event).await,
            }
        }
        self.shared.ready.store(false, Ordering::Release);
    }

    /// Creates (or finds) the stream, publishes `hello`, and subscribes from the stream's
    /// first retained event.
    async fn start(&mut self) -> anyhow::Result<jetstream::consumer::push::Ordered> {
        self.ensure_stream().await?;
        let hello = self.event(Kind::Hello);
        self.hello = self
            .jetstream
            .publish(SUBJECT, Bytes::from(hello.encode_to_vec()))
            .await?
            .await?
            .sequence;
        self.subscribe(1).await
    }

    async fn ensure_stream(&self) -> anyhow::Result<stream::Stream> {
        let config = stream::Config {
            name: STREAM.to_owned(),
            subjects: vec![SUBJECT.to_owned()],
            storage: stream::StorageType::File,
            max_messages: MAX_MESSAGES,
            max_bytes: MAX_BYTES,
            max_age: MAX_AGE,
            duplicate_window: DUPLICATE_WINDOW,
            discard: stream::DiscardPolicy::Old,
            description: Some("streaming_server's chat room across replicas".to_owned()),
            ..Default::default()
        };
        Ok(self.jetstream.get_or_create_stream(config).await?)
    }

    /// An ordered push consumer from `from` (a stream sequence) on.
    async fn subscribe(&self, from: u64) -> anyhow::Result<jetstream::consumer::push::Ordered> {
        let stream = self.ensure_stream().await?;
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                filter_subject: SUBJECT.to_owned(),
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from.max(1),
                },
                ..Default::default()
            })
            .await?;
        Ok(consumer.messages().await?)
    }

    fn event(&self, kind: Kind) -> Event {
        Event {
            kind: kind as i32,
            replica: self.replica.to_string(),
            ..Default::default()
        }
    }

    /// Publishes `event` (with a dedup id if given) and waits for its acknowledgement
    /// in `acks`.
    async fn publish(&self, event: &Event, id: Option<String>, what: Acked, acks: &mut Acks) {
        let mut publish =
            jetstream::message::PublishMessage::build().payload(Bytes::from(event.encode_to_vec()));
        if let Some(id) = id {
            publish = publish.message_id(id);
        }
        match self.jetstream.send_publish(SUBJECT, publish).await {
            Ok(ack) => {
                acks.spawn(async move {
                    let outcome = ack.await.map(|ack| ack.sequence);
                    (what, outcome.map_err(|error| error.to_string()))
                });
            }
            Err(error) => self.acknowledged(what, Err(error.to_string())),
        }
    }

    async fn publish_request(&self, request: Outgoing, acks: &mut Acks) {
        match request {
            Outgoing::Join { ticket, reply } => {
                let mut event = self.event(Kind::Join);
                event.number = ticket;
                self.publish(&event, None, Acked::Join(reply), acks).await;
            }
            Outgoing::Say {
                number,
                message,
                cost,
            } => {
                let mut event = self.event(Kind::Say);
                event.number = number;
                event.text = message.message;
                event.timestamp = message.timestamp;
                self.publish(&event, None, Acked::Say { number, cost }, acks)
                    .await;
            }
            Outgoing::Leave(number) => self.publish_leave(number, acks).await,
            Outgoing::Goodbye => {}
        }
    }

    async fn publish_leave(&self, number: u64, acks: &mut Acks) {
        let mut event = self.event(Kind::Leave);
        event.number = number;
        let id = format!("leave-{number}");
        self.publish(&event, Some(id), Acked::Other(Kind::Leave), acks)
            .await;
    }

    fn acknowledged(&self, what: Acked, outcome: Result<u64, String>) {
        match what {
            Acked::Join(reply) => {
                let _ = reply.send(outcome);
            }
            Acked::Say { number, cost } => {
                self.shared.in_flight.fetch_sub(cost, Ordering::AcqRel);
                if let Err(error) = outcome {
                    tracing::warn!(%error, "chat message not acknowledged by the bus");
                    if let Some(room) = self.room.upgrade() {
                        let notice =
                            format!("Your last message may not have been delivered: {error}");
                        let mut state = room.lock();
                        room.deliver_to(&mut state, number, system_message(notice));
                    }
                }
            }
            Acked::Other(kind) => {
                if let Err(error) = outcome {
                    tracing::warn!(?kind, %error, "chat bus event not acknowledged");
                }
            }
        }
    }

    /// Publishes this replica's `gone` (its members leave everywhere) and waits, bounded,
    /// for the bus to take it.
    async fn goodbye(&mut self, acks: &mut Acks) {
        self.shared.ready.store(false, Ordering::Release);
        let mut event = self.event(Kind::Gone);
        event.gone = self.replica.to_string();
        let id = format!("gone-{}", self.replica);
        let drained = async {
            self.publish(&event, Some(id), Acked::Other(Kind::Gone), acks)
                .await;
            while let Some(done) = acks.join_next().await {
                if let Ok((what, outcome)) = done {
                    self.acknowledged(what, outcome);
                }
            }
        };
        if tokio::time::timeout(GOODBYE_TIMEOUT, drained)
            .await
            .is_err()
        {
            tracing::warn!(
                "chat bus: leaving without confirmation that this replica's members were announced as left"
            );
        }
    }

    /// Applies one consumed event to the room.
    async fn consume(&mut self, message: &jetstream::Message, acks: &mut Acks) {
        let Ok(info) = message.info() else {
            return;
        };
        let sequence = info.stream_sequence;
        if sequence <= self.last_applied {
            return; // Seen already (a resubscription overlapping).
        }
        self.last_applied = sequence;
        let Ok(event) = Event::decode(message.payload.clone()) else {
            tracing::warn!(sequence, "chat bus: undecodable event ignored");
            return;
        };
        let Some(room) = self.room.upgrade() else {
            return;
        };
        let replica: Arc<str> = Arc::from(event.replica.as_str());
        let mine = *replica == *self.replica;
        if mine {
            self.heard_myself = Instant::now();
        } else if !self.declared.contains(&replica) {
            self.heard.insert(Arc::clone(&replica), Instant::now());
        }
        match Kind::try_from(event.kind).unwrap_or(Kind::Unspecified) {
            Kind::Unspecified | Kind::Heartbeat => {}
            Kind::Hello => {
                if !mine && sequence > self.hello {
                    self.publish_roster(&room, acks).await;
                }
            }
            Kind::Join => {
                let orphan = room.apply_join(sequence, &replica, mine.then_some(event.number));
                if orphan {
                    self.publish_leave(sequence, acks).await;
                }
            }
            Kind::Say => room.apply_say(event.number, event.text, event.timestamp),
            Kind::Leave => room.apply_leave(event.number),
            Kind::Roster => {
                if !mine {
                    room.apply_roster(&replica, event.as_of, &event.members);
                }
            }
            Kind::Gone => {
                let gone: Arc<str> = Arc::from(event.gone.as_str());
                // Heard from again (it was only cut off for a while), it is tracked anew.
                self.heard.remove(&gone);
                self.declared.remove(&gone);
                room.apply_gone(sequence, &gone, *gone == *self.replica);
            }
        }
    }

    async fn publish_roster(&self, room: &ChatRoom, acks: &mut Acks) {
        let mut event = self.event(Kind::Roster);
        event.as_of = self.last_applied;
        event.members = room.local_member_numbers();
        self.publish(&event, None, Acked::Other(Kind::Roster), acks)
            .await;
    }

    /// Every [`HEARTBEAT`]: says this replica is alive, repeats its member list now and
    /// then, and announces replicas silent for [`DEAD_AFTER`] as gone.
    async fn beat(&mut self, acks: &mut Acks) {
        if !self.shared.ready.load(Ordering::Acquire) {
            return;
        }
        let Some(room) = self.room.upgrade() else {
            return;
        };
        self.beats = self.beats.wrapping_add(1);
        if self.beats.is_multiple_of(ROSTER_EVERY) {
            self.publish_roster(&room, acks).await;
        } else {
            let event = self.event(Kind::Heartbeat);
            self.publish(&event, None, Acked::Other(Kind::Heartbeat), acks)
                .await;
        }
        // Judging others needs this replica to be current itself: its own heartbeat came
        // back recently.
        if self.heard_myself.elapsed() > DEAD_AFTER / 2 {
            return;
        }
        let silent: Vec<Arc<str>> = self
            .heard
            .iter()
            .filter(|(_, heard)| heard.elapsed() > DEAD_AFTER)
            .map(|(replica, _)| Arc::clone(replica))
            .collect();
        for replica in silent {
            tracing::warn!(%replica, "chat replica silent; announcing its members as left");
            self.heard.remove(&replica);
            self.declared.insert(Arc::clone(&replica));
            let mut event = self.event(Kind::Gone);
            event.gone = replica.to_string();
            let id = format!("gone-{replica}");
            self.publish(&event, Some(id), Acked::Other(Kind::Gone), acks)
                .await;
        }
    }

    async fn connection_event(&mut self, event: async_nats::Event) {
        let Some(room) = self.room.upgrade() else {
            return;
        };
        match event {
            async_nats::Event::Disconnected => {
                if self.shared.ready.swap(false, Ordering::AcqRel) {
                    tracing::warn!("chat bus disconnected");
                    room.tell_everyone_here(LOST_CONTACT);
                }
            }
            async_nats::Event::Connected => {
                if self.shared.ready.load(Ordering::Acquire) {
                    return;
                }
                // NATS may have restarted without its store: make sure the stream exists.
                if let Err(error) = self.ensure_stream().await {
                    tracing::warn!(%error, "chat bus reconnected but the stream is unusable");
                    return;
                }
                // Everyone was silent for the outage, this replica included: start the
                // clocks again rather than declaring the others dead.
                let now = Instant::now();
                self.heard_myself = now;
                for heard in self.heard.values_mut() {
                    *heard = now;
                }
                self.shared.ready.store(true, Ordering::Release);
                tracing::info!("chat bus reconnected");
                room.tell_everyone_here(CONTACT_BACK);
            }
            other => tracing::debug!(event = %other, "chat bus connection"),
        }
    }
}

/// Applying the stream's events: each is applied at every replica in the same order to
/// the same roster, so all agree on who is in the room and what everyone sees.
impl ChatRoom {
    /// Member `number` joined on `replica`; `ticket` if that is this replica. True if it
    /// is this replica's and no one waits for it any more (its leave must be published).
    fn apply_join(&self, number: u64, replica: &Arc<str>, ticket: Option<u64>) -> bool {
        let mut state = self.lock();
        if state.closed {
            return false;
        }
        state.roster.insert(number, Arc::clone(replica));
        let mut orphan = false;
        if let Some(ticket) = ticket {
            match state.pending.remove(&ticket) {
                Some(mailbox) => {
                    state.members.insert(number, mailbox);
                }
                None => orphan = true,
            }
        }
        self.welcome(&mut state, number);
        orphan
    }

    fn apply_say(&self, number: u64, text: String, timestamp: String) {
        let mut state = self.lock();
        // A message published by a member the room already counted out (its replica was
        // declared gone) is dropped everywhere alike.
        if state.closed || !state.roster.contains_key(&number) {
            return;
        }
        let message = pb::ChatMessage {
            sender: member_name(number),
            message: text,
            timestamp,
            history: false,
        };
        self.deliver_chat(&mut state, message);
    }

    fn apply_leave(&self, number: u64) {
        let mut state = self.lock();
        self.remove_from_roster(&mut state, number);
    }

    /// Removes `number` from the room and announces it; a member of this replica still
    /// connected (counted out by the others) is ended with UNAVAILABLE.
    fn remove_from_roster(&self, state: &mut RoomState, number: u64) {
        if state.closed || state.roster.remove(&number).is_none() {
            return;
        }
        if let Some(mailbox) = state.members.remove(&number) {
            tracing::warn!(member = %member_name(number), "counted out by the other replicas");
            mailbox.end(Err(Status::unavailable(format!(
                "you were removed from the chat: {REMOVED}"
            ))));
        }
        self.broadcast(state, left_message(number));
    }

    /// Replica `gone` is gone: its members leave (in number order). If it is this one (the
    /// others counted it out while it was cut off), its members are ended too.
    fn apply_gone(&self, sequence: u64, gone: &Arc<str>, is_me: bool) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        if state.gone.len() >= GONE_REMEMBERED
            && let Some(oldest) = state
                .gone
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(replica, _)| Arc::clone(replica))
        {
            state.gone.remove(&oldest);
        }
        state.gone.insert(Arc::clone(gone), sequence);
        if is_me {
            for (_, mailbox) in std::mem::take(&mut state.pending) {
                mailbox.end(Err(Status::unavailable(format!(
                    "the chat did not take you in: {REMOVED}"
                ))));
            }
        }
        let leaving: Vec<u64> = state
            .roster
            .iter()
            .filter(|(_, replica)| **replica == *gone)
            .map(|(&number, _)| number)
            .collect();
        for number in leaving {
            self.remove_from_roster(&mut state, number);
        }
    }

    /// `replica` says its members are `members`: those missing that joined at or before
    /// `as_of` have left (a leave was lost); those unknown here joined before this replica
    /// started consuming.
    fn apply_roster(&self, replica: &Arc<str>, as_of: u64, members: &[u64]) {
        let mut state = self.lock();
        // A list the replica sent before it learnt the others had counted it out is stale.
        if state.closed || state.gone.get(replica).is_some_and(|&gone| gone > as_of) {
            return;
        }
        let listed: HashSet<u64> = members.iter().copied().collect();
        let gone: Vec<u64> = state
            .roster
            .iter()
            .filter(|(number, owner)| {
                **owner == *replica && **number <= as_of && !listed.contains(number)
            })
            .map(|(&number, _)| number)
            .collect();
        for number in gone {
            self.remove_from_roster(&mut state, number);
        }
        for number in listed {
            state
                .roster
                .entry(number)
                .or_insert_with(|| Arc::clone(replica));
        }
    }
}

impl std::fmt::Debug for BusTask {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("BusTask")
            .field("replica", &self.replica)
            .field("last_applied", &self.last_applied)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    //! The room's side of the bus, without NATS: requests are read from the room's channel
    //! and the stream's events applied by hand, in the order a stream would deliver them.

    use super::*;
    use crate::{activity::Gauge, chat::Outbound, chat::tests::drain};

    const ME: &str = "me";

    fn limits() -> RoomLimits {
        RoomLimits {
            queue_capacity: 10,
            max_backlog_bytes: 1000,
            max_message_bytes: 2000,
            history_length: 5,
        }
    }

    fn text(message: &str) -> pb::ChatMessage {
        pb::ChatMessage {
            sender: "spoofed".into(),
            message: message.into(),
            timestamp: "12:00:00".into(),
            history: false,
        }
    }

    struct Fake {
        room: Arc<ChatRoom>,
        requests: mpsc::UnboundedReceiver<Outgoing>,
        gauge: Gauge,
        me: Arc<str>,
    }

    impl Fake {
        fn new() -> Self {
            let (room, requests, shared) = ChatRoom::on_bus(limits(), "nats://test");
            shared.ready.store(true, Ordering::Release);
            Self {
                room,
                requests,
                gauge: Gauge::default(),
                me: Arc::from(ME),
            }
        }

        /// A member of this replica whose join the stream stores at `sequence`.
        async fn join(&mut self, sequence: u64) -> (Membership, Outbound) {
            let joining = self.room.join(self.gauge.enter());
            let stream = async {
                let Some(Outgoing::Join { ticket, reply }) = self.requests.recv().await else {
                    panic!("a join request first");
                };
                assert!(!self.room.apply_join(sequence, &self.me, Some(ticket)));
                reply.send(Ok(sequence)).expect("the joiner waits");
            };
            let (joined, ()) = tokio::join!(joining, stream);
            let mut member = joined.expect("joined");
            let outbound = member.outbound();
            (member, outbound)
        }

        fn next_request(&mut self) -> Outgoing {
            self.requests.try_recv().expect("a request")
        }
    }

    /// Members of other replicas come and go through the stream's events; a roster that no
    /// longer lists a member who joined before it (a lost leave) announces the leave, once.
    #[tokio::test]
    async fn events_from_other_replicas_reach_members_here() {
        let mut fake = Fake::new();
        let (member, mut out) = fake.join(3).await;
        assert_eq!(member.name(), "Client(3)");
        let other: Arc<str> = Arc::from("other");
        fake.room.apply_join(5, &other, None);
        fake.room.apply_say(5, "hi".into(), "12:00:01".into());
        fake.room.apply_join(9, &other, None);
        assert_eq!(fake.room.member_numbers(), [3, 5, 9]);
        assert_eq!(fake.room.local_member_numbers(), [3]);
        // The roster as of sequence 6 lists no one: 5 left; 9 joined after it, so stays.
        fake.room.apply_roster(&other, 6, &[]);
        fake.room.apply_leave(5);
        assert_eq!(
            drain(&mut out).0,
            [
                "System: Client(3) has joined the chat",
                "System: You are Client(3)",
                "System: Client(5) has joined the chat",
                "Client(5): hi",
                "System: Client(9) has joined the chat",
                "System: Client(5) has left the chat",
            ]
        );
        member.say(text("/who"));
        assert_eq!(
            drain(&mut out).0,
            ["System: In the room (2): Client(3), Client(9)"]
        );
    }

    /// A member's message goes to the bus, not to the room: it is delivered (to its sender
    /// too) when the stream brings it back. Leaving publishes the leave, whose return is
    /// announced to the others once.
    #[tokio::test]
    async fn messages_and_leaves_go_through_the_bus() {
        let mut fake = Fake::new();
        let (one, mut out_one) = fake.join(1).await;
        let (mut two, mut out_two) = fake.join(2).await;
        drain(&mut out_one);
        drain(&mut out_two);
        one.say(text("hello"));
        assert!(
            drain(&mut out_one).0.is_empty(),
            "not before the stream has it"
        );
        let Outgoing::Say {
            number, message, ..
        } = fake.next_request()
        else {
            panic!("a say request");
        };
        assert_eq!((number, message.message.as_str()), (1, "hello"));
        fake.room.apply_say(1, "hello".into(), "12:00:00".into());
        assert_eq!(drain(&mut out_one).0, ["Client(1): hello"]);
        assert_eq!(drain(&mut out_two).0, ["Client(1): hello"]);

        two.leave(Ok(()));
        assert!(matches!(fake.next_request(), Outgoing::Leave(2)));
        fake.room.apply_leave(2);
        fake.room.apply_leave(2); // A duplicate changes nothing.
        assert_eq!(
            drain(&mut out_one).0,
            ["System: Client(2) has left the chat"]
        );
        assert_eq!(drain(&mut out_two).1, Some(tonic::Code::Ok));
    }

    /// A gone replica's members leave in number order, once; if the others counted this
    /// replica out, its own members are ended with UNAVAILABLE.
    #[tokio::test]
    async fn gone_replicas_take_their_members_with_them() {
        let mut fake = Fake::new();
        let (_member, mut out) = fake.join(1).await;
        let other: Arc<str> = Arc::from("other");
        for number in [4, 2] {
            fake.room.apply_join(number, &other, None);
        }
        drain(&mut out);
        fake.room.apply_gone(10, &other, false);
        fake.room.apply_gone(11, &other, false);
        assert_eq!(
            drain(&mut out).0,
            [
                "System: Client(2) has left the chat",
                "System: Client(4) has left the chat"
            ]
        );
        // A list `other` sent before it learnt it was gone does not bring anyone back.
        fake.room.apply_roster(&other, 9, &[2, 4]);
        assert_eq!(fake.room.member_numbers(), [1]);

        let me = Arc::clone(&fake.me);
        fake.room.apply_gone(12, &me, true);
        assert_eq!(drain(&mut out).1, Some(tonic::Code::Unavailable));
        assert!(fake.room.member_numbers().is_empty());
    }

    /// While the bus is away, joins are UNAVAILABLE and messages are refused to their
    /// sender alone; past the in-flight budget, too.
    #[tokio::test]
    async fn an_unreachable_or_saturated_bus_refuses_to_the_sender() {
        let mut fake = Fake::new();
        let (member, mut out) = fake.join(1).await;
        drain(&mut out);
        let big = "x".repeat(600);
        member.say(text(&big));
        member.say(text(&big));
        assert_eq!(
            drain(&mut out).0,
            [
                "System: Your message was not sent: the chat bus is falling behind; try again in a moment"
            ]
        );
        let Some(Publisher { shared, .. }) = &fake.room.bus else {
            panic!("on a bus");
        };
        shared.ready.store(false, Ordering::Release);
        member.say(text("hello?"));
        assert_eq!(
            drain(&mut out).0,
            [
                "System: Your message was not sent: the chat bus at nats://test cannot be reached now"
            ]
        );
        let refused = fake
            .room
            .join(fake.gauge.enter())
            .await
            .expect_err("refused");
        assert_eq!(
            tonic::Status::from(refused).code(),
            tonic::Code::Unavailable
        );
    }
}
