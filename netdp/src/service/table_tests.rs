use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::*;
use crate::service::compile;

fn service(namespace: &str, name: &str, ip: &str, extra: &str) -> Service {
    serde_yaml::from_str(&format!(
        "metadata: {{namespace: {namespace}, name: {name}}}\nspec:\n  clusterIP: {ip}\n  ports: [{{name: http, port: 80}}]\n{extra}"
    ))
    .expect("a Service")
}

/// A slice of `service` with one endpoint per (address, node, ready, zone hint).
fn slice(
    namespace: &str,
    name: &str,
    service: &str,
    endpoints: &[(&str, &str, bool, &str)],
) -> EndpointSlice {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|(ip, node, ready, zone)| {
            let hints = if zone.is_empty() {
                String::new()
            } else {
                format!(", hints: {{forZones: [{{name: {zone}}}]}}")
            };
            format!(
                "{{addresses: [{ip}], nodeName: {node}, conditions: {{ready: {ready}}}{hints}}}"
            )
        })
        .collect();
    serde_yaml::from_str(&format!(
        "metadata: {{namespace: {namespace}, name: {name}, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{}]\n",
        endpoints.join(", ")
    ))
    .expect("an EndpointSlice")
}

/// The objects a table was given, to compile whole and compare.
#[derive(Default)]
struct World {
    services: BTreeMap<(String, String), Service>,
    slices: BTreeMap<(String, String), EndpointSlice>,
}

/// A table and what its deltas wrote, checked against a compile from scratch.
struct Harness {
    table: ServiceTable,
    world: World,
    /// What the maps would hold, built from the deltas alone.
    maps: BTreeMap<Frontend, DesiredService>,
    node: &'static str,
    zone: Option<&'static str>,
}

impl Harness {
    fn new(node: &'static str) -> Self {
        Harness {
            table: ServiceTable::new(node),
            world: World::default(),
            maps: BTreeMap::new(),
            node,
            zone: None,
        }
    }

    fn zone(&mut self, zone: &'static str) {
        self.zone = Some(zone);
        self.table.set_zone(self.zone);
    }

    fn service(&mut self, namespace: &str, name: &str, service: Option<Service>) {
        let key = (namespace.to_owned(), name.to_owned());
        let info = service
            .as_ref()
            .map(|s| Arc::new(ServiceInfo::from_service(s)));
        match service {
            Some(service) => self.world.services.insert(key, service),
            None => self.world.services.remove(&key),
        };
        self.table.set_service(namespace, name, info);
    }

    fn slice(&mut self, namespace: &str, name: &str, slice: Option<EndpointSlice>) {
        let key = (namespace.to_owned(), name.to_owned());
        let info = slice.as_ref().map(|s| Arc::new(SliceInfo::from_slice(s)));
        match slice {
            Some(slice) => self.world.slices.insert(key, slice),
            None => self.world.slices.remove(&key),
        };
        self.table.set_slice(namespace, name, info);
    }

    /// Updates the table, applies the delta to the model maps, and checks both against a
    /// compile of the whole world. Returns the delta.
    fn update(&mut self) -> Delta {
        let delta = self.table.update();
        for frontend in &delta.removals {
            assert!(
                self.maps.remove(frontend).is_some(),
                "{frontend} removed but never written"
            );
        }
        for desired in &delta.upserts {
            self.maps.insert(desired.frontend, desired.clone());
        }
        let whole = if self.zone.is_none() {
            compile(
                self.world.services.values(),
                self.world.slices.values(),
                self.node,
            )
        } else {
            // What a table given everything at once makes of it.
            let mut fresh = ServiceTable::new(self.node);
            fresh.set_zone(self.zone);
            for service in self.world.services.values() {
                let info = ServiceInfo::from_service(service);
                let (namespace, name) = (info.namespace.clone(), info.name.clone());
                fresh.set_service(&namespace, &name, Some(Arc::new(info)));
            }
            for slice in self.world.slices.values() {
                let info = SliceInfo::from_slice(slice);
                let (namespace, name) = (info.namespace.clone(), info.name.clone());
                fresh.set_slice(&namespace, &name, Some(Arc::new(info)));
            }
            fresh.update();
            crate::service::Compiled {
                services: fresh.desired(),
                problems: fresh.problems(),
            }
        };
        let from_deltas: Vec<DesiredService> = self.maps.values().cloned().collect();
        assert_eq!(
            from_deltas, whole.services,
            "the deltas add up to a full compile"
        );
        assert_eq!(self.table.desired(), whole.services);
        assert_eq!(self.table.problems(), whole.problems);
        delta
    }
}

