//! kubelet's resource statistics: the Summary API that `/stats/summary` serves (the types of
//! `k8s.io/kubelet/pkg/apis/stats/v1alpha1`) and the Prometheus text of `/metrics/resource`,
//! which metrics-server scrapes for `kubectl top` and the HorizontalPodAutoscaler.
//!
//! The numbers come from where kubelet (with cAdvisor) takes them: the node's CPU and memory
//! from the root cgroup and `/proc`, each pod's from its pod cgroup, each container's from the
//! runtime's `ListContainerStats` (the container's own cgroup fills in what the runtime leaves
//! out), file systems from `statvfs` and the runtime's `ImageFsInfo`, and a pod's network from
//! `/proc/<pid>/net/dev` of its sandbox's process. Everything read from the host goes through
//! [`HostPaths`], so tests point it at fixture files instead of needing root.
//!
//! A CPU rate (`usageNanoCores`) needs two samples: [`StatsProvider`] keeps the last cumulative
//! CPU time of the node, of every pod and of every container from one call to the next.
//!
//! This module serves numbers; it knows nothing of HTTP, authorization or the pods' desired
//! state.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bosun_cri::{api, CriClient, CriError};
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::pod::cgroup::CgroupDriver;
use crate::pod::observed::keys;

#[cfg(test)]
#[path = "stats_tests.rs"]
mod tests;

const NANOS_PER_SECOND: i64 = 1_000_000_000;

/// The content type of [`resource_metrics`]' text (Prometheus text exposition 0.0.4).
pub const RESOURCE_METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

// ---- the Summary API ------------------------------------------------------------------------

/// A point in time, to the nanosecond. The Summary API writes it as `metav1.Time` does (RFC
/// 3339 in UTC, whole seconds), but `/metrics/resource` stamps its samples in milliseconds,
/// which is why the nanoseconds are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time {
    unix_nanos: i64,
}

impl Time {
    pub fn from_unix_nanos(unix_nanos: i64) -> Self {
        Time { unix_nanos }
    }

    pub fn unix_nanos(self) -> i64 {
        self.unix_nanos
    }

    /// A `SystemTime` as a `Time`; times before 1970 or after 2262 are clamped.
    pub fn from_system_time(time: SystemTime) -> Self {
        let unix_nanos = match time.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
            Err(before) => i64::try_from(before.duration().as_nanos()).map_or(i64::MIN, |n| -n),
        };
        Time { unix_nanos }
    }

    fn unix_seconds(self) -> i64 {
        self.unix_nanos.div_euclid(NANOS_PER_SECOND)
    }

    /// Milliseconds since the epoch, as Prometheus sample timestamps are written.
    fn unix_millis(self) -> i64 {
        self.unix_nanos.div_euclid(1_000_000)
    }
}

impl Serialize for Time {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let whole_seconds =
            Timestamp::from_second(self.unix_seconds()).map_err(serde::ser::Error::custom)?;
        serializer.collect_str(&whole_seconds)
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let timestamp: Timestamp = text.parse().map_err(serde::de::Error::custom)?;
        let unix_nanos = i64::try_from(timestamp.as_nanosecond())
            .map_err(|_| serde::de::Error::custom(format!("{text:?} is out of range")))?;
        Ok(Time { unix_nanos })
    }
}

/// `Summary`: the node's and its pods' resource usage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub node: NodeStats,
    pub pods: Vec<PodStats>,
}

/// `NodeStats`: the whole node's usage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    pub node_name: String,
    /// Cgroups of the node's own daemons. bosun reports `pods`, the cgroup all pods run under.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub system_containers: Vec<ContainerStats>,
    /// When the node booted (`null` if unknown).
    pub start_time: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkStats>,
    /// The file system of bosun's root directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fs: Option<FsStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<RuntimeStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rlimit: Option<RlimitStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap: Option<SwapStats>,
}

/// `RlimitStats`: how many tasks the kernel allows and how many there are.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RlimitStats {
    pub time: Time,
    /// The smaller of `kernel.pid_max` and `kernel.threads-max`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maxpid: Option<i64>,
    /// Tasks (threads) that exist now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub curproc: Option<i64>,
}

/// `RuntimeStats`: the runtime's file systems.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeStats {
    /// Where images are stored; `usedBytes` is what the images take.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_fs: Option<FsStats>,
    /// Where containers' writable layers are stored; the image file system when the runtime
    /// does not tell them apart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_fs: Option<FsStats>,
}

/// `ProcessStats`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessStats {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_count: Option<u64>,
}

/// `PodStats`: one pod sandbox's usage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    pub pod_ref: PodReference,
    /// When the sandbox was created.
    pub start_time: Option<Time>,
    pub containers: Vec<ContainerStats>,
    /// The pod cgroup's, which counts every container and the sandbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkStats>,
    #[serde(
        rename = "process_stats",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub process_stats: Option<ProcessStats>,
}

/// `ContainerStats`: one container's usage (or, in `systemContainers`, one cgroup's).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    pub name: String,
    /// When the container was created, as kubelet reports it.
    pub start_time: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStats>,
    /// The writable layer: `usedBytes` and `inodesUsed` are the container's own, the rest is
    /// its file system's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<FsStats>,
}

/// `PodReference`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodReference {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// `InterfaceStats`: one network interface's cumulative counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceStats {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_errors: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_errors: Option<u64>,
}

/// `NetworkStats`: the default interface (`eth0`) inline, and every interface in `interfaces`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStats {
    pub time: Time,
    #[serde(flatten)]
    pub default_interface: InterfaceStats,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceStats>,
}

/// `CPUStats`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    pub time: Time,
    /// CPU time per second of wall time since the previous sample, in nanoseconds: 1e9 is one
    /// core kept busy. Absent until there is a previous sample.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_nano_cores: Option<u64>,
    /// Cumulative CPU time on all cores, in nanoseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_core_nano_seconds: Option<u64>,
}

/// `MemoryStats`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    pub time: Time,
    /// The limit minus the working set; absent without a limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_bytes: Option<u64>,
    /// Usage minus the inactive file cache, which the kernel can drop at will: what the
    /// OOM killer and evictions go by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub working_set_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_faults: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub major_page_faults: Option<u64>,
}

/// `SwapStats`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SwapStats {
    pub time: Time,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_available_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_usage_bytes: Option<u64>,
}

/// `FsStats`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FsStats {
    pub time: Time,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inodes_free: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inodes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inodes_used: Option<u64>,
}

// ---- where the host's numbers are read ------------------------------------------------------

/// Where the host's numbers are read: the proc filesystem and the cgroup hierarchies that
/// account CPU time, memory and processes. [`HostPaths::host`] finds the hierarchies in the
/// mount table; tests build one over a temporary directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostPaths {
    /// The proc filesystem: `/proc` on a host.
    pub proc: PathBuf,
    /// The hierarchy that accounts CPU time: cgroup v1 `cpuacct`, else cgroup v2.
    pub cpu: Option<Hierarchy>,
    /// The hierarchy of the memory controller.
    pub memory: Option<Hierarchy>,
    /// The hierarchy of the pids controller (a pod's process count).
    pub pids: Option<Hierarchy>,
}

