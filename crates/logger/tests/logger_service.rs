//! The logger service as its users meet it: the generated client against an in-process
//! server, the real binaries (durability across `kill -9`, the old tool's database), and
//! a Python grpcio client.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers fail the test on the spot.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, mpsc},
    time::Duration,
};

use assert_cmd::cargo::cargo_bin;
use grpc_suite::logger as pb;
use logger_service::{Config, store::StoreStats};
use pb::logger_service_client::LoggerServiceClient;
use testkit::{InProcessServer, ServerProcess, TIMEOUT};
use tonic::{Code, transport::Channel};

/// Starts the service on `127.0.0.1:0` over the database at `db`, with a query cap.
async fn start(db: &Path, max_query_limit: u32) -> (InProcessServer, Arc<StoreStats>) {
    let config = Config {
        db_path: db.to_path_buf(),
        postgres_url: None,
        max_query_limit,
        echo: false,
        tokens: logger_service::tokens::Tokens::default(),
    };
    let store = logger_service::open_store(&config).expect("opening the database");
    let stats = store.stats();
    let server = InProcessServer::start(move |listener, shutdown| async move {
        logger_service::serve(listener, store, &config, shutdown).await
    })
    .await;
    (server, stats)
}

async fn client(server: &InProcessServer) -> LoggerServiceClient<Channel> {
    LoggerServiceClient::new(server.channel().await)
}

fn event(event_type: &str, details: &str) -> pb::LogRequest {
    pb::LogRequest {
        event_type: event_type.to_owned(),
        details: details.to_owned(),
        ..Default::default()
    }
}

async fn log(client: &mut LoggerServiceClient<Channel>, request: pb::LogRequest) {
    let reply = tokio::time::timeout(TIMEOUT, client.log_activity(request))
        .await
        .expect("in time")
        .expect("logged");
    assert!(reply.into_inner().logged);
}

async fn query(
    client: &mut LoggerServiceClient<Channel>,
    limit: i32,
    event_type: &str,
) -> Result<Vec<pb::LogEntry>, tonic::Status> {
    let request = pb::LogQueryRequest {
        limit,
        event_type: event_type.to_owned(),
    };
    tokio::time::timeout(TIMEOUT, client.query_logs(request))
        .await
        .expect("in time")
        .map(|reply| reply.into_inner().logs)
}

fn details(logs: &[pb::LogEntry]) -> Vec<&str> {
    logs.iter().map(|entry| entry.details.as_str()).collect()
}

/// Every row of the `logs` table as (event_type, details), read with plain SQL.
fn stored_rows(db: &Path) -> Vec<(String, String)> {
    let connection = rusqlite::Connection::open(db).expect("open db");
    let mut statement = connection
        .prepare("SELECT event_type, details FROM logs ORDER BY id")
        .expect("prepare");
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// The schema the old Python server created, and three rows in it, by plain SQL.
fn old_database(path: &Path) {
    let connection = rusqlite::Connection::open(path).expect("create db");
    connection
        .execute_batch(
            "CREATE TABLE logs (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 event_type TEXT NOT NULL,
                 details TEXT NOT NULL,
                 timestamp TEXT NOT NULL
             );
             INSERT INTO logs (event_type, details, timestamp) VALUES
                 ('SESSION_STARTED', 'User ''alice'' logged in', '2024-03-01 09:15:02.120'),
                 ('FILE_UPLOADED', '42', '2024-03-01 09:16:40.007'),
                 ('SESSION_TERMINATED', 'Session 7f3e (alice) ended', '2024-03-01 09:30:00.000');",
        )
        .expect("old schema");
}

