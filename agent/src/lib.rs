//! bosun's node agent: the pod lifecycle (kubelet's job) built on the `cri` crate, fed by
//! pod sources (a manifest directory now, the API server later). The `bosun` binary wires it
//! to its CLI. The library knows pods' desired state and the runtime's actual state; it writes
//! Services to the datapath only through `netdp`'s reconciler and does not know BPF maps or
//! programs themselves.

/// bosun's version: the workspace's, then the git revision it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("BOSUN_GIT_REVISION"),
    ")"
);

pub mod api;
pub mod cluster;
pub mod daemon;
pub mod events;
pub mod metrics;
pub mod pod;
pub mod policy;
pub mod proxy;
pub mod runtime;
pub mod server;
pub mod service;
pub mod source;
pub mod store;
pub mod util;
