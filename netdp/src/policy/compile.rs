//! NetworkPolicies, Namespaces and pods in; what the policy maps should hold out. Pure.
//!
//! The semantics are `networking.k8s.io/v1`'s, as the API reference and the upstream docs
//! state them:
//!
//! - A pod is isolated for a direction when a policy of its own namespace selects it and has
//!   that direction in `policyTypes` (defaulted as the API server does: `Ingress`, plus
//!   `Egress` when the policy has egress rules). What an isolated pod may do is the union of
//!   the rules of every policy that isolates it in that direction.
//! - A rule without peers (`from`/`to` absent or empty) matches every address; one without
//!   `ports` matches every protocol and port. A peer's `podSelector` alone means pods of the
//!   policy's namespace, `namespaceSelector` alone all pods of the namespaces it selects, both
//!   together pods that both select. `ipBlock` matches addresses, pods' included.
//! - A named port is looked up among the destination pod's container ports: the endpoint's
//!   own for ingress, the peer's for egress, so an egress named port reaches pods only.
//!
//! The datapath judges a peer address by its longest matching prefix, so each prefix emitted
//! carries everything allowed to the addresses for which it is the longest match; an empty set
//! shadows a shorter prefix (an `except`, say).
//!
//! Where the API server would have rejected a field, the part it spoils is left out and a
//! [`Problem`] says so. Left-out parts never widen what is allowed: a peer or port that cannot
//! be read matches nothing, and a rule whose every peer (or port) is unreadable allows
//! nothing.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::{Hash, Hasher},
    net::{IpAddr, Ipv4Addr},
    ops::Range,
    sync::Arc,
};

use k8s_openapi::{
    api::{
        core::v1::Namespace,
        networking::v1::{
            IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
        },
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use super::{Direction, NamedPort, PolicyPod, PolicyProtocol, Problem};
use crate::service::Reporter;

/// The label the API server puts on every Namespace, naming it.
pub(super) const LABEL_METADATA_NAME: &str = "kubernetes.io/metadata.name";

/// What [`compile`] made of its input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// Every pod with an interface on this node, by ifindex, isolated or not.
    pub endpoints: BTreeMap<u32, Endpoint>,
    /// For every isolated direction of every endpoint: peer prefix → the ports allowed to or
    /// from it. An empty set allows nothing; it exists to shadow a shorter prefix.
    pub peers: BTreeMap<PeerPrefix, PortSet>,
    /// What could not be used, each naming the object, the field and the value.
    pub problems: Vec<Problem>,
}

/// An endpoint: a pod with an interface on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `namespace/name`.
    pub pod: String,
    /// `Some(policy)`: isolated for ingress, `policy` (`namespace/name`) being the first by
    /// name of those that select the pod for ingress. `None`: everything may come in.
    pub ingress: Option<String>,
    /// Likewise for egress.
    pub egress: Option<String>,
}

impl Endpoint {
    /// The policy isolating the endpoint in `direction`, if any.
    pub fn isolated(&self, direction: Direction) -> Option<&str> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// A peer CIDR of one endpoint's direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerPrefix {
    pub endpoint: u32,
    pub direction: Direction,
    /// With its host bits zero.
    pub address: Ipv4Addr,
    pub prefix_len: u8,
}

/// Destination ports allowed, each with the policy (`namespace/name`) that allows it.
///
/// As [`compile`] makes them: a range of every protocol stands alone (it allows everything,
/// and its policy, the first by name of those allowing everything, takes the credit for all);
/// otherwise the ranges of one protocol are disjoint, adjacent ones name different policies,
/// and a port several policies allow is credited to the first by name.
///
/// Sorted and without repeats (build one with `collect`). A slice, not a tree: a table holds
/// one set for each of up to 100,000 peer addresses, most of them a single range.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSet(pub Box<[PortRange]>);

impl FromIterator<PortRange> for PortSet {
    fn from_iter<I: IntoIterator<Item = PortRange>>(ranges: I) -> Self {
        let mut ranges: Vec<PortRange> = ranges.into_iter().collect();
        ranges.sort_unstable();
        ranges.dedup();
        PortSet(ranges.into_boxed_slice())
    }
}

impl PortSet {
    /// Whether the set allows `protocol` (an `IPPROTO_*` number) to `port`.
    pub fn allows(&self, protocol: u8, port: u16) -> bool {
        self.0.iter().any(|r| match r.protocol {
            None => true,
            Some(p) => p.number() == protocol && (r.first..=r.last).contains(&port),
        })
    }
}

/// A range of destination ports of one protocol, or everything.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    /// `None`: every protocol and port (a rule without `ports`); `first` and `last` are then
    /// 0 and 65535.
    pub protocol: Option<PolicyProtocol>,
    pub first: u16,
    pub last: u16,
    /// Interned: every range one policy is credited for shares one copy.
    pub policy: Arc<str>,
}

/// Turns policies into map contents for the endpoints among `pods`.
///
/// Deterministic: the same input in any order gives the same output. Problems are grouped by
/// object (kind, namespace, name) and within an object come in the order of its fields.
pub fn compile<'p, 'n>(
    policies: impl IntoIterator<Item = &'p NetworkPolicy>,
    namespaces: impl IntoIterator<Item = &'n Namespace>,
    pods: &[PolicyPod],
) -> Compiled {
    compile_in(&PodWorld::new(namespaces, pods.to_vec()), policies)
}

/// [`compile`] against pods and namespaces indexed beforehand: what a policy change costs
/// when the pods have not changed.
pub fn compile_in<'p>(
    world: &PodWorld,
    policies: impl IntoIterator<Item = &'p NetworkPolicy>,
) -> Compiled {
    let mut problems = Vec::new();
    let pods: Vec<&PolicyPod> = world.pods.iter().collect();

    // Sorted by name, so that the first isolating policy is the first in this order. Two
    // objects with one name (possible in a manifest directory) are ordered by content.
    let mut ordered: Vec<&NetworkPolicy> = policies.into_iter().collect();
    ordered.sort_by(|a, b| {
        object_key(a)
            .cmp(&object_key(b))
            .then_with(|| format!("{:?}", a.spec).cmp(&format!("{:?}", b.spec)))
    });
    let mut resolve = |namespace: &str, namespaces: Option<&Selector>, pods: Option<&Selector>| {
        world.resolve(namespace, namespaces, pods)
    };
    let parsed: Vec<ParsedPolicy> = ordered
        .into_iter()
        .filter_map(|p| parse_policy(p, &mut resolve, &mut problems))
        .collect();

    let mut compiled = Compiled::default();
    // Endpoints selected by the same policies (and, for ingress, with the same named ports)
    // get the same peers: computed once.
    let mut tables: BTreeMap<TableKey, BTreeMap<Cidr, PortSet>> = BTreeMap::new();
    let mut owners: BTreeMap<u32, &PolicyPod> = BTreeMap::new();
    for pod in pods.iter().copied() {
        let Some(ifindex) = pod.ifindex else {
            continue;
        };
        if let Some(owner) = owners.get(&ifindex) {
            report_taken_interface(pod, ifindex, owner, &mut problems);
            continue;
        }
        owners.insert(ifindex, pod);

        // `parsed` is in namespace order: the pod's namespace's policies are contiguous.
        let first = parsed.partition_point(|p| *p.namespace < *pod.namespace);
        let selecting: Vec<usize> = (first..parsed.len())
            .take_while(|i| *parsed[*i].namespace == *pod.namespace)
            .filter(|i| parsed[*i].selector.matches(&pod.labels))
            .collect();
        let mut endpoint = Endpoint {
            pod: pod.key(),
            ingress: None,
            egress: None,
        };
        for direction in [Direction::Ingress, Direction::Egress] {
            let isolating: Vec<usize> = selecting
                .iter()
                .copied()
                .filter(|i| parsed[*i].rules(direction).is_some())
                .collect();
            let Some(first) = isolating.first() else {
                continue;
            };
            let name = Some(parsed[*first].key.clone());
            match direction {
                Direction::Ingress => endpoint.ingress = name,
                Direction::Egress => endpoint.egress = name,
            }
            let key = TableKey {
                direction,
                policies: isolating,
                // Only ingress resolves named ports against the endpoint itself.
                named_ports: match direction {
                    Direction::Ingress => sorted_named_ports(pod),
                    Direction::Egress => Vec::new(),
                },
            };
            let table = tables.entry(key).or_insert_with_key(|key| {
                peer_table(&parsed, &key.policies, direction, &key.named_ports, &pods)
            });
            for (cidr, set) in table.iter() {
                let prefix = PeerPrefix {
                    endpoint: ifindex,
                    direction,
                    address: Ipv4Addr::from_bits(cidr.bits),
                    prefix_len: cidr.len,
                };
                compiled.peers.insert(prefix, set.clone());
            }
        }
        compiled.endpoints.insert(ifindex, endpoint);
    }

    // Stable: within one object, problems keep the order in which its fields were read.
    problems.sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
    compiled.problems = problems;
    compiled
}

