//! The objects a pod refers to by name: the ConfigMaps and Secrets of its volumes (direct and
//! projected), of its containers' environment (`configMapKeyRef`, `secretKeyRef`, `envFrom`)
//! and of its `imagePullSecrets`. Kubelet's configmap and secret managers register exactly
//! these (`podutil.VisitPodConfigmapNames`, `VisitPodSecretNames`).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, Pod};

/// The kind of a referenced object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefKind {
    ConfigMap,
    Secret,
}

impl RefKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefKind::ConfigMap => "ConfigMap",
            RefKind::Secret => "Secret",
        }
    }
}

/// An object a pod refers to: kind, namespace (the pod's) and name.
pub type Reference = (RefKind, String, String);

/// Every object `pod` refers to, each once.
pub fn references(pod: &Pod) -> BTreeSet<Reference> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = BTreeSet::new();
    let mut add = |kind: RefKind, name: &str| {
        if !name.is_empty() {
            out.insert((kind, namespace.to_owned(), name.to_owned()));
        }
    };
    let Some(spec) = &pod.spec else {
        return out;
    };
    for secret in spec.image_pull_secrets.iter().flatten() {
        add(RefKind::Secret, &secret.name);
    }
    for volume in spec.volumes.iter().flatten() {
        if let Some(config_map) = &volume.config_map {
            add(RefKind::ConfigMap, &config_map.name);
        }
        if let Some(name) = volume
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
        {
            add(RefKind::Secret, name);
        }
        for source in volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
        {
            if let Some(config_map) = &source.config_map {
                add(RefKind::ConfigMap, &config_map.name);
            }
            if let Some(secret) = &source.secret {
                add(RefKind::Secret, &secret.name);
            }
        }
    }
    let containers: Vec<&Container> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .collect();
    for container in containers {
        for source in container.env_from.iter().flatten() {
            if let Some(reference) = &source.config_map_ref {
                add(RefKind::ConfigMap, &reference.name);
            }
            if let Some(reference) = &source.secret_ref {
                add(RefKind::Secret, &reference.name);
            }
        }
        for var in container.env.iter().flatten() {
            let Some(from) = &var.value_from else {
                continue;
            };
            if let Some(key) = &from.config_map_key_ref {
                add(RefKind::ConfigMap, &key.name);
            }
            if let Some(key) = &from.secret_key_ref {
                add(RefKind::Secret, &key.name);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_environment_and_pull_secrets_are_found_once() {
        let pod: Pod = serde_yaml::from_str(
            "metadata: {name: p, namespace: ns}
spec:
  imagePullSecrets: [{name: pull}]
  volumes:
  - {name: a, configMap: {name: conf}}
  - {name: b, secret: {secretName: token}}
  - name: c
    projected:
      sources: [{configMap: {name: conf}}, {secret: {name: more}}]
  initContainers:
  - name: i
    envFrom: [{configMapRef: {name: init-env}}]
  containers:
  - name: app
    env:
    - {name: X, valueFrom: {secretKeyRef: {name: creds, key: x}}}
    - {name: Y, valueFrom: {configMapKeyRef: {name: conf, key: y}}}
",
        )
        .expect("a pod");
        let found: Vec<String> = references(&pod)
            .into_iter()
            .map(|(kind, ns, name)| format!("{}/{ns}/{name}", kind.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                "ConfigMap/ns/conf",
                "ConfigMap/ns/init-env",
                "Secret/ns/creds",
                "Secret/ns/more",
                "Secret/ns/pull",
                "Secret/ns/token",
            ]
        );
    }
}
