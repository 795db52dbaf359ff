//! Service load balancing with real packets: the programs attached to the node's real cgroup2
//! root, real maps pinned in bpffs, "pods" that are network namespaces joined to the host by
//! veth pairs, and clients in this process (the host's namespace) that talk to VIPs.
//!
//! Needs root (`CAP_BPF`, `CAP_NET_ADMIN`, `CAP_SYS_ADMIN` for `setns` and mounting bpffs) and
//! iproute2's `ip`. Each test has its own bpffs directory, namespace and interface names and
//! address ranges (10.213.N.0/24 for pods, 10.214.N.0/24 for VIPs), so tests run in parallel,
//! in threads or processes, beside other tests that attach programs to the same root.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::{self, File},
    io::{self, BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use bosun_ebpf_abi::{
    address_from_host, port_from_host, Backend, ServiceKey, ServiceValue, SlotKey, PROTOCOL_TCP,
    PROTOCOL_UDP, SERVICE_FLAG_AFFINITY,
};
use bosun_netdp::service::{cleanup, find_cgroup2, install, PinnedMaps, ServiceMaps};
use common::{bind_udp, chain, ip, listen_tcp, quiet_ip, Server};
use nix::{
    fcntl::{Flock, FlockArg},
    mount::{mount, MsFlags},
    sys::statfs::{statfs, BPF_FS_MAGIC},
};

// ---------------------------------------------------------------------------------------------
// Network namespaces as pods, and servers inside them
// ---------------------------------------------------------------------------------------------

const BPFFS: &str = "/sys/fs/bpf";
/// Every pod serves TCP on this port...
const TCP_PORT: u16 = 8080;
/// ...and UDP on this one, answering each request with its own name.
const UDP_PORT: u16 = 8053;
/// How long a client waits for anything before the test fails.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How long a server keeps a silent connection.
const ANSWER_IDLE: Duration = Duration::from_secs(30);

/// One test's world: its pods and their servers, a route that makes its VIP range
/// unreachable unless the programs rewrite a destination, and its bpffs directory. Dropping it
/// removes all of them, also when the test fails; creating it first removes what a killed
/// earlier run of the same test left behind.
struct Lab {
    /// Third octet of the pods' 10.213.N.0/24 and the VIPs' 10.214.N.0/24.
    n: u8,
    bpf_dir: PathBuf,
    cgroup: PathBuf,
    pods: Vec<Pod>,
    servers: Vec<Server>,
}

/// A network namespace joined to the host by a veth pair on a /30: the host side has .1, the
/// pod's `eth0` has .2, and the pod's default route goes through the host side.
struct Pod {
    /// Also the namespace's name and what the pod's servers answer.
    name: String,
    host_if: String,
    host_address: Ipv4Addr,
    address: Ipv4Addr,
}

impl Lab {
    fn new(test: &str, n: u8, pods: u8) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test loads BPF programs and creates network namespaces: run it as root"
        );
        ensure_bpffs();
        // Pods reach each other and the world through the host, as on a node.
        fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("enable IPv4 forwarding");
        let mut lab = Self {
            n,
            bpf_dir: Path::new(BPFFS).join(format!("bosun-netdp-test-{test}")),
            cgroup: find_cgroup2().expect("find the cgroup2 mount"),
            pods: (0..pods)
                .map(|i| Pod {
                    name: format!("bslb{n}p{i}"),
                    host_if: format!("bslb{n}h{i}"),
                    host_address: Ipv4Addr::new(10, 213, n, 4 * i + 1),
                    address: Ipv4Addr::new(10, 213, n, 4 * i + 2),
                })
                .collect(),
            servers: Vec::new(),
        };
        lab.remove_network();
        cleanup(&lab.bpf_dir).expect("remove a bpffs directory left by an earlier run");

        ip(&["route", "add", "unreachable", &lab.vip_range()]);
        for pod in &lab.pods {
            let (ns, host_if, host_address) = (&*pod.name, &*pod.host_if, pod.host_address);
            ip(&["netns", "add", ns]);
            ip(&[
                "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ]);
            ip(&["addr", "add", &format!("{host_address}/30"), "dev", host_if]);
            ip(&["link", "set", host_if, "up"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/30", pod.address),
                "dev",
                "eth0",
            ]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &host_address.to_string(),
            ]);
        }
        // One at a time, so that a failure to start one still stops those before it.
        for i in 0..lab.pods.len() {
            let pod = &lab.pods[i].name;
            let server = Server::tcp(listen_tcp(pod, TCP_PORT), pod, ANSWER_IDLE);
            lab.servers.push(server);
            let server = Server::udp(bind_udp(pod, UDP_PORT), pod);
            lab.servers.push(server);
        }
        lab
    }

    fn vip(&self, host: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 214, self.n, host), port)
    }

    fn vip_range(&self) -> String {
        format!("10.214.{}.0/24", self.n)
    }

    fn tcp_backend(&self, pod: usize) -> SocketAddrV4 {
        SocketAddrV4::new(self.pods[pod].address, TCP_PORT)
    }

    fn udp_backend(&self, pod: usize) -> SocketAddrV4 {
        SocketAddrV4::new(self.pods[pod].address, UDP_PORT)
    }

    fn name(&self, pod: usize) -> &str {
        &self.pods[pod].name
    }

    fn names(&self) -> BTreeSet<String> {
        self.pods.iter().map(|pod| pod.name.clone()).collect()
    }

    fn install(&self) -> PinnedMaps {
        install(&self.bpf_dir, &self.cgroup)
            .unwrap_or_else(|e| panic!("install in {}: {}", self.bpf_dir.display(), chain(&e)))
    }

    /// Deleting the host end of a veth pair deletes both ends.
    fn remove_network(&self) {
        for pod in &self.pods {
            quiet_ip(&["link", "del", &pod.host_if]);
            quiet_ip(&["netns", "del", &pod.name]);
        }
        quiet_ip(&["route", "del", "unreachable", &self.vip_range()]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Programs first, so nothing on the node is steered to pods about to vanish.
        if let Err(e) = cleanup(&self.bpf_dir) {
            eprintln!("cleanup of {}: {}", self.bpf_dir.display(), chain(&e));
        }
        for server in self.servers.drain(..) {
            server.stop();
        }
        self.remove_network();
    }
}

