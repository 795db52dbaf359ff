//! A container's CRI mounts (kubelet's `kubelet_pods.go` `makeMounts` and
//! `kuberuntime_container.go` `makeMounts`): its `volumeMounts` in order, then `/etc/hosts`,
//! then the termination-log file.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use bosun_cri::api;
use k8s_openapi::api::core::v1::{Container, Pod, VolumeMount};

use super::etc_hosts::{self, ETC_HOSTS_PATH};
use super::layout::{at, check_sub_path};
use super::termination::{self, DEFAULT_TERMINATION_MESSAGE_PATH};
use super::{PodVolumes, VolumeError};
use crate::pod::spec::{expand, RuntimeFacts};

/// The CRI mounts of `container`, to put in `ContainerConfig.mounts`. Call it each time the
/// container is about to be created, after [`super::prepare`] returned `volumes` for this
/// version of the pod.
///
/// - `facts`: the sandbox's IPs; `/etc/hosts` is mounted only once the pod has one
///   (`pod_ips`, else `pod_ip`; a host-network pod always counts as having the node's), and
///   only if no `volumeMount` is at `/etc/hosts`.
/// - `envs`: the container's environment as [`crate::pod::spec::container_config`] computed
///   it (`ContainerConfig.envs`), for `$(VAR)` in `subPathExpr`.
///
/// Each `volumeMount` becomes a bind mount of its volume's host path (or a `subPath` in it,
/// created as a directory with the volume's mode if missing, and refused if it leads out of
/// the volume through a link); read-only if the mount says so or the volume is a configMap,
/// secret, downwardAPI or projected one; with its `mountPropagation` (`Bidirectional` only
/// for privileged containers). It also (re)writes `<pod>/etc-hosts` and creates a fresh
/// termination-log file, as kubelet does at this point.
///
/// ```no_run
/// # use std::collections::BTreeMap;
/// # use bosun::pod::spec::{container_config, ContainerKind, NodeContext, RuntimeFacts};
/// # use bosun::pod::volume::{self, HostMounter};
/// # fn run(pod: &k8s_openapi::api::core::v1::Pod, ctx: &NodeContext,
/// #        objects: &bosun::store::Objects,
/// #        facts: &RuntimeFacts) -> Result<(), Box<dyn std::error::Error>> {
/// let volumes = volume::prepare(pod, ctx, objects, &HostMounter)?;
/// let spec = pod.spec.as_ref().ok_or("no spec")?;
/// for container in &spec.containers {
///     let mut config = container_config(pod, container, ContainerKind::Regular, ctx, facts)?;
///     config.mounts = volume::container_mounts(pod, container, &volumes, facts, &config.envs)?;
///     // CreateContainer(sandbox, config, ...)
/// }
/// # Ok(()) }
/// ```
pub fn container_mounts(
    pod: &Pod,
    container: &Container,
    volumes: &PodVolumes,
    facts: &RuntimeFacts,
    envs: &[api::KeyValue],
) -> Result<Vec<api::Mount>, VolumeError> {
    let mut mounts = Vec::new();
    let mut mount_etc_hosts = true;
    for (index, volume_mount) in container.volume_mounts.iter().flatten().enumerate() {
        if volume_mount.mount_path == ETC_HOSTS_PATH {
            mount_etc_hosts = false;
        }
        let at_mount = MountAt {
            container: &container.name,
            index,
        };
        mounts.push(volume_mount_to_cri(
            volume_mount,
            container,
            volumes,
            envs,
            &at_mount,
        )?);
    }

    let pod_ips = match (facts.pod_ips.is_empty(), facts.pod_ip.is_empty()) {
        (false, _) => facts.pod_ips.clone(),
        (true, false) => vec![facts.pod_ip.clone()],
        (true, true) => Vec::new(),
    };
    // kubelet needs a pod IP first; a host-network pod always has one there (the node's),
    // while the runtime may report none for its sandbox.
    let host_network = matches!(volumes.hosts, etc_hosts::HostsSource::Node { .. });
    if mount_etc_hosts && (host_network || !pod_ips.is_empty()) {
        let aliases = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_aliases.as_deref())
            .unwrap_or_default();
        let hosts = etc_hosts::ensure(volumes.pod_dir(), &volumes.hosts, &pod_ips, aliases)
            .map_err(|failure| failure.into_error("etc-hosts"))?;
        mounts.push(api::Mount {
            container_path: ETC_HOSTS_PATH.to_owned(),
            host_path: hosts.to_string_lossy().into_owned(),
            ..Default::default()
        });
    }

    // The API server defaults the path; an explicitly empty one means no file.
    let message_path = container
        .termination_message_path
        .as_deref()
        .unwrap_or(DEFAULT_TERMINATION_MESSAGE_PATH);
    if !message_path.is_empty() {
        let file = termination::create_file(volumes.pod_dir(), &container.name).map_err(|f| {
            f.into_error(format!(
                "termination-log file of container {:?}",
                container.name
            ))
        })?;
        mounts.push(api::Mount {
            container_path: absolute(message_path),
            host_path: file.to_string_lossy().into_owned(),
            ..Default::default()
        });
    }
    Ok(mounts)
}