/// One mounted cgroup hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount_point: PathBuf,
    pub version: CgroupVersion,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

impl HostPaths {
    /// This host's `/proc` and the hierarchies mounted in this process's mount namespace.
    pub fn host() -> Self {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        Self::from_mounts(PathBuf::from("/proc"), &mounts)
    }

    /// Picks the hierarchies from a mount table (`/proc/self/mounts` format). A controller
    /// bound to a cgroup v1 hierarchy is read there, because on a host with both versions
    /// mounted the kernel accounts it only there; otherwise from cgroup v2, if the controller
    /// is available in it (its root's `cgroup.controllers` names it).
    pub fn from_mounts(proc: PathBuf, mounts: &str) -> Self {
        let mut v1: Vec<(PathBuf, Vec<&str>)> = Vec::new();
        let mut unified: Option<PathBuf> = None;
        for line in mounts.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(mount_point), Some(fstype), Some(options)) =
                (fields.get(1), fields.get(2), fields.get(3))
            else {
                continue;
            };
            // The mount table escapes spaces in paths.
            let mount_point = PathBuf::from(mount_point.replace("\\040", " "));
            match *fstype {
                "cgroup" => v1.push((mount_point, options.split(',').collect())),
                "cgroup2" => unified = unified.or(Some(mount_point)),
                _ => {}
            }
        }
        let pick = |v1_controller: &str, v2_controller: Option<&str>| {
            let bound = v1
                .iter()
                .find(|(_, options)| options.contains(&v1_controller))
                .map(|(mount_point, _)| Hierarchy {
                    mount_point: mount_point.clone(),
                    version: CgroupVersion::V1,
                });
            bound.or_else(|| {
                let mount_point = unified.clone()?;
                let available = v2_controller.is_none_or(|wanted| {
                    std::fs::read_to_string(mount_point.join("cgroup.controllers"))
                        .is_ok_and(|c| c.split_whitespace().any(|c| c == wanted))
                });
                available.then_some(Hierarchy {
                    mount_point,
                    version: CgroupVersion::V2,
                })
            })
        };
        HostPaths {
            proc,
            // cgroup v2 counts every cgroup's CPU time in `cpu.stat` whether or not the cpu
            // controller is enabled.
            cpu: pick("cpuacct", None),
            memory: pick("memory", Some("memory")),
            pids: pick("pids", Some("pids")),
        }
    }
}

/// A host file that could not be read. Stats reads are best effort: the value is left out of
/// the summary and the error logged.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no number for {field:?}")]
    Field { path: PathBuf, field: &'static str },
}

fn read(path: &Path) -> Result<String, ReadError> {
    std::fs::read_to_string(path).map_err(|source| ReadError::Io {
        path: path.to_owned(),
        source,
    })
}

/// A file that holds one number.
fn read_number(path: &Path) -> Result<u64, ReadError> {
    read(path)?.trim().parse().map_err(|_| ReadError::Field {
        path: path.to_owned(),
        field: "value",
    })
}

/// The value of `key` in a flat keyed file (`memory.stat`, `cpu.stat`, `/proc/vmstat`:
/// `key value` lines).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next()? == key).then_some(())?;
        fields.next()?.parse().ok()
    })
}

/// A `/proc/meminfo` value in bytes (`MemTotal:  24683772 kB`).
fn meminfo(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, rest) = line.split_once(':')?;
        (name == key).then_some(())?;
        let mut fields = rest.split_whitespace();
        let value: u64 = fields.next()?.parse().ok()?;
        match fields.next() {
            Some("kB") => value.checked_mul(1024),
            _ => Some(value),
        }
    })
}

/// The memory numbers of one cgroup, or of the node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct MemoryReading {
    usage: u64,
    counters: MemoryCounters,
    limit: Option<u64>,
}

/// What `memory.stat` (or, for the node without one, `/proc/meminfo` and `/proc/vmstat`) adds
/// to the usage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct MemoryCounters {
    inactive_file: Option<u64>,
    rss: Option<u64>,
    page_faults: Option<u64>,
    major_page_faults: Option<u64>,
}

impl MemoryReading {
    /// cAdvisor's working set: usage minus the inactive file cache.
    fn working_set(&self) -> u64 {
        self.usage
            .saturating_sub(self.counters.inactive_file.unwrap_or(0))
    }

    fn stats(&self, time: Time) -> MemoryStats {
        let working_set = self.working_set();
        MemoryStats {
            time,
            available_bytes: self.limit.map(|limit| limit.saturating_sub(working_set)),
            usage_bytes: Some(self.usage),
            working_set_bytes: Some(working_set),
            rss_bytes: self.counters.rss,
            page_faults: self.counters.page_faults,
            major_page_faults: self.counters.major_page_faults,
        }
    }
}

/// A memory limit at or above this is "no limit" (kubelet's `isMemoryUnlimited`): cgroup v1
/// writes an unlimited cgroup's limit as a huge page-aligned number.
const UNLIMITED_MEMORY: u64 = 1 << 62;

impl Hierarchy {
    /// The directory of `cgroup` (a path like `/kubepods/burstable/pod<uid>`).
    fn dir(&self, cgroup: &str) -> PathBuf {
        self.mount_point.join(cgroup.trim_start_matches('/'))
    }

    /// Cumulative CPU time in nanoseconds.
    fn cpu_usage(&self, dir: &Path) -> Result<u64, ReadError> {
        match self.version {
            CgroupVersion::V1 => read_number(&dir.join("cpuacct.usage")),
            CgroupVersion::V2 => {
                let path = dir.join("cpu.stat");
                keyed(&read(&path)?, "usage_usec")
                    .and_then(|usec| usec.checked_mul(1000))
                    .ok_or(ReadError::Field {
                        path,
                        field: "usage_usec",
                    })
            }
        }
    }

    /// Usage, `memory.stat` and limit of a cgroup below the root.
    fn memory(&self, dir: &Path) -> Result<MemoryReading, ReadError> {
        let (usage, limit) = match self.version {
            CgroupVersion::V1 => ("memory.usage_in_bytes", "memory.limit_in_bytes"),
            CgroupVersion::V2 => ("memory.current", "memory.max"),
        };
        Ok(MemoryReading {
            usage: read_number(&dir.join(usage))?,
            counters: self.memory_counters(dir)?,
            // cgroup v2 writes no limit as "max", which does not parse.
            limit: read_number(&dir.join(limit))
                .ok()
                .filter(|l| *l < UNLIMITED_MEMORY),
        })
    }

    /// The counters of `memory.stat`. cgroup v2's are always hierarchical; cgroup v1 keeps
    /// the hierarchical ones under `total_`, which are read so that the numbers mean the same
    /// on both (a v1 pod cgroup holds no process of its own, so its plain counters are zero).
    fn memory_counters(&self, dir: &Path) -> Result<MemoryCounters, ReadError> {
        let stat = read(&dir.join("memory.stat"))?;
        let [inactive_file, rss, page_faults, major_page_faults] = match self.version {
            CgroupVersion::V1 => [
                "total_inactive_file",
                "total_rss",
                "total_pgfault",
                "total_pgmajfault",
            ],
            CgroupVersion::V2 => ["inactive_file", "anon", "pgfault", "pgmajfault"],
        };
        Ok(MemoryCounters {
            inactive_file: keyed(&stat, inactive_file),
            rss: keyed(&stat, rss),
            page_faults: keyed(&stat, page_faults),
            major_page_faults: keyed(&stat, major_page_faults),
        })
    }
}