/// The fewest aligned blocks `(first port, fixed leading bits)` that cover `first..=last`
/// exactly: block `(p, n)` holds the `2^(16 - n)` ports from `p`, and `p`'s low `16 - n` bits
/// are zero. Empty when `first > last`.
pub fn port_blocks(first: u16, last: u16) -> Vec<(u16, u8)> {
    let mut blocks = Vec::new();
    let (mut next, last) = (u32::from(first), u32::from(last));
    while next <= last {
        // The largest block aligned at `next` that does not pass `last`.
        let mut size_bits = next.trailing_zeros().min(16);
        while next + (1 << size_bits) - 1 > last {
            size_bits -= 1;
        }
        blocks.push((next as u16, (16 - size_bits) as u8));
        next += 1 << size_bits;
    }
    blocks
}

/// An IPv4 prefix, host order, host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Cidr {
    pub(super) bits: u32,
    pub(super) len: u8,
}

impl Cidr {
    pub(super) const EVERYWHERE: Cidr = Cidr { bits: 0, len: 0 };

    pub(super) fn new(bits: u32, len: u8) -> Self {
        Self {
            bits: bits & mask(len),
            len,
        }
    }

    pub(super) fn host(address: Ipv4Addr) -> Self {
        Self::new(address.to_bits(), 32)
    }

    pub(super) fn contains(self, other: Cidr) -> bool {
        self.len <= other.len && other.bits & mask(self.len) == self.bits
    }
}

fn mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from_bits(self.bits), self.len)
    }
}

/// Which endpoints share a peer table.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct TableKey {
    direction: Direction,
    /// Indices into the parsed policies, in order.
    policies: Vec<usize>,
    named_ports: Vec<NamedPort>,
}

pub(super) fn sorted_named_ports(pod: &PolicyPod) -> Vec<NamedPort> {
    let mut ports = pod.named_ports.to_vec();
    ports.sort();
    ports
}

/// The pods and namespaces that selectors choose from, indexed so that choosing takes time
/// in proportion to what is chosen rather than to the cluster. Building one costs time in
/// proportion to the pods (some 80 ms for 100,000); keep it while only policies change.
pub struct PodWorld {
    /// Sorted, so that a namespace's pods are contiguous; peers name pods by index here.
    pods: Vec<PolicyPod>,
    /// The namespaces that have pods, by name.
    namespaces: Vec<PodNamespace>,
    /// Every pod's namespace, as an index into `namespaces`.
    pod_namespace: Vec<usize>,
    /// The pods carrying each label, by the hash of `(key, value)`, in order. Two labels may
    /// share a hash: whoever reads a list checks the labels themselves.
    by_label: HashMap<u64, Vec<usize>>,
}

struct PodNamespace {
    name: Arc<str>,
    labels: BTreeMap<String, String>,
    /// Its pods, as indices into [`PodWorld::pods`].
    pods: Range<usize>,
}

/// The index key of label `key=value`.
fn label_hash(key: &str, value: &str) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    (key, value).hash(&mut hasher);
    hasher.finish()
}

impl PodWorld {
    /// Indexes `pods` (every pod policies may name, this node's with their interface) and
    /// the namespaces' labels.
    pub fn new<'n>(
        namespaces: impl IntoIterator<Item = &'n Namespace>,
        mut pods: Vec<PolicyPod>,
    ) -> Self {
        // Labels last: two copies of a pod that differ only in labels (a manifest directory
        // can hold both) must compile alike in any input order.
        pods.sort_by(|a, b| {
            (&a.namespace, &a.name, a.ip, a.ifindex, &a.labels).cmp(&(
                &b.namespace,
                &b.name,
                b.ip,
                b.ifindex,
                &b.labels,
            ))
        });
        let labels = namespace_labels(namespaces, pods.iter());
        Self::from_sorted(pods, labels)
    }

    /// `pods` sorted by namespace first; `labels` every namespace's, as [`namespace_labels`]
    /// makes them.
    fn from_sorted(
        pods: Vec<PolicyPod>,
        mut labels: BTreeMap<String, BTreeMap<String, String>>,
    ) -> Self {
        let mut namespaces: Vec<PodNamespace> = Vec::new();
        let mut pod_namespace = Vec::with_capacity(pods.len());
        let mut by_label: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, pod) in pods.iter().enumerate() {
            match namespaces.last_mut() {
                Some(last) if last.name == pod.namespace => last.pods.end = i + 1,
                _ => namespaces.push(PodNamespace {
                    name: pod.namespace.clone(),
                    labels: labels.remove(&*pod.namespace).unwrap_or_default(),
                    pods: i..i + 1,
                }),
            }
            pod_namespace.push(namespaces.len() - 1);
            for (key, value) in pod.labels.iter() {
                by_label.entry(label_hash(key, value)).or_default().push(i);
            }
        }
        Self {
            pods,
            namespaces,
            pod_namespace,
            by_label,
        }
    }

    /// The namespace named `name`, as an index into `namespaces`, if it has pods.
    fn namespace(&self, name: &str) -> Option<usize> {
        self.namespaces
            .binary_search_by(|n| (*n.name).cmp(name))
            .ok()
    }

    /// The pods of `chosen` (indices into `namespaces`, in order) that `selector` selects
    /// (all of them when `None`), in order.
    fn select(&self, chosen: &[usize], selector: Option<&Selector>) -> Vec<usize> {
        let in_chosen: usize = chosen.iter().map(|n| self.namespaces[*n].pods.len()).sum();
        let matches = |i: &usize| selector.is_none_or(|s| s.matches(&self.pods[*i].labels));
        match selector.and_then(|s| self.labelled(s)) {
            Some(candidates) if candidates.len() < in_chosen => candidates
                .into_iter()
                .filter(|i| chosen.binary_search(&self.pod_namespace[*i]).is_ok())
                .filter(matches)
                .collect(),
            _ => chosen
                .iter()
                .flat_map(|n| self.namespaces[*n].pods.clone())
                .filter(matches)
                .collect(),
        }
    }

    /// Every pod that `selector` may select, in order, when one of its requirements narrows
    /// them to pods with certain labels: the fewest such.
    fn labelled(&self, selector: &Selector) -> Option<Vec<usize>> {
        let (key, values) = selector
            .requirements
            .iter()
            .filter_map(Requirement::needed_values)
            .min_by_key(|(key, values)| self.pods_with(key, values).count())?;
        let mut pods: Vec<usize> = self.pods_with(key, values).collect();
        // A pod has one value per key: only several values need merging (and two values
        // sharing a hash, deduplicating).
        if values.len() > 1 {
            pods.sort_unstable();
            pods.dedup();
        }
        Some(pods)
    }

    /// The pods with label `key` set to one of `values`, in order for each value.
    fn pods_with<'s>(
        &'s self,
        key: &'s str,
        values: &'s [String],
    ) -> impl Iterator<Item = usize> + 's {
        values
            .iter()
            .filter_map(move |value| self.by_label.get(&label_hash(key, value)))
            .flatten()
            .copied()
    }
}

