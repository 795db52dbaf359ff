//! The real policy datapath: loads the two tc programs, pins the policy maps and the programs'
//! attachments in bpffs, attaches the programs to pods' host-side interfaces, and reads and
//! writes the pinned maps.
//!
//! Everything lives under `<bpf_dir>/policy`, which [`cleanup`] removes: one pin per map, named
//! after the map (`BOSUN_EP_V1`, ...), and in `links/` one pin per attached interface and
//! direction, `<ifindex>_in` (the program on the host side's egress, the pod's ingress) and
//! `<ifindex>_out`: a tcx link, or on kernels without tcx the program of a clsact filter (see
//! [`crate::tc`]). The pins keep the programs attached while no daemon runs, and let a later
//! one (or [`cleanup`]) find and remove them; the maps keep their entries across restarts.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        HashMap, MapData, MapError, MapType, PerCpuArray, PerCpuValues,
    },
    programs::{TcAttachType, TestRun as _, TestRunOptions},
    sys::SyscallError,
    Ebpf, Pod,
};
use bosun_ebpf_abi::{
    counter_index, ConntrackKey, ConntrackValue, EndpointValue, PeerKey, PolicyCounters,
    PolicyEvent, PolicyName, PortKey, CONNTRACK_MAP, CONNTRACK_MAX_ENTRIES, COUNTER_MAP,
    COUNTER_MAX_ENTRIES, ENDPOINT_MAP, ENDPOINT_MAX_ENTRIES, EVENT_MAP, EVENT_RING_BYTES, NODE_MAP,
    NODE_MAX_ENTRIES, PEER_MAP, PEER_MAX_ENTRIES, POLICY_EGRESS_PROGRAM, POLICY_INGRESS_PROGRAM,
    POLICY_NAME_MAP, POLICY_NAME_MAX_ENTRIES, PORT_MAP, PORT_MAX_ENTRIES,
};

use super::{policy_name_str, Direction, PolicyMaps};
use crate::{
    object::{NODEPORT_MAPS, SERVICE_MAPS},
    ring::RingReader,
    service::bpf::{
        delete, entries, is_not_found, load_pinned, open_map, prepare_dir, put, read_error,
        refuse_mismatched, MapShape,
    },
    tc::{self, classifier, TcHook, TcMode},
    Error,
};

/// The directory under the daemon's bpffs directory that holds everything of this module.
const POLICY_DIR: &str = "policy";

/// The programs, where on the host-side interface each runs, and the suffix of its pins.
const HOOKS: [TcHook; 2] = [
    TcHook {
        program: POLICY_INGRESS_PROGRAM,
        attach_type: TcAttachType::Egress,
        pin_suffix: "_in",
        priority: tc::POLICY_PRIORITY,
    },
    TcHook {
        program: POLICY_EGRESS_PROGRAM,
        attach_type: TcAttachType::Ingress,
        pin_suffix: "_out",
        priority: tc::POLICY_PRIORITY,
    },
];

/// Bytes of an LPM trie key before its data: the prefix length.
const LPM_PREFIX_BYTES: usize = size_of::<u32>();

