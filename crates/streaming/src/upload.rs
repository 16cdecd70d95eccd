//! StreamUploadFile: a chunked upload written to disk as it arrives and put in place only
//! when complete.
//!
//! The rules live in [`UploadPlan`] (plain and synchronous); [`receive`] drives them over
//! any stream of chunks, so it is tested without a network. The content goes to a
//! [`PendingFile`]: a temporary file in the target folder, deleted when dropped unless
//! committed. Every way an upload can fail (an error status, a stream that ends early, a
//! cancelled call dropping the handler) therefore leaves nothing behind, and two uploads of
//! one name each write their own temporary file and rename it into place atomically.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use grpc_suite::{
    storage::{PendingFile, SafeFileName, StorageDir, safe_file_name},
    streaming as pb,
};
use sha2::{Digest as _, Sha256};
use tokio::{task::JoinHandle, time::Sleep};
use tokio_stream::{Stream, StreamExt as _};
use tonic::Status;

use crate::{StreamingError, activity::GaugeGuard};

/// How long an upload may go without a byte of content before it is ended with
/// DEADLINE_EXCEEDED: a client that stalls, or sends empty chunks for ever, would otherwise
/// hold a temporary file, a call and its memory without end. Generous, so that a slow link
/// or a client reading a slow disk is never cut off.
pub const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How the client declared the content's BLAKE3 digest.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Blake3Declaration {
    /// Not at all (older clients): the server computes SHA-256 only.
    NotUsed,
    /// Announced on the first chunk (an empty `blake3`); due on the last chunk.
    Announced,
    /// Lowercase hex.
    Declared(String),
}

/// What the first chunk establishes for the whole upload, and the checks every chunk and
/// the finished content must pass.
#[derive(Debug, Clone)]
pub struct UploadPlan {
    /// The name as the first chunk gave it; later chunks may repeat it or leave it empty.
    raw_name: String,
    /// Where the file goes: the base name of `raw_name`.
    name: SafeFileName,
    declared_size: Option<u64>,
    /// Lowercase hex.
    declared_sha256: Option<String>,
    blake3: Blake3Declaration,
    max_size: u64,
}

/// A declared digest as lowercase hex, or the error naming `field`.
fn parse_digest(field: &'static str, raw: &str) -> Result<String, StreamingError> {
    let normalised = raw.trim().to_ascii_lowercase();
    if normalised.len() == 64 && normalised.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(normalised)
    } else {
        Err(StreamingError::BadDeclaredDigest {
            field,
            got: raw.chars().take(80).collect(),
        })
    }
}

impl UploadPlan {
    /// Reads the upload's name and declarations from its first chunk, refusing an unusable
    /// name, a malformed digest or a declared size over `max_size`.
    pub fn from_first_chunk(chunk: &pb::FileChunk, max_size: u64) -> Result<Self, StreamingError> {
        let name = safe_file_name(&chunk.filename)?;
        if let Some(declared) = chunk.total_size
            && declared > max_size
        {
            return Err(StreamingError::DeclaredTooLarge {
                declared,
                limit: max_size,
            });
        }
        let declared_sha256 = chunk
            .sha256
            .as_deref()
            .map(|hex_digest| parse_digest("sha256", hex_digest))
            .transpose()?;
        let blake3 = match chunk.blake3.as_deref() {
            None => Blake3Declaration::NotUsed,
            Some(raw) if raw.trim().is_empty() => Blake3Declaration::Announced,
            Some(raw) => Blake3Declaration::Declared(parse_digest("blake3", raw)?),
        };
        Ok(Self {
            raw_name: chunk.filename.clone(),
            name,
            declared_size: chunk.total_size,
            declared_sha256,
            blake3,
            max_size,
        })
    }

    /// The stored file's name.
    pub fn name(&self) -> &SafeFileName {
        &self.name
    }

    /// Whether the server computes the content's SHA-256: when the client declared it, and
    /// for clients that declared no BLAKE3 (they read SHA-256 from the answer).
    pub fn computes_sha256(&self) -> bool {
        self.declared_sha256.is_some() || self.blake3 == Blake3Declaration::NotUsed
    }

    /// Whether the server computes the content's BLAKE3: when the client declared or
    /// announced it.
    pub fn computes_blake3(&self) -> bool {
        self.blake3 != Blake3Declaration::NotUsed
    }

