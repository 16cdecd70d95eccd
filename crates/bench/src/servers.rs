//! The servers under measurement, each started as a user starts it: the real server binary
//! (`file_server`, …) found next to the running grpc_bench, on 127.0.0.1 port 0 with its
//! data flags pointing into the scenario's temporary folder. Only the bare tonic reference,
//! which has no binary, is grpc_bench itself re-executed (`grpc_bench serve bare`, see
//! [`crate::bare`]). Child handling (startup line, /proc memory, kill) is
//! [`testkit::ServerProcess`]'s; this module adds what the report needs: the startup time
//! up to the first accepted TCP connection and the idle memory.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use testkit::{Launch, Memory, ServerProcess};
use tokio::net::TcpStream;

/// How long a server may take to print its port and accept a connection. Generous: the
/// machine is shared, and a slow start is reported as a figure, not as a failure.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The command that builds every server binary next to an optimised grpc_bench.
const BUILD_HINT: &str = "cargo build --release --workspace";

/// Which server a scenario measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// The file service (`file_server`).
    File,
    /// The random number service (`random_server`).
    Random,
    /// The streaming service (`streaming_server`).
    Streaming,
    /// The logger service (`logger_server`).
    Logger,
    /// The auth service (`auth_server`); the scenario passes `--users` and `--logger-addr`.
    Auth,
    /// A bare tonic server answering `file.FileService/SayHello` and echoing
    /// `streaming.StreamingService/ChatStream`, with no health, reflection, tracing or
    /// layers: the reference the file service and the chat room are compared with.
    Bare,
}

impl ServerKind {
    /// The name used in log file names and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Random => "random",
            Self::Streaming => "streaming",
            Self::Logger => "logger",
            Self::Auth => "auth",
            Self::Bare => "bare",
        }
    }

    /// The file name of the binary users run for it; `None` for the bare reference, which
    /// is grpc_bench itself.
    pub fn binary_name(self) -> Option<&'static str> {
        match self {
            Self::File => Some("file_server"),
            Self::Random => Some("random_server"),
            Self::Streaming => Some("streaming_server"),
            Self::Logger => Some("logger_server"),
            Self::Auth => Some("auth_server"),
            Self::Bare => None,
        }
    }

    /// The binary to run: the server's own, in the folder of the running grpc_bench (cargo
    /// puts every binary of a workspace and profile there), so a release grpc_bench
    /// measures release servers. Fails with one line saying how to build it if missing.
    pub fn binary(self) -> anyhow::Result<PathBuf> {
        let grpc_bench = std::env::current_exe().context("finding the grpc_bench executable")?;
        let Some(name) = self.binary_name() else {
            return Ok(grpc_bench);
        };
        let folder = grpc_bench
            .parent()
            .context("the grpc_bench executable has no folder")?;
        let binary = folder.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
        anyhow::ensure!(
            binary.is_file(),
            "{} is missing: build the servers next to grpc_bench (`{BUILD_HINT}`, or \
             `cargo build --workspace` for a debug grpc_bench)",
            binary.display()
        );
        Ok(binary)
    }

    /// The arguments that start it on 127.0.0.1 port 0 with its data under `data_dir`,
    /// before any a scenario adds. The folder names are the binaries' own defaults, so a
    /// server's data looks as it does when a user runs it from `data_dir`.
    fn arguments(self, data_dir: &Path) -> Vec<OsString> {
        let mut arguments: Vec<OsString> = Vec::new();
        if self == Self::Bare {
            arguments.extend(["serve".into(), "bare".into()]);
        }
        arguments.extend(["--addr".into(), "127.0.0.1:0".into()]);
        let data_flag = match self {
            Self::File => Some(("--dir", data_dir.join("uploaded_files"))),
            Self::Streaming => Some(("--dir", data_dir.join("streamed_files"))),
            Self::Logger => Some(("--db", data_dir.join("logs.db"))),
            Self::Auth => Some(("--data-dir", data_dir.to_path_buf())),
            Self::Random | Self::Bare => None,
        };
        if let Some((flag, path)) = data_flag {
            arguments.extend([flag.into(), path.into_os_string()]);
        }
        arguments
    }
}

/// Fails, before anything is measured, with one line naming the first server binary that
/// is missing, so a run does not stop halfway through with the binaries unbuilt.
pub fn check_binaries(kinds: impl IntoIterator<Item = ServerKind>) -> anyhow::Result<()> {
    for kind in kinds {
        kind.binary()?;
    }
    Ok(())
}

