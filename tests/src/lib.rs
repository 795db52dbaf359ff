//! A real node for end-to-end tests: starts a private containerd (its own root, state, socket
//! and CNI network), builds the pause and busybox images locally as deterministic OCI archives,
//! imports them, and removes everything it created when dropped, even when a test fails.
//!
//! Everything here needs root and acts on the real machine: mounts, cgroups, links and
//! iptables rules, each confined to what a node created and recorded.

pub mod cluster;
pub mod control_plane;
pub mod daemon;
pub mod fake_cri;
pub mod fixtures;
pub mod images;
pub mod netns;
pub mod node;
pub mod traffic;

pub use images::{ImageArchive, ImageError, TestImages, BUSYBOX_IMAGE, PAUSE_IMAGE};
pub use node::{reap_stale_nodes, NodeOptions, StartTimings, SystemdHost, TestNode, BASE_DIR};
