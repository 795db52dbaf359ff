//! The labels and annotations kubelet puts on sandboxes and containers (`labels.go`), by
//! which it finds them again after a restart, the container hash, and port mappings.

use std::collections::HashMap;
use std::net::IpAddr;

use bosun_cri::api;
use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod};
use sha2::{Digest, Sha256};

pub const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
pub const POD_UID_LABEL: &str = "io.kubernetes.pod.uid";
pub const CONTAINER_NAME_LABEL: &str = "io.kubernetes.container.name";

pub const CONTAINER_HASH_ANNOTATION: &str = "io.kubernetes.container.hash";
pub const RESTART_COUNT_ANNOTATION: &str = "io.kubernetes.container.restartCount";
pub const TERMINATION_MESSAGE_PATH_ANNOTATION: &str =
    "io.kubernetes.container.terminationMessagePath";
pub const TERMINATION_MESSAGE_POLICY_ANNOTATION: &str =
    "io.kubernetes.container.terminationMessagePolicy";
pub const DELETION_GRACE_PERIOD_ANNOTATION: &str = "io.kubernetes.pod.deletionGracePeriod";
pub const TERMINATION_GRACE_PERIOD_ANNOTATION: &str = "io.kubernetes.pod.terminationGracePeriod";
pub const PRE_STOP_HANDLER_ANNOTATION: &str = "io.kubernetes.container.preStopHandler";
pub const CONTAINER_PORTS_ANNOTATION: &str = "io.kubernetes.container.ports";

/// API defaults, for a container the source has not defaulted.
const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
const DEFAULT_TERMINATION_MESSAGE_POLICY: &str = "File";

fn pod_identity_labels(pod: &Pod) -> [(&'static str, String); 3] {
    let metadata = &pod.metadata;
    [
        (POD_NAME_LABEL, metadata.name.clone().unwrap_or_default()),
        (
            POD_NAMESPACE_LABEL,
            metadata.namespace.clone().unwrap_or_default(),
        ),
        (POD_UID_LABEL, metadata.uid.clone().unwrap_or_default()),
    ]
}

/// The sandbox's labels: the pod's, then its name, namespace and UID, which win over any
/// pod label of the same key.
pub(crate) fn sandbox_labels(pod: &Pod) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = pod
        .metadata
        .labels
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (key, value) in pod_identity_labels(pod) {
        labels.insert(key.to_owned(), value);
    }
    labels
}

/// The sandbox's annotations: the pod's.
pub(crate) fn sandbox_annotations(pod: &Pod) -> HashMap<String, String> {
    pod.metadata
        .annotations
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The container's labels: its pod's name, namespace and UID and its own name (not the
/// pod's labels).
pub(crate) fn container_labels(pod: &Pod, container: &Container) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = pod_identity_labels(pod)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    labels.insert(CONTAINER_NAME_LABEL.to_owned(), container.name.clone());
    labels
}

/// The container's annotations: its hash and restart count, its termination message path
/// and policy, the pod's grace periods, its preStop handler and its ports, as JSON.
pub(crate) fn container_annotations(
    pod: &Pod,
    container: &Container,
    restart_count: u32,
) -> HashMap<String, String> {
    let mut annotations = HashMap::from([
        (
            CONTAINER_HASH_ANNOTATION.to_owned(),
            container_hash(container),
        ),
        (
            RESTART_COUNT_ANNOTATION.to_owned(),
            restart_count.to_string(),
        ),
        (
            TERMINATION_MESSAGE_PATH_ANNOTATION.to_owned(),
            container
                .termination_message_path
                .clone()
                .unwrap_or_else(|| DEFAULT_TERMINATION_MESSAGE_PATH.to_owned()),
        ),
        (
            TERMINATION_MESSAGE_POLICY_ANNOTATION.to_owned(),
            container
                .termination_message_policy
                .clone()
                .unwrap_or_else(|| DEFAULT_TERMINATION_MESSAGE_POLICY.to_owned()),
        ),
    ]);
    if let Some(seconds) = pod.metadata.deletion_grace_period_seconds {
        annotations.insert(
            DELETION_GRACE_PERIOD_ANNOTATION.to_owned(),
            seconds.to_string(),
        );
    }
    if let Some(seconds) = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
    {
        annotations.insert(
            TERMINATION_GRACE_PERIOD_ANNOTATION.to_owned(),
            seconds.to_string(),
        );
    }
    let pre_stop = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref());
    // Like kubelet, a handler that cannot be encoded is left out rather than failing the
    // container (serializing these types cannot actually fail).
    if let Some(json) = pre_stop.and_then(|handler| serde_json::to_string(handler).ok()) {
        annotations.insert(PRE_STOP_HANDLER_ANNOTATION.to_owned(), json);
    }
    if let Some(ports) = container.ports.as_ref().filter(|p| !p.is_empty()) {
        annotations.insert(CONTAINER_PORTS_ANNOTATION.to_owned(), ports_json(ports));
    }
    annotations
}

