//! NetworkPolicy end to end: `bosun run` reads NetworkPolicies from its manifest directory and
//! enforces them on real containerd pods' interfaces with the real eBPF programs; clients are
//! network namespaces outside the pod network ("netns clients"), allowed or not by `ipBlock`.
//! The upstream truth table of pod-to-pod cases runs on the datapath alone, in
//! `netdp/tests/policy_truth.rs`; here are what only the daemon can show: no pod answers
//! before its policy is in place, enforcement survives a killed bosun, `bosun monitor` reports
//! drops, egress through a Service is judged by the backend it lands on, and both ways of
//! attaching (clsact filters, the default, and tcx links, forced with `BOSUN_TC_ATTACH`)
//! enforce and are removed by `--cleanup`.
//!
//! Each test runs on its own test node, whose slot numbers everything host-wide it touches:
//! the bpffs directory, the namespaces and veths (`bnp<slot>…`) and the clients' addresses
//! (10.232.<slot>.0/24). So the tests may run at once.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use bosun_tests::daemon::{self, container_id, ready, Daemon};
use bosun_tests::netns::NetnsPod;
use bosun_tests::node::TestNode;
use serde_json::Value;

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");
const WITHIN: Duration = Duration::from_secs(30);

async fn on_a_node<F, Fut>(name: &str, scenario: F) -> Result<()>
where
    F: FnOnce(TestNode, Daemon) -> Fut,
    Fut: std::future::Future<Output = (TestNode, Result<()>)>,
{
    daemon::on_a_node(Path::new(BOSUN), name, "", scenario).await
}

/// A netns client of this node: `10.232.<slot>.<4 index + 2>`.
fn client(node: &TestNode, index: u8, name: &str) -> Result<NetnsPod> {
    let slot = node.slot();
    NetnsPod::create(
        &format!("bnp{slot}-{name}"),
        &format!("bnp{slot}h{index}"),
        Ipv4Addr::new(10, 232, slot as u8, index * 4),
    )
}

/// A busybox httpd pod serving its own name on port 8080 (named `http`), labelled `labels`.
fn web_pod(name: &str, labels: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{{labels}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: {image}
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "mkdir -p /www && echo {name} > /www/index.html && exec httpd -f -p 8080 -h /www"]
    ports:
    - {{name: http, containerPort: 8080}}
    readinessProbe:
      tcpSocket: {{port: 8080}}
      periodSeconds: 1
"#,
        image = bosun_tests::BUSYBOX_IMAGE
    )
}

/// Ingress to `app: web` only from `allowed`'s address, on the pod's named port `http`.
fn web_policy(allowed: Ipv4Addr) -> String {
    format!(
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-from-allowed
spec:
  podSelector:
    matchLabels: {{app: web}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - ipBlock: {{cidr: {allowed}/32}}
    ports:
    - port: http
"#
    )
}

/// What one connection attempt got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The server answered: the pod was reachable.
    Answered,
    /// The pod's kernel refused (RST): its interface passed the packet.
    Refused,
    /// Nothing came back: dropped.
    TimedOut,
}

fn attempt(to: SocketAddr, timeout: Duration) -> Outcome {
    match TcpStream::connect_timeout(&to, timeout) {
        Ok(_) => Outcome::Answered,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Outcome::Refused,
        Err(_) => Outcome::TimedOut,
    }
}