/// Makes sure a bpffs is mounted at /sys/fs/bpf, where a node agent expects it, mounting one
/// if not. The lock keeps two test processes from mounting one each.
fn ensure_bpffs() {
    let dir = File::open(BPFFS).unwrap_or_else(|e| panic!("open {BPFFS}: {e}"));
    let _lock = Flock::lock(dir, FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("lock {BPFFS}: {e}"));
    let fs = statfs(BPFFS).unwrap_or_else(|e| panic!("statfs {BPFFS}: {e}"));
    if fs.filesystem_type() != BPF_FS_MAGIC {
        mount(
            Some("bpf"),
            BPFFS,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("mount bpffs at {BPFFS}: {e}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Clients and map entries
// ---------------------------------------------------------------------------------------------

fn connect(to: SocketAddrV4) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&to.into(), TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    Ok(stream)
}

/// Asks the server at the other end of `stream` for its name.
fn ask(stream: &mut TcpStream) -> io::Result<String> {
    stream.write_all(b"name?\n")?;
    let mut line = String::new();
    BufReader::new(&mut *stream).read_line(&mut line)?;
    if line.is_empty() {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line.trim_end().to_owned())
}

/// One TCP connection, one question.
fn ask_tcp(to: SocketAddrV4) -> io::Result<String> {
    ask(&mut connect(to)?)
}

fn udp_client() -> UdpSocket {
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).expect("bind UDP");
    socket
        .set_read_timeout(Some(TIMEOUT))
        .expect("set a receive timeout");
    socket
}

/// The reply's text and where the kernel says it came from.
fn receive(socket: &UdpSocket) -> (String, SocketAddr) {
    let mut buf = [0u8; 64];
    let (len, from) = socket
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("receive a UDP reply: {e}"));
    (String::from_utf8_lossy(&buf[..len]).into_owned(), from)
}

fn frontend(vip: SocketAddrV4, protocol: u8) -> ServiceKey {
    ServiceKey {
        address: address_from_host(vip.ip().to_bits()),
        port: port_from_host(vip.port()),
        protocol,
        _pad: 0,
    }
}

fn backend(at: SocketAddrV4) -> Backend {
    Backend {
        address: address_from_host(at.ip().to_bits()),
        port: port_from_host(at.port()),
        _pad: [0; 2],
    }
}

/// Writes a service the way the reconciler must: backends, then slots, then the frontend that
/// exposes them. `backends` are (backend id, address).
fn put_service(
    maps: &mut impl ServiceMaps,
    id: u32,
    key: ServiceKey,
    backends: &[(u32, SocketAddrV4)],
    affinity_timeout: Option<u32>,
) {
    for (backend_id, at) in backends {
        maps.put_backend(*backend_id, &backend(*at))
            .unwrap_or_else(|e| panic!("put backend {backend_id}: {}", chain(&e)));
    }
    for (slot, (backend_id, _)) in backends.iter().enumerate() {
        let slot = SlotKey {
            service: id,
            slot: slot as u32,
        };
        maps.put_slot(&slot, *backend_id)
            .unwrap_or_else(|e| panic!("put slot {slot:?}: {}", chain(&e)));
    }
    let value = ServiceValue {
        id,
        count: backends.len() as u32,
        flags: if affinity_timeout.is_some() {
            SERVICE_FLAG_AFFINITY
        } else {
            0
        },
        affinity_timeout: affinity_timeout.unwrap_or(0),
    };
    maps.put_service(&key, &value)
        .unwrap_or_else(|e| panic!("put service {key:?}: {}", chain(&e)));
}

/// Points a service's only slot at `backend_id`; the slots above it are left for the caller.
fn single_slot(maps: &mut impl ServiceMaps, id: u32, key: ServiceKey, backend_id: u32) {
    maps.put_slot(
        &SlotKey {
            service: id,
            slot: 0,
        },
        backend_id,
    )
    .expect("put slot 0");
    let mut value = service_value(maps, &key);
    value.count = 1;
    maps.put_service(&key, &value).expect("shrink the service");
}

fn service_value(maps: &impl ServiceMaps, key: &ServiceKey) -> ServiceValue {
    maps.services()
        .expect("list services")
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("service {key:?} is not in the map"))
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn tcp_to_a_vip_spreads_over_every_backend_and_the_peer_is_the_vip() {
    let lab = Lab::new("tcp-spread", 1, 3);
    let mut maps = lab.install();
    let vip = lab.vip(10, 80);
    let backends: Vec<_> = (0..3).map(|i| (i as u32 + 1, lab.tcp_backend(i))).collect();
    put_service(&mut maps, 7, frontend(vip, PROTOCOL_TCP), &backends, None);

    let mut seen = BTreeMap::<String, usize>::new();
    for n in 0..60 {
        let mut stream = connect(vip).unwrap_or_else(|e| panic!("connection {n} to {vip}: {e}"));
        assert_eq!(
            stream.peer_addr().expect("getpeername"),
            SocketAddr::V4(vip),
            "a connection sent to a backend reports the VIP as its peer"
        );
        let name = ask(&mut stream).unwrap_or_else(|e| panic!("connection {n}: {e}"));
        *seen.entry(name).or_default() += 1;
    }
    assert_eq!(
        seen.keys().cloned().collect::<BTreeSet<_>>(),
        lab.names(),
        "60 connections should reach every one of 3 backends: {seen:?}"
    );
}

#[test]
fn a_service_without_endpoints_refuses_at_once_and_other_addresses_are_untouched() {
    let lab = Lab::new("refuse", 2, 1);
    let mut maps = lab.install();
    let tcp_vip = lab.vip(10, 80);
    let udp_vip = lab.vip(10, 53);
    let tcp = frontend(tcp_vip, PROTOCOL_TCP);
    put_service(&mut maps, 1, tcp, &[(1, lab.tcp_backend(0))], None);
    put_service(&mut maps, 2, frontend(udp_vip, PROTOCOL_UDP), &[], None);
    assert_eq!(
        ask_tcp(tcp_vip).expect("the VIP with a backend"),
        lab.name(0)
    );

    // The endpoint goes away: the frontend stays, with no slot.
    let mut value = service_value(&maps, &tcp);
    value.count = 0;
    maps.put_service(&tcp, &value).expect("empty the service");
    maps.delete_slot(&SlotKey {
        service: 1,
        slot: 0,
    })
    .expect("delete the slot");

    let started = Instant::now();
    let error = connect(tcp_vip).expect_err("connect to a VIP without endpoints");
    let elapsed = started.elapsed();
    assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused, "{error}");
    assert!(
        elapsed < Duration::from_millis(200),
        "refused after {elapsed:?}, not at once"
    );
    let error = udp_client()
        .send_to(b"name?", udp_vip)
        .expect_err("send to a UDP VIP without endpoints");
    assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused, "{error}");

    // Not a frontend: the pod's own address, and a VIP-range address with no service, whose
    // route makes it unreachable unless something rewrites it.
    assert_eq!(
        ask_tcp(lab.tcp_backend(0)).expect("the pod itself"),
        lab.name(0)
    );
    let error = connect(lab.vip(11, 80)).expect_err("connect to an address of no service");
    assert_eq!(error.kind(), io::ErrorKind::HostUnreachable, "{error}");
    // Same VIP, another port: the port is part of the frontend.
    let error = connect(lab.vip(10, 81)).expect_err("connect to an unserved port");
    assert_eq!(error.kind(), io::ErrorKind::HostUnreachable, "{error}");

    // Removing what is not there succeeds, as the reconciler's retries need.
    let missing = frontend(lab.vip(99, 1), PROTOCOL_TCP);
    maps.delete_service(&missing)
        .expect("delete a missing service");
    maps.delete_slot(&SlotKey {
        service: 99,
        slot: 0,
    })
    .expect("delete a missing slot");
    maps.delete_backend(99).expect("delete a missing backend");
    maps.delete_affinity(99, None)
        .expect("delete missing affinity");
}

