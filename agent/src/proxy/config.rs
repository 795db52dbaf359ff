//! `bosun proxy`'s configuration, read the way kube-proxy reads its own: kube-proxy's flags
//! where the meaning is the same, and its config file, a `KubeProxyConfiguration`
//! (`kubeproxy.config.k8s.io/v1alpha1`, YAML or JSON), so a kube-proxy DaemonSet's arguments
//! and ConfigMap can be kept. This module knows flags, the file and kube-proxy's rules for
//! them; it knows nothing of the API server or the datapath.
//!
//! # Flags and the file
//!
//! As kube-proxy (`cmd/kube-proxy/app/options.go`, `Options.Complete`): without `--config`,
//! the flags over kube-proxy's defaults. With `--config`, the file (with kube-proxy's defaults
//! for what it leaves out) replaces what the flags said: kube-proxy decodes the file into a
//! new configuration and puts it in place of the one the flags were written into. So
//! `--kubeconfig`, `--cluster-cidr`, `--healthz-bind-address` and `--metrics-bind-address` are
//! ignored, even where the file does not set the field (kubernetes/kubernetes#98302 and
//! #108737; kube-proxy's help says "This parameter is ignored if a config file is specified
//! by --config"). The exceptions are `--hostname-override`, which kube-proxy applies after
//! loading the file and so wins over `hostnameOverride`, and the flags that are not part of
//! the configuration (`--config`, `--cleanup`). bosun's own `--bpf-dir` has no
//! field in the file and always applies. A flag ignored this way is
//! named in [`ProxyConfig::notes`].
//!
//! # The file
//!
//! kube-proxy decodes strictly first; when that fails only for unknown or duplicate fields,
//! it decodes the v1alpha1 file again leniently, logs "Using lenient decoding as strict
//! decoding failed" and runs (kubernetes/kubernetes#84143, kept since for v1alpha1). bosun
//! does the same: an unknown field is a note naming the file, the field and its value, not an
//! error. What kube-proxy refuses even leniently is refused here, with the file, the field and
//! the value: a value of the wrong type, a duration, address or CIDR that does not parse, a
//! file that is not a `KubeProxyConfiguration` of version v1alpha1. (Of a duplicated key the
//! last one wins, as in kube-proxy's lenient decoding, but without a note.) Fields bosun does
//! not use are checked for their type only, not against kube-proxy's other rules
//! (`masqueradeBit`'s range, `nodePortAddresses`' CIDRs and the like).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::source::strict::{self, Problem};
use crate::source::validate_objects::parse_cidr;
use crate::util::go_duration;

/// kube-proxy's `--healthz-bind-address` default (`ports.ProxyHealthzPort`).
pub const DEFAULT_HEALTHZ_BIND_ADDRESS: &str = "0.0.0.0:10256";
/// kube-proxy's `--metrics-bind-address` default (`ports.ProxyStatusPort`).
pub const DEFAULT_METRICS_BIND_ADDRESS: &str = "127.0.0.1:10249";
/// Where the datapath pins its maps and links unless told otherwise (as `bosun run`).
pub const DEFAULT_BPF_DIR: &str = "/sys/fs/bpf/bosun";
/// Where `bosun proxy` keeps its own state unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/bosun-proxy";

const HEALTHZ_PORT: u16 = 10256;
const METRICS_PORT: u16 = 10249;
/// kube-proxy's `configSyncPeriod` default.
const DEFAULT_CONFIG_SYNC_PERIOD: Duration = Duration::from_secs(15 * 60);
/// kube-proxy's `iptables.syncPeriod` (and `ipvs.`, `nftables.`) default.
const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(30);

const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
const KIND: &str = "KubeProxyConfiguration";
/// kube-proxy's own modes (`mode`, `--proxy-mode`), on Linux and Windows.
const KUBE_PROXY_MODES: [&str; 4] = ["iptables", "ipvs", "nftables", "kernelspace"];

/// `bosun proxy`'s flags: kube-proxy's names where the meaning is the same, then bosun's own.
#[derive(clap::Args, Debug, Clone)]
pub struct ProxyArgs {
    /// As kube-proxy's: the kubeconfig to reach the API server with; without it, the pod's
    /// service account (in-cluster config). Ignored with --config (clientConnection.kubeconfig).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,

    /// As kube-proxy's: the name of this node's Node object (default: the hostname,
    /// lower-cased). Wins over the config file's hostnameOverride.
    #[arg(long = "hostname-override", value_name = "NAME")]
    pub hostname_override: Option<String>,

    /// As kube-proxy's: the pods' CIDR range, or a comma-separated dual-stack pair; bosun
    /// keeps the IPv4 one. Ignored with --config (clusterCIDR).
    #[arg(long = "cluster-cidr", value_name = "CIDR[,CIDR]")]
    pub cluster_cidr: Option<String>,

    /// As kube-proxy's: where /healthz and /livez are served, IP:port, or an IP alone for
    /// port 10256 (default 0.0.0.0:10256); empty to serve neither. Ignored with --config
    /// (healthzBindAddress).
    #[arg(long = "healthz-bind-address", value_name = "IP[:PORT]")]
    pub healthz_bind_address: Option<String>,

    /// As kube-proxy's: where /metrics is served, IP:port, or an IP alone for port 10249
    /// (default 127.0.0.1:10249); empty to not serve it. Ignored with --config
    /// (metricsBindAddress).
    #[arg(long = "metrics-bind-address", value_name = "IP[:PORT]")]
    pub metrics_bind_address: Option<String>,

    /// As kube-proxy's: a KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1,
    /// YAML or JSON). Most other flags are then ignored, as kube-proxy ignores them.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// As kube-proxy's: remove what bosun's datapath installed in --bpf-dir, then exit.
    #[arg(long)]
    pub cleanup: bool,

    /// The bpffs directory where the datapath pins its maps and program links.
    #[arg(long = "bpf-dir", value_name = "DIR", default_value = DEFAULT_BPF_DIR)]
    pub bpf_dir: PathBuf,

    /// Enforce NetworkPolicy for this node's pods as well as Services
    /// (`--network-policy=false`: Services only, for a node whose NetworkPolicy another agent
    /// enforces).
    #[arg(
        long = "network-policy",
        value_name = "BOOL",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub network_policy: bool,

    /// Where the NetworkPolicy enforcer keeps the pods it placed, across restarts.
    #[arg(long = "state-dir", value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    #[command(flatten)]
    pub external: ExternalArgs,
}

