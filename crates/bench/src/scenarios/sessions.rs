//! Unary SayHello on the file service with sessions off, then on (`--auth-url` to an auth
//! server this scenario starts), in the same run: their ratio is what guarding every call
//! with a session costs (issue 14's target: at least 0.8).
//!
//! With sessions on, each connection's client logs in once, as a user running a client with
//! `--session ID` does, and sends `authorization: Bearer <id>` on every call. The server
//! asks the auth service about a session at most once per cache period
//! ([`grpc_suite::session_guard::CACHE_TTL`]), so what this measures is mostly the guard's
//! cache lookup; a ratio far below the target would mean validations are not cached.

use anyhow::Context as _;
use grpc_suite::{cli::Connection, file as pb};
use pb::file_service_client::FileServiceClient;
use tonic::{Code, transport::Channel};

use super::{
    Context,
    auth::{self, CHEAP_USER, login},
    connect_many,
};
use crate::{
    report::Measurement,
    servers::{Server, ServerKind},
};

/// Measures SayHello on an open file service, then on one guarded by sessions.
pub async fn run(context: &Context<'_>) -> anyhow::Result<Measurement> {
    let settings = context.settings;
    let mut measurement = Measurement::new("sessions");
    measurement
        .set("concurrency", settings.concurrency as f64)
        .set("connections", settings.connections as f64)
        .set("duration_s", settings.duration.as_secs_f64());

    // The auth service as deployed, with a logger for its audit events. It runs through
    // both phases, so the open phase shares the machine with the same idle processes.
    let users_path = auth::users_file(context).await?;
    let (logger, auth) = auth::start_auth_with_logger(context, &users_path, &[]).await?;
    let auth_url = auth.url();

    let mut rates = Vec::new();
    for (label, guarded) in [("open", false), ("sessions", true)] {
        let flags: Vec<&str> = if guarded {
            vec!["--auth-url", &auth_url]
        } else {
            Vec::new()
        };
        let server = Server::start(ServerKind::File, &context.server_dir(label), &flags).await?;
        let channels = connect_many(&server.url(), settings.connections).await?;
        if guarded {
            refuses_without_a_session(channels[0].clone()).await?;
        }
        let mut clients: Vec<FileServiceClient<Connection>> = Vec::new();
        for channel in channels {
            let connection = if guarded {
                let auth_channel = super::connect(&auth_url).await?;
                let session_id = login(
                    grpc_suite::auth::auth_service_client::AuthServiceClient::new(auth_channel),
                    CHEAP_USER,
                )
                .await?;
                Connection::with_bearer(channel, &session_id)?
            } else {
                Connection::from(channel)
            };
            clients.push(FileServiceClient::new(connection));
        }
        rates.push(
            super::hello::say_hello_load(context, &clients, &mut measurement, label, &server)
                .await?,
        );
        server.stop();
    }
    if let [open, guarded] = rates[..] {
        measurement.set("ratio", guarded / open.max(f64::MIN_POSITIVE));
    }
    auth.stop();
    logger.stop();
    Ok(measurement)
}

/// Checks that the guarded server really is guarded: a call without a session is refused
/// as UNAUTHENTICATED. Otherwise the ratio would compare two open servers.
async fn refuses_without_a_session(channel: Channel) -> anyhow::Result<()> {
    let mut client = FileServiceClient::new(channel);
    let answer = tokio::time::timeout(
        super::CALL_TIMEOUT,
        client.say_hello(pb::HelloRequest {
            name: "bench".to_owned(),
        }),
    )
    .await
    .context("SayHello without a session did not answer within 30 s")?;
    match answer {
        Err(status) if status.code() == Code::Unauthenticated => Ok(()),
        Err(status) => anyhow::bail!(
            "SayHello without a session: expected UNAUTHENTICATED, got {:?}: {}",
            status.code(),
            status.message()
        ),
        Ok(_) => {
            anyhow::bail!("the file server started with --auth-url answered without a session")
        }
    }
}
