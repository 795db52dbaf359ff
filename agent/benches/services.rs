//! bosun's Service benchmarks: what a Service costs a connection, how long programming
//! Services takes, and what holding them costs the daemon, against kube-proxy's iptables mode
//! and against the floor of no Service handling at all, all measured in the same run.
//!
//! For each number N of Services (4 endpoints each):
//!
//! - `connect`: the latency of a TCP connect + close (SO_LINGER 0, so no TIME_WAIT) from a
//!   client in a network namespace of its own, routed through the host to a backend namespace
//!   in which one server answers on every endpoint address. Measured are the floor (no rules,
//!   bosun not installed, straight to a backend); kube-proxy's iptables rules for the N
//!   Services in a second client namespace, connecting to the first, middle and last
//!   Service's ClusterIP and straight to a backend, which still walks KUBE-SERVICES; and bosun's
//!   datapath on the cgroup2 root programmed with the same N Services, with the same four
//!   targets from the rule-free namespace. Targets are measured in interleaved blocks, so that
//!   a change in the machine's load hits all of them alike; bosun's programs run on every
//!   connect of the machine once attached, so bosun and the floor take turns in rounds instead.
//! - `programming`: bosun's compile and apply of the N Services into empty maps and of one
//!   endpoint change, next to `iptables-restore` of the same N Services (the closest thing to
//!   kube-proxy's full sync), given 300 s; if it needs longer, the rules the connects are
//!   measured with are loaded in parts.
//! - `memory`: a real `bosun run` on a test node is given one manifest of N Services and N
//!   EndpointSlices: the time from writing it to N Services in the maps, and the daemon's
//!   resident memory then.
//!
//! Run as root: `cargo bench -p bosun --bench services -- [--quick | --smoke] [--samples N]
//! [--services N]... [FILTER...]` (or `scripts/bench.sh services`). A FILTER selects the
//! benchmarks whose name contains it. `--smoke` measures 1000 Services with a few connects and
//! one change, only to show that the benchmarks still run (`scripts/bench.sh smoke`, part of
//! `scripts/test.sh`).
//!
//! Everything the benchmark creates is named `bsb-*` (namespaces, links) or lives in
//! /sys/fs/bpf/bosun-bench, and it uses addresses nothing else on the machine does (endpoints
//! in 10.219.128.0/17, ClusterIPs from 10.220.0.1 on). It is removed when the run ends, also
//! on Ctrl-C, and swept away at the start if a killed run left it behind.

mod common;
#[path = "common/kube_proxy.rs"]
mod kube_proxy;
#[path = "common/lab.rs"]
mod lab;
#[path = "common/server_thread.rs"]
mod server_thread;
#[path = "common/service_lab.rs"]
mod service_lab;

use common::{load_average, Mode, Stats};
use kube_proxy::{
    iptables_restore, restore_in_parts, KubeProxyRules, Load, PortInfo, RESTORE_LIMIT,
};
use lab::{
    catch_interrupts, check_interrupted, hundredths, interrupted, ms, run_command, stolen, verdict,
};
use service_lab::{
    foreign_datapaths, labelled, share, vip_targets, Catalog, Client, Lab, Memory, Netns, Row,
    ServiceOptions, Table, Target, Wire, ENDPOINTS_PER_SERVICE, NAMESPACE, SERVICE_PORT,
};

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bosun_netdp::service::{self as datapath, DesiredService, PinnedMaps, Reconciler, ServiceMaps};
use bosun_tests::daemon::Daemon;
use bosun_tests::node::TestNode;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");
const NODE_NAME: &str = "node1";
const BENCHMARKS: [&str; 3] = ["connect", "programming", "memory"];
/// What the datapath's service map holds (`SERVICE_MAX_ENTRIES`), less room for the spare
/// endpoints of the change measurement.
const MAX_SERVICES: usize = 65_000;

// ---- the goals, and what upstream reports for kube-proxy ----------------------------------

const GOAL_VIP_RATIO: f64 = 1.05;
const GOAL_FULL_PROGRAMMING: Duration = Duration::from_secs(1);
const GOAL_ONE_CHANGE: Duration = Duration::from_millis(5);
const KUBE_PROXY_REFERENCE: &str = "\
reference, upstream kube-proxy 1.28 in iptables mode (published figures, not measured here):
  full sync: 1.4 s at 1000 Services, 37 s at 5000, 166 s at 10000
  one endpoint change: 75 ms at 1000 Services, 1.5 s at 10000
  at 30000 Services every new connection costs 6.7× a rule-free one
  RSS: 195 MiB at 10000 Services";

