use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;
use crate::policy::compile;

/// A fixed linear congruential sequence: the same cases on every run.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }

    fn pick<T: Clone>(&mut self, from: &[T]) -> T {
        from[self.below(from.len())].clone()
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

const NAMESPACES: [&str; 3] = ["a", "b", "c"];
const LABEL_KEYS: [&str; 3] = ["app", "tier", "kubernetes.io/metadata.name"];
const LABEL_VALUES: [&str; 4] = ["web", "db", "a", "b"];
/// Few addresses, so that pods share them, inside and outside the blocks below.
const ADDRESSES: [[u8; 4]; 6] = [
    [10, 0, 0, 1],
    [10, 0, 0, 2],
    [10, 0, 1, 1],
    [10, 1, 0, 1],
    [192, 168, 0, 1],
    [10, 0, 0, 3],
];
const CIDRS: [&str; 6] = [
    "10.0.0.0/8",
    "10.0.0.0/24",
    "10.0.0.1/32",
    "0.0.0.0/0",
    "192.168.0.0/16",
    "bad",
];
const PORT_NAMES: [&str; 2] = ["http", "dns"];

fn labels(rng: &mut Lcg) -> BTreeMap<String, String> {
    (0..rng.below(3))
        .map(|_| (rng.pick(&LABEL_KEYS).into(), rng.pick(&LABEL_VALUES).into()))
        .collect()
}

fn selector(rng: &mut Lcg) -> LabelSelector {
    LabelSelector {
        match_labels: rng.chance(2).then(|| labels(rng)),
        match_expressions: rng.chance(3).then(|| {
            (0..rng.below(2) + 1)
                .map(|_| {
                    let operator = rng.pick(&["In", "NotIn", "Exists", "DoesNotExist"]);
                    LabelSelectorRequirement {
                        key: rng.pick(&LABEL_KEYS).into(),
                        operator: operator.into(),
                        values: operator.ends_with("In").then(|| {
                            (0..rng.below(2) + 1)
                                .map(|_| rng.pick(&LABEL_VALUES).into())
                                .collect()
                        }),
                    }
                })
                .collect()
        }),
    }
}

fn peers(rng: &mut Lcg) -> Option<Vec<NetworkPolicyPeer>> {
    rng.chance(5).then_some(()).map_or_else(
        || {
            Some(
                (0..rng.below(3))
                    .map(|_| match rng.below(5) {
                        0 => NetworkPolicyPeer {
                            ip_block: Some(IPBlock {
                                cidr: rng.pick(&CIDRS).into(),
                                except: rng
                                    .chance(2)
                                    .then(|| vec![rng.pick(&CIDRS[..3]).to_owned()]),
                            }),
                            ..Default::default()
                        },
                        1 => NetworkPolicyPeer {
                            namespace_selector: Some(selector(rng)),
                            ..Default::default()
                        },
                        2 => NetworkPolicyPeer {
                            namespace_selector: Some(selector(rng)),
                            pod_selector: Some(selector(rng)),
                            ..Default::default()
                        },
                        _ => NetworkPolicyPeer {
                            pod_selector: Some(selector(rng)),
                            ..Default::default()
                        },
                    })
                    .collect(),
            )
        },
        |()| None,
    )
}

fn ports(rng: &mut Lcg) -> Option<Vec<NetworkPolicyPort>> {
    rng.chance(2).then(|| {
        (0..rng.below(2) + 1)
            .map(|_| {
                let protocol = Some(rng.pick(&["TCP", "UDP"]).to_owned());
                match rng.below(4) {
                    0 => NetworkPolicyPort {
                        port: Some(IntOrString::String(rng.pick(&PORT_NAMES).into())),
                        protocol,
                        ..Default::default()
                    },
                    1 => NetworkPolicyPort {
                        port: Some(IntOrString::Int(rng.pick(&[53, 80, 8080]))),
                        end_port: rng.chance(3).then_some(8081),
                        protocol,
                    },
                    2 => NetworkPolicyPort {
                        protocol,
                        ..Default::default()
                    },
                    _ => NetworkPolicyPort {
                        port: Some(IntOrString::Int(80)),
                        protocol,
                        ..Default::default()
                    },
                }
            })
            .collect()
    })
}

fn policy(rng: &mut Lcg, namespace: &str, name: &str) -> NetworkPolicy {
    let ingress = rng.chance(4).then_some(()).map_or_else(
        || {
            Some(
                (0..rng.below(3))
                    .map(|_| NetworkPolicyIngressRule {
                        from: peers(rng),
                        ports: ports(rng),
                    })
                    .collect(),
            )
        },
        |()| None,
    );
    let egress = rng.chance(2).then(|| {
        (0..rng.below(3))
            .map(|_| NetworkPolicyEgressRule {
                to: peers(rng),
                ports: ports(rng),
            })
            .collect()
    });
    let policy_types = rng.chance(2).then(|| {
        let mut types = Vec::new();
        if rng.chance(2) {
            types.push("Ingress".to_owned());
        }
        if rng.chance(2) {
            types.push("Egress".to_owned());
        }
        types
    });
    NetworkPolicy {
        metadata: ObjectMeta {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(rng)),
            ingress,
            egress,
            policy_types,
        }),
    }
}