fn backends(desired: &DesiredService) -> Vec<String> {
    desired.backends.iter().map(|b| b.to_string()).collect()
}

#[test]
fn one_change_recompiles_its_own_service_only() {
    let mut h = Harness::new("node-a");
    for i in 0..50 {
        let name = format!("svc{i}");
        h.service(
            "shop",
            &name,
            Some(service("shop", &name, &format!("10.96.0.{}", i + 1), "")),
        );
        let ip = format!("10.244.0.{}", i + 1);
        h.slice(
            "shop",
            &format!("{name}-1"),
            Some(slice(
                "shop",
                &format!("{name}-1"),
                &name,
                &[(&ip, "node-b", true, "")],
            )),
        );
    }
    let first = h.update();
    assert_eq!(first.upserts.len(), 50);

    h.slice(
        "shop",
        "svc7-1",
        Some(slice(
            "shop",
            "svc7-1",
            "svc7",
            &[
                ("10.244.0.8", "node-b", true, ""),
                ("10.244.9.9", "node-b", true, ""),
            ],
        )),
    );
    let delta = h.update();
    assert_eq!(delta.upserts.len(), 1);
    assert_eq!(&*delta.upserts[0].name.name, "svc7");
    assert_eq!(
        backends(&delta.upserts[0]),
        ["10.244.0.8:8080", "10.244.9.9:8080"]
    );
    assert!(delta.removals.is_empty());
    // Nothing changed: nothing to write.
    h.slice(
        "shop",
        "svc7-1",
        Some(slice(
            "shop",
            "svc7-1",
            "svc7",
            &[
                ("10.244.0.8", "node-b", true, ""),
                ("10.244.9.9", "node-b", true, ""),
            ],
        )),
    );
    assert!(h.update().is_empty());
}

#[test]
fn a_slice_moving_between_services_leaves_one_and_joins_the_other() {
    let mut h = Harness::new("node-a");
    h.service("ns", "a", Some(service("ns", "a", "10.96.1.1", "")));
    h.service("ns", "b", Some(service("ns", "b", "10.96.1.2", "")));
    h.slice(
        "ns",
        "s",
        Some(slice("ns", "s", "a", &[("10.244.1.1", "node-b", true, "")])),
    );
    h.update();
    h.slice(
        "ns",
        "s",
        Some(slice("ns", "s", "b", &[("10.244.1.1", "node-b", true, "")])),
    );
    let delta = h.update();
    let changed: BTreeMap<String, Vec<String>> = delta
        .upserts
        .iter()
        .map(|d| (d.name.name.to_string(), backends(d)))
        .collect();
    assert_eq!(changed["a"], Vec::<String>::new());
    assert_eq!(changed["b"], ["10.244.1.1:8080"]);
    // The Service goes, its slice stays (a controller deletes it later): the frontend goes.
    h.service("ns", "b", None);
    let delta = h.update();
    assert_eq!(delta.removals.len(), 1);
    h.slice("ns", "s", None);
    assert!(h.update().is_empty());
}

#[test]
fn a_contested_frontend_passes_to_the_next_claimant() {
    let mut h = Harness::new("node-a");
    let external = "  externalIPs: [10.96.2.1]\n";
    h.service(
        "beta",
        "late",
        Some(service("beta", "late", "10.96.2.9", external)),
    );
    h.service(
        "alpha",
        "early",
        Some(service("alpha", "early", "10.96.2.1", "")),
    );
    let delta = h.update();
    assert_eq!(
        delta.upserts.len(),
        2,
        "10.96.2.1 once (alpha/early's), 10.96.2.9"
    );
    assert_eq!(h.table.problems().len(), 1, "beta/late lost 10.96.2.1:80");
    h.service("alpha", "early", None);
    let delta = h.update();
    assert_eq!(delta.upserts.len(), 1);
    assert_eq!(&*delta.upserts[0].name.namespace, "beta");
    assert!(delta.removals.is_empty());
    assert!(h.table.problems().is_empty());
}

