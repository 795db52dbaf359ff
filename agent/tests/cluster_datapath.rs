//! bosun's datapath fed by the API server, on a node it runs as kubelet: a Service whose
//! EndpointSlices kube-controller-manager (1.20: `discovery.k8s.io/v1beta1`) writes for pods
//! bosun runs, reached from the host through the ClusterIP; a pod failing readiness taken out
//! of the datapath before its slice says so; and a NetworkPolicy whose allowed peer is a pod
//! of another node, known only through the API.
//!
//! The test's own "pods of another node" are network namespaces (`bcd<slot>*`, addresses in
//! 10.234.<10 + slot>.0/24) with Pod objects bound to `node2` whose status this test writes,
//! as node2's kubelet would. Everything else is the test node's, numbered by its slot.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bosun_tests::cluster::pod_at;
use bosun_tests::cluster::{self, get_json, in_a_cluster, wait_for};
use bosun_tests::control_plane::ControlPlane;
use bosun_tests::daemon::{container_id, sh, NODE_NAME};
use bosun_tests::netns::NetnsPod;
use bosun_tests::node::TestNode;
use bosun_tests::traffic::{http_get, until_answered_by, until_reached, web_pod};
use serde_json::json;
use serde_json::Value;

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");
const WITHIN: Duration = Duration::from_secs(60);

async fn apply(plane: &ControlPlane, node: &TestNode, name: &str, manifest: &str) -> Result<()> {
    let file = node.dir().join(format!("{name}.yaml"));
    std::fs::write(&file, manifest)?;
    plane
        .kubectl(["apply", "-f", &file.to_string_lossy()])
        .await
        .map(drop)
}

/// Waits until GETs of `to` are answered by exactly `wanted`.
async fn until_names(to: SocketAddr, wanted: &[&str]) -> Result<()> {
    until_answered_by(to, wanted, http_get, WITHIN).await
}

/// Waits until an HTTP GET of `to` from `from` is answered, or not (`want`).
async fn until_reaches(from: &NetnsPod, to: SocketAddr, want: bool) -> Result<()> {
    until_reached(from, to, http_answers, want, WITHIN).await
}

/// Whether an HTTP GET from the calling thread's namespace gets an answer in 500 ms.
fn http_answers(to: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&to, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut response = String::new();
    stream.read_to_string(&mut response).is_ok() && response.starts_with("HTTP/")
}

/// The backends the pinned maps hold for `vip`:80, as `bosun dp services` reads them.
async fn dp_backends(node: &TestNode, vip: Ipv4Addr) -> Result<usize> {
    let out = tokio::process::Command::new(BOSUN)
        .args(["dp", "services", "-o", "json", "--bpf-dir"])
        .arg(node.bpf_dir())
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let services: Value = serde_json::from_slice(&out.stdout)?;
    let frontend = format!("{vip}");
    Ok(services
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["frontend"]["address"] == frontend.as_str() && s["frontend"]["port"] == 80)
        .map_or(0, |s| s["backends"].as_array().map_or(0, Vec::len)))
}

/// Whether web-1's endpoint in the API's EndpointSlices of `web` is ready.
async fn ready_in_api(plane: &ControlPlane, ip: &str) -> Result<Option<bool>> {
    let slices = get_json(
        plane,
        &[
            "endpointslices.v1beta1.discovery.k8s.io",
            "-l",
            "kubernetes.io/service-name=web",
        ],
    )
    .await?;
    Ok(slices["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
        .find(|e| e["addresses"][0] == ip)
        .map(|e| e["conditions"]["ready"] != false))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_servers_services_and_policies_reach_the_datapath() -> Result<()> {
    in_a_cluster("datapath", |plane, node| async move {
        let daemon = match cluster::join(BOSUN.as_ref(), &plane, &node, &[]).await {
            Ok(daemon) => daemon,
            Err(e) => panic!("starting bosun: {e:#}"),
        };
        let result = async {
            let spec = format!("  nodeName: {NODE_NAME}\n  automountServiceAccountToken: false\n");
            apply(&plane, &node, "web-1", &web_pod("web-1", &spec)).await?;
            apply(&plane, &node, "web-2", &web_pod("web-2", &spec)).await?;
            let service = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: http}]\n";
            apply(&plane, &node, "web-service", service).await?;
            let ready = |p: &Value| bosun_tests::cluster::condition(p, "Ready") == "True";
            let web_1 = wait_for(&plane, &["pod", "web-1"], WITHIN, ready).await?;
            wait_for(&plane, &["pod", "web-2"], WITHIN, ready).await?;
            let vip: Ipv4Addr = get_json(&plane, &["service", "web"]).await?["spec"]["clusterIP"]
                .as_str()
                .context("a cluster IP")?
                .parse()?;
            let to = SocketAddr::V4(SocketAddrV4::new(vip, 80));
            until_names(to, &["web-1", "web-2"]).await?;

            // web-1 fails readiness: the datapath drops it, before or as the API's slice
            // says so (both times are printed).
            let web_1_ip = web_1["status"]["podIP"].as_str().context("web-1's IP")?.to_owned();
            let cri = node.cri().await?;
            sh(&cri, &container_id(&web_1, "app"), "rm /tmp/ready").await?;
            let failed = Instant::now();
            let (mut in_datapath, mut in_api) = (None, None);
            while (in_datapath.is_none() || in_api.is_none()) && failed.elapsed() < WITHIN {
                if in_datapath.is_none() && dp_backends(&node, vip).await? == 1 {
                    in_datapath = Some(failed.elapsed());
                }
                if in_api.is_none() && ready_in_api(&plane, &web_1_ip).await? == Some(false) {
                    in_api = Some(failed.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            eprintln!("web-1 failed readiness: out of the datapath after {in_datapath:?}, not ready in the API's slice after {in_api:?}");
            ensure!(in_datapath.is_some() && in_api.is_some(), "web-1 never left: datapath {in_datapath:?}, API {in_api:?}");
            until_names(to, &["web-2"]).await?;
            sh(&cri, &container_id(&web_1, "app"), "touch /tmp/ready").await?;
            until_names(to, &["web-1", "web-2"]).await?;

            // A policy on the web pods lets in clients of another node by their labels.
            let slot = node.slot() as u8;
            let base = |i: u8| Ipv4Addr::new(10, 234, 10 + slot, i * 4);
            let client = NetnsPod::create(&format!("bcd{slot}-client"), &format!("bcd{slot}h0"), base(0))?;
            let stranger = NetnsPod::create(&format!("bcd{slot}-stranger"), &format!("bcd{slot}h1"), base(1))?;
            let admin = plane.admin_client().await?;
            pod_at(&admin, "client", "node2", json!({"role": "client"}), client.ip()).await?;
            pod_at(&admin, "stranger", "node2", json!({"role": "none"}), stranger.ip()).await?;
            let direct = SocketAddr::V4(SocketAddrV4::new(web_1_ip.parse()?, 8080));
            until_reaches(&stranger, direct, true).await?;
            let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-clients, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {role: client}}}]\n    ports: [{port: http}]\n";
            apply(&plane, &node, "policy", policy).await?;
            until_reaches(&stranger, direct, false).await?;
            until_reaches(&client, direct, true).await?;
            // The host (kubelet's probes) still gets through, and so does the Service.
            until_names(to, &["web-1", "web-2"]).await?;
            drop((client, stranger));
            Ok(())
        }
        .await;
        (plane, node, daemon, result)
    })
    .await
}
