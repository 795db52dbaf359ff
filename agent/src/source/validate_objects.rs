//! The checks the API server makes on the objects other than pods that a manifest directory
//! may hold — Services, EndpointSlices, NetworkPolicies, Namespaces, ConfigMaps and
//! Secrets — so that an invalid one is reported with its file and field instead of reaching
//! the service and policy compilers.
//!
//! Objects are checked as written in the manifest, before defaults: a field left out (or,
//! for the fields the API server holds as plain strings, left empty) reads as the default
//! the API server would give it. Messages follow `validate.rs`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointHints, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::strict::Problem;
use super::validate::{
    check_label, check_one_of, check_port, check_port_name, check_required_port, check_subdomain,
    duplicate, invalid, is_label, unsupported, MAX_LABEL, MAX_SUBDOMAIN, PROTOCOLS,
};

#[cfg(test)]
#[path = "validate_objects_tests.rs"]
mod tests;

/// A kind the API server validates before accepting it, other than Pod.
pub(crate) trait Validate {
    /// The problems the API server would report for the object as written in a manifest.
    fn validate(&self) -> Vec<Problem>;
}

impl Validate for Service {
    fn validate(&self) -> Vec<Problem> {
        validate_service(self)
    }
}

impl Validate for EndpointSlice {
    fn validate(&self) -> Vec<Problem> {
        validate_endpoint_slice(self)
    }
}

impl Validate for NetworkPolicy {
    fn validate(&self) -> Vec<Problem> {
        validate_network_policy(self)
    }
}

impl Validate for Namespace {
    fn validate(&self) -> Vec<Problem> {
        validate_namespace(self)
    }
}

impl Validate for ConfigMap {
    fn validate(&self) -> Vec<Problem> {
        validate_config_map(self)
    }
}

impl Validate for Secret {
    fn validate(&self) -> Vec<Problem> {
        validate_secret(self)
    }
}

const SERVICE_TYPES: &[&str] = &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
const SESSION_AFFINITIES: &[&str] = &["ClientIP", "None"];
const TRAFFIC_POLICIES: &[&str] = &["Cluster", "Local"];
const IP_FAMILIES: &[&str] = &["IPv4", "IPv6"];
const IP_FAMILY_POLICIES: &[&str] = &["SingleStack", "PreferDualStack", "RequireDualStack"];
const TRAFFIC_DISTRIBUTIONS: &[&str] = &["PreferClose", "PreferSameZone", "PreferSameNode"];
/// The longest `sessionAffinityConfig.clientIP.timeoutSeconds`: one day.
const MAX_AFFINITY_TIMEOUT: i32 = 86_400;
const TOPOLOGY_MODE_ANNOTATION: &str = "service.kubernetes.io/topology-mode";
const TOPOLOGY_HINTS_ANNOTATION: &str = "service.kubernetes.io/topology-aware-hints";
/// What `spec.loadBalancerSourceRanges` was before it was a field; read only when it is empty.
const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

const ADDRESS_TYPES: &[&str] = &["IPv4", "IPv6", "FQDN"];
const MAX_ENDPOINTS: usize = 1000;
const MAX_ADDRESSES: usize = 100;
const MAX_ENDPOINT_PORTS: usize = 20_000;
const MAX_TOPOLOGY_LABELS: usize = 16;
const MAX_HINTS: usize = 8;

const POLICY_TYPES: &[&str] = &["Ingress", "Egress"];
const SELECTOR_OPERATORS: &[&str] = &["In", "NotIn", "Exists", "DoesNotExist"];

/// Finalizers that need no domain prefix.
const STANDARD_FINALIZERS: &[&str] = &["kubernetes", "orphan", "foregroundDeletion"];
/// The most a ConfigMap's or Secret's values may hold together.
const MAX_DATA_SIZE: usize = 1024 * 1024;
/// The most an object's annotations, keys and values, may hold together.
const MAX_ANNOTATIONS_SIZE: usize = 256 * 1024;

const QUALIFIED_NAME_RULE: &str = "must be a name with an optional DNS subdomain prefix and \
                                   '/' (e.g. 'example.com/MyName')";
/// What a label value, and the name part of a qualified name, must do when not empty.
const NAME_RULE: &str = "consist of letters, digits, '-', '_' or '.', and must start and end \
                         with a letter or digit";
const DNS1035_LABEL_RULE: &str = "must be a lowercase RFC 1035 label: at most 63 characters, \
                                  lowercase letters, digits and '-', starting with a letter \
                                  and ending with a letter or digit";
const FINALIZER_RULE: &str = "must be qualified with a domain prefix (e.g. \
                              'example.com/cleanup') unless it is \"kubernetes\", \"orphan\" \
                              or \"foregroundDeletion\"";
const IP_RULE: &str = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";
const CIDR_RULE: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";
/// The API server still accepts `010.0.0.1` (with a warning that it will stop), but other
/// software reads such octets as octal, so the same text would name two addresses.
const LEADING_ZEROS: &str = "must not have leading 0s";

/// What an object's name must be; the API server's rule depends on the kind.
type NameRule = fn(&str) -> Result<(), String>;

