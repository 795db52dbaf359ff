//! The datapath's informers against the in-process fake API server: lists, watches with
//! resourceVersions, 410 Gone and relist, bookmarks, kube-proxy's label selector, a slice
//! moving between Services, and both EndpointSlice versions (the 1.20 server the end-to-end
//! tests run serves only v1beta1; the fake serves v1 when told to, as a newer server does).

use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::cluster::fake_api::FakeApi;
use crate::store::{Source, Store};

const SLICES: &str = "endpointslices.discovery.k8s.io";

fn service(namespace: &str, name: &str, ip: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": namespace, "name": name, "labels": labels},
        "spec": {"clusterIP": ip, "ports": [{"port": 80, "protocol": "TCP"}]},
    })
}

fn slice_v1(namespace: &str, name: &str, service: &str, ip: &str, node: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": namespace, "name": name,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"port": 8080, "protocol": "TCP", "name": ""}],
        "endpoints": [{"addresses": [ip], "nodeName": node, "zone": "z1",
                       "conditions": {"ready": true},
                       "hints": {"forZones": [{"name": "z1"}]}}],
    })
}

fn slice_v1beta1(namespace: &str, name: &str, service: &str, ip: &str, node: &str) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
        "metadata": {"namespace": namespace, "name": name,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"port": 8080, "protocol": "TCP", "name": ""}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": false},
                       "topology": {"kubernetes.io/hostname": node,
                                    "topology.kubernetes.io/zone": "z1"}}],
    })
}

