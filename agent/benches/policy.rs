//! bosun's NetworkPolicy benchmarks: what the policy programs cost a packet and a new
//! connection, how long compiling and writing policies takes, and how soon a changed policy is
//! enforced, each against a baseline measured in the same run.
//!
//! The node is a network namespace holding a Linux bridge, whose address is the node's, and
//! the host sides of two pods' veths: a server pod, whose one thread echoes every byte it
//! reads on TCP port 7000 and accepts new connections, and a client pod. The node has a
//! namespace of its own so that nothing here touches the host's interfaces, and so that
//! br_netfilter can be turned off for it alone: with `bridge-nf-call-iptables = 1` (the
//! kernel's default in every namespace) bridged IPv4 goes through iptables and conntrack, whose
//! cost would be measured with the programs'. The programs are bosun's own, loaded by
//! `policy::install` and attached by `PolicyDatapath::attach` to both host-side veths, the maps
//! written by `PolicyReconciler::apply` from what `policy::compile` makes of the policies.
//!
//! The configurations, measured in turns (each round in a rotated order, so that a change in
//! the machine's load hits all of them alike):
//! - **none**: no program attached, the baseline;
//! - **0 policies**: the programs attached to both pods, neither isolated;
//! - **100** and **1000 policies** selecting the server for ingress, each allowing other
//!   peers (distinct /32 ipBlocks, /24 ipBlocks with an except, pods of other namespaces by
//!   namespace and pod selector, pods of the server's namespace by pod selector) on various
//!   ports and protocols; exactly one of them allows the client, on the server's port.
//!
//! The benchmarks:
//! - `request_response`: transactions per second of a 1-byte request and a 1-byte response
//!   over one established TCP connection (a fresh one per sample): packets of a known flow,
//!   which the programs pass after a conntrack lookup.
//! - `new_connections`: connect + 1-byte request and response + close (SO_LINGER 0) per
//!   second: every SYN is judged by the policy lookups.
//! - `programming`: compiling 100 and 1000 policies, and applying 1000 to maps that hold only
//!   the endpoints: the time and the map entries written.
//! - `enforcement`: with 1000 policies in place, the policy that allows the client is changed
//!   so that it no longer selects the client, and back: compile + apply, whether the first
//!   connection after apply returns gets the new verdict, and, with a prober in the client pod
//!   connecting in a tight loop, the time from the change's start to its first dropped (or,
//!   back, allowed) connection.
//!
//! Run as root: `cargo bench -p bosun --bench policy -- [--quick | --smoke] [--samples N]
//! [FILTER...]` (or `scripts/bench.sh policy`). A FILTER selects the benchmarks whose name
//! contains it. `--smoke` takes one short sample of each, only to show that the benchmarks
//! still run (`scripts/bench.sh smoke`, part of `scripts/test.sh`).
//!
//! Everything the benchmark creates is a `bpb-*` network namespace (the bridge and the veths
//! live in them) or lives in /sys/fs/bpf/bosun-policy-bench; its addresses exist only in those
//! namespaces and maps. It is removed when the run ends, also on a panic or Ctrl-C, and swept
//! away at the start if a killed run left it behind.

mod common;
#[path = "common/lab.rs"]
mod lab;
#[path = "common/netns_thread.rs"]
mod netns_thread;
#[path = "common/program_clock.rs"]
mod program_clock;
#[path = "common/server_thread.rs"]
mod server_thread;

use common::{load_average, Stats};
use lab::{
    catch_interrupts, check_interrupted, enter_netns, hundredths, ip, ms, pin, stolen, verdict,
    CLIENT_CPU, SERVER_CPU,
};
use program_clock::ProgramClock;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bosun_netdp::policy::{
    self, Compiled, Direction, NamedPort, PinnedPolicyMaps, PolicyApplied, PolicyDatapath,
    PolicyMaps, PolicyPod, PolicyProtocol, PolicyReconciler,
};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use netns_thread::in_netns;
use server_thread::ServerThread;

const BENCHMARKS: [&str; 5] = [
    "request_response",
    "new_connections",
    "packet_paths",
    "programming",
    "enforcement",
];

// ---- the goals ----------------------------------------------------------------------------

/// Time per transaction (or per new connection) at 1000 policies, over none's.
const GOAL_RATIO: f64 = 1.05;
const GOAL_ENFORCEMENT: Duration = Duration::from_millis(10);

// ---- names and addresses ------------------------------------------------------------------

/// Every network namespace the benchmark creates starts with this.
const PREFIX: &str = "bpb-";
/// The node: the bridge and the pods' host-side veths.
const NODE_NETNS: &str = "bpb-node";
const BRIDGE: &str = "bpb-br";
/// The bridge's address: the node's, which the programs always let through.
const NODE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 218, 0, 1);
const POD_PREFIX_LEN: u8 = 24;
/// Where the benchmark's datapath pins its maps and links (under `policy/`).
const BPF_DIR: &str = "/sys/fs/bpf/bosun-policy-bench";

/// The namespace of both pods and of every policy.
const NAMESPACE: &str = "bench";
const SERVER_PORT: u16 = 7000;
/// The server container's named ports, which some policies name.
const NAMED_PORTS: [(&str, u16); 2] = [("echo", SERVER_PORT), ("metrics", 9090)];

/// A pod: a network namespace joined to the node's bridge by a veth pair, whose pod side is
/// `eth0` with `address`.
struct PodWire {
    netns: &'static str,
    host_if: &'static str,
    address: Ipv4Addr,
    /// The pod's name and its `app` label.
    app: &'static str,
}

const SERVER: PodWire = PodWire {
    netns: "bpb-server",
    host_if: "bpb-h-server",
    address: Ipv4Addr::new(10, 218, 0, 2),
    app: "server",
};
const CLIENT: PodWire = PodWire {
    netns: "bpb-client",
    host_if: "bpb-h-client",
    address: Ipv4Addr::new(10, 218, 0, 3),
    app: "client",
};
const SERVER_ADDRESS: SocketAddrV4 = SocketAddrV4::new(SERVER.address, SERVER_PORT);

/// Peer pods that exist only in the policies' world (no interface here): pod `i` at this
/// address + `i`.
const PEER_POD_NET: Ipv4Addr = Ipv4Addr::new(10, 218, 64, 0);
/// /32 ipBlocks: policy `i`'s at this address + `i`.
const PEER_HOST_NET: Ipv4Addr = Ipv4Addr::new(10, 218, 128, 0);
/// /24 ipBlocks with a /28 except: policy `i`'s at this address + 256·`i`.
const PEER_BLOCK_NET: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 0);
/// Namespaces `team-00`… that peer pods live in, labelled `team: team-NN`.
const TEAMS: usize = 20;
/// The policy that allows the client, and the label its peer selects the client by.
const CLIENT_POLICY: &str = "allow-client";
/// What that selector asks for while the policy no longer allows the client.
const RETIRED_APP: &str = "client-retired";

/// The policy counts measured, besides 0.
const SIZES: [usize; 2] = [100, 1000];
/// The count the enforcement and programming benchmarks use.
const LARGEST: usize = 1000;

// ---- timing -------------------------------------------------------------------------------

/// The longest any connect may take while the client is allowed; a slower one is an error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the prober waits before it counts a connect as dropped. A drop is silent, so only
/// a timeout shows it; between two namespaces on one bridge the handshake completes within
/// the connect call, so a connect that is still pending after this long has lost its SYN.
const PROBE_DENIED_WAIT: Duration = Duration::from_millis(20);
/// The same, while waiting to be allowed again: short, because it is the resolution of the
/// time to being allowed (a dropped SYN is not resent before the next attempt).
const PROBE_ALLOWED_WAIT: Duration = Duration::from_millis(2);
/// How long the check after apply waits before it counts a connect as dropped.
const DENIED_WAIT: Duration = Duration::from_millis(200);
/// Probes before a change, so that the prober runs at full pace when it starts.
const PROBES_BEFORE: usize = 20;
/// Probes started after apply returned, which must all have the new verdict.
const PROBES_AFTER: usize = 3;
/// The longest a prober may take for what the main thread waits for.
const PROBE_WAIT_LIMIT: Duration = Duration::from_secs(5);
/// How often the server checks whether it should stop, in ms.
const SERVER_POLL_MS: u16 = 100;

