//! `bosun proxy`: only the datapath, fed by the API server: kube-proxy's job on a node whose
//! pods another kubelet runs (a DaemonSet beside it, or in place of kube-proxy). No CRI, no
//! pods, no manifest directory: the Services and EndpointSlices kube-proxy would program,
//! this node's Node for its zone and whether it is being taken away, and unless
//! `--network-policy=false` the NetworkPolicies enforced for this node's pods (found by
//! their address, see [`super::endpoints`]).
//!
//! The programs and maps are pinned, so stopping or killing `bosun proxy` stops no
//! connection; a new one adopts the maps, waits for its first full list, and writes only
//! what changed meanwhile. `--cleanup` removes all of it.

use std::process::Stdio;

use anyhow::{Context, Result};
use bosun_netdp::service::{self as datapath};
use bosun_netdp::service::{ServiceInfo, SliceInfo};
use bosun_netdp::tc::{Interfaces, TcMode};
use tokio::sync::watch;

use super::config::ProxyConfig;
use super::healthz::{self, ProxyHealth};
use super::service_health::ServiceHealthServer;
use crate::cluster::datapath::{
    watch_endpoint_slices, watch_node, watch_policy_objects, watch_services, NodeView, PodPeer,
};
use crate::cluster::reflect::reflect;
use crate::events::Recorder;
use crate::policy::PolicyEnforcer;
use crate::service::proxy::{Progress, Proxy};
use crate::store::{Objects, Source, Store};
use kube::runtime::watcher;
use kube::Api;

impl Progress for ProxyHealth {
    fn queued(&self) {
        ProxyHealth::queued(self);
    }

    fn updated(&self) {
        ProxyHealth::updated(self);
    }

    fn node_eligible(&self, eligible: bool) {
        self.set_node_eligible(eligible);
    }
}

/// Runs `bosun proxy` until `shutdown` completes (or, with `cleanup`, removes the datapath
/// and returns).
pub async fn run(
    config: ProxyConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    for note in &config.notes {
        tracing::warn!("{note}");
    }
    if config.cleanup {
        return cleanup(&config);
    }
    // Before anything starts: a bad value stops the proxy here.
    let tc_mode = TcMode::detect(Interfaces::Pods).context("choosing how to attach tc programs")?;
    if let Some(found) = kube_proxy_rules().await {
        tracing::warn!(
            "kube-proxy's rules are on this node ({found}): kube-proxy answers for the Services too. Stop kube-proxy and remove its rules (kube-proxy --cleanup) to leave them to bosun; see the README"
        );
    }
    crate::metrics::global().set_node_name(&config.node_name);
    let client = match &config.kubeconfig {
        Some(path) => crate::cluster::client(path).await?,
        None => kube::Client::try_default()
            .await
            .context("no --kubeconfig, and no in-cluster configuration (service account)")?,
    };
    let events = Recorder::new(config.node_name.clone());
    let health = ProxyHealth::new(config.health_timeout());
    let services: Store<ServiceInfo> = Store::new(&[Source::Api]);
    let slices: Store<SliceInfo> = Store::new(&[Source::Api]);
    let (view_tx, view_rx) = watch::channel(NodeView::default());
    let mut tasks = vec![
        tokio::spawn(crate::util::release_freed_memory_periodically()),
        tokio::spawn(watch_services(client.clone(), services.writer(Source::Api))),
        tokio::spawn(watch_endpoint_slices(
            client.clone(),
            slices.writer(Source::Api),
        )),
        tokio::spawn(watch_node(
            client.clone(),
            config.node_name.clone(),
            view_tx,
        )),
        tokio::spawn(crate::cluster::events::run(
            client.clone(),
            events.subscribe(),
        )),
    ];
    if let Some(address) = config.healthz {
        tasks.push(tokio::spawn(healthz::serve(address, health.clone())));
    }
    if let Some(address) = config.metrics {
        tasks.push(tokio::spawn(healthz::serve_metrics(address)));
    }
    if config.network_policy {
        tracing::info!("NetworkPolicy programs attach to pods' interfaces as {tc_mode}");
        tasks.extend(network_policy(&config, tc_mode, &client, &events)?);
    }
    let service_health = ServiceHealthServer::listening_on(
        &config.node_name,
        config.external.health_check_addresses(),
        events.clone(),
        Some(health.clone()),
    );
    let proxy = Proxy {
        bpf_dir: config.bpf_dir.clone(),
        node: config.node_name.clone(),
        services,
        slices,
        pods: None,
        node_view: Some(view_rx),
        events,
        progress: Some(Box::new(health)),
        service_health: Some(service_health),
        external: config.external.clone(),
    };
    tasks.push(tokio::spawn(proxy.run()));
    tracing::info!(node = %config.node_name, bpf_dir = %config.bpf_dir.display(), "bosun proxy running");
    shutdown.await;
    for task in &tasks {
        task.abort();
    }
    tracing::info!("bosun proxy stopped; the datapath stays in place");
    Ok(())
}

