//! The worker's reuse of what it read from the runtime (kubelet's pod cache), against an
//! in-memory runtime that holds one pod, its sandbox ready and its container running, and
//! counts the calls made to it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bosun_cri::{api, CriError};
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::Notify;

use super::observed::keys;
use super::spec::{self, NodeContext, NodeResources};
use super::worker::PodWorker;
use crate::events::Recorder;
use crate::runtime::Runtime;
use crate::store::{Objects, Source};

const UID: &str = "0b5e5c4e-cache-test";
const SANDBOX: &str = "sandbox-1";
const CONTAINER: &str = "container-1";

fn pod() -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "default", "uid": UID},
        "spec": {"containers": [{"name": "app", "image": "localhost/app:1"}]},
    }))
    .expect("a valid pod")
}

/// One pod in the runtime: its sandbox, ready, and its container, running until `exited`.
#[derive(Clone, Default)]
struct OnePod {
    calls: Arc<Mutex<HashMap<&'static str, usize>>>,
    exited: Arc<Mutex<bool>>,
    hash: String,
}

impl OnePod {
    fn new(pod: &Pod) -> Self {
        let app = &pod.spec.as_ref().expect("spec").containers[0];
        OnePod {
            hash: spec::container_hash(app),
            ..OnePod::default()
        }
    }

    fn count(&self, call: &'static str) -> usize {
        self.calls
            .lock()
            .expect("calls")
            .get(call)
            .copied()
            .unwrap_or(0)
    }

    fn called(&self, call: &'static str) {
        *self.calls.lock().expect("calls").entry(call).or_default() += 1;
    }

    fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (keys::POD_UID.to_owned(), UID.to_owned()),
            (keys::POD_NAME.to_owned(), "web".to_owned()),
            (keys::POD_NAMESPACE.to_owned(), "default".to_owned()),
            (
                keys::MANAGED_BY.to_owned(),
                keys::MANAGED_BY_VALUE.to_owned(),
            ),
        ])
    }

    fn state(&self) -> api::ContainerState {
        if *self.exited.lock().expect("state") {
            api::ContainerState::ContainerExited
        } else {
            api::ContainerState::ContainerRunning
        }
    }
}

fn refused<T>(call: &'static str) -> Result<T, CriError> {
    Err(CriError::Unimplemented { call })
}

const SECOND: i64 = 1_000_000_000;

