//! Checking requests before they reach the store: the limits on each field, the timestamp
//! format, and what a query's `limit` and a follow's `backlog` mean.

use chrono::NaiveDateTime;
use grpc_suite::logger as pb;

use crate::{LoggerError, store::NewEntry, store::TIMESTAMP_FORMAT};

/// The longest event type accepted, in characters.
pub const MAX_EVENT_TYPE_CHARS: usize = 64;
/// The largest details accepted, in bytes: 64 KiB.
pub const MAX_DETAILS_BYTES: usize = 64 * 1024;
/// The longest event id accepted, in characters. A UUID is 36; the limit leaves room for
/// other schemes while keeping the unique index small.
pub const MAX_EVENT_ID_CHARS: usize = 128;
/// The rows a query returns when it asks for 0 (the contract's default).
pub const DEFAULT_QUERY_LIMIT: u32 = 20;

/// Turns a LogRequest into an entry to store, with `now` as the timestamp when none is given.
pub fn new_entry(request: pb::LogRequest, now: NaiveDateTime) -> Result<NewEntry, LoggerError> {
    let pb::LogRequest {
        event_type,
        details,
        timestamp,
        event_id,
    } = request;
    if event_type.is_empty() {
        return Err(LoggerError::EmptyEventType);
    }
    let chars = event_type.chars().count();
    if chars > MAX_EVENT_TYPE_CHARS {
        return Err(LoggerError::EventTypeTooLong {
            chars,
            limit: MAX_EVENT_TYPE_CHARS,
        });
    }
    if details.len() > MAX_DETAILS_BYTES {
        return Err(LoggerError::DetailsTooLong {
            bytes: details.len(),
            limit: MAX_DETAILS_BYTES,
        });
    }
    let event_id = if event_id.is_empty() {
        None
    } else {
        let chars = event_id.chars().count();
        if chars > MAX_EVENT_ID_CHARS {
            return Err(LoggerError::EventIdTooLong {
                chars,
                limit: MAX_EVENT_ID_CHARS,
            });
        }
        Some(event_id)
    };
    let when = if timestamp.is_empty() {
        now
    } else {
        NaiveDateTime::parse_from_str(&timestamp, TIMESTAMP_FORMAT)
            .map_err(|_| LoggerError::BadTimestamp { value: timestamp })?
    };
    Ok(NewEntry {
        event_type,
        details,
        // Stored normalised (always three decimals), so text order is time order.
        timestamp: when.format(TIMESTAMP_FORMAT).to_string(),
        event_id,
    })
}

/// The row count for a query's `limit`: 0 means the default, more than `max` means `max`.
pub fn query_limit(limit: i32, max: u32) -> Result<u32, LoggerError> {
    let limit = u32::try_from(limit).map_err(|_| LoggerError::Negative {
        field: "limit",
        value: limit,
    })?;
    let wanted = if limit == 0 {
        DEFAULT_QUERY_LIMIT
    } else {
        limit
    };
    Ok(wanted.min(max))
}

/// The backlog rows a follow starts with: as asked, up to `max`.
pub fn backlog(backlog: i32, max: u32) -> Result<u32, LoggerError> {
    let backlog = u32::try_from(backlog).map_err(|_| LoggerError::Negative {
        field: "backlog",
        value: backlog,
    })?;
    Ok(backlog.min(max))
}

/// An empty type filter means all types.
pub fn type_filter(event_type: String) -> Option<String> {
    Some(event_type).filter(|event_type| !event_type.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> NaiveDateTime {
        NaiveDateTime::parse_from_str("2024-05-01 10:00:00.5", "%Y-%m-%d %H:%M:%S%.f")
            .expect("valid")
    }

    fn request(event_type: &str, details: &str, timestamp: &str) -> pb::LogRequest {
        pb::LogRequest {
            event_type: event_type.to_owned(),
            details: details.to_owned(),
            timestamp: timestamp.to_owned(),
            event_id: String::new(),
        }
    }

    /// Limits are inclusive: 64 characters and 64 KiB pass, one more is refused.
    #[test]
    fn limits_are_inclusive() {
        let at_limit = request(&"é".repeat(64), &"d".repeat(MAX_DETAILS_BYTES), "");
        assert!(new_entry(at_limit, now()).is_ok());
        let long_type = request(&"t".repeat(65), "", "");
        assert!(matches!(
            new_entry(long_type, now()),
            Err(LoggerError::EventTypeTooLong {
                chars: 65,
                limit: 64
            })
        ));
        let long_details = request("T", &"d".repeat(MAX_DETAILS_BYTES + 1), "");
        assert!(matches!(
            new_entry(long_details, now()),
            Err(LoggerError::DetailsTooLong { .. })
        ));
        assert!(matches!(
            new_entry(request("", "x", ""), now()),
            Err(LoggerError::EmptyEventType)
        ));
    }

    /// An empty timestamp is now; a given one is kept (normalised); a bad one is refused.
    #[test]
    fn timestamps() {
        let entry = new_entry(request("T", "", ""), now()).expect("valid");
        assert_eq!(entry.timestamp, "2024-05-01 10:00:00.500");
        let entry = new_entry(request("T", "", "2023-01-02 03:04:05.678"), now()).expect("valid");
        assert_eq!(entry.timestamp, "2023-01-02 03:04:05.678");
        for bad in [
            "yesterday",
            "2023-01-02T03:04:05.678",
            "2023-13-02 03:04:05.678",
        ] {
            assert!(
                matches!(
                    new_entry(request("T", "", bad), now()),
                    Err(LoggerError::BadTimestamp { .. })
                ),
                "{bad}"
            );
        }
    }

    /// 0 is the default, big is capped, negative is refused.
    #[test]
    fn query_limits() {
        assert_eq!(query_limit(0, 1000).expect("ok"), 20);
        assert_eq!(query_limit(0, 5).expect("ok"), 5);
        assert_eq!(query_limit(7, 1000).expect("ok"), 7);
        assert_eq!(query_limit(i32::MAX, 1000).expect("ok"), 1000);
        assert!(query_limit(-1, 1000).is_err());
        assert_eq!(backlog(0, 1000).expect("ok"), 0);
        assert!(backlog(-3, 1000).is_err());
    }
}
