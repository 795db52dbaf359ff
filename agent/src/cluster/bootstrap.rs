//! kubelet's TLS bootstrapping and client-certificate rotation.
//!
//! With `--bootstrap-kubeconfig`, a node that has no usable `--kubeconfig` yet (none, or its
//! client certificate expired) asks the API server for one: with the bootstrap token it creates
//! a CertificateSigningRequest for `system:node:NAME` in group `system:nodes` (signer
//! `kubernetes.io/kube-apiserver-client-kubelet`), waits until kube-controller-manager has
//! approved and signed it, keeps the key and certificate in `--cert-dir` as kubelet does
//! (`kubelet-client-<time>.pem` and the symlink `kubelet-client-current.pem`), and writes the
//! kubeconfig pointing at that symlink ([`ensure_credentials`]).
//!
//! [`rotate`] then renews the certificate with the node's own credentials when 70–90 % of its
//! lifetime has passed (jittered, as kubelet's certificate manager), and hands a client with
//! the new certificate to every user of the [`swappable`] client.
//!
//! This module knows certificates, kubeconfigs and CertificateSigningRequests; it knows
//! nothing of pods or of the Node object.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use futures::StreamExt as _;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::ByteString;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{
    AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};
use kube::runtime::{watcher, WatchStreamExt as _};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use super::ClusterError;

/// In the cert dir: the symlink to the certificate in use, which the kubeconfig names.
pub const CURRENT: &str = "kubelet-client-current.pem";
/// In the cert dir: the key of a request not yet answered, kept so that a restart picks up
/// the same CertificateSigningRequest instead of making another.
const PENDING_KEY: &str = "kubelet-client.key.tmp";
/// The signer that issues kubelets' client certificates (and whose requests
/// kube-controller-manager approves for bootstrap tokens and for nodes renewing their own).
pub const SIGNER_NAME: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// Exactly these: kube-controller-manager 1.20 approves no other set for a kubelet client.
const USAGES: [&str; 3] = ["digital signature", "key encipherment", "client auth"];

/// Which of kubelet's two certificates a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    /// The stored files' prefix: `<prefix>-<time>.pem`, `<prefix>-current.pem`.
    pub prefix: &'static str,
    pub signer: &'static str,
    pub usages: &'static [&'static str],
    /// The request's name prefix (kubelet's `node-csr-` for bootstrap requests).
    pub name_prefix: &'static str,
}

/// The client certificate the node authenticates to the API server with.
pub const CLIENT: Kind = Kind {
    prefix: "kubelet-client",
    signer: SIGNER_NAME,
    usages: &USAGES,
    name_prefix: "node-csr-",
};

/// The serving certificate of the kubelet API (`serverTLSBootstrap`): signed by the cluster
/// once someone (or something) approves the request; kube-controller-manager does not.
pub const SERVING: Kind = Kind {
    prefix: "kubelet-server",
    signer: "kubernetes.io/kubelet-serving",
    usages: &["digital signature", "key encipherment", "server auth"],
    name_prefix: "csr-",
};
/// How long to wait for approval and signing before giving up (kubelet's bootstrap waits as
/// long).
pub const ISSUE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Backoff between failed renewals, doubling from the first to the last.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// Why credentials could not be had.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// A kubeconfig or a certificate file says nothing usable; retrying does not help until
    /// it is fixed.
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    /// A file holds no usable certificate; retrying does not help until it is replaced.
    #[error("{path}: {source}")]
    Certificate {
        path: PathBuf,
        #[source]
        source: CertificateError,
    },
    /// Reading or writing a file failed; retrying may help.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The API server could not be reached or refused; retry with backoff.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// Generating the key or the request failed; not retryable.
    #[error("generating the node's key and certificate request: {0}")]
    Key(#[source] rcgen::Error),
    /// The request was denied, or signing it failed; a retry makes a new request with a new key.
    #[error("CertificateSigningRequest {csr} {condition}: {message}")]
    NotIssued {
        csr: String,
        condition: String,
        message: String,
    },
    /// Nobody approved and signed the request in time; a retry waits again for the same one.
    #[error("CertificateSigningRequest {csr}: no certificate within {timeout:?}")]
    Timeout { csr: String, timeout: Duration },
}

