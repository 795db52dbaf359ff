//! bosun's NodePort benchmarks: what serving a node port to a client outside the node costs,
//! through bosun's tc programs on the node's external interfaces, against kube-proxy's
//! iptables rules and against the floor of plain routing, all measured in the same run; and
//! how many flows a backend change moves under bosun's Maglev tables against a modulo hash.
//!
//! - `traffic`: for each number N of NodePort Services (4 endpoints each), three copies of one
//!   topology, each a "node" network namespace with veths to a client, a local pod and a
//!   remote node (a second node whose pods sit behind it), identical but for what the node
//!   runs: nothing (the floor), kube-proxy's iptables rules for the N Services (ClusterIPs and
//!   node ports) loaded with `iptables-restore`, or bosun's two tc programs attached to the
//!   node's client and remote-node veths with the N Services in their maps. From each client:
//!   connections to the node's address and a node port (connect, one 32-byte request and its
//!   answer, close with SO_LINGER 0), and request/response round trips over one kept
//!   connection; the floor's client connects straight to a pod's address instead, routed
//!   through its node. The targets are the last Service's node port (the last rule of
//!   KUBE-NODEPORTS, iptables' worst case), the middle one's, and Service N-1's, whose
//!   endpoints are all on the remote node (bosun SNATs those flows to the node's address;
//!   kube-proxy masquerades every external flow), plus a pod's address with no Service
//!   through each node (what every other packet pays). All targets are measured in
//!   interleaved blocks, so a change in the machine's load hits all of them alike. bosun's NAT
//!   table is aged every 10 s meanwhile, as the daemon ages it; a connection not made in 5 s
//!   is counted as failed and left out of the statistics.
//! - `maglev`: from `bosun_netdp::service::maglev::table`, for 10 and 100 backends, the share
//!   of table entries that change backend when one backend is removed (each in turn) or one
//!   is added, besides those the change itself must move; and the same for a modulo-N choice
//!   over flows hashed as the programs hash them.
//!
//! Run as root: `cargo bench -p bosun --bench nodeport -- [--quick | --smoke] [--samples N]
//! [FILTER...]` (or `scripts/bench.sh nodeport`). A FILTER selects the benchmarks whose name
//! contains it. `--smoke` measures 1000 Services with one sample per target, only to show that
//! the benchmark still runs (`scripts/bench.sh smoke`).
//!
//! Everything the benchmark creates is a `bnp-*` network namespace (links and addresses live
//! inside them, so nothing of the host's is touched) or lives in /sys/fs/bpf/bosun-npbench. It
//! is removed when the run ends, also on Ctrl-C, and swept away at the start if a killed run
//! left it behind.

mod common;
// `whole()` is the services benchmark's: this one only loads the rules, in parts.
#[allow(dead_code)]
#[path = "common/kube_proxy.rs"]
mod kube_proxy;
// Its goals' verdicts are the other benchmarks': this one states no goal.
#[allow(dead_code)]
#[path = "common/lab.rs"]
mod lab;
#[path = "common/server_thread.rs"]
mod server_thread;
// Its Service catalog, client threads, listeners and tables; its host-routed network is the
// services benchmark's.
#[allow(dead_code)]
#[path = "common/service_lab.rs"]
mod service_lab;

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bosun_ebpf_abi::{address_from_host, flow_hash, port_from_host, MAGLEV_TABLE_SIZE};
use bosun_netdp::nodeport::{self, NodePortMaps};
use bosun_netdp::service::{
    self as datapath, maglev, BackendAddr, DesiredService, ExternalTarget, Frontend, PinnedMaps,
    Protocol, Reconciler, ServicePortName,
};
use common::{load_average, Args, Mode};
use kube_proxy::{restore_in_parts, KubeProxyRules, PortInfo};
use lab::{catch_interrupts, check_interrupted, enter_netns, ip, run_command, SERVER_CPU};
use server_thread::ServerThread;
use service_lab::{
    foreign_datapaths, listen_all, open, reset_on_close, Catalog, Client, Row, Table, BLOCK,
    ENDPOINTS_PER_SERVICE, ENDPOINT_NET, ENDPOINT_PREFIX, FIRST_TARGET_PORT, NAMESPACE,
    SERVICE_PORT, WARM_UP_CONNECT_TIMEOUT,
};

const BENCHMARKS: [&str; 2] = ["traffic", "maglev"];

// ---- names and addresses ------------------------------------------------------------------

/// Where bosun's programs and maps are pinned.
const BPF_DIR: &str = "/sys/fs/bpf/bosun-npbench";
/// Every namespace the benchmark creates starts with this.
const PREFIX: &str = "bnp-";

/// The namespaces of one topology: a node and what its veths lead to.
struct NodeNames {
    /// What the node runs, as its rows name it.
    who: &'static str,
    client: &'static str,
    node: &'static str,
    pod: &'static str,
    remote: &'static str,
}