/// Where one pod's cgroup is, in each hierarchy that has it.
#[derive(Clone, Debug, Default)]
struct PodCgroup {
    cpu: Option<PathBuf>,
    memory: Option<PathBuf>,
    pids: Option<PathBuf>,
}

/// `USER_HZ`, the unit of `/proc/stat`'s CPU times: 100 on every architecture Kubernetes
/// runs on.
const USER_HZ: u64 = 100;

/// Cumulative busy CPU time of the whole machine from `/proc/stat`'s `cpu` line (user, nice,
/// system, irq, softirq and steal; idle and iowait are not busy), in nanoseconds.
fn proc_stat_cpu(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    busy.checked_mul(1_000_000_000 / USER_HZ)
}

/// Interfaces that say nothing about the node's or a pod's traffic (cAdvisor ignores them):
/// loopback, and the host ends of containers' veth pairs and bridges.
const IGNORED_INTERFACE_PREFIXES: [&str; 4] = ["lo", "veth", "docker", "nerdctl"];

/// The interface kubelet reports inline in `NetworkStats`.
const DEFAULT_INTERFACE: &str = "eth0";

/// The interfaces of a `/proc/<pid>/net/dev`.
fn parse_net_dev(text: &str) -> Vec<InterfaceStats> {
    text.lines()
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let name = name.trim();
            if IGNORED_INTERFACE_PREFIXES
                .iter()
                .any(|p| name.starts_with(p))
            {
                return None;
            }
            let counters: Vec<u64> = counters
                .split_whitespace()
                .map(|c| c.parse().ok())
                .collect::<Option<_>>()?;
            // Receive: bytes packets errs drop fifo frame compressed multicast; then transmit:
            // bytes packets errs ...
            Some(InterfaceStats {
                name: name.to_owned(),
                rx_bytes: Some(*counters.first()?),
                rx_errors: Some(*counters.get(2)?),
                tx_bytes: Some(*counters.get(8)?),
                tx_errors: Some(*counters.get(10)?),
            })
        })
        .collect()
}

fn network_stats(net_dev: &Path, time: Time) -> Result<NetworkStats, ReadError> {
    let interfaces = parse_net_dev(&read(net_dev)?);
    let default_interface = interfaces
        .iter()
        .find(|i| i.name == DEFAULT_INTERFACE)
        .cloned()
        .unwrap_or_default();
    Ok(NetworkStats {
        time,
        default_interface,
        interfaces,
    })
}

/// Capacity and free space of the file system holding `path` (its nearest existing ancestor,
/// as a root directory may not be created yet).
fn fs_stats(path: &Path, time: Time) -> Option<FsStats> {
    let fs = path
        .ancestors()
        .find_map(|dir| nix::sys::statvfs::statvfs(dir).ok())?;
    let fragment = fs.fragment_size();
    let inodes = fs.files();
    let inodes_free = fs.files_free();
    Some(FsStats {
        time,
        available_bytes: Some(fs.blocks_available().saturating_mul(fragment)),
        capacity_bytes: Some(fs.blocks().saturating_mul(fragment)),
        used_bytes: Some(
            fs.blocks()
                .saturating_sub(fs.blocks_free())
                .saturating_mul(fragment),
        ),
        inodes_free: Some(inodes_free),
        inodes: Some(inodes),
        inodes_used: Some(inodes.saturating_sub(inodes_free)),
    })
}

// ---- usageNanoCores -------------------------------------------------------------------------

/// Whose cumulative CPU time a cached sample is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum CpuKey {
    Node,
    SystemContainer(&'static str),
    /// By pod UID: the pod cgroup outlives a sandbox re-created for the same pod.
    Pod(String),
    /// By container ID.
    Container(String),
}

/// One reading of a cumulative CPU time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CpuSample {
    at: Time,
    usage_core_nanos: u64,
}

#[derive(Clone, Copy, Debug)]
struct CpuRecord {
    base: CpuSample,
    rate: Option<u64>,
    seen_in_round: u64,
}

/// Samples closer together than this say little about a rate (two scrapers a few
/// milliseconds apart would report noise): the older sample stays the base and the rate last
/// computed is reported again. metrics-server scrapes every 15 s by default.
const MIN_RATE_WINDOW: Duration = Duration::from_secs(1);

/// The previous cumulative CPU time of everything measured, from which `usageNanoCores` is
/// computed (what cAdvisor's consecutive housekeeping samples give kubelet).
#[derive(Debug, Default)]
struct CpuCache {
    records: HashMap<CpuKey, CpuRecord>,
    round: u64,
}

impl CpuCache {
    /// Starts a round of samples; what is not sampled in it is forgotten by
    /// [`CpuCache::end_round`].
    fn start_round(&mut self) {
        self.round = self.round.wrapping_add(1);
    }

    /// Forgets the pods and containers that were not sampled in this round: they are gone.
    fn end_round(&mut self) {
        let round = self.round;
        self.records.retain(|_, r| r.seen_in_round == round);
    }

    /// Records `sample` and returns the rate since the previous one, in nanocores; `None` for
    /// the first sample and after the counter went backwards (a cgroup re-created).
    fn usage_nano_cores(&mut self, key: CpuKey, sample: CpuSample) -> Option<u64> {
        let round = self.round;
        let fresh = CpuRecord {
            base: sample,
            rate: None,
            seen_in_round: round,
        };
        let Some(record) = self.records.get_mut(&key) else {
            self.records.insert(key, fresh);
            return None;
        };
        record.seen_in_round = round;
        let base = record.base;
        if sample.usage_core_nanos < base.usage_core_nanos || sample.at < base.at {
            *record = fresh;
            return None;
        }
        let window = u128::try_from(sample.at.unix_nanos - base.at.unix_nanos).unwrap_or(0);
        if window < MIN_RATE_WINDOW.as_nanos() {
            return record.rate;
        }
        let used = u128::from(sample.usage_core_nanos - base.usage_core_nanos);
        let rate = u64::try_from(used * 1_000_000_000 / window).ok();
        *record = CpuRecord {
            base: sample,
            rate,
            seen_in_round: round,
        };
        rate
    }

    /// `CPUStats` for a cumulative CPU time read at `at`.
    fn stats(&mut self, key: CpuKey, at: Time, usage_core_nanos: u64) -> CpuStats {
        let sample = CpuSample {
            at,
            usage_core_nanos,
        };
        CpuStats {
            time: at,
            usage_nano_cores: self.usage_nano_cores(key, sample),
            usage_core_nano_seconds: Some(usage_core_nanos),
        }
    }
}

// ---- the provider ---------------------------------------------------------------------------

/// An error reading the statistics: the runtime did not answer a list call. The scrape fails;
/// the next scrape tries again, which helps when [`CriError::is_retryable`] says so.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("reading pods and containers from the runtime: {source}")]
    Runtime {
        #[source]
        source: CriError,
    },
}

