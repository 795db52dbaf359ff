//! The seam between the reconciler and the kernel: every read and write of the service maps
//! goes through [`ServiceMaps`]. [`super::PinnedMaps`] is the real one; [`MemoryMaps`] holds
//! the same entries in memory, records every write in order and can be told to fail, so the
//! reconciler's ordering and its recovery are tested without root.

use std::collections::BTreeMap;

use bosun_ebpf_abi::{
    AffinityKey, Backend, MaglevTable, ServiceKey, ServiceValue, SlotKey, BACKEND_MAP, MAGLEV_MAP,
    SERVICE_MAP, SLOT_MAP,
};

use crate::Error;

/// The three load-balancing maps and the affinity map, as the reconciler sees them.
///
/// Writes to one entry are atomic in the kernel; nothing spans two entries, so callers order
/// their writes. Every method may fail with the kernel's error, which is worth retrying only
/// when it says the map is full and something has since been removed.
pub trait ServiceMaps {
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, Error>;
    fn slots(&self) -> Result<Vec<(SlotKey, u32)>, Error>;
    fn backends(&self) -> Result<Vec<(u32, Backend)>, Error>;

    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<(), Error>;
    fn put_slot(&mut self, key: &SlotKey, backend: u32) -> Result<(), Error>;
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), Error>;

    /// Removing an entry that is not there is not an error.
    fn delete_service(&mut self, key: &ServiceKey) -> Result<(), Error>;
    fn delete_slot(&mut self, key: &SlotKey) -> Result<(), Error>;
    fn delete_backend(&mut self, id: u32) -> Result<(), Error>;

    /// Forgets which backend clients of `service` were stuck to: all of them, or only those
    /// stuck to `backend`.
    fn delete_affinity(&mut self, service: u32, backend: Option<u32>) -> Result<(), Error>;

    /// The service id and [`super::maglev::fingerprint_table`] of every Maglev table.
    fn maglev_fingerprints(&self) -> Result<Vec<(u32, u64)>, Error>;
    fn put_maglev(&mut self, service: u32, table: &MaglevTable) -> Result<(), Error>;
    fn delete_maglev(&mut self, service: u32) -> Result<(), Error>;
}

/// One write, as [`MemoryMaps`] records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    PutBackend(u32, Backend),
    PutSlot(SlotKey, u32),
    PutService(ServiceKey, ServiceValue),
    DeleteService(ServiceKey),
    DeleteSlot(SlotKey),
    DeleteBackend(u32),
    DeleteAffinity(u32, Option<u32>),
    PutMaglev(u32, Box<MaglevTable>),
    DeleteMaglev(u32),
}

/// The maps in memory. `fail_after(n)` makes the write after the next `n` fail, once.
#[derive(Clone, Debug, Default)]
pub struct MemoryMaps {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub slots: BTreeMap<SlotKey, u32>,
    pub backends: BTreeMap<u32, Backend>,
    pub affinity: BTreeMap<(u32, u64), u32>,
    pub maglev: BTreeMap<u32, Box<MaglevTable>>,
    /// Every successful write, oldest first.
    pub ops: Vec<MapOp>,
    fail: InjectedFailure,
}

/// A write failure the in-memory maps are told to inject: the write after the next `n`
/// successful ones fails, once.
#[derive(Clone, Debug, Default)]
pub(crate) struct InjectedFailure {
    fail_in: Option<usize>,
}

impl InjectedFailure {
    pub(crate) fn after(&mut self, writes: usize) {
        self.fail_in = Some(writes);
    }

    /// Called before each write to `map`: the full-map error if this write is the one.
    pub(crate) fn check(&mut self, map: &'static str) -> Result<(), Error> {
        match self.fail_in {
            Some(0) => {
                self.fail_in = None;
                Err(Error::WriteMap {
                    map,
                    source: Box::new(aya::maps::MapError::KeyNotFound),
                })
            }
            Some(n) => {
                self.fail_in = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl MemoryMaps {
    /// The write after the next `writes` successful ones fails with a full-map error.
    pub fn fail_after(&mut self, writes: usize) {
        self.fail.after(writes);
    }

    /// Puts a client's affinity entry, as the kernel program would.
    pub fn stick(&mut self, key: AffinityKey, backend: u32) {
        self.affinity
            .insert((key.service, key.netns_cookie), backend);
    }

    fn write(&mut self, map: &'static str, op: MapOp) -> Result<(), Error> {
        self.fail.check(map)?;
        match &op {
            MapOp::PutBackend(id, backend) => {
                self.backends.insert(*id, *backend);
            }
            MapOp::PutSlot(key, backend) => {
                self.slots.insert(*key, *backend);
            }
            MapOp::PutService(key, value) => {
                self.services.insert(*key, *value);
            }
            MapOp::DeleteService(key) => {
                self.services.remove(key);
            }
            MapOp::DeleteSlot(key) => {
                self.slots.remove(key);
            }
            MapOp::DeleteBackend(id) => {
                self.backends.remove(id);
            }
            MapOp::DeleteAffinity(service, backend) => self
                .affinity
                .retain(|(s, _), b| *s != *service || backend.is_some_and(|only| only != *b)),
            MapOp::PutMaglev(service, table) => {
                self.maglev.insert(*service, table.clone());
            }
            MapOp::DeleteMaglev(service) => {
                self.maglev.remove(service);
            }
        }
        self.ops.push(op);
        Ok(())
    }
}

impl ServiceMaps for MemoryMaps {
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, Error> {
        Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn slots(&self) -> Result<Vec<(SlotKey, u32)>, Error> {
        Ok(self.slots.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn backends(&self) -> Result<Vec<(u32, Backend)>, Error> {
        Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<(), Error> {
        self.write(BACKEND_MAP, MapOp::PutBackend(id, *backend))
    }

    fn put_slot(&mut self, key: &SlotKey, backend: u32) -> Result<(), Error> {
        self.write(SLOT_MAP, MapOp::PutSlot(*key, backend))
    }

    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), Error> {
        self.write(SERVICE_MAP, MapOp::PutService(*key, *value))
    }

    fn delete_service(&mut self, key: &ServiceKey) -> Result<(), Error> {
        self.write(SERVICE_MAP, MapOp::DeleteService(*key))
    }

    fn delete_slot(&mut self, key: &SlotKey) -> Result<(), Error> {
        self.write(SLOT_MAP, MapOp::DeleteSlot(*key))
    }

    fn delete_backend(&mut self, id: u32) -> Result<(), Error> {
        self.write(BACKEND_MAP, MapOp::DeleteBackend(id))
    }

    fn delete_affinity(&mut self, service: u32, backend: Option<u32>) -> Result<(), Error> {
        self.write(
            bosun_ebpf_abi::AFFINITY_MAP,
            MapOp::DeleteAffinity(service, backend),
        )
    }

    fn maglev_fingerprints(&self) -> Result<Vec<(u32, u64)>, Error> {
        Ok(self
            .maglev
            .iter()
            .map(|(id, table)| (*id, super::maglev::fingerprint_table(table)))
            .collect())
    }

    fn put_maglev(&mut self, service: u32, table: &MaglevTable) -> Result<(), Error> {
        self.write(MAGLEV_MAP, MapOp::PutMaglev(service, Box::new(*table)))
    }

    fn delete_maglev(&mut self, service: u32) -> Result<(), Error> {
        self.write(MAGLEV_MAP, MapOp::DeleteMaglev(service))
    }
}
