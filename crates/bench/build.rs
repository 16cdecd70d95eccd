//! Generates the file and streaming services a second time, for the bare reference server
//! only ([`bare`](src/bare.rs)), with tonic's stock codec: the workspace's own generated
//! code (grpc_suite) uses a codec with smaller buffers, and the reference must be what
//! plain tonic costs.

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=../../protos");
    let descriptors = protox::compile(
        ["file_service.proto", "streaming_service.proto"],
        ["../../protos"],
    )?;
    tonic_prost_build::configure()
        .bytes(".")
        .build_client(false)
        .compile_fds(descriptors)?;
    Ok(())
}