/// How much a scrape reads: `/metrics/resource` needs CPU and memory only (kubelet's
/// `GetCPUAndMemoryStats`), `/stats/summary` everything, the eviction manager's signals the
/// node's memory, file systems and processes only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Detail {
    CpuAndMemory,
    Full,
    /// No pod, no CPU (so the rates of the other scrapes are left alone), no network.
    NodeSignals,
}

/// What one scrape read from the runtime.
#[derive(Clone, Debug, Default)]
struct RuntimeView {
    /// bosun's own sandboxes.
    sandboxes: Vec<api::PodSandbox>,
    containers: Vec<api::Container>,
    stats: Vec<api::ContainerStats>,
    image_fs: Option<api::ImageFsInfoResponse>,
    /// The process of each ready sandbox, whose network namespace is the pod's.
    sandbox_pids: HashMap<String, u32>,
}

/// What is kept between scrapes.
#[derive(Debug, Default)]
struct State {
    cpu: CpuCache,
    /// Sandbox ID → its process, which does not change during the sandbox's life.
    sandbox_pids: HashMap<String, u32>,
}

/// One scrape in progress: when it reads, how much, and the caches it fills.
struct Scrape<'a> {
    now: Time,
    detail: Detail,
    cpu: &'a mut CpuCache,
    fs: FsCache,
}

impl Scrape<'_> {
    fn full(&self) -> bool {
        self.detail == Detail::Full
    }

    /// `CPUStats` for a cumulative CPU time read now.
    fn cpu_now(&mut self, key: CpuKey, usage_core_nanos: u64) -> CpuStats {
        self.cpu.stats(key, self.now, usage_core_nanos)
    }
}

type Clock = Box<dyn Fn() -> SystemTime + Send + Sync>;

/// Reads the node's, pods' and containers' resource usage. One per node, shared by the HTTP
/// handlers; calls may run concurrently.
pub struct StatsProvider {
    host: HostPaths,
    /// The cgroup all pods go under (`NodeContext::cgroup_root`, e.g. `/kubepods`).
    cgroup_root: String,
    /// How the pods' cgroups below it are named.
    cgroup_driver: CgroupDriver,
    /// bosun's root directory, whose file system is the node's `fs`.
    root_dir: PathBuf,
    node_name: String,
    state: Mutex<State>,
    clock: Clock,
}

impl fmt::Debug for StatsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatsProvider")
            .field("host", &self.host)
            .field("cgroup_root", &self.cgroup_root)
            .field("root_dir", &self.root_dir)
            .field("node_name", &self.node_name)
            .finish_non_exhaustive()
    }
}

impl StatsProvider {
    /// `cgroup_root` is the cgroup pods go under (`NodeContext::cgroup_root`); `root_dir` is
    /// bosun's root directory, whose file system the node's `fs` reports.
    pub fn new(host: HostPaths, cgroup_root: String, root_dir: PathBuf, node_name: String) -> Self {
        StatsProvider {
            host,
            cgroup_root,
            cgroup_driver: CgroupDriver::Cgroupfs,
            root_dir,
            node_name,
            state: Mutex::new(State::default()),
            clock: Box::new(SystemTime::now),
        }
    }

    /// Pods' cgroups named as `driver` names them (cgroupfs unless told).
    pub fn with_cgroup_driver(mut self, driver: CgroupDriver) -> Self {
        self.cgroup_driver = driver;
        self
    }

