//! StreamServerTime: the server's local time once a second, the first at once, until the
//! client goes away or the server shuts down.

use std::time::Duration;

use grpc_suite::streaming as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::Status;

use crate::activity::GaugeGuard;

/// The contract's format for the time stream: `2025-01-31 14:25:30`.
pub const TIME_FORMAT: &str = grpc_suite::wire_time::SERVER_TIME;

/// Time between two updates.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Items waiting for a slow reader. Small on purpose: a time is only worth sending fresh,
/// and the producer reads the clock only once there is room, so a client that lags gets
/// the current time, not a backlog of stale ones.
const QUEUE: usize = 1;

/// The outbound side of one time stream.
pub type TimeStream = ReceiverStream<Result<pb::TimeResponse, Status>>;

/// Server local time in the contract's format.
pub fn now() -> String {
    chrono::Local::now().format(TIME_FORMAT).to_string()
}

/// Starts one time stream: a producer task on `tasks` that ends as soon as the returned
/// stream is dropped (the client went away) or `shutdown` fires. `guard` is held by the
/// task, so its gauge counts producers still running.
pub fn start(tasks: &TaskTracker, shutdown: CancellationToken, guard: GaugeGuard) -> TimeStream {
    let (sender, receiver) = mpsc::channel(QUEUE);
    tasks.spawn(async move {
        let _running = guard;
        produce(sender, shutdown, PERIOD, now).await;
    });
    ReceiverStream::new(receiver)
}

/// Sends `clock()` at once and then every `period` until the receiver is gone or
/// `shutdown` fires. A tick missed behind a slow reader is skipped, never bunched up.
async fn produce(
    sender: mpsc::Sender<Result<pb::TimeResponse, Status>>,
    shutdown: CancellationToken,
    period: Duration,
    clock: impl Fn() -> String,
) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            // The first tick completes at once: the first time goes out without delay.
            _ = ticks.tick() => {}
            () = sender.closed() => break,
            () = shutdown.cancelled() => break,
        }
        // Waiting for room also watches for the client leaving: `reserve` fails then.
        let permit = tokio::select! {
            permit = sender.reserve() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        permit.send(Ok(pb::TimeResponse { timestamp: clock() }));
    }
    tracing::debug!("time stream ended");
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// The first time goes out at once, then exactly one per period (virtual clock).
    #[tokio::test(start_paused = true)]
    async fn first_at_once_then_once_a_period() {
        let (sender, mut receiver) = mpsc::channel(QUEUE);
        let shutdown = CancellationToken::new();
        let start = Instant::now();
        let producer = tokio::spawn(produce(sender, shutdown, PERIOD, || "t".to_owned()));
        for expected_seconds in 0..4u64 {
            let item = receiver.recv().await.expect("an item").expect("ok");
            assert_eq!(item.timestamp, "t");
            assert_eq!(start.elapsed(), Duration::from_secs(expected_seconds));
        }
        drop(receiver);
        producer
            .await
            .expect("producer ends once the receiver is gone");
    }

    /// Dropping the receiver ends the producer at once, without waiting for a tick.
    #[tokio::test(start_paused = true)]
    async fn stops_at_once_when_the_client_goes() {
        let (sender, mut receiver) = mpsc::channel(QUEUE);
        let producer = tokio::spawn(produce(sender, CancellationToken::new(), PERIOD, || {
            "t".to_owned()
        }));
        receiver.recv().await.expect("first item").expect("ok");
        let dropped_at = Instant::now();
        drop(receiver);
        producer.await.expect("producer ends");
        assert_eq!(dropped_at.elapsed(), Duration::ZERO, "it waited for a tick");
    }

    /// Shutdown ends the producer, and the stream ends cleanly after what was sent.
    #[tokio::test(start_paused = true)]
    async fn stops_on_shutdown() {
        let (sender, mut receiver) = mpsc::channel(QUEUE);
        let shutdown = CancellationToken::new();
        let producer = tokio::spawn(produce(sender, shutdown.clone(), PERIOD, || "t".to_owned()));
        receiver.recv().await.expect("first item").expect("ok");
        shutdown.cancel();
        producer.await.expect("producer ends");
        assert!(
            receiver.recv().await.is_none(),
            "stream ends after shutdown"
        );
    }

    /// The real clock is formatted as the contract says.
    #[test]
    fn now_follows_the_contract_format() {
        let stamp = now();
        chrono::NaiveDateTime::parse_from_str(&stamp, TIME_FORMAT).expect("parses");
    }
}
