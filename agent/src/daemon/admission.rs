//! Pod admission: whether this node may start a pod it has not run before, decided as
//! kubelet's predicate admit handler decides it (`pkg/kubelet/lifecycle/predicate.go`, which
//! runs the scheduler's `AdmissionCheck` and kubelet's own taint check), with kubelet's
//! reasons and messages, so that a refused pod is reported Failed exactly as kubelet reports
//! it.
//!
//! Behaviour follows kubelet 1.34 with default feature gates. A pure function of the pod, the
//! pods already admitted and the node: the caller decides what "admitted" means (kubelet
//! passes the active pods, those neither terminated nor being terminated, without the pod
//! itself) and records the rejection.
//!
//! The checks, in kubelet's order; kubelet collects every failure and reports the first:
//!
//! 1. the pod's `kubernetes.io/os` label, then `spec.os.name`, against this node's OS;
//! 2. resources: pod count, then cpu, memory, ephemeral-storage, then hugepages and extended
//!    resources by name (`noderesources.Fits`);
//! 3. `spec.nodeSelector` and required node affinity (`NodeAffinity`);
//! 4. `spec.nodeName` (`NodeName`);
//! 5. host ports already taken by admitted pods (`NodePorts`);
//! 6. untolerated `NoExecute` taints, for pods that are not static (`TaintToleration`).
//!
//! Critical pods (static, mirror, or of system-critical priority) that fail only for
//! resources are where bosun differs: kubelet evicts non-critical pods to make room for them
//! (`pkg/kubelet/preemption`) and refuses them only when nothing can be evicted. bosun does
//! not preempt yet, so it always refuses them, as kubelet does when every running pod is
//! critical.
//!
//! The eviction admit handler (refusing pods under node pressure) runs before these checks
//! and lives with the eviction manager (`super::eviction::admit`).
//!
//! Left out: the device, topology, sysctl and AppArmor admit
//! handlers; `SupplementalGroupsPolicy: Strict` (which needs the runtime's feature report);
//! pod-level `spec.resources` (refused when the pod is translated); in-place resize, where
//! kubelet counts a running pod at the larger of its spec and its allocated resources; and
//! the `Gt`/`Lt` toleration operators of the alpha `TaintTolerationComparisonOperators` gate.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Container, NodeSelectorRequirement, NodeSelectorTerm, Pod, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::pod::spec::ParsedQuantity;
use crate::source::CONFIG_SOURCE_ANNOTATION;

/// The pod's `kubernetes.io/os` label names another OS than this node's.
pub const POD_OS_SELECTOR_NODE_LABEL_DOES_NOT_MATCH: &str = "PodOSSelectorNodeLabelDoesNotMatch";
/// The pod's `spec.os.name` names another OS than this node's.
pub const POD_OS_NOT_SUPPORTED: &str = "PodOSNotSupported";
pub const OUT_OF_CPU: &str = "OutOfcpu";
pub const OUT_OF_MEMORY: &str = "OutOfmemory";
pub const OUT_OF_EPHEMERAL_STORAGE: &str = "OutOfephemeral-storage";
pub const OUT_OF_PODS: &str = "OutOfpods";
/// Prefix of the reason for any other resource: `OutOfhugepages-2Mi`, `OutOfexample.com/gpu`.
pub const OUT_OF_PREFIX: &str = "OutOf";
pub const NODE_AFFINITY: &str = "NodeAffinity";
pub const NODE_NAME: &str = "NodeName";
pub const NODE_PORTS: &str = "NodePorts";
pub const TAINT_TOLERATION: &str = "TaintToleration";

/// The scheduler plugins' failure descriptions, which kubelet quotes in its messages.
const NODE_AFFINITY_DESC: &str = "node(s) didn't match Pod's node affinity/selector";
const NODE_NAME_DESC: &str = "node(s) didn't match the requested node name";
const NODE_PORTS_DESC: &str = "node(s) didn't have free ports for the requested pod ports";
const TAINT_TOLERATION_DESC: &str = "node(s) had taints that the pod didn't tolerate";

const OS_LABEL: &str = "kubernetes.io/os";
/// `kubernetes.io/config.source` of pods from the API server; any other source is static.
const API_SOURCE: &str = "api";
/// The only field `matchFields` can select a node by.
const NODE_NAME_FIELD: &str = "metadata.name";
const DEFAULT_HOST_IP: &str = "0.0.0.0";
const DEFAULT_PROTOCOL: &str = "TCP";

const CPU: &str = "cpu";
const MEMORY: &str = "memory";
const EPHEMERAL_STORAGE: &str = "ephemeral-storage";
const PODS: &str = "pods";
const HUGEPAGES_PREFIX: &str = "hugepages-";
const ATTACHABLE_VOLUMES_PREFIX: &str = "attachable-volumes-";

/// What admission needs to know of this node: its identity, labels and taints as its Node
/// object has them, and its allocatable resources.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub allocatable_cpu_millis: i64,
    pub allocatable_memory_bytes: i64,
    pub allocatable_ephemeral_storage_bytes: i64,
    /// Allocatable hugepages (`hugepages-2Mi`, in bytes) and extended resources
    /// (`example.com/gpu`, in units), by resource name: the scheduler's scalar resources. A
    /// hugepages size the node lacks counts as zero; an extended resource it lacks is not
    /// checked at all, as kubelet leaves cluster-level resources to whoever provides them.
    pub allocatable_scalar: BTreeMap<String, i64>,
    /// KubeletConfiguration `maxPods`.
    pub max_pods: usize,
    pub taints: Vec<Taint>,
}

