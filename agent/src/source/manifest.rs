//! Reading a static pod directory (kubelet's `staticPodPath`) into a [`Snapshot`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service, Toleration};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::{Metadata, Resource};
use serde::de::DeserializeOwned;
use serde::Deserialize as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::defaults::apply_defaults;
use super::strict::{decode, Problem};
use super::validate::{check_label, check_subdomain, static_pod_name, unsupported, validate_pod};
use super::validate_objects::Validate;
use crate::store::{self, ObjectKey, Source};

/// Where the pod came from; `file` for a manifest directory, as kubelet writes it.
pub const CONFIG_SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
/// The pod's content hash, equal to its UID.
pub const CONFIG_HASH_ANNOTATION: &str = "kubernetes.io/config.hash";
/// When the pod was first read in its current form (RFC 3339). Not part of the hash.
pub const CONFIG_SEEN_ANNOTATION: &str = "kubernetes.io/config.seen";

/// An object that is not a pod: its kind and key.
type KindKey = (&'static str, ObjectKey);

/// One problem with a manifest, with where it is. Retrying does not help: the file has to
/// change. Displays as `pods/web.yaml: spec.containers[0].image: required value`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Located(self))]
pub struct ManifestError {
    /// The manifest file, or the directory itself when it cannot be read.
    pub file: PathBuf,
    /// 1-based position of the YAML document in a file that holds more than one; `None`
    /// when the file holds a single object.
    pub document: Option<usize>,
    /// Path of the offending field, as Kubernetes writes it (`spec.containers[0].name`);
    /// empty when the problem is the file or document as a whole.
    pub field: String,
    /// What is wrong, quoting the offending value.
    pub message: String,
}

struct Located<'a>(&'a ManifestError);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let error = self.0;
        write!(f, "{}: ", error.file.display())?;
        if let Some(document) = error.document {
            write!(f, "document {document}: ")?;
        }
        if !error.field.is_empty() {
            write!(f, "{}: ", error.field)?;
        }
        f.write_str(&error.message)
    }
}

/// A pod as kubelet would run it from a manifest: defaulted, renamed `NAME-NODENAME`, with
/// a content-derived UID and the `kubernetes.io/config.*` annotations.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticPod {
    pub pod: Pod,
    /// The manifest it came from.
    pub file: PathBuf,
}

impl StaticPod {
    /// The UID, which is also the `kubernetes.io/config.hash` annotation.
    pub fn uid(&self) -> &str {
        self.pod.metadata.uid.as_deref().unwrap_or_default()
    }
}

/// The pods a manifest directory asks for at one moment, and what is wrong with it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Pods by `namespace/name` (the name with the node name appended).
    pub pods: BTreeMap<String, StaticPod>,
    /// Problems, one per bad field, in file name order. A bad document contributes nothing
    /// to `pods` or to the objects; the other documents and files are unaffected. They are
    /// not logged here: the consumer decides how loudly to report them.
    pub errors: Vec<ManifestError>,
    /// Set by a read of the directory; `Snapshot::default()` is the placeholder that has
    /// not seen the directory, and must not be taken to mean "no pods are wanted".
    scanned: bool,
}

impl Snapshot {
    /// Whether this comes from reading the manifest directory. Every snapshot [`scan`] and
    /// `watch` produce does, including the one `watch`'s receiver holds when it returns.
    pub fn scanned(&self) -> bool {
        self.scanned
    }

    /// Whether the two ask for the same thing: the same pods (by UID) and the same errors.
    /// Ignores when pods were seen.
    pub fn same_desired_state(&self, other: &Snapshot) -> bool {
        let uids = |s: &Snapshot| -> Vec<(String, String)> {
            s.pods
                .iter()
                .map(|(key, pod)| (key.clone(), pod.uid().to_string()))
                .collect()
        };
        let texts =
            |s: &Snapshot| -> Vec<String> { s.errors.iter().map(ToString::to_string).collect() };
        uids(self) == uids(other) && texts(self) == texts(other)
    }
}

