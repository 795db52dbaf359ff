//! Golden tests: pods as YAML in, CRI configs out.

use std::collections::HashMap;
use std::path::PathBuf;

use bosun_cri::api;
use bosun_cri::api::security_profile::ProfileType;
use k8s_openapi::api::core::v1::{Container, Pod};

use super::*;

const UID: &str = "0b7c5a10-1111-4c2e-9c1e-2f8b2f1f0001";
const GI: i64 = 1 << 30;
const MI: i64 = 1 << 20;

fn node() -> NodeContext {
    NodeContext {
        node_name: "node-a".into(),
        cluster_dns: vec!["10.96.0.10".into()],
        cluster_domain: "cluster.local".into(),
        pod_logs_dir: PathBuf::from("/var/log/pods"),
        cgroup_root: "/kubepods".into(),
        cgroup_driver: crate::pod::cgroup::CgroupDriver::Cgroupfs,
        host_ip: "192.168.1.10".into(),
        resolv_conf: HostDns::ResolvConf(ResolvConf {
            nameservers: vec!["192.168.1.1".into()],
            searches: vec!["lan".into()],
            options: vec!["edns0".into()],
        }),
        pod_pids_limit: None,
        node: NodeResources {
            memory_capacity_bytes: 8 * GI,
            allocatable_cpu_millis: 2000,
            allocatable_memory_bytes: 7 * GI,
            allocatable_ephemeral_storage_bytes: 100 * GI,
        },
        seccomp_default: false,
        seccomp_profile_root: PathBuf::from("/var/lib/kubelet/seccomp"),
        pods_dir: PathBuf::from("/var/lib/bosun/pods"),
    }
}

/// A pod from YAML; `metadata` gets the test UID and namespace `default` unless it has them.
fn pod(yaml: &str) -> Pod {
    let mut pod: Pod = match serde_yaml::from_str(yaml) {
        Ok(pod) => pod,
        Err(error) => panic!("test pod does not parse: {error}\n{yaml}"),
    };
    pod.metadata.uid.get_or_insert_with(|| UID.to_owned());
    pod.metadata
        .namespace
        .get_or_insert_with(|| "default".to_owned());
    pod
}

/// A pod whose only container has these resources (a YAML flow mapping, or "{}").
fn pod_with_resources(resources: &str) -> Pod {
    pod(&format!(
        "metadata: {{name: r}}\n\
         spec:\n  containers:\n  - name: c\n    image: busybox\n    resources: {resources}\n"
    ))
}

fn ok<T>(result: Result<T, SpecError>) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("unexpected error: {error}"),
    }
}

fn sandbox(pod: &Pod) -> api::PodSandboxConfig {
    ok(sandbox_config(pod, &node(), 0))
}

fn container_of(pod: &Pod, index: usize) -> &Container {
    match pod.spec.as_ref().and_then(|s| s.containers.get(index)) {
        Some(container) => container,
        None => panic!("test pod has no container {index}"),
    }
}

fn config(pod: &Pod, index: usize) -> api::ContainerConfig {
    config_with(pod, index, &RuntimeFacts::default())
}

fn config_with(pod: &Pod, index: usize, facts: &RuntimeFacts) -> api::ContainerConfig {
    let container = container_of(pod, index);
    ok(container_config(
        pod,
        container,
        ContainerKind::Regular,
        &node(),
        facts,
    ))
}

fn linux_resources(config: &api::ContainerConfig) -> api::LinuxContainerResources {
    config
        .linux
        .as_ref()
        .and_then(|l| l.resources.clone())
        .unwrap_or_default()
}

fn container_security(config: &api::ContainerConfig) -> api::LinuxContainerSecurityContext {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default()
}

fn sandbox_security(config: &api::PodSandboxConfig) -> api::LinuxSandboxSecurityContext {
    config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default()
}

fn namespaces(config: &api::PodSandboxConfig) -> (i32, i32, i32) {
    let options = sandbox_security(config)
        .namespace_options
        .unwrap_or_default();
    (options.network, options.pid, options.ipc)
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn envs(config: &api::ContainerConfig) -> Vec<(String, String)> {
    config
        .envs
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect()
}

fn env_value(config: &api::ContainerConfig, key: &str) -> Option<String> {
    config
        .envs
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| kv.value.clone())
}

const WEB: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: default
  uid: 0b7c5a10-1111-4c2e-9c1e-2f8b2f1f0001
  labels: {app: web}
  annotations: {note: hi}
spec:
  restartPolicy: Always
  dnsPolicy: ClusterFirst
  terminationGracePeriodSeconds: 30
  securityContext: {}
  containers:
  - name: nginx
    image: docker.io/library/nginx:1.27
    imagePullPolicy: IfNotPresent
    ports:
    - {name: http, containerPort: 80, protocol: TCP}
    resources:
      requests: {cpu: 250m, memory: 64Mi}
      limits: {cpu: 500m, memory: 128Mi}
    terminationMessagePath: /dev/termination-log
    terminationMessagePolicy: File
"#;

fn pod_namespaces(network: api::NamespaceMode, pid: api::NamespaceMode) -> api::NamespaceOption {
    api::NamespaceOption {
        network: network as i32,
        pid: pid as i32,
        ipc: api::NamespaceMode::Pod as i32,
        target_id: String::new(),
        userns_options: Some(api::UserNamespace {
            mode: api::NamespaceMode::Node as i32,
            ..Default::default()
        }),
    }
}

