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
//! - `xdp`: packets per second of one established node port flow whose backend is on another
//!   node, so that its packets leave by the interface they came in by, served by bosun's XDP
//!   program (rewritten and sent back out by the driver, `XDP_TX`) against bosun's tc programs
//!   alone (DNAT, the kernel's routing, SNAT), and against a floor of the kernel forwarding
//!   the same frames with no NAT and no program. Two pairs of namespaces, each a generator and
//!   a node joined by one veth (the generator plays the client and the remote node both): one
//!   for the floor, one whose node runs bosun's programs, with its XDP program attached for
//!   the XDP row and taken off for the tc row. The frames go round: 128 of them, sent once
//!   from an `AF_PACKET` socket, circulate between the node and an XDP program on the
//!   generator's veth that writes the client's 64-byte UDP frame over each one that comes back
//!   and sends it out again; that veth counts them. The loop runs on one CPU, in softirq
//!   context, so a fourth row, the node sending each frame straight back, gives the loop's own
//!   cost, and each row's node time per packet is what it adds to that. The rows are measured
//!   in interleaved windows of 2 s, and before them each path is checked with the kernel's run
//!   counts of bosun's programs (the XDP row's frames went by XDP, the tc row's by tc). Every
//!   veth end that receives frames sent by XDP must run an XDP program (veth hands such frames
//!   only to a peer that does), so the node's uplink runs one in every row: bosun's, or one
//!   that passes everything to the kernel, for the floor and tc rows alike.
//!
//! Run as root: `cargo bench -p bosun --bench nodeport -- [--quick | --smoke] [--samples N]
//! [FILTER...]` (or `scripts/bench.sh nodeport`). A FILTER selects the benchmarks whose name
//! contains it. `--smoke` measures 1000 Services with one sample per target, and one short
//! window per XDP row, only to show that the benchmark still runs (`scripts/bench.sh smoke`).
//! `--samples N` is the connections and round trips per target of `traffic`, and the windows
//! per row of `xdp`.
//!
//! Everything the benchmark creates is a `bnp-*` network namespace (links and addresses live
//! inside them, so nothing of the host's is touched), a BPF program whose file descriptors it
//! holds, or lives in /sys/fs/bpf/bosun-npbench (`traffic`) or /sys/fs/bpf/bosun-npbench-xdp
//! (`xdp`). It is removed when the run ends, also on Ctrl-C, and swept away at the start if a
//! killed run left it behind.

mod common;
// `whole()` is the services benchmark's: this one only loads the rules, in parts.
#[allow(dead_code)]
#[path = "common/kube_proxy.rs"]
mod kube_proxy;
// Its goals' verdicts are the other benchmarks': this one states no goal.
#[allow(dead_code)]
#[path = "common/lab.rs"]
mod lab;
#[path = "common/netns_thread.rs"]
mod netns_thread;
#[path = "common/program_clock.rs"]
mod program_clock;
#[path = "common/server_thread.rs"]
mod server_thread;
// Its Service catalog, client threads, listeners and tables; its host-routed network is the
// services benchmark's.
#[allow(dead_code)]
#[path = "common/service_lab.rs"]
mod service_lab;

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bosun_ebpf_abi::{
    address_from_host, flow_hash, port_from_host, HOP_TIMEOUT_NS, MAGLEV_TABLE_SIZE,
};
use bosun_netdp::nodeport::{self, NodePortDatapath, NodePortMaps};
use bosun_netdp::service::{
    self as datapath, maglev, BackendAddr, DesiredService, ExternalTarget, Frontend, PinnedMaps,
    Protocol, Reconciler, ServicePortName,
};
use common::{load_average, Args, Mode, Stats};
use kube_proxy::{restore_in_parts, KubeProxyRules, PortInfo};
use lab::{catch_interrupts, check_interrupted, ip, pin, run_command, CLIENT_CPU, SERVER_CPU};
use netns_thread::in_netns;
use program_clock::ProgramClock;
use raw_xdp::RawXdp;
use server_thread::ServerThread;
use service_lab::{
    foreign_datapaths, listen_all, open, reset_on_close, Catalog, Client, Row, Table, BLOCK,
    ENDPOINTS_PER_SERVICE, ENDPOINT_NET, ENDPOINT_PREFIX, FIRST_TARGET_PORT, NAMESPACE,
    SERVICE_PORT, WARM_UP_CONNECT_TIMEOUT,
};

const BENCHMARKS: [&str; 3] = ["traffic", "maglev", "xdp"];

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
    if args.selected("traffic") {
        println!(
            "bosun NodePort benchmarks{}: N = {:?} NodePort Services of \
             {ENDPOINTS_PER_SERVICE} endpoints, {} connections and {} round trips per target \
             after {} unmeasured",
            args.mode.label(),
            sizes.services,
            sizes.samples,
            sizes.samples,
            sizes.warm_up
        );
    } else {
        println!("bosun NodePort benchmarks{}", args.mode.label());
    }
    println!("machine: {}, {}", lab::machine(), iptables.trim());
    println!("load average at the start: {}", load_average());

    let builds_networks = args.selected("traffic") || args.selected("xdp");
    if builds_networks {
        sweep_leftovers()?;
    }
    let mut outcome = Ok(());
    if args.selected("traffic") {
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
    if outcome.is_ok() && args.selected("xdp") {
        let sizes = xdp_sizes(args);
        let mut report = XdpReport::new(&sizes);
        outcome = xdp(&sizes, &mut report);
        report.print();
    }
    println!("\nload average at the end: {}", load_average());
    if builds_networks {
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
        let namespaces = Namespaces::create(&[names.client, names.node, names.pod, names.remote])?;
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
        write_sysctls(node, &[("net/ipv4/ip_forward", "1")])?;
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
        ifindex_in(self.names.node, link)
    }
}

/// The index of `link` in network namespace `netns`.
fn ifindex_in(netns: &str, link: &str) -> Result<u32> {
    // "5: to-client@if2: <FLAGS> ..."
    let line = ip(&["-n", netns, "-o", "link", "show", link])?;
    line.split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("the index of {link} in {:?}", line.trim()))
}

/// Writes each `(name, value)` under /proc/sys in `netns` (such as IPv4 forwarding, which a
/// new namespace has off).
fn write_sysctls(netns: &str, settings: &[(&str, &str)]) -> Result<()> {
    // /proc/sys/net is the namespace of the thread that opens it.
    in_netns(netns, None, || {
        for (name, value) in settings {
            std::fs::write(Path::new("/proc/sys").join(name), value)
                .with_context(|| format!("setting {name} to {value} in {netns}"))?;
        }
        Ok(())
    })
}

