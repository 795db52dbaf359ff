//! Pod volumes as kubelet sets them up (`pkg/volume/{emptydir,hostpath,configmap,secret,
//! downwardapi,projected}`, written through `pkg/volume/util/atomic_writer.go`) and mounts
//! them into containers (`kubelet_pods.go` `makeMounts`), plus the files kubelet manages for
//! every pod: `/etc/hosts` and the termination-log files.
//!
//! A pod's directory, `<pods_dir>/<uid>` ([`NodeContext::pods_dir`]), is laid out as
//! kubelet's:
//!
//! ```text
//! volumes/kubernetes.io~empty-dir/<name>/     emptyDir; a tmpfs mount for medium: Memory
//! volumes/kubernetes.io~configmap/<name>/     configMap, in the atomic writer's layout
//! volumes/kubernetes.io~secret/<name>/        secret, the same on a tmpfs mount
//! volumes/kubernetes.io~downward-api/<name>/  downwardAPI, the same on a tmpfs mount
//! volumes/kubernetes.io~projected/<name>/     projected, the same on a tmpfs mount
//! etc-hosts                                   every container's /etc/hosts
//! containers/<container>/<random id>          one termination-log file per container instance
//! ```
//!
//! hostPath volumes have no directory there: the runtime bind-mounts the host path itself,
//! and bosun never writes to it (except to create it for `DirectoryOrCreate`/`FileOrCreate`)
//! nor deletes it.
//!
//! How the pod worker uses this module:
//!
//! 1. On every sync of a pod that should run, before `RunPodSandbox` and before creating any
//!    container: [`prepare`]. The first call creates everything; later calls are cheap, write
//!    nothing when nothing changed, and swap configMap, secret and projected contents
//!    atomically when their objects changed, which running containers see (except through a
//!    `subPath`, as with kubelet). An error names the volume; retry on the next sync.
//! 2. For each container about to be created: [`container_mounts`] gives
//!    `ContainerConfig.mounts`.
//! 3. When a container has exited: [`termination_message`] gives its
//!    `state.terminated.message`.
//! 4. Once the pod's containers and sandboxes are removed: [`cleanup`]. After a restart of
//!    bosun, [`pod_uids`] lists the pod directories, so that those of pods no longer wanted
//!    can be cleaned up too.
//!
//! Mounting and unmounting tmpfs, and reading the mount table, go through [`Mounter`]:
//! [`HostMounter`] in the daemon, [`FakeMounter`] in tests.
//!
//! An emptyDir on disk is bounded by its `sizeLimit` as kubelet bounds it: the eviction
//! manager (`daemon::eviction`) measures it and evicts the pod past it; a Memory emptyDir is
//! bounded by its tmpfs size.
//!
//! Not done, unlike kubelet: `fsGroup` ownership of volumes, SELinux relabelling, the
//! `volume-subpaths` bind mounts that make `subPath` immune to a link swapped in by another
//! container at the last moment (see `resolve_sub_path`), downwardAPI `resourceFieldRef`,
//! projected `serviceAccountToken` standalone (in a cluster the API server issues them),
//! projected `clusterTrustBundle` and `podCertificate`, and every
//! volume type that needs a cluster or a storage driver (persistentVolumeClaim, nfs, csi,
//! image, …): those fail with [`VolumeError::Unsupported`].

mod atomic_writer;
mod etc_hosts;
mod host_path;
mod layout;
mod mounter;
mod mounts;
mod payload;
mod termination;

#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use self::atomic_writer::Payload;
use self::etc_hosts::HostsSource;
use self::layout::{create_dirs, volume_dir, IoFailure, POD_DIR_MODE};
use self::payload::{KeySource, ObjectKind, Sources, DEFAULT_MODE};
use crate::pod::spec::{pod_hostname, NodeContext, ParsedQuantity, SpecError};
use crate::store::ObjectGetter;

