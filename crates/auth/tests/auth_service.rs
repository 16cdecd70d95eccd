//! The auth service with a real logger service behind it: sessions, refusals, and audit
//! events that arrive exactly once, in order, with their original time, whether or not the
//! logger was there when they happened.

use std::{path::Path, process::Stdio, time::Duration};

use assert_cmd::cargo::cargo_bin;
use auth_service::{Config, Credentials};
use grpc_suite::{auth as pb, logger as log_pb};
use pb::auth_service_client::AuthServiceClient;
use testkit::{InProcessServer, TIMEOUT};
use tokio::{io::AsyncBufReadExt, net::TcpListener};
use tonic::{Code, transport::Channel};

/// Serves a logger on `listener`, storing into `dir/logs.db`.
fn start_logger_on(listener: TcpListener, dir: &Path) -> InProcessServer {
    let config = logger_service::Config {
        db_path: dir.join("logs.db"),
        ..logger_service::Config::default()
    };
    let store = logger_service::open_store(&config).expect("opening the log database");
    InProcessServer::start_on(listener, move |listener, shutdown| async move {
        logger_service::serve(listener, store, &config, shutdown).await
    })
}

async fn start_logger(dir: &Path) -> InProcessServer {
    start_logger_on(TcpListener::bind("127.0.0.1:0").await.expect("bind"), dir)
}

async fn start_auth(
    data_dir: &Path,
    logger_url: String,
    credentials: Credentials,
    session_ttl: Duration,
) -> InProcessServer {
    let config = Config {
        session_ttl,
        data_dir: data_dir.to_path_buf(),
        logger_url,
        logger_tls: grpc_suite::tls::ClientTls::default(),
    };
    InProcessServer::start(move |listener, shutdown| async move {
        auth_service::serve(listener, credentials, &config, shutdown).await
    })
    .await
}

fn demo() -> Credentials {
    Credentials::demo().expect("demo account")
}

async fn auth_client(server: &InProcessServer) -> AuthServiceClient<Channel> {
    AuthServiceClient::new(server.channel().await)
}

async fn login(
    client: &mut AuthServiceClient<Channel>,
    username: &str,
    password: &str,
) -> pb::AuthResponse {
    let request = pb::LoginRequest {
        username: username.into(),
        password: password.into(),
    };
    tokio::time::timeout(TIMEOUT, client.login(request))
        .await
        .expect("login in time")
        .expect("login answered")
        .into_inner()
}

async fn logout(client: &mut AuthServiceClient<Channel>, session_id: &str) -> pb::AuthResponse {
    let request = pb::LogoutRequest {
        session_id: session_id.into(),
    };
    tokio::time::timeout(TIMEOUT, client.logout(request))
        .await
        .expect("logout in time")
        .expect("logout answered")
        .into_inner()
}

