//! `netlink` against real network namespaces and veth pairs. Needs root (`CAP_NET_ADMIN`,
//! `CAP_SYS_ADMIN` for `setns`) and iproute2's `ip`.
//!
//! Every test has its own namespaces, interface names and addresses (10.219.N.0/24), so the
//! tests run in parallel; what a test creates is removed by guards, also when it fails.

mod common;

use std::{net::Ipv4Addr, os::unix::fs::MetadataExt, path::Path, process::Command};

use bosun_netdp::{
    netlink::{host_interface, node_addresses, HostInterface},
    Error,
};
use common::{chain, in_netns, ip, quiet_ip};

/// A network namespace, deleted on drop.
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

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        quiet_ip(&["netns", "del", &self.0]);
    }
}

/// A veth pair: deleting either end deletes both, so dropping this deletes the end it names,
/// in namespace `ns` (`None`: the test's own).
struct Veth {
    ns: Option<String>,
    name: String,
}

impl Veth {
    /// `name` in `ns`, its peer `peer` in `peer_ns`.
    fn new(ns: Option<&Netns>, name: &str, peer_ns: &Netns, peer: &str) -> Self {
        let mut args = Vec::new();
        if let Some(ns) = ns {
            args.extend(["-n", ns.0.as_str()]);
        }
        quiet_ip(&[&args[..], &["link", "del", name]].concat());
        args.extend([
            "link", "add", name, "type", "veth", "peer", "name", peer, "netns", &peer_ns.0,
        ]);
        ip(&args);
        Self {
            ns: ns.map(|ns| ns.0.clone()),
            name: name.to_owned(),
        }
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        match &self.ns {
            Some(ns) => quiet_ip(&["-n", ns, "link", "del", &self.name]),
            None => quiet_ip(&["link", "del", &self.name]),
        }
    }
}

