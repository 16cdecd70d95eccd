//! The RandomNumberService handler: check the whole request first, then hand it to a
//! producer task that draws one number at a time and stops the moment nobody is listening.

use std::time::Duration;

use grpc_suite::random as pb;
use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Request, Response, Status};

use crate::{Config, RandomServiceError, StreamMetrics, metrics::ActiveStream};

/// Messages a producer may run ahead of its reader. Bounds each stream's memory to a few
/// kilobytes whatever `count` is, while letting a fast reader take numbers without the
/// producer parking after every single one.
const STREAM_BUFFER: usize = 64;

/// The service state: the limits requests are checked against, the producers' counters,
/// their tracker, and the server's shutdown token. Cloning shares all but the limits.
#[derive(Debug, Clone)]
pub struct RandomService {
    config: Config,
    metrics: StreamMetrics,
    /// Every producer watches it, so that long streams end when the server stops instead
    /// of holding up the drain. Its own token until [`crate::serve_with`] binds the server's.
    shutdown: CancellationToken,
    /// Every producer runs on it, so the server can wait until none is left.
    tasks: TaskTracker,
}

impl RandomService {
    /// A service refusing requests over `config`'s limits; its streams end once it is served
    /// (see [`crate::serve_with`]) and the server's shutdown fires.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            metrics: StreamMetrics::default(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// What the producers do: numbers drawn, producers running. Shared with the service.
    pub fn metrics(&self) -> StreamMetrics {
        self.metrics.clone()
    }

    /// Producer tasks that have not ended yet.
    pub fn running_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// The tracker producers are spawned on, for the server to wait on.
    pub(crate) fn task_tracker(&self) -> TaskTracker {
        self.tasks.clone()
    }

    /// The service with its streams ending when `shutdown` fires.
    pub(crate) fn ending_streams_on(self, shutdown: CancellationToken) -> Self {
        Self { shutdown, ..self }
    }
}

/// A request that passed every check, in the types the producer works with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    min: i32,
    max: i32,
    count: u32,
    delay: Duration,
}

/// Checks a request against the contract and the configured limits; the first problem
/// found is the answer, and it names the field.
fn validate(
    request: &pb::RandomNumberRequest,
    config: &Config,
) -> Result<Plan, RandomServiceError> {
    let pb::RandomNumberRequest {
        min,
        max,
        count,
        delay,
    } = *request;
    if min > max {
        return Err(RandomServiceError::EmptyRange { min, max });
    }
    let count = checked_limit("count", count, config.max_count, "numbers")?;
    let delay_ms = checked_limit("delay", delay, config.max_delay_ms, "ms")?;
    Ok(Plan {
        min,
        max,
        count,
        delay: Duration::from_millis(u64::from(delay_ms)),
    })
}

/// `value` as an unsigned number, unless it is negative or above `limit`.
fn checked_limit(
    field: &'static str,
    value: i32,
    limit: u32,
    unit: &'static str,
) -> Result<u32, RandomServiceError> {
    let unsigned =
        u32::try_from(value).map_err(|_| RandomServiceError::Negative { field, value })?;
    if unsigned > limit {
        return Err(RandomServiceError::AboveLimit {
            field,
            value,
            limit,
            unit,
        });
    }
    Ok(unsigned)
}

/// The time of day in the contract's format, `14:25:30.123`, server local time.
fn timestamp() -> String {
    chrono::Local::now()
        .format(grpc_suite::wire_time::RANDOM_TIMESTAMP)
        .to_string()
}

#[tonic::async_trait]
impl pb::random_number_service_server::RandomNumberService for RandomService {
    type GetRandomNumbersStream = ReceiverStream<Result<pb::RandomNumberResponse, Status>>;

