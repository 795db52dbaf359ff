//! The reconciler: makes the maps hold exactly the desired services, in an order that never
//! leaves a live frontend pointing at nothing, and keeps ids stable across restarts by reading
//! them back from the maps rather than remembering them.
//!
//! The invariant every single write preserves: for each service entry with count `c`, slots
//! `0..c` exist and each names a backend that exists. Hence backends are written before the
//! slots that name them, slots before the count that exposes them; a count shrinks before the
//! slots above it go, and a backend goes only when no slot names it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
};

use bosun_ebpf_abi::{
    address_from_host, address_to_host, port_from_host, port_to_host, Backend, ServiceKey,
    ServiceValue, SlotKey, SERVICE_FLAG_AFFINITY, SERVICE_FLAG_EXTERNAL,
};

use super::{maglev, BackendAddr, DesiredService, Frontend, Protocol, ServiceMaps};
use crate::Error;

/// What one [`Reconciler::apply`] changed, in services (frontends) and backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub added: usize,
    pub updated: usize,
    pub removed: usize,
    pub backends_added: usize,
    pub backends_removed: usize,
}

impl Applied {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Owns the maps' writer side. One per node: two writers would undo each other.
pub struct Reconciler<M> {
    maps: M,
    /// What the maps hold, as last read or written; `None` after a failed write, when only the
    /// maps know, so the next [`Reconciler::apply`] reads them again.
    held: Option<Held>,
}

/// The maps' content, indexed the way the reconciler needs it.
#[derive(Clone, Debug, Default)]
struct Held {
    services: BTreeMap<ServiceKey, HeldService>,
    backends: HashMap<Backend, u32>,
    /// Backend ids in the map that no slot below a count names: removed at the end of the
    /// next apply unless a service takes them back.
    stray_slots: Vec<SlotKey>,
    /// Ids of backends present in the map, whatever their address.
    backend_ids: BTreeMap<u32, Backend>,
    /// How many counted slots name each backend id.
    names: HashMap<u32, u32>,
    /// Backend ids that may be named by no slot: checked, and removed if so, at the end of the
    /// next apply.
    unnamed: Vec<u32>,
    /// Service ids of Maglev tables no service holds (left by a crash): removed at the end of
    /// the next apply unless a service has taken the id since.
    stray_maglev: Vec<u32>,
    service_pool: IdPool,
    backend_pool: IdPool,
}

/// Hands out the lowest free id ≥ 1 in O(log n), so that programming thousands of services
/// from empty stays linear.
#[derive(Clone, Debug, Default)]
pub(crate) struct IdPool {
    /// Ids below `next` that are free.
    free: BTreeSet<u32>,
    next: u32,
}

impl IdPool {
    pub(crate) fn from_used(used: impl IntoIterator<Item = u32>) -> Self {
        let used: BTreeSet<u32> = used.into_iter().filter(|id| *id != 0).collect();
        let next = used.last().map_or(1, |max| max + 1);
        let free = (1..next).filter(|id| !used.contains(id)).collect();
        Self { free, next }
    }

    pub(crate) fn take(&mut self) -> u32 {
        match self.free.pop_first() {
            Some(id) => id,
            None => {
                self.next += 1;
                self.next - 1
            }
        }
    }

