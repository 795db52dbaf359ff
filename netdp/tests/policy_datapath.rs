//! The NetworkPolicy programs with real packets: the programs loaded by `policy::install` and
//! attached by `PolicyDatapath::attach` to the host-side veths of "pods" that are network
//! namespaces, the maps filled by hand through `PinnedPolicyMaps`, and real TCP connections
//! and UDP datagrams between the pods and from the node.
//!
//! Each test builds its own node: a network namespace holding a Linux bridge, whose address
//! is the node's, and the host sides of the pods' veths, enslaved to it. The node lives in a
//! namespace of its own so that nothing here touches the host's interfaces, and so that
//! br_netfilter can be turned off for it alone: with `bridge-nf-call-iptables = 1` (the
//! kernel's default, and this machine's) bridged IPv4 goes through iptables' FORWARD chain,
//! where a rule left by anything else could decide what these tests measure. The sysctl is per
//! network namespace.
//!
//! Needs root (`CAP_BPF`, `CAP_NET_ADMIN`, `CAP_SYS_ADMIN` for `setns`) and iproute2's `ip` and `tc`.
//! Every test has its own names (`bpd<N>...`), addresses (10.215.N.0/24, the node at .1) and
//! bpffs directory (/sys/fs/bpf/bosun-pdp-<test>), so the tests run in parallel with each other
//! and with the other real-kernel tests.

mod common;

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use bosun_ebpf_abi::{
    EndpointValue, PeerKey, PolicyCounters, PolicyEvent, PortKey, ENDPOINT_ISOLATED_EGRESS,
    ENDPOINT_ISOLATED_INGRESS, ENDPOINT_MAP, PEER_KEY_FIXED_BITS, PORT_KEY_ANY_PORT_BITS,
    PORT_KEY_ANY_PROTOCOL_BITS, PORT_KEY_FIXED_BITS, PROTOCOL_TCP, PROTOCOL_UDP, VERDICT_ALLOWED,
    VERDICT_DROPPED,
};
use bosun_netdp::policy::{
    self, install, policy_name, read_counters, read_names, Direction, EventReader,
    PinnedPolicyMaps, PolicyDatapath, PolicyMaps,
};
use bosun_netdp::tc::TcMode;
use common::{bind_udp, chain, in_netns, ip, listen_tcp, quiet_ip, Server};
use nix::{
    net::if_::if_nametoindex,
    sched::{setns, CloneFlags},
};

/// Every pod serves TCP on these ports, answering each line with its name...
const TCP_PORTS: [u16; 6] = [80, 81, 8000, 8001, 8002, 8003];
/// ...and UDP on these, answering each datagram with its name.
const UDP_PORTS: [u16; 2] = [53, 54];
/// How long a client waits for an answer that should come before the test fails.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long a server keeps a silent connection.
const ANSWER_IDLE: Duration = Duration::from_secs(30);
/// How long a client waits before concluding that a packet was dropped. A drop is silent, so
/// only a timeout shows it to the client; between namespaces on one bridge an answer takes
/// well under a millisecond. Tests that can also see the drop itself (counters, events) check
/// that too.
const DENIED_WAIT: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------------
// The lab: a node namespace with a bridge, pod namespaces, servers in them
// ---------------------------------------------------------------------------------------------

/// One test's node and pods. Dropping it removes everything, also when the test fails;
/// creating it first removes what a killed earlier run of the same test left behind.
struct Lab {
    /// The node's network namespace, which holds the bridge and the pods' host-side veths.
    node: String,
    node_address: Ipv4Addr,
    bpf_dir: PathBuf,
    /// How [`Lab::install`] attaches: tcx unless a test says otherwise.
    mode: TcMode,
    pods: Vec<Pod>,
    servers: Vec<Server>,
}

/// A network namespace joined to the node's bridge by a veth pair.
struct Pod {
    /// Also what its servers answer.
    ns: String,
    host_if: String,
    /// The ifindex of `host_if` in the node's namespace: the endpoint.
    ifindex: u32,
    address: Ipv4Addr,
}

