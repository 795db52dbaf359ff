//! The network the Service benchmarks measure connects in, and what they share to report:
//! N Services' addresses (ClusterIPs from 10.220.0.1 on, four endpoints each in
//! 10.219.128.0/17), a backend namespace in which one server answers on every endpoint, a
//! rule-free client namespace routed to it through the host, interleaved connect timing,
//! sweeping up a killed run's namespaces, links and routes, a process's resident memory, and
//! the tables the results are printed in.
//!
//! A module of its own beside `common` and `lab`, included by the benchmarks that connect to
//! Services (`services`, `proxy`), so that the others do not carry it unused.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::common::{self, Mode, Stats};
use crate::lab::{check_interrupted, enter_netns, ip, pin, CLIENT_CPU, SERVER_CPU};
use crate::server_thread::ServerThread;

// ---- names and addresses ------------------------------------------------------------------

/// The numbers of Services measured by default: all three in a full run.
pub const SIZES: [usize; 3] = [1_000, 10_000, 30_000];
/// In a `--quick` run.
pub const QUICK_SIZES: [usize; 2] = [1_000, 10_000];

/// The options of a benchmark over numbers of Services: the common ones and
/// `--services N`, repeatable, which replaces the default sizes.
pub struct ServiceOptions {
    pub args: common::Args,
    services: Vec<usize>,
}

impl ServiceOptions {
    /// Reads the options of a benchmark with parts `benchmarks` whose datapath holds at most
    /// `max` Services.
    pub fn parse(
        args: impl Iterator<Item = String>,
        benchmarks: &[&str],
        max: usize,
    ) -> Result<ServiceOptions> {
        let mut services = Vec::new();
        let args = common::Args::parse(args, benchmarks, |flag, args| {
            if flag != "--services" {
                return Ok(false);
            }
            let n = common::positive("--services", args.next())?;
            anyhow::ensure!(
                n <= max,
                "--services {n}: the datapath holds at most {max} here"
            );
            services.push(n);
            Ok(true)
        })?;
        Ok(ServiceOptions { args, services })
    }

    pub fn selected(&self, benchmark: &str) -> bool {
        self.args.selected(benchmark)
    }

    /// The numbers of Services to measure: those asked for, or the mode's.
    pub fn service_counts(&self) -> Vec<usize> {
        if !self.services.is_empty() {
            return self.services.clone();
        }
        match self.args.mode {
            Mode::Smoke => SIZES[..1].to_vec(),
            Mode::Quick => QUICK_SIZES.to_vec(),
            Mode::Full => SIZES.to_vec(),
        }
    }
}

/// Every namespace and link the benchmark creates starts with this.
pub const PREFIX: &str = "bsb-";

/// Every address in it is the backend namespace's own (a `local` route), and a server there
/// answers on [`TARGET_PORTS`] ports from [`FIRST_TARGET_PORT`]: each of the 4·N endpoints
/// gets an address and port of its own, as in a real cluster, and all of them answer.
pub const ENDPOINT_NET: Ipv4Addr = Ipv4Addr::new(10, 219, 128, 0);
pub const ENDPOINT_PREFIX: u8 = 17;
pub const FIRST_TARGET_PORT: u16 = 8080;
/// Enough for 4 × 65536 endpoints in the /17.
pub const TARGET_PORTS: u16 = 8;
/// Replacement endpoints of the change measurement: never connected to, so not routed.
pub const SPARE_NET: Ipv4Addr = Ipv4Addr::new(10, 219, 96, 0);
/// ClusterIPs are counted up from here (10.220.0.0/16, then 10.221.0.0/16).
pub const VIP_BASE: Ipv4Addr = Ipv4Addr::new(10, 220, 0, 0);
pub const SERVICE_PORT: u16 = 80;
pub const NAMESPACE: &str = "default";

pub const ENDPOINTS_PER_SERVICE: usize = 4;

/// A network namespace joined to the host by a veth pair on 10.219.`third`.0/24: the host
/// side is .1, the namespace side .2 and its default route.
pub struct Wire {
    pub netns: &'static str,
    pub host_if: &'static str,
    pub ns_if: &'static str,
    pub third: u8,
}

