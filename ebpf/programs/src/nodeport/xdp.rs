//! The XDP variant of the ingress program, for the fast path where the driver runs XDP: a
//! packet whose flow leaves by the interface it came in by — a client's request to a backend
//! on another node, SNATed, and that backend's reply back to the client — is rewritten in
//! full (tuple, MAC addresses, TTL) and sent straight back out by the driver (`XDP_TX`),
//! before the kernel has built a socket buffer for it.
//!
//! Where a packet goes is the kernel's to say: the tc egress program notes the Ethernet header
//! the kernel gave the flows' packets leaving towards each address (`BOSUN_NPHOP_V1`), and
//! this program sends a packet back out only where the kernel sent one to the same address by
//! the same interface within `HOP_TIMEOUT_NS`. (`bpf_fib_lookup` would ask the kernel at
//! once, but only GPL-compatible programs may call it.)
//!
//! Every other packet goes on to the tc programs, which do the rest as they do without XDP:
//! a flow to a backend on this node is DNATed here and forwarded by the kernel; anything else
//! (a flow that leaves by another interface, or whose way was not seen lately, a refusal, a
//! packet with IP options or fragmented, anything not a flow from outside) goes on as it
//! came, and the tc program decides again, finding the entries this program wrote. Both read
//! and write the same NAT table, so a flow moves between them freely.

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_ktime_get_coarse_ns, macros::xdp, programs::XdpContext,
};
use bosun_ebpf_abi::{Hop, HopKey, NatValue, HOP_TIMEOUT_NS, PROTOCOL_TCP, PROTOCOL_UDP};

use super::{
    egress_entry, take, write_tuple, Delta, Taken, BOSUN_NPHOP_V1, IP_SOURCE, TCP_CHECK_AT,
    TCP_END, TRANSPORT, UDP_CHECK_AT, UDP_END,
};
use crate::{copied, Packet, ETH_HLEN, ETH_P_IP};

/// The IPv4 header with no options: the only one this program rewrites.
const IPV4_NO_OPTIONS: u8 = 0x45;
const IP_TTL: usize = ETH_HLEN + 8;
const TCP_FLAGS: usize = TRANSPORT + 13;
/// The fragment offset and the more-fragments flag.
const IP_FRAGMENTED: u16 = 0x3fff;

/// `bosun_ebpf_abi::NODEPORT_XDP_PROGRAM`.
#[xdp]
pub fn bosun_np_xdp(ctx: XdpContext) -> u32 {
    from_outside(&ctx)
}

#[inline(always)]
fn from_outside(ctx: &XdpContext) -> u32 {
    let Some(packet) = parse(ctx) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: a helper call without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    match take(&packet, now) {
        Taken::Pass | Taken::Refuse => xdp_action::XDP_PASS,
        Taken::Drop => xdp_action::XDP_DROP,
        Taken::Rewrite(to) if packet.protocol == PROTOCOL_TCP => {
            forward::<TCP_END, TCP_CHECK_AT>(ctx, &packet, &to, now)
        }
        Taken::Rewrite(to) => forward::<UDP_END, UDP_CHECK_AT>(ctx, &packet, &to, now),
    }
}

/// The packet's tuple, for a TCP or UDP packet in an Ethernet frame with an IPv4 header
/// without options, not fragmented; `None` for anything else, which the tc program takes.
#[inline(always)]
fn parse(ctx: &XdpContext) -> Option<Packet> {
    let start = ctx.data();
    if start + UDP_END > ctx.data_end() {
        return None;
    }
    let at = |offset: usize| -> u8 {
        // SAFETY: every offset passed is below UDP_END, checked above to lie within the frame.
        unsafe { *((start + offset) as *const u8) }
    };
    if u16::from_be_bytes([at(12), at(13)]) != ETH_P_IP || at(ETH_HLEN) != IPV4_NO_OPTIONS {
        return None;
    }
    if u16::from_be_bytes([at(ETH_HLEN + 6), at(ETH_HLEN + 7)]) & IP_FRAGMENTED != 0 {
        return None;
    }
    let protocol = at(ETH_HLEN + 9);
    let tcp_flags = match protocol {
        PROTOCOL_TCP if start + TCP_END <= ctx.data_end() => {
            // SAFETY: within the frame, checked just above.
            unsafe { *((start + TCP_FLAGS) as *const u8) }
        }
        PROTOCOL_UDP => 0,
        _ => return None,
    };
    // SAFETY: the 20 bytes from IP_SOURCE are below UDP_END, checked above.
    let (addresses, ports) = unsafe {
        (
            *((start + IP_SOURCE) as *const [u8; 8]),
            *((start + TRANSPORT) as *const [u8; 4]),
        )
    };
    Some(Packet {
        source: [addresses[0], addresses[1], addresses[2], addresses[3]],
        destination: [addresses[4], addresses[5], addresses[6], addresses[7]],
        source_port: [ports[0], ports[1]],
        destination_port: [ports[2], ports[3]],
        protocol,
        syn: false,
        tcp_flags,
        transport: TRANSPORT as u16,
    })
}

