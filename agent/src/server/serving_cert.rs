//! The kubelet API's serving certificate signed by the cluster (`serverTLSBootstrap`), as
//! kubelet gets it: a CertificateSigningRequest for signer `kubernetes.io/kubelet-serving`,
//! subject `O=system:nodes, CN=system:node:NAME`, the node's names and addresses as
//! alternative names. Nothing approves these requests by default (kube-controller-manager
//! approves only client certificates): an administrator or an approver does, as for kubelet,
//! and until then the port completes no handshake. The certificate is kept in the cert dir
//! (`kubelet-server-current.pem`, with its key), so a restart serves it at once, and renewed
//! at 70–90 % of its life.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::sign::CertifiedKey;

use crate::cluster::bootstrap::{self, SERVING};

/// The certificate the server shows, swapped in place when a new one is issued.
#[derive(Debug)]
pub struct ServingCertificate {
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl ServingCertificate {
    pub fn new(provider: Arc<rustls::crypto::CryptoProvider>) -> Self {
        ServingCertificate {
            provider,
            current: RwLock::new(None),
        }
    }

    /// Serves the certificate and key in `pem` from the next handshake on.
    fn install(&self, pem: &[u8]) -> Result<(), String> {
        let chain = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        if chain.is_empty() {
            return Err("no certificate".to_owned());
        }
        let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| e.to_string())?;
        let signing = self
            .provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| e.to_string())?;
        let certified = Arc::new(CertifiedKey::new(chain, signing));
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(certified);
        Ok(())
    }

    pub fn is_installed(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

impl rustls::server::ResolvesServerCert for ServingCertificate {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What [`run`] requests.
#[derive(Clone, Debug)]
pub struct Request {
    pub node: String,
    /// The node's names and IP addresses, the certificate's alternative names.
    pub alternative_names: Vec<String>,
    /// `--cert-dir`.
    pub cert_dir: PathBuf,
}

/// Keeps `certificate` filled with a valid certificate signed by the cluster for as long as
/// it runs: the stored one if still valid, else a new request; then renewals.
pub async fn run(api: kube::Client, request: Request, certificate: Arc<ServingCertificate>) {
    let current = request
        .cert_dir
        .join(format!("{}-current.pem", SERVING.prefix));
    let mut failures = 0u32;
    loop {
        let now = SystemTime::now();
        let stored = bootstrap::stored_validity(&current).ok();
        if let Some(valid) = stored.filter(|v| v.holds_at(now)) {
            if !certificate.is_installed() {
                match std::fs::read(&current)
                    .map_err(|e| e.to_string())
                    .and_then(|pem| certificate.install(&pem))
                {
                    Ok(()) => {
                        tracing::info!(cert = %current.display(), "serving the stored kubelet certificate")
                    }
                    Err(e) => {
                        tracing::warn!(cert = %current.display(), "the stored serving certificate: {e}")
                    }
                }
            }
            if certificate.is_installed() && failures == 0 {
                let deadline = bootstrap::rotation_deadline(valid, rand::random::<f64>());
                tracing::info!(rotation = ?deadline, "serving certificate rotation scheduled");
                tokio::time::sleep(deadline.duration_since(now).unwrap_or_default()).await;
            }
        }
        if failures > 0 {
            tokio::time::sleep(bootstrap::retry_delay(failures)).await;
        }
        match renew(&api, &request, &certificate).await {
            Ok(csr) => {
                tracing::info!(%csr, "serving certificate issued");
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(failures, "requesting the serving certificate: {e}");
            }
        }
    }
}

async fn renew(
    api: &kube::Client,
    request: &Request,
    certificate: &ServingCertificate,
) -> Result<String, String> {
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    tracing::info!(node = %request.node, names = ?request.alternative_names, "requesting a serving certificate (signer kubernetes.io/kubelet-serving); it is served once approved");
    let (csr, cert) = bootstrap::request_certificate(
        api.clone(),
        SERVING,
        &request.node,
        &request.alternative_names,
        &key,
    )
    .await
    .map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&request.cert_dir).map_err(|e| e.to_string())?;
    let file = bootstrap::store(
        &request.cert_dir,
        SERVING,
        &cert,
        &key.serialize_pem(),
        SystemTime::now(),
    )
    .map_err(|e| e.to_string())?;
    let pem = std::fs::read(&file).map_err(|e| e.to_string())?;
    certificate.install(&pem)?;
    Ok(csr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_and_its_key_are_served_from_the_next_handshake() {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certificate = ServingCertificate::new(provider);
        assert!(!certificate.is_installed(), "nothing before the first");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = rcgen::CertificateParams::new(vec!["node-a".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        let pem = format!("{}{}", cert.pem(), key.serialize_pem());
        certificate.install(pem.as_bytes()).expect("installed");
        assert!(certificate.is_installed());
        assert!(certificate.install(b"no PEM here").is_err());
        assert!(certificate.is_installed(), "a bad one leaves the good one");
    }
}
