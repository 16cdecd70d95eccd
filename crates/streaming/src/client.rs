//! What `streaming_client` does. With no command it follows the old script: (1) server time
//! updates until Ctrl+C, (2) an optional upload asked for at a prompt, (3) the chat. Each
//! step is also a subcommand, and flags script the full flow.
//!
//! Input and interrupts are passed in ([`Input`], [`Interrupts`]) and results written to
//! any writer, so tests drive the same code with scripted lines. Results go to the writer
//! (stdout in the binary); the progress bar and diagnostics go to stderr.

use std::{
    io::{IsTerminal as _, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use grpc_suite::cli::Connection;
use grpc_suite::{cli::status_error, streaming as pb};
use pb::streaming_service_client::StreamingServiceClient;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::{CHUNK_SIZE, chat::SYSTEM_SENDER};

/// The prompt of the old script's upload step.
pub const UPLOAD_PROMPT: &str = "Enter file path to upload (or press Enter to skip): ";

/// The line that leaves the chat (the old client's word).
pub const QUIT: &str = "quit";

/// The other line that leaves the chat, as chat programs spell it.
pub const SLASH_QUIT: &str = "/quit";

/// Whether `line` asks to leave the chat.
pub fn is_quit(line: &str) -> bool {
    let line = line.trim();
    line == QUIT || line == SLASH_QUIT
}

/// How long, after leaving, the chat waits for the server to end the stream (it delivers
/// what was said before the leave first).
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Chunks read ahead of the network. Two keep the disk and the network both busy while
/// holding about 2 MiB.
const CHUNKS_AHEAD: usize = 2;

/// One step of the streaming client (the binary maps its subcommands onto these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Prints the server's time once a second, until Ctrl+C or `count` updates.
    Time {
        /// Stop after this many updates.
        count: Option<u64>,
    },
    /// Uploads a file in 1 MiB chunks and checks the server's checksum against ours.
    Upload {
        /// The local file to send.
        path: PathBuf,
        /// The name to store it under (default: the file name of `path`).
        store_as: Option<String>,
    },
    /// Joins the chat until `quit`, end of input or Ctrl+C.
    Chat,
}

/// How the full flow (no command) runs each step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowOptions {
    /// Stop the time stream after this many updates instead of at Ctrl+C.
    pub time_updates: Option<u64>,
    /// Upload this file instead of asking for one.
    pub upload: Option<PathBuf>,
    /// Skip the upload step without asking.
    pub skip_upload: bool,
}

/// Shows how far an upload has got. The binary draws a bar on a terminal; the library
/// only reports, so it links no terminal code.
pub trait Progress: Send + Sync + std::fmt::Debug {
    /// An upload of `total` bytes starts.
    fn start(&self, total: u64);
    /// `bytes` more were handed to the network.
    fn advance(&self, bytes: u64);
    /// The upload ended, however it ended.
    fn finish(&self);
}

/// Lines of input: standard input read on its own thread, or scripted lines in tests.
#[derive(Debug)]
pub struct Input {
    lines: mpsc::Receiver<String>,
}

impl Input {
    /// Standard input, one line at a time. Read on a plain thread rather than tokio's
    /// blocking pool: a read still waiting for a line when the client finishes must not
    /// hold up the process's exit, and a detached thread does not.
    pub fn stdin() -> Self {
        let (sender, lines) = mpsc::channel(1);
        std::thread::spawn(move || {
            for line in std::io::stdin().lines() {
                let Ok(line) = line else {
                    break; // Unreadable input (not UTF-8, closed): treated as its end.
                };
                if sender.blocking_send(line).is_err() {
                    break;
                }
            }
        });
        Self { lines }
    }

    /// Lines from any source (the binary's line editor): each received line, then the end
    /// of input when every sender is gone.
    pub fn from_channel(lines: mpsc::Receiver<String>) -> Self {
        Self { lines }
    }

    /// These lines, then the end of input.
    pub fn scripted<I, S>(lines: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let lines: Vec<String> = lines.into_iter().map(Into::into).collect();
        let (sender, receiver) = mpsc::channel(lines.len().max(1));
        for line in lines {
            // Cannot fail: the channel has room for every line and its receiver is here.
            let _ = sender.try_send(line);
        }
        Self { lines: receiver }
    }

