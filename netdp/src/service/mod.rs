//! Services at the socket layer: kube-proxy's job without a single iptables rule.
//!
//! Data flows one way: [`compile`] turns Services and EndpointSlices into
//! [`DesiredService`]s (pure, golden-tested); a [`Reconciler`] compares them with what the maps
//! hold and writes the difference through [`ServiceMaps`], in an order that never leaves a
//! live Service pointing at nothing; [`install`] loads the programs, pins maps and
//! links under one bpffs directory and attaches them to the node's cgroup2 root, so that every
//! `connect`, `sendmsg`, `recvmsg` and `getpeername` on the node goes through them.

pub(crate) mod bpf;
mod compile;
pub mod maglev;
mod maps;
pub mod model;
mod reconcile;
mod table;

use std::{fmt, net::Ipv4Addr, sync::Arc};

pub use bpf::{cleanup, find_cgroup2, install, PinnedMaps};
pub use compile::{compile, compile_for, Compiled, Problem};
pub(crate) use maps::InjectedFailure;
pub use maps::{MapOp, MemoryMaps, ServiceMaps};
pub use model::{ServiceInfo, SliceInfo};
pub use reconcile::{snapshot, Applied, MapBackend, MapService, MapSnapshot, Reconciler};
pub use table::{Delta, HealthCheck, HostPort, ServiceRef, ServiceTable};

/// Shared with the policy compiler and reconciler.
pub(crate) use compile::Reporter;
pub(crate) use reconcile::IdPool;

/// A Service port's protocol, as the datapath balances it. SCTP is not balanced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The `IPPROTO_*` number the maps hold.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => bosun_ebpf_abi::PROTOCOL_TCP,
            Self::Udp => bosun_ebpf_abi::PROTOCOL_UDP,
        }
    }

    pub const fn from_number(number: u8) -> Option<Self> {
        match number {
            bosun_ebpf_abi::PROTOCOL_TCP => Some(Self::Tcp),
            bosun_ebpf_abi::PROTOCOL_UDP => Some(Self::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
        })
    }
}

/// What a client connects to: a ClusterIP (or external IP), one port, one protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Frontend {
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.address, self.port, self.protocol)
    }
}

/// Where a connection to a [`Frontend`] may go: an endpoint's address and target port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct BackendAddr {
    pub address: Ipv4Addr,
    pub port: u16,
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.address, self.port)
    }
}

/// kube-proxy's `ServicePortName`: which Service port a frontend stands for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ServicePortName {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// The Service port's name; empty for a Service's single unnamed port.
    pub port: Arc<str>,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// One frontend and the backends it should balance over, as the maps should hold it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DesiredService {
    pub frontend: Frontend,
    pub name: ServicePortName,
    /// `sessionAffinity: ClientIP`: its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// Sorted, without duplicates. Empty: connections are refused.
    pub backends: Vec<BackendAddr>,
    /// For a frontend reachable from outside the node (a node port, an external IP, a load
    /// balancer IP): the backends of packets arriving on the node's external interfaces,
    /// sorted. `None` for a cluster IP. Empty: such packets are dropped.
    pub external: Option<Box<[ExternalTarget]>>,
}

/// A backend of traffic from outside the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ExternalTarget {
    pub backend: BackendAddr,
    /// On this node: the flow is only DNATed, and keeps the client's address.
    pub local: bool,
}

impl fmt::Display for ExternalTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.backend)?;
        if self.local {
            f.write_str("(local)")?;
        }
        Ok(())
    }
}
