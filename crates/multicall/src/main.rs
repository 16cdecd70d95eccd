//! `grpc-suite`: every command of the suite in one binary, for the container image. Run as
//! `file_server` (a link named so) it is `file_server`, and so on for the other eleven; the
//! image holds one binary and twelve links instead of twelve binaries that each carry their
//! own copy of tonic, tokio and rustls (102 MB against the 60 MB the image may take).
//!
//! The commands' sources are the binaries' own (`crates/*/src/bin`), compiled in here as
//! modules, so there is exactly one `main` per command and nothing to keep in step.

use std::{path::Path, process::ExitCode};

#[path = "../../auth/src/bin/auth_client.rs"]
mod auth_client;
#[path = "../../auth/src/bin/auth_server.rs"]
mod auth_server;
#[path = "../../devcerts/src/bin/dev_certs.rs"]
mod dev_certs;
#[path = "../../file/src/bin/file_client.rs"]
mod file_client;
#[path = "../../file/src/bin/file_server.rs"]
mod file_server;
#[path = "../../logger/src/bin/logger_client.rs"]
mod logger_client;
#[path = "../../logger/src/bin/logger_query.rs"]
mod logger_query;
#[path = "../../logger/src/bin/logger_server.rs"]
mod logger_server;
#[path = "../../random/src/bin/random_client.rs"]
mod random_client;
#[path = "../../random/src/bin/random_server.rs"]
mod random_server;
#[path = "../../streaming/src/bin/streaming_client/main.rs"]
mod streaming_client;
#[path = "../../streaming/src/bin/streaming_server.rs"]
mod streaming_server;

/// A command's `main`.
type Main = fn() -> ExitCode;

/// Each command's name and `main`.
const COMMANDS: &[(&str, Main)] = &[
    ("file_server", file_server::main),
    ("file_client", file_client::main),
    ("random_server", random_server::main),
    ("random_client", random_client::main),
    ("streaming_server", streaming_server::main),
    ("streaming_client", streaming_client::main),
    ("auth_server", auth_server::main),
    ("auth_client", auth_client::main),
    ("logger_server", logger_server::main),
    ("logger_client", logger_client::main),
    ("logger_query", logger_query::main),
    ("dev_certs", dev_certs::main),
];

fn main() -> ExitCode {
    let invoked = std::env::args_os()
        .next()
        .and_then(|path| {
            Path::new(&path)
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    match COMMANDS.iter().find(|(name, _)| *name == invoked) {
        Some((_, command)) => command(),
        None => {
            let names: Vec<&str> = COMMANDS.iter().map(|(name, _)| *name).collect();
            eprintln!(
                "error: run this binary as one of its commands (a link named {}), not as {invoked:?}",
                names.join(", ")
            );
            ExitCode::FAILURE
        }
    }
}
