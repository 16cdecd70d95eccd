//! What `auth_client` does: log in, hold the session until told to stop (Ctrl+C, SIGTERM,
//! or a scripted delay), then log out with the whole session id, printing the old client's
//! lines.

use std::{future::Future, io::Write, time::Duration};

use grpc_suite::{auth as pb, cli::status_error};
use pb::auth_service_client::AuthServiceClient;
use tonic::transport::Channel;

/// What ends the session, so the lines printed say what really happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Ctrl+C or SIGTERM: the old client's lines (`Press Ctrl+C…`, `Received shutdown
    /// signal…`).
    Signal,
    /// A scripted delay (`--logout-after`): no signal is asked for or reported.
    Timer(Duration),
}

/// Logs in as `username`, waits for `stop`, logs out. A refused login is an error (exit 1).
/// `until` says what `stop` waits for, for the wording.
pub async fn run(
    channel: Channel,
    username: String,
    password: String,
    until: Until,
    stop: impl Future<Output = ()>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut client = AuthServiceClient::new(channel);
    let login = client
        .login(pb::LoginRequest { username, password })
        .await
        .map_err(status_error)?
        .into_inner();
    anyhow::ensure!(login.success, "login failed: {}", login.message);
    writeln!(
        out,
        "Login: {} (Session ID: {})",
        login.message, login.session_id
    )?;
    match until {
        Until::Signal => writeln!(out, "Session active. Press Ctrl+C to logout and exit.")?,
        Until::Timer(delay) => writeln!(
            out,
            "Session active. Logging out in {} s.",
            delay.as_secs_f64()
        )?,
    }
    out.flush()?;

    stop.await;

    match until {
        Until::Signal => writeln!(out, "Received shutdown signal. Logging out...")?,
        Until::Timer(_) => writeln!(out, "Logging out...")?,
    }
    out.flush()?;
    let request = pb::LogoutRequest {
        session_id: login.session_id,
    };
    let logout = client
        .logout(request)
        .await
        .map_err(status_error)?
        .into_inner();
    writeln!(out, "Logout: {}", logout.message)?;
    anyhow::ensure!(logout.success, "logout failed: {}", logout.message);
    Ok(())
}
