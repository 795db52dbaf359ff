//! The API server's checks on Services, EndpointSlices, NetworkPolicies, Namespaces,
//! ConfigMaps and Secrets: a valid object of each kind passes, and each rule fails at its
//! field with its value.

use k8s_openapi::ByteString;
use serde::de::DeserializeOwned;

use super::*;

/// The problems of the object written in `yaml`, as `field: message`.
fn problems_of<T: DeserializeOwned>(yaml: &str, validate: fn(&T) -> Vec<Problem>) -> Vec<String> {
    let object: T = serde_yaml::from_str(yaml).expect("fixture parses");
    validate(&object)
        .into_iter()
        .map(|p| format!("{}: {}", p.field, p.message))
        .collect()
}

/// The problems of a Service named `web` with `spec`, a YAML flow mapping.
fn service(spec: &str) -> Vec<String> {
    problems_of(
        &format!("metadata: {{name: web}}\nspec: {spec}"),
        validate_service,
    )
}

/// The problems of an EndpointSlice named `web-1` with the top-level fields in `body`.
fn slice(body: &str) -> Vec<String> {
    problems_of(
        &format!("metadata: {{name: web-1}}\n{body}"),
        validate_endpoint_slice,
    )
}

/// The problems of a NetworkPolicy named `deny` with `spec`.
fn policy(spec: &str) -> Vec<String> {
    problems_of(
        &format!("metadata: {{name: deny}}\nspec:\n{spec}"),
        validate_network_policy,
    )
}

fn secret(yaml: &str) -> Vec<String> {
    problems_of(yaml, validate_secret)
}

const INVALID_IP: &str = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";
const INVALID_CIDR: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";
const ONLY_LOAD_BALANCER: &str = "forbidden: may only be used when `type` is 'LoadBalancer'";

#[test]
fn valid_services_pass() {
    let valid = [
        // As the manifest reader's own fixtures write them.
        "{selector: {app: web}, ports: [{port: 80, targetPort: 80}]}",
        "{ports: [{port: 80}]}",
        "
  type: ClusterIP
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  selector: {app.kubernetes.io/name: dns, tier: ''}
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: dns-tcp}
  - {name: metrics-and-a-long-name, port: 9153, targetPort: 0, appProtocol: kubernetes.io/h2c}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 86400}}
  internalTrafficPolicy: Local
  trafficDistribution: PreferClose",
        "{clusterIP: None, selector: {app: db}}",
        "{clusterIPs: [None], ports: [{port: 5432, targetPort: ''}]}",
        "
  clusterIPs: [10.96.0.11, 'fd00::11']
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  ports: [{port: 80}]",
        "
  type: NodePort
  externalTrafficPolicy: Local
  ports:
  - {name: http, port: 80, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP, nodePort: 30053}
  - {name: dns-tcp, port: 53, protocol: TCP, nodePort: 30053}",
        "
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  allocateLoadBalancerNodePorts: false
  loadBalancerClass: example.com/internal
  loadBalancerSourceRanges: [10.0.0.0/8, ' 192.168.0.0/16 ', '2001:db8::/32']
  ports: [{port: 443}]",
        "{externalIPs: [203.0.113.7], externalTrafficPolicy: Cluster, ports: [{port: 80}]}",
        "{type: ExternalName, externalName: db.example.com.}",
        // With `None` the API server drops the affinity config, whatever it says.
        "{sessionAffinity: None, sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}, ports: [{port: 80}]}",
    ];
    for spec in valid {
        assert_eq!(service(spec), [""; 0], "{spec}");
    }
}

#[test]
fn service_metadata_is_checked() {
    let problems = problems_of(
        r#"
metadata:
  name: 1web
  namespace: Apps
  labels: {"example.com/": x, app: -web}
  annotations: {"Example.com/Note": fine, "a/b/c": bad}
spec: {ports: [{port: 80}]}
"#,
        validate_service,
    );
    assert_eq!(
        problems,
        [
            r#"metadata.name: invalid value "1web": must be a lowercase RFC 1035 label: at most 63 characters, lowercase letters, digits and '-', starting with a letter and ending with a letter or digit"#,
            r#"metadata.namespace: invalid value "Apps": must be a lowercase RFC 1123 label: at most 63 characters, lowercase letters, digits and '-', starting and ending with a letter or digit"#,
            r#"metadata.labels[app]: invalid value "-web": must be empty or consist of letters, digits, '-', '_' or '.', and must start and end with a letter or digit"#,
            r#"metadata.labels: invalid value "example.com/": name part must not be empty"#,
            r#"metadata.annotations: invalid value "a/b/c": must be a name with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"#,
        ]
    );
    assert_eq!(
        problems_of("spec: {ports: [{port: 80}]}", validate_service),
        ["metadata.name: required value"]
    );
    // Other kinds take dotted names; a Service's name is a DNS label of its own.
    assert_eq!(
        problems_of(
            "metadata: {name: web.v2}\nspec: {ports: [{port: 80}]}",
            validate_service
        ),
        [
            r#"metadata.name: invalid value "web.v2": must be a lowercase RFC 1035 label: at most 63 characters, lowercase letters, digits and '-', starting with a letter and ending with a letter or digit"#
        ]
    );
}

#[test]
fn service_type_must_be_known() {
    assert_eq!(
        service("{type: Internal, ports: [{port: 80}]}"),
        [
            r#"spec.type: unsupported value "Internal": supported values: "ClusterIP", "NodePort", "LoadBalancer", "ExternalName""#
        ]
    );
}

#[test]
fn service_ports_are_required_unless_headless_or_external_name() {
    assert_eq!(
        service("{selector: {app: web}}"),
        ["spec.ports: required value"]
    );
    assert_eq!(
        problems_of("metadata: {name: web}", validate_service),
        ["spec.ports: required value"]
    );
    assert_eq!(service("{clusterIP: None}"), [""; 0]);
    assert_eq!(
        service("{type: ExternalName, externalName: example.com}"),
        [""; 0]
    );
}