/// Every namespace's labels: its object's, and always `kubernetes.io/metadata.name`, as the
/// API server sets it. A namespace known only from its pods has only that label.
fn namespace_labels<'n, 'p>(
    namespaces: impl IntoIterator<Item = &'n Namespace>,
    pods: impl Iterator<Item = &'p PolicyPod>,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut objects: Vec<(&str, BTreeMap<String, String>)> = namespaces
        .into_iter()
        .filter_map(|n| {
            let name = n.metadata.name.as_deref().filter(|n| !n.is_empty())?;
            Some((name, n.metadata.labels.clone().unwrap_or_default()))
        })
        .collect();
    // Of two objects with one name, the first in this order counts, whatever the input's.
    objects.sort();
    let mut labels: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (name, object_labels) in objects {
        labels.entry(name.to_owned()).or_insert(object_labels);
    }
    for pod in pods {
        if !labels.contains_key(&*pod.namespace) {
            labels.insert(pod.namespace.to_string(), BTreeMap::new());
        }
    }
    for (name, labels) in labels.iter_mut() {
        labels.insert(LABEL_METADATA_NAME.to_owned(), name.clone());
    }
    labels
}

/// A namespace left out (as in a manifest) is `default`, as `kubectl apply` would make it.
pub(super) fn object_key(policy: &NetworkPolicy) -> (&str, &str) {
    (
        policy
            .metadata
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or("default"),
        policy.metadata.name.as_deref().unwrap_or(""),
    )
}

/// A policy as the compiler uses it: selectors checked, peers resolved to pods or prefixes.
/// Strings are borrowed from the policy.
pub(super) struct ParsedPolicy<S = Vec<usize>> {
    /// `namespace/name`.
    pub(super) key: String,
    pub(super) namespace: String,
    pub(super) selector: Selector,
    /// `Some` when `policyTypes` has `Ingress`; the rules may be none (deny all).
    pub(super) ingress: Option<Vec<Rule<S>>>,
    pub(super) egress: Option<Vec<Rule<S>>>,
}

impl<S> ParsedPolicy<S> {
    pub(super) fn rules(&self, direction: Direction) -> Option<&[Rule<S>]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

pub(super) struct Rule<S = Vec<usize>> {
    /// `None`: every address.
    pub(super) peers: Option<Vec<Peer<S>>>,
    /// `None`: every protocol and port.
    pub(super) ports: Option<Vec<PortSpec>>,
}

/// A peer: the pods it selects (in a whole compile, indices into [`PodWorld::pods`]; in the
/// incremental table, the selector that tracks them), or addresses.
pub(super) enum Peer<S = Vec<usize>> {
    Pods(S),
    Block(Block),
}

/// An `ipBlock`: `cidr` without the `except`s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Block {
    pub(super) cidr: Cidr,
    pub(super) except: Vec<Cidr>,
}

impl Block {
    pub(super) fn contains(&self, prefix: Cidr) -> bool {
        self.cidr.contains(prefix) && !self.except.iter().any(|e| e.contains(prefix))
    }
}

pub(super) enum PortSpec {
    /// A protocol's ports `first..=last` (all of them when `port` is absent).
    Range(PolicyProtocol, u16, u16),
    /// A container port's name, looked up in the destination pod.
    Named(PolicyProtocol, String),
}

/// A field's path, such as `spec.ingress[0].from[1].ipBlock.cidr`, written out only when a
/// problem names it: most fields never do.
#[derive(Clone, Copy)]
enum Field<'a> {
    Root(&'static str),
    Name(&'a Field<'a>, &'static str),
    Index(&'a Field<'a>, usize),
}

impl Field<'_> {
    fn name(&self, name: &'static str) -> Field<'_> {
        Field::Name(self, name)
    }

    fn index(&self, index: usize) -> Field<'_> {
        Field::Index(self, index)
    }
}

impl std::fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Field::Root(name) => f.write_str(name),
            Field::Name(parent, name) => write!(f, "{parent}.{name}"),
            Field::Index(parent, index) => write!(f, "{parent}[{index}]"),
        }
    }
}

/// Reads one policy, reporting what it cannot use. `None` when nothing of it can be used.
/// `resolve` turns a peer's selectors into what the rules hold for its pods (see
/// [`Resolve`]).
pub(super) fn parse_policy<S>(
    policy: &NetworkPolicy,
    resolve: &mut Resolve<'_, S>,
    problems: &mut Vec<Problem>,
) -> Option<ParsedPolicy<S>> {
    let (namespace, name) = object_key(policy);
    let mut reporter = Reporter {
        kind: "NetworkPolicy",
        namespace,
        name,
        problems,
    };
    if name.is_empty() {
        reporter.report(
            "metadata.name",
            "",
            "a NetworkPolicy needs a name; it is ignored",
        );
        return None;
    }
    // A policy without `spec` is an empty spec: the Go type embeds it.
    static EMPTY_SPEC: NetworkPolicySpec = NetworkPolicySpec {
        egress: None,
        ingress: None,
        pod_selector: None,
        policy_types: None,
    };
    let spec = policy.spec.as_ref().unwrap_or(&EMPTY_SPEC);

    let selector = match &spec.pod_selector {
        None => Selector::default(),
        Some(s) => match parse_selector(s, Field::Root("spec.podSelector"), &mut reporter) {
            Some(selector) => selector,
            None => {
                reporter.report(
                    "spec.podSelector",
                    "",
                    "the pods this policy applies to are unknown; it is ignored",
                );
                return None;
            }
        },
    };

    // `SetDefaults_NetworkPolicy`: without policyTypes, Ingress, plus Egress when there are
    // egress rules.
    let (mut ingress, mut egress) = (false, false);
    match spec.policy_types.as_deref() {
        None | Some([]) => {
            ingress = true;
            egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        }
        Some(types) => {
            for (i, policy_type) in types.iter().enumerate() {
                match policy_type.as_str() {
                    "Ingress" => ingress = true,
                    "Egress" => egress = true,
                    other => reporter.report(
                        format!("spec.policyTypes[{i}]"),
                        other,
                        "unknown policy type (Ingress or Egress); it is ignored",
                    ),
                }
            }
        }
    }

    // One rule of `spec.<root>[i]`, whose peers are in field `peers_field`.
    let mut rule = |root: &'static str,
                    i: usize,
                    peers_field: &'static str,
                    peers: Option<&[NetworkPolicyPeer]>,
                    ports: Option<&[NetworkPolicyPort]>| {
        let rules = Field::Root(root);
        let field = rules.index(i);
        Rule {
            peers: parse_peers(
                peers,
                field.name(peers_field),
                namespace,
                resolve,
                &mut reporter,
            ),
            ports: parse_ports(ports, field.name("ports"), &mut reporter),
        }
    };
    let ingress = ingress.then(|| {
        spec.ingress
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| {
                rule(
                    "spec.ingress",
                    i,
                    "from",
                    r.from.as_deref(),
                    r.ports.as_deref(),
                )
            })
            .collect()
    });
    let egress = egress.then(|| {
        spec.egress
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| rule("spec.egress", i, "to", r.to.as_deref(), r.ports.as_deref()))
            .collect()
    });

    Some(ParsedPolicy {
        key: format!("{namespace}/{name}"),
        namespace: namespace.to_owned(),
        selector,
        ingress,
        egress,
    })
}

/// A rule's peers; `None` (every address) when the list is absent or empty. A peer that
/// cannot be used is left out, so a list of only such peers matches nothing.
fn parse_peers<S>(
    peers: Option<&[NetworkPolicyPeer]>,
    field: Field<'_>,
    namespace: &str,
    resolve: &mut Resolve<'_, S>,
    reporter: &mut Reporter<'_>,
) -> Option<Vec<Peer<S>>> {
    let peers = peers.filter(|p| !p.is_empty())?;
    Some(
        peers
            .iter()
            .enumerate()
            .filter_map(|(i, peer)| parse_peer(peer, field.index(i), namespace, resolve, reporter))
            .collect(),
    )
}

