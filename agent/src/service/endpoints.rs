//! EndpointSlices for the pods this node runs: the EndpointSlice controller's job, done for
//! static pods, which no controller sees without an API server. Pure: Services and pods (with
//! their status filled in) in, EndpointSlices out, the same for the same input.
//!
//! Each rule follows the upstream controller (`k8s.io/endpointslice`), named where it applies.
//! Left out on purpose: the empty placeholder slice a selector that matches nothing gets
//! (nothing reads it here), zones and topology hints (no Node objects), and IPv6 slices
//! (bosun's datapath is IPv4 only for now).

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::store::{PodStore, Source, Store, Writer};

/// The label naming a slice's Service (`discovery.LabelServiceName`).
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The label naming a slice's manager (`discovery.LabelManagedBy`).
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Set on the slices of a Service without a cluster IP (`v1.IsHeadlessService`).
const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// What bosun's slices carry in [`LABEL_MANAGED_BY`], so that no other controller takes them
/// for its own.
pub const MANAGED_BY: &str = "bosun";
/// The controller's default `--max-endpoints-per-slice`.
const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// The EndpointSlice controller for the pods of this node: follows the Services and the pods'
/// status and keeps their slices in the store under [`Source::Local`](crate::store::Source::Local), computed off the
/// daemon's executor. Runs until the task is dropped. Standalone this is the only writer of
/// static pods' slices; in a cluster the controller manager writes them and this is not run.
///
/// Only the manifest directory's Services get slices here: the API server's have theirs from
/// the controller manager.
pub async fn run_controller(
    services: Store<Service>,
    pods: PodStore,
    slices: Writer<EndpointSlice>,
    node: String,
) {
    let mut service_changes = services.subscribe();
    let mut pod_changes = pods.subscribe();
    loop {
        // Slices computed before every pod's status is known would list ready pods as not
        // ready (and the service proxy would take them out): the first waits for the pods.
        if !pods.is_synced() {
            pod_changes.changed().await;
            continue;
        }
        let (listed_services, listed_pods) = (services.list_of(Source::File), pods.list());
        let node = node.clone();
        let computed = tokio::task::spawn_blocking(move || {
            slices_for_pods(listed_services.iter().map(|s| &**s), &listed_pods, &node)
        })
        .await;
        match computed {
            Ok(computed) => slices.replace(computed.into_iter().map(Arc::new)),
            Err(e) => tracing::error!(error = %e, "computing the static pods' EndpointSlices"),
        }
        tokio::select! {
            _ = service_changes.changed() => {}
            _ = pod_changes.changed() => {}
        }
        service_changes.take();
        pod_changes.take();
    }
}

/// The EndpointSlices of every Service with a selector, over the pods it selects, for a node
/// named `node`. Slices are named `<service>-bosun-<n>`, numbered per Service in the order of
/// their port sets; the output is sorted by namespace, then Service, then slice number.
pub fn slices_for_pods<'s, P: Borrow<Pod>>(
    services: impl IntoIterator<Item = &'s Service>,
    pods: &[P],
    node: &str,
) -> Vec<EndpointSlice> {
    let mut ordered: Vec<&Service> = services.into_iter().collect();
    ordered.sort_by(|a, b| object_key(&a.metadata).cmp(&object_key(&b.metadata)));
    ordered
        .into_iter()
        .flat_map(|service| slices_for_service(service, pods, node))
        .collect()
}