fn pod(rng: &mut Lcg, name: &str) -> PolicyPod {
    PolicyPod {
        namespace: crate::intern::intern(rng.pick(&NAMESPACES)),
        name: name.into(),
        labels: labels(rng).into(),
        ip: rng.pick(&ADDRESSES).into(),
        named_ports: (0..rng.below(3))
            .map(|_| NamedPort {
                name: rng.pick(&PORT_NAMES).into(),
                protocol: rng.pick(&[PolicyProtocol::Tcp, PolicyProtocol::Udp]),
                port: rng.pick(&[53, 80, 8080]),
            })
            .collect::<Vec<_>>()
            .into(),
        ifindex: rng.chance(3).then(|| rng.pick(&[1, 2, 3])),
    }
}

fn namespace(rng: &mut Lcg, name: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels(rng)),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The objects given to a table, to compile whole.
#[derive(Default)]
struct Objects {
    policies: BTreeMap<(String, String), NetworkPolicy>,
    namespaces: BTreeMap<String, Namespace>,
    pods: BTreeMap<String, PolicyPod>,
}

impl Objects {
    fn compile(&self) -> Compiled {
        let pods: Vec<PolicyPod> = self.pods.values().cloned().collect();
        compile(self.policies.values(), self.namespaces.values(), &pods)
    }
}

/// A table, the objects it was given, and what its deltas alone add up to.
#[derive(Default)]
struct Harness {
    table: PolicyTable,
    objects: Objects,
    from_deltas: Compiled,
}

impl Harness {
    fn change(&mut self, rng: &mut Lcg) {
        match rng.below(6) {
            0 | 1 => {
                let namespace = rng.pick(&["a", "b"]);
                let name = format!("p{}", rng.below(5));
                let key = (namespace.to_owned(), name.clone());
                if rng.chance(5) {
                    self.table.set_policy(namespace, &name, None);
                    self.objects.policies.remove(&key);
                } else {
                    let policy = policy(rng, namespace, &name);
                    self.table.set_policy(namespace, &name, Some(&policy));
                    self.objects.policies.insert(key, policy);
                }
            }
            2 => {
                let name = rng.pick(&NAMESPACES);
                if rng.chance(3) {
                    self.table.set_namespace(name, None);
                    self.objects.namespaces.remove(name);
                } else {
                    let object = namespace(rng, name);
                    self.table.set_namespace(name, Some(&object));
                    self.objects.namespaces.insert(name.to_owned(), object);
                }
            }
            _ => {
                let name = format!("pod{}", rng.below(10));
                if rng.chance(5) {
                    self.table.set_pod(&name, None);
                    self.objects.pods.remove(&name);
                } else {
                    let mut pod = pod(rng, &name);
                    // Often a change of one thing only, as a pod's life has them.
                    if let Some(old) = self.objects.pods.get(&name).filter(|_| rng.chance(2)) {
                        let mut changed = old.clone();
                        match rng.below(3) {
                            0 => changed.labels = pod.labels,
                            1 => changed.ip = pod.ip,
                            _ => changed.named_ports = pod.named_ports,
                        }
                        pod = changed;
                    }
                    self.table.set_pod(&name, Some(Arc::new(pod.clone())));
                    self.objects.pods.insert(name, pod);
                }
            }
        }
    }

