//! The chat across replicas (`streaming_server --chat-bus nats://…`), against a real
//! `nats-server` with JetStream (Debian's package) and real `streaming_server` processes:
//! one room and one order for members of different replicas, unique numbers, a killed
//! replica's members announced as left, a NATS outage told and recovered, and the old
//! Python client unchanged. Skipped (with the reason printed) where nats-server is not
//! installed, unless SUITE_REQUIRE_NATS is set (as .ci/run does).

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers fail the test on the spot.

use std::{path::Path, time::Duration};

use assert_cmd::cargo::cargo_bin;
use grpc_suite::streaming as pb;
use pb::streaming_service_client::StreamingServiceClient;
use testkit::{NatsServer, ServerProcess, TIMEOUT};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

/// A streaming_server on the bus, with its own upload folder.
struct Replica {
    process: ServerProcess,
    _dir: tempfile::TempDir,
}

impl Replica {
    fn start(nats: &NatsServer) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let upload = dir.path().join("uploads");
        let process = ServerProcess::start(
            cargo_bin("streaming_server"),
            &[
                "--dir",
                upload.to_str().expect("utf-8"),
                "--chat-bus",
                &nats.url(),
            ],
        )
        .expect("streaming_server starts");
        Self { process, _dir: dir }
    }

    fn target(&self) -> String {
        format!("127.0.0.1:{}", self.process.port)
    }

    /// Tries to join once.
    async fn try_join(&self) -> Result<Member, tonic::Status> {
        let mut client = StreamingServiceClient::connect(self.process.url())
            .await
            .expect("connects");
        let (outgoing, receiver) = mpsc::channel(64);
        let incoming = client
            .chat_stream(ReceiverStream::new(receiver))
            .await?
            .into_inner();
        let mut member = Member {
            outgoing: Some(outgoing),
            incoming,
            number: 0,
            seen: Vec::new(),
        };
        let joined = member.next_message().await;
        assert_eq!(joined.sender, "System");
        let you_are = member.next_message().await;
        member.number = you_are
            .message
            .strip_prefix("You are Client(")
            .and_then(|rest| rest.strip_suffix(')'))
            .and_then(|number| number.parse().ok())
            .unwrap_or_else(|| panic!("expected `You are Client(N)`, got {you_are:?}"));
        assert_eq!(
            joined.message,
            format!("Client({}) has joined the chat", member.number)
        );
        Ok(member)
    }

    /// Joins, waiting while the replica's bus is still connecting (UNAVAILABLE).
    async fn join(&self) -> Member {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            match self.try_join().await {
                Ok(member) => return member,
                Err(status) if status.code() == Code::Unavailable => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "the chat stayed unavailable: {status:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status) => panic!("join refused: {status:?}"),
            }
        }
    }
}

/// One chat member as a test drives it.
struct Member {
    outgoing: Option<mpsc::Sender<pb::ChatMessage>>,
    incoming: Streaming<pb::ChatMessage>,
    /// From its `You are Client(N)`.
    number: u64,
    /// Every line it received after its name, as `sender: text`.
    seen: Vec<String>,
}

impl Member {
    fn name(&self) -> String {
        format!("Client({})", self.number)
    }