/// The objects other than pods that a manifest directory holds: decoded once, strictly,
/// into their Kubernetes types and validated, with `metadata.namespace` filled in for
/// namespaced kinds. The same `Arc`s go into the object store, so each is held once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ManifestObjects {
    pub services: Vec<Arc<Service>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub network_policies: Vec<Arc<NetworkPolicy>>,
    pub namespaces: Vec<Arc<Namespace>>,
    pub config_maps: Vec<Arc<ConfigMap>>,
    pub secrets: Vec<Arc<Secret>>,
}

impl ManifestObjects {
    /// Makes these the manifest directory's objects in `objects`; what did not change is
    /// not announced.
    pub fn store(self, objects: &store::Objects) {
        objects.services.writer(Source::File).replace(self.services);
        objects
            .endpoint_slices
            .writer(Source::File)
            .replace(self.endpoint_slices);
        objects
            .network_policies
            .writer(Source::File)
            .replace(self.network_policies);
        objects
            .namespaces
            .writer(Source::File)
            .replace(self.namespaces);
        objects
            .config_maps
            .writer(Source::File)
            .replace(self.config_maps);
        objects.secrets.writer(Source::File).replace(self.secrets);
    }

    fn push(&mut self, object: &AnyObject) {
        match object {
            AnyObject::Service(o) => self.services.push(o.clone()),
            AnyObject::EndpointSlice(o) => self.endpoint_slices.push(o.clone()),
            AnyObject::NetworkPolicy(o) => self.network_policies.push(o.clone()),
            AnyObject::Namespace(o) => self.namespaces.push(o.clone()),
            AnyObject::ConfigMap(o) => self.config_maps.push(o.clone()),
            AnyObject::Secret(o) => self.secrets.push(o.clone()),
        }
    }

