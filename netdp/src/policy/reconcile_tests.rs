use std::collections::{BTreeMap, BTreeSet};

use bosun_ebpf_abi::{PROTOCOL_SCTP, PROTOCOL_TCP, PROTOCOL_UDP};

use super::*;
use crate::policy::{
    compile, policy_name, Endpoint, MemoryPolicyMaps, PeerPrefix, PolicyMapOp, PolicyPod,
    PolicyProtocol, PortRange,
};

const ICMP: u8 = 1;
const PROTOCOLS: [u8; 4] = [ICMP, PROTOCOL_TCP, PROTOCOL_UDP, PROTOCOL_SCTP];
const PORTS: [u16; 12] = [0, 53, 79, 80, 81, 443, 1000, 1500, 2000, 2001, 8080, 65535];

fn set(ranges: &[(Option<PolicyProtocol>, u16, u16, &str)]) -> PortSet {
    ranges
        .iter()
        .map(|(protocol, first, last, policy)| PortRange {
            protocol: *protocol,
            first: *first,
            last: *last,
            policy: (*policy).into(),
        })
        .collect()
}

const TCP: Option<PolicyProtocol> = Some(PolicyProtocol::Tcp);
const UDP: Option<PolicyProtocol> = Some(PolicyProtocol::Udp);
const SCTP: Option<PolicyProtocol> = Some(PolicyProtocol::Sctp);

/// The port sets the tests choose from.
fn port_sets() -> Vec<PortSet> {
    vec![
        set(&[]),
        set(&[(TCP, 80, 80, "a/p1")]),
        set(&[(TCP, 80, 81, "a/p1"), (UDP, 53, 53, "a/p2")]),
        set(&[(None, 0, 65535, "a/p3")]),
        set(&[(TCP, 1000, 2000, "b/p4"), (SCTP, 0, 65535, "a/p1")]),
        set(&[(TCP, 443, 443, "a/p2"), (TCP, 8080, 8080, "b/p4")]),
    ]
}

/// Prefixes nested the way ipBlocks, excepts and pods nest them.
const PREFIXES: [([u8; 4], u8); 8] = [
    ([0, 0, 0, 0], 0),
    ([10, 0, 0, 0], 8),
    ([10, 1, 0, 0], 16),
    ([10, 1, 2, 0], 24),
    ([10, 1, 2, 3], 32),
    ([10, 1, 2, 4], 32),
    ([10, 2, 0, 0], 16),
    ([192, 168, 0, 0], 16),
];

/// One address in each region the prefixes above carve out.
const ADDRESSES: [[u8; 4]; 8] = [
    [10, 1, 2, 3],
    [10, 1, 2, 4],
    [10, 1, 2, 5],
    [10, 1, 3, 1],
    [10, 2, 0, 1],
    [10, 3, 0, 1],
    [192, 168, 1, 1],
    [172, 16, 0, 1],
];

/// A desired state built by hand: `(ifindex, ingress policy, egress policy, peers)`, where
/// peers are `(direction, prefix index, port set index)`.
type Spec<'a> = (
    u32,
    Option<&'a str>,
    Option<&'a str>,
    &'a [(Direction, usize, usize)],
);

fn desired(endpoints: &[Spec<'_>]) -> Compiled {
    let sets = port_sets();
    let mut compiled = Compiled::default();
    for (ifindex, ingress, egress, peers) in endpoints {
        compiled.endpoints.insert(
            *ifindex,
            Endpoint {
                pod: format!("a/pod{ifindex}"),
                ingress: ingress.map(str::to_owned),
                egress: egress.map(str::to_owned),
            },
        );
        for (direction, prefix, port_set) in *peers {
            let (address, prefix_len) = PREFIXES[*prefix];
            compiled.peers.insert(
                PeerPrefix {
                    endpoint: *ifindex,
                    direction: *direction,
                    address: address.into(),
                    prefix_len,
                },
                sets[*port_set].clone(),
            );
        }
    }
    compiled
}

/// The flows probed for each peer address: one bit of a `u64` each.
fn flows() -> impl Iterator<Item = (u64, u8, u16)> {
    PROTOCOLS
        .into_iter()
        .flat_map(|protocol| PORTS.into_iter().map(move |port| (protocol, port)))
        .enumerate()
        .map(|(bit, (protocol, port))| (1u64 << bit, protocol, port))
}

const ALL_FLOWS: u64 = (1 << (PROTOCOLS.len() * PORTS.len())) - 1;

/// The maps with the lookups the programs make, for one state.
struct View<'a> {
    maps: &'a MemoryPolicyMaps,
    /// Prefix lengths present, longest first: only those can match.
    peer_lens: Vec<u32>,
    /// For each class a peer names, the flows its port entries allow.
    class_flows: BTreeMap<u32, u64>,
}

impl<'a> View<'a> {
    fn new(maps: &'a MemoryPolicyMaps) -> Self {
        let peer_lens: BTreeSet<u32> = maps.peers.keys().map(|(l, _)| *l).collect();
        let port_lens: BTreeSet<u32> = maps.ports.keys().map(|(l, _)| *l).collect();
        let allows = |class: u32, protocol: u8, port: u16| {
            port_lens.iter().any(|len| {
                let mut key = PortKey {
                    class: class.to_be_bytes(),
                    protocol: 0,
                    _pad: 0,
                    port: [0; 2],
                };
                if *len >= PORT_KEY_ANY_PORT_BITS {
                    key.protocol = protocol;
                }
                if *len >= PORT_KEY_FIXED_BITS {
                    let bits = len - PORT_KEY_FIXED_BITS;
                    let mask = u16::MAX.checked_shl(16 - bits).unwrap_or(0);
                    key.port = (port & mask).to_be_bytes();
                }
                maps.ports.contains_key(&(*len, key))
            })
        };
        let class_flows = maps
            .peers
            .values()
            .map(|class| {
                let allowed = flows()
                    .filter(|(_, protocol, port)| allows(*class, *protocol, *port))
                    .fold(0, |bits, (bit, _, _)| bits | bit);
                (*class, allowed)
            })
            .collect();
        Self {
            maps,
            peer_lens: peer_lens.into_iter().rev().collect(),
            class_flows,
        }
    }

