//! The bare CRI calls bosun's benchmarks measure it against, the readings of CRI timestamps
//! and `/proc` they share, and how they run (async, on two worker threads). Included with
//! `#[path]` by the benchmarks that use it (pods and cluster).

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use bosun::pod::spec::{self, ContainerKind, HostDns, NodeContext, NodeResources, RuntimeFacts};
use bosun_cri::{api, CriClient};
use bosun_tests::node::TestNode;

/// The node name every benchmark's daemon runs as (the end-to-end tests' daemon's).
pub use bosun_tests::daemon::NODE_NAME;

/// Issues the CRI calls bosun would, directly, with the configs bosun's own translation makes
/// of the same pod as a static manifest (without bosun's ownership label, so that the daemon
/// leaves these pods alone).
pub struct Baseline {
    cri: CriClient,
    ctx: NodeContext,
    scratch: tempfile::TempDir,
}

pub struct BarePod {
    pub sandbox: api::PodSandboxConfig,
    pub container: api::ContainerConfig,
}

impl Baseline {
    pub fn new(node: &TestNode, cri: CriClient) -> Result<Baseline> {
        let resolv = Path::new("/etc/resolv.conf");
        let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
        let memory = status_kib(&meminfo, "MemTotal:")? as i64 * 1024;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let ctx = NodeContext {
            node_name: NODE_NAME.to_owned(),
            pod_logs_dir: node.dir().join("pod-logs"),
            cgroup_root: format!("{}/kubepods", node.cgroup_parent()),
            resolv_conf: HostDns::load(resolv)
                .with_context(|| format!("reading {}", resolv.display()))?,
            node: NodeResources {
                memory_capacity_bytes: memory,
                allocatable_cpu_millis: i64::try_from(cpus).unwrap_or(1) * 1000,
                allocatable_memory_bytes: memory,
                allocatable_ephemeral_storage_bytes: 0,
            },
            ..NodeContext::default()
        };
        Ok(Baseline {
            cri,
            ctx,
            scratch: tempfile::tempdir().context("creating a scratch directory")?,
        })
    }

    /// The configs of the static pod `text` (named `name`) as bosun would make them.
    pub fn pod(&self, name: &str, text: &str) -> Result<BarePod> {
        let dir = self.scratch.path().join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("pod.yaml"), text)?;
        let (snapshot, _) = bosun::source::scan(&dir, NODE_NAME);
        if let Some(error) = snapshot.errors.first() {
            bail!("{error}");
        }
        let pod = &snapshot
            .pods
            .values()
            .next()
            .context("the manifest holds no pod")?
            .pod;
        let container = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .context("the pod has no container")?;
        let sandbox = spec::sandbox_config(pod, &self.ctx, 0)?;
        let container = spec::container_config(
            pod,
            container,
            ContainerKind::Regular,
            &self.ctx,
            &RuntimeFacts::default(),
        )?;
        Ok(BarePod { sandbox, container })
    }

    /// RunPodSandbox, CreateContainer, StartContainer; the sandbox's ID and when the first
    /// call went out.
    pub async fn start(&self, pod: &BarePod) -> Result<(String, SystemTime)> {
        std::fs::create_dir_all(&pod.sandbox.log_directory)
            .with_context(|| format!("creating {}", pod.sandbox.log_directory))?;
        let t0 = SystemTime::now();
        let sandbox_id = self
            .cri
            .run_pod_sandbox(pod.sandbox.clone(), "")
            .await
            .context("RunPodSandbox")?;
        let container_id = self
            .cri
            .create_container(&sandbox_id, pod.container.clone(), pod.sandbox.clone())
            .await
            .context("CreateContainer")?;
        self.cri
            .start_container(&container_id)
            .await
            .context("StartContainer")?;
        Ok((sandbox_id, t0))
    }

    pub async fn remove(&self, sandbox_id: &str) -> Result<()> {
        self.cri
            .stop_pod_sandbox(sandbox_id)
            .await
            .context("StopPodSandbox")?;
        self.cri
            .remove_pod_sandbox(sandbox_id)
            .await
            .context("RemovePodSandbox")
    }
}

pub fn from_cri(nanos: i64) -> Option<SystemTime> {
    let nanos = u64::try_from(nanos).ok().filter(|n| *n > 0)?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos))
}

/// `to - from` in milliseconds, negative when `to` is earlier.
pub fn ms_between(from: SystemTime, to: SystemTime) -> f64 {
    match to.duration_since(from) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -e.duration().as_secs_f64() * 1000.0,
    }
}

/// A `VmRSS:`-style line of `/proc/PID/status`, in KiB.
pub fn status_kib(status: &str, key: &str) -> Result<f64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {key} in /proc/PID/status"))
}

/// `ticks` of CPU time (see [`cpu_ticks`]) spent over `window`, as a percentage of one core.
pub fn cpu_percent(ticks: u64, window: Duration) -> f64 {
    ticks as f64 / crate::common::CLOCK_TICKS_PER_SECOND as f64 / window.as_secs_f64() * 100.0
}

/// utime + stime of a process, all its threads, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name, in parentheses, may hold spaces: count fields after its end.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the name come state (field 3), ..., utime (14) and stime (15).
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("field {n} of {path}"))
    };
    Ok(field(14)? + field(15)?)
}

/// Runs an async benchmark on a runtime of two worker threads, exiting on failure.
pub fn run_async<F: std::future::Future<Output = Result<()>>>(name: &str, run: F) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime");
    crate::common::exit_on_error(name, runtime.and_then(|runtime| runtime.block_on(run)));
}
