//! The API server as a pod source, against the in-process fake API server.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::watch;
use crate::cluster::fake_api::{pod, FakeApi};
use crate::cluster::mirror::CONFIG_MIRROR_ANNOTATION;
use crate::source::{from_api, PodUpdate};
use crate::store::{Source, Store};

const NODE: &str = "node-a";

/// The watch of `NODE`'s pods against `fake`: its updates and its mirror pods.
fn start(fake: &FakeApi) -> (UnboundedReceiver<PodUpdate>, Store<Pod>) {
    let (updates, received) = unbounded_channel();
    let mirrors = Store::new(&[Source::Api]);
    tokio::spawn(watch(
        fake.client(),
        NODE.into(),
        updates,
        mirrors.writer(Source::Api),
    ));
    (received, mirrors)
}

async fn next(updates: &mut UnboundedReceiver<PodUpdate>) -> PodUpdate {
    tokio::time::timeout(Duration::from_secs(60), updates.recv())
        .await
        .expect("an update within a minute")
        .expect("the watch goes on")
}

fn names(pods: &[Arc<Pod>]) -> Vec<&str> {
    pods.iter()
        .map(|p| p.metadata.name.as_deref().unwrap_or_default())
        .collect()
}

async fn next_set(updates: &mut UnboundedReceiver<PodUpdate>) -> Vec<Arc<Pod>> {
    match next(updates).await {
        PodUpdate::Set(pods) => pods,
        other => panic!("expected a relist, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn only_the_pods_bound_to_this_node_are_listed_and_watched() {
    let fake = FakeApi::new();
    fake.insert("pods", pod("default", "web", NODE));
    fake.insert("pods", pod("default", "db", "node-b"));
    fake.insert("pods", pod("default", "unscheduled", ""));
    let (mut updates, _mirrors) = start(&fake);

    let listed = next_set(&mut updates).await;
    assert_eq!(names(&listed), ["web"]);
    assert!(from_api(&listed[0]), "marked as coming from the API server");

    // A pod for another node changes nothing here; the next update is this node's.
    fake.insert("pods", pod("default", "cache", "node-b"));
    fake.insert("pods", pod("default", "api", NODE));
    match next(&mut updates).await {
        PodUpdate::Apply(pod) => assert_eq!(pod.metadata.name.as_deref(), Some("api")),
        other => panic!("expected the new pod, got {other:?}"),
    }
    fake.remove("pods", "default", "web");
    match next(&mut updates).await {
        PodUpdate::Delete(pod) => assert_eq!(pod.metadata.name.as_deref(), Some("web")),
        other => panic!("expected the deletion, got {other:?}"),
    }

    // Every list and watch asked for this node's pods only: all the Node authorizer allows.
    let asked: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.is("GET", "/api/v1/pods"))
        .collect();
    assert!(
        asked.iter().any(|r| r.query.contains_key("watch")),
        "{asked:#?}"
    );
    for request in &asked {
        assert_eq!(
            request.query.get("fieldSelector").map(String::as_str),
            Some("spec.nodeName=node-a"),
            "{request:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn after_410_gone_the_pods_are_relisted_without_one_deleted_meanwhile() {
    let fake = FakeApi::new();
    fake.insert("pods", pod("default", "web", NODE));
    fake.insert("pods", pod("default", "db", NODE));
    let (mut updates, _mirrors) = start(&fake);
    assert_eq!(names(&next_set(&mut updates).await), ["db", "web"]);
    let watches = |fake: &FakeApi| {
        let requests = fake.requests();
        let watching = |r: &&crate::cluster::fake_api::Recorded| r.query.contains_key("watch");
        requests.iter().filter(watching).count()
    };
    fake.until("the watch", |fake| watches(fake) == 1).await;

    // The watch ends; while it is down a pod goes and the history is compacted, so the
    // watch resumed from the listed resourceVersion gets 410 Gone. No DELETED is ever sent.
    fake.close_watches();
    fake.remove("pods", "default", "db");
    fake.compact();

    assert_eq!(names(&next_set(&mut updates).await), ["web"]);
    let lists = fake
        .requests()
        .iter()
        .filter(|r| r.is("GET", "/api/v1/pods") && !r.query.contains_key("watch"))
        .count();
    assert_eq!(lists, 2, "listed again after 410 Gone");
    assert!(
        watches(&fake) >= 2,
        "watched again from the old resourceVersion"
    );
}

#[tokio::test(start_paused = true)]
async fn after_a_bookmark_a_compaction_costs_no_relist() {
    let fake = FakeApi::new();
    fake.insert("pods", pod("default", "web", NODE));
    let (mut updates, _mirrors) = start(&fake);
    assert_eq!(names(&next_set(&mut updates).await), ["web"]);
    fake.until("the watch", |f| f.requests().len() == 2).await;

    // Other nodes' pods move the resourceVersion on; a bookmark tells the watch.
    fake.insert("pods", pod("default", "db", "node-b"));
    fake.send_bookmarks();
    tokio::time::sleep(Duration::from_millis(1)).await;
    fake.compact();
    fake.close_watches();
    fake.insert("pods", pod("default", "api", NODE));

    match next(&mut updates).await {
        PodUpdate::Apply(pod) => assert_eq!(pod.metadata.name.as_deref(), Some("api")),
        other => panic!("expected the new pod from the resumed watch, got {other:?}"),
    }
    let watch = |r: &&crate::cluster::fake_api::Recorded| r.query.contains_key("watch");
    let requests = fake.requests();
    assert_eq!(
        requests.iter().filter(|r| !watch(r)).count(),
        1,
        "listed once"
    );
    assert_eq!(requests.iter().filter(watch).count(), 2);
}

/// A sidecar (an init container with `restartPolicy: Always`, Kubernetes 1.28) reaches the
/// pod source whole. The 1.20 API server of the end-to-end tests drops the field it does not
/// know, so only the fake can show this.
#[tokio::test(start_paused = true)]
async fn an_init_containers_restart_policy_always_arrives_intact() {
    let fake = FakeApi::new();
    let mut sidecar = pod("default", "web", NODE);
    sidecar["spec"]["initContainers"] = json!([
        {"name": "proxy", "image": "busybox", "restartPolicy": "Always"},
    ]);
    fake.insert("pods", sidecar);
    let (mut updates, _mirrors) = start(&fake);

    let listed = next_set(&mut updates).await;
    let init = listed[0]
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .expect("init containers");
    assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
}

#[tokio::test(start_paused = true)]
async fn mirror_pods_go_to_the_mirrors_not_to_the_pods_to_run() {
    let fake = FakeApi::new();
    let mut mirror = pod("kube-system", "etcd-node-a", NODE);
    mirror["metadata"]["annotations"] = json!({CONFIG_MIRROR_ANNOTATION: "hash"});
    fake.insert("pods", mirror);
    fake.insert("pods", pod("default", "web", NODE));
    let (mut updates, mirrors) = start(&fake);

    assert_eq!(names(&next_set(&mut updates).await), ["web"]);
    assert_eq!(names(&mirrors.list()), ["etcd-node-a"]);
    fake.remove("pods", "kube-system", "etcd-node-a");
    fake.insert("pods", pod("default", "db", NODE));
    assert!(matches!(next(&mut updates).await, PodUpdate::Apply(_)));
    assert!(
        mirrors.is_empty(),
        "the deleted mirror is gone from the mirrors"
    );
}
