//! The status writer against the in-process fake API server.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
use serde_json::json;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::task::JoinHandle;

use super::run;
use crate::cluster::fake_api::{pod, FakeApi};
use crate::daemon::status_manager::StatusManager;
use crate::source::{CONFIG_SOURCE_ANNOTATION, CONFIG_SOURCE_API};
use crate::store::{ObjectKey, PodStore, Source, Writer};

const STATUS: &str = "/api/v1/namespaces/default/pods/web/status";
const POD: &str = "/api/v1/namespaces/default/pods/web";

/// The fake holds `default/web` with UID `uid`.
fn fake_with_web(uid: &str) -> FakeApi {
    let fake = FakeApi::new();
    let mut web = pod("default", "web", "node-a");
    web["metadata"]["uid"] = json!(uid);
    web["status"] = json!({"phase": "Pending"});
    fake.insert("pods", web);
    fake
}

/// `default/web` of UID `uid` as the API source delivered it, with `status`.
fn web(uid: &str, status: Option<PodStatus>) -> Pod {
    let mut web = pod("default", "web", "node-a");
    web["metadata"]["uid"] = json!(uid);
    web["metadata"]["annotations"] = json!({CONFIG_SOURCE_ANNOTATION: CONFIG_SOURCE_API});
    let mut web: Pod = serde_json::from_value(web).expect("a pod");
    web.status = status;
    web
}

fn status(phase: &str, ready: bool) -> PodStatus {
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..PodCondition::default()
        }]),
        ..PodStatus::default()
    }
}

fn key() -> ObjectKey {
    ObjectKey::new("default", "web")
}

/// A status writer following `pods`: the sender of finished pods, and its task.
fn start(
    fake: &FakeApi,
    pods: &PodStore,
) -> (UnboundedSender<(ObjectKey, String)>, JoinHandle<()>) {
    let (finished, received) = unbounded_channel();
    let task = tokio::spawn(run(fake.client(), pods.clone(), received));
    (finished, task)
}

fn pod_store() -> (PodStore, Writer<Pod>) {
    let pods = PodStore::default();
    let writer = pods.writer(Source::Local);
    (pods, writer)
}

fn count(fake: &FakeApi, method: &str, path: &str) -> usize {
    fake.requests()
        .iter()
        .filter(|r| r.is(method, path))
        .count()
}

/// The status of the first condition the API holds for `web` (its Ready, in these tests).
fn ready_written(fake: &FakeApi) -> String {
    let written: Pod = fake.object("pods", "default", "web").expect("the pod");
    let conditions = written
        .status
        .and_then(|s| s.conditions)
        .expect("conditions");
    conditions[0].status.clone()
}

fn phase(fake: &FakeApi) -> Option<String> {
    let web: Pod = fake.object("pods", "default", "web")?;
    web.status?.phase
}

#[tokio::test(start_paused = true)]
async fn the_status_is_patched_only_when_it_changed_with_the_pods_uid() {
    let fake = fake_with_web("uid-1");
    let (pods, writer) = pod_store();
    writer.apply(Arc::new(web("uid-1", Some(status("Running", false)))));
    let (_finished, _task) = start(&fake, &pods);
    fake.until("the status", |f| f.succeeded("PATCH", STATUS) == 1)
        .await;
    let patch = fake
        .requests()
        .into_iter()
        .find(|r| r.is("PATCH", STATUS))
        .expect("the patch");
    assert_eq!(patch.body["metadata"]["uid"], "uid-1");
    assert_eq!(phase(&fake).as_deref(), Some("Running"));

    // The same status again, by another copy or a bare wake-up, is not written.
    writer.apply(Arc::new(web("uid-1", Some(status("Running", false)))));
    pods.touch(&key());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(count(&fake, "PATCH", STATUS), 1);

    writer.apply(Arc::new(web("uid-1", Some(status("Running", true)))));
    fake.until("the new status", |f| f.succeeded("PATCH", STATUS) == 2)
        .await;
    assert_eq!(ready_written(&fake), "True");
    assert_eq!(count(&fake, "PATCH", POD), 0, "only the status subresource");
}