/// The flags of node ports and traffic from outside the node, shared by `bosun proxy` and
/// `bosun run`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ExternalArgs {
    /// As kube-proxy's: the ranges of the node's addresses that node ports are served on,
    /// comma-separated CIDRs (default: every address of the node). With `bosun proxy
    /// --config`, the file's nodePortAddresses instead.
    #[arg(
        long = "nodeport-addresses",
        value_name = "CIDR,...",
        value_delimiter = ','
    )]
    pub nodeport_addresses: Vec<String>,

    /// The interfaces where packets from outside the node to node ports, external IPs and
    /// load balancer IPs are served, comma-separated, including those towards other nodes:
    /// `auto` for those of the node's IPv4 default routes (followed as they change), beside
    /// any named; `none` for none (connections made on the node itself reach node ports
    /// whatever this says).
    #[arg(
        long = "external-interfaces",
        value_name = "NAME,...",
        value_delimiter = ',',
        default_value = "auto"
    )]
    pub external_interfaces: Vec<String>,

    /// Whether packets from outside are also served by an XDP program in the drivers of the
    /// external interfaces, before the kernel builds a socket buffer: flows that leave by the
    /// interface they came in by (to backends on other nodes, and their replies) are sent
    /// straight back out. disabled: the tc programs alone; native: on every external
    /// interface, an error where the driver has no XDP; best-effort: where the driver runs
    /// XDP, veths aside.
    #[arg(
        long = "nodeport-acceleration",
        value_enum,
        value_name = "MODE",
        default_value_t = crate::service::proxy::Acceleration::Disabled
    )]
    pub nodeport_acceleration: crate::service::proxy::Acceleration,
}

impl ExternalArgs {
    /// What the proxy serves, with the node port ranges given (from these flags or a file).
    pub fn resolve(&self, node_port_cidrs: Vec<Ipv4Cidr>) -> crate::service::proxy::External {
        crate::service::proxy::External {
            interfaces: self
                .external_interfaces
                .iter()
                .filter(|name| !matches!(name.as_str(), "" | "auto" | "none"))
                .cloned()
                .collect(),
            default_routes: self.external_interfaces.iter().any(|name| name == "auto"),
            node_port_cidrs,
            acceleration: self.nodeport_acceleration,
        }
    }
}

/// What `bosun proxy` runs with, the flags and the file resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    /// The kubeconfig to use; `None`: the in-cluster config of the pod's service account.
    pub kubeconfig: Option<PathBuf>,
    /// This node's name: `hostnameOverride` or the hostname, trimmed and lower-cased.
    pub node_name: String,
    /// `clusterCIDR`'s IPv4 ranges (at most one, as kube-proxy allows one per family).
    pub cluster_cidrs: Vec<Ipv4Cidr>,
    /// Where `/healthz` and `/livez` are served; `None`: not served.
    pub healthz: Option<SocketAddr>,
    /// Where `/metrics` is served; `None`: not served.
    pub metrics: Option<SocketAddr>,
    pub bpf_dir: PathBuf,
    /// Whether NetworkPolicy is enforced too.
    pub network_policy: bool,
    pub state_dir: PathBuf,
    /// Remove the datapath and exit.
    pub cleanup: bool,
    /// `configSyncPeriod`: how often the informers' caches are resynced.
    pub config_sync_period: Duration,
    /// `iptables.syncPeriod` (`ipvs.` or `nftables.` with that `mode`), kube-proxy's period of
    /// full resyncs, from which it derives the health timeout.
    pub sync_period: Duration,
    /// Node ports and traffic from outside the node.
    pub external: crate::service::proxy::External,
    /// What was accepted but ignored or changed, one line each, for the caller to log.
    pub notes: Vec<String>,
}

impl ProxyConfig {
    /// How long a queued change may wait for the datapath before `/healthz` fails: kube-proxy
    /// passes 2 × syncPeriod to its health server (`newProxyServer`), 60 s by default.
    pub fn health_timeout(&self) -> Duration {
        self.sync_period * 2
    }
}

/// An IPv4 range, host bits cleared: `10.244.1.0/16` is `10.244.0.0/16`, as Go's
/// `ParseCIDR` gives the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

