//! Traffic from outside the node: loads the two tc programs for the node's external
//! interfaces, pins their maps and links, attaches them, and reads and ages the NAT table.
//!
//! The programs read the service maps (which frontends are external, and their Maglev tables,
//! written by the service reconciler) pinned in the daemon's bpffs directory, and keep their
//! own under `<bpf_dir>/nodeport`: the NAT table (`BOSUN_NAT_V1`), the configuration
//! (`BOSUN_NPCFG_V1`) and in `links/` one pin per attached interface and direction,
//! `<ifindex>_in` and `<ifindex>_out`, and `<ifindex>_xdp` where the XDP variant of ingress
//! runs too. Pinned, the programs keep forwarding and the flows keep their backends while no
//! daemon runs.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    maps::{Array, HashMap, MapData, MapType},
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        xdp::XdpLink,
        TcAttachType, Xdp,
    },
    sys::SyscallError,
    EbpfLoader,
};
use bosun_ebpf_abi::{
    address_from_host, address_to_host, port_to_host, NatKey, NatValue, NodePortConfig,
    NAT_CLOSING, NAT_CLOSING_TIMEOUT_NS, NAT_EGRESS, NAT_MAP, NAT_MAX_ENTRIES,
    NAT_OTHER_TIMEOUT_NS, NAT_REPLY, NAT_SNAT, NAT_TCP_TIMEOUT_NS, NODEPORT_CONFIG_MAP,
    NODEPORT_EGRESS_PROGRAM, NODEPORT_EVENT_MAP, NODEPORT_EVENT_RING_BYTES,
    NODEPORT_INGRESS_PROGRAM, NODEPORT_XDP_PROGRAM, PROTOCOL_TCP,
};

use crate::{
    object::{shrink_unused_maps, OBJECT, POLICY_MAPS},
    service::{
        bpf::{
            delete, is_not_found, open_map, pin_over, prepare_dir, read_error, refuse_mismatched,
            remove_pin, unpin_link, MapShape, MAP_SHAPES as SERVICE_MAP_SHAPES, NEW_LINK_SUFFIX,
        },
        Protocol,
    },
    tc::{self, classifier, TcHook, TcMode},
    Error, XdpMode,
};

/// The directory under the daemon's bpffs directory that holds everything of this module.
const NODEPORT_DIR: &str = "nodeport";
/// What follows the ifindex in the name of the XDP program's pin (`12_xdp`).
const XDP_PIN_SUFFIX: &str = "_xdp";

const HOOKS: [TcHook; 2] = [
    TcHook {
        program: NODEPORT_INGRESS_PROGRAM,
        attach_type: TcAttachType::Ingress,
        pin_suffix: "_in",
        priority: tc::NODEPORT_PRIORITY,
    },
    TcHook {
        program: NODEPORT_EGRESS_PROGRAM,
        attach_type: TcAttachType::Egress,
        pin_suffix: "_out",
        priority: tc::NODEPORT_PRIORITY,
    },
];

const MAP_SHAPES: [MapShape; 3] = [
    MapShape {
        name: NAT_MAP,
        map_type: MapType::LruHash,
        key_size: size_of::<NatKey>(),
        value_size: size_of::<NatValue>(),
        max_entries: NAT_MAX_ENTRIES,
    },
    MapShape {
        name: NODEPORT_CONFIG_MAP,
        map_type: MapType::Array,
        key_size: size_of::<u32>(),
        value_size: size_of::<NodePortConfig>(),
        max_entries: 1,
    },
    // A ring buffer has neither keys nor values; its size is its maximum of entries.
    MapShape {
        name: NODEPORT_EVENT_MAP,
        map_type: MapType::RingBuf,
        key_size: 0,
        value_size: 0,
        max_entries: NODEPORT_EVENT_RING_BYTES,
    },
];

/// The programs for the node's external interfaces, loaded and verified, with their maps
/// pinned. Dropping it detaches nothing.
pub struct NodePortDatapath {
    bpf_dir: PathBuf,
    mode: TcMode,
    ebpf: aya::Ebpf,
}

