//! How a scenario reaches its servers: plaintext, or TLS with a development CA made for
//! the run. The TLS scenarios (`tls-hello`, `tls-upload`) are the plaintext ones measured
//! again over TLS, so what TLS costs is their difference, and SayHello over TLS is still
//! compared with the bare tonic reference over TLS in the same run.
//!
//! Every server is started with the flags users give it (`--tls-cert`, `--tls-key`; the
//! bare reference takes the same two), and the clients trust the run's CA the way the
//! client binaries do with `--ca-cert` ([`grpc_suite::tls::endpoint`]).

use std::path::Path;

use anyhow::Context as _;
use grpc_suite::tls::{ClientTls, ClientTlsFiles};
use tonic::transport::Channel;

use super::CALL_TIMEOUT;
use crate::servers::Server;

/// Plaintext or TLS, for one scenario's servers and clients.
#[derive(Debug, Clone)]
pub enum Transport {
    /// `http://`, no flags: what the other scenarios measure.
    Plaintext,
    /// `https://` with the run's development certificates.
    Tls(TlsFiles),
}

/// A development certificate set written for one scenario, and what the two ends need of
/// it.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// `--tls-cert <server.pem> --tls-key <server.key>`, for any server.
    server_flags: Vec<String>,
    /// Trusts the set's CA.
    client: ClientTls,
}

impl Transport {
    /// TLS with a new development CA and server certificate (valid for 127.0.0.1) written
    /// into `dir`, as `dev_certs --out dir` writes them.
    pub fn tls_in(dir: &Path) -> anyhow::Result<Self> {
        dev_certs::write_dev_set(dir, &[], false)
            .with_context(|| format!("making development certificates in {}", dir.display()))?;
        let text = |name: &str| -> anyhow::Result<String> {
            let path = dir.join(name);
            path.to_str()
                .map(str::to_owned)
                .with_context(|| format!("{} is not UTF-8", path.display()))
        };
        let server_flags = vec![
            "--tls-cert".to_owned(),
            text(dev_certs::SERVER_CERT)?,
            "--tls-key".to_owned(),
            text(dev_certs::SERVER_KEY)?,
        ];
        let client = ClientTlsFiles {
            ca_cert: Some(dir.join(dev_certs::CA_CERT)),
            ..ClientTlsFiles::default()
        }
        .load()?;
        Ok(Self::Tls(TlsFiles {
            server_flags,
            client,
        }))
    }

    /// The flags that make a server serve this transport.
    pub fn server_flags(&self) -> Vec<&str> {
        match self {
            Self::Plaintext => Vec::new(),
            Self::Tls(files) => files.server_flags.iter().map(String::as_str).collect(),
        }
    }

    /// The URL of `server` over this transport. TLS dials the IP address, which the
    /// development certificate names, so no name resolution enters the figures.
    pub fn url(&self, server: &Server) -> String {
        match self {
            Self::Plaintext => server.url(),
            Self::Tls(_) => format!("https://127.0.0.1:{}", server.port),
        }
    }

    /// Opens one HTTP/2 connection to `url`, the TLS handshake included.
    pub async fn connect(&self, url: &str) -> anyhow::Result<Channel> {
        let files = match self {
            Self::Plaintext => return super::connect(url).await,
            Self::Tls(files) => files,
        };
        let endpoint = grpc_suite::tls::endpoint(url, &files.client)?
            .tcp_nodelay(true)
            .connect_timeout(std::time::Duration::from_secs(5));
        tokio::time::timeout(CALL_TIMEOUT, endpoint.connect())
            .await
            .with_context(|| format!("connecting to {url} timed out"))?
            .with_context(|| format!("connecting to {url} over TLS"))
    }

    /// `count` separate connections to `url`.
    pub async fn connect_many(&self, url: &str, count: usize) -> anyhow::Result<Vec<Channel>> {
        let mut channels = Vec::with_capacity(count);
        for _ in 0..count.max(1) {
            channels.push(self.connect(url).await?);
        }
        Ok(channels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The TLS transport writes a certificate set and passes the servers' own flag names,
    /// pointing into it; plaintext passes none.
    #[test]
    fn tls_transport_makes_certificates_and_flags() {
        let dir = tempfile::tempdir().expect("temp dir");
        let transport = Transport::tls_in(dir.path()).expect("certificates");
        let flags = transport.server_flags();
        assert_eq!(flags.len(), 4);
        assert_eq!((flags[0], flags[2]), ("--tls-cert", "--tls-key"));
        assert!(Path::new(flags[1]).is_file() && Path::new(flags[3]).is_file());
        assert!(dir.path().join(dev_certs::CA_CERT).is_file());
        assert!(Transport::Plaintext.server_flags().is_empty());
    }

    /// Bare tonic over TLS, as `grpc_bench serve bare --tls-cert … --tls-key …` runs it,
    /// answers SayHello to a client trusting the run's CA, and refuses a plaintext one.
    #[tokio::test]
    async fn bare_reference_serves_tls() {
        use grpc_suite::file::{HelloRequest, file_service_client::FileServiceClient};

        let dir = tempfile::tempdir().expect("temp dir");
        let transport = Transport::tls_in(dir.path()).expect("certificates");
        let files = grpc_suite::tls::ServerTlsFiles {
            cert: dir.path().join(dev_certs::SERVER_CERT),
            key: dir.path().join(dev_certs::SERVER_KEY),
            client_ca: None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(crate::bare::serve_bare(
            listener,
            Some(files.load().expect("server TLS")),
            crate::bare::BareOptions::default(),
            shutdown.clone(),
        ));

        let url = format!("https://127.0.0.1:{port}");
        let call = async {
            let channel = transport.connect(&url).await.expect("TLS connect");
            FileServiceClient::new(channel)
                .say_hello(HelloRequest {
                    name: "tls".to_owned(),
                })
                .await
                .expect("SayHello over TLS")
                .into_inner()
                .message
        };
        let message = tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .expect("answered in time");
        assert_eq!(message, "Hello, tls!");

        let plaintext = async {
            let channel = super::super::connect(&format!("http://127.0.0.1:{port}")).await?;
            FileServiceClient::new(channel)
                .say_hello(HelloRequest {
                    name: "plain".to_owned(),
                })
                .await
                .map_err(anyhow::Error::from)
        };
        let refused = tokio::time::timeout(CALL_TIMEOUT, plaintext)
            .await
            .expect("refused in time");
        assert!(refused.is_err(), "a plaintext call to a TLS port succeeded");

        shutdown.cancel();
        tokio::time::timeout(CALL_TIMEOUT, server)
            .await
            .expect("stops in time")
            .expect("server task")
            .expect("serves without error");
    }
}
