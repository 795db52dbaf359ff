//! `bosun proxy` end to end: kube-proxy's job on a node whose pods bosun did not start,
//! against a real kube-apiserver (1.20.2) with kube-proxy's own identity (`system:kube-proxy`,
//! ClusterRole `system:node-proxier`), programming the real eBPF datapath on the host's
//! cgroup2 root; real connections from this process reach the "pods".
//!
//! The pods are network namespaces this test starts itself (a veth each, a server answering
//! with the pod's name): bosun knows them only through the EndpointSlice the test writes, as
//! kube-proxy knows pods another kubelet runs. 1.20 serves EndpointSlices as
//! `discovery.k8s.io/v1beta1` only, so this also covers bosun reading that version; v1 is
//! covered against the in-process fake (`cluster::datapath` tests).
//!
//! Host-wide names are each test's own: the pods' namespaces `bpx-*` / `bpp-*` and addresses
//! in 10.234.7.0/24 / 10.234.8.0/24, the ClusterIPs 10.96.234.x (asked for explicitly), the
//! bpffs directories /sys/fs/bpf/bosun-test-proxy, …-policy and …-hc, state directories under
//! their control plane's. So they run beside each other and the other tests. The health check
//! test listens on host ports in the NodePort range it finds free (see [`free_node_port`]).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use bosun_tests::cluster::free_port;
use bosun_tests::cluster::pod_at;
use bosun_tests::control_plane::{self, ControlPlane};
use bosun_tests::netns::{ask_tcp, NetnsPod};
use bosun_tests::traffic::{self, ClientLoop};
use serde_json::json;

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");
const BPF_DIR: &str = "/sys/fs/bpf/bosun-test-proxy";
const POLICY_BPF_DIR: &str = "/sys/fs/bpf/bosun-test-proxy-policy";
const HC_BPF_DIR: &str = "/sys/fs/bpf/bosun-test-proxy-hc";
const WITHIN: Duration = Duration::from_secs(30);
const CONNECT: Duration = Duration::from_secs(2);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 234, 10);

/// A running `bosun proxy`, killed when dropped; its log in a file.
struct ProxyProcess {
    child: tokio::process::Child,
    log: PathBuf,
}

impl ProxyProcess {
    async fn start(kubeconfig: &Path, healthz: u16, metrics: u16, log: &Path) -> Result<Self> {
        let state = log.with_file_name("proxy-state");
        Self::start_with(kubeconfig, BPF_DIR, &state, healthz, metrics, log).await
    }

    async fn start_with(
        kubeconfig: &Path,
        bpf_dir: &str,
        state_dir: &Path,
        healthz: u16,
        metrics: u16,
        log: &Path,
    ) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .context("the proxy's log")?;
        let child = tokio::process::Command::new(BOSUN)
            .arg("proxy")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--hostname-override", "proxy-node", "--bpf-dir", bpf_dir])
            // The machine's own uplink is not this test's to serve node ports on.
            .arg("--external-interfaces=none")
            .arg("--state-dir")
            .arg(state_dir)
            .arg(format!("--healthz-bind-address=127.0.0.1:{healthz}"))
            .arg(format!("--metrics-bind-address=127.0.0.1:{metrics}"))
            .env("RUST_LOG", "bosun=debug")
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .context("starting bosun proxy")?;
        Ok(ProxyProcess {
            child,
            log: log.to_owned(),
        })
    }

    /// SIGKILL, as the OOM killer or a node's crash would.
    async fn kill(mut self) -> Result<()> {
        self.child.kill().await.context("killing bosun proxy")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// An empty `KUBE-SERVICES` chain in the host's nat table, as kube-proxy leaves; deleted
/// when dropped (unless it was there before).
struct KubeProxyChain {
    created: bool,
}

impl KubeProxyChain {
    fn create() -> Result<Self> {
        let status = std::process::Command::new("iptables")
            .args(["-t", "nat", "-N", "KUBE-SERVICES"])
            .stderr(Stdio::null())
            .status()
            .context("running iptables")?;
        Ok(KubeProxyChain {
            created: status.success(),
        })
    }
}

impl Drop for KubeProxyChain {
    fn drop(&mut self) {
        if self.created {
            let _ = std::process::Command::new("iptables")
                .args(["-t", "nat", "-X", "KUBE-SERVICES"])
                .status();
        }
    }
}

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

/// The name of whoever answered a connection to `to`.
fn name_at(to: SocketAddr) -> Result<String> {
    Ok(ask_tcp(to, CONNECT)?.name)
}

/// Waits until connections to `to` are answered by exactly `names`.
async fn until_answered_by(to: SocketAddr, names: &[&str]) -> Result<()> {
    traffic::until_answered_by(to, names, name_at, WITHIN).await
}

/// Whether a connection to the server `to` is answered by it within a short time (a
/// dropped SYN is a timeout).
fn reaches_server(to: SocketAddr) -> bool {
    ask_tcp(to, Duration::from_millis(500)).is_ok_and(|a| a.name == "server")
}

/// Waits until the server `to` is reachable from `from`, or not (`want`).
async fn until_reaches(from: &NetnsPod, to: SocketAddr, want: bool) -> Result<()> {
    traffic::until_reached(from, to, reaches_server, want, WITHIN).await
}

/// An HTTP GET of `path` on 127.0.0.1:`port`: the status code and the body.
async fn get(port: u16, path: &str) -> Result<(u16, String)> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(CONNECT))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let code = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("a status line")?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((code, body))
    })
    .await?
}

