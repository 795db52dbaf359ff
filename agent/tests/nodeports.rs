//! Traffic from outside the node, end to end: `bosun run --external-interfaces` serves a
//! NodePort / LoadBalancer Service from its manifest directory to a client in another network
//! namespace that reaches the node over a veth, through the tc programs on that veth, to
//! "pods" that are network namespaces answering with their name.
//!
//! Each test runs on its own test node, whose slot numbers everything host-wide it touches:
//! the bpffs directory, the namespaces and veths (`bnp<slot>…`), the pods' addresses
//! (10.230.<slot>.0/24, as the services tests), the client's link (10.229.<slot>.0/30: the node
//! is .1 there) and the cluster and outside IPs (10.231.<slot>.0/24, 10.229.<slot>.100-101).
//! The daemon serves node ports on 10.229.<slot>.1 alone (`--nodeport-addresses`), so the
//! node ports of tests running at once never meet; its programs sit only on its own veth.
//!
//! The socket-layer programs would rewrite the client's own `connect` (they see every process
//! in the cgroup they are attached to, whatever its network namespace) and the packets would
//! never need the tc programs; so the daemon attaches them to a cgroup of the node's
//! (`BOSUN_CGROUP2_ROOT`) instead of the root, and only what runs in that cgroup is "on the
//! node". The check of a node port from the node itself runs busybox's `nc` in it.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bosun_tests::daemon::{self, Daemon, NODE_NAME};
use bosun_tests::netns::{ask_tcp, echo_line, NetnsPod};
use bosun_tests::node::{NodeOptions, TestNode};
use serde_json::Value;

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");
const WITHIN: Duration = Duration::from_secs(30);
const CONNECT: Duration = Duration::from_secs(2);
const NODE_PORT: u16 = 30080;

/// One node's test network: the client and the pods, removed on drop.
struct Net {
    slot: u8,
    client: NetnsPod,
    pods: Vec<NetnsPod>,
}

impl Net {
    fn new(node: &TestNode, pods: &[&str]) -> Result<Self> {
        let slot = node.slot() as u8;
        let client = NetnsPod::create(
            &format!("bnp{slot}-client"),
            &format!("bnp{slot}c"),
            Ipv4Addr::new(10, 229, slot, 0),
        )?;
        let mut made = Vec::new();
        for (index, name) in pods.iter().enumerate() {
            let mut pod = NetnsPod::create(
                &format!("bnp{slot}-{name}"),
                &format!("bnp{slot}h{index}"),
                Ipv4Addr::new(10, 230, slot, index as u8 * 4),
            )?;
            pod.serve_tcp(8080, name)?;
            made.push(pod);
        }
        Ok(Net {
            slot,
            client,
            pods: made,
        })
    }

    /// The node's address on the client's link: where its node ports are served.
    fn node_address(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 229, self.slot, 1)
    }

    fn outside(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 229, self.slot, last)
    }

    fn cluster_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.slot, 60)
    }

    fn interface(&self) -> String {
        format!("bnp{}c", self.slot)
    }

    /// Asks `to` from the client's namespace: the name of the pod that answered.
    fn ask_from_outside(&self, to: SocketAddr) -> Result<String> {
        self.client
            .enter(move || Ok(ask_tcp(to, CONNECT).with_context(|| format!("{to}"))?.name))
    }
}

