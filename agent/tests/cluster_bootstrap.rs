//! kubelet's TLS bootstrapping against a real control plane (kube-apiserver, etcd and
//! kube-controller-manager 1.20.2 from `scripts/control-plane.sh`): a node with only a
//! bootstrap token gets its own client certificate through a CertificateSigningRequest that
//! kube-controller-manager approves and signs, and renews it with its own credentials before
//! it expires. Each test has its own control plane (directory and ports), so they may run in
//! parallel.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{ensure, Context, Result};
use bosun::cluster::bootstrap::{self, Credentials, Rotation, CURRENT};
use bosun_tests::control_plane::{self, ControlPlane};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ObjectMeta, PostParams};
use serde_json::Value;

const NODE: &str = "node1";

fn node(name: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..Node::default()
    }
}

/// The CertificateSigningRequests.
async fn csrs(plane: &ControlPlane) -> Result<Vec<Value>> {
    let out = plane.kubectl(["get", "csr", "-o", "json"]).await?;
    let list: Value = serde_json::from_str(&out).context("kubectl's JSON")?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

fn approved(csr: &Value) -> bool {
    csr["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Approved" && c["status"] == "True")
    })
}

fn current_target(cert_dir: &Path) -> Result<std::path::PathBuf> {
    std::fs::read_link(cert_dir.join(CURRENT)).context("reading the current certificate's link")
}