/// Why the node refused a pod, in kubelet's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// One word: `status.reason` and the event's reason.
    pub reason: String,
    /// The event's message.
    pub message: String,
}

impl Rejection {
    /// `status.message` of the refused pod, which kubelet prefixes.
    pub fn status_message(&self) -> String {
        format!("Pod was rejected: {}", self.message)
    }
}

/// Whether this node may start `pod`, given the pods it has already admitted and not yet
/// terminated (`running`, without `pod` itself). Kubelet's first failure is the rejection.
pub fn admit(pod: &Pod, running: &[&Pod], node: &NodeInfo) -> Result<(), Rejection> {
    if let Some(rejection) = reject_os(pod) {
        return Err(rejection);
    }
    match general_filter(pod, running, node).into_iter().next() {
        Some(failure) => Err(failure.into_rejection()),
        None => Ok(()),
    }
}

/// One failed check, as kubelet's `PredicateFailureReason`s are either.
#[derive(Debug)]
enum Failure {
    Insufficient {
        resource: String,
        requested: i64,
        used: i64,
        capacity: i64,
    },
    Predicate {
        name: &'static str,
        description: &'static str,
    },
}

impl Failure {
    fn into_rejection(self) -> Rejection {
        match self {
            Self::Insufficient {
                resource,
                requested,
                used,
                capacity,
            } => Rejection {
                reason: match resource.as_str() {
                    CPU => OUT_OF_CPU.to_owned(),
                    MEMORY => OUT_OF_MEMORY.to_owned(),
                    EPHEMERAL_STORAGE => OUT_OF_EPHEMERAL_STORAGE.to_owned(),
                    PODS => OUT_OF_PODS.to_owned(),
                    other => format!("{OUT_OF_PREFIX}{other}"),
                },
                message: format!(
                    "Node didn't have enough resource: {resource}, requested: {requested}, used: {used}, capacity: {capacity}"
                ),
            },
            Self::Predicate { name, description } => Rejection {
                reason: name.to_owned(),
                message: format!("Predicate {name} failed: {description}"),
            },
        }
    }
}

/// The OS checks kubelet makes before any other, since no preemption could help them. This
/// node's OS is the one bosun runs on: kubelet takes `runtime.GOOS` whatever the node's
/// `kubernetes.io/os` label says.
fn reject_os(pod: &Pod) -> Option<Rejection> {
    let node_os = std::env::consts::OS;
    let label = pod.metadata.labels.as_ref().and_then(|l| l.get(OS_LABEL));
    if label.is_some_and(|os| os != node_os) {
        return Some(Rejection {
            reason: POD_OS_SELECTOR_NODE_LABEL_DOES_NOT_MATCH.to_owned(),
            message: "Failed to admit pod as the `kubernetes.io/os` label doesn't match node label"
                .to_owned(),
        });
    }
    let os_field = pod.spec.as_ref().and_then(|s| s.os.as_ref());
    if os_field.is_some_and(|os| os.name != node_os) {
        return Some(Rejection {
            reason: POD_OS_NOT_SUPPORTED.to_owned(),
            message: "Failed to admit pod as the OS field doesn't match node OS".to_owned(),
        });
    }
    None
}

/// Every failure of kubelet's `generalFilter`, in its order.
fn general_filter(pod: &Pod, running: &[&Pod], node: &NodeInfo) -> Vec<Failure> {
    let mut failures = insufficient_resources(pod, running, node);
    let predicates = [
        (
            matches_node_affinity(pod, node),
            NODE_AFFINITY,
            NODE_AFFINITY_DESC,
        ),
        (fits_node_name(pod, node), NODE_NAME, NODE_NAME_DESC),
        (fits_host_ports(pod, running), NODE_PORTS, NODE_PORTS_DESC),
        (
            is_static(pod) || tolerates_no_execute_taints(pod, node),
            TAINT_TOLERATION,
            TAINT_TOLERATION_DESC,
        ),
    ];
    for (fits, name, description) in predicates {
        if !fits {
            failures.push(Failure::Predicate { name, description });
        }
    }
    failures
}

/// A pod from any source but the API server (`kubelettypes.IsStaticPod`).
pub(crate) fn is_static(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONFIG_SOURCE_ANNOTATION))
        .is_some_and(|source| source != API_SOURCE)
}

// Resources.

/// A pod's requests as the scheduler counts them: millicores, bytes, and whole units of the
/// scalar resources.
#[derive(Debug, Default)]
struct Requested {
    milli_cpu: i64,
    memory: i64,
    ephemeral_storage: i64,
    scalar: BTreeMap<String, i64>,
}

impl Requested {
    fn of(pod: &Pod) -> Self {
        let requests = pod_requests(pod);
        let get = |name: &str| requests.get(name).copied().unwrap_or_default();
        Self {
            milli_cpu: get(CPU).milli_value(),
            memory: get(MEMORY).value(),
            ephemeral_storage: get(EPHEMERAL_STORAGE).value(),
            scalar: requests
                .iter()
                .filter(|(name, quantity)| is_scalar(name) && !quantity.is_zero())
                .map(|(name, quantity)| (name.clone(), quantity.value()))
                .collect(),
        }
    }

