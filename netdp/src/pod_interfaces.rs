//! Which interface of the node leads to a pod, knowing only the pod's IPv4 address: what
//! `bosun proxy` needs to attach NetworkPolicy programs to pods that another runtime started.
//!
//! Two ways, tried in this order:
//! - **Routed CNIs** (the `ptp` plugin, Calico and others that give every pod a host route):
//!   the node's route to the pod's address leads, without a gateway, to a veth whose peer is in
//!   another namespace. That veth is the answer; one `RTM_GETROUTE` finds it.
//! - **Bridged CNIs** (the `bridge` plugin, flannel's `cni0`): the route leads to a bridge, or
//!   to any other device that is no pod's veth. The pod's namespace is then the one that has the
//!   address: every network namespace that a process (`/proc/*/ns/net`) or a file in
//!   `/run/netns` or `/var/run/netns` holds is entered and its addresses listed, and the peer of
//!   that namespace's veth ([`host_interface`]) is the answer. [`PodInterfaces`] keeps what a
//!   scan found, so resolving many pods scans once.
//!
//! Not covered: CNIs that give pods no veth (ipvlan, macvlan, SR-IOV), whose pods have no
//! node-side interface of their own, and pods behind an overlay device or a gateway. An address
//! the node reaches through a gateway, the default route, or not at all, or one of the node's own
//! (a `hostNetwork` pod's), is no local pod's: the answer is `None` without a scan.

use std::{
    collections::HashMap,
    fs, io,
    net::Ipv4Addr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage},
    route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteType},
    AddressFamily, RouteNetlinkMessage,
};
use nix::errno::Errno;

use crate::{
    netlink::{
        dump_ipv4_addresses, get_link, host_interface, in_netns, link_name, request, HostInterface,
        OWN_NETNS,
    },
    Error,
};

/// Where network namespaces are named by file, before those that processes hold: a name
/// outlives any one process, so the cache prefers it.
const NETNS_DIRS: [&str; 2] = ["/run/netns", "/var/run/netns"];

const PROC: &str = "/proc";

/// The node-side interface of the pod that has `ip`, if any: [`PodInterfaces::find`] without
/// a cache, for a single lookup.
pub fn find_host_interface(ip: Ipv4Addr) -> Result<Option<HostInterface>, Error> {
    PodInterfaces::default().find(ip)
}

/// Finds pods' node-side interfaces by their IPv4 addresses, and remembers which network
/// namespace had which addresses, so that resolving every pod of the node scans the node's
/// namespaces once rather than once per pod. A cached answer is checked before it is used; the
/// cache is scanned afresh whenever it does not know an address.
///
/// All lookups happen in the calling thread's network namespace, the node's.
#[derive(Debug, Default)]
pub struct PodInterfaces {
    /// Network namespace (the inode of its nsfs file) → what the last scan saw in it.
    namespaces: HashMap<u64, PodNetns>,
}

#[derive(Clone, Debug)]
struct PodNetns {
    /// A file that named the namespace when it was scanned. A `/proc/<pid>` path may name
    /// another namespace later, once the pid is reused, so the inode is checked on every use.
    path: PathBuf,
    addresses: Vec<Ipv4Addr>,
}

impl PodInterfaces {
    /// An empty cache; the first lookup of a bridged pod fills it.
    pub fn new() -> Self {
        Self::default()
    }

    /// The node-side interface through which the pod with `ip` is reached, or `None` when no
    /// local pod has it yet (the CNI plugin may still be wiring the pod: retry later).
    ///
    /// An error says why the node's routes or the pod's namespace could not be read; the
    /// errors of other namespaces that a scan could not read are returned only when no
    /// namespace had `ip`, since one of them might have been the pod's.
    pub fn find(&mut self, ip: Ipv4Addr) -> Result<Option<HostInterface>, Error> {
        match route_to(ip)? {
            Reached::ByVeth(found) => Ok(Some(found)),
            Reached::NotLocally => Ok(None),
            Reached::ThroughSharedDevice => self.find_by_namespace(ip),
        }
    }

