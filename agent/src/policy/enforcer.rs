//! The one writer of the policy maps. Three things change what they should hold, and each
//! goes through [`PolicyEnforcer::sync`]: a pod worker admitting its sandbox's interface
//! (before the pod's first container starts) or releasing it, the NetworkPolicies and
//! Namespaces of the object store, and other pods' addresses and labels (peers). Compiling
//! and writing the maps run on blocking threads, off the daemon's executor.
//!
//! The endpoints (pod UID → sandbox, interface, address, labels) are kept in a small file
//! under the root directory, so that a restarted bosun compiles exactly what the last one
//! did and rewrites nothing: the pinned programs and maps enforce policy all the while, and
//! nothing is written before the policies and namespaces have all been read.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bosun_netdp::intern::{intern, intern_labels};
use bosun_netdp::netlink;
use bosun_netdp::policy::{
    self as datapath, NamedPort, PinnedPolicyMaps, PolicyDatapath, PolicyPod, PolicyProtocol,
    PolicyReconciler, PolicyTable, Problem,
};
use bosun_netdp::tc::TcMode;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::Resource as _;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::events::{EventType, Recorder};
use crate::store::{ObjectKey, Store, Subscription};
use crate::util::{error_chain, sleep_or_never};

/// Event reason: the policy datapath could not be installed, written or attached. On a pod,
/// its containers are not started until it can.
pub const FAILED_NETWORK_POLICY: &str = "FailedNetworkPolicy";
/// Event reason: part of a NetworkPolicy cannot be enforced as written (the rest is).
pub const INVALID_NETWORK_POLICY: &str = "FailedToProgramNetworkPolicy";

/// The file under the root directory that remembers the endpoints across restarts.
const STATE_FILE: &str = "policy-endpoints.json";
/// Longest wait between two attempts at a failing write.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A pod with an interface on this node, as its worker admitted it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct EndpointRecord {
    namespace: String,
    name: String,
    sandbox: String,
    ifindex: u32,
    ip: Ipv4Addr,
    labels: BTreeMap<String, String>,
    named_ports: Vec<NamedPort>,
}

impl EndpointRecord {
    fn policy_pod(&self) -> PolicyPod {
        PolicyPod {
            namespace: intern(&self.namespace),
            name: self.name.as_str().into(),
            labels: intern_labels(self.labels.clone()),
            ip: self.ip,
            named_ports: self.named_ports.as_slice().into(),
            ifindex: Some(self.ifindex),
        }
    }
}

struct Installed {
    datapath: PolicyDatapath,
    reconciler: PolicyReconciler<PinnedPolicyMaps>,
}

struct Inner {
    installed: Option<Installed>,
    /// The incremental compiler with what it was given; taken while it works on a blocking
    /// thread.
    fed: Option<Fed>,
    /// The stores' changes not yet given to the table: policies, namespaces, peers.
    changes: [Subscription; 3],
    /// Endpoints added, changed or removed since the table last saw them: their UIDs, and
    /// their pods' names and addresses (peers of the same name or address were left out of
    /// the table for them, or are to be put back).
    endpoint_changes: EndpointChanges,
    /// By pod UID.
    endpoints: BTreeMap<String, EndpointRecord>,
    /// Interfaces this process attached the programs to (after a restart the pinned links
    /// of the previous one run until each pod is admitted again and gets the new programs).
    attached: BTreeSet<u32>,
    /// Problems already reported as events.
    reported: BTreeSet<String>,
    /// The node's addresses the maps were last given, when they hold all the table holds;
    /// `None` when they may not (nothing written yet, or a write failed): the next write is
    /// then whole.
    written: Option<Vec<Ipv4Addr>>,
}

#[derive(Default)]
struct EndpointChanges {
    uids: BTreeSet<String>,
    names: BTreeSet<ObjectKey>,
    addresses: BTreeSet<Ipv4Addr>,
}

/// The table and what the enforcer gave it of the peers' store.
#[derive(Default)]
struct Fed {
    /// Holds the peers given, which are the store's copies: the peers at an address are asked
    /// of it (a cluster's 100,000 pods are indexed once, not again here).
    table: PolicyTable,
    /// The peers left out of the table (an endpoint has their name or address), with their
    /// addresses: a few at most.
    left_out: HashMap<ObjectKey, Ipv4Addr>,
}