/// A topology's namespaces, with their loopbacks up; removed when dropped.
struct Namespaces(Vec<&'static str>);

impl Namespaces {
    fn create(names: &[&'static str]) -> Result<Namespaces> {
        let mut namespaces = Namespaces(Vec::with_capacity(names.len()));
        for &netns in names {
            ip(&["netns", "add", netns])?;
            // Made: removed on drop from here on.
            namespaces.0.push(netns);
            ip(&["-n", netns, "link", "set", "lo", "up"])?;
        }
        Ok(namespaces)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for &netns in &self.0 {
            // Already gone (deleted by hand): nothing to complain of.
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
    let installed = Installed::new(BPF_DIR);
    let links = [TO_CLIENT.0, TO_REMOTE.0]
        .into_iter()
        .map(|link| node.ifindex(link))
        .collect::<Result<Vec<u32>>>()?;
    let _datapath = install_bosun(BPF_DIR, node.names.node, &links, NODE_ADDRESS)?;
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

/// bosun's node-port programs loaded with their maps pinned in `bpf_dir`, attached to the
/// interfaces `links` of network namespace `netns`, with `snat_address` to SNAT flows to
/// other nodes' backends to, as the daemon does it.
fn install_bosun(
    bpf_dir: &str,
    netns: &str,
    links: &[u32],
    snat_address: Ipv4Addr,
) -> Result<NodePortDatapath> {
    // As the daemon chooses for the node's interfaces: tcx from 6.6, or BOSUN_TC_ATTACH.
    let mode = bosun_netdp::tc::TcMode::detect(bosun_netdp::tc::Interfaces::Node)?;
    let mut datapath = nodeport::install(Path::new(bpf_dir), mode)
        .with_context(|| format!("installing the programs in {bpf_dir}"))?;
    in_netns(netns, None, || {
        for &ifindex in links {
            datapath
                .attach(ifindex)
                .with_context(|| format!("attaching to interface {ifindex} of {netns}"))?;
        }
        Ok(())
    })?;
    datapath
        .maps()
        .and_then(|mut maps| maps.set_snat_address(Some(snat_address)))
        .context("setting the SNAT address")?;
    Ok(datapath)
}

/// bosun's programs and maps in a bpffs directory: removed by [`Installed::remove`], or when
/// dropped on the way out of a failure.
struct Installed {
    bpf_dir: &'static str,
    removed: bool,
}

impl Installed {
    /// Made before `install`, so that a half-done install is removed too.
    fn new(bpf_dir: &'static str) -> Installed {
        Installed {
            bpf_dir,
            removed: false,
        }
    }

    fn remove(mut self) -> Result<()> {
        self.removed = true;
        remove_datapath(self.bpf_dir)
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = remove_datapath(self.bpf_dir) {
                eprintln!("nodeport bench: {e:#}");
            }
        }
    }
}

/// The node-port programs' links and maps in `bpf_dir` first, then the service maps and the
/// directory.
fn remove_datapath(bpf_dir: &str) -> Result<()> {
    let dir = Path::new(bpf_dir);
    nodeport::cleanup(dir).with_context(|| format!("removing the programs in {bpf_dir}"))?;
    datapath::cleanup(dir).with_context(|| format!("removing the maps in {bpf_dir}"))?;
    Ok(())
}

/// Removes what a killed run left: `bnp-*` namespaces, then both benchmarks' datapaths.
fn sweep_leftovers() -> Result<()> {
    for netns in service_lab::netns_names()? {
        if netns.starts_with(PREFIX) {
            ip(&["netns", "del", &netns])?;
        }
    }
    remove_datapath(BPF_DIR)?;
    remove_datapath(XDP_BPF_DIR)
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
    for dir in [BPF_DIR, XDP_BPF_DIR] {
        if Path::new(dir).exists() {
            left.push(dir.to_owned());
        }
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

// ---- XDP ----------------------------------------------------------------------------------

/// Where the XDP benchmark pins bosun's programs and maps.
const XDP_BPF_DIR: &str = "/sys/fs/bpf/bosun-npbench-xdp";

/// A generator and the node it sends to, each a network namespace, joined by one veth: the
/// node's [`UPLINK`] and the generator's [`GENERATOR_LINK`].
struct PairNames {
    generator: &'static str,
    node: &'static str,
}

/// The floor's node runs no program but a raw one on its uplink, which passes frames on (or,
/// for the loop alone, sends them back); bosun's runs bosun's.
const XDP_FLOOR: PairNames = PairNames {
    generator: "bnp-xdp-floor-gen",
    node: "bnp-xdp-floor-node",
};
const XDP_BOSUN: PairNames = PairNames {
    generator: "bnp-xdp-bosun-gen",
    node: "bnp-xdp-bosun-node",
};

/// Not `up`, which `ip link` reads as a keyword.
const UPLINK: &str = "uplink";
const GENERATOR_LINK: &str = "eth0";
/// Fixed (locally administered) MAC addresses, so that the frame is written before the links
/// exist and the node needs no ARP answer from the generator, whose XDP program takes every
/// frame.
const UPLINK_MAC: [u8; 6] = [0x02, 0x62, 0x6e, 0x70, 0x00, 0x01];
const GENERATOR_MAC: [u8; 6] = [0x02, 0x62, 0x6e, 0x70, 0x00, 0x02];
/// The node's uplink: the node port's address, and the address flows are SNATed to.
const XDP_NODE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 1);
/// The generator, on the node's LAN: the client the flow comes from, and the remote node its
/// backend is routed through.
const GENERATOR_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 2);
const XDP_PREFIX: u8 = 24;
/// The remote node's pods, and the Service's one backend among them.
const XDP_REMOTE_NET: &str = "10.231.1.0/24";
const XDP_BACKEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 231, 1, 10), 8080);
const XDP_NODE_PORT: u16 = 30080;
const XDP_CLIENT_PORT: u16 = 40000;
/// Ethernet, IPv4 and UDP headers and the payload: the shortest Ethernet frame, 64 bytes on a
/// wire with its FCS.
const XDP_FRAME_BYTES: usize = 14 + 20 + 8 + XDP_PAYLOAD_BYTES;
const XDP_PAYLOAD_BYTES: usize = 18;
/// The frames that circulate between the generator and the node: enough that every NAPI poll
/// on the way takes a full batch (64), and fewer than a veth's receive ring holds (256), so
/// that none is dropped for want of room.
const FRAMES_IN_FLIGHT: usize = 128;
/// How long the frames of a stopped loop take to drain, at most.
const DRAIN: Duration = Duration::from_millis(20);
/// At most this share of the XDP row's frames may go through the kernel (its once-a-second
/// refresh of the Ethernet header takes a handful): more, and the row does not measure XDP.
const XDP_MAX_KERNEL_SHARE: f64 = 0.05;
/// A window whose second half ran slower than this share of its first lost frames from its
/// loop (or the machine got busier): the report says so.
const STEADY: f64 = 0.9;

/// The windows of each row and how long each lasts; before each, an unmeasured warm-up (the
/// first packets after a change of program go through the kernel); before all, one check of
/// each path.
struct XdpSizes {
    windows: usize,
    window: Duration,
    warm_up: Duration,
    check: Duration,
}

fn xdp_sizes(args: &Args) -> XdpSizes {
    let ms = Duration::from_millis;
    let (windows, window, warm_up, check) = match args.mode {
        Mode::Smoke => (1, ms(200), ms(100), ms(200)),
        // A check of a second sees the XDP row's refresh through the kernel (once a second).
        Mode::Quick => (3, ms(1000), ms(200), ms(1000)),
        Mode::Full => (7, ms(2000), ms(300), ms(1000)),
    };
    XdpSizes {
        windows: args.samples.unwrap_or(windows),
        window,
        warm_up,
        check,
    }
}

/// The rows of the XDP benchmark: what carries the frames through the node.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    /// Nothing: an XDP program on the floor's uplink sends them straight back, so that the
    /// loop's own cost shows (the generator's, and veth's both ways).
    Loop,
    /// The kernel routes them back out, no NAT, no program but the pass-through one.
    Floor,
    /// bosun's tc programs DNAT and SNAT them around the kernel's routing.
    Tc,
    /// bosun's XDP program rewrites them and sends them back out.
    Xdp,
}

const WAYS: [Way; 4] = [Way::Loop, Way::Floor, Way::Tc, Way::Xdp];

impl Way {
    fn label(self) -> &'static str {
        match self {
            Way::Loop => "loop alone: the uplink sends each frame straight back",
            Way::Floor => "floor: routed back out of the uplink, no NAT",
            Way::Tc => "bosun tc: node port → remote backend, SNATed",
            Way::Xdp => "bosun XDP: the same, sent back out by XDP_TX",
        }
    }

    fn index(self) -> usize {
        match self {
            Way::Loop => 0,
            Way::Floor => 1,
            Way::Tc => 2,
            Way::Xdp => 3,
        }
    }
}

