//! bosun's pod-lifecycle benchmarks, on a real private containerd (a `TestNode`) and a real
//! `bosun run`:
//!
//! - `pod_start`: manifest written → container running, against the bare CRI sequence
//!   (RunPodSandbox, CreateContainer, StartContainer) issued directly with the same configs;
//! - `pods_at_once`: 30 manifests written at once → all running, against 30 bare sequences
//!   issued concurrently;
//! - `time_to_ready`: manifest → pod Ready with an exec and an httpGet readiness probe, next
//!   to the container's start;
//! - `exit_detection`: a container's exit → its replacement created, against the floor of an
//!   agent that learns of exits through CRI (containerd reporting the exit, then a bare
//!   CreateContainer);
//! - `footprint`: the daemon's memory and CPU with 100 probed pods, against an idle daemon.
//!
//! Times are containerd's own CRI timestamps (`created_at`, `started_at`, `finished_at`) on
//! the host's wall clock, so how often the benchmark polls does not change what it measures.
//! bosun's samples and the baseline's are interleaved, so a change in the machine's load
//! during the run hits both alike.
//!
//! Run as root: `cargo bench -p bosun --bench pods -- [--quick | --smoke] [--samples N]
//! [FILTER...]` (or `scripts/bench.sh pods`). A FILTER selects the benchmarks whose name
//! contains it. `--smoke` takes one sample of each with the fewest pods, only to show that
//! the benchmarks still run (`scripts/bench.sh smoke`, part of `scripts/test.sh`).

#[path = "common/bare.rs"]
mod bare;
mod common;

use bare::{cpu_percent, cpu_ticks, from_cri, ms_between, status_kib, Baseline, NODE_NAME};
use common::{load_average, Stats};

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use bosun::pod::spec::POD_NAME_LABEL;
use bosun_cri::{api, CriClient};
use bosun_tests::images::BUSYBOX_IMAGE;
use bosun_tests::node::TestNode;
use k8s_openapi::api::core::v1::Pod;

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");
const BENCHMARKS: [&str; 5] = [
    "pod_start",
    "pods_at_once",
    "time_to_ready",
    "exit_detection",
    "footprint",
];

/// PID 1 that waits forever and exits at once on SIGTERM (PID 1 ignores it unless trapped),
/// so removing a pod costs no grace period.
const SERVE: &str = "trap 'exit 0' TERM; sleep 2147483647 & wait";
/// busybox httpd serving one file on port 8080, exiting at once on SIGTERM.
const HTTPD: &str = "trap 'exit 0' TERM; mkdir -p /www; echo ok > /www/index.html; \
                     httpd -f -p 8080 -h /www & wait";
/// Runs half a second, then fails: restartPolicy Always restarts it at once the first time.
const CRASH: &str = "trap 'exit 0' TERM; sleep 0.5 & wait; exit 1";