    pub(crate) fn give_back(&mut self, id: u32) {
        if id != 0 && id < self.next {
            self.free.insert(id);
        }
    }
}

#[derive(Clone, Debug)]
struct HeldService {
    value: ServiceValue,
    /// Slot `i` → backend id; `None` where the map has no slot or the slot names a missing
    /// backend (left by a crash or another writer), which the next write repairs.
    slots: Vec<Option<u32>>,
    /// The [`maglev::fingerprint`] of its Maglev table; `None`: it has none.
    maglev: Option<u64>,
}

impl<M: ServiceMaps> Reconciler<M> {
    /// Adopts the maps as they are; nothing is written until [`Reconciler::apply`].
    pub fn new(maps: M) -> Self {
        Self { maps, held: None }
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// How many frontends and backends the maps hold as last written; `None` before the
    /// first write or after a failed one.
    pub fn counts(&self) -> Option<(usize, usize)> {
        let held = self.held.as_ref()?;
        Some((held.services.len(), held.backend_ids.len()))
    }

    #[cfg(test)]
    pub(crate) fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// Makes the maps hold exactly `desired` (frontends not in it are removed). On error the
    /// maps are still consistent, holding part of the change; call again to finish it.
    pub fn apply(&mut self, desired: &[DesiredService]) -> Result<Applied, Error> {
        let mut held = match self.held.take() {
            Some(held) => held,
            None => read_held(&self.maps)?,
        };
        let result = write_changes(&mut self.maps, &mut held, desired);
        if result.is_ok() {
            self.held = Some(held);
        }
        result
    }

    /// Writes `upserts` and removes `removals`, leaving every other frontend as it is. On
    /// error the maps are still consistent, holding part of the change, and the next call
    /// reads them back first; the caller should then [`Reconciler::apply`] the whole desired
    /// state, since the part of this delta that was not written is known to it alone.
    pub fn apply_delta(
        &mut self,
        upserts: &[DesiredService],
        removals: &[Frontend],
    ) -> Result<Applied, Error> {
        let mut held = match self.held.take() {
            Some(held) => held,
            None => read_held(&self.maps)?,
        };
        let result = write_delta(&mut self.maps, &mut held, upserts, removals);
        if result.is_ok() {
            self.held = Some(held);
        }
        result
    }
}

fn write_changes(
    maps: &mut impl ServiceMaps,
    held: &mut Held,
    desired: &[DesiredService],
) -> Result<Applied, Error> {
    let mut applied = Applied::default();
    write_backends(maps, held, desired, &mut applied)?;
    let mut wanted_keys: HashSet<ServiceKey> = HashSet::with_capacity(desired.len());
    let mut ids: Vec<u32> = Vec::new();
    for service in desired {
        // The compiler never repeats a frontend; the first wins if it did.
        if wanted_keys.insert(service_key(service.frontend)) {
            upsert_service(maps, held, service, &mut ids, &mut applied)?;
        }
    }
    // Frontends no longer desired.
    let gone: Vec<ServiceKey> = held
        .services
        .keys()
        .filter(|k| !wanted_keys.contains(k))
        .copied()
        .collect();
    for key in gone {
        remove_service(maps, held, key, &mut applied)?;
    }
    finish(maps, held, &mut applied)?;
    Ok(applied)
}

/// Writes only what changed: `upserts` added or rewritten, `removals` removed. Costs what
/// they touch, not what the maps hold.
fn write_delta(
    maps: &mut impl ServiceMaps,
    held: &mut Held,
    upserts: &[DesiredService],
    removals: &[Frontend],
) -> Result<Applied, Error> {
    let mut applied = Applied::default();
    write_backends(maps, held, upserts, &mut applied)?;
    let mut ids: Vec<u32> = Vec::new();
    for service in upserts {
        upsert_service(maps, held, service, &mut ids, &mut applied)?;
    }
    for frontend in removals {
        let key = service_key(*frontend);
        if held.services.contains_key(&key) {
            remove_service(maps, held, key, &mut applied)?;
        }
    }
    finish(maps, held, &mut applied)?;
    Ok(applied)
}

/// Backends first: every slot written after names one that exists.
fn write_backends(
    maps: &mut impl ServiceMaps,
    held: &mut Held,
    desired: &[DesiredService],
    applied: &mut Applied,
) -> Result<(), Error> {
    for backend in desired.iter().flat_map(|s| &s.backends) {
        let backend = backend_entry(*backend);
        if !held.backends.contains_key(&backend) {
            let id = held.backend_pool.take();
            maps.put_backend(id, &backend)?;
            held.backends.insert(backend, id);
            held.backend_ids.insert(id, backend);
            // Nothing names it yet; if the slot that would fails, the next apply removes it.
            held.unnamed.push(id);
            applied.backends_added += 1;
        }
    }
    Ok(())
}

/// One service: slots, then the count; a shrinking count before the slots above it. An
/// unchanged service costs a comparison and no allocation beyond `ids`.
fn upsert_service(
    maps: &mut impl ServiceMaps,
    held: &mut Held,
    service: &DesiredService,
    ids: &mut Vec<u32>,
    applied: &mut Applied,
) -> Result<(), Error> {
    let key = service_key(service.frontend);
    ids.clear();
    ids.extend(
        service
            .backends
            .iter()
            .map(|b| held.backends[&backend_entry(*b)]),
    );
    let existing_value = held.services.get(&key).map(|s| s.value);
    let id = match existing_value {
        Some(existing) => existing.id,
        None => held.service_pool.take(),
    };
    let value = ServiceValue {
        id,
        count: ids.len() as u32,
        flags: if service.affinity_timeout.is_some() {
            SERVICE_FLAG_AFFINITY
        } else {
            0
        } | if service.external.is_some() {
            SERVICE_FLAG_EXTERNAL
        } else {
            0
        },
        affinity_timeout: service.affinity_timeout.unwrap_or(0),
    };
    let external = service.external.as_deref().filter(|e| !e.is_empty());
    let fingerprint = external.map(maglev::fingerprint);
    let old_maglev = held.services.get(&key).and_then(|s| s.maglev);
    let old_slots = match held.services.get(&key) {
        Some(existing)
            if existing.value == value
                && existing.maglev == fingerprint
                && existing.slots.len() == ids.len()
                && existing
                    .slots
                    .iter()
                    .zip(ids.iter())
                    .all(|(old, new)| *old == Some(*new)) =>
        {
            return Ok(());
        }
        Some(existing) => existing.slots.clone(),
        None => Vec::new(),
    };
    for (slot, backend) in ids.iter().enumerate() {
        let old = old_slots.get(slot).copied().flatten();
        if old != Some(*backend) {
            maps.put_slot(&slot_key(id, slot), *backend)?;
            held.name(*backend);
            if let Some(old) = old {
                held.unname(old);
            }
        }
    }
    // The table before the flag that sends outside traffic to it.
    if let (Some(external), true) = (external, fingerprint != old_maglev) {
        maps.put_maglev(id, &maglev::table(external))?;
    }
    if existing_value != Some(value) {
        maps.put_service(&key, &value)?;
        match existing_value {
            Some(_) => applied.updated += 1,
            None => applied.added += 1,
        }
    } else if fingerprint != old_maglev {
        applied.updated += 1;
    }
    if fingerprint.is_none() && old_maglev.is_some() {
        maps.delete_maglev(id)?;
    }
    // The slots are now what `ids` says, whatever follows fails.
    let mut slots: Vec<Option<u32>> = ids.iter().copied().map(Some).collect();
    slots.extend(old_slots.iter().skip(ids.len()).copied());
    held.services.insert(
        key,
        HeldService {
            value,
            slots,
            maglev: fingerprint,
        },
    );
    for (slot, old) in old_slots.iter().enumerate().skip(ids.len()) {
        maps.delete_slot(&slot_key(id, slot))?;
        if let Some(old) = old {
            held.unname(*old);
        }
    }
    if let Some(service) = held.services.get_mut(&key) {
        service.slots.truncate(ids.len());
    }
    // A client stuck to a backend that left stays with it no longer.
    if value.flags & SERVICE_FLAG_AFFINITY != 0 {
        let kept: BTreeSet<u32> = ids.iter().copied().collect();
        let left: BTreeSet<u32> = old_slots
            .iter()
            .flatten()
            .copied()
            .filter(|b| !kept.contains(b))
            .collect();
        for backend in left {
            maps.delete_affinity(id, Some(backend))?;
        }
    }
    Ok(())
}

/// One frontend no longer desired: the entry first, so no connection reaches its slots.
fn remove_service(
    maps: &mut impl ServiceMaps,
    held: &mut Held,
    key: ServiceKey,
    applied: &mut Applied,
) -> Result<(), Error> {
    let service = &held.services[&key];
    let id = service.value.id;
    let slots = service.slots.clone();
    let had_maglev = service.maglev.is_some();
    maps.delete_service(&key)?;
    held.services.remove(&key);
    applied.removed += 1;
    if had_maglev {
        maps.delete_maglev(id)?;
    }
    for (slot, backend) in slots.iter().enumerate() {
        maps.delete_slot(&slot_key(id, slot))?;
        if let Some(backend) = backend {
            held.unname(*backend);
        }
    }
    maps.delete_affinity(id, None)?;
    held.service_pool.give_back(id);
    Ok(())
}

/// Slots no count exposes (left by a crash), and backends no slot names any more.
fn finish(
    maps: &mut impl ServiceMaps,
    held: &mut Held,
    applied: &mut Applied,
) -> Result<(), Error> {
    if !held.stray_slots.is_empty() {
        let counted: BTreeSet<(u32, usize)> = held
            .services
            .values()
            .map(|s| (s.value.id, s.slots.len()))
            .collect();
        for key in std::mem::take(&mut held.stray_slots) {
            // A service that grew since the read has written over its own strays.
            let reused = counted
                .range((key.service, 0)..(key.service, usize::MAX))
                .any(|(_, len)| (key.slot as usize) < *len);
            if !reused {
                maps.delete_slot(&key)?;
            }
        }
    }
    if !held.stray_maglev.is_empty() {
        let ids: BTreeSet<u32> = held.services.values().map(|s| s.value.id).collect();
        for id in std::mem::take(&mut held.stray_maglev) {
            if !ids.contains(&id) {
                maps.delete_maglev(id)?;
            }
        }
    }
    let mut unnamed = std::mem::take(&mut held.unnamed);
    unnamed.sort_unstable();
    unnamed.dedup();
    for id in unnamed {
        if held.names.get(&id).copied().unwrap_or(0) > 0 {
            continue;
        }
        let Some(backend) = held.backend_ids.remove(&id) else {
            continue;
        };
        maps.delete_backend(id)?;
        held.names.remove(&id);
        held.backend_pool.give_back(id);
        if held.backends.get(&backend) == Some(&id) {
            held.backends.remove(&backend);
        }
        applied.backends_removed += 1;
    }
    Ok(())
}

impl Held {
    /// One more slot names `backend`.
    fn name(&mut self, backend: u32) {
        *self.names.entry(backend).or_insert(0) += 1;
    }

