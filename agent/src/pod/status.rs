//! A pod's `status` as kubelet reports it: phase, conditions, container statuses, IPs.
//! Pure: computed from the spec, what the runtime holds and the current plan.

use std::collections::HashMap;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{
    Container, ContainerState as K8sState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::observed::{ContainerState, ObservedContainer, ObservedPod};
use super::plan::{containers_of, ContainerKind, Health, RestartPolicy, Waiting};

/// What the worker knows besides the runtime's state.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub host_ip: String,
    pub qos_class: String,
    pub start_time: Option<SystemTime>,
    pub waiting: HashMap<String, Waiting>,
    /// The last error starting a container (image pull, create), by container name:
    /// (reason, message), shown as its waiting state.
    pub start_errors: HashMap<String, (String, String)>,
    /// What the probes say, by container ID; a running container without an entry has no
    /// probes, and is started and ready.
    pub health: HashMap<String, Health>,
    /// The pod was told to stop.
    pub terminating: bool,
}

/// Computes the pod's status. `previous` keeps condition transition times stable.
pub fn pod_status(
    pod: &Pod,
    observed: &ObservedPod,
    facts: &Facts,
    previous: Option<&PodStatus>,
    now: SystemTime,
) -> PodStatus {
    let policy = RestartPolicy::of(pod);
    let mut init_statuses = Vec::new();
    let mut statuses = Vec::new();
    for (c, kind) in containers_of(pod) {
        let status = container_status(c, kind, observed, facts);
        match kind {
            ContainerKind::Regular => statuses.push(status),
            _ => init_statuses.push(status),
        }
    }

    let sandbox = observed.sandbox();
    let sandbox_ready = sandbox.is_some_and(|s| s.ready);
    let phase = phase(pod, &init_statuses, &statuses, policy);
    let initialized =
        init_statuses
            .iter()
            .zip(containers_of(pod))
            .all(|(s, (_, kind))| match kind {
                ContainerKind::Sidecar => s.started == Some(true),
                _ => terminated_ok(s),
            });
    let containers_ready = !statuses.is_empty()
        && statuses.iter().all(|s| s.ready)
        && init_statuses
            .iter()
            .zip(containers_of(pod))
            .all(|(s, (_, kind))| kind != ContainerKind::Sidecar || s.ready);
    let done = matches!(phase.as_str(), "Succeeded" | "Failed");
    let ready = containers_ready && !done;
    let not_ready = match (ready, done) {
        (true, _) => None,
        (false, true) => Some("PodCompleted"),
        (false, false) => Some("ContainersNotReady"),
    };
    let conditions = vec![
        condition("PodReadyToStartContainers", sandbox_ready, None),
        condition(
            "Initialized",
            initialized,
            (!initialized).then_some("ContainersNotInitialized"),
        ),
        condition("Ready", ready, not_ready),
        condition("ContainersReady", ready, not_ready),
        condition("PodScheduled", true, None),
    ];
    let conditions = conditions
        .into_iter()
        .map(|mut c| {
            let before = previous
                .and_then(|p| p.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|p| p.type_ == c.type_));
            c.last_transition_time = match before {
                Some(b) if b.status == c.status => b.last_transition_time.clone(),
                _ => Some(time(now)),
            };
            c
        })
        .collect();

    let pod_ips: Vec<String> = sandbox
        .filter(|s| !s.ip.is_empty())
        .map(|s| {
            std::iter::once(s.ip.clone())
                .chain(s.additional_ips.clone())
                .collect()
        })
        .unwrap_or_default();
    PodStatus {
        phase: Some(phase),
        conditions: Some(conditions),
        container_statuses: Some(statuses),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        host_ip: (!facts.host_ip.is_empty()).then(|| facts.host_ip.clone()),
        host_ips: (!facts.host_ip.is_empty()).then(|| {
            vec![HostIP {
                ip: facts.host_ip.clone(),
            }]
        }),
        pod_ip: pod_ips.first().cloned(),
        pod_ips: (!pod_ips.is_empty())
            .then(|| pod_ips.iter().map(|ip| PodIP { ip: ip.clone() }).collect()),
        qos_class: (!facts.qos_class.is_empty()).then(|| facts.qos_class.clone()),
        start_time: facts.start_time.map(time),
        ..Default::default()
    }
}