const EXEC_READINESS: &str = "    readinessProbe:
      exec:
        command: [\"true\"]
      periodSeconds: 1
";
const HTTP_READINESS: &str = "    ports:
    - containerPort: 8080
    readinessProbe:
      httpGet:
        path: /index.html
        port: 8080
      periodSeconds: 1
";
const FOOTPRINT_PROBES: &str = "    readinessProbe:
      exec:
        command: [\"true\"]
      periodSeconds: 10
    livenessProbe:
      exec:
        command: [\"true\"]
      periodSeconds: 10
";

fn main() {
    let usage =
        format!("[--quick | --smoke] [--samples N] [FILTER...]  (benchmarks: {BENCHMARKS:?})");
    let Some(options) = common::bench_args("pods", &usage, |args| {
        Options::parse(args, &BENCHMARKS, |_, _| Ok(false))
    }) else {
        return;
    };
    bare::run_async("pods", run(&options));
}

// ---- options and sizes ------------------------------------------------------------------

// The arguments are just the common ones.
use common::{Args as Options, Mode};

impl Options {
    fn sizes(&self) -> Sizes {
        let mut sizes = match self.mode {
            Mode::Smoke => Sizes {
                start_samples: 1,
                at_once_pods: 2,
                at_once_rounds: 1,
                ready_samples: 1,
                exit_samples: 1,
                footprint_pods: 2,
                window: Duration::from_secs(1),
                settle: Duration::from_secs(1),
            },
            Mode::Quick => Sizes {
                start_samples: 5,
                at_once_pods: 10,
                at_once_rounds: 2,
                ready_samples: 3,
                exit_samples: 5,
                footprint_pods: 10,
                window: Duration::from_secs(10),
                settle: Duration::from_secs(5),
            },
            Mode::Full => Sizes {
                start_samples: 40,
                at_once_pods: 30,
                at_once_rounds: 5,
                ready_samples: 15,
                exit_samples: 40,
                footprint_pods: 100,
                window: Duration::from_secs(60),
                settle: Duration::from_secs(20),
            },
        };
        if let Some(n) = self.samples {
            sizes.start_samples = n;
            sizes.ready_samples = n;
            sizes.exit_samples = n;
        }
        sizes
    }
}

struct Sizes {
    start_samples: usize,
    at_once_pods: usize,
    at_once_rounds: usize,
    ready_samples: usize,
    exit_samples: usize,
    footprint_pods: usize,
    /// The CPU measurement window of `footprint`.
    window: Duration,
    /// How long `footprint` lets the daemon settle before measuring.
    settle: Duration,
}

// ---- the run ----------------------------------------------------------------------------

async fn run(options: &Options) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the benchmarks need root: they run containerd and pods");
    }
    let node = TestNode::start("bench").await?;
    let outcome = run_on(&node, options).await;
    let shutdown = node.shutdown().await;
    outcome.and(shutdown)
}

async fn run_on(node: &TestNode, options: &Options) -> Result<()> {
    let bench = Bench::new(node, options.sizes()).await?;
    print_machine(&bench.cri, options);

    let lifecycle = [
        "pod_start",
        "pods_at_once",
        "time_to_ready",
        "exit_detection",
    ];
    if lifecycle.iter().any(|b| options.selected(b)) {
        let daemon = Daemon::start(node, "bosun").await?;
        let result = async {
            bench.warm_up(&daemon).await?;
            if options.selected("pod_start") {
                bench.pod_start(&daemon).await?;
            }
            if options.selected("pods_at_once") {
                bench.pods_at_once(&daemon).await?;
            }
            if options.selected("time_to_ready") {
                bench.time_to_ready(&daemon).await?;
            }
            if options.selected("exit_detection") {
                bench.exit_detection(&daemon).await?;
            }
            anyhow::Ok(())
        }
        .await;
        finish_daemon(&bench, daemon, result).await?;
    }
    if options.selected("footprint") {
        let daemon = Daemon::start(node, "footprint").await?;
        let result = bench.footprint(&daemon).await;
        finish_daemon(&bench, daemon, result).await?;
    }
    println!("\nload average at the end: {}", load_average());
    Ok(())
}

/// Removes the daemon's pods (the node's teardown removes whatever is left) and kills it.
async fn finish_daemon(bench: &Bench<'_>, daemon: Daemon, result: Result<()>) -> Result<()> {
    if result.is_err() {
        eprintln!("--- end of bosun's log ---\n{}", daemon.log_tail(20));
    }
    let cleaned = bench.remove_all(&daemon).await;
    daemon.stop().await?;
    result.and(cleaned)
}

fn print_machine(cri: &CriClient, options: &Options) {
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
    let version = cri.version();
    println!("bosun pod-lifecycle benchmarks{}", options.mode.label());
    println!(
        "machine: {cpus} CPUs ({model}), kernel {}, {} {}",
        read("/proc/sys/kernel/osrelease"),
        version.runtime_name,
        version.runtime_version
    );
    println!("load average at the start: {}", load_average());
}

// ---- the benchmarks ---------------------------------------------------------------------

struct Bench<'a> {
    node: &'a TestNode,
    cri: CriClient,
    sizes: Sizes,
    baseline: Baseline,
    /// Numbers pod names, so that no two pods of a run share one.
    next: std::sync::atomic::AtomicU32,
}

impl<'a> Bench<'a> {
    async fn new(node: &'a TestNode, sizes: Sizes) -> Result<Bench<'a>> {
        let cri = node.cri().await?;
        let baseline = Baseline::new(node, cri.clone())?;
        Ok(Bench {
            node,
            cri,
            sizes,
            baseline,
            next: std::sync::atomic::AtomicU32::new(0),
        })
    }

    fn name(&self, prefix: &str) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{prefix}-{n}")
    }