/// The XDP benchmark: both pairs built, bosun installed on its node with the one Service,
/// each path checked, then every row measured in interleaved windows.
fn xdp(sizes: &XdpSizes, report: &mut XdpReport) -> Result<()> {
    let mut lab = XdpLab::create()?;
    report.kernel_per_second = Some(lab.check(sizes)?);
    for _ in 0..sizes.windows {
        for way in WAYS {
            lab.prepare(way)?;
            let window = lab.window(way, sizes.warm_up, sizes.window)?;
            check_interrupted()?;
            ensure!(
                window.frames > 0,
                "{}: no frame came round in {:.1} s",
                way.label(),
                window.seconds
            );
            report.windows[way.index()].push(window);
        }
    }
    // The rows' frames were one flow through bosun's programs, SNATed.
    let flows = NodePortMaps::open(Path::new(XDP_BPF_DIR))
        .and_then(|maps| maps.flows(nodeport::monotonic_now()))
        .context("reading the NAT table")?;
    let [flow] = flows.as_slice() else {
        anyhow::bail!(
            "bosun's NAT table holds {} flows, not the generator's one: {flows:?}",
            flows.len()
        );
    };
    let (snat, port) = flow
        .snat
        .with_context(|| format!("the generator's flow was not SNATed: {flow:?}"))?;
    report.flow = Some(format!(
        "{}:{} → {}:{} → {}:{}, SNATed to {snat}:{port}",
        flow.client.0,
        flow.client.1,
        flow.frontend.0,
        flow.frontend.1,
        flow.backend.0,
        flow.backend.1
    ));
    lab.remove()
}

/// The Service: the node port on the uplink's address, its one backend on the remote node.
fn xdp_service() -> DesiredService {
    let backend = BackendAddr {
        address: *XDP_BACKEND.ip(),
        port: XDP_BACKEND.port(),
    };
    DesiredService {
        frontend: Frontend {
            address: XDP_NODE_ADDRESS,
            port: XDP_NODE_PORT,
            protocol: Protocol::Udp,
        },
        name: ServicePortName {
            namespace: Arc::from(NAMESPACE),
            name: Arc::from("xdp"),
            port: Arc::from(""),
        },
        affinity_timeout: None,
        backends: vec![backend],
        external: Some(Box::new([ExternalTarget {
            backend,
            local: false,
        }])),
    }
}

/// One generator and node (see [`PairNames`]) and the frame the generator sends. The
/// generator's veth runs the sink, or, while a window runs, the pair's reflector; the uplink
/// the pass-through program (while bosun's XDP program is not there). Dropping it detaches
/// them (a link's program is taken off when its last descriptor closes), which ends any loop,
/// then removes the namespaces.
struct Pair {
    names: &'static PairNames,
    generator_ifindex: u32,
    uplink_ifindex: u32,
    frame: Vec<u8>,
    /// Sends every frame that reaches the generator back to the node as `frame`.
    reflector: RawXdp,
    generator_link: OwnedFd,
    /// The link of the uplink's raw XDP program (the pass-through one, or on the floor's the
    /// one that sends frames back); none while bosun's XDP program is there.
    uplink_xdp: Option<OwnedFd>,
    _namespaces: Namespaces,
}

