//! Who may log in: a users file of `name:<argon2id PHC hash>` lines, or the single demo
//! account the old client defaults to. Verification costs one argon2id check whether or not
//! the user exists, so timing does not reveal which usernames are real.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex, PoisonError},
};

use argon2::{
    Algorithm, Argon2, Block, Params, Version,
    password_hash::{Output, PasswordHash, PasswordHasher, SaltString, rand_core::OsRng},
};

/// The demo account served when no users file is given (the old client's defaults).
pub const DEMO_USER: (&str, &str) = ("user1", "pass123");

/// Why a users file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum UsersFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS's reason.
        source: std::io::Error,
    },
    /// A line is not `name:<argon2 PHC hash>`.
    #[error("{path}, line {line}: {reason}")]
    BadLine {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// argon2id with OWASP's minimum recommended parameters (19 MiB, 2 passes, 1 lane): the
/// cost of each new hash. Verification uses the parameters stored in each hash.
fn hasher() -> Argon2<'static> {
    // These constants are valid by construction; `Params::new` only rejects out-of-range values.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password into a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`).
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(hasher()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// The accounts this server accepts.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Username → PHC hash string, parsed and checked at load time.
    users: HashMap<String, String>,
    /// Verified against for unknown users, so they cost the same as known ones.
    decoy_hash: String,
    /// Shared by clones, so every check of this server draws on one pool.
    memory: Arc<WorkingMemory>,
}

/// argon2's working memory (19 MiB per check at OWASP's minimum), kept for reuse. Allocated
/// afresh for every check, freed blocks pile up in glibc's per-thread arenas: a burst of
/// logins grew the auth server to about 590 MiB. Reused, there is at most one block per
/// check running at once, and the service bounds how many run at once.
#[derive(Debug, Default)]
struct WorkingMemory {
    spare: Mutex<Vec<Vec<Block>>>,
}

impl WorkingMemory {
    /// Runs `work` with at least `blocks` blocks of memory, then keeps them for the next.
    fn with<R>(&self, blocks: usize, work: impl FnOnce(&mut [Block]) -> R) -> R {
        // Each lock is held for a push or pop only, never during the hash itself.
        let spare = self
            .spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut memory = spare.unwrap_or_default();
        if memory.len() < blocks {
            memory.resize(blocks, Block::default());
        }
        let result = work(&mut memory);
        self.spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(memory);
        result
    }
}

impl Credentials {
    /// Only the demo account (`user1` / `pass123`), hashed afresh at start.
    pub fn demo() -> Result<Self, argon2::password_hash::Error> {
        let (name, password) = DEMO_USER;
        let hash = hash_password(password)?;
        Ok(Self {
            decoy_hash: hash.clone(),
            users: HashMap::from([(name.to_owned(), hash)]),
            memory: Arc::default(),
        })
    }

    /// Reads a users file: one `name:<PHC hash>` a line; blank lines and `#` comments skipped.
    pub fn load(path: &Path) -> Result<Self, UsersFileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| UsersFileError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    fn parse(text: &str, shown: &str) -> Result<Self, UsersFileError> {
        let bad = |line: usize, reason: &str| UsersFileError::BadLine {
            path: shown.to_owned(),
            line,
            reason: reason.to_owned(),
        };
        let mut users = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let line_number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, hash) = line
                .split_once(':')
                .ok_or_else(|| bad(line_number, "expected name:<argon2 hash>"))?;
            if name.is_empty() {
                return Err(bad(line_number, "empty username"));
            }
            let parsed =
                PasswordHash::new(hash).map_err(|_| bad(line_number, "not a PHC hash string"))?;
            if !parsed.algorithm.as_str().starts_with("argon2") {
                return Err(bad(line_number, "not an argon2 hash"));
            }
            if users.insert(name.to_owned(), hash.to_owned()).is_some() {
                return Err(bad(line_number, "username listed twice"));
            }
        }
        let decoy_hash = hash_password("decoy password for unknown users")
            .map_err(|error| bad(0, &format!("cannot make a decoy hash: {error}")))?;
        Ok(Self {
            users,
            decoy_hash,
            memory: Arc::default(),
        })
    }

    /// How many accounts there are.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `password` is right for `username`. CPU-heavy (one argon2id check): call it
    /// on a blocking thread. Unknown users are checked against a decoy hash and refused.
    pub fn verify(&self, username: &str, password: &str) -> bool {
        let (hash, known) = match self.users.get(username) {
            Some(hash) => (hash.as_str(), true),
            None => (self.decoy_hash.as_str(), false),
        };
        let matches = self.matches(hash, password).unwrap_or(false);
        matches && known
    }

    /// Recomputes `password`'s hash with the stored hash's algorithm, parameters and salt,
    /// in pooled memory, and compares in constant time; `None` if the stored hash is unusable.
    fn matches(&self, stored: &str, password: &str) -> Option<bool> {
        let parsed = PasswordHash::new(stored).ok()?;
        let expected = parsed.hash?;
        let algorithm = Algorithm::try_from(parsed.algorithm).ok()?;
        let version = parsed
            .version
            .map_or(Ok(Version::default()), Version::try_from)
            .ok()?;
        let params = Params::try_from(&parsed).ok()?;
        let mut salt_buffer = [0u8; 64];
        let salt = parsed.salt?.decode_b64(&mut salt_buffer).ok()?;
        let hasher = Argon2::new(algorithm, version, params.clone());
        let mut computed = vec![0u8; expected.len()];
        self.memory
            .with(params.block_count(), |memory| {
                hasher.hash_password_into_with_memory(
                    password.as_bytes(),
                    salt,
                    &mut computed,
                    memory,
                )
            })
            .ok()?;
        // `Output`'s equality is constant-time.
        Some(Output::new(&computed).ok()? == expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hash made here verifies its password and no other, and uses argon2id at OWASP's minimum.
    #[test]
    fn hash_then_verify() {
        let hash = hash_password("s3cret").expect("hash");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        let users =
            Credentials::parse(&format!("# comment\n\nalice:{hash}\n"), "users").expect("parse");
        assert_eq!(users.len(), 1);
        assert!(users.verify("alice", "s3cret"));
        assert!(!users.verify("alice", "wrong"));
        assert!(!users.verify("bob", "s3cret"), "unknown user is refused");
    }

    /// The demo account is user1 / pass123.
    #[test]
    fn demo_account() {
        let users = Credentials::demo().expect("demo");
        assert!(users.verify("user1", "pass123"));
        assert!(!users.verify("user1", "pass1234"));
    }

    /// Malformed users files are refused with the line number.
    #[test]
    fn bad_users_files() {
        for (text, reason) in [
            ("alice", "expected name"),
            (
                ":$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
                "empty username",
            ),
            ("alice:plaintext", "not a PHC"),
        ] {
            let error = Credentials::parse(text, "users")
                .expect_err(text)
                .to_string();
            assert!(
                error.contains("line 1") && error.contains(reason),
                "{error}"
            );
        }
    }
}
