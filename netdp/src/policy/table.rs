//! The incremental policy compiler, after kube-proxy's change trackers and the Service table
//! ([`crate::service::ServiceTable`]): it holds the policies, namespaces and pods, and what
//! each endpoint's peer tables last compiled to; a change marks only what it can touch, and
//! [`PolicyTable::update`] returns only the map entries whose desired state changed
//! ([`PolicyDelta`]). Its state after every update is what [`super::compile`] makes of the
//! same objects (a property test holds it to that).
//!
//! What a change costs:
//!
//! - **A policy**: parsed again, alone. Each peer's selectors are a [`Tracker`] (shared by
//!   every peer with the same selectors) that keeps the pods it selects; a new tracker is
//!   filled from the pods carrying a label its podSelector needs (or from its namespace's
//!   pods). For an endpoint the policy isolates, before or after, only the addresses of the
//!   pods the policy names, before or after, are compiled again.
//! - **A pod** (labels, address, named ports, coming or going): only the trackers indexed
//!   under one of its labels, old or new, and those that need no label are asked whether
//!   they select it; the policies of those whose answer or whose view of the pod changed have
//!   that pod's address compiled again, for the endpoints they isolate. A pod that is an
//!   endpoint (it has an interface here) has its endpoint's tables compiled again.
//! - **A namespace's labels**: the trackers with a namespaceSelector whose answer for it
//!   changed ask again of each of its pods.
//!
//! What still costs in proportion to an endpoint's peers: a policy that starts or stops
//! isolating an endpoint in a direction it was alone in, a change of a policy's `ipBlock` or
//! all-address rules (which every address of the endpoint's table depends on), and a change
//! of the endpoint's own pod: the endpoint's table is then compiled whole. A policy with an
//! egress rule naming a port by name for all addresses or for an `ipBlock` has every pod as
//! a candidate peer, so compiling it walks every pod.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Namespace, networking::v1::NetworkPolicy};

use super::compile::{
    normalize, object_key, parse_policy, report_taken_interface, resolve, sorted_named_ports,
    Allowed, Block, Cidr, Lengths, ParsedPolicy, Peer, PortSpec, Selector, LABEL_METADATA_NAME,
};
use super::{Compiled, Direction, Endpoint, NamedPort, PeerPrefix, PolicyPod, PolicyProtocol};
use crate::service::Problem;

/// A policy as the caller names it: `(namespace, name)`.
pub type PolicyKey = (Arc<str>, Arc<str>);

/// What [`PolicyTable::update`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicyDelta {
    /// Endpoints added or changed (`Some`) or gone (`None`).
    pub endpoints: BTreeMap<u32, Option<Endpoint>>,
    /// Peer prefixes added or changed (`Some`) or gone (`None`).
    pub peers: BTreeMap<PeerPrefix, Option<super::PortSet>>,
    /// The problems of every policy parsed and every interface looked at again.
    pub problems: Vec<Problem>,
}

impl PolicyDelta {
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty() && self.peers.is_empty()
    }

    /// The delta that takes `old` to `new` (problems: `new`'s): for a caller that has whole
    /// compiles.
    pub fn between(old: &Compiled, new: &Compiled) -> Self {
        let mut delta = PolicyDelta {
            problems: new.problems.clone(),
            ..Self::default()
        };
        for (ifindex, endpoint) in &new.endpoints {
            if old.endpoints.get(ifindex) != Some(endpoint) {
                delta.endpoints.insert(*ifindex, Some(endpoint.clone()));
            }
        }
        for ifindex in old.endpoints.keys() {
            if !new.endpoints.contains_key(ifindex) {
                delta.endpoints.insert(*ifindex, None);
            }
        }
        for (prefix, set) in &new.peers {
            if old.peers.get(prefix) != Some(set) {
                delta.peers.insert(*prefix, Some(set.clone()));
            }
        }
        for prefix in old.peers.keys() {
            if !new.peers.contains_key(prefix) {
                delta.peers.insert(*prefix, None);
            }
        }
        delta
    }

    /// Makes `compiled` what it is after this delta (its problems are left as they are).
    pub fn apply_to(&self, compiled: &mut Compiled) {
        for (ifindex, endpoint) in &self.endpoints {
            match endpoint {
                Some(endpoint) => compiled.endpoints.insert(*ifindex, endpoint.clone()),
                None => compiled.endpoints.remove(ifindex),
            };
        }
        for (prefix, set) in &self.peers {
            match set {
                Some(set) => compiled.peers.insert(*prefix, set.clone()),
                None => compiled.peers.remove(prefix),
            };
        }
    }
}

/// A range a policy allows: `(protocol, first, last)`, `None` being every protocol.
type Range = (Option<PolicyProtocol>, u16, u16);

/// A range with the policy credited for it.
type CreditedRange = (Range, Arc<str>);
/// One policy's ranges to one address, with the policy credited for them.
type Credited = (Arc<str>, Box<[Range]>);

/// A pod, by its slot in [`PolicyTable::pods`].
type PodId = usize;
type TrackerId = usize;

/// The pods at one address: nearly always one, held without an allocation of its own (a
/// vector per address took 3.2 MB over a cluster's 100,000 pods).
enum PodsAt {
    One(PodId),
    Many(Box<[PodId]>),
}

// As small as the vector it replaces: the one id shares the room of the many's length.
const _: () = assert!(std::mem::size_of::<PodsAt>() <= std::mem::size_of::<Vec<PodId>>());

impl PodsAt {
    fn ids(&self) -> &[PodId] {
        match self {
            PodsAt::One(id) => std::slice::from_ref(id),
            PodsAt::Many(ids) => ids,
        }
    }

    fn with(&self, id: PodId) -> PodsAt {
        PodsAt::Many(self.ids().iter().copied().chain([id]).collect())
    }

