//! What the datapath asks rtnetlink: which interface on the node is a pod's veth peer, and
//! which IPv4 addresses the node has.
//!
//! Sockets are synchronous and short-lived: every call opens one, dumps or gets, and closes it.
//! A pod's namespace is entered on a thread of its own, so the caller's thread (and the runtime
//! it may belong to) never leaves the node's namespace.

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr},
    path::Path,
    thread,
};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_MULTIPART,
    NLM_F_REQUEST,
};
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage, AddressScope},
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
    route::{RouteAttribute, RouteHeader, RouteMessage, RouteType},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::sched::{setns, CloneFlags};

use crate::Error;

/// The node-side end of a pod's veth pair, in the caller's network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostInterface {
    pub ifindex: u32,
    /// Whatever the CNI plugin named it.
    pub name: String,
}

/// The name of the pod's interface that [`host_interface`] prefers when a pod has several
/// veths: what the CNI specification's `CNI_IFNAME` is by convention.
const POD_IFNAME: &str = "eth0";

/// The calling thread's own network namespace, as the errors of calls made in it name it.
pub(crate) const OWN_NETNS: &str = "/proc/thread-self/ns/net";

/// Finds the host-side peer of the pod's veth in network namespace `netns` (a file such as
/// `/var/run/netns/cni-…` or `/proc/<pid>/ns/net`), and confirms that it lives in the calling
/// thread's namespace, the node's.
///
/// The pod's interface is the veth whose peer is in another namespace; if there are several,
/// `eth0`, else the only one with a global IPv4 address.
pub fn host_interface(netns: &Path) -> Result<HostInterface, Error> {
    let pod_if = in_netns(netns, || pod_interface(netns))??;
    let node_ns = Path::new(OWN_NETNS);
    let link = get_link(pod_if.peer, node_ns).map_err(|error| match error {
        Error::NetlinkRefused { errno, .. } if errno == nix::errno::Errno::ENODEV as i32 => {
            Error::HostInterfaceNotFound {
                netns: netns.to_owned(),
                pod_ifname: pod_if.name.clone(),
                ifindex: pod_if.peer,
            }
        }
        other => other,
    })?;
    let peer_of = link
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::Link(index) => Some(*index),
            _ => None,
        });
    let name = link_name(&link).unwrap_or_default();
    // The same ifindex in this namespace may be an unrelated interface when the peer lives in
    // a third namespace; a veth's own IFLA_LINK tells them apart.
    if peer_of != Some(pod_if.ifindex) {
        return Err(Error::HostInterfaceMismatch {
            netns: netns.to_owned(),
            pod_ifname: pod_if.name,
            ifindex: pod_if.peer,
            name,
        });
    }
    Ok(HostInterface {
        ifindex: pod_if.peer,
        name,
    })
}

/// Every IPv4 address of the calling thread's network namespace, sorted, without duplicates.
pub fn node_addresses() -> Result<Vec<Ipv4Addr>, Error> {
    let mut addresses: Vec<Ipv4Addr> = dump_ipv4_addresses(Path::new(OWN_NETNS))?
        .into_iter()
        .map(|address| address.address)
        .collect();
    addresses.sort_unstable();
    addresses.dedup();
    Ok(addresses)
}

/// The IPv4 addresses of interface `ifindex` of the calling thread's network namespace, in
/// the kernel's order (the primary address first).
pub fn interface_addresses(ifindex: u32) -> Result<Vec<Ipv4Addr>, Error> {
    Ok(dump_ipv4_addresses(Path::new(OWN_NETNS))?
        .into_iter()
        .filter(|address| address.ifindex == ifindex)
        .map(|address| address.address)
        .collect())
}

/// The interfaces the IPv4 default routes of the main table leave by, in the calling thread's
/// network namespace (every next hop of a multipath route), in order, without repeats.
pub fn default_route_interfaces() -> Result<Vec<u32>, Error> {
    let mut message = RouteMessage::default();
    message.header.address_family = AddressFamily::Inet;
    let replies = request(
        RouteNetlinkMessage::GetRoute(message),
        NLM_F_DUMP,
        "dump routes",
        Path::new(OWN_NETNS),
    )?;
    let mut ifindexes: Vec<u32> = replies
        .iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewRoute(route) => Some(default_route_oifs(route)),
            _ => None,
        })
        .flatten()
        .collect();
    ifindexes.sort_unstable();
    ifindexes.dedup();
    Ok(ifindexes)
}