/// The table's key of a peer from the store, and of an endpoint (by UID): the two may name
/// one pod, as they do on bosun's own node.
fn peer_key(key: &ObjectKey) -> String {
    format!("peer:{key}")
}

fn endpoint_key(uid: &str) -> String {
    format!("endpoint:{uid}")
}

/// What the table is given: everything (the first time), or what changed.
enum Feed {
    Whole {
        namespaces: Vec<(ObjectKey, Arc<Namespace>)>,
        policies: Vec<(ObjectKey, Arc<NetworkPolicy>)>,
        peers: Vec<(ObjectKey, Arc<PolicyPod>)>,
    },
    Changes {
        namespaces: Vec<(ObjectKey, Option<Arc<Namespace>>)>,
        policies: Vec<(ObjectKey, Option<Arc<NetworkPolicy>>)>,
        peers: Vec<ObjectKey>,
        addresses: BTreeSet<Ipv4Addr>,
    },
}

impl Fed {
    /// Gives the table `feed`, the endpoints `endpoints` (by UID, `None`: gone) and the
    /// peers as `store` holds them, less those that an endpoint stands for (same name or
    /// address).
    fn feed(
        &mut self,
        feed: Feed,
        endpoints: Vec<(String, Option<Arc<PolicyPod>>)>,
        local: &Local,
        store: &Store<PolicyPod>,
    ) {
        match feed {
            Feed::Whole {
                namespaces,
                policies,
                peers,
            } => {
                for (key, namespace) in namespaces {
                    self.table.set_namespace(&key.name, Some(&namespace));
                }
                for (key, policy) in policies {
                    self.table
                        .set_policy(&key.namespace, &key.name, Some(&policy));
                }
                for (key, pod) in peers {
                    self.set_peer(&key, Some(pod), local);
                }
            }
            Feed::Changes {
                namespaces,
                policies,
                peers,
                addresses,
            } => {
                for (key, namespace) in namespaces {
                    self.table.set_namespace(&key.name, namespace.as_deref());
                }
                for (key, policy) in policies {
                    self.table
                        .set_policy(&key.namespace, &key.name, policy.as_deref());
                }
                let mut keys: BTreeSet<ObjectKey> = peers.into_iter().collect();
                for address in addresses {
                    keys.extend(self.peers_at(address));
                }
                for key in keys {
                    let pod = store.get(&key);
                    self.set_peer(&key, pod, local);
                }
            }
        }
        for (uid, pod) in endpoints {
            self.table.set_pod(&endpoint_key(&uid), pod);
        }
    }

    /// The peers given at `address`, in the table or left out of it. The table's pods with
    /// an interface here are the endpoints; the peers have none.
    fn peers_at(&self, address: Ipv4Addr) -> Vec<ObjectKey> {
        let held = self
            .table
            .pods_at(address)
            .filter(|pod| pod.ifindex.is_none())
            .map(|pod| ObjectKey {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
            });
        let left_out = self
            .left_out
            .iter()
            .filter(|(_, at)| **at == address)
            .map(|(key, _)| key.clone());
        held.chain(left_out).collect()
    }

    fn set_peer(&mut self, key: &ObjectKey, pod: Option<Arc<PolicyPod>>, local: &Local) {
        self.left_out.remove(key);
        // The store's copy: the table keeps no other.
        let kept = match pod {
            Some(pod) if local.names.contains(key) || local.addresses.contains(&pod.ip) => {
                self.left_out.insert(key.clone(), pod.ip);
                None
            }
            pod => pod,
        };
        self.table.set_pod(&peer_key(key), kept);
    }
}

/// The endpoints' names and addresses: peers with either are left out of the table.
struct Local {
    names: BTreeSet<ObjectKey>,
    addresses: BTreeSet<Ipv4Addr>,
}