/// Queries answer newest first, 0 means 20, the server's cap applies, the type filter is
/// exact, and a negative limit is INVALID_ARGUMENT.
#[tokio::test]
async fn query_limits_and_filters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _) = start(&dir.path().join("logs.db"), 25).await;
    let mut client = client(&server).await;
    for n in 1..=30 {
        let event_type = if n % 3 == 0 { "THIRD" } else { "OTHER" };
        log(&mut client, event(event_type, &n.to_string())).await;
    }
    log(&mut client, event("THIRD_X", "not third")).await;

    let default = query(&mut client, 0, "").await.expect("default");
    assert_eq!(default.len(), 20);
    assert_eq!(default[0].details, "not third");
    assert_eq!(default[1].details, "30");
    assert!(default.windows(2).all(|pair| pair[0].id > pair[1].id));

    assert_eq!(
        details(&query(&mut client, 3, "").await.expect("3")),
        ["not third", "30", "29"]
    );
    assert_eq!(
        query(&mut client, 1000, "").await.expect("capped").len(),
        25
    );
    let third = query(&mut client, 4, "THIRD").await.expect("filtered");
    assert_eq!(details(&third), ["30", "27", "24", "21"]);
    assert!(
        query(&mut client, 5, "third")
            .await
            .expect("case")
            .is_empty()
    );
    assert!(
        query(&mut client, 5, "THIRD_")
            .await
            .expect("prefix")
            .is_empty()
    );

    let status = query(&mut client, -1, "").await.expect_err("negative");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "limit is -1; it must be 0 or more");
    server.stop().await.expect("clean stop");
}

/// Bad events are INVALID_ARGUMENT naming the field and limit, and store nothing; events
/// exactly at the limits are stored; a given timestamp is kept, an empty one is now.
#[tokio::test]
async fn log_activity_validates_and_keeps_timestamps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("logs.db");
    let (server, _) = start(&db, 1000).await;
    let mut client = client(&server).await;

    let refusals = [
        (event("", "x"), "event_type is empty"),
        (
            event(&"T".repeat(65), "x"),
            "event_type is 65 characters; the limit is 64",
        ),
        (
            event("T", &"d".repeat(64 * 1024 + 1)),
            "details is 65537 bytes; the limit is 65536 bytes",
        ),
        (
            pb::LogRequest {
                timestamp: "2024-03-01T09:15:02".into(),
                ..event("T", "x")
            },
            "timestamp \"2024-03-01T09:15:02\" is not in the format YYYY-MM-DD HH:MM:SS.mmm",
        ),
    ];
    for (request, message) in refusals {
        let status = client.log_activity(request).await.expect_err(message);
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(status.message(), message);
    }

    log(&mut client, event(&"T".repeat(64), &"d".repeat(64 * 1024))).await;
    let given = pb::LogRequest {
        timestamp: "2020-02-29 23:59:59.999".into(),
        ..event("PAST", "back then")
    };
    log(&mut client, given).await;
    let before = chrono::Local::now().naive_local();
    log(&mut client, event("NOW", "just now")).await;

    let logs = query(&mut client, 0, "").await.expect("query");
    assert_eq!(logs.len(), 3, "refused events are not stored");
    assert_eq!(logs[1].timestamp, "2020-02-29 23:59:59.999");
    let now = chrono::NaiveDateTime::parse_from_str(&logs[0].timestamp, "%Y-%m-%d %H:%M:%S%.3f")
        .expect("contract format");
    let drift = (now - before).num_seconds().abs();
    assert!(drift <= 5, "{} is {drift}s from now", logs[0].timestamp);
    server.stop().await.expect("clean stop");
}

/// The same event_id sent twice, in sequence or at once, is stored once and answered
/// logged=true every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_ids_deduplicate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("logs.db");
    let (server, _) = start(&db, 1000).await;
    let mut client = client(&server).await;
    let with_id = |id: &str, details: &str| pb::LogRequest {
        event_id: id.to_owned(),
        timestamp: "2024-03-01 09:15:02.120".to_owned(),
        ..event("SESSION_STARTED", details)
    };

    log(&mut client, with_id("retry-1", "first delivery")).await;
    log(&mut client, with_id("retry-1", "second delivery")).await;

    let mut senders = Vec::new();
    for n in 0..16 {
        let mut client = client.clone();
        let request = with_id("burst", &format!("copy {n}"));
        senders.push(tokio::spawn(async move { log(&mut client, request).await }));
    }
    for sender in senders {
        sender.await.expect("sender");
    }
    log(&mut client, event("PLAIN", "no id")).await;
    log(&mut client, event("PLAIN", "no id")).await;

    let rows = stored_rows(&db);
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(rows[0].1, "first delivery");
    assert_eq!(
        rows.iter().filter(|(_, d)| d.starts_with("copy")).count(),
        1
    );
    assert_eq!(
        rows.iter().filter(|(t, _)| t == "PLAIN").count(),
        2,
        "no id, no dedup"
    );
    server.stop().await.expect("clean stop");
}

