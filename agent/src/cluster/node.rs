//! The Node object of this node (kubelet's `kubelet_node_status.go` and the node lease
//! controller): registered with kubelet's labels, capacity, addresses and node info, an
//! existing object reconciled rather than refused; its Lease in `kube-node-lease` renewed
//! every 10 s; its status patched when it changes and at least every
//! `nodeStatusReportFrequency` (5 min).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ContainerImage, DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints,
    NodeSpec, NodeStatus, NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use tokio::time::Instant;

use bosun_cri::CriClient;

use super::ClusterError;
use crate::daemon::eviction::{Condition, Pressure};
use crate::daemon::NodeCapacity;

/// The namespace of node leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// kubelet's `nodeLeaseDurationSeconds`.
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// How often the Lease is renewed: a quarter of its duration, as kubelet does.
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
/// kubelet's `nodeStatusUpdateFrequency`: how often the status is computed.
pub const STATUS_UPDATE: Duration = Duration::from_secs(10);
/// kubelet's `nodeStatusReportFrequency`: the longest an unchanged status goes unreported.
pub const STATUS_REPORT: Duration = Duration::from_secs(300);

/// What this node says about itself.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeFacts {
    pub name: String,
    /// `--node-labels`, beside kubelet's own.
    pub labels: BTreeMap<String, String>,
    /// `--register-with-taints`: set when the Node is created, as kubelet does.
    pub taints: Vec<Taint>,
    pub host_ip: String,
    pub capacity: NodeCapacity,
    /// Capacity less reserved resources and hard eviction thresholds.
    pub allocatable: NodeCapacity,
    pub max_pods: usize,
    /// The runtime's name and version, `containerd://1.6.20`.
    pub runtime_version: String,
    /// The port of the node's kubelet API (`daemonEndpoints`).
    pub port: i32,
}