    /// What is left without `id`; `None` when nothing is.
    fn without(&self, id: PodId) -> Option<PodsAt> {
        let left: Vec<PodId> = self.ids().iter().copied().filter(|p| *p != id).collect();
        match left[..] {
            [] => None,
            [one] => Some(PodsAt::One(one)),
            _ => Some(PodsAt::Many(left.into())),
        }
    }
}

/// See the module documentation.
#[derive(Default)]
pub struct PolicyTable {
    /// Namespace objects' labels, `kubernetes.io/metadata.name` included.
    namespaces: HashMap<Arc<str>, BTreeMap<String, String>>,
    pods: Vec<Option<Arc<PolicyPod>>>,
    free_pods: Vec<PodId>,
    pod_ids: HashMap<Arc<str>, PodId>,
    pods_at: HashMap<Ipv4Addr, PodsAt>,
    pods_in: HashMap<Arc<str>, HashSet<PodId>>,
    pods_labelled: HashMap<(String, String), HashSet<PodId>>,
    /// Pods with an interface here, by ifindex.
    pods_on: BTreeMap<u32, BTreeSet<PodId>>,

    policies: BTreeMap<PolicyKey, PolicyEntry>,
    /// Policies by the namespace they apply in.
    policies_in: HashMap<String, BTreeSet<PolicyKey>>,
    /// Policies whose every pod (or every pod in a block) is a candidate peer.
    all_pod_policies: BTreeSet<PolicyKey>,

    trackers: Vec<Option<Tracker>>,
    free_trackers: Vec<TrackerId>,
    tracker_ids: HashMap<TrackerKey, TrackerId>,
    /// Trackers by one `(key, value)` every pod they select carries.
    trackers_by_label: HashMap<(String, String), HashSet<TrackerId>>,
    /// Trackers whose podSelector needs no label: asked of every pod.
    trackers_unlabelled: HashSet<TrackerId>,
    /// Trackers with a namespaceSelector.
    trackers_of_namespaces: HashSet<TrackerId>,

    endpoints: BTreeMap<u32, EndpointState>,
    /// Problems of interfaces claimed by two pods.
    interface_problems: BTreeMap<u32, Vec<Problem>>,

    dirty_policies: BTreeSet<PolicyKey>,
    dirty_hosts: BTreeMap<PolicyKey, HashSet<Ipv4Addr>>,
    dirty_interfaces: BTreeSet<u32>,
}

struct PolicyEntry {
    /// `None` when nothing of it can be used.
    parsed: Option<ParsedPolicy<TrackerId>>,
    /// `namespace/name`, the credit its ranges carry.
    credit: Arc<str>,
    problems: Vec<Problem>,
}

/// The pods one peer's selectors select.
struct Tracker {
    key: TrackerKey,
    /// Kept up to date with every pod and namespace change.
    selected: HashSet<PodId>,
    /// The policies holding it, with how many of their peers do.
    users: BTreeMap<PolicyKey, usize>,
    /// The labels it is indexed under; empty when it needs none.
    index: Vec<(String, String)>,
}

/// `(the policy's namespace, or None with a namespaceSelector; namespaceSelector;
/// podSelector)`.
#[derive(Clone, PartialEq, Eq, Hash)]
struct TrackerKey {
    namespace: Option<String>,
    namespaces: Option<Selector>,
    pods: Option<Selector>,
}

struct EndpointState {
    pod: PodId,
    endpoint: Endpoint,
    /// Ingress, egress.
    sides: [Side; 2],
}

/// One direction of one endpoint.
#[derive(Default)]
struct Side {
    /// The policies isolating the endpoint in this direction.
    isolating: BTreeSet<PolicyKey>,
    /// The endpoint's own named ports, for ingress.
    named_ports: Vec<NamedPort>,
    /// The parts of isolating policies that apply to address ranges, by policy.
    structures: BTreeMap<PolicyKey, Structure>,
    /// Their sum.
    structure: Structure,
    /// What each policy allows to each pod address.
    hosts: HashMap<Ipv4Addr, Contributions>,
    /// The addresses each policy has something for in `hosts`.
    policy_hosts: HashMap<PolicyKey, HashSet<Ipv4Addr>>,
    /// The peer prefixes: what the maps hold for this direction.
    table: BTreeMap<Cidr, super::PortSet>,
}

/// What each policy allows to one address, by policy: a sorted vector, not a tree, since an
/// endpoint's table holds one for each of up to 100,000 peers and most have one policy.
#[derive(Default)]
struct Contributions(Vec<(PolicyKey, Credited)>);

impl Contributions {
    fn insert(&mut self, key: &PolicyKey, credited: Credited) {
        match self.0.binary_search_by(|(k, _)| k.cmp(key)) {
            Ok(at) => self.0[at].1 = credited,
            Err(at) => {
                // One more at a time: Vec's first growth would make room for four.
                self.0.reserve_exact(1);
                self.0.insert(at, (key.clone(), credited))
            }
        }
    }

    fn remove(&mut self, key: &PolicyKey) {
        if let Ok(at) = self.0.binary_search_by(|(k, _)| k.cmp(key)) {
            self.0.remove(at);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn values(&self) -> impl Iterator<Item = &Credited> {
        self.0.iter().map(|(_, credited)| credited)
    }
}

/// What rules allow to ranges of addresses rather than to pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Structure {
    /// What is allowed to every address; `Some` (even empty) when a rule has no peers.
    everywhere: Option<Vec<CreditedRange>>,
    blocks: Vec<(Block, Vec<CreditedRange>)>,
}

impl Structure {
    fn is_empty(&self) -> bool {
        self.everywhere.is_none() && self.blocks.is_empty()
    }

    fn add(&mut self, other: &Structure) {
        if let Some(everywhere) = &other.everywhere {
            self.everywhere
                .get_or_insert_with(Vec::new)
                .extend(everywhere.iter().cloned());
        }
        self.blocks.extend(other.blocks.iter().cloned());
    }