/// Which `volumeMounts` entry is being translated, for errors.
struct MountAt<'a> {
    container: &'a str,
    index: usize,
}

impl MountAt<'_> {
    fn invalid(&self, field: &'static str, value: &str, reason: impl Into<String>) -> VolumeError {
        VolumeError::InvalidMount {
            container: self.container.to_owned(),
            index: self.index,
            field,
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

fn volume_mount_to_cri(
    volume_mount: &VolumeMount,
    container: &Container,
    volumes: &PodVolumes,
    envs: &[api::KeyValue],
    at_mount: &MountAt<'_>,
) -> Result<api::Mount, VolumeError> {
    if volume_mount.mount_path.is_empty() {
        return Err(at_mount.invalid("mountPath", "", "required value"));
    }
    let volume = volumes
        .get(&volume_mount.name)
        .ok_or_else(|| VolumeError::UndefinedVolume {
            container: at_mount.container.to_owned(),
            index: at_mount.index,
            volume: volume_mount.name.clone(),
        })?;

    let sub_path = volume_mount.sub_path.as_deref().unwrap_or_default();
    let sub_path_expr = volume_mount.sub_path_expr.as_deref().unwrap_or_default();
    let (field, sub_path) = match (sub_path.is_empty(), sub_path_expr.is_empty()) {
        (_, true) => ("subPath", sub_path.to_owned()),
        (true, false) => (
            "subPathExpr",
            expand_sub_path(sub_path_expr, envs, at_mount)?,
        ),
        (false, false) => {
            let reason = "subPath and subPathExpr are mutually exclusive";
            return Err(at_mount.invalid("subPathExpr", sub_path_expr, reason));
        }
    };
    let host_path = if sub_path.is_empty() {
        volume.host_path.clone()
    } else {
        check_sub_path(&sub_path).map_err(|reason| at_mount.invalid(field, &sub_path, reason))?;
        resolve_sub_path(&volume.host_path, &sub_path, field, at_mount)?
    };

    let propagation = match volume_mount.mount_propagation.as_deref() {
        None | Some("None") => api::MountPropagation::PropagationPrivate,
        Some("HostToContainer") => api::MountPropagation::PropagationHostToContainer,
        Some("Bidirectional") => {
            let privileged = container
                .security_context
                .as_ref()
                .and_then(|s| s.privileged)
                .unwrap_or(false);
            if !privileged {
                let reason = "Bidirectional mount propagation is available only to privileged \
                              containers";
                return Err(at_mount.invalid("mountPropagation", "Bidirectional", reason));
            }
            api::MountPropagation::PropagationBidirectional
        }
        Some(other) => {
            let reason = "supported values: \"None\", \"HostToContainer\", \"Bidirectional\"";
            return Err(at_mount.invalid("mountPropagation", other, reason));
        }
    };
    match volume_mount.recursive_read_only.as_deref() {
        // containerd 1.6 cannot make a mount recursively read-only; IfPossible allows that.
        None | Some("Disabled") | Some("IfPossible") => {}
        Some("Enabled") => {
            let reason = "recursive read-only mounts are not supported by the runtime";
            return Err(at_mount.invalid("recursiveReadOnly", "Enabled", reason));
        }
        Some(other) => {
            let reason = "supported values: \"Disabled\", \"IfPossible\", \"Enabled\"";
            return Err(at_mount.invalid("recursiveReadOnly", other, reason));
        }
    }

    Ok(api::Mount {
        container_path: absolute(&volume_mount.mount_path),
        host_path: host_path.to_string_lossy().into_owned(),
        readonly: volume_mount.read_only.unwrap_or(false) || volume.read_only,
        propagation: propagation as i32,
        ..Default::default()
    })
}

/// kubelet makes a relative container path absolute.
fn absolute(container_path: &str) -> String {
    if container_path.starts_with('/') {
        container_path.to_owned()
    } else {
        format!("/{container_path}")
    }
}

/// `subPathExpr` with `$(VAR)` replaced from the container's environment; a variable that is
/// undefined or empty is an error (kubelet's `ExpandContainerVolumeMounts`).
fn expand_sub_path(
    expr: &str,
    envs: &[api::KeyValue],
    at_mount: &MountAt<'_>,
) -> Result<String, VolumeError> {
    let values: HashMap<&str, &str> = envs
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_str()))
        .collect();
    let missing = RefCell::new(BTreeSet::new());
    let expanded = expand(expr, |name| match values.get(name) {
        Some(value) if !value.is_empty() => Some((*value).to_owned()),
        _ => {
            missing.borrow_mut().insert(name.to_owned());
            Some(String::new())
        }
    });
    let missing = missing.into_inner();
    if !missing.is_empty() {
        let names: Vec<String> = missing.into_iter().collect();
        let reason = format!("missing value for {}", names.join(", "));
        return Err(at_mount.invalid("subPathExpr", expr, reason));
    }
    Ok(expanded)
}

