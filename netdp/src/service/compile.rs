//! Services and EndpointSlices in, desired services out: what kube-proxy's service and
//! endpoint change trackers and `CategorizeEndpoints` compute, as one pure function.
//!
//! Each rule says which upstream function it follows. Where the API server would have
//! defaulted or rejected a field (these objects may come from a manifest, not only from an
//! API server), the default is applied here and what validation would reject is a [`Problem`].

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr},
};

use k8s_openapi::api::{
    core::v1::{Service, ServicePort},
    discovery::v1::EndpointSlice,
};

use super::{BackendAddr, DesiredService, Frontend, Protocol, ServicePortName};

/// The label that ties an EndpointSlice to its Service (`discovery.LabelServiceName`).
const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset: the API server's default
/// (`v1.DefaultClientIPServiceAffinitySeconds`), three hours.
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;

/// The largest `timeoutSeconds` validation accepts (`core.MaxClientIPServiceAffinitySeconds`).
const MAX_AFFINITY_TIMEOUT: i32 = 86400;

/// What [`compile`] made of its input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// Sorted by frontend.
    pub services: Vec<DesiredService>,
    /// What could not be used, each naming the object, the field and the value.
    pub problems: Vec<Problem>,
}

/// One thing in the input the datapath cannot serve (an SCTP port, a port that names nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// `Service` or `EndpointSlice`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// The field's path, e.g. `spec.ports[1].protocol`.
    pub field: String,
    pub value: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}/{}: {}: {:?}: {}",
            self.kind, self.namespace, self.name, self.field, self.value, self.message
        )
    }
}

/// Turns Services and the EndpointSlices that belong to them into what the maps should hold,
/// for a node named `node` (which matters for `internalTrafficPolicy: Local`).
///
/// Deterministic: the same input in any order gives the same output. Problems are grouped by
/// object (kind, namespace, name), and within an object come in the order of its fields.
pub fn compile<'s, 'e>(
    services: impl IntoIterator<Item = &'s Service>,
    slices: impl IntoIterator<Item = &'e EndpointSlice>,
    node: &str,
) -> Compiled {
    let mut problems = Vec::new();

    // kube-proxy's EndpointSliceCache keys slices by (namespace, service-name label)
    // (`endpointSliceCacheKeys`); a slice without the label belongs to nothing.
    let mut slices_by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_SERVICE_NAME))
        else {
            continue;
        };
        if service.is_empty() {
            continue;
        }
        slices_by_service
            .entry((namespace_of(&slice.metadata.namespace), service.as_str()))
            .or_default()
            .push(slice);
    }

    // Which Service keeps a frontend two of them claim depends on this order, so it is the
    // (namespace, name) order and not the input's.
    let mut ordered: Vec<&Service> = services.into_iter().collect();
    ordered.sort_by(|a, b| object_key(&a.metadata).cmp(&object_key(&b.metadata)));

    let mut claimed: BTreeMap<Frontend, DesiredService> = BTreeMap::new();
    for service in ordered {
        let key = object_key(&service.metadata);
        let mut own = slices_by_service.remove(&key).unwrap_or_default();
        own.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        compile_service(service, &own, node, &mut claimed, &mut problems);
    }

    // Stable: within one object, problems keep the order in which its fields were read.
    problems.sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
    Compiled {
        services: claimed.into_values().collect(),
        problems,
    }
}

/// A namespace left out (as in a manifest) is `default`, as `kubectl apply` would make it.
fn namespace_of(namespace: &Option<String>) -> &str {
    namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
}

fn object_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (&str, &str) {
    (
        namespace_of(&meta.namespace),
        meta.name.as_deref().unwrap_or(""),
    )
}

/// Collects the problems of one object.
pub(crate) struct Reporter<'a> {
    pub(crate) kind: &'static str,
    pub(crate) namespace: &'a str,
    pub(crate) name: &'a str,
    pub(crate) problems: &'a mut Vec<Problem>,
}

impl Reporter<'_> {
    pub(crate) fn report(
        &mut self,
        field: impl Into<String>,
        value: impl Into<String>,
        message: &str,
    ) {
        self.problems.push(Problem {
            kind: self.kind,
            namespace: self.namespace.to_owned(),
            name: self.name.to_owned(),
            field: field.into(),
            value: value.into(),
            message: message.to_owned(),
        });
    }
}