fn main() {
    let usage =
        format!("[--quick | --smoke] [--samples N] [FILTER...]  (benchmarks: {BENCHMARKS:?})");
    let Some(options) = common::bench_args("policy", &usage, |args| {
        Options::parse(args, &BENCHMARKS, |_, _| Ok(false))
    }) else {
        return;
    };
    common::exit_on_error("policy", catch_interrupts("policy"));
    common::exit_on_error("policy", run(&options));
}

// ---- options ------------------------------------------------------------------------------

// The arguments are just the common ones.
use common::{Args as Options, Mode};

impl Options {
    fn sizes(&self) -> Sizes {
        let (rounds, sample, warm_up, changes, repeats, test_runs) = match self.mode {
            // The policy counts stay as they are: 1000 policies compile in well under a
            // second, and it is at 1000 that the enforcement and programming paths run.
            Mode::Smoke => (
                1,
                Duration::from_millis(200),
                Duration::from_millis(50),
                1,
                1,
                1_000,
            ),
            Mode::Quick => (
                3,
                Duration::from_secs(1),
                Duration::from_millis(100),
                5,
                3,
                200_000,
            ),
            Mode::Full => (
                7,
                Duration::from_secs(2),
                Duration::from_millis(200),
                20,
                10,
                2_000_000,
            ),
        };
        Sizes {
            test_runs,
            rounds: self.samples.unwrap_or(rounds),
            sample,
            warm_up,
            changes: self.samples.unwrap_or(changes),
            repeats,
        }
    }
}

struct Sizes {
    /// Samples of each rate in each configuration, one per round.
    rounds: usize,
    /// How long one rate sample counts.
    sample: Duration,
    /// Unmeasured traffic before each rate sample: it fills the neighbour and conntrack
    /// caches after a configuration switch, and checks that the client gets through.
    warm_up: Duration,
    /// Policy changes measured each way, without and then with the prober.
    changes: usize,
    /// Compiles of each size, and applies of the largest.
    repeats: usize,
    /// Kernel test runs of each packet path in each configuration.
    test_runs: u32,
}

// ---- the run ------------------------------------------------------------------------------

fn run(options: &Options) -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the benchmarks need root: they create network namespaces and attach BPF programs"
    );
    let sizes = options.sizes();
    let steal_at_start = stolen();
    // Compiles and applies run here, beside the server rather than on the client's CPU, where
    // they would compete with the prober; every thread started from here on inherits it.
    pin(SERVER_CPU)?;
    println!(
        "bosun NetworkPolicy benchmarks{}: configurations none, 0, {} and {} policies; \
         {} samples of {} s per rate and configuration; {} policy changes each way",
        options.mode.label(),
        SIZES[0],
        SIZES[1],
        sizes.rounds,
        sizes.sample.as_secs_f64(),
        sizes.changes
    );
    println!("machine: {}", lab::machine());
    println!("load average at the start: {}", load_average());

    let mut lab = Lab::create()?;
    println!("{}", lab.bridge_netfilter);
    let catalog = Catalog::new(lab.server_ifindex, lab.client_ifindex);
    let outcome = lab.run(&catalog, options, &sizes);
    drop(lab);

    println!("\nload average at the end: {}", load_average());
    if let (Some(start), Some(end)) = (steal_at_start, stolen()) {
        println!(
            "CPU time the hypervisor took from this machine during the run (steal): {} ms",
            end.saturating_sub(start).as_millis()
        );
    }
    let left = leftovers();
    if left.is_empty() {
        println!("left behind: nothing");
    } else {
        println!("left behind:\n  {}", left.join("\n  "));
    }
    outcome
}

impl Lab {
    fn run(&mut self, catalog: &Catalog, options: &Options, sizes: &Sizes) -> Result<()> {
        let compiled = catalog.configurations()?;
        let mut goals = Goals::default();
        if options.selected("programming") {
            self.programming(catalog, &compiled, sizes)?;
        }
        let selected: Vec<Rate> = [
            (Rate::RequestResponse, "request_response"),
            (Rate::NewConnections, "new_connections"),
        ]
        .into_iter()
        .filter(|(_, name)| options.selected(name))
        .map(|(rate, _)| rate)
        .collect();
        if !selected.is_empty() {
            let rates = self.rates(&compiled, sizes, &selected)?;
            for &rate in &selected {
                let goal = match rate {
                    Rate::RequestResponse => &mut goals.request_response,
                    Rate::NewConnections => &mut goals.new_connections,
                };
                *goal = rates.print(rate);
            }
            self.program_time(&compiled, sizes, &selected)?;
        }
        if options.selected("packet_paths") {
            self.packet_paths(&compiled, sizes)?;
        }
        if options.selected("enforcement") {
            goals.enforcement = Some(self.enforcement(catalog, &compiled, sizes)?);
        }
        // Whether the programs themselves dropped what the prober saw dropped, and nothing
        // else.
        self.print_counters()?;
        goals.print();
        Ok(())
    }
}

// ---- the policies -------------------------------------------------------------------------

/// The world the policies see: the namespaces, the two pods on this node and the invented
/// peer pods, and policies built on demand.
struct Catalog {
    namespaces: Vec<Namespace>,
    pods: Vec<PolicyPod>,
    server_ifindex: u32,
}

impl Catalog {
    fn new(server_ifindex: u32, client_ifindex: u32) -> Catalog {
        let namespaces = std::iter::once(NAMESPACE.to_owned())
            .chain((0..TEAMS).map(team))
            .map(|name| Namespace {
                metadata: ObjectMeta {
                    labels: Some(labels("team", &name)),
                    name: Some(name),
                    ..Default::default()
                },
                ..Default::default()
            })
            .collect();
        let pod = |name: &str, address, ifindex, named_ports: Vec<NamedPort>| PolicyPod {
            namespace: NAMESPACE.into(),
            name: name.into(),
            labels: labels("app", name).into(),
            ip: address,
            named_ports: named_ports.into(),
            ifindex: Some(ifindex),
        };
        let server_ports = NAMED_PORTS
            .iter()
            .map(|(name, port)| NamedPort {
                name: (*name).to_owned(),
                protocol: PolicyProtocol::Tcp,
                port: *port,
            })
            .collect();
        let mut pods = vec![
            pod(SERVER.app, SERVER.address, server_ifindex, server_ports),
            pod(CLIENT.app, CLIENT.address, client_ifindex, Vec::new()),
        ];
        // One peer pod per invented policy, selected by it or (for the ipBlock policies)
        // by none: the pods of a cluster that policies do not name.
        pods.extend((0..LARGEST).map(|i| {
            let name = peer_name(i);
            PolicyPod {
                namespace: peer_namespace(i).into(),
                labels: labels("app", &name).into(),
                name: name.into(),
                ip: offset(PEER_POD_NET, i as u32),
                named_ports: Vec::new().into(),
                ifindex: None,
            }
        }));
        Catalog {
            namespaces,
            pods,
            server_ifindex,
        }
    }

    /// `n` policies selecting the server for ingress: `n - 1` invented ones and the one for
    /// the client, which allows it unless `client_allowed` is false.
    fn policies(&self, n: usize, client_allowed: bool) -> Vec<NetworkPolicy> {
        if n == 0 {
            return Vec::new();
        }
        let app = if client_allowed {
            CLIENT.app
        } else {
            RETIRED_APP
        };
        let client = server_policy(
            CLIENT_POLICY,
            NetworkPolicyPeer {
                pod_selector: Some(selector("app", app)),
                ..Default::default()
            },
            vec![port("TCP", SERVER_PORT)],
        );
        std::iter::once(client)
            .chain((0..n - 1).map(invented_policy))
            .collect()
    }