    /// Checks chunk number `index` (from 1), arriving after `received` bytes: it must not
    /// name another file, nor take the upload past the limit or the declared size. A last
    /// chunk after the first may declare the BLAKE3 digest the first one announced.
    pub fn check_chunk(
        &mut self,
        index: u64,
        chunk: &pb::FileChunk,
        received: u64,
    ) -> Result<(), StreamingError> {
        if !chunk.filename.is_empty() && chunk.filename != self.raw_name {
            return Err(StreamingError::FileNameChanged {
                index,
                expected: self.raw_name.clone(),
                found: chunk.filename.chars().take(80).collect(),
            });
        }
        let total = received.saturating_add(chunk.chunk_data.len() as u64);
        if total > self.max_size {
            return Err(StreamingError::TooLarge {
                limit: self.max_size,
            });
        }
        if let Some(declared) = self.declared_size
            && total > declared
        {
            return Err(StreamingError::SizeMismatch {
                declared,
                received: total,
            });
        }
        if index > 1
            && chunk.is_last_chunk
            && let Some(raw) = chunk.blake3.as_deref().filter(|raw| !raw.trim().is_empty())
        {
            let digest = parse_digest("blake3", raw)?;
            match &self.blake3 {
                Blake3Declaration::NotUsed => {
                    return Err(StreamingError::Blake3Declaration(
                        "blake3 on the last chunk must be announced on the first chunk (as an empty blake3)",
                    ));
                }
                Blake3Declaration::Declared(first) if *first != digest => {
                    return Err(StreamingError::Blake3Declaration(
                        "blake3 was declared on the first and the last chunk, differently",
                    ));
                }
                Blake3Declaration::Announced | Blake3Declaration::Declared(_) => {
                    self.blake3 = Blake3Declaration::Declared(digest);
                }
            }
        }
        Ok(())
    }

    /// Checks the finished content against what the client declared.
    pub fn verify(&self, received: u64, digests: &ContentDigests) -> Result<(), StreamingError> {
        if let Some(declared) = self.declared_size
            && declared != received
        {
            return Err(StreamingError::SizeMismatch { declared, received });
        }
        if let (Some(declared), Some(computed)) = (&self.declared_sha256, &digests.sha256)
            && declared != computed
        {
            return Err(StreamingError::HashMismatch {
                field: "sha256",
                declared: declared.clone(),
                received: computed.clone(),
            });
        }
        match (&self.blake3, &digests.blake3) {
            (Blake3Declaration::Announced, _) => Err(StreamingError::Blake3Declaration(
                "blake3 was announced on the first chunk but the last chunk did not declare it",
            )),
            (Blake3Declaration::Declared(declared), Some(computed)) if declared != computed => {
                Err(StreamingError::HashMismatch {
                    field: "blake3",
                    declared: declared.clone(),
                    received: computed.clone(),
                })
            }
            _ => Ok(()),
        }
    }
}

/// The digests of the received content the server computed (lowercase hex).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContentDigests {
    /// SHA-256, when the plan computes it.
    pub sha256: Option<String>,
    /// BLAKE3, when the plan computes it.
    pub blake3: Option<String>,
}

/// The running digests of what was written so far.
#[derive(Debug, Default)]
struct Hashers {
    sha256: Option<Sha256>,
    /// Boxed: moved with the sink to a blocking thread and back for every chunk.
    blake3: Option<Box<blake3::Hasher>>,
}

impl Hashers {
    fn for_plan(plan: &UploadPlan) -> Self {
        Self {
            sha256: plan.computes_sha256().then(Sha256::new),
            blake3: plan
                .computes_blake3()
                .then(|| Box::new(blake3::Hasher::new())),
        }
    }

    fn update(&mut self, data: &[u8]) {
        if let Some(sha256) = &mut self.sha256 {
            sha256.update(data);
        }
        if let Some(blake3) = &mut self.blake3 {
            blake3.update(data);
        }
    }

    fn finish(self) -> ContentDigests {
        ContentDigests {
            sha256: self.sha256.map(|hasher| hex::encode(hasher.finalize())),
            blake3: self
                .blake3
                .map(|hasher| hasher.finalize().to_hex().to_string()),
        }
    }
}

