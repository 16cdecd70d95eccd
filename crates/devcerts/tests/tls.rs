//! TLS and mutual TLS as users meet them, with certificates from [`dev_certs`]: servers
//! that refuse to start on bad PEM files, handshakes refused without harming the server,
//! `--health-check` over TLS, auth's audit events reaching a mutual-TLS logger, and a
//! Python grpcio client on both kinds of server.
//!
//! The real binaries come from other packages, which cargo builds only for their own
//! tests: `cargo test --workspace` builds them, `cargo test -p dev-certs` alone needs
//! `cargo build --workspace --bins` first (see [`binary`]). Everything listens on
//! `127.0.0.1` with ports from the OS, and every wait is bounded by [`TIMEOUT`].

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers fail the test on the spot.

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use assert_cmd::cargo::cargo_bin;
use dev_certs::{CA_CERT, CLIENT_CERT, CLIENT_KEY, DevCa, SERVER_CERT, SERVER_KEY, Usage};
use grpc_suite::{
    file as pb, logger as log_pb,
    server::Listener,
    tls::{ClientTls, ClientTlsFiles, ServerTlsFiles},
};
use testkit::{InProcessServer, Launch, ServerProcess, TIMEOUT};
use tonic::Code;

/// The binary `name`, built by its own package into this target folder. Fails with the
/// command to run when it is missing, rather than with a puzzling spawn error.
fn binary(name: &str) -> PathBuf {
    let path = cargo_bin(name);
    assert!(
        path.is_file(),
        "{name} is not built at {}: run `cargo build --workspace --bins` first \
         (`cargo test --workspace` builds it)",
        path.display()
    );
    path
}

/// A folder holding the development set (`ca.pem`, `server.pem`, `client.pem`, keys) and
/// whatever odd files a test adds next to it.
struct Certs {
    folder: tempfile::TempDir,
}

impl Certs {
    fn new() -> Self {
        let folder = tempfile::tempdir().expect("temp folder");
        dev_certs::write_dev_set(folder.path(), &[], false).expect("writing the dev set");
        Self { folder }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.folder.path().join(file)
    }

    /// The path of `file` as a command-line argument.
    fn arg(&self, file: &str) -> String {
        self.path(file)
            .to_str()
            .expect("utf-8 temp path")
            .to_owned()
    }

    fn write(&self, file: &str, contents: &str) -> String {
        std::fs::write(self.path(file), contents).expect("writing a test file");
        self.arg(file)
    }

    /// Another CA, unknown to the dev set, with a server certificate for this machine and a
    /// client certificate: `other_ca.pem`, `other_server.{pem,key}`, `other_client.{pem,key}`.
    fn add_other_ca(&self) {
        let other = DevCa::new("Someone else's CA").expect("another CA");
        self.write("other_ca.pem", &other.cert_pem());
        let server = other
            .issue(&names(&["localhost", "127.0.0.1"]), Usage::Server)
            .expect("server certificate");
        self.write("other_server.pem", &server.cert_pem);
        self.write("other_server.key", &server.key_pem);
        let client = other
            .issue(&names(&["suite-client"]), Usage::Client)
            .expect("client certificate");
        self.write("other_client.pem", &client.cert_pem);
        self.write("other_client.key", &client.key_pem);
    }

    /// The server's files, mutual when `mutual`.
    fn server_files(&self, mutual: bool) -> ServerTlsFiles {
        ServerTlsFiles {
            cert: self.path(SERVER_CERT),
            key: self.path(SERVER_KEY),
            client_ca: mutual.then(|| self.path(CA_CERT)),
        }
    }

    /// The `file_server` flags serving the dev set, mutual when `mutual`.
    fn server_flags(&self, mutual: bool) -> Vec<String> {
        let mut flags = vec![
            "--tls-cert".to_owned(),
            self.arg(SERVER_CERT),
            "--tls-key".to_owned(),
            self.arg(SERVER_KEY),
        ];
        if mutual {
            flags.extend(["--tls-client-ca".to_owned(), self.arg(CA_CERT)]);
        }
        flags
    }

    /// Client settings: trust `ca`, present `identity` (cert, key) if given.
    fn client(&self, ca: &str, identity: Option<(&str, &str)>) -> ClientTls {
        ClientTlsFiles {
            ca_cert: Some(self.path(ca)),
            cert: identity.map(|(cert, _)| self.path(cert)),
            key: identity.map(|(_, key)| self.path(key)),
        }
        .load()
        .expect("client TLS files load")
    }
}