// ---- names and addresses ------------------------------------------------------------------

/// Where the benchmark's own datapath pins its maps and links.
const BPF_DIR: &str = "/sys/fs/bpf/bosun-bench";
/// kube-proxy's `--cluster-cidr`: the pods, here the endpoints. Traffic to a ClusterIP from
/// outside it is masqueraded, as a host process's is on a kubeadm node.
const CLUSTER_CIDR: &str = "10.219.128.0/17";

/// The client with kube-proxy's rules.
const IPTABLES: Wire = Wire {
    netns: "bsb-iptables",
    host_if: "bsb-h-iptables",
    ns_if: "bsb-iptables",
    third: 20,
};

// ---- timing and sizes ---------------------------------------------------------------------

/// Services per `iptables-restore` when the whole input took too long: about a second each.
const RESTORE_PART: usize = 1000;
/// How often the daemon's maps are counted while it programs them.
const DAEMON_POLL: Duration = Duration::from_millis(50);
/// Between a datapath's removal (or installation) and the next measurement (see
/// `Lab::measure`): the kernel frees a removed datapath's maps in deferred work.
const SWITCH_SETTLE: Duration = Duration::from_millis(250);
/// After removing the namespace of kube-proxy's rules: the kernel destroys a namespace and
/// frees its rules in deferred work, for hundreds of thousands of rules not at once.
const NETNS_SETTLE: Duration = Duration::from_secs(2);
/// The daemon's programming has stalled if the count does not move for this long.
const DAEMON_STALL: Duration = Duration::from_secs(120);
/// Between the datapath appearing and the idle memory reading.
const DAEMON_SETTLE: Duration = Duration::from_secs(1);

fn main() {
    let usage = format!(
        "[--quick | --smoke] [--samples N] [--services N]... [FILTER...]  (benchmarks: {BENCHMARKS:?})"
    );
    let Some(options) = common::bench_args("services", &usage, |args| {
        ServiceOptions::parse(args, &BENCHMARKS, MAX_SERVICES)
    }) else {
        return;
    };
    common::exit_on_error("services", catch_interrupts("services"));
    common::exit_on_error("services", run(&options));
}

// ---- options ------------------------------------------------------------------------------

/// What a run of this mode measures.
fn sizes(options: &ServiceOptions) -> Sizes {
    let services = options.service_counts();
    let (connects, warm_up, changes, rounds) = match options.args.mode {
        // A few warm-up connects still, because they are what checks that every target
        // reaches the backends.
        Mode::Smoke => (1, 10, 1, 1),
        Mode::Quick => (500, 100, 10, 4),
        Mode::Full => (2000, 200, 30, 10),
    };
    Sizes {
        services,
        connects: options.args.samples.unwrap_or(connects),
        warm_up,
        changes,
        rounds,
    }
}

struct Sizes {
    services: Vec<usize>,
    /// Measured connects per target.
    connects: usize,
    /// Unmeasured connects per target first: they fill the neighbour, route and conntrack
    /// caches and check that the target reaches the backends.
    warm_up: usize,
    /// Endpoint changes measured per N.
    changes: usize,
    /// How many times bosun is installed and measured between measurements of the floor.
    rounds: usize,
}

// ---- the run ------------------------------------------------------------------------------

fn run(options: &ServiceOptions) -> Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "the benchmarks need root: they create network namespaces, load iptables rules and \
         attach BPF programs"
    );
    kube_proxy::check_chain_names()?;
    let sizes = sizes(options);
    print_machine(options, &sizes);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let datapath_parts = options.selected("connect") || options.selected("programming");
    let lab = if datapath_parts {
        sweep_leftovers()?;
        Some(Lab::create()?)
    } else {
        None
    };
    let mut node = None;
    let mut outcome = Ok(());
    for &n in &sizes.services {
        let mut report = Report::new(n);
        outcome = measure_size(
            &Catalog { n },
            options,
            &sizes,
            lab.as_ref(),
            (&runtime, &mut node),
            &mut report,
        );
        report.print();
        if outcome.is_err() {
            break;
        }
    }
    drop(lab);
    let node_gone = match node {
        Some(node) => runtime.block_on(node.shutdown()),
        None => Ok(()),
    };
    println!("\n{KUBE_PROXY_REFERENCE}");
    println!("\nload average at the end: {}", load_average());
    service_lab::print_leftovers(BPF_DIR);
    outcome.and(node_gone)
}

