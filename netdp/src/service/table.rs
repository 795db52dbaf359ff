//! The incremental compiler: kube-proxy's service and endpoint change trackers. It holds each
//! Service with its EndpointSlices and the frontends it last compiled to; a change marks only
//! its own Service for recompiling, and [`ServiceTable::update`] returns only the frontends
//! whose desired state changed. One endpoint change at 30,000 Services costs the compile of one
//! Service and a few map writes: nothing here walks every Service on a change.
//!
//! Each rule says which upstream function it follows.
//!
//! Two Services may claim one frontend (an external IP equal to another's cluster IP, say):
//! the first by (namespace, name) keeps it, the others get a [`Problem`], and when the holder
//! lets go the next claimant takes over, as a full compile in that order would decide.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::compile::Problem;
use super::model::{Address, AddressSource, EndpointInfo, ServiceInfo, SliceInfo};
use super::{BackendAddr, DesiredService, ExternalTarget, Frontend, Protocol, ServicePortName};
use crate::intern::intern;

/// A Service by namespace and name (both interned).
pub type ServiceRef = (Arc<str>, Arc<str>);

/// See the module documentation.
#[derive(Debug, Default)]
pub struct ServiceTable {
    /// This node's name: endpoints on it are local (`EndpointSliceCache.isLocal`).
    node: Arc<str>,
    /// This node's `topology.kubernetes.io/zone`, for topology-aware routing.
    zone: Option<Arc<str>>,
    /// The addresses its node ports are served on.
    node_addresses: Vec<Ipv4Addr>,
    entries: HashMap<ServiceRef, Entry>,
    /// Which Service each slice (namespace, name) belongs to.
    slices: HashMap<(Arc<str>, Arc<str>), Arc<str>>,
    /// The Services claiming each frontend, first by (namespace, name) first.
    claims: HashMap<Frontend, Vec<ServiceRef>>,
    /// Pods' `hostPort`s, by pod (namespace, `pod/NAME`), claiming frontends as Services do.
    host_ports: HashMap<ServiceRef, Box<[HostPort]>>,
    /// Local endpoints whose pod failed readiness here, before their slice says so.
    not_ready: HashSet<Ipv4Addr>,
    /// The Services with a local endpoint at each address.
    local: HashMap<Ipv4Addr, HashSet<ServiceRef>>,
    dirty: HashSet<ServiceRef>,
}

#[derive(Debug, Default)]
struct Entry {
    service: Option<Arc<ServiceInfo>>,
    /// Sorted by name: which copy of an endpoint two slices list counts depends on it.
    slices: Vec<Arc<SliceInfo>>,
    /// The frontends it claims, as it would have them.
    /// Boxed: exactly as long as it is (a Vec's first push makes room for four, 336 bytes
    /// more per Service at 30,000).
    wanted: Box<[Wanted]>,
    /// Frontends it claims twice itself (a port repeated, an external IP equal to its
    /// cluster IP).
    problems: Box<[Problem]>,
    /// Addresses of its endpoints on this node.
    local: Box<[Ipv4Addr]>,
}

#[derive(Clone, Debug)]
struct Wanted {
    desired: DesiredService,
    source: AddressSource,
}

/// A pod's `hostPort` (the CNI portmap plugin's job): packets to the host IP, or to every
/// address node ports are served on, at `host_port` go to the pod at `container_port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub protocol: Protocol,
    pub pod_ip: Ipv4Addr,
    pub container_port: u16,
}

/// The prefix that tells a pod's host ports from a Service in the table's keys: no Service
/// name can hold a '/'.
const POD_KEY_PREFIX: &str = "pod/";

/// What [`ServiceTable::update`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// Frontends to add or rewrite, sorted.
    pub upserts: Vec<DesiredService>,
    /// Frontends no Service wants any more, sorted.
    pub removals: Vec<Frontend>,
    /// The problems of every object recompiled.
    pub problems: Vec<Problem>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removals.is_empty()
    }
}