fn terminated_ok(s: &ContainerStatus) -> bool {
    s.state
        .as_ref()
        .and_then(|st| st.terminated.as_ref())
        .is_some_and(|t| t.exit_code == 0)
}

fn condition(type_: &str, ok: bool, reason: Option<&str>) -> PodCondition {
    PodCondition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.map(str::to_owned),
        ..Default::default()
    }
}

fn container_status(
    c: &Container,
    kind: ContainerKind,
    observed: &ObservedPod,
    facts: &Facts,
) -> ContainerStatus {
    let latest = observed.latest(&c.name);
    let waiting = facts.waiting.get(&c.name);
    let mut status = ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        image_id: latest.map(|l| l.image_ref.clone()).unwrap_or_default(),
        container_id: latest.map(|l| format!("containerd://{}", l.id)),
        restart_count: latest
            .or_else(|| observed.latest_anywhere(&c.name))
            .map_or(0, |l| i32::try_from(l.restart_count).unwrap_or(i32::MAX)),
        ready: false,
        started: Some(false),
        ..Default::default()
    };
    let terminated = |l: &ObservedContainer| ContainerStateTerminated {
        exit_code: l.exit_code,
        reason: Some(
            if !l.reason.is_empty() && l.reason != "Completed" && l.reason != "Error" {
                l.reason.clone()
            } else if l.exit_code == 0 {
                "Completed".to_owned()
            } else {
                "Error".to_owned()
            },
        ),
        message: (!l.message.is_empty()).then(|| l.message.clone()),
        started_at: l.started_at.map(time),
        finished_at: l.finished_at.map(time),
        container_id: Some(format!("containerd://{}", l.id)),
        signal: None,
    };

    let state = match (latest, waiting) {
        (Some(l), Some(Waiting::CrashLoopBackOff { delay })) => {
            status.last_state = Some(K8sState {
                terminated: Some(terminated(l)),
                ..Default::default()
            });
            waiting_state(
                "CrashLoopBackOff",
                Some(format!(
                    "back-off {}s restarting failed container={}",
                    delay.as_secs(),
                    c.name
                )),
            )
        }
        (Some(l), _) if l.state == ContainerState::Running => {
            let health = facts.health.get(&l.id);
            let started = health.is_none_or(|h| h.started);
            status.started = Some(started);
            status.ready = kind != ContainerKind::Init && started && health.is_none_or(|h| h.ready);
            K8sState {
                running: Some(ContainerStateRunning {
                    started_at: l.started_at.map(time),
                }),
                ..Default::default()
            }
        }
        (Some(l), _) if l.state == ContainerState::Exited => K8sState {
            terminated: Some(terminated(l)),
            ..Default::default()
        },
        _ => {
            let (reason, message) = match (facts.start_errors.get(&c.name), waiting) {
                (Some((reason, message)), _) => (reason.as_str(), Some(message.clone())),
                (None, Some(Waiting::PodInitializing)) => ("PodInitializing", None),
                _ => ("ContainerCreating", None),
            };
            waiting_state(reason, message)
        }
    };
    if status.last_state.is_none() {
        if let Some(previous) = observed.previous(&c.name) {
            if previous.state == ContainerState::Exited && Some(previous) != latest {
                status.last_state = Some(K8sState {
                    terminated: Some(terminated(previous)),
                    ..Default::default()
                });
            }
        }
    }
    status.state = Some(state);
    status
}

fn waiting_state(reason: &str, message: Option<String>) -> K8sState {
    K8sState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_owned()),
            message,
        }),
        ..Default::default()
    }
}

