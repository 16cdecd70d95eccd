//! The streaming service as its users meet it: the generated client against an in-process
//! server, the client library with scripted input, the real binaries with piped stdin, and
//! a Python grpcio client as the old system's.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers fail the test on the spot.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    num::NonZeroUsize,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use assert_cmd::cargo::cargo_bin;
use bytes::Bytes;
use grpc_suite::{
    server::{DEFAULT_GRACE_PERIOD, GrpcServer},
    streaming as pb,
};
use pb::streaming_service_client::StreamingServiceClient;
use sha2::{Digest as _, Sha256};
use streaming_service::{
    Config, StreamingService,
    activity::{Activity, Gauge},
    client::{FlowOptions, Input, Interrupts, Session},
};
use testkit::{InProcessServer, ServerProcess, TIMEOUT, files_under};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming, transport::Channel};

/// A grace period short enough that a test can wait it out.
const SHORT_GRACE: Duration = Duration::from_millis(300);

/// An in-process server storing into its own temporary folder.
struct Harness {
    server: InProcessServer,
    activity: Activity,
    /// A clone of the served service, sharing its task tracker.
    service: StreamingService,
    dir: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_with_grace(DEFAULT_GRACE_PERIOD, adjust).await
    }

    async fn start_with_grace(grace_period: Duration, adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config {
            upload_dir: dir.path().join("streamed"),
            ..Config::default()
        };
        adjust(&mut config);
        let storage = streaming_service::open_storage(&config).expect("upload folder");
        let service = StreamingService::new(storage, &config);
        let activity = service.activity();
        let observed = service.clone();
        let server = InProcessServer::start(move |listener, shutdown| async move {
            let server = GrpcServer::new().grace_period(grace_period);
            streaming_service::serve_with(listener, server, service, shutdown).await
        })
        .await;
        Self {
            server,
            activity,
            service: observed,
            dir,
        }
    }

    fn upload_dir(&self) -> PathBuf {
        self.dir.path().join("streamed")
    }

    async fn client(&self) -> StreamingServiceClient<Channel> {
        StreamingServiceClient::new(self.server.channel().await)
            .max_encoding_message_size(usize::MAX)
    }
}

/// Waits (bounded) until `gauge` reads `value`.
async fn settle(gauge: &Gauge, value: usize) {
    tokio::time::timeout(TIMEOUT, gauge.wait_until(|count| *count == value))
        .await
        .unwrap_or_else(|_| panic!("gauge stayed at {} instead of {value}", gauge.get()));
}

/// Opens a time stream and waits for its first update, so the server's producer is running.
async fn first_time(
    client: &mut StreamingServiceClient<tonic::transport::Channel>,
) -> tonic::Streaming<pb::TimeResponse> {
    let mut times = client
        .stream_server_time(pb::Empty {})
        .await
        .expect("stream")
        .into_inner();
    tokio::time::timeout(TIMEOUT, times.message())
        .await
        .expect("in time")
        .expect("ok");
    times
}

fn chunk(filename: &str, data: &[u8], is_last_chunk: bool) -> pb::FileChunk {
    pb::FileChunk {
        filename: filename.to_owned(),
        chunk_data: Bytes::copy_from_slice(data),
        is_last_chunk,
        total_size: None,
        sha256: None,
        blake3: None,
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

async fn upload(
    client: &mut StreamingServiceClient<Channel>,
    chunks: Vec<pb::FileChunk>,
) -> Result<pb::FileResponse, tonic::Status> {
    tokio::time::timeout(
        TIMEOUT,
        client.stream_upload_file(tokio_stream::iter(chunks)),
    )
    .await
    .expect("upload answered in time")
    .map(tonic::Response::into_inner)
}

/// The time stream sends contract-format times, the first at once, then one a second.
#[tokio::test]
async fn time_stream_follows_the_contract() {
    let harness = Harness::start().await;
    let mut client = harness.client().await;
    let mut times = client
        .stream_server_time(pb::Empty {})
        .await
        .expect("stream")
        .into_inner();
    let mut stamps = Vec::new();
    for _ in 0..3 {
        let item = tokio::time::timeout(TIMEOUT, times.message())
            .await
            .expect("in time")
            .expect("ok")
            .expect("an item");
        let parsed = chrono::NaiveDateTime::parse_from_str(&item.timestamp, "%Y-%m-%d %H:%M:%S")
            .expect("contract format");
        stamps.push(parsed);
    }
    // Three items span two periods, so the clock must have moved on by at least a second.
    assert!(
        stamps[0] <= stamps[1] && stamps[1] <= stamps[2],
        "{stamps:?}"
    );
    assert!(
        stamps[2] - stamps[0] >= chrono::TimeDelta::seconds(1),
        "{stamps:?}"
    );
}

/// When the client cancels its time stream, or its connection goes, the server's producer
/// stops; on shutdown the stream ends cleanly.
#[tokio::test]
async fn time_stream_stops_with_its_client_and_at_shutdown() {
    let harness = Harness::start().await;
    let gauge = harness.activity.time_streams.clone();

    // Cancelled call: the response stream is dropped.
    let mut client = harness.client().await;
    let times = first_time(&mut client).await;
    assert_eq!(gauge.get(), 1);
    drop(times);
    settle(&gauge, 0).await;

    // A dropped connection: every handle on the channel goes.
    let mut client = harness.client().await;
    let times = first_time(&mut client).await;
    settle(&gauge, 1).await;
    drop((client, times));
    settle(&gauge, 0).await;

    // Shutdown ends the stream with OK after what was sent.
    let mut client = harness.client().await;
    let mut times = first_time(&mut client).await;
    harness.server.stop().await.expect("clean stop");
    loop {
        match tokio::time::timeout(TIMEOUT, times.message())
            .await
            .expect("stream ends in time")
        {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(status) => panic!("the stream should end cleanly: {status:?}"),
        }
    }
    assert_eq!(gauge.get(), 0);
}

/// Writes `size` bytes of deterministic pseudo-random data to `path`; returns its SHA-256
/// and BLAKE3 (lowercase hex).
fn generate_file(path: &Path, size: usize) -> (String, String) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut hasher = Sha256::new();
    let mut blake3 = blake3::Hasher::new();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut block = vec![0u8; 1024 * 1024];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let take = left.min(block.len());
        file.write_all(&block[..take]).expect("write");
        hasher.update(&block[..take]);
        blake3.update(&block[..take]);
        left -= take;
    }
    file.flush().expect("flush");
    (
        hex::encode(hasher.finalize()),
        blake3.finalize().to_hex().to_string(),
    )
}

