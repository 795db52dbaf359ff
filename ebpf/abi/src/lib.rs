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

// ---------------------------------------------------------------------------------------------
// Traffic from outside the node (tc on the node's external interfaces): packets to a node port,
// an external IP or a load balancer IP are sent to a backend chosen by Maglev hashing, tracked
// in a NAT table so every packet of the flow and its replies are rewritten the same way.
//
// A frontend reachable from outside has `SERVICE_FLAG_EXTERNAL` in the service map, and its
// service id names its Maglev table. The ingress program DNATs a new flow to its backend and
// the kernel forwards it; for a backend on another node the egress program of the interface it
// leaves by then SNATs it to the node's address (kube-proxy's masquerade, after routing as
// netfilter's POSTROUTING), so that the replies come back through this node. A flow to a
// backend on this node keeps the client's address.
//
// The NAT table holds two entries per stage and flow, one per direction, keyed by the tuple as
// the packet carries it when it reaches the hook that rewrites it, valued with the tuple to
// rewrite it to; so the other direction's entry is always at the value's tuple reversed:
//   DNAT  client→frontend        ⇒ client→backend         (ingress)
//         backend→client         ⇒ frontend→client        (egress, reply)
//   SNAT  client→backend         ⇒ node:port→backend      (egress; remote backends only)
//         backend→node:port      ⇒ backend→client         (ingress, reply)
// ---------------------------------------------------------------------------------------------

/// Hash map service id (`u32`) → [`MaglevTable`]: the backends of an external frontend.
pub const MAGLEV_MAP: &str = "BOSUN_MAG_V1";
/// LRU hash map [`NatKey`] → [`NatValue`]: the flows from outside.
pub const NAT_MAP: &str = "BOSUN_NAT_V1";
/// Array map of one [`NodePortConfig`].
pub const NODEPORT_CONFIG_MAP: &str = "BOSUN_NPCFG_V1";
/// Ring buffer of [`NodePortEvent`]s: flows from outside taken, and packets dropped.
pub const NODEPORT_EVENT_MAP: &str = "BOSUN_NPEVT_V1";
/// Bytes of [`NODEPORT_EVENT_MAP`].
pub const NODEPORT_EVENT_RING_BYTES: u32 = 1 << 18;

/// LRU hash map [`HopKey`] → [`Hop`]: the Ethernet header the kernel last put on a packet of
/// a flow from outside leaving by an external interface towards an address (written by the
/// tc egress program), which the XDP program puts on the packets of that flow it sends back
/// out itself. Not pinned: a cache, filled again by the first packets after a restart.
pub const HOP_MAP: &str = "BOSUN_NPHOP_V1";

pub const MAGLEV_MAX_ENTRIES: u32 = 1 << 16;
pub const NAT_MAX_ENTRIES: u32 = 1 << 18;
pub const HOP_MAX_ENTRIES: u32 = 1 << 14;

/// How long a [`Hop`] is used after the kernel last sent a packet that way: a change of route
/// or of neighbour is followed within this, one packet a destination going through the kernel
/// to learn it again.
pub const HOP_TIMEOUT_NS: u64 = 1_000_000_000;

/// The tc program on the node's external interfaces' ingress.
pub const NODEPORT_INGRESS_PROGRAM: &str = "bosun_np_in";
/// The tc program on the node's external interfaces' egress: replies to clients, and SNAT of
/// flows to other nodes' backends.
pub const NODEPORT_EGRESS_PROGRAM: &str = "bosun_np_out";
/// The XDP program on the node's external interfaces, where their drivers run XDP: the
/// ingress program's decisions, with the flows that leave by the interface they came in by
/// sent back out from the driver.
pub const NODEPORT_XDP_PROGRAM: &str = "bosun_np_xdp";

/// [`ServiceValue::flags`] bit: the frontend is reachable from outside the node (a node port,
/// an external IP, a load balancer IP); its service id names a [`MaglevTable`]. A frontend
/// with the flag and no table has no backend for outside traffic: its packets are dropped.
pub const SERVICE_FLAG_EXTERNAL: u32 = 2;