const FLOOR: NodeNames = NodeNames {
    who: "floor",
    client: "bnp-floor-client",
    node: "bnp-floor-node",
    pod: "bnp-floor-pod",
    remote: "bnp-floor-remote",
};
const IPTABLES: NodeNames = NodeNames {
    who: "iptables",
    client: "bnp-ipt-client",
    node: "bnp-ipt-node",
    pod: "bnp-ipt-pod",
    remote: "bnp-ipt-remote",
};
const BOSUN: NodeNames = NodeNames {
    who: "bosun",
    client: "bnp-bosun-client",
    node: "bnp-bosun-node",
    pod: "bnp-bosun-pod",
    remote: "bnp-bosun-remote",
};

/// The node's veths, each with the node's address on it and the peer's (`eth0`, .2 of the
/// same /24).
const TO_CLIENT: (&str, Ipv4Addr) = ("to-client", Ipv4Addr::new(10, 230, 0, 1));
const TO_POD: (&str, Ipv4Addr) = ("to-pod", Ipv4Addr::new(10, 230, 1, 1));
const TO_REMOTE: (&str, Ipv4Addr) = ("to-remote", Ipv4Addr::new(10, 230, 2, 1));
/// The node's address the clients reach its node ports on.
const NODE_ADDRESS: Ipv4Addr = TO_CLIENT.1;
/// The remote node's pods: a `local` route in its namespace, so every address answers.
const REMOTE_NET: Ipv4Addr = Ipv4Addr::new(10, 218, 0, 0);
const REMOTE_PREFIX: u8 = 24;
/// kube-proxy's `--cluster-cidr`: both nodes' pods.
const CLUSTER_CIDR: &str = "10.218.0.0/15";
/// Service `i`'s node port is this plus `i` (a `--service-node-port-range` of 30000-39999).
const FIRST_NODE_PORT: u16 = 30_000;

// ---- sizes --------------------------------------------------------------------------------

/// The numbers of Services measured, in every mode but `--smoke` (the first only).
const SIZES: [usize; 2] = [1_000, 10_000];
/// What each connection sends and gets back.
const REQUEST_BYTES: usize = 32;
/// Services per `iptables-restore` (see `KubeProxyRules::parts`).
const RESTORE_PART: usize = 1000;
/// How long a kept connection's answer may take before the path is declared broken.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a measured connection may take to be made: past the SYN's first two
/// retransmissions (1 s and 3 s). One that is not made by then is counted as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A failed connection among a job's samples: counted, never averaged.
const FAILED: f64 = f64::NAN;
/// How often the daemon ages the NAT table (`EXTERNAL_REFRESH` in the proxy), and so does
/// the benchmark while it measures.
const NAT_AGEING: Duration = Duration::from_secs(10);
/// Backends of the Maglev comparison, and how many different backends are added to each.
const MAGLEV_BACKENDS: [usize; 2] = [10, 100];
const MAGLEV_ADDITIONS: usize = 10;
/// Flows hashed for the modulo-N comparison.
const MODULO_FLOWS: u32 = 200_000;

struct Sizes {
    services: Vec<usize>,
    /// Measured connections, and round trips, per target.
    samples: usize,
    /// Unmeasured ones first, which also check that each target answers.
    warm_up: usize,
}

fn sizes(args: &Args) -> Sizes {
    let (services, samples, warm_up) = match args.mode {
        Mode::Smoke => (SIZES[..1].to_vec(), 1, 5),
        Mode::Quick => (SIZES.to_vec(), 500, 50),
        Mode::Full => (SIZES.to_vec(), 5000, 200),
    };
    Sizes {
        services,
        samples: args.samples.unwrap_or(samples),
        warm_up,
    }
}

fn main() {
    let usage =
        format!("[--quick | --smoke] [--samples N] [FILTER...]  (benchmarks: {BENCHMARKS:?})");
    let Some(args) = common::bench_args("nodeport", &usage, |args| {
        Args::parse(args, &BENCHMARKS, |_, _| Ok(false))
    }) else {
        return;
    };
    common::exit_on_error("nodeport", catch_interrupts("nodeport"));
    common::exit_on_error("nodeport", run(&args));
}

fn run(args: &Args) -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the benchmark needs root: it creates network namespaces, loads iptables rules and \
         attaches BPF programs"
    );
    kube_proxy::check_chain_names()?;
    let sizes = sizes(args);
    let iptables = run_command("iptables", &["-V"]).unwrap_or_else(|_| "?".to_owned());
    println!(
        "bosun NodePort benchmarks{}: N = {:?} NodePort Services of {ENDPOINTS_PER_SERVICE} \
         endpoints, {} connections and {} round trips per target after {} unmeasured",
        args.mode.label(),
        sizes.services,
        sizes.samples,
        sizes.samples,
        sizes.warm_up
    );
    println!("machine: {}, {}", lab::machine(), iptables.trim());
    println!("load average at the start: {}", load_average());

    let mut outcome = Ok(());
    if args.selected("traffic") {
        sweep_leftovers()?;
        for &n in &sizes.services {
            let mut report = Report::new(n);
            outcome = traffic(&Catalog { n }, &sizes, &mut report);
            report.print();
            if outcome.is_err() {
                break;
            }
        }
    }
    if outcome.is_ok() && args.selected("maglev") {
        print_maglev();
    }
    println!(
        "\nXDP: not measured; bosun has no XDP program for traffic from outside the node yet \
         (the tc programs above are its whole datapath for it)"
    );
    println!("\nload average at the end: {}", load_average());
    if args.selected("traffic") {
        print_leftovers();
    }
    outcome
}