    /// One slot fewer names `backend`; at none, it is removed at the end of the apply.
    fn unname(&mut self, backend: u32) {
        let names = self.names.entry(backend).or_insert(0);
        *names = names.saturating_sub(1);
        if *names == 0 {
            self.unnamed.push(backend);
        }
    }
}

/// Reads the maps back. Whatever does not fit the invariant (a slot naming a missing backend,
/// slots above a count, two ids for one address) is noted so that the next write repairs it.
fn read_held(maps: &impl ServiceMaps) -> Result<Held, Error> {
    let backend_ids: BTreeMap<u32, Backend> = maps.backends()?.into_iter().collect();
    let mut backends = HashMap::new();
    for (id, backend) in &backend_ids {
        // The lowest id of a duplicated address is the one kept; the others are unnamed once
        // their slots are rewritten and go then.
        backends.entry(*backend).or_insert(*id);
    }
    let slots: BTreeMap<SlotKey, u32> = maps.slots()?.into_iter().collect();
    let mut tables: BTreeMap<u32, u64> = maps.maglev_fingerprints()?.into_iter().collect();
    let mut services = BTreeMap::new();
    let mut counted = BTreeSet::new();
    for (key, value) in maps.services()? {
        let slots_of = (0..value.count)
            .map(|slot| {
                let key = SlotKey {
                    service: value.id,
                    slot,
                };
                counted.insert(key);
                slots
                    .get(&key)
                    .copied()
                    .filter(|b| backend_ids.get(b).is_some_and(|be| backends[be] == *b))
            })
            .collect();
        services.insert(
            key,
            HeldService {
                value,
                slots: slots_of,
                maglev: tables.remove(&value.id),
            },
        );
    }
    let stray_maglev = tables.into_keys().collect();
    let stray_slots = slots
        .keys()
        .filter(|k| !counted.contains(k))
        .copied()
        .collect();
    let mut names: HashMap<u32, u32> = HashMap::new();
    for slot in services
        .values()
        .flat_map(|s: &HeldService| s.slots.iter().flatten())
    {
        *names.entry(*slot).or_insert(0) += 1;
    }
    let unnamed = backend_ids
        .keys()
        .filter(|id| !names.contains_key(id))
        .copied()
        .collect();
    Ok(Held {
        names,
        unnamed,
        stray_maglev,
        service_pool: IdPool::from_used(services.values().map(|s: &HeldService| s.value.id)),
        backend_pool: IdPool::from_used(backend_ids.keys().copied()),
        services,
        backends,
        stray_slots,
        backend_ids,
    })
}

fn slot_key(service: u32, slot: usize) -> SlotKey {
    SlotKey {
        service,
        slot: slot as u32,
    }
}

fn service_key(frontend: Frontend) -> ServiceKey {
    ServiceKey {
        address: address_from_host(frontend.address.to_bits()),
        port: port_from_host(frontend.port),
        protocol: frontend.protocol.number(),
        _pad: 0,
    }
}

fn backend_entry(backend: BackendAddr) -> Backend {
    Backend {
        address: address_from_host(backend.address.to_bits()),
        port: port_from_host(backend.port),
        _pad: [0; 2],
    }
}

/// One frontend as the maps hold it right now, for `bosun dp services`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MapService {
    /// `None` when the entry's protocol is not one bosun writes.
    pub frontend: Option<Frontend>,
    pub id: u32,
    pub count: u32,
    pub affinity_timeout: Option<u32>,
    /// By slot; `None` where the slot or its backend is missing.
    pub backends: Vec<Option<MapBackend>>,
}

/// One backend as the maps hold it right now, for `bosun dp backends`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MapBackend {
    pub id: u32,
    pub address: BackendAddr,
}