/// Checks a Service as the API server's `ValidateService` would after defaulting it.
pub(crate) fn validate_service(service: &Service) -> Vec<Problem> {
    let mut problems = Vec::new();
    // Service names become DNS labels of their own (`name.namespace.svc`), and environment
    // variable prefixes, so they may not start with a digit.
    check_metadata(&mut problems, &service.metadata, check_dns1035_label, true);
    let annotations = service.metadata.annotations.as_ref();
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    if let (Some(mode), Some(hints)) = (
        annotation(TOPOLOGY_MODE_ANNOTATION),
        annotation(TOPOLOGY_HINTS_ANNOTATION),
    ) {
        if mode != hints {
            let field = format!("metadata.annotations[{TOPOLOGY_MODE_ANNOTATION}]");
            let why =
                format!("must match annotations[{TOPOLOGY_HINTS_ANNOTATION}] when both are set");
            problems.push(invalid(&field, mode, &why));
        }
    }

    let default_spec = ServiceSpec::default();
    let spec = service.spec.as_ref().unwrap_or(&default_spec);
    let type_ = non_empty(&spec.type_).unwrap_or("ClusterIP");
    check_one_of(&mut problems, "spec.type", Some(type_), SERVICE_TYPES);

    let headless = check_cluster_ips(&mut problems, spec, type_);
    match type_ {
        "NodePort" | "LoadBalancer" => {
            if let Some(field) = &headless {
                let why = format!("may not be set to 'None' for {type_} services");
                problems.push(invalid(field, "None", &why));
            }
        }
        "ExternalName" => {
            // The name a CNAME points at; a trailing dot marks it fully qualified.
            match non_empty(&spec.external_name) {
                None => problems.push(required("spec.externalName")),
                Some(name) => {
                    if let Err(why) = check_subdomain(name.strip_suffix('.').unwrap_or(name)) {
                        problems.push(invalid("spec.externalName", name, &why));
                    }
                }
            }
        }
        _ => {}
    }

    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() && headless.is_none() && type_ != "ExternalName" {
        problems.push(required("spec.ports"));
    }
    check_service_ports(&mut problems, ports, type_);
    check_labels(&mut problems, "spec.selector", spec.selector.as_ref());

    let affinity = non_empty(&spec.session_affinity).unwrap_or("None");
    check_one_of(
        &mut problems,
        "spec.sessionAffinity",
        Some(affinity),
        SESSION_AFFINITIES,
    );
    // With `None` the API server drops `sessionAffinityConfig` instead of rejecting it; with
    // `ClientIP` a missing timeout becomes the default of three hours.
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    if let Some(timeout) = timeout.filter(|_| affinity == "ClientIP") {
        if !(1..=MAX_AFFINITY_TIMEOUT).contains(&timeout) {
            problems.push(Problem::new(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                format!(
                    "invalid value {timeout}: must be greater than 0 and at most \
                     {MAX_AFFINITY_TIMEOUT}"
                ),
            ));
        }
    }

    let external_ips = spec.external_ips.as_deref().unwrap_or_default();
    for (index, ip) in external_ips.iter().enumerate() {
        let field = format!("spec.externalIPs[{index}]");
        if let Err(why) = parse_ip(ip).and_then(check_routable_ip) {
            problems.push(invalid(&field, ip, &why));
        }
    }
    check_traffic_policies(&mut problems, spec, type_, !external_ips.is_empty());
    check_load_balancer_fields(
        &mut problems,
        spec,
        type_,
        annotation(SOURCE_RANGES_ANNOTATION),
    );
    problems
}

/// `spec.clusterIP`, `spec.clusterIPs`, `spec.ipFamilies` and `spec.ipFamilyPolicy`. Returns
/// the field that makes the Service headless (`clusterIP: None`), if one does.
fn check_cluster_ips(
    problems: &mut Vec<Problem>,
    spec: &ServiceSpec,
    type_: &str,
) -> Option<String> {
    let cluster_ip = non_empty(&spec.cluster_ip);
    let cluster_ips = spec.cluster_ips.as_deref().unwrap_or_default();
    let families = spec.ip_families.as_deref().unwrap_or_default();
    if type_ == "ExternalName" {
        let why = "may not be set for ExternalName services";
        if cluster_ip.is_some() {
            problems.push(forbidden("spec.clusterIP", why));
        } else if !cluster_ips.is_empty() {
            problems.push(forbidden("spec.clusterIPs", why));
        }
        if !families.is_empty() {
            problems.push(forbidden("spec.ipFamilies", why));
        }
        if spec.ip_family_policy.is_some() {
            problems.push(forbidden("spec.ipFamilyPolicy", why));
        }
        return None;
    }

    // The API server fills whichever of clusterIP and clusterIPs is left out from the other.
    let ips: Vec<(String, &str)> = if cluster_ips.is_empty() {
        cluster_ip
            .map(|ip| ("spec.clusterIP".to_string(), ip))
            .into_iter()
            .collect()
    } else {
        if let Some(ip) = cluster_ip.filter(|ip| cluster_ips[0] != *ip) {
            let why = format!("first value must match spec.clusterIP {ip:?}");
            problems.push(invalid_list("spec.clusterIPs", cluster_ips, &why));
        }
        let fields = (0..).map(|index| format!("spec.clusterIPs[{index}]"));
        fields.zip(cluster_ips.iter().map(String::as_str)).collect()
    };

    let mut seen_families: BTreeMap<&str, String> = BTreeMap::new();
    for (index, family) in families.iter().enumerate() {
        let field = format!("spec.ipFamilies[{index}]");
        if !IP_FAMILIES.contains(&family.as_str()) {
            problems.push(unsupported(&field, family, IP_FAMILIES));
        } else if let Some(first) = seen_families.get(family.as_str()) {
            problems.push(duplicate(&field, family, first));
        } else {
            seen_families.insert(family.as_str(), field);
        }
    }
    let policy = spec.ip_family_policy.as_deref();
    check_one_of(problems, "spec.ipFamilyPolicy", policy, IP_FAMILY_POLICIES);

    let headless = match ips.as_slice() {
        [(field, "None")] => Some(field.clone()),
        _ => None,
    };
    let mut addresses = Vec::new();
    for (index, (field, ip)) in ips.iter().enumerate() {
        if index == 0 && *ip == "None" {
            if ips.len() > 1 {
                let why = "'None' must be the first and only value";
                problems.push(invalid_list("spec.clusterIPs", cluster_ips, why));
            }
            continue;
        }
        match parse_ip(ip) {
            Ok(address) => addresses.push((field, *ip, address)),
            Err(why) => problems.push(invalid(field, ip, &why)),
        }
    }
    if ips.len() > 2 {
        let why = "may only hold up to 2 values";
        problems.push(invalid_list("spec.clusterIPs", cluster_ips, why));
    }
    // Comparing families is meaningless once an address is wrong.
    if addresses.len() + usize::from(headless.is_some()) != ips.len() || ips.len() > 2 {
        return headless;
    }
    if let [(_, _, first), (_, _, second)] = addresses.as_slice() {
        if first.is_ipv6() == second.is_ipv6() {
            let why = "may specify no more than one IP for each IP family";
            problems.push(invalid_list("spec.clusterIPs", cluster_ips, why));
        }
    }
    for (index, ((field, ip, address), family)) in addresses.iter().zip(families).enumerate() {
        let expected = match family.as_str() {
            "IPv4" if address.is_ipv6() => "IPv4",
            "IPv6" if address.is_ipv4() => "IPv6",
            _ => continue,
        };
        let why = format!("expected an {expected} value as indicated by spec.ipFamilies[{index}]");
        problems.push(invalid(field, ip, &why));
    }
    // The API server's IP allocator refuses these before it allocates anything.
    if policy == Some("SingleStack") {
        let several = if addresses.len() > 1 {
            Some("cluster IPs")
        } else if families.len() > 1 {
            Some("IP families")
        } else {
            None
        };
        if let Some(several) = several {
            let why = format!(
                "must be 'RequireDualStack' or 'PreferDualStack' when multiple {several} are \
                 specified"
            );
            problems.push(invalid("spec.ipFamilyPolicy", "SingleStack", &why));
        }
    }
    headless
}

