//! Requests, limits and what kubelet derives from them: the pod's QoS class
//! (`v1qos.ComputePodQOS`), its cgroup parent (`pkg/kubelet/cm`, cgroupfs layout), CPU shares
//! and CFS quota (`helpers_linux.go`) and `oom_score_adj` (`pkg/kubelet/qos/policy.go`).

use std::collections::BTreeMap;
use std::convert::Infallible;

use bosun_cri::api;
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::quantity::ParsedQuantity;
use super::{ContainerKind, NodeContext, SpecError};

pub(crate) const CPU: &str = "cpu";
pub(crate) const MEMORY: &str = "memory";
pub(crate) const EPHEMERAL_STORAGE: &str = "ephemeral-storage";
pub(crate) const HUGEPAGES_PREFIX: &str = "hugepages-";

/// CFS period kubelet uses unless the `CPUCFSQuotaPeriod` gate and a custom period are set.
pub const CPU_PERIOD_US: i64 = 100_000;
/// The smallest CFS quota kubelet asks for (1 ms).
const MIN_CPU_QUOTA_US: i64 = 1_000;
/// The kernel's bounds on `cpu.shares`, and the shares of one CPU.
const MIN_SHARES: i64 = 2;
const MAX_SHARES: i64 = 262_144;
const SHARES_PER_CPU: i64 = 1024;

/// `oom_score_adj` of Guaranteed and node-critical containers.
const GUARANTEED_OOM_SCORE_ADJ: i64 = -997;
/// `oom_score_adj` of BestEffort containers.
const BEST_EFFORT_OOM_SCORE_ADJ: i64 = 1000;
/// Priority at and above which a pod is critical (`scheduling.SystemCriticalPriority`).
const SYSTEM_CRITICAL_PRIORITY: i32 = 2_000_000_000;
const SYSTEM_NODE_CRITICAL: &str = "system-node-critical";
/// Annotation naming where a pod came from; anything but `api` is a static pod.
const CONFIG_SOURCE_ANNOTATION: &str = "kubernetes.io/config.source";
const CONFIG_MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// A pod's quality-of-service class: which cgroup it lives under and how readily the kernel
/// kills it when memory runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// The name Kubernetes uses (`status.qosClass`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Guaranteed => "Guaranteed",
            Self::Burstable => "Burstable",
            Self::BestEffort => "BestEffort",
        }
    }

    fn from_status(name: &str) -> Option<Self> {
        match name {
            "Guaranteed" => Some(Self::Guaranteed),
            "Burstable" => Some(Self::Burstable),
            "BestEffort" => Some(Self::BestEffort),
            _ => None,
        }
    }
}

impl std::fmt::Display for QosClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One container's requests and limits, parsed, with the API server's defaulting applied:
/// a resource that has a limit but no request is requested at its limit.
#[derive(Debug, Clone, Default)]
pub(crate) struct ContainerResources {
    pub requests: BTreeMap<String, ParsedQuantity>,
    pub limits: BTreeMap<String, ParsedQuantity>,
}

impl ContainerResources {
    /// Parses `container.resources`; `path` is the container's field path, for errors.
    pub fn of(container: &Container, path: &str) -> Result<Self, SpecError> {
        Self::parse_with(container, |list, name, quantity| {
            let field = format!("{path}.resources.{list}.{name}");
            let value = parse_quantity(quantity, &field)?;
            if value.is_negative() {
                return Err(SpecError::Invalid {
                    path: field,
                    value: quantity.0.clone(),
                    reason: "must be greater than or equal to 0".into(),
                });
            }
            Ok(Some(value))
        })
    }

    /// Like [`Self::of`], leaving out quantities that do not parse or are negative.
    pub fn lenient(container: &Container) -> Self {
        let Ok(resources) = Self::parse_with::<Infallible>(container, |_, _, quantity| {
            let value = ParsedQuantity::parse(&quantity.0).ok();
            Ok(value.filter(|v| !v.is_negative()))
        });
        resources
    }

