//! Compares what [`super::compile`] wants with what the maps hold and writes the difference,
//! in an order under which every packet judged between two writes gets the old verdict or
//! the new one, never a third.
//!
//! Port classes are content-addressed: a class id stands for one exact set of port entries
//! and is never rewritten in place. A changed [`PortSet`] is a new class, written whole before
//! a peer entry names it; the old one goes once nothing names it. The empty set is a class
//! with no port entries (a class that matches no port drops, as no class at all would).
//!
//! Within one isolated direction, peer entries are written longest prefix first and removed
//! shortest first. While writing, an address's longest match is either a prefix already
//! written (then every longer new prefix over the address is written too: the new verdict)
//! or one the old set had (then nothing longer was removed yet: the old verdict); removing
//! shortest first keeps the same true until the end.
//!
//! Ids are read back from the maps, never remembered elsewhere: policy ids from the name
//! map, classes from the port map's keys, so a restarted daemon adopts both and rewrites
//! nothing that did not change.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use bosun_ebpf_abi::{
    EndpointValue, PeerKey, PortKey, ENDPOINT_ISOLATED_EGRESS, ENDPOINT_ISOLATED_INGRESS,
    PEER_KEY_FIXED_BITS, PORT_KEY_ANY_PORT_BITS, PORT_KEY_ANY_PROTOCOL_BITS, PORT_KEY_FIXED_BITS,
};

use super::{
    maps::{policy_name, policy_name_str},
    port_blocks, Compiled, Direction, Endpoint, PolicyDelta, PolicyMaps, PortSet,
};
use crate::{service::IdPool, Error};

/// What one [`PolicyReconciler::apply`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyApplied {
    /// Entries put (counter slots zeroed included).
    pub writes: usize,
    /// Entries removed (an endpoint's conntrack entries count as one).
    pub deletes: usize,
}

