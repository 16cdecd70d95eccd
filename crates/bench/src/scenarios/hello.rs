//! Unary SayHello at a fixed concurrency over a few connections, against the file service
//! and against the bare tonic reference, one after the other in the same run: their ratio
//! is what our shared plumbing (health, reflection, tracing, the status layer) costs.

use anyhow::Context as _;
use grpc_suite::file as pb;
use pb::file_service_client::FileServiceClient;
use tonic::transport::Channel;

use super::{Context, add_server_figures, closed_loop, tls::Transport};
use crate::{
    report::Measurement,
    servers::{Server, ServerKind},
    stats::per_second,
};

/// Measures SayHello on the bare reference, then on the file service.
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
    for kind in [ServerKind::Bare, ServerKind::File] {
        let server = Server::start(
            kind,
            &context.server_dir(kind.name()),
            &transport.server_flags(),
        )
        .await?;
        let channels = transport
            .connect_many(&transport.url(&server), settings.connections)
            .await?;
        let clients: Vec<FileServiceClient<Channel>> =
            channels.into_iter().map(FileServiceClient::new).collect();
        let mut outcome = closed_loop(
            &clients,
            settings.concurrency,
            settings.warmup,
            settings.duration,
            |mut client: FileServiceClient<Channel>| async move {
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
        let prefix = format!("{}_", kind.name());
        let rate = per_second(outcome.calls, outcome.elapsed);
        rates.push(rate);
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
        add_server_figures(&mut measurement, &prefix, &server)?;
        server.stop();
    }
    if let [bare, file] = rates[..] {
        measurement.set("ratio", file / bare.max(f64::MIN_POSITIVE));
    }
    Ok(measurement)
}