/// Entries of a [`MaglevTable`]: a prime, as Maglev requires. A Service with more backends
/// than this gives some of them no entry.
pub const MAGLEV_TABLE_SIZE: usize = 1021;

/// [`ExternalBackend::flags`] bit: the backend runs on this node (no SNAT).
pub const EXTERNAL_BACKEND_LOCAL: u8 = 1;

/// One entry of a [`MaglevTable`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExternalBackend {
    /// Network order.
    pub address: [u8; 4],
    /// Network order.
    pub port: [u8; 2],
    /// `EXTERNAL_BACKEND_*` bits.
    pub flags: u8,
    pub _pad: u8,
}

/// Value of [`MAGLEV_MAP`]: a flow's hash modulo [`MAGLEV_TABLE_SIZE`] picks its backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevTable {
    pub entries: [ExternalBackend; MAGLEV_TABLE_SIZE],
}

impl Default for MaglevTable {
    fn default() -> Self {
        Self {
            entries: [ExternalBackend::default(); MAGLEV_TABLE_SIZE],
        }
    }
}

/// The hash of a flow from outside that picks its Maglev entry: the client's address, port and
/// protocol only, so that a flow hashes alike whichever node and node address it reaches.
/// Shared by the programs and userspace (which shows where a flow would go).
#[inline(always)]
pub const fn flow_hash(address: [u8; 4], port: [u8; 2], protocol: u8) -> u32 {
    let mut h = u32::from_ne_bytes(address) ^ 0x9e37_79b9;
    h = (h ^ (h >> 16)).wrapping_mul(0x85eb_ca6b);
    h ^= (u16::from_ne_bytes(port) as u32) << 8 | protocol as u32;
    h = (h ^ (h >> 13)).wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Key of [`NAT_MAP`]: a packet's tuple as it reaches the program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NatKey {
    /// Network order.
    pub source: [u8; 4],
    /// Network order.
    pub destination: [u8; 4],
    /// Network order.
    pub source_port: [u8; 2],
    /// Network order.
    pub destination_port: [u8; 2],
    pub protocol: u8,
    pub _pad: [u8; 3],
}

/// [`NatValue::flags`] bit: the entry is a reply's (backend to client).
pub const NAT_REPLY: u8 = 1;
/// [`NatValue::flags`] bit: the entry belongs to the SNAT stage.
pub const NAT_SNAT: u8 = 2;
/// [`NatValue::flags`] bit: a FIN or RST was seen; the entry expires after
/// [`NAT_CLOSING_TIMEOUT_NS`].
pub const NAT_CLOSING: u8 = 4;
/// [`NatValue::flags`] bit: the egress program applies the entry (the ingress program the
/// others).
pub const NAT_EGRESS: u8 = 8;

/// Value of [`NAT_MAP`]: the tuple the packet is rewritten to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatValue {
    pub source: [u8; 4],
    pub destination: [u8; 4],
    pub source_port: [u8; 2],
    pub destination_port: [u8; 2],
    /// `NAT_*` bits.
    pub flags: u8,
    pub _pad: [u8; 3],
    /// `bpf_ktime_get_coarse_ns` when a packet of the flow was last seen, refreshed at most
    /// once a second.
    pub last_seen_ns: u64,
}

impl NatValue {
    /// The key of a packet once rewritten to this tuple: the key of the flow's next stage.
    pub const fn key(&self, protocol: u8) -> NatKey {
        NatKey {
            source: self.source,
            destination: self.destination,
            source_port: self.source_port,
            destination_port: self.destination_port,
            protocol,
            _pad: [0; 3],
        }
    }

    /// The key of the other direction's entry.
    pub const fn reverse_key(&self, protocol: u8) -> NatKey {
        NatKey {
            source: self.destination,
            destination: self.source,
            source_port: self.destination_port,
            destination_port: self.source_port,
            protocol,
            _pad: [0; 3],
        }
    }
}