/// Everything selected, for one N. The test node for the daemon is started the first time
/// it is needed.
fn measure_size(
    catalog: &Catalog,
    options: &ServiceOptions,
    sizes: &Sizes,
    lab: Option<&Lab>,
    (runtime, node): (&tokio::runtime::Runtime, &mut Option<TestNode>),
    report: &mut Report,
) -> Result<()> {
    if let Some(lab) = lab {
        lab.run(catalog, options, sizes, report)?;
    }
    if options.selected("memory") {
        let node = match node {
            Some(node) => node,
            None => node.insert(runtime.block_on(TestNode::start("svc-bench"))?),
        };
        report.daemon = Some(runtime.block_on(through_daemon(node, catalog))?);
    }
    Ok(())
}

fn print_machine(options: &ServiceOptions, sizes: &Sizes) {
    let iptables = run_command("iptables", &["-V"]).unwrap_or_else(|_| "?".to_owned());
    println!(
        "bosun Service benchmarks{}: N = {:?} Services of {ENDPOINTS_PER_SERVICE} endpoints, \
         {} connects per target after {} unmeasured",
        options.args.mode.label(),
        sizes.services,
        sizes.connects,
        sizes.warm_up
    );
    println!("machine: {}, {}", lab::machine(), iptables.trim());
    println!("load average at the start: {}", load_average());
}

// ---- the Services -------------------------------------------------------------------------

