//! `bosun run`: the node daemon. Desired pods come from the manifest directory; one worker
//! per pod UID brings the runtime to them; containerd's task-exit events wake the worker of
//! a pod whose container died, and a periodic resync is the safety net. The pods' status is
//! served on a local unix socket.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use bosun_cri::{ContainerdClient, CriClient, CRI_NAMESPACE};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use tokio::sync::{watch, Notify};

use crate::api::ApiState;
use crate::events::{reason, EventType, Recorder};
use crate::pod::observed::{keys, pod_digests};
use crate::pod::spec::NodeContext;
use crate::pod::volume::{self, HostMounter};
use crate::pod::worker::{grace_period, pod_name, Objects, PodWorker};
use crate::policy::{PolicyEnforcer, PolicyView};
use crate::runtime::Runtime;
use crate::service::proxy::{Proxy, ServiceStore};
use crate::source;

/// How often a worker syncs when nothing wakes it. Exit events, the relist and probe
/// results wake it at once; this only refreshes what nothing announces (configMap
/// contents, status times).
pub const RESYNC: Duration = Duration::from_secs(10);
/// How often the daemon lists every sandbox and container (kubelet's PLEG relist): a
/// pod whose containers changed without an event gets its worker woken, and pods no
/// manifest wants are found.
const RELIST: Duration = Duration::from_secs(1);
/// How often the manifest directory is rescanned besides inotify (kubelet's default).
const RESCAN: Duration = Duration::from_secs(20);

/// The daemon's configuration (from flags and the config file).
#[derive(Clone, Debug)]
pub struct Config {
    pub manifest_dir: PathBuf,
    pub runtime_endpoint: String,
    pub root_dir: PathBuf,
    pub node: NodeContext,
    /// `maxPods`: pods beyond this many are rejected (phase Failed, reason OutOfpods).
    pub max_pods: usize,
    /// The bpffs directory of the service and policy datapaths; `None` runs neither.
    pub bpf_dir: Option<PathBuf>,
    /// Balance Services (with a `bpf_dir`).
    pub service_proxy: bool,
    /// Enforce NetworkPolicy on pods' interfaces (with a `bpf_dir`).
    pub network_policy: bool,
}

impl Config {
    /// The local API socket.
    pub fn api_socket(&self) -> PathBuf {
        api_socket(&self.root_dir)
    }
}

pub fn api_socket(root_dir: &Path) -> PathBuf {
    root_dir.join("bosun.sock")
}

/// The pods as the workers last saw them, by `namespace/name`: spec and status.
pub type PodStore = Arc<RwLock<BTreeMap<String, Pod>>>;

struct WorkerHandle {
    desired: watch::Sender<Option<Arc<Pod>>>,
    kick: Arc<Notify>,
}