// ---- the Services -------------------------------------------------------------------------

/// Service N-1 of N: its endpoints are on the remote node.
fn remote_service(catalog: &Catalog) -> usize {
    catalog.n - 2
}

fn node_port(i: usize) -> u16 {
    FIRST_NODE_PORT + i as u16
}

/// Service `i`'s endpoints, and whether each is on this node.
fn endpoints(catalog: &Catalog, i: usize) -> Vec<(SocketAddrV4, bool)> {
    (0..ENDPOINTS_PER_SERVICE)
        .map(|k| {
            if i == remote_service(catalog) {
                let address = Ipv4Addr::from_bits(REMOTE_NET.to_bits() + 1 + k as u32);
                (SocketAddrV4::new(address, FIRST_TARGET_PORT), false)
            } else {
                (catalog.endpoint(i, k), true)
            }
        })
        .collect()
}

/// The Services as kube-proxy sees them: a ClusterIP and a node port each.
fn kube_proxy_ports(catalog: &Catalog) -> Vec<PortInfo> {
    (0..catalog.n)
        .map(|i| PortInfo {
            name: format!("{NAMESPACE}/{}", catalog.name(i)),
            cluster_ip: catalog.vip(i),
            port: SERVICE_PORT,
            endpoints: endpoints(catalog, i).into_iter().map(|(e, _)| e).collect(),
            node_port: Some(node_port(i)),
        })
        .collect()
}

/// The Services as bosun's compiler gives them to the reconciler: each a ClusterIP frontend
/// and, reachable from outside, its node port on the node's address.
fn desired_services(catalog: &Catalog) -> Vec<DesiredService> {
    let mut desired = Vec::with_capacity(2 * catalog.n);
    for i in 0..catalog.n {
        let name = ServicePortName {
            namespace: Arc::from(NAMESPACE),
            name: Arc::from(catalog.name(i)),
            port: Arc::from(""),
        };
        let endpoints = endpoints(catalog, i);
        let mut backends: Vec<BackendAddr> = endpoints
            .iter()
            .map(|(e, _)| BackendAddr {
                address: *e.ip(),
                port: e.port(),
            })
            .collect();
        backends.sort_unstable();
        let mut external: Vec<ExternalTarget> = endpoints
            .iter()
            .map(|(e, local)| ExternalTarget {
                backend: BackendAddr {
                    address: *e.ip(),
                    port: e.port(),
                },
                local: *local,
            })
            .collect();
        external.sort_unstable();
        desired.push(DesiredService {
            frontend: Frontend {
                address: catalog.vip(i),
                port: SERVICE_PORT,
                protocol: Protocol::Tcp,
            },
            name: name.clone(),
            affinity_timeout: None,
            backends: backends.clone(),
            external: None,
        });
        desired.push(DesiredService {
            frontend: Frontend {
                address: NODE_ADDRESS,
                port: node_port(i),
                protocol: Protocol::Tcp,
            },
            name,
            affinity_timeout: None,
            backends,
            external: Some(external.into_boxed_slice()),
        });
    }
    desired
}

// ---- the network --------------------------------------------------------------------------

/// One topology: its namespaces, the servers in its pod and remote node, and its client.
/// Dropping it removes them all: the threads leave the namespaces first (fields drop in
/// order).
struct Node {
    names: &'static NodeNames,
    client: Client,
    _servers: [EchoServer; 2],
    _namespaces: Namespaces,
}

impl Node {
    fn create(names: &'static NodeNames) -> Result<Node> {
        let namespaces = Namespaces::create(names)?;
        let node = names.node;
        for ((link, address), peer) in [
            (TO_CLIENT, names.client),
            (TO_POD, names.pod),
            (TO_REMOTE, names.remote),
        ] {
            let peer_address = Ipv4Addr::from_bits(address.to_bits() + 1);
            ip(&[
                "link", "add", link, "netns", node, "type", "veth", "peer", "name", "eth0",
                "netns", peer,
            ])?;
            ip(&[
                "-n",
                node,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                link,
            ])?;
            ip(&["-n", node, "link", "set", link, "up"])?;
            ip(&[
                "-n",
                peer,
                "addr",
                "add",
                &format!("{peer_address}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", peer, "link", "set", "eth0", "up"])?;
            ip(&[
                "-n",
                peer,
                "route",
                "add",
                "default",
                "via",
                &address.to_string(),
            ])?;
        }
        for (netns, net, via) in [
            (
                names.pod,
                format!("{ENDPOINT_NET}/{ENDPOINT_PREFIX}"),
                TO_POD.1,
            ),
            (
                names.remote,
                format!("{REMOTE_NET}/{REMOTE_PREFIX}"),
                TO_REMOTE.1,
            ),
        ] {
            ip(&["-n", netns, "route", "add", "local", &net, "dev", "lo"])?;
            let peer = Ipv4Addr::from_bits(via.to_bits() + 1).to_string();
            ip(&["-n", node, "route", "add", &net, "via", &peer])?;
        }
        enable_forwarding(node)?;
        let servers = [
            EchoServer::start(names.pod)?,
            EchoServer::start(names.remote)?,
        ];
        let client = Client::spawn(names.client)?;
        Ok(Node {
            names,
            client,
            _servers: servers,
            _namespaces: namespaces,
        })
    }

    /// The index of `link` in the node's namespace.
    fn ifindex(&self, link: &str) -> Result<u32> {
        // "5: to-client@if2: <FLAGS> ..."
        let line = ip(&["-n", self.names.node, "-o", "link", "show", link])?;
        line.split(':')
            .next()
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("the index of {link} in {:?}", line.trim()))
    }
}