    /// How many objects there are of every kind.
    pub fn len(&self) -> usize {
        self.services.len()
            + self.endpoint_slices.len()
            + self.network_policies.len()
            + self.namespaces.len()
            + self.config_maps.len()
            + self.secrets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One decoded object of a kind other than Pod.
#[derive(Debug, Clone, PartialEq)]
enum AnyObject {
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    NetworkPolicy(Arc<NetworkPolicy>),
    Namespace(Arc<Namespace>),
    ConfigMap(Arc<ConfigMap>),
    Secret(Arc<Secret>),
}

impl AnyObject {
    /// The metadata of an object not shared yet (just decoded).
    fn metadata_mut(&mut self) -> Option<&mut ObjectMeta> {
        fn meta<T: Metadata<Ty = ObjectMeta>>(object: &mut Arc<T>) -> Option<&mut ObjectMeta> {
            Arc::get_mut(object).map(Metadata::metadata_mut)
        }
        match self {
            AnyObject::Service(o) => meta(o),
            AnyObject::EndpointSlice(o) => meta(o),
            AnyObject::NetworkPolicy(o) => meta(o),
            AnyObject::Namespace(o) => meta(o),
            AnyObject::ConfigMap(o) => meta(o),
            AnyObject::Secret(o) => meta(o),
        }
    }
}

/// Reads every manifest in `dir` once. Use [`ManifestSource`] (or `watch`) to read
/// repeatedly: it also keeps a file's last good content while the file reads badly.
pub fn scan(dir: &Path, node_name: &str) -> (Snapshot, ManifestObjects) {
    ManifestSource::new(dir, node_name).rescan()
}

/// A manifest directory read again and again.
///
/// **A file that reads with errors keeps its last good content.** Writers that edit a file
/// in place can be caught half way, and a half-written manifest that happens to parse can
/// still be wrong (a truncated list of containers). So when a file has any error, the pods
/// and objects it held the last time it read cleanly stay in the snapshot, next to the
/// errors, until the file reads cleanly again or is deleted. A file that has never read
/// cleanly contributes its good documents only. kubelet's inotify path behaves this way
/// (a bad update is ignored); its periodic relist drops the pod instead, which would
/// restart it on every typo.
pub struct ManifestSource {
    dir: PathBuf,
    node_name: String,
    /// The last error-free reading of each file.
    last_good: BTreeMap<PathBuf, GoodReading>,
    /// How long a file must have been left alone for its stamp to count (see [`FileStamp`]).
    settle: std::time::Duration,
    /// Files read and parsed so far (the others' last readings were reused).
    files_read: u64,
    /// `config.seen` of each pod in the previous snapshot, by key, with its UID.
    seen: BTreeMap<String, (String, String)>,
    /// Skipped documents already logged.
    reported: BTreeSet<String>,
}

impl ManifestSource {
    /// A source for the manifests in `dir` (or the single manifest file `dir`, as kubelet
    /// accepts) on the node `node_name`.
    pub fn new(dir: impl Into<PathBuf>, node_name: impl Into<String>) -> Self {
        ManifestSource {
            dir: dir.into(),
            node_name: node_name.into(),
            last_good: BTreeMap::new(),
            settle: FileStamp::SETTLE,
            files_read: 0,
            seen: BTreeMap::new(),
            reported: BTreeSet::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many files the rescans so far read and parsed.
    pub fn files_read(&self) -> u64 {
        self.files_read
    }

    /// Counts a file's stamp once it was left alone for `settle` (tests).
    #[cfg(test)]
    pub(crate) fn with_settle(mut self, settle: std::time::Duration) -> Self {
        self.settle = settle;
        self
    }

    /// Reads the directory now. Blocking file I/O: call it off the async executor.
    pub fn rescan(&mut self) -> (Snapshot, ManifestObjects) {
        let seen = now_rfc3339();
        let (files, listing_error) = match list_manifest_files(&self.dir) {
            Ok(files) => (files, None),
            // Like kubelet: no directory, no pods.
            Err(Unlisted::Missing(error)) => (Vec::new(), Some(error)),
            // Probably passing (EMFILE, EIO): keep what each file last said.
            Err(Unlisted::Unreadable(error)) => {
                let kept: Vec<_> = self
                    .last_good
                    .iter()
                    .map(|(file, good)| (file.clone(), good.manifests.clone()))
                    .collect();
                let (mut snapshot, objects) = merge(Some(error), &kept);
                self.keep_first_seen(&mut snapshot);
                return (snapshot, objects);
            }
        };

        let mut read = Vec::with_capacity(files.len());
        for file in files {
            let stamp = FileStamp::of(&file);
            let unchanged = self
                .last_good
                .get(&file)
                .filter(|good| good.stamp.is_some() && good.stamp == stamp);
            if let Some(good) = unchanged {
                read.push((file, good.manifests.clone()));
                continue;
            }
            self.files_read += 1;
            // A file deleted since the listing is simply gone.
            let Some(mut manifests) = read_manifest_file(&file, &self.node_name, &seen) else {
                continue;
            };
            if manifests.errors.is_empty() {
                let good = GoodReading {
                    manifests: manifests.clone(),
                    stamp: stamp.filter(|stamp| stamp.settled(self.settle)),
                };
                self.last_good.insert(file.clone(), good);
            } else if let Some(good) = self.last_good.get(&file) {
                manifests.pods = good.manifests.pods.clone();
                manifests.objects = good.manifests.objects.clone();
            }
            read.push((file, manifests));
        }
        self.last_good
            .retain(|file, _| read.iter().any(|(present, _)| present == file));

        let (mut snapshot, objects) = merge(listing_error, &read);
        self.keep_first_seen(&mut snapshot);
        self.warn_skipped(&read);
        (snapshot, objects)
    }

    /// A pod unchanged since the last rescan keeps the time it was first seen.
    fn keep_first_seen(&mut self, snapshot: &mut Snapshot) {
        for (key, static_pod) in &mut snapshot.pods {
            let Some((uid, seen)) = self.seen.get(key) else {
                continue;
            };
            if uid != static_pod.uid() {
                continue;
            }
            if let Some(annotations) = static_pod.pod.metadata.annotations.as_mut() {
                annotations.insert(CONFIG_SEEN_ANNOTATION.to_string(), seen.clone());
            }
        }
        self.seen = snapshot
            .pods
            .iter()
            .map(|(key, static_pod)| {
                let seen = static_pod
                    .pod
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(CONFIG_SEEN_ANNOTATION))
                    .cloned()
                    .unwrap_or_default();
                (key.clone(), (static_pod.uid().to_string(), seen))
            })
            .collect();
    }

    /// Logs each skipped document once, when it first appears, not on every rescan.
    fn warn_skipped(&mut self, read: &[(PathBuf, FileManifests)]) {
        let mut now = BTreeSet::new();
        for (_, manifests) in read {
            for skipped in &manifests.skipped {
                if !self.reported.contains(skipped) {
                    tracing::warn!("{skipped}");
                }
                now.insert(skipped.clone());
            }
        }
        self.reported = now;
    }
}

/// A file's last error-free reading, with its stamp when the reading can be reused while the
/// stamp stays the same.
#[derive(Debug)]
struct GoodReading {
    manifests: FileManifests,
    stamp: Option<FileStamp>,
}

/// What tells a file's content apart without reading it: its inode, size and times. A
/// rescan reuses the last reading of a file whose stamp is the same, instead of reading and
/// parsing it again. Only a stamp taken once the file had been left alone for
/// [`FileStamp::SETTLE`] counts: a file rewritten within the file system's timestamp
/// granularity of an earlier write could otherwise keep its stamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

    fn of(file: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(file).ok()?;
        Some(FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        })
    }

    /// Whether the file was last changed more than `settle` ago.
    fn settled(&self, settle: std::time::Duration) -> bool {
        let at = |(secs, nanos): (i64, i64)| {
            let secs = u64::try_from(secs).ok()?;
            let nanos = u32::try_from(nanos).ok()?;
            std::time::UNIX_EPOCH.checked_add(std::time::Duration::new(secs, nanos))
        };
        let (Some(mtime), Some(ctime)) = (at(self.mtime), at(self.ctime)) else {
            return false;
        };
        mtime.max(ctime).elapsed().is_ok_and(|since| since > settle)
    }
}

/// What one file holds.
#[derive(Debug, Clone, Default)]
struct FileManifests {
    /// With the number of their document, as in [`ManifestError::document`].
    pods: Vec<(Option<usize>, StaticPod)>,
    objects: Vec<(Option<usize>, KindKey, AnyObject)>,
    errors: Vec<ManifestError>,
    /// Documents of kinds bosun does not read, as log lines.
    skipped: Vec<String>,
}

/// Why a manifest directory could not be listed.
enum Unlisted {
    Missing(ManifestError),
    Unreadable(ManifestError),
}

/// The manifests in `dir` in file name order, as kubelet reads them: regular files (or
/// links to them) directly in the directory, not starting with a dot, named `*.yaml`,
/// `*.yml` or `*.json`. A `dir` that is itself a file is the one manifest.
fn list_manifest_files(dir: &Path) -> Result<Vec<PathBuf>, Unlisted> {
    let whole = |message: String| ManifestError {
        file: dir.to_path_buf(),
        document: None,
        field: String::new(),
        message,
    };
    let unreadable = |err: io::Error| {
        Unlisted::Unreadable(whole(format!("cannot read manifest directory: {err}")))
    };
    let metadata = match fs::metadata(dir) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(Unlisted::Missing(whole(
                "manifest directory does not exist".into(),
            )));
        }
        Err(err) => return Err(unreadable(err)),
    };
    if metadata.is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }

    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !is_manifest_name(&name) {
            continue;
        }
        let path = entry.path();
        // `fs::metadata` follows links: a link to a manifest is a manifest.
        match fs::metadata(&path) {
            Ok(metadata) if metadata.is_file() => files.push(path),
            Ok(metadata) if metadata.is_dir() => {
                tracing::debug!(
                    path = %path.display(),
                    "not descending into a directory of the manifest directory"
                );
            }
            _ => {}
        }
    }
    files.sort();
    Ok(files)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Yaml,
    Json,
}