    fn compile(&self, policies: &[NetworkPolicy]) -> Compiled {
        policy::compile(policies, &self.namespaces, &self.pods)
    }

    /// What the maps hold in each configuration, checked: the client never isolated, the
    /// server for ingress with any policy, and the client allowed to the server's port by
    /// [`CLIENT_POLICY`] alone.
    fn configurations(&self) -> Result<BTreeMap<usize, Compiled>> {
        let mut all = BTreeMap::new();
        for n in std::iter::once(0).chain(SIZES) {
            let compiled = self.compile(&self.policies(n, true));
            self.check(&compiled, n, true)?;
            if n > 0 {
                self.check(&self.compile(&self.policies(n, false)), n, false)?;
            }
            all.insert(n, compiled);
        }
        Ok(all)
    }

    fn check(&self, compiled: &Compiled, n: usize, client_allowed: bool) -> Result<()> {
        if let Some(problem) = compiled.problems.first() {
            bail!("compiling {n} policies: {problem}");
        }
        let isolated = |pod: &str| {
            compiled
                .endpoints
                .values()
                .find(|e| e.pod == format!("{NAMESPACE}/{pod}"))
                .map(|e| e.ingress.is_some())
        };
        ensure!(
            isolated(SERVER.app) == Some(n > 0) && isolated(CLIENT.app) == Some(false),
            "{n} policies: the server is isolated for ingress: {:?} (expected {}), the client: \
             {:?} (expected false)",
            isolated(SERVER.app),
            n > 0,
            isolated(CLIENT.app)
        );
        if n == 0 {
            return Ok(());
        }
        let allowed_by = self.client_allowed_by(compiled);
        let expected = client_allowed.then(|| format!("{NAMESPACE}/{CLIENT_POLICY}"));
        ensure!(
            allowed_by == expected,
            "{n} policies{}: the client's connections to the server are allowed by {allowed_by:?}, \
             expected {expected:?}",
            if client_allowed {
                ""
            } else {
                " with the client's one changed"
            }
        );
        Ok(())
    }

    /// The policy that the compiled maps credit with allowing the client to the server's TCP
    /// port: the longest peer prefix over the client's address, then its port ranges.
    fn client_allowed_by(&self, compiled: &Compiled) -> Option<String> {
        let client = CLIENT.address.to_bits();
        let (_, ports) = compiled
            .peers
            .iter()
            .filter(|(p, _)| p.endpoint == self.server_ifindex && p.direction == Direction::Ingress)
            .filter(|(p, _)| {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(p.prefix_len))
                    .unwrap_or(0);
                client & mask == p.address.to_bits()
            })
            .max_by_key(|(p, _)| p.prefix_len)?;
        ports
            .0
            .iter()
            .find(|r| match r.protocol {
                None => true,
                Some(protocol) => {
                    protocol == PolicyProtocol::Tcp && (r.first..=r.last).contains(&SERVER_PORT)
                }
            })
            .map(|r| r.policy.to_string())
    }
}

fn team(i: usize) -> String {
    format!("team-{i:02}")
}

fn peer_name(i: usize) -> String {
    format!("peer-{i:04}")
}

/// Policy `i % 4 == 2` selects its peer by pod selector alone, in the policies' namespace.
fn peer_namespace(i: usize) -> String {
    if i % 4 == 2 {
        NAMESPACE.to_owned()
    } else {
        team(i % TEAMS)
    }
}

fn offset(base: Ipv4Addr, by: u32) -> Ipv4Addr {
    Ipv4Addr::from_bits(base.to_bits() + by)
}

fn labels(key: &str, value: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(key.to_owned(), value.to_owned())])
}

fn selector(key: &str, value: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels(key, value)),
        ..Default::default()
    }
}

fn port(protocol: &str, number: u16) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(protocol.to_owned()),
        port: Some(IntOrString::Int(i32::from(number))),
        end_port: None,
    }
}

/// A policy of [`NAMESPACE`] that selects the server for ingress and allows `from` on
/// `ports`.
fn server_policy(
    name: &str,
    from: NetworkPolicyPeer,
    ports: Vec<NetworkPolicyPort>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(NAMESPACE.to_owned()),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector("app", SERVER.app)),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![from]),
                ports: Some(ports),
            }]),
            ..Default::default()
        }),
    }
}

/// Invented policy `i`: its peer by `i % 4`, its ports by `i % 5`, none of them the client or
/// TCP port [`SERVER_PORT`].
fn invented_policy(i: usize) -> NetworkPolicy {
    let n = i as u32;
    let from = match i % 4 {
        0 => NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: format!("{}/32", offset(PEER_HOST_NET, n)),
                except: None,
            }),
            ..Default::default()
        },
        1 => NetworkPolicyPeer {
            namespace_selector: Some(selector("team", &peer_namespace(i))),
            pod_selector: Some(selector("app", &peer_name(i))),
            ..Default::default()
        },
        2 => NetworkPolicyPeer {
            pod_selector: Some(selector("app", &peer_name(i))),
            ..Default::default()
        },
        _ => {
            let block = offset(PEER_BLOCK_NET, n << 8);
            NetworkPolicyPeer {
                ip_block: Some(IPBlock {
                    cidr: format!("{block}/24"),
                    except: Some(vec![format!("{block}/28")]),
                }),
                ..Default::default()
            }
        }
    };
    let number = |base: u16| base + i as u16;
    let ports = match i % 5 {
        0 => vec![port("TCP", number(10_000))],
        1 => {
            // Unaligned ranges, several port-map entries each.
            let first = 20_000 + (i as u16 * 7) % 9_000;
            vec![NetworkPolicyPort {
                end_port: Some(i32::from(first) + 10),
                ..port("TCP", first)
            }]
        }
        2 => vec![port("UDP", number(30_000))],
        3 => vec![NetworkPolicyPort {
            protocol: Some("TCP".to_owned()),
            port: Some(IntOrString::String(NAMED_PORTS[1].0.to_owned())),
            end_port: None,
        }],
        _ => vec![port("TCP", number(10_000)), port("UDP", number(10_000))],
    };
    server_policy(&format!("p-{i:04}"), from, ports)
}

// ---- the network --------------------------------------------------------------------------

/// The node, the pods, the server and the datapath. Dropping it removes them all: the
/// programs first, so that nothing runs on interfaces about to vanish, then the server, then
/// the namespaces (fields drop in order).
struct Lab {
    datapath: Datapath,
    _server: Server,
    _network: Network,
    server_ifindex: u32,
    client_ifindex: u32,
    /// What br_netfilter would have done here, and what was done about it.
    bridge_netfilter: String,
}

impl Lab {
    fn create() -> Result<Lab> {
        sweep_leftovers()?;
        let network = Network::create()?;
        let server = Server::start()?;
        let datapath = Datapath::install([network.server_ifindex, network.client_ifindex])?;
        Ok(Lab {
            server_ifindex: network.server_ifindex,
            client_ifindex: network.client_ifindex,
            bridge_netfilter: network.bridge_netfilter.clone(),
            datapath,
            _server: server,
            _network: network,
        })
    }

    fn print_counters(&self) -> Result<()> {
        let counters =
            policy::read_counters(Path::new(BPF_DIR)).context("reading the policy counters")?;
        println!("\nthe programs' counters over the run (packets)");
        for (ifindex, pod) in [
            (self.server_ifindex, SERVER.app),
            (self.client_ifindex, CLIENT.app),
        ] {
            for direction in [Direction::Ingress, Direction::Egress] {
                if let Some(c) = counters.get(&(ifindex, direction)) {
                    println!(
                        "  {pod:<6} {:<7}  allowed {:>10}  dropped {:>8}",
                        direction.to_string(),
                        c.allowed,
                        c.dropped
                    );
                }
            }
        }
        Ok(())
    }
}