fn names(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

/// `file_server --addr 127.0.0.1:0 --dir <dir> FLAGS…`, waiting for its port.
fn start_file_server(dir: &Path, flags: &[String]) -> ServerProcess {
    let mut args = vec!["--dir".to_owned(), dir.to_str().expect("utf-8").to_owned()];
    args.extend(flags.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ServerProcess::start(binary("file_server"), &args).expect("file_server starts")
}

/// `https://localhost:<port>`: the name the dev server certificate holds.
fn https_url(port: u16) -> String {
    format!("https://localhost:{port}")
}

/// Runs `file_client --server URL ARGS…` to completion within [`TIMEOUT`].
fn file_client(url: &str, args: &[&str]) -> Output {
    assert_cmd::Command::new(binary("file_client"))
        .args(["--server", url])
        .args(args)
        .timeout(TIMEOUT)
        .output()
        .expect("file_client runs")
}

/// The run failed as a user must see it: exit code 1, nothing on stdout, and exactly one
/// `error: …` line on stderr holding every one of `fragments`. Returns that line.
fn assert_one_error_line(output: &Output, fragments: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(1),
        "stderr: {stderr}\nstdout: {stdout}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    for fragment in fragments {
        assert!(
            stderr.contains(fragment),
            "{fragment:?} missing from: {stderr}"
        );
    }
    stderr
}

/// A correct client still gets its answer from the server at `url`.
fn assert_hello_works(url: &str, tls_args: &[&str]) {
    let mut args = tls_args.to_vec();
    args.extend(["hello", "Ada"]);
    let output = file_client(url, &args);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "Hello, Ada!\n");
}

/// `file_server` with `flags` refuses to start: exit 1, one `error:` line naming `file`,
/// and no startup line (nothing listened).
fn assert_start_refused(flags: &[&str], file: &str, cause: &str) {
    let dir = tempfile::tempdir().expect("temp folder");
    let output = assert_cmd::Command::new(binary("file_server"))
        .args(["--addr", "127.0.0.1:0", "--dir"])
        .arg(dir.path())
        .args(flags)
        .timeout(TIMEOUT)
        .output()
        .expect("file_server runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{flags:?}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{flags:?}: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(file), "{file} not named: {stderr}");
    assert!(stderr.contains(cause), "{cause:?} missing: {stderr}");
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("started on port"),
        "it listened: {flags:?}"
    );
}

/// A server refuses to start, in one line naming the file, on a missing PEM file, a file
/// that is not PEM, a key of another certificate, an expired or not-yet-valid certificate.
#[test]
fn server_start_refuses_unusable_pem_files() {
    let certs = Certs::new();
    let cert = certs.arg(SERVER_CERT);
    let key = certs.arg(SERVER_KEY);
    let missing = certs.arg("missing.pem");
    let garbage = certs.write("garbage.pem", "this is not a certificate\n");
    let whole = std::fs::read_to_string(certs.path(SERVER_CERT)).expect("server.pem");
    let truncated = certs.write("truncated.pem", &whole[..whole.len() / 2]);
    let ca = DevCa::new("test CA").expect("CA");
    let localhost = names(&["localhost"]);
    let stranger = ca.issue(&localhost, Usage::Server).expect("issued");
    let stranger_key = certs.write("stranger.key", &stranger.key_pem);
    let now = time::OffsetDateTime::now_utc();
    let expired = ca
        .issue_valid(
            &localhost,
            Usage::Server,
            now - time::Duration::days(400),
            30,
        )
        .expect("expired");
    let expired_cert = certs.write("expired.pem", &expired.cert_pem);
    let expired_key = certs.write("expired.key", &expired.key_pem);
    let future = ca
        .issue_valid(
            &localhost,
            Usage::Server,
            now + time::Duration::days(10),
            30,
        )
        .expect("future");
    let future_cert = certs.write("future.pem", &future.cert_pem);
    let future_key = certs.write("future.key", &future.key_pem);

    let tls = |cert: &str, key: &str| {
        vec![
            "--tls-cert".to_owned(),
            cert.to_owned(),
            "--tls-key".to_owned(),
            key.to_owned(),
        ]
    };
    let cases: Vec<(Vec<String>, &str, &str)> = vec![
        (tls(&missing, &key), &missing, "reading the TLS certificate"),
        (tls(&cert, &missing), &missing, "reading the TLS key"),
        (tls(&garbage, &key), &garbage, "no certificate in"),
        (tls(&cert, &garbage), &garbage, "no usable private key"),
        (
            tls(&truncated, &key),
            &truncated,
            "(is the file cut short?)",
        ),
        (
            tls(&cert, &stranger_key),
            &stranger_key,
            "does not belong to the certificate",
        ),
        (
            tls(&expired_cert, &expired_key),
            &expired_cert,
            "expired on",
        ),
        (
            tls(&future_cert, &future_key),
            &future_cert,
            "is not valid before",
        ),
    ];
    for (flags, file, cause) in &cases {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        assert_start_refused(&flags, file, cause);
    }
    let mut client_ca_missing = tls(&cert, &key);
    client_ca_missing.extend(["--tls-client-ca".to_owned(), missing.clone()]);
    let flags: Vec<&str> = client_ca_missing.iter().map(String::as_str).collect();
    assert_start_refused(&flags, &missing, "reading the client CA certificate");
}

