//! The real `grpc_bench` binary as CI runs it: a smoke of every scenario, checked for
//! well-formed output only. No figure is compared with a threshold: the machine is shared
//! and noisy, and the tool's job here is to keep working.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers fail the test on the spot.

use std::time::Duration;

use bench::Scenario;

/// Generous: the smoke takes seconds, but CI machines are shared and debug builds slow.
const SMOKE_TIMEOUT: Duration = Duration::from_secs(300);

/// The servers grpc_bench starts from their own binaries, next to its own, and the client
/// binary the upload scenario times.
const SERVER_BINARIES: [&str; 6] = [
    "file_server",
    "random_server",
    "streaming_server",
    "auth_server",
    "logger_server",
    "streaming_client",
];

/// Fails with the command to run when the server binaries are not built. Cargo builds a
/// package's binaries only for its own integration tests: `cargo test --workspace` builds
/// them all, `cargo test -p bench` alone does not (and building them from inside a test
/// would contend for the target folder the running `cargo test` holds).
fn require_server_binaries() {
    let grpc_bench = std::path::Path::new(env!("CARGO_BIN_EXE_grpc_bench"));
    let folder = grpc_bench.parent().expect("grpc_bench has a folder");
    let missing: Vec<&str> = SERVER_BINARIES
        .into_iter()
        .filter(|name| {
            !folder
                .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
                .is_file()
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{missing:?} not built in {}: run `cargo build --workspace --bins` first \
         (`cargo test --workspace` builds them)",
        folder.display()
    );
}

/// The figures in each scenario's line that must be positive for the run to mean
/// anything: its headline and, where it has one, the ratio to its bare reference.
fn headline(scenario: &str) -> &'static [&'static str] {
    match scenario {
        "hello" => &["ratio"],
        "upload" => &[
            "mb_per_s",
            "ratio",
            "bare_nosync_mb_per_s",
            "client_bin_mb_per_s",
        ],
        "random" => &["numbers_per_s"],
        "chat" => &["deliveries_per_s", "fanout_ratio"],
        "logger" => &["acks_per_s", "sqlite_acks_per_s", "bare_rps", "ratio"],
        "auth" => &["logouts_per_s"],
        "tls-hello" => &["ratio"],
        "tls-upload" => &["mb_per_s", "ratio"],
        "sessions" => &["ratio"],
        "auth-flood" => &["validate_flood_ratio"],
        "chat-stuck" => &["peak_rss_mib"],
        "followers-stuck" => &["peak_rss_mib"],
        other => panic!("unknown scenario {other}"),
    }
}

/// `grpc_bench run --smoke` runs every scenario and prints one well-formed `scenario=` line
/// for each: every value a finite non-negative number, the headline figures and the server
/// startup times positive.
#[test]
fn smoke_prints_a_line_per_scenario() {
    require_server_binaries();
    let output = assert_cmd::Command::new(env!("CARGO_BIN_EXE_grpc_bench"))
        .args(["run", "--smoke"])
        .timeout(SMOKE_TIMEOUT)
        .output()
        .expect("run grpc_bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "grpc_bench failed: {stderr}\n{stdout}"
    );

    let lines: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("scenario="))
        .collect();
    let names: Vec<&str> = Scenario::ALL
        .iter()
        .map(|scenario| scenario.name())
        .collect();
    assert_eq!(lines.len(), names.len(), "{stdout}");
    for (line, name) in lines.iter().zip(&names) {
        let mut pairs = line.split(' ');
        assert_eq!(
            pairs.next(),
            Some(format!("scenario={name}").as_str()),
            "{line}"
        );
        let figures: Vec<(&str, f64)> = pairs
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or_else(|| panic!("{line}"));
                let value: f64 = value.parse().unwrap_or_else(|_| panic!("{key} in {line}"));
                assert!(value.is_finite() && value >= 0.0, "{key} in {line}");
                (key, value)
            })
            .collect();
        let positive = |key: &str| {
            let value = figures
                .iter()
                .find(|(name, _)| *name == key)
                .unwrap_or_else(|| panic!("no {key} in {line}"))
                .1;
            assert!(value > 0.0, "{key} in {line}");
        };
        for key in headline(name) {
            positive(key);
        }
        for (key, _) in figures
            .iter()
            .filter(|(key, _)| key.ends_with("startup_ms"))
        {
            positive(key);
        }
    }
    assert!(stdout.contains("verdict"), "no summary table: {stdout}");
}

/// A server the benchmark cannot start is one line on stderr and exit 1, not a hang.
#[test]
fn serve_refuses_a_busy_address() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let output = assert_cmd::Command::new(env!("CARGO_BIN_EXE_grpc_bench"))
        .args(["serve", "bare", "--addr", &addr])
        .timeout(Duration::from_secs(30))
        .output()
        .expect("run grpc_bench serve");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("error: binding"), "{stderr}");
}
