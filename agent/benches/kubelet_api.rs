//! The kubelet API's streams, through bosun's HTTPS port (TLS, a client certificate, the
//! proxy to the runtime's streaming server), against the same streams taken without bosun
//! in the same run, on a real private containerd (a `TestNode`) and a standalone `bosun run`
//! with `enableServer: true`:
//!
//! - `exec_round_trip`: open an exec of `cat` with stdin, send a line, wait for it back,
//!   close; through bosun's `/exec/…` against CRI `Exec` and its URL taken directly;
//! - `exec_throughput`: `head -c N /dev/zero` streamed to stdout, the same two ways;
//! - `logs_follow`: a container writing lines as fast as it can, followed through
//!   `/containerLogs/…?follow=true` against reading and parsing its CRI log file directly;
//! - `port_forward`: a file fetched from busybox `httpd` in the pod through
//!   `/portForward/…` against CRI `PortForward` and its URL taken directly (WebSocket);
//! - `open_streams`: bosun's memory and CPU idle and with N `logs -f` streams held open.
//!
//! The streaming sessions are WebSocket with Kubernetes' channel protocol (containerd 1.6
//! speaks `v4.channel.k8s.io`), as the API server passes them on. The two sides' samples
//! alternate, so a change in load hits both alike.
//!
//! Run as root: `cargo bench -p bosun --bench kubelet_api -- [--quick | --smoke]
//! [--samples N] [FILTER...]` (or `scripts/bench.sh kubelet_api`).

// Only its `/proc` readings and how it runs: the bare pod starts are the pod benchmarks'.
#[allow(dead_code)]
#[path = "common/bare.rs"]
mod bare;
mod common;

use bare::{cpu_percent, cpu_ticks, status_kib, NODE_NAME};
use common::{load_average, Args as Options, Mode, Stats};

use std::io::{Read as _, Seek as _};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bosun::pod::spec::POD_NAME_LABEL;
use bosun_cri::streaming::{self, Session, TlsConnector};
use bosun_cri::{api, CriClient};
use bosun_tests::images::BUSYBOX_IMAGE;
use bosun_tests::node::TestNode;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::{Body as _, Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");
const BENCHMARKS: [&str; 5] = [
    "exec_round_trip",
    "exec_throughput",
    "logs_follow",
    "port_forward",
    "open_streams",
];

/// The pod every benchmark streams from (a static pod in the default namespace).
const POD: &str = "kapi";
const CONTAINER: &str = "app";
/// The port its `httpd` serves on.
const HTTP_PORT: u16 = 8080;
/// The line sent through `cat`.
const LINE: &[u8] = b"the quick brown fox jumps over the lazy dog\n";
/// A log line of 100 bytes with its newline.
const LOG_LINE: &str = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopq";
/// The WebSocket subprotocol of port-forward sessions (kubelet's `portforward/websocket.go`);
/// for exec the client offers v5 and v4, and containerd 1.6 chooses v4.
const PORT_FORWARD_PROTOCOL: &str = "v4.channel.k8s.io";

fn main() {
    let usage =
        format!("[--quick | --smoke] [--samples N] [FILTER...]  (benchmarks: {BENCHMARKS:?})");
    let Some(options) = common::bench_args("kubelet_api", &usage, |args| {
        Options::parse(args, &BENCHMARKS, |_, _| Ok(false))
    }) else {
        return;
    };
    bare::run_async("kubelet_api", run(&options));
}

// ---- options and sizes ------------------------------------------------------------------

const MIB: u64 = 1024 * 1024;

struct Sizes {
    round_trips: usize,
    exec_samples: usize,
    exec_bytes: u64,
    log_samples: usize,
    /// Lines of [`LOG_LINE`] written per `logs_follow` sample.
    log_lines: u64,
    forward_samples: usize,
    forward_bytes: u64,
    streams: usize,
    /// How long `open_streams` lets the daemon settle before reading its memory, and the
    /// window its CPU is measured over.
    window: Duration,
}

impl Options {
    fn sizes(&self) -> Sizes {
        let mut sizes = match self.mode {
            Mode::Smoke => Sizes {
                round_trips: 1,
                exec_samples: 1,
                exec_bytes: MIB,
                log_samples: 1,
                log_lines: 10_000,
                forward_samples: 1,
                forward_bytes: MIB,
                streams: 5,
                window: Duration::from_secs(1),
            },
            Mode::Quick => Sizes {
                round_trips: 20,
                exec_samples: 3,
                exec_bytes: 100 * MIB,
                log_samples: 2,
                log_lines: 50 * MIB / 100,
                forward_samples: 3,
                forward_bytes: 100 * MIB,
                streams: 100,
                window: Duration::from_secs(5),
            },
            Mode::Full => Sizes {
                round_trips: 200,
                exec_samples: 10,
                exec_bytes: 100 * MIB,
                log_samples: 6,
                log_lines: 50 * MIB / 100,
                forward_samples: 10,
                forward_bytes: 100 * MIB,
                streams: 100,
                window: Duration::from_secs(10),
            },
        };
        if let Some(n) = self.samples {
            sizes.round_trips = n;
            sizes.exec_samples = n;
            sizes.log_samples = n;
            sizes.forward_samples = n;
        }
        sizes
    }
}

// ---- the run ----------------------------------------------------------------------------

async fn run(options: &Options) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmarks need root: they run containerd and pods");
    }
    let node = TestNode::start("kapi-bench").await?;
    let outcome = run_on(&node, options).await;
    let shutdown = node.shutdown().await;
    outcome.and(shutdown)
}

