//! One GetRandomNumbers stream of `random_count` numbers with delay 0, read as fast as it
//! arrives: the server's per-number cost (draw, timestamp, encode) on one stream.

use std::time::Instant;

use anyhow::Context as _;
use grpc_suite::random as pb;
use pb::random_number_service_client::RandomNumberServiceClient;

use super::{CALL_TIMEOUT, Context, add_server_figures, connect};
use crate::{
    report::Measurement,
    servers::{Server, ServerKind},
    stats::per_second,
};

/// Streams the numbers and reports numbers/s, from the call to the stream's end.
pub async fn run(context: &Context<'_>) -> anyhow::Result<Measurement> {
    let count = context.settings.random_count;
    let server = Server::start(ServerKind::Random, &context.server_dir("random"), &[]).await?;
    let mut client = RandomNumberServiceClient::new(connect(&server.url()).await?);
    let request = pb::RandomNumberRequest {
        min: 1,
        max: 1_000_000,
        count: i32::try_from(count).context("count")?,
        delay: 0,
    };
    let started = Instant::now();
    let mut stream = tokio::time::timeout(CALL_TIMEOUT, client.get_random_numbers(request))
        .await
        .context("GetRandomNumbers did not answer")?
        .context("GetRandomNumbers")?
        .into_inner();
    let mut received: u64 = 0;
    while let Some(number) = tokio::time::timeout(CALL_TIMEOUT, stream.message())
        .await
        .context("the stream stalled")?
        .context("reading the stream")?
    {
        received += 1;
        anyhow::ensure!(
            i64::from(number.sequence) == received as i64,
            "number {received} came with sequence {}",
            number.sequence
        );
    }
    let elapsed = started.elapsed();
    anyhow::ensure!(
        received == u64::from(count),
        "received {received} of {count} numbers"
    );
    let mut measurement = Measurement::new("random");
    measurement
        .set("count", f64::from(count))
        .set("numbers_per_s", per_second(received, elapsed))
        .set("seconds", elapsed.as_secs_f64());
    add_server_figures(&mut measurement, "", &server)?;
    server.stop();
    Ok(measurement)
}
