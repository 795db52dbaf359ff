//! Services and EndpointSlices as the datapath reads them: decoded once, at the edge, into
//! what kube-proxy's `ServicePort` and `Endpoint` infos hold and nothing more, with the
//! strings thousands of objects repeat (namespaces, port names, node names, zones) interned.
//! A Service here is a few dozen bytes where the API's object is kilobytes, which is what
//! lets a node hold 30,000 of them in a few megabytes.
//!
//! Decoding applies the defaults the API server would have applied (these objects may come
//! from a manifest) and keeps what validation would reject as [`Problem`]s on the object, each
//! naming the field and the value; the rest of the object is still served.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::compile::{Problem, Reporter};
use super::Protocol;
use crate::intern::intern;

/// The label that ties an EndpointSlice to its Service (`discovery.LabelServiceName`).
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Services (and their slices) with this label belong to another proxy
/// (`service.kubernetes.io/service-proxy-name`, kube-proxy's informers leave them out).
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Set on the slices of headless Services (`v1.IsHeadlessService`); kube-proxy leaves them out.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// The label selector kube-proxy's informers list Services and EndpointSlices with.
pub const PROXY_LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";
/// The Service annotations that ask for topology-aware routing (the current name and the
/// deprecated one).
const TOPOLOGY_ANNOTATIONS: [&str; 2] = [
    "service.kubernetes.io/topology-mode",
    "service.kubernetes.io/topology-aware-hints",
];

/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset: the API server's default
/// (`v1.DefaultClientIPServiceAffinitySeconds`), three hours.
const DEFAULT_AFFINITY_TIMEOUT: u32 = 10800;
/// The largest `timeoutSeconds` validation accepts (`core.MaxClientIPServiceAffinitySeconds`).
const MAX_AFFINITY_TIMEOUT: i32 = 86400;

/// A Service as the datapath reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// Where clients reach it: its IPv4 cluster IP first, then its external IPs and load
    /// balancer ingress IPs. Empty when kube-proxy's IPv4 proxier skips the Service
    /// (ExternalName, headless, no IPv4 cluster IP, another proxy's).
    pub addresses: Box<[Address]>,
    /// The ports it balances (TCP and UDP; the others are problems).
    pub ports: Box<[PortInfo]>,
    /// `sessionAffinity: ClientIP`: its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// Topology-aware routing asked for: `trafficDistribution: PreferClose` (or
    /// `PreferSameZone`), or the topology annotation set to anything but disabled.
    pub topology: bool,
    /// What could not be used as written.
    pub problems: Box<[Problem]>,
    /// `spec.healthCheckNodePort` of a `LoadBalancer` Service with `externalTrafficPolicy:
    /// Local` (kube-proxy's `NeedsHealthCheck`), where the node answers load balancers'
    /// health checks; 0 when none, and for a Service kube-proxy skips (no IPv4 cluster IP).
    pub health_check_node_port: u16,
}

/// One address of a Service, and the field it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Address {
    pub address: Ipv4Addr,
    pub source: AddressSource,
}

/// Which field of a Service an [`Address`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressSource {
    /// `spec.clusterIP`.
    ClusterIp,
    /// `spec.clusterIPs[i]`.
    ClusterIps(u8),
    /// `spec.externalIPs[i]`.
    ExternalIp(u16),
    /// `status.loadBalancer.ingress[i].ip`.
    LoadBalancer(u16),
    /// One of the node's addresses, with `spec.ports[i].nodePort`.
    NodePort(u16),
    /// A pod's `hostPort`, the `i`th of its containers' ports that have one.
    HostPort(u16),
}

impl AddressSource {
    /// Traffic to it is external (kube-proxy's external destinations), not a ClusterIP's.
    pub fn is_external(self) -> bool {
        matches!(
            self,
            Self::ExternalIp(_) | Self::LoadBalancer(_) | Self::NodePort(_) | Self::HostPort(_)
        )
    }

