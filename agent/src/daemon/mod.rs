//! `bosun run`: the node daemon, split as kubelet splits it.
//!
//! - [`config`] merges the pods of every source (the manifest directory now, the API server
//!   in a cluster) into one desired set keyed by UID;
//! - this module's sync loop admits new pods and hands each to its worker;
//! - [`pod_workers`] runs one worker per pod UID;
//! - [`status_manager`] is the one writer of pod status (the pod store);
//! - [`pleg`] tells which pods' containers changed in the runtime.
//!
//! Objects other than pods live in the typed object store ([`crate::store`]), fed by the
//! sources and read by the workers (volumes), the service proxy, the EndpointSlice
//! controller, the policy enforcer and the local API, none of which knows the others.

pub mod admission;
pub mod config;
pub mod eviction;
pub mod pleg;
pub mod pod_workers;
pub mod status_manager;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bosun_cri::CriClient;
use k8s_openapi::api::core::v1::{Pod, PodStatus};

use crate::cluster::datapath::NodeView;
use crate::cluster::objects::ReferencedObjects;
use crate::cluster::tokens::TokenManager;
use crate::events::{reason, EventType, Recorder};
use crate::pod::cgroup::CgroupDriver;
use crate::pod::log_rotation;
use crate::pod::references::{references, RefKind};
use crate::pod::spec::NodeContext;
use crate::pod::volume::{self, HostMounter};
use crate::pod::worker::pod_name;
use crate::policy::PolicyEnforcer;
use crate::proxy::healthz::ProxyHealth;
use crate::proxy::service_health::ServiceHealthServer;
use crate::service::endpoints;
use crate::service::proxy::Proxy;
use crate::source;
use crate::source::PodUpdate;
use crate::store::{ObjectKey, Objects, Source, Store, Subscription};
use bosun_netdp::service::{ServiceInfo, SliceInfo};
use config::PodConfig;
use pleg::PodLifecycleEvent;
use pod_workers::{PodWorkers, Shared};
use status_manager::StatusManager;

pub use pod_workers::{ERROR_BACKOFF, SYNC_FREQUENCY};

/// CPU, memory and ephemeral storage of the node: its capacity, or what of it is
/// allocatable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeCapacity {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub ephemeral_bytes: i64,
}

/// How often the manifest directory is rescanned besides inotify (kubelet's default).
const RESCAN: Duration = Duration::from_secs(20);
/// The port of the kubelet API, as the Node advertises it.
const KUBELET_PORT: i32 = 10250;
/// kubelet's default `runtimeRequestTimeout`. Creating a container on a loaded node can
/// take longer than ten seconds; a call cut short is finished by the runtime anyway, and its
/// retry then fails on a name the runtime holds.
pub const RUNTIME_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// The manifest source's next snapshot; never resolves without a manifest directory.
async fn next_snapshot(
    snapshots: &mut Option<(
        tokio::sync::watch::Receiver<Arc<source::Snapshot>>,
        tokio::task::JoinHandle<()>,
    )>,
) -> Option<Result<Arc<source::Snapshot>, ()>> {
    let Some((receiver, _)) = snapshots else {
        return std::future::pending().await;
    };
    match receiver.changed().await {
        Ok(()) => Some(Ok(receiver.borrow_and_update().clone())),
        Err(_) => Some(Err(())),
    }
}

