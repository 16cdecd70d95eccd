//! `auth_client`: logs in, keeps the session until Ctrl+C or SIGTERM, then logs out.

use std::{io::IsTerminal, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use grpc_suite::args::{ClientArgs, Service};

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

const SERVICE: Service = Service {
    env_prefix: "AUTH_SERVICE",
    default_port: auth_service::DEFAULT_PORT,
};

#[tokio::main]
async fn main() -> ExitCode {
    grpc_suite::cli::init_tracing("warn");
    grpc_suite::cli::exit_code(run(grpc_suite::args::parse(SERVICE)).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(session_id) = args.logout {
        let channel = args.connection.connect().await?;
        let message = auth_service::client::logout(channel, session_id).await?;
        println!("Logout: {message}");
        return Ok(());
    }
    let password = if args.prompt_password {
        read_password()?
    } else {
        args.password
    };
    let channel = args.connection.connect().await?;
    if args.print_session {
        let session_id = auth_service::client::login(channel, args.username, password).await?;
        println!("{session_id}");
        return Ok(());
    }
    let stop = async move {
        match args.logout_after {
            Some(seconds) => tokio::time::sleep(Duration::from_secs(seconds)).await,
            None => grpc_suite::server::wait_for_signal().await,
        }
    };
    auth_service::client::run(
        channel,
        args.username,
        password,
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
        grpc_suite::args::command::<super::Args>(super::SERVICE).debug_assert();
    }
}