impl Inner {
    /// Notes that endpoint `uid` changed from `old` to `new`, for the table.
    fn endpoint_changed(
        &mut self,
        uid: &str,
        old: Option<&EndpointRecord>,
        new: Option<&EndpointRecord>,
    ) {
        let changes = &mut self.endpoint_changes;
        changes.uids.insert(uid.to_owned());
        for record in old.into_iter().chain(new) {
            changes
                .names
                .insert(ObjectKey::new(&record.namespace, record.name.as_str()));
            changes.addresses.insert(record.ip);
        }
    }
}

/// See the module documentation. Shared by the pod workers and the controller task.
pub struct PolicyEnforcer {
    bpf_dir: PathBuf,
    tc_mode: TcMode,
    state_file: PathBuf,
    /// Every pod with an address that policies may name: this node's standalone, the
    /// cluster's in a cluster.
    peers: Store<PolicyPod>,
    events: Recorder,
    policies: Store<NetworkPolicy>,
    namespaces: Store<Namespace>,
    inner: Mutex<Inner>,
}

impl PolicyEnforcer {
    /// Reads back the endpoints the last bosun left. Installs nothing yet.
    pub fn new(
        bpf_dir: PathBuf,
        tc_mode: TcMode,
        root_dir: &Path,
        peers: Store<PolicyPod>,
        events: Recorder,
        policies: Store<NetworkPolicy>,
        namespaces: Store<Namespace>,
    ) -> Arc<Self> {
        let state_file = root_dir.join(STATE_FILE);
        // Before anything is read, so that no change between a read and the first
        // subscription is lost.
        let changes = [
            policies.subscribe(),
            namespaces.subscribe(),
            peers.subscribe(),
        ];
        let endpoints = match std::fs::read(&state_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(file = %state_file.display(), error = %e, "unreadable; starting without endpoints");
                BTreeMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                tracing::warn!(file = %state_file.display(), error = %e, "reading; starting without endpoints");
                BTreeMap::new()
            }
        };
        Arc::new(Self {
            bpf_dir,
            tc_mode,
            state_file,
            peers,
            events,
            policies,
            namespaces,
            inner: Mutex::new(Inner {
                installed: None,
                fed: None,
                changes,
                endpoint_changes: EndpointChanges::default(),
                endpoints,
                attached: BTreeSet::new(),
                reported: BTreeSet::new(),
                written: None,
            }),
        })
    }

    /// Puts the policy of pod `uid` (`endpoint`, see [`endpoint`]) in place on the interface
    /// of sandbox `sandbox` (`netns` finds its network namespace, asked only when needed):
    /// map entries first, then the programs. Returns once both are there; cheap when they
    /// already are. The error says what failed, for an event.
    pub async fn admit(
        &self,
        endpoint: PolicyPod,
        uid: &str,
        sandbox: &str,
        netns: impl std::future::Future<Output = Result<PathBuf, String>>,
    ) -> Result<(), String> {
        if self.admitted(&endpoint, uid, sandbox).await {
            return Ok(());
        }
        let path = netns.await?;
        let interface = tokio::task::spawn_blocking(move || netlink::host_interface(&path))
            .await
            .map_err(|e| format!("finding the pod's interface: {e}"))?
            .map_err(|e| format!("finding the pod's interface: {}", error_chain(&e)))?;
        self.admit_interface(endpoint, uid, sandbox, interface)
            .await
    }

    /// Whether pod `uid` is in place as `endpoint` on an interface the programs are
    /// attached to, with sandbox `sandbox`.
    async fn admitted(&self, endpoint: &PolicyPod, uid: &str, sandbox: &str) -> bool {
        let inner = self.inner.lock().await;
        inner.endpoints.get(uid).is_some_and(|known| {
            known.sandbox == sandbox
                && known.ip == endpoint.ip
                && known.labels == *endpoint.labels
                && known.named_ports[..] == endpoint.named_ports[..]
                && inner.attached.contains(&known.ifindex)
        })
    }

    /// Puts the policy of pod `uid` (`endpoint`) in place on `interface`, its host-side
    /// interface: map entries first, then the programs.
    pub async fn admit_interface(
        &self,
        endpoint: PolicyPod,
        uid: &str,
        sandbox: &str,
        interface: netlink::HostInterface,
    ) -> Result<(), String> {
        let PolicyPod {
            namespace,
            name,
            labels,
            ip,
            named_ports,
            ifindex: _,
        } = endpoint;
        let pod_name = format!("{namespace}/{name}");
        let record = EndpointRecord {
            namespace: namespace.to_string(),
            name: name.to_string(),
            sandbox: sandbox.to_owned(),
            ifindex: interface.ifindex,
            ip,
            labels: (*labels).clone(),
            named_ports: named_ports.to_vec(),
        };
        let mut inner = self.inner.lock().await;
        let previous = inner.endpoints.insert(uid.to_owned(), record.clone());
        inner.endpoint_changed(uid, previous.as_ref(), Some(&record));
        let mut result = self.sync(&mut inner).await;
        if result.is_ok() {
            let ifindex = interface.ifindex;
            result = match on_datapath(&mut inner, move |datapath| datapath.attach(ifindex)).await {
                Some(Ok(())) => Ok(()),
                Some(Err(e)) => Err(format!(
                    "attaching to {}: {}",
                    interface.name,
                    error_chain(&e)
                )),
                None => Err("no datapath".to_owned()),
            };
        }
        match result {
            Ok(()) => {
                inner.attached.insert(interface.ifindex);
                if let Some(old) = previous.filter(|p| p.ifindex != interface.ifindex) {
                    Self::detach(&mut inner, old.ifindex).await;
                }
                self.save(&inner);
                tracing::info!(pod = %pod_name, interface = %interface.name, ifindex = interface.ifindex, "network policy in place");
                Ok(())
            }
            Err(message) => {
                // Not enforced: forget it, so the next attempt does everything again.
                match &previous {
                    Some(previous) => inner.endpoints.insert(uid.to_owned(), previous.clone()),
                    None => inner.endpoints.remove(uid),
                };
                inner.endpoint_changed(uid, Some(&record), previous.as_ref());
                Err(message)
            }
        }
    }

    /// Forgets the pod's endpoint once its sandbox is gone: its entries go and its programs
    /// are detached.
    pub async fn release(&self, uid: &str) {
        let mut inner = self.inner.lock().await;
        let Some(record) = inner.endpoints.remove(uid) else {
            return;
        };
        inner.endpoint_changed(uid, Some(&record), None);
        if let Err(message) = self.sync(&mut inner).await {
            tracing::warn!(%message, "network policy: removing an endpoint");
        }
        Self::detach(&mut inner, record.ifindex).await;
        self.save(&inner);
    }

    /// The controller: follows the policies, namespaces and other pods, retrying a failed
    /// write with backoff. The programs and maps stay when it ends.
    pub async fn run(self: Arc<Self>) {
        let mut changes = [
            self.policies.subscribe(),
            self.namespaces.subscribe(),
            self.peers.subscribe(),
        ];
        let mut backoff = Duration::from_millis(500);
        loop {
            // Until everything is read there is nothing to write, and nothing wrong either:
            // the stores' first complete lists wake the loop.
            let result = if self.all_read() {
                let mut inner = self.inner.lock().await;
                self.sync(&mut inner).await
            } else {
                Ok(())
            };
            let retry = match result {
                Ok(()) => {
                    backoff = Duration::from_millis(500);
                    None
                }
                Err(message) => {
                    tracing::warn!(%message, "network policy");
                    self.events.record(
                        self.events.node_reference(),
                        EventType::Warning,
                        FAILED_NETWORK_POLICY,
                        message,
                    );
                    let retry = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    Some(retry)
                }
            };
            let [policies, namespaces, peers] = &mut changes;
            tokio::select! {
                () = policies.ready() => {}
                () = namespaces.ready() => {}
                () = peers.ready() => {}
                () = sleep_or_never(retry) => {}
            }
            // The keys are read from the enforcer's own subscriptions when it syncs: these
            // only wake the loop.
            policies.take();
            namespaces.take();
            peers.take();
        }
    }

    /// Compiles what the maps should hold now and writes the difference, both on blocking
    /// threads. Writes nothing before the policies and namespaces have all been read: until
    /// then the maps keep enforcing what the last bosun wrote.
    async fn sync(&self, inner: &mut Inner) -> Result<(), String> {
        if !self.all_read() {
            return Err("the NetworkPolicies have not all been read yet".to_owned());
        }
        if inner.installed.is_none() {
            let datapath = datapath::install(&self.bpf_dir, self.tc_mode)
                .map_err(|e| format!("installing the policy datapath: {}", error_chain(&e)))?;
            let maps = datapath
                .maps()
                .map_err(|e| format!("opening the policy maps: {}", error_chain(&e)))?;
            let reconciler = PolicyReconciler::new(maps)
                .map_err(|e| format!("reading the policy maps: {}", error_chain(&e)))?;
            inner.installed = Some(Installed {
                datapath,
                reconciler,
            });
        }
        self.prune(inner);

        // What the table is to be given: everything the first time, then only what changed.
        let [policies, namespaces, peers] = &mut inner.changes;
        let (policy_keys, namespace_keys, peer_keys) = (
            policies.take().keys,
            namespaces.take().keys,
            peers.take().keys,
        );
        let changed = std::mem::take(&mut inner.endpoint_changes);
        let (fed, feed, endpoint_uids) = match inner.fed.take() {
            None => {
                let feed = Feed::Whole {
                    namespaces: self.namespaces.entries(),
                    policies: self.policies.entries(),
                    peers: self.peers.entries(),
                };
                let uids: BTreeSet<String> = inner.endpoints.keys().cloned().collect();
                // A new table: the maps are written whole from it.
                inner.written = None;
                (Fed::default(), feed, uids)
            }
            Some(fed) => {
                let feed = Feed::Changes {
                    namespaces: namespace_keys
                        .into_iter()
                        .map(|key| {
                            let object = self.namespaces.get(&key);
                            (key, object)
                        })
                        .collect(),
                    policies: policy_keys
                        .into_iter()
                        .map(|key| {
                            let object = self.policies.get(&key);
                            (key, object)
                        })
                        .collect(),
                    peers: peer_keys.into_iter().chain(changed.names).collect(),
                    addresses: changed.addresses,
                };
                (fed, feed, changed.uids)
            }
        };
        let endpoints: Vec<(String, Option<Arc<PolicyPod>>)> = endpoint_uids
            .into_iter()
            .map(|uid| {
                let pod = inner.endpoints.get(&uid).map(|e| Arc::new(e.policy_pod()));
                (uid, pod)
            })
            .collect();
        let local = Local {
            names: inner
                .endpoints
                .values()
                .map(|e| ObjectKey::new(&e.namespace, e.name.as_str()))
                .collect(),
            addresses: inner.endpoints.values().map(|e| e.ip).collect(),
        };
        let whole = inner.written.is_none();
        let store = self.peers.clone();
        let (fed, delta, compiled) = tokio::task::spawn_blocking(move || {
            let mut fed = fed;
            fed.feed(feed, endpoints, &local, &store);
            let delta = fed.table.update();
            // A whole write after a failed one (or the first): what the table holds.
            let compiled = whole.then(|| fed.table.compiled());
            (fed, delta, compiled)
        })
        .await
        .map_err(|e| format!("compiling the network policies: {e}"))?;
        inner.fed = Some(fed);
        match &compiled {
            Some(compiled) => self.report(&mut inner.reported, &compiled.problems),
            None => self.report(&mut inner.reported, &delta.problems),
        }
        let node = netlink::node_addresses()
            .map_err(|e| format!("listing the node's addresses: {}", error_chain(&e)))?;
        if compiled.is_none() && delta.is_empty() && inner.written.as_ref() == Some(&node) {
            return Ok(());
        }
        let Some(mut installed) = inner.installed.take() else {
            return Ok(());
        };
        // Whatever happens, the maps are no longer known to hold what the table does.
        inner.written = None;
        let joined = tokio::task::spawn_blocking(move || {
            let result = match &compiled {
                Some(compiled) => installed.reconciler.apply(compiled, &node),
                None => installed.reconciler.apply_delta(&delta, &node),
            };
            (installed, node, result)
        })
        .await
        .map_err(|e| format!("writing the policy maps: {e}"))?;
        let (installed, node, result) = joined;
        inner.installed = Some(installed);
        result.map_err(|e| format!("writing the policy maps: {}", error_chain(&e)))?;
        inner.written = Some(node);
        Ok(())
    }

    /// Whether the policies, namespaces and peers have all been listed: until then nothing
    /// can be admitted.
    pub fn all_read(&self) -> bool {
        self.policies.is_synced() && self.namespaces.is_synced() && self.peers.is_synced()
    }

    /// Drops endpoints whose interface is gone (a sandbox removed while bosun was down).
    fn prune(&self, inner: &mut Inner) {
        let gone: Vec<String> = inner
            .endpoints
            .iter()
            .filter(|(_, e)| datapath::interface_name(e.ifindex).is_none())
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            if let Some(record) = inner.endpoints.remove(&uid) {
                inner.endpoint_changed(&uid, Some(&record), None);
                tracing::info!(pod = %format!("{}/{}", record.namespace, record.name), ifindex = record.ifindex, "interface gone; forgetting its endpoint");
                // The interface is gone, and its programs with it: only the pins go, at once.
                inner.attached.remove(&record.ifindex);
                if let Some(installed) = inner.installed.as_mut() {
                    if let Err(e) = installed.datapath.detach(record.ifindex) {
                        tracing::warn!(ifindex = record.ifindex, error = %error_chain(&e), "detaching the policy programs");
                    }
                }
            }
        }
    }

    async fn detach(inner: &mut Inner, ifindex: u32) {
        inner.attached.remove(&ifindex);
        if let Some(Err(e)) = on_datapath(inner, move |datapath| datapath.detach(ifindex)).await {
            tracing::warn!(ifindex, error = %error_chain(&e), "detaching the policy programs");
        }
    }

    fn save(&self, inner: &Inner) {
        let write = || -> std::io::Result<()> {
            let temporary = self.state_file.with_extension("json.tmp");
            let bytes =
                serde_json::to_vec_pretty(&inner.endpoints).map_err(std::io::Error::other)?;
            std::fs::write(&temporary, bytes)?;
            std::fs::rename(&temporary, &self.state_file)
        };
        if let Err(e) = write() {
            tracing::warn!(file = %self.state_file.display(), error = %e, "saving the policy endpoints");
        }
    }

    fn report(&self, reported: &mut BTreeSet<String>, problems: &[Problem]) {
        for problem in problems {
            let text = problem.to_string();
            if !reported.insert(text.clone()) {
                continue;
            }
            tracing::warn!(problem = %text, "network policy not enforced as written");
            let involved = ObjectReference {
                api_version: Some(NetworkPolicy::API_VERSION.into()),
                kind: Some(problem.kind.into()),
                namespace: Some(problem.namespace.clone()),
                name: Some(problem.name.clone()),
                ..Default::default()
            };
            let message = format!(
                "{}: {:?}: {}",
                problem.field, problem.value, problem.message
            );
            self.events.record(
                involved,
                EventType::Warning,
                INVALID_NETWORK_POLICY,
                message,
            );
        }
    }
}