/// True if two files hold the same bytes, compared a block at a time.
fn same_content(left: &Path, right: &Path) -> bool {
    let mut left = BufReader::new(std::fs::File::open(left).expect("open"));
    let mut right = BufReader::new(std::fs::File::open(right).expect("open"));
    let (mut a, mut b) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let read_a = left.read(&mut a).expect("read");
        if read_a == 0 {
            return right.read(&mut b).expect("read") == 0;
        }
        if right.read_exact(&mut b[..read_a]).is_err() || a[..read_a] != b[..read_a] {
            return false;
        }
    }
}

/// A 100 MiB file uploaded with the client library lands byte for byte, with the answer's
/// size and BLAKE3 matching the source (the client declares BLAKE3, so the server spends
/// nothing on SHA-256 and reports none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_is_stored_exactly() {
    let harness = Harness::start().await;
    let size = 100 * 1024 * 1024 + 12_345;
    let source = harness.dir.path().join("big.bin");
    let (_, expected_blake3) = generate_file(&source, size);

    let mut session = Session::new(
        harness.server.channel().await,
        Input::scripted(Vec::<String>::new()),
        Interrupts::none(),
        Vec::new(),
    );
    let answer = tokio::time::timeout(Duration::from_secs(300), session.upload(&source, None))
        .await
        .expect("upload in time")
        .expect("upload");
    assert!(answer.success);
    assert_eq!(answer.message, "File big.bin uploaded successfully");
    assert_eq!(
        answer.file_path,
        harness.upload_dir().join("big.bin").display().to_string()
    );
    assert_eq!(answer.bytes_written, size as u64);
    assert_eq!(answer.blake3, expected_blake3);
    assert_eq!(answer.sha256, "", "SHA-256 computed though nobody asked");
    let stored = harness.upload_dir().join("big.bin");
    assert!(same_content(&source, &stored), "stored bytes differ");
    let printed = String::from_utf8(session.into_output()).expect("utf-8");
    assert!(
        printed.contains(&format!(
            "Checksum OK: {size} bytes, BLAKE3 {expected_blake3} matches the local file"
        )),
        "{printed}"
    );
    settle(&harness.activity.uploads, 0).await;
    assert_eq!(files_under(&harness.upload_dir()), ["big.bin"]);
}

/// A client that cancels mid-upload, or ends its stream without a last chunk, leaves no
/// file at all: neither the final name nor a temporary file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_uploads_leave_nothing() {
    let harness = Harness::start().await;
    let block = vec![7u8; 1024 * 1024];

    // Cancelled: the call is dropped while chunks are still coming.
    let mut client = harness.client().await;
    let (chunks, receiver) = mpsc::channel(4);
    let call = tokio::spawn(async move {
        client
            .stream_upload_file(ReceiverStream::new(receiver))
            .await
    });
    for _ in 0..3 {
        chunks
            .send(chunk("cancelled.bin", &block, false))
            .await
            .expect("send");
    }
    settle(&harness.activity.uploads, 1).await;
    call.abort();
    settle(&harness.activity.uploads, 0).await;
    assert!(
        files_under(&harness.upload_dir()).is_empty(),
        "{:?}",
        files_under(&harness.upload_dir())
    );

    // Ended without is_last_chunk: refused, nothing stored.
    let mut client = harness.client().await;
    let status = upload(
        &mut client,
        vec![
            chunk("unfinished.bin", &block, false),
            chunk("unfinished.bin", &block, false),
        ],
    )
    .await
    .expect_err("incomplete");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("without a chunk with is_last_chunk=true"),
        "{}",
        status.message()
    );
    // Already true when the refusal arrives, not only once the server has settled.
    assert!(
        files_under(&harness.upload_dir()).is_empty(),
        "{:?}",
        files_under(&harness.upload_dir())
    );
    settle(&harness.activity.uploads, 0).await;
}

