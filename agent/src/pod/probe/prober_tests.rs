//! The prober's schedule in paused time, against the fake runtime's exec.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Container, ExecAction, Probe};
use tokio::sync::Notify;
use tokio::time::{sleep_until, Instant};

use super::fake::{FakeRuntime, Reply};
use super::{
    ContainerProbes, ProbeEvent, ProbeEventKind, ProbeFailure, ProbeKind, ProbeState, Reports,
};
use crate::metrics::{self, ProbeResult};

const MS: Duration = Duration::from_millis(1);

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn exec_probe(command: &str) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(vec![command.to_owned()]),
        }),
        ..Default::default()
    }
}

struct Harness {
    runtime: FakeRuntime,
    probes: ContainerProbes,
    changed: Arc<Notify>,
    events: Arc<Mutex<Vec<ProbeEvent>>>,
    origin: Instant,
    /// The pod the probes are counted under in the process-wide metrics: each harness has a
    /// name of its own, so that tests running at once count apart.
    pod: String,
}

impl Harness {
    fn start(runtime: &FakeRuntime, container: Container, started_at: SystemTime) -> Self {
        let changed = Arc::new(Notify::new());
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let origin = Instant::now();
        static HARNESSES: AtomicUsize = AtomicUsize::new(0);
        let pod = format!("prober-test-{}", HARNESSES.fetch_add(1, Ordering::Relaxed));
        let probes = ContainerProbes::spawn(
            runtime.clone(),
            &container,
            super::Target {
                pod_ip: "10.0.0.1".to_owned(),
                container_id: "c1".to_owned(),
                named_ports: Vec::new(),
            },
            started_at,
            Reports {
                on_change: changed.clone(),
                on_event: move |event| sink.lock().expect("events lock").push(event),
                metrics: metrics::global().probe_series("default", &pod, "uid-1", "app"),
            },
        );
        Harness {
            runtime: runtime.clone(),
            probes,
            changed,
            events,
            origin,
            pod,
        }
    }

    fn now(runtime: &FakeRuntime, container: Container) -> Self {
        Self::start(runtime, container, SystemTime::now())
    }

    /// The state at `at` seconds after the start (in paused time).
    async fn state_at(&self, at: f64) -> ProbeState {
        sleep_until(self.origin + secs(at)).await;
        self.probes.state()
    }

    fn calls(&self, command: &str) -> Vec<Duration> {
        self.runtime.calls(command, self.origin)
    }

    fn events(&self) -> Vec<ProbeEvent> {
        self.events.lock().expect("events lock").clone()
    }

    /// `prober_probe_total` of this harness's container for `probe` and `result`, as
    /// `/metrics/probes` shows it; 0 for a series not there.
    fn counted(&self, probe: ProbeKind, result: ProbeResult) -> f64 {
        let series = format!(
            r#"prober_probe_total{{container="app",namespace="default",pod="{}",pod_uid="uid-1",probe_type="{}",result="{}"}}"#,
            self.pod,
            probe.as_str(),
            result.as_str()
        );
        metrics::sample(&metrics::encode_probes(), &series).unwrap_or(0.0)
    }
}

fn state(started: bool, ready: bool) -> ProbeState {
    ProbeState {
        started,
        ready,
        failed: None,
    }
}

#[tokio::test(start_paused = true)]
async fn readiness_runs_as_soon_as_the_container_starts() {
    let runtime = FakeRuntime::default();
    runtime.script("ready", [], Reply::Exit(0, ""));
    let h = Harness::now(
        &runtime,
        Container {
            readiness_probe: Some(exec_probe("ready")),
            ..Default::default()
        },
    );
    assert_eq!(h.probes.state(), state(true, false));

    h.changed.notified().await;
    assert_eq!(h.origin.elapsed(), Duration::ZERO);
    assert_eq!(h.probes.state(), state(true, true));
    assert_eq!(h.calls("ready"), [Duration::ZERO]);
    assert!(h.events().is_empty(), "successes make no events");
}

