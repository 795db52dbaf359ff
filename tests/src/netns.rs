//! "Pods" that are only network namespaces, for tests of the datapath that need real packets
//! but no containers: each is joined to the host by a veth pair on a /30 of its own (host side
//! `.1`, pod side `.2`, the pod's default route through the host), and runs servers that
//! answer with the pod's name. Test clients run in the host's namespace; the host forwards.
//!
//! Names and addresses come from the caller, so that tests running at once never share them;
//! everything is deleted when the pod is dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// A network namespace with one veth to the host.
pub struct NetnsPod {
    name: String,
    host_if: String,
    ip: Ipv4Addr,
    servers: Vec<Server>,
}

impl NetnsPod {
    /// Creates namespace `name` with address `base + 2` on a /30 whose host side is `base + 1`.
    /// `base` must be the first address of a /30 no other test uses; `host_if` (at most 15
    /// bytes) names the host side of the veth.
    pub fn create(name: &str, host_if: &str, base: Ipv4Addr) -> Result<Self> {
        // Leftovers of a killed run with the same names go first.
        let _ = run_quiet("ip", &["netns", "del", name]);
        let _ = run_quiet("ip", &["link", "del", host_if]);
        let host_ip = Ipv4Addr::from_bits(base.to_bits() + 1);
        let ip = Ipv4Addr::from_bits(base.to_bits() + 2);
        // From here on, Drop removes whatever part was made.
        let pod = NetnsPod {
            name: name.to_owned(),
            host_if: host_if.to_owned(),
            ip,
            servers: Vec::new(),
        };
        let peer = format!("{host_if}p");
        let peer = if peer.len() > 15 {
            format!("{}p", &host_if[..14])
        } else {
            peer
        };
        run("ip", &["netns", "add", name])?;
        run(
            "ip",
            &[
                "link", "add", host_if, "type", "veth", "peer", "name", &peer,
            ],
        )?;
        run("ip", &["link", "set", &peer, "netns", name])?;
        run(
            "ip",
            &["addr", "add", &format!("{host_ip}/30"), "dev", host_if],
        )?;
        run("ip", &["link", "set", host_if, "up"])?;
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", name, "ip"];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        in_ns(&["link", "set", &peer, "name", "eth0"])?;
        in_ns(&["addr", "add", &format!("{ip}/30"), "dev", "eth0"])?;
        in_ns(&["link", "set", "eth0", "up"])?;
        in_ns(&["link", "set", "lo", "up"])?;
        in_ns(&["route", "add", "default", "via", &host_ip.to_string()])?;
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling IPv4 forwarding")?;
        Ok(pod)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it creates stay in the
    /// namespace.
    pub fn enter<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering {path}"))?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("a thread in the namespace panicked"))?
    }

    /// Serves TCP on `port`: each connection gets `reply` and a newline, then every line it
    /// sends is echoed back, until it closes.
    pub fn serve_tcp(&mut self, port: u16, reply: &str) -> Result<()> {
        let listener = self.enter(move || {
            let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })?;
        let reply = reply.to_owned();
        self.servers.push(Server::spawn(move |stop| {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let reply = reply.clone();
                        std::thread::spawn(move || echo(stream, &reply));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => return,
                }
            }
        }));
        Ok(())
    }

    /// Serves UDP on `port`: every datagram is answered with `reply`.
    pub fn serve_udp(&mut self, port: u16, reply: &str) -> Result<()> {
        let socket = self.enter(move || {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?;
            socket.set_read_timeout(Some(Duration::from_millis(50)))?;
            Ok(socket)
        })?;
        let reply = reply.to_owned();
        self.servers.push(Server::spawn(move |stop| {
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(reply.as_bytes(), from);
                }
            }
        }));
        Ok(())
    }
}

impl Drop for NetnsPod {
    fn drop(&mut self) {
        for server in self.servers.drain(..) {
            server.stop();
        }
        let _ = run_quiet("ip", &["netns", "del", &self.name]);
        let _ = run_quiet("ip", &["link", "del", &self.host_if]);
    }
}

fn echo(stream: TcpStream, reply: &str) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    if writer.write_all(format!("{reply}\n").as_bytes()).is_err() {
        return;
    }
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
        if writer.write_all(line.as_bytes()).is_err() {
            return;
        }
        line.clear();
    }
}

/// A server thread that stops when told.
struct Server {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Server {
    fn spawn(body: impl FnOnce(&AtomicBool) + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || body(&flag));
        Server { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Connects to `to` over TCP and returns the first line the server sends (its name) with the
/// open connection. `getpeername` of the connection is in `peer`.
pub struct Answer {
    pub name: String,
    pub peer: SocketAddr,
    pub stream: TcpStream,
}

/// Connects to `to` and reads the server's name.
pub fn ask_tcp(to: SocketAddr, timeout: Duration) -> std::io::Result<Answer> {
    let stream = TcpStream::connect_timeout(&to, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    let peer = stream.peer_addr()?;
    let mut name = String::new();
    BufReader::new(stream.try_clone()?).read_line(&mut name)?;
    Ok(Answer {
        name: name.trim_end().to_owned(),
        peer,
        stream,
    })
}

/// Sends `line` on an established connection and reads the echo.
pub fn echo_line(stream: &mut TcpStream, line: &str) -> std::io::Result<String> {
    stream.write_all(format!("{line}\n").as_bytes())?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut echoed = String::new();
    reader.read_line(&mut echoed)?;
    Ok(echoed.trim_end().to_owned())
}

/// Sends a datagram from an unconnected socket and returns the reply and where it came from.
pub fn ask_udp(to: SocketAddr, timeout: Duration) -> std::io::Result<(String, SocketAddr)> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send_to(b"who", to)?;
    let mut buf = [0u8; 1500];
    let (n, from) = socket.recv_from(&mut buf)?;
    Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
}

/// Reads what is left on a stream until EOF or the timeout.
pub fn read_rest(stream: &mut TcpStream) -> String {
    let mut rest = String::new();
    let _ = stream.read_to_string(&mut rest);
    rest
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn run_quiet(program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        bail!("{program} failed");
    }
    Ok(())
}
