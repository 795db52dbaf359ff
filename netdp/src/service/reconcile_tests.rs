use std::net::Ipv4Addr;

use bosun_ebpf_abi::{AffinityKey, MaglevTable};

use super::*;
use crate::service::{ExternalTarget, MapOp, MemoryMaps, ServicePortName};

fn frontend(last: u8, port: u16) -> Frontend {
    Frontend {
        address: Ipv4Addr::new(10, 96, 0, last),
        port,
        protocol: Protocol::Tcp,
    }
}

fn backend(last: u8) -> BackendAddr {
    BackendAddr {
        address: Ipv4Addr::new(10, 0, 0, last),
        port: 8080,
    }
}

fn service(last: u8, backends: &[u8]) -> DesiredService {
    let mut backends: Vec<BackendAddr> = backends.iter().map(|b| backend(*b)).collect();
    backends.sort();
    DesiredService {
        frontend: frontend(last, 80),
        name: ServicePortName {
            namespace: "default".into(),
            name: format!("svc{last}").into(),
            port: "".into(),
        },
        affinity_timeout: None,
        backends,
        external: None,
    }
}

/// What the maps serve, frontend → backends, read the way the kernel program reads them.
fn served(maps: &MemoryMaps) -> Vec<(Frontend, Vec<BackendAddr>)> {
    let snapshot = snapshot(maps).expect("memory maps never fail to read");
    snapshot
        .services
        .into_iter()
        .map(|s| {
            let mut backends: Vec<BackendAddr> = s
                .backends
                .into_iter()
                .map(|b| b.expect("every counted slot names a backend").address)
                .collect();
            backends.sort();
            (s.frontend.expect("bosun's protocols"), backends)
        })
        .collect()
}

fn wanted(desired: &[DesiredService]) -> Vec<(Frontend, Vec<BackendAddr>)> {
    let mut wanted: Vec<_> = desired
        .iter()
        .map(|d| (d.frontend, d.backends.clone()))
        .collect();
    wanted.sort();
    wanted
}

/// The invariant the kernel program relies on: every counted slot names an existing backend.
fn assert_consistent(maps: &MemoryMaps, after: &str) {
    for (key, value) in &maps.services {
        for slot in 0..value.count {
            let backend = maps.slots.get(&SlotKey {
                service: value.id,
                slot,
            });
            let backend = backend.unwrap_or_else(|| {
                panic!("{after}: service {key:?} counts slot {slot}, which is missing")
            });
            assert!(
                maps.backends.contains_key(backend),
                "{after}: slot {slot} of {key:?} names missing backend {backend}"
            );
        }
    }
}

/// Applies `desired` to a copy of `start`, then replays its writes one at a time on another
/// copy, checking the invariant after each; returns the maps after the apply.
fn apply_checked(start: &MemoryMaps, desired: &[DesiredService]) -> MemoryMaps {
    let mut maps = start.clone();
    maps.ops.clear();
    let mut reconciler = Reconciler::new(maps);
    reconciler.apply(desired).expect("memory maps do not fail");
    let after = reconciler.maps().clone();

    let mut replay = start.clone();
    for (n, op) in after.ops.iter().enumerate() {
        replay_op(&mut replay, op);
        assert_consistent(&replay, &format!("write {n} ({op:?})"));
    }
    assert_eq!(served(&after), wanted(desired));
    after
}

fn replay_op(maps: &mut MemoryMaps, op: &MapOp) {
    match op {
        MapOp::PutBackend(id, b) => maps.put_backend(*id, b),
        MapOp::PutSlot(k, b) => maps.put_slot(k, *b),
        MapOp::PutService(k, v) => maps.put_service(k, v),
        MapOp::DeleteService(k) => maps.delete_service(k),
        MapOp::DeleteSlot(k) => maps.delete_slot(k),
        MapOp::DeleteBackend(id) => maps.delete_backend(*id),
        MapOp::DeleteAffinity(s, b) => maps.delete_affinity(*s, *b),
        MapOp::PutMaglev(s, t) => maps.put_maglev(*s, t),
        MapOp::DeleteMaglev(s) => maps.delete_maglev(*s),
    }
    .expect("memory maps do not fail");
}

#[test]
fn programs_services_from_empty_backends_first() {
    let desired = [service(1, &[1, 2, 3]), service(2, &[])];
    let maps = apply_checked(&MemoryMaps::default(), &desired);

    let first_slot = maps
        .ops
        .iter()
        .position(|op| matches!(op, MapOp::PutSlot(..)));
    let last_backend = maps
        .ops
        .iter()
        .rposition(|op| matches!(op, MapOp::PutBackend(..)));
    assert!(last_backend < first_slot, "{:?}", maps.ops);
    assert_eq!(maps.backends.len(), 3);
    // The Service without endpoints is there with count 0, so connections are refused.
    let empty = maps
        .services
        .values()
        .find(|v| v.count == 0)
        .expect("an entry for the Service without endpoints");
    assert_ne!(empty.id, 0);
}

