//! The kubelet API's TLS: the serving certificate (`tlsCertFile` / `tlsPrivateKeyFile`, or
//! a self-signed one kept in the certificate directory as kubelet keeps `kubelet.crt`),
//! `tlsMinVersion` and `tlsCipherSuites` with Go's names, and the client CA
//! (`authentication.x509.clientCAFile`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::danger::ClientCertVerifier;

use super::auth::AnyClientCertificate;
use super::serving_cert::ServingCertificate;

/// The TLS settings of kubelet's configuration.
#[derive(Clone, Debug, Default)]
pub struct TlsConfig {
    /// `tlsCertFile` and `tlsPrivateKeyFile`; `None`: self-signed, in `cert_dir`.
    pub cert_and_key: Option<(PathBuf, PathBuf)>,
    /// `--cert-dir`: where the self-signed certificate is kept.
    pub cert_dir: PathBuf,
    /// `tlsMinVersion`: `VersionTLS12` or `VersionTLS13` (empty: TLS 1.2).
    pub min_version: String,
    /// `tlsCipherSuites`: Go's names of the TLS 1.2 suites allowed (empty: rustls's
    /// defaults). TLS 1.3's suites are not configurable, as in Go.
    pub cipher_suites: Vec<String>,
    /// `authentication.x509.clientCAFile`.
    pub client_ca_file: Option<PathBuf>,
    /// Names and addresses the self-signed (or cluster-signed) certificate is for.
    pub hostnames: Vec<String>,
    /// `serverTLSBootstrap`: serve a certificate the cluster signs ([`super::serving_cert`]).
    pub bootstrap: bool,
}

/// What is wrong with the TLS settings; the daemon does not start (it would not be
/// reachable as configured).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{field}: {value:?} {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("generating the self-signed serving certificate: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("TLS: {0}")]
    Rustls(#[source] rustls::Error),
}

/// The serving side's rustls configuration, and the verifier of client certificates against
/// the client CA if one is configured.
pub struct Tls {
    pub server: Arc<rustls::ServerConfig>,
    pub client_ca: Option<Arc<dyn ClientCertVerifier>>,
    /// With `bootstrap`: the certificate to fill once the cluster has signed one.
    pub serving: Option<Arc<ServingCertificate>>,
}

impl Tls {
    pub fn load(config: &TlsConfig) -> Result<Self, TlsError> {
        let provider = provider(&config.cipher_suites)?;
        let versions: &[&rustls::SupportedProtocolVersion] = match config.min_version.as_str() {
            "" | "VersionTLS12" => &[&rustls::version::TLS13, &rustls::version::TLS12],
            "VersionTLS13" => &[&rustls::version::TLS13],
            other => {
                return Err(TlsError::Invalid {
                    field: "tlsMinVersion",
                    value: other.to_owned(),
                    reason: "is not supported (VersionTLS12 or VersionTLS13)".to_owned(),
                })
            }
        };
        let (client_ca, hints) = match &config.client_ca_file {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certificates(path)? {
                    roots.add(cert).map_err(|e| TlsError::Read {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                }
                let hints = roots.subjects();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                )
                .build()
                .map_err(|e| TlsError::Read {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                (Some(verifier), hints)
            }
            None => (None, Vec::new()),
        };
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(TlsError::Rustls)?
            .with_client_cert_verifier(Arc::new(AnyClientCertificate::new(
                provider.clone(),
                hints,
            )));
        let (mut server, serving) = if config.bootstrap {
            let serving = Arc::new(ServingCertificate::new(provider.clone()));
            (builder.with_cert_resolver(serving.clone()), Some(serving))
        } else {
            let (chain, key) = match &config.cert_and_key {
                Some((cert, key)) => (read_certificates(cert)?, read_key(key)?),
                None => self_signed(&config.cert_dir, &config.hostnames)?,
            };
            let server = builder
                .with_single_cert(chain, key)
                .map_err(TlsError::Rustls)?;
            (server, None)
        };
        // HTTP/1.1 only: the streaming protocols (SPDY, WebSocket) upgrade HTTP/1.1
        // connections, and that is what the API server speaks to kubelets.
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            server: Arc::new(server),
            client_ca,
            serving,
        })
    }
}

