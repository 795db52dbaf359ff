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
use crate::service::endpoints::slices_for_pods;

/// The Services and EndpointSlices the proxy last compiled, for the local API.
#[derive(Clone, Debug, Default)]
pub struct ServiceView {
    pub services: Vec<Service>,
    /// Those from manifests and those bosun computed from static pods.
    pub endpoint_slices: Vec<EndpointSlice>,
}

pub type ServiceStore = Arc<RwLock<ServiceView>>;

/// Event reason for a Service (or EndpointSlice) the datapath cannot serve as written.
pub const INVALID_SERVICE: &str = "FailedToProgramService";
/// Event reason for a datapath that could not be installed or written.
pub const DATAPATH_FAILED: &str = "FailedServiceProxy";

/// Longest wait between two attempts at a failing install or write.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the proxy task needs.
pub struct Proxy {
    /// The bpffs directory holding bosun's pinned maps and links.
    pub bpf_dir: PathBuf,
    pub node: String,
    pub objects: watch::Receiver<Arc<Objects>>,
    pub pods: PodStore,
    /// Notified when a pod's IP, readiness or termination changed.
    pub pods_changed: Arc<Notify>,
    pub view: ServiceStore,
    pub events: Recorder,
}

impl Proxy {
    /// Runs until the task is dropped. The programs and maps stay when it ends: connections
    /// keep being balanced while bosun is down.
    pub async fn run(mut self) {
        let mut reconciler: Option<Reconciler<PinnedMaps>> = None;
        let mut applied: Option<Vec<DesiredService>> = None;
        let mut reported: BTreeSet<String> = BTreeSet::new();
        let mut backoff = Duration::from_millis(500);
        loop {
            let desired = self.compile(&mut reported);
            let mut retry = None;
            if applied.as_ref() != Some(&desired) {
                match self.write(&mut reconciler, &desired).await {
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
            tokio::select! {
                changed = self.objects.changed() => if changed.is_err() { return },
                () = self.pods_changed.notified() => {}
                () = sleep_or_never(retry) => {}
            }
        }
    }

    /// The datapath's desired state now, publishing what it came from for the API.
    fn compile(&mut self, reported: &mut BTreeSet<String>) -> Vec<DesiredService> {
        let objects = self.objects.borrow_and_update().clone();
        let services: Vec<Service> = decode_all(&objects);
        let mut slices: Vec<EndpointSlice> = decode_all(&objects);
        let pods: Vec<Pod> = match self.pods.read() {
            Ok(pods) => pods.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        slices.extend(slices_for_pods(&services, &pods, &self.node));
        let compiled = datapath::compile(&services, &slices, &self.node);
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
                services,
                endpoint_slices: slices,
            };
        }
        compiled.services
    }

    /// Installs the datapath if it is not yet, then writes `desired` to its maps.
    async fn write(
        &self,
        reconciler: &mut Option<Reconciler<PinnedMaps>>,
        desired: &[DesiredService],
    ) -> Result<(), String> {
        let mut current = match reconciler.take() {
            Some(current) => current,
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
                Reconciler::new(maps)
            }
        };
        let desired = desired.to_vec();
        let started = Instant::now();
        let (current, result) = tokio::task::spawn_blocking(move || {
            let result = current.apply(&desired);
            (current, result)
        })
        .await
        .map_err(|e| format!("writing the service maps: {e}"))?;
        *reconciler = Some(current);
        let applied =
            result.map_err(|e| format!("writing the service maps: {}", error_chain(&e)))?;
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
        Ok(())
    }
}

/// Every object of kind `T` among `objects`. They passed a strict decode when read, so a
/// failure here is a bug, logged and skipped.
fn decode_all<T: Resource + DeserializeOwned>(objects: &Objects) -> Vec<T> {
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

fn error_chain(error: &dyn std::error::Error) -> String {
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
