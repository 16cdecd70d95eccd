//! The auth service under a flood of wrong passwords (issue 14, "Login abuse"):
//!
//! - Logout and ValidateSession p50, idle and then during a flood of concurrent
//!   wrong-password logins, and each flood/idle ratio (target: under 2). Password checks
//!   run on a bounded pool that leaves a core free, so the cheap calls should barely notice.
//! - The median login time for an unknown user and for a known user with a wrong password,
//!   and their ratio (target: between 0.8 and 1.25): unknown users are checked against a
//!   decoy hash, so timing a login must not tell whether an account exists.
//!
//! The auth server runs with throttling effectively off (bounds of a million failures):
//! every flood login comes from 127.0.0.1, and with the default bounds the flood would be
//! answered RESOURCE_EXHAUSTED without any password check, measuring nothing. A throttled
//! answer therefore fails the scenario.
//!
//! The probes are sequential calls on their own connection, so their latency is the
//! server's, not a queue in this process; the flood shares a few other connections, as
//! one attacking client would.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use auth_service::credentials::DEMO_USER;
use grpc_suite::auth as pb;
use pb::auth_service_client::AuthServiceClient;
use tonic::transport::Channel;

use super::{
    CALL_TIMEOUT, Context, add_server_figures,
    auth::{self, CHEAP_USER, login},
    connect, connect_many, fixed_work,
};
use crate::{
    report::Measurement,
    stats::{Latencies, median, per_second},
};

/// Far above anything the flood reaches, so no login is throttled (see the module docs).
const NO_THROTTLE: &str = "1000000";

/// A user the users file does not hold.
const UNKNOWN_USER: &str = "nobody-by-this-name";