/// IPv4 forwarding in `netns` (a new namespace has it off).
fn enable_forwarding(netns: &'static str) -> Result<()> {
    // /proc/sys/net is the namespace of the thread that opens it.
    std::thread::spawn(move || -> Result<()> {
        enter_netns(netns)?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .with_context(|| format!("enabling forwarding in {netns}"))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread enabling forwarding panicked"))?
}

/// A topology's namespaces, with their loopbacks up; removed when dropped.
struct Namespaces(&'static NodeNames);

impl Namespaces {
    fn create(names: &'static NodeNames) -> Result<Namespaces> {
        let namespaces = Namespaces(names);
        for netns in namespaces.all() {
            ip(&["netns", "add", netns])?;
            ip(&["-n", netns, "link", "set", "lo", "up"])?;
        }
        Ok(namespaces)
    }

    fn all(&self) -> [&'static str; 4] {
        [self.0.client, self.0.node, self.0.pod, self.0.remote]
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for netns in self.all() {
            // Not made yet, when creating failed half-way.
            if netns_exists(netns) {
                if let Err(e) = ip(&["netns", "del", netns]) {
                    eprintln!("nodeport bench: {e:#}");
                }
            }
        }
    }
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Answers every request on every target port of its namespace with the request itself.
struct EchoServer {
    _thread: ServerThread,
}

impl EchoServer {
    fn start(netns: &'static str) -> Result<EchoServer> {
        let thread = ServerThread::start(
            format!("bnp-server-{netns}"),
            format!("nodeport bench: the server in {netns}"),
            netns.to_owned(),
            SERVER_CPU,
            listen_all,
            |listeners: &Vec<TcpListener>, stop| echo(listeners, stop),
        )?;
        Ok(EchoServer { _thread: thread })
    }
}

fn echo(listeners: &[TcpListener], stop: &AtomicBool) -> Result<()> {
    use nix::poll::{poll, PollFd, PollFlags};
    let mut connections: Vec<TcpStream> = Vec::new();
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::SeqCst) {
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd<'_>> = listeners
                .iter()
                .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN))
                .chain(
                    connections
                        .iter()
                        .map(|c| PollFd::new(c.as_fd(), PollFlags::POLLIN)),
                )
                .collect();
            poll(&mut fds, 100u16).context("waiting for connections")?;
            fds.iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        let (listeners_ready, connections_ready) = ready.split_at(listeners.len());
        // From the end, so that removing one moves only those already seen.
        for i in (0..connections.len()).rev() {
            if !connections_ready[i] {
                continue;
            }
            // Blocking sockets, read only when poll says there is something: a request, or
            // the end.
            let answered = match connections[i].read(&mut buf) {
                Ok(0) | Err(_) => false,
                Ok(len) => connections[i].write_all(&buf[..len]).is_ok(),
            };
            if !answered {
                connections.swap_remove(i);
            }
        }
        for (listener, ready) in listeners.iter().zip(listeners_ready) {
            if !ready {
                continue;
            }
            loop {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
                        connections.push(stream);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::ConnectionAborted => {}
                    Err(e) => return Err(e).context("accepting"),
                }
            }
        }
    }
    Ok(())
}

// ---- the clients' work --------------------------------------------------------------------

/// `count` connections to `target`: connect, one request and its answer, close (SO_LINGER 0,
/// so no TIME_WAIT piles up over thousands of them). Each one's time in µs. With `timeout`
/// (warming up) every connection must be made in time; without, one not made in
/// [`CONNECT_TIMEOUT`] is [`FAILED`].
fn transactions(target: SocketAddrV4, count: usize, timeout: Option<Duration>) -> Result<Vec<f64>> {
    let request = [b'q'; REQUEST_BYTES];
    let mut answer = [0u8; REQUEST_BYTES];
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let mut stream = match timeout {
            Some(timeout) => open(target, Some(timeout))?,
            None => match TcpStream::connect_timeout(&target.into(), CONNECT_TIMEOUT) {
                Ok(stream) => stream,
                Err(e) if e.kind() == ErrorKind::TimedOut => {
                    samples.push(FAILED);
                    continue;
                }
                Err(e) => return Err(e).with_context(|| format!("connecting to {target}")),
            },
        };
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        if timeout.is_some() {
            stream
                .set_read_timeout(timeout)
                .context("setting a read timeout")?;
        }
        stream
            .write_all(&request)
            .and_then(|()| stream.read_exact(&mut answer))
            .with_context(|| format!("a request to {target}"))?;
        reset_on_close(&stream)?;
        drop(stream);
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(samples)
}