    fn check(&mut self, case: &str) {
        let delta = self.table.update();
        delta.apply_to(&mut self.from_deltas);
        let whole = self.objects.compile();
        let held = self.table.compiled();
        assert_eq!(held.endpoints, whole.endpoints, "{case}: endpoints");
        assert_eq!(held.peers, whole.peers, "{case}: peers");
        assert_eq!(held.problems, whole.problems, "{case}: problems");
        assert_eq!(
            self.from_deltas.endpoints, whole.endpoints,
            "{case}: deltas' endpoints"
        );
        assert_eq!(self.from_deltas.peers, whole.peers, "{case}: deltas' peers");
        // A delta names only what changed.
        for (prefix, set) in &delta.peers {
            assert!(set.is_some() || !whole.peers.contains_key(prefix), "{case}");
        }
        assert!(
            self.table.update().is_empty(),
            "{case}: a second update is empty"
        );
    }
}

/// Random sequences of policy, namespace and pod changes: after every update, the table and
/// the sum of its deltas are what a compile of everything gives.
#[test]
fn random_changes_add_up_to_a_whole_compile() {
    let mut rng = Lcg(0x9e37_79b9_7f4a_7c15);
    // How much the cases exercised: peer entries and problems compared.
    let (mut peers, mut problems) = (0, 0);
    for sequence in 0..300 {
        let mut harness = Harness::default();
        for step in 0..40 {
            for _ in 0..rng.below(3) + 1 {
                harness.change(&mut rng);
            }
            harness.check(&format!("sequence {sequence} step {step}"));
            peers += harness.from_deltas.peers.len();
            problems += harness.table.compiled().problems.len();
        }
    }
    assert!(
        peers > 20_000 && problems > 1000,
        "{peers} peers, {problems} problems"
    );
}

/// One policy's change at many policies touches only that policy's peers.
#[test]
fn one_policy_change_writes_only_its_peers() {
    let mut table = PolicyTable::new();
    let server = PolicyPod {
        namespace: "bench".into(),
        name: "server".into(),
        labels: BTreeMap::from([("app".to_owned(), "server".to_owned())]).into(),
        ip: [10, 9, 0, 1].into(),
        named_ports: Vec::new().into(),
        ifindex: Some(7),
    };
    table.set_pod("bench/server", Some(Arc::new(server)));
    let policies = 50;
    for j in 0..500u32 {
        let pod = PolicyPod {
            namespace: "bench".into(),
            name: format!("peer-{j}").into(),
            labels: BTreeMap::from([("peer".to_owned(), format!("p{}", j % policies))]).into(),
            ip: Ipv4Addr::from(0x0a00_0000 + j),
            named_ports: Vec::new().into(),
            ifindex: None,
        };
        table.set_pod(&format!("bench/peer-{j}"), Some(Arc::new(pod)));
    }
    let allowing = |i: u32, peer: u32| -> NetworkPolicy {
        serde_yaml::from_str(&format!(
            "metadata: {{namespace: bench, name: allow-p{i}}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  policyTypes: [Ingress]\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{peer: p{peer}}}}}}}], ports: [{{port: 8080}}]}}]\n"
        ))
        .expect("a NetworkPolicy")
    };
    for i in 0..policies {
        table.set_policy("bench", &format!("allow-p{i}"), Some(&allowing(i, i)));
    }
    let first = table.update();
    assert_eq!(first.peers.len(), 500);
    let delta = {
        table.set_policy("bench", "allow-p3", Some(&allowing(3, 4)));
        table.update()
    };
    // The ten pods of p3 leave; the ten of p4 are now allowed by allow-p3 too, and credited
    // to it (first by name).
    let removed = delta.peers.values().filter(|s| s.is_none()).count();
    assert_eq!(removed, 10, "{delta:#?}");
    assert_eq!(delta.peers.len(), 20, "{delta:#?}");
    assert!(delta.endpoints.is_empty());

    // A pod's label change: its address alone.
    let mut moved = PolicyPod {
        namespace: "bench".into(),
        name: "peer-5".into(),
        labels: BTreeMap::from([("peer".to_owned(), "none".to_owned())]).into(),
        ip: Ipv4Addr::from(0x0a00_0005),
        named_ports: Vec::new().into(),
        ifindex: None,
    };
    table.set_pod("bench/peer-5", Some(Arc::new(moved.clone())));
    let delta = table.update();
    assert_eq!(
        delta.peers.keys().map(|p| p.address).collect::<Vec<_>>(),
        [moved.ip]
    );
    assert_eq!(delta.peers.values().next(), Some(&None));
    moved.labels = BTreeMap::from([("peer".to_owned(), "p5".to_owned())]).into();
    table.set_pod("bench/peer-5", Some(Arc::new(moved)));
    assert_eq!(table.update().peers.len(), 1);
}