/// `spec.ports`: each port, and the names and (protocol, port) pairs unique among them.
fn check_service_ports(problems: &mut Vec<Problem>, ports: &[ServicePort], type_: &str) {
    let mut names: BTreeMap<&str, String> = BTreeMap::new();
    let mut numbers: BTreeMap<(&str, i32), String> = BTreeMap::new();
    let mut node_ports: BTreeMap<(&str, i32), String> = BTreeMap::new();
    for (index, port) in ports.iter().enumerate() {
        let path = format!("spec.ports[{index}]");
        let name_field = format!("{path}.name");
        // The API server checks a Service port's name as a DNS label; only the container
        // port names a `targetPort` refers to are IANA service names (at most 15 characters).
        match non_empty(&port.name) {
            None if ports.len() > 1 => problems.push(required(&name_field)),
            None => {}
            Some(name) => {
                if let Err(why) = check_label(name) {
                    problems.push(invalid(&name_field, name, &why));
                }
                if let Some(first) = names.get(name) {
                    problems.push(duplicate(&name_field, name, first));
                } else {
                    names.insert(name, name_field);
                }
            }
        }
        check_required_port(problems, &format!("{path}.port"), port.port);
        let protocol = non_empty(&port.protocol).unwrap_or("TCP");
        check_one_of(
            problems,
            &format!("{path}.protocol"),
            Some(protocol),
            PROTOCOLS,
        );
        let target_field = format!("{path}.targetPort");
        match &port.target_port {
            // Left out, 0 and "" all default to `port`.
            None | Some(IntOrString::Int(0)) => {}
            Some(IntOrString::String(name)) if name.is_empty() => {}
            Some(IntOrString::Int(number)) => check_port(problems, &target_field, *number),
            Some(IntOrString::String(name)) => {
                if let Err(why) = check_port_name(name) {
                    problems.push(invalid(&target_field, name, &why));
                }
            }
        }
        if let Some(app_protocol) = &port.app_protocol {
            if let Err(why) = check_qualified_name(app_protocol) {
                problems.push(invalid(&format!("{path}.appProtocol"), app_protocol, &why));
            }
        }
        if let Some(node_port) = port.node_port.filter(|p| *p != 0) {
            let field = format!("{path}.nodePort");
            if type_ == "ClusterIP" {
                let why = "may not be used when `type` is 'ClusterIP'";
                problems.push(forbidden(&field, why));
            } else {
                // The cluster's node port range (30000-32767 unless configured) is the
                // allocator's to enforce; a standalone node has no such range.
                check_port(problems, &field, node_port);
            }
            if let Some(first) = node_ports.get(&(protocol, node_port)) {
                problems.push(duplicate(&field, &node_port.to_string(), first));
            } else {
                node_ports.insert((protocol, node_port), field);
            }
        }
        if let Some(first) = numbers.get(&(protocol, port.port)) {
            let value = format!("{}/{protocol}", port.port);
            problems.push(duplicate(&path, &value, first));
        } else {
            numbers.insert((protocol, port.port), path);
        }
    }
}

/// `spec.externalTrafficPolicy`, `spec.healthCheckNodePort`, `spec.internalTrafficPolicy` and
/// `spec.trafficDistribution`.
fn check_traffic_policies(
    problems: &mut Vec<Problem>,
    spec: &ServiceSpec,
    type_: &str,
    has_external_ips: bool,
) {
    let externally_accessible =
        matches!(type_, "NodePort" | "LoadBalancer") || (type_ == "ClusterIP" && has_external_ips);
    let external_policy = non_empty(&spec.external_traffic_policy);
    if let Some(policy) = external_policy {
        if !externally_accessible {
            let why = "may only be set for externally-accessible services";
            problems.push(invalid("spec.externalTrafficPolicy", policy, why));
        } else {
            check_one_of(
                problems,
                "spec.externalTrafficPolicy",
                Some(policy),
                TRAFFIC_POLICIES,
            );
        }
    }
    if let Some(port) = spec.health_check_node_port.filter(|p| *p != 0) {
        let field = "spec.healthCheckNodePort";
        if type_ == "LoadBalancer" && external_policy == Some("Local") {
            check_port(problems, field, port);
        } else {
            problems.push(Problem::new(
                field,
                format!(
                    "invalid value {port}: may only be set when `type` is 'LoadBalancer' and \
                     `externalTrafficPolicy` is 'Local'"
                ),
            ));
        }
    }
    check_one_of(
        problems,
        "spec.internalTrafficPolicy",
        spec.internal_traffic_policy.as_deref(),
        TRAFFIC_POLICIES,
    );
    check_one_of(
        problems,
        "spec.trafficDistribution",
        spec.traffic_distribution.as_deref(),
        TRAFFIC_DISTRIBUTIONS,
    );
}