    /// One pod each way, unmeasured: the node's first pod creates its bridge, and the first
    /// calls fill containerd's and the kernel's caches.
    async fn warm_up(&self, daemon: &Daemon) -> Result<()> {
        let name = self.name("warm");
        self.bosun_start(daemon, &name, &manifest(&name, "", SERVE))
            .await?;
        self.bosun_remove(daemon, &[name]).await?;
        let name = self.name("warm-bare");
        let (sandbox_id, _) = self
            .baseline
            .start(&self.baseline.pod(&name, &manifest(&name, "", SERVE))?)
            .await?;
        self.baseline.remove(&sandbox_id).await
    }

    async fn pod_start(&self, daemon: &Daemon) -> Result<()> {
        let load = load_average();
        let mut bare = Phases::default();
        let mut bosun = Phases::default();
        let mut seen = Vec::new();
        for _ in 0..self.sizes.start_samples {
            let name = self.name("bare");
            let pod = self.baseline.pod(&name, &manifest(&name, "", SERVE))?;
            let (sandbox_id, t0) = self.baseline.start(&pod).await?;
            bare.add(t0, &pod_times(&self.cri, &full_name(&name)).await?);
            self.baseline.remove(&sandbox_id).await?;

            let name = self.name("start");
            let started = self
                .bosun_start(daemon, &name, &manifest(&name, "", SERVE))
                .await?;
            bosun.add(started.t0, &started.times);
            seen.push(ms_between(started.t0, started.seen));
            self.bosun_remove(daemon, &[name]).await?;
        }
        let mut table = Table::new(
            "pod_start: one pod, manifest written → container running (CRI started_at)",
            &load,
        );
        let base = table.row("bare CRI: RunPodSandbox → started_at", bare.started, None);
        table.row("bosun: manifest → started_at", bosun.started, Some(base));
        table.row(
            "bosun: manifest → `get pods` shows Running",
            seen,
            Some(base),
        );
        table.print();
        let mut phases = Table::new(
            "pod_start, where the time goes (t0 → each CRI timestamp)",
            &load,
        );
        let base = phases.row("bare: t0 → sandbox created_at", bare.sandbox, None);
        phases.row("bosun: t0 → sandbox created_at", bosun.sandbox, Some(base));
        let base = phases.row("bare: t0 → container created_at", bare.created, None);
        phases.row(
            "bosun: t0 → container created_at",
            bosun.created,
            Some(base),
        );
        phases.print();
        Ok(())
    }

    async fn pods_at_once(&self, daemon: &Daemon) -> Result<()> {
        let load = load_average();
        let count = self.sizes.at_once_pods;
        let mut bare = Vec::new();
        let mut bosun = Vec::new();
        for _ in 0..self.sizes.at_once_rounds {
            let names: Vec<String> = (0..count).map(|_| self.name("bare")).collect();
            let pods = names
                .iter()
                .map(|n| self.baseline.pod(n, &manifest(n, "", SERVE)))
                .collect::<Result<Vec<_>>>()?;
            let t0 = SystemTime::now();
            let started =
                futures::future::try_join_all(pods.iter().map(|p| self.baseline.start(p))).await?;
            bare.push(ms_between(t0, self.last_started(t0, &names).await?));
            futures::future::try_join_all(started.iter().map(|(id, _)| self.baseline.remove(id)))
                .await?;

            let names: Vec<String> = (0..count).map(|_| self.name("many")).collect();
            let pending = names
                .iter()
                .map(|n| daemon.stage_manifest(n, &manifest(n, "", SERVE)))
                .collect::<Result<Vec<_>>>()?;
            let t0 = SystemTime::now();
            for staged in &pending {
                staged.publish()?;
            }
            // Timestamps are read once all run, so that reading them adds no load to the
            // start being measured.
            for name in &names {
                daemon
                    .wait_pod(name, Duration::from_millis(50), LONG, all_running)
                    .await?;
            }
            bosun.push(ms_between(t0, self.last_started(t0, &names).await?));
            self.bosun_remove(daemon, &names).await?;
        }
        let mut table = Table::new(
            &format!("pods_at_once: {count} pods, first write → last container started_at"),
            &load,
        );
        let base = table.row(
            &format!("bare CRI: {count} sequences concurrently"),
            bare,
            None,
        );
        table.row(
            &format!("bosun: {count} manifests at once"),
            bosun,
            Some(base),
        );
        table.print();
        Ok(())
    }

