use std::{io, net::Ipv4Addr, path::PathBuf};

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

    /// The kernel attached an XDP program by netlink, not with a BPF link (it is older than
    /// 5.9), so the attachment cannot be pinned. Do not retry on this kernel.
    #[error("the XDP program on {ifname} was attached without a BPF link (a kernel before 5.9)")]
    XdpWithoutLink { ifname: String },

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

    /// Pinning a program that the clsact fallback attached failed; the filter was not added.
    /// Retry only if the cause was transient: a file in the way or a missing directory stays.
    #[error("pinning program {program} at {path}")]
    PinProgram {
        program: &'static str,
        path: PathBuf,
        #[source]
        source: Box<aya::pin::PinError>,
    },

    /// The environment variable that forces how tc programs are attached has a value other
    /// than `tcx` or `clsact`. Do not retry: fix the variable.
    #[error("{variable} is {value:?}: expected tcx or clsact (or unset, to choose by kernel)")]
    TcAttachMode {
        variable: &'static str,
        value: String,
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

    // NetworkPolicy datapath
    /// No interface has this index in the calling thread's network namespace: the pod's
    /// interface is gone, or not created yet. Retry only if it may still appear.
    #[error("no interface with index {ifindex} in this network namespace")]
    InterfaceIndexNotFound { ifindex: u32 },

    /// The kernel refused to attach a tc program to the interface (it vanished meanwhile, or
    /// another program holds the attachment exclusively). Retry only if the interface may
    /// have been replaced.
    #[error("attaching program {program} to interface {ifname} (index {ifindex})")]
    AttachTc {
        program: &'static str,
        ifindex: u32,
        ifname: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    /// The kernel refused to run a program on a test packet (`BPF_PROG_TEST_RUN`): no such
    /// interface in the caller's network namespace, a frame too short, or no privilege.
    #[error("test run of program {program} on interface index {ifindex}")]
    TestRun {
        program: &'static str,
        ifindex: u32,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    /// The clsact qdisc that tc programs need on kernels without tcx could not be added.
    /// Do not retry: the interface does not take qdiscs.
    #[error("adding a clsact qdisc to interface {ifname} (index {ifindex})")]
    AddClsact {
        ifindex: u32,
        ifname: String,
        #[source]
        source: Box<aya::programs::tc::TcError>,
    },

    /// Asking the kernel which tcx programs run on the interface failed. Retry: only a
    /// transient failure (memory) explains it.
    #[error("listing the tcx programs of interface {ifname} (index {ifindex})")]
    QueryTc {
        ifindex: u32,
        ifname: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    /// The tcx links of the interface were unpinned, but these programs still run on it
    /// after a while: another process holds one of the links open. They stop when it closes
    /// it; retrying does not help.
    #[error(
        "programs {program_ids:?} still run on interface index {ifindex} after their links \
         were unpinned"
    )]
    StillAttached { ifindex: u32, program_ids: Vec<u32> },

    /// A record of the event ring buffer is not the size of a `PolicyEvent`: the programs and
    /// this build disagree. A build bug; do not retry.
    #[error("a record of {map} has {size} bytes, not {expected}")]
    EventSize {
        map: &'static str,
        size: usize,
        expected: usize,
    },

    /// Waiting for the event ring buffer to become readable failed (registering it with the
    /// Tokio reactor, or polling it). Retry only after a transient failure (memory, fds).
    #[error("waiting for events in the ring buffer pinned at {path}")]
    WaitEvents {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    // netlink
    /// The network namespace file could not be opened: the sandbox is gone, or not created
    /// yet. Retry only while the sandbox may still be being set up.
    #[error("opening network namespace {netns}")]
    OpenNetns {
        netns: PathBuf,
        #[source]
        source: io::Error,
    },

    /// `setns` into the namespace failed: the file is not a network namespace (`EINVAL`) or
    /// the process lacks `CAP_SYS_ADMIN` (`EPERM`). Do not retry.
    #[error("entering network namespace {netns}")]
    EnterNetns {
        netns: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },

    /// No thread could be started to enter the namespace. Retry: threads or memory ran short.
    #[error("starting a thread to enter network namespace {netns}")]
    SpawnNetnsThread {
        netns: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A netlink socket could not be opened, or a send or receive on it failed (`call` is the
    /// request). Retry: a full receive buffer (`ENOBUFS`) or short memory explains it.
    #[error("{call} over rtnetlink in network namespace {netns}")]
    Netlink {
        call: &'static str,
        netns: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The kernel answered in a form this crate cannot parse. Do not retry: the same kernel
    /// answers the same way.
    #[error("decoding the answer to {call} over rtnetlink in network namespace {netns}")]
    NetlinkDecode {
        call: &'static str,
        netns: PathBuf,
        #[source]
        source: Box<netlink_packet_core::DecodeError>,
    },

    /// The kernel refused the request with `errno`. Do not retry unless that errno is
    /// transient (`EBUSY`, `ENOBUFS`, `EINTR`).
    #[error("{call} over rtnetlink in network namespace {netns}: {}", nix::errno::Errno::from_raw(*errno))]
    NetlinkRefused {
        call: &'static str,
        netns: PathBuf,
        errno: i32,
    },

    /// The namespace has no veth whose peer is in another namespace. Retry while the CNI
    /// plugin may still be wiring the pod.
    #[error("network namespace {netns} has no veth with its peer outside it (links: {links:?})")]
    NoPodInterface { netns: PathBuf, links: Vec<String> },

    /// Several veths lead out of the namespace, none is `eth0` and not exactly one has a
    /// global IPv4 address. Do not retry.
    #[error(
        "network namespace {netns} has several veths leading out of it ({candidates:?}), none \
         named eth0 and not exactly one with a global IPv4 address"
    )]
    AmbiguousPodInterface {
        netns: PathBuf,
        candidates: Vec<String>,
    },

    /// The pod's veth names a peer ifindex that no interface has in the caller's namespace:
    /// the peer is in another namespace than the node's, or was just deleted. Do not retry.
    #[error(
        "the peer of {pod_ifname} in network namespace {netns} is ifindex {ifindex}, which \
         names no interface in this namespace"
    )]
    HostInterfaceNotFound {
        netns: PathBuf,
        pod_ifname: String,
        ifindex: u32,
    },

    /// The pod's veth names a peer ifindex that, in the caller's namespace, is another
    /// interface (`name`): the peer lives in a third namespace. Do not retry.
    #[error(
        "the peer of {pod_ifname} in network namespace {netns} is ifindex {ifindex}, but \
         {name:?} with that index in this namespace is not its peer"
    )]
    HostInterfaceMismatch {
        netns: PathBuf,
        pod_ifname: String,
        ifindex: u32,
        name: String,
    },

    /// A directory that names network namespaces (`/run/netns`, `/proc`) could not be read.
    /// Retry: only a transient failure (memory, file descriptors) explains it for root.
    #[error("listing the network namespaces in {path}")]
    ListNetns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Several network namespaces have the pod's address and a veth leading to the caller's
    /// namespace, so nothing says which is the pod's. Do not retry until one is gone.
    #[error("{ip} is an address of several network namespaces with a veth to this one: {netns:?}")]
    AmbiguousPodNetns { ip: Ipv4Addr, netns: Vec<PathBuf> },
}
