//! The node's Prometheus metrics, under kubelet's and kube-proxy's names and with their
//! meanings, as the kubelet API serves them on `/metrics` and `/metrics/probes`; bosun's own
//! are prefixed `bosun_`.
//!
//! One process-wide set ([`global`]), which the PLEG, the pod workers, the probers and the
//! service proxy record into, as kubelet's components record into its `metrics` package.
//! Recording never fails and never waits on I/O: a scrape only reads what is here. This module
//! knows what each metric means; it does not know where the figures come from.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::{prometheus_text, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::pod::probe::ProbeKind;

/// The `Content-Type` of both pages: Prometheus' text format 0.0.4, as kubelet answers a
/// scraper that does not ask for another.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Prometheus' default buckets, which kubelet's histograms use unless they say otherwise.
const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// kubelet's buckets for pod start durations, from half a second to an hour.
const POD_START_BUCKETS: [f64; 25] = [
    0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 240.0,
    300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
];

/// kube-proxy's buckets for network programming: 0, a quarter and half a second, each second
/// to a minute, every 5 s to 2 min, every 30 s to 5 min.
fn network_programming_buckets() -> Vec<f64> {
    let quarters = [0.25, 0.5];
    let seconds = (1..60).map(f64::from);
    let five_seconds = (0..12).map(|i| 60.0 + 5.0 * f64::from(i));
    let half_minutes = (0..7).map(|i| 120.0 + 30.0 * f64::from(i));
    std::iter::once(0.0)
        .chain(quarters)
        .chain(seconds)
        .chain(five_seconds)
        .chain(half_minutes)
        .collect()
}

