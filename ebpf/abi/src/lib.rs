//! The ABI between bosun's eBPF programs and `netdp`: the `#[repr(C)]` keys and values of every
//! shared map, with explicit padding and byte order. `no_std`, so the kernel programs can use it;
//! the `user` feature adds `aya::Pod` impls for the loader.
//!
//! Map names carry a version (`_V1`) so that a loader never reads a pinned map whose layout
//! changed under it. They are at most 15 bytes: the kernel keeps only that much of a map's name
//! (`BPF_OBJ_NAME_LEN`), and a truncated name would make `bpftool map` output ambiguous.
#![no_std]

/// Name of the per-CPU array map that the probe program counts into. It has one entry, at key
/// [`PROBE_COUNT_KEY`]; its value is a [`PacketCount`].
pub const PROBE_COUNT_MAP: &str = "BOSUN_PROBE_V1";

/// The only key of [`PROBE_COUNT_MAP`].
pub const PROBE_COUNT_KEY: u32 = 0;

/// Name of the XDP program that counts every packet and passes it on.
pub const PROBE_PROGRAM: &str = "bosun_probe";

/// Value of map [`PROBE_COUNT_MAP`]: packets and bytes seen by the probe program on one CPU.
///
/// Both counters wrap on overflow. `bytes` counts what XDP sees of a packet, from its Ethernet
/// header to the end of the linear data. Host byte order: the counters never leave the machine.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCount {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<PacketCount>() == 16);
const _: () = assert!(core::mem::align_of::<PacketCount>() == 8);
const _: () = assert!(PROBE_COUNT_MAP.len() <= 15);
const _: () = assert!(PROBE_PROGRAM.len() <= 15);

// SAFETY: `PacketCount` is `#[repr(C)]`, made only of `u64`s, has no padding (its size is asserted
// above to be exactly two `u64`s), and every bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PacketCount {}

// ---------------------------------------------------------------------------------------------
// Service load balancing at the socket layer (cgroup connect4 / sendmsg4 / recvmsg4 /
// getpeername4 on the node's cgroup2 root).
//
// Three maps make a lookup O(1) whatever the number of Services: the frontend
// (VIP, port, protocol) gives a service id and a backend count; a random slot below that count
// and the service id give a backend id; the backend id gives the backend's address. Userspace
// writes backends before the slots that name them and slots before the count that exposes
// them, and removes in reverse, so a program never follows an id to nothing.
//
// Addresses and ports are network-order bytes, exactly as `bpf_sock_addr` holds them; the
// `*_from_host`/`*_to_host` functions are the only conversions.
// ---------------------------------------------------------------------------------------------

/// Hash map [`ServiceKey`] → [`ServiceValue`]: one entry per Service frontend (a ClusterIP or
/// external IP with one port and protocol).
pub const SERVICE_MAP: &str = "BOSUN_SVC_V1";
/// Hash map [`SlotKey`] → backend id (`u32`): slots `0..count` of each service.
pub const SLOT_MAP: &str = "BOSUN_SLOT_V1";
/// Hash map backend id (`u32`) → [`Backend`].
pub const BACKEND_MAP: &str = "BOSUN_BE_V1";
/// LRU hash map [`AffinityKey`] → [`AffinityValue`]: `sessionAffinity: ClientIP`'s memory.
pub const AFFINITY_MAP: &str = "BOSUN_AFF_V1";
/// LRU hash map [`RevNatKey`] → [`RevNatValue`]: which VIP a socket meant when it was sent to a
/// backend, so that `recvmsg` and `getpeername` can show the VIP again.
pub const REVNAT_MAP: &str = "BOSUN_RNAT_V1";

pub const SERVICE_MAX_ENTRIES: u32 = 1 << 16;
pub const SLOT_MAX_ENTRIES: u32 = 1 << 18;
pub const BACKEND_MAX_ENTRIES: u32 = 1 << 18;
pub const AFFINITY_MAX_ENTRIES: u32 = 1 << 16;
pub const REVNAT_MAX_ENTRIES: u32 = 1 << 17;

/// The cgroup `connect4` program: TCP and connected UDP to a VIP go to a backend.
pub const CONNECT4_PROGRAM: &str = "bosun_connect4";
/// The cgroup `sendmsg4` program: unconnected UDP to a VIP goes to a backend.
pub const SENDMSG4_PROGRAM: &str = "bosun_sendmsg4";
/// The cgroup `recvmsg4` program: UDP from a backend appears to come from the VIP.
pub const RECVMSG4_PROGRAM: &str = "bosun_recvmsg4";
/// The cgroup `getpeername4` program: a socket sent to a backend reports the VIP as its peer.
pub const GETPEERNAME4_PROGRAM: &str = "bosun_peername4";