impl Pair {
    /// The pair, its generator sending `frame`.
    fn create(
        names: &'static PairNames,
        frame: Vec<u8>,
        sink: &RawXdp,
        pass: &RawXdp,
    ) -> Result<Pair> {
        let reflector = RawXdp::reflector("bnp_reflect", &frame)
            .context("loading the XDP program bnp_reflect")?;
        let namespaces = Namespaces::create(&[names.generator, names.node])?;
        let (node, generator) = (names.node, names.generator);
        ip(&[
            "link",
            "add",
            UPLINK,
            "address",
            &mac_text(UPLINK_MAC),
            "netns",
            node,
            "type",
            "veth",
            "peer",
            "name",
            GENERATOR_LINK,
            "address",
            &mac_text(GENERATOR_MAC),
            "netns",
            generator,
        ])?;
        for (netns, link, address) in [
            (node, UPLINK, XDP_NODE_ADDRESS),
            (generator, GENERATOR_LINK, GENERATOR_ADDRESS),
        ] {
            let address = format!("{address}/{XDP_PREFIX}");
            ip(&["-n", netns, "addr", "add", &address, "dev", link])?;
            ip(&["-n", netns, "link", "set", link, "up"])?;
        }
        // The remote node's pods are behind the generator: flows to them leave by the uplink
        // they came in by.
        let via = GENERATOR_ADDRESS.to_string();
        ip(&[
            "-n",
            node,
            "route",
            "add",
            XDP_REMOTE_NET,
            "via",
            &via,
            "dev",
            UPLINK,
        ])?;
        // The generator answers no ARP: its XDP program takes every frame.
        ip(&[
            "-n",
            node,
            "neigh",
            "replace",
            &via,
            "lladdr",
            &mac_text(GENERATOR_MAC),
            "dev",
            UPLINK,
            "nud",
            "permanent",
        ])?;
        let redirects = |conf: &str| format!("net/ipv4/conf/{conf}/send_redirects");
        let (all, default, uplink) = (redirects("all"), redirects("default"), redirects(UPLINK));
        write_sysctls(
            node,
            &[
                ("net/ipv4/ip_forward", "1"),
                // A flow sent back out of its interface is no reason to tell the client of a
                // shorter way.
                (&all, "0"),
                (&default, "0"),
                (&uplink, "0"),
            ],
        )?;
        let generator_ifindex = ifindex_in(generator, GENERATOR_LINK)?;
        let uplink_ifindex = ifindex_in(node, UPLINK)?;
        let generator_link = in_netns(generator, None, || {
            sink.attach(generator_ifindex)
                .with_context(|| format!("attaching the sink to {GENERATOR_LINK} of {generator}"))
        })?;
        let pass = in_netns(node, None, || attach_pass(pass, uplink_ifindex, node))?;
        Ok(Pair {
            names,
            generator_ifindex,
            uplink_ifindex,
            frame,
            reflector,
            generator_link,
            uplink_xdp: Some(pass),
            _namespaces: namespaces,
        })
    }

    /// Frames received by the generator's veth so far, and when they were counted.
    fn received(&self) -> Result<(Instant, u64)> {
        in_netns(self.names.generator, None, || {
            let frames = received(GENERATOR_LINK)?;
            Ok((Instant::now(), frames))
        })
    }
}

/// Attaches the pass-through program to the uplink `ifindex` of the calling thread's
/// namespace `netns`, once the program before it is off: the kernel may let go of an unpinned
/// link a moment after the pin is gone.
fn attach_pass(pass: &RawXdp, ifindex: u32, netns: &str) -> Result<OwnedFd> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match pass.attach(ifindex) {
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            attached => {
                return attached.with_context(|| {
                    format!("attaching the pass-through program to {UPLINK} of {netns}")
                })
            }
        }
    }
}

/// "02:62:6e:70:00:01", as `ip` takes it.
fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// What the XDP benchmark built: the raw programs, both pairs, and bosun's programs on the
/// bosun pair's node. Dropped, it removes all (bosun's pins first, then each pair's links and
/// namespaces).
struct XdpLab {
    installed: Installed,
    sink: RawXdp,
    pass: RawXdp,
    bounce: RawXdp,
    datapath: NodePortDatapath,
    /// Whether the floor's uplink sends frames straight back, rather than passing them on.
    floor_bounces: bool,
    /// Whether bosun's XDP program, rather than the pass-through one, is on its uplink.
    bosun_xdp: bool,
    floor: Pair,
    bosun: Pair,
}

