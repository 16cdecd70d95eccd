//! The shared crate of the workspace: the code generated from `protos/`, and the small,
//! closed set of plumbing every server and client binary shares.
//!
//! - [`file`], [`random`], [`streaming`], [`auth`], [`logger`]: generated messages, clients
//!   and servers, one module per proto file. Refer to them by path
//!   (`use grpc_suite::file as pb;`).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors the reflection service publishes.
//! - [`server`]: serving a set of services with health, reflection, a decode-limit status
//!   fix-up and graceful shutdown.
//! - [`balance`]: spreading a client's calls over replicas (several addresses, or a name
//!   with several DNS records), retrying on another replica where that is safe.
//! - [`args`]: the flags every server and every client takes, defined once.
//! - [`cli`]: what every binary's `main` shares: tracing setup, exit codes, connecting.
//! - [`codec`]: the protobuf codec of every generated client and server (smaller buffers).
//! - [`metrics`]: Prometheus metrics (per call and per service) and their `/metrics` endpoint.
//! - [`gauge`]: a live, awaitable count of in-flight work, for observing that it stopped.
//! - [`session_guard`]: `--auth-url`: calls need a live session, checked with the auth service.
//! - [`tls`]: checked TLS files for servers and clients, and the endpoint every client dials.
//! - [`storage`]: the rules for client-supplied file names and atomic file writes, used by
//!   the file and streaming services alike.
//! - [`group_commit`]: one writer thread that commits queued requests in batches and
//!   answers each caller after the commit, for the logger's and auth's SQLite files.
//! - [`wire_time`]: the contract's timestamp formats, defined once.

pub mod args;
pub mod balance;
pub mod cli;
pub mod codec;
pub mod gauge;
pub mod group_commit;
pub mod log_writer;
pub mod metrics;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod server;
pub mod session_guard;
pub mod size;
pub mod storage;
pub mod tls;
pub mod wire_time;

/// Generated code for `protos/file_service.proto` (`package file;`).
pub mod file {
    tonic::include_proto!("file");

    /// The port the old system served this on, and ours by default.
    pub const DEFAULT_PORT: u16 = 50051;
}

/// Generated code for `protos/random_service.proto` (`package random;`).
pub mod random {
    tonic::include_proto!("random");

    /// The port the old system served this on, and ours by default.
    pub const DEFAULT_PORT: u16 = 50052;
}

/// Generated code for `protos/streaming_service.proto` (`package streaming;`).
pub mod streaming {
    tonic::include_proto!("streaming");

    /// The port the old system served this on, and ours by default.
    pub const DEFAULT_PORT: u16 = 50053;
}

/// The auth and logger protos declare no package, so prost writes both into one module;
/// [`auth`] and [`logger`] re-export each file's part of it.
mod unpackaged {
    tonic::include_proto!("_");
}

/// Generated code for `protos/auth_service.proto` (no package: `/AuthService/<Method>`).
pub mod auth {
    pub use super::unpackaged::{
        AuthResponse, LoginRequest, LogoutRequest, ValidateSessionRequest, ValidateSessionResponse,
        auth_service_client, auth_service_server,
    };

    /// The port the old system served this on, and ours by default.
    pub const DEFAULT_PORT: u16 = 50054;
}

/// Generated code for `protos/logger_service.proto` (no package: `/LoggerService/<Method>`).
pub mod logger {
    pub use super::unpackaged::{
        LogEntry, LogFollowRequest, LogQueryRequest, LogQueryResponse, LogRequest, LogResponse,
        logger_service_client, logger_service_server,
    };

    /// The port the old system served this on, and ours by default.
    pub const DEFAULT_PORT: u16 = 50055;
}

/// The encoded `FileDescriptorSet` of every proto file, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));