pub use self::etc_hosts::ETC_HOSTS_PATH;
pub(crate) use self::host_path::HOST_PATH_TYPES;
pub(crate) use self::layout::format_mode;
pub use self::layout::{check_item_path, check_sub_path, pod_dir, VolumeKind};
pub use self::mounter::{FakeMounter, HostMounter, MountCall, Mounter};
pub use self::mounts::container_mounts;
pub use self::termination::{
    read_log_tail, termination_message, termination_message_file, DEFAULT_TERMINATION_MESSAGE_PATH,
    FALLBACK_TO_LOGS_ON_ERROR, MAX_LOG_TAIL_BYTES, MAX_LOG_TAIL_LINES,
    MAX_TERMINATION_MESSAGE_BYTES,
};

/// The mode of emptyDir directories, and of the directories other volumes are written in
/// (kubelet wraps those in an emptyDir).
const EMPTY_DIR_MODE: u32 = 0o777;
/// Unmounting stops after this many passes over the mount table (stacked mounts need one
/// pass per layer).
const MAX_UNMOUNT_ROUNDS: usize = 8;

/// Why a pod's volumes could not be prepared, mounted or cleaned up. Each names what it is
/// about: the volume, the container and `volumeMounts` index, the path, the field.
///
/// Errors of the pod's spec (`Invalid`, `Unsupported`, `InvalidMount`, `UndefinedVolume`,
/// `MissingField`, `InvalidUid`, `Spec`) stay until the pod changes. `ObjectNotFound`,
/// `KeyNotFound` go away when the objects change, and
/// `HostPathType` when the node's files do. The others are failures of the node: retry
/// with back-off.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{field}: required value")]
    MissingField { field: &'static str },
    #[error("metadata.uid: invalid value {uid:?}: {reason}")]
    InvalidUid { uid: String, reason: &'static str },
    #[error("volume {volume:?}: {field}: invalid value {value:?}: {reason}")]
    Invalid {
        volume: String,
        field: String,
        value: String,
        reason: String,
    },
    #[error("volume {volume:?}: {field}: {kind} volumes are not supported by bosun")]
    Unsupported {
        volume: String,
        field: String,
        kind: String,
    },
    #[error("volume {volume:?}: hostPath type check failed: {} is not {expected}", path.display())]
    HostPathType {
        volume: String,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("volume {volume:?}: {kind} \"{namespace}/{name}\" not found")]
    ObjectNotFound {
        volume: String,
        kind: &'static str,
        namespace: String,
        name: String,
    },
    /// The object is being fetched from the API server: the pod waits, and is woken when
    /// it arrives.
    #[error("volume {volume:?}: waiting for {kind} \"{namespace}/{name}\"")]
    ObjectPending {
        volume: String,
        kind: &'static str,
        namespace: String,
        name: String,
    },
    /// The API server did not issue a service account token; requested again later.
    #[error("volume {volume:?}: a token of ServiceAccount \"{namespace}/{name}\": {message}")]
    Token {
        volume: String,
        namespace: String,
        name: String,
        message: String,
    },
    #[error("volume {volume:?}: {kind} \"{namespace}/{name}\" has no key {key:?}")]
    KeyNotFound {
        volume: String,
        kind: &'static str,
        namespace: String,
        name: String,
        key: String,
    },
    #[error("volume {volume:?}: mounting a tmpfs on {}: {source}", path.display())]
    Mount {
        volume: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unmounting {}: {source}", path.display())]
    Unmount {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the mounts under {}: {source}", path.display())]
    MountTable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is still mounted after unmounting; the pod directory is kept", path.display())]
    StillMounted { path: PathBuf },
    #[error(
        "container {container:?}: volumeMounts[{index}]: cannot find volume {volume:?} to mount \
         into the container"
    )]
    UndefinedVolume {
        container: String,
        index: usize,
        volume: String,
    },
    #[error(
        "container {container:?}: volumeMounts[{index}].{field}: invalid value {value:?}: {reason}"
    )]
    InvalidMount {
        container: String,
        index: usize,
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("{what}: {action} {}: {source}", path.display())]
    Io {
        what: String,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Spec(#[from] SpecError),
}

impl IoFailure {
    /// The error, saying what it was about (`volume "data"`, `etc-hosts`).
    pub(crate) fn into_error(self, what: impl Into<String>) -> VolumeError {
        VolumeError::Io {
            what: what.into(),
            action: self.action,
            path: self.path,
            source: self.source,
        }
    }
}

/// One volume of a prepared pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedVolume {
    /// Its name in `spec.volumes`.
    pub name: String,
    pub kind: VolumeKind,
    /// What containers bind-mount: its directory in the pod's directory, or the hostPath.
    pub host_path: PathBuf,
    /// Every mount of it is read-only, whatever the `volumeMount` says (configMap, secret,
    /// downwardAPI, projected).
    pub read_only: bool,
    /// bosun mounted a tmpfs on `host_path` (emptyDir `Memory`, secret, downwardAPI,
    /// projected); [`cleanup`] unmounts it.
    pub tmpfs: bool,
}