impl XdpLab {
    fn create() -> Result<XdpLab> {
        let program = |name: &'static str, action: i32| {
            RawXdp::returning(name, action)
                .with_context(|| format!("loading the XDP program {name}"))
        };
        let sink = program("bnp_sink", raw_xdp::XDP_DROP)?;
        let pass = program("bnp_pass", raw_xdp::XDP_PASS)?;
        let bounce = program("bnp_bounce", raw_xdp::XDP_TX)?;
        let client = SocketAddrV4::new(GENERATOR_ADDRESS, XDP_CLIENT_PORT);
        let frame = |to: SocketAddrV4| {
            udp_frame(
                (GENERATOR_MAC, client),
                (UPLINK_MAC, to),
                &[b'x'; XDP_PAYLOAD_BYTES],
            )
        };
        // The floor's client sends to the remote pod itself; bosun's to the node port.
        let floor = Pair::create(&XDP_FLOOR, frame(XDP_BACKEND), &sink, &pass)?;
        let node_port = SocketAddrV4::new(XDP_NODE_ADDRESS, XDP_NODE_PORT);
        let bosun = Pair::create(&XDP_BOSUN, frame(node_port), &sink, &pass)?;
        let installed = Installed::new(XDP_BPF_DIR);
        let datapath = install_bosun(
            XDP_BPF_DIR,
            bosun.names.node,
            &[bosun.uplink_ifindex],
            XDP_NODE_ADDRESS,
        )?;
        let desired = [xdp_service()];
        Reconciler::new(
            PinnedMaps::open(Path::new(XDP_BPF_DIR)).context("opening the service maps")?,
        )
        .apply(&desired)
        .context("writing the Service to the maps")?;
        Ok(XdpLab {
            installed,
            sink,
            pass,
            bounce,
            datapath,
            floor_bounces: false,
            bosun_xdp: false,
            floor,
            bosun,
        })
    }

    fn pair(&self, way: Way) -> &Pair {
        match way {
            Way::Loop | Way::Floor => &self.floor,
            Way::Tc | Way::Xdp => &self.bosun,
        }
    }

    /// Puts on the uplink the XDP program `way` needs: on the floor's, the one that sends
    /// frames back for [`Way::Loop`] and the pass-through one for [`Way::Floor`]; on
    /// bosun's, bosun's for [`Way::Xdp`] and the pass-through one for [`Way::Tc`].
    fn prepare(&mut self, way: Way) -> Result<()> {
        let on = match way {
            Way::Loop | Way::Floor => {
                let bounce = way == Way::Loop;
                if bounce != self.floor_bounces {
                    let program = if bounce { &self.bounce } else { &self.pass };
                    let link = self
                        .floor
                        .uplink_xdp
                        .as_ref()
                        .context("the floor's uplink has no XDP link")?;
                    raw_xdp::replace(link, program)
                        .context("changing the XDP program on the floor's uplink")?;
                    self.floor_bounces = bounce;
                }
                return Ok(());
            }
            Way::Tc => false,
            Way::Xdp => true,
        };
        if on == self.bosun_xdp {
            return Ok(());
        }
        let (netns, ifindex) = (self.bosun.names.node, self.bosun.uplink_ifindex);
        if on {
            // Its link's only descriptor: closing it takes the program off at once.
            self.bosun.uplink_xdp = None;
            let datapath = &mut self.datapath;
            in_netns(netns, None, || {
                datapath
                    .attach_xdp(ifindex)
                    .context("attaching bosun's XDP program to the uplink")
            })?;
        } else {
            nodeport::detach_xdp(Path::new(XDP_BPF_DIR), ifindex)
                .context("taking bosun's XDP program off the uplink")?;
            let pass = &self.pass;
            self.bosun.uplink_xdp =
                Some(in_netns(netns, None, || attach_pass(pass, ifindex, netns))?);
        }
        self.bosun_xdp = on;
        Ok(())
    }

    /// Runs `measure` while `way`'s loop runs: its generator's veth reflecting what reaches
    /// it, and [`FRAMES_IN_FLIGHT`] frames sent into the loop from a thread on the clients'
    /// CPU. A veth's frames are handled where they are sent, so the loop runs there (in
    /// softirq context), the node's part and the generator's both. Afterwards, failed or
    /// not, the generator's veth drops what reaches it, which ends the loop.
    fn while_looping<T>(&self, way: Way, measure: impl FnOnce(&Pair) -> Result<T>) -> Result<T> {
        let pair = self.pair(way);
        raw_xdp::replace(&pair.generator_link, &pair.reflector)
            .context("putting the reflector on the generator's veth")?;
        let measured = in_netns(pair.names.generator, None, || {
            pin(CLIENT_CPU)?;
            raw_xdp::send_frames(pair.generator_ifindex, &pair.frame, FRAMES_IN_FLIGHT)
                .context("sending the frames into the loop (AF_PACKET)")
        })
        .and_then(|()| measure(pair));
        raw_xdp::replace(&pair.generator_link, &self.sink)
            .context("putting the sink on the generator's veth")?;
        std::thread::sleep(DRAIN);
        measured
    }

    /// One window of `way`: its loop run for `warm_up`, then its frames counted where they
    /// come round (the generator's veth) for `length`, in two halves.
    fn window(&self, way: Way, warm_up: Duration, length: Duration) -> Result<Window> {
        self.while_looping(way, |pair| {
            std::thread::sleep(warm_up);
            let (start, at_start) = pair.received()?;
            std::thread::sleep(length / 2);
            let (middle, at_middle) = pair.received()?;
            std::thread::sleep(length / 2);
            let (end, at_end) = pair.received()?;
            let rate = |from: (Instant, u64), to: (Instant, u64)| {
                to.1.saturating_sub(from.1) as f64 / (to.0 - from.0).as_secs_f64()
            };
            Ok(Window {
                frames: at_end.saturating_sub(at_start),
                seconds: (end - start).as_secs_f64(),
                halves: [
                    rate((start, at_start), (middle, at_middle)),
                    rate((middle, at_middle), (end, at_end)),
                ],
            })
        })
    }

    /// Shows that each row's frames take the path it names, counting bosun's programs' runs
    /// (the kernel's run statistics, on only here: they cost every program run two clock
    /// reads): on the tc row, bosun's tc ingress program ran for every frame that came round;
    /// on the XDP row its XDP program did, and the tc one for hardly any. Returns how many
    /// packets per second of the flow the XDP row still gave the kernel.
    fn check(&mut self, sizes: &XdpSizes) -> Result<f64> {
        let links = Path::new(XDP_BPF_DIR).join("nodeport/links");
        let ifindex = self.bosun.uplink_ifindex;
        let clock = |hook: &str| ProgramClock::start(&[links.join(format!("{ifindex}_{hook}"))]);
        let mut kernel_per_second = 0.0;
        for way in WAYS {
            self.prepare(way)?;
            let (tc, xdp) = match way {
                Way::Loop | Way::Floor => (None, None),
                Way::Tc => (Some(clock("in")?), None),
                Way::Xdp => (Some(clock("in")?), Some(clock("xdp")?)),
            };
            let runs = |clock: &Option<ProgramClock>| -> Result<u64> {
                clock.as_ref().map_or(Ok(0), |c| Ok(c.read()?.1))
            };
            let (tc_runs, xdp_runs, frames, seconds) = self.while_looping(way, |pair| {
                std::thread::sleep(sizes.warm_up);
                let (tc_before, xdp_before) = (runs(&tc)?, runs(&xdp)?);
                let (start, at_start) = pair.received()?;
                std::thread::sleep(sizes.check);
                let (end, at_end) = pair.received()?;
                let (tc_after, xdp_after) = (runs(&tc)?, runs(&xdp)?);
                Ok((
                    tc_after.saturating_sub(tc_before),
                    xdp_after.saturating_sub(xdp_before),
                    at_end.saturating_sub(at_start),
                    (end - start).as_secs_f64(),
                ))
            })?;
            check_interrupted()?;
            ensure!(
                frames > 0,
                "{}: no frame came round in {seconds:.1} s",
                way.label()
            );
            // The run counts are read around the frames' count, so every frame counted went
            // through the node meanwhile, but for those already on their way when it began:
            // the slack of one loop's worth.
            let slack = FRAMES_IN_FLIGHT as u64;
            match way {
                Way::Loop | Way::Floor => {}
                Way::Tc => ensure!(
                    tc_runs + slack >= frames,
                    "{}: bosun's tc ingress program ran {tc_runs} times for {frames} frames \
                     that came round",
                    way.label()
                ),
                Way::Xdp => {
                    ensure!(
                        xdp_runs + slack >= frames
                            && tc_runs as f64 <= XDP_MAX_KERNEL_SHARE * frames as f64,
                        "{}: bosun's XDP program ran {xdp_runs} times and its tc ingress \
                         program {tc_runs} for {frames} frames that came round: the XDP \
                         program did not send them",
                        way.label()
                    );
                    kernel_per_second = tc_runs as f64 / seconds;
                }
            }
        }
        Ok(kernel_per_second)
    }

    fn remove(self) -> Result<()> {
        let XdpLab { installed, .. } = self;
        installed.remove()
    }
}