    async fn say(&self, text: &str) {
        let message = pb::ChatMessage {
            sender: "spoofed".into(),
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

    /// Ends its messages, as `quit` does.
    fn quit(&mut self) {
        self.outgoing = None;
    }

    async fn next_message(&mut self) -> pb::ChatMessage {
        tokio::time::timeout(TIMEOUT, self.incoming.message())
            .await
            .expect("a message in time")
            .expect("stream ok")
            .expect("stream still open")
    }

    /// The next line, as `sender: text`, remembered in `seen`.
    async fn next(&mut self) -> String {
        let message = self.next_message().await;
        let line = format!("{}: {}", message.sender, message.message);
        self.seen.push(line.clone());
        line
    }

    /// Reads until a line equal to `wanted`, returning the lines before it.
    async fn until(&mut self, wanted: &str) -> Vec<String> {
        let mut before = Vec::new();
        loop {
            let line = self.next().await;
            if line == wanted {
                return before;
            }
            before.push(line);
        }
    }

    /// How the stream ends, after whatever messages come first.
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

fn joined(member: &Member) -> String {
    format!("System: {} has joined the chat", member.name())
}

fn left(member: &Member) -> String {
    format!("System: {} has left the chat", member.name())
}

/// Members of three replicas are in one room: each sees the others join, every message
/// (sent at the same time from all three replicas) and a join and leave in between, all in
/// one identical order; numbers are unique; `/who` names everyone; a replica stopped
/// gracefully announces its member as left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_three_replicas_share_one_room_in_one_order() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let replicas: Vec<Replica> = (0..3).map(|_| Replica::start(&nats)).collect();
    let mut a = replicas[0].join().await;
    let mut b = replicas[1].join().await;
    assert_eq!(a.next().await, joined(&b));
    let mut c = replicas[2].join().await;
    assert_eq!(a.next().await, joined(&c));
    assert_eq!(b.next().await, joined(&c));
    let mut numbers = vec![a.number, b.number, c.number];

    // Everyone talks at once, while a fourth member comes and goes on the first replica.
    const EACH: usize = 5;
    for round in 0..EACH {
        for member in [&a, &b, &c] {
            member.say(&format!("{} says {round}", member.name())).await;
        }
    }
    let mut d = replicas[0].join().await;
    d.say("hello and goodbye").await;
    numbers.push(d.number);
    d.until(&format!("{}: hello and goodbye", d.name())).await;
    d.quit();
    d.end()
        .await
        .expect("a quitting member's stream ends cleanly");

    // Each reads until it has seen every message and the fourth member's leave.
    let last_lines = [
        format!("{}: hello and goodbye", d.name()),
        left(&d),
        format!("{0}: {0} says {1}", a.name(), EACH - 1),
        format!("{0}: {0} says {1}", b.name(), EACH - 1),
        format!("{0}: {0} says {1}", c.name(), EACH - 1),
    ];
    let c_joined = joined(&c);
    let mut transcripts = Vec::new();
    for member in [&mut a, &mut b, &mut c] {
        let mut lines = member.seen.clone();
        while !last_lines.iter().all(|wanted| lines.contains(wanted)) {
            match tokio::time::timeout(TIMEOUT / 2, member.next()).await {
                Ok(line) => lines.push(line),
                Err(_) => panic!("{} saw only {lines:?}", member.name()),
            }
        }
        // From the third member's join on, which all three saw (the third itself read
        // it with its name, before what it keeps in `seen`).
        let start = lines
            .iter()
            .position(|line| *line == c_joined)
            .map_or(0, |at| at + 1);
        transcripts.push(lines[start..].to_vec());
    }
    assert_eq!(
        transcripts[0].len(),
        3 * EACH + 3,
        "15 messages, a join, a message and a leave: {:?}",
        transcripts[0]
    );
    assert_eq!(
        transcripts[0], transcripts[1],
        "the first and second replicas' orders differ"
    );
    assert_eq!(
        transcripts[0], transcripts[2],
        "the first and third replicas' orders differ"
    );

    let mut unique = numbers.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), numbers.len(), "numbers reused: {numbers:?}");

    a.say("/who").await;
    let mut everyone = [a.number, b.number, c.number];
    everyone.sort_unstable();
    let names: Vec<String> = everyone.iter().map(|n| format!("Client({n})")).collect();
    assert_eq!(
        a.next().await,
        format!("System: In the room (3): {}", names.join(", "))
    );

    // A replica that stops gracefully says its members left.
    let [first, second, third] = <[Replica; 3]>::try_from(replicas).ok().expect("three");
    let stopping = tokio::task::spawn_blocking(move || third.process.stop(TIMEOUT));
    assert_eq!(c.next().await, "System: Server is shutting down");
    assert_eq!(a.next().await, left(&c));
    assert_eq!(b.next().await, left(&c));
    assert!(stopping.await.expect("join").expect("stops").success());
    a.say("still here").await;
    let said = format!("{}: still here", a.name());
    assert_eq!(a.next().await, said);
    assert_eq!(b.next().await, said);