impl Lab {
    fn new(test: &str, n: u8, pods: u8) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test loads BPF programs and creates network namespaces: run it as root"
        );
        let mut lab = Self {
            node: format!("bpd{n}-node"),
            node_address: Ipv4Addr::new(10, 215, n, 1),
            bpf_dir: Path::new("/sys/fs/bpf").join(format!("bosun-pdp-{test}")),
            mode: TcMode::Tcx,
            pods: (0..pods)
                .map(|i| Pod {
                    ns: format!("bpd{n}-pod{i}"),
                    host_if: format!("bpd{n}h{i}"),
                    ifindex: 0,
                    address: Ipv4Addr::new(10, 215, n, 10 + i),
                })
                .collect(),
            servers: Vec::new(),
        };
        lab.remove_leftovers();

        let node = lab.node.clone();
        let bridge = format!("bpd{n}br");
        ip(&["netns", "add", &node]);
        in_netns(&node, || {
            let sysctl = "/proc/sys/net/bridge/bridge-nf-call-iptables";
            fs::write(sysctl, "0").unwrap_or_else(|e| panic!("write {sysctl} in {node}: {e}"));
        });
        ip(&["-n", &node, "link", "set", "lo", "up"]);
        ip(&["-n", &node, "link", "add", &bridge, "type", "bridge"]);
        let node_cidr = format!("{}/24", lab.node_address);
        ip(&["-n", &node, "addr", "add", &node_cidr, "dev", &bridge]);
        ip(&["-n", &node, "link", "set", &bridge, "up"]);
        for pod in &mut lab.pods {
            let (ns, host_if) = (&*pod.ns, &*pod.host_if);
            ip(&["netns", "add", ns]);
            ip(&[
                "-n", &node, "link", "add", host_if, "type", "veth", "peer", "name", "eth0",
                "netns", ns,
            ]);
            ip(&["-n", &node, "link", "set", host_if, "master", &bridge]);
            ip(&["-n", &node, "link", "set", host_if, "up"]);
            let cidr = format!("{}/24", pod.address);
            ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            let gateway = lab.node_address.to_string();
            ip(&["-n", ns, "route", "add", "default", "via", &gateway]);
            pod.ifindex = in_netns(&node, || if_nametoindex(host_if))
                .unwrap_or_else(|e| panic!("ifindex of {host_if}: {e}"));
        }
        // One at a time, so that a failure to start one still stops those before it.
        for i in 0..lab.pods.len() {
            for port in TCP_PORTS {
                let ns = &lab.pods[i].ns;
                let server = Server::tcp(listen_tcp(ns, port), ns, ANSWER_IDLE);
                lab.servers.push(server);
            }
            for port in UDP_PORTS {
                let ns = &lab.pods[i].ns;
                let server = Server::udp(bind_udp(ns, port), ns);
                lab.servers.push(server);
            }
        }
        lab
    }

    /// Installs, writes the node's address and an endpoint without isolation (and its
    /// counters) for every pod, then attaches to every pod's interface: the order the ABI asks
    /// for.
    fn install(&self) -> (PolicyDatapath, PinnedPolicyMaps) {
        let mut datapath = install(&self.bpf_dir, self.mode)
            .unwrap_or_else(|e| panic!("install in {}: {}", self.bpf_dir.display(), chain(&e)));
        let mut maps = datapath.maps().expect("open the pinned maps");
        maps.put_node_address(self.node_address.octets())
            .expect("put the node's address");
        for pod in &self.pods {
            maps.reset_counters(pod.ifindex)
                .expect("zero the counter slot");
            put_endpoint(&mut maps, pod.ifindex, None, None);
        }
        for pod in &self.pods {
            self.attach(&mut datapath, pod.ifindex);
        }
        (datapath, maps)
    }

    /// Attaching resolves the ifindex in the calling thread's namespace: the node's.
    fn attach(&self, datapath: &mut PolicyDatapath, ifindex: u32) {
        in_netns(&self.node, || datapath.attach(ifindex))
            .unwrap_or_else(|e| panic!("attach to {ifindex}: {}", chain(&e)));
    }

    fn detach(&self, ifindex: u32) {
        in_netns(&self.node, || policy::detach(&self.bpf_dir, ifindex))
            .unwrap_or_else(|e| panic!("detach from {ifindex}: {}", chain(&e)));
    }

    fn cleanup(&self) -> bool {
        in_netns(&self.node, || policy::cleanup(&self.bpf_dir))
            .unwrap_or_else(|e| panic!("cleanup of {}: {}", self.bpf_dir.display(), chain(&e)))
    }

    fn pod(&self, i: usize) -> &Pod {
        &self.pods[i]
    }

    fn remove_leftovers(&self) {
        self.remove_pins();
        self.remove_network();
    }

    /// Detaches and unpins everything, reporting rather than panicking: this also runs while
    /// a failed test unwinds.
    fn remove_pins(&self) {
        let cleanup = || policy::cleanup(&self.bpf_dir);
        // Detaching waits for the interfaces, which only the node's namespace shows; without
        // that namespace the interfaces are gone, and only pins may be left.
        let cleaned = if Path::new(&format!("/run/netns/{}", self.node)).exists() {
            in_netns(&self.node, cleanup)
        } else {
            cleanup()
        };
        if let Err(e) = cleaned {
            eprintln!("cleanup of {}: {}", self.bpf_dir.display(), chain(&e));
        }
        if let Err(e) = fs::remove_dir(&self.bpf_dir) {
            if e.kind() != io::ErrorKind::NotFound {
                eprintln!("remove {}: {e}", self.bpf_dir.display());
            }
        }
    }

    /// Deleting a namespace deletes its interfaces, and a veth's peer with it.
    fn remove_network(&self) {
        for pod in &self.pods {
            quiet_ip(&["netns", "del", &pod.ns]);
        }
        quiet_ip(&["netns", "del", &self.node]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Programs first, so that nothing runs on interfaces about to vanish.
        self.remove_pins();
        for server in self.servers.drain(..) {
            server.stop();
        }
        self.remove_network();
    }
}

/// Runs `f` on a new thread that has entered network namespace `ns`, for clients that loop
/// while the test goes on.
fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let netns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        setns(netns, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("enter {path}: {e}"));
        f()
    })
}

// ---------------------------------------------------------------------------------------------
// Clients, from a namespace (a pod's or the node's)
// ---------------------------------------------------------------------------------------------

/// Connects from namespace `from`, asks for the server's name and returns it with the
/// client's port.
fn ask_tcp(from: &str, to: SocketAddrV4) -> io::Result<(String, u16)> {
    in_netns(from, || {
        let mut stream = TcpStream::connect_timeout(&to.into(), TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        let port = stream.local_addr()?.port();
        stream.write_all(b"name?\n")?;
        let mut line = String::new();
        BufReader::new(&mut stream).read_line(&mut line)?;
        if line.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok((line.trim_end().to_owned(), port))
    })
}

/// Sends one datagram from namespace `from` and waits `wait` for the answer; returns it with
/// the client's port.
fn ask_udp(from: &str, to: SocketAddrV4, wait: Duration) -> io::Result<(String, u16)> {
    in_netns(from, || {
        let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
        socket.set_read_timeout(Some(wait))?;
        let port = socket.local_addr()?.port();
        socket.send_to(b"name?", to)?;
        let mut buf = [0u8; 64];
        let (len, _) = socket.recv_from(&mut buf)?;
        Ok((String::from_utf8_lossy(&buf[..len]).into_owned(), port))
    })
}

/// Connects from `local` in namespace `from`, giving up after `timeout`. The port may be
/// one that a reset connection used a moment ago.
fn connect_from(
    from: &str,
    local: SocketAddrV4,
    to: SocketAddrV4,
    timeout: Duration,
) -> io::Result<TcpStream> {
    use nix::sys::{
        socket::{
            bind, connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType,
            SockaddrIn,
        },
        time::{TimeVal, TimeValLike},
    };
    in_netns(from, || {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        // connect(2) honours the send timeout, failing with EINPROGRESS when it runs out.
        let micros = i64::try_from(timeout.as_micros()).expect("a short timeout");
        setsockopt(&fd, sockopt::SendTimeout, &TimeVal::microseconds(micros))?;
        bind(fd.as_raw_fd(), &SockaddrIn::from(local))?;
        match connect(fd.as_raw_fd(), &SockaddrIn::from(to)) {
            Ok(()) => Ok(TcpStream::from(fd)),
            Err(nix::errno::Errno::EINPROGRESS) => Err(io::ErrorKind::TimedOut.into()),
            Err(errno) => Err(errno.into()),
        }
    })
}

/// Closes with a reset, which leaves no TIME_WAIT behind: the port is free again at once.
fn reset(stream: TcpStream) {
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &linger)
        .expect("set SO_LINGER");
}

/// The errors a timed-out wait gives.
fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// Asserts that TCP from `from` to `to` reaches the pod named `expected`.
fn assert_tcp(from: &str, to: SocketAddrV4, expected: &str) {
    match ask_tcp(from, to) {
        Ok((name, _)) => assert_eq!(name, expected, "TCP {from} -> {to}"),
        Err(e) => panic!("TCP {from} -> {to} should pass: {e}"),
    }
}