/// How long a TCP flow from outside may be idle before its entries go.
pub const NAT_TCP_TIMEOUT_NS: u64 = CONNTRACK_TCP_TIMEOUT_NS;
/// How long a UDP flow from outside may be idle.
pub const NAT_OTHER_TIMEOUT_NS: u64 = CONNTRACK_OTHER_TIMEOUT_NS;
/// How long a TCP flow's entries stay after a FIN or RST (conntrack's TIME_WAIT is 120 s;
/// a new connection from the same port gets a fresh entry before that anyway).
pub const NAT_CLOSING_TIMEOUT_NS: u64 = 10 * 1_000_000_000;

/// SNAT source ports for flows to backends on other nodes: above Linux's default ephemeral
/// range (32768-60999) and the node port range, so no local socket uses them.
pub const SNAT_PORT_MIN: u16 = 61000;
pub const SNAT_PORT_MAX: u16 = 65535;

/// [`NodePortEvent::kind`]: a new flow, NATed to its backend.
pub const NODEPORT_EVENT_NEW_FLOW: u8 = 0;
/// [`NodePortEvent::kind`]: dropped, the frontend has no backend for traffic from outside.
pub const NODEPORT_EVENT_NO_BACKEND: u8 = 1;
/// [`NodePortEvent::kind`]: dropped, no SNAT address is set or no SNAT port was free.
pub const NODEPORT_EVENT_NO_SNAT: u8 = 2;
/// [`NodePortEvent::kind`]: dropped, the NAT table refused the flow's entries.
pub const NODEPORT_EVENT_TABLE_REFUSED: u8 = 3;
/// [`NodePortEvent::kind`]: refused, the Service has no endpoint at all: kube-proxy's REJECT,
/// an ICMP port unreachable sent back to the client in the packet's place.
pub const NODEPORT_EVENT_REFUSED: u8 = 4;

/// A record of [`NODEPORT_EVENT_MAP`]. Addresses and ports in network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodePortEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) of the packet.
    pub time_ns: u64,
    pub client: [u8; 4],
    pub frontend: [u8; 4],
    /// Zero when dropped before a backend was chosen.
    pub backend: [u8; 4],
    pub client_port: [u8; 2],
    pub frontend_port: [u8; 2],
    pub backend_port: [u8; 2],
    /// The SNAT port of a flow to another node's backend; zero otherwise.
    pub snat_port: [u8; 2],
    pub protocol: u8,
    /// `NODEPORT_EVENT_*`.
    pub kind: u8,
    pub _pad: [u8; 6],
}

/// Key of [`HOP_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HopKey {
    /// The interface the packets leave by.
    pub ifindex: u32,
    /// Their destination, network order.
    pub address: [u8; 4],
}

/// Value of [`HOP_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Hop {
    /// The next hop's MAC address, and the interface's own.
    pub destination_mac: [u8; 6],
    pub source_mac: [u8; 6],
    pub _pad: [u8; 4],
    /// `bpf_ktime_get_coarse_ns` when the kernel last sent a packet this way.
    pub seen_ns: u64,
}

/// Value of [`NODEPORT_CONFIG_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodePortConfig {
    /// The node's address that flows to other nodes' backends are SNATed to, network order;
    /// all zero: none, and such flows are dropped.
    pub snat_address: [u8; 4],
    pub _pad: [u8; 4],
}

const _: () = assert!(core::mem::size_of::<ExternalBackend>() == 8);
const _: () = assert!(core::mem::size_of::<MaglevTable>() == 8 * MAGLEV_TABLE_SIZE);
const _: () = assert!(core::mem::size_of::<NatKey>() == 16);
const _: () = assert!(core::mem::size_of::<NatValue>() == 24);
const _: () = assert!(core::mem::size_of::<NodePortConfig>() == 8);
const _: () = assert!(core::mem::size_of::<NodePortEvent>() == 40);
const _: () = assert!(NODEPORT_EVENT_MAP.len() <= 15);
const _: () = assert!(MAGLEV_MAP.len() <= 15 && NAT_MAP.len() <= 15);
const _: () = assert!(NODEPORT_CONFIG_MAP.len() <= 15);
const _: () = assert!(NODEPORT_INGRESS_PROGRAM.len() <= 15 && NODEPORT_EGRESS_PROGRAM.len() <= 15);
const _: () = assert!(NODEPORT_XDP_PROGRAM.len() <= 15 && HOP_MAP.len() <= 15);
const _: () = assert!(core::mem::size_of::<HopKey>() == 8);
const _: () = assert!(core::mem::size_of::<Hop>() == 24);

