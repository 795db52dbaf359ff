//! bosun as a cluster's node agent: a real control plane (kube-apiserver, etcd and
//! kube-controller-manager 1.20.2, as `agent/tests/cluster.rs` starts them), a real containerd
//! node (a `TestNode`) and `bosun run --kubeconfig` joined to it as `system:node:node1`:
//!
//! - `pod_start`: pod created in the API → container started, against the same pod as a static
//!   manifest and against the bare CRI sequence (RunPodSandbox, CreateContainer,
//!   StartContainer) issued directly; also → Running and → Ready in the API;
//! - `status_update`: a container's exit → its terminated state visible in the API, against
//!   when CRI first reports the exit;
//! - `pods_at_once`: N pods created at once → all Running in the API, against N bare CRI
//!   sequences issued concurrently;
//! - `pod_delete`: a pod deleted in the API → its object gone, against the container's exit;
//! - `footprint`: bosun's memory, CPU and API requests a minute, idle and with N probed pods;
//! - `readiness`: a local pod behind a Service fails its readiness probe → out of the
//!   datapath (bosun takes it out on its own probe's word), against → not ready in its
//!   EndpointSlice (what kube-proxy waits for: bosun's status write, the EndpointSlice
//!   controller's update and its watch); then back.
//!
//! End points are containerd's own CRI timestamps (`started_at`, `finished_at`), the moments
//! this benchmark's own watches of the API's pods and EndpointSlices receive a change, the
//! moments its own poll of the pinned service maps sees one, and bosun's log line of a failed
//! probe, all on the host's wall clock. The samples of each side alternate, so a change in
//! load hits both alike.
//!
//! Run as root: `cargo bench -p bosun --bench cluster -- [--quick | --smoke] [--samples N]
//! [FILTER...]` (or `scripts/bench.sh cluster`).

#[path = "common/bare.rs"]
mod bare;
mod common;

use bare::{cpu_percent, cpu_ticks, from_cri, ms_between, status_kib, Baseline, NODE_NAME};
use common::{load_average, Args as Options, Mode, Stats};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bosun::pod::spec::POD_NAME_LABEL;
use bosun_cri::{api, CriClient};
use bosun_netdp::service::{snapshot, Frontend, PinnedMaps, Protocol};
use bosun_tests::control_plane::{self, ControlPlane};
use bosun_tests::daemon::{sh, Daemon};
use bosun_tests::images::BUSYBOX_IMAGE;
use bosun_tests::node::TestNode;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointConditions;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt as _};
use tokio::sync::Notify;

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");
const BENCHMARKS: [&str; 6] = [
    "pod_start",
    "status_update",
    "pods_at_once",
    "pod_delete",
    "footprint",
    "readiness",
];

/// PID 1 that waits forever and exits at once on SIGTERM (PID 1 ignores it unless trapped).
const SERVE: &str = "trap 'exit 0' TERM; sleep 2147483647 & wait";
/// Runs a second, then fails (with restartPolicy Never it stays terminated).
const EXIT_SOON: &str = "trap 'exit 0' TERM; sleep 1 & wait; exit 3";

