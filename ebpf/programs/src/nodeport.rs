//! Traffic from outside the node: tc programs on the node's external interfaces. The maps'
//! layouts and the shape of a flow's two NAT entries are described in the ABI crate.
//!
//! Ingress takes new flows to external frontends (picking a backend by Maglev), packets of
//! known flows, and replies of flows SNATed to other nodes' backends; egress takes the
//! replies of local backends, whose packets the kernel forwarded out of the node. An XDP
//! variant of ingress (in [`xdp`]) takes the same decisions from the same maps, before it.

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_F_MARK_MANGLED_0, BPF_F_NO_PREALLOC, BPF_F_PSEUDO_HDR, BPF_F_RECOMPUTE_CSUM,
        BPF_NOEXIST, TC_ACT_UNSPEC,
    },
    helpers::{
        bpf_get_prandom_u32, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_redirect,
        bpf_skb_change_tail,
    },
    macros::{classifier, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TcContext,
};
use bosun_ebpf_abi::{
    flow_hash, ExternalBackend, Hop, HopKey, MaglevTable, NatKey, NatValue, NodePortConfig,
    NodePortEvent, ServiceKey, EXTERNAL_BACKEND_LOCAL, HOP_MAX_ENTRIES, HOP_TIMEOUT_NS,
    MAGLEV_MAX_ENTRIES, MAGLEV_TABLE_SIZE, NAT_CLOSING, NAT_EGRESS, NAT_MAX_ENTRIES, NAT_REPLY,
    NAT_SNAT, NODEPORT_EVENT_NEW_FLOW, NODEPORT_EVENT_NO_BACKEND, NODEPORT_EVENT_NO_SNAT,
    NODEPORT_EVENT_REFUSED, NODEPORT_EVENT_RING_BYTES, NODEPORT_EVENT_TABLE_REFUSED, PROTOCOL_TCP,
    PROTOCOL_UDP, SERVICE_FLAG_EXTERNAL, SNAT_PORT_MAX, SNAT_PORT_MIN,
};

use crate::{copied, parse, Packet, BOSUN_SVC_V1, ETH_HLEN, ETH_P_IP, IPV4_MIN_HLEN, NS_PER_SEC};

mod xdp;

/// Lets the packet go on (to the next program under tcx).
const PASS: i32 = TC_ACT_UNSPEC;
/// `TC_ACT_SHOT`.
const DROP: i32 = 2;

/// A flow's `last_seen_ns` is written back at most this often.
const REFRESH_NS: u64 = NS_PER_SEC;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;

/// How many SNAT ports a new flow tries before it is dropped (its retransmission tries again).
const SNAT_TRIES: u32 = 16;
/// Step between two tries: a prime, so the tries land on distinct ports.
const SNAT_STEP: u32 = 1031;

/// Offsets in the IPv4 header.
const IP_CHECK: usize = ETH_HLEN + 10;
const IP_SOURCE: usize = ETH_HLEN + 12;
const IP_DESTINATION: usize = ETH_HLEN + 16;
/// Offsets of the checksum in the TCP and UDP headers.
const TCP_CHECK: usize = 16;
const UDP_CHECK: usize = 6;
/// The transport header, right after an IPv4 header without options; the end of a TCP header
/// without options and of a UDP header; and where each keeps its checksum, from the frame's
/// start.
const TRANSPORT: usize = ETH_HLEN + IPV4_MIN_HLEN;
const TCP_END: usize = TRANSPORT + 20;
const UDP_END: usize = TRANSPORT + 8;
const TCP_CHECK_AT: usize = TRANSPORT + TCP_CHECK;
const UDP_CHECK_AT: usize = TRANSPORT + UDP_CHECK;

