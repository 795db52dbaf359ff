//! Cluster mode: bosun as its node's kubelet in a cluster. It registers the Node and keeps
//! its Lease and status fresh ([`node`]), adds the pods bound to this node as a pod source
//! ([`pods`]), and writes their status back to the API server ([`status`]). Everything goes
//! through kube-rs with the node's own credentials (`system:node:NAME`), so bosun does no
//! more than the Node authorizer and the NodeRestriction admission plugin allow.
//!
//! The API server being away never stops a pod: watches resume with backoff (relisting
//! after 410 Gone), and status writes resume with the latest status.

pub mod bootstrap;
pub mod datapath;
pub mod events;
#[cfg(test)]
pub(crate) mod fake_api;
pub mod mirror;
pub mod node;
pub mod objects;
pub mod pods;
pub mod reflect;
pub mod services;
pub mod status;
pub mod tokens;

use std::path::Path;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::Api;

use crate::store::ObjectKey;

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

/// The object without its managed fields: nothing on a node reads them, and they can be most
/// of an object's size (every copy a node keeps would carry them).
pub(crate) fn narrowed<K: kube::Resource>(mut object: K) -> K {
    object.meta_mut().managed_fields = None;
    object
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

/// Patches the status of the pod `key` to `status`, only if the pod there is still `uid`
/// (the UID in the patch fails it otherwise). A pod that is gone or was replaced is no
/// error: there is nothing of ours to write.
pub(crate) async fn patch_pod_status(
    client: &kube::Client,
    key: &ObjectKey,
    uid: &str,
    status: Option<&PodStatus>,
) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &key.namespace);
    let patch = serde_json::json!({"metadata": {"uid": uid}, "status": status});
    match api
        .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 || e.code == 422 => {
            tracing::debug!(pod = %key, code = e.code, "pod status not written: {}", e.message);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Deletes the pod `key` at once (grace 0), only if it is still `uid`. A pod already gone or
/// replaced is no error.
pub(crate) async fn delete_pod(
    client: &kube::Client,
    key: &ObjectKey,
    uid: &str,
) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &key.namespace);
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&key.name, &params).await {
        Ok(_) => {
            tracing::info!(pod = %key, "pod deleted from the API server");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}
