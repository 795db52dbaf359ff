//! The real datapath: loads the service programs, keeps their maps and links pinned in one
//! bpffs directory and attaches them to a cgroup2 directory, and reads and writes the pinned
//! maps.
//!
//! Everything that must outlive the daemon lives in bpffs: the maps, so that a restart keeps
//! every entry, and the links, so that the programs stay attached while no daemon runs. The
//! daemon itself holds only map handles.
//!
//! The directory holds, and [`cleanup`] removes, exactly these pins: one per map, named after
//! the map (`BOSUN_SVC_V1`, ...), and one per program's link, `link_connect4` and so on.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io,
    path::{Component, Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use aya::{
    maps::{HashMap, Map, MapData, MapError, MapType},
    programs::{
        links::{FdLink, PinnedLink},
        loaded_programs, CgroupAttachMode, CgroupSockAddr,
    },
    sys::SyscallError,
    Ebpf, EbpfLoader, Pod,
};
use bosun_ebpf_abi::{
    AffinityKey, AffinityValue, Backend, MaglevTable, RevNatKey, RevNatValue, ServiceKey,
    ServiceValue, SlotKey, AFFINITY_MAP, AFFINITY_MAX_ENTRIES, BACKEND_MAP, BACKEND_MAX_ENTRIES,
    CONNECT4_PROGRAM, GETPEERNAME4_PROGRAM, MAGLEV_MAP, MAGLEV_MAX_ENTRIES, RECVMSG4_PROGRAM,
    REVNAT_MAP, REVNAT_MAX_ENTRIES, SENDMSG4_PROGRAM, SERVICE_MAP, SERVICE_MAX_ENTRIES, SLOT_MAP,
    SLOT_MAX_ENTRIES,
};

use super::ServiceMaps;
use crate::{
    object::{shrink_unused_maps, NODEPORT_MAPS, OBJECT, POLICY_MAPS},
    Error,
};

const MOUNTS: &str = "/proc/mounts";

/// Where node agents keep bpffs. [`install`] mounts one there when nothing is mounted yet
/// (a host without systemd mounts none), as cilium's agent does.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// A program and the name of its link's pin.
struct Hook {
    program: &'static str,
    pin: &'static str,
}

const HOOKS: [Hook; 4] = [
    Hook {
        program: CONNECT4_PROGRAM,
        pin: "link_connect4",
    },
    Hook {
        program: SENDMSG4_PROGRAM,
        pin: "link_sendmsg4",
    },
    Hook {
        program: RECVMSG4_PROGRAM,
        pin: "link_recvmsg4",
    },
    Hook {
        program: GETPEERNAME4_PROGRAM,
        pin: "link_getpeername4",
    },
];

/// Suffix of a link pinned but not yet renamed over the live one; found only after a crash.
/// Not `.new`: bpffs refuses every name with a dot (`EPERM`), keeping them for itself.
pub(crate) const NEW_LINK_SUFFIX: &str = "_new";

/// What a pinned map must look like to be this build's.
#[derive(Clone, Copy)]
pub(crate) struct MapShape {
    pub(crate) name: &'static str,
    pub(crate) map_type: MapType,
    pub(crate) key_size: usize,
    pub(crate) value_size: usize,
    pub(crate) max_entries: u32,
}

pub(crate) const MAP_SHAPES: [MapShape; 6] = [
    MapShape {
        name: SERVICE_MAP,
        map_type: MapType::Hash,
        key_size: size_of::<ServiceKey>(),
        value_size: size_of::<ServiceValue>(),
        max_entries: SERVICE_MAX_ENTRIES,
    },
    MapShape {
        name: SLOT_MAP,
        map_type: MapType::Hash,
        key_size: size_of::<SlotKey>(),
        value_size: size_of::<u32>(),
        max_entries: SLOT_MAX_ENTRIES,
    },
    MapShape {
        name: BACKEND_MAP,
        map_type: MapType::Hash,
        key_size: size_of::<u32>(),
        value_size: size_of::<Backend>(),
        max_entries: BACKEND_MAX_ENTRIES,
    },
    MapShape {
        name: AFFINITY_MAP,
        map_type: MapType::LruHash,
        key_size: size_of::<AffinityKey>(),
        value_size: size_of::<AffinityValue>(),
        max_entries: AFFINITY_MAX_ENTRIES,
    },
    MapShape {
        name: REVNAT_MAP,
        map_type: MapType::LruHash,
        key_size: size_of::<RevNatKey>(),
        value_size: size_of::<RevNatValue>(),
        max_entries: REVNAT_MAX_ENTRIES,
    },
    MapShape {
        name: MAGLEV_MAP,
        map_type: MapType::Hash,
        key_size: size_of::<u32>(),
        value_size: size_of::<MaglevTable>(),
        max_entries: MAGLEV_MAX_ENTRIES,
    },
];

/// How long [`cleanup`] waits for the kernel to release the programs after unpinning their
/// links. The release runs after an RCU grace period, normally within milliseconds.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);
const RELEASE_POLL: Duration = Duration::from_millis(2);

/// The node's cgroup2 mount point: the first `cgroup2` file system in /proc/mounts. On a
/// hybrid-cgroup node this is not /sys/fs/cgroup (often /sys/fs/cgroup/unified).
pub fn find_cgroup2() -> Result<PathBuf, Error> {
    read_mounts()?
        .into_iter()
        .find(|mount| mount.fs_type == "cgroup2")
        .map(|mount| mount.mount_point)
        .ok_or(Error::NoCgroup2)
}

/// Loads the service programs and attaches them to the cgroup2 directory `cgroup` (the root,
/// for every socket of the node), keeping maps and links pinned in `bpf_dir`.
///
/// `bpf_dir` and its missing parents are created; it must be on bpffs. Maps already pinned
/// there are reused with their entries, so calling this again (a daemon's restart or upgrade)
/// loses nothing. Links already pinned there are replaced without a gap: the new program is
/// attached before the old link's pin is renamed over, so for a moment both run, which is
/// harmless (after the first has sent a call to a backend, the second finds no frontend).
///
/// Nothing of the load stays in this process: the pins keep programs and maps alive, and the
/// returned handles are only the maps. One installer at a time per directory.
pub fn install(bpf_dir: &Path, cgroup: &Path) -> Result<PinnedMaps, Error> {
    prepare_dir(bpf_dir)?;
    for hook in &HOOKS {
        remove_pin(&new_link_pin(bpf_dir, hook))?;
    }
    refuse_mismatched(bpf_dir, &MAP_SHAPES)?;
    let mut ebpf = load_pinned(
        bpf_dir,
        &MAP_SHAPES,
        &[&POLICY_MAPS[..], &NODEPORT_MAPS].concat(),
    )?;
    // Every program through the verifier before anything is attached: a rejected program
    // leaves the running ones in place.
    for hook in &HOOKS {
        program(&mut ebpf, hook.program)?
            .load()
            .map_err(|source| Error::LoadProgram {
                program: hook.program,
                source: Box::new(source),
            })?;
    }
    let cgroup_dir = File::open(cgroup).map_err(|source| Error::OpenCgroup {
        path: cgroup.to_owned(),
        source,
    })?;
    for hook in &HOOKS {
        attach_and_pin(&mut ebpf, hook, &cgroup_dir, cgroup, bpf_dir)?;
    }
    // Dropping `ebpf` closes this process's handles on programs and maps; the pinned links
    // hold the programs, and the programs and pins hold the maps.
    drop(ebpf);
    PinnedMaps::open(bpf_dir)
}

/// Refuses a map pinned in `dir` with another shape than `shapes` says, before anything is
/// loaded against it: aya would reuse it without looking.
pub(crate) fn refuse_mismatched(dir: &Path, shapes: &[MapShape]) -> Result<(), Error> {
    for shape in shapes {
        let path = dir.join(shape.name);
        if path.exists() {
            open_shaped(&path, shape)?;
        }
    }
    Ok(())
}

/// Loads the embedded object with the maps of `shapes` pinned in `dir` (reusing those already
/// pinned there, with their entries; check them first with [`refuse_mismatched`]) and the
/// maps named in `unused` at their smallest, since this loader never uses them.
pub(crate) fn load_pinned(
    dir: &Path,
    shapes: &[MapShape],
    unused: &[&'static str],
) -> Result<Ebpf, Error> {
    // aya opens a map pinned at its path and creates and pins it otherwise.
    let mut loader = EbpfLoader::new();
    for shape in shapes {
        loader.map_pin_path(shape.name, dir.join(shape.name));
    }
    shrink_unused_maps(&mut loader, unused);
    loader.load(OBJECT).map_err(|source| Error::LoadObject {
        source: Box::new(source),
    })
}

/// Detaches the programs and removes everything [`install`] put in `bpf_dir`, and the
/// directory. Returns `Ok(false)` if there was no such directory.
///
/// Works whether or not a daemon runs: unpinning a link detaches its program because no
/// process holds links open (see [`install`]); a running daemon's map handles keep its maps
/// alive until it closes them, but they no longer steer any traffic. Returns once the kernel
/// has released the programs, so the next `connect` is no longer rewritten.
pub fn cleanup(bpf_dir: &Path) -> Result<bool, Error> {
    match fs::symlink_metadata(bpf_dir) {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(Error::Bpffs {
                call: "stat",
                path: bpf_dir.to_owned(),
                source,
            })
        }
    }
    let mut program_ids = Vec::new();
    for hook in &HOOKS {
        for path in [link_pin(bpf_dir, hook), new_link_pin(bpf_dir, hook)] {
            if let Some(id) = unpin_link(&path)? {
                program_ids.push(id);
            }
        }
    }
    for shape in &MAP_SHAPES {
        remove_pin(&bpf_dir.join(shape.name))?;
    }
    match fs::remove_dir(bpf_dir) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(Error::Bpffs {
                call: "rmdir",
                path: bpf_dir.to_owned(),
                source,
            })
        }
    }
    wait_released(program_ids)?;
    Ok(true)
}