/// `bosun_ebpf_abi::MAGLEV_MAP`; written by the service reconciler with the service maps.
#[map]
static BOSUN_MAG_V1: HashMap<u32, MaglevTable> =
    HashMap::with_max_entries(MAGLEV_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// `bosun_ebpf_abi::NAT_MAP`. LRU, so that a flood of new flows evicts the oldest rather than
/// fill it; the kernel requires LRU maps to be preallocated.
#[map]
static BOSUN_NAT_V1: LruHashMap<NatKey, NatValue> =
    LruHashMap::with_max_entries(NAT_MAX_ENTRIES, 0);

/// `bosun_ebpf_abi::HOP_MAP`. LRU: an address not seen for long gives way.
#[map]
static BOSUN_NPHOP_V1: LruHashMap<HopKey, Hop> = LruHashMap::with_max_entries(HOP_MAX_ENTRIES, 0);

/// `bosun_ebpf_abi::NODEPORT_CONFIG_MAP`.
#[map]
static BOSUN_NPCFG_V1: Array<NodePortConfig> = Array::with_max_entries(1, 0);

/// The refusals each CPU sent in the current second (see [`refusal_allowed`]). Not pinned:
/// a restart starts the count again.
#[map]
static BOSUN_NPREF_V1: PerCpuArray<RefusalWindow> = PerCpuArray::with_max_entries(1, 0);

/// `bosun_ebpf_abi::NODEPORT_EVENT_MAP`.
#[map]
static BOSUN_NPEVT_V1: RingBuf = RingBuf::with_byte_size(NODEPORT_EVENT_RING_BYTES, 0);

/// `bosun_ebpf_abi::NODEPORT_INGRESS_PROGRAM`.
#[classifier]
pub fn bosun_np_in(ctx: TcContext) -> i32 {
    from_outside(&ctx)
}

/// `bosun_ebpf_abi::NODEPORT_EGRESS_PROGRAM`.
#[classifier]
pub fn bosun_np_out(ctx: TcContext) -> i32 {
    to_outside(&ctx)
}

#[inline(always)]
fn from_outside(ctx: &TcContext) -> i32 {
    let Some(packet) = parse(ctx) else {
        return PASS;
    };
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    match take(&packet, now) {
        Taken::Pass => PASS,
        Taken::Drop => DROP,
        Taken::Refuse => refuse(ctx, &packet, now),
        Taken::Rewrite(to) => rewrite(ctx, &packet, &to),
    }
}

/// What becomes of a packet that arrived from outside, as both the tc program and the XDP one
/// decide it.
enum Taken {
    /// Not a flow from outside, or a reply the egress side rewrites: the stack has it as it is.
    Pass,
    /// Dropped, and reported so.
    Drop,
    /// To a Service without endpoints: refused (by the tc program, which can grow the packet).
    Refuse,
    /// A packet of a flow (new or known, its entry refreshed), to be rewritten to this tuple.
    Rewrite(NatValue),
}

/// Takes a packet from outside: a packet of a known flow gets its entry's tuple; a first
/// packet to an external frontend gets a backend picked by Maglev and its flow's entries
/// written (with its SNAT stage for a backend on another node).
#[inline(always)]
fn take(packet: &Packet, now: u64) -> Taken {
    if packet.protocol != PROTOCOL_TCP && packet.protocol != PROTOCOL_UDP {
        return Taken::Pass;
    }
    let key = key_of(packet);
    if let Some(entry) = BOSUN_NAT_V1.get_ptr_mut(key) {
        // SAFETY: a successful lookup's pointer to a plain-integer value, valid until return;
        // a concurrent write at worst tears the timestamp or the flags, both repaired by the
        // next packet.
        let value = unsafe { entry.read() };
        if value.flags & NAT_EGRESS != 0 {
            return Taken::Pass;
        }
        refresh(entry, &value, packet.tcp_flags, now);
        return Taken::Rewrite(value);
    }
    let frontend = ServiceKey {
        address: packet.destination,
        port: packet.destination_port,
        protocol: packet.protocol,
        _pad: 0,
    };
    let Some(service) = copied(BOSUN_SVC_V1.get_ptr(frontend)) else {
        return Taken::Pass;
    };
    if service.flags & SERVICE_FLAG_EXTERNAL == 0 {
        return Taken::Pass;
    }
    // No endpoint at all (the count is the Cluster policy's, which node-originated traffic
    // uses whatever the traffic policies): kube-proxy rejects.
    if service.count == 0 {
        return Taken::Refuse;
    }
    // None on this node under `externalTrafficPolicy: Local`: kube-proxy drops.
    let Some(table) = BOSUN_MAG_V1.get_ptr(service.id) else {
        return dropped(packet, None, NODEPORT_EVENT_NO_BACKEND);
    };
    let hash = flow_hash(packet.source, packet.source_port, packet.protocol);
    let index = (hash % MAGLEV_TABLE_SIZE as u32) as usize;
    // The compiler knows the remainder is in range and would drop the bounds check below,
    // computing it in a way the verifier cannot follow; read back, the index is checked.
    // SAFETY: a read of a local.
    let index = unsafe { core::ptr::read_volatile(&index) };
    // SAFETY: as above; the entry is copied out at once.
    let Some(backend) = (unsafe { (*table).entries.get(index).copied() }) else {
        return dropped(packet, None, NODEPORT_EVENT_NO_BACKEND);
    };
    if backend.address == [0; 4] {
        return dropped(packet, None, NODEPORT_EVENT_NO_BACKEND);
    }
    let dnat = NatValue {
        source: packet.source,
        destination: backend.address,
        source_port: packet.source_port,
        destination_port: backend.port,
        flags: 0,
        _pad: [0; 3],
        last_seen_ns: now,
    };
    // The SNAT stage first: without a free port the flow is not taken at all.
    let mut snat_port = [0; 2];
    if backend.flags & EXTERNAL_BACKEND_LOCAL == 0 {
        match snat(packet, &dnat, now) {
            Some(port) => snat_port = port,
            None => return dropped(packet, Some(&backend), NODEPORT_EVENT_NO_SNAT),
        }
    }
    let reply = NatValue {
        source: packet.destination,
        destination: packet.source,
        source_port: packet.destination_port,
        destination_port: packet.source_port,
        flags: NAT_REPLY | NAT_EGRESS,
        _pad: [0; 3],
        last_seen_ns: now,
    };
    let any = u64::from(BPF_ANY);
    if BOSUN_NAT_V1
        .insert(dnat.reverse_key(packet.protocol), reply, any)
        .is_err()
        || BOSUN_NAT_V1.insert(key, dnat, any).is_err()
    {
        return dropped(packet, Some(&backend), NODEPORT_EVENT_TABLE_REFUSED);
    }
    report(packet, Some(&backend), snat_port, NODEPORT_EVENT_NEW_FLOW);
    Taken::Rewrite(dnat)
}

/// The length of a refusal: Ethernet, IPv4 and ICMP headers, then what it quotes of the
/// packet refused (its IPv4 header and the first 8 bytes of its transport header, RFC 792).
const REFUSAL_LEN: usize = ETH_HLEN + IPV4_MIN_HLEN + ICMP_HLEN + QUOTED_LEN;
const ICMP_HLEN: usize = 8;
const QUOTED_LEN: usize = IPV4_MIN_HLEN + 8;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
const PROTOCOL_ICMP: u8 = 1;

/// How many refusals each CPU sends in a second at the most: the kernel's own ICMP errors,
/// kube-proxy's REJECT among them, are bounded by `icmp_msgs_per_sec` (1000 by default), so a
/// flood to a Service without endpoints is not reflected at line rate. Beyond it, dropped.
const REFUSALS_PER_SECOND: u32 = 1000;

/// A CPU's count of refusals since `start_ns`.
#[derive(Clone, Copy)]
struct RefusalWindow {
    start_ns: u64,
    count: u32,
}

/// Whether one more refusal fits this CPU's second, counting it if so.
#[inline(always)]
fn refusal_allowed(now: u64) -> bool {
    let Some(window) = BOSUN_NPREF_V1.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's own slot, valid until return; nothing else runs on this CPU meanwhile.
    let window = unsafe { &mut *window };
    if now.wrapping_sub(window.start_ns) >= NS_PER_SEC {
        window.start_ns = now;
        window.count = 0;
    }
    if window.count >= REFUSALS_PER_SECOND {
        return false;
    }
    window.count += 1;
    true
}

/// kube-proxy's REJECT of a packet to a Service without endpoints (iptables' default
/// `icmp-port-unreachable`): the packet is rewritten in place into an ICMP port unreachable
/// from the address it was sent to, and sent back out of the interface it came in by, so the
/// client fails at once (`ECONNREFUSED`) instead of retrying into silence. A packet with IP
/// options, one beyond [`REFUSALS_PER_SECOND`], or one the rewrite fails on is dropped, and
/// reported so.
#[inline(always)]
fn refuse(ctx: &TcContext, packet: &Packet, now: u64) -> i32 {
    let drop = || {
        report(packet, None, [0; 2], NODEPORT_EVENT_NO_BACKEND);
        DROP
    };
    if usize::from(packet.transport) != TRANSPORT || !refusal_allowed(now) {
        return drop();
    }
    let Ok(macs) = ctx.load::<[u8; 12]>(0) else {
        return drop();
    };
    let Ok(quoted) = ctx.load::<[u8; QUOTED_LEN]>(ETH_HLEN) else {
        return drop();
    };
    // SAFETY: the context's own socket buffer, with a length within what the helper accepts.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, REFUSAL_LEN as u32, 0) } != 0 {
        return drop();
    }
    let mut frame = [0u8; REFUSAL_LEN];
    // Back the way it came: the sender's MAC address is the next hop's.
    frame[..6].copy_from_slice(&macs[6..]);
    frame[6..12].copy_from_slice(&macs[..6]);
    frame[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
    let ip = ETH_HLEN;
    frame[ip] = 0x45;
    // IPTOS_PREC_INTERNETCONTROL, as the kernel's own ICMP errors.
    frame[ip + 1] = 0xc0;
    frame[ip + 2..ip + 4].copy_from_slice(&((REFUSAL_LEN - ETH_HLEN) as u16).to_be_bytes());
    frame[ip + 8] = 64;
    frame[ip + 9] = PROTOCOL_ICMP;
    frame[ip + 12..ip + 16].copy_from_slice(&packet.destination);
    frame[ip + 16..ip + 20].copy_from_slice(&packet.source);
    let check = checksum(&frame[ip..ip + IPV4_MIN_HLEN]);
    frame[ip + 10..ip + 12].copy_from_slice(&check);
    let icmp = ip + IPV4_MIN_HLEN;
    frame[icmp] = ICMP_DEST_UNREACH;
    frame[icmp + 1] = ICMP_PORT_UNREACH;
    frame[icmp + ICMP_HLEN..].copy_from_slice(&quoted);
    let check = checksum(&frame[icmp..]);
    frame[icmp + 2..icmp + 4].copy_from_slice(&check);
    // The receive checksum (CHECKSUM_COMPLETE) is kept true to the new bytes.
    if ctx.store(0, &frame, BPF_F_RECOMPUTE_CSUM.into()).is_err() {
        return drop();
    }
    report(packet, None, [0; 2], NODEPORT_EVENT_REFUSED);
    // SAFETY: the context's own socket buffer, read; and a helper call with plain integers.
    unsafe { bpf_redirect((*ctx.skb.skb).ifindex, 0) as i32 }
}

/// The Internet checksum of `bytes` (an even number of them), in network order.
#[inline(always)]
fn checksum(bytes: &[u8]) -> [u8; 2] {
    let mut sum = 0u32;
    for pair in bytes.chunks_exact(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    (!(sum as u16)).to_be_bytes()
}

/// Reports a packet dropped for `kind`'s reason, and drops it.
#[inline(always)]
fn dropped(packet: &Packet, backend: Option<&ExternalBackend>, kind: u8) -> Taken {
    report(packet, backend, [0; 2], kind);
    Taken::Drop
}

/// Writes an event for `bosun monitor`; a full ring buffer loses it.
#[inline(always)]
fn report(packet: &Packet, backend: Option<&ExternalBackend>, snat_port: [u8; 2], kind: u8) {
    let event = NodePortEvent {
        // SAFETY: a helper call without arguments.
        time_ns: unsafe { bpf_ktime_get_ns() },
        client: packet.source,
        frontend: packet.destination,
        backend: backend.map_or([0; 4], |b| b.address),
        client_port: packet.source_port,
        frontend_port: packet.destination_port,
        backend_port: backend.map_or([0; 2], |b| b.port),
        snat_port,
        protocol: packet.protocol,
        kind,
        _pad: [0; 6],
    };
    let _ = BOSUN_NPEVT_V1.output::<NodePortEvent>(&event, 0);
}

/// Writes the SNAT stage of a flow to a backend on another node (`dnat`: the flow after its
/// DNAT), on a free port of the node's SNAT address, and returns the port; `None` if there is
/// no address or no port.
#[inline(always)]
fn snat(packet: &Packet, dnat: &NatValue, now: u64) -> Option<[u8; 2]> {
    let config = copied(BOSUN_NPCFG_V1.get_ptr(0))?;
    if config.snat_address == [0; 4] {
        return None;
    }
    let range = u32::from(SNAT_PORT_MAX - SNAT_PORT_MIN) + 1;
    let reply = NatValue {
        source: dnat.destination,
        destination: dnat.source,
        source_port: dnat.destination_port,
        destination_port: dnat.source_port,
        flags: NAT_SNAT | NAT_REPLY,
        _pad: [0; 3],
        last_seen_ns: now,
    };
    // A random start, not the flow's hash: a SYN sent again after every try found its port
    // taken then tries other ports, where the same hash would try the same ones until the
    // table aged.
    // SAFETY: a helper call without arguments.
    let start = unsafe { bpf_get_prandom_u32() };
    for attempt in 0..SNAT_TRIES {
        let offset = start.wrapping_add(attempt.wrapping_mul(SNAT_STEP)) % range;
        let port = ((u32::from(SNAT_PORT_MIN) + offset) as u16).to_be_bytes();
        let forward = NatValue {
            source: config.snat_address,
            destination: dnat.destination,
            source_port: port,
            destination_port: dnat.destination_port,
            flags: NAT_SNAT | NAT_EGRESS,
            _pad: [0; 3],
            last_seen_ns: now,
        };
        // `BPF_NOEXIST`: a port another flow to the same backend holds is not taken over.
        let taken = BOSUN_NAT_V1.insert(
            forward.reverse_key(packet.protocol),
            reply,
            u64::from(BPF_NOEXIST),
        );
        if taken.is_ok() {
            return BOSUN_NAT_V1
                .insert(dnat.key(packet.protocol), forward, u64::from(BPF_ANY))
                .is_ok()
                .then_some(port);
        }
    }
    None
}

#[inline(always)]
fn to_outside(ctx: &TcContext) -> i32 {
    let Some(packet) = parse(ctx) else {
        return PASS;
    };
    if packet.protocol != PROTOCOL_TCP && packet.protocol != PROTOCOL_UDP {
        return PASS;
    }
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let Some(value) = egress_entry(key_of(&packet), packet.tcp_flags, now) else {
        return PASS;
    };
    learn_hop(ctx, &value, now);
    rewrite(ctx, &packet, &value)
}

/// Notes the Ethernet header the kernel gave a packet of a flow from outside leaving towards
/// `to.destination`, for the XDP program to send that flow's packets the same way; written
/// again once half its time is gone, not for every packet.
#[inline(always)]
fn learn_hop(ctx: &TcContext, to: &NatValue, now: u64) {
    // SAFETY: the context's own socket buffer, read.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let key = HopKey {
        ifindex,
        address: to.destination,
    };
    if let Some(hop) = copied(BOSUN_NPHOP_V1.get_ptr(key)) {
        if now.saturating_sub(hop.seen_ns) < HOP_TIMEOUT_NS / 2 {
            return;
        }
    }
    let Ok(macs) = ctx.load::<[u8; 12]>(0) else {
        return;
    };
    let hop = Hop {
        destination_mac: [macs[0], macs[1], macs[2], macs[3], macs[4], macs[5]],
        source_mac: [macs[6], macs[7], macs[8], macs[9], macs[10], macs[11]],
        _pad: [0; 4],
        seen_ns: now,
    };
    let _ = BOSUN_NPHOP_V1.insert(key, hop, u64::from(BPF_ANY));
}

/// The egress stage of a flow whose packet, once rewritten, has tuple `key`: the SNAT of a
/// flow to another node's backend, or the way back of a reply to the client. Its entry is
/// refreshed.
#[inline(always)]
fn egress_entry(key: NatKey, tcp_flags: u8, now: u64) -> Option<NatValue> {
    let entry = BOSUN_NAT_V1.get_ptr_mut(key)?;
    // SAFETY: as in `take`.
    let value = unsafe { entry.read() };
    if value.flags & NAT_EGRESS == 0 {
        return None;
    }
    refresh(entry, &value, tcp_flags, now);
    Some(value)
}

fn key_of(packet: &Packet) -> NatKey {
    NatKey {
        source: packet.source,
        destination: packet.destination,
        source_port: packet.source_port,
        destination_port: packet.destination_port,
        protocol: packet.protocol,
        _pad: [0; 3],
    }
}

/// Notes the packet in its flow's entry: the time (at most once a second), and a FIN or RST,
/// after which the entry goes soon; a SYN on a closing flow (the client's port reused) makes it
/// live again.
#[inline(always)]
fn refresh(entry: *mut NatValue, value: &NatValue, tcp_flags: u8, now: u64) {
    let mut flags = value.flags;
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        flags |= NAT_CLOSING;
    } else if tcp_flags & TCP_SYN != 0 {
        flags &= !NAT_CLOSING;
    }
    if flags != value.flags || now.saturating_sub(value.last_seen_ns) >= REFRESH_NS {
        // SAFETY: the pointer of a successful lookup, as in `from_outside`; two CPUs writing
        // at once leave one of two equally good values.
        unsafe {
            (*entry).flags = flags;
            (*entry).last_seen_ns = now;
        }
    }
}

