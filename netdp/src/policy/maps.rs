//! The seam between the policy reconciler and the kernel: every read and write of the policy
//! maps goes through [`PolicyMaps`]. [`super::PinnedPolicyMaps`] is the real one;
//! [`MemoryPolicyMaps`] holds the same entries in memory, records every write in order and can
//! be told to fail, so the reconciler's ordering is tested without root.

use std::collections::BTreeMap;

use bosun_ebpf_abi::{EndpointValue, PeerKey, PolicyName, PortKey};

use crate::{service::InjectedFailure, Error};

/// The policy maps as the reconciler sees them. LPM trie entries are named by their prefix
/// length and key data together.
///
/// Writes to one entry are atomic in the kernel; nothing spans two entries, so callers order
/// their writes. Every method may fail with the kernel's error, worth retrying only when it
/// says a map is full and something has since been removed.
pub trait PolicyMaps {
    fn endpoints(&self) -> Result<Vec<(u32, EndpointValue)>, Error>;
    /// `(prefix length, key data, class)`.
    fn peers(&self) -> Result<Vec<(u32, PeerKey, u32)>, Error>;
    /// `(prefix length, key data, policy id)`.
    fn ports(&self) -> Result<Vec<(u32, PortKey, u32)>, Error>;
    fn policy_names(&self) -> Result<Vec<(u32, PolicyName)>, Error>;
    fn node_addresses(&self) -> Result<Vec<[u8; 4]>, Error>;

    fn put_endpoint(&mut self, ifindex: u32, value: &EndpointValue) -> Result<(), Error>;
    fn put_peer(&mut self, prefix_len: u32, key: &PeerKey, class: u32) -> Result<(), Error>;
    fn put_port(&mut self, prefix_len: u32, key: &PortKey, policy: u32) -> Result<(), Error>;
    fn put_policy_name(&mut self, id: u32, name: &PolicyName) -> Result<(), Error>;
    fn put_node_address(&mut self, address: [u8; 4]) -> Result<(), Error>;
    /// Zeroes counter slot `slot` in both directions, before an endpoint is given it.
    fn reset_counters(&mut self, slot: u32) -> Result<(), Error>;

    /// Removing an entry that is not there is not an error.
    fn delete_endpoint(&mut self, ifindex: u32) -> Result<(), Error>;
    fn delete_peer(&mut self, prefix_len: u32, key: &PeerKey) -> Result<(), Error>;
    fn delete_port(&mut self, prefix_len: u32, key: &PortKey) -> Result<(), Error>;
    fn delete_policy_name(&mut self, id: u32) -> Result<(), Error>;
    fn delete_node_address(&mut self, address: [u8; 4]) -> Result<(), Error>;
    /// Removes every conntrack entry of the endpoint.
    fn delete_flows(&mut self, ifindex: u32) -> Result<(), Error>;
}

/// One write, as [`MemoryPolicyMaps`] records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyMapOp {
    PutEndpoint(u32, EndpointValue),
    PutPeer(u32, PeerKey, u32),
    PutPort(u32, PortKey, u32),
    PutPolicyName(u32, String),
    PutNodeAddress([u8; 4]),
    ResetCounters(u32),
    DeleteEndpoint(u32),
    DeletePeer(u32, PeerKey),
    DeletePort(u32, PortKey),
    DeletePolicyName(u32),
    DeleteNodeAddress([u8; 4]),
    DeleteFlows(u32),
}

/// The maps in memory. `fail_after(n)` makes the write after the next `n` fail, once.
#[derive(Clone, Debug, Default)]
pub struct MemoryPolicyMaps {
    pub endpoints: BTreeMap<u32, EndpointValue>,
    pub peers: BTreeMap<(u32, PeerKey), u32>,
    pub ports: BTreeMap<(u32, PortKey), u32>,
    pub policy_names: BTreeMap<u32, PolicyName>,
    pub node_addresses: std::collections::BTreeSet<[u8; 4]>,
    /// Counter slots zeroed, and not given to an endpoint since.
    pub zeroed: std::collections::BTreeSet<u32>,
    /// Every successful write, oldest first.
    pub ops: Vec<PolicyMapOp>,
    fail: InjectedFailure,
}

impl MemoryPolicyMaps {
    /// The write after the next `writes` successful ones fails with a full-map error.
    pub fn fail_after(&mut self, writes: usize) {
        self.fail.after(writes);
    }

    fn write(&mut self, map: &'static str, op: PolicyMapOp) -> Result<(), Error> {
        self.fail.check(map)?;
        match &op {
            PolicyMapOp::PutEndpoint(ifindex, value) => {
                self.endpoints.insert(*ifindex, *value);
                self.zeroed.remove(&value.counters);
            }
            PolicyMapOp::PutPeer(len, key, class) => {
                self.peers.insert((*len, *key), *class);
            }
            PolicyMapOp::PutPort(len, key, policy) => {
                self.ports.insert((*len, *key), *policy);
            }
            PolicyMapOp::PutPolicyName(id, name) => {
                self.policy_names.insert(*id, policy_name(name));
            }
            PolicyMapOp::PutNodeAddress(address) => {
                self.node_addresses.insert(*address);
            }
            PolicyMapOp::ResetCounters(slot) => {
                self.zeroed.insert(*slot);
            }
            PolicyMapOp::DeleteEndpoint(ifindex) => {
                self.endpoints.remove(ifindex);
            }
            PolicyMapOp::DeletePeer(len, key) => {
                self.peers.remove(&(*len, *key));
            }
            PolicyMapOp::DeletePort(len, key) => {
                self.ports.remove(&(*len, *key));
            }
            PolicyMapOp::DeletePolicyName(id) => {
                self.policy_names.remove(id);
            }
            PolicyMapOp::DeleteNodeAddress(address) => {
                self.node_addresses.remove(address);
            }
            PolicyMapOp::DeleteFlows(_) => {}
        }
        self.ops.push(op);
        Ok(())
    }
}