fn default_histogram() -> Histogram {
    Histogram::new(DEFAULT_BUCKETS)
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// `/metrics` in Prometheus' text format.
pub fn encode() -> String {
    global().encode()
}

/// `/metrics/probes` in Prometheus' text format.
pub fn encode_probes() -> String {
    global().encode_probes()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerStateLabels {
    container_state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation_type: &'static str,
}

// The probe labels are in the order kubelet's output has them (client_golang sorts them).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeResultLabels {
    container: String,
    namespace: String,
    pod: String,
    pod_uid: String,
    probe_type: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeDurationLabels {
    container: String,
    namespace: String,
    pod: String,
    probe_type: &'static str,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// Every metric, and the two registries that serve them.
#[derive(Debug)]
pub struct Metrics {
    /// `/metrics`.
    registry: Registry,
    /// `/metrics/probes`.
    probes: Registry,
    node_name: Family<NodeLabels, Gauge>,
    running_pods: Gauge,
    running_containers: Family<ContainerStateLabels, Gauge>,
    relist_duration: Histogram,
    relist_interval: Histogram,
    pod_start_duration: Histogram,
    pod_worker_duration: HistogramFamily<OperationLabels>,
    probe_total: Family<ProbeResultLabels, Counter>,
    probe_duration: HistogramFamily<ProbeDurationLabels>,
    sync_proxy_rules_duration: Histogram,
    network_programming_duration: Histogram,
    service_frontends: Gauge,
    service_backends: Gauge,
}

impl Metrics {
    /// A set of its own; the daemon uses [`global`]. Tests make their own to read exact
    /// figures.
    pub fn new() -> Self {
        let metrics = Metrics {
            registry: Registry::default(),
            probes: Registry::default(),
            node_name: Family::default(),
            running_pods: Gauge::default(),
            running_containers: Family::default(),
            relist_duration: default_histogram(),
            relist_interval: default_histogram(),
            pod_start_duration: Histogram::new(POD_START_BUCKETS),
            pod_worker_duration: Family::new_with_constructor(default_histogram),
            probe_total: Family::default(),
            probe_duration: Family::new_with_constructor(default_histogram),
            sync_proxy_rules_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            network_programming_duration: Histogram::new(network_programming_buckets()),
            service_frontends: Gauge::default(),
            service_backends: Gauge::default(),
        };
        metrics.registered()
    }

    // The registry appends a full stop to each help text.
    fn registered(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "kubelet_node_name",
            "The node's name, as a label; the value is always 1",
            self.node_name.clone(),
        );
        r.register(
            "kubelet_running_pods",
            "Number of the node's pods that have a ready pod sandbox, as of the last PLEG relist",
            self.running_pods.clone(),
        );
        r.register(
            "kubelet_running_containers",
            "Number of the node's containers in the runtime by state (created, running, \
             exited or unknown), as of the last PLEG relist",
            self.running_containers.clone(),
        );
        r.register(
            "kubelet_pleg_relist_duration_seconds",
            "Duration in seconds of a PLEG relist: listing every pod sandbox and container \
             in the runtime and comparing them with the last listing",
            self.relist_duration.clone(),
        );
        r.register(
            "kubelet_pleg_relist_interval_seconds",
            "Interval in seconds between the start of a PLEG relist and the start of the last \
             one that succeeded",
            self.relist_interval.clone(),
        );
        r.register(
            "kubelet_pod_start_duration_seconds",
            "Duration in seconds from the pod worker first seeing a pod to the pod's phase \
             first being Running",
            self.pod_start_duration.clone(),
        );
        r.register(
            "kubelet_pod_worker_duration_seconds",
            "Duration in seconds of one sync of a pod by its worker, by operation type: \
             create (the first sync), update (the pod changed) or sync",
            self.pod_worker_duration.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "Duration in seconds of one sync of the service datapath: compiling the Services \
             and EndpointSlices and writing what changed to the maps",
            self.sync_proxy_rules_duration.clone(),
        );
        r.register(
            "kubeproxy_network_programming_duration_seconds",
            "Duration in seconds from the service proxy taking a change of a Service or \
             EndpointSlice to the change being written to the datapath, one observation per \
             changed object",
            self.network_programming_duration.clone(),
        );
        r.register(
            "bosun_service_frontends",
            "Number of Service frontends (address, port and protocol) the last successful sync \
             wrote to the service datapath",
            self.service_frontends.clone(),
        );
        r.register(
            "bosun_service_backends",
            "Number of backends over all Service frontends the last successful sync wrote to \
             the service datapath; a backend of two frontends counts twice",
            self.service_backends.clone(),
        );
        let p = &mut self.probes;
        // No `_total` here: the encoder adds it to counters.
        p.register(
            "prober_probe",
            "Cumulative number of runs of a container's liveness, readiness or startup probe, \
             by result; a probe that could not be run is unknown",
            self.probe_total.clone(),
        );
        p.register(
            "prober_probe_duration_seconds",
            "Duration in seconds of a container's probe that succeeded or could not be run",
            self.probe_duration.clone(),
        );
        self
    }

    pub fn encode(&self) -> String {
        encode_registry(&self.registry)
    }

    pub fn encode_probes(&self) -> String {
        encode_registry(&self.probes)
    }

    /// `kubelet_node_name`: set once, at start.
    pub fn set_node_name(&self, node: &str) {
        self.node_name
            .get_or_create(&NodeLabels {
                node: node.to_owned(),
            })
            .set(1);
    }

    /// What a PLEG relist found: the pods with a ready sandbox and their containers by state.
    pub fn set_running(&self, running_pods: usize, containers: ContainerCounts) {
        self.running_pods.set(count(running_pods));
        for (state, n) in containers.by_state() {
            self.running_containers
                .get_or_create(&ContainerStateLabels {
                    container_state: state,
                })
                .set(count(n));
        }
    }

    pub fn observe_relist(&self, took: Duration) {
        self.relist_duration.observe(took.as_secs_f64());
    }

    pub fn observe_relist_interval(&self, interval: Duration) {
        self.relist_interval.observe(interval.as_secs_f64());
    }

    pub fn observe_pod_start(&self, took: Duration) {
        self.pod_start_duration.observe(took.as_secs_f64());
    }

    pub fn observe_pod_sync(&self, operation: PodSyncType, took: Duration) {
        self.pod_worker_duration
            .get_or_create(&OperationLabels {
                operation_type: operation.as_str(),
            })
            .observe(took.as_secs_f64());
    }

    /// Where the probes of `container` in the pod `namespace/pod` (UID `pod_uid`) are counted.
    pub fn probe_series(
        &self,
        namespace: &str,
        pod: &str,
        pod_uid: &str,
        container: &str,
    ) -> ProbeSeries {
        ProbeSeries {
            totals: self.probe_total.clone(),
            durations: self.probe_duration.clone(),
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
            pod_uid: pod_uid.to_owned(),
            container: container.to_owned(),
        }
    }

    pub fn observe_proxy_sync(&self, took: Duration) {
        self.sync_proxy_rules_duration.observe(took.as_secs_f64());
    }

    pub fn observe_network_programming(&self, took: Duration) {
        self.network_programming_duration
            .observe(took.as_secs_f64());
    }

    /// What the service datapath holds after a successful sync.
    pub fn set_service_datapath(&self, frontends: usize, backends: usize) {
        self.service_frontends.set(count(frontends));
        self.service_backends.set(count(backends));
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn encode_registry(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String fails only if a metric's own encoding does, which these never do;
    // what was written is still served rather than nothing.
    if let Err(e) = prometheus_text::encode(&mut text, registry) {
        tracing::error!(error = %e, "encoding the metrics");
    }
    text
}

/// A count as a gauge holds it; no count on one node comes near `i64::MAX`.
fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// How many of the node's containers the runtime holds, by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContainerCounts {
    pub created: usize,
    pub running: usize,
    pub exited: usize,
    pub unknown: usize,
}

impl ContainerCounts {
    /// Under kubelet's names of the states. Every state is set, zero included, so that a
    /// state no container is in any more reads 0 instead of its last count.
    fn by_state(self) -> [(&'static str, usize); 4] {
        [
            ("created", self.created),
            ("running", self.running),
            ("exited", self.exited),
            ("unknown", self.unknown),
        ]
    }
}

/// kubelet's `SyncPodType`, as far as a pod worker's sync tells them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodSyncType {
    /// The first sync of a pod.
    Create,
    /// A sync after the pod changed.
    Update,
    /// Any other sync: a resync, a runtime change, a probe result.
    Sync,
}

impl PodSyncType {
    pub fn as_str(self) -> &'static str {
        match self {
            PodSyncType::Create => "create",
            PodSyncType::Update => "update",
            PodSyncType::Sync => "sync",
        }
    }
}

/// What one run of a probe came to, in `prober_probe_total`'s words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeResult {
    /// A success or a warning.
    Successful,
    Failed,
    /// The probe could not be run. kubelet throws such a run away without counting it;
    /// bosun throws it away too (it counts towards no threshold) but counts it here, so that
    /// a probe that never runs shows.
    Unknown,
}

impl ProbeResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeResult::Successful => "successful",
            ProbeResult::Failed => "failed",
            ProbeResult::Unknown => "unknown",
        }
    }
}

