//! The file service as its users meet it: the generated client against an in-process
//! server, the real binaries, and a Python grpcio client.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers fail the test on the spot.

use std::{path::Path, process::Command, time::Duration};

use assert_cmd::cargo::cargo_bin;
use file_service::Config;
use grpc_suite::file as pb;
use pb::file_service_client::FileServiceClient;
use testkit::{InProcessServer, ServerProcess, TIMEOUT, files_under};
use tonic::{Code, transport::Channel};

/// Starts the service on `127.0.0.1:0` storing into `dir`, with `max_file_size`.
async fn start(dir: &Path, max_file_size: usize) -> InProcessServer {
    let config = Config {
        upload_dir: dir.to_path_buf(),
        max_file_size,
    };
    let storage = file_service::open_storage(&config).expect("opening the upload folder");
    InProcessServer::start(move |listener, shutdown| async move {
        file_service::serve(listener, storage, &config, shutdown).await
    })
    .await
}

async fn client(server: &InProcessServer) -> FileServiceClient<Channel> {
    FileServiceClient::new(server.channel().await).max_encoding_message_size(usize::MAX)
}

fn write_request(filename: &str, content: &[u8]) -> pb::FileRequest {
    pb::FileRequest {
        filename: filename.to_owned(),
        content: content.to_vec().into(),
    }
}

/// Greetings and time answer in the old servers' exact words and format.
#[tokio::test]
async fn greetings_and_time_follow_the_contract() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), 1024).await;
    let mut client = client(&server).await;

    let hello = client
        .say_hello(pb::HelloRequest { name: "Ada".into() })
        .await
        .expect("hello");
    assert_eq!(hello.into_inner().message, "Hello, Ada!");
    let goodbye = client
        .say_goodbye(pb::GoodbyeRequest { name: "Ada".into() })
        .await
        .expect("goodbye");
    assert_eq!(goodbye.into_inner().message, "Goodbye, Ada!");

    let time = client
        .get_server_time(pb::Empty {})
        .await
        .expect("time")
        .into_inner()
        .timestamp;
    let parsed =
        chrono::NaiveDateTime::parse_from_str(&time, "%Y-%m-%d %H:%M:%S").expect("contract format");
    let drift = (chrono::Local::now().naive_local() - parsed)
        .num_seconds()
        .abs();
    assert!(drift <= 5, "server time {time} is {drift}s from ours");
    server.stop().await.expect("clean stop");
}

/// A written file lands complete under its base name and shows up in the listing.
#[tokio::test]
async fn write_then_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), 1024).await;
    let mut client = client(&server).await;

    let reply = client
        .write_file(write_request("notes.txt", b"some notes"))
        .await
        .expect("write")
        .into_inner();
    assert!(reply.success);
    assert_eq!(reply.message, "File notes.txt written successfully");
    assert_eq!(
        reply.file_path,
        dir.path().join("notes.txt").display().to_string()
    );
    assert_eq!(
        std::fs::read(dir.path().join("notes.txt")).expect("stored"),
        b"some notes"
    );

    client
        .write_file(write_request("a.txt", b""))
        .await
        .expect("empty content is a valid file");
    std::fs::create_dir(dir.path().join("a-folder")).expect("mkdir");
    let listed = client
        .get_files_list(pb::Empty {})
        .await
        .expect("list")
        .into_inner()
        .filenames;
    assert_eq!(listed, ["a.txt", "notes.txt"]);
}

/// Hostile names never write outside the folder: they reduce to their base name.
#[tokio::test]
async fn traversal_names_stay_inside_the_folder() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("uploads");
    let server = start(&dir, 1024).await;
    let mut client = client(&server).await;

    for (raw, stored) in [
        ("../../escape1", "escape1"),
        ("/etc/escape2", "escape2"),
        (r"a\..\escape3", "escape3"),
        ("sub/../../escape4", "escape4"),
    ] {
        let reply = client
            .write_file(write_request(raw, b"x"))
            .await
            .expect(raw)
            .into_inner();
        assert_eq!(
            reply.message,
            format!("File {stored} written successfully"),
            "{raw}"
        );
    }
    assert_eq!(
        files_under(root.path()),
        [
            "uploads/escape1",
            "uploads/escape2",
            "uploads/escape3",
            "uploads/escape4"
        ]
    );
}