fn slices_for_service<P: Borrow<Pod>>(
    service: &Service,
    pods: &[P],
    node: &str,
) -> Vec<EndpointSlice> {
    let (namespace, name) = object_key(&service.metadata);
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    // `syncService`: ExternalName Services get no endpoints, and Services without a selector
    // are left to whoever writes their slices. An empty selector is no selector: the API
    // server stores it as nil.
    if name.is_empty() || spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    if !serves_ipv4(service) {
        return Vec::new();
    }

    // `reconcile`: one group of endpoints per distinct set of resolved ports.
    let mut by_ports: BTreeMap<Vec<PortKey>, Vec<Endpoint>> = BTreeMap::new();
    for pod in pods {
        let pod: &Pod = pod.borrow();
        let (pod_namespace, _) = object_key(&pod.metadata);
        if pod_namespace != namespace || !selects(selector, pod) || !should_be_in_endpoints(pod) {
            continue;
        }
        let endpoint = pod_to_endpoint(pod, service, node);
        // The controller keeps only endpoints with an address of the slice's family.
        if endpoint.addresses.is_empty() {
            continue;
        }
        by_ports
            .entry(endpoint_ports(service, pod))
            .or_default()
            .push(endpoint);
    }

    let mut slices = Vec::new();
    for (ports, mut endpoints) in by_ports {
        endpoints.sort_by_cached_key(|e| {
            let addresses: Vec<Option<Ipv4Addr>> =
                e.addresses.iter().map(|a| a.parse().ok()).collect();
            let pod = e.target_ref.as_ref().and_then(|r| r.name.clone());
            (addresses, pod)
        });
        for chunk in endpoints.chunks(MAX_ENDPOINTS_PER_SLICE) {
            let slice_name = format!("{name}-bosun-{}", slices.len());
            slices.push(EndpointSlice {
                metadata: slice_metadata(service, namespace, name, slice_name),
                address_type: "IPv4".to_owned(),
                endpoints: chunk.to_vec(),
                ports: Some(ports.iter().map(PortKey::to_endpoint_port).collect()),
            });
        }
    }
    slices
}

/// A namespace left out (as in a manifest) is `default`, as `kubectl apply` would make it.
fn object_key(meta: &ObjectMeta) -> (&str, &str) {
    let namespace = meta.namespace.as_deref().filter(|n| !n.is_empty());
    (
        namespace.unwrap_or("default"),
        meta.name.as_deref().unwrap_or(""),
    )
}

/// `getAddressTypesForService`, for IPv4: the Service's IP families when it lists them, else
/// the family of its cluster IP; a headless Service without families takes both.
fn serves_ipv4(service: &Service) -> bool {
    let Some(spec) = &service.spec else {
        return false;
    };
    if let Some(families) = spec.ip_families.as_ref().filter(|f| !f.is_empty()) {
        return families.iter().any(|f| f == "IPv4");
    }
    match spec.cluster_ip.as_deref() {
        None | Some("") | Some("None") => true,
        Some(ip) => !ip.contains(':'),
    }
}

/// A pod carries every label of the selector, with the same value.
pub(crate) fn selects(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.metadata.labels.as_ref();
    selector
        .iter()
        .all(|(key, value)| labels.and_then(|l| l.get(key)) == Some(value))
}

/// `ShouldPodBeInEndpoints(pod, includeTerminating: true)`, as the EndpointSlice controller
/// calls it: not terminal, and with an IP. A terminating pod stays, marked terminating, so
/// that proxies can keep sending it traffic while nothing else is ready; it leaves when it
/// reaches a terminal phase. `publishNotReadyAddresses` does not change who is listed, only
/// the `ready` condition.
fn should_be_in_endpoints(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return false;
    }
    status.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
        || status.pod_ips.as_ref().is_some_and(|ips| !ips.is_empty())
}

/// `podutil.IsPodReady`: the pod's `Ready` condition is `True`.
fn is_pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// `podToEndpoint`: serving is readiness, terminating is deletion, and ready is serving and
/// not terminating unless the Service publishes not-ready addresses.
fn pod_to_endpoint(pod: &Pod, service: &Service, node: &str) -> Endpoint {
    let spec = service.spec.as_ref();
    let serving = is_pod_ready(pod);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let publish_not_ready = spec.and_then(|s| s.publish_not_ready_addresses) == Some(true);
    let ready = publish_not_ready || (serving && !terminating);
    let (namespace, name) = object_key(&pod.metadata);
    Endpoint {
        addresses: ipv4_addresses(pod),
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        // Upstream takes `spec.nodeName`; these are the pods of this node, whose name that is.
        node_name: Some(node.to_owned()),
        hostname: hostname(pod, service),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".to_owned()),
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
            uid: pod.metadata.uid.clone(),
            ..ObjectReference::default()
        }),
        ..Endpoint::default()
    }
}

/// `getEndpointAddresses` for IPv4 slices: the pod's IPv4 `podIPs`. A status with `podIP`
/// but no `podIPs` (which the API server would have filled in) counts `podIP`.
fn ipv4_addresses(pod: &Pod) -> Vec<String> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let ips: Vec<&str> = match status.pod_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().map(|ip| ip.ip.as_str()).collect(),
        _ => status.pod_ip.as_deref().into_iter().collect(),
    };
    ips.into_iter()
        .filter_map(|ip| ip.parse::<Ipv4Addr>().ok())
        .map(|ip| ip.to_string())
        .collect()
}

