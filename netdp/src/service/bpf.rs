//! STUB, to be replaced: the real maps and the loader.

use std::path::{Path, PathBuf};

use bosun_ebpf_abi::{Backend, ServiceKey, ServiceValue, SlotKey};

use super::ServiceMaps;
use crate::Error;

/// The node's cgroup2 mount point, from /proc/mounts.
pub fn find_cgroup2() -> Result<PathBuf, Error> {
    unimplemented!()
}

/// Loads the programs, creates or reuses the maps pinned in `bpf_dir`, attaches the programs to
/// `cgroup` (replacing earlier attachments pinned there without a gap) and pins the links.
pub fn install(bpf_dir: &Path, cgroup: &Path) -> Result<PinnedMaps, Error> {
    let _ = (bpf_dir, cgroup);
    unimplemented!()
}

/// Detaches and removes everything [`install`] put in `bpf_dir`. Returns whether there was
/// anything.
pub fn cleanup(bpf_dir: &Path) -> Result<bool, Error> {
    let _ = bpf_dir;
    unimplemented!()
}

/// The service maps pinned in a bpffs directory.
pub struct PinnedMaps {}

impl PinnedMaps {
    /// Opens the maps an earlier [`install`] pinned in `bpf_dir`, whether or not a daemon runs.
    pub fn open(bpf_dir: &Path) -> Result<Self, Error> {
        let _ = bpf_dir;
        unimplemented!()
    }
}

impl ServiceMaps for PinnedMaps {
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, Error> {
        unimplemented!()
    }
    fn slots(&self) -> Result<Vec<(SlotKey, u32)>, Error> {
        unimplemented!()
    }
    fn backends(&self) -> Result<Vec<(u32, Backend)>, Error> {
        unimplemented!()
    }
    fn put_backend(&mut self, _id: u32, _backend: &Backend) -> Result<(), Error> {
        unimplemented!()
    }
    fn put_slot(&mut self, _key: &SlotKey, _backend: u32) -> Result<(), Error> {
        unimplemented!()
    }
    fn put_service(&mut self, _key: &ServiceKey, _value: &ServiceValue) -> Result<(), Error> {
        unimplemented!()
    }
    fn delete_service(&mut self, _key: &ServiceKey) -> Result<(), Error> {
        unimplemented!()
    }
    fn delete_slot(&mut self, _key: &SlotKey) -> Result<(), Error> {
        unimplemented!()
    }
    fn delete_backend(&mut self, _id: u32) -> Result<(), Error> {
        unimplemented!()
    }
    fn delete_affinity(&mut self, _service: u32, _backend: Option<u32>) -> Result<(), Error> {
        unimplemented!()
    }
}