/// Names that reduce to nothing, or to something unsafe, are INVALID_ARGUMENT and store nothing.
#[tokio::test]
async fn unusable_names_are_invalid_argument() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), 1024).await;
    let mut client = client(&server).await;

    let long_name = "n".repeat(10_000);
    for raw in [
        "",
        ".",
        "..",
        "dir/",
        "../",
        "a\0b",
        "tab\there",
        long_name.as_str(),
        ".partial-x",
    ] {
        let status = client
            .write_file(write_request(raw, b"x"))
            .await
            .expect_err("must be refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{raw:?}: {status:?}");
        assert!(
            status.message().contains("file name"),
            "{raw:?}: {}",
            status.message()
        );
    }
    assert!(
        files_under(dir.path()).is_empty(),
        "nothing may be stored: {:?}",
        files_under(dir.path())
    );
}

/// Content over the limit is RESOURCE_EXHAUSTED naming the limit, however large it is,
/// and leaves nothing behind; content at the limit is stored.
#[tokio::test]
async fn oversize_content_is_resource_exhausted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limit = 1024 * 1024;
    let server = start(dir.path(), limit).await;
    let mut client = client(&server).await;

    client
        .write_file(write_request("exact.bin", &vec![7; limit]))
        .await
        .expect("at the limit is fine");

    let status = client
        .write_file(write_request("over.bin", &vec![7; limit + 1]))
        .await
        .expect_err("over");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.message(),
        format!(
            "file content is {} bytes; the limit is {limit} bytes",
            limit + 1
        )
    );

    // Far past the limit, tonic itself refuses to decode the message; still the same code.
    let status = client
        .write_file(write_request("huge.bin", &vec![7; 3 * limit]))
        .await
        .expect_err("huge");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // It names the documented content limit, not the decode limit (content + framing).
    let message = status.message();
    assert!(
        message.starts_with("request message is ")
            && message.ends_with(&format!(
                " bytes; a file's content may be at most {limit} bytes (1MiB)"
            )),
        "{message}"
    );

    assert_eq!(files_under(dir.path()), ["exact.bin"]);
}

/// Content past tonic's 4 MiB default is accepted under the default 64 MiB limit.
#[tokio::test]
async fn default_limit_accepts_more_than_four_mebibytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), file_service::DEFAULT_MAX_FILE_SIZE).await;
    let mut client = client(&server).await;
    let content: Vec<u8> = (0..6 * 1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    client
        .write_file(write_request("six.bin", &content))
        .await
        .expect("6 MiB write");
    assert_eq!(
        std::fs::read(dir.path().join("six.bin")).expect("stored"),
        content
    );
}

/// Concurrent writes of one name leave exactly one writer's complete content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_never_interleave() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), 8 * 1024 * 1024).await;
    let mut writers = Vec::new();
    for writer in 0..8u8 {
        let mut client = client(&server).await;
        writers.push(tokio::spawn(async move {
            client
                .write_file(write_request("shared.bin", &vec![writer; 2 * 1024 * 1024]))
                .await
        }));
    }
    for writer in writers {
        writer.await.expect("task").expect("write");
    }
    let stored = std::fs::read(dir.path().join("shared.bin")).expect("stored");
    assert_eq!(stored.len(), 2 * 1024 * 1024);
    assert!(
        stored.iter().all(|&byte| byte == stored[0]),
        "content from two writers interleaved"
    );
    assert_eq!(
        files_under(dir.path()),
        ["shared.bin"],
        "no temporary files left"
    );
}

/// Health answers SERVING for the server and for file.FileService, and NOT_FOUND otherwise.
#[tokio::test]
async fn health_is_reported() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), 1024).await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "file.FileService"] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect(service);
        assert_eq!(
            reply.into_inner().status(),
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "nope.Nope".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);
}

/// Reflection lists the file service, so grpcurl-style tools need no proto files.
#[tokio::test]
async fn reflection_lists_the_service() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), 1024).await;
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let reply = tokio::time::timeout(TIMEOUT, replies.message())
        .await
        .expect("in time")
        .expect("reply")
        .expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection answer: {reply:?}");
    };
    let names: Vec<_> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    for served in [
        "file.FileService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(
            names.iter().any(|name| name == served),
            "{served} missing from {names:?}"
        );
    }
    assert!(
        !names
            .iter()
            .any(|name| name == "random.RandomNumberService"),
        "lists a service it does not serve: {names:?}"
    );
}