/// The service maps pinned in a bpffs directory, read and written in place. Any number of
/// processes may hold them; the kernel makes each entry's update atomic.
#[derive(Debug)]
pub struct PinnedMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    slots: HashMap<MapData, SlotKey, u32>,
    backends: HashMap<MapData, u32, Backend>,
    affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    maglev: HashMap<MapData, u32, MaglevTable>,
}

impl PinnedMaps {
    /// Opens the maps an earlier [`install`] pinned in `bpf_dir`, whether or not a daemon
    /// runs, checking that each has this build's layout.
    pub fn open(bpf_dir: &Path) -> Result<Self, Error> {
        let [services, slots, backends, affinity, _revnat, maglev] = &MAP_SHAPES;
        Ok(Self {
            services: open_map(&bpf_dir.join(services.name), services)?,
            slots: open_map(&bpf_dir.join(slots.name), slots)?,
            backends: open_map(&bpf_dir.join(backends.name), backends)?,
            affinity: open_map(&bpf_dir.join(affinity.name), affinity)?,
            maglev: open_map(&bpf_dir.join(maglev.name), maglev)?,
        })
    }
}

impl ServiceMaps for PinnedMaps {
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>, Error> {
        entries(&self.services, SERVICE_MAP)
    }

    fn slots(&self) -> Result<Vec<(SlotKey, u32)>, Error> {
        entries(&self.slots, SLOT_MAP)
    }