/// Rewrites the packet to the entry's tuple and lets it go on.
#[inline(always)]
fn rewrite(ctx: &TcContext, packet: &Packet, to: &NatValue) -> i32 {
    let transport = usize::from(packet.transport);
    let l4 = if packet.protocol == PROTOCOL_TCP {
        L4Checksum {
            offset: transport + TCP_CHECK,
            flags: 0,
        }
    } else {
        // A UDP checksum of 0 means none, and stays 0.
        L4Checksum {
            offset: transport + UDP_CHECK,
            flags: u64::from(BPF_F_MARK_MANGLED_0),
        }
    };
    if transport == TRANSPORT {
        let in_place = if packet.protocol == PROTOCOL_TCP {
            rewrite_in_place::<TCP_END, TCP_CHECK_AT>(ctx, packet, to, l4.flags)
        } else {
            rewrite_in_place::<UDP_END, UDP_CHECK_AT>(ctx, packet, to, l4.flags)
        };
        if let Some(verdict) = in_place {
            return verdict;
        }
    }
    let written = set_address(ctx, &l4, IP_SOURCE, packet.source, to.source)
        .and_then(|()| set_address(ctx, &l4, IP_DESTINATION, packet.destination, to.destination))
        .and_then(|()| set_port(ctx, &l4, transport, packet.source_port, to.source_port))
        .and_then(|()| {
            let destination = transport + 2;
            set_port(
                ctx,
                &l4,
                destination,
                packet.destination_port,
                to.destination_port,
            )
        });
    match written {
        Ok(()) => PASS,
        Err(_) => DROP,
    }
}

