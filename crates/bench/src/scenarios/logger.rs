//! Concurrent LogActivity calls: each answer means the row is committed to SQLite (the
//! logger's group commit shares one sync among the calls waiting together), so the rate
//! is of durable acknowledgements.

use anyhow::Context as _;
use grpc_suite::logger as pb;
use pb::logger_service_client::LoggerServiceClient;
use tonic::transport::Channel;

use super::{Context, add_server_figures, closed_loop, connect_many};
use crate::{
    report::Measurement,
    servers::{Server, ServerKind},
    stats::per_second,
};

/// Measures durable acknowledgements/s and their latency at the configured concurrency.
pub async fn run(context: &Context<'_>) -> anyhow::Result<Measurement> {
    let settings = context.settings;
    let server = Server::start(ServerKind::Logger, &context.server_dir("logger"), &[]).await?;
    let channels = connect_many(&server.url(), settings.connections).await?;
    let clients: Vec<LoggerServiceClient<Channel>> =
        channels.into_iter().map(LoggerServiceClient::new).collect();
    let mut outcome = closed_loop(
        &clients,
        settings.concurrency,
        settings.warmup,
        settings.duration,
        |mut client: LoggerServiceClient<Channel>| async move {
            let answer = client
                .log_activity(pb::LogRequest {
                    event_type: "BENCH".to_owned(),
                    details: "grpc_bench load: one durable row".to_owned(),
                    timestamp: String::new(),
                    event_id: String::new(),
                })
                .await
                .context("LogActivity")?;
            anyhow::ensure!(answer.get_ref().logged, "LogActivity answered logged=false");
            Ok(())
        },
    )
    .await?;
    let mut measurement = Measurement::new("logger");
    measurement
        .set("concurrency", settings.concurrency as f64)
        .set("connections", settings.connections as f64)
        .set("acks_per_s", per_second(outcome.calls, outcome.elapsed))
        .set("p50_ms", outcome.latencies.quantile_us(0.50) / 1e3)
        .set("p99_ms", outcome.latencies.quantile_us(0.99) / 1e3);
    add_server_figures(&mut measurement, "", &server)?;
    server.stop();
    Ok(measurement)
}
