//! `bosun proxy` at scale, through the API path (issue 12): the real binary, fed by a fake
//! kube-apiserver holding N Services, N EndpointSlices and its Node, programs the real
//! datapath on the cgroup2 root; measured are how long it takes, what it costs, and what its
//! programs then cost every connect of the machine.
//!
//! For each N (1000, 10000, 30000; `--smoke`: 1000), with 4 endpoints per Service:
//!
//! - **initial sync**: `bosun proxy` is started with its own `--bpf-dir`; timed from its first
//!   list request reaching the fake (and from the process's start) to all N frontends being in
//!   the pinned service map. The map is polled every 5 ms: the first and last Service's
//!   frontends by lookup, and only once both are there, the whole map's keys counted. Every
//!   round (see `connect`) starts a new process on an empty datapath, so each is a sample.
//! - **memory**: VmRSS and VmHWM of the process from /proc, after the first round's sync and
//!   2 s of settling.
//! - **one EndpointSlice change → maps**: a MODIFIED event for a random Service's slice (never
//!   one the connects use), one endpoint replaced by a fresh address; timed from the instant
//!   the fake handed the event to the watch connection to the new backend being among that
//!   frontend's backends in the maps (its service, slot and backend entries looked up, every
//!   50 µs). Median and p99.
//! - **connect**: TCP connect + close latency through services.rs's lab (a client namespace
//!   routed through the host to a backend namespace answering on every endpoint): to the
//!   first, middle and last Service's ClusterIP, and to an address that is no Service (a
//!   backend, directly) while the datapath holds N Services, against the rule-free floor
//!   (the same backend with no datapath). The programs run on every connect of the machine,
//!   so the floor is measured between rounds: each round measures the floor, starts `bosun
//!   proxy`, waits for its sync, measures the targets in interleaved blocks, kills it and
//!   removes its datapath (`bosun proxy --cleanup`); a last floor block brackets the rounds.
//!   Ratios are of medians.
//! - **the connect program's own cost**: in the last round, with the kernel's BPF run-time
//!   statistics on (`BPF_ENABLE_STATS`, for the run only), the `connect4` program's run time
//!   per run for connects to the non-Service address (one service-map lookup that misses) and
//!   to a ClusterIP (the lookups of service, slot and backend, and the reverse-NAT insert).
//!
//! And apart from the Services (`policy`): `bosun proxy` enforcing NetworkPolicy for
//! one local pod. The fake serves P NetworkPolicies (1000; `--smoke`: 100) in namespace
//! `bench`, policy `i` selecting the pods labelled `app: server` and allowing ingress on TCP
//! 8080 from the pods labelled `peer: p<i>`; M peer pods (10,000 and 100,000; `--smoke`: 1000) on other
//! nodes, pod `j` labelled `peer: p<j mod P>`; and the local pod `server`, whose address is
//! that of a network namespace the benchmark wires to the host by a veth pair (bosun finds
//! the pod's interface by the route to it).
//!
//! - **enforced**: from the first list request to the server's interface being isolated for
//!   ingress with the first and last peer in the peer map (polled every 10 ms); then VmRSS
//!   and VmHWM after 2 s of settling.
//! - **one NetworkPolicy change → maps**: a MODIFIED event for a random policy `i`, its peer
//!   label changed to `p<i+1>`, then the same policy changed back: timed from the instant the
//!   fake handed the event to the watch connection to pod `i`'s address leaving (or coming
//!   back to) the server's peer map, looked up every 1 ms. Median and p99 against the goal
//!   of a NetworkPolicy change enforced in under 10 ms at 1000 policies.
//! - **one Pod label change → maps**: a MODIFIED event for a random peer pod `j`, its label
//!   changed to one no policy names, then back: timed likewise to its address leaving (or
//!   coming back to) the server's peer map; then VmRSS and VmHWM again.
//!
//! The policy part runs twice (`--quick` and full): with 10,000 and with 100,000 peer pods
//! (`--smoke`: once, 1000).
//!
//! And both at once (`goal`), the scale goal's cluster: the fake serves the Services part's
//! 30,000 Services of 4 endpoints together with the policy part's 1,000 NetworkPolicies and
//! 100,000 pods (`--quick`: 10,000 Services and 10,000 pods; `--smoke`: 1000 and 1000 with
//! 100 policies). Timed from the first list request to all frontends in the service map and
//! the server isolated with its peers; VmRSS (its anonymous and file-backed parts) and VmHWM
//! 2 s after that, and again in the steady state, once the daemon's second memory-release tick
//! (`TRIM_PERIOD` after the start) has paged out the code only the start-up ran (not in `--smoke`).
//!
//! The fake (benches/common/api.rs) generates each list page when asked (pages of kube-rs'
//! default 500), so its own memory does not grow with N; its time to generate them is part of
//! "first list → in the maps", as a real API server's would be, and is printed beside it
//! (measured alone, before `bosun proxy` starts).
//!
//! Run as root: `cargo bench -p bosun --bench proxy -- [--quick | --smoke] [--samples N]
//! [--services N]... [FILTER...]` (or `scripts/bench.sh proxy`). FILTERs: `sync`, `change`,
//! `connect`, `policy`, `goal`; unless the filter is `policy` or `goal` alone, the initial sync
//! and memory are measured, so `sync` alone measures only them (one round). `--samples` is the
//! connects per target; `--quick` measures 1000 and 10000 with fewer samples; `--smoke` 1000 with a few of each, only to show that the
//! benchmark still runs (`scripts/bench.sh smoke`, part of `scripts/test.sh`).
//!
//! Everything it creates is named `bsb-*` (namespaces and links, shared with the services
//! benchmark, so the two cannot run at once) or lives in /sys/fs/bpf/bosun-proxybench; the
//! `bosun proxy` process dies with the benchmark (it is started with a parent-death signal).
//! All of it is removed when the run ends, also on Ctrl-C, and swept away at the start if a
//! killed run left it behind.

#[path = "common/api.rs"]
mod api;
mod common;
#[path = "common/lab.rs"]
mod lab;
#[path = "common/program_clock.rs"]
mod program_clock;
#[path = "common/server_thread.rs"]
mod server_thread;
#[path = "common/service_lab.rs"]
mod service_lab;

