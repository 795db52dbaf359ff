//! The service proxy: kube-proxy's loop, incremental. Services and EndpointSlices come from
//! their stores, narrowed (the API server's, the manifest directory's, and the slices bosun
//! computes for static pods); a change names its keys, and only the Services those keys
//! touch are compiled again ([`ServiceTable`]) and only the frontends whose backends changed
//! are written ([`Reconciler::apply_delta`]). Compiling and writing run off the daemon's
//! executor.
//!
//! A failed write is retried with backoff, as a full write of everything desired (the maps
//! are read back first, so it writes only what they lack). A Service the datapath cannot
//! serve as written (SCTP, a bad IP) is reported once as a Warning event naming the field,
//! and every other Service goes on. Each sync is timed, and each change timed from when the
//! proxy takes it to when it is written, under kube-proxy's metrics.
//!
//! After each write, the Services whose health check (`healthCheckNodePort`) or local
//! endpoints may have changed are handed to the [`ServiceHealthServer`]: the Services the
//! write compiled again, or all of them after a whole write.
//!
//! On a full node, a local pod that fails its readiness probe leaves the datapath at once,
//! before its EndpointSlice says so (which takes a status write and the EndpointSlice
//! controller's round trip through the API server); it comes back when the slice says so.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bosun_netdp::service::{
    self as datapath, Delta, HealthCheck, HostPort, PinnedMaps, Problem, Protocol, Reconciler,
    ServiceInfo, ServiceRef, ServiceTable, SliceInfo,
};
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::Resource;
use tokio::sync::watch;

use crate::cluster::datapath::NodeView;
use crate::events::{EventType, Recorder};
use crate::metrics;
use crate::proxy::service_health::ServiceHealthServer;
use crate::store::{Changes, ObjectKey, PodStore, Store, Subscription};
use crate::util::{error_chain, sleep_or_never};

/// Event reason for a Service (or EndpointSlice) the datapath cannot serve as written.
pub const INVALID_SERVICE: &str = "FailedToProgramService";
/// Event reason for a datapath that could not be installed or written.
pub const DATAPATH_FAILED: &str = "FailedServiceProxy";

/// The longest the first write waits for the pods to settle after a start.
pub const SETTLE: Duration = Duration::from_secs(10);
/// How often the first write checks whether they have.
const SETTLE_POLL: Duration = Duration::from_millis(50);

/// Longest wait between two attempts at a failing install or write.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// What the proxy task needs.
pub struct Proxy {
    /// The bpffs directory holding bosun's pinned maps and links.
    pub bpf_dir: PathBuf,
    pub node: String,
    pub services: Store<ServiceInfo>,
    pub slices: Store<SliceInfo>,
    /// On a full node, its pods with their status: the first write waits for them (see
    /// [`Proxy::run`]), and a local pod failing readiness leaves the datapath at once.
    pub pods: Option<PodStore>,
    /// This node's Node as the API server has it (its zone), when there is an API server.
    pub node_view: Option<watch::Receiver<NodeView>>,
    pub events: Recorder,
    /// Told of every change taken and every write that made the maps whole.
    pub progress: Option<Box<dyn Progress>>,
    /// Serves the Services' health checks (`healthCheckNodePort`) on this node.
    pub service_health: Option<ServiceHealthServer>,
    /// Node ports and traffic from outside the node.
    pub external: External,
}

/// Node ports, and where packets from outside the node are served.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct External {
    /// The interfaces whose packets to node ports, external IPs and load balancer IPs are
    /// served (the programs of [`bosun_netdp::nodeport`] attach there, both directions),
    /// including those towards other nodes, through which SNATed flows leave and come back.
    pub interfaces: Vec<String>,
    /// The interfaces of the node's IPv4 default routes too, looked at again every 10 s.
    pub default_routes: bool,
    /// kube-proxy's `nodePortAddresses`: the ranges of the node's addresses node ports are
    /// served on. Empty: every address of the node but loopback.
    pub node_port_cidrs: Vec<crate::proxy::config::Ipv4Cidr>,
    /// Whether the XDP program serves the interfaces too.
    pub acceleration: Acceleration,
}