    /// The latest container start of the pods of manifests `names`.
    async fn last_started(&self, t0: SystemTime, names: &[String]) -> Result<SystemTime> {
        let mut last = t0;
        for name in names {
            last = last.max(pod_times(&self.cri, &full_name(name)).await?.started);
        }
        Ok(last)
    }

    async fn time_to_ready(&self, daemon: &Daemon) -> Result<()> {
        let variants = [
            ("exec `true`", SERVE, EXEC_READINESS),
            ("httpGet on busybox httpd", HTTPD, HTTP_READINESS),
        ];
        for (what, script, probe) in variants {
            let load = load_average();
            let mut started = Vec::new();
            let mut ready = Vec::new();
            let mut after_start = Vec::new();
            for _ in 0..self.sizes.ready_samples {
                let name = self.name("ready");
                let t0 = SystemTime::now();
                daemon.write_manifest(&name, &manifest(&name, probe, script))?;
                let (_, seen_ready) = daemon
                    .wait_pod(&name, Duration::from_millis(5), LONG, |p| {
                        is_ready(p).then_some(())
                    })
                    .await?;
                let times = pod_times(&self.cri, &full_name(&name)).await?;
                started.push(ms_between(t0, times.started));
                ready.push(ms_between(t0, seen_ready));
                after_start.push(ms_between(times.started, seen_ready));
                self.bosun_remove(daemon, &[name]).await?;
            }
            let mut table = Table::new(
                &format!(
                    "time_to_ready, readiness probe {what}, periodSeconds 1 \
                     (Ready polled every 5 ms)"
                ),
                &load,
            );
            let base = table.row("bosun: manifest → container started_at", started, None);
            table.row("bosun: manifest → pod Ready", ready, Some(base));
            table.row("bosun: container started_at → pod Ready", after_start, None);
            table.print();
        }
        Ok(())
    }

    async fn exit_detection(&self, daemon: &Daemon) -> Result<()> {
        let load = load_average();
        // The floor is what an agent driving CRI could at best do: learn of the exit when
        // CRI first reports it (containerd updates a container's state only after its own
        // clean-up of the task) and issue CreateContainer (and StartContainer) at once. Both
        // parts are measured on a bare sandbox, the container being the same crashing one.
        let name = self.name("bare-exit");
        let pod = self.baseline.pod(&name, &manifest(&name, "", CRASH))?;
        std::fs::create_dir_all(&pod.sandbox.log_directory)
            .with_context(|| format!("creating {}", pod.sandbox.log_directory))?;
        let sandbox_id = self
            .cri
            .run_pod_sandbox(pod.sandbox.clone(), "")
            .await
            .context("RunPodSandbox")?;
        let mut visible = Vec::new();
        let mut floor_created = Vec::new();
        let mut floor_started = Vec::new();
        let mut created = Vec::new();
        let mut started = Vec::new();
        for attempt in 0..self.sizes.exit_samples {
            let mut config = pod.container.clone();
            if let Some(metadata) = config.metadata.as_mut() {
                metadata.attempt = u32::try_from(attempt).unwrap_or(u32::MAX);
            }
            let t0 = SystemTime::now();
            let id = self
                .cri
                .create_container(&sandbox_id, config, pod.sandbox.clone())
                .await
                .context("CreateContainer")?;
            self.cri
                .start_container(&id)
                .await
                .context("StartContainer")?;
            let times = container_times(&self.cri, &id).await?;
            let (finished, seen) = self.wait_exited(&id).await?;
            let shown = ms_between(finished, seen);
            visible.push(shown);
            floor_created.push(shown + ms_between(t0, times.created));
            floor_started.push(shown + ms_between(t0, times.started));
            self.cri.remove_container(&id).await?;

            let name = self.name("crash");
            daemon.write_manifest(&name, &manifest(&name, "", CRASH))?;
            let (first, second) = self.first_restart(&full_name(&name)).await?;
            created.push(ms_between(first.finished, second.created));
            started.push(ms_between(first.finished, second.started));
            self.bosun_remove(daemon, &[name]).await?;
        }
        self.baseline.remove(&sandbox_id).await?;
        let mut table = Table::new(
            "exit_detection: container exits (finished_at) → replacement (restartPolicy Always, \
             first restart, a fresh pod per sample)",
            &load,
        );
        table.row(
            "containerd: finished_at → CRI reports it exited",
            visible,
            None,
        );
        let base = table.row("floor: + CreateContainer → created_at", floor_created, None);
        table.row(
            "bosun: finished_at → replacement created_at",
            created,
            Some(base),
        );
        let base = table.row(
            "floor: + Create+StartContainer → started_at",
            floor_started,
            None,
        );
        table.row(
            "bosun: finished_at → replacement started_at",
            started,
            Some(base),
        );
        table.print();
        Ok(())
    }

