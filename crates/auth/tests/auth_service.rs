//! The auth service with a real logger service behind it: sessions, refusals, and audit
//! events that arrive exactly once, in order, with their original time, whether or not the
//! logger was there when they happened.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers fail the test on the spot.

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
    start_auth_with(config(data_dir, logger_url, session_ttl), credentials).await
}

fn config(data_dir: &Path, logger_url: String, session_ttl: Duration) -> Config {
    Config {
        session_ttl,
        data_dir: data_dir.to_path_buf(),
        logger_url,
        logger_tls: grpc_suite::tls::ClientTls::default(),
        throttle: auth_service::throttle::ThrottleConfig::default(),
        logger_token: None,
        sessions_db: None,
    }
}

async fn start_auth_with(config: Config, credentials: Credentials) -> InProcessServer {
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

/// The two rows one login and logout of user1 leave, as [`kinds_and_details`] lists them.
fn session_rows(session_id: &str) -> Vec<(String, String)> {
    vec![
        (
            "SESSION_STARTED".to_owned(),
            "User 'user1' logged in".to_owned(),
        ),
        (
            "SESSION_TERMINATED".to_owned(),
            format!("Session {session_id} (user1) ended"),
        ),
    ]
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
        session_rows(&session_id.to_string())
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
    let (code, _, stderr) = tokio::task::spawn_blocking(move || {
        run_client("auth_client", &["--server", &url, "--password", "bad"])
    })
    .await
    .expect("task");
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
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
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run_client("auth_client", &["--server", &url, "--logout-after", "0"])
    })
    .await
    .expect("task");
    assert_eq!(code, 0, "{stderr}");
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

// ---- Sessions that guard the services, throttling, the logger's tokens ----

/// A URL where nothing answers for the test's lifetime: a listener that never accepts.
async fn silent_url() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    (listener, url)
}

async fn validate(
    client: &mut AuthServiceClient<Channel>,
    session_id: &str,
) -> pb::ValidateSessionResponse {
    let request = pb::ValidateSessionRequest {
        session_id: session_id.into(),
    };
    tokio::time::timeout(TIMEOUT, client.validate_session(request))
        .await
        .expect("validate in time")
        .expect("validate answered")
        .into_inner()
}

/// ValidateSession: a live session names its user and expiry; a logged-out, expired,
/// unknown or malformed one is not valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_session_answers_for_live_sessions_only() {
    let folder = tempfile::tempdir().expect("tempdir");
    let (_silent, logger_url) = silent_url().await;
    let auth = start_auth(folder.path(), logger_url, demo(), Duration::from_secs(2)).await;
    let mut client = auth_client(&auth).await;

    let live = login(&mut client, "user1", "pass123").await.session_id;
    let answer = validate(&mut client, &live).await;
    assert!(answer.valid);
    assert_eq!(answer.username, "user1");
    let expires = chrono::DateTime::parse_from_rfc3339(&answer.expires_at).expect("RFC 3339");
    let left = expires.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(left <= chrono::Duration::seconds(2), "{left}");

    let ended = login(&mut client, "user1", "pass123").await.session_id;
    assert!(logout(&mut client, &ended).await.success);
    assert!(!validate(&mut client, &ended).await.valid, "logged out");
    assert!(
        !validate(&mut client, &uuid::Uuid::new_v4().to_string())
            .await
            .valid
    );
    assert!(!validate(&mut client, "not a uuid").await.valid);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = validate(&mut client, &live).await;
    assert!(!expired.valid, "expired");
    assert_eq!(expired.username, "", "nothing said about a dead session");
}

/// Sessions outlive an auth restart (kept in the data folder) and can be ended after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_an_auth_restart() {
    let folder = tempfile::tempdir().expect("tempdir");
    let (_silent, logger_url) = silent_url().await;
    let auth = start_auth(
        folder.path(),
        logger_url.clone(),
        demo(),
        Duration::from_secs(60),
    )
    .await;
    let mut client = auth_client(&auth).await;
    let kept = login(&mut client, "user1", "pass123").await.session_id;
    let ended = login(&mut client, "user1", "pass123").await.session_id;
    assert!(logout(&mut client, &ended).await.success);
    auth.stop().await.expect("stops");

    let auth = start_auth(folder.path(), logger_url, demo(), Duration::from_secs(60)).await;
    let mut client = auth_client(&auth).await;
    let answer = validate(&mut client, &kept).await;
    assert!(answer.valid, "a live session survives the restart");
    assert_eq!(answer.username, "user1");
    assert!(
        !validate(&mut client, &ended).await.valid,
        "an ended one stays ended"
    );
    assert!(
        logout(&mut client, &kept).await.success,
        "and can be ended after it"
    );
    assert!(!validate(&mut client, &kept).await.valid);
}

