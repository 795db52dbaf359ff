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
//! Host-wide names are this test's own: the pods' namespaces `bpx-*` and addresses in
//! 10.234.7.0/24, the ClusterIPs 10.96.234.x (asked for explicitly), the bpffs directory
//! /sys/fs/bpf/bosun-test-proxy. So it runs beside the other tests.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bosun_tests::cluster::free_port;
use bosun_tests::control_plane::{self, ControlPlane};
use bosun_tests::netns::{ask_tcp, NetnsPod};

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");
const BPF_DIR: &str = "/sys/fs/bpf/bosun-test-proxy";
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
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .context("the proxy's log")?;
        let child = tokio::process::Command::new(BOSUN)
            .arg("proxy")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--hostname-override", "proxy-node", "--bpf-dir", BPF_DIR])
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

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

/// The names `n` connections to `to` were answered with (on a blocking thread).
async fn names_of(to: SocketAddr, n: usize) -> Result<BTreeSet<String>> {
    tokio::task::spawn_blocking(move || {
        (0..n)
            .map(|_| ask_tcp(to, CONNECT).map(|a| a.name).map_err(Into::into))
            .collect::<Result<BTreeSet<String>>>()
    })
    .await?
}

/// Waits until connections to `to` are answered by exactly `names`.
async fn until_answered_by(to: SocketAddr, names: &[&str]) -> Result<()> {
    let wanted: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
    let deadline = Instant::now() + WITHIN;
    let mut last = Err(anyhow::anyhow!("not asked yet"));
    while Instant::now() < deadline {
        last = names_of(to, 24).await;
        if last.as_ref().is_ok_and(|got| *got == wanted) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{to} never answered by exactly {wanted:?}; last: {last:?}")
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

/// A client connecting to `to` in a loop until stopped: successes and failures.
struct ClientLoop {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl ClientLoop {
    fn start(to: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::task::spawn_blocking(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                match ask_tcp(to, CONNECT) {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (ok, failed)
        });
        ClientLoop { stop, task }
    }

    async fn stop(self) -> Result<(usize, Vec<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.task.await?)
    }
}

async fn cleanup() -> Result<()> {
    let out = tokio::process::Command::new(BOSUN)
        .args(["proxy", "--cleanup", "--bpf-dir", BPF_DIR])
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
    let proxy = ProxyProcess::start(&kubeconfig, healthz, metrics, log).await?;
    until_answered_by(at(VIP, 80), &["a", "b"]).await?;

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
    let looping = ClientLoop::start(at(VIP, 80));
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
