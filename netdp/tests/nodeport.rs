//! The programs for traffic from outside the node, with real packets: a "node" network
//! namespace with three veths — to an outside client, to a local pod, and to a remote node
//! whose backend sits behind it on a routed address — the programs loaded by
//! `nodeport::install` and attached to the node's two external veths, and the service maps
//! written by the service reconciler, as the daemon writes them.
//!
//! The XDP program's tests use another shape, [`Topology::lan`]: the client and the remote
//! node on one LAN (a bridge in a namespace of its own) with the node's single uplink, where
//! flows to the remote backend leave by the interface they came in by.
//!
//! Needs root (`CAP_BPF`, `CAP_NET_ADMIN`, `CAP_SYS_ADMIN` for `setns`), iproute2's `ip` and
//! `ethtool`.
//! Every test has its own namespaces and links (`np<N>...`), addresses (10.212.N.0/24) and
//! bpffs directory (/sys/fs/bpf/bosun-np-<N>), so the tests run in parallel with each other
//! and with the other real-kernel tests; nothing here touches the host's own interfaces.

mod common;

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    sync::Arc,
    thread,
    time::Duration,
};

use bosun_netdp::{
    nodeport::{self, NatFlow, NodePortDatapath},
    service::{
        BackendAddr, DesiredService, ExternalTarget, Frontend, PinnedMaps, Protocol, Reconciler,
        ServicePortName,
    },
    tc::TcMode,
};
use common::{chain, in_netns, ip, quiet_ip};
use nix::net::if_::if_nametoindex;

const NODE_PORT: u16 = 30080;
const BACKEND_PORT: u16 = 8080;
const TIMEOUT: Duration = Duration::from_secs(2);

/// One test's node, client, pod and remote node; removed on drop.
struct Topology {
    n: u8,
    bpf_dir: PathBuf,
    /// On a [`Topology::lan`], the XDP program on the LAN's port towards the node, without
    /// which veth leaves the frames the node's XDP program sends back in their queue.
    _lan_xdp: Option<bosun_netdp::ProbeCounter>,
}

impl Topology {
    fn new(n: u8) -> Self {
        let topology = Topology::empty(n, &["node", "cli", "pod", "rem"]);
        // Client: 10.212.N.2, the node's outside address 10.212.N.1.
        topology.veth(
            &topology.link("c"),
            "cli",
            "10.212.{n}.1/26",
            "10.212.{n}.2/26",
        );
        // Remote node: 10.212.N.130 behind 10.212.N.129, its backend at 10.212.N.193.
        topology.veth(
            &topology.link("r"),
            "rem",
            "10.212.{n}.129/26",
            "10.212.{n}.130/26",
        );
        topology.default_route("cli", "10.212.{n}.1");
        topology.default_route("rem", "10.212.{n}.129");
        topology.pod_and_remote_backend("10.212.{n}.130");
        topology
    }

    /// A topology's namespaces `roles`, with nothing in them but loopback, up.
    fn empty(n: u8, roles: &[&str]) -> Self {
        let topology = Topology {
            n,
            bpf_dir: PathBuf::from(format!("/sys/fs/bpf/bosun-np-{n}")),
            _lan_xdp: None,
        };
        topology.remove();
        for role in roles {
            ip(&["netns", "add", &topology.ns(role)]);
            ip(&["-n", &topology.ns(role), "link", "set", "lo", "up"]);
        }
        topology
    }

    /// `{n}` in `text` replaced by the topology's number.
    fn sub(&self, text: &str) -> String {
        text.replace("{n}", &self.n.to_string())
    }

    fn default_route(&self, role: &str, via: &str) {
        ip(&[
            "-n",
            &self.ns(role),
            "route",
            "add",
            "default",
            "via",
            &self.sub(via),
        ]);
    }

    /// The pod (10.212.N.66 behind the node's 10.212.N.65), the remote node's backend
    /// (10.212.N.193, routed to the remote node at `remote`; no dummy link: the module may be
    /// missing), and forwarding on the node.
    fn pod_and_remote_backend(&self, remote: &str) {
        self.veth(
            &self.link("p"),
            "pod",
            "10.212.{n}.65/26",
            "10.212.{n}.66/26",
        );
        self.default_route("pod", "10.212.{n}.65");
        ip(&[
            "-n",
            &self.ns("rem"),
            "addr",
            "add",
            &self.sub("10.212.{n}.193/32"),
            "dev",
            "lo",
        ]);
        ip(&[
            "-n",
            &self.ns("node"),
            "route",
            "add",
            &self.sub("10.212.{n}.192/26"),
            "via",
            &self.sub(remote),
        ]);
        in_netns(&self.ns("node"), || {
            fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("enable forwarding");
        });
    }