    fn find_by_namespace(&mut self, ip: Ipv4Addr) -> Result<Option<HostInterface>, Error> {
        if let Some(found) = self.find_cached(ip)? {
            return Ok(Some(found));
        }
        let unreadable = self.scan()?;
        if let Some(found) = self.find_cached(ip)? {
            return Ok(Some(found));
        }
        match unreadable {
            Some(error) => Err(error),
            None => Ok(None),
        }
    }

    /// The host interface of the one cached namespace that still has `ip` and whose veth leads
    /// to this namespace. Entries found stale are dropped.
    fn find_cached(&mut self, ip: Ipv4Addr) -> Result<Option<HostInterface>, Error> {
        let holders: Vec<(u64, PodNetns)> = self
            .namespaces
            .iter()
            .filter(|(_, netns)| netns.addresses.contains(&ip))
            .map(|(inode, netns)| (*inode, netns.clone()))
            .collect();
        let mut found: Vec<(PathBuf, HostInterface)> = Vec::new();
        let mut last_error = None;
        for (inode, netns) in holders {
            // Still the same namespace, and still with the address?
            match probe(&netns.path) {
                Ok(now) if now.inode == inode && now.addresses.contains(&ip) => {
                    self.namespaces.insert(inode, now.netns(&netns.path));
                }
                Ok(_) => {
                    self.namespaces.remove(&inode);
                    continue;
                }
                Err(error) if is_gone(&error) => {
                    self.namespaces.remove(&inode);
                    continue;
                }
                Err(error) => return Err(error),
            }
            match host_interface(&netns.path) {
                // The path may have come to name another namespace since the probe.
                Ok(_) if inode_of(&netns.path) != Some(inode) => {
                    self.namespaces.remove(&inode);
                }
                Ok(interface) => found.push((netns.path, interface)),
                Err(error) if is_gone(&error) => {
                    self.namespaces.remove(&inode);
                }
                // A namespace that has the address but no veth leading here (a test
                // namespace, a VM's, an ipvlan pod's) is not a pod this node can reach.
                Err(error) => last_error = Some(error),
            }
        }
        match found.len() {
            0 => last_error.map_or(Ok(None), Err),
            1 => Ok(found.pop().map(|(_, interface)| interface)),
            _ => Err(Error::AmbiguousPodNetns {
                ip,
                netns: found.into_iter().map(|(path, _)| path).collect(),
            }),
        }
    }

    /// Replaces the cache with what every network namespace of the node but the caller's holds
    /// now. Returns the first error of a namespace that could not be read (and so is not in
    /// the cache); namespaces that vanish meanwhile are left out silently.
    fn scan(&mut self) -> Result<Option<Error>, Error> {
        let own = fs::metadata(OWN_NETNS).map_err(|source| Error::OpenNetns {
            netns: PathBuf::from(OWN_NETNS),
            source,
        })?;
        let mut namespaces = HashMap::new();
        let mut unreadable = None;
        for path in netns_files()? {
            let Ok(file) = fs::metadata(&path) else {
                // The process exited or the name was deleted.
                continue;
            };
            // Every network namespace is a file of the one nsfs; anything else (a name whose
            // mount was just undone) is none.
            if file.dev() != own.dev()
                || file.ino() == own.ino()
                || namespaces.contains_key(&file.ino())
            {
                continue;
            }
            match probe(&path) {
                Ok(seen) if seen.inode == own.ino() => {}
                Ok(seen) => {
                    namespaces.entry(seen.inode).or_insert(seen.netns(&path));
                }
                Err(error) if is_gone(&error) => {}
                Err(error) => {
                    unreadable.get_or_insert(error);
                }
            }
        }
        self.namespaces = namespaces;
        Ok(unreadable)
    }
}

/// How the node reaches an address, as its routes say.
#[derive(Debug)]
enum Reached {
    /// Straight through a veth leading to another namespace: a routed CNI's pod.
    ByVeth(HostInterface),
    /// Straight through a device that is no pod's veth (a bridge): a bridged CNI's pod, or
    /// none.
    ThroughSharedDevice,
    /// Through a gateway, the default route, or not at all; or the address is the node's own.
    NotLocally,
}

/// The route lookup's verdict before the output device is looked at.
#[derive(Debug, PartialEq, Eq)]
enum RouteVerdict {
    Device(u32),
    NotLocally,
}

