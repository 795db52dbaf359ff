//! Scheduling a container's probes, with kubelet's prober worker semantics: periods, initial
//! delay, thresholds, the startup probe gating the others, and a failed liveness or startup
//! probe stopping its prober until the container is replaced.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Container, Probe};
use tokio::sync::{watch, Notify};
use tokio::time::{Instant, MissedTickBehavior};

use super::action::{positive_or, run_probe};
use super::{Outcome, ProbeKind, Target};
use crate::metrics::{ProbeResult, ProbeSeries};
use crate::runtime::Runtime;

/// How many times a probe that could not be run is tried again at once before its result is
/// thrown away, as kubelet does (`maxProbeRetries`).
const ATTEMPTS: usize = 3;

/// What a container's probes say, after thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeState {
    /// The container has no startup probe, or it has succeeded.
    pub started: bool,
    /// Started, and the readiness probe (if any) has succeeded last.
    pub ready: bool,
    /// The liveness or startup probe has failed: the container is to be killed and replaced.
    pub failed: Option<ProbeFailure>,
}

/// A liveness or startup probe that reached its failure threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeFailure {
    pub probe: ProbeKind,
    /// What the last failed attempt said.
    pub message: String,
    /// The probe's own `terminationGracePeriodSeconds`, which overrides the pod's when the
    /// container is killed for this failure.
    pub grace: Option<Duration>,
}

/// A probe attempt worth an event on the pod: a failure, a warning, or a probe that could not
/// be run. Successes make none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeEvent {
    pub probe: ProbeKind,
    pub kind: ProbeEventKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeEventKind {
    Failed,
    /// Could not be run; the attempt counted neither way.
    Errored,
    /// Counted as a success.
    Warning,
}

impl ProbeEvent {
    /// The event's reason, as kubelet names it.
    pub fn reason(&self) -> &'static str {
        match self.kind {
            ProbeEventKind::Failed | ProbeEventKind::Errored => "Unhealthy",
            ProbeEventKind::Warning => "ProbeWarning",
        }
    }
}

/// kubelet's event message: `Liveness probe failed: ...`.
impl fmt::Display for ProbeEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = match self.kind {
            ProbeEventKind::Failed => "failed",
            ProbeEventKind::Errored => "errored",
            ProbeEventKind::Warning => "warning",
        };
        write!(f, "{} probe {verb}: {}", self.probe, self.message)
    }
}

/// Where a container's probes tell what they find.
pub struct Reports<E> {
    /// Woken by every change of [`ProbeState`].
    pub on_change: Arc<Notify>,
    /// Given every failed, errored or warning run.
    pub on_event: E,
    /// Counts every run, by probe and result (`/metrics/probes`).
    pub metrics: ProbeSeries,
}

/// The probes of one running container, probing in a task of their own. Dropping this
/// stops them; a restarted container gets a new one, as kubelet starts a new worker for a new
/// container ID.
#[derive(Debug)]
pub struct ContainerProbes {
    state: watch::Receiver<ProbeState>,
    task: tokio::task::AbortHandle,
}

impl ContainerProbes {
    /// Starts probing `container` (its startup, liveness and readiness probes) at `target`.
    /// `started_at` is when the container started, which may be well in the past when bosun
    /// adopts a running container after a restart; initial delays count from it.
    ///
    /// What the probes find goes to `reports`. Must be called within a tokio runtime.
    pub fn spawn<R: Runtime>(
        runtime: R,
        container: &Container,
        target: Target,
        started_at: SystemTime,
        reports: Reports<impl Fn(ProbeEvent) + Send + Sync + 'static>,
    ) -> Self {
        Self::resume(runtime, container, target, started_at, None, reports)
    }

    /// As [`ContainerProbes::spawn`], for a container that was already probed before this
    /// process (bosun restarted): `previous` is what its status last said, `(started,
    /// ready)`. A container that had started does not run its startup probe again, and keeps
    /// its readiness until its readiness probe says otherwise, so a restart of bosun never
    /// takes a Ready pod out of Ready.
    pub fn resume<R: Runtime>(
        runtime: R,
        container: &Container,
        target: Target,
        started_at: SystemTime,
        previous: Option<(bool, bool)>,
        reports: Reports<impl Fn(ProbeEvent) + Send + Sync + 'static>,
    ) -> Self {
        let mut probes = Probes {
            startup: container.startup_probe.clone(),
            liveness: container.liveness_probe.clone(),
            readiness: container.readiness_probe.clone(),
        };
        let (was_started, was_ready) = previous.unwrap_or_default();
        if was_started {
            probes.startup = None;
        }
        let started = probes.startup.is_none();
        let (state, receiver) = watch::channel(ProbeState {
            started,
            // kubelet's initial readiness is a failure; without a probe, ready = started.
            ready: started && (probes.readiness.is_none() || was_ready),
            failed: None,
        });
        // Turned into the runtime's clock once, here, so periods and delays are tokio time
        // (which tests pause) from then on.
        let since_start = SystemTime::now()
            .duration_since(started_at)
            .unwrap_or_default();
        let Reports {
            on_change,
            on_event,
            metrics,
        } = reports;
        let prober = Prober {
            runtime,
            target,
            state,
            on_change,
            on_event,
            metrics,
            spawned: Instant::now(),
            since_start,
        };
        let task = tokio::spawn(prober.run(probes)).abort_handle();
        ContainerProbes {
            state: receiver,
            task,
        }
    }

