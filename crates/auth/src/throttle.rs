//! Failed-login throttling, so password guessing costs the guesser time and costs the
//! server nothing: a throttled login is refused before any password check.
//!
//! Failures are counted per client address, and per user *at* that address. A flood from
//! one address therefore throttles that address, and that user from that address, but
//! never keeps the user out from anywhere else (a per-user count across all addresses would
//! let anyone lock any account). The price: guesses spread over many addresses are limited
//! only per address; the bounded password-check pool keeps those from exhausting the CPU.
//!
//! Plain and synchronous; the clock is a parameter so tests need not wait.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// The bounds, as plain values (the binary builds them from flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failed logins for one user from one address within `window` before that pair is
    /// throttled.
    pub failures_per_user: u32,
    /// Failed logins from one address, any users, within `window` before the address is
    /// throttled.
    pub failures_per_address: u32,
    /// How long failures are remembered, and how long a throttle lasts.
    pub window: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            failures_per_user: 5,
            failures_per_address: 20,
            window: Duration::from_secs(60),
        }
    }
}

/// Addresses and pairs remembered at most; past it, forgotten entries are dropped first, so
/// a spray of addresses cannot grow memory without bound.
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Address(IpAddr),
    UserAtAddress(String, IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    failures: u32,
    window_start: Instant,
    throttled_until: Option<Instant>,
    /// Whether this throttle was already reported (LOGIN_THROTTLED once per burst).
    reported: bool,
}

/// A refused login: when to retry, and whether this is the first refusal of the burst (so
/// the audit log gets one LOGIN_THROTTLED, not one per try).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// How long until the throttle lifts.
    pub retry_after: Duration,
    /// True for the first refusal since the throttle began.
    pub first_of_burst: bool,
}

/// The failure counts. A std mutex: every critical section is a few map operations, never
/// held across an `.await`.
#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    buckets: Mutex<HashMap<Key, Bucket>>,
}

impl Throttle {
    /// No failures yet.
    pub fn new(config: ThrottleConfig) -> Self {
        Self {
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Refuses a login of `username` from `address` at `now` while either its address or
    /// the pair is throttled.
    pub fn check(&self, username: &str, address: IpAddr, now: Instant) -> Result<(), Throttled> {
        let mut buckets = self.lock();
        let mut refusal: Option<Throttled> = None;
        for key in keys(username, address) {
            let Some(bucket) = buckets.get_mut(&key) else {
                continue;
            };
            let Some(until) = bucket.throttled_until.filter(|until| *until > now) else {
                continue;
            };
            let first_of_burst = !bucket.reported;
            bucket.reported = true;
            let retry_after = until - now;
            refusal = Some(match refusal {
                Some(earlier) => Throttled {
                    retry_after: earlier.retry_after.max(retry_after),
                    first_of_burst: earlier.first_of_burst || first_of_burst,
                },
                None => Throttled {
                    retry_after,
                    first_of_burst,
                },
            });
        }
        refusal.map_or(Ok(()), Err)
    }

    /// Counts a failed login of `username` from `address` at `now`.
    pub fn record_failure(&self, username: &str, address: IpAddr, now: Instant) {
        let window = self.config.window;
        let mut buckets = self.lock();
        if buckets.len() >= MAX_ENTRIES {
            buckets.retain(|_, bucket| !is_forgotten(bucket, now, window));
            if buckets.len() >= MAX_ENTRIES {
                // Still full of live entries: start over rather than grow.
                tracing::warn!(
                    entries = buckets.len(),
                    "login throttle table full; cleared"
                );
                buckets.clear();
            }
        }
        for key in keys(username, address) {
            let limit = match key {
                Key::Address(_) => self.config.failures_per_address,
                Key::UserAtAddress(..) => self.config.failures_per_user,
            };
            let bucket = buckets.entry(key).or_insert(Bucket {
                failures: 0,
                window_start: now,
                throttled_until: None,
                reported: false,
            });
            if is_forgotten(bucket, now, window) {
                *bucket = Bucket {
                    failures: 0,
                    window_start: now,
                    throttled_until: None,
                    reported: false,
                };
            }
            bucket.failures = bucket.failures.saturating_add(1);
            if bucket.failures >= limit && bucket.throttled_until.is_none() {
                bucket.throttled_until = Some(now + window);
            }
        }
    }

    /// A successful login clears that user's count at that address.
    pub fn record_success(&self, username: &str, address: IpAddr) {
        self.lock()
            .remove(&Key::UserAtAddress(username.to_owned(), address));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Bucket>> {
        // Each operation leaves the map consistent, so a poisoned lock is still usable.
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn keys(username: &str, address: IpAddr) -> [Key; 2] {
    [
        Key::Address(address),
        Key::UserAtAddress(username.to_owned(), address),
    ]
}

/// A bucket whose window and throttle have both passed counts for nothing.
fn is_forgotten(bucket: &Bucket, now: Instant, window: Duration) -> bool {
    let window_over = now.duration_since(bucket.window_start) >= window;
    let throttle_over = bucket.throttled_until.is_none_or(|until| until <= now);
    window_over && throttle_over
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const ATTACKER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

    fn config() -> ThrottleConfig {
        ThrottleConfig {
            failures_per_user: 3,
            failures_per_address: 5,
            window: Duration::from_secs(60),
        }
    }

    /// After the per-user limit the pair is refused, once reported, and lifts after the
    /// window.
    #[test]
    fn pair_is_throttled_then_released() {
        let throttle = Throttle::new(config());
        let now = Instant::now();
        for _ in 0..3 {
            assert!(throttle.check("alice", ATTACKER, now).is_ok());
            throttle.record_failure("alice", ATTACKER, now);
        }
        let first = throttle
            .check("alice", ATTACKER, now)
            .expect_err("throttled");
        assert!(first.first_of_burst);
        assert_eq!(first.retry_after, Duration::from_secs(60));
        let second = throttle
            .check("alice", ATTACKER, now + Duration::from_secs(10))
            .expect_err("still throttled");
        assert!(!second.first_of_burst, "one report per burst");
        assert_eq!(second.retry_after, Duration::from_secs(50));
        assert!(
            throttle
                .check("alice", ATTACKER, now + Duration::from_secs(61))
                .is_ok()
        );
    }

    /// A flood from one address never keeps the user out from another.
    #[test]
    fn flood_from_one_address_spares_others() {
        let throttle = Throttle::new(config());
        let now = Instant::now();
        for _ in 0..50 {
            throttle.record_failure("alice", ATTACKER, now);
        }
        assert!(throttle.check("alice", ATTACKER, now).is_err());
        assert!(throttle.check("alice", HOME, now).is_ok());
    }

    /// Many users from one address throttle the address, whatever the user.
    #[test]
    fn address_limit_covers_every_user() {
        let throttle = Throttle::new(config());
        let now = Instant::now();
        for user in ["a", "b", "c", "d", "e"] {
            throttle.record_failure(user, ATTACKER, now);
        }
        assert!(throttle.check("zed", ATTACKER, now).is_err());
    }

    /// A success clears the user's count at that address.
    #[test]
    fn success_resets_the_pair() {
        let throttle = Throttle::new(config());
        let now = Instant::now();
        throttle.record_failure("alice", HOME, now);
        throttle.record_failure("alice", HOME, now);
        throttle.record_success("alice", HOME);
        throttle.record_failure("alice", HOME, now);
        assert!(throttle.check("alice", HOME, now).is_ok());
    }
}