impl NodeFacts {
    /// The Node to create: metadata, taints, and the status to report.
    pub fn node(&self) -> Node {
        let mut labels = self.labels.clone();
        labels.insert("kubernetes.io/hostname".into(), self.name.clone());
        labels.insert("kubernetes.io/os".into(), std::env::consts::OS.into());
        labels.insert("kubernetes.io/arch".into(), arch().into());
        labels.insert("beta.kubernetes.io/os".into(), std::env::consts::OS.into());
        labels.insert("beta.kubernetes.io/arch".into(), arch().into());
        Node {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(labels),
                annotations: Some(BTreeMap::from([(
                    "volumes.kubernetes.io/controller-managed-attach-detach".to_owned(),
                    "true".to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                taints: (!self.taints.is_empty()).then(|| self.taints.clone()),
                ..NodeSpec::default()
            }),
            status: Some(self.status(None, &RuntimeHealth::default(), &Pressure::new())),
        }
    }

    /// The node's status now; `previous` keeps the transition times of conditions that did
    /// not change, `runtime` says whether the runtime and its network are ready, `pressure`
    /// which pressure conditions the eviction manager holds True.
    pub fn status(
        &self,
        previous: Option<&NodeStatus>,
        runtime: &RuntimeHealth,
        pressure: &Pressure,
    ) -> NodeStatus {
        let resources = |of: &NodeCapacity| {
            BTreeMap::from([
                ("cpu".to_owned(), Quantity(format!("{}m", of.cpu_millis))),
                (
                    "memory".to_owned(),
                    Quantity(format!("{}Ki", of.memory_bytes / 1024)),
                ),
                (
                    "ephemeral-storage".to_owned(),
                    Quantity(of.ephemeral_bytes.to_string()),
                ),
                ("hugepages-1Gi".to_owned(), Quantity("0".into())),
                ("hugepages-2Mi".to_owned(), Quantity("0".into())),
                ("pods".to_owned(), Quantity(self.max_pods.to_string())),
            ])
        };
        let now = Time(crate::events::now());
        let condition = |type_: &str, status: &str, reason: &str, message: &str| {
            let kept = previous
                .and_then(|p| p.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == type_ && c.status == status))
                .and_then(|c| c.last_transition_time.clone());
            NodeCondition {
                type_: type_.to_owned(),
                status: status.to_owned(),
                reason: Some(reason.to_owned()),
                message: Some(message.to_owned()),
                last_heartbeat_time: Some(now.clone()),
                last_transition_time: Some(kept.unwrap_or_else(|| now.clone())),
            }
        };
        let mut addresses = Vec::new();
        if !self.host_ip.is_empty() {
            addresses.push(NodeAddress {
                type_: "InternalIP".into(),
                address: self.host_ip.clone(),
            });
        }
        addresses.push(NodeAddress {
            type_: "Hostname".into(),
            address: self.name.clone(),
        });
        let ready = match &runtime.not_ready {
            None => condition(
                "Ready",
                "True",
                "KubeletReady",
                "kubelet is posting ready status",
            ),
            Some(why) => condition("Ready", "False", "KubeletNotReady", why),
        };
        NodeStatus {
            capacity: Some(resources(&self.capacity)),
            allocatable: Some(resources(&self.allocatable)),
            addresses: Some(addresses),
            conditions: Some(
                Condition::ALL
                    .into_iter()
                    .map(|c| {
                        let pressure = pressure.contains(&c);
                        let (reason, message) = c.reason_and_message(pressure);
                        let status = if pressure { "True" } else { "False" };
                        condition(c.as_str(), status, reason, message)
                    })
                    .chain([ready])
                    .collect(),
            ),
            daemon_endpoints: Some(NodeDaemonEndpoints {
                kubelet_endpoint: Some(DaemonEndpoint { port: self.port }),
            }),
            node_info: Some(system_info(&self.runtime_version)),
            images: (!runtime.images.is_empty()).then(|| runtime.images.clone()),
            ..NodeStatus::default()
        }
    }
}

/// Whether the container runtime and its network are ready, from CRI `Status`, and the
/// images it holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuntimeHealth {
    /// Why the node is not ready, in kubelet's words; `None`: it is.
    pub not_ready: Option<String>,
    /// The images the runtime holds, largest first, at most [`MAX_IMAGES`] (kubelet's
    /// `nodeStatusMaxImages`).
    pub images: Vec<ContainerImage>,
}

/// kubelet's `nodeStatusMaxImages`.
pub const MAX_IMAGES: usize = 50;

