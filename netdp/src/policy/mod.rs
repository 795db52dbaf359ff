//! NetworkPolicy on each pod's interface, with `networking.k8s.io/v1` semantics.
//!
//! Data flows one way, as for Services: [`compile`] turns NetworkPolicies, Namespaces and the
//! pods that policy can see into what the maps should hold for the endpoints on this node
//! (pure, golden-tested), and [`PolicyTable`] keeps the same result up to date change by
//! change, returning only what changed ([`PolicyDelta`]); a [`PolicyReconciler`] compares
//! a whole result with what the maps hold (or takes a delta) and
//! writes the difference through [`PolicyMaps`], in an order that never exposes a pod and
//! never drops a flow the old and the new policy both allow; [`attach`] puts the two tc
//! programs on a pod's host-side interface and pins them, so enforcement outlives the
//! daemon.
//!
//! An endpoint is a pod with an interface on this node, named by that interface's ifindex.

mod bpf;
mod compile;
mod maps;
mod reconcile;
mod table;

use std::{collections::BTreeMap, fmt, net::Ipv4Addr, sync::Arc};

pub use bpf::{
    attach, attached, cleanup, detach, install, read_counters, read_names, EventReader,
    PinnedPolicyMaps, PolicyDatapath, ProgramRun,
};
pub use compile::{
    compile, compile_in, port_blocks, Compiled, Endpoint, PeerPrefix, PodWorld, PortRange, PortSet,
};
pub use maps::{policy_name, policy_name_str, MemoryPolicyMaps, PolicyMapOp, PolicyMaps};
pub use reconcile::{PolicyApplied, PolicyReconciler};
pub use table::{PolicyDelta, PolicyKey, PolicyTable};

pub use crate::netlink::interface_name;
pub use crate::service::Problem;
pub use bosun_ebpf_abi::{
    EndpointValue, PolicyCounters, ENDPOINT_ISOLATED_EGRESS, ENDPOINT_ISOLATED_INGRESS,
};

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

/// A set of labels, shared by the objects that carry the same.
pub type Labels = Arc<BTreeMap<String, String>>;

/// A pod as NetworkPolicy sees it: where it lives, its labels, its address and its named
/// ports. Every pod with an IP matters as a peer; only those with an interface on this node
/// are endpoints that programs enforce policy for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyPod {
    /// Shared with every object of the namespace (see [`crate::intern`]).
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// Shared with every pod of the same labels (a ReplicaSet's pods have the same).
    pub labels: Labels,
    pub ip: Ipv4Addr,
    /// Every container port that has a name (`spec.containers[*].ports[*]`).
    pub named_ports: Arc<[NamedPort]>,
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

/// A verdict the policy programs reported, decoded from the ring buffer's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEvent {
    /// `CLOCK_MONOTONIC` nanoseconds of the packet.
    pub time_ns: u64,
    /// The endpoint's interface.
    pub ifindex: u32,
    /// The endpoint's point of view.
    pub direction: Direction,
    /// `false`: dropped.
    pub allowed: bool,
    pub source: std::net::SocketAddrV4,
    pub destination: std::net::SocketAddrV4,
    /// `IPPROTO_*`.
    pub protocol: u8,
    /// The policy id that allowed the flow, or one isolating the endpoint for a drop; 0 for a
    /// packet on an interface with no endpoint.
    pub policy: u32,
}

impl From<bosun_ebpf_abi::PolicyEvent> for FlowEvent {
    fn from(event: bosun_ebpf_abi::PolicyEvent) -> Self {
        use bosun_ebpf_abi::{address_to_host, port_to_host};
        let side = |address, port| {
            std::net::SocketAddrV4::new(
                Ipv4Addr::from(address_to_host(address)),
                port_to_host(port),
            )
        };
        Self {
            time_ns: event.time_ns,
            ifindex: event.endpoint,
            direction: Direction::from_number(event.direction).unwrap_or(Direction::Ingress),
            allowed: event.verdict == bosun_ebpf_abi::VERDICT_ALLOWED,
            source: side(event.source, event.source_port),
            destination: side(event.destination, event.destination_port),
            protocol: event.protocol,
            policy: event.policy,
        }
    }
}
