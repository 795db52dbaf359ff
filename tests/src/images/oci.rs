//! Writing and reading OCI image layout archives, byte for byte reproducibly: tar entries are
//! sorted and carry mtime 0, uid/gid 0 and fixed modes; gzip carries no name and mtime 0; JSON
//! documents are serialized from structs, so their keys always come in the same order.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::{Compression, GzBuilder};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ImageArchive, ImageError};

pub(crate) const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub(crate) const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The annotation containerd reads to name an image it imports from an index.
pub(crate) const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
pub(crate) const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// One entry of a tar archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Relative path without a leading `/` and without a trailing `/`.
    pub path: String,
    pub mode: u32,
    pub kind: EntryKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EntryKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

impl Entry {
    pub fn dir(path: &str, mode: u32) -> Self {
        Self {
            path: path.to_owned(),
            mode,
            kind: EntryKind::Dir,
        }
    }

    pub fn file(path: &str, mode: u32, data: Vec<u8>) -> Self {
        Self {
            path: path.to_owned(),
            mode,
            kind: EntryKind::File(data),
        }
    }

    pub fn symlink(path: &str, target: &str) -> Self {
        Self {
            path: path.to_owned(),
            mode: 0o777,
            kind: EntryKind::Symlink(target.to_owned()),
        }
    }
}

/// Writes `entries` as a ustar archive, sorted by path so that parents precede their children
/// and the bytes do not depend on the order the caller listed them in.
pub(crate) fn tar_bytes(mut entries: Vec<Entry>) -> std::io::Result<Vec<u8>> {
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let mut builder = tar::Builder::new(Vec::new());
    for entry in &entries {
        let mut header = tar::Header::new_ustar();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mode(entry.mode);
        let data: &[u8] = match &entry.kind {
            EntryKind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_path(format!("{}/", entry.path))?;
                header.set_size(0);
                &[]
            }
            EntryKind::File(data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_path(&entry.path)?;
                header.set_size(data.len() as u64);
                data
            }
            EntryKind::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_path(&entry.path)?;
                header.set_link_name(target)?;
                header.set_size(0);
                &[]
            }
        };
        header.set_cksum();
        builder.append(&header, data)?;
    }
    builder.into_inner()
}

pub(crate) fn gzip_bytes(data: &[u8]) -> std::io::Result<Vec<u8>> {
    // No file name and mtime 0 in the gzip header (what `gzip -n` does).
    let mut encoder: GzEncoder<Vec<u8>> = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::default());
    encoder.write_all(data)?;
    encoder.finish()
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