/// Asserts that a TCP connection from `from` to `to` is never answered.
fn assert_tcp_dropped(from: &str, to: SocketAddrV4) {
    let result = in_netns(from, || TcpStream::connect_timeout(&to.into(), DENIED_WAIT));
    match result {
        Ok(_) => panic!("TCP {from} -> {to} should be dropped, but connected"),
        Err(e) => assert!(is_timeout(&e), "TCP {from} -> {to}: {e}, not a timeout"),
    }
}

fn assert_udp(from: &str, to: SocketAddrV4, expected: &str) {
    match ask_udp(from, to, TIMEOUT) {
        Ok((name, _)) => assert_eq!(name, expected, "UDP {from} -> {to}"),
        Err(e) => panic!("UDP {from} -> {to} should pass: {e}"),
    }
}

fn assert_udp_dropped(from: &str, to: SocketAddrV4) {
    match ask_udp(from, to, DENIED_WAIT) {
        Ok((name, _)) => panic!("UDP {from} -> {to} should be dropped, but {name} answered"),
        Err(e) => assert!(is_timeout(&e), "UDP {from} -> {to}: {e}, not a timeout"),
    }
}

fn at(pod: &Pod, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(pod.address, port)
}

// ---------------------------------------------------------------------------------------------
// Map entries, written the way the ABI describes them
// ---------------------------------------------------------------------------------------------

/// An endpoint isolated for ingress by policy `ingress` if given, likewise for egress.
fn put_endpoint(
    maps: &mut PinnedPolicyMaps,
    ifindex: u32,
    ingress: Option<u32>,
    egress: Option<u32>,
) {
    let value = EndpointValue {
        flags: ingress.map_or(0, |_| ENDPOINT_ISOLATED_INGRESS)
            | egress.map_or(0, |_| ENDPOINT_ISOLATED_EGRESS),
        ingress_policy: ingress.unwrap_or(0),
        egress_policy: egress.unwrap_or(0),
        // Each endpoint counts in the slot of its ifindex: the lab's interfaces live in a new
        // namespace, whose ifindexes are small.
        counters: ifindex,
    };
    maps.put_endpoint(ifindex, &value)
        .unwrap_or_else(|e| panic!("put endpoint {ifindex}: {}", chain(&e)));
}

fn peer_key(endpoint: u32, direction: Direction, address: Ipv4Addr) -> PeerKey {
    PeerKey {
        endpoint: endpoint.to_be_bytes(),
        direction: direction.number(),
        _pad: [0; 3],
        address: address.octets(),
    }
}

/// Peers in `address/prefix_len` get port class `class` for the endpoint's direction.
fn put_peer(
    maps: &mut PinnedPolicyMaps,
    endpoint: u32,
    direction: Direction,
    address: Ipv4Addr,
    prefix_len: u8,
    class: u32,
) {
    let key = peer_key(endpoint, direction, address);
    maps.put_peer(PEER_KEY_FIXED_BITS + u32::from(prefix_len), &key, class)
        .unwrap_or_else(|e| panic!("put peer {address}/{prefix_len}: {}", chain(&e)));
}

/// Which destination ports a port entry covers.
#[derive(Clone, Copy)]
enum Ports {
    /// Every protocol and port.
    Everything,
    /// Every port of one protocol.
    AllOf(u8),
    /// One protocol, the ports sharing the first `bits` bits of `first`.
    Block { protocol: u8, first: u16, bits: u8 },
}

fn port_entry(class: u32, ports: Ports) -> (u32, PortKey) {
    let (prefix_len, protocol, port) = match ports {
        Ports::Everything => (PORT_KEY_ANY_PROTOCOL_BITS, 0, 0),
        Ports::AllOf(protocol) => (PORT_KEY_ANY_PORT_BITS, protocol, 0),
        Ports::Block {
            protocol,
            first,
            bits,
        } => (PORT_KEY_FIXED_BITS + u32::from(bits), protocol, first),
    };
    let key = PortKey {
        class: class.to_be_bytes(),
        protocol,
        _pad: 0,
        port: port.to_be_bytes(),
    };
    (prefix_len, key)
}

fn put_port(maps: &mut PinnedPolicyMaps, class: u32, ports: Ports, policy: u32) {
    let (prefix_len, key) = port_entry(class, ports);
    maps.put_port(prefix_len, &key, policy)
        .unwrap_or_else(|e| panic!("put port {prefix_len} {key:?}: {}", chain(&e)));
}

/// One port of one protocol.
fn exactly(protocol: u8, port: u16) -> Ports {
    Ports::Block {
        protocol,
        first: port,
        bits: 16,
    }
}