#[test]
fn service_ports_are_checked() {
    let problems = service(
        "
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {port: 81}
  - {name: Web_1, port: 0, protocol: HTTP}
  - {name: http, port: 70000, targetPort: 70000}
  - {name: a, port: 82, targetPort: my--port, appProtocol: a/b/c}
  - {name: b, port: 80, protocol: TCP}
  - {name: c, port: 80, protocol: UDP, targetPort: metrics}",
    );
    assert_eq!(
        problems,
        [
            "spec.ports[1].name: required value",
            r#"spec.ports[2].name: invalid value "Web_1": must be a lowercase RFC 1123 label: at most 63 characters, lowercase letters, digits and '-', starting and ending with a letter or digit"#,
            "spec.ports[2].port: required value",
            r#"spec.ports[2].protocol: unsupported value "HTTP": supported values: "TCP", "UDP", "SCTP""#,
            r#"spec.ports[3].name: duplicate value "http": already used by spec.ports[0].name"#,
            "spec.ports[3].port: invalid value 70000: must be between 1 and 65535, inclusive",
            "spec.ports[3].targetPort: invalid value 70000: must be between 1 and 65535, inclusive",
            r#"spec.ports[4].targetPort: invalid value "my--port": must be an IANA service name: at most 15 characters, lowercase letters, digits and '-', with at least one letter, no '--', and starting and ending with a letter or digit"#,
            r#"spec.ports[4].appProtocol: invalid value "a/b/c": must be a name with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"#,
            r#"spec.ports[5]: duplicate value "80/TCP": already used by spec.ports[0]"#,
        ]
    );
    // A single port needs no name; the second of two does.
    assert_eq!(service("{ports: [{port: 80}]}"), [""; 0]);
    assert_eq!(
        service("{ports: [{name: http, port: 80}, {port: 81}]}"),
        ["spec.ports[1].name: required value"]
    );
}

#[test]
fn node_ports_belong_to_node_port_and_load_balancer_services() {
    // nodePort 0 is the same as leaving it out.
    assert_eq!(
        service(
            "{ports: [{name: a, port: 80, nodePort: 30080}, {name: b, port: 81, nodePort: 0}]}"
        ),
        ["spec.ports[0].nodePort: forbidden: may not be used when `type` is 'ClusterIP'"]
    );
    assert_eq!(
        service(
            "
  type: NodePort
  ports:
  - {name: a, port: 80, nodePort: 30080}
  - {name: b, port: 81, nodePort: 70000}
  - {name: c, port: 82, nodePort: 30080}
  - {name: d, port: 83, protocol: UDP, nodePort: 30080}"
        ),
        [
            "spec.ports[1].nodePort: invalid value 70000: must be between 1 and 65535, inclusive",
            r#"spec.ports[2].nodePort: duplicate value "30080": already used by spec.ports[0].nodePort"#,
        ]
    );
}