    /// The programs' verdicts on new flows with a peer at `address`, one bit per flow.
    fn allowed(&self, (ifindex, direction, address): PeerProbe) -> u64 {
        let Some(endpoint) = self.maps.endpoints.get(&ifindex) else {
            return 0; // an interface without an entry drops everything
        };
        if endpoint.flags & isolation_flag(direction) == 0 {
            return ALL_FLOWS;
        }
        let address = u32::from_be_bytes(address);
        let class = self.peer_lens.iter().find_map(|len| {
            let bits = len - PEER_KEY_FIXED_BITS;
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            let key = PeerKey {
                endpoint: ifindex.to_be_bytes(),
                direction: direction.number(),
                _pad: [0; 3],
                address: (address & mask).to_be_bytes(),
            };
            self.maps.peers.get(&(*len, key))
        });
        class.map_or(0, |class| self.class_flows[class])
    }
}

/// What `compiled` means for new flows with a peer at `address`, read straight from it.
fn compiled_allowed(compiled: &Compiled, (ifindex, direction, address): PeerProbe) -> u64 {
    let Some(endpoint) = compiled.endpoints.get(&ifindex) else {
        return 0;
    };
    if endpoint.isolated(direction).is_none() {
        return ALL_FLOWS;
    }
    let address = u32::from_be_bytes(address);
    let longest = compiled
        .peers
        .iter()
        .filter(|(p, _)| {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(p.prefix_len))
                .unwrap_or(0);
            p.endpoint == ifindex
                && p.direction == direction
                && address & mask == p.address.to_bits()
        })
        .max_by_key(|(p, _)| p.prefix_len);
    longest.map_or(0, |(_, set)| {
        flows()
            .filter(|(_, protocol, port)| set.allows(*protocol, *port))
            .fold(0, |bits, (bit, _, _)| bits | bit)
    })
}

/// An endpoint, a direction and a peer address; each is probed with every flow of [`flows`].
type PeerProbe = (u32, Direction, [u8; 4]);

/// What to probe for a transition from `start` to `desired`: each region of the prefixes the
/// tests use, and the first address of every prefix either state has.
fn probes(start: &MemoryPolicyMaps, desired: &Compiled) -> Vec<PeerProbe> {
    let endpoints: BTreeSet<u32> = start
        .endpoints
        .keys()
        .chain(desired.endpoints.keys())
        .copied()
        .collect();
    let mut addresses: BTreeSet<[u8; 4]> = ADDRESSES.into_iter().collect();
    addresses.extend(start.peers.keys().map(|(_, key)| key.address));
    addresses.extend(desired.peers.keys().map(|p| p.address.octets()));
    let mut probes = Vec::new();
    for ifindex in endpoints {
        for direction in DIRECTIONS {
            for address in addresses.iter().copied() {
                probes.push((ifindex, direction, address));
            }
        }
    }
    probes
}

/// A class's port entries, in any state.
fn class_content(maps: &MemoryPolicyMaps, class: u32) -> Vec<((u32, PortKey), u32)> {
    maps.ports
        .iter()
        .filter(|((_, key), _)| u32::from_be_bytes(key.class) == class)
        .map(|(k, v)| (*k, *v))
        .collect()
}

/// The states before (`old`) and after (`new`) an apply, and what they agree on.
struct Transition<'a> {
    old: &'a MemoryPolicyMaps,
    new: &'a MemoryPolicyMaps,
    /// Per probe: the flows old and new agree on, and the old verdicts.
    agreed: Vec<(PeerProbe, u64, u64)>,
}

impl<'a> Transition<'a> {
    fn new(old: &'a MemoryPolicyMaps, new: &'a MemoryPolicyMaps, probes: &[PeerProbe]) -> Self {
        let (old_view, new_view) = (View::new(old), View::new(new));
        let agreed = probes
            .iter()
            .map(|probe| {
                let before = old_view.allowed(*probe);
                let agree = !(before ^ new_view.allowed(*probe)) & ALL_FLOWS;
                (*probe, agree, before)
            })
            .collect();
        Self { old, new, agreed }
    }

