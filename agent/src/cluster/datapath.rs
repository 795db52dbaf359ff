//! What the service proxy reads from the API server, as kube-proxy's informers read it: the
//! Services and EndpointSlices kube-proxy would program (its label selector leaves out
//! another proxy's and headless ones), decoded into the datapath's narrow types as they
//! arrive, and this node's Node, for its zone (topology-aware routing) and whether it is
//! being taken away (kube-proxy's `nodeEligible`).
//!
//! EndpointSlices are `discovery.k8s.io/v1` since Kubernetes 1.21; a 1.20 API server serves
//! only `v1beta1`, where an endpoint's node is its `kubernetes.io/hostname` topology entry.
//! The version is the newest the server lists, found once per watch start.

use std::collections::BTreeMap;
use std::time::Duration;

use bosun_netdp::policy::PolicyPod;
use bosun_netdp::service::model::PROXY_LABEL_SELECTOR;
use bosun_netdp::service::{ServiceInfo, SliceInfo};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Namespace, Node, Pod, PodSpec, PodStatus, Service,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher;
use kube::Api;
use serde::Deserialize;
use tokio::sync::watch;

use super::reflect::reflect;
use crate::store::{Source, Writer};

/// The label of a node's zone (`v1.LabelTopologyZone`).
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// The taint the cluster autoscaler puts on a node it is about to remove.
pub const TAINT_TO_BE_DELETED: &str = "ToBeDeletedByClusterAutoscaler";
/// How long to wait before asking again which EndpointSlice version the server has.
const DISCOVERY_RETRY: Duration = Duration::from_secs(5);

/// Keeps `services` equal to the Services kube-proxy would program, narrowed.
pub async fn watch_services(client: kube::Client, services: Writer<ServiceInfo>) {
    let api: Api<Service> = Api::all(client);
    let config = watcher::Config::default().labels(PROXY_LABEL_SELECTOR);
    reflect(api, config, services, "Services", |service| {
        Some(ServiceInfo::from_service(&service))
    })
    .await
}

/// Keeps `slices` equal to the EndpointSlices kube-proxy would read, narrowed, from
/// `discovery.k8s.io/v1` or, on a server without it, `v1beta1`.
pub async fn watch_endpoint_slices(client: kube::Client, slices: Writer<SliceInfo>) {
    let config = watcher::Config::default().labels(PROXY_LABEL_SELECTOR);
    if serves_v1(&client).await {
        let api: Api<EndpointSlice> = Api::all(client);
        reflect(api, config, slices, "EndpointSlices", |slice| {
            Some(SliceInfo::from_slice(&slice))
        })
        .await
    } else {
        tracing::info!(
            "the API server has no discovery.k8s.io/v1: reading EndpointSlices from v1beta1"
        );
        let api: Api<EndpointSliceV1beta1> = Api::all(client);
        reflect(api, config, slices, "EndpointSlices", |slice| {
            Some(SliceInfo::from_slice(&slice.into_v1()))
        })
        .await
    }
}

/// Whether the server lists `discovery.k8s.io/v1` with EndpointSlices. Asked until it
/// answers: a server that cannot be reached yet tells nothing.
async fn serves_v1(client: &kube::Client) -> bool {
    loop {
        match client.list_api_group_resources("discovery.k8s.io/v1").await {
            Ok(list) => return list.resources.iter().any(|r| r.name == "endpointslices"),
            Err(kube::Error::Api(e)) if e.code == 404 => return false,
            Err(e) => {
                tracing::warn!(error = %e, "asking the API server for discovery.k8s.io/v1; retrying");
                tokio::time::sleep(DISCOVERY_RETRY).await;
            }
        }
    }
}

/// An EndpointSlice of `discovery.k8s.io/v1beta1` (Kubernetes 1.16–1.24), only as far as
/// the datapath reads it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSliceV1beta1 {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "null_as_default")]
    pub address_type: String,
    /// `null` for a Service whose selector matches no pod (Go's nil slice).
    #[serde(default, deserialize_with = "null_as_default")]
    pub endpoints: Vec<EndpointV1beta1>,
    pub ports: Option<Vec<EndpointPort>>,
}

/// An endpoint of `discovery.k8s.io/v1beta1`: the node in `topology`, before `nodeName`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointV1beta1 {
    #[serde(default, deserialize_with = "null_as_default")]
    pub addresses: Vec<String>,
    pub conditions: Option<EndpointConditions>,
    pub node_name: Option<String>,
    pub topology: Option<BTreeMap<String, String>>,
    pub hints: Option<EndpointHints>,
}

/// A field Go may send as `null` (a nil slice, an empty string never set) read as its
/// default, as k8s-openapi reads the fields of its own types.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

impl EndpointSliceV1beta1 {
    /// The same slice in `discovery.k8s.io/v1`'s terms (the conversion the API server does
    /// for v1 clients): the `kubernetes.io/hostname` topology is the node, the zone
    /// topology the zone.
    pub fn into_v1(self) -> EndpointSlice {
        EndpointSlice {
            metadata: self.metadata,
            address_type: self.address_type,
            endpoints: self
                .endpoints
                .into_iter()
                .map(|e| {
                    let topology = e.topology.unwrap_or_default();
                    Endpoint {
                        addresses: e.addresses,
                        conditions: e.conditions,
                        node_name: e
                            .node_name
                            .or_else(|| topology.get("kubernetes.io/hostname").cloned()),
                        zone: topology.get(LABEL_ZONE).cloned(),
                        hints: e.hints,
                        ..Endpoint::default()
                    }
                })
                .collect(),
            ports: self.ports,
        }
    }
}