/// [`rewrite`] of a packet whose IPv4 header has no options and whose headers, to `END`, are
/// in the linear data: the addresses, ports and IPv4 checksum written in place, then the
/// transport checksum by one helper call for the addresses (in its pseudo-header) and one for
/// the ports, the helper knowing how the kernel holds it (complete, partial or none). `None`
/// if the headers are not in the linear data: the caller writes field by field.
#[inline(always)]
fn rewrite_in_place<const END: usize, const CHECK: usize>(
    ctx: &TcContext,
    packet: &Packet,
    to: &NatValue,
    flags: u64,
) -> Option<i32> {
    let start = ctx.data();
    if start + END > ctx.data_end() {
        return None;
    }
    let (addresses, ports) = Delta::of_rewrite(packet, to);
    // SAFETY: the frame's linear data holds END bytes, checked above, at least UDP_END; the
    // program may write it (the kernel unclones it first).
    unsafe { write_tuple(start as *mut u8, to, &addresses) };
    // The helpers may move the packet: nothing is read through `start` after them.
    if (packet.source, packet.destination) != (to.source, to.destination)
        && ctx
            .l4_csum_replace(
                CHECK,
                0,
                addresses.as_difference(),
                flags | u64::from(BPF_F_PSEUDO_HDR),
            )
            .is_err()
    {
        return Some(DROP);
    }
    if (packet.source_port, packet.destination_port) != (to.source_port, to.destination_port)
        && ctx
            .l4_csum_replace(CHECK, 0, ports.as_difference(), flags)
            .is_err()
    {
        return Some(DROP);
    }
    Some(PASS)
}