/// The binaries as a user runs them: the server prints the old startup lines, the client's
/// demo prints the old script's lines, and SIGTERM stops the server cleanly with exit 0.
#[test]
fn binaries_demo_and_graceful_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_arg = dir.path().to_str().expect("utf-8 temp path");
    let mut server =
        ServerProcess::start(cargo_bin("file_server"), &["--dir", dir_arg]).expect("server starts");
    assert!(
        server
            .stdout()
            .contains(&format!("File Service started on port {}", server.port))
    );
    let absolute = std::fs::canonicalize(dir.path()).expect("canonical");
    server
        .wait_for_stdout(&format!("Files will be stored in: {}", absolute.display()))
        .expect("folder line");

    let output = Command::new(cargo_bin("file_client"))
        .args(["--server", &server.url()])
        .output()
        .expect("client runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    let lines: Vec<_> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{stdout}");
    assert_eq!(lines[0], "Greeter client received: Hello, gRPC User!");
    let time = lines[1].strip_prefix("Server time: ").expect("time line");
    chrono::NaiveDateTime::parse_from_str(time, "%Y-%m-%d %H:%M:%S").expect("contract format");
    assert_eq!(
        lines[2],
        "File write response: File test.txt written successfully"
    );
    assert_eq!(
        lines[3],
        format!("File path: {}", dir.path().join("test.txt").display())
    );
    assert_eq!(lines[4], "Files in upload directory:");
    assert_eq!(lines[5], "- test.txt");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("test.txt")).expect("stored"),
        "Hello, this is a test file content!"
    );

    server.signal("TERM").expect("SIGTERM");
    let status = server
        .wait(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
}

/// Subcommands script every call, including `write -` from piped standard input, and a
/// refused call prints the server's reason on one line with exit code 1.
#[test]
fn client_subcommands_and_refusals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(
        cargo_bin("file_server"),
        &["--dir", dir.path().to_str().expect("utf-8")],
    )
    .expect("server starts");
    let client = || {
        let mut command = assert_cmd::Command::new(cargo_bin("file_client"));
        command.args(["--server", &server.url()]).timeout(TIMEOUT);
        command
    };
    let run = |args: &[&str]| client().args(args).assert();

    run(&["hello", "Ada"]).success().stdout("Hello, Ada!\n");
    run(&["goodbye", "Ada"]).success().stdout("Goodbye, Ada!\n");
    client()
        .args(["write", "-", "--as", "../piped.txt"])
        .write_stdin("from a pipe")
        .timeout(TIMEOUT)
        .assert()
        .success()
        .stdout(format!(
            "File piped.txt written successfully ({})\n",
            dir.path().join("piped.txt").display()
        ));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("piped.txt")).expect("stored"),
        "from a pipe"
    );
    run(&["list"]).success().stdout("piped.txt\n");

    let refused = client()
        .args(["write", "-", "--as", ".."])
        .write_stdin("x")
        .assert()
        .failure()
        .code(1);
    let stderr = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: the server refused the request (INVALID_ARGUMENT): file name"),
        "{stderr}"
    );
}

/// With no server listening, the client says so in one line and exits 1, no panic.
#[test]
fn client_with_server_down_exits_one() {
    testkit::assert_reports_server_down(cargo_bin("file_client"), &["time"]);
}

/// A Python grpcio client generated from protos/ calls every method and gets the contract's answers.
#[test]
fn python_client_calls_every_method() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(
        cargo_bin("file_server"),
        &["--dir", dir.path().to_str().expect("utf-8")],
    )
    .expect("server starts");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/file_client.py");
    let target = format!("127.0.0.1:{}", server.port);
    testkit::run_python(&script, &[&target, dir.path().to_str().expect("utf-8")])
        .expect("python client passes");
}

// ---- Hostile and broken callers (issue 13) ----

/// A Python grpcio client that gzip-compresses its requests is served, not refused.
#[test]
fn python_gzip_requests_are_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ServerProcess::start(
        cargo_bin("file_server"),
        &["--dir", dir.path().to_str().expect("utf-8")],
    )
    .expect("server starts");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/file_gzip.py");
    let target = format!("127.0.0.1:{}", server.port);
    testkit::run_python(&script, &[&target, dir.path().to_str().expect("utf-8")])
        .expect("python gzip client passes");
}

