use std::{io, path::PathBuf};

use crate::probe::XdpMode;

/// Why a datapath operation failed. Each variant says whether trying again can help.
///
/// aya's errors are boxed: some are hundreds of bytes, which would make every `Result` here
/// that large.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused the embedded object or one of its maps, or the process lacks
    /// `CAP_BPF`. Do not retry: the same object fails the same way.
    #[error("loading the embedded eBPF object")]
    LoadObject {
        #[source]
        source: Box<aya::EbpfError>,
    },

    /// The embedded object has no program by this name: the programs and the ABI crate
    /// disagree. A build bug; do not retry.
    #[error("the embedded eBPF object has no program {program}")]
    ProgramMissing { program: &'static str },

    /// The embedded object has no map by this name: the programs and the ABI crate disagree.
    /// A build bug; do not retry.
    #[error("the embedded eBPF object has no map {map}")]
    MapMissing { map: &'static str },

    /// The program has the wrong type, or the verifier rejected it (its log is in `source`).
    /// Do not retry.
    #[error("loading program {program} into the kernel")]
    LoadProgram {
        program: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    /// The map's type, key or value size differs from the ABI crate's. A build bug; do not
    /// retry.
    #[error("map {map} does not match the ABI")]
    MapAbi {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },

    /// The interface name can never name an interface (empty, too long, or has a NUL or '/').
    /// Do not retry.
    #[error("{ifname:?} is not a valid interface name")]
    InvalidInterfaceName { ifname: String },

    /// No interface by this name exists in the calling thread's network namespace. Retry if
    /// it may still be created (a pod's veth, say).
    #[error("no interface {ifname} in this network namespace")]
    InterfaceNotFound { ifname: String },

    /// The kernel refused the attachment: another XDP program is on the interface, or the
    /// driver lacks XDP support in [`XdpMode::Driver`]. Do not retry without changing that.
    #[error("attaching XDP program {program} to {ifname} in {mode:?} mode")]
    AttachXdp {
        program: &'static str,
        ifname: String,
        mode: XdpMode,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    /// A map lookup failed in the kernel. Unexpected for a map this process created; a retry
    /// may succeed.
    #[error("reading map {map}")]
    ReadMap {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },

    /// A map update or delete failed in the kernel: the map is full (`E2BIG`) or memory ran
    /// short. Retry after entries have been removed.
    #[error("writing map {map}")]
    WriteMap {
        map: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },

    /// A mount table could not be read. Retry: only a transient failure (memory) explains it.
    #[error("reading the mount table {path}")]
    ReadMounts {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// No cgroup2 hierarchy is mounted, so there is no cgroup to attach socket programs to.
    /// Do not retry until one is mounted.
    #[error("no cgroup2 file system is mounted")]
    NoCgroup2,

    /// The pin directory is not on a BPF file system, which pinning needs. Do not retry until
    /// bpffs is mounted there (`mount -t bpf bpf /sys/fs/bpf`).
    #[error(
        "{path} is not on a BPF file system: the mount at {mount_point} is {fs_type} \
         (is bpffs mounted?)"
    )]
    NotBpffs {
        path: PathBuf,
        mount_point: PathBuf,
        fs_type: String,
    },

    /// A file operation in the pin directory failed (`call` is the operation). Permissions
    /// and a full or foreign directory do not change by retrying; anything else may.
    #[error("{call} {path}")]
    Bpffs {
        call: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The cgroup directory to attach to could not be opened. Do not retry: the path names no
    /// cgroup.
    #[error("opening cgroup {path}")]
    OpenCgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The kernel refused to attach the program to the cgroup (a cgroup v1 directory, or a
    /// program attached there without `BPF_F_ALLOW_MULTI`). Do not retry.
    #[error("attaching program {program} to cgroup {cgroup}")]
    AttachCgroup {
        program: &'static str,
        cgroup: PathBuf,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    /// The attachment is not a BPF link and so cannot be pinned: the kernel is older than
    /// 5.7. Do not retry.
    #[error("the attachment of program {program} cannot be pinned")]
    LinkNotPinnable {
        program: &'static str,
        #[source]
        source: Box<aya::programs::links::LinkError>,
    },

    /// Pinning a link failed; the program it attached was detached again. Retry only if the
    /// cause was transient: a file in the way or a missing directory stays.
    #[error("pinning the link of program {program} at {path}")]
    PinLink {
        program: &'static str,
        path: PathBuf,
        #[source]
        source: Box<aya::pin::PinError>,
    },

    /// A pin that should hold a link could not be opened. Do not retry: something other than
    /// [`crate::service::install`] put a file there.
    #[error("opening the pinned link {path}")]
    OpenPinnedLink {
        path: PathBuf,
        #[source]
        source: Box<aya::programs::links::LinkError>,
    },

    /// A pinned map could not be opened: it is not there (nothing has been installed in that
    /// directory yet) or is not a map. Retry after [`crate::service::install`] has run.
    #[error("opening the pinned map {map} at {path}")]
    OpenPinnedMap {
        map: &'static str,
        path: PathBuf,
        #[source]
        source: Box<aya::maps::MapError>,
    },

    /// A map pinned under this ABI's name has another shape, so it was made by an
    /// incompatible build. Do not retry: remove the old pins (losing their entries) first.
    #[error(
        "the map pinned at {path} does not match {map}: its {field} is {found}, not {expected}"
    )]
    PinnedMapMismatch {
        map: &'static str,
        path: PathBuf,
        field: &'static str,
        expected: String,
        found: String,
    },

    /// The links were unpinned but these programs are still loaded after a while: another
    /// process holds a link or program open. They go when it exits; retrying does not help.
    #[error("programs {program_ids:?} are still loaded after their links were unpinned")]
    StillLoaded { program_ids: Vec<u32> },
}
