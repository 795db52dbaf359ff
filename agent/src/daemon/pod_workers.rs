//! Pod workers (kubelet's `pod_workers.go`): one task per pod UID that brings the runtime to
//! the pod's spec, hands the status it computed to the status manager, and, once the pod is
//! no longer wanted, terminates it within its grace period and ends. The daemon tells a
//! worker what is wanted and wakes it; a worker reaches nothing else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{watch, Notify};

use super::eviction::{Eviction, REASON as EVICTED};
use super::status_manager::StatusManager;
use crate::events::Recorder;
use crate::metrics::{self, PodSyncType};
use crate::pod::spec::NodeContext;
pub use crate::pod::worker::ERROR_BACKOFF;
use crate::pod::worker::{grace_period, PodWorker};
use crate::policy::PolicyEnforcer;
use crate::runtime::Runtime;
use crate::store::{ObjectGetter, ObjectKey};

/// kubelet's default `syncFrequency`: how often a worker syncs when nothing wakes it, plus
/// up to half again (kubelet's jitter), so that pods started together spread out. Exit
/// events, the relist, probe results and changes of the objects a pod refers to wake it at
/// once; this is the safety net.
pub const SYNC_FREQUENCY: Duration = Duration::from_secs(60);

/// `period` plus a random part of up to half of it, as kubelet's `wait.Jitter(period, 0.5)`.
fn jittered(period: Duration) -> Duration {
    period.mul_f64(1.0 + rand::random::<f64>() * 0.5)
}

/// What every pod worker shares.
pub struct Shared<R> {
    pub runtime: R,
    pub ctx: Arc<NodeContext>,
    pub events: Recorder,
    pub objects: Arc<dyn ObjectGetter>,
    pub status: StatusManager,
    /// Enforces NetworkPolicy on pods' interfaces, if configured.
    pub policy: Option<Arc<PolicyEnforcer>>,
    /// Told the UID of a worker that has terminated its pod and ended.
    pub done: UnboundedSender<String>,
    /// `syncFrequency`: [`SYNC_FREQUENCY`] unless configured.
    pub sync_frequency: Duration,
}

struct WorkerHandle {
    desired: watch::Sender<Option<Arc<Pod>>>,
    /// Set once the eviction manager evicts the pod: the worker stops it and keeps it
    /// Failed.
    eviction: watch::Sender<Option<Arc<Eviction>>>,
    kick: Arc<Notify>,
    /// Bumped for each change the PLEG sees in the pod's sandboxes and containers.
    runtime_changes: Arc<AtomicU64>,
}

/// The workers, by pod UID.
pub struct PodWorkers<R> {
    shared: Shared<R>,
    workers: HashMap<String, WorkerHandle>,
}

impl<R: Runtime> PodWorkers<R> {
    pub fn new(shared: Shared<R>) -> Self {
        PodWorkers {
            shared,
            workers: HashMap::new(),
        }
    }

    /// Tells the worker of `uid` that `pod` is wanted (`None`: no longer), starting one if
    /// there is none. A pod that is not wanted and has no worker needs nothing.
    pub fn update(&mut self, uid: &str, pod: Option<Arc<Pod>>) {
        match self.workers.get(uid) {
            Some(handle) => {
                handle.desired.send_if_modified(|held| {
                    // A pod marked for deletion that its worker has not seen yet stays: the
                    // worker terminates it within the deletion's grace period and ends, as
                    // for `None`, where `None` would have it use the pod's own grace period
                    // (a forced deletion marks the pod, then removes it, in one go).
                    let marked = held
                        .as_ref()
                        .is_some_and(|p| p.metadata.deletion_timestamp.is_some());
                    if pod.is_none() && marked {
                        return false;
                    }
                    *held = pod;
                    true
                });
            }
            None if pod.is_some() => {
                let handle = self.spawn(uid.to_owned(), pod);
                self.workers.insert(uid.to_owned(), handle);
            }
            None => {}
        }
    }

    /// Evicts the pod of `uid`: its worker stops it and reports it Failed with the
    /// eviction's message; it is no longer admitted. Nothing happens without a worker.
    pub fn evict(&self, uid: &str, eviction: Eviction) {
        if let Some(handle) = self.workers.get(uid) {
            handle.eviction.send_replace(Some(Arc::new(eviction)));
        }
    }

    /// Starts a worker that terminates a pod the runtime holds but no source wants.
    pub fn terminate_orphan(&mut self, uid: &str) {
        if !self.workers.contains_key(uid) {
            tracing::info!(%uid, "terminating a pod no source wants");
            let handle = self.spawn(uid.to_owned(), None);
            self.workers.insert(uid.to_owned(), handle);
        }
    }

    /// Wakes the worker of `uid`, if there is one.
    pub fn kick(&self, uid: &str) {
        if let Some(handle) = self.workers.get(uid) {
            handle.kick.notify_one();
        }
    }

    /// Tells the worker of `uid` that its pod changed in the runtime, and wakes it: its next
    /// sync reads the runtime again.
    pub fn runtime_changed(&self, uid: &str) {
        if let Some(handle) = self.workers.get(uid) {
            handle.runtime_changes.fetch_add(1, Ordering::Release);
            handle.kick.notify_one();
        }
    }