    /// Replaces the wall clock (tests).
    #[cfg(test)]
    fn with_clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Box::new(clock);
        self
    }

    /// Everything `/stats/summary` serves.
    pub async fn summary(&self, runtime: &CriClient) -> Result<Summary, StatsError> {
        let view = self.read_runtime(runtime, Detail::Full).await?;
        Ok(self.build(&view, Detail::Full))
    }

    /// The node's memory, file systems (the image file system too) and process limits, and
    /// nothing of its pods: what the eviction manager observes each round. One runtime call
    /// (`ImageFsInfo`) instead of the summary's listings of every sandbox, container and
    /// container's stats.
    pub async fn node_signals(&self, runtime: &CriClient) -> Result<Summary, StatsError> {
        let view = RuntimeView {
            image_fs: runtime
                .image_fs_info()
                .await
                .inspect_err(|e| tracing::warn!(error = %e, "image file system stats"))
                .ok(),
            ..RuntimeView::default()
        };
        Ok(self.build(&view, Detail::NodeSignals))
    }

    /// The CPU and memory part of the summary (node, pods, containers, the `pods` cgroup):
    /// what `/metrics/resource` is made from. No file system, network or image file system is
    /// read.
    pub async fn cpu_and_memory(&self, runtime: &CriClient) -> Result<Summary, StatsError> {
        let view = self.read_runtime(runtime, Detail::CpuAndMemory).await?;
        Ok(self.build(&view, Detail::CpuAndMemory))
    }

    /// The body of `/metrics/resource`: [`resource_metrics`] of [`StatsProvider::cpu_and_memory`],
    /// with `resource_scrape_error 1` (and the error logged) when the runtime did not answer,
    /// as kubelet answers then.
    pub async fn scrape_resource_metrics(&self, runtime: &CriClient) -> String {
        match self.cpu_and_memory(runtime).await {
            Ok(summary) => resource_metrics(Some(&summary)),
            Err(e) => {
                tracing::warn!(error = %e, "resource metrics");
                resource_metrics(None)
            }
        }
    }

    async fn read_runtime(
        &self,
        runtime: &CriClient,
        detail: Detail,
    ) -> Result<RuntimeView, StatsError> {
        let runtime_error = |source| StatsError::Runtime { source };
        let (sandboxes, containers, stats) = tokio::try_join!(
            async { runtime.list_pod_sandbox(None).await.map_err(runtime_error) },
            async { runtime.list_containers(None).await.map_err(runtime_error) },
            async {
                runtime
                    .list_container_stats(None)
                    .await
                    .map_err(runtime_error)
            },
        )?;
        let mut view = RuntimeView {
            sandboxes: sandboxes.into_iter().filter(is_bosuns).collect(),
            containers,
            stats,
            ..RuntimeView::default()
        };
        if detail == Detail::Full {
            // A summary without the image file system is still worth serving.
            view.image_fs = runtime
                .image_fs_info()
                .await
                .inspect_err(|e| tracing::warn!(error = %e, "image file system stats"))
                .ok();
            view.sandbox_pids = self.sandbox_pids(runtime, &view).await;
        }
        Ok(view)
    }

    /// The process of each ready sandbox that has a running container: from the cache, or
    /// from the runtime's verbose sandbox status, which names it.
    async fn sandbox_pids(&self, runtime: &CriClient, view: &RuntimeView) -> HashMap<String, u32> {
        let running: HashSet<&str> = view
            .containers
            .iter()
            .filter(|c| c.state == api::ContainerState::ContainerRunning as i32)
            .map(|c| c.pod_sandbox_id.as_str())
            .collect();
        let wanted = view.sandboxes.iter().filter(|s| {
            s.state == api::PodSandboxState::SandboxReady as i32 && running.contains(s.id.as_str())
        });
        let mut pids = HashMap::new();
        let mut missing = Vec::new();
        {
            let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            for sandbox in wanted {
                match state.sandbox_pids.get(&sandbox.id) {
                    Some(pid) => {
                        pids.insert(sandbox.id.clone(), *pid);
                    }
                    None => missing.push(sandbox.id.as_str()),
                }
            }
        }
        let statuses = futures::future::join_all(
            missing
                .iter()
                .map(|id| async move { (*id, runtime.pod_sandbox_status(id, true).await) }),
        )
        .await;
        let mut found = Vec::new();
        for (id, status) in statuses {
            match status {
                Ok(status) => match sandbox_pid(&status.info) {
                    Some(pid) => found.push((id.to_owned(), pid)),
                    None => tracing::debug!(sandbox = id, "no pid in the sandbox's status"),
                },
                Err(e) => tracing::debug!(sandbox = id, error = %e, "sandbox status"),
            }
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for (id, pid) in found {
            state.sandbox_pids.insert(id.clone(), pid);
            pids.insert(id, pid);
        }
        pids
    }

    /// The summary from what the runtime said and what the host's files hold now.
    fn build(&self, view: &RuntimeView, detail: Detail) -> Summary {
        let now = Time::from_system_time((self.clock)());
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // The node's signals read no CPU: the rounds of the CPU rates are the other scrapes'.
        let signals_only = detail == Detail::NodeSignals;
        if !signals_only {
            state.cpu.start_round();
        }
        let mut scrape = Scrape {
            now,
            detail,
            cpu: &mut state.cpu,
            fs: FsCache::default(),
        };
        let node = self.node_stats(view, &mut scrape);
        if signals_only {
            return Summary {
                node,
                pods: Vec::new(),
            };
        }
        let pods = self.pod_stats(view, &mut scrape);
        state.cpu.end_round();
        state
            .sandbox_pids
            .retain(|id, _| view.sandboxes.iter().any(|s| s.id == *id));
        Summary { node, pods }
    }

    fn proc(&self, relative: &str) -> PathBuf {
        self.host.proc.join(relative)
    }

    fn node_stats(&self, view: &RuntimeView, scrape: &mut Scrape) -> NodeStats {
        let now = scrape.now;
        let signals_only = scrape.detail == Detail::NodeSignals;
        let proc_stat = read(&self.proc("stat")).inspect_err(log_read).ok();
        let meminfo_text = read(&self.proc("meminfo")).inspect_err(log_read).ok();
        let cpu = self
            .node_cpu(proc_stat.as_deref())
            .filter(|_| !signals_only)
            .map(|usage| scrape.cpu_now(CpuKey::Node, usage));
        let memory = meminfo_text
            .as_deref()
            .and_then(|m| self.node_memory(m))
            .map(|m| m.stats(now));
        let swap = meminfo_text.as_deref().and_then(|m| {
            let total = meminfo(m, "SwapTotal")?;
            let free = meminfo(m, "SwapFree")?;
            Some(SwapStats {
                time: now,
                swap_available_bytes: Some(free),
                swap_usage_bytes: Some(total.saturating_sub(free)),
            })
        });
        let start_time = proc_stat
            .as_deref()
            .and_then(|s| keyed(s, "btime"))
            .and_then(|boot| i64::try_from(boot).ok())
            .map(|boot| Time::from_unix_nanos(boot.saturating_mul(NANOS_PER_SECOND)));
        let mut node = NodeStats {
            node_name: self.node_name.clone(),
            system_containers: if signals_only {
                Vec::new()
            } else {
                self.pods_cgroup_stats(scrape).into_iter().collect()
            },
            start_time,
            cpu,
            memory,
            swap,
            ..NodeStats::default()
        };
        if scrape.full() {
            // PID 1's network namespace is the host's, whichever one bosun runs in.
            node.network = network_stats(&self.proc("1/net/dev"), now)
                .inspect_err(log_read)
                .ok();
        }
        if scrape.full() || signals_only {
            node.fs = fs_stats(&self.root_dir, now);
            node.runtime = view
                .image_fs
                .as_ref()
                .map(|info| runtime_stats(info, scrape));
            node.rlimit = Some(self.rlimit(now));
        }
        node
    }

    /// The node's cumulative CPU time: the root cgroup's, else `/proc/stat`'s.
    fn node_cpu(&self, proc_stat: Option<&str>) -> Option<u64> {
        let from_cgroup = self.host.cpu.as_ref().and_then(|h| {
            h.cpu_usage(&h.mount_point)
                .inspect_err(|e| tracing::debug!(error = %e, "node CPU from the root cgroup"))
                .ok()
        });
        from_cgroup.or_else(|| proc_stat.and_then(proc_stat_cpu))
    }

    /// The node's memory as cAdvisor reads the root cgroup: usage from cgroup v1's root, or
    /// (cgroup v2's root has no `memory.current`) MemTotal − MemFree; the counters from the
    /// root's `memory.stat`, or `/proc/meminfo` and `/proc/vmstat` without one; the limit is
    /// the machine's memory.
    fn node_memory(&self, meminfo_text: &str) -> Option<MemoryReading> {
        let total = meminfo(meminfo_text, "MemTotal")?;
        let root = self.host.memory.as_ref();
        let v1_usage = root
            .filter(|h| h.version == CgroupVersion::V1)
            .and_then(|h| read_number(&h.mount_point.join("memory.usage_in_bytes")).ok());
        let usage = match v1_usage {
            Some(usage) => usage,
            None => total.saturating_sub(meminfo(meminfo_text, "MemFree")?),
        };
        let counters = match root.and_then(|h| h.memory_counters(&h.mount_point).ok()) {
            Some(counters) => counters,
            None => {
                let vmstat = read(&self.proc("vmstat")).inspect_err(log_read).ok();
                let vmstat = vmstat.as_deref().unwrap_or_default();
                MemoryCounters {
                    inactive_file: meminfo(meminfo_text, "Inactive(file)"),
                    rss: meminfo(meminfo_text, "AnonPages"),
                    page_faults: keyed(vmstat, "pgfault"),
                    major_page_faults: keyed(vmstat, "pgmajfault"),
                }
            }
        };
        Some(MemoryReading {
            usage,
            counters,
            limit: Some(total),
        })
    }

    /// kubelet's `pods` system container: the cgroup every pod runs under.
    fn pods_cgroup_stats(&self, scrape: &mut Scrape) -> Option<ContainerStats> {
        const NAME: &str = "pods";
        let cpu = self.host.cpu.as_ref().and_then(|h| {
            let usage = h.cpu_usage(&h.dir(&self.cgroup_root)).inspect_err(log_read);
            usage
                .ok()
                .map(|usage| scrape.cpu_now(CpuKey::SystemContainer(NAME), usage))
        });
        let memory = self.host.memory.as_ref().and_then(|h| {
            let reading = h.memory(&h.dir(&self.cgroup_root)).inspect_err(log_read);
            reading.ok().map(|m| m.stats(scrape.now))
        });
        if cpu.is_none() && memory.is_none() {
            return None;
        }
        // A cgroup's directory is written when a child is created; its oldest time is the
        // best guess of when accounting started.
        let start_time = [&self.host.cpu, &self.host.memory]
            .into_iter()
            .flatten()
            .filter_map(|h| {
                std::fs::metadata(h.dir(&self.cgroup_root))
                    .ok()?
                    .modified()
                    .ok()
            })
            .min()
            .map(Time::from_system_time);
        Some(ContainerStats {
            name: NAME.to_owned(),
            start_time,
            cpu,
            memory,
            rootfs: None,
        })
    }

    /// `kernel.pid_max` and `kernel.threads-max` both cap the number of tasks; the total in
    /// `/proc/loadavg` counts them (sysinfo's count wraps above 65535).
    fn rlimit(&self, now: Time) -> RlimitStats {
        let number = |relative: &str| {
            read_number(&self.proc(relative))
                .inspect_err(log_read)
                .ok()
                .and_then(|n| i64::try_from(n).ok())
        };
        let maxpid = match (
            number("sys/kernel/pid_max"),
            number("sys/kernel/threads-max"),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let curproc = read(&self.proc("loadavg"))
            .inspect_err(log_read)
            .ok()
            .and_then(|l| {
                let tasks = l.split_whitespace().nth(3)?;
                tasks.split_once('/')?.1.parse().ok()
            });
        RlimitStats {
            time: now,
            maxpid,
            curproc,
        }
    }

    /// The pod's cgroup in each hierarchy. The pod's QoS class, which decides the parent, is
    /// not in the runtime's answers, so each of the places the pod cgroup can be is tried
    /// (the layout of `spec::pod_cgroup_parent`).
    fn pod_cgroup(&self, uid: &str) -> PodCgroup {
        let (root, driver) = (&self.cgroup_root, self.cgroup_driver);
        let pod = format!("pod{uid}");
        let candidates = [
            driver.child(root, &pod),
            driver.child(&driver.child(root, "burstable"), &pod),
            driver.child(&driver.child(root, "besteffort"), &pod),
        ];
        let find = |h: &Option<Hierarchy>| {
            let h = h.as_ref()?;
            candidates.iter().map(|c| h.dir(c)).find(|dir| dir.is_dir())
        };
        PodCgroup {
            cpu: find(&self.host.cpu),
            memory: find(&self.host.memory),
            pids: find(&self.host.pids),
        }
    }

    /// One `PodStats` per sandbox with a running container, as kubelet reports pods.
    fn pod_stats(&self, view: &RuntimeView, scrape: &mut Scrape) -> Vec<PodStats> {
        let sandboxes: HashMap<&str, &api::PodSandbox> =
            view.sandboxes.iter().map(|s| (s.id.as_str(), s)).collect();
        let containers: HashMap<&str, &api::Container> = view
            .containers
            .iter()
            .filter(|c| c.state == api::ContainerState::ContainerRunning as i32)
            .filter(|c| sandboxes.contains_key(c.pod_sandbox_id.as_str()))
            .map(|c| (c.id.as_str(), c))
            .collect();
        let mut by_sandbox: BTreeMap<&str, Vec<(&api::ContainerStats, &api::Container)>> =
            BTreeMap::new();
        for stats in &view.stats {
            let id = stats.attributes.as_ref().map(|a| a.id.as_str());
            if let Some(container) = id.and_then(|id| containers.get(id)) {
                by_sandbox
                    .entry(container.pod_sandbox_id.as_str())
                    .or_default()
                    .push((stats, container));
            }
        }
        let mut pods: Vec<PodStats> = by_sandbox
            .into_iter()
            .filter_map(|(sandbox_id, members)| {
                let sandbox = sandboxes.get(sandbox_id)?;
                let pid = view.sandbox_pids.get(sandbox_id).copied();
                Some(self.one_pod(sandbox, pid, &members, scrape))
            })
            .collect();
        pods.sort_by(|a, b| {
            let (a_ref, b_ref) = (&a.pod_ref, &b.pod_ref);
            (&a_ref.namespace, &a_ref.name, a.start_time).cmp(&(
                &b_ref.namespace,
                &b_ref.name,
                b.start_time,
            ))
        });
        pods
    }

    /// A pod from its sandbox (whose process is `pid`, when known) and its running
    /// containers' runtime stats.
    fn one_pod(
        &self,
        sandbox: &api::PodSandbox,
        pid: Option<u32>,
        members: &[(&api::ContainerStats, &api::Container)],
        scrape: &mut Scrape,
    ) -> PodStats {
        let pod_ref = pod_reference(sandbox);
        let cgroup = self.pod_cgroup(&pod_ref.uid);
        let mut containers: Vec<ContainerStats> = members
            .iter()
            .map(|(stats, container)| self.container_stats(stats, container, &cgroup, scrape))
            .collect();
        containers.sort_by(|a, b| a.name.cmp(&b.name));

        let cpu = match (&self.host.cpu, &cgroup.cpu) {
            (Some(h), Some(dir)) => h
                .cpu_usage(dir)
                .inspect_err(log_read)
                .ok()
                .map(|usage| scrape.cpu_now(CpuKey::Pod(pod_ref.uid.clone()), usage)),
            _ => None,
        };
        let memory = match (&self.host.memory, &cgroup.memory) {
            (Some(h), Some(dir)) => h
                .memory(dir)
                .inspect_err(log_read)
                .ok()
                .map(|m| m.stats(scrape.now)),
            _ => None,
        };
        let process_count = cgroup.pids.as_ref().and_then(|dir| {
            read_number(&dir.join("pids.current"))
                .inspect_err(log_read)
                .ok()
        });
        let network = match pid {
            Some(pid) if scrape.full() => {
                network_stats(&self.proc(&format!("{pid}/net/dev")), scrape.now)
                    .inspect_err(log_read)
                    .ok()
            }
            _ => None,
        };
        PodStats {
            start_time: cri_time(sandbox.created_at),
            // Without the pod cgroup, kubelet adds up the containers.
            cpu: cpu.or_else(|| sum_cpu(&containers)),
            memory: memory.or_else(|| sum_memory(&containers)),
            network,
            process_stats: process_count.map(|count| ProcessStats {
                process_count: Some(count),
            }),
            pod_ref,
            containers,
        }
    }

    /// A container's stats from the runtime's answer; CPU or memory the runtime leaves out is
    /// read from the container's cgroup, which the runtime puts below the pod's, named by the
    /// container's ID.
    fn container_stats(
        &self,
        stats: &api::ContainerStats,
        container: &api::Container,
        pod_cgroup: &PodCgroup,
        scrape: &mut Scrape,
    ) -> ContainerStats {
        let now = scrape.now;
        let key = || CpuKey::Container(container.id.clone());
        let from_runtime = stats.cpu.as_ref().and_then(|cpu| {
            let usage = cpu.usage_core_nano_seconds.as_ref()?.value;
            let at = cri_time(cpu.timestamp).unwrap_or(now);
            let mut cpu_stats = scrape.cpu.stats(key(), at, usage);
            // A runtime that computes the rate itself knows its own sampling best.
            if let Some(rate) = &cpu.usage_nano_cores {
                cpu_stats.usage_nano_cores = Some(rate.value);
            }
            Some(cpu_stats)
        });
        let cpu = from_runtime.or_else(|| {
            let (h, dir) = (self.host.cpu.as_ref()?, pod_cgroup.cpu.as_ref()?);
            let usage = h.cpu_usage(&dir.join(&container.id)).inspect_err(log_read);
            Some(scrape.cpu_now(key(), usage.ok()?))
        });

        let from_runtime = stats.memory.as_ref().and_then(|memory| {
            let working_set = memory.working_set_bytes.as_ref()?.value;
            Some(MemoryStats {
                time: cri_time(memory.timestamp).unwrap_or(now),
                available_bytes: memory.available_bytes.as_ref().map(|v| v.value),
                usage_bytes: memory.usage_bytes.as_ref().map(|v| v.value),
                working_set_bytes: Some(working_set),
                rss_bytes: memory.rss_bytes.as_ref().map(|v| v.value),
                page_faults: memory.page_faults.as_ref().map(|v| v.value),
                major_page_faults: memory.major_page_faults.as_ref().map(|v| v.value),
            })
        });
        let memory = from_runtime.or_else(|| {
            let (h, dir) = (self.host.memory.as_ref()?, pod_cgroup.memory.as_ref()?);
            let reading = h.memory(&dir.join(&container.id)).inspect_err(log_read);
            Some(reading.ok()?.stats(now))
        });

        let rootfs = match &stats.writable_layer {
            Some(layer) if scrape.full() => Some(filesystem_usage_stats(layer, scrape)),
            _ => None,
        };
        let name = [
            stats.attributes.as_ref().and_then(|a| a.metadata.as_ref()),
            container.metadata.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|m| m.name.as_str())
        .find(|n| !n.is_empty())
        .or_else(|| {
            container
                .labels
                .get(keys::CONTAINER_NAME)
                .map(String::as_str)
        })
        .unwrap_or_default()
        .to_owned();
        ContainerStats {
            name,
            start_time: cri_time(container.created_at),
            cpu,
            memory,
            rootfs,
        }
    }
}

fn log_read(error: &ReadError) {
    tracing::debug!(error = %error, "stats");
}

fn is_bosuns(sandbox: &api::PodSandbox) -> bool {
    sandbox.labels.get(keys::MANAGED_BY).map(String::as_str) == Some(keys::MANAGED_BY_VALUE)
}

/// A CRI timestamp (nanoseconds since the epoch); 0 means the runtime did not say.
fn cri_time(unix_nanos: i64) -> Option<Time> {
    (unix_nanos > 0).then_some(Time::from_unix_nanos(unix_nanos))
}

/// The pod a sandbox belongs to: its CRI metadata, or bosun's labels where that is empty.
fn pod_reference(sandbox: &api::PodSandbox) -> PodReference {
    let metadata = sandbox.metadata.clone().unwrap_or_default();
    let or_label = |value: String, label: &str| {
        if value.is_empty() {
            sandbox.labels.get(label).cloned().unwrap_or_default()
        } else {
            value
        }
    };
    PodReference {
        name: or_label(metadata.name, keys::POD_NAME),
        namespace: or_label(metadata.namespace, keys::POD_NAMESPACE),
        uid: or_label(metadata.uid, keys::POD_UID),
    }
}

/// The sandbox's process from a verbose `PodSandboxStatus`: containerd puts it in the JSON of
/// `info["info"]`.
fn sandbox_pid(info: &HashMap<String, String>) -> Option<u32> {
    #[derive(Deserialize)]
    struct SandboxInfo {
        pid: u32,
    }
    let info: SandboxInfo = serde_json::from_str(info.get("info")?).ok()?;
    (info.pid > 0).then_some(info.pid)
}

/// The sum of the containers' CPU, for a pod whose cgroup was not found.
fn sum_cpu(containers: &[ContainerStats]) -> Option<CpuStats> {
    let cpus: Vec<&CpuStats> = containers.iter().filter_map(|c| c.cpu.as_ref()).collect();
    let time = cpus.iter().map(|c| c.time).max()?;
    let sum = |value: fn(&CpuStats) -> Option<u64>| {
        cpus.iter()
            .filter_map(|c| value(c))
            .reduce(u64::saturating_add)
    };
    Some(CpuStats {
        time,
        usage_nano_cores: sum(|c| c.usage_nano_cores),
        usage_core_nano_seconds: sum(|c| c.usage_core_nano_seconds),
    })
}

/// The sum of the containers' memory, for a pod whose cgroup was not found. Their available
/// bytes do not add up to the pod's, so that is left out.
fn sum_memory(containers: &[ContainerStats]) -> Option<MemoryStats> {
    let memories: Vec<&MemoryStats> = containers
        .iter()
        .filter_map(|c| c.memory.as_ref())
        .collect();
    let time = memories.iter().map(|m| m.time).max()?;
    let sum = |value: fn(&MemoryStats) -> Option<u64>| {
        memories
            .iter()
            .filter_map(|m| value(m))
            .reduce(u64::saturating_add)
    };
    Some(MemoryStats {
        time,
        available_bytes: None,
        usage_bytes: sum(|m| m.usage_bytes),
        working_set_bytes: sum(|m| m.working_set_bytes),
        rss_bytes: sum(|m| m.rss_bytes),
        page_faults: sum(|m| m.page_faults),
        major_page_faults: sum(|m| m.major_page_faults),
    })
}

/// `statvfs` of each file system the runtime names, once per scrape.
#[derive(Debug, Default)]
struct FsCache {
    by_mountpoint: HashMap<String, Option<FsStats>>,
}

impl FsCache {
    fn get(&mut self, mountpoint: &str, now: Time) -> Option<FsStats> {
        self.by_mountpoint
            .entry(mountpoint.to_owned())
            .or_insert_with(|| fs_stats(Path::new(mountpoint), now))
            .clone()
    }
}

/// A runtime-reported file system usage: its own bytes and inodes, and the size and free
/// space of the file system it is on.
fn filesystem_usage_stats(usage: &api::FilesystemUsage, scrape: &mut Scrape) -> FsStats {
    let now = scrape.now;
    let device = usage
        .fs_id
        .as_ref()
        .map(|id| id.mountpoint.as_str())
        .filter(|m| !m.is_empty())
        .and_then(|m| scrape.fs.get(m, now))
        .unwrap_or_default();
    FsStats {
        time: cri_time(usage.timestamp).unwrap_or(now),
        used_bytes: usage.used_bytes.as_ref().map(|v| v.value),
        inodes_used: usage.inodes_used.as_ref().map(|v| v.value),
        ..device
    }
}

fn runtime_stats(info: &api::ImageFsInfoResponse, scrape: &mut Scrape) -> RuntimeStats {
    let image_fs = info
        .image_filesystems
        .first()
        .map(|fs| filesystem_usage_stats(fs, scrape));
    // A runtime that keeps writable layers with the images names no container file system.
    let container_fs = match info.container_filesystems.first() {
        Some(fs) => Some(filesystem_usage_stats(fs, scrape)),
        None => image_fs.clone(),
    };
    RuntimeStats {
        image_fs,
        container_fs,
    }
}

// ---- /metrics/resource ----------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MetricType {
    Counter,
    Gauge,
}