impl Ipv4Cidr {
    pub fn contains(self, address: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        address.to_bits() & mask == self.network.to_bits()
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// Why `bosun proxy` cannot start with the flags and file it was given. Not worth retrying:
/// the flags or the file must change (the caller exits with its bad-configuration code).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is neither YAML nor JSON, or holds no object.
    #[error("{}: {reason}", path.display())]
    Syntax { path: PathBuf, reason: String },
    /// A field of the file that kube-proxy would refuse; `problem` names the value.
    #[error("{}: {field}: {problem}", path.display())]
    Field {
        path: PathBuf,
        field: String,
        problem: String,
    },
    /// A flag that kube-proxy would refuse; `problem` names the value.
    #[error("--{flag}: {problem}")]
    Flag { flag: &'static str, problem: String },
    #[error("reading the hostname: {0}")]
    Hostname(#[source] std::io::Error),
    /// kube-proxy's `GetHostname`: a name of only white space is no name.
    #[error("empty hostname is invalid: set --hostname-override or hostnameOverride")]
    EmptyHostname,
}

impl ProxyArgs {
    /// The configuration these flags and their `--config` file give (see the module's doc
    /// for which wins), the node name from the machine's hostname unless overridden.
    pub fn resolve(&self) -> Result<ProxyConfig, ConfigError> {
        self.resolve_with(|| std::fs::read_to_string("/proc/sys/kernel/hostname"))
    }

    /// [`resolve`](Self::resolve), the machine's hostname read by `hostname`.
    fn resolve_with(
        &self,
        hostname: impl FnOnce() -> std::io::Result<String>,
    ) -> Result<ProxyConfig, ConfigError> {
        let mut notes = Vec::new();
        let settings = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                let settings = Settings::from_file(path, &text, &mut notes)?;
                self.note_ignored_flags(&mut notes);
                settings
            }
            None => Settings::from_flags(self, &mut notes)?,
        };
        let node_name = node_name(
            self.hostname_override.as_deref(),
            settings.hostname_override.as_deref(),
            hostname,
        )?;
        Ok(ProxyConfig {
            kubeconfig: settings.kubeconfig,
            node_name,
            cluster_cidrs: settings.cluster_cidrs,
            healthz: settings.healthz,
            metrics: settings.metrics,
            bpf_dir: self.bpf_dir.clone(),
            network_policy: self.network_policy,
            state_dir: self.state_dir.clone(),
            cleanup: self.cleanup,
            config_sync_period: settings.config_sync_period,
            sync_period: settings.sync_period,
            external: self.external.resolve(settings.node_port_cidrs),
            notes,
        })
    }

    fn note_ignored_flags(&self, notes: &mut Vec<String>) {
        let flags = [
            (
                "kubeconfig",
                "clientConnection.kubeconfig",
                self.kubeconfig.is_some(),
            ),
            ("cluster-cidr", "clusterCIDR", self.cluster_cidr.is_some()),
            (
                "healthz-bind-address",
                "healthzBindAddress",
                self.healthz_bind_address.is_some(),
            ),
            (
                "metrics-bind-address",
                "metricsBindAddress",
                self.metrics_bind_address.is_some(),
            ),
            (
                "nodeport-addresses",
                "nodePortAddresses",
                !self.external.nodeport_addresses.is_empty(),
            ),
        ];
        for (flag, field, given) in flags {
            if given {
                notes.push(format!(
                    "--{flag} is ignored: with --config, kube-proxy takes {field} from the file \
                     alone (its value there, or kube-proxy's default)"
                ));
            }
        }
    }
}

/// What the flags or the file say, before the node name is settled.
#[derive(Debug)]
struct Settings {
    kubeconfig: Option<PathBuf>,
    hostname_override: Option<String>,
    cluster_cidrs: Vec<Ipv4Cidr>,
    node_port_cidrs: Vec<Ipv4Cidr>,
    healthz: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    config_sync_period: Duration,
    sync_period: Duration,
}

impl Settings {
    /// The flags over kube-proxy's defaults. An empty bind address turns its server off, as
    /// kube-proxy's help says. (kube-proxy's own flag parser drops an empty value and keeps
    /// the default, and only the deprecated `--healthz-port 0` turns a server off; bosun
    /// does what the help promises.)
    fn from_flags(args: &ProxyArgs, notes: &mut Vec<String>) -> Result<Settings, ConfigError> {
        let flag_error = |flag: &'static str| move |problem| ConfigError::Flag { flag, problem };
        let cluster_cidrs = match args.cluster_cidr.as_deref() {
            Some(text) => {
                let (ipv4, ipv6) = cluster_cidrs(text).map_err(flag_error("cluster-cidr"))?;
                note_ipv6_left_out("--cluster-cidr", &ipv6, notes);
                ipv4
            }
            None => Vec::new(),
        };
        let node_port_cidrs = node_port_cidrs(
            &args.external.nodeport_addresses,
            "--nodeport-addresses",
            notes,
        )
        .map_err(flag_error("nodeport-addresses"))?;
        let flag_address = |flag: &'static str, value: Option<&str>, default: &str, port| {
            let text = value.unwrap_or(default);
            if text.is_empty() {
                return Ok(None);
            }
            bind_address(text, port).map(Some).map_err(flag_error(flag))
        };
        Ok(Settings {
            kubeconfig: args
                .kubeconfig
                .clone()
                .filter(|path| !path.as_os_str().is_empty()),
            hostname_override: None,
            cluster_cidrs,
            node_port_cidrs,
            healthz: flag_address(
                "healthz-bind-address",
                args.healthz_bind_address.as_deref(),
                DEFAULT_HEALTHZ_BIND_ADDRESS,
                HEALTHZ_PORT,
            )?,
            metrics: flag_address(
                "metrics-bind-address",
                args.metrics_bind_address.as_deref(),
                DEFAULT_METRICS_BIND_ADDRESS,
                METRICS_PORT,
            )?,
            config_sync_period: DEFAULT_CONFIG_SYNC_PERIOD,
            sync_period: DEFAULT_SYNC_PERIOD,
        })
    }

    /// The file `path` holding `text`, with kube-proxy's defaults for what it leaves out or
    /// leaves empty (`SetDefaults_KubeProxyConfiguration`): an empty `healthzBindAddress` is
    /// the default address, not "off" (kubeadm writes `""` there).
    fn from_file(
        path: &Path,
        text: &str,
        notes: &mut Vec<String>,
    ) -> Result<Settings, ConfigError> {
        let file = decode(path, text, notes)?;
        let field_error = |field: &str| {
            let path = path.to_path_buf();
            let field = field.to_owned();
            move |problem| ConfigError::Field {
                path,
                field,
                problem,
            }
        };
        let named = |field: &str| format!("{}: {field}", path.display());

        let ipv6_bind = match non_empty(&file.bind_address) {
            Some(text) => text
                .parse::<IpAddr>()
                .map_err(|_| invalid(text, "not a valid textual representation of an IP address"))
                .map_err(field_error("bindAddress"))?
                .is_ipv6(),
            None => false,
        };
        // kube-proxy's defaults follow bindAddress' family.
        let (healthz_default, metrics_default) = if ipv6_bind {
            ("[::]:10256", "[::1]:10249")
        } else {
            (DEFAULT_HEALTHZ_BIND_ADDRESS, DEFAULT_METRICS_BIND_ADDRESS)
        };
        let file_address = |field: &str, value: &Option<String>, default: &str, port| {
            bind_address(non_empty(value).unwrap_or(default), port)
                .map(Some)
                .map_err(field_error(field))
        };

        let cluster_cidrs = match non_empty(&file.cluster_cidr) {
            Some(text) => {
                let (ipv4, ipv6) = cluster_cidrs(text).map_err(field_error("clusterCIDR"))?;
                note_ipv6_left_out(&named("clusterCIDR"), &ipv6, notes);
                ipv4
            }
            None => Vec::new(),
        };
        let node_port_cidrs = node_port_cidrs(
            file.node_port_addresses.as_deref().unwrap_or_default(),
            &named("nodePortAddresses"),
            notes,
        )
        .map_err(field_error("nodePortAddresses"))?;

        let mode = non_empty(&file.mode);
        if let Some(mode) = mode {
            let whose = if KUBE_PROXY_MODES.contains(&mode) {
                "one of kube-proxy's own modes"
            } else {
                "not a mode kube-proxy knows (it would refuse it)"
            };
            notes.push(format!(
                "{}: {mode:?} is {whose}; bosun programs Services in eBPF whatever mode says",
                named("mode")
            ));
        }
        let detect_local = file.detect_local.as_ref();
        if non_empty(&file.detect_local_mode).is_some()
            || detect_local.is_some_and(|d| {
                non_empty(&d.bridge_interface).is_some()
                    || non_empty(&d.interface_name_prefix).is_some()
            })
        {
            notes.push(format!(
                "{}: detectLocalMode and detectLocal are accepted and ignored: bosun's datapath \
                 does not use them",
                path.display()
            ));
        }

        // kube-proxy reads the sync period of the section its mode names.
        let section_period = match mode {
            Some("ipvs") => file.ipvs.as_ref().and_then(|s| s.sync_period),
            Some("nftables") => file.nftables.as_ref().and_then(|s| s.sync_period),
            _ => file.iptables.as_ref().and_then(|s| s.sync_period),
        };
        Ok(Settings {
            kubeconfig: file
                .client_connection
                .as_ref()
                .and_then(|c| non_empty(&c.kubeconfig))
                .map(PathBuf::from),
            hostname_override: non_empty(&file.hostname_override).map(str::to_owned),
            cluster_cidrs,
            node_port_cidrs,
            healthz: file_address(
                "healthzBindAddress",
                &file.healthz_bind_address,
                healthz_default,
                HEALTHZ_PORT,
            )?,
            metrics: file_address(
                "metricsBindAddress",
                &file.metrics_bind_address,
                metrics_default,
                METRICS_PORT,
            )?,
            config_sync_period: or_default(file.config_sync_period, DEFAULT_CONFIG_SYNC_PERIOD),
            sync_period: or_default(section_period, DEFAULT_SYNC_PERIOD),
        })
    }
}