/// kubelet's `getPhase`.
fn phase(
    pod: &Pod,
    init: &[ContainerStatus],
    regular: &[ContainerStatus],
    policy: RestartPolicy,
) -> String {
    let kinds: Vec<ContainerKind> = containers_of(pod).into_iter().map(|(_, k)| k).collect();
    let mut pending_init = false;
    for (s, kind) in init.iter().zip(&kinds) {
        if *kind == ContainerKind::Sidecar {
            if s.started != Some(true) {
                pending_init = true;
            }
            continue;
        }
        if terminated_ok(s) {
            continue;
        }
        let failed = s
            .state
            .as_ref()
            .and_then(|st| st.terminated.as_ref())
            .is_some_and(|t| t.exit_code != 0);
        if failed && policy == RestartPolicy::Never {
            return "Failed".to_owned();
        }
        pending_init = true;
    }
    let (mut running, mut waiting, mut stopped, mut succeeded) = (0, 0, 0, 0);
    for s in regular {
        let state = s.state.as_ref();
        if state.and_then(|st| st.running.as_ref()).is_some() {
            running += 1;
        } else if let Some(t) = state.and_then(|st| st.terminated.as_ref()) {
            stopped += 1;
            if t.exit_code == 0 {
                succeeded += 1;
            }
        } else if s
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .is_some()
        {
            stopped += 1;
        } else {
            waiting += 1;
        }
    }
    let phase = if pending_init || waiting > 0 {
        "Pending"
    } else if running > 0 {
        "Running"
    } else if stopped > 0 {
        match policy {
            RestartPolicy::Always => "Running",
            _ if stopped == succeeded => "Succeeded",
            RestartPolicy::Never => "Failed",
            RestartPolicy::OnFailure => "Running",
        }
    } else {
        "Pending"
    };
    phase.to_owned()
}

fn time(t: SystemTime) -> Time {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let nanos = i64::try_from(since.as_nanos()).unwrap_or(i64::MAX);
    Time(k8s_openapi::jiff::Timestamp::from_nanosecond(i128::from(nanos)).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::super::observed::ObservedSandbox;
    use super::*;
    use std::time::Duration;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).expect("test pod")
    }

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    fn running(name: &str) -> ObservedContainer {
        ObservedContainer {
            id: format!("id-{name}"),
            sandbox_id: "sb".into(),
            name: name.into(),
            restart_count: 0,
            hash: String::new(),
            state: ContainerState::Running,
            created_at: t(1),
            started_at: Some(t(1)),
            finished_at: None,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            image: "busybox".into(),
            image_ref: "sha256:abc".into(),
        }
    }

    fn observed(containers: Vec<ObservedContainer>) -> ObservedPod {
        ObservedPod {
            sandboxes: vec![ObservedSandbox {
                id: "sb".into(),
                attempt: 0,
                ready: true,
                created_at: t(0),
                ip: "10.1.0.5".into(),
                additional_ips: vec![],
            }],
            containers,
        }
    }

    const WEB: &str = "
metadata: {name: web}
spec:
  containers:
  - {name: app, image: busybox}
