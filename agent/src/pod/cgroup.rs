//! Pod-level cgroups. As kubelet does, bosun owns the pod's cgroup (the sandbox's cgroup
//! parent, e.g. `/kubepods/besteffort/pod<UID>`): it sets the pod-wide limits there
//! before the sandbox starts, the runtime creates the containers' cgroups below it, and
//! bosun removes it once the pod is gone (the runtime leaves it behind).
//!
//! Two layouts, kubelet's `cgroupDriver`: `cgroupfs` names cgroups by path and bosun writes
//! the cgroup files itself; `systemd` names them as nested slices
//! (`/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<UID>.slice`) that
//! systemd owns, so the pod's slice is started and stopped through systemd (see
//! [`super::systemd`]) and the runtime must use systemd too (containerd's `SystemdCgroup`).
//!
//! The cgroupfs logic acts on the hierarchies listed in a mount table, so it is tested on
//! a temporary directory standing in for `/sys/fs/cgroup`.

use std::io;
use std::path::{Path, PathBuf};

use super::systemd::{systemd, SliceLimits, SystemdError};

/// kubelet's `cgroupDriver`: how cgroups are named and who writes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CgroupDriver {
    #[default]
    Cgroupfs,
    Systemd,
}

impl CgroupDriver {
    /// The configuration's value, as kubelet spells it.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "cgroupfs" => Ok(CgroupDriver::Cgroupfs),
            "systemd" => Ok(CgroupDriver::Systemd),
            other => Err(format!(
                "cgroupDriver: unsupported value {other:?}: must be \"cgroupfs\" or \"systemd\" (the container runtime's driver: containerd's SystemdCgroup)"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CgroupDriver::Cgroupfs => "cgroupfs",
            CgroupDriver::Systemd => "systemd",
        }
    }

    /// The `kubepods` cgroup below kubelet's `cgroupRoot` (default `/`), as a path of this
    /// driver. With systemd, `cgroupRoot` is a slice (`/` or `NAME.slice`), read as kubelet's
    /// `ParseSystemdToCgroupName` reads it: `a-b.slice` is the cgroup `/a/b`.
    pub fn kubepods(self, cgroup_root: Option<&str>) -> Result<String, String> {
        let root = cgroup_root.unwrap_or("/");
        match self {
            CgroupDriver::Cgroupfs => Ok(format!("{}/kubepods", root.trim_end_matches('/'))),
            CgroupDriver::Systemd => {
                let root = root.trim_end_matches('/');
                if root.is_empty() {
                    return Ok(self.child("/", "kubepods"));
                }
                let base = root.rsplit('/').next().unwrap_or(root);
                let Some(name) = base.strip_suffix(".slice").filter(|n| valid_slice_name(n)) else {
                    return Err(format!(
                        "cgroupRoot: invalid value {root:?}: with cgroupDriver systemd it must be \"/\" or a slice name such as \"system.slice\""
                    ));
                };
                let mut path = String::from("/");
                for part in name.split('-') {
                    path = self.child(&path, &part.replace('_', "-"));
                }
                Ok(self.child(&path, "kubepods"))
            }
        }
    }

    /// The cgroup `component` directly below `parent`, both paths of this driver: with
    /// systemd the child of slice `a-b.slice` is `a-b-<component>.slice`, a `-` in the
    /// component written `_` (kubelet's `escapeSystemdCgroupName`).
    pub fn child(self, parent: &str, component: &str) -> String {
        let parent = parent.trim_end_matches('/');
        match self {
            CgroupDriver::Cgroupfs => format!("{parent}/{component}"),
            CgroupDriver::Systemd => {
                let escaped = component.replace('-', "_");
                let prefix = parent
                    .rsplit('/')
                    .next()
                    .and_then(|base| base.strip_suffix(".slice"))
                    .filter(|p| !p.is_empty());
                match prefix {
                    Some(prefix) => format!("{parent}/{prefix}-{escaped}.slice"),
                    None => format!("{parent}/{escaped}.slice"),
                }
            }
        }
    }
}

/// What systemd accepts as a slice's name before `.slice`: not empty, no `/`, no leading,
/// trailing or doubled `-` (systemd's `ExpandSlice` rules).
fn valid_slice_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('/')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

/// A systemd slice path's unit (its last element) and its parent's (`-.slice` at the top).
fn slice_units(path: &str) -> (&str, &str) {
    let path = path.trim_end_matches('/');
    let (parent, unit) = path.rsplit_once('/').unwrap_or(("", path));
    let parent = parent
        .rsplit('/')
        .next()
        .filter(|p| !p.is_empty())
        .unwrap_or("-.slice");
    (unit, parent)
}