    fn add(&mut self, other: &Self) {
        self.milli_cpu = self.milli_cpu.saturating_add(other.milli_cpu);
        self.memory = self.memory.saturating_add(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_add(other.ephemeral_storage);
        for (name, value) in &other.scalar {
            let sum = self.scalar.entry(name.clone()).or_default();
            *sum = sum.saturating_add(*value);
        }
    }

    fn is_zero(&self) -> bool {
        self.milli_cpu == 0
            && self.memory == 0
            && self.ephemeral_storage == 0
            && self.scalar.is_empty()
    }
}

/// The pod's effective requests (`resourcehelper.PodRequests`): regular containers and
/// sidecars run together, so they add up; each init container runs beside the sidecars
/// started before it, so the pod needs at least the largest of those sums; and the runtime's
/// `overhead` comes on top.
///
/// Requests are read as the API server (or, for static pods, the manifest source) defaulted
/// them: a resource with only a limit is requested at its limit. A quantity that does not
/// parse counts as zero; validation refuses such a pod before it gets here.
pub(crate) fn pod_requests(pod: &Pod) -> BTreeMap<String, ParsedQuantity> {
    let Some(spec) = pod.spec.as_ref() else {
        return BTreeMap::new();
    };
    let mut total = BTreeMap::new();
    for container in &spec.containers {
        add_list(&mut total, &container_requests(container));
    }
    let mut sidecars = BTreeMap::new();
    let mut init_peak = BTreeMap::new();
    for container in spec.init_containers.iter().flatten() {
        let requests = container_requests(container);
        let in_use = if container.restart_policy.as_deref() == Some("Always") {
            add_list(&mut total, &requests);
            add_list(&mut sidecars, &requests);
            sidecars.clone()
        } else {
            let mut in_use = requests;
            add_list(&mut in_use, &sidecars);
            in_use
        };
        for (name, quantity) in in_use {
            let peak = init_peak.entry(name).or_insert(quantity);
            *peak = (*peak).max(quantity);
        }
    }
    for (name, peak) in init_peak {
        let value = total.entry(name).or_insert(peak);
        *value = (*value).max(peak);
    }
    if let Some(overhead) = spec.overhead.as_ref() {
        add_list(&mut total, &parse_list(overhead));
    }
    total
}

fn container_requests(container: &Container) -> BTreeMap<String, ParsedQuantity> {
    let requests = container
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref());
    requests.map(parse_list).unwrap_or_default()
}

fn parse_list(list: &BTreeMap<String, Quantity>) -> BTreeMap<String, ParsedQuantity> {
    list.iter()
        .filter_map(|(name, quantity)| {
            let value = ParsedQuantity::parse(&quantity.0).ok()?;
            Some((name.clone(), value))
        })
        .collect()
}

fn add_list(sum: &mut BTreeMap<String, ParsedQuantity>, list: &BTreeMap<String, ParsedQuantity>) {
    for (name, quantity) in list {
        let value = sum.entry(name.clone()).or_default();
        *value = value.saturating_add(*quantity);
    }
}

/// A resource name without a domain, or in `kubernetes.io` (`v1helper.IsNativeResource`).
fn is_native(name: &str) -> bool {
    !name.contains('/') || name.contains("kubernetes.io/")
}

/// A resource some device plugin or cluster add-on provides: `example.com/gpu`.
fn is_extended(name: &str) -> bool {
    !is_native(name) && !name.starts_with("requests.")
}

/// A resource the scheduler counts beyond cpu, memory and ephemeral storage
/// (`schedutil.IsScalarResourceName`).
fn is_scalar(name: &str) -> bool {
    is_extended(name)
        || name.starts_with(HUGEPAGES_PREFIX)
        || name.contains("kubernetes.io/")
        || name.starts_with(ATTACHABLE_VOLUMES_PREFIX)
}

/// The resources the node lacks for `pod` (`noderesources.Fits`): a request counts against
/// what is allocatable less what the admitted pods request.
fn insufficient_resources(pod: &Pod, running: &[&Pod], node: &NodeInfo) -> Vec<Failure> {
    let mut failures = Vec::new();
    if running.len() + 1 > node.max_pods {
        failures.push(Failure::Insufficient {
            resource: PODS.to_owned(),
            requested: 1,
            used: saturating_i64(running.len()),
            capacity: saturating_i64(node.max_pods),
        });
    }
    let mut wanted = Requested::of(pod);
    // Extended resources the node does not know are left to whoever provides them
    // (`removeMissingExtendedResources`).
    wanted
        .scalar
        .retain(|name, _| !is_extended(name) || node.allocatable_scalar.contains_key(name));
    if wanted.is_zero() {
        return failures;
    }
    let mut used = Requested::default();
    for other in running {
        used.add(&Requested::of(other));
    }
    let mut check = |resource: &str, requested: i64, used: i64, capacity: i64| {
        if requested > 0 && requested > capacity.saturating_sub(used) {
            failures.push(Failure::Insufficient {
                resource: resource.to_owned(),
                requested,
                used,
                capacity,
            });
        }
    };
    check(
        CPU,
        wanted.milli_cpu,
        used.milli_cpu,
        node.allocatable_cpu_millis,
    );
    check(
        MEMORY,
        wanted.memory,
        used.memory,
        node.allocatable_memory_bytes,
    );
    check(
        EPHEMERAL_STORAGE,
        wanted.ephemeral_storage,
        used.ephemeral_storage,
        node.allocatable_ephemeral_storage_bytes,
    );
    for (name, requested) in &wanted.scalar {
        let used = used.scalar.get(name).copied().unwrap_or_default();
        let capacity = node
            .allocatable_scalar
            .get(name)
            .copied()
            .unwrap_or_default();
        check(name, *requested, used, capacity);
    }
    failures
}