/// The output interfaces of `route` if it is an IPv4 unicast default route of the main table.
fn default_route_oifs(route: &RouteMessage) -> Vec<u32> {
    let header = &route.header;
    let main = route
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(header.table))
        == u32::from(RouteHeader::RT_TABLE_MAIN);
    if header.address_family != AddressFamily::Inet
        || header.kind != RouteType::Unicast
        || header.destination_prefix_length != 0
        || !main
    {
        return Vec::new();
    }
    let mut oifs = Vec::new();
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Oif(ifindex) => oifs.push(*ifindex),
            RouteAttribute::MultiPath(hops) => {
                oifs.extend(hops.iter().map(|hop| hop.interface_index));
            }
            _ => {}
        }
    }
    oifs
}

/// Whether interface `ifindex` of the calling thread's network namespace is a veth.
pub fn is_veth(ifindex: u32) -> Result<bool, Error> {
    let link = get_link(ifindex, Path::new(OWN_NETNS))?;
    Ok(link.attributes.iter().any(
        |attribute| matches!(attribute, LinkAttribute::LinkInfo(infos) if kind_is_veth(infos)),
    ))
}

/// Whether a link's `IFLA_LINKINFO` says it is a veth.
pub(crate) fn kind_is_veth(infos: &[LinkInfo]) -> bool {
    infos
        .iter()
        .any(|info| matches!(info, LinkInfo::Kind(InfoKind::Veth)))
}

/// A link of a pod's namespace as [`choose_pod_interface`] weighs it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PodLink {
    ifindex: u32,
    name: String,
    /// `IFLA_INFO_KIND` is `veth`.
    veth: bool,
    /// `IFLA_LINK`: for a veth, its peer's ifindex.
    peer: Option<u32>,
    /// `IFLA_LINK_NETNSID` is present: the peer lives in another namespace.
    peer_elsewhere: bool,
    /// Has an IPv4 address of global (universe) scope.
    global_ipv4: bool,
}

/// The pod's interface and its peer's ifindex.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PodInterface {
    ifindex: u32,
    name: String,
    peer: u32,
}

/// Runs in the pod's namespace.
fn pod_interface(netns: &Path) -> Result<PodInterface, Error> {
    let global: Vec<u32> = dump_ipv4_addresses(netns)?
        .into_iter()
        .filter(|address| address.scope == AddressScope::Universe)
        .map(|address| address.ifindex)
        .collect();
    let links: Vec<PodLink> = dump_links(netns)?
        .iter()
        .map(|link| {
            let mut pod_link = PodLink {
                ifindex: link.header.index,
                name: link_name(link).unwrap_or_default(),
                veth: false,
                peer: None,
                peer_elsewhere: false,
                global_ipv4: global.contains(&link.header.index),
            };
            for attribute in &link.attributes {
                match attribute {
                    LinkAttribute::Link(peer) => pod_link.peer = Some(*peer),
                    LinkAttribute::LinkNetNsId(_) => pod_link.peer_elsewhere = true,
                    LinkAttribute::LinkInfo(infos) => pod_link.veth |= kind_is_veth(infos),
                    _ => {}
                }
            }
            pod_link
        })
        .collect();
    choose_pod_interface(netns, &links)
}

/// The pure part of [`host_interface`]'s choice.
fn choose_pod_interface(netns: &Path, links: &[PodLink]) -> Result<PodInterface, Error> {
    let candidates: Vec<(&PodLink, u32)> = links
        .iter()
        .filter(|link| link.veth && link.peer_elsewhere)
        .filter_map(|link| link.peer.filter(|peer| *peer != 0).map(|peer| (link, peer)))
        .collect();
    let chosen = match candidates.as_slice() {
        [] => {
            return Err(Error::NoPodInterface {
                netns: netns.to_owned(),
                links: links.iter().map(|link| link.name.clone()).collect(),
            })
        }
        [only] => *only,
        several => {
            if let Some(eth0) = several.iter().find(|(link, _)| link.name == POD_IFNAME) {
                *eth0
            } else {
                let global: Vec<_> = several
                    .iter()
                    .filter(|(link, _)| link.global_ipv4)
                    .collect();
                match global.as_slice() {
                    [only] => **only,
                    _ => {
                        return Err(Error::AmbiguousPodInterface {
                            netns: netns.to_owned(),
                            candidates: several.iter().map(|(link, _)| link.name.clone()).collect(),
                        })
                    }
                }
            }
        }
    };
    Ok(PodInterface {
        ifindex: chosen.0.ifindex,
        name: chosen.0.name.clone(),
        peer: chosen.1,
    })
}