    /// The node's one uplink (`np<N>u`, 10.212.N.1) on a LAN with the client (.2) and the
    /// remote node (.3, its backend .193 routed through it), as where other nodes and clients
    /// share the node's interface; the local pod as in [`Topology::new`]. The client and the
    /// remote node send without checksum offload, their checksums complete as from a wire.
    /// The LAN's port towards the node runs an XDP program (the probe, which passes
    /// everything): veth delivers the frames an XDP program sends back out (`XDP_TX`) only to
    /// a peer that runs one.
    fn lan(n: u8) -> Self {
        let mut topology = Topology::empty(n, &["node", "cli", "pod", "rem", "lan"]);
        let lan = topology.ns("lan");
        ip(&["-n", &lan, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lan, "link", "set", "br0", "up"]);
        for (ns, end, address) in [
            ("node", topology.link("u"), "10.212.{n}.1/26"),
            ("cli", "eth0".to_owned(), "10.212.{n}.2/26"),
            ("rem", "eth0".to_owned(), "10.212.{n}.3/26"),
        ] {
            let netns = topology.ns(ns);
            ip(&[
                "-n", &lan, "link", "add", ns, "type", "veth", "peer", "name", &end, "netns",
                &netns,
            ]);
            ip(&["-n", &lan, "link", "set", ns, "master", "br0", "up"]);
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &topology.sub(address),
                "dev",
                &end,
            ]);
            ip(&["-n", &netns, "link", "set", &end, "up"]);
            if ns != "node" {
                ethtool(&netns, &["-K", &end, "tx", "off"]);
            }
        }
        topology.pod_and_remote_backend("10.212.{n}.3");
        in_netns(&topology.ns("node"), || {
            // A flow sent back out of its interface is no reason to tell the client of a
            // shorter way.
            for conf in ["all", "default", &topology.link("u")] {
                fs::write(
                    format!("/proc/sys/net/ipv4/conf/{conf}/send_redirects"),
                    "0",
                )
                .expect("turn ICMP redirects off");
            }
        });
        let mut probe = bosun_netdp::ProbeCounter::load()
            .unwrap_or_else(|e| panic!("load the probe: {}", chain(&e)));
        in_netns(&lan, || {
            probe.attach_xdp("node", bosun_netdp::XdpMode::Driver)
        })
        .unwrap_or_else(|e| panic!("attach the probe: {}", chain(&e)));
        topology._lan_xdp = Some(probe);
        topology
    }

    fn ns(&self, role: &str) -> String {
        format!("np{}-{role}", self.n)
    }

    fn link(&self, role: &str) -> String {
        format!("np{}{role}", self.n)
    }

    fn address(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 212, self.n, last)
    }

    /// A veth from the node (`name`, `node_address`) to `peer_ns` (`eth0`, `peer_address`).
    fn veth(&self, name: &str, peer_ns: &str, node_address: &str, peer_address: &str) {
        let sub = |text: &str| self.sub(text);
        let (node, peer) = (self.ns("node"), self.ns(peer_ns));
        ip(&[
            "link", "add", name, "netns", &node, "type", "veth", "peer", "name", "eth0", "netns",
            &peer,
        ]);
        ip(&["-n", &node, "addr", "add", &sub(node_address), "dev", name]);
        ip(&[
            "-n",
            &peer,
            "addr",
            "add",
            &sub(peer_address),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &node, "link", "set", name, "up"]);
        ip(&["-n", &peer, "link", "set", "eth0", "up"]);
    }

    /// Loads the programs, attaches them (with tcx) to the node's client and remote veths,
    /// and sets the SNAT address to the node's outside address.
    fn install(&self) -> NodePortDatapath {
        self.install_in(TcMode::Tcx)
    }

    /// [`Topology::install`], attaching in `mode`.
    fn install_in(&self, mode: TcMode) -> NodePortDatapath {
        let mut datapath = nodeport::install(&self.bpf_dir, mode)
            .unwrap_or_else(|e| panic!("install: {}", chain(&e)));
        in_netns(&self.ns("node"), || {
            for link in [self.link("c"), self.link("r")] {
                let ifindex = if_nametoindex(link.as_str()).expect("the veth exists");
                datapath
                    .attach(ifindex)
                    .unwrap_or_else(|e| panic!("attach to {link}: {}", chain(&e)));
            }
        });
        datapath
            .maps()
            .and_then(|mut maps| maps.set_snat_address(Some(self.address(1))))
            .unwrap_or_else(|e| panic!("set the SNAT address: {}", chain(&e)));
        datapath
    }

    /// On a [`Topology::lan`]: loads the programs, attaches the tc ones and the XDP one to the
    /// node's uplink, and sets the SNAT address to its address.
    fn install_xdp(&self) -> NodePortDatapath {
        let mut datapath = nodeport::install(&self.bpf_dir, TcMode::Tcx)
            .unwrap_or_else(|e| panic!("install: {}", chain(&e)));
        in_netns(&self.ns("node"), || {
            let ifindex = self.uplink();
            datapath
                .attach(ifindex)
                .and_then(|()| datapath.attach_xdp(ifindex))
                .unwrap_or_else(|e| panic!("attach to the uplink: {}", chain(&e)));
        });
        datapath
            .maps()
            .and_then(|mut maps| maps.set_snat_address(Some(self.address(1))))
            .unwrap_or_else(|e| panic!("set the SNAT address: {}", chain(&e)));
        datapath
    }

    /// The ifindex of the node's uplink on a [`Topology::lan`].
    fn uplink(&self) -> u32 {
        in_netns(&self.ns("node"), || {
            if_nametoindex(self.link("u").as_str()).expect("the uplink exists")
        })
    }

    fn reconciler(&self) -> Reconciler<PinnedMaps> {
        Reconciler::new(
            PinnedMaps::open(&self.bpf_dir).unwrap_or_else(|e| panic!("open: {}", chain(&e))),
        )
    }

    /// The node port on the node's outside address, balanced over `backends` (local or not).
    fn service(&self, protocol: Protocol, backends: &[(u8, bool)]) -> DesiredService {
        let targets: Vec<ExternalTarget> = backends
            .iter()
            .map(|(last, local)| ExternalTarget {
                backend: BackendAddr {
                    address: self.address(*last),
                    port: BACKEND_PORT,
                },
                local: *local,
            })
            .collect();
        DesiredService {
            frontend: Frontend {
                address: self.address(1),
                port: NODE_PORT,
                protocol,
            },
            name: ServicePortName {
                namespace: Arc::from("default"),
                name: Arc::from("web"),
                port: Arc::from(""),
            },
            affinity_timeout: None,
            backends: targets.iter().map(|t| t.backend).collect(),
            external: Some(targets.into_boxed_slice()),
        }
    }

    fn remove(&self) {
        for ns in ["node", "cli", "pod", "rem", "lan"] {
            quiet_ip(&["netns", "del", &self.ns(ns)]);
        }
        let _ = nodeport::cleanup(&self.bpf_dir);
        let _ = bosun_netdp::service::cleanup(&self.bpf_dir);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Serves TCP and UDP on `address` and the backend port in `ns`, answering each line or
/// datagram with `name` and the address the request came from. Bound to the backend's own
/// address, as a pod's sockets effectively are: a UDP reply from a wildcard socket would leave
/// from whatever address the route to the client prefers.
fn serve(ns: &str, address: Ipv4Addr, name: &'static str) {
    let (tcp, udp) = in_netns(ns, || {
        let at = SocketAddrV4::new(address, BACKEND_PORT);
        (TcpListener::bind(at), UdpSocket::bind(at))
    });
    let tcp = tcp.expect("listen");
    let udp = udp.expect("bind");
    // The threads end with the test's process; the namespaces' removal closes nothing they
    // block on, and they hold nothing else.
    thread::spawn(move || {
        for stream in tcp.incoming().flatten() {
            thread::spawn(move || {
                let peer = stream
                    .peer_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                let mut writer = stream.try_clone().expect("clone a stream");
                for line in BufReader::new(stream).lines() {
                    if line.is_err() || writeln!(writer, "{name} {peer}").is_err() {
                        return;
                    }
                }
            });
        }
    });
    thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(format!("{name} {}", from.ip()).as_bytes(), from);
        }
    });
}

