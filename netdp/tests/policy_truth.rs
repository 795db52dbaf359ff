//! NetworkPolicy with real packets, checked the way upstream Kubernetes' e2e suite checks it
//! (`test/e2e/network/netpol`): namespaces x, y and z, each with pods a, b and c, and for every
//! case a truth table of who reaches whom on ports 80 and 81 over TCP and UDP, expected versus
//! measured.
//!
//! The expectation comes from [`oracle`]: a direct reading of the `networking.k8s.io/v1` rules
//! over the NetworkPolicy objects, sharing no code with `policy::compile`. The measurement
//! comes from real probes between "pods" that are network namespaces, joined by veths to a
//! Linux bridge, with the policy programs attached to the host-side veths and the maps filled
//! by the real compiler and reconciler.
//!
//! The bridge, with the node's address, lives in a "node" network namespace of its own rather
//! than in the test's: nothing here touches the host's interfaces, and br_netfilter can be
//! turned off for this bridge alone. With `net.bridge.bridge-nf-call-iptables = 1` (the
//! kernel's default, and this machine's) bridged IPv4 traffic goes through iptables, so a
//! FORWARD rule left by anything else would decide cells instead of the datapath under test;
//! the sysctl is per network namespace.
//!
//! Needs root (`CAP_BPF`, `CAP_NET_ADMIN`, `CAP_SYS_ADMIN`) and iproute2's `ip`. Names start
//! with `bpt`; addresses are 10.216.0.0/24 (pods and node) and 10.217.0.0/24 (Service VIPs);
//! pins live under /sys/fs/bpf/bosun-truth and /sys/fs/bpf/bosun-truth-svc.

mod common;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs::{self, File},
    io::{self, BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    path::Path,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use bosun_netdp::{
    netlink,
    policy::{
        self, NamedPort, PinnedPolicyMaps, PolicyDatapath, PolicyPod, PolicyProtocol,
        PolicyReconciler,
    },
    service::{self, BackendAddr, DesiredService, Frontend, Protocol, ServicePortName},
    tc::{Interfaces, TcMode},
};
use common::{chain, in_netns, ip, quiet_ip, Server};
use k8s_openapi::{
    api::{core::v1::Namespace, networking::v1::NetworkPolicy},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use nix::sched::{setns, CloneFlags};
use socket2::{Domain, Socket, Type};

// ---------------------------------------------------------------------------------------------
// The model: upstream's x, y, z × a, b, c
// ---------------------------------------------------------------------------------------------

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const POD_NAMES: [&str; 3] = ["a", "b", "c"];
const PORTS: [u16; 2] = [80, 81];
const PROTOCOLS: [PolicyProtocol; 2] = [PolicyProtocol::Tcp, PolicyProtocol::Udp];

const NODE_NS: &str = "bpt-node";
const BRIDGE: &str = "bpt-br0";
const NODE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 216, 0, 1);
const POLICY_DIR: &str = "/sys/fs/bpf/bosun-truth";
const SERVICE_DIR: &str = "/sys/fs/bpf/bosun-truth-svc";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 217, 0, 10);
const VIP_RANGE: &str = "10.217.0.0/24";

/// How long a probe waits for a connection or an answer. Between namespaces on one bridge an
/// allowed probe answers in well under a millisecond; a denied one costs this much.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a server keeps a silent connection.
const ANSWER_IDLE: Duration = Duration::from_secs(5);

/// Probes bind source ports from this range, each used once per run: the policy programs
/// remember allowed flows by their 5-tuple, and while a TCP SYN is always judged afresh, a UDP
/// datagram from a port the kernel happened to pick again for the same peers within two
/// minutes would ride on the verdict of an earlier case. Below `ip_local_port_range` (32768
/// on), so the kernel never hands these out itself.
const FIRST_SOURCE_PORT: u32 = 10_000;
const SOURCE_PORTS: u32 = 22_000;
static NEXT_SOURCE_PORT: AtomicU32 = AtomicU32::new(0);

fn source_port() -> u16 {
    let n = NEXT_SOURCE_PORT.fetch_add(1, Ordering::Relaxed);
    assert!(
        n < SOURCE_PORTS,
        "the run used up its {SOURCE_PORTS} source ports"
    );
    (FIRST_SOURCE_PORT + n) as u16
}

/// x's pods are .10–.12 (inside 10.216.0.8/29), y's .20–.22 (inside 10.216.0.16/28), z's
/// .40–.42 (inside 10.216.0.32/27), so each namespace is a CIDR of its own for ipBlock cases.
fn pod_address(namespace: usize, pod: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 216, 0, [10, 20, 40][namespace] + pod as u8)
}

/// Every pod names each of its four servers `serve-<port>-<protocol>`, as upstream's do. `web`
/// is TCP 80 on a and c but TCP 81 on b, so a policy naming it allows different numbers on
/// different destinations.
fn named_ports(pod: &str) -> Vec<NamedPort> {
    let mut ports = Vec::new();
    for port in PORTS {
        for protocol in PROTOCOLS {
            ports.push(NamedPort {
                name: format!("serve-{port}-{}", protocol.to_string().to_lowercase()),
                protocol,
                port,
            });
        }
    }
    ports.push(NamedPort {
        name: "web".to_owned(),
        protocol: PolicyProtocol::Tcp,
        port: if pod == "b" { 81 } else { 80 },
    });
    ports
}

/// The nine pods, in matrix order, without interfaces.
fn model_pods() -> Vec<PolicyPod> {
    let mut pods = Vec::new();
    for (n, namespace) in NAMESPACES.iter().enumerate() {
        for (p, name) in POD_NAMES.iter().enumerate() {
            pods.push(PolicyPod {
                namespace: (*namespace).into(),
                name: (*name).into(),
                labels: BTreeMap::from([("pod".to_owned(), (*name).to_owned())]).into(),
                ip: pod_address(n, p),
                named_ports: named_ports(name).into(),
                ifindex: None,
            });
        }
    }
    pods
}

/// Labelled `ns: <name>` only: `kubernetes.io/metadata.name` is the compiler's to add, as the
/// API server's.
fn model_namespaces() -> Vec<Namespace> {
    NAMESPACES
        .iter()
        .map(|name| Namespace {
            metadata: ObjectMeta {
                name: Some((*name).to_owned()),
                labels: Some(BTreeMap::from([("ns".to_owned(), (*name).to_owned())])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        })
        .collect()
}

/// A NetworkPolicy from its namespace, name and `spec` as YAML (indented as one likes).
fn policy(namespace: &str, name: &str, spec: &str) -> NetworkPolicy {
    let indent = spec
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| line.len() - line.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut yaml = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n"
    );
    for line in spec.lines().filter(|line| !line.trim().is_empty()) {
        writeln!(yaml, "  {}", &line[indent..]).expect("write to a String");
    }
    serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("policy {namespace}/{name}: {e}\n{yaml}"))
}

/// `pods` with label `key` of pod `pod` (`namespace/name`) set to `value`, or removed.
fn relabel(mut pods: Vec<PolicyPod>, pod: &str, key: &str, value: Option<&str>) -> Vec<PolicyPod> {
    let target = pods
        .iter_mut()
        .find(|p| p.key() == pod)
        .unwrap_or_else(|| panic!("no pod {pod}"));
    match value {
        Some(value) => {
            std::sync::Arc::make_mut(&mut target.labels).insert(key.to_owned(), value.to_owned())
        }
        None => std::sync::Arc::make_mut(&mut target.labels).remove(key),
    };
    pods
}

// ---------------------------------------------------------------------------------------------
// The oracle
// ---------------------------------------------------------------------------------------------

