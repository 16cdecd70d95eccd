//! Live counts of what the service is doing (time streams, uploads, chat members), so
//! tests and operators can observe that a stream's work really stopped when its client went.
//!
//! Each count is a [`Gauge`] raised by a [`GaugeGuard`] for exactly as long as the work it
//! stands for is alive: the guard lives inside the task or file it counts, so the gauge
//! falls back only once that task has ended or that file has been cleaned up.

pub use grpc_suite::gauge::{Gauge, GaugeGuard};

/// The service's gauges; cloning shares them. Uploads and chat members are exported to
/// Prometheus too (`uploads_in_flight{service="streaming"}`, `chat_members_connected`).
#[derive(Debug, Clone)]
pub struct Activity {
    /// Time streams whose producer task is still running.
    pub time_streams: Gauge,
    /// Uploads in progress, counting until their temporary file is gone or committed.
    pub uploads: Gauge,
    /// Chat streams whose inbound reader is still running.
    pub chat_members: Gauge,
}

impl Default for Activity {
    fn default() -> Self {
        use grpc_suite::metrics::{CHAT_MEMBERS, UPLOADS_IN_FLIGHT};
        Self {
            time_streams: Gauge::default(),
            uploads: Gauge::exported(UPLOADS_IN_FLIGHT.with_label_values(&["streaming"])),
            chat_members: Gauge::exported(CHAT_MEMBERS.clone()),
        }
    }
}