/// The fields only a LoadBalancer may set: `loadBalancerSourceRanges` (or its older
/// annotation), `allocateLoadBalancerNodePorts` and `loadBalancerClass`.
fn check_load_balancer_fields(
    problems: &mut Vec<Problem>,
    spec: &ServiceSpec,
    type_: &str,
    ranges_annotation: Option<&str>,
) {
    let load_balancer = type_ == "LoadBalancer";
    let only_load_balancer = "may only be used when `type` is 'LoadBalancer'";
    let ranges = spec
        .load_balancer_source_ranges
        .as_deref()
        .unwrap_or_default();
    if !ranges.is_empty() {
        let field = "spec.loadBalancerSourceRanges";
        if !load_balancer {
            problems.push(forbidden(field, only_load_balancer));
        }
        for (index, range) in ranges.iter().enumerate() {
            // Spaces around a range are tolerated, as they were in the annotation.
            if let Err(why) = parse_cidr(range.trim()) {
                problems.push(invalid(&format!("{field}[{index}]"), range, &why));
            }
        }
    } else if let Some(annotation) = ranges_annotation {
        let field = format!("metadata.annotations[{SOURCE_RANGES_ANNOTATION}]");
        if !load_balancer {
            problems.push(forbidden(&field, only_load_balancer));
        }
        let ranges = annotation.split(',').map(str::trim);
        for range in ranges.filter(|_| !annotation.trim().is_empty()) {
            if let Err(why) = parse_cidr(range) {
                problems.push(invalid(&field, range, &why));
            }
        }
    }
    if spec.allocate_load_balancer_node_ports.is_some() && !load_balancer {
        let field = "spec.allocateLoadBalancerNodePorts";
        problems.push(forbidden(field, only_load_balancer));
    }
    if let Some(class) = &spec.load_balancer_class {
        let field = "spec.loadBalancerClass";
        if !load_balancer {
            problems.push(forbidden(field, only_load_balancer));
        } else if let Err(why) = check_qualified_name(class) {
            problems.push(invalid(field, class, &why));
        }
    }
}

/// Checks an EndpointSlice as the API server's `ValidateEndpointSlice` would.
pub(crate) fn validate_endpoint_slice(slice: &EndpointSlice) -> Vec<Problem> {
    let mut problems = Vec::new();
    check_metadata(&mut problems, &slice.metadata, check_subdomain, true);
    let address_type = slice.address_type.as_str();
    if address_type.is_empty() {
        problems.push(required("addressType"));
    } else {
        check_one_of(
            &mut problems,
            "addressType",
            Some(address_type),
            ADDRESS_TYPES,
        );
    }
    if slice.endpoints.len() > MAX_ENDPOINTS {
        problems.push(too_many("endpoints", slice.endpoints.len(), MAX_ENDPOINTS));
    } else {
        for (index, endpoint) in slice.endpoints.iter().enumerate() {
            check_endpoint(
                &mut problems,
                &format!("endpoints[{index}]"),
                endpoint,
                address_type,
            );
        }
    }
    let ports = slice.ports.as_deref().unwrap_or_default();
    if ports.len() > MAX_ENDPOINT_PORTS {
        problems.push(too_many("ports", ports.len(), MAX_ENDPOINT_PORTS));
    } else {
        check_endpoint_ports(&mut problems, ports);
    }
    problems
}

/// One endpoint of a slice whose `addressType` is `address_type`. Its `conditions` are
/// three optional booleans, valid in any combination.
fn check_endpoint(
    problems: &mut Vec<Problem>,
    path: &str,
    endpoint: &Endpoint,
    address_type: &str,
) {
    let addresses_field = format!("{path}.addresses");
    match endpoint.addresses.len() {
        0 => problems.push(Problem::new(
            &addresses_field,
            "required value: must contain at least 1 address",
        )),
        count if count > MAX_ADDRESSES => {
            problems.push(too_many(&addresses_field, count, MAX_ADDRESSES));
        }
        _ => {}
    }
    for (index, address) in endpoint.addresses.iter().enumerate() {
        let field = format!("{addresses_field}[{index}]");
        let checked = match address_type {
            "IPv4" => parse_ip(address).and_then(|ip| match ip {
                IpAddr::V4(_) => check_routable_ip(ip),
                IpAddr::V6(_) => Err("must be a valid IPv4 address".to_string()),
            }),
            "IPv6" => parse_ip(address).and_then(|ip| match ip {
                IpAddr::V6(_) => check_routable_ip(ip),
                IpAddr::V4(_) => Err("must be a valid IPv6 address".to_string()),
            }),
            "FQDN" => check_fqdn(address),
            // An unsupported addressType is reported once, not at every address.
            _ => Ok(()),
        };
        if let Err(why) = checked {
            problems.push(invalid(&field, address, &why));
        }
    }
    if let Some(node_name) = &endpoint.node_name {
        if let Err(why) = check_subdomain(node_name) {
            problems.push(invalid(&format!("{path}.nodeName"), node_name, &why));
        }
    }
    if let Some(topology) = &endpoint.deprecated_topology {
        let field = format!("{path}.deprecatedTopology");
        if topology.len() > MAX_TOPOLOGY_LABELS {
            problems.push(too_many(&field, topology.len(), MAX_TOPOLOGY_LABELS));
        }
        check_labels(problems, &field, Some(topology));
    }
    if let Some(hostname) = &endpoint.hostname {
        if let Err(why) = check_label(hostname) {
            problems.push(invalid(&format!("{path}.hostname"), hostname, &why));
        }
    }
    if let Some(hints) = &endpoint.hints {
        check_hints(problems, &format!("{path}.hints"), hints);
    }
}