// SAFETY: as for the service maps' types above.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ExternalBackend {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for MaglevTable {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for NatKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for NatValue {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for NodePortConfig {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for NodePortEvent {}

// ---------------------------------------------------------------------------------------------
// NetworkPolicy on each pod's interface (tcx on the host side of the pod's veth, both
// directions).
//
// A pod is an *endpoint*, named by the ifindex of its host-side interface. Its entry in
// [`ENDPOINT_MAP`] says for each direction whether it is isolated. For an isolated direction a
// new flow is judged by two longest-prefix lookups: the peer's address gives a port class
// ([`PEER_MAP`]), and the class with the flow's protocol and destination port gives the policy
// that allows it ([`PORT_MAP`]). No match in either: dropped. Flows allowed once are remembered
// in [`CONNTRACK_MAP`], so replies and later packets pass on one hash lookup.
//
// Traffic between a pod and its own node (kubelet's probes) always passes: [`NODE_MAP`] holds
// the node's addresses.
//
// Userspace writes a class's port entries before any peer entry names the class, a direction's
// peer entries before the endpoint's flags isolate it, and the endpoint entry before the
// programs are attached; it removes in reverse.
// ---------------------------------------------------------------------------------------------

/// Hash map ifindex (`u32`, host order) → [`EndpointValue`]: every interface the policy
/// programs are attached to. A packet on an interface without an entry is dropped.
pub const ENDPOINT_MAP: &str = "BOSUN_EP_V1";
/// LPM trie [`PeerKey`] → class (`u32`, host order): which ports an isolated endpoint may
/// talk to, or be reached on, by a peer address.
pub const PEER_MAP: &str = "BOSUN_PEER_V1";
/// LPM trie [`PortKey`] → policy id (`u32`, host order; names in [`POLICY_NAME_MAP`]): the
/// protocols and destination ports a class allows, and the policy that allows each.
pub const PORT_MAP: &str = "BOSUN_PORT_V1";
/// LRU hash map [`ConntrackKey`] → [`ConntrackValue`]: flows already allowed, per endpoint.
pub const CONNTRACK_MAP: &str = "BOSUN_CT_V1";
/// Hash map node address (network-order `[u8; 4]`) → `u32` (always 1).
pub const NODE_MAP: &str = "BOSUN_NODE_V1";
/// Per-CPU array of [`PolicyCounters`]: packets allowed and dropped per endpoint and
/// direction, at [`counter_index`] of the endpoint's [`EndpointValue::counters`] slot.
/// Userspace zeroes a slot's two entries before it gives the slot to an endpoint.
pub const COUNTER_MAP: &str = "BOSUN_PCNT_V1";
/// Ring buffer of [`PolicyEvent`]s: every dropped packet and every new flow allowed by policy.
pub const EVENT_MAP: &str = "BOSUN_PEVT_V1";
/// Hash map policy id (`u32`) → [`PolicyName`]: what `bosun monitor` prints for an id.
pub const POLICY_NAME_MAP: &str = "BOSUN_PNAME_V1";

/// Far more than kubelet's largest `maxPods`; also the number of counter slots.
pub const ENDPOINT_MAX_ENTRIES: u32 = 1 << 11;
pub const PEER_MAX_ENTRIES: u32 = 1 << 20;
pub const PORT_MAX_ENTRIES: u32 = 1 << 20;
pub const CONNTRACK_MAX_ENTRIES: u32 = 1 << 18;
pub const NODE_MAX_ENTRIES: u32 = 1 << 10;
/// Slots 1 to [`ENDPOINT_MAX_ENTRIES`], two entries each; slot 0 is never used.
pub const COUNTER_MAX_ENTRIES: u32 = 2 * (ENDPOINT_MAX_ENTRIES + 1);
pub const POLICY_NAME_MAX_ENTRIES: u32 = 1 << 16;
/// Bytes of the event ring buffer: a power of two and a multiple of the page size.
pub const EVENT_RING_BYTES: u32 = 1 << 20;