/// The node's namespace with its bridge, and the pods' namespaces wired to it. Dropping it
/// deletes the namespaces, and with them every interface in them.
struct Network {
    server_ifindex: u32,
    client_ifindex: u32,
    bridge_netfilter: String,
}

impl Network {
    fn create() -> Result<Network> {
        ip(&["netns", "add", NODE_NETNS])?;
        // From here on, dropping it removes what was made.
        let mut network = Network {
            server_ifindex: 0,
            client_ifindex: 0,
            bridge_netfilter: String::new(),
        };
        network.bridge_netfilter = in_netns(NODE_NETNS, None, || {
            quiet_ipv6()?;
            bridge_netfilter_off()
        })?;
        ip_in(NODE_NETNS, &["link", "set", "lo", "up"])?;
        ip_in(NODE_NETNS, &["link", "add", BRIDGE, "type", "bridge"])?;
        let node_cidr = format!("{NODE_ADDRESS}/{POD_PREFIX_LEN}");
        ip_in(NODE_NETNS, &["addr", "add", &node_cidr, "dev", BRIDGE])?;
        ip_in(NODE_NETNS, &["link", "set", BRIDGE, "up"])?;
        for pod in [&SERVER, &CLIENT] {
            ip(&["netns", "add", pod.netns])?;
            in_netns(pod.netns, None, quiet_ipv6)?;
            ip_in(
                NODE_NETNS,
                &[
                    "link",
                    "add",
                    pod.host_if,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    pod.netns,
                ],
            )?;
            ip_in(NODE_NETNS, &["link", "set", pod.host_if, "master", BRIDGE])?;
            ip_in(NODE_NETNS, &["link", "set", pod.host_if, "up"])?;
            let cidr = format!("{}/{POD_PREFIX_LEN}", pod.address);
            ip_in(pod.netns, &["addr", "add", &cidr, "dev", "eth0"])?;
            ip_in(pod.netns, &["link", "set", "eth0", "up"])?;
            ip_in(pod.netns, &["link", "set", "lo", "up"])?;
            let gateway = NODE_ADDRESS.to_string();
            ip_in(pod.netns, &["route", "add", "default", "via", &gateway])?;
            let ifindex = in_netns(NODE_NETNS, None, || {
                nix::net::if_::if_nametoindex(pod.host_if)
                    .with_context(|| format!("the ifindex of {}", pod.host_if))
            })?;
            if pod.netns == SERVER.netns {
                network.server_ifindex = ifindex;
            } else {
                network.client_ifindex = ifindex;
            }
        }
        Ok(network)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for netns in [CLIENT.netns, SERVER.netns, NODE_NETNS] {
            if Path::new("/run/netns").join(netns).exists() {
                if let Err(e) = ip(&["netns", "del", netns]) {
                    eprintln!("policy bench: {e:#}");
                }
            }
        }
    }
}

/// `ip -n NETNS ARGS`.
fn ip_in(netns: &str, args: &[&str]) -> Result<String> {
    ip(&[&["-n", netns][..], args].concat())
}

/// br_netfilter's switches, in the calling thread's network namespace.
const BRIDGE_NETFILTER: [&str; 3] = [
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
    "/proc/sys/net/bridge/bridge-nf-call-arptables",
];

/// Turns br_netfilter off for bridged traffic in the calling thread's namespace (the switches
/// are per namespace) and says what they were.
fn bridge_netfilter_off() -> Result<String> {
    let Ok(was) = std::fs::read_to_string(BRIDGE_NETFILTER[0]) else {
        return Ok("br_netfilter: not loaded (bridged traffic bypasses iptables)".to_owned());
    };
    for path in BRIDGE_NETFILTER {
        std::fs::write(path, "0").with_context(|| format!("writing {path} in {NODE_NETNS}"))?;
    }
    Ok(if was.trim() == "0" {
        "br_netfilter: off by default here".to_owned()
    } else {
        format!(
            "br_netfilter: bridge-nf-call-iptables is {} in a new namespace here, which would \
             send the bridged packets through iptables and conntrack: set to 0 (and ip6tables, \
             arptables) in {NODE_NETNS} for the run",
            was.trim()
        )
    })
}

/// No IPv6 in the benchmark's namespaces: its neighbour discovery and router solicitations
/// would be traffic the rates do not ask for. Not an error where the kernel has no IPv6.
fn quiet_ipv6() -> Result<()> {
    for path in [
        "/proc/sys/net/ipv6/conf/all/disable_ipv6",
        "/proc/sys/net/ipv6/conf/default/disable_ipv6",
    ] {
        match std::fs::write(path, "1") {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("writing {path}")),
        }
    }
    Ok(())
}

/// Removes what a killed run left: the datapath, then the `bpb-*` namespaces.
fn sweep_leftovers() -> Result<()> {
    remove_datapath()?;
    for netns in netns_names()? {
        if netns.starts_with(PREFIX) {
            ip(&["netns", "del", &netns])?;
        }
    }
    Ok(())
}

/// Detaches the programs and removes every pin in [`BPF_DIR`], and the directory. Detaching
/// looks the interfaces up, which only the node's namespace shows; without that namespace the
/// interfaces are gone, and only pins may be left.
fn remove_datapath() -> Result<()> {
    let dir = Path::new(BPF_DIR);
    let cleanup = || {
        policy::cleanup(dir)
            .map(|_| ())
            .with_context(|| format!("removing the policy datapath in {BPF_DIR}"))
    };
    if Path::new("/run/netns").join(NODE_NETNS).exists() {
        in_netns(NODE_NETNS, None, cleanup)?;
    } else {
        cleanup()?;
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {BPF_DIR}")),
    }
}

/// What the benchmark may have left behind, for the last line of its output.
fn leftovers() -> Vec<String> {
    let mut left: Vec<String> = Vec::new();
    match netns_names() {
        Ok(names) => left.extend(
            names
                .iter()
                .filter(|n| n.starts_with(PREFIX))
                .map(|n| format!("netns {n}")),
        ),
        Err(e) => left.push(format!("(listing namespaces: {e:#})")),
    }
    if Path::new(BPF_DIR).exists() {
        left.push(BPF_DIR.to_owned());
    }
    left
}

fn netns_names() -> Result<Vec<String>> {
    // "NAME" or "NAME (id: N)", one a line.
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

// ---- the datapath -------------------------------------------------------------------------

/// What the programs are doing: detached, or attached to both pods with the maps holding the
/// compiled policies of one size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    Detached,
    Policies(usize),
}

const CONFIGS: [Config; 4] = [
    Config::Detached,
    Config::Policies(0),
    Config::Policies(SIZES[0]),
    Config::Policies(SIZES[1]),
];

impl Config {
    fn label(self) -> String {
        match self {
            Config::Detached => "none: no program attached".to_owned(),
            Config::Policies(0) => "0 policies: attached, no pod isolated".to_owned(),
            Config::Policies(n) => format!("{n} policies selecting the server"),
        }
    }
}

/// bosun's policy programs loaded from [`BPF_DIR`], its reconciler over the pinned maps, and
/// the two endpoints. Dropping it detaches and unpins everything, also after a failure.
struct Datapath {
    programs: PolicyDatapath,
    reconciler: PolicyReconciler<PinnedPolicyMaps>,
    endpoints: [u32; 2],
    attached: bool,
    /// Last, so that the map handles above are closed before the pins go.
    _installed: Installed,
}

impl Datapath {
    fn install(endpoints: [u32; 2]) -> Result<Datapath> {
        let installed = Installed;
        let mode = bosun_netdp::tc::TcMode::detect(bosun_netdp::tc::Interfaces::Pods)
            .context("choosing how to attach")?;
        let programs = policy::install(Path::new(BPF_DIR), mode)
            .with_context(|| format!("installing the policy datapath in {BPF_DIR}"))?;
        let maps = programs.maps().context("opening the pinned policy maps")?;
        let reconciler = PolicyReconciler::new(maps).context("reading the policy maps")?;
        Ok(Datapath {
            programs,
            reconciler,
            endpoints,
            attached: false,
            _installed: installed,
        })
    }

