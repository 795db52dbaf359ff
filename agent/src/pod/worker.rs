//! One pod's worker: observes what the runtime holds for the pod, asks the planner what to
//! do, does it through the [`Runtime`] seam, and computes the pod's status. It keeps only
//! what CRI cannot hold (restart back-off, the last start error, condition times), so a
//! restarted bosun picks up where it left off.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bosun_cri::{api, CriError};
use k8s_openapi::api::core::v1::{Pod, PodStatus};

use super::observed::{keys, ContainerState, ObservedContainer, ObservedPod, ObservedSandbox};
use super::plan::{self, containers_of, Backoff, ContainerKind, Start};
use super::spec::{self, NodeContext, RuntimeFacts};
use super::status::{self, Facts};
use crate::runtime::Runtime;

/// The image pull back-off: 10 s doubling to 5 min, as for container restarts.
const PULL_BACKOFF: (Duration, Duration) = (plan::INITIAL_BACKOFF, plan::MAX_BACKOFF);
/// How soon to try again after a sandbox could not be created.
const SANDBOX_RETRY: Duration = Duration::from_secs(2);

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
}

impl<R: Runtime> PodWorker<R> {
    pub fn new(runtime: R, ctx: Arc<NodeContext>, uid: String) -> Self {
        PodWorker {
            runtime,
            ctx,
            uid,
            backoff: Backoff::default(),
            pull_backoff: HashMap::new(),
            facts: Facts::default(),
            status: None,
        }
    }

    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// The status computed by the last sync.
    pub fn status(&self) -> Option<&PodStatus> {
        self.status.as_ref()
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
            if let Some(network) = status.and_then(|s| s.network) {
                newest.ip = network.ip;
                newest.additional_ips = network.additional_ips.into_iter().map(|i| i.ip).collect();
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
            if let Some(observed_container) = status
                .as_ref()
                .and_then(|s| ObservedContainer::from_status(s, &c.pod_sandbox_id))
            {
                observed.containers.push(observed_container);
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
        let observed = self.observe().await?;
        let hashes = containers_of(pod)
            .into_iter()
            .map(|(c, _)| (c.name.clone(), spec::container_hash(c)))
            .collect();
        let plan = plan::plan(pod, &observed, &self.backoff, &hashes, now);
        self.facts.waiting = plan.waiting.clone();
        let mut acted = false;

        for id in &plan.stop_sandboxes {
            self.runtime
                .stop_pod_sandbox(id)
                .await
                .map_err(self.runtime_error("StopPodSandbox"))?;
            acted = true;
        }
        let grace = grace_period(pod);
        for kill in &plan.kill {
            tracing::info!(pod = %pod_name(pod), container = %kill.name, reason = kill.reason, "stopping container");
            self.runtime
                .stop_container(&kill.id, grace)
                .await
                .map_err(self.runtime_error("StopContainer"))?;
            acted = true;
        }
        if plan.finished {
            acted |= self.finish(&observed, grace).await?;
        }
        if let Some(attempt) = plan.create_sandbox {
            match self.create_sandbox(pod, attempt).await {
                Ok(()) => acted = true,
                Err((reason, message)) => {
                    tracing::warn!(pod = %pod_name(pod), %reason, %message, "cannot create the pod sandbox");
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
        for start in &plan.start {
            acted |= self.start(pod, &observed, start, now).await;
        }
        self.publish(pod, &observed, now);
        let requeue = if acted {
            Some(Duration::ZERO)
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

    fn publish(&mut self, pod: &Pod, observed: &ObservedPod, now: SystemTime) {
        self.status = Some(status::pod_status(
            pod,
            observed,
            &self.facts,
            self.status.as_ref(),
            now,
        ));
    }

    /// Stops what still runs of a finished pod, and its sandbox.
    async fn finish(&self, observed: &ObservedPod, grace: Duration) -> Result<bool, SyncError> {
        let mut acted = false;
        for c in observed
            .containers
            .iter()
            .filter(|c| c.state == ContainerState::Running)
        {
            self.runtime
                .stop_container(&c.id, grace)
                .await
                .map_err(self.runtime_error("StopContainer"))?;
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

    async fn create_sandbox(&mut self, pod: &Pod, attempt: u32) -> Result<(), (String, String)> {
        let config = self.sandbox_config(pod, attempt)?;
        std::fs::create_dir_all(&config.log_directory).map_err(|e| {
            (
                "FailedCreatePodSandBox".to_owned(),
                format!("creating {}: {e}", config.log_directory),
            )
        })?;
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
        start: &Start,
        now: SystemTime,
    ) -> bool {
        match self.try_start(pod, observed, start, now).await {
            Ok(()) => {
                self.facts.start_errors.remove(&start.name);
                if let Some(ran_for) = start.previous_ran_for {
                    self.backoff.restarted(&start.name, ran_for);
                }
                true
            }
            Err((reason, message)) => {
                tracing::warn!(pod = %pod_name(pod), container = %start.name, %reason, %message, "cannot start container");
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
        start: &Start,
        now: SystemTime,
    ) -> Result<(), (String, String)> {
        let Some((container, kind)) = containers_of(pod)
            .into_iter()
            .find(|(c, _)| c.name == start.name)
        else {
            return Ok(());
        };
        let image = container.image.clone().unwrap_or_default();
        self.ensure_image(
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
        let config = spec::container_config(pod, container, spec_kind, &self.ctx, &facts)
            .map_err(|e| ("CreateContainerConfigError".to_owned(), e.to_string()))?;
        tracing::info!(pod = %pod_name(pod), container = %start.name, restart_count = start.restart_count, "starting container");
        let id = self
            .runtime
            .create_container(&sandbox.id, config, sandbox_config)
            .await
            .map_err(|e| ("CreateContainerError".to_owned(), e.to_string()))?;
        self.runtime
            .start_container(&id)
            .await
            .map_err(|e| ("RunContainerError".to_owned(), e.to_string()))?;
        // Keep the instance before this one for `lastState` and logs; remove older ones.
        let older = observed
            .containers
            .iter()
            .filter(|c| c.name == start.name)
            .skip(1);
        for old in older {
            if old.state != ContainerState::Running {
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
        name: &str,
        image: &str,
        policy: Option<&str>,
        now: SystemTime,
    ) -> Result<(), (String, String)> {
        let present = || async {
            self.runtime
                .image_present(image)
                .await
                .map_err(|e| ("ErrImageInspect".to_owned(), e.to_string()))
        };
        let never = policy == Some("Never");
        if never || policy == Some("IfNotPresent") {
            if present().await? {
                return Ok(());
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
        match self.runtime.pull_image(image).await {
            Ok(_) => {
                self.pull_backoff.remove(name);
                Ok(())
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
                    format!("pulling image \"{image}\": {e}"),
                ))
            }
        }
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
        let running: Vec<&ObservedContainer> = observed
            .containers
            .iter()
            .filter(|c| c.state == ContainerState::Running)
            .collect();
        let regular: Vec<_> = running
            .iter()
            .filter(|c| kind_of(&c.name) != ContainerKind::Sidecar)
            .map(|c| self.runtime.stop_container(&c.id, grace))
            .collect();
        for result in futures::future::join_all(regular).await {
            result.map_err(self.runtime_error("StopContainer"))?;
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
            self.runtime
                .stop_container(&c.id, grace)
                .await
                .map_err(self.runtime_error("StopContainer"))?;
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
            remove_cgroup(&spec::pod_cgroup_parent(pod, &self.ctx));
        }
        Ok(())
    }
}

/// `terminationGracePeriodSeconds`, 30 s when unset.
pub fn grace_period(pod: &Pod) -> Duration {
    let seconds = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
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

/// Removes a pod's cgroup in every hierarchy (the runtime leaves it behind), leaf first.
/// Best effort: a cgroup that still has processes stays and is tried again next time.
fn remove_cgroup(parent: &str) {
    let relative = parent.trim_start_matches('/');
    if relative.is_empty() {
        return;
    }
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_), Some(mount_point), Some(fstype)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        remove_tree(&Path::new(mount_point).join(relative));
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
