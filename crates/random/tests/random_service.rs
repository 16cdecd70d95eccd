//! The random number service as its users meet it: the generated client against an
//! in-process server, the client library against it, the real binaries, and a Python
//! grpcio client.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers fail the test on the spot.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use assert_cmd::cargo::cargo_bin;
use grpc_suite::{
    random as pb,
    server::{DEFAULT_GRACE_PERIOD, GrpcServer},
};
use pb::random_number_service_client::RandomNumberServiceClient;
use random_service::{
    Config, RandomService, StreamMetrics,
    client::{Ending, print_stream},
};
use testkit::{InProcessServer, ServerProcess, TIMEOUT};
use tonic::{Code, Status, Streaming, transport::Channel};

/// A grace period short enough that a test can wait it out.
const SHORT_GRACE: Duration = Duration::from_millis(300);

/// An in-process server with `config`, and the handle on its producers' counters.
async fn start(config: Config) -> (InProcessServer, StreamMetrics) {
    let (server, service) = start_with_grace(config, DEFAULT_GRACE_PERIOD).await;
    (server, service.metrics())
}

/// An in-process server with `config` and `grace_period`, and a clone of its service, which
/// shares the producers' counters and task tracker.
async fn start_with_grace(
    config: Config,
    grace_period: Duration,
) -> (InProcessServer, RandomService) {
    let service = RandomService::new(config);
    let observed = service.clone();
    let server = InProcessServer::start(move |listener, shutdown| async move {
        let server = GrpcServer::new().grace_period(grace_period);
        random_service::serve_with(listener, server, service, shutdown).await
    })
    .await;
    (server, observed)
}

async fn client(server: &InProcessServer) -> RandomNumberServiceClient<Channel> {
    RandomNumberServiceClient::new(server.channel().await)
}

fn request(min: i32, max: i32, count: i32, delay: i32) -> pb::RandomNumberRequest {
    pb::RandomNumberRequest {
        min,
        max,
        count,
        delay,
    }
}

/// Opens a stream, failing the test if the server takes too long to answer.
async fn open(
    client: &mut RandomNumberServiceClient<Channel>,
    request: pb::RandomNumberRequest,
) -> Result<Streaming<pb::RandomNumberResponse>, Status> {
    tokio::time::timeout(TIMEOUT, client.get_random_numbers(request))
        .await
        .expect("the server answered in time")
        .map(tonic::Response::into_inner)
}

/// The next message of a stream, bounded in time.
async fn next(
    stream: &mut Streaming<pb::RandomNumberResponse>,
) -> Result<Option<pb::RandomNumberResponse>, Status> {
    tokio::time::timeout(TIMEOUT, stream.message())
        .await
        .expect("the next message arrived in time")
}

/// Every message of an accepted request, to the stream's end.
async fn collect(
    client: &mut RandomNumberServiceClient<Channel>,
    request: pb::RandomNumberRequest,
) -> Vec<pb::RandomNumberResponse> {
    let mut stream = open(client, request).await.expect("request accepted");
    let mut all = Vec::new();
    while let Some(response) = next(&mut stream).await.expect("stream ends cleanly") {
        all.push(response);
    }
    all
}

/// Both ends of a small range are drawn, and nothing outside it.
#[tokio::test]
async fn small_range_reaches_both_bounds() {
    let (server, _) = start(Config::default()).await;
    let mut client = client(&server).await;
    // Missing one end of 1..=3 in 300 draws has probability 2·(2/3)^300 ≈ 1e-53.
    let numbers: Vec<i32> = collect(&mut client, request(1, 3, 300, 0))
        .await
        .iter()
        .map(|response| response.number)
        .collect();
    assert_eq!(numbers.len(), 300);
    assert!(numbers.iter().all(|n| (1..=3).contains(n)), "{numbers:?}");
    for bound in [1, 3] {
        assert!(numbers.contains(&bound), "{bound} never drawn: {numbers:?}");
    }
    server.stop().await.expect("clean stop");
}

/// Sequence numbers run 1..=count and every timestamp is `%H:%M:%S%.3f`.
#[tokio::test]
async fn sequence_counts_from_one_with_contract_timestamps() {
    let (server, _) = start(Config::default()).await;
    let mut client = client(&server).await;
    let responses = collect(&mut client, request(-10, 10, 25, 1)).await;
    let sequences: Vec<i32> = responses.iter().map(|response| response.sequence).collect();
    assert_eq!(sequences, (1..=25).collect::<Vec<_>>());
    for response in &responses {
        chrono::NaiveTime::parse_from_str(&response.timestamp, "%H:%M:%S%.3f")
            .unwrap_or_else(|error| panic!("{:?}: {error}", response.timestamp));
        assert_eq!(response.timestamp.len(), 12, "{:?}", response.timestamp);
    }
}