/// Whether packets from outside are also served by the XDP program, in the drivers of the
/// external interfaces (`--nodeport-acceleration`, named as Cilium names its own).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Acceleration {
    /// tc programs alone; an XDP program an earlier run attached is taken off.
    #[default]
    Disabled,
    /// On every external interface; one whose driver does not run XDP is an error.
    Native,
    /// Where the driver runs XDP, veths aside (a veth sends the frames that XDP sends back
    /// out on to its peer only if the peer runs an XDP program too, which the node cannot
    /// know); elsewhere, the tc programs alone, said once in the log.
    BestEffort,
}

impl External {
    /// The external interfaces that exist now, with their ifindexes: those named, in order,
    /// then those of the default routes.
    pub fn wanted_interfaces(&self) -> Vec<(String, u32)> {
        let mut wanted: Vec<(String, u32)> = Vec::new();
        for name in &self.interfaces {
            match nix::net::if_::if_nametoindex(name.as_str()) {
                Ok(ifindex) => wanted.push((name.clone(), ifindex)),
                Err(_) => {
                    tracing::warn!(interface = %name, "external interface not found; looked for again in 10 s")
                }
            }
        }
        if self.default_routes {
            match bosun_netdp::netlink::default_route_interfaces() {
                Ok(ifindexes) => {
                    for ifindex in ifindexes {
                        let Some(name) = bosun_netdp::netlink::interface_name(ifindex) else {
                            continue;
                        };
                        if !wanted.iter().any(|(_, known)| *known == ifindex) {
                            wanted.push((name, ifindex));
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), "listing the default routes' interfaces")
                }
            }
        }
        wanted
    }

    /// The node's addresses that node ports are served on.
    fn node_addresses(&self) -> Vec<Ipv4Addr> {
        let addresses = match bosun_netdp::netlink::node_addresses() {
            Ok(addresses) => addresses,
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "listing the node's addresses for node ports");
                return Vec::new();
            }
        };
        addresses
            .into_iter()
            .filter(|a| !a.is_loopback())
            .filter(|a| {
                self.node_port_cidrs.is_empty()
                    || self.node_port_cidrs.iter().any(|cidr| cidr.contains(*a))
            })
            .collect()
    }

    /// The addresses the Services' health check servers listen on, chosen as kube-proxy
    /// chooses them once at its start: every address, unless `nodePortAddresses` narrows the
    /// node ports (a range other than `0.0.0.0/0`); then the node's addresses in those ranges,
    /// or every address, with a warning, when the node has none there.
    pub fn health_check_addresses(&self) -> Vec<IpAddr> {
        let every = vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)];
        if self.node_port_cidrs.iter().all(|cidr| cidr.prefix_len != 0)
            && !self.node_port_cidrs.is_empty()
        {
            let addresses = self.node_addresses();
            if !addresses.is_empty() {
                return addresses.into_iter().map(IpAddr::V4).collect();
            }
            tracing::warn!(
                node_port_addresses = ?self.node_port_cidrs,
                "no address of the node is in nodePortAddresses: the health check ports listen on every address"
            );
        }
        every
    }
}

/// How often the node's addresses and external interfaces are looked at again, and the flows
/// from outside aged.
const EXTERNAL_REFRESH: Duration = Duration::from_secs(10);

/// What the proxy tells its health server (kube-proxy's `ProxierHealthUpdater`).
pub trait Progress: Send + std::marker::Sync {
    /// Changes arrived that the maps do not hold yet.
    fn queued(&self);
    /// The maps hold everything taken so far.
    fn updated(&self);
    /// Whether this node's Node is staying (not being deleted or drained away).
    fn node_eligible(&self, _eligible: bool) {}
}

/// The loop's state that moves to the blocking thread and back for each sync.
struct Sync {
    table: ServiceTable,
    reconciler: Option<Reconciler<PinnedMaps>>,
    /// The maps must be made to hold the whole desired state (never written yet, or a write
    /// failed part way).
    whole: bool,
    external: ExternalState,
}

/// The datapath for traffic from outside, as the loop keeps it.
#[derive(Default)]
struct ExternalState {
    config: External,
    /// The programs, and their NAT table and configuration, once installed.
    installed: Option<(
        bosun_netdp::nodeport::NodePortDatapath,
        bosun_netdp::nodeport::NodePortMaps,
    )>,
    /// Interface name → the ifindex the programs were attached to.
    attached: BTreeMap<String, u32>,
    /// The interfaces served at the last look, to log a change once.
    served: Vec<(String, u32)>,
    /// Whether the attachments an earlier run pinned have been looked at.
    swept: bool,
    /// The interfaces, the SNAT address and the flows' ages are to be looked at.
    due: bool,
}