/// Whether `networking.k8s.io/v1` allows a connection, read straight off the objects: one
/// function per clause of the API reference, no precomputation, nothing shared with the
/// compiler. Pod IPs are matched against ipBlocks as any other address, as upstream's e2e
/// cases do.
mod oracle {
    use std::{collections::BTreeMap, net::Ipv4Addr};

    use bosun_netdp::policy::{PolicyPod, PolicyProtocol};
    use k8s_openapi::{
        api::{
            core::v1::Namespace,
            networking::v1::{IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
        },
        apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
    };

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Direction {
        Ingress,
        Egress,
    }

    /// A connection from `from` to port `port`/`protocol` of `to`.
    pub fn allowed(
        policies: &[NetworkPolicy],
        namespaces: &[Namespace],
        from: &PolicyPod,
        to: &PolicyPod,
        port: u16,
        protocol: PolicyProtocol,
    ) -> bool {
        // A pod talking to itself never leaves its network namespace.
        if from.namespace == to.namespace && from.name == to.name {
            return true;
        }
        let world = World {
            policies,
            namespaces,
        };
        world.direction_allows(Direction::Egress, from, to, to, port, protocol)
            && world.direction_allows(Direction::Ingress, to, from, to, port, protocol)
    }

    struct World<'a> {
        policies: &'a [NetworkPolicy],
        namespaces: &'a [Namespace],
    }

    impl World<'_> {
        /// For the `subject` pod's `direction`, talking with `peer`, the connection going to
        /// `destination` (the subject for ingress, the peer for egress): not isolated, or some
        /// rule of some policy that isolates it allows it.
        fn direction_allows(
            &self,
            direction: Direction,
            subject: &PolicyPod,
            peer: &PolicyPod,
            destination: &PolicyPod,
            port: u16,
            protocol: PolicyProtocol,
        ) -> bool {
            let isolating: Vec<&NetworkPolicy> = self
                .policies
                .iter()
                .filter(|policy| selects_pod(policy, subject) && affects(policy, direction))
                .collect();
            if isolating.is_empty() {
                return true;
            }
            isolating.iter().any(|policy| {
                let namespace = policy_namespace(policy);
                rules(policy, direction).iter().any(|(peers, ports)| {
                    self.peers_match(namespace, *peers, peer)
                        && ports_match(*ports, destination, port, protocol)
                })
            })
        }

        /// `from`/`to` absent or empty: every peer. Otherwise any of them.
        fn peers_match(
            &self,
            policy_namespace: &str,
            peers: Option<&Vec<NetworkPolicyPeer>>,
            pod: &PolicyPod,
        ) -> bool {
            let Some(peers) = peers.filter(|peers| !peers.is_empty()) else {
                return true;
            };
            peers.iter().any(|peer| {
                if let Some(block) = &peer.ip_block {
                    return ip_block_matches(block, pod.ip);
                }
                // No namespaceSelector: the policy's own namespace. No podSelector: every pod
                // of the selected namespaces.
                let namespace_matches = match &peer.namespace_selector {
                    Some(selector) => selector_matches(selector, &self.namespace_labels(pod)),
                    None => &*pod.namespace == policy_namespace,
                };
                let pod_matches = match &peer.pod_selector {
                    Some(selector) => selector_matches(selector, &pod.labels),
                    None => true,
                };
                namespace_matches && pod_matches
            })
        }

        /// The namespace's labels and `kubernetes.io/metadata.name`, which the API server sets
        /// on every namespace.
        fn namespace_labels(&self, pod: &PolicyPod) -> BTreeMap<String, String> {
            let mut labels = self
                .namespaces
                .iter()
                .find(|namespace| namespace.metadata.name.as_deref() == Some(&pod.namespace))
                .and_then(|namespace| namespace.metadata.labels.clone())
                .unwrap_or_default();
            labels.insert(
                "kubernetes.io/metadata.name".to_owned(),
                pod.namespace.to_string(),
            );
            labels
        }
    }

    fn policy_namespace(policy: &NetworkPolicy) -> &str {
        policy.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// The policy's own namespace, and its podSelector (absent or empty: every pod).
    fn selects_pod(policy: &NetworkPolicy, pod: &PolicyPod) -> bool {
        let spec = policy.spec.as_ref();
        policy_namespace(policy) == &*pod.namespace
            && spec
                .and_then(|spec| spec.pod_selector.as_ref())
                .is_none_or(|selector| selector_matches(selector, &pod.labels))
    }

    /// `policyTypes`, or as the API server defaults it when absent or empty: Ingress always,
    /// Egress if there are egress rules.
    fn affects(policy: &NetworkPolicy, direction: Direction) -> bool {
        let Some(spec) = &policy.spec else {
            return direction == Direction::Ingress;
        };
        match spec.policy_types.as_ref().filter(|types| !types.is_empty()) {
            Some(types) => types.iter().any(|t| {
                t == match direction {
                    Direction::Ingress => "Ingress",
                    Direction::Egress => "Egress",
                }
            }),
            None => match direction {
                Direction::Ingress => true,
                Direction::Egress => spec.egress.as_ref().is_some_and(|rules| !rules.is_empty()),
            },
        }
    }

    type Rule<'a> = (
        Option<&'a Vec<NetworkPolicyPeer>>,
        Option<&'a Vec<NetworkPolicyPort>>,
    );

    /// The rules of one direction as (peers, ports).
    fn rules(policy: &NetworkPolicy, direction: Direction) -> Vec<Rule<'_>> {
        let Some(spec) = &policy.spec else {
            return Vec::new();
        };
        match direction {
            Direction::Ingress => spec
                .ingress
                .iter()
                .flatten()
                .map(|rule| (rule.from.as_ref(), rule.ports.as_ref()))
                .collect(),
            Direction::Egress => spec
                .egress
                .iter()
                .flatten()
                .map(|rule| (rule.to.as_ref(), rule.ports.as_ref()))
                .collect(),
        }
    }

    /// `ports` absent or empty: every port. Otherwise any entry: its protocol (default TCP),
    /// and its port absent (all), a number up to `endPort`, or a name that the destination pod
    /// gives a container port of that protocol.
    fn ports_match(
        ports: Option<&Vec<NetworkPolicyPort>>,
        destination: &PolicyPod,
        port: u16,
        protocol: PolicyProtocol,
    ) -> bool {
        let Some(ports) = ports.filter(|ports| !ports.is_empty()) else {
            return true;
        };
        ports.iter().any(|entry| {
            let entry_protocol = entry.protocol.as_deref().unwrap_or("TCP");
            if entry_protocol != protocol.to_string() {
                return false;
            }
            match &entry.port {
                None => true,
                Some(IntOrString::Int(first)) => {
                    let last = entry.end_port.unwrap_or(*first);
                    (*first..=last).contains(&i32::from(port))
                }
                Some(IntOrString::String(name)) => destination.named_ports.iter().any(|named| {
                    named.name == *name && named.protocol == protocol && named.port == port
                }),
            }
        })
    }

    fn ip_block_matches(block: &IPBlock, address: Ipv4Addr) -> bool {
        cidr_contains(&block.cidr, address)
            && !block
                .except
                .iter()
                .flatten()
                .any(|except| cidr_contains(except, address))
    }

    fn cidr_contains(cidr: &str, address: Ipv4Addr) -> bool {
        let (network, length) = cidr
            .split_once('/')
            .unwrap_or_else(|| panic!("CIDR {cidr:?} has no prefix length"));
        let network: Ipv4Addr = network
            .parse()
            .unwrap_or_else(|e| panic!("CIDR {cidr:?}: {e}"));
        let length: u32 = length
            .parse()
            .unwrap_or_else(|e| panic!("CIDR {cidr:?}: {e}"));
        assert!(length <= 32, "CIDR {cidr:?}");
        // checked_shr: a shift by 32 (a /0) is all bits gone, which compares equal.
        let high = |a: Ipv4Addr| a.to_bits().checked_shr(32 - length).unwrap_or(0);
        high(network) == high(address)
    }

    /// matchLabels and matchExpressions, all of them; an empty selector matches everything.
    pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
        let labels_match = selector
            .match_labels
            .iter()
            .flatten()
            .all(|(key, value)| labels.get(key) == Some(value));
        let expressions_match = selector
            .match_expressions
            .iter()
            .flatten()
            .all(|expression| {
                let values = expression.values.as_deref().unwrap_or_default();
                let value = labels.get(&expression.key);
                match expression.operator.as_str() {
                    "In" => value.is_some_and(|value| values.contains(value)),
                    "NotIn" => value.is_none_or(|value| !values.contains(value)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    other => panic!("unknown selector operator {other:?}"),
                }
            });
        labels_match && expressions_match
    }
}

