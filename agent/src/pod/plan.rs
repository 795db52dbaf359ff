//! What to do next for one pod: a pure function of the pod's spec, what the runtime holds,
//! the restart back-off and the time (kubelet's `computePodActions`). The worker carries the
//! plan out and asks again; nothing here touches the runtime or sleeps.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Container, Pod};

use super::observed::{ContainerState, ObservedContainer, ObservedPod};

/// The back-off after a container's first restart; it doubles up to [`MAX_BACKOFF`].
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(10);
/// The longest back-off between restarts (kubelet's CrashLoopBackOff cap).
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A container that ran this long before exiting starts its back-off afresh.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);

/// Which list a container comes from and how it is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerKind {
    /// An init container: runs once to completion, in order, before the others.
    Init,
    /// An init container with `restartPolicy: Always`: started in order, kept running.
    Sidecar,
    /// A container of `spec.containers`.
    Regular,
}

/// The pod's restart policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn of(pod: &Pod) -> Self {
        match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
            Some("Never") => RestartPolicy::Never,
            Some("OnFailure") => RestartPolicy::OnFailure,
            _ => RestartPolicy::Always,
        }
    }

    /// Whether a container that exited with `exit_code` is started again.
    pub fn restarts(self, exit_code: i32) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit_code != 0,
            RestartPolicy::Never => false,
        }
    }
}

/// A container of the spec with its kind, in the order kubelet considers them.
pub fn containers_of(pod: &Pod) -> Vec<(&Container, ContainerKind)> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let init = spec.init_containers.iter().flatten().map(|c| {
        let sidecar = c.restart_policy.as_deref() == Some("Always");
        (
            c,
            if sidecar {
                ContainerKind::Sidecar
            } else {
                ContainerKind::Init
            },
        )
    });
    init.chain(spec.containers.iter().map(|c| (c, ContainerKind::Regular)))
        .collect()
}

/// Restart back-off per container name, as kubelet keeps it per pod.
#[derive(Clone, Debug, Default)]
pub struct Backoff {
    /// The delay to wait after the container's next exit.
    delays: HashMap<String, Duration>,
}

impl Backoff {
    /// `Some(until)` when the container that finished at `finished_at` must wait until
    /// then before it is started again.
    pub fn waiting_until(
        &self,
        name: &str,
        finished_at: SystemTime,
        now: SystemTime,
    ) -> Option<SystemTime> {
        let delay = *self.delays.get(name)?;
        let until = finished_at + delay;
        (now < until).then_some(until)
    }

    /// Records a restart of a container that ran for `ran_for`: the next exit waits longer.
    pub fn restarted(&mut self, name: &str, ran_for: Duration) {
        if ran_for >= BACKOFF_RESET_AFTER {
            self.delays.remove(name);
        }
        let next = match self.delays.get(name) {
            None => INITIAL_BACKOFF,
            Some(d) => (*d * 2).min(MAX_BACKOFF),
        };
        self.delays.insert(name.to_owned(), next);
    }

    /// The delay the container is waiting out now (for the status message).
    pub fn current(&self, name: &str) -> Option<Duration> {
        self.delays.get(name).copied()
    }

    pub fn forget(&mut self, name: &str) {
        self.delays.remove(name);
    }
}

/// What the probes say of one running container instance (kubelet's prober results).
/// A running container without an entry has no probes: it is started and ready.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// No startup probe, or it has succeeded.
    pub started: bool,
    /// Started, and no readiness probe or it succeeds.
    pub ready: bool,
    /// A liveness or startup probe failed: the container is killed (and restarted as the
    /// restart policy says).
    pub failed: Option<ProbeFailure>,
}

/// A liveness or startup probe that reached its failure threshold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeFailure {
    /// `liveness` or `startup`.
    pub probe: &'static str,
    /// The probe's `terminationGracePeriodSeconds`, which overrides the pod's for this kill.
    pub grace: Option<Duration>,
}

