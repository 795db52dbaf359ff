//! One pod's worker: observes what the runtime holds for the pod, asks the planner what to
//! do, does it through the [`Runtime`] seam, and computes the pod's status. It keeps only
//! what CRI cannot hold (restart back-off, the last start error, condition times), so a
//! restarted bosun picks up where it left off.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bosun_cri::{api, CriError};
use k8s_openapi::api::core::v1::{Pod, PodStatus};

use super::cgroup::{Cgroups, PodLimits};
use super::observed::{keys, ContainerState, ObservedContainer, ObservedPod, ObservedSandbox};
use super::plan::{self, containers_of, Backoff, ContainerKind, Health, ProbeFailure, Start};
use super::spec::{self, NodeContext, RuntimeFacts};
use super::status::{self, Facts};
use tokio::sync::Notify;

use super::probe::{run_hook, ContainerProbes, ProbeEvent, ProbeKind, Reports, Target};
use super::pull_secrets;
use super::volume::{self, HostMounter, PodVolumes};
use crate::events::{container_reference, reason, EventType, Recorder};
use crate::metrics::{self, ProbeSeries};
use crate::policy::{PolicyEnforcer, FAILED_NETWORK_POLICY};
use crate::runtime::Runtime;
use crate::store::ObjectGetter;

/// The image pull back-off: 10 s doubling to 5 min, as for container restarts.
const PULL_BACKOFF: (Duration, Duration) = (plan::INITIAL_BACKOFF, plan::MAX_BACKOFF);
/// How soon to try again after a sandbox could not be created.
const SANDBOX_RETRY: Duration = Duration::from_secs(2);

/// kubelet's pod worker back-off: how soon a sync that failed (or could not start a
/// container) is tried again (the pod workers add up to half again).
pub const ERROR_BACKOFF: Duration = Duration::from_secs(10);
/// The least time a container gets between SIGTERM and SIGKILL, even when its preStop
/// hook used up the grace period (kubelet's `minimumGracePeriodInSeconds`).
const MIN_GRACE: Duration = Duration::from_secs(2);
/// How long a postStart hook may run. kubelet sets no bound; one is kept here so that a
/// hook that never returns cannot hold the pod's worker for ever.
const POST_START_LIMIT: Duration = Duration::from_secs(300);
/// The waiting reason of a container whose postStart hook failed (kubelet's
/// `ErrPostStartHook`).
const POST_START_HOOK_ERROR: &str = "PostStartHookError";

/// An error while syncing a pod; logged, recorded in the status, and retried.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("pod {pod}: {call}: {source}")]
    Runtime {
        pod: String,
        call: &'static str,
        #[source]
        source: CriError,
    },
}

/// The worker of one pod UID.
pub struct PodWorker<R: Runtime> {
    runtime: R,
    ctx: Arc<NodeContext>,
    uid: String,
    backoff: Backoff,
    pull_backoff: HashMap<String, (SystemTime, Duration)>,
    facts: Facts,
    status: Option<PodStatus>,
    cgroups: Cgroups,
    events: Recorder,
    /// The probers of running containers, by container ID.
    probes: HashMap<String, ContainerProbes>,
    /// Wakes this pod's sync loop; probe results use it.
    wake: Arc<Notify>,
    /// The ConfigMaps and Secrets volumes refer to.
    objects: Arc<dyn ObjectGetter>,
    /// Puts the pod's NetworkPolicy in place before its containers start; `None` where
    /// policy is not enforced.
    policy: Option<Arc<PolicyEnforcer>>,
    /// Told each status as soon as it is computed (the status manager), before the sync acts
    /// on it: a container's exit is reported before the pod's sandbox is stopped or the
    /// container restarted, as kubelet's syncPod sets the status first.
    on_status: Option<StatusSink>,
    /// Counts the changes the PLEG saw in this pod's sandboxes and containers; `None`: no
    /// PLEG feeds this worker, and every sync reads the runtime.
    runtime_changes: Option<Arc<AtomicU64>>,
    /// What the last sync read from the runtime, with the change count read before it, kept
    /// while that sync did nothing to the runtime (kubelet's pod cache): a sync that finds
    /// the count unchanged reuses it instead of four CRI calls or more.
    observed: Option<(u64, Arc<ObservedPod>)>,
    /// How long the pod took to start, for `kubelet_pod_start_duration_seconds`.
    start: PodStart,
}

/// Removes a container's log file and the files rotated from it; a failure is logged.
fn remove_logs(log: &Path) {
    if let Err(e) = std::fs::remove_file(log) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %log.display(), error = %e, "removing a container's log");
        }
    }
    if let Err(e) = super::log_rotation::remove_rotated(log) {
        tracing::warn!(path = %log.display(), error = %e, "removing a container's rotated logs");
    }
}

/// Receives a pod's status as soon as its worker computes it.
pub type StatusSink = Arc<dyn Fn(&Pod, &PodStatus) + Send + Sync>;

impl<R: Runtime> PodWorker<R> {
    pub fn new(
        runtime: R,
        ctx: Arc<NodeContext>,
        uid: String,
        events: Recorder,
        wake: Arc<Notify>,
        objects: Arc<dyn ObjectGetter>,
    ) -> Self {
        PodWorker {
            runtime,
            ctx,
            uid,
            backoff: Backoff::default(),
            pull_backoff: HashMap::new(),
            facts: Facts::default(),
            status: None,
            cgroups: Cgroups::host(),
            events,
            probes: HashMap::new(),
            wake,
            objects,
            policy: None,
            on_status: None,
            runtime_changes: None,
            observed: None,
            start: PodStart::new(),
        }
    }