/// Hostile names are reduced to their base name inside the folder; names with nothing
/// usable left are INVALID_ARGUMENT and store nothing.
#[tokio::test]
async fn traversal_names_stay_inside_the_folder() {
    let harness = Harness::start().await;
    let mut client = harness.client().await;
    for (raw, stored) in [
        ("../../escape1", "escape1"),
        ("/etc/escape2", "escape2"),
        (r"a\..\escape3", "escape3"),
    ] {
        let answer = upload(&mut client, vec![chunk(raw, b"x", true)])
            .await
            .expect(raw);
        assert_eq!(
            answer.message,
            format!("File {stored} uploaded successfully")
        );
    }
    for raw in ["", ".", "..", "dir/", "a\0b", ".partial-x"] {
        let status = upload(&mut client, vec![chunk(raw, b"x", true)])
            .await
            .expect_err(raw);
        assert_eq!(status.code(), Code::InvalidArgument, "{raw:?}: {status:?}");
        assert!(
            status.message().contains("file name"),
            "{}",
            status.message()
        );
    }
    settle(&harness.activity.uploads, 0).await;
    assert_eq!(
        files_under(harness.dir.path()),
        ["streamed/escape1", "streamed/escape2", "streamed/escape3"]
    );
}

/// A later chunk naming another file is INVALID_ARGUMENT; repeating the name or leaving it
/// empty is fine.
#[tokio::test]
async fn later_chunk_naming_another_file_is_refused() {
    let harness = Harness::start().await;
    let mut client = harness.client().await;
    let status = upload(
        &mut client,
        vec![
            chunk("one.txt", b"a", false),
            chunk("one.txt", b"b", false),
            chunk("two.txt", b"c", true),
        ],
    )
    .await
    .expect_err("renamed");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "chunk 3 names file \"two.txt\", but this upload is for \"one.txt\""
    );
    let answer = upload(
        &mut client,
        vec![
            chunk("one.txt", b"a", false),
            chunk("", b"b", false),
            chunk("one.txt", b"c", true),
        ],
    )
    .await
    .expect("same name");
    assert_eq!(answer.bytes_written, 3);
    settle(&harness.activity.uploads, 0).await;
    assert_eq!(files_under(&harness.upload_dir()), ["one.txt"]);
}

/// Declared size or digest that the content does not match is INVALID_ARGUMENT; sizes
/// over the limit, declared or sent, are RESOURCE_EXHAUSTED; none leaves a file.
#[tokio::test]
async fn declarations_and_limits_are_enforced() {
    let harness = Harness::start_with(|config| config.max_upload_size = 1000).await;
    let mut client = harness.client().await;
    let declared = |size: u64, sha256: String, data: &[u8]| {
        let mut first = chunk("d.bin", data, false);
        first.total_size = Some(size);
        first.sha256 = Some(sha256);
        vec![first, chunk("d.bin", b"", true)]
    };
    let content = b"declared content";
    let good = sha256_hex(content);
    let answer = upload(&mut client, declared(16, good.clone(), content))
        .await
        .expect("matching declarations");
    assert_eq!(
        (answer.bytes_written, answer.sha256.as_str()),
        (16, good.as_str())
    );
    std::fs::remove_file(harness.upload_dir().join("d.bin")).expect("cleanup");

    for (chunks, code, message_start) in [
        (
            declared(17, good.clone(), content),
            Code::InvalidArgument,
            "declared total_size is 17 bytes but 16 bytes were sent",
        ),
        (
            declared(16, sha256_hex(b"something else"), content),
            Code::InvalidArgument,
            "declared sha256 is",
        ),
        (
            declared(5000, good.clone(), content),
            Code::ResourceExhausted,
            "declared total_size is 5000 bytes; the limit is 1000 bytes",
        ),
        (
            vec![
                chunk("d.bin", &[1; 600], false),
                chunk("d.bin", &[1; 600], true),
            ],
            Code::ResourceExhausted,
            "the upload exceeds the limit of 1000 bytes",
        ),
    ] {
        let status = upload(&mut client, chunks).await.expect_err("refused");
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().starts_with(message_start),
            "{}",
            status.message()
        );
    }
    settle(&harness.activity.uploads, 0).await;
    assert!(files_under(&harness.upload_dir()).is_empty());
}

/// Chunks past tonic's 4 MiB default are accepted; one past the server's decode limit is
/// RESOURCE_EXHAUSTED, and nothing of it is stored.
#[tokio::test]
async fn large_chunks_are_accepted_up_to_the_decode_limit() {
    let harness = Harness::start().await;
    let mut client = harness.client().await;
    let five_mib = vec![5u8; 5 * 1024 * 1024];
    let answer = upload(&mut client, vec![chunk("five.bin", &five_mib, true)])
        .await
        .expect("5 MiB chunk");
    assert_eq!(answer.bytes_written, five_mib.len() as u64);

    let too_big = vec![9u8; streaming_service::MAX_MESSAGE_SIZE + 1];
    let status = upload(&mut client, vec![chunk("huge.bin", &too_big, true)])
        .await
        .expect_err("over the decode limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    settle(&harness.activity.uploads, 0).await;
    assert_eq!(files_under(&harness.upload_dir()), ["five.bin"]);
}

/// Concurrent uploads of one name never interleave: the file is one complete upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_same_name_uploads_never_interleave() {
    let harness = Harness::start().await;
    let mut uploads = Vec::new();
    for writer in 0..6u8 {
        let mut client = harness.client().await;
        uploads.push(tokio::spawn(async move {
            let block = vec![writer; 256 * 1024];
            let mut chunks: Vec<_> = (0..8).map(|_| chunk("shared.bin", &block, false)).collect();
            chunks.push(chunk("shared.bin", b"", true));
            upload(&mut client, chunks).await
        }));
    }
    for task in uploads {
        let answer = task.await.expect("task").expect("upload");
        assert_eq!(answer.bytes_written, 2 * 1024 * 1024);
    }
    let stored = std::fs::read(harness.upload_dir().join("shared.bin")).expect("stored");
    assert_eq!(stored.len(), 2 * 1024 * 1024);
    assert!(
        stored.iter().all(|&byte| byte == stored[0]),
        "content from two uploads interleaved"
    );
    settle(&harness.activity.uploads, 0).await;
    assert_eq!(files_under(&harness.upload_dir()), ["shared.bin"]);
}