    fn backends(&self) -> Result<Vec<(u32, Backend)>, Error> {
        entries(&self.backends, BACKEND_MAP)
    }

    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<(), Error> {
        put(&mut self.backends, BACKEND_MAP, &id, backend)
    }

    fn put_slot(&mut self, key: &SlotKey, backend: u32) -> Result<(), Error> {
        put(&mut self.slots, SLOT_MAP, key, &backend)
    }

    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), Error> {
        put(&mut self.services, SERVICE_MAP, key, value)
    }

    fn delete_service(&mut self, key: &ServiceKey) -> Result<(), Error> {
        delete(&mut self.services, SERVICE_MAP, key)
    }

    fn delete_slot(&mut self, key: &SlotKey) -> Result<(), Error> {
        delete(&mut self.slots, SLOT_MAP, key)
    }

    fn delete_backend(&mut self, id: u32) -> Result<(), Error> {
        delete(&mut self.backends, BACKEND_MAP, &id)
    }

    fn delete_affinity(&mut self, service: u32, backend: Option<u32>) -> Result<(), Error> {
        // Keys first, deletes after: deleting the key an iteration stands on makes the kernel
        // start it over from the first key.
        let mut stale = Vec::new();
        for key in self.affinity.keys() {
            let key = key.map_err(|source| read_error(AFFINITY_MAP, source))?;
            if key.service != service {
                continue;
            }
            let Some(only) = backend else {
                stale.push(key);
                continue;
            };
            match self.affinity.get(&key, 0) {
                Ok(value) if value.backend == only => stale.push(key),
                Ok(_) => {}
                // Evicted or expired meanwhile.
                Err(error) if is_not_found(&error) => {}
                Err(source) => return Err(read_error(AFFINITY_MAP, source)),
            }
        }
        for key in &stale {
            delete(&mut self.affinity, AFFINITY_MAP, key)?;
        }
        Ok(())
    }

    fn maglev_fingerprints(&self) -> Result<Vec<(u32, u64)>, Error> {
        // One table at a time: they are 8 KiB each.
        let mut fingerprints = Vec::new();
        for entry in self.maglev.iter() {
            let (id, table) = entry.map_err(|source| read_error(MAGLEV_MAP, source))?;
            fingerprints.push((id, super::maglev::fingerprint_table(&table)));
        }
        fingerprints.sort_unstable();
        fingerprints.dedup_by_key(|(id, _)| *id);
        Ok(fingerprints)
    }

    fn put_maglev(&mut self, service: u32, table: &MaglevTable) -> Result<(), Error> {
        put(&mut self.maglev, MAGLEV_MAP, &service, table)
    }

    fn delete_maglev(&mut self, service: u32) -> Result<(), Error> {
        delete(&mut self.maglev, MAGLEV_MAP, &service)
    }
}