fn saturating_i64(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

// Node affinity.

/// `spec.nodeSelector` and required node affinity against the node's labels and name
/// (`nodeaffinity.GetRequiredNodeAffinity(pod).Match(node)`). Node selector terms are ORed,
/// the requirements of a term ANDed; a term that is empty or holds an invalid requirement
/// matches no node.
fn matches_node_affinity(pod: &Pod, node: &NodeInfo) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return true;
    };
    let mut selector = spec.node_selector.iter().flatten();
    if !selector.all(|(key, value)| node.labels.get(key) == Some(value)) {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        None => true,
        Some(selector) => selector
            .node_selector_terms
            .iter()
            .any(|term| term_matches(term, node)),
    }
}

fn term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    // Every requirement is parsed, so that an invalid one spoils the term even after a
    // requirement that does not match.
    let labels: Option<Vec<bool>> = expressions
        .iter()
        .map(|r| label_requirement_matches(r, &node.labels))
        .collect();
    let fields: Option<Vec<bool>> = fields
        .iter()
        .map(|r| field_requirement_matches(r, &node.name))
        .collect();
    match (labels, fields) {
        (Some(labels), Some(fields)) => labels.into_iter().chain(fields).all(|m| m),
        _ => false,
    }
}

/// Whether the node's labels meet one `matchExpressions` requirement; `None` if the
/// requirement is invalid (`labels.NewRequirement` refuses it).
fn label_requirement_matches(
    requirement: &NodeSelectorRequirement,
    labels: &BTreeMap<String, String>,
) -> Option<bool> {
    let values = requirement.values.as_deref().unwrap_or_default();
    let label = labels.get(&requirement.key);
    match requirement.operator.as_str() {
        "In" if !values.is_empty() => Some(label.is_some_and(|l| values.contains(l))),
        "NotIn" if !values.is_empty() => Some(!label.is_some_and(|l| values.contains(l))),
        "Exists" if values.is_empty() => Some(label.is_some()),
        "DoesNotExist" if values.is_empty() => Some(label.is_none()),
        operator @ ("Gt" | "Lt") => {
            let [bound] = values else { return None };
            let bound: i64 = bound.parse().ok()?;
            let Some(Ok(value)) = label.map(|l| l.parse::<i64>()) else {
                return Some(false);
            };
            Some(if operator == "Gt" {
                value > bound
            } else {
                value < bound
            })
        }
        _ => None,
    }
}

/// Whether the node meets one `matchFields` requirement: `In` or `NotIn` with exactly one
/// value, on `metadata.name` (any other field of the node is empty, as a field set has it).
fn field_requirement_matches(
    requirement: &NodeSelectorRequirement,
    node_name: &str,
) -> Option<bool> {
    let [value] = requirement.values.as_deref().unwrap_or_default() else {
        return None;
    };
    let field = if requirement.key == NODE_NAME_FIELD {
        node_name
    } else {
        ""
    };
    match requirement.operator.as_str() {
        "In" => Some(field == value),
        "NotIn" => Some(field != value),
        _ => None,
    }
}

// Node name, host ports, taints.

/// `spec.nodeName`, if set, names this node (`nodename.Fits`).
fn fits_node_name(pod: &Pod, node: &NodeInfo) -> bool {
    let name = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    name.is_none_or(|name| name.is_empty() || name == node.name)
}

/// A host port a container binds: (host IP, protocol, port), defaulted as
/// `HostPortInfo.sanitize` defaults them.
type HostPort<'a> = (&'a str, &'a str, i32);

/// The host ports of the pod's regular containers (`nodeports.getContainerPorts`).
fn host_ports(pod: &Pod) -> impl Iterator<Item = HostPort<'_>> {
    let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
    containers
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|port| {
            let host_port = port.host_port.filter(|p| *p > 0)?;
            let ip = port.host_ip.as_deref().filter(|ip| !ip.is_empty());
            let protocol = port.protocol.as_deref().filter(|p| !p.is_empty());
            Some((
                ip.unwrap_or(DEFAULT_HOST_IP),
                protocol.unwrap_or(DEFAULT_PROTOCOL),
                host_port,
            ))
        })
}

/// None of the pod's host ports is taken (`nodeports.Fits`): a port bound on 0.0.0.0
/// conflicts with the same port and protocol on any IP.
fn fits_host_ports(pod: &Pod, running: &[&Pod]) -> bool {
    let used: BTreeSet<HostPort<'_>> = running.iter().flat_map(|p| host_ports(p)).collect();
    let conflicts = |(ip, protocol, port): HostPort<'_>| {
        if ip == DEFAULT_HOST_IP {
            used.iter().any(|&(_, p, n)| p == protocol && n == port)
        } else {
            used.contains(&(DEFAULT_HOST_IP, protocol, port))
                || used.contains(&(ip, protocol, port))
        }
    };
    !host_ports(pod).any(conflicts)
}

