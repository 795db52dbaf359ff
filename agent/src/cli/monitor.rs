//! `bosun monitor`: NetworkPolicy verdicts as they happen — every dropped packet and every new
//! flow a policy allowed — and the flows from outside the node (each new one NATed to its
//! backend, and each packet dropped), read straight from the datapaths' ring buffers in bpffs,
//! so it works whether or not the daemon runs. Pod names come from the daemon when it answers.
//!
//! The ring buffer has one reader position: two monitors at once share the events between
//! them rather than each seeing all.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use bosun_netdp::nodeport::{
    NodePortEvent, NodePortEventReader, NODEPORT_EVENT_NEW_FLOW, NODEPORT_EVENT_NO_BACKEND,
    NODEPORT_EVENT_NO_SNAT, NODEPORT_EVENT_REFUSED,
};
use bosun_netdp::policy::{read_names, Direction, EventReader, FlowEvent, PolicyProtocol};
use clap::{Args, ValueEnum};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use super::run::{DEFAULT_BPF_DIR, DEFAULT_ROOT_DIR};

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Which verdicts to show.
    #[arg(long, value_enum, default_value = "all")]
    pub verdict: VerdictFilter,
    /// Output format: one line per event, or one JSON object per line.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: MonitorFormat,
    /// The bpffs directory the daemon pinned its maps in.
    #[arg(long = "bpf-dir", default_value = DEFAULT_BPF_DIR)]
    pub bpf_dir: PathBuf,
    /// The daemon's root directory, for pod names through its API.
    #[arg(long = "root-dir", default_value = DEFAULT_ROOT_DIR)]
    pub root_dir: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VerdictFilter {
    All,
    Dropped,
    Allowed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MonitorFormat {
    Text,
    Json,
}

/// One side of a flow.
#[derive(Debug, Serialize)]
struct Side {
    ip: Ipv4Addr,
    port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<String>,
}

/// An event as printed.
#[derive(Debug, Serialize)]
struct Verdict {
    time: String,
    verdict: &'static str,
    /// The endpoint's point of view.
    direction: Direction,
    source: Side,
    destination: Side,
    protocol: String,
    /// The policy that allowed the flow, or one that isolates the pod for a drop.
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<String>,
    ifindex: u32,
}

/// How often names are looked up again when an unknown address or policy id shows up.
const NAMES_REFRESH: Duration = Duration::from_secs(1);

struct Names {
    bpf_dir: PathBuf,
    socket: PathBuf,
    policies: BTreeMap<u32, String>,
    pods: BTreeMap<Ipv4Addr, String>,
    refreshed: Option<Instant>,
}

impl Names {
    async fn refresh(&mut self) {
        if self
            .refreshed
            .is_some_and(|at| at.elapsed() < NAMES_REFRESH)
        {
            return;
        }
        self.refreshed = Some(Instant::now());
        if let Ok(policies) = read_names(&self.bpf_dir) {
            self.policies = policies;
        }
        if let Ok(pods) = bosun::api::get_pods(&self.socket).await {
            self.pods = pods
                .iter()
                .filter(|p| p.spec.as_ref().and_then(|s| s.host_network) != Some(true))
                .filter_map(|p| {
                    let ip = p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?;
                    Some((
                        ip,
                        format!(
                            "{}/{}",
                            p.metadata.namespace.as_deref().unwrap_or_default(),
                            p.metadata.name.as_deref().unwrap_or_default()
                        ),
                    ))
                })
                .collect();
        }
    }

    async fn resolve(
        &mut self,
        event: &FlowEvent,
    ) -> (Option<String>, Option<String>, Option<String>) {
        let source = *event.source.ip();
        let destination = *event.destination.ip();
        let known = |names: &Self| {
            (event.policy == 0 || names.policies.contains_key(&event.policy))
                && (names.pods.contains_key(&source) || names.pods.contains_key(&destination))
        };
        if !known(self) {
            self.refresh().await;
        }
        (
            self.pods.get(&source).cloned(),
            self.pods.get(&destination).cloned(),
            (event.policy != 0).then(|| {
                self.policies
                    .get(&event.policy)
                    .cloned()
                    .unwrap_or_else(|| format!("#{}", event.policy))
            }),
        )
    }
}

pub async fn monitor(args: &MonitorArgs) -> Result<()> {
    // Either datapath may be missing (no NetworkPolicy, no external interfaces); not both.
    let (mut policy, mut outside) = match (
        EventReader::open(&args.bpf_dir),
        NodePortEventReader::open(&args.bpf_dir),
    ) {
        (Err(e), Err(_)) => {
            return Err(e).with_context(|| {
                format!(
                    "opening the policy event ring buffer in {} (has `bosun run` installed it \
                     there?)",
                    args.bpf_dir.display()
                )
            })
        }
        (policy, outside) => (policy.ok(), outside.ok()),
    };
    let mut names = Names {
        bpf_dir: args.bpf_dir.clone(),
        socket: bosun::daemon::api_socket(&args.root_dir),
        policies: BTreeMap::new(),
        pods: BTreeMap::new(),
        refreshed: None,
    };
    names.refresh().await;
    loop {
        tokio::select! {
            event = next_or_never(policy.as_mut().map(EventReader::next)) => {
                let event = FlowEvent::from(event.context("reading policy events")?);
                print_verdict(args, &mut names, event).await?;
            }
            event = next_or_never(outside.as_mut().map(NodePortEventReader::next)) => {
                let event = event.context("reading the events of traffic from outside")?;
                print_outside(args, &event)?;
            }
        }
    }
}

/// The next event of a reader that is there; never, for one that is not.
async fn next_or_never<T>(next: Option<impl std::future::Future<Output = T>>) -> T {
    match next {
        Some(next) => next.await,
        None => std::future::pending().await,
    }
}

async fn print_verdict(args: &MonitorArgs, names: &mut Names, event: FlowEvent) -> Result<()> {
    let allowed = event.allowed;
    if !args.verdict.shows(allowed) {
        return Ok(());
    }
    let (source_pod, destination_pod, policy) = names.resolve(&event).await;
    let verdict = Verdict {
        time: wall_time(event.time_ns),
        verdict: if allowed { "ALLOWED" } else { "DROPPED" },
        direction: event.direction,
        source: Side {
            ip: *event.source.ip(),
            port: event.source.port(),
            pod: source_pod,
        },
        destination: Side {
            ip: *event.destination.ip(),
            port: event.destination.port(),
            pod: destination_pod,
        },
        protocol: PolicyProtocol::from_number(event.protocol)
            .map_or_else(|| format!("proto-{}", event.protocol), |p| p.to_string()),
        policy,
        ifindex: event.ifindex,
    };
    let line = match args.output {
        MonitorFormat::Json => serde_json::to_string(&verdict)?,
        MonitorFormat::Text => text_line(&verdict),
    };
    super::output::print_stdout(&format!("{line}\n"))
}

/// A flow from outside as printed: NATed to its backend, or dropped and why.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Outside {
    time: String,
    /// `NAT`, `REFUSED` (an ICMP error sent back) or `DROPPED`.
    event: &'static str,
    client: String,
    frontend: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    backend: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snat_port: Option<u16>,
    protocol: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

fn print_outside(args: &MonitorArgs, event: &NodePortEvent) -> Result<()> {
    let taken = event.kind == NODEPORT_EVENT_NEW_FLOW;
    if !args.verdict.shows(taken) {
        return Ok(());
    }
    let at = |address: [u8; 4], port: [u8; 2]| {
        format!("{}:{}", Ipv4Addr::from(address), u16::from_be_bytes(port))
    };
    let outside = Outside {
        time: wall_time(event.time_ns),
        event: match event.kind {
            NODEPORT_EVENT_NEW_FLOW => "NAT",
            NODEPORT_EVENT_REFUSED => "REFUSED",
            _ => "DROPPED",
        },
        client: at(event.client, event.client_port),
        frontend: at(event.frontend, event.frontend_port),
        backend: (event.backend != [0; 4]).then(|| at(event.backend, event.backend_port)),
        snat_port: (event.snat_port != [0; 2]).then(|| u16::from_be_bytes(event.snat_port)),
        protocol: PolicyProtocol::from_number(event.protocol)
            .map_or_else(|| format!("proto-{}", event.protocol), |p| p.to_string()),
        reason: (!taken).then_some(match event.kind {
            NODEPORT_EVENT_NO_BACKEND => "no backend for traffic from outside",
            NODEPORT_EVENT_REFUSED => {
                "the Service has no endpoint: refused with an ICMP port unreachable"
            }
            NODEPORT_EVENT_NO_SNAT => "no SNAT address or port for a backend on another node",
            _ => "the NAT table refused the flow",
        }),
    };
    let line = match args.output {
        MonitorFormat::Json => serde_json::to_string(&outside)?,
        MonitorFormat::Text => {
            let backend = match (&outside.backend, outside.snat_port) {
                (Some(backend), Some(port)) => format!(" => {backend} (SNAT port {port})"),
                (Some(backend), None) => format!(" => {backend}"),
                (None, _) => String::new(),
            };
            format!(
                "{}  {:<7}  outside  {} -> {}{}  {}{}",
                outside.time,
                outside.event,
                outside.client,
                outside.frontend,
                backend,
                outside.protocol,
                outside
                    .reason
                    .map_or_else(String::new, |r| format!("  {r}"))
            )
        }
    };
    super::output::print_stdout(&format!("{line}\n"))
}

impl VerdictFilter {
    fn shows(self, allowed: bool) -> bool {
        match self {
            VerdictFilter::All => true,
            VerdictFilter::Dropped => !allowed,
            VerdictFilter::Allowed => allowed,
        }
    }
}

fn text_line(v: &Verdict) -> String {
    let side = |s: &Side| match &s.pod {
        Some(pod) => format!("{pod}({}):{}", s.ip, s.port),
        None => format!("{}:{}", s.ip, s.port),
    };
    let policy = match (&v.policy, v.verdict) {
        (Some(policy), "ALLOWED") => format!("allowed by {policy}"),
        (Some(policy), _) => format!("isolated by {policy}"),
        (None, _) => "no endpoint for this interface".to_owned(),
    };
    format!(
        "{}  {:<7}  {:<7}  {} -> {}  {}  {}",
        v.time,
        v.verdict,
        v.direction.to_string(),
        side(&v.source),
        side(&v.destination),
        v.protocol,
        policy
    )
}

/// The wall-clock time (RFC 3339, UTC, milliseconds) of a `CLOCK_MONOTONIC` reading.
fn wall_time(monotonic_ns: u64) -> String {
    let now_mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| Duration::new(t.tv_sec().unsigned_abs(), t.tv_nsec().unsigned_abs() as u32))
        .unwrap_or_default();
    let age = now_mono.saturating_sub(Duration::from_nanos(monotonic_ns));
    let at = SystemTime::now()
        .checked_sub(age)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let at = i64::try_from(since.as_secs())
        .ok()
        .and_then(|s| Timestamp::new(s, i32::try_from(since.subsec_nanos()).unwrap_or(0)).ok())
        .unwrap_or(Timestamp::UNIX_EPOCH);
    format!("{at:.3}")
}
