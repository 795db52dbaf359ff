//! NetworkPolicies, Namespaces and pods in; what the policy maps should hold out. Pure.
//! (Stub: being written.)

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use k8s_openapi::api::{core::v1::Namespace, networking::v1::NetworkPolicy};

use super::{Direction, PolicyPod, PolicyProtocol, Problem};

/// What [`compile`] made of its input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// Every pod with an interface on this node, by ifindex, isolated or not.
    pub endpoints: BTreeMap<u32, Endpoint>,
    /// For every isolated direction of every endpoint: peer prefix → the ports allowed to or
    /// from it. An empty set allows nothing; it exists to shadow a shorter prefix.
    pub peers: BTreeMap<PeerPrefix, PortSet>,
    /// What could not be used, each naming the object, the field and the value.
    pub problems: Vec<Problem>,
}

/// An endpoint: a pod with an interface on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `namespace/name`.
    pub pod: String,
    /// `Some(policy)`: isolated for ingress, `policy` (`namespace/name`) being the first by
    /// name of those that select the pod for ingress. `None`: everything may come in.
    pub ingress: Option<String>,
    /// Likewise for egress.
    pub egress: Option<String>,
}

/// A peer CIDR of one endpoint's direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerPrefix {
    pub endpoint: u32,
    pub direction: Direction,
    /// With its host bits zero.
    pub address: Ipv4Addr,
    pub prefix_len: u8,
}

/// Destination ports allowed, each with the policy (`namespace/name`) that allows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSet(pub BTreeSet<PortRange>);

/// A range of destination ports of one protocol, or everything.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    /// `None`: every protocol and port (a rule without `ports`); `first` and `last` are then
    /// 0 and 65535.
    pub protocol: Option<PolicyProtocol>,
    pub first: u16,
    pub last: u16,
    pub policy: String,
}

/// Turns policies into map contents for the endpoints among `pods`.
pub fn compile(
    _policies: &[NetworkPolicy],
    _namespaces: &[Namespace],
    _pods: &[PolicyPod],
) -> Compiled {
    todo!("being written")
}

/// The fewest aligned blocks `(first port, fixed leading bits)` that cover `first..=last`
/// exactly.
pub fn port_blocks(_first: u16, _last: u16) -> Vec<(u16, u8)> {
    todo!("being written")
}