impl Wire {
    pub fn host_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 219, self.third, 1)
    }

    pub fn ns_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 219, self.third, 2)
    }
}

pub const BACKEND: Wire = Wire {
    netns: "bsb-backend",
    host_if: "bsb-h-backend",
    ns_if: "bsb-backend",
    third: 0,
};
/// The client of the floor and of bosun: no rules at all.
pub const PLAIN: Wire = Wire {
    netns: "bsb-plain",
    host_if: "bsb-h-plain",
    ns_if: "bsb-plain",
    third: 10,
};

// ---- timing -----------------------------------------------------------------------------

/// Connects per target before the next target's turn.
pub const BLOCK: usize = 10;
/// How long one warm-up connect may take before the path is declared broken.
pub const WARM_UP_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

// ---- the Services -------------------------------------------------------------------------

/// N Services `svc-00000`…, each with one TCP port 80 and one EndpointSlice of 4 ready
/// endpoints, all distinct.
pub struct Catalog {
    pub n: usize,
}

impl Catalog {
    pub fn name(&self, i: usize) -> String {
        format!("svc-{i:05}")
    }

    pub fn vip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::from_bits(VIP_BASE.to_bits() + 1 + i as u32)
    }

    /// Endpoint `k` of Service `i`. A Service's four share a port, since an EndpointSlice has
    /// one port list for all its endpoints.
    pub fn endpoint(&self, i: usize, k: usize) -> SocketAddrV4 {
        let j = (i * ENDPOINTS_PER_SERVICE + k) as u32;
        let per_port = 1u32 << (32 - ENDPOINT_PREFIX);
        SocketAddrV4::new(
            Ipv4Addr::from_bits(ENDPOINT_NET.to_bits() + j % per_port),
            FIRST_TARGET_PORT + (j / per_port) as u16,
        )
    }

    /// The address the `c`th endpoint change puts in place of an endpoint.
    pub fn spare(&self, c: usize) -> Ipv4Addr {
        Ipv4Addr::from_bits(SPARE_NET.to_bits() + 1 + (c % 8000) as u32)
    }

    pub fn first(&self) -> usize {
        0
    }

    pub fn middle(&self) -> usize {
        self.n / 2
    }

    pub fn last(&self) -> usize {
        self.n - 1
    }

    /// The endpoint "straight to a backend" connects to: a real endpoint, of no Service the
    /// ClusterIP targets use.
    pub fn backend(&self) -> SocketAddrV4 {
        self.endpoint(self.n / 4, 1)
    }
}

// ---- the network --------------------------------------------------------------------------

/// The backend namespace and its server, the rule-free client namespace and its client.
/// Dropping it removes them all: the threads leave the namespaces first (fields drop in
/// order).
pub struct Lab {
    pub plain: Client,
    pub server: Server,
    _plain_netns: Netns,
    _endpoint_route: Route,
    _backend_netns: Netns,
    _forwarding: Forwarding,
}

impl Lab {
    pub fn create() -> Result<Lab> {
        let forwarding = Forwarding::enable()?;
        let backend_netns = Netns::create(&BACKEND)?;
        let endpoints = format!("{ENDPOINT_NET}/{ENDPOINT_PREFIX}");
        ip(&[
            "-n",
            BACKEND.netns,
            "route",
            "add",
            "local",
            &endpoints,
            "dev",
            "lo",
        ])?;
        let endpoint_route = Route::add(&endpoints, BACKEND.ns_addr(), BACKEND.host_if)?;
        let plain_netns = Netns::create(&PLAIN)?;
        let server = Server::start(BACKEND.netns)?;
        let plain = Client::spawn(PLAIN.netns)?;
        Ok(Lab {
            plain,
            server,
            _plain_netns: plain_netns,
            _endpoint_route: endpoint_route,
            _backend_netns: backend_netns,
            _forwarding: forwarding,
        })
    }

