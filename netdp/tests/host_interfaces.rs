//! `pod_interfaces` against real network namespaces, veths, bridges and routes, wired the way
//! the `ptp` and `bridge` CNI plugins wire pods. Needs root and iproute2's `ip`, `unshare` and
//! `nsenter`. Addresses are in 10.231.0.0/16, which nothing else on the machine uses.
//!
//! Names (namespaces, links) and subnets are unique per test, so tests can run in parallel;
//! what a test creates is removed by guards, also when it fails.

mod common;

use std::{
    fs,
    net::Ipv4Addr,
    os::unix::fs::MetadataExt,
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use bosun_netdp::{
    netlink::HostInterface,
    pod_interfaces::{find_host_interface, PodInterfaces},
};
use common::{chain, ip, quiet_ip};

/// A network namespace named by `ip netns add`, as containerd names a pod's; deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test creates network namespaces: run it as root"
        );
        quiet_ip(&["netns", "del", name]);
        ip(&["netns", "add", name]);
        Self(name.to_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        quiet_ip(&["netns", "del", &self.0]);
    }
}

/// A network namespace that only a process holds (`unshare --net sleep`), as a runtime that
/// names no namespace in /run/netns leaves it. Killed by its pid on drop, which ends the
/// namespace and whatever links are in it.
struct Holder(Child);

impl Holder {
    fn spawn() -> Self {
        let child = Command::new("unshare")
            .args(["--net", "sleep", "60"])
            .spawn()
            .expect("start unshare --net sleep 60");
        let holder = Self(child);
        // unshare enters its new namespace before it execs sleep; wait for that.
        let own = inode("/proc/self/ns/net");
        let deadline = Instant::now() + Duration::from_secs(5);
        while inode(&holder.netns_path()) == own {
            assert!(
                Instant::now() < deadline,
                "unshare never left our namespace"
            );
            thread::sleep(Duration::from_millis(10));
        }
        holder
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }

    fn netns_path(&self) -> String {
        format!("/proc/{}/ns/net", self.0.id())
    }

    /// Runs `ip ARGS` in the held namespace.
    fn ip(&self, args: &[&str]) {
        let output = Command::new("nsenter")
            .arg(format!("--net={}", self.netns_path()))
            .arg("ip")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run nsenter ip {args:?}: {e}"));
        assert!(
            output.status.success(),
            "nsenter ip {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }

    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.stop();
    }
}

fn inode(path: &str) -> Option<u64> {
    fs::metadata(path).ok().map(|metadata| metadata.ino())
}

/// A link in the test's namespace, deleted on drop (a veth's peer goes with it).
struct Link(String);

impl Link {
    /// A veth `name` here whose peer is `eth0` in `netns` (a name or a pid), both up.
    fn veth_to_pod(name: &str, netns: &str) -> Self {
        quiet_ip(&["link", "del", name]);
        ip(&[
            "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", netns,
        ]);
        ip(&["link", "set", name, "up"]);
        Self(name.to_owned())
    }

    /// A bridge with `address`, up, as the bridge plugin makes `cni0`.
    fn bridge(name: &str, address: &str) -> Self {
        quiet_ip(&["link", "del", name]);
        ip(&["link", "add", name, "type", "bridge"]);
        let bridge = Self(name.to_owned());
        ip(&["addr", "add", address, "dev", name]);
        ip(&["link", "set", name, "up"]);
        bridge
    }