/// What one endpoint is for one Service port, with this node's view applied.
struct PortEndpoint<'a> {
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
    zone_hints: &'a [Arc<str>],
}

impl ServiceTable {
    /// An empty table for the node `node`.
    pub fn new(node: &str) -> Self {
        ServiceTable {
            node: intern(node),
            ..ServiceTable::default()
        }
    }

    /// Sets this node's zone; Services using topology-aware routing are compiled again.
    pub fn set_zone(&mut self, zone: Option<&str>) {
        let zone = zone.filter(|z| !z.is_empty()).map(intern);
        if zone == self.zone {
            return;
        }
        self.zone = zone;
        for (key, entry) in &self.entries {
            if entry.service.as_ref().is_some_and(|s| s.topology) {
                self.dirty.insert(key.clone());
            }
        }
    }

    /// Sets the addresses the node's node ports are served on (kube-proxy's
    /// `nodePortAddresses`, applied to the node's addresses); Services with a node port are
    /// compiled again.
    pub fn set_node_addresses(&mut self, addresses: &[Ipv4Addr]) {
        let mut addresses = addresses.to_vec();
        addresses.sort_unstable();
        addresses.dedup();
        if addresses == self.node_addresses {
            return;
        }
        self.node_addresses = addresses;
        for (key, entry) in &self.entries {
            let exposed = entry.service.as_ref().is_some_and(|s| s.has_node_ports());
            if exposed || self.host_ports.contains_key(key) {
                self.dirty.insert(key.clone());
            }
        }
    }

    /// Sets the `hostPort`s of the pod `namespace/name` (none: it has none, or is gone).
    pub fn set_host_ports(&mut self, namespace: &str, name: &str, ports: Vec<HostPort>) {
        let key: ServiceRef = (
            intern(namespace),
            Arc::from(format!("{POD_KEY_PREFIX}{name}")),
        );
        let ports = ports.into_boxed_slice();
        if ports.is_empty() {
            if self.host_ports.remove(&key).is_some() {
                self.dirty.insert(key);
            }
            return;
        }
        if self.host_ports.get(&key) == Some(&ports) {
            return;
        }
        self.host_ports.insert(key.clone(), ports);
        self.entries.entry(key.clone()).or_default();
        self.dirty.insert(key);
    }

    /// Sets (or with `None` removes) the Service `namespace/name`.
    pub fn set_service(&mut self, namespace: &str, name: &str, service: Option<Arc<ServiceInfo>>) {
        let key = (intern(namespace), intern(name));
        if service.is_none() && !self.entries.contains_key(&key) {
            return;
        }
        self.entries.entry(key.clone()).or_default().service = service;
        self.dirty.insert(key);
    }

    /// Sets (or with `None` removes) the EndpointSlice `namespace/name`. A slice whose
    /// Service label changed moves to its new Service.
    pub fn set_slice(&mut self, namespace: &str, name: &str, slice: Option<Arc<SliceInfo>>) {
        let namespace = intern(namespace);
        // The slice's own name where there is one: the index shares it.
        let name: Arc<str> = match &slice {
            Some(slice) if &*slice.name == name => slice.name.clone(),
            _ => Arc::from(name),
        };
        let slice_key = (namespace.clone(), name.clone());
        if let Some(service) = self.slices.remove(&slice_key) {
            let key = (namespace.clone(), service);
            if let Some(entry) = self.entries.get_mut(&key) {
                entry.slices.retain(|s| *s.name != *name);
            }
            self.dirty.insert(key);
        }
        let Some(slice) = slice.filter(|s| !s.service.is_empty()) else {
            return;
        };
        let key = (namespace, slice.service.clone());
        self.slices.insert(slice_key, slice.service.clone());
        let entry = self.entries.entry(key.clone()).or_default();
        let at = entry.slices.partition_point(|s| s.name < slice.name);
        entry.slices.insert(at, slice);
        self.dirty.insert(key);
    }

