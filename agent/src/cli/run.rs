//! `bosun run`: the node daemon. Flags are kubelet's where the meaning is the same; a YAML
//! config file may set the same things with KubeletConfiguration's field names, and flags
//! win over it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;

use std::collections::BTreeMap;

use bosun::daemon::eviction::{EvictionConfig, EvictionFields, Signal};
use bosun::daemon::{Config, NodeCapacity};

use bosun::pod::cgroup::CgroupDriver;
use bosun::pod::log_rotation::RotationConfig;
use bosun::pod::spec::{HostDns, NodeContext, NodeResources, ParsedQuantity};
use bosun::server::auth::{AuthenticationConfig, AuthorizationConfig, AuthorizationMode};
use bosun::server::tls::TlsConfig;
use bosun::server::ServerConfig;
use bosun::util::go_duration;
use k8s_openapi::api::core::v1::Taint;

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

    #[command(flatten)]
    pub external: bosun::proxy::config::ExternalArgs,

    /// As kubelet's: join the cluster of the API server this kubeconfig names, as this
    /// node. Without it bosun is standalone.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,

    /// As kubelet's: when --kubeconfig names no file yet, or one whose client certificate has
    /// expired, get a client certificate with the bootstrap token of this kubeconfig.
    #[arg(long = "bootstrap-kubeconfig")]
    pub bootstrap_kubeconfig: Option<PathBuf>,

    /// As kubelet's: where the client certificate and key are kept.
    #[arg(long = "cert-dir")]
    pub cert_dir: Option<PathBuf>,

    /// As kubelet's: labels to register the node with, `key=value,key=value`.
    #[arg(long = "node-labels", value_delimiter = ',')]
    pub node_labels: Vec<String>,

    /// As kubelet's: taints to register the node with, `key=value:Effect,...`.
    #[arg(long = "register-with-taints", value_delimiter = ',')]
    pub register_with_taints: Vec<String>,

    /// As kubelet's: the address the kubelet API listens on (config file: address).
    #[arg(long)]
    pub address: Option<std::net::IpAddr>,

    /// As kubelet's: the kubelet API's port (config file: port; default 10250).
    #[arg(long)]
    pub port: Option<u16>,

    /// As kubelet's: the kubelet API's serving certificate (config file: tlsCertFile);
    /// without it a self-signed one is made and kept in --cert-dir.
    #[arg(long = "tls-cert-file")]
    pub tls_cert_file: Option<PathBuf>,

    /// As kubelet's: the key of --tls-cert-file (config file: tlsPrivateKeyFile).
    #[arg(long = "tls-private-key-file")]
    pub tls_private_key_file: Option<PathBuf>,

    /// As kubelet's: client certificates signed by this CA bundle are an identity for the
    /// kubelet API (config file: authentication.x509.clientCAFile).
    #[arg(long = "client-ca-file")]
    pub client_ca_file: Option<PathBuf>,

    /// As kubelet's: let requests without credentials in as `system:anonymous` (config file:
    /// authentication.anonymous.enabled; default false).
    #[arg(long = "anonymous-auth")]
    pub anonymous_auth: Option<bool>,

    /// As kubelet's: `Webhook` (ask the API server, the default) or `AlwaysAllow` (config
    /// file: authorization.mode).
    #[arg(long = "authorization-mode")]
    pub authorization_mode: Option<String>,

    /// As kubelet's: the plain-HTTP `/healthz` port on 127.0.0.1, 0 for none (config file:
    /// healthzPort; default 10248).
    #[arg(long = "healthz-port")]
    pub healthz_port: Option<u16>,
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
    /// As kubelet's: the parent of the `kubepods` cgroup, `/` by default.
    pub cgroup_root: Option<String>,
    /// As kubelet's: `cgroupfs` (the default) or `systemd`; the container runtime must use
    /// the same (containerd's `SystemdCgroup`).
    pub cgroup_driver: Option<String>,
    pub pod_logs_dir: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
    pub max_pods: Option<i64>,
    /// bosun's own: the service datapath's bpffs directory.
    pub bpf_dir: Option<PathBuf>,
    /// bosun's own: `false` runs no service proxy.
    pub service_proxy: Option<bool>,
    /// bosun's own: `false` enforces no NetworkPolicy.
    pub network_policy: Option<bool>,
    /// Resources set aside for Kubernetes' daemons and for the system (`cpu`, `memory`,
    /// `ephemeral-storage`): not allocatable to pods.
    #[serde(default)]
    pub kube_reserved: BTreeMap<String, String>,
    #[serde(default)]
    pub system_reserved: BTreeMap<String, String>,
    /// Hard eviction thresholds; kubelet's defaults when unset. `memory.available` and
    /// `nodefs.available` also reduce allocatable, as in kubelet.
    pub eviction_hard: Option<BTreeMap<String, String>>,
    /// Soft eviction thresholds, each with a grace period in `evictionSoftGracePeriod`.
    #[serde(default)]
    pub eviction_soft: BTreeMap<String, String>,
    #[serde(default)]
    pub eviction_soft_grace_period: BTreeMap<String, String>,
    /// The longest grace period a soft eviction gives a pod, in seconds.
    pub eviction_max_pod_grace_period: Option<i64>,
    /// How long a pressure condition stays True after its signal recovered (default 5m).
    pub eviction_pressure_transition_period: Option<String>,
    #[serde(default)]
    pub eviction_minimum_reclaim: BTreeMap<String, String>,
    /// bosun's own: how often the eviction manager observes the signals (a duration;
    /// default 10s, kubelet's fixed period).
    pub eviction_monitoring_period: Option<String>,
    /// Taints the node registers with.
    #[serde(default)]
    pub register_with_taints: Vec<Taint>,
    /// Renew the client certificate before it expires (with TLS bootstrapping).
    pub rotate_certificates: Option<bool>,
    /// Rotate a container's log once it reaches this size (a quantity; default 10Mi).
    pub container_log_max_size: Option<String>,
    /// Keep this many log files of a container, the live one included (default 5).
    pub container_log_max_files: Option<i64>,
    /// How often logs are checked for rotation (a duration; default 10s).
    pub container_log_monitor_interval: Option<String>,
    /// The bound on each call to the container runtime, except pulls and those that take
    /// their own (a duration; default 2m, kubelet's). A call cut short by it may still
    /// finish in the runtime.
    pub runtime_request_timeout: Option<String>,
    /// How often a pod is synced when nothing wakes its worker (a duration; default 1m,
    /// kubelet's).
    pub sync_frequency: Option<String>,
    /// Serve the kubelet API (default: in a cluster; standalone only when set).
    pub enable_server: Option<bool>,
    pub address: Option<String>,
    pub port: Option<i64>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_private_key_file: Option<PathBuf>,
    /// Serve a certificate the cluster signs (signer `kubernetes.io/kubelet-serving`).
    #[serde(rename = "serverTLSBootstrap")]
    pub server_tls_bootstrap: Option<bool>,
    pub tls_min_version: Option<String>,
    #[serde(default)]
    pub tls_cipher_suites: Vec<String>,
    pub healthz_bind_address: Option<String>,
    pub healthz_port: Option<i64>,
    #[serde(default)]
    pub authentication: AuthenticationFile,
    #[serde(default)]
    pub authorization: AuthorizationFile,
}