fn counters(lab: &Lab, ifindex: u32, direction: Direction) -> PolicyCounters {
    read_counters(&lab.bpf_dir)
        .expect("read the counters")
        .get(&(ifindex, direction))
        .copied()
        .unwrap_or_else(|| panic!("no counters for {ifindex} {direction}"))
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn isolation_without_peers_drops_other_pods_but_not_the_node() {
    let lab = Lab::new("isolate", 1, 3);
    let (_datapath, mut maps) = lab.install();
    let (a, b, c) = (lab.pod(0), lab.pod(1), lab.pod(2));

    // No endpoint isolated: everything passes, both ways.
    assert_tcp(&a.ns, at(b, 80), &b.ns);
    assert_udp(&a.ns, at(b, 53), &b.ns);
    assert_tcp(&b.ns, at(a, 81), &a.ns);
    assert_udp(&c.ns, at(a, 54), &a.ns);

    // An interface bosun does not know: its packets are dropped, even the node's.
    maps.delete_endpoint(c.ifindex).expect("delete an endpoint");
    assert_tcp_dropped(&a.ns, at(c, 80));
    assert_tcp_dropped(&lab.node, at(c, 80));
    assert_udp_dropped(&c.ns, at(a, 53));
    put_endpoint(&mut maps, c.ifindex, None, None);
    assert_tcp(&a.ns, at(c, 80), &c.ns);

    // A connection from a fixed port, reset so that the port is free again at once; b
    // remembers the flow as allowed.
    let fixed = SocketAddrV4::new(a.address, 45123);
    let mut stream = connect_from(&a.ns, fixed, at(b, 80), TIMEOUT).expect("connect a -> b");
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("set a timeout");
    stream.write_all(b"name?\n").expect("ask b");
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .expect("b's answer");
    assert_eq!(line.trim_end(), b.ns);
    reset(stream);

    // b isolated for ingress, nothing allowed: other pods are dropped, TCP and UDP...
    put_endpoint(&mut maps, b.ifindex, Some(7), None);
    // ...even a new connection from the very ports of the remembered flow: a SYN is judged
    // afresh.
    let error = connect_from(&a.ns, fixed, at(b, 80), DENIED_WAIT)
        .expect_err("a new connection over a remembered flow's ports");
    assert!(is_timeout(&error), "{error}");
    let before = counters(&lab, b.ifindex, Direction::Ingress);
    assert_tcp_dropped(&a.ns, at(b, 80));
    assert_udp_dropped(&a.ns, at(b, 53));
    assert_tcp_dropped(&c.ns, at(b, 81));
    let after = counters(&lab, b.ifindex, Direction::Ingress);
    assert!(
        after.dropped >= before.dropped + 3,
        "3 dropped flows counted as {before:?} -> {after:?}"
    );
    // ...but the node passes (kubelet's probes)...
    assert_tcp(&lab.node, at(b, 80), &b.ns);
    assert_udp(&lab.node, at(b, 53), &b.ns);
    // ...and b's own connections get their replies: its egress is open, and the replies
    // match the flow it started.
    assert_tcp(&b.ns, at(a, 80), &a.ns);
    assert_udp(&b.ns, at(c, 53), &c.ns);
    // Ingress only: b still reaches what it reached, a still gets what it got from c.
    assert_tcp(&c.ns, at(a, 80), &a.ns);
}

#[test]
fn peers_and_ports_allow_exactly_what_they_name() {
    let lab = Lab::new("peers", 2, 4);
    let (_datapath, mut maps) = lab.install();
    let (server, a, b, c) = (lab.pod(0), lab.pod(1), lab.pod(2), lab.pod(3));
    let ingress = Direction::Ingress;

    // Class 1 allows TCP 80. a's own address and the pods' /24 map to it; b, inside the /24,
    // is shadowed by a longer prefix that maps to class 2, which allows nothing: an ipBlock
    // `except`. Port entries before the peers that name them, peers before the isolation.
    put_port(&mut maps, 1, exactly(PROTOCOL_TCP, 80), 21);
    put_peer(&mut maps, server.ifindex, ingress, a.address, 32, 1);
    let pods_cidr = Ipv4Addr::new(10, 215, 2, 0);
    put_peer(&mut maps, server.ifindex, ingress, pods_cidr, 24, 1);
    put_peer(&mut maps, server.ifindex, ingress, b.address, 32, 2);
    put_endpoint(&mut maps, server.ifindex, Some(20), None);

    assert_tcp(&a.ns, at(server, 80), &server.ns);
    assert_tcp_dropped(&a.ns, at(server, 81));
    assert_udp_dropped(&a.ns, at(server, 53));
    assert_tcp_dropped(&b.ns, at(server, 80));
    assert_tcp(&c.ns, at(server, 80), &server.ns);
    assert_tcp_dropped(&c.ns, at(server, 8000));
    assert_tcp(&lab.node, at(server, 81), &server.ns);

    // The trie lists what was put, as the reconciler reads it back.
    let peers = maps.peers().expect("list peers");
    let listed: BTreeMap<_, _> = peers
        .iter()
        .map(|(len, key, class)| ((*len, *key), *class))
        .collect();
    let expected: BTreeMap<_, _> = [
        ((96, peer_key(server.ifindex, ingress, a.address)), 1),
        ((88, peer_key(server.ifindex, ingress, pods_cidr)), 1),
        ((96, peer_key(server.ifindex, ingress, b.address)), 2),
    ]
    .into_iter()
    .collect();
    assert_eq!(listed, expected);

    // Now the client's egress is isolated too, allowing only the request to the server, and
    // the client's ingress and the server's egress are isolated with nothing allowed: the
    // replies pass only because the flow was allowed the other way.
    put_port(&mut maps, 3, exactly(PROTOCOL_TCP, 80), 25);
    put_peer(
        &mut maps,
        a.ifindex,
        Direction::Egress,
        server.address,
        32,
        3,
    );
    put_endpoint(&mut maps, a.ifindex, Some(23), Some(22));
    put_endpoint(&mut maps, server.ifindex, Some(20), Some(24));

    assert_tcp(&a.ns, at(server, 80), &server.ns);
    assert_tcp_dropped(&a.ns, at(server, 81));
    assert_tcp_dropped(&a.ns, at(c, 80));
    assert_tcp_dropped(&server.ns, at(a, 80));
    assert_tcp_dropped(&server.ns, at(c, 80));
    // A TCP connection carries many packets each way after the handshake.
    let mut stream = in_netns(&a.ns, || {
        TcpStream::connect_timeout(&at(server, 80).into(), TIMEOUT)
    })
    .expect("connect a to the server");
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("set a timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
    for n in 0..20 {
        stream.write_all(b"name?\n").expect("ask");
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("answer {n}: {e}"));
        assert_eq!(line.trim_end(), server.ns, "answer {n}");
    }

    // Removing the server's peer entries (in reverse) leaves nothing allowed.
    for (address, len) in [(b.address, 32u8), (pods_cidr, 24), (a.address, 32)] {
        let key = peer_key(server.ifindex, ingress, address);
        maps.delete_peer(PEER_KEY_FIXED_BITS + u32::from(len), &key)
            .expect("delete a peer");
    }
    assert_tcp_dropped(&c.ns, at(server, 80));
    // Deleting what is not there succeeds, as the reconciler's retries need.
    let key = peer_key(server.ifindex, ingress, a.address);
    maps.delete_peer(96, &key).expect("delete a missing peer");
}

#[test]
fn port_ranges_and_protocol_wildcards() {
    let lab = Lab::new("ports", 3, 4);
    let (_datapath, mut maps) = lab.install();
    let (server, a, b, c) = (lab.pod(0), lab.pod(1), lab.pod(2), lab.pod(3));
    let ingress = Direction::Ingress;

    // TCP 8000-8002 as the trie holds it: 8000-8001 (15 fixed bits) and 8002 (16).
    let range = [
        Ports::Block {
            protocol: PROTOCOL_TCP,
            first: 8000,
            bits: 15,
        },
        exactly(PROTOCOL_TCP, 8002),
    ];
    for ports in range {
        put_port(&mut maps, 1, ports, 31);
    }
    put_port(&mut maps, 2, Ports::Everything, 32);
    put_port(&mut maps, 3, Ports::AllOf(PROTOCOL_UDP), 33);
    put_peer(&mut maps, server.ifindex, ingress, a.address, 32, 1);
    put_peer(&mut maps, server.ifindex, ingress, b.address, 32, 2);
    put_peer(&mut maps, server.ifindex, ingress, c.address, 32, 3);
    put_endpoint(&mut maps, server.ifindex, Some(30), None);

    for port in [8000, 8001, 8002] {
        assert_tcp(&a.ns, at(server, port), &server.ns);
    }
    assert_tcp_dropped(&a.ns, at(server, 8003));
    assert_tcp_dropped(&a.ns, at(server, 80));
    assert_udp_dropped(&a.ns, at(server, 53));

    // Any protocol, any port.
    for port in [80, 81, 8003] {
        assert_tcp(&b.ns, at(server, port), &server.ns);
    }
    assert_udp(&b.ns, at(server, 53), &server.ns);

    // Any UDP port, and nothing else.
    assert_udp(&c.ns, at(server, 53), &server.ns);
    assert_udp(&c.ns, at(server, 54), &server.ns);
    assert_tcp_dropped(&c.ns, at(server, 80));

    let listed = maps.ports().expect("list ports");
    let mut expected: Vec<_> = [
        (range[0], 1, 31),
        (range[1], 1, 31),
        (Ports::Everything, 2, 32),
        (Ports::AllOf(PROTOCOL_UDP), 3, 33),
    ]
    .into_iter()
    .map(|(ports, class, policy)| {
        let (len, key) = port_entry(class, ports);
        (len, key, policy)
    })
    .collect();
    expected.sort_by_key(|(len, key, _)| (*len, *key));
    assert_eq!(listed, expected);

    // The range loses its last block.
    let (len, key) = port_entry(1, range[1]);
    maps.delete_port(len, &key).expect("delete a port block");
    assert_tcp_dropped(&a.ns, at(server, 8002));
    assert_tcp(&a.ns, at(server, 8001), &server.ns);
    maps.delete_port(len, &key)
        .expect("delete a missing port block");
}

#[test]
fn counters_and_events_report_verdicts() {
    let lab = Lab::new("events", 4, 2);
    let (_datapath, mut maps) = lab.install();
    let (server, a) = (lab.pod(0), lab.pod(1));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let mut events = {
        let _context = runtime.enter();
        EventReader::open(&lab.bpf_dir).expect("open the event ring buffer")
    };

    maps.put_policy_name(40, &policy_name("default/deny-all"))
        .expect("name policy 40");
    maps.put_policy_name(41, &policy_name("default/allow-a"))
        .expect("name policy 41");
    assert_eq!(
        read_names(&lab.bpf_dir).expect("read the names"),
        BTreeMap::from([
            (40, "default/deny-all".to_owned()),
            (41, "default/allow-a".to_owned())
        ])
    );
    put_port(&mut maps, 1, exactly(PROTOCOL_TCP, 80), 41);
    put_peer(
        &mut maps,
        server.ifindex,
        Direction::Ingress,
        a.address,
        32,
        1,
    );
    put_endpoint(&mut maps, server.ifindex, Some(40), None);

    let ingress_before = counters(&lab, server.ifindex, Direction::Ingress);
    let egress_before = counters(&lab, server.ifindex, Direction::Egress);
    let (name, client_port) = ask_tcp(&a.ns, at(server, 80)).expect("TCP a -> server:80");
    assert_eq!(name, server.ns);
    let allowed = next_event(&runtime, &mut events, |event| {
        event.verdict == VERDICT_ALLOWED && event.source_port == client_port.to_be_bytes()
    });
    assert_eq!(
        allowed,
        PolicyEvent {
            time_ns: allowed.time_ns,
            endpoint: server.ifindex,
            policy: 41,
            source: a.address.octets(),
            destination: server.address.octets(),
            source_port: client_port.to_be_bytes(),
            destination_port: 80u16.to_be_bytes(),
            protocol: PROTOCOL_TCP,
            direction: Direction::Ingress.number(),
            verdict: VERDICT_ALLOWED,
            _pad: 0,
        }
    );
    let after_tcp = counters(&lab, server.ifindex, Direction::Ingress);
    // SYN, ACK, the question, FIN at least; none dropped.
    assert!(
        after_tcp.allowed >= ingress_before.allowed + 3,
        "{ingress_before:?} -> {after_tcp:?}"
    );
    assert_eq!(after_tcp.dropped, ingress_before.dropped);
    let egress_after = counters(&lab, server.ifindex, Direction::Egress);
    assert!(
        egress_after.allowed >= egress_before.allowed + 2,
        "the replies: {egress_before:?} -> {egress_after:?}"
    );
    assert_eq!(egress_after.dropped, egress_before.dropped);

    // One datagram, one drop, one event naming the policy that isolates the pod.
    let error = ask_udp(&a.ns, at(server, 53), DENIED_WAIT).expect_err("UDP a -> server:53");
    assert!(is_timeout(&error), "{error}");
    let dropped = next_event(&runtime, &mut events, |event| {
        event.verdict == VERDICT_DROPPED && event.protocol == PROTOCOL_UDP
    });
    assert_eq!(
        (
            dropped.endpoint,
            dropped.policy,
            dropped.source,
            dropped.destination,
            dropped.destination_port,
            dropped.direction,
        ),
        (
            server.ifindex,
            40,
            a.address.octets(),
            server.address.octets(),
            53u16.to_be_bytes(),
            Direction::Ingress.number(),
        )
    );
    assert_ne!(dropped.source_port, [0, 0]);
    assert!(dropped.time_ns > allowed.time_ns, "event times go forward");
    // The TCP connection's last packets (its close) may still be counted as allowed.
    let after_udp = counters(&lab, server.ifindex, Direction::Ingress);
    assert_eq!(after_udp.dropped, after_tcp.dropped + 1);

    // Zeroing an endpoint's counter slot starts its counts again; other slots keep theirs.
    let a_before = counters(&lab, a.ifindex, Direction::Egress);
    assert!(
        a_before.allowed > 0,
        "a's requests were counted: {a_before:?}"
    );
    maps.reset_counters(server.ifindex)
        .expect("zero the server's slot");
    assert_eq!(
        counters(&lab, server.ifindex, Direction::Ingress),
        PolicyCounters::default()
    );
    assert_eq!(counters(&lab, a.ifindex, Direction::Egress), a_before);
    // An endpoint without an entry has no counters to read.
    maps.delete_endpoint(server.ifindex)
        .expect("delete the server's entry");
    let all = read_counters(&lab.bpf_dir).expect("read the counters");
    assert!(
        !all.contains_key(&(server.ifindex, Direction::Ingress)),
        "{all:?}"
    );
}

/// The first event matching `wanted`, skipping others (a SYN's retransmission, say).
fn next_event(
    runtime: &tokio::runtime::Runtime,
    events: &mut EventReader,
    wanted: impl Fn(&PolicyEvent) -> bool,
) -> PolicyEvent {
    runtime.block_on(async {
        tokio::time::timeout(TIMEOUT, async {
            loop {
                let event = events
                    .next()
                    .await
                    .unwrap_or_else(|e| panic!("read an event: {}", chain(&e)));
                if wanted(&event) {
                    return event;
                }
            }
        })
        .await
        .expect("the event did not come")
    })
}

#[test]
fn enforcement_outlives_the_daemon_and_reinstalls_leave_no_gap() {
    let lab = Lab::new("reinstall", 5, 3);
    let (server, a, b) = (lab.pod(0), lab.pod(1), lab.pod(2));
    {
        let (_datapath, mut maps) = lab.install();
        put_port(&mut maps, 1, exactly(PROTOCOL_TCP, 80), 51);
        put_peer(
            &mut maps,
            server.ifindex,
            Direction::Ingress,
            a.address,
            32,
            1,
        );
        put_endpoint(&mut maps, server.ifindex, Some(50), None);
        // Every handle of this process is dropped here: the programs, the maps.
    }
    assert_tcp(&a.ns, at(server, 80), &server.ns);
    assert_tcp_dropped(&b.ns, at(server, 80));
    assert_udp_dropped(&b.ns, at(server, 53));

    let links = lab.bpf_dir.join("policy/links");
    let mut expected_links: Vec<String> = lab
        .pods
        .iter()
        .flat_map(|pod| {
            [
                format!("{}_in", pod.ifindex),
                format!("{}_out", pod.ifindex),
            ]
        })
        .collect();
    expected_links.sort();
    assert_eq!(listing(&links), expected_links);
    let mut expected_maps = [
        "BOSUN_CT_V1",
        "BOSUN_EP_V1",
        "BOSUN_NODE_V1",
        "BOSUN_PCNT_V1",
        "BOSUN_PEER_V1",
        "BOSUN_PEVT_V1",
        "BOSUN_PNAME_V1",
        "BOSUN_PORT_V1",
        "links",
    ]
    .map(str::to_owned)
    .to_vec();
    expected_maps.sort();
    assert_eq!(listing(&lab.bpf_dir.join("policy")), expected_maps);

    // What a daemon that crashed between pinning a new link and renaming it leaves: a stale
    // pin under the temporary name. Any object will do; a map is the easiest to pin.
    aya::maps::MapData::from_pin(lab.bpf_dir.join("policy").join(ENDPOINT_MAP))
        .expect("open a pinned map")
        .pin(links.join(format!("{}_in_new", server.ifindex)))
        .expect("pin a stale object");

    // a connects over and over, b sends datagrams over and over, while the daemon installs
    // and attaches five more times.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let allowed = spawn_in_netns(&a.ns, {
        let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
        let (to, expected) = (at(server, 80), server.ns.clone());
        move || {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match ask_here(to) {
                    Ok(name) if name == expected => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(name) => failures.push(format!("answer {name:?}")),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            failures
        }
    });
    let denied = spawn_in_netns(&b.ns, {
        let stop = Arc::clone(&stop);
        let to = at(server, 53);
        move || {
            let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
                .expect("bind UDP in b");
            // Paces the loop; any answer at all is a failure.
            socket
                .set_read_timeout(Some(Duration::from_millis(1)))
                .expect("set a timeout");
            let (mut sent, mut answers) = (0usize, 0usize);
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                socket.send_to(b"name?", to).expect("send from b");
                sent += 1;
                if socket.recv_from(&mut buf).is_ok() {
                    answers += 1;
                }
            }
            // An answer to the last datagrams would come within this.
            socket
                .set_read_timeout(Some(DENIED_WAIT))
                .expect("set a timeout");
            while socket.recv_from(&mut buf).is_ok() {
                answers += 1;
            }
            (sent, answers)
        }
    });
    let wait_for_answers = |at_least: usize| {
        let deadline = Instant::now() + TIMEOUT;
        while answered.load(Ordering::Relaxed) < at_least {
            assert!(Instant::now() < deadline, "the client loop is stuck");
            thread::yield_now();
        }
    };
    wait_for_answers(1);
    let before = answered.load(Ordering::Relaxed);
    for _ in 0..5 {
        let mut datapath = install(&lab.bpf_dir, lab.mode).expect("install again");
        for pod in &lab.pods {
            lab.attach(&mut datapath, pod.ifindex);
        }
    }
    let during = answered.load(Ordering::Relaxed) - before;
    wait_for_answers(before + during + 1);
    stop.store(true, Ordering::Relaxed);
    let failures = allowed.join().expect("the allowed client");
    let (sent, answers) = denied.join().expect("the denied client");
    assert!(
        failures.is_empty(),
        "{} failures: {failures:?}",
        failures.len()
    );
    assert_eq!(
        answers, 0,
        "{answers} of {sent} denied datagrams were answered"
    );
    assert!(during >= 5, "only {during} connections during 5 installs");
    assert!(sent >= 5, "only {sent} datagrams during 5 installs");
    assert_eq!(listing(&links), expected_links, "a stale or extra pin");

    // Each interface runs exactly one program per direction: the old ones were detached.
    let programs = in_netns(&lab.node, || {
        [TcAttachType::Egress, TcAttachType::Ingress].map(|direction| {
            SchedClassifier::query_tcx(&server.host_if, direction)
                .expect("list tcx programs")
                .1
                .iter()
                .map(|program| program.name_as_str().unwrap_or_default().to_owned())
                .collect::<Vec<_>>()
        })
    });
    assert_eq!(programs, [["bosun_pol_in"], ["bosun_pol_out"]]);
}