/// `--tls-key` without `--tls-cert` is a usage error from clap (exit 2), before anything runs.
#[test]
fn tls_key_without_cert_is_a_usage_error() {
    let certs = Certs::new();
    let output = assert_cmd::Command::new(binary("file_server"))
        .args(["--addr", "127.0.0.1:0", "--tls-key", &certs.arg(SERVER_KEY)])
        .timeout(TIMEOUT)
        .output()
        .expect("file_server runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--tls-cert"), "{stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("started on port"));
}

/// Serves the file service in this process on `127.0.0.1:0` over TLS with `files`.
async fn start_tls_file_server(dir: &Path, files: &ServerTlsFiles) -> InProcessServer {
    let tls = files.load().expect("server TLS files load");
    let config = file_service::Config {
        upload_dir: dir.to_path_buf(),
        ..file_service::Config::default()
    };
    let storage = file_service::open_storage(&config).expect("upload folder");
    InProcessServer::start(move |listener, shutdown| async move {
        let listener = Listener::with_tls(listener, Some(tls));
        file_service::serve(listener, storage, &config, shutdown).await
    })
    .await
}

/// SayHello through `url` with `tls`, as a gRPC answer or status. The channel is lazy, so a
/// refused connection or handshake shows up as the call's status, as it does for a user
/// whose connection drops.
async fn say_hello(url: &str, tls: &ClientTls) -> Result<String, tonic::Status> {
    let channel = grpc_suite::tls::endpoint(url, tls)
        .expect("endpoint")
        .connect_timeout(TIMEOUT)
        .connect_lazy();
    let mut client = pb::file_service_client::FileServiceClient::new(channel);
    let request = pb::HelloRequest {
        name: "Ada".to_owned(),
    };
    let reply = tokio::time::timeout(TIMEOUT, client.say_hello(request))
        .await
        .expect("the call ends in time")?;
    Ok(reply.into_inner().message)
}