/// Whether the reader takes a file of this name in a manifest directory: hidden files
/// (an editor's or a writer's temporary) and other extensions are skipped, as kubelet does.
pub(super) fn is_manifest_name(name: &str) -> bool {
    !name.starts_with('.') && format_of(Path::new(name)).is_some()
}

fn format_of(path: &Path) -> Option<Format> {
    let extension = path.extension()?.to_str()?.to_ascii_lowercase();
    match extension.as_str() {
        "yaml" | "yml" => Some(Format::Yaml),
        "json" => Some(Format::Json),
        _ => None,
    }
}

/// Reads one manifest file; `None` if it no longer exists.
fn read_manifest_file(file: &Path, node_name: &str, seen: &str) -> Option<FileManifests> {
    let mut out = FileManifests::default();
    let bytes = match fs::read(file) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return None,
        Err(err) => {
            out.errors.push(ManifestError {
                file: file.to_path_buf(),
                document: None,
                field: String::new(),
                message: format!("cannot read: {err}"),
            });
            return Some(out);
        }
    };
    // A single named file (staticPodPath pointing at a file) may have any name: YAML
    // covers JSON too.
    let format = format_of(file).unwrap_or(Format::Yaml);
    // Documents are numbered in messages only in a file of more than one, which is known at
    // the second: the first waits for it. Each is read as it is parsed and dropped, so a file
    // of 60,000 objects is never held whole as generic values (300 MiB at 30,000 Services).
    let mut first: Option<(usize, Value)> = None;
    let mut multiple = false;
    let mut read = |index: usize, value: Value, numbered: bool| {
        let mut reader = DocumentReader {
            file,
            document: numbered.then_some(index + 1),
            node_name,
            seen,
            out: &mut out,
        };
        reader.read(value, format);
    };
    let syntax_error = for_each_document(&bytes, format, |index, value| {
        if multiple {
            read(index, value, true);
        } else if let Some((first_index, first_value)) = first.take() {
            multiple = true;
            read(first_index, first_value, true);
            read(index, value, true);
        } else {
            first = Some((index, value));
        }
    });
    if let Some((index, value)) = first {
        // One document, and a second that did not parse: both are numbered.
        multiple = syntax_error.is_some();
        read(index, value, multiple);
    }
    if let Some((index, message)) = syntax_error {
        out.errors.push(ManifestError {
            file: file.to_path_buf(),
            document: multiple.then_some(index + 1),
            field: String::new(),
            message,
        });
    }
    Some(out)
}