#[test]
fn transitions_never_break_the_invariant() {
    let steps: [&[DesiredService]; 7] = [
        &[service(1, &[1, 2, 3])],
        &[service(1, &[1, 2, 3, 4, 5])],
        &[service(1, &[5])],
        &[service(1, &[6, 7]), service(2, &[5, 6])],
        &[service(2, &[5, 6])],
        &[service(2, &[]), service(3, &[1])],
        &[],
    ];
    let mut maps = MemoryMaps::default();
    for desired in steps {
        maps = apply_checked(&maps, desired);
    }
    assert!(maps.services.is_empty() && maps.slots.is_empty() && maps.backends.is_empty());
}

#[test]
fn random_transitions_never_break_the_invariant() {
    // A fixed linear congruential sequence: the same cases on every run.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |below: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % below
    };
    let mut maps = MemoryMaps::default();
    for _ in 0..300 {
        let services = next(6);
        let desired: Vec<DesiredService> = (0..services)
            .map(|s| {
                let mut backends: Vec<u8> = (0..next(6)).map(|_| next(10) as u8 + 1).collect();
                backends.sort();
                backends.dedup();
                let service = service(s as u8 + next(3) as u8 * 10, &backends);
                (service.frontend, service)
            })
            // Keyed by frontend: the compiler never repeats one.
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_values()
            .collect();
        maps = apply_checked(&maps, &desired);
    }
}

#[test]
fn a_second_reconciler_adopts_ids_and_writes_nothing() {
    let desired = [service(1, &[1, 2]), service(2, &[2, 3])];
    let maps = apply_checked(&MemoryMaps::default(), &desired);
    let ids: Vec<u32> = maps.services.values().map(|v| v.id).collect();

    let mut restarted = maps.clone();
    restarted.ops.clear();
    let mut reconciler = Reconciler::new(restarted);
    let applied = reconciler.apply(&desired).expect("memory maps do not fail");
    assert!(applied.is_empty(), "{applied:?}");
    assert!(
        reconciler.maps().ops.is_empty(),
        "{:?}",
        reconciler.maps().ops
    );

    // A change after the restart keeps the ids it read back.
    reconciler
        .apply(&[service(1, &[1]), service(2, &[2, 3]), service(3, &[4])])
        .expect("memory maps do not fail");
    let after: Vec<u32> = reconciler.maps().services.values().map(|v| v.id).collect();
    assert_eq!(&after[..2], &ids[..]);
    assert!(!ids.contains(&after[2]));
}

#[test]
fn a_failed_write_leaves_consistent_maps_and_the_next_apply_finishes() {
    let start = apply_checked(&MemoryMaps::default(), &[service(1, &[1, 2, 3])]);
    let desired = [service(1, &[3, 4]), service(2, &[1, 5])];
    let writes = apply_checked(&start, &desired).ops.len();
    for fail_at in 0..writes {
        let mut maps = start.clone();
        maps.fail_after(fail_at);
        let mut reconciler = Reconciler::new(maps);
        assert!(reconciler.apply(&desired).is_err(), "write {fail_at} fails");
        assert_consistent(reconciler.maps(), &format!("failing write {fail_at}"));
        reconciler.apply(&desired).expect("the retry succeeds");
        assert_eq!(served(reconciler.maps()), wanted(&desired));
    }
}

#[test]
fn clients_stuck_to_a_leaving_backend_are_released() {
    let mut sticky = service(1, &[1, 2]);
    sticky.affinity_timeout = Some(10800);
    let mut maps = apply_checked(&MemoryMaps::default(), &[sticky.clone()]);
    let id = maps.services.values().next().expect("one service").id;
    let backend_1 = maps
        .backends
        .iter()
        .find(|(_, b)| b.address[3] == 1)
        .expect("1");
    let backend_1 = *backend_1.0;
    let client = AffinityKey {
        netns_cookie: 7,
        service: id,
        _pad: 0,
    };
    maps.stick(client, backend_1);

    sticky.backends = vec![backend(2)];
    let maps = apply_checked(&maps, &[sticky]);
    assert!(maps
        .ops
        .contains(&MapOp::DeleteAffinity(id, Some(backend_1))));
    assert!(maps.affinity.is_empty());

    let maps = apply_checked(&maps, &[]);
    assert!(maps.ops.contains(&MapOp::DeleteAffinity(id, None)));
}

