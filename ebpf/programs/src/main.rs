//! bosun's kernel programs. Built only for the bpf target; on the host this is an empty binary
//! so that `cargo build --workspace` works on the stable toolchain.
//!
//! Each map's and program's symbol name is the name the loader looks up; the ABI crate holds
//! those names and the layouts, and netdp's tests check that the built object matches them.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use bosun_ebpf_abi::{PacketCount, PROBE_COUNT_KEY};

// The kernel decides from this string whether GPL-only helpers may be called. It matches the
// workspace's license; the probe calls no GPL-only helper.
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

#[cfg(not(target_arch = "bpf"))]
fn main() {}

/// Any panic left in the object is an infinite loop here, which the verifier rejects at load
/// time: a program that could panic never runs.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