/// The daemon's configuration (from flags and the config file).
#[derive(Clone, Debug)]
pub struct Config {
    /// `staticPodPath`; `None` runs no static pods (only in a cluster).
    pub manifest_dir: Option<PathBuf>,
    /// `--kubeconfig`: join the cluster of that API server; `None` is standalone.
    pub kubeconfig: Option<PathBuf>,
    /// `--bootstrap-kubeconfig`: get the `--kubeconfig` credentials by TLS bootstrapping.
    pub bootstrap_kubeconfig: Option<PathBuf>,
    /// `--cert-dir`: where the bootstrapped client certificate is kept.
    pub cert_dir: PathBuf,
    /// `rotateCertificates`: renew the client certificate before it expires.
    pub rotate_certificates: bool,
    /// `--node-labels`, registered beside kubelet's own.
    pub node_labels: BTreeMap<String, String>,
    /// `--register-with-taints` / `registerWithTaints`.
    pub node_taints: Vec<k8s_openapi::api::core::v1::Taint>,
    /// The node's capacity; `node.node` holds what of it is allocatable.
    pub capacity: NodeCapacity,
    pub runtime_endpoint: String,
    /// `runtimeRequestTimeout`: the bound on each runtime call.
    pub runtime_request_timeout: Duration,
    /// `syncFrequency`: how often a pod is synced when nothing wakes its worker.
    pub sync_frequency: Duration,
    pub root_dir: PathBuf,
    pub node: NodeContext,
    /// `cgroupRoot` as configured (`/` by default); `node.cgroup_root` is the `kubepods`
    /// cgroup below it.
    pub cgroup_root: String,
    /// `maxPods`: pods beyond this many are rejected (phase Failed, reason OutOfpods), as
    /// are pods that do not fit the node otherwise (see [`admission`]).
    pub max_pods: usize,
    /// The bpffs directory of the service and policy datapaths; `None` runs neither.
    pub bpf_dir: Option<PathBuf>,
    /// Balance Services (with a `bpf_dir`).
    pub service_proxy: bool,
    /// Node ports and traffic from outside the node (with the service proxy).
    pub external: crate::service::proxy::External,
    /// Enforce NetworkPolicy on pods' interfaces (with a `bpf_dir`).
    pub network_policy: bool,
    /// How the NetworkPolicy programs are attached (`BOSUN_TC_ATTACH`, else by kernel).
    pub tc_mode: bosun_netdp::tc::TcMode,
    /// The kubelet API; `None` serves none.
    pub server: Option<crate::server::ServerConfig>,
    /// The plain-HTTP `/healthz` (`healthzBindAddress`, `healthzPort`); `None` serves none.
    pub healthz: Option<std::net::SocketAddr>,
    /// Container log rotation; `None` rotates nothing.
    pub log_rotation: Option<crate::pod::log_rotation::RotationConfig>,
    /// Node-pressure eviction: thresholds and periods.
    pub eviction: eviction::EvictionConfig,
}

impl Config {
    /// The local API socket.
    pub fn api_socket(&self) -> PathBuf {
        api_socket(&self.root_dir)
    }
}

/// The configuration in effect, in KubeletConfiguration's names, for `/configz`.
fn configz(config: &Config) -> serde_json::Value {
    let server = config.server.as_ref();
    serde_json::json!({
        "kind": "KubeletConfiguration",
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "staticPodPath": config.manifest_dir,
        "address": server.map(|s| s.listen.ip().to_string()),
        "port": server.map(|s| s.listen.port()),
        "healthzBindAddress": config.healthz.map(|h| h.ip().to_string()),
        "healthzPort": config.healthz.map_or(0, |h| h.port()),
        "tlsCertFile": server.and_then(|s| s.tls.cert_and_key.as_ref().map(|c| c.0.clone())),
        "tlsPrivateKeyFile": server.and_then(|s| s.tls.cert_and_key.as_ref().map(|c| c.1.clone())),
        "serverTLSBootstrap": server.is_some_and(|s| s.tls.bootstrap),
        "authentication": server.map(|s| serde_json::json!({
            "x509": {"clientCAFile": s.tls.client_ca_file},
            "webhook": {
                "enabled": s.authentication.webhook,
                "cacheTTL": format!("{}s", s.authentication.webhook_cache_ttl.as_secs()),
            },
            "anonymous": {"enabled": s.authentication.anonymous},
        })),
        "authorization": server.map(|s| serde_json::json!({
            "mode": match s.authorization.mode {
                crate::server::auth::AuthorizationMode::Webhook => "Webhook",
                crate::server::auth::AuthorizationMode::AlwaysAllow => "AlwaysAllow",
            },
            "webhook": {
                "cacheAuthorizedTTL": format!("{}s", s.authorization.authorized_ttl.as_secs()),
                "cacheUnauthorizedTTL": format!("{}s", s.authorization.unauthorized_ttl.as_secs()),
            },
        })),
        "clusterDomain": config.node.cluster_domain,
        "clusterDNS": config.node.cluster_dns,
        "cgroupRoot": config.cgroup_root,
        "cgroupDriver": config.node.cgroup_driver.as_str(),
        "podLogsDir": config.node.pod_logs_dir,
        "podPidsLimit": config.node.pod_pids_limit,
        "maxPods": config.max_pods,
        "evictionHard": eviction_map(&config.eviction, true),
        "evictionSoft": eviction_map(&config.eviction, false),
        "evictionSoftGracePeriod": config.eviction.thresholds.iter()
            .filter_map(|t| Some((t.signal.as_str(), format!("{}s", t.grace_period?.as_secs()))))
            .collect::<BTreeMap<_, _>>(),
        "evictionMaxPodGracePeriod": config.eviction.max_pod_grace_period,
        "evictionPressureTransitionPeriod": format!("{}s", config.eviction.pressure_transition_period.as_secs()),
        "rotateCertificates": config.rotate_certificates,
        "registerNode": config.kubeconfig.is_some(),
    })
}