/// A pod as a peer: one with an IPv4 address of its own (not the node's).
pub fn peer(pod: &Pod) -> Option<PolicyPod> {
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return None;
    }
    let ip: Ipv4Addr = pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
    Some(endpoint(pod, ip))
}

/// What the policy compiler needs of `pod` at address `ip`: its name, labels and named ports
/// (its interface still unknown).
pub fn endpoint(pod: &Pod, ip: Ipv4Addr) -> PolicyPod {
    PolicyPod {
        namespace: intern(pod.metadata.namespace.as_deref().unwrap_or_default()),
        name: pod.metadata.name.as_deref().unwrap_or_default().into(),
        labels: intern_labels(pod.metadata.labels.clone().unwrap_or_default()),
        ip,
        named_ports: shared_if_empty(named_ports(pod)),
        ifindex: None,
    }
}

/// Most pods name no port: they share one empty list rather than each holding its own (an
/// `Arc` of nothing is still an allocation, 1.6 MB over a cluster's 100,000 pods).
fn shared_if_empty(ports: Vec<NamedPort>) -> Arc<[NamedPort]> {
    static NONE: std::sync::OnceLock<Arc<[NamedPort]>> = std::sync::OnceLock::new();
    if ports.is_empty() {
        NONE.get_or_init(|| Arc::from(Vec::new())).clone()
    } else {
        ports.into()
    }
}