    /// Writes the maps first and attaches after, as the ABI asks: a packet on an interface
    /// without an endpoint entry is dropped.
    fn set(&mut self, config: Config, compiled: &BTreeMap<usize, Compiled>) -> Result<()> {
        match config {
            Config::Detached => {
                for ifindex in self.endpoints {
                    in_netns(NODE_NETNS, None, || {
                        policy::detach(Path::new(BPF_DIR), ifindex)
                            .with_context(|| format!("detaching from interface {ifindex}"))
                    })?;
                }
                self.attached = false;
            }
            Config::Policies(n) => {
                self.apply(&compiled[&n])?;
                if !self.attached {
                    for ifindex in self.endpoints {
                        let programs = &mut self.programs;
                        in_netns(NODE_NETNS, None, || {
                            programs
                                .attach(ifindex)
                                .with_context(|| format!("attaching to interface {ifindex}"))
                        })?;
                    }
                    self.attached = true;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, compiled: &Compiled) -> Result<PolicyApplied> {
        self.reconciler
            .apply(compiled, &[NODE_ADDRESS])
            .context("writing the policy maps")
    }

    /// Entries the maps hold: endpoints, peer prefixes, port entries, policy names and node
    /// addresses.
    fn held(&self) -> Result<[usize; 5]> {
        let maps = self.reconciler.maps();
        Ok([
            maps.endpoints()?.len(),
            maps.peers()?.len(),
            maps.ports()?.len(),
            maps.policy_names()?.len(),
            maps.node_addresses()?.len(),
        ])
    }
}

/// The benchmark's datapath in [`BPF_DIR`], removed when dropped.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        if let Err(e) = remove_datapath() {
            eprintln!("policy bench: {e:#}");
        }
    }
}

// ---- the server ---------------------------------------------------------------------------

/// One thread in the server pod that accepts every connection on [`SERVER_PORT`] and echoes
/// whatever each sends, until stopped.
struct Server {
    _thread: ServerThread,
}

impl Server {
    fn start() -> Result<Server> {
        let thread = ServerThread::start(
            "bpb-server".to_owned(),
            "policy bench: the server".to_owned(),
            SERVER.netns.to_owned(),
            SERVER_CPU,
            listen,
            serve,
        )?;
        Ok(Server { _thread: thread })
    }
}

fn listen() -> Result<TcpListener> {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SERVER_PORT))
        .with_context(|| format!("listening on port {SERVER_PORT}"))?;
    // A long accept queue, so that a slow turn of the loop never drops a SYN.
    nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::MAXCONN)
        .context("raising the listen backlog")?;
    listener
        .set_nonblocking(true)
        .context("making the listener non-blocking")?;
    Ok(listener)
}

/// One poll loop over the listener and every open connection: one thread, so that a new
/// connection costs the server an accept and no thread.
fn serve(listener: &TcpListener, stop: &AtomicBool) -> Result<()> {
    use nix::poll::{poll, PollFd, PollFlags};
    let mut connections: Vec<TcpStream> = Vec::new();
    let mut readable: Vec<bool> = Vec::new();
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::SeqCst) {
        let accept = {
            let mut fds = Vec::with_capacity(connections.len() + 1);
            fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
            fds.extend(
                connections
                    .iter()
                    .map(|c| PollFd::new(c.as_fd(), PollFlags::POLLIN)),
            );
            poll(&mut fds, SERVER_POLL_MS).context("waiting for connections")?;
            let ready = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            readable.clear();
            readable.extend(fds[1..].iter().map(ready));
            ready(&fds[0])
        };
        // From the back, so that `swap_remove` moves only connections already served.
        for i in (0..connections.len()).rev() {
            if !readable[i] {
                continue;
            }
            let open = match connections[i].read(&mut buf) {
                Ok(0) => false,
                Ok(n) => connections[i].write_all(&buf[..n]).is_ok(),
                Err(e) if e.kind() == ErrorKind::WouldBlock => true,
                // Reset: the clients close abortively.
                Err(_) => false,
            };
            if !open {
                connections.swap_remove(i);
            }
        }
        if accept {
            loop {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream
                            .set_nonblocking(true)
                            .and_then(|()| stream.set_nodelay(true))
                            .context("setting up an accepted connection")?;
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

// ---- the client ---------------------------------------------------------------------------

/// Abortive close: RST instead of FIN, so no TIME_WAIT piles up over many connections.
const LINGER_RESET: nix::libc::linger = nix::libc::linger {
    l_onoff: 1,
    l_linger: 0,
};

fn close_abortively(stream: TcpStream) -> Result<()> {
    nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &LINGER_RESET)
        .context("setting SO_LINGER")?;
    drop(stream);
    Ok(())
}

/// Runs `step` over and over for `duration`; returns how many times and how long it took.
fn repeat_for(duration: Duration, mut step: impl FnMut() -> Result<()>) -> Result<(u64, Duration)> {
    let started = Instant::now();
    let mut count = 0;
    loop {
        step()?;
        count += 1;
        let took = started.elapsed();
        if took >= duration {
            return Ok((count, took));
        }
    }
}

/// One byte there and back.
fn exchange(stream: &mut TcpStream) -> Result<()> {
    let mut byte = [1u8];
    stream.write_all(&byte).context("sending a request")?;
    stream.read_exact(&mut byte).context("reading a response")?;
    Ok(())
}

/// What one rate sample did.
struct Counted {
    /// Transactions (or connections), the warm-up's included.
    all: u64,
    /// Those of the measured part.
    measured: u64,
    /// How long the measured part took.
    took: Duration,
}

impl Counted {
    fn rate(&self) -> f64 {
        self.measured as f64 / self.took.as_secs_f64()
    }
}

/// Transactions over a fresh connection: `warm_up` unmeasured, then `sample`.
fn request_responses(warm_up: Duration, sample: Duration) -> Result<Counted> {
    let mut stream = TcpStream::connect_timeout(&SERVER_ADDRESS.into(), CONNECT_TIMEOUT)
        .with_context(|| format!("connecting to {SERVER_ADDRESS}"))?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    stream
        .set_read_timeout(Some(CONNECT_TIMEOUT))
        .context("setting a read timeout")?;
    let (warm, _) = repeat_for(warm_up, || exchange(&mut stream))?;
    let (measured, took) = repeat_for(sample, || exchange(&mut stream))?;
    close_abortively(stream)?;
    Ok(Counted {
        all: warm + measured,
        measured,
        took,
    })
}

/// New connections, each with one exchange: `warm_up` unmeasured (each connect with a
/// timeout, so that a path that drops fails fast), then `sample` with plain blocking
/// connects, as an application makes them.
fn new_connections(warm_up: Duration, sample: Duration) -> Result<Counted> {
    let once = |timeout: Option<Duration>| -> Result<()> {
        let mut stream = match timeout {
            Some(timeout) => TcpStream::connect_timeout(&SERVER_ADDRESS.into(), timeout),
            None => TcpStream::connect(SERVER_ADDRESS),
        }
        .with_context(|| format!("connecting to {SERVER_ADDRESS}"))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        stream
            .set_read_timeout(Some(CONNECT_TIMEOUT))
            .context("setting a read timeout")?;
        exchange(&mut stream)?;
        close_abortively(stream)
    };
    let (warm, _) = repeat_for(warm_up, || once(Some(CONNECT_TIMEOUT)))?;
    let (measured, took) = repeat_for(sample, || once(None))?;
    Ok(Counted {
        all: warm + measured,
        measured,
        took,
    })
}

// ---- rates --------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rate {
    RequestResponse,
    NewConnections,
}

impl Rate {
    /// One sample, from the client pod.
    fn sample(self, warm_up: Duration, sample: Duration) -> Result<Counted> {
        in_netns(CLIENT.netns, Some(CLIENT_CPU), || match self {
            Rate::RequestResponse => request_responses(warm_up, sample),
            Rate::NewConnections => new_connections(warm_up, sample),
        })
        .with_context(|| self.to_string())
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rate::RequestResponse => "request/response",
            Rate::NewConnections => "new connections",
        })
    }
}