impl Catalog {
    fn objects(&self) -> (Vec<Service>, Vec<EndpointSlice>) {
        let services = (0..self.n)
            .map(|i| Service {
                metadata: ObjectMeta {
                    name: Some(self.name(i)),
                    namespace: Some(NAMESPACE.to_owned()),
                    ..Default::default()
                },
                spec: Some(ServiceSpec {
                    cluster_ip: Some(self.vip(i).to_string()),
                    ports: Some(vec![ServicePort {
                        port: i32::from(SERVICE_PORT),
                        protocol: Some("TCP".to_owned()),
                        target_port: Some(IntOrString::Int(i32::from(self.endpoint(i, 0).port()))),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        let slices = (0..self.n)
            .map(|i| EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(format!("{}-1", self.name(i))),
                    namespace: Some(NAMESPACE.to_owned()),
                    labels: Some(BTreeMap::from([(
                        "kubernetes.io/service-name".to_owned(),
                        self.name(i),
                    )])),
                    ..Default::default()
                },
                address_type: "IPv4".to_owned(),
                endpoints: (0..ENDPOINTS_PER_SERVICE)
                    .map(|k| Endpoint {
                        addresses: vec![self.endpoint(i, k).ip().to_string()],
                        conditions: Some(EndpointConditions {
                            ready: Some(true),
                            serving: Some(true),
                            terminating: Some(false),
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ports: Some(vec![EndpointPort {
                    port: Some(i32::from(self.endpoint(i, 0).port())),
                    protocol: Some("TCP".to_owned()),
                    ..Default::default()
                }]),
            })
            .collect();
        (services, slices)
    }

    /// The same Services as kube-proxy sees them.
    fn ports(&self) -> Vec<PortInfo> {
        (0..self.n)
            .map(|i| PortInfo {
                // ServicePortName.String() of an unnamed port: "namespace/name".
                name: format!("{NAMESPACE}/{}", self.name(i)),
                cluster_ip: self.vip(i),
                port: SERVICE_PORT,
                endpoints: (0..ENDPOINTS_PER_SERVICE)
                    .map(|k| self.endpoint(i, k))
                    .collect(),
                node_port: None,
            })
            .collect()
    }

    /// The same objects as one manifest file, for the daemon.
    fn manifest(&self) -> String {
        let mut text = String::with_capacity(self.n * 700);
        for i in 0..self.n {
            let name = self.name(i);
            let port = self.endpoint(i, 0).port();
            text.push_str(&format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\n\
                 spec:\n  clusterIP: {vip}\n  ports: [{{port: {SERVICE_PORT}, targetPort: {port}, \
                 protocol: TCP}}]\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata:\n  name: {name}-1\n  namespace: {NAMESPACE}\n  \
                 labels: {{kubernetes.io/service-name: {name}}}\n\
                 addressType: IPv4\nports: [{{port: {port}, protocol: TCP}}]\nendpoints:\n",
                vip = self.vip(i),
            ));
            for k in 0..ENDPOINTS_PER_SERVICE {
                text.push_str(&format!(
                    "- {{addresses: [{}], conditions: {{ready: true}}}}\n",
                    self.endpoint(i, k).ip()
                ));
            }
            text.push_str("---\n");
        }
        text
    }
}

// ---- the network --------------------------------------------------------------------------

impl Lab {
    /// The connect and programming measurements for one N.
    fn run(
        &self,
        catalog: &Catalog,
        options: &ServiceOptions,
        sizes: &Sizes,
        report: &mut Report,
    ) -> Result<()> {
        report.foreign = foreign_datapaths(BPF_DIR);
        let connect = options.selected("connect");
        self.iptables(
            catalog,
            connect,
            options.selected("programming"),
            sizes,
            report,
        )?;
        self.bosun(catalog, connect, sizes, report)
    }

    /// kube-proxy's rules in a client namespace of their own: loaded whole and timed (for
    /// `programming`), then measured against the floor, interleaved (for `connect`).
    fn iptables(
        &self,
        catalog: &Catalog,
        connect: bool,
        programming: bool,
        sizes: &Sizes,
        report: &mut Report,
    ) -> Result<()> {
        let rules = KubeProxyRules::new(&catalog.ports(), CLUSTER_CIDR);
        let mut netns = Netns::create(&IPTABLES)?;
        let mut loaded = false;
        if programming {
            let whole = rules.whole();
            report.ruleset = Some((whole.rules, whole.chains, whole.text.len()));
            let load = iptables_restore(IPTABLES.netns, &whole)?;
            loaded = matches!(load, Load::Took(_));
            report.iptables_load = Some(load);
        }
        if !connect {
            return Ok(());
        }
        if !loaded {
            if programming {
                // A restore killed while the kernel committed may have left the rules; start
                // afresh rather than find out.
                drop(netns);
                netns = Netns::create(&IPTABLES)?;
            }
            report.iptables_parts = Some(restore_in_parts(IPTABLES.netns, &rules, RESTORE_PART)?);
        }
        drop(rules);

        let client = Client::spawn(IPTABLES.netns)?;
        let mut targets = vec![Target {
            label: "floor: rule-free client → backend".into(),
            client: &self.plain,
            address: catalog.backend(),
        }];
        targets.extend(vip_targets("iptables", &client, catalog));
        targets.push(Target {
            label: "iptables: → backend, no Service (KUBE-SERVICES walk)".into(),
            client: &client,
            address: catalog.backend(),
        });
        let samples = self.measure(&targets, sizes.connects, sizes.warm_up, Duration::ZERO)?;
        let mut rows = targets.iter().zip(samples).map(|(t, s)| labelled(t, s));
        report.floor = rows.next();
        report.iptables = rows.collect();
        drop(targets);
        drop(client);
        let removing = Instant::now();
        drop(netns);
        report.iptables_removal = Some(removing.elapsed());
        Ok(())
    }

    /// bosun's datapath on the cgroup2 root, programmed with the catalog. Its programs run
    /// on every connect of the machine, so the floor cannot be measured while they are
    /// attached: the run alternates rounds of floor and bosun (each round installs and
    /// programs the datapath again) and ends with the floor, so that the floor's blocks
    /// bracket every bosun block. The first round's programming is the one timed.
    fn bosun(
        &self,
        catalog: &Catalog,
        connect: bool,
        sizes: &Sizes,
        report: &mut Report,
    ) -> Result<()> {
        let rounds = if connect { sizes.rounds } else { 1 };
        let floor = Target {
            label: "floor, alternating with bosun's rounds".into(),
            client: &self.plain,
            address: catalog.backend(),
        };
        let mut targets = vip_targets("bosun", &self.plain, catalog);
        targets.push(Target {
            label: "bosun: → backend, no Service".into(),
            client: &self.plain,
            address: catalog.backend(),
        });
        let mut floor_samples = Vec::new();
        let mut bosun_samples = vec![Vec::new(); targets.len()];
        let mut desired = None;
        for round in 0..rounds {
            if connect {
                let count = share(sizes.connects, rounds + 1, round);
                // The first round follows the removal of kube-proxy's rules.
                let settle = if round == 0 {
                    NETNS_SETTLE
                } else {
                    SWITCH_SETTLE
                };
                let taken =
                    self.measure(std::slice::from_ref(&floor), count, sizes.warm_up, settle)?;
                floor_samples.extend(taken.into_iter().flatten());
            }
            let installed = Installed::new();
            let cgroup = datapath::find_cgroup2().context("finding the cgroup2 mount")?;
            let maps = datapath::install(Path::new(BPF_DIR), &cgroup)
                .with_context(|| format!("installing the datapath in {BPF_DIR}"))?;
            match &desired {
                None => desired = Some(program(catalog, maps, sizes.changes, report)?),
                Some(desired) => {
                    Reconciler::new(maps)
                        .apply(desired)
                        .context("writing the Services to the maps")?;
                }
            }
            if connect {
                let count = share(sizes.connects, rounds, round);
                let taken = self.measure(&targets, count, sizes.warm_up, SWITCH_SETTLE)?;
                for (all, taken) in bosun_samples.iter_mut().zip(taken) {
                    all.extend(taken);
                }
            }
            installed.remove()?;
        }
        if connect {
            let count = share(sizes.connects, rounds + 1, rounds);
            let taken = self.measure(
                std::slice::from_ref(&floor),
                count,
                sizes.warm_up,
                SWITCH_SETTLE,
            )?;
            floor_samples.extend(taken.into_iter().flatten());
            report.floor_again = Some(labelled(&floor, floor_samples));
            report.bosun = targets
                .iter()
                .zip(bosun_samples)
                .map(|(t, s)| labelled(t, s))
                .collect();
        }
        Ok(())
    }
}
/// Compiles and applies the catalog's Services into the (empty) maps, then replaces one
/// endpoint `changes` times, timing each step; leaves the maps holding the catalog, and
/// returns what they hold.
fn program(
    catalog: &Catalog,
    maps: PinnedMaps,
    changes: usize,
    report: &mut Report,
) -> Result<Vec<DesiredService>> {
    let (services, mut slices) = catalog.objects();
    let started = Instant::now();
    let compiled = datapath::compile(&services, &slices, NODE_NAME);
    let compile = started.elapsed();
    if let Some(problem) = compiled.problems.first() {
        bail!("compiling the benchmark's Services: {problem}");
    }
    ensure!(
        compiled.services.len() == catalog.n,
        "compiling {} Services gave {} frontends",
        catalog.n,
        compiled.services.len()
    );
    let mut reconciler = Reconciler::new(maps);
    let started = Instant::now();
    let applied = reconciler
        .apply(&compiled.services)
        .context("writing the Services to the maps")?;
    let apply = started.elapsed();
    ensure!(
        applied.added == catalog.n,
        "applying {} Services to empty maps added {}: were they empty?",
        catalog.n,
        applied.added
    );
    let held = reconciler.maps().services().context("reading the maps")?;
    ensure!(
        held.len() == catalog.n,
        "the maps hold {} Services",
        held.len()
    );
    report.compile = Some(compile);
    report.apply = Some(apply);

    // One endpoint of the middle Service replaced, as an EndpointSlice update would.
    let changed = catalog.middle();
    let original = slices[changed].endpoints[3].addresses.clone();
    let mut compile_ms = Vec::new();
    let mut apply_ms = Vec::new();
    let mut total_ms = Vec::new();
    for c in 0..changes {
        slices[changed].endpoints[3].addresses = vec![catalog.spare(c).to_string()];
        let started = Instant::now();
        let compiled = datapath::compile(&services, &slices, NODE_NAME);
        let compiled_at = started.elapsed();
        let applied = reconciler
            .apply(&compiled.services)
            .context("writing one endpoint change")?;
        let took = started.elapsed();
        ensure!(
            applied.backends_added == 1 && applied.backends_removed == 1,
            "replacing one endpoint changed the maps by {applied:?}"
        );
        compile_ms.push(ms(compiled_at));
        apply_ms.push(ms(took - compiled_at));
        total_ms.push(ms(took));
        check_interrupted()?;
    }
    // The ClusterIP targets connect to real endpoints only.
    slices[changed].endpoints[3].addresses = original;
    let desired = datapath::compile(&services, &slices, NODE_NAME).services;
    reconciler
        .apply(&desired)
        .context("putting the changed endpoint back")?;
    report.change = Some([compile_ms, apply_ms, total_ms]);
    Ok(desired)
}

/// The benchmark's datapath in [`BPF_DIR`]: removed by [`Installed::remove`], or when dropped
/// on the way out of a failure.
struct Installed {
    removed: bool,
}

impl Installed {
    /// Made before `install`, so that a half-done install is removed too.
    fn new() -> Installed {
        Installed { removed: false }
    }

    fn remove(mut self) -> Result<()> {
        self.removed = true;
        datapath::cleanup(Path::new(BPF_DIR))
            .map(|_| ())
            .with_context(|| format!("removing the datapath in {BPF_DIR}"))
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = datapath::cleanup(Path::new(BPF_DIR)) {
                eprintln!("services bench: removing the datapath in {BPF_DIR}: {e}");
            }
        }
    }
}

/// Removes what a killed run left, this benchmark's datapath included.
fn sweep_leftovers() -> Result<()> {
    service_lab::sweep_leftovers(|| {
        datapath::cleanup(Path::new(BPF_DIR))
            .map(|_| ())
            .with_context(|| format!("removing a previous run's datapath in {BPF_DIR}"))
    })
}

// ---- the daemon ---------------------------------------------------------------------------

/// What a real daemon did with the catalog as a manifest.
struct DaemonNumbers {
    /// Manifest written → N Services in the maps.
    programmed: Duration,
    idle: Memory,
    loaded: Memory,
}

/// Starts `bosun run` on the node, waits for its datapath, writes the catalog's manifest and
/// waits for N Services in the maps; then kills the daemon and removes its datapaths.
///
/// The daemon runs as a node runs it, NetworkPolicy enforcement included (with no policy it
/// only loads its programs and empty maps): its memory is then what a node pays for bosun at N
/// Services, next to what it pays for kube-proxy, rather than a configuration nobody runs.
async fn through_daemon(node: &TestNode, catalog: &Catalog) -> Result<DaemonNumbers> {
    let dir = node.dir().join(format!("services-{}", catalog.n));
    let mut daemon = Daemon::start_at(Path::new(BOSUN), node, &dir, "").await?;
    let result = daemon_programs(&mut daemon, node, catalog).await;
    if result.is_err() && !interrupted() {
        let log = daemon.log();
        let lines: Vec<&str> = log.lines().collect();
        eprintln!(
            "--- end of bosun's log ---\n{}",
            lines[lines.len().saturating_sub(20)..].join("\n")
        );
    }
    let killed = daemon.kill().await.context("killing bosun");
    let removed = remove_daemon_datapaths(&node.bpf_dir());
    let _ = std::fs::remove_dir_all(&dir);
    let numbers = result?;
    killed?;
    removed?;
    Ok(numbers)
}

/// Removes what a killed daemon pinned in `bpf_dir`, so that the next size's daemon starts
/// empty instead of adopting these Services. The daemon pins its policy datapath in a
/// directory inside its service datapath's, so removing only the service one cannot remove
/// `bpf_dir`; `bosun run --cleanup` removes whatever the daemon installs, in the order it
/// needs, so this stays right when the daemon pins something more.
fn remove_daemon_datapaths(bpf_dir: &Path) -> Result<()> {
    let dir = bpf_dir
        .to_str()
        .with_context(|| format!("{} is not UTF-8", bpf_dir.display()))?;
    run_command(BOSUN, &["run", "--cleanup", "--bpf-dir", dir])
        .map(|_| ())
        .with_context(|| format!("removing the daemon's datapaths in {dir}"))
}

async fn daemon_programs(
    daemon: &mut Daemon,
    node: &TestNode,
    catalog: &Catalog,
) -> Result<DaemonNumbers> {
    let pid = daemon.pid().context("bosun has exited")?;
    let bpf_dir = node.bpf_dir();
    // The daemon installs its datapath at start, before any Service exists.
    let deadline = Instant::now() + Duration::from_secs(30);
    let maps = loop {
        if let Ok(maps) = PinnedMaps::open(&bpf_dir) {
            break maps;
        }
        daemon_alive(daemon)?;
        check_interrupted()?;
        ensure!(
            Instant::now() < deadline,
            "bosun did not install its datapath in {} within 30 s",
            bpf_dir.display()
        );
        tokio::time::sleep(DAEMON_POLL).await;
    };
    tokio::time::sleep(DAEMON_SETTLE).await;
    let idle = Memory::of(pid)?;

    let manifest = catalog.manifest();
    let started = Instant::now();
    daemon.write_manifest("services.yaml", &manifest)?;
    drop(manifest);
    let mut last = (0, Instant::now());
    loop {
        let count = maps
            .services()
            .context("counting the daemon's Services")?
            .len();
        if count >= catalog.n {
            break;
        }
        if count != last.0 {
            last = (count, Instant::now());
        }
        daemon_alive(daemon)?;
        check_interrupted()?;
        ensure!(
            last.1.elapsed() < DAEMON_STALL,
            "bosun's maps have held {count} of {} Services for {DAEMON_STALL:?}",
            catalog.n
        );
        tokio::time::sleep(DAEMON_POLL).await;
    }
    let programmed = started.elapsed();
    Ok(DaemonNumbers {
        programmed,
        idle,
        loaded: Memory::of(pid)?,
    })
}

fn daemon_alive(daemon: &mut Daemon) -> Result<()> {
    if let Some(status) = daemon.try_wait()? {
        bail!("bosun exited: {status}");
    }
    Ok(())
}

// ---- reporting ----------------------------------------------------------------------------

/// Everything measured for one N; printed as one block.
struct Report {
    n: usize,
    load: String,
    steal_at_start: Option<Duration>,
    foreign: Vec<String>,
    floor: Option<Row>,
    iptables: Vec<Row>,
    floor_again: Option<Row>,
    bosun: Vec<Row>,
    /// Rules, chains, bytes.
    ruleset: Option<(usize, usize, usize)>,
    iptables_load: Option<Load>,
    /// Loading the rules in parts, when the whole took too long.
    iptables_parts: Option<Duration>,
    iptables_removal: Option<Duration>,
    compile: Option<Duration>,
    apply: Option<Duration>,
    /// One endpoint change: compile, apply, both (ms each).
    change: Option<[Vec<f64>; 3]>,
    daemon: Option<DaemonNumbers>,
}

impl Report {
    fn new(n: usize) -> Report {
        Report {
            n,
            load: load_average(),
            steal_at_start: stolen(),
            foreign: Vec::new(),
            floor: None,
            iptables: Vec::new(),
            floor_again: None,
            bosun: Vec::new(),
            ruleset: None,
            iptables_load: None,
            iptables_parts: None,
            iptables_removal: None,
            compile: None,
            apply: None,
            change: None,
            daemon: None,
        }
    }

    fn print(&self) {
        let n = self.n;
        println!(
            "\n=== {n} Services, {ENDPOINTS_PER_SERVICE} endpoints each ===\n\
             load average {} at the start, {} at the end",
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
        self.print_connect();
        self.print_programming();
        self.print_memory();
        self.print_goals();
    }

    fn print_connect(&self) {
        let Some(floor) = &self.floor else { return };
        let mut table = Table::new("connect + close (SO_LINGER 0)", "µs");
        let base = table.row(floor.clone(), None);
        for row in &self.iptables {
            table.row(row.clone(), Some(base));
        }
        if let Some(again) = &self.floor_again {
            let again = table.row(again.clone(), Some(base));
            for row in &self.bosun {
                table.row(row.clone(), Some(again));
            }
        }
        table.print();
        if !self.bosun.is_empty() {
            println!("  (bosun's rows are compared with the floor measured in turns with them)");
        }
    }

    fn print_programming(&self) {
        let n = self.n;
        let mut table = Table::new("programming", "ms");
        let mut any = false;
        if let (Some(compile), Some(apply)) = (self.compile, self.apply) {
            any = true;
            table.row(
                Row::once(&format!("bosun: compile {n} Services"), compile),
                None,
            );
            table.row(Row::once("bosun: apply them to empty maps", apply), None);
            table.row(
                Row::once("bosun: full programming, compile + apply", compile + apply),
                None,
            );
        }
        if let Some([compile, apply, total]) = &self.change {
            for (what, samples) in [
                ("compile", compile),
                ("apply", apply),
                ("compile + apply", total),
            ] {
                table.row(
                    Row {
                        label: format!("bosun: one endpoint replaced, {what}"),
                        samples: samples.clone(),
                        note: String::new(),
                    },
                    None,
                );
            }
        }
        if let Some(load) = &self.iptables_load {
            any = true;
            let label = format!("iptables-restore of kube-proxy's rules for {n}");
            table.row(
                match load {
                    Load::Took(took) => Row::once(&label, *took),
                    Load::GaveUp(after) => Row::note(
                        &label,
                        &format!(
                            "> {} s (killed after {:.0} s)",
                            RESTORE_LIMIT.as_secs(),
                            after.as_secs_f64()
                        ),
                    ),
                },
                None,
            );
        }
        if let Some(parts) = self.iptables_parts {
            table.row(
                Row::once(
                    &format!("iptables-restore of them in parts of {RESTORE_PART} Services"),
                    parts,
                ),
                None,
            );
        }
        if let Some(removal) = self.iptables_removal {
            table.row(
                Row::once("iptables: removing the namespace with its rules", removal),
                None,
            );
        }
        if let Some(daemon) = &self.daemon {
            any = true;
            table.row(
                Row::once(
                    "bosun daemon: manifest written → all in the maps",
                    daemon.programmed,
                ),
                None,
            );
        }
        if !any {
            return;
        }
        table.print();
        if let Some((rules, chains, bytes)) = self.ruleset {
            println!(
                "  (kube-proxy's rules: {rules} rules in {chains} chains, {:.1} MB of \
                 iptables-restore input)",
                bytes as f64 / 1e6,
            );
        }
        if self.daemon.is_some() {
            println!(
                "  (the daemon's maps counted every {} ms)",
                DAEMON_POLL.as_millis()
            );
        }
    }

    fn print_memory(&self) {
        let Some(daemon) = &self.daemon else { return };
        let mib = |kib: u64| kib as f64 / 1024.0;
        println!(
            "\nmemory\n  bosun daemon VmRSS {:.1} MiB with {} Services (anonymous {:.1}, file \
             {:.1}; {:.1} MiB before the manifest; peak VmHWM {:.1} MiB)",
            mib(daemon.loaded.rss),
            self.n,
            mib(daemon.loaded.anon),
            mib(daemon.loaded.file),
            mib(daemon.idle.rss),
            mib(daemon.loaded.peak)
        );
    }

    fn print_goals(&self) {
        let measured = self.floor_again.is_some() || self.compile.is_some();
        if !measured {
            return;
        }
        println!("\ngoals");
        let median = |row: &Row| Stats::of(&row.samples).map(|s| s.median);
        let p99 = |row: &Row| Stats::of(&row.samples).map(|s| s.p99);
        let floor_again = self.floor_again.as_ref();
        if let (Some(again), false) = (floor_again, self.bosun.is_empty()) {
            let ratio =
                |row: &Row, stat: &dyn Fn(&Row) -> Option<f64>| Some(stat(row)? / stat(again)?);
            let vips = &self.bosun[..self.bosun.len() - 1];
            let worst = vips
                .iter()
                .filter_map(|r| ratio(r, &median))
                .fold(0.0, f64::max);
            let worst_p99 = vips
                .iter()
                .filter_map(|r| ratio(r, &p99))
                .fold(0.0, f64::max);
            println!(
                "  bosun → ClusterIP, worst of first/middle/last: {worst:.2}× the floor median \
                 ({worst_p99:.2}× at p99); goal ≤ {GOAL_VIP_RATIO:.2}× at 30000 Services → {}",
                verdict(hundredths(worst) <= hundredths(GOAL_VIP_RATIO))
            );
            let direct = self.bosun.last().and_then(|r| ratio(r, &median));
            let drift = self
                .floor
                .as_ref()
                .and_then(|f| Some(median(again)? / median(f)?));
            if let (Some(direct), Some(drift)) = (direct, drift) {
                // What the floor moved between its two measurements is what two measurements
                // of the same thing differ by here.
                let noise = (hundredths(drift) - 100).abs().max(1);
                println!(
                    "  bosun → backend, no Service: {direct:.2}× the floor; goal 1.00× → {} \
                     (the floor itself moved {drift:.2}× between its two measurements)",
                    if hundredths(direct) <= 100 {
                        "met"
                    } else if hundredths(direct) - 100 <= noise {
                        "met, within the floor's own drift"
                    } else {
                        "NOT met"
                    }
                );
            }
        }
        if let (Some(floor), Some(direct)) = (&self.floor, self.iptables.last()) {
            if let (Some(d), Some(f)) = (median(direct), median(floor)) {
                println!(
                    "  (for comparison, iptables → backend, no Service: {:.2}× the floor)",
                    d / f
                );
            }
        }
        if let (Some(compile), Some(apply)) = (self.compile, self.apply) {
            let full = compile + apply;
            println!(
                "  full programming of {} Services: {:.0} ms; goal < {} ms at 30000 → {}",
                self.n,
                ms(full),
                GOAL_FULL_PROGRAMMING.as_millis(),
                verdict(full < GOAL_FULL_PROGRAMMING)
            );
        }
        if let Some(stats) = self
            .change
            .as_ref()
            .and_then(|[_, _, total]| Stats::of(total))
        {
            println!(
                "  one endpoint change: {:.2} ms median, {:.2} ms p99; goal < {} ms → {}",
                stats.median,
                stats.p99,
                GOAL_ONE_CHANGE.as_millis(),
                verdict(stats.p99 < ms(GOAL_ONE_CHANGE))
            );
        }
    }
}

impl Row {
    /// A single timing, in ms.
    fn once(label: &str, took: Duration) -> Row {
        Row {
            label: label.to_owned(),
            samples: vec![ms(took)],
            note: String::new(),
        }
    }

    fn note(label: &str, note: &str) -> Row {
        Row {
            label: label.to_owned(),
            samples: Vec::new(),
            note: note.to_owned(),
        }
    }
}