    /// Marks the local endpoint at `address` as failing readiness here (`ready` false), or
    /// as back to what its slice says. The Services it serves are compiled again.
    pub fn set_local_ready(&mut self, address: Ipv4Addr, ready: bool) {
        let changed = if ready {
            self.not_ready.remove(&address)
        } else {
            self.not_ready.insert(address)
        };
        if changed {
            if let Some(services) = self.local.get(&address) {
                self.dirty.extend(services.iter().cloned());
            }
        }
    }

    /// Whether this node's endpoint at `address` is ready in the slices that list it (as of
    /// the last update): `None` if none lists it.
    pub fn local_endpoint_ready(&self, address: Ipv4Addr) -> Option<bool> {
        let services = self.local.get(&address)?;
        let mut listed = services
            .iter()
            .filter_map(|key| self.entries.get(key))
            .flat_map(|entry| entry.slices.iter())
            .flat_map(|slice| slice.endpoints.iter())
            .filter(|e| e.address == address && is_local(e, &self.node))
            .peekable();
        listed.peek()?;
        Some(listed.any(|e| e.ready))
    }

    /// Compiles the Services changed since the last call; returns the frontends whose
    /// desired state changed, and the problems of what was compiled.
    pub fn update(&mut self) -> Delta {
        let mut delta = Delta::default();
        let mut touched: HashSet<Frontend> = HashSet::new();
        for key in std::mem::take(&mut self.dirty) {
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            let (wanted, problems, local) = match self.host_ports.get(&key) {
                Some(ports) => (
                    host_port_frontends(&key, ports, &self.node_addresses),
                    Vec::new(),
                    Vec::new(),
                ),
                None => compile_entry(
                    entry,
                    &Context {
                        node: &self.node,
                        zone: self.zone.as_deref(),
                        not_ready: &self.not_ready,
                        node_addresses: &self.node_addresses,
                    },
                ),
            };
            // The frontends given up, then those taken or changed.
            for old in &entry.wanted {
                let frontend = old.desired.frontend;
                if !wanted.iter().any(|w| w.desired.frontend == frontend) {
                    if let Some(owners) = self.claims.get_mut(&frontend) {
                        owners.retain(|owner| owner != &key);
                    }
                    touched.insert(frontend);
                }
            }
            for new in &wanted {
                let frontend = new.desired.frontend;
                match entry.wanted.iter().find(|w| w.desired.frontend == frontend) {
                    Some(old) if old.desired == new.desired => {}
                    Some(_) => {
                        touched.insert(frontend);
                    }
                    None => {
                        let owners = self.claims.entry(frontend).or_default();
                        let at = owners.partition_point(|owner| owner < &key);
                        // Nearly always the one claimant: room for no more.
                        owners.reserve_exact(1);
                        owners.insert(at, key.clone());
                        touched.insert(frontend);
                    }
                }
            }
            for address in entry.local.iter() {
                if let Some(services) = self.local.get_mut(address) {
                    services.remove(&key);
                    if services.is_empty() {
                        self.local.remove(address);
                    }
                }
            }
            for address in &local {
                self.local.entry(*address).or_default().insert(key.clone());
            }
            entry.wanted = wanted.into_boxed_slice();
            entry.problems = problems.into_boxed_slice();
            entry.local = local.into_boxed_slice();
            delta.problems.extend(object_problems(entry));
            if entry.service.is_none()
                && entry.slices.is_empty()
                && !self.host_ports.contains_key(&key)
            {
                self.entries.remove(&key);
            }
        }
        let mut touched: Vec<Frontend> = touched.into_iter().collect();
        touched.sort_unstable();
        for frontend in touched {
            match self.winner(frontend) {
                Some(wanted) => {
                    delta.upserts.push(wanted.desired.clone());
                    delta.problems.extend(self.claim_problems(frontend));
                }
                None => {
                    self.claims.remove(&frontend);
                    delta.removals.push(frontend);
                }
            }
        }
        delta
    }

