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
mod strict;
mod validate;
mod validate_objects;
mod watch;

pub use defaults::apply_defaults;
pub use manifest::{
    scan, ManifestError, ManifestObjects, ManifestSource, Snapshot, StaticPod,
    CONFIG_HASH_ANNOTATION, CONFIG_SEEN_ANNOTATION, CONFIG_SOURCE_ANNOTATION,
};
pub use watch::watch;

#[cfg(test)]
mod tests;