#[test]
fn simple_pod_sandbox_config_is_exactly_kubelets() {
    let expected = api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: "web".into(),
            uid: UID.into(),
            namespace: "default".into(),
            attempt: 2,
        }),
        hostname: "web".into(),
        log_directory: format!("/var/log/pods/default_web_{UID}"),
        dns_config: Some(api::DnsConfig {
            servers: strings(&["10.96.0.10"]),
            searches: strings(&[
                "default.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "lan",
            ]),
            options: strings(&["ndots:5"]),
        }),
        port_mappings: vec![api::PortMapping {
            protocol: api::Protocol::Tcp as i32,
            container_port: 80,
            host_port: 0,
            host_ip: String::new(),
        }],
        labels: map(&[
            ("app", "web"),
            ("io.kubernetes.pod.name", "web"),
            ("io.kubernetes.pod.namespace", "default"),
            ("io.kubernetes.pod.uid", UID),
        ]),
        annotations: map(&[("note", "hi")]),
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: format!("/kubepods/burstable/pod{UID}"),
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(pod_namespaces(
                    api::NamespaceMode::Pod,
                    api::NamespaceMode::Container,
                )),
                seccomp: Some(api::SecurityProfile {
                    profile_type: ProfileType::RuntimeDefault as i32,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            }),
            sysctls: HashMap::new(),
            overhead: None,
            resources: None,
        }),
        windows: None,
    };
    assert_eq!(ok(sandbox_config(&pod(WEB), &node(), 2)), expected);
}

