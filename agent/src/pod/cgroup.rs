//! Pod-level cgroups. As kubelet does, bosun owns the pod's cgroup (the sandbox's cgroup
//! parent, e.g. `/kubepods/besteffort/pod<UID>`): it sets the pod-wide limits there
//! before the sandbox starts, the runtime creates the containers' cgroups below it, and
//! bosun removes it once the pod is gone (the runtime leaves it behind).
//!
//! Everything acts on the hierarchies listed in a mount table, so the logic is tested on
//! a temporary directory standing in for `/sys/fs/cgroup`.

use std::io;
use std::path::{Path, PathBuf};

/// An error setting a pod's limits; the pod's sandbox is not created, and the worker
/// tries again on its next sync.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("podPidsLimit: no cgroup hierarchy has the pids controller")]
    NoPidsController,
    #[error("writing {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
}

/// The limits kubelet puts on the pod's cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodLimits {
    /// `podPidsLimit`: at most this many processes in the whole pod; negative = no limit.
    pub pids_max: Option<i64>,
}

/// One mounted cgroup hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Hierarchy {
    mount_point: PathBuf,
    /// cgroup v2 (one hierarchy with every controller not bound to a v1 one).
    unified: bool,
    /// The v1 controllers bound to it (from the mount options).
    controllers: Vec<String>,
}

/// The cgroup hierarchies of this host (or of a test's stand-in).
#[derive(Clone, Debug, Default)]
pub struct Cgroups {
    hierarchies: Vec<Hierarchy>,
}

impl Cgroups {
    /// The hierarchies mounted in this process's mount namespace.
    pub fn host() -> Self {
        std::fs::read_to_string("/proc/self/mounts")
            .map(|m| Self::from_mounts(&m))
            .unwrap_or_default()
    }

    /// Reads the cgroup and cgroup2 entries of a mount table (`/proc/self/mounts` format).
    pub fn from_mounts(mounts: &str) -> Self {
        let hierarchies = mounts
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (mount_point, fstype, options) =
                    (fields.get(1)?, fields.get(2)?, fields.get(3)?);
                let unified = match *fstype {
                    "cgroup2" => true,
                    "cgroup" => false,
                    _ => return None,
                };
                let controllers = if unified {
                    Vec::new()
                } else {
                    options
                        .split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains('='))
                        .filter(|o| !o.starts_with("no") && *o != "relatime")
                        .map(str::to_owned)
                        .collect()
                };
                Some(Hierarchy {
                    mount_point: PathBuf::from(mount_point.replace("\\040", " ")),
                    unified,
                    controllers,
                })
            })
            .collect();
        Cgroups { hierarchies }
    }

    /// Creates the pod's cgroup where a limit needs it and writes the limits. Idempotent.
    pub fn apply(&self, parent: &str, limits: &PodLimits) -> Result<(), CgroupError> {
        let Some(pids) = limits.pids_max else {
            return Ok(());
        };
        let value = if pids < 0 {
            "max".to_owned()
        } else {
            pids.to_string()
        };
        let dir = self
            .hierarchy_with("pids")
            .map(|h| h.mount_point.join(relative(parent)))
            .ok_or(CgroupError::NoPidsController)?;
        write(&dir, "pids.max", &value)
    }

    /// The hierarchy the controller is bound to: its v1 hierarchy if it has one, else the
    /// unified one when it offers the controller.
    fn hierarchy_with(&self, controller: &str) -> Option<&Hierarchy> {
        self.hierarchies
            .iter()
            .find(|h| !h.unified && h.controllers.iter().any(|c| c == controller))
            .or_else(|| {
                self.hierarchies.iter().find(|h| {
                    h.unified
                        && std::fs::read_to_string(h.mount_point.join("cgroup.controllers"))
                            .is_ok_and(|c| c.split_whitespace().any(|c| c == controller))
                })
            })
    }

    /// Removes the pod's cgroup in every hierarchy, leaf first. Best effort: a cgroup that
    /// still holds processes stays, and is tried again the next time.
    pub fn remove(&self, parent: &str) {
        let relative = relative(parent);
        if relative.as_os_str().is_empty() {
            return;
        }
        for h in &self.hierarchies {
            remove_tree(&h.mount_point.join(&relative));
        }
    }
}

fn relative(parent: &str) -> PathBuf {
    PathBuf::from(parent.trim_start_matches('/'))
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    let error = |source| CgroupError::Write {
        path: path.clone(),
        value: value.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(error)?;
    std::fs::write(&path, value).map_err(error)
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,nosuid,relatime,pids 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    #[test]
    fn controllers_come_from_the_mount_options() {
        let cgroups = Cgroups::from_mounts(HYBRID);
        assert_eq!(cgroups.hierarchies.len(), 4);
        let pids = cgroups.hierarchy_with("pids").expect("pids");
        assert_eq!(pids.mount_point, Path::new("/sys/fs/cgroup/pids"));
        assert_eq!(pids.controllers, ["pids"]);
        let named = &cgroups.hierarchies[2];
        assert!(named.controllers.is_empty(), "{named:?}");
        assert!(cgroups.hierarchies[3].unified);
    }

    fn stand_in(dir: &Path) -> Cgroups {
        let mounts = format!(
            "cgroup {d}/pids cgroup rw,pids 0 0\ncgroup {d}/cpu cgroup rw,cpu 0 0\n",
            d = dir.display()
        );
        Cgroups::from_mounts(&mounts)
    }

    #[test]
    fn the_pids_limit_is_written_to_the_pod_cgroup() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cgroups = stand_in(dir.path());
        let parent = "/kubepods/besteffort/podabc";
        cgroups
            .apply(parent, &PodLimits { pids_max: Some(64) })
            .expect("apply");
        let file = dir.path().join("pids/kubepods/besteffort/podabc/pids.max");
        assert_eq!(std::fs::read_to_string(&file).expect("pids.max"), "64");
        cgroups
            .apply(parent, &PodLimits { pids_max: Some(-1) })
            .expect("apply");
        assert_eq!(std::fs::read_to_string(&file).expect("pids.max"), "max");
        assert!(!dir.path().join("cpu/kubepods").exists());
    }

    #[test]
    fn no_limit_creates_nothing_and_a_missing_controller_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        stand_in(dir.path())
            .apply("/kubepods/podx", &PodLimits::default())
            .expect("nothing to do");
        assert!(!dir.path().join("pids/kubepods").exists());
        let err = Cgroups::from_mounts("")
            .apply("/kubepods/podx", &PodLimits { pids_max: Some(5) })
            .unwrap_err();
        assert!(err.to_string().contains("podPidsLimit"), "{err}");
    }

    #[test]
    fn removal_takes_the_pod_cgroup_leaf_first_in_every_hierarchy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cgroups = stand_in(dir.path());
        for h in ["pids", "cpu"] {
            std::fs::create_dir_all(dir.path().join(h).join("kubepods/podx/ctr1")).expect("mkdir");
        }
        cgroups.remove("/kubepods/podx");
        for h in ["pids", "cpu"] {
            assert!(!dir.path().join(h).join("kubepods/podx").exists());
            assert!(dir.path().join(h).join("kubepods").exists());
        }
        // The root is never removed.
        cgroups.remove("/");
        assert!(dir.path().join("pids").exists());
    }
}