/// Hands each non-empty document of a file to `each` with its 0-based position, as it is
/// parsed; returns the syntax error that ended reading, with the position of its document.
/// YAML cannot be read reliably past one, so the documents before it are read and the rest
/// not.
fn for_each_document(
    bytes: &[u8],
    format: Format,
    mut each: impl FnMut(usize, Value),
) -> Option<(usize, String)> {
    match format {
        Format::Json => match serde_json::from_slice::<Value>(bytes) {
            Ok(value) => {
                each(0, value);
                None
            }
            Err(err) => Some((0, format!("invalid JSON: {err}"))),
        },
        Format::Yaml => {
            for (index, document) in serde_yaml::Deserializer::from_slice(bytes).enumerate() {
                match Value::deserialize(document) {
                    Ok(Value::Null) => {}
                    Ok(value) => each(index, value),
                    Err(err) => return Some((index, format!("invalid YAML: {err}"))),
                }
            }
            None
        }
    }
}

/// A kind other than Pod that bosun keeps for later use.
struct ObjectKind {
    kind: &'static str,
    api_version: &'static str,
    namespaced: bool,
    /// Decodes strictly into the kind's type: the object, or every problem found.
    decode: fn(&Value) -> Result<AnyObject, Vec<Problem>>,
}

/// A kind [`AnyObject`] holds.
trait Kept: Resource + DeserializeOwned + Validate {
    fn wrap(object: Arc<Self>) -> AnyObject;
}

