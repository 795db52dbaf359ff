//! Node-pressure eviction (kubelet's `pkg/kubelet/eviction`; the "Node-pressure Eviction"
//! document is the specification): every monitoring period the node's signals are observed
//! from the stats summary, compared with the configured thresholds, turned into the node
//! conditions MemoryPressure, DiskPressure and PIDPressure, and, when a threshold is met
//! past its grace period, node-level resources are reclaimed (disk signals) or one pod is
//! evicted.
//!
//! This file holds the decisions, free of I/O: the configuration and its parsing
//! ([`EvictionConfig::parse`]), the observation of signals from a [`Summary`]
//! ([`observe`]), the manager's state machine with the clock passed in ([`Manager::step`]),
//! the ranking of pods ([`rank`]), kubelet's messages, the local storage limits
//! ([`local_storage_violation`]) and the admission check ([`admit`]). [`run`] drives it
//! against the runtime and the pod store.
//!
//! Where bosun differs: kubelet never evicts a static pod (`IsCriticalPod`). Standalone,
//! every pod bosun runs comes from the manifest directory, so that rule would leave nothing
//! to evict; there, only pods of critical priority (`priority` ≥ 2000000000, or the
//! `system-node-critical`/`system-cluster-critical` priority classes, which resolve to such
//! priorities) are exempt, from eviction and from the admission check alike. In a cluster,
//! kubelet's rule holds: static, mirror and critical-priority pods are never evicted.
//! `allocatableMemory.available` and the split `containerfs.*` signals are not supported,
//! nor the memory cgroup threshold notifier (signals are observed every period only).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodCondition, Taint};
use tokio::time::Instant;

use crate::daemon::admission::{self, Rejection};
use crate::pod::spec::{self, ParsedQuantity, QosClass};
use crate::server::stats::{PodStats, Summary};
use crate::source::CONFIG_SOURCE_ANNOTATION;

/// `status.reason` of an evicted or refused pod, and the reason of its event.
pub const REASON: &str = "Evicted";
/// The node event when a threshold is met.
pub const THRESHOLD_MET: &str = "EvictionThresholdMet";
/// kubelet's grace period for pods evicted by a hard threshold or a local storage limit
/// (`immediateEvictionGracePeriodSeconds`).
pub const IMMEDIATE_GRACE: Duration = Duration::from_secs(1);
/// kubelet's `evictionMonitoringPeriod`.
pub const DEFAULT_MONITORING_PERIOD: Duration = Duration::from_secs(10);
/// kubelet's default `evictionPressureTransitionPeriod`.
pub const DEFAULT_PRESSURE_TRANSITION_PERIOD: Duration = Duration::from_secs(300);
/// How long an eviction waits for the pod's containers to be gone before the next round
/// (kubelet's `podCleanupTimeout`).
const POD_CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

const MEMORY_PRESSURE_TAINT: &str = "node.kubernetes.io/memory-pressure";
const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;
const CRITICAL_PRIORITY_CLASSES: [&str; 2] = ["system-node-critical", "system-cluster-critical"];
const CONFIG_MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// `kubernetes.io/config.source` of pods from the API server.
const API_SOURCE: &str = "api";

// ---- signals and thresholds -----------------------------------------------------------------

/// An eviction signal, as kubelet names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Signal {
    MemoryAvailable,
    NodeFsAvailable,
    NodeFsInodesFree,
    ImageFsAvailable,
    ImageFsInodesFree,
    PidAvailable,
}

impl Signal {
    pub const ALL: [Signal; 6] = [
        Signal::MemoryAvailable,
        Signal::NodeFsAvailable,
        Signal::NodeFsInodesFree,
        Signal::ImageFsAvailable,
        Signal::ImageFsInodesFree,
        Signal::PidAvailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory.available",
            Signal::NodeFsAvailable => "nodefs.available",
            Signal::NodeFsInodesFree => "nodefs.inodesFree",
            Signal::ImageFsAvailable => "imagefs.available",
            Signal::ImageFsInodesFree => "imagefs.inodesFree",
            Signal::PidAvailable => "pid.available",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// The resource the signal starves (kubelet's `signalToResource`).
    pub fn resource(self) -> &'static str {
        match self {
            Signal::MemoryAvailable => "memory",
            Signal::NodeFsAvailable | Signal::ImageFsAvailable => "ephemeral-storage",
            Signal::NodeFsInodesFree | Signal::ImageFsInodesFree => "inodes",
            Signal::PidAvailable => "pids",
        }
    }

    /// The node condition the signal drives (kubelet's `signalToNodeCondition`).
    pub fn condition(self) -> Condition {
        match self {
            Signal::MemoryAvailable => Condition::MemoryPressure,
            Signal::PidAvailable => Condition::PidPressure,
            _ => Condition::DiskPressure,
        }
    }

    fn is_disk(self) -> bool {
        self.condition() == Condition::DiskPressure
    }

    /// Counted in units (inodes, processes) rather than bytes: printed as decimal quantities.
    fn is_count(self) -> bool {
        matches!(
            self,
            Signal::NodeFsInodesFree | Signal::ImageFsInodesFree | Signal::PidAvailable
        )
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node condition eviction sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Condition {
    MemoryPressure,
    DiskPressure,
    PidPressure,
}

impl Condition {
    pub const ALL: [Condition; 3] = [
        Condition::MemoryPressure,
        Condition::DiskPressure,
        Condition::PidPressure,
    ];

    /// The condition's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::MemoryPressure => "MemoryPressure",
            Condition::DiskPressure => "DiskPressure",
            Condition::PidPressure => "PIDPressure",
        }
    }