/// Rate samples by rate and configuration.
#[derive(Default)]
struct Rates {
    samples: BTreeMap<(Rate, usize), Vec<f64>>,
}

impl Lab {
    /// Every configuration once per round, in an order rotated by one each round; in each,
    /// one sample of each selected rate. Ends detached.
    fn rates(
        &mut self,
        compiled: &BTreeMap<usize, Compiled>,
        sizes: &Sizes,
        selected: &[Rate],
    ) -> Result<Rates> {
        let mut rates = Rates::default();
        for round in 0..sizes.rounds {
            for k in 0..CONFIGS.len() {
                let c = (round + k) % CONFIGS.len();
                self.datapath.set(CONFIGS[c], compiled)?;
                for &rate in selected {
                    let counted = rate
                        .sample(sizes.warm_up, sizes.sample)
                        .with_context(|| CONFIGS[c].label())?;
                    rates.add(rate, c, counted.rate());
                }
                check_interrupted()?;
            }
        }
        self.datapath.set(Config::Detached, compiled)?;
        Ok(rates)
    }
}

impl Rates {
    fn add(&mut self, rate: Rate, config: usize, value: f64) {
        self.samples.entry((rate, config)).or_default().push(value);
    }

    /// Prints one rate's table; returns the largest configuration's ratio to none, and
    /// none's own spread (max / min).
    fn print(&self, rate: Rate) -> Option<(f64, f64)> {
        let (title, unit, per) = match rate {
            Rate::RequestResponse => (
                "request/response: 1-byte request and response over one established TCP \
                 connection",
                "transactions/s",
                "µs/txn",
            ),
            Rate::NewConnections => (
                "new connections: connect + 1-byte request/response + close (SO_LINGER 0)",
                "connections/s",
                "µs/conn",
            ),
        };
        let samples = |c: usize| self.samples.get(&(rate, c));
        let none = samples(0)?;
        let spread = Stats::of(none).map(|s| s.max / s.min)?;
        println!("\n{title}");
        println!(
            "  {:<44} {:>3} {:>10} {:>10} {:>10} {:>8}  ratio to none (min–max)",
            unit, "n", "min", "median", "max", per
        );
        let mut last = None;
        for (c, config) in CONFIGS.iter().enumerate() {
            let Some(these) = samples(c) else { continue };
            let Some(s) = Stats::of(these) else { continue };
            // Time per transaction over none's in the same round (a rate's inverse), so that
            // a change in the machine's load between rounds cancels out.
            let ratios: Vec<f64> = none.iter().zip(these).map(|(n, t)| n / t).collect();
            let Some(r) = Stats::of(&ratios) else {
                continue;
            };
            println!(
                "  {:<44} {:>3} {:>10.0} {:>10.0} {:>10.0} {:>8.2}  {:.2}× ({:.2}–{:.2})",
                config.label(),
                s.n,
                s.min,
                s.median,
                s.max,
                1e6 / s.median,
                r.median,
                r.min,
                r.max
            );
            last = Some(r.median);
        }
        println!(
            "  (ratio: the median over rounds of none's rate over this configuration's, measured \
             back to back; none's own samples spread {spread:.2}× from min to max)"
        );
        Some((last?, spread))
    }
}

// ---- the programs' own time -------------------------------------------------------------

/// The policy programs on one of the interfaces they are attached to (`ifindex`); both
/// interfaces run the same two programs.
fn policy_clock(ifindex: u32) -> Result<ProgramClock> {
    // Where `policy::attach` pins an interface's links (see netdp's `policy::bpf`).
    let links = Path::new(BPF_DIR).join("policy/links");
    ProgramClock::start(&["in", "out"].map(|suffix| links.join(format!("{ifindex}_{suffix}"))))
}

impl Lab {
    /// One more sample of each selected rate in each attached configuration, with the
    /// kernel's statistics on: what the programs themselves take per packet and per
    /// transaction. Ends detached.
    fn program_time(
        &mut self,
        compiled: &BTreeMap<usize, Compiled>,
        sizes: &Sizes,
        selected: &[Rate],
    ) -> Result<()> {
        println!(
            "\nthe programs' own run time (kernel BPF statistics, one more sample each, not part \
             of the rates above)"
        );
        println!(
            "  {:<44} {:<17} {:>8} {:>9} {:>9}",
            "", "", "ns/run", "runs/txn", "µs/txn"
        );
        for config in &CONFIGS[1..] {
            self.datapath.set(*config, compiled)?;
            let clock = policy_clock(self.server_ifindex)?;
            for &rate in selected {
                let (time_before, runs_before) = clock.read()?;
                let counted = rate
                    .sample(sizes.warm_up, sizes.sample)
                    .with_context(|| config.label())?;
                let (time_after, runs_after) = clock.read()?;
                let time = (time_after - time_before).as_nanos() as f64;
                let runs = (runs_after - runs_before) as f64;
                let all = counted.all as f64;
                println!(
                    "  {:<44} {:<17} {:>8.0} {:>9.2} {:>9.3}",
                    config.label(),
                    rate.to_string(),
                    time / runs.max(1.0),
                    runs / all,
                    time / all / 1000.0
                );
            }
            check_interrupted()?;
        }
        self.datapath.set(Config::Detached, compiled)
    }
}

// ---- the programs' time per packet, by path -------------------------------------------------

/// A packet the programs are test-run on, and what they should make of it.
struct PacketPath {
    label: &'static str,
    /// The server's program that sees it: ingress for packets to the server.
    direction: Direction,
    frame: fn() -> Vec<u8>,
    /// Whether it passes when no policy selects the server, and when 100 or 1000 do.
    allowed: [bool; 2],
}

/// An address in the pods' subnet that no policy allows.
const STRANGER: Ipv4Addr = Ipv4Addr::new(10, 218, 0, 250);

const PACKET_PATHS: [PacketPath; 5] = [
    PacketPath {
        label: "known flow into the server (conntrack)",
        direction: Direction::Ingress,
        frame: || tcp_frame(CLIENT.address, 40001, SERVER.address, SERVER_PORT, TCP_ACK),
        allowed: [true, true],
    },
    PacketPath {
        label: "reply out of the server (conntrack)",
        direction: Direction::Egress,
        frame: || tcp_frame(SERVER.address, SERVER_PORT, CLIENT.address, 40001, TCP_ACK),
        allowed: [true, true],
    },
    PacketPath {
        label: "SYN from the client (judged, allowed)",
        direction: Direction::Ingress,
        frame: || tcp_frame(CLIENT.address, 40002, SERVER.address, SERVER_PORT, TCP_SYN),
        allowed: [true, true],
    },
    PacketPath {
        label: "SYN from a stranger (judged, dropped)",
        direction: Direction::Ingress,
        frame: || tcp_frame(STRANGER, 40003, SERVER.address, SERVER_PORT, TCP_SYN),
        allowed: [true, false],
    },
    PacketPath {
        label: "ARP (not IPv4)",
        direction: Direction::Ingress,
        frame: arp_frame,
        allowed: [true, true],
    },
];

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// An Ethernet frame with an IPv4 header (no options) and a 20-byte TCP header. Checksums are
/// left zero: the programs do not read them.
fn tcp_frame(
    source: Ipv4Addr,
    sport: u16,
    destination: Ipv4Addr,
    dport: u16,
    flags: u8,
) -> Vec<u8> {
    let mut frame = Vec::with_capacity(54);
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    frame.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    frame.extend_from_slice(&source.octets());
    frame.extend_from_slice(&destination.octets());
    frame.extend_from_slice(&sport.to_be_bytes());
    frame.extend_from_slice(&dport.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    frame
}

/// A broadcast ARP request.
fn arp_frame() -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
    frame.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1, 0x02, 0, 0, 0, 0, 1]);
    frame.extend_from_slice(&CLIENT.address.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&SERVER.address.octets());
    frame
}