/// `ShouldSetHostname`: a pod whose subdomain is the Service's name is known by its hostname.
fn hostname(pod: &Pod, service: &Service) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let hostname = spec.hostname.as_deref().filter(|h| !h.is_empty())?;
    let same_namespace = object_key(&pod.metadata).0 == object_key(&service.metadata).0;
    let subdomain_is_service =
        spec.subdomain.is_some() && spec.subdomain.as_deref() == service.metadata.name.as_deref();
    (same_namespace && subdomain_is_service).then(|| hostname.to_owned())
}

/// One resolved Service port of a pod; the slice's ports are a list of these.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct PortKey {
    name: String,
    port: i32,
    protocol: String,
    app_protocol: Option<String>,
}

impl PortKey {
    fn to_endpoint_port(&self) -> EndpointPort {
        EndpointPort {
            name: Some(self.name.clone()),
            port: Some(self.port),
            protocol: Some(self.protocol.clone()),
            app_protocol: self.app_protocol.clone(),
        }
    }
}

/// `getEndpointPorts`: each Service port whose target the pod resolves, in the Service's
/// order; a port the pod does not resolve is left out for that pod.
fn endpoint_ports(service: &Service, pod: &Pod) -> Vec<PortKey> {
    let ports = service.spec.as_ref().and_then(|s| s.ports.as_deref());
    ports
        .into_iter()
        .flatten()
        .filter_map(|port| {
            Some(PortKey {
                name: port.name.clone().unwrap_or_default(),
                port: find_port(pod, port)?,
                protocol: protocol_of(port.protocol.as_deref()).to_owned(),
                app_protocol: port.app_protocol.clone(),
            })
        })
        .collect()
}

/// The API server's default protocol for Service and container ports.
fn protocol_of(protocol: Option<&str>) -> &str {
    protocol.unwrap_or("TCP")
}

/// `FindPort`: a numeric target port is the port; a named one is the container port of that
/// name and the Service port's protocol, in the pod's containers and then in its sidecars
/// (init containers with `restartPolicy: Always`). An unset target port (0 or "") is the
/// Service port itself, as the API server defaults it.
fn find_port(pod: &Pod, port: &ServicePort) -> Option<i32> {
    let name = match &port.target_port {
        None => return Some(port.port),
        Some(IntOrString::Int(0)) => return Some(port.port),
        Some(IntOrString::Int(number)) => return Some(*number),
        Some(IntOrString::String(name)) if name.is_empty() => return Some(port.port),
        Some(IntOrString::String(name)) => name,
    };
    let protocol = protocol_of(port.protocol.as_deref());
    let spec = pod.spec.as_ref()?;
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.containers
        .iter()
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(name) && protocol_of(p.protocol.as_deref()) == protocol)
        .map(|p| p.container_port)
}