/// A tonic client that sends gzip and asks for gzip answers gets its answers.
#[tokio::test]
async fn gzip_both_ways() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(dir.path(), 1024 * 1024).await;
    let mut client = client(&server)
        .await
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    let content = b"x".repeat(100_000);
    let reply = tokio::time::timeout(TIMEOUT, client.write_file(write_request("z.txt", &content)))
        .await
        .expect("in time")
        .expect("written");
    assert!(reply.into_inner().success);
    let list = tokio::time::timeout(TIMEOUT, client.get_files_list(pb::Empty {}))
        .await
        .expect("in time")
        .expect("listed");
    assert_eq!(list.into_inner().filenames, vec!["z.txt".to_owned()]);
    server.stop().await.expect("stops");
}

/// A WriteFile whose name is an existing folder is FAILED_PRECONDITION, not INTERNAL, and
/// leaves the folder as it was.
#[tokio::test]
async fn name_of_an_existing_folder_is_a_failed_precondition() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("taken")).expect("folder");
    let server = start(dir.path(), 1024).await;
    let mut client = client(&server).await;
    let status = tokio::time::timeout(TIMEOUT, client.write_file(write_request("taken", b"x")))
        .await
        .expect("in time")
        .expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("folder"), "{status:?}");
    assert!(dir.path().join("taken").is_dir());
    assert!(files_under(dir.path()).is_empty(), "debris left");
    server.stop().await.expect("stops");
}

/// A full disk answers RESOURCE_EXHAUSTED naming the cause, and leaves no partial file.
/// Needs a small tmpfs, which only root can mount; elsewhere the test says why it skipped.
#[tokio::test]
async fn full_disk_is_resource_exhausted() {
    let Some(dir) = testkit::Tmpfs::mount("64k") else {
        return;
    };
    let server = start(dir.path(), 1024 * 1024).await;
    let mut client = client(&server).await;
    let status = tokio::time::timeout(
        TIMEOUT,
        client.write_file(write_request("big.bin", &vec![7_u8; 512 * 1024])),
    )
    .await
    .expect("in time")
    .expect_err("refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("no space left"), "{status:?}");
    assert!(files_under(dir.path()).is_empty(), "debris left");
    server.stop().await.expect("stops");
}

/// Files a killed server left half-written are removed when it starts again.
#[test]
fn crash_debris_is_removed_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    for n in 0..3 {
        std::fs::write(dir.path().join(format!(".partial-file-crash{n}")), b"half")
            .expect("debris");
    }
    std::fs::write(dir.path().join("kept.txt"), b"stored").expect("stored file");
    let config = Config {
        upload_dir: dir.path().to_path_buf(),
        max_file_size: 1024,
    };
    file_service::open_storage(&config).expect("opens");
    assert_eq!(files_under(dir.path()), vec!["kept.txt".to_owned()]);
}

/// Against a server that accepts connections and never answers, the client gives up at
/// its deadline (`--timeout`) with one line naming it, and exits 1.
#[test]
fn client_gives_up_on_a_silent_server_at_its_deadline() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    // Accepts, holds every socket, never writes.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let started = std::time::Instant::now();
    let output = Command::new(cargo_bin("file_client"))
        .args(["--server", &addr.to_string(), "--timeout", "1", "time"])
        .output()
        .expect("client runs");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("deadline"), "{stderr}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

/// Servers write their log lines from a thread of their own (so a call never waits on
/// stderr); stopping one with SIGTERM still writes out every line queued: each call of a
/// quick burst has its `call finished` line in the log once the server has exited.
#[test]
fn every_call_line_is_in_the_log_after_a_graceful_stop() {
    const CALLS: usize = 300;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("server.log");
    let files = dir.path().join("files");
    let server = testkit::Launch::new(cargo_bin("file_server"))
        .args(["--addr", "127.0.0.1:0", "--dir"])
        .arg(&files)
        .env("RUST_LOG", "info")
        .stderr_to(&log)
        .discard_stdout()
        .start()
        .expect("server starts");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let channel = grpc_suite::cli::connect(&server.url())
            .await
            .expect("connect");
        let mut client = FileServiceClient::new(channel);
        for _ in 0..CALLS {
            client
                .say_hello(pb::HelloRequest {
                    name: "log".to_owned(),
                })
                .await
                .expect("SayHello");
        }
    });
    let status = server.stop(TIMEOUT).expect("the server stops");
    assert!(status.success(), "{status:?}");
    let written = std::fs::read_to_string(&log).expect("the log");
    let lines = written
        .lines()
        .filter(|line| line.contains("call finished") && line.contains("SayHello"))
        .count();
    assert_eq!(lines, CALLS, "{written}");
}