impl RuntimeHealth {
    /// Asks the runtime, as kubelet's runtime state check does.
    pub async fn of(runtime: &CriClient) -> RuntimeHealth {
        let status = match runtime.status(false).await {
            Ok(status) => status,
            Err(e) => {
                return RuntimeHealth {
                    not_ready: Some(format!("container runtime is down: {e}")),
                    images: Vec::new(),
                }
            }
        };
        let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
        let problem = |type_: &str, what: &str| {
            let found = conditions.iter().find(|c| c.r#type == type_);
            match found {
                Some(c) if c.status => None,
                Some(c) => Some(format!(
                    "{what}: {type_}=false reason:{} message:{}",
                    c.reason, c.message
                )),
                None => Some(format!("{what}: {type_} missing")),
            }
        };
        let mut images: Vec<ContainerImage> = match runtime.list_images(None).await {
            Ok(images) => images
                .into_iter()
                .map(|image| {
                    let mut names = image.repo_digests;
                    names.extend(image.repo_tags);
                    ContainerImage {
                        names: Some(names),
                        size_bytes: i64::try_from(image.size).ok(),
                    }
                })
                .collect(),
            Err(e) => {
                tracing::debug!(error = %e, "listing images for the node status");
                Vec::new()
            }
        };
        images.sort_by(|a, b| {
            b.size_bytes
                .cmp(&a.size_bytes)
                .then_with(|| a.names.cmp(&b.names))
        });
        images.truncate(MAX_IMAGES);
        RuntimeHealth {
            not_ready: problem("RuntimeReady", "container runtime not ready")
                .or_else(|| problem("NetworkReady", "container runtime network not ready")),
            images,
        }
    }
}

/// The architecture as Go names it (`GOARCH`), which is what the label carries.
fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn system_info(runtime_version: &str) -> NodeSystemInfo {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let os_image = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_default();
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    NodeSystemInfo {
        architecture: arch().into(),
        boot_id: read("/proc/sys/kernel/random/boot_id"),
        container_runtime_version: runtime_version.to_owned(),
        kernel_version: kernel,
        kube_proxy_version: String::new(),
        kubelet_version: format!("v1.20.2-bosun.{}", env!("CARGO_PKG_VERSION")),
        machine_id: read("/etc/machine-id"),
        operating_system: std::env::consts::OS.into(),
        os_image,
        system_uuid: read("/sys/class/dmi/id/product_uuid"),
        ..NodeSystemInfo::default()
    }
}

/// Registers the node: creates its object, or reconciles the labels and status of an
/// existing one. Returns its UID (the Lease's owner).
pub async fn register(client: &kube::Client, facts: &NodeFacts) -> Result<String, ClusterError> {
    let api: Api<Node> = Api::all(client.clone());
    let wanted = facts.node();
    let node = match api.create(&PostParams::default(), &wanted).await {
        // Created with its status (a Node's create keeps it, unlike a pod's).
        Ok(node) => return Ok(node.metadata.uid.unwrap_or_default()),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let patch = serde_json::json!({"metadata": {"labels": wanted.metadata.labels}});
            api.patch(&facts.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|source| ClusterError::Api {
                    call: format!("patching node {}", facts.name),
                    source,
                })?
        }
        Err(source) => {
            return Err(ClusterError::Api {
                call: format!("creating node {}", facts.name),
                source,
            })
        }
    };
    // An existing Node's status is reconciled like its labels.
    let status = serde_json::json!({"status": facts.status(node.status.as_ref(), &RuntimeHealth::default(), &Pressure::new())});
    api.patch_status(&facts.name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(|source| ClusterError::Api {
            call: format!("patching the status of node {}", facts.name),
            source,
        })?;
    Ok(node.metadata.uid.unwrap_or_default())
}

/// Registers the node (retrying until it can), then renews its Lease and reports its
/// status for as long as the task runs; a change of `pressure` is reported at once.
pub async fn run(
    client: kube::Client,
    facts: NodeFacts,
    runtime: CriClient,
    mut pressure: tokio::sync::watch::Receiver<Pressure>,
) {
    let mut delay = Duration::from_millis(200);
    let uid = loop {
        match register(&client, &facts).await {
            Ok(uid) => break uid,
            Err(e) => {
                tracing::warn!(error = %crate::util::error_chain(&e), "registering the node; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(7));
            }
        }
    };
    tracing::info!(node = %facts.name, "node registered");
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let mut reported: Option<(NodeStatus, Instant)> = None;
    let mut lease_tick = tokio::time::interval(LEASE_RENEW);
    let mut status_tick = tokio::time::interval(STATUS_UPDATE);
    let mut pressure_closed = false;
    loop {
        tokio::select! {
            _ = lease_tick.tick() => {
                if let Err(e) = renew_lease(&leases, &facts.name, &uid).await {
                    tracing::warn!(error = %e, "renewing the node lease");
                }
            }
            changed = pressure.changed(), if !pressure_closed => {
                pressure_closed = changed.is_err();
                status_tick.reset_immediately();
            }
            _ = status_tick.tick() => {
                let health = RuntimeHealth::of(&runtime).await;
                let now_pressure = pressure.borrow_and_update().clone();
                let status = facts.status(reported.as_ref().map(|(s, _)| s), &health, &now_pressure);
                let due = reported.as_ref().is_none_or(|(last, at)| {
                    !same_but_heartbeats(last, &status) || at.elapsed() >= STATUS_REPORT
                });
                if due {
                    let patch = serde_json::json!({"status": status});
                    match nodes.patch_status(&facts.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                        Ok(_) => reported = Some((status, Instant::now())),
                        Err(e) => tracing::warn!(error = %e, "reporting the node status"),
                    }
                }
            }
        }
    }
}

/// Whether two statuses differ only in their conditions' heartbeat times.
fn same_but_heartbeats(a: &NodeStatus, b: &NodeStatus) -> bool {
    let strip = |s: &NodeStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_heartbeat_time = None;
        }
        s
    };
    strip(a) == strip(b)
}