/// The hard (or soft) thresholds as the config file writes them.
fn eviction_map(config: &eviction::EvictionConfig, hard: bool) -> BTreeMap<&'static str, String> {
    config
        .thresholds
        .iter()
        .filter(|t| t.is_hard() == hard)
        .map(|t| {
            let value = match &t.value {
                eviction::Value::Quantity { text, .. } => text.clone(),
                eviction::Value::Percentage(fraction) => format!("{}%", fraction * 100.0),
            };
            (t.signal.as_str(), value)
        })
        .collect()
}

pub fn api_socket(root_dir: &Path) -> PathBuf {
    root_dir.join("bosun.sock")
}

/// Runs the daemon until `shutdown` resolves. Pods keep running when it returns: a
/// restarted bosun adopts them.
pub async fn run(config: Config, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    std::fs::create_dir_all(&config.root_dir)
        .with_context(|| format!("creating the root directory {}", config.root_dir.display()))?;
    crate::metrics::global().set_node_name(&config.node.node_name);
    if config.node.cgroup_driver == CgroupDriver::Systemd {
        // Pods cannot start without systemd: say so at once rather than at each sandbox.
        crate::pod::systemd::systemd().await?;
    }
    let client =
        connect_with_retry(&config.runtime_endpoint, config.runtime_request_timeout).await?;
    let events = Recorder::new(config.node.node_name.clone());
    let file_sources: &[Source] = if config.manifest_dir.is_some() {
        &[Source::File]
    } else {
        &[]
    };
    let mut objects = Objects::new(file_sources);
    let enforcing = config.bpf_dir.is_some() && config.network_policy;
    if config.kubeconfig.is_none() {
        // Standalone, the static pods' slices are computed here: they are read once the
        // EndpointSlice controller has computed them from the pods' status.
        let mut sources = file_sources.to_vec();
        sources.push(Source::Local);
        objects.endpoint_slices = Store::new(&sources);
    }
    if config.kubeconfig.is_some() {
        // The API server's Services are read too, and its NetworkPolicies and Namespaces
        // when policy is enforced; the datapaths' first writes wait for their lists.
        let mut sources = file_sources.to_vec();
        sources.push(Source::Api);
        objects.services = Store::new(&sources);
        if enforcing {
            objects.network_policies = Store::new(&sources);
            objects.namespaces = Store::new(&sources);
        }
    }
    let (mut status, pods) = StatusManager::new();
    // The eviction manager's node conditions: admission reads them, the Node status reports
    // them.
    let (pressure_tx, pressure) = tokio::sync::watch::channel(eviction::Pressure::new());
    let finished = config
        .kubeconfig
        .is_some()
        .then(|| status.report_finished());
    let api = crate::api::serve_with(
        &config.api_socket(),
        crate::api::ApiState {
            pods: pods.clone(),
            events: events.clone(),
            objects: objects.clone(),
        },
    )?;

    let mut snapshots = config
        .manifest_dir
        .clone()
        .map(|dir| source::watch(dir, config.node.node_name.clone(), RESCAN, objects.clone()));
    let mut pod_sources = file_sources.to_vec();
    let mut tasks = vec![tokio::spawn(
        crate::util::release_freed_memory_periodically(),
    )];
    let (api_tx, mut api_updates) = tokio::sync::mpsc::unbounded_channel::<PodUpdate>();
    // The UIDs of pods whose service account token request ended.
    let (tokens_tx, mut tokens_ready) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut referenced = None;
    let mut api_client = None;
    if let Some(kubeconfig) = &config.kubeconfig {
        if let Some(bootstrap) = &config.bootstrap_kubeconfig {
            crate::cluster::bootstrap::ensure_credentials(
                kubeconfig,
                bootstrap,
                &config.cert_dir,
                &config.node.node_name,
            )
            .await
            .context("TLS bootstrapping")?;
        }
        // Every task's client follows the credentials: a renewed certificate is picked up
        // by the next request.
        let (cluster, credentials) = crate::cluster::bootstrap::swappable(
            crate::cluster::client(kubeconfig)
                .await
                .context("joining the cluster")?,
        );
        if config.rotate_certificates && config.bootstrap_kubeconfig.is_some() {
            tasks.push(tokio::spawn(crate::cluster::bootstrap::rotate(
                crate::cluster::bootstrap::Rotation {
                    kubeconfig: kubeconfig.clone(),
                    cert_dir: config.cert_dir.clone(),
                    node: config.node.node_name.clone(),
                    bootstrap: config.bootstrap_kubeconfig.clone(),
                },
                credentials,
            )));
        }
        pod_sources.push(Source::Api);
        api_client = Some(cluster.clone());
        let version = client.version();
        let allocatable = &config.node.node;
        let facts = crate::cluster::node::NodeFacts {
            name: config.node.node_name.clone(),
            labels: config.node_labels.clone(),
            taints: config.node_taints.clone(),
            host_ip: config.node.host_ip.clone(),
            capacity: config.capacity,
            allocatable: NodeCapacity {
                cpu_millis: allocatable.allocatable_cpu_millis,
                memory_bytes: allocatable.allocatable_memory_bytes,
                ephemeral_bytes: allocatable.allocatable_ephemeral_storage_bytes,
            },
            max_pods: config.max_pods,
            runtime_version: format!("{}://{}", version.runtime_name, version.runtime_version),
            port: config
                .server
                .as_ref()
                .map_or(KUBELET_PORT, |s| i32::from(s.listen.port())),
        };
        tasks.push(tokio::spawn(crate::cluster::node::run(
            cluster.clone(),
            facts,
            client.clone(),
            pressure.clone(),
        )));
        let mirrors = crate::store::Store::<Pod>::new(&[Source::Api]);
        tasks.push(tokio::spawn(crate::cluster::pods::watch(
            cluster.clone(),
            config.node.node_name.clone(),
            api_tx,
            mirrors.writer(Source::Api),
        )));
        tasks.push(tokio::spawn(crate::cluster::services::watch(
            cluster.clone(),
            objects.services.writer(Source::Api),
        )));
        tasks.push(tokio::spawn(crate::cluster::mirror::run(
            cluster.clone(),
            config.node.node_name.clone(),
            pods.clone(),
            mirrors,
        )));
        // Subscribed before any pod worker starts, so that none of their events is missed.
        tasks.push(tokio::spawn(crate::cluster::events::run(
            cluster.clone(),
            events.subscribe(),
        )));
        let tokens = TokenManager::new(cluster.clone(), tokens_tx);
        referenced = Some(ReferencedObjects::new(
            cluster.clone(),
            objects.clone(),
            tokens,
        ));
        if let Some(finished) = finished {
            tasks.push(tokio::spawn(crate::cluster::status::run(
                cluster,
                pods.clone(),
                finished,
            )));
        }
    } else {
        drop(api_tx);
        drop(tokens_tx);
    }
    if let Some(rotation) = config.log_rotation {
        tasks.push(tokio::spawn(crate::pod::log_rotation::run(
            client.clone(),
            rotation,
        )));
    }
    if let Some(healthz) = config.healthz {
        tasks.push(tokio::spawn(crate::server::serve_healthz(healthz)));
    }
    let stats = Arc::new(
        crate::server::stats::StatsProvider::new(
            crate::server::stats::HostPaths::host(),
            config.node.cgroup_root.clone(),
            config.root_dir.clone(),
            config.node.node_name.clone(),
        )
        .with_cgroup_driver(config.node.cgroup_driver),
    );
    if let Some(server) = &config.server {
        tasks.push(
            crate::server::serve(
                server,
                crate::server::Sources {
                    node: config.node.node_name.clone(),
                    pods: pods.clone(),
                    runtime: client.clone(),
                    api: api_client.clone(),
                    stats: stats.clone(),
                    configz: configz(&config),
                    policy_bpf_dir: config.bpf_dir.clone().filter(|_| config.network_policy),
                },
            )
            .await
            .context("serving the kubelet API")?,
        );
    }
    let ctx = Arc::new(config.node.clone());
    // The static pods' EndpointSlices: standalone, nothing else computes them. In a cluster
    // the EndpointSlice controller does, for their mirror pods, and the proxy reads the API
    // server's.
    if api_client.is_none() {
        tasks.push(tokio::spawn(endpoints::run_controller(
            objects.services.clone(),
            pods.clone(),
            objects.endpoint_slices.writer(Source::Local),
            config.node.node_name.clone(),
        )));
    }
    let enforcer = config
        .bpf_dir
        .as_ref()
        .filter(|_| config.network_policy)
        .map(|bpf_dir| {
            // The pods policies may name: in a cluster every pod of it, standalone this
            // node's.
            let peers = match &api_client {
                Some(cluster) => {
                    let peers = Store::new(&[Source::Api]);
                    tasks.extend(crate::cluster::datapath::watch_policy_objects(
                        cluster,
                        &objects,
                        peers.writer(Source::Api),
                    ));
                    peers
                }
                None => {
                    let peers = Store::new(&[Source::File]);
                    tasks.push(tokio::spawn(crate::store::mirror(
                        pods.clone(),
                        peers.writer(Source::File),
                        crate::policy::peer,
                    )));
                    peers
                }
            };
            tracing::info!(
                "NetworkPolicy programs attach to pods' interfaces as {}",
                config.tc_mode
            );
            PolicyEnforcer::new(
                bpf_dir.clone(),
                config.tc_mode,
                &config.root_dir,
                peers,
                events.clone(),
                objects.network_policies.clone(),
                objects.namespaces.clone(),
            )
        });
    if let Some(enforcer) = &enforcer {
        tasks.push(tokio::spawn(enforcer.clone().run()));
    }
    if let Some(bpf_dir) = config.bpf_dir.as_ref().filter(|_| config.service_proxy) {
        // The proxy reads the Services and slices narrowed: the manifest directory's and
        // the API server's Services as the object store merges them, the manifest
        // directory's and the static pods' slices, and in a cluster the API server's slices.
        let services = Store::new(&[Source::File]);
        let mut slice_sources = vec![Source::File];
        tasks.push(tokio::spawn(crate::store::mirror(
            objects.services.clone(),
            services.writer(Source::File),
            |service| Some(ServiceInfo::from_service(service)),
        )));
        let mut node_view = None;
        if let Some(cluster) = &api_client {
            slice_sources.push(Source::Api);
            let (view_tx, view_rx) = tokio::sync::watch::channel(NodeView::default());
            tasks.push(tokio::spawn(crate::cluster::datapath::watch_node(
                cluster.clone(),
                config.node.node_name.clone(),
                view_tx,
            )));
            node_view = Some(view_rx);
        }
        let slices = Store::new(&slice_sources);
        tasks.push(tokio::spawn(crate::store::mirror(
            objects.endpoint_slices.clone(),
            slices.writer(Source::File),
            |slice| Some(SliceInfo::from_slice(slice)),
        )));
        if let Some(cluster) = &api_client {
            tasks.push(tokio::spawn(
                crate::cluster::datapath::watch_endpoint_slices(
                    cluster.clone(),
                    slices.writer(Source::Api),
                ),
            ));
        }
        // The proxy's health as kube-proxy judges it, with kube-proxy's default timeout
        // (2 × syncPeriod): what the Services' health checks report as serviceProxyHealthy.
        let proxy_health = ProxyHealth::new(Duration::from_secs(60));
        let proxy = Proxy {
            bpf_dir: bpf_dir.clone(),
            node: config.node.node_name.clone(),
            services,
            slices,
            pods: Some(pods.clone()),
            node_view,
            events: events.clone(),
            progress: Some(Box::new(proxy_health.clone())),
            service_health: Some(ServiceHealthServer::listening_on(
                &config.node.node_name,
                config.external.health_check_addresses(),
                events.clone(),
                Some(proxy_health),
            )),
            external: config.external.clone(),
        };
        tasks.push(tokio::spawn(proxy.run()));
    }

    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut workers = PodWorkers::new(Shared {
        runtime: client.clone(),
        ctx: ctx.clone(),
        events: events.clone(),
        objects: match &referenced {
            Some(referenced) => referenced.clone(),
            None => Arc::new(objects.clone()),
        },
        status: status.clone(),
        policy: enforcer,
        done: done_tx,
        sync_frequency: config.sync_frequency,
    });
    let (evict_tx, mut evict_rx) = tokio::sync::mpsc::unbounded_channel();
    tasks.push(tokio::spawn(
        eviction::Driver {
            manager: eviction::Manager::new(config.eviction.clone()),
            runtime: client.clone(),
            stats: stats.clone(),
            pods: pods.clone(),
            events: events.clone(),
            dirs: eviction::PodDirs {
                pods_dir: ctx.pods_dir.clone(),
                ctx: ctx.clone(),
            },
            cluster: config.kubeconfig.is_some(),
            pressure: pressure_tx,
            evict: evict_tx,
            images_seen: HashMap::new(),
        }
        .run(),
    ));
    let (pleg_tx, mut pleg_rx) = tokio::sync::mpsc::unbounded_channel();
    let socket = bosun_cri::socket_path(&config.runtime_endpoint)?;
    tasks.push(tokio::spawn(pleg::run(client.clone(), socket, pleg_tx)));

    let mut pod_config = PodConfig::new(&pod_sources);
    let node_info = node_info(&config, pressure);
    let mut references_changed = [objects.config_maps.subscribe(), objects.secrets.subscribe()];
    // Pods from the API server wait until its Services are listed (for their environment
    // variables): woken when they are, instead of at their next retry.
    let mut services_listing = referenced.is_some().then(|| objects.services.subscribe());
    let mut pod_dirs_swept = false;
    // Pods refused at admission, by UID, with their key in the pod store.
    let mut rejected: HashMap<String, ObjectKey> = HashMap::new();
    // The pods the last relist found, until every source has listed its pods: only then can a
    // pod be unwanted.
    let mut unclaimed: Option<Vec<String>> = None;
    tokio::pin!(shutdown);
    loop {
        if let Some(uids) = unclaimed.take_if(|_| pod_config.all_sources_seen()) {
            sweep_unwanted(&uids, &mut workers, &pod_config, &ctx, &mut pod_dirs_swept);
        }
        tokio::select! {
            () = &mut shutdown => break,
            Some(snapshot) = next_snapshot(&mut snapshots) => {
                let Ok(snapshot) = snapshot else {
                    anyhow::bail!("the manifest source stopped");
                };
                for error in &snapshot.errors {
                    events.record(events.node_reference(), EventType::Warning, reason::FAILED_VALIDATION, error.to_string());
                }
                let pods = snapshot.pods.values().map(|p| Arc::new(p.pod.clone())).collect();
                let changed = pod_config.apply(Source::File, PodUpdate::Set(pods));
                sync_pods(&pod_config, changed, &mut workers, &mut rejected, &status, &events, &node_info);
                crate::util::release_freed_memory();
            }
            Some(update) = api_updates.recv() => {
                if let PodUpdate::Delete(gone) = &update {
                    // Removed from the API before bosun finished with it (a forced
                    // deletion): its containers are killed at once, as kubelet does.
                    if let Some(uid) = gone.metadata.uid.as_deref().filter(|uid| workers.contains(uid)) {
                        workers.update(uid, Some(killed_at_once(gone)));
                    }
                }
                let changed = pod_config.apply(Source::Api, update);
                if let Some(referenced) = &referenced {
                    // Watches of what the pods refer to start before their workers look.
                    for uid in &changed {
                        referenced.track(uid, pod_config.get(uid).map(|p| &**p));
                    }
                }
                sync_pods(&pod_config, changed, &mut workers, &mut rejected, &status, &events, &node_info);
            }
            _ = objects_changed(&mut references_changed) => {
                // configMap and secret volumes follow their objects: wake the pods that
                // refer to what changed.
                let keys: Vec<(RefKind, ObjectKey)> = references_changed[0].take().keys.into_iter()
                    .map(|k| (RefKind::ConfigMap, k))
                    .chain(references_changed[1].take().keys.into_iter().map(|k| (RefKind::Secret, k)))
                    .collect();
                for (uid, pod) in pod_config.desired() {
                    if keys.iter().any(|(kind, key)| refers_to(&pod, *kind, key)) {
                        workers.kick(&uid);
                    }
                }
            }
            () = changed(&mut services_listing) => {
                if objects.services.is_source_synced(Source::Api) {
                    services_listing = None;
                    for (uid, pod) in pod_config.desired() {
                        if source::from_api(&pod) {
                            workers.kick(&uid);
                        }
                    }
                }
            }
            Some(uid) = tokens_ready.recv() => workers.kick(&uid),
            Some(request) = evict_rx.recv() => workers.evict(&request.uid, request.eviction),
            Some(event) = pleg_rx.recv() => match event {
                PodLifecycleEvent::Changed(uid) => workers.runtime_changed(&uid),
                PodLifecycleEvent::Relisted(uids) => unclaimed = Some(uids),
            },
            Some(uid) = done_rx.recv() => {
                workers.done(&uid);
                // A pod wanted again while it was being terminated starts anew.
                if let Some(pod) = pod_config.get(&uid).filter(|p| p.metadata.deletion_timestamp.is_none()) {
                    workers.update(&uid, Some(pod.clone()));
                } else if let Err(e) = log_rotation::remove_pod_logs(&ctx.pod_logs_dir, &uid) {
                    // Gone for good: its logs go too, as kubelet removes those of pods it no
                    // longer has.
                    tracing::warn!(%uid, error = %e, "removing a gone pod's logs");
                }
            }
        }
    }
    api.abort();
    for task in tasks {
        task.abort();
    }
    let _ = std::fs::remove_file(config.api_socket());
    Ok(())
}