/// kube-proxy's defaulting of a duration: absent or zero is the default.
fn or_default(value: Option<GoDuration>, default: Duration) -> Duration {
    value
        .map(|GoDuration(d)| d)
        .filter(|d| !d.is_zero())
        .unwrap_or(default)
}

/// Reads `text` as a v1alpha1 KubeProxyConfiguration: unknown fields become notes, anything
/// else kube-proxy would not decode is an error naming the field.
fn decode(
    path: &Path,
    text: &str,
    notes: &mut Vec<String>,
) -> Result<KubeProxyConfiguration, ConfigError> {
    let syntax = |reason: String| ConfigError::Syntax {
        path: path.to_path_buf(),
        reason,
    };
    // JSON is YAML, so one parser reads both.
    let value: serde_json::Value = serde_yaml::from_str(text).map_err(|e| syntax(e.to_string()))?;
    if !value.is_object() {
        return Err(syntax(format!("not a {KIND}: the file holds no object")));
    }
    let field_error = |problem: Problem| ConfigError::Field {
        path: path.to_path_buf(),
        field: problem.field,
        problem: problem.message,
    };
    let (file, unknown) = strict::decode::<KubeProxyConfiguration>(&value).map_err(|problems| {
        // The failure comes last, after the unknown fields seen before it.
        match problems.into_iter().last() {
            Some(problem) => field_error(problem),
            None => syntax(format!("not a {KIND}")),
        }
    })?;
    let required = |field: &str, value: &Option<String>, want: &str| match non_empty(value) {
        None => Err(field_error(Problem::new(field, "required value"))),
        Some(found) if found != want => Err(field_error(Problem::new(
            field,
            invalid(found, &format!("must be {want}")),
        ))),
        Some(_) => Ok(()),
    };
    required("kind", &file.kind, KIND)?;
    required("apiVersion", &file.api_version, API_VERSION)?;
    for problem in unknown {
        let shown = value_at(&value, &problem.field)
            .map(|v| format!(" (value {})", shorten(&v.to_string())))
            .unwrap_or_default();
        notes.push(format!(
            "{}: unknown field {:?}{shown} ignored, as kube-proxy ignores it (it logs that \
             strict decoding failed and decodes the v1alpha1 file leniently)",
            path.display(),
            problem.field
        ));
    }
    Ok(file)
}

