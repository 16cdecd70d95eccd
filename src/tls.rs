//! TLS for every server and client of the suite: PEM files loaded and checked once, at
//! start, so a bad file stops a server with one clear line instead of failing every
//! handshake later; and the client endpoint every connection (a client binary's, or auth's
//! to the logger) is built through.
//!
//! Plaintext stays the default everywhere: nothing here is used unless a certificate is
//! given (servers) or the server URL says `https://` (clients).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// How long a TLS handshake may take before the connection is dropped, on both ends. A
/// peer that opens a socket and never completes the handshake costs a file handle and a
/// task; this bounds how long it keeps them.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The PEM files a server serves TLS with, as given on its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// The server's certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of the leaf certificate.
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// A server's checked TLS configuration, ready to serve with.
#[derive(Debug, Clone)]
pub struct ServerTls {
    config: ServerTlsConfig,
    mutual: bool,
}

impl ServerTlsFiles {
    /// Reads and checks the files: each is readable PEM, the key belongs to the
    /// certificate, and no certificate is expired or not yet valid.
    pub fn load(&self) -> anyhow::Result<ServerTls> {
        let identity = load_identity(&self.cert, &self.key)?;
        let mut config = ServerTlsConfig::new()
            .identity(identity)
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(client_ca) = &self.client_ca {
            let ca_pem = read(client_ca, "client CA certificate")?;
            check_validity(&certificates(&ca_pem, client_ca)?, client_ca)?;
            config = config.client_ca_root(Certificate::from_pem(ca_pem));
        }
        Ok(ServerTls {
            config,
            mutual: self.client_ca.is_some(),
        })
    }
}

impl ServerTls {
    /// tonic's configuration for serving.
    pub fn config(&self) -> ServerTlsConfig {
        self.config.clone()
    }

    /// True when clients must present a certificate.
    pub fn is_mutual(&self) -> bool {
        self.mutual
    }
}

/// The PEM files a client trusts and presents, as given on its command line. All empty
/// means: trust the system's roots, present no certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    /// A private CA to trust instead of the system's roots.
    pub ca_cert: Option<PathBuf>,
    /// A client certificate to present (mutual TLS); needs `key`.
    pub cert: Option<PathBuf>,
    /// The private key of `cert`.
    pub key: Option<PathBuf>,
}

/// A client's checked TLS settings.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    ca: Option<(Certificate, PathBuf)>,
    identity: Option<Identity>,
}

impl ClientTlsFiles {
    /// True when any file is given.
    pub fn is_set(&self) -> bool {
        self.ca_cert.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// Reads and checks the files (the key must belong to the certificate).
    pub fn load(&self) -> anyhow::Result<ClientTls> {
        let ca = match &self.ca_cert {
            Some(path) => {
                let pem = read(path, "CA certificate")?;
                certificates(&pem, path)?;
                Some((Certificate::from_pem(pem), path.clone()))
            }
            None => None,
        };
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(load_identity(cert, key)?),
            (None, None) => None,
            _ => anyhow::bail!("a client certificate needs both --tls-cert and --tls-key"),
        };
        Ok(ClientTls { ca, identity })
    }
}

impl ClientTls {
    /// What this client trusts, for messages: `the CA in ca.pem` or the system's roots.
    pub fn trusted(&self) -> String {
        match &self.ca {
            Some((_, path)) => format!("the CA in {}", path.display()),
            None => "the system's root certificates".to_owned(),
        }
    }

    /// True when a private CA or a client certificate is configured.
    fn is_set(&self) -> bool {
        self.ca.is_some() || self.identity.is_some()
    }
}

/// An endpoint for `url` (`http://` plaintext, `https://` TLS with `tls`), with the
/// timeouts every connection of the suite uses. TLS files with a plaintext URL are refused
/// rather than silently unused.
pub fn endpoint(url: &str, tls: &ClientTls) -> anyhow::Result<Endpoint> {
    endpoint_named(url, tls, None)
}

/// [`endpoint`] for a URL that holds one address of a name (a replica found in DNS): the
/// server's certificate is checked against `tls_name` when given, not against the address.
pub fn endpoint_named(
    url: &str,
    tls: &ClientTls,
    tls_name: Option<&str>,
) -> anyhow::Result<Endpoint> {
    let endpoint = Endpoint::from_shared(url.to_owned()).with_context(|| {
        format!("invalid server URL {url:?} (expected e.g. http://localhost:50051)")
    })?;
    let https = endpoint.uri().scheme_str() == Some("https");
    if !https {
        anyhow::ensure!(
            !tls.is_set(),
            "TLS files were given but {url} is plaintext; use an https:// URL"
        );
        return Ok(endpoint);
    }
    let mut config = ClientTlsConfig::new().timeout(HANDSHAKE_TIMEOUT);
    config = match &tls.ca {
        Some((ca, _)) => config.ca_certificate(ca.clone()),
        None => config.with_native_roots(),
    };
    if let Some(identity) = &tls.identity {
        config = config.identity(identity.clone());
    }
    if let Some(name) = tls_name {
        config = config.domain_name(name);
    }
    endpoint
        .tls_config(config)
        .with_context(|| format!("setting up TLS for {url}"))
}