    /// The next line, without its line ending; `None` at the end of input.
    pub async fn next_line(&mut self) -> Option<String> {
        let line = self.lines.recv().await?;
        Some(line.trim_end_matches('\r').to_owned())
    }
}

/// Interrupt requests (Ctrl+C): each ends the current step.
#[derive(Debug)]
pub struct Interrupts {
    receiver: Option<mpsc::UnboundedReceiver<()>>,
    /// Another way in for the same interrupts: a line editor in raw mode reads Ctrl+C as a
    /// key, not a signal, and reports it here.
    sender: Option<mpsc::UnboundedSender<()>>,
}

impl Interrupts {
    /// Every Ctrl+C from now on. Once this runs, Ctrl+C no longer kills the process: each
    /// step decides what it means. The terminal shows `^C` where the cursor was, so a
    /// newline goes to stderr (when it is a terminal) and what follows starts on a line of
    /// its own. Must be called inside a tokio runtime.
    pub fn ctrl_c() -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let signalled = sender.clone();
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                if std::io::stderr().is_terminal() {
                    eprintln!();
                }
                if signalled.send(()).is_err() {
                    break;
                }
            }
        });
        Self {
            receiver: Some(receiver),
            sender: Some(sender),
        }
    }

    /// Never interrupted (tests, scripted runs).
    pub fn none() -> Self {
        Self {
            receiver: None,
            sender: None,
        }
    }

    /// Scripted interrupts: each `()` sent on the returned sender is one (tests).
    pub fn channel() -> (mpsc::UnboundedSender<()>, Self) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let interrupts = Self {
            receiver: Some(receiver),
            sender: Some(sender.clone()),
        };
        (sender, interrupts)
    }

    /// A sender that raises these interrupts from elsewhere (a line editor that reads
    /// Ctrl+C as a key); `None` for [`Interrupts::none`].
    pub fn sender(&self) -> Option<mpsc::UnboundedSender<()>> {
        self.sender.clone()
    }

    /// Resolves at the next interrupt; never, if there are none to come.
    pub async fn next(&mut self) {
        if let Some(receiver) = &mut self.receiver
            && receiver.recv().await.is_some()
        {
            return;
        }
        std::future::pending().await
    }
}

/// A connected client with its input, interrupts and output.
#[derive(Debug)]
pub struct Session<W> {
    client: StreamingServiceClient<Connection>,
    input: Input,
    interrupts: Interrupts,
    out: W,
    /// Told how far each upload has got (the binary: a bar when stderr is a terminal).
    pub progress: Option<Arc<dyn Progress>>,
}

impl<W: Write> Session<W> {
    /// A session over a connected channel.
    pub fn new(
        channel: impl Into<Connection>,
        input: Input,
        interrupts: Interrupts,
        out: W,
    ) -> Self {
        Self {
            client: StreamingServiceClient::new(channel.into()),
            input,
            interrupts,
            out,
            progress: None,
        }
    }

    /// The output, for tests to read.
    pub fn into_output(self) -> W {
        self.out
    }

    /// Runs one command, or the full flow when `command` is `None`.
    pub async fn run(
        &mut self,
        command: Option<Command>,
        flow: &FlowOptions,
    ) -> anyhow::Result<()> {
        match command {
            Some(Command::Time { count }) => self.time(count).await,
            Some(Command::Upload { path, store_as }) => {
                self.upload(&path, store_as).await.map(drop)
            }
            Some(Command::Chat) => self.chat().await,
            None => self.flow(flow).await,
        }
    }