    /// Polls a container's status every 2 ms until CRI reports it exited; returns its
    /// `finished_at` and when the exit was first seen.
    async fn wait_exited(&self, id: &str) -> Result<(SystemTime, SystemTime)> {
        let deadline = Instant::now() + LONG;
        loop {
            let status = self
                .cri
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

    /// Waits for the pod's container to be restarted once and returns the timestamps of the
    /// first instance and of the second.
    async fn first_restart(&self, full: &str) -> Result<(ContainerTimes, ContainerTimes)> {
        let deadline = Instant::now() + LONG;
        loop {
            let containers = self
                .cri
                .list_containers(Some(label_filter(full)))
                .await
                .context("ListContainers")?;
            let attempt = |n: u32| {
                containers
                    .iter()
                    .find(|c| c.metadata.as_ref().is_some_and(|m| m.attempt == n))
            };
            if let (Some(first), Some(second)) = (attempt(0), attempt(1)) {
                // The replacement may be created but not started yet.
                if let Some(second) = started_times(&self.cri, &second.id).await? {
                    let first = container_times(&self.cri, &first.id).await?;
                    return Ok((first, second));
                }
            }
            if Instant::now() > deadline {
                bail!("{full}'s container was not restarted within {LONG:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn footprint(&self, daemon: &Daemon) -> Result<()> {
        let count = self.sizes.footprint_pods;
        tokio::time::sleep(self.sizes.settle).await;
        let idle_load = load_average();
        let idle = self.measure(daemon).await?;

        let names: Vec<String> = (0..count).map(|_| self.name("fp")).collect();
        let began = Instant::now();
        for name in &names {
            daemon.write_manifest(name, &manifest(name, FOOTPRINT_PROBES, SERVE))?;
        }
        let mut pending: HashSet<String> = names.iter().map(|n| full_name(n)).collect();
        let deadline = Instant::now() + Duration::from_secs(600);
        while !pending.is_empty() {
            if Instant::now() > deadline {
                bail!(
                    "{} of {count} pods were not Ready after 10 min",
                    pending.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            for pod in daemon.pods().await? {
                if is_ready(&pod) {
                    pending.remove(pod.metadata.name.as_deref().unwrap_or(""));
                }
            }
        }
        let all_ready = began.elapsed();
        tokio::time::sleep(self.sizes.settle).await;
        let loaded_load = load_average();
        let loaded = self.measure(daemon).await?;

        println!(
            "\nfootprint: bosun's own process (VmRSS, VmHWM from /proc/PID/status; CPU is \
             utime+stime from /proc/PID/stat over {:?})",
            self.sizes.window
        );
        println!(
            "  {count} pods, each with an exec readiness and an exec liveness probe (`true`, \
             periodSeconds 10), all Ready {:.1} s after their manifests were written",
            all_ready.as_secs_f64()
        );
        println!(
            "  {:<34} {:>10} {:>10} {:>8} {:>8} {:>12} {:>16}  load average",
            "", "RSS MB", "peak MB", "file MB", "anon MB", "CPU % core", "containerd CPU %"
        );
        for (label, m, load) in [
            ("idle, 0 pods".to_owned(), &idle, &idle_load),
            (format!("{count} pods with probes"), &loaded, &loaded_load),
        ] {
            println!(
                "  {label:<34} {:>10.1} {:>10.1} {:>8.1} {:>8.1} {:>12.2} {:>16.2}  {load}",
                m.rss_mb, m.hwm_mb, m.file_mb, m.anon_mb, m.cpu_percent, m.containerd_cpu_percent
            );
        }
        println!(
            "  ratio to idle: RSS {:.2}×, CPU {}   (goal: < 30 MB RSS, < 1 % of a core)",
            loaded.rss_mb / idle.rss_mb.max(f64::MIN_POSITIVE),
            if idle.cpu_percent > 0.0 {
                format!("{:.1}×", loaded.cpu_percent / idle.cpu_percent)
            } else {
                "n/a (idle used no measurable CPU)".to_owned()
            }
        );
        self.bosun_remove(daemon, &names).await
    }

    async fn measure(&self, daemon: &Daemon) -> Result<Footprint> {
        let containerd = self
            .node
            .containerd_pid()
            .context("containerd is not running")?;
        let before = (cpu_ticks(daemon.pid)?, cpu_ticks(containerd)?);
        tokio::time::sleep(self.sizes.window).await;
        let after = (cpu_ticks(daemon.pid)?, cpu_ticks(containerd)?);
        let percent = |ticks: u64| cpu_percent(ticks, self.sizes.window);
        let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid))
            .context("reading bosun's /proc status")?;
        Ok(Footprint {
            rss_mb: status_kib(&status, "VmRSS:")? / 1024.0,
            hwm_mb: status_kib(&status, "VmHWM:")? / 1024.0,
            file_mb: status_kib(&status, "RssFile:")? / 1024.0,
            anon_mb: status_kib(&status, "RssAnon:")? / 1024.0,
            cpu_percent: percent(after.0.saturating_sub(before.0)),
            containerd_cpu_percent: percent(after.1.saturating_sub(before.1)),
        })
    }

    /// Writes a manifest and waits until the API reports its containers running; returns
    /// when it was written, the CRI timestamps, and when the API first showed it running.
    async fn bosun_start(&self, daemon: &Daemon, name: &str, text: &str) -> Result<Started> {
        let t0 = SystemTime::now();
        daemon.write_manifest(name, text)?;
        let (_, seen) = daemon
            .wait_pod(name, Duration::from_millis(10), LONG, all_running)
            .await?;
        let times = pod_times(&self.cri, &full_name(name)).await?;
        Ok(Started { t0, seen, times })
    }

    /// Deletes the manifests and waits until the daemon no longer lists the pods and CRI
    /// holds none of their sandboxes.
    async fn bosun_remove(&self, daemon: &Daemon, names: &[String]) -> Result<()> {
        for name in names {
            daemon.remove_manifest(name)?;
        }
        let full: HashSet<String> = names.iter().map(|n| full_name(n)).collect();
        self.wait_gone(daemon, &full).await
    }

    /// Deletes every manifest the daemon has and waits until their pods are gone.
    async fn remove_all(&self, daemon: &Daemon) -> Result<()> {
        let mut full = HashSet::new();
        for entry in std::fs::read_dir(&daemon.manifests)
            .with_context(|| format!("listing {}", daemon.manifests.display()))?
        {
            let path = entry?.path();
            if let Some(name) = path.file_stem().and_then(|s| s.to_str()) {
                full.insert(full_name(name));
            }
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        self.wait_gone(daemon, &full).await
    }

    async fn wait_gone(&self, daemon: &Daemon, full: &HashSet<String>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let sandboxes = self
                .cri
                .list_pod_sandbox(None)
                .await
                .context("ListPodSandbox")?;
            let in_cri = sandboxes.iter().any(|s| {
                s.labels
                    .get(POD_NAME_LABEL)
                    .is_some_and(|n| full.contains(n))
            });
            let listed = daemon
                .pods()
                .await?
                .iter()
                .any(|p| p.metadata.name.as_ref().is_some_and(|n| full.contains(n)));
            if !in_cri && !listed {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} pods were still there 5 min after their manifests went",
                    full.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// How long any one pod may take to reach what a benchmark waits for.
const LONG: Duration = Duration::from_secs(120);

struct Footprint {
    rss_mb: f64,
    hwm_mb: f64,
    /// VmRSS's file-backed part (the binary's and libraries' pages) and its anonymous part
    /// (heap, stacks).
    file_mb: f64,
    anon_mb: f64,
    cpu_percent: f64,
    containerd_cpu_percent: f64,
}

// ---- bosun's side -------------------------------------------------------------------------

/// A `bosun run` on the test node, with its own root, manifest directory and log under
/// `<node dir>/<name>` (the end-to-end tests' daemon), read through its API socket.
struct Daemon {
    inner: bosun_tests::daemon::Daemon,
    pid: u32,
    manifests: PathBuf,
    socket: PathBuf,
}

impl Daemon {
    async fn start(node: &TestNode, name: &str) -> Result<Daemon> {
        let inner = bosun_tests::daemon::Daemon::start_at(
            Path::new(BOSUN),
            node,
            &node.dir().join(name),
            "",
        )
        .await?;
        let pid = inner.pid().context("bosun exited at once")?;
        let mut daemon = Daemon {
            pid,
            manifests: inner.manifests().to_owned(),
            socket: bosun::daemon::api_socket(inner.root()),
            inner,
        };
        daemon.wait_until_serving().await?;
        Ok(daemon)
    }

    async fn wait_until_serving(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.inner.try_wait()? {
                bail!("bosun exited ({status}):\n{}", self.log_tail(20));
            }
            if bosun::api::get_pods(&self.socket).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "bosun's API did not answer within 30 s:\n{}",
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn manifest_path(&self, name: &str) -> PathBuf {
        self.manifests.join(format!("{name}.yaml"))
    }

    /// Writes a manifest under a name bosun ignores, to be renamed into place by
    /// [`Staged::publish`], as an editor saves a file.
    fn stage_manifest(&self, name: &str, text: &str) -> Result<Staged> {
        let staged = Staged {
            from: self.manifests.join(format!(".{name}.yaml.tmp")),
            to: self.manifest_path(name),
        };
        std::fs::write(&staged.from, text)
            .with_context(|| format!("writing {}", staged.from.display()))?;
        Ok(staged)
    }

    fn write_manifest(&self, name: &str, text: &str) -> Result<()> {
        self.stage_manifest(name, text)?.publish()
    }

    fn remove_manifest(&self, name: &str) -> Result<()> {
        let path = self.manifest_path(name);
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
    }

    async fn pods(&self) -> Result<Vec<Pod>> {
        bosun::api::get_pods(&self.socket).await
    }

    /// Polls the API every `every` until `check` gives something for the pod of manifest
    /// `name`; returns that and when it was seen.
    async fn wait_pod<T>(
        &self,
        name: &str,
        every: Duration,
        within: Duration,
        check: impl Fn(&Pod) -> Option<T>,
    ) -> Result<(T, SystemTime)> {
        let full = full_name(name);
        let deadline = Instant::now() + within;
        let mut last = None;
        loop {
            let pods = self.pods().await?;
            let seen = SystemTime::now();
            if let Some(pod) = pods
                .into_iter()
                .find(|p| p.metadata.name.as_deref() == Some(&full))
            {
                if let Some(found) = check(&pod) {
                    return Ok((found, seen));
                }
                last = pod.status;
            }
            if Instant::now() > deadline {
                bail!(
                    "pod {full} did not get there within {within:?}; last status: {}\n{}",
                    serde_json::to_string(&last).unwrap_or_default(),
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(every).await;
        }
    }

    /// The last `lines` lines of the daemon's log, without terminal colours.
    fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.inner.log_path()).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        strip_ansi(&all[all.len().saturating_sub(lines)..].join("\n"))
    }

    /// Kills the daemon (the process this benchmark started); its pods stay.
    async fn stop(self) -> Result<()> {
        self.inner.kill().await.context("killing bosun")
    }
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI sequences end with a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A manifest written beside its final name.
struct Staged {
    from: PathBuf,
    to: PathBuf,
}

impl Staged {
    fn publish(&self) -> Result<()> {
        std::fs::rename(&self.from, &self.to)
            .with_context(|| format!("renaming into {}", self.to.display()))
    }
}

/// A pod with one busybox container `app` running `sh -c script`; `container_extra` is
/// spliced into the container (four-space indented lines).
fn manifest(name: &str, container_extra: &str, script: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  \
         terminationGracePeriodSeconds: 5\n  containers:\n  - name: app\n    \
         image: {BUSYBOX_IMAGE}\n    imagePullPolicy: IfNotPresent\n    \
         command: [sh, -c, {script:?}]\n{container_extra}"
    )
}

/// The static pod name of manifest `name` on the benchmark's node.
fn full_name(name: &str) -> String {
    format!("{name}-{NODE_NAME}")
}

/// `Some` once every container of the pod runs.
fn all_running(pod: &Pod) -> Option<()> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    let running = !statuses.is_empty()
        && statuses
            .iter()
            .all(|s| s.state.as_ref().is_some_and(|st| st.running.is_some()));
    running.then_some(())
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

// ---- timestamps -------------------------------------------------------------------------

/// One pod start by bosun: when its manifest was written (`t0`), when the API first showed it
/// running, and containerd's timestamps.
struct Started {
    t0: SystemTime,
    seen: SystemTime,
    times: PodTimes,
}

/// containerd's timestamps of a pod's newest sandbox and its containers (the latest of each).
struct PodTimes {
    sandbox: SystemTime,
    created: SystemTime,
    started: SystemTime,
}

struct ContainerTimes {
    created: SystemTime,
    started: SystemTime,
    finished: SystemTime,
}

/// Samples of each start phase, in ms from `t0`.
#[derive(Default)]
struct Phases {
    sandbox: Vec<f64>,
    created: Vec<f64>,
    started: Vec<f64>,
}

impl Phases {
    fn add(&mut self, t0: SystemTime, times: &PodTimes) {
        self.sandbox.push(ms_between(t0, times.sandbox));
        self.created.push(ms_between(t0, times.created));
        self.started.push(ms_between(t0, times.started));
    }
}

fn label_filter(full: &str) -> api::ContainerFilter {
    api::ContainerFilter {
        label_selector: HashMap::from([(POD_NAME_LABEL.to_owned(), full.to_owned())]),
        ..Default::default()
    }
}

async fn pod_times(cri: &CriClient, full: &str) -> Result<PodTimes> {
    let sandboxes = cri
        .list_pod_sandbox(Some(api::PodSandboxFilter {
            label_selector: HashMap::from([(POD_NAME_LABEL.to_owned(), full.to_owned())]),
            ..Default::default()
        }))
        .await
        .context("ListPodSandbox")?;
    let sandbox = sandboxes
        .iter()
        .filter_map(|s| from_cri(s.created_at))
        .max()
        .with_context(|| format!("{full} has no sandbox"))?;
    let containers = cri
        .list_containers(Some(label_filter(full)))
        .await
        .context("ListContainers")?;
    let mut created = None;
    let mut started = None;
    for c in &containers {
        let times = container_times(cri, &c.id).await?;
        created = created.max(Some(times.created));
        started = started.max(Some(times.started));
    }
    Ok(PodTimes {
        sandbox,
        created: created.with_context(|| format!("{full} has no container"))?,
        started: started.with_context(|| format!("{full} has no container"))?,
    })
}

/// A started container's timestamps; `finished` is the epoch while it runs.
async fn container_times(cri: &CriClient, id: &str) -> Result<ContainerTimes> {
    started_times(cri, id)
        .await?
        .with_context(|| format!("container {id} has not started"))
}

/// A container's timestamps, or `None` while it has not started.
async fn started_times(cri: &CriClient, id: &str) -> Result<Option<ContainerTimes>> {
    let status = cri
        .container_status(id, false)
        .await
        .context("ContainerStatus")?
        .status
        .with_context(|| format!("container {id} has no status"))?;
    let created =
        from_cri(status.created_at).with_context(|| format!("container {id} has no created_at"))?;
    Ok(from_cri(status.started_at).map(|started| ContainerTimes {
        created,
        started,
        finished: from_cri(status.finished_at).unwrap_or(SystemTime::UNIX_EPOCH),
    }))
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

    fn print(&self) {
        println!("\n{}", self.title);
        println!(
            "  load average {} at the start, {} at the end",
            self.load,
            load_average()
        );
        println!(
            "  {:<50} {:>4} {:>9} {:>9} {:>9} {:>9}  ratio median (p99)",
            "ms", "n", "min", "median", "p99", "max"
        );
        for row in &self.rows {
            let Some(stats) = Stats::of(&row.samples) else {
                println!("  {:<50}    0", row.label);
                continue;
            };
            let ratio = row
                .baseline
                .and_then(|b| Stats::of(&self.rows[b].samples))
                .map(|base| {
                    format!(
                        "{:.2}× ({:.2}×)",
                        stats.median / base.median,
                        stats.p99 / base.p99
                    )
                })
                .unwrap_or_default();
            println!(
                "  {:<50} {:>4} {:>9.1} {:>9.1} {:>9.1} {:>9.1}  {ratio}",
                row.label, stats.n, stats.min, stats.median, stats.p99, stats.max
            );
        }
    }
}
