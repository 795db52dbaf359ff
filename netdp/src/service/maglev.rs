//! Maglev hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
//! Balancer", NSDI 2016) for traffic from outside the node: each backend gets a permutation of
//! the table's entries from its own address, and the backends take turns claiming their next
//! free entry until the table is full. Every node computes the same table from the same
//! backends, so a flow lands on the same backend whichever node receives it, and a backend
//! that comes or goes moves few flows besides its own.
//!
//! The hashes here are fixed (not std's, which may change between releases): nodes running
//! different builds of bosun must agree.

use bosun_ebpf_abi::{
    address_from_host, port_from_host, ExternalBackend, MaglevTable, EXTERNAL_BACKEND_LOCAL,
    MAGLEV_TABLE_SIZE,
};

use super::ExternalTarget;

/// The table for `backends` (any order; duplicates count once). Empty input gives an empty
/// table, which no caller writes: a frontend without backends has no table.
pub fn table(backends: &[ExternalTarget]) -> MaglevTable {
    let mut entries = entries(backends);
    // Sorted: the turns are taken in address order, the same on every node.
    entries.sort_unstable_by_key(|e| (e.address, e.port));
    entries.dedup_by_key(|e| (e.address, e.port));
    let mut table = MaglevTable::default();
    if entries.is_empty() {
        return table;
    }
    let size = MAGLEV_TABLE_SIZE as u64;
    let permutations: Vec<(u64, u64)> = entries
        .iter()
        .map(|e| {
            let offset = hash(e, 0x6d61_676c_6576_5f6f) % size;
            let skip = hash(e, 0x6d61_676c_6576_5f73) % (size - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0_u64; entries.len()];
    let mut filled = vec![false; MAGLEV_TABLE_SIZE];
    let mut count = 0;
    'fill: loop {
        for (i, (offset, skip)) in permutations.iter().enumerate() {
            // Each permutation visits every entry once (the size is prime), so this ends.
            let mut slot = ((offset + next[i] * skip) % size) as usize;
            while filled[slot] {
                next[i] += 1;
                slot = ((offset + next[i] * skip) % size) as usize;
            }
            filled[slot] = true;
            table.entries[slot] = entries[i];
            next[i] += 1;
            count += 1;
            if count == MAGLEV_TABLE_SIZE {
                break 'fill;
            }
        }
    }
    table
}

/// What identifies a table's content: its distinct entries. Computed alike from the backends
/// a table is made of and from a table read back from the kernel, so that a restart can tell
/// which tables are already right.
pub fn fingerprint(backends: &[ExternalTarget]) -> u64 {
    fingerprint_of(entries(backends))
}

/// [`fingerprint`] of a table as the map holds it.
pub fn fingerprint_table(table: &MaglevTable) -> u64 {
    fingerprint_of(
        table
            .entries
            .iter()
            .copied()
            .filter(|e| e.address != [0; 4])
            .collect(),
    )
}

fn fingerprint_of(mut entries: Vec<ExternalBackend>) -> u64 {
    entries.sort_unstable();
    entries.dedup();
    let mut h = Fnv::new();
    for e in &entries {
        h.write(&e.address);
        h.write(&e.port);
        h.write(&[e.flags]);
    }
    h.0
}

fn entries(backends: &[ExternalTarget]) -> Vec<ExternalBackend> {
    backends
        .iter()
        .map(|b| ExternalBackend {
            address: address_from_host(b.backend.address.to_bits()),
            port: port_from_host(b.backend.port),
            flags: if b.local { EXTERNAL_BACKEND_LOCAL } else { 0 },
            _pad: 0,
        })
        .collect()
}

/// A backend's hash for its permutation: its address and port only (whether it is local
/// differs between nodes).
fn hash(entry: &ExternalBackend, seed: u64) -> u64 {
    let mut h = Fnv::new();
    h.write(&seed.to_le_bytes());
    h.write(&entry.address);
    h.write(&entry.port);
    // FNV's low bits mix poorly; a final avalanche spreads them.
    let mut x = h.0;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// FNV-1a, 64 bits.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::service::BackendAddr;

    fn backends(count: u8) -> Vec<ExternalTarget> {
        (1..=count)
            .map(|i| ExternalTarget {
                backend: BackendAddr {
                    address: Ipv4Addr::new(10, 1, 0, i),
                    port: 8080,
                },
                local: i % 2 == 0,
            })
            .collect()
    }

    fn share(table: &MaglevTable, backend: &ExternalTarget) -> usize {
        let address = address_from_host(backend.backend.address.to_bits());
        table
            .entries
            .iter()
            .filter(|e| e.address == address)
            .count()
    }

    #[test]
    fn every_entry_is_filled_and_the_backends_share_it_evenly() {
        let backends = backends(7);
        let table = table(&backends);
        assert!(table.entries.iter().all(|e| e.address != [0; 4]));
        let even = MAGLEV_TABLE_SIZE / backends.len();
        for backend in &backends {
            let share = share(&table, backend);
            // Maglev's balance: every share within one of the others.
            assert!(
                share == even || share == even + 1,
                "{backend} has {share} entries, not {even} or {}",
                even + 1
            );
        }
    }

    #[test]
    fn the_table_does_not_depend_on_the_order_or_on_which_backends_are_local() {
        let mut backends = backends(5);
        let first = table(&backends);
        backends.reverse();
        for backend in &mut backends {
            backend.local = !backend.local;
        }
        let second = table(&backends);
        let addresses = |t: &MaglevTable| -> Vec<([u8; 4], [u8; 2])> {
            t.entries.iter().map(|e| (e.address, e.port)).collect()
        };
        assert_eq!(addresses(&first), addresses(&second));
    }

    #[test]
    fn a_backend_leaving_moves_few_flows_besides_its_own() {
        let all = backends(10);
        let before = table(&all);
        let gone = all[3];
        let after = table(
            &all.iter()
                .copied()
                .filter(|b| *b != gone)
                .collect::<Vec<_>>(),
        );
        let gone_address = address_from_host(gone.backend.address.to_bits());
        let moved = before
            .entries
            .iter()
            .zip(after.entries.iter())
            .filter(|(b, a)| b.address != gone_address && b.address != a.address)
            .count();
        // A table ~100 times the backends: a few percent (5.5% measured here; a modulo
        // hash would move about 90%).
        assert!(
            moved * 100 <= MAGLEV_TABLE_SIZE * 8,
            "{moved} of {MAGLEV_TABLE_SIZE} entries moved besides the leaving backend's"
        );
    }

    #[test]
    fn a_table_read_back_has_the_fingerprint_of_its_backends() {
        let backends = backends(4);
        assert_eq!(fingerprint_table(&table(&backends)), fingerprint(&backends));
        assert_ne!(fingerprint(&backends), fingerprint(&backends[1..]));
        let mut flipped = backends.clone();
        flipped[0].local = !flipped[0].local;
        assert_ne!(fingerprint(&flipped), fingerprint(&backends));
    }
}