    /// The old script's three steps.
    async fn flow(&mut self, options: &FlowOptions) -> anyhow::Result<()> {
        match options.time_updates {
            Some(1) => writeln!(self.out, "--- Server time (1 update) ---")?,
            Some(count) => writeln!(self.out, "--- Server time ({count} updates) ---")?,
            None => writeln!(self.out, "--- Server time (press Ctrl+C to go on) ---")?,
        }
        self.time(options.time_updates).await?;

        writeln!(self.out, "--- File upload ---")?;
        let path = if options.skip_upload {
            None
        } else if let Some(path) = &options.upload {
            Some(path.clone())
        } else {
            write!(self.out, "{UPLOAD_PROMPT}")?;
            self.out.flush()?;
            let line = tokio::select! {
                line = self.input.next_line() => line,
                () = self.interrupts.next() => anyhow::bail!("interrupted"),
            };
            let line = line.unwrap_or_default();
            let trimmed = line.trim();
            (!trimmed.is_empty()).then(|| PathBuf::from(trimmed))
        };
        // As in the old script, a failed upload is reported and the chat still follows;
        // the exit status says it failed.
        let upload_failed = match path {
            None => {
                writeln!(self.out, "Upload skipped")?;
                false
            }
            Some(path) => match self.upload(&path, None).await {
                Ok(_) => false,
                Err(error) => {
                    eprintln!("error: {error:#}");
                    true
                }
            },
        };

        writeln!(
            self.out,
            "--- Chat (type a message and press Enter; /who lists the room; `{QUIT}` or `{SLASH_QUIT}` leaves) ---"
        )?;
        self.chat().await?;
        anyhow::ensure!(!upload_failed, "the upload failed (see above)");
        Ok(())
    }

    /// Prints `Server time: …` for each update, until `count` updates, an interrupt, or the
    /// server ending the stream.
    pub async fn time(&mut self, count: Option<u64>) -> anyhow::Result<()> {
        if count == Some(0) {
            return Ok(());
        }
        let mut updates = self
            .client
            .stream_server_time(pb::Empty {})
            .await
            .map_err(status_error)?
            .into_inner();
        let mut received = 0u64;
        loop {
            let update = tokio::select! {
                update = updates.message() => update.map_err(status_error)?,
                () = self.interrupts.next() => break,
            };
            let Some(update) = update else { break };
            writeln!(self.out, "Server time: {}", update.timestamp)?;
            received += 1;
            if count.is_some_and(|count| received >= count) {
                break;
            }
        }
        // Dropping `updates` cancels the call: the server stops its producer at once.
        Ok(())
    }

    /// Uploads `path` (stored as `store_as` or its file name) in 1 MiB chunks, declaring
    /// its size up front and its BLAKE3 digest on the last chunk (hashed while sending, so
    /// the file is read once), and checks the server's answer against both. A server that
    /// answers with SHA-256 only (one that predates BLAKE3) is checked against the local
    /// file's SHA-256 instead.
    pub async fn upload(
        &mut self,
        path: &Path,
        store_as: Option<String>,
    ) -> anyhow::Result<pb::FileResponse> {
        let name = grpc_suite::cli::upload_name(path, store_as)?;
        let file = open_upload(path).await?;
        let size = file
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        let bar = self.progress.clone();
        if let Some(bar) = &bar {
            bar.start(size);
        }

        let (chunks, receiver) = mpsc::channel(CHUNKS_AHEAD);
        let reader = {
            let bar = bar.clone();
            tokio::task::spawn_blocking(move || read_chunks(file, name, size, &chunks, bar))
        };
        let call = self
            .client
            .stream_upload_file(ReceiverStream::new(receiver));
        let answer = tokio::select! {
            answer = call => Some(answer),
            () = self.interrupts.next() => None,
        };
        if let Some(bar) = &bar {
            bar.finish();
        }
        let Some(answer) = answer else {
            // Dropping the call cancels it (and closes the channel, which stops the
            // reader); the server discards what it received.
            anyhow::bail!("upload interrupted; the server keeps nothing of it");
        };
        // A local read failure explains the server's answer (an aborted upload), so it
        // comes first.
        let local_blake3 = reader
            .await
            .context("the file reader failed")?
            .with_context(|| format!("reading {}", path.display()))?;
        let answer = answer.map_err(status_error)?.into_inner();
        anyhow::ensure!(
            answer.success,
            "the server did not store the file: {}",
            answer.message
        );
        // The old script's two lines, word for word.
        writeln!(self.out, "Upload response: {}", answer.message)?;
        writeln!(self.out, "File path: {}", answer.file_path)?;
        let (algorithm, local, remote) = if !answer.blake3.is_empty() {
            ("BLAKE3", local_blake3, answer.blake3.clone())
        } else if !answer.sha256.is_empty() {
            // A server without BLAKE3 ignored our declaration and sent SHA-256.
            let (_, local_sha256) = digest_file(path).await?;
            ("SHA-256", local_sha256, answer.sha256.clone())
        } else {
            // A server without the checksum fields (the old one) cannot be checked.
            writeln!(
                self.out,
                "The server sent no checksum; local BLAKE3 {local_blake3}"
            )?;
            return Ok(answer);
        };
        anyhow::ensure!(
            remote == local && answer.bytes_written == size,
            "the server stored {} bytes with {algorithm} {remote}, but the local file has {size} bytes with {algorithm} {local}",
            answer.bytes_written,
        );
        writeln!(
            self.out,
            "Checksum OK: {} bytes, {algorithm} {remote} matches the local file",
            answer.bytes_written
        )?;
        Ok(answer)
    }

