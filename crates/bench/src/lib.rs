//! grpc_bench: a load generator for the suite's services, in the spirit of ghz.
//!
//! `grpc_bench run` measures each [`Scenario`] against servers it starts itself as child
//! processes: the real server binaries, found next to grpc_bench, started as users start
//! them ([`servers`]), and the bare tonic reference, grpc_bench re-executed as
//! `grpc_bench serve bare` ([`bare`]). So each server's startup time and memory are its
//! own. Clients are the generated ones, over loopback. Each
//! scenario prints one `scenario=<name> key=value …` line ([`report`]); with `--repeat N`
//! each run's line is followed by the per-figure medians, and a table compares the
//! medians with the targets.
//!
//! - [`scenarios`]: the scenarios and the closed-loop load drivers they share;
//! - [`stats`]: percentiles and medians.

pub mod bare;
pub mod cpu;
pub mod report;
pub mod scenarios;
pub mod servers;
pub mod stats;

use std::io::Write;

use anyhow::Context as _;

pub use scenarios::{Scenario, Settings};

/// What `grpc_bench run` does.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The scenarios to measure, in order.
    pub scenarios: Vec<Scenario>,
    /// Their sizes and durations.
    pub settings: Settings,
    /// How many times each is measured; the figures reported are the medians.
    pub repeat: usize,
}

/// Measures every scenario `repeat` times (all scenarios once, then again, so slow drift in
/// the machine's load spreads over all of them), writing each line to `out` as it is
/// measured, then the medians and the summary table. Returns the medians.
pub async fn run(
    options: &RunOptions,
    out: &mut impl Write,
) -> anyhow::Result<Vec<report::Measurement>> {
    servers::check_binaries(
        options
            .scenarios
            .iter()
            .flat_map(|scenario| scenario.servers().iter().copied()),
    )?;
    let data = tempfile::Builder::new()
        .prefix("grpc_bench")
        .tempdir()
        .context("creating a temporary folder for the servers' data")?;
    let repeat = options.repeat.max(1);
    let mut runs: Vec<Vec<report::Measurement>> = vec![Vec::new(); options.scenarios.len()];
    for round in 1..=repeat {
        for (index, scenario) in options.scenarios.iter().enumerate() {
            eprintln!("grpc_bench: {} (run {round} of {repeat})", scenario.name());
            let context = scenarios::Context {
                settings: &options.settings,
                data_dir: data.path().join(format!("{}-{round}", scenario.name())),
            };
            std::fs::create_dir_all(&context.data_dir)
                .with_context(|| format!("creating {}", context.data_dir.display()))?;
            let measured = scenarios::run(*scenario, &context).await;
            // Uploads leave a gigabyte behind: free it before the next scenario.
            scenarios::remove_dir(&context.data_dir);
            let measured = measured?;
            if repeat > 1 {
                writeln!(out, "{}", measured.line(&[("run", round as u64)]))?;
                out.flush()?;
            }
            runs[index].push(measured);
        }
    }
    let medians: Vec<report::Measurement> = runs
        .iter()
        .filter_map(|runs| report::median_of(runs))
        .collect();
    for measurement in &medians {
        let prefix: &[(&str, u64)] = if repeat > 1 {
            &[("runs", repeat as u64)]
        } else {
            &[]
        };
        writeln!(out, "{}", measurement.line(prefix))?;
    }
    writeln!(out)?;
    write!(out, "{}", report::table(&medians))?;
    out.flush()?;
    Ok(medians)
}