/// The programs' events, read one at a time on a runtime of their own.
struct Events {
    runtime: tokio::runtime::Runtime,
    reader: nodeport::NodePortEventReader,
}

impl Events {
    fn open(topology: &Topology) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a Tokio runtime");
        let reader = {
            let _context = runtime.enter();
            nodeport::NodePortEventReader::open(&topology.bpf_dir).expect("open the event ring")
        };
        Events { runtime, reader }
    }

    /// The next event, within [`TIMEOUT`].
    fn next(&mut self) -> nodeport::NodePortEvent {
        self.runtime
            .block_on(async { tokio::time::timeout(TIMEOUT, self.reader.next()).await })
            .expect("an event in time")
            .unwrap_or_else(|e| panic!("read an event: {}", chain(&e)))
    }
}

/// A TCP connection from the client to the node port.
fn connect(topology: &Topology) -> std::io::Result<(TcpStream, BufReader<TcpStream>)> {
    let to = SocketAddrV4::new(topology.address(1), NODE_PORT);
    let stream = in_netns(&topology.ns("cli"), || {
        TcpStream::connect_timeout(&to.into(), TIMEOUT)
    })?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let reader = BufReader::new(stream.try_clone()?);
    Ok((stream, reader))
}

fn ask(stream: &mut TcpStream, reader: &mut BufReader<TcpStream>) -> String {
    writeln!(stream, "who").expect("send");
    let mut line = String::new();
    reader.read_line(&mut line).expect("an answer");
    line.trim().to_owned()
}

