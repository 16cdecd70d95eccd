//! The chat room behind ChatStream: members, their names, one order for every message,
//! a bounded history for newcomers, and a bounded queue per member.
//!
//! Plain and synchronous so it is unit-tested without a network: the gRPC handler joins
//! the room, feeds it the client's messages through [`Membership::say`], and returns
//! [`Membership::outbound`] as the response stream.
//!
//! - **Names**: Client(1), Client(2)… in order of joining, from a counter that only grows,
//!   so a name is never reused while the server runs. A newcomer alone is told its name
//!   (`You are Client(3)`), after the join notice everyone sees.
//! - **One order**: every message is delivered to every queue while the room's lock is held,
//!   so the room's lock is the single ordering point and all members see the same sequence.
//! - **History**: the last `history_length` chat messages (and at most half a member's
//!   backlog in bytes) are replayed to a newcomer, marked `history = true`.
//! - **Commands**: `/who` is answered to the asker alone; a message over the length limit
//!   is refused to its sender alone with a System message, and its stream stays open.
//! - **Stored once**: a message fanned out to N members is one `Arc`, queued N times; each
//!   member's stream clones it only as tonic encodes it. Memory for a broadcast is one
//!   message, not N.
//! - **Bounded**: each member's [`Mailbox`] holds at most `queue_capacity` chat messages
//!   and `max_backlog_bytes` bytes (and a larger, still fixed, allowance of the room's
//!   short notices). Delivery never waits: a member whose mailbox is full is cut off (its
//!   backlog freed at once, its stream ended with RESOURCE_EXHAUSTED) and the others see it
//!   leave. A stuck client can thus neither delay the others nor grow the server's memory.
//! - **Across replicas** ([`nats`], `--chat-bus`): the ordering point moves from the
//!   room's lock to a NATS JetStream stream. Joins, messages and leaves are published there
//!   instead of delivered at once; every replica consumes the stream in its sequence order
//!   and applies each event to its own members exactly as the in-process room does, so all
//!   members of all replicas see one order. Without a bus the room is the in-process one,
//!   unchanged.

pub mod nats;

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
};

use grpc_suite::streaming as pb;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::{StreamingError, activity::GaugeGuard};

/// The sender name of the server's own announcements.
pub const SYSTEM_SENDER: &str = "System";

/// What the server says to everyone as it stops.
pub const SHUTDOWN_NOTICE: &str = "Server is shutting down";

/// The command a member sends to learn who is in the room.
pub const WHO_COMMAND: &str = "/who";

/// Format of the server's timestamps on System messages (and on client messages that
/// arrive without one): wall-clock time, as the old chat showed it.
pub const CHAT_TIME_FORMAT: &str = grpc_suite::wire_time::CHAT_TIME;

/// Join and leave notices may fill a mailbox to this many times its chat capacity. A burst
/// of joins (hundreds of clients arriving together) briefly outpaces every reader, and
/// cutting members off for the room's own announcements would turn a busy moment into a
/// mass disconnect; the allowance keeps that burst bounded all the same (at the default
/// 256, 4096 notices of about a hundred bytes per member).
const NOTICE_ALLOWANCE: usize = 16;

/// Slots a drained mailbox keeps; above this, the space a burst took is returned.
const IDLE_QUEUE_CAPACITY: usize = 16;

/// What a queued message is counted as against a member's byte budget: its text fields
/// plus a little for framing, so even empty messages cost something.
fn message_cost(message: &pb::ChatMessage) -> usize {
    message.sender.len() + message.message.len() + message.timestamp.len() + 16
}

/// The name of the member numbered `number`.
pub fn member_name(number: u64) -> String {
    format!("Client({number})")
}

/// The line a newcomer alone receives after joining.
pub fn you_are(number: u64) -> String {
    format!("You are {}", member_name(number))
}

fn system_message(text: String) -> pb::ChatMessage {
    pb::ChatMessage {
        sender: SYSTEM_SENDER.to_owned(),
        message: text,
        timestamp: chrono::Local::now().format(CHAT_TIME_FORMAT).to_string(),
        history: false,
    }
}

/// Limits of a room.
#[derive(Debug, Clone, Copy)]
pub struct RoomLimits {
    /// Chat messages that may wait for one member before it is cut off.
    pub queue_capacity: usize,
    /// Bytes of chat messages that may wait for one member before it is cut off (a
    /// message larger than this alone is still delivered to an empty queue).
    pub max_backlog_bytes: usize,
    /// The longest `message` text accepted, in bytes.
    pub max_message_bytes: usize,
    /// Chat messages replayed to a newcomer (0: none).
    pub history_length: usize,
}