#[tokio::test]
async fn a_node_without_a_kubeconfig_bootstraps_one_that_acts_as_that_node_only() -> Result<()> {
    control_plane::require();
    let plane = ControlPlane::start("bootstrap").await?;
    let bootstrap_kubeconfig = plane.bootstrap_kubeconfig().await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubelet.conf");
    let cert_dir = dir.path().join("pki");

    let outcome =
        bootstrap::ensure_credentials(&kubeconfig, &bootstrap_kubeconfig, &cert_dir, NODE).await?;
    let Credentials::Issued { csr: name } = outcome else {
        panic!("expected a certificate to be requested, got {outcome:?}");
    };

    // One request, made with the bootstrap token, approved by kube-controller-manager.
    let requests = csrs(&plane).await?;
    ensure!(requests.len() == 1, "requests: {requests:#?}");
    let request = &requests[0];
    ensure!(request["metadata"]["name"] == name.as_str());
    ensure!(request["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet");
    ensure!(
        request["spec"]["username"]
            .as_str()
            .is_some_and(|u| u.starts_with("system:bootstrap:")),
        "requested by {}",
        request["spec"]["username"]
    );
    ensure!(approved(request), "not approved: {request:#}");

    // kubelet's layout: a timestamped file holding key and certificate, and the link to it.
    let target = current_target(&cert_dir)?;
    ensure!(target.to_string_lossy().starts_with("kubelet-client-2"));
    let pem = std::fs::read_to_string(cert_dir.join(CURRENT))?;
    ensure!(pem.contains("BEGIN CERTIFICATE") && pem.contains("PRIVATE KEY"));
    ensure!(bootstrap::validity(pem.as_bytes())?.holds_at(SystemTime::now()));

    // The kubeconfig authenticates as system:node:node1, and the Node authorizer and
    // NodeRestriction confine it to that Node.
    let client = bosun::cluster::client(&kubeconfig).await?;
    let nodes: Api<Node> = Api::all(client);
    nodes.create(&PostParams::default(), &node(NODE)).await?;
    match nodes.create(&PostParams::default(), &node("node2")).await {
        Err(kube::Error::Api(status)) if status.is_forbidden() => {}
        other => panic!("creating another node's Node: {other:?}"),
    }

    // A valid kubeconfig is left alone: no second request.
    let again =
        bootstrap::ensure_credentials(&kubeconfig, &bootstrap_kubeconfig, &cert_dir, NODE).await?;
    ensure!(again == Credentials::Valid, "second call: {again:?}");
    // A lost kubeconfig is written again from the certificate already in the cert dir.
    std::fs::remove_file(&kubeconfig)?;
    let rewritten =
        bootstrap::ensure_credentials(&kubeconfig, &bootstrap_kubeconfig, &cert_dir, NODE).await?;
    ensure!(
        rewritten == Credentials::FromCertDir,
        "third call: {rewritten:?}"
    );
    ensure!(current_target(&cert_dir)? == target);
    let requests = csrs(&plane).await?;
    ensure!(
        requests.len() == 1,
        "requests after the later calls: {requests:#?}"
    );
    Api::<Node>::all(bosun::cluster::client(&kubeconfig).await?)
        .get(NODE)
        .await?;

    plane.shutdown().await
}

#[tokio::test]
async fn the_client_certificate_is_renewed_with_the_nodes_own_credentials_before_it_expires(
) -> Result<()> {
    control_plane::require();
    // kube-controller-manager 1.20 dates certificates back 5 minutes (for clocks behind its
    // own) and counts the lifetime from there: this one is valid for a minute after it is
    // issued, and renewal, due at 70–90 % of 6 minutes, comes within 24 s of issuing.
    let lifetime = Duration::from_secs(360);
    let plane = ControlPlane::start_with_certificate_lifetime("rotate", lifetime).await?;
    let bootstrap_kubeconfig = plane.bootstrap_kubeconfig().await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubelet.conf");
    let cert_dir = dir.path().join("pki");
    let outcome =
        bootstrap::ensure_credentials(&kubeconfig, &bootstrap_kubeconfig, &cert_dir, NODE).await?;
    let Credentials::Issued { csr: bootstrapped } = outcome else {
        panic!("expected a certificate to be requested, got {outcome:?}");
    };
    let first = current_target(&cert_dir)?;
    let first_validity = bootstrap::validity(&std::fs::read(cert_dir.join(CURRENT))?)?;
    ensure!(
        first_validity
            .not_after
            .duration_since(first_validity.not_before)?
            == lifetime,
        "issued for {first_validity:?}, not {lifetime:?}"
    );

    let (client, swap) = bootstrap::swappable(bosun::cluster::client(&kubeconfig).await?);
    let mut swapped = swap.subscribe();
    let nodes: Api<Node> = Api::all(client);
    nodes.create(&PostParams::default(), &node(NODE)).await?;
    let rotation = tokio::spawn(bootstrap::rotate(
        Rotation {
            kubeconfig: kubeconfig.clone(),
            cert_dir: cert_dir.clone(),
            node: NODE.to_owned(),
            bootstrap: Some(bootstrap_kubeconfig.clone()),
        },
        swap,
    ));

    // Renewed before it expires.
    let until_expiry = first_validity
        .not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::timeout(until_expiry, swapped.changed())
        .await
        .context("no renewal within the certificate's lifetime")??;
    ensure!(
        SystemTime::now() < first_validity.not_after,
        "renewed only after the certificate expired"
    );
    let second = current_target(&cert_dir)?;
    ensure!(second != first, "the link still names {}", first.display());
    let second_validity = bootstrap::validity(&std::fs::read(cert_dir.join(CURRENT))?)?;
    ensure!(second_validity.not_after >= first_validity.not_after);

    // Renewals are requested as the node itself, not with the bootstrap token. (With this
    // short a lifetime, a renewed certificate may be due at once: there may be several.)
    let requests = csrs(&plane).await?;
    let renewals: Vec<_> = requests
        .iter()
        .filter(|r| r["metadata"]["name"] != bootstrapped.as_str())
        .collect();
    ensure!(!renewals.is_empty(), "requests: {requests:#?}");
    for renewal in renewals {
        ensure!(
            renewal["spec"]["username"] == "system:node:node1",
            "renewal requested by {}",
            renewal["spec"]["username"]
        );
        ensure!(approved(renewal), "not approved: {renewal:#}");
    }

    // Once the first certificate has expired it is refused, and the same client, its
    // requests now sent with the new certificate, still works.
    let old_kubeconfig = dir.path().join("old.conf");
    std::fs::write(
        &old_kubeconfig,
        std::fs::read_to_string(&kubeconfig)?.replace(CURRENT, &first.to_string_lossy()),
    )?;
    let until_expiry = first_validity
        .not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(until_expiry + Duration::from_secs(1)).await;
    let old = Api::<Node>::all(bosun::cluster::client(&old_kubeconfig).await?);
    match old.get(NODE).await {
        Err(kube::Error::Api(status)) if status.code == 401 => {}
        other => panic!("the expired certificate: {other:?}"),
    }
    nodes.get(NODE).await?;

    rotation.abort();
    plane.shutdown().await
}