macro_rules! kept {
    ($($kind:ident),*) => {
        $(impl Kept for $kind {
            fn wrap(object: Arc<Self>) -> AnyObject {
                AnyObject::$kind(object)
            }
        })*
    };
}
kept!(
    Service,
    EndpointSlice,
    NetworkPolicy,
    Namespace,
    ConfigMap,
    Secret
);

/// Decodes strictly and validates as the API server would. An unknown field is most often a
/// misspelt known one, which validation would report a second time as missing, so only an
/// object without unknown fields is validated.
fn decode_kept<T: Kept>(value: &Value) -> Result<AnyObject, Vec<Problem>> {
    match decode::<T>(value) {
        Ok((object, unknown_fields)) if unknown_fields.is_empty() => {
            let problems = object.validate();
            if problems.is_empty() {
                Ok(T::wrap(Arc::new(object)))
            } else {
                Err(problems)
            }
        }
        Ok((_, problems)) | Err(problems) => Err(problems),
    }
}

fn object_kind<T: Kept>(namespaced: bool) -> ObjectKind {
    ObjectKind {
        kind: T::KIND,
        api_version: T::API_VERSION,
        namespaced,
        decode: decode_kept::<T>,
    }
}

fn object_kinds() -> [ObjectKind; 6] {
    [
        object_kind::<Service>(true),
        object_kind::<EndpointSlice>(true),
        object_kind::<NetworkPolicy>(true),
        object_kind::<Namespace>(false),
        object_kind::<ConfigMap>(true),
        object_kind::<Secret>(true),
    ]
}

/// Reads one document of a file into `out`.
struct DocumentReader<'a> {
    file: &'a Path,
    document: Option<usize>,
    node_name: &'a str,
    seen: &'a str,
    out: &'a mut FileManifests,
}

