//! One pod's life on this node: its CRI configuration, its lifecycle, its status.

pub mod cgroup;
pub mod log_rotation;
pub mod observed;
pub mod plan;
pub mod probe;
pub mod pull_secrets;
pub mod references;
pub mod spec;
pub mod status;
pub mod systemd;
pub mod volume;
pub mod worker;
#[cfg(test)]
mod worker_tests;