/// The logger's rows, oldest first, once there are at least `count` of them.
async fn wait_for_logs(logger: &InProcessServer, count: usize) -> Vec<log_pb::LogEntry> {
    let mut client =
        log_pb::logger_service_client::LoggerServiceClient::new(logger.channel().await);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let request = log_pb::LogQueryRequest {
            limit: 1000,
            event_type: String::new(),
        };
        let mut logs = client
            .query_logs(request)
            .await
            .expect("query")
            .into_inner()
            .logs;
        if logs.len() >= count || tokio::time::Instant::now() > deadline {
            logs.reverse();
            return logs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kinds_and_details(logs: &[log_pb::LogEntry]) -> Vec<(String, String)> {
    logs.iter()
        .map(|entry| (entry.event_type.clone(), entry.details.clone()))
        .collect()
}

/// Login then logout answers in the contract's words and leaves SESSION_STARTED then
/// SESSION_TERMINATED in the logger's database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_logout_reaches_the_logger_in_order() {
    let folder = tempfile::tempdir().expect("tempdir");
    let logger = start_logger(folder.path()).await;
    let auth = start_auth(folder.path(), logger.url(), demo(), Duration::from_secs(60)).await;
    let mut client = auth_client(&auth).await;

    let login = login(&mut client, "user1", "pass123").await;
    assert!(login.success);
    assert_eq!(login.message, "Login successful");
    let session_id = uuid::Uuid::parse_str(&login.session_id).expect("a UUID session id");
    let logout = logout(&mut client, &login.session_id).await;
    assert!(logout.success);
    assert_eq!(logout.message, "Logout successful");

    let logs = wait_for_logs(&logger, 2).await;
    assert_eq!(
        kinds_and_details(&logs),
        [
            (
                "SESSION_STARTED".to_owned(),
                "User 'user1' logged in".to_owned()
            ),
            (
                "SESSION_TERMINATED".to_owned(),
                format!("Session {session_id} (user1) ended")
            ),
        ]
    );
    auth.stop().await.expect("auth stops cleanly");
    logger.stop().await.expect("logger stops cleanly");
}

/// A wrong password and an unknown user get the same answer, each recorded as LOGIN_FAILED;
/// an empty username is INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_look_alike() {
    let folder = tempfile::tempdir().expect("tempdir");
    let logger = start_logger(folder.path()).await;
    let auth = start_auth(folder.path(), logger.url(), demo(), Duration::from_secs(60)).await;
    let mut client = auth_client(&auth).await;

    let wrong_password = login(&mut client, "user1", "wrong").await;
    let unknown_user = login(&mut client, "mallory", "pass123").await;
    for refusal in [&wrong_password, &unknown_user] {
        assert!(!refusal.success);
        assert_eq!(refusal.message, "Invalid username or password");
        assert!(refusal.session_id.is_empty());
    }
    let empty = client
        .login(pb::LoginRequest {
            username: String::new(),
            password: "x".into(),
        })
        .await;
    assert_eq!(
        empty.expect_err("empty username").code(),
        Code::InvalidArgument
    );

    let logs = wait_for_logs(&logger, 2).await;
    assert_eq!(
        kinds_and_details(&logs),
        [
            (
                "LOGIN_FAILED".to_owned(),
                "Failed login for user 'user1'".to_owned()
            ),
            (
                "LOGIN_FAILED".to_owned(),
                "Failed login for user 'mallory'".to_owned()
            ),
        ]
    );
    assert!(
        logs.iter()
            .all(|entry| !entry.details.contains("wrong") && !entry.details.contains("pass123")),
        "a password reached the log"
    );
}

/// Logging out an unknown, malformed, already-ended or expired session answers
/// `Unknown session` and records nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_expired_sessions() {
    let folder = tempfile::tempdir().expect("tempdir");
    let logger = start_logger(folder.path()).await;
    // Sessions that expire the moment they start.
    let auth = start_auth(folder.path(), logger.url(), demo(), Duration::ZERO).await;
    let mut client = auth_client(&auth).await;

    let expired = login(&mut client, "user1", "pass123").await;
    assert!(expired.success);
    for session_id in [
        expired.session_id.as_str(),
        "not-a-uuid",
        &uuid::Uuid::new_v4().to_string(),
    ] {
        let reply = logout(&mut client, session_id).await;
        assert!(!reply.success, "{session_id}");
        assert_eq!(reply.message, "Unknown session");
    }
    // A failed login afterwards: once it is in the log, everything before it is too.
    login(&mut client, "user1", "nope").await;
    let logs = wait_for_logs(&logger, 2).await;
    let kinds: Vec<_> = logs.iter().map(|entry| entry.event_type.as_str()).collect();
    assert_eq!(
        kinds,
        ["SESSION_STARTED", "LOGIN_FAILED"],
        "no SESSION_TERMINATED for unknown sessions"
    );
}