const READINESS_1S: &str = "    readinessProbe:
      exec:
        command: [\"true\"]
      periodSeconds: 1
";
/// The probes of the standalone `footprint` benchmark (`pods.rs`), so the two compare.
const FOOTPRINT_PROBES: &str = "    readinessProbe:
      exec:
        command: [\"true\"]
      periodSeconds: 10
    livenessProbe:
      exec:
        command: [\"true\"]
      periodSeconds: 10
";

/// The `readiness` benchmark's Service, and its pods' label `app`.
const READY_SERVICE: &str = "ready-web";
/// Its pods: busybox httpd on port `http`, Ready while /tmp/ready exists.
const READY_WEB: &str = "mkdir -p /www && hostname > /www/index.html && touch /tmp/ready; \
                         trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait";
const READY_WEB_EXTRA: &str = "    ports:
    - {name: http, containerPort: 8080}
    readinessProbe:
      exec:
        command: [test, -f, /tmp/ready]
      periodSeconds: 1
      failureThreshold: 1
";
/// bosun logs a failed probe at debug level only; `readiness` reads that line. The rest of
/// its log stays at info.
const PROBE_LOG_FILTER: &str = "info,bosun::pod::probe::prober=debug";
/// How often `readiness` reads the pinned service maps.
const DATAPATH_POLL: Duration = Duration::from_millis(1);

/// kubelet 1.20.2's figures on the same machine, for comparison.
const KUBELET_STARTED_MS: f64 = 348.0;
const KUBELET_RUNNING_MS: f64 = 881.0;
const KUBELET_READY_MS: f64 = 1205.0;
const KUBELET_DELETE_MS: f64 = 8100.0;
const KUBELET_REQUESTS_PER_MINUTE: f64 = 12.0;
const KUBELET_RSS_MIB: f64 = 94.0;

/// How long any one pod may take to reach what a benchmark waits for.
const LONG: Duration = Duration::from_secs(120);

fn main() {
    let usage =
        format!("[--quick | --smoke] [--samples N] [FILTER...]  (benchmarks: {BENCHMARKS:?})");
    let Some(options) = common::bench_args("cluster", &usage, |args| {
        Options::parse(args, &BENCHMARKS, |_, _| Ok(false))
    }) else {
        return;
    };
    // The daemon takes its log filter from BOSUN_TEST_LOG (see `Daemon`); set here, before
    // any thread starts, unless the caller chose one.
    if std::env::var_os("BOSUN_TEST_LOG").is_none() {
        std::env::set_var("BOSUN_TEST_LOG", PROBE_LOG_FILTER);
    }
    bare::run_async("cluster", run(&options));
}

struct Sizes {
    samples: usize,
    at_once_pods: usize,
    at_once_rounds: usize,
    footprint_pods: usize,
    window: Duration,
    settle: Duration,
}

fn sizes(options: &Options) -> Sizes {
    let mut sizes = match options.mode {
        Mode::Smoke => Sizes {
            samples: 1,
            at_once_pods: 2,
            at_once_rounds: 1,
            footprint_pods: 2,
            window: Duration::from_secs(2),
            settle: Duration::from_secs(1),
        },
        Mode::Quick => Sizes {
            samples: 5,
            at_once_pods: 5,
            at_once_rounds: 2,
            footprint_pods: 10,
            window: Duration::from_secs(20),
            settle: Duration::from_secs(5),
        },
        Mode::Full => Sizes {
            samples: 20,
            at_once_pods: 100,
            at_once_rounds: 3,
            footprint_pods: 100,
            window: Duration::from_secs(60),
            settle: Duration::from_secs(20),
        },
    };
    if let Some(n) = options.samples {
        sizes.samples = n;
    }
    sizes
}

// ---- the run ----------------------------------------------------------------------------

async fn run(options: &Options) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmarks need root: they run containerd and pods");
    }
    control_plane::available().map_err(|why| anyhow::anyhow!("no control plane here: {why}"))?;
    let plane = ControlPlane::start_with_audit_log("bench-cluster").await?;
    let node = match TestNode::start("bench-cluster").await {
        Ok(node) => node,
        Err(e) => {
            let _ = plane.shutdown().await;
            return Err(e);
        }
    };
    let outcome = run_on(&plane, &node, options).await;
    let node_down = node.shutdown().await;
    let plane_down = plane.shutdown().await;
    outcome.and(node_down).and(plane_down)
}

async fn run_on(plane: &ControlPlane, node: &TestNode, options: &Options) -> Result<()> {
    let kubeconfig = plane.node_kubeconfig(NODE_NAME).await?;
    let daemon = Daemon::start_with_args(
        BOSUN.as_ref(),
        node,
        &node.dir().join("bosun-cluster"),
        "",
        &["--kubeconfig".as_ref(), kubeconfig.as_os_str()],
    )
    .await?;
    let result = async {
        let bench = Bench::new(plane, node, &daemon, sizes(options)).await?;
        bench.print_machine(options);
        bench.wait_node_ready().await?;
        bench.warm_up().await?;
        if options.selected("pod_start") {
            bench.pod_start().await?;
        }
        if options.selected("status_update") {
            bench.status_update().await?;
        }
        if options.selected("pods_at_once") {
            bench.pods_at_once().await?;
        }
        if options.selected("pod_delete") {
            bench.pod_delete().await?;
        }
        if options.selected("footprint") {
            bench.footprint().await?;
        }
        if options.selected("readiness") {
            bench.readiness().await?;
        }
        println!("\nload average at the end: {}", load_average());
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        let log = daemon.log();
        let lines: Vec<&str> = log.lines().collect();
        eprintln!(
            "--- end of bosun's log ---\n{}",
            lines[lines.len().saturating_sub(30)..].join("\n")
        );
    }
    daemon.kill().await.context("killing bosun")?;
    result
}

// ---- the API side: pods created, watched and deleted -------------------------------------

/// When this benchmark's own watch of namespace `default` first saw each thing of a pod.
#[derive(Default, Clone)]
struct Seen {
    added: Option<SystemTime>,
    running: Option<SystemTime>,
    ready: Option<SystemTime>,
    /// Its container terminated (state or lastState), or restarted.
    terminated: Option<SystemTime>,
    deleted: Option<SystemTime>,
    /// The first container's CRI ID, once the API names it.
    container_id: Option<String>,
    /// The pod's IP, once the API has it.
    pod_ip: Option<String>,
}

/// A watch of the API's pods, recording [`Seen`] per pod name, and each change of a pod's
/// Ready condition.
struct Watch {
    seen: Arc<Mutex<HashMap<String, Seen>>>,
    changed: Arc<Notify>,
    /// By pod name: Ready or not.
    readiness: Timeline,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    fn start(pods: Api<Pod>) -> Watch {
        let seen: Arc<Mutex<HashMap<String, Seen>>> = Arc::default();
        let changed = Arc::new(Notify::new());
        let readiness = Timeline::new("Ready in the API");
        let task = tokio::spawn({
            let seen = seen.clone();
            let changed = changed.clone();
            let readiness = readiness.clone();
            async move {
                let mut events =
                    Box::pin(watcher(pods, watcher::Config::default()).default_backoff());
                while let Some(event) = events.next().await {
                    let now = SystemTime::now();
                    let (pod, deleted) = match event {
                        Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                            (pod, false)
                        }
                        Ok(watcher::Event::Delete(pod)) => (pod, true),
                        _ => continue,
                    };
                    let Some(name) = pod.metadata.name.clone() else {
                        continue;
                    };
                    if !deleted {
                        readiness.set(&name, now, is_ready(&pod));
                    }
                    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                    record(seen.entry(name).or_default(), &pod, deleted, now);
                    changed.notify_waiters();
                }
            }
        });
        Watch {
            seen,
            changed,
            readiness,
            task,
        }
    }

    fn get(&self, name: &str) -> Seen {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(name).cloned().unwrap_or_default()
    }

    /// Waits until `what` gives something for pod `name`.
    async fn wait<T>(&self, name: &str, what: impl Fn(&Seen) -> Option<T>) -> Result<T> {
        wait_until(
            &self.changed,
            || what(&self.get(name)),
            || format!("pod {name}"),
        )
        .await
    }
}

