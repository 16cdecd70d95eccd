//! `logger_query`: prints the newest events straight from a logger database file,
//! read-only, as the old query tool did.

use std::{io::Write as _, path::PathBuf, process::ExitCode};

use clap::Parser;

/// Prints the newest logged events from the database file (or PostgreSQL database), newest
/// first.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The SQLite database file (opened read-only; never created or changed), or the
    /// postgres://user[:password]@host[:port]/dbname URL the logger servers store in.
    #[arg(long, env = "LOGGER_SERVICE_DB", default_value = logger_service::DEFAULT_DB)]
    db: PathBuf,
    /// How many events to show.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    limit: u32,
    /// Only events of exactly this type.
    #[arg(long = "type", value_name = "TYPE")]
    event_type: Option<String>,
}

pub(crate) fn main() -> ExitCode {
    grpc_suite::cli::init_tracing("warn");
    grpc_suite::cli::exit_code(run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    let event_type = args.event_type.as_deref();
    let rows = match args
        .db
        .to_str()
        .filter(|db| grpc_suite::postgres::is_url(db))
    {
        Some(url) => logger_service::query::read_logs_postgres(url, args.limit, event_type)?,
        None => logger_service::query::read_logs(&args.db, args.limit, event_type)?,
    };
    let text = logger_service::table::render(&rows);
    std::io::stdout().lock().write_all(text.as_bytes())?;
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