impl PolicyApplied {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Owns the policy maps' contents: ids for policies and port classes, and the entries. One
/// per node: two writers would undo each other.
pub struct PolicyReconciler<M: PolicyMaps> {
    maps: M,
    /// What the maps hold, as last read or written; `None` after a failed write, when only the
    /// maps know, so the next [`PolicyReconciler::apply`] reads them again.
    held: Option<Held>,
    /// Interfaces whose conntrack entries are still to be removed. Kept across a
    /// failed apply: once the entry and peers are gone, nothing in the maps says so.
    stale_state: BTreeSet<u32>,
}

/// One [`bosun_ebpf_abi::PORT_MAP`] entry of a class, without the class:
/// `(prefix length, protocol, port, policy id)`, port in host order.
type PortEntry = (u32, u8, u16, u32);

/// A class's port entries, sorted: what the class id stands for.
type Content = Vec<PortEntry>;

/// A peer entry of one endpoint and direction: `(prefix length, key)`.
type PeerEntry = (u32, PeerKey);

/// The maps' content, indexed the way the reconciler needs it.
#[derive(Clone, Debug, Default)]
struct Held {
    endpoints: BTreeMap<u32, EndpointValue>,
    /// By `(ifindex, DIRECTION_*)`: peer entry → class.
    peers: BTreeMap<(u32, u8), BTreeMap<PeerEntry, u32>>,
    /// Every class in the port map or named by a peer (those with no port entries are empty).
    classes: BTreeMap<u32, Content>,
    /// The class kept for each content.
    by_content: BTreeMap<Content, u32>,
    class_pool: IdPool,
    /// Counter slots; those of the endpoints are taken.
    counter_pool: IdPool,
    names: BTreeMap<u32, String>,
    /// The id kept for each name.
    ids: BTreeMap<String, u32>,
    policy_pool: IdPool,
    nodes: BTreeSet<[u8; 4]>,
    /// How many peer entries name each class.
    class_refs: BTreeMap<u32, usize>,
    /// How many entries (class port entries, endpoints) hold each policy id.
    name_refs: BTreeMap<u32, usize>,
}

impl<M: PolicyMaps> PolicyReconciler<M> {
    /// Reads back what the maps hold (a restart adopts it); writes nothing.
    pub fn new(maps: M) -> Result<Self, Error> {
        let held = read_held(&maps)?;
        Ok(Self {
            maps,
            held: Some(held),
            stale_state: BTreeSet::new(),
        })
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// Makes the maps hold `desired` and the node's addresses `node`. Peers of a direction
    /// that `desired.endpoints` does not isolate, or of an endpoint it does not have, are not
    /// written. On error the maps hold part of the change, every step of which is safe; call
    /// again to finish it.
    pub fn apply(&mut self, desired: &Compiled, node: &[Ipv4Addr]) -> Result<PolicyApplied, Error> {
        let mut held = match self.held.take() {
            Some(held) => held,
            None => read_held(&self.maps)?,
        };
        let mut applied = PolicyApplied::default();
        let result = write_changes(
            &mut self.maps,
            &mut held,
            &mut self.stale_state,
            desired,
            node,
            &mut applied,
        );
        if result.is_ok() {
            self.held = Some(held);
        }
        result.map(|()| applied)
    }

    /// Writes `delta`, the change from the state the last successful [`Self::apply`] or
    /// `apply_delta` wrote, in the order a whole apply writes it, so that every packet judged
    /// between two writes gets the old verdict or the new one; the node's addresses are made
    /// `node`. Costs in proportion to the delta, not to what the maps hold. On error the maps
    /// hold part of the change, every step of which is safe; the caller should then
    /// [`Self::apply`] the whole desired state, since what this delta did not write is known
    /// to it alone.
    pub fn apply_delta(
        &mut self,
        delta: &PolicyDelta,
        node: &[Ipv4Addr],
    ) -> Result<PolicyApplied, Error> {
        let mut held = match self.held.take() {
            Some(held) => held,
            None => read_held(&self.maps)?,
        };
        let mut applied = PolicyApplied::default();
        let result = write_delta(
            &mut self.maps,
            &mut held,
            &mut self.stale_state,
            delta,
            node,
            &mut applied,
        );
        if result.is_ok() {
            self.held = Some(held);
        }
        result.map(|()| applied)
    }
}

const DIRECTIONS: [Direction; 2] = [Direction::Ingress, Direction::Egress];

/// The endpoint entry `endpoint` wants on `ifindex`: its isolation flags and policies, and
/// the counters slot it already has, or a fresh one, zeroed, when it has none.
fn endpoint_value(
    maps: &mut impl PolicyMaps,
    held: &mut Held,
    ifindex: u32,
    endpoint: &Endpoint,
    applied: &mut PolicyApplied,
) -> Result<EndpointValue, Error> {
    let mut value = EndpointValue::default();
    for direction in DIRECTIONS {
        if let Some(policy) = endpoint.isolated(direction) {
            value.flags |= isolation_flag(direction);
            let id = held.ids[policy];
            match direction {
                Direction::Ingress => value.ingress_policy = id,
                Direction::Egress => value.egress_policy = id,
            }
        }
    }
    value.counters = match held.endpoints.get(&ifindex) {
        Some(old) if old.counters != 0 => old.counters,
        _ => {
            let slot = held.counter_pool.take();
            maps.reset_counters(slot)?;
            applied.writes += 1;
            slot
        }
    };
    Ok(value)
}

fn isolation_flag(direction: Direction) -> u32 {
    match direction {
        Direction::Ingress => ENDPOINT_ISOLATED_INGRESS,
        Direction::Egress => ENDPOINT_ISOLATED_EGRESS,
    }
}

fn write_changes(
    maps: &mut impl PolicyMaps,
    held: &mut Held,
    stale_state: &mut BTreeSet<u32>,
    desired: &Compiled,
    node: &[Ipv4Addr],
    applied: &mut PolicyApplied,
) -> Result<(), Error> {
    // Node addresses: new ones first, so the node never loses its way in.
    let nodes: BTreeSet<[u8; 4]> = node.iter().map(|a| a.octets()).collect();
    add_node_addresses(maps, held, &nodes, applied)?;

    // Endpoints that are gone: the entry first, so that their interfaces drop everything
    // while the rest goes.
    let gone: Vec<u32> = held
        .endpoints
        .keys()
        .chain(held.peers.keys().map(|(ifindex, _)| ifindex))
        .filter(|ifindex| !desired.endpoints.contains_key(ifindex))
        .copied()
        .collect::<BTreeSet<u32>>()
        .into_iter()
        .collect();
    stale_state.extend(gone.iter().copied());
    for ifindex in gone {
        if let Some(old) = held.endpoints.get(&ifindex).copied() {
            maps.delete_endpoint(ifindex)?;
            held.endpoints.remove(&ifindex);
            held.counter_pool.give_back(old.counters);
            applied.deletes += 1;
        }
        for direction in DIRECTIONS {
            sync_peers(maps, held, ifindex, direction, &BTreeMap::new(), applied)?;
        }
    }
    // Also those an earlier apply failed to finish; and an interface that is back (ifindexes
    // are reused) starts with no flows.
    for ifindex in stale_state.clone() {
        if !held.endpoints.contains_key(&ifindex) {
            maps.delete_flows(ifindex)?;
            applied.deletes += 1;
        }
        stale_state.remove(&ifindex);
    }

    // Policy names before anything names their ids.
    let mut wanted_names: BTreeSet<&str> = BTreeSet::new();
    for endpoint in desired.endpoints.values() {
        wanted_names.extend(DIRECTIONS.iter().filter_map(|d| endpoint.isolated(*d)));
    }
    let wanted_peers = wanted_peers(desired);
    for (_, set) in wanted_peers.values().flatten() {
        wanted_names.extend(set.0.iter().map(|r| &*r.policy));
    }
    for name in wanted_names {
        if !held.ids.contains_key(name) {
            let id = held.policy_pool.take();
            maps.put_policy_name(id, &policy_name(name))?;
            held.names.insert(id, name.to_owned());
            held.ids.insert(name.to_owned(), id);
            applied.writes += 1;
        }
    }

    // Classes, each written whole before a peer names it.
    let mut class_of: BTreeMap<&PortSet, u32> = BTreeMap::new();
    for (_, set) in wanted_peers.values().flatten() {
        if class_of.contains_key(set) {
            continue;
        }
        let content = content_of(set, &held.ids);
        let id = match held.by_content.get(&content) {
            Some(id) => *id,
            None => {
                let id = held.class_pool.take();
                for entry in &content {
                    let (prefix_len, key) = port_key(id, *entry);
                    maps.put_port(prefix_len, &key, entry.3)?;
                    applied.writes += 1;
                }
                held.classes.insert(id, content.clone());
                held.by_content.insert(content, id);
                id
            }
        };
        class_of.insert(set, id);
    }

    // Endpoints: counters and peers before the entry that exposes them; a direction that
    // stops being isolated is opened before its peers go.
    for (&ifindex, endpoint) in &desired.endpoints {
        let old = held.endpoints.get(&ifindex).copied();
        let value = endpoint_value(maps, held, ifindex, endpoint, applied)?;
        for direction in DIRECTIONS {
            if value.flags & isolation_flag(direction) != 0 {
                let wanted: BTreeMap<PeerEntry, u32> = wanted_peers
                    .get(&(ifindex, direction.number()))
                    .into_iter()
                    .flatten()
                    .map(|(entry, set)| (*entry, class_of[set]))
                    .collect();
                sync_peers(maps, held, ifindex, direction, &wanted, applied)?;
            }
        }
        if old != Some(value) {
            maps.put_endpoint(ifindex, &value)?;
            held.endpoints.insert(ifindex, value);
            applied.writes += 1;
        }
        for direction in DIRECTIONS {
            if value.flags & isolation_flag(direction) == 0 {
                sync_peers(maps, held, ifindex, direction, &BTreeMap::new(), applied)?;
            }
        }
    }

    // Classes nothing names any more, then names nothing refers to.
    let named: BTreeSet<u32> = held
        .peers
        .values()
        .flat_map(|p| p.values())
        .copied()
        .collect();
    let unnamed: Vec<u32> = held
        .classes
        .keys()
        .filter(|id| !named.contains(id))
        .copied()
        .collect();
    for id in unnamed {
        let content = held.classes[&id].clone();
        for entry in &content {
            let (prefix_len, key) = port_key(id, *entry);
            maps.delete_port(prefix_len, &key)?;
            applied.deletes += 1;
        }
        held.classes.remove(&id);
        if held.by_content.get(&content) == Some(&id) {
            held.by_content.remove(&content);
        }
        held.class_pool.give_back(id);
    }
    let referred: BTreeSet<u32> = policy_references(held).collect();
    let unreferred: Vec<u32> = held
        .names
        .keys()
        .filter(|id| !referred.contains(id))
        .copied()
        .collect();
    for id in unreferred {
        maps.delete_policy_name(id)?;
        applied.deletes += 1;
        if let Some(name) = held.names.remove(&id) {
            if held.ids.get(&name) == Some(&id) {
                held.ids.remove(&name);
            }
        }
        held.policy_pool.give_back(id);
    }

    remove_node_addresses(maps, held, &nodes, applied)?;
    recount(held);
    Ok(())
}

fn add_node_addresses(
    maps: &mut impl PolicyMaps,
    held: &mut Held,
    nodes: &BTreeSet<[u8; 4]>,
    applied: &mut PolicyApplied,
) -> Result<(), Error> {
    for address in nodes.difference(&held.nodes.clone()) {
        maps.put_node_address(*address)?;
        held.nodes.insert(*address);
        applied.writes += 1;
    }
    Ok(())
}

fn remove_node_addresses(
    maps: &mut impl PolicyMaps,
    held: &mut Held,
    nodes: &BTreeSet<[u8; 4]>,
    applied: &mut PolicyApplied,
) -> Result<(), Error> {
    for address in held.nodes.difference(nodes).copied().collect::<Vec<_>>() {
        maps.delete_node_address(address)?;
        held.nodes.remove(&address);
        applied.deletes += 1;
    }
    Ok(())
}

/// Counts anew what names each class and each policy id.
fn recount(held: &mut Held) {
    let mut class_refs = BTreeMap::new();
    for class in held.peers.values().flat_map(|p| p.values()) {
        *class_refs.entry(*class).or_insert(0) += 1;
    }
    let mut name_refs = BTreeMap::new();
    for id in policy_references(held) {
        *name_refs.entry(id).or_insert(0) += 1;
    }
    held.class_refs = class_refs;
    held.name_refs = name_refs;
}

/// One reference more (`up`) or less to `id` (0 is no id).
fn count(refs: &mut BTreeMap<u32, usize>, id: u32, up: bool) {
    if id == 0 {
        return;
    }
    let entry = refs.entry(id).or_insert(0);
    if up {
        *entry += 1;
    } else {
        *entry = entry.saturating_sub(1);
    }
}

/// [`write_changes`] for the entries a delta names: the same steps in the same order, each
/// limited to what the delta touches. Classes and names are counted as entries name them, so
/// finding those nothing names any more looks only at those that lost a reference.
fn write_delta(
    maps: &mut impl PolicyMaps,
    held: &mut Held,
    stale_state: &mut BTreeSet<u32>,
    delta: &PolicyDelta,
    node: &[Ipv4Addr],
    applied: &mut PolicyApplied,
) -> Result<(), Error> {
    let nodes: BTreeSet<[u8; 4]> = node.iter().map(|a| a.octets()).collect();
    add_node_addresses(maps, held, &nodes, applied)?;
    // Classes and names that may have lost their last reference.
    let mut loose_classes: BTreeSet<u32> = BTreeSet::new();
    let mut loose_names: BTreeSet<u32> = BTreeSet::new();

    // Endpoints that are gone: the entry first, so that their interfaces drop everything
    // while the rest goes.
    let gone: BTreeSet<u32> = delta
        .endpoints
        .iter()
        .filter(|(_, e)| e.is_none())
        .map(|(ifindex, _)| *ifindex)
        .collect();
    stale_state.extend(gone.iter().copied());
    for ifindex in &gone {
        if let Some(old) = held.endpoints.get(ifindex).copied() {
            maps.delete_endpoint(*ifindex)?;
            held.endpoints.remove(ifindex);
            held.counter_pool.give_back(old.counters);
            for id in [old.ingress_policy, old.egress_policy] {
                count(&mut held.name_refs, id, false);
                loose_names.insert(id);
            }
            applied.deletes += 1;
        }
        for direction in DIRECTIONS {
            clear_peers(maps, held, *ifindex, direction, &mut loose_classes, applied)?;
        }
    }
    for ifindex in stale_state.clone() {
        if !held.endpoints.contains_key(&ifindex) {
            maps.delete_flows(ifindex)?;
            applied.deletes += 1;
        }
        stale_state.remove(&ifindex);
    }

    // The peer changes by endpoint and direction, those of gone endpoints left out.
    let mut changes: BTreeMap<(u32, u8), PeerChanges> = BTreeMap::new();
    for (prefix, set) in &delta.peers {
        if gone.contains(&prefix.endpoint) {
            continue;
        }
        let entry = peer_entry(prefix);
        let slot = changes
            .entry((prefix.endpoint, prefix.direction.number()))
            .or_default();
        match set {
            Some(set) => slot.puts.push((entry, set)),
            None => slot.removals.push(entry),
        }
    }

    // Policy names before anything names their ids.
    let mut wanted_names: BTreeSet<&str> = BTreeSet::new();
    for endpoint in delta.endpoints.values().flatten() {
        wanted_names.extend(DIRECTIONS.iter().filter_map(|d| endpoint.isolated(*d)));
    }
    for change in changes.values() {
        for (_, set) in &change.puts {
            wanted_names.extend(set.0.iter().map(|r| &*r.policy));
        }
    }
    for name in wanted_names {
        if !held.ids.contains_key(name) {
            let id = held.policy_pool.take();
            maps.put_policy_name(id, &policy_name(name))?;
            held.names.insert(id, name.to_owned());
            held.ids.insert(name.to_owned(), id);
            loose_names.insert(id);
            applied.writes += 1;
        }
    }

    // Classes, each written whole before a peer names it.
    let mut class_of: BTreeMap<&PortSet, u32> = BTreeMap::new();
    for change in changes.values() {
        for (_, set) in &change.puts {
            if class_of.contains_key(set) {
                continue;
            }
            let content = content_of(set, &held.ids);
            let id = match held.by_content.get(&content) {
                Some(id) => *id,
                None => {
                    let id = held.class_pool.take();
                    for entry in &content {
                        let (prefix_len, key) = port_key(id, *entry);
                        maps.put_port(prefix_len, &key, entry.3)?;
                        applied.writes += 1;
                    }
                    for entry in &content {
                        count(&mut held.name_refs, entry.3, true);
                    }
                    held.classes.insert(id, content.clone());
                    held.by_content.insert(content, id);
                    loose_classes.insert(id);
                    id
                }
            };
            class_of.insert(set, id);
        }
    }

    // Endpoints added or changed: counters and peers before the entry that exposes them; a
    // direction that stops being isolated is opened before its peers go.
    for (&ifindex, endpoint) in &delta.endpoints {
        let Some(endpoint) = endpoint else {
            continue;
        };
        let old = held.endpoints.get(&ifindex).copied();
        let value = endpoint_value(maps, held, ifindex, endpoint, applied)?;
        for direction in DIRECTIONS {
            if value.flags & isolation_flag(direction) != 0 {
                let change = changes
                    .remove(&(ifindex, direction.number()))
                    .unwrap_or_default();
                let mut writer = PeerWriter {
                    maps: &mut *maps,
                    held: &mut *held,
                    loose_classes: &mut loose_classes,
                    applied: &mut *applied,
                };
                writer.write(ifindex, direction, change, &class_of)?;
            }
        }
        if old != Some(value) {
            maps.put_endpoint(ifindex, &value)?;
            held.endpoints.insert(ifindex, value);
            for id in [value.ingress_policy, value.egress_policy] {
                count(&mut held.name_refs, id, true);
            }
            for id in old.iter().flat_map(|o| [o.ingress_policy, o.egress_policy]) {
                count(&mut held.name_refs, id, false);
                loose_names.insert(id);
            }
            applied.writes += 1;
        }
        for direction in DIRECTIONS {
            if value.flags & isolation_flag(direction) == 0 {
                changes.remove(&(ifindex, direction.number()));
                clear_peers(maps, held, ifindex, direction, &mut loose_classes, applied)?;
            }
        }
    }
    // The peers of endpoints whose entry stays as it is.
    for ((ifindex, direction), change) in changes {
        let Some(direction) = Direction::from_number(direction) else {
            continue;
        };
        let mut writer = PeerWriter {
            maps: &mut *maps,
            held: &mut *held,
            loose_classes: &mut loose_classes,
            applied: &mut *applied,
        };
        writer.write(ifindex, direction, change, &class_of)?;
    }

    // Classes nothing names any more, then names nothing refers to.
    for id in loose_classes {
        if held.class_refs.get(&id).copied().unwrap_or(0) > 0 {
            continue;
        }
        let Some(content) = held.classes.get(&id).cloned() else {
            continue;
        };
        for entry in &content {
            let (prefix_len, key) = port_key(id, *entry);
            maps.delete_port(prefix_len, &key)?;
            applied.deletes += 1;
        }
        held.classes.remove(&id);
        for entry in &content {
            count(&mut held.name_refs, entry.3, false);
            loose_names.insert(entry.3);
        }
        if held.by_content.get(&content) == Some(&id) {
            held.by_content.remove(&content);
        }
        held.class_refs.remove(&id);
        held.class_pool.give_back(id);
    }
    for id in loose_names {
        if id == 0 || held.name_refs.get(&id).copied().unwrap_or(0) > 0 {
            continue;
        }
        if !held.names.contains_key(&id) {
            continue;
        }
        maps.delete_policy_name(id)?;
        applied.deletes += 1;
        if let Some(name) = held.names.remove(&id) {
            if held.ids.get(&name) == Some(&id) {
                held.ids.remove(&name);
            }
        }
        held.name_refs.remove(&id);
        held.policy_pool.give_back(id);
    }

    remove_node_addresses(maps, held, &nodes, applied)
}

/// One endpoint direction's part of a delta.
#[derive(Default)]
struct PeerChanges<'d> {
    puts: Vec<(PeerEntry, &'d PortSet)>,
    removals: Vec<PeerEntry>,
}

/// The peer entry of a prefix.
fn peer_entry(prefix: &super::PeerPrefix) -> PeerEntry {
    let len = prefix.prefix_len.min(32);
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    let key = PeerKey {
        endpoint: prefix.endpoint.to_be_bytes(),
        direction: prefix.direction.number(),
        _pad: [0; 3],
        address: (prefix.address.to_bits() & mask).to_be_bytes(),
    };
    (PEER_KEY_FIXED_BITS + u32::from(len), key)
}

/// Writes peer changes, counting the classes they name.
struct PeerWriter<'w, M> {
    maps: &'w mut M,
    held: &'w mut Held,
    /// Classes that lost a reference.
    loose_classes: &'w mut BTreeSet<u32>,
    applied: &'w mut PolicyApplied,
}

impl<M: PolicyMaps> PeerWriter<'_, M> {
    /// One endpoint direction's changes: puts longest prefix first, then removals shortest
    /// first, as [`sync_peers`] writes them (see the module's comment for why).
    fn write(
        &mut self,
        ifindex: u32,
        direction: Direction,
        change: PeerChanges<'_>,
        class_of: &BTreeMap<&PortSet, u32>,
    ) -> Result<(), Error> {
        let slot = (ifindex, direction.number());
        let current = self.held.peers.entry(slot).or_default();
        let mut puts: Vec<(PeerEntry, u32)> = change
            .puts
            .into_iter()
            .map(|(entry, set)| (entry, class_of[set]))
            .filter(|(entry, class)| current.get(entry) != Some(class))
            .collect();
        puts.sort_by_key(|((len, key), _)| (Reverse(*len), *key));
        let mut removals: Vec<PeerEntry> = change
            .removals
            .into_iter()
            .filter(|entry| current.contains_key(entry))
            .collect();
        removals.sort();
        for ((len, key), class) in puts {
            self.maps.put_peer(len, &key, class)?;
            if let Some(old) = current.insert((len, key), class) {
                count(&mut self.held.class_refs, old, false);
                self.loose_classes.insert(old);
            }
            count(&mut self.held.class_refs, class, true);
            self.applied.writes += 1;
        }
        for (len, key) in removals {
            self.maps.delete_peer(len, &key)?;
            if let Some(old) = current.remove(&(len, key)) {
                count(&mut self.held.class_refs, old, false);
                self.loose_classes.insert(old);
            }
            self.applied.deletes += 1;
        }
        if current.is_empty() {
            self.held.peers.remove(&slot);
        }
        Ok(())
    }
}

