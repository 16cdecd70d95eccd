//! The protobuf codec every generated client and server uses: tonic-prost's own encoder and
//! decoder, with smaller starting buffers.
//!
//! tonic allocates an encode and a decode buffer for every call up front, 8 KiB each by
//! default, and keeps them for the call's lifetime. For a chat member, a log follower or a
//! stuck reader that is two buffers per stream held for hours, mostly for messages of a few
//! hundred bytes: about half of what a connected chat member costs the server. Starting at
//! 1 KiB, a buffer still grows to whatever a message needs (in 1 KiB steps, one reservation
//! per message), and streamed messages are still batched into writes of up to 32 KiB.
//! `grpc_bench run --scenario chat` measures the difference against a stock tonic server
//! (BENCHMARKS.md).
//!
//! The encoder also reserves each message's exact size, plus a little, before encoding
//! it. tonic writes the 5-byte frame header first, so a message as large as the last one
//! no longer fits the space the last one left, and `BytesMut` then doubles its buffer: a
//! chat member receiving 64 KiB messages held 128 KiB per encoded message instead of
//! 64 KiB. With the slack, a buffer is reused at its size; for a member that stops
//! reading, whose last two messages wait in hyper and h2, that halves what they hold
//! (`grpc_bench run --scenario chat-stuck`).

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, EncodeBuf, Encoder},
};
use tonic_prost::{ProstCodec, ProstDecoder};

/// Where each call's encode and decode buffers start.
const BUFFER_SIZE: usize = 1024;

/// How much of a stream's ready messages is batched into one write: tonic's default.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Room reserved beyond a message's own size: more than the next message's frame header,
/// so a buffer that held a message holds the next one of the same size without growing.
const RESERVE_SLACK: usize = 64;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

/// [`ProstCodec`] with 1 KiB starting buffers; build.rs names it as every service's codec.
#[derive(Debug, Clone, Copy)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = LeanEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        LeanEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(buffer_settings())
    }
}

/// Encodes a prost message after reserving its size plus [`RESERVE_SLACK`] (see the module
/// documentation); otherwise tonic-prost's encoder.
#[derive(Debug, Clone, Copy)]
pub struct LeanEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for LeanEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len().saturating_add(RESERVE_SLACK));
        item.encode(buf)
            .map_err(|error| Status::internal(format!("encoding a response: {error}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}
