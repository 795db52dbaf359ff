//! `bosun run`: the node daemon. Flags are kubelet's where the meaning is the same; a YAML
//! config file may set the same things with KubeletConfiguration's field names, and flags
//! win over it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;

use bosun::daemon::Config;
use bosun::pod::spec::{HostDns, NodeContext, NodeResources};

pub const DEFAULT_ROOT_DIR: &str = "/var/lib/bosun";

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Directory of static pod manifests (KubeletConfiguration staticPodPath).
    #[arg(long = "pod-manifest-path")]
    pub pod_manifest_path: Option<PathBuf>,
    /// The container runtime's CRI endpoint.
    #[arg(long = "container-runtime-endpoint", default_value = bosun_cri::DEFAULT_RUNTIME_ENDPOINT)]
    pub container_runtime_endpoint: String,
    /// The node's name (default: the hostname).
    #[arg(long = "hostname-override")]
    pub hostname_override: Option<String>,
    /// Where bosun keeps its state and its API socket.
    #[arg(long = "root-dir", default_value = DEFAULT_ROOT_DIR)]
    pub root_dir: PathBuf,
    /// A YAML config file with KubeletConfiguration field names.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The bpffs directory where the service datapath pins its maps and program links
    /// (config file: bpfDir).
    #[arg(long = "bpf-dir")]
    pub bpf_dir: Option<PathBuf>,
    /// Run without the service proxy: no programs are attached and Services are not served
    /// (config file: serviceProxy: false).
    #[arg(long = "no-service-proxy")]
    pub no_service_proxy: bool,
    /// Do not enforce NetworkPolicy: no programs are attached to pods' interfaces (config
    /// file: networkPolicy: false).
    #[arg(long = "no-network-policy")]
    pub no_network_policy: bool,
    /// Detach and remove everything the service and policy datapaths installed in the bpf
    /// directory, then exit (kube-proxy's --cleanup). Pods are left alone.
    #[arg(long)]
    pub cleanup: bool,

    /// As kubelet's: join the cluster of the API server this kubeconfig names, as this
    /// node. Without it bosun is standalone.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,

    /// As kubelet's: labels to register the node with, `key=value,key=value`.
    #[arg(long = "node-labels", value_delimiter = ',')]
    pub node_labels: Vec<String>,
}

/// The fields of KubeletConfiguration bosun reads (others are ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigFile {
    pub static_pod_path: Option<PathBuf>,
    #[serde(rename = "clusterDNS", default)]
    pub cluster_dns: Vec<String>,
    pub cluster_domain: Option<String>,
    pub pod_pids_limit: Option<i64>,
    pub cgroup_root: Option<String>,
    pub pod_logs_dir: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
    pub max_pods: Option<i64>,
    /// bosun's own: the service datapath's bpffs directory.
    pub bpf_dir: Option<PathBuf>,
    /// bosun's own: `false` runs no service proxy.
    pub service_proxy: Option<bool>,
    /// bosun's own: `false` enforces no NetworkPolicy.
    pub network_policy: Option<bool>,
}

/// An error in the configuration: the daemon exits with [`EXIT_BAD_CONFIG`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadConfig(pub String);

/// The exit code for a configuration bosun cannot run with.
pub const EXIT_BAD_CONFIG: i32 = 3;

/// Where the service datapath pins its maps and links unless told otherwise.
pub const DEFAULT_BPF_DIR: &str = "/sys/fs/bpf/bosun";

/// kubelet's default `maxPods`.
pub const DEFAULT_MAX_PODS: usize = 110;