const MAP_SHAPES: [MapShape; 8] = [
    MapShape {
        name: ENDPOINT_MAP,
        map_type: MapType::Hash,
        key_size: size_of::<u32>(),
        value_size: size_of::<EndpointValue>(),
        max_entries: ENDPOINT_MAX_ENTRIES,
    },
    MapShape {
        name: PEER_MAP,
        map_type: MapType::LpmTrie,
        key_size: LPM_PREFIX_BYTES + size_of::<PeerKey>(),
        value_size: size_of::<u32>(),
        max_entries: PEER_MAX_ENTRIES,
    },
    MapShape {
        name: PORT_MAP,
        map_type: MapType::LpmTrie,
        key_size: LPM_PREFIX_BYTES + size_of::<PortKey>(),
        value_size: size_of::<u32>(),
        max_entries: PORT_MAX_ENTRIES,
    },
    MapShape {
        name: CONNTRACK_MAP,
        map_type: MapType::LruHash,
        key_size: size_of::<ConntrackKey>(),
        value_size: size_of::<ConntrackValue>(),
        max_entries: CONNTRACK_MAX_ENTRIES,
    },
    MapShape {
        name: NODE_MAP,
        map_type: MapType::Hash,
        key_size: size_of::<[u8; 4]>(),
        value_size: size_of::<u32>(),
        max_entries: NODE_MAX_ENTRIES,
    },
    MapShape {
        name: COUNTER_MAP,
        map_type: MapType::PerCpuArray,
        key_size: size_of::<u32>(),
        value_size: size_of::<PolicyCounters>(),
        max_entries: COUNTER_MAX_ENTRIES,
    },
    // A ring buffer has neither keys nor values; its size is its maximum of entries.
    MapShape {
        name: EVENT_MAP,
        map_type: MapType::RingBuf,
        key_size: 0,
        value_size: 0,
        max_entries: EVENT_RING_BYTES,
    },
    MapShape {
        name: POLICY_NAME_MAP,
        map_type: MapType::Hash,
        key_size: size_of::<u32>(),
        value_size: size_of::<PolicyName>(),
        max_entries: POLICY_NAME_MAX_ENTRIES,
    },
];

/// The pinned maps, by name.
fn shape(name: &str) -> &'static MapShape {
    MAP_SHAPES
        .iter()
        .find(|shape| shape.name == name)
        .expect("every policy map has a shape")
}

/// The policy programs, loaded and verified, with their maps pinned under
/// `<bpf_dir>/policy`. Holding it costs one load; [`PolicyDatapath::attach`] then only
/// attaches. Dropping it detaches nothing: the pins hold the programs.
pub struct PolicyDatapath {
    bpf_dir: PathBuf,
    mode: TcMode,
    ebpf: Ebpf,
}

/// Loads the programs (through the verifier) and pins the maps under `<bpf_dir>/policy`, or
/// reuses those pinned there with their entries; mounts bpffs at `/sys/fs/bpf` first if
/// `bpf_dir` is below it and none is mounted. Attaches nothing; [`PolicyDatapath::attach`]
/// will attach in `mode`.
///
/// Refuses a pinned map of another shape ([`Error::PinnedMapMismatch`]) before loading
/// anything. One installer at a time per directory.
pub fn install(bpf_dir: &Path, mode: TcMode) -> Result<PolicyDatapath, Error> {
    let dir = policy_dir(bpf_dir);
    prepare_dir(&dir)?;
    refuse_mismatched(&dir, &MAP_SHAPES)?;
    tc::create_links_dir(&dir)?;
    let mut ebpf = load_pinned(
        &dir,
        &MAP_SHAPES,
        &[&SERVICE_MAPS[..], &NODEPORT_MAPS].concat(),
    )?;
    for hook in &HOOKS {
        classifier(&mut ebpf, hook.program)?
            .load()
            .map_err(|source| Error::LoadProgram {
                program: hook.program,
                source: Box::new(source),
            })?;
    }
    Ok(PolicyDatapath {
        bpf_dir: bpf_dir.to_owned(),
        mode,
        ebpf,
    })
}

impl PolicyDatapath {
    /// The pinned maps, for a [`super::PolicyReconciler`].
    pub fn maps(&self) -> Result<PinnedPolicyMaps, Error> {
        PinnedPolicyMaps::open(&self.bpf_dir)
    }

    /// Attaches both programs to the interface `ifindex` of the calling thread's network
    /// namespace in the mode given at [`install`] and pins them, replacing earlier attachments
    /// (of either mode) without a gap: the new programs run before the old ones stop, so for a
    /// moment a packet passes both (both read the same maps and agree, but it is counted
    /// twice).
    ///
    /// Userspace must have written the endpoint's entry first: a packet on an interface
    /// without one is dropped.
    pub fn attach(&mut self, ifindex: u32) -> Result<(), Error> {
        let ifname = tc::interface_name_of(ifindex)?;
        let links = links_dir(&self.bpf_dir);
        for hook in &HOOKS {
            let program = classifier(&mut self.ebpf, hook.program)?;
            hook.attach(self.mode, program, ifindex, &ifname, &links)?;
        }
        Ok(())
    }