/// Runs the daemon until `shutdown` resolves. Pods keep running when it returns: a
/// restarted bosun adopts them.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    std::fs::create_dir_all(&config.root_dir)
        .with_context(|| format!("creating the root directory {}", config.root_dir.display()))?;
    let client = connect_with_retry(&config.runtime_endpoint).await?;
    let store: PodStore = Arc::default();
    let events = Recorder::new(config.node.node_name.clone());
    let services = ServiceStore::default();
    let policies = Arc::new(RwLock::new(PolicyView::default()));
    let api = crate::api::serve_with(
        &config.api_socket(),
        ApiState {
            pods: store.clone(),
            events: events.clone(),
            services: services.clone(),
            policies: policies.clone(),
        },
    )?;

    let (mut snapshots, _watcher) = source::watch(
        config.manifest_dir.clone(),
        config.node.node_name.clone(),
        RESCAN,
    );
    let ctx = Arc::new(config.node.clone());
    let mut workers: HashMap<String, WorkerHandle> = HashMap::new();
    let (objects_tx, objects) = watch::channel(Arc::new(Objects::new()));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let pods_changed = Arc::new(Notify::new());
    let policy_pods_changed = Arc::new(Notify::new());
    let enforcer = config
        .bpf_dir
        .as_ref()
        .filter(|_| config.network_policy)
        .map(|bpf_dir| {
            PolicyEnforcer::new(
                bpf_dir.clone(),
                &config.root_dir,
                store.clone(),
                events.clone(),
                snapshots.clone(),
                policies.clone(),
            )
        });
    let policy_controller = enforcer
        .clone()
        .map(|enforcer| tokio::spawn(enforcer.run(policy_pods_changed.clone())));
    let proxy = config
        .bpf_dir
        .as_ref()
        .filter(|_| config.service_proxy)
        .map(|bpf_dir| {
            tokio::spawn(
                Proxy {
                    bpf_dir: bpf_dir.clone(),
                    node: config.node.node_name.clone(),
                    snapshots: snapshots.clone(),
                    pods: store.clone(),
                    pods_changed: pods_changed.clone(),
                    view: services.clone(),
                    events: events.clone(),
                }
                .run(),
            )
        });
    let shared = Shared {
        runtime: client.clone(),
        ctx: ctx.clone(),
        events: events.clone(),
        objects,
        store: store.clone(),
        pods_changed: [pods_changed, policy_pods_changed],
        policy: enforcer,
        done: done_tx,
    };

    let (exit_tx, mut exit_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let (kick_tx, mut kick_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let socket = bosun_cri::socket_path(&config.runtime_endpoint)?;
    tokio::spawn(watch_exits(socket, exit_tx));

    let mut relist = tokio::time::interval(RELIST);
    relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut digests: HashMap<String, u64> = HashMap::new();
    let mut pod_dirs_swept = false;
    // Pods refused at admission, by UID, with their key in the store.
    let mut rejected: HashMap<String, String> = HashMap::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            changed = snapshots.changed() => {
                if changed.is_err() {
                    anyhow::bail!("the manifest source stopped");
                }
                let snapshot = snapshots.borrow_and_update().clone();
                let objects_changed = objects_tx.send_if_modified(|current| {
                    let changed = **current != snapshot.objects;
                    if changed {
                        *current = Arc::new(snapshot.objects.clone());
                    }
                    changed
                });
                if objects_changed {
                    // configMap and secret volumes follow their objects at once.
                    for handle in workers.values() {
                        handle.kick.notify_one();
                    }
                }
                for error in &snapshot.errors {
                    events.record(events.node_reference(), EventType::Warning, reason::FAILED_VALIDATION, error.to_string());
                }
                let desired: HashMap<String, Arc<Pod>> = snapshot
                    .pods
                    .values()
                    .filter_map(|p| Some((p.pod.metadata.uid.clone()?, Arc::new(p.pod.clone()))))
                    .collect();
                for (uid, handle) in &workers {
                    if !desired.contains_key(uid) {
                        handle.desired.send_replace(None);
                    }
                }
                rejected.retain(|uid, key| {
                    let wanted = desired.contains_key(uid);
                    if !wanted {
                        if let Ok(mut pods) = store.write() {
                            pods.remove(key);
                        }
                    }
                    wanted
                });
                let mut new = Vec::new();
                for (uid, pod) in desired {
                    match workers.get(&uid) {
                        Some(handle) => {
                            handle.desired.send_replace(Some(pod));
                        }
                        None if !rejected.contains_key(&uid) => new.push((uid, pod)),
                        None => {}
                    }
                }
                // Admission, in a stable order: pods beyond maxPods are rejected, as kubelet
                // rejects them, and stay rejected while their manifest is unchanged.
                new.sort_by_key(|(_, pod)| pod_name(pod));
                for (uid, pod) in new {
                    let active = workers.values().filter(|h| h.desired.borrow().is_some()).count();
                    if active >= config.max_pods {
                        let key = reject_out_of_pods(&store, &events, &pod, active, config.max_pods);
                        rejected.insert(uid, key);
                        continue;
                    }
                    let handle = spawn_worker(&shared, uid.clone(), Some(pod));
                    workers.insert(uid, handle);
                }
                release_freed_memory();
            }
            Some(container_id) = exit_rx.recv() => {
                tracing::debug!(%container_id, "container exited");
                tokio::spawn(pod_of_exited(client.clone(), container_id, kick_tx.clone()));
            }
            Some(uid) = kick_rx.recv() => {
                if let Some(handle) = workers.get(&uid) {
                    handle.kick.notify_one();
                }
            }
            Some(uid) = done_rx.recv() => {
                workers.remove(&uid);
            }
            _ = relist.tick() => {
                let listed = tokio::try_join!(client.list_pod_sandbox(None), client.list_containers(None));
                match listed {
                    Ok((sandboxes, containers)) => {
                        let now = pod_digests(&sandboxes, &containers);
                        for (uid, digest) in &now {
                            if let Some(handle) = workers.get(uid) {
                                if digests.get(uid) != Some(digest) {
                                    handle.kick.notify_one();
                                }
                            } else if snapshots.borrow().scanned() {
                                // Only once the manifests were read can a pod be unwanted.
                                tracing::info!(%uid, "terminating a pod no manifest wants");
                                let handle = spawn_worker(&shared, uid.clone(), None);
                                workers.insert(uid.clone(), handle);
                            }
                        }
                        if !pod_dirs_swept && snapshots.borrow().scanned() {
                            // Directories of pods that went away while bosun was down.
                            pod_dirs_swept = true;
                            let left = volume::pod_uids(&ctx.pods_dir).unwrap_or_default();
                            for uid in left.iter().filter(|u| !workers.contains_key(*u) && !now.contains_key(*u)) {
                                if let Err(e) = volume::cleanup(&ctx.pods_dir, uid, &HostMounter) {
                                    tracing::warn!(%uid, error = %e, "removing a gone pod's directory");
                                }
                            }
                        }
                        digests = now;
                    }
                    Err(e) => tracing::warn!(error = %e, "relisting the runtime's pods"),
                }
            }
        }
    }
    api.abort();
    if let Some(proxy) = proxy {
        proxy.abort();
    }
    if let Some(controller) = policy_controller {
        controller.abort();
    }
    let _ = std::fs::remove_file(config.api_socket());
    Ok(())
}