/// The name of interface `ifindex` in the calling thread's network namespace; `None` if there
/// is none. (nix's `if_indextoname` mistakes the C function's NULL for success and answers an
/// empty name for a missing interface.)
pub fn interface_name(ifindex: u32) -> Option<String> {
    let mut name = [0u8; nix::libc::IF_NAMESIZE];
    // SAFETY: `name` has the IF_NAMESIZE bytes the function may write, NUL included; the
    // returned pointer is `name`'s or NULL, and only compared here.
    let found = unsafe { nix::libc::if_indextoname(ifindex, name.as_mut_ptr().cast()) };
    if found.is_null() {
        return None;
    }
    let name = std::ffi::CStr::from_bytes_until_nul(&name).ok()?;
    Some(name.to_string_lossy().into_owned()).filter(|name| !name.is_empty())
}

/// Runs `f` on a thread of its own that has entered the network namespace `netns`. The thread
/// ends with `f`, so nothing else ever runs in that namespace by accident.
pub(crate) fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
    let file = File::open(netns).map_err(|source| Error::OpenNetns {
        netns: netns.to_owned(),
        source,
    })?;
    thread::scope(|scope| {
        let thread = thread::Builder::new()
            .name("bosun-netns".to_owned())
            .spawn_scoped(scope, move || {
                setns(file, CloneFlags::CLONE_NEWNET).map_err(|source| Error::EnterNetns {
                    netns: netns.to_owned(),
                    source,
                })?;
                Ok(f())
            })
            .map_err(|source| Error::SpawnNetnsThread {
                netns: netns.to_owned(),
                source,
            })?;
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

pub(crate) fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::IfName(name) => Some(name.clone()),
            _ => None,
        })
}

fn dump_links(netns: &Path) -> Result<Vec<LinkMessage>, Error> {
    let replies = request(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        NLM_F_DUMP,
        "dump links",
        netns,
    )?;
    Ok(replies
        .into_iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewLink(link) => Some(link),
            _ => None,
        })
        .collect())
}

pub(crate) fn get_link(ifindex: u32, netns: &Path) -> Result<LinkMessage, Error> {
    let mut message = LinkMessage::default();
    message.header.index = ifindex;
    let replies = request(RouteNetlinkMessage::GetLink(message), 0, "get link", netns)?;
    replies
        .into_iter()
        .find_map(|reply| match reply {
            RouteNetlinkMessage::NewLink(link) => Some(link),
            _ => None,
        })
        .ok_or(Error::NetlinkRefused {
            call: "get link",
            netns: netns.to_owned(),
            errno: nix::errno::Errno::ENODEV as i32,
        })
}

pub(crate) struct Ipv4Address {
    ifindex: u32,
    pub(crate) address: Ipv4Addr,
    scope: AddressScope,
}

pub(crate) fn dump_ipv4_addresses(netns: &Path) -> Result<Vec<Ipv4Address>, Error> {
    let mut message = AddressMessage::default();
    message.header.family = AddressFamily::Inet;
    let replies = request(
        RouteNetlinkMessage::GetAddress(message),
        NLM_F_DUMP,
        "dump addresses",
        netns,
    )?;
    Ok(replies
        .into_iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewAddress(address) => Some(address),
            _ => None,
        })
        .filter(|message| message.header.family == AddressFamily::Inet)
        .filter_map(|message| {
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the same except on
            // point-to-point links, where it is the far end's.
            let local = message
                .attributes
                .iter()
                .find_map(|attribute| match attribute {
                    AddressAttribute::Local(IpAddr::V4(address)) => Some(*address),
                    _ => None,
                });
            let address = local.or_else(|| {
                message
                    .attributes
                    .iter()
                    .find_map(|attribute| match attribute {
                        AddressAttribute::Address(IpAddr::V4(address)) => Some(*address),
                        _ => None,
                    })
            })?;
            Some(Ipv4Address {
                ifindex: message.header.index,
                address,
                scope: message.header.scope,
            })
        })
        .collect())
}

/// How many times a dump that links or addresses changed under is taken again.
const DUMP_ATTEMPTS: usize = 3;

/// Sends one request on a fresh socket in the calling thread's namespace and collects the
/// replies: all parts of a dump (`flags` has `NLM_F_DUMP`), or the single answer of a get.
///
/// A dump the kernel marks inconsistent (`NLM_F_DUMP_INTR`: something changed while it ran, as
/// when a CNI plugin wires another pod) is taken again; if every attempt is, the error is
/// `EINTR`, worth retrying later.
pub(crate) fn request(
    message: RouteNetlinkMessage,
    flags: u16,
    call: &'static str,
    netns: &Path,
) -> Result<Vec<RouteNetlinkMessage>, Error> {
    for _ in 0..DUMP_ATTEMPTS {
        let (replies, interrupted) = request_once(message.clone(), flags, call, netns)?;
        if !interrupted {
            return Ok(replies);
        }
    }
    Err(Error::NetlinkRefused {
        call,
        netns: netns.to_owned(),
        errno: nix::errno::Errno::EINTR as i32,
    })
}