#[test]
fn simple_pod_container_config_is_exactly_kubelets() {
    let web = pod(WEB);
    let nginx = container_of(&web, 0);
    let expected = api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: "nginx".into(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: "docker.io/library/nginx:1.27".into(),
            user_specified_image: "docker.io/library/nginx:1.27".into(),
            ..Default::default()
        }),
        labels: map(&[
            ("io.kubernetes.container.name", "nginx"),
            ("io.kubernetes.pod.name", "web"),
            ("io.kubernetes.pod.namespace", "default"),
            ("io.kubernetes.pod.uid", UID),
        ]),
        annotations: map(&[
            ("io.kubernetes.container.hash", &container_hash(nginx)),
            ("io.kubernetes.container.restartCount", "0"),
            (
                "io.kubernetes.container.terminationMessagePath",
                "/dev/termination-log",
            ),
            ("io.kubernetes.container.terminationMessagePolicy", "File"),
            ("io.kubernetes.pod.terminationGracePeriod", "30"),
            (
                "io.kubernetes.container.ports",
                r#"[{"name":"http","containerPort":80,"protocol":"TCP"}]"#,
            ),
        ]),
        log_path: "nginx/0.log".into(),
        linux: Some(api::LinuxContainerConfig {
            resources: Some(api::LinuxContainerResources {
                cpu_period: 100_000,
                cpu_quota: 50_000,
                cpu_shares: 256,
                memory_limit_in_bytes: 128 * MI,
                // 1000 - 1000 * 64Mi / 8Gi = 1000 - 7.8 → 993.
                oom_score_adj: 993,
                ..Default::default()
            }),
            security_context: Some(api::LinuxContainerSecurityContext {
                namespace_options: Some(pod_namespaces(
                    api::NamespaceMode::Pod,
                    api::NamespaceMode::Container,
                )),
                masked_paths: strings(&DEFAULT_MASKED_PATHS),
                readonly_paths: strings(&DEFAULT_READONLY_PATHS),
                seccomp: Some(api::SecurityProfile {
                    profile_type: ProfileType::Unconfined as i32,
                    localhost_ref: String::new(),
                }),
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    assert_eq!(config(&web, 0), expected);
}

#[test]
fn restart_count_sets_attempt_log_path_and_annotation() {
    let web = pod(WEB);
    let facts = RuntimeFacts {
        restart_count: 3,
        ..Default::default()
    };
    let config = config_with(&web, 0, &facts);
    assert_eq!(config.metadata.map(|m| m.attempt), Some(3));
    assert_eq!(config.log_path, "nginx/3.log");
    assert_eq!(
        config
            .annotations
            .get(RESTART_COUNT_ANNOTATION)
            .map(String::as_str),
        Some("3")
    );
}

// --- DNS ---------------------------------------------------------------------------------

fn dns_of(yaml_spec: &str, ctx: &NodeContext) -> api::DnsConfig {
    let pod = pod(&format!(
        "metadata: {{name: d, namespace: team}}\nspec:\n{yaml_spec}  containers:\n  - {{name: c, image: busybox}}\n"
    ));
    ok(pod_dns_config(&pod, ctx))
}

#[test]
fn dns_cluster_first_uses_cluster_servers_and_searches() {
    let dns = dns_of("  dnsPolicy: ClusterFirst\n", &node());
    assert_eq!(dns.servers, ["10.96.0.10"]);
    assert_eq!(
        dns.searches,
        [
            "team.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
            "lan"
        ]
    );
    assert_eq!(dns.options, ["ndots:5"]);
    // Unset policy is ClusterFirst.
    assert_eq!(dns_of("", &node()), dns);
}

#[test]
fn dns_cluster_first_on_host_network_uses_the_host() {
    let host = dns_of("  dnsPolicy: ClusterFirst\n  hostNetwork: true\n", &node());
    assert_eq!(host.servers, ["192.168.1.1"]);
    assert_eq!(host.searches, ["lan"]);
    assert_eq!(host.options, ["edns0"]);

    let with_host_net = dns_of(
        "  dnsPolicy: ClusterFirstWithHostNet\n  hostNetwork: true\n",
        &node(),
    );
    assert_eq!(with_host_net.servers, ["10.96.0.10"]);
    assert_eq!(with_host_net.options, ["ndots:5"]);
}

#[test]
fn dns_default_uses_the_host_resolv_conf() {
    let dns = dns_of("  dnsPolicy: Default\n", &node());
    assert_eq!(dns.servers, ["192.168.1.1"]);
    assert_eq!(dns.searches, ["lan"]);
    assert_eq!(dns.options, ["edns0"]);
}

#[test]
fn dns_cluster_first_without_cluster_dns_falls_back_to_default() {
    let mut ctx = node();
    ctx.cluster_dns.clear();
    let dns = dns_of("  dnsPolicy: ClusterFirst\n", &ctx);
    assert_eq!(dns.servers, ["192.168.1.1"]);
    assert_eq!(dns.searches, ["lan"]);
}

#[test]
fn dns_default_without_resolv_conf_points_at_loopback() {
    let mut ctx = node();
    ctx.resolv_conf = HostDns::Loopback;
    let dns = dns_of("  dnsPolicy: Default\n", &ctx);
    assert_eq!(dns.servers, ["127.0.0.1"]);
    assert_eq!(dns.searches, ["."]);
    ctx.host_ip = "fd00::10".into();
    assert_eq!(dns_of("  dnsPolicy: Default\n", &ctx).servers, ["::1"]);
}

#[test]
fn dns_none_takes_only_dns_config() {
    let dns = dns_of(
        "  dnsPolicy: None\n  dnsConfig:\n    nameservers: [1.1.1.1]\n    searches: [example.com]\n    options: [{name: ndots, value: \"2\"}, {name: edns0}]\n",
        &node(),
    );
    assert_eq!(
        dns,
        api::DnsConfig {
            servers: strings(&["1.1.1.1"]),
            searches: strings(&["example.com"]),
            options: strings(&["ndots:2", "edns0"]),
        }
    );
}

#[test]
fn dns_config_merges_into_cluster_first_within_limits() {
    let dns = dns_of(
        "  dnsConfig:\n    nameservers: [10.96.0.10, 1.1.1.1, 8.8.8.8, 9.9.9.9]\n    searches: [cluster.local, extra.example]\n    options: [{name: ndots, value: \"1\"}, {name: single-request}]\n",
        &node(),
    );
    // Duplicates dropped, then cut to three servers.
    assert_eq!(dns.servers, ["10.96.0.10", "1.1.1.1", "8.8.8.8"]);
    assert_eq!(
        dns.searches,
        [
            "team.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
            "lan",
            "extra.example"
        ]
    );
    assert_eq!(dns.options, ["ndots:1", "single-request"]);
}

#[test]
fn invalid_dns_policy_is_an_error() {
    let pod = pod("metadata: {name: d}\nspec:\n  dnsPolicy: Cluster\n  containers: []\n");
    let error = pod_dns_config(&pod, &node()).map(|_| ());
    assert!(
        matches!(&error, Err(SpecError::Invalid { path, .. }) if path == "spec.dnsPolicy"),
        "{error:?}"
    );
}

// --- Hostname, namespaces, host network -------------------------------------------------

#[test]
fn host_network_pod_has_no_hostname_and_the_nodes_network() {
    let pod = pod(
        "metadata: {name: hn}\nspec:\n  hostNetwork: true\n  hostPID: true\n  hostIPC: true\n  containers:\n  - {name: c, image: busybox, ports: [{containerPort: 8080, hostPort: 8080}]}\n",
    );
    let config = sandbox(&pod);
    assert_eq!(config.hostname, "");
    let node_mode = api::NamespaceMode::Node as i32;
    assert_eq!(namespaces(&config), (node_mode, node_mode, node_mode));
    assert_eq!(
        config.port_mappings,
        [api::PortMapping {
            protocol: api::Protocol::Tcp as i32,
            container_port: 8080,
            host_port: 8080,
            host_ip: String::new(),
        }]
    );
    let container = config_of_first(&pod);
    let options = container_security(&container)
        .namespace_options
        .unwrap_or_default();
    assert_eq!(
        (options.network, options.pid, options.ipc),
        namespaces(&config)
    );
}

fn config_of_first(pod: &Pod) -> api::ContainerConfig {
    config(pod, 0)
}

#[test]
fn shared_process_namespace_puts_pid_in_the_pod() {
    let shared = pod("metadata: {name: s}\nspec:\n  shareProcessNamespace: true\n  containers: [{name: c, image: busybox}]\n");
    assert_eq!(
        namespaces(&sandbox(&shared)),
        (
            api::NamespaceMode::Pod as i32,
            api::NamespaceMode::Pod as i32,
            api::NamespaceMode::Pod as i32
        )
    );
}

#[test]
fn host_users_false_is_refused() {
    let pod = pod("metadata: {name: u}\nspec:\n  hostUsers: false\n  containers: [{name: c, image: busybox}]\n");
    let error = sandbox_config(&pod, &node(), 0).map(|_| ());
    assert!(
        matches!(&error, Err(SpecError::Unsupported { path, .. }) if path == "spec.hostUsers"),
        "{error:?}"
    );
}

#[test]
fn hostname_comes_from_spec_or_name_cut_to_63() {
    let explicit = pod("metadata: {name: p}\nspec:\n  hostname: box\n  containers: []\n");
    assert_eq!(ok(pod_hostname(&explicit, &node())), "box");

    let long_name = format!("{}-{}", "a".repeat(62), "b".repeat(10));
    let long = pod(&format!(
        "metadata: {{name: {long_name}}}\nspec:\n  containers: []\n"
    ));
    // Cut at 63 leaves a trailing '-', which goes too.
    assert_eq!(ok(pod_hostname(&long, &node())), "a".repeat(62));

    let fqdn = pod("metadata: {name: p, namespace: team}\nspec:\n  hostname: box\n  subdomain: sub\n  setHostnameAsFQDN: true\n  containers: []\n");
    assert_eq!(
        ok(pod_hostname(&fqdn, &node())),
        "box.sub.team.svc.cluster.local"
    );
    let short =
        pod("metadata: {name: p}\nspec:\n  hostname: box\n  subdomain: sub\n  containers: []\n");
    assert_eq!(ok(pod_hostname(&short, &node())), "box");

    let invalid = pod("metadata: {name: p}\nspec:\n  hostname: Not_Valid\n  containers: []\n");
    let error = pod_hostname(&invalid, &node());
    assert!(
        matches!(&error, Err(SpecError::Invalid { path, value, .. }) if path == "spec.hostname" && value == "Not_Valid"),
        "{error:?}"
    );
}

// --- QoS, cgroups, CPU and memory --------------------------------------------------------

#[test]
fn qos_classes_follow_kubernetes_rules() {
    for (resources, expected) in [
        ("{}", QosClass::BestEffort),
        ("{requests: {cpu: 100m}}", QosClass::Burstable),
        ("{limits: {cpu: 100m}}", QosClass::Burstable),
        // Requests default to limits.
        ("{limits: {cpu: 1, memory: 1Gi}}", QosClass::Guaranteed),
        (
            "{requests: {cpu: 1000m, memory: 1024Mi}, limits: {cpu: 1, memory: 1Gi}}",
            QosClass::Guaranteed,
        ),
        (
            "{requests: {cpu: 500m, memory: 1Gi}, limits: {cpu: 1, memory: 1Gi}}",
            QosClass::Burstable,
        ),
        // Resources other than CPU, memory and hugepages do not count.
        ("{requests: {ephemeral-storage: 1Gi}}", QosClass::BestEffort),
        ("{requests: {cpu: \"0\"}}", QosClass::BestEffort),
    ] {
        let pod = pod_with_resources(resources);
        assert_eq!(qos_class(&pod), expected, "{resources}");
    }
}

#[test]
fn an_unlimited_init_container_makes_a_pod_burstable() {
    let pod = pod(
        "metadata: {name: i}\nspec:\n  initContainers:\n  - {name: init, image: busybox, resources: {requests: {cpu: 100m}}}\n  containers:\n  - {name: c, image: busybox, resources: {limits: {cpu: 1, memory: 1Gi}}}\n",
    );
    assert_eq!(qos_class(&pod), QosClass::Burstable);
}

#[test]
fn status_qos_class_is_trusted() {
    let mut pod = pod_with_resources("{}");
    pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
        qos_class: Some("Guaranteed".into()),
        ..Default::default()
    });
    assert_eq!(qos_class(&pod), QosClass::Guaranteed);
    assert_eq!(QosClass::Guaranteed.to_string(), "Guaranteed");
}

#[test]
fn cgroup_parent_follows_qos_class() {
    for (resources, expected) in [
        ("{}", format!("/kubepods/besteffort/pod{UID}")),
        (
            "{requests: {memory: 64Mi}}",
            format!("/kubepods/burstable/pod{UID}"),
        ),
        (
            "{limits: {cpu: 1, memory: 1Gi}}",
            format!("/kubepods/pod{UID}"),
        ),
    ] {
        let pod = pod_with_resources(resources);
        assert_eq!(pod_cgroup_parent(&pod, &node()), expected);
        let sandbox = sandbox(&pod);
        assert_eq!(
            sandbox.linux.map(|l| l.cgroup_parent),
            Some(expected.clone())
        );
    }
    let mut ctx = node();
    ctx.cgroup_root = "/kubepods/".into();
    assert_eq!(
        pod_cgroup_parent(&pod_with_resources("{}"), &ctx),
        format!("/kubepods/besteffort/pod{UID}")
    );
}

#[test]
fn with_the_systemd_driver_the_sandbox_goes_into_the_pods_slice() {
    let mut ctx = node();
    ctx.cgroup_driver = crate::pod::cgroup::CgroupDriver::Systemd;
    ctx.cgroup_root = "/kubepods.slice".into();
    let escaped = UID.replace('-', "_");
    let burstable = pod_with_resources("{requests: {cpu: 100m}}");
    let sandbox = ok(sandbox_config(&burstable, &ctx, 0));
    assert_eq!(
        sandbox.linux.map(|l| l.cgroup_parent),
        Some(format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{escaped}.slice"
        ))
    );
    let guaranteed = pod_with_resources("{limits: {cpu: 1, memory: 1Gi}}");
    assert_eq!(
        pod_cgroup_parent(&guaranteed, &ctx),
        format!("/kubepods.slice/kubepods-pod{escaped}.slice")
    );
}