    /// What the claimant first by name wants for `frontend`.
    fn winner(&self, frontend: Frontend) -> Option<&Wanted> {
        let owner = self.claims.get(&frontend)?.first()?;
        self.entries
            .get(owner)?
            .wanted
            .iter()
            .find(|w| w.desired.frontend == frontend)
    }

    /// A problem for each Service that claims `frontend` and does not hold it.
    fn claim_problems(&self, frontend: Frontend) -> Vec<Problem> {
        let Some(holder) = self.winner(frontend) else {
            return Vec::new();
        };
        let owners = self.claims.get(&frontend).map_or(&[][..], |o| &o[1..]);
        owners
            .iter()
            .filter_map(|owner| {
                let wanted = self.entries.get(owner)?.wanted.iter();
                let lost = wanted.clone().find(|w| w.desired.frontend == frontend)?;
                Some(claim_problem(owner, lost, &holder.desired.name))
            })
            .collect()
    }

    /// Every frontend as the maps should hold it, sorted.
    pub fn desired(&self) -> Vec<DesiredService> {
        let mut frontends: Vec<Frontend> = self.claims.keys().copied().collect();
        frontends.sort_unstable();
        frontends
            .into_iter()
            .filter_map(|f| Some(self.winner(f)?.desired.clone()))
            .collect()
    }

    /// Every problem of every object, grouped by object (kind, namespace, name); within one
    /// object in the order of its fields.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems: Vec<Problem> = self.entries.values().flat_map(object_problems).collect();
        let mut contested: Vec<Frontend> = self
            .claims
            .iter()
            .filter(|(_, owners)| owners.len() > 1)
            .map(|(f, _)| *f)
            .collect();
        contested.sort_unstable();
        for frontend in contested {
            problems.extend(self.claim_problems(frontend));
        }
        problems
            .sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
        problems
    }
}

/// The problems of one entry's own objects: its Service's, its own repeated frontends, and
/// its slices' once the Service exists (until then nothing reads them).
fn object_problems(entry: &Entry) -> impl Iterator<Item = Problem> + '_ {
    let slices = entry.slices.iter().filter(|_| entry.service.is_some());
    entry
        .service
        .iter()
        .flat_map(|s| s.problems.iter())
        .chain(entry.problems.iter())
        .chain(slices.flat_map(|s| s.problems.iter()))
        .cloned()
}

fn claim_problem(owner: &ServiceRef, lost: &Wanted, holder: &ServicePortName) -> Problem {
    let frontend = lost.desired.frontend;
    let (kind, name) = match owner.1.strip_prefix(POD_KEY_PREFIX) {
        Some(pod) => ("Pod", pod),
        None => ("Service", &*owner.1),
    };
    Problem {
        kind,
        namespace: owner.0.to_string(),
        name: name.to_owned(),
        field: lost.source.field(),
        value: frontend.address.to_string(),
        message: format!("frontend {frontend} is already {holder}'s"),
    }
}

struct Context<'a> {
    node: &'a str,
    zone: Option<&'a str>,
    not_ready: &'a HashSet<Ipv4Addr>,
    node_addresses: &'a [Ipv4Addr],
}

