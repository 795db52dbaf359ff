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