#[test]
fn udp_replies_come_from_the_vip_connected_or_not() {
    let lab = Lab::new("udp", 3, 2);
    let mut maps = lab.install();
    let vip = lab.vip(10, 53);
    let backends: Vec<_> = (0..2).map(|i| (i as u32 + 1, lab.udp_backend(i))).collect();
    put_service(&mut maps, 3, frontend(vip, PROTOCOL_UDP), &backends, None);
    // The same VIP and port over TCP is another frontend, and has no service.
    let error = connect(vip).expect_err("TCP to a UDP-only frontend");
    assert_eq!(error.kind(), io::ErrorKind::HostUnreachable, "{error}");

    let unconnected = udp_client();
    let mut seen = BTreeSet::new();
    for n in 0..40 {
        unconnected
            .send_to(format!("request {n}").as_bytes(), vip)
            .unwrap_or_else(|e| panic!("send datagram {n} to {vip}: {e}"));
        let (name, from) = receive(&unconnected);
        assert_eq!(from, SocketAddr::V4(vip), "source of reply {n}");
        seen.insert(name);
    }
    assert_eq!(seen, lab.names(), "40 datagrams should reach both backends");

    let connected = udp_client();
    connected
        .connect(vip)
        .expect("connect a UDP socket to the VIP");
    assert_eq!(
        connected.peer_addr().expect("getpeername"),
        SocketAddr::V4(vip)
    );
    for n in 0..5 {
        connected
            .send(b"name?")
            .expect("send on the connected socket");
        let (name, from) = receive(&connected);
        assert_eq!(from, SocketAddr::V4(vip), "source of reply {n}");
        assert!(lab.names().contains(&name), "reply {name:?}");
    }
}