    /// The invariants every single write keeps, checked on the state `now`.
    fn check(&self, now: &MemoryPolicyMaps, after: &str) {
        // A flow the old and the new state agree on gets that verdict at every step.
        let view = View::new(now);
        for (probe, agree, before) in &self.agreed {
            let differ = (view.allowed(*probe) ^ before) & agree;
            assert!(
                differ == 0,
                "{after}: {probe:?}: verdicts on flows {:?} are neither old nor new",
                flows()
                    .filter(|(bit, _, _)| differ & bit != 0)
                    .map(|(_, protocol, port)| (protocol, port))
                    .collect::<Vec<_>>()
            );
        }
        // A class a peer names is whole: as before or as after, never half-written. At most
        // one named class has no port entries: the empty class.
        let named: BTreeSet<u32> = now.peers.values().copied().collect();
        let mut empty = 0;
        for class in named {
            let content = class_content(now, class);
            empty += usize::from(content.is_empty());
            assert!(
                content == class_content(self.old, class)
                    || content == class_content(self.new, class),
                "{after}: class {class} is named half-written: {content:?}"
            );
        }
        assert!(empty <= 1, "{after}: {empty} empty classes are named");
        // Every policy id an entry holds has a name.
        let ids = now
            .ports
            .values()
            .copied()
            .chain(
                now.endpoints
                    .values()
                    .flat_map(|v| [v.ingress_policy, v.egress_policy]),
            )
            .filter(|id| *id != 0);
        for id in ids {
            assert!(
                now.policy_names.contains_key(&id),
                "{after}: policy {id} has no name"
            );
        }
        // The node keeps the addresses it has before and after.
        for address in self
            .old
            .node_addresses
            .intersection(&self.new.node_addresses)
        {
            assert!(
                now.node_addresses.contains(address),
                "{after}: node address {address:?} missing"
            );
        }
    }
}

fn replay_op(maps: &mut MemoryPolicyMaps, op: &PolicyMapOp) {
    match op {
        PolicyMapOp::PutEndpoint(i, v) => maps.put_endpoint(*i, v),
        PolicyMapOp::PutPeer(l, k, c) => maps.put_peer(*l, k, *c),
        PolicyMapOp::PutPort(l, k, p) => maps.put_port(*l, k, *p),
        PolicyMapOp::PutPolicyName(id, name) => maps.put_policy_name(*id, &policy_name(name)),
        PolicyMapOp::PutNodeAddress(a) => maps.put_node_address(*a),
        PolicyMapOp::ResetCounters(slot) => maps.reset_counters(*slot),
        PolicyMapOp::DeleteEndpoint(i) => maps.delete_endpoint(*i),
        PolicyMapOp::DeletePeer(l, k) => maps.delete_peer(*l, k),
        PolicyMapOp::DeletePort(l, k) => maps.delete_port(*l, k),
        PolicyMapOp::DeletePolicyName(id) => maps.delete_policy_name(*id),
        PolicyMapOp::DeleteNodeAddress(a) => maps.delete_node_address(*a),
        PolicyMapOp::DeleteFlows(i) => maps.delete_flows(*i),
    }
    .expect("memory maps do not fail");
}

/// Replays `ops` on a copy of `old`, checking the invariants after each; the copy must end
/// as `new`.
fn replay_checked(
    old: &MemoryPolicyMaps,
    new: &MemoryPolicyMaps,
    ops: &[PolicyMapOp],
    probes: &[PeerProbe],
) {
    let transition = Transition::new(old, new, probes);
    let mut replay = old.clone();
    for (n, op) in ops.iter().enumerate() {
        replay_op(&mut replay, op);
        transition.check(&replay, &format!("write {n} ({op:?})"));
    }
}

/// The maps serve `desired`: every probe gets the verdicts the compiled state means, and
/// every endpoint has a counter slot of its own.
fn assert_serves(maps: &MemoryPolicyMaps, desired: &Compiled, probes: &[PeerProbe]) {
    let view = View::new(maps);
    for probe in probes {
        assert_eq!(
            view.allowed(*probe),
            compiled_allowed(desired, *probe),
            "{probe:?}: the maps' verdicts (left) differ from the compiled ones (right)"
        );
    }
    let endpoints: BTreeSet<u32> = desired.endpoints.keys().copied().collect();
    assert_eq!(
        maps.endpoints.keys().copied().collect::<BTreeSet<u32>>(),
        endpoints
    );
    let slots: BTreeSet<u32> = maps.endpoints.values().map(|e| e.counters).collect();
    assert!(
        !slots.contains(&0) && slots.len() == endpoints.len(),
        "counter slots {:?}",
        maps.endpoints
    );
}

fn node(addresses: &[u8]) -> Vec<Ipv4Addr> {
    addresses
        .iter()
        .map(|a| Ipv4Addr::new(192, 0, 2, *a))
        .collect()
}

/// Applies `desired` to a copy of `start` with a fresh reconciler (as after a restart), then
/// replays its writes, checking the invariants after each; returns the maps after.
fn apply_checked(
    start: &MemoryPolicyMaps,
    desired: &Compiled,
    node: &[Ipv4Addr],
) -> MemoryPolicyMaps {
    let mut maps = start.clone();
    maps.ops.clear();
    let mut reconciler = PolicyReconciler::new(maps).expect("memory maps do not fail");
    reconciler
        .apply(desired, node)
        .expect("memory maps do not fail");
    let after = reconciler.maps().clone();
    let probes = probes(start, desired);
    replay_checked(start, &after, &after.ops, &probes);
    assert_serves(&after, desired, &probes);
    let nodes: BTreeSet<[u8; 4]> = node.iter().map(|a| a.octets()).collect();
    assert_eq!(after.node_addresses, nodes);
    after
}

fn position(ops: &[PolicyMapOp], what: impl Fn(&PolicyMapOp) -> bool) -> usize {
    ops.iter()
        .position(what)
        .unwrap_or_else(|| panic!("no such write in {ops:#?}"))
}

fn last_position(ops: &[PolicyMapOp], what: impl Fn(&PolicyMapOp) -> bool) -> usize {
    ops.iter()
        .rposition(what)
        .unwrap_or_else(|| panic!("no such write in {ops:#?}"))
}

fn peer_of(op: &PolicyMapOp) -> Option<u32> {
    match op {
        PolicyMapOp::PutPeer(_, key, _) | PolicyMapOp::DeletePeer(_, key) => {
            Some(u32::from_be_bytes(key.endpoint))
        }
        _ => None,
    }
}

