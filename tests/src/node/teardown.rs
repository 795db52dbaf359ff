//! Removing everything a test node created, from a record of what it was. The same procedure
//! serves a node's own shutdown and the clean-up of a node whose process died before it
//! could clean up after itself.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bosun_cri::CriClient;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use super::config::{NetworkPlan, NodeLayout};
use super::host;

/// How long containerd gets to exit after SIGTERM before SIGKILL.
const CONTAINERD_STOP_GRACE: Duration = Duration::from_secs(5);
/// How long stopping and removing all pod sandboxes through CRI may take.
const CRI_TEARDOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long killed processes and their cgroups get to disappear.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything needed to find what a node created, kept beside its slot lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeRecord {
    pub name: String,
    pub slot: u16,
    pub dir: PathBuf,
    pub cgroup_parent: String,
    pub network: String,
    pub bridge: String,
    pub subnet: String,
    pub containerd_pid: Option<u32>,
}

impl NodeRecord {
    pub fn new(name: &str, slot: u16, dir: &Path) -> Self {
        let plan = NetworkPlan::for_slot(slot);
        Self {
            name: name.to_owned(),
            slot,
            dir: dir.to_owned(),
            cgroup_parent: format!("/bosun-test-{name}-{slot}"),
            network: plan.network,
            bridge: plan.bridge,
            subnet: plan.subnet,
            containerd_pid: None,
        }
    }

    /// Where a daemon on this node pins its service datapath: one directory per slot, so
    /// nodes of tests running at once never share maps, and a dead node's are reaped with it.
    pub fn bpf_dir(&self) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/bosun-test-{}", self.slot))
    }

    pub fn layout(&self) -> NodeLayout {
        NodeLayout::new(&self.dir)
    }

    pub fn plan(&self) -> NetworkPlan {
        NetworkPlan {
            network: self.network.clone(),
            bridge: self.bridge.clone(),
            subnet: self.subnet.clone(),
        }
    }
}

/// Removes what the node of `record` created, in an order where each step leaves the next
/// one less to do: pod sandboxes through CRI (so CNI DEL runs and netns and rules go), then
/// containerd, then any process left of the node, then mounts, cgroups, links, iptables rules
/// and the directory. Every step runs even if an earlier one failed; the failures are
/// returned, one line each.
pub(crate) fn teardown(record: &NodeRecord, containerd: Option<Child>) -> Vec<String> {
    let layout = record.layout();
    let mut problems = Vec::new();
    let mut step = |what: &str, result: Result<()>| {
        if let Err(err) = result {
            problems.push(format!("{what}: {err:#}"));
        }
    };

    let containerd = Containerd::of(record, containerd);
    if containerd.is_running() && layout.socket().exists() {
        let removed = remove_pod_sandboxes(&layout.socket());
        // A containerd that is dying answers nothing (a SIGKILLed process takes a moment to
        // leave /proc); the steps below clean up after it.
        if removed.is_ok() || !containerd.exits_within(Duration::from_secs(2)) {
            step("removing pod sandboxes through CRI", removed);
        }
    }
    step("stopping containerd", containerd.stop());
    step("stopping the node's processes", kill_node_processes(record));
    step("removing shim sockets", remove_shim_sockets(&layout));
    step("unmounting", host::unmount_under(&record.dir));
    step(
        "removing cgroups",
        host::remove_cgroup_tree(&record.cgroup_parent, REAP_TIMEOUT),
    );
    step("deleting the bridge", host::delete_bridge(&record.bridge));
    step(
        "deleting iptables rules",
        host::delete_iptables_of_network(&record.network),
    );
    // The policy and outside-traffic datapaths' directories are inside the service
    // datapath's: first.
    step(
        "removing the datapath for traffic from outside",
        bosun_netdp::nodeport::cleanup(&record.bpf_dir())
            .map(|_| ())
            .map_err(anyhow::Error::from),
    );
    step(
        "removing the policy datapath",
        bosun_netdp::policy::cleanup(&record.bpf_dir())
            .map(|_| ())
            .map_err(anyhow::Error::from),
    );
    step(
        "removing the service datapath",
        bosun_netdp::service::cleanup(&record.bpf_dir())
            .map(|_| ())
            .map_err(anyhow::Error::from),
    );
    step("removing the node directory", remove_dir(&record.dir));
    problems
}

/// The node's containerd: the child this process started, or, for a node whose process died,
/// the pid in its record if that process still runs this node's configuration.
enum Containerd {
    Child(Child),
    Orphan(u32),
    Gone,
}

impl Containerd {
    fn of(record: &NodeRecord, child: Option<Child>) -> Self {
        if let Some(child) = child {
            return Containerd::Child(child);
        }
        let config = record.layout().config().to_string_lossy().into_owned();
        match record.containerd_pid {
            Some(pid)
                if host::is_running(pid)
                    && host::cmdline(pid).is_some_and(|args| args.contains(&config)) =>
            {
                Containerd::Orphan(pid)
            }
            _ => Containerd::Gone,
        }
    }