    /// How [`PolicyDatapath::attach`] attaches.
    pub fn mode(&self) -> TcMode {
        self.mode
    }

    /// Runs the program of `direction` `repeat` times on `frame`, an Ethernet frame, as if it
    /// crossed interface `ifindex` of the calling thread's network namespace, with the pinned
    /// maps (the kernel's `BPF_PROG_TEST_RUN`; nothing is attached). Returns whether the last
    /// run let the frame through and the mean time of one run. For benchmarks and tests: the
    /// runs update conntrack, counters and events as real packets would.
    pub fn test_run(
        &mut self,
        direction: Direction,
        ifindex: u32,
        frame: &[u8],
        repeat: u32,
    ) -> Result<ProgramRun, Error> {
        let program = match direction {
            Direction::Ingress => POLICY_INGRESS_PROGRAM,
            Direction::Egress => POLICY_EGRESS_PROGRAM,
        };
        let mut context = [0; SK_BUFF_IFINDEX_OFFSET + 4];
        context[SK_BUFF_IFINDEX_OFFSET..].copy_from_slice(&ifindex.to_ne_bytes());
        let options = TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&context),
            repeat,
            ..TestRunOptions::default()
        };
        let result = classifier(&mut self.ebpf, program)?
            .test_run(options)
            .map_err(|source| Error::TestRun {
                program,
                ifindex,
                source: Box::new(source),
            })?;
        Ok(ProgramRun {
            allowed: result.return_value != POLICY_DROP,
            per_run: result.duration,
        })
    }

    /// The ifindexes with pinned attachments, of either mode.
    pub fn attached(&self) -> Result<Vec<u32>, Error> {
        attached(&self.bpf_dir)
    }

    /// Detaches both programs from `ifindex`; not an error if they are not attached.
    pub fn detach(&mut self, ifindex: u32) -> Result<(), Error> {
        detach(&self.bpf_dir, ifindex)
    }
}

/// What [`PolicyDatapath::test_run`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramRun {
    /// The last run's verdict.
    pub allowed: bool,
    /// The kernel's mean time of one run.
    pub per_run: Duration,
}

/// The programs' verdict for a dropped packet, `TC_ACT_SHOT`.
const POLICY_DROP: u32 = 2;

/// Where `ifindex`, the one field a test run sets, lies in the kernel's `struct __sk_buff`,
/// after ten `u32`s (`len` through `ingress_ifindex`) that must be zero. The kernel takes a
/// context that ends there and treats the rest as zero.
const SK_BUFF_IFINDEX_OFFSET: usize = 40;

/// [`install`] and [`PolicyDatapath::attach`], for callers holding only the directory.
pub fn attach(bpf_dir: &Path, mode: TcMode, ifindex: u32) -> Result<(), Error> {
    install(bpf_dir, mode)?.attach(ifindex)
}

/// Takes both programs off `ifindex`, however they were attached (a tcx link or a clsact
/// filter, whatever the mode now), removes their pins under `bpf_dir`, and returns once the
/// programs no longer run on the interface (at once if it is gone). Not an error if nothing
/// is attached. Looks the interface up in the calling thread's network namespace: call it
/// from the one the interface is in, as for [`PolicyDatapath::attach`].
pub fn detach(bpf_dir: &Path, ifindex: u32) -> Result<(), Error> {
    tc::detach(&links_dir(bpf_dir), ifindex, &HOOKS)
}

/// The ifindexes with pinned attachments (of either mode) under `bpf_dir`, in order.
pub fn attached(bpf_dir: &Path) -> Result<Vec<u32>, Error> {
    tc::attached(&links_dir(bpf_dir), &HOOKS)
}