/// What the Services' health checks became in one sync.
enum HealthChecks {
    /// Of the Services compiled again (`None`: they ask for none).
    Changed(Vec<(ServiceRef, Option<HealthCheck>)>),
    /// Of every Service asking for one.
    All(Vec<(ServiceRef, HealthCheck)>),
}

impl Proxy {
    /// Runs until the task is dropped. The programs and maps stay when it ends: connections
    /// keep being balanced while bosun is down.
    ///
    /// **The first write waits until the state is known.** After a restart the maps still
    /// hold what the last bosun wrote and keep serving it; writing before the Services and
    /// slices are all read would take frontends away (kube-proxy likewise waits for its
    /// first full sync). On a full node it also waits for every running pod that is a local
    /// endpoint to be Ready again (its probes run again after a restart), or [`SETTLE`] at
    /// the latest, or the readiness shortcut would take out endpoints that are in fact fine.
    pub async fn run(mut self) {
        let mut service_health = self.service_health.take();
        let mut services = self.services.subscribe();
        let mut slices = self.slices.subscribe();
        let mut pods = self.pods.as_ref().map(Store::subscribe);
        let mut node_view = self.node_view.clone();
        let mut sync = Some(Sync {
            table: ServiceTable::new(&self.node),
            reconciler: None,
            whole: true,
            external: ExternalState {
                config: self.external.clone(),
                ..ExternalState::default()
            },
        });
        let mut refresh = tokio::time::interval(EXTERNAL_REFRESH);
        let mut refresh_due = true;
        let mut loaded = false;
        let mut local_pods: HashMap<ObjectKey, Ipv4Addr> = HashMap::new();
        let mut reported: BTreeSet<String> = BTreeSet::new();
        let mut unprogrammed = Unprogrammed::default();
        let mut backoff = FIRST_BACKOFF;
        let started = Instant::now();
        loop {
            let mut retry = None;
            let Some(mut state) = sync.take() else {
                // The blocking thread died with the state: start again from the stores.
                tracing::error!("the service proxy lost its state; reading everything again");
                loaded = false;
                sync = Some(Sync {
                    table: ServiceTable::new(&self.node),
                    reconciler: None,
                    whole: true,
                    external: ExternalState {
                        config: self.external.clone(),
                        ..ExternalState::default()
                    },
                });
                refresh_due = true;
                continue;
            };
            if !loaded && self.services.is_synced() && self.slices.is_synced() {
                // Read whole: whatever changed before is in it.
                services.take();
                slices.take();
                for service in self.services.list() {
                    let (namespace, name) = (service.namespace.clone(), service.name.clone());
                    state.table.set_service(&namespace, &name, Some(service));
                }
                for slice in self.slices.list() {
                    let (namespace, name) = (slice.namespace.clone(), slice.name.clone());
                    state.table.set_slice(&namespace, &name, Some(slice));
                }
                if let Some(view) = &node_view {
                    state.table.set_zone(view.borrow().zone.as_deref());
                }
                if let Some(pod_store) = &self.pods {
                    follow_local_readiness(pod_store, None, &mut local_pods, &mut state.table);
                }
                loaded = true;
            }
            if loaded && refresh_due {
                refresh_due = false;
                state
                    .table
                    .set_node_addresses(&self.external.node_addresses());
                state.external.due = true;
            }
            let waiting = !loaded
                || (state.whole
                    && state.reconciler.is_none()
                    && started.elapsed() < SETTLE
                    && !self.settled(&mut state.table));
            if waiting {
                retry = Some(SETTLE_POLL);
                sync = Some(state);
            } else {
                let began = Instant::now();
                let (state_back, problems, written, health) = self.sync(state).await;
                sync = state_back;
                self.report(&mut reported, &problems);
                match written {
                    Ok(()) => {
                        backoff = FIRST_BACKOFF;
                        // As kube-proxy, health checks follow a write that succeeded; after
                        // a failed one the next write is whole and brings them all.
                        match (service_health.as_mut(), health) {
                            (Some(server), Some(HealthChecks::Changed(changed))) => {
                                server.update(changed).await;
                            }
                            (Some(server), Some(HealthChecks::All(all))) => {
                                server.replace(all).await;
                            }
                            _ => {}
                        }
                        for took in unprogrammed.programmed(Instant::now()) {
                            metrics::global().observe_network_programming(took);
                        }
                        if let Some(progress) = &self.progress {
                            progress.updated();
                        }
                    }
                    Err(message) => {
                        tracing::warn!(%message, "service proxy");
                        self.events.record(
                            self.events.node_reference(),
                            EventType::Warning,
                            DATAPATH_FAILED,
                            message,
                        );
                        retry = Some(backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
                metrics::global().observe_proxy_sync(began.elapsed());
            }

            tokio::select! {
                () = services.ready() => {}
                () = slices.ready() => {}
                () = ready(&mut pods) => {}
                _ = changed(&mut node_view) => {}
                () = sleep_or_never(retry) => {}
                _ = refresh.tick() => refresh_due = true,
            }
            // Whatever changed while another woke the loop is taken too.
            let now = Instant::now();
            let (service_keys, slice_keys) = (services.take(), slices.take());
            let pod_keys = pods.as_mut().map(Subscription::take);
            let Some(state) = sync.as_mut() else {
                continue;
            };
            if !loaded {
                continue;
            }
            let queued = !service_keys.keys.is_empty() || !slice_keys.keys.is_empty();
            for key in &service_keys.keys {
                let service = self.services.get(key);
                state.table.set_service(&key.namespace, &key.name, service);
            }
            for key in &slice_keys.keys {
                let slice = self.slices.get(key);
                state.table.set_slice(&key.namespace, &key.name, slice);
            }
            if let (Some(pod_store), Some(keys)) = (&self.pods, pod_keys) {
                follow_local_readiness(pod_store, Some(keys), &mut local_pods, &mut state.table);
            }
            if let Some(view) = &node_view {
                let view = view.borrow();
                state.table.set_zone(view.zone.as_deref());
                if let Some(progress) = &self.progress {
                    progress.node_eligible(!view.leaving);
                }
            }
            if queued {
                if let Some(progress) = &self.progress {
                    progress.queued();
                }
            }
            // What the first write after a start carries is the state found then, not a
            // change (kube-proxy likewise leaves out changes from before it started).
            if !state.whole {
                unprogrammed.taken("Service", service_keys, now);
                unprogrammed.taken("EndpointSlice", slice_keys, now);
            }
        }
    }

    /// Whether every running pod of this node is Ready again, and the slices say so too for
    /// those they list (standalone, bosun computes them from the pods' status, a step
    /// behind). Only a full node has pods to wait for.
    fn settled(&self, table: &mut ServiceTable) -> bool {
        let Some(pods) = &self.pods else {
            return true;
        };
        if !pods.is_synced() {
            return false;
        }
        // The table knows its local endpoints once compiled; what this computes is written
        // whole by the first sync anyway.
        table.update();
        pods.list()
            .iter()
            .filter_map(|pod| Some((local_address(pod)?, pod)))
            .filter(|(_, pod)| is_running(pod))
            .all(|(address, pod)| {
                is_ready(pod) && table.local_endpoint_ready(address) != Some(false)
            })
    }

    /// Compiles what changed and writes it (everything, when `state.whole`), on a blocking
    /// thread. Returns the state (`None` if the thread died), the problems of what was
    /// written (of everything, for a whole write: an update before it, such as the settling
    /// check's, has compiled part of it already), whether the maps now hold it, and the
    /// health checks of what was compiled.
    async fn sync(
        &self,
        state: Sync,
    ) -> (
        Option<Sync>,
        Vec<Problem>,
        Result<(), String>,
        Option<HealthChecks>,
    ) {
        let bpf_dir = self.bpf_dir.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let mut state = state;
            let whole = state.whole;
            let pending: Option<Vec<ServiceRef>> =
                (!whole).then(|| state.table.pending().cloned().collect());
            let delta = state.table.update();
            let health = match pending {
                Some(keys) => HealthChecks::Changed(
                    keys.into_iter()
                        .map(|key| {
                            let check = state.table.health_check(&key);
                            (key, check)
                        })
                        .collect(),
                ),
                None => HealthChecks::All(state.table.health_checks()),
            };
            let written = write(&bpf_dir, &mut state, &delta);
            let problems = if whole {
                state.table.problems()
            } else {
                delta.problems
            };
            if whole && written.is_ok() {
                // The first write after a start comes after every object was listed and
                // compiled at once: what those took for a moment goes back.
                crate::util::release_freed_memory();
            }
            (state, problems, written, health)
        })
        .await;
        match joined {
            Ok((state, problems, written, health)) => {
                if let Some((frontends, backends)) =
                    state.reconciler.as_ref().and_then(Reconciler::counts)
                {
                    metrics::global().set_service_datapath(frontends, backends);
                }
                (Some(state), problems, written, Some(health))
            }
            Err(e) => (
                None,
                Vec::new(),
                Err(format!("writing the service maps: {e}")),
                None,
            ),
        }
    }

    /// Reports each problem once, as a Warning event on its object.
    fn report(&self, reported: &mut BTreeSet<String>, problems: &[Problem]) {
        for problem in problems {
            let text = problem.to_string();
            if reported.insert(text.clone()) {
                tracing::warn!(problem = %text, "service not programmed as written");
                let involved = ObjectReference {
                    api_version: Some(if problem.kind == "Service" {
                        Service::API_VERSION.into()
                    } else {
                        EndpointSlice::API_VERSION.into()
                    }),
                    kind: Some(problem.kind.into()),
                    namespace: Some(problem.namespace.clone()),
                    name: Some(problem.name.clone()),
                    ..Default::default()
                };
                let message = format!(
                    "{}: {:?}: {}",
                    problem.field, problem.value, problem.message
                );
                self.events
                    .record(involved, EventType::Warning, INVALID_SERVICE, message);
            }
        }
    }
}

/// Installs the datapath if it is not yet, then writes `delta` to its maps, or the whole
/// desired state when the maps may lack more than the delta.
fn write(bpf_dir: &std::path::Path, state: &mut Sync, delta: &Delta) -> Result<(), String> {
    if state.reconciler.is_none() {
        let installed =
            crate::util::cgroup2_root().and_then(|cgroup| datapath::install(bpf_dir, &cgroup));
        let maps = installed.map_err(|e| {
            format!(
                "installing the service datapath in {}: {}",
                bpf_dir.display(),
                error_chain(&e)
            )
        })?;
        tracing::info!(bpf_dir = %bpf_dir.display(), "service datapath installed");
        state.reconciler = Some(Reconciler::new(maps));
        state.whole = true;
    }
    if state.external.due {
        write_external(bpf_dir, &mut state.external)?;
    }
    let Some(reconciler) = state.reconciler.as_mut() else {
        return Ok(());
    };
    let started = Instant::now();
    let result = if state.whole {
        reconciler.apply(&state.table.desired())
    } else if delta.is_empty() {
        return Ok(());
    } else {
        reconciler.apply_delta(&delta.upserts, &delta.removals)
    };
    match result {
        Ok(applied) => {
            state.whole = false;
            if !applied.is_empty() {
                tracing::info!(
                    added = applied.added,
                    updated = applied.updated,
                    removed = applied.removed,
                    backends_added = applied.backends_added,
                    backends_removed = applied.backends_removed,
                    took_us = started.elapsed().as_micros() as u64,
                    "service maps written"
                );
            }
            Ok(())
        }
        Err(e) => {
            // Part of the change is written, and only the table knows the rest.
            state.whole = true;
            Err(format!("writing the service maps: {}", error_chain(&e)))
        }
    }
}

/// Installs the programs for traffic from outside if they are not yet, attaches them to the
/// external interfaces that exist and are not attached yet (or were replaced), takes them off
/// interfaces no longer external (this run's, or pinned by an earlier run), sets the SNAT
/// address (the first external interface's primary address) and ages the flows.
fn write_external(bpf_dir: &std::path::Path, external: &mut ExternalState) -> Result<(), String> {
    use bosun_netdp::nodeport;
    let wanted = external.config.wanted_interfaces();
    if wanted != external.served {
        let names: Vec<&str> = wanted.iter().map(|(name, _)| name.as_str()).collect();
        tracing::info!(interfaces = ?names, default_routes = external.config.default_routes, "external interfaces");
        external.served = wanted.clone();
    }
    let is_wanted = |ifindex: u32| wanted.iter().any(|(_, wanted)| *wanted == ifindex);
    let mut stale: Vec<u32> = external
        .attached
        .values()
        .copied()
        .filter(|ifindex| !is_wanted(*ifindex))
        .collect();
    if !external.swept {
        let pinned = nodeport::attached(bpf_dir)
            .and_then(|mut tc| {
                tc.extend(nodeport::attached_xdp(bpf_dir)?);
                Ok(tc)
            })
            .map_err(|e| {
                format!(
                    "listing the attachments for traffic from outside: {}",
                    error_chain(&e)
                )
            })?;
        stale.extend(pinned.into_iter().filter(|ifindex| !is_wanted(*ifindex)));
        external.swept = true;
    }
    stale.sort_unstable();
    stale.dedup();
    for ifindex in stale {
        nodeport::detach(bpf_dir, ifindex).map_err(|e| {
            format!(
                "taking the programs for traffic from outside off interface {ifindex}: {}",
                error_chain(&e)
            )
        })?;
        tracing::info!(
            ifindex,
            "no longer an external interface: programs taken off"
        );
        external.attached.retain(|_, attached| *attached != ifindex);
    }
    if wanted.is_empty() && external.installed.is_none() {
        external.due = false;
        return Ok(());
    }
    let (datapath, maps) = match &mut external.installed {
        Some(installed) => installed,
        None => {
            let mode = bosun_netdp::tc::TcMode::detect(bosun_netdp::tc::Interfaces::Node)
                .map_err(|e| error_chain(&e))?;
            let installed = nodeport::install(bpf_dir, mode)
                .and_then(|datapath| {
                    let maps = datapath.maps()?;
                    Ok((datapath, maps))
                })
                .map_err(|e| {
                    format!(
                        "installing the datapath for traffic from outside in {}: {}",
                        bpf_dir.display(),
                        error_chain(&e)
                    )
                })?;
            external.installed.insert(installed)
        }
    };
    let mut snat = None;
    for (name, ifindex) in &wanted {
        let (name, ifindex) = (name.as_str(), *ifindex);
        if external.attached.get(name) != Some(&ifindex) {
            datapath.attach(ifindex).map_err(|e| {
                format!(
                    "attaching to external interface {name}: {}",
                    error_chain(&e)
                )
            })?;
            let xdp = accelerate(
                datapath,
                bpf_dir,
                external.config.acceleration,
                name,
                ifindex,
            )?;
            tracing::info!(interface = %name, ifindex, xdp, "serving traffic from outside");
            external.attached.insert(name.to_owned(), ifindex);
        }
        if snat.is_none() {
            snat = bosun_netdp::netlink::interface_addresses(ifindex)
                .ok()
                .and_then(|addresses| addresses.first().copied());
        }
    }
    maps.set_snat_address(snat)
        .map_err(|e| format!("setting the SNAT address: {}", error_chain(&e)))?;
    let aged = maps
        .collect_garbage(nodeport::monotonic_now())
        .map_err(|e| format!("ageing the NAT table: {}", error_chain(&e)))?;
    if aged > 0 {
        tracing::debug!(entries = aged, "idle flows from outside removed");
    }
    external.due = false;
    Ok(())
}

/// Attaches the XDP program to external interface `name` (`ifindex`), or takes off the one an
/// earlier run attached, as `acceleration` says; returns whether it is attached.
fn accelerate(
    datapath: &mut bosun_netdp::nodeport::NodePortDatapath,
    bpf_dir: &std::path::Path,
    acceleration: Acceleration,
    name: &str,
    ifindex: u32,
) -> Result<bool, String> {
    use bosun_netdp::nodeport;
    let detach = || {
        nodeport::detach_xdp(bpf_dir, ifindex).map_err(|e| {
            format!(
                "taking the XDP program off external interface {name}: {}",
                error_chain(&e)
            )
        })
    };
    let tc_alone = match acceleration {
        Acceleration::Disabled => true,
        Acceleration::Native => false,
        Acceleration::BestEffort => match bosun_netdp::netlink::is_veth(ifindex) {
            Ok(false) => false,
            Ok(true) => {
                tracing::info!(interface = %name, "a veth: served by the tc programs alone (--nodeport-acceleration=native would attach XDP to it)");
                true
            }
            Err(e) => {
                tracing::warn!(interface = %name, error = %error_chain(&e), "could not tell whether the interface is a veth: served by the tc programs alone");
                true
            }
        },
    };
    if tc_alone {
        detach()?;
        return Ok(false);
    }
    match datapath.attach_xdp(ifindex) {
        Ok(()) => Ok(true),
        Err(e) if acceleration == Acceleration::BestEffort => {
            tracing::warn!(interface = %name, error = %error_chain(&e), "XDP not attached: served by the tc programs alone");
            detach()?;
            Ok(false)
        }
        Err(e) => Err(format!(
            "attaching the XDP program to external interface {name}: {}",
            error_chain(&e)
        )),
    }
}

/// Follows the readiness of this node's pods into `table`: a running pod that is not Ready
/// leaves the datapath at once. `keys`: the pods changed; `None`: all of them.
fn follow_local_readiness(
    pods: &PodStore,
    keys: Option<Changes>,
    local_pods: &mut HashMap<ObjectKey, Ipv4Addr>,
    table: &mut ServiceTable,
) {
    let keys: Vec<ObjectKey> = match keys {
        Some(changes) => changes.keys.into_iter().collect(),
        None => pods
            .entries()
            .into_iter()
            .map(|(key, _)| key)
            .chain(local_pods.keys().cloned())
            .collect(),
    };
    for key in keys {
        let pod = pods.get(&key);
        let now = pod.as_deref().and_then(local_address);
        if let Some(before) = local_pods.remove(&key) {
            if Some(before) != now {
                table.set_local_ready(before, true);
            }
        }
        table.set_host_ports(
            &key.namespace,
            &key.name,
            pod.as_deref().map(host_ports).unwrap_or_default(),
        );
        if let (Some(pod), Some(address)) = (pod, now) {
            local_pods.insert(key, address);
            table.set_local_ready(address, !is_running(&pod) || is_ready(&pod));
        }
    }
}

/// The pod's `hostPort`s, as the CNI portmap plugin maps them for kubelet: every port of its
/// containers that has one, from its sandbox's start (it has an address) to its end. A pod on
/// the host's network needs none: its ports are the node's.
fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(pod_ip) = local_address(pod) else {
        return Vec::new();
    };
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return Vec::new();
    }
    pod.spec
        .iter()
        .flat_map(|spec| spec.containers.iter())
        .flat_map(|container| container.ports.iter().flatten())
        .filter_map(|port| {
            let host_port = u16::try_from(port.host_port?).ok().filter(|p| *p != 0)?;
            let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                // SCTP is not balanced by bosun.
                _ => return None,
            };
            Some(HostPort {
                host_ip: port.host_ip.as_deref().and_then(|ip| ip.parse().ok()),
                host_port,
                protocol,
                pod_ip,
                container_port: u16::try_from(port.container_port).ok()?,
            })
        })
        .collect()
}