#[test]
fn a_new_endpoint_gets_names_classes_counters_and_peers_before_its_entry() {
    use Direction::{Egress, Ingress};
    let state = desired(&[(
        7,
        Some("a/p1"),
        Some("b/p4"),
        &[(Ingress, 1, 2), (Ingress, 4, 0), (Egress, 0, 4)],
    )]);
    let maps = apply_checked(&MemoryPolicyMaps::default(), &state, &node(&[1]));
    let ops = &maps.ops;

    let slot = maps.endpoints[&7].counters;
    let counters = position(ops, |op| *op == PolicyMapOp::ResetCounters(slot));
    let first_peer = position(ops, |op| peer_of(op).is_some());
    let last_peer = last_position(ops, |op| peer_of(op).is_some());
    let entry = position(ops, |op| matches!(op, PolicyMapOp::PutEndpoint(7, _)));
    assert!(counters < first_peer && last_peer < entry, "{ops:#?}");
    let last_port = last_position(ops, |op| matches!(op, PolicyMapOp::PutPort(..)));
    assert!(last_port < first_peer, "{ops:#?}");
    let last_name = last_position(ops, |op| matches!(op, PolicyMapOp::PutPolicyName(..)));
    let first_port = position(ops, |op| matches!(op, PolicyMapOp::PutPort(..)));
    assert!(last_name < first_port, "{ops:#?}");

    // Longest prefix first within a direction.
    let ingress_lens: Vec<u32> = ops
        .iter()
        .filter_map(|op| match op {
            PolicyMapOp::PutPeer(len, key, _) if key.direction == Ingress.number() => Some(*len),
            _ => None,
        })
        .collect();
    assert_eq!(ingress_lens, [96, 72]);

    // The empty set is a class with no port entries; the any-protocol set is one entry.
    let value = maps.endpoints[&7];
    assert_eq!(
        value.flags,
        ENDPOINT_ISOLATED_INGRESS | ENDPOINT_ISOLATED_EGRESS
    );
    assert_eq!(maps.policy_names.len(), 3, "{:?}", maps.policy_names);
    let named_classes: BTreeSet<u32> = maps.peers.values().copied().collect();
    assert_eq!(named_classes.len(), 3);
    let empty: Vec<u32> = named_classes
        .iter()
        .copied()
        .filter(|c| class_content(&maps, *c).is_empty())
        .collect();
    assert_eq!(empty.len(), 1);
}

#[test]
fn a_removed_endpoint_loses_its_entry_first_and_its_state_last() {
    use Direction::Ingress;
    let start = apply_checked(
        &MemoryPolicyMaps::default(),
        &desired(&[
            (1, Some("a/p1"), None, &[(Ingress, 1, 1), (Ingress, 2, 2)]),
            (2, None, None, &[]),
        ]),
        &node(&[1]),
    );
    let maps = apply_checked(&start, &desired(&[(2, None, None, &[])]), &node(&[1]));
    let ops = &maps.ops;
    assert_eq!(ops[0], PolicyMapOp::DeleteEndpoint(1), "{ops:#?}");
    let last_peer = last_position(ops, |op| peer_of(op) == Some(1));
    let state = position(ops, |op| *op == PolicyMapOp::DeleteFlows(1));
    assert!(last_peer < state, "{ops:#?}");
    // Shortest prefix first when removing.
    let lens: Vec<u32> = ops
        .iter()
        .filter_map(|op| match op {
            PolicyMapOp::DeletePeer(len, _) => Some(*len),
            _ => None,
        })
        .collect();
    assert_eq!(lens, [72, 80]);
    // Its classes and names went after its peers.
    let first_port = position(ops, |op| matches!(op, PolicyMapOp::DeletePort(..)));
    let first_name = position(ops, |op| matches!(op, PolicyMapOp::DeletePolicyName(..)));
    assert!(
        last_peer < first_port && first_port < first_name,
        "{ops:#?}"
    );
    assert!(maps.ports.is_empty() && maps.policy_names.is_empty() && maps.peers.is_empty());
}

#[test]
fn isolation_goes_on_after_the_peers_and_off_before_they_go() {
    use Direction::{Egress, Ingress};
    let start = apply_checked(
        &MemoryPolicyMaps::default(),
        &desired(&[(1, None, None, &[])]),
        &[],
    );
    let on = apply_checked(
        &start,
        &desired(&[(1, Some("a/p1"), None, &[(Ingress, 1, 1)])]),
        &[],
    );
    let peer = position(&on.ops, |op| peer_of(op) == Some(1));
    let entry = position(&on.ops, |op| matches!(op, PolicyMapOp::PutEndpoint(1, _)));
    assert!(peer < entry, "{:#?}", on.ops);
    assert!(
        !on.ops
            .iter()
            .any(|op| matches!(op, PolicyMapOp::ResetCounters(_))),
        "{:#?}",
        on.ops
    );
    assert_eq!(on.endpoints[&1].counters, start.endpoints[&1].counters);

    // Ingress off and egress on in one apply: egress peers, the entry, then ingress peers go.
    let swapped = apply_checked(
        &on,
        &desired(&[(1, None, Some("a/p2"), &[(Egress, 3, 5)])]),
        &[],
    );
    let ops = &swapped.ops;
    let put_egress = position(
        ops,
        |op| matches!(op, PolicyMapOp::PutPeer(_, k, _) if k.direction == Egress.number()),
    );
    let entry = position(ops, |op| matches!(op, PolicyMapOp::PutEndpoint(1, _)));
    let delete_ingress = position(
        ops,
        |op| matches!(op, PolicyMapOp::DeletePeer(_, k) if k.direction == Ingress.number()),
    );
    assert!(put_egress < entry && entry < delete_ingress, "{ops:#?}");
}