/// One Service's frontends with their backends, the frontends it repeats, and the addresses
/// of its local endpoints.
fn compile_entry(
    entry: &Entry,
    context: &Context<'_>,
) -> (Vec<Wanted>, Vec<Problem>, Vec<Ipv4Addr>) {
    let mut wanted: Vec<Wanted> = Vec::new();
    let mut problems = Vec::new();
    let mut local: Vec<Ipv4Addr> = entry
        .slices
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| is_local(e, context.node))
        .map(|e| e.address)
        .collect();
    local.sort_unstable();
    local.dedup();
    let Some(service) = entry.service.as_ref().filter(|s| s.is_served()) else {
        return (wanted, problems, local);
    };
    for port in service.ports.iter() {
        let endpoints = endpoints_for_port(&entry.slices, &port.name, port.protocol, context);
        let cluster = cluster_endpoints(&endpoints, service.topology, context.zone);
        // kube-proxy drops connections to a Local Service with no local endpoint (the "has
        // no local endpoints" filter rule). A socket-layer balancer cannot drop silently;
        // with no backend, bosun refuses the connection instead.
        let for_cluster_ip = if service.internal_local {
            usable(endpoints.iter().filter(|(_, e)| e.local))
        } else {
            cluster.clone()
        };
        let name = ServicePortName {
            namespace: service.namespace.clone(),
            name: service.name.clone(),
            port: port.name.clone(),
        };
        // Traffic from outside the node (kube-proxy's external destinations): to every
        // endpoint the Cluster policy allows, or under `externalTrafficPolicy: Local` to this
        // node's only, the client's address kept.
        let external: Vec<ExternalTarget> = if service.external_local {
            usable(endpoints.iter().filter(|(_, e)| e.local))
        } else {
            cluster.clone()
        }
        .into_iter()
        .map(|backend| ExternalTarget {
            backend,
            local: endpoints.get(&backend).is_some_and(|e| e.local),
        })
        .collect();
        let node_ports = context
            .node_addresses
            .iter()
            .filter(|_| port.node_port != 0)
            .map(|address| Address {
                address: *address,
                source: AddressSource::NodePort(port.index),
            });
        for address in service.addresses.iter().copied().chain(node_ports) {
            let port_number = match address.source {
                AddressSource::NodePort(_) => port.node_port,
                _ => port.port,
            };
            let frontend = Frontend {
                address: address.address,
                port: port_number,
                protocol: port.protocol,
            };
            if let Some(first) = wanted.iter().find(|w| w.desired.frontend == frontend) {
                problems.push(Problem {
                    kind: "Service",
                    namespace: service.namespace.to_string(),
                    name: service.name.to_string(),
                    field: address.source.field(),
                    value: address.address.to_string(),
                    message: format!("frontend {frontend} is already {}'s", first.desired.name),
                });
                continue;
            }
            // Node-originated traffic to an external IP is short-circuited to the Cluster
            // policy's endpoints whatever either traffic policy says (the iptables proxier's
            // external-destination chain: "route LOCAL traffic ... to the policy=cluster
            // chain"); bosun only sees node-originated traffic here.
            let backends = if address.source.is_external() {
                cluster.clone()
            } else {
                for_cluster_ip.clone()
            };
            wanted.push(Wanted {
                desired: DesiredService {
                    frontend,
                    name: name.clone(),
                    affinity_timeout: service.affinity_timeout,
                    backends,
                    external: address
                        .source
                        .is_external()
                        .then(|| external.clone().into_boxed_slice()),
                },
                source: address.source,
            });
        }
    }
    (wanted, problems, local)
}

/// A pod's host ports as frontends: each on its host IP, or on every node address, to the pod
/// alone (a local backend, so flows from outside keep the client's address, as with portmap).
fn host_port_frontends(
    key: &ServiceRef,
    ports: &[HostPort],
    node_addresses: &[Ipv4Addr],
) -> Vec<Wanted> {
    let mut wanted: Vec<Wanted> = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let addresses: Vec<Ipv4Addr> = match port.host_ip.filter(|a| !a.is_unspecified()) {
            Some(address) => vec![address],
            None => node_addresses.to_vec(),
        };
        let backend = BackendAddr {
            address: port.pod_ip,
            port: port.container_port,
        };
        for address in addresses {
            let frontend = Frontend {
                address,
                port: port.host_port,
                protocol: port.protocol,
            };
            if wanted.iter().any(|w| w.desired.frontend == frontend) {
                continue;
            }
            wanted.push(Wanted {
                desired: DesiredService {
                    frontend,
                    name: ServicePortName {
                        namespace: key.0.clone(),
                        name: key.1.clone(),
                        port: intern("hostPort"),
                    },
                    affinity_timeout: None,
                    backends: vec![backend],
                    external: Some(Box::new([ExternalTarget {
                        backend,
                        local: true,
                    }])),
                },
                source: AddressSource::HostPort(u16::try_from(i).unwrap_or(u16::MAX)),
            });
        }
    }
    wanted
}