/// What one window counted: the frames that came round, over how long, and the rate of each
/// half (frames per second).
#[derive(Clone, Copy)]
struct Window {
    frames: u64,
    seconds: f64,
    halves: [f64; 2],
}

/// The frames `link` of the calling thread's network namespace has received, as
/// /proc/net/dev counts them. A veth running an XDP program counts every frame it hands the
/// program, the ones it drops or sends back too.
fn received(link: &str) -> Result<u64> {
    let path = "/proc/thread-self/net/dev";
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // "  eth0: RX-bytes RX-packets RX-errs ..."
    text.lines()
        .find_map(|line| {
            let (name, counters) = line.split_once(':')?;
            (name.trim() == link).then(|| counters.split_whitespace().nth(1)?.parse().ok())?
        })
        .with_context(|| format!("no received packets of {link} in {path}"))
}

/// An Ethernet frame of one UDP datagram from `from` to `to` (MAC address, IPv4 address and
/// port) carrying `payload`, IPv4 without options, TTL 64, both checksums complete as on a
/// wire.
fn udp_frame(
    from: ([u8; 6], SocketAddrV4),
    to: ([u8; 6], SocketAddrV4),
    payload: &[u8],
) -> Vec<u8> {
    const IPV4_HEADER: usize = 20;
    const UDP_HEADER: usize = 8;
    const UDP: u8 = 17;
    let udp_length = (UDP_HEADER + payload.len()) as u16;
    let ip_length = IPV4_HEADER as u16 + udp_length;
    let (source, destination) = (from.1.ip().octets(), to.1.ip().octets());

    let mut ip = Vec::with_capacity(IPV4_HEADER);
    ip.extend_from_slice(&[0x45, 0]);
    ip.extend_from_slice(&ip_length.to_be_bytes());
    // Identification 0, no flags, no fragment offset, TTL 64, checksum 0 while summed.
    ip.extend_from_slice(&[0, 0, 0, 0, 64, UDP, 0, 0]);
    ip.extend_from_slice(&source);
    ip.extend_from_slice(&destination);
    let check = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&check.to_be_bytes());

    let mut udp = Vec::with_capacity(usize::from(udp_length));
    udp.extend_from_slice(&from.1.port().to_be_bytes());
    udp.extend_from_slice(&to.1.port().to_be_bytes());
    udp.extend_from_slice(&udp_length.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    // Over the pseudo-header (addresses, protocol, length) and the datagram; a sum of 0 is
    // sent as all ones, 0 meaning no checksum.
    let mut summed = Vec::with_capacity(12 + udp.len());
    summed.extend_from_slice(&source);
    summed.extend_from_slice(&destination);
    summed.extend_from_slice(&[0, UDP]);
    summed.extend_from_slice(&udp_length.to_be_bytes());
    summed.extend_from_slice(&udp);
    let check = match internet_checksum(&summed) {
        0 => 0xffff,
        check => check,
    };
    udp[6..8].copy_from_slice(&check.to_be_bytes());

    let mut frame = Vec::with_capacity(14 + ip.len() + udp.len());
    frame.extend_from_slice(&to.0);
    frame.extend_from_slice(&from.0);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&udp);
    frame
}

/// The Internet checksum (RFC 1071) of `bytes`: the ones' complement of their ones'
/// complement sum in 16-bit words, an odd last byte padded with zero.
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|word| {
            u32::from(u16::from_be_bytes([
                word[0],
                word.get(1).copied().unwrap_or(0),
            ]))
        })
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
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
        print_head(
            &format!("{n} NodePort Services, {ENDPOINTS_PER_SERVICE} endpoints each"),
            &self.load,
            self.steal_at_start,
        );
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

/// A block's title, the load average at its start and now, and the CPU time the hypervisor
/// took meanwhile.
fn print_head(title: &str, load: &str, steal_at_start: Option<Duration>) {
    println!(
        "\n=== {title} ===\nload average {load} at the start, {} at the end",
        load_average()
    );
    if let (Some(start), Some(end)) = (steal_at_start, lab::stolen()) {
        println!(
            "CPU time the hypervisor took from this machine meanwhile (steal): {} ms",
            end.saturating_sub(start).as_millis()
        );
    }
}

/// Everything the XDP benchmark measured; printed as one block.
struct XdpReport {
    load: String,
    steal_at_start: Option<Duration>,
    window: Duration,
    warm_up: Duration,
    /// Each row's windows, in [`Way::index`] order.
    windows: [Vec<Window>; 4],
    /// Packets per second of the flow that the XDP row gave the kernel, in the check.
    kernel_per_second: Option<f64>,
    /// bosun's one flow at the end, as its NAT table shows it.
    flow: Option<String>,
}

impl XdpReport {
    fn new(sizes: &XdpSizes) -> XdpReport {
        XdpReport {
            load: load_average(),
            steal_at_start: lab::stolen(),
            window: sizes.window,
            warm_up: sizes.warm_up,
            windows: [Vec::new(), Vec::new(), Vec::new(), Vec::new()],
            kernel_per_second: None,
            flow: None,
        }
    }

