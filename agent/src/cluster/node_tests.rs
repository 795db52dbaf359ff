//! Node registration, the node Lease and the node status against the in-process fake API
//! server, with an in-process CRI runtime that answers `Version` only.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use serde_json::json;

use bosun_cri::CriClient;
use bosun_tests::fake_cri::{serve, VersionOnly};

use super::{register, renew_lease, run, NodeCapacity, NodeFacts, LEASE_NAMESPACE};
use crate::cluster::fake_api::FakeApi;
use crate::daemon::eviction::{Condition, Pressure};

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/node-a";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";

fn facts() -> NodeFacts {
    let capacity = NodeCapacity {
        cpu_millis: 2000,
        memory_bytes: 4 << 30,
        ephemeral_bytes: 10 << 30,
    };
    NodeFacts {
        name: "node-a".into(),
        labels: BTreeMap::from([("role".to_owned(), "edge".to_owned())]),
        taints: Vec::new(),
        host_ip: "10.0.0.5".into(),
        capacity,
        allocatable: capacity,
        max_pods: 110,
        runtime_version: "containerd://1.6.20".into(),
        port: 10250,
    }
}

fn labels(node: &Node) -> BTreeMap<String, String> {
    node.metadata.labels.clone().unwrap_or_default()
}

fn ready(node: &Node) -> Option<String> {
    let conditions = node.status.as_ref()?.conditions.as_ref()?;
    let ready = conditions.iter().find(|c| c.type_ == "Ready")?;
    Some(ready.status.clone())
}

#[tokio::test]
async fn registration_creates_the_node_with_kubelets_labels_and_its_status() {
    let fake = FakeApi::new();
    let uid = register(&fake.client(), &facts())
        .await
        .expect("registered");

    let node: Node = fake.object("nodes", "", "node-a").expect("the Node");
    assert_eq!(node.metadata.uid.as_deref(), Some(uid.as_str()));
    let labels = labels(&node);
    assert_eq!(labels["kubernetes.io/hostname"], "node-a");
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert!(labels.contains_key("kubernetes.io/arch"));
    assert_eq!(labels["role"], "edge");
    assert_eq!(ready(&node).as_deref(), Some("True"));
    assert_eq!(fake.succeeded("POST", "/api/v1/nodes"), 1);
    // Created with its status, as kubelet does: no separate status write.
    assert_eq!(fake.succeeded("PATCH", "/api/v1/nodes/node-a/status"), 0);
}

#[tokio::test]
async fn registration_reconciles_an_existing_node_instead_of_failing() {
    let fake = FakeApi::new();
    fake.insert(
        "nodes",
        json!({
            "metadata": {"name": "node-a", "uid": "uid-before", "labels": {"team": "infra"}},
            "spec": {"podCIDR": "10.244.1.0/24"},
        }),
    );
    let uid = register(&fake.client(), &facts())
        .await
        .expect("registered");

    assert_eq!(uid, "uid-before", "the same Node, not a new one");
    let node: Node = fake.object("nodes", "", "node-a").expect("the Node");
    let labels = labels(&node);
    assert_eq!(labels["kubernetes.io/hostname"], "node-a");
    assert_eq!(labels["role"], "edge");
    assert_eq!(labels["team"], "infra", "labels set by others stay");
    assert_eq!(ready(&node).as_deref(), Some("True"));
    let spec = node.spec.expect("spec");
    assert_eq!(spec.pod_cidr.as_deref(), Some("10.244.1.0/24"));
}

#[tokio::test]
async fn the_lease_is_created_owned_by_the_node_then_renewed() {
    let fake = FakeApi::new();
    let client = fake.client();
    let uid = register(&client, &facts()).await.expect("registered");
    let leases: Api<Lease> = Api::namespaced(client, LEASE_NAMESPACE);

    renew_lease(&leases, "node-a", &uid).await.expect("created");
    let lease: Lease = fake
        .object("leases.coordination.k8s.io", LEASE_NAMESPACE, "node-a")
        .expect("the Lease");
    let owner = &lease.metadata.owner_references.as_ref().expect("owners")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("Node", "node-a", uid.as_str())
    );
    let spec = lease.spec.expect("spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("node-a"));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    let first = spec.renew_time.expect("renewed");

    // renewTime is the wall clock's, to the microsecond.
    std::thread::sleep(Duration::from_millis(2));
    renew_lease(&leases, "node-a", &uid).await.expect("renewed");
    let lease: Lease = fake
        .object("leases.coordination.k8s.io", LEASE_NAMESPACE, "node-a")
        .expect("the Lease");
    assert!(lease.spec.and_then(|s| s.renew_time).expect("renewed").0 > first.0);
    assert_eq!(fake.succeeded("POST", LEASES), 1, "created once");
    assert_eq!(fake.succeeded("PATCH", LEASE), 1, "then patched");
}