#[test]
fn cluster_ips_are_checked() {
    let cases: &[(&str, &[&str])] = &[
        (
            "{clusterIP: 10.96.0.300, ports: [{port: 80}]}",
            &[r#"spec.clusterIP: invalid value "10.96.0.300": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"#],
        ),
        (
            "{clusterIP: 010.96.0.1, ports: [{port: 80}]}",
            &[r#"spec.clusterIP: invalid value "010.96.0.1": must not have leading 0s"#],
        ),
        (
            "{clusterIP: 10.96.0.1, clusterIPs: [10.96.0.2], ports: [{port: 80}]}",
            &[r#"spec.clusterIPs: invalid value ["10.96.0.2"]: first value must match spec.clusterIP "10.96.0.1""#],
        ),
        (
            "{clusterIPs: [None, 10.96.0.1], ports: [{port: 80}]}",
            &[r#"spec.clusterIPs: invalid value ["None", "10.96.0.1"]: 'None' must be the first and only value"#],
        ),
        (
            "{clusterIPs: [10.96.0.1, None], ports: [{port: 80}]}",
            &[r#"spec.clusterIPs[1]: invalid value "None": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"#],
        ),
        (
            "{clusterIPs: [10.96.0.1, 'fd00::1', 10.96.0.2], ports: [{port: 80}]}",
            &[r#"spec.clusterIPs: invalid value ["10.96.0.1", "fd00::1", "10.96.0.2"]: may only hold up to 2 values"#],
        ),
        (
            "{clusterIPs: [10.96.0.1, 10.96.0.2], ports: [{port: 80}]}",
            &[r#"spec.clusterIPs: invalid value ["10.96.0.1", "10.96.0.2"]: may specify no more than one IP for each IP family"#],
        ),
        (
            "{clusterIPs: [10.96.0.1, 'fd00::1'], ipFamilies: [IPv6, IPv4], ports: [{port: 80}]}",
            &[
                r#"spec.clusterIPs[0]: invalid value "10.96.0.1": expected an IPv6 value as indicated by spec.ipFamilies[0]"#,
                r#"spec.clusterIPs[1]: invalid value "fd00::1": expected an IPv4 value as indicated by spec.ipFamilies[1]"#,
            ],
        ),
        (
            "{ipFamilies: [IPv4, IPv4, IPv5], ipFamilyPolicy: DualStack, ports: [{port: 80}]}",
            &[
                r#"spec.ipFamilies[1]: duplicate value "IPv4": already used by spec.ipFamilies[0]"#,
                r#"spec.ipFamilies[2]: unsupported value "IPv5": supported values: "IPv4", "IPv6""#,
                r#"spec.ipFamilyPolicy: unsupported value "DualStack": supported values: "SingleStack", "PreferDualStack", "RequireDualStack""#,
            ],
        ),
        (
            "{clusterIPs: [10.96.0.1, 'fd00::1'], ipFamilyPolicy: SingleStack, ports: [{port: 80}]}",
            &[r#"spec.ipFamilyPolicy: invalid value "SingleStack": must be 'RequireDualStack' or 'PreferDualStack' when multiple cluster IPs are specified"#],
        ),
        (
            "{ipFamilies: [IPv4, IPv6], ipFamilyPolicy: SingleStack, ports: [{port: 80}]}",
            &[r#"spec.ipFamilyPolicy: invalid value "SingleStack": must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified"#],
        ),
        (
            "{type: NodePort, clusterIP: None, ports: [{port: 80}]}",
            &[r#"spec.clusterIP: invalid value "None": may not be set to 'None' for NodePort services"#],
        ),
        (
            "{type: LoadBalancer, clusterIPs: [None], ports: [{port: 80}]}",
            &[r#"spec.clusterIPs[0]: invalid value "None": may not be set to 'None' for LoadBalancer services"#],
        ),
        (
            "{type: ExternalName, externalName: db.example.com, clusterIP: None, ipFamilies: [IPv4], ipFamilyPolicy: SingleStack}",
            &[
                "spec.clusterIP: forbidden: may not be set for ExternalName services",
                "spec.ipFamilies: forbidden: may not be set for ExternalName services",
                "spec.ipFamilyPolicy: forbidden: may not be set for ExternalName services",
            ],
        ),
        (
            "{type: ExternalName, externalName: db.example.com, clusterIPs: [10.96.0.1]}",
            &["spec.clusterIPs: forbidden: may not be set for ExternalName services"],
        ),
    ];
    for (spec, expected) in cases {
        assert_eq!(service(spec), *expected, "{spec}");
    }
}

#[test]
fn external_names_are_dns_subdomains() {
    assert_eq!(
        service("{type: ExternalName}"),
        ["spec.externalName: required value"]
    );
    assert_eq!(
        service("{type: ExternalName, externalName: db_1.example.com}"),
        [
            r#"spec.externalName: invalid value "db_1.example.com": must be a lowercase RFC 1123 subdomain: at most 253 characters, lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit"#
        ]
    );
}

#[test]
fn session_affinity_is_checked() {
    assert_eq!(
        service("{sessionAffinity: Sticky, ports: [{port: 80}]}"),
        [
            r#"spec.sessionAffinity: unsupported value "Sticky": supported values: "ClientIP", "None""#
        ]
    );
    for timeout in [0, 86_401] {
        assert_eq!(
            service(&format!(
                "{{sessionAffinity: ClientIP, sessionAffinityConfig: {{clientIP: {{timeoutSeconds: {timeout}}}}}, ports: [{{port: 80}}]}}"
            )),
            [format!("spec.sessionAffinityConfig.clientIP.timeoutSeconds: invalid value {timeout}: must be greater than 0 and at most 86400")]
        );
    }
    // ClientIP without a timeout gets the default one.
    assert_eq!(
        service("{sessionAffinity: ClientIP, ports: [{port: 80}]}"),
        [""; 0]
    );
}

#[test]
fn external_ips_are_routable_addresses() {
    let problems = service(
        "{externalIPs: [1.2.3, 0.0.0.0, 127.0.0.1, 169.254.169.254, 224.0.0.5, '::1', 'fe80::1', 'ff02::1', '::ffff:127.0.0.2'], ports: [{port: 80}]}",
    );
    assert_eq!(
        problems,
        [
            format!(r#"spec.externalIPs[0]: invalid value "1.2.3": {INVALID_IP}"#),
            r#"spec.externalIPs[1]: invalid value "0.0.0.0": may not be unspecified (0.0.0.0)"#.into(),
            r#"spec.externalIPs[2]: invalid value "127.0.0.1": may not be in the loopback range (127.0.0.0/8, ::1/128)"#.into(),
            r#"spec.externalIPs[3]: invalid value "169.254.169.254": may not be in the link-local range (169.254.0.0/16, fe80::/10)"#.into(),
            r#"spec.externalIPs[4]: invalid value "224.0.0.5": may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"#.into(),
            r#"spec.externalIPs[5]: invalid value "::1": may not be in the loopback range (127.0.0.0/8, ::1/128)"#.into(),
            r#"spec.externalIPs[6]: invalid value "fe80::1": may not be in the link-local range (169.254.0.0/16, fe80::/10)"#.into(),
            r#"spec.externalIPs[7]: invalid value "ff02::1": may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)"#.into(),
            r#"spec.externalIPs[8]: invalid value "::ffff:127.0.0.2": may not be in the loopback range (127.0.0.0/8, ::1/128)"#.into(),
        ]
    );
}

#[test]
fn traffic_policies_are_checked() {
    let cases: &[(&str, &[&str])] = &[
        (
            "{externalTrafficPolicy: Local, ports: [{port: 80}]}",
            &[r#"spec.externalTrafficPolicy: invalid value "Local": may only be set for externally-accessible services"#],
        ),
        (
            "{type: ExternalName, externalName: example.com, externalTrafficPolicy: Cluster}",
            &[r#"spec.externalTrafficPolicy: invalid value "Cluster": may only be set for externally-accessible services"#],
        ),
        (
            "{type: NodePort, externalTrafficPolicy: Global, ports: [{port: 80}]}",
            &[r#"spec.externalTrafficPolicy: unsupported value "Global": supported values: "Cluster", "Local""#],
        ),
        (
            "{type: NodePort, healthCheckNodePort: 32000, ports: [{port: 80}]}",
            &["spec.healthCheckNodePort: invalid value 32000: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"],
        ),
        (
            "{type: LoadBalancer, externalTrafficPolicy: Local, healthCheckNodePort: 70000, ports: [{port: 80}]}",
            &["spec.healthCheckNodePort: invalid value 70000: must be between 1 and 65535, inclusive"],
        ),
        (
            "{internalTrafficPolicy: Node, ports: [{port: 80}]}",
            &[r#"spec.internalTrafficPolicy: unsupported value "Node": supported values: "Cluster", "Local""#],
        ),
        (
            "{trafficDistribution: Nearest, ports: [{port: 80}]}",
            &[r#"spec.trafficDistribution: unsupported value "Nearest": supported values: "PreferClose", "PreferSameZone", "PreferSameNode""#],
        ),
    ];
    for (spec, expected) in cases {
        assert_eq!(service(spec), *expected, "{spec}");
    }
}

#[test]
fn load_balancer_fields_need_a_load_balancer() {
    let problems = service(
        "
  loadBalancerSourceRanges: [10.0.0.0/8, 10.0.0.0/33]
  allocateLoadBalancerNodePorts: true
  loadBalancerClass: example.com/internal
  ports: [{port: 80}]",
    );
    assert_eq!(
        problems,
        [
            format!("spec.loadBalancerSourceRanges: {ONLY_LOAD_BALANCER}"),
            format!(
                r#"spec.loadBalancerSourceRanges[1]: invalid value "10.0.0.0/33": {INVALID_CIDR}"#
            ),
            format!("spec.allocateLoadBalancerNodePorts: {ONLY_LOAD_BALANCER}"),
            format!("spec.loadBalancerClass: {ONLY_LOAD_BALANCER}"),
        ]
    );
    let problems = problems_of(
        "
metadata:
  name: web
  annotations: {service.beta.kubernetes.io/load-balancer-source-ranges: '10.0.0.0/8, 10.0.0.1'}
spec: {ports: [{port: 80}]}",
        validate_service,
    );
    let field = "metadata.annotations[service.beta.kubernetes.io/load-balancer-source-ranges]";
    assert_eq!(
        problems,
        [
            format!("{field}: {ONLY_LOAD_BALANCER}"),
            format!(r#"{field}: invalid value "10.0.0.1": {INVALID_CIDR}"#),
        ]
    );
    assert_eq!(
        service("{type: LoadBalancer, loadBalancerClass: internal/lb/v2, ports: [{port: 80}]}"),
        [
            r#"spec.loadBalancerClass: invalid value "internal/lb/v2": must be a name with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"#
        ]
    );
}

#[test]
fn topology_annotations_must_agree() {
    let problems = problems_of(
        "
metadata:
  name: web
  annotations: {service.kubernetes.io/topology-mode: Auto, service.kubernetes.io/topology-aware-hints: Disabled}
spec: {ports: [{port: 80}]}",
        validate_service,
    );
    assert_eq!(
        problems,
        [
            r#"metadata.annotations[service.kubernetes.io/topology-mode]: invalid value "Auto": must match annotations[service.kubernetes.io/topology-aware-hints] when both are set"#
        ]
    );
}

#[test]
fn valid_endpoint_slices_pass() {
    let valid = [
        "addressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}]",
        "
addressType: IPv4
endpoints:
- addresses: [10.244.1.5]
  conditions: {ready: false, serving: true, terminating: true}
  hostname: web-0
  nodeName: node-a.example
  zone: zone-a
  targetRef: {kind: Pod, name: web-0, namespace: default}
  deprecatedTopology: {topology.kubernetes.io/region: eu}
  hints: {forZones: [{name: zone-a}], forNodes: [{name: node-a.example}]}
ports:
- {name: http, port: 8080, protocol: TCP, appProtocol: http}
- {name: dns, port: 53, protocol: UDP}
- {port: 9000}",
        "addressType: IPv6\nendpoints: [{addresses: ['fd00::5']}]",
        "addressType: FQDN\nendpoints: [{addresses: [db.example.com, cache.example.com.]}]",
        "addressType: IPv4\nendpoints: []",
    ];
    for body in valid {
        assert_eq!(slice(body), [""; 0], "{body}");
    }
}

#[test]
fn address_types_are_checked() {
    assert_eq!(slice("endpoints: []"), ["addressType: required value"]);
    assert_eq!(
        slice("addressType: IP\nendpoints: [{addresses: [whatever]}]"),
        [r#"addressType: unsupported value "IP": supported values: "IPv4", "IPv6", "FQDN""#]
    );
}

#[test]
fn endpoint_addresses_match_the_address_type() {
    let problems = slice(
        "
addressType: IPv4
endpoints:
- addresses: []
- addresses: ['fd00::1', 10.0.0.256, 127.0.0.1, 10.0.0.1]",
    );
    assert_eq!(
        problems,
        [
            "endpoints[0].addresses: required value: must contain at least 1 address".to_string(),
            r#"endpoints[1].addresses[0]: invalid value "fd00::1": must be a valid IPv4 address"#.into(),
            format!(r#"endpoints[1].addresses[1]: invalid value "10.0.0.256": {INVALID_IP}"#),
            r#"endpoints[1].addresses[2]: invalid value "127.0.0.1": may not be in the loopback range (127.0.0.0/8, ::1/128)"#.into(),
        ]
    );
    assert_eq!(
        slice("addressType: IPv6\nendpoints: [{addresses: [10.0.0.1, '::']}]"),
        [
            r#"endpoints[0].addresses[0]: invalid value "10.0.0.1": must be a valid IPv6 address"#,
            r#"endpoints[0].addresses[1]: invalid value "::": may not be unspecified (::)"#,
        ]
    );
    assert_eq!(
        slice("addressType: FQDN\nendpoints: [{addresses: [localhost, Db.example.com]}]"),
        [
            r#"endpoints[0].addresses[0]: invalid value "localhost": must be a domain with at least two segments separated by dots"#,
            r#"endpoints[0].addresses[1]: invalid value "Db.example.com": must be a lowercase RFC 1123 subdomain: at most 253 characters, lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit"#,
        ]
    );
}

#[test]
fn endpoint_counts_are_bounded() {
    let addresses: Vec<String> = (1..=101)
        .map(|i| format!("10.0.{}.{}", i / 200, i % 200 + 1))
        .collect();
    assert_eq!(
        slice(&format!(
            "addressType: IPv4\nendpoints: [{{addresses: [{}]}}]",
            addresses.join(", ")
        )),
        ["endpoints[0].addresses: too many: 101: must have at most 100 items"]
    );
    let endpoints = vec!["{addresses: [10.0.0.1]}"; 1001].join(", ");
    assert_eq!(
        slice(&format!("addressType: IPv4\nendpoints: [{endpoints}]")),
        ["endpoints: too many: 1001: must have at most 1000 items"]
    );
    let nodes: Vec<String> = (0..9).map(|i| format!("{{name: node-{i}}}")).collect();
    assert_eq!(
        slice(&format!(
            "addressType: IPv4\nendpoints: [{{addresses: [10.0.0.1], hints: {{forNodes: [{}]}}}}]",
            nodes.join(", ")
        )),
        ["endpoints[0].hints.forNodes: too many: 9: must have at most 8 items"]
    );
}

#[test]
fn endpoint_fields_are_checked() {
    let problems = slice(
        "
addressType: IPv4
endpoints:
- addresses: [10.0.0.1]
  nodeName: Node_1
  hostname: web.0
  deprecatedTopology: {Zone/a/b: x}
  hints:
    forZones: [{name: zone-a}, {name: zone-a}, {name: -zone}]
    forNodes: [{name: node..a}]",
    );
    assert_eq!(
        problems,
        [
            r#"endpoints[0].nodeName: invalid value "Node_1": must be a lowercase RFC 1123 subdomain: at most 253 characters, lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit"#,
            r#"endpoints[0].deprecatedTopology: invalid value "Zone/a/b": must be a name with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"#,
            r#"endpoints[0].hostname: invalid value "web.0": must be a lowercase RFC 1123 label: at most 63 characters, lowercase letters, digits and '-', starting and ending with a letter or digit"#,
            r#"endpoints[0].hints.forZones[1].name: duplicate value "zone-a": already used by endpoints[0].hints.forZones[0].name"#,
            r#"endpoints[0].hints.forZones[2].name: invalid value "-zone": must be empty or consist of letters, digits, '-', '_' or '.', and must start and end with a letter or digit"#,
            r#"endpoints[0].hints.forNodes[0].name: invalid value "node..a": must be a lowercase RFC 1123 subdomain: at most 253 characters, lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit"#,
        ]
    );
}

#[test]
fn endpoint_ports_are_checked() {
    let problems = slice(
        "
addressType: IPv4
endpoints: []
ports:
- {name: HTTP, port: 80}
- {port: 81}
- {port: 82}
- {name: dns, port: 0, protocol: ICMP}
- {name: dns, port: 53, appProtocol: 'a b'}",
    );
    assert_eq!(
        problems,
        [
            r#"ports[0].name: invalid value "HTTP": must be a lowercase RFC 1123 label: at most 63 characters, lowercase letters, digits and '-', starting and ending with a letter or digit"#,
            r#"ports[2].name: duplicate value "": already used by ports[1].name"#,
            r#"ports[3].protocol: unsupported value "ICMP": supported values: "TCP", "UDP", "SCTP""#,
            "ports[3].port: invalid value 0: must be between 1 and 65535, inclusive",
            r#"ports[4].name: duplicate value "dns": already used by ports[3].name"#,
            r#"ports[4].appProtocol: invalid value "a b": name part must consist of letters, digits, '-', '_' or '.', and must start and end with a letter or digit"#,
        ]
    );
}

#[test]
fn valid_network_policies_pass() {
    let valid = [
        // As the manifest reader's own fixtures write them.
        "  podSelector: {}",
        "
  podSelector:
    matchLabels: {app: db}
    matchExpressions:
    - {key: tier, operator: In, values: [backend, '']}
    - {key: example.com/canary, operator: DoesNotExist}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - podSelector: {matchLabels: {app: web}}
      namespaceSelector: {matchExpressions: [{key: team, operator: NotIn, values: [guest]}]}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.2.3.4/32]}
    - ipBlock: {cidr: 10.1.2.3/8, except: [10.9.0.0/16]}
    - ipBlock: {cidr: '2001:db8::/32', except: ['2001:db8:1::/48']}
    ports:
    - {port: 5432}
    - {protocol: UDP, port: 5000, endPort: 5100}
    - {port: postgres}
    - {protocol: SCTP}
  egress:
  - to: [{namespaceSelector: {}}]
  - {}",
    ];
    for spec in valid {
        assert_eq!(policy(spec), [""; 0], "{spec}");
    }
    assert_eq!(
        problems_of("metadata: {name: deny}", validate_network_policy),
        [""; 0]
    );
}

#[test]
fn label_selectors_are_checked_wherever_they_are() {
    let problems = policy(
        "
  podSelector:
    matchLabels: {app: 'web server'}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: web}}
    - namespaceSelector:
        matchExpressions:
        - {key: team, operator: Equals, values: [a]}
        - {key: team, operator: In}
        - {key: team, operator: Exists, values: [a]}
        - {key: '', operator: NotIn, values: [a, -b]}
        - {key: Example.com/team, operator: DoesNotExist}",
    );
    assert_eq!(
        problems,
        [
            r#"spec.podSelector.matchLabels[app]: invalid value "web server": must be empty or consist of letters, digits, '-', '_' or '.', and must start and end with a letter or digit"#,
            r#"spec.ingress[0].from[1].namespaceSelector.matchExpressions[0].operator: unsupported value "Equals": supported values: "In", "NotIn", "Exists", "DoesNotExist""#,
            "spec.ingress[0].from[1].namespaceSelector.matchExpressions[1].values: required value: must be specified when `operator` is 'In' or 'NotIn'",
            "spec.ingress[0].from[1].namespaceSelector.matchExpressions[2].values: forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            "spec.ingress[0].from[1].namespaceSelector.matchExpressions[3].key: required value",
            r#"spec.ingress[0].from[1].namespaceSelector.matchExpressions[3].values[1]: invalid value "-b": must be empty or consist of letters, digits, '-', '_' or '.', and must start and end with a letter or digit"#,
            r#"spec.ingress[0].from[1].namespaceSelector.matchExpressions[4].key: invalid value "Example.com/team": prefix part must be a lowercase RFC 1123 subdomain: at most 253 characters, lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit"#,
        ]
    );
}

#[test]
fn policy_ports_are_checked() {
    let problems = policy(
        "
  egress:
  - ports:
    - {protocol: ICMP, port: 0}
    - {port: 70000, endPort: 70001}
    - {port: 8080, endPort: 8000}
    - {port: http, endPort: 90}
    - {endPort: 90}
    - {port: my--port}",
    );
    assert_eq!(
        problems,
        [
            r#"spec.egress[0].ports[0].protocol: unsupported value "ICMP": supported values: "TCP", "UDP", "SCTP""#,
            "spec.egress[0].ports[0].port: invalid value 0: must be between 1 and 65535, inclusive",
            "spec.egress[0].ports[1].port: invalid value 70000: must be between 1 and 65535, inclusive",
            "spec.egress[0].ports[1].endPort: invalid value 70001: must be between 1 and 65535, inclusive",
            "spec.egress[0].ports[2].endPort: invalid value 8000: must be greater than or equal to `port`",
            "spec.egress[0].ports[3].endPort: invalid value 90: may not be specified when `port` is non-numeric",
            "spec.egress[0].ports[4].endPort: invalid value 90: may not be specified when `port` is not specified",
            r#"spec.egress[0].ports[5].port: invalid value "my--port": must be an IANA service name: at most 15 characters, lowercase letters, digits and '-', with at least one letter, no '--', and starting and ending with a letter or digit"#,
        ]
    );
}

#[test]
fn policy_peers_are_checked() {
    let problems = policy(
        "
  ingress:
  - from:
    - ipBlock: {cidr: 10.0.0.0/8}
    - ipBlock: {cidr: 10.0.0.0/16, except: [11.0.0.0/24, 10.0.0.0/16, 10.0.0.0/8, '::/0', 10.0.1.0/24, 10.0.2.0/33]}
  - from:
    - {}
    - ipBlock: {cidr: 10.0.0.0/8}
      podSelector: {}
    - ipBlock: {cidr: ''}
    - ipBlock: {cidr: 10.0.0.0}
    - ipBlock: {cidr: 010.0.0.0/8}
    - ipBlock: {cidr: 10.0.0.0/+8}
    - ipBlock: {cidr: '2001:db8::/64', except: [10.0.0.0/8]}",
    );
    let not_inside = r#"must be a strict subset of the cidr "10.0.0.0/16""#;
    assert_eq!(
        problems,
        [
            format!(r#"spec.ingress[0].from[1].ipBlock.except[0]: invalid value "11.0.0.0/24": {not_inside}"#),
            format!(r#"spec.ingress[0].from[1].ipBlock.except[1]: invalid value "10.0.0.0/16": {not_inside}"#),
            format!(r#"spec.ingress[0].from[1].ipBlock.except[2]: invalid value "10.0.0.0/8": {not_inside}"#),
            format!(r#"spec.ingress[0].from[1].ipBlock.except[3]: invalid value "::/0": {not_inside}"#),
            format!(r#"spec.ingress[0].from[1].ipBlock.except[5]: invalid value "10.0.2.0/33": {INVALID_CIDR}"#),
            "spec.ingress[1].from[0]: required value: must specify a peer".into(),
            "spec.ingress[1].from[1]: forbidden: may not specify both ipBlock and another peer".into(),
            "spec.ingress[1].from[2].ipBlock.cidr: required value".into(),
            format!(r#"spec.ingress[1].from[3].ipBlock.cidr: invalid value "10.0.0.0": {INVALID_CIDR}"#),
            r#"spec.ingress[1].from[4].ipBlock.cidr: invalid value "010.0.0.0/8": must not have leading 0s"#.into(),
            format!(r#"spec.ingress[1].from[5].ipBlock.cidr: invalid value "10.0.0.0/+8": {INVALID_CIDR}"#),
            r#"spec.ingress[1].from[6].ipBlock.except[0]: invalid value "10.0.0.0/8": must be a strict subset of the cidr "2001:db8::/64""#.into(),
        ]
    );
}

#[test]
fn policy_types_are_checked() {
    assert_eq!(
        policy("  policyTypes: [Ingress, Both, Ingress]"),
        [
            r#"spec.policyTypes[1]: unsupported value "Both": supported values: "Ingress", "Egress""#,
            r#"spec.policyTypes[2]: duplicate value "Ingress": already used by spec.policyTypes[0]"#,
        ]
    );
}

#[test]
fn namespaces_are_checked() {
    let valid = "
metadata:
  name: apps
  namespace: ignored
  labels: {team: web}
  finalizers: [example.com/cleanup]
spec: {finalizers: [kubernetes]}";
    assert_eq!(problems_of(valid, validate_namespace), [""; 0]);
    let problems = problems_of(
        "
metadata: {name: apps.web, finalizers: [cleanup]}
spec: {finalizers: [kubernetes, example.com/a/b]}",
        validate_namespace,
    );
    assert_eq!(
        problems,
        [
            r#"metadata.name: invalid value "apps.web": must be a lowercase RFC 1123 label: at most 63 characters, lowercase letters, digits and '-', starting and ending with a letter or digit"#,
            r#"metadata.finalizers[0]: invalid value "cleanup": must be qualified with a domain prefix (e.g. 'example.com/cleanup') unless it is "kubernetes", "orphan" or "foregroundDeletion""#,
            r#"spec.finalizers[1]: invalid value "example.com/a/b": must be a name with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"#,
        ]
    );
}

#[test]
fn annotations_are_bounded_in_size() {
    let big = "x".repeat(MAX_ANNOTATIONS_SIZE - "note".len());
    let yaml = |value: &str| format!("metadata: {{name: apps, annotations: {{note: {value}}}}}");
    assert_eq!(problems_of(&yaml(&big), validate_namespace), [""; 0]);
    assert_eq!(
        problems_of(&yaml(&format!("{big}x")), validate_namespace),
        ["metadata.annotations: too long: 262145 bytes, more than 262144"]
    );
}

#[test]
fn config_maps_are_checked() {
    let valid = "
metadata: {name: conf.v1, namespace: apps}
data: {key: value, app.properties: 'a=b', .hidden: '', KEY_2-x: ''}
binaryData: {logo.png: iVBORw0K}";
    assert_eq!(problems_of(valid, validate_config_map), [""; 0]);
    let long_key = "k".repeat(254);
    let problems = problems_of(
        &format!(
            "
metadata: {{name: conf}}
data: {{'a b': x, '.': x, '..': x, ..data: x, {long_key}: x, shared: x}}
binaryData: {{shared: eA==, 'c/d': eA==}}"
        ),
        validate_config_map,
    );
    assert_eq!(
        problems,
        [
            r#"data[.]: invalid value ".": must not be '.'"#.to_string(),
            r#"data[..]: invalid value "..": must not be '..'"#.into(),
            r#"data[..data]: invalid value "..data": must not start with '..'"#.into(),
            r#"data[a b]: invalid value "a b": must consist of letters, digits, '-', '_' or '.'"#.into(),
            format!(r#"data[{long_key}]: invalid value "{long_key}": must be no more than 253 characters"#),
            r#"data[shared]: invalid value "shared": duplicate of key present in binaryData"#.into(),
            r#"binaryData[c/d]: invalid value "c/d": must consist of letters, digits, '-', '_' or '.'"#.into(),
        ]
    );
}

#[test]
fn config_maps_are_bounded_in_size() {
    let config_map = |text: usize, binary: usize| ConfigMap {
        metadata: ObjectMeta {
            name: Some("conf".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("a".into(), "x".repeat(text))])),
        binary_data: Some(BTreeMap::from([("b".into(), ByteString(vec![0; binary]))])),
        ..Default::default()
    };
    assert_eq!(validate_config_map(&config_map(MAX_DATA_SIZE - 1, 1)), []);
    assert_eq!(
        validate_config_map(&config_map(MAX_DATA_SIZE, 1)),
        [Problem::new(
            "",
            "too long: data and binaryData hold 1048577 bytes, more than 1048576"
        )]
    );
}

#[test]
fn valid_secrets_pass() {
    let valid = [
        // As the manifest reader's own fixtures write them.
        "metadata: {name: token}\nstringData: {token: s3cret}",
        "metadata: {name: creds}\ntype: Opaque\ndata: {password: czNjcmV0}\nstringData: {user: admin}",
        "metadata: {name: web-tls}\ntype: kubernetes.io/tls\ndata: {tls.crt: eA==}\nstringData: {tls.key: x}",
        "metadata: {name: pull}\ntype: kubernetes.io/dockerconfigjson\nstringData: {.dockerconfigjson: '{\"auths\": {}}'}",
        "metadata: {name: pull}\ntype: kubernetes.io/dockercfg\nstringData: {.dockercfg: '{}'}",
        "metadata: {name: basic}\ntype: kubernetes.io/basic-auth\nstringData: {username: admin}",
        "metadata: {name: ssh}\ntype: kubernetes.io/ssh-auth\nstringData: {ssh-privatekey: key}",
        "metadata: {name: sa, annotations: {kubernetes.io/service-account.name: default}}\ntype: kubernetes.io/service-account-token",
        "metadata: {name: custom}\ntype: example.com/custom",
    ];
    for yaml in valid {
        assert_eq!(secret(yaml), [""; 0], "{yaml}");
    }
}

#[test]
fn secret_keys_are_checked_where_they_are_written() {
    assert_eq!(
        secret("metadata: {name: creds}\ndata: {'a b': eA==}\nstringData: {../up: x}"),
        [
            r#"data[a b]: invalid value "a b": must consist of letters, digits, '-', '_' or '.'"#,
            r#"stringData[../up]: invalid value "../up": must consist of letters, digits, '-', '_' or '.'"#,
        ]
    );
}

#[test]
fn secret_types_need_their_keys() {
    let cases: &[(&str, &[&str])] = &[
        (
            "metadata: {name: web-tls}\ntype: kubernetes.io/tls\nstringData: {tls.crt: x}",
            &["data[tls.key]: required value"],
        ),
        (
            "metadata: {name: pull}\ntype: kubernetes.io/dockerconfigjson\nstringData: {config.json: '{}'}",
            &["data[.dockerconfigjson]: required value"],
        ),
        (
            "metadata: {name: pull}\ntype: kubernetes.io/dockerconfigjson\nstringData: {.dockerconfigjson: 'auths: {}'}",
            &[r#"data[.dockerconfigjson]: invalid value "<secret contents redacted>": expected value at line 1 column 1"#],
        ),
        (
            "metadata: {name: pull}\ntype: kubernetes.io/dockercfg\nstringData: {.dockercfg: '[]'}",
            &[r#"data[.dockercfg]: invalid value "<secret contents redacted>": invalid type: sequence, expected a map at line 1 column 0"#],
        ),
        (
            "metadata: {name: basic}\ntype: kubernetes.io/basic-auth\nstringData: {user: admin}",
            &["data[username]: required value", "data[password]: required value"],
        ),
        (
            "metadata: {name: ssh}\ntype: kubernetes.io/ssh-auth\nstringData: {ssh-privatekey: ''}",
            &["data[ssh-privatekey]: required value"],
        ),
        (
            "metadata: {name: sa}\ntype: kubernetes.io/service-account-token",
            &["metadata.annotations[kubernetes.io/service-account.name]: required value"],
        ),
    ];
    for (yaml, expected) in cases {
        assert_eq!(secret(yaml), *expected, "{yaml}");
    }
}

#[test]
fn secrets_are_bounded_in_size_after_merging_string_data() {
    let secret = |data: usize, string_data: &[(&str, usize)]| Secret {
        metadata: ObjectMeta {
            name: Some("big".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("a".into(), ByteString(vec![0; data]))])),
        string_data: Some(
            string_data
                .iter()
                .map(|(key, len)| (key.to_string(), "x".repeat(*len)))
                .collect(),
        ),
        ..Default::default()
    };
    let half = MAX_DATA_SIZE / 2 + 1;
    // stringData's "a" replaces data's "a": counted once.
    assert_eq!(validate_secret(&secret(half, &[("a", half)])), []);
    assert_eq!(
        validate_secret(&secret(half, &[("b", half)])),
        [Problem::new(
            "data",
            "too long: 1048578 bytes, more than 1048576"
        )]
    );
}

#[test]
fn each_kind_dispatches_to_its_checks() {
    let meta = || ObjectMeta::default();
    let fields =
        |problems: Vec<Problem>| -> Vec<String> { problems.into_iter().map(|p| p.field).collect() };
    assert_eq!(
        fields(
            Service {
                metadata: meta(),
                ..Default::default()
            }
            .validate()
        ),
        ["metadata.name", "spec.ports"]
    );
    assert_eq!(
        fields(
            EndpointSlice {
                metadata: meta(),
                ..Default::default()
            }
            .validate()
        ),
        ["metadata.name", "addressType"]
    );
    let policy = NetworkPolicy {
        metadata: ObjectMeta {
            name: Some("Deny".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(fields(policy.validate()), ["metadata.name"]);
    assert_eq!(fields(Namespace::default().validate()), ["metadata.name"]);
    assert_eq!(fields(ConfigMap::default().validate()), ["metadata.name"]);
    let tls = Secret {
        metadata: ObjectMeta {
            name: Some("tls".into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        ..Default::default()
    };
    assert_eq!(fields(tls.validate()), ["data[tls.crt]", "data[tls.key]"]);
}

#[test]
fn qualified_names() {
    for good in [
        "app",
        "App_1.x",
        "example.com/app",
        "a.b-c/D",
        &"n".repeat(63),
    ] {
        assert_eq!(check_qualified_name(good), Ok(()), "{good}");
    }
    for bad in [
        "",
        "/app",
        "example.com/",
        "Example.com/app",
        "a/b/c",
        "-app",
        "app.",
        &"n".repeat(64),
        &format!("{}/app", "p".repeat(254)),
    ] {
        assert!(check_qualified_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn label_values() {
    for good in ["", "web", "Web_1.x", &"v".repeat(63)] {
        assert_eq!(check_label_value(good), Ok(()), "{good}");
    }
    for bad in ["-web", "web-", "a b", "a/b", &"v".repeat(64)] {
        assert!(check_label_value(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn dns1035_labels() {
    for good in ["web", "web-1", "w", &"w".repeat(63)] {
        assert_eq!(check_dns1035_label(good), Ok(()), "{good}");
    }
    for bad in ["", "1web", "-web", "web-", "Web", "web.v2", &"w".repeat(64)] {
        assert!(check_dns1035_label(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn cidrs_are_read_as_networks() {
    let network = |text: &str| parse_cidr(text).expect(text);
    assert_eq!(
        network("10.1.2.3/8"),
        Network {
            address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)),
            len: 8
        }
    );
    assert_eq!(network("0.0.0.0/0").len, 0);
    assert_eq!(network("2001:db8::1/32"), network("2001:db8::/32"));
    assert!(network("10.0.0.0/8").contains(network("10.255.0.0/16")));
    assert!(network("10.0.0.0/8").contains(network("10.0.0.0/8")));
    assert!(!network("10.0.0.0/16").contains(network("10.0.0.0/8")));
    assert!(!network("0.0.0.0/0").contains(network("::/0")));
    assert!(!network("2001:db8::/64").contains(network("10.0.0.0/8")));
    assert!(network("::/0").contains(network("2001:db8::/32")));
    for bad in [
        "10.0.0.0",
        "10.0.0.0/",
        "10.0.0.0/33",
        "::/129",
        "10.0.0/8",
        "x/8",
        "10.0.0.0/-1",
    ] {
        assert_eq!(parse_cidr(bad), Err(CIDR_RULE.to_string()), "{bad:?}");
    }
}

#[test]
fn leading_zeros_are_told_apart_from_garbage() {
    assert_eq!(parse_ip("010.1.1.1"), Err(LEADING_ZEROS.to_string()));
    assert_eq!(parse_ip("10.1.1.01"), Err(LEADING_ZEROS.to_string()));
    assert_eq!(parse_ip("10.1.1.256"), Err(IP_RULE.to_string()));
    assert_eq!(parse_ip("0010.1.1.1"), Err(IP_RULE.to_string()));
    assert_eq!(
        parse_ip("10.0.0.1"),
        Ok(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
    );
}