/// Removes every peer entry of one endpoint direction, shortest prefix first.
fn clear_peers(
    maps: &mut impl PolicyMaps,
    held: &mut Held,
    ifindex: u32,
    direction: Direction,
    loose_classes: &mut BTreeSet<u32>,
    applied: &mut PolicyApplied,
) -> Result<(), Error> {
    let slot = (ifindex, direction.number());
    let Some(current) = held.peers.get_mut(&slot) else {
        return Ok(());
    };
    let removals: Vec<PeerEntry> = current.keys().copied().collect();
    for (len, key) in removals {
        maps.delete_peer(len, &key)?;
        if let Some(old) = current.remove(&(len, key)) {
            count(&mut held.class_refs, old, false);
            loose_classes.insert(old);
        }
        applied.deletes += 1;
    }
    held.peers.remove(&slot);
    Ok(())
}

/// The desired peer entries by `(ifindex, DIRECTION_*)`, for isolated directions only.
fn wanted_peers(desired: &Compiled) -> BTreeMap<(u32, u8), BTreeMap<PeerEntry, &PortSet>> {
    let mut wanted: BTreeMap<(u32, u8), BTreeMap<PeerEntry, &PortSet>> = BTreeMap::new();
    for (prefix, set) in &desired.peers {
        let isolated = desired
            .endpoints
            .get(&prefix.endpoint)
            .is_some_and(|e| e.isolated(prefix.direction).is_some());
        if !isolated {
            continue;
        }
        let len = prefix.prefix_len.min(32);
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        let key = PeerKey {
            endpoint: prefix.endpoint.to_be_bytes(),
            direction: prefix.direction.number(),
            _pad: [0; 3],
            address: (prefix.address.to_bits() & mask).to_be_bytes(),
        };
        wanted
            .entry((prefix.endpoint, prefix.direction.number()))
            .or_default()
            .insert((PEER_KEY_FIXED_BITS + u32::from(len), key), set);
    }
    wanted
}