/// A target's kept connection, made by its client's thread on first use.
type Kept = Arc<Mutex<Option<TcpStream>>>;

/// `count` request/answer round trips over `kept`; each one's time in µs.
fn round_trips(kept: &Kept, target: SocketAddrV4, count: usize) -> Result<Vec<f64>> {
    let mut kept = kept
        .lock()
        .map_err(|_| anyhow::anyhow!("a kept connection's lock is poisoned"))?;
    if kept.is_none() {
        let stream = open(target, Some(WARM_UP_CONNECT_TIMEOUT))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        stream
            .set_read_timeout(Some(ANSWER_TIMEOUT))
            .context("setting a read timeout")?;
        *kept = Some(stream);
    }
    let stream = kept.as_mut().context("no kept connection")?;
    let request = [b'r'; REQUEST_BYTES];
    let mut answer = [0u8; REQUEST_BYTES];
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        stream
            .write_all(&request)
            .and_then(|()| stream.read_exact(&mut answer))
            .with_context(|| format!("a round trip to {target}"))?;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(samples)
}

/// Where one row connects, from which node's client, and which row it is compared with.
struct Target<'a> {
    label: String,
    node: &'a Node,
    address: SocketAddrV4,
    baseline: Option<usize>,
    kept: Kept,
}

impl<'a> Target<'a> {
    fn new(
        node: &'a Node,
        what: String,
        address: SocketAddrV4,
        baseline: Option<usize>,
    ) -> Target<'a> {
        Target {
            label: format!("{}: {what}", node.names.who),
            node,
            address,
            baseline,
            kept: Arc::new(Mutex::new(None)),
        }
    }

    fn transactions(&self, count: usize, timeout: Option<Duration>) -> Result<Vec<f64>> {
        let address = self.address;
        self.node
            .client
            .run(move || transactions(address, count, timeout))
            .with_context(|| self.label.clone())
    }

    fn round_trips(&self, count: usize) -> Result<Vec<f64>> {
        let (kept, address) = (self.kept.clone(), self.address);
        self.node
            .client
            .run(move || round_trips(&kept, address, count))
            .with_context(|| self.label.clone())
    }
}

/// Both kinds of samples (µs), per target.
struct Samples {
    connections: Vec<Vec<f64>>,
    round_trips: Vec<Vec<f64>>,
}