#[test]
fn a_peer_switches_class_only_once_the_new_class_is_whole() {
    use Direction::Ingress;
    let start = apply_checked(
        &MemoryPolicyMaps::default(),
        &desired(&[(1, Some("a/p1"), None, &[(Ingress, 1, 1)])]),
        &[],
    );
    let old_class = *start.peers.values().next().expect("one peer");
    let maps = apply_checked(
        &start,
        &desired(&[(1, Some("a/p1"), None, &[(Ingress, 1, 2)])]),
        &[],
    );
    let ops = &maps.ops;
    let switch = position(ops, |op| matches!(op, PolicyMapOp::PutPeer(..)));
    let PolicyMapOp::PutPeer(_, _, new_class) = ops[switch] else {
        unreachable!()
    };
    assert_ne!(new_class, old_class);
    let last_new = last_position(
        ops,
        |op| matches!(op, PolicyMapOp::PutPort(_, k, _) if u32::from_be_bytes(k.class) == new_class),
    );
    let first_old = position(
        ops,
        |op| matches!(op, PolicyMapOp::DeletePort(_, k) if u32::from_be_bytes(k.class) == old_class),
    );
    assert!(last_new < switch && switch < first_old, "{ops:#?}");
    // Nothing else changed: the name is kept, the endpoint entry untouched.
    assert!(
        !ops.iter().any(|op| matches!(
            op,
            PolicyMapOp::PutEndpoint(..) | PolicyMapOp::DeletePolicyName(_)
        )),
        "{ops:#?}"
    );
}

#[test]
fn node_addresses_are_added_before_old_ones_go() {
    let start = apply_checked(
        &MemoryPolicyMaps::default(),
        &Compiled::default(),
        &node(&[1, 2]),
    );
    let maps = apply_checked(&start, &Compiled::default(), &node(&[2, 3]));
    assert_eq!(
        maps.ops,
        [
            PolicyMapOp::PutNodeAddress([192, 0, 2, 3]),
            PolicyMapOp::DeleteNodeAddress([192, 0, 2, 1])
        ]
    );
}