impl MetricType {
    fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
        }
    }
}

/// One metric family of kubelet's resource metrics collector, with its samples.
struct Family {
    name: &'static str,
    /// As kubelet writes it, with the stability level in front.
    help: &'static str,
    kind: MetricType,
    /// Label names in the order they are written (alphabetical, as the Go client sorts them).
    labels: &'static [&'static str],
    samples: Vec<Sample>,
}

struct Sample {
    /// Values of the family's labels, in the same order.
    label_values: Vec<String>,
    value: f64,
    timestamp: Option<Time>,
}

impl Family {
    fn new(
        name: &'static str,
        kind: MetricType,
        labels: &'static [&'static str],
        help: &'static str,
    ) -> Self {
        Family {
            name,
            help,
            kind,
            labels,
            samples: Vec::new(),
        }
    }

    fn push(&mut self, label_values: &[&str], value: f64, timestamp: Option<Time>) {
        self.samples.push(Sample {
            label_values: label_values.iter().map(|v| (*v).to_owned()).collect(),
            value,
            timestamp,
        });
    }

    /// Writes the family as the Go client does: nothing without samples, samples sorted by
    /// label values, and one sample per label set (the Go client refuses a duplicate).
    fn write(mut self, out: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        self.samples
            .sort_by(|a, b| a.label_values.cmp(&b.label_values));
        self.samples
            .dedup_by(|later, earlier| later.label_values == earlier.label_values);
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind.as_str());
        for sample in &self.samples {
            out.push_str(self.name);
            if !self.labels.is_empty() {
                out.push('{');
                for (i, (name, value)) in self.labels.iter().zip(&sample.label_values).enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{name}=\"{}\"", escape_label_value(value));
                }
                out.push('}');
            }
            let _ = write!(out, " {}", format_value(sample.value));
            if let Some(at) = sample.timestamp {
                let _ = write!(out, " {}", at.unix_millis());
            }
            out.push('\n');
        }
    }
}