// ---------------------------------------------------------------------------------------------
// Truth tables
// ---------------------------------------------------------------------------------------------

/// One port and protocol's 9×9 table: row = from, column = to.
#[derive(Clone, PartialEq, Eq)]
struct Table {
    cells: Vec<bool>,
}

impl Table {
    fn expected(
        policies: &[NetworkPolicy],
        namespaces: &[Namespace],
        pods: &[PolicyPod],
        port: u16,
        protocol: PolicyProtocol,
    ) -> Self {
        let mut cells = Vec::new();
        for from in pods {
            for to in pods {
                cells.push(oracle::allowed(
                    policies, namespaces, from, to, port, protocol,
                ));
            }
        }
        Self { cells }
    }

    /// Upstream's layout: `.` reachable, `X` not; or, for a comparison, `.` agree, `X` differ.
    fn render(&self, pods: &[PolicyPod]) -> String {
        let names: Vec<String> = pods.iter().map(PolicyPod::key).collect();
        let mut text = format!("-\t{}\n", names.join("\t"));
        for (row, from) in names.iter().enumerate() {
            text.push_str(from);
            for column in 0..names.len() {
                text.push('\t');
                text.push(if self.cells[row * names.len() + column] {
                    '.'
                } else {
                    'X'
                });
            }
            text.push('\n');
        }
        text
    }

