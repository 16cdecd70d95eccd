//! Live sessions: a UUID per login, held until logout or expiry. Plain and synchronous; the
//! clock is a parameter so expiry is tested without waiting.
//!
//! Expiry is wall-clock time (`SystemTime`), not `Instant`: sessions are kept on disk (see
//! the outbox) and must still expire at the same moment after a restart.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, SystemTime},
};

use uuid::Uuid;

use crate::MAX_SESSION_TTL;

/// One logged-in session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Who logged in.
    pub username: String,
    /// When it stops being valid.
    pub expires_at: SystemTime,
}

/// All live sessions. A std mutex: every critical section is a map operation, never held
/// across an `.await`.
#[derive(Debug)]
pub struct SessionStore {
    sessions: Mutex<HashMap<Uuid, Session>>,
    ttl: Duration,
}

impl SessionStore {
    /// A store whose sessions last `ttl` from login, at most [`MAX_SESSION_TTL`] (the
    /// binary refuses more; a library caller's absurd value is capped rather than left to
    /// overflow the clock at the first login).
    pub fn new(ttl: Duration) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            ttl: ttl.min(MAX_SESSION_TTL),
        }
    }

    /// A new session for `username` starting at `now`: its id and contents, not yet kept
    /// (the caller records it durably first, then [`SessionStore::insert`]s it).
    pub fn issue(&self, username: &str, now: SystemTime) -> (Uuid, Session) {
        let session = Session {
            username: username.to_owned(),
            expires_at: now + self.ttl,
        };
        (Uuid::new_v4(), session)
    }

    /// Keeps a session (a new one, or one loaded from disk at start).
    pub fn insert(&self, id: Uuid, session: Session) {
        let mut sessions = self.lock();
        sessions.insert(id, session);
        live_gauge(sessions.len());
    }

    /// The live session `id`, if any at `now`.
    pub fn get(&self, id: &Uuid, now: SystemTime) -> Option<Session> {
        self.lock()
            .get(id)
            .filter(|session| session.expires_at > now)
            .cloned()
    }

    /// Ends session `id`, returning it if it was live at `now`.
    pub fn end(&self, id: &Uuid, now: SystemTime) -> Option<Session> {
        let mut sessions = self.lock();
        let session = sessions.remove(id);
        live_gauge(sessions.len());
        session.filter(|session| session.expires_at > now)
    }

    /// Removes every session expired at `now`; returns how many.
    pub fn sweep(&self, now: SystemTime) -> usize {
        let mut sessions = self.lock();
        let before = sessions.len();
        sessions.retain(|_, session| session.expires_at > now);
        grpc_suite::metrics::AUTH_SESSIONS_LIVE.set(sessions.len() as i64);
        before - sessions.len()
    }

    /// Sessions held (live or not yet swept).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Session>> {
        // A panic while holding the lock cannot leave the map half-updated (every operation
        // is a single map call), so a poisoned lock is still usable.
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The operator's count of sessions held (live, or expired and not yet swept).
fn live_gauge(held: usize) {
    grpc_suite::metrics::AUTH_SESSIONS_LIVE.set(i64::try_from(held).unwrap_or(i64::MAX));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(store: &SessionStore, username: &str, now: SystemTime) -> Uuid {
        let (id, session) = store.issue(username, now);
        store.insert(id, session);
        id
    }

    /// A session ends once, with its username; a second logout finds nothing.
    #[test]
    fn start_then_end_once() {
        let store = SessionStore::new(Duration::from_secs(60));
        let now = SystemTime::now();
        let id = start(&store, "alice", now);
        assert_eq!(
            store.get(&id, now).map(|s| s.username).as_deref(),
            Some("alice")
        );
        assert_eq!(
            store.end(&id, now).map(|s| s.username).as_deref(),
            Some("alice")
        );
        assert_eq!(store.end(&id, now), None);
        assert_eq!(store.get(&id, now), None);
        assert_eq!(store.end(&Uuid::new_v4(), now), None);
    }

    /// Past its lifetime a session is unknown to validation and logout, and removed by a
    /// sweep.
    #[test]
    fn sessions_expire() {
        let store = SessionStore::new(Duration::from_secs(60));
        let now = SystemTime::now();
        let expired = start(&store, "alice", now);
        let live = start(&store, "bob", now + Duration::from_secs(30));
        let later = now + Duration::from_secs(61);
        assert_eq!(store.get(&expired, later), None);
        assert_eq!(store.end(&expired, later), None);
        let _stale = start(&store, "carol", now);
        assert_eq!(store.sweep(later), 1, "carol's session expired");
        assert_eq!(store.len(), 1);
        assert_eq!(
            store.end(&live, later).map(|s| s.username).as_deref(),
            Some("bob")
        );
    }

    /// An absurd lifetime is capped, so the first login cannot overflow the clock.
    #[test]
    fn huge_lifetime_does_not_overflow() {
        let store = SessionStore::new(Duration::MAX);
        let now = SystemTime::now();
        let id = start(&store, "alice", now);
        let a_year_later = now + Duration::from_secs(365 * 24 * 60 * 60);
        assert!(
            store.get(&id, a_year_later).is_some(),
            "still live a year later"
        );
    }
}
