//! The kernel programs' object, built from `ebpf/programs` by the build script.

/// The ELF object holding every program and map definition, with BTF. Aligned because aya
/// parses it in place.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bosun-ebpf"));

/// The maps of the object that only the service programs use.
pub(crate) const SERVICE_MAPS: [&str; 6] = [
    bosun_ebpf_abi::SERVICE_MAP,
    bosun_ebpf_abi::SLOT_MAP,
    bosun_ebpf_abi::BACKEND_MAP,
    bosun_ebpf_abi::AFFINITY_MAP,
    bosun_ebpf_abi::REVNAT_MAP,
    bosun_ebpf_abi::MAGLEV_MAP,
];

/// The maps of the object that only the programs for traffic from outside the node use (the
/// service maps aside).
pub(crate) const NODEPORT_MAPS: [&str; 3] = [
    bosun_ebpf_abi::NAT_MAP,
    bosun_ebpf_abi::NODEPORT_CONFIG_MAP,
    bosun_ebpf_abi::HOP_MAP,
];

/// The maps of the object that only the NetworkPolicy programs use.
pub(crate) const POLICY_MAPS: [&str; 8] = [
    bosun_ebpf_abi::ENDPOINT_MAP,
    bosun_ebpf_abi::PEER_MAP,
    bosun_ebpf_abi::PORT_MAP,
    bosun_ebpf_abi::CONNTRACK_MAP,
    bosun_ebpf_abi::NODE_MAP,
    bosun_ebpf_abi::COUNTER_MAP,
    bosun_ebpf_abi::EVENT_MAP,
    bosun_ebpf_abi::POLICY_NAME_MAP,
];

/// Entries of a map that the loading program does not use. Small enough to cost nothing, large
/// enough for any map type (a common LRU map spreads its entries over the CPUs' free lists).
const SMALLEST_UNUSED_MAP: u32 = 64;

/// Makes `maps` small in what `loader` loads. Loading the object creates every map it
/// declares, including those of programs this loader never loads; at full size some cost
/// megabytes of kernel memory (preallocated LRU maps, hash maps' bucket arrays, the ring
/// buffer). aya rounds a ring buffer's size up to a power-of-two number of pages: one page.
pub(crate) fn shrink_unused_maps(loader: &mut aya::EbpfLoader<'_>, maps: &[&'static str]) {
    for map in maps {
        loader.map_max_entries(map, SMALLEST_UNUSED_MAP);
    }
}

#[cfg(test)]
mod tests {
    use aya_obj::{
        generated::{bpf_map_type, BPF_F_NO_PREALLOC},
        maps::PinningType,
        programs::CgroupSockAddrAttachType,
        ProgramSection,
    };
    use bosun_ebpf_abi::{
        AffinityKey, AffinityValue, Backend, PacketCount, RevNatKey, RevNatValue, ServiceKey,
        ServiceValue, SlotKey, AFFINITY_MAP, AFFINITY_MAX_ENTRIES, BACKEND_MAP,
        BACKEND_MAX_ENTRIES, CONNECT4_PROGRAM, GETPEERNAME4_PROGRAM, PROBE_COUNT_MAP,
        PROBE_PROGRAM, RECVMSG4_PROGRAM, REVNAT_MAP, REVNAT_MAX_ENTRIES, SENDMSG4_PROGRAM,
        SERVICE_MAP, SERVICE_MAX_ENTRIES, SLOT_MAP, SLOT_MAX_ENTRIES,
    };

    use super::OBJECT;

    const BPF_MAP_TYPE_HASH: u32 = bpf_map_type::BPF_MAP_TYPE_HASH as u32;
    const BPF_MAP_TYPE_LRU_HASH: u32 = bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32;