/// With the logger absent, logins and logouts are answered promptly; after an auth restart
/// and the logger's arrival, every event lands exactly once, in order, with its original time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_absent_logger_and_auth_restart() {
    let folder = tempfile::tempdir().expect("tempdir");
    // The logger's address is reserved now but nothing is served there until later.
    let logger_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let logger_url = format!("http://{}", logger_listener.local_addr().expect("addr"));
    let prompt = Duration::from_secs(3); // Far below the 5 s a delivery attempt may wait.

    let mut expected = Vec::new();
    for round in 0..2 {
        let auth = start_auth(
            folder.path(),
            logger_url.clone(),
            demo(),
            Duration::from_secs(60),
        )
        .await;
        let mut client = auth_client(&auth).await;
        let request = pb::LoginRequest {
            username: "user1".into(),
            password: "pass123".into(),
        };
        let login = tokio::time::timeout(prompt, client.login(request))
            .await
            .expect("login did not wait for the logger");
        let login = login.expect("login").into_inner();
        assert!(login.success, "round {round}");
        let request = pb::LogoutRequest {
            session_id: login.session_id.clone(),
        };
        let logout = tokio::time::timeout(prompt, client.logout(request))
            .await
            .expect("logout did not wait for the logger");
        assert!(logout.expect("logout").into_inner().success);
        expected.push((
            "SESSION_STARTED".to_owned(),
            "User 'user1' logged in".to_owned(),
        ));
        expected.push((
            "SESSION_TERMINATED".to_owned(),
            format!("Session {} (user1) ended", login.session_id),
        ));
        auth.stop()
            .await
            .expect("auth stops with events still undelivered");
    }
    let before_logger = chrono::Local::now().naive_local();

    // The restarted auth server delivers what both runs recorded once the logger is there.
    let auth = start_auth(folder.path(), logger_url, demo(), Duration::from_secs(60)).await;
    let logger = start_logger_on(logger_listener, folder.path());
    let logs = wait_for_logs(&logger, expected.len()).await;
    assert_eq!(
        kinds_and_details(&logs),
        expected,
        "every event once, in order"
    );
    for entry in &logs {
        let at = chrono::NaiveDateTime::parse_from_str(&entry.timestamp, "%Y-%m-%d %H:%M:%S%.3f")
            .expect("contract format");
        assert!(
            at <= before_logger,
            "event kept its original time: {} is after the logger started",
            entry.timestamp
        );
    }
    // Nothing more arrives: no duplicates after a further round of delivery.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(wait_for_logs(&logger, 0).await.len(), expected.len());
    auth.stop().await.expect("auth stops");
}

/// A users file of argon2id hashes replaces the demo account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_file_accounts() {
    let folder = tempfile::tempdir().expect("tempdir");
    let hash = auth_service::credentials::hash_password("correct horse").expect("hash");
    let users_file = folder.path().join("users");
    std::fs::write(&users_file, format!("alice:{hash}\n")).expect("write users");
    let logger = start_logger(folder.path()).await;
    let auth = start_auth(
        folder.path(),
        logger.url(),
        Credentials::load(&users_file).expect("load"),
        Duration::from_secs(60),
    )
    .await;
    let mut client = auth_client(&auth).await;
    assert!(login(&mut client, "alice", "correct horse").await.success);
    assert!(
        !login(&mut client, "user1", "pass123").await.success,
        "no demo account with a users file"
    );
}

/// `auth_client` logs in, holds the session, and on SIGINT logs out and exits 0, printing
/// the old client's lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_binary_logs_out_on_sigint() {
    let folder = tempfile::tempdir().expect("tempdir");
    let logger = start_logger(folder.path()).await;
    let auth = start_auth(folder.path(), logger.url(), demo(), Duration::from_secs(60)).await;
    let mut child = tokio::process::Command::new(cargo_bin("auth_client"))
        .args(["--server", &auth.url()])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("auth_client starts");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut printed = Vec::new();
    while let Some(line) = tokio::time::timeout(TIMEOUT, lines.next_line())
        .await
        .expect("line in time")
        .expect("read")
    {
        let active = line.starts_with("Session active");
        printed.push(line);
        if active {
            break;
        }
    }
    let pid = child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    while let Some(line) = tokio::time::timeout(TIMEOUT, lines.next_line())
        .await
        .expect("line in time")
        .expect("read")
    {
        printed.push(line);
    }
    let status = tokio::time::timeout(TIMEOUT, child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(status.success(), "{status}: {printed:?}");

    assert_eq!(printed.len(), 4, "{printed:?}");
    let session_id = printed[0]
        .strip_prefix("Login: Login successful (Session ID: ")
        .and_then(|rest| rest.strip_suffix(')'))
        .expect("login line");
    uuid::Uuid::parse_str(session_id).expect("whole UUID printed");
    assert_eq!(
        printed[1],
        "Session active. Press Ctrl+C to logout and exit."
    );
    assert_eq!(printed[2], "Received shutdown signal. Logging out...");
    assert_eq!(printed[3], "Logout: Logout successful");
    let logs = wait_for_logs(&logger, 2).await;
    assert_eq!(
        logs[1].details,
        format!("Session {session_id} (user1) ended")
    );
}