/// 64 concurrent writers × 50 events: every row is stored exactly once, and concurrent
/// calls share transactions (fewer commits than rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_store_every_row_once() {
    const WRITERS: usize = 64;
    const EACH: usize = 50;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("logs.db");
    let (server, stats) = start(&db, 1000).await;
    let client = client(&server).await;
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let mut client = client.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..EACH {
                log(&mut client, event("LOAD", &format!("w{writer}-{n}"))).await;
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let mut rows: Vec<String> = stored_rows(&db).into_iter().map(|(_, d)| d).collect();
    assert_eq!(rows.len(), WRITERS * EACH);
    rows.sort();
    rows.dedup();
    assert_eq!(rows.len(), WRITERS * EACH, "a row was stored twice");
    assert_eq!(stats.rows(), (WRITERS * EACH) as u64);
    assert!(
        stats.commits() < stats.rows(),
        "no group commit: {} commits for {} rows",
        stats.commits(),
        stats.rows()
    );
    server.stop().await.expect("clean stop");
}

/// A follower gets the newest rows of its type oldest first, then each new row of its
/// type as it is committed, and its stream ends when the server shuts down.
#[tokio::test]
async fn follow_sees_backlog_then_new_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _) = start(&dir.path().join("logs.db"), 1000).await;
    let mut client = client(&server).await;
    for n in 1..=4 {
        log(&mut client, event("WATCHED", &format!("old {n}"))).await;
        log(&mut client, event("IGNORED", &format!("noise {n}"))).await;
    }
    let request = pb::LogFollowRequest {
        backlog: 2,
        event_type: "WATCHED".into(),
    };
    let mut stream = client
        .follow_logs(request)
        .await
        .expect("follow")
        .into_inner();
    let mut next = async || {
        tokio::time::timeout(TIMEOUT, stream.message())
            .await
            .expect("a row in time")
            .expect("stream ok")
    };
    assert_eq!(next().await.expect("row").details, "old 3");
    assert_eq!(next().await.expect("row").details, "old 4");

    let mut writer = client.clone();
    log(&mut writer, event("IGNORED", "more noise")).await;
    log(&mut writer, event("WATCHED", "new 1")).await;
    log(&mut writer, event("WATCHED", "new 2")).await;
    let first = next().await.expect("row");
    assert_eq!(first.details, "new 1");
    assert_eq!(first.event_type, "WATCHED");
    assert_eq!(first.id, 10);
    assert_eq!(next().await.expect("row").details, "new 2");

    let shutdown = server.shutdown_token();
    shutdown.cancel();
    assert!(next().await.is_none(), "the stream ends at shutdown");
    server.stop().await.expect("clean stop");
}

