//! The kernel programs' object, built from `ebpf/programs` by the build script.

/// The ELF object holding every program and map definition, with BTF. Aligned because aya
/// parses it in place.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bosun-ebpf"));

#[cfg(test)]
mod tests {
    use bosun_ebpf_abi::{PacketCount, PROBE_COUNT_MAP, PROBE_PROGRAM};

    use super::OBJECT;

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
}
