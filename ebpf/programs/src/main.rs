//! bosun's kernel programs. Built only for the bpf target; on the host this is an empty binary
//! so that `cargo build --workspace` works on the stable toolchain.
//!
//! Each map's and program's symbol name is the name the loader looks up; the ABI crate holds
//! those names and the layouts, and netdp's tests check that the built object matches them.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{
    bindings::{bpf_sock_addr, xdp_action, BPF_F_NO_PREALLOC, TC_ACT_UNSPEC},
    helpers::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_coarse_ns,
        bpf_ktime_get_ns, bpf_set_retval,
    },
    macros::{cgroup_sock_addr, classifier, map, xdp},
    maps::{lpm_trie::Key, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::{SockAddrContext, TcContext, XdpContext},
    EbpfContext as _,
};
use bosun_ebpf_abi::{
    counter_index, AffinityKey, AffinityValue, Backend, ConntrackKey, ConntrackValue,
    EndpointValue, PacketCount, PeerKey, PolicyCounters, PolicyEvent, PolicyName, PortKey,
    RevNatKey, RevNatValue, ServiceKey, ServiceValue, SlotKey, AFFINITY_MAX_ENTRIES,
    BACKEND_MAX_ENTRIES, CONNTRACK_MAX_ENTRIES, CONNTRACK_OTHER_TIMEOUT_NS,
    CONNTRACK_TCP_TIMEOUT_NS, COUNTER_MAX_ENTRIES, DIRECTION_EGRESS, DIRECTION_INGRESS,
    ENDPOINT_ISOLATED_EGRESS, ENDPOINT_ISOLATED_INGRESS, ENDPOINT_MAX_ENTRIES, EVENT_RING_BYTES,
    NODE_MAX_ENTRIES, PEER_KEY_FIXED_BITS, PEER_MAX_ENTRIES, POLICY_NAME_MAX_ENTRIES,
    PORT_KEY_FIXED_BITS, PORT_MAX_ENTRIES, PROBE_COUNT_KEY, PROTOCOL_SCTP, PROTOCOL_TCP,
    PROTOCOL_UDP, REVNAT_MAX_ENTRIES, SERVICE_FLAG_AFFINITY, SERVICE_MAX_ENTRIES, SLOT_MAX_ENTRIES,
    VERDICT_ALLOWED, VERDICT_DROPPED,
};

// The kernel decides from this string whether GPL-only helpers may be called. It matches the
// workspace's license; no program here calls a GPL-only helper.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 11] = *b"Apache-2.0\0";

/// `bosun_ebpf_abi::PROBE_COUNT_MAP`. Per-CPU, so counting needs no atomics and CPUs never
/// contend for a cache line; the loader sums the slots.
#[map]
static BOSUN_PROBE_V1: PerCpuArray<PacketCount> = PerCpuArray::with_max_entries(1, 0);

/// `bosun_ebpf_abi::PROBE_PROGRAM`: counts every packet and its length, then passes it on
/// unchanged. It exists to prove the toolchain, the loader and the attach path end to end.
#[xdp]
pub fn bosun_probe(ctx: XdpContext) -> u32 {
    if let Some(count) = BOSUN_PROBE_V1.get_ptr_mut(PROBE_COUNT_KEY) {
        // `data_end >= data` always holds in XDP; wrapping keeps the panic path out of the
        // object, which the verifier would reject.
        let len = ctx.data_end().wrapping_sub(ctx.data()) as u64;
        // SAFETY: the pointer comes from a successful lookup, so it is non-null, aligned and
        // points at this CPU's slot, valid for the whole run. XDP runs with migration disabled
        // and does not nest on a CPU, and the loader only reads the map, so nothing else holds
        // a reference to the slot while this one lives.
        let count = unsafe { &mut *count };
        count.packets = count.packets.wrapping_add(1);
        count.bytes = count.bytes.wrapping_add(len);
    }
    xdp_action::XDP_PASS
}

// ---------------------------------------------------------------------------------------------
// Service load balancing at the socket layer. The maps' layouts, and the order in which
// userspace fills them, are described in the ABI crate.
// ---------------------------------------------------------------------------------------------