/// TCP from the calling thread's namespace.
fn ask_here(to: SocketAddrV4) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&to.into(), TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.write_all(b"name?\n")?;
    let mut line = String::new();
    BufReader::new(&mut stream).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|entry| {
            entry
                .expect("read a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn detach_stops_enforcement_and_cleanup_removes_every_pin() {
    let lab = Lab::new("detach", 6, 2);
    let (mut datapath, mut maps) = lab.install();
    let (server, b) = (lab.pod(0), lab.pod(1));
    put_endpoint(&mut maps, server.ifindex, Some(60), None);
    assert_udp_dropped(&b.ns, at(server, 53));
    assert_eq!(
        datapath.attached().expect("list attachments"),
        [server.ifindex, b.ifindex]
    );

    // Returns once the programs are off the interface: the very next packet passes.
    lab.detach(server.ifindex);
    assert_udp(&b.ns, at(server, 53), &server.ns);
    assert_tcp(&b.ns, at(server, 80), &server.ns);
    assert_eq!(datapath.attached().expect("list attachments"), [b.ifindex]);
    lab.detach(server.ifindex);

    lab.attach(&mut datapath, server.ifindex);
    assert_udp_dropped(&b.ns, at(server, 53));

    assert!(lab.cleanup(), "cleanup found nothing");
    assert!(
        !lab.bpf_dir.join("policy").exists(),
        "{}/policy is still there",
        lab.bpf_dir.display()
    );
    assert_udp(&b.ns, at(server, 53), &server.ns);
    assert_tcp(&b.ns, at(server, 81), &server.ns);
    let programs = in_netns(&lab.node, || {
        lab.pods
            .iter()
            .flat_map(|pod| [(pod, TcAttachType::Egress), (pod, TcAttachType::Ingress)])
            .map(|(pod, direction)| {
                SchedClassifier::query_tcx(&pod.host_if, direction)
                    .expect("list tcx programs")
                    .1
                    .len()
            })
            .sum::<usize>()
    });
    assert_eq!(programs, 0, "programs still attached after cleanup");
    // The maps a daemon still holds are harmless: writing them isolates nothing.
    put_endpoint(&mut maps, b.ifindex, Some(61), None);
    assert_udp(&server.ns, at(b, 53), &b.ns);
    assert!(!lab.cleanup(), "nothing was left");
    assert!(datapath.attached().expect("list attachments").is_empty());
}

/// A bpf filter as `tc filter show` lists it.
#[derive(Debug, PartialEq, Eq)]
struct Filter {
    /// `pref <priority> handle <handle> <program name>`.
    place: String,
    program_id: u32,
}

/// The bpf filters of `lab`'s node on `dev`, `direction` `ingress` or `egress`, as iproute2's
/// `tc` sees them: what an operator would look at.
fn tc_filters(lab: &Lab, dev: &str, direction: &str) -> Vec<Filter> {
    let output = std::process::Command::new("tc")
        .args(["-n", &lab.node, "filter", "show", "dev", dev, direction])
        .output()
        .expect("run tc");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tc filter show dev {dev} {direction}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // `filter protocol all pref 1 bpf chain 0 handle 0x1 bosun_pol_in direct-action not_in_hw
    // id 42 tag … jited`; the line of the priority alone, without a handle, is skipped.
    stdout
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let after = |key: &str| {
                let at = words.iter().position(|word| *word == key)?;
                words.get(at + 1).copied()
            };
            let handle = after("handle")?;
            let name = after(handle)?;
            Some(Filter {
                place: format!("pref {} handle {handle} {name}", after("pref")?),
                program_id: after("id")?.parse().ok()?,
            })
        })
        .collect()
}

