//! Logins and logouts against the auth service (with a logger receiving its audit events,
//! as deployed), and the cost of one password check measured directly in this process.
//!
//! A login's price is dominated by argon2id at OWASP's minimum (19 MiB, 2 passes), so
//! measuring logouts/s needs thousands of sessions that real-cost logins cannot open in
//! reasonable time. The users file therefore holds two accounts: `user1`, hashed with the
//! real parameters, and `bench`, hashed with argon2's smallest (8 KiB, 1 pass). Logins as
//! `bench` cost everything a login costs except the expensive hash, which is also what
//! "a login costs one check plus under 1 ms" asks about.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use argon2::{
    Algorithm, Argon2, Params, PasswordHasher as _, Version,
    password_hash::{SaltString, rand_core::OsRng},
};
use auth_service::credentials::{Credentials, DEMO_USER, hash_password};
use grpc_suite::auth as pb;
use pb::auth_service_client::AuthServiceClient;
use tonic::transport::Channel;

use super::{Context, add_server_figures, closed_loop, connect_many, fixed_work};
use crate::{
    report::Measurement,
    servers::{Server, ServerKind},
    stats::{Latencies, median, per_second},
};

/// The account hashed with argon2's cheapest parameters (see the module docs); the other
/// auth scenarios open their sessions with it too.
pub(super) const CHEAP_USER: (&str, &str) = ("bench", "bench-password");

/// Sequential logins timed to find what a login costs beyond its password check.
const OVERHEAD_SAMPLES: usize = 200;