/// A pod's volumes once [`prepare`]d: what [`container_mounts`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodVolumes {
    pod_dir: PathBuf,
    volumes: BTreeMap<String, PreparedVolume>,
    hosts: HostsSource,
    updated: Vec<String>,
}

impl PodVolumes {
    /// `<pods_dir>/<uid>`, with `pods_dir` resolved to a canonical path.
    pub fn pod_dir(&self) -> &Path {
        &self.pod_dir
    }

    /// The volume named `name` in `spec.volumes`.
    pub fn get(&self, name: &str) -> Option<&PreparedVolume> {
        self.volumes.get(name)
    }

    /// Every volume, by name.
    pub fn iter(&self) -> impl Iterator<Item = &PreparedVolume> {
        self.volumes.values()
    }

    /// The configMap, secret, downwardAPI and projected volumes whose files this call of
    /// [`prepare`] wrote (all of them the first time; on a refresh, those whose data
    /// changed), in `spec.volumes` order. For logging.
    pub fn updated(&self) -> &[String] {
        &self.updated
    }
}

/// Prepares the volumes of `pod` before its containers start, or refreshes them.
///
/// - `ctx`: the node; [`NodeContext::pods_dir`] is where pod directories go,
///   `cluster_domain` goes into `/etc/hosts`, and the allocatable memory bounds tmpfs sizes.
/// - `objects`: the ConfigMaps and Secrets configMap, secret and projected volumes read,
///   looked up in the pod's namespace.
/// - `mounter`: [`HostMounter`] in the daemon.
///
/// Each volume is set up as kubelet does: an emptyDir is a directory of mode 0777, with a
/// tmpfs mounted on it for `medium: Memory` (size: the smallest of `sizeLimit`, the pod's
/// memory limit when every container has one, and the node's allocatable memory; the
/// kernel's default, half the node's memory, when none is known), while the `sizeLimit` of an
/// emptyDir on disk is enforced by eviction, as in kubelet (`daemon::eviction`); a
/// hostPath is checked against its `type`; configMap, secret, downwardAPI and projected
/// volumes are written with the atomic writer, the last three on a tmpfs as kubelet does,
/// since they hold secrets.
///
/// Calling it again is cheap and idempotent: directories and mounts that exist are kept,
/// files are rewritten only when their content or mode changed ([`PodVolumes::updated`]).
/// All volumes are tried; the first error is returned.
///
/// ```no_run
/// # use bosun::pod::spec::NodeContext;
/// # use bosun::pod::volume::{self, HostMounter};
/// # fn sync(pod: &k8s_openapi::api::core::v1::Pod, ctx: &NodeContext,
/// #         objects: &bosun::store::Objects) -> Result<(), volume::VolumeError> {
/// let volumes = volume::prepare(pod, ctx, objects, &HostMounter)?;
/// for name in volumes.updated() {
///     println!("volume {name} updated");
/// }
/// # Ok(()) }
/// ```
pub fn prepare(
    pod: &Pod,
    ctx: &NodeContext,
    objects: &dyn ObjectGetter,
    mounter: &dyn Mounter,
) -> Result<PodVolumes, VolumeError> {
    let uid = pod
        .metadata
        .uid
        .as_deref()
        .filter(|uid| !uid.is_empty())
        .ok_or(VolumeError::MissingField {
            field: "metadata.uid",
        })?;
    let spec = pod
        .spec
        .as_ref()
        .ok_or(VolumeError::MissingField { field: "spec" })?;
    let hosts = if spec.host_network == Some(true) {
        HostsSource::Node {
            file: PathBuf::from(ETC_HOSTS_PATH),
        }
    } else {
        let (hostname, domain) = hostname_and_domain(pod, ctx)?;
        HostsSource::Managed { hostname, domain }
    };
    let pod_dir = create_pod_dir(&ctx.pods_dir, uid)?;

    let mut setup = Setup {
        pod,
        ctx,
        objects,
        mounter,
        pod_dir: &pod_dir,
        mounted: None,
    };
    let mut volumes = BTreeMap::new();
    let mut updated = Vec::new();
    let mut first_error = None;
    for (index, volume) in spec.volumes.iter().flatten().enumerate() {
        match setup.volume(index, volume) {
            Ok((prepared, changed)) => {
                if changed {
                    updated.push(volume.name.clone());
                }
                volumes.insert(volume.name.clone(), prepared);
            }
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    Ok(PodVolumes {
        pod_dir,
        volumes,
        hosts,
        updated,
    })
}

/// The short hostname and the domain of `/etc/hosts` (kubelet's
/// `GeneratePodHostNameAndDomain`).
fn hostname_and_domain(pod: &Pod, ctx: &NodeContext) -> Result<(String, String), VolumeError> {
    let hostname = pod_hostname(pod, ctx)?;
    let spec = pod.spec.as_ref();
    let subdomain = spec
        .and_then(|s| s.subdomain.as_deref())
        .filter(|s| !s.is_empty());
    let Some(subdomain) = subdomain else {
        return Ok((hostname, String::new()));
    };
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let domain = format!("{subdomain}.{namespace}.svc.{}", ctx.cluster_domain);
    // With setHostnameAsFQDN the kernel's hostname is the FQDN; /etc/hosts wants the short one.
    let short = hostname
        .strip_suffix(&format!(".{domain}"))
        .map(str::to_owned)
        .unwrap_or(hostname);
    Ok((short, domain))
}

/// Creates `<pods_dir>/<uid>` (mode 0750) and returns it with `pods_dir` made canonical, so
/// that its paths compare equal to the kernel's mount table.
fn create_pod_dir(pods_dir: &Path, uid: &str) -> Result<PathBuf, VolumeError> {
    pod_dir(pods_dir, uid).map_err(|reason| VolumeError::InvalidUid {
        uid: uid.to_owned(),
        reason,
    })?;
    let what = "pod directory";
    create_dirs(pods_dir, POD_DIR_MODE).map_err(|f| f.into_error(what))?;
    let base = fs::canonicalize(pods_dir)
        .map_err(|e| layout::at("resolving", pods_dir)(e).into_error(what))?;
    let dir = base.join(uid);
    match fs::DirBuilder::new().mode(POD_DIR_MODE).create(&dir) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            let metadata = fs::symlink_metadata(&dir)
                .map_err(|e| layout::at("reading", &dir)(e).into_error(what))?;
            if !metadata.is_dir() {
                let error = io::Error::new(io::ErrorKind::AlreadyExists, "not a directory");
                return Err(layout::at("using", &dir)(error).into_error(what));
            }
        }
        Err(error) => return Err(layout::at("creating", &dir)(error).into_error(what)),
    }
    Ok(dir)
}