/// A container to start now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Start {
    pub name: String,
    pub kind: ContainerKind,
    pub restart_count: u32,
    /// How long its previous instance ran, for the back-off.
    pub previous_ran_for: Option<Duration>,
}

/// A running container to stop now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kill {
    pub id: String,
    pub name: String,
    /// Why, as kubelet says it in the `Killing` event.
    pub reason: String,
    /// The grace period, if not the pod's.
    pub grace: Option<Duration>,
}

/// Why a container is not running now, for its status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// Restarting after a crash, once the back-off ends.
    CrashLoopBackOff { delay: Duration },
    /// Not started yet because init containers have not finished.
    PodInitializing,
    /// About to be created.
    ContainerCreating,
}

/// What the worker does next.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Create a new sandbox with this attempt number (after stopping the old one's
    /// containers, listed in `kill`).
    pub create_sandbox: Option<u32>,
    /// Old sandboxes to stop.
    pub stop_sandboxes: Vec<String>,
    pub kill: Vec<Kill>,
    pub start: Vec<Start>,
    pub waiting: HashMap<String, Waiting>,
    /// When to look again even if nothing happens (a back-off ending).
    pub requeue_after: Option<Duration>,
    /// The pod has finished (restart policy Never/OnFailure and nothing left to run):
    /// stop what still runs (sidecars) and the sandbox, start nothing.
    pub finished: bool,
}

impl Plan {
    /// Whether the plan changes nothing in the runtime.
    pub fn is_idle(&self) -> bool {
        self.create_sandbox.is_none()
            && self.stop_sandboxes.is_empty()
            && self.kill.is_empty()
            && self.start.is_empty()
            && !self.finished
    }

    fn requeue_at(&mut self, until: SystemTime, now: SystemTime) {
        let after = until.duration_since(now).unwrap_or_default();
        self.requeue_after = Some(self.requeue_after.map_or(after, |d| d.min(after)));
    }
}

