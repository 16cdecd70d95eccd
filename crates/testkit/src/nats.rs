//! A real `nats-server` (Debian's package) with JetStream, on a free loopback port and a
//! temporary store, for the tests of the streaming chat bus; killed when dropped.
//!
//! Where `nats-server` is not installed, [`NatsServer::start`] prints why and returns
//! `None` so the test skips; `.ci/run` sets [`REQUIRE_ENV`] so that in CI it fails instead.

use std::{
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::TIMEOUT;

/// Set (to anything but `0`) where a missing `nats-server` must fail the test, not skip it.
pub const REQUIRE_ENV: &str = "SUITE_REQUIRE_NATS";

/// A running `nats-server -js` on `127.0.0.1`.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    binary: PathBuf,
    store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts one, or returns `None` after printing why when `nats-server` is missing and
    /// [`REQUIRE_ENV`] is not set. Panics if it is missing but required, or fails to start.
    pub fn start() -> Option<Self> {
        let Some(binary) = find_binary() else {
            let required = std::env::var(REQUIRE_ENV).is_ok_and(|value| value != "0");
            assert!(
                !required,
                "nats-server is not installed but {REQUIRE_ENV} is set (apt-get install nats-server)"
            );
            eprintln!("skipped: nats-server is not installed (apt-get install nats-server)");
            return None;
        };
        // The OS picks a free port; it is released just before nats-server takes it.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let mut server = Self {
            child: None,
            port,
            binary,
            store: tempfile::tempdir().expect("tempdir"),
        };
        server.launch().expect("starting nats-server");
        Some(server)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL), as an outage; [`NatsServer::restart`] brings it back on
    /// the same port and store.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again after [`NatsServer::kill`], same port, same store.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.launch()
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let log = self.store.path().join("nats-server.log");
        // A restart must not read the previous run's "ready".
        let _ = std::fs::remove_file(&log);
        let child = Command::new(&self.binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path().join("jetstream"))
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("running {}", self.binary.display()))?;
        self.child = Some(child);
        let started = Instant::now();
        // Ready once it accepts connections and says so (JetStream is up by then).
        while started.elapsed() < TIMEOUT {
            let said_ready =
                std::fs::read_to_string(&log).is_ok_and(|text| text.contains("Server is ready"));
            if said_ready && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("nats-server exited with {status}: {text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("nats-server did not get ready within {TIMEOUT:?}")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}