/// count 0 is an accepted, empty stream that ends with OK.
#[tokio::test]
async fn count_zero_is_an_empty_stream() {
    let (server, metrics) = start(Config::default()).await;
    let mut client = client(&server).await;
    assert!(collect(&mut client, request(1, 10, 0, 0)).await.is_empty());
    assert_eq!(metrics.numbers_generated(), 0);
}

/// The whole i32 range and single-value ranges (at both extremes) work.
#[tokio::test]
async fn extreme_ranges_work() {
    let (server, _) = start(Config::default()).await;
    let mut client = client(&server).await;
    let numbers: Vec<i32> = collect(&mut client, request(i32::MIN, i32::MAX, 200, 0))
        .await
        .iter()
        .map(|response| response.number)
        .collect();
    assert_eq!(numbers.len(), 200);
    // All of one sign in 200 uniform draws has probability 2^-199.
    assert!(
        numbers.iter().any(|&n| n < 0) && numbers.iter().any(|&n| n >= 0),
        "{numbers:?}"
    );

    for single in [i32::MIN, -1, 0, 42, i32::MAX] {
        let responses = collect(&mut client, request(single, single, 5, 0)).await;
        assert_eq!(responses.len(), 5);
        assert!(
            responses.iter().all(|response| response.number == single),
            "{single}"
        );
    }
}

/// A large delay-0 stream runs to its end through the bounded buffer, numbered throughout.
#[tokio::test]
async fn large_fast_stream_completes() {
    let (server, metrics) = start(Config::default()).await;
    let mut client = client(&server).await;
    let mut stream = open(&mut client, request(0, 1, 100_000, 0))
        .await
        .expect("accepted");
    let mut expected = 1;
    while let Some(response) = next(&mut stream).await.expect("ok") {
        assert_eq!(response.sequence, expected);
        expected += 1;
    }
    assert_eq!(expected - 1, 100_000);
    assert_eq!(metrics.numbers_generated(), 100_000);
    tokio::time::timeout(TIMEOUT, metrics.wait_for_active_streams(0))
        .await
        .expect("the producer finished");
}

/// Each bad request is INVALID_ARGUMENT naming its field, before any number is drawn;
/// requests exactly at the caps are accepted.
#[tokio::test]
async fn bad_requests_are_invalid_argument_naming_the_field() {
    let config = Config {
        max_count: 20,
        max_delay_ms: 5,
    };
    let (server, metrics) = start(config).await;
    let mut client = client(&server).await;
    for (bad, message) in [
        (
            request(5, 4, 1, 0),
            "min (5) must not be greater than max (4)",
        ),
        (
            request(i32::MAX, i32::MIN, 1, 0),
            "min (2147483647) must not be greater than max (-2147483648)",
        ),
        (request(1, 2, -1, 0), "count must not be negative (got -1)"),
        (
            request(1, 2, i32::MIN, 0),
            "count must not be negative (got -2147483648)",
        ),
        (request(1, 2, 1, -1), "delay must not be negative (got -1)"),
        (
            request(1, 2, 21, 0),
            "count 21 is above this server's limit of 20 numbers",
        ),
        (
            request(1, 2, i32::MAX, 0),
            "count 2147483647 is above this server's limit of 20 numbers",
        ),
        (
            request(1, 2, 1, 6),
            "delay 6 is above this server's limit of 5 ms",
        ),
    ] {
        let status = open(&mut client, bad).await.expect_err(message);
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}: {status:?}");
        assert_eq!(status.message(), message, "{bad:?}");
    }
    assert_eq!(
        metrics.numbers_generated(),
        0,
        "nothing drawn for refused requests"
    );
    assert_eq!(collect(&mut client, request(1, 2, 20, 5)).await.len(), 20);
}