impl Runtime for OnePod {
    async fn run_pod_sandbox(&self, _: api::PodSandboxConfig) -> Result<String, CriError> {
        self.called("RunPodSandbox");
        refused("RunPodSandbox")
    }
    async fn stop_pod_sandbox(&self, _: &str) -> Result<(), CriError> {
        self.called("StopPodSandbox");
        refused("StopPodSandbox")
    }
    async fn remove_pod_sandbox(&self, _: &str) -> Result<(), CriError> {
        self.called("RemovePodSandbox");
        refused("RemovePodSandbox")
    }
    async fn pod_sandbox_status(&self, _: &str) -> Result<Option<api::PodSandboxStatus>, CriError> {
        self.called("PodSandboxStatus");
        Ok(Some(api::PodSandboxStatus {
            id: SANDBOX.into(),
            state: api::PodSandboxState::SandboxReady as i32,
            network: Some(api::PodSandboxNetworkStatus {
                ip: "10.244.9.2".into(),
                ..Default::default()
            }),
            labels: self.labels(),
            ..Default::default()
        }))
    }
    async fn pod_sandbox_netns(&self, _: &str) -> Result<Option<PathBuf>, CriError> {
        Ok(None)
    }
    async fn list_pod_sandbox(
        &self,
        _: HashMap<String, String>,
    ) -> Result<Vec<api::PodSandbox>, CriError> {
        self.called("ListPodSandbox");
        Ok(vec![api::PodSandbox {
            id: SANDBOX.into(),
            metadata: Some(api::PodSandboxMetadata {
                name: "web".into(),
                uid: UID.into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            state: api::PodSandboxState::SandboxReady as i32,
            created_at: 1_000 * SECOND,
            labels: self.labels(),
            ..Default::default()
        }])
    }
    async fn create_container(
        &self,
        _: &str,
        _: api::ContainerConfig,
        _: api::PodSandboxConfig,
    ) -> Result<String, CriError> {
        self.called("CreateContainer");
        refused("CreateContainer")
    }
    async fn start_container(&self, _: &str) -> Result<(), CriError> {
        self.called("StartContainer");
        refused("StartContainer")
    }
    async fn stop_container(&self, _: &str, _: Duration) -> Result<(), CriError> {
        self.called("StopContainer");
        refused("StopContainer")
    }
    async fn remove_container(&self, _: &str) -> Result<(), CriError> {
        self.called("RemoveContainer");
        refused("RemoveContainer")
    }
    async fn list_containers(
        &self,
        _: HashMap<String, String>,
    ) -> Result<Vec<api::Container>, CriError> {
        self.called("ListContainers");
        let mut labels = self.labels();
        labels.insert(keys::CONTAINER_NAME.to_owned(), "app".to_owned());
        Ok(vec![api::Container {
            id: CONTAINER.into(),
            pod_sandbox_id: SANDBOX.into(),
            state: self.state() as i32,
            labels,
            ..Default::default()
        }])
    }
    async fn container_status(&self, _: &str) -> Result<Option<api::ContainerStatus>, CriError> {
        self.called("ContainerStatus");
        let mut labels = self.labels();
        labels.insert(keys::CONTAINER_NAME.to_owned(), "app".to_owned());
        let exited = self.state() == api::ContainerState::ContainerExited;
        Ok(Some(api::ContainerStatus {
            id: CONTAINER.into(),
            state: self.state() as i32,
            created_at: 1_001 * SECOND,
            started_at: 1_002 * SECOND,
            finished_at: if exited { 1_003 * SECOND } else { 0 },
            exit_code: i32::from(exited),
            labels,
            annotations: HashMap::from([
                (keys::CONTAINER_HASH.to_owned(), self.hash.clone()),
                (keys::CONTAINER_RESTART_COUNT.to_owned(), "0".to_owned()),
            ]),
            image: Some(api::ImageSpec {
                image: "localhost/app:1".into(),
                ..Default::default()
            }),
            image_ref: "sha256:app".into(),
            ..Default::default()
        }))
    }
    async fn image_status(&self, _: &str) -> Result<Option<api::Image>, CriError> {
        self.called("ImageStatus");
        refused("ImageStatus")
    }
    async fn pull_image(&self, _: &str, _: Option<api::AuthConfig>) -> Result<String, CriError> {
        self.called("PullImage");
        refused("PullImage")
    }
    async fn exec_sync(
        &self,
        _: &str,
        _: Vec<String>,
        _: Duration,
    ) -> Result<api::ExecSyncResponse, CriError> {
        refused("ExecSync")
    }
}

struct Node {
    _root: tempfile::TempDir,
    ctx: Arc<NodeContext>,
}

fn node() -> Node {
    let root = tempfile::tempdir().expect("tempdir");
    let ctx = NodeContext {
        node_name: "node-a".into(),
        pods_dir: root.path().join("pods"),
        pod_logs_dir: root.path().join("logs"),
        node: NodeResources {
            memory_capacity_bytes: 1 << 33,
            allocatable_memory_bytes: 1 << 33,
            ..NodeResources::default()
        },
        ..NodeContext::default()
    };
    std::fs::create_dir(&ctx.pods_dir).expect("the pods directory");
    Node {
        _root: root,
        ctx: Arc::new(ctx),
    }
}

fn worker(runtime: &OnePod, node: &Node) -> PodWorker<OnePod> {
    PodWorker::new(
        runtime.clone(),
        node.ctx.clone(),
        UID.to_owned(),
        Recorder::new("node-a"),
        Arc::new(Notify::new()),
        Arc::new(Objects::new(&[Source::File])),
    )
}

#[tokio::test]
async fn a_sync_reuses_its_reading_until_the_pleg_reports_a_change() {
    let pod = pod();
    let runtime = OnePod::new(&pod);
    let node = node();
    let changes = Arc::new(AtomicU64::new(0));
    let mut worker = worker(&runtime, &node).with_runtime_changes(changes.clone());

    worker.sync(&pod).await.expect("first sync");
    assert_eq!(
        (
            runtime.count("ListPodSandbox"),
            runtime.count("ListContainers")
        ),
        (1, 1)
    );
    assert_eq!(
        runtime.count("ContainerStatus"),
        1,
        "one status per container"
    );
    for call in ["RunPodSandbox", "CreateContainer", "StopContainer"] {
        assert_eq!(runtime.count(call), 0, "{call}: the pod needs nothing done");
    }

    // Nothing changed in the runtime: the syncs that follow call nothing.
    for _ in 0..3 {
        worker.sync(&pod).await.expect("a resync");
    }
    assert_eq!(
        (
            runtime.count("ListPodSandbox"),
            runtime.count("PodSandboxStatus"),
            runtime.count("ListContainers"),
            runtime.count("ContainerStatus")
        ),
        (1, 1, 1, 1)
    );

    // The container exits; the PLEG counts the change, and the next sync reads it.
    *runtime.exited.lock().expect("state") = true;
    changes.fetch_add(1, Ordering::Release);
    worker.sync(&pod).await.expect("a sync after the exit");
    assert_eq!(runtime.count("ListContainers"), 2);
    let status = worker.status().expect("a status");
    let state = status.container_statuses.as_ref().expect("statuses")[0]
        .state
        .as_ref()
        .expect("a state");
    assert_eq!(
        state.terminated.as_ref().map(|t| t.exit_code),
        Some(1),
        "the exit is seen: {state:?}"
    );
    // The restart the plan asks for fails here (the runtime refuses to create containers);
    // a sync that tried to change the runtime does not trust its reading: the next reads
    // again, with no change counted.
    assert!(
        runtime.count("ImageStatus")
            + runtime.count("PullImage")
            + runtime.count("CreateContainer")
            > 0,
        "the restart was tried: {:?}",
        runtime.calls.lock().expect("calls")
    );
    let listed = runtime.count("ListContainers");
    worker.sync(&pod).await.ok();
    assert_eq!(runtime.count("ListContainers"), listed + 1);
}

#[tokio::test]
async fn without_a_pleg_every_sync_reads_the_runtime() {
    let pod = pod();
    let runtime = OnePod::new(&pod);
    let node = node();
    let mut worker = worker(&runtime, &node);
    for _ in 0..3 {
        worker.sync(&pod).await.expect("a sync");
    }
    assert_eq!(
        (
            runtime.count("ListPodSandbox"),
            runtime.count("ListContainers")
        ),
        (3, 3)
    );
}