#[tokio::test(start_paused = true)]
async fn a_container_without_probes_is_started_and_ready() {
    let h = Harness::now(&FakeRuntime::default(), Container::default());
    assert_eq!(h.probes.state(), state(true, true));
    assert_eq!(h.state_at(100.0).await, state(true, true));
}

#[tokio::test(start_paused = true)]
async fn initial_delay_counts_from_the_container_start() {
    let runtime = FakeRuntime::default();
    runtime.script("ready", [], Reply::Exit(0, ""));
    let delayed = |seconds| Container {
        readiness_probe: Some(Probe {
            initial_delay_seconds: Some(seconds),
            ..exec_probe("ready")
        }),
        ..Default::default()
    };

    let h = Harness::now(&runtime, delayed(5));
    assert_eq!(h.state_at(4.9).await, state(true, false));
    assert!(h.calls("ready").is_empty());
    assert_eq!(h.state_at(5.001).await, state(true, true));
    assert_eq!(h.calls("ready"), [secs(5.0)]);
    drop(h);

    // bosun adopting a container that started 3 s ago: 2 s of the delay are left. The
    // start time is wall-clock, so allow for the moments between reading it and spawning.
    let runtime = FakeRuntime::default();
    runtime.script("ready", [], Reply::Exit(0, ""));
    let h = Harness::start(
        &runtime,
        delayed(5),
        SystemTime::now() - Duration::from_secs(3),
    );
    h.changed.notified().await;
    let first = h.calls("ready")[0];
    assert!(
        first <= secs(2.0) && first > secs(2.0) - 50 * MS,
        "{first:?}"
    );

    // Long past the delay: at once.
    let runtime = FakeRuntime::default();
    runtime.script("ready", [], Reply::Exit(0, ""));
    let h = Harness::start(
        &runtime,
        delayed(5),
        SystemTime::now() - Duration::from_secs(60),
    );
    h.changed.notified().await;
    assert_eq!(h.calls("ready"), [Duration::ZERO]);
}

#[tokio::test(start_paused = true)]
async fn each_probe_repeats_on_its_own_period() {
    let runtime = FakeRuntime::default();
    runtime
        .script("ready", [], Reply::Exit(0, ""))
        .script("live", [], Reply::Exit(0, ""));
    let h = Harness::now(
        &runtime,
        Container {
            readiness_probe: Some(Probe {
                period_seconds: Some(3),
                ..exec_probe("ready")
            }),
            liveness_probe: Some(exec_probe("live")),
            ..Default::default()
        },
    );
    h.state_at(21.5).await;
    let at = |list: &[f64]| list.iter().map(|s| secs(*s)).collect::<Vec<_>>();
    assert_eq!(
        h.calls("ready"),
        at(&[0.0, 3.0, 6.0, 9.0, 12.0, 15.0, 18.0, 21.0])
    );
    assert_eq!(h.calls("live"), at(&[0.0, 10.0, 20.0]));
}

#[tokio::test(start_paused = true)]
async fn thresholds_flip_readiness_both_ways() {
    let runtime = FakeRuntime::default();
    let ok = || Reply::Exit(0, "");
    let bad = || Reply::Exit(1, "not yet");
    runtime.script(
        "ready",
        [ok(), ok(), bad(), ok(), bad(), bad(), bad(), ok()],
        ok(),
    );
    let h = Harness::now(
        &runtime,
        Container {
            readiness_probe: Some(Probe {
                period_seconds: Some(1),
                success_threshold: Some(2),
                failure_threshold: Some(3),
                ..exec_probe("ready")
            }),
            ..Default::default()
        },
    );
    let mut seen = Vec::new();
    for second in 0..10 {
        seen.push(h.state_at(f64::from(second) + 0.5).await.ready);
    }
    assert_eq!(
        seen,
        // ok ok(2: ready) bad ok bad bad bad(3: not ready) ok ok(2: ready) ok
        [false, true, true, true, true, true, false, false, true, true]
    );
    let failures = h
        .events()
        .iter()
        .filter(|e| e.kind == ProbeEventKind::Failed)
        .count();
    assert_eq!(failures, 4, "one event per failed attempt");
    assert_eq!(h.events()[0].to_string(), "Readiness probe failed: not yet");
}

