//! Translating a `v1.Pod` into CRI sandbox and container configs, as kubelet does
//! (`kuberuntime_sandbox.go` `generatePodSandboxConfig`, `kuberuntime_container.go`
//! `generateContainerConfig` and their helpers).
//!
//! Translation is a pure function of the pod, what the node is ([`NodeContext`]) and what the
//! runtime has told us ([`RuntimeFacts`]); the only I/O here is [`HostDns::load`], which the
//! caller runs to fill in the node's resolv.conf. A pod that cannot be translated yields a
//! [`SpecError`] naming the field.
//!
//! Behaviour follows kubelet 1.34 with default feature gates on a cgroup v1 node using the
//! cgroupfs driver. Deliberate differences are documented where they are made.

mod dns;
mod env;
mod labels;
mod quantity;
mod resources;
mod security;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use bosun_cri::api;
use k8s_openapi::api::core::v1::{Container, Pod};

use crate::pod::cgroup::CgroupDriver;
use crate::store::ObjectGetter;

pub use dns::{pod_dns_config, pod_hostname, HostDns, ResolvConf, ResolvConfError};
pub use env::{expand, services_pending};
pub use labels::{
    container_hash, CONTAINER_HASH_ANNOTATION, CONTAINER_NAME_LABEL, CONTAINER_PORTS_ANNOTATION,
    DELETION_GRACE_PERIOD_ANNOTATION, POD_NAMESPACE_LABEL, POD_NAME_LABEL, POD_UID_LABEL,
    PRE_STOP_HANDLER_ANNOTATION, RESTART_COUNT_ANNOTATION, TERMINATION_GRACE_PERIOD_ANNOTATION,
    TERMINATION_MESSAGE_PATH_ANNOTATION, TERMINATION_MESSAGE_POLICY_ANNOTATION,
};
pub use quantity::{ParsedQuantity, QuantityError};
pub use resources::{
    milli_cpu_to_quota, milli_cpu_to_shares, pod_cgroup_parent, qos_class, QosClass, CPU_PERIOD_US,
};
pub use security::{verify_run_as_non_root, DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS};

/// What the node is, as far as translating pods goes (the parts of kubelet's configuration
/// and node status that show in CRI configs).
#[derive(Debug, Clone)]
pub struct NodeContext {
    /// The node's name; `spec.nodeName` of pods that do not set it (static pods).
    pub node_name: String,
    /// KubeletConfiguration `clusterDNS`: the servers of ClusterFirst pods.
    pub cluster_dns: Vec<String>,
    /// KubeletConfiguration `clusterDomain`, e.g. `cluster.local`.
    pub cluster_domain: String,
    /// Where pod log directories go, e.g. `/var/log/pods`.
    pub pod_logs_dir: PathBuf,
    /// The cgroup every pod's cgroup goes under: `kubepods` below the configured
    /// `cgroupRoot`, as a path of `cgroup_driver` (`/kubepods`, or `/kubepods.slice`).
    pub cgroup_root: String,
    /// KubeletConfiguration `cgroupDriver`: how pod cgroups are named.
    pub cgroup_driver: CgroupDriver,
    /// The node's IP: `status.hostIP` and `status.hostIPs` in the downward API, and which IP
    /// family comes first in `status.podIPs`.
    pub host_ip: String,
    /// The host's resolver configuration (KubeletConfiguration `resolvConf`), the base of
    /// Default and ClusterFirst DNS. Loaded by the caller with [`HostDns::load`] so that
    /// translation stays pure; load it again to pick up changes (kubelet rereads the file for
    /// every sandbox).
    pub resolv_conf: HostDns,
    /// KubeletConfiguration `podPidsLimit`. It is no part of any CRI config (kubelet writes it
    /// to the pod cgroup's `pids.max` itself); it is here for whoever creates pod cgroups.
    pub pod_pids_limit: Option<i64>,
    /// Capacity and allocatable resources of the node.
    pub node: NodeResources,
    /// KubeletConfiguration `seccompDefault`: RuntimeDefault instead of Unconfined for
    /// containers that do not choose a seccomp profile.
    pub seccomp_default: bool,
    /// Where `Localhost` seccomp profiles live: `<kubelet root>/seccomp`.
    pub seccomp_profile_root: PathBuf,
    /// Where pod directories go (kubelet's `<root-dir>/pods`): `<pods_dir>/<uid>` holds the
    /// pod's volumes, its `/etc/hosts` and its termination-log files.
    pub pods_dir: PathBuf,
}