/// Writes `to`'s addresses and ports in place in `frame`, an Ethernet frame whose IPv4 header
/// has no options, and updates the IPv4 checksum by `ip` (the addresses' change, and whatever
/// else of the header the caller changed). The transport checksum is the caller's.
///
/// # Safety
/// `frame` must point at the start of the frame, with at least [`UDP_END`] bytes writable.
#[inline(always)]
unsafe fn write_tuple(frame: *mut u8, to: &NatValue, ip: &Delta) {
    // SAFETY: every offset written is under UDP_END, which the caller vouches for; the stores
    // are of byte arrays, which have no alignment to keep.
    unsafe {
        *(frame.add(IP_SOURCE) as *mut [u8; 4]) = to.source;
        *(frame.add(IP_DESTINATION) as *mut [u8; 4]) = to.destination;
        *(frame.add(TRANSPORT) as *mut [u8; 2]) = to.source_port;
        *(frame.add(TRANSPORT + 2) as *mut [u8; 2]) = to.destination_port;
        let check = frame.add(IP_CHECK) as *mut [u8; 2];
        *check = ip.applied_to(*check);
    }
}

/// Where the transport checksum is, and the flags its updates take.
struct L4Checksum {
    offset: usize,
    flags: u64,
}

/// Writes address `to` at `offset` in place of `from`, updating the IPv4 header's checksum
/// and the transport's (whose pseudo-header holds the addresses).
fn set_address(
    ctx: &TcContext,
    l4: &L4Checksum,
    offset: usize,
    from: [u8; 4],
    to: [u8; 4],
) -> Result<(), i64> {
    if from == to {
        return Ok(());
    }
    let (old, new) = (
        u64::from(u32::from_ne_bytes(from)),
        u64::from(u32::from_ne_bytes(to)),
    );
    ctx.l4_csum_replace(
        l4.offset,
        old,
        new,
        l4.flags | u64::from(BPF_F_PSEUDO_HDR) | 4,
    )?;
    ctx.l3_csum_replace(IP_CHECK, old, new, 4)?;
    ctx.store(offset, &to, 0)
}