/// The `/metrics/probes` series of one container of one pod.
#[derive(Clone)]
pub struct ProbeSeries {
    totals: Family<ProbeResultLabels, Counter>,
    durations: HistogramFamily<ProbeDurationLabels>,
    namespace: String,
    pod: String,
    pod_uid: String,
    container: String,
}

impl ProbeSeries {
    /// Counts one run of `probe`. As kubelet, the duration is kept for runs that succeeded or
    /// could not be run: a failure's is mostly its timeout.
    pub fn record(&self, probe: ProbeKind, result: ProbeResult, took: Duration) {
        self.totals
            .get_or_create(&self.result_labels(probe, result))
            .inc();
        if result != ProbeResult::Failed {
            self.durations
                .get_or_create(&self.duration_labels(probe))
                .observe(took.as_secs_f64());
        }
    }

    /// Removes the container's series: its pod is gone (kubelet removes them when the probe's
    /// worker stops).
    pub fn forget(&self) {
        for probe in [
            ProbeKind::Startup,
            ProbeKind::Liveness,
            ProbeKind::Readiness,
        ] {
            for result in [
                ProbeResult::Successful,
                ProbeResult::Failed,
                ProbeResult::Unknown,
            ] {
                self.totals.remove(&self.result_labels(probe, result));
            }
            self.durations.remove(&self.duration_labels(probe));
        }
    }