/// What a cgroup `sock_addr` program returns to let the call go on (rewritten or not). The
/// kernel requires exactly this from `recvmsg4` and `getpeername4`.
const ALLOW: i32 = 1;
/// What `connect4` and `sendmsg4` return to fail the call, with the errno set beforehand by
/// `bpf_set_retval` (otherwise the caller sees `EPERM`).
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;
const NS_PER_SEC: u64 = 1_000_000_000;

// The five service maps are pinned by their loader, in the directory it chooses, and not
// declared pinned here: aya pins a map declared so under /sys/fs/bpf whenever anything loads
// this object (the probe too), which would leave pins behind and fail where bpffs is not
// mounted.

/// `bosun_ebpf_abi::SERVICE_MAP`. Not preallocated: a node has far fewer Services than the
/// maximum, and a preallocated map would hold kernel memory for all of them.
#[map]
static BOSUN_SVC_V1: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(SERVICE_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// `bosun_ebpf_abi::SLOT_MAP`; not preallocated, like the service map.
#[map]
static BOSUN_SLOT_V1: HashMap<SlotKey, u32> =
    HashMap::with_max_entries(SLOT_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// `bosun_ebpf_abi::BACKEND_MAP`; not preallocated, like the service map.
#[map]
static BOSUN_BE_V1: HashMap<u32, Backend> =
    HashMap::with_max_entries(BACKEND_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// `bosun_ebpf_abi::AFFINITY_MAP`. LRU, so clients that went away age out without userspace;
/// the kernel requires LRU maps to be preallocated.
#[map]
static BOSUN_AFF_V1: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(AFFINITY_MAX_ENTRIES, 0);

/// `bosun_ebpf_abi::REVNAT_MAP`. LRU: there is no hook at socket close to remove an entry, so
/// the oldest sockets' entries make room for new ones.
#[map]
static BOSUN_RNAT_V1: LruHashMap<RevNatKey, RevNatValue> =
    LruHashMap::with_max_entries(REVNAT_MAX_ENTRIES, 0);

/// `bosun_ebpf_abi::CONNECT4_PROGRAM`: TCP and connected UDP to a Service frontend go to one of
/// its backends. Runs on every IPv4 `connect` on the node, so a miss costs one lookup.
#[cgroup_sock_addr(connect4)]
pub fn bosun_connect4(ctx: SockAddrContext) -> i32 {
    to_backend(&ctx)
}

/// `bosun_ebpf_abi::SENDMSG4_PROGRAM`: a datagram that an unconnected UDP socket sends to a
/// Service frontend goes to one of its backends.
#[cgroup_sock_addr(sendmsg4)]
pub fn bosun_sendmsg4(ctx: SockAddrContext) -> i32 {
    to_backend(&ctx)
}

/// `bosun_ebpf_abi::RECVMSG4_PROGRAM`: a datagram from a backend appears to come from the
/// frontend the socket sent to, so a client that checks the reply's source accepts it.
#[cgroup_sock_addr(recvmsg4)]
pub fn bosun_recvmsg4(ctx: SockAddrContext) -> i32 {
    to_frontend(&ctx);
    ALLOW
}

/// `bosun_ebpf_abi::GETPEERNAME4_PROGRAM`: a socket connected to a backend reports the frontend
/// it asked for as its peer.
#[cgroup_sock_addr(getpeername4)]
pub fn bosun_peername4(ctx: SockAddrContext) -> i32 {
    to_frontend(&ctx);
    ALLOW
}

/// The context's fields this module uses. Each is read and written as one aligned 4-byte
/// access, the only size the verifier accepts for them; volatile stops the compiler from
/// merging two fields into one 8-byte load.
#[derive(Clone, Copy)]
enum Field {
    UserIp4,
    UserPort,
    Protocol,
}

fn field(ctx: &SockAddrContext, field: Field) -> *mut u32 {
    let sock_addr: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: only computes a field's address inside the context (no dereference).
    unsafe {
        match field {
            Field::UserIp4 => &raw mut (*sock_addr).user_ip4,
            Field::UserPort => &raw mut (*sock_addr).user_port,
            Field::Protocol => &raw mut (*sock_addr).protocol,
        }
    }
}

fn read(ctx: &SockAddrContext, which: Field) -> u32 {
    // SAFETY: the kernel hands the program a valid, aligned context that lives for the whole
    // run, and every field read here is readable in all four attach types.
    unsafe { field(ctx, which).read_volatile() }
}

fn write(ctx: &SockAddrContext, which: Field, value: u32) {
    // SAFETY: as in `read`; `user_ip4` and `user_port`, the only fields written, are writable
    // in all four attach types.
    unsafe { field(ctx, which).write_volatile(value) }
}

/// `user_ip4` holds the address's network-order bytes in memory order, as the maps do.
fn address(ctx: &SockAddrContext) -> [u8; 4] {
    read(ctx, Field::UserIp4).to_ne_bytes()
}

/// `user_port` is a `u32` whose low 16 bits hold the port's network-order bytes in memory
/// order.
fn port(ctx: &SockAddrContext) -> [u8; 2] {
    (read(ctx, Field::UserPort) as u16).to_ne_bytes()
}

fn set_destination(ctx: &SockAddrContext, address: [u8; 4], port: [u8; 2]) {
    write(ctx, Field::UserIp4, u32::from_ne_bytes(address));
    write(ctx, Field::UserPort, u32::from(u16::from_ne_bytes(port)));
}

/// Copies a value out of a map lookup's result.
fn copied<V: Copy>(value: Option<*const V>) -> Option<V> {
    // SAFETY: a successful lookup returns a pointer to an aligned value that stays allocated
    // until the program returns. Userspace may replace the value meanwhile; the types here are
    // plain integers, valid with any bits, and every id read is followed to its own lookup, so
    // a torn read at worst sends one connection to another live backend.
    value.map(|value| unsafe { value.read() })
}

/// `connect4` and `sendmsg4`: sends a call addressed to a Service frontend to a backend,
/// refuses it if the Service has none, and lets anything else through untouched. Inlined so
/// that the miss path, taken by nearly every call on the node, costs no function call.
#[inline(always)]
fn to_backend(ctx: &SockAddrContext) -> i32 {
    let protocol = read(ctx, Field::Protocol);
    let protocol = if protocol == u32::from(PROTOCOL_TCP) {
        PROTOCOL_TCP
    } else if protocol == u32::from(PROTOCOL_UDP) {
        PROTOCOL_UDP
    } else {
        return ALLOW;
    };
    let frontend = ServiceKey {
        address: address(ctx),
        port: port(ctx),
        protocol,
        _pad: 0,
    };
    let Some(service) = copied(BOSUN_SVC_V1.get_ptr(frontend)) else {
        return ALLOW;
    };
    if service.count == 0 {
        // kube-proxy's REJECT: the caller fails at once instead of timing out.
        // SAFETY: a helper call with a plain integer argument; allowed in connect4 and sendmsg4.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return REJECT;
    }
    // A slot or backend that vanished under a concurrent update leaves the call untouched
    // rather than failing it; userspace's write order makes that window rare.
    let Some(backend) = choose_backend(ctx, &service) else {
        return ALLOW;
    };
    // SAFETY: a helper call on this program's own context.
    let socket_cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let reverse = RevNatKey {
        socket_cookie,
        address: backend.address,
        port: backend.port,
        _pad: [0; 2],
    };
    let frontend_addr = RevNatValue {
        address: frontend.address,
        port: frontend.port,
        _pad: [0; 2],
    };
    // An LRU map makes room rather than fail; should it fail anyway, the connection still
    // works and only reports the backend as its peer.
    let _ = BOSUN_RNAT_V1.insert(reverse, frontend_addr, 0);
    set_destination(ctx, backend.address, backend.port);
    ALLOW
}

/// The backend for this call: the client's earlier one while its affinity lasts and the backend
/// still exists, otherwise a random slot's.
fn choose_backend(ctx: &SockAddrContext, service: &ServiceValue) -> Option<Backend> {
    if service.flags & SERVICE_FLAG_AFFINITY == 0 {
        return random_backend(service).map(|(_, backend)| backend);
    }
    let client = AffinityKey {
        // SAFETY: a helper call on this program's own context.
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        service: service.id,
        _pad: 0,
    };
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // At most u32::MAX * 10^9 < 2^63: cannot overflow.
    let timeout = u64::from(service.affinity_timeout) * NS_PER_SEC;
    let stuck = copied(BOSUN_AFF_V1.get_ptr(client))
        // Another CPU may have written a later time after this one read the clock.
        .filter(|stuck| now.saturating_sub(stuck.last_used_ns) < timeout)
        .and_then(|stuck| Some((stuck.backend, copied(BOSUN_BE_V1.get_ptr(stuck.backend))?)));
    let (id, backend) = match stuck {
        Some(stuck) => stuck,
        None => random_backend(service)?,
    };
    let last_use = AffinityValue {
        backend: id,
        _pad: 0,
        last_used_ns: now,
    };
    // Failing to remember only costs the client its affinity on its next connection.
    let _ = BOSUN_AFF_V1.insert(client, last_use, 0);
    Some(backend)
}

/// A uniformly random slot's backend id and address.
fn random_backend(service: &ServiceValue) -> Option<(u32, Backend)> {
    // SAFETY: a helper call without arguments.
    let random = unsafe { bpf_get_prandom_u32() };
    // `checked_rem`: a bare `%` keeps Rust's divide-by-zero panic path, which the verifier
    // rejects.
    let slot = random.checked_rem(service.count)?;
    let id = copied(BOSUN_SLOT_V1.get_ptr(SlotKey {
        service: service.id,
        slot,
    }))?;
    let backend = copied(BOSUN_BE_V1.get_ptr(id))?;
    Some((id, backend))
}

/// `recvmsg4` and `getpeername4`: shows the frontend in place of the backend this socket was
/// sent to, if it was.
#[inline(always)]
fn to_frontend(ctx: &SockAddrContext) {
    let backend = RevNatKey {
        // SAFETY: a helper call on this program's own context.
        socket_cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        address: address(ctx),
        port: port(ctx),
        _pad: [0; 2],
    };
    if let Some(frontend) = copied(BOSUN_RNAT_V1.get_ptr(backend)) {
        set_destination(ctx, frontend.address, frontend.port);
    }
}

// ---------------------------------------------------------------------------------------------
// NetworkPolicy on each pod's host-side interface (tcx, both directions). The maps' layouts,
// and the order in which userspace fills them, are described in the ABI crate.
//
// Only IPv4 is enforced. Every other EtherType (ARP, IPv6, ...) passes, uncounted: pods here
// have IPv4 addresses only, and ARP must pass for IPv4 to work at all. A node that gave pods
// IPv6 addresses would need these programs extended first.
//
// Conntrack keys on addresses, ports and protocol only: an ICMP error about an allowed flow
// (port unreachable, fragmentation needed) is a flow of its own, with ports 0, and an isolated
// direction drops it unless a rule allows every port. So do later fragments of a datagram.
// ---------------------------------------------------------------------------------------------

/// Lets a packet through. Under tcx it means "ask the next program on the interface", and
/// pass when there is none; under clsact it means pass. Not `TC_ACT_OK`, which under tcx
/// would skip the programs of other owners attached after these.
const POLICY_ALLOW: i32 = TC_ACT_UNSPEC;
/// `TC_ACT_SHOT`. Not the binding: its type differs between the bpf target and the host.
const POLICY_DROP: i32 = 2;

/// A live flow's `last_seen_ns` is written back at most this often: a write per packet would
/// make every CPU that carries the flow fight over the entry's cache line.
const CONNTRACK_REFRESH_NS: u64 = NS_PER_SEC;

/// Prefix lengths of the two lookups: every bit of the key.
const PEER_LOOKUP_BITS: u32 = PEER_KEY_FIXED_BITS + 32;
const PORT_LOOKUP_BITS: u32 = PORT_KEY_FIXED_BITS + 16;

/// `bosun_ebpf_abi::ENDPOINT_MAP`. Not preallocated: a node has far fewer pods than the
/// maximum.
#[map]
static BOSUN_EP_V1: HashMap<u32, EndpointValue> =
    HashMap::with_max_entries(ENDPOINT_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// `bosun_ebpf_abi::PEER_MAP`. aya adds `BPF_F_NO_PREALLOC`, without which the kernel refuses
/// an LPM trie.
#[map]
static BOSUN_PEER_V1: LpmTrie<PeerKey, u32> = LpmTrie::with_max_entries(PEER_MAX_ENTRIES, 0);

/// `bosun_ebpf_abi::PORT_MAP`; an LPM trie like the peer map.
#[map]
static BOSUN_PORT_V1: LpmTrie<PortKey, u32> = LpmTrie::with_max_entries(PORT_MAX_ENTRIES, 0);

/// `bosun_ebpf_abi::CONNTRACK_MAP`. LRU, so that flows nobody closes age out without
/// userspace, and a full map forgets the oldest flow (whose next packet is judged afresh)
/// rather than refusing a new one. The kernel requires LRU maps to be preallocated.
#[map]
static BOSUN_CT_V1: LruHashMap<ConntrackKey, ConntrackValue> =
    LruHashMap::with_max_entries(CONNTRACK_MAX_ENTRIES, 0);

/// `bosun_ebpf_abi::NODE_MAP`; not preallocated, like the endpoint map.
#[map]
static BOSUN_NODE_V1: HashMap<[u8; 4], u32> =
    HashMap::with_max_entries(NODE_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// `bosun_ebpf_abi::COUNTER_MAP`. Per-CPU, so counting needs no atomics; an array, whose
/// lookups the kernel inlines, indexed by the endpoint entry's slot.
#[map]
static BOSUN_PCNT_V1: PerCpuArray<PolicyCounters> =
    PerCpuArray::with_max_entries(COUNTER_MAX_ENTRIES, 0);

/// `bosun_ebpf_abi::EVENT_MAP`.
#[map]
static BOSUN_PEVT_V1: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

/// `bosun_ebpf_abi::POLICY_NAME_MAP`: only userspace reads it, but it lives here so that the
/// object declares every map of the policy ABI and the loader pins it with the others.
#[map]
static BOSUN_PNAME_V1: HashMap<u32, PolicyName> =
    HashMap::with_max_entries(POLICY_NAME_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// `bosun_ebpf_abi::POLICY_INGRESS_PROGRAM`, on the host side's egress: packets going into the
/// pod.
#[classifier]
pub fn bosun_pol_in(ctx: TcContext) -> i32 {
    enforce(&ctx, DIRECTION_INGRESS)
}

/// `bosun_ebpf_abi::POLICY_EGRESS_PROGRAM`, on the host side's ingress: packets coming out of
/// the pod.
#[classifier]
pub fn bosun_pol_out(ctx: TcContext) -> i32 {
    enforce(&ctx, DIRECTION_EGRESS)
}

/// What policy looks at in an IPv4 packet. Addresses and ports are network-order bytes, as
/// the maps hold them.
struct Packet {
    source: [u8; 4],
    destination: [u8; 4],
    /// 0 for protocols without ports and for fragments after the first.
    source_port: [u8; 2],
    destination_port: [u8; 2],
    protocol: u8,
    /// A TCP SYN without ACK: a connection's first packet.
    syn: bool,
    /// TCP's flags byte; 0 for other protocols.
    tcp_flags: u8,
    /// Where the transport header begins, from the start of the frame.
    transport: u16,
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPV4_MIN_HLEN: usize = 20;
const IPV4_FRAGMENT_OFFSET: u16 = 0x1fff;
const TCP_FLAGS_OFFSET: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The packet's IPv4 header and ports, or `None` for anything that is not IPv4 or whose IPv4
/// header is unreadable. The latter passes too: the receiving stack drops a malformed header
/// itself, and it can carry no transport payload that a policy would have to judge.
///
/// Reads the headers in place when they are in the linear part of the buffer, as they nearly
/// always are; otherwise [`parse_loaded`] copies them out.
#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Packet> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + ETH_HLEN + IPV4_MIN_HLEN > end {
        return parse_loaded(ctx);
    }
    let at = |offset: usize| -> u8 {
        // SAFETY: every offset passed is below ETH_HLEN + IPV4_MIN_HLEN, checked above to lie
        // within the packet's linear data.
        unsafe { *((start + offset) as *const u8) }
    };
    if u16::from_be_bytes([at(12), at(13)]) != ETH_P_IP {
        return None;
    }
    let version_ihl = at(ETH_HLEN);
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < IPV4_MIN_HLEN {
        return None;
    }
    let protocol = at(ETH_HLEN + 9);
    let mut packet = Packet {
        source: [
            at(ETH_HLEN + 12),
            at(ETH_HLEN + 13),
            at(ETH_HLEN + 14),
            at(ETH_HLEN + 15),
        ],
        destination: [
            at(ETH_HLEN + 16),
            at(ETH_HLEN + 17),
            at(ETH_HLEN + 18),
            at(ETH_HLEN + 19),
        ],
        source_port: [0; 2],
        destination_port: [0; 2],
        protocol,
        syn: false,
        tcp_flags: 0,
        transport: (ETH_HLEN + header_len) as u16,
    };
    let fragment = u16::from_be_bytes([at(ETH_HLEN + 6), at(ETH_HLEN + 7)]);
    if fragment & IPV4_FRAGMENT_OFFSET == 0
        && matches!(protocol, PROTOCOL_TCP | PROTOCOL_UDP | PROTOCOL_SCTP)
    {
        let transport = start + ETH_HLEN + header_len;
        // Each check against `end` uses a constant length, which the verifier follows.
        if protocol == PROTOCOL_TCP {
            if transport + TCP_FLAGS_OFFSET + 1 > end {
                return parse_loaded(ctx);
            }
            // SAFETY: the 14 bytes from `transport` are within the linear data, checked above.
            let flags = unsafe { *((transport + TCP_FLAGS_OFFSET) as *const u8) };
            packet.syn = flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
            packet.tcp_flags = flags;
        } else if transport + 4 > end {
            return parse_loaded(ctx);
        }
        // SAFETY: at least the 4 bytes from `transport` are within the linear data, checked
        // above for either protocol.
        let ports = unsafe { *(transport as *const [u8; 4]) };
        packet.source_port = [ports[0], ports[1]];
        packet.destination_port = [ports[2], ports[3]];
    }
    Some(packet)
}

/// [`parse`] for headers that reach beyond the linear data: every read goes through
/// `bpf_skb_load_bytes`, which checks bounds in the kernel and also reaches the rest of the
/// buffer.
#[inline(never)]
fn parse_loaded(ctx: &TcContext) -> Option<Packet> {
    let ethertype: [u8; 2] = ctx.load(12).ok()?;
    if u16::from_be_bytes(ethertype) != ETH_P_IP {
        return None;
    }
    let version_ihl: u8 = ctx.load(ETH_HLEN).ok()?;
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < IPV4_MIN_HLEN {
        return None;
    }
    let fragment: [u8; 2] = ctx.load(ETH_HLEN + 6).ok()?;
    let protocol: u8 = ctx.load(ETH_HLEN + 9).ok()?;
    let mut packet = Packet {
        source: ctx.load(ETH_HLEN + 12).ok()?,
        destination: ctx.load(ETH_HLEN + 16).ok()?,
        source_port: [0; 2],
        destination_port: [0; 2],
        protocol,
        syn: false,
        tcp_flags: 0,
        transport: (ETH_HLEN + header_len) as u16,
    };
    // Only a first fragment carries the transport header; later ones are judged with port 0
    // (so an isolated direction drops them unless a rule allows every port).
    let first_fragment = u16::from_be_bytes(fragment) & IPV4_FRAGMENT_OFFSET == 0;
    if first_fragment && matches!(protocol, PROTOCOL_TCP | PROTOCOL_UDP | PROTOCOL_SCTP) {
        let transport = ETH_HLEN + header_len;
        // TCP, UDP and SCTP all begin with the source and destination port. A header too short
        // to hold them leaves the ports 0, which no port rule but "every port" matches.
        if let Ok(ports) = ctx.load::<[u8; 4]>(transport) {
            packet.source_port = [ports[0], ports[1]];
            packet.destination_port = [ports[2], ports[3]];
        }
        if protocol == PROTOCOL_TCP {
            if let Ok(flags) = ctx.load::<u8>(transport + TCP_FLAGS_OFFSET) {
                packet.syn = flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
                packet.tcp_flags = flags;
            }
        }
    }
    Some(packet)
}

/// The verdict on one packet of the endpoint whose host-side interface this is, `direction`
/// being the pod's point of view. Inlined so that each program is one straight function.
#[inline(always)]
fn enforce(ctx: &TcContext, direction: u8) -> i32 {
    let Some(packet) = parse(ctx) else {
        return POLICY_ALLOW;
    };
    // SAFETY: reads a field of the context the kernel passed, valid for the whole run and
    // readable by tc programs.
    let endpoint = unsafe { (*ctx.skb.skb).ifindex };
    // The coarse clock (the last tick's time) is enough for idle timeouts of minutes and
    // hours, and costs a fraction of the precise one, which only events read.
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let egress = direction == DIRECTION_EGRESS;
    let (local, remote, local_port, remote_port) = if egress {
        let p = &packet;
        (p.source, p.destination, p.source_port, p.destination_port)
    } else {
        let p = &packet;
        (p.destination, p.source, p.destination_port, p.source_port)
    };

    // An interface the programs are attached to but userspace does not know (yet, or any
    // more): failing closed never exposes a pod that should be isolated. Not counted: counters
    // belong to known endpoints.
    let Some(config) = copied(BOSUN_EP_V1.get_ptr(endpoint)) else {
        report(&packet, endpoint, direction, VERDICT_DROPPED, 0);
        return POLICY_DROP;
    };
    let slot = config.counters;
    let flow = ConntrackKey {
        endpoint,
        local_address: local,
        remote_address: remote,
        local_port,
        remote_port,
        protocol: packet.protocol,
        _pad: [0; 3],
    };
    // A SYN is a new connection even when its ports match a remembered flow: a client that
    // reuses a port must not inherit the verdict on an older connection.
    if !packet.syn && is_tracked(&flow, now) {
        return verdict(slot, direction, true);
    }
    // Kubernetes requires traffic between a pod and its own node (kubelet's probes) to pass
    // whatever the policies say. Looked up after conntrack, which passes most packets: node
    // flows are never tracked, so the order changes no verdict.
    if BOSUN_NODE_V1.get_ptr(remote).is_some() {
        return verdict(slot, direction, true);
    }
    let (isolated, isolating_policy) = if egress {
        (
            config.flags & ENDPOINT_ISOLATED_EGRESS,
            config.egress_policy,
        )
    } else {
        (
            config.flags & ENDPOINT_ISOLATED_INGRESS,
            config.ingress_policy,
        )
    };
    if isolated == 0 {
        // Remembered even though this direction needs no verdict: the replies come back the
        // other way, which may be isolated.
        track(&flow, direction, now);
        return verdict(slot, direction, true);
    }
    match allowing_policy(endpoint, direction, remote, &packet) {
        Some(policy) => {
            track(&flow, direction, now);
            report(&packet, endpoint, direction, VERDICT_ALLOWED, policy);
            verdict(slot, direction, true)
        }
        None => {
            report(
                &packet,
                endpoint,
                direction,
                VERDICT_DROPPED,
                isolating_policy,
            );
            verdict(slot, direction, false)
        }
    }
}

/// Whether the flow was allowed before and has not been idle past its timeout; refreshes its
/// last sighting if that is more than [`CONNTRACK_REFRESH_NS`] old.
#[inline(always)]
fn is_tracked(flow: &ConntrackKey, now: u64) -> bool {
    let Some(entry) = BOSUN_CT_V1.get_ptr_mut(flow) else {
        return false;
    };
    // SAFETY: a successful lookup returns an aligned pointer to the value, which stays
    // allocated until the program returns. Other CPUs may write the same field meanwhile; an
    // aligned 8-byte access is never torn, and any value written is a recent time. Should the
    // LRU recycle the entry for another flow at that moment, that flow only looks fresher.
    let last_seen = unsafe { core::ptr::addr_of!((*entry).last_seen_ns).read_volatile() };
    let timeout = if flow.protocol == PROTOCOL_TCP {
        CONNTRACK_TCP_TIMEOUT_NS
    } else {
        CONNTRACK_OTHER_TIMEOUT_NS
    };
    // Another CPU may have written a later time after this one read the clock.
    let idle = now.saturating_sub(last_seen);
    if idle >= timeout {
        return false;
    }
    if idle > CONNTRACK_REFRESH_NS {
        // SAFETY: as above.
        unsafe { core::ptr::addr_of_mut!((*entry).last_seen_ns).write_volatile(now) };
    }
    true
}

fn track(flow: &ConntrackKey, direction: u8, now: u64) {
    let entry = ConntrackValue {
        last_seen_ns: now,
        direction,
        _pad: [0; 7],
    };
    // An LRU map makes room rather than fail; should it fail anyway, the next packet of the
    // flow is judged again, with the same result.
    let _ = BOSUN_CT_V1.insert(flow, entry, 0);
}

/// The policy that allows this new flow of an isolated direction, if any: the peer's address
/// gives a port class, and the class with the protocol and destination port gives the policy.
#[inline(always)]
fn allowing_policy(endpoint: u32, direction: u8, remote: [u8; 4], packet: &Packet) -> Option<u32> {
    let peer = Key::new(
        PEER_LOOKUP_BITS,
        PeerKey {
            endpoint: endpoint.to_be_bytes(),
            direction,
            _pad: [0; 3],
            address: remote,
        },
    );
    let class = BOSUN_PEER_V1.get(&peer).copied()?;
    let port = Key::new(
        PORT_LOOKUP_BITS,
        PortKey {
            class: class.to_be_bytes(),
            protocol: packet.protocol,
            _pad: 0,
            port: packet.destination_port,
        },
    );
    BOSUN_PORT_V1.get(&port).copied()
}

/// Counts the packet in the endpoint's counter slot for the direction and returns what the
/// program returns.
#[inline(always)]
fn verdict(slot: u32, direction: u8, allowed: bool) -> i32 {
    if let Some(counters) = BOSUN_PCNT_V1.get_ptr_mut(counter_index(slot, direction)) {
        // SAFETY: the pointer comes from a successful lookup: non-null, aligned, this CPU's
        // slot, valid for the whole run. tc programs run with migration disabled and userspace
        // only reads or replaces the entry, so at worst an increment is lost.
        let counters = unsafe { &mut *counters };
        if allowed {
            counters.allowed = counters.allowed.wrapping_add(1);
        } else {
            counters.dropped = counters.dropped.wrapping_add(1);
        }
    }
    if allowed {
        POLICY_ALLOW
    } else {
        POLICY_DROP
    }
}

/// Emits an event; a full ring buffer loses it, never the verdict.
fn report(packet: &Packet, endpoint: u32, direction: u8, verdict: u8, policy: u32) {
    let event = PolicyEvent {
        // SAFETY: a helper call without arguments.
        time_ns: unsafe { bpf_ktime_get_ns() },
        endpoint,
        policy,
        source: packet.source,
        destination: packet.destination,
        source_port: packet.source_port,
        destination_port: packet.destination_port,
        protocol: packet.protocol,
        direction,
        verdict,
        _pad: 0,
    };
    let _ = BOSUN_PEVT_V1.output::<PolicyEvent>(&event, 0);
}

mod nodeport;

#[cfg(not(target_arch = "bpf"))]
fn main() {}

/// Any panic left in the object is an infinite loop here, which the verifier rejects at load
/// time: a program that could panic never runs.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