/// Sends a packet of a flow on: rewritten to `first` (its ingress stage) and to its egress
/// stage if it has one, back out of the interface it came in by when the kernel lately sent
/// packets to the same address that way; otherwise to the kernel (see the module's comment).
/// `END`: the frame's length this needs; `CHECK`: where the transport checksum is.
#[inline(always)]
fn forward<const END: usize, const CHECK: usize>(
    ctx: &XdpContext,
    packet: &Packet,
    first: &NatValue,
    now: u64,
) -> u32 {
    let second = egress_entry(first.key(packet.protocol), packet.tcp_flags, now);
    let last = second.unwrap_or(*first);
    // SAFETY: the context's own metadata, read.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let key = HopKey {
        ifindex: ingress,
        address: last.destination,
    };
    if let Some(hop) = copied(BOSUN_NPHOP_V1.get_ptr(key)) {
        if now.saturating_sub(hop.seen_ns) < HOP_TIMEOUT_NS
            && rewrite::<END, CHECK>(ctx, packet, &last, Some(&hop))
        {
            return xdp_action::XDP_TX;
        }
    }
    if second.is_some() {
        // SNATed here, the packet would reach the kernel with the node's own address as its
        // source, which it drops as martian: the tc programs rewrite it on its way out.
        return xdp_action::XDP_PASS;
    }
    rewrite::<END, CHECK>(ctx, packet, first, None);
    xdp_action::XDP_PASS
}

/// Rewrites the frame to `to`'s tuple, updating the IPv4 and transport checksums, and, to be
/// sent back out (`hop`), its MAC addresses and TTL as a router does. Returns whether it was
/// written: not if the frame is shorter than `END` or its TTL would run out (the kernel then
/// sends the ICMP error).
#[inline(always)]
fn rewrite<const END: usize, const CHECK: usize>(
    ctx: &XdpContext,
    packet: &Packet,
    to: &NatValue,
    hop: Option<&Hop>,
) -> bool {
    let start = ctx.data();
    if start + END > ctx.data_end() {
        return false;
    }
    let frame = start as *mut u8;
    let (addresses, ports) = Delta::of_rewrite(packet, to);
    let mut ip = addresses;
    // SAFETY: every offset written below is under END, checked above to lie within the frame;
    // the stores are of byte arrays, which have no alignment to keep.
    unsafe {
        if let Some(hop) = hop {
            let ttl = *frame.add(IP_TTL);
            if ttl <= 1 {
                return false;
            }
            let protocol = *frame.add(IP_TTL + 1);
            ip.replace([ttl, protocol], [ttl - 1, protocol]);
            *frame.add(IP_TTL) = ttl - 1;
            *(frame as *mut [u8; 6]) = hop.destination_mac;
            *(frame.add(6) as *mut [u8; 6]) = hop.source_mac;
        }
        write_tuple(frame, to, &ip);
        let transport = addresses.and(&ports);
        let check = frame.add(CHECK) as *mut [u8; 2];
        // A UDP checksum of 0 means none, and stays 0; one that comes to 0 is sent as its
        // other form, all ones.
        if CHECK == UDP_CHECK_AT {
            if *check != [0; 2] {
                let updated = transport.applied_to(*check);
                *check = if updated == [0; 2] {
                    [0xff; 2]
                } else {
                    updated
                };
            }
        } else {
            *check = transport.applied_to(*check);
        }
    }
    true
}