    fn print(&self) {
        print_head(
            "XDP: packets per second of one node port flow sent back out of the node's uplink",
            &self.load,
            self.steal_at_start,
        );
        println!(
            "frames: {FRAMES_IN_FLIGHT} UDP frames of {XDP_FRAME_BYTES} bytes ({} on a wire) go \
             round between the node and the generator, whose veth runs an XDP program that \
             writes the client's frame over each one that comes back and sends it out again \
             (XDP_TX); counted there, by the veth. It all runs on one CPU, in softirq context: \
             the loop alone is its own cost (the generator's, and veth's both ways), and \
             \"node ns\" what a row's node adds to each packet's time over that. The floor's \
             and tc's frames come back to the generator's veth as socket buffers, which veth \
             turns into XDP frames: part of their node's time here, as a driver's transmit \
             would be on a NIC",
            XDP_FRAME_BYTES + 4
        );
        if let Some(flow) = &self.flow {
            println!("bosun: its NAT table held one flow at the end: {flow}");
        }
        println!(
            "NOTE: one established flow, the same 5-tuple every packet, its backend on the \
             remote node (behind the generator), so that it leaves by the uplink it came in by"
        );
        println!(
            "NOTE: the node's uplink runs an XDP program in every row, bosun's or one that \
             passes everything to the kernel (veth hands the frames XDP sends only to a peer \
             that runs one): the floor's and tc's frames enter the kernel by veth's XDP path, \
             alike for both"
        );
        let kernel = self
            .kernel_per_second
            .map(|rate| format!(" (here {rate:.0} packets a second, in the check)"))
            .unwrap_or_default();
        println!(
            "NOTE: the XDP program sends a packet back out only while the Ethernet header the \
             kernel last gave the flow's packets is under {} s old: about once a second a few \
             go through the kernel and the tc programs, which note it again{kernel}",
            HOP_TIMEOUT_NS as f64 / 1e9
        );
        let windows = self.windows.iter().map(Vec::len).max().unwrap_or(0);
        println!(
            "\npackets per second: {windows} windows of {:.1} s per row, interleaved, each \
             after {:.1} s unmeasured",
            self.window.as_secs_f64(),
            self.warm_up.as_secs_f64()
        );
        let stats: Vec<Option<Stats>> = WAYS
            .iter()
            .map(|way| {
                let rates: Vec<f64> = self.windows[way.index()]
                    .iter()
                    .map(|w| w.frames as f64 / w.seconds / 1e3)
                    .collect();
                Stats::of(&rates)
            })
            .collect();
        let median = |way: Way| stats[way.index()].as_ref().map(|s| s.median);
        // What the node adds to each packet's time over the loop alone, from the medians.
        let node_ns = |way: Way| match (way, median(way), median(Way::Loop)) {
            (Way::Loop, _, _) => None,
            (_, Some(rate), Some(alone)) => Some(1e6 / rate - 1e6 / alone),
            _ => None,
        };
        println!(
            "  {:<56} {:>5} {:>9} {:>9} {:>9} {:>9}",
            "thousands per second", "n", "min", "median", "max", "node ns"
        );
        for way in WAYS {
            let Some(stats) = &stats[way.index()] else {
                println!("  {:<56} not measured", way.label());
                continue;
            };
            let node = node_ns(way).map_or_else(|| "—".to_owned(), |ns| format!("{ns:.0}"));
            println!(
                "  {:<56} {:>5} {:>9.1} {:>9.1} {:>9.1} {node:>9}",
                way.label(),
                stats.n,
                stats.min,
                stats.median,
                stats.max
            );
        }
        if let (Some(floor), Some(tc), Some(xdp)) =
            (median(Way::Floor), median(Way::Tc), median(Way::Xdp))
        {
            println!(
                "  medians: bosun XDP / bosun tc {:.2}×, bosun tc / floor {:.2}×, \
                 bosun XDP / floor {:.2}×",
                xdp / tc,
                tc / floor,
                xdp / floor
            );
        }
        if let (Some(tc), Some(xdp)) = (node_ns(Way::Tc), node_ns(Way::Xdp)) {
            println!(
                "  node ns: what the node adds to a packet's time over the loop alone (1 / rate \
                 less the loop's 1 / rate, medians): bosun tc / bosun XDP {:.1}×",
                tc / xdp
            );
        }
        let all = self.windows.iter().flatten();
        let unsteady = all
            .clone()
            .filter(|w| w.halves[1] < STEADY * w.halves[0])
            .count();
        if unsteady > 0 {
            println!(
                "  NOTE: {unsteady} of the {} windows ran their second half at under {:.0}% of \
                 their first's rate: their loop lost frames, or the machine got busier",
                all.count(),
                STEADY * 100.0
            );
        }
    }
}

/// The raw kernel calls of the XDP benchmark: XDP programs of a few instructions loaded with
/// `bpf(2)` (aya loads programs only from an object file), attached in the driver by a BPF
/// link, and swapped on a link; and frames sent from an `AF_PACKET` socket. The offsets into
/// `union bpf_attr` are the kernel's, from include/uapi/linux/bpf.h.
///
/// The kernel's own generator for XDP, `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`,
/// would send the frames without the reflector, but this machine's kernel (6.18) refuses it
/// with `EPERM`, even to root.
mod raw_xdp {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use nix::libc;

    pub const XDP_DROP: i32 = 1;
    pub const XDP_PASS: i32 = 2;
    pub const XDP_TX: i32 = 3;

    const BPF_PROG_LOAD: u32 = 5;
    const BPF_LINK_CREATE: u32 = 28;
    const BPF_LINK_UPDATE: u32 = 29;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    /// `enum bpf_attach_type`'s `BPF_XDP`.
    const BPF_XDP: u32 = 37;
    const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
    /// The program names the kernel keeps: 15 characters and a NUL.
    const NAME_BYTES: usize = 16;

    // Instructions: opcode, then destination and source registers, 16-bit offset, 32-bit
    // immediate.
    /// `BPF_ALU64 | BPF_MOV | BPF_K`: `dst = imm`.
    const MOV_IMM: u8 = 0xb7;
    /// `BPF_ALU64 | BPF_MOV | BPF_X`: `dst = src`.
    const MOV_REG: u8 = 0xbf;
    /// `BPF_ALU64 | BPF_ADD | BPF_K`: `dst += imm`.
    const ADD_IMM: u8 = 0x07;
    /// `BPF_LDX | BPF_MEM | BPF_W`: `dst = *(u32 *)(src + off)`.
    const LOAD_WORD: u8 = 0x61;
    /// `BPF_ST | BPF_MEM | BPF_W`: `*(u32 *)(dst + off) = imm`.
    const STORE_WORD: u8 = 0x62;
    /// `BPF_JMP | BPF_JGT | BPF_X`: `if dst > src goto +off`.
    const JUMP_GREATER: u8 = 0x2d;
    /// `BPF_JMP | BPF_EXIT`.
    const EXIT: u8 = 0x95;

    fn instruction(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
        let mut bytes = [0u8; 8];
        bytes[0] = code;
        bytes[1] = dst | (src << 4);
        bytes[2..4].copy_from_slice(&off.to_ne_bytes());
        bytes[4..8].copy_from_slice(&imm.to_ne_bytes());
        bytes
    }

    /// One loaded program; unloaded when its descriptor and every link to it are closed.
    pub struct RawXdp {
        fd: OwnedFd,
    }