impl Lab {
    /// The programs' own time per packet on each path, from the kernel's test runs
    /// (`BPF_PROG_TEST_RUN`) of the server's programs with the benchmark's maps: no network
    /// stack around them, and none of the scheduling noise of the rates (the kernel leaves out
    /// time the thread was preempted). Each path's first run also sets up its conntrack entry.
    fn packet_paths(&mut self, compiled: &BTreeMap<usize, Compiled>, sizes: &Sizes) -> Result<()> {
        println!(
            "\nthe programs' time per packet by path (kernel test runs, {} per path and \
             configuration; the event ring buffer, which nothing drains here, fills after the \
             first 26000 events)",
            sizes.test_runs
        );
        let configs = &CONFIGS[1..];
        print!("  {:<42}", "ns/run");
        for config in configs {
            let Config::Policies(n) = config else {
                continue;
            };
            print!(" {:>13}", format!("{n} policies"));
        }
        println!();
        let server = self.server_ifindex;
        let mut times = vec![Vec::new(); PACKET_PATHS.len()];
        for config in configs {
            self.datapath.set(*config, compiled)?;
            let isolated = usize::from(*config != Config::Policies(0));
            let programs = &mut self.datapath.programs;
            for (path, times) in PACKET_PATHS.iter().zip(&mut times) {
                let frame = (path.frame)();
                let run = in_netns(NODE_NETNS, Some(SERVER_CPU), || {
                    programs
                        .test_run(path.direction, server, &frame, sizes.test_runs)
                        .with_context(|| format!("test runs of {}", path.label))
                })?;
                ensure!(
                    run.allowed == path.allowed[isolated],
                    "{}, {}: the programs {} it",
                    config.label(),
                    path.label,
                    if run.allowed {
                        "let through"
                    } else {
                        "dropped"
                    }
                );
                times.push(run.per_run.as_nanos());
            }
            check_interrupted()?;
        }
        for (path, times) in PACKET_PATHS.iter().zip(&times) {
            print!("  {:<42}", path.label);
            for ns in times {
                print!(" {ns:>13}");
            }
            println!();
        }
        self.datapath.set(Config::Detached, compiled)
    }
}

// ---- programming --------------------------------------------------------------------------

impl Lab {
    /// Compile times of each size; applies of the largest to maps that hold only the
    /// endpoints, each undone before the next. Leaves the maps at 0 policies.
    fn programming(
        &mut self,
        catalog: &Catalog,
        compiled: &BTreeMap<usize, Compiled>,
        sizes: &Sizes,
    ) -> Result<()> {
        let mut rows = Vec::new();
        for n in SIZES {
            let policies = catalog.policies(n, true);
            let mut took = Vec::new();
            for _ in 0..sizes.repeats {
                let started = Instant::now();
                let compiled = catalog.compile(&policies);
                took.push(ms(started.elapsed()));
                drop(compiled);
                check_interrupted()?;
            }
            rows.push((format!("compile {n} policies"), took));
        }
        let largest = &compiled[&LARGEST];
        let mut took = Vec::new();
        let mut first = None;
        for _ in 0..sizes.repeats {
            self.datapath.apply(&compiled[&0])?;
            let started = Instant::now();
            let applied = self.datapath.apply(largest)?;
            took.push(ms(started.elapsed()));
            if first.is_none() {
                first = Some((applied, self.datapath.held()?));
            }
            check_interrupted()?;
        }
        self.datapath.apply(&compiled[&0])?;
        rows.push((
            format!("apply {LARGEST} policies to maps holding only the endpoints"),
            took,
        ));
        print_ms_table("programming (no program attached)", &rows);
        if let Some((applied, [endpoints, peers, ports, names, nodes])) = first {
            let classes: std::collections::BTreeSet<_> = largest.peers.values().collect();
            println!(
                "  {LARGEST} policies: {} peer prefixes with {} distinct port sets compiled; \
                 apply wrote {} map entries (and removed {}); the maps then hold {} endpoints, \
                 {peers} peer entries, {ports} port entries, {names} policy names, \
                 {nodes} node address",
                largest.peers.len(),
                classes.len(),
                applied.writes,
                applied.deletes,
                endpoints
            );
        }
        Ok(())
    }
}

fn print_ms_table(title: &str, rows: &[(String, Vec<f64>)]) {
    println!("\n{title}");
    println!(
        "  {:<60} {:>3} {:>8} {:>8} {:>8} {:>8}",
        "ms", "n", "min", "median", "p99", "max"
    );
    for (label, samples) in rows {
        match Stats::of(samples) {
            Some(s) => println!(
                "  {label:<60} {:>3} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                s.n, s.min, s.median, s.p99, s.max
            ),
            None => println!("  {label:<60}   –"),
        }
    }
}

// ---- enforcement --------------------------------------------------------------------------

/// One policy change: when it started, and how long compile and apply took.
struct Change {
    started: Instant,
    compile: Duration,
    apply: Duration,
    /// When apply returned.
    applied: Instant,
}

/// One connect of the prober.
struct Attempt {
    started: Instant,
    connected: bool,
}

/// What the prober saw of one change.
struct Probed {
    /// Change start → the first connect with the new verdict that started after it.
    to_new_verdict: Option<Duration>,
    /// Connects started after apply returned that still had the old verdict.
    stale_after_apply: usize,
    /// Connects that had the old verdict after one had had the new verdict.
    flapped: usize,
}

impl Probed {
    /// `connected_now`: the new verdict is "allowed".
    fn of(change: &Change, attempts: &[Attempt], connected_now: bool) -> Probed {
        let after: Vec<&Attempt> = attempts
            .iter()
            .filter(|a| a.started >= change.started)
            .collect();
        let first = after.iter().position(|a| a.connected == connected_now);
        Probed {
            to_new_verdict: first.map(|i| after[i].started - change.started),
            stale_after_apply: after
                .iter()
                .filter(|a| a.started >= change.applied && a.connected != connected_now)
                .count(),
            flapped: first.map_or(0, |i| {
                after[i..]
                    .iter()
                    .filter(|a| a.connected != connected_now)
                    .count()
            }),
        }
    }
}

/// Everything measured of the enforcement benchmark.
#[derive(Default)]
struct Enforcement {
    /// Without the prober, both ways (ms).
    compile: Vec<f64>,
    apply: Vec<f64>,
    /// The client's policy changed so that it no longer allows the client.
    deny: Way,
    /// And back.
    allow: Way,
    /// Prober connects with the old verdict after apply returned, or after the new one was
    /// seen.
    stale: usize,
    flapped: usize,
    /// Changes whose new verdict the prober never saw.
    unseen: usize,
}

/// The changes of one way.
#[derive(Default)]
struct Way {
    /// Compile + apply without the prober (ms).
    total: Vec<f64>,
    /// Without the prober: how often the first connect after apply returned had the new
    /// verdict.
    at_once: usize,
    /// Compile + apply while the prober ran (ms).
    total_probed: Vec<f64>,
    /// Change start → the prober's first connect with the new verdict (ms).
    to_new_verdict: Vec<f64>,
}