/// One address a Service is reached at, and whether traffic to it is internal (a ClusterIP,
/// subject to `internalTrafficPolicy`) or external (an external IP).
struct Address {
    address: Ipv4Addr,
    field: String,
    external: bool,
}

fn compile_service(
    service: &Service,
    slices: &[&EndpointSlice],
    node: &str,
    claimed: &mut BTreeMap<Frontend, DesiredService>,
    problems: &mut Vec<Problem>,
) {
    let (namespace, name) = object_key(&service.metadata);
    let mut reporter = Reporter {
        kind: "Service",
        namespace,
        name,
        problems,
    };
    if name.is_empty() {
        reporter.report("metadata.name", "", "a Service needs a name");
        return;
    }
    let Some(spec) = &service.spec else {
        return;
    };

    // `ShouldSkipService`: ExternalName Services are DNS only, headless ones have no address.
    if spec.type_.as_deref() == Some("ExternalName") {
        return;
    }
    let Some(addresses) = service_addresses(spec, &mut reporter) else {
        return;
    };

    // `newBaseServiceInfo`. The API server guarantees a config for ClientIP and defaults its
    // timeout; a manifest may leave both out.
    let affinity_timeout = match spec.session_affinity.as_deref() {
        Some("ClientIP") => Some(affinity_timeout(spec, &mut reporter)),
        None | Some("None") => None,
        Some(other) => {
            reporter.report(
                "spec.sessionAffinity",
                other,
                "unknown session affinity, none is used",
            );
            None
        }
    };
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");

    let slices: Vec<ParsedSlice<'_>> = slices
        .iter()
        .filter_map(|s| parse_slice(s, node, reporter.problems))
        .collect();

    for (i, port) in spec.ports.iter().flatten().enumerate() {
        let Some((number, protocol)) = service_port(i, port, &mut reporter) else {
            continue;
        };
        let port_name = port.name.as_deref().unwrap_or("");
        let endpoints = endpoints_for_port(&slices, port_name, protocol_name(port));
        let cluster = usable(endpoints.iter());
        // kube-proxy drops connections to a Local Service with no local endpoint (the
        // "has no local endpoints" filter rule). A socket-layer balancer cannot drop silently;
        // with no backend, bosun refuses the connection instead.
        let local = || usable(endpoints.iter().filter(|(_, e)| e.local));
        let for_cluster_ip = if internal_local {
            local()
        } else {
            cluster.clone()
        };

        let service_port_name = ServicePortName {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            port: port_name.to_owned(),
        };
        for address in &addresses {
            let frontend = Frontend {
                address: address.address,
                port: number,
                protocol,
            };
            if let Some(holder) = claimed.get(&frontend) {
                let message = format!("frontend {frontend} is already {}'s", holder.name);
                reporter.report(address.field.clone(), address.address.to_string(), &message);
                continue;
            }
            // Node-originated traffic to an external IP is short-circuited to the Cluster
            // policy's endpoints whatever either traffic policy says (the iptables proxier's
            // external-destination chain: "route LOCAL traffic ... to the policy=cluster
            // chain"); bosun only sees node-originated traffic.
            let backends = if address.external {
                cluster.clone()
            } else {
                for_cluster_ip.clone()
            };
            claimed.insert(
                frontend,
                DesiredService {
                    frontend,
                    name: service_port_name.clone(),
                    affinity_timeout,
                    backends,
                },
            );
        }
    }
}