#[test]
fn topology_hints_keep_traffic_in_the_zone_when_every_ready_endpoint_has_one() {
    let mut h = Harness::new("node-a");
    let prefer_close = "  trafficDistribution: PreferClose\n";
    h.service(
        "ns",
        "web",
        Some(service("ns", "web", "10.96.3.1", prefer_close)),
    );
    let zoned = [
        ("10.244.3.1", "node-a", true, "zone-a"),
        ("10.244.3.2", "node-b", true, "zone-b"),
    ];
    h.slice("ns", "web-1", Some(slice("ns", "web-1", "web", &zoned)));
    let all = ["10.244.3.1:8080", "10.244.3.2:8080"];
    // No zone known for this node: every endpoint.
    assert_eq!(backends(&h.update().upserts[0]), all);
    h.zone("zone-a");
    assert_eq!(backends(&h.update().upserts[0]), ["10.244.3.1:8080"]);
    // One ready endpoint without a hint: topology is not usable, every endpoint again.
    let unhinted = [
        ("10.244.3.1", "node-a", true, "zone-a"),
        ("10.244.3.2", "node-b", true, ""),
    ];
    h.slice("ns", "web-1", Some(slice("ns", "web-1", "web", &unhinted)));
    assert_eq!(backends(&h.update().upserts[0]), all);
    // None hinted for this zone: every endpoint.
    h.zone("zone-c");
    h.slice("ns", "web-1", Some(slice("ns", "web-1", "web", &zoned)));
    assert!(h.update().is_empty(), "still every endpoint");
    assert_eq!(backends(&h.table.desired()[0]), all);
}

#[test]
fn a_local_pod_failing_readiness_leaves_before_its_slice_says_so() {
    let mut h = Harness::new("node-a");
    h.service("ns", "web", Some(service("ns", "web", "10.96.4.1", "")));
    let endpoints = [
        ("10.244.4.1", "node-a", true, ""),
        ("10.244.4.2", "node-b", true, ""),
    ];
    h.slice("ns", "web-1", Some(slice("ns", "web-1", "web", &endpoints)));
    h.update();
    let mut table = std::mem::take(&mut h.table);
    let ip = |text: &str| -> Ipv4Addr { text.parse().expect("an IP") };
    assert_eq!(table.local_endpoint_ready(ip("10.244.4.1")), Some(true));
    assert_eq!(
        table.local_endpoint_ready(ip("10.244.4.2")),
        None,
        "another node's"
    );
    assert_eq!(
        table.local_endpoint_ready(ip("10.244.4.9")),
        None,
        "in no slice"
    );
    table.set_local_ready("10.244.4.1".parse().expect("an IP"), false);
    let delta = table.update();
    assert_eq!(backends(&delta.upserts[0]), ["10.244.4.2:8080"]);
    // Another node's endpoint is not this node's to judge.
    table.set_local_ready("10.244.4.2".parse().expect("an IP"), false);
    assert!(table.update().is_empty());
    table.set_local_ready("10.244.4.1".parse().expect("an IP"), true);
    assert_eq!(
        backends(&table.update().upserts[0]),
        ["10.244.4.1:8080", "10.244.4.2:8080"]
    );
}

/// A small deterministic generator, so that a failing sequence can be replayed.
struct Steps(u64);