/// Detaches the programs from every interface with pinned attachments (tcx links and clsact
/// filters alike), then removes every pin under `<bpf_dir>/policy` and the directory. Returns
/// `Ok(false)` if there was no such directory. Run it before [`crate::service::cleanup`],
/// which removes `bpf_dir` itself. The clsact qdiscs stay: other programs may use them, and
/// an empty one changes nothing.
///
/// Map handles that a running daemon holds keep its maps alive until it closes them, but no
/// program reads them any more.
pub fn cleanup(bpf_dir: &Path) -> Result<bool, Error> {
    tc::remove_datapath_dir(
        &policy_dir(bpf_dir),
        &HOOKS,
        MAP_SHAPES.map(|shape| shape.name),
    )
}

fn policy_dir(bpf_dir: &Path) -> PathBuf {
    bpf_dir.join(POLICY_DIR)
}

fn links_dir(bpf_dir: &Path) -> PathBuf {
    policy_dir(bpf_dir).join(tc::LINKS_DIR)
}

/// The policy maps pinned under `<bpf_dir>/policy`, read and written in place. Any number of
/// processes may hold them; the kernel makes each entry's update atomic.
pub struct PinnedPolicyMaps {
    endpoints: HashMap<MapData, u32, EndpointValue>,
    peers: LpmTrie<MapData, PeerKey, u32>,
    ports: LpmTrie<MapData, PortKey, u32>,
    conntrack: HashMap<MapData, ConntrackKey, ConntrackValue>,
    nodes: HashMap<MapData, [u8; 4], u32>,
    counters: PerCpuArray<MapData, PolicyCounters>,
    names: HashMap<MapData, u32, PolicyName>,
}

impl PinnedPolicyMaps {
    /// Opens the maps an earlier [`install`] pinned, whether or not a daemon runs, checking
    /// that each has this build's shape.
    pub fn open(bpf_dir: &Path) -> Result<Self, Error> {
        Ok(Self {
            endpoints: open_pinned(bpf_dir, ENDPOINT_MAP)?,
            peers: open_pinned(bpf_dir, PEER_MAP)?,
            ports: open_pinned(bpf_dir, PORT_MAP)?,
            conntrack: open_pinned(bpf_dir, CONNTRACK_MAP)?,
            nodes: open_pinned(bpf_dir, NODE_MAP)?,
            counters: open_pinned(bpf_dir, COUNTER_MAP)?,
            names: open_pinned(bpf_dir, POLICY_NAME_MAP)?,
        })
    }
}

fn open_pinned<M: TryFrom<aya::maps::Map, Error = MapError>>(
    bpf_dir: &Path,
    name: &'static str,
) -> Result<M, Error> {
    open_map(&policy_dir(bpf_dir).join(name), shape(name))
}

/// Every entry of an LPM trie as `(prefix length, key data, value)`, sorted and without the
/// duplicates a concurrent writer can make the kernel's iteration return.
fn lpm_entries<K: Pod + Ord>(
    trie: &LpmTrie<MapData, K, u32>,
    name: &'static str,
) -> Result<Vec<(u32, K, u32)>, Error> {
    let mut sorted = BTreeMap::new();
    for entry in trie.iter() {
        let (key, value) = entry.map_err(|source| read_error(name, source))?;
        sorted.insert((key.prefix_len(), key.data()), value);
    }
    Ok(sorted
        .into_iter()
        .map(|((prefix_len, key), value)| (prefix_len, key, value))
        .collect())
}

fn lpm_put<K: Pod>(
    trie: &mut LpmTrie<MapData, K, u32>,
    name: &'static str,
    prefix_len: u32,
    key: &K,
    value: u32,
) -> Result<(), Error> {
    trie.insert(&Key::new(prefix_len, *key), value, 0)
        .map_err(|source| write_error(name, source))
}

/// Removing what is not there succeeds.
fn lpm_delete<K: Pod>(
    trie: &mut LpmTrie<MapData, K, u32>,
    name: &'static str,
    prefix_len: u32,
    key: &K,
) -> Result<(), Error> {
    match trie.remove(&Key::new(prefix_len, *key)) {
        Err(error) if !is_not_found(&error) => Err(write_error(name, error)),
        _ => Ok(()),
    }
}

fn write_error(map: &'static str, source: MapError) -> Error {
    Error::WriteMap {
        map,
        source: Box::new(source),
    }
}

