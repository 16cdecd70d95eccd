//! A throwaway PostgreSQL server for a test: `initdb` into a temporary folder, trust
//! authentication, listening on 127.0.0.1 on a free port, stopped and removed on drop.
//!
//! The binaries come from Debian's `postgresql` package (`/usr/lib/postgresql/<ver>/bin`),
//! or from `PATH`. PostgreSQL refuses to run as root, so as root (CI, containers) every
//! command runs as the `postgres` user through `setpriv`, which `exec`s: the process we
//! hold is the postmaster itself, not a wrapper that would outlive a kill.
//!
//! Without the binaries, [`Postgres::start`] prints why and returns `None` so the test can
//! skip, unless `SUITE_REQUIRE_POSTGRES` is set (`.ci/run` sets it): then a missing
//! PostgreSQL fails the test instead of hiding it.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Set (to anything) where a missing PostgreSQL must fail the tests rather than skip them.
pub const REQUIRE_ENV: &str = "SUITE_REQUIRE_POSTGRES";

/// How long the server may take to accept connections, and to stop.
const START_LIMIT: Duration = Duration::from_secs(60);
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// A running throwaway PostgreSQL server. Dropping it stops the server (immediate mode) and
/// removes its data.
pub struct Postgres {
    folder: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
    as_postgres: bool,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Postgres")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Postgres {
    /// Starts a server for tests (`fsync=off`: the tests kill our servers, never the
    /// database's machine). `None`, after printing why, when PostgreSQL is not installed
    /// and [`REQUIRE_ENV`] is not set; panics when it is set or the server fails to start.
    pub fn start() -> Option<Self> {
        Self::start_with(false)
    }

    /// Starts a server with PostgreSQL's default durability (every commit flushed), for
    /// measurements compared with SQLite's synchronous=FULL. Same skip rule as [`start`].
    ///
    /// [`start`]: Self::start
    pub fn start_durable() -> Option<Self> {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> Option<Self> {
        let Some(bin) = find_bin() else {
            let reason = "PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin \
                          or on PATH; Debian: apt-get install postgresql)";
            if std::env::var_os(REQUIRE_ENV).is_some() {
                panic!("{reason}, and {REQUIRE_ENV} is set");
            }
            eprintln!("SKIPPED: {reason}");
            return None;
        };
        Some(Self::launch(bin, durable).expect("starting a throwaway PostgreSQL server"))
    }

    /// Like [`start`](Self::start), for callers that report errors instead of panicking
    /// (`grpc_bench`): an error when the binaries are missing too.
    pub fn try_start(durable: bool) -> anyhow::Result<Self> {
        let bin = find_bin().context(
            "PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin or on PATH)",
        )?;
        Self::launch(bin, durable)
    }

    fn launch(bin: PathBuf, durable: bool) -> anyhow::Result<Self> {
        let as_postgres = is_root()?;
        let folder = tempfile::Builder::new()
            .prefix("suite-pg-")
            .tempdir()
            .context("creating the PostgreSQL folder")?;
        if as_postgres {
            run(Command::new("chown").arg("postgres:").arg(folder.path()))?;
        }
        let mut server = Self {
            folder,
            bin,
            port: 0,
            child: None,
            as_postgres,
        };
        let data = server.data_dir();
        server.run_tool(
            "initdb",
            &[
                "-D",
                path_str(&data)?,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        server.port = free_port()?;
        let log = std::fs::File::create(server.log_path()).context("creating the server log")?;
        if as_postgres {
            run(Command::new("chown")
                .arg("postgres:")
                .arg(server.log_path()))?;
        }
        let port = server.port.to_string();
        let socket_dir = server.folder.path().to_path_buf();
        let fsync = if durable { "fsync=on" } else { "fsync=off" };
        let mut command = server.command("postgres");
        command
            .args(["-D", path_str(&data)?, "-p", &port, "-h", "127.0.0.1"])
            .args(["-k", path_str(&socket_dir)?])
            .args(["-c", fsync, "-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        server.child = Some(command.spawn().context("starting postgres")?);
        server.wait_ready()?;
        Ok(server)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// The URL of database `name` on this server (see [`create_database`]).
    ///
    /// [`create_database`]: Self::create_database
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        self.psql(&format!("CREATE DATABASE \"{name}\""));
        self.database_url(name)
    }

    /// Runs `sql` with `psql` on database `postgres` and returns its unaligned output
    /// (rows one a line, fields separated by `|`); panics on an error.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_on("postgres", sql)
    }

    /// Like [`psql`](Self::psql), on database `database`.
    pub fn psql_on(&self, database: &str, sql: &str) -> String {
        let port = self.port.to_string();
        let output = self
            .command("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("running psql");
        assert!(
            output.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn data_dir(&self) -> PathBuf {
        self.folder.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.folder.path().join("server.log")
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `tool` from the PostgreSQL bin folder, as the `postgres` user when we are root.
    fn command(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        if self.as_postgres {
            let mut command = Command::new("setpriv");
            command
                .args([
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--init-groups",
                    "--",
                ])
                .arg(program)
                // The tools look for a home and a working folder they may read.
                .current_dir(self.folder.path())
                .env("HOME", self.folder.path());
            command
        } else {
            Command::new(program)
        }
    }

    fn run_tool(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        run(self.command(tool).args(args))
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let port = self.port.to_string();
        loop {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait().context("checking on postgres")?
            {
                bail!("postgres exited with {status}: {}", self.log());
            }
            let ready = self
                .command("pg_isready")
                .args(["-q", "-h", "127.0.0.1", "-p", &port, "-U", "postgres"])
                .status()
                .context("running pg_isready")?;
            if ready.success() {
                return Ok(());
            }
            if started.elapsed() > START_LIMIT {
                bail!(
                    "postgres did not accept connections within {START_LIMIT:?}: {}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGQUIT is PostgreSQL's immediate shutdown: the data is thrown away anyway. The
        // `kill` tool sends it as us (root may signal the postgres user's process).
        let _ = Command::new("kill")
            .args(["-QUIT", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_LIMIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The folder with `initdb` and `postgres`: the newest Debian version, else `PATH`'s.
fn find_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|folder| folder.join("initdb").exists()))
}

fn is_root() -> anyhow::Result<bool> {
    let output = Command::new("id")
        .arg("-u")
        .output()
        .context("running id -u")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim() == "0")
}

/// A port the OS says is free now (PostgreSQL binds it a moment later).
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed with {}: {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server starts, answers SQL, and is gone (port closed, folder removed) after drop.
    #[test]
    fn starts_answers_and_cleans_up() {
        let Some(server) = Postgres::start() else {
            return;
        };
        assert_eq!(server.psql("SELECT 40 + 2").trim(), "42");
        let url = server.create_database("suite");
        assert!(url.ends_with("/suite"), "{url}");
        assert_eq!(
            server.psql_on("suite", "SELECT current_database()").trim(),
            "suite"
        );
        let folder = server.folder.path().to_path_buf();
        let port = server.port();
        drop(server);
        assert!(!folder.exists(), "the data folder is removed");
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "the server no longer listens"
        );
    }
}
