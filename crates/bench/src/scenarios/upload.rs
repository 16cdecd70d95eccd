//! One client-streamed upload (StreamUploadFile) of `upload_bytes` in `chunk_bytes` chunks,
//! sent the way `streaming_client` sends a file (size and SHA-256 declared on the first
//! chunk, an empty last chunk), timed from the call to the server's answer.

use std::time::Instant;

use anyhow::Context as _;
use bytes::Bytes;
use grpc_suite::streaming as pb;
use pb::streaming_service_client::StreamingServiceClient;
use sha2::{Digest as _, Sha256};

use super::{CALL_TIMEOUT, Context, add_server_figures, tls::Transport};
use crate::{
    report::{Measurement, mib},
    servers::{Server, ServerKind},
};

/// Uploads one file and reports MB/s (10^6 bytes per second) and the server's memory growth.
pub async fn run(context: &Context<'_>) -> anyhow::Result<Measurement> {
    measure(context, &Transport::Plaintext, "upload").await
}

/// The upload over `transport`, reported as scenario `name`.
pub async fn measure(
    context: &Context<'_>,
    transport: &Transport,
    name: &str,
) -> anyhow::Result<Measurement> {
    let settings = context.settings;
    let total = settings.upload_bytes;
    let chunk_len = settings.chunk_bytes.max(1);
    let chunk = pattern(chunk_len);
    let full_chunks = total / chunk_len as u64;
    let tail_len = usize::try_from(total % chunk_len as u64).context("chunk size")?;
    // The declared digest is computed before the clock starts: the client's own hashing is
    // not what this scenario measures (the real client also hashes before sending).
    let sha256 = {
        let mut hasher = Sha256::new();
        for _ in 0..full_chunks {
            hasher.update(&chunk);
        }
        hasher.update(&chunk[..tail_len]);
        hex::encode(hasher.finalize())
    };

    let server = Server::start(
        ServerKind::Streaming,
        &context.server_dir("streaming"),
        &transport.server_flags(),
    )
    .await?;
    let mut client = StreamingServiceClient::new(transport.connect(&transport.url(&server)).await?);
    let tail = (tail_len > 0).then(|| chunk.slice(..tail_len));
    let pieces = (0..full_chunks).map(move |_| chunk.clone()).chain(tail);
    let mut first = true;
    let chunks = pieces
        .map(move |data| {
            let declared = std::mem::take(&mut first);
            pb::FileChunk {
                filename: "bench_upload.bin".to_owned(),
                chunk_data: data,
                is_last_chunk: false,
                total_size: declared.then_some(total),
                sha256: declared.then(|| sha256.clone()),
            }
        })
        .chain(std::iter::once(pb::FileChunk {
            filename: "bench_upload.bin".to_owned(),
            chunk_data: Bytes::new(),
            is_last_chunk: true,
            total_size: None,
            sha256: None,
        }));

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
    anyhow::ensure!(
        answer.success && answer.bytes_written == total,
        "upload answered {answer:?}"
    );

    let memory = server.memory()?;
    let mut measurement = Measurement::new(name);
    measurement
        .set("size_mib", mib(total / 1024))
        .set("chunk_kib", chunk_len as f64 / 1024.0)
        .set(
            "mb_per_s",
            total as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9),
        )
        .set("seconds", elapsed.as_secs_f64())
        .set(
            "rss_growth_mib",
            mib(memory.peak_kib.saturating_sub(server.idle.rss_kib)),
        );
    add_server_figures(&mut measurement, "", &server)?;
    server.stop();
    Ok(measurement)
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