/// Loads the programs against the service maps pinned in `bpf_dir` (pinning them there if the
/// service datapath has not yet) and the NAT table and configuration under
/// `<bpf_dir>/nodeport`, reusing those pinned with their entries. Attaches nothing; `mode`
/// says how [`NodePortDatapath::attach`] will.
pub fn install(bpf_dir: &Path, mode: TcMode) -> Result<NodePortDatapath, Error> {
    install_sized(bpf_dir, mode, NAT_MAX_ENTRIES)
}

/// [`install`] with a NAT table of `nat_entries` entries when it is created (an existing one
/// keeps its size; one of another size is refused): for tests of a full table.
pub fn install_sized(
    bpf_dir: &Path,
    mode: TcMode,
    nat_entries: u32,
) -> Result<NodePortDatapath, Error> {
    let dir = nodeport_dir(bpf_dir);
    prepare_dir(bpf_dir)?;
    prepare_dir(&dir)?;
    refuse_mismatched(bpf_dir, &SERVICE_MAP_SHAPES)?;
    let [nat, config, events] = &MAP_SHAPES;
    let nat = MapShape {
        max_entries: nat_entries,
        ..*nat
    };
    refuse_mismatched(&dir, &[nat, *config, *events])?;
    tc::create_links_dir(&dir)?;
    let mut loader = EbpfLoader::new();
    for shape in &SERVICE_MAP_SHAPES {
        loader.map_pin_path(shape.name, bpf_dir.join(shape.name));
    }
    for shape in &MAP_SHAPES {
        loader.map_pin_path(shape.name, dir.join(shape.name));
    }
    shrink_unused_maps(&mut loader, &POLICY_MAPS);
    loader.map_max_entries(NAT_MAP, nat_entries);
    let mut ebpf = loader.load(OBJECT).map_err(|source| Error::LoadObject {
        source: Box::new(source),
    })?;
    for hook in &HOOKS {
        classifier(&mut ebpf, hook.program)?
            .load()
            .map_err(|source| Error::LoadProgram {
                program: hook.program,
                source: Box::new(source),
            })?;
    }
    Ok(NodePortDatapath {
        bpf_dir: bpf_dir.to_owned(),
        mode,
        ebpf,
    })
}

impl NodePortDatapath {
    /// Attaches both programs to interface `ifindex` of the calling thread's network
    /// namespace, after other owners' programs, and pins the attachments, replacing earlier
    /// ones (of either mode) without a gap.
    pub fn attach(&mut self, ifindex: u32) -> Result<(), Error> {
        let ifname = tc::interface_name_of(ifindex)?;
        let links = links_dir(&self.bpf_dir);
        for hook in &HOOKS {
            let program = classifier(&mut self.ebpf, hook.program)?;
            hook.attach(self.mode, program, ifindex, &ifname, &links)?;
        }
        Ok(())
    }

    /// Attaches the XDP variant of the ingress program to interface `ifindex` of the calling
    /// thread's network namespace, in the driver ([`XdpMode::Driver`]), beside the tc programs
    /// [`NodePortDatapath::attach`] put there, and pins the link. One attached before (by an
    /// earlier daemon) gets this program in place of its own, without a gap. Fails on an
    /// interface whose driver does not run XDP, or that another XDP program holds.
    pub fn attach_xdp(&mut self, ifindex: u32) -> Result<(), Error> {
        let ifname = tc::interface_name_of(ifindex)?;
        let pin = xdp_pin(&self.bpf_dir, ifindex);
        let program = xdp_program(&mut self.ebpf)?;
        let attach_error = |source| Error::AttachXdp {
            program: NODEPORT_XDP_PROGRAM,
            ifname: ifname.clone(),
            mode: XdpMode::Driver,
            source: Box::new(source),
        };
        match PinnedLink::from_pin(&pin) {
            Ok(pinned) => {
                let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|source| {
                    Error::OpenPinnedLink {
                        path: pin.clone(),
                        source: Box::new(source),
                    }
                })?;
                // The pin keeps the link; this process's handle on it may go.
                let id = program.attach_to_link(link).map_err(attach_error)?;
                drop(program.take_link(id));
                Ok(())
            }
            Err(LinkError::SyscallError(SyscallError { io_error, .. }))
                if io_error.kind() == std::io::ErrorKind::NotFound =>
            {
                let id = program
                    .attach_to_if_index(ifindex, XdpMode::Driver.into())
                    .map_err(attach_error)?;
                let link = program.take_link(id).map_err(attach_error)?;
                // Only a BPF link can be pinned; a kernel before 5.9 attached by netlink.
                let link = FdLink::try_from(link).map_err(|_| Error::XdpWithoutLink {
                    ifname: ifname.clone(),
                })?;
                pin_over(
                    link,
                    NODEPORT_XDP_PROGRAM,
                    xdp_new_pin(&self.bpf_dir, ifindex),
                    &pin,
                )
            }
            Err(source) => Err(Error::OpenPinnedLink {
                path: pin,
                source: Box::new(source),
            }),
        }
    }

    /// The pinned NAT table and configuration.
    pub fn maps(&self) -> Result<NodePortMaps, Error> {
        NodePortMaps::open(&self.bpf_dir)
    }
}

