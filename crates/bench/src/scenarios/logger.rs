//! Concurrent LogActivity calls: each answer means the row is committed to SQLite (the
//! logger's group commit shares one sync among the calls waiting together), so the rate
//! is of durable acknowledgements. Measured against two ceilings in the same run:
//!
//! - `sqlite_acks_per_s`: the logger's own store (`logger_service::Store`: the same
//!   schema, WAL with `synchronous=FULL`, the same group-commit writer) driven directly
//!   from this process by as many concurrent writers as the gRPC load has calls in
//!   flight: what the disk and SQLite allow without gRPC. The per-row stdout echo of the
//!   binary is off here (it was measured to cost nothing, see BENCHMARKS.md).
//! - `bare_rps`: SayHello on the bare tonic server at the same concurrency and
//!   connections: what gRPC allows for a unary call on these cores.
//!
//! `ratio` is ours / the lower of the two. Both ceilings are the two cores busy with one
//! kind of work each; a logger call does both kinds, so `combined_ceiling_per_s` (see
//! [`combined_ceiling`]) is the rate their costs added up allow, and `combined_ratio` ours
//! against it.
//!
//! The same load then runs against a second logger storing in PostgreSQL (a throwaway
//! server from Debian's `postgresql` package, with its default durability: every commit
//! flushed, as SQLite's synchronous=FULL), so the two backends are compared in one run:
//! `pg_acks_per_s` and `pg_vs_sqlite`. Without PostgreSQL installed those figures are
//! left out, with a note on stderr.

use std::sync::Arc;

use anyhow::Context as _;
use grpc_suite::{file::file_service_client::FileServiceClient, logger as pb};
use logger_service::store::{NewEntry, Store};
use pb::logger_service_client::LoggerServiceClient;
use tonic::transport::Channel;

use super::{
    Context, LoopOutcome, add_server_figures, closed_loop, connect_many, hello::say_hello_load,
};
use crate::{
    cpu::{CpuWindow, micros_per_call},
    report::Measurement,
    servers::{Server, ServerKind},
    stats::per_second,
};

/// The text of every benchmark row.
const DETAILS: &str = "grpc_bench load: one durable row";

/// Measures the SQLite ceiling, durable acknowledgements/s and their latency through the
/// logger server, then the bare unary rate, all at the configured concurrency.
pub async fn run(context: &Context<'_>) -> anyhow::Result<Measurement> {
    let settings = context.settings;
    let mut measurement = Measurement::new("logger");
    measurement
        .set("concurrency", settings.concurrency as f64)
        .set("connections", settings.connections as f64);

    let sqlite = sqlite_ceiling(context)
        .await
        .context("the SQLite ceiling")?;
    measurement.set("sqlite_acks_per_s", sqlite);

    let server = Server::start(ServerKind::Logger, &context.server_dir("logger"), &[]).await?;
    let (mut outcome, server_cpu) = load(context, &server).await?;
    let ours = per_second(outcome.calls, outcome.elapsed);
    measurement
        .set("acks_per_s", ours)
        .set("server_cpu_us", micros_per_call(server_cpu, outcome.calls))
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
            let (mut outcome, server_cpu) = load(context, &server).await?;
            let pg_acks_per_s = per_second(outcome.calls, outcome.elapsed);
            measurement
                .set("pg_acks_per_s", pg_acks_per_s)
                .set("pg_p50_ms", outcome.latencies.quantile_us(0.50) / 1e3)
                .set("pg_p99_ms", outcome.latencies.quantile_us(0.99) / 1e3)
                .set(
                    "pg_server_cpu_us",
                    micros_per_call(server_cpu, outcome.calls),
                )
                .set("pg_vs_sqlite", pg_acks_per_s / ours.max(f64::MIN_POSITIVE));
            server.stop();
            tokio::task::spawn_blocking(move || drop(postgres))
                .await
                .context("the thread stopping PostgreSQL panicked")?;
        }
        Err(error) => eprintln!("logger: PostgreSQL figures skipped: {error:#}"),
    }

    let bare = Server::start(ServerKind::Bare, &context.server_dir("bare"), &[]).await?;
    let clients: Vec<FileServiceClient<grpc_suite::cli::Connection>> =
        connect_many(&bare.url(), settings.connections)
            .await?
            .into_iter()
            .map(|channel| FileServiceClient::new(grpc_suite::cli::Connection::from(channel)))
            .collect();
    let bare_rate = say_hello_load(context, &clients, &mut measurement, "bare", &bare).await?;
    bare.stop();

    let ceiling = sqlite.min(bare_rate);
    let combined = combined_ceiling(sqlite, bare_rate);
    measurement
        .set("ceiling_per_s", ceiling)
        .set("ratio", ours / ceiling.max(f64::MIN_POSITIVE))
        .set("combined_ceiling_per_s", combined)
        .set("combined_ratio", ours / combined.max(f64::MIN_POSITIVE));
    Ok(measurement)
}