/// Everything the maps hold, read in three passes (a concurrent writer may make the passes
/// disagree for a moment; the next read agrees again).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MapSnapshot {
    pub services: Vec<MapService>,
    pub backends: Vec<MapBackend>,
}

/// How many times [`snapshot`] reads the maps again when a write came between two reads.
const SNAPSHOT_TRIES: usize = 5;

/// Reads what the maps hold. The three passes of one read can straddle a write (a backend
/// then looks missing that the programs still serve), so the maps are read until two reads
/// in a row agree, [`SNAPSHOT_TRIES`] times at most.
pub fn snapshot(maps: &impl ServiceMaps) -> Result<MapSnapshot, Error> {
    let mut last = read_snapshot(maps)?;
    for _ in 0..SNAPSHOT_TRIES {
        let next = read_snapshot(maps)?;
        if next == last {
            break;
        }
        last = next;
    }
    Ok(last)
}

fn read_snapshot(maps: &impl ServiceMaps) -> Result<MapSnapshot, Error> {
    let backends: BTreeMap<u32, BackendAddr> = maps
        .backends()?
        .into_iter()
        .map(|(id, b)| (id, backend_addr(b)))
        .collect();
    let slots: BTreeMap<SlotKey, u32> = maps.slots()?.into_iter().collect();
    let mut services: Vec<MapService> = maps
        .services()?
        .into_iter()
        .map(|(key, value)| MapService {
            frontend: Protocol::from_number(key.protocol).map(|protocol| Frontend {
                address: Ipv4Addr::from_bits(address_to_host(key.address)),
                port: port_to_host(key.port),
                protocol,
            }),
            id: value.id,
            count: value.count,
            affinity_timeout: (value.flags & SERVICE_FLAG_AFFINITY != 0)
                .then_some(value.affinity_timeout),
            backends: (0..value.count)
                .map(|slot| {
                    let id = *slots.get(&SlotKey {
                        service: value.id,
                        slot,
                    })?;
                    Some(MapBackend {
                        id,
                        address: *backends.get(&id)?,
                    })
                })
                .collect(),
        })
        .collect();
    services.sort_by_key(|s| (s.frontend, s.id));
    Ok(MapSnapshot {
        services,
        backends: backends
            .into_iter()
            .map(|(id, address)| MapBackend { id, address })
            .collect(),
    })
}

fn backend_addr(backend: Backend) -> BackendAddr {
    BackendAddr {
        address: Ipv4Addr::from_bits(address_to_host(backend.address)),
        port: port_to_host(backend.port),
    }
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