#[tokio::test(start_paused = true)]
async fn a_failed_liveness_probe_is_reported_and_stops_probing() {
    let runtime = FakeRuntime::default();
    runtime
        .script("live", [], Reply::Exit(1, "boom"))
        .script("ready", [], Reply::Exit(0, ""));
    let h = Harness::now(
        &runtime,
        Container {
            liveness_probe: Some(Probe {
                termination_grace_period_seconds: Some(5),
                ..exec_probe("live")
            }),
            readiness_probe: Some(exec_probe("ready")),
            ..Default::default()
        },
    );
    assert_eq!(h.state_at(19.5).await.failed, None);
    assert_eq!(
        h.state_at(20.5).await.failed,
        Some(ProbeFailure {
            probe: ProbeKind::Liveness,
            message: "boom".to_owned(),
            grace: Some(Duration::from_secs(5)),
        })
    );
    h.state_at(95.0).await;
    assert_eq!(h.calls("live"), [secs(0.0), secs(10.0), secs(20.0)]);
    assert_eq!(
        h.calls("ready").len(),
        10,
        "readiness goes on, as in kubelet"
    );
    let events: Vec<String> = h.events().iter().map(ToString::to_string).collect();
    assert_eq!(events, ["Liveness probe failed: boom"; 3]);
}

#[tokio::test(start_paused = true)]
async fn startup_gates_liveness_and_readiness() {
    let runtime = FakeRuntime::default();
    runtime
        .script(
            "start",
            [Reply::Exit(1, "starting"), Reply::Exit(1, "starting")],
            Reply::Exit(0, ""),
        )
        .script("live", [], Reply::Exit(0, ""))
        .script("ready", [], Reply::Exit(0, ""));
    let h = Harness::now(
        &runtime,
        Container {
            startup_probe: Some(Probe {
                period_seconds: Some(2),
                failure_threshold: Some(5),
                ..exec_probe("start")
            }),
            liveness_probe: Some(exec_probe("live")),
            readiness_probe: Some(exec_probe("ready")),
            ..Default::default()
        },
    );
    assert_eq!(h.probes.state(), state(false, false));
    assert_eq!(h.state_at(3.9).await, state(false, false));
    assert!(h.calls("live").is_empty() && h.calls("ready").is_empty());

    assert_eq!(h.state_at(4.001).await, state(true, true));
    h.state_at(30.0).await;
    assert_eq!(
        h.calls("start"),
        [secs(0.0), secs(2.0), secs(4.0)],
        "a startup probe stops once it succeeded"
    );
    assert_eq!(h.calls("live")[0], secs(4.0), "right after startup");
    assert_eq!(h.calls("ready")[0], secs(4.0), "right after startup");
}