/// The host path of `sub_path` inside the volume at `root`, creating missing directories
/// with the mode of the volume's root as kubelet does. Links inside the volume are followed
/// only while they stay in it.
///
/// kubelet goes further and bind-mounts the result under `<pod>/volume-subpaths` through a
/// file descriptor, so that a container cannot swap a directory for a link between this
/// check and the runtime's mount; bosun does not (yet), which leaves that race open to a
/// container that can write into the volume while another container of the pod starts.
fn resolve_sub_path(
    root: &Path,
    sub_path: &str,
    field: &'static str,
    at_mount: &MountAt<'_>,
) -> Result<PathBuf, VolumeError> {
    let what = || {
        format!(
            "subPath of volumeMounts[{}] of container {:?}",
            at_mount.index, at_mount.container
        )
    };
    let root = fs::canonicalize(root)
        .map_err(|e| at("resolving the volume", root)(e).into_error(what()))?;
    let root_metadata =
        fs::metadata(&root).map_err(|e| at("reading", &root)(e).into_error(what()))?;
    let mode = root_metadata.permissions().mode() & 0o7777;
    let mut current = root.clone();
    for component in Path::new(sub_path).components() {
        let Component::Normal(name) = component else {
            continue;
        };
        let next = current.join(name);
        match fs::symlink_metadata(&next) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                let resolved = fs::canonicalize(&next)
                    .map_err(|e| at("resolving", &next)(e).into_error(what()))?;
                if !resolved.starts_with(&root) {
                    let reason = "leads out of the volume through a symbolic link";
                    return Err(at_mount.invalid(field, sub_path, reason));
                }
                current = resolved;
            }
            Ok(_) => current = next,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&next).map_err(|e| at("creating", &next)(e).into_error(what()))?;
                fs::set_permissions(&next, fs::Permissions::from_mode(mode))
                    .map_err(|e| at("setting the mode of", &next)(e).into_error(what()))?;
                current = next;
            }
            Err(error) => return Err(at("reading", &next)(error).into_error(what())),
        }
    }
    Ok(current)
}