/// One datagram from the client to the node port; the answer and who sent it.
fn ask_udp(topology: &Topology) -> (String, std::net::SocketAddr) {
    ask_udp_from(topology, 0)
}

/// [`ask_udp`] from the client's port `port` (0: one the kernel picks, which may be one an
/// earlier call had, and so an earlier flow).
fn ask_udp_from(topology: &Topology, port: u16) -> (String, std::net::SocketAddr) {
    let to = SocketAddrV4::new(topology.address(1), NODE_PORT);
    in_netns(&topology.ns("cli"), || {
        let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).expect("bind");
        socket.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        socket.send_to(b"who", to).expect("send");
        let mut buf = [0u8; 64];
        let (len, from) = socket.recv_from(&mut buf).expect("an answer");
        (String::from_utf8_lossy(&buf[..len]).into_owned(), from)
    })
}

/// Installs the programs, serves the node port over TCP and UDP by the backend at `last`
/// (local or not), and asks it once each way from the client: the TCP answer, the UDP one
/// (checked to come from the node port, not from the backend) and the flows the table holds.
fn ask_both_ways(topology: &Topology, last: u8, local: bool) -> (String, String, Vec<NatFlow>) {
    let _datapath = topology.install();
    topology
        .reconciler()
        .apply(&[
            topology.service(Protocol::Tcp, &[(last, local)]),
            topology.service(Protocol::Udp, &[(last, local)]),
        ])
        .unwrap_or_else(|e| panic!("write the service: {}", chain(&e)));
    let (mut stream, mut reader) = connect(topology).expect("the node port answers");
    let tcp = ask(&mut stream, &mut reader);
    let (udp, from) = ask_udp(topology);
    assert_eq!(
        from,
        SocketAddrV4::new(topology.address(1), NODE_PORT).into(),
        "the reply comes from the node port"
    );
    let flows = nodeport::NodePortMaps::open(&topology.bpf_dir)
        .and_then(|maps| maps.flows(nodeport::monotonic_now()))
        .unwrap_or_else(|e| panic!("read the flows: {}", chain(&e)));
    assert_eq!(flows.len(), 2, "{flows:?}");
    (tcp, udp, flows)
}

#[test]
fn a_node_port_reaches_a_local_backend_with_the_clients_address() {
    let topology = Topology::new(1);
    serve(&topology.ns("pod"), topology.address(66), "pod");
    let (tcp, udp, flows) = ask_both_ways(&topology, 66, true);
    // DNAT only: the pod sees the client's own address.
    assert_eq!(tcp, "pod 10.212.1.2");
    assert_eq!(udp, "pod 10.212.1.2");
    assert!(flows
        .iter()
        .all(|f| f.snat.is_none() && f.backend.0 == topology.address(66)));
}