/// What a peer's selectors stand for: called with the policy's namespace, the
/// `namespaceSelector` (`None`: the policy's namespace) and the `podSelector` (`None`: every
/// pod of the namespaces chosen).
pub(super) type Resolve<'r, S> = dyn FnMut(&str, Option<&Selector>, Option<&Selector>) -> S + 'r;

/// `ValidateNetworkPolicyPeer` and the peer's meaning.
fn parse_peer<S>(
    peer: &NetworkPolicyPeer,
    field: Field<'_>,
    namespace: &str,
    resolve: &mut Resolve<'_, S>,
    reporter: &mut Reporter<'_>,
) -> Option<Peer<S>> {
    if let Some(block) = &peer.ip_block {
        if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
            reporter.report(
                field.to_string(),
                "",
                "an ipBlock cannot be combined with a selector in one peer; this peer is ignored",
            );
            return None;
        }
        return parse_block(block, field.name("ipBlock"), reporter).map(Peer::Block);
    }
    if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
        reporter.report(
            field.to_string(),
            "",
            "a peer needs a podSelector, a namespaceSelector or an ipBlock; this peer is ignored",
        );
        return None;
    }
    let mut read = |selector: &Option<LabelSelector>, name| match selector {
        None => Some(None),
        Some(s) => parse_selector(s, field.name(name), reporter).map(Some),
    };
    let pod_selector = read(&peer.pod_selector, "podSelector")?;
    let namespace_selector = read(&peer.namespace_selector, "namespaceSelector")?;
    Some(Peer::Pods(resolve(
        namespace,
        namespace_selector.as_ref(),
        pod_selector.as_ref(),
    )))
}

impl PodWorld {
    /// The pods a peer's selectors choose, as indices into `pods` (see [`Resolve`]).
    fn resolve(
        &self,
        namespace: &str,
        namespace_selector: Option<&Selector>,
        pod_selector: Option<&Selector>,
    ) -> Vec<usize> {
        let chosen: Vec<usize> = match namespace_selector {
            None => self.namespace(namespace).into_iter().collect(),
            Some(selector) => (0..self.namespaces.len())
                .filter(|n| selector.matches(&self.namespaces[*n].labels))
                .collect(),
        };
        self.select(&chosen, pod_selector)
    }
}

/// The problem of `pod`, which claims interface `ifindex` that `owner` holds: its policy is not
/// enforced.
pub(super) fn report_taken_interface(
    pod: &PolicyPod,
    ifindex: u32,
    owner: &PolicyPod,
    problems: &mut Vec<Problem>,
) {
    Reporter {
        kind: "Pod",
        namespace: &pod.namespace,
        name: &pod.name,
        problems,
    }
    .report(
        "ifindex",
        ifindex.to_string(),
        &format!(
            "the interface is already {}'s; policy is not enforced for this pod",
            owner.key()
        ),
    );
}

fn parse_block(block: &IPBlock, field: Field<'_>, reporter: &mut Reporter<'_>) -> Option<Block> {
    let cidr_field = field.name("cidr");
    let cidr = match parse_cidr(&block.cidr) {
        ParsedCidr::V4(cidr) => cidr,
        ParsedCidr::V6 => {
            reporter.report(
                cidr_field.to_string(),
                block.cidr.as_str(),
                "IPv6 is not enforced by bosun; this peer matches no IPv4 address",
            );
            return None;
        }
        ParsedCidr::Invalid => {
            reporter.report(
                cidr_field.to_string(),
                block.cidr.as_str(),
                "not a CIDR; this peer is ignored",
            );
            return None;
        }
    };
    let mut except = Vec::new();
    let excepts_field = field.name("except");
    for (i, text) in block.except.iter().flatten().enumerate() {
        let except_field = excepts_field.index(i);
        match parse_cidr(text) {
            // `ValidateIPBlock`: a strict subset of the cidr.
            ParsedCidr::V4(e) if cidr.contains(e) && e.len > cidr.len => except.push(e),
            // The set difference is still well defined; it is what is enforced.
            ParsedCidr::V4(e) if e.contains(cidr) => {
                reporter.report(
                    except_field.to_string(),
                    text.as_str(),
                    &format!(
                        "not inside the cidr {cidr} but covering it; this peer matches nothing"
                    ),
                );
                except.push(e);
            }
            ParsedCidr::V4(_) | ParsedCidr::V6 => reporter.report(
                except_field.to_string(),
                text.as_str(),
                &format!("not inside the cidr {cidr}; it excepts nothing"),
            ),
            ParsedCidr::Invalid => {
                // Ignoring only the except would allow what it was meant to deny.
                reporter.report(
                    except_field.to_string(),
                    text.as_str(),
                    "not a CIDR; this peer is ignored",
                );
                return None;
            }
        }
    }
    except.sort();
    except.dedup();
    Some(Block { cidr, except })
}

enum ParsedCidr {
    V4(Cidr),
    V6,
    Invalid,
}

/// `address/length`. Host bits are cleared, as `ParseCIDRSloppy` does.
fn parse_cidr(text: &str) -> ParsedCidr {
    let Some((address, len)) = text.split_once('/') else {
        return ParsedCidr::Invalid;
    };
    let Ok(len) = len.parse::<u8>() else {
        return ParsedCidr::Invalid;
    };
    match address.parse::<IpAddr>() {
        Ok(IpAddr::V4(address)) if len <= 32 => ParsedCidr::V4(Cidr::new(address.to_bits(), len)),
        Ok(IpAddr::V6(_)) if len <= 128 => ParsedCidr::V6,
        _ => ParsedCidr::Invalid,
    }
}

/// A rule's ports; `None` (everything) when the list is absent or empty. A port that cannot
/// be used is left out, so a list of only such ports matches nothing.
fn parse_ports(
    ports: Option<&[NetworkPolicyPort]>,
    field: Field<'_>,
    reporter: &mut Reporter<'_>,
) -> Option<Vec<PortSpec>> {
    let ports = ports.filter(|p| !p.is_empty())?;
    Some(
        ports
            .iter()
            .enumerate()
            .filter_map(|(i, port)| parse_port(port, field.index(i), reporter))
            .collect(),
    )
}

/// `ValidateNetworkPolicyPort`, with `SetDefaults_NetworkPolicyPort` (TCP).
fn parse_port(
    port: &NetworkPolicyPort,
    field: Field<'_>,
    reporter: &mut Reporter<'_>,
) -> Option<PortSpec> {
    let protocol_name = port.protocol.as_deref().unwrap_or("TCP");
    let Some(protocol) = PolicyProtocol::parse(protocol_name) else {
        reporter.report(
            field.name("protocol").to_string(),
            protocol_name,
            "unknown protocol (TCP, UDP or SCTP); this port is ignored",
        );
        return None;
    };
    let end_field = field.name("endPort");
    match &port.port {
        None => {
            if let Some(end) = port.end_port {
                reporter.report(
                    end_field.to_string(),
                    end.to_string(),
                    "endPort needs a numeric port; this port is ignored",
                );
                return None;
            }
            Some(PortSpec::Range(protocol, 0, u16::MAX))
        }
        Some(IntOrString::Int(number)) => {
            let first = match u16::try_from(*number) {
                Ok(first) if first != 0 => first,
                _ => {
                    reporter.report(
                        field.name("port").to_string(),
                        number.to_string(),
                        "not a port number (1-65535); this port is ignored",
                    );
                    return None;
                }
            };
            let last = match port.end_port.map(u16::try_from) {
                None => first,
                Some(Ok(last)) if last >= first => last,
                Some(Ok(_)) => {
                    reporter.report(
                        end_field.to_string(),
                        port.end_port.unwrap_or_default().to_string(),
                        &format!("endPort is below port {first}; this port is ignored"),
                    );
                    return None;
                }
                Some(Err(_)) => {
                    reporter.report(
                        end_field.to_string(),
                        port.end_port.unwrap_or_default().to_string(),
                        "not a port number (1-65535); this port is ignored",
                    );
                    return None;
                }
            };
            Some(PortSpec::Range(protocol, first, last))
        }
        Some(IntOrString::String(name)) => {
            if let Some(end) = port.end_port {
                reporter.report(
                    end_field.to_string(),
                    end.to_string(),
                    &format!(
                        "endPort cannot go with the named port {name:?}; this port is ignored"
                    ),
                );
                return None;
            }
            Some(PortSpec::Named(protocol, name.clone()))
        }
    }
}