/// Warms every target up (which checks that it answers), then measures `samples` connections
/// and round trips of each, in interleaved blocks, calling `between` after each round of
/// blocks.
fn measure(
    targets: &[Target<'_>],
    sizes: &Sizes,
    mut between: impl FnMut() -> Result<()>,
) -> Result<Samples> {
    for target in targets {
        target
            .transactions(sizes.warm_up, Some(WARM_UP_CONNECT_TIMEOUT))
            .context("warming up")?;
        target.round_trips(sizes.warm_up).context("warming up")?;
        check_interrupted()?;
    }
    let mut connections = vec![Vec::with_capacity(sizes.samples); targets.len()];
    let mut trips = vec![Vec::with_capacity(sizes.samples); targets.len()];
    let mut done = 0;
    while done < sizes.samples {
        let block = BLOCK.min(sizes.samples - done);
        for (i, target) in targets.iter().enumerate() {
            connections[i].extend(target.transactions(block, None)?);
            trips[i].extend(target.round_trips(block)?);
        }
        done += block;
        between()?;
        check_interrupted()?;
    }
    Ok(Samples {
        connections,
        round_trips: trips,
    })
}

// ---- one N --------------------------------------------------------------------------------

/// The three topologies for `catalog`: kube-proxy's rules loaded in one, bosun's programs
/// attached and programmed in another, then every target measured.
fn traffic(catalog: &Catalog, sizes: &Sizes, report: &mut Report) -> Result<()> {
    report.foreign = foreign_datapaths(BPF_DIR);
    let floor = Node::create(&FLOOR)?;
    let iptables = Node::create(&IPTABLES)?;
    let rules = KubeProxyRules::new(&kube_proxy_ports(catalog), CLUSTER_CIDR);
    report.iptables_load = Some(restore_in_parts(IPTABLES.node, &rules, RESTORE_PART)?);
    drop(rules);
    let bosun = Node::create(&BOSUN)?;
    let installed = program_bosun(&bosun, catalog, report)?;

    let at = |i: usize| SocketAddrV4::new(NODE_ADDRESS, node_port(i));
    let pod = catalog.backend();
    let remote_pod = SocketAddrV4::new(
        Ipv4Addr::from_bits(REMOTE_NET.to_bits() + 1),
        FIRST_TARGET_PORT,
    );
    let last = catalog.last();
    let middle = catalog.middle();
    let remote = remote_service(catalog);
    let n = catalog.n;
    let mut targets = vec![
        Target::new(&floor, "→ a pod, routed, no NAT".into(), pod, None),
        Target::new(
            &floor,
            "→ a pod on the remote node, routed".into(),
            remote_pod,
            None,
        ),
    ];
    for node in [&iptables, &bosun] {
        targets.extend([
            Target::new(
                node,
                format!("→ node port {n}/{n} (last)"),
                at(last),
                Some(0),
            ),
            Target::new(
                node,
                format!("→ node port {}/{n} (middle)", middle + 1),
                at(middle),
                Some(0),
            ),
            Target::new(
                node,
                format!("→ node port {}/{n}, remote pods", remote + 1),
                at(remote),
                Some(1),
            ),
            Target::new(node, "→ a pod, no Service".into(), pod, Some(0)),
        ]);
    }
    // The daemon ages the NAT table every 10 s, which frees the SNAT ports of closed flows;
    // without it the table only fills.
    let mut aged = Instant::now();
    let samples = measure(&targets, sizes, || {
        if aged.elapsed() >= NAT_AGEING {
            NodePortMaps::open(Path::new(BPF_DIR))
                .and_then(|mut maps| maps.collect_garbage(nodeport::monotonic_now()))
                .context("ageing the NAT table")?;
            aged = Instant::now();
        }
        Ok(())
    })?;
    for (rows, samples) in [
        (&mut report.connections, samples.connections),
        (&mut report.round_trips, samples.round_trips),
    ] {
        *rows = targets
            .iter()
            .zip(samples)
            .map(|(t, s)| {
                let failed = s.iter().filter(|x| x.is_nan()).count();
                let row = Row {
                    label: t.label.clone(),
                    samples: s.into_iter().filter(|x| !x.is_nan()).collect(),
                    note: String::new(),
                };
                (row, t.baseline, failed)
            })
            .collect();
    }
    // The flows went through bosun's programs: their NAT table holds them, the remote ones
    // SNATed.
    let flows = NodePortMaps::open(Path::new(BPF_DIR))
        .and_then(|maps| maps.flows(nodeport::monotonic_now()))
        .context("reading the NAT table")?;
    report.flows = Some((
        flows.len(),
        flows.iter().filter(|f| f.snat.is_some()).count(),
    ));
    ensure!(
        flows.iter().any(|f| f.snat.is_none()) && flows.iter().any(|f| f.snat.is_some()),
        "bosun's NAT table holds {} flows, {} SNATed: the node ports were not served by its \
         programs",
        flows.len(),
        flows.iter().filter(|f| f.snat.is_some()).count()
    );
    drop(targets);
    installed.remove()?;
    drop(bosun);
    drop(iptables);
    drop(floor);
    Ok(())
}

/// bosun's programs installed, attached to `node`'s client and remote-node veths and
/// programmed with the catalog, as the daemon does it.
fn program_bosun(node: &Node, catalog: &Catalog, report: &mut Report) -> Result<Installed> {
    let installed = Installed::new();
    // As the daemon chooses for the node's interfaces: tcx from 6.6, or BOSUN_TC_ATTACH.
    let mode = bosun_netdp::tc::TcMode::detect(bosun_netdp::tc::Interfaces::Node)?;
    let mut datapath = nodeport::install(Path::new(BPF_DIR), mode)
        .with_context(|| format!("installing the programs in {BPF_DIR}"))?;
    let links = [TO_CLIENT.0, TO_REMOTE.0]
        .into_iter()
        .map(|link| node.ifindex(link))
        .collect::<Result<Vec<u32>>>()?;
    let netns = node.names.node;
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<()> {
                enter_netns(netns)?;
                for ifindex in links {
                    datapath
                        .attach(ifindex)
                        .with_context(|| format!("attaching to interface {ifindex}"))?;
                }
                Ok(())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the attaching thread panicked"))?
    })?;
    datapath
        .maps()
        .and_then(|mut maps| maps.set_snat_address(Some(NODE_ADDRESS)))
        .context("setting the SNAT address")?;
    let desired = desired_services(catalog);
    let mut reconciler =
        Reconciler::new(PinnedMaps::open(Path::new(BPF_DIR)).context("opening the service maps")?);
    let started = Instant::now();
    let applied = reconciler
        .apply(&desired)
        .context("writing the Services to the maps")?;
    report.bosun_apply = Some(started.elapsed());
    ensure!(
        applied.added == desired.len(),
        "applying {} frontends to empty maps added {}: were they empty?",
        desired.len(),
        applied.added
    );
    Ok(installed)
}

/// bosun's programs and maps in [`BPF_DIR`]: removed by [`Installed::remove`], or when
/// dropped on the way out of a failure.
struct Installed {
    removed: bool,
}

impl Installed {
    /// Made before `install`, so that a half-done install is removed too.
    fn new() -> Installed {
        Installed { removed: false }
    }

    fn remove(mut self) -> Result<()> {
        self.removed = true;
        remove_datapath()
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = remove_datapath() {
                eprintln!("nodeport bench: {e:#}");
            }
        }
    }
}