    /// kubelet's reason and message for the condition, `True` when `pressure`.
    pub fn reason_and_message(self, pressure: bool) -> (&'static str, &'static str) {
        match (self, pressure) {
            (Condition::MemoryPressure, true) => (
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            ),
            (Condition::MemoryPressure, false) => (
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            (Condition::DiskPressure, true) => {
                ("KubeletHasDiskPressure", "kubelet has disk pressure")
            }
            (Condition::DiskPressure, false) => {
                ("KubeletHasNoDiskPressure", "kubelet has no disk pressure")
            }
            (Condition::PidPressure, true) => (
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available",
            ),
            (Condition::PidPressure, false) => (
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
        }
    }

    /// The node event kubelet records when the condition changes to `pressure`.
    pub fn event(self, pressure: bool) -> &'static str {
        match (self, pressure) {
            (Condition::MemoryPressure, true) => "NodeHasInsufficientMemory",
            (Condition::MemoryPressure, false) => "NodeHasSufficientMemory",
            (Condition::DiskPressure, true) => "NodeHasDiskPressure",
            (Condition::DiskPressure, false) => "NodeHasNoDiskPressure",
            (Condition::PidPressure, true) => "NodeHasInsufficientPID",
            (Condition::PidPressure, false) => "NodeHasSufficientPID",
        }
    }
}

/// The node conditions that are True; the others are False.
pub type Pressure = BTreeSet<Condition>;

/// A threshold's value: a quantity, or a share of the signal's capacity.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `bytes` (or units, for inodes and processes), and the quantity as written.
    Quantity { value: i64, text: String },
    /// A fraction of the capacity: `10%` is 0.1.
    Percentage(f64),
}

impl Value {
    /// The value against a capacity (kubelet's `GetThresholdQuantity`).
    pub fn quantity(&self, capacity: i64) -> i64 {
        match self {
            Value::Quantity { value, .. } => *value,
            Value::Percentage(fraction) => (capacity as f64 * fraction) as i64,
        }
    }

    /// The value as kubelet prints it in messages.
    fn display(&self, signal: Signal, capacity: i64) -> String {
        match self {
            Value::Quantity { text, .. } => text.clone(),
            Value::Percentage(_) => format_quantity(self.quantity(capacity), signal),
        }
    }
}

/// One threshold: hard (`grace_period` `None`) or soft.
#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    pub signal: Signal,
    pub value: Value,
    /// `evictionSoftGracePeriod`; `None` for a hard threshold.
    pub grace_period: Option<Duration>,
    /// `evictionMinimumReclaim`: how far past the threshold reclaim must go.
    pub min_reclaim: Option<Value>,
}

impl Threshold {
    pub fn is_hard(&self) -> bool {
        self.grace_period.is_none()
    }

    /// Whether `observed` meets the threshold, counting the minimum reclaim when `enforce`
    /// (kubelet's `thresholdsMet`).
    fn met(&self, observed: &Observation, enforce_min_reclaim: bool) -> bool {
        let mut quantity = self.value.quantity(observed.capacity);
        if enforce_min_reclaim {
            if let Some(min) = &self.min_reclaim {
                quantity = quantity.saturating_add(min.quantity(observed.capacity));
            }
        }
        quantity > observed.available
    }
}

/// The eviction configuration: KubeletConfiguration's `eviction*` fields.
#[derive(Clone, Debug, PartialEq)]
pub struct EvictionConfig {
    pub thresholds: Vec<Threshold>,
    /// `evictionMaxPodGracePeriod`, in seconds.
    pub max_pod_grace_period: i64,
    /// `evictionPressureTransitionPeriod`.
    pub pressure_transition_period: Duration,
    /// bosun's own `evictionMonitoringPeriod` (kubelet's is a fixed 10 s).
    pub monitoring_period: Duration,
}

impl Default for EvictionConfig {
    fn default() -> Self {
        EvictionConfig {
            thresholds: Vec::new(),
            max_pod_grace_period: 0,
            pressure_transition_period: DEFAULT_PRESSURE_TRANSITION_PERIOD,
            monitoring_period: DEFAULT_MONITORING_PERIOD,
        }
    }
}

/// The `eviction*` fields as written in the config file.
#[derive(Clone, Debug)]
pub struct EvictionFields<'a> {
    pub hard: &'a BTreeMap<String, String>,
    pub soft: &'a BTreeMap<String, String>,
    pub soft_grace_period: &'a BTreeMap<String, String>,
    pub minimum_reclaim: &'a BTreeMap<String, String>,
    pub max_pod_grace_period: Option<i64>,
    pub pressure_transition_period: Option<&'a str>,
    pub monitoring_period: Option<&'a str>,
}

static NO_ENTRIES: BTreeMap<String, String> = BTreeMap::new();

impl Default for EvictionFields<'_> {
    fn default() -> Self {
        EvictionFields {
            hard: &NO_ENTRIES,
            soft: &NO_ENTRIES,
            soft_grace_period: &NO_ENTRIES,
            minimum_reclaim: &NO_ENTRIES,
            max_pod_grace_period: None,
            pressure_transition_period: None,
            monitoring_period: None,
        }
    }
}

/// A bad `eviction*` field: names the field, the key and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: invalid value {value:?}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub value: String,
    pub reason: String,
}