/// tcx program on the host side's *egress*: packets going into the pod (the pod's ingress).
pub const POLICY_INGRESS_PROGRAM: &str = "bosun_pol_in";
/// tcx program on the host side's *ingress*: packets coming out of the pod (its egress).
pub const POLICY_EGRESS_PROGRAM: &str = "bosun_pol_out";

/// `IPPROTO_SCTP`.
pub const PROTOCOL_SCTP: u8 = 132;

/// A direction as the maps hold it: the pod's point of view, as in `policyTypes`.
pub const DIRECTION_INGRESS: u8 = 0;
pub const DIRECTION_EGRESS: u8 = 1;

/// [`EndpointValue::flags`] bit: some policy selects the pod for ingress.
pub const ENDPOINT_ISOLATED_INGRESS: u32 = 1;
/// [`EndpointValue::flags`] bit: some policy selects the pod for egress.
pub const ENDPOINT_ISOLATED_EGRESS: u32 = 2;

/// [`PolicyEvent::verdict`]: the packet was dropped.
pub const VERDICT_DROPPED: u8 = 0;
/// [`PolicyEvent::verdict`]: a new flow was allowed by the policy in [`PolicyEvent::policy`].
pub const VERDICT_ALLOWED: u8 = 1;

/// Value of [`ENDPOINT_MAP`]. Host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointValue {
    /// `ENDPOINT_ISOLATED_*` bits.
    pub flags: u32,
    /// For drop events: the id of a policy that isolates the pod for ingress (0: none).
    pub ingress_policy: u32,
    /// For drop events: the id of a policy that isolates the pod for egress (0: none).
    pub egress_policy: u32,
    /// The endpoint's slot in [`COUNTER_MAP`] (0: not counted).
    pub counters: u32,
}

/// The data of a [`PEER_MAP`] key, after the trie's `u32` prefix length. The prefix length
/// always covers `endpoint`, `direction` and `_pad` (64 bits), then as many bits of `address`
/// as the CIDR has: `64 + cidr_prefix_len`. Lookups use 96.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey {
    /// The endpoint's ifindex, network order (the trie compares bytes from the first).
    pub endpoint: [u8; 4],
    /// `DIRECTION_*`.
    pub direction: u8,
    pub _pad: [u8; 3],
    /// The peer's address, network order.
    pub address: [u8; 4],
}

/// Bits of a [`PeerKey`] before its address.
pub const PEER_KEY_FIXED_BITS: u32 = 64;

/// The data of a [`PORT_MAP`] key, after the trie's `u32` prefix length. The prefix length is
/// 32 (any protocol, any port), 40 (this protocol, any port), or `48 + n` (this protocol and
/// ports sharing their first `n` bits). Lookups use 64.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    /// The class, network order.
    pub class: [u8; 4],
    /// `IPPROTO_*`.
    pub protocol: u8,
    pub _pad: u8,
    /// The flow's destination port, network order.
    pub port: [u8; 2],
}

/// Prefix length of a [`PortKey`] matching every protocol and port of its class.
pub const PORT_KEY_ANY_PROTOCOL_BITS: u32 = 32;
/// Prefix length of a [`PortKey`] matching every port of its class and protocol.
pub const PORT_KEY_ANY_PORT_BITS: u32 = 40;
/// Bits of a [`PortKey`] before its port.
pub const PORT_KEY_FIXED_BITS: u32 = 48;

/// Key of [`CONNTRACK_MAP`]: a flow as one endpoint sees it, whichever way the packet goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConntrackKey {
    /// The endpoint's ifindex, host order.
    pub endpoint: u32,
    /// The pod's address, network order.
    pub local_address: [u8; 4],
    /// The other side's address, network order.
    pub remote_address: [u8; 4],
    /// Network order; 0 for protocols without ports.
    pub local_port: [u8; 2],
    /// Network order; 0 for protocols without ports.
    pub remote_port: [u8; 2],
    pub protocol: u8,
    pub _pad: [u8; 3],
}