    /// The field's path.
    pub fn field(self) -> String {
        match self {
            Self::ClusterIp => "spec.clusterIP".to_owned(),
            Self::ClusterIps(i) => format!("spec.clusterIPs[{i}]"),
            Self::ExternalIp(i) => format!("spec.externalIPs[{i}]"),
            Self::LoadBalancer(i) => format!("status.loadBalancer.ingress[{i}].ip"),
            Self::NodePort(i) => format!("spec.ports[{i}].nodePort"),
            Self::HostPort(i) => format!("hostPort (the pod's port {i} with one)"),
        }
    }
}

/// One Service port the datapath balances.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInfo {
    /// Empty for a Service's single unnamed port.
    pub name: Arc<str>,
    pub port: u16,
    pub protocol: Protocol,
    /// `nodePort`, 0 when none.
    pub node_port: u16,
    /// Where it stands in `spec.ports`, for problems about its node port.
    pub index: u16,
}

/// An EndpointSlice as the datapath reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceInfo {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// The Service it belongs to (its `kubernetes.io/service-name` label); empty: none.
    pub service: Arc<str>,
    pub ports: Box<[SlicePort]>,
    /// Empty for a slice of another address family.
    pub endpoints: Box<[EndpointInfo]>,
    pub problems: Box<[Problem]>,
}

/// One EndpointSlice port, with the API server's defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    pub name: Arc<str>,
    /// `None` for a protocol the datapath does not balance: it matches no Service port.
    pub protocol: Option<Protocol>,
    pub port: u16,
}

/// One endpoint as kube-proxy's `newEndpointSliceInfo` records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    pub address: Ipv4Addr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// `nodeName` (in `discovery.k8s.io/v1beta1`, the `kubernetes.io/hostname` topology).
    pub node: Option<Arc<str>>,
    /// `hints.forZones[*].name`.
    pub zone_hints: Box<[Arc<str>]>,
}

/// A namespace left out (as in a manifest) is `default`, as `kubectl apply` would make it.
pub fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
}

fn label<'a>(meta: &'a ObjectMeta, name: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(name).map(String::as_str)
}

impl ServiceInfo {
    /// What the datapath reads of `service`.
    pub fn from_service(service: &Service) -> ServiceInfo {
        let meta = &service.metadata;
        let namespace = namespace_of(meta);
        let name = meta.name.as_deref().unwrap_or("");
        let mut problems = Vec::new();
        let mut reporter = Reporter {
            kind: "Service",
            namespace,
            name,
            problems: &mut problems,
        };
        let mut info = ServiceInfo {
            namespace: intern(namespace),
            name: intern(name),
            addresses: Box::new([]),
            ports: Box::new([]),
            affinity_timeout: None,
            internal_local: false,
            external_local: false,
            topology: false,
            problems: Box::new([]),
            health_check_node_port: 0,
        };
        if name.is_empty() {
            reporter.report("metadata.name", "", "a Service needs a name");
        } else if let Some(spec) = service.spec.as_ref().filter(|_| proxied(meta)) {
            info.read_spec(service, spec, &mut reporter);
        }
        info.problems = problems.into_boxed_slice();
        info
    }

    fn read_spec(&mut self, service: &Service, spec: &ServiceSpec, reporter: &mut Reporter<'_>) {
        // `ShouldSkipService`: ExternalName Services are DNS only, headless ones have no address.
        if spec.type_.as_deref() == Some("ExternalName") {
            return;
        }
        let Some(addresses) = addresses(service, spec, reporter) else {
            return;
        };
        // `newBaseServiceInfo`. The API server guarantees a config for ClientIP and defaults
        // its timeout; a manifest may leave both out.
        self.affinity_timeout = match spec.session_affinity.as_deref() {
            Some("ClientIP") => Some(affinity_timeout(spec, reporter)),
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
        self.internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
        self.external_local = spec.external_traffic_policy.as_deref() == Some("Local");
        let annotations = service.metadata.annotations.as_ref();
        let annotated = TOPOLOGY_ANNOTATIONS.iter().any(|name| {
            annotations
                .and_then(|a| a.get(*name))
                .is_some_and(|v| !matches!(v.as_str(), "" | "disabled" | "Disabled"))
        });
        self.topology = annotated
            || matches!(
                spec.traffic_distribution.as_deref(),
                Some("PreferClose" | "PreferSameZone")
            );
        self.ports = spec
            .ports
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, port)| service_port(i, port, spec.type_.as_deref(), reporter))
            .collect();
        self.addresses = addresses.into_boxed_slice();
        self.health_check_node_port = health_check_node_port(spec, reporter);
    }

    /// Whether any of its ports has a node port.
    pub fn has_node_ports(&self) -> bool {
        self.ports.iter().any(|p| p.node_port != 0)
    }

    /// Whether the Service has any frontend.
    pub fn is_served(&self) -> bool {
        !self.addresses.is_empty() && !self.ports.is_empty()
    }
}