impl EvictionConfig {
    /// Parses the fields as kubelet's `ParseThresholdConfig` does: signals by name,
    /// quantities or percentages, a zero value disabling the threshold, every soft threshold
    /// with a grace period.
    pub fn parse(fields: &EvictionFields<'_>) -> Result<Self, ConfigError> {
        let bad = |field: &str, value: &str, reason: String| ConfigError {
            field: field.to_owned(),
            value: value.to_owned(),
            reason,
        };
        let signal = |field: &str, key: &str| {
            Signal::parse(key).ok_or_else(|| {
                bad(
                    field,
                    key,
                    format!(
                        "unsupported eviction signal; must be one of {}",
                        Signal::ALL.map(Signal::as_str).join(", ")
                    ),
                )
            })
        };
        let mut min_reclaims = BTreeMap::new();
        for (key, text) in fields.minimum_reclaim {
            let field = format!("evictionMinimumReclaim[{key}]");
            let signal = signal("evictionMinimumReclaim", key)?;
            let value = parse_value(text).map_err(|reason| bad(&field, text, reason))?;
            min_reclaims.insert(signal, value);
        }
        let mut graces = BTreeMap::new();
        for (key, text) in fields.soft_grace_period {
            let field = format!("evictionSoftGracePeriod[{key}]");
            let signal = signal("evictionSoftGracePeriod", key)?;
            let grace =
                crate::util::go_duration(text).map_err(|reason| bad(&field, text, reason))?;
            graces.insert(signal, grace);
        }
        let mut thresholds = Vec::new();
        for (hard, map) in [(true, fields.hard), (false, fields.soft)] {
            let name = if hard { "evictionHard" } else { "evictionSoft" };
            for (key, text) in map {
                let field = format!("{name}[{key}]");
                let signal = signal(name, key)?;
                let value = parse_value(text).map_err(|reason| bad(&field, text, reason))?;
                let disabled = match &value {
                    Value::Quantity { value, .. } => *value == 0,
                    Value::Percentage(p) => *p == 0.0,
                };
                let grace_period = if hard {
                    None
                } else {
                    Some(*graces.get(&signal).ok_or_else(|| {
                        bad(
                            &field,
                            text,
                            format!("no grace period given in evictionSoftGracePeriod for {key}"),
                        )
                    })?)
                };
                if disabled {
                    continue;
                }
                thresholds.push(Threshold {
                    signal,
                    value,
                    grace_period,
                    min_reclaim: min_reclaims.get(&signal).cloned(),
                });
            }
        }
        let max_pod_grace_period = fields.max_pod_grace_period.unwrap_or(0);
        if max_pod_grace_period < 0 {
            return Err(bad(
                "evictionMaxPodGracePeriod",
                &max_pod_grace_period.to_string(),
                "must not be negative".into(),
            ));
        }
        let duration = |field: &str, text: Option<&str>, default: Duration| match text {
            None => Ok(default),
            Some(text) => crate::util::go_duration(text).map_err(|reason| bad(field, text, reason)),
        };
        let monitoring_period = duration(
            "evictionMonitoringPeriod",
            fields.monitoring_period,
            DEFAULT_MONITORING_PERIOD,
        )?;
        if monitoring_period.is_zero() {
            return Err(bad(
                "evictionMonitoringPeriod",
                fields.monitoring_period.unwrap_or_default(),
                "must be positive".into(),
            ));
        }
        Ok(EvictionConfig {
            thresholds,
            max_pod_grace_period,
            pressure_transition_period: duration(
                "evictionPressureTransitionPeriod",
                fields.pressure_transition_period,
                DEFAULT_PRESSURE_TRANSITION_PERIOD,
            )?,
            monitoring_period,
        })
    }

    /// The hard threshold's value for `signal`, if there is one (allocatable subtracts it).
    pub fn hard_value(&self, signal: Signal) -> Option<&Value> {
        self.thresholds
            .iter()
            .find(|t| t.signal == signal && t.is_hard())
            .map(|t| &t.value)
    }
}

/// A quantity or a percentage, as kubelet's `parseThresholdStatement` reads them.
fn parse_value(text: &str) -> Result<Value, String> {
    if let Some(percent) = text.strip_suffix('%') {
        let percent: f64 = percent.parse().map_err(|_| "not a percentage".to_owned())?;
        if !(0.0..=100.0).contains(&percent) || percent.is_nan() {
            return Err("a percentage must be between 0% and 100%".into());
        }
        return Ok(Value::Percentage(percent / 100.0));
    }
    let quantity = ParsedQuantity::parse(text).map_err(|e| format!("not a quantity: {e}"))?;
    if quantity.is_negative() {
        return Err("must not be negative".into());
    }
    Ok(Value::Quantity {
        value: quantity.value(),
        text: text.to_owned(),
    })
}

/// A byte or unit count as `resource.NewQuantity` prints it: bytes in BinarySI (the largest
/// power of 1024 that divides them, `Ki` to `Ei`), counts in DecimalSI (`k` to `E`).
pub fn format_quantity(value: i64, signal: Signal) -> String {
    if signal.is_count() {
        format_si(value, 1000, &["", "k", "M", "G", "T", "P", "E"])
    } else {
        format_bytes(value)
    }
}

/// Bytes as a BinarySI quantity prints them.
pub fn format_bytes(value: i64) -> String {
    // Below 1024 kubelet prints a plain number whatever the format.
    if value.abs() < 1024 {
        return value.to_string();
    }
    format_si(value, 1024, &["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"])
}

fn format_si(value: i64, base: i64, suffixes: &[&str]) -> String {
    let mut number = value;
    let mut index = 0;
    while number != 0 && number % base == 0 && index + 1 < suffixes.len() {
        number /= base;
        index += 1;
    }
    format!("{number}{}", suffixes[index])
}

// ---- observations ---------------------------------------------------------------------------

/// One signal's observed value and the capacity percentages are taken of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    pub available: i64,
    pub capacity: i64,
}

pub type Observations = BTreeMap<Signal, Observation>;

fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The signals as kubelet's `makeSignalObservations` reads them from the summary: memory
/// from the node's working set (capacity = available + working set), the node file system
/// from bosun's root directory's, the image file system from the runtime's, PIDs from the
/// node's task limit and count.
pub fn observe(summary: &Summary) -> Observations {
    let node = &summary.node;
    let mut observations = Observations::new();
    if let Some(memory) = &node.memory {
        if let (Some(available), Some(working_set)) =
            (memory.available_bytes, memory.working_set_bytes)
        {
            observations.insert(
                Signal::MemoryAvailable,
                Observation {
                    available: int(available),
                    capacity: int(available.saturating_add(working_set)),
                },
            );
        }
    }
    let image_fs = node.runtime.as_ref().and_then(|r| r.image_fs.as_ref());
    for (fs, bytes, inodes) in [
        (
            node.fs.as_ref(),
            Signal::NodeFsAvailable,
            Signal::NodeFsInodesFree,
        ),
        (
            image_fs,
            Signal::ImageFsAvailable,
            Signal::ImageFsInodesFree,
        ),
    ] {
        let Some(fs) = fs else { continue };
        if let (Some(available), Some(capacity)) = (fs.available_bytes, fs.capacity_bytes) {
            observations.insert(
                bytes,
                Observation {
                    available: int(available),
                    capacity: int(capacity),
                },
            );
        }
        if let (Some(free), Some(total)) = (fs.inodes_free, fs.inodes) {
            observations.insert(
                inodes,
                Observation {
                    available: int(free),
                    capacity: int(total),
                },
            );
        }
    }
    if let Some(rlimit) = &node.rlimit {
        if let (Some(max), Some(current)) = (rlimit.maxpid, rlimit.curproc) {
            observations.insert(
                Signal::PidAvailable,
                Observation {
                    available: max.saturating_sub(current),
                    capacity: max,
                },
            );
        }
    }
    observations
}