    fn host_interface(&self) -> HostInterface {
        HostInterface {
            ifindex: nix::net::if_::if_nametoindex(self.0.as_str())
                .unwrap_or_else(|e| panic!("ifindex of {}: {e}", self.0)),
            name: self.0.clone(),
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        quiet_ip(&["link", "del", &self.0]);
    }
}

/// A route in the test's namespace, deleted on drop.
struct Route(String, String);

impl Route {
    fn add(prefix: &str, dev: &str) -> Self {
        ip(&["route", "add", prefix, "dev", dev]);
        Self(prefix.to_owned(), dev.to_owned())
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        quiet_ip(&["route", "del", &self.0, "dev", &self.1]);
    }
}

fn find(ip: &str) -> Option<HostInterface> {
    let ip: Ipv4Addr = ip.parse().expect("a test address");
    find_host_interface(ip).unwrap_or_else(|e| panic!("find_host_interface({ip}): {}", chain(&e)))
}

fn find_in(pods: &mut PodInterfaces, ip: &str) -> Option<HostInterface> {
    let ip: Ipv4Addr = ip.parse().expect("a test address");
    pods.find(ip)
        .unwrap_or_else(|e| panic!("PodInterfaces::find({ip}): {}", chain(&e)))
}

#[test]
fn a_routed_pod_is_found_by_its_host_route() {
    // As the ptp plugin wires a pod: a /32 in the pod, a host route to the node-side veth.
    let pod = Netns::new("bhi1-pod");
    let host = Link::veth_to_pod("bhi1-h", &pod.0);
    ip(&["-n", &pod.0, "addr", "add", "10.231.1.2/32", "dev", "eth0"]);
    ip(&["-n", &pod.0, "link", "set", "eth0", "up"]);
    let _route = Route::add("10.231.1.2/32", &host.0);

    assert_eq!(find("10.231.1.2"), Some(host.host_interface()));

    // The route alone decides: an address routed to the veth that no namespace has.
    let _second = Route::add("10.231.1.3/32", &host.0);
    assert_eq!(find("10.231.1.3"), Some(host.host_interface()));
}

#[test]
fn a_bridged_pod_is_found_in_its_namespace_whoever_holds_it() {
    let bridge = Link::bridge("bhi-br0", "10.231.2.1/24");

    // One pod in a namespace named in /run/netns.
    let named = Netns::new("bhi2-pod");
    let named_host = Link::veth_to_pod("bhi2-h1", &named.0);
    ip(&["link", "set", &named_host.0, "master", &bridge.0]);
    ip(&[
        "-n",
        &named.0,
        "addr",
        "add",
        "10.231.2.2/24",
        "dev",
        "eth0",
    ]);
    ip(&["-n", &named.0, "link", "set", "eth0", "up"]);

    // One in a namespace that only a process holds: found through /proc.
    let mut holder = Holder::spawn();
    let held_host = Link::veth_to_pod("bhi2-h2", &holder.pid());
    ip(&["link", "set", &held_host.0, "master", &bridge.0]);
    holder.ip(&["addr", "add", "10.231.2.3/24", "dev", "eth0"]);
    holder.ip(&["link", "set", "eth0", "up"]);

    assert_eq!(find("10.231.2.2"), Some(named_host.host_interface()));
    assert_eq!(find("10.231.2.3"), Some(held_host.host_interface()));

    // One cache for both, as `bosun proxy` resolves every pod of the node.
    let mut pods = PodInterfaces::new();
    assert_eq!(
        find_in(&mut pods, "10.231.2.2"),
        Some(named_host.host_interface())
    );
    assert_eq!(
        find_in(&mut pods, "10.231.2.3"),
        Some(held_host.host_interface())
    );
    // An address the cache has not seen yet is found by scanning again.
    holder.ip(&["addr", "add", "10.231.2.4/24", "dev", "eth0"]);
    assert_eq!(
        find_in(&mut pods, "10.231.2.4"),
        Some(held_host.host_interface())
    );
    // An address the cache holds, but that its namespace no longer has, is not trusted.
    holder.ip(&["addr", "del", "10.231.2.4/24", "dev", "eth0"]);
    assert_eq!(find_in(&mut pods, "10.231.2.4"), None);

    // Once its process exits, the namespace and its addresses are gone.
    holder.stop();
    assert_eq!(find_in(&mut pods, "10.231.2.3"), None);
    assert_eq!(
        find_in(&mut pods, "10.231.2.2"),
        Some(named_host.host_interface())
    );
}

#[test]
fn an_address_no_local_pod_has_is_none() {
    // Through the default route, or no route at all.
    assert_eq!(find("10.231.99.99"), None);

    // In a bridge's subnet, so every namespace is scanned, but none has it.
    let bridge = Link::bridge("bhi3-br0", "10.231.3.1/24");
    let pod = Netns::new("bhi3-pod");
    let host = Link::veth_to_pod("bhi3-h", &pod.0);
    ip(&["link", "set", &host.0, "master", &bridge.0]);
    ip(&["-n", &pod.0, "addr", "add", "10.231.3.2/24", "dev", "eth0"]);
    assert_eq!(find("10.231.3.9"), None);

    // The node's own address, as a hostNetwork pod's is.
    assert_eq!(find("10.231.3.1"), None);
}
