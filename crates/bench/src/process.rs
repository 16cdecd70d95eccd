//! A server under test in its own process: `grpc_bench serve <kind>` started as a child,
//! its port read from its startup line, its startup time measured from spawn to the first
//! accepted TCP connection, and its memory read from `/proc/<pid>/status`.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncRead, BufReader},
    net::TcpStream,
    process::{Child, Command},
};

use crate::servers::ServerKind;

/// How long a server may take to print its port and accept a connection. Generous: the
/// machine is shared, and a slow start is reported as a figure, not as a failure.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The line every server prints once bound, ending in the real port.
const STARTED_MARKER: &str = "started on port ";

/// A server's memory, from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Resident set size now (`VmRSS`).
    pub rss_kib: u64,
    /// The highest resident set size so far (`VmHWM`, the high-water mark).
    pub peak_kib: u64,
}

impl Memory {
    /// Reads the memory of process `pid`.
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        Self::parse(&status).with_context(|| format!("no VmRSS/VmHWM in {path}"))
    }

    fn parse(status: &str) -> Option<Self> {
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|line| line.starts_with(name))?;
            line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        };
        Some(Self {
            rss_kib: field("VmRSS:")?,
            peak_kib: field("VmHWM:")?,
        })
    }
}

/// KiB as MiB, the unit the report uses for whole-process memory.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A running server child. Killed when dropped, so a failed scenario leaves nothing behind.
#[derive(Debug)]
pub struct ServerProcess {
    kind: ServerKind,
    child: Child,
    pid: u32,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    /// From spawn until a TCP connection to it succeeded.
    pub startup: Duration,
    /// Resident memory right after it started, before any request.
    pub idle: Memory,
    log_path: PathBuf,
}

impl ServerProcess {
    /// Starts `grpc_bench serve <kind>` on 127.0.0.1 port 0 with its data in `data_dir`
    /// (and `extra` arguments), waits until it accepts a TCP connection, and samples its
    /// idle memory. Its stderr (tracing) goes to `<data_dir>/<kind>.log`.
    pub async fn start(kind: ServerKind, data_dir: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let exe = std::env::current_exe().context("finding the grpc_bench executable")?;
        let log_path = data_dir.join(format!("{}.log", kind.name()));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut command = Command::new(exe);
        command
            .arg("serve")
            .arg(kind.name())
            .args(["--addr", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let spawned_at = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("starting the {} server", kind.name()))?;
        let pid = child.id().context("the server exited at once")?;
        let stdout = child
            .stdout
            .take()
            .context("no pipe to the server's stdout")?;

        let started = tokio::time::timeout(START_TIMEOUT, async {
            let port = read_port(stdout).await?;
            loop {
                // The listener is bound before the line is printed, so this normally
                // succeeds at once; the loop only covers a server that prints early.
                if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                    return anyhow::Ok(port);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        let startup = spawned_at.elapsed();
        let port = match started {
            Ok(Ok(port)) => port,
            Ok(Err(error)) => {
                bail!("{error:#}; server log: {}", log_tail(&log_path))
            }
            Err(_) => bail!(
                "the {} server did not accept connections within {START_TIMEOUT:?}; server log: {}",
                kind.name(),
                log_tail(&log_path)
            ),
        };
        let idle = Memory::of(pid)?;
        Ok(Self {
            kind,
            child,
            pid,
            port,
            startup,
            idle,
            log_path,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its memory now.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        Memory::of(self.pid).with_context(|| {
            format!(
                "the {} server is gone; its log: {}",
                self.kind.name(),
                log_tail(&self.log_path)
            )
        })
    }

    /// Stops it (SIGKILL: its data is a throwaway temp folder) and reaps it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Reads the server's stdout until its `... started on port N` line, then keeps draining
/// it in the background so the server never blocks on a full pipe (the logger echoes
/// every row).
async fn read_port(stdout: impl AsyncRead + Unpin + Send + 'static) -> anyhow::Result<u16> {
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines
        .next_line()
        .await
        .context("reading the server's stdout")?
    {
        if let Some(index) = line.find(STARTED_MARKER) {
            let port = line[index + STARTED_MARKER.len()..]
                .trim()
                .parse()
                .with_context(|| format!("no port in {line:?}"))?;
            let mut rest = lines.into_inner();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut rest, &mut tokio::io::sink()).await;
            });
            return Ok(port);
        }
    }
    bail!("the server exited before printing its port")
}

/// The last lines of a server's log, for an error message.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() {
        "(empty)".to_owned()
    } else {
        tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// VmRSS and VmHWM are read in KiB from /proc's status format.
    #[test]
    fn parses_proc_status() {
        let status = "Name:\tx\nVmHWM:\t   12345 kB\nVmRSS:\t    6789 kB\n";
        assert_eq!(
            Memory::parse(status),
            Some(Memory {
                rss_kib: 6789,
                peak_kib: 12345
            })
        );
        assert_eq!(Memory::parse("Name:\tx\n"), None);
    }

    /// This process's own memory is readable, as a child's will be.
    #[test]
    fn reads_own_memory() {
        let memory = Memory::of(std::process::id()).expect("own status");
        assert!(memory.rss_kib > 0 && memory.peak_kib >= memory.rss_kib);
    }
}