    /// Parses every request and limit with `parse(list, name, quantity)` (list is `requests`
    /// or `limits`), keeping those it returns, then defaults requests to limits.
    fn parse_with<E>(
        container: &Container,
        mut parse: impl FnMut(&str, &str, &Quantity) -> Result<Option<ParsedQuantity>, E>,
    ) -> Result<Self, E> {
        let resources = container.resources.as_ref();
        let mut parse_list = |list: &str, quantities: Option<&BTreeMap<String, Quantity>>| {
            let mut parsed = BTreeMap::new();
            for (name, quantity) in quantities.into_iter().flatten() {
                if let Some(value) = parse(list, name, quantity)? {
                    parsed.insert(name.clone(), value);
                }
            }
            Ok(parsed)
        };
        let limits = parse_list("limits", resources.and_then(|r| r.limits.as_ref()))?;
        let mut requests = parse_list("requests", resources.and_then(|r| r.requests.as_ref()))?;
        for (name, limit) in &limits {
            requests.entry(name.clone()).or_insert(*limit);
        }
        Ok(Self { requests, limits })
    }

    pub fn request(&self, name: &str) -> ParsedQuantity {
        self.requests.get(name).copied().unwrap_or_default()
    }

    pub fn limit(&self, name: &str) -> ParsedQuantity {
        self.limits.get(name).copied().unwrap_or_default()
    }
}

/// Parses one quantity of a pod spec, naming the field if it is not one.
pub(crate) fn parse_quantity(quantity: &Quantity, path: &str) -> Result<ParsedQuantity, SpecError> {
    ParsedQuantity::parse(&quantity.0).map_err(|source| SpecError::InvalidQuantity {
        path: path.to_owned(),
        value: quantity.0.clone(),
        source,
    })
}

/// Every container of the pod that can hold resources, with its field path: regular
/// containers, then init containers (ephemeral containers cannot set resources).
pub(crate) fn containers_with_paths(pod: &Pod) -> impl Iterator<Item = (&Container, String)> {
    let spec = pod.spec.iter();
    let regular = spec
        .clone()
        .flat_map(|spec| spec.containers.iter().enumerate())
        .map(|(index, c)| (c, format!("spec.containers[{index}]")));
    let init = spec
        .flat_map(|spec| spec.init_containers.iter().flatten().enumerate())
        .map(|(index, c)| (c, format!("spec.initContainers[{index}]")));
    regular.chain(init)
}

/// Rejects pod-level `spec.resources` (the `PodLevelResources` feature): with them, QoS,
/// cgroup limits and the downward API all follow other rules, which bosun does not implement.
pub(crate) fn reject_pod_level_resources(pod: &Pod) -> Result<(), SpecError> {
    let set = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.resources.as_ref())
        .is_some_and(|r| {
            r.requests.as_ref().is_some_and(|m| !m.is_empty())
                || r.limits.as_ref().is_some_and(|m| !m.is_empty())
        });
    if set {
        return Err(SpecError::Unsupported {
            path: "spec.resources".into(),
            what: "pod-level resources".into(),
        });
    }
    Ok(())
}

/// The positive quantities of the resources QoS looks at: CPU, memory and hugepages.
fn qos_quantities(list: &BTreeMap<String, ParsedQuantity>) -> Vec<(&str, ParsedQuantity)> {
    list.iter()
        .filter(|(name, quantity)| {
            let counted = *name == CPU || *name == MEMORY || name.starts_with(HUGEPAGES_PREFIX);
            counted && quantity.is_positive()
        })
        .map(|(name, quantity)| (name.as_str(), *quantity))
        .collect()
}

/// The pod's QoS class, as `v1qos.GetPodQOS` computes it: `status.qosClass` if the API server
/// already set it; else BestEffort when no container requests or limits CPU, memory or
/// hugepages; Guaranteed when every container (init containers included) limits both CPU and
/// memory and the pod's summed requests equal its summed limits; Burstable otherwise.
///
/// Quantities that do not parse count as absent here; [`sandbox_config`](super::sandbox_config)
/// and [`container_config`](super::container_config) refuse such a pod with the field named.
pub fn qos_class(pod: &Pod) -> QosClass {
    let parsed: Vec<ContainerResources> = containers_with_paths(pod)
        .map(|(container, _)| ContainerResources::lenient(container))
        .collect();
    qos_of(pod, &parsed)
}

