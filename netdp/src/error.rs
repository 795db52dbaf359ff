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
}
