//! The kernel programs' object, built from `ebpf/programs` by the build script.

/// The ELF object holding every program and map definition, with BTF. Aligned because aya
/// parses it in place.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bosun-ebpf"));

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

    /// The service maps as the ABI describes them: (name, type, key size, value size, max
    /// entries, flags). The three lookup maps are not preallocated; LRU maps must be.
    const SERVICE_MAPS: [(&str, u32, usize, usize, u32, u32); 5] = [
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

        for (name, map_type, key_size, value_size, max_entries, flags) in SERVICE_MAPS {
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
            // Pinned by the service loader where it chooses, never by the object: any other
            // loader of it (the probe) would pin the map under /sys/fs/bpf and leave it there.
            assert_eq!(map.pinning(), PinningType::None, "pinning of {name}");
        }

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
}