/// Terminates the pods the runtime holds (`uids`, from a relist) that no source wants, and the
/// first time, removes the directories and logs of pods that went away while bosun was down.
fn sweep_unwanted<R: crate::runtime::Runtime>(
    uids: &[String],
    workers: &mut PodWorkers<R>,
    pod_config: &PodConfig,
    ctx: &NodeContext,
    pod_dirs_swept: &mut bool,
) {
    for uid in uids {
        if !workers.contains(uid) && pod_config.get(uid).is_none() {
            workers.terminate_orphan(uid);
        }
    }
    if *pod_dirs_swept {
        return;
    }
    *pod_dirs_swept = true;
    let left = volume::pod_uids(&ctx.pods_dir).unwrap_or_default();
    for uid in left
        .iter()
        .filter(|u| !workers.contains(u) && !uids.contains(u))
    {
        if let Err(e) = volume::cleanup(&ctx.pods_dir, uid, &HostMounter) {
            tracing::warn!(%uid, error = %e, "removing a gone pod's directory");
        }
    }
    let logged = log_rotation::pod_log_uids(&ctx.pod_logs_dir);
    for uid in logged
        .iter()
        .filter(|u| !workers.contains(u) && !uids.contains(u) && pod_config.get(u).is_none())
    {
        if let Err(e) = log_rotation::remove_pod_logs(&ctx.pod_logs_dir, uid) {
            tracing::warn!(%uid, error = %e, "removing a gone pod's logs");
        }
    }
}

