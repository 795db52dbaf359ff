//! Where a test node keeps its files, and the containerd and CNI configuration that confines
//! it to them. Rendering is pure so that it can be checked without starting anything.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::images::PAUSE_IMAGE;

/// Longest path a unix socket address can hold (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Paths inside a node's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeLayout {
    pub dir: PathBuf,
}

impl NodeLayout {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("containerd.toml")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }
    /// containerd serves ttrpc (for shims) here; it must fit a socket address too.
    pub fn ttrpc_socket(&self) -> PathBuf {
        self.dir.join("containerd.sock.ttrpc")
    }
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    pub fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }
    pub fn opt(&self) -> PathBuf {
        self.dir.join("opt")
    }
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni/net.d")
    }
    pub fn cni_conflist(&self) -> PathBuf {
        self.cni_conf_dir().join("10-bosun-test.conflist")
    }
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.join("cni/ipam")
    }
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
    pub fn containerd_log(&self) -> PathBuf {
        self.logs().join("containerd.log")
    }
    /// Where shims' task bundles live; each holds the shim's socket address.
    pub fn task_bundles(&self) -> PathBuf {
        self.state().join("io.containerd.runtime.v2.task")
    }

    /// The directory must be absolute (it is written into configuration read by other
    /// processes) and short enough for its sockets.
    pub fn check(&self) -> Result<(), String> {
        if !self.dir.is_absolute() {
            return Err(format!(
                "node directory {} is not absolute",
                self.dir.display()
            ));
        }
        let longest = self.ttrpc_socket();
        if longest.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(format!(
                "node directory {} is too long: {} exceeds {MAX_SOCKET_PATH} bytes",
                self.dir.display(),
                longest.display()
            ));
        }
        if self.dir.to_str().is_none() {
            return Err(format!(
                "node directory {} is not UTF-8",
                self.dir.display()
            ));
        }
        Ok(())
    }
}

/// What distinguishes one node's network from another's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NetworkPlan {
    pub network: String,
    pub bridge: String,
    pub subnet: String,
}

impl NetworkPlan {
    pub fn for_slot(slot: u16) -> Self {
        Self {
            network: format!("bosun-test-{slot}"),
            bridge: format!("bsn{slot}"),
            subnet: format!("10.244.{slot}.0/24"),
        }
    }
}

