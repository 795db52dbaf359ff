//! Clients for a container runtime: the CRI v1 RuntimeService and ImageService over a unix
//! socket, and containerd's native API for what CRI lacks (the task event stream, importing an
//! OCI image archive). This crate knows CRI and containerd and nothing of pods' desired state.

mod brief;
pub mod client;
pub mod containerd;
pub mod endpoint;
pub mod error;
pub mod logs;
pub mod oci;
pub mod reference;
pub mod streaming;

pub use bosun_proto::runtime::v1 as api;
pub use client::{image_spec, CriClient, CRI_API_VERSION};
pub use containerd::{
    ContainerdClient, ContainerdError, ImportedImage, LifecycleEvent, CRI_NAMESPACE,
};
pub use endpoint::{socket_path, DEFAULT_RUNTIME_ENDPOINT};
pub use error::CriError;