impl DocumentReader<'_> {
    fn read(&mut self, mut value: Value, format: Format) {
        let Some(object) = value.as_object() else {
            let found = match value {
                Value::Array(_) => "a list",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                Value::Null | Value::Object(_) => "nothing",
            };
            self.error("", format!("expected a Kubernetes object, found {found}"));
            return;
        };
        let Some(kind) = self.string_field(object, "kind") else {
            return;
        };
        if kind == Pod::KIND {
            let Some(api_version) = self.string_field(object, "apiVersion") else {
                return;
            };
            if !self.check_api_version(&api_version, Pod::API_VERSION) {
                return;
            }
            if format == Format::Yaml {
                if let Some(volumes) = value.pointer_mut("/spec/volumes") {
                    yaml11_octal_modes(volumes);
                }
            }
            self.read_pod(&value);
            return;
        }
        let kinds = object_kinds();
        let Some(object_kind) = kinds.iter().find(|k| k.kind == kind) else {
            self.skip(&kind, &value);
            return;
        };
        let Some(api_version) = self.string_field(object, "apiVersion") else {
            return;
        };
        if self.check_api_version(&api_version, object_kind.api_version) {
            self.read_object(value, object_kind);
        }
    }

    fn skip(&mut self, kind: &str, value: &Value) {
        let name = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("(unnamed)");
        let mut at = self.file.display().to_string();
        if let Some(document) = self.document {
            at.push_str(&format!(": document {document}"));
        }
        self.out.skipped.push(format!(
            "{at}: skipping {kind} {name:?}: manifests may hold Pod, Service, EndpointSlice, \
             NetworkPolicy, Namespace, ConfigMap and Secret objects"
        ));
    }

    fn read_pod(&mut self, value: &Value) {
        let mut pod = match decode::<Pod>(value) {
            Ok((pod, unknown_fields)) if unknown_fields.is_empty() => pod,
            Ok((_, problems)) | Err(problems) => return self.problems(problems),
        };
        let problems = validate_pod(&pod, self.node_name);
        if !problems.is_empty() {
            return self.problems(problems);
        }
        apply_defaults(&mut pod);
        match make_static(pod, self.file, self.node_name, self.seen) {
            Ok(pod) => self.out.pods.push((self.document, pod)),
            Err(problem) => self.problems(vec![problem]),
        }
    }

    fn read_object(&mut self, value: Value, kind: &ObjectKind) {
        let mut object = match (kind.decode)(&value) {
            Ok(object) => object,
            Err(problems) => return self.problems(problems),
        };
        let Some(meta) = object.metadata_mut() else {
            return self.error("", "cannot take the object apart".into());
        };
        let name = match meta.name.as_deref() {
            None | Some("") => return self.error("metadata.name", "required value".into()),
            Some(name) => name.to_owned(),
        };
        if let Err(why) = check_subdomain(&name) {
            return self.error("metadata.name", format!("invalid value {name:?}: {why}"));
        }
        let namespace = if kind.namespaced {
            let namespace = meta
                .namespace
                .clone()
                .filter(|ns| !ns.is_empty())
                .unwrap_or_else(|| "default".to_owned());
            if let Err(why) = check_label(&namespace) {
                let message = format!("invalid value {namespace:?}: {why}");
                return self.error("metadata.namespace", message);
            }
            meta.namespace = Some(namespace.clone());
            namespace
        } else {
            String::new()
        };
        let key = (kind.kind, ObjectKey::new(namespace, name));
        self.out.objects.push((self.document, key, object));
    }

    /// A top-level string field that must be present: `kind` or `apiVersion`.
    fn string_field(
        &mut self,
        object: &serde_json::Map<String, Value>,
        field: &str,
    ) -> Option<String> {
        match object.get(field) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            None | Some(Value::Null) => {
                self.error(field, "required value".into());
                None
            }
            Some(Value::String(_)) => {
                self.error(field, "required value".into());
                None
            }
            Some(other) => {
                self.error(field, format!("invalid value {other}: must be a string"));
                None
            }
        }
    }

    fn check_api_version(&mut self, api_version: &str, supported: &str) -> bool {
        if api_version == supported {
            return true;
        }
        let problem = unsupported("apiVersion", api_version, &[supported]);
        self.problems(vec![problem]);
        false
    }

    fn error(&mut self, field: &str, message: String) {
        self.problems(vec![Problem::new(field, message)]);
    }

    fn problems(&mut self, problems: Vec<Problem>) {
        for problem in problems {
            self.out.errors.push(ManifestError {
                file: self.file.to_path_buf(),
                document: self.document,
                field: problem.field,
                message: problem.message,
            });
        }
    }
}

/// Turns a validated, defaulted manifest pod into the pod kubelet would run: named
/// `NAME-NODENAME`, in `default` unless it says otherwise, bound to this node, with a UID
/// derived from its content and the `kubernetes.io/config.*` annotations.
fn make_static(
    mut pod: Pod,
    file: &Path,
    node_name: &str,
    seen: &str,
) -> Result<StaticPod, Problem> {
    let uid = content_uid(&pod, file, node_name)?;

    let meta = &mut pod.metadata;
    let name = meta.name.take().unwrap_or_default();
    meta.name = Some(static_pod_name(&name, node_name));
    if meta.namespace.as_deref().is_none_or(str::is_empty) {
        meta.namespace = Some("default".into());
    }
    meta.uid = Some(uid.clone());
    let annotations = meta.annotations.get_or_insert_with(Default::default);
    annotations.insert(CONFIG_SOURCE_ANNOTATION.into(), "file".into());
    annotations.insert(CONFIG_HASH_ANNOTATION.into(), uid);
    annotations.insert(CONFIG_SEEN_ANNOTATION.into(), seen.into());

    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(node_name.into());
        // kubelet lets static pods tolerate every NoExecute taint: nothing may evict them.
        let tolerate_no_execute = Toleration {
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            ..Default::default()
        };
        let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
        if !tolerations.contains(&tolerate_no_execute) {
            tolerations.push(tolerate_no_execute);
        }
    }
    Ok(StaticPod {
        pod,
        file: file.to_path_buf(),
    })
}