#[test]
fn session_affinity_holds_until_its_timeout_or_its_backend_goes() {
    const TIMEOUT_SECS: u32 = 2;
    let lab = Lab::new("affinity", 4, 3);
    let mut maps = lab.install();
    let vip = lab.vip(10, 80);
    let key = frontend(vip, PROTOCOL_TCP);
    let id = 4;
    let backends: Vec<_> = (0..3).map(|i| (i as u32 + 1, lab.tcp_backend(i))).collect();
    put_service(&mut maps, id, key, &backends, Some(TIMEOUT_SECS));
    let backend_of = |name: &str| -> u32 {
        lab.pods
            .iter()
            .position(|pod| pod.name == name)
            .map(|i| i as u32 + 1)
            .unwrap_or_else(|| panic!("{name:?} names no pod"))
    };
    let ask_vip = || ask_tcp(vip).unwrap_or_else(|e| panic!("connect to {vip}: {e}"));

    let first = ask_vip();
    for n in 1..15 {
        assert_eq!(ask_vip(), first, "connection {n} left the client's backend");
    }
    let stuck = backend_of(&first);
    let other = stuck % 3 + 1;
    let third = other % 3 + 1;

    // Only `other` can be chosen afresh now, but the client keeps `stuck`, which still exists.
    single_slot(&mut maps, id, key, other);
    assert_eq!(
        backend_of(&ask_vip()),
        stuck,
        "affinity ignored within its timeout"
    );

    // Idle past the timeout: the kernel's clock, not a fake one, decides, so the test waits.
    thread::sleep(Duration::from_millis(u64::from(TIMEOUT_SECS) * 1000 + 500));
    assert_eq!(
        backend_of(&ask_vip()),
        other,
        "affinity outlived its timeout"
    );
    assert_eq!(
        backend_of(&ask_vip()),
        other,
        "the fresh choice did not stick"
    );

    // Forgetting the clients of another backend changes nothing; forgetting this one's does.
    single_slot(&mut maps, id, key, third);
    maps.delete_affinity(id, Some(stuck))
        .expect("delete affinity to another backend");
    assert_eq!(
        backend_of(&ask_vip()),
        other,
        "affinity to {other} was deleted"
    );
    maps.delete_affinity(id, Some(other))
        .expect("delete affinity to the backend");
    assert_eq!(
        backend_of(&ask_vip()),
        third,
        "affinity to {other} survived its deletion"
    );

    // A backend that is gone is not kept, even within the timeout and without a delete.
    single_slot(&mut maps, id, key, stuck);
    maps.delete_backend(third).expect("delete the backend");
    assert_eq!(
        backend_of(&ask_vip()),
        stuck,
        "affinity kept a deleted backend"
    );

    // Forgetting every client of the service.
    single_slot(&mut maps, id, key, other);
    maps.delete_affinity(id, None).expect("delete all affinity");
    assert_eq!(
        backend_of(&ask_vip()),
        other,
        "affinity survived deleting all"
    );
}

