//! Test support shared by the service crates, so every crate tests its service the same
//! way: an in-process server on `127.0.0.1:0`, a server binary run as a user runs it
//! ([`ServerProcess`], which `grpc_bench` also starts its servers with), and a Python
//! `grpcio` client generated from `protos/`.
//!
//! Everything here is bounded in time: a test that cannot reach its server fails with a
//! message instead of hanging.

// Test support: a failed setup step should fail the test on the spot, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// How long any single wait in a test may take before the test fails instead of hanging.
pub const TIMEOUT: Duration = Duration::from_secs(20);

pub mod nats;
mod postgres;
mod process;

pub use nats::NatsServer;
pub use postgres::Postgres;
pub use process::{Launch, Memory, ServerProcess};

/// The workspace root (where `protos/` lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A service served in this process on an OS-chosen loopback port.
pub struct InProcessServer {
    /// Where it listens.
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcessServer {
    /// Binds `127.0.0.1:0` and hands the listener to `serve` (the crate's `serve` function,
    /// partially applied), on a task of the current runtime.
    pub async fn start<F, Fut>(serve: F) -> Self
    where
        F: FnOnce(TcpListener, CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0");
        Self::start_on(listener, serve)
    }

    /// Serves on a listener the test bound earlier. Until then, connections to it wait in
    /// the kernel's queue: that is how a test keeps a server "absent" at a known address
    /// without ever releasing the port to someone else.
    pub fn start_on<F, Fut>(listener: TcpListener, serve: F) -> Self
    where
        F: FnOnce(TcpListener, CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let addr = listener.local_addr().expect("reading the bound address");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(listener, shutdown.clone()));
        Self {
            addr,
            shutdown,
            task,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A connected channel.
    pub async fn channel(&self) -> Channel {
        let endpoint = Channel::from_shared(self.url())
            .expect("valid URL")
            .connect_timeout(TIMEOUT);
        tokio::time::timeout(TIMEOUT, endpoint.connect())
            .await
            .expect("connecting timed out")
            .expect("connecting to the in-process server")
    }

    /// The token that stops the server, for tests of shutdown behaviour.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops the server and returns what `serve` returned.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(TIMEOUT, self.task)
            .await
            .context("the server did not stop in time")?
            .context("the server task panicked")?
    }
}

/// Every file in `dir` and below, as sorted paths relative to it (temporary files included,
/// so a test sees anything an aborted write left behind).
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).expect("reading a folder") {
            let path = entry.expect("reading a folder entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(dir).expect("under dir");
                found.push(relative.display().to_string());
            }
        }
    }
    found.sort();
    found
}

/// Runs `client --server <loopback URL nothing listens on> ARGS…` and checks what a user
/// must see when the server is down: exit code 1 and one stderr line naming the address.
pub fn assert_reports_server_down(client: impl AsRef<Path>, args: &[&str]) {
    // Bound and released: the one way to name a loopback port with nothing behind it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let mut command = Command::new(client.as_ref());
    command
        .arg("--server")
        .arg(&url)
        .args(args)
        .stdin(Stdio::null());
    let output = run_with_timeout(&mut command, TIMEOUT).expect("the client runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("error: cannot reach the server at {url}")),
        "{stderr}"
    );
}

/// The folder cargo builds into (`target/`), found from the running test binary
/// (`target/debug/deps/<test>`), so a custom `CARGO_TARGET_DIR` is honoured.
fn target_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test binary")?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .context("the test binary is not under target/<profile>/deps")
}

