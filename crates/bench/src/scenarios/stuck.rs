//! Clients that stop reading, and what they cost the server ("memory bounded by design",
//! issue 13). Each scenario starts a fresh server, so its idle memory is the baseline:
//!
//! - **`chat-stuck`**: a live member (which reads) and a sender join the room. The sender
//!   first sends `stuck_messages` messages of `stuck_message_bytes` with nobody stuck, for
//!   the live member's baseline latency; then `stuck_members` members join, each on its own
//!   connection, read their own join announcement and never read again, and the sender
//!   sends as many messages again. The server's peak memory, the live member's latency per
//!   message (send to receipt), and how many stuck members the room cut off (the leave
//!   announcements the live member saw) are reported; then everyone leaves, and after
//!   `settle` the memory is sampled again and compared with idle.
//! - **`followers-stuck`**: `stuck_followers` FollowLogs streams (backlog 0) that never
//!   read, one live follower that does, and a writer logging `stuck_rows` rows with
//!   `stuck_row_bytes` of details, one after the other; the same memory figures, the
//!   writer's acknowledgement latency and the live follower's latency per row.
//!
//! A stuck client here has small HTTP/2 windows ([`super::connect_stuck`]): the server,
//! not the client, must hold or drop what the client does not take, which is the point.
//! The sender waits for the live member before getting more than [`CHAT_WINDOW`] messages
//! ahead, so the live member's latency is the room's, not a queue the bench built up, and
//! it stays far below the byte budget at which the room would cut it off too.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use grpc_suite::{logger as logger_pb, streaming as chat_pb};
use logger_pb::logger_service_client::LoggerServiceClient;
use tokio::sync::{Semaphore, mpsc};
use tonic::{Streaming, transport::Channel};

use super::{
    CALL_TIMEOUT, Context, add_server_figures,
    chat::{self, Member, SYSTEM},
    connect, connect_stuck,
};
use crate::{
    report::{Measurement, mib},
    servers::{Server, ServerKind},
    stats::Latencies,
};

/// Messages the chat sender may have sent that the live member has not yet received:
/// 4 × 64 KiB is a sixteenth of the room's 4 MiB backlog budget per member.
const CHAT_WINDOW: usize = 4;

/// Stuck members joining at once, as in the chat scenario's join phase.
const JOIN_PARALLELISM: usize = 64;

/// How a leave announcement ends.
const LEFT: &str = " has left the chat";

/// The text of the small message that ends a phase of `chat-stuck`. The room announces a
/// member it cut off right after the message that overflowed its queue, so once the live
/// member has this, it has seen every cut-off the phase's messages caused.
const END_OF_PHASE: &str = "end of phase";

/// Measures `chat-stuck`.
pub async fn chat(context: &Context<'_>) -> anyhow::Result<Measurement> {
    let settings = context.settings;
    // One connection per member, plus the live member's and the sender's: more than the
    // servers' default cap of 1,000 connections, as a deployment for that many members
    // would raise it.
    let max_connections = (settings.stuck_members + 16).to_string();
    let server = Server::start(
        ServerKind::Streaming,
        &context.server_dir("streaming"),
        &["--max-connections", &max_connections],
    )
    .await?;
    let measured = chat_phases(&server, context).await;
    let mut measurement = Measurement::new("chat-stuck");
    measurement
        .set("members", settings.stuck_members as f64)
        .set("messages", settings.stuck_messages as f64)
        .set("message_kib", settings.stuck_message_bytes as f64 / 1024.0);
    let figures = measured.and_then(|phases| {
        add_server_figures(&mut measurement, "", &server)?;
        Ok(phases)
    });
    server.stop();
    let mut phases = figures?;
    measurement
        .set("after_rss_mib", mib(phases.after_kib))
        .set("after_minus_idle_mib", phases.after_minus_idle_mib)
        .set("baseline_p50_ms", phases.baseline.quantile_us(0.50) / 1e3)
        .set("baseline_p99_ms", phases.baseline.quantile_us(0.99) / 1e3)
        .set("live_p50_ms", phases.stuck.quantile_us(0.50) / 1e3)
        .set("live_p99_ms", phases.stuck.quantile_us(0.99) / 1e3)
        .set("cut_off", phases.cut_off as f64);
    Ok(measurement)
}