    /// Reuses what was read from the runtime while `changes` (bumped by the PLEG for each
    /// change it sees in this pod, before it wakes the worker) stands still.
    pub fn with_runtime_changes(mut self, changes: Arc<AtomicU64>) -> Self {
        self.runtime_changes = Some(changes);
        self
    }

    /// Hands each status to `sink` as soon as it is computed.
    pub fn with_status_sink(mut self, sink: StatusSink) -> Self {
        self.on_status = Some(sink);
        self
    }

    /// Enforces NetworkPolicy on the pod's interface from before its first container starts.
    pub fn with_policy(mut self, policy: Option<Arc<PolicyEnforcer>>) -> Self {
        self.policy = policy;
        self
    }

    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// The status computed by the last sync.
    pub fn status(&self) -> Option<&PodStatus> {
        self.status.as_ref()
    }

    /// Where the probes of the pod's container `name` are counted.
    fn probe_series(&self, pod: &Pod, name: &str) -> ProbeSeries {
        metrics::global().probe_series(
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            pod.metadata.name.as_deref().unwrap_or_default(),
            &self.uid,
            name,
        )
    }

    fn labels(&self) -> HashMap<String, String> {
        HashMap::from([(keys::POD_UID.to_owned(), self.uid.clone())])
    }

    fn runtime_error(&self, call: &'static str) -> impl FnOnce(CriError) -> SyncError + '_ {
        move |source| SyncError::Runtime {
            pod: self.uid.clone(),
            call,
            source,
        }
    }

    /// Reads back everything the runtime holds for this pod.
    pub async fn observe(&self) -> Result<ObservedPod, SyncError> {
        let mut observed = ObservedPod::default();
        let mut sandbox_labels = self.labels();
        sandbox_labels.insert(
            keys::MANAGED_BY.to_owned(),
            keys::MANAGED_BY_VALUE.to_owned(),
        );
        let sandboxes = self
            .runtime
            .list_pod_sandbox(sandbox_labels)
            .await
            .map_err(self.runtime_error("ListPodSandbox"))?;
        for s in &sandboxes {
            observed.sandboxes.push(ObservedSandbox {
                id: s.id.clone(),
                attempt: s.metadata.as_ref().map_or(0, |m| m.attempt),
                ready: s.state == api::PodSandboxState::SandboxReady as i32,
                created_at: super::observed::from_nanos(s.created_at)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
                ip: String::new(),
                additional_ips: Vec::new(),
            });
        }
        observed.sort();
        if let Some(newest) = observed.sandboxes.first_mut() {
            let status = self
                .runtime
                .pod_sandbox_status(&newest.id)
                .await
                .map_err(self.runtime_error("PodSandboxStatus"))?;
            let on_node_network = status
                .as_ref()
                .and_then(|s| s.linux.as_ref()?.namespaces.as_ref()?.options.as_ref())
                .is_some_and(|o| o.network == api::NamespaceMode::Node as i32);
            if let Some(network) = status.and_then(|s| s.network) {
                newest.ip = network.ip;
                newest.additional_ips = network.additional_ips.into_iter().map(|i| i.ip).collect();
            }
            // A pod on the node's network has the node's address, as kubelet reports it: its
            // status.podIP, its probes' default host and its downward API all use it.
            if on_node_network && newest.ip.is_empty() {
                newest.ip = self.ctx.host_ip.clone();
            }
        }
        let containers = self
            .runtime
            .list_containers(self.labels())
            .await
            .map_err(self.runtime_error("ListContainers"))?;
        for c in containers {
            let status = self
                .runtime
                .container_status(&c.id)
                .await
                .map_err(self.runtime_error("ContainerStatus"))?;
            let Some(status) = status else { continue };
            if let Some(mut container) = ObservedContainer::from_status(&status, &c.pod_sandbox_id)
            {
                if container.state == ContainerState::Exited {
                    append_termination_message(&mut container, &status);
                }
                observed.containers.push(container);
            }
        }
        observed.sort();
        Ok(observed)
    }

    /// Brings the runtime one step closer to the pod's spec and recomputes its status.
    /// Returns when to sync again at the latest (`Duration::ZERO`: at once, something
    /// changed).
    pub async fn sync(&mut self, pod: &Pod) -> Result<Option<Duration>, SyncError> {
        let now = SystemTime::now();
        if self.facts.start_time.is_none() {
            self.facts.start_time = Some(now);
            self.facts.host_ip = self.ctx.host_ip.clone();
            self.facts.qos_class = spec::qos_class(pod).to_string();
        }
        let changes = self
            .runtime_changes
            .as_ref()
            .map(|c| c.load(Ordering::Acquire));
        let observed = match self.observed.take() {
            Some((seen, observed)) if Some(seen) == changes => observed,
            _ => Arc::new(self.observe().await?),
        };
        self.update_probes(pod, &observed);
        let hashes = containers_of(pod)
            .into_iter()
            .map(|(c, _)| (c.name.clone(), spec::container_hash(c)))
            .collect();
        let plan = plan::plan(
            pod,
            &observed,
            &self.backoff,
            &hashes,
            &self.facts.health,
            now,
        );
        self.facts.waiting = plan.waiting.clone();
        // A sync that leaves the runtime as it found it leaves its reading valid.
        if let (Some(changes), true) = (changes, plan.is_idle()) {
            self.observed = Some((changes, observed.clone()));
        }
        // What was observed is reported before anything is done about it.
        self.publish(pod, &observed, now);
        for (name, waiting) in &plan.waiting {
            if let plan::Waiting::CrashLoopBackOff { .. } = waiting {
                self.events.record(
                    container_reference(pod, name),
                    EventType::Warning,
                    reason::BACK_OFF_START_CONTAINER,
                    format!(
                        "Back-off restarting failed container {name} in pod {}_{}({})",
                        pod.metadata.name.as_deref().unwrap_or(""),
                        pod.metadata.namespace.as_deref().unwrap_or("default"),
                        self.uid
                    ),
                );
            }
        }
        let mut acted = false;
        // Volumes are set up (and configMap contents refreshed) before anything starts; a
        // pod whose volumes cannot be set up starts nothing, and what runs keeps running.
        let volumes = match volume::prepare(pod, &self.ctx, &*self.objects, &HostMounter) {
            Ok(volumes) => Some(volumes),
            Err(e @ volume::VolumeError::ObjectPending { .. }) => {
                tracing::debug!(pod = %pod_name(pod), "{e}");
                None
            }
            Err(e) => {
                self.events.warning(
                    pod,
                    reason::FAILED_MOUNT,
                    format!("MountVolume.SetUp failed: {e}"),
                );
                None
            }
        };
        // Nor does anything start before the containers' environment can have its Service
        // variables (kubelet's `serviceHasSynced`): the pod waits as for a pending volume.
        let services_pending = spec::services_pending(pod, &*self.objects);
        if services_pending {
            tracing::debug!(pod = %pod_name(pod), "waiting for the Services to be listed");
        }
        let volumes = volumes.filter(|_| !services_pending);

        for id in &plan.stop_sandboxes {
            self.runtime
                .stop_pod_sandbox(id)
                .await
                .map_err(self.runtime_error("StopPodSandbox"))?;
            acted = true;
        }
        let grace = grace_period(pod);
        for kill in &plan.kill {
            self.events.record(
                container_reference(pod, &kill.name),
                EventType::Normal,
                reason::KILLING_CONTAINER,
                kill.reason.clone(),
            );
            let grace = kill.grace.unwrap_or(grace);
            self.kill_container(pod, &observed, &kill.name, &kill.id, grace)
                .await?;
            acted = true;
        }
        if plan.finished {
            acted |= self.finish(pod, &observed, grace).await?;
        }
        let Some(volumes) = volumes else {
            self.publish(pod, &observed, now);
            return Ok(Some(SANDBOX_RETRY));
        };
        if let Some(attempt) = plan.create_sandbox {
            match self.create_sandbox(pod, attempt).await {
                Ok(()) => acted = true,
                Err((reason, message)) => {
                    self.events.warning(
                        pod,
                        reason::FAILED_CREATE_POD_SANDBOX,
                        format!("Failed to create pod sandbox: {message}"),
                    );
                    for (c, _) in containers_of(pod) {
                        self.facts
                            .start_errors
                            .insert(c.name.clone(), (reason.clone(), message.clone()));
                    }
                    self.publish(pod, &observed, now);
                    return Ok(Some(SANDBOX_RETRY));
                }
            }
        }
        // No container starts before the pod's policy is enforced on its interface: the
        // sandbox exists and has its address, and nothing in it runs yet. Putting it there
        // waits for the kernel (under a millisecond for clsact filters, some 20 ms for tcx
        // links), so it runs on its own task while the first container is created; only
        // StartContainer waits for it.
        let admission = self.admit_network_policy(pod, &observed);
        let mut admission = if plan.start.is_empty() {
            Admission::from(admission.await)
        } else {
            Admission::Pending(tokio::spawn(admission))
        };
        let mut start_failed = false;
        for start in &plan.start {
            if admission.failed().is_some() {
                break;
            }
            let started = self
                .start(pod, &observed, &volumes, start, now, &mut admission)
                .await;
            acted |= started;
            start_failed |= !started;
        }
        if let Some(message) = admission.failed() {
            if !plan.start.is_empty() {
                self.events.warning(
                    pod,
                    FAILED_NETWORK_POLICY,
                    format!("Network policy not in place, not starting containers: {message}"),
                );
                for start in &plan.start {
                    self.facts.start_errors.insert(
                        start.name.clone(),
                        (FAILED_NETWORK_POLICY.to_owned(), message.to_owned()),
                    );
                }
            }
            self.publish(pod, &observed, now);
            return Ok(Some(SANDBOX_RETRY));
        }
        self.publish(pod, &observed, now);
        let requeue = if acted {
            Some(Duration::ZERO)
        } else if start_failed {
            // As a failed sync in kubelet: tried again after the pod worker's back-off.
            Some(
                plan.requeue_after
                    .map_or(ERROR_BACKOFF, |d| d.min(ERROR_BACKOFF)),
            )
        } else {
            plan.requeue_after
        };
        let pull_wait = self
            .pull_backoff
            .values()
            .filter_map(|(until, _)| until.duration_since(now).ok())
            .min();
        Ok(match (requeue, pull_wait) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Keeps one prober per running container that has probes, for its current instance
    /// only, and reads what they say into the facts the plan and the status use.
    fn update_probes(&mut self, pod: &Pod, observed: &ObservedPod) {
        let pod_ip = observed.sandbox().map(|s| s.ip.clone()).unwrap_or_default();
        let mut wanted = HashMap::new();
        for (c, _) in containers_of(pod) {
            let probed = c.startup_probe.is_some()
                || c.liveness_probe.is_some()
                || c.readiness_probe.is_some();
            let Some(latest) = observed.latest(&c.name) else {
                continue;
            };
            if probed && latest.state == ContainerState::Running {
                wanted.insert(latest.id.clone(), (c, latest));
            }
        }
        self.probes.retain(|id, _| wanted.contains_key(id));
        for (id, (c, latest)) in wanted {
            if self.probes.contains_key(&id) {
                continue;
            }
            let events = self.events.clone();
            let involved = container_reference(pod, &c.name);
            let reports = Reports {
                on_change: self.wake.clone(),
                on_event: move |event: ProbeEvent| {
                    events.record(
                        involved.clone(),
                        EventType::Warning,
                        event.reason(),
                        event.to_string(),
                    );
                },
                metrics: self.probe_series(pod, &c.name),
            };
            let probes = ContainerProbes::resume(
                self.runtime.clone(),
                c,
                Target::new(pod_ip.clone(), id.clone(), c),
                latest.started_at.unwrap_or_else(SystemTime::now),
                previous_health(pod, &id),
                reports,
            );
            self.probes.insert(id, probes);
        }
        self.facts.health = self
            .probes
            .iter()
            .map(|(id, p)| {
                let state = p.state();
                let failed = state.failed.map(|f| ProbeFailure {
                    probe: match f.probe {
                        ProbeKind::Startup => "startup",
                        ProbeKind::Liveness => "liveness",
                        ProbeKind::Readiness => "readiness",
                    },
                    grace: f.grace,
                });
                let health = Health {
                    started: state.started,
                    ready: state.ready,
                    failed,
                };
                (id.clone(), health)
            })
            .collect();
    }

    /// Stops one container as kubelet's `killContainer` does: its preStop hook first, inside
    /// the grace period, then StopContainer with what is left of it (at least
    /// [`MIN_GRACE`]), after which the runtime sends SIGKILL.
    async fn kill_container(
        &self,
        pod: &Pod,
        observed: &ObservedPod,
        name: &str,
        id: &str,
        grace: Duration,
    ) -> Result<(), SyncError> {
        let spec = containers_of(pod)
            .into_iter()
            .map(|(c, _)| c)
            .find(|c| c.name == name);
        let pre_stop = spec.and_then(|c| Some((c, c.lifecycle.as_ref()?.pre_stop.as_ref()?)));
        let mut left = grace;
        if let Some((container, handler)) = pre_stop {
            let began = tokio::time::Instant::now();
            let pod_ip = observed.sandbox().map(|s| s.ip.clone()).unwrap_or_default();
            let target = Target::new(pod_ip, id, container);
            if let Err(e) = run_hook(&self.runtime, handler, &target, grace).await {
                self.events.record(
                    container_reference(pod, name),
                    EventType::Warning,
                    reason::FAILED_PRE_STOP_HOOK,
                    format!("PreStopHook failed: {e}"),
                );
            }
            left = grace.saturating_sub(began.elapsed());
        }
        self.runtime
            .stop_container(id, left.max(MIN_GRACE))
            .await
            .map_err(self.runtime_error("StopContainer"))
    }

    fn publish(&mut self, pod: &Pod, observed: &ObservedPod, now: SystemTime) {
        let status = status::pod_status(pod, observed, &self.facts, self.status.as_ref(), now);
        if let Some(took) = self.start.phase(status.phase.as_deref()) {
            metrics::global().observe_pod_start(took);
        }
        if let Some(sink) = &self.on_status {
            sink(pod, &status);
        }
        self.status = Some(status);
    }

    /// Stops what still runs of a finished pod, and its sandbox.
    async fn finish(
        &self,
        pod: &Pod,
        observed: &ObservedPod,
        grace: Duration,
    ) -> Result<bool, SyncError> {
        let mut acted = false;
        for c in observed
            .containers
            .iter()
            .filter(|c| c.state == ContainerState::Running)
        {
            self.kill_container(pod, observed, &c.name, &c.id, grace)
                .await?;
            acted = true;
        }
        for s in observed.sandboxes.iter().filter(|s| s.ready) {
            self.runtime
                .stop_pod_sandbox(&s.id)
                .await
                .map_err(self.runtime_error("StopPodSandbox"))?;
            acted = true;
        }
        Ok(acted)
    }

    /// Has the enforcer put the pod's policy on the current sandbox's interface (at once if
    /// it already has). Nothing to do for a pod on the node's network, without a ready
    /// sandbox, or where policy is not enforced. A future of its own, which borrows nothing of
    /// the worker, so that it can run while the worker creates a container.
    fn admit_network_policy(
        &self,
        pod: &Pod,
        observed: &ObservedPod,
    ) -> impl Future<Output = Result<(), String>> + Send + 'static {
        let on_pod_network = pod.spec.as_ref().and_then(|s| s.host_network) != Some(true);
        let sandbox = observed.sandbox().filter(|s| s.ready);
        // What the enforcer needs of the pod, taken now: the pod itself stays with the worker.
        let wanted = self
            .policy
            .clone()
            .filter(|_| on_pod_network)
            .zip(sandbox)
            .map(|(policy, sandbox)| {
                let endpoint = sandbox
                    .ip
                    .parse()
                    .map(|ip| crate::policy::endpoint(pod, ip))
                    .map_err(|_| {
                        format!(
                            "sandbox {} has no IPv4 address ({:?}); NetworkPolicy is enforced for IPv4 only",
                            sandbox.id, sandbox.ip
                        )
                    });
                (policy, sandbox.id.clone(), endpoint)
            });
        let (runtime, uid) = (self.runtime.clone(), self.uid.clone());
        async move {
            let Some((policy, sandbox, endpoint)) = wanted else {
                return Ok(());
            };
            let endpoint = endpoint?;
            let netns = async {
                runtime
                    .pod_sandbox_netns(&sandbox)
                    .await
                    .map_err(|e| format!("PodSandboxStatus: {e}"))?
                    .ok_or_else(|| {
                        format!(
                            "the runtime does not say where sandbox {sandbox}'s network namespace is"
                        )
                    })
            };
            policy.admit(endpoint, &uid, &sandbox, netns).await
        }
    }

    async fn create_sandbox(&mut self, pod: &Pod, attempt: u32) -> Result<(), (String, String)> {
        let config = self.sandbox_config(pod, attempt)?;
        std::fs::create_dir_all(&config.log_directory).map_err(|e| {
            (
                "FailedCreatePodSandBox".to_owned(),
                format!("creating {}: {e}", config.log_directory),
            )
        })?;
        let limits = PodLimits {
            pids_max: self.ctx.pod_pids_limit,
        };
        self.cgroups
            .apply(
                self.ctx.cgroup_driver,
                &spec::pod_cgroup_parent(pod, &self.ctx),
                &limits,
            )
            .await
            .map_err(|e| ("FailedCreatePodSandBox".to_owned(), e.to_string()))?;
        if attempt > 0 {
            self.events.normal(
                pod,
                reason::SANDBOX_CHANGED,
                "Pod sandbox changed, it will be killed and re-created.",
            );
        }
        tracing::info!(pod = %pod_name(pod), attempt, "creating pod sandbox");
        self.runtime
            .run_pod_sandbox(config)
            .await
            .map_err(|e| ("FailedCreatePodSandBox".to_owned(), e.to_string()))?;
        self.facts.start_errors.clear();
        Ok(())
    }

    fn sandbox_config(
        &self,
        pod: &Pod,
        attempt: u32,
    ) -> Result<api::PodSandboxConfig, (String, String)> {
        let mut config = spec::sandbox_config(pod, &self.ctx, attempt)
            .map_err(|e| ("CreatePodSandboxConfigError".to_owned(), e.to_string()))?;
        config.labels.insert(
            keys::MANAGED_BY.to_owned(),
            keys::MANAGED_BY_VALUE.to_owned(),
        );
        Ok(config)
    }

    /// Starts one container; a failure is recorded as the container's waiting reason.
    async fn start(
        &mut self,
        pod: &Pod,
        observed: &ObservedPod,
        volumes: &PodVolumes,
        start: &Start,
        now: SystemTime,
        admission: &mut Admission,
    ) -> bool {
        let result = self
            .try_start(pod, observed, volumes, start, now, admission)
            .await;
        let ran = match &result {
            Ok(()) => true,
            Err((why, _)) => why == POST_START_HOOK_ERROR,
        };
        if let (true, Some(ran_for)) = (ran, start.previous_ran_for) {
            self.backoff.restarted(&start.name, ran_for);
        }
        match result {
            Ok(()) => {
                self.facts.start_errors.remove(&start.name);
                true
            }
            // Reported for the whole pod by the sync.
            Err((why, _)) if why == FAILED_NETWORK_POLICY => false,
            Err((why, message)) => {
                let involved = container_reference(pod, &start.name);
                let (type_, event_reason, text) = match why.as_str() {
                    "ErrImagePull" => (
                        EventType::Warning,
                        reason::FAILED_TO_PULL_IMAGE,
                        message.clone(),
                    ),
                    "ImagePullBackOff" => (
                        EventType::Normal,
                        reason::BACK_OFF_PULL_IMAGE,
                        message.clone(),
                    ),
                    "ErrImageNeverPull" => (
                        EventType::Warning,
                        reason::ERR_IMAGE_NEVER_PULL_POLICY,
                        message.clone(),
                    ),
                    _ => (
                        EventType::Warning,
                        reason::FAILED_TO_START_CONTAINER,
                        format!("Error: {message}"),
                    ),
                };
                self.events.record(involved, type_, event_reason, text);
                let reason = why;
                self.facts
                    .start_errors
                    .insert(start.name.clone(), (reason, message));
                false
            }
        }
    }

    async fn try_start(
        &mut self,
        pod: &Pod,
        observed: &ObservedPod,
        volumes: &PodVolumes,
        start: &Start,
        now: SystemTime,
        admission: &mut Admission,
    ) -> Result<(), (String, String)> {
        let Some((container, kind)) = containers_of(pod)
            .into_iter()
            .find(|(c, _)| c.name == start.name)
        else {
            return Ok(());
        };
        let image = container.image.clone().unwrap_or_default();
        let pulled = self
            .ensure_image(
                pod,
                &start.name,
                &image,
                container.image_pull_policy.as_deref(),
                now,
            )
            .await?;
        let Some(sandbox) = observed.sandbox() else {
            return Ok(());
        };
        let sandbox_config = self.sandbox_config(pod, sandbox.attempt)?;
        let facts = RuntimeFacts {
            pod_ip: sandbox.ip.clone(),
            pod_ips: std::iter::once(sandbox.ip.clone())
                .chain(sandbox.additional_ips.clone())
                .filter(|ip| !ip.is_empty())
                .collect(),
            restart_count: start.restart_count,
        };
        let spec_kind = match kind {
            ContainerKind::Init => spec::ContainerKind::Init,
            ContainerKind::Sidecar => spec::ContainerKind::Sidecar,
            ContainerKind::Regular => spec::ContainerKind::Regular,
        };
        let config_error =
            |e: &dyn std::fmt::Display| ("CreateContainerConfigError".to_owned(), e.to_string());
        spec::verify_run_as_non_root(
            pod,
            container,
            spec_kind,
            pulled.uid.as_ref().map(|u| u.value),
            &pulled.username,
        )
        .map_err(|e| config_error(&e))?;
        let mut config = spec::container_config_with(
            pod,
            container,
            spec_kind,
            &self.ctx,
            &facts,
            &*self.objects,
        )
        .map_err(|e| config_error(&e))?;
        // The runtime is given the image it resolved, and the name as written.
        if let Some(spec) = config.image.as_mut() {
            spec.user_specified_image = std::mem::take(&mut spec.image);
            spec.image = pulled.id.clone();
        }
        config.mounts = volume::container_mounts(pod, container, volumes, &facts, &config.envs)
            .map_err(|e| config_error(&e))?;
        let involved = container_reference(pod, &start.name);
        let id = self
            .runtime
            .create_container(&sandbox.id, config, sandbox_config)
            .await
            .map_err(|e| ("CreateContainerError".to_owned(), e.to_string()))?;
        if let Err(message) = admission.wait().await {
            // Never started: it goes, and the next attempt creates it again.
            if let Err(e) = self.runtime.remove_container(&id).await {
                tracing::debug!(container = %id, error = %e, "removing a container not started");
            }
            return Err((FAILED_NETWORK_POLICY.to_owned(), message));
        }
        self.events.record(
            involved.clone(),
            EventType::Normal,
            reason::CREATED_CONTAINER,
            format!("Created container: {}", start.name),
        );
        self.runtime
            .start_container(&id)
            .await
            .map_err(|e| ("RunContainerError".to_owned(), e.to_string()))?;
        self.events.record(
            involved.clone(),
            EventType::Normal,
            reason::STARTED_CONTAINER,
            format!("Started container {}", start.name),
        );
        let post_start = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.post_start.as_ref());
        if let Some(handler) = post_start {
            let target = Target::new(sandbox.ip.clone(), id.clone(), container);
            if let Err(e) = run_hook(&self.runtime, handler, &target, POST_START_LIMIT).await {
                let message = format!("PostStartHook failed: {e}");
                self.events.record(
                    involved.clone(),
                    EventType::Warning,
                    reason::FAILED_POST_START_HOOK,
                    message.clone(),
                );
                self.events.record(
                    involved,
                    EventType::Normal,
                    reason::KILLING_CONTAINER,
                    format!("FailedPostStartHook: stopping container {}", start.name),
                );
                if let Err(e) = self
                    .kill_container(pod, observed, &start.name, &id, grace_period(pod))
                    .await
                {
                    tracing::warn!(error = %e, "stopping a container whose postStart hook failed");
                }
                return Err((POST_START_HOOK_ERROR.to_owned(), message));
            }
        }
        // Keep the instance before this one for `lastState` and logs, unless it never
        // started (it has neither); remove older ones.
        let older = observed
            .containers
            .iter()
            .filter(|c| c.name == start.name)
            .enumerate()
            .filter(|(i, c)| *i > 0 || c.state == ContainerState::Created)
            .map(|(_, c)| c);
        for old in older {
            if old.state != ContainerState::Running {
                // Its log and rotated logs go with it, as kubelet removes them first.
                if let Ok(dir) = spec::pod_log_directory(pod, &self.ctx) {
                    let log = dir.join(spec::container_log_path(&old.name, old.restart_count));
                    remove_logs(&log);
                }
                if let Err(e) = self.runtime.remove_container(&old.id).await {
                    tracing::debug!(container = %old.id, error = %e, "removing an old container");
                }
            }
        }
        Ok(())
    }

    /// Makes sure the image is there, per the container's pull policy.
    async fn ensure_image(
        &mut self,
        pod: &Pod,
        name: &str,
        image: &str,
        policy: Option<&str>,
        now: SystemTime,
    ) -> Result<api::Image, (String, String)> {
        let status = || async {
            self.runtime
                .image_status(image)
                .await
                .map_err(|e| ("ErrImageInspect".to_owned(), e.to_string()))
        };
        let never = policy == Some("Never");
        if never || policy == Some("IfNotPresent") {
            if let Some(found) = status().await? {
                self.events.record(
                    container_reference(pod, name),
                    EventType::Normal,
                    reason::PULLED_IMAGE,
                    format!("Container image \"{image}\" already present on machine"),
                );
                return Ok(found);
            }
            if never {
                return Err((
                    "ErrImageNeverPull".to_owned(),
                    format!("Container image \"{image}\" is not present with pull policy of Never"),
                ));
            }
        }
        if let Some((until, _)) = self.pull_backoff.get(name) {
            if now < *until {
                return Err((
                    "ImagePullBackOff".to_owned(),
                    format!("Back-off pulling image \"{image}\""),
                ));
            }
        }
        self.events.record(
            container_reference(pod, name),
            EventType::Normal,
            reason::PULLING_IMAGE,
            format!("Pulling image \"{image}\""),
        );
        let began = std::time::Instant::now();
        let (pulled, missing) = pull_secrets::pull(&self.runtime, pod, image, &*self.objects).await;
        if !missing.is_empty() {
            let message = format!(
                "Unable to retrieve some image pull secrets ({}); attempting to pull the image \
                 may not succeed.",
                missing.join(", ")
            );
            let reason = pull_secrets::FAILED_TO_RETRIEVE_IMAGE_PULL_SECRET;
            self.events.warning(pod, reason, message);
        }
        match pulled {
            Ok(_) => {
                self.events.record(
                    container_reference(pod, name),
                    EventType::Normal,
                    reason::PULLED_IMAGE,
                    format!(
                        "Successfully pulled image \"{image}\" in {:.3}s",
                        began.elapsed().as_secs_f64()
                    ),
                );
                self.pull_backoff.remove(name);
                status().await?.ok_or_else(|| {
                    (
                        "ErrImageInspect".to_owned(),
                        format!("image \"{image}\" is not present after it was pulled"),
                    )
                })
            }
            Err(e) => {
                let delay = self
                    .pull_backoff
                    .get(name)
                    .map_or(PULL_BACKOFF.0, |(_, d)| (*d * 2).min(PULL_BACKOFF.1));
                self.pull_backoff
                    .insert(name.to_owned(), (now + delay, delay));
                Err((
                    "ErrImagePull".to_owned(),
                    format!("Failed to pull image \"{image}\": {e}"),
                ))
            }
        }
    }

    /// Stops one container of a pod being terminated: with its preStop hook when the
    /// pod's spec is known, else (an orphan) with StopContainer alone.
    async fn stop_for_termination(
        &self,
        pod: Option<&Pod>,
        observed: &ObservedPod,
        c: &ObservedContainer,
        grace: Duration,
    ) -> Result<(), SyncError> {
        if let Some(pod) = pod {
            self.events.record(
                container_reference(pod, &c.name),
                EventType::Normal,
                reason::KILLING_CONTAINER,
                format!("Stopping container {}", c.name),
            );
            return self
                .kill_container(pod, observed, &c.name, &c.id, grace)
                .await;
        }
        self.runtime
            .stop_container(&c.id, grace)
            .await
            .map_err(self.runtime_error("StopContainer"))
    }

    /// Evicts the pod (kubelet's `TerminatePodAbnormallyAndWait` from the eviction manager):
    /// its containers are stopped within `grace`, its sandbox too, and its status becomes
    /// terminal: phase Failed, `reason` and `message`, and `condition` when given. Nothing
    /// restarts it; its worker keeps reporting that status until the pod is deleted.
    pub async fn evict(
        &mut self,
        pod: &Pod,
        grace: Duration,
        status_reason: &str,
        message: &str,
        condition: Option<k8s_openapi::api::core::v1::PodCondition>,
    ) -> Result<(), SyncError> {
        let observed = self.observe().await?;
        self.probes.clear();
        for c in observed
            .containers
            .iter()
            .filter(|c| c.state == ContainerState::Running)
        {
            self.events.record(
                container_reference(pod, &c.name),
                EventType::Normal,
                reason::KILLING_CONTAINER,
                format!("Stopping container {}", c.name),
            );
        }
        self.finish(pod, &observed, grace).await?;
        let observed = self.observe().await?;
        let mut status = status::pod_status(
            pod,
            &observed,
            &self.facts,
            self.status.as_ref(),
            SystemTime::now(),
        );
        status.phase = Some("Failed".to_owned());
        status.reason = Some(status_reason.to_owned());
        status.message = Some(message.to_owned());
        if let Some(condition) = condition {
            let conditions = status.conditions.get_or_insert_with(Vec::new);
            conditions.retain(|c| c.type_ != condition.type_);
            conditions.push(condition);
        }
        if let Some(sink) = &self.on_status {
            sink(pod, &status);
        }
        self.status = Some(status);
        Ok(())
    }

    /// Stops and removes everything of the pod: regular containers together within the
    /// grace period, then sidecars in reverse order, then the sandboxes; the pod's log
    /// directory stays, as kubelet keeps logs of deleted pods until garbage collection.
    pub async fn terminate(&mut self, pod: Option<&Pod>, grace: Duration) -> Result<(), SyncError> {
        let observed = self.observe().await?;
        let kind_of = |name: &str| {
            pod.and_then(|p| {
                containers_of(p)
                    .into_iter()
                    .find(|(c, _)| c.name == name)
                    .map(|(_, k)| k)
            })
            .unwrap_or(ContainerKind::Regular)
        };
        self.probes.clear();
        // The containers' probe series go with the pod, as kubelet's go with its probe workers.
        if let Some(pod) = pod {
            for (c, _) in containers_of(pod) {
                self.probe_series(pod, &c.name).forget();
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        let running: Vec<&ObservedContainer> = observed
            .containers
            .iter()
            .filter(|c| c.state == ContainerState::Running)
            .collect();
        let regular: Vec<_> = running
            .iter()
            .filter(|c| kind_of(&c.name) != ContainerKind::Sidecar)
            .map(|c| self.stop_for_termination(pod, &observed, c, grace))
            .collect();
        for result in futures::future::join_all(regular).await {
            result?;
        }
        let order: Vec<String> = pod
            .map(|p| {
                containers_of(p)
                    .into_iter()
                    .map(|(c, _)| c.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut sidecars: Vec<_> = running
            .iter()
            .filter(|c| kind_of(&c.name) == ContainerKind::Sidecar)
            .collect();
        sidecars.sort_by_key(|c| std::cmp::Reverse(order.iter().position(|n| n == &c.name)));
        for c in sidecars {
            // Sidecars get what is left of the pod's grace period.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.stop_for_termination(pod, &observed, c, left).await?;
        }
        for s in &observed.sandboxes {
            self.runtime
                .stop_pod_sandbox(&s.id)
                .await
                .map_err(self.runtime_error("StopPodSandbox"))?;
            self.runtime
                .remove_pod_sandbox(&s.id)
                .await
                .map_err(self.runtime_error("RemovePodSandbox"))?;
        }
        if let Some(pod) = pod {
            self.cgroups
                .remove(
                    self.ctx.cgroup_driver,
                    &spec::pod_cgroup_parent(pod, &self.ctx),
                )
                .await;
        }
        if let Err(e) = volume::cleanup(&self.ctx.pods_dir, &self.uid, &HostMounter) {
            tracing::warn!(pod = %self.uid, error = %e, "cleaning up the pod's volumes");
        }
        Ok(())
    }
}

/// How long a pod took to start: from its worker's start (the pod first seen) to the first
/// status whose phase is Running, told once. A pod whose first status is neither Pending nor
/// Running (it finished at once) or is Running already (bosun restarted and adopted it) is
/// never told: its start was not seen.
#[derive(Debug)]
struct PodStart {
    since: tokio::time::Instant,
    seen: StartSeen,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StartSeen {
    Nothing,
    Pending,
    Told,
}

impl PodStart {
    fn new() -> Self {
        PodStart {
            since: tokio::time::Instant::now(),
            seen: StartSeen::Nothing,
        }
    }

    /// Told the phase of each status computed; answers how long the start took when this is
    /// the first Running after Pending.
    fn phase(&mut self, phase: Option<&str>) -> Option<Duration> {
        let (seen, took) = match (self.seen, phase) {
            (StartSeen::Told, _) => (StartSeen::Told, None),
            (_, None | Some("Pending")) => (StartSeen::Pending, None),
            (StartSeen::Pending, Some("Running")) => (StartSeen::Told, Some(self.since.elapsed())),
            _ => (StartSeen::Told, None),
        };
        self.seen = seen;
        took
    }
}

/// The pod's NetworkPolicy on its interface: done, failed, or under way on its own task while
/// the worker creates the first container (see [`PodWorker::sync`]).
enum Admission {
    Done,
    Failed(String),
    Pending(tokio::task::JoinHandle<Result<(), String>>),
}

impl From<Result<(), String>> for Admission {
    fn from(result: Result<(), String>) -> Self {
        match result {
            Ok(()) => Admission::Done,
            Err(message) => Admission::Failed(message),
        }
    }
}

impl Admission {
    /// Waits for it to be done; the reason it is not, if it failed.
    async fn wait(&mut self) -> Result<(), String> {
        if let Admission::Pending(task) = self {
            *self = match task.await {
                Ok(result) => result.into(),
                Err(e) => Admission::Failed(format!("putting the policy in place: {e}")),
            };
        }
        match self.failed() {
            Some(message) => Err(message.to_owned()),
            None => Ok(()),
        }
    }

    fn failed(&self) -> Option<&str> {
        match self {
            Admission::Failed(message) => Some(message),
            _ => None,
        }
    }
}

/// Adds what the container left in its termination-log file (or, as its policy may say,
/// the tail of its log) to its message, as kubelet does for exited containers.
fn append_termination_message(container: &mut ObservedContainer, status: &api::ContainerStatus) {
    let path = status
        .annotations
        .get(keys::TERMINATION_MESSAGE_PATH)
        .map_or(volume::DEFAULT_TERMINATION_MESSAGE_PATH, String::as_str);
    let policy = status
        .annotations
        .get(keys::TERMINATION_MESSAGE_POLICY)
        .map(String::as_str);
    let file = volume::termination_message_file(&status.mounts, path);
    let log = (!status.log_path.is_empty()).then(|| Path::new(&status.log_path));
    let message = volume::termination_message(file.as_deref(), policy, container.exit_code, log);
    if message.is_empty() {
        return;
    }
    if !container.message.is_empty() {
        container.message.push_str(": ");
    }
    container.message.push_str(&message);
}

/// What the pod's own status last said of container `id` — `(started, ready)` — when
/// that status was not computed by this process (a pod from the API server after a restart of
/// bosun), for its probes to resume from.
fn previous_health(pod: &Pod, id: &str) -> Option<(bool, bool)> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|c| {
            c.container_id
                .as_deref()
                .and_then(|full| full.split_once("://"))
                .is_some_and(|(_, short)| short == id)
        })
        .map(|c| (c.started.unwrap_or(false), c.ready))
}

/// How long the pod's containers get to stop: the deletion grace period the API server set
/// when the pod was deleted, else `terminationGracePeriodSeconds` (30 s by default).
pub fn grace_period(pod: &Pod) -> Duration {
    let seconds = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30);
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

pub fn pod_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_start_is_told_once_from_the_first_sight_to_running() {
        let mut start = PodStart::new();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(start.phase(Some("Pending")), None);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(start.phase(Some("Running")), Some(Duration::from_secs(5)));
        assert_eq!(start.phase(Some("Running")), None, "once");
        assert_eq!(start.phase(Some("Pending")), None);
        assert_eq!(
            start.phase(Some("Running")),
            None,
            "once, even after a restart"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_not_seen_is_not_told() {
        let mut adopted = PodStart::new();
        assert_eq!(adopted.phase(Some("Running")), None);
        assert_eq!(adopted.phase(Some("Pending")), None);
        assert_eq!(adopted.phase(Some("Running")), None);
        let mut finished = PodStart::new();
        assert_eq!(finished.phase(Some("Pending")), None);
        assert_eq!(finished.phase(Some("Succeeded")), None);
        assert_eq!(finished.phase(Some("Running")), None);
    }
}