    /// Catches a name or layout drift between the programs and the ABI crate without root.
    #[test]
    fn object_holds_what_the_abi_names() {
        let object = aya_obj::Object::parse(OBJECT).expect("the embedded object parses");

        let map = object
            .maps
            .get(PROBE_COUNT_MAP)
            .unwrap_or_else(|| panic!("map {PROBE_COUNT_MAP} is missing from the object"));
        assert_eq!(map.key_size() as usize, size_of::<u32>());
        assert_eq!(map.value_size() as usize, size_of::<PacketCount>());
        assert_eq!(map.max_entries(), 1);

        assert!(
            object.programs.contains_key(PROBE_PROGRAM),
            "program {PROBE_PROGRAM} is missing from the object; it has {:?}",
            object.programs.keys().collect::<Vec<_>>()
        );
    }

    /// (name, type, key size, value size, max entries, flags) of a map.
    type MapSpec = (&'static str, u32, usize, usize, u32, u32);

    /// Asserts that `object` has each of `maps`, shaped as described and not pinned.
    fn assert_maps(object: &aya_obj::Object, maps: &[MapSpec]) {
        for &(name, map_type, key_size, value_size, max_entries, flags) in maps {
            let map = object
                .maps
                .get(name)
                .unwrap_or_else(|| panic!("map {name} is missing from the object"));
            assert_eq!(map.map_type(), map_type, "type of {name}");
            assert_eq!(map.key_size() as usize, key_size, "key size of {name}");
            assert_eq!(
                map.value_size() as usize,
                value_size,
                "value size of {name}"
            );
            assert_eq!(map.max_entries(), max_entries, "max entries of {name}");
            assert_eq!(map.map_flags(), flags, "flags of {name}");
            // Pinned by a loader where it chooses, never by the object: any other loader of it
            // (the probe) would pin the map under /sys/fs/bpf and leave it there.
            assert_eq!(map.pinning(), PinningType::None, "pinning of {name}");
        }
    }

    /// The service maps as the ABI describes them: (name, type, key size, value size, max
    /// entries, flags). The three lookup maps are not preallocated; LRU maps must be.
    const SERVICE_MAPS: [MapSpec; 5] = [
        (
            SERVICE_MAP,
            BPF_MAP_TYPE_HASH,
            size_of::<ServiceKey>(),
            size_of::<ServiceValue>(),
            SERVICE_MAX_ENTRIES,
            BPF_F_NO_PREALLOC,
        ),
        (
            SLOT_MAP,
            BPF_MAP_TYPE_HASH,
            size_of::<SlotKey>(),
            size_of::<u32>(),
            SLOT_MAX_ENTRIES,
            BPF_F_NO_PREALLOC,
        ),
        (
            BACKEND_MAP,
            BPF_MAP_TYPE_HASH,
            size_of::<u32>(),
            size_of::<Backend>(),
            BACKEND_MAX_ENTRIES,
            BPF_F_NO_PREALLOC,
        ),
        (
            AFFINITY_MAP,
            BPF_MAP_TYPE_LRU_HASH,
            size_of::<AffinityKey>(),
            size_of::<AffinityValue>(),
            AFFINITY_MAX_ENTRIES,
            0,
        ),
        (
            REVNAT_MAP,
            BPF_MAP_TYPE_LRU_HASH,
            size_of::<RevNatKey>(),
            size_of::<RevNatValue>(),
            REVNAT_MAX_ENTRIES,
            0,
        ),
    ];

    #[test]
    fn object_holds_the_service_maps_and_programs() {
        let object = aya_obj::Object::parse(OBJECT).expect("the embedded object parses");

        assert_maps(&object, &SERVICE_MAPS);

        for (name, attach_type) in [
            (CONNECT4_PROGRAM, CgroupSockAddrAttachType::Connect4),
            (SENDMSG4_PROGRAM, CgroupSockAddrAttachType::UDPSendMsg4),
            (RECVMSG4_PROGRAM, CgroupSockAddrAttachType::UDPRecvMsg4),
            (GETPEERNAME4_PROGRAM, CgroupSockAddrAttachType::GetPeerName4),
        ] {
            let program = object.programs.get(name).unwrap_or_else(|| {
                panic!(
                    "program {name} is missing from the object; it has {:?}",
                    object.programs.keys().collect::<Vec<_>>()
                )
            });
            match program.section {
                ProgramSection::CgroupSockAddr { attach_type: found } => assert_eq!(
                    found as u32, attach_type as u32,
                    "attach type of {name}: {found:?}, not {attach_type:?}"
                ),
                ref other => panic!("{name} is in section {other:?}, not a cgroup/*4 one"),
            }
        }
    }

    /// The policy maps as the ABI describes them, and their two programs; the loader's
    /// shapes of pinned maps are checked against the kernel's view in netdp's real-kernel
    /// tests.
    #[test]
    fn object_holds_the_policy_maps_and_programs() {
        use aya_obj::generated::bpf_map_type::{
            BPF_MAP_TYPE_LPM_TRIE, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_RINGBUF,
        };
        use bosun_ebpf_abi::{
            ConntrackKey, ConntrackValue, EndpointValue, PeerKey, PolicyCounters, PolicyName,
            PortKey, CONNTRACK_MAP, CONNTRACK_MAX_ENTRIES, COUNTER_MAP, COUNTER_MAX_ENTRIES,
            ENDPOINT_MAP, ENDPOINT_MAX_ENTRIES, EVENT_MAP, EVENT_RING_BYTES, NODE_MAP,
            NODE_MAX_ENTRIES, PEER_MAP, PEER_MAX_ENTRIES, POLICY_EGRESS_PROGRAM,
            POLICY_INGRESS_PROGRAM, POLICY_NAME_MAP, POLICY_NAME_MAX_ENTRIES, PORT_MAP,
            PORT_MAX_ENTRIES,
        };
        const LPM: u32 = BPF_MAP_TYPE_LPM_TRIE as u32;
        // An LPM trie's key starts with its `u32` prefix length.
        let lpm_key = |data: usize| size_of::<u32>() + data;
        let maps = [
            (
                ENDPOINT_MAP,
                BPF_MAP_TYPE_HASH,
                size_of::<u32>(),
                size_of::<EndpointValue>(),
                ENDPOINT_MAX_ENTRIES,
                BPF_F_NO_PREALLOC,
            ),
            (
                PEER_MAP,
                LPM,
                lpm_key(size_of::<PeerKey>()),
                size_of::<u32>(),
                PEER_MAX_ENTRIES,
                BPF_F_NO_PREALLOC,
            ),
            (
                PORT_MAP,
                LPM,
                lpm_key(size_of::<PortKey>()),
                size_of::<u32>(),
                PORT_MAX_ENTRIES,
                BPF_F_NO_PREALLOC,
            ),
            (
                CONNTRACK_MAP,
                BPF_MAP_TYPE_LRU_HASH,
                size_of::<ConntrackKey>(),
                size_of::<ConntrackValue>(),
                CONNTRACK_MAX_ENTRIES,
                0,
            ),
            (
                NODE_MAP,
                BPF_MAP_TYPE_HASH,
                4,
                size_of::<u32>(),
                NODE_MAX_ENTRIES,
                BPF_F_NO_PREALLOC,
            ),
            (
                COUNTER_MAP,
                BPF_MAP_TYPE_PERCPU_ARRAY as u32,
                size_of::<u32>(),
                size_of::<PolicyCounters>(),
                COUNTER_MAX_ENTRIES,
                0,
            ),
            (
                EVENT_MAP,
                BPF_MAP_TYPE_RINGBUF as u32,
                0,
                0,
                EVENT_RING_BYTES,
                0,
            ),
            (
                POLICY_NAME_MAP,
                BPF_MAP_TYPE_HASH,
                size_of::<u32>(),
                size_of::<PolicyName>(),
                POLICY_NAME_MAX_ENTRIES,
                BPF_F_NO_PREALLOC,
            ),
        ];
        let object = aya_obj::Object::parse(OBJECT).expect("the embedded object parses");
        assert_maps(&object, &maps);
        for name in [POLICY_INGRESS_PROGRAM, POLICY_EGRESS_PROGRAM] {
            let program = object
                .programs
                .get(name)
                .unwrap_or_else(|| panic!("program {name} is missing from the object"));
            assert!(
                matches!(program.section, ProgramSection::SchedClassifier),
                "{name} is in section {:?}, not a classifier one",
                program.section
            );
        }
    }
}
