//! The one way probes and hooks open TCP connections.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpSocket, TcpStream};

/// Connects to `host:port`, trying each address the host resolves to.
///
/// The socket closes with a reset instead of a FIN (SO_LINGER on, zero seconds), so a
/// closed probe connection leaves no TIME_WAIT entry behind: a node probing hundreds of
/// containers every few seconds would otherwise hold tens of thousands of them and run out
/// of ephemeral ports (Kubernetes issue 89898). kubelet lingers one second instead, to let
/// unsent data go out; a probe has nothing left to send when it closes, having read its
/// answer, and tokio warns that a non-zero linger blocks the thread on drop.
pub(super) async fn connect(host: &str, port: u16) -> Result<TcpStream, ConnectError> {
    // IPv6 literals may come bracketed (`[::1]`) from a URL's host.
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let error = |source| ConnectError {
        address: super::http::join_host_port(host, port),
        source,
    };
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(error)?
        .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host has no address");
    for address in addresses {
        match connect_one(address).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(error(last))
}

async fn connect_one(address: SocketAddr) -> io::Result<TcpStream> {
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_zero_linger()?;
    socket.connect(address).await
}

/// A TCP connection could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("dial tcp {address}: {source}")]
pub struct ConnectError {
    /// `host:port` as dialled.
    pub address: String,
    #[source]
    pub source: io::Error,
}
