//! The time formats of the wire contract (what the old clients parse), defined once, as
//! chrono `strftime` patterns. Every service formats and parses its timestamps with these,
//! so a format the old clients rely on cannot drift in one crate alone.

/// The logger's `LogRequest.timestamp`, `LogEntry.timestamp` and `logs.timestamp` column
/// (and so the auth service's audit events): local time to the millisecond,
/// `2025-01-31 14:25:30.123`.
pub const LOG_TIMESTAMP: &str = "%Y-%m-%d %H:%M:%S%.3f";

/// The server's local time as GetServerTime and StreamServerTime send it,
/// `2025-01-31 14:25:30`.
pub const SERVER_TIME: &str = "%Y-%m-%d %H:%M:%S";

/// A chat message's `timestamp`, wall-clock time of day, `14:25:30`.
pub const CHAT_TIME: &str = "%H:%M:%S";

/// A `RandomNumberResponse.timestamp`, time of day to the millisecond, `14:25:30.123`.
pub const RANDOM_TIMESTAMP: &str = "%H:%M:%S%.3f";

/// `ValidateSessionResponse.expires_at`: RFC 3339 in UTC to the second,
/// `2025-01-31T14:25:30Z`.
pub const SESSION_EXPIRY: &str = "%Y-%m-%dT%H:%M:%SZ";