/// [`qos_class`], refusing unparseable quantities and pod-level resources.
pub(crate) fn checked_qos_class(pod: &Pod) -> Result<QosClass, SpecError> {
    reject_pod_level_resources(pod)?;
    let mut parsed = Vec::new();
    for (container, path) in containers_with_paths(pod) {
        parsed.push(ContainerResources::of(container, &path)?);
    }
    Ok(qos_of(pod, &parsed))
}

fn qos_of(pod: &Pod, containers: &[ContainerResources]) -> QosClass {
    if let Some(class) = pod
        .status
        .as_ref()
        .and_then(|status| status.qos_class.as_deref())
        .and_then(QosClass::from_status)
    {
        return class;
    }
    let mut requests: BTreeMap<&str, ParsedQuantity> = BTreeMap::new();
    let mut limits: BTreeMap<&str, ParsedQuantity> = BTreeMap::new();
    let mut limits_cpu_and_memory = true;
    for resources in containers {
        for (name, quantity) in qos_quantities(&resources.requests) {
            let sum = requests.entry(name).or_default();
            *sum = sum.saturating_add(quantity);
        }
        let container_limits = qos_quantities(&resources.limits);
        let limited = |wanted: &str| container_limits.iter().any(|(name, _)| *name == wanted);
        if !(limited(CPU) && limited(MEMORY)) {
            limits_cpu_and_memory = false;
        }
        for (name, quantity) in container_limits {
            let sum = limits.entry(name).or_default();
            *sum = sum.saturating_add(quantity);
        }
    }
    if requests.is_empty() && limits.is_empty() {
        return QosClass::BestEffort;
    }
    let requests_match_limits = requests
        .iter()
        .all(|(name, request)| limits.get(name) == Some(request));
    if limits_cpu_and_memory && requests_match_limits && requests.len() == limits.len() {
        QosClass::Guaranteed
    } else {
        QosClass::Burstable
    }
}

/// The pod's cgroup, kubelet's layout under `ctx.cgroup_root` (the `kubepods` cgroup):
/// `<root>/pod<uid>` for Guaranteed pods, `<root>/burstable/pod<uid>` and
/// `<root>/besteffort/pod<uid>` for the others, as paths of the cgroup driver (with systemd,
/// `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`, the `-` of
/// the UID written `_`). `metadata.uid` must be set ([`sandbox_config`](super::sandbox_config)
/// refuses a pod without one).
pub fn pod_cgroup_parent(pod: &Pod, ctx: &NodeContext) -> String {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    cgroup_parent(qos_class(pod), uid, ctx)
}

pub(crate) fn cgroup_parent(qos: QosClass, uid: &str, ctx: &NodeContext) -> String {
    let driver = ctx.cgroup_driver;
    let pod = format!("pod{uid}");
    match qos {
        QosClass::Guaranteed => driver.child(&ctx.cgroup_root, &pod),
        QosClass::Burstable => driver.child(&driver.child(&ctx.cgroup_root, "burstable"), &pod),
        QosClass::BestEffort => driver.child(&driver.child(&ctx.cgroup_root, "besteffort"), &pod),
    }
}

/// CPU shares for a CPU request in millicores (`MilliCPUToShares`): 1024 per CPU, rounded
/// down, within the kernel's [2, 262144]; no request at all is 2, the kernel's minimum.
pub fn milli_cpu_to_shares(milli_cpu: i64) -> i64 {
    if milli_cpu == 0 {
        return MIN_SHARES;
    }
    let shares = milli_cpu.saturating_mul(SHARES_PER_CPU) / 1000;
    shares.clamp(MIN_SHARES, MAX_SHARES)
}

/// CFS quota for a CPU limit in millicores over `period` microseconds (`milliCPUToQuota`):
/// 0 (no quota) without a limit, else the limit's share of the period, at least 1 ms.
pub fn milli_cpu_to_quota(milli_cpu: i64, period: i64) -> i64 {
    if milli_cpu == 0 {
        return 0;
    }
    let quota = milli_cpu.saturating_mul(period) / 1000;
    quota.max(MIN_CPU_QUOTA_US)
}