impl k8s_openapi::Resource for EndpointSliceV1beta1 {
    const API_VERSION: &'static str = "discovery.k8s.io/v1beta1";
    const GROUP: &'static str = "discovery.k8s.io";
    const KIND: &'static str = "EndpointSlice";
    const VERSION: &'static str = "v1beta1";
    const URL_PATH_SEGMENT: &'static str = "endpointslices";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for EndpointSliceV1beta1 {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Starts the watches NetworkPolicy enforcement needs from the API server, as a policy agent
/// (Calico's, Cilium's) has them: the NetworkPolicies and Namespaces into `objects`, and
/// every pod of the cluster with an address into `peers`, narrowed to what the policy
/// compiler reads.
pub fn watch_policy_objects(
    client: &kube::Client,
    objects: &crate::store::Objects,
    peers: Writer<PolicyPod>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let policies: Api<NetworkPolicy> = Api::all(client.clone());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let pods: Api<PodPeer> = Api::all(client.clone());
    vec![
        tokio::spawn(reflect(
            policies,
            watcher::Config::default(),
            objects.network_policies.writer(Source::Api),
            "NetworkPolicies",
            |policy| Some(super::narrowed(policy)),
        )),
        tokio::spawn(reflect(
            namespaces,
            watcher::Config::default(),
            objects.namespaces.writer(Source::Api),
            "Namespaces",
            |namespace| Some(super::narrowed(namespace)),
        )),
        tokio::spawn(reflect(
            pods,
            watcher::Config::default(),
            peers,
            "Pods",
            |pod| crate::policy::peer(&pod.into_pod()),
        )),
    ]
}

/// A pod as NetworkPolicy reads it, decoded straight from the API server's JSON: what
/// [`crate::policy::peer`] reads and nothing more (no `managedFields`, no container specs
/// beyond their ports), so that listing 100,000 pods never builds 100,000 whole `Pod`s.
#[derive(Clone, Debug, Deserialize)]
pub struct PodPeer {
    #[serde(default, deserialize_with = "narrow_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<PeerSpec>,
    #[serde(default)]
    pub status: Option<PeerStatus>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerSpec {
    pub host_network: Option<bool>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub containers: Vec<PeerContainer>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct PeerContainer {
    pub ports: Option<Vec<ContainerPort>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
}

/// The metadata fields anything here reads; the rest (`managedFields` above all) is skipped
/// without being built.
fn narrow_meta<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<ObjectMeta, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Narrow {
        name: Option<String>,
        namespace: Option<String>,
        uid: Option<String>,
        resource_version: Option<String>,
        labels: Option<BTreeMap<String, String>>,
    }
    let narrow = Narrow::deserialize(deserializer)?;
    Ok(ObjectMeta {
        name: narrow.name,
        namespace: narrow.namespace,
        uid: narrow.uid,
        resource_version: narrow.resource_version,
        labels: narrow.labels,
        ..ObjectMeta::default()
    })
}

impl PodPeer {
    /// The same pod as a `Pod` holding only these fields.
    pub fn into_pod(self) -> Pod {
        let spec = self.spec.unwrap_or_default();
        Pod {
            metadata: self.metadata,
            spec: Some(PodSpec {
                host_network: spec.host_network,
                containers: spec
                    .containers
                    .into_iter()
                    .map(|c| Container {
                        ports: c.ports,
                        ..Container::default()
                    })
                    .collect(),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                pod_ip: self.status.and_then(|s| s.pod_ip),
                ..PodStatus::default()
            }),
        }
    }
}

impl k8s_openapi::Resource for PodPeer {
    const API_VERSION: &'static str = "v1";
    const GROUP: &'static str = "";
    const KIND: &'static str = "Pod";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "pods";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for PodPeer {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// What the proxy reads of its own Node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeView {
    /// Its `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
    /// Being deleted, or tainted for deletion by the cluster autoscaler: load balancers'
    /// health checks should stop sending traffic here.
    pub leaving: bool,
}

impl NodeView {
    fn of(node: &Node) -> NodeView {
        let zone = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_ZONE))
            .filter(|z| !z.is_empty())
            .cloned();
        let tainted = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == TAINT_TO_BE_DELETED));
        NodeView {
            zone,
            leaving: node.metadata.deletion_timestamp.is_some() || tainted,
        }
    }
}

/// Keeps `view` equal to what the Node `name` says, until the task is dropped.
pub async fn watch_node(client: kube::Client, name: String, view: watch::Sender<NodeView>) {
    use futures::StreamExt;
    use kube::runtime::watcher::Event;
    use kube::runtime::WatchStreamExt as _;

    let api: Api<Node> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut seen = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => seen = false,
            Ok(Event::InitApply(node) | Event::Apply(node)) => {
                seen = true;
                view.send_if_modified(|held| replace(held, NodeView::of(&node)));
            }
            Ok(Event::InitDone) if !seen => {
                view.send_if_modified(|held| replace(held, NodeView::default()));
            }
            Ok(Event::InitDone) => {}
            Ok(Event::Delete(_)) => {
                view.send_if_modified(|held| replace(held, NodeView::default()));
            }
            Err(e) => tracing::warn!(node = %name, error = %e, "watching the Node; retrying"),
        }
    }
}

fn replace(held: &mut NodeView, new: NodeView) -> bool {
    let changed = *held != new;
    *held = new;
    changed
}

#[cfg(test)]
#[path = "datapath_tests.rs"]
mod tests;