pub fn load(args: &RunArgs) -> Result<Config, BadConfig> {
    let file = match &args.config {
        Some(path) => read_config(path)?,
        None => ConfigFile::default(),
    };
    let manifest_dir = args.pod_manifest_path.clone().or(file.static_pod_path);
    if manifest_dir.is_none() && args.kubeconfig.is_none() {
        return Err(BadConfig(
            "no pods to run: give --pod-manifest-path (or staticPodPath in --config), --kubeconfig, or both"
                .into(),
        ));
    }
    let mut node_labels = std::collections::BTreeMap::new();
    for label in &args.node_labels {
        let (key, value) = label.split_once('=').ok_or_else(|| {
            BadConfig(format!(
                "--node-labels: invalid value {label:?}: must be key=value"
            ))
        })?;
        node_labels.insert(key.to_owned(), value.to_owned());
    }
    let node_name = match &args.hostname_override {
        Some(name) => name.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map_err(|e| BadConfig(format!("reading the hostname: {e}")))?
            .trim()
            .to_owned(),
    }
    .to_lowercase();
    let node = NodeContext {
        node_name,
        cluster_dns: file.cluster_dns,
        cluster_domain: file
            .cluster_domain
            .unwrap_or_else(|| "cluster.local".into()),
        pod_logs_dir: file
            .pod_logs_dir
            .unwrap_or_else(|| PathBuf::from("/var/log/pods")),
        cgroup_root: file.cgroup_root.unwrap_or_else(|| "/kubepods".into()),
        host_ip: host_ip(),
        resolv_conf: load_resolv_conf(file.resolv_conf)?,
        pod_pids_limit: file.pod_pids_limit,
        node: node_resources(),
        pods_dir: args.root_dir.join("pods"),
        ..NodeContext::default()
    };
    let max_pods = match file.max_pods {
        None => DEFAULT_MAX_PODS,
        Some(n) => usize::try_from(n)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| BadConfig(format!("maxPods: invalid value {n}: must be positive")))?,
    };
    let service_proxy = !args.no_service_proxy && file.service_proxy != Some(false);
    let network_policy = !args.no_network_policy && file.network_policy != Some(false);
    let bpf_dir = (service_proxy || network_policy).then(|| bpf_dir(args, file.bpf_dir));
    Ok(Config {
        bpf_dir,
        service_proxy,
        network_policy,
        max_pods,
        manifest_dir,
        kubeconfig: args.kubeconfig.clone(),
        node_labels,
        runtime_endpoint: args.container_runtime_endpoint.clone(),
        root_dir: args.root_dir.clone(),
        node,
    })
}

/// The service datapath's directory: the flag, else the config file, else the default.
fn bpf_dir(args: &RunArgs, from_file: Option<PathBuf>) -> PathBuf {
    args.bpf_dir
        .clone()
        .or(from_file)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BPF_DIR))
}

/// `bosun run --cleanup`: removes the service and policy datapaths' programs, links and maps.
fn cleanup(args: &RunArgs) -> Result<i32> {
    let file = match &args.config {
        Some(path) => match read_config(path) {
            Ok(file) => file,
            Err(e) => {
                eprintln!("bosun: error: {e}");
                return Ok(EXIT_BAD_CONFIG);
            }
        },
        None => ConfigFile::default(),
    };
    let dir = bpf_dir(args, file.bpf_dir);
    // The policy datapath lives in a directory inside the service datapath's.
    bosun_netdp::policy::cleanup(&dir)
        .with_context(|| format!("removing the policy datapath in {}", dir.display()))?;
    let removed = bosun_netdp::service::cleanup(&dir)
        .with_context(|| format!("removing the service datapath in {}", dir.display()))?;
    if removed {
        println!("removed the service datapath in {}", dir.display());
    } else {
        println!("nothing installed in {}", dir.display());
    }
    Ok(0)
}

/// The host's resolv.conf (`resolvConf`, default /etc/resolv.conf); an empty path means
/// none, as in kubelet.
fn load_resolv_conf(path: Option<PathBuf>) -> Result<HostDns, BadConfig> {
    let path = path.unwrap_or_else(|| PathBuf::from("/etc/resolv.conf"));
    if path.as_os_str().is_empty() {
        return Ok(HostDns::Loopback);
    }
    HostDns::load(&path).map_err(|e| BadConfig(format!("resolvConf {}: {e}", path.display())))
}

/// The node's memory and CPU, for OOM scores and the downward API's unlimited values.
fn node_resources() -> NodeResources {
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?.to_owned();
            let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    NodeResources {
        memory_capacity_bytes: memory,
        allocatable_cpu_millis: i64::try_from(cpus).unwrap_or(1) * 1000,
        allocatable_memory_bytes: memory,
        allocatable_ephemeral_storage_bytes: 0,
    }
}

fn read_config(path: &Path) -> Result<ConfigFile, BadConfig> {
    let text =
        std::fs::read_to_string(path).map_err(|e| BadConfig(format!("{}: {e}", path.display())))?;
    serde_yaml::from_str(&text).map_err(|e| BadConfig(format!("{}: {e}", path.display())))
}

/// The address other hosts reach this node at: the source address of the default route,
/// found without sending anything (a UDP socket's connect only picks a route).
fn host_ip() -> String {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| {
        s.connect("192.0.2.1:9")?;
        s.local_addr()
    });
    probe.map(|a| a.ip().to_string()).unwrap_or_default()
}

pub async fn run(args: &RunArgs) -> Result<i32> {
    if args.cleanup {
        return cleanup(args);
    }
    let config = match load(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("bosun: error: {e}");
            return Ok(EXIT_BAD_CONFIG);
        }
    };
    tracing::info!(
        manifests = ?config.manifest_dir,
        kubeconfig = ?config.kubeconfig,
        endpoint = %config.runtime_endpoint,
        node = %config.node.node_name,
        "bosun starting"
    );
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("stopping; pods keep running");
    };
    bosun::daemon::run(config, shutdown)
        .await
        .context("running the daemon")?;
    Ok(0)
}
