//! `streaming_client`: calls the streaming service. With no command it runs the old
//! script's three steps: time updates, an upload, the chat.

mod editor;

use std::{
    io::{IsTerminal as _, Write},
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
};

use clap::Parser;
use grpc_suite::args::ClientArgs;
use streaming_service::client::{Command, FlowOptions, Input, Interrupts, Progress, Session};

/// Calls the streaming service; with no command, runs time updates (until Ctrl+C), an
/// upload (asked for at a prompt) and the chat, as the old client did.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    connection: ClientArgs,
    /// Stop the time stream after N updates instead of at Ctrl+C (full flow only).
    #[arg(long, value_name = "N")]
    time_updates: Option<u64>,
    /// Upload this file instead of asking for one (full flow only).
    #[arg(long, value_name = "PATH", conflicts_with = "skip_upload")]
    upload: Option<PathBuf>,
    /// Skip the upload step without asking (full flow only).
    #[arg(long)]
    skip_upload: bool,
    #[command(subcommand)]
    command: Option<Subcommand>,
}

/// One step of the streaming client.
#[derive(Debug, clap::Subcommand)]
enum Subcommand {
    /// Prints the server's time once a second, until Ctrl+C or N updates.
    Time {
        /// Stop after this many updates.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Uploads a file in 1 MiB chunks and checks the server's checksum against ours.
    Upload {
        /// The local file to send.
        path: PathBuf,
        /// The name to store it under (default: the file name of PATH).
        #[arg(long = "as", value_name = "NAME")]
        store_as: Option<String>,
    },
    /// Joins the chat: sends each line of input, prints what everyone says; `/who` lists the
    /// room; `quit`, `/quit`, end of input (Ctrl+D) or Ctrl+C leaves.
    Chat,
}

impl From<Subcommand> for Command {
    fn from(subcommand: Subcommand) -> Self {
        match subcommand {
            Subcommand::Time { count } => Self::Time { count },
            Subcommand::Upload { path, store_as } => Self::Upload { path, store_as },
            Subcommand::Chat => Self::Chat,
        }
    }
}

/// The upload progress bar on stderr: bytes, rate and time left.
#[derive(Debug)]
struct ProgressBar(indicatif::ProgressBar);

impl ProgressBar {
    fn new() -> Self {
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        ) {
            bar.set_style(style);
        }
        Self(bar)
    }
}

impl Progress for ProgressBar {
    fn start(&self, total: u64) {
        self.0.reset();
        self.0.set_length(total);
    }

    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

#[tokio::main]
pub(crate) async fn main() -> ExitCode {
    grpc_suite::cli::init_tracing("warn");
    grpc_suite::cli::exit_code(run(grpc_suite::args::parse(streaming_service::SERVICE)).await)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let flow = FlowOptions {
        time_updates: args.time_updates,
        upload: args.upload,
        skip_upload: args.skip_upload,
    };
    anyhow::ensure!(
        args.command.is_none() || flow == FlowOptions::default(),
        "--time-updates, --upload and --skip-upload shape the full flow; they cannot be used with a command"
    );
    let channel = args.connection.connect().await?;
    let interrupts = Interrupts::ctrl_c();
    // The line editor only when a person is at a terminal: piped input is read line by
    // line as before, and output to a file or pipe stays plain.
    let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let mut _terminal = None;
    let (input, out): (Input, Box<dyn Write>) = match interrupts.sender() {
        Some(interrupt) if interactive => {
            _terminal = Some(editor::TerminalGuard::save());
            let (input, out) = editor::start(interrupt)?;
            (input, Box::new(out))
        }
        _ => (Input::stdin(), Box::new(std::io::stdout().lock())),
    };
    let mut session = Session::new(channel, input, interrupts, out);
    if std::io::stderr().is_terminal() && !interactive {
        session.progress = Some(Arc::new(ProgressBar::new()));
    }
    session.run(args.command.map(Command::from), &flow).await
}

#[cfg(test)]
mod tests {
    /// The flag definitions are consistent (clap checks names, defaults, env vars).
    #[test]
    fn args_are_well_formed() {
        grpc_suite::args::command::<super::Args>(streaming_service::SERVICE).debug_assert();
    }
}