/// The call failed in the transport, never reaching a handler: a status tonic made up
/// (UNAVAILABLE when the connection failed, UNKNOWN when it broke under the request, which
/// is how TLS 1.3 shows a refused client certificate: the client's handshake is done before
/// the server rejects it), whose innermost cause holds one of `reasons`.
fn assert_refused_by_transport(status: &tonic::Status, case: &str, reasons: &[&str]) {
    assert!(
        matches!(status.code(), Code::Unavailable | Code::Unknown),
        "{case}: {status:?}"
    );
    let mut cause: &(dyn std::error::Error + 'static) = std::error::Error::source(status)
        .unwrap_or_else(|| panic!("{case}: the server answered: {status:?}"));
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    let cause = cause.to_string();
    assert!(
        reasons.iter().any(|reason| cause.contains(reason)),
        "{case}: {status:?}"
    );
}

/// On a mutual-TLS server, a plaintext client, a client trusting another CA, one with no
/// certificate and one with a certificate from another CA are refused before any answer,
/// each with its cause; a correct client is answered after each of them.
#[tokio::test]
async fn refused_handshakes_fail_in_the_transport_and_leave_the_server_serving() {
    let certs = Certs::new();
    certs.add_other_ca();
    let dir = tempfile::tempdir().expect("temp folder");
    let server = start_tls_file_server(dir.path(), &certs.server_files(true)).await;
    let url = https_url(server.addr.port());
    let good = certs.client(CA_CERT, Some((CLIENT_CERT, CLIENT_KEY)));

    let plaintext = (
        format!("http://localhost:{}", server.addr.port()),
        ClientTls::default(),
    );
    // Each case with the words of its cause, as rustls and hyper report it. A plaintext
    // client's request meets a closed socket, which the OS words by timing.
    let refused = [
        (
            "plaintext",
            plaintext,
            &["broken pipe", "reset", "closed"][..],
        ),
        (
            "other CA trusted",
            (
                url.clone(),
                certs.client("other_ca.pem", Some((CLIENT_CERT, CLIENT_KEY))),
            ),
            &["UnknownIssuer"],
        ),
        (
            "no client certificate",
            (url.clone(), certs.client(CA_CERT, None)),
            &["CertificateRequired"],
        ),
        (
            "client certificate of another CA",
            (
                url.clone(),
                certs.client(CA_CERT, Some(("other_client.pem", "other_client.key"))),
            ),
            &["UnknownCA"],
        ),
    ];
    assert_eq!(
        say_hello(&url, &good).await.expect("answered"),
        "Hello, Ada!"
    );
    for (case, (client_url, tls), reasons) in &refused {
        let status = say_hello(client_url, tls).await.expect_err(case);
        assert_refused_by_transport(&status, case, reasons);
        let answer = say_hello(&url, &good).await;
        assert_eq!(
            answer.expect("still serving"),
            "Hello, Ada!",
            "after: {case}"
        );
    }
    server.stop().await.expect("stops cleanly");
}

/// Against a TLS server, our client binary explains a plaintext URL, and a server
/// certificate it cannot verify names the host and the CA it trusts; one line, exit 1; a
/// correct client is answered after each.
#[test]
fn tls_server_refusals_through_the_client_binary() {
    let certs = Certs::new();
    certs.add_other_ca();
    let dir = tempfile::tempdir().expect("temp folder");
    let server = start_file_server(dir.path(), &certs.server_flags(false));
    let url = https_url(server.port);
    let trust = ["--ca-cert", &certs.arg(CA_CERT)].map(str::to_owned);
    let trust: Vec<&str> = trust.iter().map(String::as_str).collect();
    assert_hello_works(&url, &trust);

    let plaintext = file_client(
        &format!("http://localhost:{}", server.port),
        &["hello", "Ada"],
    );
    assert_one_error_line(&plaintext, &["https://"]);
    assert_hello_works(&url, &trust);

    let other_ca = certs.arg("other_ca.pem");
    let untrusted = file_client(&url, &["--ca-cert", &other_ca, "hello", "Ada"]);
    assert_one_error_line(
        &untrusted,
        &["cannot verify the server", "\"localhost\"", &other_ca],
    );
    assert_hello_works(&url, &trust);

    let system_roots = file_client(&url, &["hello", "Ada"]);
    assert_one_error_line(
        &system_roots,
        &["\"localhost\"", "the system's root certificates"],
    );
    assert_hello_works(&url, &trust);

    let files_with_plaintext = file_client(
        &format!("http://localhost:{}", server.port),
        &["--ca-cert", &certs.arg(CA_CERT), "hello", "Ada"],
    );
    assert_one_error_line(&files_with_plaintext, &["plaintext", "https://"]);
}

/// Our client binary given an https:// URL of a plaintext server says the server does not
/// speak TLS; one line, exit 1.
#[test]
fn tls_client_to_a_plaintext_server_says_so() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().expect("temp folder");
    let server = start_file_server(dir.path(), &[]);
    let url = https_url(server.port);
    let output = file_client(&url, &["--ca-cert", &certs.arg(CA_CERT), "hello", "Ada"]);
    assert_one_error_line(&output, &[&url, "does not speak TLS", "http://"]);
}

/// Against a mutual-TLS server, our client binary without a certificate, or with one from
/// another CA, says the server wants a client certificate; one line, exit 1; a correct
/// client is answered after each.
#[test]
fn mtls_server_refusals_through_the_client_binary() {
    let certs = Certs::new();
    certs.add_other_ca();
    let dir = tempfile::tempdir().expect("temp folder");
    let server = start_file_server(dir.path(), &certs.server_flags(true));
    let url = https_url(server.port);
    let ca = certs.arg(CA_CERT);
    let identity = [
        "--ca-cert".to_owned(),
        ca.clone(),
        "--tls-cert".to_owned(),
        certs.arg(CLIENT_CERT),
        "--tls-key".to_owned(),
        certs.arg(CLIENT_KEY),
    ];
    let identity: Vec<&str> = identity.iter().map(String::as_str).collect();
    assert_hello_works(&url, &identity);

    let anonymous = file_client(&url, &["--ca-cert", &ca, "hello", "Ada"]);
    assert_one_error_line(&anonymous, &["--tls-cert"]);
    assert_hello_works(&url, &identity);

    let other_client = file_client(
        &url,
        &[
            "--ca-cert",
            &ca,
            "--tls-cert",
            &certs.arg("other_client.pem"),
            "--tls-key",
            &certs.arg("other_client.key"),
            "hello",
            "Ada",
        ],
    );
    assert_one_error_line(&other_client, &["--tls-cert"]);
    assert_hello_works(&url, &identity);
}

