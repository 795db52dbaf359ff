//! bosun's node agent: the pod lifecycle (kubelet's job) built on the `cri` crate, fed by
//! pod sources (a manifest directory now, the API server later). The `bosun` binary wires it
//! to its CLI. The library knows pods' desired state and the runtime's actual state; it does
//! not know BPF maps (that is `netdp`).

pub mod api;
pub mod daemon;
pub mod events;
pub mod pod;
pub mod runtime;
pub mod source;