/// Every entry, sorted and without the duplicates a concurrent writer can make the kernel's
/// iteration return.
pub(crate) fn entries<K: Pod + Ord, V: Pod>(
    map: &HashMap<MapData, K, V>,
    name: &'static str,
) -> Result<Vec<(K, V)>, Error> {
    let mut sorted = BTreeMap::new();
    for entry in map.iter() {
        let (key, value) = entry.map_err(|source| read_error(name, source))?;
        sorted.insert(key, value);
    }
    Ok(sorted.into_iter().collect())
}

pub(crate) fn put<K: Pod, V: Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    key: &K,
    value: &V,
) -> Result<(), Error> {
    map.insert(key, value, 0).map_err(|source| Error::WriteMap {
        map: name,
        source: Box::new(source),
    })
}

/// Removing what is not there succeeds.
pub(crate) fn delete<K: Pod, V: Pod>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    key: &K,
) -> Result<(), Error> {
    match map.remove(key) {
        Err(error) if !is_not_found(&error) => Err(Error::WriteMap {
            map: name,
            source: Box::new(error),
        }),
        _ => Ok(()),
    }
}

pub(crate) fn read_error(map: &'static str, source: MapError) -> Error {
    Error::ReadMap {
        map,
        source: Box::new(source),
    }
}

pub(crate) fn is_not_found(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound | MapError::ElementNotFound => true,
        MapError::SyscallError(SyscallError { io_error, .. }) => {
            io_error.kind() == io::ErrorKind::NotFound
        }
        _ => false,
    }
}

/// Opens the map pinned at `path` as a typed map (`HashMap`, `LpmTrie`, ...), refusing one
/// whose shape is not `shape`.
pub(crate) fn open_map<M: TryFrom<Map, Error = MapError>>(
    path: &Path,
    shape: &MapShape,
) -> Result<M, Error> {
    let data = open_shaped(path, shape)?;
    let map = Map::from_map_data(data).map_err(|source| open_error(path, shape, source))?;
    M::try_from(map).map_err(|source| Error::MapAbi {
        map: shape.name,
        source: Box::new(source),
    })
}