    // A newcomer on another replica than the last speaker gets the room's history (all 17
    // chat messages, within the default 20), marked as such, ending with the last one.
    let mut newcomer = second.join().await;
    let mut history = Vec::new();
    loop {
        let message = newcomer.next_message().await;
        assert!(message.history, "history first: {message:?}");
        history.push(format!("{}: {}", message.sender, message.message));
        if history.last() == Some(&said) {
            break;
        }
    }
    let chat: Vec<&String> = transcripts[0]
        .iter()
        .filter(|line| !line.starts_with("System: "))
        .collect();
    assert_eq!(chat.len(), 3 * EACH + 1);
    let earlier: Vec<&String> = history[..history.len() - 1].iter().collect();
    assert_eq!(earlier, chat, "the history is the room's one order");
    drop(first);
}

/// A replica killed with SIGKILL: the others announce each of its members as left, once,
/// within a bounded time, and keep chatting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_is_announced_as_its_members_leaving() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let survivor_one = Replica::start(&nats);
    let survivor_two = Replica::start(&nats);
    let doomed = Replica::start(&nats);
    let mut a = survivor_one.join().await;
    let mut b = survivor_two.join().await;
    assert_eq!(a.next().await, joined(&b));
    let k1 = doomed.join().await;
    let k2 = doomed.join().await;
    for member in [&mut a, &mut b] {
        assert_eq!(member.next().await, joined(&k1));
        assert_eq!(member.next().await, joined(&k2));
    }

    doomed.process.kill();
    // The leaves come in number order, once each: the very next line after them is
    // the survivors' own chat.
    for member in [&mut a, &mut b] {
        assert_eq!(member.next().await, left(&k1));
        assert_eq!(member.next().await, left(&k2));
    }
    a.say("we carry on").await;
    let said = format!("{}: we carry on", a.name());
    assert_eq!(a.next().await, said);
    assert_eq!(b.next().await, said);
    b.say("/who").await;
    assert_eq!(
        b.next().await,
        format!("System: In the room (2): {}, {}", a.name(), b.name())
    );
}

/// NATS going away: members are told, joins are refused with UNAVAILABLE and messages
/// refused to their sender; when NATS is back the members are told and the chat works
/// again, joins included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_is_told_and_the_chat_comes_back() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let replica = Replica::start(&nats);
    let mut a = replica.join().await;

    nats.kill();
    assert_eq!(
        a.next().await,
        "System: Lost contact with the chat bus: messages cannot be sent until it is back"
    );
    let refused = replica
        .try_join()
        .await
        .err()
        .expect("a join during the outage is refused");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("chat bus"), "{refused:?}");
    a.say("anyone?").await;
    let refusal = a.next().await;
    assert!(
        refusal.starts_with("System: Your message was not sent: the chat bus at nats://"),
        "{refusal}"
    );

    nats.restart().expect("nats-server restarts");
    assert_eq!(a.next().await, "System: Contact with the chat bus is back");
    let b = replica.join().await;
    assert_eq!(a.next().await, joined(&b));
    b.say("back").await;
    assert_eq!(a.next().await, format!("{}: back", b.name()));
}

/// The Python grpcio client (no new fields) chats on a replica of the bus exactly as on a
/// lone server.
#[test]
fn python_client_chats_through_the_bus() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let replica = Replica::start(&nats);
    // The bus connects in the background; the script expects to join at once.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut probe = replica.join().await;
        probe.quit();
        probe.end().await.expect("ends");
    });
    let upload_dir = replica._dir.path().join("uploads");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/streaming_client.py");
    testkit::run_python(
        &script,
        &[&replica.target(), upload_dir.to_str().expect("utf-8")],
    )
    .expect("python client passes");
}

/// An unusable bus address (here from STREAMING_SERVICE_CHAT_BUS) stops the server with a
/// message before it says it started; no NATS needed.
#[test]
fn an_unusable_bus_address_stops_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(cargo_bin("streaming_server"))
        .args(["--addr", "127.0.0.1:0", "--dir"])
        .arg(dir.path().join("uploads"))
        .env("STREAMING_SERVICE_CHAT_BUS", "not a url")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("started on port"), "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("chat bus not a url"), "{stderr}");
}