/// Dropping a fast (delay 0) stream stops its producer at once: the server's active-stream
/// gauge returns to zero and far fewer numbers than asked were ever drawn.
#[tokio::test]
async fn cancelling_a_fast_stream_stops_generation() {
    let (server, metrics) = start(Config::default()).await;
    let mut client = client(&server).await;
    let mut stream = open(&mut client, request(0, 100, 1_000_000, 0))
        .await
        .expect("accepted");
    for expected in 1..=5 {
        let response = next(&mut stream).await.expect("ok").expect("a number");
        assert_eq!(response.sequence, expected);
    }
    assert_eq!(metrics.active_streams(), 1);
    drop(stream);
    tokio::time::timeout(TIMEOUT, metrics.wait_for_active_streams(0))
        .await
        .expect("the producer stopped after the client cancelled");
    let generated = metrics.numbers_generated();
    assert!(
        generated < 1_000_000,
        "the producer ran on to {generated} after the client left"
    );
}

/// Dropping a slow stream stops its producer during the delay, not after it.
#[tokio::test]
async fn cancelling_a_slow_stream_stops_during_the_delay() {
    let (server, metrics) = start(Config::default()).await;
    let mut client = client(&server).await;
    // A minute between numbers: the test's timeout is far shorter, so only a producer that
    // notices the client leaving mid-delay can pass.
    let mut stream = open(&mut client, request(0, 9, 10, 60_000))
        .await
        .expect("accepted");
    next(&mut stream)
        .await
        .expect("ok")
        .expect("the first number comes at once");
    drop(stream);
    tokio::time::timeout(TIMEOUT, metrics.wait_for_active_streams(0))
        .await
        .expect("the producer stopped mid-delay");
    assert_eq!(metrics.numbers_generated(), 1);
}

/// Server shutdown ends an open slow stream with UNAVAILABLE saying how far it got, and
/// the server stops well before the stream would have finished.
#[tokio::test]
async fn shutdown_ends_open_streams_with_unavailable() {
    let (server, metrics) = start(Config::default()).await;
    let mut client = client(&server).await;
    let mut stream = open(&mut client, request(0, 9, 10, 60_000))
        .await
        .expect("accepted");
    next(&mut stream).await.expect("ok").expect("first number");
    server.shutdown_token().cancel();
    let status = next(&mut stream).await.expect_err("cut short");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status.message(),
        "the server is shutting down; the stream ended after 1 of 10 numbers"
    );
    server.stop().await.expect("clean stop");
    assert_eq!(metrics.active_streams(), 0);
}

/// Waits until no number has been drawn for a while: a producer of an endless delay-0
/// stream is then blocked on a client that stopped reading. Two quiet rounds in a row, so
/// one pause of the whole process is not taken for a stall.
async fn wait_until_stalled(metrics: &StreamMetrics) {
    tokio::time::timeout(TIMEOUT, async {
        let mut last = metrics.numbers_generated();
        let mut quiet_rounds = 0;
        while quiet_rounds < 2 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            let now = metrics.numbers_generated();
            quiet_rounds = if now == last { quiet_rounds + 1 } else { 0 };
            last = now;
        }
    })
    .await
    .expect("the producer stalled behind the unread stream");
}

/// A client that stops reading a fast stream blocks its producer on the full connection,
/// past shutdown; once the grace period is over `serve` closes the connection and returns
/// with no producer left, and the client's stream ends in an error after what it buffered.
#[tokio::test]
async fn unread_stream_is_closed_after_the_grace_period() {
    let (server, service) = start_with_grace(Config::default(), SHORT_GRACE).await;
    let metrics = service.metrics();
    let mut client = client(&server).await;
    let mut stream = open(&mut client, request(0, 100, 1_000_000, 0))
        .await
        .expect("accepted");
    next(&mut stream).await.expect("ok").expect("a number");
    wait_until_stalled(&metrics).await;
    assert_eq!(service.running_tasks(), 1, "the producer is still there");

    let stopped_at = tokio::time::Instant::now();
    server.stop().await.expect("clean stop");
    // Checked at once: `serve` returning means nothing of the server runs any more.
    assert_eq!(service.running_tasks(), 0, "a producer outlived serve");
    assert_eq!(metrics.active_streams(), 0);
    assert!(
        stopped_at.elapsed() >= SHORT_GRACE,
        "serve returned after {:?}, before the grace period was over",
        stopped_at.elapsed()
    );

    let ending = tokio::time::timeout(TIMEOUT, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(status) => return Err(status),
            }
        }
    })
    .await
    .expect("the client's stream ended in time");
    let status = ending.expect_err("a cut-off stream does not end as complete");
    // Not the producer's orderly UNAVAILABLE, which could never get past the unread
    // backlog: the connection itself was closed.
    assert!(
        !status.message().starts_with("the server is shutting down"),
        "{status:?}"
    );
}