#[test]
fn a_node_port_reaches_a_remote_backend_through_snat() {
    let topology = Topology::new(2);
    serve(&topology.ns("rem"), topology.address(193), "remote");
    let (tcp, udp, flows) = ask_both_ways(&topology, 193, false);
    // SNATed to the node's address, as kube-proxy masquerades, so the reply comes back here.
    assert_eq!(tcp, "remote 10.212.2.1");
    assert_eq!(udp, "remote 10.212.2.1");
    for flow in &flows {
        let (address, port) = flow.snat.expect("a SNATed flow");
        assert_eq!(address, topology.address(1));
        assert!(port >= 61000, "{flow:?}");
    }
}

#[test]
fn a_flow_survives_a_reinstall_and_a_removed_service_stops_answering() {
    let topology = Topology::new(3);
    serve(&topology.ns("pod"), topology.address(66), "pod");
    serve(&topology.ns("rem"), topology.address(193), "remote");
    let datapath = topology.install();
    let mut reconciler = topology.reconciler();
    reconciler
        .apply(&[topology.service(Protocol::Tcp, &[(66, true), (193, false)])])
        .unwrap_or_else(|e| panic!("write the service: {}", chain(&e)));
    let (mut stream, mut reader) = connect(&topology).expect("the node port answers");
    let first = ask(&mut stream, &mut reader);
    assert!(
        first == "pod 10.212.3.2" || first == "remote 10.212.3.1",
        "{first}"
    );

    // A restart: the old handle gone, the programs loaded and attached again over the pins.
    drop(datapath);
    let _datapath = topology.install();
    assert_eq!(
        ask(&mut stream, &mut reader),
        first,
        "the flow kept its backend"
    );

    reconciler
        .apply(&[])
        .unwrap_or_else(|e| panic!("remove the service: {}", chain(&e)));
    assert!(
        connect(&topology).is_err(),
        "a removed node port still answers new connections"
    );

    // Aging: far in the future every flow is idle past its timeout, and both halves go.
    let mut maps = nodeport::NodePortMaps::open(&topology.bpf_dir)
        .unwrap_or_else(|e| panic!("open: {}", chain(&e)));
    let later = nodeport::monotonic_now() + 7 * 3600 * 1_000_000_000;
    let removed = maps
        .collect_garbage(later)
        .unwrap_or_else(|e| panic!("collect: {}", chain(&e)));
    assert!(removed >= 2, "{removed} entries removed");
    assert_eq!(maps.entry_count().expect("count"), 0);
}

#[test]
fn a_flood_of_new_flows_keeps_the_nat_table_bounded_and_new_flows_served() {
    const ENTRIES: u32 = 512;
    let topology = Topology::new(4);
    serve(&topology.ns("pod"), topology.address(66), "pod");
    let mut datapath = nodeport::install_sized(&topology.bpf_dir, TcMode::Tcx, ENTRIES)
        .unwrap_or_else(|e| panic!("install: {}", chain(&e)));
    in_netns(&topology.ns("node"), || {
        let ifindex = if_nametoindex(topology.link("c").as_str()).expect("the veth exists");
        datapath
            .attach(ifindex)
            .unwrap_or_else(|e| panic!("attach: {}", chain(&e)));
    });
    topology
        .reconciler()
        .apply(&[topology.service(Protocol::Udp, &[(66, true)])])
        .unwrap_or_else(|e| panic!("write the service: {}", chain(&e)));

    // 2,000 flows (each datagram from a port of its own), four times what the table holds.
    let to = SocketAddrV4::new(topology.address(1), NODE_PORT);
    in_netns(&topology.ns("cli"), || {
        for _ in 0..2000 {
            let socket =
                UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
            socket.send_to(b"who", to).expect("send");
        }
    });
    let maps = nodeport::NodePortMaps::open(&topology.bpf_dir)
        .unwrap_or_else(|e| panic!("open: {}", chain(&e)));
    let entries = maps.entry_count().expect("count");
    // Full (the flood did go through the table), never over.
    assert!(
        entries > ENTRIES as usize / 2 && entries <= ENTRIES as usize,
        "{entries} entries in a table of {ENTRIES}"
    );
    // The oldest flows were evicted; a new one is served.
    let (answer, from) = ask_udp(&topology);
    assert_eq!(answer, "pod 10.212.4.2");
    assert_eq!(
        from,
        SocketAddrV4::new(topology.address(1), NODE_PORT).into()
    );
}

