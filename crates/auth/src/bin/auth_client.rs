//! `auth_client`: logs in, keeps the session until Ctrl+C or SIGTERM, then logs out.

use std::{io::IsTerminal, process::ExitCode, time::Duration};

use anyhow::Context as _;
use auth_service::client::Until;
use clap::Parser;
use grpc_suite::args::ClientArgs;

/// Logs in to the auth service and holds the session until Ctrl+C or SIGTERM.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    connection: ClientArgs,
    /// Username.
    #[arg(long, env = "AUTH_CLIENT_USERNAME", default_value = "user1")]
    username: String,
    /// Password (prefer --prompt-password, which keeps it out of the process list).
    #[arg(
        long,
        env = "AUTH_CLIENT_PASSWORD",
        default_value = "pass123",
        hide_default_value = true
    )]
    password: String,
    /// Ask for the password: without echo in a terminal, else one line from standard input.
    #[arg(long, conflicts_with = "password")]
    prompt_password: bool,
    /// Log in, print only the session id on stdout and exit, leaving the session live (for
    /// `--session` / SUITE_SESSION of the other clients).
    #[arg(long, conflicts_with_all = ["logout", "logout_after"])]
    print_session: bool,
    /// End session ID and exit (no login).
    #[arg(long, value_name = "ID", conflicts_with = "logout_after")]
    logout: Option<String>,
    /// Log out after this many seconds instead of waiting for a signal (for scripts).
    #[arg(long, value_name = "SECONDS")]
    logout_after: Option<u64>,
}

#[tokio::main]
pub(crate) async fn main() -> ExitCode {
    grpc_suite::cli::init_tracing("warn");
    grpc_suite::cli::exit_code(run(grpc_suite::args::parse(auth_service::SERVICE)).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(session_id) = args.logout {
        let channel = args.connection.connect_with_deadline().await?;
        let message = auth_service::client::logout(channel, session_id).await?;
        println!("Logout: {message}");
        return Ok(());
    }
    let password = if args.prompt_password {
        read_password()?
    } else {
        args.password
    };
    // Listening starts now, not when the session starts waiting: a Ctrl+C right after
    // `Session active` is printed must log out, not kill the process.
    let signalled = grpc_suite::server::shutdown_on_signals();
    let channel = args.connection.connect_with_deadline().await?;
    if args.print_session {
        let session_id = auth_service::client::login(channel, args.username, password).await?;
        println!("{session_id}");
        return Ok(());
    }
    let until = match args.logout_after {
        Some(seconds) => Until::Timer(Duration::from_secs(seconds)),
        None => Until::Signal,
    };
    let stop = async move {
        match until {
            Until::Timer(delay) => tokio::time::sleep(delay).await,
            Until::Signal => {
                signalled.cancelled().await;
                // The terminal shows `^C` where the cursor was; what follows starts on a
                // line of its own.
                if std::io::stdout().is_terminal() {
                    println!();
                }
            }
        }
    };
    auth_service::client::run(
        channel,
        args.username,
        password,
        until,
        stop,
        &mut std::io::stdout(),
    )
    .await
}

fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password("Password: ").context("reading the password");
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

#[cfg(test)]
mod tests {
    /// The flag definitions are consistent (clap checks names, defaults, env vars).
    #[test]
    fn args_are_well_formed() {
        grpc_suite::args::command::<super::Args>(auth_service::SERVICE).debug_assert();
    }
}