/// One chat member as a test drives it.
struct Member {
    outgoing: Option<mpsc::Sender<pb::ChatMessage>>,
    incoming: Streaming<pb::ChatMessage>,
}

impl Member {
    async fn join(channel: Channel) -> Self {
        let (outgoing, receiver) = mpsc::channel(64);
        let mut client = StreamingServiceClient::new(channel).max_decoding_message_size(usize::MAX);
        let incoming =
            tokio::time::timeout(TIMEOUT, client.chat_stream(ReceiverStream::new(receiver)))
                .await
                .expect("joined in time")
                .expect("joined")
                .into_inner();
        Self {
            outgoing: Some(outgoing),
            incoming,
        }
    }

    async fn say(&self, text: &str) {
        let message = pb::ChatMessage {
            sender: "me, not Client(N)".into(),
            message: text.into(),
            timestamp: "01:02:03".into(),
            history: false,
        };
        self.outgoing
            .as_ref()
            .expect("still talking")
            .send(message)
            .await
            .expect("send");
    }

    /// The next message as `sender: text`, skipping the `You are Client(N)` line each
    /// newcomer gets (tests of it use [`Member::next_message`]).
    async fn next(&mut self) -> String {
        loop {
            let message = self.next_message().await;
            if !(message.sender == "System" && message.message.starts_with("You are ")) {
                return format!("{}: {}", message.sender, message.message);
            }
        }
    }

    /// The next message, whatever it is.
    async fn next_message(&mut self) -> pb::ChatMessage {
        tokio::time::timeout(TIMEOUT, self.incoming.message())
            .await
            .expect("a message in time")
            .expect("stream ok")
            .expect("stream still open")
    }

    /// How the stream ends, after skipping whatever messages come first.
    async fn end(&mut self) -> Result<(), tonic::Status> {
        loop {
            match tokio::time::timeout(TIMEOUT, self.incoming.message())
                .await
                .expect("the stream ends in time")
            {
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(()),
                Err(status) => return Err(status),
            }
        }
    }
}

/// Three clients: numbered in order of joining, joins reach everyone (the newcomer too),
/// every message reaches everyone with the sender overwritten and the timestamp kept, in
/// one order; leaving by quitting or by cancelling is announced to the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_with_three_clients() {
    let harness = Harness::start().await;
    let mut one = Member::join(harness.server.channel().await).await;
    assert_eq!(one.next().await, "System: Client(1) has joined the chat");
    let mut two = Member::join(harness.server.channel().await).await;
    assert_eq!(one.next().await, "System: Client(2) has joined the chat");
    assert_eq!(two.next().await, "System: Client(2) has joined the chat");
    let mut three = Member::join(harness.server.channel().await).await;
    for member in [&mut one, &mut two, &mut three] {
        assert_eq!(member.next().await, "System: Client(3) has joined the chat");
    }

    // Everyone talks at once; everyone sees all fifteen messages in the same order.
    let per_member = 5;
    for round in 0..per_member {
        for (name, member) in [("one", &one), ("two", &two), ("three", &three)] {
            member.say(&format!("{name} {round}")).await;
        }
    }
    let mut seen = Vec::new();
    for member in [&mut one, &mut two, &mut three] {
        let mut lines = Vec::new();
        for _ in 0..3 * per_member {
            lines.push(member.next().await);
        }
        seen.push(lines);
    }
    assert_eq!(seen[0], seen[1], "one order for everyone");
    assert_eq!(seen[0], seen[2], "one order for everyone");
    for round in 0..per_member {
        for (number, name) in [(1, "one"), (2, "two"), (3, "three")] {
            assert!(
                seen[0].contains(&format!("Client({number}): {name} {round}")),
                "{:?}",
                seen[0]
            );
        }
    }

    // The client's timestamp is kept.
    one.say("stamped").await;
    let stamped = tokio::time::timeout(TIMEOUT, two.incoming.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("message");
    assert_eq!(
        (stamped.sender.as_str(), stamped.timestamp.as_str()),
        ("Client(1)", "01:02:03")
    );
    assert_eq!(one.next().await, "Client(1): stamped");
    assert_eq!(three.next().await, "Client(1): stamped");

    // Client(3) quits: its stream ends cleanly; the others are told.
    three.outgoing = None;
    three.end().await.expect("a clean end after quitting");
    assert_eq!(one.next().await, "System: Client(3) has left the chat");
    assert_eq!(two.next().await, "System: Client(3) has left the chat");

    // Client(2) cancels its call.
    drop(two);
    assert_eq!(one.next().await, "System: Client(2) has left the chat");
    settle(&harness.activity.chat_members, 1).await;

    // Numbers are never reused.
    let mut four = Member::join(harness.server.channel().await).await;
    assert_eq!(four.next().await, "System: Client(4) has joined the chat");
    assert_eq!(one.next().await, "System: Client(4) has joined the chat");
}