/// The Service's IPv4 ClusterIP and IPv4 external IPs, or `None` when kube-proxy's IPv4
/// proxier skips the Service (headless, no cluster IP, no IPv4 cluster IP).
fn service_addresses(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    reporter: &mut Reporter<'_>,
) -> Option<Vec<Address>> {
    // `GetClusterIPByFamily` picks the cluster IP of the proxier's family; validation allows
    // at most one per family, and `clusterIPs[0]` is `clusterIP`.
    let cluster_ips: Vec<(String, &str)> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips
            .iter()
            .enumerate()
            .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip.as_str()))
            .collect(),
        _ => vec![(
            "spec.clusterIP".to_owned(),
            spec.cluster_ip.as_deref().unwrap_or(""),
        )],
    };
    // `IsServiceIPSet`: "None" is a headless Service, which has nothing to balance.
    if cluster_ips.iter().any(|(_, ip)| *ip == "None") {
        return None;
    }
    let mut addresses = Vec::new();
    for (field, ip) in cluster_ips {
        if ip.is_empty() {
            // kube-proxy skips such a Service too; with an API server it cannot happen, since
            // the API server allocates one on create. From a manifest, it is a mistake.
            reporter.report(field, ip, "no cluster IP: bosun does not allocate one");
            continue;
        }
        match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(address)) if addresses.is_empty() => addresses.push(Address {
                address,
                field,
                external: false,
            }),
            Ok(IpAddr::V4(_)) => reporter.report(
                field,
                ip,
                "a Service has at most one cluster IP per IP family; the first is used",
            ),
            // IPv4 only for now.
            Ok(IpAddr::V6(_)) => {}
            Err(_) => reporter.report(field, ip, "not an IP address"),
        }
    }
    if addresses.is_empty() {
        return None;
    }
    // `newBaseServiceInfo` keeps the external IPs of the proxier's family.
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        let field = format!("spec.externalIPs[{i}]");
        match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(address)) => addresses.push(Address {
                address,
                field,
                external: true,
            }),
            Ok(IpAddr::V6(_)) => {}
            Err(_) => reporter.report(field, ip, "not an IP address"),
        }
    }
    Some(addresses)
}

fn affinity_timeout(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    reporter: &mut Reporter<'_>,
) -> u32 {
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    match timeout {
        None => DEFAULT_AFFINITY_TIMEOUT,
        Some(t @ 1..=MAX_AFFINITY_TIMEOUT) => t.unsigned_abs(),
        Some(t) => {
            reporter.report(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                t.to_string(),
                "must be between 1 and 86400; the default 10800 is used",
            );
            DEFAULT_AFFINITY_TIMEOUT
        }
    }
}

/// The API server's default protocol for Service and EndpointSlice ports.
fn protocol_name(port: &ServicePort) -> &str {
    port.protocol.as_deref().unwrap_or("TCP")
}

/// A Service port's number and protocol, or `None` (and a problem) if bosun cannot balance it.
fn service_port(
    i: usize,
    port: &ServicePort,
    reporter: &mut Reporter<'_>,
) -> Option<(u16, Protocol)> {
    let protocol = match protocol_name(port) {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        "SCTP" => {
            let field = format!("spec.ports[{i}].protocol");
            reporter.report(field, "SCTP", "SCTP is not load-balanced by bosun");
            return None;
        }
        other => {
            let field = format!("spec.ports[{i}].protocol");
            reporter.report(field, other, "unknown protocol: TCP, UDP or SCTP");
            return None;
        }
    };
    match u16::try_from(port.port) {
        Ok(number) if number != 0 => Some((number, protocol)),
        _ => {
            let field = format!("spec.ports[{i}].port");
            reporter.report(field, port.port.to_string(), "not a port number (1-65535)");
            None
        }
    }
}

/// One EndpointSlice port, with the API server's defaults applied.
struct SlicePort<'a> {
    name: &'a str,
    protocol: &'a str,
    port: u16,
}

/// One endpoint as kube-proxy's `newEndpointSliceInfo` records it.
#[derive(Clone, Copy)]
struct SliceEndpoint {
    address: Ipv4Addr,
    ready: bool,
    serving: bool,
    terminating: bool,
    /// On this node (`EndpointSliceCache.isLocal`).
    local: bool,
}

struct ParsedSlice<'a> {
    ports: Vec<SlicePort<'a>>,
    endpoints: Vec<SliceEndpoint>,
}