    fn agreement(&self, other: &Self) -> Self {
        Self {
            cells: self
                .cells
                .iter()
                .zip(&other.cells)
                .map(|(a, b)| a == b)
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The lab: a node namespace with a bridge, nine pod namespaces, servers in them
// ---------------------------------------------------------------------------------------------

/// The network and the servers. Dropping it removes the pins, stops the servers and deletes
/// the namespaces (and with them every interface), also when the test fails; creating it
/// first removes what a killed earlier run left.
struct Lab {
    /// In matrix order, with their host-side ifindexes.
    pods: Vec<PolicyPod>,
    /// Each pod's network namespace, open, in matrix order.
    netns: Vec<File>,
    servers: Vec<Server>,
}

fn netns_name(pod: &PolicyPod) -> String {
    format!("bpt-{}-{}", pod.namespace, pod.name)
}

impl Lab {
    fn new() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test loads BPF programs and creates network namespaces: run it as root"
        );
        let mut lab = Self {
            pods: model_pods(),
            netns: Vec::new(),
            servers: Vec::new(),
        };
        lab.remove();

        ip(&["netns", "add", NODE_NS]);
        in_netns(NODE_NS, || {
            let sysctl = "/proc/sys/net/bridge/bridge-nf-call-iptables";
            fs::write(sysctl, "0").unwrap_or_else(|e| panic!("write {sysctl}: {e}"));
            let value = fs::read_to_string(sysctl).unwrap_or_else(|e| panic!("read {sysctl}: {e}"));
            assert_eq!(value.trim(), "0", "br_netfilter still on in {NODE_NS}");
        });
        ip(&["-n", NODE_NS, "link", "set", "lo", "up"]);
        ip(&["-n", NODE_NS, "link", "add", BRIDGE, "type", "bridge"]);
        ip(&[
            "-n",
            NODE_NS,
            "addr",
            "add",
            &format!("{NODE_ADDRESS}/24"),
            "dev",
            BRIDGE,
        ]);
        ip(&["-n", NODE_NS, "link", "set", BRIDGE, "up"]);
        // Where a VIP goes when nothing rewrote it: nowhere, at once.
        ip(&["-n", NODE_NS, "route", "add", "unreachable", VIP_RANGE]);

        for i in 0..lab.pods.len() {
            let ns = netns_name(&lab.pods[i]);
            let address = lab.pods[i].ip;
            ip(&["netns", "add", &ns]);
            ip(&[
                "-n", NODE_NS, "link", "add", &ns, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            ip(&["-n", NODE_NS, "link", "set", &ns, "master", BRIDGE, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &NODE_ADDRESS.to_string(),
            ]);

            let path = format!("/run/netns/{ns}");
            let interface = in_netns(NODE_NS, || netlink::host_interface(Path::new(&path)))
                .unwrap_or_else(|e| panic!("the host side of {path}: {}", chain(&e)));
            assert_eq!(interface.name, ns, "host_interface found another interface");
            lab.pods[i].ifindex = Some(interface.ifindex);
            lab.netns
                .push(File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}")));

            // One at a time, so that a failure to start one still stops those before it.
            let name = lab.pods[i].key();
            for port in PORTS {
                let listener = in_pod(&lab.netns[i], || {
                    TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
                })
                .unwrap_or_else(|e| panic!("listen on TCP port {port} in {name}: {e}"));
                let server = Server::tcp(listener, &name, ANSWER_IDLE);
                lab.servers.push(server);
                let socket = in_pod(&lab.netns[i], || {
                    UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
                })
                .unwrap_or_else(|e| panic!("bind UDP port {port} in {name}: {e}"));
                let server = Server::udp(socket, &name);
                lab.servers.push(server);
            }
        }
        lab
    }

    fn remove(&mut self) {
        // Pins first, from the namespace the interfaces are in, so that detaching finds them.
        let cleanup = || {
            if let Err(e) = policy::cleanup(Path::new(POLICY_DIR)) {
                eprintln!("policy cleanup of {POLICY_DIR}: {}", chain(&e));
            }
        };
        if Path::new(&format!("/run/netns/{NODE_NS}")).exists() {
            in_netns(NODE_NS, cleanup);
        } else {
            cleanup();
        }
        // policy::cleanup leaves the directory it was given.
        match fs::remove_dir(POLICY_DIR) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("remove {POLICY_DIR}: {e}"),
        }
        if let Err(e) = service::cleanup(Path::new(SERVICE_DIR)) {
            eprintln!("service cleanup of {SERVICE_DIR}: {}", chain(&e));
        }
        for server in self.servers.drain(..) {
            server.stop();
        }
        self.netns.clear();
        for pod in model_pods() {
            quiet_ip(&["netns", "del", &netns_name(&pod)]);
        }
        quiet_ip(&["netns", "del", NODE_NS]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Runs `f` on a thread of its own in the pod's network namespace.
fn in_pod<T: Send>(netns: &File, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(netns, CloneFlags::CLONE_NEWNET).expect("enter a pod's network namespace");
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

// ---------------------------------------------------------------------------------------------
// Probes
// ---------------------------------------------------------------------------------------------

/// One request and its answer, from a fresh socket on a source port never used before; to be
/// called on a thread inside the client's namespace. The answer is the server's
/// `namespace/name`.
fn probe(to: SocketAddrV4, protocol: PolicyProtocol) -> io::Result<String> {
    let from = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, source_port());
    match protocol {
        PolicyProtocol::Tcp => {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            socket.bind(&from.into())?;
            socket.connect_timeout(&to.into(), PROBE_TIMEOUT)?;
            let mut stream = TcpStream::from(socket);
            stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
            stream.write_all(b"who?\n")?;
            let mut line = String::new();
            BufReader::new(&mut stream).read_line(&mut line)?;
            if line.is_empty() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            Ok(line.trim_end().to_owned())
        }
        PolicyProtocol::Udp => {
            let socket = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
            socket.bind(&from.into())?;
            let socket = UdpSocket::from(socket);
            socket.set_read_timeout(Some(PROBE_TIMEOUT))?;
            socket.send_to(b"who?", to)?;
            let mut buf = [0u8; 64];
            let (len, _) = socket.recv_from(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
        }
        PolicyProtocol::Sctp => unreachable!("no SCTP servers"),
    }
}

/// What a probe of one cell found.
type Outcome = io::Result<String>;

fn reached(outcome: &Outcome, expected: &str) -> bool {
    matches!(outcome, Ok(name) if name == expected)
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Ok(name) => format!("answered by {name}"),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) =>
        {
            "timed out".to_owned()
        }
        Err(e) => e.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// The world: lab, datapaths, reconcilers
// ---------------------------------------------------------------------------------------------

struct World {
    datapath: PolicyDatapath,
    reconciler: PolicyReconciler<PinnedPolicyMaps>,
    services: service::Reconciler<service::PinnedMaps>,
    namespaces: Vec<Namespace>,
    /// The node namespace's addresses, as the agent would pass them.
    node: Vec<Ipv4Addr>,
    /// Declared last so that it is dropped last, after every handle on its pins.
    lab: Lab,
}

impl World {
    fn new() -> Self {
        let lab = Lab::new();
        let node = in_netns(NODE_NS, netlink::node_addresses)
            .unwrap_or_else(|e| panic!("the node's addresses: {}", chain(&e)));
        assert!(node.contains(&NODE_ADDRESS), "node addresses {node:?}");

        // As the daemon would: clsact, or BOSUN_TC_ATTACH=tcx runs the table on tcx links.
        let mode = TcMode::detect(Interfaces::Pods).unwrap_or_else(|e| panic!("{}", chain(&e)));
        let datapath = policy::install(Path::new(POLICY_DIR), mode)
            .unwrap_or_else(|e| panic!("install the policy datapath: {}", chain(&e)));
        let maps = datapath
            .maps()
            .unwrap_or_else(|e| panic!("open the policy maps: {}", chain(&e)));
        let reconciler = PolicyReconciler::new(maps)
            .unwrap_or_else(|e| panic!("read back the policy maps: {}", chain(&e)));
        let cgroup = service::find_cgroup2()
            .unwrap_or_else(|e| panic!("find the cgroup2 mount: {}", chain(&e)));
        let service_maps = service::install(Path::new(SERVICE_DIR), &cgroup)
            .unwrap_or_else(|e| panic!("install the Service datapath: {}", chain(&e)));
        let mut world = Self {
            datapath,
            reconciler,
            services: service::Reconciler::new(service_maps),
            namespaces: model_namespaces(),
            node,
            lab,
        };
        // Endpoint entries before the programs: a packet on an interface without one is
        // dropped.
        let pods = world.lab.pods.clone();
        world
            .apply(&[], &pods)
            .unwrap_or_else(|e| panic!("the first apply: {e}"));
        let ifindexes: Vec<u32> = world
            .lab
            .pods
            .iter()
            .filter_map(|pod| pod.ifindex)
            .collect();
        let datapath = &mut world.datapath;
        in_netns(NODE_NS, || {
            for ifindex in ifindexes {
                datapath
                    .attach(ifindex)
                    .unwrap_or_else(|e| panic!("attach to ifindex {ifindex}: {}", chain(&e)));
            }
        });
        world
    }

    /// Compiles and writes `policies` for `pods` (the lab's, maybe relabelled).
    fn apply(&mut self, policies: &[NetworkPolicy], pods: &[PolicyPod]) -> Result<(), String> {
        let compiled = policy::compile(policies, &self.namespaces, pods);
        if !compiled.problems.is_empty() {
            let problems: Vec<String> = compiled.problems.iter().map(|p| p.to_string()).collect();
            return Err(format!("the compiler reported problems: {problems:#?}"));
        }
        self.reconciler
            .apply(&compiled, &self.node)
            .map_err(|e| format!("apply: {}", chain(&e)))?;
        Ok(())
    }

    /// Probes `cells` (from, to) in parallel, each from a thread in the client's namespace.
    fn probe_cells(
        &self,
        cells: &[(usize, usize)],
        port: u16,
        protocol: PolicyProtocol,
    ) -> Vec<Outcome> {
        let pods = &self.lab.pods;
        thread::scope(|scope| {
            let threads: Vec<_> = cells
                .iter()
                .map(|&(from, to)| {
                    let netns = &self.lab.netns[from];
                    let target = SocketAddrV4::new(pods[to].ip, port);
                    scope.spawn(move || {
                        setns(netns, CloneFlags::CLONE_NEWNET)
                            .expect("enter the client's network namespace");
                        probe(target, protocol)
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|thread| thread.join().expect("a probe thread panicked"))
                .collect()
        })
    }

    /// Measures one table and compares it with `expected`; cells that disagree are probed
    /// once more before they count, as upstream retries, since a lost packet can only make an
    /// allowed cell look denied. `None` if they agree, or the report.
    fn check(
        &self,
        title: &str,
        pods: &[PolicyPod],
        expected: &Table,
        port: u16,
        protocol: PolicyProtocol,
    ) -> Option<String> {
        let all: Vec<(usize, usize)> = (0..pods.len())
            .flat_map(|from| (0..pods.len()).map(move |to| (from, to)))
            .collect();
        let mut outcomes = self.probe_cells(&all, port, protocol);
        let key = |i: usize| pods[all[i].1].key();
        let differs =
            |outcomes: &[Outcome], i: usize| reached(&outcomes[i], &key(i)) != expected.cells[i];
        let retry: Vec<usize> = (0..all.len()).filter(|&i| differs(&outcomes, i)).collect();
        if retry.is_empty() {
            return None;
        }
        let again = self.probe_cells(
            &retry.iter().map(|&i| all[i]).collect::<Vec<_>>(),
            port,
            protocol,
        );
        for (i, outcome) in retry.iter().zip(again) {
            outcomes[*i] = outcome;
        }
        let measured = Table {
            cells: (0..all.len())
                .map(|i| reached(&outcomes[i], &key(i)))
                .collect(),
        };
        if measured == *expected {
            return None;
        }
        let mut report = format!(
            "{title}, {protocol}/{port}:\nexpected:\n{}measured:\n{}agreement (X: differ):\n{}",
            expected.render(pods),
            measured.render(pods),
            expected.agreement(&measured).render(pods),
        );
        for i in (0..all.len()).filter(|&i| measured.cells[i] != expected.cells[i]) {
            let (from, to) = all[i];
            writeln!(
                report,
                "  {} -> {} {protocol}/{port}: expected {}, probe {}",
                pods[from].key(),
                pods[to].key(),
                if expected.cells[i] {
                    "allowed"
                } else {
                    "denied"
                },
                describe(&outcomes[i]),
            )
            .expect("write to a String");
        }
        Some(report)
    }
}

// ---------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------

/// One state of the world: the policies that exist and the pods' labels.
struct Step {
    what: &'static str,
    policies: Vec<NetworkPolicy>,
    pods: Vec<PolicyPod>,
}

struct Case {
    name: &'static str,
    steps: Vec<Step>,
}

fn cases(pods: &[PolicyPod]) -> Vec<Case> {
    let step = |what, policies| Step {
        what,
        policies,
        pods: pods.to_vec(),
    };
    let case = |name, steps| Case { name, steps };
    let deny_ingress_x = policy(
        "x",
        "deny-ingress",
        "
        podSelector: {}
        policyTypes: [Ingress]
        ",
    );
    let locked = policy(
        "x",
        "lock-down",
        "
        podSelector:
          matchLabels: {role: locked}
        policyTypes: [Ingress]
        ",
    );
    let blue_only = policy(
        "y",
        "from-blue",
        "
        podSelector: {}
        policyTypes: [Ingress]
        ingress:
        - from:
          - namespaceSelector: {}
            podSelector:
              matchLabels: {team: blue}
        ",
    );
    vec![
        case(
            "default deny ingress",
            vec![step(
                "all of x denies ingress",
                vec![deny_ingress_x.clone()],
            )],
        ),
        case(
            "default deny egress",
            vec![step(
                "all of x denies egress",
                vec![policy(
                    "x",
                    "deny-egress",
                    "
                    podSelector: {}
                    policyTypes: [Egress]
                    ",
                )],
            )],
        ),
        case(
            "default deny all",
            vec![step(
                "all of x denies both",
                vec![policy(
                    "x",
                    "deny-all",
                    "
                    podSelector: {}
                    policyTypes: [Ingress, Egress]
                    ",
                )],
            )],
        ),
        case(
            "allow ingress from the same namespace",
            vec![step(
                "x admits x",
                vec![policy(
                    "x",
                    "allow-same-namespace",
                    "
                    podSelector: {}
                    policyTypes: [Ingress]
                    ingress:
                    - from:
                      - podSelector: {}
                    ",
                )],
            )],
        ),
        case(
            "allow ingress from a namespace by label",
            vec![step(
                "x/a admits namespace ns=y",
                vec![policy(
                    "x",
                    "allow-from-y",
                    "
                    podSelector:
                      matchLabels: {pod: a}
                    policyTypes: [Ingress]
                    ingress:
                    - from:
                      - namespaceSelector:
                          matchLabels: {ns: y}
                    ",
                )],
            )],
        ),
        case(
            "podSelector AND namespaceSelector vs OR",
            vec![
                step(
                    "one peer: pods b in namespace y",
                    vec![policy(
                        "x",
                        "and-or",
                        "
                        podSelector:
                          matchLabels: {pod: a}
                        policyTypes: [Ingress]
                        ingress:
                        - from:
                          - namespaceSelector:
                              matchLabels: {ns: y}
                            podSelector:
                              matchLabels: {pod: b}
                        ",
                    )],
                ),
                step(
                    "two peers: namespace y, or pods b of x",
                    vec![policy(
                        "x",
                        "and-or",
                        "
                        podSelector:
                          matchLabels: {pod: a}
                        policyTypes: [Ingress]
                        ingress:
                        - from:
                          - namespaceSelector:
                              matchLabels: {ns: y}
                          - podSelector:
                              matchLabels: {pod: b}
                        ",
                    )],
                ),
            ],
        ),
        case(
            "matchExpressions and kubernetes.io/metadata.name",
            vec![step(
                "x admits pods a and b of every namespace but x",
                vec![policy(
                    "x",
                    "expressions",
                    "
                    podSelector: {}
                    policyTypes: [Ingress]
                    ingress:
                    - from:
                      - namespaceSelector:
                          matchExpressions:
                          - {key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}
                        podSelector:
                          matchExpressions:
                          - {key: pod, operator: In, values: [a, b]}
                          - {key: role, operator: DoesNotExist}
                    ",
                )],
            )],
        ),
        case(
            "ipBlock with except",
            vec![
                step(
                    "z/a admits 10.216.0.8/29 (x) except x/b",
                    vec![policy(
                        "z",
                        "from-x-but-b",
                        "
                        podSelector:
                          matchLabels: {pod: a}
                        policyTypes: [Ingress]
                        ingress:
                        - from:
                          - ipBlock:
                              cidr: 10.216.0.8/29
                              except: [10.216.0.11/32]
                        ",
                    )],
                ),
                step(
                    "x/a may reach 0.0.0.0/0 except z (10.216.0.32/27)",
                    vec![policy(
                        "x",
                        "anywhere-but-z",
                        "
                        podSelector:
                          matchLabels: {pod: a}
                        policyTypes: [Egress]
                        egress:
                        - to:
                          - ipBlock:
                              cidr: 0.0.0.0/0
                              except: [10.216.0.32/27]
                        ",
                    )],
                ),
            ],
        ),
        case(
            "named ports",
            vec![
                step(
                    "x admits anyone on `web` (80 on a and c, 81 on b)",
                    vec![policy(
                        "x",
                        "web",
                        "
                        podSelector: {}
                        policyTypes: [Ingress]
                        ingress:
                        - from:
                          - namespaceSelector: {}
                          ports:
                          - port: web
                        ",
                    )],
                ),
                step(
                    "y/a may reach `web` and UDP `serve-81-udp`; `web` over UDP names nothing",
                    vec![policy(
                        "y",
                        "egress-named",
                        "
                        podSelector:
                          matchLabels: {pod: a}
                        policyTypes: [Egress]
                        egress:
                        - ports:
                          - {port: web, protocol: TCP}
                          - {port: web, protocol: UDP}
                          - {port: serve-81-udp, protocol: UDP}
                        ",
                    )],
                ),
            ],
        ),
        case(
            "endPort",
            vec![
                step(
                    "x admits TCP 80-81",
                    vec![policy(
                        "x",
                        "range",
                        "
                        podSelector: {}
                        policyTypes: [Ingress]
                        ingress:
                        - ports:
                          - {protocol: TCP, port: 80, endPort: 81}
                        ",
                    )],
                ),
                step(
                    "x admits TCP 80 only",
                    vec![policy(
                        "x",
                        "range",
                        "
                        podSelector: {}
                        policyTypes: [Ingress]
                        ingress:
                        - ports:
                          - {protocol: TCP, port: 80}
                        ",
                    )],
                ),
            ],
        ),
        case(
            "UDP allowed while TCP denied",
            vec![step(
                "x admits UDP on every port, nothing else",
                vec![policy(
                    "x",
                    "udp-only",
                    "
                    podSelector: {}
                    policyTypes: [Ingress]
                    ingress:
                    - ports:
                      - protocol: UDP
                    ",
                )],
            )],
        ),
        case(
            "multiple policies are unioned",
            vec![step(
                "x/a admits pods b of x, and namespace y on 81; x/a may only reach z",
                vec![
                    policy(
                        "x",
                        "a-from-b",
                        "
                        podSelector:
                          matchLabels: {pod: a}
                        ingress:
                        - from:
                          - podSelector:
                              matchLabels: {pod: b}
                        ",
                    ),
                    policy(
                        "x",
                        "a-from-y-on-81",
                        "
                        podSelector:
                          matchLabels: {pod: a}
                        policyTypes: [Ingress]
                        ingress:
                        - from:
                          - namespaceSelector:
                              matchLabels: {ns: y}
                          ports:
                          - port: 81
                          - {port: 81, protocol: UDP}
                        ",
                    ),
                    policy(
                        "x",
                        "a-to-z",
                        "
                        podSelector:
                          matchLabels: {pod: a}
                        policyTypes: [Egress]
                        egress:
                        - to:
                          - namespaceSelector:
                              matchLabels: {ns: z}
                        ",
                    ),
                ],
            )],
        ),
        case(
            "policyTypes defaulted from the rules",
            vec![step(
                "x/c has egress rules and no policyTypes: isolated both ways",
                vec![policy(
                    "x",
                    "no-types",
                    "
                    podSelector:
                      matchLabels: {pod: c}
                    egress:
                    - to:
                      - podSelector: {}
                    ",
                )],
            )],
        ),
        case(
            "an empty rule allows everything",
            vec![step(
                "x denies ingress, but x/a has a rule with no from and no ports",
                vec![
                    deny_ingress_x,
                    policy(
                        "x",
                        "allow-all-to-a",
                        "
                        podSelector:
                          matchLabels: {pod: a}
                        ingress:
                        - {}
                        ",
                    ),
                ],
            )],
        ),
        // The maps answer with the longest matching prefix only, so a longer prefix must carry
        // the ports of every shorter one that other rules allow, and an `except` must hide
        // only its own rule's block.
        case(
            "overlapping peers merge their ports",
            vec![
                step(
                    "z/a admits the /24 on TCP 80, x/b also on UDP 81, y but y/b also on TCP 81",
                    vec![
                        policy(
                            "z",
                            "everyone-on-80",
                            "
                            podSelector:
                              matchLabels: {pod: a}
                            ingress:
                            - from:
                              - ipBlock: {cidr: 10.216.0.0/24}
                              ports:
                              - port: 80
                            ",
                        ),
                        policy(
                            "z",
                            "x-b-on-udp-81",
                            "
                            podSelector:
                              matchLabels: {pod: a}
                            ingress:
                            - from:
                              - namespaceSelector:
                                  matchLabels: {ns: x}
                                podSelector:
                                  matchLabels: {pod: b}
                              ports:
                              - {port: 81, protocol: UDP}
                            - from:
                              - ipBlock: {cidr: 10.216.0.16/28, except: [10.216.0.21/32]}
                              ports:
                              - port: 81
                            ",
                        ),
                    ],
                ),
                step(
                    "x/a may send UDP 80 anywhere but z, and TCP 81 to z/c",
                    vec![policy(
                        "x",
                        "egress-overlap",
                        "
                        podSelector:
                          matchLabels: {pod: a}
                        policyTypes: [Egress]
                        egress:
                        - to:
                          - ipBlock: {cidr: 0.0.0.0/0, except: [10.216.0.32/27]}
                          ports:
                          - {port: 80, protocol: UDP}
                        - to:
                          - namespaceSelector:
                              matchLabels: {ns: z}
                            podSelector:
                              matchLabels: {pod: c}
                          ports:
                          - port: 81
                        ",
                    )],
                ),
            ],
        ),
        case(
            "update and deletion",
            vec![
                step(
                    "x admits namespace y; z/c denies egress",
                    vec![
                        policy(
                            "x",
                            "admit",
                            "
                            podSelector: {}
                            ingress:
                            - from:
                              - namespaceSelector:
                                  matchLabels: {ns: y}
                            ",
                        ),
                        policy(
                            "z",
                            "quiet",
                            "
                            podSelector:
                              matchLabels: {pod: c}
                            policyTypes: [Egress]
                            ",
                        ),
                    ],
                ),
                step(
                    "the same policy now admits namespace z",
                    vec![
                        policy(
                            "x",
                            "admit",
                            "
                            podSelector: {}
                            ingress:
                            - from:
                              - namespaceSelector:
                                  matchLabels: {ns: z}
                            ",
                        ),
                        policy(
                            "z",
                            "quiet",
                            "
                            podSelector:
                              matchLabels: {pod: c}
                            policyTypes: [Egress]
                            ",
                        ),
                    ],
                ),
                step(
                    "x's policy deleted, z's kept",
                    vec![policy(
                        "z",
                        "quiet",
                        "
                        podSelector:
                          matchLabels: {pod: c}
                        policyTypes: [Egress]
                        ",
                    )],
                ),
            ],
        ),
        case(
            "label changes move pods into and out of selections",
            vec![
                step(
                    "no pod is role=locked or team=blue",
                    vec![locked.clone(), blue_only.clone()],
                ),
                Step {
                    what: "x/b becomes role=locked, z/c team=blue",
                    policies: vec![locked.clone(), blue_only.clone()],
                    pods: relabel(
                        relabel(pods.to_vec(), "x/b", "role", Some("locked")),
                        "z/c",
                        "team",
                        Some("blue"),
                    ),
                },
                Step {
                    what: "x/b loses role=locked; z/c stays blue",
                    policies: vec![locked.clone(), blue_only.clone()],
                    pods: relabel(pods.to_vec(), "z/c", "team", Some("blue")),
                },
                Step {
                    what: "z/c loses team=blue",
                    policies: vec![locked, blue_only],
                    pods: pods.to_vec(),
                },
            ],
        ),
    ]
}

/// The Service case: a VIP whose backends are x/a and x/b; the client y/a may reach only x/a.
/// The socket-level balancer rewrites the destination at `connect`, so the policy program
/// judges the backend: a connection that lands on x/a succeeds, one on x/b fails.
fn service_case(world: &mut World) -> Vec<String> {
    let mut failures = Vec::new();
    let pods = world.lab.pods.clone();
    let backends: Vec<&PolicyPod> = pods
        .iter()
        .filter(|pod| &*pod.namespace == "x" && (&*pod.name == "a" || &*pod.name == "b"))
        .collect();
    let desired: Vec<DesiredService> = [Protocol::Tcp, Protocol::Udp]
        .into_iter()
        .map(|protocol| DesiredService {
            frontend: Frontend {
                address: VIP,
                port: 80,
                protocol,
            },
            name: ServicePortName {
                namespace: "x".into(),
                name: "web".into(),
                port: "".into(),
            },
            affinity_timeout: None,
            backends: backends
                .iter()
                .map(|pod| BackendAddr {
                    address: pod.ip,
                    port: 80,
                })
                .collect(),
            external: None,
        })
        .collect();
    world
        .services
        .apply(&desired)
        .unwrap_or_else(|e| panic!("apply the Service: {}", chain(&e)));

    let only_x_a = policy(
        "y",
        "only-x-a",
        "
        podSelector:
          matchLabels: {pod: a}
        policyTypes: [Egress]
        egress:
        - to:
          - namespaceSelector:
              matchLabels: {ns: x}
            podSelector:
              matchLabels: {pod: a}
        ",
    );
    if let Err(e) = world.apply(std::slice::from_ref(&only_x_a), &pods) {
        failures.push(format!("Service VIP: {e}"));
        return failures;
    }
    const TRIES: usize = 40;
    for client in ["y/a", "y/b"] {
        let from = pods
            .iter()
            .position(|pod| pod.key() == client)
            .expect("client");
        for protocol in [PolicyProtocol::Tcp, PolicyProtocol::Udp] {
            // Which backends the oracle lets this client reach.
            let allowed: Vec<String> = backends
                .iter()
                .filter(|backend| {
                    oracle::allowed(
                        std::slice::from_ref(&only_x_a),
                        &world.namespaces,
                        &pods[from],
                        backend,
                        80,
                        protocol,
                    )
                })
                .map(|backend| backend.key())
                .collect();
            let outcomes = thread::scope(|scope| {
                let threads: Vec<_> = (0..TRIES)
                    .map(|_| {
                        let netns = &world.lab.netns[from];
                        scope.spawn(move || {
                            setns(netns, CloneFlags::CLONE_NEWNET)
                                .expect("enter the client's network namespace");
                            probe(SocketAddrV4::new(VIP, 80), protocol)
                        })
                    })
                    .collect();
                threads
                    .into_iter()
                    .map(|thread| thread.join().expect("a probe thread panicked"))
                    .collect::<Vec<_>>()
            });
            let mut answered = BTreeMap::<String, usize>::new();
            let mut failed = Vec::new();
            for outcome in &outcomes {
                match outcome {
                    Ok(name) => *answered.entry(name.clone()).or_default() += 1,
                    Err(_) => failed.push(describe(outcome)),
                }
            }
            eprintln!(
                "  VIP {VIP}:80/{protocol} from {client} (may reach {allowed:?}): answered \
                 {answered:?}, {} failed",
                failed.len()
            );
            let reached: Vec<String> = answered.keys().cloned().collect();
            // Random choice over two backends: 40 tries miss one with probability 2^-39.
            if reached != allowed || failed.is_empty() != (allowed.len() == backends.len()) {
                failures.push(format!(
                    "Service VIP {VIP}:80/{protocol} from {client}: the oracle allows backends \
                     {allowed:?} of {:?}; {TRIES} probes were answered by {answered:?} and \
                     failed {} times ({:?})",
                    backends.iter().map(|b| b.key()).collect::<Vec<_>>(),
                    failed.len(),
                    failed.iter().take(3).collect::<Vec<_>>(),
                ));
            }
        }
    }
    world
        .services
        .apply(&[])
        .unwrap_or_else(|e| panic!("remove the Service: {}", chain(&e)));
    failures
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

#[test]
fn network_policy_truth_tables_match_the_oracle() {
    let started = Instant::now();
    let mut world = World::new();
    eprintln!(
        "topology, datapaths and {} servers ready in {:?}",
        world.lab.servers.len(),
        started.elapsed()
    );
    let pods = world.lab.pods.clone();
    let namespaces = world.namespaces.clone();
    let all_allowed = |pods: &[PolicyPod]| -> Vec<Table> {
        matrices()
            .map(|(port, protocol)| Table::expected(&[], &namespaces, pods, port, protocol))
            .collect()
    };

    let mut failures = Vec::new();
    // Sanity of the probes themselves: with no policy, everyone reaches everyone.
    let mut all_cases = vec![Case {
        name: "no policy",
        steps: vec![Step {
            what: "nothing selects anything",
            policies: Vec::new(),
            pods: pods.clone(),
        }],
    }];
    all_cases.extend(cases(&pods));
    for case in &all_cases {
        let case_started = Instant::now();
        // A clean slate: no policy at all.
        if let Err(e) = world.apply(&[], &pods) {
            failures.push(format!("{}: reset: {e}", case.name));
            continue;
        }
        let mut previous = all_allowed(&pods);
        for (n, step) in case.steps.iter().enumerate() {
            let title = format!(
                "{} [{}/{}: {}]",
                case.name,
                n + 1,
                case.steps.len(),
                step.what
            );
            let expected: Vec<Table> = matrices()
                .map(|(port, protocol)| {
                    Table::expected(&step.policies, &namespaces, &step.pods, port, protocol)
                })
                .collect();
            // A step that changes nothing observable tests nothing.
            if case.name != "no policy" && expected == previous {
                failures.push(format!(
                    "{title}: the oracle sees no change from the step before"
                ));
            }
            previous = expected.clone();
            if let Err(e) = world.apply(&step.policies, &step.pods) {
                failures.push(format!("{title}: {e}"));
                continue;
            }
            for ((port, protocol), expected) in matrices().zip(&expected) {
                let matrix_started = Instant::now();
                let failure = world.check(&title, &step.pods, expected, port, protocol);
                eprintln!(
                    "{title} {protocol}/{port}: {} in {:?}",
                    if failure.is_some() { "MISMATCH" } else { "ok" },
                    matrix_started.elapsed()
                );
                if let Some(failure) = failure {
                    eprintln!("{failure}");
                    failures.push(failure);
                }
            }
        }
        eprintln!("case {:?}: {:?}", case.name, case_started.elapsed());
    }

    let case_started = Instant::now();
    let _ = world.apply(&[], &pods);
    failures.extend(service_case(&mut world));
    eprintln!("case \"Service VIP\": {:?}", case_started.elapsed());

    eprintln!("all cases: {:?}", started.elapsed());
    assert!(
        failures.is_empty(),
        "{} failures:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

fn matrices() -> impl Iterator<Item = (u16, PolicyProtocol)> {
    PORTS
        .into_iter()
        .flat_map(|port| PROTOCOLS.into_iter().map(move |protocol| (port, protocol)))
}

// ---------------------------------------------------------------------------------------------
// The oracle on cases worked out by hand
// ---------------------------------------------------------------------------------------------

fn pod<'a>(pods: &'a [PolicyPod], key: &str) -> &'a PolicyPod {
    pods.iter()
        .find(|pod| pod.key() == key)
        .unwrap_or_else(|| panic!("no pod {key}"))
}

/// `allowed` for `from` → `to` on `port`/`protocol`.
fn allows(
    policies: &[NetworkPolicy],
    pods: &[PolicyPod],
    from: &str,
    to: &str,
    port: u16,
    protocol: PolicyProtocol,
) -> bool {
    oracle::allowed(
        policies,
        &model_namespaces(),
        pod(pods, from),
        pod(pods, to),
        port,
        protocol,
    )
}

const TCP: PolicyProtocol = PolicyProtocol::Tcp;
const UDP: PolicyProtocol = PolicyProtocol::Udp;

#[test]
fn oracle_without_policies_allows_everything() {
    let pods = model_pods();
    for (port, protocol) in matrices() {
        let table = Table::expected(&[], &model_namespaces(), &pods, port, protocol);
        assert!(table.cells.iter().all(|cell| *cell));
    }
}

#[test]
fn oracle_default_deny_ingress_isolates_only_the_namespace_it_is_in() {
    let pods = model_pods();
    let deny = [policy(
        "x",
        "deny",
        "podSelector: {}\npolicyTypes: [Ingress]",
    )];
    assert!(!allows(&deny, &pods, "y/a", "x/b", 80, TCP));
    assert!(!allows(&deny, &pods, "x/a", "x/b", 81, UDP));
    assert!(
        allows(&deny, &pods, "x/a", "y/b", 80, TCP),
        "egress is not isolated"
    );
    assert!(
        allows(&deny, &pods, "x/a", "x/a", 80, TCP),
        "a pod reaches itself"
    );
    assert!(allows(&deny, &pods, "y/a", "z/c", 80, TCP));
    let table = Table::expected(&deny, &model_namespaces(), &pods, 80, TCP);
    assert_eq!(
        table.render(&pods).lines().nth(4),
        Some("y/a\tX\tX\tX\t.\t.\t.\t.\t.\t."),
        "{}",
        table.render(&pods)
    );
}

#[test]
fn oracle_tells_one_peer_with_both_selectors_from_two_peers() {
    let pods = model_pods();
    let and = [policy(
        "x",
        "p",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns: y}}\n    podSelector: {matchLabels: {pod: b}}",
    )];
    let or = [policy(
        "x",
        "p",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns: y}}\n  - podSelector: {matchLabels: {pod: b}}",
    )];
    // y/b matches both; y/a only the namespace; x/b only the pod selector (in x, the policy's).
    assert!(allows(&and, &pods, "y/b", "x/a", 80, TCP));
    assert!(!allows(&and, &pods, "y/a", "x/a", 80, TCP));
    assert!(!allows(&and, &pods, "x/b", "x/a", 80, TCP));
    assert!(!allows(&and, &pods, "z/b", "x/a", 80, TCP));
    assert!(allows(&or, &pods, "y/b", "x/a", 80, TCP));
    assert!(allows(&or, &pods, "y/a", "x/a", 80, TCP));
    assert!(allows(&or, &pods, "x/b", "x/a", 80, TCP));
    assert!(
        !allows(&or, &pods, "z/b", "x/a", 80, TCP),
        "podSelector alone means x only"
    );
    assert!(!allows(&or, &pods, "x/c", "x/a", 80, TCP));
}

#[test]
fn oracle_applies_ip_blocks_with_except_and_the_whole_space() {
    let pods = model_pods();
    let block = [policy(
        "z",
        "p",
        "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - ipBlock: {cidr: 10.216.0.8/29, except: [10.216.0.11/32]}",
    )];
    assert!(allows(&block, &pods, "x/a", "z/a", 80, TCP));
    assert!(!allows(&block, &pods, "x/b", "z/a", 80, TCP), "the except");
    assert!(allows(&block, &pods, "x/c", "z/a", 80, UDP));
    assert!(
        !allows(&block, &pods, "y/a", "z/a", 80, TCP),
        "outside the CIDR"
    );
    assert!(
        allows(&block, &pods, "y/a", "z/b", 80, TCP),
        "z/b is not selected"
    );
    let everywhere = [policy(
        "x",
        "p",
        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress:\n- to:\n  - ipBlock: {cidr: 0.0.0.0/0, except: [10.216.0.32/27]}",
    )];
    assert!(allows(&everywhere, &pods, "x/a", "y/c", 81, UDP));
    assert!(!allows(&everywhere, &pods, "x/a", "z/a", 80, TCP));
}

#[test]
fn oracle_unions_overlapping_blocks_and_an_except_hides_only_its_own_rule() {
    let pods = model_pods();
    let overlap = [
        policy(
            "z",
            "wide",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - ipBlock: {cidr: 10.216.0.0/24}\n  ports:\n  - port: 80",
        ),
        policy(
            "z",
            "narrow",
            "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - ipBlock: {cidr: 10.216.0.16/28, except: [10.216.0.21/32]}\n  ports:\n  - port: 81",
        ),
    ];
    assert!(
        allows(&overlap, &pods, "y/a", "z/a", 80, TCP),
        "the /24's port"
    );
    assert!(
        allows(&overlap, &pods, "y/a", "z/a", 81, TCP),
        "the /28's port"
    );
    assert!(
        allows(&overlap, &pods, "y/b", "z/a", 80, TCP),
        "excepted from the /28 only"
    );
    assert!(!allows(&overlap, &pods, "y/b", "z/a", 81, TCP));
    assert!(!allows(&overlap, &pods, "x/a", "z/a", 81, TCP));
    let empty_rule = [policy("x", "p", "podSelector: {}\ningress:\n- {}")];
    assert!(allows(&empty_rule, &pods, "z/c", "x/b", 81, UDP));
}

#[test]
fn oracle_resolves_named_ports_on_the_destination_with_their_protocol() {
    let pods = model_pods();
    let web = [policy(
        "x",
        "p",
        "podSelector: {}\ningress:\n- ports:\n  - port: web",
    )];
    assert!(allows(&web, &pods, "y/a", "x/a", 80, TCP));
    assert!(!allows(&web, &pods, "y/a", "x/a", 81, TCP));
    assert!(allows(&web, &pods, "y/a", "x/b", 81, TCP), "web is 81 on b");
    assert!(!allows(&web, &pods, "y/a", "x/b", 80, TCP));
    assert!(
        !allows(&web, &pods, "y/a", "x/a", 80, UDP),
        "web is TCP only"
    );
    let egress = [policy(
        "y",
        "p",
        "podSelector: {matchLabels: {pod: a}}\npolicyTypes: [Egress]\negress:\n- ports:\n  - {port: web, protocol: UDP}\n  - {port: serve-81-udp, protocol: UDP}",
    )];
    // On egress the name is the destination's: no pod has a UDP port named web.
    assert!(!allows(&egress, &pods, "y/a", "x/b", 81, TCP));
    assert!(!allows(&egress, &pods, "y/a", "x/b", 80, UDP));
    assert!(allows(&egress, &pods, "y/a", "x/b", 81, UDP));
}

#[test]
fn oracle_end_port_is_inclusive_and_protocol_defaults_to_tcp() {
    let pods = model_pods();
    let range = [policy(
        "x",
        "p",
        "podSelector: {}\ningress:\n- ports:\n  - {port: 80, endPort: 81}",
    )];
    assert!(allows(&range, &pods, "y/a", "x/a", 80, TCP));
    assert!(allows(&range, &pods, "y/a", "x/a", 81, TCP));
    assert!(!allows(&range, &pods, "y/a", "x/a", 81, UDP));
    let udp = [policy(
        "x",
        "p",
        "podSelector: {}\ningress:\n- ports:\n  - protocol: UDP",
    )];
    assert!(allows(&udp, &pods, "y/a", "x/c", 81, UDP));
    assert!(!allows(&udp, &pods, "y/a", "x/c", 81, TCP));
}

#[test]
fn oracle_defaults_policy_types_and_unions_policies() {
    let pods = model_pods();
    // Egress rules and no policyTypes: Ingress (with no rules: deny) and Egress.
    let defaulted = [policy(
        "x",
        "p",
        "podSelector: {matchLabels: {pod: c}}\negress:\n- to:\n  - podSelector: {}",
    )];
    assert!(!allows(&defaulted, &pods, "x/a", "x/c", 80, TCP));
    assert!(allows(&defaulted, &pods, "x/c", "x/a", 80, TCP));
    assert!(!allows(&defaulted, &pods, "x/c", "y/a", 80, TCP));
    // `egress: []` does not make it an egress policy.
    let empty_egress = [policy("x", "p", "podSelector: {}\negress: []")];
    assert!(allows(&empty_egress, &pods, "x/c", "y/a", 80, TCP));
    assert!(!allows(&empty_egress, &pods, "y/a", "x/c", 80, TCP));

    let union = [
        policy("x", "one", "podSelector: {}\ningress:\n- from:\n  - podSelector: {matchLabels: {pod: b}}"),
        policy("x", "two", "podSelector: {matchLabels: {pod: a}}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {ns: z}}"),
    ];
    assert!(allows(&union, &pods, "x/b", "x/a", 80, TCP));
    assert!(allows(&union, &pods, "z/c", "x/a", 80, TCP));
    assert!(
        !allows(&union, &pods, "z/c", "x/c", 80, TCP),
        "two does not select x/c"
    );
    assert!(!allows(&union, &pods, "y/b", "x/a", 80, TCP));
}

#[test]
fn oracle_selectors_follow_labels_and_expressions() {
    let pods = relabel(model_pods(), "x/b", "role", Some("locked"));
    let expressions = [policy(
        "x",
        "p",
        "podSelector: {}\ningress:\n- from:\n  - namespaceSelector:\n      matchExpressions:\n      - {key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}\n    podSelector:\n      matchExpressions:\n      - {key: pod, operator: In, values: [a, b]}",
    )];
    assert!(allows(&expressions, &pods, "y/a", "x/c", 80, TCP));
    assert!(allows(&expressions, &pods, "z/b", "x/c", 80, TCP));
    assert!(!allows(&expressions, &pods, "z/c", "x/c", 80, TCP));
    assert!(
        !allows(&expressions, &pods, "x/a", "x/c", 80, TCP),
        "x is NotIn"
    );
    let locked = [policy(
        "x",
        "p",
        "podSelector: {matchExpressions: [{key: role, operator: Exists}]}\npolicyTypes: [Ingress]",
    )];
    assert!(!allows(&locked, &pods, "y/a", "x/b", 80, TCP));
    assert!(allows(&locked, &pods, "y/a", "x/a", 80, TCP));
    assert!(
        allows(&locked, &model_pods(), "y/a", "x/b", 80, TCP),
        "label removed"
    );
}