    /// Warms every target up, then measures `connects` connects to each, in interleaved
    /// blocks. Returns the samples (µs) of each target, in order.
    ///
    /// First, for `settle`, it connects to the first target unmeasured: after a datapath
    /// or a namespace went, the kernel is still freeing it, and after a pause the CPUs are
    /// cold; connecting meanwhile rather than sleeping leaves neither to the samples.
    pub fn measure(
        &self,
        targets: &[Target<'_>],
        connects: usize,
        warm_up: usize,
        settle: Duration,
    ) -> Result<Vec<Vec<f64>>> {
        let settling = Instant::now();
        while settling.elapsed() < settle {
            let target = &targets[0];
            target
                .client
                .connect(target.address, BLOCK, Some(WARM_UP_CONNECT_TIMEOUT))
                .with_context(|| format!("{}: settling", target.label))?;
            check_interrupted()?;
        }
        for target in targets {
            let before = self.server.accepted();
            target
                .client
                .connect(target.address, warm_up, Some(WARM_UP_CONNECT_TIMEOUT))
                .with_context(|| format!("{}: warming up", target.label))?;
            self.server
                .wait_accepted(before + warm_up as u64)
                .with_context(|| {
                    format!(
                        "{}: connects to {} did not all reach the backend namespace",
                        target.label, target.address
                    )
                })?;
        }
        let mut samples = vec![Vec::with_capacity(connects); targets.len()];
        let mut done = 0;
        while done < connects {
            let block = BLOCK.min(connects - done);
            for (target, samples) in targets.iter().zip(&mut samples) {
                let taken = target
                    .client
                    .connect(target.address, block, None)
                    .with_context(|| target.label.clone())?;
                samples.extend(taken);
            }
            done += block;
            check_interrupted()?;
        }
        Ok(samples)
    }
}

/// Where one row of the connect table connects, and from where.
pub struct Target<'a> {
    pub label: String,
    pub client: &'a Client,
    pub address: SocketAddrV4,
}

pub fn vip_targets<'a>(who: &str, client: &'a Client, catalog: &Catalog) -> Vec<Target<'a>> {
    [
        ("first", catalog.first()),
        ("middle", catalog.middle()),
        ("last", catalog.last()),
    ]
    .into_iter()
    .map(|(position, i)| Target {
        label: format!("{who}: → {position} Service's ClusterIP"),
        client,
        address: SocketAddrV4::new(catalog.vip(i), SERVICE_PORT),
    })
    .collect()
}

/// Part `i` of `total` split into `parts` nearly equal parts.
pub fn share(total: usize, parts: usize, i: usize) -> usize {
    total / parts + usize::from(i < total % parts)
}

pub fn labelled(target: &Target<'_>, samples: Vec<f64>) -> Row {
    Row {
        label: target.label.clone(),
        samples,
        note: String::new(),
    }
}

/// Other bosun datapaths attached on this machine (tests running meanwhile): their programs
/// run on every connect, the floor's included.
pub fn foreign_datapaths(own: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p != Path::new(own) && p.join("link_connect4").exists())
        .map(|p| p.display().to_string())
        .collect()
}

/// A namespace wired to the host as its [`Wire`] says; removed when dropped.
pub struct Netns {
    wire: &'static Wire,
}

impl Netns {
    pub fn create(wire: &'static Wire) -> Result<Netns> {
        ip(&["netns", "add", wire.netns])?;
        // From here on, dropping it removes what was made.
        let netns = Netns { wire };
        let host = format!("{}/24", wire.host_addr());
        let inside = format!("{}/24", wire.ns_addr());
        let gateway = wire.host_addr().to_string();
        let n = wire.netns;
        ip(&[
            "link",
            "add",
            wire.host_if,
            "type",
            "veth",
            "peer",
            "name",
            wire.ns_if,
            "netns",
            n,
        ])?;
        ip(&["addr", "add", &host, "dev", wire.host_if])?;
        ip(&["link", "set", wire.host_if, "up"])?;
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&["-n", n, "addr", "add", &inside, "dev", wire.ns_if])?;
        ip(&["-n", n, "link", "set", wire.ns_if, "up"])?;
        ip(&["-n", n, "route", "add", "default", "via", &gateway])?;
        Ok(netns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The pair goes with either end; removing the host's end now, rather than when the
        // kernel gets round to destroying the namespace, keeps `ip link` clean at once.
        let _ = ip(&["link", "del", self.wire.host_if]);
        if let Err(e) = ip(&["netns", "del", self.wire.netns]) {
            eprintln!("bench: {e:#}");
        }
    }
}