impl Default for NodeContext {
    /// kubelet's defaults where it has them (`cluster.local`, `/var/log/pods`, `/kubepods`,
    /// seccomp profiles under `/var/lib/kubelet/seccomp`), pod directories under bosun's
    /// default root, `/var/lib/bosun/pods`; the node's name, IP, DNS servers, resolv.conf and
    /// resources are empty and must be filled in.
    fn default() -> Self {
        Self {
            node_name: String::new(),
            cluster_dns: Vec::new(),
            cluster_domain: "cluster.local".into(),
            pod_logs_dir: PathBuf::from("/var/log/pods"),
            cgroup_root: "/kubepods".into(),
            cgroup_driver: CgroupDriver::Cgroupfs,
            host_ip: String::new(),
            resolv_conf: HostDns::default(),
            pod_pids_limit: None,
            node: NodeResources::default(),
            seccomp_default: false,
            seccomp_profile_root: PathBuf::from("/var/lib/kubelet/seccomp"),
            pods_dir: PathBuf::from("/var/lib/bosun/pods"),
        }
    }
}

/// The node's resources, as its status reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeResources {
    /// Memory capacity in bytes: the yardstick of Burstable containers' `oom_score_adj`.
    /// Must be positive.
    pub memory_capacity_bytes: i64,
    /// Allocatable CPU in millicores: the downward API's `limits.cpu` of unlimited containers.
    pub allocatable_cpu_millis: i64,
    /// Allocatable memory in bytes: the downward API's `limits.memory` of unlimited containers.
    pub allocatable_memory_bytes: i64,
    /// Allocatable ephemeral storage in bytes, likewise for `limits.ephemeral-storage`.
    pub allocatable_ephemeral_storage_bytes: i64,
}

/// What the runtime has told us about the pod, for a container about to be created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeFacts {
    /// The sandbox's primary IP (the node's for a host-network pod): `status.podIP` when
    /// `pod_ips` is empty.
    pub pod_ip: String,
    /// All the sandbox's IPs: `status.podIPs`, and `status.podIP` is the first of them in the
    /// node's IP family.
    pub pod_ips: Vec<String>,
    /// How many times this container has been restarted: the CRI attempt, the log file name
    /// and the `restartCount` annotation.
    pub restart_count: u32,
}

/// Which of the pod's lists a container comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContainerKind {
    /// An init container that runs to completion before the next starts.
    Init,
    /// An init container with `restartPolicy: Always`: it keeps running beside the regular
    /// containers.
    Sidecar,
    /// A container of `spec.containers`.
    Regular,
}

impl ContainerKind {
    /// The kind of the pod's container named `name`, if there is one.
    pub fn of(pod: &Pod, name: &str) -> Option<Self> {
        let spec = pod.spec.as_ref()?;
        if spec.containers.iter().any(|c| c.name == name) {
            return Some(Self::Regular);
        }
        let init = spec
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == name)?;
        Some(if init.restart_policy.as_deref() == Some("Always") {
            Self::Sidecar
        } else {
            Self::Init
        })
    }
}

/// A pod that cannot be turned into CRI configuration. Not retryable: the same spec fails the
/// same way until it changes. Each error names the field (`path`) and, where there is one,
/// the offending value.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{path}: required value")]
    Missing { path: String },
    #[error("{path}: invalid quantity {value:?}")]
    InvalidQuantity {
        path: String,
        value: String,
        #[source]
        source: QuantityError,
    },
    #[error("{path}: invalid value {value:?}: {reason}")]
    Invalid {
        path: String,
        value: String,
        reason: String,
    },
    #[error("{path}: {what} not supported")]
    Unsupported { path: String, what: String },
    #[error("{path}: the container must not run as root: {reason}")]
    RunAsNonRoot { path: String, reason: String },
    /// A ConfigMap or Secret the environment refers to does not exist (or lacks the key).
    #[error("{path}: {message}")]
    ObjectNotFound { path: String, message: String },
}