const CONTAINER_LABELS: &[&str] = &["container", "namespace", "pod"];
const POD_LABELS: &[&str] = &["namespace", "pod"];

/// Nanoseconds of CPU time as the core-seconds the metrics count.
fn core_seconds(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

/// kubelet's `/metrics/resource` for a summary (from [`StatsProvider::cpu_and_memory`]), or,
/// given `None` because the summary could not be read, the scrape error alone. Values and
/// timestamps are those of the summary; a value the summary lacks is left out.
pub fn resource_metrics(summary: Option<&Summary>) -> String {
    use MetricType::{Counter, Gauge};
    let mut container_cpu = Family::new(
        "container_cpu_usage_seconds_total",
        Counter,
        CONTAINER_LABELS,
        "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
    );
    let mut container_memory = Family::new(
        "container_memory_working_set_bytes",
        Gauge,
        CONTAINER_LABELS,
        "[STABLE] Current working set of the container in bytes",
    );
    let mut container_start = Family::new(
        "container_start_time_seconds",
        Gauge,
        CONTAINER_LABELS,
        "[STABLE] Start time of the container since unix epoch in seconds",
    );
    let mut node_cpu = Family::new(
        "node_cpu_usage_seconds_total",
        Counter,
        &[],
        "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
    );
    let mut node_memory = Family::new(
        "node_memory_working_set_bytes",
        Gauge,
        &[],
        "[STABLE] Current working set of the node in bytes",
    );
    let mut node_swap = Family::new(
        "node_swap_usage_bytes",
        Gauge,
        &[],
        "[ALPHA] Current swap usage of the node in bytes. Reported only on non-windows systems",
    );
    let mut pod_cpu = Family::new(
        "pod_cpu_usage_seconds_total",
        Counter,
        POD_LABELS,
        "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
    );
    let mut pod_memory = Family::new(
        "pod_memory_working_set_bytes",
        Gauge,
        POD_LABELS,
        "[STABLE] Current working set of the pod in bytes",
    );
    let mut scrape_error = Family::new(
        "resource_scrape_error",
        Gauge,
        &[],
        "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise",
    );

    scrape_error.push(&[], if summary.is_some() { 0.0 } else { 1.0 }, None);
    if let Some(summary) = summary {
        let node = &summary.node;
        if let Some((cpu, usage)) = node.cpu.as_ref().and_then(cpu_usage) {
            node_cpu.push(&[], core_seconds(usage), Some(cpu.time));
        }
        if let Some((memory, working_set)) = node.memory.as_ref().and_then(working_set) {
            node_memory.push(&[], working_set as f64, Some(memory.time));
        }
        if let Some(swap) = &node.swap {
            if let Some(usage) = swap.swap_usage_bytes {
                node_swap.push(&[], usage as f64, Some(swap.time));
            }
        }
        for pod in &summary.pods {
            let (name, namespace) = (pod.pod_ref.name.as_str(), pod.pod_ref.namespace.as_str());
            for c in &pod.containers {
                let labels = [c.name.as_str(), namespace, name];
                // kubelet leaves out start times at or before the epoch.
                if let Some(start) = c.start_time.filter(|t| t.unix_seconds() > 0) {
                    let seconds = start.unix_nanos as f64 / 1e9;
                    container_start.push(&labels, seconds, None);
                }
                if let Some((cpu, usage)) = c.cpu.as_ref().and_then(cpu_usage) {
                    container_cpu.push(&labels, core_seconds(usage), Some(cpu.time));
                }
                if let Some((memory, working_set)) = c.memory.as_ref().and_then(working_set) {
                    container_memory.push(&labels, working_set as f64, Some(memory.time));
                }
            }
            let labels = [namespace, name];
            if let Some((cpu, usage)) = pod.cpu.as_ref().and_then(cpu_usage) {
                pod_cpu.push(&labels, core_seconds(usage), Some(cpu.time));
            }
            if let Some((memory, working_set)) = pod.memory.as_ref().and_then(working_set) {
                pod_memory.push(&labels, working_set as f64, Some(memory.time));
            }
        }
    }

    // In name order, as the Go client writes families.
    let families = [
        container_cpu,
        container_memory,
        container_start,
        node_cpu,
        node_memory,
        node_swap,
        pod_cpu,
        pod_memory,
        scrape_error,
    ];
    let mut out = String::new();
    for family in families {
        family.write(&mut out);
    }
    out
}

fn cpu_usage(cpu: &CpuStats) -> Option<(&CpuStats, u64)> {
    Some((cpu, cpu.usage_core_nano_seconds?))
}

fn working_set(memory: &MemoryStats) -> Option<(&MemoryStats, u64)> {
    Some((memory, memory.working_set_bytes?))
}

/// A sample value as the Go client writes it (`strconv.FormatFloat(v, 'g', -1, 64)`): the
/// shortest digits that read back exactly, in exponent form when the exponent is below -4 or
/// at least 6 (`1e+06`, `1.6243962483020916e+09`).
fn format_value(v: f64) -> String {
    if v.is_nan() {
        return "NaN".to_owned();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    if v == 0.0 {
        return "0".to_owned();
    }
    let scientific = format!("{v:e}");
    let Some((mantissa, exponent)) = scientific.split_once('e') else {
        return format!("{v}");
    };
    let Ok(exponent) = exponent.parse::<i32>() else {
        return format!("{v}");
    };
    if (-4..6).contains(&exponent) {
        format!("{v}")
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.unsigned_abs())
    }
}

/// A label value in the text format: backslash, double quote and newline escaped.
fn escape_label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}
