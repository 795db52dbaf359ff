//! Reading a pinned BPF ring buffer of fixed-size records as they come, on Tokio.

use std::{marker::PhantomData, path::PathBuf};

use aya::{
    maps::{MapData, RingBuf},
    Pod,
};
use tokio::io::{unix::AsyncFd, Interest};

use crate::{
    service::bpf::{open_map, MapShape},
    Error,
};

/// The records of type `T` of one pinned ring buffer.
pub(crate) struct RingReader<T> {
    path: PathBuf,
    map: &'static str,
    ring: AsyncFd<RingBuf<MapData>>,
    record: PhantomData<T>,
}

impl<T: Pod> RingReader<T> {
    /// Opens the ring buffer pinned at `path`, checking it has `shape`. Must be called within a
    /// Tokio runtime (with I/O enabled), which will wake [`RingReader::next`]; panics
    /// otherwise.
    pub(crate) fn open(path: PathBuf, shape: &MapShape) -> Result<Self, Error> {
        let ring: RingBuf<MapData> = open_map(&path, shape)?;
        // SAFETY: the ring buffer owns the map's file descriptor: it stays open, and
        // `as_raw_fd` returns it, until the `AsyncFd` drops the ring buffer.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(
            |error| Error::WaitEvents {
                path: path.clone(),
                source: error.into_parts().1,
            },
        )?;
        Ok(Self {
            path,
            map: shape.name,
            ring,
            record: PhantomData,
        })
    }

    /// Waits for the next record. Records written while no reader waited are kept, up to the
    /// ring buffer's size; beyond that the programs lose new ones.
    pub(crate) async fn next(&mut self) -> Result<T, Error> {
        loop {
            let mut ready = self
                .ring
                .readable_mut()
                .await
                .map_err(|source| Error::WaitEvents {
                    path: self.path.clone(),
                    source,
                })?;
            if let Some(record) = ready.get_inner_mut().next() {
                return decode(self.map, &record);
            }
            // Empty: wait for the kernel's next wakeup.
            ready.clear_ready();
        }
    }
}

/// A record of `map`, which must be exactly one `T`.
pub(crate) fn decode<T: Pod>(map: &'static str, record: &[u8]) -> Result<T, Error> {
    if record.len() != size_of::<T>() {
        return Err(Error::EventSize {
            map,
            size: record.len(),
            expected: size_of::<T>(),
        });
    }
    // SAFETY: the record holds exactly `size_of::<T>()` bytes (checked above), and `T: Pod`
    // makes every bit pattern a valid value; `read_unaligned` needs no alignment.
    Ok(unsafe { record.as_ptr().cast::<T>().read_unaligned() })
}