/// A LoadBalancer Service with a node port, an external IP and a load balancer IP, and its
/// slice: `endpoints` are (address, node name).
fn manifest(net: &Net, policy: &str, endpoints: &[(Ipv4Addr, &str)]) -> String {
    let mut text = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  type: LoadBalancer\n  \
         clusterIP: {cluster_ip}\n  externalIPs: [\"{external}\"]\n  externalTrafficPolicy: {policy}\n  \
         ports:\n  - port: 80\n    targetPort: 8080\n    nodePort: {NODE_PORT}\nstatus:\n  \
         loadBalancer:\n    ingress: [{{ip: \"{lb}\"}}]\n---\napiVersion: discovery.k8s.io/v1\n\
         kind: EndpointSlice\nmetadata:\n  name: web-1\n  labels:\n    \
         kubernetes.io/service-name: web\naddressType: IPv4\nports:\n- port: 8080\n  \
         protocol: TCP\nendpoints:\n",
        cluster_ip = net.cluster_ip(),
        external = net.outside(101),
        lb = net.outside(100),
    );
    for (address, node) in endpoints {
        text.push_str(&format!(
            "- addresses: [\"{address}\"]\n  nodeName: {node}\n  conditions: {{ready: true}}\n"
        ));
    }
    text
}

/// The cgroup2 directory of the node's own processes: the socket-layer programs' attach
/// point.
fn node_cgroup(node: &TestNode) -> Result<PathBuf> {
    let root = bosun_netdp::service::find_cgroup2()?;
    let dir = root.join(node.cgroup_parent().trim_start_matches('/'));
    std::fs::create_dir_all(dir.join("client"))
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

async fn start_daemon(node: &TestNode, net: &Net) -> Result<Daemon> {
    start_daemon_with(node, net, &[]).await
}

/// [`start_daemon`] with more flags.
async fn start_daemon_with(node: &TestNode, net: &Net, more: &[&str]) -> Result<Daemon> {
    let interfaces = format!("--external-interfaces={}", net.interface());
    let addresses = format!("--nodeport-addresses={}/32", net.node_address());
    let cgroup = node_cgroup(node)?;
    let mut args = vec![interfaces.as_str(), addresses.as_str()];
    args.extend_from_slice(more);
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|arg| arg.as_ref()).collect();
    Daemon::start_with_env(
        Path::new(BOSUN),
        node,
        node.dir(),
        "",
        &args,
        &[("BOSUN_CGROUP2_ROOT", cgroup.as_os_str())],
    )
    .await
}