/// The ports as Go's `json.Marshal([]v1.ContainerPort)` writes them, field for field:
/// `name`, `hostPort`, `containerPort`, `protocol`, `hostIP`, empty ones omitted.
/// (k8s-openapi would sort the keys; kubelet readers expect Go's order.)
fn ports_json(ports: &[ContainerPort]) -> String {
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    let entries: Vec<String> = ports
        .iter()
        .map(|port| {
            let mut fields = Vec::new();
            if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
                fields.push(format!("\"name\":{}", quote(name)));
            }
            if let Some(host_port) = port.host_port.filter(|p| *p != 0) {
                fields.push(format!("\"hostPort\":{host_port}"));
            }
            fields.push(format!("\"containerPort\":{}", port.container_port));
            if let Some(protocol) = port.protocol.as_deref().filter(|p| !p.is_empty()) {
                fields.push(format!("\"protocol\":{}", quote(protocol)));
            }
            if let Some(host_ip) = port.host_ip.as_deref().filter(|ip| !ip.is_empty()) {
                fields.push(format!("\"hostIP\":{}", quote(host_ip)));
            }
            format!("{{{}}}", fields.join(","))
        })
        .collect();
    format!("[{}]", entries.join(","))
}

/// A stable digest of the whole container spec: any change to it changes the hash, which is
/// how a changed container is told apart from the running one and restarted.
///
/// kubelet hashes only `name` and `image` (FNV-32a), because the API server lets nothing
/// else of a running pod's containers change; bosun's manifest source can change anything in
/// place, so the whole spec counts here (as in kubelet before 1.31). The digest is SHA-256
/// of the container's JSON (fields in a fixed order, maps sorted), first 16 hex digits.
pub fn container_hash(container: &Container) -> String {
    // Encoding a k8s-openapi struct cannot fail; `Debug` output, also deterministic, stands
    // in rather than panicking if it ever did.
    let encoded =
        serde_json::to_vec(container).unwrap_or_else(|_| format!("{container:?}").into_bytes());
    let digest = Sha256::digest(&encoded);
    hex::encode(&digest[..8])
}

/// The sandbox's port mappings (kubelet's `MakePortMappings` over the regular containers):
/// every declared port, with or without a host port (the runtime maps only those that have
/// one), skipping a repeat of a port name within a container. A port without a name is
/// named after its family, protocol, host IP and ports for that check.
pub(crate) fn port_mappings(pod: &Pod) -> Vec<api::PortMapping> {
    let mut mappings = Vec::new();
    for container in pod.spec.iter().flat_map(|s| s.containers.iter()) {
        let mut names = Vec::new();
        for port in container.ports.iter().flatten() {
            let protocol = port.protocol.as_deref().unwrap_or("TCP");
            let host_ip = port.host_ip.clone().unwrap_or_default();
            let host_port = port.host_port.unwrap_or(0);
            let name = match port.name.as_deref().filter(|n| !n.is_empty()) {
                Some(name) => name.to_owned(),
                None => {
                    let family = match host_ip.parse::<IpAddr>() {
                        _ if host_ip.is_empty() => "any",
                        Ok(ip) if ip.is_ipv6() => "v6",
                        _ => "v4",
                    };
                    format!(
                        "{family}-{protocol}-{host_ip}:{}:{host_port}",
                        port.container_port
                    )
                }
            };
            if names.contains(&name) {
                continue;
            }
            names.push(name);
            mappings.push(api::PortMapping {
                protocol: runtime_protocol(protocol) as i32,
                container_port: port.container_port,
                host_port,
                host_ip,
            });
        }
    }
    mappings
}

/// TCP, UDP and SCTP map to themselves; anything else, as in kubelet, to TCP.
fn runtime_protocol(protocol: &str) -> api::Protocol {
    match protocol {
        "UDP" => api::Protocol::Udp,
        "SCTP" => api::Protocol::Sctp,
        _ => api::Protocol::Tcp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_json_follows_go_field_order() {
        let ports = [
            ContainerPort {
                name: Some("http".into()),
                container_port: 80,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                host_port: Some(5353),
                container_port: 53,
                protocol: Some("UDP".into()),
                host_ip: Some("127.0.0.1".into()),
                ..Default::default()
            },
        ];
        assert_eq!(
            ports_json(&ports),
            r#"[{"name":"http","containerPort":80,"protocol":"TCP"},{"hostPort":5353,"containerPort":53,"protocol":"UDP","hostIP":"127.0.0.1"}]"#
        );
    }
}