/// A client that never reads does not hold up the others; once its queue is full it is
/// cut off with RESOURCE_EXHAUSTED, and the others see it leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_chat_client_is_cut_off_without_delaying_others() {
    let harness = Harness::start_with(|config| {
        config.chat_queue_capacity = NonZeroUsize::new(8).expect("non-zero");
    })
    .await;
    let mut talker = Member::join(harness.server.channel().await).await;
    assert_eq!(talker.next().await, "System: Client(1) has joined the chat");
    // Its own connection: a stuck stream fills its connection's flow-control window.
    let mut stuck = Member::join(harness.server.channel().await).await;
    assert_eq!(talker.next().await, "System: Client(2) has joined the chat");

    // Enough to fill the transport's buffers (a few MiB) and then the queue of 8.
    let text = "x".repeat(32 * 1024);
    let mut saw_leave = false;
    for _ in 0..400 {
        talker.say(&text).await;
        // Each message comes straight back to the talker: nobody waits for the stuck one.
        loop {
            let line = talker.next().await;
            if line == "System: Client(2) has left the chat" {
                saw_leave = true;
                continue;
            }
            assert!(line.starts_with("Client(1): xxx"), "{line:.40}");
            break;
        }
        if saw_leave {
            break;
        }
    }
    assert!(saw_leave, "the stuck client was never cut off");
    let status = stuck.end().await.expect_err("cut off");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().starts_with("you fell too far behind"),
        "{}",
        status.message()
    );
    settle(&harness.activity.chat_members, 1).await;
}

/// An over-long chat message is refused to its sender alone with a System message naming
/// the limit; its stream stays open and the others see nothing of it.
#[tokio::test]
async fn over_long_chat_message_is_refused() {
    let harness = Harness::start_with(|config| config.max_chat_message_size = 100).await;
    let mut one = Member::join(harness.server.channel().await).await;
    let mut two = Member::join(harness.server.channel().await).await;
    one.next().await;
    one.next().await;
    two.next().await;
    two.say(&"y".repeat(101)).await;
    assert_eq!(
        two.next().await,
        "System: Your message was not sent: chat message is 101 bytes; the limit is 100 bytes (100B)"
    );
    two.say("short").await;
    assert_eq!(
        one.next().await,
        "Client(2): short",
        "one saw nothing before"
    );
    assert_eq!(two.next().await, "Client(2): short", "two is still in");
    settle(&harness.activity.chat_members, 2).await;
}

/// A newcomer alone is told its name; `/who` answers the asker alone; a late joiner gets
/// the room's last messages marked as history, and the client shows them framed and with
/// every sender's timestamp in one format.
#[tokio::test]
async fn newcomer_name_who_and_history() {
    let harness = Harness::start_with(|config| config.chat_history = 2).await;
    let mut one = Member::join(harness.server.channel().await).await;
    assert_eq!(
        one.next_message().await.message,
        "Client(1) has joined the chat"
    );
    let you = one.next_message().await;
    assert_eq!(
        (you.sender.as_str(), you.message.as_str()),
        ("System", "You are Client(1)")
    );
    for text in ["first", "second", "third"] {
        one.say(text).await;
        one.next().await;
    }
    one.say("/who").await;
    assert_eq!(one.next().await, "System: In the room (1): Client(1)");

    let mut two = Member::join(harness.server.channel().await).await;
    assert_eq!(one.next().await, "System: Client(2) has joined the chat");
    assert_eq!(two.next().await, "System: Client(2) has joined the chat");
    assert_eq!(two.next_message().await.message, "You are Client(2)");
    for expected in ["second", "third"] {
        let message = two.next_message().await;
        assert!(message.history, "{message:?}");
        assert_eq!(
            (message.sender.as_str(), message.message.as_str()),
            ("Client(1)", expected)
        );
    }
    two.say("/who").await;
    assert_eq!(
        two.next().await,
        "System: In the room (2): Client(1), Client(2)"
    );
    one.say("live").await;
    let live = two.next_message().await;
    assert!(!live.history);
    assert_eq!(live.message, "live");

    // The client's view of the same room, with a timestamp in another format.
    let mut history = pb::ChatMessage {
        sender: "Client(1)".into(),
        message: "before".into(),
        timestamp: "2026-01-02T03:04:05.678".into(),
        history: true,
    };
    assert_eq!(
        streaming_service::client::chat_line(&history),
        "[03:04:05] Client(1): before"
    );
    history.timestamp = "03:04:05.678".into();
    assert_eq!(
        streaming_service::client::chat_line(&history),
        "[03:04:05] Client(1): before"
    );
    history.timestamp = "not a time".into();
    assert_eq!(
        streaming_service::client::chat_line(&history),
        "[not a time] Client(1): before"
    );

    let mut session = Session::new(
        harness.server.channel().await,
        Input::scripted(["hello"]),
        Interrupts::none(),
        Vec::new(),
    );
    tokio::time::timeout(
        TIMEOUT,
        session.run(
            Some(streaming_service::client::Command::Chat),
            &FlowOptions::default(),
        ),
    )
    .await
    .expect("in time")
    .expect("chat");
    let printed = String::from_utf8(session.into_output()).expect("utf-8");
    let lines: Vec<&str> = printed.lines().collect();
    assert!(
        lines[0].ends_with("] Client(3) has joined the chat"),
        "{printed}"
    );
    assert!(lines[1].ends_with("] You are Client(3)"), "{printed}");
    assert_eq!(lines[2], "--- Earlier messages ---", "{printed}");
    assert!(lines[3].ends_with("] Client(1): third"), "{printed}");
    assert!(lines[4].ends_with("] Client(1): live"), "{printed}");
    assert_eq!(lines[5], "--- End of earlier messages ---", "{printed}");
    assert!(lines[6].ends_with("] Client(3): hello"), "{printed}");
}