/// Repeated failures throttle the user at that address: RESOURCE_EXHAUSTED saying when to
/// retry, even with the right password (no check is made), recorded once as
/// LOGIN_THROTTLED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled() {
    let folder = tempfile::tempdir().expect("tempdir");
    let logger = start_logger(folder.path()).await;
    let mut config = config(folder.path(), logger.url(), Duration::from_secs(60));
    config.throttle = auth_service::throttle::ThrottleConfig {
        failures_per_user: 3,
        failures_per_address: 100,
        window: Duration::from_secs(60),
    };
    let auth = start_auth_with(config, demo()).await;
    let mut client = auth_client(&auth).await;
    let mut fastest_check = Duration::MAX;
    for _ in 0..3 {
        let started = std::time::Instant::now();
        assert!(!login(&mut client, "user1", "wrong").await.success);
        fastest_check = fastest_check.min(started.elapsed());
    }
    let mut fastest_throttled = Duration::MAX;
    for password in ["wrong", "pass123", "wrong"] {
        let request = pb::LoginRequest {
            username: "user1".into(),
            password: password.into(),
        };
        let started = std::time::Instant::now();
        let status = tokio::time::timeout(TIMEOUT, client.login(request))
            .await
            .expect("in time")
            .expect_err("throttled");
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("try again in"), "{status}");
        fastest_throttled = fastest_throttled.min(started.elapsed());
    }
    // Compared within the run, fastest against fastest, so machine load cancels out: an
    // argon2id check takes tens of milliseconds, a refusal without one a fraction of that.
    assert!(
        fastest_throttled < fastest_check,
        "no password check while throttled ({fastest_throttled:?} vs {fastest_check:?} with one)"
    );
    // Another user from the same address is not throttled by user1's failures.
    assert!(!login(&mut client, "someone", "wrong").await.success);
    let logs = wait_for_logs(&logger, 5).await;
    let kinds: Vec<_> = logs.iter().map(|entry| entry.event_type.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "LOGIN_FAILED",
            "LOGIN_FAILED",
            "LOGIN_FAILED",
            "LOGIN_THROTTLED",
            "LOGIN_FAILED"
        ],
        "one LOGIN_THROTTLED per burst"
    );
}

/// A file service started with a session guard: refuses calls without a live session,
/// serves them with one, and keeps health open.
async fn start_guarded_file_service(folder: &Path, auth_url: &str) -> InProcessServer {
    let guard = grpc_suite::session_guard::SessionGuard::new(
        auth_url,
        &grpc_suite::tls::ClientTls::default(),
    )
    .expect("guard");
    let config = file_service::Config {
        upload_dir: folder.join("files"),
        max_file_size: 1024,
    };
    let storage = file_service::open_storage(&config).expect("storage");
    InProcessServer::start(move |listener, shutdown| async move {
        let listener =
            grpc_suite::server::Listener::with_tls(listener, None).with_session_guard(Some(guard));
        file_service::serve(listener, storage, &config, shutdown).await
    })
    .await
}

async fn say_hello(
    server: &InProcessServer,
    session: Option<&str>,
) -> Result<String, tonic::Status> {
    let mut client =
        grpc_suite::file::file_service_client::FileServiceClient::new(server.channel().await);
    let mut request = tonic::Request::new(grpc_suite::file::HelloRequest { name: "Ada".into() });
    if let Some(session) = session {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {session}").parse().expect("metadata"),
        );
    }
    tokio::time::timeout(TIMEOUT, client.say_hello(request))
        .await
        .expect("answered in time")
        .map(|reply| reply.into_inner().message)
}