/// Waits (in paused time) until `done` holds for the store.
async fn until<K: std::fmt::Debug>(store: &Store<K>, done: impl Fn(&Store<K>) -> bool) {
    for _ in 0..6000 {
        if done(store) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the store never got there: {:?}", store.entries());
}

fn watching(fake: &FakeApi, resource: &str) -> bool {
    fake.requests()
        .iter()
        .any(|r| r.query.contains_key("watch") && r.path.contains(resource))
}

#[tokio::test(start_paused = true)]
async fn services_follow_kube_proxys_selector_and_relist_after_410_gone() {
    let fake = FakeApi::new();
    fake.insert(
        "services",
        service("default", "kubernetes", "10.96.0.1", json!({})),
    );
    fake.insert("services", service("shop", "web", "10.96.0.20", json!({})));
    let other_proxy = json!({"service.kubernetes.io/service-proxy-name": "other"});
    fake.insert(
        "services",
        service("shop", "theirs", "10.96.0.21", other_proxy.clone()),
    );
    let store: Store<ServiceInfo> = Store::new(&[Source::Api]);
    tokio::spawn(watch_services(fake.client(), store.writer(Source::Api)));

    until(&store, |s| s.is_synced() && s.len() == 2).await;
    assert!(
        store.get_named("shop", "theirs").is_none(),
        "another proxy's"
    );
    let web = store.get_named("shop", "web").expect("listed");
    assert_eq!(web.addresses[0].address.to_string(), "10.96.0.20");
    let list = fake
        .requests()
        .into_iter()
        .find(|r| r.path == "/api/v1/services")
        .expect("a list");
    assert_eq!(
        list.query.get("labelSelector").map(String::as_str),
        Some(PROXY_LABEL_SELECTOR)
    );

    // A Service taken over by another proxy leaves the watch as a deletion.
    fake.until("the watch", |f| watching(f, "services")).await;
    fake.insert(
        "services",
        service("shop", "web", "10.96.0.20", other_proxy),
    );
    until(&store, |s| s.get_named("shop", "web").is_none()).await;

    // Bookmarks move the watch on and change nothing.
    fake.send_bookmarks();
    fake.insert("services", service("shop", "db", "10.96.0.30", json!({})));
    until(&store, |s| s.get_named("shop", "db").is_some()).await;

    // Deleted while the watch is down and its history compacted: the relist tells.
    fake.close_watches();
    fake.remove("services", "shop", "db");
    fake.compact();
    until(&store, |s| s.get_named("shop", "db").is_none()).await;
    assert!(store.get_named("default", "kubernetes").is_some());
}

#[tokio::test(start_paused = true)]
async fn endpoint_slices_come_from_v1_where_the_server_has_it() {
    let fake = FakeApi::new();
    fake.serve_group_version("discovery.k8s.io/v1", &["endpointslices"]);
    fake.insert(
        SLICES,
        slice_v1("shop", "web-abc", "web", "10.244.1.5", "node-a"),
    );
    let store: Store<SliceInfo> = Store::new(&[Source::Api]);
    tokio::spawn(watch_endpoint_slices(
        fake.client(),
        store.writer(Source::Api),
    ));

    until(&store, |s| s.is_synced() && s.len() == 1).await;
    let slice = store.get_named("shop", "web-abc").expect("listed");
    assert_eq!(&*slice.service, "web");
    let endpoint = &slice.endpoints[0];
    assert_eq!(endpoint.node.as_deref(), Some("node-a"));
    assert_eq!(endpoint.zone_hints.len(), 1);
    assert!(fake
        .requests()
        .iter()
        .any(|r| r.path == "/apis/discovery.k8s.io/v1/endpointslices"));

    // The slice moves to another Service: the store holds it under its new label.
    fake.until("the watch", |f| watching(f, "endpointslices"))
        .await;
    fake.insert(
        SLICES,
        slice_v1("shop", "web-abc", "api", "10.244.1.5", "node-a"),
    );
    until(&store, |s| {
        s.get_named("shop", "web-abc")
            .is_some_and(|slice| &*slice.service == "api")
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn endpoint_slices_come_from_v1beta1_on_a_1_20_server() {
    let fake = FakeApi::new();
    fake.insert(
        SLICES,
        slice_v1beta1("shop", "web-abc", "web", "10.244.1.5", "node-b"),
    );
    let store: Store<SliceInfo> = Store::new(&[Source::Api]);
    tokio::spawn(watch_endpoint_slices(
        fake.client(),
        store.writer(Source::Api),
    ));

    until(&store, |s| s.is_synced() && s.len() == 1).await;
    let slice = store.get_named("shop", "web-abc").expect("listed");
    let endpoint = &slice.endpoints[0];
    assert_eq!(
        endpoint.node.as_deref(),
        Some("node-b"),
        "from the hostname topology"
    );
    assert!(!endpoint.ready);
    assert!(fake
        .requests()
        .iter()
        .any(|r| r.path == "/apis/discovery.k8s.io/v1beta1/endpointslices"));
}

#[tokio::test(start_paused = true)]
async fn the_node_view_follows_the_zone_label_and_the_autoscalers_taint() {
    let fake = FakeApi::new();
    fake.insert(
        "nodes",
        json!({"apiVersion": "v1", "kind": "Node",
               "metadata": {"name": "node-a", "labels": {LABEL_ZONE: "z1"}}}),
    );
    let (tx, mut rx) = watch::channel(NodeView::default());
    tokio::spawn(watch_node(fake.client(), "node-a".into(), tx));
    rx.changed().await.expect("a view");
    assert_eq!(rx.borrow().zone.as_deref(), Some("z1"));
    assert!(!rx.borrow().leaving);
    fake.until("the watch", |f| watching(f, "nodes")).await;
    fake.insert(
        "nodes",
        json!({"apiVersion": "v1", "kind": "Node",
               "metadata": {"name": "node-a", "labels": {LABEL_ZONE: "z2"}},
               "spec": {"taints": [{"key": TAINT_TO_BE_DELETED, "effect": "NoSchedule"}]}}),
    );
    rx.changed().await.expect("a view");
    assert_eq!(rx.borrow().zone.as_deref(), Some("z2"));
    assert!(rx.borrow().leaving);
}

#[test]
fn a_pod_is_read_for_policy_without_what_policy_does_not_read() {
    let pod = |host_network: bool| -> PodPeer {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": "shop", "name": "web-1", "labels": {"app": "web"},
                         "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}],
                         "annotations": {"big": "x"}},
            "spec": {"hostNetwork": host_network, "nodeName": "node-b",
                     "containers": [{"name": "app", "image": "busybox", "args": ["a", "b"],
                                     "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": "10.244.2.7",
                       "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .expect("a pod")
    };
    let read = pod(false);
    assert!(read.metadata.managed_fields.is_none() && read.metadata.annotations.is_none());
    let peer = crate::policy::peer(&read.into_pod()).expect("a peer");
    assert_eq!((&*peer.namespace, &*peer.name), ("shop", "web-1"));
    assert_eq!(peer.ip.to_string(), "10.244.2.7");
    assert_eq!(peer.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(peer.named_ports.len(), 1);
    assert!(
        crate::policy::peer(&pod(true).into_pod()).is_none(),
        "the node's address"
    );
}

#[tokio::test(start_paused = true)]
async fn a_v1beta1_slice_without_endpoints_is_read_as_empty() {
    // What 1.20 sends for the slice of a Service whose selector matches no pod.
    let fake = FakeApi::new();
    let mut empty = slice_v1beta1("shop", "idle-abc", "idle", "10.244.1.9", "node-b");
    empty["endpoints"] = Value::Null;
    empty["ports"] = Value::Null;
    fake.insert(SLICES, empty);
    fake.insert(
        SLICES,
        slice_v1beta1("shop", "web-abc", "web", "10.244.1.5", "node-b"),
    );
    let store: Store<SliceInfo> = Store::new(&[Source::Api]);
    tokio::spawn(watch_endpoint_slices(
        fake.client(),
        store.writer(Source::Api),
    ));
    until(&store, |s| s.is_synced() && s.len() == 2).await;
    let idle = store.get_named("shop", "idle-abc").expect("listed");
    assert!(idle.endpoints.is_empty() && idle.ports.is_empty());
}