impl Steps {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[test]
fn any_sequence_of_changes_adds_up_to_a_full_compile() {
    for seed in 1..=20u64 {
        let mut steps = Steps(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut h = Harness::new("node-a");
        for _ in 0..60 {
            let ns = ["a", "b"][steps.next(2) as usize];
            let service_name = format!("s{}", steps.next(4));
            match steps.next(5) {
                0 => h.service(ns, &service_name, None),
                1 => {
                    // Cluster IPs from a small set, so that Services contest frontends.
                    let ip = format!("10.96.5.{}", steps.next(5) + 1);
                    let extra = if steps.next(3) == 0 {
                        format!("  externalIPs: [10.96.5.{}]\n", steps.next(5) + 1)
                    } else {
                        String::new()
                    };
                    h.service(
                        ns,
                        &service_name,
                        Some(service(ns, &service_name, &ip, &extra)),
                    );
                }
                2 => h.slice(ns, &format!("sl{}", steps.next(6)), None),
                _ => {
                    let count = steps.next(4);
                    let addresses: Vec<String> = (0..count)
                        .map(|_| format!("10.244.5.{}", steps.next(6) + 1))
                        .collect();
                    let endpoints: Vec<(&str, &str, bool, &str)> = addresses
                        .iter()
                        .map(|a| {
                            (
                                a.as_str(),
                                ["node-a", "node-b"][a.len() % 2],
                                a.len() % 3 != 0,
                                "",
                            )
                        })
                        .collect();
                    let slice_name = format!("sl{}", steps.next(6));
                    h.slice(
                        ns,
                        &slice_name,
                        Some(slice(ns, &slice_name, &service_name, &endpoints)),
                    );
                }
            }
            if steps.next(3) == 0 {
                h.update();
            }
        }
        h.update();
    }
}

#[test]
fn a_pods_host_ports_are_frontends_on_the_node_addresses_or_its_host_ip() {
    let mut table = ServiceTable::new("node-a");
    let node: [Ipv4Addr; 2] = [Ipv4Addr::new(192, 0, 2, 10), Ipv4Addr::new(192, 0, 2, 11)];
    table.set_node_addresses(&node);
    let pod_ip = Ipv4Addr::new(10, 244, 1, 7);
    table.set_host_ports(
        "default",
        "web",
        vec![
            HostPort {
                host_ip: None,
                host_port: 8080,
                protocol: Protocol::Tcp,
                pod_ip,
                container_port: 80,
            },
            HostPort {
                host_ip: Some(node[1]),
                host_port: 5353,
                protocol: Protocol::Udp,
                pod_ip,
                container_port: 53,
            },
        ],
    );
    let delta = table.update();
    let frontends: Vec<String> = delta
        .upserts
        .iter()
        .map(|d| format!("{} {} {:?}", d.frontend, backends(d).join(","), d.external))
        .collect();
    let local = format!(
        "Some([ExternalTarget {{ backend: BackendAddr {{ address: {pod_ip}, port: 80 }}, local: true }}])"
    );
    assert_eq!(frontends.len(), 3, "{frontends:?}");
    assert_eq!(
        frontends[0],
        format!("192.0.2.10:8080/TCP 10.244.1.7:80 {local}")
    );
    assert!(frontends[1].starts_with("192.0.2.11:5353/UDP 10.244.1.7:53"));
    assert_eq!(
        frontends[2],
        format!("192.0.2.11:8080/TCP 10.244.1.7:80 {local}")
    );

    // A node port on the same address and port: the first claimant by name keeps it, and
    // the other is told which.
    table.set_service(
        "default",
        "aaa",
        Some(std::sync::Arc::new(ServiceInfo::from_service(&service(
            "default",
            "aaa",
            "10.96.0.9",
            "  type: NodePort\n  ports: [{port: 80, nodePort: 8080}]\n",
        )))),
    );
    let delta = table.update();
    assert!(
        delta
            .problems
            .iter()
            .any(|p| p.kind == "Pod" && p.name == "web" && p.message.contains("default/aaa")),
        "{:?}",
        delta.problems
    );

    // The pod gone: its frontends go (the Service keeps its own).
    table.set_host_ports("default", "web", Vec::new());
    let delta = table.update();
    let removed: Vec<String> = delta.removals.iter().map(|f| f.to_string()).collect();
    assert_eq!(removed, ["192.0.2.11:5353/UDP"]);
}