/// A required, non-empty string field.
fn required<'a>(value: Option<&'a str>, path: &str) -> Result<&'a str, SpecError> {
    value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| SpecError::Missing {
            path: path.to_owned(),
        })
}

/// The pod's log directory: `<pod_logs_dir>/<namespace>_<name>_<uid>`.
pub fn pod_log_directory(pod: &Pod, ctx: &NodeContext) -> Result<PathBuf, SpecError> {
    let metadata = &pod.metadata;
    let name = required(metadata.name.as_deref(), "metadata.name")?;
    let namespace = required(metadata.namespace.as_deref(), "metadata.namespace")?;
    let uid = required(metadata.uid.as_deref(), "metadata.uid")?;
    Ok(ctx.pod_logs_dir.join(format!("{namespace}_{name}_{uid}")))
}

/// A container's log file, relative to its pod's log directory: `<name>/<restartCount>.log`.
pub fn container_log_path(container_name: &str, restart_count: u32) -> PathBuf {
    Path::new(container_name).join(format!("{restart_count}.log"))
}

fn path_string(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// The `RunPodSandbox` config for `pod`'s `attempt`-th sandbox (kubelet's
/// `generatePodSandboxConfig`): metadata; hostname (none for host-network pods, whose UTS
/// namespace is the node's); log directory; DNS; labels and annotations; port mappings; and
/// the Linux part: cgroup parent, sysctls and the sandbox security context. Pod overhead and
/// pod-level resources are left unset.
pub fn sandbox_config(
    pod: &Pod,
    ctx: &NodeContext,
    attempt: u32,
) -> Result<api::PodSandboxConfig, SpecError> {
    let metadata = &pod.metadata;
    let name = required(metadata.name.as_deref(), "metadata.name")?;
    let namespace = required(metadata.namespace.as_deref(), "metadata.namespace")?;
    let uid = required(metadata.uid.as_deref(), "metadata.uid")?;
    let spec = pod.spec.as_ref().ok_or_else(|| SpecError::Missing {
        path: "spec".into(),
    })?;
    let host_network = spec.host_network.unwrap_or(false);
    let hostname = if host_network {
        String::new()
    } else {
        pod_hostname(pod, ctx)?
    };
    let sysctls = spec
        .security_context
        .iter()
        .flat_map(|c| c.sysctls.iter().flatten())
        .map(|s| (s.name.clone(), s.value.clone()))
        .collect();
    Ok(api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.to_owned(),
            uid: uid.to_owned(),
            namespace: namespace.to_owned(),
            attempt,
        }),
        hostname,
        log_directory: path_string(&pod_log_directory(pod, ctx)?),
        dns_config: Some(pod_dns_config(pod, ctx)?),
        port_mappings: labels::port_mappings(pod),
        labels: labels::sandbox_labels(pod),
        annotations: labels::sandbox_annotations(pod),
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: resources::cgroup_parent(resources::checked_qos_class(pod)?, uid, ctx),
            security_context: Some(security::sandbox_security_context(pod)?),
            sysctls,
            overhead: None,
            resources: None,
        }),
        windows: None,
    })
}

/// The field path of `container` in `pod`: `spec.containers[1]`, `spec.initContainers[0]`.
fn container_path(pod: &Pod, container: &Container, kind: ContainerKind) -> String {
    let spec = pod.spec.as_ref();
    let (list, position) = match kind {
        ContainerKind::Regular => (
            "spec.containers",
            spec.and_then(|s| s.containers.iter().position(|c| c.name == container.name)),
        ),
        ContainerKind::Init | ContainerKind::Sidecar => (
            "spec.initContainers",
            spec.and_then(|s| {
                s.init_containers
                    .iter()
                    .flatten()
                    .position(|c| c.name == container.name)
            }),
        ),
    };
    match position {
        Some(index) => format!("{list}[{index}]"),
        None => format!("{list}[name={}]", container.name),
    }
}