/// Measures the cheap calls idle and under the flood, and unknown-user against
/// wrong-password login times.
pub async fn run(context: &Context<'_>) -> anyhow::Result<Measurement> {
    let settings = context.settings;
    let mut measurement = Measurement::new("auth-flood");
    measurement
        .set("flood_logins", settings.flood_logins as f64)
        .set("probe_calls", settings.probe_calls as f64);

    let users_path = auth::users_file(context).await?;
    let (logger, server) = auth::start_auth_with_logger(
        context,
        &users_path,
        &[
            "--login-failures-per-user",
            NO_THROTTLE,
            "--login-failures-per-address",
            NO_THROTTLE,
        ],
    )
    .await?;
    let url = server.url();
    let probe = AuthServiceClient::new(connect(&url).await?);

    // Unknown user against wrong password, one login at a time and alternating, so drift
    // in the machine's load falls on both alike. One of each first, untimed: the server's
    // first check allocates the working memory later checks reuse, and the connection
    // warms up.
    timed_refusal(probe.clone(), UNKNOWN_USER).await?;
    timed_refusal(probe.clone(), DEMO_USER.0).await?;
    let mut unknown = Vec::with_capacity(settings.login_timing_samples);
    let mut wrong = Vec::with_capacity(settings.login_timing_samples);
    for _ in 0..settings.login_timing_samples.max(1) {
        unknown.push(timed_refusal(probe.clone(), UNKNOWN_USER).await?);
        wrong.push(timed_refusal(probe.clone(), DEMO_USER.0).await?);
    }
    let (unknown_ms, wrong_ms) = (median(&unknown), median(&wrong));
    measurement
        .set("unknown_user_login_ms", unknown_ms)
        .set("wrong_password_login_ms", wrong_ms)
        .set(
            "unknown_user_ratio",
            unknown_ms / wrong_ms.max(f64::MIN_POSITIVE),
        );

    // Sessions for both phases' logouts, opened cheaply now: during the flood a login,
    // even a cheap one, would wait for the busy password pool.
    let probes = settings.probe_calls.max(1);
    let clients = connect_many(&url, settings.connections).await?;
    let clients: Vec<AuthServiceClient<Channel>> =
        clients.into_iter().map(AuthServiceClient::new).collect();
    let mut sessions = open_sessions(&clients, settings.concurrency, 2 * probes + 1).await?;
    let validated = sessions.pop().context("no session opened")?;
    let flood_sessions = sessions.split_off(probes);
    let idle_sessions = sessions;

    // A few calls first, so the probe connection and the server's paths are warm.
    for _ in 0..10 {
        validate(probe.clone(), &validated).await?;
    }
    let (mut logout_idle, mut validate_idle) =
        probe_calls(&probe, &validated, idle_sessions).await?;

    // The flood: each task sends wrong-password logins back to back, forever; they are
    // aborted once the probes are done.
    let answered = Arc::new(AtomicU64::new(0));
    let mut flood = tokio::task::JoinSet::new();
    for index in 0..settings.flood_logins.max(1) {
        let client = clients[index % clients.len()].clone();
        let answered = Arc::clone(&answered);
        flood.spawn(flood_logins(client, answered));
    }
    // Probing starts once the pool is saturated: the first refusals are back and every
    // flood login has had time to reach the server.
    let saturated = tokio::time::timeout(CALL_TIMEOUT, async {
        while answered.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    anyhow::ensure!(
        saturated.is_ok(),
        "no flood login was answered within {CALL_TIMEOUT:?}"
    );
    tokio::time::sleep(settings.warmup).await;
    let answered_before = answered.load(Ordering::Relaxed);
    let flood_started = Instant::now();
    let probed = probe_calls(&probe, &validated, flood_sessions).await;
    let flood_checks = per_second(
        answered.load(Ordering::Relaxed) - answered_before,
        flood_started.elapsed(),
    );
    // A flood task that has finished has failed (they only end by an error): report it.
    while let Some(joined) = flood.try_join_next() {
        joined.context("a flood task panicked")??;
    }
    flood.abort_all();
    let (mut logout_flood, mut validate_flood) = probed?;

    let ratio = |flood: f64, idle: f64| flood / idle.max(f64::MIN_POSITIVE);
    let (logout_idle_ms, logout_flood_ms) = (
        logout_idle.quantile_us(0.5) / 1e3,
        logout_flood.quantile_us(0.5) / 1e3,
    );
    let (validate_idle_ms, validate_flood_ms) = (
        validate_idle.quantile_us(0.5) / 1e3,
        validate_flood.quantile_us(0.5) / 1e3,
    );
    measurement
        .set("logout_idle_p50_ms", logout_idle_ms)
        .set("logout_flood_p50_ms", logout_flood_ms)
        .set("logout_flood_ratio", ratio(logout_flood_ms, logout_idle_ms))
        .set("validate_idle_p50_ms", validate_idle_ms)
        .set("validate_flood_p50_ms", validate_flood_ms)
        .set(
            "validate_flood_ratio",
            ratio(validate_flood_ms, validate_idle_ms),
        )
        .set("flood_checks_per_s", flood_checks);
    add_server_figures(&mut measurement, "", &server)?;
    server.stop();
    logger.stop();
    Ok(measurement)
}

/// One sequential pass: for each session, a ValidateSession of `validated` (which stays
/// live) then a Logout of that session, each timed on its own.
async fn probe_calls(
    probe: &AuthServiceClient<Channel>,
    validated: &str,
    sessions: Vec<String>,
) -> anyhow::Result<(Latencies, Latencies)> {
    let mut logouts = Latencies::with_capacity(sessions.len());
    let mut validations = Latencies::with_capacity(sessions.len());
    for session_id in sessions {
        let started = Instant::now();
        validate(probe.clone(), validated).await?;
        validations.record(started.elapsed());
        let started = Instant::now();
        logout(probe.clone(), session_id).await?;
        logouts.record(started.elapsed());
    }
    Ok((logouts, validations))
}

/// One flood task: wrong-password logins back to back, counting the answers, until an
/// error (returned) or an abort.
async fn flood_logins(
    client: AuthServiceClient<Channel>,
    answered: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    loop {
        refused(client.clone(), DEMO_USER.0).await?;
        answered.fetch_add(1, Ordering::Relaxed);
    }
}

/// Opens `count` sessions as the cheap user, `concurrency` logins at a time.
async fn open_sessions(
    clients: &[AuthServiceClient<Channel>],
    concurrency: usize,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let opened = Arc::new(std::sync::Mutex::new(Vec::with_capacity(count)));
    let sink = Arc::clone(&opened);
    fixed_work(clients, concurrency, vec![(); count], move |client, ()| {
        let sink = Arc::clone(&sink);
        async move {
            let session_id = login(client, CHEAP_USER).await?;
            sink.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(session_id);
            Ok(())
        }
    })
    .await?;
    let sessions = std::mem::take(
        &mut *opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    Ok(sessions)
}

/// How long a refused login of `username` takes, in milliseconds.
async fn timed_refusal(client: AuthServiceClient<Channel>, username: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    refused(client, username).await?;
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

/// Logs in as `username` with a wrong password and checks that the login was refused after
/// a password check (a throttled login is an error: it would measure nothing).
async fn refused(mut client: AuthServiceClient<Channel>, username: &str) -> anyhow::Result<()> {
    let answer = tokio::time::timeout(
        CALL_TIMEOUT,
        client.login(pb::LoginRequest {
            username: username.to_owned(),
            password: "not the password".to_owned(),
        }),
    )
    .await
    .context("Login did not answer within 30 s")?
    .with_context(|| format!("Login as {username} with a wrong password"))?
    .into_inner();
    anyhow::ensure!(
        !answer.success,
        "Login as {username} with a wrong password succeeded"
    );
    Ok(())
}

/// Asks whether `session_id` is live, and checks that it is.
async fn validate(mut client: AuthServiceClient<Channel>, session_id: &str) -> anyhow::Result<()> {
    let answer = tokio::time::timeout(
        CALL_TIMEOUT,
        client.validate_session(pb::ValidateSessionRequest {
            session_id: session_id.to_owned(),
        }),
    )
    .await
    .context("ValidateSession did not answer within 30 s")?
    .context("ValidateSession")?
    .into_inner();
    anyhow::ensure!(answer.valid, "a live session was reported invalid");
    Ok(())
}

/// Ends `session_id`, and checks that it was live.
async fn logout(mut client: AuthServiceClient<Channel>, session_id: String) -> anyhow::Result<()> {
    let answer = tokio::time::timeout(
        CALL_TIMEOUT,
        client.logout(pb::LogoutRequest { session_id }),
    )
    .await
    .context("Logout did not answer within 30 s")?
    .context("Logout")?
    .into_inner();
    anyhow::ensure!(answer.success, "Logout answered {answer:?}");
    Ok(())
}
