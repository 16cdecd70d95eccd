//! Who may write and read the audit log: `--write-token-file` and `--read-token-file`.
//! With a token set, the matching calls must carry `authorization: Bearer <token>`: none is
//! UNAUTHENTICATED, another token PERMISSION_DENIED, and nothing is stored or shown.
//! Without one, those calls are open, as the old system's were.
//!
//! Tokens are compared in constant time and never logged.

use std::path::Path;

use anyhow::Context as _;
use tonic::{Status, metadata::MetadataMap};

/// Random bytes in a token made by [`load_or_create`]: 256 bits, as hex.
const TOKEN_BYTES: usize = 32;

/// The tokens a server checks, when set.
#[derive(Clone, Default)]
pub struct Tokens {
    /// Needed by LogActivity.
    pub write: Option<String>,
    /// Needed by QueryLogs and FollowLogs.
    pub read: Option<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Whether each is set, never its value.
        formatter
            .debug_struct("Tokens")
            .field("write", &self.write.is_some())
            .field("read", &self.read.is_some())
            .finish()
    }
}

impl Tokens {
    /// Refuses a write without the write token, when one is set.
    pub fn check_write(&self, metadata: &MetadataMap) -> Result<(), Status> {
        check(self.write.as_deref(), metadata, "writing to the log")
    }

    /// Refuses a read without the read token, when one is set.
    pub fn check_read(&self, metadata: &MetadataMap) -> Result<(), Status> {
        check(self.read.as_deref(), metadata, "reading the log")
    }
}

fn check(expected: Option<&str>, metadata: &MetadataMap, what: &str) -> Result<(), Status> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let presented = metadata
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let Some(presented) = presented else {
        return Err(Status::unauthenticated(format!(
            "{what} needs a token: send `authorization: Bearer <token>` (logger_client --token-file FILE)"
        )));
    };
    if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "the token presented does not allow {what}"
        )))
    }
}

/// Compares without an early exit, so the time taken says nothing about how much of a
/// guess was right (only whether the lengths match, which tokens of one size share).
fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    left.iter()
        .zip(right)
        .fold(0u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

/// Reads the token in `path` (surrounding white space ignored). A missing file is created
/// with a new random token, readable by its owner only, so a first start needs no secret
/// from anywhere else; the services that must present it read the same file.
pub fn load_or_create(path: &Path) -> anyhow::Result<String> {
    if !path.exists() {
        let mut bytes = [0u8; TOKEN_BYTES];
        rand::fill(&mut bytes);
        let token = hex::encode(bytes);
        write_private(path, &token)
            .with_context(|| format!("creating the token file {}", path.display()))?;
        tracing::info!(path = %path.display(), "made a new random token");
        return Ok(token);
    }
    grpc_suite::cli::read_token_file(path)
}

fn write_private(path: &Path, token: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(folder) = path
        .parent()
        .filter(|folder| !folder.as_os_str().is_empty())
    {
        std::fs::create_dir_all(folder)?;
    }
    let mut options = std::fs::OpenOptions::new();
    // create_new: never overwrite a token another process wrote meanwhile.
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(token.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_bearer(token: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert(
            "authorization",
            format!("Bearer {token}").parse().expect("metadata value"),
        );
        metadata
    }

    /// No token set: open. Set: none is UNAUTHENTICATED, a wrong one PERMISSION_DENIED.
    #[test]
    fn checks_tokens() {
        let open = Tokens::default();
        assert!(open.check_write(&MetadataMap::new()).is_ok());
        let guarded = Tokens {
            write: Some("secret".to_owned()),
            read: None,
        };
        assert!(guarded.check_write(&with_bearer("secret")).is_ok());
        let none = guarded.check_write(&MetadataMap::new()).expect_err("none");
        assert_eq!(none.code(), tonic::Code::Unauthenticated);
        let wrong = guarded
            .check_write(&with_bearer("secreT"))
            .expect_err("wrong");
        assert_eq!(wrong.code(), tonic::Code::PermissionDenied);
        assert!(
            !wrong.message().contains("secret"),
            "never echoes the token"
        );
        assert!(
            guarded.check_read(&MetadataMap::new()).is_ok(),
            "reads stay open"
        );
    }

    /// A missing token file is made once, private, and read back the same.
    #[test]
    fn creates_then_reads_the_token_file() {
        let folder = tempfile::tempdir().expect("temp folder");
        let path = folder.path().join("sub/write.token");
        let made = load_or_create(&path).expect("made");
        assert_eq!(made.len(), 2 * TOKEN_BYTES);
        assert_eq!(load_or_create(&path).expect("read"), made);
        assert_eq!(grpc_suite::cli::read_token_file(&path).expect("read"), made);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }
}