/// A follower that stops reading while thousands of rows are committed (far past the live
/// buffer) still receives every row afterwards, in order, with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_follower_misses_nothing() {
    const ROWS: usize = 2500;
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _) = start(&dir.path().join("logs.db"), 1000).await;
    let mut client = client(&server).await;
    let mut stream = client
        .follow_logs(pb::LogFollowRequest::default())
        .await
        .expect("follow")
        .into_inner();
    // 8 KiB per row fills the HTTP/2 windows and the stream buffer long before the end,
    // so the server-side follower is stuck while the broadcast overflows.
    let padding = "p".repeat(8 * 1024);
    let mut writers = Vec::new();
    for writer in 0..16 {
        let mut client = client.clone();
        let padding = padding.clone();
        writers.push(tokio::spawn(async move {
            for n in (writer..ROWS).step_by(16) {
                log(&mut client, event("BULK", &format!("{n} {padding}"))).await;
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    for expected_id in 1..=ROWS as i32 {
        let entry = tokio::time::timeout(TIMEOUT, stream.message())
            .await
            .expect("in time")
            .expect("stream ok")
            .expect("a row");
        assert_eq!(entry.id, expected_id);
    }
    server.stop().await.expect("clean stop");
}

/// Refused follows: a negative backlog is INVALID_ARGUMENT.
#[tokio::test]
async fn follow_refuses_negative_backlog() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _) = start(&dir.path().join("logs.db"), 1000).await;
    let mut client = client(&server).await;
    let request = pb::LogFollowRequest {
        backlog: -1,
        event_type: String::new(),
    };
    let status = client.follow_logs(request).await.expect_err("negative");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "backlog is -1; it must be 0 or more");
}

/// Every event acknowledged before a `kill -9` is in the database afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_rows_survive_kill_9() {
    const EVENTS: usize = 300;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("logs.db");
    let mut server = ServerProcess::start(
        cargo_bin("logger_server"),
        &["--db", db.to_str().expect("utf-8")],
    )
    .expect("server starts");
    let channel = grpc_suite::cli::connect(&server.url())
        .await
        .expect("connect");
    let client = LoggerServiceClient::new(channel);
    let mut writers = Vec::new();
    for writer in 0..10 {
        let mut client = client.clone();
        writers.push(tokio::spawn(async move {
            for n in (writer..EVENTS).step_by(10) {
                log(&mut client, event("DURABLE", &format!("event {n}"))).await;
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    server.signal("KILL").expect("kill -9");
    let status = server.wait(TIMEOUT).expect("dies");
    assert!(!status.success());

    let mut stored: Vec<String> = stored_rows(&db).into_iter().map(|(_, d)| d).collect();
    stored.sort();
    let mut expected: Vec<String> = (0..EVENTS).map(|n| format!("event {n}")).collect();
    expected.sort();
    assert_eq!(stored, expected);
}

/// A `logger_server` child whose stdout is a pipe the test stops reading after the startup
/// line; killed on drop so a failing test leaves no process behind.
struct UnreadStdoutServer {
    child: std::process::Child,
    /// Kept open, never read again: the pipe fills and the server's writes to it block.
    _stdout: BufReader<std::process::ChildStdout>,
    port: u16,
}

impl UnreadStdoutServer {
    fn start(db: &Path) -> Self {
        let mut child = Command::new(cargo_bin("logger_server"))
            .args(["--addr", "127.0.0.1:0", "--db", db.to_str().expect("utf-8")])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("logger_server starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout pipe"));
        // Only the first line, `Logger Service started on port N`, read on a thread so a
        // server that never prints it fails the test after TIMEOUT instead of hanging it.
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = stdout.read_line(&mut line).map(|_| line);
            let _ = sender.send((read, stdout));
        });
        let (line, stdout) = match receiver.recv_timeout(TIMEOUT) {
            Ok((Ok(line), stdout)) => (line, stdout),
            outcome => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "no startup line in time: {:?}",
                    outcome.map(|(line, _)| line)
                );
            }
        };
        let port = line
            .trim()
            .strip_prefix("Logger Service started on port ")
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Self {
            child,
            _stdout: stdout,
            port,
        }
    }
}