// ---- the manager's state machine ------------------------------------------------------------

/// What the manager keeps between rounds (kubelet's `managerImpl` state), by threshold index.
#[derive(Debug)]
pub struct Manager {
    config: EvictionConfig,
    first_observed: BTreeMap<usize, Instant>,
    conditions_last_observed: BTreeMap<Condition, Instant>,
    /// Thresholds met past their grace period and not yet resolved with their minimum
    /// reclaim.
    met: BTreeSet<usize>,
    conditions: Pressure,
}

/// What one round decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The node conditions that are True now.
    pub conditions: Pressure,
    /// The threshold to reclaim for, when one is met past its grace period: memory first,
    /// then the others in configuration order.
    pub reclaim: Option<Threshold>,
    /// Every threshold met past its grace period (for the message's threshold quantity).
    pub met: Vec<Threshold>,
}

impl Manager {
    pub fn new(config: EvictionConfig) -> Self {
        Manager {
            config,
            first_observed: BTreeMap::new(),
            conditions_last_observed: BTreeMap::new(),
            met: BTreeSet::new(),
            conditions: Pressure::new(),
        }
    }

    pub fn config(&self) -> &EvictionConfig {
        &self.config
    }

    /// The conditions as of the last round.
    pub fn conditions(&self) -> &Pressure {
        &self.conditions
    }

    /// One round of kubelet's `synchronize` up to the choice of what to reclaim: thresholds
    /// met now (or met before and not yet past their minimum reclaim), when each was first
    /// seen, the conditions held True for the transition period after their last sighting,
    /// and the thresholds whose grace period has passed.
    pub fn step(&mut self, observations: &Observations, now: Instant) -> Decision {
        let thresholds = &self.config.thresholds;
        let met_now = |index: &usize, enforce: bool| {
            let threshold = &thresholds[*index];
            observations
                .get(&threshold.signal)
                .is_some_and(|observed| threshold.met(observed, enforce))
        };
        let mut met: BTreeSet<usize> = (0..thresholds.len())
            .filter(|i| met_now(i, false))
            .collect();
        met.extend(self.met.iter().filter(|i| met_now(i, true)));

        self.first_observed.retain(|i, _| met.contains(i));
        for index in &met {
            self.first_observed.entry(*index).or_insert(now);
        }
        for index in &met {
            self.conditions_last_observed
                .insert(thresholds[*index].signal.condition(), now);
        }
        let transition = self.config.pressure_transition_period;
        self.conditions_last_observed
            .retain(|_, seen| now.saturating_duration_since(*seen) < transition);
        self.conditions = self.conditions_last_observed.keys().copied().collect();

        self.met = self
            .first_observed
            .iter()
            .filter(|(index, since)| {
                let grace = thresholds[**index].grace_period.unwrap_or_default();
                now.saturating_duration_since(**since) >= grace
            })
            .map(|(index, _)| *index)
            .collect();
        let met: Vec<Threshold> = self.met.iter().map(|i| thresholds[*i].clone()).collect();
        let reclaim = met
            .iter()
            .find(|t| t.signal == Signal::MemoryAvailable)
            .or_else(|| met.first())
            .cloned();
        Decision {
            conditions: self.conditions.clone(),
            reclaim,
            met,
        }
    }

    /// Whether every threshold is resolved, minimum reclaim included, by `observations`
    /// (after node-level reclaim).
    pub fn resolved(&self, observations: &Observations) -> bool {
        !self.config.thresholds.iter().any(|t| {
            observations
                .get(&t.signal)
                .is_some_and(|observed| t.met(observed, true))
        })
    }

    /// The grace period an eviction for `threshold` gives `pod`: kubelet's immediate one for
    /// a hard threshold; for a soft one, `evictionMaxPodGracePeriod`, or the pod's own
    /// `terminationGracePeriodSeconds` when that is shorter.
    pub fn grace_period(&self, threshold: &Threshold, pod: &Pod) -> Duration {
        if threshold.is_hard() {
            return IMMEDIATE_GRACE;
        }
        let max = self.config.max_pod_grace_period;
        let own = pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        Duration::from_secs(u64::try_from(own.min(max)).unwrap_or(0))
    }
}

// ---- pods -----------------------------------------------------------------------------------

/// Whether eviction leaves `pod` alone (kubelet's `IsCriticalPod`); see the module
/// documentation for `cluster`.
pub fn is_critical(pod: &Pod, cluster: bool) -> bool {
    let annotations = pod.metadata.annotations.as_ref();
    let is_static = annotations
        .and_then(|a| a.get(CONFIG_SOURCE_ANNOTATION))
        .is_some_and(|s| s != API_SOURCE);
    let is_mirror = annotations.is_some_and(|a| a.contains_key(CONFIG_MIRROR_ANNOTATION));
    let spec = pod.spec.as_ref();
    let priority = spec
        .and_then(|s| s.priority)
        .is_some_and(|p| p >= SYSTEM_CRITICAL_PRIORITY);
    let class = spec
        .and_then(|s| s.priority_class_name.as_deref())
        .is_some_and(|c| CRITICAL_PRIORITY_CLASSES.contains(&c));
    (cluster && (is_static || is_mirror)) || priority || (!cluster && class)
}