/// Records a pod refused because the node runs `maxPods` pods already: phase Failed with
/// kubelet's reason and message, in the store and as an event. Returns its store key.
fn reject_out_of_pods(
    store: &PodStore,
    events: &Recorder,
    pod: &Pod,
    used: usize,
    capacity: usize,
) -> String {
    let message = format!(
        "Pod was rejected: Node didn't have enough resource: pods, requested: 1, used: {used}, capacity: {capacity}"
    );
    events.warning(pod, "OutOfpods", message.clone());
    let mut rejected = pod.clone();
    rejected.status = Some(PodStatus {
        phase: Some("Failed".to_owned()),
        reason: Some("OutOfpods".to_owned()),
        message: Some(message),
        ..Default::default()
    });
    let key = pod_name(pod);
    if let Ok(mut pods) = store.write() {
        pods.insert(key.clone(), rejected);
    }
    key
}

/// Connects to the runtime, waiting for it to come up as kubelet does.
async fn connect_with_retry(endpoint: &str) -> Result<CriClient> {
    let mut delay = Duration::from_millis(100);
    loop {
        match CriClient::connect(endpoint, Duration::from_secs(10)).await {
            Ok(client) => return Ok(client),
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "waiting for the container runtime");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e).context("connecting to the container runtime"),
        }
    }
}