/// KubeletConfiguration `authentication`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticationFile {
    #[serde(default)]
    pub x509: X509File,
    #[serde(default)]
    pub webhook: WebhookFile,
    #[serde(default)]
    pub anonymous: EnabledFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509File {
    #[serde(rename = "clientCAFile")]
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookFile {
    pub enabled: Option<bool>,
    #[serde(rename = "cacheTTL")]
    pub cache_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnabledFile {
    pub enabled: Option<bool>,
}

/// KubeletConfiguration `authorization`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationFile {
    pub mode: Option<String>,
    #[serde(default)]
    pub webhook: AuthorizationWebhookFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationWebhookFile {
    #[serde(rename = "cacheAuthorizedTTL")]
    pub cache_authorized_ttl: Option<String>,
    #[serde(rename = "cacheUnauthorizedTTL")]
    pub cache_unauthorized_ttl: Option<String>,
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
    let manifest_dir = args
        .pod_manifest_path
        .clone()
        .or(file.static_pod_path.clone());
    if args.bootstrap_kubeconfig.is_some() && args.kubeconfig.is_none() {
        return Err(BadConfig(
            "--bootstrap-kubeconfig needs --kubeconfig: the file the issued credentials are written to".into(),
        ));
    }
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
    let cgroup_driver = match file.cgroup_driver.as_deref() {
        None => CgroupDriver::Cgroupfs,
        Some(text) => CgroupDriver::parse(text).map_err(BadConfig)?,
    };
    let cgroup_root = cgroup_driver
        .kubepods(file.cgroup_root.as_deref())
        .map_err(BadConfig)?;
    let configured_cgroup_root = file.cgroup_root.clone().unwrap_or_else(|| "/".to_owned());
    let mut taints = file.register_with_taints.clone();
    for text in &args.register_with_taints {
        taints.push(parse_taint(text)?);
    }
    let capacity = node_capacity(&args.root_dir);
    let eviction = eviction_config(&file)?;
    let allocatable = allocatable(
        &capacity,
        &file.kube_reserved,
        &file.system_reserved,
        &eviction,
    )?;
    let log_rotation = log_rotation(&file)?;
    let host_ip = host_ip();
    let server = server_config(args, &file, &node_name, &host_ip)?;
    let runtime_request_timeout = positive_duration(
        "runtimeRequestTimeout",
        file.runtime_request_timeout.as_deref(),
        bosun::daemon::RUNTIME_REQUEST_TIMEOUT,
    )?;
    let sync_frequency = positive_duration(
        "syncFrequency",
        file.sync_frequency.as_deref(),
        bosun::daemon::SYNC_FREQUENCY,
    )?;
    let node = NodeContext {
        node_name,
        cluster_dns: file.cluster_dns,
        cluster_domain: file
            .cluster_domain
            .unwrap_or_else(|| "cluster.local".into()),
        pod_logs_dir: file
            .pod_logs_dir
            .unwrap_or_else(|| PathBuf::from("/var/log/pods")),
        cgroup_root,
        cgroup_driver,
        host_ip,
        resolv_conf: load_resolv_conf(file.resolv_conf)?,
        pod_pids_limit: file.pod_pids_limit,
        node: NodeResources {
            memory_capacity_bytes: capacity.memory_bytes,
            allocatable_cpu_millis: allocatable.cpu_millis,
            allocatable_memory_bytes: allocatable.memory_bytes,
            allocatable_ephemeral_storage_bytes: allocatable.ephemeral_bytes,
        },
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
    let mut notes = Vec::new();
    let node_port_cidrs = bosun::proxy::config::node_port_cidrs(
        &args.external.nodeport_addresses,
        "--nodeport-addresses",
        &mut notes,
    )
    .map_err(|problem| BadConfig(format!("--nodeport-addresses: {problem}")))?;
    for note in notes {
        tracing::warn!("{note}");
    }
    let tc_mode = bosun_netdp::tc::TcMode::detect(bosun_netdp::tc::Interfaces::Pods)
        .map_err(|e| BadConfig(e.to_string()))?;
    Ok(Config {
        cgroup_root: configured_cgroup_root,
        bpf_dir,
        service_proxy,
        external: args.external.resolve(node_port_cidrs),
        network_policy,
        tc_mode,
        max_pods,
        manifest_dir,
        kubeconfig: args.kubeconfig.clone(),
        bootstrap_kubeconfig: args.bootstrap_kubeconfig.clone(),
        cert_dir: args
            .cert_dir
            .clone()
            .unwrap_or_else(|| args.root_dir.join("pki")),
        rotate_certificates: file.rotate_certificates.unwrap_or(true),
        node_labels,
        node_taints: taints,
        capacity,
        runtime_endpoint: args.container_runtime_endpoint.clone(),
        runtime_request_timeout,
        sync_frequency,
        root_dir: args.root_dir.clone(),
        node,
        server: server.0,
        healthz: server.1,
        log_rotation,
        eviction,
    })
}

/// The duration in config field `field`, `default` when not set; it must be positive.
fn positive_duration(
    field: &str,
    text: Option<&str>,
    default: std::time::Duration,
) -> Result<std::time::Duration, BadConfig> {
    let Some(text) = text else {
        return Ok(default);
    };
    match go_duration(text) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        Ok(_) => Err("must be positive".to_owned()),
        Err(reason) => Err(reason),
    }
    .map_err(|reason| BadConfig(format!("{field}: invalid value {text:?}: {reason}")))
}

/// The eviction configuration from the `eviction*` fields.
fn eviction_config(file: &ConfigFile) -> Result<EvictionConfig, BadConfig> {
    let default_hard = default_eviction_hard();
    EvictionConfig::parse(&EvictionFields {
        hard: file.eviction_hard.as_ref().unwrap_or(&default_hard),
        soft: &file.eviction_soft,
        soft_grace_period: &file.eviction_soft_grace_period,
        minimum_reclaim: &file.eviction_minimum_reclaim,
        max_pod_grace_period: file.eviction_max_pod_grace_period,
        pressure_transition_period: file.eviction_pressure_transition_period.as_deref(),
        monitoring_period: file.eviction_monitoring_period.as_deref(),
    })
    .map_err(|e| BadConfig(e.to_string()))
}

/// Container log rotation (`containerLogMaxSize`, `containerLogMaxFiles`,
/// `containerLogMonitorInterval`); `None` when `containerLogMaxSize` is negative, which turns
/// rotation off as in kubelet.
fn log_rotation(file: &ConfigFile) -> Result<Option<RotationConfig>, BadConfig> {
    let mut config = RotationConfig::default();
    if let Some(size) = &file.container_log_max_size {
        let parsed = ParsedQuantity::parse(size)
            .map_err(|e| BadConfig(format!("containerLogMaxSize: invalid value {size:?}: {e}")))?;
        let bytes = parsed.value();
        if bytes < 0 {
            return Ok(None);
        }
        config.max_size = u64::try_from(bytes).unwrap_or(u64::MAX);
    }
    if let Some(files) = file.container_log_max_files {
        config.max_files = usize::try_from(files).map_err(|_| {
            BadConfig(format!(
                "containerLogMaxFiles: invalid value {files}: must be at least 2"
            ))
        })?;
    }
    if let Some(interval) = &file.container_log_monitor_interval {
        config.interval = go_duration(interval).map_err(|reason| {
            BadConfig(format!(
                "containerLogMonitorInterval: invalid value {interval:?}: {reason}"
            ))
        })?;
    }
    config.validate().map_err(|e| BadConfig(e.to_string()))?;
    Ok(Some(config))
}

/// The kubelet API's settings: flags over the config file over kubelet's defaults. `None`
/// for the API when it is not served: `enableServer: false`, or standalone unless
/// `enableServer: true`. The plain `/healthz` address comes apart (None: `healthzPort: 0`).
fn server_config(
    args: &RunArgs,
    file: &ConfigFile,
    node_name: &str,
    host_ip: &str,
) -> Result<(Option<ServerConfig>, Option<std::net::SocketAddr>), BadConfig> {
    let ip = |field: &str, value: &str| {
        value.parse::<std::net::IpAddr>().map_err(|_| {
            BadConfig(format!(
                "{field}: invalid value {value:?}: must be an IP address"
            ))
        })
    };
    let port = |field: &str, value: i64| {
        u16::try_from(value)
            .map_err(|_| BadConfig(format!("{field}: invalid value {value}: must be 0-65535")))
    };
    let duration = |field: &str, value: &Option<String>, default: u64| match value {
        None => Ok(std::time::Duration::from_secs(default)),
        Some(text) => go_duration(text)
            .map_err(|reason| BadConfig(format!("{field}: invalid value {text:?}: {reason}"))),
    };
    let healthz_port = match args.healthz_port {
        Some(p) => p,
        None => port("healthzPort", file.healthz_port.unwrap_or(10248))?,
    };
    let healthz_ip = ip(
        "healthzBindAddress",
        file.healthz_bind_address.as_deref().unwrap_or("127.0.0.1"),
    )?;
    let healthz = (healthz_port != 0).then(|| std::net::SocketAddr::new(healthz_ip, healthz_port));

    let enabled = file.enable_server.unwrap_or(args.kubeconfig.is_some());
    if !enabled {
        return Ok((None, healthz));
    }
    let address = match args.address {
        Some(a) => a,
        None => ip("address", file.address.as_deref().unwrap_or("0.0.0.0"))?,
    };
    let listen_port = match args.port {
        Some(p) => p,
        None => port("port", file.port.unwrap_or(10250))?,
    };
    if listen_port == 0 {
        return Err(BadConfig("port: invalid value 0: must be 1-65535".into()));
    }
    let cert = args.tls_cert_file.clone().or(file.tls_cert_file.clone());
    let key = args
        .tls_private_key_file
        .clone()
        .or(file.tls_private_key_file.clone());
    let cert_and_key = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            return Err(BadConfig(
                "tlsCertFile and tlsPrivateKeyFile go together: give both or neither".into(),
            ))
        }
    };
    let bootstrap = file.server_tls_bootstrap.unwrap_or(false);
    if bootstrap && cert_and_key.is_some() {
        return Err(BadConfig(
            "serverTLSBootstrap and tlsCertFile/tlsPrivateKeyFile: give one or the other".into(),
        ));
    }
    if bootstrap && args.kubeconfig.is_none() {
        return Err(BadConfig(
            "serverTLSBootstrap needs --kubeconfig: the cluster signs the certificate".into(),
        ));
    }
    let mode = match args
        .authorization_mode
        .as_deref()
        .or(file.authorization.mode.as_deref())
    {
        None | Some("Webhook") => AuthorizationMode::Webhook,
        Some("AlwaysAllow") => AuthorizationMode::AlwaysAllow,
        Some(other) => {
            return Err(BadConfig(format!(
                "authorization.mode: unsupported value {other:?}: must be Webhook or AlwaysAllow"
            )))
        }
    };
    let mut hostnames = vec![node_name.to_owned()];
    if !host_ip.is_empty() {
        hostnames.push(host_ip.to_owned());
    }
    let cert_dir = args
        .cert_dir
        .clone()
        .unwrap_or_else(|| args.root_dir.join("pki"));
    Ok((
        Some(ServerConfig {
            listen: std::net::SocketAddr::new(address, listen_port),
            tls: TlsConfig {
                cert_and_key,
                cert_dir,
                min_version: file.tls_min_version.clone().unwrap_or_default(),
                cipher_suites: file.tls_cipher_suites.clone(),
                client_ca_file: args.client_ca_file.clone().or(file
                    .authentication
                    .x509
                    .client_ca_file
                    .clone()),
                hostnames,
                bootstrap,
            },
            authentication: AuthenticationConfig {
                anonymous: args
                    .anonymous_auth
                    .or(file.authentication.anonymous.enabled)
                    .unwrap_or(false),
                webhook: file.authentication.webhook.enabled.unwrap_or(true),
                webhook_cache_ttl: duration(
                    "authentication.webhook.cacheTTL",
                    &file.authentication.webhook.cache_ttl,
                    120,
                )?,
            },
            authorization: AuthorizationConfig {
                mode,
                authorized_ttl: duration(
                    "authorization.webhook.cacheAuthorizedTTL",
                    &file.authorization.webhook.cache_authorized_ttl,
                    300,
                )?,
                unauthorized_ttl: duration(
                    "authorization.webhook.cacheUnauthorizedTTL",
                    &file.authorization.webhook.cache_unauthorized_ttl,
                    30,
                )?,
            },
        }),
        healthz,
    ))
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
    // The policy and outside-traffic datapaths live in directories inside the service
    // datapath's.
    bosun_netdp::nodeport::cleanup(&dir).with_context(|| {
        format!(
            "removing the datapath for traffic from outside in {}",
            dir.display()
        )
    })?;
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

/// The node's capacity: its CPUs, its memory, and the file system of bosun's root directory
/// (kubelet's nodefs).
fn node_capacity(root_dir: &Path) -> NodeCapacity {
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?.to_owned();
            let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
            kib.checked_mul(1024)
        })
        .unwrap_or(0);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The root directory may not exist yet: its nearest existing ancestor is on the same
    // file system as far as anyone can tell.
    let ephemeral = root_dir
        .ancestors()
        .find_map(|dir| nix::sys::statvfs::statvfs(dir).ok())
        .map(|fs| i64::try_from(fs.blocks().saturating_mul(fs.fragment_size())).unwrap_or(i64::MAX))
        .unwrap_or(0);
    NodeCapacity {
        cpu_millis: i64::try_from(cpus).unwrap_or(1) * 1000,
        memory_bytes: memory,
        ephemeral_bytes: ephemeral,
    }
}

