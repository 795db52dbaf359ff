//! Cluster mode: bosun as its node's kubelet in a cluster. It registers the Node and keeps
//! its Lease and status fresh ([`node`]), adds the pods bound to this node as a pod source
//! ([`pods`]), and writes their status back to the API server ([`status`]). Everything goes
//! through kube-rs with the node's own credentials (`system:node:NAME`), so bosun does no
//! more than the Node authorizer and the NodeRestriction admission plugin allow.
//!
//! The API server being away never stops a pod: watches resume with backoff (relisting
//! after 410 Gone), and status writes resume with the latest status.

pub mod events;
pub mod mirror;
pub mod node;
pub mod objects;
pub mod pods;
pub mod status;
pub mod tokens;

use std::path::Path;

/// Why the API server could not be reached or answered no.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The kubeconfig is unreadable or invalid; retrying does not help.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A call failed; the caller retries with backoff.
    #[error("{call}: {source}")]
    Api {
        call: String,
        #[source]
        source: kube::Error,
    },
}

/// A client for the API server named in `kubeconfig`, with its credentials.
pub async fn client(kubeconfig: &Path) -> Result<kube::Client, ClusterError> {
    let invalid = |source: Box<dyn std::error::Error + Send + Sync>| ClusterError::Kubeconfig {
        path: kubeconfig.display().to_string(),
        source,
    };
    let file = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| invalid(e.into()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .map_err(|e| invalid(e.into()))?;
    kube::Client::try_from(config).map_err(|e| invalid(e.into()))
}