/// Sends the pod UID of a container whose task exited, once CRI reports it exited too:
/// containerd's CRI plugin learns of the exit from the same event, a moment later, and a
/// worker woken before that would see the container still running.
async fn pod_of_exited(
    client: CriClient,
    container_id: String,
    kick: tokio::sync::mpsc::UnboundedSender<String>,
) {
    const SETTLE: Duration = Duration::from_millis(5);
    for _ in 0..400 {
        match client.container_status(&container_id, false).await {
            Ok(r) => {
                let Some(status) = r.status else { return };
                if status.state != bosun_cri::api::ContainerState::ContainerRunning as i32 {
                    if let Some(uid) = status.labels.get(keys::POD_UID) {
                        let _ = kick.send(uid.clone());
                    }
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(%container_id, error = %e, "status of an exited container");
                return;
            }
        }
        tokio::time::sleep(SETTLE).await;
    }
}

/// Forwards the IDs of containers whose task exited, resubscribing when the stream ends.
async fn watch_exits(socket: PathBuf, tx: tokio::sync::mpsc::UnboundedSender<String>) {
    loop {
        let subscribed = async {
            let containerd = ContainerdClient::connect(&socket).await?;
            containerd.task_exits(Some(CRI_NAMESPACE)).await
        }
        .await;
        match subscribed {
            Ok(exits) => {
                let mut exits = Box::pin(exits);
                while let Some(exit) = exits.next().await {
                    match exit {
                        Ok(exit) if exit.id == exit.container_id => {
                            if tx.send(exit.container_id).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "containerd event stream");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "subscribing to containerd's task exits"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What every pod worker shares.
struct Shared<R> {
    runtime: R,
    ctx: Arc<NodeContext>,
    events: Recorder,
    objects: watch::Receiver<Arc<Objects>>,
    store: PodStore,
    /// Notified when a pod's IP, readiness or termination changed: Services and
    /// NetworkPolicy peers follow it (one each: a `Notify` wakes one waiter).
    pods_changed: [Arc<Notify>; 2],
    /// Enforces NetworkPolicy on pods' interfaces, if configured.
    policy: Option<Arc<PolicyEnforcer>>,
    /// Told the UID of a worker that has terminated its pod and ended.
    done: tokio::sync::mpsc::UnboundedSender<String>,
}

fn spawn_worker<R: Runtime>(
    shared: &Shared<R>,
    uid: String,
    pod: Option<Arc<Pod>>,
) -> WorkerHandle {
    let (desired, mut rx) = watch::channel(pod);
    let kick = Arc::new(Notify::new());
    let mut worker = PodWorker::new(
        shared.runtime.clone(),
        shared.ctx.clone(),
        uid.clone(),
        shared.events.clone(),
        kick.clone(),
        shared.objects.clone(),
    )
    .with_policy(shared.policy.clone());
    let policy = shared.policy.clone();
    let store = shared.store.clone();
    let pods_changed = shared.pods_changed.clone();
    let done = shared.done.clone();
    let wake = kick.clone();
    tokio::spawn(async move {
        let mut last: Option<Arc<Pod>> = None;
        loop {
            let wanted = rx.borrow_and_update().clone();
            let requeue = match &wanted {
                Some(pod) => {
                    last = Some(pod.clone());
                    let result = worker.sync(pod).await;
                    let key = pod_name(pod);
                    let mut with_status = (**pod).clone();
                    with_status.status = worker.status().cloned();
                    let facts = endpoint_facts(&with_status);
                    let before = store
                        .write()
                        .ok()
                        .and_then(|mut pods| pods.insert(key, with_status));
                    if before.as_ref().map(endpoint_facts) != Some(facts) {
                        notify_all(&pods_changed);
                    }
                    match result {
                        Ok(requeue) => requeue.unwrap_or(RESYNC).min(RESYNC),
                        Err(e) => {
                            tracing::warn!(error = %e, "syncing pod");
                            RESYNC
                        }
                    }
                }
                None => {
                    if let (Some(pod), Ok(mut pods)) = (&last, store.write()) {
                        // Terminating, as an API server marks a deleted pod: its endpoints
                        // stop taking new connections.
                        if let Some(held) = pods.get_mut(&pod_name(pod)) {
                            if held.metadata.deletion_timestamp.is_none() {
                                held.metadata.deletion_timestamp =
                                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                                        crate::events::now(),
                                    ));
                                notify_all(&pods_changed);
                            }
                        }
                    }
                    let grace = last
                        .as_deref()
                        .map_or(Duration::from_secs(30), grace_period);
                    match worker.terminate(last.as_deref(), grace).await {
                        Ok(()) => {
                            if let (Some(pod), Ok(mut pods)) = (&last, store.write()) {
                                pods.remove(&pod_name(pod));
                            }
                            if let Some(policy) = &policy {
                                policy.release(&uid).await;
                            }
                            notify_all(&pods_changed);
                            let _ = done.send(uid);
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "terminating pod");
                            RESYNC
                        }
                    }
                }
            };
            if requeue.is_zero() {
                continue;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                () = wake.notified() => {}
                () = tokio::time::sleep(requeue) => {}
            }
        }
    });
    WorkerHandle { desired, kick }
}

fn notify_all(notifies: &[Arc<Notify>]) {
    for notify in notifies {
        notify.notify_one();
    }
}

/// What of a pod its Services' endpoints depend on: IPs, phase, readiness, termination.
fn endpoint_facts(pod: &Pod) -> (Option<String>, Option<String>, Option<String>, bool) {
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone());
    (
        status.and_then(|s| s.pod_ip.clone()),
        status.and_then(|s| s.phase.clone()),
        ready,
        pod.metadata.deletion_timestamp.is_some(),
    )
}

/// Hands memory freed since to the kernel. Reading a large manifest directory allocates
/// hundreds of megabytes for a moment (the YAML, its documents, their decoded copies); glibc
/// keeps what was freed in its arenas, so without this the daemon's RSS would stay at that
/// peak. Called after rare, large events only: it walks every arena.
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only gives whole free pages of glibc's heaps back to the kernel; it
    // touches no memory in use and is thread-safe (it takes each arena's lock in turn).
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