/// What setting up one volume needs.
struct Setup<'a> {
    pod: &'a Pod,
    ctx: &'a NodeContext,
    objects: &'a dyn ObjectGetter,
    mounter: &'a dyn Mounter,
    pod_dir: &'a Path,
    /// The mount points under the pod directory, read once when first needed.
    mounted: Option<BTreeSet<PathBuf>>,
}

impl Setup<'_> {
    /// Sets up `spec.volumes[index]`; returns it and whether its files were written.
    fn volume(
        &mut self,
        index: usize,
        volume: &Volume,
    ) -> Result<(PreparedVolume, bool), VolumeError> {
        let field = format!("spec.volumes[{index}]");
        let name = volume.name.as_str();
        if let Err(reason) = pod_dir(Path::new(""), name) {
            return Err(VolumeError::Invalid {
                volume: name.to_owned(),
                field: format!("{field}.name"),
                value: name.to_owned(),
                reason: reason.to_owned(),
            });
        }
        let kind = source_kind(volume, &field)?;
        let field = format!("{field}.{}", kind.field());
        let prepared = |host_path: PathBuf, read_only: bool, tmpfs: bool| PreparedVolume {
            name: name.to_owned(),
            kind,
            host_path,
            read_only,
            tmpfs,
        };
        match kind {
            VolumeKind::EmptyDir => {
                let (dir, memory) = self.empty_dir(volume, &field)?;
                Ok((prepared(dir, false, memory), false))
            }
            VolumeKind::HostPath => {
                let source = volume.host_path.clone().unwrap_or_default();
                host_path::check(name, &field, &source.path, source.type_.as_deref())?;
                Ok((prepared(PathBuf::from(source.path), false, false), false))
            }
            VolumeKind::ConfigMap
            | VolumeKind::Secret
            | VolumeKind::DownwardApi
            | VolumeKind::Projected => {
                let payload = self.payload(kind, volume, &field)?;
                // kubelet writes these into an emptyDir of its own: on disk for a configMap,
                // in memory for the others, which may hold secrets.
                let dir = volume_dir(self.pod_dir, kind, name);
                let tmpfs = kind != VolumeKind::ConfigMap;
                self.wrapper_dir(&dir, name)?;
                if tmpfs {
                    let size = self.tmpfs_size(None, name, &field)?;
                    self.ensure_tmpfs(&dir, size, name)?;
                }
                let changed = atomic_writer::write(&dir, &payload)
                    .map_err(|failure| failure.into_error(format!("volume {name:?}")))?;
                Ok((prepared(dir, true, tmpfs), changed))
            }
        }
    }

    /// An emptyDir's directory, with a tmpfs on it for `medium: Memory`; returns the
    /// directory and whether it is a tmpfs.
    fn empty_dir(&mut self, volume: &Volume, field: &str) -> Result<(PathBuf, bool), VolumeError> {
        let name = volume.name.as_str();
        let source = volume.empty_dir.clone().unwrap_or_default();
        let memory = match source.medium.as_deref().unwrap_or_default() {
            "" => false,
            "Memory" => true,
            medium if medium.starts_with("HugePages") => {
                return Err(VolumeError::Unsupported {
                    volume: name.to_owned(),
                    field: format!("{field}.medium"),
                    kind: format!("emptyDir medium {medium}"),
                });
            }
            other => {
                return Err(VolumeError::Invalid {
                    volume: name.to_owned(),
                    field: format!("{field}.medium"),
                    value: other.to_owned(),
                    reason: "supported values: \"\", \"Memory\"".into(),
                });
            }
        };
        let dir = volume_dir(self.pod_dir, VolumeKind::EmptyDir, name);
        self.wrapper_dir(&dir, name)?;
        if memory {
            let size = self.tmpfs_size(source.size_limit.as_ref(), name, field)?;
            self.ensure_tmpfs(&dir, size, name)?;
        }
        Ok((dir, memory))
    }

    /// The files of a configMap, secret, downwardAPI or projected volume.
    fn payload(
        &self,
        kind: VolumeKind,
        volume: &Volume,
        field: &str,
    ) -> Result<Payload, VolumeError> {
        let sources = Sources {
            pod: self.pod,
            objects: self.objects,
            volume: &volume.name,
        };
        let default_mode =
            |mode: Option<i32>| sources.mode(mode, DEFAULT_MODE, format!("{field}.defaultMode"));
        let mut payload = Payload::new();
        match kind {
            VolumeKind::ConfigMap => {
                let source = volume.config_map.clone().unwrap_or_default();
                let key_source = KeySource {
                    kind: ObjectKind::ConfigMap,
                    name: &source.name,
                    items: source.items.as_deref(),
                    optional: source.optional.unwrap_or(false),
                    field: field.to_owned(),
                };
                let mode = default_mode(source.default_mode)?;
                sources.project_keys(&key_source, mode, &mut payload)?;
            }
            VolumeKind::Secret => {
                let source = volume.secret.clone().unwrap_or_default();
                let secret_name = source.secret_name.as_deref().unwrap_or_default();
                if secret_name.is_empty() {
                    return Err(VolumeError::Invalid {
                        volume: volume.name.clone(),
                        field: format!("{field}.secretName"),
                        value: String::new(),
                        reason: "required value".into(),
                    });
                }
                let key_source = KeySource {
                    kind: ObjectKind::Secret,
                    name: secret_name,
                    items: source.items.as_deref(),
                    optional: source.optional.unwrap_or(false),
                    field: field.to_owned(),
                };
                let mode = default_mode(source.default_mode)?;
                sources.project_keys(&key_source, mode, &mut payload)?;
            }
            VolumeKind::DownwardApi => {
                let source = volume.downward_api.clone().unwrap_or_default();
                let items = source.items.as_deref().unwrap_or_default();
                let mode = default_mode(source.default_mode)?;
                sources.project_downward_api(items, mode, field, &mut payload)?;
            }
            VolumeKind::Projected => {
                let source = volume.projected.clone().unwrap_or_default();
                payload = sources.project_sources(&source, field)?;
            }
            VolumeKind::EmptyDir | VolumeKind::HostPath => {}
        }
        Ok(payload)
    }

    /// The volume's directory, mode 0777 as kubelet's emptyDir; its parents 0750.
    fn wrapper_dir(&self, dir: &Path, volume: &str) -> Result<(), VolumeError> {
        let what = || format!("volume {volume:?}");
        if let Some(parent) = dir.parent() {
            create_dirs(parent, POD_DIR_MODE).map_err(|f| f.into_error(what()))?;
        }
        match fs::create_dir(dir) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(layout::at("creating", dir)(error).into_error(what())),
        }
        let mode = fs::metadata(dir)
            .map_err(|e| layout::at("reading", dir)(e).into_error(what()))?
            .permissions()
            .mode();
        // Only the rwx bits: a tmpfs root is 1777, which kubelet leaves as it is.
        if mode & 0o777 != EMPTY_DIR_MODE {
            fs::set_permissions(dir, fs::Permissions::from_mode(EMPTY_DIR_MODE))
                .map_err(|e| layout::at("setting the mode of", dir)(e).into_error(what()))?;
        }
        Ok(())
    }

    /// Mounts a tmpfs on `dir` unless something is mounted there already.
    fn ensure_tmpfs(
        &mut self,
        dir: &Path,
        size_bytes: Option<u64>,
        volume: &str,
    ) -> Result<(), VolumeError> {
        let mounted = match self.mounted.take() {
            Some(mounted) => mounted,
            None => self
                .mounter
                .mount_points_under(self.pod_dir)
                .map_err(|source| VolumeError::MountTable {
                    path: self.pod_dir.to_path_buf(),
                    source,
                })?
                .into_iter()
                .collect(),
        };
        let mounted = self.mounted.insert(mounted);
        if mounted.contains(dir) {
            return Ok(());
        }
        self.mounter
            .mount_tmpfs(dir, size_bytes)
            .map_err(|source| VolumeError::Mount {
                volume: volume.to_owned(),
                path: dir.to_path_buf(),
                source,
            })?;
        mounted.insert(dir.to_path_buf());
        Ok(())
    }

    /// kubelet's `calculateEmptyDirMemorySize`: the node's allocatable memory, lowered to the
    /// pod's memory limit and then to `size_limit` where those are smaller.
    fn tmpfs_size(
        &self,
        size_limit: Option<&Quantity>,
        volume: &str,
        field: &str,
    ) -> Result<Option<u64>, VolumeError> {
        let allocatable = self.ctx.node.allocatable_memory_bytes;
        let mut size = (allocatable > 0).then_some(allocatable);
        let mut lower = |candidate: i64| {
            if candidate > 0 && size.is_none_or(|s| candidate < s) {
                size = Some(candidate);
            }
        };
        if let Some(limit) = pod_memory_limit(self.pod) {
            lower(limit);
        }
        if let Some(quantity) = size_limit {
            let parsed =
                ParsedQuantity::parse(&quantity.0).map_err(|error| VolumeError::Invalid {
                    volume: volume.to_owned(),
                    field: format!("{field}.sizeLimit"),
                    value: quantity.0.clone(),
                    reason: error.to_string(),
                })?;
            lower(parsed.value());
        }
        Ok(size.and_then(|s| u64::try_from(s).ok()))
    }
}