/// `file_server --health-check` with the server's own TLS flags exits 0 against a TLS and
/// a mutual-TLS server, and exits 1 with one line saying so against a plaintext server.
#[test]
fn health_check_over_tls() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().expect("temp folder");
    let health_check = |port: u16, flags: &[String]| {
        assert_cmd::Command::new(binary("file_server"))
            .args(["--addr", &format!("127.0.0.1:{port}"), "--health-check"])
            .args(flags)
            .timeout(TIMEOUT)
            .output()
            .expect("the probe runs")
    };
    for mutual in [false, true] {
        let flags = certs.server_flags(mutual);
        let server = start_file_server(dir.path(), &flags);
        let probe = health_check(server.port, &flags);
        assert!(
            probe.status.success(),
            "mutual: {mutual}: {}",
            String::from_utf8_lossy(&probe.stderr)
        );
    }
    let plaintext = start_file_server(dir.path(), &[]);
    let probe = health_check(plaintext.port, &certs.server_flags(false));
    assert_one_error_line(&probe, &["does not speak TLS", "without --tls-cert"]);
}

/// Serves the logger in this process on `listener` over mutual TLS with the dev set,
/// storing into `dir/logs.db`.
fn start_mtls_logger_on(
    listener: tokio::net::TcpListener,
    dir: &Path,
    certs: &Certs,
) -> InProcessServer {
    let tls = certs.server_files(true).load().expect("logger TLS files");
    let config = logger_service::Config {
        db_path: dir.join("logs.db"),
        ..logger_service::Config::default()
    };
    let store = logger_service::open_store(&config).expect("log database");
    InProcessServer::start_on(listener, move |listener, shutdown| async move {
        let listener = Listener::with_tls(listener, Some(tls));
        logger_service::serve(listener, store, &config, shutdown).await
    })
}

