//! The real policy datapath: loads the two tcx programs, pins the policy maps and the
//! programs' links in bpffs, attaches to pods' host-side interfaces. (Stub: being written.)

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use bosun_ebpf_abi::{PolicyCounters, PolicyEvent};

use super::Direction;
use crate::Error;

/// The policy programs, loaded, with their maps pinned under `<bpf_dir>/policy`.
pub struct PolicyDatapath {
    _dir: PathBuf,
}

/// Loads the programs (through the verifier) and pins or reuses the maps under
/// `<bpf_dir>/policy`; mounts bpffs first if needed. Attaches nothing.
pub fn install(_bpf_dir: &Path) -> Result<PolicyDatapath, Error> {
    todo!()
}

impl PolicyDatapath {
    /// The pinned maps, for a [`super::PolicyReconciler`].
    pub fn maps(&self) -> Result<PinnedPolicyMaps, Error> {
        todo!()
    }

    /// Attaches both programs to `ifindex` (tcx; clsact on kernels without tcx) and pins the
    /// links, replacing earlier ones without a gap.
    pub fn attach(&mut self, _ifindex: u32) -> Result<(), Error> {
        todo!()
    }

    /// The ifindexes with pinned links.
    pub fn attached(&self) -> Result<Vec<u32>, Error> {
        todo!()
    }

    /// Detaches both programs from `ifindex`; not an error if they are not attached.
    pub fn detach(&mut self, _ifindex: u32) -> Result<(), Error> {
        todo!()
    }
}

/// Same as [`PolicyDatapath::attach`], for callers holding only the directory.
pub fn attach(_bpf_dir: &Path, _ifindex: u32) -> Result<(), Error> {
    todo!()
}

/// Removes the links of `ifindex` under `bpf_dir`.
pub fn detach(_bpf_dir: &Path, _ifindex: u32) -> Result<(), Error> {
    todo!()
}

/// The policy maps pinned under `<bpf_dir>/policy`.
pub struct PinnedPolicyMaps {}

/// Per endpoint and direction, the counters summed over CPUs.
pub fn read_counters(_bpf_dir: &Path) -> Result<BTreeMap<(u32, Direction), PolicyCounters>, Error> {
    todo!()
}

/// Policy ids and their names.
pub fn read_names(_bpf_dir: &Path) -> Result<BTreeMap<u32, String>, Error> {
    todo!()
}

/// Reads [`PolicyEvent`]s from the pinned ring buffer.
pub struct EventReader {}

impl EventReader {
    pub fn open(_bpf_dir: &Path) -> Result<Self, Error> {
        todo!()
    }

    /// Waits for the next event.
    pub async fn next(&mut self) -> Result<PolicyEvent, Error> {
        todo!()
    }
}