/// The pod's own IPv4 address; none for a pod on the host's network, whose address is the
/// node's and shared.
fn local_address(pod: &Pod) -> Option<Ipv4Addr> {
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return None;
    }
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

fn is_running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn ready(subscription: &mut Option<Subscription>) {
    match subscription {
        Some(subscription) => subscription.ready().await,
        None => std::future::pending().await,
    }
}

async fn changed(view: &mut Option<watch::Receiver<NodeView>>) {
    let closed = match view {
        Some(view) => view.changed().await.is_err(),
        None => std::future::pending().await,
    };
    if closed {
        // Its watch ended with the daemon: nothing more will come.
        *view = None;
    }
}

/// The Services and EndpointSlices changed since the maps were last written, each with when
/// the proxy took its change from the store: kube-proxy's network programming duration runs
/// from there to the write that carries it.
#[derive(Debug, Default)]
struct Unprogrammed {
    since: BTreeMap<(&'static str, ObjectKey), Instant>,
}

impl Unprogrammed {
    /// Notes the objects of `kind` that `changes` names, taken at `now`. An object still
    /// waiting keeps the time of its first change.
    fn taken(&mut self, kind: &'static str, changes: Changes, now: Instant) {
        for key in changes.keys {
            self.since.entry((kind, key)).or_insert(now);
        }
    }