/// Why PEM data yields no certificate.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("bad PEM: {0}")]
    Pem(#[source] x509_parser::error::PEMError),
    #[error("bad certificate: {0}")]
    X509(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("no certificate")]
    Missing,
}

/// What [`ensure_credentials`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// The kubeconfig's client certificate is valid: nothing was done.
    Valid,
    /// The cert dir held a valid certificate: the kubeconfig was written for it.
    FromCertDir,
    /// A certificate was requested and issued, and the kubeconfig written for it.
    Issued { csr: String },
}

/// Makes `kubeconfig` usable, as kubelet does with `--bootstrap-kubeconfig`: if it does not
/// exist or its client certificate is missing or expired, takes a certificate from `cert_dir`
/// or requests one with the credentials in `bootstrap`, then writes `kubeconfig` with the
/// bootstrap kubeconfig's server and CA and the certificate in `cert_dir`.
pub async fn ensure_credentials(
    kubeconfig: &Path,
    bootstrap: &Path,
    cert_dir: &Path,
    node: &str,
) -> Result<Credentials, BootstrapError> {
    let now = SystemTime::now();
    match kubeconfig_certificate(kubeconfig).and_then(|(pem, path)| {
        validity(&pem).map_err(|source| BootstrapError::Certificate { path, source })
    }) {
        Ok(valid) if valid.holds_at(now) => return Ok(Credentials::Valid),
        Ok(valid) => tracing::info!(
            kubeconfig = %kubeconfig.display(),
            not_after = ?valid.not_after,
            "the client certificate has expired; bootstrapping"
        ),
        Err(why) => tracing::info!(
            kubeconfig = %kubeconfig.display(),
            "no usable client certificate ({why}); bootstrapping"
        ),
    }
    let cert_dir = std::path::absolute(cert_dir).map_err(|source| BootstrapError::Io {
        action: "resolving",
        path: cert_dir.to_owned(),
        source,
    })?;
    let current = cert_dir.join(CURRENT);
    let cluster = bootstrap_cluster(bootstrap)?;
    if stored_validity(&current).is_ok_and(|valid| valid.holds_at(now)) {
        write_kubeconfig(kubeconfig, cluster, &current)?;
        tracing::info!(cert = %current.display(), "using the certificate already in the cert dir");
        return Ok(Credentials::FromCertDir);
    }
    create_dir(&cert_dir)?;
    let pending = cert_dir.join(PENDING_KEY);
    let key = pending_key(&pending)?;
    let client = super::client(bootstrap).await?;
    let result = request_certificate(client, CLIENT, node, &[], &key).await;
    if let Err(BootstrapError::NotIssued { .. }) = &result {
        // The same key would only find the same refused request again.
        remove_file(&pending)?;
    }
    let (csr, cert) = result?;
    store(
        &cert_dir,
        CLIENT,
        &cert,
        &key.serialize_pem(),
        SystemTime::now(),
    )?;
    remove_file(&pending)?;
    write_kubeconfig(kubeconfig, cluster, &current)?;
    tracing::info!(%csr, cert = %current.display(), kubeconfig = %kubeconfig.display(), "client certificate issued");
    Ok(Credentials::Issued { csr })
}

/// What [`rotate`] renews, and with what.
#[derive(Clone, Debug)]
pub struct Rotation {
    /// `--kubeconfig`; rotation works only if its client certificate is the cert dir's
    /// [`CURRENT`], as [`ensure_credentials`] writes it.
    pub kubeconfig: PathBuf,
    /// `--cert-dir`.
    pub cert_dir: PathBuf,
    /// The node's name.
    pub node: String,
    /// `--bootstrap-kubeconfig`: used when the certificate expired before it could be renewed
    /// (where kubelet exits to bootstrap again on restart).
    pub bootstrap: Option<PathBuf>,
}

/// A client that sends each request through whichever client the returned sender holds at
/// that moment. Clones given to the daemon's tasks thus use a renewed certificate from their
/// next request on; requests under way (a long watch, say) finish on the connection they
/// have, whose certificate was valid when it was opened.
pub fn swappable(initial: kube::Client) -> (kube::Client, watch::Sender<kube::Client>) {
    let namespace = initial.default_namespace().to_owned();
    let (current, receiver) = watch::channel(initial);
    let service = tower::service_fn(move |request| {
        let client = receiver.borrow().clone();
        async move { client.send(request).await }
    });
    (kube::Client::new(service, namespace), current)
}