/// A client of a [`VersionOnly`] runtime served on a socket in `dir`. Every call is a
/// round trip over a unix socket in this runtime, answered at once, so paused time does not
/// move while one is under way.
async fn runtime(dir: &Path) -> CriClient {
    let socket = dir.join("cri.sock");
    serve(VersionOnly, &socket);
    let endpoint = format!("unix://{}", socket.display());
    CriClient::connect(&endpoint, Duration::from_secs(60))
        .await
        .expect("connected to the fake runtime")
}

#[tokio::test(start_paused = true)]
async fn the_lease_is_renewed_every_10_s_and_a_changed_status_reported() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let fake = FakeApi::new();
    let (_pressure, pressure_rx) = tokio::sync::watch::channel(Pressure::new());
    tokio::spawn(run(
        fake.client(),
        facts(),
        runtime(dir.path()).await,
        pressure_rx,
    ));
    fake.until("the Lease", |f| f.succeeded("POST", LEASES) == 1)
        .await;
    let status = "/api/v1/nodes/node-a/status";
    fake.until("the status", |f| f.succeeded("PATCH", status) == 1)
        .await;

    tokio::time::sleep(Duration::from_secs(35)).await;
    assert_eq!(
        fake.succeeded("PATCH", LEASE),
        3,
        "renewed at 10, 20 and 30 s"
    );
    // The runtime is not ready: reported once, as it does not change.
    let node: Node = fake.object("nodes", "", "node-a").expect("the Node");
    assert_eq!(ready(&node).as_deref(), Some("False"));
    assert_eq!(fake.succeeded("PATCH", status), 1);
}

#[tokio::test(start_paused = true)]
async fn an_unchanged_status_is_reported_every_5_min() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let fake = FakeApi::new();
    let (_pressure, pressure_rx) = tokio::sync::watch::channel(Pressure::new());
    tokio::spawn(run(
        fake.client(),
        facts(),
        runtime(dir.path()).await,
        pressure_rx,
    ));
    let status = "/api/v1/nodes/node-a/status";
    fake.until("the status", |f| f.succeeded("PATCH", status) == 1)
        .await;
    tokio::time::sleep(super::STATUS_REPORT + Duration::from_secs(15)).await;
    assert_eq!(fake.succeeded("PATCH", status), 2);
}

/// The eviction manager's conditions, through the in-process fake API (a fast logic test;
/// the real API server is not part of this test).
#[tokio::test(start_paused = true)]
async fn a_pressure_change_is_reported_at_once_with_kubelets_reasons() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let fake = FakeApi::new();
    let (pressure, pressure_rx) = tokio::sync::watch::channel(Pressure::new());
    tokio::spawn(run(
        fake.client(),
        facts(),
        runtime(dir.path()).await,
        pressure_rx,
    ));
    let status = "/api/v1/nodes/node-a/status";
    fake.until("the status", |f| f.succeeded("PATCH", status) == 1)
        .await;
    let condition = |node: &Node, type_: &str| {
        node.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == type_).cloned())
            .map(|c| (c.status, c.reason.unwrap_or_default()))
    };
    let node: Node = fake.object("nodes", "", "node-a").expect("the Node");
    assert_eq!(
        condition(&node, "MemoryPressure"),
        Some(("False".into(), "KubeletHasSufficientMemory".into()))
    );
    pressure.send_replace(Pressure::from([
        Condition::MemoryPressure,
        Condition::PidPressure,
    ]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    fake.until("the pressure", |f| f.succeeded("PATCH", status) == 2)
        .await;
    let node: Node = fake.object("nodes", "", "node-a").expect("the Node");
    assert_eq!(
        condition(&node, "MemoryPressure"),
        Some(("True".into(), "KubeletHasInsufficientMemory".into()))
    );
    assert_eq!(
        condition(&node, "PIDPressure"),
        Some(("True".into(), "KubeletHasInsufficientPID".into()))
    );
    assert_eq!(
        condition(&node, "DiskPressure"),
        Some(("False".into(), "KubeletHasNoDiskPressure".into()))
    );
}