/// The eviction admit handler: with no pressure every pod is admitted, critical pods always
/// are; under memory pressure alone, pods that are not BestEffort, and BestEffort pods that
/// tolerate the memory-pressure taint; any other pressure refuses the rest.
pub fn admit(pressure: &Pressure, pod: &Pod, cluster: bool) -> Result<(), Rejection> {
    if pressure.is_empty() || is_critical(pod, cluster) {
        return Ok(());
    }
    if pressure.len() == 1 && pressure.contains(&Condition::MemoryPressure) {
        if spec::qos_class(pod) != QosClass::BestEffort {
            return Ok(());
        }
        let taint = Taint {
            key: MEMORY_PRESSURE_TAINT.to_owned(),
            effect: "NoSchedule".to_owned(),
            ..Taint::default()
        };
        let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_deref());
        if tolerations
            .unwrap_or_default()
            .iter()
            .any(|t| admission::tolerates(t, &taint))
        {
            return Ok(());
        }
    }
    let names: Vec<&str> = pressure.iter().map(|c| c.as_str()).collect();
    Err(Rejection {
        reason: REASON.to_owned(),
        message: format!("The node had condition: [{}]. ", names.join(" ")),
    })
}

/// What a pod uses, from the summary and from its directories.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodUsage {
    /// The pod cgroup's working set.
    pub memory: Option<i64>,
    /// Writable layers, logs and local volumes.
    pub ephemeral_storage: Option<i64>,
    pub inodes: Option<i64>,
    pub processes: Option<i64>,
    pub containers: Vec<ContainerUsage>,
    /// The bytes of each emptyDir on disk, by volume name.
    pub volumes: BTreeMap<String, i64>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerUsage {
    pub name: String,
    pub memory: Option<i64>,
    /// The writable layer and the logs.
    pub ephemeral_storage: Option<i64>,
}

/// A pod's request for `resource` (init containers and overhead counted, as kubelet does).
fn request(pod: &Pod, resource: &str) -> i64 {
    if resource == "inodes" {
        return 0;
    }
    admission::pod_requests(pod)
        .get(resource)
        .map_or(0, |q| q.value())
}

fn priority(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

/// Orders `pods` for eviction for `signal`, first to go first (kubelet's rank functions):
/// memory and disk — pods without stats, then those using more than they request, then
/// lower priority, then more use above the request; PIDs — lower priority, then more
/// processes.
pub fn rank(pods: &mut [Arc<Pod>], signal: Signal, usage: &HashMap<String, PodUsage>) {
    let stats = |pod: &Pod| pod.metadata.uid.as_deref().and_then(|uid| usage.get(uid));
    let used = |pod: &Pod| -> Option<i64> {
        let stats = stats(pod)?;
        match signal {
            Signal::MemoryAvailable => stats.memory,
            Signal::NodeFsInodesFree | Signal::ImageFsInodesFree => stats.inodes,
            Signal::PidAvailable => stats.processes,
            _ => stats.ephemeral_storage,
        }
    };
    let resource = signal.resource();
    pods.sort_by(|a, b| {
        let (ua, ub) = (used(a), used(b));
        if signal == Signal::PidAvailable {
            return priority(a)
                .cmp(&priority(b))
                .then_with(|| ub.unwrap_or(0).cmp(&ua.unwrap_or(0)));
        }
        // Without stats first.
        let (Some(ua), Some(ub)) = (ua, ub) else {
            return ua.is_some().cmp(&ub.is_some());
        };
        let (ra, rb) = (request(a, resource), request(b, resource));
        let exceeds = |used: i64, requested: i64| used > requested;
        exceeds(ub, rb)
            .cmp(&exceeds(ua, ra))
            .then_with(|| priority(a).cmp(&priority(b)))
            .then_with(|| (ub - rb).cmp(&(ua - ra)))
    });
}

/// kubelet's eviction message for a threshold: the starved resource, the threshold and what
/// was available, and each container using more than it requests.
pub fn eviction_message(
    threshold: &Threshold,
    met: &[Threshold],
    observations: &Observations,
    pod: &Pod,
    usage: Option<&PodUsage>,
) -> String {
    let resource = threshold.signal.resource();
    let mut message = format!("The node was low on resource: {resource}. ");
    // The first threshold met for the resource, as kubelet's getThresholdMetInfo finds it.
    let first = met
        .iter()
        .find(|t| t.signal.resource() == resource)
        .and_then(|t| Some((t, observations.get(&t.signal)?)));
    if let Some((t, observed)) = first {
        message += &format!(
            "Threshold quantity: {}, available: {}. ",
            t.value.display(t.signal, observed.capacity),
            format_quantity(observed.available, t.signal)
        );
    }
    let Some(usage) = usage else {
        return message;
    };
    let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
    for container in containers {
        let Some(stats) = usage.containers.iter().find(|c| c.name == container.name) else {
            continue;
        };
        let used = match resource {
            "memory" => stats.memory,
            "ephemeral-storage" => stats.ephemeral_storage,
            _ => None,
        };
        let Some(used) = used else { continue };
        let requested = container
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get(resource))
            .and_then(|q| {
                ParsedQuantity::parse(&q.0)
                    .ok()
                    .map(|p| (p.value(), q.0.clone()))
            });
        let (requested, requested_text) = requested.unwrap_or((0, "0".to_owned()));
        if used > requested {
            message += &format!(
                "Container {} was using {}, request is {}, has larger consumption of {resource}. ",
                container.name,
                format_bytes(used),
                requested_text
            );
        }
    }
    message
}

/// A local storage limit `pod` is over, with kubelet's message: an emptyDir past its
/// `sizeLimit`, the pod past the sum of its containers' `ephemeral-storage` limits, or a
/// container past its own (kubelet's `localStorageEviction`, in its order).
/// Whether [`local_storage_violation`] can find anything in `pod`: an `emptyDir` with a
/// `sizeLimit`, or a container with an `ephemeral-storage` limit.
fn has_local_storage_limit(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let sized_empty_dir = spec
        .volumes
        .iter()
        .flatten()
        .any(|v| v.empty_dir.as_ref().is_some_and(|e| e.size_limit.is_some()));
    let storage_limit = spec.containers.iter().any(|c| {
        c.resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .is_some_and(|l| l.contains_key("ephemeral-storage"))
    });
    sized_empty_dir || storage_limit
}

