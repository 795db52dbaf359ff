//! Pod sources: where desired pods come from. Today that is the static pod directory
//! (kubelet's `staticPodPath` / `--pod-manifest-path`); the API server comes later.
//!
//! A source only produces desired state — pods as kubelet would run them, plus the other
//! objects a manifest directory may hold (Services, EndpointSlices, NetworkPolicies,
//! Namespaces, ConfigMaps, Secrets), which it writes into the object store — and the
//! problems it found in the manifests. It knows nothing of the runtime: reconcilers compare
//! a [`Snapshot`] and the store with what runs and act.

mod defaults;
mod manifest;
pub(crate) mod strict;
mod validate;
pub(crate) mod validate_objects;
mod watch;

pub use defaults::apply_defaults;
pub use manifest::{
    scan, ManifestError, ManifestObjects, ManifestSource, Snapshot, StaticPod,
    CONFIG_HASH_ANNOTATION, CONFIG_SEEN_ANNOTATION, CONFIG_SOURCE_ANNOTATION,
};
pub use watch::watch;

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

/// `kubernetes.io/config.source` of the pods that came from the API server, as kubelet marks
/// them in memory.
pub const CONFIG_SOURCE_API: &str = "api";

/// What a pod source says about its pods.
#[derive(Debug)]
pub enum PodUpdate {
    /// Every pod of the source (a manifest read, a watcher's relist).
    Set(Vec<Arc<Pod>>),
    /// One pod added or changed.
    Apply(Arc<Pod>),
    /// One pod gone: its last state.
    Delete(Arc<Pod>),
}

/// Whether `pod` came from the API server (not the manifest directory).
pub fn from_api(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_SOURCE_ANNOTATION))
        .is_some_and(|source| source == CONFIG_SOURCE_API)
}

#[cfg(test)]
mod tests;
