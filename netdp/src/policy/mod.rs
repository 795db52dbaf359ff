//! NetworkPolicy on each pod's interface, with `networking.k8s.io/v1` semantics.
//!
//! Data flows one way, as for Services: [`compile`] turns NetworkPolicies, Namespaces and the
//! pods that policy can see into what the maps should hold for the endpoints on this node
//! (pure, golden-tested); a [`PolicyReconciler`] compares that with what the maps hold and
//! writes the difference through [`PolicyMaps`], in an order that never exposes a pod and
//! never drops a flow the old and the new policy both allow; [`attach`] puts the two tcx
//! programs on a pod's host-side interface and pins their links, so enforcement outlives the
//! daemon.
//!
//! An endpoint is a pod with an interface on this node, named by that interface's ifindex.

mod bpf;
mod compile;
mod maps;
mod reconcile;

use std::{collections::BTreeMap, fmt, net::Ipv4Addr};

pub use bpf::{
    attach, detach, install, read_counters, read_names, EventReader, PinnedPolicyMaps,
    PolicyDatapath,
};
pub use compile::{compile, port_blocks, Compiled, Endpoint, PeerPrefix, PortRange, PortSet};
pub use maps::{policy_name, policy_name_str, MemoryPolicyMaps, PolicyMapOp, PolicyMaps};
pub use reconcile::{PolicyApplied, PolicyReconciler};

pub use crate::service::Problem;

/// A direction of traffic from the pod's point of view, as in `policyTypes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    /// The `DIRECTION_*` number the maps hold.
    pub const fn number(self) -> u8 {
        match self {
            Self::Ingress => bosun_ebpf_abi::DIRECTION_INGRESS,
            Self::Egress => bosun_ebpf_abi::DIRECTION_EGRESS,
        }
    }

    pub const fn from_number(number: u8) -> Option<Self> {
        match number {
            bosun_ebpf_abi::DIRECTION_INGRESS => Some(Self::Ingress),
            bosun_ebpf_abi::DIRECTION_EGRESS => Some(Self::Egress),
            _ => None,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        })
    }
}

/// A protocol a NetworkPolicy port can name.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum PolicyProtocol {
    Tcp,
    Udp,
    Sctp,
}

impl PolicyProtocol {
    /// The `IPPROTO_*` number the maps hold.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => bosun_ebpf_abi::PROTOCOL_TCP,
            Self::Udp => bosun_ebpf_abi::PROTOCOL_UDP,
            Self::Sctp => bosun_ebpf_abi::PROTOCOL_SCTP,
        }
    }

    pub const fn from_number(number: u8) -> Option<Self> {
        match number {
            bosun_ebpf_abi::PROTOCOL_TCP => Some(Self::Tcp),
            bosun_ebpf_abi::PROTOCOL_UDP => Some(Self::Udp),
            bosun_ebpf_abi::PROTOCOL_SCTP => Some(Self::Sctp),
            _ => None,
        }
    }

    /// The Kubernetes spelling: `TCP`, `UDP` or `SCTP`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for PolicyProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        })
    }
}

/// A container port with a name, which a NetworkPolicy port may name.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct NamedPort {
    pub name: String,
    pub protocol: PolicyProtocol,
    pub port: u16,
}

/// A pod as NetworkPolicy sees it: where it lives, its labels, its address and its named
/// ports. Every pod with an IP matters as a peer; only those with an interface on this node
/// are endpoints that programs enforce policy for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyPod {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Ipv4Addr,
    /// Every container port that has a name (`spec.containers[*].ports[*]`).
    pub named_ports: Vec<NamedPort>,
    /// The ifindex of the pod's host-side interface, in the node's network namespace; `None`
    /// for a pod that is only a peer here (on another node, or not yet wired).
    pub ifindex: Option<u32>,
}

impl PolicyPod {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}