    /// Joins the chat: prints every message as `[ts] Client(N): text` (`[ts] text` for the
    /// server's own), sends each non-empty input line, and leaves at `quit`, the end of
    /// input or an interrupt, then prints what the server still delivers until it ends
    /// the stream.
    pub async fn chat(&mut self) -> anyhow::Result<()> {
        let (outgoing, receiver) = mpsc::channel(16);
        let mut incoming = self
            .client
            .chat_stream(ReceiverStream::new(receiver))
            .await
            .map_err(status_error)?
            .into_inner();
        let mut outgoing = Some(outgoing);
        let mut shown = Shown::default();
        let leave_deadline = tokio::time::sleep(Duration::MAX / 4);
        tokio::pin!(leave_deadline);
        loop {
            tokio::select! {
                message = incoming.message() => match message.map_err(status_error)? {
                    Some(message) => self.print_chat(&message, &mut shown)?,
                    None => return Ok(()),
                },
                line = self.input.next_line(), if outgoing.is_some() => match line {
                    Some(line) if !is_quit(&line) => {
                        if line.trim().is_empty() {
                            continue;
                        }
                        let message = pb::ChatMessage {
                            sender: String::new(),
                            message: line,
                            timestamp: chrono::Local::now()
                                .format(crate::chat::CHAT_TIME_FORMAT)
                                .to_string(),
                            history: false,
                        };
                        if let Some(sender) = &outgoing
                            && sender.send(message).await.is_err()
                        {
                            // The call is over; `incoming` says why on the next turn.
                            outgoing = None;
                        }
                    }
                    _ => {
                        // Ending our messages is how we leave: the server announces it
                        // and ends our stream after what was said before.
                        outgoing = None;
                        leave_deadline.as_mut().reset(tokio::time::Instant::now() + LEAVE_TIMEOUT);
                    }
                },
                () = self.interrupts.next(), if outgoing.is_some() => {
                    outgoing = None;
                    leave_deadline.as_mut().reset(tokio::time::Instant::now() + LEAVE_TIMEOUT);
                }
                () = &mut leave_deadline => return Ok(()),
            }
        }
    }

    fn print_chat(&mut self, message: &pb::ChatMessage, shown: &mut Shown) -> std::io::Result<()> {
        if message.history && !shown.in_history {
            writeln!(self.out, "--- Earlier messages ---")?;
            shown.in_history = true;
        } else if !message.history && shown.in_history {
            writeln!(self.out, "--- End of earlier messages ---")?;
            shown.in_history = false;
        }
        writeln!(self.out, "{}", chat_line(message))
    }
}

/// What the chat has shown so far, for the lines that frame the history.
#[derive(Debug, Default)]
struct Shown {
    /// The last message shown was from the room's history.
    in_history: bool,
}

/// How a chat message is shown: `[14:30:10] Client(1): text`, or `[14:30:10] text` for the
/// server's own, with the time in one format whoever sent it ([`chat_time`]).
pub fn chat_line(message: &pb::ChatMessage) -> String {
    let time = chat_time(&message.timestamp);
    if message.sender == SYSTEM_SENDER {
        format!("[{time}] {}", message.message)
    } else {
        format!("[{time}] {}: {}", message.sender, message.message)
    }
}