#[tokio::test(start_paused = true)]
async fn a_pod_replaced_under_the_same_name_is_not_written() {
    let fake = fake_with_web("uid-new");
    let (pods, writer) = pod_store();
    writer.apply(Arc::new(web("uid-old", Some(status("Running", true)))));
    let (_finished, _task) = start(&fake, &pods);
    fake.until("the patch", |f| count(f, "PATCH", STATUS) == 1)
        .await;
    assert_eq!(
        fake.requests()[0].code,
        409,
        "the UID in the patch fails it"
    );
    // No error: nothing of ours to write, so it is not tried again.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(count(&fake, "PATCH", STATUS), 1);
    assert_eq!(phase(&fake).as_deref(), Some("Pending"));
}

#[tokio::test(start_paused = true)]
async fn a_finished_pod_is_deleted_at_once_with_its_uid_as_precondition() {
    let fake = fake_with_web("uid-1");
    let mut db = pod("default", "db", "node-a");
    db["metadata"]["uid"] = json!("uid-db-2");
    fake.insert("pods", db);
    // Being deleted gracefully: kubelet's part is to end it once its containers are gone.
    let api: kube::Api<Pod> = kube::Api::namespaced(fake.client(), "default");
    api.delete("web", &Default::default())
        .await
        .expect("marked");
    let marked: Pod = fake.object("pods", "default", "web").expect("still there");
    assert!(marked.metadata.deletion_timestamp.is_some());

    let (pods, _writer) = pod_store();
    let (finished, _task) = start(&fake, &pods);
    fake.fail_next(1, 500);
    finished.send((key(), "uid-1".into())).expect("sent");
    // `db` was deleted and created again since this node ran it.
    finished
        .send((ObjectKey::new("default", "db"), "uid-db-1".into()))
        .expect("sent");
    fake.until("the deletion", |f| {
        f.get("pods", "default", "web").is_none()
    })
    .await;
    let deletion = fake
        .requests()
        .into_iter()
        .rfind(|r| r.is("DELETE", POD))
        .expect("the deletion");
    assert_eq!(deletion.body["gracePeriodSeconds"], 0);
    assert_eq!(deletion.body["preconditions"]["uid"], "uid-1");
    // Less the mark above.
    let ours = count(&fake, "DELETE", POD) - 1;
    assert_eq!(ours, 2, "tried again after a 500");

    tokio::time::sleep(Duration::from_secs(60)).await;
    let db = "/api/v1/namespaces/default/pods/db";
    assert_eq!(count(&fake, "DELETE", db), 1, "a conflict is not retried");
    assert!(
        fake.get("pods", "default", "db").is_some(),
        "the new db stays"
    );
}

/// The daemon's status manager in front of the writer, as in the daemon: a pod worker's
/// late report of Running after the pod Failed must not reach the API server. The pod the
/// worker holds is the one the watch delivered before the Failed status was written.
#[tokio::test(start_paused = true)]
async fn a_terminal_phase_is_never_written_back_to_running() {
    let fake = fake_with_web("uid-1");
    let (manager, pods) = StatusManager::new();
    let (_finished, _task) = start(&fake, &pods);
    let delivered = web("uid-1", Some(status("Pending", false)));

    manager.set_status(&delivered, Some(status("Failed", false)));
    fake.until("Failed", |f| phase(f).as_deref() == Some("Failed"))
        .await;
    manager.set_status(&delivered, Some(status("Running", true)));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(phase(&fake).as_deref(), Some("Failed"));
}

#[tokio::test(start_paused = true)]
async fn status_writes_resume_with_the_latest_status_once_the_api_server_is_back() {
    let fake = fake_with_web("uid-1");
    fake.set_unreachable(true);
    let (pods, writer) = pod_store();
    let (_finished, task) = start(&fake, &pods);
    writer.apply(Arc::new(web("uid-1", Some(status("Running", false)))));
    tokio::time::sleep(Duration::from_secs(10)).await;
    writer.apply(Arc::new(web("uid-1", Some(status("Running", true)))));
    tokio::time::sleep(Duration::from_secs(120)).await;
    let tries = count(&fake, "PATCH", STATUS);
    assert!(tries > 3, "tried again while away: {tries}");
    assert!(tries < 20, "with backoff: {tries}");

    fake.set_unreachable(false);
    fake.until("the status", |f| f.succeeded("PATCH", STATUS) == 1)
        .await;
    assert_eq!(ready_written(&fake), "True", "the latest status");
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(count(&fake, "PATCH", STATUS), tries + 1, "written once");
    assert!(!task.is_finished(), "the writer goes on");
}