    /// The state now.
    pub fn state(&self) -> ProbeState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every change of the state, for callers that would rather await
    /// it than be woken through `on_change`.
    pub fn watch(&self) -> watch::Receiver<ProbeState> {
        self.state.clone()
    }
}

impl Drop for ContainerProbes {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Probes {
    startup: Option<Probe>,
    liveness: Option<Probe>,
    readiness: Option<Probe>,
}

/// A probe's schedule and thresholds with Kubernetes' defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timing {
    initial_delay: Duration,
    period: Duration,
    success_threshold: u32,
    failure_threshold: u32,
    grace: Option<Duration>,
}

impl Timing {
    fn of(kind: ProbeKind, probe: &Probe) -> Self {
        let threshold = |v, default| u32::try_from(positive_or(v, default)).unwrap_or(u32::MAX);
        Timing {
            initial_delay: Duration::from_secs(
                probe
                    .initial_delay_seconds
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(0),
            ),
            period: Duration::from_secs(positive_or(probe.period_seconds, 10)),
            // The API requires 1 for liveness and startup probes; a manifest from disk that
            // says otherwise is read as 1 rather than leaving a failed container unrestarted.
            success_threshold: match kind {
                ProbeKind::Readiness => threshold(probe.success_threshold, 1),
                ProbeKind::Liveness | ProbeKind::Startup => 1,
            },
            failure_threshold: threshold(probe.failure_threshold, 3),
            grace: probe
                .termination_grace_period_seconds
                .and_then(|s| u64::try_from(s).ok())
                .filter(|s| *s > 0)
                .map(Duration::from_secs),
        }
    }
}

/// kubelet's memory of one probe's results: the last result and how many times in a row it
/// came.
#[derive(Debug)]
struct Counter {
    timing: Timing,
    last: Option<bool>,
    run: u32,
}

impl Counter {
    fn new(timing: Timing) -> Self {
        Counter {
            timing,
            last: None,
            run: 0,
        }
    }

    /// Counts one result; answers it once it has come often enough in a row to count.
    fn record(&mut self, success: bool) -> Option<bool> {
        if self.last == Some(success) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(success);
            self.run = 1;
        }
        let needed = if success {
            self.timing.success_threshold
        } else {
            self.timing.failure_threshold
        };
        (self.run >= needed).then_some(success)
    }
}

struct Prober<R, E> {
    runtime: R,
    target: Target,
    state: watch::Sender<ProbeState>,
    on_change: Arc<Notify>,
    on_event: E,
    metrics: ProbeSeries,
    /// When the prober was spawned, and how long the container had been running by then.
    spawned: Instant,
    since_start: Duration,
}

impl<R: Runtime, E: Fn(ProbeEvent) + Send + Sync> Prober<R, E> {
    async fn run(self, probes: Probes) {
        if let Some(startup) = &probes.startup {
            let has_readiness = probes.readiness.is_some();
            let started = self
                .until_settled(ProbeKind::Startup, startup, |state, success| {
                    if success {
                        state.started = true;
                        state.ready = !has_readiness;
                    }
                })
                .await;
            if !started {
                return;
            }
        }
        let liveness = async {
            if let Some(probe) = &probes.liveness {
                self.until_settled(ProbeKind::Liveness, probe, |_, _| {})
                    .await;
            }
        };
        let readiness = async {
            if let Some(probe) = &probes.readiness {
                self.until_settled(ProbeKind::Readiness, probe, |state, ready| {
                    state.ready = ready;
                })
                .await;
            }
        };
        tokio::join!(liveness, readiness);
    }