    /// How long each object waited, now that the maps hold them all; forgets them.
    fn programmed(&mut self, now: Instant) -> Vec<Duration> {
        std::mem::take(&mut self.since)
            .into_values()
            .map(|since| now.duration_since(since))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    use std::sync::Arc;

    use super::*;
    use crate::store::Source;

    fn pod(name: &str, ip: &str, phase: &str, ready: bool) -> Arc<Pod> {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        }))
        .expect("a pod");
        pod.status = Some(PodStatus {
            phase: Some(phase.into()),
            pod_ip: Some(ip.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        Arc::new(pod)
    }

    #[test]
    fn a_change_is_timed_from_its_first_taking_to_the_write() {
        let changes = |names: &[&str]| Changes {
            keys: names
                .iter()
                .map(|name| ObjectKey::new("default", *name))
                .collect(),
            synced: false,
        };
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut unprogrammed = Unprogrammed::default();
        unprogrammed.taken("Service", changes(&["web", "db"]), at(0));
        unprogrammed.taken("Service", changes(&["web"]), at(1));
        unprogrammed.taken("EndpointSlice", changes(&["web"]), at(2));
        unprogrammed.taken("EndpointSlice", changes(&[]), at(3));
        let mut waited = unprogrammed.programmed(at(5));
        waited.sort();
        assert_eq!(
            waited,
            [3, 5, 5].map(Duration::from_secs),
            "the EndpointSlice web since 2 s; the Services db and web since 0 s"
        );
        assert!(unprogrammed.programmed(at(6)).is_empty(), "each once");
    }

    #[test]
    fn local_readiness_follows_the_pods_and_forgets_those_gone() {
        let service: Service = serde_yaml::from_str(
            "metadata: {name: web, namespace: default}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n",
        )
        .expect("a Service");
        let slice: EndpointSlice = serde_yaml::from_str(
            "metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{port: 8080}]\nendpoints: [{addresses: [10.244.0.5], nodeName: node-a}, {addresses: [10.244.0.6], nodeName: node-a}]\n",
        )
        .expect("a slice");
        let mut table = ServiceTable::new("node-a");
        table.set_service(
            "default",
            "web",
            Some(Arc::new(ServiceInfo::from_service(&service))),
        );
        table.set_slice(
            "default",
            "web-1",
            Some(Arc::new(SliceInfo::from_slice(&slice))),
        );
        table.update();
        let backends = |table: &ServiceTable| -> Vec<String> {
            table.desired()[0]
                .backends
                .iter()
                .map(|b| b.address.to_string())
                .collect()
        };

        let pods: PodStore = Store::new(&[Source::Api]);
        let writer = pods.writer(Source::Api);
        let mut changes = pods.subscribe();
        let mut local = HashMap::new();
        writer.replace([
            pod("a", "10.244.0.5", "Running", false),
            pod("b", "10.244.0.6", "Running", true),
        ]);
        follow_local_readiness(&pods, None, &mut local, &mut table);
        table.update();
        assert_eq!(backends(&table), ["10.244.0.6"]);
        changes.take();

        // a becomes Ready; b is deleted (its slice still lists it: the slice decides).
        writer.apply(pod("a", "10.244.0.5", "Running", true));
        writer.delete(&ObjectKey::new("default", "b"));
        follow_local_readiness(&pods, Some(changes.take()), &mut local, &mut table);
        table.update();
        assert_eq!(backends(&table), ["10.244.0.5", "10.244.0.6"]);
        assert_eq!(local.len(), 1);
    }

    #[test]
    fn health_checks_listen_where_node_port_addresses_say_as_kube_proxy_does() {
        use crate::proxy::config::Ipv4Cidr;
        let every = vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)];
        let external = |cidrs: &[(Ipv4Addr, u8)]| External {
            interfaces: Vec::new(),
            default_routes: false,
            acceleration: Acceleration::Disabled,
            node_port_cidrs: cidrs
                .iter()
                .map(|(network, prefix_len)| Ipv4Cidr {
                    network: *network,
                    prefix_len: *prefix_len,
                })
                .collect(),
        };
        // No ranges, or one that is everything: every address.
        assert_eq!(external(&[]).health_check_addresses(), every);
        assert_eq!(
            external(&[(Ipv4Addr::UNSPECIFIED, 0), (Ipv4Addr::new(10, 0, 0, 0), 8)])
                .health_check_addresses(),
            every
        );
        // A range holding none of the node's addresses (TEST-NET-2): every address, warned.
        assert_eq!(
            external(&[(Ipv4Addr::new(198, 51, 100, 0), 24)]).health_check_addresses(),
            every
        );
        // A range holding one of them: that address alone.
        let node = bosun_netdp::netlink::node_addresses()
            .expect("listing this machine's addresses")
            .into_iter()
            .find(|a| !a.is_loopback())
            .expect("this machine has an address other than loopback");
        assert_eq!(
            external(&[(node, 32)]).health_check_addresses(),
            vec![IpAddr::V4(node)]
        );
    }
}