/// `pod` marked deleted with no grace period left.
fn killed_at_once(pod: &Pod) -> Arc<Pod> {
    let mut pod = pod.clone();
    pod.metadata.deletion_grace_period_seconds = Some(0);
    pod.metadata.deletion_timestamp.get_or_insert_with(|| {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(crate::events::now())
    });
    Arc::new(pod)
}

/// Hands the pods whose desired state changed to their workers, admitting new ones first.
fn sync_pods<R: crate::runtime::Runtime>(
    pod_config: &PodConfig,
    changed: BTreeSet<String>,
    workers: &mut PodWorkers<R>,
    rejected: &mut HashMap<String, ObjectKey>,
    status: &StatusManager,
    events: &Recorder,
    node: &NodeAdmission,
) {
    let desired = pod_config.desired();
    let mut new = Vec::new();
    for uid in changed {
        match desired.get(&uid) {
            None => {
                workers.update(&uid, None);
                if let Some(key) = rejected.remove(&uid) {
                    status.remove(&key);
                }
            }
            Some(pod) if workers.contains(&uid) => workers.update(&uid, Some(pod.clone())),
            // A pod deleted before it ran is done with at once.
            Some(pod) if pod.metadata.deletion_timestamp.is_some() => {
                rejected.remove(&uid);
                status.finished_without_running(pod);
            }
            Some(_) if rejected.contains_key(&uid) => {}
            // A pod the API server already has in a terminal phase (evicted, or finished
            // before bosun restarted) is not started again, as kubelet does not.
            Some(pod) if is_terminal(pod) => status.set_status(pod, pod.status.clone()),
            Some(pod) => new.push((uid, pod.clone())),
        }
    }
    // Admission in kubelet's order (by creation time, then name) against the pods already
    // admitted; a rejected pod stays rejected while its desired state is unchanged.
    new.sort_by_key(|(_, pod)| {
        (
            pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
            pod_name(pod),
        )
    });
    for (uid, pod) in new {
        let admitted = workers.admitted();
        let running: Vec<&Pod> = admitted.iter().map(|p| &**p).collect();
        // The eviction manager's admit handler comes first, as in kubelet.
        let under_pressure = eviction::admit(&node.pressure.borrow(), &pod, node.cluster);
        if let Err(rejection) =
            under_pressure.and_then(|()| admission::admit(&pod, &running, &node.info))
        {
            let key = reject(status, events, &pod, &rejection);
            rejected.insert(uid, key);
            continue;
        }
        workers.update(&uid, Some(pod));
    }
    if pod_config.all_sources_seen() {
        status.expect(desired.into_keys().collect());
    }
}

