//! Client-streamed uploads (StreamUploadFile) of `upload_bytes` in `chunk_bytes` chunks,
//! each timed from the call to the server's answer, in one run:
//!
//! 1. `bare_sync_*`: the bare tonic sink (`grpc_bench serve bare --upload-dir`), which
//!    writes each chunk to a file as it arrives and syncs once at the end: the same
//!    durability as ours, none of the checks;
//! 2. ours: `streaming_server`, the client announcing BLAKE3 on the first chunk and
//!    declaring it on the last, hashing while it sends, as `streaming_client` does;
//! 3. `bare_nosync_*`: the bare sink without the sync (page cache only, like the old
//!    Python server);
//! 4. `client_bin_*` (plaintext only): the real `streaming_client upload` sending a file
//!    of the same size from the page cache to a fresh `streaming_server`, start to exit.
//!
//! An untimed upload to the bare sink comes first, so that none of the timed ones is the
//! first to fill fresh page-cache pages (see `measure`).
//!
//! `ratio` is ours / the bare durable sink. CPU seconds per GiB are measured for each side
//! separately: the server's from its `/proc/<pid>/stat`, the client's from this process's
//! own (nothing else runs in it meanwhile) or the client binary's.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use bytes::Bytes;
use grpc_suite::streaming as pb;
use pb::streaming_service_client::StreamingServiceClient;

use super::{CALL_TIMEOUT, Context, add_server_figures, tls::Transport};
use crate::{
    cpu::{ProcessStat, seconds_per_gib},
    report::{Measurement, mib},
    servers::{Server, ServerKind},
};

/// The stored file's name on every server.
const UPLOAD_NAME: &str = "bench_upload.bin";

/// Uploads one file to each server and reports MB/s (10^6 bytes per second), the ratios,
/// CPU per GiB and our server's memory growth.
pub async fn run(context: &Context<'_>) -> anyhow::Result<Measurement> {
    measure(context, &Transport::Plaintext, "upload").await
}

/// What one upload took.
struct Timed {
    elapsed: Duration,
    /// This process's CPU time during the call (the client side).
    client_cpu: Duration,
    /// The server's CPU time during the call.
    server_cpu: Duration,
}

/// The upload over `transport`, reported as scenario `name`.
pub async fn measure(
    context: &Context<'_>,
    transport: &Transport,
    name: &str,
) -> anyhow::Result<Measurement> {
    let settings = context.settings;
    let total = settings.upload_bytes;
    let chunk = pattern(settings.chunk_bytes.max(1));
    let rate = |timed: &Timed| total as f64 / 1e6 / timed.elapsed.as_secs_f64().max(1e-9);
    let mut measurement = Measurement::new(name);
    measurement
        .set("size_mib", mib(total / 1024))
        .set("chunk_kib", chunk.len() as f64 / 1024.0);

    // Untimed. On this kind of VM the host backs guest memory lazily and takes back what
    // the guest frees, so the first upload after a pause pays for fresh page-cache pages
    // (measured: 3-4 server CPU s/GiB instead of 0.7-1.2), whichever server goes first.
    // One throwaway upload makes the timed ones start alike.
    bare_upload(context, transport, &chunk, total, false).await?;

    let bare_sync = bare_upload(context, transport, &chunk, total, true).await?;
    measurement.set("bare_sync_mb_per_s", rate(&bare_sync));

    let server = Server::start(
        ServerKind::Streaming,
        &context.server_dir("streaming"),
        &transport.server_flags(),
    )
    .await?;
    let channel = transport.connect(&transport.url(&server)).await?;
    let ours = timed_upload(&server, channel, our_chunks(chunk.clone(), total)).await?;
    let memory = server.memory()?;
    measurement
        .set("mb_per_s", rate(&ours))
        .set("seconds", ours.elapsed.as_secs_f64())
        .set("ratio", speed_ratio(&ours, &bare_sync))
        .set(
            "server_cpu_s_per_gib",
            seconds_per_gib(ours.server_cpu, total),
        )
        .set(
            "client_cpu_s_per_gib",
            seconds_per_gib(ours.client_cpu, total),
        )
        .set(
            "rss_growth_mib",
            mib(memory.peak_kib.saturating_sub(server.idle.rss_kib)),
        );
    add_server_figures(&mut measurement, "", &server)?;
    server.stop();
    scrub(&context.server_dir("streaming"));

    let bare_nosync = bare_upload(context, transport, &chunk, total, false).await?;
    measurement
        .set(
            "bare_sync_server_cpu_s_per_gib",
            seconds_per_gib(bare_sync.server_cpu, total),
        )
        .set(
            "bare_sync_client_cpu_s_per_gib",
            seconds_per_gib(bare_sync.client_cpu, total),
        )
        .set("bare_nosync_mb_per_s", rate(&bare_nosync))
        .set("nosync_ratio", speed_ratio(&ours, &bare_nosync));

    if matches!(transport, Transport::Plaintext) {
        let binary = client_binary_upload(context, &chunk, total).await?;
        measurement
            .set("client_bin_mb_per_s", rate(&binary))
            .set(
                "client_bin_cpu_s_per_gib",
                seconds_per_gib(binary.client_cpu, total),
            )
            .set(
                "client_bin_server_cpu_s_per_gib",
                seconds_per_gib(binary.server_cpu, total),
            );
    }
    Ok(measurement)
}