/// Writes port `to` at `offset` in place of `from`, updating the transport's checksum.
fn set_port(
    ctx: &TcContext,
    l4: &L4Checksum,
    offset: usize,
    from: [u8; 2],
    to: [u8; 2],
) -> Result<(), i64> {
    if from == to {
        return Ok(());
    }
    let (old, new) = (
        u64::from(u16::from_ne_bytes(from)),
        u64::from(u16::from_ne_bytes(to)),
    );
    ctx.l4_csum_replace(l4.offset, old, new, l4.flags | 2)?;
    ctx.store(offset, &to, 0)
}

/// What the 16-bit words replaced change in a header's Internet checksum, summed as RFC 1624
/// (eqn. 3) has it: the ones' complement of each old word plus each new one.
#[derive(Clone, Copy, Default)]
struct Delta(u32);

impl Delta {
    /// What rewriting `packet` to `to` changes: its addresses (in the IPv4 header and the
    /// transport's pseudo-header), and its ports.
    #[inline(always)]
    fn of_rewrite(packet: &Packet, to: &NatValue) -> (Delta, Delta) {
        let mut addresses = Delta::default();
        addresses.replace_address(packet.source, to.source);
        addresses.replace_address(packet.destination, to.destination);
        let mut ports = Delta::default();
        ports.replace(packet.source_port, to.source_port);
        ports.replace(packet.destination_port, to.destination_port);
        (addresses, ports)
    }

