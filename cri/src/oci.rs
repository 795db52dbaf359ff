//! Reading an OCI image layout (the unpacked form of an OCI archive): its index, the
//! manifests it names, and the blobs they reference. Pure: no runtime involved.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The annotation containerd reads for an image's full name.
pub const ANNOTATION_CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";
/// The OCI annotation for a reference name (often just the tag).
pub const ANNOTATION_OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index (also the layout's `index.json`).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// An image manifest.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// What is wrong with an archive's layout. Not retryable: the archive must be fixed.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON for {what}: {source}")]
    Json {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: unsupported digest {digest:?} (only sha256 is supported)")]
    Digest { path: PathBuf, digest: String },
    #[error("blob {digest}: content hashes to {actual}")]
    DigestMismatch { digest: String, actual: String },
    #[error("blob {digest}: size is {actual}, the descriptor says {expected}")]
    SizeMismatch {
        digest: String,
        expected: i64,
        actual: u64,
    },
    #[error("image {digest} in the archive has no name: set the {ANNOTATION_CONTAINERD_IMAGE_NAME} annotation, or a full reference in {ANNOTATION_OCI_REF_NAME}")]
    Unnamed { digest: String },
    #[error("the archive's index.json names no images")]
    Empty,
}

/// An OCI layout unpacked in a directory.
pub struct Layout {
    root: PathBuf,
}

/// One image the layout's index names: its name and the descriptor to store it under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedImage {
    pub name: String,
    pub target: Descriptor,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    /// The images named in `index.json`, each with its target descriptor.
    pub fn images(&self) -> Result<Vec<NamedImage>, LayoutError> {
        let index: Index = self.read_json(&self.root.join("index.json"), "an OCI index")?;
        if index.manifests.is_empty() {
            return Err(LayoutError::Empty);
        }
        index
            .manifests
            .into_iter()
            .map(|target| {
                let name = image_name(&target.annotations).ok_or_else(|| LayoutError::Unnamed {
                    digest: target.digest.clone(),
                })?;
                Ok(NamedImage { name, target })
            })
            .collect()
    }

    /// Every descriptor reachable from `root`, children before parents, so that writing
    /// them in order never leaves a parent that points at missing content.
    pub fn closure(&self, root: &Descriptor) -> Result<Vec<Descriptor>, LayoutError> {
        let mut out = Vec::new();
        self.walk(root, &mut out)?;
        Ok(out)
    }

    fn walk(&self, desc: &Descriptor, out: &mut Vec<Descriptor>) -> Result<(), LayoutError> {
        for child in self.children(desc)? {
            self.walk(&child, out)?;
        }
        if !out.iter().any(|d| d.digest == desc.digest) {
            out.push(desc.clone());
        }
        Ok(())
    }

    /// The descriptors a manifest or index refers to; none for configs and layers.
    pub fn children(&self, desc: &Descriptor) -> Result<Vec<Descriptor>, LayoutError> {
        let path = self.blob_path(&desc.digest)?;
        match desc.media_type.as_str() {
            MEDIA_TYPE_OCI_INDEX | MEDIA_TYPE_DOCKER_MANIFEST_LIST => {
                let index: Index = self.read_json(&path, "an image index")?;
                Ok(index.manifests)
            }
            MEDIA_TYPE_OCI_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST => {
                let manifest: Manifest = self.read_json(&path, "an image manifest")?;
                let mut children = vec![manifest.config];
                children.extend(manifest.layers);
                Ok(children)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// The garbage-collection labels containerd expects on a blob, so that the blobs it
    /// references live as long as it does.
    pub fn gc_labels(&self, desc: &Descriptor) -> Result<BTreeMap<String, String>, LayoutError> {
        let mut labels = BTreeMap::new();
        let path = self.blob_path(&desc.digest)?;
        match desc.media_type.as_str() {
            MEDIA_TYPE_OCI_INDEX | MEDIA_TYPE_DOCKER_MANIFEST_LIST => {
                let index: Index = self.read_json(&path, "an image index")?;
                for (i, m) in index.manifests.iter().enumerate() {
                    labels.insert(
                        format!("containerd.io/gc.ref.content.m.{i}"),
                        m.digest.clone(),
                    );
                }
            }
            MEDIA_TYPE_OCI_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST => {
                let manifest: Manifest = self.read_json(&path, "an image manifest")?;
                labels.insert(
                    "containerd.io/gc.ref.content.config".to_owned(),
                    manifest.config.digest,
                );
                for (i, l) in manifest.layers.iter().enumerate() {
                    labels.insert(
                        format!("containerd.io/gc.ref.content.l.{i}"),
                        l.digest.clone(),
                    );
                }
            }
            _ => {}
        }
        Ok(labels)
    }

    /// Where a blob lives in the layout: `blobs/<algorithm>/<hex>`.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, LayoutError> {
        match digest.split_once(':') {
            Some(("sha256", hex))
                if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Ok(self.root.join("blobs").join("sha256").join(hex))
            }
            _ => Err(LayoutError::Digest {
                path: self.root.join("index.json"),
                digest: digest.to_owned(),
            }),
        }
    }

    /// Checks a blob's size and sha256 against its descriptor.
    pub fn verify(&self, desc: &Descriptor) -> Result<PathBuf, LayoutError> {
        use sha2::{Digest, Sha256};
        let path = self.blob_path(&desc.digest)?;
        let read_err = |source| LayoutError::Read {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::File::open(&path).map_err(read_err)?;
        let mut hasher = Sha256::new();
        let size = std::io::copy(&mut file, &mut hasher).map_err(read_err)?;
        if i64::try_from(size).ok() != Some(desc.size) {
            return Err(LayoutError::SizeMismatch {
                digest: desc.digest.clone(),
                expected: desc.size,
                actual: size,
            });
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != desc.digest {
            return Err(LayoutError::DigestMismatch {
                digest: desc.digest.clone(),
                actual,
            });
        }
        Ok(path)
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &Path,
        what: &'static str,
    ) -> Result<T, LayoutError> {
        let bytes = std::fs::read(path).map_err(|source| LayoutError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| LayoutError::Json {
            path: path.to_path_buf(),
            what,
            source,
        })
    }
}

/// The name to store an image under: containerd's annotation, else the OCI ref name when it
/// is a full reference (a bare tag such as `1.0` names nothing).
fn image_name(annotations: &BTreeMap<String, String>) -> Option<String> {
    if let Some(name) = annotations.get(ANNOTATION_CONTAINERD_IMAGE_NAME) {
        return Some(name.clone());
    }
    annotations
        .get(ANNOTATION_OCI_REF_NAME)
        .filter(|r| (r.contains('/') || r.contains(':')) && !r.starts_with(':'))
        .map(|r| crate::reference::normalize(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn put_blob(root: &Path, bytes: &[u8]) -> String {
        let hex = hex::encode(Sha256::digest(bytes));
        let dir = root.join("blobs/sha256");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    }

    fn desc(media_type: &str, digest: &str, size: usize) -> serde_json::Value {
        serde_json::json!({"mediaType": media_type, "digest": digest, "size": size})
    }

    #[test]
    fn walks_an_image_children_first_with_gc_labels() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let layer = b"layer-bytes".to_vec();
        let layer_d = put_blob(root, &layer);
        let config = br#"{"architecture":"amd64"}"#.to_vec();
        let config_d = put_blob(root, &config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "config": desc("application/vnd.oci.image.config.v1+json", &config_d, config.len()),
            "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", &layer_d, layer.len())],
        }))
        .unwrap();
        let manifest_d = put_blob(root, &manifest);
        let mut m = desc(MEDIA_TYPE_OCI_MANIFEST, &manifest_d, manifest.len());
        m["annotations"] = serde_json::json!({ANNOTATION_CONTAINERD_IMAGE_NAME: "localhost/x:1"});
        std::fs::write(
            root.join("index.json"),
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [m]})).unwrap(),
        )
        .unwrap();

        let layout = Layout::new(root);
        let images = layout.images().unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].name, "localhost/x:1");
        let closure = layout.closure(&images[0].target).unwrap();
        let digests: Vec<_> = closure.iter().map(|d| d.digest.as_str()).collect();
        assert_eq!(
            digests,
            [config_d.as_str(), layer_d.as_str(), manifest_d.as_str()]
        );
        for d in &closure {
            layout.verify(d).unwrap();
        }
        let labels = layout.gc_labels(&images[0].target).unwrap();
        assert_eq!(labels["containerd.io/gc.ref.content.config"], config_d);
        assert_eq!(labels["containerd.io/gc.ref.content.l.0"], layer_d);
    }

    #[test]
    fn verify_catches_tampered_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let digest = put_blob(dir.path(), b"abc");
        let layout = Layout::new(dir.path());
        let mut d = Descriptor {
            media_type: "x".into(),
            digest: digest.clone(),
            size: 3,
            annotations: BTreeMap::new(),
        };
        layout.verify(&d).unwrap();
        d.size = 4;
        assert!(matches!(
            layout.verify(&d),
            Err(LayoutError::SizeMismatch { .. })
        ));
        let hex = digest.trim_start_matches("sha256:");
        std::fs::write(dir.path().join("blobs/sha256").join(hex), b"abd").unwrap();
        d.size = 3;
        assert!(matches!(
            layout.verify(&d),
            Err(LayoutError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn names_come_from_annotations() {
        let mut a = BTreeMap::new();
        assert_eq!(image_name(&a), None);
        a.insert(ANNOTATION_OCI_REF_NAME.to_owned(), "1.0".to_owned());
        assert_eq!(image_name(&a), None, "a bare tag is not a name");
        a.insert(ANNOTATION_OCI_REF_NAME.to_owned(), "busybox:1".to_owned());
        assert_eq!(
            image_name(&a).as_deref(),
            Some("docker.io/library/busybox:1")
        );
        a.insert(
            ANNOTATION_CONTAINERD_IMAGE_NAME.to_owned(),
            "localhost/a:b".to_owned(),
        );
        assert_eq!(image_name(&a).as_deref(), Some("localhost/a:b"));
    }

    #[test]
    fn refuses_bad_digests() {
        let layout = Layout::new("/nonexistent");
        for bad in ["sha512:00", "sha256:../../etc/passwd", "nodigest"] {
            assert!(
                matches!(layout.blob_path(bad), Err(LayoutError::Digest { .. })),
                "{bad}"
            );
        }
    }
}