/// How many times faster `ours` moved the same bytes than `reference`.
fn speed_ratio(ours: &Timed, reference: &Timed) -> f64 {
    reference.elapsed.as_secs_f64() / ours.elapsed.as_secs_f64().max(1e-9)
}

/// One upload of `chunks` over `channel` to `server`, timed, with both sides' CPU time.
async fn timed_upload(
    server: &Server,
    channel: tonic::transport::Channel,
    chunks: impl Iterator<Item = pb::FileChunk> + Send + 'static,
) -> anyhow::Result<Timed> {
    let mut client = StreamingServiceClient::new(channel);
    let (client_before, server_before) = (ProcessStat::of(None)?.cpu, server.cpu()?);
    let started = Instant::now();
    let answer = tokio::time::timeout(
        CALL_TIMEOUT * 4,
        client.stream_upload_file(tokio_stream::iter(chunks)),
    )
    .await
    .context("the upload did not finish within 2 minutes")?
    .context("StreamUploadFile")?
    .into_inner();
    let elapsed = started.elapsed();
    let (client_after, server_after) = (ProcessStat::of(None)?.cpu, server.cpu()?);
    anyhow::ensure!(answer.success, "upload answered {answer:?}");
    Ok(Timed {
        elapsed,
        client_cpu: client_after.saturating_sub(client_before),
        server_cpu: server_after.saturating_sub(server_before),
    })
}

/// The upload to a fresh bare sink, synced at the end or not.
async fn bare_upload(
    context: &Context<'_>,
    transport: &Transport,
    chunk: &Bytes,
    total: u64,
    sync: bool,
) -> anyhow::Result<Timed> {
    let dir = context.server_dir(if sync { "bare-sync" } else { "bare-nosync" });
    let uploads = dir.join("uploads");
    std::fs::create_dir_all(&uploads).with_context(|| format!("creating {}", uploads.display()))?;
    let uploads_flag = uploads.display().to_string();
    let mut flags = transport.server_flags();
    flags.extend(["--upload-dir", &uploads_flag]);
    if !sync {
        flags.push("--no-sync");
    }
    let server = Server::start(ServerKind::Bare, &dir, &flags).await?;
    let channel = transport.connect(&transport.url(&server)).await?;
    let timed = timed_upload(&server, channel, bare_chunks(chunk.clone(), total)).await;
    server.stop();
    // Deleting the file drops its dirty pages, so they do not slow the next upload.
    scrub(&dir);
    timed
}

