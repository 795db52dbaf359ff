//! The service proxy: kube-proxy's loop. Services and EndpointSlices from the manifest
//! directory, plus EndpointSlices computed from the static pods' IPs and readiness, are compiled
//! into the datapath's desired state and written to the pinned maps by netdp's reconciler.
//! A failed write is retried with backoff; a Service the datapath cannot serve (SCTP, a bad
//! IP) is reported once as a Warning event naming the field, and every other Service goes on.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bosun_netdp::service::{self as datapath, DesiredService, PinnedMaps, Reconciler};
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::Resource;
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};

use crate::daemon::PodStore;
use crate::events::{EventType, Recorder};
use crate::pod::worker::Objects;
use crate::service::endpoints::{self, slices_for_pods};
use crate::source::Snapshot;

/// The Services and EndpointSlices the proxy last compiled, for the local API.
#[derive(Clone, Debug, Default)]
pub struct ServiceView {
    pub services: Arc<Vec<Service>>,
    /// EndpointSlices from the manifests.
    pub manifest_slices: Arc<Vec<EndpointSlice>>,
    /// EndpointSlices bosun computed from static pods.
    pub pod_slices: Vec<EndpointSlice>,
}

impl ServiceView {
    /// Every EndpointSlice: those from the manifests, then those of static pods.
    pub fn endpoint_slices(&self) -> impl Iterator<Item = &EndpointSlice> {
        self.manifest_slices.iter().chain(&self.pod_slices)
    }
}

/// The Services and EndpointSlices of one manifest snapshot, decoded once: pods change far
/// more often than manifests, and each change recompiles.
struct Decoded {
    snapshot: Arc<Snapshot>,
    services: Arc<Vec<Service>>,
    slices: Arc<Vec<EndpointSlice>>,
}

pub type ServiceStore = Arc<RwLock<ServiceView>>;

/// Event reason for a Service (or EndpointSlice) the datapath cannot serve as written.
pub const INVALID_SERVICE: &str = "FailedToProgramService";
/// Event reason for a datapath that could not be installed or written.
pub const DATAPATH_FAILED: &str = "FailedServiceProxy";

/// The longest the first write waits for the pods to settle after a start.
pub const SETTLE: Duration = Duration::from_secs(10);
/// How often the first write checks whether they have.
const SETTLE_POLL: Duration = Duration::from_millis(50);

/// Longest wait between two attempts at a failing install or write.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the proxy task needs.
pub struct Proxy {
    /// The bpffs directory holding bosun's pinned maps and links.
    pub bpf_dir: PathBuf,
    pub node: String,
    /// The manifest directory: Services and EndpointSlices among its objects, and which pods
    /// it wants (see [`Proxy::run`] on the first write).
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub pods: PodStore,
    /// Notified when a pod's IP, readiness or termination changed.
    pub pods_changed: Arc<Notify>,
    pub view: ServiceStore,
    pub events: Recorder,
}