/// On shutdown every chat client is told and its stream ends cleanly; the server stops.
#[tokio::test]
async fn shutdown_tells_chat_clients() {
    let harness = Harness::start().await;
    let mut one = Member::join(harness.server.channel().await).await;
    let mut two = Member::join(harness.server.channel().await).await;
    one.next().await;
    one.next().await;
    two.next().await;
    let activity = harness.activity.clone();
    harness.server.stop().await.expect("clean stop");
    for member in [&mut one, &mut two] {
        assert_eq!(member.next().await, "System: Server is shutting down");
        member.end().await.expect("a clean end");
    }
    assert_eq!(activity.chat_members.get(), 0);
}

/// An upload whose client stops sending mid-file ignores shutdown and holds the drain; once
/// the grace period is over `serve` closes its connection and returns with no per-stream task
/// left, the upload call fails and leaves no file. A chat member and an unread time stream on
/// other connections end as shutdown tells them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_upload_is_closed_after_the_grace_period() {
    let harness = Harness::start_with_grace(SHORT_GRACE, |_| {}).await;
    let mut client = harness.client().await;
    let (chunks, receiver) = mpsc::channel(4);
    chunks
        .send(chunk("held.bin", b"the first part", false))
        .await
        .expect("send");
    let call = tokio::spawn(async move {
        client
            .stream_upload_file(ReceiverStream::new(receiver))
            .await
    });
    settle(&harness.activity.uploads, 1).await;
    let mut member = Member::join(harness.server.channel().await).await;
    assert_eq!(member.next().await, "System: Client(1) has joined the chat");
    let mut times = first_time(&mut harness.client().await).await;
    assert_eq!(
        harness.service.running_tasks(),
        2,
        "a chat reader and a time producer"
    );

    let Harness {
        server,
        activity,
        service,
        dir,
    } = harness;
    let stopped_at = tokio::time::Instant::now();
    server.stop().await.expect("clean stop");
    // Checked at once: `serve` returning means none of the service's tasks runs any more.
    assert_eq!(service.running_tasks(), 0, "a task outlived serve");
    assert!(
        stopped_at.elapsed() >= SHORT_GRACE,
        "serve returned after {:?}: the stalled upload did not hold the drain",
        stopped_at.elapsed()
    );

    let answer = tokio::time::timeout(TIMEOUT, call)
        .await
        .expect("the upload call ended in time")
        .expect("call task");
    answer.expect_err("a cut-off upload is not stored");
    settle(&activity.uploads, 0).await;
    let upload_dir = dir.path().join("streamed");
    assert!(
        files_under(&upload_dir).is_empty(),
        "{:?}",
        files_under(&upload_dir)
    );
    assert_eq!(member.next().await, "System: Server is shutting down");
    member.end().await.expect("the chat stream ends cleanly");
    let time_end = tokio::time::timeout(TIMEOUT, async {
        while let Ok(Some(_)) = times.message().await {}
    })
    .await;
    assert!(time_end.is_ok(), "the time stream stayed open");
    // The client kept its request stream open throughout.
    drop(chunks);
}

/// The client library's full flow with scripted input: N time updates, the prompt answered
/// with a path, then chat lines and `quit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_flow_with_scripted_input() {
    let harness = Harness::start().await;
    let source = harness.dir.path().join("notes.txt");
    std::fs::write(&source, "some notes").expect("write");
    let input = Input::scripted([
        format!("  {}  ", source.display()),
        "hello everyone".to_owned(),
        String::new(),
        "quit".to_owned(),
        "never sent".to_owned(),
    ]);
    let mut session = Session::new(
        harness.server.channel().await,
        input,
        Interrupts::none(),
        Vec::new(),
    );
    let flow = FlowOptions {
        time_updates: Some(2),
        ..FlowOptions::default()
    };
    tokio::time::timeout(TIMEOUT, session.run(None, &flow))
        .await
        .expect("in time")
        .expect("flow");
    let printed = String::from_utf8(session.into_output()).expect("utf-8");
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines[0], "--- Server time (2 updates) ---");
    assert!(lines[1].starts_with("Server time: 20"), "{printed}");
    assert!(lines[2].starts_with("Server time: 20"), "{printed}");
    assert_eq!(lines[3], "--- File upload ---");
    let stored = harness.upload_dir().join("notes.txt");
    assert_eq!(
        lines[4],
        format!(
            "{}Upload response: File notes.txt uploaded successfully",
            streaming_service::client::UPLOAD_PROMPT,
        )
    );
    assert_eq!(lines[5], format!("File path: {}", stored.display()));
    assert_eq!(
        lines[6],
        format!(
            "Checksum OK: 10 bytes, BLAKE3 {} matches the local file",
            blake3::hash(b"some notes").to_hex()
        )
    );
    assert!(lines[7].starts_with("--- Chat"), "{printed}");
    assert!(
        lines[8].ends_with("] Client(1) has joined the chat"),
        "{printed}"
    );
    assert!(lines[9].ends_with("] You are Client(1)"), "{printed}");
    assert!(
        lines[10].ends_with("] Client(1): hello everyone"),
        "{printed}"
    );
    assert_eq!(lines.len(), 11, "{printed}");
    assert_eq!(std::fs::read(stored).expect("stored"), b"some notes");
}

