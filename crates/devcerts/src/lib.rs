//! A development certificate authority for the suite, so TLS can be tried and tested
//! without openssl: one CA, one server certificate valid for every service name of the
//! Docker stack and for this machine (`localhost`, `127.0.0.1`, `::1`), and one client
//! certificate for mutual TLS.
//!
//! [`write_dev_set`] is what the `dev_certs` binary does; [`DevCa`] issues single
//! certificates, which tests use for the odd cases (another CA, an expired certificate).
//! Real deployments use certificates from their own CA instead; nothing here is needed then.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

/// The names the server certificate is valid for: the Docker Compose service names, and
/// this machine.
pub const SERVER_NAMES: &[&str] = &[
    "file-service",
    "random-service",
    "streaming-service",
    "auth-service",
    "logger-service",
    "localhost",
    "127.0.0.1",
    "::1",
];

/// The files [`write_dev_set`] writes, by name inside its folder.
pub const CA_CERT: &str = "ca.pem";
/// The server certificate (valid for [`SERVER_NAMES`] and any extra names).
pub const SERVER_CERT: &str = "server.pem";
/// The server certificate's key.
pub const SERVER_KEY: &str = "server.key";
/// The client certificate for mutual TLS.
pub const CLIENT_CERT: &str = "client.pem";
/// The client certificate's key.
pub const CLIENT_KEY: &str = "client.key";

/// How long development certificates last: long enough not to expire mid-project, short
/// enough that a leaked one does not live forever.
const VALIDITY_DAYS: i64 = 825;

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A server's certificate (TLS server authentication).
    Server,
    /// A client's certificate (TLS client authentication, for mutual TLS).
    Client,
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

/// A self-signed CA that issues certificates.
pub struct DevCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("DevCa").finish_non_exhaustive()
    }
}

impl DevCa {
    /// A new CA named `common_name`, with a fresh key.
    pub fn new(common_name: &str) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, OffsetDateTime::now_utc(), VALIDITY_DAYS);
        let key = KeyPair::generate().context("making the CA key")?;
        let issuer = CertifiedIssuer::self_signed(params, key).context("signing the CA")?;
        Ok(Self { issuer })
    }

    /// The CA certificate, PEM: what clients trust.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Issues a certificate for `names` (DNS names or IP addresses), valid from now on for
    /// the usual development lifetime.
    pub fn issue(&self, names: &[String], usage: Usage) -> anyhow::Result<Issued> {
        self.issue_valid(names, usage, OffsetDateTime::now_utc(), VALIDITY_DAYS)
    }

    /// Issues a certificate valid for `days` days from `from` (tests make expired ones).
    pub fn issue_valid(
        &self,
        names: &[String],
        usage: Usage,
        from: OffsetDateTime,
        days: i64,
    ) -> anyhow::Result<Issued> {
        let mut params = CertificateParams::new(names.to_vec())
            .with_context(|| format!("certificate names {names:?}"))?;
        let common_name = names.first().map_or("suite-client", String::as_str);
        params.distinguished_name = name(common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match usage {
            // A server certificate may also authenticate as a client: the --health-check
            // probe of a mutual-TLS server presents it.
            Usage::Server => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        set_validity(&mut params, from, days);
        let key = KeyPair::generate().context("making a key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing a certificate")?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Writes a CA, a server certificate for [`SERVER_NAMES`] plus `extra_names`, and a client
/// certificate into `out` (created if missing). Refuses to replace existing files unless
/// `force`. Keys are readable by their owner only. Returns the paths written.
pub fn write_dev_set(
    out: &Path,
    extra_names: &[String],
    force: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    let files = [CA_CERT, SERVER_CERT, SERVER_KEY, CLIENT_CERT, CLIENT_KEY];
    if !force && let Some(existing) = files.iter().map(|name| out.join(name)).find(|path| path.exists()) {
        anyhow::bail!(
            "{} already exists; pass --force to replace the whole set",
            existing.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let ca = DevCa::new("gRPC suite development CA")?;
    let mut server_names: Vec<String> = SERVER_NAMES.iter().map(|name| (*name).to_owned()).collect();
    server_names.extend(extra_names.iter().cloned());
    let server = ca.issue(&server_names, Usage::Server)?;
    let client = ca.issue(&["suite-client".to_owned()], Usage::Client)?;
    let contents = [
        (CA_CERT, ca.cert_pem(), false),
        (SERVER_CERT, server.cert_pem, false),
        (SERVER_KEY, server.key_pem, true),
        (CLIENT_CERT, client.cert_pem, false),
        (CLIENT_KEY, client.key_pem, true),
    ];
    let mut written = Vec::new();
    for (file, text, secret) in contents {
        let path = out.join(file);
        write_file(&path, text.as_bytes(), secret)?;
        written.push(path);
    }
    Ok(written)
}

/// Writes one file; a secret one is created with mode 0600 (on Unix) so no moment exists
/// in which others could read it.
fn write_file(path: &Path, contents: &[u8], secret: bool) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// Valid from a minute before `from` (clocks differ a little between machines) for `days`.
fn set_validity(params: &mut CertificateParams, from: OffsetDateTime, days: i64) {
    params.not_before = from - Duration::minutes(1);
    params.not_after = from + Duration::days(days);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The set is written once; a second run refuses to replace it unless forced.
    #[test]
    fn writes_the_set_once() {
        let folder = tempfile::tempdir().expect("temp folder");
        let written = write_dev_set(folder.path(), &["extra.example".to_owned()], false)
            .expect("writes");
        assert_eq!(written.len(), 5);
        let again = write_dev_set(folder.path(), &[], false).expect_err("refused");
        assert!(again.to_string().contains("--force"), "{again}");
        write_dev_set(folder.path(), &[], true).expect("forced");
    }

    /// Keys are private to their owner; certificates are readable.
    #[cfg(unix)]
    #[test]
    fn keys_are_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let folder = tempfile::tempdir().expect("temp folder");
        write_dev_set(folder.path(), &[], false).expect("writes");
        let mode = |file: &str| {
            std::fs::metadata(folder.path().join(file))
                .expect("metadata")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(SERVER_KEY), 0o600);
        assert_eq!(mode(CLIENT_KEY), 0o600);
        assert_eq!(mode(CA_CERT), 0o644);
    }

    /// What the CA issues passes the servers' own start-up checks (key matches, in date).
    #[test]
    fn issued_files_pass_the_server_checks() {
        let folder = tempfile::tempdir().expect("temp folder");
        write_dev_set(folder.path(), &[], false).expect("writes");
        let files = grpc_suite::tls::ServerTlsFiles {
            cert: folder.path().join(SERVER_CERT),
            key: folder.path().join(SERVER_KEY),
            client_ca: Some(folder.path().join(CA_CERT)),
        };
        let tls = files.load().expect("valid");
        assert!(tls.is_mutual());
    }
}