/// Opens the map pinned at `path`, refusing one whose shape is not `shape`.
pub(crate) fn open_shaped(path: &Path, shape: &MapShape) -> Result<MapData, Error> {
    let data = MapData::from_pin(path).map_err(|source| open_error(path, shape, source))?;
    let info = data
        .info()
        .map_err(|source| open_error(path, shape, source))?;
    let found_type = info
        .map_type()
        .map_err(|source| open_error(path, shape, source))?;
    let mismatch = |field, expected: String, found: String| Error::PinnedMapMismatch {
        map: shape.name,
        path: path.to_owned(),
        field,
        expected,
        found,
    };
    if found_type != shape.map_type {
        return Err(mismatch(
            "type",
            format!("{:?}", shape.map_type),
            format!("{found_type:?}"),
        ));
    }
    for (field, expected, found) in [
        ("key size", shape.key_size, info.key_size() as usize),
        ("value size", shape.value_size, info.value_size() as usize),
        (
            "max entries",
            shape.max_entries as usize,
            info.max_entries() as usize,
        ),
    ] {
        if expected != found {
            return Err(mismatch(field, expected.to_string(), found.to_string()));
        }
    }
    Ok(data)
}

fn open_error(path: &Path, shape: &MapShape, source: MapError) -> Error {
    Error::OpenPinnedMap {
        map: shape.name,
        path: path.to_owned(),
        source: Box::new(source),
    }
}

fn program<'a>(
    ebpf: &'a mut aya::Ebpf,
    name: &'static str,
) -> Result<&'a mut CgroupSockAddr, Error> {
    ebpf.program_mut(name)
        .ok_or(Error::ProgramMissing { program: name })?
        .try_into()
        .map_err(|source| Error::LoadProgram {
            program: name,
            source: Box::new(source),
        })
}

/// Attaches `hook`'s loaded program to the cgroup and pins the new link over the old one.
fn attach_and_pin(
    ebpf: &mut aya::Ebpf,
    hook: &Hook,
    cgroup_dir: &File,
    cgroup: &Path,
    bpf_dir: &Path,
) -> Result<(), Error> {
    let attach_error = |source| Error::AttachCgroup {
        program: hook.program,
        cgroup: cgroup.to_owned(),
        source: Box::new(source),
    };
    let program = program(ebpf, hook.program)?;
    // `Single` asks for no flag, and a cgroup link takes none: the kernel (6.18 at least)
    // refuses `BPF_F_ALLOW_MULTI` on `BPF_LINK_CREATE` with EINVAL, because a link is always
    // attached as one of many. Programs of other owners on the same cgroup keep running.
    let link_id = program
        .attach(cgroup_dir, CgroupAttachMode::Single)
        .map_err(attach_error)?;
    let link = program.take_link(link_id).map_err(attach_error)?;
    // From here on, an early return drops the link, which detaches the new program and leaves
    // the old link in place.
    let link = FdLink::try_from(link).map_err(|source| Error::LinkNotPinnable {
        program: hook.program,
        source: Box::new(source),
    })?;
    pin_over(
        link,
        hook.program,
        new_link_pin(bpf_dir, hook),
        &link_pin(bpf_dir, hook),
    )
}

/// Pins `link` (of `program`) at `new`, then renames that pin over `live`. The new link runs
/// before the old one stops: rename(2) replaces the old pin atomically, and the old link,
/// pinned nowhere else, is released and its program detached. On failure the new link is
/// dropped, which detaches it, and the old one stays.
pub(crate) fn pin_over(
    link: FdLink,
    program: &'static str,
    new: PathBuf,
    live: &Path,
) -> Result<(), Error> {
    let pinned = link.pin(&new).map_err(|source| Error::PinLink {
        program,
        path: new.clone(),
        source: Box::new(source),
    })?;
    if let Err(source) = fs::rename(&new, live) {
        // Unpinning detaches the new program again once `pinned` is dropped below.
        let _ = fs::remove_file(&new);
        return Err(Error::Bpffs {
            call: "rename",
            path: new,
            source,
        });
    }
    drop(pinned);
    Ok(())
}

fn link_pin(bpf_dir: &Path, hook: &Hook) -> PathBuf {
    bpf_dir.join(hook.pin)
}

fn new_link_pin(bpf_dir: &Path, hook: &Hook) -> PathBuf {
    bpf_dir.join(format!("{}{NEW_LINK_SUFFIX}", hook.pin))
}

