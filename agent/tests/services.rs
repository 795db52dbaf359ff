//! Services end to end: `bosun run` reads Services and EndpointSlices from its manifest
//! directory (and computes endpoints from its static pods), programs the real eBPF datapath on
//! the host's cgroup2 root, and real connections from this process reach "pods" — network
//! namespaces answering with their name, or real containerd pods.
//!
//! Each test runs on its own test node, whose slot numbers everything host-wide it touches:
//! the bpffs directory (`TestNode::bpf_dir`), the namespaces and veths (`bsv<slot>…`), the pod
//! addresses (10.230.<slot>.0/24) and the VIPs (10.231.<slot>.0/24). So the tests may run at
//! once; their programs all sit on the root cgroup, and each rewrites only its own VIPs.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bosun_tests::daemon::{self, container_id, ready, sh, Daemon};
use bosun_tests::netns::{ask_tcp, ask_udp, echo_line, NetnsPod};
use bosun_tests::node::TestNode;
use bosun_tests::traffic::{http_get, http_names, web_pod, ClientLoop};
use serde_json::Value;

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");
const WITHIN: Duration = Duration::from_secs(30);
const CONNECT: Duration = Duration::from_secs(2);

async fn on_a_node<F, Fut>(name: &str, scenario: F) -> Result<()>
where
    F: FnOnce(TestNode, Daemon) -> Fut,
    Fut: std::future::Future<Output = (TestNode, Result<()>)>,
{
    daemon::on_a_node(Path::new(BOSUN), name, "", scenario).await
}

/// Addresses and names of one node's test network.
struct Net {
    slot: u16,
}

impl Net {
    fn of(node: &TestNode) -> Self {
        Net { slot: node.slot() }
    }

    /// A namespace "pod" named `name`, the `index`th of this node.
    fn pod(&self, index: u8, name: &str) -> Result<NetnsPod> {
        let base = Ipv4Addr::new(10, 230, self.slot as u8, index * 4);
        NetnsPod::create(
            &format!("bsv{}-{name}", self.slot),
            &format!("bsv{}h{index}", self.slot),
            base,
        )
    }

    /// Namespace pods named `names`, each answering on port 8080 with its name.
    fn pods(&self, names: &[&str], protocol: Protocol) -> Result<(Vec<NetnsPod>, Vec<Ipv4Addr>)> {
        let mut pods = Vec::new();
        for (index, name) in names.iter().enumerate() {
            let mut pod = self.pod(index as u8, name)?;
            match protocol {
                Protocol::Tcp => pod.serve_tcp(8080, name)?,
                Protocol::Udp => pod.serve_udp(8080, name)?,
            }
            pods.push(pod);
        }
        let ips = pods.iter().map(NetnsPod::ip).collect();
        Ok((pods, ips))
    }

    fn vip(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.slot as u8, last)
    }
}

#[derive(Clone, Copy)]
enum Protocol {
    Tcp,
    Udp,
}

fn service(name: &str, vip: Ipv4Addr, port: u16, protocol: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  clusterIP: {vip}\n  ports:\n  - port: {port}\n    protocol: {protocol}\n    targetPort: 8080\n{extra}"
    )
}

/// An EndpointSlice of Service `service` with the given (at least one) ready endpoints on
/// port 8080.
fn slice(service: &str, protocol: &str, endpoints: &[Ipv4Addr]) -> String {
    let mut text = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-1\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nports:\n- port: 8080\n  protocol: {protocol}\nendpoints:\n"
    );
    for ip in endpoints {
        text.push_str(&format!(
            "- addresses: [\"{ip}\"]\n  conditions: {{ready: true}}\n"
        ));
    }
    text
}

/// A Service (as [`service`]) and its EndpointSlice (as [`slice`]), as one manifest.
fn service_and_slice(
    name: &str,
    vip: Ipv4Addr,
    port: u16,
    protocol: &str,
    extra: &str,
    endpoints: &[Ipv4Addr],
) -> String {
    format!(
        "{}---\n{}",
        service(name, vip, port, protocol, extra),
        slice(name, protocol, endpoints)
    )
}

