//! The `bosun` binary's layout: the steady state's functions (agent/steady-state-functions.txt)
//! are placed together in `.text.steady`, just before the rest of the code (agent/build.rs).
//! Read from the ELF section headers of the binary cargo built for these tests; the section is
//! missing, or nearly empty, when the linker script is not passed or the patterns no longer
//! match the build's symbol names (v0 mangling, .cargo/config.toml).

/// A section's name, address, size and flags, from an ELF64 little-endian file.
struct Section {
    name: String,
    address: u64,
    size: u64,
    flags: u64,
}

const SHF_EXECINSTR: u64 = 0x4;

fn sections(elf: &[u8]) -> Vec<Section> {
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().expect("2 bytes"));
    let u32_at = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().expect("8 bytes"));
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!((elf[4], elf[5]), (2, 1), "ELF64, little-endian");
    let table = u64_at(0x28) as usize;
    let entry = u16_at(0x3a) as usize;
    let count = u16_at(0x3c) as usize;
    let names = table + entry * u16_at(0x3e) as usize;
    let names = u64_at(names + 0x18) as usize;
    (0..count)
        .map(|i| {
            let header = table + i * entry;
            let name = names + u32_at(header) as usize;
            let end = elf[name..].iter().position(|&b| b == 0).expect("a name") + name;
            Section {
                name: String::from_utf8_lossy(&elf[name..end]).into_owned(),
                flags: u64_at(header + 0x08),
                address: u64_at(header + 0x10),
                size: u64_at(header + 0x20),
            }
        })
        .collect()
}

#[test]
fn the_steady_state_functions_are_placed_together_before_the_rest_of_the_code() {
    let elf = std::fs::read(env!("CARGO_BIN_EXE_bosun")).expect("read the bosun binary");
    let sections = sections(&elf);
    let find = |name: &str| {
        sections
            .iter()
            .find(|section| section.name == name)
            .unwrap_or_else(|| panic!("no {name} section in the bosun binary"))
    };
    let steady = find(".text.steady");
    let text = find(".text");
    assert!(steady.flags & SHF_EXECINSTR != 0, "code");
    // Release builds hold 2.0 MB there, test builds 1.2 MB; a list that matches next to
    // nothing holds a few kilobytes.
    assert!(
        steady.size >= 512 << 10,
        ".text.steady holds {} bytes",
        steady.size
    );
    assert!(
        steady.address + steady.size <= text.address
            && text.address - (steady.address + steady.size) < 4096,
        "not right before .text: .text.steady at {:#x}+{:#x}, .text at {:#x}",
        steady.address,
        steady.size,
        text.address
    );
}