async fn run_on(node: &TestNode, options: &Options) -> Result<()> {
    let sizes = options.sizes();
    let dir = node.dir().join("kubelet-api");
    let pki = Pki::write(&dir.join("pki"))?;
    let port = bosun_tests::cluster::free_port()?;
    // No rotation during the run: the floor of `logs_follow` reads one file.
    let config = format!(
        "enableServer: true\naddress: 127.0.0.1\nport: {port}\n\
         tlsCertFile: {}\ntlsPrivateKeyFile: {}\n\
         authentication:\n  x509:\n    clientCAFile: {}\n  webhook:\n    enabled: false\n\
         authorization:\n  mode: AlwaysAllow\n\
         containerLogMaxSize: 4Gi\n",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display(),
    );
    let mut daemon =
        bosun_tests::daemon::Daemon::start_at(Path::new(BOSUN), node, &dir, &config).await?;
    let result = async {
        let pid = daemon.pid().context("bosun exited at once")?;
        let cri = node.cri().await?;
        daemon.write_manifest(&format!("{POD}.yaml"), &manifest(&sizes))?;
        let socket = bosun::daemon::api_socket(daemon.root());
        let pod = wait_running(&mut daemon, &socket).await?;
        let bench = Bench::new(cri, pki.connector()?, port, pid, pod, sizes).await?;
        bench.print_machine(options);
        bench.check_api().await?;
        // First, while nothing else has grown bosun's heap.
        if options.selected("open_streams") {
            bench.open_streams().await?;
        }
        if options.selected("exec_round_trip") {
            bench.exec_round_trip().await?;
        }
        if options.selected("exec_throughput") {
            bench.exec_throughput().await?;
        }
        if options.selected("logs_follow") {
            bench.logs_follow().await?;
        }
        if options.selected("port_forward") {
            bench.port_forward().await?;
        }
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        eprintln!("--- end of bosun's log ---\n{}", log_tail(&daemon, 20));
    }
    let removed = remove_pod(node, &daemon).await;
    daemon.kill().await.context("killing bosun")?;
    println!("\nload average at the end: {}", load_average());
    result.and(removed)
}

/// The pod: busybox `httpd` serving `/big` (`forward_bytes` of zeros) on [`HTTP_PORT`], and
/// for each `/tmp/go-I` that appears (I = 0, 1, …) `log_lines` lines of [`LOG_LINE`] written
/// to stdout as fast as `yes` and `head` go. `/tmp/ready` once it serves.
fn manifest(sizes: &Sizes) -> String {
    let script = format!(
        "trap 'exit 0' TERM; mkdir -p /www && head -c {bytes} /dev/zero > /www/big && \
         (httpd -f -p {HTTP_PORT} -h /www &) && touch /tmp/ready; i=0; \
         while true; do while [ ! -e /tmp/go-$i ]; do sleep 0.01; done; \
         yes {LOG_LINE} | head -n {lines}; i=$((i+1)); done",
        bytes = sizes.forward_bytes,
        lines = sizes.log_lines,
    );
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {POD}\n  namespace: default\nspec:\n  \
         terminationGracePeriodSeconds: 5\n  containers:\n  - name: {CONTAINER}\n    \
         image: {BUSYBOX_IMAGE}\n    imagePullPolicy: IfNotPresent\n    \
         command: [sh, -c, {script:?}]\n"
    )
}