use api::{FakeApi, Objects, Written};
use common::{load_average, Mode, Stats};
use lab::{
    catch_interrupts, check_interrupted, hundredths, interrupted, ms, run_command, stolen, verdict,
};
use program_clock::ProgramClock;
use service_lab::{
    foreign_datapaths, labelled, share, vip_targets, Catalog, Lab, Memory, Netns, Row,
    ServiceOptions, Table, Target, Wire, ENDPOINTS_PER_SERVICE, NAMESPACE, SERVICE_PORT,
};

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapError};
use bosun::util::TRIM_PERIOD;
use bosun_ebpf_abi::{
    Backend, PeerKey, ServiceKey, ServiceValue, SlotKey, BACKEND_MAP, DIRECTION_INGRESS,
    ENDPOINT_ISOLATED_INGRESS, PEER_KEY_FIXED_BITS, PEER_MAP, PROTOCOL_TCP, SERVICE_MAP,
    SERVICE_MAX_ENTRIES, SLOT_MAP,
};
use bosun_netdp::policy::{PinnedPolicyMaps, PolicyMaps as _};
use k8s_openapi::api::core::v1::{
    Namespace, Node, Pod, PodSpec, PodStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rand::Rng as _;

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");
const BENCHMARKS: [&str; 5] = ["sync", "change", "connect", "policy", "goal"];
/// The service map's capacity, less room to spare.
const MAX_SERVICES: usize = SERVICE_MAX_ENTRIES as usize - 500;

/// The Node `bosun proxy` runs as; the endpoints are on [`OTHER_NODES`] others.
const NODE_NAME: &str = "proxybench-node";
const OTHER_NODES: usize = 8;
/// The services benchmark's goals: a connect through a ClusterIP at most this much slower than
/// the floor at 30000 Services, and one endpoint change programmed within this (there, compile
/// and apply alone; here the API path's decoding and the proxy's loop come on top).
const GOAL_VIP_RATIO: f64 = 1.05;
const GOAL_ONE_CHANGE: Duration = Duration::from_millis(5);

/// Where `bosun proxy` pins its datapath.
const BPF_DIR: &str = "/sys/fs/bpf/bosun-proxybench";

// ---- timing ------------------------------------------------------------------------------

/// How often the service map is looked at while `bosun proxy` syncs.
const SYNC_POLL: Duration = Duration::from_millis(5);
/// The sync has stalled if the count does not move for this long.
const SYNC_STALL: Duration = Duration::from_secs(120);
/// After the sync, before the memory reading.
const MEMORY_SETTLE: Duration = Duration::from_secs(2);
/// How often a changed frontend's backends are read.
const CHANGE_POLL: Duration = Duration::from_micros(50);
/// A change not in the maps after this is a failure.
const CHANGE_LIMIT: Duration = Duration::from_secs(10);
/// Between two changes, at random within it, so that no change waits on the last one.
const CHANGE_GAP_MS: std::ops::Range<u64> = 20..60;
/// kube-rs' watcher lists in pages of this many objects (client-go's default too).
const WATCHER_PAGE: usize = 500;
/// How long `bosun proxy` may take to open its EndpointSlice watch after the sync.
const WATCH_LIMIT: Duration = Duration::from_secs(10);
/// Between a datapath's removal (or installation) and the next measurement (see
/// `Lab::measure`): the kernel frees a removed datapath's maps in deferred work.
const SWITCH_SETTLE: Duration = Duration::from_millis(250);

fn main() {
    let usage = format!(
        "[--quick | --smoke] [--samples N] [--services N]... [FILTER...]  (benchmarks: {BENCHMARKS:?})"
    );
    let Some(options) = common::bench_args("proxy", &usage, |args| {
        ServiceOptions::parse(args, &BENCHMARKS, MAX_SERVICES)
    }) else {
        return;
    };
    common::exit_on_error("proxy", catch_interrupts("proxy"));
    common::exit_on_error("proxy", run(&options));
}

// ---- options ------------------------------------------------------------------------------

/// What a run of this mode measures.
fn sizes(options: &ServiceOptions) -> Sizes {
    let services = options.service_counts();
    let (connects, warm_up, changes, rounds, program_runs) = match options.args.mode {
        // A few warm-up connects still: they check that every target reaches a backend.
        Mode::Smoke => (1, 10, 5, 1, 200),
        Mode::Quick => (500, 100, 20, 4, 2000),
        Mode::Full => (2000, 200, 50, 10, 5000),
    };
    let policy = match options.args.mode {
        Mode::Smoke => vec![PolicyCluster {
            policies: 100,
            peers: 1000,
        }],
        Mode::Quick | Mode::Full => vec![
            PolicyCluster {
                policies: 1000,
                peers: 10_000,
            },
            PolicyCluster {
                policies: 1000,
                peers: 100_000,
            },
        ],
    };
    let policy_changes = match options.args.mode {
        Mode::Smoke => 2,
        Mode::Quick | Mode::Full => 20,
    };
    let goal = match options.args.mode {
        Mode::Smoke => (policy[0], 1000),
        Mode::Quick => (policy[0], 10_000),
        Mode::Full => (policy[1], 30_000),
    };
    Sizes {
        services,
        connects: options.args.samples.unwrap_or(connects),
        warm_up,
        changes,
        rounds,
        program_runs,
        policy,
        policy_changes,
        goal,
        steady: options.args.mode != Mode::Smoke,
    }
}

struct Sizes {
    services: Vec<usize>,
    /// Measured connects per target.
    connects: usize,
    /// Unmeasured connects per target first (caches; and a check that the target answers).
    warm_up: usize,
    /// EndpointSlice changes measured per N.
    changes: usize,
    /// `bosun proxy` started, synced, measured and removed this many times per N.
    rounds: usize,
    /// Connects per target with the BPF statistics on.
    program_runs: usize,
    /// What the policy part's fake serves, one run each.
    policy: Vec<PolicyCluster>,
    /// NetworkPolicy changes measured, half of them changes back; as many Pod label changes.
    policy_changes: usize,
    /// The goal part's policies and pods, and its number of Services.
    goal: (PolicyCluster, usize),
    /// Whether the goal part waits for the steady state's memory.
    steady: bool,
}

// ---- the run ------------------------------------------------------------------------------

fn run(options: &ServiceOptions) -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the benchmark needs root: it creates network namespaces and bosun attaches BPF programs"
    );
    let sizes = sizes(options);
    println!(
        "bosun proxy through the API path{}: N = {:?} Services of {ENDPOINTS_PER_SERVICE} \
         endpoints, {} rounds, {} connects per target after {} unmeasured, {} EndpointSlice \
         changes",
        options.args.mode.label(),
        sizes.services,
        sizes.rounds,
        sizes.connects,
        sizes.warm_up,
        sizes.changes,
    );
    println!("machine: {}", lab::machine());
    println!(
        "date: {}",
        run_command("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
            .map(|d| d.trim().to_owned())
            .unwrap_or_else(|_| "?".to_owned())
    );
    println!("load average at the start: {}", load_average());

    // One thread for the fake API server: the machine's other CPU is bosun's.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let dir = tempfile::Builder::new()
        .prefix("bosun-proxybench")
        .tempdir()
        .context("creating a temporary directory")?;
    sweep_leftovers()?;
    let lab = if options.selected("connect") {
        Some(Lab::create()?)
    } else {
        None
    };
    let mut reports = Vec::new();
    let mut outcome = Ok(());
    let services = BENCHMARKS[..3].iter().any(|b| options.selected(b));
    for &n in sizes.services.iter().filter(|_| services) {
        let mut report = Report::new(n);
        outcome = measure_size(
            &Catalog { n },
            options,
            &sizes,
            (&runtime, dir.path()),
            lab.as_ref(),
            &mut report,
        );
        report.print();
        reports.push(report);
        if outcome.is_err() {
            break;
        }
    }
    drop(lab);
    print_growth(&reports);
    if options.selected("policy") {
        for cluster in &sizes.policy {
            if outcome.is_err() {
                break;
            }
            outcome = measure_policy(*cluster, &sizes, (&runtime, dir.path()));
        }
    }
    if options.selected("goal") && outcome.is_ok() {
        outcome = measure_goal(&sizes, (&runtime, dir.path()));
    }
    println!("\nload average at the end: {}", load_average());
    service_lab::print_leftovers(BPF_DIR);
    outcome
}

/// Removes what a killed run left, `bosun proxy`'s datapath included.
fn sweep_leftovers() -> Result<()> {
    service_lab::sweep_leftovers(remove_datapath)
}

/// `bosun proxy --cleanup`: removes what `bosun proxy` installed in [`BPF_DIR`], if anything.
fn remove_datapath() -> Result<()> {
    run_command(BOSUN, &["proxy", "--cleanup", "--bpf-dir", BPF_DIR])
        .map(|_| ())
        .with_context(|| format!("removing bosun proxy's datapath in {BPF_DIR}"))
}