    /// Forgets the worker of `uid`, which has ended.
    pub fn done(&mut self, uid: &str) {
        self.workers.remove(uid);
    }

    pub fn contains(&self, uid: &str) -> bool {
        self.workers.contains_key(uid)
    }

    /// The pods admitted and neither being terminated nor evicted.
    pub fn admitted(&self) -> Vec<Arc<Pod>> {
        self.workers
            .values()
            .filter(|h| h.eviction.borrow().is_none())
            .filter_map(|h| h.desired.borrow().clone())
            .filter(|pod| pod.metadata.deletion_timestamp.is_none())
            .collect()
    }

    fn spawn(&self, uid: String, pod: Option<Arc<Pod>>) -> WorkerHandle {
        let shared = &self.shared;
        let (desired, mut rx) = watch::channel(pod);
        let (eviction, mut evictions) = watch::channel::<Option<Arc<Eviction>>>(None);
        let kick = Arc::new(Notify::new());
        let runtime_changes = Arc::new(AtomicU64::new(0));
        let mut worker = PodWorker::new(
            shared.runtime.clone(),
            shared.ctx.clone(),
            uid.clone(),
            shared.events.clone(),
            kick.clone(),
            shared.objects.clone(),
        )
        .with_policy(shared.policy.clone())
        .with_runtime_changes(runtime_changes.clone())
        .with_status_sink({
            let status = shared.status.clone();
            Arc::new(
                move |pod: &Pod, computed: &k8s_openapi::api::core::v1::PodStatus| {
                    status.set_status(pod, Some(computed.clone()));
                },
            )
        });
        let policy = shared.policy.clone();
        let status = shared.status.clone();
        let done = shared.done.clone();
        let sync_frequency = shared.sync_frequency;
        let wake = kick.clone();
        tokio::spawn(async move {
            let mut last: Option<Arc<Pod>> = None;
            // Whether the eviction asked for has been carried out.
            let mut evicted = false;
            loop {
                let mut wanted = rx.borrow_and_update().clone();
                // A pod deleted in the API server is terminated within its deletion grace
                // period, then forgotten.
                if let Some(deleted) =
                    wanted.take_if(|pod| pod.metadata.deletion_timestamp.is_some())
                {
                    last = Some(deleted);
                }
                let evict = evictions.borrow_and_update().clone();
                let requeue = match (&wanted, evict) {
                    (Some(pod), Some(eviction)) => {
                        last = Some(pod.clone());
                        if evicted {
                            // Terminal: the status stays what the eviction made it.
                            status.set_status(pod, worker.status().cloned());
                            Duration::MAX
                        } else {
                            let condition =
                                eviction.disruption_target.then(|| eviction.condition());
                            match Box::pin(worker.evict(
                                pod,
                                eviction.grace_period,
                                EVICTED,
                                &eviction.message,
                                condition,
                            ))
                            .await
                            {
                                Ok(()) => {
                                    evicted = true;
                                    status.set_status(pod, worker.status().cloned());
                                    Duration::MAX
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "evicting pod");
                                    jittered(ERROR_BACKOFF)
                                }
                            }
                        }
                    }
                    (Some(pod), None) => {
                        let operation = match &last {
                            None => PodSyncType::Create,
                            Some(previous) if !Arc::ptr_eq(previous, pod) => PodSyncType::Update,
                            Some(_) => PodSyncType::Sync,
                        };
                        last = Some(pod.clone());
                        let began = tokio::time::Instant::now();
                        // Boxed, here and below: the task lives as long as the pod, and
                        // these futures are large (tens of KiB) but alive only while
                        // they run.
                        let result = Box::pin(worker.sync(pod)).await;
                        metrics::global().observe_pod_sync(operation, began.elapsed());
                        status.set_status(pod, worker.status().cloned());
                        match result {
                            Ok(requeue) => {
                                let resync = jittered(sync_frequency);
                                requeue.unwrap_or(resync).min(resync)
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "syncing pod");
                                jittered(ERROR_BACKOFF)
                            }
                        }
                    }
                    (None, _) => {
                        let key = last.as_deref().map(|pod| ObjectKey::of(&pod.metadata));
                        if let Some(key) = &key {
                            status.terminating(key);
                        }
                        let grace = last
                            .as_deref()
                            .map_or(Duration::from_secs(30), grace_period);
                        match Box::pin(worker.terminate(last.as_deref(), grace)).await {
                            Ok(()) => {
                                if let Some(key) = &key {
                                    status.remove(key);
                                }
                                if let Some(policy) = &policy {
                                    Box::pin(policy.release(&uid)).await;
                                }
                                let _ = done.send(uid);
                                return;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "terminating pod");
                                jittered(ERROR_BACKOFF)
                            }
                        }
                    }
                };
                if requeue.is_zero() {
                    continue;
                }
                let sleep = async {
                    if requeue == Duration::MAX {
                        std::future::pending::<()>().await;
                    }
                    tokio::time::sleep(requeue).await;
                };
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    changed = evictions.changed() => if changed.is_err() { return },
                    () = wake.notified() => {}
                    () = sleep => {}
                }
            }
        });
        WorkerHandle {
            desired,
            eviction,
            kick,
            runtime_changes,
        }
    }
}