/// The sources a volume sets, by field name (`emptyDir`, `persistentVolumeClaim`): exactly
/// one in a valid pod.
pub fn volume_sources(volume: &Volume) -> Vec<String> {
    // k8s-openapi leaves unset sources out, so the keys besides `name` are the sources.
    let serialized = serde_json::to_value(volume).unwrap_or_default();
    serialized
        .as_object()
        .map(|object| object.keys().filter(|k| *k != "name").cloned().collect())
        .unwrap_or_default()
}

/// Which one of `Volume`'s sources is set.
fn source_kind(volume: &Volume, field: &str) -> Result<VolumeKind, VolumeError> {
    let sources = volume_sources(volume);
    let invalid = |reason: String| VolumeError::Invalid {
        volume: volume.name.clone(),
        field: field.to_owned(),
        value: String::new(),
        reason,
    };
    let source = match sources.as_slice() {
        [] => return Err(invalid("must specify a volume type".into())),
        [one] => one.as_str(),
        more => {
            let reason = format!(
                "may not specify more than 1 volume type: {}",
                more.join(", ")
            );
            return Err(invalid(reason));
        }
    };
    let kinds = [
        VolumeKind::EmptyDir,
        VolumeKind::HostPath,
        VolumeKind::ConfigMap,
        VolumeKind::Secret,
        VolumeKind::DownwardApi,
        VolumeKind::Projected,
    ];
    kinds
        .into_iter()
        .find(|kind| kind.field() == source)
        .ok_or_else(|| VolumeError::Unsupported {
            volume: volume.name.clone(),
            field: format!("{field}.{source}"),
            kind: source.to_owned(),
        })
}