    impl RawXdp {
        /// `return action;`, as the XDP program `name`.
        pub fn returning(name: &str, action: i32) -> io::Result<RawXdp> {
            RawXdp::load(
                name,
                &[
                    instruction(MOV_IMM, 0, 0, 0, action),
                    instruction(EXIT, 0, 0, 0, 0),
                ],
            )
        }

        /// The XDP program `name` that writes `frame` over every frame at least as long that
        /// it receives, and sends it back out (`XDP_TX`); shorter ones it drops. `frame`'s
        /// length must be a multiple of 4, and at most 1514 bytes.
        pub fn reflector(name: &str, frame: &[u8]) -> io::Result<RawXdp> {
            // At most a full frame of an MTU of 1500, so that every offset fits the
            // instructions' 16 bits.
            if !frame.len().is_multiple_of(4) || frame.len() > 1514 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("a frame of {} bytes to reflect", frame.len()),
                ));
            }
            let words = frame.len() / 4;
            // r1: the context (`struct xdp_md`); r2: the frame's start; r3: its end.
            let mut program = vec![
                instruction(LOAD_WORD, 2, 1, 0, 0),
                instruction(LOAD_WORD, 3, 1, 4, 0),
                instruction(MOV_REG, 4, 2, 0, 0),
                instruction(ADD_IMM, 4, 0, 0, frame.len() as i32),
                // Past the stores and the return below, to the drop.
                instruction(JUMP_GREATER, 4, 3, words as i16 + 2, 0),
            ];
            for (i, word) in frame.chunks_exact(4).enumerate() {
                let value = i32::from_ne_bytes([word[0], word[1], word[2], word[3]]);
                program.push(instruction(STORE_WORD, 2, 0, 4 * i as i16, value));
            }
            program.extend([
                instruction(MOV_IMM, 0, 0, 0, XDP_TX),
                instruction(EXIT, 0, 0, 0, 0),
                instruction(MOV_IMM, 0, 0, 0, XDP_DROP),
                instruction(EXIT, 0, 0, 0, 0),
            ]);
            RawXdp::load(name, &program)
        }

        /// Loads `program` as the XDP program `name` (at most 15 characters of letters,
        /// digits, `_` and `.`, as `bpftool prog` will show it).
        fn load(name: &str, program: &[[u8; 8]]) -> io::Result<RawXdp> {
            if name.len() >= NAME_BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("the program name {name:?} is longer than 15 characters"),
                ));
            }
            let license = c"Apache-2.0";
            let mut attr = Attr::default();
            attr.u32(0, BPF_PROG_TYPE_XDP)
                .u32(4, program.len() as u32)
                .u64(8, program.as_ptr() as u64)
                .u64(16, license.as_ptr() as u64)
                .bytes(48, name.as_bytes())
                .u32(68, BPF_XDP);
            let fd = bpf_fd(BPF_PROG_LOAD, &mut attr)?;
            Ok(RawXdp { fd })
        }

        /// Attaches the program to interface `ifindex` of the calling thread's network
        /// namespace in the driver (`XDP_FLAGS_DRV_MODE`); it stays there until the returned
        /// link is closed. `EBUSY`: another program holds the interface.
        pub fn attach(&self, ifindex: u32) -> io::Result<OwnedFd> {
            let mut attr = Attr::default();
            attr.u32(0, self.fd.as_raw_fd() as u32)
                .u32(4, ifindex)
                .u32(8, BPF_XDP)
                .u32(12, XDP_FLAGS_DRV_MODE);
            bpf_fd(BPF_LINK_CREATE, &mut attr)
        }
    }

    /// Puts `program` on `link` in place of the program there, without a moment between.
    pub fn replace(link: &OwnedFd, program: &RawXdp) -> io::Result<()> {
        let mut attr = Attr::default();
        attr.u32(0, link.as_raw_fd() as u32)
            .u32(4, program.fd.as_raw_fd() as u32);
        bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
    }

    /// Sends `frame` (an Ethernet frame, written in full) `count` times out of interface
    /// `ifindex` of the calling thread's network namespace, from an `AF_PACKET` socket.
    pub fn send_frames(ifindex: u32, frame: &[u8], count: usize) -> io::Result<()> {
        const ETH_P_IP: u16 = 0x0800;
        let Some(destination) = frame.get(..6) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a frame of no header",
            ));
        };
        // Protocol 0: the socket receives nothing.
        // SAFETY: a call without pointers.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel returned a new descriptor, which nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut address = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: ETH_P_IP.to_be(),
            sll_ifindex: i32::try_from(ifindex).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("ifindex {ifindex}"))
            })?,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 6,
            sll_addr: [0; 8],
        };
        address.sll_addr[..6].copy_from_slice(destination);
        for _ in 0..count {
            // SAFETY: `frame` and `address` are valid for the lengths passed, and outlive the
            // call, which only reads them.
            let sent = unsafe {
                libc::sendto(
                    socket.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&address as *const libc::sockaddr_ll).cast(),
                    size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if sent < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// `union bpf_attr`, as far as these calls reach; the kernel takes what follows as zero.
    struct Attr([u8; 128]);

    impl Default for Attr {
        fn default() -> Attr {
            Attr([0; 128])
        }
    }

    impl Attr {
        fn bytes(&mut self, offset: usize, bytes: &[u8]) -> &mut Attr {
            self.0[offset..offset + bytes.len()].copy_from_slice(bytes);
            self
        }

        fn u32(&mut self, offset: usize, value: u32) -> &mut Attr {
            self.bytes(offset, &value.to_ne_bytes())
        }

        fn u64(&mut self, offset: usize, value: u64) -> &mut Attr {
            self.bytes(offset, &value.to_ne_bytes())
        }
    }

    /// `bpf(cmd, attr)`: what the call returns, or its `errno`.
    fn bpf(cmd: u32, attr: &mut Attr) -> io::Result<i64> {
        // SAFETY: `attr` is a `union bpf_attr` of the size passed; the memory its pointers
        // name (instructions, license) belongs to the callers, who keep it alive across the
        // call. The kernel reads that, and writes only within `attr`.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                libc::c_long::from(cmd),
                attr.0.as_mut_ptr(),
                attr.0.len(),
            )
        };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(result)
    }

    /// [`bpf`] for the calls that return a new descriptor.
    fn bpf_fd(cmd: u32, attr: &mut Attr) -> io::Result<OwnedFd> {
        let fd = bpf(cmd, attr)?;
        let fd = i32::try_from(fd).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, format!("a descriptor {fd}"))
        })?;
        // SAFETY: the kernel returned a new descriptor, which nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}
