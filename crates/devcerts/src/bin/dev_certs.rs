//! `dev_certs`: writes a development CA and certificates for trying the suite over TLS.

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;

/// Writes a development CA (ca.pem), a server certificate for every service name and this
/// machine (server.pem, server.key) and a client certificate for mutual TLS (client.pem,
/// client.key). For development only: use your own CA's certificates in production.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Folder to write into (created if missing).
    #[arg(long, env = "DEV_CERTS_OUT", default_value = "certs")]
    out: PathBuf,
    /// Another name (DNS name or IP address) the server certificate is valid for; repeat
    /// for more.
    #[arg(long = "name", value_name = "NAME")]
    names: Vec<String>,
    /// Replace an existing set.
    #[arg(long, conflicts_with = "if_missing")]
    force: bool,
    /// Do nothing, successfully, when the folder already holds a CA (for first-start
    /// scripts).
    #[arg(long)]
    if_missing: bool,
}

pub(crate) fn main() -> ExitCode {
    grpc_suite::cli::init_tracing("warn");
    grpc_suite::cli::exit_code(run(Args::parse()))
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.if_missing && args.out.join(dev_certs::CA_CERT).exists() {
        println!("Certificates already in {}", args.out.display());
        return Ok(());
    }
    for path in dev_certs::write_dev_set(&args.out, &args.names, args.force)? {
        println!("wrote {}", path.display());
    }
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
