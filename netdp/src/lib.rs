//! bosun's userspace datapath: turns desired Services and NetworkPolicies into BPF map entries,
//! loads the kernel programs built from `ebpf/`, attaches them and pins them in bpffs. It knows
//! BPF maps and netlink and nothing of the API server or of pods' lifecycle.
//!
//! The kernel programs are built by this crate's build script and embedded in it, so a binary
//! that links `netdp` carries the exact programs whose ABI it was compiled against.
//!
//! Everything here needs privileges when run: loading needs `CAP_BPF` (or `CAP_SYS_ADMIN`),
//! attaching to an interface `CAP_NET_ADMIN`.

mod error;
pub mod intern;
pub mod netlink;
pub mod nodeport;
mod object;
pub mod pod_interfaces;
pub mod policy;
mod probe;
mod ring;
pub mod service;
pub mod tc;

pub use bosun_ebpf_abi::PacketCount;
pub use error::Error;
pub use probe::{ProbeCounter, XdpMode};