/// With `--auth-url`: no session, a bogus, an expired or a logged-out one is
/// UNAUTHENTICATED; a live one works; health needs none; auth down is UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_service_needs_a_live_session() {
    let folder = tempfile::tempdir().expect("tempdir");
    let (_silent, logger_url) = silent_url().await;
    let auth = start_auth(folder.path(), logger_url, demo(), Duration::from_secs(1)).await;
    let guarded = start_guarded_file_service(folder.path(), &auth.url()).await;
    let mut client = auth_client(&auth).await;

    let none = say_hello(&guarded, None).await.expect_err("no session");
    assert_eq!(none.code(), Code::Unauthenticated);
    assert!(
        none.message().contains("auth_client --print-session"),
        "{none}"
    );
    let bogus = say_hello(&guarded, Some(&uuid::Uuid::new_v4().to_string()))
        .await
        .expect_err("bogus");
    assert_eq!(bogus.code(), Code::Unauthenticated);

    let live = login(&mut client, "user1", "pass123").await.session_id;
    assert_eq!(
        say_hello(&guarded, Some(&live)).await.expect("live"),
        "Hello, Ada!"
    );

    let ended = login(&mut client, "user1", "pass123").await.session_id;
    assert!(logout(&mut client, &ended).await.success);
    let logged_out = say_hello(&guarded, Some(&ended))
        .await
        .expect_err("logged out");
    assert_eq!(logged_out.code(), Code::Unauthenticated);

    let expiring = login(&mut client, "user1", "pass123").await.session_id;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let expired = say_hello(&guarded, Some(&expiring))
        .await
        .expect_err("expired");
    assert_eq!(expired.code(), Code::Unauthenticated);

    let health = grpc_suite::cli::check_health(guarded.channel().await).await;
    assert!(health.is_ok(), "health needs no session: {health:?}");

    auth.stop().await.expect("auth stops");
    let fresh = uuid::Uuid::new_v4().to_string();
    let down = say_hello(&guarded, Some(&fresh))
        .await
        .expect_err("auth down");
    assert_eq!(down.code(), Code::Unavailable, "fails closed: {down}");
}

/// A logger with a write token refuses anonymous and wrong-token writes and stores
/// nothing; auth presenting the token still delivers every event, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logger_write_token_admits_only_auth() {
    let folder = tempfile::tempdir().expect("tempdir");
    let token = "a-test-token-0123456789";
    let logger_config = logger_service::Config {
        db_path: folder.path().join("logs.db"),
        tokens: logger_service::tokens::Tokens {
            write: Some(token.to_owned()),
            read: None,
        },
        ..logger_service::Config::default()
    };
    let store = logger_service::open_store(&logger_config).expect("store");
    let logger = InProcessServer::start(move |listener, shutdown| async move {
        logger_service::serve(listener, store, &logger_config, shutdown).await
    })
    .await;
    let mut writer =
        log_pb::logger_service_client::LoggerServiceClient::new(logger.channel().await);
    let forged = || log_pb::LogRequest {
        event_type: "SESSION_STARTED".into(),
        details: "User 'mallory' logged in".into(),
        ..Default::default()
    };
    let anonymous = writer.log_activity(forged()).await.expect_err("anonymous");
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let mut wrong = tonic::Request::new(forged());
    wrong.metadata_mut().insert(
        "authorization",
        "Bearer not-the-token".parse().expect("metadata"),
    );
    let wrong = writer.log_activity(wrong).await.expect_err("wrong token");
    assert_eq!(wrong.code(), Code::PermissionDenied);

    let mut config = config(folder.path(), logger.url(), Duration::from_secs(60));
    config.logger_token = Some(token.to_owned());
    let auth = start_auth_with(config, demo()).await;
    let mut client = auth_client(&auth).await;
    let session = login(&mut client, "user1", "pass123").await.session_id;
    assert!(logout(&mut client, &session).await.success);
    let logs = wait_for_logs(&logger, 2).await;
    assert_eq!(
        kinds_and_details(&logs),
        session_rows(&session),
        "auth's events once each, and nothing forged"
    );
}