/// `LinuxContainerResources` for one container, as `generateLinuxContainerResources` fills
/// them on a cgroup v1 node with CFS quota on: shares from the request (or the limit when
/// there is no request), period 100 ms and quota from the limit, the memory limit, and
/// `oom_score_adj`. Hugepage limits, swap and cgroup v2 `unified` keys are left unset.
pub(crate) fn linux_container_resources(
    pod: &Pod,
    kind: ContainerKind,
    resources: &ContainerResources,
    ctx: &NodeContext,
) -> Result<api::LinuxContainerResources, SpecError> {
    // `resources` has already defaulted the request to the limit, as kubelet does here.
    let cpu_shares = milli_cpu_to_shares(resources.request(CPU).milli_value());
    Ok(api::LinuxContainerResources {
        cpu_period: CPU_PERIOD_US,
        cpu_quota: milli_cpu_to_quota(resources.limit(CPU).milli_value(), CPU_PERIOD_US),
        cpu_shares,
        memory_limit_in_bytes: resources.limit(MEMORY).value(),
        oom_score_adj: oom_score_adj(pod, kind, resources, ctx)?,
        ..Default::default()
    })
}

/// The container's `oom_score_adj` (`GetContainerOOMScoreAdjust`): -997 for node-critical
/// pods and Guaranteed pods, 1000 for BestEffort pods; for Burstable pods
/// `1000 - 1000 * memoryRequest / nodeMemoryCapacity`, kept within [3, 999] so that Burstable
/// always ranks between the other two. A sidecar scores no higher than the regular container
/// with the smallest memory request, so it is not killed before the containers it serves.
pub(crate) fn oom_score_adj(
    pod: &Pod,
    kind: ContainerKind,
    resources: &ContainerResources,
    ctx: &NodeContext,
) -> Result<i64, SpecError> {
    if is_node_critical(pod) {
        return Ok(GUARANTEED_OOM_SCORE_ADJ);
    }
    match checked_qos_class(pod)? {
        QosClass::Guaranteed => return Ok(GUARANTEED_OOM_SCORE_ADJ),
        QosClass::BestEffort => return Ok(BEST_EFFORT_OOM_SCORE_ADJ),
        QosClass::Burstable => {}
    }
    let capacity = i128::from(ctx.node.memory_capacity_bytes.max(1));
    let score = |memory_request: i64| 1000 - (1000 * i128::from(memory_request)) / capacity;
    let mut adj = score(resources.request(MEMORY).value());
    if kind == ContainerKind::Sidecar {
        let mut smallest: Option<i64> = None;
        let regular = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter().enumerate());
        for (index, other) in regular {
            let other = ContainerResources::of(other, &format!("spec.containers[{index}]"))?;
            let request = other.request(MEMORY).value();
            smallest = Some(smallest.map_or(request, |s| s.min(request)));
        }
        if let Some(smallest) = smallest {
            adj = adj.min(score(smallest));
        }
    }
    let floor = i128::from(1000 + GUARANTEED_OOM_SCORE_ADJ);
    let adj = if adj < floor {
        floor
    } else if adj == i128::from(BEST_EFFORT_OOM_SCORE_ADJ) {
        adj - 1
    } else {
        adj
    };
    // Within [3, 999] by now.
    Ok(i64::try_from(adj).unwrap_or(BEST_EFFORT_OOM_SCORE_ADJ - 1))
}

/// A system-node-critical pod that is also critical: static, mirror, or of critical priority
/// (`IsNodeCriticalPod`).
fn is_node_critical(pod: &Pod) -> bool {
    let annotations = pod.metadata.annotations.as_ref();
    let is_static = annotations
        .and_then(|a| a.get(CONFIG_SOURCE_ANNOTATION))
        .is_some_and(|source| source != "api");
    let is_mirror = annotations.is_some_and(|a| a.contains_key(CONFIG_MIRROR_ANNOTATION));
    let spec = pod.spec.as_ref();
    let critical_priority = spec
        .and_then(|s| s.priority)
        .is_some_and(|p| p >= SYSTEM_CRITICAL_PRIORITY);
    let node_critical_class =
        spec.and_then(|s| s.priority_class_name.as_deref()) == Some(SYSTEM_NODE_CRITICAL);
    (is_static || is_mirror || critical_priority) && node_critical_class
}