fn manifest(ips: &[Ipv4Addr]) -> String {
    let endpoints: Vec<String> = ips
        .iter()
        .map(|ip| {
            format!("  - addresses: [\"{ip}\"]\n    conditions: {{ready: true}}\n    topology: {{kubernetes.io/hostname: other-node}}\n")
        })
        .collect();
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIP: {VIP}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
{}",
        endpoints.concat()
    )
}

async fn apply(plane: &ControlPlane, dir: &Path, yaml: &str) -> Result<()> {
    let file = dir.join("web.yaml");
    std::fs::write(&file, yaml)?;
    plane
        .kubectl(["apply", "-f", &file.to_string_lossy()])
        .await
        .map(drop)
}

async fn cleanup() -> Result<()> {
    cleanup_dir(BPF_DIR).await
}

async fn cleanup_dir(bpf_dir: &str) -> Result<()> {
    let out = tokio::process::Command::new(BOSUN)
        .args(["proxy", "--cleanup", "--bpf-dir", bpf_dir])
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "bosun proxy --cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bosun_proxy_serves_the_clusters_services_and_survives_kill_9() -> Result<()> {
    control_plane::require();
    // A killed run's datapath goes first.
    cleanup().await?;
    let plane = ControlPlane::start("proxy").await?;
    let dir = plane.dir().to_owned();
    let log = dir.join("bosun-proxy.log");
    let result = scenario(&plane, &dir, &log).await;
    if result.is_err() {
        eprintln!(
            "--- bosun proxy's log ---\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    let cleaned = cleanup().await;
    plane.shutdown().await?;
    result.and(cleaned)
}

async fn scenario(plane: &ControlPlane, dir: &Path, log: &Path) -> Result<()> {
    let base = |i: u8| Ipv4Addr::new(10, 234, 7, i * 4);
    let mut a = NetnsPod::create("bpx-a", "bpxh0", base(0))?;
    let mut b = NetnsPod::create("bpx-b", "bpxh1", base(1))?;
    a.serve_tcp(8080, "a")?;
    b.serve_tcp(8080, "b")?;
    apply(plane, dir, &manifest(&[a.ip(), b.ip()])).await?;

    let kubeconfig = plane.proxy_kubeconfig().await?;
    let (healthz, metrics) = (free_port()?, free_port()?);
    // kube-proxy's chain on the node: bosun says so at start-up. (An empty chain nothing
    // jumps to, host-wide for a moment; no other test looks for it.)
    let chain = KubeProxyChain::create()?;
    let proxy = ProxyProcess::start(&kubeconfig, healthz, metrics, log).await?;
    until_answered_by(at(VIP, 80), &["a", "b"]).await?;
    drop(chain);
    assert!(
        proxy.log().contains("kube-proxy's rules are on this node"),
        "{}",
        proxy.log()
    );

    // kube-proxy's health and metrics endpoints.
    let (code, body) = get(healthz, "/healthz").await?;
    assert_eq!(code, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).context("/healthz's JSON")?;
    assert!(health["lastUpdated"].is_string(), "{health}");
    assert_eq!(health["nodeEligible"], true, "{health}");
    assert_eq!(get(healthz, "/livez").await?.0, 200);
    let (code, text) = get(metrics, "/metrics").await?;
    assert_eq!(code, 200);
    assert!(
        text.contains("kubeproxy_sync_proxy_rules_duration_seconds"),
        "{text}"
    );

    // An endpoint leaves its slice: it leaves the datapath.
    apply(plane, dir, &manifest(&[b.ip()])).await?;
    until_answered_by(at(VIP, 80), &["b"]).await?;
    apply(plane, dir, &manifest(&[a.ip(), b.ip()])).await?;
    until_answered_by(at(VIP, 80), &["a", "b"]).await?;

    // Killed under load and started again: not one connection fails, and the new process
    // adopts the maps and follows changes made while none ran.
    let looping = ClientLoop::start(|| ask_tcp(at(VIP, 80), CONNECT).map(drop).map_err(Into::into));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let first_log = proxy.log();
    proxy.kill().await?;
    apply(plane, dir, &manifest(&[a.ip()])).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let proxy = ProxyProcess::start(&kubeconfig, healthz, metrics, log).await?;
    until_answered_by(at(VIP, 80), &["a"]).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, failed) = looping.stop().await?;
    assert!(
        failed.is_empty(),
        "{} of {} connections failed: {failed:?}",
        failed.len(),
        ok + failed.len()
    );
    assert!(ok > 50, "only {ok} connections");
    assert!(
        first_log.contains("bosun proxy running"),
        "the first run's log: {first_log}"
    );
    proxy.kill().await?;

    // --cleanup: the ClusterIP is an ordinary address again.
    cleanup().await?;
    assert!(!Path::new(BPF_DIR).exists(), "{BPF_DIR} is still there");
    let answer = tokio::task::spawn_blocking(|| {
        ask_tcp(at(VIP, 80), Duration::from_millis(300)).map(|a| a.name)
    })
    .await?;
    assert!(answer.is_err(), "the ClusterIP still reaches {answer:?}");
    drop((a, b));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bosun_proxy_enforces_network_policy_for_pods_it_did_not_start() -> Result<()> {
    control_plane::require();
    cleanup_dir(POLICY_BPF_DIR).await?;
    let plane = ControlPlane::start("proxy-policy").await?;
    let dir = plane.dir().to_owned();
    let log = dir.join("bosun-proxy.log");
    let result = policy_scenario(&plane, &dir, &log).await;
    if result.is_err() {
        eprintln!(
            "--- bosun proxy's log ---\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    let cleaned = cleanup_dir(POLICY_BPF_DIR).await;
    plane.shutdown().await?;
    result.and(cleaned)
}

async fn policy_scenario(plane: &ControlPlane, dir: &Path, log: &Path) -> Result<()> {
    let base = |i: u8| Ipv4Addr::new(10, 234, 8, i * 4);
    // The server on this node; a client the policy allows, on another node; and a stranger.
    let mut server = NetnsPod::create("bpp-server", "bpph0", base(0))?;
    server.serve_tcp(8080, "server")?;
    let client = NetnsPod::create("bpp-client", "bpph1", base(1))?;
    let stranger = NetnsPod::create("bpp-stranger", "bpph2", base(2))?;
    let admin = plane.admin_client().await?;
    pod_at(
        &admin,
        "server",
        "proxy-node",
        json!({"app": "server"}),
        server.ip(),
    )
    .await?;
    pod_at(
        &admin,
        "client",
        "other-node",
        json!({"role": "client"}),
        client.ip(),
    )
    .await?;
    pod_at(
        &admin,
        "stranger",
        "other-node",
        json!({"role": "none"}),
        stranger.ip(),
    )
    .await?;
    let to = at(server.ip(), 8080);
    assert!(
        tokio::task::block_in_place(|| stranger.enter(move || Ok(reaches_server(to))))?,
        "no policy yet"
    );

    let kubeconfig = plane.proxy_kubeconfig().await?;
    let (healthz, metrics) = (free_port()?, free_port()?);
    let state = dir.join("proxy-state");
    let proxy =
        ProxyProcess::start_with(&kubeconfig, POLICY_BPF_DIR, &state, healthz, metrics, log)
            .await?;
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-clients, namespace: default}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{port: http}]
",
    )?;
    plane
        .kubectl(["apply", "-f", &policy.to_string_lossy()])
        .await?;
    // The client, a pod of another node known only through the API, is let in by label;
    // the stranger is not.
    until_reaches(&stranger, to, false).await?;
    until_reaches(&client, to, true).await?;

    // Its labels change: it is a stranger too.
    plane
        .kubectl(["label", "pod", "client", "role=other", "--overwrite"])
        .await?;
    until_reaches(&client, to, false).await?;
    // The policy goes: everyone is let in again.
    plane
        .kubectl(["delete", "networkpolicy", "only-clients"])
        .await?;
    until_reaches(&stranger, to, true).await?;
    until_reaches(&client, to, true).await?;
    assert!(
        proxy.log().contains("network policy in place"),
        "{}",
        proxy.log()
    );
    proxy.kill().await?;
    drop((server, client, stranger));
    Ok(())
}

/// The API server's NodePort range (its default `--service-node-port-range`).
const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// A port of the NodePort range nothing on this host listens on now, other than `except`.
/// The range lies below the kernel's ephemeral ports (32768 and up), so no other test's
/// connections or `free_port()` land in it; starting from this process's id spreads
/// concurrent runs over it.
fn free_node_port(except: &[u16]) -> Result<u16> {
    let (first, count) = (*NODE_PORTS.start(), NODE_PORTS.len() as u32);
    let start = std::process::id() % count;
    (0..count)
        .map(|i| first + ((start + i) % count) as u16)
        .filter(|port| !except.contains(port))
        .find(|port| std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, *port)).is_ok())
        .context("no free port in the NodePort range")
}