/// Reads a certificate chain and its key, checked: readable PEM, every certificate in date,
/// and the key belongs to the leaf.
fn load_identity(cert: &Path, key: &Path) -> anyhow::Result<Identity> {
    let cert_pem = read(cert, "TLS certificate")?;
    let chain = certificates(&cert_pem, cert)?;
    check_validity(&chain, cert)?;
    let key_pem = read(key, "TLS key")?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| {
        anyhow::anyhow!(
            "no usable private key in {}: {}",
            key.display(),
            describe_pem_error(&error)
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain, key_der, &provider).map_err(|error| {
        anyhow::anyhow!(
            "the key {} does not belong to the certificate {} ({error})",
            key.display(),
            cert.display()
        )
    })?;
    Ok(Identity::from_pem(cert_pem, key_pem))
}

/// Reads a file, naming it and what it was meant to be when that fails.
fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
}

/// Every certificate in a PEM file; at least one.
fn certificates(pem: &[u8], path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let chain: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|error| {
            anyhow::anyhow!(
                "{} is not a readable PEM certificate file: {}",
                path.display(),
                describe_pem_error(&error)
            )
        })?;
    anyhow::ensure!(
        !chain.is_empty(),
        "no certificate in {} (expected PEM: -----BEGIN CERTIFICATE-----)",
        path.display()
    );
    Ok(chain)
}

/// A PEM parse error in words: the parser's own `Display` prints the offending marker or
/// line as a list of byte values, which no one reading an error line can act on.
fn describe_pem_error(error: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match error {
        Error::MissingSectionEnd { end_marker } => {
            // The marker is the section's label, e.g. `CERTIFICATE`.
            let label = String::from_utf8_lossy(end_marker);
            format!("no \"-----END {label}-----\" line (is the file cut short?)")
        }
        Error::IllegalSectionStart { line } => format!(
            "malformed section start {:?}",
            String::from_utf8_lossy(line)
        ),
        Error::NoItemsFound => "no PEM block of the expected kind (-----BEGIN ...-----)".to_owned(),
        other => other.to_string(),
    }
}

/// Refuses a chain with a certificate past its end or before its start: served, it would
/// fail every handshake with an error the client, not the operator, sees.
fn check_validity(chain: &[CertificateDer<'_>], path: &Path) -> anyhow::Result<()> {
    for der in chain {
        let (_, certificate) = x509_parser::parse_x509_certificate(der).map_err(|error| {
            anyhow::anyhow!(
                "{} holds an unreadable certificate: {error}",
                path.display()
            )
        })?;
        let validity = certificate.validity();
        let now = x509_parser::time::ASN1Time::now();
        anyhow::ensure!(
            validity.not_after >= now,
            "the certificate {} ({}) expired on {}",
            path.display(),
            certificate.subject(),
            validity.not_after
        );
        anyhow::ensure!(
            validity.not_before <= now,
            "the certificate {} ({}) is not valid before {}",
            path.display(),
            certificate.subject(),
            validity.not_before
        );
    }
    Ok(())
}

/// A channel for the `--health-check` probe of a TLS server at `address` on this machine.
///
/// The probe asks "are you serving?", not "who are you?": it dials the server's own
/// address, so it accepts whatever certificate is there instead of needing a CA the server
/// itself never has. When the server requires client certificates, the probe presents the
/// server's own certificate, which must then also allow client authentication (the
/// certificates of `dev_certs` do).
pub async fn probe_channel(
    address: std::net::SocketAddr,
    server: &ServerTlsFiles,
    timeout: Duration,
) -> anyhow::Result<tonic::transport::Channel> {
    use std::sync::Arc;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("setting up the probe's TLS")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCertificate(provider)));
    let mut config = if server.client_ca.is_some() {
        let chain = certificates(&read(&server.cert, "TLS certificate")?, &server.cert)?;
        let key =
            PrivateKeyDer::from_pem_slice(&read(&server.key, "TLS key")?).map_err(|error| {
                anyhow::anyhow!(
                    "no usable private key in {}: {}",
                    server.key.display(),
                    describe_pem_error(&error)
                )
            })?;
        builder
            .with_client_auth_cert(chain, key)
            .context("presenting the server's certificate")?
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let connect = tower::service_fn(move |_: http::Uri| {
        let connector = connector.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(address).await?;
            let name = rustls::pki_types::ServerName::IpAddress(address.ip().into());
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Endpoint::from_shared(format!("http://{address}"))
        .context("probe address")?
        .connect_timeout(timeout)
        .connect_with_connector(connect)
        .await
        .map_err(|error| {
            let cause = crate::cli::root_cause(&error);
            if crate::cli::answers_in_plaintext(&cause) {
                anyhow::anyhow!(
                    "the server at {address} does not speak TLS ({cause}); probe it without --tls-cert and --tls-key"
                )
            } else {
                anyhow::anyhow!("cannot reach the server at {address} over TLS: {cause}")
            }
        })
}

/// The probe's verifier: any certificate, with the handshake's signatures still checked.
#[derive(Debug)]
struct AnyServerCertificate(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