pub fn local_storage_violation(pod: &Pod, usage: &PodUsage) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    for volume in spec.volumes.iter().flatten() {
        let Some(empty_dir) = &volume.empty_dir else {
            continue;
        };
        let Some(limit) = &empty_dir.size_limit else {
            continue;
        };
        let Ok(parsed) = ParsedQuantity::parse(&limit.0) else {
            continue;
        };
        let used = usage.volumes.get(&volume.name);
        if parsed.is_positive() && used.is_some_and(|used| *used > parsed.value()) {
            return Some(format!(
                "Usage of EmptyDir volume {:?} exceeds the limit {:?}. ",
                volume.name, limit.0
            ));
        }
    }
    let limit_of = |c: &k8s_openapi::api::core::v1::Container| {
        let limit = c
            .resources
            .as_ref()?
            .limits
            .as_ref()?
            .get("ephemeral-storage")?;
        ParsedQuantity::parse(&limit.0).ok()
    };
    let limits: Vec<ParsedQuantity> = spec.containers.iter().filter_map(limit_of).collect();
    if !limits.is_empty() {
        let total = limits
            .iter()
            .fold(ParsedQuantity::ZERO, |sum, q| sum.saturating_add(*q));
        if usage
            .ephemeral_storage
            .is_some_and(|used| used > total.value())
        {
            return Some(format!(
                "Pod ephemeral local storage usage exceeds the total limit of containers {}. ",
                format_bytes(total.value())
            ));
        }
    }
    for container in &spec.containers {
        let Some(limit) = limit_of(container).filter(|l| !l.is_zero()) else {
            continue;
        };
        let used = usage
            .containers
            .iter()
            .find(|c| c.name == container.name)
            .and_then(|c| c.ephemeral_storage);
        if used.is_some_and(|used| used > limit.value()) {
            let text = container
                .resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .and_then(|l| l.get("ephemeral-storage"))
                .map(|q| q.0.clone())
                .unwrap_or_default();
            return Some(format!(
                "Container {} exceeded its local ephemeral storage limit {text:?}. ",
                container.name
            ));
        }
    }
    None
}

/// The status an evicted pod ends with: phase Failed, reason `Evicted`, the message, and
/// the DisruptionTarget condition kubelet adds.
#[derive(Clone, Debug, PartialEq)]
pub struct Eviction {
    pub message: String,
    pub grace_period: Duration,
    /// Whether the status gets the DisruptionTarget condition: for threshold evictions, not
    /// for local storage limits, as in kubelet.
    pub disruption_target: bool,
}

impl Eviction {
    /// The condition kubelet adds to an evicted pod's status.
    pub fn condition(&self) -> PodCondition {
        PodCondition {
            type_: "DisruptionTarget".to_owned(),
            status: "True".to_owned(),
            reason: Some("TerminationByKubelet".to_owned()),
            message: Some(self.message.clone()),
            last_transition_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                crate::events::now(),
            )),
            ..PodCondition::default()
        }
    }
}

// ---- usage from the summary and the pods' directories ---------------------------------------

/// Bytes and inodes under `path`, as `du` counts them (allocated blocks), not following
/// links and not crossing into other file systems' mounts below it.
pub fn disk_usage(path: &Path) -> Option<(i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::symlink_metadata(path).ok()?;
    let device = root.dev();
    let mut bytes: u64 = 0;
    let mut inodes: u64 = 0;
    let mut stack = vec![(path.to_path_buf(), root)];
    while let Some((path, metadata)) = stack.pop() {
        if metadata.dev() != device {
            continue;
        }
        bytes = bytes.saturating_add(metadata.blocks().saturating_mul(512));
        inodes += 1;
        if metadata.is_dir() {
            for entry in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                if let Ok(m) = entry.metadata() {
                    stack.push((entry.path(), m));
                }
            }
        }
    }
    Some((int(bytes), int(inodes)))
}

/// Where a pod's disk usage is read: its log directory and its emptyDirs on disk.
#[derive(Clone, Debug)]
pub struct PodDirs {
    pub pods_dir: PathBuf,
    pub ctx: Arc<spec::NodeContext>,
}

/// A pod's usage: memory, processes and writable layers from the summary's `stats` (when the
/// pod has a running container), logs and emptyDirs on disk from its directories.
pub fn pod_usage(pod: &Pod, stats: Option<&PodStats>, dirs: &PodDirs) -> PodUsage {
    let mut usage = PodUsage::default();
    let log_dir = spec::pod_log_directory(pod, &dirs.ctx).ok();
    let mut total: Option<(i64, i64)> = None;
    let mut add = |(bytes, inodes): (i64, i64)| {
        let (b, i) = total.unwrap_or((0, 0));
        total = Some((b.saturating_add(bytes), i.saturating_add(inodes)));
    };
    if let Some(stats) = stats {
        usage.memory = stats
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes)
            .map(int);
        usage.processes = stats
            .process_stats
            .as_ref()
            .and_then(|p| p.process_count)
            .map(int);
        for container in &stats.containers {
            let rootfs = container.rootfs.as_ref();
            let layer = rootfs.and_then(|r| r.used_bytes).map(int);
            let layer_inodes = rootfs.and_then(|r| r.inodes_used).map_or(0, int);
            let logs = log_dir
                .as_ref()
                .and_then(|dir| disk_usage(&dir.join(&container.name)));
            let (log_bytes, log_inodes) = logs.unwrap_or((0, 0));
            if let Some(layer) = layer {
                add((layer, layer_inodes));
            }
            add((log_bytes, log_inodes));
            usage.containers.push(ContainerUsage {
                name: container.name.clone(),
                memory: container
                    .memory
                    .as_ref()
                    .and_then(|m| m.working_set_bytes)
                    .map(int),
                ephemeral_storage: Some(layer.unwrap_or(0).saturating_add(log_bytes)),
            });
        }
    }
    if let Some(uid) = pod.metadata.uid.as_deref() {
        let empty_dirs = dirs
            .pods_dir
            .join(uid)
            .join("volumes/kubernetes.io~empty-dir");
        for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let on_disk = volume
                .empty_dir
                .as_ref()
                .is_some_and(|e| e.medium.as_deref().unwrap_or_default() != "Memory");
            if !on_disk {
                continue;
            }
            if let Some((bytes, inodes)) = disk_usage(&empty_dirs.join(&volume.name)) {
                usage.volumes.insert(volume.name.clone(), bytes);
                add((bytes, inodes));
            }
        }
    }
    if let Some((bytes, inodes)) = total {
        usage.ephemeral_storage = Some(bytes);
        usage.inodes = Some(inodes);
    }
    usage
}