/// `IPPROTO_TCP`, as [`ServiceKey::protocol`] holds it.
pub const PROTOCOL_TCP: u8 = 6;
/// `IPPROTO_UDP`, as [`ServiceKey::protocol`] holds it.
pub const PROTOCOL_UDP: u8 = 17;

/// [`ServiceValue::flags`] bit: `sessionAffinity: ClientIP`; see [`AffinityKey`].
pub const SERVICE_FLAG_AFFINITY: u32 = 1;

/// Key of [`SERVICE_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// The VIP, network order.
    pub address: [u8; 4],
    /// The Service port, network order.
    pub port: [u8; 2],
    /// [`PROTOCOL_TCP`] or [`PROTOCOL_UDP`].
    pub protocol: u8,
    pub _pad: u8,
}

/// Value of [`SERVICE_MAP`]. Host byte order: it never leaves the machine.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// Names this service's slots in [`SLOT_MAP`] and its affinity entries. Never 0.
    pub id: u32,
    /// Slots `0..count` hold backends. 0: the Service has no usable endpoint and connections
    /// to it are refused (`ECONNREFUSED`).
    pub count: u32,
    /// `SERVICE_FLAG_*` bits.
    pub flags: u32,
    /// With [`SERVICE_FLAG_AFFINITY`]: how long a client keeps its backend after its last
    /// connection, in seconds (`sessionAffinityConfig.clientIP.timeoutSeconds`).
    pub affinity_timeout: u32,
}

/// Key of [`SLOT_MAP`]. Host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    pub service: u32,
    pub slot: u32,
}

/// Value of [`BACKEND_MAP`]: where a connection goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    /// Network order.
    pub address: [u8; 4],
    /// Network order.
    pub port: [u8; 2],
    pub _pad: [u8; 2],
}

/// Key of [`AFFINITY_MAP`]. The client is the socket's network namespace
/// (`bpf_get_netns_cookie`): at connect time a socket often has no source address yet, and
/// every process of a pod shares its namespace and its one IP, so the namespace is the client
/// that `ClientIP` means. Host processes share the host's namespace, as they share its IP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub netns_cookie: u64,
    pub service: u32,
    pub _pad: u32,
}

/// Value of [`AFFINITY_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    pub backend: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns` of the client's last connection to the service.
    pub last_used_ns: u64,
}

/// Key of [`REVNAT_MAP`]: a socket (`bpf_get_socket_cookie`) and the backend it was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevNatKey {
    pub socket_cookie: u64,
    /// Network order.
    pub address: [u8; 4],
    /// Network order.
    pub port: [u8; 2],
    pub _pad: [u8; 2],
}

/// Value of [`REVNAT_MAP`]: the VIP and port the socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevNatValue {
    /// Network order.
    pub address: [u8; 4],
    /// Network order.
    pub port: [u8; 2],
    pub _pad: [u8; 2],
}

/// An IPv4 address as the maps hold it, from its host-order `u32` (`Ipv4Addr::to_bits`).
pub const fn address_from_host(address: u32) -> [u8; 4] {
    address.to_be_bytes()
}

/// The host-order `u32` of an address the maps hold.
pub const fn address_to_host(address: [u8; 4]) -> u32 {
    u32::from_be_bytes(address)
}

/// A port as the maps hold it.
pub const fn port_from_host(port: u16) -> [u8; 2] {
    port.to_be_bytes()
}

/// The host-order port of a port the maps hold.
pub const fn port_to_host(port: [u8; 2]) -> u16 {
    u16::from_be_bytes(port)
}

const _: () = assert!(core::mem::size_of::<ServiceKey>() == 8);
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 16);
const _: () = assert!(core::mem::size_of::<SlotKey>() == 8);
const _: () = assert!(core::mem::size_of::<Backend>() == 8);
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 16);
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);
const _: () = assert!(core::mem::size_of::<RevNatKey>() == 16);
const _: () = assert!(core::mem::size_of::<RevNatValue>() == 8);
const _: () = assert!(SERVICE_MAP.len() <= 15 && SLOT_MAP.len() <= 15 && BACKEND_MAP.len() <= 15);
const _: () = assert!(AFFINITY_MAP.len() <= 15 && REVNAT_MAP.len() <= 15);
const _: () = assert!(CONNECT4_PROGRAM.len() <= 15 && SENDMSG4_PROGRAM.len() <= 15);
const _: () = assert!(RECVMSG4_PROGRAM.len() <= 15 && GETPEERNAME4_PROGRAM.len() <= 15);

// SAFETY (all below): each type is `#[repr(C)]`, made only of integers and byte arrays, has no
// implicit padding (sizes asserted above equal the sum of the fields), and every bit pattern is
// a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ServiceKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for ServiceValue {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for SlotKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for Backend {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for AffinityKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for AffinityValue {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for RevNatKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for RevNatValue {}