/// The file being written and the digest of what was written so far. Moved onto a
/// blocking thread for each chunk and back, so disk writes never stall the executor.
#[derive(Debug)]
struct UploadSink {
    // Field order matters: fields drop in order, so the temporary file is deleted before
    // the gauge says the upload is over.
    file: PendingFile,
    hashers: Hashers,
    written: u64,
    _counted: GaugeGuard,
}

impl UploadSink {
    fn write(mut self, data: &[u8]) -> std::io::Result<Self> {
        if !data.is_empty() {
            self.file.write_all(data)?;
            self.hashers.update(data);
            self.written += data.len() as u64;
        }
        Ok(self)
    }

    /// Puts the file in place; the gauge falls only once it is there.
    fn commit(self) -> std::io::Result<()> {
        let Self { file, _counted, .. } = self;
        file.commit()
    }
}

/// A complete upload, in place under its final name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUpload {
    /// The file's name in the storage folder.
    pub name: SafeFileName,
    /// Bytes stored.
    pub bytes_written: u64,
    /// The content's digests the upload computed.
    pub digests: ContentDigests,
}

/// Receives one upload from `chunks` into `storage`, refusing anything over `max_size`
/// bytes, and puts it in place only once a chunk marked last has arrived, the stream has
/// ended, and the declared size and digest (if any) match. `counted` is held until the
/// temporary file is gone or committed.
///
/// Writing chunk N overlaps with receiving chunk N+1, so at most about two chunks are in
/// memory whatever the file's size.
pub async fn receive<S>(
    chunks: S,
    storage: &StorageDir,
    max_size: u64,
    counted: GaugeGuard,
) -> Result<StoredUpload, StreamingError>
where
    S: Stream<Item = Result<pb::FileChunk, Status>> + Unpin,
{
    receive_with_idle_limit(chunks, storage, max_size, counted, UPLOAD_IDLE_TIMEOUT).await
}

/// [`receive`], ending the upload with DEADLINE_EXCEEDED (and nothing stored) once
/// `idle_limit` passes without a byte of content.
pub async fn receive_with_idle_limit<S>(
    chunks: S,
    storage: &StorageDir,
    max_size: u64,
    counted: GaugeGuard,
    idle_limit: Duration,
) -> Result<StoredUpload, StreamingError>
where
    S: Stream<Item = Result<pb::FileChunk, Status>> + Unpin,
{
    let mut chunks = IdleBounded::new(chunks, idle_limit);
    let first = next_chunk(&mut chunks, 0).await?;
    let mut plan = UploadPlan::from_first_chunk(&first, max_size)?;
    let sink = {
        let storage = storage.clone();
        let name = plan.name().clone();
        let hashers = Hashers::for_plan(&plan);
        tokio::task::spawn_blocking(move || -> std::io::Result<UploadSink> {
            Ok(UploadSink {
                file: storage.create(&name)?,
                hashers,
                written: 0,
                _counted: counted,
            })
        })
        .await??
    };

    // The write in flight. If the client cancels, tonic drops this whole future and with
    // it the handle, which detaches the write: when it finishes, the sink is dropped with
    // it and the temporary file deleted (no one is waiting for an answer then).
    let mut writing: Option<JoinHandle<std::io::Result<UploadSink>>> = None;
    let outcome = receive_chunks(&mut chunks, first, &mut plan, sink, &mut writing).await;
    if outcome.is_err()
        && let Some(write) = writing.take()
    {
        // A refusal is answered only once the write in flight has finished and dropped its
        // sink: when the client hears "refused", no temporary file is left.
        let _ = write.await;
    }
    let mut sink = outcome?;
    let digests = std::mem::take(&mut sink.hashers).finish();
    // On a mismatch the sink drops here, deleting the temporary file.
    plan.verify(sink.written, &digests)?;
    let written = sink.written;
    tokio::task::spawn_blocking(move || sink.commit()).await??;
    grpc_suite::metrics::UPLOAD_BYTES_STORED
        .with_label_values(&["streaming"])
        .inc_by(written);
    Ok(StoredUpload {
        name: plan.name().clone(),
        bytes_written: written,
        digests,
    })
}