/// kubelet's default `evictionHard` (Linux).
fn default_eviction_hard() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("memory.available".to_owned(), "100Mi".to_owned()),
        ("nodefs.available".to_owned(), "10%".to_owned()),
        ("nodefs.inodesFree".to_owned(), "5%".to_owned()),
        ("imagefs.available".to_owned(), "15%".to_owned()),
    ])
}

/// kubelet's node allocatable: capacity less `kubeReserved`, `systemReserved` and the hard
/// eviction thresholds of memory and the node's file system, never below zero.
fn allocatable(
    capacity: &NodeCapacity,
    kube_reserved: &BTreeMap<String, String>,
    system_reserved: &BTreeMap<String, String>,
    eviction: &EvictionConfig,
) -> Result<NodeCapacity, BadConfig> {
    let quantity = |field: &str, key: &str, text: &str| {
        ParsedQuantity::parse(text)
            .map_err(|e| BadConfig(format!("{field}: {key}: invalid value {text:?}: {e}")))
    };
    let mut reserved = NodeCapacity::default();
    for (field, map) in [
        ("kubeReserved", kube_reserved),
        ("systemReserved", system_reserved),
    ] {
        for (key, text) in map {
            let q = quantity(field, key, text)?;
            match key.as_str() {
                "cpu" => reserved.cpu_millis += q.milli_value(),
                "memory" => reserved.memory_bytes += q.value(),
                "ephemeral-storage" => reserved.ephemeral_bytes += q.value(),
                "pid" => {}
                other => {
                    return Err(BadConfig(format!(
                        "{field}: unsupported resource {other:?}: must be one of cpu, memory, ephemeral-storage, pid"
                    )))
                }
            }
        }
    }
    let threshold = |signal: Signal, of: i64| {
        eviction
            .hard_value(signal)
            .map_or(0, |value| value.quantity(of))
    };
    reserved.memory_bytes += threshold(Signal::MemoryAvailable, capacity.memory_bytes);
    reserved.ephemeral_bytes += threshold(Signal::NodeFsAvailable, capacity.ephemeral_bytes);
    Ok(NodeCapacity {
        cpu_millis: (capacity.cpu_millis - reserved.cpu_millis).max(0),
        memory_bytes: (capacity.memory_bytes - reserved.memory_bytes).max(0),
        ephemeral_bytes: (capacity.ephemeral_bytes - reserved.ephemeral_bytes).max(0),
    })
}