/// The pod's container ports that have a name, which NetworkPolicy ports may name.
fn named_ports(pod: &Pod) -> Vec<NamedPort> {
    let mut ports: Vec<NamedPort> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some(NamedPort {
                name: p.name.clone()?,
                protocol: PolicyProtocol::parse(p.protocol.as_deref().unwrap_or("TCP"))?,
                port: u16::try_from(p.container_port).ok()?,
            })
        })
        .collect();
    ports.sort();
    ports.dedup();
    ports
}

/// Runs `work` with the installed datapath on a blocking thread, and `None` if there is none
/// (or `work` panicked: then the next sync installs it again). Attaching and detaching wait
/// for the kernel, under RTNL (some 10 ms per tcx link here, an RCU grace period), which
/// the daemon's executor, and every pod on it, must not.
async fn on_datapath<T: Send + 'static>(
    inner: &mut Inner,
    work: impl FnOnce(&mut PolicyDatapath) -> T + Send + 'static,
) -> Option<T> {
    let mut installed = inner.installed.take()?;
    let (installed, result) = tokio::task::spawn_blocking(move || {
        let result = work(&mut installed.datapath);
        (installed, result)
    })
    .await
    .ok()?;
    inner.installed = Some(installed);
    Some(result)
}

#[cfg(test)]
mod fed_tests {
    use super::*;
    use crate::store::Source;