/// Writes `first` and every following chunk up to the last one, each on the blocking pool
/// while the next is received, then checks that the client ended its stream. Returns the
/// sink with everything written; on an error, a write may still be in flight in `writing`.
async fn receive_chunks<S>(
    chunks: &mut S,
    first: pb::FileChunk,
    plan: &mut UploadPlan,
    sink: UploadSink,
    writing: &mut Option<JoinHandle<std::io::Result<UploadSink>>>,
) -> Result<UploadSink, StreamingError>
where
    S: Stream<Item = Result<pb::FileChunk, Status>> + Unpin,
{
    let mut idle_sink = Some(sink);
    let mut chunk = first;
    let mut index = 1u64;
    let mut received = 0u64;
    loop {
        plan.check_chunk(index, &chunk, received)?;
        received += chunk.chunk_data.len() as u64;
        let sink = match writing.take() {
            Some(write) => write.await??,
            None => idle_sink
                .take()
                .ok_or(StreamingError::Incomplete { received })?,
        };
        let is_last = chunk.is_last_chunk;
        let data: Bytes = chunk.chunk_data;
        *writing = Some(tokio::task::spawn_blocking(move || sink.write(&data)));
        if is_last {
            break;
        }
        chunk = next_chunk(chunks, received).await?;
        index += 1;
    }

    // The upload is complete only if the client then ends its stream: a chunk after the
    // last one is a protocol error, and a failed stream is a cancelled call.
    match chunks.next().await {
        None => {}
        Some(Ok(_)) => return Err(StreamingError::ChunkAfterLast),
        Some(Err(status)) => return Err(StreamingError::Inbound(status)),
    }
    match writing.take() {
        Some(write) => Ok(write.await??),
        None => Err(StreamingError::Incomplete { received }),
    }
}

/// A chunk stream that fails with DEADLINE_EXCEEDED once `limit` passes without content:
/// waiting counts, and so does a stream of empty chunks.
struct IdleBounded<S> {
    inner: S,
    limit: Duration,
    /// When the upload is idle for too long; pushed back by every chunk with content.
    deadline: Pin<Box<Sleep>>,
}

impl<S> IdleBounded<S> {
    fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }

    fn idle_error(&self) -> Status {
        Status::deadline_exceeded(format!(
            "no upload data for {} s: the upload was ended and nothing was stored",
            self.limit.as_secs_f64()
        ))
    }
}

