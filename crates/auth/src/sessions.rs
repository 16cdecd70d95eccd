//! Live sessions: a UUID per login, held until logout or expiry. Plain and synchronous; the
//! clock is a parameter so expiry is tested without waiting.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::MAX_SESSION_TTL;
use uuid::Uuid;

/// One logged-in session.
#[derive(Debug, Clone)]
struct Session {
    username: String,
    expires_at: Instant,
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

    /// Starts a session for `username` and returns its id.
    pub fn start(&self, username: &str, now: Instant) -> Uuid {
        let id = Uuid::new_v4();
        let session = Session {
            username: username.to_owned(),
            expires_at: now + self.ttl,
        };
        self.lock().insert(id, session);
        id
    }

    /// Ends a live session, returning its username; `None` for an unknown or expired one
    /// (an expired one is removed either way).
    pub fn end(&self, id: &Uuid, now: Instant) -> Option<String> {
        let session = self.lock().remove(id)?;
        (session.expires_at > now).then_some(session.username)
    }

    /// Drops expired sessions, so abandoned logins do not accumulate; returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut sessions = self.lock();
        let before = sessions.len();
        sessions.retain(|_, session| session.expires_at > now);
        before - sessions.len()
    }

    /// How many sessions are held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Session>> {
        // A panic while holding this lock cannot leave the map half-updated (each
        // operation is one map call), so a poisoned lock is safe to keep using.
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session ends once, with its username; a second logout finds nothing.
    #[test]
    fn start_then_end_once() {
        let store = SessionStore::new(Duration::from_secs(60));
        let now = Instant::now();
        let id = store.start("alice", now);
        assert_eq!(store.end(&id, now).as_deref(), Some("alice"));
        assert_eq!(store.end(&id, now), None);
        assert_eq!(store.end(&Uuid::new_v4(), now), None);
    }

    /// Past its lifetime a session is unknown to logout and removed by a sweep.
    #[test]
    fn sessions_expire() {
        let store = SessionStore::new(Duration::from_secs(60));
        let now = Instant::now();
        let expired = store.start("alice", now);
        let live = store.start("bob", now + Duration::from_secs(30));
        let later = now + Duration::from_secs(61);
        assert_eq!(store.end(&expired, later), None);
        let stale = store.start("carol", now);
        assert_eq!(store.sweep(later), 1, "carol's session expired");
        assert_eq!(store.len(), 1);
        assert_eq!(store.end(&live, later).as_deref(), Some("bob"));
        let _ = stale;
    }

    /// An absurd lifetime is capped, so the first login cannot overflow the clock.
    #[test]
    fn huge_lifetime_does_not_overflow() {
        let store = SessionStore::new(Duration::MAX);
        let now = Instant::now();
        let id = store.start("alice", now);
        assert_eq!(
            store.end(&id, now + Duration::from_secs(365 * 24 * 60 * 60)).as_deref(),
            Some("alice"),
            "a year later the session is still live"
        );
    }
}