    #[tracing::instrument(level = "debug", skip_all, fields(min, max, count, delay))]
    async fn get_random_numbers(
        &self,
        request: Request<pb::RandomNumberRequest>,
    ) -> Result<Response<Self::GetRandomNumbersStream>, Status> {
        let request = request.into_inner();
        let span = tracing::Span::current();
        span.record("min", request.min);
        span.record("max", request.max);
        span.record("count", request.count);
        span.record("delay", request.delay);
        let plan = validate(&request, &self.config).inspect_err(|error| {
            tracing::info!(%error, "request refused");
        })?;

        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        // Counted before the task starts, so an observer never sees a stream that was
        // accepted but not yet counted.
        let active = self.metrics.stream_started();
        let producer = Producer {
            plan,
            sender,
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
            _active: active,
        };
        self.tasks.spawn(producer.run());
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// One stream's producer: draws and sends numbers until it has sent `count`, the client has
/// gone, or the server is shutting down, whichever comes first.
struct Producer {
    plan: Plan,
    sender: mpsc::Sender<Result<pb::RandomNumberResponse, Status>>,
    metrics: StreamMetrics,
    shutdown: CancellationToken,
    /// Keeps the stream counted as active for as long as the producer exists.
    _active: ActiveStream,
}

/// Why a producer stopped early.
enum Stop {
    /// The reader dropped the stream (cancelled, disconnected): nobody to tell.
    ClientGone,
    /// The server is stopping.
    Shutdown,
}

impl Producer {
    async fn run(self) {
        let Plan {
            min,
            max,
            count,
            delay,
        } = self.plan;
        // One generator per stream, seeded from the OS-seeded thread generator: fast, and no
        // state shared between streams.
        let mut rng = SmallRng::from_rng(&mut rand::rng());
        for sequence in 1..=count {
            // "Between numbers": the first goes out at once, and none waits after the last.
            if sequence > 1
                && !delay.is_zero()
                && let Err(stop) = self.wait(tokio::time::sleep(delay)).await
            {
                return self.stopped(stop, sequence - 1).await;
            }
            let number = rng.random_range(min..=max);
            self.metrics.record_generated();
            let message = pb::RandomNumberResponse {
                number,
                // `count` is at most i32::MAX (it came from an i32), so this never saturates.
                sequence: i32::try_from(sequence).unwrap_or(i32::MAX),
                timestamp: timestamp(),
            };
            match self.wait(self.sender.send(Ok(message))).await {
                Ok(Ok(())) => {}
                Ok(Err(_closed)) => return self.stopped(Stop::ClientGone, sequence - 1).await,
                Err(stop) => return self.stopped(stop, sequence - 1).await,
            }
        }
        tracing::debug!(count, "stream complete");
    }

    /// Runs `step` unless the client goes away or the server starts shutting down first.
    async fn wait<T>(&self, step: impl Future<Output = T>) -> Result<T, Stop> {
        tokio::select! {
            // Shutdown first: a stopping server should not keep feeding a fast reader.
            biased;
            () = self.shutdown.cancelled() => Err(Stop::Shutdown),
            () = self.sender.closed() => Err(Stop::ClientGone),
            output = step => Ok(output),
        }
    }

    /// Ends a stream cut short after `sent` numbers. On shutdown the client is told, so it
    /// cannot mistake a truncated stream for a complete one.
    async fn stopped(self, stop: Stop, sent: u32) {
        match stop {
            Stop::ClientGone => tracing::debug!(sent, "client went away; stream stopped"),
            Stop::Shutdown => {
                tracing::info!(sent, "server shutting down; stream ended early");
                let status = Status::unavailable(format!(
                    "the server is shutting down; the stream ended after {sent} of {} numbers",
                    self.plan.count
                ));
                // Queued behind what the client has not read yet. A client that stopped
                // reading is cut off by the server's grace period, which closes the channel.
                tokio::select! {
                    _ = self.sender.send(Err(status)) => {}
                    () = self.sender.closed() => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(min: i32, max: i32, count: i32, delay: i32) -> pb::RandomNumberRequest {
        pb::RandomNumberRequest {
            min,
            max,
            count,
            delay,
        }
    }

    /// Limits and signs are checked in order, and each refusal names its field.
    #[test]
    fn validation_names_the_field() {
        let config = Config {
            max_count: 10,
            max_delay_ms: 100,
        };
        let refused = |min, max, count, delay| {
            validate(&request(min, max, count, delay), &config)
                .expect_err("refused")
                .to_string()
        };
        assert_eq!(
            refused(2, 1, 1, 0),
            "min (2) must not be greater than max (1)"
        );
        assert_eq!(refused(0, 1, -1, 0), "count must not be negative (got -1)");
        assert_eq!(refused(0, 1, 1, -5), "delay must not be negative (got -5)");
        assert_eq!(
            refused(0, 1, 11, 0),
            "count 11 is above this server's limit of 10 numbers"
        );
        assert_eq!(
            refused(0, 1, 1, 101),
            "delay 101 is above this server's limit of 100 ms"
        );
    }

    /// Requests at the limits, empty ones and the full i32 range are accepted.
    #[test]
    fn validation_accepts_the_edges() {
        let config = Config {
            max_count: 10,
            max_delay_ms: 100,
        };
        let plan = validate(&request(i32::MIN, i32::MAX, 10, 100), &config).expect("accepted");
        assert_eq!(plan.count, 10);
        assert_eq!(plan.delay, Duration::from_millis(100));
        validate(&request(7, 7, 0, 0), &config).expect("count 0 and min == max");
    }

    /// Timestamps follow the contract's `%H:%M:%S%.3f`.
    #[test]
    fn timestamp_has_milliseconds() {
        let stamp = timestamp();
        chrono::NaiveTime::parse_from_str(&stamp, grpc_suite::wire_time::RANDOM_TIMESTAMP)
            .expect("contract format");
        assert_eq!(stamp.len(), "14:25:30.123".len(), "{stamp}");
    }
}