";

    fn cond<'a>(s: &'a PodStatus, t: &str) -> &'a str {
        &s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
            .status
    }

    #[test]
    fn a_running_pod_is_running_and_ready() {
        let s = pod_status(
            &pod(WEB),
            &observed(vec![running("app")]),
            &Facts::default(),
            None,
            t(2),
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&s, "Ready"), "True");
        assert_eq!(cond(&s, "PodReadyToStartContainers"), "True");
        assert_eq!(s.pod_ip.as_deref(), Some("10.1.0.5"));
        let c = &s.container_statuses.as_ref().unwrap()[0];
        assert!(c.ready && c.started == Some(true));
        assert_eq!(c.container_id.as_deref(), Some("containerd://id-app"));
    }

    #[test]
    fn crash_loop_shows_waiting_with_the_last_termination() {
        let mut crashed = running("app");
        crashed.state = ContainerState::Exited;
        crashed.exit_code = 2;
        crashed.finished_at = Some(t(3));
        crashed.restart_count = 4;
        let facts = Facts {
            waiting: HashMap::from([(
                "app".to_owned(),
                Waiting::CrashLoopBackOff {
                    delay: Duration::from_secs(80),
                },
            )]),
            ..Default::default()
        };
        let s = pod_status(&pod(WEB), &observed(vec![crashed]), &facts, None, t(4));
        assert_eq!(
            s.phase.as_deref(),
            Some("Running"),
            "a restarting pod is Running"
        );
        let c = &s.container_statuses.as_ref().unwrap()[0];
        let waiting = c.state.as_ref().unwrap().waiting.as_ref().unwrap();
        assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
        assert!(waiting.message.as_deref().unwrap().contains("back-off 80s"));
        let last = c.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!((last.exit_code, last.reason.as_deref()), (2, Some("Error")));
        assert_eq!(c.restart_count, 4);
        assert_eq!(cond(&s, "Ready"), "False");
    }

    #[test]
    fn finished_pods_succeed_or_fail_by_policy() {
        for (policy, exit, phase) in [
            ("Never", 0, "Succeeded"),
            ("Never", 1, "Failed"),
            ("OnFailure", 0, "Succeeded"),
        ] {
            let mut done = running("app");
            done.state = ContainerState::Exited;
            done.exit_code = exit;
            done.finished_at = Some(t(3));
            let p = pod(&format!("{WEB}  restartPolicy: {policy}\n"));
            let s = pod_status(&p, &observed(vec![done]), &Facts::default(), None, t(4));
            assert_eq!(s.phase.as_deref(), Some(phase), "{policy} {exit}");
            let reason = if exit == 0 { "Completed" } else { "Error" };
            let term = s.container_statuses.as_ref().unwrap()[0]
                .state
                .clone()
                .unwrap()
                .terminated
                .unwrap();
            assert_eq!(term.reason.as_deref(), Some(reason));
        }
    }

    #[test]
    fn pending_while_initializing_and_transition_times_stay() {
        let p = pod("
metadata: {name: web}
spec:
  initContainers:
  - {name: init, image: busybox}
  containers:
  - {name: app, image: busybox}
");
        let facts = Facts {
            waiting: HashMap::from([("app".to_owned(), Waiting::PodInitializing)]),
            ..Default::default()
        };
        let first = pod_status(&p, &observed(vec![running("init")]), &facts, None, t(2));
        assert_eq!(first.phase.as_deref(), Some("Pending"));
        assert_eq!(cond(&first, "Initialized"), "False");
        let app = &first.container_statuses.as_ref().unwrap()[0];
        assert_eq!(
            app.state
                .as_ref()
                .unwrap()
                .waiting
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("PodInitializing")
        );
        let later = pod_status(
            &p,
            &observed(vec![running("init")]),
            &facts,
            Some(&first),
            t(9),
        );
        let when = |s: &PodStatus| {
            s.conditions.as_ref().unwrap()[1]
                .last_transition_time
                .clone()
        };
        assert_eq!(
            when(&first),
            when(&later),
            "unchanged conditions keep their time"
        );
    }

    #[test]
    fn image_errors_show_as_waiting_reasons() {
        let facts = Facts {
            start_errors: HashMap::from([(
                "app".to_owned(),
                (
                    "ErrImageNeverPull".to_owned(),
                    "image \"busybox\" is not present".to_owned(),
                ),
            )]),
            ..Default::default()
        };
        let s = pod_status(&pod(WEB), &observed(vec![]), &facts, None, t(2));
        assert_eq!(s.phase.as_deref(), Some("Pending"));
        let w = s.container_statuses.unwrap()[0]
            .state
            .clone()
            .unwrap()
            .waiting
            .unwrap();
        assert_eq!(w.reason.as_deref(), Some("ErrImageNeverPull"));
    }
}