#[test]
fn leftovers_of_a_crash_are_repaired() {
    let mut maps = apply_checked(&MemoryMaps::default(), &[service(1, &[1, 2])]);
    let id = maps.services.values().next().expect("one service").id;
    // A slot above the count, a slot of a service that is gone, and a backend nothing names.
    maps.slots.insert(
        SlotKey {
            service: id,
            slot: 5,
        },
        1,
    );
    maps.slots.insert(
        SlotKey {
            service: 99,
            slot: 0,
        },
        1,
    );
    maps.backends.insert(42, backend_entry(backend(42)));
    // A counted slot naming a missing backend.
    maps.slots.insert(
        SlotKey {
            service: id,
            slot: 1,
        },
        77,
    );

    let maps = apply_checked(&maps, &[service(1, &[1, 2])]);
    assert_eq!(maps.slots.len(), 2, "{:?}", maps.slots);
    assert_eq!(maps.backends.len(), 2, "{:?}", maps.backends);
}

#[test]
fn ids_are_reused_lowest_first() {
    let maps = apply_checked(
        &MemoryMaps::default(),
        &[service(1, &[1]), service(2, &[2]), service(3, &[3])],
    );
    let maps = apply_checked(&maps, &[service(1, &[1]), service(3, &[3])]);
    let maps = apply_checked(
        &maps,
        &[service(1, &[1]), service(3, &[3]), service(4, &[4])],
    );
    let mut ids: Vec<u32> = maps.services.values().map(|v| v.id).collect();
    ids.sort();
    assert_eq!(ids, [1, 2, 3]);
}

#[test]
fn deltas_write_what_a_full_apply_would_and_touch_nothing_else() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |below: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % below
    };
    let mut reconciler = Reconciler::new(MemoryMaps::default());
    let mut desired: std::collections::BTreeMap<Frontend, DesiredService> = Default::default();
    for round in 0..300 {
        let (mut upserts, mut removals) = (Vec::new(), Vec::new());
        for _ in 0..next(3) + 1 {
            let last = next(12) as u8 + 1;
            if next(4) == 0 {
                // A frontend is in one of the two lists, as the table makes them.
                upserts.retain(|u: &DesiredService| u.frontend != frontend(last, 80));
                if desired.remove(&frontend(last, 80)).is_some() {
                    removals.push(frontend(last, 80));
                }
            } else {
                let mut backends: Vec<u8> = (0..next(5)).map(|_| next(10) as u8 + 1).collect();
                backends.sort();
                backends.dedup();
                let changed = service(last, &backends);
                upserts.retain(|u: &DesiredService| u.frontend != changed.frontend);
                removals.retain(|f| *f != changed.frontend);
                desired.insert(changed.frontend, changed.clone());
                upserts.push(changed);
            }
        }
        let before = reconciler.maps().clone();
        reconciler.maps_mut().ops.clear();
        reconciler
            .apply_delta(&upserts, &removals)
            .expect("memory maps do not fail");
        let after = reconciler.maps().clone();
        let mut replay = before;
        for (n, op) in after.ops.iter().enumerate() {
            replay_op(&mut replay, op);
            assert_consistent(&replay, &format!("round {round}, write {n} ({op:?})"));
        }
        let all: Vec<DesiredService> = desired.values().cloned().collect();
        assert_eq!(served(&after), wanted(&all), "round {round}");
        // Only the frontends in the delta were written.
        let touched: std::collections::BTreeSet<ServiceKey> = upserts
            .iter()
            .map(|u| service_key(u.frontend))
            .chain(removals.iter().map(|f| service_key(*f)))
            .collect();
        for op in &after.ops {
            if let MapOp::PutService(key, _) | MapOp::DeleteService(key) = op {
                assert!(
                    touched.contains(key),
                    "round {round}: {op:?} not in the delta"
                );
            }
        }
    }
}

/// Maps that a writer changes once, between a reader's read of the backends and of the
/// slots: a new backend put in the slot of a service.
struct WrittenDuringRead {
    maps: std::cell::RefCell<MemoryMaps>,
    pending: std::cell::Cell<Option<(u32, Backend, SlotKey)>>,
}