/// Removes the link pinned at `path`, if any, and returns its program's id.
pub(crate) fn unpin_link(path: &Path) -> Result<Option<u32>, Error> {
    let pinned =
        match PinnedLink::from_pin(path) {
            Ok(pinned) => pinned,
            Err(aya::programs::links::LinkError::SyscallError(SyscallError {
                io_error, ..
            })) if io_error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::OpenPinnedLink {
                    path: path.to_owned(),
                    source: Box::new(source),
                })
            }
        };
    let link = pinned.unpin().map_err(|source| Error::Bpffs {
        call: "unlink",
        path: path.to_owned(),
        source,
    })?;
    // Without an id there is nothing to wait for; the unpin has done the work.
    Ok(link.info().ok().map(|info| info.program_id()))
}

pub(crate) fn remove_pin(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(Error::Bpffs {
            call: "unlink",
            path: path.to_owned(),
            source: error,
        }),
        _ => Ok(()),
    }
}

/// Waits until none of `program_ids` is loaded: only then is each detached from its cgroup.
fn wait_released(mut program_ids: Vec<u32>) -> Result<(), Error> {
    let deadline = Instant::now() + RELEASE_TIMEOUT;
    loop {
        // An id whose program is being freed fails to open; it no longer counts.
        let loaded: Vec<u32> = loaded_programs()
            .filter_map(Result::ok)
            .map(|info| info.id())
            .collect();
        program_ids.retain(|id| loaded.contains(id));
        if program_ids.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::StillLoaded { program_ids });
        }
        // The kernel offers no notification for a program's release; its delay is an RCU
        // grace period, so a short poll is cheap and bounded.
        thread::sleep(RELEASE_POLL);
    }
}

/// Creates `bpf_dir` and its missing parents after checking that it lies on bpffs, mounting
/// bpffs at [`BPFFS_ROOT`] first if the directory is below it and none is mounted there.
pub(crate) fn prepare_dir(bpf_dir: &Path) -> Result<(), Error> {
    match check_bpffs(bpf_dir) {
        Err(Error::NotBpffs { mount_point, .. })
            if bpf_dir.starts_with(BPFFS_ROOT) && !mount_point.starts_with(BPFFS_ROOT) =>
        {
            mount_bpffs_root()?;
            check_bpffs(bpf_dir)?;
        }
        checked => checked?,
    }
    fs::create_dir_all(bpf_dir).map_err(|source| Error::Bpffs {
        call: "mkdir",
        path: bpf_dir.to_owned(),
        source,
    })
}

/// Mounts bpffs at [`BPFFS_ROOT`] unless one is there. Under an exclusive lock on the
/// directory, so that two agents (or tests) starting at once do not stack two mounts, the
/// second hiding what the first pinned.
fn mount_bpffs_root() -> Result<(), Error> {
    use nix::fcntl::{Flock, FlockArg};
    const BPF_FS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0xcafe_4a11);
    let failed = |call: &'static str, errno: nix::errno::Errno| Error::Bpffs {
        call,
        path: PathBuf::from(BPFFS_ROOT),
        source: std::io::Error::from(errno),
    };
    let dir = fs::File::open(BPFFS_ROOT).map_err(|source| Error::Bpffs {
        call: "open",
        path: PathBuf::from(BPFFS_ROOT),
        source,
    })?;
    let _lock = Flock::lock(dir, FlockArg::LockExclusive).map_err(|(_, e)| failed("flock", e))?;
    let fs = nix::sys::statfs::statfs(BPFFS_ROOT).map_err(|e| failed("statfs", e))?;
    if fs.filesystem_type() != BPF_FS_MAGIC {
        nix::mount::mount(
            Some("bpf"),
            BPFFS_ROOT,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| failed("mount bpffs", e))?;
    }
    Ok(())
}

/// Whether `bpf_dir` (or where it would be created) lies on bpffs.
fn check_bpffs(bpf_dir: &Path) -> Result<(), Error> {
    let path = existing_prefix_canonical(bpf_dir)?;
    let mounts = read_mounts()?;
    // The last mount at the longest matching mount point is the one that path lookups see.
    let mount = mounts
        .iter()
        .filter(|mount| path.starts_with(&mount.mount_point))
        .max_by_key(|mount| mount.mount_point.components().count());
    match mount {
        Some(mount) if mount.fs_type == "bpf" => {}
        found => {
            return Err(Error::NotBpffs {
                path: bpf_dir.to_owned(),
                mount_point: found
                    .map(|mount| mount.mount_point.clone())
                    .unwrap_or_else(|| PathBuf::from("/")),
                fs_type: found
                    .map(|mount| mount.fs_type.clone())
                    .unwrap_or_else(|| "unknown".to_owned()),
            })
        }
    }
    Ok(())
}