    fn result_labels(&self, probe: ProbeKind, result: ProbeResult) -> ProbeResultLabels {
        ProbeResultLabels {
            container: self.container.clone(),
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            pod_uid: self.pod_uid.clone(),
            probe_type: probe.as_str(),
            result: result.as_str(),
        }
    }

    fn duration_labels(&self, probe: ProbeKind) -> ProbeDurationLabels {
        ProbeDurationLabels {
            container: self.container.clone(),
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            probe_type: probe.as_str(),
        }
    }
}

/// The value of the sample `series` (name and labels as written) in `text`.
#[cfg(test)]
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has_line(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    #[test]
    fn the_kubelet_families_read_as_kubelet_writes_them() {
        let metrics = Metrics::new();
        metrics.set_node_name("node-a");
        metrics.set_running(
            2,
            ContainerCounts {
                running: 3,
                exited: 1,
                ..ContainerCounts::default()
            },
        );
        metrics.observe_relist(Duration::from_millis(7));
        metrics.observe_relist_interval(Duration::from_secs(1));
        metrics.observe_pod_start(Duration::from_millis(1500));
        metrics.observe_pod_sync(PodSyncType::Create, Duration::from_millis(30));
        metrics.observe_pod_sync(PodSyncType::Sync, Duration::from_millis(2));
        metrics.observe_pod_sync(PodSyncType::Sync, Duration::from_millis(3));
        let text = metrics.encode();

        for line in [
            "# TYPE kubelet_node_name gauge",
            r#"kubelet_node_name{node="node-a"} 1"#,
            "# TYPE kubelet_running_pods gauge",
            "kubelet_running_pods 2",
            "# TYPE kubelet_running_containers gauge",
            r#"kubelet_running_containers{container_state="running"} 3"#,
            r#"kubelet_running_containers{container_state="exited"} 1"#,
            r#"kubelet_running_containers{container_state="created"} 0"#,
            r#"kubelet_running_containers{container_state="unknown"} 0"#,
            "# TYPE kubelet_pleg_relist_duration_seconds histogram",
            r#"kubelet_pleg_relist_duration_seconds_bucket{le="0.005"} 0"#,
            r#"kubelet_pleg_relist_duration_seconds_bucket{le="0.01"} 1"#,
            r#"kubelet_pleg_relist_duration_seconds_bucket{le="+Inf"} 1"#,
            "kubelet_pleg_relist_duration_seconds_count 1",
            "# TYPE kubelet_pleg_relist_interval_seconds histogram",
            r#"kubelet_pleg_relist_interval_seconds_bucket{le="1"} 1"#,
            "# TYPE kubelet_pod_start_duration_seconds histogram",
            r#"kubelet_pod_start_duration_seconds_bucket{le="1"} 0"#,
            r#"kubelet_pod_start_duration_seconds_bucket{le="2"} 1"#,
            r#"kubelet_pod_start_duration_seconds_bucket{le="3600"} 1"#,
            "kubelet_pod_start_duration_seconds_sum 1.5",
            "# TYPE kubelet_pod_worker_duration_seconds histogram",
            r#"kubelet_pod_worker_duration_seconds_count{operation_type="create"} 1"#,
            r#"kubelet_pod_worker_duration_seconds_count{operation_type="sync"} 2"#,
            r#"kubelet_pod_worker_duration_seconds_bucket{operation_type="sync",le="0.005"} 2"#,
        ] {
            assert!(has_line(&text, line), "no {line:?} in:\n{text}");
        }
        assert!(
            text.contains("# HELP kubelet_running_pods Number of the node's pods"),
            "{text}"
        );
        assert!(
            !text.contains("prober_probe"),
            "probes have a page of their own"
        );
        assert!(
            !text.contains("# EOF"),
            "Prometheus' format, not OpenMetrics'"
        );
    }

    #[test]
    fn the_kube_proxy_families_have_its_names_and_buckets() {
        let metrics = Metrics::new();
        metrics.observe_proxy_sync(Duration::from_micros(1500));
        metrics.observe_network_programming(Duration::from_millis(300));
        metrics.observe_network_programming(Duration::from_secs(61));
        metrics.set_service_datapath(4, 9);
        let text = metrics.encode();

        for line in [
            "# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram",
            r#"kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="0.001"} 0"#,
            r#"kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="0.002"} 1"#,
            r#"kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="16.384"} 1"#,
            "# TYPE kubeproxy_network_programming_duration_seconds histogram",
            r#"kubeproxy_network_programming_duration_seconds_bucket{le="0"} 0"#,
            r#"kubeproxy_network_programming_duration_seconds_bucket{le="0.25"} 0"#,
            r#"kubeproxy_network_programming_duration_seconds_bucket{le="0.5"} 1"#,
            r#"kubeproxy_network_programming_duration_seconds_bucket{le="60"} 1"#,
            r#"kubeproxy_network_programming_duration_seconds_bucket{le="65"} 2"#,
            r#"kubeproxy_network_programming_duration_seconds_bucket{le="300"} 2"#,
            "kubeproxy_network_programming_duration_seconds_count 2",
            "# TYPE bosun_service_frontends gauge",
            "bosun_service_frontends 4",
            "bosun_service_backends 9",
        ] {
            assert!(has_line(&text, line), "no {line:?} in:\n{text}");
        }
        assert_eq!(network_programming_buckets().len(), 1 + 2 + 59 + 12 + 7);
    }

    #[test]
    fn probes_are_counted_by_type_and_result_under_their_container() {
        let metrics = Metrics::new();
        let series = metrics.probe_series("default", "web", "uid-1", "app");
        series.record(
            ProbeKind::Readiness,
            ProbeResult::Successful,
            Duration::from_millis(4),
        );
        series.record(
            ProbeKind::Readiness,
            ProbeResult::Successful,
            Duration::from_millis(4),
        );
        series.record(
            ProbeKind::Liveness,
            ProbeResult::Failed,
            Duration::from_secs(1),
        );
        series.record(
            ProbeKind::Startup,
            ProbeResult::Unknown,
            Duration::from_millis(1),
        );
        let text = metrics.encode_probes();

        let labels = r#"container="app",namespace="default",pod="web",pod_uid="uid-1""#;
        assert_eq!(
            sample(
                &text,
                &format!(
                    r#"prober_probe_total{{{labels},probe_type="Readiness",result="successful"}}"#
                )
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                &format!(r#"prober_probe_total{{{labels},probe_type="Liveness",result="failed"}}"#)
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                &format!(r#"prober_probe_total{{{labels},probe_type="Startup",result="unknown"}}"#)
            ),
            Some(1.0),
            "{text}"
        );
        assert!(
            has_line(&text, "# TYPE prober_probe_total counter"),
            "{text}"
        );
        // Durations: of the successes and the run that could not be made, not of the failure.
        let durations = r#"container="app",namespace="default",pod="web""#;
        assert_eq!(
            sample(
                &text,
                &format!(
                    r#"prober_probe_duration_seconds_count{{{durations},probe_type="Readiness"}}"#
                )
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                &format!(
                    r#"prober_probe_duration_seconds_count{{{durations},probe_type="Liveness"}}"#
                )
            ),
            None,
            "{text}"
        );
        assert!(
            !metrics.encode().contains("prober_"),
            "probes stay off /metrics"
        );

        series.forget();
        let text = metrics.encode_probes();
        assert!(!text.contains(r#"pod="web""#), "{text}");
        // A family without series is left out whole, as client_golang leaves it out.
        assert!(!text.contains("# TYPE prober_probe_total"), "{text}");
    }

    #[test]
    fn a_sample_is_found_by_its_whole_series() {
        let text = "a_total{x=\"1\"} 3\na_total 5\n";
        assert_eq!(sample(text, "a_total"), Some(5.0));
        assert_eq!(sample(text, r#"a_total{x="1"}"#), Some(3.0));
        assert_eq!(sample(text, r#"a_total{x="2"}"#), None);
    }
}