/// An endpoint's `hints`: at most 8 zones (label values) and 8 nodes (node names), none twice.
fn check_hints(problems: &mut Vec<Problem>, path: &str, hints: &EndpointHints) {
    let zones = hints.for_zones.iter().flatten().map(|z| z.name.as_str());
    let nodes = hints.for_nodes.iter().flatten().map(|n| n.name.as_str());
    let lists: [(&str, Vec<&str>, NameRule); 2] = [
        ("forZones", zones.collect(), check_label_value),
        ("forNodes", nodes.collect(), check_subdomain),
    ];
    for (list, names, rule) in lists {
        let path = format!("{path}.{list}");
        if names.len() > MAX_HINTS {
            problems.push(too_many(&path, names.len(), MAX_HINTS));
            continue;
        }
        let mut seen: BTreeMap<&str, String> = BTreeMap::new();
        for (index, name) in names.into_iter().enumerate() {
            let field = format!("{path}[{index}].name");
            if let Some(first) = seen.get(name) {
                problems.push(duplicate(&field, name, first));
            } else if let Err(why) = rule(name) {
                problems.push(invalid(&field, name, &why));
            } else {
                seen.insert(name, field);
            }
        }
    }
}

/// A slice's `ports`. A left-out name is the empty name, which only one port may have.
fn check_endpoint_ports(problems: &mut Vec<Problem>, ports: &[EndpointPort]) {
    let mut names: BTreeMap<&str, String> = BTreeMap::new();
    for (index, port) in ports.iter().enumerate() {
        let path = format!("ports[{index}]");
        let name_field = format!("{path}.name");
        let name = port.name.as_deref().unwrap_or_default();
        if !name.is_empty() {
            if let Err(why) = check_label(name) {
                problems.push(invalid(&name_field, name, &why));
            }
        }
        if let Some(first) = names.get(name) {
            problems.push(duplicate(&name_field, name, first));
        } else {
            names.insert(name, name_field);
        }
        let protocol = port.protocol.as_deref();
        check_one_of(problems, &format!("{path}.protocol"), protocol, PROTOCOLS);
        // The API server leaves the number unchecked, but no traffic reaches port 0 or 70000.
        if let Some(number) = port.port {
            check_port(problems, &format!("{path}.port"), number);
        }
        if let Some(app_protocol) = &port.app_protocol {
            if let Err(why) = check_qualified_name(app_protocol) {
                problems.push(invalid(&format!("{path}.appProtocol"), app_protocol, &why));
            }
        }
    }
}

/// Checks a NetworkPolicy as the API server's `ValidateNetworkPolicy` would.
pub(crate) fn validate_network_policy(policy: &NetworkPolicy) -> Vec<Problem> {
    let mut problems = Vec::new();
    check_metadata(&mut problems, &policy.metadata, check_subdomain, true);
    // No spec selects every pod of the namespace and isolates it for ingress.
    let Some(spec) = policy.spec.as_ref() else {
        return problems;
    };
    if let Some(selector) = &spec.pod_selector {
        check_label_selector(&mut problems, "spec.podSelector", selector);
    }
    let ingress = spec.ingress.iter().flatten();
    let egress = spec.egress.iter().flatten();
    let rules = ingress
        .map(|rule| ("ingress", "from", &rule.ports, &rule.from))
        .enumerate()
        .chain(
            egress
                .map(|rule| ("egress", "to", &rule.ports, &rule.to))
                .enumerate(),
        );
    for (index, (direction, peers_name, ports, peers)) in rules {
        let path = format!("spec.{direction}[{index}]");
        for (index, port) in ports.iter().flatten().enumerate() {
            check_policy_port(&mut problems, &format!("{path}.ports[{index}]"), port);
        }
        for (index, peer) in peers.iter().flatten().enumerate() {
            check_peer(
                &mut problems,
                &format!("{path}.{peers_name}[{index}]"),
                peer,
            );
        }
    }
    let mut types: BTreeMap<&str, String> = BTreeMap::new();
    for (index, policy_type) in spec.policy_types.iter().flatten().enumerate() {
        let field = format!("spec.policyTypes[{index}]");
        if !POLICY_TYPES.contains(&policy_type.as_str()) {
            problems.push(unsupported(&field, policy_type, POLICY_TYPES));
        } else if let Some(first) = types.get(policy_type.as_str()) {
            // The API server only refuses more than two types; a repeated one is refused here
            // too, since `[Ingress, Ingress]` meant to isolate egress would silently not.
            problems.push(duplicate(&field, policy_type, first));
        } else {
            types.insert(policy_type, field);
        }
    }
    problems
}

/// A rule's port: a number (with an optional `endPort`) or a named container port.
fn check_policy_port(problems: &mut Vec<Problem>, path: &str, port: &NetworkPolicyPort) {
    let protocol = port.protocol.as_deref();
    check_one_of(problems, &format!("{path}.protocol"), protocol, PROTOCOLS);
    let end_field = format!("{path}.endPort");
    let end_forbidden = |why: &str| {
        port.end_port
            .map(|end| Problem::new(&end_field, format!("invalid value {end}: {why}")))
    };
    match &port.port {
        Some(IntOrString::Int(number)) => {
            check_port(problems, &format!("{path}.port"), *number);
            if let Some(end) = port.end_port {
                if end < *number {
                    problems.push(Problem::new(
                        &end_field,
                        format!("invalid value {end}: must be greater than or equal to `port`"),
                    ));
                }
                check_port(problems, &end_field, end);
            }
        }
        Some(IntOrString::String(name)) => {
            problems.extend(end_forbidden(
                "may not be specified when `port` is non-numeric",
            ));
            if let Err(why) = check_port_name(name) {
                problems.push(invalid(&format!("{path}.port"), name, &why));
            }
        }
        None => problems.extend(end_forbidden(
            "may not be specified when `port` is not specified",
        )),
    }
}

/// A rule's peer: pod and namespace selectors, or an `ipBlock` alone.
fn check_peer(problems: &mut Vec<Problem>, path: &str, peer: &NetworkPolicyPeer) {
    if let Some(selector) = &peer.pod_selector {
        check_label_selector(problems, &format!("{path}.podSelector"), selector);
    }
    if let Some(selector) = &peer.namespace_selector {
        check_label_selector(problems, &format!("{path}.namespaceSelector"), selector);
    }
    if let Some(block) = &peer.ip_block {
        check_ip_block(problems, &format!("{path}.ipBlock"), block);
    }
    let selectors =
        usize::from(peer.pod_selector.is_some()) + usize::from(peer.namespace_selector.is_some());
    match (selectors, &peer.ip_block) {
        (0, None) => problems.push(Problem::new(path, "required value: must specify a peer")),
        (1.., Some(_)) => problems.push(forbidden(
            path,
            "may not specify both ipBlock and another peer",
        )),
        _ => {}
    }
}