impl Proxy {
    /// Runs until the task is dropped. The programs and maps stay when it ends: connections
    /// keep being balanced while bosun is down.
    ///
    /// **The first write waits until the pods are known.** After a restart the maps still hold
    /// what the last bosun wrote and keep serving it; writing before the manifests are read,
    /// before every pod's worker has reported its status, or before the readiness probes of the
    /// Services' pods have run again would take endpoints out that are in fact fine (kube-proxy
    /// likewise waits for its first full sync). So the first write comes once every selected
    /// running pod is Ready again, or after [`SETTLE`] at the latest.
    pub async fn run(mut self) {
        let mut decoded: Option<Decoded> = None;
        let mut reconciler: Option<Reconciler<PinnedMaps>> = None;
        let mut applied: Option<Vec<DesiredService>> = None;
        let mut reported: BTreeSet<String> = BTreeSet::new();
        let mut backoff = Duration::from_millis(500);
        let started = Instant::now();
        loop {
            let decoded_anew = self.decode(&mut decoded);
            let (desired, settled) = self.compile(&mut reported, &decoded);
            let mut retry = None;
            if applied.is_none() && !settled && started.elapsed() < SETTLE {
                retry = Some(SETTLE_POLL);
            } else if applied.as_ref() != Some(&desired) {
                let (desired, written) = self.write(&mut reconciler, desired).await;
                match written {
                    Ok(()) => {
                        applied = Some(desired);
                        backoff = Duration::from_millis(500);
                    }
                    Err(message) => {
                        tracing::warn!(%message, "service proxy");
                        self.events.record(
                            self.events.node_reference(),
                            EventType::Warning,
                            DATAPATH_FAILED,
                            message,
                        );
                        retry = Some(backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            if decoded_anew {
                // Decoding a large manifest directory leaves much freed memory behind.
                crate::daemon::release_freed_memory();
            }
            tokio::select! {
                changed = self.snapshots.changed() => if changed.is_err() { return },
                () = self.pods_changed.notified() => {}
                () = sleep_or_never(retry) => {}
            }
        }
    }

    /// Decodes the Services and EndpointSlices of the newest manifest snapshot, unless they
    /// are those of the snapshot decoded last. Returns whether it decoded.
    fn decode(&mut self, decoded: &mut Option<Decoded>) -> bool {
        let snapshot = self.snapshots.borrow_and_update().clone();
        if decoded
            .as_ref()
            .is_some_and(|d| Arc::ptr_eq(&d.snapshot, &snapshot))
        {
            return false;
        }
        *decoded = Some(Decoded {
            services: Arc::new(decode_all(&snapshot.objects)),
            slices: Arc::new(decode_all(&snapshot.objects)),
            snapshot,
        });
        true
    }

    /// The datapath's desired state now, publishing what it came from for the API, and
    /// whether the pods it was computed from have settled (see [`Proxy::run`]).
    fn compile(
        &self,
        reported: &mut BTreeSet<String>,
        decoded: &Option<Decoded>,
    ) -> (Vec<DesiredService>, bool) {
        let Some(Decoded {
            snapshot,
            services,
            slices,
        }) = decoded
        else {
            return (Vec::new(), false);
        };
        let pods: Vec<Pod> = match self.pods.read() {
            Ok(pods) => pods.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        let settled = snapshot.scanned() && pods_settled(snapshot, services, &pods);
        let pod_slices = slices_for_pods(services, &pods, &self.node);
        let compiled = datapath::compile(services, slices.iter().chain(&pod_slices), &self.node);
        for problem in &compiled.problems {
            let text = problem.to_string();
            if reported.insert(text.clone()) {
                tracing::warn!(problem = %text, "service not programmed as written");
                let involved = ObjectReference {
                    api_version: Some(if problem.kind == "Service" {
                        Service::API_VERSION.into()
                    } else {
                        EndpointSlice::API_VERSION.into()
                    }),
                    kind: Some(problem.kind.into()),
                    namespace: Some(problem.namespace.clone()),
                    name: Some(problem.name.clone()),
                    ..Default::default()
                };
                let message = format!(
                    "{}: {:?}: {}",
                    problem.field, problem.value, problem.message
                );
                self.events
                    .record(involved, EventType::Warning, INVALID_SERVICE, message);
            }
        }
        if let Ok(mut view) = self.view.write() {
            *view = ServiceView {
                services: services.clone(),
                manifest_slices: slices.clone(),
                pod_slices,
            };
        }
        (compiled.services, settled)
    }

    /// Installs the datapath if it is not yet, then writes `desired` to its maps. `desired`
    /// moves to the writing thread and comes back with the outcome, so it is never copied.
    async fn write(
        &self,
        reconciler: &mut Option<Reconciler<PinnedMaps>>,
        desired: Vec<DesiredService>,
    ) -> (Vec<DesiredService>, Result<(), String>) {
        match self.install_if_needed(reconciler.take()).await {
            Ok(current) => self.apply(reconciler, current, desired).await,
            Err(message) => (desired, Err(message)),
        }
    }

    /// The reconciler, installing the datapath first if there is none yet.
    async fn install_if_needed(
        &self,
        reconciler: Option<Reconciler<PinnedMaps>>,
    ) -> Result<Reconciler<PinnedMaps>, String> {
        match reconciler {
            Some(current) => Ok(current),
            None => {
                let bpf_dir = self.bpf_dir.clone();
                let installed = tokio::task::spawn_blocking(move || {
                    let cgroup = datapath::find_cgroup2()?;
                    datapath::install(&bpf_dir, &cgroup)
                })
                .await
                .map_err(|e| format!("installing the service datapath: {e}"))?;
                let maps = installed.map_err(|e| {
                    format!(
                        "installing the service datapath in {}: {}",
                        self.bpf_dir.display(),
                        error_chain(&e)
                    )
                })?;
                tracing::info!(bpf_dir = %self.bpf_dir.display(), "service datapath installed");
                Ok(Reconciler::new(maps))
            }
        }
    }

    /// Writes `desired` through `current` on a blocking thread; puts `current` back in
    /// `reconciler` unless the thread died, in which case the next write installs again.
    async fn apply(
        &self,
        reconciler: &mut Option<Reconciler<PinnedMaps>>,
        mut current: Reconciler<PinnedMaps>,
        desired: Vec<DesiredService>,
    ) -> (Vec<DesiredService>, Result<(), String>) {
        let started = Instant::now();
        let joined = tokio::task::spawn_blocking(move || {
            let result = current.apply(&desired);
            (current, desired, result)
        })
        .await;
        let (current, desired, result) = match joined {
            Ok(done) => done,
            Err(e) => return (Vec::new(), Err(format!("writing the service maps: {e}"))),
        };
        *reconciler = Some(current);
        let applied = match result {
            Ok(applied) => applied,
            Err(e) => {
                let message = format!("writing the service maps: {}", error_chain(&e));
                return (desired, Err(message));
            }
        };
        if !applied.is_empty() {
            tracing::info!(
                added = applied.added,
                updated = applied.updated,
                removed = applied.removed,
                backends_added = applied.backends_added,
                backends_removed = applied.backends_removed,
                took_us = started.elapsed().as_micros() as u64,
                "service maps written"
            );
        }
        (desired, Ok(()))
    }
}

/// Whether every pod the manifests want has reported a status, and every running pod that a
/// Service selects is Ready.
fn pods_settled(snapshot: &Snapshot, services: &[Service], pods: &[Pod]) -> bool {
    let known: BTreeSet<&str> = pods
        .iter()
        .filter(|p| p.status.is_some())
        .filter_map(|p| p.metadata.name.as_deref())
        .collect();
    let all_reported = snapshot.pods.values().all(|wanted| {
        wanted
            .pod
            .metadata
            .name
            .as_deref()
            .is_some_and(|name| known.contains(name))
    });
    all_reported
        && pods
            .iter()
            .filter(|pod| services.iter().any(|service| selects(service, pod)))
            .all(|pod| {
                let status = pod.status.as_ref();
                let running = status.and_then(|s| s.phase.as_deref()) == Some("Running");
                let ready = status
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                !running || ready
            })
}

/// Whether `service`'s selector (non-empty) matches `pod` in the same namespace.
fn selects(service: &Service, pod: &Pod) -> bool {
    let namespace = |ns: &Option<String>| ns.clone().unwrap_or_else(|| "default".into());
    service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|selector| {
            !selector.is_empty()
                && namespace(&service.metadata.namespace) == namespace(&pod.metadata.namespace)
                && endpoints::selects(selector, pod)
        })
}

/// Every object of kind `T` among `objects`. They passed a strict decode when read, so a
/// failure here is a bug, logged and skipped.
pub(crate) fn decode_all<T: Resource + DeserializeOwned>(objects: &Objects) -> Vec<T> {
    objects
        .iter()
        .filter(|((kind, _, _), _)| kind == T::KIND)
        .filter_map(|((kind, namespace, name), value)| {
            serde_json::from_value(value.clone())
                .inspect_err(|e| tracing::error!(%kind, %namespace, %name, error = %e, "decoding"))
                .ok()
        })
        .collect()
}

pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

async fn sleep_or_never(duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    use super::*;

    fn snapshot_of(manifests: &str) -> Snapshot {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(dir.path().join("pods.yaml"), manifests).expect("write the manifests");
        crate::source::scan(dir.path(), "n1")
    }

    const MANIFESTS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: {app: web}}\nspec:\n  containers: [{name: c, image: busybox}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: job}\nspec:\n  containers: [{name: c, image: busybox}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 10.96.0.1\n  selector: {app: web}\n  ports: [{port: 80}]\n";

    /// The pods of `snapshot` as their workers would store them: `phase` and Ready for each.
    fn stored(snapshot: &Snapshot, status: &[(&str, &str, bool)]) -> Vec<Pod> {
        status
            .iter()
            .map(|(name, phase, ready)| {
                let mut pod = snapshot.pods[&format!("default/{name}-n1")].pod.clone();
                pod.status = Some(PodStatus {
                    phase: Some((*phase).into()),
                    conditions: Some(vec![PodCondition {
                        type_: "Ready".into(),
                        status: if *ready { "True" } else { "False" }.into(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                });
                pod
            })
            .collect()
    }

    #[test]
    fn pods_settle_once_every_pod_reported_and_selected_running_pods_are_ready() {
        let snapshot = snapshot_of(MANIFESTS);
        let services: Vec<Service> = decode_all(&snapshot.objects);
        assert_eq!(services.len(), 1);

        // A worker that has not reported yet.
        let pods = stored(&snapshot, &[("web", "Running", true)]);
        assert!(!pods_settled(&snapshot, &services, &pods));
        // A selected pod running but not Ready again yet (its probes have not run).
        let pods = stored(
            &snapshot,
            &[("web", "Running", false), ("job", "Running", true)],
        );
        assert!(!pods_settled(&snapshot, &services, &pods));
        // Readiness of pods no Service selects does not matter, nor that of pods not running.
        let pods = stored(
            &snapshot,
            &[("web", "Running", true), ("job", "Running", false)],
        );
        assert!(pods_settled(&snapshot, &services, &pods));
        let pods = stored(
            &snapshot,
            &[("web", "Pending", false), ("job", "Running", false)],
        );
        assert!(pods_settled(&snapshot, &services, &pods));
    }
}
