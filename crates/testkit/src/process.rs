//! A server binary run as a child process, as a user runs it: started with its flags and
//! environment, its port read from its `<Title> started on port N` line, its memory read
//! from `/proc/<pid>/status`, signalled, and stopped within a bound. The service crates'
//! tests and `grpc_bench` both start servers through this one helper.
//!
//! Everything is synchronous (threads, not a runtime) so a plain `#[test]` can use it; an
//! async caller runs [`Launch::start`] on a blocking thread.

use std::{
    ffi::{OsStr, OsString},
    io::{BufRead as _, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::TIMEOUT;

/// What every server prints once its listener is bound, followed by the real port.
const STARTED_MARKER: &str = "started on port ";

/// How a server binary is started: its arguments (exactly these, in order), extra
/// environment, where its stderr goes, and how long it may take to announce its port.
#[derive(Debug, Clone)]
pub struct Launch {
    binary: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    stderr_log: Option<PathBuf>,
    keep_stdout: bool,
    start_timeout: Duration,
}

impl Launch {
    /// Runs `binary` with no arguments, the caller's environment, stderr inherited, stdout
    /// kept for [`ServerProcess::stdout`], and [`TIMEOUT`] to print its startup line.
    pub fn new(binary: impl AsRef<Path>) -> Self {
        Self {
            binary: binary.as_ref().to_path_buf(),
            args: Vec::new(),
            env: Vec::new(),
            stderr_log: None,
            keep_stdout: true,
            start_timeout: TIMEOUT,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|arg| arg.as_ref().to_os_string()));
        self
    }

    /// Sets one environment variable for the server (the rest is inherited).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// Writes the server's stderr (its tracing) to `path` instead of the caller's stderr;
    /// errors about the server then quote the file's last lines.
    pub fn stderr_to(mut self, path: impl Into<PathBuf>) -> Self {
        self.stderr_log = Some(path.into());
        self
    }

    /// Reads stdout after the startup line without keeping it. For long runs of a server
    /// that prints per request (the logger echoes every row), where keeping it all would
    /// grow the caller's memory; [`ServerProcess::stdout`] then shows the startup lines only.
    pub fn discard_stdout(mut self) -> Self {
        self.keep_stdout = false;
        self
    }

    /// How long the server may take to print its startup line.
    pub fn start_timeout(mut self, limit: Duration) -> Self {
        self.start_timeout = limit;
        self
    }

    /// Starts the server and waits for its `... started on port N` line. Fails at once if
    /// it exits first, or after the start timeout; either way nothing is left running.
    pub fn start(self) -> anyhow::Result<ServerProcess> {
        let binary_name = self.binary.display().to_string();
        let mut command = Command::new(&self.binary);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        match &self.stderr_log {
            Some(path) => {
                let log = std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                command.stderr(Stdio::from(log));
            }
            None => {
                command.stderr(Stdio::inherit());
            }
        }
        let spawned_at = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {binary_name}"))?;
        let stdout = match child.stdout.take() {
            Some(stdout) => stdout,
            None => {
                reap(&mut child);
                bail!("no pipe to {binary_name}'s stdout");
            }
        };
        let printed = Arc::new(Mutex::new(String::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let sink = Arc::clone(&printed);
        let keep_stdout = self.keep_stdout;
        // Drains stdout for the life of the process so the server never blocks on a full
        // pipe, and reports the port as soon as the startup line shows it. Dropping
        // `port_tx` at end of stream tells the waiter the server exited without one.
        std::thread::spawn(move || drain_stdout(stdout, &sink, keep_stdout, &port_tx));
        let outcome = port_rx.recv_timeout(self.start_timeout);
        let announced_after = spawned_at.elapsed();
        match outcome {
            Ok(port) => Ok(ServerProcess {
                child,
                port,
                stdout: printed,
                spawned_at,
                announced_after,
                stderr_log: self.stderr_log,
            }),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Stdout closed: the process is exiting; the wait is short.
                let status = wait_bounded(&mut child, Duration::from_secs(5));
                reap(&mut child);
                bail!(
                    "{binary_name} exited before printing its port ({}){}",
                    describe(status),
                    log_tail(self.stderr_log.as_deref())
                )
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                reap(&mut child);
                bail!(
                    "{binary_name} printed no `started on port` line within {:?}{}",
                    self.start_timeout,
                    log_tail(self.stderr_log.as_deref())
                )
            }
        }
    }
}

/// A process's memory from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Resident set size now (`VmRSS`).
    pub rss_kib: u64,
    /// The highest resident set size so far (`VmHWM`, the high-water mark).
    pub peak_kib: u64,
}

impl Memory {
    /// Reads the memory of process `pid` (Linux only: there is no /proc elsewhere).
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // A zombie still has a status file, without the Vm lines.
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

/// A server binary running as a child process; killed (SIGKILL) and reaped on drop, so a
/// failing test or benchmark leaves nothing behind.
pub struct ServerProcess {
    child: Child,
    /// The port from its `... started on port N` line.
    pub port: u16,
    /// Everything it printed on stdout so far, startup lines included (unless discarded).
    stdout: Arc<Mutex<String>>,
    /// When it was spawned: the start of every startup-time figure.
    spawned_at: Instant,
    /// From spawn until its startup line was read.
    announced_after: Duration,
    /// Where its stderr goes, if to a file: quoted in errors.
    stderr_log: Option<PathBuf>,
}

impl ServerProcess {
    /// Runs `binary --addr 127.0.0.1:0 ARGS…` with `RUST_LOG` defaulting to `warn` (to keep
    /// test output readable; a test that wants the server's logs sets RUST_LOG), stderr
    /// inherited, and waits for its startup line.
    pub fn start(binary: impl AsRef<Path>, args: &[&str]) -> anyhow::Result<Self> {
        let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned());
        Launch::new(binary)
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", rust_log)
            .start()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What it has printed on stdout.
    pub fn stdout(&self) -> String {
        self.stdout
            .lock()
            .map(|text| text.clone())
            .unwrap_or_default()
    }

    /// Waits until its stdout contains `needle`, failing after [`TIMEOUT`].
    pub fn wait_for_stdout(&self, needle: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let printed = self.stdout();
            if printed.contains(needle) {
                return Ok(printed);
            }
            if Instant::now() > deadline {
                bail!("stdout never showed {needle:?}; it has:\n{printed}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id, e.g. for sending signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// When it was spawned, for startup times that end later than its startup line (e.g.
    /// at its first accepted connection).
    pub fn spawned_at(&self) -> Instant {
        self.spawned_at
    }

    /// How long it took from spawn to printing its startup line (its listener is bound by
    /// then).
    pub fn announced_after(&self) -> Duration {
        self.announced_after
    }

    /// Its memory now, from `/proc/<pid>/status`. Fails once it has exited, quoting its log
    /// when its stderr goes to a file.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        Memory::of(self.pid()).with_context(|| {
            format!(
                "the server (pid {}) is gone{}",
                self.pid(),
                log_tail(self.stderr_log.as_deref())
            )
        })
    }

    /// Sends a signal (`"TERM"`, `"INT"`, `"KILL"`) with the system's `kill`.
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{name} failed");
        Ok(())
    }

    /// Waits for the process to exit, failing after `limit`.
    pub fn wait(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        wait_bounded(&mut self.child, limit)
    }

    /// Stops it as an operator would: SIGTERM, then up to `limit` for it to drain and exit.
    /// A server still running after that is killed and the stop fails, since a shutdown
    /// that hangs is a bug worth reporting.
    pub fn stop(mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        self.signal("TERM")?;
        self.wait(limit)
            .context("the server did not stop after SIGTERM; killed it")
    }

    /// Kills it at once (SIGKILL) and reaps it: for servers whose data is thrown away, where
    /// a graceful drain would only add time.
    pub fn kill(mut self) {
        reap(&mut self.child);
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        reap(&mut self.child);
    }
}

/// Copies the server's stdout line by line into `sink` (when `keep`, or until the port is
/// known), sending the port from the first startup line.
fn drain_stdout(stdout: impl Read, sink: &Mutex<String>, keep: bool, port_tx: &mpsc::Sender<u16>) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    let mut announced = false;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // Lossy, so a stray non-UTF-8 byte neither stops the draining nor the server.
        let text = String::from_utf8_lossy(&line);
        if (keep || !announced)
            && let Ok(mut printed) = sink.lock()
        {
            printed.push_str(text.trim_end_matches(['\r', '\n']));
            printed.push('\n');
        }
        if !announced && let Some(port) = parse_port(&text) {
            announced = true;
            // The waiter may have given up already; the line is still recorded.
            let _ = port_tx.send(port);
        }
    }
}