fn check_ip_block(problems: &mut Vec<Problem>, path: &str, block: &IPBlock) {
    let cidr_field = format!("{path}.cidr");
    if block.cidr.is_empty() {
        problems.push(required(&cidr_field));
        return;
    }
    let cidr = match parse_cidr(&block.cidr) {
        Ok(cidr) => cidr,
        Err(why) => {
            problems.push(invalid(&cidr_field, &block.cidr, &why));
            return;
        }
    };
    for (index, except) in block.except.iter().flatten().enumerate() {
        let field = format!("{path}.except[{index}]");
        match parse_cidr(except) {
            Ok(network) if cidr.contains(network) && network.len > cidr.len => {}
            Ok(_) => {
                let why = format!("must be a strict subset of the cidr {:?}", block.cidr);
                problems.push(invalid(&field, except, &why));
            }
            Err(why) => problems.push(invalid(&field, except, &why)),
        }
    }
}

/// Checks a Namespace as the API server's `ValidateNamespace` would.
pub(crate) fn validate_namespace(namespace: &Namespace) -> Vec<Problem> {
    let mut problems = Vec::new();
    // A namespace is not in a namespace; the API server ignores one written here.
    check_metadata(&mut problems, &namespace.metadata, check_label, false);
    let spec = namespace.spec.as_ref();
    for (index, finalizer) in spec
        .and_then(|s| s.finalizers.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Err(why) = check_finalizer(finalizer) {
            problems.push(invalid(
                &format!("spec.finalizers[{index}]"),
                finalizer,
                &why,
            ));
        }
    }
    problems
}

/// Checks a ConfigMap as the API server's `ValidateConfigMap` would.
pub(crate) fn validate_config_map(config_map: &ConfigMap) -> Vec<Problem> {
    let mut problems = Vec::new();
    check_metadata(&mut problems, &config_map.metadata, check_subdomain, true);
    let data = config_map.data.as_ref();
    let binary_data = config_map.binary_data.as_ref();
    let mut size = 0;
    for (key, value) in data.into_iter().flatten() {
        let field = format!("data[{key}]");
        if let Err(why) = check_config_key(key) {
            problems.push(invalid(&field, key, &why));
        }
        if binary_data.is_some_and(|b| b.contains_key(key)) {
            problems.push(invalid(
                &field,
                key,
                "duplicate of key present in binaryData",
            ));
        }
        size += value.len();
    }
    for (key, value) in binary_data.into_iter().flatten() {
        if let Err(why) = check_config_key(key) {
            problems.push(invalid(&format!("binaryData[{key}]"), key, &why));
        }
        size += value.0.len();
    }
    if size > MAX_DATA_SIZE {
        problems.push(Problem::new(
            "",
            format!("too long: data and binaryData hold {size} bytes, more than {MAX_DATA_SIZE}"),
        ));
    }
    problems
}

/// Checks a Secret as the API server's `ValidateSecret` would, `stringData` included: the API
/// server merges it into `data` (its values winning) before it validates. Problems with a
/// key are reported where the key is written.
pub(crate) fn validate_secret(secret: &Secret) -> Vec<Problem> {
    let mut problems = Vec::new();
    check_metadata(&mut problems, &secret.metadata, check_subdomain, true);
    let mut data: BTreeMap<&str, &[u8]> = BTreeMap::new();
    for (key, value) in secret.data.iter().flatten() {
        if let Err(why) = check_config_key(key) {
            problems.push(invalid(&format!("data[{key}]"), key, &why));
        }
        data.insert(key, &value.0);
    }
    for (key, value) in secret.string_data.iter().flatten() {
        if let Err(why) = check_config_key(key) {
            problems.push(invalid(&format!("stringData[{key}]"), key, &why));
        }
        data.insert(key, value.as_bytes());
    }
    let size: usize = data.values().map(|v| v.len()).sum();
    if size > MAX_DATA_SIZE {
        problems.push(Problem::new(
            "data",
            format!("too long: {size} bytes, more than {MAX_DATA_SIZE}"),
        ));
    }

    let required_key = |key: &str| required(format!("data[{key}]"));
    match non_empty(&secret.type_).unwrap_or("Opaque") {
        "kubernetes.io/service-account-token" => {
            // The token and the account's UID are filled in by a controller later.
            let key = "kubernetes.io/service-account.name";
            let annotations = secret.metadata.annotations.as_ref();
            if annotations
                .and_then(|a| a.get(key))
                .is_none_or(String::is_empty)
            {
                problems.push(required(format!("metadata.annotations[{key}]")));
            }
        }
        "kubernetes.io/dockercfg" => check_json_key(&mut problems, &data, ".dockercfg"),
        "kubernetes.io/dockerconfigjson" => {
            check_json_key(&mut problems, &data, ".dockerconfigjson");
        }
        // Either may be empty, but one must be there.
        "kubernetes.io/basic-auth"
            if !data.contains_key("username") && !data.contains_key("password") =>
        {
            problems.push(required_key("username"));
            problems.push(required_key("password"));
        }
        "kubernetes.io/ssh-auth" if data.get("ssh-privatekey").is_none_or(|v| v.is_empty()) => {
            problems.push(required_key("ssh-privatekey"));
        }
        "kubernetes.io/tls" => {
            for key in ["tls.crt", "tls.key"] {
                if !data.contains_key(key) {
                    problems.push(required_key(key));
                }
            }
        }
        // Opaque, types the API server knows nothing of, and the types above when they
        // hold what they need.
        _ => {}
    }
    problems
}