/// Everything selected, for one N: rounds of floor, then `bosun proxy` started, synced and
/// measured, then removed; the first round also measures memory and changes, the last the
/// programs' own cost.
fn measure_size(
    catalog: &Catalog,
    options: &ServiceOptions,
    sizes: &Sizes,
    (runtime, dir): (&tokio::runtime::Runtime, &Path),
    lab: Option<&Lab>,
    report: &mut Report,
) -> Result<()> {
    report.foreign = foreign_datapaths(BPF_DIR);
    let api = runtime.block_on(FakeApi::start(Cluster {
        catalog: Catalog { n: catalog.n },
    }))?;
    let kubeconfig = dir.join(format!("kubeconfig-{}", catalog.n));
    api.write_kubeconfig(&kubeconfig)?;
    report.fake_list = Some(api.list_cost(WATCHER_PAGE)?);
    let changes = options.selected("change");
    let rounds = if lab.is_some() { sizes.rounds } else { 1 };

    let floor = lab.map(|lab| Target {
        label: "floor: no datapath, → backend".into(),
        client: &lab.plain,
        address: catalog.backend(),
    });
    let targets = lab.map(|lab| {
        let mut targets = vip_targets("bosun proxy", &lab.plain, catalog);
        targets.push(Target {
            label: format!("bosun proxy: → no Service (backend), {} held", catalog.n),
            client: &lab.plain,
            address: catalog.backend(),
        });
        targets
    });
    let mut floor_samples = Vec::new();
    let mut samples = vec![Vec::new(); targets.as_ref().map_or(0, Vec::len)];
    for round in 0..rounds {
        if let (Some(lab), Some(floor)) = (lab, &floor) {
            let count = share(sizes.connects, rounds + 1, round);
            let taken = lab.measure(
                std::slice::from_ref(floor),
                count,
                sizes.warm_up,
                SWITCH_SETTLE,
            )?;
            floor_samples.extend(taken.into_iter().flatten());
        }
        api.reset();
        let log = dir.join(format!("bosun-proxy-{}-{round}.log", catalog.n));
        let mut proxy = ProxyProcess::start(&kubeconfig, &log)?;
        let measured = (|| -> Result<()> {
            let sync = proxy.wait_synced(&api, catalog)?;
            report.syncs.push(sync);
            if round == 0 {
                proxy.idle_for(MEMORY_SETTLE)?;
                report.memory = Some(Memory::of(proxy.pid())?);
                if changes {
                    report.changes = measure_changes(&api, &mut proxy, catalog, sizes.changes)?;
                }
            }
            if let (Some(lab), Some(targets)) = (lab, &targets) {
                let count = share(sizes.connects, rounds, round);
                let taken = lab.measure(targets, count, sizes.warm_up, SWITCH_SETTLE)?;
                for (all, taken) in samples.iter_mut().zip(taken) {
                    all.extend(taken);
                }
                if round + 1 == rounds {
                    report.program = Some(program_cost(lab, catalog, sizes)?);
                }
            }
            proxy.alive()
        })();
        report.requests = Some((api.requests(), api.refused()));
        if measured.is_err() && !interrupted() {
            eprintln!("--- end of bosun proxy's log ---\n{}", proxy.log_tail(20));
        }
        let stopped = proxy.stop();
        measured?;
        stopped?;
        check_interrupted()?;
    }
    if let (Some(lab), Some(floor), Some(targets)) = (lab, &floor, &targets) {
        let count = share(sizes.connects, rounds + 1, rounds);
        let taken = lab.measure(
            std::slice::from_ref(floor),
            count,
            sizes.warm_up,
            SWITCH_SETTLE,
        )?;
        floor_samples.extend(taken.into_iter().flatten());
        report.floor = Some(labelled(floor, floor_samples));
        report.connects = targets
            .iter()
            .zip(samples)
            .map(|(t, s)| labelled(t, s))
            .collect();
    }
    Ok(())
}

// ---- the objects the fake API server serves -------------------------------------------------

/// The catalog's Services and EndpointSlices as the API server would hold them.
struct Cluster {
    catalog: Catalog,
}

impl Objects for Cluster {
    fn count(&self) -> usize {
        self.catalog.n
    }

    fn service(&self, i: usize) -> Service {
        let catalog = &self.catalog;
        Service {
            metadata: ObjectMeta {
                name: Some(catalog.name(i)),
                namespace: Some(NAMESPACE.to_owned()),
                uid: Some(format!("service-{i}")),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".to_owned()),
                cluster_ip: Some(catalog.vip(i).to_string()),
                cluster_ips: Some(vec![catalog.vip(i).to_string()]),
                ports: Some(vec![ServicePort {
                    port: i32::from(SERVICE_PORT),
                    protocol: Some("TCP".to_owned()),
                    target_port: Some(IntOrString::Int(i32::from(catalog.endpoint(i, 0).port()))),
                    ..Default::default()
                }]),
                session_affinity: Some("None".to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn slice(&self, i: usize) -> EndpointSlice {
        let catalog = &self.catalog;
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{}-1", catalog.name(i))),
                namespace: Some(NAMESPACE.to_owned()),
                uid: Some(format!("slice-{i}")),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/service-name".to_owned(),
                    catalog.name(i),
                )])),
                ..Default::default()
            },
            address_type: "IPv4".to_owned(),
            endpoints: (0..ENDPOINTS_PER_SERVICE)
                .map(|k| Endpoint {
                    addresses: vec![catalog.endpoint(i, k).ip().to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    node_name: Some(format!("node-{}", (i + k) % OTHER_NODES)),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                port: Some(i32::from(catalog.endpoint(i, 0).port())),
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            }]),
        }
    }

    fn node(&self) -> Node {
        this_node()
    }
}

/// The Node `bosun proxy` runs as.
fn this_node() -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(NODE_NAME.to_owned()),
            uid: Some("node".to_owned()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/hostname".to_owned(),
                NODE_NAME.to_owned(),
            )])),
            ..Default::default()
        },
        ..Default::default()
    }
}

// ---- bosun proxy --------------------------------------------------------------------------

/// A running `bosun proxy`; killed and its datapath removed by [`ProxyProcess::stop`], or when
/// dropped on the way out of a failure.
struct ProxyProcess {
    child: Child,
    started: Instant,
    log: PathBuf,
    stopped: bool,
}