#[test]
fn transitions_keep_every_verdict_old_and_new_agree_on() {
    use Direction::{Egress, Ingress};
    let steps: [&[Spec<'_>]; 8] = [
        &[(1, None, None, &[]), (2, Some("a/p1"), None, &[])],
        // A CIDR, an except shadowing it, pods inside both.
        &[
            (
                1,
                Some("a/p1"),
                None,
                &[(Ingress, 1, 3), (Ingress, 2, 0), (Ingress, 4, 1)],
            ),
            (2, Some("a/p1"), Some("a/p2"), &[(Egress, 0, 5)]),
        ],
        // The shadow moves to a longer prefix, a pod changes class, everything else stays.
        &[
            (
                1,
                Some("a/p1"),
                None,
                &[
                    (Ingress, 1, 3),
                    (Ingress, 3, 0),
                    (Ingress, 4, 2),
                    (Ingress, 5, 1),
                ],
            ),
            (2, Some("a/p1"), Some("a/p2"), &[(Egress, 0, 5)]),
        ],
        // Shorter prefixes go while longer ones change.
        &[
            (1, Some("a/p3"), None, &[(Ingress, 4, 4), (Ingress, 5, 4)]),
            (
                2,
                Some("a/p1"),
                Some("a/p2"),
                &[(Egress, 6, 5), (Egress, 7, 1)],
            ),
        ],
        // Everything at once changes.
        &[
            (1, None, Some("b/p4"), &[(Egress, 0, 2), (Egress, 3, 0)]),
            (
                3,
                Some("a/p1"),
                Some("a/p1"),
                &[(Ingress, 0, 1), (Egress, 1, 4)],
            ),
        ],
        &[(
            3,
            Some("a/p1"),
            Some("a/p1"),
            &[(Ingress, 0, 1), (Egress, 1, 4)],
        )],
        &[(3, None, None, &[])],
        &[],
    ];
    let mut maps = MemoryPolicyMaps::default();
    for (i, step) in steps.iter().enumerate() {
        maps = apply_checked(&maps, &desired(step), &node(&[i as u8 % 3, 9]));
    }
    assert!(maps.endpoints.is_empty() && maps.peers.is_empty() && maps.ports.is_empty());
    assert!(maps.policy_names.is_empty());
}

#[test]
fn a_freed_counter_slot_is_zeroed_before_the_next_endpoint_counts_in_it() {
    let two = apply_checked(
        &MemoryPolicyMaps::default(),
        &desired(&[(1, None, None, &[]), (2, None, None, &[])]),
        &[],
    );
    let freed = two.endpoints[&1].counters;
    let kept = two.endpoints[&2].counters;
    let next = apply_checked(
        &two,
        &desired(&[(2, None, None, &[]), (3, None, None, &[])]),
        &[],
    );
    assert_eq!(next.endpoints[&3].counters, freed, "{:?}", next.endpoints);
    assert_eq!(next.endpoints[&2].counters, kept);
    let gone = position(&next.ops, |op| *op == PolicyMapOp::DeleteEndpoint(1));
    let zeroed = position(&next.ops, |op| *op == PolicyMapOp::ResetCounters(freed));
    let entry = position(&next.ops, |op| matches!(op, PolicyMapOp::PutEndpoint(3, _)));
    assert!(gone < zeroed && zeroed < entry, "{:#?}", next.ops);

    // Each apply here starts from a new reconciler, as after a restart: slots are read back,
    // and only a free one is handed out.
    let after = apply_checked(
        &next,
        &desired(&[
            (2, None, None, &[]),
            (3, None, None, &[]),
            (4, None, None, &[]),
        ]),
        &[],
    );
    assert_eq!(after.endpoints[&2].counters, kept);
    assert_eq!(after.endpoints[&3].counters, freed);
}

/// A fixed linear congruential sequence: the same cases on every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

const POLICIES: [&str; 4] = ["a/p1", "a/p2", "a/p3", "b/p4"];

fn random_desired(rng: &mut Lcg) -> (Compiled, Vec<Ipv4Addr>) {
    let sets = port_sets();
    let mut compiled = Compiled::default();
    for ifindex in 1..=3 {
        if rng.below(6) == 0 {
            continue;
        }
        let pick =
            |rng: &mut Lcg| (rng.below(2) == 0).then(|| POLICIES[rng.below(4) as usize].to_owned());
        let endpoint = Endpoint {
            pod: format!("a/pod{ifindex}"),
            ingress: pick(rng),
            egress: pick(rng),
        };
        for direction in DIRECTIONS {
            if endpoint.isolated(direction).is_none() {
                continue;
            }
            for _ in 0..rng.below(5) {
                let (address, prefix_len) = PREFIXES[rng.below(PREFIXES.len() as u64) as usize];
                let prefix = PeerPrefix {
                    endpoint: ifindex,
                    direction,
                    address: address.into(),
                    prefix_len,
                };
                compiled
                    .peers
                    .insert(prefix, sets[rng.below(sets.len() as u64) as usize].clone());
            }
        }
        compiled.endpoints.insert(ifindex, endpoint);
    }
    let node = (1..=3).filter(|_| rng.below(2) == 0).collect::<Vec<u8>>();
    (compiled, self::node(&node))
}

#[test]
fn random_transitions_keep_every_verdict_old_and_new_agree_on() {
    let mut rng = Lcg(0x2545_f491_4f6c_dd1d);
    let mut maps = MemoryPolicyMaps::default();
    for _ in 0..150 {
        let (desired, node) = random_desired(&mut rng);
        maps = apply_checked(&maps, &desired, &node);
    }
}

/// Fails each write of the transition `start` → `desired` in turn; the maps stay safe, and
/// the next apply of the same reconciler finishes the job.
fn fail_each_write(start: &MemoryPolicyMaps, desired: &Compiled, node: &[Ipv4Addr]) {
    let end = apply_checked(start, desired, node);
    let probes = probes(start, desired);
    for fail_at in 0..end.ops.len() {
        let mut maps = start.clone();
        maps.ops.clear();
        maps.fail_after(fail_at);
        let mut reconciler = PolicyReconciler::new(maps).expect("reads do not fail");
        assert!(
            reconciler.apply(desired, node).is_err(),
            "write {fail_at} fails"
        );
        let failed = reconciler.maps().clone();
        // The writes before the failure are the first of the full apply's, whose every step
        // `apply_checked` has checked.
        assert_eq!(failed.ops, end.ops[..fail_at]);

        reconciler.apply(desired, node).expect("the retry succeeds");
        let retried = reconciler.maps().clone();
        let mut partial = start.clone();
        failed.ops.iter().for_each(|op| replay_op(&mut partial, op));
        // The retry keeps the invariants relative to the state it started from, too.
        replay_checked(&partial, &retried, &retried.ops[fail_at..], &probes);
        assert_serves(&retried, desired, &probes);

        let writes = retried.ops.len();
        let applied = reconciler
            .apply(desired, node)
            .expect("memory maps do not fail");
        assert!(
            applied.is_empty(),
            "after write {fail_at} failed: {applied:?}"
        );
        assert_eq!(reconciler.maps().ops.len(), writes);
    }
}

#[test]
fn a_failed_write_leaves_safe_maps_and_the_next_apply_finishes() {
    use Direction::{Egress, Ingress};
    let start = apply_checked(
        &MemoryPolicyMaps::default(),
        &desired(&[
            (
                1,
                Some("a/p1"),
                None,
                &[(Ingress, 1, 3), (Ingress, 2, 0), (Ingress, 4, 1)],
            ),
            (2, None, Some("a/p2"), &[(Egress, 0, 5)]),
        ]),
        &node(&[1]),
    );
    let target = desired(&[
        (
            1,
            Some("a/p2"),
            Some("b/p4"),
            &[(Ingress, 1, 2), (Ingress, 3, 0), (Egress, 0, 4)],
        ),
        (3, Some("a/p3"), None, &[(Ingress, 7, 3)]),
    ]);
    fail_each_write(&start, &target, &node(&[2]));

    let mut rng = Lcg(7);
    let mut maps = MemoryPolicyMaps::default();
    for _ in 0..6 {
        let (desired, node) = random_desired(&mut rng);
        fail_each_write(&maps, &desired, &node);
        maps = apply_checked(&maps, &desired, &node);
    }
}

#[test]
fn a_restarted_reconciler_adopts_ids_and_writes_nothing() {
    use Direction::{Egress, Ingress};
    let state = desired(&[
        (
            1,
            Some("a/p1"),
            Some("b/p4"),
            &[(Ingress, 1, 3), (Ingress, 2, 0), (Egress, 4, 4)],
        ),
        (2, Some("a/p2"), None, &[(Ingress, 0, 5)]),
    ]);
    let maps = apply_checked(&MemoryPolicyMaps::default(), &state, &node(&[1]));

    let mut restarted = maps.clone();
    restarted.ops.clear();
    let mut reconciler = PolicyReconciler::new(restarted).expect("memory maps do not fail");
    let applied = reconciler
        .apply(&state, &node(&[1]))
        .expect("memory maps do not fail");
    assert!(applied.is_empty(), "{applied:?}");
    assert!(
        reconciler.maps().ops.is_empty(),
        "{:#?}",
        reconciler.maps().ops
    );

    // A change after the restart keeps the ids it read back and writes only the change.
    let mut changed = state.clone();
    changed.endpoints.get_mut(&2).expect("endpoint 2").egress = Some("c/new".into());
    reconciler
        .apply(&changed, &node(&[1]))
        .expect("memory maps do not fail");
    let after = reconciler.maps();
    assert_eq!(after.ops.len(), 2, "{:#?}", after.ops);
    for (id, name) in &maps.policy_names {
        assert_eq!(after.policy_names.get(id), Some(name));
    }
}

#[test]
fn leftovers_of_a_crash_are_removed() {
    use Direction::Ingress;
    let state = desired(&[(1, Some("a/p1"), None, &[(Ingress, 1, 1)])]);
    let mut maps = apply_checked(&MemoryPolicyMaps::default(), &state, &[]);
    // A half-written class nobody names, a name nothing refers to, peers of an interface
    // that has no endpoint entry, a stale peer of a direction that is not isolated.
    let orphan = PortKey {
        class: 77u32.to_be_bytes(),
        protocol: PROTOCOL_TCP,
        _pad: 0,
        port: 22u16.to_be_bytes(),
    };
    maps.ports.insert((64, orphan), 1);
    maps.policy_names.insert(40, policy_name("x/gone"));
    let stray = |endpoint: u32, direction: Direction| PeerKey {
        endpoint: endpoint.to_be_bytes(),
        direction: direction.number(),
        _pad: [0; 3],
        address: [10, 0, 0, 0],
    };
    maps.peers.insert((72, stray(9, Ingress)), 77);
    maps.peers.insert((72, stray(1, Direction::Egress)), 77);

    let repaired = apply_checked(&maps, &state, &[]);
    let clean = apply_checked(&MemoryPolicyMaps::default(), &state, &[]);
    assert_eq!(
        repaired.peers.len(),
        clean.peers.len(),
        "{:?}",
        repaired.peers
    );
    assert_eq!(
        repaired.ports.len(),
        clean.ports.len(),
        "{:?}",
        repaired.ports
    );
    assert_eq!(
        repaired.policy_names.len(),
        1,
        "{:?}",
        repaired.policy_names
    );
    assert!(repaired.ops.contains(&PolicyMapOp::DeleteFlows(9)));
}

/// Two namespaces, each with a pod isolated by its own policy, and peers in both.
const POLICY_YAML: &str = "
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: a, name: web}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from: [{podSelector: {matchLabels: {role: client}}}]
      ports: [{port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: b, name: db}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
    - from: [{namespaceSelector: {}}]
      ports: [{port: 5432}]
";

fn policies(yaml: &str) -> Vec<k8s_openapi::api::networking::v1::NetworkPolicy> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("a NetworkPolicy"))
        .collect()
}