/// The real `streaming_client upload`, from start to exit, sending a file of `total`
/// bytes (written and synced beforehand, so it is read from the page cache) to a fresh
/// `streaming_server`. Its CPU time is read from `/proc` once it has exited but before it
/// is reaped.
async fn client_binary_upload(
    context: &Context<'_>,
    chunk: &Bytes,
    total: u64,
) -> anyhow::Result<Timed> {
    let dir = context.server_dir("client-bin");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let source = dir.join("source.bin");
    write_source(&source, chunk, total)?;
    let server = Server::start(ServerKind::Streaming, &dir.join("server"), &[]).await?;
    let binary = ServerKind::Streaming
        .binary()?
        .with_file_name(format!("streaming_client{}", std::env::consts::EXE_SUFFIX));
    let server_before = server.cpu()?;
    let started = Instant::now();
    let mut child = std::process::Command::new(&binary)
        .args(["--server", &server.url(), "upload"])
        .arg(&source)
        .args(["--as", UPLOAD_NAME])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = child.id();
    let deadline = started + CALL_TIMEOUT * 4;
    let client_cpu = loop {
        let stat = ProcessStat::of(Some(pid))?;
        if stat.state == 'Z' {
            break stat.cpu;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("streaming_client upload did not finish within 2 minutes");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let elapsed = started.elapsed();
    let server_cpu = server.cpu()?.saturating_sub(server_before);
    let status = child.wait().context("reaping streaming_client")?;
    server.stop();
    scrub(&dir);
    anyhow::ensure!(status.success(), "streaming_client upload failed: {status}");
    Ok(Timed {
        elapsed,
        client_cpu,
        server_cpu,
    })
}

/// Writes `total` bytes of `chunk` repeated to `path` and syncs it.
fn write_source(path: &Path, chunk: &Bytes, total: u64) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut left = total;
    while left > 0 {
        let take = usize::try_from(left.min(chunk.len() as u64)).context("chunk size")?;
        file.write_all(&chunk[..take])?;
        left -= take as u64;
    }
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))
}

/// Removes a server's folder after its upload.
fn scrub(dir: &Path) {
    super::remove_dir(dir);
}

/// `total` bytes as `chunk`-sized pieces (the last one shorter).
fn pieces(chunk: Bytes, total: u64) -> impl Iterator<Item = Bytes> + Send + 'static {
    let mut sent = 0u64;
    std::iter::from_fn(move || {
        let left = total - sent;
        let len = usize::try_from(left.min(chunk.len() as u64)).ok()?;
        (len > 0).then(|| {
            sent += len as u64;
            chunk.slice(..len)
        })
    })
}

/// Our upload as `streaming_client` sends it: the size declared and BLAKE3 announced on
/// the first chunk, each chunk hashed as it is sent, and the digest declared on an empty
/// last chunk.
fn our_chunks(chunk: Bytes, total: u64) -> impl Iterator<Item = pb::FileChunk> + Send + 'static {
    let mut content = pieces(chunk, total);
    // `None` once the last chunk is out.
    let mut hasher = Some(blake3::Hasher::new());
    let mut first = true;
    std::iter::from_fn(move || {
        let running = hasher.as_mut()?;
        let declared = std::mem::take(&mut first);
        let (data, last, blake3) = match content.next() {
            Some(data) => {
                running.update(&data);
                (data, false, declared.then(String::new))
            }
            None => {
                let digest = hasher.take()?.finalize().to_hex().to_string();
                (Bytes::new(), true, Some(digest))
            }
        };
        Some(pb::FileChunk {
            filename: UPLOAD_NAME.to_owned(),
            chunk_data: data,
            is_last_chunk: last,
            total_size: declared.then_some(total),
            sha256: None,
            blake3,
        })
    })
}

/// The bare sink's upload: the chunks and a last marker, no declarations.
fn bare_chunks(chunk: Bytes, total: u64) -> impl Iterator<Item = pb::FileChunk> + Send + 'static {
    pieces(chunk, total)
        .map(|data| pb::FileChunk {
            filename: UPLOAD_NAME.to_owned(),
            chunk_data: data,
            ..Default::default()
        })
        .chain(std::iter::once(pb::FileChunk {
            filename: UPLOAD_NAME.to_owned(),
            is_last_chunk: true,
            ..Default::default()
        }))
}

/// `len` bytes of a non-repeating-looking pattern (nothing on the path compresses, but a
/// constant buffer could hide a bug that writes the wrong chunk).
fn pattern(len: usize) -> Bytes {
    let mut state: u32 = 0x9E37_79B9;
    (0..len)
        .map(|_| {
            // xorshift32: cheap, deterministic filler.
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state.to_le_bytes()[0]
        })
        .collect::<Vec<u8>>()
        .into()
}
