//! The one seam for the privileged operations of volumes: mounting and unmounting tmpfs, and
//! reading the kernel's mount table. [`HostMounter`] does them with `mount(2)`,
//! `umount2(2)` and `/proc/self/mountinfo`; [`FakeMounter`] records them in memory so that
//! the volume logic is tested without root.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use nix::mount::{MntFlags, MsFlags};

/// Mounts as the volume code needs them. Implementations must be callable from several pod
/// workers at once.
pub trait Mounter: Send + Sync {
    /// Mounts a new tmpfs on the existing directory `target`, limited to `size_bytes` (none:
    /// the kernel's default, half of the node's memory).
    fn mount_tmpfs(&self, target: &Path, size_bytes: Option<u64>) -> io::Result<()>;

    /// Unmounts whatever is mounted on `target` (the topmost mount when several are stacked).
    fn unmount(&self, target: &Path) -> io::Result<()>;

    /// Every mount point at or under `dir`, as the kernel lists them; several entries for
    /// stacked mounts. `dir` should be canonical: the kernel lists canonical paths.
    fn mount_points_under(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
}

/// The real thing. Needs `CAP_SYS_ADMIN` in the node's mount namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostMounter;

/// Where the kernel lists the mounts of the calling process's mount namespace.
const MOUNTINFO: &str = "/proc/self/mountinfo";

impl Mounter for HostMounter {
    fn mount_tmpfs(&self, target: &Path, size_bytes: Option<u64>) -> io::Result<()> {
        // kubelet passes no other option: the root of the tmpfs keeps its default mode 1777.
        let options = size_bytes.map(|size| format!("size={size}"));
        nix::mount::mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            MsFlags::empty(),
            options.as_deref(),
        )
        .map_err(io::Error::from)
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        nix::mount::umount2(target, MntFlags::empty()).map_err(io::Error::from)
    }

    fn mount_points_under(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let table = fs::read(MOUNTINFO)?;
        Ok(mount_points(&table)
            .filter(|point| point.starts_with(dir))
            .collect())
    }
}

/// The mount points of a mountinfo table (`proc(5)`): the fifth field of each line, with the
/// kernel's octal escapes (`\040` for a space) undone.
pub(crate) fn mount_points(table: &[u8]) -> impl Iterator<Item = PathBuf> + '_ {
    table
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(|field| PathBuf::from(OsStr::from_bytes(&unescape_octal(field))))
}

fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut index = 0;
    while index < field.len() {
        let digits = field.get(index + 1..index + 4);
        let octal = digits.filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (field[index], octal) {
            (b'\\', Some(d)) => {
                let value = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                index += 4;
            }
            (byte, _) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    out
}

/// A call [`FakeMounter`] received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountCall {
    MountTmpfs {
        target: PathBuf,
        size_bytes: Option<u64>,
    },
    Unmount {
        target: PathBuf,
    },
}

/// An in-memory [`Mounter`] for tests: it records every call, keeps a mount table, and can
/// be told to fail. Mounting changes nothing on disk: files written "into" a fake tmpfs land
/// in the directory underneath.
#[derive(Debug, Default)]
pub struct FakeMounter {
    state: Mutex<FakeState>,
}

#[derive(Debug, Default)]
struct FakeState {
    mounted: Vec<PathBuf>,
    calls: Vec<MountCall>,
    fail_with: Option<io::ErrorKind>,
}

impl FakeMounter {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        // A test that panicked while holding the lock leaves a usable table behind.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<MountCall> {
        self.state().calls.clone()
    }

    /// What is mounted now, in mount order.
    pub fn mounted(&self) -> Vec<PathBuf> {
        self.state().mounted.clone()
    }

    /// Makes every later mount and unmount fail with `kind` (`None`: succeed again). The
    /// failed calls are still recorded.
    pub fn fail_with(&self, kind: Option<io::ErrorKind>) {
        self.state().fail_with = kind;
    }
}

impl Mounter for FakeMounter {
    fn mount_tmpfs(&self, target: &Path, size_bytes: Option<u64>) -> io::Result<()> {
        let mut state = self.state();
        state.calls.push(MountCall::MountTmpfs {
            target: target.to_path_buf(),
            size_bytes,
        });
        if let Some(kind) = state.fail_with {
            return Err(io::Error::new(kind, "injected mount failure"));
        }
        if !target.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "mount point is not a directory",
            ));
        }
        state.mounted.push(target.to_path_buf());
        Ok(())
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        let mut state = self.state();
        state.calls.push(MountCall::Unmount {
            target: target.to_path_buf(),
        });
        if let Some(kind) = state.fail_with {
            return Err(io::Error::new(kind, "injected unmount failure"));
        }
        match state.mounted.iter().rposition(|p| p == target) {
            Some(index) => {
                state.mounted.remove(index);
                Ok(())
            }
            None => Err(io::Error::from_raw_os_error(nix::libc::EINVAL)),
        }
    }

    fn mount_points_under(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        Ok(self
            .state()
            .mounted
            .iter()
            .filter(|p| p.starts_with(dir))
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mount_points_from_mountinfo() {
        let table = b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
            98 22 0:50 / /var/lib/bosun/pods/u1/volumes/kubernetes.io~secret/a\\040b rw - tmpfs tmpfs rw\n\
            \n";
        let points: Vec<PathBuf> = mount_points(table).collect();
        assert_eq!(
            points,
            vec![
                PathBuf::from("/"),
                PathBuf::from("/var/lib/bosun/pods/u1/volumes/kubernetes.io~secret/a b"),
            ]
        );
    }

    #[test]
    fn unescapes_only_octal_escapes() {
        assert_eq!(unescape_octal(br"a\134b\011c"), b"a\\b\tc");
        assert_eq!(unescape_octal(br"a\9b\"), br"a\9b\");
    }

    #[test]
    fn fake_records_and_fails_on_request() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = FakeMounter::new();
        fake.mount_tmpfs(dir.path(), Some(1024)).expect("mounts");
        assert_eq!(fake.mount_points_under(dir.path()).expect("lists").len(), 1);
        fake.fail_with(Some(io::ErrorKind::PermissionDenied));
        assert!(fake.unmount(dir.path()).is_err());
        fake.fail_with(None);
        fake.unmount(dir.path()).expect("unmounts");
        assert!(
            fake.unmount(dir.path()).is_err(),
            "nothing is mounted any more"
        );
        assert_eq!(fake.calls().len(), 4);
        assert!(fake.mounted().is_empty());
    }
}