/// The port in a `<Title> started on port N` line.
fn parse_port(line: &str) -> Option<u16> {
    line.split(STARTED_MARKER).nth(1)?.trim().parse().ok()
}

fn wait_bounded(child: &mut Child, limit: Duration) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!("the process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILL and wait: after SIGKILL the wait ends as soon as the kernel tears it down.
fn reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn describe(status: anyhow::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(error) => format!("{error:#}"),
    }
}

/// `; its log: <last lines>` for an error message, or nothing when stderr is not a file.
fn log_tail(path: Option<&Path>) -> String {
    let Some(path) = path else {
        return String::new();
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if tail.is_empty() {
        format!("; its log {} is empty", path.display())
    } else {
        format!("; its log {} ends: {tail}", path.display())
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

    /// The port is the number after `started on port`, whatever the title before it.
    #[test]
    fn parses_the_startup_line() {
        assert_eq!(
            parse_port("File Service started on port 50051\n"),
            Some(50051)
        );
        assert_eq!(parse_port("Files will be stored in: /tmp"), None);
        assert_eq!(parse_port("X started on port many"), None);
    }

    /// A process that announces a port is running, measurable, and stops on SIGTERM within
    /// the bound; the environment it was given reaches it.
    #[test]
    fn starts_measures_and_stops_a_process() {
        let server = Launch::new("sh")
            .args([
                "-c",
                "echo \"$FAKE_NAME started on port 4242\"; exec sleep 30",
            ])
            .env("FAKE_NAME", "fake")
            .start()
            .expect("starts");
        assert_eq!(server.port, 4242);
        assert_eq!(server.stdout(), "fake started on port 4242\n");
        assert!(server.announced_after() > Duration::ZERO);
        assert!(server.spawned_at().elapsed() >= server.announced_after());
        assert!(server.memory().expect("memory").rss_kib > 0);
        let status = server.stop(TIMEOUT).expect("stops");
        assert!(!status.success());
    }

    /// A process that exits before announcing a port fails the start at once, quoting its
    /// stderr log.
    #[test]
    fn an_early_exit_is_reported_with_the_log() {
        let folder = tempfile::tempdir().expect("temp dir");
        let log = folder.path().join("server.log");
        let started = Instant::now();
        let error = Launch::new("sh")
            .args(["-c", "echo 'error: binding 127.0.0.1:1' >&2; exit 3"])
            .stderr_to(&log)
            .start()
            .err()
            .expect("fails");
        let message = format!("{error:#}");
        assert!(
            message.contains("exited before printing its port"),
            "{message}"
        );
        assert!(message.contains("error: binding 127.0.0.1:1"), "{message}");
        assert!(started.elapsed() < TIMEOUT, "waited for the timeout");
    }

    /// A process that never announces a port fails the start after the start timeout and is
    /// not left running.
    #[test]
    fn a_silent_process_times_out() {
        let error = Launch::new("sh")
            .args(["-c", "exec sleep 30"])
            .start_timeout(Duration::from_millis(200))
            .start()
            .err()
            .expect("fails");
        let message = format!("{error:#}");
        assert!(message.contains("no `started on port` line"), "{message}");
    }

    /// With stdout discarded, the startup line is still kept but later output is not.
    #[test]
    fn discarded_stdout_keeps_only_the_startup_line() {
        let server = Launch::new("sh")
            .args([
                "-c",
                "echo 'Fake started on port 1'; echo row; echo row; exec sleep 30",
            ])
            .discard_stdout()
            .start()
            .expect("starts");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(server.stdout(), "Fake started on port 1\n");
        server.kill();
    }
}