/// Renews the client certificate for as long as it runs: at 70–90 % of each certificate's
/// lifetime, requests a new one with the current credentials, stores it, and puts a client
/// built from the kubeconfig into `client`. Failed renewals are retried with backoff; once
/// the certificate has expired, with the bootstrap kubeconfig if there is one. Returns at
/// once if the kubeconfig's certificate is not the cert dir's (someone else manages it).
pub async fn rotate(rotation: Rotation, client: watch::Sender<kube::Client>) {
    let current = match std::path::absolute(&rotation.cert_dir) {
        Ok(dir) => dir.join(CURRENT),
        Err(e) => {
            tracing::error!(cert_dir = %rotation.cert_dir.display(), "not rotating the client certificate: {e}");
            return;
        }
    };
    match kubeconfig_certificate(&rotation.kubeconfig) {
        Ok((_, path)) if path == current => {}
        Ok((_, path)) => {
            tracing::info!(cert = %path.display(), "the client certificate is not in the cert dir: not rotating it");
            return;
        }
        Err(e) => {
            tracing::error!("not rotating the client certificate: {e}");
            return;
        }
    }
    let mut failures = 0;
    loop {
        let now = SystemTime::now();
        let wait = match stored_validity(&current) {
            Ok(valid) if failures == 0 => {
                let deadline = rotation_deadline(valid, rand::random::<f64>());
                tracing::info!(not_after = ?valid.not_after, rotation = ?deadline, "client certificate rotation scheduled");
                deadline.duration_since(now).unwrap_or_default()
            }
            Ok(_) => retry_delay(failures),
            Err(e) => {
                tracing::error!("client certificate rotation: {e}");
                retry_delay(failures)
            }
        };
        tokio::time::sleep(wait).await;
        match renew(&rotation, &current, &client).await {
            Ok(csr) => {
                tracing::info!(%csr, "client certificate renewed");
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(failures, "renewing the client certificate: {e}");
            }
        }
    }
}

/// One renewal: with the current client, or with the bootstrap kubeconfig once the current
/// certificate has expired. Returns the request's name.
async fn renew(
    rotation: &Rotation,
    current: &Path,
    client: &watch::Sender<kube::Client>,
) -> Result<String, BootstrapError> {
    let expired = !stored_validity(current)?.holds_at(SystemTime::now());
    let requester = match (&rotation.bootstrap, expired) {
        (Some(bootstrap), true) => super::client(bootstrap).await?,
        _ => client.borrow().clone(),
    };
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(BootstrapError::Key)?;
    let (csr, cert) = request_certificate(requester, CLIENT, &rotation.node, &[], &key).await?;
    let cert_dir = current.parent().unwrap_or(Path::new("/"));
    store(
        cert_dir,
        CLIENT,
        &cert,
        &key.serialize_pem(),
        SystemTime::now(),
    )?;
    // kube-rs reads the certificate when a client is built, not per connection.
    client.send_replace(super::client(&rotation.kubeconfig).await?);
    Ok(csr)
}

/// The request kubelet makes for its certificates: subject `O=system:nodes,
/// CN=system:node:NODE`, and for a serving certificate the node's names and addresses
/// (`alternative_names`) as its only extension.
fn node_certificate_request(
    node: &str,
    alternative_names: &[String],
    key: &rcgen::KeyPair,
) -> Result<rcgen::CertificateSigningRequest, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(alternative_names.to_vec())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params.serialize_request(key)
}