/// The node-port programs' links and maps first, then the service maps and the directory.
fn remove_datapath() -> Result<()> {
    let dir = Path::new(BPF_DIR);
    nodeport::cleanup(dir).with_context(|| format!("removing the programs in {BPF_DIR}"))?;
    datapath::cleanup(dir).with_context(|| format!("removing the maps in {BPF_DIR}"))?;
    Ok(())
}

/// Removes what a killed run left: `bnp-*` namespaces, then the datapath.
fn sweep_leftovers() -> Result<()> {
    for netns in service_lab::netns_names()? {
        if netns.starts_with(PREFIX) {
            ip(&["netns", "del", &netns])?;
        }
    }
    remove_datapath()
}

/// What the benchmark may have left behind, as the last line of its output.
fn print_leftovers() {
    let mut left: Vec<String> = match service_lab::netns_names() {
        Ok(names) => names
            .into_iter()
            .filter(|n| n.starts_with(PREFIX))
            .map(|n| format!("netns {n}"))
            .collect(),
        Err(e) => vec![format!("(listing namespaces: {e:#})")],
    };
    if Path::new(BPF_DIR).exists() {
        left.push(BPF_DIR.to_owned());
    }
    if left.is_empty() {
        println!("left behind: nothing");
    } else {
        println!("left behind:\n  {}", left.join("\n  "));
    }
}

// ---- Maglev -------------------------------------------------------------------------------

/// Backend `i` of the comparison.
fn maglev_backend(i: usize) -> ExternalTarget {
    ExternalTarget {
        backend: BackendAddr {
            address: Ipv4Addr::from_bits(Ipv4Addr::new(10, 218, 1, 0).to_bits() + 1 + i as u32),
            port: FIRST_TARGET_PORT,
        },
        local: false,
    }
}

/// Shares (of the table, or of the flows) that moved besides those the change had to move:
/// one for each backend removed in turn, or each backend added.
struct Moved {
    removed: Vec<f64>,
    added: Vec<f64>,
}

fn maglev_moved(n: usize) -> Moved {
    let backends: Vec<ExternalTarget> = (0..n).map(maglev_backend).collect();
    let owner = |t: &ExternalTarget| address_from_host(t.backend.address.to_bits());
    let before = maglev::table(&backends);
    let share = |count: usize| count as f64 / MAGLEV_TABLE_SIZE as f64;
    let removed = backends
        .iter()
        .map(|gone| {
            let rest: Vec<ExternalTarget> =
                backends.iter().copied().filter(|b| b != gone).collect();
            let after = maglev::table(&rest);
            let gone = owner(gone);
            share(
                before
                    .entries
                    .iter()
                    .zip(&after.entries)
                    .filter(|(b, a)| b.address != gone && b.address != a.address)
                    .count(),
            )
        })
        .collect();
    let added = (n..n + MAGLEV_ADDITIONS)
        .map(|i| {
            let new = maglev_backend(i);
            let mut with = backends.clone();
            with.push(new);
            let after = maglev::table(&with);
            let new = owner(&new);
            share(
                before
                    .entries
                    .iter()
                    .zip(&after.entries)
                    .filter(|(b, a)| a.address != new && b.address != a.address)
                    .count(),
            )
        })
        .collect();
    Moved { removed, added }
}

/// The same for a backend picked as the flow's hash modulo the number of backends, over
/// [`MODULO_FLOWS`] client address and port pairs hashed with the programs' `flow_hash`.
fn modulo_moved(n: usize) -> Moved {
    let hashes: Vec<usize> = (0..MODULO_FLOWS)
        .map(|f| {
            let client = Ipv4Addr::from_bits(Ipv4Addr::new(192, 0, 2, 0).to_bits() + f / 64);
            let port = 32768 + (f % 64) as u16;
            flow_hash(address_from_host(client.to_bits()), port_from_host(port), 6) as usize
        })
        .collect();
    let share = |count: usize| count as f64 / hashes.len() as f64;
    // Backends in a fixed order, as a table of them would be; an addition goes last.
    let removed = (0..n)
        .map(|gone| {
            let rest: Vec<usize> = (0..n).filter(|b| *b != gone).collect();
            share(
                hashes
                    .iter()
                    .filter(|h| {
                        let before = *h % n;
                        before != gone && rest[*h % rest.len()] != before
                    })
                    .count(),
            )
        })
        .collect();
    // Every backend added goes last in the order: one figure.
    let added = share(
        hashes
            .iter()
            .filter(|h| {
                let after = *h % (n + 1);
                after != n && after != *h % n
            })
            .count(),
    );
    let added = vec![added; MAGLEV_ADDITIONS];
    Moved { removed, added }
}