fn pod(
    namespace: &str,
    name: &str,
    last: u8,
    labels: &[(&str, &str)],
    ifindex: Option<u32>,
) -> PolicyPod {
    PolicyPod {
        namespace: namespace.into(),
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect::<BTreeMap<String, String>>()
            .into(),
        ip: Ipv4Addr::new(10, 0, 0, last),
        named_ports: Vec::new().into(),
        ifindex,
    }
}

fn touched_endpoints(ops: &[PolicyMapOp]) -> BTreeSet<u32> {
    ops.iter()
        .filter_map(|op| match op {
            PolicyMapOp::PutEndpoint(i, _) | PolicyMapOp::DeleteEndpoint(i) => Some(*i),
            _ => peer_of(op),
        })
        .collect()
}

#[test]
fn one_policy_or_one_pod_changes_only_its_own_entries() {
    let mut pods = vec![
        pod("a", "web", 1, &[("app", "web")], Some(1)),
        pod("b", "db", 2, &[("app", "db")], Some(2)),
        pod("a", "client", 3, &[("role", "client")], None),
        pod("b", "other", 4, &[], None),
    ];
    let start = apply_checked(
        &MemoryPolicyMaps::default(),
        &compile(&policies(POLICY_YAML), &[], &pods),
        &[],
    );

    // One policy's port changes: only its endpoint's peer and its class.
    let changed = compile(
        &policies(&POLICY_YAML.replace("port: 80}", "port: 8080}")),
        &[],
        &pods,
    );
    let maps = apply_checked(&start, &changed, &[]);
    assert_eq!(
        touched_endpoints(&maps.ops),
        BTreeSet::from([1]),
        "{:#?}",
        maps.ops
    );
    assert_eq!(
        maps.ops.len(),
        3,
        "new class, switched peer, old class gone: {:#?}",
        maps.ops
    );

    // A new client pod: one peer for each endpoint that selects it, classes reused.
    pods.push(pod("a", "client2", 5, &[("role", "client")], None));
    let grown = apply_checked(&start, &compile(&policies(POLICY_YAML), &[], &pods), &[]);
    assert_eq!(grown.ops.len(), 2, "{:#?}", grown.ops);
    assert!(grown
        .ops
        .iter()
        .all(|op| matches!(op, PolicyMapOp::PutPeer(..))));

    // A pod loses the label a policy selects it by: that one peer goes.
    pods[2].labels = Default::default();
    let shrunk = apply_checked(&grown, &compile(&policies(POLICY_YAML), &[], &pods), &[]);
    assert_eq!(shrunk.ops.len(), 1, "{:#?}", shrunk.ops);
    assert!(
        matches!(shrunk.ops[0], PolicyMapOp::DeletePeer(_, key) if key.address == [10, 0, 0, 3] && key.endpoint == 1u32.to_be_bytes())
    );
}