/// Makes one endpoint's peers in one direction `wanted`: puts longest prefix first, then
/// removals shortest first (see the module's comment for why).
fn sync_peers(
    maps: &mut impl PolicyMaps,
    held: &mut Held,
    ifindex: u32,
    direction: Direction,
    wanted: &BTreeMap<PeerEntry, u32>,
    applied: &mut PolicyApplied,
) -> Result<(), Error> {
    let slot = (ifindex, direction.number());
    let current = held.peers.entry(slot).or_default();
    let mut puts: Vec<(PeerEntry, u32)> = wanted
        .iter()
        .filter(|(entry, class)| current.get(entry) != Some(class))
        .map(|(entry, class)| (*entry, *class))
        .collect();
    puts.sort_by_key(|((len, key), _)| (Reverse(*len), *key));
    let mut removals: Vec<PeerEntry> = current
        .keys()
        .filter(|entry| !wanted.contains_key(entry))
        .copied()
        .collect();
    removals.sort();
    for ((len, key), class) in puts {
        maps.put_peer(len, &key, class)?;
        current.insert((len, key), class);
        applied.writes += 1;
    }
    for (len, key) in removals {
        maps.delete_peer(len, &key)?;
        current.remove(&(len, key));
        applied.deletes += 1;
    }
    if current.is_empty() {
        held.peers.remove(&slot);
    }
    Ok(())
}