/// What the phases of `chat-stuck` measured.
struct ChatPhases {
    /// The live member's latencies with nobody stuck.
    baseline: Latencies,
    /// Its latencies while the stuck members were in the room.
    stuck: Latencies,
    /// Stuck members the room announced as left during the second phase.
    cut_off: usize,
    /// Resident memory `settle` after everyone left.
    after_kib: u64,
    /// That minus the idle memory, in MiB; 0 if it went below.
    after_minus_idle_mib: f64,
}

/// What the live member's reader reports, in the order it read.
enum Receipt {
    /// A bench message arrived after this long.
    Message(Duration),
    /// A member was announced as left.
    Left,
    /// The end-of-phase marker arrived.
    EndOfPhase,
    /// Its stream ended or failed: the live member itself was dropped by the room.
    Ended(String),
}

async fn chat_phases(server: &Server, context: &Context<'_>) -> anyhow::Result<ChatPhases> {
    let settings = context.settings;
    let url = server.url();
    let live = chat::join(connect(&url).await?, 1).await?;
    let sender = chat::join(connect(&url).await?, 1).await?;
    let epoch = Instant::now();
    let window = Arc::new(Semaphore::new(CHAT_WINDOW));
    let (receipts_sender, mut receipts) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_live(
        live.incoming,
        epoch,
        Arc::clone(&window),
        receipts_sender,
    ));
    // The sender is a member too and gets its own messages back: it must read them, or
    // the room would cut it off like the members under test.
    let sender_reader = tokio::spawn(discard(sender.incoming));
    let phase = Phase {
        outgoing: &sender.outgoing,
        window: &window,
        epoch,
        messages: settings.stuck_messages,
        bytes: settings.stuck_message_bytes,
    };

    let result = async {
        let (baseline, _) = phase.run(&mut receipts).await.context("baseline phase")?;
        let stuck = join_stuck(&url, settings.stuck_members).await?;
        let (latencies, cut_off) = phase.run(&mut receipts).await.context("stuck phase")?;
        anyhow::Ok((baseline, latencies, cut_off, stuck))
    }
    .await;
    // Everyone leaves, the stuck members with their streams still unread.
    reader.abort();
    sender_reader.abort();
    drop(live.outgoing);
    drop(sender.outgoing);
    let (baseline, stuck, cut_off, stuck_members) = result?;
    drop(stuck_members);
    let (after_kib, after_minus_idle_mib) = settle(server, settings.settle).await?;
    Ok(ChatPhases {
        baseline,
        stuck,
        cut_off,
        after_kib,
        after_minus_idle_mib,
    })
}

/// One phase's sending, from the sender member.
struct Phase<'a> {
    outgoing: &'a mpsc::Sender<chat_pb::ChatMessage>,
    window: &'a Semaphore,
    epoch: Instant,
    messages: usize,
    bytes: usize,
}

impl Phase<'_> {
    /// Sends the phase's messages, then the end marker, and collects the live member's
    /// receipts until the marker: its latencies, and the leave announcements it saw.
    async fn run(
        &self,
        receipts: &mut mpsc::UnboundedReceiver<Receipt>,
    ) -> anyhow::Result<(Latencies, usize)> {
        let sending = async {
            for _ in 0..self.messages {
                tokio::time::timeout(CALL_TIMEOUT, self.window.acquire())
                    .await
                    .context("the live member received nothing for 30 s")?
                    .context("window closed")?
                    .forget();
                let sent_at = self.epoch.elapsed().as_nanos();
                self.say(padded(&format!("{sent_at} "), self.bytes)).await?;
            }
            self.say(END_OF_PHASE.to_owned()).await
        };
        let collecting = async {
            let mut latencies = Latencies::with_capacity(self.messages);
            let mut left = 0;
            loop {
                let receipt = tokio::time::timeout(CALL_TIMEOUT, receipts.recv())
                    .await
                    .context("the live member received nothing for 30 s")?
                    .context("the live member's reader stopped")?;
                match receipt {
                    Receipt::Message(latency) => latencies.record(latency),
                    Receipt::Left => left += 1,
                    Receipt::EndOfPhase => break,
                    Receipt::Ended(why) => bail!("the live member was dropped: {why}"),
                }
            }
            anyhow::ensure!(
                latencies.len() == self.messages,
                "the live member received {} of {} messages",
                latencies.len(),
                self.messages
            );
            Ok((latencies, left))
        };
        let ((), collected) = tokio::try_join!(sending, collecting)?;
        Ok(collected)
    }

    async fn say(&self, text: String) -> anyhow::Result<()> {
        let message = chat_pb::ChatMessage {
            sender: String::new(),
            message: text,
            timestamp: "00:00:00".to_owned(),
            history: false,
        };
        tokio::time::timeout(CALL_TIMEOUT, self.outgoing.send(message))
            .await
            .context("the sender's stream took nothing for 30 s")?
            .context("the sender's stream closed")
    }
}