fn is_terminal(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Failed" | "Succeeded"))
}

/// What admission knows of this node: what the predicates check, and the node conditions
/// the eviction manager holds.
struct NodeAdmission {
    info: admission::NodeInfo,
    pressure: tokio::sync::watch::Receiver<eviction::Pressure>,
    cluster: bool,
}

fn node_info(
    config: &Config,
    pressure: tokio::sync::watch::Receiver<eviction::Pressure>,
) -> NodeAdmission {
    NodeAdmission {
        info: predicate_node_info(config),
        pressure,
        cluster: config.kubeconfig.is_some(),
    }
}

/// What the predicates know of this node: its labels as registered, its allocatable
/// resources.
fn predicate_node_info(config: &Config) -> admission::NodeInfo {
    let mut labels = config.node_labels.clone();
    labels.insert(
        "kubernetes.io/hostname".into(),
        config.node.node_name.clone(),
    );
    labels.insert("kubernetes.io/os".into(), std::env::consts::OS.into());
    let resources = &config.node.node;
    admission::NodeInfo {
        name: config.node.node_name.clone(),
        labels,
        allocatable_cpu_millis: resources.allocatable_cpu_millis,
        allocatable_memory_bytes: resources.allocatable_memory_bytes,
        allocatable_ephemeral_storage_bytes: resources.allocatable_ephemeral_storage_bytes,
        max_pods: config.max_pods,
        taints: config.node_taints.clone(),
        ..admission::NodeInfo::default()
    }
}

