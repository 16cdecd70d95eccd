//! Concurrent LogActivity calls: each answer means the row is committed to SQLite (the
//! logger's group commit shares one sync among the calls waiting together), so the rate
//! is of durable acknowledgements.
//!
//! The same load then runs against a second logger storing in PostgreSQL (a throwaway
//! server from Debian's `postgresql` package, with its default durability: every commit
//! flushed, as SQLite's synchronous=FULL), so the two backends are compared in one run:
//! `pg_acks_per_s` and `pg_vs_sqlite`. Without PostgreSQL installed those figures are
//! left out, with a note on stderr.

use anyhow::Context as _;
use grpc_suite::logger as pb;
use pb::logger_service_client::LoggerServiceClient;
use tonic::transport::Channel;

use super::{Context, LoopOutcome, add_server_figures, closed_loop, connect_many};
use crate::{
    report::Measurement,
    servers::{Server, ServerKind},
    stats::per_second,
};

/// Measures durable acknowledgements/s and their latency at the configured concurrency, on
/// SQLite and then, when it is installed, on PostgreSQL.
pub async fn run(context: &Context<'_>) -> anyhow::Result<Measurement> {
    let settings = context.settings;
    let server = Server::start(ServerKind::Logger, &context.server_dir("logger"), &[]).await?;
    let mut outcome = load(context, &server).await?;
    let mut measurement = Measurement::new("logger");
    let acks_per_s = per_second(outcome.calls, outcome.elapsed);
    measurement
        .set("concurrency", settings.concurrency as f64)
        .set("connections", settings.connections as f64)
        .set("acks_per_s", acks_per_s)
        .set("p50_ms", outcome.latencies.quantile_us(0.50) / 1e3)
        .set("p99_ms", outcome.latencies.quantile_us(0.99) / 1e3);
    add_server_figures(&mut measurement, "", &server)?;
    server.stop();

    // Starting PostgreSQL blocks (initdb, then waiting for it): off the runtime's workers.
    let postgres = tokio::task::spawn_blocking(|| testkit::Postgres::try_start(true))
        .await
        .context("the thread starting PostgreSQL panicked")?;
    match postgres {
        Ok(postgres) => {
            let url = postgres.url();
            let server = Server::start(
                ServerKind::Logger,
                &context.server_dir("logger-pg"),
                &["--db", &url],
            )
            .await?;
            let mut outcome = load(context, &server).await?;
            let pg_acks_per_s = per_second(outcome.calls, outcome.elapsed);
            measurement
                .set("pg_acks_per_s", pg_acks_per_s)
                .set("pg_p50_ms", outcome.latencies.quantile_us(0.50) / 1e3)
                .set("pg_p99_ms", outcome.latencies.quantile_us(0.99) / 1e3)
                .set(
                    "pg_vs_sqlite",
                    pg_acks_per_s / acks_per_s.max(f64::MIN_POSITIVE),
                );
            server.stop();
            tokio::task::spawn_blocking(move || drop(postgres))
                .await
                .context("the thread stopping PostgreSQL panicked")?;
        }
        Err(error) => eprintln!("logger: PostgreSQL figures skipped: {error:#}"),
    }
    Ok(measurement)
}

/// The closed loop of LogActivity calls against `server`.
async fn load(context: &Context<'_>, server: &Server) -> anyhow::Result<LoopOutcome> {
    let settings = context.settings;
    let channels = connect_many(&server.url(), settings.connections).await?;
    let clients: Vec<LoggerServiceClient<Channel>> =
        channels.into_iter().map(LoggerServiceClient::new).collect();
    closed_loop(
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
    .await
}