/// The names of the filters on `pod`'s host side, egress (the pod's ingress) then ingress.
fn filter_names(lab: &Lab, pod: &Pod) -> [Vec<String>; 2] {
    ["egress", "ingress"].map(|direction| {
        tc_filters(lab, &pod.host_if, direction)
            .into_iter()
            .map(|filter| filter.place)
            .collect()
    })
}

/// The tcx programs on `pod`'s host side, egress then ingress; none on a kernel without tcx
/// (before 6.6, where the query is refused).
fn tcx_programs(lab: &Lab, pod: &Pod) -> [Vec<String>; 2] {
    in_netns(&lab.node, || {
        [TcAttachType::Egress, TcAttachType::Ingress].map(|direction| {
            match SchedClassifier::query_tcx(&pod.host_if, direction) {
                Ok((_, programs)) => programs
                    .iter()
                    .map(|program| program.name_as_str().unwrap_or_default().to_owned())
                    .collect(),
                Err(aya::programs::ProgramError::SyscallError(error))
                    if error.io_error.raw_os_error() == Some(nix::libc::EINVAL) =>
                {
                    Vec::new()
                }
                Err(error) => panic!("list tcx programs: {error}"),
            }
        })
    })
}

/// Polls `done` until it holds: the kernel releases an unpinned link's program in a work item
/// of its own, a moment after the unlink.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {TIMEOUT:?}");
        thread::sleep(Duration::from_millis(5));
    }
}