/// Measures the password check, logins/s at real cost, login overhead, and logouts/s.
pub async fn run(context: &Context<'_>) -> anyhow::Result<Measurement> {
    let settings = context.settings;
    let users_path = users_file(context).await?;
    let mut measurement = Measurement::new("auth");

    // The check alone, in this process, before any server competes for the cores.
    let checks = settings.password_checks.max(1);
    let path = users_path.clone();
    let check_ms = tokio::task::spawn_blocking(move || -> anyhow::Result<f64> {
        let credentials = Credentials::load(&path)?;
        let mut samples = Vec::with_capacity(checks);
        for _ in 0..checks {
            let started = Instant::now();
            anyhow::ensure!(credentials.verify(DEMO_USER.0, DEMO_USER.1), "check failed");
            samples.push(started.elapsed().as_secs_f64() * 1e3);
        }
        Ok(median(&samples))
    })
    .await
    .context("timing the password check")??;
    measurement.set("check_ms", check_ms);

    let (logger, server) = start_auth_with_logger(context, &users_path, &[]).await?;
    let channels = connect_many(&server.url(), settings.connections).await?;
    let clients: Vec<AuthServiceClient<Channel>> =
        channels.into_iter().map(AuthServiceClient::new).collect();

    // Logins at the real cost: bounded by cores / check time.
    let mut real = closed_loop(
        &clients,
        settings.login_concurrency,
        settings.warmup,
        settings.duration,
        |client| async move { login(client, DEMO_USER).await.map(drop) },
    )
    .await?;
    measurement
        .set("logins_per_s", per_second(real.calls, real.elapsed))
        .set("login_p50_ms", real.latencies.quantile_us(0.5) / 1e3);

    // One at a time: a real login, and a cheap one (everything but the expensive hash).
    let mut sequential = Latencies::default();
    for _ in 0..checks {
        let started = Instant::now();
        login(clients[0].clone(), DEMO_USER).await?;
        sequential.record(started.elapsed());
    }
    let mut overhead = Latencies::default();
    let overhead_samples = OVERHEAD_SAMPLES.min(settings.logout_sessions.max(10));
    for _ in 0..overhead_samples {
        let started = Instant::now();
        login(clients[0].clone(), CHEAP_USER).await?;
        overhead.record(started.elapsed());
    }
    measurement
        .set("login_seq_ms", sequential.quantile_us(0.5) / 1e3)
        .set("login_overhead_ms", overhead.quantile_us(0.5) / 1e3);

    // Open sessions cheaply, then close them all as fast as the server allows.
    let sessions = Arc::new(Mutex::new(Vec::with_capacity(settings.logout_sessions)));
    let opened = Arc::clone(&sessions);
    let mut logins = fixed_work(
        &clients,
        settings.concurrency,
        vec![(); settings.logout_sessions],
        move |client, ()| {
            let opened = Arc::clone(&opened);
            async move {
                let session_id = login(client, CHEAP_USER).await?;
                opened
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(session_id);
                Ok(())
            }
        },
    )
    .await?;
    let session_ids = std::mem::take(
        &mut *sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let mut logouts = fixed_work(
        &clients,
        settings.concurrency,
        session_ids,
        |mut client: AuthServiceClient<Channel>, session_id: String| async move {
            let answer = client
                .logout(pb::LogoutRequest { session_id })
                .await
                .context("Logout")?
                .into_inner();
            anyhow::ensure!(answer.success, "Logout answered {answer:?}");
            Ok(())
        },
    )
    .await?;
    measurement
        .set(
            "cheap_logins_per_s",
            per_second(logins.calls, logins.elapsed),
        )
        .set(
            "cheap_login_p99_ms",
            logins.latencies.quantile_us(0.99) / 1e3,
        )
        .set("logouts_per_s", per_second(logouts.calls, logouts.elapsed))
        .set("logout_p50_ms", logouts.latencies.quantile_us(0.5) / 1e3)
        .set("logout_p99_ms", logouts.latencies.quantile_us(0.99) / 1e3);
    add_server_figures(&mut measurement, "", &server)?;
    server.stop();
    logger.stop();
    Ok(measurement)
}

/// Writes the bench's users file ([`write_users_file`]) into the run's folder; its path.
pub(super) async fn users_file(context: &Context<'_>) -> anyhow::Result<std::path::PathBuf> {
    let path = context.data_dir.join("users.txt");
    let users = tokio::task::spawn_blocking(write_users_file)
        .await
        .context("hashing the bench passwords")??;
    std::fs::write(&path, users).context("writing the users file")?;
    Ok(path)
}

/// A logger, and an auth server over `users` sending its audit events to it, as deployed;
/// `extra` flags go to the auth server. Returns (logger, auth).
pub(super) async fn start_auth_with_logger(
    context: &Context<'_>,
    users: &std::path::Path,
    extra: &[&str],
) -> anyhow::Result<(Server, Server)> {
    let logger = Server::start(ServerKind::Logger, &context.server_dir("logger"), &[]).await?;
    let users = users.to_string_lossy().into_owned();
    let logger_url = logger.url();
    let mut flags = vec![
        "--users",
        users.as_str(),
        "--logger-addr",
        logger_url.as_str(),
    ];
    flags.extend_from_slice(extra);
    let auth = Server::start(ServerKind::Auth, &context.server_dir("auth"), &flags).await?;
    Ok((logger, auth))
}

/// Logs in and returns the session id; a refusal is an error.
pub(super) async fn login(
    mut client: AuthServiceClient<Channel>,
    (username, password): (&str, &str),
) -> anyhow::Result<String> {
    let answer = tokio::time::timeout(
        Duration::from_secs(30),
        client.login(pb::LoginRequest {
            username: username.to_owned(),
            password: password.to_owned(),
        }),
    )
    .await
    .context("Login did not answer within 30 s")?
    .context("Login")?
    .into_inner();
    anyhow::ensure!(answer.success, "Login as {username} answered {answer:?}");
    Ok(answer.session_id)
}

/// The users file: `user1` at OWASP's minimum (as the auth server hashes), `bench` at
/// argon2's smallest parameters.
pub(super) fn write_users_file() -> anyhow::Result<String> {
    let real = hash_password(DEMO_USER.1).map_err(|error| anyhow::anyhow!("hashing: {error}"))?;
    let params = Params::new(Params::MIN_M_COST, Params::MIN_T_COST, 1, None)
        .map_err(|error| anyhow::anyhow!("argon2 parameters: {error}"))?;
    let cheap = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(CHEAP_USER.1.as_bytes(), &SaltString::generate(&mut OsRng))
        .map_err(|error| anyhow::anyhow!("hashing: {error}"))?
        .to_string();
    Ok(format!(
        "{}:{real}\n{}:{cheap}\n",
        DEMO_USER.0, CHEAP_USER.0
    ))
}