/// The Python interpreter of a virtualenv holding `tests/python/requirements.txt`, made
/// on first use under `target/python-venv` (a fresh machine needs only `python3` and
/// the package registry). Built in a temporary folder and renamed into place, so an
/// interrupted install never leaves a broken environment behind.
pub fn python() -> anyhow::Result<PathBuf> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| make_venv().map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn make_venv() -> anyhow::Result<PathBuf> {
    let target = target_dir()?;
    let venv = target.join("python-venv");
    let python = venv.join("bin/python");
    if python.exists() {
        return Ok(python);
    }
    std::fs::create_dir_all(&target)?;
    let staging = tempfile::Builder::new()
        .prefix("python-venv-")
        .tempdir_in(&target)?;
    run_checked(
        Command::new("python3")
            .args(["-m", "venv"])
            .arg(staging.path()),
        "python3 -m venv (is python3 installed?)",
    )?;
    let requirements = workspace_root().join("tests/python/requirements.txt");
    let pip_install = |extra: &[&str]| {
        run_checked(
            Command::new(staging.path().join("bin/python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(extra)
                .arg("-r")
                .arg(&requirements),
            "pip install -r tests/python/requirements.txt",
        )
    };
    // One retry, bypassing pip's shared cache: a first setup should not fail the suite
    // over a dropped download or a cache another pip process is writing at that moment.
    if let Err(first) = pip_install(&[]) {
        eprintln!("retrying after: {first:#}");
        pip_install(&["--no-cache-dir"])?;
    }
    // Another test process may have won the race; either environment is complete.
    let staged = staging.keep();
    if std::fs::rename(&staged, &venv).is_err() {
        let _ = std::fs::remove_dir_all(&staged);
    }
    Ok(python)
}

/// The folder holding Python stubs generated from `protos/` (`file_service_pb2.py`, …),
/// regenerated once per test process so they always match the protos.
pub fn python_stubs() -> anyhow::Result<PathBuf> {
    static STUBS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    STUBS
        .get_or_init(|| make_stubs().map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn make_stubs() -> anyhow::Result<PathBuf> {
    let python = python()?;
    let protos = workspace_root().join("protos");
    let out = target_dir()?.join("python-stubs");
    std::fs::create_dir_all(&out)?;
    let mut protoc = Command::new(python);
    protoc
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", protos.display()));
    protoc.arg(format!("--python_out={}", out.display()));
    protoc.arg(format!("--grpc_python_out={}", out.display()));
    for entry in std::fs::read_dir(&protos)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "proto") {
            protoc.arg(path);
        }
    }
    run_checked(
        &mut protoc,
        "generating Python stubs with grpc_tools.protoc",
    )?;
    Ok(out)
}

/// Runs a Python test script with the generated stubs importable, passing `args`, and
/// fails with everything it printed unless it exits 0.
pub fn run_python(script: impl AsRef<Path>, args: &[&str]) -> anyhow::Result<Output> {
    let script = script.as_ref();
    let mut command = Command::new(python()?);
    command
        .arg(script)
        .args(args)
        .env("PYTHONPATH", python_stubs()?)
        .stdin(Stdio::null());
    let output = run_with_timeout(&mut command, Duration::from_secs(120))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

fn run_checked(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let output = run_with_timeout(command.stdin(Stdio::null()), Duration::from_secs(600))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Runs a command to completion, killing it if it outlives `limit`.
fn run_with_timeout(command: &mut Command, limit: Duration) -> anyhow::Result<Output> {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting a process")?;
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let output = child.wait_with_output();
        let _ = done_tx.send(());
        output
    });
    if done_rx.recv_timeout(limit).is_err() {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status();
        let _ = waiter.join();
        bail!("the process ran longer than {limit:?} and was killed");
    }
    waiter
        .join()
        .map_err(|_| anyhow::anyhow!("waiting for the process panicked"))?
        .context("waiting for the process")
}

/// A small tmpfs mounted over a temporary folder, for tests of a full disk; unmounted when
/// dropped, a failed assertion included.
pub struct Tmpfs {
    folder: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`64k`, `1m`). Only root may; elsewhere this returns `None`
    /// after printing why, and the test skips with that reason.
    pub fn mount(size: &str) -> Option<Self> {
        let folder = tempfile::tempdir().expect("tempdir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(folder.path())
            .output();
        match mounted {
            Ok(output) if output.status.success() => Some(Self { folder }),
            Ok(output) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs ({})",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                None
            }
            Err(error) => {
                eprintln!("skipped: cannot run mount ({error})");
                None
            }
        }
    }

    /// The mounted folder.
    pub fn path(&self) -> &Path {
        self.folder.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.folder.path()).status();
    }
}