/// The `CreateContainer` config for `container` of `pod` (kubelet's
/// `generateContainerConfig`): metadata with the restart count as attempt; image; command and
/// args with `$(VAR)` expanded against the container's environment; working directory;
/// environment, downward API included; labels and annotations; the log path; stdin and tty;
/// and the Linux part: resources and security context. Mounts and devices are not set here.
///
/// Two steps of kubelet's that need the pulled image are the caller's: set `image.image` to
/// the image reference the runtime resolved (kubelet passes that, with the name as written in
/// `user_specified_image`), and call [`verify_run_as_non_root`] with the image's user, which
/// this function can check only when `runAsUser` is explicit.
pub fn container_config(
    pod: &Pod,
    container: &Container,
    kind: ContainerKind,
    ctx: &NodeContext,
    facts: &RuntimeFacts,
) -> Result<api::ContainerConfig, SpecError> {
    container_config_with(pod, container, kind, ctx, facts, &NoObjects)
}

/// No ConfigMaps or Secrets: references to them fail unless optional.
struct NoObjects;

impl ObjectGetter for NoObjects {
    fn config_map(
        &self,
        _: &str,
        _: &str,
    ) -> Option<std::sync::Arc<k8s_openapi::api::core::v1::ConfigMap>> {
        None
    }
    fn secret(
        &self,
        _: &str,
        _: &str,
    ) -> Option<std::sync::Arc<k8s_openapi::api::core::v1::Secret>> {
        None
    }
}

/// As [`container_config`], with the ConfigMaps and Secrets the environment refers to
/// (`configMapKeyRef`, `secretKeyRef`, `envFrom`) looked up in `objects`, and the service
/// environment variables of its Services. Wait for [`services_pending`] first.
pub fn container_config_with(
    pod: &Pod,
    container: &Container,
    kind: ContainerKind,
    ctx: &NodeContext,
    facts: &RuntimeFacts,
    objects: &dyn ObjectGetter,
) -> Result<api::ContainerConfig, SpecError> {
    let path = container_path(pod, container, kind);
    required(pod.metadata.uid.as_deref(), "metadata.uid")?;
    let image = required(container.image.as_deref(), &format!("{path}.image"))?;
    resources::reject_pod_level_resources(pod)?;
    let container_resources = resources::ContainerResources::of(container, &path)?;
    let environment = env::make_environment(
        container,
        &env::EnvContext {
            pod,
            ctx,
            facts,
            resources: &container_resources,
            path: &path,
            objects,
        },
    )?;
    let expand_all = |list: &Option<Vec<String>>| -> Vec<String> {
        list.iter()
            .flatten()
            .map(|item| expand(item, |name| environment.get(name)))
            .collect()
    };
    let command = expand_all(&container.command);
    let args = expand_all(&container.args);
    let linux = api::LinuxContainerConfig {
        resources: Some(resources::linux_container_resources(
            pod,
            kind,
            &container_resources,
            ctx,
        )?),
        security_context: Some(security::container_security_context(
            pod, container, &path, ctx,
        )?),
    };
    Ok(api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: container.name.clone(),
            attempt: facts.restart_count,
        }),
        image: Some(api::ImageSpec {
            image: image.to_owned(),
            user_specified_image: image.to_owned(),
            ..Default::default()
        }),
        command,
        args,
        working_dir: container.working_dir.clone().unwrap_or_default(),
        envs: environment
            .into_pairs()
            .into_iter()
            .map(|(key, value)| api::KeyValue { key, value })
            .collect(),
        labels: labels::container_labels(pod, container),
        annotations: labels::container_annotations(pod, container, facts.restart_count),
        log_path: path_string(&container_log_path(&container.name, facts.restart_count)),
        stdin: container.stdin.unwrap_or(false),
        stdin_once: container.stdin_once.unwrap_or(false),
        tty: container.tty.unwrap_or(false),
        linux: Some(linux),
        ..Default::default()
    })
}