/// The static pod's name on the benchmark's node.
fn full_name() -> String {
    format!("{POD}-{NODE_NAME}")
}

/// What the benchmarks need to know of the running pod.
struct RunningPod {
    container_id: String,
    sandbox_id: String,
    log_path: PathBuf,
}

/// Waits until bosun's API reports the pod's container running.
async fn wait_running(
    daemon: &mut bosun_tests::daemon::Daemon,
    socket: &Path,
) -> Result<RunningPod> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let full = full_name();
    loop {
        if let Some(status) = daemon.try_wait()? {
            bail!("bosun exited ({status})");
        }
        let pods = bosun::api::get_pods(socket).await.unwrap_or_default();
        if let Some(id) = pods
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(&full))
            .and_then(running_container_id)
        {
            return Ok(RunningPod {
                container_id: id,
                sandbox_id: String::new(),
                log_path: PathBuf::new(),
            });
        }
        ensure!(
            Instant::now() < deadline,
            "pod {full} was not running within 2 min"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn running_container_id(pod: &Pod) -> Option<String> {
    let status = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|s| s.name == CONTAINER)?;
    status.state.as_ref()?.running.as_ref()?;
    let id = status.container_id.as_deref()?;
    Some(id.split_once("://").map_or(id, |(_, id)| id).to_owned())
}

/// Deletes the manifest and waits until CRI holds none of the pod's sandboxes (the node's
/// teardown removes whatever is left after that).
async fn remove_pod(node: &TestNode, daemon: &bosun_tests::daemon::Daemon) -> Result<()> {
    let path = daemon.manifests().join(format!("{POD}.yaml"));
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    let cri = node.cri().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pod_sandboxes(&cri).await?.is_empty() {
        ensure!(
            Instant::now() < deadline,
            "the pod was still there 60 s after its manifest went"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn pod_sandboxes(cri: &CriClient) -> Result<Vec<api::PodSandbox>> {
    cri.list_pod_sandbox(Some(api::PodSandboxFilter {
        label_selector: [(POD_NAME_LABEL.to_owned(), full_name())].into(),
        ..Default::default()
    }))
    .await
    .context("ListPodSandbox")
}

fn log_tail(daemon: &bosun_tests::daemon::Daemon, lines: usize) -> String {
    let log = daemon.log();
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---- certificates -----------------------------------------------------------------------

/// A CA of the benchmark's own, the serving certificate it signed for 127.0.0.1 (files for
/// bosun), and a client certificate it signed, in `system:masters` (kept for the client).
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    ca_der: CertificateDer<'static>,
    client_der: CertificateDer<'static>,
    client_key_der: Vec<u8>,
}

impl Pki {
    fn write(dir: &Path) -> Result<Pki> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kubelet-api-bench-ca");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate()?)?;

        let mut server_params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])?;
        server_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, NODE_NAME);
        server_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = rcgen::KeyPair::generate()?;
        let server = server_params.signed_by(&server_key, &*ca)?;

        let mut client_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        client_params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "system:masters");
        client_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kubelet-api-bench");
        client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = rcgen::KeyPair::generate()?;
        let client = client_params.signed_by(&client_key, &*ca)?;

        let pki = Pki {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            ca_der: ca.der().clone(),
            client_der: client.der().clone(),
            client_key_der: client_key.serialize_der(),
        };
        for (path, pem) in [
            (&pki.ca, ca.pem()),
            (&pki.server_cert, server.pem()),
            (&pki.server_key, server_key.serialize_pem()),
        ] {
            std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(pki)
    }

    /// TLS that trusts the CA and presents the client certificate.
    fn connector(&self) -> Result<TlsConnector> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        let key = PrivateKeyDer::try_from(self.client_key_der.clone())
            .map_err(|e| anyhow::anyhow!("the client key: {e}"))?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![self.client_der.clone()], key)?;
        Ok(TlsConnector::from(Arc::new(config)))
    }
}