/// The UID of a static pod: a hash of the defaulted manifest, the node and the file, so it
/// is the same on every read and every restart and changes with any of them. Formatted as
/// a UUID (kubelet uses the bare hex of an MD5).
fn content_uid(pod: &Pod, file: &Path, node_name: &str) -> Result<String, Problem> {
    // k8s-openapi serializes fields in a fixed order and maps sorted, so this is canonical.
    let content = serde_json::to_vec(pod)
        .map_err(|err| Problem::new("", format!("cannot serialize the pod: {err}")))?;
    let mut hasher = Sha256::new();
    hasher.update(&content);
    hasher.update(b"\0host:");
    hasher.update(node_name.as_bytes());
    hasher.update(b"\0file:");
    hasher.update(file.as_os_str().as_encoded_bytes());
    let hex = hex::encode(&hasher.finalize()[..16]);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// Now, as kubelet writes `kubernetes.io/config.seen`: RFC 3339 with nanoseconds, UTC.
fn now_rfc3339() -> String {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX);
    let nanoseconds = i32::try_from(since_epoch.subsec_nanos()).unwrap_or_default();
    // Fails only for clocks set past the year 9999.
    Timestamp::new(seconds, nanoseconds)
        .unwrap_or(Timestamp::MAX)
        .to_string()
}

/// kubectl reads YAML 1.1, where an unquoted `0644` is octal; serde_yaml reads YAML 1.2,
/// where it is the string "0644". Volume file modes (`defaultMode`, `items[].mode`) are
/// where manifests rely on the octal reading, so such strings under those keys of a pod's
/// volumes become numbers.
fn yaml11_octal_modes(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                let octal = match child {
                    Value::String(s) if key == "mode" || key == "defaultMode" => parse_octal(s),
                    _ => None,
                };
                match octal {
                    Some(mode) => *child = Value::from(mode),
                    None => yaml11_octal_modes(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(yaml11_octal_modes),
        _ => {}
    }
}

fn parse_octal(s: &str) -> Option<u32> {
    let digits = s.strip_prefix('0').filter(|d| !d.is_empty())?;
    if !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(digits, 8).ok()
}

/// Combines the files, in order: the first file to define a pod or object wins, a later
/// definition is an error of the later file.
fn merge(
    listing_error: Option<ManifestError>,
    read: &[(PathBuf, FileManifests)],
) -> (Snapshot, ManifestObjects) {
    let mut snapshot = Snapshot {
        errors: listing_error.into_iter().collect(),
        scanned: true,
        ..Snapshot::default()
    };
    let mut objects = ManifestObjects::default();
    let mut object_files: BTreeMap<&KindKey, &Path> = BTreeMap::new();
    for (file, manifests) in read {
        snapshot.errors.extend(manifests.errors.iter().cloned());
        for (document, static_pod) in &manifests.pods {
            let meta = &static_pod.pod.metadata;
            let namespace = meta.namespace.as_deref().unwrap_or_default();
            let name = meta.name.as_deref().unwrap_or_default();
            let key = format!("{namespace}/{name}");
            if let Some(first) = snapshot.pods.get(&key) {
                let error = duplicate_error(file, *document, "Pod", &key, &first.file);
                snapshot.errors.push(error);
            } else {
                snapshot.pods.insert(key, static_pod.clone());
            }
        }
        for (document, key, object) in &manifests.objects {
            if let Some(first) = object_files.get(key) {
                let (kind, what) = key;
                snapshot.errors.push(duplicate_error(
                    file,
                    *document,
                    kind,
                    &what.to_string(),
                    first,
                ));
            } else {
                object_files.insert(key, file);
                objects.push(object);
            }
        }
    }
    (snapshot, objects)
}

fn duplicate_error(
    file: &Path,
    document: Option<usize>,
    kind: &str,
    key: &str,
    first: &Path,
) -> ManifestError {
    ManifestError {
        file: file.to_path_buf(),
        document,
        field: "metadata.name".into(),
        message: format!(
            "duplicate value {key:?}: a {kind} of that name is already defined in {}",
            first.display()
        ),
    }
}