/// What the maps mean, ids aside: each endpoint's flags and policy names, each peer entry's
/// class as its port entries with policy names, every class's content and every name held
/// (so that leftovers show), and the node addresses.
type Meaning = (
    BTreeMap<u32, (u32, String, String)>,
    BTreeMap<(u32, PeerKey), Vec<(u32, u8, [u8; 2], String)>>,
    BTreeSet<Vec<(u32, u8, [u8; 2], String)>>,
    BTreeSet<String>,
    BTreeSet<[u8; 4]>,
);

fn meaning(maps: &MemoryPolicyMaps) -> Meaning {
    let name = |id: u32| {
        maps.policy_names
            .get(&id)
            .map_or_else(|| format!("#{id}"), crate::policy::policy_name_str)
    };
    let content = |class: u32| -> Vec<(u32, u8, [u8; 2], String)> {
        class_content(maps, class)
            .into_iter()
            .map(|((len, key), policy)| (len, key.protocol, key.port, name(policy)))
            .collect()
    };
    let endpoints = maps
        .endpoints
        .iter()
        .map(|(ifindex, v)| {
            let named = |id: u32| if id == 0 { String::new() } else { name(id) };
            (
                *ifindex,
                (v.flags, named(v.ingress_policy), named(v.egress_policy)),
            )
        })
        .collect();
    let peers = maps
        .peers
        .iter()
        .map(|(entry, class)| (*entry, content(*class)))
        .collect();
    let classes: BTreeSet<u32> = maps
        .ports
        .keys()
        .map(|(_, key)| u32::from_be_bytes(key.class))
        .collect();
    let contents = classes.into_iter().map(content).collect();
    let names = maps
        .policy_names
        .values()
        .map(crate::policy::policy_name_str)
        .collect();
    (
        endpoints,
        peers,
        contents,
        names,
        maps.node_addresses.clone(),
    )
}

/// Random transitions written as deltas: every write keeps the verdicts the old and new
/// state agree on, and the maps after each delta mean what a whole write of the same state
/// makes them mean.
#[test]
fn deltas_write_what_a_whole_apply_writes() {
    let mut rng = Lcg(0x5851_f42d_4c95_7f2d);
    let mut by_delta =
        PolicyReconciler::new(MemoryPolicyMaps::default()).expect("memory maps do not fail");
    let mut whole =
        PolicyReconciler::new(MemoryPolicyMaps::default()).expect("memory maps do not fail");
    let mut current = Compiled::default();
    for step in 0..200 {
        let (desired, node) = random_desired(&mut rng);
        let before = by_delta.maps().clone();
        let delta = crate::policy::PolicyDelta::between(&current, &desired);
        let writes = by_delta.maps().ops.len();
        by_delta
            .apply_delta(&delta, &node)
            .expect("memory maps do not fail");
        let after = by_delta.maps().clone();
        let probes = probes(&before, &desired);
        replay_checked(&before, &after, &after.ops[writes..], &probes);
        assert_serves(&after, &desired, &probes);
        whole
            .apply(&desired, &node)
            .expect("memory maps do not fail");
        assert_eq!(
            meaning(&after),
            meaning(whole.maps()),
            "step {step}: after the delta (left) and after a whole apply (right)"
        );
        // Nothing left to write.
        assert!(whole.apply(&desired, &node).expect("no failure").is_empty());
        current = desired;
    }
}

/// A delta that fails at any write leaves safe maps, and a whole apply then finishes.
#[test]
fn a_failed_delta_is_finished_by_a_whole_apply() {
    let mut rng = Lcg(11);
    let mut maps = MemoryPolicyMaps::default();
    let mut current = Compiled::default();
    for _ in 0..8 {
        let (desired, node) = random_desired(&mut rng);
        let delta = crate::policy::PolicyDelta::between(&current, &desired);
        let mut clean = PolicyReconciler::new(maps.clone()).expect("memory maps do not fail");
        clean
            .apply(&current, &node)
            .expect("memory maps do not fail");
        let start = clean.maps().clone();
        let writes = start.ops.len();
        clean.apply_delta(&delta, &node).expect("no failure");
        let total = clean.maps().ops.len() - writes;
        for fail_at in 0..total {
            let mut reconciler =
                PolicyReconciler::new(start.clone()).expect("memory maps do not fail");
            reconciler.apply(&current, &node).expect("nothing to write");
            let mut failing = reconciler.maps().clone();
            failing.fail_after(fail_at);
            let mut reconciler = PolicyReconciler::new(failing).expect("reads do not fail");
            assert!(
                reconciler.apply_delta(&delta, &node).is_err(),
                "write {fail_at} fails"
            );
            let partial = reconciler.maps().clone();
            reconciler
                .apply(&desired, &node)
                .expect("the retry succeeds");
            let probes = probes(&start, &desired);
            assert_serves(reconciler.maps(), &desired, &probes);
            let retried = reconciler.maps().clone();
            replay_checked(
                &partial,
                &retried,
                &retried.ops[partial.ops.len()..],
                &probes,
            );
        }
        maps = clean.maps().clone();
        current = desired;
    }
}