#[test]
fn cpu_shares_and_quota_from_millicores() {
    for (cpu, shares, quota) in [
        ("100m", 102, 10_000),
        ("250m", 256, 25_000),
        ("1", 1024, 100_000),
        ("2.5", 2560, 250_000),
        ("1m", 2, 1_000),
    ] {
        let pod = pod_with_resources(&format!("{{limits: {{cpu: \"{cpu}\"}}}}"));
        let resources = linux_resources(&config_of_first(&pod));
        assert_eq!(resources.cpu_shares, shares, "shares for {cpu}");
        assert_eq!(resources.cpu_quota, quota, "quota for {cpu}");
        assert_eq!(resources.cpu_period, 100_000);
    }
    assert_eq!(milli_cpu_to_shares(0), 2);
    assert_eq!(milli_cpu_to_shares(1_000_000), 262_144);
    assert_eq!(milli_cpu_to_quota(0, CPU_PERIOD_US), 0);
}

#[test]
fn cpu_request_sets_shares_without_quota() {
    let pod = pod_with_resources("{requests: {cpu: 250m}}");
    let resources = linux_resources(&config_of_first(&pod));
    assert_eq!(resources.cpu_shares, 256);
    assert_eq!(resources.cpu_quota, 0);
    assert_eq!(resources.memory_limit_in_bytes, 0);

    let best_effort = linux_resources(&config_of_first(&pod_with_resources("{}")));
    assert_eq!(best_effort.cpu_shares, 2);
}

#[test]
fn memory_limit_in_bytes() {
    for (memory, bytes) in [("128Mi", 128 * MI), ("1G", 1_000_000_000), ("1e3", 1000)] {
        let pod = pod_with_resources(&format!("{{limits: {{memory: \"{memory}\"}}}}"));
        assert_eq!(
            linux_resources(&config_of_first(&pod)).memory_limit_in_bytes,
            bytes,
            "{memory}"
        );
    }
}

#[test]
fn invalid_quantity_names_field_and_value() {
    let pod = pod(
        "metadata: {name: q}\nspec:\n  containers:\n  - {name: a, image: busybox}\n  - {name: b, image: busybox, resources: {limits: {memory: 12 GB}}}\n",
    );
    let error = container_config(
        &pod,
        container_of(&pod, 1),
        ContainerKind::Regular,
        &node(),
        &RuntimeFacts::default(),
    )
    .map(|_| ());
    let Err(error) = error else {
        panic!("12 GB accepted as a quantity");
    };
    assert_eq!(
        error.to_string(),
        r#"spec.containers[1].resources.limits.memory: invalid quantity "12 GB""#
    );
    // The sandbox, whose cgroup depends on QoS, refuses it too.
    assert!(sandbox_config(&pod, &node(), 0).is_err());
}