/// The chat room shared by every ChatStream call.
#[derive(Debug)]
pub struct ChatRoom {
    limits: RoomLimits,
    /// Where the one order is decided: `None`, this room's lock (one process); `Some`, the
    /// NATS stream every replica consumes.
    bus: Option<nats::Publisher>,
    /// Held only while delivering to in-memory queues, never across an await; it orders
    /// every message, so holding it for a whole broadcast is the point.
    state: Mutex<RoomState>,
}

#[derive(Debug, Default)]
struct RoomState {
    /// The last number handed out; only grows.
    last_number: u64,
    members: BTreeMap<u64, Arc<Mailbox>>,
    /// The last chat messages, oldest first, for newcomers; the same `Arc`s the members'
    /// queues hold, so keeping them costs no copy.
    history: VecDeque<Arc<pb::ChatMessage>>,
    /// [`message_cost`] of `history`, kept at most half a member's byte budget so a
    /// newcomer's replay can never by itself cut the newcomer off.
    history_bytes: usize,
    /// Set by [`ChatRoom::close`]; no one may join after.
    closed: bool,
    /// With a bus: everyone in the room, on every replica, by number, with the replica
    /// that serves it, as the stream's events so far say (`members` holds this replica's
    /// own). Empty without a bus.
    roster: BTreeMap<u64, Arc<str>>,
    /// With a bus: this replica's members whose join is published but not yet consumed,
    /// by join ticket.
    pending: HashMap<u64, Arc<Mailbox>>,
    /// With a bus: replicas announced gone, with the sequence of that announcement.
    gone: HashMap<Arc<str>, u64>,
}