/// A host route; removed when dropped.
pub struct Route {
    prefix: String,
}

impl Route {
    pub fn add(prefix: &str, via: Ipv4Addr, dev: &str) -> Result<Route> {
        ip(&["route", "add", prefix, "via", &via.to_string(), "dev", dev])?;
        Ok(Route {
            prefix: prefix.to_owned(),
        })
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        // Usually gone already with its link.
        let _ = ip(&["route", "del", &self.prefix]);
    }
}

/// IPv4 forwarding on the host, on for the run and put back as it was.
pub struct Forwarding {
    was: Option<String>,
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

impl Forwarding {
    pub fn enable() -> Result<Forwarding> {
        let was =
            std::fs::read_to_string(IP_FORWARD).with_context(|| format!("reading {IP_FORWARD}"))?;
        if was.trim() == "1" {
            return Ok(Forwarding { was: None });
        }
        std::fs::write(IP_FORWARD, "1").with_context(|| format!("writing {IP_FORWARD}"))?;
        Ok(Forwarding { was: Some(was) })
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        if let Some(was) = &self.was {
            if let Err(e) = std::fs::write(IP_FORWARD, was.trim()) {
                eprintln!("bench: restoring {IP_FORWARD}: {e}");
            }
        }
    }
}

/// Removes what a killed run left: `bsb-*` namespaces and links, then, with
/// `remove_datapath`, the benchmark's datapath. Then refuses to run if anything else routes the
/// benchmark's addresses.
pub fn sweep_leftovers(remove_datapath: impl FnOnce() -> Result<()>) -> Result<()> {
    for netns in netns_names()? {
        if netns.starts_with(PREFIX) {
            ip(&["netns", "del", &netns])?;
        }
    }
    for link in link_names()? {
        if link.starts_with(PREFIX) {
            ip(&["link", "del", &link])?;
        }
    }
    remove_datapath()?;
    if let Some(route) = our_routes()?.first() {
        bail!("a route on this machine already uses the benchmark's addresses: {route}");
    }
    Ok(())
}

/// Prints what the benchmark may have left behind, as the last line of its output: its
/// namespaces, links and routes, and `bpf_dir` if it is still there.
pub fn print_leftovers(bpf_dir: &str) {
    let mut left: Vec<String> = Vec::new();
    let ours = |name: &String| name.starts_with(PREFIX);
    match netns_names() {
        Ok(names) => left.extend(
            names
                .iter()
                .filter(|n| ours(n))
                .map(|n| format!("netns {n}")),
        ),
        Err(e) => left.push(format!("(listing namespaces: {e:#})")),
    }
    match link_names() {
        Ok(names) => left.extend(
            names
                .iter()
                .filter(|n| ours(n))
                .map(|n| format!("link {n}")),
        ),
        Err(e) => left.push(format!("(listing links: {e:#})")),
    }
    if Path::new(bpf_dir).exists() {
        left.push(bpf_dir.to_owned());
    }
    match our_routes() {
        Ok(routes) => left.extend(routes.into_iter().map(|r| format!("route {r}"))),
        Err(e) => left.push(format!("(listing routes: {e:#})")),
    }
    if left.is_empty() {
        println!("left behind: nothing");
    } else {
        println!("left behind:\n  {}", left.join("\n  "));
    }
}

pub fn netns_names() -> Result<Vec<String>> {
    // "NAME" or "NAME (id: N)", one a line.
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

pub fn link_names() -> Result<Vec<String>> {
    // "3: NAME@PEER: <FLAGS> ...", one a line.
    Ok(ip(&["-o", "link", "show"])?
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|n| {
            n.trim_end_matches(':')
                .split('@')
                .next()
                .unwrap_or(n)
                .to_owned()
        })
        .collect())
}

/// Host routes into the benchmark's address ranges.
pub fn our_routes() -> Result<Vec<String>> {
    Ok(ip(&["-o", "route", "show"])?
        .lines()
        .filter(|l| {
            ["10.219.", "10.220.", "10.221."]
                .iter()
                .any(|p| l.contains(p))
        })
        .map(str::to_owned)
        .collect())
}

// ---- the server and the clients -----------------------------------------------------------

/// Accepts and closes connections on every target port, on every address of its namespace.
pub struct Server {
    accepted: Arc<AtomicU64>,
    _thread: ServerThread,
}

impl Server {
    pub fn start(netns: &'static str) -> Result<Server> {
        let accepted = Arc::new(AtomicU64::new(0));
        let counted = accepted.clone();
        let thread = ServerThread::start(
            "bsb-server".to_owned(),
            "bench: the server".to_owned(),
            netns.to_owned(),
            SERVER_CPU,
            listen_all,
            move |listeners: &Vec<TcpListener>, stop| serve(listeners, stop, &counted),
        )?;
        Ok(Server {
            accepted,
            _thread: thread,
        })
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Waits (briefly: the connects are done, only accepting may lag) until `count`
    /// connections have been accepted in all.
    pub fn wait_accepted(&self, count: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.accepted() < count {
            ensure!(
                Instant::now() < deadline,
                "the server accepted {} of {count}",
                self.accepted()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }
}

/// Listeners on every target port of the calling thread's namespace, on every address.
pub fn listen_all() -> Result<Vec<TcpListener>> {
    (0..TARGET_PORTS)
        .map(|i| {
            let port = FIRST_TARGET_PORT + i;
            let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
                .with_context(|| format!("listening on port {port}"))?;
            // A long accept queue, so that a slow turn of the accept loop never drops a SYN.
            nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::MAXCONN)
                .context("raising the listen backlog")?;
            listener
                .set_nonblocking(true)
                .context("making the listener non-blocking")?;
            Ok(listener)
        })
        .collect()
}

fn serve(listeners: &[TcpListener], stop: &AtomicBool, accepted: &AtomicU64) -> Result<()> {
    use nix::poll::{poll, PollFd, PollFlags};
    while !stop.load(Ordering::SeqCst) {
        let mut fds: Vec<PollFd<'_>> = listeners
            .iter()
            .map(|l| PollFd::new(l.as_fd(), PollFlags::POLLIN))
            .collect();
        poll(&mut fds, 100u16).context("waiting for connections")?;
        for listener in listeners {
            loop {
                match listener.accept() {
                    // Closed at once: the client resets the connection anyway.
                    Ok(_) => {
                        accepted.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::ConnectionAborted => {}
                    Err(e) => return Err(e).context("accepting"),
                }
            }
        }
    }
    Ok(())
}

/// Work for a [`Client`]'s thread: measurements, in µs.
type Job = Box<dyn FnOnce() -> Result<Vec<f64>> + Send>;

/// A thread in a network namespace, pinned to [`CLIENT_CPU`], that connects on request.
pub struct Client {
    jobs: Option<mpsc::Sender<Job>>,
    results: mpsc::Receiver<Result<Vec<f64>>>,
    thread: Option<JoinHandle<()>>,
}

impl Client {
    pub fn spawn(netns: &'static str) -> Result<Client> {
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let (results_tx, results_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("bsb-client-{netns}"))
            .spawn(move || {
                if let Err(e) = enter_netns(netns).and_then(|()| pin(CLIENT_CPU)) {
                    let _ = results_tx.send(Err(e));
                    return;
                }
                let _ = results_tx.send(Ok(Vec::new()));
                for job in jobs_rx {
                    if results_tx.send(job()).is_err() {
                        return;
                    }
                }
            })
            .context("starting a client thread")?;
        let client = Client {
            jobs: Some(jobs_tx),
            results: results_rx,
            thread: Some(thread),
        };
        client
            .results
            .recv()
            .context("the client thread ended before it started")??;
        Ok(client)
    }

    /// `count` connects to `target`, each closed at once; their latencies in µs.
    pub fn connect(
        &self,
        target: SocketAddrV4,
        count: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<f64>> {
        self.run(move || connect_many(target, count, timeout))
    }

    /// Runs `job` in the client's namespace and on its CPU, and returns what it measured.
    pub fn run(&self, job: impl FnOnce() -> Result<Vec<f64>> + Send + 'static) -> Result<Vec<f64>> {
        let jobs = self.jobs.as_ref().context("the client is stopped")?;
        jobs.send(Box::new(job))
            .ok()
            .context("the client thread has ended")?;
        self.results.recv().context("the client thread has ended")?
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Closing the job channel ends the thread's loop.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Abortive close: RST instead of FIN, so no TIME_WAIT piles up over thousands of connects.
const LINGER_RESET: nix::libc::linger = nix::libc::linger {
    l_onoff: 1,
    l_linger: 0,
};

/// A TCP connection to `target`, given `timeout` (or the kernel's) to be made.
pub fn open(target: SocketAddrV4, timeout: Option<Duration>) -> Result<TcpStream> {
    match timeout {
        Some(timeout) => TcpStream::connect_timeout(&target.into(), timeout),
        None => TcpStream::connect(target),
    }
    .with_context(|| format!("connecting to {target}"))
}

/// Makes closing `stream` reset it ([`LINGER_RESET`]).
pub fn reset_on_close(stream: &TcpStream) -> Result<()> {
    nix::sys::socket::setsockopt(stream, nix::sys::socket::sockopt::Linger, &LINGER_RESET)
        .context("setting SO_LINGER")
}

fn connect_many(target: SocketAddrV4, count: usize, timeout: Option<Duration>) -> Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        let stream = open(target, timeout)?;
        reset_on_close(&stream)?;
        drop(stream);
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(samples)
}

// ---- the processes measured -------------------------------------------------------------

/// A process's resident memory, from /proc/PID/status, in KiB.
#[derive(Clone, Copy)]
pub struct Memory {
    pub rss: u64,
    pub peak: u64,
    /// VmRSS's anonymous part (the heap, stacks) and file-backed part (the binary's pages).
    pub anon: u64,
    pub file: u64,
}

impl Memory {
    pub fn of(pid: u32) -> Result<Memory> {
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("{path} has no {name}"))
        };
        Ok(Memory {
            rss: field("VmRSS:")?,
            peak: field("VmHWM:")?,
            anon: field("RssAnon:")?,
            file: field("RssFile:")?,
        })
    }
}

// ---- reporting ----------------------------------------------------------------------------

#[derive(Clone)]
pub struct Row {
    pub label: String,
    pub samples: Vec<f64>,
    /// Shown instead of numbers when there are no samples.
    pub note: String,
}

pub struct Table {
    title: String,
    unit: String,
    /// Each row and the row it is compared with.
    rows: Vec<(Row, Option<usize>)>,
}

impl Table {
    pub fn new(title: &str, unit: &str) -> Table {
        Table {
            title: title.to_owned(),
            unit: unit.to_owned(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, row: Row, baseline: Option<usize>) -> usize {
        self.rows.push((row, baseline));
        self.rows.len() - 1
    }

    pub fn print(&self) {
        println!("\n{}", self.title);
        let has_ratios = self.rows.iter().any(|(_, b)| b.is_some());
        println!(
            "  {:<56} {:>5} {:>9} {:>9} {:>9} {:>9}{}",
            self.unit,
            "n",
            "min",
            "median",
            "p99",
            "max",
            if has_ratios {
                "  ratio median (p99)"
            } else {
                ""
            }
        );
        for (row, baseline) in &self.rows {
            let Some(stats) = Stats::of(&row.samples) else {
                println!("  {:<56} {}", row.label, row.note);
                continue;
            };
            let ratio = baseline
                .and_then(|b| Stats::of(&self.rows[b].0.samples))
                .map(|base| {
                    format!(
                        "  {:.2}× ({:.2}×)",
                        stats.median / base.median,
                        stats.p99 / base.p99
                    )
                })
                .unwrap_or_default();
            println!(
                "  {:<56} {:>5} {:>9.1} {:>9.1} {:>9.1} {:>9.1}{ratio}",
                row.label, stats.n, stats.min, stats.median, stats.p99, stats.max
            );
        }
    }
}
