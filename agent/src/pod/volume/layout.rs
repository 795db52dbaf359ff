//! Where things go in a pod's directory (kubelet's `getPodDir`, `getPodVolumeDir`,
//! `getPodContainerDir`), and the path rules shared with manifest validation.

use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The mode of the pod directory and of the directories kubelet creates in it.
pub(crate) const POD_DIR_MODE: u32 = 0o750;

/// The longest path in a configMap, secret, downwardAPI or projected volume.
const MAX_PATH_LENGTH: usize = 4096;
/// The longest file name in one.
const MAX_FILE_NAME_LENGTH: usize = 255;

/// The volume plugins, named as kubelet names their directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VolumeKind {
    EmptyDir,
    HostPath,
    ConfigMap,
    Secret,
    DownwardApi,
    Projected,
}

impl VolumeKind {
    /// The plugin's directory under `<pod>/volumes`: `kubernetes.io~empty-dir`.
    pub fn plugin_dir(self) -> &'static str {
        match self {
            Self::EmptyDir => "kubernetes.io~empty-dir",
            Self::HostPath => "kubernetes.io~host-path",
            Self::ConfigMap => "kubernetes.io~configmap",
            Self::Secret => "kubernetes.io~secret",
            Self::DownwardApi => "kubernetes.io~downward-api",
            Self::Projected => "kubernetes.io~projected",
        }
    }

    /// The field of `spec.volumes[]` that selects it: `emptyDir`.
    pub fn field(self) -> &'static str {
        match self {
            Self::EmptyDir => "emptyDir",
            Self::HostPath => "hostPath",
            Self::ConfigMap => "configMap",
            Self::Secret => "secret",
            Self::DownwardApi => "downwardAPI",
            Self::Projected => "projected",
        }
    }
}

/// `<pods_dir>/<uid>`, refusing a UID that is not a single path component (it comes from
/// outside and is joined to a directory bosun deletes).
pub fn pod_dir(pods_dir: &Path, uid: &str) -> Result<PathBuf, &'static str> {
    if uid.is_empty() {
        return Err("must not be empty");
    }
    if uid == "." || uid == ".." || uid.contains('/') || uid.contains('\0') {
        return Err("must be a single path component");
    }
    Ok(pods_dir.join(uid))
}

/// `<pod_dir>/volumes/<plugin>/<name>`.
pub(crate) fn volume_dir(pod_dir: &Path, kind: VolumeKind, name: &str) -> PathBuf {
    pod_dir.join("volumes").join(kind.plugin_dir()).join(name)
}

/// `<pod_dir>/containers/<name>`, where termination-log files go.
pub(crate) fn container_dir(pod_dir: &Path, container: &str) -> PathBuf {
    pod_dir.join("containers").join(container)
}

/// `<pod_dir>/etc-hosts`.
pub(crate) fn etc_hosts_file(pod_dir: &Path) -> PathBuf {
    pod_dir.join("etc-hosts")
}

/// A `subPath` (kubelet's `ValidatePathNoBacksteps` plus its absolute-path check): relative,
/// and no `..` component.
pub fn check_sub_path(path: &str) -> Result<(), &'static str> {
    if path.starts_with('/') {
        return Err("must be a relative path");
    }
    if path.split('/').any(|part| part == "..") {
        return Err("must not contain '..'");
    }
    Ok(())
}

/// A file's path inside a configMap, secret, downwardAPI or projected volume (the atomic
/// writer's `validatePath`): not empty, relative, no `..` component, not starting with `..`
/// (those names are the writer's own), names of at most 255 bytes, at most 4096 bytes.
pub fn check_item_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("must not be empty");
    }
    check_sub_path(path)?;
    if path.len() > MAX_PATH_LENGTH {
        return Err("must be at most 4096 characters");
    }
    if path
        .split('/')
        .any(|part| part.len() > MAX_FILE_NAME_LENGTH)
    {
        return Err("file names must be at most 255 characters");
    }
    if path.starts_with("..") {
        return Err("must not start with '..'");
    }
    if clean_path(path).is_empty() {
        return Err("must name a file");
    }
    Ok(())
}

/// A file mode as errors show it: octal (`0o1000`), or decimal when negative.
pub(crate) fn format_mode(mode: i32) -> String {
    if mode < 0 {
        mode.to_string()
    } else {
        format!("{mode:#o}")
    }
}

/// `a//b/./c/` → `a/b/c`. Only for paths that passed [`check_sub_path`].
pub(crate) fn clean_path(path: &str) -> String {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(part) => part.to_str(),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// An I/O step that failed, with what it was doing and on which path.
#[derive(Debug)]
pub(crate) struct IoFailure {
    pub action: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

/// `map_err(at("creating", &path))`.
pub(crate) fn at<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> IoFailure + 'a {
    move |source| IoFailure {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` and its missing parents with `mode` (less the umask; parents of an existing
/// directory are left alone).
pub(crate) fn create_dirs(dir: &Path, mode: u32) -> Result<(), IoFailure> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(at("creating", dir))
}

/// Sets the permission bits of `path` to `mode` unless they already are (so a refresh
/// writes nothing).
pub(crate) fn ensure_mode(path: &Path, mode: u32) -> Result<(), IoFailure> {
    let metadata = fs::metadata(path).map_err(at("reading the mode of", path))?;
    if metadata.permissions().mode() & 0o7777 != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(at("setting the mode of", path))?;
    }
    Ok(())
}

/// A number for names that must not collide (kubelet uses Go's `math/rand`): the standard
/// library's randomly keyed hasher over a counter and the time. Callers still create names
/// exclusively and retry on a collision.
pub(crate) fn random_u32() -> u32 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    hasher.write_u128(now.as_nanos());
    hasher.write_u32(std::process::id());
    // The low half of a 64-bit hash is as random as the rest.
    hasher.finish() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_dir_refuses_uids_that_are_not_one_component() {
        let base = Path::new("/var/lib/bosun/pods");
        assert_eq!(
            pod_dir(base, "0b7c").as_deref(),
            Ok(Path::new("/var/lib/bosun/pods/0b7c"))
        );
        for bad in ["", ".", "..", "a/b", "/etc"] {
            assert!(pod_dir(base, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sub_paths() {
        for good in ["a", "a/b", "a/./b", "a..b", "..a"] {
            assert_eq!(check_sub_path(good), Ok(()), "{good}");
        }
        assert_eq!(check_sub_path("/a"), Err("must be a relative path"));
        assert_eq!(check_sub_path("a/../../b"), Err("must not contain '..'"));
        assert_eq!(check_sub_path(".."), Err("must not contain '..'"));
    }

    #[test]
    fn item_paths() {
        for good in ["key", "dir/key", "a..b", "./key"] {
            assert_eq!(check_item_path(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "/key",
            "../key",
            "a/../b",
            "..data",
            "..2026_x",
            ".",
            "./",
            &"a".repeat(256),
        ] {
            assert!(check_item_path(bad).is_err(), "{bad:?}");
        }
        assert_eq!(clean_path("./a//b/./c/"), "a/b/c");
    }

    #[test]
    fn random_numbers_differ() {
        let numbers: std::collections::BTreeSet<u32> = (0..100).map(|_| random_u32()).collect();
        assert!(numbers.len() > 95);
    }
}