impl PolicyMaps for PinnedPolicyMaps {
    fn endpoints(&self) -> Result<Vec<(u32, EndpointValue)>, Error> {
        entries(&self.endpoints, ENDPOINT_MAP)
    }

    fn peers(&self) -> Result<Vec<(u32, PeerKey, u32)>, Error> {
        lpm_entries(&self.peers, PEER_MAP)
    }

    fn ports(&self) -> Result<Vec<(u32, PortKey, u32)>, Error> {
        lpm_entries(&self.ports, PORT_MAP)
    }

    fn policy_names(&self) -> Result<Vec<(u32, PolicyName)>, Error> {
        entries(&self.names, POLICY_NAME_MAP)
    }

    fn node_addresses(&self) -> Result<Vec<[u8; 4]>, Error> {
        Ok(entries(&self.nodes, NODE_MAP)?
            .into_iter()
            .map(|(address, _)| address)
            .collect())
    }

    fn put_endpoint(&mut self, ifindex: u32, value: &EndpointValue) -> Result<(), Error> {
        put(&mut self.endpoints, ENDPOINT_MAP, &ifindex, value)
    }

    fn put_peer(&mut self, prefix_len: u32, key: &PeerKey, class: u32) -> Result<(), Error> {
        lpm_put(&mut self.peers, PEER_MAP, prefix_len, key, class)
    }

    fn put_port(&mut self, prefix_len: u32, key: &PortKey, policy: u32) -> Result<(), Error> {
        lpm_put(&mut self.ports, PORT_MAP, prefix_len, key, policy)
    }

    fn put_policy_name(&mut self, id: u32, name: &PolicyName) -> Result<(), Error> {
        put(&mut self.names, POLICY_NAME_MAP, &id, name)
    }

    fn put_node_address(&mut self, address: [u8; 4]) -> Result<(), Error> {
        put(&mut self.nodes, NODE_MAP, &address, &1)
    }

    fn reset_counters(&mut self, slot: u32) -> Result<(), Error> {
        let cpus = aya::util::nr_cpus().map_err(|(_, io_error)| {
            write_error(
                COUNTER_MAP,
                MapError::SyscallError(SyscallError {
                    call: "read possible CPUs",
                    io_error,
                }),
            )
        })?;
        for direction in [Direction::Ingress, Direction::Egress] {
            let zero = PerCpuValues::try_from(vec![PolicyCounters::default(); cpus]).map_err(
                |io_error| {
                    write_error(
                        COUNTER_MAP,
                        MapError::SyscallError(SyscallError {
                            call: "per-CPU values",
                            io_error,
                        }),
                    )
                },
            )?;
            self.counters
                .set(counter_index(slot, direction.number()), zero, 0)
                .map_err(|source| write_error(COUNTER_MAP, source))?;
        }
        Ok(())
    }

    fn delete_endpoint(&mut self, ifindex: u32) -> Result<(), Error> {
        delete(&mut self.endpoints, ENDPOINT_MAP, &ifindex)
    }

    fn delete_peer(&mut self, prefix_len: u32, key: &PeerKey) -> Result<(), Error> {
        lpm_delete(&mut self.peers, PEER_MAP, prefix_len, key)
    }

    fn delete_port(&mut self, prefix_len: u32, key: &PortKey) -> Result<(), Error> {
        lpm_delete(&mut self.ports, PORT_MAP, prefix_len, key)
    }

    fn delete_policy_name(&mut self, id: u32) -> Result<(), Error> {
        delete(&mut self.names, POLICY_NAME_MAP, &id)
    }

    fn delete_node_address(&mut self, address: [u8; 4]) -> Result<(), Error> {
        delete(&mut self.nodes, NODE_MAP, &address)
    }

    fn delete_flows(&mut self, ifindex: u32) -> Result<(), Error> {
        // Keys first, deletes after: deleting the key an iteration stands on makes the kernel
        // start it over from the first key.
        let mut flows = Vec::new();
        for key in self.conntrack.keys() {
            let key = key.map_err(|source| read_error(CONNTRACK_MAP, source))?;
            if key.endpoint == ifindex {
                flows.push(key);
            }
        }
        for flow in &flows {
            delete(&mut self.conntrack, CONNTRACK_MAP, flow)?;
        }
        Ok(())
    }
}