/// Spawns `streaming_client ARGS` with piped stdin/stdout; its stdout is collected by a
/// thread and can be waited on line by line.
struct ClientProcess {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    printed: Vec<String>,
}

impl ClientProcess {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(cargo_bin("streaming_client"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("client starts");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            printed: Vec::new(),
        }
    }

    /// Waits for a stdout line containing `needle`.
    fn wait_for_line(&mut self, needle: &str) {
        let deadline = std::time::Instant::now() + TIMEOUT;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.printed.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no line containing {needle:?}; printed {:?}", self.printed);
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "client did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binaries as a user runs them: startup lines; `chat` driven by piped stdin; the full
/// flow with flags; a chat client still connected at SIGTERM is told and exits 0, and so
/// does the server.
#[test]
fn binaries_with_piped_stdin_and_graceful_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let upload_dir = dir.path().join("streamed");
    let mut server = ServerProcess::start(
        cargo_bin("streaming_server"),
        &["--dir", upload_dir.to_str().expect("utf-8")],
    )
    .expect("server starts");
    assert!(server.stdout().contains(&format!(
        "Streaming Service started on port {}",
        server.port
    )));
    let absolute = std::fs::canonicalize(&upload_dir).expect("canonical");
    server
        .wait_for_stdout(&format!(
            "Streamed files will be stored in: {}",
            absolute.display()
        ))
        .expect("folder line");
    let url = server.url();
    let client = || {
        let mut command = assert_cmd::Command::new(cargo_bin("streaming_client"));
        command.args(["--server", &url]).timeout(TIMEOUT);
        command
    };

    let chat = client()
        .arg("chat")
        .write_stdin("hello from a pipe\nquit\n")
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&chat.get_output().stdout).into_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].ends_with("] Client(1) has joined the chat"),
        "{stdout}"
    );
    assert!(lines[1].ends_with("] You are Client(1)"), "{stdout}");
    assert!(
        lines[2].ends_with("] Client(1): hello from a pipe"),
        "{stdout}"
    );
    let stamp = &lines[0][1..9];
    chrono::NaiveTime::parse_from_str(stamp, "%H:%M:%S").expect("[HH:MM:SS] prefix");

    // The full flow, every step scripted: end of input leaves the chat.
    let source = dir.path().join("flow.txt");
    std::fs::write(&source, "flow content").expect("write");
    let flow = client()
        .args([
            "--time-updates",
            "1",
            "--upload",
            source.to_str().expect("utf-8"),
        ])
        .write_stdin("bye\n")
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&flow.get_output().stdout).into_owned();
    assert!(stdout.contains("Server time: 20"), "{stdout}");
    assert!(
        stdout.contains("File flow.txt uploaded successfully"),
        "{stdout}"
    );
    assert!(stdout.contains("Checksum OK: 12 bytes"), "{stdout}");
    assert!(stdout.contains("] Client(2): bye"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(upload_dir.join("flow.txt")).expect("stored"),
        "flow content"
    );
    client()
        .args(["--skip-upload", "time"])
        .assert()
        .failure()
        .code(1);

    // A chat client that never ends its input is told of the shutdown and exits 0.
    let mut listener = ClientProcess::start(&["--server", &url, "chat"]);
    listener.wait_for_line("] Client(3) has joined the chat");
    server.signal("TERM").expect("SIGTERM");
    listener.wait_for_line("] Server is shutting down");
    assert!(listener.wait().success());
    let status = server.wait(TIMEOUT).expect("server exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
}

/// A client process that dies (its connection dropped) stops its time stream on the
/// server, and a chat client killed that way is announced as leaving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_clients_end_their_streams() {
    let harness = Harness::start().await;
    let url = harness.server.url();
    let mut timer = tokio::task::spawn_blocking(move || {
        let mut timer = ClientProcess::start(&["--server", &url, "time"]);
        timer.wait_for_line("Server time: ");
        timer
    })
    .await
    .expect("time stream started");
    settle(&harness.activity.time_streams, 1).await;
    timer.child.kill().expect("SIGKILL");
    settle(&harness.activity.time_streams, 0).await;
    tokio::task::spawn_blocking(move || drop(timer))
        .await
        .expect("reaped");

    let mut watcher = Member::join(harness.server.channel().await).await;
    assert_eq!(
        watcher.next().await,
        "System: Client(1) has joined the chat"
    );
    let url = harness.server.url();
    let mut doomed = tokio::task::spawn_blocking(move || {
        let mut doomed = ClientProcess::start(&["--server", &url, "chat"]);
        doomed.wait_for_line("] Client(2) has joined the chat");
        doomed
    })
    .await
    .expect("client joined");
    assert_eq!(
        watcher.next().await,
        "System: Client(2) has joined the chat"
    );
    doomed.child.kill().expect("SIGKILL");
    assert_eq!(watcher.next().await, "System: Client(2) has left the chat");
    tokio::task::spawn_blocking(move || drop(doomed))
        .await
        .expect("reaped");
}

/// With no server listening, the client says so in one line and exits 1.
#[test]
fn client_with_server_down_exits_one() {
    testkit::assert_reports_server_down(cargo_bin("streaming_client"), &["time", "--count", "1"]);
}