/// [`request`] once; `true` if the dump was interrupted.
fn request_once(
    message: RouteNetlinkMessage,
    flags: u16,
    call: &'static str,
    netns: &Path,
) -> Result<(Vec<RouteNetlinkMessage>, bool), Error> {
    let io_error = |source| Error::Netlink {
        call,
        netns: netns.to_owned(),
        source,
    };
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(io_error)?;
    socket.bind_auto().map_err(io_error)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(io_error)?;

    const SEQUENCE: u32 = 1;
    let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(message));
    packet.header.flags = NLM_F_REQUEST | flags;
    packet.header.sequence_number = SEQUENCE;
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0).map_err(io_error)?;

    let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
    let mut replies = Vec::new();
    let mut interrupted = false;
    loop {
        let (datagram, _) = socket.recv_from_full().map_err(io_error)?;
        let mut bytes = datagram.as_slice();
        while !bytes.is_empty() {
            let reply =
                NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).map_err(|source| {
                    Error::NetlinkDecode {
                        call,
                        netns: netns.to_owned(),
                        source: Box::new(source),
                    }
                })?;
            let length = reply.header.length as usize;
            if length == 0 || length > bytes.len() {
                return Err(Error::NetlinkDecode {
                    call,
                    netns: netns.to_owned(),
                    source: Box::new(netlink_packet_core::DecodeError::from(format!(
                        "a message of {length} bytes in {} remaining",
                        bytes.len()
                    ))),
                });
            }
            // Messages are 4-byte aligned within a datagram.
            bytes = &bytes[length.next_multiple_of(4).min(bytes.len())..];
            if reply.header.sequence_number != SEQUENCE {
                continue;
            }
            let multipart = reply.header.flags & NLM_F_MULTIPART != 0;
            interrupted |= reply.header.flags & NLM_F_DUMP_INTR != 0;
            match reply.payload {
                NetlinkPayload::Done(_) => return Ok((replies, interrupted)),
                NetlinkPayload::Error(error) => match error.code {
                    Some(code) => {
                        return Err(Error::NetlinkRefused {
                            call,
                            netns: netns.to_owned(),
                            errno: -code.get(),
                        })
                    }
                    // An acknowledgement ends a request that has no other answer.
                    None => return Ok((replies, interrupted)),
                },
                NetlinkPayload::InnerMessage(inner) => {
                    replies.push(inner);
                    if !dump && !multipart {
                        return Ok((replies, interrupted));
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(ifindex: u32, name: &str, peer: Option<u32>, global_ipv4: bool) -> PodLink {
        PodLink {
            ifindex,
            name: name.to_owned(),
            veth: peer.is_some(),
            peer,
            peer_elsewhere: peer.is_some(),
            global_ipv4,
        }
    }

    fn choose(links: &[PodLink]) -> Result<(String, u32), String> {
        choose_pod_interface(Path::new("/run/netns/pod"), links)
            .map(|chosen| (chosen.name, chosen.peer))
            .map_err(|error| error.to_string())
    }

    #[test]
    fn the_only_veth_with_a_peer_elsewhere_is_the_pods() {
        let links = [link(1, "lo", None, false), link(2, "net1", Some(40), false)];
        assert_eq!(choose(&links), Ok(("net1".to_owned(), 40)));
    }

    #[test]
    fn eth0_wins_among_several_then_the_one_with_a_global_address() {
        let links = [
            link(1, "lo", None, false),
            link(2, "net1", Some(40), true),
            link(3, "eth0", Some(41), false),
        ];
        assert_eq!(choose(&links), Ok(("eth0".to_owned(), 41)));
        let links = [
            link(2, "net1", Some(40), false),
            link(3, "net2", Some(41), true),
        ];
        assert_eq!(choose(&links), Ok(("net2".to_owned(), 41)));
    }

    #[test]
    fn a_veth_whose_peer_is_in_the_same_namespace_is_not_the_pods() {
        let mut inner = link(2, "inner0", Some(3), true);
        inner.peer_elsewhere = false;
        let error = choose(&[link(1, "lo", None, false), inner]).unwrap_err();
        assert!(error.contains("no veth"), "{error}");
        assert!(error.contains("inner0"), "{error}");
    }

    #[test]
    fn two_veths_without_eth0_or_a_single_global_address_are_ambiguous() {
        let links = [
            link(2, "net1", Some(40), true),
            link(3, "net2", Some(41), true),
        ];
        let error = choose(&links).unwrap_err();
        assert!(error.contains("net1") && error.contains("net2"), "{error}");
    }
}