impl ProxyProcess {
    fn start(kubeconfig: &Path, log: &Path) -> Result<ProxyProcess> {
        let healthz = format!("127.0.0.1:{}", free_port()?);
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let output = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        // Its own, not that of a `bosun proxy` this machine may run.
        let state_dir = log.with_extension("state");
        let errors = output.try_clone().context("duplicating the log's handle")?;
        let mut command = Command::new(BOSUN);
        command
            .arg("proxy")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--hostname-override", NODE_NAME])
            .args(["--healthz-bind-address", &healthz])
            .args(["--metrics-bind-address", &metrics])
            .args(["--bpf-dir", BPF_DIR])
            // The machine's own uplink is not the benchmark's to serve node ports on.
            .arg("--external-interfaces=none")
            .arg("--state-dir")
            .arg(&state_dir)
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors)
            // Out of the terminal's process group: Ctrl-C reaches the benchmark, which stops
            // it in order.
            .process_group(0);
        // SAFETY: the closure runs in the child between fork and exec and makes one
        // async-signal-safe system call (prctl), allocating nothing.
        unsafe {
            command.pre_exec(|| {
                // Dies with the benchmark's thread that started it (the main thread, which
                // lives for the run), even if the benchmark is killed outright.
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let started = Instant::now();
        let child = command.spawn().context("starting bosun proxy")?;
        Ok(ProxyProcess {
            child,
            started,
            log: log.to_owned(),
            stopped: false,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("waiting for bosun proxy")? {
            bail!("bosun proxy exited: {status}");
        }
        Ok(())
    }

    /// Waits `duration`, checking that the process stays up and the run is not interrupted.
    fn idle_for(&mut self, duration: Duration) -> Result<()> {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            self.alive()?;
            check_interrupted()?;
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Waits until the maps hold all of the catalog's frontends.
    fn wait_synced(&mut self, api: &FakeApi, catalog: &Catalog) -> Result<Sync> {
        let mut maps = None;
        let mut last = (0, Instant::now());
        let (first, final_) = (catalog.frontend(0), catalog.frontend(catalog.n - 1));
        let done = loop {
            self.alive()?;
            check_interrupted()?;
            if maps.is_none() {
                maps = DatapathMaps::open(Path::new(BPF_DIR))?;
            }
            if let Some(maps) = &maps {
                // Counting all the keys takes N system calls: only once both ends are in.
                if maps.has(&first)? && maps.has(&final_)? {
                    let count = maps.count()?;
                    if count >= catalog.n {
                        break Instant::now();
                    }
                    if count != last.0 {
                        last = (count, Instant::now());
                    }
                }
            }
            ensure!(
                last.1.elapsed() < SYNC_STALL,
                "bosun proxy's maps have held {} of {} Services for {SYNC_STALL:?}",
                last.0,
                catalog.n
            );
            std::thread::sleep(SYNC_POLL);
        };
        let first_list = api
            .first_list()
            .context("the maps are full, but bosun proxy never listed")?;
        Ok(Sync {
            from_first_list: done.saturating_duration_since(first_list),
            from_start: done - self.started,
            start_to_list: first_list.saturating_duration_since(self.started),
        })
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Kills the process and removes its datapath.
    fn stop(mut self) -> Result<()> {
        self.stopped = true;
        self.kill_and_remove()
    }

    fn kill_and_remove(&mut self) -> Result<()> {
        // Our own child, by its handle; an exited one has nothing to kill.
        let _ = self.child.kill();
        self.child
            .wait()
            .context("waiting for bosun proxy to exit")?;
        remove_datapath()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if !self.stopped {
            if let Err(e) = self.kill_and_remove() {
                eprintln!("proxy bench: {e:#}");
            }
        }
    }
}

/// A port nothing listens on now, for `bosun proxy`'s health and metrics servers.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr().context("finding a free port")?.port())
}

/// Process start and first list → all frontends in the maps.
#[derive(Clone, Copy)]
struct Sync {
    from_first_list: Duration,
    from_start: Duration,
    start_to_list: Duration,
}

// ---- the maps -----------------------------------------------------------------------------

impl Catalog {
    /// Service `i`'s frontend as the service map's key.
    fn frontend(&self, i: usize) -> ServiceKey {
        ServiceKey {
            address: self.vip(i).octets(),
            port: SERVICE_PORT.to_be_bytes(),
            protocol: PROTOCOL_TCP,
            _pad: 0,
        }
    }
}

/// The service, slot and backend maps `bosun proxy` pinned, read an entry at a time: reading
/// them whole (netdp's `snapshot`) at 30,000 Services takes tens of milliseconds, which a
/// timing must not wait on.
struct DatapathMaps {
    services: BpfHashMap<MapData, ServiceKey, ServiceValue>,
    slots: BpfHashMap<MapData, SlotKey, u32>,
    backends: BpfHashMap<MapData, u32, Backend>,
}

impl DatapathMaps {
    /// `None` while `bosun proxy` has not installed its datapath yet.
    fn open(dir: &Path) -> Result<Option<DatapathMaps>> {
        // Pinned (renamed into place) once every map is.
        if !dir.join("link_connect4").exists() {
            return Ok(None);
        }
        Ok(Some(DatapathMaps {
            services: open_pinned(&dir.join(SERVICE_MAP))?,
            slots: open_pinned(&dir.join(SLOT_MAP))?,
            backends: open_pinned(&dir.join(BACKEND_MAP))?,
        }))
    }

    fn has(&self, frontend: &ServiceKey) -> Result<bool> {
        Ok(self.service(frontend)?.is_some())
    }

    fn service(&self, frontend: &ServiceKey) -> Result<Option<ServiceValue>> {
        match self.services.get(frontend, 0) {
            Ok(value) => Ok(Some(value)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(e).context("looking up a frontend"),
        }
    }

    fn count(&self) -> Result<usize> {
        let mut count = 0;
        for key in self.services.keys() {
            key.context("listing the service map's keys")?;
            count += 1;
        }
        Ok(count)
    }

    /// The frontend's backends, as the program would pick them (slots `0..count`).
    fn backends_of(&self, frontend: &ServiceKey) -> Result<Vec<SocketAddrV4>> {
        let Some(service) = self.service(frontend)? else {
            return Ok(Vec::new());
        };
        let mut found = Vec::with_capacity(service.count as usize);
        for slot in 0..service.count {
            let key = SlotKey {
                service: service.id,
                slot,
            };
            // Between the writes of one change an entry may be missing for a moment.
            let id = match self.slots.get(&key, 0) {
                Ok(id) => id,
                Err(e) if not_found(&e) => continue,
                Err(e) => return Err(e).context("looking up a slot"),
            };
            match self.backends.get(&id, 0) {
                Ok(backend) => found.push(SocketAddrV4::new(
                    Ipv4Addr::from(backend.address),
                    u16::from_be_bytes(backend.port),
                )),
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(e).context("looking up a backend"),
            }
        }
        Ok(found)
    }
}

fn open_pinned<M: TryFrom<Map, Error = MapError>>(path: &Path) -> Result<M> {
    let data =
        MapData::from_pin(path).with_context(|| format!("opening the map {}", path.display()))?;
    let map = Map::from_map_data(data).with_context(|| format!("reading {}", path.display()))?;
    M::try_from(map).with_context(|| format!("{} is not this build's", path.display()))
}

fn not_found(error: &aya::maps::MapError) -> bool {
    matches!(error, aya::maps::MapError::KeyNotFound)
}

// ---- one EndpointSlice change -------------------------------------------------------------

/// `count` times: one endpoint of a random Service's slice replaced by a fresh address, timed
/// from the event reaching the watch connection to the address being a backend of that
/// Service's frontend in the maps. In ms.
fn measure_changes(
    api: &FakeApi,
    proxy: &mut ProxyProcess,
    catalog: &Catalog,
    count: usize,
) -> Result<Vec<f64>> {
    let maps = DatapathMaps::open(Path::new(BPF_DIR))?.context("the maps are gone")?;
    let watching = Instant::now();
    while api.slice_watches() == 0 {
        proxy.alive()?;
        ensure!(
            watching.elapsed() < WATCH_LIMIT,
            "bosun proxy has not watched EndpointSlices within {WATCH_LIMIT:?} of its sync"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // The connect targets keep their endpoints.
    let spared = [
        catalog.first(),
        catalog.middle(),
        catalog.last(),
        catalog.n / 4,
    ];
    let mut rng = rand::rng();
    let mut samples = Vec::with_capacity(count);
    for c in 0..count {
        let i = loop {
            let i = rng.random_range(0..catalog.n);
            if !spared.contains(&i) {
                break i;
            }
        };
        let mut slice = api.slice(i)?;
        let k = c % ENDPOINTS_PER_SERVICE;
        let fresh = SocketAddrV4::new(catalog.spare(c), catalog.endpoint(i, 0).port());
        let endpoint = slice
            .endpoints
            .get_mut(k)
            .with_context(|| format!("EndpointSlice {i} has no endpoint {k}"))?;
        endpoint.addresses = vec![fresh.ip().to_string()];
        let frontend = catalog.frontend(i);
        let written = api.modify_slice(i, slice)?;
        let deadline = Instant::now() + CHANGE_LIMIT;
        let seen = loop {
            if maps.backends_of(&frontend)?.contains(&fresh) {
                break Instant::now();
            }
            ensure!(
                Instant::now() < deadline,
                "{fresh} was not a backend of {} {CHANGE_LIMIT:?} after the change",
                catalog.vip(i)
            );
            proxy.alive()?;
            std::thread::sleep(CHANGE_POLL);
        };
        // Set before bosun could read the event, so long before now.
        let sent = *written
            .get()
            .context("the change is in the maps, but no watch took the event")?;
        samples.push(ms(seen.saturating_duration_since(sent)));
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(rng.random_range(CHANGE_GAP_MS)));
    }
    Ok(samples)
}

// ---- the connect program's own cost ----------------------------------------------------------

/// `connect4`'s run time per run, with the kernel's statistics on: to an address that is no
/// Service, then to the first Service's ClusterIP.
struct ProgramCost {
    miss_ns: f64,
    hit_ns: f64,
    runs: u64,
}

fn program_cost(lab: &Lab, catalog: &Catalog, sizes: &Sizes) -> Result<ProgramCost> {
    let clock = ProgramClock::start(&[Path::new(BPF_DIR).join("link_connect4")])?;
    let per_run = |address: SocketAddrV4| -> Result<(f64, u64)> {
        lab.plain.connect(address, sizes.warm_up, None)?;
        let (time, runs) = clock.read()?;
        lab.plain.connect(address, sizes.program_runs, None)?;
        let (time_after, runs_after) = clock.read()?;
        let runs = runs_after - runs;
        ensure!(runs > 0, "connect4 did not run");
        Ok(((time_after - time).as_nanos() as f64 / runs as f64, runs))
    };
    let (miss_ns, miss_runs) = per_run(catalog.backend())?;
    let (hit_ns, hit_runs) = per_run(SocketAddrV4::new(
        catalog.vip(catalog.first()),
        SERVICE_PORT,
    ))?;
    Ok(ProgramCost {
        miss_ns,
        hit_ns,
        runs: miss_runs + hit_runs,
    })
}

// ---- reporting ----------------------------------------------------------------------------

/// Everything measured for one N; printed as one block.
struct Report {
    n: usize,
    load: String,
    steal_at_start: Option<Duration>,
    foreign: Vec<String>,
    syncs: Vec<Sync>,
    /// The fake's own time to generate every list page.
    fake_list: Option<Duration>,
    memory: Option<Memory>,
    /// ms each.
    changes: Vec<f64>,
    floor: Option<Row>,
    connects: Vec<Row>,
    program: Option<ProgramCost>,
    requests: Option<(api::Requests, Vec<String>)>,
}

impl Report {
    fn new(n: usize) -> Report {
        Report {
            n,
            load: load_average(),
            steal_at_start: stolen(),
            foreign: Vec::new(),
            syncs: Vec::new(),
            fake_list: None,
            memory: None,
            changes: Vec::new(),
            floor: None,
            connects: Vec::new(),
            program: None,
            requests: None,
        }
    }

    fn print(&self) {
        let n = self.n;
        println!(
            "\n=== {n} Services and {n} EndpointSlices of {ENDPOINTS_PER_SERVICE} endpoints, \
             through the API ===\nload average {} at the start, {} at the end",
            self.load,
            load_average()
        );
        if let (Some(start), Some(end)) = (self.steal_at_start, stolen()) {
            println!(
                "CPU time the hypervisor took from this machine meanwhile (steal): {} ms",
                end.saturating_sub(start).as_millis()
            );
        }
        for path in &self.foreign {
            println!(
                "NOTE: another bosun datapath is attached ({path}): its programs ran on every \
                 connect measured here, the floor's included"
            );
        }
        self.print_sync();
        self.print_connect();
        self.print_requests();
        self.print_goals();
    }

    fn print_goals(&self) {
        let ratios = self.ratios();
        let change = Stats::of(&self.changes);
        if ratios.is_none() && change.is_none() {
            return;
        }
        println!("\ngoals (the services benchmark's)");
        if let Some((worst, no_service)) = ratios {
            println!(
                "  bosun proxy → ClusterIP, worst of first/middle/last: {worst:.2}× the floor \
                 median; goal ≤ {GOAL_VIP_RATIO:.2}× at 30000 Services → {}",
                verdict(hundredths(worst) <= hundredths(GOAL_VIP_RATIO))
            );
            println!("  bosun proxy → no Service: {no_service:.2}× the floor; goal 1.00×");
        }
        if let Some(change) = change {
            println!(
                "  one EndpointSlice change, event → maps: {:.2} ms median, {:.2} ms p99; \
                 goal < {} ms (for compile + apply alone) → {}",
                change.median,
                change.p99,
                GOAL_ONE_CHANGE.as_millis(),
                verdict(change.p99 < ms(GOAL_ONE_CHANGE))
            );
        }
    }

    fn print_sync(&self) {
        if self.syncs.is_empty() {
            return;
        }
        let mut table = Table::new("initial sync (one sample per round)", "ms");
        let column = |field: fn(&Sync) -> Duration| -> Vec<f64> {
            self.syncs.iter().map(|s| ms(field(s))).collect()
        };
        for (label, samples) in [
            (
                "first list request → all N frontends in the maps",
                column(|s| s.from_first_list),
            ),
            (
                "process start → all N frontends in the maps",
                column(|s| s.from_start),
            ),
            (
                "process start → first list request",
                column(|s| s.start_to_list),
            ),
        ] {
            table.row(row(label, samples), None);
        }
        if !self.changes.is_empty() {
            table.row(
                row(
                    "one EndpointSlice change: event written → in the maps",
                    self.changes.clone(),
                ),
                None,
            );
        }
        table.print();
        println!(
            "  (the service map polled every {} ms; a change's frontend every {} µs)",
            SYNC_POLL.as_millis(),
            CHANGE_POLL.as_micros()
        );
        if let Some(fake) = self.fake_list {
            println!(
                "  (of the sync, the fake API server's generating all {} pages of {WATCHER_PAGE} \
                 takes {:.0} ms, measured alone)",
                2 * self.n.div_ceil(WATCHER_PAGE),
                ms(fake)
            );
        }
        if let Some(memory) = &self.memory {
            println!(
                "\nmemory of bosun proxy after the sync and {} s: VmRSS {:.1} MiB, VmHWM {:.1} \
                 MiB",
                MEMORY_SETTLE.as_secs(),
                mib(memory.rss),
                mib(memory.peak)
            );
        }
    }

    fn print_connect(&self) {
        let Some(floor) = &self.floor else { return };
        let mut table = Table::new("connect + close (SO_LINGER 0)", "µs");
        let base = table.row(floor.clone(), None);
        for row in &self.connects {
            table.row(row.clone(), Some(base));
        }
        table.print();
        if let Some(program) = &self.program {
            println!(
                "\nconnect4's own run time (kernel BPF statistics, {} runs):\n  \
                 → no Service (one service-map lookup, a miss): {:.0} ns/run\n  \
                 → ClusterIP (service, slot and backend lookups, reverse-NAT insert): {:.0} \
                 ns/run",
                program.runs, program.miss_ns, program.hit_ns
            );
        }
    }

    fn print_requests(&self) {
        let Some((requests, refused)) = &self.requests else {
            return;
        };
        println!(
            "\nAPI requests the fake answered over {} starts of bosun proxy: {} list pages, {} \
             watches, {} other reads, {} Events posted, {} refused",
            self.syncs.len(),
            requests.list_pages,
            requests.watches,
            requests.other_reads,
            requests.events_posted,
            requests.refused
        );
        for line in refused {
            println!("  refused: {line}");
        }
    }

    /// The worst of the ClusterIP rows and the no-Service row, as ratios of medians to the
    /// floor.
    fn ratios(&self) -> Option<(f64, f64)> {
        let floor = Stats::of(&self.floor.as_ref()?.samples)?.median;
        let (no_service, vips) = self.connects.split_last()?;
        let ratio = |row: &Row| Some(Stats::of(&row.samples)?.median / floor);
        let worst = vips.iter().filter_map(ratio).fold(0.0, f64::max);
        Some((worst, ratio(no_service)?))
    }
}

fn row(label: &str, samples: Vec<f64>) -> Row {
    Row {
        label: label.to_owned(),
        samples,
        note: String::new(),
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// How each figure grows with N: one column per N and the largest N's over the smallest's.
fn print_growth(reports: &[Report]) {
    if reports.len() < 2 {
        return;
    }
    type Figure = (&'static str, fn(&Report) -> Option<f64>);
    let figures: [Figure; 10] = [
        ("initial sync from first list, median (ms)", |r| {
            median(r.syncs.iter().map(|s| ms(s.from_first_list)))
        }),
        ("initial sync from process start, median (ms)", |r| {
            median(r.syncs.iter().map(|s| ms(s.from_start)))
        }),
        ("VmRSS after sync (MiB)", |r| r.memory.map(|m| mib(m.rss))),
        ("VmHWM after sync (MiB)", |r| r.memory.map(|m| mib(m.peak))),
        ("EndpointSlice change → maps, median (ms)", |r| {
            Stats::of(&r.changes).map(|s| s.median)
        }),
        ("EndpointSlice change → maps, p99 (ms)", |r| {
            Stats::of(&r.changes).map(|s| s.p99)
        }),
        ("connect → ClusterIP, worst of 3 / floor", |r| {
            r.ratios().map(|(worst, _)| worst)
        }),
        ("connect → no Service / floor", |r| {
            r.ratios().map(|(_, no_service)| no_service)
        }),
        ("connect4 ns/run, no Service", |r| {
            r.program.as_ref().map(|p| p.miss_ns)
        }),
        ("connect4 ns/run, ClusterIP", |r| {
            r.program.as_ref().map(|p| p.hit_ns)
        }),
    ];
    let (first, last) = (&reports[0], &reports[reports.len() - 1]);
    print!("\ngrowth with N\n  {:<46}", "");
    for report in reports {
        print!(" {:>9}", report.n);
    }
    println!(" {:>11}", format!("{}/{}", short(last.n), short(first.n)));
    for (label, figure) in figures {
        print!("  {label:<46}");
        for report in reports {
            match figure(report) {
                Some(value) => print!(" {value:>9.2}"),
                None => print!(" {:>9}", "-"),
            }
        }
        match (figure(first), figure(last)) {
            (Some(a), Some(b)) if a > 0.0 => println!(" {:>10.2}×", b / a),
            _ => println!(" {:>11}", "-"),
        }
    }
}

fn median(samples: impl Iterator<Item = f64>) -> Option<f64> {
    Stats::of(&samples.collect::<Vec<_>>()).map(|s| s.median)
}

/// 30000 → "30k".
fn short(n: usize) -> String {
    if n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

// ---- NetworkPolicy ------------------------------------------------------------------------

/// The policy part's local pod's namespace, wired to the host; bosun finds its interface by
/// the connected route to its address.
const POLICY_SERVER: Wire = Wire {
    netns: "bsb-polserver",
    host_if: "bsb-h-polserver",
    ns_if: "bsb-polserver",
    third: 20,
};
const POLICY_NAMESPACE: &str = "bench";
const POLICY_PORT: i32 = 8080;
/// Peer pods' addresses are counted up from here: no route leads there, none is needed.
const PEER_NET: Ipv4Addr = Ipv4Addr::new(10, 218, 0, 0);
/// The goal: a NetworkPolicy change enforced within this, at 1000 policies.
const GOAL_POLICY_CHANGE: Duration = Duration::from_millis(10);
/// How often the peer map is looked at while the enforcer syncs, and after a change.
const POLICY_SYNC_POLL: Duration = Duration::from_millis(10);
const POLICY_CHANGE_POLL: Duration = Duration::from_millis(1);
/// The enforcer has failed if the server is not isolated with its peers after this.
const POLICY_SYNC_LIMIT: Duration = Duration::from_secs(120);

/// The policy server's namespace, wired to the host, and the ifindex of its host side.
fn policy_server() -> Result<(Netns, u32)> {
    let server = Netns::create(&POLICY_SERVER)?;
    let ifindex_path = format!("/sys/class/net/{}/ifindex", POLICY_SERVER.host_if);
    let ifindex: u32 = std::fs::read_to_string(&ifindex_path)
        .with_context(|| format!("reading {ifindex_path}"))?
        .trim()
        .parse()
        .with_context(|| format!("parsing {ifindex_path}"))?;
    Ok((server, ifindex))
}

/// P NetworkPolicies selecting the server, policy `i` allowing the peers labelled `p<i>`;
/// M peer pods on other nodes, pod `j` labelled `p<j mod P>`; then the server, on this node.
#[derive(Clone, Copy)]
struct PolicyCluster {
    policies: usize,
    peers: usize,
}

impl PolicyCluster {
    /// NetworkPolicy `i`, allowing ingress from the pods labelled `peer: p<peer>`.
    fn policy_allowing(&self, i: usize, peer: usize) -> NetworkPolicy {
        let labels = |key: &str, value: String| LabelSelector {
            match_labels: Some(BTreeMap::from([(key.to_owned(), value)])),
            ..Default::default()
        };
        NetworkPolicy {
            metadata: ObjectMeta {
                name: Some(format!("allow-p{i}")),
                namespace: Some(POLICY_NAMESPACE.to_owned()),
                uid: Some(format!("policy-{i}")),
                ..Default::default()
            },
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(labels("app", "server".to_owned())),
                policy_types: Some(vec!["Ingress".to_owned()]),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(labels("peer", format!("p{peer}"))),
                        ..Default::default()
                    }]),
                    ports: Some(vec![NetworkPolicyPort {
                        port: Some(IntOrString::Int(POLICY_PORT)),
                        protocol: Some("TCP".to_owned()),
                        ..Default::default()
                    }]),
                }]),
                ..Default::default()
            }),
        }
    }

    fn peer_address(&self, j: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(PEER_NET) + u32::try_from(j).expect("some 100,000 peers"))
    }
}

impl Objects for PolicyCluster {
    fn count(&self) -> usize {
        0
    }

    fn service(&self, _i: usize) -> Service {
        unreachable!("the policy part serves no Services")
    }

    fn slice(&self, _i: usize) -> EndpointSlice {
        unreachable!("the policy part serves no EndpointSlices")
    }

    fn node(&self) -> Node {
        this_node()
    }

    fn policy_count(&self) -> usize {
        self.policies
    }

    fn policy(&self, i: usize) -> NetworkPolicy {
        self.policy_allowing(i, i)
    }

    fn pod_count(&self) -> usize {
        self.peers + 1
    }

    fn pod(&self, j: usize) -> Pod {
        let server = j == self.peers;
        let (name, label, node, ip) = if server {
            (
                "server".to_owned(),
                ("app", "server".to_owned()),
                NODE_NAME.to_owned(),
                POLICY_SERVER.ns_addr(),
            )
        } else {
            (
                format!("peer-{j}"),
                ("peer", format!("p{}", j % self.policies)),
                format!("node-{}", j % OTHER_NODES),
                self.peer_address(j),
            )
        };
        Pod {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(POLICY_NAMESPACE.to_owned()),
                uid: Some(format!("pod-{j}")),
                labels: Some(BTreeMap::from([(label.0.to_owned(), label.1)])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".to_owned()),
                pod_ip: Some(ip.to_string()),
                ..Default::default()
            }),
        }
    }

    fn namespace_count(&self) -> usize {
        1
    }

    fn namespace(&self, _i: usize) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(POLICY_NAMESPACE.to_owned()),
                uid: Some("namespace".to_owned()),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_owned(),
                    POLICY_NAMESPACE.to_owned(),
                )])),
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