/// `spec.healthCheckNodePort` when kube-proxy serves a health check for the Service
/// (`NeedsHealthCheck`: a `LoadBalancer` with `externalTrafficPolicy: Local`), else 0. The
/// API server allocates one for such a Service; kube-proxy logs one that lacks it and serves
/// none, bosun reports it.
fn health_check_node_port(spec: &ServiceSpec, reporter: &mut Reporter<'_>) -> u16 {
    let needs = spec.type_.as_deref() == Some("LoadBalancer")
        && spec.external_traffic_policy.as_deref() == Some("Local");
    if !needs {
        return 0;
    }
    let port = spec.health_check_node_port.unwrap_or(0);
    match u16::try_from(port) {
        Ok(port) if port != 0 => port,
        _ => {
            let message = if port == 0 {
                "a LoadBalancer Service with externalTrafficPolicy Local needs a health check node port; none is served"
            } else {
                "not a port number (1-65535); no health check is served"
            };
            reporter.report("spec.healthCheckNodePort", port.to_string(), message);
            0
        }
    }
}

/// Whether kube-proxy serves objects with these labels (its informers' label selector).
fn proxied(meta: &ObjectMeta) -> bool {
    label(meta, LABEL_SERVICE_PROXY_NAME).is_none() && label(meta, LABEL_HEADLESS).is_none()
}

/// The Service's IPv4 ClusterIP, external IPs and load balancer IPs, or `None` when
/// kube-proxy's IPv4 proxier skips the Service (headless, no cluster IP, no IPv4 cluster IP).
fn addresses(
    service: &Service,
    spec: &ServiceSpec,
    reporter: &mut Reporter<'_>,
) -> Option<Vec<Address>> {
    // `GetClusterIPByFamily` picks the cluster IP of the proxier's family; validation allows
    // at most one per family, and `clusterIPs[0]` is `clusterIP`.
    let cluster_ips: Vec<(AddressSource, &str)> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                let index = u8::try_from(i).unwrap_or(u8::MAX);
                (AddressSource::ClusterIps(index), ip.as_str())
            })
            .collect(),
        _ => vec![(
            AddressSource::ClusterIp,
            spec.cluster_ip.as_deref().unwrap_or(""),
        )],
    };
    // `IsServiceIPSet`: "None" is a headless Service, which has nothing to balance.
    if cluster_ips.iter().any(|(_, ip)| *ip == "None") {
        return None;
    }
    let mut addresses = Vec::new();
    for (source, ip) in cluster_ips {
        if ip.is_empty() {
            // kube-proxy skips such a Service too; with an API server it cannot happen, since
            // the API server allocates one on create. From a manifest, it is a mistake.
            reporter.report(
                source.field(),
                ip,
                "no cluster IP: bosun does not allocate one",
            );
            continue;
        }
        match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(address)) if addresses.is_empty() => {
                addresses.push(Address { address, source })
            }
            Ok(IpAddr::V4(_)) => reporter.report(
                source.field(),
                ip,
                "a Service has at most one cluster IP per IP family; the first is used",
            ),
            // IPv4 only for now.
            Ok(IpAddr::V6(_)) => {}
            Err(_) => reporter.report(source.field(), ip, "not an IP address"),
        }
    }
    if addresses.is_empty() {
        return None;
    }
    // `newBaseServiceInfo` keeps the external IPs and load balancer IPs of its family.
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        let source = AddressSource::ExternalIp(u16::try_from(i).unwrap_or(u16::MAX));
        match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(address)) => addresses.push(Address { address, source }),
            Ok(IpAddr::V6(_)) => {}
            Err(_) => reporter.report(source.field(), ip, "not an IP address"),
        }
    }
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    for (i, entry) in ingress.iter().enumerate() {
        let source = AddressSource::LoadBalancer(u16::try_from(i).unwrap_or(u16::MAX));
        // `ipMode: Proxy` asks proxies to leave the traffic to the load balancer.
        if entry.ip_mode.as_deref() == Some("Proxy") {
            continue;
        }
        let Some(ip) = entry.ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(address)) => addresses.push(Address { address, source }),
            Ok(IpAddr::V6(_)) => {}
            Err(_) => reporter.report(source.field(), ip, "not an IP address"),
        }
    }
    Some(addresses)
}