/// The value at a field path as [`strict`] writes them (`a.b[2].c`).
fn value_at<'v>(value: &'v serde_json::Value, path: &str) -> Option<&'v serde_json::Value> {
    path.split('.').try_fold(value, |value, segment| {
        let (name, indices) = segment.split_once('[').unwrap_or((segment, ""));
        let mut value = value.get(name)?;
        for index in indices.split('[').filter(|i| !i.is_empty()) {
            value = value.get(index.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
        Some(value)
    })
}

/// A value cut to a length that fits a log line.
fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// The node's name as kube-proxy settles it (`processHostnameOverrideFlag`, then
/// `GetHostname`): the flag over the file over the machine's hostname, trimmed and
/// lower-cased; a name of only white space is an error. An empty flag counts as not given.
fn node_name(
    flag: Option<&str>,
    file: Option<&str>,
    hostname: impl FnOnce() -> std::io::Result<String>,
) -> Result<String, ConfigError> {
    if let Some(flag) = flag.filter(|f| !f.is_empty()) {
        let name = flag.trim();
        if name.is_empty() {
            return Err(ConfigError::Flag {
                flag: "hostname-override",
                problem: invalid(flag, "empty hostname-override is invalid"),
            });
        }
        return Ok(name.to_lowercase());
    }
    let name = match file {
        Some(name) => name.to_owned(),
        None => hostname().map_err(ConfigError::Hostname)?,
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(ConfigError::EmptyHostname);
    }
    Ok(name.to_lowercase())
}

/// `IP:port`, `[IPv6]:port`, or an IP alone, which gets `default_port` (kube-proxy's
/// `AppendPortIfNeeded`, then `validateHostPort`). Neither a host name nor a CIDR, and the
/// port is 1–65535. (Go's sloppy IP parser also takes IPv4 octets with leading zeros, which
/// Rust's refuses.)
fn bind_address(text: &str, default_port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let address = text.parse::<SocketAddr>().map_err(|_| {
        invalid(
            text,
            &format!("must be IP:port, or an IP for port {default_port}"),
        )
    })?;
    if address.port() == 0 {
        return Err(invalid(text, "must be a valid port (1-65535)"));
    }
    Ok(address)
}

/// `clusterCIDR` / `--cluster-cidr`: one CIDR, or a dual-stack pair split by a comma (and
/// nothing else: kube-proxy splits on commas alone and takes no spaces). The IPv4 ranges,
/// and the IPv6 ones as written, which bosun leaves out.
fn cluster_cidrs(text: &str) -> Result<(Vec<Ipv4Cidr>, Vec<String>), String> {
    const PAIR: &str = "must be a single CIDR or a dual-stack pair of CIDRs \
                        (e.g. 10.100.0.0/16,fde4:8dba:82e1::/48)";
    let entries: Vec<&str> = text.split(',').collect();
    if entries.len() > 2 {
        return Err(invalid(text, PAIR));
    }
    let mut ipv4 = Vec::new();
    let mut ipv6 = Vec::new();
    for entry in entries {
        let network = parse_cidr(entry).map_err(|why| invalid(entry, &why))?;
        match network.address {
            IpAddr::V4(address) => ipv4.push(Ipv4Cidr {
                network: address,
                prefix_len: network.len,
            }),
            IpAddr::V6(_) => ipv6.push(entry.to_owned()),
        }
    }
    if ipv4.len() > 1 || ipv6.len() > 1 {
        return Err(invalid(text, PAIR));
    }
    Ok((ipv4, ipv6))
}

/// `nodePortAddresses` / `--nodeport-addresses`: CIDRs; the IPv4 ones are kept.
pub fn node_port_cidrs(
    list: &[String],
    place: &str,
    notes: &mut Vec<String>,
) -> Result<Vec<Ipv4Cidr>, String> {
    let mut ipv4 = Vec::new();
    let mut ipv6 = Vec::new();
    for entry in list.iter().filter(|e| !e.is_empty()) {
        let network = parse_cidr(entry).map_err(|why| invalid(entry, &why))?;
        match network.address {
            IpAddr::V4(address) => ipv4.push(Ipv4Cidr {
                network: address,
                prefix_len: network.len,
            }),
            IpAddr::V6(_) => ipv6.push(entry.clone()),
        }
    }
    note_ipv6_left_out(place, &ipv6, notes);
    Ok(ipv4)
}

fn note_ipv6_left_out(place: &str, ipv6: &[String], notes: &mut Vec<String>) {
    for cidr in ipv6 {
        notes.push(format!(
            "{place}: IPv6 range {cidr:?} left out: bosun's datapath is IPv4 only for now"
        ));
    }
}

/// `invalid value "x": why`, the way Kubernetes words a bad field.
fn invalid(value: &str, why: &str) -> String {
    format!("invalid value {value:?}: {why}")
}

/// A string field Go reads as a plain string, where empty means left out.
fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

/// A `metav1.Duration`: a Go duration string (`15m`, `1h30m`, `0s`).
#[derive(Debug, Clone, Copy)]
struct GoDuration(Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        go_duration(&text)
            .map(GoDuration)
            .map_err(|why| serde::de::Error::custom(invalid(&text, &why)))
    }
}

// KubeProxyConfiguration v1alpha1 as kube-proxy knows it (`k8s.io/kube-proxy/config/
// v1alpha1`), every field, so that only fields kube-proxy does not know are reported unknown,
// and each typed as Go decodes it, so that a value kube-proxy would refuse is refused. bosun
// reads a few of them; the others are decoded to be checked and then dropped.

#[allow(
    dead_code,
    reason = "decoded to be checked, as kube-proxy would; bosun reads a few"
)]
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct KubeProxyConfiguration {
    api_version: Option<String>,
    kind: Option<String>,
    feature_gates: Option<BTreeMap<String, bool>>,
    client_connection: Option<ClientConnection>,
    logging: Option<Logging>,
    hostname_override: Option<String>,
    bind_address: Option<String>,
    healthz_bind_address: Option<String>,
    metrics_bind_address: Option<String>,
    bind_address_hard_fail: Option<bool>,
    enable_profiling: Option<bool>,
    show_hidden_metrics_for_version: Option<String>,
    mode: Option<String>,
    iptables: Option<IpTables>,
    ipvs: Option<Ipvs>,
    nftables: Option<NfTables>,
    winkernel: Option<Winkernel>,
    detect_local_mode: Option<String>,
    detect_local: Option<DetectLocal>,
    #[serde(rename = "clusterCIDR")]
    cluster_cidr: Option<String>,
    node_port_addresses: Option<Vec<String>>,
    oom_score_adj: Option<i32>,
    conntrack: Option<Conntrack>,
    config_sync_period: Option<GoDuration>,
    port_range: Option<String>,
    windows_run_as_service: Option<bool>,
}

#[allow(
    dead_code,
    reason = "decoded to be checked, as kube-proxy would; bosun reads a few"
)]
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClientConnection {
    kubeconfig: Option<String>,
    accept_content_types: Option<String>,
    content_type: Option<String>,
    qps: Option<f32>,
    burst: Option<i32>,
}

#[allow(dead_code, reason = "decoded to be checked, as kube-proxy would")]
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Logging {
    format: Option<String>,
    /// A duration string or a number of nanoseconds.
    flush_frequency: Option<serde_json::Value>,
    verbosity: Option<u32>,
    vmodule: Option<Vec<VModule>>,
    /// Per-format options, which bosun does not check.
    options: Option<serde_json::Value>,
}

#[allow(dead_code, reason = "decoded to be checked, as kube-proxy would")]
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VModule {
    file_pattern: Option<String>,
    verbosity: Option<u32>,
}

#[allow(
    dead_code,
    reason = "decoded to be checked, as kube-proxy would; bosun reads a few"
)]
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IpTables {
    masquerade_bit: Option<i32>,
    masquerade_all: Option<bool>,
    localhost_node_ports: Option<bool>,
    #[serde(rename = "snatNodeInternalIP")]
    snat_node_internal_ip: Option<bool>,
    sync_period: Option<GoDuration>,
    min_sync_period: Option<GoDuration>,
}

#[allow(
    dead_code,
    reason = "decoded to be checked, as kube-proxy would; bosun reads a few"
)]
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ipvs {
    sync_period: Option<GoDuration>,
    min_sync_period: Option<GoDuration>,
    scheduler: Option<String>,
    #[serde(rename = "excludeCIDRs")]
    exclude_cidrs: Option<Vec<String>>,
    #[serde(rename = "strictARP")]
    strict_arp: Option<bool>,
    tcp_timeout: Option<GoDuration>,
    tcp_fin_timeout: Option<GoDuration>,
    udp_timeout: Option<GoDuration>,
}