/// The server's entries in the pinned peer map, looked up one address at a time as the
/// ingress program does.
struct ServerPeers {
    peers: LpmTrie<MapData, PeerKey, u32>,
    ifindex: u32,
}

impl ServerPeers {
    /// `None` until the enforcer has pinned the map.
    fn open(ifindex: u32) -> Result<Option<ServerPeers>> {
        let path = Path::new(BPF_DIR).join("policy").join(PEER_MAP);
        if !path.exists() {
            return Ok(None);
        }
        Ok(Some(ServerPeers {
            peers: open_pinned(&path)?,
            ifindex,
        }))
    }

    fn allows(&self, peer: Ipv4Addr) -> Result<bool> {
        let key = PeerKey {
            endpoint: self.ifindex.to_be_bytes(),
            direction: DIRECTION_INGRESS,
            address: peer.octets(),
            ..Default::default()
        };
        match self.peers.get(&Key::new(PEER_KEY_FIXED_BITS + 32, key), 0) {
            Ok(_) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(e).context("looking up a peer"),
        }
    }
}

/// What the policy part measured.
struct PolicyReport {
    first_list_to_enforced: Duration,
    start_to_enforced: Duration,
    server_peers: usize,
    memory: Memory,
    /// After the changes.
    after_changes: Memory,
    /// ms each.
    changes: Vec<f64>,
    pod_changes: Vec<f64>,
}