impl Drop for UnreadStdoutServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// With stdout a pipe nobody reads (a paused pager, a stuck log driver), the `[LOG]` echo
/// fills it, yet 2,000 LogActivity calls with 1 KiB of details each are all answered and
/// stored, and SIGTERM still stops the server cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_stdout_never_blocks_logging() {
    const EVENTS: usize = 2000;
    const WRITERS: usize = 8;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("logs.db");
    let mut server = UnreadStdoutServer::start(&db);
    let channel = grpc_suite::cli::connect(&format!("http://127.0.0.1:{}", server.port))
        .await
        .expect("connect");
    let client = LoggerServiceClient::new(channel);
    // 2 MB of echo: far past the pipe's 64 KiB and whatever the server buffers.
    let filler = "x".repeat(1024);
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let mut client = client.clone();
        let filler = filler.clone();
        writers.push(tokio::spawn(async move {
            for n in (writer..EVENTS).step_by(WRITERS) {
                log(&mut client, event("FLOOD", &format!("{n} {filler}"))).await;
            }
        }));
    }
    for writer in writers {
        tokio::time::timeout(TIMEOUT, writer)
            .await
            .expect("every call answered in time")
            .expect("writer");
    }
    assert_eq!(stored_rows(&db).len(), EVENTS);

    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let deadline = std::time::Instant::now() + TIMEOUT;
    let exit = loop {
        if let Some(exit) = server.child.try_wait().expect("try_wait") {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not stop on SIGTERM with its stdout full"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "exit status {exit}");
}

/// logger_query prints an old-schema database built by plain SQL exactly, filters by type,
/// and our server opens the same file, reads its rows and appends after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_database_reads_correctly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("old.db");
    old_database(&db);
    let query_tool = |args: &[&str]| {
        let mut command = assert_cmd::Command::new(cargo_bin("logger_query"));
        command
            .args(["--db", db.to_str().expect("utf-8")])
            .args(args)
            .env_remove("LOGGER_SERVICE_DB")
            .timeout(TIMEOUT);
        command.assert().success()
    };
    let before = std::fs::read(&db).expect("read db");
    query_tool(&[]).stdout(
        "\
+------+--------------------+----------------------------+-------------------------+
|   ID | Event Type         | Details                    | Timestamp               |
+======+====================+============================+=========================+
|    3 | SESSION_TERMINATED | Session 7f3e (alice) ended | 2024-03-01 09:30:00.000 |
+------+--------------------+----------------------------+-------------------------+
|    2 | FILE_UPLOADED      | 42                         | 2024-03-01 09:16:40.007 |
+------+--------------------+----------------------------+-------------------------+
|    1 | SESSION_STARTED    | User 'alice' logged in     | 2024-03-01 09:15:02.120 |
+------+--------------------+----------------------------+-------------------------+
Total: 3 logs
",
    );
    query_tool(&["--limit", "1", "--type", "FILE_UPLOADED"]).stdout(
        "\
+------+---------------+-----------+-------------------------+
|   ID | Event Type    | Details   | Timestamp               |
+======+===============+===========+=========================+
|    2 | FILE_UPLOADED | 42        | 2024-03-01 09:16:40.007 |
+------+---------------+-----------+-------------------------+
Total: 1 logs
",
    );
    query_tool(&["--type", "NOTHING"]).stdout("No logs found.\n");
    assert_eq!(std::fs::read(&db).expect("read db"), before, "read-only");
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("list").count(),
        1,
        "no journal or WAL files left behind"
    );

    let (server, _) = start(&db, 1000).await;
    let mut client = client(&server).await;
    let logs = query(&mut client, 0, "").await.expect("query");
    assert_eq!(
        logs.iter()
            .map(|e| (e.id, e.timestamp.as_str()))
            .collect::<Vec<_>>(),
        [
            (3, "2024-03-01 09:30:00.000"),
            (2, "2024-03-01 09:16:40.007"),
            (1, "2024-03-01 09:15:02.120")
        ]
    );
    assert_eq!(logs[2].details, "User 'alice' logged in");
    log(&mut client, event("NEW", "after the old rows")).await;
    assert_eq!(query(&mut client, 1, "").await.expect("query")[0].id, 4);
    server.stop().await.expect("clean stop");
    let latest = query_tool(&["--limit", "1"]);
    let latest = String::from_utf8_lossy(&latest.get_output().stdout).into_owned();
    assert!(latest.contains("| after the old rows |"), "{latest}");
}

/// logger_query refuses a missing file (without creating it), a file that is not SQLite,
/// and a database without a logs table: one line, exit 1, nothing changed.
#[test]
fn logger_query_refusals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.db");
    let garbage = dir.path().join("garbage.db");
    std::fs::write(
        &garbage,
        "this is a text file, not a database\n".repeat(200),
    )
    .expect("write");
    let other = dir.path().join("other.db");
    rusqlite::Connection::open(&other)
        .expect("create")
        .execute_batch("CREATE TABLE users (name TEXT);")
        .expect("other schema");
    let other_bytes = std::fs::read(&other).expect("read");

    for (path, message) in [
        (
            &missing,
            format!("error: no database at {}", missing.display()),
        ),
        (
            &garbage,
            format!("error: {} is not an SQLite database", garbage.display()),
        ),
        (
            &other,
            format!("error: {} has no logs table", other.display()),
        ),
    ] {
        let assert = assert_cmd::Command::new(cargo_bin("logger_query"))
            .args(["--db", path.to_str().expect("utf-8")])
            .timeout(TIMEOUT)
            .assert()
            .failure()
            .code(1)
            .stdout("");
        let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
        assert_eq!(stderr, format!("{message}\n"));
    }
    assert!(!missing.exists(), "a missing database must not be created");
    assert_eq!(std::fs::read(&other).expect("read"), other_bytes);
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["garbage.db", "other.db"]);
}

