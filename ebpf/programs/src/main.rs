//! bosun's kernel programs. Built only for the bpf target; on the host this is an empty binary
//! so that `cargo build --workspace` works on the stable toolchain.
//!
//! Each map's and program's symbol name is the name the loader looks up; the ABI crate holds
//! those names and the layouts, and netdp's tests check that the built object matches them.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{
    bindings::{bpf_sock_addr, xdp_action, BPF_F_NO_PREALLOC},
    helpers::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
        bpf_set_retval,
    },
    macros::{cgroup_sock_addr, map, xdp},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::{SockAddrContext, XdpContext},
    EbpfContext as _,
};
use bosun_ebpf_abi::{
    AffinityKey, AffinityValue, Backend, PacketCount, RevNatKey, RevNatValue, ServiceKey,
    ServiceValue, SlotKey, AFFINITY_MAX_ENTRIES, BACKEND_MAX_ENTRIES, PROBE_COUNT_KEY,
    PROTOCOL_TCP, PROTOCOL_UDP, REVNAT_MAX_ENTRIES, SERVICE_FLAG_AFFINITY, SERVICE_MAX_ENTRIES,
    SLOT_MAX_ENTRIES,
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

#[cfg(not(target_arch = "bpf"))]
fn main() {}

/// Any panic left in the object is an infinite loop here, which the verifier rejects at load
/// time: a program that could panic never runs.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