/// Errors of a route lookup that mean there is no usable route: `ENETUNREACH` (none at all),
/// and the answers for `unreachable` (`EHOSTUNREACH`), `prohibit` (`EACCES`) and `blackhole`
/// (`EINVAL`) routes.
const NO_ROUTE: [Errno; 4] = [
    Errno::ENETUNREACH,
    Errno::EHOSTUNREACH,
    Errno::EACCES,
    Errno::EINVAL,
];

/// Asks the kernel which route of the calling thread's namespace matches `ip`
/// (`ip route get fibmatch IP`), and what its output device is.
fn route_to(ip: Ipv4Addr) -> Result<Reached, Error> {
    let netns = Path::new(OWN_NETNS);
    let mut message = RouteMessage::default();
    message.header.address_family = AddressFamily::Inet;
    message.header.destination_prefix_length = 32;
    // The matching route as configured (its prefix, gateway, device), rather than the
    // per-destination result the kernel computes from it.
    message.header.flags = RouteFlags::FibMatch;
    message
        .attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(ip)));
    let replies = match request(
        RouteNetlinkMessage::GetRoute(message),
        0,
        "get route",
        netns,
    ) {
        Ok(replies) => replies,
        Err(Error::NetlinkRefused { errno, .. }) if NO_ROUTE.contains(&Errno::from_raw(errno)) => {
            return Ok(Reached::NotLocally)
        }
        Err(error) => return Err(error),
    };
    let verdict = replies
        .iter()
        .find_map(|reply| match reply {
            RouteNetlinkMessage::NewRoute(route) => Some(route_verdict(route)),
            _ => None,
        })
        .unwrap_or(RouteVerdict::NotLocally);
    let RouteVerdict::Device(oif) = verdict else {
        return Ok(Reached::NotLocally);
    };
    let link = match get_link(oif, netns) {
        Ok(link) => link,
        // The device went away since the lookup: the pod is being torn down or rewired.
        Err(Error::NetlinkRefused { errno, .. }) if errno == Errno::ENODEV as i32 => {
            return Ok(Reached::NotLocally)
        }
        Err(error) => return Err(error),
    };
    if !leads_to_another_namespace(&link) {
        return Ok(Reached::ThroughSharedDevice);
    }
    Ok(Reached::ByVeth(HostInterface {
        ifindex: oif,
        name: link_name(&link).unwrap_or_default(),
    }))
}

/// The pure part of [`route_to`]: a route that may lead to a local pod is a unicast route of a
/// prefix longer than 0 with an output device and no gateway.
fn route_verdict(route: &RouteMessage) -> RouteVerdict {
    if route.header.kind != RouteType::Unicast || route.header.destination_prefix_length == 0 {
        return RouteVerdict::NotLocally;
    }
    let mut oif = None;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Gateway(_) | RouteAttribute::Via(_) => return RouteVerdict::NotLocally,
            RouteAttribute::Oif(index) => oif = Some(*index),
            _ => {}
        }
    }
    oif.map_or(RouteVerdict::NotLocally, RouteVerdict::Device)
}

/// A veth whose peer is in another network namespace (`IFLA_LINK_NETNSID` is present).
fn leads_to_another_namespace(link: &LinkMessage) -> bool {
    let mut veth = false;
    let mut peer_elsewhere = false;
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::LinkInfo(infos) => veth |= crate::netlink::kind_is_veth(infos),
            LinkAttribute::LinkNetNsId(_) => peer_elsewhere = true,
            _ => {}
        }
    }
    veth && peer_elsewhere
}

/// What [`probe`] saw in a namespace.
struct Probed {
    /// The inode of the namespace the probing thread really entered, whatever the path names
    /// by now.
    inode: u64,
    addresses: Vec<Ipv4Addr>,
}

impl Probed {
    fn netns(self, path: &Path) -> PodNetns {
        PodNetns {
            path: path.to_owned(),
            addresses: self.addresses,
        }
    }
}

/// Enters the namespace `path` names and lists its IPv4 addresses.
fn probe(path: &Path) -> Result<Probed, Error> {
    in_netns(path, || {
        let inode = fs::metadata(OWN_NETNS)
            .map_err(|source| Error::OpenNetns {
                netns: path.to_owned(),
                source,
            })?
            .ino();
        let addresses = dump_ipv4_addresses(path)?
            .into_iter()
            .map(|address| address.address)
            .collect();
        Ok(Probed { inode, addresses })
    })?
}