/// `path` with its longest existing prefix resolved (symlinks, `..`), the rest appended as
/// is, so that it compares with the mount table's canonical mount points.
fn existing_prefix_canonical(path: &Path) -> Result<PathBuf, Error> {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        match existing.canonicalize() {
            Ok(canonical) => {
                return Ok(rest
                    .iter()
                    .rev()
                    .fold(canonical, |path, part: &std::ffi::OsString| path.join(part)))
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let Some(name) = existing.file_name().map(ToOwned::to_owned) else {
                    // Only a root or `..` end has no name, and those exist.
                    return Err(Error::Bpffs {
                        call: "stat",
                        path: path.to_owned(),
                        source: error,
                    });
                };
                rest.push(name);
                if !existing.pop() || existing.as_os_str().is_empty() {
                    existing = PathBuf::from(Component::CurDir.as_os_str());
                }
            }
            Err(source) => {
                return Err(Error::Bpffs {
                    call: "stat",
                    path: path.to_owned(),
                    source,
                })
            }
        }
    }
}

/// One line of /proc/mounts.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    mount_point: PathBuf,
    fs_type: String,
}

fn read_mounts() -> Result<Vec<Mount>, Error> {
    let table = fs::read_to_string(MOUNTS).map_err(|source| Error::ReadMounts {
        path: PathBuf::from(MOUNTS),
        source,
    })?;
    Ok(parse_mounts(&table))
}

/// Parses the mount table's format (fstab's): device, mount point, type, options, ... with
/// whitespace in fields escaped as octal. Malformed lines are skipped: the kernel writes none.
fn parse_mounts(table: &str) -> Vec<Mount> {
    table
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let _device = fields.next()?;
            let mount_point = fields.next()?;
            let fs_type = fields.next()?;
            Some(Mount {
                mount_point: PathBuf::from(unescape(mount_point)),
                fs_type: unescape(fs_type),
            })
        })
        .collect()
}

/// Undoes the kernel's `\ooo` escapes of space, tab, newline and backslash.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let digits = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(digits, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_are_parsed_and_unescaped() {
        let table = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
bpf /sys/fs/bpf bpf rw,relatime 0 0
none /mnt/with\\040space\\134x tmpfs rw 0 0
truncated
";
        assert_eq!(
            parse_mounts(table),
            [
                ("/sys", "sysfs"),
                ("/sys/fs/cgroup/cpu", "cgroup"),
                ("/sys/fs/cgroup/unified", "cgroup2"),
                ("/sys/fs/bpf", "bpf"),
                ("/mnt/with space\\x", "tmpfs"),
            ]
            .map(|(mount_point, fs_type)| Mount {
                mount_point: PathBuf::from(mount_point),
                fs_type: fs_type.to_owned(),
            })
        );
    }

    #[test]
    fn a_backslash_without_octal_digits_stays() {
        assert_eq!(unescape("a\\b\\0"), "a\\b\\0");
        assert_eq!(unescape("\\011tab"), "\ttab");
    }

    #[test]
    fn a_path_that_does_not_exist_yet_keeps_its_tail() {
        let path = Path::new("/proc/self/../bosun-does-not-exist/a/b");
        let resolved = existing_prefix_canonical(path).expect("resolve");
        assert_eq!(resolved, Path::new("/proc/bosun-does-not-exist/a/b"));
    }

    #[test]
    fn every_pin_name_is_distinct() {
        let mut names: Vec<String> = HOOKS
            .iter()
            .flat_map(|hook| {
                [
                    link_pin(Path::new(""), hook),
                    new_link_pin(Path::new(""), hook),
                ]
            })
            .chain(MAP_SHAPES.iter().map(|shape| PathBuf::from(shape.name)))
            .map(|path| path.display().to_string())
            .collect();
        let count = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), count, "{names:?}");
    }
}
