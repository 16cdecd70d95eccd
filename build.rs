//! Generates the gRPC code for `protos/*.proto` with the pure-Rust `protox` compiler, so a
//! machine with nothing but cargo builds the workspace, and writes the encoded file
//! descriptor set that the servers' reflection service publishes.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "protos/file_service.proto",
    "protos/random_service.proto",
    "protos/streaming_service.proto",
    "protos/auth_service.proto",
    "protos/logger_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=protos");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("cargo did not set OUT_DIR")?);

    let descriptors = protox::compile(PROTOS, ["protos"])?;
    fs::write(out_dir.join("descriptors.bin"), descriptors.encode_to_vec())?;

    tonic_prost_build::configure()
        // `bytes::Bytes` for every bytes field: upload chunks are handed on without copies.
        .bytes(".")
        // tonic-prost's codec with 1 KiB starting buffers instead of 8 KiB (src/codec.rs).
        .codec_path("crate::codec::LeanCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