pub(crate) fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    fn of(media_type: &str, blob: &[u8]) -> Self {
        Self {
            media_type: media_type.to_owned(),
            digest: digest_of(blob),
            size: blob.len() as u64,
            annotations: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Index {
    pub schema_version: u32,
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    pub schema_version: u32,
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ImageConfig {
    pub architecture: String,
    pub os: String,
    pub config: ContainerConfig,
    pub rootfs: RootFs,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ContainerConfig {
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    pub working_dir: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciLayout {
    image_layout_version: String,
}

/// What goes into a single-layer image.
pub(crate) struct ImageSpec {
    /// The full reference, e.g. `localhost/bosun/pause:1`.
    pub reference: String,
    /// More references to the same image, each its own entry of the index.
    pub aliases: Vec<String>,
    pub layer: Vec<Entry>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
}

/// The tag part of a reference: what follows the last `:` after the last `/`.
pub(crate) fn tag_of(reference: &str) -> &str {
    let name_start = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[name_start..].rfind(':') {
        Some(i) => &reference[name_start + i + 1..],
        None => "latest",
    }
}

fn json(value: &impl Serialize) -> Result<Vec<u8>, ImageError> {
    serde_json::to_vec(value).map_err(ImageError::Json)
}

/// Builds the image layout archive for `spec` in memory; returns the archive's bytes and its
/// manifest and config digests.
pub(crate) fn layout_archive(spec: ImageSpec) -> Result<(Vec<u8>, String, String), ImageError> {
    let layer_tar = tar_bytes(spec.layer).map_err(ImageError::Encode)?;
    let layer = gzip_bytes(&layer_tar).map_err(ImageError::Encode)?;

    let config = json(&ImageConfig {
        architecture: "amd64".to_owned(),
        os: "linux".to_owned(),
        config: ContainerConfig {
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
            ],
            entrypoint: spec.entrypoint,
            cmd: spec.cmd,
            working_dir: "/".to_owned(),
        },
        rootfs: RootFs {
            kind: "layers".to_owned(),
            diff_ids: vec![digest_of(&layer_tar)],
        },
    })?;

    let manifest = json(&Manifest {
        schema_version: 2,
        media_type: MEDIA_TYPE_MANIFEST.to_owned(),
        config: Descriptor::of(MEDIA_TYPE_CONFIG, &config),
        layers: vec![Descriptor::of(MEDIA_TYPE_LAYER_GZIP, &layer)],
    })?;

    // One entry of the index per name, all of the one manifest: `ctr images import` makes
    // an image of each.
    let manifests = std::iter::once(&spec.reference)
        .chain(&spec.aliases)
        .map(|reference| {
            let mut descriptor = Descriptor::of(MEDIA_TYPE_MANIFEST, &manifest);
            descriptor
                .annotations
                .insert(ANNOTATION_CONTAINERD_NAME.to_owned(), reference.clone());
            descriptor
                .annotations
                .insert(ANNOTATION_REF_NAME.to_owned(), tag_of(reference).to_owned());
            descriptor
        })
        .collect();
    let index = json(&Index {
        schema_version: 2,
        media_type: MEDIA_TYPE_INDEX.to_owned(),
        manifests,
    })?;
    let oci_layout = json(&OciLayout {
        image_layout_version: "1.0.0".to_owned(),
    })?;

    let manifest_digest = digest_of(&manifest);
    let config_digest = digest_of(&config);
    let mut entries = vec![
        Entry::dir("blobs", 0o755),
        Entry::dir("blobs/sha256", 0o755),
        Entry::file("oci-layout", 0o644, oci_layout),
        Entry::file("index.json", 0o644, index),
    ];
    for blob in [config, manifest, layer] {
        entries.push(Entry::file(
            &format!("blobs/sha256/{}", sha256_hex(&blob)),
            0o644,
            blob,
        ));
    }
    let archive = tar_bytes(entries).map_err(ImageError::Encode)?;
    Ok((archive, manifest_digest, config_digest))
}

/// How much of an archive [`read_layout_archive`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// Every blob against its descriptor, and each layer against its diff_id.
    Everything,
    /// The index, manifest and config only: enough to name the image, and cheap.
    Documents,
}

/// Reads an image layout archive back and checks that it is whole: index.json names exactly
/// one manifest, and the manifest, its config and (with [`Check::Everything`]) its layers are
/// present with the digests and sizes their descriptors claim, each layer's uncompressed
/// digest being its diff_id.
pub(crate) fn read_layout_archive(path: &Path, check: Check) -> Result<ImageArchive, ImageError> {
    let invalid = |reason: String| ImageError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| ImageError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut archive = tar::Archive::new(bytes.as_slice());
    let entries = archive.entries().map_err(|source| ImageError::Read {
        path: path.to_owned(),
        source,
    })?;
    for entry in entries {
        let mut entry = entry.map_err(|source| ImageError::Read {
            path: path.to_owned(),
            source,
        })?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = entry
            .path()
            .map_err(|source| ImageError::Read {
                path: path.to_owned(),
                source,
            })?
            .to_string_lossy()
            .into_owned();
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|source| ImageError::Read {
                path: path.to_owned(),
                source,
            })?;
        files.insert(name, data);
    }

    let blob = |descriptor: &Descriptor| -> Result<&Vec<u8>, ImageError> {
        let hex = descriptor
            .digest
            .strip_prefix("sha256:")
            .ok_or_else(|| invalid(format!("digest {} is not sha256", descriptor.digest)))?;
        let data = files
            .get(&format!("blobs/sha256/{hex}"))
            .ok_or_else(|| invalid(format!("blob {} is missing", descriptor.digest)))?;
        if digest_of(data) != descriptor.digest || data.len() as u64 != descriptor.size {
            return Err(invalid(format!(
                "blob {} does not match its descriptor",
                descriptor.digest
            )));
        }
        Ok(data)
    };

    if !files.contains_key("oci-layout") {
        return Err(invalid("no oci-layout file".to_owned()));
    }
    let index: Index = serde_json::from_slice(
        files
            .get("index.json")
            .ok_or_else(|| invalid("no index.json".to_owned()))?,
    )
    .map_err(|e| invalid(format!("index.json: {e}")))?;
    // One image under one or more names: every entry of the index is the same manifest.
    let Some(manifest_descriptor) = index.manifests.first() else {
        return Err(invalid("index.json names no manifest".to_owned()));
    };
    let mut names = Vec::new();
    for descriptor in &index.manifests {
        if descriptor.digest != manifest_descriptor.digest {
            return Err(invalid(format!(
                "index.json names two manifests, {} and {}",
                manifest_descriptor.digest, descriptor.digest
            )));
        }
        let reference = descriptor
            .annotations
            .get(ANNOTATION_CONTAINERD_NAME)
            .ok_or_else(|| invalid(format!("a manifest has no {ANNOTATION_CONTAINERD_NAME}")))?
            .clone();
        if descriptor
            .annotations
            .get(ANNOTATION_REF_NAME)
            .map(String::as_str)
            != Some(tag_of(&reference))
        {
            return Err(invalid(format!(
                "{ANNOTATION_REF_NAME} does not match {reference}"
            )));
        }
        names.push(reference);
    }
    let reference = names.remove(0);
    let manifest: Manifest = serde_json::from_slice(blob(manifest_descriptor)?)
        .map_err(|e| invalid(format!("manifest: {e}")))?;
    let config: ImageConfig = serde_json::from_slice(blob(&manifest.config)?)
        .map_err(|e| invalid(format!("config: {e}")))?;
    if manifest.layers.len() != config.rootfs.diff_ids.len() {
        return Err(invalid("layers and diff_ids differ in number".to_owned()));
    }
    let layers_to_check = match check {
        Check::Everything => manifest.layers.len(),
        Check::Documents => 0,
    };
    for (layer, diff_id) in manifest
        .layers
        .iter()
        .zip(&config.rootfs.diff_ids)
        .take(layers_to_check)
    {
        let mut uncompressed = Vec::new();
        flate2::read::GzDecoder::new(blob(layer)?.as_slice())
            .read_to_end(&mut uncompressed)
            .map_err(|e| invalid(format!("layer {}: {e}", layer.digest)))?;
        if &digest_of(&uncompressed) != diff_id {
            return Err(invalid(format!(
                "layer {} does not match diff_id {diff_id}",
                layer.digest
            )));
        }
    }
    Ok(ImageArchive {
        path: path.to_owned(),
        reference,
        aliases: names,
        manifest_digest: manifest_descriptor.digest.clone(),
        config_digest: manifest.config.digest.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_is_the_part_after_the_last_colon_of_the_last_path_component() {
        assert_eq!(tag_of("localhost/bosun/pause:1"), "1");
        assert_eq!(tag_of("localhost:5000/bosun/pause"), "latest");
        assert_eq!(tag_of("localhost:5000/pause:3.9"), "3.9");
    }

    #[test]
    fn tar_entries_are_sorted_and_carry_no_host_metadata() {
        let bytes = tar_bytes(vec![
            Entry::file("b/file", 0o600, b"x".to_vec()),
            Entry::symlink("a", "b/file"),
            Entry::dir("b", 0o1777),
        ])
        .unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let seen: Vec<(String, u32, u64, u64, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                ("a".to_owned(), 0o777, 0, 0, 0),
                ("b/".to_owned(), 0o1777, 0, 0, 0),
                ("b/file".to_owned(), 0o600, 0, 0, 0),
            ]
        );
    }

    #[test]
    fn gzip_header_has_no_name_and_no_mtime() {
        let gz = gzip_bytes(b"hello").unwrap();
        // RFC 1952: ID1 ID2 CM FLG MTIME(4) XFL OS
        assert_eq!(&gz[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(gz[3], 0, "no FNAME/FCOMMENT/FEXTRA flags");
        assert_eq!(&gz[4..8], &[0, 0, 0, 0]);
    }
}