/// The pod's memory limit when every container declares one (kubelet's
/// `ResourceConfigForPod`): the regular containers' sum plus the sidecars', or more if an
/// init container, with the sidecars started before it, needs more.
fn pod_memory_limit(pod: &Pod) -> Option<i64> {
    let spec = pod.spec.as_ref()?;
    let limit = |container: &Container| -> Option<i64> {
        let quantity = container
            .resources
            .as_ref()?
            .limits
            .as_ref()?
            .get("memory")?;
        Some(ParsedQuantity::parse(&quantity.0).ok()?.value())
    };
    let mut sidecars: i64 = 0;
    let mut init_peak: i64 = 0;
    for container in spec.init_containers.iter().flatten() {
        let own = limit(container)?;
        if container.restart_policy.as_deref() == Some("Always") {
            sidecars = sidecars.saturating_add(own);
            init_peak = init_peak.max(sidecars);
        } else {
            init_peak = init_peak.max(sidecars.saturating_add(own));
        }
    }
    let mut regular = sidecars;
    for container in &spec.containers {
        regular = regular.saturating_add(limit(container)?);
    }
    Some(regular.max(init_peak))
}

/// Removes a pod's directory once its containers and sandboxes are gone: unmounts every
/// mount under `<pods_dir>/<uid>` (bosun's tmpfs, and whatever a container propagated there
/// with `Bidirectional`), deepest first, then deletes the directory. Symbolic links are
/// removed, never followed, so nothing outside the pod directory is touched; hostPath
/// volumes have nothing there. Nothing is deleted while anything is still mounted. Safe to
/// call again, and for a pod that has no directory.
///
/// ```no_run
/// # use bosun::pod::spec::NodeContext;
/// # use bosun::pod::volume::{self, HostMounter};
/// # fn removed(ctx: &NodeContext, uid: &str) -> Result<(), volume::VolumeError> {
/// volume::cleanup(&ctx.pods_dir, uid, &HostMounter)?;
/// # Ok(()) }
/// ```
pub fn cleanup(pods_dir: &Path, uid: &str, mounter: &dyn Mounter) -> Result<(), VolumeError> {
    pod_dir(pods_dir, uid).map_err(|reason| VolumeError::InvalidUid {
        uid: uid.to_owned(),
        reason,
    })?;
    let what = "pod directory";
    let base = match fs::canonicalize(pods_dir) {
        Ok(base) => base,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(layout::at("resolving", pods_dir)(error).into_error(what)),
    };
    let dir = base.join(uid);
    match fs::symlink_metadata(&dir) {
        Ok(metadata) if metadata.is_dir() => {}
        Ok(_) => {
            // A link or file in its place: remove it, never what it points to.
            return fs::remove_file(&dir)
                .map_err(|e| layout::at("removing", &dir)(e).into_error(what));
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(layout::at("reading", &dir)(error).into_error(what)),
    }
    unmount_all(&dir, mounter)?;
    match fs::remove_dir_all(&dir) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => {
            Err(layout::at("removing", &dir)(error).into_error(what))
        }
        _ => Ok(()),
    }
}