    /// Every prefix the structure names.
    fn prefixes(&self) -> BTreeSet<Cidr> {
        let mut prefixes = BTreeSet::new();
        if self.everywhere.is_some() {
            prefixes.insert(Cidr::EVERYWHERE);
        }
        for (block, _) in &self.blocks {
            prefixes.insert(block.cidr);
            prefixes.extend(block.except.iter().copied());
        }
        prefixes
    }

    fn lengths(&self) -> Lengths {
        let mut lengths = Lengths::default();
        for prefix in self.prefixes() {
            lengths.insert(prefix.len);
        }
        lengths
    }
}

const DIRECTIONS: [Direction; 2] = [Direction::Ingress, Direction::Egress];

fn side_index(direction: Direction) -> usize {
    match direction {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

/// A rule's ranges for `direction` and the names it looks up in peers (egress), with the
/// endpoint's `named_ports` (ingress).
fn rule_ports(
    ports: &Option<Vec<PortSpec>>,
    direction: Direction,
    named_ports: &[NamedPort],
) -> (Vec<Range>, Vec<(PolicyProtocol, String)>) {
    let mut ranges = Vec::new();
    let mut by_peer = Vec::new();
    match ports {
        None => ranges.push((None, 0, u16::MAX)),
        Some(ports) => {
            for port in ports {
                match port {
                    PortSpec::Range(protocol, first, last) => {
                        ranges.push((Some(*protocol), *first, *last))
                    }
                    PortSpec::Named(protocol, name) => match direction {
                        Direction::Ingress => ranges.extend(
                            resolve(named_ports, *protocol, name, "")
                                .map(|a| (a.protocol, a.first, a.last)),
                        ),
                        Direction::Egress => by_peer.push((*protocol, name.clone())),
                    },
                }
            }
        }
    }
    (ranges, by_peer)
}

impl PolicyTable {
    pub fn new() -> Self {
        Self::default()
    }

    // ---- namespaces -------------------------------------------------------------------

    /// The labels namespace selectors see on `namespace`.
    fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        match self.namespaces.get(namespace) {
            Some(labels) => labels.clone(),
            None => BTreeMap::from([(LABEL_METADATA_NAME.to_owned(), namespace.to_owned())]),
        }
    }

    /// Sets (or with `None` removes) the Namespace `name`.
    pub fn set_namespace(&mut self, name: &str, namespace: Option<&Namespace>) {
        let old = self.namespace_labels(name);
        let name: Arc<str> = crate::intern::intern(name);
        match namespace {
            Some(namespace) => {
                let mut labels = namespace.metadata.labels.clone().unwrap_or_default();
                labels.insert(LABEL_METADATA_NAME.to_owned(), name.to_string());
                self.namespaces.insert(name.clone(), labels);
            }
            None => {
                self.namespaces.remove(&name);
            }
        }
        let new = self.namespace_labels(&name);
        if old == new {
            return;
        }
        let Some(pods) = self.pods_in.get(&name) else {
            return;
        };
        let pods: Vec<PodId> = pods.iter().copied().collect();
        let trackers: Vec<TrackerId> = self.trackers_of_namespaces.iter().copied().collect();
        for id in trackers {
            let tracker = self.trackers[id].as_ref().expect("indexed trackers exist");
            let selector = tracker
                .key
                .namespaces
                .as_ref()
                .expect("a namespace selector");
            if selector.matches(&old) == selector.matches(&new) {
                continue;
            }
            for pod in &pods {
                self.recheck(id, *pod, None);
            }
        }
    }

    // ---- pods -------------------------------------------------------------------------

    /// Sets (or with `None` removes) the pod the caller names `key` (unique per pod: its
    /// `namespace/name`, say). The table keeps the caller's copy.
    pub fn set_pod(&mut self, key: &str, pod: Option<Arc<PolicyPod>>) {
        let id = self.pod_ids.get(key).copied();
        let old = id.and_then(|id| self.pods[id].clone());
        let new = pod;
        if old.as_deref() == new.as_deref() {
            return;
        }
        let id = match id {
            Some(id) => id,
            None => {
                let id = self.free_pods.pop().unwrap_or_else(|| {
                    self.pods.push(None);
                    self.pods.len() - 1
                });
                self.pod_ids.insert(Arc::from(key), id);
                id
            }
        };
        // Out of the indexes as it was, into them as it is.
        if let Some(old) = &old {
            self.unindex_pod(id, old);
        }
        self.pods[id] = new.clone();
        if let Some(new) = &new {
            self.index_pod(id, new);
        } else {
            self.pod_ids.remove(key);
            self.free_pods.push(id);
        }

        // The trackers that may select it, before or after.
        let mut candidates: BTreeSet<TrackerId> =
            self.trackers_unlabelled.iter().copied().collect();
        for pod in old.iter().chain(new.iter()) {
            for (k, v) in pod.labels.iter() {
                if let Some(trackers) = self.trackers_by_label.get(&(k.clone(), v.clone())) {
                    candidates.extend(trackers.iter().copied());
                }
            }
        }
        for tracker in candidates {
            self.recheck(tracker, id, old.as_deref());
        }
        // Policies that name every pod.
        let addresses: Vec<Ipv4Addr> = old.iter().chain(new.iter()).map(|p| p.ip).collect();
        for policy in &self.all_pod_policies {
            self.dirty_hosts
                .entry(policy.clone())
                .or_default()
                .extend(addresses.iter().copied());
        }
        for pod in old.iter().chain(new.iter()) {
            if let Some(ifindex) = pod.ifindex {
                self.dirty_interfaces.insert(ifindex);
            }
        }
    }

    /// The pods the table holds at `address`: nearly always one.
    pub fn pods_at(&self, address: Ipv4Addr) -> impl Iterator<Item = &Arc<PolicyPod>> + '_ {
        self.ids_at(address)
            .iter()
            .filter_map(|id| self.pods[*id].as_ref())
    }

    fn ids_at(&self, address: Ipv4Addr) -> &[PodId] {
        self.pods_at
            .get(&address)
            .map(PodsAt::ids)
            .unwrap_or_default()
    }

    fn index_pod(&mut self, id: PodId, pod: &PolicyPod) {
        let at = match self.pods_at.remove(&pod.ip) {
            Some(at) => at.with(id),
            None => PodsAt::One(id),
        };
        self.pods_at.insert(pod.ip, at);
        self.pods_in
            .entry(pod.namespace.clone())
            .or_default()
            .insert(id);
        for (k, v) in pod.labels.iter() {
            self.pods_labelled
                .entry((k.clone(), v.clone()))
                .or_default()
                .insert(id);
        }
        if let Some(ifindex) = pod.ifindex {
            self.pods_on.entry(ifindex).or_default().insert(id);
        }
    }

    fn unindex_pod(&mut self, id: PodId, pod: &PolicyPod) {
        if let Some(at) = self.pods_at.remove(&pod.ip) {
            if let Some(left) = at.without(id) {
                self.pods_at.insert(pod.ip, left);
            }
        }
        if let Some(pods) = self.pods_in.get_mut(&pod.namespace) {
            pods.remove(&id);
            if pods.is_empty() {
                self.pods_in.remove(&pod.namespace);
            }
        }
        for (k, v) in pod.labels.iter() {
            let label = (k.clone(), v.clone());
            if let Some(pods) = self.pods_labelled.get_mut(&label) {
                pods.remove(&id);
                if pods.is_empty() {
                    self.pods_labelled.remove(&label);
                }
            }
        }
        if let Some(ifindex) = pod.ifindex {
            if let Some(pods) = self.pods_on.get_mut(&ifindex) {
                pods.remove(&id);
                if pods.is_empty() {
                    self.pods_on.remove(&ifindex);
                }
            }
        }
    }

    fn tracker_selects(&self, key: &TrackerKey, pod: &PolicyPod) -> bool {
        let in_scope = match (&key.namespace, &key.namespaces) {
            (_, Some(selector)) => selector.matches(&self.namespace_labels(&pod.namespace)),
            (Some(namespace), None) => **namespace == *pod.namespace,
            (None, None) => false,
        };
        in_scope && key.pods.as_ref().is_none_or(|s| s.matches(&pod.labels))
    }

    /// Asks tracker `id` again whether it selects pod `pod` (`old`: the pod as it was, if it
    /// changed); marks what its answer changes.
    fn recheck(&mut self, id: TrackerId, pod: PodId, old: Option<&PolicyPod>) {
        let now_pod = self.pods[pod].clone();
        let tracker = self.trackers[id].as_ref().expect("indexed trackers exist");
        let was = tracker.selected.contains(&pod);
        let now = now_pod
            .as_deref()
            .is_some_and(|p| self.tracker_selects(&tracker.key, p));
        let seen_differently = match (old, now_pod.as_deref()) {
            (Some(old), Some(new)) => old.ip != new.ip || old.named_ports != new.named_ports,
            _ => old.is_some() || now_pod.is_some(),
        };
        if was == now && !(was && seen_differently) {
            return;
        }
        let mut addresses: Vec<Ipv4Addr> = old.iter().map(|p| p.ip).collect();
        addresses.extend(now_pod.iter().map(|p| p.ip));
        let tracker = self.trackers[id].as_mut().expect("indexed trackers exist");
        if now {
            tracker.selected.insert(pod);
        } else {
            tracker.selected.remove(&pod);
        }
        for policy in tracker.users.keys() {
            self.dirty_hosts
                .entry(policy.clone())
                .or_default()
                .extend(addresses.iter().copied());
        }
    }

    // ---- trackers ---------------------------------------------------------------------

    /// The tracker of `key`, made and filled if new; counted as held once more by `policy`.
    fn acquire(&mut self, key: TrackerKey, policy: &PolicyKey) -> TrackerId {
        if let Some(id) = self.tracker_ids.get(&key) {
            let tracker = self.trackers[*id].as_mut().expect("known trackers exist");
            *tracker.users.entry(policy.clone()).or_insert(0) += 1;
            return *id;
        }
        // Indexed under the values of the requirement with the fewest pods.
        let index: Vec<(String, String)> = key
            .pods
            .iter()
            .flat_map(|s| s.requirements.iter())
            .filter_map(|r| r.needed_values())
            .map(|(k, values)| {
                values
                    .iter()
                    .map(|v| (k.to_owned(), v.clone()))
                    .collect::<Vec<_>>()
            })
            .min_by_key(|labels| {
                labels
                    .iter()
                    .map(|l| self.pods_labelled.get(l).map_or(0, HashSet::len))
                    .sum::<usize>()
            })
            .unwrap_or_default();
        let candidates: Vec<PodId> = if !index.is_empty() {
            index
                .iter()
                .filter_map(|l| self.pods_labelled.get(l))
                .flatten()
                .copied()
                .collect()
        } else if let (Some(namespace), None) = (&key.namespace, &key.namespaces) {
            self.pods_in
                .get(namespace.as_str())
                .into_iter()
                .flatten()
                .copied()
                .collect()
        } else {
            self.pods_in.values().flatten().copied().collect()
        };
        let selected: HashSet<PodId> = candidates
            .into_iter()
            .filter(|id| {
                self.pods[*id]
                    .as_deref()
                    .is_some_and(|p| self.tracker_selects(&key, p))
            })
            .collect();
        let id = self.free_trackers.pop().unwrap_or_else(|| {
            self.trackers.push(None);
            self.trackers.len() - 1
        });
        if index.is_empty() {
            self.trackers_unlabelled.insert(id);
        }
        for label in &index {
            self.trackers_by_label
                .entry(label.clone())
                .or_default()
                .insert(id);
        }
        if key.namespaces.is_some() {
            self.trackers_of_namespaces.insert(id);
        }
        self.tracker_ids.insert(key.clone(), id);
        self.trackers[id] = Some(Tracker {
            key,
            selected,
            users: BTreeMap::from([(policy.clone(), 1)]),
            index,
        });
        id
    }

    /// `policy` holds tracker `id` once less; a tracker no one holds goes.
    fn release(&mut self, id: TrackerId, policy: &PolicyKey) {
        let tracker = self.trackers[id].as_mut().expect("held trackers exist");
        if let Some(count) = tracker.users.get_mut(policy) {
            *count -= 1;
            if *count == 0 {
                tracker.users.remove(policy);
            }
        }
        if !tracker.users.is_empty() {
            return;
        }
        let tracker = self.trackers[id].take().expect("held trackers exist");
        self.tracker_ids.remove(&tracker.key);
        self.trackers_unlabelled.remove(&id);
        self.trackers_of_namespaces.remove(&id);
        for label in &tracker.index {
            if let Some(trackers) = self.trackers_by_label.get_mut(label) {
                trackers.remove(&id);
                if trackers.is_empty() {
                    self.trackers_by_label.remove(label);
                }
            }
        }
        self.free_trackers.push(id);
    }

    // ---- policies ---------------------------------------------------------------------

    /// Sets (or with `None` removes) the NetworkPolicy `namespace/name`.
    pub fn set_policy(&mut self, namespace: &str, name: &str, policy: Option<&NetworkPolicy>) {
        let key: PolicyKey = (crate::intern::intern(namespace), Arc::from(name));
        let new = policy.map(|policy| {
            let mut problems = Vec::new();
            let mut acquired = Vec::new();
            let parsed = {
                let mut resolve =
                    |namespace: &str, namespaces: Option<&Selector>, pods: Option<&Selector>| {
                        let tracker = TrackerKey {
                            namespace: namespaces.is_none().then(|| namespace.to_owned()),
                            namespaces: namespaces.cloned(),
                            pods: pods.cloned(),
                        };
                        acquired.push(tracker.clone());
                        usize::MAX
                    };
                parse_policy(policy, &mut resolve, &mut problems)
            };
            // Trackers are taken after parsing (the parser holds the resolver); the peers are
            // given their ids in the order they were asked for.
            let ids: Vec<TrackerId> = acquired
                .into_iter()
                .map(|tracker| self.acquire(tracker, &key))
                .collect();
            let parsed = parsed.map(|mut parsed| {
                let mut ids = ids.iter().copied();
                for direction in DIRECTIONS {
                    let rules = match direction {
                        Direction::Ingress => parsed.ingress.as_mut(),
                        Direction::Egress => parsed.egress.as_mut(),
                    };
                    for rule in rules.into_iter().flatten() {
                        for peer in rule.peers.iter_mut().flatten() {
                            if let Peer::Pods(id) = peer {
                                *id = ids.next().expect("one tracker per peer of pods");
                            }
                        }
                    }
                }
                parsed
            });
            let (object_namespace, object_name) = object_key(policy);
            PolicyEntry {
                parsed,
                credit: Arc::from(format!("{object_namespace}/{object_name}")),
                problems,
            }
        });
        if let Some(old) = self.policies.remove(&key) {
            self.forget_policy(&key, &old);
        }
        if let Some(new) = new {
            if let Some(parsed) = &new.parsed {
                self.policies_in
                    .entry(parsed.namespace.clone())
                    .or_default()
                    .insert(key.clone());
                if self.names_every_pod(parsed) {
                    self.all_pod_policies.insert(key.clone());
                }
            }
            self.policies.insert(key.clone(), new);
        }
        self.dirty_policies.insert(key);
    }

    fn forget_policy(&mut self, key: &PolicyKey, old: &PolicyEntry) {
        let Some(parsed) = &old.parsed else {
            return;
        };
        for id in peer_trackers(parsed) {
            self.release(id, key);
        }
        if let Some(policies) = self.policies_in.get_mut(&parsed.namespace) {
            policies.remove(key);
            if policies.is_empty() {
                self.policies_in.remove(&parsed.namespace);
            }
        }
        self.all_pod_policies.remove(key);
    }

    /// Whether an egress rule looks named ports up in every pod, or every pod of a block.
    fn names_every_pod(&self, parsed: &ParsedPolicy<TrackerId>) -> bool {
        parsed.egress.iter().flatten().any(|rule| {
            let named = rule
                .ports
                .iter()
                .flatten()
                .any(|p| matches!(p, PortSpec::Named(..)));
            named
                && match &rule.peers {
                    None => true,
                    Some(peers) => peers.iter().any(|p| matches!(p, Peer::Block(_))),
                }
        })
    }

    // ---- compiling ----------------------------------------------------------------------

    /// The addresses policy `key` may allow something to: its peers' pods, or every pod.
    fn candidates(&self, key: &PolicyKey) -> HashSet<Ipv4Addr> {
        let Some(parsed) = self.policies.get(key).and_then(|p| p.parsed.as_ref()) else {
            return HashSet::new();
        };
        if self.all_pod_policies.contains(key) {
            return self.pods_at.keys().copied().collect();
        }
        peer_trackers(parsed)
            .filter_map(|id| self.trackers[id].as_ref())
            .flat_map(|t| t.selected.iter())
            .filter_map(|id| self.pods[*id].as_ref().map(|p| p.ip))
            .collect()
    }

    /// What policy `key` allows to the pods at `address`, in `direction`, for an endpoint
    /// with `named_ports`: as the whole compile's peer table gathers it for that address.
    fn contribution(
        &self,
        key: &PolicyKey,
        direction: Direction,
        named_ports: &[NamedPort],
        address: Ipv4Addr,
    ) -> Vec<Range> {
        let mut allowed = Vec::new();
        let Some(parsed) = self.policies.get(key).and_then(|p| p.parsed.as_ref()) else {
            return allowed;
        };
        let pods: Vec<(PodId, &PolicyPod)> = self
            .ids_at(address)
            .iter()
            .filter_map(|id| self.pods[*id].as_deref().map(|p| (*id, p)))
            .collect();
        for rule in parsed.rules(direction).unwrap_or_default() {
            let (ranges, by_peer) = rule_ports(&rule.ports, direction, named_ports);
            if ranges.is_empty() && by_peer.is_empty() {
                continue;
            }
            let mut allow_pod = |pod: &PolicyPod, with_ranges: bool| {
                for (protocol, name) in &by_peer {
                    allowed.extend(
                        resolve(&pod.named_ports, *protocol, name, "")
                            .map(|a| (a.protocol, a.first, a.last)),
                    );
                }
                if with_ranges {
                    allowed.extend(ranges.iter().copied());
                }
            };
            for (id, pod) in &pods {
                match &rule.peers {
                    None => {
                        if !by_peer.is_empty() {
                            allow_pod(pod, false);
                        }
                    }
                    Some(peers) => {
                        for peer in peers {
                            match peer {
                                Peer::Pods(tracker) => {
                                    let selected = self.trackers[*tracker]
                                        .as_ref()
                                        .is_some_and(|t| t.selected.contains(id));
                                    if selected {
                                        allow_pod(pod, true);
                                    }
                                }
                                Peer::Block(block) => {
                                    if !by_peer.is_empty() && block.contains(Cidr::host(pod.ip)) {
                                        allow_pod(pod, false);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        allowed
    }

    /// What policy `key` allows to address ranges in `direction`.
    fn structure(
        &self,
        key: &PolicyKey,
        direction: Direction,
        named_ports: &[NamedPort],
    ) -> Structure {
        let mut structure = Structure::default();
        let Some(entry) = self.policies.get(key) else {
            return structure;
        };
        let Some(parsed) = &entry.parsed else {
            return structure;
        };
        let credit = |ranges: &[Range]| -> Vec<(Range, Arc<str>)> {
            ranges.iter().map(|r| (*r, entry.credit.clone())).collect()
        };
        for rule in parsed.rules(direction).unwrap_or_default() {
            let (ranges, by_peer) = rule_ports(&rule.ports, direction, named_ports);
            if ranges.is_empty() && by_peer.is_empty() {
                continue;
            }
            match &rule.peers {
                None => structure
                    .everywhere
                    .get_or_insert_with(Vec::new)
                    .extend(credit(&ranges)),
                Some(peers) => {
                    for peer in peers {
                        if let Peer::Block(block) = peer {
                            if !ranges.is_empty() {
                                structure.blocks.push((block.clone(), credit(&ranges)));
                            }
                        }
                    }
                }
            }
        }
        structure
    }

    /// Whether policy `key` isolates `pod` in `direction`.
    fn isolates(&self, key: &PolicyKey, pod: &PolicyPod, direction: Direction) -> bool {
        self.policies
            .get(key)
            .and_then(|p| p.parsed.as_ref())
            .is_some_and(|p| {
                *p.namespace == *pod.namespace
                    && p.rules(direction).is_some()
                    && p.selector.matches(&pod.labels)
            })
    }

    /// Everything the table holds, as [`super::compile`] gives it: for a whole write.
    pub fn compiled(&self) -> Compiled {
        let mut compiled = Compiled::default();
        for (ifindex, state) in &self.endpoints {
            compiled.endpoints.insert(*ifindex, state.endpoint.clone());
            for direction in DIRECTIONS {
                for (prefix, set) in &state.sides[side_index(direction)].table {
                    compiled
                        .peers
                        .insert(peer_prefix(*ifindex, direction, *prefix), set.clone());
                }
            }
        }
        let mut problems: Vec<Problem> = self
            .policies
            .values()
            .flat_map(|p| p.problems.iter().cloned())
            .collect();
        problems.extend(self.interface_problems.values().flatten().cloned());
        // Stable: within one object, problems keep the order in which its fields were read.
        problems
            .sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
        compiled.problems = problems;
        compiled
    }

    /// The pod that keeps interface `ifindex` (the first in the whole compile's order), and
    /// a problem for each other pod claiming it.
    fn interface_owner(&self, ifindex: u32) -> (Option<PodId>, Vec<Problem>) {
        let mut claimants: Vec<(PodId, &PolicyPod)> = self
            .pods_on
            .get(&ifindex)
            .into_iter()
            .flatten()
            .filter_map(|id| self.pods[*id].as_deref().map(|p| (*id, p)))
            .collect();
        claimants.sort_by(|(_, a), (_, b)| {
            (&a.namespace, &a.name, a.ip, a.ifindex, &a.labels).cmp(&(
                &b.namespace,
                &b.name,
                b.ip,
                b.ifindex,
                &b.labels,
            ))
        });
        let mut problems = Vec::new();
        let Some((owner, first)) = claimants.first() else {
            return (None, problems);
        };
        for (_, pod) in &claimants[1..] {
            report_taken_interface(pod, ifindex, first, &mut problems);
        }
        (Some(*owner), problems)
    }

    /// Compiles what changed since the last call; returns the map entries whose desired
    /// state changed.
    pub fn update(&mut self) -> PolicyDelta {
        let mut delta = PolicyDelta::default();
        for key in &self.dirty_policies {
            if let Some(entry) = self.policies.get(key) {
                delta.problems.extend(entry.problems.iter().cloned());
            }
        }

        // Interfaces whose pods changed: their owner, and their endpoint compiled whole.
        let interfaces = std::mem::take(&mut self.dirty_interfaces);
        for ifindex in &interfaces {
            let (owner, problems) = self.interface_owner(*ifindex);
            delta.problems.extend(problems.iter().cloned());
            if problems.is_empty() {
                self.interface_problems.remove(ifindex);
            } else {
                self.interface_problems.insert(*ifindex, problems);
            }
            let old = self.endpoints.remove(ifindex);
            match owner {
                Some(pod) => {
                    let state = self.compile_endpoint(*ifindex, pod, old, &mut delta);
                    self.endpoints.insert(*ifindex, state);
                }
                None => {
                    if let Some(old) = old {
                        for (direction, side) in DIRECTIONS.into_iter().zip(old.sides.iter()) {
                            for prefix in side.table.keys() {
                                delta
                                    .peers
                                    .insert(peer_prefix(*ifindex, direction, *prefix), None);
                            }
                        }
                        delta.endpoints.insert(*ifindex, None);
                    }
                }
            }
        }

        // The other endpoints: only what the changed policies and hosts touch.
        let dirty_policies = std::mem::take(&mut self.dirty_policies);
        let dirty_hosts = std::mem::take(&mut self.dirty_hosts);
        let ifindexes: Vec<u32> = self
            .endpoints
            .keys()
            .filter(|i| !interfaces.contains(i))
            .copied()
            .collect();
        for ifindex in ifindexes {
            let mut state = self.endpoints.remove(&ifindex).expect("listed");
            let pod = self.pods[state.pod]
                .clone()
                .expect("an endpoint's pod exists");
            for direction in DIRECTIONS {
                let side = &mut state.sides[side_index(direction)];
                let mut isolating = side.isolating.clone();
                for key in &dirty_policies {
                    if self.isolates(key, &pod, direction) {
                        isolating.insert(key.clone());
                    } else {
                        isolating.remove(key);
                    }
                }
                let changed: BTreeSet<PolicyKey> = dirty_policies
                    .iter()
                    .filter(|k| side.isolating.contains(*k) || isolating.contains(*k))
                    .cloned()
                    .collect();
                let hosts: Vec<(&PolicyKey, &HashSet<Ipv4Addr>)> = dirty_hosts
                    .iter()
                    .filter(|(k, _)| isolating.contains(*k) && !changed.contains(*k))
                    .collect();
                if changed.is_empty() && hosts.is_empty() {
                    continue;
                }
                let rebuild = side.isolating.is_empty() != isolating.is_empty()
                    || changed.iter().any(|key| {
                        let now = if isolating.contains(key) {
                            self.structure(key, direction, &side.named_ports)
                        } else {
                            Structure::default()
                        };
                        side.structures.get(key).cloned().unwrap_or_default() != now
                    });
                if rebuild {
                    let old = std::mem::take(side);
                    *side = self.compile_side(direction, isolating, old.named_ports.clone());
                    diff_tables(ifindex, direction, &old.table, &side.table, &mut delta);
                    continue;
                }
                side.isolating = isolating;
                let mut touched: BTreeSet<Ipv4Addr> = BTreeSet::new();
                for key in &changed {
                    for address in side.policy_hosts.remove(key).into_iter().flatten() {
                        if let Some(at) = side.hosts.get_mut(&address) {
                            at.remove(key);
                            if at.is_empty() {
                                side.hosts.remove(&address);
                            }
                        }
                        touched.insert(address);
                    }
                    if side.isolating.contains(key) {
                        for address in self.candidates(key) {
                            self.set_contribution(side, key, direction, address);
                            touched.insert(address);
                        }
                    }
                }
                for (key, addresses) in hosts {
                    for address in addresses {
                        self.set_contribution(side, key, direction, *address);
                        touched.insert(*address);
                    }
                }
                let lengths = side.structure.lengths();
                let structural = side.structure.prefixes();
                for address in touched {
                    let prefix = Cidr::host(address);
                    let old = side.table.get(&prefix).cloned();
                    let new = if side.hosts.contains_key(&address) || structural.contains(&prefix) {
                        let set = prefix_set(side, prefix);
                        let inherited = lengths
                            .up_to(31)
                            .find_map(|len| side.table.get(&Cidr::new(prefix.bits, len)));
                        let redundant = match inherited {
                            Some(shorter) => *shorter == set,
                            None => set.0.is_empty(),
                        };
                        (!redundant).then_some(set)
                    } else {
                        None
                    };
                    if old != new {
                        match &new {
                            Some(set) => side.table.insert(prefix, set.clone()),
                            None => side.table.remove(&prefix),
                        };
                        delta
                            .peers
                            .insert(peer_prefix(ifindex, direction, prefix), new);
                    }
                }
            }
            let endpoint = Endpoint {
                pod: state.endpoint.pod.clone(),
                ingress: first_credit(self, &state.sides[0].isolating),
                egress: first_credit(self, &state.sides[1].isolating),
            };
            if endpoint != state.endpoint {
                state.endpoint = endpoint.clone();
                delta.endpoints.insert(ifindex, Some(endpoint));
            }
            self.endpoints.insert(ifindex, state);
        }
        delta
    }

    /// Recomputes what policy `key` allows to `address` in `side`.
    fn set_contribution(
        &self,
        side: &mut Side,
        key: &PolicyKey,
        direction: Direction,
        address: Ipv4Addr,
    ) {
        let allowed = self.contribution(key, direction, &side.named_ports, address);
        if allowed.is_empty() {
            if let Some(at) = side.hosts.get_mut(&address) {
                at.remove(key);
                if at.is_empty() {
                    side.hosts.remove(&address);
                }
            }
            if let Some(hosts) = side.policy_hosts.get_mut(key) {
                hosts.remove(&address);
                if hosts.is_empty() {
                    side.policy_hosts.remove(key);
                }
            }
        } else {
            let credit = self.policies[key].credit.clone();
            side.hosts
                .entry(address)
                .or_default()
                .insert(key, (credit, allowed.into_boxed_slice()));
            side.policy_hosts
                .entry(key.clone())
                .or_default()
                .insert(address);
        }
    }

    /// Endpoint `ifindex` of pod `pod`, compiled whole; the difference from `old` goes into
    /// `delta`.
    fn compile_endpoint(
        &self,
        ifindex: u32,
        pod: PodId,
        old: Option<EndpointState>,
        delta: &mut PolicyDelta,
    ) -> EndpointState {
        let owner = self.pods[pod].as_deref().expect("an owner exists");
        let empty = Side::default();
        let mut sides: [Side; 2] = Default::default();
        for direction in DIRECTIONS {
            let isolating: BTreeSet<PolicyKey> = self
                .policies_in
                .get(&*owner.namespace)
                .into_iter()
                .flatten()
                .filter(|key| self.isolates(key, owner, direction))
                .cloned()
                .collect();
            let named_ports = match direction {
                Direction::Ingress => sorted_named_ports(owner),
                Direction::Egress => Vec::new(),
            };
            let side = self.compile_side(direction, isolating, named_ports);
            let old_table = &old
                .as_ref()
                .map_or(&empty, |o| &o.sides[side_index(direction)])
                .table;
            diff_tables(ifindex, direction, old_table, &side.table, delta);
            sides[side_index(direction)] = side;
        }
        let endpoint = Endpoint {
            pod: owner.key(),
            ingress: first_credit(self, &sides[0].isolating),
            egress: first_credit(self, &sides[1].isolating),
        };
        if old.is_none_or(|o| o.endpoint != endpoint) {
            delta.endpoints.insert(ifindex, Some(endpoint.clone()));
        }
        EndpointState {
            pod,
            endpoint,
            sides,
        }
    }

    /// One direction of an endpoint, compiled whole, as the whole compile's peer table.
    fn compile_side(
        &self,
        direction: Direction,
        isolating: BTreeSet<PolicyKey>,
        named_ports: Vec<NamedPort>,
    ) -> Side {
        let mut side = Side {
            named_ports,
            ..Side::default()
        };
        for key in &isolating {
            let structure = self.structure(key, direction, &side.named_ports);
            if !structure.is_empty() {
                side.structure.add(&structure);
                side.structures.insert(key.clone(), structure);
            }
            for address in self.candidates(key) {
                self.set_contribution(&mut side, key, direction, address);
            }
        }
        side.isolating = isolating;
        let mut prefixes = side.structure.prefixes();
        prefixes.extend(side.hosts.keys().map(|a| Cidr::host(*a)));
        let mut by_length: Vec<Cidr> = prefixes.into_iter().collect();
        by_length.sort_by_key(|c| (c.len, c.bits));
        // Shorter prefixes first: one is left out when the next shorter one kept (or no
        // match at all) gives the same.
        let mut lengths = Lengths::default();
        for prefix in by_length {
            let set = prefix_set(&side, prefix);
            let inherited = lengths
                .up_to(prefix.len)
                .filter(|len| *len < prefix.len)
                .find_map(|len| side.table.get(&Cidr::new(prefix.bits, len)));
            let redundant = match inherited {
                Some(shorter) => *shorter == set,
                None => set.0.is_empty(),
            };
            if !redundant {
                side.table.insert(prefix, set);
                lengths.insert(prefix.len);
            }
        }
        side
    }
}

/// The trackers a policy's peers hold, one per peer of pods.
fn peer_trackers(parsed: &ParsedPolicy<TrackerId>) -> impl Iterator<Item = TrackerId> + '_ {
    DIRECTIONS
        .into_iter()
        .flat_map(|d| parsed.rules(d).unwrap_or_default())
        .flat_map(|rule| rule.peers.iter().flatten())
        .filter_map(|peer| match peer {
            Peer::Pods(id) => Some(*id),
            Peer::Block(_) => None,
        })
}

/// The credit of the first isolating policy by name.
fn first_credit(table: &PolicyTable, isolating: &BTreeSet<PolicyKey>) -> Option<String> {
    isolating
        .iter()
        .filter_map(|key| table.policies.get(key))
        .map(|entry| &*entry.credit)
        .min()
        .map(str::to_owned)
}

fn peer_prefix(ifindex: u32, direction: Direction, prefix: Cidr) -> PeerPrefix {
    PeerPrefix {
        endpoint: ifindex,
        direction,
        address: Ipv4Addr::from_bits(prefix.bits),
        prefix_len: prefix.len,
    }
}

/// The prefixes that differ between two tables of one endpoint's direction.
fn diff_tables(
    ifindex: u32,
    direction: Direction,
    old: &BTreeMap<Cidr, super::PortSet>,
    new: &BTreeMap<Cidr, super::PortSet>,
    delta: &mut PolicyDelta,
) {
    for (prefix, set) in new {
        if old.get(prefix) != Some(set) {
            delta
                .peers
                .insert(peer_prefix(ifindex, direction, *prefix), Some(set.clone()));
        }
    }
    for prefix in old.keys() {
        if !new.contains_key(prefix) {
            delta
                .peers
                .insert(peer_prefix(ifindex, direction, *prefix), None);
        }
    }
}

/// What the side allows to the addresses whose longest match is `prefix`.
fn prefix_set(side: &Side, prefix: Cidr) -> super::PortSet {
    let mut allowed: Vec<Allowed> = Vec::new();
    if prefix.len == 32 {
        if let Some(at) = side.hosts.get(&Ipv4Addr::from_bits(prefix.bits)) {
            for (credit, ranges) in at.values() {
                allowed.extend(ranges.iter().map(|(protocol, first, last)| Allowed {
                    protocol: *protocol,
                    first: *first,
                    last: *last,
                    policy: credit,
                }));
            }
        }
    }
    fn owned(((protocol, first, last), credit): &(Range, Arc<str>)) -> Allowed<'_> {
        Allowed {
            protocol: *protocol,
            first: *first,
            last: *last,
            policy: credit,
        }
    }
    allowed.extend(side.structure.everywhere.iter().flatten().map(owned));
    for (block, ranges) in &side.structure.blocks {
        if block.contains(prefix) {
            allowed.extend(ranges.iter().map(owned));
        }
    }
    normalize(&allowed)
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
