//! Mirror pods against the in-process fake API server, with the pods watch filling the
//! mirrors as in the daemon.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::Api;
use serde_json::json;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::{is_mirror, run, CONFIG_MIRROR_ANNOTATION};
use crate::cluster::fake_api::{pod, FakeApi};
use crate::source::{PodUpdate, CONFIG_HASH_ANNOTATION, CONFIG_SOURCE_ANNOTATION};
use crate::store::{PodStore, Source, Writer};

const NODE: &str = "node-a";
const MIRROR: &str = "/api/v1/namespaces/kube-system/pods/etcd-node-a";

/// The static pod `kube-system/etcd-node-a` of hash `hash`, running.
fn etcd(hash: &str) -> Arc<Pod> {
    let mut etcd = pod("kube-system", "etcd-node-a", NODE);
    etcd["metadata"]["uid"] = json!(hash);
    etcd["metadata"]["annotations"] = json!({
        CONFIG_HASH_ANNOTATION: hash,
        CONFIG_SOURCE_ANNOTATION: "file",
    });
    let mut etcd: Pod = serde_json::from_value(etcd).expect("a pod");
    etcd.status = Some(PodStatus {
        phase: Some("Running".into()),
        ..PodStatus::default()
    });
    Arc::new(etcd)
}

/// The node's static pods, the pods watch and the mirror pod manager, against `fake`
/// (which holds the Node). The receiver of the pods to run must be kept.
struct Fixture {
    statics: Writer<Pod>,
    _updates: UnboundedReceiver<PodUpdate>,
}

fn start(fake: &FakeApi) -> Fixture {
    fake.insert(
        "nodes",
        json!({"metadata": {"name": NODE, "uid": "uid-node"}}),
    );
    let pods = PodStore::new(&[Source::File]);
    let statics = pods.writer(Source::File);
    statics.replace([etcd("hash-1")]);
    let mirrors = PodStore::new(&[Source::Api]);
    let (updates, received) = unbounded_channel();
    let client = fake.client();
    let writer = mirrors.writer(Source::Api);
    tokio::spawn(crate::cluster::pods::watch(
        client.clone(),
        NODE.into(),
        updates,
        writer,
    ));
    tokio::spawn(run(client, NODE.into(), pods, mirrors));
    Fixture {
        statics,
        _updates: received,
    }
}

fn mirror(fake: &FakeApi) -> Option<Pod> {
    fake.object("pods", "kube-system", "etcd-node-a")
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

/// Waits for a mirror that is not `old` (by UID) and not being deleted, with its static
/// pod's status.
async fn new_mirror(fake: &FakeApi, old: Option<&str>) -> Pod {
    fake.until("a mirror with its status", |f| {
        mirror(f).is_some_and(|m| {
            Some(uid(&m).as_str()) != old
                && m.metadata.deletion_timestamp.is_none()
                && m.status.and_then(|s| s.phase).as_deref() == Some("Running")
        })
    })
    .await;
    mirror(fake).expect("the mirror")
}

#[tokio::test(start_paused = true)]
async fn a_mirror_is_made_with_its_owner_and_status_and_made_again_when_deleted() {
    let fake = FakeApi::new();
    let _fixture = start(&fake);
    let first = new_mirror(&fake, None).await;
    assert!(is_mirror(&first));
    let annotations = first.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations[CONFIG_MIRROR_ANNOTATION], "hash-1");
    let owner = &first.metadata.owner_references.as_ref().expect("owners")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Node", "uid-node")
    );

    fake.remove("pods", "kube-system", "etcd-node-a");
    let second = new_mirror(&fake, Some(&uid(&first))).await;
    assert_eq!(
        fake.succeeded("POST", "/api/v1/namespaces/kube-system/pods"),
        2
    );
    assert!(is_mirror(&second));
}

#[tokio::test(start_paused = true)]
async fn a_mirror_deleted_gracefully_is_finished_off_and_made_again() {
    let fake = FakeApi::new();
    let _fixture = start(&fake);
    let first = new_mirror(&fake, None).await;

    // `kubectl delete pod`: marked, with the default grace period.
    let pods: Api<Pod> = Api::namespaced(fake.client(), "kube-system");
    pods.delete("etcd-node-a", &Default::default())
        .await
        .expect("marked");
    let second = new_mirror(&fake, Some(&uid(&first))).await;
    assert_ne!(uid(&second), uid(&first));
    let ended = fake
        .requests()
        .into_iter()
        .find(|r| r.is("DELETE", MIRROR) && r.body["gracePeriodSeconds"] == 0)
        .expect("the marked mirror deleted at once");
    assert_eq!(ended.body["preconditions"]["uid"], json!(uid(&first)));
}

#[tokio::test(start_paused = true)]
async fn a_mirror_whose_static_pod_is_gone_is_deleted() {
    let fake = FakeApi::new();
    let fixture = start(&fake);
    new_mirror(&fake, None).await;

    fixture.statics.replace([]);
    fake.until("the mirror gone", |f| mirror(f).is_none()).await;
}