/// Renews (creating it if needed) the node's Lease, owned by the Node.
async fn renew_lease(leases: &Api<Lease>, name: &str, node_uid: &str) -> Result<(), kube::Error> {
    let now = MicroTime(crate::events::now());
    let patch = serde_json::json!({
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": now,
        }
    });
    match leases
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    namespace: Some(LEASE_NAMESPACE.to_owned()),
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: "Node".into(),
                        name: name.to_owned(),
                        uid: node_uid.to_owned(),
                        ..OwnerReference::default()
                    }]),
                    ..ObjectMeta::default()
                },
                spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                    holder_identity: Some(name.to_owned()),
                    lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
                    renew_time: Some(now),
                    ..Default::default()
                }),
            };
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> NodeFacts {
        NodeFacts {
            name: "node-a".into(),
            labels: BTreeMap::from([("role".to_owned(), "edge".to_owned())]),
            taints: vec![Taint {
                key: "dedicated".into(),
                value: Some("edge".into()),
                effect: "NoSchedule".into(),
                time_added: None,
            }],
            host_ip: "10.0.0.5".into(),
            capacity: NodeCapacity {
                cpu_millis: 2000,
                memory_bytes: 4 << 30,
                ephemeral_bytes: 10 << 30,
            },
            allocatable: NodeCapacity {
                cpu_millis: 1900,
                memory_bytes: (4 << 30) - (100 << 20),
                ephemeral_bytes: 9 << 30,
            },
            max_pods: 110,
            runtime_version: "containerd://1.6.20".into(),
            port: 10250,
        }
    }

    #[test]
    fn the_node_carries_kubelets_labels_capacity_and_conditions() {
        let node = facts().node();
        let labels = node.metadata.labels.expect("labels");
        assert_eq!(labels["kubernetes.io/hostname"], "node-a");
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert_eq!(labels["role"], "edge");
        assert_eq!(
            node.spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .map(Vec::len),
            Some(1)
        );
        let status = node.status.expect("status");
        let capacity = status.capacity.expect("capacity");
        assert_eq!(capacity["memory"].0, "4194304Ki");
        assert_eq!(capacity["pods"].0, "110");
        assert_eq!(
            status.allocatable.clone().expect("allocatable")["cpu"].0,
            "1900m"
        );
        let conditions = status.conditions.expect("conditions");
        let ready = conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("True", Some("KubeletReady"))
        );
        let addresses = status.addresses.expect("addresses");
        assert_eq!(addresses[0].address, "10.0.0.5");
        assert_eq!(
            status.node_info.expect("info").container_runtime_version,
            "containerd://1.6.20"
        );
    }

    #[test]
    fn an_unchanged_status_differs_only_in_heartbeats() {
        let facts = facts();
        let ready = RuntimeHealth::default();
        let first = facts.status(None, &ready, &Pressure::new());
        let second = facts.status(Some(&first), &ready, &Pressure::new());
        assert!(same_but_heartbeats(&first, &second));
        let mut more = facts.clone();
        more.max_pods = 5;
        assert!(!same_but_heartbeats(
            &first,
            &more.status(Some(&first), &ready, &Pressure::new())
        ));
        let down = RuntimeHealth {
            not_ready: Some("container runtime network not ready: NetworkReady=false".into()),
            ..RuntimeHealth::default()
        };
        let not_ready = facts.status(Some(&first), &down, &Pressure::new());
        let condition = not_ready
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(condition.status, "False");
        assert_eq!(condition.reason.as_deref(), Some("KubeletNotReady"));
    }
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod node_tests;