/// A refused login prints the reason on one line and exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_binary_refused_login_exits_one() {
    let folder = tempfile::tempdir().expect("tempdir");
    let logger = start_logger(folder.path()).await;
    let auth = start_auth(folder.path(), logger.url(), demo(), Duration::from_secs(60)).await;
    let url = auth.url();
    let output = tokio::task::spawn_blocking(move || {
        assert_cmd::Command::new(cargo_bin("auth_client"))
            .args(["--server", &url, "--password", "bad"])
            .timeout(TIMEOUT)
            .output()
    })
    .await
    .expect("task")
    .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "error: login failed: Invalid username or password\n"
    );
}

/// `auth_client --logout-after N` logs out on its own without asking for or reporting a
/// signal that never came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_binary_logout_after_mentions_no_signal() {
    let folder = tempfile::tempdir().expect("tempdir");
    let logger = start_logger(folder.path()).await;
    let auth = start_auth(folder.path(), logger.url(), demo(), Duration::from_secs(60)).await;
    let url = auth.url();
    let output = tokio::task::spawn_blocking(move || {
        assert_cmd::Command::new(cargo_bin("auth_client"))
            .args(["--server", &url, "--logout-after", "0"])
            .timeout(TIMEOUT)
            .output()
    })
    .await
    .expect("task")
    .expect("runs");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(
        lines[0].starts_with("Login: Login successful (Session ID: "),
        "{stdout}"
    );
    assert_eq!(lines[1], "Session active. Logging out in 0 s.");
    assert_eq!(lines[2], "Logging out...");
    assert_eq!(lines[3], "Logout: Logout successful");
}

/// `auth_server --hash-password` turns a password on stdin into a verifiable argon2id hash.
#[test]
fn hash_password_mode() {
    let output = assert_cmd::Command::new(cargo_bin("auth_server"))
        .arg("--hash-password")
        .write_stdin("s3cret\n")
        .timeout(TIMEOUT)
        .output()
        .expect("runs");
    assert!(output.status.success());
    let hash = String::from_utf8(output.stdout).expect("utf-8");
    let hash = hash.trim();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let folder = tempfile::tempdir().expect("tempdir");
    let users_file = folder.path().join("users");
    std::fs::write(&users_file, format!("bob:{hash}\n")).expect("write");
    let users = Credentials::load(&users_file).expect("load");
    assert!(users.verify("bob", "s3cret"));
    assert!(!users.verify("bob", "s3cret\n"));
}

/// A Python grpcio client logs in and out, and both events reach the logger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_logs_in_and_out() {
    let folder = tempfile::tempdir().expect("tempdir");
    let logger = start_logger(folder.path()).await;
    let auth = start_auth(folder.path(), logger.url(), demo(), Duration::from_secs(60)).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/auth_client.py");
    let target = auth.addr.to_string();
    tokio::task::spawn_blocking(move || testkit::run_python(&script, &[&target]))
        .await
        .expect("task")
        .expect("python client passes");
    let logs = wait_for_logs(&logger, 2).await;
    let kinds: Vec<_> = logs.iter().map(|entry| entry.event_type.as_str()).collect();
    assert_eq!(kinds, ["SESSION_STARTED", "SESSION_TERMINATED"]);
}