fn unmount_all(dir: &Path, mounter: &dyn Mounter) -> Result<(), VolumeError> {
    let mount_points = || {
        mounter
            .mount_points_under(dir)
            .map_err(|source| VolumeError::MountTable {
                path: dir.to_path_buf(),
                source,
            })
    };
    for _ in 0..MAX_UNMOUNT_ROUNDS {
        let distinct: BTreeSet<PathBuf> = mount_points()?.into_iter().collect();
        if distinct.is_empty() {
            return Ok(());
        }
        let mut deepest_first: Vec<PathBuf> = distinct.into_iter().collect();
        deepest_first.sort_by_key(|path| Reverse(path.components().count()));
        for path in deepest_first {
            mounter
                .unmount(&path)
                .map_err(|source| VolumeError::Unmount { path, source })?;
        }
    }
    match mount_points()?.into_iter().next() {
        Some(path) => Err(VolumeError::StillMounted { path }),
        None => Ok(()),
    }
}

/// The UIDs that have a directory under `pods_dir` (none if it does not exist). After a
/// restart, [`cleanup`] those no wanted pod has, once their sandboxes are gone.
pub fn pod_uids(pods_dir: &Path) -> Result<Vec<String>, VolumeError> {
    let what = "pods directory";
    let entries = match fs::read_dir(pods_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(layout::at("listing", pods_dir)(error).into_error(what)),
    };
    let mut uids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| layout::at("listing", pods_dir)(e).into_error(what))?;
        if let Some(name) = entry.file_name().to_str() {
            uids.push(name.to_owned());
        }
    }
    uids.sort();
    Ok(uids)
}