#[test]
fn new_flows_and_drops_are_reported_as_events() {
    let topology = Topology::new(5);
    serve(&topology.ns("pod"), topology.address(66), "pod");
    let datapath = topology.install();
    let mut events = Events::open(&topology);

    // A flow to the local pod: one NAT event for it.
    topology
        .reconciler()
        .apply(&[topology.service(Protocol::Udp, &[(66, true)])])
        .unwrap_or_else(|e| panic!("write the service: {}", chain(&e)));
    let (answer, _) = ask_udp(&topology);
    assert_eq!(answer, "pod 10.212.5.2");
    let event = events.next();
    assert_eq!(event.kind, nodeport::NODEPORT_EVENT_NEW_FLOW);
    assert_eq!(event.client, topology.address(2).octets());
    assert_eq!(event.frontend, topology.address(1).octets());
    assert_eq!(event.backend, topology.address(66).octets());
    assert_eq!(u16::from_be_bytes(event.frontend_port), NODE_PORT);

    // A remote backend without a SNAT address to send it from: dropped, and said why.
    datapath
        .maps()
        .and_then(|mut maps| maps.set_snat_address(None))
        .unwrap_or_else(|e| panic!("unset the SNAT address: {}", chain(&e)));
    topology
        .reconciler()
        .apply(&[topology.service(Protocol::Tcp, &[(193, false)])])
        .unwrap_or_else(|e| panic!("write the service: {}", chain(&e)));
    assert!(connect(&topology).is_err(), "a flow with no SNAT address");
    let event = events.next();
    assert_eq!(event.kind, nodeport::NODEPORT_EVENT_NO_SNAT);
    assert_eq!(event.backend, topology.address(193).octets());
}

#[test]
fn a_node_port_is_served_by_clsact_filters_on_kernels_without_tcx() {
    let topology = Topology::new(6);
    serve(&topology.ns("pod"), topology.address(66), "pod");
    let _datapath = topology.install_in(TcMode::Clsact);
    let filters = |direction: &str| -> String {
        let output = std::process::Command::new("tc")
            .args(["-n", &topology.ns("node"), "filter", "show", "dev"])
            .arg(topology.link("c"))
            .arg(direction)
            .output()
            .expect("run tc");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert!(
        filters("ingress").contains("bosun_np_in"),
        "{}",
        filters("ingress")
    );
    assert!(
        filters("egress").contains("bosun_np_out"),
        "{}",
        filters("egress")
    );
    topology
        .reconciler()
        .apply(&[topology.service(Protocol::Tcp, &[(66, true)])])
        .unwrap_or_else(|e| panic!("write the service: {}", chain(&e)));
    let (mut stream, mut reader) = connect(&topology).expect("the node port answers");
    assert_eq!(ask(&mut stream, &mut reader), "pod 10.212.6.2");

    // Cleanup (in the interfaces' namespace, where the node's agent runs) takes the filters
    // off as it takes links off.
    in_netns(&topology.ns("node"), || {
        nodeport::cleanup(&topology.bpf_dir)
    })
    .unwrap_or_else(|e| panic!("cleanup: {}", chain(&e)));
    assert!(
        !filters("ingress").contains("bosun_np"),
        "{}",
        filters("ingress")
    );
    assert!(
        !filters("egress").contains("bosun_np"),
        "{}",
        filters("egress")
    );
}

#[test]
fn a_service_without_endpoints_refuses_outside_clients_with_an_icmp_error() {
    let topology = Topology::new(7);
    let datapath = topology.install();
    let mut events = Events::open(&topology);
    topology
        .reconciler()
        .apply(&[
            topology.service(Protocol::Tcp, &[]),
            topology.service(Protocol::Udp, &[]),
        ])
        .unwrap_or_else(|e| panic!("write the services: {}", chain(&e)));

    // TCP: the SYN is answered with a port unreachable, which fails the connect at once; a
    // dropped SYN would retry until the timeout.
    let started = std::time::Instant::now();
    let error = connect(&topology).expect_err("a node port without endpoints answered");
    assert_eq!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{error} after {:?}",
        started.elapsed()
    );
    let event = events.next();
    assert_eq!(event.kind, nodeport::NODEPORT_EVENT_REFUSED);
    assert_eq!(event.client, topology.address(2).octets());
    assert_eq!(event.frontend, topology.address(1).octets());

    // UDP: a connected socket hears of the port unreachable on its next receive.
    let to = SocketAddrV4::new(topology.address(1), NODE_PORT);
    let error = in_netns(&topology.ns("cli"), || {
        let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
        socket.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        socket.connect(to).expect("connect");
        socket.send(b"who").expect("send");
        let mut buf = [0u8; 64];
        socket
            .recv(&mut buf)
            .expect_err("an answer from no endpoint")
    });
    assert_eq!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{error}"
    );

    // A flood is not reflected whole: at most 1000 refusals a second on each CPU, so 10,000
    // datagrams sent at once get at most 2 seconds' worth on this machine's CPUs.
    let limit = 2 * 1000 * thread::available_parallelism().map_or(1, |n| n.get());
    let sent = 10_000;
    let received = in_netns(&topology.ns("cli"), || {
        let before = icmp_unreachables_received();
        let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
        for _ in 0..sent {
            // An unconnected socket: its sends do not stop at the first error.
            socket.send_to(b"flood", to).expect("send");
        }
        thread::sleep(Duration::from_millis(300));
        icmp_unreachables_received() - before
    });
    assert!(
        received > 0 && received <= limit as u64,
        "{received} port unreachables for {sent} datagrams (limit {limit})"
    );
    drop(datapath);
}