#[tokio::test(start_paused = true)]
async fn a_failed_startup_probe_stops_everything() {
    let runtime = FakeRuntime::default();
    runtime
        .script("start", [], Reply::Exit(1, "never"))
        .script("live", [], Reply::Exit(0, ""));
    let h = Harness::now(
        &runtime,
        Container {
            startup_probe: Some(Probe {
                period_seconds: Some(1),
                failure_threshold: Some(2),
                ..exec_probe("start")
            }),
            liveness_probe: Some(exec_probe("live")),
            ..Default::default()
        },
    );
    let failed = h.state_at(1.5).await;
    assert_eq!(
        failed,
        ProbeState {
            started: false,
            ready: false,
            failed: Some(ProbeFailure {
                probe: ProbeKind::Startup,
                message: "never".to_owned(),
                grace: None,
            }),
        }
    );
    h.state_at(60.0).await;
    assert_eq!(h.calls("start").len(), 2);
    assert!(h.calls("live").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_hanging_probe_times_out_without_stalling_the_others() {
    let runtime = FakeRuntime::default();
    runtime
        .script("hang", [], Reply::Hang)
        .script("ready", [], Reply::Exit(0, ""));
    let h = Harness::now(
        &runtime,
        Container {
            liveness_probe: Some(Probe {
                timeout_seconds: Some(2),
                failure_threshold: Some(1),
                ..exec_probe("hang")
            }),
            readiness_probe: Some(exec_probe("ready")),
            ..Default::default()
        },
    );
    h.changed.notified().await;
    assert_eq!(h.origin.elapsed(), Duration::ZERO);
    assert_eq!(h.probes.state(), state(true, true));

    h.changed.notified().await;
    assert_eq!(h.origin.elapsed(), secs(2.0));
    let failed = h.probes.state().failed.expect("liveness failed");
    assert_eq!(failed.message, "command \"hang\" timed out");
}

#[tokio::test(start_paused = true)]
async fn the_runtimes_deadline_exceeded_is_a_timeout() {
    let runtime = FakeRuntime::default();
    runtime.script("live", [], Reply::Status(tonic::Code::DeadlineExceeded));
    let h = Harness::now(
        &runtime,
        Container {
            liveness_probe: Some(Probe {
                failure_threshold: Some(1),
                ..exec_probe("live")
            }),
            ..Default::default()
        },
    );
    h.changed.notified().await;
    let failed = h.probes.state().failed.expect("liveness failed");
    assert_eq!(failed.message, "command \"live\" timed out");
    assert_eq!(
        h.calls("live").len(),
        1,
        "a timeout is a result, not retried"
    );
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_cannot_run_is_retried_then_thrown_away() {
    let runtime = FakeRuntime::default();
    runtime.script(
        "ready",
        [Reply::Exit(0, "")],
        Reply::Status(tonic::Code::Unavailable),
    );
    let h = Harness::now(
        &runtime,
        Container {
            readiness_probe: Some(Probe {
                failure_threshold: Some(1),
                ..exec_probe("ready")
            }),
            ..Default::default()
        },
    );
    assert_eq!(h.state_at(0.5).await, state(true, true));
    assert_eq!(h.state_at(10.5).await, state(true, true), "not a failure");
    assert_eq!(
        h.calls("ready"),
        [secs(0.0), secs(10.0), secs(10.0), secs(10.0)]
    );
    let events = h.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, ProbeEventKind::Errored);
    assert!(
        events[0]
            .to_string()
            .starts_with("Readiness probe errored: "),
        "{}",
        events[0]
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_handle_stops_probing() {
    let runtime = FakeRuntime::default();
    runtime.script("live", [], Reply::Exit(0, ""));
    let h = Harness::now(
        &runtime,
        Container {
            liveness_probe: Some(exec_probe("live")),
            ..Default::default()
        },
    );
    h.state_at(5.0).await;
    let Harness { probes, origin, .. } = h;
    drop(probes);
    sleep_until(origin + secs(60.0)).await;
    assert_eq!(runtime.calls("live", origin), [Duration::ZERO]);
}

#[tokio::test(start_paused = true)]
async fn every_run_is_counted_by_probe_and_result() {
    let runtime = FakeRuntime::default();
    runtime
        .script(
            "ready",
            [Reply::Exit(0, ""), Reply::Exit(0, "")],
            Reply::Exit(1, "no"),
        )
        .script("live", [], Reply::Status(tonic::Code::Unavailable));
    let h = Harness::now(
        &runtime,
        Container {
            readiness_probe: Some(exec_probe("ready")),
            liveness_probe: Some(exec_probe("live")),
            ..Default::default()
        },
    );
    // Runs at 0, 10 and 20 s: two successes, then a failure; the liveness probe never runs.
    h.state_at(25.0).await;
    assert_eq!(
        h.counted(ProbeKind::Readiness, ProbeResult::Successful),
        2.0
    );
    assert_eq!(h.counted(ProbeKind::Readiness, ProbeResult::Failed), 1.0);
    // Tried three times at each period and thrown away each time, but counted once a run.
    assert_eq!(h.calls("live").len(), 9);
    assert_eq!(h.counted(ProbeKind::Liveness, ProbeResult::Unknown), 3.0);
    assert_eq!(h.counted(ProbeKind::Liveness, ProbeResult::Failed), 0.0);
    assert_eq!(h.counted(ProbeKind::Startup, ProbeResult::Successful), 0.0);
}
