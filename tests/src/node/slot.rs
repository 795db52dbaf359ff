//! Slots keep concurrent test nodes apart. A slot number picks a node's bridge, subnet and
//! CNI network name; a process owns a slot while it holds an exclusive flock on the slot's
//! lock file, which the kernel releases when the process exits however it exits. Beside the
//! lock, the owner keeps a record of what it created, so whoever takes the slot next can
//! clean up after an owner that died before its own cleanup ran.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};

use super::teardown::NodeRecord;

/// Slot numbers go into the third octet of 10.244.0.0/16; slot 0 is left to anything that
/// defaults to 10.244.0.0/24.
pub(crate) const MIN_SLOT: u16 = 1;
pub(crate) const MAX_SLOT: u16 = 250;

/// An owned slot; dropping it releases the slot.
#[derive(Debug)]
pub(crate) struct SlotLock {
    pub slot: u16,
    record: PathBuf,
    _lock: Flock<File>,
}

impl SlotLock {
    /// Takes the slot if no live process holds it.
    pub fn try_acquire(slots_dir: &Path, slot: u16) -> Result<Option<SlotLock>> {
        let path = slots_dir.join(format!("{slot}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(Some(SlotLock {
                slot,
                record: slots_dir.join(format!("{slot}.json")),
                _lock: lock,
            })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(errno).with_context(|| format!("locking {}", path.display())),
        }
    }

    /// Takes the lowest free slot that `prepare` accepts. A slot that `prepare` refuses (its
    /// previous owner's leftovers cannot be removed, say) is released and skipped, so that one
    /// bad slot does not stop every later node.
    pub fn acquire_any(
        slots_dir: &Path,
        mut prepare: impl FnMut(&SlotLock) -> Result<()>,
    ) -> Result<SlotLock> {
        std::fs::create_dir_all(slots_dir)
            .with_context(|| format!("creating {}", slots_dir.display()))?;
        let mut refused = Vec::new();
        for slot in MIN_SLOT..=MAX_SLOT {
            if let Some(lock) = Self::try_acquire(slots_dir, slot)? {
                match prepare(&lock) {
                    Ok(()) => return Ok(lock),
                    Err(err) => {
                        tracing::warn!(slot, error = %format!("{err:#}"), "skipping a test node slot");
                        refused.push(format!("slot {slot}: {err:#}"));
                    }
                }
            }
        }
        bail!(
            "no free test node slot in {MIN_SLOT}..={MAX_SLOT} under {}{}",
            slots_dir.display(),
            refused
                .iter()
                .map(|r| format!("\n  {r}"))
                .collect::<String>()
        )
    }

    /// What the previous owner left behind, if it did not finish its cleanup.
    pub fn read_record(&self) -> Result<Option<NodeRecord>> {
        match std::fs::read(&self.record) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("parsing {}", self.record.display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err).with_context(|| format!("reading {}", self.record.display())),
        }
    }

    pub fn write_record(&self, record: &NodeRecord) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(record).context("serializing a node record")?;
        let tmp = self.record.with_extension("json.tmp");
        std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.record)
            .with_context(|| format!("writing {}", self.record.display()))
    }

    pub fn clear_record(&self) -> Result<()> {
        match std::fs::remove_file(&self.record) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                Err(err).with_context(|| format!("removing {}", self.record.display()))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_slot_is_not_handed_out_again() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let first = SlotLock::acquire_any(dir.path(), |_| Ok(()))?;
        let second = SlotLock::acquire_any(dir.path(), |_| Ok(()))?;
        assert_eq!(first.slot, MIN_SLOT);
        assert_eq!(second.slot, MIN_SLOT + 1);
        assert!(SlotLock::try_acquire(dir.path(), first.slot)?.is_none());
        drop(first);
        assert!(SlotLock::try_acquire(dir.path(), MIN_SLOT)?.is_some());
        Ok(())
    }

    #[test]
    fn a_slot_that_cannot_be_prepared_is_skipped() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let lock = SlotLock::acquire_any(dir.path(), |slot| match slot.slot {
            MIN_SLOT => bail!("leftovers that cannot be removed"),
            _ => Ok(()),
        })?;
        assert_eq!(lock.slot, MIN_SLOT + 1);
        // The refused slot was released.
        assert!(SlotLock::try_acquire(dir.path(), MIN_SLOT)?.is_some());
        Ok(())
    }

    #[test]
    fn the_record_survives_the_owner() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let lock = SlotLock::acquire_any(dir.path(), |_| Ok(()))?;
        assert!(lock.read_record()?.is_none());
        let record = NodeRecord::new("t", lock.slot, Path::new("/run/bosun-tests/t-1"));
        lock.write_record(&record)?;
        let slot = lock.slot;
        drop(lock);
        let next = SlotLock::try_acquire(dir.path(), slot)?.context("the slot is free")?;
        assert_eq!(next.read_record()?, Some(record));
        next.clear_record()?;
        assert!(next.read_record()?.is_none());
        Ok(())
    }
}