/// Connects to `to` from a process in the node's cgroup (busybox's `nc`): the first line the
/// server sends.
async fn ask_from_the_node(node: &TestNode, to: SocketAddr) -> Result<String> {
    let procs = node_cgroup(node)?.join("client/cgroup.procs");
    let script = format!(
        "echo $$ > {} && exec busybox nc -w 2 {} {} </dev/null",
        procs.display(),
        to.ip(),
        to.port()
    );
    let output = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .await?;
    let text = String::from_utf8_lossy(&output.stdout);
    match text.lines().next() {
        Some(line) if !line.is_empty() => Ok(line.to_owned()),
        _ => bail!(
            "nc to {to} from the node: no answer ({})",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    }
}

/// `bosun dp WHAT -o json` for the node's datapath.
async fn dp(node: &TestNode, what: &str) -> Result<Value> {
    let bpf_dir = node.bpf_dir();
    let output = tokio::process::Command::new(BOSUN)
        .args(["dp", what, "--bpf-dir"])
        .arg(&bpf_dir)
        .args(["-o", "json"])
        .output()
        .await?;
    if !output.status.success() {
        bail!(
            "bosun dp {what}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// Waits until the maps hold the node port on the node's address.
async fn wait_for_node_port(node: &TestNode, net: &Net) -> Result<()> {
    let deadline = Instant::now() + WITHIN;
    let address = net.node_address().to_string();
    loop {
        let services = dp(node, "services").await.unwrap_or(Value::Null);
        let found = services.as_array().is_some_and(|all| {
            all.iter().any(|s| {
                s["frontend"]["address"] == address.as_str() && s["frontend"]["port"] == NODE_PORT
            })
        });
        if found {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{address}:{NODE_PORT} never reached the maps; they hold {services}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `scenario` on a fresh node with its network (the client and `pods`) and a daemon
/// serving it, tearing all down either way.
async fn on_a_node<F, Fut>(name: &str, pods: &[&str], scenario: F) -> Result<()>
where
    F: FnOnce(TestNode, Net, Daemon) -> Fut,
    Fut: std::future::Future<Output = (TestNode, Result<()>)>,
{
    let pods: Vec<String> = pods.iter().map(|p| (*p).to_owned()).collect();
    daemon::on_a_node_set_up(
        NodeOptions::new(name),
        |node| {
            Box::pin(async move {
                let pods: Vec<&str> = pods.iter().map(String::as_str).collect();
                let net = Net::new(node, &pods)?;
                let daemon = start_daemon(node, &net).await?;
                Ok((net, daemon))
            })
        },
        |node, (net, daemon)| scenario(node, net, daemon),
    )
    .await
}

/// The first line of `bosun monitor -o json` that `wanted` accepts, within a few seconds.
async fn monitor_line(node: &TestNode, wanted: impl Fn(&Value) -> bool) -> Result<Value> {
    use tokio::io::AsyncBufReadExt;
    let mut monitor = tokio::process::Command::new(BOSUN)
        .args(["monitor", "-o", "json", "--bpf-dir"])
        .arg(node.bpf_dir())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = monitor.stdout.take().context("the monitor's stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let found = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(line) = lines.next_line().await? {
            let value: Value = serde_json::from_str(&line)?;
            if wanted(&value) {
                return Ok(value);
            }
        }
        bail!("bosun monitor ended")
    })
    .await
    .context("no such line from bosun monitor within 5 s")?;
    let _ = monitor.kill().await;
    found
}

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ports_and_outside_ips_answer_from_outside_and_survive_a_killed_bosun() -> Result<()> {
    on_a_node("np-outside", &["a", "b"], |node, net, daemon| async move {
        let result = async {
            let endpoints: Vec<(Ipv4Addr, &str)> =
                net.pods.iter().map(|p| (p.ip(), NODE_NAME)).collect();
            daemon.write_manifest("web.yaml", &manifest(&net, "Cluster", &endpoints))?;
            wait_for_node_port(&node, &net).await?;
            let names = ["a".to_owned(), "b".to_owned()];

            // From outside: the node port, the load balancer IP and the external IP.
            for to in [
                at(net.node_address(), NODE_PORT),
                at(net.outside(100), 80),
                at(net.outside(101), 80),
            ] {
                let name = net.ask_from_outside(to)?;
                assert!(names.contains(&name), "{to} answered {name:?}");
            }
            // From the node itself, the node port at the socket layer.
            let name = ask_from_the_node(&node, at(net.node_address(), NODE_PORT)).await?;
            assert!(names.contains(&name), "from the node: {name:?}");

            // The flows are in the NAT table, from the client, DNATed only (local pods).
            let flows = dp(&node, "conntrack").await?;
            let flows = flows.as_array().context("a list of flows")?;
            let client = net.outside(2).to_string();
            assert!(
                flows.len() >= 3
                    && flows
                        .iter()
                        .all(|f| f["client"][0] == client.as_str() && f["snat"].is_null()),
                "{flows:?}"
            );

            // `bosun monitor` shows them taken (the events wait in the ring for a reader).
            let client_address = net.outside(2).to_string();
            let nat = monitor_line(&node, |line| {
                line["event"] == "NAT"
                    && line["client"]
                        .as_str()
                        .is_some_and(|c| c.starts_with(&format!("{client_address}:")))
            })
            .await?;
            assert_eq!(
                nat["frontend"],
                format!("{}:{NODE_PORT}", net.node_address())
            );

            // A connection made before bosun is killed keeps its backend while bosun is down
            // and after it is back; new connections are served meanwhile.
            let lb = at(net.outside(100), 80);
            let kept = net.client.enter(move || Ok(ask_tcp(lb, CONNECT)?))?;
            let mut stream = kept.stream;
            daemon.kill().await?;
            assert_eq!(echo_line(&mut stream, "while down")?, "while down");
            let name = net.ask_from_outside(at(net.node_address(), NODE_PORT))?;
            assert!(names.contains(&name), "while down: {name:?}");
            let daemon = start_daemon(&node, &net).await?;
            wait_for_node_port(&node, &net).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(echo_line(&mut stream, "after")?, "after");

            // The Service gone, the node port stops answering.
            daemon.remove_manifest("web.yaml")?;
            let deadline = Instant::now() + WITHIN;
            while net
                .ask_from_outside(at(net.node_address(), NODE_PORT))
                .is_ok()
            {
                if Instant::now() > deadline {
                    bail!("the node port still answers after its Service was removed");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            drop(daemon);
            Ok(())
        }
        .await;
        (node, result)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_traffic_policy_local_sends_outside_traffic_to_this_nodes_endpoints() -> Result<()>
{
    on_a_node("np-local", &["here"], |node, net, daemon| async move {
        let result = async {
            // One endpoint here, one on another node at an address nothing answers: under
            // the Cluster policy some connections would go there and fail.
            let elsewhere = Ipv4Addr::new(10, 230, net.slot, 200);
            let endpoints = [(net.pods[0].ip(), NODE_NAME), (elsewhere, "node-elsewhere")];
            daemon.write_manifest("web.yaml", &manifest(&net, "Local", &endpoints))?;
            wait_for_node_port(&node, &net).await?;
            for attempt in 0..20 {
                let name = net
                    .ask_from_outside(at(net.node_address(), NODE_PORT))
                    .with_context(|| format!("connection {attempt}"))?;
                assert_eq!(name, "here");
            }
            Ok(())
        }
        .await;
        (node, result)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_port_and_a_node_port_reach_a_containerd_pod_from_outside() -> Result<()> {
    on_a_node("np-hostport", &[], |node, net, daemon| async move {
        let result = async {
            let pod = bosun_tests::traffic::web_pod("hp", "").replace(
                "- {name: http, containerPort: 8080}",
                "- {name: http, containerPort: 8080, hostPort: 18080}",
            );
            daemon.write_manifest("hp.yaml", &pod)?;
            // A NodePort Service selecting it: its endpoints are bosun's own slice of the
            // static pod.
            daemon.write_manifest(
                "web.yaml",
                &format!(
                    "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  \
                     type: NodePort\n  clusterIP: {}\n  selector: {{app: web}}\n  ports:\n  \
                     - port: 80\n    targetPort: 8080\n    nodePort: 30081\n",
                    net.cluster_ip()
                ),
            )?;
            daemon
                .wait_for("hp", "Ready", WITHIN, bosun_tests::daemon::ready)
                .await?;
            for to in [at(net.node_address(), 18080), at(net.node_address(), 30081)] {
                let deadline = Instant::now() + WITHIN;
                let answer = loop {
                    let asked = net.client.enter(move || bosun_tests::traffic::http_get(to));
                    match asked {
                        Ok(answer) => break answer,
                        Err(e) if Instant::now() > deadline => {
                            return Err(e.context(format!("{to} from outside")));
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                };
                assert_eq!(answer, "hp", "{to}");
            }
            let to = at(net.node_address(), 18080);
            // The pod gone, its host port goes with it.
            daemon.remove_manifest("hp.yaml")?;
            daemon.wait_gone("hp", WITHIN).await?;
            let deadline = Instant::now() + WITHIN;
            while net
                .client
                .enter(move || bosun_tests::traffic::http_get(to))
                .is_ok()
            {
                if Instant::now() > deadline {
                    bail!("{to} still answers after its pod is gone");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(())
        }
        .await;
        (node, result)
    })
    .await
}

/// Whether `ip link` shows an XDP program on the node's end of the client's veth.
fn xdp_on(net: &Net) -> Result<bool> {
    let output = std::process::Command::new("ip")
        .args(["link", "show", "dev", &net.interface()])
        .output()?;
    Ok(String::from_utf8_lossy(&output.stdout).contains("prog/xdp"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodeport_acceleration_attaches_xdp_natively_and_leaves_veths_to_tc_at_best_effort(
) -> Result<()> {
    on_a_node("np-xdp", &["a", "b"], |node, net, daemon| async move {
        let result = async {
            // The client sends complete checksums, as from a wire: what the XDP program
            // expects of the packets it rewrites.
            let client = net.client.name().to_owned();
            let offload = std::process::Command::new("ip")
                .args([
                    "netns", "exec", &client, "ethtool", "-K", "eth0", "tx", "off",
                ])
                .status()?;
            assert!(offload.success(), "ethtool in {client}");
            daemon.kill().await?;

            // native: on the veth too, and the node port served through it (to local pods:
            // DNATed in the driver, forwarded by the kernel).
            let daemon =
                start_daemon_with(&node, &net, &["--nodeport-acceleration=native"]).await?;
            let endpoints: Vec<(Ipv4Addr, &str)> =
                net.pods.iter().map(|p| (p.ip(), NODE_NAME)).collect();
            daemon.write_manifest("web.yaml", &manifest(&net, "Cluster", &endpoints))?;
            wait_for_node_port(&node, &net).await?;
            let deadline = Instant::now() + WITHIN;
            while !xdp_on(&net)? {
                if Instant::now() > deadline {
                    bail!("no XDP program on {}: {}", net.interface(), daemon.log());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let names = ["a".to_owned(), "b".to_owned()];
            for attempt in 0..10 {
                let name = net
                    .ask_from_outside(at(net.node_address(), NODE_PORT))
                    .with_context(|| format!("connection {attempt} through XDP"))?;
                assert!(names.contains(&name), "{name:?}");
            }
            let ifindex = nix::net::if_::if_nametoindex(net.interface().as_str())?;
            let pin = node.bpf_dir().join(format!("nodeport/links/{ifindex}_xdp"));
            assert!(pin.exists(), "{} is not pinned", pin.display());
            daemon.kill().await?;
            // Pinned: the program stays while bosun is down.
            assert!(xdp_on(&net)?, "the XDP program went with the daemon");

            // best-effort: a veth is left to the tc programs, and the program the run before
            // attached is taken off.
            let daemon =
                start_daemon_with(&node, &net, &["--nodeport-acceleration=best-effort"]).await?;
            let deadline = Instant::now() + WITHIN;
            while xdp_on(&net)?
                || !daemon
                    .log()
                    .contains("a veth: served by the tc programs alone")
            {
                if Instant::now() > deadline {
                    bail!(
                        "XDP still on {} at best effort: {}",
                        net.interface(),
                        daemon.log()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(!pin.exists(), "{} is still pinned", pin.display());
            let name = net.ask_from_outside(at(net.node_address(), NODE_PORT))?;
            assert!(names.contains(&name), "{name:?}");
            drop(daemon);
            Ok(())
        }
        .await;
        (node, result)
    })
    .await
}

#[test]
fn the_default_external_interfaces_are_those_of_the_default_routes_beside_any_named() -> Result<()>
{
    // A namespace whose default route leaves by its eth0 (a pod's shape), looked at from
    // inside: an interface named first, a missing one skipped, then the default route's.
    let pod = NetnsPod::create("bnpx-auto", "bnpxauto", Ipv4Addr::new(10, 229, 250, 0))?;
    let wanted = pod.enter(|| {
        let external = bosun::service::proxy::External {
            interfaces: vec!["lo".to_owned(), "missing0".to_owned()],
            default_routes: true,
            ..Default::default()
        };
        let eth0 = nix::net::if_::if_nametoindex("eth0")?;
        Ok((external.wanted_interfaces(), eth0))
    })?;
    let (wanted, eth0) = wanted;
    assert_eq!(
        wanted,
        [("lo".to_owned(), 1), ("eth0".to_owned(), eth0)],
        "{wanted:?}"
    );
    Ok(())
}