/// `Icmp: InDestUnreachs` of the calling thread's network namespace.
fn icmp_unreachables_received() -> u64 {
    let snmp = fs::read_to_string("/proc/thread-self/net/snmp").expect("read snmp");
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp: "));
    let (names, values) = (icmp.next().expect("names"), icmp.next().expect("values"));
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "InDestUnreachs")
        .and_then(|(_, value)| value.parse().ok())
        .expect("InDestUnreachs")
}

/// Runs `ethtool ARGS` in network namespace `ns`, panicking with its stderr if it fails.
fn ethtool(ns: &str, args: &[&str]) {
    let output = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "ethtool"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run ethtool {args:?}: {e}"));
    assert!(
        output.status.success(),
        "ethtool {args:?} in {ns} failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

/// How many times the programs pinned for the uplink have run: the XDP one and tc ingress.
/// Counted only while run statistics are on (`aya::sys::enable_stats`).
fn run_counts(topology: &Topology) -> (u64, u64) {
    let ifindex = topology.uplink();
    let links = topology.bpf_dir.join("nodeport/links");
    let count = |pin: String| -> u64 {
        let id = bosun_netdp::tc::pinned_program_id(&links.join(&pin))
            .unwrap_or_else(|e| panic!("read pin {pin}: {}", chain(&e)))
            .unwrap_or_else(|| panic!("no program pinned at {pin}"));
        aya::programs::loaded_programs()
            .flatten()
            .find(|program| program.id() == id)
            .map(|program| program.run_count())
            .unwrap_or_else(|| panic!("program {id} is not loaded"))
    };
    (
        count(format!("{ifindex}_xdp")),
        count(format!("{ifindex}_in")),
    )
}

/// Whether `ip link` shows an XDP program on the node's uplink.
fn uplink_has_xdp(topology: &Topology) -> bool {
    let output = std::process::Command::new("ip")
        .args(["-n", &topology.ns("node"), "link", "show", "dev"])
        .arg(topology.link("u"))
        .output()
        .expect("run ip");
    String::from_utf8_lossy(&output.stdout).contains("xdp")
}

#[test]
fn the_xdp_program_sends_flows_to_remote_backends_back_out_of_the_driver() {
    let topology = Topology::lan(8);
    serve(&topology.ns("rem"), topology.address(193), "remote");
    // Run counts of every program on the machine while this lives (reference-counted: other
    // tests' programs merely get counted too).
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enable run counts");
    let datapath = topology.install_xdp();
    assert!(uplink_has_xdp(&topology));
    topology
        .reconciler()
        .apply(&[
            topology.service(Protocol::Tcp, &[(193, false)]),
            topology.service(Protocol::Udp, &[(193, false)]),
        ])
        .unwrap_or_else(|e| panic!("write the services: {}", chain(&e)));
    // The first exchange may go through the kernel while it resolves the neighbours.
    let (mut stream, mut reader) = connect(&topology).expect("the node port answers");
    assert_eq!(ask(&mut stream, &mut reader), "remote 10.212.8.1");

    // From then on, a known flow's requests and answers, and new UDP flows (each datagram
    // from a socket of its own) both ways, are sent back out by the XDP program; the tc one
    // sees only what refreshes the way to each address once a second (a packet each way)
    // and ARP.
    let (xdp_before, tc_before) = run_counts(&topology);
    let started = std::time::Instant::now();
    for _ in 0..100 {
        assert_eq!(ask(&mut stream, &mut reader), "remote 10.212.8.1");
    }
    // Ports of their own: two sockets the kernel gave the same port would be one flow.
    for port in 41_000..41_050 {
        let (answer, from) = ask_udp_from(&topology, port);
        assert_eq!(answer, "remote 10.212.8.1");
        assert_eq!(
            from,
            SocketAddrV4::new(topology.address(1), NODE_PORT).into()
        );
    }
    let (xdp_after, tc_after) = run_counts(&topology);
    let seconds = started.elapsed().as_secs();
    assert!(
        xdp_after - xdp_before >= 300,
        "the XDP program ran {} times for 150 exchanges",
        xdp_after - xdp_before
    );
    assert!(
        tc_after - tc_before <= 10 + 10 * seconds,
        "the tc program ran {} times (XDP {}) in {seconds} s: XDP left it the packets",
        tc_after - tc_before,
        xdp_after - xdp_before
    );
    let flows = nodeport::NodePortMaps::open(&topology.bpf_dir)
        .and_then(|maps| maps.flows(nodeport::monotonic_now()))
        .unwrap_or_else(|e| panic!("read the flows: {}", chain(&e)));
    assert_eq!(flows.len(), 51, "one TCP flow and 50 UDP ones");
    assert!(flows.iter().all(|flow| flow.snat.is_some()), "{flows:?}");

    // A restart: the link pinned by the first daemon gets the new program in place, and the
    // flow goes on.
    drop(datapath);
    let pinned = |topology: &Topology| {
        let pin = topology
            .bpf_dir
            .join(format!("nodeport/links/{}_xdp", topology.uplink()));
        bosun_netdp::tc::pinned_program_id(&pin).expect("read the pin")
    };
    let before = pinned(&topology);
    let _datapath = topology.install_xdp();
    assert_ne!(pinned(&topology), before, "the new program is attached");
    assert_eq!(ask(&mut stream, &mut reader), "remote 10.212.8.1");
    assert_eq!(
        nodeport::attached_xdp(&topology.bpf_dir).expect("list"),
        [topology.uplink()]
    );

    // Detached, the interface has no XDP program left, and the tc programs serve alone.
    in_netns(&topology.ns("node"), || {
        nodeport::detach_xdp(&topology.bpf_dir, topology.uplink())
    })
    .unwrap_or_else(|e| panic!("detach: {}", chain(&e)));
    assert!(!uplink_has_xdp(&topology));
    assert!(nodeport::attached_xdp(&topology.bpf_dir)
        .expect("list")
        .is_empty());
    assert_eq!(ask(&mut stream, &mut reader), "remote 10.212.8.1");
}

#[test]
fn the_xdp_program_hands_flows_to_local_backends_to_the_kernel_dnated() {
    let topology = Topology::lan(9);
    serve(&topology.ns("pod"), topology.address(66), "pod");
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enable run counts");
    let _datapath = topology.install_xdp();
    topology
        .reconciler()
        .apply(&[
            topology.service(Protocol::Tcp, &[(66, true)]),
            topology.service(Protocol::Udp, &[(66, true)]),
        ])
        .unwrap_or_else(|e| panic!("write the services: {}", chain(&e)));
    let (mut stream, mut reader) = connect(&topology).expect("the node port answers");
    let (xdp_before, _) = run_counts(&topology);
    // The pod's kernel checks the checksums that the XDP program rewrote; the client's address
    // is kept.
    for _ in 0..20 {
        assert_eq!(ask(&mut stream, &mut reader), "pod 10.212.9.2");
        let (answer, from) = ask_udp(&topology);
        assert_eq!(answer, "pod 10.212.9.2");
        assert_eq!(
            from,
            SocketAddrV4::new(topology.address(1), NODE_PORT).into()
        );
    }
    let (xdp_after, _) = run_counts(&topology);
    assert!(
        xdp_after - xdp_before >= 40,
        "the XDP program ran {} times for 40 requests",
        xdp_after - xdp_before
    );
}