/// Quotes `value` as a TOML basic string.
fn toml_str(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn path_str(path: &Path) -> String {
    toml_str(&path.to_string_lossy())
}

/// Plugins a test node never uses; leaving them out keeps startup quick and quiet. (The v1
/// runtime cannot go: containerd 1.6's task service, and so CRI, fail to load without it.)
const DISABLED_PLUGINS: &[&str] = &[
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
];

/// The containerd configuration (version 2) of a node: everything under its own directory,
/// CRI with the locally built pause image, and settings this machine needs (see
/// `restrict_oom_score_adj`: root here cannot lower oom_score_adj).
/// With `systemd_cgroup`, runc puts containers into systemd scopes below the pods' slices
/// (containerd's `SystemdCgroup`, kubeadm's default), for a node whose pods' cgroups bosun
/// names with the systemd driver.
pub(crate) fn containerd_config(layout: &NodeLayout, systemd_cgroup: bool) -> String {
    let disabled: Vec<String> = DISABLED_PLUGINS.iter().map(|p| toml_str(p)).collect();
    let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
    format!(
        r#"version = 2
root = {root}
state = {state}
oom_score = 0
disabled_plugins = [{disabled}]

[grpc]
  address = {socket}

[ttrpc]
  address = {ttrpc}

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[{cri}]
  sandbox_image = {sandbox_image}
  disable_apparmor = true
  restrict_oom_score_adj = true
  tolerate_missing_hugetlb_controller = true
  disable_hugetlb_controller = true
  systemd_cgroup = false
  enable_selinux = false
  # Network namespaces are bind-mounted under the node's state directory, not the host's
  # /var/run/netns, so that a node's leftovers are found under its own directory.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = {systemd_cgroup}
  Root = {runc_root}

[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = {cni_conf_dir}
  max_conf_num = 1
"#,
        systemd_cgroup = systemd_cgroup,
        root = path_str(&layout.root()),
        state = path_str(&layout.state()),
        disabled = disabled.join(", "),
        socket = path_str(&layout.socket()),
        ttrpc = path_str(&layout.ttrpc_socket()),
        opt = path_str(&layout.opt()),
        sandbox_image = toml_str(PAUSE_IMAGE),
        runc_root = path_str(&layout.runc_root()),
        cni_conf_dir = path_str(&layout.cni_conf_dir()),
    )
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfList<'a> {
    cni_version: &'a str,
    name: &'a str,
    plugins: (BridgeConf<'a>, PortMapConf),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BridgeConf<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    bridge: &'a str,
    is_gateway: bool,
    ip_masq: bool,
    hairpin_mode: bool,
    ipam: IpamConf<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IpamConf<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    ranges: [[Range<'a>; 1]; 1],
    routes: [Route<'a>; 1],
    data_dir: String,
}

#[derive(Serialize)]
struct Range<'a> {
    subnet: &'a str,
}

#[derive(Serialize)]
struct Route<'a> {
    dst: &'a str,
}

#[derive(Serialize)]
struct PortMapConf {
    #[serde(rename = "type")]
    kind: &'static str,
    capabilities: PortMapCapabilities,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PortMapCapabilities {
    port_mappings: bool,
}

/// The CNI network of a node: a bridge of its own with host-local addresses from its own
/// subnet (state in its own directory), masquerading, and hostPorts through portmap.
pub(crate) fn cni_conflist(layout: &NodeLayout, plan: &NetworkPlan) -> String {
    let conf = ConfList {
        cni_version: "0.4.0",
        name: &plan.network,
        plugins: (
            BridgeConf {
                kind: "bridge",
                bridge: &plan.bridge,
                is_gateway: true,
                ip_masq: true,
                hairpin_mode: true,
                ipam: IpamConf {
                    kind: "host-local",
                    ranges: [[Range {
                        subnet: &plan.subnet,
                    }]],
                    routes: [Route { dst: "0.0.0.0/0" }],
                    data_dir: layout.ipam_dir().to_string_lossy().into_owned(),
                },
            },
            PortMapConf {
                kind: "portmap",
                capabilities: PortMapCapabilities {
                    port_mappings: true,
                },
            },
        ),
    };
    // Serializing these plain structs cannot fail; fall back to an empty list rather than
    // panic, which containerd then reports as "no network config found".
    serde_json::to_string_pretty(&conf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_str(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(toml_str("tab\there"), r#""tab\u0009here""#);
    }

    #[test]
    fn containerd_config_keeps_everything_under_the_node_dir() {
        let layout = NodeLayout::new(Path::new("/run/bosun-tests/x-3"));
        let config = containerd_config(&layout, false);
        for line in [
            r#"root = "/run/bosun-tests/x-3/root""#,
            r#"state = "/run/bosun-tests/x-3/state""#,
            r#"address = "/run/bosun-tests/x-3/containerd.sock""#,
            r#"sandbox_image = "localhost/bosun/pause:1""#,
            "restrict_oom_score_adj = true",
            "SystemdCgroup = false",
            r#"conf_dir = "/run/bosun-tests/x-3/cni/net.d""#,
            r#"stream_server_address = "127.0.0.1""#,
            r#"stream_server_port = "0""#,
        ] {
            assert!(
                config.lines().any(|l| l.trim() == line),
                "missing {line:?} in\n{config}"
            );
        }
    }

    #[test]
    fn conflist_names_the_slots_bridge_subnet_and_ipam_dir() {
        let layout = NodeLayout::new(Path::new("/run/bosun-tests/x-7"));
        let plan = NetworkPlan::for_slot(7);
        let conf: serde_json::Value = serde_json::from_str(&cni_conflist(&layout, &plan)).unwrap();
        assert_eq!(conf["name"], "bosun-test-7");
        assert_eq!(conf["plugins"][0]["type"], "bridge");
        assert_eq!(conf["plugins"][0]["bridge"], "bsn7");
        assert_eq!(
            conf["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.7.0/24"
        );
        assert_eq!(
            conf["plugins"][0]["ipam"]["dataDir"],
            "/run/bosun-tests/x-7/cni/ipam"
        );
        assert_eq!(conf["plugins"][1]["type"], "portmap");
        assert_eq!(conf["plugins"][1]["capabilities"]["portMappings"], true);
    }

    #[test]
    fn bridge_names_fit_the_kernel_limit_for_every_slot() {
        let plan = NetworkPlan::for_slot(super::super::slot::MAX_SLOT);
        assert!(plan.bridge.len() <= 15);
    }

    #[test]
    fn a_too_long_node_dir_is_refused() {
        let long = format!("/run/{}", "d".repeat(90));
        assert!(NodeLayout::new(Path::new(&long)).check().is_err());
        assert!(NodeLayout::new(Path::new("relative")).check().is_err());
        assert!(NodeLayout::new(Path::new("/run/bosun-tests/a-1"))
            .check()
            .is_ok());
    }
}