#[test]
fn installing_again_keeps_entries_and_connections_without_a_gap() {
    let lab = Lab::new("reinstall", 5, 2);
    let mut maps = lab.install();
    let vip = lab.vip(10, 80);
    let backends: Vec<_> = (0..2).map(|i| (i as u32 + 1, lab.tcp_backend(i))).collect();
    put_service(&mut maps, 5, frontend(vip, PROTOCOL_TCP), &backends, None);
    let listing = |maps: &PinnedMaps| {
        (
            maps.services().expect("list services"),
            maps.slots().expect("list slots"),
            maps.backends().expect("list backends"),
        )
    };
    let before = listing(&maps);
    let key = frontend(vip, PROTOCOL_TCP);
    assert_eq!(
        before,
        (
            vec![(
                key,
                ServiceValue {
                    id: 5,
                    count: 2,
                    flags: 0,
                    affinity_timeout: 0
                }
            )],
            vec![
                (
                    SlotKey {
                        service: 5,
                        slot: 0
                    },
                    1
                ),
                (
                    SlotKey {
                        service: 5,
                        slot: 1
                    },
                    2
                )
            ],
            backends
                .iter()
                .map(|(id, at)| (*id, backend(*at)))
                .collect::<Vec<_>>(),
        ),
        "the maps list what was put"
    );
    let mut kept = connect(vip).expect("connect to the VIP");
    let kept_name = ask(&mut kept).expect("ask over the kept connection");

    // What a daemon that crashed between pinning a new link and renaming it leaves: a stale
    // pin under the temporary name. Any object will do; a map is the easiest to pin.
    aya::maps::MapData::from_pin(lab.bpf_dir.join(bosun_ebpf_abi::SERVICE_MAP))
        .expect("open a pinned map")
        .pin(lab.bpf_dir.join("link_connect4_new"))
        .expect("pin a stale object");

    // A restarting daemon, and one that only reads the maps.
    let maps = lab.install();
    assert_eq!(listing(&maps), before, "install lost or changed entries");
    let reader = PinnedMaps::open(&lab.bpf_dir).expect("open the pinned maps");
    assert_eq!(listing(&reader), before);
    assert_eq!(
        ask(&mut kept).expect("ask again over the kept connection"),
        kept_name
    );
    assert_eq!(kept.peer_addr().expect("getpeername"), SocketAddr::V4(vip));
    assert!(lab
        .names()
        .contains(&ask_tcp(vip).expect("a new connection")));
    let mut pins: Vec<String> = fs::read_dir(&lab.bpf_dir)
        .expect("list the pins")
        .map(|entry| {
            entry
                .expect("read a pin")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    pins.sort();
    assert_eq!(
        pins,
        [
            "BOSUN_AFF_V1",
            "BOSUN_BE_V1",
            "BOSUN_MAG_V1",
            "BOSUN_RNAT_V1",
            "BOSUN_SLOT_V1",
            "BOSUN_SVC_V1",
            "link_connect4",
            "link_getpeername4",
            "link_recvmsg4",
            "link_sendmsg4",
        ]
    );

    // Connections all through five more installs: not one may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let names = lab.names();
    let client = thread::spawn({
        let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
        move || {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match ask_tcp(vip) {
                    Ok(name) if names.contains(&name) => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(name) => failures.push(format!("answer {name:?}")),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            failures
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
    let before_installs = answered.load(Ordering::Relaxed);
    for _ in 0..5 {
        drop(lab.install());
    }
    let during_installs = answered.load(Ordering::Relaxed) - before_installs;
    wait_for_answers(before_installs + during_installs + 1);
    stop.store(true, Ordering::Relaxed);
    let failures = client.join().expect("the client loop");
    assert!(
        failures.is_empty(),
        "{} failures: {failures:?}",
        failures.len()
    );
    // An install takes milliseconds and a connection far less: connections overlapped them.
    assert!(
        during_installs >= 5,
        "only {during_installs} connections during 5 installs"
    );
    assert_eq!(
        ask(&mut kept).expect("ask over the kept connection at the end"),
        kept_name
    );
}

#[test]
fn cleanup_detaches_the_programs_and_removes_every_pin() {
    let lab = Lab::new("cleanup", 6, 1);
    let mut maps = lab.install();
    let vip = lab.vip(10, 80);
    put_service(
        &mut maps,
        6,
        frontend(vip, PROTOCOL_TCP),
        &[(1, lab.tcp_backend(0))],
        None,
    );
    assert_eq!(ask_tcp(vip).expect("the VIP before cleanup"), lab.name(0));
    let program_ids: Vec<u32> = fs::read_dir(&lab.bpf_dir)
        .expect("list the pins")
        .filter_map(|entry| {
            let path = entry.expect("read a pin").path();
            let name = path.file_name()?.to_str()?;
            name.starts_with("link_").then(|| {
                let link = aya::programs::links::PinnedLink::from_pin(&path)
                    .unwrap_or_else(|e| panic!("open link {}: {e}", path.display()));
                aya::programs::links::FdLink::from(link)
                    .info()
                    .expect("link info")
                    .program_id()
            })
        })
        .collect();
    assert_eq!(program_ids.len(), 4, "{program_ids:?}");
    // The maps are still open here, as a running daemon's would be.

    assert!(
        cleanup(&lab.bpf_dir).expect("cleanup"),
        "cleanup found nothing"
    );
    assert!(
        !lab.bpf_dir.exists(),
        "{} is still there",
        lab.bpf_dir.display()
    );
    let started = Instant::now();
    let error = connect(vip).expect_err("the VIP after cleanup");
    assert_eq!(
        error.kind(),
        io::ErrorKind::HostUnreachable,
        "the VIP was still rewritten: {error}"
    );
    assert!(started.elapsed() < Duration::from_millis(200));
    let loaded: Vec<u32> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|program| program.id())
        .filter(|id| program_ids.contains(id))
        .collect();
    assert!(loaded.is_empty(), "programs {loaded:?} are still loaded");
    if let Ok(output) = Command::new("bpftool")
        .args(["cgroup", "show", &lab.cgroup.display().to_string()])
        .output()
    {
        let listing = String::from_utf8_lossy(&output.stdout);
        for id in &program_ids {
            assert!(
                !listing
                    .lines()
                    .any(|line| line.split_whitespace().next() == Some(&id.to_string())),
                "program {id} is still attached:\n{listing}"
            );
        }
    }
    // Writing to the maps a daemon still holds is harmless and steers nothing.
    put_service(
        &mut maps,
        6,
        frontend(lab.vip(12, 80), PROTOCOL_TCP),
        &[(1, lab.tcp_backend(0))],
        None,
    );
    let error = connect(lab.vip(12, 80)).expect_err("a VIP written after cleanup");
    assert_eq!(error.kind(), io::ErrorKind::HostUnreachable, "{error}");

    assert!(
        !cleanup(&lab.bpf_dir).expect("cleanup again"),
        "nothing was left"
    );
}

#[test]
fn install_needs_bpffs_and_open_needs_an_install() {
    ensure_bpffs();
    let cgroup = find_cgroup2().expect("find the cgroup2 mount");
    let outside = std::env::temp_dir().join("bosun-netdp-test-not-bpffs/maps");
    let error = install(&outside, &cgroup).expect_err("install outside bpffs");
    assert!(
        matches!(error, bosun_netdp::Error::NotBpffs { .. }),
        "{}",
        chain(&error)
    );
    assert!(!outside.exists(), "install created {}", outside.display());

    let nothing = Path::new(BPFFS).join("bosun-netdp-test-never-installed");
    let error = PinnedMaps::open(&nothing).expect_err("open without install");
    assert!(
        matches!(error, bosun_netdp::Error::OpenPinnedMap { .. }),
        "{}",
        chain(&error)
    );
    assert!(!cleanup(&nothing).expect("cleanup of nothing"));
}

#[test]
fn cleanup_reports_a_program_that_another_process_keeps_attached() {
    let lab = Lab::new("held-link", 7, 0);
    drop(lab.install());
    // What an older daemon that still holds its link would do.
    let held = aya::programs::links::FdLink::from(
        aya::programs::links::PinnedLink::from_pin(lab.bpf_dir.join("link_connect4"))
            .expect("open the pinned link"),
    );
    let held_program = held.info().expect("link info").program_id();

    let error = cleanup(&lab.bpf_dir).expect_err("cleanup while a link is held");
    match &error {
        bosun_netdp::Error::StillLoaded { program_ids } => {
            assert_eq!(program_ids, &[held_program])
        }
        other => panic!("{}", chain(other)),
    }
    assert!(
        !lab.bpf_dir.exists(),
        "the pins should be gone all the same"
    );

    // Letting go releases it; the kernel does so shortly after, not at once.
    drop(held);
    let deadline = Instant::now() + TIMEOUT;
    while aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .any(|program| program.id() == held_program)
    {
        assert!(
            Instant::now() < deadline,
            "program {held_program} outlived its last link"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn install_refuses_a_map_pinned_by_an_incompatible_build() {
    let lab = Lab::new("mismatch", 8, 0);
    fs::create_dir_all(&lab.bpf_dir).expect("create the pin directory");
    // The service map as a build with a 12-byte value would have left it.
    let hash = aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_HASH as u32;
    let (key_size, value_size) = (size_of::<ServiceKey>() as u32, 12);
    let old = aya_obj::Map::new_from_params(hash, key_size, value_size, 1 << 16, 1);
    aya::maps::MapData::create(old, "BOSUN_SVC_V1", None)
        .expect("create a map")
        .pin(lab.bpf_dir.join(bosun_ebpf_abi::SERVICE_MAP))
        .expect("pin it");

    let error = install(&lab.bpf_dir, &lab.cgroup).expect_err("install over an old map");
    match &error {
        bosun_netdp::Error::PinnedMapMismatch { map, field, .. } => {
            assert_eq!((*map, *field), (bosun_ebpf_abi::SERVICE_MAP, "value size"))
        }
        other => panic!("{}", chain(other)),
    }
    let pins: Vec<_> = fs::read_dir(&lab.bpf_dir)
        .expect("list the pins")
        .map(|entry| entry.expect("read a pin").file_name())
        .collect();
    assert_eq!(
        pins,
        ["BOSUN_SVC_V1"],
        "a refused install attached or pinned something"
    );
}
