//! `bosun monitor`: NetworkPolicy verdicts as they happen — every dropped packet and every new
//! flow a policy allowed — read straight from the policy datapath's ring buffer in bpffs, so it
//! works whether or not the daemon runs. Pod names come from the daemon when it answers.
//!
//! The ring buffer has one reader position: two monitors at once share the events between
//! them rather than each seeing all.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
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
    let mut reader = EventReader::open(&args.bpf_dir).with_context(|| {
        format!(
            "opening the policy event ring buffer in {} (has `bosun run` installed it there?)",
            args.bpf_dir.display()
        )
    })?;
    let mut names = Names {
        bpf_dir: args.bpf_dir.clone(),
        socket: bosun::daemon::api_socket(&args.root_dir),
        policies: BTreeMap::new(),
        pods: BTreeMap::new(),
        refreshed: None,
    };
    names.refresh().await;
    loop {
        let event = FlowEvent::from(reader.next().await.context("reading policy events")?);
        let allowed = event.allowed;
        let shown = match args.verdict {
            VerdictFilter::All => true,
            VerdictFilter::Dropped => !allowed,
            VerdictFilter::Allowed => allowed,
        };
        if !shown {
            continue;
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
        super::output::print_stdout(&format!("{line}\n"))?;
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