/// A checked label selector: every requirement must hold. Empty: selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct Selector {
    pub(super) requirements: Vec<Requirement>,
}

/// A requirement on one label; the values of `In` and `NotIn` are sorted and distinct.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Requirement {
    /// A `matchLabels` entry.
    Equals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    /// The key, and the values one of which it must have, when the requirement needs the
    /// label.
    pub(super) fn needed_values(&self) -> Option<(&str, &[String])> {
        match self {
            Requirement::Equals(key, value) => Some((key, std::slice::from_ref(value))),
            Requirement::In(key, values) => Some((key, values)),
            Requirement::NotIn(..) | Requirement::Exists(_) | Requirement::DoesNotExist(_) => None,
        }
    }
}

impl Selector {
    pub(super) fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let has = |values: &[String], value: &String| values.binary_search(value).is_ok();
        self.requirements.iter().all(|r| match r {
            Requirement::Equals(key, value) => labels.get(key).is_some_and(|v| v == value),
            Requirement::In(key, values) => labels.get(key).is_some_and(|v| has(values, v)),
            Requirement::NotIn(key, values) => labels.get(key).is_none_or(|v| !has(values, v)),
            Requirement::Exists(key) => labels.contains_key(key),
            Requirement::DoesNotExist(key) => !labels.contains_key(key),
        })
    }
}

/// `LabelSelectorAsSelector`: `None` (and a problem) when a requirement is malformed.
fn parse_selector(
    selector: &LabelSelector,
    field: Field<'_>,
    reporter: &mut Reporter<'_>,
) -> Option<Selector> {
    let mut requirements: Vec<Requirement> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| Requirement::Equals(k.clone(), v.clone()))
        .collect();
    let mut valid = true;
    for (i, expression) in selector.match_expressions.iter().flatten().enumerate() {
        let mut values: Vec<String> = expression.values.iter().flatten().cloned().collect();
        values.sort_unstable();
        values.dedup();
        let key = expression.key.clone();
        let requirement = match expression.operator.as_str() {
            "In" if !values.is_empty() => Requirement::In(key, values),
            "NotIn" if !values.is_empty() => Requirement::NotIn(key, values),
            "Exists" if values.is_empty() => Requirement::Exists(key),
            "DoesNotExist" if values.is_empty() => Requirement::DoesNotExist(key),
            "In" | "NotIn" => {
                reporter.report(
                    format!("{field}.matchExpressions[{i}].values"),
                    "",
                    "In and NotIn need values; the selector selects nothing",
                );
                valid = false;
                continue;
            }
            "Exists" | "DoesNotExist" => {
                reporter.report(
                    format!("{field}.matchExpressions[{i}].values"),
                    values.join(","),
                    "Exists and DoesNotExist take no values; the selector selects nothing",
                );
                valid = false;
                continue;
            }
            other => {
                reporter.report(
                    format!("{field}.matchExpressions[{i}].operator"),
                    other,
                    "unknown operator (In, NotIn, Exists or DoesNotExist); the selector selects \
                     nothing",
                );
                valid = false;
                continue;
            }
        };
        requirements.push(requirement);
    }
    valid.then_some(Selector { requirements })
}

/// A [`PortRange`] while tables are built: its policy borrowed, so that gathering and
/// combining ranges copies no names.
#[derive(Clone, Copy, Debug)]
pub(super) struct Allowed<'p> {
    pub(super) protocol: Option<PolicyProtocol>,
    pub(super) first: u16,
    pub(super) last: u16,
    pub(super) policy: &'p str,
}