/// An error setting a pod's limits; the pod's sandbox is not created, and the worker
/// tries again on its next sync.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("podPidsLimit: no cgroup hierarchy has the pids controller")]
    NoPidsController,
    #[error(transparent)]
    Systemd(#[from] SystemdError),
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

    /// Creates the pod's cgroup and sets the limits: with cgroupfs, only where a limit needs
    /// it, writing the files; with systemd, always, as a slice with the limits as properties.
    /// Idempotent.
    pub async fn apply(
        &self,
        driver: CgroupDriver,
        parent: &str,
        limits: &PodLimits,
    ) -> Result<(), CgroupError> {
        match driver {
            CgroupDriver::Cgroupfs => self.write_limits(parent, limits),
            CgroupDriver::Systemd => {
                let (unit, parent_unit) = slice_units(parent);
                let limits = SliceLimits {
                    tasks_max: limits.pids_max.map(|pids| u64::try_from(pids).ok()),
                };
                systemd()
                    .await?
                    .start_slice(unit, parent_unit, limits)
                    .await?;
                Ok(())
            }
        }
    }

    fn write_limits(&self, parent: &str, limits: &PodLimits) -> Result<(), CgroupError> {
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

    /// Removes the pod's cgroup: with systemd its slice is stopped first; then whatever is
    /// left in every hierarchy goes, leaf first. Best effort: a cgroup that still holds
    /// processes stays, and is tried again the next time.
    pub async fn remove(&self, driver: CgroupDriver, parent: &str) {
        if driver == CgroupDriver::Systemd {
            let (unit, _) = slice_units(parent);
            let stopped = match systemd().await {
                Ok(systemd) => systemd.stop_unit(unit).await,
                Err(e) => Err(e),
            };
            if let Err(e) = stopped {
                tracing::warn!(unit, error = %e, "stopping the pod's slice");
            }
        }
        self.remove_dirs(parent);
    }

    fn remove_dirs(&self, parent: &str) {
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
            .write_limits(parent, &PodLimits { pids_max: Some(64) })
            .expect("apply");
        let file = dir.path().join("pids/kubepods/besteffort/podabc/pids.max");
        assert_eq!(std::fs::read_to_string(&file).expect("pids.max"), "64");
        cgroups
            .write_limits(parent, &PodLimits { pids_max: Some(-1) })
            .expect("apply");
        assert_eq!(std::fs::read_to_string(&file).expect("pids.max"), "max");
        assert!(!dir.path().join("cpu/kubepods").exists());
    }

    #[test]
    fn no_limit_creates_nothing_and_a_missing_controller_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        stand_in(dir.path())
            .write_limits("/kubepods/podx", &PodLimits::default())
            .expect("nothing to do");
        assert!(!dir.path().join("pids/kubepods").exists());
        let err = Cgroups::from_mounts("")
            .write_limits("/kubepods/podx", &PodLimits { pids_max: Some(5) })
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
        cgroups.remove_dirs("/kubepods/podx");
        for h in ["pids", "cpu"] {
            assert!(!dir.path().join(h).join("kubepods/podx").exists());
            assert!(dir.path().join(h).join("kubepods").exists());
        }
        // The root is never removed.
        cgroups.remove_dirs("/");
        assert!(dir.path().join("pids").exists());
    }

    #[test]
    fn systemd_names_nest_slices_as_kubelet_does() {
        let systemd = CgroupDriver::Systemd;
        let kubepods = systemd.kubepods(None).expect("default root");
        assert_eq!(kubepods, "/kubepods.slice");
        let burstable = systemd.child(&kubepods, "burstable");
        assert_eq!(burstable, "/kubepods.slice/kubepods-burstable.slice");
        // A `-` in a component is written `_`, so that it does not read as nesting.
        assert_eq!(
            systemd.child(&burstable, "pod1234-ab-cd"),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_ab_cd.slice"
        );
        assert_eq!(
            systemd.kubepods(Some("/bosun-3.slice")).expect("a slice"),
            "/bosun.slice/bosun-3.slice/bosun-3-kubepods.slice"
        );
        assert_eq!(
            systemd.kubepods(Some("my_root.slice")).expect("a slice"),
            "/my_root.slice/my_root-kubepods.slice"
        );
        for bad in ["/kubepods", "a--b.slice", "-a.slice", ".slice"] {
            let err = systemd.kubepods(Some(bad)).unwrap_err();
            assert!(err.contains("cgroupRoot") && err.contains(bad), "{err}");
        }
        let cgroupfs = CgroupDriver::Cgroupfs;
        assert_eq!(
            cgroupfs.kubepods(Some("/bosun/")).expect("root"),
            "/bosun/kubepods"
        );
        assert_eq!(cgroupfs.child("/kubepods", "pod-1"), "/kubepods/pod-1");
    }

    #[test]
    fn a_slice_path_names_its_unit_and_its_parent() {
        assert_eq!(
            slice_units("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podx.slice"),
            (
                "kubepods-besteffort-podx.slice",
                "kubepods-besteffort.slice"
            )
        );
        assert_eq!(
            slice_units("/kubepods.slice"),
            ("kubepods.slice", "-.slice")
        );
    }

    #[test]
    fn the_driver_is_one_of_kubelets_two() {
        assert_eq!(CgroupDriver::parse("systemd"), Ok(CgroupDriver::Systemd));
        assert_eq!(CgroupDriver::parse("cgroupfs"), Ok(CgroupDriver::Cgroupfs));
        let err = CgroupDriver::parse("Systemd").unwrap_err();
        assert!(
            err.contains("cgroupDriver") && err.contains("\"Systemd\""),
            "{err}"
        );
    }
}