    /// Both changes together.
    #[inline(always)]
    fn and(&self, other: &Delta) -> Delta {
        Delta(self.0 + other.0)
    }

    #[inline(always)]
    fn replace(&mut self, from: [u8; 2], to: [u8; 2]) {
        self.0 += u32::from(!u16::from_be_bytes(from)) + u32::from(u16::from_be_bytes(to));
    }

    #[inline(always)]
    fn replace_address(&mut self, from: [u8; 4], to: [u8; 4]) {
        self.replace([from[0], from[1]], [to[0], to[1]]);
        self.replace([from[2], from[3]], [to[2], to[3]]);
    }

    /// The sum as the kernel's checksum helpers take a difference (`bpf_csum_diff`'s, with a
    /// size of 0 in `bpf_l4_csum_replace`'s flags): folded, its bytes in memory order.
    #[inline(always)]
    fn as_difference(&self) -> u64 {
        let mut sum = (self.0 & 0xffff) + (self.0 >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        u64::from(u16::from_ne_bytes((sum as u16).to_be_bytes()))
    }

    /// The checksum `check` (network order) updated.
    #[inline(always)]
    fn applied_to(&self, check: [u8; 2]) -> [u8; 2] {
        let mut sum = u32::from(!u16::from_be_bytes(check)) + self.0;
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        (!(sum as u16)).to_be_bytes()
    }
}