/// Decides the next actions for a pod that should be running.
pub fn plan(
    pod: &Pod,
    observed: &ObservedPod,
    backoff: &Backoff,
    hashes: &HashMap<String, String>,
    health: &HashMap<String, Health>,
    now: SystemTime,
) -> Plan {
    let mut plan = Plan::default();
    let policy = RestartPolicy::of(pod);
    let containers = containers_of(pod);

    // Old sandboxes are stopped whatever else happens.
    for old in observed.sandboxes.iter().skip(1).filter(|s| s.ready) {
        plan.stop_sandboxes.push(old.id.clone());
    }

    let finished = pod_finished(pod, observed, policy);
    let sandbox_ready = observed.sandbox().is_some_and(|s| s.ready);
    if finished {
        plan.finished = true;
        return plan;
    }
    if !sandbox_ready {
        // A pod that must not restart and whose containers already ran stays down.
        let ran = observed.sandbox().is_some_and(|s| {
            observed
                .containers
                .iter()
                .any(|c| c.sandbox_id == s.id && c.started_at.is_some())
        });
        if policy == RestartPolicy::Never && ran {
            plan.finished = true;
            return plan;
        }
        let attempt = observed.sandbox().map_or(0, |s| s.attempt + 1);
        plan.create_sandbox = Some(attempt);
        for c in &observed.containers {
            if c.state == ContainerState::Running {
                plan.kill.push(Kill {
                    id: c.id.clone(),
                    name: c.name.clone(),
                    reason: format!("Stopping container {}: the pod sandbox changed", c.name),
                    grace: None,
                });
            }
        }
        for (c, kind) in &containers {
            let waiting = if *kind == ContainerKind::Regular
                && containers.iter().any(|(_, k)| *k != ContainerKind::Regular)
            {
                Waiting::PodInitializing
            } else {
                Waiting::ContainerCreating
            };
            plan.waiting.insert(c.name.clone(), waiting);
        }
        return plan;
    }

    // Containers whose spec changed are restarted.
    for (c, _) in &containers {
        if let (Some(current), Some(want)) = (observed.latest(&c.name), hashes.get(&c.name)) {
            if current.state == ContainerState::Running
                && !current.hash.is_empty()
                && &current.hash != want
            {
                plan.kill.push(Kill {
                    id: current.id.clone(),
                    name: c.name.clone(),
                    reason: format!("Container {} definition changed, will be restarted", c.name),
                    grace: None,
                });
                continue;
            }
        }
        // A failed liveness or startup probe kills the container; its exit then restarts
        // it (or not) like any other.
        let failed = observed.latest(&c.name).and_then(|l| {
            let failure = health.get(&l.id)?.failed.as_ref()?;
            (l.state == ContainerState::Running).then_some((l, failure))
        });
        if let Some((latest, failure)) = failed {
            plan.kill.push(Kill {
                id: latest.id.clone(),
                name: c.name.clone(),
                reason: format!(
                    "Container {} failed {} probe, will be restarted",
                    c.name, failure.probe
                ),
                grace: failure.grace,
            });
        }
    }

    // Init containers and sidecars, in order: each must have completed (init) or be
    // running (sidecar) before the next one starts.
    let mut initialized = true;
    for (c, kind) in containers
        .iter()
        .filter(|(_, k)| *k != ContainerKind::Regular)
    {
        let latest = observed.latest(&c.name);
        match (kind, latest.map(|l| l.state)) {
            (ContainerKind::Init, Some(ContainerState::Exited)) => {
                let latest = latest.expect("matched Some");
                if latest.exit_code == 0 {
                    continue;
                }
                initialized = false;
                if policy == RestartPolicy::Never {
                    plan.finished = true;
                    return plan;
                }
                restart_or_wait(&mut plan, c, *kind, latest, backoff, now);
                break;
            }
            (ContainerKind::Sidecar, Some(ContainerState::Exited)) => {
                let latest = latest.expect("matched Some");
                restart_or_wait(&mut plan, c, *kind, latest, backoff, now);
                initialized = false;
                break;
            }
            // The next one waits until the sidecar has started (its startup probe).
            (ContainerKind::Sidecar, Some(ContainerState::Running)) => {
                let latest = latest.expect("matched Some");
                if health.get(&latest.id).is_none_or(|h| h.started) {
                    continue;
                }
                initialized = false;
                break;
            }
            (_, Some(ContainerState::Running)) => {
                initialized = false;
                break;
            }
            // Created and never started: the start failed, or its create returned too late
            // (a timed-out call the runtime finished). As kubelet: a new one, not that one.
            (_, Some(ContainerState::Created)) => {
                initialized = false;
                plan.start
                    .push(start_again(c, *kind, latest.expect("matched Some")));
                break;
            }
            (_, None | Some(ContainerState::Unknown)) => {
                initialized = false;
                plan.start.push(Start {
                    name: c.name.clone(),
                    kind: *kind,
                    restart_count: next_restart_count(observed, &c.name),
                    previous_ran_for: None,
                });
                break;
            }
            (ContainerKind::Regular, _) => unreachable!("filtered out"),
        }
    }

    for (c, kind) in containers
        .iter()
        .filter(|(_, k)| *k == ContainerKind::Regular)
    {
        if !initialized {
            if observed.latest(&c.name).is_none() {
                plan.waiting
                    .insert(c.name.clone(), Waiting::PodInitializing);
            }
            continue;
        }
        match observed.latest(&c.name) {
            None => plan.start.push(Start {
                name: c.name.clone(),
                kind: *kind,
                restart_count: next_restart_count(observed, &c.name),
                previous_ran_for: None,
            }),
            Some(latest)
                if latest.state == ContainerState::Exited && policy.restarts(latest.exit_code) =>
            {
                restart_or_wait(&mut plan, c, *kind, latest, backoff, now);
            }
            Some(latest) if latest.state == ContainerState::Created => {
                plan.start.push(start_again(c, *kind, latest));
            }
            Some(_) => {}
        }
    }
    for start in &plan.start {
        plan.waiting
            .entry(start.name.clone())
            .or_insert(Waiting::ContainerCreating);
    }
    plan
}