/// A taint as `--register-with-taints` writes it: `key[=value]:Effect`.
fn parse_taint(text: &str) -> Result<Taint, BadConfig> {
    let bad = |why: &str| {
        BadConfig(format!(
            "--register-with-taints: invalid value {text:?}: {why}"
        ))
    };
    let (key_value, effect) = text
        .rsplit_once(':')
        .ok_or_else(|| bad("must be key[=value]:Effect"))?;
    if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
        return Err(bad(
            "the effect must be NoSchedule, PreferNoSchedule or NoExecute",
        ));
    }
    let (key, value) = match key_value.split_once('=') {
        Some((key, value)) => (key, Some(value.to_owned())),
        None => (key_value, None),
    };
    if key.is_empty() {
        return Err(bad("the key is required"));
    }
    Ok(Taint {
        key: key.to_owned(),
        value,
        effect: effect.to_owned(),
        time_added: None,
    })
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
        terminated().await;
        tracing::info!("stopping; pods keep running");
    };
    bosun::daemon::run(config, shutdown)
        .await
        .context("running the daemon")?;
    Ok(0)
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn terminated() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(term) => {
                term.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocatable_is_capacity_less_reserved_and_eviction_thresholds() {
        let capacity = NodeCapacity {
            cpu_millis: 2000,
            memory_bytes: 4 << 30,
            ephemeral_bytes: 100 << 30,
        };
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let got = allocatable(
            &capacity,
            &map(&[("cpu", "100m"), ("memory", "256Mi")]),
            &map(&[("cpu", "0.1"), ("ephemeral-storage", "1Gi")]),
            &eviction_config(&ConfigFile::default()).expect("kubelet's defaults"),
        )
        .expect("valid");
        assert_eq!(got.cpu_millis, 1800);
        assert_eq!(got.memory_bytes, (4 << 30) - (256 << 20) - (100 << 20));
        assert_eq!(got.ephemeral_bytes, (100 << 30) - (1 << 30) - (10 << 30));
        let bad = allocatable(
            &capacity,
            &map(&[("gpu", "1")]),
            &map(&[]),
            &EvictionConfig::default(),
        );
        assert!(bad.is_err());
    }

    #[test]
    fn eviction_fields_are_read_from_the_config_file_and_bad_ones_named() {
        let file: ConfigFile = serde_yaml::from_str(
            "evictionHard: {memory.available: 1Gi}\nevictionSoft: {nodefs.available: 20%}\nevictionSoftGracePeriod: {nodefs.available: 1m}\nevictionPressureTransitionPeriod: 30s\nevictionMonitoringPeriod: 2s\n",
        )
        .expect("parses");
        let config = eviction_config(&file).expect("valid");
        assert_eq!(config.thresholds.len(), 2);
        assert_eq!(
            config.pressure_transition_period,
            std::time::Duration::from_secs(30)
        );
        assert_eq!(config.monitoring_period, std::time::Duration::from_secs(2));
        // Without evictionHard, kubelet's defaults.
        let defaults = eviction_config(&ConfigFile::default()).expect("valid");
        assert_eq!(defaults.thresholds.len(), 4);
        let bad: ConfigFile =
            serde_yaml::from_str("evictionHard: {memory.available: 10Qi}\n").expect("parses");
        let error = eviction_config(&bad).expect_err("refused").to_string();
        assert!(
            error.starts_with("evictionHard[memory.available]: invalid value \"10Qi\""),
            "{error}"
        );
    }

    #[test]
    fn cgroup_root_is_the_parent_of_kubepods() {
        let kubepods = |root| CgroupDriver::Cgroupfs.kubepods(root).expect("cgroupfs");
        assert_eq!(kubepods(None), "/kubepods");
        assert_eq!(kubepods(Some("/")), "/kubepods");
        assert_eq!(kubepods(Some("/bosun-demo/")), "/bosun-demo/kubepods");
    }

    #[test]
    fn taints_parse_as_kubelet_writes_them() {
        let taint = parse_taint("dedicated=edge:NoSchedule").expect("valid");
        assert_eq!(
            (
                taint.key.as_str(),
                taint.value.as_deref(),
                taint.effect.as_str()
            ),
            ("dedicated", Some("edge"), "NoSchedule")
        );
        assert!(parse_taint("bare:NoExecute").is_ok_and(|t| t.value.is_none()));
        assert!(parse_taint("k=v:Sometimes").is_err());
        assert!(parse_taint("no-effect").is_err());
    }

    #[test]
    fn durations_are_kubelets_unless_set_and_positive() {
        let timeout = |text: Option<&str>| {
            positive_duration(
                "runtimeRequestTimeout",
                text,
                std::time::Duration::from_secs(120),
            )
            .map_err(|e| e.0)
        };
        assert_eq!(timeout(None), Ok(std::time::Duration::from_secs(120)));
        assert_eq!(timeout(Some("30s")), Ok(std::time::Duration::from_secs(30)));
        let zero = timeout(Some("0s")).expect_err("zero");
        assert!(
            zero.contains("runtimeRequestTimeout") && zero.contains("\"0s\""),
            "{zero}"
        );
        assert!(timeout(Some("soon")).is_err());
    }
}