impl ServiceMaps for WrittenDuringRead {
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, Error> {
        self.maps.borrow().services()
    }
    fn slots(&self) -> Result<Vec<(SlotKey, u32)>, Error> {
        if let Some((id, backend, slot)) = self.pending.take() {
            let mut maps = self.maps.borrow_mut();
            maps.put_backend(id, &backend)?;
            maps.put_slot(&slot, id)?;
        }
        self.maps.borrow().slots()
    }
    fn backends(&self) -> Result<Vec<(u32, Backend)>, Error> {
        self.maps.borrow().backends()
    }
    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<(), Error> {
        self.maps.get_mut().put_backend(id, backend)
    }
    fn put_slot(&mut self, key: &SlotKey, backend: u32) -> Result<(), Error> {
        self.maps.get_mut().put_slot(key, backend)
    }
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), Error> {
        self.maps.get_mut().put_service(key, value)
    }
    fn delete_service(&mut self, key: &ServiceKey) -> Result<(), Error> {
        self.maps.get_mut().delete_service(key)
    }
    fn delete_slot(&mut self, key: &SlotKey) -> Result<(), Error> {
        self.maps.get_mut().delete_slot(key)
    }
    fn delete_backend(&mut self, id: u32) -> Result<(), Error> {
        self.maps.get_mut().delete_backend(id)
    }
    fn delete_affinity(&mut self, service: u32, backend: Option<u32>) -> Result<(), Error> {
        self.maps.get_mut().delete_affinity(service, backend)
    }
    fn maglev_fingerprints(&self) -> Result<Vec<(u32, u64)>, Error> {
        self.maps.borrow().maglev_fingerprints()
    }
    fn put_maglev(&mut self, service: u32, table: &MaglevTable) -> Result<(), Error> {
        self.maps.get_mut().put_maglev(service, table)
    }
    fn delete_maglev(&mut self, service: u32) -> Result<(), Error> {
        self.maps.get_mut().delete_maglev(service)
    }
}

/// `service(last, backends)` reachable from outside, over `external` (local or not).
fn external_service(last: u8, backends: &[u8], external: &[(u8, bool)]) -> DesiredService {
    let mut targets: Vec<ExternalTarget> = external
        .iter()
        .map(|(b, local)| ExternalTarget {
            backend: backend(*b),
            local: *local,
        })
        .collect();
    targets.sort();
    DesiredService {
        external: Some(targets.into_boxed_slice()),
        ..service(last, backends)
    }
}

#[test]
fn an_external_frontends_table_is_written_before_its_flag_and_removed_after() {
    let desired = [external_service(1, &[1, 2], &[(1, true), (2, false)])];
    let maps = apply_checked(&MemoryMaps::default(), &desired);
    let table = maps
        .ops
        .iter()
        .position(|op| matches!(op, MapOp::PutMaglev(..)))
        .expect("a Maglev table written");
    let flagged = maps
        .ops
        .iter()
        .position(|op| {
            matches!(op, MapOp::PutService(_, v) if v.flags & bosun_ebpf_abi::SERVICE_FLAG_EXTERNAL != 0)
        })
        .expect("the frontend flagged external");
    assert!(table < flagged, "{:?}", maps.ops);
    let value = maps.services.values().next().expect("the frontend");
    let written = &maps.maglev[&value.id];
    let local = written
        .entries
        .iter()
        .filter(|e| e.flags & bosun_ebpf_abi::EXTERNAL_BACKEND_LOCAL != 0)
        .count();
    // Maglev shares the entries evenly; only backend 1 is local.
    assert!((510..=511).contains(&local), "{local} local entries");

    // Adopted after a restart: the same desired state writes nothing.
    let mut again = Reconciler::new(maps.clone());
    let applied = again.apply(&desired).expect("memory maps do not fail");
    assert!(applied.is_empty(), "{applied:?}");
    assert_eq!(again.maps().ops.len(), maps.ops.len());

    // The frontend no longer external: flag cleared first, then its table goes.
    let mut reconciler = Reconciler::new(maps);
    reconciler
        .apply(&[service(1, &[1, 2])])
        .expect("memory maps do not fail");
    let ops = &reconciler.maps().ops;
    let cleared = ops
        .iter()
        .rposition(|op| matches!(op, MapOp::PutService(..)))
        .expect("the frontend rewritten");
    let deleted = ops
        .iter()
        .rposition(|op| matches!(op, MapOp::DeleteMaglev(_)))
        .expect("the table deleted");
    assert!(cleared < deleted, "{ops:?}");
    assert!(reconciler.maps().maglev.is_empty());
}

#[test]
fn a_removed_external_frontend_takes_its_table_with_it() {
    let maps = apply_checked(
        &MemoryMaps::default(),
        &[external_service(1, &[1], &[(1, true)])],
    );
    let maps = apply_checked(&maps, &[]);
    assert!(maps.maglev.is_empty());
    assert!(maps.services.is_empty());
}

#[test]
fn a_snapshot_read_during_a_write_is_read_again() {
    let maps = apply_checked(&MemoryMaps::default(), &[service(1, &[1])]);
    let slot = *maps.slots.keys().next().expect("a slot");
    let torn = WrittenDuringRead {
        maps: std::cell::RefCell::new(maps),
        pending: std::cell::Cell::new(Some((99, backend_entry(backend(7)), slot))),
    };
    let read = snapshot(&torn).expect("memory maps read");
    let backends: Vec<Option<BackendAddr>> = read.services[0]
        .backends
        .iter()
        .map(|b| b.map(|b| b.address))
        .collect();
    assert_eq!(
        backends,
        [Some(backend(7))],
        "the slot's new backend, not a missing one"
    );
}
