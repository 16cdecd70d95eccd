//! `logger_server`: the logger service (see the `logger_service` library).

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Parser;
use grpc_suite::args::ServerArgs;

/// Serves the logger service: stores events in SQLite or PostgreSQL, answers queries, streams
/// new events.
// A flag given twice takes the last value (grpc_bench passes its own --db after the
// default one for the PostgreSQL figure; scripts layering settings do the same).
#[derive(Debug, Parser)]
#[command(version, args_override_self = true)]
struct Args {
    #[command(flatten)]
    server: ServerArgs,
    /// The SQLite database file (it and its folder are created if missing), or a
    /// postgres://user[:password]@host[:port]/dbname URL: store in that PostgreSQL database
    /// (the schema is created if missing; several logger servers may share it).
    #[arg(long, env = "LOGGER_SERVICE_DB", default_value = logger_service::DEFAULT_DB)]
    db: PathBuf,
    /// The most rows one query (or one follow backlog) returns.
    #[arg(
        long,
        env = "LOGGER_SERVICE_MAX_QUERY_LIMIT",
        default_value_t = logger_service::DEFAULT_MAX_QUERY_LIMIT,
        value_parser = clap::value_parser!(u32).range(1..),
    )]
    max_query_limit: u32,
    /// LogActivity then needs `authorization: Bearer <the token in this file>`; a missing
    /// file is created with a new random token (mode 0600).
    #[arg(long, env = "LOGGER_SERVICE_WRITE_TOKEN_FILE", value_name = "PATH")]
    write_token_file: Option<PathBuf>,
    /// QueryLogs and FollowLogs then need the token in this file (created like the write
    /// token's when missing).
    #[arg(long, env = "LOGGER_SERVICE_READ_TOKEN_FILE", value_name = "PATH")]
    read_token_file: Option<PathBuf>,
}

pub(crate) fn main() -> ExitCode {
    grpc_suite::args::server_main(logger_service::SERVICE, |args: &Args| &args.server, run)
}

async fn run(args: Args) -> anyhow::Result<()> {
    let postgres_url = args
        .db
        .to_str()
        .filter(|db| grpc_suite::postgres::is_url(db))
        .map(str::to_owned);
    let config = logger_service::Config {
        db_path: args.db,
        postgres_url,
        max_query_limit: args.max_query_limit,
        echo: true,
        tokens: logger_service::tokens::Tokens {
            write: load_token(args.write_token_file.as_deref())?,
            read: load_token(args.read_token_file.as_deref())?,
        },
    };
    let store = logger_service::open(&config).await.with_context(|| {
        format!(
            "opening the database {}",
            logger_service::describe_database(&config)
        )
    })?;
    let listener = args.server.bind_announced("Logger Service").await?;
    let shown = match &config.postgres_url {
        Some(_) => logger_service::describe_database(&config),
        None => std::fs::canonicalize(&config.db_path)
            .unwrap_or_else(|_| config.db_path.clone())
            .display()
            .to_string(),
    };
    // The old script's words (its first line is the shared `started on port` line).
    println!("Database initialized at {shown}");
    let shutdown = grpc_suite::server::shutdown_on_signals();
    logger_service::serve(listener, store, &config, shutdown).await
}

fn load_token(path: Option<&std::path::Path>) -> anyhow::Result<Option<String>> {
    path.map(logger_service::tokens::load_or_create).transpose()
}

#[cfg(test)]
mod tests {
    /// The flag definitions are consistent (clap checks names, defaults, env vars).
    #[test]
    fn args_are_well_formed() {
        grpc_suite::args::command::<super::Args>(logger_service::SERVICE).debug_assert();
    }

    /// `--db` given twice takes the last value (how grpc_bench points a logger started
    /// with its default file at PostgreSQL).
    #[test]
    fn the_last_db_flag_wins() {
        let matches = grpc_suite::args::command::<super::Args>(logger_service::SERVICE)
            .try_get_matches_from([
                "logger_server",
                "--db",
                "logs.db",
                "--db",
                "postgres://u@h/d",
            ])
            .expect("parsed");
        let db: &std::path::PathBuf = matches.get_one("db").expect("db");
        assert_eq!(db.to_str(), Some("postgres://u@h/d"));
    }
}