// ---- the driver -----------------------------------------------------------------------------

/// An eviction the manager asks of the pod's worker.
#[derive(Debug)]
pub struct EvictRequest {
    pub uid: String,
    pub eviction: Eviction,
}

/// What the driver reads and where it reports.
pub struct Driver {
    pub manager: Manager,
    pub runtime: bosun_cri::CriClient,
    pub stats: Arc<crate::server::stats::StatsProvider>,
    /// The pod store the status manager writes: the active pods, and whether an evicted
    /// pod has been stopped.
    pub pods: crate::store::PodStore,
    pub events: crate::events::Recorder,
    pub dirs: PodDirs,
    /// In a cluster (see [`is_critical`]).
    pub cluster: bool,
    /// The node conditions, for admission and the Node status.
    pub pressure: tokio::sync::watch::Sender<Pressure>,
    pub evict: tokio::sync::mpsc::UnboundedSender<EvictRequest>,
    /// When each image was first seen: images younger than kubelet's `imageMinimumGCAge`
    /// are not removed.
    pub images_seen: HashMap<String, Instant>,
}

/// kubelet's default `imageMinimumGCAge`.
const IMAGE_MINIMUM_GC_AGE: Duration = Duration::from_secs(120);

/// Pods that are neither terminal nor being terminated.
fn active_pods(pods: &crate::store::PodStore) -> Vec<Arc<Pod>> {
    pods.list()
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Failed" | "Succeeded"))
        })
        .collect()
}