/// A [`PortSet`]'s port entries. Where two ranges give one key (ranges that overlap), the
/// first in the set's order keeps it.
fn content_of(set: &PortSet, ids: &BTreeMap<String, u32>) -> Content {
    let mut entries: BTreeMap<(u32, u8, u16), u32> = BTreeMap::new();
    for range in &set.0 {
        let policy = ids[&*range.policy];
        match range.protocol {
            None => {
                entries
                    .entry((PORT_KEY_ANY_PROTOCOL_BITS, 0, 0))
                    .or_insert(policy);
            }
            Some(protocol) if range.first == 0 && range.last == u16::MAX => {
                entries
                    .entry((PORT_KEY_ANY_PORT_BITS, protocol.number(), 0))
                    .or_insert(policy);
            }
            Some(protocol) => {
                for (port, bits) in port_blocks(range.first, range.last) {
                    entries
                        .entry((
                            PORT_KEY_FIXED_BITS + u32::from(bits),
                            protocol.number(),
                            port,
                        ))
                        .or_insert(policy);
                }
            }
        }
    }
    entries
        .into_iter()
        .map(|((len, protocol, port), policy)| (len, protocol, port, policy))
        .collect()
}

fn port_key(class: u32, (prefix_len, protocol, port, _): PortEntry) -> (u32, PortKey) {
    let key = PortKey {
        class: class.to_be_bytes(),
        protocol,
        _pad: 0,
        port: port.to_be_bytes(),
    };
    (prefix_len, key)
}

