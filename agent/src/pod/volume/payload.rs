//! The files of configMap, secret, downwardAPI and projected volumes (kubelet's
//! `configmap.MakePayload`, `secret.MakePayload`, `downwardapi.CollectData` and the
//! projected plugin's `collectData`), computed from the pod and the objects it refers to.
//! Pure: the caller writes them with the atomic writer.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    DownwardAPIVolumeFile, KeyToPath, Pod, ProjectedVolumeSource, ServiceAccountTokenProjection,
};

use super::atomic_writer::{FileProjection, Payload};
use super::layout::{check_item_path, clean_path, format_mode};
use super::VolumeError;
use crate::pod::references::RefKind;
use crate::store::{ObjectGetter, TokenKey, TokenLookup};

/// The mode of projected files when the volume does not say (the API server's default).
pub(crate) const DEFAULT_MODE: u32 = 0o644;

/// A serviceAccountToken source's `expirationSeconds` when it does not say (the API
/// server's default).
const DEFAULT_TOKEN_EXPIRATION_SECONDS: i64 = 3600;

/// The fieldRef paths a downwardAPI volume file may use.
const SUPPORTED_FIELD_PATHS: &str = "metadata.name, metadata.namespace, metadata.uid, \
    metadata.labels, metadata.annotations, metadata.labels['<KEY>'], \
    metadata.annotations['<KEY>']";

/// Which object a configMap or secret source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ObjectKind {
    ConfigMap,
    Secret,
}

impl ObjectKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::ConfigMap => "ConfigMap",
            Self::Secret => "Secret",
        }
    }
}

/// What the payload of one volume is computed from.
pub(crate) struct Sources<'a> {
    pub pod: &'a Pod,
    pub objects: &'a dyn ObjectGetter,
    /// The volume's name, for errors.
    pub volume: &'a str,
}

/// A configMap or secret source of a volume or projection.
pub(crate) struct KeySource<'a> {
    pub kind: ObjectKind,
    pub name: &'a str,
    pub items: Option<&'a [KeyToPath]>,
    pub optional: bool,
    /// Its field path, `spec.volumes[0].configMap`.
    pub field: String,
}