/// Per endpoint and direction, the counters summed over CPUs (wrapping, as the programs count).
pub fn read_counters(bpf_dir: &Path) -> Result<BTreeMap<(u32, Direction), PolicyCounters>, Error> {
    let endpoints: HashMap<MapData, u32, EndpointValue> = open_pinned(bpf_dir, ENDPOINT_MAP)?;
    let counters: PerCpuArray<MapData, PolicyCounters> = open_pinned(bpf_dir, COUNTER_MAP)?;
    let mut sums = BTreeMap::new();
    for (ifindex, endpoint) in entries(&endpoints, ENDPOINT_MAP)? {
        if endpoint.counters == 0 {
            continue;
        }
        for direction in [Direction::Ingress, Direction::Egress] {
            let per_cpu = counters
                .get(&counter_index(endpoint.counters, direction.number()), 0)
                .map_err(|source| read_error(COUNTER_MAP, source))?;
            let sum = per_cpu
                .iter()
                .fold(PolicyCounters::default(), |sum, cpu| PolicyCounters {
                    allowed: sum.allowed.wrapping_add(cpu.allowed),
                    dropped: sum.dropped.wrapping_add(cpu.dropped),
                });
            sums.insert((ifindex, direction), sum);
        }
    }
    Ok(sums)
}

/// Policy ids and their names.
pub fn read_names(bpf_dir: &Path) -> Result<BTreeMap<u32, String>, Error> {
    let names: HashMap<MapData, u32, PolicyName> = open_pinned(bpf_dir, POLICY_NAME_MAP)?;
    Ok(entries(&names, POLICY_NAME_MAP)?
        .into_iter()
        .map(|(id, name)| (id, policy_name_str(&name)))
        .collect())
}

/// Reads [`PolicyEvent`]s from the pinned ring buffer. A ring buffer has one consumer
/// position: two readers of the same buffer split the events between them.
pub struct EventReader(RingReader<PolicyEvent>);

impl EventReader {
    /// Opens the ring buffer an earlier [`install`] pinned. Must be called within a Tokio
    /// runtime (with I/O enabled), which will wake [`EventReader::next`]; panics otherwise.
    pub fn open(bpf_dir: &Path) -> Result<Self, Error> {
        let path = policy_dir(bpf_dir).join(EVENT_MAP);
        Ok(Self(RingReader::open(path, shape(EVENT_MAP))?))
    }

    /// Waits for the next event. Events written while no reader waited are kept, up to the
    /// ring buffer's size; beyond that the programs lose new ones.
    pub async fn next(&mut self) -> Result<PolicyEvent, Error> {
        self.0.next().await
    }
}

#[cfg(test)]
fn decode_event(record: &[u8]) -> Result<PolicyEvent, Error> {
    crate::ring::decode(EVENT_MAP, record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_map_of_the_abi_has_one_shape() {
        let mut names: Vec<_> = MAP_SHAPES.iter().map(|shape| shape.name).collect();
        names.sort_unstable();
        let mut expected = crate::object::POLICY_MAPS.to_vec();
        expected.sort_unstable();
        assert_eq!(names, expected);
    }

    #[test]
    fn a_record_of_another_size_is_refused() {
        let error = decode_event(&[0; 24]).expect_err("a short record");
        assert!(
            matches!(error, Error::EventSize { size: 24, .. }),
            "{error}"
        );
        let event = PolicyEvent {
            endpoint: 5,
            policy: 9,
            protocol: 6,
            ..PolicyEvent::default()
        };
        // SAFETY: reads the bytes of a plain `#[repr(C)]` value without padding.
        let bytes: [u8; size_of::<PolicyEvent>()] = unsafe { std::mem::transmute(event) };
        assert_eq!(decode_event(&bytes).expect("a whole record"), event);
    }
}