/// The binaries as a user runs them: startup lines, `[LOG]` echo, `log`, `query` printed as
/// logger_query prints, `follow` printing rows live until SIGTERM ends the server (exit 0).
#[test]
fn binaries_log_query_follow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("nested/folder/logs.db");
    let mut server = ServerProcess::start(
        cargo_bin("logger_server"),
        &["--db", db.to_str().expect("utf-8")],
    )
    .expect("server starts");
    assert!(
        server
            .stdout()
            .contains(&format!("Logger Service started on port {}", server.port))
    );
    let absolute = std::fs::canonicalize(&db).expect("created");
    server
        .wait_for_stdout(&format!("Database initialized at {}", absolute.display()))
        .expect("db line");

    let client = || {
        let mut command = assert_cmd::Command::new(cargo_bin("logger_client"));
        command.args(["--server", &server.url()]).timeout(TIMEOUT);
        command
    };
    client()
        .args([
            "log",
            "--type",
            "SESSION_STARTED",
            "--details",
            "User 'bob' logged in",
        ])
        .assert()
        .success()
        .stdout("Logged SESSION_STARTED event\n");
    server
        .wait_for_stdout("[LOG] SESSION_STARTED: User 'bob' logged in\n")
        .expect("echo");
    client()
        .args([
            "log",
            "--type",
            "NOTE",
            "--details",
            "second",
            "--timestamp",
            "2024-01-02 03:04:05.006",
        ])
        .assert()
        .success();

    let via_server = client().args(["query", "--limit", "5"]).assert().success();
    let via_server = String::from_utf8(via_server.get_output().stdout.clone()).expect("utf-8");
    let via_file = assert_cmd::Command::new(cargo_bin("logger_query"))
        .args(["--db", db.to_str().expect("utf-8"), "--limit", "5"])
        .timeout(TIMEOUT)
        .assert()
        .success();
    assert_eq!(
        via_server,
        String::from_utf8_lossy(&via_file.get_output().stdout)
    );
    assert!(
        via_server.contains("| 2024-01-02 03:04:05.006 |"),
        "{via_server}"
    );
    assert!(via_server.ends_with("Total: 2 logs\n"), "{via_server}");
    client()
        .args(["query", "--type", "NONE"])
        .assert()
        .success()
        .stdout("No logs found.\n");

    let refused = client()
        .args(["log", "--type", "", "--details", "x"])
        .assert()
        .failure()
        .code(1);
    assert_eq!(
        String::from_utf8_lossy(&refused.get_output().stderr),
        "error: the server refused the request (INVALID_ARGUMENT): event_type is empty\n"
    );

    let mut follower = Command::new(cargo_bin("logger_client"))
        .args([
            "--server",
            &server.url(),
            "follow",
            "--backlog",
            "1",
            "--type",
            "NOTE",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("follow runs");
    let (lines_tx, lines) = mpsc::channel();
    let stdout = follower.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let next_line = || {
        lines
            .recv_timeout(TIMEOUT)
            .expect("a followed line in time")
    };
    assert_eq!(next_line(), "#2 2024-01-02 03:04:05.006 NOTE: second");
    client()
        .args(["log", "--type", "OTHER", "--details", "skipped"])
        .assert()
        .success();
    client()
        .args(["log", "--type", "NOTE", "--details", "live one"])
        .assert()
        .success();
    let live = next_line();
    assert!(
        live.starts_with("#4 ") && live.ends_with(" NOTE: live one"),
        "{live}"
    );

    server.signal("TERM").expect("SIGTERM");
    let status = server.wait(Duration::from_secs(15)).expect("server exits");
    assert!(status.success(), "server exit {status}");
    assert!(
        !dir.path().join("nested/folder/logs.db-wal").exists(),
        "a clean stop checkpoints the WAL into the database file"
    );
    let deadline = std::time::Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = follower.try_wait().expect("wait") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "follow did not end");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "follow exit {status}");
}

/// With no server listening, the client says so in one line and exits 1, no panic.
#[test]
fn client_with_server_down_exits_one() {
    testkit::assert_reports_server_down(cargo_bin("logger_client"), &["query"]);
}

/// A Python grpcio client generated from protos/ logs (with and without an event id),
/// queries, and is refused an empty event type.
#[test]
fn python_client_logs_and_queries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(
        cargo_bin("logger_server"),
        &["--db", dir.path().join("logs.db").to_str().expect("utf-8")],
    )
    .expect("server starts");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/logger_client.py");
    let target = format!("127.0.0.1:{}", server.port);
    testkit::run_python(&script, &[&target]).expect("python client passes");
}

// ---- Hostile and broken callers (issue 13) ----