#[test]
fn pod_level_resources_are_refused() {
    let pod = pod("metadata: {name: p}\nspec:\n  resources: {limits: {cpu: 1}}\n  containers: [{name: c, image: busybox}]\n");
    let error = sandbox_config(&pod, &node(), 0).map(|_| ());
    assert!(
        matches!(&error, Err(SpecError::Unsupported { path, .. }) if path == "spec.resources"),
        "{error:?}"
    );
}

#[test]
fn oom_score_adj_by_qos() {
    let adj = |pod: &Pod, index: usize| linux_resources(&config(pod, index)).oom_score_adj;
    assert_eq!(adj(&pod_with_resources("{}"), 0), 1000);
    assert_eq!(
        adj(&pod_with_resources("{limits: {cpu: 1, memory: 1Gi}}"), 0),
        -997
    );
    // 1000 - 1000 * 2Gi / 8Gi = 750.
    assert_eq!(
        adj(&pod_with_resources("{requests: {memory: 2Gi}}"), 0),
        750
    );
    // No memory request scores 1000, lowered to 999 below BestEffort.
    assert_eq!(adj(&pod_with_resources("{requests: {cpu: 1}}"), 0), 999);
    // All of the node's memory scores 0, raised to 3 above Guaranteed.
    assert_eq!(adj(&pod_with_resources("{requests: {memory: 8Gi}}"), 0), 3);
}

#[test]
fn sidecar_scores_no_higher_than_the_smallest_regular_container() {
    let pod = pod(
        "metadata: {name: s}\nspec:\n  initContainers:\n  - {name: proxy, image: busybox, restartPolicy: Always, resources: {requests: {memory: 64Mi}}}\n  containers:\n  - {name: big, image: busybox, resources: {requests: {memory: 4Gi}}}\n  - {name: small, image: busybox, resources: {requests: {memory: 2Gi}}}\n",
    );
    let proxy = match pod.spec.as_ref().and_then(|s| s.init_containers.as_ref()) {
        Some(init) => &init[0],
        None => panic!("no init containers"),
    };
    assert_eq!(
        ContainerKind::of(&pod, "proxy"),
        Some(ContainerKind::Sidecar)
    );
    let adj = |kind| {
        let config = ok(container_config(
            &pod,
            proxy,
            kind,
            &node(),
            &RuntimeFacts::default(),
        ));
        linux_resources(&config).oom_score_adj
    };
    // Alone, 64Mi would score 993; capped at the 2Gi container's 750.
    assert_eq!(adj(ContainerKind::Sidecar), 750);
    assert_eq!(adj(ContainerKind::Init), 993);
}

#[test]
fn node_critical_static_pod_scores_as_guaranteed() {
    let pod = pod(
        "metadata: {name: n, annotations: {kubernetes.io/config.source: file}}\nspec:\n  priorityClassName: system-node-critical\n  containers:\n  - {name: c, image: busybox}\n",
    );
    assert_eq!(linux_resources(&config_of_first(&pod)).oom_score_adj, -997);
}

// --- Environment and downward API --------------------------------------------------------