/// Resolves once either store changed; the changes stay to be taken.
/// The next change of `subscription`; never, without one.
async fn changed(subscription: &mut Option<Subscription>) {
    match subscription {
        Some(subscription) => {
            subscription.changed().await;
        }
        None => std::future::pending().await,
    }
}

async fn objects_changed(subscriptions: &mut [Subscription; 2]) {
    let [config_maps, secrets] = subscriptions;
    tokio::select! {
        () = config_maps.ready() => {}
        () = secrets.ready() => {}
    }
}

/// Whether `pod` refers to the ConfigMap or Secret `key` (volumes, environment, pull
/// secrets).
fn refers_to(pod: &Pod, kind: RefKind, key: &ObjectKey) -> bool {
    references(pod).iter().any(|(k, namespace, name)| {
        *k == kind && **namespace == *key.namespace && **name == *key.name
    })
}

/// Records a pod the node refused: phase Failed with kubelet's reason and message, in the
/// pod store (and so in the API server) and as an event. Returns its store key.
fn reject(
    status: &StatusManager,
    events: &Recorder,
    pod: &Pod,
    rejection: &admission::Rejection,
) -> ObjectKey {
    events.warning(pod, &rejection.reason, rejection.message.clone());
    status.set_status(
        pod,
        Some(PodStatus {
            phase: Some("Failed".to_owned()),
            reason: Some(rejection.reason.clone()),
            message: Some(rejection.status_message()),
            ..Default::default()
        }),
    );
    ObjectKey::of(&pod.metadata)
}

/// Connects to the runtime, waiting for it to come up as kubelet does.
async fn connect_with_retry(endpoint: &str, timeout: Duration) -> Result<CriClient> {
    let mut delay = Duration::from_millis(100);
    loop {
        match CriClient::connect(endpoint, timeout).await {
            Ok(client) => return Ok(client),
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, "waiting for the container runtime");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e).context("connecting to the container runtime"),
        }
    }
}
