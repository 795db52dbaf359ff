//! Loads the probe into the real kernel, attaches it to a veth and sends real packets through it.
//! Needs root (`CAP_BPF`, `CAP_NET_ADMIN`, `CAP_SYS_ADMIN` for `setns`) and iproute2's `ip`.

mod common;

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    process::Command,
    time::Duration,
};

use bosun_netdp::{PacketCount, ProbeCounter, XdpMode};
use common::{in_netns, ip};

const RECEIVER: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
const SENDER: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
const PORT: u16 = 4789;
const DATAGRAMS: u64 = 5;
const PAYLOAD: &[u8] = b"bosun probe datagram";
/// Ethernet, IPv4 and UDP headers, which XDP sees in front of the payload.
const HEADERS: u64 = 14 + 20 + 8;

#[test]
fn probe_counts_packets_in_generic_mode() {
    probe_counts_packets('g', XdpMode::Generic);
}

#[test]
fn probe_counts_packets_in_driver_mode() {
    probe_counts_packets('d', XdpMode::Driver);
}

fn probe_counts_packets(tag: char, mode: XdpMode) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test loads BPF programs and creates network namespaces: run it as root"
    );
    // Declared first so it is dropped last, after the probe has let go of the interface.
    let pair = NetnsPair::create(tag);
    let mut probe = ProbeCounter::load().expect("load the probe");

    in_netns(&pair.receiver, || probe.attach_xdp(&pair.receiver, mode))
        .unwrap_or_else(|e| panic!("attach the probe to {}: {e:?}", pair.receiver));
    let receiver = in_netns(&pair.receiver, || {
        UdpSocket::bind(SocketAddrV4::new(RECEIVER, PORT))
    })
    .expect("bind the receiving socket");
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set a receive timeout");
    let sender = in_netns(&pair.sender, || {
        UdpSocket::bind(SocketAddrV4::new(SENDER, 0))
    })
    .expect("bind the sending socket");

    let before = probe.read().expect("read the counter");
    for _ in 0..DATAGRAMS {
        sender
            .send_to(PAYLOAD, SocketAddrV4::new(RECEIVER, PORT))
            .expect("send a datagram");
    }
    // Every datagram must arrive: the probe passes what it counts.
    let mut buf = [0u8; 64];
    for n in 0..DATAGRAMS {
        let (len, from) = receiver
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("datagram {n} of {DATAGRAMS} did not arrive: {e}"));
        assert_eq!(&buf[..len], PAYLOAD);
        assert_eq!(from.ip(), SENDER);
    }
    // The probe ran before the stack delivered each datagram, so the counter is final here.
    let after = probe.read().expect("read the counter");

    // At least: ARP and IPv6 neighbour discovery from the peer are counted too.
    let seen = PacketCount {
        packets: after.packets - before.packets,
        bytes: after.bytes - before.bytes,
    };
    assert!(
        seen.packets >= DATAGRAMS,
        "probe counted {seen:?} for {DATAGRAMS} datagrams"
    );
    assert!(
        seen.bytes >= DATAGRAMS * (HEADERS + PAYLOAD.len() as u64),
        "probe counted {seen:?} for {DATAGRAMS} datagrams of {} bytes",
        HEADERS + PAYLOAD.len() as u64
    );
}

/// Two fresh network namespaces joined by a veth pair. Each namespace and the veth end inside
/// it share one name: `bsnt<pid><tag>a` receives, `bsnt<pid><tag>b` sends. The process id and
/// the per-test tag make the names unique, so concurrent test processes and tests running in
/// parallel threads never race over them. Both namespaces, and so the veth pair, are deleted
/// on drop, also when the test fails.
struct NetnsPair {
    receiver: String,
    sender: String,
}

impl NetnsPair {
    fn create(tag: char) -> Self {
        let pid = std::process::id();
        let pair = Self {
            receiver: format!("bsnt{pid}{tag}a"),
            sender: format!("bsnt{pid}{tag}b"),
        };
        // A namespace by these names can only be left over from a dead process that had our
        // pid: nothing alive uses it.
        pair.delete();
        let (a, b) = (pair.receiver.as_str(), pair.sender.as_str());
        ip(&["netns", "add", a]);
        ip(&["netns", "add", b]);
        ip(&[
            "link", "add", a, "netns", a, "type", "veth", "peer", "name", b, "netns", b,
        ]);
        for (ns, addr) in [(a, RECEIVER), (b, SENDER)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", ns]);
            ip(&["-n", ns, "link", "set", ns, "up"]);
        }
        pair
    }

    fn delete(&self) {
        for ns in [&self.receiver, &self.sender] {
            // Fails when the namespace does not exist, which is fine.
            let _ = Command::new("ip").args(["netns", "delete", ns]).output();
        }
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        self.delete();
    }
}