/// A key of a docker config Secret, which must hold a JSON object.
fn check_json_key(problems: &mut Vec<Problem>, data: &BTreeMap<&str, &[u8]>, key: &str) {
    let field = format!("data[{key}]");
    let Some(value) = data.get(key) else {
        problems.push(required(field));
        return;
    };
    // `null` is accepted too, as an empty object.
    if let Err(err) =
        serde_json::from_slice::<Option<serde_json::Map<String, serde_json::Value>>>(value)
    {
        // The value is a credential: it is not repeated in the message.
        problems.push(invalid(
            &field,
            "<secret contents redacted>",
            &err.to_string(),
        ));
    }
}

/// The metadata checks every kind shares: the name by `name_rule`, the namespace if the kind
/// has one, labels, annotations and finalizers. A namespace left out is `default`.
fn check_metadata(
    problems: &mut Vec<Problem>,
    meta: &ObjectMeta,
    name_rule: NameRule,
    namespaced: bool,
) {
    match meta.name.as_deref() {
        None | Some("") => problems.push(required("metadata.name")),
        Some(name) => {
            if let Err(why) = name_rule(name) {
                problems.push(invalid("metadata.name", name, &why));
            }
        }
    }
    if let Some(namespace) = meta
        .namespace
        .as_deref()
        .filter(|n| namespaced && !n.is_empty())
    {
        if let Err(why) = check_label(namespace) {
            problems.push(invalid("metadata.namespace", namespace, &why));
        }
    }
    check_labels(problems, "metadata.labels", meta.labels.as_ref());

    let mut annotations_size = 0;
    for (key, value) in meta.annotations.iter().flatten() {
        // Unlike a label key, an annotation key may have capitals in its prefix.
        if let Err(why) = check_qualified_name(&key.to_lowercase()) {
            problems.push(invalid("metadata.annotations", key, &why));
        }
        annotations_size += key.len() + value.len();
    }
    if annotations_size > MAX_ANNOTATIONS_SIZE {
        problems.push(Problem::new(
            "metadata.annotations",
            format!("too long: {annotations_size} bytes, more than {MAX_ANNOTATIONS_SIZE}"),
        ));
    }

    for (index, finalizer) in meta.finalizers.iter().flatten().enumerate() {
        if let Err(why) = check_finalizer(finalizer) {
            problems.push(invalid(
                &format!("metadata.finalizers[{index}]"),
                finalizer,
                &why,
            ));
        }
    }
}

/// A map of labels (or a selector's `matchLabels`) under `field`. A bad key is reported at the
/// map, as the API server does; a bad value at its key (`metadata.labels[app]`).
fn check_labels(
    problems: &mut Vec<Problem>,
    field: &str,
    labels: Option<&BTreeMap<String, String>>,
) {
    for (key, value) in labels.into_iter().flatten() {
        if let Err(why) = check_qualified_name(key) {
            problems.push(invalid(field, key, &why));
        }
        if let Err(why) = check_label_value(value) {
            problems.push(invalid(&format!("{field}[{key}]"), value, &why));
        }
    }
}

/// A label selector under `path`: its labels, and each expression's key, operator and values.
fn check_label_selector(problems: &mut Vec<Problem>, path: &str, selector: &LabelSelector) {
    check_labels(
        problems,
        &format!("{path}.matchLabels"),
        selector.match_labels.as_ref(),
    );
    for (index, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        let path = format!("{path}.matchExpressions[{index}]");
        let values_field = format!("{path}.values");
        let values = requirement.values.as_deref().unwrap_or_default();
        match requirement.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => problems.push(Problem::new(
                &values_field,
                "required value: must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if !values.is_empty() => problems.push(forbidden(
                &values_field,
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            operator if !SELECTOR_OPERATORS.contains(&operator) => problems.push(unsupported(
                &format!("{path}.operator"),
                operator,
                SELECTOR_OPERATORS,
            )),
            _ => {}
        }
        let key_field = format!("{path}.key");
        if requirement.key.is_empty() {
            problems.push(required(&key_field));
        } else if let Err(why) = check_qualified_name(&requirement.key) {
            problems.push(invalid(&key_field, &requirement.key, &why));
        }
        for (index, value) in values.iter().enumerate() {
            if let Err(why) = check_label_value(value) {
                problems.push(invalid(&format!("{values_field}[{index}]"), value, &why));
            }
        }
    }
}

/// A label key, annotation key, finalizer or `appProtocol`: a name, optionally prefixed by a
/// DNS subdomain and `/` (`example.com/my-name`).
fn check_qualified_name(value: &str) -> Result<(), String> {
    let (prefix, name) = match value.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, value),
    };
    if name.contains('/') {
        return Err(QUALIFIED_NAME_RULE.to_string());
    }
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err("prefix part must not be empty".to_string());
        }
        check_subdomain(prefix).map_err(|why| format!("prefix part {why}"))?;
    }
    if name.is_empty() {
        return Err("name part must not be empty".to_string());
    }
    if name.len() > MAX_LABEL {
        return Err(format!(
            "name part must be no more than {MAX_LABEL} characters"
        ));
    }
    if !is_name(name) {
        return Err(format!("name part must {NAME_RULE}"));
    }
    Ok(())
}

/// A label value: empty, or what the name part of a qualified name may be.
fn check_label_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_LABEL {
        return Err(format!("must be no more than {MAX_LABEL} characters"));
    }
    if !value.is_empty() && !is_name(value) {
        return Err(format!("must be empty or {NAME_RULE}"));
    }
    Ok(())
}