/// `bosun ARGS -o json`, parsed.
async fn bosun_json(args: &[&str]) -> Result<Value> {
    let output = tokio::process::Command::new(BOSUN)
        .args(args)
        .args(["-o", "json"])
        .output()
        .await?;
    if !output.status.success() {
        bail!(
            "bosun {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// What `bosun dp services` shows for the frontend `vip:port`: its backends, by slot.
async fn dp_backends(node: &TestNode, vip: Ipv4Addr, port: u16) -> Result<Option<Vec<String>>> {
    let bpf_dir = node.bpf_dir();
    let bpf_dir = bpf_dir.to_string_lossy();
    let services = bosun_json(&["dp", "services", "--bpf-dir", &bpf_dir]).await?;
    let vip = vip.to_string();
    Ok(services.as_array().and_then(|all| {
        let found = all
            .iter()
            .find(|s| s["frontend"]["address"] == vip.as_str() && s["frontend"]["port"] == port)?;
        Some(
            found["backends"]
                .as_array()?
                .iter()
                .map(|b| b["address"]["address"].as_str().unwrap_or("?").to_owned())
                .collect(),
        )
    }))
}

/// Waits until the maps hold `vip:port` with exactly `count` backends.
async fn wait_for_backends(node: &TestNode, vip: Ipv4Addr, port: u16, count: usize) -> Result<()> {
    let deadline = Instant::now() + WITHIN;
    loop {
        let backends = dp_backends(node, vip, port).await.ok().flatten();
        if backends.as_ref().is_some_and(|b| b.len() == count) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{vip}:{port} never had {count} backends in the maps; last: {backends:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs blocking socket work off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// The names of whoever answered `n` connections to `to`.
async fn names_of(to: SocketAddr, n: usize) -> Result<Vec<String>> {
    blocking(move || {
        (0..n)
            .map(|_| {
                let answer = ask_tcp(to, CONNECT).with_context(|| format!("connecting to {to}"))?;
                if answer.peer != to {
                    bail!("getpeername says {}, not the VIP {to}", answer.peer);
                }
                Ok(answer.name)
            })
            .collect()
    })
    .await
}

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_spread_over_endpoints_and_follow_their_slice() -> Result<()> {
    on_a_node("svc-spread", |node, daemon| async move {
        let result = async {
            let net = Net::of(&node);
            let (pods, ips) = net.pods(&["a", "b", "c"], Protocol::Tcp)?;
            let (vip, empty_vip) = (net.vip(10), net.vip(11));
            daemon.write_manifest(
                "web.yaml",
                &format!(
                    "{}---\n{}",
                    service_and_slice("web", vip, 80, "TCP", "", &ips),
                    service("empty", empty_vip, 80, "TCP", "")
                ),
            )?;
            wait_for_backends(&node, vip, 80, 3).await?;

            // Every endpoint gets connections, and each connection's peer is the VIP.
            let names: BTreeSet<String> = names_of(at(vip, 80), 60).await?.into_iter().collect();
            assert_eq!(names, BTreeSet::from(["a".into(), "b".into(), "c".into()]));

            // A Service without endpoints refuses at once, as kube-proxy's REJECT does.
            wait_for_backends(&node, empty_vip, 80, 0).await?;
            let started = Instant::now();
            let refused =
                blocking(move || Ok(TcpStream::connect_timeout(&at(empty_vip, 80), CONNECT)))
                    .await?
                    .expect_err("a Service without endpoints accepts nothing");
            assert_eq!(
                refused.kind(),
                std::io::ErrorKind::ConnectionRefused,
                "{refused}"
            );
            assert!(
                started.elapsed() < Duration::from_millis(500),
                "{:?}",
                started.elapsed()
            );

            // What the daemon desires, through its API.
            let services = bosun_json(&[
                "get",
                "services",
                "--root-dir",
                &daemon.root().to_string_lossy(),
            ])
            .await?;
            let listed: Vec<&str> = services["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["metadata"]["name"].as_str())
                .collect();
            assert_eq!(listed, ["empty", "web"]);

            // An established connection to c outlives c's removal from the slice; new ones
            // no longer reach it.
            let mut to_c = blocking(move || {
                for _ in 0..200 {
                    let answer = ask_tcp(at(vip, 80), CONNECT)?;
                    if answer.name == "c" {
                        return Ok(answer.stream);
                    }
                }
                bail!("200 connections and none reached c")
            })
            .await?;
            daemon.write_manifest(
                "web.yaml",
                &format!(
                    "{}---\n{}",
                    service_and_slice("web", vip, 80, "TCP", "", &ips[..2]),
                    service("empty", empty_vip, 80, "TCP", "")
                ),
            )?;
            wait_for_backends(&node, vip, 80, 2).await?;
            let names = names_of(at(vip, 80), 40).await?;
            assert!(!names.iter().any(|n| n == "c"), "{names:?}");
            let echoed = blocking(move || Ok(echo_line(&mut to_c, "still there?")?)).await?;
            assert_eq!(echoed, "still there?");
            drop(pods);
            Ok(())
        }
        .await;
        (node, result)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_replies_come_from_the_vip() -> Result<()> {
    on_a_node("svc-udp", |node, daemon| async move {
        let result = async {
            let net = Net::of(&node);
            let (pods, ips) = net.pods(&["dns-a", "dns-b"], Protocol::Udp)?;
            let vip = net.vip(53);
            daemon.write_manifest(
                "dns.yaml",
                &service_and_slice("dns", vip, 53, "UDP", "", &ips),
            )?;
            wait_for_backends(&node, vip, 53, 2).await?;
            let answers = blocking(move || {
                (0..30)
                    .map(|_| Ok(ask_udp(at(vip, 53), CONNECT)?))
                    .collect::<Result<Vec<_>>>()
            })
            .await?;
            for (name, from) in &answers {
                assert_eq!(*from, at(vip, 53), "{name} answered from {from}");
            }
            let names: BTreeSet<&str> = answers.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, BTreeSet::from(["dns-a", "dns-b"]));
            drop(pods);
            Ok(())
        }
        .await;
        (node, result)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_affinity_holds_then_expires() -> Result<()> {
    on_a_node("svc-affinity", |node, daemon| async move {
        let result = async {
            let net = Net::of(&node);
            let (pods, ips) = net.pods(&["s1", "s2", "s3"], Protocol::Tcp)?;
            let vip = net.vip(20);
            let affinity = "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 2\n";
            daemon.write_manifest(
                "sticky.yaml",
                &service_and_slice("sticky", vip, 80, "TCP", affinity, &ips),
            )?;
            wait_for_backends(&node, vip, 80, 3).await?;
            let names = names_of(at(vip, 80), 15).await?;
            assert!(names.iter().all(|n| *n == names[0]), "affinity broke: {names:?}");

            // After the timeout with no connection, the client is free to land elsewhere: over
            // ten expiries, staying with the same backend every time has odds of 3^-10.
            let first = names[0].clone();
            let mut elsewhere = None;
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(2300)).await;
                let name = names_of(at(vip, 80), 1).await?.remove(0);
                if name != first {
                    elsewhere = Some(name);
                    break;
                }
            }
            assert!(elsewhere.is_some(), "still on {first} after ten timeouts");
            drop(pods);
            Ok(())
        }
        .await;
        (node, result)
    })
    .await
}

/// A busybox httpd pod labelled app=web that serves its own name and is Ready while
/// /tmp/ready exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_failing_readiness_leaves_its_service() -> Result<()> {
    on_a_node("svc-ready", |node, daemon| async move {
        let result = async {
            let vip = Net::of(&node).vip(30);
            daemon.write_manifest("web-1.yaml", &web_pod("web-1", ""))?;
            daemon.write_manifest("web-2.yaml", &web_pod("web-2", ""))?;
            daemon.write_manifest(
                "svc.yaml",
                &format!(
                    "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  clusterIP: {vip}\n  selector: {{app: web}}\n  ports:\n  - port: 80\n    targetPort: http\n"
                ),
            )?;
            let web_1 = daemon.wait_for("web-1", "Ready", WITHIN, ready).await?;
            daemon.wait_for("web-2", "Ready", WITHIN, ready).await?;
            wait_for_backends(&node, vip, 80, 2).await?;
            let names = http_names(at(vip, 80), 30).await?;
            assert_eq!(names, BTreeSet::from(["web-1".into(), "web-2".into()]));

            // From inside a pod too: the hook is on the cgroup root, above every container.
            let client = node.cri().await?;
            let web_2 = daemon.pod("web-2").await.context("web-2 is listed")?;
            let from_pod = sh(
                &client,
                &container_id(&web_2, "app"),
                &format!("for i in 1 2 3 4 5 6 7 8; do timeout 5 wget -q -O - http://{vip}/index.html; done"),
            )
            .await?;
            assert!(from_pod.contains("web-1") && from_pod.contains("web-2"), "{from_pod}");

            // web-1 fails its readiness probe: it leaves the Service, then comes back.
            let id = container_id(&web_1, "app");
            sh(&client, &id, "rm /tmp/ready").await?;
            daemon.wait_for("web-1", "not Ready", WITHIN, |p| !ready(p)).await?;
            wait_for_backends(&node, vip, 80, 1).await?;
            let names = http_names(at(vip, 80), 20).await?;
            assert_eq!(names, BTreeSet::from(["web-2".into()]));
            let root = daemon.root().to_string_lossy().into_owned();
            let slices = bosun_json(&["get", "endpoints", "web", "--root-dir", &root]).await?;
            let not_ready: Vec<&Value> = slices["items"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
                .filter(|e| e["conditions"]["ready"] == false)
                .collect();
            assert_eq!(not_ready.len(), 1, "{slices:#}");

            sh(&client, &id, "touch /tmp/ready").await?;
            wait_for_backends(&node, vip, 80, 2).await?;

            // A restart: the new bosun knows nothing of the pods' readiness until its workers
            // and probes have run, and must not take them out of the Service meanwhile.
            let looping = ClientLoop::start(move || http_get(at(vip, 80)).map(drop));
            tokio::time::sleep(Duration::from_millis(300)).await;
            daemon.kill().await?;
            let daemon = Daemon::start(Path::new(BOSUN), &node, "").await?;
            daemon.wait_for("web-1", "Ready", WITHIN, ready).await?;
            daemon.wait_for("web-2", "Ready", WITHIN, ready).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (ok, failed) = looping.stop().await?;
            assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), ok + failed.len());
            wait_for_backends(&node, vip, 80, 2).await?;
            Ok(())
        }
        .await;
        (node, result)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_bosun_loses_no_connection_and_cleanup_removes_everything() -> Result<()> {
    on_a_node("svc-restart", |node, daemon| async move {
        let result = async {
            let net = Net::of(&node);
            let (pods, ips) = net.pods(&["r1", "r2"], Protocol::Tcp)?;
            let vip = net.vip(40);
            daemon.write_manifest(
                "web.yaml",
                &service_and_slice("web", vip, 80, "TCP", "", &ips),
            )?;
            wait_for_backends(&node, vip, 80, 2).await?;
            let bpf_dir = node.bpf_dir().to_string_lossy().into_owned();
            let before = bosun_json(&["dp", "services", "--bpf-dir", &bpf_dir]).await?;

            // A client connects in a loop while bosun is killed and started again.
            let looping = ClientLoop::start(move || {
                ask_tcp(at(vip, 80), CONNECT).map(drop).map_err(Into::into)
            });
            tokio::time::sleep(Duration::from_millis(500)).await;
            daemon.kill().await?;
            // While bosun is down, the maps still answer and still balance.
            let down = bosun_json(&["dp", "services", "--bpf-dir", &bpf_dir]).await?;
            assert_eq!(down, before);
            tokio::time::sleep(Duration::from_millis(500)).await;
            let daemon = Daemon::start(Path::new(BOSUN), &node, "").await?;
            wait_for_backends(&node, vip, 80, 2).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (ok, failed) = looping.stop().await?;
            assert!(
                failed.is_empty(),
                "{} of {} connections failed: {failed:?}",
                failed.len(),
                ok + failed.len()
            );
            assert!(ok > 50, "only {ok} connections in two seconds");
            // The restarted daemon adopted the ids it found.
            let after = bosun_json(&["dp", "services", "--bpf-dir", &bpf_dir]).await?;
            assert_eq!(after, before);

            // --cleanup removes the programs and maps: the VIP is an ordinary address again.
            daemon.kill().await?;
            let cleanup = tokio::process::Command::new(BOSUN)
                .args(["run", "--cleanup", "--bpf-dir", &bpf_dir])
                .output()
                .await?;
            assert!(
                cleanup.status.success(),
                "{}",
                String::from_utf8_lossy(&cleanup.stderr)
            );
            assert!(!node.bpf_dir().exists(), "{bpf_dir} is still there");
            let answer = blocking(move || {
                Ok(ask_tcp(at(vip, 80), Duration::from_millis(300)).map(|a| a.name))
            })
            .await?;
            assert!(answer.is_err(), "the VIP still reaches {answer:?}");
            drop(pods);
            Ok(())
        }
        .await;
        (node, result)
    })
    .await
}