/// The rate a server doing both kinds of work per call could reach on the same cores: each
/// ceiling is what the two cores do when busy with only its own work (a durable row, or a
/// gRPC round trip), so one call doing both costs the sum of their times,
/// `1 / (1/sqlite + 1/bare)`. Below the lower of the two unless the other is infinite: with
/// the two ceilings equal it is half of either.
fn combined_ceiling(sqlite: f64, bare: f64) -> f64 {
    if sqlite <= 0.0 || bare <= 0.0 {
        return 0.0;
    }
    1.0 / (1.0 / sqlite + 1.0 / bare)
}

/// The closed loop of LogActivity calls against `server`, and the server's CPU time in
/// its timed window.
async fn load(
    context: &Context<'_>,
    server: &Server,
) -> anyhow::Result<(LoopOutcome, std::time::Duration)> {
    let settings = context.settings;
    let channels = connect_many(&server.url(), settings.connections).await?;
    let clients: Vec<LoggerServiceClient<Channel>> =
        channels.into_iter().map(LoggerServiceClient::new).collect();
    let server_cpu = CpuWindow::start(Some(server.pid()), settings.warmup, settings.duration);
    let outcome = closed_loop(
        &clients,
        settings.concurrency,
        settings.warmup,
        settings.duration,
        |mut client: LoggerServiceClient<Channel>| async move {
            let answer = client
                .log_activity(pb::LogRequest {
                    event_type: "BENCH".to_owned(),
                    details: DETAILS.to_owned(),
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
    Ok((outcome, server_cpu.finish().await?))
}

/// Durable appends per second through the logger's store, with as many writers as the
/// gRPC load has calls in flight, for the same warm-up and duration.
async fn sqlite_ceiling(context: &Context<'_>) -> anyhow::Result<f64> {
    let settings = context.settings;
    let dir = context.server_dir("sqlite");
    let store = Arc::new(Store::open(&dir.join("logs.db"), false)?);
    // The server stamps each row with the local time as it receives it; so does this.
    let outcome = closed_loop(
        &[Arc::clone(&store)],
        settings.concurrency,
        settings.warmup,
        settings.duration,
        |store: Arc<Store>| async move {
            store
                .append(NewEntry {
                    event_type: "BENCH".to_owned(),
                    details: DETAILS.to_owned(),
                    timestamp: chrono::Local::now()
                        .format(logger_service::store::TIMESTAMP_FORMAT)
                        .to_string(),
                    event_id: None,
                })
                .await
                .map_err(|error| anyhow::anyhow!("append: {error}"))?;
            Ok(())
        },
    )
    .await;
    store.close(std::time::Duration::from_secs(10)).await;
    let outcome = outcome?;
    Ok(per_second(outcome.calls, outcome.elapsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equal ceilings allow half of either; a far higher one barely lowers the other; a
    /// missing one gives no ceiling at all rather than a division by zero.
    #[test]
    fn combined_ceiling_adds_the_costs() {
        assert!((combined_ceiling(100.0, 100.0) - 50.0).abs() < 1e-9);
        assert!((combined_ceiling(70_000.0, 130_000.0) - 45_500.0).abs() < 1.0);
        let far = combined_ceiling(1e12, 70_000.0);
        assert!(far < 70_000.0 && far > 69_999.0, "{far}");
        assert_eq!(combined_ceiling(0.0, 70_000.0), 0.0);
    }
}