/// A name as [`bosun_ebpf_abi::POLICY_NAME_MAP`] holds it, cut at the map's width (on a
/// character boundary).
pub fn policy_name(name: &str) -> PolicyName {
    let mut value = PolicyName::default();
    let mut end = name.len().min(value.bytes.len());
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    value.bytes[..end].copy_from_slice(&name.as_bytes()[..end]);
    value
}

/// The name a [`PolicyName`] holds.
pub fn policy_name_str(value: &PolicyName) -> String {
    let end = value
        .bytes
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(value.bytes.len());
    String::from_utf8_lossy(&value.bytes[..end]).into_owned()
}

impl PolicyMaps for MemoryPolicyMaps {
    fn endpoints(&self) -> Result<Vec<(u32, EndpointValue)>, Error> {
        Ok(self.endpoints.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn peers(&self) -> Result<Vec<(u32, PeerKey, u32)>, Error> {
        Ok(self.peers.iter().map(|((l, k), v)| (*l, *k, *v)).collect())
    }

    fn ports(&self) -> Result<Vec<(u32, PortKey, u32)>, Error> {
        Ok(self.ports.iter().map(|((l, k), v)| (*l, *k, *v)).collect())
    }

    fn policy_names(&self) -> Result<Vec<(u32, PolicyName)>, Error> {
        Ok(self.policy_names.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn node_addresses(&self) -> Result<Vec<[u8; 4]>, Error> {
        Ok(self.node_addresses.iter().copied().collect())
    }

    fn put_endpoint(&mut self, ifindex: u32, value: &EndpointValue) -> Result<(), Error> {
        self.write(
            bosun_ebpf_abi::ENDPOINT_MAP,
            PolicyMapOp::PutEndpoint(ifindex, *value),
        )
    }

    fn put_peer(&mut self, prefix_len: u32, key: &PeerKey, class: u32) -> Result<(), Error> {
        self.write(
            bosun_ebpf_abi::PEER_MAP,
            PolicyMapOp::PutPeer(prefix_len, *key, class),
        )
    }

    fn put_port(&mut self, prefix_len: u32, key: &PortKey, policy: u32) -> Result<(), Error> {
        self.write(
            bosun_ebpf_abi::PORT_MAP,
            PolicyMapOp::PutPort(prefix_len, *key, policy),
        )
    }

    fn put_policy_name(&mut self, id: u32, name: &PolicyName) -> Result<(), Error> {
        self.write(
            bosun_ebpf_abi::POLICY_NAME_MAP,
            PolicyMapOp::PutPolicyName(id, policy_name_str(name)),
        )
    }

    fn put_node_address(&mut self, address: [u8; 4]) -> Result<(), Error> {
        self.write(
            bosun_ebpf_abi::NODE_MAP,
            PolicyMapOp::PutNodeAddress(address),
        )
    }

    fn reset_counters(&mut self, slot: u32) -> Result<(), Error> {
        self.write(
            bosun_ebpf_abi::COUNTER_MAP,
            PolicyMapOp::ResetCounters(slot),
        )
    }

    fn delete_endpoint(&mut self, ifindex: u32) -> Result<(), Error> {
        self.write(
            bosun_ebpf_abi::ENDPOINT_MAP,
            PolicyMapOp::DeleteEndpoint(ifindex),
        )
    }

    fn delete_peer(&mut self, prefix_len: u32, key: &PeerKey) -> Result<(), Error> {
        self.write(
            bosun_ebpf_abi::PEER_MAP,
            PolicyMapOp::DeletePeer(prefix_len, *key),
        )
    }

    fn delete_port(&mut self, prefix_len: u32, key: &PortKey) -> Result<(), Error> {
        self.write(
            bosun_ebpf_abi::PORT_MAP,
            PolicyMapOp::DeletePort(prefix_len, *key),
        )
    }

    fn delete_policy_name(&mut self, id: u32) -> Result<(), Error> {
        self.write(
            bosun_ebpf_abi::POLICY_NAME_MAP,
            PolicyMapOp::DeletePolicyName(id),
        )
    }

    fn delete_node_address(&mut self, address: [u8; 4]) -> Result<(), Error> {
        self.write(
            bosun_ebpf_abi::NODE_MAP,
            PolicyMapOp::DeleteNodeAddress(address),
        )
    }

    fn delete_flows(&mut self, ifindex: u32) -> Result<(), Error> {
        self.write(
            bosun_ebpf_abi::CONNTRACK_MAP,
            PolicyMapOp::DeleteFlows(ifindex),
        )
    }
}