/// An interface's ifindex as `ip` reports it, in `ns` or the test's own namespace.
fn ifindex(ns: Option<&Netns>, name: &str) -> u32 {
    let mut command = Command::new("ip");
    if let Some(ns) = ns {
        command.args(["-n", &ns.0]);
    }
    let output = command
        .args(["-o", "link", "show", "dev", name])
        .output()
        .expect("run ip link show");
    let text = String::from_utf8_lossy(&output.stdout);
    text.split(':')
        .next()
        .and_then(|index| index.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ifindex for {name} in {text:?}"))
}

#[test]
fn finds_the_node_side_peer_whatever_the_cni_named_it() {
    let pod = Netns::new("bnl1-pod.ns");
    // Not a name bosun would choose: a dot, a dash, an underscore, upper case.
    let host = Veth::new(None, "bnl1.h-9e_X", &pod, "eth0");
    ip(&["link", "set", &host.name, "up"]);

    let found = host_interface(Path::new(&pod.path()))
        .unwrap_or_else(|e| panic!("host_interface: {}", chain(&e)));
    assert_eq!(
        found,
        HostInterface {
            ifindex: ifindex(None, &host.name),
            name: host.name.clone(),
        }
    );

    // The same namespace named through a process in it, as a runtime without `ip netns`
    // names it.
    let mut sleeper = Sleeper(
        Command::new("ip")
            .args(["netns", "exec", &pod.0, "sleep", "60"])
            .spawn()
            .expect("start a process in the pod"),
    );
    let path = format!("/proc/{}/ns/net", sleeper.0.id());
    // `ip netns exec` enters the namespace before it execs sleep.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let inode = |path: &str| std::fs::metadata(path).map(|m| m.ino()).ok();
    while inode(&path) != inode(&pod.path()) {
        assert!(
            std::time::Instant::now() < deadline,
            "{path} never entered the pod"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let found_by_pid = host_interface(Path::new(&path))
        .unwrap_or_else(|e| panic!("host_interface({path}): {}", chain(&e)));
    assert_eq!(found_by_pid, found);
    sleeper.stop();
}

/// A process of this test's own, killed on drop.
struct Sleeper(std::process::Child);

impl Sleeper {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn prefers_eth0_then_the_veth_with_a_global_address() {
    let pod = Netns::new("bnl2-pod");
    let first = Veth::new(None, "bnl2-first", &pod, "net1");
    let second = Veth::new(None, "bnl2-second", &pod, "eth0");
    let found = host_interface(Path::new(&pod.path()))
        .unwrap_or_else(|e| panic!("host_interface: {}", chain(&e)));
    assert_eq!(found.name, second.name, "eth0's peer");
    assert_eq!(found.ifindex, ifindex(None, &second.name));

    // Without eth0: two candidates, and the one with a global IPv4 address wins.
    drop(second);
    let third = Veth::new(None, "bnl2-third", &pod, "net2");
    ip(&["-n", &pod.0, "addr", "add", "10.219.2.2/24", "dev", "net2"]);
    ip(&["-n", &pod.0, "link", "set", "net2", "up"]);
    let found = host_interface(Path::new(&pod.path()))
        .unwrap_or_else(|e| panic!("host_interface: {}", chain(&e)));
    assert_eq!(
        found.name, third.name,
        "the peer of the veth with 10.219.2.2"
    );

    // Both with one: nothing says which is the pod's.
    ip(&["-n", &pod.0, "addr", "add", "10.219.2.6/24", "dev", "net1"]);
    ip(&["-n", &pod.0, "link", "set", "net1", "up"]);
    let error = host_interface(Path::new(&pod.path())).expect_err("two equal candidates");
    assert!(
        matches!(&error, Error::AmbiguousPodInterface { candidates, .. } if candidates.len() == 2),
        "{}",
        chain(&error)
    );
    drop(first);
}

#[test]
fn a_pod_whose_peer_is_in_another_namespace_than_the_callers_is_refused() {
    let pod = Netns::new("bnl3-pod");
    let node = Netns::new("bnl3-node");
    let elsewhere = Netns::new("bnl3-else");
    // Called from `node`, but the pod's veth leads to `elsewhere`.
    let _pair = Veth::new(Some(&elsewhere), "bnl3-h", &pod, "eth0");
    let path = pod.path();
    let error = in_netns(&node.0, || host_interface(Path::new(&path)))
        .expect_err("a peer outside the caller's namespace");
    // A fresh namespace has only lo (ifindex 1): the peer's index names nothing there, or, if
    // the indexes happen to agree, something that is not the peer.
    assert!(
        matches!(
            &error,
            Error::HostInterfaceNotFound { .. } | Error::HostInterfaceMismatch { .. }
        ),
        "{}",
        chain(&error)
    );
    assert!(chain(&error).contains(&path), "{}", chain(&error));

    // Called from `elsewhere`, the same pod is found.
    let found = in_netns(&elsewhere.0, || host_interface(Path::new(&path)))
        .unwrap_or_else(|e| panic!("host_interface from the peer's namespace: {}", chain(&e)));
    assert_eq!(
        found,
        HostInterface {
            ifindex: ifindex(Some(&elsewhere), "bnl3-h"),
            name: "bnl3-h".to_owned(),
        }
    );
}

#[test]
fn a_namespace_without_a_veth_leading_out_says_so() {
    let pod = Netns::new("bnl4-pod");
    ip(&["-n", &pod.0, "link", "set", "lo", "up"]);
    // A veth pair entirely inside the pod leads nowhere.
    ip(&[
        "-n", &pod.0, "link", "add", "in0", "type", "veth", "peer", "name", "in1",
    ]);
    let error = host_interface(Path::new(&pod.path())).expect_err("no veth leads out");
    match &error {
        Error::NoPodInterface { netns, links } => {
            assert_eq!(netns, Path::new(&pod.path()));
            assert!(links.contains(&"in0".to_owned()), "{links:?}");
        }
        other => panic!("{}", chain(other)),
    }
}

#[test]
fn a_missing_or_wrong_namespace_path_is_a_clear_error() {
    let missing = Path::new("/run/netns/bnl5-never-created");
    let error = host_interface(missing).expect_err("a missing namespace");
    assert!(
        matches!(&error, Error::OpenNetns { netns, source }
            if netns == missing && source.kind() == std::io::ErrorKind::NotFound),
        "{}",
        chain(&error)
    );
    assert!(
        error.to_string().contains("/run/netns/bnl5-never-created"),
        "{error}"
    );

    let not_a_namespace = Path::new("/proc/self/status");
    let error = host_interface(not_a_namespace).expect_err("a file that is no namespace");
    assert!(
        matches!(&error, Error::EnterNetns { netns, source }
            if netns == not_a_namespace && *source == nix::errno::Errno::EINVAL),
        "{}",
        chain(&error)
    );
}

#[test]
fn node_addresses_lists_every_ipv4_address_of_the_namespace() {
    let peer = Netns::new("bnl6-peer");
    let veth = Veth::new(None, "bnl6-h", &peer, "eth0");
    let added = Ipv4Addr::new(10, 219, 6, 1);
    ip(&["addr", "add", &format!("{added}/30"), "dev", &veth.name]);
    // A second address on the same interface, and one that a down link also has.
    ip(&["addr", "add", "10.219.6.9/30", "dev", &veth.name]);

    let addresses = node_addresses().unwrap_or_else(|e| panic!("node_addresses: {}", chain(&e)));
    assert!(addresses.contains(&added), "{addresses:?}");
    assert!(
        addresses.contains(&Ipv4Addr::new(10, 219, 6, 9)),
        "{addresses:?}"
    );
    let mut sorted = addresses.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(addresses, sorted, "sorted, without duplicates");

    // In a namespace of its own, exactly what is there.
    let node = Netns::new("bnl6-node");
    ip(&["-n", &node.0, "link", "set", "lo", "up"]);
    ip(&["-n", &node.0, "addr", "add", "10.219.6.17/32", "dev", "lo"]);
    let addresses = in_netns(&node.0, node_addresses)
        .unwrap_or_else(|e| panic!("node_addresses in {}: {}", node.0, chain(&e)));
    assert_eq!(
        addresses,
        [Ipv4Addr::new(10, 219, 6, 17), Ipv4Addr::LOCALHOST],
        "10.219.6.17 sorts before 127.0.0.1"
    );
    drop(veth);
}

#[test]
fn default_route_interfaces_names_each_default_routes_device() {
    let node = Netns::new("bnl7-node");
    let (a, b) = (Netns::new("bnl7-a"), Netns::new("bnl7-b"));
    for (name, peer, address) in [("up0", &a, "10.219.7.1/30"), ("up1", &b, "10.219.7.5/30")] {
        ip(&[
            "-n", &node.0, "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns",
            &peer.0,
        ]);
        ip(&["-n", &node.0, "addr", "add", address, "dev", name]);
        ip(&["-n", &node.0, "link", "set", name, "up"]);
    }
    let interfaces = || {
        in_netns(&node.0, bosun_netdp::netlink::default_route_interfaces)
            .unwrap_or_else(|e| panic!("default_route_interfaces: {}", chain(&e)))
    };
    assert_eq!(interfaces(), [] as [u32; 0], "no default route yet");

    // One default route; a route of another table and a narrower one do not count.
    ip(&[
        "-n",
        &node.0,
        "route",
        "add",
        "default",
        "via",
        "10.219.7.2",
    ]);
    ip(&[
        "-n",
        &node.0,
        "route",
        "add",
        "default",
        "via",
        "10.219.7.6",
        "table",
        "100",
    ]);
    ip(&[
        "-n",
        &node.0,
        "route",
        "add",
        "10.219.8.0/24",
        "via",
        "10.219.7.6",
    ]);
    let up0 = ifindex(Some(&node), "up0");
    let up1 = ifindex(Some(&node), "up1");
    assert_eq!(interfaces(), [up0]);

    // A multipath default route: both devices.
    ip(&[
        "-n",
        &node.0,
        "route",
        "replace",
        "default",
        "nexthop",
        "via",
        "10.219.7.2",
        "nexthop",
        "via",
        "10.219.7.6",
    ]);
    let mut both = [up0, up1];
    both.sort_unstable();
    assert_eq!(interfaces(), both);
}
