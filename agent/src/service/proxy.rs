//! The service proxy: kube-proxy's loop. Services and EndpointSlices from the object store
//! (the manifest directory's Services; its slices and those bosun computes for static pods)
//! are compiled into the datapath's desired state and written to the pinned maps by netdp's
//! reconciler, both off the daemon's executor. A failed write is retried with backoff; a
//! Service the datapath cannot serve (SCTP, a bad IP) is reported once as a Warning event
//! naming the field, and every other Service goes on. Each sync is timed, and each change
//! timed from when the proxy takes it to when it is written, under kube-proxy's metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bosun_netdp::service::{self as datapath, Compiled, DesiredService, PinnedMaps, Reconciler};
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::Resource;

use crate::events::{EventType, Recorder};
use crate::metrics;
use crate::service::endpoints;
use crate::store::{Changes, ObjectKey, PodStore, Source, Store};
use crate::util::{error_chain, sleep_or_never};

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
    pub services: Store<Service>,
    pub endpoint_slices: Store<EndpointSlice>,
    /// The pods with their status: the first write waits for them (see [`Proxy::run`]).
    pub pods: PodStore,
    pub events: Recorder,
}

impl Proxy {
    /// Runs until the task is dropped. The programs and maps stay when it ends: connections
    /// keep being balanced while bosun is down.
    ///
    /// **The first write waits until the pods are known.** After a restart the maps still hold
    /// what the last bosun wrote and keep serving it; writing before the Services and slices
    /// are all read, before every pod's worker has reported its status, or before the
    /// readiness probes of the Services' pods have run again would take endpoints out that
    /// are in fact fine (kube-proxy likewise waits for its first full sync). So the first
    /// write comes once every selected running pod is Ready again, or after [`SETTLE`] at
    /// the latest.
    pub async fn run(self) {
        let mut changes = [
            self.services.subscribe(),
            self.endpoint_slices.subscribe(),
            self.pods.subscribe(),
        ];
        let mut reconciler: Option<Reconciler<PinnedMaps>> = None;
        let mut applied: Option<Vec<DesiredService>> = None;
        let mut reported: BTreeSet<String> = BTreeSet::new();
        let mut backoff = Duration::from_millis(500);
        let started = Instant::now();
        let mut unprogrammed = Unprogrammed::default();
        loop {
            let mut retry = None;
            if applied.is_none() && !self.settled() && started.elapsed() < SETTLE {
                retry = Some(SETTLE_POLL);
            } else {
                let began = Instant::now();
                let compiled = self.compile().await;
                self.report(&mut reported, &compiled);
                let mut programmed = true;
                if applied.as_ref() != Some(&compiled.services) {
                    let (desired, written) = self.write(&mut reconciler, compiled.services).await;
                    match written {
                        Ok(()) => {
                            metrics::global().set_service_datapath(
                                desired.len(),
                                desired.iter().map(|s| s.backends.len()).sum(),
                            );
                            applied = Some(desired);
                            backoff = Duration::from_millis(500);
                        }
                        Err(message) => {
                            programmed = false;
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
                metrics::global().observe_proxy_sync(began.elapsed());
                if programmed {
                    for took in unprogrammed.programmed(Instant::now()) {
                        metrics::global().observe_network_programming(took);
                    }
                }
            }
            // Once written, pods matter only through the EndpointSlices.
            let watched = if applied.is_some() { 2 } else { 3 };
            let [services, slices, pods] = &mut changes;
            tokio::select! {
                () = services.ready() => {}
                () = slices.ready() => {}
                () = pods.ready(), if watched == 3 => {}
                () = sleep_or_never(retry) => {}
            }
            // Whatever changed while another woke the loop is taken too: the next compile
            // reads the stores whole.
            let now = Instant::now();
            let (services, slices) = (services.take(), slices.take());
            pods.take();
            // What the first write after a start carries is the state found then, not a
            // change (kube-proxy likewise leaves out changes from before it started).
            if applied.is_some() {
                unprogrammed.taken("Service", services, now);
                unprogrammed.taken("EndpointSlice", slices, now);
            }
        }
    }

    /// Whether every object is read and every selected running pod is Ready again.
    fn settled(&self) -> bool {
        self.services.is_synced()
            && self.endpoint_slices.is_synced()
            && self.pods.is_synced()
            && pods_settled(&self.served(), &self.pods.list())
    }

    /// The Services balanced here: the manifest directory's only. The API server's
    /// EndpointSlices are not watched yet, so an API Service would be programmed without
    /// backends and refuse connections that another node's proxy would serve; the store
    /// holds the API's Services for the pods' environment alone. This ends when the
    /// EndpointSlices come from the API server too.
    fn served(&self) -> Vec<std::sync::Arc<Service>> {
        self.services.list_of(Source::File)
    }

    /// Compiles the store's Services and EndpointSlices on a blocking thread.
    async fn compile(&self) -> Compiled {
        let services = self.served();
        let slices = self.endpoint_slices.list();
        let node = self.node.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            datapath::compile(
                services.iter().map(|s| &**s),
                slices.iter().map(|s| &**s),
                &node,
            )
        })
        .await;
        compiled.unwrap_or_else(|e| {
            tracing::error!(error = %e, "compiling the Services");
            Compiled::default()
        })
    }

    /// Reports each problem once, as a Warning event on its object.
    fn report(&self, reported: &mut BTreeSet<String>, compiled: &Compiled) {
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

/// Whether every running pod that a Service selects is Ready.
fn pods_settled<S: AsRef<Service>, P: AsRef<Pod>>(services: &[S], pods: &[P]) -> bool {
    pods.iter()
        .map(AsRef::as_ref)
        .filter(|pod| {
            services
                .iter()
                .any(|service| selects(service.as_ref(), pod))
        })
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

/// The Services and EndpointSlices changed since the maps were last written, each with when
/// the proxy took its change from the store: kube-proxy's network programming duration runs
/// from there to the write that carries it.
#[derive(Debug, Default)]
struct Unprogrammed {
    since: BTreeMap<(&'static str, ObjectKey), Instant>,
}

impl Unprogrammed {
    /// Notes the objects of `kind` that `changes` names, taken at `now`. An object still
    /// waiting keeps the time of its first change.
    fn taken(&mut self, kind: &'static str, changes: Changes, now: Instant) {
        for key in changes.keys {
            self.since.entry((kind, key)).or_insert(now);
        }
    }

    /// How long each object waited, now that the maps hold them all; forgets them.
    fn programmed(&mut self, now: Instant) -> Vec<Duration> {
        std::mem::take(&mut self.since)
            .into_values()
            .map(|since| now.duration_since(since))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    use std::sync::Arc;

    use super::*;

    fn pod(name: &str, labels: &[(&str, &str)], phase: &str, ready: bool) -> Arc<Pod> {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default",
                         "labels": labels.iter().copied().collect::<std::collections::BTreeMap<_, _>>()},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        }))
        .expect("a pod");
        pod.status = Some(PodStatus {
            phase: Some(phase.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        Arc::new(pod)
    }

    #[test]
    fn a_change_is_timed_from_its_first_taking_to_the_write() {
        let changes = |names: &[&str]| Changes {
            keys: names
                .iter()
                .map(|name| ObjectKey::new("default", *name))
                .collect(),
            synced: false,
        };
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut unprogrammed = Unprogrammed::default();
        unprogrammed.taken("Service", changes(&["web", "db"]), at(0));
        unprogrammed.taken("Service", changes(&["web"]), at(1));
        unprogrammed.taken("EndpointSlice", changes(&["web"]), at(2));
        unprogrammed.taken("EndpointSlice", changes(&[]), at(3));
        let mut waited = unprogrammed.programmed(at(5));
        waited.sort();
        assert_eq!(
            waited,
            [3, 5, 5].map(Duration::from_secs),
            "the EndpointSlice web since 2 s; the Services db and web since 0 s"
        );
        assert!(unprogrammed.programmed(at(6)).is_empty(), "each once");
    }

    #[test]
    fn pods_settle_once_selected_running_pods_are_ready() {
        let services: Vec<Arc<Service>> = vec![Arc::new(
            serde_yaml::from_str(
                "metadata: {name: web, namespace: default}\nspec:\n  clusterIP: 10.96.0.1\n  selector: {app: web}\n  ports: [{port: 80}]\n",
            )
            .expect("a Service"),
        )];
        let web = [("app", "web")];
        // A selected pod running but not Ready again yet (its probes have not run).
        let pods = [
            pod("web", &web, "Running", false),
            pod("job", &[], "Running", true),
        ];
        assert!(!pods_settled(&services, &pods));
        // Readiness of pods no Service selects does not matter, nor that of pods not running.
        let pods = [
            pod("web", &web, "Running", true),
            pod("job", &[], "Running", false),
        ];
        assert!(pods_settled(&services, &pods));
        let pods = [
            pod("web", &web, "Pending", false),
            pod("job", &[], "Running", false),
        ];
        assert!(pods_settled(&services, &pods));
    }
}
