//! `grpc_bench`: measure the services (`run`), or serve the bare tonic reference for a
//! measuring parent (`serve bare`, hidden; the real servers run from their own binaries).
//! See the `bench` library.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use bench::{RunOptions, Scenario, Settings};
use clap::{Parser, Subcommand};

/// Load generator for the gRPC services: throughput, latency, startup time and memory.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure scenarios; prints `scenario=<name> key=value …` lines and a summary table.
    Run(RunArgs),
    /// Serve the bare reference on --addr for a measuring `run` (prints `... started on
    /// port N`).
    #[command(hide = true)]
    Serve(ServeArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// A scenario to measure (repeatable); default: all of them.
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Scenario>,
    /// Every scenario for about a second with small sizes (for CI); other size flags
    /// still override.
    #[arg(long)]
    smoke: bool,
    /// Seconds each timed phase measures (SayHello, logger, logins).
    #[arg(long, env = "GRPC_BENCH_DURATION")]
    duration: Option<f64>,
    /// How many times to measure each scenario; the medians are reported.
    #[arg(long, env = "GRPC_BENCH_REPEAT", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// Calls in flight at once (SayHello, logger, logouts).
    #[arg(long, env = "GRPC_BENCH_CONCURRENCY")]
    concurrency: Option<usize>,
    /// HTTP/2 connections those calls share.
    #[arg(long, env = "GRPC_BENCH_CONNECTIONS")]
    connections: Option<usize>,
    /// Upload size in MiB.
    #[arg(long, env = "GRPC_BENCH_UPLOAD_MIB")]
    upload_mib: Option<u64>,
    /// Upload chunk size in KiB.
    #[arg(long, env = "GRPC_BENCH_CHUNK_KIB")]
    chunk_kib: Option<usize>,
    /// Numbers in the random stream.
    #[arg(long, env = "GRPC_BENCH_RANDOM_COUNT")]
    random_count: Option<u32>,
    /// Chat clients in the fan-out (K).
    #[arg(long, env = "GRPC_BENCH_CHAT_CLIENTS")]
    chat_clients: Option<usize>,
    /// Messages each chat client sends (M).
    #[arg(long, env = "GRPC_BENCH_CHAT_MESSAGES")]
    chat_messages: Option<usize>,
    /// Chat clients joining at once in the join phase.
    #[arg(long, env = "GRPC_BENCH_CHAT_JOINS")]
    chat_joins: Option<usize>,
    /// Chat joins in progress at once in the join phase.
    #[arg(long, env = "GRPC_BENCH_CHAT_JOIN_PARALLELISM")]
    chat_join_parallelism: Option<usize>,
    /// HTTP/2 connections the join phase's clients share (round-robin), on both the
    /// streaming server and the bare reference; 0 (the default): one per client.
    #[arg(long, env = "GRPC_BENCH_CHAT_JOIN_CONNECTIONS")]
    chat_join_connections: Option<usize>,
    /// Messages each join-phase client sends to the bare echo and reads back, one at a
    /// time (default 1). Our server's clients each receive about N/2 join notices; this
    /// lets the bare reference carry similar traffic.
    #[arg(long, env = "GRPC_BENCH_CHAT_ECHO_MESSAGES")]
    chat_echo_messages: Option<usize>,
    /// Also run the chat fan-out with the room on a NATS bus (`streaming_server
    /// --chat-bus`, needs nats-server): all members on one replica, then spread over
    /// this many replicas (default 0: not run).
    #[arg(long, env = "GRPC_BENCH_CHAT_REPLICAS")]
    chat_replicas: Option<usize>,
    /// Sessions opened then closed to measure logouts/s.
    #[arg(long, env = "GRPC_BENCH_LOGOUT_SESSIONS")]
    logout_sessions: Option<usize>,
    /// Wrong-password logins in flight at once during the auth flood (default 200).
    #[arg(long, env = "GRPC_BENCH_FLOOD_LOGINS")]
    flood_logins: Option<usize>,
    /// Logout and ValidateSession calls timed idle, and again during the flood.
    #[arg(long, env = "GRPC_BENCH_PROBE_CALLS")]
    probe_calls: Option<usize>,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Which server: only the bare reference has no binary of its own.
    #[arg(value_enum)]
    kind: Reference,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Serve TLS with this certificate (PEM), as the real servers' flag of the same name.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// The servers `grpc_bench serve` runs itself.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Reference {
    /// Plain tonic: SayHello and a ChatStream echo (see `bench::bare`).
    Bare,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Command::Run(run) => {
            grpc_suite::cli::init_tracing("warn");
            grpc_suite::cli::exit_code(measure(run).await)
        }
        // No tracing subscriber: being plain is the reference's whole point.
        Command::Serve(ServeArgs {
            kind: Reference::Bare,
            addr,
            tls_cert,
            tls_key,
        }) => {
            let tls = tls_cert
                .zip(tls_key)
                .map(|(cert, key)| grpc_suite::tls::ServerTlsFiles {
                    cert,
                    key,
                    client_ca: None,
                });
            grpc_suite::cli::exit_code(bench::bare::serve_main(addr, tls).await)
        }
    }
}

async fn measure(args: RunArgs) -> anyhow::Result<()> {
    let mut settings = if args.smoke {
        Settings::smoke()
    } else {
        Settings::full(Duration::from_secs(5))
    };
    if let Some(seconds) = args.duration {
        anyhow::ensure!(seconds > 0.0, "--duration must be positive");
        settings.duration = Duration::from_secs_f64(seconds);
    }
    settings.concurrency = args.concurrency.unwrap_or(settings.concurrency);
    settings.connections = args.connections.unwrap_or(settings.connections);
    if let Some(mib) = args.upload_mib {
        settings.upload_bytes = mib << 20;
    }
    if let Some(kib) = args.chunk_kib {
        settings.chunk_bytes = kib << 10;
    }
    settings.random_count = args.random_count.unwrap_or(settings.random_count);
    settings.chat_clients = args.chat_clients.unwrap_or(settings.chat_clients);
    settings.chat_messages = args.chat_messages.unwrap_or(settings.chat_messages);
    settings.chat_joins = args.chat_joins.unwrap_or(settings.chat_joins);
    settings.chat_join_parallelism = args
        .chat_join_parallelism
        .unwrap_or(settings.chat_join_parallelism);
    settings.chat_join_connections = args
        .chat_join_connections
        .unwrap_or(settings.chat_join_connections);
    settings.chat_echo_messages = args
        .chat_echo_messages
        .unwrap_or(settings.chat_echo_messages);
    settings.chat_replicas = args.chat_replicas.unwrap_or(settings.chat_replicas);
    settings.logout_sessions = args.logout_sessions.unwrap_or(settings.logout_sessions);
    settings.flood_logins = args.flood_logins.unwrap_or(settings.flood_logins);
    settings.probe_calls = args.probe_calls.unwrap_or(settings.probe_calls);
    let scenarios = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenarios
    };
    let options = RunOptions {
        scenarios,
        settings,
        repeat: args.repeat as usize,
    };
    bench::run(&options, &mut std::io::stdout().lock()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    /// The flag definitions are consistent (clap checks names, defaults, env vars).
    #[test]
    fn args_are_well_formed() {
        <super::Args as clap::CommandFactory>::command().debug_assert();
    }
}