fn measure_policy(
    cluster: PolicyCluster,
    sizes: &Sizes,
    (runtime, dir): (&tokio::runtime::Runtime, &Path),
) -> Result<()> {
    println!(
        "\n=== NetworkPolicy: {} policies, {} peer pods, one local pod ===\nload average {} at \
         the start",
        cluster.policies,
        cluster.peers,
        load_average()
    );
    let (server, ifindex) = policy_server()?;
    let api = runtime.block_on(FakeApi::start(cluster))?;
    let kubeconfig = dir.join("kubeconfig-policy");
    api.write_kubeconfig(&kubeconfig)?;
    let log = dir.join("bosun-proxy-policy.log");
    let mut proxy = ProxyProcess::start(&kubeconfig, &log)?;
    let measured = (|| -> Result<PolicyReport> {
        let enforced = wait_enforced(&mut proxy, &cluster, ifindex)?;
        let first_list = api
            .first_list()
            .context("the policy is enforced, but bosun proxy never listed")?;
        let maps = PinnedPolicyMaps::open(Path::new(BPF_DIR)).context("opening the policy maps")?;
        let server_peers = maps
            .peers()
            .context("reading the peer map")?
            .iter()
            .filter(|(_, key, _)| key.endpoint == ifindex.to_be_bytes())
            .count();
        proxy.idle_for(MEMORY_SETTLE)?;
        let memory = Memory::of(proxy.pid())?;
        let changes = measure_policy_changes(&api, &mut proxy, &cluster, ifindex, sizes)?;
        let pod_changes = measure_pod_changes(&api, &mut proxy, &cluster, ifindex, sizes)?;
        let after_changes = Memory::of(proxy.pid())?;
        proxy.alive()?;
        Ok(PolicyReport {
            first_list_to_enforced: enforced.saturating_duration_since(first_list),
            start_to_enforced: enforced - proxy.started,
            server_peers,
            memory,
            after_changes,
            changes,
            pod_changes,
        })
    })();
    let (requests, refused) = (api.requests(), api.refused());
    if measured.is_err() && !interrupted() {
        eprintln!("--- end of bosun proxy's log ---\n{}", proxy.log_tail(20));
    }
    let stopped = proxy.stop();
    drop(server);
    let report = measured?;
    stopped?;
    let mut table = Table::new("NetworkPolicy", "ms");
    for (label, samples) in [
        (
            "first list request → server isolated with its peers",
            vec![ms(report.first_list_to_enforced)],
        ),
        (
            "process start → server isolated with its peers",
            vec![ms(report.start_to_enforced)],
        ),
        (
            "one NetworkPolicy change: event written → in the peer map",
            report.changes.clone(),
        ),
        (
            "one Pod label change: event written → in the peer map",
            report.pod_changes.clone(),
        ),
    ] {
        table.row(row(label, samples), None);
    }
    table.print();
    println!(
        "  (the server's peer map entries: {}, of {} peer pods; looked up every {} ms after a \
         change)",
        report.server_peers,
        cluster.peers,
        POLICY_CHANGE_POLL.as_millis()
    );
    println!(
        "\nmemory of bosun proxy with {} pods and {} NetworkPolicies, after the sync and {} s: \
         VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        cluster.peers + 1,
        cluster.policies,
        MEMORY_SETTLE.as_secs(),
        mib(report.memory.rss),
        mib(report.memory.peak)
    );
    println!(
        "  after the changes: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        mib(report.after_changes.rss),
        mib(report.after_changes.peak)
    );
    println!(
        "\nAPI requests the fake answered: {} list pages, {} watches, {} other reads, {} Events \
         posted, {} refused",
        requests.list_pages,
        requests.watches,
        requests.other_reads,
        requests.events_posted,
        requests.refused
    );
    for line in refused {
        println!("  refused: {line}");
    }
    if let Some(change) = Stats::of(&report.changes) {
        println!(
            "\ngoal\n  one NetworkPolicy change at {} policies, event → maps: {:.2} ms median, \
             {:.2} ms p99; goal < {} ms at 1000 policies → {}",
            cluster.policies,
            change.median,
            change.p99,
            GOAL_POLICY_CHANGE.as_millis(),
            verdict(change.p99 < ms(GOAL_POLICY_CHANGE))
        );
    }
    if let Some(change) = Stats::of(&report.pod_changes) {
        println!(
            "  one Pod label change at {} pods, event → maps: {:.2} ms median, {:.2} ms p99; \
             goal < {} ms → {}",
            cluster.peers + 1,
            change.median,
            change.p99,
            GOAL_POLICY_CHANGE.as_millis(),
            verdict(change.p99 < ms(GOAL_POLICY_CHANGE))
        );
    }
    Ok(())
}