/// The nsfs inode of the namespace `path` names now.
fn inode_of(path: &Path) -> Option<u64> {
    fs::metadata(path).ok().map(|metadata| metadata.ino())
}

/// The namespace vanished while it was being looked at: its process exited (`ENOENT`,
/// `ESRCH`), or its name was unmounted and the file left is no namespace (`EINVAL`).
fn is_gone(error: &Error) -> bool {
    match error {
        Error::OpenNetns { source, .. } => {
            source.kind() == io::ErrorKind::NotFound
                || source.raw_os_error() == Some(Errno::ESRCH as i32)
        }
        Error::EnterNetns { source, .. } => *source == Errno::EINVAL,
        _ => false,
    }
}

/// Every file that may name a network namespace: the named ones first, then one per process.
fn netns_files() -> Result<Vec<PathBuf>, Error> {
    let mut files = Vec::new();
    for dir in NETNS_DIRS {
        match fs::read_dir(dir) {
            Ok(entries) => files.extend(entries.flatten().map(|entry| entry.path())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::ListNetns {
                    path: PathBuf::from(dir),
                    source,
                })
            }
        }
    }
    let processes = fs::read_dir(PROC).map_err(|source| Error::ListNetns {
        path: PathBuf::from(PROC),
        source,
    })?;
    files.extend(processes.flatten().filter_map(|entry| {
        let name = entry.file_name();
        let pid: u32 = name.to_str()?.parse().ok()?;
        Some(Path::new(PROC).join(pid.to_string()).join("ns/net"))
    }));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(kind: RouteType, prefix: u8, attributes: Vec<RouteAttribute>) -> RouteMessage {
        let mut route = RouteMessage::default();
        route.header.kind = kind;
        route.header.destination_prefix_length = prefix;
        route.attributes = attributes;
        route
    }

    #[test]
    fn a_direct_route_names_its_device() {
        let host_route = route(RouteType::Unicast, 32, vec![RouteAttribute::Oif(7)]);
        assert_eq!(route_verdict(&host_route), RouteVerdict::Device(7));
        let bridge_subnet = route(RouteType::Unicast, 24, vec![RouteAttribute::Oif(3)]);
        assert_eq!(route_verdict(&bridge_subnet), RouteVerdict::Device(3));
    }

    #[test]
    fn gateways_default_routes_and_the_nodes_own_addresses_lead_to_no_local_pod() {
        let gateway = RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(10, 0, 0, 1)));
        let via_gateway = route(
            RouteType::Unicast,
            24,
            vec![gateway, RouteAttribute::Oif(2)],
        );
        assert_eq!(route_verdict(&via_gateway), RouteVerdict::NotLocally);
        let default = route(RouteType::Unicast, 0, vec![RouteAttribute::Oif(2)]);
        assert_eq!(route_verdict(&default), RouteVerdict::NotLocally);
        let local = route(RouteType::Local, 32, vec![RouteAttribute::Oif(1)]);
        assert_eq!(route_verdict(&local), RouteVerdict::NotLocally);
        let multipath = route(RouteType::Unicast, 24, vec![]);
        assert_eq!(route_verdict(&multipath), RouteVerdict::NotLocally);
    }

    #[test]
    fn only_a_namespace_that_vanished_is_gone() {
        let open = |source| Error::OpenNetns {
            netns: PathBuf::from("/proc/1/ns/net"),
            source,
        };
        assert!(is_gone(&open(io::Error::from(io::ErrorKind::NotFound))));
        assert!(is_gone(&open(io::Error::from_raw_os_error(
            Errno::ESRCH as i32
        ))));
        assert!(!is_gone(&open(io::Error::from(
            io::ErrorKind::PermissionDenied
        ))));
        let enter = |source| Error::EnterNetns {
            netns: PathBuf::from("/run/netns/x"),
            source,
        };
        assert!(is_gone(&enter(Errno::EINVAL)));
        assert!(!is_gone(&enter(Errno::EPERM)));
    }
}