fn is_name(value: &str) -> bool {
    let bytes = value.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// A DNS-1035 label: a DNS-1123 label that starts with a letter.
fn check_dns1035_label(value: &str) -> Result<(), String> {
    let starts_with_letter = value.bytes().next().is_some_and(|c| c.is_ascii_lowercase());
    if value.len() > MAX_LABEL || !is_label(value) || !starts_with_letter {
        return Err(DNS1035_LABEL_RULE.to_string());
    }
    Ok(())
}

/// A key of a ConfigMap's or Secret's data, which becomes a file name in a volume.
fn check_config_key(key: &str) -> Result<(), String> {
    if key.len() > MAX_SUBDOMAIN {
        return Err(format!("must be no more than {MAX_SUBDOMAIN} characters"));
    }
    let allowed = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    if key.is_empty() || !key.bytes().all(allowed) {
        return Err("must consist of letters, digits, '-', '_' or '.'".to_string());
    }
    match key {
        "." => Err("must not be '.'".to_string()),
        ".." => Err("must not be '..'".to_string()),
        _ if key.starts_with("..") => Err("must not start with '..'".to_string()),
        _ => Ok(()),
    }
}

/// A finalizer: a qualified name, with a domain prefix unless it is one of Kubernetes' own.
fn check_finalizer(value: &str) -> Result<(), String> {
    check_qualified_name(value)?;
    if !value.contains('/') && !STANDARD_FINALIZERS.contains(&value) {
        return Err(FINALIZER_RULE.to_string());
    }
    Ok(())
}

/// A fully qualified domain name, with at least two labels and an optional trailing dot.
fn check_fqdn(value: &str) -> Result<(), String> {
    let name = value.strip_suffix('.').unwrap_or(value);
    check_subdomain(name)?;
    if !name.contains('.') {
        return Err("must be a domain with at least two segments separated by dots".to_string());
    }
    if name.split('.').any(|label| label.len() > MAX_LABEL) {
        return Err(format!(
            "each dot-separated part must be at most {MAX_LABEL} characters"
        ));
    }
    Ok(())
}

/// An IP address. An IPv4 address written as IPv6 (`::ffff:10.0.0.1`) is the IPv4 address,
/// as the API server reads it.
fn parse_ip(value: &str) -> Result<IpAddr, String> {
    match value.parse::<IpAddr>() {
        Ok(ip) => Ok(ip.to_canonical()),
        Err(_) if is_ipv4_with_leading_zeros(value) => Err(LEADING_ZEROS.to_string()),
        Err(_) => Err(IP_RULE.to_string()),
    }
}

/// Whether `value` would be an IPv4 address but for octets such as `010`.
fn is_ipv4_with_leading_zeros(value: &str) -> bool {
    let octets: Vec<&str> = value.split('.').collect();
    octets.len() == 4
        && octets.iter().all(|octet| {
            (1..=3).contains(&octet.len())
                && octet.bytes().all(|c| c.is_ascii_digit())
                && octet.parse::<u16>().is_ok_and(|n| n <= 255)
        })
        && octets
            .iter()
            .any(|octet| octet.len() > 1 && octet.starts_with('0'))
}

/// An address traffic can be sent to and from: what external IPs and endpoints must be.
fn check_routable_ip(ip: IpAddr) -> Result<(), String> {
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    let link_local_multicast = match ip {
        IpAddr::V4(v4) => v4.octets()[..3] == [224, 0, 0],
        // ff02::/16 and the other link-local scopes of the multicast range.
        IpAddr::V6(v6) => v6.segments()[0] & 0xff0f == 0xff02,
    };
    if ip.is_unspecified() {
        Err(format!("may not be unspecified ({ip})"))
    } else if ip.is_loopback() {
        Err("may not be in the loopback range (127.0.0.0/8, ::1/128)".to_string())
    } else if link_local {
        Err("may not be in the link-local range (169.254.0.0/16, fe80::/10)".to_string())
    } else if link_local_multicast {
        Err("may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)".to_string())
    } else {
        Ok(())
    }
}

/// A CIDR as the network it names: `10.1.2.3/8` is `10.0.0.0/8`. The API server still
/// accepts bits set past the prefix length, so they are ignored rather than refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Network {
    pub(crate) address: IpAddr,
    pub(crate) len: u8,
}

impl Network {
    /// Whether every address of `other` is in this network; never across families.
    fn contains(self, other: Network) -> bool {
        let masked = match (self.address, other.address) {
            (IpAddr::V4(_), IpAddr::V4(v4)) => IpAddr::V4(mask_v4(v4, self.len)),
            (IpAddr::V6(_), IpAddr::V6(v6)) => IpAddr::V6(mask_v6(v6, self.len)),
            _ => return false,
        };
        self.len <= other.len && masked == self.address
    }
}

fn mask_v4(address: Ipv4Addr, len: u8) -> Ipv4Addr {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    Ipv4Addr::from_bits(address.to_bits() & mask)
}

fn mask_v6(address: Ipv6Addr, len: u8) -> Ipv6Addr {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    Ipv6Addr::from_bits(address.to_bits() & mask)
}

pub(crate) fn parse_cidr(value: &str) -> Result<Network, String> {
    let Some((address, len)) = value.split_once('/') else {
        return Err(CIDR_RULE.to_string());
    };
    // `parse` alone would take `+24`.
    if len.is_empty() || !len.bytes().all(|c| c.is_ascii_digit()) {
        return Err(CIDR_RULE.to_string());
    }
    let address = match address.parse::<IpAddr>() {
        Ok(address) => address,
        Err(_) if is_ipv4_with_leading_zeros(address) => return Err(LEADING_ZEROS.to_string()),
        Err(_) => return Err(CIDR_RULE.to_string()),
    };
    let max = if address.is_ipv4() { 32 } else { 128 };
    let len = len.parse::<u8>().ok().filter(|len| *len <= max);
    let Some(len) = len else {
        return Err(CIDR_RULE.to_string());
    };
    let address = match address {
        IpAddr::V4(v4) => IpAddr::V4(mask_v4(v4, len)),
        IpAddr::V6(v6) => IpAddr::V6(mask_v6(v6, len)),
    };
    Ok(Network { address, len })
}

/// A string field the API server holds as a plain string, where empty means left out.
fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

fn required(field: impl Into<String>) -> Problem {
    Problem::new(field, "required value")
}

fn forbidden(field: impl Into<String>, why: &str) -> Problem {
    Problem::new(field, format!("forbidden: {why}"))
}

fn too_many(field: &str, count: usize, max: usize) -> Problem {
    Problem::new(
        field,
        format!("too many: {count}: must have at most {max} items"),
    )
}

/// `field: invalid value ["a", "b"]: why`, for a list judged as a whole.
fn invalid_list(field: &str, values: &[String], why: &str) -> Problem {
    Problem::new(field, format!("invalid value {values:?}: {why}"))
}