impl Driver {
    /// Observes, decides and acts every monitoring period, for as long as the task runs.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(self.manager.config().monitoring_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.images_seen.is_empty() {
                // The images there are when bosun starts count from then, as kubelet's image
                // manager detects them.
                reclaim::note_images(&self.runtime, &mut self.images_seen).await;
            }
            if let Some(uid) = self.round().await {
                self.wait_for_cleanup(&uid).await;
            }
        }
    }

    /// One round; returns the UID of the pod it evicted, if any.
    async fn round(&mut self) -> Option<String> {
        // The node's signals first; its pods' usage only when it can matter: a threshold is
        // met (to rank them), or a pod has a local storage limit to check. Reading every
        // pod's usage each round cost more than anything else the daemon does while idle.
        let node = match self.stats.node_signals(&self.runtime).await {
            Ok(node) => node,
            Err(e) => {
                tracing::warn!(error = %e, "eviction manager: reading the node's signals");
                return None;
            }
        };
        let observations = observe(&node);
        let before = self.manager.conditions().clone();
        let decision = self.manager.step(&observations, Instant::now());
        self.report_conditions(&before, &decision.conditions);

        let active = active_pods(&self.pods);
        if decision.reclaim.is_none() && !active.iter().any(|pod| has_local_storage_limit(pod)) {
            return None;
        }
        let summary = match self.stats.summary(&self.runtime).await {
            Ok(summary) => summary,
            Err(e) => {
                tracing::warn!(error = %e, "eviction manager: reading the stats summary");
                return None;
            }
        };
        let by_uid: HashMap<&str, &PodStats> = summary
            .pods
            .iter()
            .map(|p| (p.pod_ref.uid.as_str(), p))
            .collect();
        let usage: HashMap<String, PodUsage> = active
            .iter()
            .filter_map(|pod| {
                let uid = pod.metadata.uid.clone()?;
                let stats = by_uid.get(uid.as_str()).copied();
                Some((uid, pod_usage(pod, stats, &self.dirs)))
            })
            .collect();

        for pod in &active {
            let Some(stats) = pod.metadata.uid.as_deref().and_then(|u| usage.get(u)) else {
                continue;
            };
            if let Some(message) = local_storage_violation(pod, stats) {
                let eviction = Eviction {
                    message,
                    grace_period: IMMEDIATE_GRACE,
                    disruption_target: false,
                };
                if let Some(uid) = self.evict(pod, eviction) {
                    return Some(uid);
                }
            }
        }

        let threshold = decision.reclaim?;
        let resource = threshold.signal.resource();
        tracing::info!(resource, "eviction manager: attempting to reclaim");
        self.events.record(
            self.events.node_reference(),
            crate::events::EventType::Warning,
            THRESHOLD_MET,
            format!("Attempting to reclaim {resource}"),
        );
        if threshold.signal.is_disk() && self.reclaim_node_level().await {
            tracing::info!(
                resource,
                "eviction manager: able to reduce resource pressure without evicting pods"
            );
            return None;
        }
        let mut ranked = active;
        rank(&mut ranked, threshold.signal, &usage);
        for pod in &ranked {
            let stats = pod.metadata.uid.as_deref().and_then(|u| usage.get(u));
            let eviction = Eviction {
                message: eviction_message(&threshold, &decision.met, &observations, pod, stats),
                grace_period: self.manager.grace_period(&threshold, pod),
                disruption_target: true,
            };
            if let Some(uid) = self.evict(pod, eviction) {
                return Some(uid);
            }
        }
        tracing::info!("eviction manager: unable to evict any pods from the node");
        None
    }

    /// Asks for `pod`'s eviction unless it is critical; returns its UID when asked.
    fn evict(&self, pod: &Arc<Pod>, eviction: Eviction) -> Option<String> {
        let name = crate::pod::worker::pod_name(pod);
        if is_critical(pod, self.cluster) {
            tracing::error!(pod = %name, "eviction manager: cannot evict a critical pod");
            return None;
        }
        let uid = pod.metadata.uid.clone()?;
        self.events.warning(pod, REASON, eviction.message.clone());
        tracing::info!(pod = %name, message = %eviction.message, "eviction manager: evicting pod");
        let _ = self.evict.send(EvictRequest {
            uid: uid.clone(),
            eviction,
        });
        Some(uid)
    }

    /// Waits until the evicted pod's status is Failed, at most kubelet's cleanup timeout.
    async fn wait_for_cleanup(&self, uid: &str) {
        let deadline = Instant::now() + POD_CLEANUP_TIMEOUT;
        while Instant::now() < deadline {
            let done = self.pods.list().iter().all(|p| {
                p.metadata.uid.as_deref() != Some(uid)
                    || p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
            });
            if done {
                tracing::info!(%uid, "eviction manager: pod is evicted successfully");
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tracing::info!(%uid, "eviction manager: timed out waiting for the pod to be cleaned up");
    }

    /// Logs, records node events for, and publishes a change of the node conditions.
    fn report_conditions(&self, before: &Pressure, now: &Pressure) {
        for condition in Condition::ALL {
            let (was, is) = (before.contains(&condition), now.contains(&condition));
            if was == is {
                continue;
            }
            let event = condition.event(is);
            tracing::info!(
                condition = condition.as_str(),
                status = is,
                "node condition changed"
            );
            self.events.record(
                self.events.node_reference(),
                crate::events::EventType::Normal,
                event,
                format!("Node {} status is now: {event}", self.dirs.ctx.node_name),
            );
        }
        self.pressure.send_if_modified(|held| {
            let changed = held != now;
            held.clone_from(now);
            changed
        });
    }

    /// Removes dead containers and unused images, as kubelet does before evicting for a disk
    /// signal; returns whether every threshold is resolved afterwards.
    async fn reclaim_node_level(&mut self) -> bool {
        let held: std::collections::HashSet<String> = self
            .pods
            .list()
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        if let Err(e) = reclaim::dead_containers(&self.runtime, &held).await {
            tracing::info!(error = %e, "eviction manager: removing dead containers");
        }
        reclaim::note_images(&self.runtime, &mut self.images_seen).await;
        let old_enough: std::collections::HashSet<String> = self
            .images_seen
            .iter()
            .filter(|(_, seen)| seen.elapsed() >= IMAGE_MINIMUM_GC_AGE)
            .map(|(id, _)| id.clone())
            .collect();
        if let Err(e) = reclaim::unused_images(&self.runtime, &old_enough).await {
            tracing::info!(error = %e, "eviction manager: removing unused images");
        }
        match self.stats.summary(&self.runtime).await {
            Ok(summary) => self.manager.resolved(&observe(&summary)),
            Err(e) => {
                tracing::warn!(error = %e, "eviction manager: reading the stats summary after reclaim");
                false
            }
        }
    }
}

/// Node-level reclaim through CRI (kubelet's container and image garbage collection, as the
/// eviction manager calls it).
mod reclaim {
    use bosun_cri::{api, CriClient, CriError};

    use crate::pod::observed::keys;

    /// Removes the exited containers of bosun's sandboxes that are no longer ready, except
    /// those of the pods bosun still holds (`held`, by UID), whose status their containers
    /// make.
    pub async fn dead_containers(
        runtime: &CriClient,
        held: &std::collections::HashSet<String>,
    ) -> Result<(), CriError> {
        let sandboxes = runtime.list_pod_sandbox(None).await?;
        // Only bosun's sandboxes, never the runtime's other tenants'; of those, the ones
        // that no longer run.
        let stopped: std::collections::HashSet<String> = sandboxes
            .iter()
            .filter(|s| {
                s.labels.get(keys::MANAGED_BY).map(String::as_str) == Some(keys::MANAGED_BY_VALUE)
            })
            .filter(|s| s.state != api::PodSandboxState::SandboxReady as i32)
            .map(|s| s.id.clone())
            .collect();
        for container in runtime.list_containers(None).await? {
            let exited = container.state == api::ContainerState::ContainerExited as i32;
            let uid = container.labels.get(keys::POD_UID);
            let held = uid.is_some_and(|uid| held.contains(uid));
            if exited && !held && stopped.contains(&container.pod_sandbox_id) {
                runtime.remove_container(&container.id).await?;
            }
        }
        Ok(())
    }

    /// Records when each image the runtime holds was first seen.
    pub async fn note_images(
        runtime: &CriClient,
        seen: &mut std::collections::HashMap<String, tokio::time::Instant>,
    ) {
        match runtime.list_images(None).await {
            Ok(images) => {
                let now = tokio::time::Instant::now();
                seen.retain(|id, _| images.iter().any(|i| i.id == *id));
                for image in images {
                    seen.entry(image.id).or_insert(now);
                }
            }
            Err(e) => tracing::debug!(error = %e, "eviction manager: listing images"),
        }
    }

    /// Removes the images no container uses, among those `old_enough` (by ID), except the
    /// runtime's sandbox image (which kubelet pins). Without knowing the sandbox image,
    /// removes nothing.
    pub async fn unused_images(
        runtime: &CriClient,
        old_enough: &std::collections::HashSet<String>,
    ) -> Result<(), CriError> {
        let status = runtime.status(true).await?;
        let Some(sandbox_image) = status
            .info
            .get("config")
            .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
            .and_then(|c| c.get("sandboxImage")?.as_str().map(str::to_owned))
        else {
            tracing::info!("eviction manager: the runtime does not name its sandbox image; no image is removed");
            return Ok(());
        };
        let used: std::collections::HashSet<String> = runtime
            .list_containers(None)
            .await?
            .into_iter()
            .flat_map(|c| [c.image_ref, c.image.map(|i| i.image).unwrap_or_default()])
            .collect();
        for image in runtime.list_images(None).await? {
            let names = || image.repo_tags.iter().chain(image.repo_digests.iter());
            let in_use = used.contains(&image.id) || names().any(|n| used.contains(n));
            let young = !old_enough.contains(&image.id);
            if in_use || young || image.pinned || names().any(|n| *n == sandbox_image) {
                continue;
            }
            tracing::info!(image = %image.id, "eviction manager: removing an unused image");
            runtime.remove_image(&image.id).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "eviction_tests.rs"]
mod tests;