const ONE_FILTER_EACH: [[&str; 1]; 2] = [
    ["pref 1 handle 0x1 bosun_pol_in"],
    ["pref 1 handle 0x1 bosun_pol_out"],
];
const NO_FILTERS: [[&str; 0]; 2] = [[], []];

#[test]
fn clsact_filters_enforce_survive_restarts_and_cleanup_removes_them() {
    let mut lab = Lab::new("clsact", 8, 2);
    lab.mode = TcMode::Clsact;
    let (server, b) = (lab.pod(0), lab.pod(1));
    let program_ids = |pod: &Pod| {
        ["egress", "ingress"].map(|direction| {
            tc_filters(&lab, &pod.host_if, direction)
                .iter()
                .map(|filter| filter.program_id)
                .collect::<Vec<_>>()
        })
    };
    // server admits b on TCP 80 only.
    {
        let (datapath, mut maps) = lab.install();
        assert_eq!(datapath.mode(), TcMode::Clsact);
        put_port(&mut maps, 1, exactly(PROTOCOL_TCP, 80), 81);
        put_peer(
            &mut maps,
            server.ifindex,
            Direction::Ingress,
            b.address,
            32,
            1,
        );
        put_endpoint(&mut maps, server.ifindex, Some(80), None);
        // Every handle of this process is dropped here: the programs, the maps.
    }
    for pod in &lab.pods {
        assert_eq!(filter_names(&lab, pod), ONE_FILTER_EACH, "{}", pod.host_if);
        assert_eq!(tcx_programs(&lab, pod), NO_FILTERS, "{}", pod.host_if);
    }
    assert_tcp(&b.ns, at(server, 80), &server.ns);
    assert_tcp_dropped(&b.ns, at(server, 81));
    assert_udp_dropped(&b.ns, at(server, 53));
    assert_tcp(&server.ns, at(b, 81), &b.ns);

    // The programs are pinned where tcx links would be, so that they are found again.
    let links = lab.bpf_dir.join("policy/links");
    let mut expected_pins: Vec<String> = lab
        .pods
        .iter()
        .flat_map(|pod| {
            [
                format!("{}_in", pod.ifindex),
                format!("{}_out", pod.ifindex),
            ]
        })
        .collect();
    expected_pins.sort();
    assert_eq!(listing(&links), expected_pins);
    assert_eq!(
        policy::attached(&lab.bpf_dir).expect("list attachments"),
        [server.ifindex, b.ifindex]
    );

    // Two restarts: each loads the programs anew and attaches them over the last ones.
    let mut before = program_ids(server);
    for restart in 1..=2 {
        let mut datapath = install(&lab.bpf_dir, lab.mode).expect("install again");
        for pod in &lab.pods {
            lab.attach(&mut datapath, pod.ifindex);
        }
        drop(datapath);
        for pod in &lab.pods {
            assert_eq!(
                filter_names(&lab, pod),
                ONE_FILTER_EACH,
                "restart {restart}: {}",
                pod.host_if
            );
        }
        let after = program_ids(server);
        assert_ne!(
            after, before,
            "restart {restart} left the old programs running"
        );
        before = after;
        assert_tcp(&b.ns, at(server, 80), &server.ns);
        assert_tcp_dropped(&b.ns, at(server, 81));
        assert_udp_dropped(&b.ns, at(server, 53));
        assert_eq!(listing(&links), expected_pins, "restart {restart}");
    }

    // Detaching one interface removes its filters, and only its.
    lab.detach(server.ifindex);
    assert_eq!(filter_names(&lab, server), NO_FILTERS);
    assert_eq!(filter_names(&lab, b), ONE_FILTER_EACH);
    assert_udp(&b.ns, at(server, 53), &server.ns);
    assert_tcp(&b.ns, at(server, 81), &server.ns);
    assert_eq!(
        policy::attached(&lab.bpf_dir).expect("list attachments"),
        [b.ifindex]
    );

    // Cleanup finds the rest through the pins and removes the filters with them.
    assert!(lab.cleanup(), "cleanup found nothing");
    for pod in &lab.pods {
        assert_eq!(filter_names(&lab, pod), NO_FILTERS, "{}", pod.host_if);
    }
    assert!(
        !lab.bpf_dir.join("policy").exists(),
        "{}/policy is still there",
        lab.bpf_dir.display()
    );
    assert_tcp(&server.ns, at(b, 80), &b.ns);
}