/// A running server under measurement. Killed when dropped, so a failed scenario leaves
/// nothing behind.
pub struct Server {
    process: ServerProcess,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    /// From spawn until a TCP connection to it succeeded.
    pub startup: Duration,
    /// Resident memory right after it started, before any request.
    pub idle: Memory,
}

impl Server {
    /// Starts `kind` on 127.0.0.1 port 0 with its data in `data_dir` and the scenario's
    /// `extra` flags (the binary's own flag names), waits until it accepts a TCP
    /// connection, and samples its idle memory.
    ///
    /// The server logs as deployed: tracing at its binary's default (`info`) unless
    /// `RUST_LOG` says otherwise (it is inherited), to `<data_dir>/<kind>.log`, so logging
    /// costs what it costs users but never reaches the report. Its stdout is drained and
    /// dropped: the logger echoes every row there.
    pub async fn start(kind: ServerKind, data_dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let launch = Launch::new(kind.binary()?)
            .args(kind.arguments(data_dir))
            .args(extra)
            .stderr_to(data_dir.join(format!("{}.log", kind.name())))
            .discard_stdout()
            .start_timeout(START_TIMEOUT);
        // Waiting for the startup line blocks a thread; keep it off the runtime's workers.
        let process = tokio::task::spawn_blocking(move || launch.start())
            .await
            .context("the thread starting a server panicked")?
            .with_context(|| format!("starting the {} server", kind.name()))?;
        let port = process.port;
        let accepted = tokio::time::timeout(START_TIMEOUT, async {
            loop {
                // The listener is bound before the line is printed, so this normally
                // succeeds at once; the loop only covers a server that prints early.
                if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        let startup = process.spawned_at().elapsed();
        anyhow::ensure!(
            accepted.is_ok(),
            "the {} server announced port {port} but accepted no connection within \
             {START_TIMEOUT:?}",
            kind.name()
        );
        let idle = process.memory()?;
        Ok(Self {
            process,
            port,
            startup,
            idle,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.process.url()
    }

    /// Its memory now.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        self.process.memory()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Its CPU time (user + system) so far.
    pub fn cpu(&self) -> anyhow::Result<Duration> {
        Ok(crate::cpu::ProcessStat::of(Some(self.process.pid()))?.cpu)
    }

    /// Kills it (SIGKILL: its data is a throwaway temp folder, and a graceful drain would
    /// only add time between scenarios) and reaps it.
    pub fn stop(self) {
        self.process.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each server gets `--addr 127.0.0.1:0` and the data flag its binary defines, pointing
    /// into the scenario's folder; the bare reference is `grpc_bench serve bare`.
    #[test]
    fn arguments_use_each_binarys_flags() {
        let data = Path::new("/data");
        let shown = |kind: ServerKind| -> Vec<String> {
            kind.arguments(data)
                .iter()
                .map(|argument| argument.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(
            shown(ServerKind::File),
            ["--addr", "127.0.0.1:0", "--dir", "/data/uploaded_files"]
        );
        assert_eq!(
            shown(ServerKind::Streaming),
            ["--addr", "127.0.0.1:0", "--dir", "/data/streamed_files"]
        );
        assert_eq!(
            shown(ServerKind::Logger),
            ["--addr", "127.0.0.1:0", "--db", "/data/logs.db"]
        );
        assert_eq!(
            shown(ServerKind::Auth),
            ["--addr", "127.0.0.1:0", "--data-dir", "/data"]
        );
        assert_eq!(shown(ServerKind::Random), ["--addr", "127.0.0.1:0"]);
        assert_eq!(
            shown(ServerKind::Bare),
            ["serve", "bare", "--addr", "127.0.0.1:0"]
        );
    }

    /// A server binary that is not next to the running executable is one line naming it
    /// and the command that builds it.
    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        // The unit-test executable lives in target/<profile>/deps, where no server is.
        let message = format!("{:#}", ServerKind::File.binary().expect_err("missing"));
        assert!(message.contains("file_server is missing"), "{message}");
        assert!(message.contains(BUILD_HINT), "{message}");
        assert_eq!(message.lines().count(), 1, "{message}");
        assert!(ServerKind::Bare.binary().is_ok());
    }
}