/// The NetworkPolicy enforcer and what feeds it: the policies, namespaces and every pod of
/// the cluster (peers), and this node's pods (endpoints).
fn network_policy(
    config: &ProxyConfig,
    tc_mode: TcMode,
    client: &kube::Client,
    events: &Recorder,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    std::fs::create_dir_all(&config.state_dir).with_context(|| {
        format!(
            "creating the state directory {}",
            config.state_dir.display()
        )
    })?;
    let objects = Objects::new(&[Source::Api]);
    let peers = Store::new(&[Source::Api]);
    let mut tasks = watch_policy_objects(client, &objects, peers.writer(Source::Api));
    let local = Store::new(&[Source::Api]);
    let pods: Api<PodPeer> = Api::all(client.clone());
    let on_this_node =
        watcher::Config::default().fields(&format!("spec.nodeName={}", config.node_name));
    tasks.push(tokio::spawn(reflect(
        pods,
        on_this_node,
        local.writer(Source::Api),
        "this node's pods",
        |pod| crate::policy::peer(&pod.into_pod()),
    )));
    let enforcer = PolicyEnforcer::new(
        config.bpf_dir.clone(),
        tc_mode,
        &config.state_dir,
        peers,
        events.clone(),
        objects.network_policies.clone(),
        objects.namespaces.clone(),
    );
    tasks.push(tokio::spawn(enforcer.clone().run()));
    tasks.push(tokio::spawn(super::endpoints::follow(enforcer, local)));
    Ok(tasks)
}

/// Removes the policy and service datapaths (programs, links, maps) from `bpf_dir`.
fn cleanup(config: &ProxyConfig) -> Result<()> {
    // The policy and outside-traffic datapaths live in directories inside the service
    // datapath's.
    bosun_netdp::nodeport::cleanup(&config.bpf_dir).with_context(|| {
        format!(
            "removing the datapath for traffic from outside in {}",
            config.bpf_dir.display()
        )
    })?;
    bosun_netdp::policy::cleanup(&config.bpf_dir).with_context(|| {
        format!(
            "removing the policy datapath in {}",
            config.bpf_dir.display()
        )
    })?;
    let removed = datapath::cleanup(&config.bpf_dir)
        .with_context(|| format!("removing the datapath in {}", config.bpf_dir.display()))?;
    if removed {
        println!("removed the datapath in {}", config.bpf_dir.display());
    } else {
        println!("no datapath in {}", config.bpf_dir.display());
    }
    Ok(())
}

/// kube-proxy's `KUBE-SERVICES` chain in the nat table (iptables mode, either backend) or
/// its `kube-proxy` nftables table, if this node has them: what names them.
async fn kube_proxy_rules() -> Option<String> {
    for iptables in ["iptables-nft", "iptables-legacy", "iptables"] {
        let listed = tokio::process::Command::new(iptables)
            .args(["-t", "nat", "-S", "KUBE-SERVICES"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        if listed.is_ok_and(|status| status.success()) {
            return Some(format!("{iptables}: the nat table's KUBE-SERVICES chain"));
        }
    }
    let listed = tokio::process::Command::new("nft")
        .args(["list", "table", "ip", "kube-proxy"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    listed
        .is_ok_and(|status| status.success())
        .then(|| "nft: the table ip kube-proxy".to_owned())
}