/// The XDP program, loaded on first use: a daemon that attaches none never verifies it.
fn xdp_program(ebpf: &mut aya::Ebpf) -> Result<&mut Xdp, Error> {
    let program: &mut Xdp = ebpf
        .program_mut(NODEPORT_XDP_PROGRAM)
        .ok_or(Error::ProgramMissing {
            program: NODEPORT_XDP_PROGRAM,
        })?
        .try_into()
        .map_err(|source| Error::LoadProgram {
            program: NODEPORT_XDP_PROGRAM,
            source: Box::new(source),
        })?;
    if program.fd().is_err() {
        program.load().map_err(|source| Error::LoadProgram {
            program: NODEPORT_XDP_PROGRAM,
            source: Box::new(source),
        })?;
    }
    Ok(program)
}

/// Takes the XDP program off `ifindex`: its link is unpinned, which detaches it. Not an error
/// if it is not there.
pub fn detach_xdp(bpf_dir: &Path, ifindex: u32) -> Result<(), Error> {
    let pin = xdp_pin(bpf_dir, ifindex);
    unpin_link(&pin)?;
    remove_pin(&xdp_new_pin(bpf_dir, ifindex))
}

/// The ifindexes where the XDP program is attached (pinned, a `_new` pin a crash left
/// included), in order.
pub fn attached_xdp(bpf_dir: &Path) -> Result<Vec<u32>, Error> {
    let mut ifindexes: Vec<u32> = tc::pin_names(&links_dir(bpf_dir))?
        .iter()
        .filter_map(|name| {
            let live = name.strip_suffix(NEW_LINK_SUFFIX).unwrap_or(name);
            tc::ifindex_before(live, XDP_PIN_SUFFIX)
        })
        .collect();
    ifindexes.sort_unstable();
    ifindexes.dedup();
    Ok(ifindexes)
}

/// Takes the programs off `ifindex` (the XDP one, then tcx links and clsact filters alike);
/// not an error if they are not there.
pub fn detach(bpf_dir: &Path, ifindex: u32) -> Result<(), Error> {
    detach_xdp(bpf_dir, ifindex)?;
    tc::detach(&links_dir(bpf_dir), ifindex, &HOOKS)
}

/// The ifindexes with pinned attachments (of either mode), in order.
pub fn attached(bpf_dir: &Path) -> Result<Vec<u32>, Error> {
    tc::attached(&links_dir(bpf_dir), &HOOKS)
}

/// Detaches the programs from every interface and removes everything under
/// `<bpf_dir>/nodeport`. Returns `Ok(false)` if there was no such directory. Run it before
/// [`crate::service::cleanup`], which removes `bpf_dir` itself.
pub fn cleanup(bpf_dir: &Path) -> Result<bool, Error> {
    for ifindex in attached_xdp(bpf_dir)? {
        detach_xdp(bpf_dir, ifindex)?;
    }
    tc::remove_datapath_dir(
        &nodeport_dir(bpf_dir),
        &HOOKS,
        MAP_SHAPES.map(|shape| shape.name),
    )
}