/// A Python grpcio client generated from protos/ uses all three methods as the old client
/// did: time updates, a chunked upload ending with an empty last chunk, and a chat.
#[test]
fn python_client_uses_all_three_methods() {
    let dir = tempfile::tempdir().expect("tempdir");
    let upload_dir = dir.path().join("streamed");
    let server = ServerProcess::start(
        cargo_bin("streaming_server"),
        &["--dir", upload_dir.to_str().expect("utf-8")],
    )
    .expect("server starts");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/streaming_client.py");
    let target = format!("127.0.0.1:{}", server.port);
    testkit::run_python(&script, &[&target, upload_dir.to_str().expect("utf-8")])
        .expect("python client passes");
}

/// The lines the old system's README documents, word for word (seed README, "Client
/// Streaming - File Upload" and "Bidirectional Streaming - Chat System"): run from a
/// folder holding `example.txt`, with the default `streamed_files` folder, the server and
/// client print exactly these.
#[test]
fn seed_readme_lines_are_printed_as_documented() {
    const SEED_UPLOAD: [&str; 2] = [
        "Upload response: File example.txt uploaded successfully",
        "File path: streamed_files/example.txt",
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("example.txt"), "example").expect("write");
    // testkit starts binaries in our own folder; the shell moves the server to the temp
    // folder so its default, relative `streamed_files` lands (and shows) there.
    let script = format!(
        "cd '{}' && exec '{}' --addr 127.0.0.1:0",
        dir.path().display(),
        cargo_bin("streaming_server").display()
    );
    let server = testkit::Launch::new("sh")
        .args(["-c", &script])
        .start()
        .expect("server starts");
    let absolute = std::fs::canonicalize(dir.path()).expect("canonical");
    server
        .wait_for_stdout(&format!(
            "Streamed files will be stored in: {}",
            absolute.join("streamed_files").display()
        ))
        .expect("the old folder line");

    let upload = assert_cmd::Command::new(cargo_bin("streaming_client"))
        .current_dir(dir.path())
        .args(["--server", &server.url(), "upload", "example.txt"])
        .timeout(TIMEOUT)
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&upload.get_output().stdout).into_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..2], SEED_UPLOAD, "{stdout}");
    assert!(lines[2].starts_with("Checksum OK: 7 bytes"), "{stdout}");
    assert_eq!(lines.len(), 3, "{stdout}");

    // `[14:30:00] Client(1) has joined the chat` / `[14:30:10] Client(1): Hello everyone!`
    let chat = assert_cmd::Command::new(cargo_bin("streaming_client"))
        .args(["--server", &server.url(), "chat"])
        .write_stdin("Hello everyone!\n")
        .timeout(TIMEOUT)
        .assert()
        .success();
    let stdout = String::from_utf8_lossy(&chat.get_output().stdout).into_owned();
    let shapes: Vec<String> = stdout
        .lines()
        .map(|line| {
            let (time, rest) = line.split_at(10);
            assert!(
                chrono::NaiveTime::parse_from_str(&time[1..9], "%H:%M:%S").is_ok(),
                "{line}"
            );
            format!("[hh:mm:ss]{rest}")
        })
        .collect();
    assert_eq!(
        shapes,
        [
            "[hh:mm:ss] Client(1) has joined the chat",
            "[hh:mm:ss] You are Client(1)",
            "[hh:mm:ss] Client(1): Hello everyone!",
        ]
    );
}

/// A chat member whose process is frozen (SIGSTOP: it keeps its socket but answers
/// nothing, like a laptop closed mid-chat) is announced as left within the server's
/// keepalive interval + timeout, and the others stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_chat_member_is_announced_as_left() {
    let dir = tempfile::tempdir().expect("tempdir");
    let upload_dir = dir.path().join("streamed");
    let server = ServerProcess::start(
        cargo_bin("streaming_server"),
        &[
            "--dir",
            upload_dir.to_str().expect("utf-8"),
            "--keepalive-interval",
            "0.5",
            "--keepalive-timeout",
            "0.5",
        ],
    )
    .expect("server starts");
    let channel = Channel::from_shared(server.url())
        .expect("url")
        .connect()
        .await
        .expect("connects");
    let mut watcher = Member::join(channel).await;
    assert_eq!(
        watcher.next().await,
        "System: Client(1) has joined the chat"
    );
    let url = server.url();
    let frozen = tokio::task::spawn_blocking(move || {
        let mut frozen = ClientProcess::start(&["--server", &url, "chat"]);
        frozen.wait_for_line("] Client(2) has joined the chat");
        frozen
    })
    .await
    .expect("client joined");
    assert_eq!(
        watcher.next().await,
        "System: Client(2) has joined the chat"
    );
    let pid = frozen.child.id().to_string();
    let stop = Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("kill");
    assert!(stop.success());
    let frozen_at = std::time::Instant::now();
    assert_eq!(watcher.next().await, "System: Client(2) has left the chat");
    let noticed_after = frozen_at.elapsed();
    // Interval + timeout is 1 s; generous slack for a loaded machine, far below the
    // minutes a frozen peer would otherwise stay a member.
    assert!(
        noticed_after < Duration::from_secs(8),
        "noticed after {noticed_after:?}"
    );
    watcher.say("still here").await;
    assert_eq!(watcher.next().await, "Client(1): still here");
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    tokio::task::spawn_blocking(move || drop(frozen))
        .await
        .expect("reaped");
}
