//! bosun joined to a real control plane, for the cluster-mode tests: a fresh
//! [`ControlPlane`], a [`TestNode`] and `bosun run --kubeconfig` with the node identity
//! `system:node:node1`, and ways to wait for what the API server shows.

use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::control_plane::{self, ControlPlane};
use crate::daemon::{Daemon, NODE_NAME};
use crate::node::TestNode;

/// Runs `scenario` on a fresh control plane and node named after `name`; prints bosun's log
/// if it failed and tears everything down either way. The scenario starts bosun (see
/// [`join`]) and hands its daemon back. Panics, saying so, where no control plane can run.
pub async fn in_a_cluster<F, Fut>(name: &str, scenario: F) -> Result<()>
where
    F: FnOnce(ControlPlane, TestNode) -> Fut,
    Fut: Future<Output = (ControlPlane, TestNode, Daemon, Result<()>)>,
{
    control_plane::require();
    // With an audit log of the node's requests, to check that it never needed what the
    // Node authorizer and NodeRestriction refuse.
    let plane = ControlPlane::start_with_audit_log(name).await?;
    let node = TestNode::start(name).await?;
    let (plane, node, daemon, mut result) = scenario(plane, node).await;
    if result.is_ok() {
        result = refused_requests(&plane);
    }
    if result.is_err() {
        eprintln!("--- bosun's log ---\n{}", daemon.log());
    }
    drop(daemon);
    node.shutdown().await?;
    plane.shutdown().await?;
    result
}

/// Fails if the API server refused the node a request (403) that it never allowed later:
/// bosun asks only for what its node identity is allowed. The Node authorizer learns which
/// Secrets and ConfigMaps a node may read from its own watch of pods, so a node that reads
/// one right after it sees the pod can be refused until the authorizer has seen the pod too
/// (kubelet meets the same, and retries as bosun does); such a request, allowed when asked
/// again, was within the node's rights.
fn refused_requests(plane: &ControlPlane) -> Result<()> {
    let requests = plane.node_requests()?;
    anyhow::ensure!(!requests.is_empty(), "no request of the node was audited");
    let allowed_later = |index: usize, refused: &Value| {
        requests[index + 1..].iter().any(|later| {
            later["verb"] == refused["verb"]
                && later["requestURI"] == refused["requestURI"]
                && later["responseStatus"]["code"]
                    .as_u64()
                    .is_some_and(|code| (200..300).contains(&code))
        })
    };
    let refused: Vec<String> = requests
        .iter()
        .enumerate()
        .filter(|(_, event)| event["responseStatus"]["code"] == 403)
        .filter(|(index, event)| !allowed_later(*index, event))
        .map(|(_, event)| format!("{} {}", event["verb"], event["requestURI"]))
        .collect();
    anyhow::ensure!(refused.is_empty(), "the node was refused: {refused:?}");
    Ok(())
}

/// Starts `bin run` on `node`, joined to `plane` as `node1` with `extra` flags.
pub async fn join(
    bin: &Path,
    plane: &ControlPlane,
    node: &TestNode,
    extra: &[&OsStr],
) -> Result<Daemon> {
    join_with_config(bin, plane, node, extra, "").await
}

/// As [`join`], with `extra_config` added to the daemon's configuration file.
pub async fn join_with_config(
    bin: &Path,
    plane: &ControlPlane,
    node: &TestNode,
    extra: &[&OsStr],
    extra_config: &str,
) -> Result<Daemon> {
    let kubeconfig = plane.node_kubeconfig(NODE_NAME).await?;
    let mut args = vec!["--kubeconfig".as_ref(), kubeconfig.as_os_str()];
    args.extend(extra);
    // The kubelet API on a port of its own (tests run side by side), trusting the cluster's
    // CA for client certificates, as the API server presents one signed by it.
    let config = format!(
        "port: {}\nauthentication:\n  x509:\n    clientCAFile: {}\n{extra_config}",
        free_port()?,
        plane.dir().join("pki/ca.crt").display()
    );
    Daemon::start_with_args(bin, node, node.dir(), &config, &args)
        .await
        .context("starting bosun")
}

/// Creates the Pod `name` in namespace `default` for a "pod" a test runs itself (a network
/// namespace answering at `ip`): bound to `node`, labelled `labels`, with a container port
/// `http` (8080), and Running at `ip` as the kubelet running it would report it.
pub async fn pod_at(
    client: &kube::Client,
    name: &str,
    node: &str,
    labels: Value,
    ip: std::net::Ipv4Addr,
) -> Result<()> {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Patch, PatchParams, PostParams};
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox",
                 "ports": [{"name": "http", "containerPort": 8080}]}]},
    }))?;
    api.create(&PostParams::default(), &pod)
        .await
        .with_context(|| format!("creating pod {name}"))?;
    let status = serde_json::json!({"status": {"phase": "Running", "podIP": ip.to_string(),
                                              "podIPs": [{"ip": ip.to_string()}]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("writing pod {name}'s status"))?;
    Ok(())
}

/// A TCP port nothing listens on right now (the kernel's choice of an ephemeral port).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind(("0.0.0.0", 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// `kubectl get ARGS -o json`.
pub async fn get_json(plane: &ControlPlane, args: &[&str]) -> Result<Value> {
    let mut all = vec!["get"];
    all.extend(args);
    all.extend(["-o", "json"]);
    let out = plane.kubectl(all).await?;
    serde_json::from_str(&out).context("kubectl's JSON")
}

/// Polls until `check` holds of `kubectl get ARGS -o json`, or fails with the last object.
pub async fn wait_for(
    plane: &ControlPlane,
    args: &[&str],
    within: Duration,
    check: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + within;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Ok(value) = get_json(plane, args).await {
            if check(&value) {
                return Ok(value);
            }
            last = value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("kubectl get {args:?}: not as wanted within {within:?}; last: {last:#}")
}

/// The status of the condition `type_` of a pod or node as JSON, `""` if it has none.
pub fn condition<'a>(object: &'a Value, type_: &str) -> &'a str {
    object["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
}