impl Sources<'_> {
    fn namespace(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or("default")
    }

    fn invalid(&self, field: String, value: impl Into<String>, reason: &str) -> VolumeError {
        VolumeError::Invalid {
            volume: self.volume.to_owned(),
            field,
            value: value.into(),
            reason: reason.to_owned(),
        }
    }

    /// A file mode: `mode` if set, else `default`; between 0 and 0777 as the API requires.
    pub(crate) fn mode(
        &self,
        mode: Option<i32>,
        default: u32,
        field: String,
    ) -> Result<u32, VolumeError> {
        match mode {
            None => Ok(default),
            Some(mode) => u32::try_from(mode)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    self.invalid(
                        field,
                        format_mode(mode),
                        "must be a number between 0 and 0777 (octal), both inclusive",
                    )
                }),
        }
    }

    fn path(&self, path: &str, field: String) -> Result<String, VolumeError> {
        check_item_path(path).map_err(|reason| self.invalid(field, path, reason))?;
        Ok(clean_path(path))
    }

    /// The keys and values of a ConfigMap (`data` and `binaryData`) or Secret (`data`, with
    /// `stringData` merged over it as the API server would), or `None` if there is no such
    /// object.
    fn object_data(
        &self,
        kind: ObjectKind,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, VolumeError> {
        let namespace = self.namespace();
        let ref_kind = match kind {
            ObjectKind::ConfigMap => RefKind::ConfigMap,
            ObjectKind::Secret => RefKind::Secret,
        };
        let not_found = || {
            if self.objects.pending(ref_kind, namespace, name) {
                Err(VolumeError::ObjectPending {
                    volume: self.volume.to_owned(),
                    kind: kind.as_str(),
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
            } else {
                Ok(None)
            }
        };
        let mut data = BTreeMap::new();
        match kind {
            ObjectKind::ConfigMap => {
                let Some(object) = self.objects.config_map(namespace, name) else {
                    return not_found();
                };
                for (key, text) in object.data.iter().flatten() {
                    data.insert(key.clone(), text.clone().into_bytes());
                }
                for (key, bytes) in object.binary_data.iter().flatten() {
                    data.insert(key.clone(), bytes.0.clone());
                }
            }
            ObjectKind::Secret => {
                let Some(object) = self.objects.secret(namespace, name) else {
                    return not_found();
                };
                for (key, bytes) in object.data.iter().flatten() {
                    data.insert(key.clone(), bytes.0.clone());
                }
                for (key, text) in object.string_data.iter().flatten() {
                    data.insert(key.clone(), text.clone().into_bytes());
                }
            }
        }
        Ok(Some(data))
    }

    /// Adds the files of a configMap or secret source to `out`: every key when there are no
    /// `items`, else each item's key at its path. A missing object or key fails unless the
    /// source is optional, in which case it contributes nothing.
    pub(crate) fn project_keys(
        &self,
        source: &KeySource<'_>,
        default_mode: u32,
        out: &mut Payload,
    ) -> Result<(), VolumeError> {
        let Some(data) = self.object_data(source.kind, source.name)? else {
            if source.optional {
                return Ok(());
            }
            return Err(VolumeError::ObjectNotFound {
                volume: self.volume.to_owned(),
                kind: source.kind.as_str(),
                namespace: self.namespace().to_owned(),
                name: source.name.to_owned(),
            });
        };
        let items = source.items.unwrap_or_default();
        if items.is_empty() {
            for (key, bytes) in data {
                let path = check_item_path(&key)
                    .map(|()| clean_path(&key))
                    .map_err(|reason| {
                        let reason = format!(
                            "the keys of {} {:?} become file names, and this one {reason}",
                            source.kind.as_str(),
                            source.name
                        );
                        self.invalid(source.field.clone(), key.clone(), &reason)
                    })?;
                out.insert(
                    path,
                    FileProjection {
                        data: bytes,
                        mode: default_mode,
                    },
                );
            }
            return Ok(());
        }
        for (index, item) in items.iter().enumerate() {
            let field = format!("{}.items[{index}]", source.field);
            let Some(bytes) = data.get(&item.key) else {
                if source.optional {
                    continue;
                }
                return Err(VolumeError::KeyNotFound {
                    volume: self.volume.to_owned(),
                    kind: source.kind.as_str(),
                    namespace: self.namespace().to_owned(),
                    name: source.name.to_owned(),
                    key: item.key.clone(),
                });
            };
            let path = self.path(&item.path, format!("{field}.path"))?;
            let mode = self.mode(item.mode, default_mode, format!("{field}.mode"))?;
            out.insert(
                path,
                FileProjection {
                    data: bytes.clone(),
                    mode,
                },
            );
        }
        Ok(())
    }

    /// Adds the files of downwardAPI items to `out`.
    pub(crate) fn project_downward_api(
        &self,
        items: &[DownwardAPIVolumeFile],
        default_mode: u32,
        field: &str,
        out: &mut Payload,
    ) -> Result<(), VolumeError> {
        for (index, item) in items.iter().enumerate() {
            let field = format!("{field}.items[{index}]");
            let path = self.path(&item.path, format!("{field}.path"))?;
            let mode = self.mode(item.mode, default_mode, format!("{field}.mode"))?;
            let value = match (&item.field_ref, &item.resource_field_ref) {
                (Some(field_ref), _) => {
                    if let Some(version) = field_ref.api_version.as_deref() {
                        if !version.is_empty() && version != "v1" {
                            let reason = "supported values: \"v1\"";
                            let field = format!("{field}.fieldRef.apiVersion");
                            return Err(self.invalid(field, version, reason));
                        }
                    }
                    let path = &field_ref.field_path;
                    pod_field(self.pod, path).ok_or_else(|| {
                        let reason = format!("supported values: {SUPPORTED_FIELD_PATHS}");
                        self.invalid(format!("{field}.fieldRef.fieldPath"), path, &reason)
                    })?
                }
                (None, Some(_)) => {
                    return Err(VolumeError::Unsupported {
                        volume: self.volume.to_owned(),
                        field: format!("{field}.resourceFieldRef"),
                        kind: "downwardAPI resourceFieldRef".into(),
                    });
                }
                (None, None) => {
                    let reason = "must specify one of fieldRef and resourceFieldRef";
                    return Err(self.invalid(field, "", reason));
                }
            };
            out.insert(
                path,
                FileProjection {
                    data: value.into_bytes(),
                    mode,
                },
            );
        }
        Ok(())
    }

    /// Adds the file of a serviceAccountToken source to `out`: a token of the pod's
    /// service account bound to the pod (kubelet's projected plugin with its token manager).
    /// kubelet writes it 0600 when the pod has an fsGroup, which bosun does not apply.
    fn project_token(
        &self,
        projection: &ServiceAccountTokenProjection,
        mode: u32,
        field: &str,
        out: &mut Payload,
    ) -> Result<(), VolumeError> {
        let path = self.path(&projection.path, format!("{field}.path"))?;
        let expiration_seconds = projection
            .expiration_seconds
            .unwrap_or(DEFAULT_TOKEN_EXPIRATION_SECONDS);
        // The API server's validation of the field, for pods that did not pass through it.
        let invalid = match expiration_seconds {
            ..600 => Some("may not specify a duration less than 10 minutes"),
            0x1_0000_0001.. => Some("may not specify a duration larger than 2^32 seconds"),
            _ => None,
        };
        if let Some(reason) = invalid {
            let field = format!("{field}.expirationSeconds");
            return Err(self.invalid(field, expiration_seconds.to_string(), reason));
        }
        let spec = self.pod.spec.as_ref();
        let service_account = spec
            .and_then(|s| {
                s.service_account_name
                    .as_deref()
                    .or(s.service_account.as_deref())
            })
            .filter(|name| !name.is_empty())
            .unwrap_or("default");
        let key = TokenKey {
            namespace: self.namespace().to_owned(),
            service_account: service_account.to_owned(),
            audience: projection.audience.clone().unwrap_or_default(),
            expiration_seconds,
            pod_name: self.pod.metadata.name.clone().unwrap_or_default(),
            pod_uid: self.pod.metadata.uid.clone().unwrap_or_default(),
        };
        let token = match self.objects.service_account_token(&key) {
            TokenLookup::Token(token) => token,
            TokenLookup::Pending => {
                return Err(VolumeError::ObjectPending {
                    volume: self.volume.to_owned(),
                    kind: "a token of ServiceAccount",
                    namespace: key.namespace,
                    name: key.service_account,
                })
            }
            TokenLookup::Failed(message) => {
                return Err(VolumeError::Token {
                    volume: self.volume.to_owned(),
                    namespace: key.namespace,
                    name: key.service_account,
                    message,
                })
            }
            TokenLookup::Unsupported => {
                return Err(VolumeError::Unsupported {
                    volume: self.volume.to_owned(),
                    field: field.to_owned(),
                    kind: "projected serviceAccountToken".to_owned(),
                })
            }
        };
        out.insert(
            path,
            FileProjection {
                data: token.as_bytes().to_vec(),
                mode,
            },
        );
        Ok(())
    }

    /// The files of a projected volume: its sources in order, a later file replacing an
    /// earlier one at the same path.
    pub(crate) fn project_sources(
        &self,
        source: &ProjectedVolumeSource,
        field: &str,
    ) -> Result<Payload, VolumeError> {
        let default_mode = self.mode(
            source.default_mode,
            DEFAULT_MODE,
            format!("{field}.defaultMode"),
        )?;
        let mut out = Payload::new();
        for (index, projection) in source.sources.iter().flatten().enumerate() {
            let field = format!("{field}.sources[{index}]");
            let unsupported = |kind: &str, name: &str| VolumeError::Unsupported {
                volume: self.volume.to_owned(),
                field: format!("{field}.{name}"),
                kind: kind.to_owned(),
            };
            if let Some(config_map) = &projection.config_map {
                let key_source = KeySource {
                    kind: ObjectKind::ConfigMap,
                    name: &config_map.name,
                    items: config_map.items.as_deref(),
                    optional: config_map.optional.unwrap_or(false),
                    field: format!("{field}.configMap"),
                };
                self.project_keys(&key_source, default_mode, &mut out)?;
            } else if let Some(secret) = &projection.secret {
                let key_source = KeySource {
                    kind: ObjectKind::Secret,
                    name: &secret.name,
                    items: secret.items.as_deref(),
                    optional: secret.optional.unwrap_or(false),
                    field: format!("{field}.secret"),
                };
                self.project_keys(&key_source, default_mode, &mut out)?;
            } else if let Some(downward_api) = &projection.downward_api {
                let items = downward_api.items.as_deref().unwrap_or_default();
                let field = format!("{field}.downwardAPI");
                self.project_downward_api(items, default_mode, &field, &mut out)?;
            } else if let Some(token) = &projection.service_account_token {
                let field = format!("{field}.serviceAccountToken");
                self.project_token(token, default_mode, &field, &mut out)?;
            } else if projection.cluster_trust_bundle.is_some() {
                let kind = "projected clusterTrustBundle";
                return Err(unsupported(kind, "clusterTrustBundle"));
            } else if projection.pod_certificate.is_some() {
                return Err(unsupported("projected podCertificate", "podCertificate"));
            } else {
                let reason = "must specify one of configMap, secret, downwardAPI";
                return Err(self.invalid(field, "", reason));
            }
        }
        Ok(out)
    }
}

/// A downwardAPI volume's `fieldRef` value (kubelet's `fieldpath.ExtractFieldPathAsString`
/// restricted to what volumes allow): a missing label or annotation is an empty file.
fn pod_field(pod: &Pod, path: &str) -> Option<String> {
    let metadata = &pod.metadata;
    let labels = || metadata.labels.clone().unwrap_or_default();
    let annotations = || metadata.annotations.clone().unwrap_or_default();
    match path {
        "metadata.name" => return Some(metadata.name.clone().unwrap_or_default()),
        "metadata.namespace" => return Some(metadata.namespace.clone().unwrap_or_default()),
        "metadata.uid" => return Some(metadata.uid.clone().unwrap_or_default()),
        "metadata.labels" => return Some(format_map(&labels())),
        "metadata.annotations" => return Some(format_map(&annotations())),
        _ => {}
    }
    let (map, key) = subscript(path)?;
    let values = match map {
        "metadata.labels" => labels(),
        "metadata.annotations" => annotations(),
        _ => return None,
    };
    Some(values.get(key).cloned().unwrap_or_default())
}

/// `metadata.labels['app']` → (`metadata.labels`, `app`).
fn subscript(path: &str) -> Option<(&str, &str)> {
    let (map, rest) = path.split_once("['")?;
    let key = rest.strip_suffix("']")?;
    Some((map, key))
}

/// Labels or annotations as kubelet writes them (`fieldpath.FormatMap`): `key="value"`
/// lines, sorted by key, values quoted as Go's `%q` does, no trailing newline.
fn format_map(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(key, value)| format!("{key}={}", go_quote(value)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Go's `strconv.Quote`: double quotes; `\a \b \f \n \r \t \v \\ \"` escaped; other
/// non-printable characters as `\xNN`, `\uNNNN` or `\UNNNNNNNN`.
fn go_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c if c.is_ascii_control() => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => {
                let code = c as u32;
                if code <= 0xffff {
                    out.push_str(&format!("\\u{code:04x}"));
                } else {
                    out.push_str(&format!("\\U{code:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_maps_as_kubelet() {
        let map = BTreeMap::from([
            ("b".to_owned(), "two\nlines".to_owned()),
            ("a".to_owned(), "say \"hi\"".to_owned()),
        ]);
        assert_eq!(format_map(&map), "a=\"say \\\"hi\\\"\"\nb=\"two\\nlines\"");
        assert_eq!(format_map(&BTreeMap::new()), "");
        assert_eq!(go_quote("é\u{1}\u{7f}\u{85}"), "\"é\\x01\\x7f\\u0085\"");
    }

    #[test]
    fn reads_subscripted_field_paths() {
        assert_eq!(
            subscript("metadata.labels['app']"),
            Some(("metadata.labels", "app"))
        );
        assert_eq!(subscript("metadata.labels"), None);
        assert_eq!(subscript("metadata.labels['app'"), None);
    }
}