impl<S> Stream for IdleBounded<S>
where
    S: Stream<Item = Result<pb::FileChunk, Status>> + Unpin,
{
    type Item = Result<pb::FileChunk, Status>;

    fn poll_next(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_next(context) {
            Poll::Ready(Some(Ok(chunk))) if !chunk.chunk_data.is_empty() => {
                let next = tokio::time::Instant::now() + this.limit;
                this.deadline.as_mut().reset(next);
                Poll::Ready(Some(Ok(chunk)))
            }
            // An empty chunk (or the end, or an error) does not count as progress.
            Poll::Ready(Some(Ok(_))) if this.deadline.is_elapsed() => {
                Poll::Ready(Some(Err(this.idle_error())))
            }
            Poll::Ready(other) => Poll::Ready(other),
            Poll::Pending => match this.deadline.as_mut().poll(context) {
                Poll::Ready(()) => Poll::Ready(Some(Err(this.idle_error()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// The next chunk; a stream that ends here ends before the last chunk, so it was aborted.
async fn next_chunk<S>(chunks: &mut S, received: u64) -> Result<pb::FileChunk, StreamingError>
where
    S: Stream<Item = Result<pb::FileChunk, Status>> + Unpin,
{
    match chunks.next().await {
        Some(Ok(chunk)) => Ok(chunk),
        Some(Err(status)) => Err(StreamingError::Inbound(status)),
        None => Err(StreamingError::Incomplete { received }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activity::Gauge;

    fn chunk(name: &str, data: &[u8], last: bool) -> pb::FileChunk {
        pb::FileChunk {
            filename: name.to_owned(),
            chunk_data: Bytes::copy_from_slice(data),
            is_last_chunk: last,
            total_size: None,
            sha256: None,
            blake3: None,
        }
    }

    fn blake3_hex(data: &[u8]) -> String {
        blake3::hash(data).to_hex().to_string()
    }

    fn sha256_hex(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    async fn upload(
        storage: &StorageDir,
        chunks: Vec<pb::FileChunk>,
        max_size: u64,
    ) -> Result<StoredUpload, StreamingError> {
        let gauge = Gauge::default();
        let result = receive(
            tokio_stream::iter(chunks.into_iter().map(Ok)),
            storage,
            max_size,
            gauge.enter(),
        )
        .await;
        // Whatever happened, nothing of this upload is still running afterwards.
        gauge.wait_until(|count| *count == 0).await;
        result
    }

    fn entries(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    /// Chunks are joined in order; the last chunk may carry data; digest and size match.
    #[tokio::test]
    async fn stores_all_chunks_including_data_in_the_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = StorageDir::open(dir.path()).expect("storage");
        let stored = upload(
            &storage,
            vec![
                chunk("../a.bin", b"one ", false),
                chunk("", b"two ", false),
                chunk("../a.bin", b"three", true),
            ],
            100,
        )
        .await
        .expect("stored");
        assert_eq!(stored.name.as_str(), "a.bin");
        assert_eq!(stored.bytes_written, 13);
        assert_eq!(
            stored.digests.sha256.as_deref(),
            Some(sha256_hex(b"one two three").as_str())
        );
        assert_eq!(stored.digests.blake3, None, "no client asked for BLAKE3");
        assert_eq!(
            std::fs::read(dir.path().join("a.bin")).expect("file"),
            b"one two three"
        );
    }

    /// No last chunk, a renamed chunk, a chunk after the last, or too many bytes: refused,
    /// and nothing stays in the folder.
    #[tokio::test]
    async fn refusals_leave_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = StorageDir::open(dir.path()).expect("storage");
        type Expectation = fn(&StreamingError) -> bool;
        let cases: Vec<(Vec<pb::FileChunk>, Expectation)> = vec![
            (vec![], |e| {
                matches!(e, StreamingError::Incomplete { received: 0 })
            }),
            (vec![chunk("a", b"xy", false)], |e| {
                matches!(e, StreamingError::Incomplete { received: 2 })
            }),
            (vec![chunk("a", b"x", false), chunk("b", b"y", true)], |e| {
                matches!(e, StreamingError::FileNameChanged { index: 2, .. })
            }),
            (vec![chunk("a", b"x", true), chunk("a", b"y", true)], |e| {
                matches!(e, StreamingError::ChunkAfterLast)
            }),
            (
                vec![chunk("a", &[0; 8], false), chunk("a", &[0; 3], true)],
                |e| matches!(e, StreamingError::TooLarge { limit: 10 }),
            ),
            (vec![chunk("..", b"x", true)], |e| {
                matches!(e, StreamingError::BadFileName(_))
            }),
        ];
        for (chunks, expected) in cases {
            let error = upload(&storage, chunks, 10).await.expect_err("refused");
            assert!(expected(&error), "unexpected error {error:?}");
            assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
        }
    }

    /// Declared size and digest are checked; a mismatch stores nothing.
    #[tokio::test]
    async fn declarations_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = StorageDir::open(dir.path()).expect("storage");
        let declared = |size: u64, sha256: &str| {
            let mut first = chunk("d.bin", b"hello", true);
            first.total_size = Some(size);
            first.sha256 = Some(sha256.to_owned());
            vec![first]
        };
        let good = sha256_hex(b"hello");
        let stored = upload(&storage, declared(5, &good.to_uppercase()), 100)
            .await
            .expect("matching declarations, digest in upper case");
        assert_eq!(stored.digests.sha256, Some(good.clone()));
        std::fs::remove_file(dir.path().join("d.bin")).expect("cleanup");

        let wrong_hash = sha256_hex(b"other");
        for (chunks, expected) in [
            (declared(6, &good), "declared total_size is 6 bytes but 5"),
            (declared(4, &good), "declared total_size is 4 bytes but 5"),
            (declared(5, &wrong_hash), "declared sha256 is"),
            (declared(5, "abc"), "sha256 must be 64 hexadecimal digits"),
            (
                declared(101, &good),
                "declared total_size is 101 bytes; the limit is 100",
            ),
        ] {
            let error = upload(&storage, chunks, 100).await.expect_err("refused");
            assert!(error.to_string().starts_with(expected), "{error}");
        }
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    }

    /// BLAKE3 declared on the first chunk, or announced there and declared on the last, is
    /// checked and reported, and SHA-256 is then not computed unless declared too; a wrong
    /// or missing declaration stores nothing.
    #[tokio::test]
    async fn blake3_declarations_are_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = StorageDir::open(dir.path()).expect("storage");
        let content = b"hello blake3";
        let good = blake3_hex(content);
        let with = |first: Option<&str>, last: Option<&str>| {
            let mut head = chunk("b.bin", &content[..5], false);
            head.blake3 = first.map(str::to_owned);
            let mut tail = chunk("b.bin", &content[5..], true);
            tail.blake3 = last.map(str::to_owned);
            vec![head, tail]
        };
        for (chunks, case) in [
            (with(Some(&good), None), "declared first"),
            (with(Some(""), Some(&good)), "announced, declared last"),
            (
                with(Some(&good.to_uppercase()), Some(&good)),
                "declared on both",
            ),
        ] {
            let stored = upload(&storage, chunks, 100).await.expect(case);
            assert_eq!(
                stored.digests.blake3.as_deref(),
                Some(good.as_str()),
                "{case}"
            );
            assert_eq!(stored.digests.sha256, None, "{case}: SHA-256 not computed");
            assert_eq!(
                std::fs::read(dir.path().join("b.bin")).expect("file"),
                content
            );
            std::fs::remove_file(dir.path().join("b.bin")).expect("cleanup");
        }

        // Both declared: both checked and reported.
        let mut both = with(Some(""), Some(&good));
        both[0].sha256 = Some(sha256_hex(content));
        let stored = upload(&storage, both, 100).await.expect("both digests");
        assert_eq!(stored.digests.sha256, Some(sha256_hex(content)));
        assert_eq!(stored.digests.blake3, Some(good.clone()));
        std::fs::remove_file(dir.path().join("b.bin")).expect("cleanup");

        let wrong = blake3_hex(b"something else");
        for (chunks, expected) in [
            (with(Some(&wrong), None), "declared blake3 is"),
            (with(Some(""), Some(&wrong)), "declared blake3 is"),
            (
                with(Some(""), None),
                "blake3 was announced on the first chunk",
            ),
            (
                with(None, Some(&good)),
                "blake3 on the last chunk must be announced",
            ),
            (
                with(Some(&good), Some(&wrong)),
                "blake3 was declared on the first",
            ),
            (
                with(Some("xyz"), None),
                "blake3 must be 64 hexadecimal digits",
            ),
        ] {
            let error = upload(&storage, chunks, 100).await.expect_err(expected);
            assert!(error.to_string().starts_with(expected), "{error}");
        }
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    }

    /// Uploads `chunks` then stalls for ever, or keeps sending empty chunks, with a short
    /// idle limit; returns the outcome and how long it took.
    async fn stalled_upload(
        storage: &StorageDir,
        empty_chunks_for_ever: bool,
    ) -> (Result<StoredUpload, StreamingError>, Duration) {
        let gauge = Gauge::default();
        let start = tokio_stream::iter(vec![Ok(chunk("stall.bin", b"some data", false))]);
        let tail: Pin<Box<dyn Stream<Item = Result<pb::FileChunk, Status>> + Send>> =
            if empty_chunks_for_ever {
                let (sender, receiver) = tokio::sync::mpsc::channel(1);
                tokio::spawn(async move {
                    while sender.send(Ok(chunk("", b"", false))).await.is_ok() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                });
                Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
            } else {
                Box::pin(tokio_stream::pending())
            };
        let started = tokio::time::Instant::now();
        let result = tokio::time::timeout(
            Duration::from_secs(20),
            receive_with_idle_limit(
                Box::pin(start.chain(tail)),
                storage,
                1000,
                gauge.enter(),
                Duration::from_millis(300),
            ),
        )
        .await
        .expect("the idle upload was never ended");
        gauge.wait_until(|count| *count == 0).await;
        (result, started.elapsed())
    }

    /// An upload that stops sending is ended with DEADLINE_EXCEEDED after the idle limit,
    /// and leaves no file behind.
    #[tokio::test]
    async fn stalled_upload_is_ended_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = StorageDir::open(dir.path()).expect("storage");
        let (result, took) = stalled_upload(&storage, false).await;
        let status = Status::from(result.expect_err("ended"));
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        assert!(took >= Duration::from_millis(250), "ended early: {took:?}");
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    }

    /// Empty chunks are not progress: an upload that sends only those is ended too.
    #[tokio::test]
    async fn empty_chunks_for_ever_are_ended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = StorageDir::open(dir.path()).expect("storage");
        let (result, _) = stalled_upload(&storage, true).await;
        let status = Status::from(result.expect_err("ended"));
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    }
}