/// `prefix` followed by filler up to `bytes` bytes (or `prefix` alone if it is longer).
fn padded(prefix: &str, bytes: usize) -> String {
    let mut text = String::with_capacity(bytes.max(prefix.len()));
    text.push_str(prefix);
    text.extend(std::iter::repeat_n('x', bytes.saturating_sub(prefix.len())));
    text
}

/// The send time (nanoseconds since the epoch) a bench message or row starts with.
fn sent_at(text: &str) -> Option<u64> {
    text.split_once(' ')?.0.parse().ok()
}

/// Nanoseconds from `sent_at` until now.
fn latency_since(epoch: Instant, sent_at: u64) -> Duration {
    let now = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(now.saturating_sub(sent_at))
}

/// The live member: reads everything, reports bench messages, leaves and the phase ends,
/// and gives the sender window room for each message read.
async fn read_live(
    mut incoming: Streaming<chat_pb::ChatMessage>,
    epoch: Instant,
    window: Arc<Semaphore>,
    receipts: mpsc::UnboundedSender<Receipt>,
) {
    loop {
        let receipt = match incoming.message().await {
            Ok(Some(message)) if message.sender == SYSTEM => {
                if message.message.ends_with(LEFT) {
                    Receipt::Left
                } else {
                    continue;
                }
            }
            Ok(Some(message)) if message.history => continue,
            Ok(Some(message)) if message.message == END_OF_PHASE => Receipt::EndOfPhase,
            Ok(Some(message)) => match sent_at(&message.message) {
                Some(sent_at) => {
                    window.add_permits(1);
                    Receipt::Message(latency_since(epoch, sent_at))
                }
                None => continue,
            },
            Ok(None) => Receipt::Ended("its stream ended".to_owned()),
            Err(status) => Receipt::Ended(format!("{status}")),
        };
        let ended = matches!(receipt, Receipt::Ended(_));
        if receipts.send(receipt).is_err() || ended {
            return;
        }
    }
}

/// Reads a stream until it ends, keeping nothing.
async fn discard<T>(mut incoming: Streaming<T>) {
    while let Ok(Some(_)) = incoming.message().await {}
}

/// Joins `count` members, each on its own connection with small windows, that read their
/// own join announcement and nothing more.
async fn join_stuck(url: &str, count: usize) -> anyhow::Result<Vec<Member>> {
    let limit = Arc::new(Semaphore::new(JOIN_PARALLELISM));
    let mut joining = tokio::task::JoinSet::new();
    for _ in 0..count {
        let (url, limit) = (url.to_owned(), Arc::clone(&limit));
        joining.spawn(async move {
            let _permit = limit.acquire_owned().await.context("join limiter closed")?;
            chat::join(connect_stuck(&url).await?, 1).await
        });
    }
    let mut members = Vec::with_capacity(count);
    while let Some(joined) = joining.join_next().await {
        members.push(joined.context("a joining member panicked")??);
    }
    Ok(members)
}

/// Waits `settle`, then samples the server's memory: resident KiB, and its excess over the
/// idle figure in MiB (0 if below, since a line's figures are never negative).
async fn settle(server: &Server, settle: Duration) -> anyhow::Result<(u64, f64)> {
    tokio::time::sleep(settle).await;
    let after = server.memory()?.rss_kib;
    Ok((after, mib(after.saturating_sub(server.idle.rss_kib))))
}