/// Every `NoExecute` taint of the node is tolerated; kubelet leaves the other effects to
/// the scheduler.
fn tolerates_no_execute_taints(pod: &Pod, node: &NodeInfo) -> bool {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    node.taints
        .iter()
        .filter(|taint| taint.effect == "NoExecute")
        .all(|taint| tolerations.iter().any(|t| tolerates(t, taint)))
}

/// `Toleration.ToleratesTaint`: an empty effect or key matches any; an empty operator is
/// `Equal`; `tolerationSeconds` does not matter at admission.
pub(crate) fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    fn set(field: Option<&str>) -> Option<&str> {
        field.filter(|f| !f.is_empty())
    }
    if set(toleration.effect.as_deref()).is_some_and(|effect| effect != taint.effect) {
        return false;
    }
    if set(toleration.key.as_deref()).is_some_and(|key| key != taint.key) {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or_default() {
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or_default()
                == taint.value.as_deref().unwrap_or_default()
        }
        "Exists" => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).expect("fixture parses")
    }

    /// A pod of one container requesting `cpu` and `memory`.
    fn requesting(name: &str, cpu: &str, memory: &str) -> Pod {
        pod(&format!(
            "metadata: {{name: {name}}}\nspec:\n  containers:\n  - {{name: c, image: i, resources: {{requests: {{cpu: {cpu}, memory: {memory}}}}}}}\n"
        ))
    }

    fn node() -> NodeInfo {
        NodeInfo {
            name: "node-a".into(),
            labels: [
                ("kubernetes.io/hostname", "node-a"),
                ("topology.kubernetes.io/zone", "zone-1"),
                ("cores", "8"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            allocatable_cpu_millis: 2000,
            allocatable_memory_bytes: 4 << 30,
            allocatable_ephemeral_storage_bytes: 10 << 30,
            allocatable_scalar: [("example.com/gpu".to_owned(), 2)].into_iter().collect(),
            max_pods: 110,
            taints: Vec::new(),
        }
    }

    fn rejection(pod: &Pod, running: &[&Pod], node: &NodeInfo) -> Rejection {
        admit(pod, running, node).expect_err("pod is rejected")
    }

    fn predicate(reason: &str, description: &str) -> Rejection {
        Rejection {
            reason: reason.to_owned(),
            message: format!("Predicate {reason} failed: {description}"),
        }
    }

    #[test]
    fn a_plain_pod_is_admitted() {
        let plain = pod("metadata: {name: p}\nspec:\n  containers: [{name: c, image: i}]\n");
        assert_eq!(admit(&plain, &[], &node()), Ok(()));
    }

    #[test]
    fn node_name_must_be_this_node() {
        let elsewhere = pod("spec:\n  nodeName: node-b\n  containers: [{name: c}]\n");
        assert_eq!(
            rejection(&elsewhere, &[], &node()),
            Rejection {
                reason: "NodeName".into(),
                message: "Predicate NodeName failed: node(s) didn't match the requested node name"
                    .into(),
            }
        );
        let here = pod("spec:\n  nodeName: node-a\n  containers: [{name: c}]\n");
        assert_eq!(admit(&here, &[], &node()), Ok(()));
    }

    #[test]
    fn node_selector_must_match_the_labels() {
        let wrong =
            pod("spec:\n  nodeSelector: {cores: '8', disk: ssd}\n  containers: [{name: c}]\n");
        assert_eq!(
            rejection(&wrong, &[], &node()),
            Rejection {
                reason: "NodeAffinity".into(),
                message:
                    "Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector"
                        .into(),
            }
        );
        let right = pod("spec:\n  nodeSelector: {cores: '8'}\n  containers: [{name: c}]\n");
        assert_eq!(admit(&right, &[], &node()), Ok(()));
    }

    /// A pod whose required node affinity is the one term `term` (YAML flow mapping).
    fn with_term(term: &str) -> Pod {
        pod(&format!(
            "spec:\n  containers: [{{name: c}}]\n  affinity:\n    nodeAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n        nodeSelectorTerms:\n        - {term}\n"
        ))
    }

    #[test]
    fn required_node_affinity_operators() {
        let cases = [
            ("{key: cores, operator: In, values: ['4', '8']}", true),
            ("{key: cores, operator: In, values: ['4']}", false),
            ("{key: absent, operator: In, values: ['4']}", false),
            ("{key: cores, operator: NotIn, values: ['8']}", false),
            ("{key: absent, operator: NotIn, values: ['8']}", true),
            ("{key: cores, operator: Exists}", true),
            ("{key: absent, operator: Exists}", false),
            ("{key: absent, operator: DoesNotExist}", true),
            ("{key: cores, operator: DoesNotExist}", false),
            ("{key: cores, operator: Gt, values: ['4']}", true),
            ("{key: cores, operator: Gt, values: ['8']}", false),
            ("{key: cores, operator: Lt, values: ['16']}", true),
            ("{key: cores, operator: Lt, values: ['8']}", false),
            // A label that is no integer never compares.
            (
                "{key: topology.kubernetes.io/zone, operator: Gt, values: ['1']}",
                false,
            ),
            // Invalid requirements spoil their term.
            ("{key: cores, operator: Gt, values: ['4', '5']}", false),
            ("{key: cores, operator: In, values: []}", false),
            ("{key: cores, operator: Exists, values: ['8']}", false),
            ("{key: cores, operator: Like, values: ['8']}", false),
        ];
        for (expression, matches) in cases {
            let pod = with_term(&format!("matchExpressions: [{expression}]"));
            let expected = if matches {
                Ok(())
            } else {
                Err(predicate(NODE_AFFINITY, NODE_AFFINITY_DESC))
            };
            assert_eq!(admit(&pod, &[], &node()), expected, "{expression}");
        }
    }

    #[test]
    fn required_node_affinity_match_fields_select_the_node_name() {
        let cases = [
            ("{key: metadata.name, operator: In, values: [node-a]}", true),
            (
                "{key: metadata.name, operator: In, values: [node-b]}",
                false,
            ),
            (
                "{key: metadata.name, operator: NotIn, values: [node-b]}",
                true,
            ),
            (
                "{key: metadata.name, operator: NotIn, values: [node-a]}",
                false,
            ),
            (
                "{key: metadata.name, operator: In, values: [node-a, node-b]}",
                false,
            ),
            ("{key: metadata.name, operator: Exists}", false),
        ];
        for (field, matches) in cases {
            let pod = with_term(&format!("matchFields: [{field}]"));
            assert_eq!(admit(&pod, &[], &node()).is_ok(), matches, "{field}");
        }
        // Expressions and fields of one term must all match.
        let both = with_term(
            "{matchExpressions: [{key: cores, operator: In, values: ['4']}], matchFields: [{key: metadata.name, operator: In, values: [node-a]}]}",
        );
        assert_eq!(
            rejection(&both, &[], &node()),
            predicate(NODE_AFFINITY, NODE_AFFINITY_DESC)
        );
    }

    #[test]
    fn node_selector_terms_are_ored_and_an_empty_term_matches_nothing() {
        let yaml = |terms: &str| {
            format!("spec:\n  containers: [{{name: c}}]\n  affinity: {{nodeAffinity: {{requiredDuringSchedulingIgnoredDuringExecution: {{nodeSelectorTerms: {terms}}}}}}}\n")
        };
        let second = pod(&yaml(
            "[{matchExpressions: [{key: cores, operator: In, values: ['4']}]}, {matchExpressions: [{key: cores, operator: In, values: ['8']}]}]",
        ));
        assert_eq!(admit(&second, &[], &node()), Ok(()));
        let invalid_then_valid = pod(&yaml(
            "[{matchExpressions: [{key: cores, operator: Bad}]}, {matchExpressions: [{key: cores, operator: Exists}]}]",
        ));
        assert_eq!(admit(&invalid_then_valid, &[], &node()), Ok(()));
        for terms in ["[{}]", "[]"] {
            assert_eq!(
                rejection(&pod(&yaml(terms)), &[], &node()),
                predicate(NODE_AFFINITY, NODE_AFFINITY_DESC),
                "{terms}"
            );
        }
    }

    fn tainted(taints: &str) -> NodeInfo {
        NodeInfo {
            taints: serde_yaml::from_str(taints).expect("taints parse"),
            ..node()
        }
    }

    #[test]
    fn untolerated_no_execute_taints_reject() {
        let node = tainted("[{key: dedicated, value: db, effect: NoExecute}]");
        let untolerating = pod("spec:\n  containers: [{name: c}]\n");
        assert_eq!(
            rejection(&untolerating, &[], &node),
            Rejection {
                reason: "TaintToleration".into(),
                message:
                    "Predicate TaintToleration failed: node(s) had taints that the pod didn't tolerate"
                        .into(),
            }
        );
        let tolerations = [
            (
                "[{key: dedicated, operator: Equal, value: db, effect: NoExecute}]",
                true,
            ),
            ("[{key: dedicated, value: db}]", true),
            ("[{key: dedicated, operator: Exists}]", true),
            ("[{operator: Exists}]", true),
            (
                "[{key: dedicated, operator: Exists, effect: NoExecute, tolerationSeconds: 30}]",
                true,
            ),
            ("[{key: dedicated, value: web}]", false),
            (
                "[{key: dedicated, operator: Exists, effect: NoSchedule}]",
                false,
            ),
            ("[{key: other, operator: Exists}]", false),
        ];
        for (tolerations, admitted) in tolerations {
            let pod = pod(&format!(
                "spec:\n  containers: [{{name: c}}]\n  tolerations: {tolerations}\n"
            ));
            assert_eq!(admit(&pod, &[], &node).is_ok(), admitted, "{tolerations}");
        }
    }

    #[test]
    fn other_taint_effects_and_static_pods_are_not_checked() {
        let node = tainted("[{key: a, effect: NoSchedule}, {key: b, effect: PreferNoSchedule}]");
        let plain = pod("spec:\n  containers: [{name: c}]\n");
        assert_eq!(admit(&plain, &[], &node), Ok(()));

        let node = tainted("[{key: dedicated, effect: NoExecute}]");
        let from_file = pod(
            "metadata: {annotations: {kubernetes.io/config.source: file}}\nspec:\n  containers: [{name: c}]\n",
        );
        assert_eq!(admit(&from_file, &[], &node), Ok(()));
        let from_api = pod(
            "metadata: {annotations: {kubernetes.io/config.source: api}}\nspec:\n  containers: [{name: c}]\n",
        );
        assert_eq!(rejection(&from_api, &[], &node).reason, "TaintToleration");
    }

    #[test]
    fn cpu_beyond_what_is_left_rejects() {
        let first = requesting("a", "1", "1Gi");
        let second = requesting("b", "800m", "1Gi");
        let wanted = requesting("new", "500m", "100Mi");
        let rejected = rejection(&wanted, &[&first, &second], &node());
        assert_eq!(
            rejected,
            Rejection {
                reason: "OutOfcpu".into(),
                message: "Node didn't have enough resource: cpu, requested: 500, used: 1800, capacity: 2000"
                    .into(),
            }
        );
        assert_eq!(
            rejected.status_message(),
            "Pod was rejected: Node didn't have enough resource: cpu, requested: 500, used: 1800, capacity: 2000"
        );
        let fits = requesting("new", "200m", "100Mi");
        assert_eq!(admit(&fits, &[&first, &second], &node()), Ok(()));
    }

    #[test]
    fn memory_and_ephemeral_storage_beyond_what_is_left_reject() {
        let running = requesting("a", "100m", "3Gi");
        let wanted = requesting("new", "100m", "1025Mi");
        assert_eq!(
            rejection(&wanted, &[&running], &node()),
            Rejection {
                reason: "OutOfmemory".into(),
                message: "Node didn't have enough resource: memory, requested: 1074790400, used: 3221225472, capacity: 4294967296"
                    .into(),
            }
        );
        assert_eq!(
            admit(&requesting("new", "100m", "1Gi"), &[&running], &node()),
            Ok(())
        );

        let storage = |amount: &str| {
            pod(&format!(
                "spec:\n  containers:\n  - {{name: c, resources: {{requests: {{ephemeral-storage: {amount}}}}}}}\n"
            ))
        };
        assert_eq!(
            rejection(&storage("11Gi"), &[], &node()),
            Rejection {
                reason: "OutOfephemeral-storage".into(),
                message: "Node didn't have enough resource: ephemeral-storage, requested: 11811160064, used: 0, capacity: 10737418240"
                    .into(),
            }
        );
        assert_eq!(admit(&storage("10Gi"), &[], &node()), Ok(()));
    }

    #[test]
    fn max_pods_rejects_the_pod_beyond_it() {
        let node = NodeInfo {
            max_pods: 2,
            ..node()
        };
        let (a, b) = (requesting("a", "0", "0"), requesting("b", "0", "0"));
        let third = pod("spec:\n  containers: [{name: c}]\n");
        assert_eq!(
            rejection(&third, &[&a, &b], &node),
            Rejection {
                reason: "OutOfpods".into(),
                message:
                    "Node didn't have enough resource: pods, requested: 1, used: 2, capacity: 2"
                        .into(),
            }
        );
        assert_eq!(admit(&third, &[&a], &node), Ok(()));
    }

    #[test]
    fn a_pod_that_requests_nothing_fits_a_full_node() {
        let hog = requesting("hog", "2", "4Gi");
        let best_effort = pod("spec:\n  containers: [{name: c}]\n");
        assert_eq!(admit(&best_effort, &[&hog], &node()), Ok(()));
    }

    /// Regular 300m + 200m, a sidecar of 100m and an init container of 750m started after
    /// it: the init phase needs 850m, the running phase 600m; overhead adds 50m.
    const LAYERED: &str = "
spec:
  overhead: {cpu: 50m}
  initContainers:
  - {name: sidecar, restartPolicy: Always, resources: {requests: {cpu: 100m}}}
  - {name: setup, resources: {requests: {cpu: 750m}}}
  containers:
  - {name: a, resources: {requests: {cpu: 300m}}}
  - {name: b, resources: {requests: {cpu: 200m}}}
";

    #[test]
    fn effective_requests_count_init_containers_sidecars_and_overhead() {
        let layered = pod(LAYERED);
        let running = requesting("a", "1200m", "0");
        assert_eq!(
            rejection(&layered, &[&running], &node()).message,
            "Node didn't have enough resource: cpu, requested: 900, used: 1200, capacity: 2000"
        );
        let running = requesting("a", "1100m", "0");
        assert_eq!(admit(&layered, &[&running], &node()), Ok(()));
    }

    #[test]
    fn running_pods_count_at_their_effective_requests() {
        // The layered pod counts 900m against the node, not the 600m of its running phase.
        let layered = pod(LAYERED);
        let wanted = requesting("new", "1101m", "0");
        assert_eq!(
            rejection(&wanted, &[&layered], &node()).message,
            "Node didn't have enough resource: cpu, requested: 1101, used: 900, capacity: 2000"
        );
        let sequential = pod(
            "spec:\n  initContainers:\n  - {name: i, resources: {requests: {cpu: '1'}}}\n  containers:\n  - {name: c, resources: {requests: {cpu: 100m}}}\n",
        );
        assert_eq!(
            rejection(&wanted, &[&sequential], &node()).message,
            "Node didn't have enough resource: cpu, requested: 1101, used: 1000, capacity: 2000"
        );
    }

    #[test]
    fn hugepages_and_extended_resources() {
        let wanting = |resource: &str, amount: &str| {
            pod(&format!(
                "spec:\n  containers:\n  - {{name: c, resources: {{requests: {{{resource}: {amount}}}}}}}\n"
            ))
        };
        assert_eq!(
            rejection(&wanting("example.com/gpu", "3"), &[], &node()),
            Rejection {
                reason: "OutOfexample.com/gpu".into(),
                message: "Node didn't have enough resource: example.com/gpu, requested: 3, used: 0, capacity: 2"
                    .into(),
            }
        );
        assert_eq!(
            admit(&wanting("example.com/gpu", "2"), &[], &node()),
            Ok(())
        );
        // The node knows nothing of it: someone else provides it.
        assert_eq!(
            admit(&wanting("example.com/fpga", "1"), &[], &node()),
            Ok(())
        );
        // Hugepages are native: a node without them has none.
        assert_eq!(
            rejection(&wanting("hugepages-2Mi", "4Mi"), &[], &node()),
            Rejection {
                reason: "OutOfhugepages-2Mi".into(),
                message: "Node didn't have enough resource: hugepages-2Mi, requested: 4194304, used: 0, capacity: 0"
                    .into(),
            }
        );
    }

    #[test]
    fn host_ports_conflict_on_the_same_ip_or_any_ip() {
        let binding = |ip: &str, protocol: &str| {
            pod(&format!(
                "spec:\n  containers:\n  - {{name: c, ports: [{{containerPort: 80, hostPort: 8080, hostIP: '{ip}', protocol: '{protocol}'}}]}}\n"
            ))
        };
        let on_any = binding("", "");
        let on_one = binding("10.0.0.1", "TCP");
        let cases = [
            (&on_any, binding("", "TCP"), false),
            (&on_any, binding("10.0.0.2", "TCP"), false),
            (&on_one, binding("", ""), false),
            (&on_one, binding("10.0.0.1", ""), false),
            (&on_one, binding("10.0.0.2", "TCP"), true),
            (&on_any, binding("", "UDP"), true),
        ];
        for (index, (running, wanted, admitted)) in cases.into_iter().enumerate() {
            let result = admit(&wanted, &[running], &node());
            let expected = if admitted {
                Ok(())
            } else {
                Err(predicate(NODE_PORTS, NODE_PORTS_DESC))
            };
            assert_eq!(result, expected, "case {index}");
        }
    }

    #[test]
    fn the_pod_os_must_be_this_node_os() {
        let labelled = pod(
            "metadata: {labels: {kubernetes.io/os: windows}}\nspec:\n  containers: [{name: c}]\n",
        );
        assert_eq!(
            rejection(&labelled, &[], &node()),
            Rejection {
                reason: "PodOSSelectorNodeLabelDoesNotMatch".into(),
                message:
                    "Failed to admit pod as the `kubernetes.io/os` label doesn't match node label"
                        .into(),
            }
        );
        let field = pod("spec:\n  os: {name: windows}\n  containers: [{name: c}]\n");
        assert_eq!(
            rejection(&field, &[], &node()),
            Rejection {
                reason: "PodOSNotSupported".into(),
                message: "Failed to admit pod as the OS field doesn't match node OS".into(),
            }
        );
        let linux = pod("metadata: {labels: {kubernetes.io/os: linux}}\nspec:\n  os: {name: linux}\n  containers: [{name: c}]\n");
        assert_eq!(admit(&linux, &[], &node()), Ok(()));
    }

    #[test]
    fn the_first_failure_in_kubelet_order_is_reported() {
        // Out of cpu, off the node selector and named for another node: resources come first.
        let running = requesting("a", "2", "0");
        let wanted = pod(
            "spec:\n  nodeName: node-b\n  nodeSelector: {disk: ssd}\n  containers:\n  - {name: c, resources: {requests: {cpu: 100m}}}\n",
        );
        assert_eq!(rejection(&wanted, &[&running], &node()).reason, "OutOfcpu");
        // Node affinity before node name.
        assert_eq!(rejection(&wanted, &[], &node()).reason, "NodeAffinity");
    }

    #[test]
    fn critical_pods_are_refused_for_resources_as_nothing_is_preempted() {
        let running = requesting("a", "2", "4Gi");
        let full = NodeInfo {
            max_pods: 1,
            ..node()
        };
        let mut static_pod = pod("metadata: {annotations: {kubernetes.io/config.source: file}}");
        static_pod
            .spec
            .get_or_insert_with(Default::default)
            .containers = requesting("new", "1", "1Gi").spec.expect("spec").containers;
        assert_eq!(
            rejection(&static_pod, &[&running], &full).reason,
            "OutOfpods"
        );
        // Resources come first, then the other checks.
        let static_elsewhere = pod(
            "metadata: {annotations: {kubernetes.io/config.source: file}}\nspec:\n  nodeName: node-b\n  containers:\n  - {name: c, resources: {requests: {cpu: '1'}}}\n",
        );
        assert_eq!(
            rejection(&static_elsewhere, &[&running], &full).reason,
            "OutOfpods"
        );
        assert_eq!(
            rejection(&static_elsewhere, &[], &node()),
            predicate(NODE_NAME, NODE_NAME_DESC)
        );
        // Priority just below system-critical is not critical.
        let high = pod(
            "spec:\n  priority: 1999999999\n  containers:\n  - {name: c, resources: {requests: {cpu: '1'}}}\n",
        );
        assert_eq!(rejection(&high, &[&running], &node()).reason, "OutOfcpu");
    }
}