/// GET / over HTTP/1.0 from inside `client`'s namespace; the body's first line.
fn http_get_from(client: &NetnsPod, to: SocketAddr, timeout: Duration) -> Result<String> {
    client.enter(move || {
        let mut stream = TcpStream::connect_timeout(&to, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let body = response
            .split("\r\n\r\n")
            .nth(1)
            .with_context(|| format!("no body in {response:?}"))?;
        Ok(body.trim().to_owned())
    })
}

/// Connection attempts from a client's namespace in a loop, on a thread of their own, until
/// stopped.
struct Prober {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<Vec<(SystemTime, Outcome)>>>,
}

impl Prober {
    fn start(client: &NetnsPod, to: SocketAddr, timeout: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let path = format!("/run/netns/{}", client.name());
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("entering {path}"))?;
            let mut outcomes = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                let at = SystemTime::now();
                outcomes.push((at, attempt(to, timeout)));
            }
            Ok(outcomes)
        });
        Prober { stop, thread }
    }

    fn stop(self) -> Result<Vec<(SystemTime, Outcome)>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the prober panicked"))?
    }
}

/// The IP CRI reports for the sandbox of the pod named `name` (any attempt), once it has one.
async fn sandbox_ip(node: &TestNode, name: &str, within: Duration) -> Result<Ipv4Addr> {
    let client = node.cri().await?;
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        for sandbox in client.list_pod_sandbox(None).await? {
            let named = sandbox
                .metadata
                .as_ref()
                .is_some_and(|m| m.name.starts_with(name));
            if !named {
                continue;
            }
            let status = client.pod_sandbox_status(&sandbox.id, false).await?;
            if let Some(ip) = status
                .status
                .and_then(|s| s.network)
                .and_then(|n| n.ip.parse().ok())
            {
                return Ok(ip);
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    bail!("no sandbox of {name} got an IP within {within:?}")
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

async fn bosun_json(args: &[&str]) -> Result<Value> {
    let output = tokio::process::Command::new(BOSUN)
        .args(args)
        .args(["-o", "json"])
        .output()
        .await?;
    if !output.status.success() {
        bail!(
            "bosun {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pod_under_policy_never_answers_a_denied_client() -> Result<()> {
    on_a_node("pol-new", |node, daemon| async move {
        let result = async {
            let denied = client(&node, 0, "denied")?;
            let allowed = client(&node, 1, "allowed")?;
            daemon.write_manifest("policy.yaml", &web_policy(allowed.ip()))?;
            daemon.write_manifest("web.yaml", &web_pod("web-1", "app: web"))?;

            // From the moment the sandbox has an address until well after the pod is Ready,
            // the denied client knocks on port 8080 as fast as it can.
            let ip = sandbox_ip(&node, "web-1", WITHIN).await?;
            let to = SocketAddr::from((ip, 8080));
            let prober = Prober::start(&denied, to, Duration::from_millis(30));
            daemon.wait_for("web-1", "Ready", WITHIN, ready).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let outcomes = prober.stop()?;

            // When the pod's only container was created, as the runtime recorded it.
            let cri = node.cri().await?;
            let web = daemon.pod("web-1").await.context("web-1 is listed")?;
            let status = cri
                .container_status(&container_id(&web, "app"), false)
                .await?
                .status
                .context("the container's status")?;
            let created = SystemTime::UNIX_EPOCH + Duration::from_nanos(status.created_at.try_into()?);

            let answered = outcomes.iter().filter(|(_, o)| *o == Outcome::Answered).count();
            let refused: Vec<SystemTime> = outcomes
                .iter()
                .filter(|(_, o)| *o == Outcome::Refused)
                .map(|(at, _)| *at)
                .collect();
            let timed_out = outcomes.len() - answered - refused.len();
            // Nothing in the pod ever answers the denied client. Between the CNI creating the
            // pod's interface and bosun attaching to it — before any container exists — the
            // pod's kernel may still refuse a connection with a reset; never after.
            assert_eq!(answered, 0, "the denied client got answers from web-1");
            let late: Vec<_> = refused.iter().filter(|at| **at >= created).collect();
            assert!(
                late.is_empty(),
                "{} resets after the container was created at {created:?}: {late:?}",
                late.len()
            );
            assert!(timed_out >= 10, "only {timed_out} dropped attempts while web-1 started");
            if let (Some(first), Some(last)) = (refused.first(), refused.last()) {
                eprintln!(
                    "resets before the programs were attached: {} over {:?}, {:?} before the container was created",
                    refused.len(),
                    last.duration_since(*first).unwrap_or_default(),
                    created.duration_since(*last).unwrap_or_default()
                );
            }
            // The server is up and the policy lets the allowed client in.
            let name = blocking(move || {
                http_get_from(&allowed, to, Duration::from_secs(2))
                    .context("the allowed client")
            })
            .await?;
            assert_eq!(name, "web-1");
            // Host to pod (kubelet's probes, here the readiness probe) is never blocked.
            let from_host = blocking(move || {
                Ok(attempt(to, Duration::from_secs(2)))
            })
            .await?;
            assert_eq!(from_host, Outcome::Answered);
            drop(denied);
            Ok(())
        }
        .await;
        (node, result)
    })
    .await
}

/// `bosun monitor -o json` as a child, with its lines arriving on a channel.
struct Monitor {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Monitor {
    fn start(node: &TestNode, daemon: &Daemon) -> Result<Self> {
        let mut child = std::process::Command::new(BOSUN)
            .args(["monitor", "-o", "json", "--bpf-dir"])
            .arg(node.bpf_dir())
            .arg("--root-dir")
            .arg(daemon.root())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .context("starting bosun monitor")?;
        let stdout = child.stdout.take().context("monitor's stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Monitor { child, lines })
    }

    /// The first event matching `wanted` within `within`.
    fn wait_for(&self, within: Duration, wanted: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Ok(line) = self.lines.recv_timeout(left) else {
                break;
            };
            let event: Value =
                serde_json::from_str(&line).with_context(|| format!("monitor printed {line:?}"))?;
            if wanted(&event) {
                return Ok(event);
            }
            seen.push(line);
        }
        bail!("no such event within {within:?}; saw {seen:#?}")
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_holds_while_bosun_is_down_and_monitor_reports_drops() -> Result<()> {
    on_a_node("pol-restart", |node, daemon| async move {
        let result = async {
            let denied = Arc::new(client(&node, 0, "denied")?);
            let allowed = Arc::new(client(&node, 1, "allowed")?);
            daemon.write_manifest("policy.yaml", &web_policy(allowed.ip()))?;
            daemon.write_manifest("web.yaml", &web_pod("web-1", "app: web"))?;
            daemon.write_manifest("other.yaml", &web_pod("other", "app: other"))?;
            daemon.wait_for("web-1", "Ready", WITHIN, ready).await?;
            let other = daemon.wait_for("other", "Ready", WITHIN, ready).await?;
            let web = daemon.pod("web-1").await.context("web-1 is listed")?;
            let web_ip: Ipv4Addr = web["status"]["podIP"]
                .as_str()
                .context("web-1 has an IP")?
                .parse()?;
            let other_ip: Ipv4Addr = other["status"]["podIP"]
                .as_str()
                .context("other has an IP")?
                .parse()?;
            let web_at = SocketAddr::from((web_ip, 8080));
            let other_at = SocketAddr::from((other_ip, 8080));

            let check = |when: &'static str| {
                let (denied, allowed) = (denied.clone(), allowed.clone());
                blocking(move || {
                    let short = Duration::from_millis(300);
                    let from_denied = denied.enter(move || Ok(attempt(web_at, short)))?;
                    assert_eq!(from_denied, Outcome::TimedOut, "{when}: denied → web-1");
                    let name = http_get_from(&allowed, web_at, Duration::from_secs(2))
                        .with_context(|| format!("{when}: allowed → web-1"))?;
                    assert_eq!(name, "web-1", "{when}");
                    // A pod no policy selects is open to everyone.
                    let name = http_get_from(&denied, other_at, Duration::from_secs(2))
                        .with_context(|| format!("{when}: denied → other"))?;
                    assert_eq!(name, "other", "{when}");
                    Ok(())
                })
            };
            check("running").await?;

            // The drop shows in `bosun monitor`, named.
            let monitor = Monitor::start(&node, &daemon)?;
            let denied_ip = denied.ip();
            let knock = denied.clone();
            blocking(move || knock.enter(move || Ok(attempt(web_at, Duration::from_millis(300)))))
                .await?;
            let drop_event = blocking(move || {
                monitor.wait_for(Duration::from_secs(5), |e| {
                    e["verdict"] == "DROPPED" && e["destination"]["port"] == 8080
                })
            })
            .await?;
            assert_eq!(
                drop_event["source"]["ip"],
                denied_ip.to_string(),
                "{drop_event:#}"
            );
            assert_eq!(
                drop_event["destination"]["ip"],
                web_ip.to_string(),
                "{drop_event:#}"
            );
            let pod = drop_event["destination"]["pod"]
                .as_str()
                .unwrap_or_default();
            assert!(pod.starts_with("default/web-1-"), "{drop_event:#}");
            assert_eq!(drop_event["direction"], "Ingress", "{drop_event:#}");
            assert_eq!(drop_event["protocol"], "TCP", "{drop_event:#}");
            assert_eq!(
                drop_event["policy"], "default/web-from-allowed",
                "{drop_event:#}"
            );

            // `dp policies` counts it.
            let bpf_dir = node.bpf_dir().to_string_lossy().into_owned();
            let endpoints = bosun_json(&["dp", "policies", "--bpf-dir", &bpf_dir]).await?;
            let isolated: Vec<&Value> = endpoints
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["ingress"] == "default/web-from-allowed")
                .collect();
            assert_eq!(isolated.len(), 1, "{endpoints:#}");
            assert!(
                isolated[0]["ingressDropped"].as_u64() >= Some(1),
                "{endpoints:#}"
            );

            // Killed, the daemon leaves the programs and maps enforcing.
            daemon.kill().await?;
            check("bosun down").await?;
            // Started again with its kubelet API open (to anyone, standalone), whose
            // /metrics counts the drops too.
            let port = bosun_tests::cluster::free_port()?;
            let server = format!(
                "enableServer: true\nport: {port}\nauthentication:\n  anonymous: {{enabled: true}}\n  \
                 webhook: {{enabled: false}}\nauthorization: {{mode: AlwaysAllow}}\n"
            );
            let daemon = Daemon::start(Path::new(BOSUN), &node, &server).await?;
            daemon.wait_for("web-1", "Ready", WITHIN, ready).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            check("restarted").await?;
            let metrics = tokio::process::Command::new("curl")
                .args(["-sSfk", "--max-time", "10"])
                .arg(format!("https://127.0.0.1:{port}/metrics"))
                .output()
                .await?;
            let metrics = String::from_utf8_lossy(&metrics.stdout);
            let dropped = metrics
                .lines()
                .find_map(|l| {
                    l.strip_prefix(
                        r#"bosun_network_policy_packets_total{direction="ingress",verdict="dropped"} "#,
                    )
                })
                .and_then(|n| n.parse::<u64>().ok());
            assert!(dropped >= Some(1), "{metrics}");

            // Deleting the policy opens web-1.
            daemon.remove_manifest("policy.yaml")?;
            let deadline = Instant::now() + WITHIN;
            loop {
                let from_denied = http_get_from(&denied, web_at, Duration::from_millis(300));
                if from_denied.as_deref().ok() == Some("web-1") {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("web-1 still closed to the denied client: {from_denied:?}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            daemon.kill().await?;
            Ok(())
        }
        .await;
        (node, result)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_through_a_service_is_judged_by_the_backend_it_lands_on() -> Result<()> {
    on_a_node("pol-svc", |node, daemon| async move {
        let result = async {
            let vip = Ipv4Addr::new(10, 233, node.slot() as u8, 80);
            daemon.write_manifest("web-1.yaml", &web_pod("web-1", "app: web, name: web-1"))?;
            daemon.write_manifest("web-2.yaml", &web_pod("web-2", "app: web, name: web-2"))?;
            daemon.write_manifest(
                "svc.yaml",
                &format!(
                    "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  clusterIP: {vip}\n  selector: {{app: web}}\n  ports:\n  - port: 80\n    targetPort: http\n"
                ),
            )?;
            // The client may only talk to web-1 (and nothing else: no DNS either).
            daemon.write_manifest(
                "client-policy.yaml",
                r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: client-to-web-1
spec:
  podSelector:
    matchLabels: {role: client}
  policyTypes: [Egress]
  egress:
  - to:
    - podSelector:
        matchLabels: {name: web-1}
"#,
            )?;
            daemon.write_manifest(
                "client.yaml",
                &daemon::busybox_pod("client", "  terminationGracePeriodSeconds: 1\n", "", daemon::SLEEP_FOREVER)
                    .replace("name: client\n", "name: client\n  labels: {role: client}\n"),
            )?;
            daemon.wait_for("web-1", "Ready", WITHIN, ready).await?;
            daemon.wait_for("web-2", "Ready", WITHIN, ready).await?;
            let client_pod = daemon.wait_for("client", "Running", WITHIN, |p| daemon::phase(p) == "Running").await?;
            let cri = node.cri().await?;
            let id = container_id(&client_pod, "app");
            // Twenty requests to the VIP: the socket layer picks web-1 or web-2 for each, and
            // the policy then passes exactly those that landed on web-1.
            let script = format!(
                "for i in $(seq 20); do timeout 1 wget -q -O - http://{vip}/index.html || echo failed; done"
            );
            let output = cri
                .exec_sync(&id, vec!["sh".into(), "-c".into(), script], Duration::from_secs(60))
                .await?;
            let output = String::from_utf8_lossy(&output.stdout).into_owned();
            let web_1 = output.lines().filter(|l| *l == "web-1").count();
            let failed = output.lines().filter(|l| *l == "failed").count();
            assert!(!output.contains("web-2"), "web-2 answered the client:\n{output}");
            assert!(web_1 > 0 && failed > 0, "expected both outcomes in 20 requests:\n{output}");
            assert_eq!(web_1 + failed, 20, "{output}");
            Ok(())
        }
        .await;
        (node, result)
    })
    .await
}

/// The host side of the one pod whose policy programs are pinned under the node's bpf
/// directory: the ifindex the pins name, and its name from sysfs.
fn pinned_interface(node: &TestNode) -> Result<String> {
    let links = node.bpf_dir().join("policy/links");
    let mut ifindexes = Vec::new();
    for entry in
        std::fs::read_dir(&links).with_context(|| format!("listing {}", links.display()))?
    {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(ifindex) = name.strip_suffix("_in") {
            ifindexes.push(ifindex.to_owned());
        }
    }
    let [ifindex] = ifindexes.as_slice() else {
        bail!(
            "pins of {ifindexes:?} in {}, not of one pod",
            links.display()
        );
    };
    for entry in std::fs::read_dir("/sys/class/net")? {
        let entry = entry?;
        let index = std::fs::read_to_string(entry.path().join("ifindex")).unwrap_or_default();
        if index.trim() == ifindex {
            return Ok(entry.file_name().to_string_lossy().into_owned());
        }
    }
    bail!("no interface has index {ifindex}")
}

/// The names of bosun's policy programs among the tc filters on `dev`, `direction` `ingress`
/// or `egress`, as iproute2's `tc` lists them.
async fn policy_filters(dev: &str, direction: &str) -> Result<Vec<String>> {
    let output = tokio::process::Command::new("tc")
        .args(["filter", "show", "dev", dev, direction])
        .output()
        .await?;
    if !output.status.success() {
        bail!(
            "tc filter show dev {dev} {direction}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // `filter protocol all pref 1 bpf chain 0 handle 0x1 bosun_pol_in direct-action … id 42
    // name bosun_pol_in tag … jited`: the filter's name follows its handle.
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace().skip_while(|word| *word != "handle");
            words.nth(2)
        })
        .filter(|name| name.starts_with("bosun_pol_"))
        .map(str::to_owned)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attach_mode_enforces_and_cleanup_takes_it_off() -> Result<()> {
    for mode in ["clsact", "tcx"] {
        attach_mode_enforces_and_cleanup_takes_it_off(mode).await?;
    }
    Ok(())
}

async fn attach_mode_enforces_and_cleanup_takes_it_off(mode: &str) -> Result<()> {
    let node = TestNode::start(&format!("pol-{mode}")).await?;
    let log = node.dir().join("bosun.log");
    let result = async {
        // Forced, as an operator would.
        let daemon = Daemon::start_with_env(
            Path::new(BOSUN),
            &node,
            node.dir(),
            "",
            &[],
            &[("BOSUN_TC_ATTACH", std::ffi::OsStr::new(mode))],
        )
        .await?;
        let denied = client(&node, 0, "denied")?;
        let allowed = client(&node, 1, "allowed")?;
        daemon.write_manifest("policy.yaml", &web_policy(allowed.ip()))?;
        daemon.write_manifest("web.yaml", &web_pod("web-1", "app: web"))?;
        let web = daemon.wait_for("web-1", "Ready", WITHIN, ready).await?;
        let web_ip: Ipv4Addr = web["status"]["podIP"]
            .as_str()
            .context("web-1 has an IP")?
            .parse()?;
        let web_at = SocketAddr::from((web_ip, 8080));
        assert!(
            daemon.log().contains(&format!(
                "NetworkPolicy programs attach to pods' interfaces as {mode}"
            )),
            "the mode is not logged"
        );

        // tcx links are no filters: there the pins show what is attached.
        let veth = pinned_interface(&node)?;
        let (filter_in, filter_out) = match mode {
            "clsact" => (vec!["bosun_pol_in"], vec!["bosun_pol_out"]),
            _ => (vec![], vec![]),
        };
        assert_eq!(policy_filters(&veth, "egress").await?, filter_in);
        assert_eq!(policy_filters(&veth, "ingress").await?, filter_out);
        let denied = Arc::new(denied);
        let check_denied = |expected: Outcome| {
            let denied = denied.clone();
            blocking(move || {
                let from_denied =
                    denied.enter(move || Ok(attempt(web_at, Duration::from_millis(300))))?;
                assert_eq!(from_denied, expected, "denied → web-1");
                Ok(())
            })
        };
        check_denied(Outcome::TimedOut).await?;
        let name = blocking(move || {
            http_get_from(&allowed, web_at, Duration::from_secs(2)).context("allowed → web-1")
        })
        .await?;
        assert_eq!(name, "web-1");

        // Stopped, bosun leaves the filters enforcing; --cleanup finds them through their pins.
        daemon.kill().await?;
        check_denied(Outcome::TimedOut).await?;
        let bpf_dir = node.bpf_dir().to_string_lossy().into_owned();
        let cleanup = tokio::process::Command::new(BOSUN)
            .args(["run", "--cleanup", "--bpf-dir", &bpf_dir])
            .output()
            .await?;
        assert!(
            cleanup.status.success(),
            "{}",
            String::from_utf8_lossy(&cleanup.stderr)
        );
        assert!(!node.bpf_dir().exists(), "{bpf_dir} is still there");
        assert_eq!(policy_filters(&veth, "egress").await?, [""; 0]);
        assert_eq!(policy_filters(&veth, "ingress").await?, [""; 0]);
        // The pod runs on, open to everyone.
        check_denied(Outcome::Answered).await?;
        Ok(())
    }
    .await;
    if result.is_err() {
        println!(
            "--- bosun log ---\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    node.shutdown().await?;
    result
}