/// ring's provider, with only the TLS 1.2 suites `names` (Go's names) if any are given.
fn provider(names: &[String]) -> Result<Arc<rustls::crypto::CryptoProvider>, TlsError> {
    let mut provider = rustls::crypto::ring::default_provider();
    if !names.is_empty() {
        let mut chosen = Vec::new();
        for name in names {
            let wanted = name.replace("_CHACHA20_POLY1305_SHA256", "_CHACHA20_POLY1305");
            let suite = provider
                .cipher_suites
                .iter()
                .find(|s| {
                    let ours = format!("{:?}", s.suite())
                        .replace("_CHACHA20_POLY1305_SHA256", "_CHACHA20_POLY1305");
                    ours == wanted
                })
                .ok_or_else(|| TlsError::Invalid {
                    field: "tlsCipherSuites",
                    value: name.clone(),
                    reason: "is not a supported cipher suite".to_owned(),
                })?;
            chosen.push(*suite);
        }
        // TLS 1.3's suites stay: Go does not let them be configured either.
        chosen.extend(
            provider
                .cipher_suites
                .iter()
                .filter(|s| s.version() == &rustls::version::TLS13),
        );
        provider.cipher_suites = chosen;
    }
    Ok(Arc::new(provider))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_error = |message: String| TlsError::Read {
        path: path.to_owned(),
        message,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error(e.to_string()))?;
    if certificates.is_empty() {
        return Err(read_error("no PEM certificate in it".to_owned()));
    }
    Ok(certificates)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// How long a self-signed serving certificate is valid (kubelet: one year).
const SELF_SIGNED_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// kubelet's fallback: `<cert_dir>/kubelet.crt` and `kubelet.key`, made once and kept, so
/// that a restart serves the same certificate.
fn self_signed(
    cert_dir: &Path,
    hostnames: &[String],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let cert_path = cert_dir.join("kubelet.crt");
    let key_path = cert_dir.join("kubelet.key");
    if cert_path.exists() && key_path.exists() {
        return Ok((read_certificates(&cert_path)?, read_key(&key_path)?));
    }
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(TlsError::Generate)?;
    let mut params =
        rcgen::CertificateParams::new(hostnames.to_vec()).map_err(TlsError::Generate)?;
    let first = hostnames.first().map_or("localhost", String::as_str);
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("{first}@{}", unix_seconds()),
    );
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + SELF_SIGNED_VALIDITY;
    let cert = params.self_signed(&key).map_err(TlsError::Generate)?;
    std::fs::create_dir_all(cert_dir).map_err(|source| TlsError::Write {
        path: cert_dir.to_owned(),
        source,
    })?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    write_private(&cert_path, cert.pem().as_bytes())?;
    Ok((
        vec![cert.der().clone()],
        PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| TlsError::Read {
            path: key_path,
            message: e.to_owned(),
        })?,
    ))
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let write = || -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|source| TlsError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_is_made_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = TlsConfig {
            cert_dir: dir.path().to_owned(),
            hostnames: vec!["node-a".into(), "10.0.0.7".into()],
            ..TlsConfig::default()
        };
        Tls::load(&config).expect("a self-signed certificate");
        let first = std::fs::read(dir.path().join("kubelet.crt")).expect("kept");
        Tls::load(&config).expect("the kept certificate");
        let second = std::fs::read(dir.path().join("kubelet.crt")).expect("kept");
        assert_eq!(first, second, "a restart serves the same certificate");
        let (_, parsed) = x509_parser::pem::parse_x509_pem(&first).expect("PEM");
        let cert = parsed.parse_x509().expect("a certificate");
        let names = format!(
            "{:?}",
            cert.subject_alternative_name()
                .expect("parsed")
                .expect("alternative names")
                .value
        );
        assert!(
            names.contains("DNSName(\"node-a\")") && names.contains("IPAddress([10, 0, 0, 7])"),
            "{names}"
        );
    }

    #[test]
    fn unknown_versions_and_cipher_suites_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bad_version = TlsConfig {
            cert_dir: dir.path().to_owned(),
            min_version: "VersionTLS10".into(),
            ..TlsConfig::default()
        };
        let e = Tls::load(&bad_version).err().expect("refused").to_string();
        assert!(
            e.contains("tlsMinVersion") && e.contains("VersionTLS10"),
            "{e}"
        );
        let bad_suite = TlsConfig {
            cert_dir: dir.path().to_owned(),
            cipher_suites: vec!["TLS_RSA_WITH_RC4_128_SHA".into()],
            ..TlsConfig::default()
        };
        let e = Tls::load(&bad_suite).err().expect("refused").to_string();
        assert!(e.contains("tlsCipherSuites") && e.contains("RC4"), "{e}");
        let good_suites = TlsConfig {
            cert_dir: dir.path().to_owned(),
            cipher_suites: vec![
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into(),
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256".into(),
            ],
            ..TlsConfig::default()
        };
        Tls::load(&good_suites).expect("Go's names are understood");
    }
}