/// One flow from outside, as `bosun dp conntrack` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NatFlow {
    pub protocol: Protocol,
    pub client: (Ipv4Addr, u16),
    /// The frontend the client sent to.
    pub frontend: (Ipv4Addr, u16),
    pub backend: (Ipv4Addr, u16),
    /// The node's address and port the flow was SNATed to, for a backend on another node.
    pub snat: Option<(Ipv4Addr, u16)>,
    /// Since a packet of the flow was last seen (either direction, to the second).
    pub idle: Duration,
    /// A FIN or RST was seen.
    pub closing: bool,
}

/// The pinned NAT table and configuration, read and written in place.
pub struct NodePortMaps {
    nat: HashMap<MapData, NatKey, NatValue>,
    config: Array<MapData, NodePortConfig>,
}

impl NodePortMaps {
    /// Opens the maps an earlier [`install`] pinned, whether or not a daemon runs.
    pub fn open(bpf_dir: &Path) -> Result<Self, Error> {
        let dir = nodeport_dir(bpf_dir);
        let [nat, config, _events] = &MAP_SHAPES;
        // Whatever size the table was made with (see [`install_sized`]).
        let nat = MapShape {
            max_entries: pinned_max_entries(&dir.join(nat.name)).unwrap_or(nat.max_entries),
            ..*nat
        };
        Ok(Self {
            nat: open_map(&dir.join(nat.name), &nat)?,
            config: open_map(&dir.join(config.name), config)?,
        })
    }

    /// Sets the address flows to other nodes' backends are SNATed to; `None`: such flows are
    /// dropped.
    pub fn set_snat_address(&mut self, address: Option<Ipv4Addr>) -> Result<(), Error> {
        let config = NodePortConfig {
            snat_address: address.map_or([0; 4], |a| address_from_host(a.to_bits())),
            _pad: [0; 4],
        };
        self.config
            .set(0, config, 0)
            .map_err(|source| Error::WriteMap {
                map: NODEPORT_CONFIG_MAP,
                source: Box::new(source),
            })
    }

    /// Every flow, by client. `now_ns`: CLOCK_MONOTONIC now, as [`monotonic_now`] reads it.
    pub fn flows(&self, now_ns: u64) -> Result<Vec<NatFlow>, Error> {
        let entries = self.entries()?;
        let index: std::collections::HashMap<NatKey, NatValue> = entries.iter().copied().collect();
        let mut flows: Vec<NatFlow> = entries
            .iter()
            // The DNAT stage's forward entries: one per flow.
            .filter(|(_, value)| value.flags & (NAT_REPLY | NAT_SNAT | NAT_EGRESS) == 0)
            .filter_map(|(key, value)| {
                let protocol = Protocol::from_number(key.protocol)?;
                let reply = index.get(&value.reverse_key(key.protocol)).copied();
                let last_seen = reply.map_or(value.last_seen_ns, |r| {
                    r.last_seen_ns.max(value.last_seen_ns)
                });
                let closing = (value.flags | reply.map_or(0, |r| r.flags)) & NAT_CLOSING != 0;
                let dnatted = NatKey {
                    source: value.source,
                    destination: value.destination,
                    source_port: value.source_port,
                    destination_port: value.destination_port,
                    protocol: key.protocol,
                    _pad: [0; 3],
                };
                let snat = index
                    .get(&dnatted)
                    .filter(|s| s.flags & NAT_SNAT != 0)
                    .map(|s| endpoint(s.source, s.source_port));
                Some(NatFlow {
                    protocol,
                    client: endpoint(key.source, key.source_port),
                    frontend: endpoint(key.destination, key.destination_port),
                    backend: endpoint(value.destination, value.destination_port),
                    snat,
                    idle: Duration::from_secs(now_ns.saturating_sub(last_seen) / 1_000_000_000),
                    closing,
                })
            })
            .collect();
        flows.sort_by_key(|f| (f.client, f.frontend, f.protocol));
        Ok(flows)
    }