impl Lab {
    fn enforcement(
        &mut self,
        catalog: &Catalog,
        compiled: &BTreeMap<usize, Compiled>,
        sizes: &Sizes,
    ) -> Result<Enforcement> {
        let allowing = catalog.policies(LARGEST, true);
        let denying = catalog.policies(LARGEST, false);
        self.datapath.set(Config::Policies(LARGEST), compiled)?;
        in_netns(CLIENT.netns, Some(CLIENT_CPU), || {
            new_connections(Duration::from_millis(100), Duration::ZERO)
        })
        .context("the client's first connections with all policies in place")?;

        let mut e = Enforcement::default();
        // Without the prober: the change's own time, and the first connect after it.
        for _ in 0..sizes.changes {
            for allowed in [false, true] {
                let policies = if allowed { &allowing } else { &denying };
                let change = self.change(catalog, policies)?;
                e.compile.push(ms(change.compile));
                e.apply.push(ms(change.apply));
                let way = e.way(allowed);
                way.total.push(ms(change.compile + change.apply));
                let connected = in_netns(CLIENT.netns, Some(CLIENT_CPU), || {
                    Ok(
                        TcpStream::connect_timeout(&SERVER_ADDRESS.into(), DENIED_WAIT)
                            .ok()
                            .map(close_abortively)
                            .transpose()?
                            .is_some(),
                    )
                })?;
                way.at_once += usize::from(connected == allowed);
                check_interrupted()?;
            }
        }
        // With the prober.
        for _ in 0..sizes.changes {
            for allowed in [false, true] {
                let (policies, wait) = if allowed {
                    (&allowing, PROBE_ALLOWED_WAIT)
                } else {
                    (&denying, PROBE_DENIED_WAIT)
                };
                let (change, attempts) = self.probed_change(catalog, policies, wait)?;
                let probed = Probed::of(&change, &attempts, allowed);
                let way = e.way(allowed);
                way.total_probed.push(ms(change.compile + change.apply));
                match probed.to_new_verdict {
                    Some(took) => way.to_new_verdict.push(ms(took)),
                    None => e.unseen += 1,
                }
                e.stale += probed.stale_after_apply;
                e.flapped += probed.flapped;
                check_interrupted()?;
            }
        }
        self.datapath.set(Config::Detached, compiled)?;
        e.print(sizes);
        Ok(e)
    }

    /// Compiles `policies` and applies them, timed from the start of the compile.
    fn change(&mut self, catalog: &Catalog, policies: &[NetworkPolicy]) -> Result<Change> {
        let started = Instant::now();
        let compiled = catalog.compile(policies);
        let compile = started.elapsed();
        self.datapath.apply(&compiled)?;
        let applied = Instant::now();
        if let Some(problem) = compiled.problems.first() {
            bail!("compiling the changed policies: {problem}");
        }
        Ok(Change {
            started,
            compile,
            apply: applied - started - compile,
            applied,
        })
    }

    /// A change while a prober in the client pod connects in a tight loop, each connect
    /// given `wait` before it counts as dropped. Starts the change once the prober is under
    /// way, and stops it once [`PROBES_AFTER`] connects have started after apply returned.
    fn probed_change(
        &mut self,
        catalog: &Catalog,
        policies: &[NetworkPolicy],
        wait: Duration,
    ) -> Result<(Change, Vec<Attempt>)> {
        let stop = AtomicBool::new(false);
        let started = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            let prober = scope.spawn(|| {
                enter_netns(CLIENT.netns)?;
                pin(CLIENT_CPU)?;
                probe(wait, &stop, &started)
            });
            let change = wait_for_probes(&started, PROBES_BEFORE)
                .and_then(|()| self.change(catalog, policies))
                .and_then(|change| {
                    // The connect under way when apply returned may have started before.
                    let seen = started.load(Ordering::SeqCst);
                    wait_for_probes(&started, seen + 1 + PROBES_AFTER)?;
                    Ok(change)
                });
            stop.store(true, Ordering::SeqCst);
            let attempts = prober
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            Ok((change?, attempts.context("the prober")?))
        })
    }
}

/// Waits until the prober has started `count` connects in all.
fn wait_for_probes(started: &AtomicUsize, count: usize) -> Result<()> {
    let deadline = Instant::now() + PROBE_WAIT_LIMIT;
    while started.load(Ordering::SeqCst) < count {
        ensure!(
            Instant::now() < deadline,
            "the prober started {} connects in {PROBE_WAIT_LIMIT:?}, not {count}",
            started.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// Connects to the server over and over until told to stop, each connect given `wait`;
/// closes each that succeeds at once. Counts each connect in `started` as it starts.
fn probe(wait: Duration, stop: &AtomicBool, started: &AtomicUsize) -> Result<Vec<Attempt>> {
    let mut attempts = Vec::with_capacity(4096);
    while !stop.load(Ordering::SeqCst) {
        let at = Instant::now();
        started.fetch_add(1, Ordering::SeqCst);
        let connected = match TcpStream::connect_timeout(&SERVER_ADDRESS.into(), wait) {
            Ok(stream) => {
                close_abortively(stream)?;
                true
            }
            Err(e) if e.kind() == ErrorKind::TimedOut => false,
            Err(e) => return Err(e).with_context(|| format!("probing {SERVER_ADDRESS}")),
        };
        attempts.push(Attempt {
            started: at,
            connected,
        });
    }
    Ok(attempts)
}

impl Enforcement {
    fn way(&mut self, allowed: bool) -> &mut Way {
        if allowed {
            &mut self.allow
        } else {
            &mut self.deny
        }
    }

    fn print(&self, sizes: &Sizes) {
        let n = sizes.changes;
        let row = |label: &str, samples: &Vec<f64>| (label.to_owned(), samples.clone());
        print_ms_table(
            &format!(
                "policy change with {LARGEST} policies in place: the client's policy stops \
                 selecting it (deny), and back (allow); {n} each way"
            ),
            &[
                row("compile (both ways)", &self.compile),
                row("apply (both ways)", &self.apply),
                row("deny: compile + apply", &self.deny.total),
                row("allow: compile + apply", &self.allow.total),
                row(
                    "deny, with prober: compile + apply",
                    &self.deny.total_probed,
                ),
                row(
                    "deny, with prober: change start → first connect dropped",
                    &self.deny.to_new_verdict,
                ),
                row(
                    "allow, with prober: compile + apply",
                    &self.allow.total_probed,
                ),
                row(
                    &format!(
                        "allow, with prober: change start → first connect ok ±{} ms",
                        PROBE_ALLOWED_WAIT.as_millis()
                    ),
                    &self.allow.to_new_verdict,
                ),
            ],
        );
        println!(
            "  first connect after apply returned (no prober): denied {} of {n} times, allowed \
             again {} of {n} times",
            self.deny.at_once, self.allow.at_once
        );
        println!(
            "  prober: {} connects with the old verdict after apply returned, {} after the new \
             one was seen, {} changes whose new verdict it never saw (each should be 0); a \
             connect counts as dropped after {} ms ({} ms while waiting to be allowed)",
            self.stale,
            self.flapped,
            self.unseen,
            PROBE_DENIED_WAIT.as_millis(),
            PROBE_ALLOWED_WAIT.as_millis()
        );
    }
}

// ---- goals --------------------------------------------------------------------------------

#[derive(Default)]
struct Goals {
    /// The ratio at the largest size, and none's own spread.
    request_response: Option<(f64, f64)>,
    new_connections: Option<(f64, f64)>,
    enforcement: Option<Enforcement>,
}

impl Goals {
    fn print(&self) {
        if self.request_response.is_none()
            && self.new_connections.is_none()
            && self.enforcement.is_none()
        {
            return;
        }
        println!("\ngoals");
        for (what, measured) in [
            ("request/response", self.request_response),
            ("new connections", self.new_connections),
        ] {
            if let Some((ratio, spread)) = measured {
                println!(
                    "  {what} at {LARGEST} policies: {ratio:.2}× the time per transaction of \
                     none; goal ≤ {GOAL_RATIO:.2}× → {} (none's own samples spread {spread:.2}×)",
                    verdict(hundredths(ratio) <= hundredths(GOAL_RATIO))
                );
            }
        }
        if let Some(e) = &self.enforcement {
            if let Some(s) = Stats::of(&e.deny.to_new_verdict) {
                let consistent = e.stale == 0 && e.flapped == 0 && e.unseen == 0;
                println!(
                    "  policy change → new connections dropped: {:.2} ms median, {:.2} ms max; \
                     goal < {} ms → {}",
                    s.median,
                    s.max,
                    GOAL_ENFORCEMENT.as_millis(),
                    verdict(s.max < ms(GOAL_ENFORCEMENT) && consistent)
                );
            }
        }
    }
}