/// What kube-proxy reads of a slice, or `None` for a slice of another address family.
fn parse_slice<'a>(
    slice: &'a EndpointSlice,
    node: &str,
    problems: &mut Vec<Problem>,
) -> Option<ParsedSlice<'a>> {
    // kube-proxy's IPv4 proxier reads IPv4 slices only (`EndpointSliceUpdate` drops FQDN
    // ones; IPv6 ones hold no endpoint of its family).
    if slice.address_type != "IPv4" {
        return None;
    }
    let (namespace, name) = object_key(&slice.metadata);
    let mut reporter = Reporter {
        kind: "EndpointSlice",
        namespace,
        name,
        problems,
    };

    let mut ports = Vec::new();
    for (i, port) in slice.ports.iter().flatten().enumerate() {
        // `endpointInfoByServicePort` ignores a port without a number (or 0) and one without
        // a name; the API server defaults the name to "" and the protocol to TCP
        // (`SetDefaults_EndpointPort`), so only a missing number is left to refuse.
        match port.port.map(u16::try_from) {
            Some(Ok(number)) if number != 0 => ports.push(SlicePort {
                name: port.name.as_deref().unwrap_or(""),
                protocol: port.protocol.as_deref().unwrap_or("TCP"),
                port: number,
            }),
            _ => {
                let value = port.port.map(|p| p.to_string()).unwrap_or_default();
                reporter.report(
                    format!("ports[{i}].port"),
                    value,
                    "not a port number (1-65535); this port has no backends",
                );
            }
        }
    }

    let mut endpoints = Vec::new();
    for (i, endpoint) in slice.endpoints.iter().enumerate() {
        // `addEndpoints` uses an endpoint's first address only.
        let Some(first) = endpoint.addresses.first() else {
            reporter.report(
                format!("endpoints[{i}].addresses"),
                "",
                "an endpoint needs an address",
            );
            continue;
        };
        let Ok(address) = first.parse::<Ipv4Addr>() else {
            let field = format!("endpoints[{i}].addresses[0]");
            reporter.report(field, first.as_str(), "not an IPv4 address");
            continue;
        };
        // `newEndpointSliceInfo`: ready and serving default to true, terminating to false.
        // The API documents serving nil as "defer to ready"; kube-proxy reads it as true, and
        // kube-proxy's reading is what decides where traffic goes, so it is followed here.
        let conditions = endpoint.conditions.clone().unwrap_or_default();
        endpoints.push(SliceEndpoint {
            address,
            ready: conditions.ready.unwrap_or(true),
            serving: conditions.serving.unwrap_or(true),
            terminating: conditions.terminating.unwrap_or(false),
            local: !node.is_empty() && endpoint.node_name.as_deref() == Some(node),
        });
    }
    Some(ParsedSlice { ports, endpoints })
}

/// Every endpoint of one Service port, keyed by backend: kube-proxy's
/// `endpointInfoByServicePort` and `addEndpoints`. Slice ports match the Service port by name
/// and protocol. An endpoint several slices list counts once; kube-proxy keeps whichever copy
/// its map iteration meets first unless a later one is local, so here the local copy wins and
/// otherwise the one in the slice first by name, to be deterministic.
fn endpoints_for_port(
    slices: &[ParsedSlice<'_>],
    name: &str,
    protocol: &str,
) -> BTreeMap<BackendAddr, SliceEndpoint> {
    let mut endpoints: BTreeMap<BackendAddr, SliceEndpoint> = BTreeMap::new();
    for slice in slices {
        for port in slice
            .ports
            .iter()
            .filter(|p| p.name == name && p.protocol == protocol)
        {
            for endpoint in &slice.endpoints {
                let backend = BackendAddr {
                    address: endpoint.address,
                    port: port.port,
                };
                let keep_old = endpoints
                    .get(&backend)
                    .is_some_and(|old| old.local || !endpoint.local);
                if !keep_old {
                    endpoints.insert(backend, *endpoint);
                }
            }
        }
    }
    endpoints
}

/// kube-proxy's `CategorizeEndpoints` for one traffic policy, without topology hints: the
/// ready endpoints, or if none is ready, those still serving while terminating. For Cluster
/// pass every endpoint; for Local only this node's. Sorted, since the map is.
fn usable<'a>(
    endpoints: impl Iterator<Item = (&'a BackendAddr, &'a SliceEndpoint)> + Clone,
) -> Vec<BackendAddr> {
    let pick = |keep: fn(&SliceEndpoint) -> bool| -> Vec<BackendAddr> {
        endpoints
            .clone()
            .filter(|(_, e)| keep(e))
            .map(|(b, _)| *b)
            .collect()
    };
    let ready = pick(|e| e.ready);
    if !ready.is_empty() {
        return ready;
    }
    pick(|e| e.serving && e.terminating)
}