    fn pod(name: &str, ip: Ipv4Addr, ifindex: Option<u32>) -> Arc<PolicyPod> {
        Arc::new(PolicyPod {
            namespace: intern("ns"),
            name: name.into(),
            labels: intern_labels(BTreeMap::new()),
            ip,
            named_ports: shared_if_empty(Vec::new()),
            ifindex,
        })
    }

    /// What the table holds at `address`: (name, whether it is an endpoint).
    fn held_at(fed: &Fed, address: Ipv4Addr) -> Vec<(String, bool)> {
        fed.table
            .pods_at(address)
            .map(|p| (p.name.to_string(), p.ifindex.is_some()))
            .collect()
    }

    #[test]
    fn a_peer_at_an_endpoints_address_is_left_out_until_the_endpoint_goes() {
        let address = Ipv4Addr::new(10, 0, 0, 5);
        let store = Store::<PolicyPod>::new(&[Source::Api]);
        let peer = pod("a", address, None);
        store.writer(Source::Api).apply(peer.clone());
        let peer_key = ObjectKey::new("ns", "a");
        let mut fed = Fed::default();

        // The endpoint "b" has the peer's address: the peer is left out, and still found there.
        let local = Local {
            names: BTreeSet::from([ObjectKey::new("ns", "b")]),
            addresses: BTreeSet::from([address]),
        };
        fed.feed(
            Feed::Whole {
                namespaces: Vec::new(),
                policies: Vec::new(),
                peers: vec![(peer_key.clone(), peer)],
            },
            vec![("uid-b".to_owned(), Some(pod("b", address, Some(7))))],
            &local,
            &store,
        );
        assert_eq!(held_at(&fed, address), [("b".to_owned(), true)]);
        assert_eq!(fed.peers_at(address), std::slice::from_ref(&peer_key));

        // The endpoint goes: the peers at its address are asked again, and "a" comes back.
        let local = Local {
            names: BTreeSet::new(),
            addresses: BTreeSet::new(),
        };
        fed.feed(
            Feed::Changes {
                namespaces: Vec::new(),
                policies: Vec::new(),
                peers: Vec::new(),
                addresses: BTreeSet::from([address]),
            },
            vec![("uid-b".to_owned(), None)],
            &local,
            &store,
        );
        assert_eq!(held_at(&fed, address), [("a".to_owned(), false)]);
        assert_eq!(fed.peers_at(address), [peer_key]);
        assert!(fed.left_out.is_empty());
    }
}