#[allow(
    dead_code,
    reason = "decoded to be checked, as kube-proxy would; bosun reads a few"
)]
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NfTables {
    masquerade_bit: Option<i32>,
    masquerade_all: Option<bool>,
    sync_period: Option<GoDuration>,
    min_sync_period: Option<GoDuration>,
}

#[allow(dead_code, reason = "decoded to be checked, as kube-proxy would")]
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Winkernel {
    network_name: Option<String>,
    source_vip: Option<String>,
    #[serde(rename = "enableDSR")]
    enable_dsr: Option<bool>,
    root_hns_endpoint_name: Option<String>,
    forward_health_check_vip: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DetectLocal {
    bridge_interface: Option<String>,
    interface_name_prefix: Option<String>,
}

#[allow(dead_code, reason = "decoded to be checked, as kube-proxy would")]
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Conntrack {
    max_per_core: Option<i32>,
    min: Option<i32>,
    tcp_established_timeout: Option<GoDuration>,
    tcp_close_wait_timeout: Option<GoDuration>,
    tcp_be_liberal: Option<bool>,
    udp_timeout: Option<GoDuration>,
    udp_stream_timeout: Option<GoDuration>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Command {
        #[command(flatten)]
        proxy: ProxyArgs,
    }

    fn args(flags: &[&str]) -> ProxyArgs {
        let argv = std::iter::once("bosun-proxy").chain(flags.iter().copied());
        match Command::try_parse_from(argv) {
            Ok(command) => command.proxy,
            Err(e) => panic!("flags {flags:?}: {e}"),
        }
    }

    fn resolve(args: &ProxyArgs) -> Result<ProxyConfig, ConfigError> {
        args.resolve_with(|| Ok("Node-1.Example\n".to_owned()))
    }

    /// A config file in a temporary directory, which lives as long as the returned guard.
    fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("kube-proxy.yaml");
        std::fs::write(&path, text).expect("the config file is written");
        (dir, path)
    }

    fn with_file(path: &Path, flags: &[&str]) -> ProxyArgs {
        let mut flags: Vec<&str> = flags.to_vec();
        let config = format!("--config={}", path.display());
        flags.push(&config);
        args(&flags)
    }

    const HEADER: &str =
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";

    #[test]
    fn defaults_are_kube_proxys() {
        let config = resolve(&args(&[])).expect("the defaults resolve");
        assert_eq!(
            config,
            ProxyConfig {
                kubeconfig: None,
                node_name: "node-1.example".into(),
                cluster_cidrs: vec![],
                healthz: Some("0.0.0.0:10256".parse().expect("an address")),
                metrics: Some("127.0.0.1:10249".parse().expect("an address")),
                bpf_dir: PathBuf::from("/sys/fs/bpf/bosun"),
                network_policy: true,
                state_dir: PathBuf::from(DEFAULT_STATE_DIR),
                cleanup: false,
                config_sync_period: Duration::from_secs(900),
                sync_period: Duration::from_secs(30),
                // Node ports from outside on the default routes' interfaces.
                external: crate::service::proxy::External {
                    default_routes: true,
                    ..crate::service::proxy::External::default()
                },
                notes: vec![],
            }
        );
        assert_eq!(config.health_timeout(), Duration::from_secs(60));
    }

    #[test]
    fn external_interfaces_default_to_the_default_routes_and_none_turns_them_off() {
        let external = |flags: &[&str]| resolve(&args(flags)).expect("the flags resolve").external;
        let auto = external(&[]);
        assert!(
            auto.default_routes && auto.interfaces.is_empty(),
            "{auto:?}"
        );
        let none = external(&["--external-interfaces=none"]);
        assert!(
            !none.default_routes && none.interfaces.is_empty(),
            "{none:?}"
        );
        let both = external(&["--external-interfaces=auto,eth1"]);
        assert!(both.default_routes, "{both:?}");
        assert_eq!(both.interfaces, ["eth1"]);
        // Repeated, the lists add up: a harness's `none` and a test's own names.
        let added = external(&["--external-interfaces=none", "--external-interfaces=eth2"]);
        assert!(!added.default_routes, "{added:?}");
        assert_eq!(added.interfaces, ["eth2"]);
    }

    #[test]
    fn node_port_addresses_come_from_the_flag_or_the_file() {
        let config = resolve(&args(&[
            "--nodeport-addresses=192.0.2.0/24,2001:db8::/64",
            "--external-interfaces=eth0,eth1",
            "--nodeport-acceleration=best-effort",
        ]))
        .expect("the flags resolve");
        assert_eq!(config.external.interfaces, ["eth0", "eth1"]);
        assert!(!config.external.default_routes, "named, and only those");
        assert_eq!(
            config.external.acceleration,
            crate::service::proxy::Acceleration::BestEffort
        );
        let cidrs: Vec<String> = config
            .external
            .node_port_cidrs
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(cidrs, ["192.0.2.0/24"]);
        assert!(
            config.notes.iter().any(|n| n.contains("2001:db8::/64")),
            "{:?}",
            config.notes
        );
        let error =
            resolve(&args(&["--nodeport-addresses=192.0.2.300/24"])).expect_err("not a CIDR");
        assert!(error.to_string().contains("nodeport-addresses"), "{error}");
    }

    #[test]
    fn flags_alone_set_the_configuration() {
        let config = resolve(&args(&[
            "--kubeconfig=/etc/kubernetes/proxy.conf",
            "--hostname-override=worker-7",
            "--cluster-cidr=10.244.0.0/16,fd00:10:244::/56",
            "--healthz-bind-address=10.0.0.5",
            "--metrics-bind-address=[::1]:9999",
            "--bpf-dir=/sys/fs/bpf/other",
            "--cleanup",
        ]))
        .expect("the flags resolve");
        assert_eq!(
            config.kubeconfig,
            Some(PathBuf::from("/etc/kubernetes/proxy.conf"))
        );
        assert_eq!(config.node_name, "worker-7");
        assert_eq!(
            config.cluster_cidrs,
            [Ipv4Cidr {
                network: Ipv4Addr::new(10, 244, 0, 0),
                prefix_len: 16
            }]
        );
        // An IP alone gets kube-proxy's port.
        assert_eq!(
            config.healthz,
            Some("10.0.0.5:10256".parse().expect("an address"))
        );
        assert_eq!(
            config.metrics,
            Some("[::1]:9999".parse().expect("an address"))
        );
        assert_eq!(config.bpf_dir, PathBuf::from("/sys/fs/bpf/other"));
        assert!(config.cleanup);
        assert_eq!(
            config.notes,
            [
                "--cluster-cidr: IPv6 range \"fd00:10:244::/56\" left out: bosun's datapath is \
              IPv4 only for now"
            ]
        );
    }

    #[test]
    fn an_empty_bind_address_flag_turns_its_server_off() {
        let config = resolve(&args(&[
            "--healthz-bind-address=",
            "--metrics-bind-address=",
        ]))
        .expect("the flags resolve");
        assert_eq!((config.healthz, config.metrics), (None, None));
    }

    #[test]
    fn the_file_replaces_the_flags_but_not_hostname_override() {
        let (_dir, path) = config_file(&format!(
            "{HEADER}clientConnection:\n  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf\n\
             hostnameOverride: from-file\nclusterCIDR: 10.96.0.0/12\n\
             metricsBindAddress: 0.0.0.0:10249\nconfigSyncPeriod: 1h30m\n\
             iptables:\n  syncPeriod: 10s\n"
        ));
        let config = resolve(&with_file(
            &path,
            &[
                "--kubeconfig=/flag/kubeconfig",
                "--cluster-cidr=10.244.0.0/16",
                "--healthz-bind-address=127.0.0.1:1",
                "--hostname-override=From-Flag ",
                "--bpf-dir=/sys/fs/bpf/flag",
            ],
        ))
        .expect("the file resolves");
        assert_eq!(
            config.kubeconfig,
            Some(PathBuf::from("/var/lib/kube-proxy/kubeconfig.conf"))
        );
        assert_eq!(config.node_name, "from-flag");
        assert_eq!(config.cluster_cidrs[0].to_string(), "10.96.0.0/12");
        // The file does not set healthzBindAddress: kube-proxy's default, not the flag.
        assert_eq!(
            config.healthz,
            Some("0.0.0.0:10256".parse().expect("an address"))
        );
        assert_eq!(
            config.metrics,
            Some("0.0.0.0:10249".parse().expect("an address"))
        );
        assert_eq!(config.bpf_dir, PathBuf::from("/sys/fs/bpf/flag"));
        assert_eq!(config.config_sync_period, Duration::from_secs(5400));
        assert_eq!(config.health_timeout(), Duration::from_secs(20));
        let ignored: Vec<&str> = config
            .notes
            .iter()
            .filter_map(|note| note.split_once(" is ignored").map(|(flag, _)| flag))
            .collect();
        assert_eq!(
            ignored,
            ["--kubeconfig", "--cluster-cidr", "--healthz-bind-address"]
        );
    }

    #[test]
    fn the_files_hostname_override_wins_over_the_hostname() {
        let (_dir, path) = config_file(&format!("{HEADER}hostnameOverride: \" Worker-9 \"\n"));
        let config = resolve(&with_file(&path, &[])).expect("the file resolves");
        assert_eq!(config.node_name, "worker-9");
    }

    #[test]
    fn kubeadms_empty_fields_are_kube_proxys_defaults() {
        // As `kubeadm init` writes the kube-proxy ConfigMap.
        let (_dir, path) = config_file(&format!(
            "{HEADER}bindAddress: 0.0.0.0\nclientConnection:\n  acceptContentTypes: \"\"\n  \
             burst: 0\n  contentType: \"\"\n  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf\n  \
             qps: 0\nclusterCIDR: \"\"\nconfigSyncPeriod: 0s\nconntrack:\n  maxPerCore: null\n  \
             min: null\n  tcpCloseWaitTimeout: null\n  tcpEstablishedTimeout: null\n\
             detectLocalMode: \"\"\nenableProfiling: false\nhealthzBindAddress: \"\"\n\
             hostnameOverride: \"\"\niptables:\n  masqueradeAll: false\n  masqueradeBit: null\n  \
             minSyncPeriod: 0s\n  syncPeriod: 0s\nipvs:\n  excludeCIDRs: null\n  \
             scheduler: \"\"\n  strictARP: false\n  syncPeriod: 0s\nlogging:\n  \
             flushFrequency: 0\n  options:\n    json:\n      infoBufferSize: \"0\"\n  \
             verbosity: 0\nmetricsBindAddress: \"\"\nmode: \"\"\nnodePortAddresses: null\n\
             oomScoreAdj: null\nportRange: \"\"\nshowHiddenMetricsForVersion: \"\"\n\
             winkernel:\n  enableDSR: false\n  networkName: \"\"\n  sourceVip: \"\"\n"
        ));
        let config = resolve(&with_file(&path, &[])).expect("kubeadm's file resolves");
        assert_eq!(config.node_name, "node-1.example");
        assert_eq!(
            config.healthz,
            Some("0.0.0.0:10256".parse().expect("an address"))
        );
        assert_eq!(
            config.metrics,
            Some("127.0.0.1:10249".parse().expect("an address"))
        );
        assert_eq!(config.config_sync_period, Duration::from_secs(900));
        assert_eq!(config.sync_period, Duration::from_secs(30));
        assert_eq!(config.notes, Vec::<String>::new());
    }

    #[test]
    fn json_files_are_read_too() {
        let (_dir, path) = config_file(
            "{\n\t\"apiVersion\": \"kubeproxy.config.k8s.io/v1alpha1\",\n\t\"kind\": \
             \"KubeProxyConfiguration\",\n\t\"healthzBindAddress\": \"127.0.0.1:8080\"\n}\n",
        );
        let config = resolve(&with_file(&path, &[])).expect("the JSON file resolves");
        assert_eq!(
            config.healthz,
            Some("127.0.0.1:8080".parse().expect("an address"))
        );
    }

    #[test]
    fn unknown_fields_are_noted_with_their_value_as_kube_proxy_warns() {
        let (_dir, path) = config_file(&format!(
            "{HEADER}resourceContainer: /kube-proxy\nconntrack:\n  max: 0\n"
        ));
        let config = resolve(&with_file(&path, &[])).expect("unknown fields do not fail");
        let file = path.display();
        assert_eq!(
            config.notes,
            [
                format!(
                    "{file}: unknown field \"conntrack.max\" (value 0) ignored, as kube-proxy \
                     ignores it (it logs that strict decoding failed and decodes the v1alpha1 \
                     file leniently)"
                ),
                format!(
                    "{file}: unknown field \"resourceContainer\" (value \"/kube-proxy\") \
                     ignored, as kube-proxy ignores it (it logs that strict decoding failed and \
                     decodes the v1alpha1 file leniently)"
                ),
            ]
        );
    }

    #[test]
    fn values_kube_proxy_cannot_decode_are_errors_naming_file_field_and_value() {
        let cases = [
            (
                "healthzBindAddress: 10.0.0.0/8\n",
                "healthzBindAddress: invalid value \"10.0.0.0/8\": must be IP:port, or an IP \
                 for port 10256",
            ),
            (
                "metricsBindAddress: 127.0.0.1:0\n",
                "metricsBindAddress: invalid value \"127.0.0.1:0\": must be a valid port (1-65535)",
            ),
            (
                "clusterCIDR: 10.244.0.0/33\n",
                "clusterCIDR: invalid value \"10.244.0.0/33\": must be a valid CIDR value, (e.g. \
                 10.9.8.0/24 or 2001:db8::/64)",
            ),
            (
                "clusterCIDR: 10.244.0.0/16,10.245.0.0/16\n",
                "clusterCIDR: invalid value \"10.244.0.0/16,10.245.0.0/16\": must be a single \
                 CIDR or a dual-stack pair of CIDRs (e.g. 10.100.0.0/16,fde4:8dba:82e1::/48)",
            ),
            (
                "configSyncPeriod: 15\n",
                "configSyncPeriod: invalid type: integer `15`, expected a string",
            ),
            (
                "iptables:\n  syncPeriod: 30 s\n",
                "iptables.syncPeriod: invalid value \"30 s\": unknown unit \" s\"",
            ),
            (
                "enableProfiling: \"yes\"\n",
                "enableProfiling: invalid type: string \"yes\", expected a boolean",
            ),
        ];
        for (body, want) in cases {
            let (_dir, path) = config_file(&format!("{HEADER}{body}"));
            let error = resolve(&with_file(&path, &[])).expect_err(body);
            assert_eq!(error.to_string(), format!("{}: {want}", path.display()));
        }
    }

    #[test]
    fn only_kube_proxy_configuration_v1alpha1_is_read() {
        let (_dir, path) = config_file(
            "apiVersion: kubeproxy.config.k8s.io/v1beta1\nkind: KubeProxyConfiguration\n",
        );
        let error = resolve(&with_file(&path, &[])).expect_err("v1beta1 is refused");
        assert_eq!(
            error.to_string(),
            format!(
                "{}: apiVersion: invalid value \"kubeproxy.config.k8s.io/v1beta1\": must be \
                 kubeproxy.config.k8s.io/v1alpha1",
                path.display()
            )
        );
        let (_dir, path) = config_file("apiVersion: kubeproxy.config.k8s.io/v1alpha1\n");
        let error = resolve(&with_file(&path, &[])).expect_err("a file without kind");
        assert_eq!(
            error.to_string(),
            format!("{}: kind: required value", path.display())
        );
        let (_dir, path) = config_file("");
        assert!(matches!(
            resolve(&with_file(&path, &[])),
            Err(ConfigError::Syntax { .. })
        ));
    }

    #[test]
    fn bad_flags_name_the_flag_and_the_value() {
        let error = resolve(&args(&["--healthz-bind-address=localhost:10256"]))
            .expect_err("a host name is refused");
        assert_eq!(
            error.to_string(),
            "--healthz-bind-address: invalid value \"localhost:10256\": must be IP:port, or an \
             IP for port 10256"
        );
        let error =
            resolve(&args(&["--cluster-cidr=10.244.0.0"])).expect_err("an address is no CIDR");
        assert_eq!(
            error.to_string(),
            "--cluster-cidr: invalid value \"10.244.0.0\": must be a valid CIDR value, (e.g. \
             10.9.8.0/24 or 2001:db8::/64)"
        );
        let error = resolve(&args(&["--hostname-override=  "])).expect_err("a blank name");
        assert_eq!(
            error.to_string(),
            "--hostname-override: invalid value \"  \": empty hostname-override is invalid"
        );
    }

    #[test]
    fn node_names_are_trimmed_and_lower_cased() {
        let hostname = |name: &'static str| move || Ok(name.to_owned());
        assert_eq!(
            node_name(None, None, hostname(" Worker-1.EXAMPLE.com\n")).expect("a name"),
            "worker-1.example.com"
        );
        assert_eq!(
            node_name(Some(""), Some("File-Name"), hostname("ignored")).expect("a name"),
            "file-name"
        );
        assert_eq!(
            node_name(Some("Flag"), Some("File-Name"), hostname("ignored")).expect("a name"),
            "flag"
        );
        assert!(matches!(
            node_name(None, None, hostname(" \n")),
            Err(ConfigError::EmptyHostname)
        ));
    }

    #[test]
    fn mode_and_detect_local_are_noted_not_refused() {
        let (_dir, path) = config_file(&format!(
            "{HEADER}mode: ipvs\nipvs:\n  syncPeriod: 45s\ndetectLocalMode: NodeCIDR\n"
        ));
        let config = resolve(&with_file(&path, &[])).expect("any mode resolves");
        let file = path.display();
        assert_eq!(
            config.notes,
            [
                format!(
                    "{file}: mode: \"ipvs\" is one of kube-proxy's own modes; bosun programs \
                     Services in eBPF whatever mode says"
                ),
                format!(
                    "{file}: detectLocalMode and detectLocal are accepted and ignored: bosun's \
                     datapath does not use them"
                ),
            ]
        );
        // kube-proxy reads the period of the section its mode names.
        assert_eq!(config.sync_period, Duration::from_secs(45));
    }

    #[test]
    fn cidrs_contain_their_addresses() {
        let (cidrs, _) = cluster_cidrs("10.244.3.7/16").expect("a CIDR");
        assert_eq!(cidrs[0].to_string(), "10.244.0.0/16");
        assert!(cidrs[0].contains(Ipv4Addr::new(10, 244, 255, 1)));
        assert!(!cidrs[0].contains(Ipv4Addr::new(10, 245, 0, 1)));
        let (everything, _) = cluster_cidrs("0.0.0.0/0").expect("a CIDR");
        assert!(everything[0].contains(Ipv4Addr::new(192, 0, 2, 1)));
    }
}