/// `newEndpointSlice` and `setEndpointSliceLabels`: the Service's labels (but the reserved
/// ones), the headless label for a Service without a cluster IP, the Service's name and the
/// manager; owned by the Service when it has a UID to be owned by.
fn slice_metadata(
    service: &Service,
    namespace: &str,
    name: &str,
    slice_name: String,
) -> ObjectMeta {
    let mut labels: BTreeMap<String, String> = service
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| {
            ![LABEL_SERVICE_NAME, LABEL_MANAGED_BY, LABEL_HEADLESS].contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let cluster_ip = service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref());
    if matches!(cluster_ip, None | Some("") | Some("None")) {
        labels.insert(LABEL_HEADLESS.to_owned(), String::new());
    }
    labels.insert(LABEL_SERVICE_NAME.to_owned(), name.to_owned());
    labels.insert(LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned());
    let owner = service.metadata.uid.as_ref().map(|uid| OwnerReference {
        api_version: "v1".to_owned(),
        kind: "Service".to_owned(),
        name: name.to_owned(),
        uid: uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    });
    ObjectMeta {
        namespace: Some(namespace.to_owned()),
        name: Some(slice_name),
        labels: Some(labels),
        owner_references: owner.map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

#[cfg(test)]
mod tests {
    use bosun_netdp::service::{compile, BackendAddr};

    use super::*;

    fn service(yaml: &str) -> Service {
        serde_yaml::from_str(yaml).expect("Service fixture parses")
    }

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).expect("Pod fixture parses")
    }

    /// A running, ready pod `name` labelled `app: web` at `ip`, with a container port named
    /// `http` at `http_port`.
    fn web_pod(name: &str, ip: &str, http_port: i32) -> Pod {
        pod(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{namespace: default, name: {name}, uid: uid-{name}, labels: {{app: web, tier: front}}}}
spec:
  containers:
    - name: app
      image: web
      ports:
        - {{name: http, containerPort: {http_port}}}
        - {{name: dns, containerPort: 5353, protocol: UDP}}
status:
  phase: Running
  podIP: "{ip}"
  podIPs: [{{ip: "{ip}"}}]
  conditions:
    - {{type: Ready, status: "True"}}
"#
        ))
    }

    /// What the API server does on delete: set `deletionTimestamp`.
    fn mark_deleted(pod: &mut Pod) {
        let now = serde_yaml::from_str(r#""2025-01-01T00:00:00Z""#).expect("a timestamp");
        pod.metadata.deletion_timestamp = Some(now);
    }

    fn web_service() -> Service {
        service(
            r#"
apiVersion: v1
kind: Service
metadata: {namespace: default, name: web, uid: svc-uid, labels: {team: shop}}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http}
"#,
        )
    }

    fn addresses(slice: &EndpointSlice) -> Vec<&str> {
        slice
            .endpoints
            .iter()
            .map(|e| e.addresses[0].as_str())
            .collect()
    }

    fn ports(slice: &EndpointSlice) -> Vec<(Option<&str>, Option<i32>, Option<&str>)> {
        slice
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref(), p.port, p.protocol.as_deref()))
            .collect()
    }

    fn conditions(endpoint: &Endpoint) -> (bool, bool, bool) {
        let c = endpoint.conditions.as_ref().expect("conditions set");
        (
            c.ready.expect("ready set"),
            c.serving.expect("serving set"),
            c.terminating.expect("terminating set"),
        )
    }

    /// Each endpoint's first address with its (ready, serving, terminating).
    fn listed(slice: &EndpointSlice) -> Vec<(&str, (bool, bool, bool))> {
        slice
            .endpoints
            .iter()
            .map(|e| (e.addresses[0].as_str(), conditions(e)))
            .collect()
    }

    #[test]
    fn selects_pods_carrying_every_selector_label() {
        let svc = service(
            r#"
apiVersion: v1
kind: Service
metadata: {namespace: default, name: web}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web, tier: front}
  ports: [{port: 80, targetPort: 8080}]
"#,
        );
        let mut other_tier = web_pod("b", "10.244.1.2", 8080);
        other_tier
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("tier".into(), "back".into());
        let mut unlabelled = web_pod("c", "10.244.1.3", 8080);
        unlabelled.metadata.labels = None;
        let pods = [web_pod("a", "10.244.1.1", 8080), other_tier, unlabelled];

        let slices = slices_for_pods(&[svc], &pods, "node-a");
        assert_eq!(slices.len(), 1);
        assert_eq!(addresses(&slices[0]), ["10.244.1.1"]);
        assert_eq!(ports(&slices[0]), [(Some(""), Some(8080), Some("TCP"))]);
    }

    #[test]
    fn slice_metadata_names_the_service_and_bosun() {
        let slices = slices_for_pods(
            &[web_service()],
            &[web_pod("a", "10.244.1.1", 8080)],
            "node-a",
        );
        let meta = &slices[0].metadata;
        assert_eq!(meta.namespace.as_deref(), Some("default"));
        assert_eq!(meta.name.as_deref(), Some("web-bosun-0"));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_SERVICE_NAME], "web");
        assert_eq!(labels[LABEL_MANAGED_BY], "bosun");
        assert_eq!(
            labels["team"], "shop",
            "the Service's own labels are copied"
        );
        assert!(!labels.contains_key(LABEL_HEADLESS));
        assert_eq!(slices[0].address_type, "IPv4");
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Service", "svc-uid")
        );

        let endpoint = &slices[0].endpoints[0];
        assert_eq!(endpoint.node_name.as_deref(), Some("node-a"));
        let target = endpoint.target_ref.as_ref().unwrap();
        assert_eq!(target.kind.as_deref(), Some("Pod"));
        assert_eq!(target.name.as_deref(), Some("a"));
        assert_eq!(target.uid.as_deref(), Some("uid-a"));
    }

    #[test]
    fn named_target_port_resolves_per_pod_and_differing_ports_make_two_slices() {
        let pods = [
            web_pod("a", "10.244.1.1", 8080),
            web_pod("c", "10.244.1.3", 8080),
            web_pod("b", "10.244.1.2", 9090),
        ];
        let slices = slices_for_pods(&[web_service()], &pods, "node-a");
        assert_eq!(slices.len(), 2);
        assert_eq!(slices[0].metadata.name.as_deref(), Some("web-bosun-0"));
        assert_eq!(ports(&slices[0]), [(Some("http"), Some(8080), Some("TCP"))]);
        assert_eq!(addresses(&slices[0]), ["10.244.1.1", "10.244.1.3"]);
        assert_eq!(slices[1].metadata.name.as_deref(), Some("web-bosun-1"));
        assert_eq!(ports(&slices[1]), [(Some("http"), Some(9090), Some("TCP"))]);
        assert_eq!(addresses(&slices[1]), ["10.244.1.2"]);

        // The same input in another order names the same slices the same way.
        let mut reversed = pods.to_vec();
        reversed.reverse();
        assert_eq!(
            slices_for_pods(&[web_service()], &reversed, "node-a"),
            slices
        );
    }

    #[test]
    fn named_port_must_match_the_service_ports_protocol_and_unresolved_ports_are_left_out() {
        let svc = service(
            r#"
apiVersion: v1
kind: Service
metadata: {namespace: default, name: web}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http}
    - {name: dns, port: 53, protocol: UDP, targetPort: dns}
    - {name: dns-tcp, port: 53, protocol: TCP, targetPort: dns}
    - {name: admin, port: 81, targetPort: admin}
    - {name: plain, port: 82}
"#,
        );
        let slices = slices_for_pods(&[svc], &[web_pod("a", "10.244.1.1", 8080)], "node-a");
        assert_eq!(slices.len(), 1);
        // "dns" is a UDP container port: the TCP Service port does not find it; nothing is
        // named "admin"; an unset targetPort is the Service port.
        assert_eq!(
            ports(&slices[0]),
            [
                (Some("http"), Some(8080), Some("TCP")),
                (Some("dns"), Some(5353), Some("UDP")),
                (Some("plain"), Some(82), Some("TCP")),
            ]
        );
    }

    #[test]
    fn named_port_of_a_sidecar_resolves() {
        let svc = service(
            r#"
apiVersion: v1
kind: Service
metadata: {namespace: default, name: web}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{name: metrics, port: 9090, targetPort: metrics}]
"#,
        );
        let mut p = web_pod("a", "10.244.1.1", 8080);
        let sidecars: Vec<k8s_openapi::api::core::v1::Container> = serde_yaml::from_str(
            r#"
- {name: plain-init, image: x, ports: [{name: metrics, containerPort: 1111}]}
- {name: exporter, image: x, restartPolicy: Always, ports: [{name: metrics, containerPort: 9100}]}
"#,
        )
        .unwrap();
        p.spec.as_mut().unwrap().init_containers = Some(sidecars);
        let slices = slices_for_pods(&[svc], &[p], "node-a");
        assert_eq!(
            ports(&slices[0]),
            [(Some("metrics"), Some(9100), Some("TCP"))]
        );
    }

    #[test]
    fn a_pod_resolving_no_port_still_gets_a_slice_with_no_ports() {
        let svc = service(
            r#"
apiVersion: v1
kind: Service
metadata: {namespace: default, name: web}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{name: admin, port: 81, targetPort: admin}]
"#,
        );
        let slices = slices_for_pods(&[svc], &[web_pod("a", "10.244.1.1", 8080)], "node-a");
        assert_eq!(slices.len(), 1);
        assert!(ports(&slices[0]).is_empty());
        assert_eq!(addresses(&slices[0]), ["10.244.1.1"]);
    }

    #[test]
    fn conditions_follow_readiness_and_deletion() {
        let ready = web_pod("ready", "10.244.1.1", 8080);
        let mut not_ready = web_pod("not-ready", "10.244.1.2", 8080);
        not_ready
            .status
            .as_mut()
            .unwrap()
            .conditions
            .as_mut()
            .unwrap()[0]
            .status = "False".into();
        let mut no_conditions = web_pod("no-conditions", "10.244.1.3", 8080);
        no_conditions.status.as_mut().unwrap().conditions = None;
        let mut terminating = web_pod("terminating", "10.244.1.4", 8080);
        mark_deleted(&mut terminating);
        let mut terminating_not_ready = not_ready.clone();
        terminating_not_ready.metadata.name = Some("terminating-not-ready".into());
        terminating_not_ready.status.as_mut().unwrap().pod_ips = None;
        terminating_not_ready.status.as_mut().unwrap().pod_ip = Some("10.244.1.5".into());
        mark_deleted(&mut terminating_not_ready);

        let pods = [
            ready,
            not_ready,
            no_conditions,
            terminating,
            terminating_not_ready,
        ];
        let slices = slices_for_pods(&[web_service()], &pods, "node-a");
        assert_eq!(slices.len(), 1);
        let got = listed(&slices[0]);
        assert_eq!(
            got,
            [
                // (ready, serving, terminating)
                ("10.244.1.1", (true, true, false)),
                ("10.244.1.2", (false, false, false)),
                ("10.244.1.3", (false, false, false)),
                ("10.244.1.4", (false, true, true)),
                ("10.244.1.5", (false, false, true)),
            ]
        );
    }

    #[test]
    fn publish_not_ready_addresses_makes_every_listed_pod_ready() {
        let mut svc = web_service();
        svc.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let mut not_ready = web_pod("not-ready", "10.244.1.2", 8080);
        not_ready.status.as_mut().unwrap().conditions = None;
        let mut terminating = web_pod("terminating", "10.244.1.4", 8080);
        mark_deleted(&mut terminating);
        let mut failed = web_pod("failed", "10.244.1.9", 8080);
        failed.status.as_mut().unwrap().phase = Some("Failed".into());

        let slices = slices_for_pods(&[svc], &[not_ready, terminating, failed], "node-a");
        let got = listed(&slices[0]);
        // Terminal pods stay out even so.
        assert_eq!(
            got,
            [
                ("10.244.1.2", (true, false, false)),
                ("10.244.1.4", (true, true, true)),
            ]
        );
    }

    #[test]
    fn terminal_pods_and_pods_without_an_ipv4_address_are_left_out() {
        let mut succeeded = web_pod("succeeded", "10.244.1.2", 8080);
        succeeded.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let mut failed = web_pod("failed", "10.244.1.3", 8080);
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        let mut pending_no_ip = web_pod("pending", "10.244.1.4", 8080);
        let status = pending_no_ip.status.as_mut().unwrap();
        status.phase = Some("Pending".into());
        status.pod_ip = None;
        status.pod_ips = None;
        let ipv6_only = web_pod("v6", "fd00::1", 8080);
        let mut no_status = web_pod("no-status", "10.244.1.6", 8080);
        no_status.status = None;
        let mut dual = web_pod("dual", "fd00::7", 8080);
        let dual_ips = serde_yaml::from_str(r#"[{ip: "fd00::7"}, {ip: 10.244.1.7}]"#).unwrap();
        dual.status.as_mut().unwrap().pod_ips = Some(dual_ips);

        let pods = [
            web_pod("running", "10.244.1.1", 8080),
            succeeded,
            failed,
            pending_no_ip,
            ipv6_only,
            no_status,
            dual,
        ];
        let slices = slices_for_pods(&[web_service()], &pods, "node-a");
        assert_eq!(slices.len(), 1);
        assert_eq!(addresses(&slices[0]), ["10.244.1.1", "10.244.1.7"]);
        assert_eq!(slices[0].endpoints[1].addresses, ["10.244.1.7"]);
    }

    #[test]
    fn pods_of_another_namespace_are_left_out() {
        let mut elsewhere = web_pod("a", "10.244.1.1", 8080);
        elsewhere.metadata.namespace = Some("staging".into());
        assert!(slices_for_pods(&[web_service()], &[elsewhere], "node-a").is_empty());

        // A Service and a pod that both leave the namespace out are both in `default`.
        let mut svc = web_service();
        svc.metadata.namespace = None;
        let mut p = web_pod("a", "10.244.1.1", 8080);
        p.metadata.namespace = None;
        let slices = slices_for_pods(&[svc], &[p], "node-a");
        assert_eq!(slices[0].metadata.namespace.as_deref(), Some("default"));
    }

    #[test]
    fn services_without_a_selector_or_of_type_external_name_get_nothing() {
        let pods = [web_pod("a", "10.244.1.1", 8080)];
        let mut no_selector = web_service();
        no_selector.spec.as_mut().unwrap().selector = None;
        let mut empty_selector = web_service();
        empty_selector.spec.as_mut().unwrap().selector = Some(BTreeMap::new());
        let external_name = service(
            r#"
apiVersion: v1
kind: Service
metadata: {namespace: default, name: upstream}
spec:
  type: ExternalName
  externalName: example.com
  selector: {app: web}
"#,
        );
        let ipv6_only = service(
            r#"
apiVersion: v1
kind: Service
metadata: {namespace: default, name: v6}
spec:
  ipFamilies: [IPv6]
  clusterIP: fd00::10
  selector: {app: web}
  ports: [{port: 80}]
"#,
        );
        for svc in [no_selector, empty_selector, external_name, ipv6_only] {
            let name = svc.metadata.name.clone();
            assert!(
                slices_for_pods(&[svc], &pods, "node-a").is_empty(),
                "{name:?} got slices"
            );
        }
    }

    #[test]
    fn headless_service_slices_carry_the_headless_label_and_hostnames() {
        let svc = service(
            r#"
apiVersion: v1
kind: Service
metadata: {namespace: default, name: web}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
"#,
        );
        let mut p = web_pod("a", "10.244.1.1", 8080);
        let spec = p.spec.as_mut().unwrap();
        spec.hostname = Some("web-0".into());
        spec.subdomain = Some("web".into());
        let slices = slices_for_pods(&[svc], &[p], "node-a");
        let labels = slices[0].metadata.labels.as_ref().unwrap();
        assert_eq!(labels.get(LABEL_HEADLESS).map(String::as_str), Some(""));
        assert_eq!(slices[0].endpoints[0].hostname.as_deref(), Some("web-0"));
    }

    #[test]
    fn more_than_a_slice_holds_spills_into_the_next() {
        let pods: Vec<Pod> = (0..150)
            .map(|i| {
                web_pod(
                    &format!("p{i:03}"),
                    &format!("10.244.{}.{}", i / 200, i % 200 + 1),
                    8080,
                )
            })
            .collect();
        let slices = slices_for_pods(&[web_service()], &pods, "node-a");
        let sizes: Vec<usize> = slices.iter().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, [100, 50]);
        assert_eq!(slices[1].metadata.name.as_deref(), Some("web-bosun-1"));
    }

    /// The slices computed here, compiled by the datapath's Service compiler, give the
    /// backends kube-proxy would: ready pods at their resolved ports, and terminating ones
    /// only once nothing is ready.
    #[test]
    fn compiled_slices_give_the_expected_backends() {
        let svc = service(
            r#"
apiVersion: v1
kind: Service
metadata: {namespace: default, name: web}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http}
    - {name: dns, port: 53, protocol: UDP, targetPort: dns}
"#,
        );
        let mut not_ready = web_pod("c", "10.244.1.3", 8080);
        not_ready.status.as_mut().unwrap().conditions = None;
        let mut terminating = web_pod("d", "10.244.1.4", 8080);
        mark_deleted(&mut terminating);
        let mut pods = vec![
            web_pod("a", "10.244.1.1", 8080),
            web_pod("b", "10.244.1.2", 9090),
            not_ready,
            terminating,
        ];

        let backends = |pods: &[Pod], port: u16| -> Vec<BackendAddr> {
            let slices = slices_for_pods(std::slice::from_ref(&svc), pods, "node-a");
            let compiled = compile(std::slice::from_ref(&svc), &slices, "node-a");
            assert!(compiled.problems.is_empty(), "{:?}", compiled.problems);
            compiled
                .services
                .iter()
                .find(|s| s.frontend.port == port)
                .expect("frontend exists")
                .backends
                .clone()
        };
        let at = |last: u8, port: u16| BackendAddr {
            address: Ipv4Addr::new(10, 244, 1, last),
            port,
        };

        assert_eq!(backends(&pods, 80), [at(1, 8080), at(2, 9090)]);
        assert_eq!(backends(&pods, 53), [at(1, 5353), at(2, 5353)]);

        // With the ready pods gone, the terminating one that still serves takes over.
        pods.drain(..2);
        assert_eq!(backends(&pods, 80), [at(4, 8080)]);
    }
}