/// 100 followers that never read cost the logger a bounded amount of memory (each one's
/// queue is bounded in bytes, not only in rows), and the memory goes back once they leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_followers_cost_bounded_memory() {
    const FOLLOWERS: usize = 100;
    const ROWS: usize = 200;
    // Before the byte bound, each stuck follower held 64 rows of 60 KiB (~4 MiB): ~400 MiB.
    // Without trimming, ~20 MiB above idle stayed held after they left.
    const PEAK_BOUND_KIB: u64 = 160 * 1024;
    const AFTER_BOUND_KIB: u64 = 12 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("logs.db");
    let server = testkit::Launch::new(cargo_bin("logger_server"))
        .args(["--addr", "127.0.0.1:0", "--db", db.to_str().expect("utf-8")])
        .env("RUST_LOG", "warn")
        .discard_stdout()
        .start()
        .expect("server starts");
    let channel = grpc_suite::cli::connect(&server.url())
        .await
        .expect("connect");
    let mut writer = LoggerServiceClient::new(channel.clone());
    log(&mut writer, event("WARMUP", "x")).await;
    let idle = server.memory().expect("memory");

    let mut followers = Vec::new();
    for _ in 0..FOLLOWERS {
        // Each on its own connection, as separate stuck clients would be.
        let channel = grpc_suite::cli::connect(&server.url())
            .await
            .expect("connect");
        let mut client = LoggerServiceClient::new(channel);
        let request = pb::LogFollowRequest {
            backlog: 0,
            event_type: String::new(),
        };
        let stream = tokio::time::timeout(TIMEOUT, client.follow_logs(request))
            .await
            .expect("in time")
            .expect("following");
        // Held, never read.
        followers.push((client, stream));
    }
    let details = "d".repeat(60 * 1024);
    for _ in 0..ROWS {
        log(&mut writer, event("BIG", &details)).await;
    }
    // Let the followers' producers fill whatever they are allowed to hold.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loaded = server.memory().expect("memory");
    drop(followers);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = server.memory().expect("memory");
    eprintln!(
        "logger RSS: idle {} KiB, peak {} KiB, after {} KiB",
        idle.rss_kib, loaded.peak_kib, after.rss_kib
    );
    assert!(
        loaded.peak_kib < idle.rss_kib + PEAK_BOUND_KIB,
        "peak {} KiB with {FOLLOWERS} stuck followers (idle {} KiB)",
        loaded.peak_kib,
        idle.rss_kib
    );
    assert!(
        after.rss_kib < idle.rss_kib + AFTER_BOUND_KIB,
        "{} KiB a few seconds after the followers left (idle {} KiB)",
        after.rss_kib,
        idle.rss_kib
    );
}

/// While the database cannot commit (its disk is full) health says NOT_SERVING; once a
/// commit succeeds again, SERVING. Needs a small tmpfs (root); elsewhere it says why it
/// skipped.
#[tokio::test]
async fn health_follows_whether_commits_succeed() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let Some(dir) = testkit::Tmpfs::mount("1m") else {
        return;
    };
    let filler = dir.path().join("filler");
    std::fs::write(&filler, vec![0_u8; 300 * 1024]).expect("filler");
    let (server, _) = start(&dir.path().join("logs.db"), 100).await;
    let mut client = client(&server).await;
    let mut health = HealthClient::new(server.channel().await);
    let status = |health: &mut HealthClient<Channel>| {
        let mut health = health.clone();
        async move {
            tokio::time::timeout(
                TIMEOUT,
                health.check(HealthCheckRequest {
                    service: String::new(),
                }),
            )
            .await
            .expect("in time")
            .expect("answered")
            .into_inner()
            .status()
        }
    };
    assert_eq!(status(&mut health).await, ServingStatus::Serving);
    let details = "f".repeat(60 * 1024);
    let mut failed = false;
    for _ in 0..100 {
        let reply = tokio::time::timeout(TIMEOUT, client.log_activity(event("FILL", &details)))
            .await
            .expect("in time");
        if reply.is_err() {
            failed = true;
            break;
        }
    }
    assert!(failed, "the disk never filled");
    // The health task runs on its own; give it a moment.
    let mut seen = ServingStatus::Serving;
    for _ in 0..50 {
        seen = status(&mut health).await;
        if seen == ServingStatus::NotServing {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, ServingStatus::NotServing);

    std::fs::remove_file(&filler).expect("freeing space");
    log(&mut client, event("AFTER", "space again")).await;
    for _ in 0..50 {
        seen = status(&mut health).await;
        if seen == ServingStatus::Serving {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, ServingStatus::Serving);
    server.stop().await.expect("stops");
}