fn print_maglev() {
    println!(
        "\nflows moved by one backend change, besides those it must move (the removed \
         backend's, or those the added one takes)"
    );
    println!(
        "  Maglev: share of the {MAGLEV_TABLE_SIZE} table entries that change backend \
         (bosun_netdp::service::maglev::table); modulo-N: share of {MODULO_FLOWS} flows \
         (client address and port, hashed by the programs' flow_hash)"
    );
    println!(
        "  {:<34} {:>20} {:>20} {:>10}",
        "", "Maglev mean (max)", "modulo-N mean (max)", "must move"
    );
    let percent = |shares: &[f64]| -> String {
        let mean = shares.iter().sum::<f64>() / shares.len() as f64;
        let max = shares.iter().copied().fold(0.0, f64::max);
        format!("{:.1}% ({:.1}%)", mean * 100.0, max * 100.0)
    };
    for n in MAGLEV_BACKENDS {
        let maglev = maglev_moved(n);
        let modulo = modulo_moved(n);
        for (change, maglev, modulo, must) in [
            (
                format!("{n} backends, one removed (each)"),
                &maglev.removed,
                &modulo.removed,
                1.0 / n as f64,
            ),
            (
                format!("{n} backends, one added ({MAGLEV_ADDITIONS})"),
                &maglev.added,
                &modulo.added,
                1.0 / (n + 1) as f64,
            ),
        ] {
            println!(
                "  {change:<34} {:>20} {:>20} {:>9.1}%",
                percent(maglev),
                percent(modulo),
                must * 100.0
            );
        }
    }
}

// ---- reporting ----------------------------------------------------------------------------

/// Everything measured for one N; printed as one block.
struct Report {
    n: usize,
    load: String,
    steal_at_start: Option<Duration>,
    foreign: Vec<String>,
    iptables_load: Option<Duration>,
    bosun_apply: Option<Duration>,
    /// Rows, the index of the row each is compared with, and how many connections failed.
    connections: Vec<(Row, Option<usize>, usize)>,
    round_trips: Vec<(Row, Option<usize>, usize)>,
    /// Flows in bosun's NAT table at the end, and how many of them SNATed.
    flows: Option<(usize, usize)>,
}

impl Report {
    fn new(n: usize) -> Report {
        Report {
            n,
            load: load_average(),
            steal_at_start: lab::stolen(),
            foreign: Vec::new(),
            iptables_load: None,
            bosun_apply: None,
            connections: Vec::new(),
            round_trips: Vec::new(),
            flows: None,
        }
    }

    fn print(&self) {
        let n = self.n;
        println!(
            "\n=== {n} NodePort Services, {ENDPOINTS_PER_SERVICE} endpoints each ===\n\
             load average {} at the start, {} at the end",
            self.load,
            load_average()
        );
        if let (Some(start), Some(end)) = (self.steal_at_start, lab::stolen()) {
            println!(
                "CPU time the hypervisor took from this machine meanwhile (steal): {} ms",
                end.saturating_sub(start).as_millis()
            );
        }
        for path in &self.foreign {
            println!(
                "NOTE: another bosun datapath is attached ({path}): its connect programs ran \
                 on every client's connects here, in every topology alike"
            );
        }
        if let Some(took) = self.iptables_load {
            println!(
                "iptables: kube-proxy's rules for {n} Services loaded in {:.1} s (in parts of \
                 {RESTORE_PART})",
                took.as_secs_f64()
            );
        }
        if let Some(took) = self.bosun_apply {
            println!(
                "bosun: {n} ClusterIPs and {n} node ports written to empty maps in {:.0} ms",
                lab::ms(took)
            );
        }
        if let Some((flows, snat)) = self.flows {
            println!("bosun: its NAT table held {flows} flows at the end, {snat} of them SNATed");
        }
        for (title, rows, rates) in [
            (
                "connection: connect, one 32-byte request and answer, close (SO_LINGER 0)",
                &self.connections,
                true,
            ),
            (
                "request and answer (32 bytes) over one kept connection",
                &self.round_trips,
                false,
            ),
        ] {
            if rows.is_empty() {
                continue;
            }
            let mut table = Table::new(title, "µs");
            for (row, baseline, _) in rows {
                table.row(row.clone(), *baseline);
            }
            table.print();
            for (row, _, failed) in rows.iter().filter(|(_, _, f)| *f > 0) {
                println!(
                    "  FAILED: {}: {failed} connections not made within {} s (left out above)",
                    row.label,
                    CONNECT_TIMEOUT.as_secs()
                );
            }
            if rates {
                print_rates(rows);
            }
        }
    }
}

/// Connections per second of each row, one client connecting one at a time, against its
/// baseline's.
fn print_rates(rows: &[(Row, Option<usize>, usize)]) {
    let rate = |row: &Row| -> Option<f64> {
        let total: f64 = row.samples.iter().sum();
        (total > 0.0).then(|| row.samples.len() as f64 * 1e6 / total)
    };
    println!(
        "  connections per second (one client, one connection at a time; from the mean, so \
         the slow tail counts):"
    );
    for (row, baseline, _) in rows {
        let Some(r) = rate(row) else { continue };
        let ratio = baseline
            .and_then(|b| rate(&rows[b].0))
            .map(|base| format!("  {:.2}× the floor's", r / base))
            .unwrap_or_default();
        println!("    {:<56} {r:>9.0}/s{ratio}", row.label);
    }
}