fn affinity_timeout(spec: &ServiceSpec, reporter: &mut Reporter<'_>) -> u32 {
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

/// A Service port, or `None` (and a problem) if bosun cannot balance it.
fn service_port(
    i: usize,
    port: &ServicePort,
    service_type: Option<&str>,
    reporter: &mut Reporter<'_>,
) -> Option<PortInfo> {
    // The API server's default protocol for Service ports is TCP.
    let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
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
    let number = match u16::try_from(port.port) {
        Ok(number) if number != 0 => number,
        _ => {
            let field = format!("spec.ports[{i}].port");
            reporter.report(field, port.port.to_string(), "not a port number (1-65535)");
            return None;
        }
    };
    Some(PortInfo {
        name: intern(port.name.as_deref().unwrap_or("")),
        port: number,
        protocol,
        node_port: node_port(i, port, service_type, reporter),
        index: u16::try_from(i).unwrap_or(u16::MAX),
    })
}

/// A port's `nodePort`, 0 for none, as the API server's validation would let it through: only
/// on NodePort and LoadBalancer Services, within 1-65535. The API server allocates one for a
/// NodePort Service that names none; bosun, reading a manifest, does not.
fn node_port(
    i: usize,
    port: &ServicePort,
    service_type: Option<&str>,
    reporter: &mut Reporter<'_>,
) -> u16 {
    let field = || format!("spec.ports[{i}].nodePort");
    let exposed = matches!(service_type, Some("NodePort" | "LoadBalancer"));
    match port.node_port {
        None | Some(0) => {
            if service_type == Some("NodePort") {
                reporter.report(field(), "", "no node port: bosun does not allocate one");
            }
            0
        }
        Some(number) if !exposed => {
            reporter.report(
                field(),
                number.to_string(),
                "may not be set unless the type is NodePort or LoadBalancer; not served",
            );
            0
        }
        Some(number) => match u16::try_from(number) {
            Ok(number) => number,
            Err(_) => {
                reporter.report(field(), number.to_string(), "not a port number (1-65535)");
                0
            }
        },
    }
}

impl SliceInfo {
    /// What the datapath reads of `slice`.
    pub fn from_slice(slice: &EndpointSlice) -> SliceInfo {
        let meta = &slice.metadata;
        let namespace = namespace_of(meta);
        let name = meta.name.as_deref().unwrap_or("");
        // kube-proxy's EndpointSliceCache keys slices by (namespace, service-name label)
        // (`endpointSliceCacheKeys`); a slice without the label belongs to nothing.
        let service = label(meta, LABEL_SERVICE_NAME)
            .filter(|_| proxied(meta))
            .unwrap_or("");
        let mut info = SliceInfo {
            namespace: intern(namespace),
            name: name.into(),
            service: intern(service),
            ports: Box::new([]),
            endpoints: Box::new([]),
            problems: Box::new([]),
        };
        // kube-proxy's IPv4 proxier reads IPv4 slices only (`EndpointSliceUpdate` drops FQDN
        // ones; IPv6 ones hold no endpoint of its family).
        if service.is_empty() || slice.address_type != "IPv4" {
            return info;
        }
        let mut problems = Vec::new();
        let mut reporter = Reporter {
            kind: "EndpointSlice",
            namespace,
            name,
            problems: &mut problems,
        };
        let mut ports = Vec::new();
        for (i, port) in slice.ports.iter().flatten().enumerate() {
            // `endpointInfoByServicePort` ignores a port without a number (or 0) and one
            // without a name; the API server defaults the name to "" and the protocol to TCP
            // (`SetDefaults_EndpointPort`), so only a missing number is left to refuse.
            match port.port.map(u16::try_from) {
                Some(Ok(number)) if number != 0 => ports.push(SlicePort {
                    name: intern(port.name.as_deref().unwrap_or("")),
                    protocol: match port.protocol.as_deref().unwrap_or("TCP") {
                        "TCP" => Some(Protocol::Tcp),
                        "UDP" => Some(Protocol::Udp),
                        _ => None,
                    },
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
        let mut endpoints = Vec::with_capacity(slice.endpoints.len());
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
            // `newEndpointSliceInfo`: ready and serving default to true, terminating to
            // false. The API documents serving nil as "defer to ready"; kube-proxy reads it
            // as true, and kube-proxy's reading is what decides where traffic goes.
            let conditions = endpoint.conditions.as_ref();
            let zone_hints = endpoint
                .hints
                .as_ref()
                .and_then(|h| h.for_zones.as_deref())
                .unwrap_or_default()
                .iter()
                .map(|zone| intern(&zone.name))
                .collect();
            endpoints.push(EndpointInfo {
                address,
                ready: conditions.and_then(|c| c.ready).unwrap_or(true),
                serving: conditions.and_then(|c| c.serving).unwrap_or(true),
                terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
                node: endpoint
                    .node_name
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .map(intern),
                zone_hints,
            });
        }
        info.ports = ports.into_boxed_slice();
        info.endpoints = endpoints.into_boxed_slice();
        info.problems = problems.into_boxed_slice();
        info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(yaml: &str) -> Service {
        serde_yaml::from_str(yaml).expect("a Service")
    }

    #[test]
    fn a_service_is_read_with_the_api_servers_defaults() {
        let info = ServiceInfo::from_service(&service(
            "metadata: {name: web}\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.10\n  externalIPs: [192.0.2.1, '2001:db8::1', bad]\n  ports: [{port: 80, nodePort: 30080}, {port: 81, protocol: SCTP}]\n  sessionAffinity: ClientIP\n  trafficDistribution: PreferClose\nstatus:\n  loadBalancer:\n    ingress: [{ip: 198.51.100.7}, {hostname: lb.example}, {ip: 198.51.100.8, ipMode: Proxy}]\n",
        ));
        assert_eq!(&*info.namespace, "default");
        let addresses: Vec<String> = info
            .addresses
            .iter()
            .map(|a| format!("{} {}", a.address, a.source.field()))
            .collect();
        assert_eq!(
            addresses,
            [
                "10.96.0.10 spec.clusterIP",
                "192.0.2.1 spec.externalIPs[0]",
                "198.51.100.7 status.loadBalancer.ingress[0].ip"
            ]
        );
        assert_eq!(info.ports.len(), 1);
        assert_eq!(info.ports[0].node_port, 30080);
        assert_eq!(info.affinity_timeout, Some(DEFAULT_AFFINITY_TIMEOUT));
        assert!(info.topology);
        let problems: Vec<String> = info.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            problems,
            [
                "Service default/web: spec.externalIPs[2]: \"bad\": not an IP address",
                "Service default/web: spec.ports[1].protocol: \"SCTP\": SCTP is not load-balanced by bosun",
            ]
        );
    }

    #[test]
    fn another_proxys_service_is_not_served() {
        let info = ServiceInfo::from_service(&service(
            "metadata: {name: web, labels: {service.kubernetes.io/service-proxy-name: other}}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n",
        ));
        assert!(!info.is_served());
    }
}