/// Measures `followers-stuck`.
pub async fn followers(context: &Context<'_>) -> anyhow::Result<Measurement> {
    let settings = context.settings;
    let server = Server::start(ServerKind::Logger, &context.server_dir("logger"), &[]).await?;
    let measured = follow_phases(&server, context).await;
    let mut measurement = Measurement::new("followers-stuck");
    measurement
        .set("followers", settings.stuck_followers as f64)
        .set("rows", settings.stuck_rows as f64)
        .set("row_kib", settings.stuck_row_bytes as f64 / 1024.0);
    let figures = measured.and_then(|followed| {
        add_server_figures(&mut measurement, "", &server)?;
        Ok(followed)
    });
    server.stop();
    let mut followed = figures?;
    measurement
        .set("after_rss_mib", mib(followed.after_kib))
        .set("after_minus_idle_mib", followed.after_minus_idle_mib)
        .set("write_p50_ms", followed.writes.quantile_us(0.50) / 1e3)
        .set("write_p99_ms", followed.writes.quantile_us(0.99) / 1e3)
        .set("live_p50_ms", followed.live.quantile_us(0.50) / 1e3)
        .set("live_p99_ms", followed.live.quantile_us(0.99) / 1e3);
    Ok(measurement)
}

/// What `followers-stuck` measured.
struct Followed {
    /// LogActivity latencies (each a durable commit).
    writes: Latencies,
    /// The live follower's latency per row, from the start of its LogActivity call.
    live: Latencies,
    /// Resident memory `settle` after everyone left.
    after_kib: u64,
    /// That minus the idle memory, in MiB; 0 if it went below.
    after_minus_idle_mib: f64,
}

/// Opens FollowLogs with no backlog over `channel`.
async fn follow(channel: Channel) -> anyhow::Result<Streaming<logger_pb::LogEntry>> {
    let mut client = LoggerServiceClient::new(channel);
    let request = logger_pb::LogFollowRequest {
        backlog: 0,
        event_type: String::new(),
    };
    Ok(
        tokio::time::timeout(CALL_TIMEOUT, client.follow_logs(request))
            .await
            .context("FollowLogs did not answer")?
            .context("FollowLogs")?
            .into_inner(),
    )
}

async fn follow_phases(server: &Server, context: &Context<'_>) -> anyhow::Result<Followed> {
    let settings = context.settings;
    let url = server.url();
    let rows = settings.stuck_rows;
    let epoch = Instant::now();
    let mut live = follow(connect(&url).await?).await?;
    let reader = tokio::spawn(async move {
        let mut latencies = Latencies::with_capacity(rows);
        while latencies.len() < rows {
            let entry = tokio::time::timeout(CALL_TIMEOUT, live.message())
                .await
                .context("the live follower received nothing for 30 s")?
                .context("the live follower's stream failed")?
                .context("the live follower's stream ended")?;
            if let Some(sent_at) = sent_at(&entry.details) {
                latencies.record(latency_since(epoch, sent_at));
            }
        }
        anyhow::Ok(latencies)
    });
    let mut stuck = Vec::with_capacity(settings.stuck_followers);
    for _ in 0..settings.stuck_followers {
        stuck.push(follow(connect_stuck(&url).await?).await?);
    }

    let mut writer = LoggerServiceClient::new(connect(&url).await?);
    let mut writes = Latencies::with_capacity(rows);
    for _ in 0..rows {
        let sent_at = epoch.elapsed().as_nanos();
        let started = Instant::now();
        let request = logger_pb::LogRequest {
            event_type: "BENCH".to_owned(),
            details: padded(&format!("{sent_at} "), settings.stuck_row_bytes),
            timestamp: String::new(),
            event_id: String::new(),
        };
        let answer = tokio::time::timeout(CALL_TIMEOUT, writer.log_activity(request))
            .await
            .context("LogActivity did not answer within 30 s")?
            .context("LogActivity")?;
        anyhow::ensure!(answer.get_ref().logged, "LogActivity answered logged=false");
        writes.record(started.elapsed());
    }
    let live = reader
        .await
        .context("the live follower panicked")?
        .context("the live follower")?;
    // Everyone leaves, the stuck followers with their streams still unread.
    drop(stuck);
    drop(writer);
    let (after_kib, after_minus_idle_mib) = settle(server, settings.settle).await?;
    Ok(Followed {
        writes,
        live,
        after_kib,
        after_minus_idle_mib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bench message is exactly the asked size and carries its send time first.
    #[test]
    fn padded_messages_carry_their_send_time() {
        let text = padded("12345 ", 64 * 1024);
        assert_eq!(text.len(), 64 * 1024);
        assert_eq!(sent_at(&text), Some(12345));
        assert_eq!(padded("a long prefix ", 4), "a long prefix ");
        assert_eq!(sent_at(END_OF_PHASE), None);
    }
}