/// Every policy id an entry holds: port entries and endpoints' drop attribution.
fn policy_references(held: &Held) -> impl Iterator<Item = u32> + '_ {
    let from_ports = held.classes.values().flatten().map(|entry| entry.3);
    let from_endpoints = held
        .endpoints
        .values()
        .flat_map(|v| [v.ingress_policy, v.egress_policy]);
    from_ports.chain(from_endpoints).filter(|id| *id != 0)
}

/// Reads the maps back. Entries a crash left half-done (a class no peer names, a name nothing
/// refers to, peers of an interface without an endpoint entry) are adopted as they are and
/// removed by the next apply unless it wants them.
fn read_held(maps: &impl PolicyMaps) -> Result<Held, Error> {
    let endpoints: BTreeMap<u32, EndpointValue> = maps.endpoints()?.into_iter().collect();

    let mut peers: BTreeMap<(u32, u8), BTreeMap<PeerEntry, u32>> = BTreeMap::new();
    for (len, key, class) in maps.peers()? {
        let ifindex = u32::from_be_bytes(key.endpoint);
        peers
            .entry((ifindex, key.direction))
            .or_default()
            .insert((len, key), class);
    }

    let mut classes: BTreeMap<u32, Content> = BTreeMap::new();
    for (len, key, policy) in maps.ports()? {
        classes
            .entry(u32::from_be_bytes(key.class))
            .or_default()
            .push((len, key.protocol, u16::from_be_bytes(key.port), policy));
    }
    let mut named: BTreeMap<u32, usize> = BTreeMap::new();
    for class in peers.values().flat_map(|p| p.values()) {
        *named.entry(*class).or_insert(0) += 1;
        // A class named with no port entries is the empty class.
        classes.entry(*class).or_default();
    }
    for content in classes.values_mut() {
        content.sort();
    }
    // Of classes with one content (only a crash makes them), the most named one is kept and
    // peers naming the others are switched to it.
    let mut by_content: BTreeMap<Content, u32> = BTreeMap::new();
    for (id, content) in &classes {
        let kept = by_content.entry(content.clone()).or_insert(*id);
        let names = |id: &u32| named.get(id).copied().unwrap_or(0);
        if names(id) > names(kept) {
            *kept = *id;
        }
    }

    let names: BTreeMap<u32, String> = maps
        .policy_names()?
        .into_iter()
        .map(|(id, name)| (id, policy_name_str(&name)))
        .collect();
    let mut ids: BTreeMap<String, u32> = BTreeMap::new();
    for (id, name) in &names {
        ids.entry(name.clone()).or_insert(*id);
    }

    let mut held = Held {
        counter_pool: IdPool::from_used(endpoints.values().map(|e| e.counters)),
        endpoints,
        peers,
        class_pool: IdPool::from_used(classes.keys().copied()),
        classes,
        by_content,
        names,
        ids,
        policy_pool: IdPool::default(),
        nodes: maps.node_addresses()?.into_iter().collect(),
        class_refs: BTreeMap::new(),
        name_refs: BTreeMap::new(),
    };
    // Ids something refers to are not handed out again, even without a name.
    let used: Vec<u32> = policy_references(&held)
        .chain(held.names.keys().copied())
        .collect();
    held.policy_pool = IdPool::from_used(used);
    recount(&mut held);
    Ok(held)
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
