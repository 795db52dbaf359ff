//! The probe: the smallest program that proves the build, the loader and the attach path work
//! on a node. It counts every packet an interface receives and passes it on.

use aya::{
    maps::{MapData, PerCpuArray},
    programs::{ProgramError, Xdp},
    Ebpf, EbpfLoader,
};
use bosun_ebpf_abi::{PacketCount, PROBE_COUNT_KEY, PROBE_COUNT_MAP, PROBE_PROGRAM};

use crate::{
    object::{shrink_unused_maps, NODEPORT_MAPS, OBJECT, POLICY_MAPS, SERVICE_MAPS},
    Error,
};

/// Where in the receive path an XDP program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver, before the kernel builds a socket buffer. Fastest; attaching fails if the
    /// driver has no XDP support (veth has it).
    Driver,
    /// In the core network stack, after the socket buffer exists. Works on every interface.
    Generic,
}

impl From<XdpMode> for aya::programs::XdpMode {
    fn from(mode: XdpMode) -> Self {
        match mode {
            XdpMode::Driver => Self::Driver,
            XdpMode::Generic => Self::Skb,
        }
    }
}

/// The probe program, loaded, and its counter. Dropping it detaches the program from every
/// interface and unloads it.
pub struct ProbeCounter {
    // Owns the program and its links, which live exactly as long as this does.
    ebpf: Ebpf,
    count: PerCpuArray<MapData, PacketCount>,
}

impl ProbeCounter {
    /// Loads the embedded object and the probe program into the kernel, attached nowhere yet.
    pub fn load() -> Result<Self, Error> {
        // The object also holds the service and policy maps; the probe uses none of them.
        let mut loader = EbpfLoader::new();
        shrink_unused_maps(&mut loader, &SERVICE_MAPS);
        shrink_unused_maps(&mut loader, &POLICY_MAPS);
        shrink_unused_maps(&mut loader, &NODEPORT_MAPS);
        let mut ebpf = loader.load(OBJECT).map_err(|source| Error::LoadObject {
            source: Box::new(source),
        })?;
        probe_program(&mut ebpf)?
            .load()
            .map_err(|source| Error::LoadProgram {
                program: PROBE_PROGRAM,
                source: Box::new(source),
            })?;
        let map = ebpf.take_map(PROBE_COUNT_MAP).ok_or(Error::MapMissing {
            map: PROBE_COUNT_MAP,
        })?;
        let count = PerCpuArray::try_from(map).map_err(|source| Error::MapAbi {
            map: PROBE_COUNT_MAP,
            source: Box::new(source),
        })?;
        Ok(Self { ebpf, count })
    }

    /// Attaches the probe to interface `ifname` in the calling thread's network namespace; to
    /// reach another namespace, call this from a thread that has `setns`ed into it. The probe
    /// stays attached until `self` is dropped, and may be attached to several interfaces.
    pub fn attach_xdp(&mut self, ifname: &str, mode: XdpMode) -> Result<(), Error> {
        if !is_valid_ifname(ifname) {
            return Err(Error::InvalidInterfaceName {
                ifname: ifname.to_owned(),
            });
        }
        match probe_program(&mut self.ebpf)?.attach(ifname, mode.into()) {
            Ok(_link) => Ok(()),
            Err(ProgramError::UnknownInterface { .. }) => Err(Error::InterfaceNotFound {
                ifname: ifname.to_owned(),
            }),
            Err(source) => Err(Error::AttachXdp {
                program: PROBE_PROGRAM,
                ifname: ifname.to_owned(),
                mode,
                source: Box::new(source),
            }),
        }
    }

    /// Packets and bytes the probe has counted since it was loaded, over all interfaces and
    /// CPUs.
    pub fn read(&self) -> Result<PacketCount, Error> {
        let per_cpu = self
            .count
            .get(&PROBE_COUNT_KEY, 0)
            .map_err(|source| Error::ReadMap {
                map: PROBE_COUNT_MAP,
                source: Box::new(source),
            })?;
        Ok(sum(per_cpu.iter().copied()))
    }
}

fn probe_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, Error> {
    ebpf.program_mut(PROBE_PROGRAM)
        .ok_or(Error::ProgramMissing {
            program: PROBE_PROGRAM,
        })?
        .try_into()
        .map_err(|source| Error::LoadProgram {
            program: PROBE_PROGRAM,
            source: Box::new(source),
        })
}

/// Adds per-CPU counts the way the kernel side counts: wrapping, so a counter that wrapped on
/// one CPU cannot make the sum panic.
fn sum(per_cpu: impl IntoIterator<Item = PacketCount>) -> PacketCount {
    per_cpu
        .into_iter()
        .fold(PacketCount::default(), |total, cpu| PacketCount {
            packets: total.packets.wrapping_add(cpu.packets),
            bytes: total.bytes.wrapping_add(cpu.bytes),
        })
}

/// What the kernel accepts as an interface name (`dev_valid_name`), checked up front because
/// aya panics on a name with a NUL in it.
fn is_valid_ifname(ifname: &str) -> bool {
    // IFNAMSIZ is 16, including the terminating NUL.
    const MAX_LEN: usize = 15;
    !ifname.is_empty()
        && ifname.len() <= MAX_LEN
        && ifname != "."
        && ifname != ".."
        && !ifname
            .bytes()
            .any(|b| b == b'\0' || b == b'/' || b == b':' || b.is_ascii_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_adds_every_cpu() {
        let per_cpu = [
            PacketCount {
                packets: 3,
                bytes: 300,
            },
            PacketCount::default(),
            PacketCount {
                packets: 2,
                bytes: 84,
            },
        ];
        assert_eq!(
            sum(per_cpu),
            PacketCount {
                packets: 5,
                bytes: 384
            }
        );
    }

    #[test]
    fn sum_wraps_like_the_kernel_side() {
        let per_cpu = [
            PacketCount {
                packets: u64::MAX,
                bytes: u64::MAX,
            },
            PacketCount {
                packets: 2,
                bytes: 1,
            },
        ];
        assert_eq!(
            sum(per_cpu),
            PacketCount {
                packets: 1,
                bytes: 0
            }
        );
    }

    #[test]
    fn ifname_rules_match_the_kernel() {
        for good in ["eth0", "veth1234abcd", "bsnt4194304ga", "a-b_c.d@e"] {
            assert!(is_valid_ifname(good), "{good:?} should be valid");
        }
        for bad in [
            "",
            ".",
            "..",
            "sixteen-chars-xx",
            "a/b",
            "a b",
            "a:b",
            "a\0b",
        ] {
            assert!(!is_valid_ifname(bad), "{bad:?} should be invalid");
        }
    }
}