/// Value of [`CONNTRACK_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConntrackValue {
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC at the last tick) when the flow was last seen,
    /// refreshed at most once a second.
    pub last_seen_ns: u64,
    /// `DIRECTION_*` of the flow's first packet.
    pub direction: u8,
    pub _pad: [u8; 7],
}

/// How long a TCP flow may be idle before a packet of it is judged again as new.
pub const CONNTRACK_TCP_TIMEOUT_NS: u64 = 6 * 3600 * 1_000_000_000;
/// How long a flow of any other protocol may be idle (conntrack's UDP stream timeout).
pub const CONNTRACK_OTHER_TIMEOUT_NS: u64 = 120 * 1_000_000_000;

/// The index in [`COUNTER_MAP`] of a counter slot's direction (`DIRECTION_*`).
#[inline(always)]
pub const fn counter_index(slot: u32, direction: u8) -> u32 {
    slot * 2 + direction as u32
}

/// Value of [`COUNTER_MAP`], one per CPU. Host byte order; wraps on overflow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyCounters {
    pub allowed: u64,
    pub dropped: u64,
}

/// A record of [`EVENT_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) of the packet.
    pub time_ns: u64,
    /// The endpoint's ifindex, host order.
    pub endpoint: u32,
    /// The deciding policy's id: the one that allowed the flow, or one that isolates the
    /// endpoint in this direction for a drop. 0: none (a packet on an interface bosun does not
    /// know).
    pub policy: u32,
    /// Network order.
    pub source: [u8; 4],
    /// Network order.
    pub destination: [u8; 4],
    /// Network order; 0 for protocols without ports.
    pub source_port: [u8; 2],
    /// Network order; 0 for protocols without ports.
    pub destination_port: [u8; 2],
    pub protocol: u8,
    /// `DIRECTION_*`, from the pod's point of view.
    pub direction: u8,
    /// `VERDICT_*`.
    pub verdict: u8,
    pub _pad: u8,
}

/// Bytes of a [`PolicyName`].
pub const POLICY_NAME_BYTES: usize = 320;

/// Value of [`POLICY_NAME_MAP`]: `namespace/name`, UTF-8, padded with NULs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyName {
    pub bytes: [u8; POLICY_NAME_BYTES],
}

impl Default for PolicyName {
    fn default() -> Self {
        Self {
            bytes: [0; POLICY_NAME_BYTES],
        }
    }
}

const _: () = assert!(core::mem::size_of::<EndpointValue>() == 16);
const _: () = assert!(core::mem::size_of::<PeerKey>() == 12);
const _: () = assert!(core::mem::size_of::<PortKey>() == 8);
const _: () = assert!(core::mem::size_of::<ConntrackKey>() == 20);
const _: () = assert!(core::mem::size_of::<ConntrackValue>() == 16);
const _: () = assert!(core::mem::size_of::<PolicyCounters>() == 16);
const _: () = assert!(core::mem::size_of::<PolicyEvent>() == 32);
const _: () = assert!(core::mem::size_of::<PolicyName>() == POLICY_NAME_BYTES);
const _: () = assert!(ENDPOINT_MAP.len() <= 15 && PEER_MAP.len() <= 15 && PORT_MAP.len() <= 15);
const _: () = assert!(CONNTRACK_MAP.len() <= 15 && NODE_MAP.len() <= 15);
const _: () = assert!(COUNTER_MAP.len() <= 15 && EVENT_MAP.len() <= 15);
const _: () = assert!(POLICY_NAME_MAP.len() <= 15);
const _: () = assert!(POLICY_INGRESS_PROGRAM.len() <= 15 && POLICY_EGRESS_PROGRAM.len() <= 15);

#[cfg(feature = "user")]
unsafe impl aya::Pod for EndpointValue {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for PeerKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for PortKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for ConntrackKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for ConntrackValue {}
#[cfg(feature = "user")]
#[cfg(feature = "user")]
unsafe impl aya::Pod for PolicyCounters {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for PolicyEvent {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for PolicyName {}