/// Runs a client binary with `args`, bounded in time; (exit code, stdout, stderr).
fn run_client(binary: &str, args: &[&str]) -> (i32, String, String) {
    let output = assert_cmd::Command::new(cargo_bin(binary))
        .args(args)
        .env_remove("SUITE_SESSION")
        .timeout(TIMEOUT)
        .output()
        .expect("client ran");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The README's shell flow, through the binaries users run: `auth_client --print-session`,
/// each guarded server's client with `--session` (and refused without), `auth_client
/// --logout ID`, and the next call refused once the guard's cache has let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_flow_through_the_binaries() {
    let folder = tempfile::tempdir().expect("tempdir");
    let (_silent, logger_url) = silent_url().await;
    let auth = start_auth(folder.path(), logger_url, demo(), Duration::from_secs(600)).await;
    let auth_url = auth.url();
    let files = folder.path().join("files");
    let streamed = folder.path().join("streamed");
    let files = files.to_str().expect("utf-8");
    let streamed = streamed.to_str().expect("utf-8");
    let server_log = folder.path().join("file_server.log");
    let servers = [
        ("file_server", vec!["--dir", files]),
        ("random_server", vec![]),
        ("streaming_server", vec!["--dir", streamed]),
    ]
    .map(|(binary, extra)| {
        testkit::Launch::new(cargo_bin(binary))
            .args(["--addr", "127.0.0.1:0", "--auth-url", auth_url.as_str()])
            .args(extra)
            .env("RUST_LOG", "info")
            .stderr_to(folder.path().join(format!("{binary}.log")))
            .start()
            .expect("server starts")
    });
    let upload = folder.path().join("report.txt");
    std::fs::write(&upload, "from a session").expect("local file");
    let upload = upload.to_str().expect("utf-8");
    let [file, random, streaming] = &servers;
    let words = |args: &[&str]| args.iter().map(|arg| (*arg).to_owned()).collect::<Vec<_>>();
    let calls = [
        ("file_client", file.url(), words(&["write", upload])),
        (
            "random_client",
            random.url(),
            words(&["--min", "1", "--max", "6", "--count", "2", "--delay", "0"]),
        ),
        (
            "streaming_client",
            streaming.url(),
            words(&["time", "--count", "1"]),
        ),
    ];

    let (code, session, stderr) = tokio::task::spawn_blocking({
        let auth_url = auth_url.clone();
        move || run_client("auth_client", &["--server", &auth_url, "--print-session"])
    })
    .await
    .expect("joined");
    assert_eq!(code, 0, "{stderr}");
    let session = session.trim().to_owned();
    uuid::Uuid::parse_str(&session).expect("only the session id on stdout");

    let calls_with = |session: Option<String>| {
        let calls = calls.clone();
        tokio::task::spawn_blocking(move || {
            calls
                .iter()
                .map(|(binary, url, args)| {
                    let mut all = vec!["--server", url.as_str()];
                    if let Some(session) = &session {
                        all.extend(["--session", session.as_str()]);
                    }
                    all.extend(args.iter().map(String::as_str));
                    (binary.to_string(), run_client(binary, &all))
                })
                .collect::<Vec<_>>()
        })
    };
    for (binary, (code, _, stderr)) in calls_with(None).await.expect("joined") {
        assert_eq!(code, 1, "{binary} without a session");
        assert_eq!(stderr.lines().count(), 1, "{binary}: one line: {stderr}");
        assert!(stderr.contains("UNAUTHENTICATED"), "{binary}: {stderr}");
    }
    for (binary, (code, stdout, stderr)) in calls_with(Some(session.clone())).await.expect("joined")
    {
        assert_eq!(code, 0, "{binary} with a live session: {stderr}");
        assert!(!stdout.is_empty(), "{binary} printed its answer");
    }
    // The file service logs who wrote the file.
    let log = std::fs::read_to_string(&server_log).expect("file_server log");
    assert!(
        log.lines()
            .any(|line| line.contains("file written") && line.contains("user1")),
        "the writer is logged: {log}"
    );

    let (code, stdout, stderr) = tokio::task::spawn_blocking({
        let (auth_url, session) = (auth_url.clone(), session.clone());
        move || {
            run_client(
                "auth_client",
                &["--server", &auth_url, "--logout", &session],
            )
        }
    })
    .await
    .expect("joined");
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "Logout: Logout successful");
    // The bound the README states: a logout takes effect everywhere within the cache's life.
    tokio::time::sleep(grpc_suite::session_guard::CACHE_TTL + Duration::from_millis(200)).await;
    for (binary, (code, _, stderr)) in calls_with(Some(session)).await.expect("joined") {
        assert_eq!(code, 1, "{binary} after logout");
        assert!(stderr.contains("UNAUTHENTICATED"), "{binary}: {stderr}");
    }
}

/// A Python grpcio client sends the session as metadata and is served; without it, or
/// after logout, it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_sends_the_session() {
    let folder = tempfile::tempdir().expect("tempdir");
    let (_silent, logger_url) = silent_url().await;
    let auth = start_auth(folder.path(), logger_url, demo(), Duration::from_secs(600)).await;
    let guarded = start_guarded_file_service(folder.path(), &auth.url()).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/guarded_client.py");
    let (auth_target, file_target) = (auth.addr.to_string(), guarded.addr.to_string());
    let cache = format!(
        "{:.1}",
        grpc_suite::session_guard::CACHE_TTL.as_secs_f64() + 0.2
    );
    tokio::task::spawn_blocking(move || {
        testkit::run_python(&script, &[&auth_target, &file_target, &cache])
    })
    .await
    .expect("task")
    .expect("python client passes");
}