#[test]
fn each_mode_takes_off_what_the_other_attached() {
    let mut lab = Lab::new("modes", 9, 2);
    lab.mode = TcMode::Clsact;
    let (server, b) = (lab.pod(0), lab.pod(1));
    let (mut clsact, mut maps) = lab.install();
    put_endpoint(&mut maps, server.ifindex, Some(90), None);
    assert_udp_dropped(&b.ns, at(server, 53));

    // The kernel or BOSUN_TC_ATTACH changed between runs: a daemon attaching through tcx
    // sees the filters' pins and removes the filters.
    let mut tcx = install(&lab.bpf_dir, TcMode::Tcx).expect("install for tcx");
    assert_eq!(
        tcx.attached().expect("list attachments"),
        [server.ifindex, b.ifindex]
    );
    in_netns(&lab.node, || tcx.detach(server.ifindex))
        .unwrap_or_else(|e| panic!("detach: {}", chain(&e)));
    assert_eq!(filter_names(&lab, server), NO_FILTERS);
    assert_udp(&b.ns, at(server, 53), &server.ns);

    // Attaching through tcx over a filter: the link runs, then the filter goes.
    lab.attach(&mut clsact, server.ifindex);
    assert_eq!(filter_names(&lab, server), ONE_FILTER_EACH);
    lab.attach(&mut tcx, server.ifindex);
    assert_eq!(filter_names(&lab, server), NO_FILTERS);
    assert_eq!(
        tcx_programs(&lab, server),
        [["bosun_pol_in"], ["bosun_pol_out"]]
    );
    assert_udp_dropped(&b.ns, at(server, 53));

    // And back: the filter runs, and its pin replaces the link's, which releases the link.
    lab.attach(&mut clsact, server.ifindex);
    assert_eq!(filter_names(&lab, server), ONE_FILTER_EACH);
    wait_until("the tcx programs released", || {
        tcx_programs(&lab, server) == NO_FILTERS
    });
    assert_udp_dropped(&b.ns, at(server, 53));

    // A tcx link (server) and clsact filters (b) at once: cleanup takes both off.
    lab.attach(&mut tcx, server.ifindex);
    put_endpoint(&mut maps, b.ifindex, Some(91), None);
    assert_udp_dropped(&server.ns, at(b, 53));
    assert!(lab.cleanup(), "cleanup found nothing");
    for pod in &lab.pods {
        assert_eq!(filter_names(&lab, pod), NO_FILTERS, "{}", pod.host_if);
        assert_eq!(tcx_programs(&lab, pod), NO_FILTERS, "{}", pod.host_if);
    }
    assert_udp(&b.ns, at(server, 53), &server.ns);
    assert_udp(&server.ns, at(b, 53), &b.ns);

    // Pins whose interface went while no daemon ran (a pod deleted): a link's and a
    // program's, both found and removed.
    let mut clsact = install(&lab.bpf_dir, TcMode::Clsact).expect("install for clsact");
    let mut tcx = install(&lab.bpf_dir, TcMode::Tcx).expect("install for tcx");
    lab.attach(&mut tcx, server.ifindex);
    lab.attach(&mut clsact, b.ifindex);
    for pod in &lab.pods {
        ip(&["-n", &lab.node, "link", "del", &pod.host_if]);
    }
    assert!(lab.cleanup(), "cleanup found nothing");
    assert!(
        !lab.bpf_dir.join("policy").exists(),
        "{}/policy is still there",
        lab.bpf_dir.display()
    );
}

#[test]
fn install_refuses_a_map_pinned_by_an_incompatible_build() {
    let lab = Lab::new("mismatch", 7, 0);
    let dir = lab.bpf_dir.join("policy");
    fs::create_dir_all(&dir).expect("create the pin directory");
    // The endpoint map as a build with a 12-byte value would have left it.
    let hash = aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_HASH as u32;
    let old = aya_obj::Map::new_from_params(hash, 4, 12, 1 << 14, 1);
    aya::maps::MapData::create(old, ENDPOINT_MAP, None)
        .expect("create a map")
        .pin(dir.join(ENDPOINT_MAP))
        .expect("pin it");

    let error = install(&lab.bpf_dir, lab.mode)
        .err()
        .expect("install over an incompatible map");
    match &error {
        bosun_netdp::Error::PinnedMapMismatch { map, field, .. } => {
            assert_eq!((*map, *field), (ENDPOINT_MAP, "value size"))
        }
        other => panic!("{}", chain(other)),
    }
    assert_eq!(
        listing(&dir),
        ["BOSUN_EP_V1"],
        "a refused install pinned something"
    );
    let error = PinnedPolicyMaps::open(&lab.bpf_dir)
        .err()
        .expect("open over an incompatible map");
    assert!(
        matches!(error, bosun_netdp::Error::PinnedMapMismatch { .. }),
        "{}",
        chain(&error)
    );
}