impl ChatRoom {
    /// An empty room.
    pub fn new(limits: RoomLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            bus: None,
            state: Mutex::new(RoomState::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, RoomState> {
        // A panic while holding the lock leaves plain data (maps, queues) in a usable
        // state, so a poisoned lock is taken over rather than taking the room down.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a member under the next number, announces it to everyone (the newcomer
    /// included), tells the newcomer alone its name, then replays the room's history to
    /// it. `counted` is held for as long as the membership lives.
    ///
    /// With a bus the join is published and the member's number is the stream sequence of
    /// that join (unique across replicas, never reused); the announcement, the name and the
    /// history reach the newcomer once this replica consumes the join, in the stream's
    /// order. UNAVAILABLE if the bus cannot be reached.
    pub async fn join(self: &Arc<Self>, counted: GaugeGuard) -> Result<Membership, StreamingError> {
        match &self.bus {
            None => self.join_here(counted),
            Some(bus) => bus.join(self, counted).await,
        }
    }

    /// [`ChatRoom::join`] in the in-process room: the lock is the ordering point.
    fn join_here(self: &Arc<Self>, counted: GaugeGuard) -> Result<Membership, StreamingError> {
        let mut state = self.lock();
        if state.closed {
            return Err(StreamingError::ShuttingDown);
        }
        state.last_number += 1;
        let number = state.last_number;
        let mailbox = Arc::new(Mailbox::default());
        state.members.insert(number, Arc::clone(&mailbox));
        self.welcome(&mut state, number);
        drop(state);
        Ok(self.membership(number, 0, mailbox, counted))
    }

    fn membership(
        self: &Arc<Self>,
        number: u64,
        ticket: u64,
        mailbox: Arc<Mailbox>,
        counted: GaugeGuard,
    ) -> Membership {
        Membership {
            room: Arc::clone(self),
            number,
            ticket,
            name: member_name(number),
            mailbox,
            outbound_taken: false,
            left: false,
            _counted: counted,
        }
    }

    /// Announces member `number` (already in `members`) to everyone, tells it its name and
    /// replays the history to it.
    fn welcome(&self, state: &mut RoomState, number: u64) {
        let name = member_name(number);
        self.broadcast(state, system_message(format!("{name} has joined the chat")));
        self.deliver_to(state, number, system_message(you_are(number)));
        if let Some(mailbox) = state.members.get(&number) {
            for message in &state.history {
                if !mailbox.push(Queued::history(Arc::clone(message)), &self.limits) {
                    break; // Cannot happen within the history's own bounds; stop if it did.
                }
            }
            tracing::info!(member = %name, "joined the chat");
        }
    }

    /// The members now, by number: every replica's with a bus, this one's without.
    pub fn member_numbers(&self) -> Vec<u64> {
        let state = self.lock();
        if self.bus.is_some() {
            state.roster.keys().copied().collect()
        } else {
            state.members.keys().copied().collect()
        }
    }

    /// This replica's own members, by number (all of them without a bus).
    pub fn local_member_numbers(&self) -> Vec<u64> {
        self.lock().members.keys().copied().collect()
    }

    /// Bytes of distinct messages the room holds now, in members' queues and its history
    /// ([`message_cost`] each, a message shared by many queues counted once): what the
    /// room's memory is, give or take the queues' own slots.
    pub fn held_bytes(&self) -> usize {
        let state = self.lock();
        let mut seen = HashSet::new();
        let mut total = 0;
        let queued = state.members.values().flat_map(|mailbox| {
            let inner = mailbox.lock();
            inner
                .queue
                .iter()
                .map(|queued| Arc::clone(&queued.message))
                .collect::<Vec<_>>()
        });
        for message in state.history.iter().cloned().chain(queued) {
            if seen.insert(Arc::as_ptr(&message)) {
                total += message_cost(&message);
            }
        }
        total
    }

    /// Tells every member the server is shutting down, ends every stream cleanly after
    /// that message, and refuses new members.
    ///
    /// With a bus, this replica's members are announced as left to the other replicas in
    /// one event, and the bus's tasks end after publishing it.
    pub fn close(&self) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        state.closed = true;
        state.history.clear();
        state.history_bytes = 0;
        let notice = Arc::new(system_message(SHUTDOWN_NOTICE.to_owned()));
        let pending = std::mem::take(&mut state.pending).into_values();
        for mailbox in std::mem::take(&mut state.members)
            .into_values()
            .chain(pending)
        {
            // Even a member whose queue is full gets the notice: one more message is
            // bounded, and the stream ends right after it.
            mailbox.push_unbounded(Queued::live(Arc::clone(&notice)));
            mailbox.end(Ok(()));
        }
        drop(state);
        if let Some(bus) = &self.bus {
            bus.close();
        }
    }

    /// Tells this replica's members `text` as a System message (the bus's state).
    fn tell_everyone_here(&self, text: &str) {
        let mut state = self.lock();
        self.broadcast(&mut state, system_message(text.to_owned()));
    }

    /// A member of this replica has been removed from `members` (cut off or leaving):
    /// the others must learn it. In-process the notice is queued for `pending` broadcast;
    /// with a bus the leave is published and reaches everyone in the stream's order.
    fn announce_left(&self, number: u64, pending: &mut VecDeque<Arc<pb::ChatMessage>>) {
        match &self.bus {
            None => pending.push_back(Arc::new(left_message(number))),
            Some(bus) => bus.leave(number),
        }
    }

    /// Delivers `message` to every member, in the one order. A member whose queue is full
    /// is cut off, and its leaving is delivered the same way, which can cut off more.
    fn broadcast(&self, state: &mut RoomState, message: pb::ChatMessage) {
        let mut pending = VecDeque::from([Arc::new(message)]);
        while let Some(message) = pending.pop_front() {
            let mut fell_behind = Vec::new();
            for (&number, mailbox) in &state.members {
                if !mailbox.push(Queued::live(Arc::clone(&message)), &self.limits) {
                    fell_behind.push(number);
                }
            }
            let reached = state.members.len().saturating_sub(fell_behind.len());
            grpc_suite::metrics::CHAT_MESSAGES_FANNED_OUT.inc_by(reached as u64);
            for number in fell_behind {
                if self.cut_off(state, number) {
                    self.announce_left(number, &mut pending);
                }
            }
        }
    }

    /// Delivers `message` to one member alone; if its queue is full it is cut off and the
    /// others see it leave.
    fn deliver_to(&self, state: &mut RoomState, number: u64, message: pb::ChatMessage) {
        let Some(mailbox) = state.members.get(&number) else {
            return;
        };
        if !mailbox.push(Queued::live(Arc::new(message)), &self.limits)
            && self.cut_off(state, number)
        {
            self.broadcast_left(state, number);
        }
    }

    /// Makes a member removed from `members` known to have left (see
    /// [`ChatRoom::announce_left`]).
    fn broadcast_left(&self, state: &mut RoomState, number: u64) {
        let mut pending = VecDeque::new();
        self.announce_left(number, &mut pending);
        for notice in pending {
            self.broadcast(state, Arc::unwrap_or_clone(notice));
        }
    }

    /// Delivers a member's chat message to everyone here, in the one order, and keeps it
    /// for newcomers.
    fn deliver_chat(&self, state: &mut RoomState, message: pb::ChatMessage) {
        let shared = Arc::new(message);
        let mut fell_behind = Vec::new();
        for (&number, mailbox) in &state.members {
            if !mailbox.push(Queued::live(Arc::clone(&shared)), &self.limits) {
                fell_behind.push(number);
            }
        }
        let reached = state.members.len().saturating_sub(fell_behind.len());
        grpc_suite::metrics::CHAT_MESSAGES_FANNED_OUT.inc_by(reached as u64);
        self.remember(state, shared);
        for number in fell_behind {
            if self.cut_off(state, number) {
                self.broadcast_left(state, number);
            }
        }
    }

    /// Removes a member that fell behind and ends its stream with the reason; true if it
    /// was still a member.
    fn cut_off(&self, state: &mut RoomState, number: u64) -> bool {
        let Some(mailbox) = state.members.remove(&number) else {
            return false;
        };
        tracing::warn!(member = %member_name(number), "cut off: fell too far behind");
        grpc_suite::metrics::CHAT_MEMBERS_CUT_OFF.inc();
        mailbox.end(Err(StreamingError::FellBehind {
            capacity: self.limits.queue_capacity,
            bytes: self.limits.max_backlog_bytes,
        }
        .into()));
        true
    }

    /// Keeps `message` for newcomers, dropping the oldest past the history's bounds.
    fn remember(&self, state: &mut RoomState, message: Arc<pb::ChatMessage>) {
        if self.limits.history_length == 0 {
            return;
        }
        state.history_bytes += message_cost(&message);
        state.history.push_back(message);
        let byte_budget = self.limits.max_backlog_bytes / 2;
        while state.history.len() > self.limits.history_length
            || (state.history_bytes > byte_budget && !state.history.is_empty())
        {
            if let Some(oldest) = state.history.pop_front() {
                state.history_bytes -= message_cost(&oldest);
            }
        }
    }
}

fn left_message(number: u64) -> pb::ChatMessage {
    system_message(format!("{} has left the chat", member_name(number)))
}

/// One client's place in the room. Dropping it leaves the room (announced to the others),
/// whatever ended the client's stream.
#[derive(Debug)]
pub struct Membership {
    room: Arc<ChatRoom>,
    number: u64,
    /// With a bus, the ticket the member waits under in `pending` until its join is
    /// consumed; 0 without.
    ticket: u64,
    name: String,
    mailbox: Arc<Mailbox>,
    /// The mailbox has one reader: a second [`Membership::outbound`] gets an ended stream.
    outbound_taken: bool,
    /// Set by the first [`Membership::leave`], so the explicit leave and the one on drop
    /// announce the leaving once.
    left: bool,
    /// Counts this member in the service's gauge until the membership is dropped.
    _counted: GaugeGuard,
}

impl Membership {
    /// `Client(N)`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The member's stream of messages. Dropping it (tonic does when the client goes away)
    /// is observed by [`Membership::gone`]. A second call gets an already-ended stream.
    pub fn outbound(&mut self) -> Outbound {
        let mailbox = if self.outbound_taken {
            let ended = Mailbox::default();
            ended.end(Ok(()));
            Arc::new(ended)
        } else {
            self.outbound_taken = true;
            Arc::clone(&self.mailbox)
        };
        Outbound { mailbox }
    }

    /// Resolves once this member's stream is over for the server's side: the outbound
    /// stream was dropped, the member was cut off, or the room closed.
    pub async fn gone(&self) {
        self.mailbox.gone.cancelled().await;
    }

    /// Handles one message from this member. `/who` is answered to the member alone with
    /// who is in the room; a message over the length limit is refused to the member alone
    /// with a System message naming the limit; anything else goes to everyone as this
    /// member (overwriting `sender`, keeping the client's timestamp, or the server's time
    /// if it gave none) and into the history. A member already cut off is ignored.
    ///
    /// With a bus the message is published, and reaches everyone (its sender too) in the
    /// stream's order; if the bus is unreachable or too far behind, the sender alone is
    /// told it was not sent.
    pub fn say(&self, mut message: pb::ChatMessage) {
        let mut state = self.room.lock();
        let waiting = self.room.bus.is_some() && state.pending.contains_key(&self.ticket);
        if !state.members.contains_key(&self.number) && !waiting {
            return;
        }
        if message.message.trim() == WHO_COMMAND {
            // With a bus, everyone on every replica as this replica knows them now.
            let names: Vec<String> = if self.room.bus.is_some() {
                state.roster.keys().map(|&n| member_name(n)).collect()
            } else {
                state.members.keys().map(|&n| member_name(n)).collect()
            };
            let answer = format!("In the room ({}): {}", names.len(), names.join(", "));
            self.room
                .deliver_to(&mut state, self.number, system_message(answer));
            return;
        }
        let limit = self.room.limits.max_message_bytes;
        if message.message.len() > limit {
            let refusal = StreamingError::ChatMessageTooLong {
                size: message.message.len(),
                limit,
            };
            let notice = system_message(format!("Your message was not sent: {refusal}"));
            self.room.deliver_to(&mut state, self.number, notice);
            drop(state);
            tracing::info!(member = %self.name, error = %refusal, "message refused");
            return;
        }
        message.sender.clone_from(&self.name);
        message.history = false;
        if message.timestamp.is_empty() {
            message.timestamp = chrono::Local::now().format(CHAT_TIME_FORMAT).to_string();
        }
        match &self.room.bus {
            None => self.room.deliver_chat(&mut state, message),
            Some(bus) => {
                if let Err(refusal) = bus.say(self.number, &message) {
                    let notice = system_message(format!("Your message was not sent: {refusal}"));
                    self.room.deliver_to(&mut state, self.number, notice);
                }
            }
        }
    }

    /// Leaves the room: the member's stream ends with `outcome` (after its queued messages
    /// if `Ok`, at once if an error), and the others see it leave. Idempotent.
    pub fn leave(&mut self, outcome: Result<(), Status>) {
        if self.left {
            return;
        }
        self.left = true;
        let mut state = self.room.lock();
        let was_waiting = self.room.bus.is_some() && state.pending.remove(&self.ticket).is_some();
        if state.members.remove(&self.number).is_some() || was_waiting {
            self.room.broadcast_left(&mut state, self.number);
            drop(state);
            tracing::info!(member = %self.name, "left the chat");
        }
        self.mailbox.end(outcome);
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.leave(Ok(()));
    }
}

/// One queued message: shared with every other queue it was delivered to, and whether
/// this member gets it as history.
#[derive(Debug)]
struct Queued {
    message: Arc<pb::ChatMessage>,
    history: bool,
}

impl Queued {
    fn live(message: Arc<pb::ChatMessage>) -> Self {
        Self {
            message,
            history: false,
        }
    }

    fn history(message: Arc<pb::ChatMessage>) -> Self {
        Self {
            message,
            history: true,
        }
    }

    fn is_notice(&self) -> bool {
        self.message.sender == SYSTEM_SENDER
    }
}

/// A bounded queue of messages for one member, read by its [`Outbound`] stream.
#[derive(Debug, Default)]
struct Mailbox {
    state: Mutex<MailboxState>,
    /// Cancelled when the stream is over for the server: the reader task watches it so a
    /// dropped connection or a cut-off member stops reading the client's messages.
    gone: CancellationToken,
}

#[derive(Debug, Default)]
struct MailboxState {
    queue: VecDeque<Queued>,
    /// How many of the queued messages are members' chat (not System notices): the count
    /// the member's capacity limits.
    chat_queued: usize,
    /// [`message_cost`] of the queued chat messages: what the byte budget limits.
    chat_bytes: usize,
    /// How the stream ends once the queue is empty: `Ok` cleanly, `Err` with a status
    /// (an error skips the queue: the member is cut off, not served its backlog).
    end: Option<Result<(), Status>>,
    /// The reader waiting for a message; kept under the same lock as the queue so a push
    /// can never slip between the reader's check and its sleep.
    waker: Option<Waker>,
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, MailboxState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a message; false if the queue is full: for chat, `queue_capacity` messages or
    /// `max_backlog_bytes` bytes already waiting (one message alone always fits); for a
    /// System notice, [`NOTICE_ALLOWANCE`] times the capacity in messages of any kind.
    fn push(&self, queued: Queued, limits: &RoomLimits) -> bool {
        let mut state = self.lock();
        if state.end.is_some() {
            return true; // Ending anyway; nothing more is delivered.
        }
        let is_notice = queued.is_notice();
        let cost = message_cost(&queued.message);
        let full = if is_notice {
            state.queue.len() >= limits.queue_capacity.saturating_mul(NOTICE_ALLOWANCE)
        } else {
            state.chat_queued >= limits.queue_capacity
                || (state.chat_queued > 0
                    && state.chat_bytes.saturating_add(cost) > limits.max_backlog_bytes)
        };
        if full {
            return false;
        }
        if !is_notice {
            state.chat_queued += 1;
            state.chat_bytes += cost;
        }
        state.queue.push_back(queued);
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    fn push_unbounded(&self, queued: Queued) {
        let unbounded = RoomLimits {
            queue_capacity: usize::MAX,
            max_backlog_bytes: usize::MAX,
            max_message_bytes: usize::MAX,
            history_length: 0,
        };
        self.push(queued, &unbounded);
    }

    /// Ends the stream with `outcome`, unless it already has an ending. An error frees the
    /// backlog at once.
    fn end(&self, outcome: Result<(), Status>) {
        let mut state = self.lock();
        if state.end.is_none() {
            if outcome.is_err() {
                state.queue = VecDeque::new();
                state.chat_queued = 0;
                state.chat_bytes = 0;
            }
            state.end = Some(outcome);
        }
        let waker = state.waker.take();
        drop(state);
        self.gone.cancel();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// One member's outbound stream: its queued messages, then its ending.
#[derive(Debug)]
pub struct Outbound {
    mailbox: Arc<Mailbox>,
}

impl Stream for Outbound {
    type Item = Result<pb::ChatMessage, Status>;

    fn poll_next(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut state = self.mailbox.lock();
        if matches!(state.end, Some(Err(_))) {
            // Deliver the error once, then end.
            if let Some(Err(status)) = state.end.replace(Ok(())) {
                return Poll::Ready(Some(Err(status)));
            }
        }
        if let Some(queued) = state.queue.pop_front() {
            if !queued.is_notice() {
                state.chat_queued -= 1;
                state.chat_bytes -= message_cost(&queued.message);
            }
            // A burst (a wave of joins) grows the queue; a VecDeque never gives that space
            // back by itself, and with a thousand members it was ~10 KiB each, measured.
            if state.queue.is_empty() && state.queue.capacity() > IDLE_QUEUE_CAPACITY {
                state.queue.shrink_to(IDLE_QUEUE_CAPACITY);
            }
            drop(state);
            // The one copy per member, made just before tonic encodes it and dropped
            // right after: a queue holds only the shared message.
            let mut message = Arc::unwrap_or_clone(queued.message);
            message.history = queued.history;
            return Poll::Ready(Some(Ok(message)));
        }
        if state.end.is_some() {
            return Poll::Ready(None);
        }
        state.waker = Some(context.waker().clone());
        Poll::Pending
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        // tonic drops the response stream when the client cancels or the connection dies:
        // that is how the server learns to make the member leave.
        self.mailbox.gone.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activity::Gauge;
    use tokio_stream::StreamExt as _;

    fn room(queue_capacity: usize) -> (Arc<ChatRoom>, Gauge) {
        let limits = RoomLimits {
            queue_capacity,
            max_backlog_bytes: 1 << 20,
            max_message_bytes: 10,
            history_length: 0,
        };
        (ChatRoom::new(limits), Gauge::default())
    }

    fn text(message: &str) -> pb::ChatMessage {
        pb::ChatMessage {
            sender: "spoofed".into(),
            message: message.into(),
            timestamp: "12:00:00".into(),
            history: false,
        }
    }

    /// Everything ready in an outbound stream now, as `sender: message` lines, and whether
    /// it has ended (`Some(code)`) or is waiting for more (`None`).
    pub(super) fn drain(outbound: &mut Outbound) -> (Vec<String>, Option<tonic::Code>) {
        let waker = Waker::noop();
        let mut context = Context::from_waker(waker);
        let mut lines = Vec::new();
        loop {
            match Pin::new(&mut *outbound).poll_next(&mut context) {
                Poll::Ready(Some(Ok(message))) => {
                    lines.push(format!("{}: {}", message.sender, message.message));
                }
                Poll::Ready(Some(Err(status))) => {
                    lines.push(format!("error: {}", status.message()));
                    return (lines, Some(status.code()));
                }
                Poll::Ready(None) => return (lines, Some(tonic::Code::Ok)),
                Poll::Pending => return (lines, None),
            }
        }
    }

    /// Numbers count up from 1 and are never reused; joins reach everyone, the newcomer
    /// too; leaves reach the others; senders are overwritten; all see one order.
    #[test]
    fn names_joins_leaves_and_one_order() {
        let (room, gauge) = room(100);
        let mut one = room.join_here(gauge.enter()).expect("join");
        let mut out_one = one.outbound();
        let mut two = room.join_here(gauge.enter()).expect("join");
        let mut out_two = two.outbound();
        assert_eq!((one.name(), two.name()), ("Client(1)", "Client(2)"));
        one.say(text("hi"));
        two.say(text("hello"));
        two.leave(Ok(()));
        drop(two);
        let mut three = room.join_here(gauge.enter()).expect("join");
        assert_eq!(three.name(), "Client(3)", "numbers are not reused");
        let mut out_three = three.outbound();
        three.say(text("yo"));
        drop(three);

        let (lines, end) = drain(&mut out_one);
        assert_eq!(
            lines,
            [
                "System: Client(1) has joined the chat",
                "System: You are Client(1)",
                "System: Client(2) has joined the chat",
                "Client(1): hi",
                "Client(2): hello",
                "System: Client(2) has left the chat",
                "System: Client(3) has joined the chat",
                "Client(3): yo",
                "System: Client(3) has left the chat",
            ]
        );
        assert_eq!(end, None, "Client(1) is still in");
        let (lines, end) = drain(&mut out_two);
        assert_eq!(
            lines,
            [
                "System: Client(2) has joined the chat",
                "System: You are Client(2)",
                "Client(1): hi",
                "Client(2): hello",
            ],
            "no one is told of their own leaving"
        );
        assert_eq!(end, Some(tonic::Code::Ok));
        let (lines, _) = drain(&mut out_three);
        assert_eq!(
            lines,
            [
                "System: Client(3) has joined the chat",
                "System: You are Client(3)",
                "Client(3): yo"
            ]
        );

        drop(one);
        assert_eq!(gauge.get(), 0);
        assert!(room.member_numbers().is_empty());
    }

    /// A member that stops reading is cut off with RESOURCE_EXHAUSTED once its queue is
    /// full; the others keep receiving and see it leave.
    #[test]
    fn a_stuck_member_is_cut_off() {
        let (room, gauge) = room(3);
        let mut talker = room.join_here(gauge.enter()).expect("join");
        let mut talker_out = talker.outbound();
        let mut stuck = room.join_here(gauge.enter()).expect("join");
        let mut stuck_out = stuck.outbound();
        drain(&mut talker_out);
        // Notices do not count: three chat messages fill the stuck member's queue of three,
        // and the fourth cuts it off.
        for word in ["a", "b", "c", "d"] {
            talker.say(text(word));
            let (lines, _) = drain(&mut talker_out);
            assert_eq!(lines[0], format!("Client(1): {word}"));
        }
        assert_eq!(room.member_numbers(), [1]);
        let (lines, _) = drain(&mut talker_out);
        assert!(lines.is_empty());
        let (lines, end) = drain(&mut stuck_out);
        assert_eq!(end, Some(tonic::Code::ResourceExhausted));
        assert_eq!(
            lines,
            [
                "error: you fell too far behind: 3 messages or 1MiB were waiting for you; you have been removed from the chat"
            ],
            "the backlog is dropped, the error comes at once"
        );
        // talker saw "d" and the leave notice in the same drain above.
        drop(stuck);
        talker.say(text("e"));
        assert_eq!(drain(&mut talker_out).0, ["Client(1): e"]);
    }

    /// A burst of joins, far more than a member's chat capacity, does not cut off a member
    /// that has not read yet; past the notice allowance it does, so memory stays bounded.
    #[test]
    fn join_bursts_stay_within_the_notice_allowance() {
        let (room, gauge) = room(3);
        let mut first = room.join_here(gauge.enter()).expect("join");
        let mut first_out = first.outbound();
        let mut others = Vec::new();
        // The first member's own join notice and its name are queued too: it takes 3 × 16
        // in all.
        for _ in 0..(3 * NOTICE_ALLOWANCE - 2) {
            others.push(room.join_here(gauge.enter()).expect("join"));
        }
        assert!(
            room.member_numbers().contains(&1),
            "a join burst cut a member off"
        );
        let (lines, end) = drain(&mut first_out);
        assert_eq!(end, None);
        assert_eq!(lines.len(), 3 * NOTICE_ALLOWANCE);
        assert_eq!(lines[2], "System: Client(2) has joined the chat");

        // Now unread again: one notice past the allowance cuts it off.
        for _ in 0..=(3 * NOTICE_ALLOWANCE) {
            others.push(room.join_here(gauge.enter()).expect("join"));
        }
        assert!(
            !room.member_numbers().contains(&1),
            "notices must stay bounded"
        );
        assert_eq!(
            drain(&mut first_out).1,
            Some(tonic::Code::ResourceExhausted)
        );
    }

    /// An over-long message is refused to its sender alone, naming the limit; the sender
    /// stays in the room and the others see nothing.
    #[test]
    fn over_long_messages_are_refused_to_the_sender_alone() {
        let (room, gauge) = room(10);
        let mut member = room.join_here(gauge.enter()).expect("join");
        let mut out = member.outbound();
        let mut other = room.join_here(gauge.enter()).expect("join");
        let mut other_out = other.outbound();
        drain(&mut out);
        drain(&mut other_out);
        member.say(text("12345678901"));
        assert_eq!(
            drain(&mut out),
            (
                vec![
                    "System: Your message was not sent: chat message is 11 bytes; the limit is 10 bytes (10B)"
                        .to_owned()
                ],
                None
            )
        );
        assert!(drain(&mut other_out).0.is_empty());
        member.say(text("short"));
        assert_eq!(drain(&mut other_out).0, ["Client(1): short"]);
    }

    /// `/who` is answered to the asker alone, naming everyone in the room.
    #[test]
    fn who_answers_the_asker_alone() {
        let (room, gauge) = room(10);
        let mut one = room.join_here(gauge.enter()).expect("join");
        let mut out_one = one.outbound();
        let mut two = room.join_here(gauge.enter()).expect("join");
        let mut out_two = two.outbound();
        drain(&mut out_one);
        drain(&mut out_two);
        two.say(text(" /who "));
        assert_eq!(
            drain(&mut out_two).0,
            ["System: In the room (2): Client(1), Client(2)"]
        );
        assert!(drain(&mut out_one).0.is_empty());
    }

    /// A newcomer gets the last `history_length` chat messages, marked as history, after
    /// its join notice and its name; notices are not history; live members get them once.
    #[test]
    fn newcomers_get_a_bounded_history() {
        let limits = RoomLimits {
            queue_capacity: 10,
            max_backlog_bytes: 1 << 20,
            max_message_bytes: 100,
            history_length: 2,
        };
        let room = ChatRoom::new(limits);
        let gauge = Gauge::default();
        let one = room.join_here(gauge.enter()).expect("join");
        for word in ["a", "b", "c"] {
            one.say(text(word));
        }
        let mut late = room.join_here(gauge.enter()).expect("join");
        let mut out = late.outbound();
        let waker = Waker::noop();
        let mut context = Context::from_waker(waker);
        let mut seen = Vec::new();
        while let Poll::Ready(Some(Ok(message))) = Pin::new(&mut out).poll_next(&mut context) {
            seen.push(format!(
                "{} {}: {}",
                message.history, message.sender, message.message
            ));
        }
        assert_eq!(
            seen,
            [
                "false System: Client(2) has joined the chat",
                "false System: You are Client(2)",
                "true Client(1): b",
                "true Client(1): c",
            ]
        );
    }

    /// Chat memory is bounded by design: a message to 200 members is stored once, and
    /// members that never read are cut off once their backlog passes its byte budget, so
    /// the room holds about one backlog of distinct messages however many stop reading.
    #[test]
    fn stuck_members_cost_one_shared_backlog() {
        const MEMBERS: usize = 200;
        const MESSAGE: usize = 64 * 1024;
        const BACKLOG: usize = 1024 * 1024;
        let limits = RoomLimits {
            queue_capacity: 256,
            max_backlog_bytes: BACKLOG,
            max_message_bytes: MESSAGE,
            history_length: 20,
        };
        let room = ChatRoom::new(limits);
        let gauge = Gauge::default();
        let mut stuck: Vec<(Membership, Outbound)> = (0..MEMBERS)
            .map(|_| {
                let mut member = room.join_here(gauge.enter()).expect("join");
                let outbound = member.outbound();
                (member, outbound)
            })
            .collect();
        let mut sender = room.join_here(gauge.enter()).expect("join");
        let mut sender_out = sender.outbound();
        let big = "x".repeat(MESSAGE);
        let mut most_held = 0;
        for _ in 0..100 {
            sender.say(text(&big));
            drain(&mut sender_out);
            most_held = most_held.max(room.held_bytes());
        }
        // Without sharing, 200 members × 15 queued messages would be ~200 MiB; without
        // the byte budget, each would queue up to 256 × 64 KiB.
        assert!(
            most_held <= BACKLOG + 2 * MESSAGE,
            "the room held {most_held} bytes at most; a backlog is {BACKLOG}"
        );
        assert_eq!(
            room.member_numbers().len(),
            1,
            "every stuck member was cut off"
        );
        for (_, outbound) in &mut stuck {
            assert_eq!(drain(outbound).1, Some(tonic::Code::ResourceExhausted));
        }
        assert!(
            room.held_bytes() <= BACKLOG / 2 + MESSAGE,
            "only the history remains"
        );
    }

    /// Closing tells everyone, ends every stream cleanly and refuses later joins.
    #[tokio::test]
    async fn close_tells_everyone_and_ends_streams() {
        let (room, gauge) = room(10);
        let mut member = room.join_here(gauge.enter()).expect("join");
        let mut out = member.outbound();
        room.close();
        let mut lines = Vec::new();
        while let Some(item) = out.next().await {
            lines.push(item.expect("clean").message);
        }
        assert_eq!(
            lines,
            [
                "Client(1) has joined the chat",
                "You are Client(1)",
                SHUTDOWN_NOTICE
            ]
        );
        assert!(matches!(
            room.join_here(gauge.enter()),
            Err(StreamingError::ShuttingDown)
        ));
        // The reader task would see this and stop.
        tokio::time::timeout(std::time::Duration::from_secs(1), member.gone())
            .await
            .expect("gone after close");
    }

    /// Dropping the outbound stream (a dropped connection) is observed as gone.
    #[tokio::test]
    async fn dropped_outbound_is_observed() {
        let (room, gauge) = room(10);
        let mut member = room.join_here(gauge.enter()).expect("join");
        drop(member.outbound());
        tokio::time::timeout(std::time::Duration::from_secs(1), member.gone())
            .await
            .expect("gone after the stream is dropped");
    }
}