fn restart_or_wait(
    plan: &mut Plan,
    c: &Container,
    kind: ContainerKind,
    latest: &ObservedContainer,
    backoff: &Backoff,
    now: SystemTime,
) {
    let finished_at = latest.finished_at.unwrap_or(now);
    match backoff.waiting_until(&c.name, finished_at, now) {
        Some(until) => {
            let delay = backoff.current(&c.name).unwrap_or(INITIAL_BACKOFF);
            plan.waiting
                .insert(c.name.clone(), Waiting::CrashLoopBackOff { delay });
            plan.requeue_at(until, now);
        }
        None => plan.start.push(Start {
            name: c.name.clone(),
            kind,
            restart_count: latest.restart_count + 1,
            previous_ran_for: Some(latest.ran_for()),
        }),
    }
}

/// A new container in place of `latest`, which was created and never started. Whatever the
/// restart policy and with no back-off, as kubelet's `ShouldContainerBeRestarted`: it never
/// ran, so it neither exited nor crashed. The new one takes the next restart count, and so a
/// name of its own in the runtime.
fn start_again(c: &Container, kind: ContainerKind, latest: &ObservedContainer) -> Start {
    Start {
        name: c.name.clone(),
        kind,
        restart_count: latest.restart_count + 1,
        previous_ran_for: None,
    }
}

/// The restart count of a new container of this name: one more than the newest before it,
/// in any sandbox.
fn next_restart_count(observed: &ObservedPod, name: &str) -> u32 {
    observed
        .latest_anywhere(name)
        .map_or(0, |c| c.restart_count + 1)
}

/// A pod whose restart policy lets it finish has finished when every regular container has
/// exited and none of them will be restarted.
pub fn pod_finished(pod: &Pod, observed: &ObservedPod, policy: RestartPolicy) -> bool {
    if policy == RestartPolicy::Always {
        return false;
    }
    let regular: Vec<_> = containers_of(pod)
        .into_iter()
        .filter(|(_, k)| *k == ContainerKind::Regular)
        .collect();
    !regular.is_empty()
        && regular.iter().all(|(c, _)| {
            observed
                .latest(&c.name)
                .is_some_and(|l| l.state == ContainerState::Exited && !policy.restarts(l.exit_code))
        })
}

#[cfg(test)]
mod tests {
    use super::super::observed::ObservedSandbox;
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).expect("test pod")
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn sandbox(ready: bool) -> ObservedSandbox {
        ObservedSandbox {
            id: "sb".into(),
            attempt: 0,
            ready,
            created_at: t(0),
            ip: "10.0.0.2".into(),
            additional_ips: vec![],
        }
    }

    fn container(
        name: &str,
        state: ContainerState,
        restart_count: u32,
        exit: i32,
        started: u64,
        finished: Option<u64>,
    ) -> ObservedContainer {
        ObservedContainer {
            id: format!("{name}-{restart_count}"),
            sandbox_id: "sb".into(),
            name: name.into(),
            restart_count,
            hash: String::new(),
            state,
            created_at: t(started),
            started_at: Some(t(started)),
            finished_at: finished.map(t),
            exit_code: exit,
            reason: String::new(),
            message: String::new(),
            image: "img".into(),
            image_ref: "sha256:1".into(),
        }
    }

    const WEB: &str = "
metadata: {name: web}
spec:
  containers:
  - {name: app, image: busybox}
