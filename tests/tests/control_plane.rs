//! The control plane harness against the real thing: kube-apiserver 1.20.2 with etcd and
//! kube-controller-manager. It serves an administrator, confines a node's kubelet identity to
//! its own Node as a real cluster does, and keeps its objects across an API server restart.
//!
//! Each test starts a private control plane (its own directory and its own free ports on
//! 127.0.0.1), so they may run in parallel; nextest runs at most two at once
//! (`.config/nextest.toml`), since each API server takes ~300 MB and a core to start.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use bosun_tests::control_plane::{self, ControlPlane};
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Starts a control plane; panics, saying so, when this machine cannot run one.
async fn start(name: &str) -> Result<ControlPlane> {
    control_plane::require();
    let began = Instant::now();
    let plane = ControlPlane::start(name).await?;
    eprintln!(
        "control plane {} up in {:?}",
        plane.server(),
        began.elapsed()
    );
    Ok(plane)
}

async fn client(kubeconfig: &Path) -> Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("loading the kubeconfig")?;
    kube::Client::try_from(config).context("building a client")
}

fn node(name: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..Node::default()
    }
}

/// Whether `result` is the API server's 403.
fn forbidden<T: std::fmt::Debug>(result: &kube::Result<T>) -> bool {
    matches!(result, Err(kube::Error::Api(status)) if status.is_forbidden())
}

#[tokio::test]
async fn an_admin_is_served_and_the_default_service_account_exists() -> Result<()> {
    let plane = start("cp-admin").await?;
    assert!(
        plane.server().starts_with("https://127.0.0.1:"),
        "{}",
        plane.server()
    );

    assert_eq!(
        plane.kubectl(["get", "--raw", "/readyz"]).await?.trim(),
        "ok"
    );
    let version: serde_json::Value =
        serde_json::from_str(&plane.kubectl(["get", "--raw", "/version"]).await?)?;
    assert_eq!(version["gitVersion"], "v1.20.2", "{version:#}");
    let account = plane
        .kubectl([
            "get",
            "serviceaccount",
            "default",
            "--namespace",
            "default",
            "-o",
            "name",
        ])
        .await?;
    assert_eq!(account.trim(), "serviceaccount/default");
    plane.shutdown().await
}

#[tokio::test]
async fn a_node_identity_reaches_only_its_own_node() -> Result<()> {
    let plane = start("cp-node-identity").await?;
    let kubeconfig = plane.node_kubeconfig("node-a").await?;
    let client = client(&kubeconfig).await?;
    let nodes: Api<Node> = Api::all(client.clone());

    let created = nodes
        .create(&PostParams::default(), &node("node-a"))
        .await
        .context("node-a creating its own Node")?;
    assert_eq!(created.metadata.name.as_deref(), Some("node-a"));

    let other = nodes.create(&PostParams::default(), &node("node-b")).await;
    assert!(
        forbidden(&other),
        "node-a created Node node-b (NodeRestriction should forbid it): {other:?}"
    );

    let secrets = Api::<Secret>::all(client)
        .list(&ListParams::default())
        .await;
    assert!(
        forbidden(&secrets),
        "node-a listed every Secret (the Node authorizer should forbid it): {secrets:?}"
    );
    plane.shutdown().await
}

#[tokio::test]
async fn objects_outlive_an_api_server_restart() -> Result<()> {
    let plane = start("cp-restart").await?;
    let nodes: Api<Node> = Api::all(client(plane.admin_kubeconfig()).await?);
    nodes
        .create(&PostParams::default(), &node("node-a"))
        .await?;

    plane.stop().await?;
    let down = plane.kubectl(["get", "--raw", "/readyz"]).await;
    assert!(down.is_err(), "the stopped API server answered: {down:?}");

    let began = Instant::now();
    plane.start_again().await?;
    eprintln!("API server back in {:?}", began.elapsed());
    assert_eq!(
        plane
            .kubectl(["get", "node", "node-a", "-o", "name"])
            .await?
            .trim(),
        "node/node-a"
    );
    // The client made before the restart reconnects by itself.
    let node = nodes.get("node-a").await?;
    assert_eq!(node.metadata.name.as_deref(), Some("node-a"));
    plane.shutdown().await
}