/// Requests a certificate of `kind` for `node` (and its `alternative_names`) with `key`
/// and waits until it is issued; the request's name and the certificate (PEM).
pub async fn request_certificate(
    client: kube::Client,
    kind: Kind,
    node: &str,
    alternative_names: &[String],
    key: &rcgen::KeyPair,
) -> Result<(String, Vec<u8>), BootstrapError> {
    let common_name = format!("system:node:{node}");
    let request = node_certificate_request(node, alternative_names, key)
        .and_then(|request| request.pem())
        .map_err(BootstrapError::Key)?;
    let name = request_name(
        kind,
        &rcgen::PublicKeyData::subject_public_key_info(key),
        &common_name,
        "system:nodes",
    );
    let api: Api<CertificateSigningRequest> = Api::all(client);
    let object = CertificateSigningRequest {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..ObjectMeta::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request.into_bytes()),
            signer_name: kind.signer.to_owned(),
            usages: Some(kind.usages.iter().map(|u| (*u).to_owned()).collect()),
            ..CertificateSigningRequestSpec::default()
        },
        status: None,
    };
    match api.create(&PostParams::default(), &object).await {
        Ok(_) => tracing::info!(csr = %name, "CertificateSigningRequest created"),
        // The name is a digest of the key: the same request, made before a restart.
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            tracing::info!(csr = %name, "CertificateSigningRequest exists already")
        }
        Err(source) => {
            return Err(ClusterError::Api {
                call: format!("creating CertificateSigningRequest {name}"),
                source,
            }
            .into())
        }
    }
    let cert = wait_for_certificate(&api, &name, ISSUE_TIMEOUT).await?;
    Ok((name, cert))
}

/// Watches the request `name` until it is issued (its certificate), refused, or `timeout`
/// passes. The watch resumes with backoff when the API server is away.
async fn wait_for_certificate(
    api: &Api<CertificateSigningRequest>,
    name: &str,
    timeout: Duration,
) -> Result<Vec<u8>, BootstrapError> {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let events = watcher(api.clone(), config)
        .default_backoff()
        .applied_objects();
    let mut events = std::pin::pin!(events);
    let wait = async {
        while let Some(event) = events.next().await {
            let csr = match event {
                Ok(csr) => csr,
                Err(e) => {
                    tracing::warn!(csr = %name, "watching the CertificateSigningRequest: {e}");
                    continue;
                }
            };
            match csr_state(&csr) {
                CsrState::Pending => {}
                CsrState::Issued(cert) => return Ok(cert),
                CsrState::Refused { condition, message } => {
                    return Err(BootstrapError::NotIssued {
                        csr: name.to_owned(),
                        condition,
                        message,
                    })
                }
            }
        }
        // The watcher's stream does not end; were it to, the wait has failed.
        Err(BootstrapError::Timeout {
            csr: name.to_owned(),
            timeout,
        })
    };
    tokio::time::timeout(timeout, wait)
        .await
        .unwrap_or_else(|_| {
            Err(BootstrapError::Timeout {
                csr: name.to_owned(),
                timeout,
            })
        })
}

/// Where a CertificateSigningRequest stands, from the requester's side.
#[derive(Debug, PartialEq, Eq)]
enum CsrState {
    /// Not yet approved, or approved and not yet signed.
    Pending,
    /// Signed: the certificate, PEM.
    Issued(Vec<u8>),
    /// Denied, or signing failed: the condition's type and message.
    Refused { condition: String, message: String },
}

fn csr_state(csr: &CertificateSigningRequest) -> CsrState {
    let status = csr.status.as_ref();
    let refused = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| matches!(c.type_.as_str(), "Denied" | "Failed") && c.status != "False");
    if let Some(condition) = refused {
        return CsrState::Refused {
            condition: condition.type_.clone(),
            message: condition
                .message
                .clone()
                .or_else(|| condition.reason.clone())
                .unwrap_or_default(),
        };
    }
    match status.and_then(|s| s.certificate.as_ref()) {
        Some(ByteString(cert)) if !cert.is_empty() => CsrState::Issued(cert.clone()),
        _ => CsrState::Pending,
    }
}

/// A name that is the same for the same key and subject (as kubelet's `node-csr-<digest>`),
/// so that a restarted bootstrap finds its earlier request.
fn request_name(
    kind: Kind,
    public_key_der: &[u8],
    common_name: &str,
    organization: &str,
) -> String {
    let encode = |data: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data);
    let mut hash = Sha256::new();
    // '|' is not in the URL-safe alphabet: no two inputs write the same stream.
    for part in [
        public_key_der,
        common_name.as_bytes(),
        organization.as_bytes(),
    ]
    .into_iter()
    .chain(kind.usages.iter().map(|u| u.as_bytes()))
    {
        hash.update(encode(part));
        hash.update(b"|");
    }
    format!("{}{}", kind.name_prefix, encode(&hash.finalize()))
}