/// The peer prefixes of one direction of endpoints that `policies` isolate, and that have
/// `named_ports` (for ingress, whose named ports are the endpoint's).
fn peer_table<'p>(
    parsed: &'p [ParsedPolicy],
    policies: &[usize],
    direction: Direction,
    named_ports: &'p [NamedPort],
    pods: &[&'p PolicyPod],
) -> BTreeMap<Cidr, PortSet> {
    // What rules allow, by the kind of address set they allow it for.
    let mut per_prefix: BTreeMap<Cidr, Vec<Allowed>> = BTreeMap::new();
    let mut everywhere: Option<Vec<Allowed>> = None;
    let mut blocks: Vec<(&Block, Vec<Allowed>)> = Vec::new();

    for policy in policies.iter().map(|i| &parsed[*i]) {
        let key = policy.key.as_str();
        for rule in policy.rules(direction).unwrap_or_default() {
            let mut ranges = Vec::new();
            let mut by_peer: Vec<(PolicyProtocol, &str)> = Vec::new();
            match &rule.ports {
                None => ranges.push(Allowed {
                    protocol: None,
                    first: 0,
                    last: u16::MAX,
                    policy: key,
                }),
                Some(ports) => {
                    for port in ports {
                        match port {
                            PortSpec::Range(protocol, first, last) => ranges.push(Allowed {
                                protocol: Some(*protocol),
                                first: *first,
                                last: *last,
                                policy: key,
                            }),
                            PortSpec::Named(protocol, name) => match direction {
                                Direction::Ingress => {
                                    ranges.extend(resolve(named_ports, *protocol, name, key))
                                }
                                Direction::Egress => by_peer.push((*protocol, name)),
                            },
                        }
                    }
                }
            }
            if ranges.is_empty() && by_peer.is_empty() {
                continue;
            }
            // What a pod may be reached on, `ranges` besides or not: its own named ports.
            let mut allow_pod = |pod: &'p PolicyPod, with_ranges: bool| {
                let mut allowed = by_peer
                    .iter()
                    .flat_map(|(protocol, name)| resolve(&pod.named_ports, *protocol, name, key))
                    .chain(ranges.iter().copied().filter(|_| with_ranges))
                    .peekable();
                if allowed.peek().is_some() {
                    per_prefix
                        .entry(Cidr::host(pod.ip))
                        .or_default()
                        .extend(allowed);
                }
            };
            match &rule.peers {
                None => {
                    if !by_peer.is_empty() {
                        pods.iter().for_each(|pod| allow_pod(pod, false));
                    }
                    everywhere.get_or_insert_with(Vec::new).extend(ranges);
                }
                Some(peers) => {
                    for peer in peers {
                        match peer {
                            Peer::Pods(indices) => {
                                indices.iter().for_each(|i| allow_pod(pods[*i], true));
                            }
                            Peer::Block(block) => {
                                if !by_peer.is_empty() {
                                    pods.iter()
                                        .filter(|pod| block.contains(Cidr::host(pod.ip)))
                                        .for_each(|pod| allow_pod(pod, false));
                                }
                                if !ranges.is_empty() {
                                    blocks.push((block, ranges.clone()));
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    // Every prefix some rule names; each address's longest match among them decides.
    let mut prefixes: BTreeSet<Cidr> = per_prefix.keys().copied().collect();
    if everywhere.is_some() {
        prefixes.insert(Cidr::EVERYWHERE);
    }
    // The blocks by cidr, to find those containing a prefix among the few lengths they have.
    let mut blocks_at: BTreeMap<Cidr, Vec<usize>> = BTreeMap::new();
    let mut block_lengths = Lengths::default();
    for (i, (block, _)) in blocks.iter().enumerate() {
        prefixes.insert(block.cidr);
        prefixes.extend(block.except.iter().copied());
        blocks_at.entry(block.cidr).or_default().push(i);
        block_lengths.insert(block.cidr.len);
    }
    let mut by_length: Vec<Cidr> = prefixes.into_iter().collect();
    by_length.sort_by_key(|c| (c.len, c.bits));

    // Shorter prefixes first, so that a prefix is left out when the next shorter one that is
    // kept (or no match at all) already gives the same.
    let mut table: BTreeMap<Cidr, PortSet> = BTreeMap::new();
    let mut table_lengths = Lengths::default();
    let mut allowed: Vec<Allowed> = Vec::new();
    for prefix in by_length {
        // Every rule's address set is a union of "addresses whose longest match is P" for
        // prefixes P: a block contains all or none of a prefix's own addresses, since the
        // block's cidr and excepts are themselves prefixes.
        allowed.clear();
        allowed.extend(per_prefix.get(&prefix).into_iter().flatten());
        allowed.extend(everywhere.iter().flatten());
        for len in block_lengths.up_to(prefix.len) {
            for i in blocks_at
                .get(&Cidr::new(prefix.bits, len))
                .into_iter()
                .flatten()
            {
                let (block, ranges) = &blocks[*i];
                if block.contains(prefix) {
                    allowed.extend(ranges);
                }
            }
        }
        let set = normalize(&allowed);
        let inherited = table_lengths
            .up_to(prefix.len)
            .filter(|len| *len < prefix.len)
            .find_map(|len| table.get(&Cidr::new(prefix.bits, len)));
        let redundant = match inherited {
            Some(shorter) => *shorter == set,
            None => set.0.is_empty(),
        };
        if !redundant {
            table.insert(prefix, set);
            table_lengths.insert(prefix.len);
        }
    }
    table
}

/// A set of prefix lengths (0 to 32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Lengths(u64);

impl Lengths {
    pub(super) fn insert(&mut self, len: u8) {
        self.0 |= 1 << len;
    }

    /// Those of at most `len`, longest first.
    pub(super) fn up_to(&self, len: u8) -> impl Iterator<Item = u8> {
        let mut left = self.0 & (u64::MAX >> (63 - len));
        std::iter::from_fn(move || {
            let longest = 63u32.checked_sub(left.leading_zeros())?;
            left &= !(1 << longest);
            Some(longest as u8)
        })
    }
}

/// The ranges of the ports named `name` for `protocol` among `ports`.
pub(super) fn resolve<'a>(
    ports: &'a [NamedPort],
    protocol: PolicyProtocol,
    name: &'a str,
    policy: &'a str,
) -> impl Iterator<Item = Allowed<'a>> + 'a {
    ports
        .iter()
        .filter(move |p| p.name == name && p.protocol == protocol)
        .map(move |p| Allowed {
            protocol: Some(protocol),
            first: p.port,
            last: p.port,
            policy,
        })
}

/// The canonical [`PortSet`] of a union of ranges: one any-protocol range if there is one,
/// otherwise per protocol disjoint ranges, each port credited to the first policy by name
/// that allows it, and adjacent ranges of one policy joined.
pub(super) fn normalize(ranges: &[Allowed<'_>]) -> PortSet {
    if let Some(policy) = ranges
        .iter()
        .filter(|r| r.protocol.is_none())
        .map(|r| r.policy)
        .min()
    {
        return PortSet(Box::new([PortRange {
            protocol: None,
            first: 0,
            last: u16::MAX,
            policy: crate::intern::intern(policy),
        }]));
    }
    // A sweep over the points where the set of covering ranges changes: per protocol, by
    // point, a range's end (the port after its last) before another's start.
    let mut events: Vec<(PolicyProtocol, u32, bool, &str)> = ranges
        .iter()
        .filter(|r| r.first <= r.last)
        .filter_map(|r| {
            let protocol = r.protocol?;
            Some([
                (protocol, u32::from(r.first), true, r.policy),
                (protocol, u32::from(r.last) + 1, false, r.policy),
            ])
        })
        .flatten()
        .collect();
    events.sort_unstable_by_key(|(protocol, point, starts, _)| (*protocol, *point, *starts));

    // Protocol by protocol, each one's pieces in order: sorted as made.
    let mut set = Vec::new();
    for events in events.chunk_by(|a, b| a.0 == b.0) {
        let protocol = events[0].0;
        let mut active: BTreeMap<&str, usize> = BTreeMap::new();
        let mut pieces: Vec<(u32, u32, &str)> = Vec::new();
        let at_points: Vec<&[(PolicyProtocol, u32, bool, &str)]> =
            events.chunk_by(|a, b| a.1 == b.1).collect();
        for (i, at_point) in at_points.iter().enumerate() {
            let point = at_point[0].1;
            for (_, _, starts, policy) in at_point.iter() {
                if *starts {
                    *active.entry(policy).or_insert(0) += 1;
                } else if let Some(count) = active.get_mut(policy) {
                    *count -= 1;
                    if *count == 0 {
                        active.remove(policy);
                    }
                }
            }
            let (Some((owner, _)), Some(next)) = (active.first_key_value(), at_points.get(i + 1))
            else {
                continue;
            };
            let next = next[0].1;
            match pieces.last_mut() {
                Some(last) if last.1 + 1 == point && last.2 == *owner => last.1 = next - 1,
                _ => pieces.push((point, next - 1, owner)),
            }
        }
        set.extend(pieces.into_iter().map(|(first, last, policy)| PortRange {
            protocol: Some(protocol),
            first: first as u16,
            last: last as u16,
            policy: crate::intern::intern(policy),
        }));
    }
    debug_assert!(set.is_sorted() && set.windows(2).all(|w| w[0] != w[1]));
    PortSet(set.into_boxed_slice())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta};

    /// The fewest aligned blocks covering `first..=last`, by splitting the port trie: a node
    /// the range covers whole is one block, one it misses is none, any other must be split.
    fn fewest_blocks(node_first: u32, node_bits: u8, first: u32, last: u32) -> usize {
        let node_last = node_first + (1u32 << (16 - node_bits)) - 1;
        if node_last < first || node_first > last {
            0
        } else if first <= node_first && node_last <= last {
            1
        } else {
            let half = 1u32 << (15 - node_bits);
            fewest_blocks(node_first, node_bits + 1, first, last)
                + fewest_blocks(node_first + half, node_bits + 1, first, last)
        }
    }

    fn check_blocks(first: u16, last: u16) {
        let blocks = port_blocks(first, last);
        let mut next = u32::from(first);
        for (start, bits) in &blocks {
            assert!(*bits <= 16, "{first}..={last}: {blocks:?}");
            let size = 1u32 << (16 - bits);
            assert_eq!(
                u32::from(*start) % size,
                0,
                "{first}..={last}: unaligned {start}/{bits}"
            );
            assert_eq!(
                u32::from(*start),
                next,
                "{first}..={last}: gap or overlap in {blocks:?}"
            );
            next += size;
        }
        assert_eq!(next, u32::from(last) + 1, "{first}..={last}: {blocks:?}");
        assert_eq!(
            blocks.len(),
            fewest_blocks(0, 0, first.into(), last.into()),
            "{first}..={last}: {blocks:?} is not the fewest"
        );
    }

    #[test]
    fn port_blocks_cover_exactly_with_the_fewest_blocks() {
        assert_eq!(port_blocks(0, 65535), [(0, 0)]);
        assert_eq!(port_blocks(80, 80), [(80, 16)]);
        assert_eq!(port_blocks(8080, 8083), [(8080, 14)]);
        assert_eq!(port_blocks(1, 0), []);
        for first in (0..=300).chain(65_400..=65_535) {
            for last in (first..=first + 300).filter(|l| *l <= 65_535) {
                check_blocks(first as u16, last as u16);
            }
        }
        // A fixed linear congruential sequence: the same cases on every run.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let a = (seed >> 48) as u16;
            let b = (seed >> 32) as u16;
            check_blocks(a.min(b), a.max(b));
        }
    }

    /// A fixed linear congruential sequence: the same cases on every run.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((self.0 >> 33) % n as u64) as usize
        }

        fn pick<T: Copy>(&mut self, from: &[T]) -> T {
            from[self.below(from.len())]
        }
    }

    const PROTOCOLS: [PolicyProtocol; 3] = [
        PolicyProtocol::Tcp,
        PolicyProtocol::Udp,
        PolicyProtocol::Sctp,
    ];
    const CIDRS: [([u8; 4], u8); 8] = [
        ([0, 0, 0, 0], 0),
        ([10, 0, 0, 0], 8),
        ([10, 0, 0, 0], 24),
        ([10, 0, 0, 0], 25),
        ([10, 0, 0, 128], 26),
        ([10, 0, 0, 192], 32),
        ([10, 0, 1, 0], 24),
        ([192, 168, 0, 0], 16),
    ];
    const POD_ADDRESSES: [[u8; 4]; 10] = [
        [10, 0, 0, 1],
        [10, 0, 0, 127],
        [10, 0, 0, 130],
        [10, 0, 0, 192],
        [10, 0, 0, 200],
        [10, 0, 1, 5],
        [10, 0, 2, 5],
        [192, 168, 3, 4],
        [172, 16, 0, 1],
        [10, 0, 0, 1], // a second pod at one address
    ];
    const PROBE_PORTS: [u16; 14] = [0, 1, 2, 52, 53, 54, 79, 80, 81, 443, 444, 8080, 8081, 65535];

    fn random_pods(rng: &mut Lcg) -> Vec<PolicyPod> {
        (0..POD_ADDRESSES.len())
            .map(|i| PolicyPod {
                namespace: "a".into(),
                name: format!("pod{i}").into(),
                labels: BTreeMap::new().into(),
                ip: POD_ADDRESSES[i].into(),
                named_ports: (0..rng.below(3))
                    .map(|_| NamedPort {
                        name: rng.pick(&["http", "dns"]).into(),
                        protocol: rng.pick(&PROTOCOLS),
                        port: rng.pick(&[53, 80, 8080]),
                    })
                    .collect(),
                ifindex: None,
            })
            .collect()
    }

    fn random_rule(rng: &mut Lcg, pods: usize) -> Rule {
        let peers = (rng.below(4) != 0).then(|| {
            (0..rng.below(3) + 1)
                .map(|_| {
                    if rng.below(2) == 0 {
                        Peer::Pods((0..pods).filter(|_| rng.below(3) == 0).collect())
                    } else {
                        let (address, len) = rng.pick(&CIDRS);
                        let cidr = Cidr::new(u32::from_be_bytes(address), len);
                        let mut except: Vec<Cidr> = CIDRS
                            .iter()
                            .map(|(a, l)| Cidr::new(u32::from_be_bytes(*a), *l))
                            .chain(POD_ADDRESSES.iter().map(|a| Cidr::host((*a).into())))
                            .filter(|e| cidr.contains(*e) && e.len > cidr.len)
                            .filter(|_| rng.below(3) == 0)
                            .collect();
                        except.sort();
                        except.dedup();
                        Peer::Block(Block { cidr, except })
                    }
                })
                .collect()
        });
        let ports = (rng.below(4) != 0).then(|| {
            (0..rng.below(3) + 1)
                .map(|_| {
                    let protocol = rng.pick(&PROTOCOLS);
                    match rng.below(3) {
                        0 => PortSpec::Named(protocol, rng.pick(&["http", "dns"]).to_owned()),
                        1 => PortSpec::Range(protocol, 0, u16::MAX),
                        _ => {
                            let first = rng.pick(&[1, 53, 80, 443, 8080]);
                            PortSpec::Range(protocol, first, first + rng.pick(&[0, 1, 400]))
                        }
                    }
                })
                .collect()
        });
        Rule { peers, ports }
    }

    /// Whether the rules allow the flow, read straight from them, address by address.
    fn rules_allow(
        policies: &[ParsedPolicy],
        direction: Direction,
        endpoint_ports: &[NamedPort],
        pods: &[&PolicyPod],
        address: Ipv4Addr,
        protocol: u8,
        port: u16,
    ) -> bool {
        let pods_at = |indices: &mut dyn Iterator<Item = usize>| -> Vec<&PolicyPod> {
            indices
                .map(|i| pods[i])
                .filter(|p| p.ip == address)
                .collect()
        };
        let rules = policies
            .iter()
            .flat_map(|p| p.rules(direction).unwrap_or_default());
        rules.into_iter().any(|rule| {
            // The pods at `address` the rule's peers match, if the peers match it at all.
            let matched: Option<Vec<&PolicyPod>> = match &rule.peers {
                None => Some(pods_at(&mut (0..pods.len()))),
                Some(peers) => {
                    let mut matched = None;
                    for peer in peers {
                        let found = match peer {
                            Peer::Pods(indices) => pods_at(&mut indices.iter().copied()),
                            Peer::Block(b) if b.contains(Cidr::host(address)) => {
                                matched.get_or_insert_with(Vec::new);
                                pods_at(&mut (0..pods.len()))
                            }
                            Peer::Block(_) => Vec::new(),
                        };
                        if !found.is_empty() {
                            matched.get_or_insert_with(Vec::new).extend(found);
                        }
                    }
                    matched
                }
            };
            let Some(destinations) = matched else {
                return false;
            };
            let has = |ports: &[NamedPort], p: PolicyProtocol, name: &str| {
                ports
                    .iter()
                    .any(|n| n.name == name && n.protocol == p && n.port == port)
            };
            match &rule.ports {
                None => true,
                Some(ports) => ports.iter().any(|spec| match spec {
                    PortSpec::Range(p, first, last) => {
                        p.number() == protocol && (*first..=*last).contains(&port)
                    }
                    PortSpec::Named(p, name) => {
                        p.number() == protocol
                            && match direction {
                                Direction::Ingress => has(endpoint_ports, *p, name),
                                Direction::Egress => {
                                    destinations.iter().any(|d| has(&d.named_ports, *p, name))
                                }
                            }
                    }
                }),
            }
        })
    }

    #[test]
    fn longest_prefix_tables_allow_exactly_what_the_rules_allow() {
        let mut rng = Lcg(0x853c_49e6_748f_ea9b);
        for case in 0..300 {
            let owned = random_pods(&mut rng);
            let pods: Vec<&PolicyPod> = owned.iter().collect();
            let policies: Vec<ParsedPolicy> = (0..rng.below(3) + 1)
                .map(|i| {
                    let rules = |rng: &mut Lcg| {
                        (rng.below(2) == 0).then(|| {
                            (0..rng.below(4))
                                .map(|_| random_rule(rng, pods.len()))
                                .collect()
                        })
                    };
                    ParsedPolicy {
                        key: format!("a/p{i}"),
                        namespace: "a".to_owned(),
                        selector: Selector::default(),
                        ingress: rules(&mut rng),
                        egress: rules(&mut rng),
                    }
                })
                .collect();
            let endpoint_ports = sorted_named_ports(pods[rng.below(pods.len())]);
            let indices: Vec<usize> = (0..policies.len()).collect();

            let mut addresses: BTreeSet<u32> = POD_ADDRESSES
                .iter()
                .map(|a| u32::from_be_bytes(*a))
                .collect();
            for (address, len) in CIDRS {
                let cidr = Cidr::new(u32::from_be_bytes(address), len);
                addresses.insert(cidr.bits);
                addresses.insert(cidr.bits | !mask(len));
                addresses.insert(cidr.bits.wrapping_sub(1));
                addresses.insert((cidr.bits | !mask(len)).wrapping_add(1));
            }
            for direction in [Direction::Ingress, Direction::Egress] {
                let isolating: Vec<usize> = indices
                    .iter()
                    .copied()
                    .filter(|i| policies[*i].rules(direction).is_some())
                    .collect();
                let table = peer_table(&policies, &isolating, direction, &endpoint_ports, &pods);
                for address in &addresses {
                    let longest = (0..=32)
                        .rev()
                        .find_map(|len| table.get(&Cidr::new(*address, len)));
                    for protocol in [1, 6, 17, 132] {
                        for port in PROBE_PORTS {
                            let want = rules_allow(
                                &policies,
                                direction,
                                &endpoint_ports,
                                &pods,
                                Ipv4Addr::from_bits(*address),
                                protocol,
                                port,
                            );
                            let got = longest.is_some_and(|set| set.allows(protocol, port));
                            assert_eq!(
                                got,
                                want,
                                "case {case} {direction} {} proto {protocol} port {port}: {table:#?}",
                                Ipv4Addr::from_bits(*address)
                            );
                        }
                    }
                }
            }
        }
    }

    fn range(protocol: Option<PolicyProtocol>, first: u16, last: u16, policy: &str) -> PortRange {
        PortRange {
            protocol,
            first,
            last,
            policy: policy.into(),
        }
    }

    fn normalized(ranges: &[PortRange]) -> PortSet {
        let allowed: Vec<Allowed> = ranges
            .iter()
            .map(|r| Allowed {
                protocol: r.protocol,
                first: r.first,
                last: r.last,
                policy: &r.policy,
            })
            .collect();
        normalize(&allowed)
    }

    #[test]
    fn overlapping_ranges_are_credited_to_the_first_policy_by_name() {
        let tcp = Some(PolicyProtocol::Tcp);
        let set = normalized(&[
            range(tcp, 100, 200, "ns/b"),
            range(tcp, 150, 300, "ns/a"),
            range(tcp, 301, 400, "ns/a"),
            range(tcp, 100, 120, "ns/b"),
            range(tcp, 1000, 1000, "ns/b"),
            range(Some(PolicyProtocol::Udp), 53, 53, "ns/c"),
        ]);
        let expected = [
            range(tcp, 100, 149, "ns/b"),
            range(tcp, 150, 400, "ns/a"),
            range(tcp, 1000, 1000, "ns/b"),
            range(Some(PolicyProtocol::Udp), 53, 53, "ns/c"),
        ];
        assert_eq!(set.0.to_vec(), expected);

        let everything = normalized(&[range(tcp, 80, 80, "ns/a"), range(None, 0, 65535, "ns/z")]);
        assert_eq!(everything.0.to_vec(), [range(None, 0, 65535, "ns/z")]);
        assert_eq!(normalized(&[range(tcp, 0, 65535, "ns/a")]).0.len(), 1);
    }

    const LABEL_KEYS: [&str; 3] = ["app", "tier", LABEL_METADATA_NAME];
    const LABEL_VALUES: [&str; 4] = ["web", "db", "a", "b"];

    fn random_labels(rng: &mut Lcg) -> BTreeMap<String, String> {
        (0..rng.below(3))
            .map(|_| (rng.pick(&LABEL_KEYS).into(), rng.pick(&LABEL_VALUES).into()))
            .collect()
    }

    fn random_selector(rng: &mut Lcg) -> LabelSelector {
        LabelSelector {
            match_labels: (rng.below(2) == 0).then(|| random_labels(rng)),
            match_expressions: (rng.below(2) == 0).then(|| {
                (0..rng.below(3))
                    .map(|_| {
                        let operator = rng.pick(&["In", "NotIn", "Exists", "DoesNotExist"]);
                        LabelSelectorRequirement {
                            key: rng.pick(&LABEL_KEYS).into(),
                            operator: operator.into(),
                            values: operator.ends_with("In").then(|| {
                                (0..rng.below(3) + 1)
                                    .map(|_| rng.pick(&LABEL_VALUES).into())
                                    .collect()
                            }),
                        }
                    })
                    .collect()
            }),
        }
    }

    /// `selector.matches(labels)`, read straight from the API object.
    fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
        let has = |key: &String, values: &Option<Vec<String>>| {
            labels
                .get(key)
                .is_some_and(|v| values.iter().flatten().any(|value| value == v))
        };
        selector
            .match_labels
            .iter()
            .flatten()
            .all(|(key, value)| labels.get(key) == Some(value))
            && selector
                .match_expressions
                .iter()
                .flatten()
                .all(|e| match e.operator.as_str() {
                    "In" => has(&e.key, &e.values),
                    "NotIn" => !has(&e.key, &e.values),
                    "Exists" => labels.contains_key(&e.key),
                    _ => !labels.contains_key(&e.key),
                })
    }

    /// What the pod and label index finds is what looking at every pod finds: pods with the
    /// same labels in other namespaces, namespaces told apart by their labels, selectors
    /// with and without a label that they need.
    #[test]
    fn peers_select_the_pods_that_a_scan_of_every_pod_selects() {
        let mut rng = Lcg(0x2545_f491_4f6c_dd1d);
        for case in 0..2000 {
            let owned: Vec<PolicyPod> = (0..rng.below(12))
                .map(|i| PolicyPod {
                    namespace: rng.pick(&["a", "b", "c"]).into(),
                    name: format!("pod{i}").into(),
                    labels: random_labels(&mut rng).into(),
                    ip: Ipv4Addr::new(10, 0, 0, i as u8),
                    named_ports: Vec::new().into(),
                    ifindex: None,
                })
                .collect();
            let mut pods: Vec<&PolicyPod> = owned.iter().collect();
            pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            // `c` has no object: only its name label.
            let namespaces: Vec<Namespace> = ["a", "b"]
                .into_iter()
                .map(|name| Namespace {
                    metadata: ObjectMeta {
                        name: Some(name.into()),
                        labels: Some(random_labels(&mut rng)),
                        ..Default::default()
                    },
                    ..Default::default()
                })
                .collect();
            let labels = namespace_labels(&namespaces, pods.iter().copied());
            let sorted: Vec<PolicyPod> = pods.iter().map(|p| (*p).clone()).collect();
            let world = PodWorld::from_sorted(sorted, labels.clone());
            let namespace_selector = (rng.below(2) == 0).then(|| random_selector(&mut rng));
            // A peer needs one selector at least.
            let pod_selector = (namespace_selector.is_none() || rng.below(3) != 0)
                .then(|| random_selector(&mut rng));
            let peer = NetworkPolicyPeer {
                namespace_selector,
                pod_selector,
                ip_block: None,
            };

            let mut problems = Vec::new();
            let mut reporter = Reporter {
                kind: "NetworkPolicy",
                namespace: "a",
                name: "test",
                problems: &mut problems,
            };
            let Some(Peer::Pods(got)) = parse_peer(
                &peer,
                Field::Root("peer"),
                "a",
                &mut |n: &str, ns: Option<&Selector>, p: Option<&Selector>| world.resolve(n, ns, p),
                &mut reporter,
            ) else {
                panic!("case {case}: {peer:?} is not read as pods");
            };
            let expected: Vec<usize> = (0..pods.len())
                .filter(|i| {
                    let pod = pods[*i];
                    let in_namespace = match &peer.namespace_selector {
                        None => &*pod.namespace == "a",
                        Some(selector) => selects(selector, &labels[&*pod.namespace]),
                    };
                    in_namespace
                        && peer
                            .pod_selector
                            .as_ref()
                            .is_none_or(|s| selects(s, &pod.labels))
                })
                .collect();
            assert_eq!(got, expected, "case {case}: {peer:?} {pods:?} {labels:?}");
        }
    }

    #[test]
    fn lengths_come_longest_first() {
        let mut lengths = Lengths::default();
        for len in [0, 8, 24, 32] {
            lengths.insert(len);
        }
        assert_eq!(lengths.up_to(32).collect::<Vec<_>>(), [32, 24, 8, 0]);
        assert_eq!(lengths.up_to(31).collect::<Vec<_>>(), [24, 8, 0]);
        assert_eq!(lengths.up_to(24).collect::<Vec<_>>(), [24, 8, 0]);
        assert_eq!(lengths.up_to(0).collect::<Vec<_>>(), [0]);
        assert_eq!(Lengths::default().up_to(32).count(), 0);
    }
}