    /// Runs one probe on its period until it settles: a startup probe when it succeeds (true),
    /// a liveness or startup probe when it fails (false); a readiness probe never does.
    /// `apply` writes a result that reached its threshold into the state.
    async fn until_settled(
        &self,
        kind: ProbeKind,
        probe: &Probe,
        apply: impl Fn(&mut ProbeState, bool),
    ) -> bool {
        let timing = Timing::of(kind, probe);
        // The first attempt is due as soon as the container has started (or the startup probe
        // succeeded) and the initial delay is over; not one period later.
        let delay_left = timing.initial_delay.saturating_sub(self.since_start);
        let first = (self.spawned + delay_left).max(Instant::now());
        let mut ticks = tokio::time::interval_at(first, timing.period);
        // An attempt that outlasts the period is followed by the next one at once, and the
        // schedule then goes on as before (kubelet's ticker keeps one missed tick).
        ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let mut counter = Counter::new(timing);
        loop {
            ticks.tick().await;
            let Some(result) = self.attempt(kind, probe).await else {
                continue;
            };
            let success = result.is_ok();
            let Some(counted) = counter.record(success) else {
                continue;
            };
            self.update(|state| apply(state, counted));
            match (kind, result) {
                (ProbeKind::Startup, Ok(())) => return true,
                (ProbeKind::Liveness | ProbeKind::Startup, Err(message)) => {
                    // kubelet stops probing the container here: it is about to be killed, and
                    // probing a dying container gains nothing.
                    self.update(|state| {
                        state.failed = Some(ProbeFailure {
                            probe: kind,
                            message,
                            grace: timing.grace,
                        });
                    });
                    return false;
                }
                _ => {}
            }
        }
    }

    /// One attempt, tried again at once if it could not be run. Counts it, and reports what is
    /// worth an event; answers `None` for an attempt to throw away, else `Err` with the failure's
    /// message.
    async fn attempt(&self, kind: ProbeKind, probe: &Probe) -> Option<Result<(), String>> {
        let began = Instant::now();
        // Boxed: a probe's future (an exec, an HTTP or gRPC request) is large, and the
        // prober's task, alive as long as its container, would otherwise hold its room for
        // good, once per probe of the container.
        let mut outcome = Box::pin(run_probe(&self.runtime, probe, &self.target)).await;
        for _ in 1..ATTEMPTS {
            if !matches!(outcome, Outcome::Unknown(_)) {
                break;
            }
            outcome = Box::pin(run_probe(&self.runtime, probe, &self.target)).await;
        }
        let result = match &outcome {
            Outcome::Success | Outcome::Warning(_) => ProbeResult::Successful,
            Outcome::Failure(_) => ProbeResult::Failed,
            Outcome::Unknown(_) => ProbeResult::Unknown,
        };
        self.metrics.record(kind, result, began.elapsed());
        let event = |event_kind, message| {
            tracing::debug!(container = %self.target.container_id, probe = %kind, ?event_kind, %message, "probe");
            (self.on_event)(ProbeEvent {
                probe: kind,
                kind: event_kind,
                message,
            });
        };
        match outcome {
            Outcome::Success => Some(Ok(())),
            Outcome::Warning(message) => {
                event(ProbeEventKind::Warning, message);
                Some(Ok(()))
            }
            Outcome::Failure(message) => {
                event(ProbeEventKind::Failed, message.clone());
                Some(Err(message))
            }
            Outcome::Unknown(error) => {
                event(ProbeEventKind::Errored, error.to_string());
                None
            }
        }
    }

    fn update(&self, change: impl FnOnce(&mut ProbeState)) {
        let changed = self.state.send_if_modified(|state| {
            let before = state.clone();
            change(state);
            *state != before
        });
        if changed {
            self.on_change.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(success_threshold: u32, failure_threshold: u32) -> Timing {
        Timing {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(10),
            success_threshold,
            failure_threshold,
            grace: None,
        }
    }

    #[test]
    fn a_result_counts_once_it_came_often_enough_in_a_row() {
        let mut counter = Counter::new(timing(2, 3));
        let seen: Vec<_> = [
            true, true, true, false, false, true, false, false, false, false,
        ]
        .into_iter()
        .map(|r| counter.record(r))
        .collect();
        assert_eq!(
            seen,
            [
                None,
                Some(true),
                Some(true),
                None,
                None,
                None,
                None,
                None,
                Some(false),
                Some(false)
            ]
        );
    }

    #[test]
    fn defaults_apply_and_liveness_needs_one_success() {
        let probe = Probe {
            success_threshold: Some(3),
            period_seconds: Some(0),
            termination_grace_period_seconds: Some(7),
            ..Default::default()
        };
        let liveness = Timing::of(ProbeKind::Liveness, &probe);
        assert_eq!(liveness.success_threshold, 1);
        assert_eq!(liveness.failure_threshold, 3);
        assert_eq!(liveness.period, Duration::from_secs(10));
        assert_eq!(liveness.grace, Some(Duration::from_secs(7)));
        assert_eq!(
            Timing::of(ProbeKind::Readiness, &probe).success_threshold,
            3
        );
    }

    #[test]
    fn events_read_as_kubelet_writes_them() {
        let event = ProbeEvent {
            probe: ProbeKind::Liveness,
            kind: ProbeEventKind::Failed,
            message: "HTTP probe failed with statuscode: 500".to_owned(),
        };
        assert_eq!(
            event.to_string(),
            "Liveness probe failed: HTTP probe failed with statuscode: 500"
        );
        assert_eq!(event.reason(), "Unhealthy");
        let warning = ProbeEvent {
            kind: ProbeEventKind::Warning,
            ..event
        };
        assert_eq!(warning.reason(), "ProbeWarning");
    }
}