    fn is_running(&self) -> bool {
        match self {
            // try_wait needs `&mut`; /proc tells the same without reaping.
            Containerd::Child(child) => host::is_running(child.id()),
            Containerd::Orphan(pid) => host::is_running(*pid),
            Containerd::Gone => false,
        }
    }

    /// Whether the process is gone, or goes within `bound`.
    fn exits_within(&self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        while self.is_running() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// SIGTERM, then SIGKILL after a grace period.
    fn stop(self) -> Result<()> {
        match self {
            Containerd::Child(mut child) => {
                host::signal(child.id(), Signal::SIGTERM);
                let deadline = Instant::now() + CONTAINERD_STOP_GRACE;
                while Instant::now() < deadline {
                    if child
                        .try_wait()
                        .context("waiting for containerd")?
                        .is_some()
                    {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                tracing::warn!(pid = child.id(), "containerd ignored SIGTERM; killing it");
                child.kill().context("killing containerd")?;
                child.wait().context("waiting for containerd")?;
                Ok(())
            }
            Containerd::Orphan(pid) => {
                host::signal(pid, Signal::SIGTERM);
                if host::wait_gone(&[pid], CONTAINERD_STOP_GRACE).is_empty() {
                    return Ok(());
                }
                match host::kill_and_wait(&[pid], REAP_TIMEOUT).as_slice() {
                    [] => Ok(()),
                    _ => bail!("containerd (pid {pid}) survived SIGKILL"),
                }
            }
            Containerd::Gone => Ok(()),
        }
    }
}

/// Stops and removes every pod sandbox through CRI. Runs on a thread of its own with its own
/// runtime, so that it works from `Drop` and from inside any caller's runtime.
fn remove_pod_sandboxes(socket: &Path) -> Result<()> {
    let endpoint = format!("unix://{}", socket.display());
    let worker = std::thread::Builder::new()
        .name("bosun-test-teardown".to_owned())
        .spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building a runtime")?;
            runtime.block_on(async {
                tokio::time::timeout(CRI_TEARDOWN_TIMEOUT, async {
                    // CNI DEL takes the host's xtables lock (portmap), which another
                    // process's long iptables-restore can hold for seconds: each call gets
                    // the time the whole teardown has.
                    let cri = CriClient::connect(&endpoint, CRI_TEARDOWN_TIMEOUT).await?;
                    let mut failures = Vec::new();
                    for sandbox in cri.list_pod_sandbox(None).await? {
                        let result = async {
                            cri.stop_pod_sandbox(&sandbox.id).await?;
                            cri.remove_pod_sandbox(&sandbox.id).await
                        }
                        .await;
                        if let Err(err) = result {
                            failures.push(format!("{}: {err}", sandbox.id));
                        }
                    }
                    match failures.is_empty() {
                        true => Ok(()),
                        false => Err(anyhow!("{}", failures.join("; "))),
                    }
                })
                .await
                .map_err(|_| anyhow!("timed out after {CRI_TEARDOWN_TIMEOUT:?}"))?
            })
        })
        .context("spawning the teardown thread")?;
    worker
        .join()
        .map_err(|_| anyhow!("the teardown thread panicked"))?
}

/// Kills what is left of the node once containerd is gone: its shims (found by the socket
/// path on their command line), everything below them, and every process in the node's
/// cgroups. Workloads go first so that shims do not restart or report them.
fn kill_node_processes(record: &NodeRecord) -> Result<()> {
    let shims = host::shims_of(&record.layout().socket());
    let mut workloads = host::descendants(&shims);
    workloads.extend(host::cgroup_processes(&record.cgroup_parent));
    workloads.sort_unstable();
    workloads.dedup();
    workloads.retain(|pid| !shims.contains(pid));
    let mut left = host::kill_and_wait(&workloads, REAP_TIMEOUT);
    left.extend(host::kill_and_wait(&shims, REAP_TIMEOUT));
    match left.as_slice() {
        [] => Ok(()),
        _ => bail!("processes {left:?} survived SIGKILL"),
    }
}

/// A shim killed before it could clean up leaves its socket in /run/containerd/s; the task
/// bundle under the node's state directory says which one is this node's.
fn remove_shim_sockets(layout: &NodeLayout) -> Result<()> {
    let Ok(namespaces) = std::fs::read_dir(layout.task_bundles()) else {
        return Ok(());
    };
    for bundle in namespaces
        .flatten()
        .filter_map(|ns| std::fs::read_dir(ns.path()).ok())
        .flat_map(|bundles| bundles.flatten())
    {
        let Ok(address) = std::fs::read_to_string(bundle.path().join("address")) else {
            continue;
        };
        let socket = Path::new(address.trim().trim_start_matches("unix://"));
        if socket.starts_with("/run/containerd/s/") && socket.exists() {
            std::fs::remove_file(socket)
                .with_context(|| format!("removing {}", socket.display()))?;
        }
    }
    Ok(())
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}
