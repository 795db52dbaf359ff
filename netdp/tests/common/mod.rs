//! What netdp's real-kernel tests share: running `ip`, entering a network namespace, and
//! servers that answer with a pod's name.

// Each test binary compiles this module whole but uses only part of it.
#![allow(dead_code)]

use std::{
    fs::File,
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsFd, AsRawFd, OwnedFd},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use nix::{
    sched::{setns, CloneFlags},
    sys::socket::{shutdown, Shutdown},
};

/// Runs `ip ARGS`, panicking with its stderr if it fails.
pub fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run ip {args:?}: {e}"));
    assert!(
        output.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

/// Runs `ip ARGS`, ignoring failure: for removals of what may not exist.
pub fn quiet_ip(args: &[&str]) {
    let _ = Command::new("ip").args(args).output();
}

/// `error` and its sources, on one line.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    line
}

/// Runs `f` on a thread that has entered network namespace `ns`. Sockets and attachments made
/// there stay in `ns` after the thread ends. A thread of its own, rather than `ip netns exec`,
/// because the latter remounts /sys, and because the test's own thread must stay in the host's
/// namespace.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                let netns = File::open(format!("/run/netns/{ns}"))
                    .unwrap_or_else(|e| panic!("open network namespace {ns}: {e}"));
                setns(netns, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("enter network namespace {ns}: {e}"));
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A TCP listener on `port` of every address in network namespace `ns`.
pub fn listen_tcp(ns: &str, port: u16) -> TcpListener {
    in_netns(ns, || {
        TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
    })
    .unwrap_or_else(|e| panic!("listen on TCP port {port} in {ns}: {e}"))
}

/// A UDP socket bound to `port` of every address in network namespace `ns`.
pub fn bind_udp(ns: &str, port: u16) -> UdpSocket {
    in_netns(ns, || {
        UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
    })
    .unwrap_or_else(|e| panic!("bind UDP port {port} in {ns}: {e}"))
}

/// A server thread that answers every request with a name (a pod's): each line on a TCP
/// connection, each UDP datagram.
pub struct Server {
    stop: Arc<AtomicBool>,
    /// The socket the thread blocks on; shut down to wake it.
    socket: OwnedFd,
    thread: JoinHandle<()>,
}

impl Server {
    /// Serves `listener`, answering each line with `name`. A connection silent for `idle` is
    /// dropped.
    pub fn tcp(listener: TcpListener, name: &str, idle: Duration) -> Self {
        let name = name.to_owned();
        Self::spawn(duplicate(&listener), move |stop| {
            for stream in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                // A failed accept (a client that reset first) concerns that client alone.
                if let Ok(stream) = stream {
                    let name = name.clone();
                    // One thread per connection: a test may keep one open while making others.
                    thread::spawn(move || answer_lines(stream, &name, idle));
                }
            }
        })
    }

    /// Serves `socket`, answering each datagram with `name`.
    pub fn udp(socket: UdpSocket, name: &str) -> Self {
        let name = name.to_owned();
        Self::spawn(duplicate(&socket), move |stop| {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, from)) = socket.recv_from(&mut buf) {
                    // A lost reply shows as the client's timeout.
                    let _ = socket.send_to(name.as_bytes(), from);
                }
            }
        })
    }

    fn spawn(socket: OwnedFd, serve: impl FnOnce(&AtomicBool) + Send + 'static) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = thread::spawn({
            let stop = Arc::clone(&stop);
            move || serve(&stop)
        });
        Self {
            stop,
            socket,
            thread,
        }
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes a blocked accept (with an error) or recv (with 0 bytes). On an unconnected UDP
        // socket it reports ENOTCONN but takes effect all the same.
        let _ = shutdown(self.socket.as_raw_fd(), Shutdown::Both);
        let _ = self.thread.join();
    }
}

fn duplicate(socket: &impl AsFd) -> OwnedFd {
    socket
        .as_fd()
        .try_clone_to_owned()
        .expect("duplicate a socket")
}

fn answer_lines(stream: TcpStream, name: &str, idle: Duration) {
    // A client that vanishes without closing must not keep this thread for long.
    let _ = stream.set_read_timeout(Some(idle));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(stream).lines() {
        if line.is_err() || writeln!(writer, "{name}").is_err() {
            return;
        }
    }
}
