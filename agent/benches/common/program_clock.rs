//! The kernel's run-time statistics of chosen BPF programs: how long they ran and how often,
//! for the benchmarks that ask what a program costs each run.
//!
//! A module of its own beside `common`, included by the benchmarks that read it (`policy`,
//! `proxy`).

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

/// The run time and runs of the programs behind some pinned links, from the kernel's BPF
/// statistics, which count only while the handle this holds is open (`BPF_ENABLE_STATS`, in
/// place of the `kernel.bpf_stats_enabled` sysctl: nothing to put back, and nothing left on if
/// the run dies). They cost every BPF program on the machine two clock reads a run, so
/// latencies and rates are measured without them.
pub struct ProgramClock {
    _enabled: OwnedFd,
    programs: Vec<u32>,
}

impl ProgramClock {
    /// Counts the programs of the links pinned at `links` (or of the programs pinned there,
    /// as the clsact fallback of the tc programs pins them).
    pub fn start(links: &[PathBuf]) -> Result<ProgramClock> {
        let enabled = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("enabling the kernel's BPF run-time statistics")?;
        let programs = links
            .iter()
            .map(|pin| {
                bosun_netdp::tc::pinned_program_id(pin)
                    .with_context(|| format!("reading the pin {}", pin.display()))?
                    .with_context(|| format!("no program pinned at {}", pin.display()))
            })
            .collect::<Result<_>>()?;
        Ok(ProgramClock {
            _enabled: enabled,
            programs,
        })
    }

    /// The programs' run time and runs so far, added up.
    pub fn read(&self) -> Result<(Duration, u64)> {
        let mut found = 0;
        let (mut time, mut runs) = (Duration::ZERO, 0);
        // Programs of others may come and go meanwhile: only ours must be readable.
        for info in aya::programs::loaded_programs().flatten() {
            if self.programs.contains(&info.id()) {
                found += 1;
                time += info.run_time();
                runs += info.run_count();
            }
        }
        ensure!(
            found == self.programs.len(),
            "the programs {:?} are not loaded",
            self.programs
        );
        Ok((time, runs))
    }
}