/// Waits until the server's interface is isolated for ingress with the first and last peer
/// allowed; returns when it saw that.
fn wait_enforced(
    proxy: &mut ProxyProcess,
    cluster: &PolicyCluster,
    ifindex: u32,
) -> Result<Instant> {
    let started = Instant::now();
    let mut peers = None;
    let (first, last) = (
        cluster.peer_address(0),
        cluster.peer_address(cluster.peers - 1),
    );
    loop {
        proxy.alive()?;
        check_interrupted()?;
        if peers.is_none() {
            peers = ServerPeers::open(ifindex)?;
        }
        if let Some(peers) = &peers {
            if peers.allows(first)? && peers.allows(last)? && isolated(ifindex)? {
                return Ok(Instant::now());
            }
        }
        ensure!(
            started.elapsed() < POLICY_SYNC_LIMIT,
            "the server's interface (ifindex {ifindex}) was not isolated with its peers \
             {POLICY_SYNC_LIMIT:?} after bosun proxy started"
        );
        std::thread::sleep(POLICY_SYNC_POLL);
    }
}

/// Whether the endpoint map isolates `ifindex` for ingress.
fn isolated(ifindex: u32) -> Result<bool> {
    let maps = PinnedPolicyMaps::open(Path::new(BPF_DIR)).context("opening the policy maps")?;
    Ok(maps
        .endpoints()
        .context("reading the endpoint map")?
        .iter()
        .any(|(i, e)| *i == ifindex && e.flags & ENDPOINT_ISOLATED_INGRESS != 0))
}