/// Waits, at most [`LONG`], until `what` finds something, asking again each time `changed`
/// is notified. `waited_for` names it in the error.
async fn wait_until<T>(
    changed: &Notify,
    what: impl Fn() -> Option<T>,
    waited_for: impl FnOnce() -> String,
) -> Result<T> {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let notified = changed.notified();
        let mut notified = std::pin::pin!(notified);
        notified.as_mut().enable();
        if let Some(found) = what() {
            return Ok(found);
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            bail!("{} did not get there within {LONG:?}", waited_for());
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn record(seen: &mut Seen, pod: &Pod, deleted: bool, now: SystemTime) {
    seen.added.get_or_insert(now);
    if deleted {
        seen.deleted.get_or_insert(now);
    }
    let Some(status) = pod.status.as_ref() else {
        return;
    };
    if status.phase.as_deref() == Some("Running") {
        seen.running.get_or_insert(now);
    }
    if is_ready(pod) {
        seen.ready.get_or_insert(now);
    }
    if let Some(ip) = &status.pod_ip {
        seen.pod_ip = Some(ip.clone());
    }
    if let Some(container) = status.container_statuses.iter().flatten().next() {
        let terminated = container.restart_count > 0
            || container
                .state
                .as_ref()
                .is_some_and(|s| s.terminated.is_some())
            || container
                .last_state
                .as_ref()
                .is_some_and(|s| s.terminated.is_some());
        if terminated {
            seen.terminated.get_or_insert(now);
        }
        if let Some(id) = container.container_id.as_deref() {
            let id = id.rsplit_once("://").map_or(id, |(_, id)| id);
            seen.container_id = Some(id.to_owned());
        }
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// A pod in namespace `default` bound to the benchmark's node (or, `bound` false, the same as
/// a static manifest): one busybox container `app` running `sh -c script`, its own
/// `container_extra` lines (four-space indented) spliced in.
fn pod_text(name: &str, bound: bool, restart: &str, container_extra: &str, script: &str) -> String {
    let node = if bound {
        format!("  nodeName: {NODE_NAME}\n")
    } else {
        String::new()
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n\
         {node}  automountServiceAccountToken: false\n  terminationGracePeriodSeconds: 30\n  \
         restartPolicy: {restart}\n  containers:\n  - name: app\n    \
         image: {BUSYBOX_IMAGE}\n    imagePullPolicy: IfNotPresent\n    \
         command: [sh, -c, {script:?}]\n{container_extra}"
    )
}

// ---- the benchmarks ---------------------------------------------------------------------

struct Bench<'a> {
    plane: &'a ControlPlane,
    daemon: &'a Daemon,
    /// Where bosun pins its service maps.
    bpf_dir: PathBuf,
    client: kube::Client,
    pods: Api<Pod>,
    watch: Watch,
    cri: CriClient,
    baseline: Baseline,
    sizes: Sizes,
    next: std::sync::atomic::AtomicU32,
}

impl<'a> Bench<'a> {
    async fn new(
        plane: &'a ControlPlane,
        node: &'a TestNode,
        daemon: &'a Daemon,
        sizes: Sizes,
    ) -> Result<Bench<'a>> {
        let client = bosun::cluster::client(plane.admin_kubeconfig()).await?;
        let pods = Api::<Pod>::namespaced(client.clone(), "default");
        let cri = node.cri().await?;
        Ok(Bench {
            plane,
            daemon,
            bpf_dir: node.bpf_dir(),
            watch: Watch::start(pods.clone()),
            pods,
            client,
            baseline: Baseline::new(node, cri.clone())?,
            cri,
            sizes,
            next: std::sync::atomic::AtomicU32::new(0),
        })
    }

    fn name(&self, prefix: &str) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{prefix}-{n}")
    }

    fn print_machine(&self, options: &Options) {
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
        let version = self.cri.version();
        println!("bosun cluster-mode benchmarks{}", options.mode.label());
        println!(
            "machine: {cpus} CPUs ({model}), kernel {}, {} {}, kube-apiserver 1.20.2",
            read("/proc/sys/kernel/osrelease"),
            version.runtime_name,
            version.runtime_version
        );
        println!("load average at the start: {}", load_average());
    }

    async fn wait_node_ready(&self) -> Result<()> {
        let nodes = Api::<Node>::all(self.client.clone());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(node) = nodes.get(NODE_NAME).await {
                let ready = node
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                if ready {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("node {NODE_NAME} was not Ready in the API within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One pod each way, unmeasured: the node's first pod creates its bridge.
    async fn warm_up(&self) -> Result<()> {
        let name = self.name("warm");
        self.create(&name, "Always", "", SERVE).await?;
        self.watch.wait(&name, |s| s.running).await?;
        self.delete_and_wait(&name).await?;
        let name = self.name("warm-bare");
        let pod = self
            .baseline
            .pod(&name, &pod_text(&name, false, "Always", "", SERVE))?;
        let (sandbox, _) = self.baseline.start(&pod).await?;
        self.baseline.remove(&sandbox).await
    }

    /// POSTs the pod; returns when the POST returned.
    async fn create(
        &self,
        name: &str,
        restart: &str,
        extra: &str,
        script: &str,
    ) -> Result<SystemTime> {
        let pod: Pod = serde_yaml::from_str(&pod_text(name, true, restart, extra, script))
            .context("the benchmark's own pod")?;
        self.pods
            .create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating pod {name}"))?;
        Ok(SystemTime::now())
    }

    /// DELETE with the pod's own grace period; returns when the call went out.
    async fn delete(&self, name: &str) -> Result<SystemTime> {
        let t0 = SystemTime::now();
        self.pods
            .delete(name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting pod {name}"))?;
        Ok(t0)
    }

    /// Deletes the pod and waits until its object and its sandboxes are gone.
    async fn delete_and_wait(&self, name: &str) -> Result<()> {
        self.delete(name).await?;
        self.watch.wait(name, |s| s.deleted).await?;
        self.wait_no_sandbox(name).await
    }

    async fn wait_no_sandbox(&self, label: &str) -> Result<()> {
        let deadline = Instant::now() + LONG;
        loop {
            let sandboxes = self
                .cri
                .list_pod_sandbox(Some(name_filter(label)))
                .await
                .context("ListPodSandbox")?;
            if sandboxes.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("pod {label}'s sandbox still there after {LONG:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn pod_start(&self) -> Result<()> {
        let load = load_average();
        let mut bare = Vec::new();
        let mut manifest = Vec::new();
        let mut api_started = Vec::new();
        let mut watch_event = Vec::new();
        let mut running = Vec::new();
        let mut ready = Vec::new();
        for _ in 0..self.sizes.samples {
            // Bare CRI.
            let name = self.name("bare");
            let pod = self.baseline.pod(
                &name,
                &pod_text(&name, false, "Always", READINESS_1S, SERVE),
            )?;
            let (sandbox, t0) = self.baseline.start(&pod).await?;
            bare.push(ms_between(
                t0,
                started_at(&self.cri, &full_static(&name)).await?,
            ));
            self.baseline.remove(&sandbox).await?;

            // Static manifest: its mirror pod Running in the API says when to read CRI.
            let name = self.name("static");
            let file = format!("{name}.yaml");
            let text = pod_text(&name, false, "Always", READINESS_1S, SERVE);
            let t0 = SystemTime::now();
            self.daemon.write_manifest(&file, &text)?;
            let full = full_static(&name);
            self.watch.wait(&full, |s| s.running).await?;
            manifest.push(ms_between(t0, started_at(&self.cri, &full).await?));
            self.daemon.remove_manifest(&file)?;
            self.watch.wait(&full, |s| s.deleted).await?;
            self.wait_no_sandbox(&full).await?;

            // The API.
            let name = self.name("api");
            let t0 = self.create(&name, "Always", READINESS_1S, SERVE).await?;
            let seen_ready = self.watch.wait(&name, |s| s.ready).await?;
            let seen = self.watch.get(&name);
            api_started.push(ms_between(t0, started_at(&self.cri, &name).await?));
            watch_event.push(ms_between(t0, seen.added.unwrap_or(t0)));
            running.push(ms_between(t0, seen.running.unwrap_or(seen_ready)));
            ready.push(ms_between(t0, seen_ready));
            self.delete_and_wait(&name).await?;
        }
        let mut table = Table::new(
            "pod_start: one pod → container running (CRI started_at); exec readiness probe, \
             periodSeconds 1",
            &load,
        );
        let base = table.row("bare CRI: RunPodSandbox → started_at", bare, None);
        let stat = table.row(
            "static manifest: written → started_at",
            manifest,
            Some(base),
        );
        let api = table.row(
            "API: POST returned → started_at",
            api_started.clone(),
            Some(base),
        );
        table.row(
            "API: POST returned → started_at (vs static)",
            api_started,
            Some(stat),
        );
        let event = table.row(
            "API: POST returned → watch event here (≤ 0: before)",
            watch_event,
            None,
        );
        let running = table.row("API: POST returned → Running in the API", running, None);
        let ready = table.row("API: POST returned → Ready in the API", ready, None);
        table.print();
        let (b, a, e) = (
            table.median(base),
            table.median(api),
            table.median(event).max(0.0),
        );
        println!(
            "  goal: POST → started ≤ 1.05× bare CRI + one watch event ({:.1} ms): {:.1} ms vs \
             {:.1} ms, {}",
            e,
            a,
            1.05 * b + e,
            met(a <= 1.05 * b + e)
        );
        println!(
            "  kubelet 1.20.2 here: {KUBELET_STARTED_MS} ms to started ({:.2}×), \
             {KUBELET_RUNNING_MS} ms to Running ({:.2}×), {KUBELET_READY_MS} ms to Ready ({:.2}×) \
             (bosun's median over kubelet's)",
            a / KUBELET_STARTED_MS,
            table.median(running) / KUBELET_RUNNING_MS,
            table.median(ready) / KUBELET_READY_MS,
        );
        Ok(())
    }

    async fn status_update(&self) -> Result<()> {
        let load = load_average();
        let mut reported = Vec::new();
        let mut visible = Vec::new();
        let mut after_cri = Vec::new();
        for _ in 0..self.sizes.samples {
            let name = self.name("exit");
            self.create(&name, "Never", "", EXIT_SOON).await?;
            let id = self
                .watch
                .wait(&name, |s| s.running.and(s.container_id.clone()))
                .await?;
            let (finished, cri_seen) = wait_exited(&self.cri, &id).await?;
            let api_seen = self.watch.wait(&name, |s| s.terminated).await?;
            reported.push(ms_between(finished, cri_seen));
            visible.push(ms_between(finished, api_seen));
            after_cri.push(ms_between(cri_seen, api_seen));
            self.delete_and_wait(&name).await?;
        }
        let mut table = Table::new(
            "status_update: container exits (CRI finished_at) → terminated in the API \
             (restartPolicy Never; CRI polled every 2 ms)",
            &load,
        );
        table.row(
            "containerd: finished_at → CRI reports it exited",
            reported,
            None,
        );
        table.row("bosun: finished_at → visible in the API", visible, None);
        let after = table.row(
            "bosun: CRI reports exited → visible in the API",
            after_cri,
            None,
        );
        table.print();
        let m = table.median(after);
        println!(
            "  goal: ≤ 20 ms from when CRI reports the exit to the API showing it (includes one \
             watch event here): {m:.1} ms, {}",
            met(m <= 20.0)
        );
        Ok(())
    }

    async fn pods_at_once(&self) -> Result<()> {
        let load = load_average();
        let count = self.sizes.at_once_pods;
        let mut bare = Vec::new();
        let mut api = Vec::new();
        for _ in 0..self.sizes.at_once_rounds {
            let names: Vec<String> = (0..count).map(|_| self.name("bare-many")).collect();
            let pods = names
                .iter()
                .map(|n| {
                    self.baseline
                        .pod(n, &pod_text(n, false, "Always", "", SERVE))
                })
                .collect::<Result<Vec<_>>>()?;
            let t0 = SystemTime::now();
            let started =
                futures::future::join_all(pods.iter().map(|p| self.baseline.start(p))).await;
            let sandboxes = started.into_iter().collect::<Result<Vec<_>>>()?;
            let mut last = t0;
            for name in &names {
                last = last.max(started_at(&self.cri, &full_static(name)).await?);
            }
            bare.push(ms_between(t0, last));
            for (sandbox, _) in &sandboxes {
                self.baseline.remove(sandbox).await?;
            }

            let names: Vec<String> = (0..count).map(|_| self.name("many")).collect();
            let texts = names
                .iter()
                .map(|n| serde_yaml::from_str(&pod_text(n, true, "Always", "", SERVE)))
                .collect::<Result<Vec<Pod>, _>>()?;
            let t0 = SystemTime::now();
            let params = PostParams::default();
            let created =
                futures::future::join_all(texts.iter().map(|p| self.pods.create(&params, p))).await;
            for result in created {
                result.context("creating a pod")?;
            }
            let mut last = t0;
            for name in &names {
                last = last.max(self.watch.wait(name, |s| s.running).await?);
            }
            api.push(ms_between(t0, last));
            let deleted =
                futures::future::join_all(names.iter().map(|n| self.delete_and_wait(n))).await;
            deleted.into_iter().collect::<Result<Vec<_>>>()?;
        }
        let mut table = Table::new(
            &format!("pods_at_once: {count} pods, first call → the last one running"),
            &load,
        );
        let base = table.row(
            &format!("bare CRI: {count} sequences → last started_at"),
            bare,
            None,
        );
        let row = table.row(
            &format!("API: {count} POSTs at once → all Running in API"),
            api,
            Some(base),
        );
        table.print();
        let ratio = table.median(row) / table.median(base);
        println!(
            "  goal: ≤ 1.1× bare CRI: {ratio:.2}×, {}",
            met(ratio <= 1.1)
        );
        Ok(())
    }

    async fn pod_delete(&self) -> Result<()> {
        let load = load_average();
        let mut exited = Vec::new();
        let mut gone = Vec::new();
        let mut after_exit = Vec::new();
        for _ in 0..self.sizes.samples {
            let name = self.name("del");
            self.create(&name, "Always", "", SERVE).await?;
            let id = self
                .watch
                .wait(&name, |s| s.running.and(s.container_id.clone()))
                .await?;
            let t0 = self.delete(&name).await?;
            let (finished, _) = wait_exited(&self.cri, &id).await?;
            let seen_gone = self.watch.wait(&name, |s| s.deleted).await?;
            exited.push(ms_between(t0, finished));
            gone.push(ms_between(t0, seen_gone));
            after_exit.push(ms_between(finished, seen_gone));
            self.wait_no_sandbox(&name).await?;
        }
        let mut table = Table::new(
            "pod_delete: DELETE (terminationGracePeriodSeconds 30, the container exits at once \
             on SIGTERM) → object gone",
            &load,
        );
        let base = table.row("container: DELETE → finished_at", exited, None);
        let row = table.row("API: DELETE → object gone (watch event)", gone, Some(base));
        table.row("API: finished_at → object gone", after_exit, None);
        table.print();
        println!(
            "  kubelet 1.20.2 here: {:.1} s to object gone; bosun {:.2} s ({:.3}×)",
            KUBELET_DELETE_MS / 1000.0,
            table.median(row) / 1000.0,
            table.median(row) / KUBELET_DELETE_MS
        );
        Ok(())
    }

    async fn footprint(&self) -> Result<()> {
        let count = self.sizes.footprint_pods;
        let pid = self.daemon.pid().context("bosun is not running")?;
        tokio::time::sleep(self.sizes.settle).await;
        self.wait_events_written().await?;
        let idle_load = load_average();
        let idle = self.measure(pid).await?;

        let names: Vec<String> = (0..count).map(|_| self.name("fp")).collect();
        let began = Instant::now();
        for name in &names {
            self.create(name, "Always", FOOTPRINT_PROBES, SERVE).await?;
        }
        for name in &names {
            self.watch.wait(name, |s| s.ready).await?;
        }
        let all_ready = began.elapsed();
        tokio::time::sleep(self.sizes.settle).await;
        self.wait_events_written().await?;
        let loaded_load = load_average();
        let loaded = self.measure(pid).await?;

        println!(
            "\nfootprint: bosun's own process (VmRSS from /proc/PID/status; CPU is utime+stime \
             from /proc/PID/stat) and its requests to the API server (audit log) over {:?}",
            self.sizes.window
        );
        println!(
            "  {count} pods, each with an exec readiness and an exec liveness probe (`true`, \
             periodSeconds 10), all Ready in the API {:.1} s after the first POST",
            all_ready.as_secs_f64()
        );
        println!(
            "  {:<28} {:>8} {:>11} {:>13} {:>18}  load average",
            "", "RSS MiB", "CPU % core", "requests/min", "without events"
        );
        for (label, m, load) in [
            ("idle, 0 pods".to_owned(), &idle, &idle_load),
            (format!("{count} pods with probes"), &loaded, &loaded_load),
        ] {
            println!(
                "  {label:<28} {:>8.1} {:>11.2} {:>13.1} {:>18.1}  {load}",
                m.rss_mib, m.cpu_percent, m.requests_per_minute, m.requests_per_minute_no_events
            );
        }
        for (label, m) in [("idle", &idle), ("loaded", &loaded)] {
            let by_kind: Vec<String> = m.by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
            println!("  requests {label}: {}", by_kind.join(", "));
        }
        println!(
            "  kubelet 1.20.2 here (10 probed pods): {KUBELET_REQUESTS_PER_MINUTE} requests/min, \
             {KUBELET_RSS_MIB} MiB RSS; bosun with {count}: {:.2}× the requests, {:.2}× the RSS",
            loaded.requests_per_minute / KUBELET_REQUESTS_PER_MINUTE,
            loaded.rss_mib / KUBELET_RSS_MIB
        );
        println!(
            "  (the audit log holds {} requests of the node over the whole run)",
            self.plane.node_requests()?.len()
        );
        let deleted =
            futures::future::join_all(names.iter().map(|n| self.delete_and_wait(n))).await;
        deleted.into_iter().collect::<Result<Vec<_>>>()?;
        Ok(())
    }

    /// Waits until bosun has written no Event for a while (at most 5 minutes): its event
    /// writes are rate-limited to 5 a second, as kubelet's, so after many pods the queue
    /// takes minutes to drain, and those writes are not the steady state.
    async fn wait_events_written(&self) -> Result<()> {
        let quiet = self.sizes.settle.min(Duration::from_secs(10));
        let deadline = Instant::now() + Duration::from_secs(300);
        let events = |requests: &[serde_json::Value]| {
            requests
                .iter()
                .filter(|r| r["objectRef"]["resource"] == "events")
                .count()
        };
        loop {
            let before = events(&self.plane.node_requests()?);
            tokio::time::sleep(quiet).await;
            if events(&self.plane.node_requests()?) == before || Instant::now() > deadline {
                return Ok(());
            }
        }
    }

    /// A Service over two local pods; per sample one pod's readiness probe starts failing
    /// (`rm /tmp/ready`), and the pod comes back (`touch /tmp/ready`) before the next.
    async fn readiness(&self) -> Result<()> {
        let load = load_average();
        let slices = SliceWatch::start(self.client.clone(), READY_SERVICE);
        let services: Api<Service> = Api::namespaced(self.client.clone(), "default");
        let names = [self.name(READY_SERVICE), self.name(READY_SERVICE)];
        let result = self.readiness_on(&services, &names, &slices, &load).await;
        // Gone again whatever happened (what was never made fails to go, harmlessly: the
        // first error is the one returned).
        let service_gone = services
            .delete(READY_SERVICE, &DeleteParams::default())
            .await
            .map(drop)
            .with_context(|| format!("deleting Service {READY_SERVICE}"));
        let mut pods_gone = Ok(());
        for name in &names {
            pods_gone = pods_gone.and(self.delete_and_wait(name).await);
        }
        result.and(service_gone).and(pods_gone)
    }

    async fn readiness_on(
        &self,
        services: &Api<Service>,
        names: &[String; 2],
        slices: &SliceWatch,
        load: &str,
    ) -> Result<()> {
        for name in names {
            let mut pod: Pod =
                serde_yaml::from_str(&pod_text(name, true, "Always", READY_WEB_EXTRA, READY_WEB))
                    .context("the benchmark's own pod")?;
            pod.metadata.labels = Some(BTreeMap::from([(
                "app".to_owned(),
                READY_SERVICE.to_owned(),
            )]));
            self.pods
                .create(&PostParams::default(), &pod)
                .await
                .with_context(|| format!("creating pod {name}"))?;
        }
        let mut web = Vec::new();
        for name in names {
            let (ip, id) = self
                .watch
                .wait(name, |s| {
                    s.ready?;
                    Some((s.pod_ip.clone()?, s.container_id.clone()?))
                })
                .await?;
            web.push((name.as_str(), ip, id));
        }
        // After its pods are Ready, so that the first slice lists them: kube-controller-manager
        // 1.20 writes a slice of no endpoints with `endpoints: null`, which bosun's v1beta1
        // reader does not take (its watch of slices fails and backs off for seconds).
        let service: Service = serde_yaml::from_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {READY_SERVICE}, namespace: default}}\n\
             spec:\n  selector: {{app: {READY_SERVICE}}}\n  \
             ports: [{{name: http, port: 80, targetPort: http}}]\n"
        ))
        .context("the benchmark's own Service")?;
        let created = services
            .create(&PostParams::default(), &service)
            .await
            .with_context(|| format!("creating Service {READY_SERVICE}"))?;
        let vip: Ipv4Addr = created
            .spec
            .and_then(|s| s.cluster_ip)
            .context("the Service has no cluster IP")?
            .parse()
            .context("the Service's cluster IP")?;
        let frontend = Frontend {
            address: vip,
            port: 80,
            protocol: Protocol::Tcp,
        };
        let mut datapath = DatapathWatch::start(&self.bpf_dir, frontend).await?;
        for (_, ip, _) in &web {
            slices.ready.is(ip, true).await?;
            datapath.held.is(ip, true).await?;
        }

        let mut ms = ReadinessSamples::default();
        let mut unlogged = 0;
        let began = SystemTime::now();
        for i in 0..self.sizes.samples {
            let (name, ip, id) = &web[i % 2];
            // rm at a different point of the probe's period each time.
            tokio::time::sleep(Duration::from_millis(i as u64 * 618 % 1000)).await;
            // Changes are looked for from when the command was sent: the probe may fail
            // between `rm` and the clock read just after it.
            let sent = SystemTime::now();
            let removed = run_timed(&self.cri, id, "rm /tmp/ready").await?;
            let unready = self.watch.readiness.turned(name, sent, false).await?;
            let left = datapath.held.turned(ip, sent, false).await?;
            let slice_unready = slices.ready.turned(ip, sent, false).await?;
            ms.rm_unready.push(ms_between(removed, unready));
            ms.rm_left.push(ms_between(removed, left));
            ms.rm_slice.push(ms_between(removed, slice_unready));
            ms.unready_slice.push(ms_between(unready, slice_unready));
            ms.left_slice.push(ms_between(left, slice_unready));
            // Written before the status that follows from it, so there by now.
            match probe_failed_logged(&self.daemon.log(), id, sent) {
                Some(failed) => {
                    ms.rm_failed.push(ms_between(removed, failed));
                    ms.failed_left.push(ms_between(failed, left));
                    ms.failed_unready.push(ms_between(failed, unready));
                    ms.failed_slice.push(ms_between(failed, slice_unready));
                }
                None => unlogged += 1,
            }

            let sent = SystemTime::now();
            let restored = run_timed(&self.cri, id, "touch /tmp/ready").await?;
            let ready = self.watch.readiness.turned(name, sent, true).await?;
            let returned = datapath.held.turned(ip, sent, true).await?;
            let slice_ready = slices.ready.turned(ip, sent, true).await?;
            ms.touch_ready.push(ms_between(restored, ready));
            ms.touch_slice.push(ms_between(restored, slice_ready));
            ms.touch_returned.push(ms_between(restored, returned));
            ms.slice_returned.push(ms_between(slice_ready, returned));
        }
        let ended = SystemTime::now();
        let polls = datapath.stop();

        let mut table = Table::new(
            &format!(
                "readiness: a Service over 2 local pods; one's exec readiness probe (periodSeconds \
                 1, failureThreshold 1) starts failing (rm /tmp/ready) → out of the datapath, \
                 against → not ready in its EndpointSlice ({} samples)",
                self.sizes.samples
            ),
            load,
        );
        table.row(
            "rm → probe failed (bosun's debug log line)",
            ms.rm_failed,
            None,
        );
        table.row(
            "rm → Ready=False in the API (pod watch)",
            ms.rm_unready,
            None,
        );
        table.row("rm → out of the datapath (maps polled)", ms.rm_left, None);
        table.row(
            "rm → not ready in the EndpointSlice (watch)",
            ms.rm_slice,
            None,
        );
        table.row(
            "probe failed → Ready=False in the API",
            ms.failed_unready,
            None,
        );
        let slice = table.row(
            "probe failed → not ready in the slice",
            ms.failed_slice,
            None,
        );
        table.row(
            "probe failed → out of the datapath",
            ms.failed_left,
            Some(slice),
        );
        table.row(
            "Ready=False in the API → not ready in slice",
            ms.unready_slice,
            None,
        );
        let lead = table.row(
            "out of the datapath → not ready in the slice",
            ms.left_slice,
            None,
        );
        table.print();
        let leads = &table.rows[lead].samples;
        println!(
            "  bosun took the pod out of the datapath before its slice said so in {} of {} \
             samples, a median {:.1} ms before a kube-proxy could at best (acting on the \
             slice's watch event at no cost)",
            leads.iter().filter(|ms| **ms > 0.0).count(),
            leads.len(),
            table.median(lead)
        );

        let mut table = Table::new(
            "readiness, back: touch /tmp/ready → the pod back in the datapath (bosun waits for \
             its slice to say so)",
            &load_average(),
        );
        table.row("touch → Ready=True in the API", ms.touch_ready, None);
        table.row("touch → ready in the EndpointSlice", ms.touch_slice, None);
        table.row("touch → back in the datapath", ms.touch_returned, None);
        table.row(
            "ready in the slice → back in the datapath",
            ms.slice_returned,
            None,
        );
        table.print();

        println!(
            "  rm and touch: the clock read in the container right after the command (busybox \
             adjtimex), not the ExecSync round trip; rm lands at a different point of the \
             probe's 1 s period in each sample, touch just after the slice said not ready, \
             most of a period before the next probe"
        );
        println!(
            "  probe failed: bosun's debug line (bosun::pod::probe::prober) when the probe's \
             exec returned the failure"
        );
        if unlogged > 0 {
            println!(
                "  bosun's log had no line of the failed probe in {unlogged} samples (its \
                 filter is BOSUN_TEST_LOG={:?}; these rows need {PROBE_LOG_FILTER:?})",
                std::env::var("BOSUN_TEST_LOG").unwrap_or_default()
            );
        }
        println!(
            "  datapath: the pinned service maps read whole, twice in a row, {} times, every \
             {:.2} ms on average, longest gap {:.1} ms; {} pairs disagreed (a write between \
             them; read again), {} failed",
            polls.count,
            polls.span.as_secs_f64() * 1000.0 / polls.count.max(1) as f64,
            polls.longest_gap.as_secs_f64() * 1000.0,
            polls.torn,
            polls.failed
        );
        // Each sample turns its pod out and back once in each view; more is a flap.
        let mut extra = Vec::new();
        for (view, timeline) in [
            ("datapath", &datapath.held),
            ("EndpointSlice", &slices.ready),
        ] {
            let turns: usize = web
                .iter()
                .map(|(_, ip, _)| timeline.changes_between(ip, began, ended))
                .sum();
            extra.push(format!(
                "{view} {}",
                turns.saturating_sub(2 * self.sizes.samples)
            ));
        }
        let turns: usize = web
            .iter()
            .map(|(name, _, _)| self.watch.readiness.changes_between(name, began, ended))
            .sum();
        extra.push(format!(
            "Ready in the API {}",
            turns.saturating_sub(2 * self.sizes.samples)
        ));
        println!(
            "  changes beyond one out and one back per sample: {}",
            extra.join(", ")
        );
        Ok(())
    }

    async fn measure(&self, pid: u32) -> Result<Footprint> {
        let requests_before = self.plane.node_requests()?.len();
        let before = cpu_ticks(pid)?;
        tokio::time::sleep(self.sizes.window).await;
        let after = cpu_ticks(pid)?;
        let requests = self.plane.node_requests()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .context("reading bosun's /proc status")?;
        let window = self.sizes.window.as_secs_f64();
        let mut by_kind = BTreeMap::new();
        let mut no_events = 0_usize;
        for event in requests.iter().skip(requests_before) {
            let kind = format!(
                "{} {}",
                event["verb"].as_str().unwrap_or("?"),
                event["objectRef"]["resource"].as_str().unwrap_or("?")
            );
            *by_kind.entry(kind).or_insert(0_usize) += 1;
            if event["objectRef"]["resource"] != "events" {
                no_events += 1;
            }
        }
        Ok(Footprint {
            rss_mib: status_kib(&status, "VmRSS:")? / 1024.0,
            cpu_percent: cpu_percent(after.saturating_sub(before), self.sizes.window),
            requests_per_minute: requests.len().saturating_sub(requests_before) as f64 * 60.0
                / window,
            requests_per_minute_no_events: no_events as f64 * 60.0 / window,
            by_kind,
        })
    }
}

fn met(yes: bool) -> &'static str {
    if yes {
        "met"
    } else {
        "NOT met"
    }
}

/// The `readiness` benchmark's samples, in ms: `rm` (or `touch`) → each view's change.
#[derive(Default)]
struct ReadinessSamples {
    rm_failed: Vec<f64>,
    rm_unready: Vec<f64>,
    rm_left: Vec<f64>,
    rm_slice: Vec<f64>,
    failed_left: Vec<f64>,
    failed_unready: Vec<f64>,
    failed_slice: Vec<f64>,
    unready_slice: Vec<f64>,
    /// t_slice − t_datapath: how much earlier the pod left the datapath than its slice said so.
    left_slice: Vec<f64>,
    touch_ready: Vec<f64>,
    touch_slice: Vec<f64>,
    touch_returned: Vec<f64>,
    slice_returned: Vec<f64>,
}

struct Footprint {
    rss_mib: f64,
    cpu_percent: f64,
    requests_per_minute: f64,
    /// The same without Events (their writes come in bursts after pods start or stop).
    requests_per_minute_no_events: f64,
    /// Requests in the window by verb and resource.
    by_kind: BTreeMap<String, usize>,
}

// ---- readiness: the pods', the slices' and the datapath's views -------------------------

/// When each of a set of things (pods by name, endpoints by address) was seen to turn one way
/// or the other (Ready or not; ready in a slice or not; held by the datapath or not): only the
/// changes, in order. Clones share them.
#[derive(Clone)]
struct Timeline {
    /// What the state is, for errors ("in the datapath").
    what: &'static str,
    changes: Arc<Mutex<HashMap<String, Changes>>>,
    changed: Arc<Notify>,
}

/// One thing's changes: when it was seen to turn, and which way.
type Changes = Vec<(SystemTime, bool)>;

impl Timeline {
    fn new(what: &'static str) -> Timeline {
        Timeline {
            what,
            changes: Arc::default(),
            changed: Arc::default(),
        }
    }

    /// Notes `key`'s state as seen at `at`; a change wakes the waiters.
    fn set(&self, key: &str, at: SystemTime, state: bool) {
        let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        if changes.get(key).and_then(|c| c.last()).map(|&(_, s)| s) == Some(state) {
            return;
        }
        changes.entry(key.to_owned()).or_default().push((at, state));
        drop(changes);
        self.changed.notify_waiters();
    }

    fn with<T>(&self, key: &str, read: impl FnOnce(&[(SystemTime, bool)]) -> T) -> T {
        let changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        read(changes.get(key).map_or(&[][..], Changes::as_slice))
    }

    /// Waits until `key` is `state`, having turned so at or after `since`; returns when it
    /// first did.
    async fn turned(&self, key: &str, since: SystemTime, state: bool) -> Result<SystemTime> {
        let what = || {
            self.with(key, |changes| {
                let &(_, now) = changes.last()?;
                if now != state {
                    return None;
                }
                let &(at, _) = changes.iter().find(|&&(at, s)| at >= since && s == state)?;
                Some(at)
            })
        };
        wait_until(&self.changed, what, || {
            format!("{key} to turn {state} ({})", self.what)
        })
        .await
    }

    /// Waits until `key` is `state`.
    async fn is(&self, key: &str, state: bool) -> Result<()> {
        let what = || {
            self.with(key, |c| {
                (c.last().map(|&(_, s)| s) == Some(state)).then_some(())
            })
        };
        wait_until(&self.changed, what, || {
            format!("{key} to be {state} ({})", self.what)
        })
        .await
    }

    /// How many times `key` changed from `from` to `to`.
    fn changes_between(&self, key: &str, from: SystemTime, to: SystemTime) -> usize {
        self.with(key, |changes| {
            changes
                .iter()
                .filter(|&&(at, _)| from <= at && at < to)
                .count()
        })
    }
}

/// A watch of one Service's EndpointSlices in namespace `default`, as
/// `discovery.k8s.io/v1beta1` (all a 1.20 API server has): when each endpoint address was
/// seen to turn ready or not (an address no slice lists is not).
struct SliceWatch {
    ready: Timeline,
    task: tokio::task::JoinHandle<()>,
}

impl SliceWatch {
    fn start(client: kube::Client, service: &str) -> SliceWatch {
        let slices: Api<SliceV1beta1> = Api::namespaced(client, "default");
        let config =
            watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
        let ready = Timeline::new("ready in the EndpointSlice");
        let task = tokio::spawn({
            let ready = ready.clone();
            async move {
                // By slice name: its endpoints' addresses, and whether each is ready.
                let mut listed: HashMap<String, Vec<(String, bool)>> = HashMap::new();
                let mut known: BTreeSet<String> = BTreeSet::new();
                let mut events = Box::pin(watcher(slices, config).default_backoff());
                while let Some(event) = events.next().await {
                    let now = SystemTime::now();
                    match event {
                        Ok(watcher::Event::Apply(slice) | watcher::Event::InitApply(slice)) => {
                            let name = slice.metadata.name.clone().unwrap_or_default();
                            listed.insert(name, endpoints(&slice));
                        }
                        Ok(watcher::Event::Delete(slice)) => {
                            listed.remove(slice.metadata.name.as_deref().unwrap_or_default());
                        }
                        _ => continue,
                    }
                    known.extend(listed.values().flatten().map(|(a, _)| a.clone()));
                    for address in &known {
                        let now_ready = listed
                            .values()
                            .flatten()
                            .any(|(a, ready)| a == address && *ready);
                        ready.set(address, now, now_ready);
                    }
                }
            }
        });
        SliceWatch { ready, task }
    }
}

impl Drop for SliceWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A slice's addresses, each with whether its endpoint is ready (unset counts as ready, as
/// kube-proxy reads it).
fn endpoints(slice: &SliceV1beta1) -> Vec<(String, bool)> {
    slice
        .endpoints
        .iter()
        .flatten()
        .flat_map(|e| {
            let ready = e.conditions.as_ref().and_then(|c| c.ready) != Some(false);
            e.addresses
                .iter()
                .flatten()
                .map(move |a| (a.clone(), ready))
        })
        .collect()
}

/// An EndpointSlice of `discovery.k8s.io/v1beta1` as far as `readiness` reads it: this
/// benchmark's own reading, not bosun's, which it measures. The API server sends
/// `endpoints: null` for a slice of none.
#[derive(Clone, Debug, serde::Deserialize)]
struct SliceV1beta1 {
    #[serde(default)]
    metadata: ObjectMeta,
    endpoints: Option<Vec<SliceEndpoint>>,
}

#[derive(Clone, Debug, serde::Deserialize)]
struct SliceEndpoint {
    addresses: Option<Vec<String>>,
    conditions: Option<EndpointConditions>,
}

impl k8s_openapi::Resource for SliceV1beta1 {
    const API_VERSION: &'static str = "discovery.k8s.io/v1beta1";
    const GROUP: &'static str = "discovery.k8s.io";
    const KIND: &'static str = "EndpointSlice";
    const VERSION: &'static str = "v1beta1";
    const URL_PATH_SEGMENT: &'static str = "endpointslices";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for SliceV1beta1 {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A thread reading bosun's pinned service maps every [`DATAPATH_POLL`]: when each backend
/// address of one frontend was seen held or not.
struct DatapathWatch {
    held: Timeline,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Polls>>,
}

/// How the reads of the maps went.
#[derive(Default)]
struct Polls {
    count: u64,
    failed: u64,
    /// Two reads in a row disagreed: a write fell in between.
    torn: u64,
    span: Duration,
    longest_gap: Duration,
}

impl DatapathWatch {
    async fn start(bpf_dir: &Path, frontend: Frontend) -> Result<DatapathWatch> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let maps = loop {
            match PinnedMaps::open(bpf_dir) {
                Ok(maps) => break maps,
                Err(e) if Instant::now() > deadline => {
                    return Err(e).with_context(|| {
                        format!("opening bosun's service maps in {}", bpf_dir.display())
                    })
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let held = Timeline::new("in the datapath");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("datapath-poll".to_owned())
            .spawn({
                let held = held.clone();
                let stop = stop.clone();
                move || poll_datapath(&maps, frontend, &held, &stop)
            })
            .context("starting the datapath poll")?;
        Ok(DatapathWatch {
            held,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the reads (the timeline stays); how they went.
    fn stop(&mut self) -> Polls {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for DatapathWatch {
    fn drop(&mut self) {
        self.stop();
    }
}

fn poll_datapath(
    maps: &PinnedMaps,
    frontend: Frontend,
    held: &Timeline,
    stop: &AtomicBool,
) -> Polls {
    let mut polls = Polls::default();
    let mut known: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let began = Instant::now();
    let mut last = began;
    let mut next = began;
    // The backends reached through slots 0..count of the frontend.
    let read = || -> Option<BTreeSet<Ipv4Addr>> {
        let now_held = snapshot(maps).ok()?;
        Some(
            now_held
                .services
                .iter()
                .filter(|s| s.frontend == Some(frontend))
                .flat_map(|s| s.backends.iter().flatten())
                .map(|b| b.address.address)
                .collect(),
        )
    };
    while !stop.load(Ordering::Relaxed) {
        // A read takes three passes (backends, slots, services); one that a write falls
        // into can pair the old slots with the new count, which no lookup of the datapath
        // ever sees. Two reads that agree are taken as what the datapath holds.
        match (read(), read()) {
            (Some(first), Some(backends)) if first == backends => {
                let now = SystemTime::now();
                known.extend(&backends);
                for address in &known {
                    held.set(&address.to_string(), now, backends.contains(address));
                }
            }
            (Some(_), Some(_)) => polls.torn += 1,
            _ => polls.failed += 1,
        }
        let polled = Instant::now();
        polls.longest_gap = polls.longest_gap.max(polled - last);
        polls.count += 1;
        last = polled;
        // On a schedule, so that the read's own time does not add to the period.
        next = (next + DATAPATH_POLL).max(polled);
        std::thread::sleep(next - polled);
    }
    polls.span = last - began;
    polls
}

/// Runs `command` with `sh -c` in container `id`, then reads the clock there (busybox's
/// `adjtimex`; a container shares the host's clock): when `command` was done, to the
/// microsecond, without the ExecSync round trip around it.
async fn run_timed(cri: &CriClient, id: &str, command: &str) -> Result<SystemTime> {
    let out = sh(cri, id, &format!("{command} && adjtimex")).await?;
    let field = |name: &str| -> Result<u64> {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .with_context(|| format!("no {name} in adjtimex's output {out:?}"))?
            .trim()
            .parse()
            .with_context(|| format!("adjtimex's {name}"))
    };
    let (secs, micros) = (field("time.tv_sec:")?, field("time.tv_usec:")?);
    Ok(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros))
}

/// When bosun's log first says, at or after `since`, that the readiness probe of container
/// `id` failed: its debug line (see [`PROBE_LOG_FILTER`]), written when the probe's exec
/// returned the failure.
fn probe_failed_logged(log: &str, id: &str, since: SystemTime) -> Option<SystemTime> {
    let container = format!("container={id}");
    log.lines()
        .filter(|l| {
            l.contains("probe=Readiness")
                && l.contains("event_kind=Failed")
                && l.contains(&container)
        })
        .filter_map(|l| {
            let stamp = l.split_whitespace().next()?;
            stamp.parse::<k8s_openapi::jiff::Timestamp>().ok()
        })
        .map(SystemTime::from)
        .find(|at| *at >= since)
}

// ---- CRI timestamps ---------------------------------------------------------------------

/// The static pod name of manifest pod `name` on the node (also the bare pods' label).
fn full_static(name: &str) -> String {
    format!("{name}-{NODE_NAME}")
}

fn name_filter(name: &str) -> api::PodSandboxFilter {
    api::PodSandboxFilter {
        label_selector: HashMap::from([(POD_NAME_LABEL.to_owned(), name.to_owned())]),
        ..Default::default()
    }
}

/// The latest `started_at` of the containers of the pod labelled `name`.
async fn started_at(cri: &CriClient, name: &str) -> Result<SystemTime> {
    let containers = cri
        .list_containers(Some(api::ContainerFilter {
            label_selector: HashMap::from([(POD_NAME_LABEL.to_owned(), name.to_owned())]),
            ..Default::default()
        }))
        .await
        .context("ListContainers")?;
    let mut latest = None;
    for c in &containers {
        let status = cri
            .container_status(&c.id, false)
            .await
            .context("ContainerStatus")?
            .status
            .with_context(|| format!("container {} has no status", c.id))?;
        latest = latest.max(from_cri(status.started_at));
    }
    latest.with_context(|| format!("pod {name} has no started container"))
}

/// Polls a container's status every 2 ms until CRI reports it exited; returns its
/// `finished_at` and when the exit was first seen.
async fn wait_exited(cri: &CriClient, id: &str) -> Result<(SystemTime, SystemTime)> {
    let deadline = Instant::now() + LONG;
    loop {
        let status = cri
            .container_status(id, false)
            .await
            .context("ContainerStatus")?
            .status
            .with_context(|| format!("container {id} has no status"))?;
        let seen = SystemTime::now();
        if status.state == api::ContainerState::ContainerExited as i32 {
            let finished = from_cri(status.finished_at)
                .with_context(|| format!("container {id} exited without finished_at"))?;
            return Ok((finished, seen));
        }
        if Instant::now() > deadline {
            bail!("container {id} did not exit within {LONG:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
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
    load: String,
    rows: Vec<Row>,
}

impl Table {
    fn new(title: &str, load_at_start: &str) -> Table {
        Table {
            title: title.to_owned(),
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

    fn median(&self, row: usize) -> f64 {
        Stats::of(&self.rows[row].samples).map_or(f64::NAN, |s| s.median)
    }

    fn print(&self) {
        println!("\n{}", self.title);
        println!(
            "  load average {} at the start, {} at the end",
            self.load,
            load_average()
        );
        println!(
            "  {:<52} {:>4} {:>9} {:>9} {:>9} {:>9}  ratio of medians",
            "ms", "n", "min", "median", "p99", "max"
        );
        for row in &self.rows {
            let Some(stats) = Stats::of(&row.samples) else {
                println!("  {:<52}    0", row.label);
                continue;
            };
            let ratio = row
                .baseline
                .map(|b| format!("{:.2}×", stats.median / self.median(b)))
                .unwrap_or_default();
            println!(
                "  {:<52} {:>4} {:>9.1} {:>9.1} {:>9.1} {:>9.1}  {ratio}",
                row.label, stats.n, stats.min, stats.median, stats.p99, stats.max
            );
        }
    }
}