/// The client library prints the old table for a complete stream and reports a refusal
/// with the server's reason.
#[tokio::test]
async fn client_library_prints_the_table() {
    let (server, _) = start(Config::default()).await;
    let mut out = Vec::new();
    let summary = tokio::time::timeout(
        TIMEOUT,
        print_stream(
            server.channel().await,
            request(1, 9, 3, 0),
            &mut out,
            std::future::pending(),
        ),
    )
    .await
    .expect("in time")
    .expect("printed");
    assert_eq!(summary.received, 3);
    assert_eq!(summary.ending, Ending::Complete);
    let printed = String::from_utf8(out).expect("utf-8");
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(
        lines[..2],
        ["Sequence | Number | Timestamp", &"-".repeat(35)]
    );
    assert_eq!(lines.len(), 5, "{printed}");
    let bars = |line: &str| -> Vec<usize> { line.match_indices(" | ").map(|(at, _)| at).collect() };
    for (row, sequence) in lines[2..].iter().zip(1..) {
        assert!(row.starts_with(&format!("{sequence:^8} | ")), "{row:?}");
        assert_eq!(
            bars(row),
            bars(lines[0]),
            "{row:?} lines up with the header"
        );
        assert_eq!(row.len(), "Sequence | Number | ".len() + 12, "{row:?}");
    }

    let error = tokio::time::timeout(
        TIMEOUT,
        print_stream(
            server.channel().await,
            request(1, 9, -1, 0),
            &mut Vec::new(),
            std::future::pending(),
        ),
    )
    .await
    .expect("in time")
    .expect_err("refused");
    assert_eq!(
        error.to_string(),
        "the server refused the request (INVALID_ARGUMENT): count must not be negative (got -1)"
    );
}

/// The real client binary.
fn random_client(server_url: &str) -> assert_cmd::Command {
    let mut command = assert_cmd::Command::new(cargo_bin("random_client"));
    command.args(["--server", server_url]).timeout(TIMEOUT);
    command
}

/// The table's data rows in the client's stdout, as (sequence, number) pairs.
fn rows(stdout: &str) -> Vec<(i32, i32)> {
    stdout
        .lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim);
            let sequence = cells.next()?.parse().ok()?;
            let number = cells.next()?.parse().ok()?;
            Some((sequence, number))
        })
        .collect()
}

/// The server binary prints its startup line; the client with every flag prints only the
/// table; SIGTERM stops the server with exit 0.
#[test]
fn binaries_with_flags_and_graceful_stop() {
    let mut server = ServerProcess::start(cargo_bin("random_server"), &[]).expect("server starts");
    assert!(server.stdout().contains(&format!(
        "Random Number Server started on port {}",
        server.port
    )));
    let output = random_client(&server.url())
        .args(["--min", "-5", "--max", "5", "--count", "4", "--delay", "1"])
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&output.get_output().stdout).into_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[..2],
        ["Sequence | Number | Timestamp", &"-".repeat(35)],
        "{stdout}"
    );
    let rows = rows(&stdout);
    assert_eq!(lines.len(), 6, "{stdout}");
    assert_eq!(
        rows.iter().map(|row| row.0).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(rows.iter().all(|row| (-5..=5).contains(&row.1)), "{stdout}");

    server.signal("TERM").expect("SIGTERM");
    let status = server.wait(TIMEOUT).expect("exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
}

/// With no flags the client prints the old banner, asks the old prompts from piped stdin,
/// re-asks a non-number with a reason, and prints `Receiving random numbers:` and the table; end of input before the last answer exits 0 quietly.
#[test]
fn client_prompts_from_piped_stdin() {
    let server = ServerProcess::start(cargo_bin("random_server"), &[]).expect("server starts");
    let output = random_client(&server.url())
        .write_stdin("one\n1\n6\n3\n0\n")
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&output.get_output().stdout).into_owned();
    assert!(
        stdout.starts_with(
            "Random Number Streaming Client\n\
             -----------------------------\n\
             Enter minimum value: \"one\" is not a whole number; try again.\n\
             Enter minimum value: Enter maximum value: Enter how many numbers to generate: \
             Enter delay between numbers (milliseconds): \n\
             Receiving random numbers:\n\
             Sequence | Number | Timestamp\n"
        ),
        "{stdout}"
    );
    let rows = rows(&stdout);
    assert_eq!(
        rows.iter().map(|row| row.0).collect::<Vec<_>>(),
        [1, 2, 3],
        "{stdout}"
    );
    assert!(rows.iter().all(|row| (1..=6).contains(&row.1)), "{stdout}");

    let ended = random_client(&server.url())
        .args(["--min", "1"])
        .write_stdin("6\n")
        .assert()
        .success()
        .stderr("");
    let stdout = String::from_utf8_lossy(&ended.get_output().stdout).into_owned();
    assert_eq!(
        stdout,
        "Random Number Streaming Client\n-----------------------------\n\
         Enter maximum value: Enter how many numbers to generate: \n"
    );
}