/// The logger's event types over mutual TLS, oldest first, once `wanted` is among them
/// (or whatever is there after [`TIMEOUT`]).
async fn logged_types(url: &str, tls: &ClientTls, wanted: &str) -> Vec<String> {
    let channel = grpc_suite::cli::connect_with(url, tls)
        .await
        .expect("query over mutual TLS connects");
    let mut client = log_pb::logger_service_client::LoggerServiceClient::new(channel);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let request = log_pb::LogQueryRequest {
            limit: 100,
            event_type: String::new(),
        };
        let reply = tokio::time::timeout(TIMEOUT, client.query_logs(request))
            .await
            .expect("query in time")
            .expect("query answered");
        let mut types: Vec<String> = reply
            .into_inner()
            .logs
            .into_iter()
            .map(|entry| entry.event_type)
            .collect();
        if types.iter().any(|kind| kind == wanted) || tokio::time::Instant::now() > deadline {
            types.reverse();
            return types;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `auth_server` flags sending audit events to `logger_url`, trusting the dev CA and
/// presenting the client certificate when `with_identity`.
fn auth_flags(
    certs: &Certs,
    data_dir: &Path,
    logger_url: &str,
    with_identity: bool,
) -> Vec<String> {
    let mut flags = vec![
        "--addr".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--data-dir".to_owned(),
        data_dir.to_str().expect("utf-8").to_owned(),
        "--logger-addr".to_owned(),
        logger_url.to_owned(),
        "--logger-ca-cert".to_owned(),
        certs.arg(CA_CERT),
    ];
    if with_identity {
        flags.extend([
            "--logger-tls-cert".to_owned(),
            certs.arg(CLIENT_CERT),
            "--logger-tls-key".to_owned(),
            certs.arg(CLIENT_KEY),
        ]);
    }
    flags
}

/// Starts `auth_server` with `flags` (stderr to `log`), off the async runtime.
async fn start_auth(flags: Vec<String>, log: PathBuf) -> ServerProcess {
    tokio::task::spawn_blocking(move || {
        Launch::new(binary("auth_server"))
            .args(flags)
            .env("RUST_LOG", "warn")
            .stderr_to(log)
            .start()
    })
    .await
    .expect("start task")
    .expect("auth_server starts")
}

/// `auth_client --logout-after 0`: logs in and out at once; fails the test unless it
/// succeeds.
async fn login_and_out(auth_port: u16) {
    let output = tokio::task::spawn_blocking(move || {
        assert_cmd::Command::new(binary("auth_client"))
            .args(["--server", &format!("http://127.0.0.1:{auth_port}")])
            .args(["--logout-after", "0"])
            .timeout(TIMEOUT)
            .output()
    })
    .await
    .expect("client task")
    .expect("auth_client runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("Login: "));
}

/// auth_server, given the logger's CA and a client certificate, delivers a login's events
/// to a logger that requires mutual TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_delivers_events_to_a_mutual_tls_logger() {
    let certs = Certs::new();
    let folder = tempfile::tempdir().expect("temp folder");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let logger = start_mtls_logger_on(listener, folder.path(), &certs);
    let logger_url = https_url(logger.addr.port());
    let flags = auth_flags(&certs, folder.path(), &logger_url, true);
    let auth = start_auth(flags, folder.path().join("auth.log")).await;

    login_and_out(auth.port).await;
    let query_tls = certs.client(CA_CERT, Some((CLIENT_CERT, CLIENT_KEY)));
    let types = logged_types(&logger_url, &query_tls, "SESSION_TERMINATED").await;
    assert_eq!(types, ["SESSION_STARTED", "SESSION_TERMINATED"]);
    drop(auth);
    logger.stop().await.expect("logger stops");
}

/// The auth server's one warning when delivery to the logger starts failing.
const DELIVERY_FAILING: &str = "audit delivery to the logger is failing";

/// auth_server without a client certificate is refused by a mutual-TLS logger, and keeps
/// the events in its outbox; restarted with the certificate, it delivers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_keeps_events_a_mutual_tls_logger_refused() {
    let certs = Certs::new();
    let folder = tempfile::tempdir().expect("temp folder");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let logger = start_mtls_logger_on(listener, folder.path(), &certs);
    let logger_url = https_url(logger.addr.port());
    let log = folder.path().join("auth.log");
    let anonymous = auth_flags(&certs, folder.path(), &logger_url, false);
    let auth = start_auth(anonymous, log.clone()).await;

    login_and_out(auth.port).await;
    // Wait for a delivery attempt to have been refused, so the outbox is checked after the
    // logger said no rather than before auth tried.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(DELIVERY_FAILING)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no refused delivery logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Retries go on (100 ms, doubling), but an outage is one warning, not one per retry.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let warnings = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches(DELIVERY_FAILING)
        .count();
    assert_eq!(warnings, 1, "one warning per outage");
    tokio::task::spawn_blocking(move || auth.stop(TIMEOUT))
        .await
        .expect("stop task")
        .expect("auth stops while its logger refuses it");
    let outbox = auth_service::outbox::Outbox::open(&folder.path().join(auth_service::OUTBOX_FILE))
        .expect("outbox opens");
    let pending: Vec<String> = outbox
        .pending()
        .expect("outbox readable")
        .into_iter()
        .map(|event| event.event_type)
        .collect();
    assert_eq!(pending, ["SESSION_STARTED", "SESSION_TERMINATED"]);
    drop(outbox);

    let identified = auth_flags(&certs, folder.path(), &logger_url, true);
    let auth = start_auth(identified, log).await;
    let query_tls = certs.client(CA_CERT, Some((CLIENT_CERT, CLIENT_KEY)));
    let types = logged_types(&logger_url, &query_tls, "SESSION_TERMINATED").await;
    assert_eq!(types, ["SESSION_STARTED", "SESSION_TERMINATED"]);
    drop(auth);
    logger.stop().await.expect("logger stops");
}

/// Python grpcio reaches a TLS server trusting the dev CA, and a mutual-TLS server with the
/// client certificate; without one, the mutual-TLS server refuses it.
#[test]
fn python_grpcio_over_tls_and_mutual_tls() {
    let certs = Certs::new();
    let dir = tempfile::tempdir().expect("temp folder");
    let tls_server = start_file_server(dir.path(), &certs.server_flags(false));
    let mtls_server = start_file_server(dir.path(), &certs.server_flags(true));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/tls_client.py");
    let output = testkit::run_python(
        &script,
        &[
            &format!("localhost:{}", tls_server.port),
            &format!("localhost:{}", mtls_server.port),
            certs.folder.path().to_str().expect("utf-8"),
        ],
    )
    .expect("python TLS client passes");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("all checks passed"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}