/// A certificate's validity period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    pub fn holds_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// The validity of the first certificate in `pem` (the leaf, in a kubeconfig's or kubelet's
/// files).
pub fn validity(pem: &[u8]) -> Result<Validity, CertificateError> {
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(CertificateError::Pem)?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        let cert = block.parse_x509().map_err(CertificateError::X509)?;
        let time = |t: &x509_parser::time::ASN1Time| {
            let seconds = t.timestamp();
            match u64::try_from(seconds) {
                Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
                Err(_) => UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs()),
            }
        };
        return Ok(Validity {
            not_before: time(&cert.validity().not_before),
            not_after: time(&cert.validity().not_after),
        });
    }
    Err(CertificateError::Missing)
}

/// When to renew a certificate: at 70–90 % of its lifetime, `jitter` (in [0, 1)) picking
/// where, so that nodes given certificates at once do not all come back at once (kubelet's
/// certificate manager does the same).
pub fn rotation_deadline(valid: Validity, jitter: f64) -> SystemTime {
    let lifetime = valid
        .not_after
        .duration_since(valid.not_before)
        .unwrap_or_default();
    valid.not_before + lifetime.mul_f64(0.7 + 0.2 * jitter.clamp(0.0, 1.0))
}

/// The wait before the next attempt after `failures` failed renewals.
pub fn retry_delay(failures: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(RETRY_MAX)
}

/// The client certificate (PEM) of the kubeconfig's current context, and where it came
/// from: its file, or the kubeconfig itself when embedded.
fn kubeconfig_certificate(kubeconfig: &Path) -> Result<(Vec<u8>, PathBuf), BootstrapError> {
    let invalid = |reason: String| BootstrapError::Invalid {
        path: kubeconfig.to_owned(),
        reason,
    };
    let config = Kubeconfig::read_from(kubeconfig).map_err(|e| invalid(e.to_string()))?;
    let context = current_context(&config).map_err(&invalid)?;
    let user = context
        .user
        .as_deref()
        .ok_or_else(|| invalid("the current context names no user".to_owned()))?;
    let auth = config
        .auth_infos
        .iter()
        .find(|a| a.name == user)
        .and_then(|a| a.auth_info.as_ref())
        .ok_or_else(|| invalid(format!("no user {user}")))?;
    if let Some(data) = &auth.client_certificate_data {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| invalid(format!("client-certificate-data: {e}")))?;
        return Ok((pem, kubeconfig.to_owned()));
    }
    let path = auth
        .client_certificate
        .as_deref()
        .map(PathBuf::from)
        .ok_or_else(|| invalid(format!("user {user} has no client certificate")))?;
    let pem = std::fs::read(&path).map_err(|source| BootstrapError::Io {
        action: "reading",
        path: path.clone(),
        source,
    })?;
    Ok((pem, path))
}

fn current_context(config: &Kubeconfig) -> Result<&Context, String> {
    let name = config
        .current_context
        .as_deref()
        .ok_or("no current-context")?;
    config
        .contexts
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| format!("no context {name}"))
}

/// The bootstrap kubeconfig's cluster, with its CA embedded so that the node's kubeconfig
/// stands alone.
fn bootstrap_cluster(bootstrap: &Path) -> Result<Cluster, BootstrapError> {
    let invalid = |reason: String| BootstrapError::Invalid {
        path: bootstrap.to_owned(),
        reason,
    };
    let config = Kubeconfig::read_from(bootstrap).map_err(|e| invalid(e.to_string()))?;
    let name = &current_context(&config).map_err(&invalid)?.cluster;
    let mut cluster = config
        .clusters
        .iter()
        .find(|c| &c.name == name)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| invalid(format!("no cluster {name}")))?;
    if cluster.server.is_none() {
        return Err(invalid(format!("cluster {name} has no server")));
    }
    if let Some(file) = cluster.certificate_authority.take() {
        if cluster.certificate_authority_data.is_none() {
            let ca = std::fs::read(&file).map_err(|source| BootstrapError::Io {
                action: "reading",
                path: file.into(),
                source,
            })?;
            cluster.certificate_authority_data =
                Some(base64::engine::general_purpose::STANDARD.encode(ca));
        }
    }
    Ok(cluster)
}