    /// Removes the flows idle longer than their timeout (both entries of each), and entries
    /// whose other half is gone (the LRU evicted it). Returns how many entries went.
    pub fn collect_garbage(&mut self, now_ns: u64) -> Result<usize, Error> {
        let entries = self.entries()?;
        let index: std::collections::HashMap<NatKey, NatValue> = entries.iter().copied().collect();
        let mut stale = Vec::new();
        for (key, value) in &entries {
            let reverse = value.reverse_key(key.protocol);
            let Some(other) = index.get(&reverse) else {
                stale.push(*key);
                continue;
            };
            let last_seen = value.last_seen_ns.max(other.last_seen_ns);
            let timeout = if (value.flags | other.flags) & NAT_CLOSING != 0 {
                NAT_CLOSING_TIMEOUT_NS
            } else if key.protocol == PROTOCOL_TCP {
                NAT_TCP_TIMEOUT_NS
            } else {
                NAT_OTHER_TIMEOUT_NS
            };
            if now_ns.saturating_sub(last_seen) > timeout {
                stale.push(*key);
            }
        }
        for key in &stale {
            delete(&mut self.nat, NAT_MAP, key)?;
        }
        Ok(stale.len())
    }

    /// How many entries the table holds (two per flow and stage).
    pub fn entry_count(&self) -> Result<usize, Error> {
        Ok(self.entries()?.len())
    }

    fn entries(&self) -> Result<Vec<(NatKey, NatValue)>, Error> {
        let mut entries = Vec::new();
        for entry in self.nat.iter() {
            match entry {
                Ok(entry) => entries.push(entry),
                // Evicted between the key and its value.
                Err(error) if is_not_found(&error) => {}
                Err(source) => return Err(read_error(NAT_MAP, source)),
            }
        }
        entries.sort_unstable_by_key(|(k, _)| *k);
        entries.dedup_by_key(|(k, _)| *k);
        Ok(entries)
    }
}

/// The events of the programs for traffic from outside, as they happen.
pub struct NodePortEventReader(crate::ring::RingReader<bosun_ebpf_abi::NodePortEvent>);

pub use bosun_ebpf_abi::{
    NodePortEvent, NODEPORT_EVENT_NEW_FLOW, NODEPORT_EVENT_NO_BACKEND, NODEPORT_EVENT_NO_SNAT,
    NODEPORT_EVENT_REFUSED, NODEPORT_EVENT_TABLE_REFUSED,
};

impl NodePortEventReader {
    /// Opens the ring buffer an earlier [`install`] pinned. Must be called within a Tokio
    /// runtime (with I/O enabled).
    pub fn open(bpf_dir: &Path) -> Result<Self, Error> {
        let [_, _, events] = &MAP_SHAPES;
        let path = nodeport_dir(bpf_dir).join(NODEPORT_EVENT_MAP);
        Ok(Self(crate::ring::RingReader::open(path, events)?))
    }

    /// Waits for the next event.
    pub async fn next(&mut self) -> Result<NodePortEvent, Error> {
        self.0.next().await
    }
}

/// The size of the map pinned at `path`, if there is one.
fn pinned_max_entries(path: &Path) -> Option<u32> {
    Some(MapData::from_pin(path).ok()?.info().ok()?.max_entries())
}

/// CLOCK_MONOTONIC, the clock of the programs' `bpf_ktime_get_coarse_ns`.
pub fn monotonic_now() -> u64 {
    let mut now = nix::libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill in.
    unsafe { nix::libc::clock_gettime(nix::libc::CLOCK_MONOTONIC, &mut now) };
    let seconds = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    seconds.saturating_mul(1_000_000_000).saturating_add(nanos)
}

fn endpoint(address: [u8; 4], port: [u8; 2]) -> (Ipv4Addr, u16) {
    (
        Ipv4Addr::from_bits(address_to_host(address)),
        port_to_host(port),
    )
}

fn nodeport_dir(bpf_dir: &Path) -> PathBuf {
    bpf_dir.join(NODEPORT_DIR)
}

fn links_dir(bpf_dir: &Path) -> PathBuf {
    nodeport_dir(bpf_dir).join(tc::LINKS_DIR)
}

fn xdp_pin(bpf_dir: &Path, ifindex: u32) -> PathBuf {
    links_dir(bpf_dir).join(format!("{ifindex}{XDP_PIN_SUFFIX}"))
}

/// Where a new XDP link is pinned before it is renamed over [`xdp_pin`].
fn xdp_new_pin(bpf_dir: &Path, ifindex: u32) -> PathBuf {
    links_dir(bpf_dir).join(format!("{ifindex}{XDP_PIN_SUFFIX}{NEW_LINK_SUFFIX}"))
}