/// `sizes.policy_changes` times, in pairs: a random policy `i` changed to allow `p<i+1>`
/// instead of `p<i>`, then back; timed from the event reaching the watch connection to pod
/// `i`'s address leaving, then coming back to, the server's peer map. In ms.
fn measure_policy_changes(
    api: &FakeApi,
    proxy: &mut ProxyProcess,
    cluster: &PolicyCluster,
    ifindex: u32,
    sizes: &Sizes,
) -> Result<Vec<f64>> {
    let peers = ServerPeers::open(ifindex)?.context("the peer map is gone")?;
    let watching = Instant::now();
    while api.policy_watches() == 0 {
        proxy.alive()?;
        ensure!(
            watching.elapsed() < WATCH_LIMIT,
            "bosun proxy has not watched NetworkPolicies within {WATCH_LIMIT:?} of enforcing"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut rng = rand::rng();
    let mut samples = Vec::with_capacity(sizes.policy_changes);
    let mut i = 0;
    for c in 0..sizes.policy_changes {
        let back = c % 2 == 1;
        if !back {
            i = rng.random_range(0..cluster.policies);
        }
        let allowed = if back { i } else { (i + 1) % cluster.policies };
        let written: Written = api.modify_policy(i, cluster.policy_allowing(i, allowed))?;
        let peer = cluster.peer_address(i);
        let deadline = Instant::now() + CHANGE_LIMIT;
        let seen = loop {
            if peers.allows(peer)? == back {
                break Instant::now();
            }
            ensure!(
                Instant::now() < deadline,
                "{peer} was {} the server's peer map {CHANGE_LIMIT:?} after policy {i} changed",
                if back { "not back in" } else { "still in" }
            );
            proxy.alive()?;
            std::thread::sleep(POLICY_CHANGE_POLL);
        };
        let sent = *written
            .get()
            .context("the change is in the maps, but no watch took the event")?;
        samples.push(ms(seen.saturating_duration_since(sent)));
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(rng.random_range(CHANGE_GAP_MS)));
    }
    Ok(samples)
}

/// `sizes.policy_changes` times, in pairs: a random peer pod `j`'s label changed from
/// `p<j mod P>` to one no policy names, then back; timed from the event reaching the watch
/// connection to its address leaving, then coming back to, the server's peer map. In ms.
fn measure_pod_changes(
    api: &FakeApi,
    proxy: &mut ProxyProcess,
    cluster: &PolicyCluster,
    ifindex: u32,
    sizes: &Sizes,
) -> Result<Vec<f64>> {
    let peers = ServerPeers::open(ifindex)?.context("the peer map is gone")?;
    let mut rng = rand::rng();
    let mut samples = Vec::with_capacity(sizes.policy_changes);
    let mut j = 0;
    for c in 0..sizes.policy_changes {
        let back = c % 2 == 1;
        if !back {
            // Not the first or last peer, which the enforcement check looks at.
            j = rng.random_range(1..cluster.peers - 1);
        }
        let mut pod = api.pod(j)?;
        let label = if back {
            format!("p{}", j % cluster.policies)
        } else {
            "unselected".to_owned()
        };
        pod.metadata.labels = Some(BTreeMap::from([("peer".to_owned(), label)]));
        let written: Written = api.modify_pod(j, pod)?;
        let peer = cluster.peer_address(j);
        let deadline = Instant::now() + CHANGE_LIMIT;
        let seen = loop {
            if peers.allows(peer)? == back {
                break Instant::now();
            }
            ensure!(
                Instant::now() < deadline,
                "{peer} was {} the server's peer map {CHANGE_LIMIT:?} after pod {j}'s labels \
                 changed",
                if back { "not back in" } else { "still in" }
            );
            proxy.alive()?;
            std::thread::sleep(POLICY_CHANGE_POLL);
        };
        let sent = *written
            .get()
            .context("the change is in the maps, but no watch took the event")?;
        samples.push(ms(seen.saturating_duration_since(sent)));
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(rng.random_range(CHANGE_GAP_MS)));
    }
    Ok(samples)
}

// ---- the goal: Services and pods together ---------------------------------------------------

/// The scale goal: `bosun proxy`'s RSS with 30,000 Services of 4 endpoints and 100,000 pods.
const GOAL_RSS_MIB: f64 = 64.0;
/// From the start, until the steady state: past the daemon's second memory-release tick (one
/// period after the start, the first coming at once), which pages out the code only the
/// start-up ran and gives the lists' freed heap back; with 10 s for it to finish.
const STEADY_SETTLE: Duration = TRIM_PERIOD.saturating_add(Duration::from_secs(10));

/// The Services part's Services and slices with the policy part's policies and pods.
struct Whole {
    services: Cluster,
    pods: PolicyCluster,
}

impl Objects for Whole {
    fn count(&self) -> usize {
        self.services.count()
    }

    fn service(&self, i: usize) -> Service {
        self.services.service(i)
    }

    fn slice(&self, i: usize) -> EndpointSlice {
        self.services.slice(i)
    }

    fn node(&self) -> Node {
        this_node()
    }

    fn policy_count(&self) -> usize {
        self.pods.policy_count()
    }

    fn policy(&self, i: usize) -> NetworkPolicy {
        self.pods.policy(i)
    }

    fn pod_count(&self) -> usize {
        self.pods.pod_count()
    }

    fn pod(&self, j: usize) -> Pod {
        self.pods.pod(j)
    }

    fn namespace_count(&self) -> usize {
        self.pods.namespace_count()
    }

    fn namespace(&self, i: usize) -> Namespace {
        self.pods.namespace(i)
    }
}

fn measure_goal(sizes: &Sizes, (runtime, dir): (&tokio::runtime::Runtime, &Path)) -> Result<()> {
    let (cluster, n) = sizes.goal;
    println!(
        "\n=== the goal: {n} Services of {ENDPOINTS_PER_SERVICE} endpoints, {} pods, {} \
         NetworkPolicies ===\nload average {} at the start",
        cluster.peers + 1,
        cluster.policies,
        load_average()
    );
    let (server, ifindex) = policy_server()?;
    let catalog = Catalog { n };
    let api = runtime.block_on(FakeApi::start(Whole {
        services: Cluster {
            catalog: Catalog { n },
        },
        pods: cluster,
    }))?;
    let kubeconfig = dir.join("kubeconfig-goal");
    api.write_kubeconfig(&kubeconfig)?;
    let log = dir.join("bosun-proxy-goal.log");
    let mut proxy = ProxyProcess::start(&kubeconfig, &log)?;
    let measured = (|| -> Result<(Duration, Memory, Option<Memory>)> {
        let synced = proxy.wait_synced(&api, &catalog)?;
        let enforced = wait_enforced(&mut proxy, &cluster, ifindex)?;
        let first_list = api
            .first_list()
            .context("the maps are full, but bosun proxy never listed")?;
        let done = enforced.max(first_list + synced.from_first_list);
        proxy.idle_for(MEMORY_SETTLE)?;
        let after_sync = Memory::of(proxy.pid())?;
        let steady = if sizes.steady {
            proxy.idle_for(STEADY_SETTLE.saturating_sub(proxy.started.elapsed()))?;
            Some(Memory::of(proxy.pid())?)
        } else {
            None
        };
        proxy.alive()?;
        Ok((
            done.saturating_duration_since(first_list),
            after_sync,
            steady,
        ))
    })();
    if measured.is_err() && !interrupted() {
        eprintln!("--- end of bosun proxy's log ---\n{}", proxy.log_tail(20));
    }
    let stopped = proxy.stop();
    drop(server);
    let (synced, after_sync, steady) = measured?;
    stopped?;
    println!(
        "  first list request → all Services in the maps and the server isolated with its \
         peers: {:.1} ms",
        ms(synced)
    );
    let line = |label: &str, m: &Memory| {
        println!(
            "  {label:<36} VmRSS {:>6.1} MiB (anonymous {:.1}, file {:.1}), VmHWM {:.1} MiB",
            mib(m.rss),
            mib(m.anon),
            mib(m.file),
            mib(m.peak)
        );
    };
    line(
        &format!("after the sync and {} s:", MEMORY_SETTLE.as_secs()),
        &after_sync,
    );
    if let Some(steady) = &steady {
        line(
            &format!("steady, {} s after the start:", STEADY_SETTLE.as_secs()),
            steady,
        );
    }
    let last = steady.as_ref().unwrap_or(&after_sync);
    println!(
        "  goal: VmRSS < {GOAL_RSS_MIB} MiB with 30,000 Services and 100,000 pods; here {:.1} \
         MiB ({:.2}× the goal{})",
        mib(last.rss),
        mib(last.rss) / GOAL_RSS_MIB,
        if n < 30_000 {
            ", at a smaller size"
        } else {
            ""
        }
    );
    Ok(())
}
