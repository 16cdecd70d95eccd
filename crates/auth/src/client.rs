//! What `auth_client` does: log in, hold the session until told to stop (Ctrl+C, SIGTERM,
//! or a scripted delay), then log out with the whole session id, printing the old client's
//! lines.

use std::{future::Future, io::Write, time::Duration};

use grpc_suite::{
    auth as pb,
    cli::{Connection, status_error},
};
use pb::auth_service_client::AuthServiceClient;

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
    channel: impl Into<Connection>,
    username: String,
    password: String,
    until: Until,
    stop: impl Future<Output = ()>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut client = AuthServiceClient::new(channel.into());
    let login = log_in(&mut client, username, password).await?;
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

/// Logs in and returns the session id, leaving the session live (`--print-session`: for
/// scripts that hand it to other clients with `--session`).
pub async fn login(
    channel: impl Into<Connection>,
    username: String,
    password: String,
) -> anyhow::Result<String> {
    let mut client = AuthServiceClient::new(channel.into());
    Ok(log_in(&mut client, username, password).await?.session_id)
}

/// One login; a refusal is an error naming the server's reason.
async fn log_in(
    client: &mut AuthServiceClient<Connection>,
    username: String,
    password: String,
) -> anyhow::Result<pb::AuthResponse> {
    let login = client
        .login(pb::LoginRequest { username, password })
        .await
        .map_err(status_error)?
        .into_inner();
    anyhow::ensure!(login.success, "login failed: {}", login.message);
    Ok(login)
}

/// Ends session `session_id` (`--logout ID`); an unknown or expired one is an error.
pub async fn logout(channel: impl Into<Connection>, session_id: String) -> anyhow::Result<String> {
    let mut client = AuthServiceClient::new(channel.into());
    let logout = client
        .logout(pb::LogoutRequest { session_id })
        .await
        .map_err(status_error)?
        .into_inner();
    anyhow::ensure!(logout.success, "logout failed: {}", logout.message);
    Ok(logout.message)
}