/// A `LoadBalancer` Service `name` with `externalTrafficPolicy: Local` and its health check
/// on `health_port`, and its slice with one ready endpoint on `node`.
fn local_load_balancer(
    name: &str,
    vip: Ipv4Addr,
    health_port: u16,
    node_port: u16,
    node: &str,
) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  type: LoadBalancer
  clusterIP: {vip}
  externalTrafficPolicy: Local
  healthCheckNodePort: {health_port}
  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: {node_port}}}]
---
apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: default
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
  - addresses: [\"10.234.9.4\"]
    conditions: {{ready: true}}
    topology: {{kubernetes.io/hostname: {node}}}
"
    )
}

/// Waits until GET on `port` answers `code` with `local_endpoints`; the body.
async fn until_health_check(
    port: u16,
    code: u16,
    local_endpoints: u64,
) -> Result<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + WITHIN;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        match get(port, "/").await {
            Ok((got, body)) => {
                let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                if got == code && json["localEndpoints"] == local_endpoints {
                    return Ok(json);
                }
                last = format!("{got} {body}");
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!(
        "port {port} never answered {code} with {local_endpoints} local endpoints; last: {last}"
    )
}

/// Waits until nothing listens on `port`.
async fn until_closed(port: u16) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WITHIN;
    while tokio::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("port {port} is still open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bosun_proxy_serves_health_check_node_ports_of_local_load_balancers() -> Result<()> {
    control_plane::require();
    cleanup_dir(HC_BPF_DIR).await?;
    let plane = ControlPlane::start("proxy-hc").await?;
    let dir = plane.dir().to_owned();
    let log = dir.join("bosun-proxy.log");
    let result = health_check_scenario(&plane, &dir, &log).await;
    if result.is_err() {
        eprintln!(
            "--- bosun proxy's log ---\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    let cleaned = cleanup_dir(HC_BPF_DIR).await;
    plane.shutdown().await?;
    result.and(cleaned)
}

async fn health_check_scenario(plane: &ControlPlane, dir: &Path, log: &Path) -> Result<()> {
    let health_port = free_node_port(&[])?;
    let node_port = free_node_port(&[health_port])?;
    // The endpoint's address is only written in the slice: the health check counts it, no
    // connection goes to it.
    let vip = Ipv4Addr::new(10, 96, 234, 30);
    apply(
        plane,
        dir,
        &local_load_balancer("lb", vip, health_port, node_port, "proxy-node"),
    )
    .await?;
    let kubeconfig = plane.proxy_kubeconfig().await?;
    let (healthz, metrics) = (free_port()?, free_port()?);
    let state = dir.join("proxy-state");
    let proxy =
        ProxyProcess::start_with(&kubeconfig, HC_BPF_DIR, &state, healthz, metrics, log).await?;

    // Its endpoint is on this node: 200, with kube-proxy's body.
    let body = until_health_check(health_port, 200, 1).await?;
    assert_eq!(
        body,
        json!({
            "service": {"namespace": "default", "name": "lb"},
            "localEndpoints": 1,
            "serviceProxyHealthy": true
        })
    );
    // On another node only: 503, and load balancers leave this node out.
    apply(
        plane,
        dir,
        &local_load_balancer("lb", vip, health_port, node_port, "other-node"),
    )
    .await?;
    let body = until_health_check(health_port, 503, 0).await?;
    assert_eq!(body["serviceProxyHealthy"], true, "{body}");

    // A second such Service whose port something else holds: a Warning event on it naming
    // the field and the port, and the first Service's check goes on.
    let busy_port = free_node_port(&[health_port, node_port])?;
    let busy_node_port = free_node_port(&[health_port, node_port, busy_port])?;
    let holder = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, busy_port))
        .context("holding the second Service's health check port")?;
    let busy = local_load_balancer(
        "busy",
        Ipv4Addr::new(10, 96, 234, 31),
        busy_port,
        busy_node_port,
        "proxy-node",
    );
    let file = dir.join("busy.yaml");
    std::fs::write(&file, busy)?;
    plane
        .kubectl(["apply", "-f", &file.to_string_lossy()])
        .await?;
    let message = until_event(plane, "busy", "FailedToStartServiceHealthcheck").await?;
    assert!(
        message.starts_with(&format!(
            "spec.healthCheckNodePort: \"{busy_port}\": node proxy-node failed to start healthcheck \"default/busy\" on port {busy_port}"
        )),
        "{message}"
    );
    assert_eq!(get(health_port, "/").await?.0, 503);
    drop(holder);
    plane
        .kubectl(["delete", "-f", &file.to_string_lossy()])
        .await?;

    // Two Services asking for one external IP and port: the first by name has it, and the
    // other is told why not in a Warning event, naming the field and the value.
    let file = dir.join("claims.yaml");
    let claim = |name: &str| {
        format!(
            "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  externalIPs: [10.234.9.200]
  ports: [{{name: http, port: 8081, targetPort: 8080}}]
"
        )
    };
    std::fs::write(
        &file,
        format!("{}---\n{}", claim("claim-a"), claim("claim-b")),
    )?;
    plane
        .kubectl(["apply", "-f", &file.to_string_lossy()])
        .await?;
    let message = until_event(plane, "claim-b", "FailedToProgramService").await?;
    assert!(
        message.starts_with("spec.externalIPs[0]: \"10.234.9.200\": frontend 10.234.9.200:8081")
            && message.contains("default/claim-a"),
        "{message}"
    );
    plane
        .kubectl(["delete", "-f", &file.to_string_lossy()])
        .await?;

    // The Service goes: so does its health check.
    plane.kubectl(["delete", "service", "lb"]).await?;
    until_closed(health_port).await?;
    until_closed(busy_port).await?;
    proxy.kill().await?;
    Ok(())
}

/// Waits for an event of `reason` on the Service `service`; its message.
async fn until_event(plane: &ControlPlane, service: &str, reason: &str) -> Result<String> {
    let deadline = tokio::time::Instant::now() + WITHIN;
    while tokio::time::Instant::now() < deadline {
        let listed = plane
            .kubectl([
                "get",
                "events",
                "--field-selector",
                &format!(
                    "involvedObject.kind=Service,involvedObject.name={service},reason={reason}"
                ),
                "-o",
                "json",
            ])
            .await?;
        let listed: serde_json::Value = serde_json::from_str(&listed)?;
        if let Some(message) = listed["items"][0]["message"].as_str() {
            return Ok(message.to_owned());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("no {reason} event on Service {service}")
}