/// A refused request prints the server's reason in one stderr line and exits 1; so does a
/// server that is not there (before any question is asked) and flags that contradict.
#[test]
fn client_refusal_and_server_down_exit_one() {
    let server = ServerProcess::start(cargo_bin("random_server"), &["--max-count", "10"])
        .expect("server starts");
    let refused = random_client(&server.url())
        .args(["--min", "1", "--max", "2", "--count", "11", "--delay", "0"])
        .assert()
        .failure()
        .code(1)
        .stdout("");
    let stderr = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
    assert_eq!(
        stderr,
        "error: the server refused the request (INVALID_ARGUMENT): \
         count 11 is above this server's limit of 10 numbers\n"
    );

    // A port nothing listens on: a server we started and stopped ourselves.
    let url = server.url();
    drop(server);
    let down = random_client(&url)
        .args(["--min", "1", "--max", "2", "--count", "1", "--delay", "0"])
        .assert()
        .failure()
        .code(1);
    let stderr = String::from_utf8_lossy(&down.get_output().stderr).into_owned();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("error: cannot reach the server at {url}")),
        "{stderr}"
    );

    // With nothing given, the server is reached before the first question.
    let down = random_client(&url)
        .write_stdin("1\n2\n3\n0\n")
        .assert()
        .failure()
        .code(1)
        .stdout("");
    let stderr = String::from_utf8_lossy(&down.get_output().stderr).into_owned();
    assert!(
        stderr.starts_with(&format!("error: cannot reach the server at {url}")),
        "{stderr}"
    );

    // Contradicting flags are refused before anything else.
    let contradicting = random_client(&url)
        .args(["--min", "5", "--max", "1"])
        .assert()
        .failure()
        .code(1)
        .stdout("");
    let stderr = String::from_utf8_lossy(&contradicting.get_output().stderr).into_owned();
    assert_eq!(stderr, "error: --min 5 is greater than --max 1\n");
}

/// Ctrl+C (SIGINT) stops the client's stream cleanly: exit 0 after the rows it got, and the
/// server's producer for that stream stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ctrl_c_stops_the_stream() {
    let (server, metrics) = start(Config::default()).await;
    let mut child = Command::new(cargo_bin("random_client"))
        .args(["--server", &server.url()])
        .args([
            "--min", "1", "--max", "9", "--count", "1000", "--delay", "50",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("client starts");
    let stdout = child.stdout.take().expect("stdout pipe");
    let (line_tx, line_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    // The first row means the stream is open and the client's Ctrl+C handler is in place.
    let first_row = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        loop {
            let line = line_rx.recv_timeout(TIMEOUT).expect("a row in time");
            seen.push(line.clone());
            if line.trim_start().starts_with("1 ") {
                return seen;
            }
        }
    })
    .await
    .expect("reader");
    assert_eq!(
        first_row[0], "Sequence | Number | Timestamp",
        "{first_row:?}"
    );

    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let output = tokio::task::spawn_blocking(move || {
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = done_tx.send(child.wait_with_output());
        });
        done_rx
            .recv_timeout(TIMEOUT)
            .expect("the client exited in time")
    })
    .await
    .expect("waiter")
    .expect("client output");
    assert!(output.status.success(), "exit status {}", output.status);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("Client terminated by user ("),
        "{stderr}"
    );

    tokio::time::timeout(TIMEOUT, metrics.wait_for_active_streams(0))
        .await
        .expect("the server's producer stopped");
    assert!(metrics.numbers_generated() < 1000);
}

/// A Python grpcio client generated from protos/ reads streams, sees a refusal's code,
/// cancels a stream, and checks health.
#[test]
fn python_client_reads_a_stream() {
    let server = ServerProcess::start(cargo_bin("random_server"), &[]).expect("server starts");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/random_client.py");
    testkit::run_python(&script, &[&format!("127.0.0.1:{}", server.port)])
        .expect("python client passes");
}
