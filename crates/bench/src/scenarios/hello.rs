//! Unary SayHello at a fixed concurrency over a few connections, against the file service
//! and against the bare tonic reference, one after the other in the same run: their ratio
//! is what our shared plumbing (health, reflection, tracing, the status layer) costs. A third
//! run serves the file service with `--metrics-addr`: its ratio to the second is what the
//! per-call metrics cost (target: at least 0.95).

use anyhow::Context as _;
use grpc_suite::{cli::Connection, file as pb};
use pb::file_service_client::FileServiceClient;

use super::{Context, add_server_figures, closed_loop, tls::Transport};
use crate::{
    cpu::{CpuWindow, micros_per_call},
    report::Measurement,
    servers::{Server, ServerKind},
    stats::per_second,
};

/// Measures SayHello on the bare reference, then on the file service without and with
/// metrics.
pub async fn run(context: &Context<'_>) -> anyhow::Result<Measurement> {
    measure(context, &Transport::Plaintext, "hello").await
}

/// Measures SayHello on the bare reference, then on the file service, both over
/// `transport`, reported as scenario `name`.
pub async fn measure(
    context: &Context<'_>,
    transport: &Transport,
    name: &str,
) -> anyhow::Result<Measurement> {
    let settings = context.settings;
    let mut measurement = Measurement::new(name);
    measurement
        .set("concurrency", settings.concurrency as f64)
        .set("connections", settings.connections as f64)
        .set("duration_s", settings.duration.as_secs_f64());
    let mut rates = Vec::new();
    let runs: [(ServerKind, &str, &[&str]); 3] = [
        (ServerKind::Bare, "bare", &[]),
        (ServerKind::File, "file", &[]),
        // Port 0: the metrics endpoint is served (so the layer is on) but never scraped.
        (
            ServerKind::File,
            "file_metrics",
            &["--metrics-addr", "127.0.0.1:0"],
        ),
    ];
    for (kind, label, extra) in runs {
        let mut flags = transport.server_flags();
        flags.extend_from_slice(extra);
        let server = Server::start(kind, &context.server_dir(label), &flags).await?;
        let channels = transport
            .connect_many(&transport.url(&server), settings.connections)
            .await?;
        let clients: Vec<FileServiceClient<Connection>> = channels
            .into_iter()
            .map(|channel| FileServiceClient::new(Connection::from(channel)))
            .collect();
        rates.push(say_hello_load(context, &clients, &mut measurement, label, &server).await?);
        server.stop();
    }
    if let [bare, file, file_metrics] = rates[..] {
        measurement.set("ratio", file / bare.max(f64::MIN_POSITIVE));
        measurement.set("metrics_ratio", file_metrics / file.max(f64::MIN_POSITIVE));
    }
    Ok(measurement)
}

/// Drives SayHello through `clients` in a closed loop at the run's concurrency, records
/// `<label>_rps`, `<label>_p50_us`, `<label>_p99_us`, the CPU each call cost the server and
/// this load generator in microseconds (`<label>_server_cpu_us`, `<label>_client_cpu_us`)
/// and `server`'s figures, and returns the rate. Shared by every scenario that compares
/// SayHello on two servers.
pub(super) async fn say_hello_load(
    context: &Context<'_>,
    clients: &[FileServiceClient<Connection>],
    measurement: &mut Measurement,
    label: &str,
    server: &Server,
) -> anyhow::Result<f64> {
    let settings = context.settings;
    let server_cpu = CpuWindow::start(Some(server.pid()), settings.warmup, settings.duration);
    let client_cpu = CpuWindow::start(None, settings.warmup, settings.duration);
    let mut outcome = closed_loop(
        clients,
        settings.concurrency,
        settings.warmup,
        settings.duration,
        |mut client: FileServiceClient<Connection>| async move {
            let answer = client
                .say_hello(pb::HelloRequest {
                    name: "bench".to_owned(),
                })
                .await
                .context("SayHello")?;
            anyhow::ensure!(
                answer.get_ref().message == "Hello, bench!",
                "unexpected answer {:?}",
                answer.get_ref().message
            );
            Ok(())
        },
    )
    .await?;
    let prefix = format!("{label}_");
    let rate = per_second(outcome.calls, outcome.elapsed);
    measurement
        .set(&format!("{prefix}rps"), rate)
        .set(
            &format!("{prefix}p50_us"),
            outcome.latencies.quantile_us(0.50),
        )
        .set(
            &format!("{prefix}p99_us"),
            outcome.latencies.quantile_us(0.99),
        );
    measurement
        .set(
            &format!("{prefix}server_cpu_us"),
            micros_per_call(server_cpu.finish().await?, outcome.calls),
        )
        .set(
            &format!("{prefix}client_cpu_us"),
            micros_per_call(client_cpu.finish().await?, outcome.calls),
        );
    add_server_figures(measurement, &prefix, server)?;
    Ok(rate)
}