// ---- the benchmarks ---------------------------------------------------------------------

struct Bench {
    cri: CriClient,
    tls: TlsConnector,
    port: u16,
    pid: u32,
    pod: RunningPod,
    sizes: Sizes,
    /// The next `/tmp/go-I` the pod waits for.
    next_burst: std::sync::atomic::AtomicU32,
}

/// Which way a stream goes: through bosun's API, or straight to the runtime's URL.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Bosun,
    Direct,
}

impl Bench {
    async fn new(
        cri: CriClient,
        tls: TlsConnector,
        port: u16,
        pid: u32,
        mut pod: RunningPod,
        sizes: Sizes,
    ) -> Result<Bench> {
        let status = cri
            .container_status(&pod.container_id, false)
            .await
            .context("ContainerStatus")?
            .status
            .context("the container has no status")?;
        pod.log_path = PathBuf::from(status.log_path);
        pod.sandbox_id = pod_sandboxes(&cri)
            .await?
            .into_iter()
            .filter(|s| s.state == api::PodSandboxState::SandboxReady as i32)
            .max_by_key(|s| s.created_at)
            .map(|s| s.id)
            .context("the pod has no ready sandbox")?;
        let bench = Bench {
            cri,
            tls,
            port,
            pid,
            pod,
            sizes,
            next_burst: std::sync::atomic::AtomicU32::new(0),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while bench.sh("test -e /tmp/ready").await.is_err() {
            ensure!(
                Instant::now() < deadline,
                "the pod did not get ready within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(bench)
    }

    fn print_machine(&self, options: &Options) {
        let version = self.cri.version();
        println!("bosun kubelet API benchmarks{}", options.mode.label());
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "?".to_owned())
        };
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let model = read("/proc/cpuinfo")
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map_or_else(|| "?".to_owned(), |m| m.trim().to_owned());
        println!(
            "machine: {cpus} CPUs ({model}), kernel {}, {} {}",
            read("/proc/sys/kernel/osrelease"),
            version.runtime_name,
            version.runtime_version
        );
        println!("load average at the start: {}", load_average());
    }

    /// Runs `script` in the pod's container through CRI ExecSync.
    async fn sh(&self, script: &str) -> Result<String> {
        bosun_tests::daemon::sh(&self.cri, &self.pod.container_id, script).await
    }

    fn pod_path(&self, resource: &str) -> String {
        format!("/{resource}/default/{}", full_name())
    }

    fn bosun_url(&self, path_and_query: &str) -> String {
        format!("https://127.0.0.1:{}{path_and_query}", self.port)
    }

    /// That the port answers, with TLS and the client certificate, within 30 s of start.
    async fn check_api(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.get("/healthz").await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context("the kubelet API did not answer within 30 s"))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// `GET path` on bosun's port, on a connection of its own; fails unless 200 OK. The
    /// connection lives as long as the response's body.
    async fn get(&self, path: &str) -> Result<Response<Incoming>> {
        let tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))
            .await
            .context("connecting to the kubelet API")?;
        tcp.set_nodelay(true)?;
        let tls = self
            .tls
            .connect(
                ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into()),
                tcp,
            )
            .await
            .context("the kubelet API's TLS handshake")?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .context("HTTP to the kubelet API")?;
        tokio::spawn(connection);
        let request = Request::get(path)
            .header(hyper::header::HOST, format!("127.0.0.1:{}", self.port))
            .body(Empty::<Bytes>::new())?;
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("GET {path}"))?;
        if response.status() != StatusCode::OK {
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            bail!("GET {path}: {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(response)
    }

    /// An exec session of `command` (stdin only if `stdin`; stdout and stderr always).
    async fn open_exec(&self, via: Via, command: &[&str], stdin: bool) -> Result<Session> {
        match via {
            Via::Bosun => {
                let mut query: Vec<String> = command
                    .iter()
                    .map(|c| format!("command={}", form_encode(c)))
                    .collect();
                if stdin {
                    query.push("input=1".to_owned());
                }
                query.extend(["output=1".to_owned(), "error=1".to_owned()]);
                let url = self.bosun_url(&format!(
                    "{}/{CONTAINER}?{}",
                    self.pod_path("exec"),
                    query.join("&")
                ));
                streaming::connect(&url, streaming::EXEC_PROTOCOLS, Some(&self.tls))
                    .await
                    .context("exec through bosun")
            }
            Via::Direct => {
                let url = self
                    .cri
                    .exec(api::ExecRequest {
                        container_id: self.pod.container_id.clone(),
                        cmd: command.iter().map(|c| (*c).to_owned()).collect(),
                        stdin,
                        stdout: true,
                        stderr: true,
                        ..Default::default()
                    })
                    .await
                    .context("CRI Exec")?;
                streaming::connect(&url, streaming::EXEC_PROTOCOLS, None)
                    .await
                    .context("exec on the runtime's URL")
            }
        }
    }

    /// Alternates `sample` between the two ways, `n` times each, after one unmeasured
    /// sample each way; the bosun and direct samples.
    async fn alternate<F, Fut>(&self, n: usize, sample: F) -> Result<(Vec<f64>, Vec<f64>)>
    where
        F: Fn(Via) -> Fut,
        Fut: std::future::Future<Output = Result<f64>>,
    {
        sample(Via::Direct).await?;
        sample(Via::Bosun).await?;
        let (mut bosun, mut direct) = (Vec::new(), Vec::new());
        for i in 0..n {
            // Each goes first half the time.
            let order = if i % 2 == 0 {
                [Via::Direct, Via::Bosun]
            } else {
                [Via::Bosun, Via::Direct]
            };
            for via in order {
                let value = sample(via).await?;
                match via {
                    Via::Bosun => bosun.push(value),
                    Via::Direct => direct.push(value),
                }
            }
        }
        Ok((bosun, direct))
    }

    async fn exec_round_trip(&self) -> Result<()> {
        let load = load_average();
        let protocol = {
            let session = self.open_exec(Via::Bosun, &["cat"], true).await?;
            let protocol = session.protocol().unwrap_or("(none)").to_owned();
            session.close().await?;
            protocol
        };
        let (bosun, direct) = self
            .alternate(self.sizes.round_trips, |via| self.round_trip(via))
            .await?;
        let mut table = Table::new(
            &format!(
                "exec_round_trip: open an exec of `cat` (stdin), send a {}-byte line, read it \
                 back, close ({protocol})",
                LINE.len()
            ),
            "ms",
            &load,
        );
        let floor = table.row("direct: CRI Exec + the runtime's URL", direct, None);
        table.row("bosun: /exec (TLS, client certificate)", bosun, Some(floor));
        table.print();
        // A closed session must end its `cat` (stdin closes), or they would pile up.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.sh("ps -o comm | grep -c '^cat$' || true").await?;
            if left.trim() == "0" {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "{} `cat` processes still run 10 s after their sessions closed",
                left.trim()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    async fn round_trip(&self, via: Via) -> Result<f64> {
        let t0 = Instant::now();
        let mut session = self.open_exec(via, &["cat"], true).await?;
        session.send(streaming::STDIN, LINE).await?;
        let mut echoed = Vec::new();
        while echoed.len() < LINE.len() {
            match session.recv().await? {
                Some((streaming::STDOUT, data)) => echoed.extend_from_slice(&data),
                Some((streaming::ERROR | streaming::STDERR, data)) if !data.is_empty() => {
                    bail!("cat: {}", String::from_utf8_lossy(&data))
                }
                Some(_) => {}
                None => bail!("the exec session closed before the line came back"),
            }
        }
        ensure!(echoed == LINE, "cat sent back {echoed:?}");
        session.close().await?;
        Ok(ms(t0.elapsed()))
    }

    async fn exec_throughput(&self) -> Result<()> {
        let load = load_average();
        let (bosun, direct) = self
            .alternate(self.sizes.exec_samples, |via| self.exec_stream(via))
            .await?;
        let mut table = Table::new(
            &format!(
                "exec_throughput: `head -c {} /dev/zero` on stdout, exec opened → stream closed",
                self.sizes.exec_bytes
            ),
            "MiB/s",
            &load,
        );
        let floor = table.row("direct: CRI Exec + the runtime's URL", direct, None);
        table.row("bosun: /exec (TLS, client certificate)", bosun, Some(floor));
        table.print();
        Ok(())
    }

    /// MiB/s of one exec streaming `exec_bytes` to stdout, from opening it to its end.
    async fn exec_stream(&self, via: Via) -> Result<f64> {
        let bytes = self.sizes.exec_bytes.to_string();
        let t0 = Instant::now();
        let mut session = self
            .open_exec(via, &["head", "-c", &bytes, "/dev/zero"], false)
            .await?;
        let mut received = 0u64;
        let mut status = Vec::new();
        while let Some((channel, data)) = session.recv().await? {
            match channel {
                streaming::STDOUT => received += data.len() as u64,
                streaming::STDERR | streaming::ERROR => status.extend_from_slice(&data),
                _ => {}
            }
        }
        let elapsed = t0.elapsed();
        ensure!(
            received == self.sizes.exec_bytes,
            "received {received} of {} bytes; status {}",
            self.sizes.exec_bytes,
            String::from_utf8_lossy(&status)
        );
        Ok(mib_per_second(received, elapsed))
    }

    async fn logs_follow(&self) -> Result<()> {
        let load = load_average();
        let (bosun, direct) = self
            .alternate(self.sizes.log_samples, |via| self.follow_burst(via))
            .await?;
        let bytes = self.sizes.log_lines * LOG_LINE.len() as u64 + self.sizes.log_lines;
        let mut table = Table::new(
            &format!(
                "logs_follow: {} lines ({bytes} bytes of content) written as fast as the \
                 container can, signal → last byte followed",
                self.sizes.log_lines
            ),
            "MiB/s",
            &load,
        );
        let floor = table.row(
            "floor: the CRI log file read and parsed directly",
            direct,
            None,
        );
        table.row(
            "bosun: /containerLogs?follow=true&tailLines=0",
            bosun,
            Some(floor),
        );
        table.print();
        Ok(())
    }

    /// Sets off one burst of log lines and follows it to its last byte: through bosun, or by
    /// reading the CRI log file from its current end, every 1 ms when there is nothing new.
    /// MiB/s of content (what follows the CRI prefix, with the newline), from when the signal
    /// was given to the last byte.
    async fn follow_burst(&self, via: Via) -> Result<f64> {
        let want = self.sizes.log_lines * (LOG_LINE.len() as u64 + 1);
        let burst = self
            .next_burst
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match via {
            Via::Bosun => {
                let response = self
                    .get(&format!(
                        "{}/{CONTAINER}?follow=true&tailLines=0",
                        self.pod_path("containerLogs")
                    ))
                    .await?;
                let mut body = response.into_body();
                self.sh(&format!("touch /tmp/go-{burst}")).await?;
                let t0 = Instant::now();
                let mut received = 0u64;
                while received < want {
                    let frame = tokio::time::timeout(Duration::from_secs(60), body.frame())
                        .await
                        .context("logs -f stalled for 60 s")?
                        .context("logs -f ended")??;
                    if let Some(data) = frame.data_ref() {
                        received += data.len() as u64;
                    }
                }
                let elapsed = t0.elapsed();
                ensure!(received == want, "followed {received} bytes of {want}");
                Ok(mib_per_second(received, elapsed))
            }
            Via::Direct => {
                let mut file = std::fs::File::open(&self.pod.log_path)
                    .with_context(|| format!("opening {}", self.pod.log_path.display()))?;
                file.seek(std::io::SeekFrom::End(0))?;
                self.sh(&format!("touch /tmp/go-{burst}")).await?;
                let t0 = Instant::now();
                let received = tokio::task::spawn_blocking(move || follow_file(file, want))
                    .await
                    .context("the log reader")??;
                Ok(mib_per_second(received, t0.elapsed()))
            }
        }
    }

    async fn port_forward(&self) -> Result<()> {
        let load = load_average();
        let (bosun, direct) = self
            .alternate(self.sizes.forward_samples, |via| self.fetch(via))
            .await?;
        let mut table = Table::new(
            &format!(
                "port_forward: GET of {} bytes from httpd in the pod over a WebSocket \
                 port-forward, opened → last byte",
                self.sizes.forward_bytes
            ),
            "MiB/s",
            &load,
        );
        let floor = table.row("direct: CRI PortForward + the runtime's URL", direct, None);
        table.row(
            "bosun: /portForward (TLS, client certificate)",
            bosun,
            Some(floor),
        );
        table.print();
        Ok(())
    }

    /// MiB/s of one HTTP GET of `/big` through a port-forward session, from opening the
    /// session to the body's last byte.
    async fn fetch(&self, via: Via) -> Result<f64> {
        let t0 = Instant::now();
        let mut session = match via {
            Via::Bosun => {
                let url = self.bosun_url(&format!(
                    "{}?port={HTTP_PORT}",
                    self.pod_path("portForward")
                ));
                streaming::connect(&url, PORT_FORWARD_PROTOCOL, Some(&self.tls))
                    .await
                    .context("port-forward through bosun")?
            }
            Via::Direct => {
                let url = self
                    .cri
                    .port_forward(&self.pod.sandbox_id, vec![i32::from(HTTP_PORT)])
                    .await
                    .context("CRI PortForward")?;
                streaming::connect(
                    &format!("{url}?port={HTTP_PORT}"),
                    PORT_FORWARD_PROTOCOL,
                    None,
                )
                .await
                .context("port-forward on the runtime's URL")?
            }
        };
        // One port: channel 0 its data, channel 1 its errors.
        session
            .send(0, b"GET /big HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut response = HttpResponse::default();
        // The server's first message on each channel is the port, two bytes little-endian.
        let mut port_seen = [false; 2];
        while !response.complete() {
            let Some((channel, mut data)) = session.recv().await? else {
                bail!(
                    "the port-forward closed after {} bytes of the body",
                    response.body
                );
            };
            let Some(seen) = port_seen.get_mut(usize::from(channel)) else {
                continue;
            };
            if !*seen {
                ensure!(
                    data.len() >= 2 && u16::from_le_bytes([data[0], data[1]]) == HTTP_PORT,
                    "channel {channel} did not start with the port: {data:?}"
                );
                *seen = true;
                data = data.slice(2..);
            }
            match channel {
                0 => response.add(&data)?,
                _ if !data.is_empty() => {
                    bail!("port-forward error: {}", String::from_utf8_lossy(&data))
                }
                _ => {}
            }
        }
        let elapsed = t0.elapsed();
        ensure!(
            response.body == self.sizes.forward_bytes,
            "fetched {} bytes of {}",
            response.body,
            self.sizes.forward_bytes
        );
        session.close().await?;
        Ok(mib_per_second(response.body, elapsed))
    }

    async fn open_streams(&self) -> Result<()> {
        let load = load_average();
        let window = self.sizes.window;
        let idle = self.footprint(window).await?;
        let path = format!(
            "{}/{CONTAINER}?follow=true&tailLines=0",
            self.pod_path("containerLogs")
        );
        let mut streams = Vec::with_capacity(self.sizes.streams);
        for _ in 0..self.sizes.streams {
            streams.push(self.get(&path).await?);
        }
        let open = self.footprint(window).await?;
        // Still open: nothing of their bodies has ended.
        for stream in &streams {
            ensure!(!stream.body().is_end_stream(), "a logs -f stream ended");
        }
        drop(streams);
        let closed = self.footprint(window).await?;

        let n = self.sizes.streams;
        println!(
            "\nopen_streams: bosun's memory and CPU idle and with {n} `logs -f` streams open \
             (each its own TLS connection; {}s windows)",
            window.as_secs()
        );
        println!(
            "  load average {load} at the start, {} at the end",
            load_average()
        );
        println!(
            "  {:<44} {:>9} {:>9} {:>11}",
            "", "RSS MiB", "peak MiB", "CPU % core"
        );
        for (label, f) in [
            ("idle".to_owned(), &idle),
            (format!("{n} logs -f streams open"), &open),
            ("after they closed".to_owned(), &closed),
        ] {
            println!(
                "  {label:<44} {:>9.1} {:>9.1} {:>11.2}",
                f.rss_kib / 1024.0,
                f.hwm_kib / 1024.0,
                f.cpu_percent
            );
        }
        println!(
            "  per open stream: {:.1} KiB",
            (open.rss_kib - idle.rss_kib) / n as f64
        );
        Ok(())
    }

    /// bosun's RSS and peak after `window`, and its CPU over it.
    async fn footprint(&self, window: Duration) -> Result<Footprint> {
        let before = cpu_ticks(self.pid)?;
        tokio::time::sleep(window).await;
        let after = cpu_ticks(self.pid)?;
        let path = format!("/proc/{}/status", self.pid);
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        Ok(Footprint {
            rss_kib: status_kib(&status, "VmRSS:")?,
            hwm_kib: status_kib(&status, "VmHWM:")?,
            cpu_percent: cpu_percent(after.saturating_sub(before), window),
        })
    }
}

struct Footprint {
    rss_kib: f64,
    hwm_kib: f64,
    cpu_percent: f64,
}

/// Reads a CRI log file from where `file` stands as it grows, until `want` bytes of content
/// have come; the content read. Each line is `TIMESTAMP STREAM TAG CONTENT`; a full line
/// (`F`) ends with the newline, which counts, a partial one (`P`) has none.
fn follow_file(mut file: std::fs::File, want: u64) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut buf = vec![0u8; 256 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut content = 0u64;
    while content < want {
        let n = file.read(&mut buf)?;
        if n == 0 {
            ensure!(Instant::now() < deadline, "the log stalled for 60 s");
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = &pending[start..start + end];
            let mut fields = line.splitn(4, |&b| b == b' ');
            let (_time, _stream, tag) = (fields.next(), fields.next(), fields.next());
            let text = fields.next().unwrap_or_default();
            content += text.len() as u64 + u64::from(tag == Some(b"F".as_slice()));
            start += end + 1;
        }
        pending.drain(..start);
    }
    ensure!(
        content == want,
        "read {content} bytes of content, not {want}"
    );
    Ok(content)
}

/// An HTTP/1.0 response as it arrives: its head, then how much of its body.
#[derive(Default)]
struct HttpResponse {
    head: Vec<u8>,
    length: Option<u64>,
    body: u64,
}

impl HttpResponse {
    fn add(&mut self, data: &[u8]) -> Result<()> {
        if self.length.is_some() {
            self.body += data.len() as u64;
            return Ok(());
        }
        self.head.extend_from_slice(data);
        let Some(end) = self.head.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Ok(());
        };
        let head = String::from_utf8_lossy(&self.head[..end]).into_owned();
        ensure!(
            head.starts_with("HTTP/1.") && head.contains(" 200 "),
            "httpd answered {head:?}"
        );
        let length = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .with_context(|| format!("no Content-Length in {head:?}"))?;
        self.length = Some(length);
        self.body = (self.head.len() - end - 4) as u64;
        Ok(())
    }

    fn complete(&self) -> bool {
        self.length.is_some_and(|l| self.body >= l)
    }
}

fn form_encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn mib_per_second(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / MIB as f64 / elapsed.as_secs_f64()
}

// ---- reporting --------------------------------------------------------------------------

struct Row {
    label: String,
    samples: Vec<f64>,
    /// The row this one is compared with.
    baseline: Option<usize>,
}

struct Table {
    title: String,
    unit: String,
    load: String,
    rows: Vec<Row>,
}

impl Table {
    fn new(title: &str, unit: &str, load_at_start: &str) -> Table {
        Table {
            title: title.to_owned(),
            unit: unit.to_owned(),
            load: load_at_start.to_owned(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, label: &str, samples: Vec<f64>, baseline: Option<usize>) -> usize {
        self.rows.push(Row {
            label: label.to_owned(),
            samples,
            baseline,
        });
        self.rows.len() - 1
    }

    fn print(&self) {
        println!("\n{}", self.title);
        println!(
            "  load average {} at the start, {} at the end",
            self.load,
            load_average()
        );
        println!(
            "  {:<50} {:>4} {:>9} {:>9} {:>9} {:>9}  ratio of medians",
            self.unit, "n", "min", "median", "p99", "max"
        );
        for row in &self.rows {
            let Some(stats) = Stats::of(&row.samples) else {
                println!("  {:<50}    0", row.label);
                continue;
            };
            let ratio = row
                .baseline
                .and_then(|b| Stats::of(&self.rows[b].samples))
                .map(|base| format!("{:.2}×", stats.median / base.median))
                .unwrap_or_default();
            println!(
                "  {:<50} {:>4} {:>9.1} {:>9.1} {:>9.1} {:>9.1}  {ratio}",
                row.label, stats.n, stats.min, stats.median, stats.p99, stats.max
            );
        }
    }
}