/// Writes the node's kubeconfig as kubelet does after bootstrapping: `cluster`, and the
/// certificate and key both from `cert` (one file holds both).
fn write_kubeconfig(path: &Path, cluster: Cluster, cert: &Path) -> Result<(), BootstrapError> {
    let cert = cert.display().to_string();
    let config = Kubeconfig {
        clusters: vec![NamedCluster {
            name: "default-cluster".to_owned(),
            cluster: Some(cluster),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "default-auth".to_owned(),
            auth_info: Some(AuthInfo {
                client_certificate: Some(cert.clone()),
                client_key: Some(cert),
                ..AuthInfo::default()
            }),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: "default-context".to_owned(),
            context: Some(Context {
                cluster: "default-cluster".to_owned(),
                user: Some("default-auth".to_owned()),
                namespace: Some("default".to_owned()),
                ..Context::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some("default-context".to_owned()),
        kind: Some("Config".to_owned()),
        api_version: Some("v1".to_owned()),
        ..Kubeconfig::default()
    };
    let yaml = serde_yaml::to_string(&config).map_err(|e| BootstrapError::Invalid {
        path: path.to_owned(),
        reason: format!("serializing: {e}"),
    })?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir(parent)?;
    }
    write_private(path, yaml.as_bytes())
}

/// The validity of the certificate in a file of the cert dir, which must hold its key too.
pub fn stored_validity(path: &Path) -> Result<Validity, BootstrapError> {
    let pem = std::fs::read(path).map_err(|source| BootstrapError::Io {
        action: "reading",
        path: path.to_owned(),
        source,
    })?;
    let invalid = |reason: String| BootstrapError::Invalid {
        path: path.to_owned(),
        reason,
    };
    if !String::from_utf8_lossy(&pem).contains("PRIVATE KEY-----") {
        return Err(invalid("no private key".to_owned()));
    }
    validity(&pem).map_err(|source| BootstrapError::Certificate {
        path: path.to_owned(),
        source,
    })
}

/// Keeps `cert` and `key` as kubelet's certificate store does: a new
/// `<prefix>-<time>.pem`, then the `<prefix>-current.pem` symlink moved to it at once.
pub fn store(
    cert_dir: &Path,
    kind: Kind,
    cert: &[u8],
    key: &str,
    now: SystemTime,
) -> Result<PathBuf, BootstrapError> {
    // Renewals within one second (a short-lived certificate due at once) keep both files.
    let stamp = file_time(now);
    let (name, file) = (0..)
        .map(|n| match n {
            0 => format!("{}-{stamp}.pem", kind.prefix),
            n => format!("{}-{stamp}-{n}.pem", kind.prefix),
        })
        .map(|name| (name.clone(), cert_dir.join(name)))
        .find(|(_, file)| !file.exists())
        .expect("an unbounded range ends only with a free name");
    validity(cert).map_err(|source| BootstrapError::Certificate {
        path: file.clone(),
        source,
    })?;
    let mut pem = cert.to_vec();
    if !pem.ends_with(b"\n") {
        pem.push(b'\n');
    }
    pem.extend_from_slice(key.as_bytes());
    write_private(&file, &pem)?;
    let updated = cert_dir.join(format!("{}-updated.pem", kind.prefix));
    remove_file(&updated)?;
    // Relative: the directory may be moved or mounted elsewhere.
    std::os::unix::fs::symlink(&name, &updated).map_err(|source| BootstrapError::Io {
        action: "linking",
        path: updated.clone(),
        source,
    })?;
    let current = cert_dir.join(format!("{}-current.pem", kind.prefix));
    std::fs::rename(&updated, &current).map_err(|source| BootstrapError::Io {
        action: "replacing",
        path: current,
        source,
    })?;
    Ok(file)
}

/// The key of the pending request, or a new ECDSA P-256 key kept there first.
fn pending_key(path: &Path) -> Result<rcgen::KeyPair, BootstrapError> {
    match std::fs::read_to_string(path) {
        Ok(pem) => match rcgen::KeyPair::from_pem(&pem) {
            Ok(key) => return Ok(key),
            Err(e) => {
                tracing::warn!(key = %path.display(), "replacing an unreadable pending key: {e}")
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(BootstrapError::Io {
                action: "reading",
                path: path.to_owned(),
                source,
            })
        }
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(BootstrapError::Key)?;
    write_private(path, key.serialize_pem().as_bytes())?;
    Ok(key)
}

/// Writes `data` to `path` readable by its owner only, replacing it at once (never half
/// written).
fn write_private(path: &Path, data: &[u8]) -> Result<(), BootstrapError> {
    let io = |action, source| BootstrapError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp-write");
    let temporary = PathBuf::from(temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(|e| io("creating", e))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(|e| io("writing", e))?;
    std::fs::rename(&temporary, path).map_err(|e| io("replacing", e))
}

fn create_dir(path: &Path) -> Result<(), BootstrapError> {
    std::fs::create_dir_all(path).map_err(|source| BootstrapError::Io {
        action: "creating",
        path: path.to_owned(),
        source,
    })
}

fn remove_file(path: &Path) -> Result<(), BootstrapError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(BootstrapError::Io {
            action: "removing",
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// kubelet's file-name time, `2006-01-02-15-04-05`, in UTC.
fn file_time(time: SystemTime) -> String {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // Days to a civil date (Howard Hinnant's algorithm), for days since 1970 only.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}-{:02}-{:02}-{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequestCondition, CertificateSigningRequestStatus,
    };

    fn self_signed(not_before: (i32, u8, u8), not_after: (i32, u8, u8)) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn validity_is_read_from_the_first_certificate_after_other_blocks() {
        let (cert, key) = self_signed((2020, 1, 1), (2030, 1, 1));
        let valid = validity(format!("{key}{cert}").as_bytes()).unwrap();
        assert_eq!(valid.not_before, at(1_577_836_800));
        assert_eq!(valid.not_after, at(1_893_456_000));
        assert!(valid.holds_at(at(1_700_000_000)));
        assert!(!valid.holds_at(at(1_893_456_000)));
        assert!(validity(key.as_bytes()).is_err());
    }

    #[test]
    fn rotation_falls_between_70_and_90_percent_of_the_lifetime() {
        let valid = Validity {
            not_before: at(1_000),
            not_after: at(2_000),
        };
        assert_eq!(rotation_deadline(valid, 0.0), at(1_700));
        assert_eq!(rotation_deadline(valid, 0.5), at(1_800));
        assert_eq!(rotation_deadline(valid, 1.0), at(1_900));
    }

    #[test]
    fn retries_back_off_to_a_ceiling() {
        assert_eq!(retry_delay(1), Duration::from_secs(2));
        assert_eq!(retry_delay(2), Duration::from_secs(4));
        assert_eq!(retry_delay(5), Duration::from_secs(32));
        assert_eq!(retry_delay(40), RETRY_MAX);
    }

    #[test]
    fn file_names_carry_kubelets_time_format() {
        assert_eq!(file_time(at(0)), "1970-01-01-00-00-00");
        assert_eq!(file_time(at(1_709_210_096)), "2024-02-29-12-34-56");
        assert_eq!(file_time(at(1_893_455_999)), "2029-12-31-23-59-59");
    }

    #[test]
    fn request_names_depend_on_the_key_and_subject_only() {
        let a = request_name(CLIENT, b"key-a", "system:node:n1", "system:nodes");
        assert_eq!(
            a,
            request_name(CLIENT, b"key-a", "system:node:n1", "system:nodes")
        );
        assert_ne!(
            a,
            request_name(CLIENT, b"key-b", "system:node:n1", "system:nodes")
        );
        assert_ne!(
            a,
            request_name(CLIENT, b"key-a", "system:node:n2", "system:nodes")
        );
        assert!(a.starts_with("node-csr-") && a.len() <= 253);
    }

    fn csr(conditions: &[(&str, &str)], certificate: Option<&[u8]>) -> CertificateSigningRequest {
        CertificateSigningRequest {
            status: Some(CertificateSigningRequestStatus {
                certificate: certificate.map(|c| ByteString(c.to_vec())),
                conditions: Some(
                    conditions
                        .iter()
                        .map(|(type_, status)| CertificateSigningRequestCondition {
                            type_: (*type_).to_owned(),
                            status: (*status).to_owned(),
                            message: Some(format!("{type_} by test")),
                            ..CertificateSigningRequestCondition::default()
                        })
                        .collect(),
                ),
            }),
            ..CertificateSigningRequest::default()
        }
    }

    #[test]
    fn a_request_is_issued_once_it_has_a_certificate_and_refused_when_denied_or_failed() {
        assert_eq!(
            csr_state(&CertificateSigningRequest::default()),
            CsrState::Pending
        );
        assert_eq!(
            csr_state(&csr(&[("Approved", "True")], None)),
            CsrState::Pending
        );
        assert_eq!(
            csr_state(&csr(&[("Approved", "True")], Some(b""))),
            CsrState::Pending
        );
        assert_eq!(
            csr_state(&csr(&[("Approved", "True")], Some(b"PEM"))),
            CsrState::Issued(b"PEM".to_vec())
        );
        for refusal in ["Denied", "Failed"] {
            assert_eq!(
                csr_state(&csr(
                    &[("Approved", "True"), (refusal, "True")],
                    Some(b"PEM")
                )),
                CsrState::Refused {
                    condition: refusal.to_owned(),
                    message: format!("{refusal} by test"),
                }
            );
        }
    }

    #[test]
    fn the_request_carries_the_node_subject_and_no_extensions() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let der = node_certificate_request("n1", &[], &key).unwrap();
        use x509_parser::prelude::FromDer as _;
        let (_, parsed) =
            x509_parser::certification_request::X509CertificationRequest::from_der(der.der())
                .unwrap();
        assert_eq!(
            parsed.certification_request_info.subject.to_string(),
            "O=system:nodes, CN=system:node:n1"
        );
        assert!(parsed.requested_extensions().is_none());
    }

    #[test]
    fn the_store_keeps_each_certificate_and_points_current_at_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let mut stored = Vec::new();
        // The last two in the same second.
        for (year, now) in [
            (2020, 1_700_000_000),
            (2021, 1_700_000_100),
            (2022, 1_700_000_100),
        ] {
            let (cert, key) = self_signed((year, 1, 1), (year + 10, 1, 1));
            stored.push(store(dir.path(), CLIENT, cert.as_bytes(), &key, at(now)).unwrap());
        }
        let names: Vec<_> = stored.iter().map(|f| f.file_name().unwrap()).collect();
        assert_eq!(
            names,
            [
                "kubelet-client-2023-11-14-22-13-20.pem",
                "kubelet-client-2023-11-14-22-15-00.pem",
                "kubelet-client-2023-11-14-22-15-00-1.pem",
            ]
        );
        assert!(stored.iter().all(|f| f.exists()));
        let current = dir.path().join(CURRENT);
        assert_eq!(std::fs::read_link(&current).unwrap(), names[2]);
        // 2022-01-01
        assert_eq!(
            stored_validity(&current).unwrap().not_before,
            at(1_640_995_200)
        );
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&stored[2]).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (_, key) = self_signed((2020, 1, 1), (2030, 1, 1));
        assert!(store(dir.path(), CLIENT, b"not a certificate", &key, at(0)).is_err());
    }

    #[test]
    fn the_written_kubeconfig_names_the_stored_certificate_and_embeds_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), "CA PEM").unwrap();
        let bootstrap = dir.path().join("bootstrap.kubeconfig");
        std::fs::write(
            &bootstrap,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority: ca.crt\nusers:\n- name: u\n  user:\n    token: abcdef.0123456789abcdef\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\n",
        )
        .unwrap();
        let cluster = bootstrap_cluster(&bootstrap).unwrap();
        let kubeconfig = dir.path().join("sub/kubelet.conf");
        let (cert, key) = self_signed((2020, 1, 1), (2030, 1, 1));
        store(dir.path(), CLIENT, cert.as_bytes(), &key, at(0)).unwrap();
        let current = dir.path().join(CURRENT);
        write_kubeconfig(&kubeconfig, cluster, &current).unwrap();

        let written = Kubeconfig::read_from(&kubeconfig).unwrap();
        let cluster = written.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(cluster.certificate_authority, None);
        assert_eq!(
            cluster.certificate_authority_data.as_deref(),
            Some(
                base64::engine::general_purpose::STANDARD
                    .encode("CA PEM")
                    .as_str()
            )
        );
        let (pem, path) = kubeconfig_certificate(&kubeconfig).unwrap();
        assert_eq!(path, current);
        assert_eq!(validity(&pem).unwrap().not_after, at(1_893_456_000));
        // The bootstrap kubeconfig has no client certificate: it is not a node's credential.
        assert!(kubeconfig_certificate(&bootstrap).is_err());
    }
}