/// A sender's timestamp shown as `HH:MM:SS`, whatever form the sender used: our clients
/// and the old ones send `14:30:10`, others a fraction of a second, a date and time, or
/// RFC 3339 (shown in local time). Anything else is shown as it came, rather than lost.
pub fn chat_time(timestamp: &str) -> String {
    use chrono::{DateTime, Local, NaiveDateTime, NaiveTime};
    let trimmed = timestamp.trim();
    if let Ok(time) = DateTime::parse_from_rfc3339(trimmed) {
        return time
            .with_timezone(&Local)
            .format(crate::chat::CHAT_TIME_FORMAT)
            .to_string();
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(time) = NaiveDateTime::parse_from_str(trimmed, format) {
            return time.format(crate::chat::CHAT_TIME_FORMAT).to_string();
        }
    }
    if let Ok(time) = NaiveTime::parse_from_str(trimmed, "%H:%M:%S%.f") {
        return time.format(crate::chat::CHAT_TIME_FORMAT).to_string();
    }
    trimmed.to_owned()
}

/// The size and SHA-256 (lowercase hex) of a file, read on a blocking thread: only to
/// check an upload against a server that reports SHA-256 alone.
async fn digest_file(path: &Path) -> anyhow::Result<(u64, String)> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || -> std::io::Result<(u64, String)> {
        let mut file = std::fs::File::open(&owned)?;
        let mut hasher = Sha256::new();
        let size = std::io::copy(&mut file, &mut hasher)?;
        Ok((size, hex::encode(hasher.finalize())))
    })
    .await
    .context("the checksum task failed")?
    .with_context(|| format!("reading {}", path.display()))
}

/// Opens the file to upload, on a blocking thread.
async fn open_upload(path: &Path) -> anyhow::Result<std::fs::File> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(owned))
        .await
        .context("the file reader failed")?
        .with_context(|| format!("opening {}", path.display()))
}

/// Reads `file` (of `size` bytes) in chunks into `chunks`, on the calling (blocking)
/// thread, hashing each with BLAKE3 as it goes, and returns the digest (lowercase hex).
/// The first chunk declares the size and announces BLAKE3; every one names the file (as
/// the old client did); an empty chunk marked last declares the digest and ends a complete
/// upload. Each chunk is read straight into the buffer that is sent, with no copy on the
/// way. On a read error, or a file that changed size, it stops without the last chunk, so
/// the server discards the upload.
fn read_chunks(
    mut file: std::fs::File,
    filename: String,
    size: u64,
    chunks: &mpsc::Sender<pb::FileChunk>,
    bar: Option<Arc<dyn Progress>>,
) -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut hasher = blake3::Hasher::new();
    let mut sent = 0u64;
    let mut first = true;
    loop {
        let mut buffer = Vec::with_capacity(CHUNK_SIZE);
        let read = (&mut file)
            .take(CHUNK_SIZE as u64)
            .read_to_end(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer);
        sent += read as u64;
        let chunk = pb::FileChunk {
            filename: filename.clone(),
            chunk_data: buffer.into(),
            is_last_chunk: false,
            total_size: first.then_some(size),
            sha256: None,
            // Announced: the digest follows on the last chunk.
            blake3: first.then(String::new),
        };
        first = false;
        if chunks.blocking_send(chunk).is_err() {
            // The call ended early; its answer says why.
            return Ok(hasher.finalize().to_hex().to_string());
        }
        if let Some(bar) = &bar {
            bar.advance(read as u64);
        }
    }
    anyhow::ensure!(
        sent == size,
        "the file changed while it was being sent ({size} bytes before, {sent} now)"
    );
    let digest = hasher.finalize().to_hex().to_string();
    let last = pb::FileChunk {
        filename,
        chunk_data: bytes::Bytes::new(),
        is_last_chunk: true,
        total_size: first.then_some(size),
        sha256: None,
        blake3: Some(digest.clone()),
    };
    // A failed send means the call already ended; its answer says why.
    let _ = chunks.blocking_send(last);
    Ok(digest)
}