fn is_local(endpoint: &EndpointInfo, node: &str) -> bool {
    !node.is_empty() && endpoint.node.as_deref() == Some(node)
}

/// Every endpoint of one Service port, keyed by backend: kube-proxy's
/// `endpointInfoByServicePort` and `addEndpoints`. Slice ports match the Service port by name
/// and protocol. An endpoint several slices list counts once; kube-proxy keeps whichever copy
/// its map iteration meets first unless a later one is local, so here the local copy wins and
/// otherwise the one in the slice first by name, to be deterministic.
fn endpoints_for_port<'a>(
    slices: &'a [Arc<SliceInfo>],
    name: &str,
    protocol: Protocol,
    context: &Context<'_>,
) -> BTreeMap<BackendAddr, PortEndpoint<'a>> {
    let mut endpoints: BTreeMap<BackendAddr, PortEndpoint<'a>> = BTreeMap::new();
    for slice in slices {
        for port in slice
            .ports
            .iter()
            .filter(|p| &*p.name == name && p.protocol == Some(protocol))
        {
            for endpoint in slice.endpoints.iter() {
                let backend = BackendAddr {
                    address: endpoint.address,
                    port: port.port,
                };
                let local = is_local(endpoint, context.node);
                let keep_old = endpoints
                    .get(&backend)
                    .is_some_and(|old| old.local || !local);
                if keep_old {
                    continue;
                }
                // A local pod that failed readiness here is out before its slice says so.
                let failed_here = local && context.not_ready.contains(&endpoint.address);
                endpoints.insert(
                    backend,
                    PortEndpoint {
                        ready: endpoint.ready && !failed_here,
                        serving: endpoint.serving && !failed_here,
                        terminating: endpoint.terminating,
                        local,
                        zone_hints: &endpoint.zone_hints,
                    },
                );
            }
        }
    }
    endpoints
}

/// The endpoints for the Cluster traffic policy (kube-proxy's `CategorizeEndpoints`): with
/// topology-aware routing usable (`canUseTopology`: asked for, the node has a zone, every
/// ready endpoint has zone hints and one is hinted for this zone) the ready endpoints hinted
/// for this node's zone; otherwise every usable endpoint.
fn cluster_endpoints(
    endpoints: &BTreeMap<BackendAddr, PortEndpoint<'_>>,
    topology: bool,
    zone: Option<&str>,
) -> Vec<BackendAddr> {
    if let Some(zone) = zone.filter(|_| topology) {
        let hinted = |e: &PortEndpoint<'_>| e.zone_hints.iter().any(|z| &**z == zone);
        let ready = || endpoints.values().filter(|e| e.ready);
        if ready().all(|e| !e.zone_hints.is_empty()) && ready().any(hinted) {
            return endpoints
                .iter()
                .filter(|(_, e)| e.ready && hinted(e))
                .map(|(b, _)| *b)
                .collect();
        }
    }
    usable(endpoints.iter())
}

/// kube-proxy's `CategorizeEndpoints` for one traffic policy, without topology: the ready
/// endpoints, or if none is ready, those still serving while terminating. Sorted, since the
/// map is.
fn usable<'a, 'e: 'a>(
    endpoints: impl Iterator<Item = (&'a BackendAddr, &'a PortEndpoint<'e>)> + Clone,
) -> Vec<BackendAddr> {
    let pick = |keep: fn(&PortEndpoint<'_>) -> bool| -> Vec<BackendAddr> {
        endpoints
            .clone()
            .filter(|(_, e)| keep(e))
            .map(|(b, _)| *b)
            .collect()
    };
    let ready = pick(|e| e.ready);
    if !ready.is_empty() {
        return ready;
    }
    pick(|e| e.serving && e.terminating)
}

#[path = "table_health.rs"]
mod health;
pub use health::HealthCheck;

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