#[test]
fn env_expansion_in_order_with_escapes_and_unknowns() {
    let pod = pod(r#"
metadata: {name: e}
spec:
  containers:
  - name: c
    image: busybox
    command: ["/bin/$(SHELL_NAME)", "-c"]
    args: ["echo $(GREETING) $$(GREETING) $(NOPE) $(LATER)"]
    env:
    - {name: NAME, value: world}
    - {name: GREETING, value: "hello $(NAME)"}
    - {name: FORWARD, value: "$(LATER)"}
    - {name: ESCAPED, value: "$$(NAME)"}
    - {name: UNKNOWN, value: "$(NOPE)"}
    - {name: EMPTY}
    - {name: SHELL_NAME, value: sh}
    - {name: LATER, value: late}
    - {name: NAME, value: again}
"#);
    let config = config_of_first(&pod);
    assert_eq!(
        envs(&config),
        [
            ("NAME".to_owned(), "again".to_owned()),
            ("GREETING".to_owned(), "hello world".to_owned()),
            ("FORWARD".to_owned(), "$(LATER)".to_owned()),
            ("ESCAPED".to_owned(), "$(NAME)".to_owned()),
            ("UNKNOWN".to_owned(), "$(NOPE)".to_owned()),
            ("EMPTY".to_owned(), String::new()),
            ("SHELL_NAME".to_owned(), "sh".to_owned()),
            ("LATER".to_owned(), "late".to_owned()),
        ]
    );
    assert_eq!(config.command, ["/bin/sh", "-c"]);
    assert_eq!(config.args, ["echo hello world $(GREETING) $(NOPE) late"]);
}

const DOWNWARD: &str = r#"
metadata:
  name: dw
  namespace: team
  labels: {app: shop}
  annotations: {owner: ops}
spec:
  serviceAccountName: robot
  containers:
  - name: c
    image: busybox
    resources:
      requests: {cpu: 250m, memory: 64Mi}
      limits: {cpu: 500m, memory: 128Mi}
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: POD_NAMESPACE, valueFrom: {fieldRef: {apiVersion: v1, fieldPath: metadata.namespace}}}
    - {name: POD_UID, valueFrom: {fieldRef: {fieldPath: metadata.uid}}}
    - {name: APP, valueFrom: {fieldRef: {fieldPath: "metadata.labels['app']"}}}
    - {name: OWNER, valueFrom: {fieldRef: {fieldPath: "metadata.annotations['owner']"}}}
    - {name: MISSING_LABEL, valueFrom: {fieldRef: {fieldPath: "metadata.labels['nope']"}}}
    - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
    - {name: SA, valueFrom: {fieldRef: {fieldPath: spec.serviceAccountName}}}
    - {name: HOST_IP, valueFrom: {fieldRef: {fieldPath: status.hostIP}}}
    - {name: HOST_IPS, valueFrom: {fieldRef: {fieldPath: status.hostIPs}}}
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: POD_IPS, valueFrom: {fieldRef: {fieldPath: status.podIPs}}}
    - {name: CPU_LIMIT_MILLI, valueFrom: {resourceFieldRef: {resource: limits.cpu, divisor: 1m}}}
    - {name: CPU_LIMIT, valueFrom: {resourceFieldRef: {resource: limits.cpu}}}
    - {name: CPU_REQUEST, valueFrom: {resourceFieldRef: {resource: requests.cpu}}}
    - {name: MEM_LIMIT_MI, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
    - {name: MEM_REQUEST, valueFrom: {resourceFieldRef: {resource: requests.memory}}}
    - {name: OTHER_CPU, valueFrom: {resourceFieldRef: {containerName: other, resource: limits.cpu, divisor: 1m}}}
    - {name: OTHER_MEM, valueFrom: {resourceFieldRef: {containerName: other, resource: limits.memory}}}
    - {name: DERIVED, value: "$(POD_NAME).$(POD_NAMESPACE)"}
  - name: other
    image: busybox
"#;

#[test]
fn downward_api_fields_and_resources() {
    let pod = pod(DOWNWARD);
    let facts = RuntimeFacts {
        pod_ips: vec!["fd00::7".into(), "10.244.0.7".into()],
        ..Default::default()
    };
    let config = config_with(&pod, 0, &facts);
    for (key, value) in [
        ("POD_NAME", "dw"),
        ("POD_NAMESPACE", "team"),
        ("POD_UID", UID),
        ("APP", "shop"),
        ("OWNER", "ops"),
        ("MISSING_LABEL", ""),
        // No spec.nodeName: a static pod's is the node's.
        ("NODE", "node-a"),
        ("SA", "robot"),
        ("HOST_IP", "192.168.1.10"),
        ("HOST_IPS", "192.168.1.10"),
        // The node is IPv4, so the IPv4 pod IP is primary.
        ("POD_IP", "10.244.0.7"),
        ("POD_IPS", "10.244.0.7,fd00::7"),
        ("CPU_LIMIT_MILLI", "500"),
        // 0.5 CPU rounds up to 1.
        ("CPU_LIMIT", "1"),
        ("CPU_REQUEST", "1"),
        ("MEM_LIMIT_MI", "128"),
        ("MEM_REQUEST", "67108864"),
        // Unlimited containers read the node's allocatable.
        ("OTHER_CPU", "2000"),
        ("OTHER_MEM", "7516192768"),
        ("DERIVED", "dw.team"),
    ] {
        assert_eq!(env_value(&config, key).as_deref(), Some(value), "{key}");
    }
}

#[test]
fn unknown_downward_api_field_is_an_error() {
    let pod = pod(
        "metadata: {name: x}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    env:\n    - {name: A, value: a}\n    - {name: PHASE, valueFrom: {fieldRef: {fieldPath: status.phase}}}\n",
    );
    let error = container_config(
        &pod,
        container_of(&pod, 0),
        ContainerKind::Regular,
        &node(),
        &RuntimeFacts::default(),
    )
    .map(|_| ());
    assert!(
        matches!(&error, Err(SpecError::Invalid { path, value, .. })
            if path == "spec.containers[0].env[1].valueFrom.fieldRef.fieldPath" && value == "status.phase"),
        "{error:?}"
    );
}

#[test]
fn config_map_and_secret_references_fail_unless_optional() {
    let pod = pod(r#"
metadata: {name: cm}
spec:
  containers:
  - name: c
    image: busybox
    env:
    - {name: A, valueFrom: {configMapKeyRef: {name: settings, key: a, optional: true}}}
    - {name: B, valueFrom: {secretKeyRef: {name: creds, key: b, optional: true}}}
    - {name: C, value: c}
    envFrom:
    - {configMapRef: {name: extra, optional: true}}
  - name: strict
    image: busybox
    env:
    - {name: C, value: c}
    - {name: S, valueFrom: {secretKeyRef: {name: creds, key: s}}}
  - name: strict-from
    image: busybox
    envFrom:
    - {configMapRef: {name: extra}}
"#);
    let config = config_of_first(&pod);
    assert_eq!(envs(&config), [("C".to_owned(), "c".to_owned())]);

    let error_of = |index: usize| {
        container_config(
            &pod,
            container_of(&pod, index),
            ContainerKind::Regular,
            &node(),
            &RuntimeFacts::default(),
        )
        .map(|_| ())
    };
    let secret = error_of(1);
    assert!(
        matches!(&secret, Err(SpecError::ObjectNotFound { path, message })
            if path == "spec.containers[1].env[1].valueFrom.secretKeyRef"
                && message == "secret \"creds\" not found"),
        "{secret:?}"
    );
    let env_from = error_of(2);
    assert!(
        matches!(&env_from, Err(SpecError::ObjectNotFound { path, .. })
            if path == "spec.containers[2].envFrom[0].configMapRef"),
        "{env_from:?}"
    );
}

#[test]
fn environment_comes_from_config_maps_and_secrets() {
    use crate::store::{Objects, Source};
    let objects = Objects::default();
    objects.config_maps.writer(Source::Api).apply(std::sync::Arc::new(
        serde_yaml::from_str(
            "metadata: {name: settings, namespace: default}\ndata: {a: from-cm, 1bad: x, ok_key: y}",
        )
        .expect("a ConfigMap"),
    ));
    objects
        .secrets
        .writer(Source::Api)
        .apply(std::sync::Arc::new(
            serde_yaml::from_str(
                "metadata: {name: creds, namespace: default}\ndata: {s: czNjcmV0}",
            )
            .expect("a Secret"),
        ));
    let pod = pod(r#"
metadata: {name: cm}
spec:
  containers:
  - name: c
    image: busybox
    envFrom:
    - {configMapRef: {name: settings}, prefix: CM_}
    - {configMapRef: {name: settings}}
    env:
    - {name: S, valueFrom: {secretKeyRef: {name: creds, key: s}}}
    - {name: A, valueFrom: {configMapKeyRef: {name: settings, key: a}}}
    - {name: M, valueFrom: {configMapKeyRef: {name: settings, key: missing, optional: true}}}
"#);
    let config = ok(container_config_with(
        &pod,
        container_of(&pod, 0),
        ContainerKind::Regular,
        &node(),
        &RuntimeFacts::default(),
        &objects,
    ));
    let got = envs(&config);
    let get = |name: &str| got.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    assert_eq!(get("CM_a"), Some("from-cm"));
    assert_eq!(
        get("CM_1bad"),
        Some("x"),
        "a prefix can make a key a valid name"
    );
    assert_eq!(get("1bad"), None, "an invalid name is skipped");
    assert_eq!(get("ok_key"), Some("y"));
    assert_eq!(get("S"), Some("s3cret"));
    assert_eq!(get("A"), Some("from-cm"));
    assert_eq!(get("M"), None);
}

// --- Ports, labels, annotations, hash ----------------------------------------------------

#[test]
fn port_mappings_cover_every_regular_container_port() {
    let pod = pod(r#"
metadata: {name: ports}
spec:
  initContainers:
  - {name: init, image: busybox, ports: [{containerPort: 9, hostPort: 9}]}
  containers:
  - name: dns
    image: busybox
    ports:
    - {name: dns-udp, containerPort: 53, hostPort: 5353, protocol: UDP, hostIP: 127.0.0.1}
    - {name: dns-udp, containerPort: 54, hostPort: 5354, protocol: UDP}
    - {containerPort: 8080, hostPort: 80}
    - {containerPort: 8080, hostPort: 80}
    - {containerPort: 9000, protocol: SCTP}
  - name: other
    image: busybox
    ports:
    - {name: dns-udp, containerPort: 53, protocol: UDP}
"#);
    let mapping =
        |protocol: api::Protocol, container_port, host_port, host_ip: &str| api::PortMapping {
            protocol: protocol as i32,
            container_port,
            host_port,
            host_ip: host_ip.to_owned(),
        };
    assert_eq!(
        sandbox(&pod).port_mappings,
        [
            mapping(api::Protocol::Udp, 53, 5353, "127.0.0.1"),
            mapping(api::Protocol::Tcp, 8080, 80, ""),
            mapping(api::Protocol::Sctp, 9000, 0, ""),
            mapping(api::Protocol::Udp, 53, 0, ""),
        ]
    );
}

#[test]
fn pod_labels_do_not_override_identity_labels() {
    let pod = pod("metadata: {name: l, labels: {io.kubernetes.pod.name: spoof, tier: web}}\nspec:\n  containers: [{name: c, image: busybox}]\n");
    let labels = sandbox(&pod).labels;
    assert_eq!(labels.get(POD_NAME_LABEL).map(String::as_str), Some("l"));
    assert_eq!(labels.get("tier").map(String::as_str), Some("web"));
    let container_labels = config_of_first(&pod).labels;
    assert_eq!(container_labels.get("tier"), None);
    assert_eq!(
        container_labels
            .get(CONTAINER_NAME_LABEL)
            .map(String::as_str),
        Some("c")
    );
}

#[test]
fn grace_periods_and_pre_stop_are_annotated() {
    let pod = pod(r#"
metadata: {name: g, deletionGracePeriodSeconds: 10}
spec:
  terminationGracePeriodSeconds: 45
  containers:
  - name: c
    image: busybox
    lifecycle:
      preStop: {exec: {command: [sh, -c, sleep 5]}}
"#);
    let annotations = config_of_first(&pod).annotations;
    let get = |key: &str| annotations.get(key).map(String::as_str);
    assert_eq!(get(DELETION_GRACE_PERIOD_ANNOTATION), Some("10"));
    assert_eq!(get(TERMINATION_GRACE_PERIOD_ANNOTATION), Some("45"));
    assert_eq!(
        get(PRE_STOP_HANDLER_ANNOTATION),
        Some(r#"{"exec":{"command":["sh","-c","sleep 5"]}}"#)
    );
    assert_eq!(get(CONTAINER_PORTS_ANNOTATION), None);
}

#[test]
fn container_hash_is_stable_and_tracks_the_spec() {
    let a = pod("metadata: {name: h}\nspec:\n  containers:\n  - {name: c, image: busybox:1.36, env: [{name: X, value: \"1\"}], resources: {limits: {cpu: 1, memory: 1Gi}}}\n");
    // The same spec written differently.
    let b = pod("metadata: {name: h2}\nspec:\n  containers:\n  - resources:\n      limits: {memory: 1Gi, cpu: 1}\n    env:\n    - value: \"1\"\n      name: X\n    image: busybox:1.36\n    name: c\n");
    let hash = container_hash(container_of(&a, 0));
    assert_eq!(hash.len(), 16);
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(hash, container_hash(container_of(&b, 0)));
    assert_eq!(hash, container_hash(container_of(&a, 0)));

    let mut changed_image = container_of(&a, 0).clone();
    changed_image.image = Some("busybox:1.37".into());
    assert_ne!(hash, container_hash(&changed_image));
    let mut changed_env = container_of(&a, 0).clone();
    changed_env.env = None;
    assert_ne!(hash, container_hash(&changed_env));
}

// --- Security contexts -------------------------------------------------------------------

#[test]
fn security_contexts_combine_pod_and_container() {
    let pod = pod(r#"
metadata: {name: sec}
spec:
  securityContext:
    runAsUser: 1000
    runAsGroup: 3000
    runAsNonRoot: true
    fsGroup: 2000
    supplementalGroups: [4000, 5000]
    seccompProfile: {type: RuntimeDefault}
    sysctls: [{name: net.ipv4.ip_unprivileged_port_start, value: "0"}]
  containers:
  - name: app
    image: busybox
    securityContext:
      runAsUser: 1001
      readOnlyRootFilesystem: true
      allowPrivilegeEscalation: false
      capabilities: {add: [NET_ADMIN], drop: [ALL]}
  - name: tools
    image: busybox
    securityContext:
      privileged: true
      procMount: Unmasked
      seccompProfile: {type: Localhost, localhostProfile: profiles/audit.json}
"#);
    let sandbox = sandbox(&pod);
    let sandbox_context = sandbox_security(&sandbox);
    assert_eq!(
        sandbox_context.run_as_user,
        Some(api::Int64Value { value: 1000 })
    );
    assert_eq!(
        sandbox_context.run_as_group,
        Some(api::Int64Value { value: 3000 })
    );
    assert_eq!(sandbox_context.supplemental_groups, [2000, 4000, 5000]);
    assert!(
        sandbox_context.privileged,
        "a privileged container needs a privileged sandbox"
    );
    assert_eq!(
        sandbox_context.seccomp.map(|s| s.profile_type),
        Some(ProfileType::RuntimeDefault as i32)
    );
    assert_eq!(
        sandbox.linux.map(|l| l.sysctls),
        Some(map(&[("net.ipv4.ip_unprivileged_port_start", "0")]))
    );

    let app = container_security(&config(&pod, 0));
    assert_eq!(app.run_as_user, Some(api::Int64Value { value: 1001 }));
    assert_eq!(app.run_as_group, Some(api::Int64Value { value: 3000 }));
    assert!(app.readonly_rootfs);
    assert!(app.no_new_privs);
    assert!(!app.privileged);
    assert_eq!(
        app.capabilities,
        Some(api::Capability {
            add_capabilities: strings(&["NET_ADMIN"]),
            drop_capabilities: strings(&["ALL"]),
            add_ambient_capabilities: Vec::new(),
        })
    );
    assert_eq!(app.supplemental_groups, [2000, 4000, 5000]);
    assert_eq!(
        app.seccomp.map(|s| s.profile_type),
        Some(ProfileType::RuntimeDefault as i32)
    );
    assert_eq!(app.masked_paths, strings(&DEFAULT_MASKED_PATHS));

    let tools = container_security(&config(&pod, 1));
    assert!(tools.privileged);
    assert!(!tools.no_new_privs);
    assert!(tools.masked_paths.is_empty());
    assert!(tools.readonly_paths.is_empty());
    assert_eq!(tools.run_as_user, Some(api::Int64Value { value: 1000 }));
    assert_eq!(
        tools.seccomp,
        Some(api::SecurityProfile {
            profile_type: ProfileType::Localhost as i32,
            localhost_ref: "/var/lib/kubelet/seccomp/profiles/audit.json".into(),
        })
    );
}

#[test]
fn seccomp_default_applies_when_nothing_is_chosen() {
    let pod = pod_with_resources("{}");
    let mut ctx = node();
    ctx.seccomp_default = true;
    let config = ok(container_config(
        &pod,
        container_of(&pod, 0),
        ContainerKind::Regular,
        &ctx,
        &RuntimeFacts::default(),
    ));
    assert_eq!(
        container_security(&config).seccomp.map(|s| s.profile_type),
        Some(ProfileType::RuntimeDefault as i32)
    );
}

#[test]
fn run_as_non_root_is_enforced() {
    let root = pod("metadata: {name: r}\nspec:\n  securityContext: {runAsNonRoot: true}\n  containers:\n  - {name: c, image: busybox, securityContext: {runAsUser: 0}}\n");
    let error = container_config(
        &root,
        container_of(&root, 0),
        ContainerKind::Regular,
        &node(),
        &RuntimeFacts::default(),
    )
    .map(|_| ());
    assert!(
        matches!(&error, Err(SpecError::RunAsNonRoot { path, .. })
            if path == "spec.containers[0].securityContext.runAsNonRoot"),
        "{error:?}"
    );

    let image_user = pod("metadata: {name: r}\nspec:\n  securityContext: {runAsNonRoot: true}\n  containers:\n  - {name: c, image: busybox}\n");
    let container = container_of(&image_user, 0);
    let verify = |uid: Option<i64>, name: &str| {
        verify_run_as_non_root(&image_user, container, ContainerKind::Regular, uid, name)
    };
    assert!(matches!(
        verify(Some(0), ""),
        Err(SpecError::RunAsNonRoot { .. })
    ));
    assert!(matches!(
        verify(None, "nginx"),
        Err(SpecError::RunAsNonRoot { .. })
    ));
    assert!(verify(Some(101), "").is_ok());
    // An image that names no user runs as root (kubelet's getImageUser).
    assert!(matches!(
        verify(None, ""),
        Err(SpecError::RunAsNonRoot { .. })
    ));
    // Without the image's user, only an explicit runAsUser can be checked.
    assert!(container_config(
        &image_user,
        container,
        ContainerKind::Regular,
        &node(),
        &RuntimeFacts::default(),
    )
    .is_ok());
}

#[test]
fn apparmor_unconfined_from_annotation() {
    let pod = pod("metadata: {name: a, annotations: {container.apparmor.security.beta.kubernetes.io/c: unconfined}}\nspec:\n  containers: [{name: c, image: busybox}]\n");
    let context = container_security(&config_of_first(&pod));
    assert_eq!(
        context.apparmor.map(|p| p.profile_type),
        Some(ProfileType::Unconfined as i32)
    );
    #[allow(deprecated, reason = "kubelet fills the legacy string form too")]
    let legacy = context.apparmor_profile.clone();
    assert_eq!(legacy, "unconfined");
    let plain = container_security(&config_of_first(&pod_with_resources("{}")));
    assert_eq!(plain.apparmor, None);
}

#[test]
fn missing_identity_is_an_error() {
    let mut nameless = pod_with_resources("{}");
    nameless.metadata.name = None;
    let error = sandbox_config(&nameless, &node(), 0).map(|_| ());
    assert!(
        matches!(&error, Err(SpecError::Missing { path }) if path == "metadata.name"),
        "{error:?}"
    );
}