";

    #[test]
    fn a_new_pod_gets_a_sandbox_first() {
        let plan = plan(
            &pod(WEB),
            &ObservedPod::default(),
            &Backoff::default(),
            &HashMap::new(),
            &HashMap::new(),
            t(0),
        );
        assert_eq!(plan.create_sandbox, Some(0));
        assert!(plan.start.is_empty());
        assert_eq!(plan.waiting["app"], Waiting::ContainerCreating);
    }

    #[test]
    fn then_its_containers_start() {
        let observed = ObservedPod {
            sandboxes: vec![sandbox(true)],
            containers: vec![],
        };
        let plan = plan(
            &pod(WEB),
            &observed,
            &Backoff::default(),
            &HashMap::new(),
            &HashMap::new(),
            t(0),
        );
        assert_eq!(plan.create_sandbox, None);
        assert_eq!(plan.start.len(), 1);
        assert_eq!(plan.start[0].name, "app");
        assert_eq!(plan.start[0].restart_count, 0);
    }

    #[test]
    fn crashes_restart_at_once_then_back_off_doubling_to_five_minutes() {
        let p = pod(WEB);
        let mut backoff = Backoff::default();
        let mut exits = 0;
        let mut delays = Vec::new();
        let mut now = 0;
        // Each instance runs 1 s and crashes; restart when the plan says so.
        while delays.len() < 7 {
            let crashed = container("app", ContainerState::Exited, exits, 1, now, Some(now + 1));
            now += 1;
            let observed = ObservedPod {
                sandboxes: vec![sandbox(true)],
                containers: vec![crashed],
            };
            let first = plan(
                &p,
                &observed,
                &backoff,
                &HashMap::new(),
                &HashMap::new(),
                t(now),
            );
            if let Some(Waiting::CrashLoopBackOff { delay }) = first.waiting.get("app") {
                let wait = first.requeue_after.expect("requeue when the back-off ends");
                assert_eq!(wait, *delay);
                delays.push(wait.as_secs());
                now += wait.as_secs();
            }
            let again = plan(
                &p,
                &observed,
                &backoff,
                &HashMap::new(),
                &HashMap::new(),
                t(now),
            );
            assert_eq!(again.start.len(), 1, "starts once the back-off is over");
            assert_eq!(again.start[0].restart_count, exits + 1);
            backoff.restarted("app", Duration::from_secs(1));
            exits += 1;
        }
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn a_long_run_resets_the_back_off() {
        let mut backoff = Backoff::default();
        for _ in 0..5 {
            backoff.restarted("app", Duration::from_secs(1));
        }
        assert_eq!(backoff.current("app"), Some(Duration::from_secs(160)));
        backoff.restarted("app", BACKOFF_RESET_AFTER);
        assert_eq!(backoff.current("app"), Some(INITIAL_BACKOFF));
    }

    #[test]
    fn restart_policies() {
        for (policy, exit, restarts) in [
            ("Always", 0, true),
            ("Always", 1, true),
            ("OnFailure", 0, false),
            ("OnFailure", 2, true),
            ("Never", 1, false),
        ] {
            let p = pod(&format!("{WEB}  restartPolicy: {policy}\n"));
            let observed = ObservedPod {
                sandboxes: vec![sandbox(true)],
                containers: vec![container(
                    "app",
                    ContainerState::Exited,
                    0,
                    exit,
                    0,
                    Some(1),
                )],
            };
            let plan = plan(
                &p,
                &observed,
                &Backoff::default(),
                &HashMap::new(),
                &HashMap::new(),
                t(2),
            );
            assert_eq!(!plan.start.is_empty(), restarts, "{policy} exit {exit}");
            assert_eq!(
                plan.finished,
                !restarts && policy != "Always",
                "{policy} exit {exit}"
            );
        }
    }

    const WITH_INIT: &str = "
metadata: {name: web}
spec:
  initContainers:
  - {name: first, image: busybox}
  - {name: proxy, image: busybox, restartPolicy: Always}
  - {name: second, image: busybox}
  containers:
  - {name: app, image: busybox}
";

    #[test]
    fn init_containers_run_one_at_a_time_and_sidecars_keep_running() {
        let p = pod(WITH_INIT);
        let mut observed = ObservedPod {
            sandboxes: vec![sandbox(true)],
            containers: vec![],
        };
        let step = |observed: &ObservedPod| {
            plan(
                &p,
                observed,
                &Backoff::default(),
                &HashMap::new(),
                &HashMap::new(),
                t(10),
            )
        };
        let names = |plan: &Plan| {
            plan.start
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>()
        };

        assert_eq!(names(&step(&observed)), ["first"]);
        assert_eq!(step(&observed).waiting["app"], Waiting::PodInitializing);
        observed
            .containers
            .push(container("first", ContainerState::Running, 0, 0, 1, None));
        assert!(
            step(&observed).start.is_empty(),
            "wait for the init container"
        );
        observed.containers[0] = container("first", ContainerState::Exited, 0, 0, 1, Some(2));
        assert_eq!(names(&step(&observed)), ["proxy"]);
        observed
            .containers
            .push(container("proxy", ContainerState::Running, 0, 0, 3, None));
        assert_eq!(
            names(&step(&observed)),
            ["second"],
            "a running sidecar lets the next start"
        );
        observed.containers.push(container(
            "second",
            ContainerState::Exited,
            0,
            0,
            4,
            Some(5),
        ));
        assert_eq!(names(&step(&observed)), ["app"]);
    }

    #[test]
    fn a_failed_init_container_is_retried_or_fails_the_pod() {
        let observed = ObservedPod {
            sandboxes: vec![sandbox(true)],
            containers: vec![container("first", ContainerState::Exited, 0, 1, 0, Some(1))],
        };
        let always = plan(
            &pod(WITH_INIT),
            &observed,
            &Backoff::default(),
            &HashMap::new(),
            &HashMap::new(),
            t(2),
        );
        assert_eq!(always.start[0].name, "first");
        assert_eq!(always.start[0].restart_count, 1);
        let never = plan(
            &pod(&format!("{WITH_INIT}  restartPolicy: Never\n")),
            &observed,
            &Backoff::default(),
            &HashMap::new(),
            &HashMap::new(),
            t(2),
        );
        assert!(never.finished && never.start.is_empty());
    }

    #[test]
    fn a_lost_sandbox_is_recreated_and_its_containers_killed() {
        let observed = ObservedPod {
            sandboxes: vec![sandbox(false)],
            containers: vec![container("app", ContainerState::Running, 3, 0, 0, None)],
        };
        let plan = plan(
            &pod(WEB),
            &observed,
            &Backoff::default(),
            &HashMap::new(),
            &HashMap::new(),
            t(5),
        );
        assert_eq!(plan.create_sandbox, Some(1));
        assert_eq!(plan.kill.len(), 1);
    }

    #[test]
    fn a_changed_spec_restarts_the_container() {
        let mut running = container("app", ContainerState::Running, 0, 0, 0, None);
        running.hash = "old".into();
        let observed = ObservedPod {
            sandboxes: vec![sandbox(true)],
            containers: vec![running],
        };
        let hashes = HashMap::from([("app".to_owned(), "new".to_owned())]);
        let plan = plan(
            &pod(WEB),
            &observed,
            &Backoff::default(),
            &hashes,
            &HashMap::new(),
            t(5),
        );
        assert_eq!(plan.kill.len(), 1);
        assert_eq!(
            plan.kill[0].reason,
            "Container app definition changed, will be restarted"
        );
    }

    #[test]
    fn a_failed_liveness_probe_kills_the_container_with_the_probes_grace() {
        let running = container("app", ContainerState::Running, 0, 0, 0, None);
        let observed = ObservedPod {
            sandboxes: vec![sandbox(true)],
            containers: vec![running.clone()],
        };
        let mut health = HashMap::from([(
            running.id.clone(),
            Health {
                started: true,
                ready: true,
                failed: None,
            },
        )]);
        let step = |health: &HashMap<String, Health>| {
            plan(
                &pod(WEB),
                &observed,
                &Backoff::default(),
                &HashMap::new(),
                health,
                t(5),
            )
        };
        assert!(step(&health).kill.is_empty());
        health.get_mut(&running.id).expect("health").failed = Some(ProbeFailure {
            probe: "liveness",
            grace: Some(Duration::from_secs(3)),
        });
        let plan = step(&health);
        assert_eq!(plan.kill.len(), 1);
        assert_eq!(plan.kill[0].id, running.id);
        assert_eq!(plan.kill[0].grace, Some(Duration::from_secs(3)));
        assert_eq!(
            plan.kill[0].reason,
            "Container app failed liveness probe, will be restarted"
        );
        // A result for an older instance of the container kills nothing.
        let stale = HashMap::from([("app-old".to_owned(), health[&running.id].clone())]);
        assert!(step(&stale).kill.is_empty());
    }

    #[test]
    fn a_sidecar_lets_the_next_container_start_only_once_started() {
        let p = pod(WITH_INIT);
        let sidecar = container("proxy", ContainerState::Running, 0, 0, 3, None);
        let observed = ObservedPod {
            sandboxes: vec![sandbox(true)],
            containers: vec![
                sidecar.clone(),
                container("first", ContainerState::Exited, 0, 0, 1, Some(2)),
            ],
        };
        let mut health = HashMap::from([(
            sidecar.id.clone(),
            Health {
                started: false,
                ready: false,
                failed: None,
            },
        )]);
        let step = |health: &HashMap<String, Health>| {
            plan(
                &p,
                &observed,
                &Backoff::default(),
                &HashMap::new(),
                health,
                t(10),
            )
        };
        let waiting = step(&health);
        assert!(waiting.start.is_empty(), "{waiting:?}");
        assert_eq!(waiting.waiting["app"], Waiting::PodInitializing);
        health.get_mut(&sidecar.id).expect("health").started = true;
        let names: Vec<String> = step(&health).start.into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["second"]);
    }

    #[test]
    fn a_container_created_and_never_started_is_replaced_whatever_the_policy() {
        // A CreateContainer that timed out here and that the runtime finished later leaves
        // a created container under the name the retry wants: a new one, with the next
        // restart count (so a new name), and no back-off.
        let never = pod("
metadata: {name: web}
spec:
  restartPolicy: Never
  initContainers:
  - {name: init, image: busybox}
  containers:
  - {name: app, image: busybox}
");
        let mut created = container("app", ContainerState::Created, 0, 0, 1, None);
        created.started_at = None;
        let observed = ObservedPod {
            sandboxes: vec![sandbox(true)],
            containers: vec![
                created,
                container("init", ContainerState::Exited, 0, 0, 0, Some(1)),
            ],
        };
        let mut backoff = Backoff::default();
        backoff.restarted("app", Duration::from_secs(1));
        let step = plan(
            &never,
            &observed,
            &backoff,
            &HashMap::new(),
            &HashMap::new(),
            t(2),
        );
        assert_eq!(
            step.start,
            [Start {
                name: "app".into(),
                kind: ContainerKind::Regular,
                restart_count: 1,
                previous_ran_for: None,
            }]
        );
        assert!(!step.finished);

        // An init container the same; nothing after it starts yet.
        let mut init = container("init", ContainerState::Created, 2, 0, 1, None);
        init.started_at = None;
        let observed = ObservedPod {
            sandboxes: vec![sandbox(true)],
            containers: vec![init],
        };
        let step = plan(
            &never,
            &observed,
            &Backoff::default(),
            &HashMap::new(),
            &HashMap::new(),
            t(2),
        );
        let starts: Vec<(String, u32)> = step
            .start
            .into_iter()
            .map(|s| (s.name, s.restart_count))
            .collect();
        assert_eq!(starts, [("init".to_owned(), 3)]);
        assert_eq!(step.waiting["app"], Waiting::PodInitializing);
    }
}
