//! `bosun dp services|backends|policies|conntrack`: what the datapath's pinned maps hold right now, read
//! from bpffs directly, so it works while the daemon is down.

use std::path::PathBuf;

use anyhow::{Context, Result};
use bosun_netdp::policy::{
    interface_name, read_counters, read_names, Direction, PinnedPolicyMaps, PolicyMaps as _,
    ENDPOINT_ISOLATED_EGRESS, ENDPOINT_ISOLATED_INGRESS,
};
use bosun_netdp::service::{snapshot, MapSnapshot, PinnedMaps};
use clap::{Args, Subcommand, ValueEnum};

use super::output::{self, Table};

#[derive(Debug, Args)]
pub struct DpArgs {
    #[command(subcommand)]
    pub what: DpWhat,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table", global = true)]
    pub output: DpFormat,
    /// The bpffs directory the daemon pinned its maps in.
    #[arg(long = "bpf-dir", default_value = super::run::DEFAULT_BPF_DIR, global = true)]
    pub bpf_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum DpWhat {
    /// Service frontends in the maps, with their backends by slot.
    Services,
    /// Backends in the maps.
    Backends,
    /// Pod interfaces under NetworkPolicy: isolation and allowed/dropped packets per direction.
    Policies,
    /// Flows from outside the node to node ports, external IPs and load balancer IPs: client,
    /// frontend, backend, the SNAT port of a flow to another node's backend, idle time.
    Conntrack,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DpFormat {
    Table,
    Json,
    Yaml,
}

pub fn dp(args: &DpArgs) -> Result<()> {
    if let DpWhat::Policies = args.what {
        return policies(args);
    }
    if let DpWhat::Conntrack = args.what {
        return conntrack(args);
    }
    let maps = PinnedMaps::open(&args.bpf_dir).with_context(|| {
        format!(
            "opening the service maps in {} (has `bosun run` installed them there?)",
            args.bpf_dir.display()
        )
    })?;
    let snapshot = snapshot(&maps).context("reading the service maps")?;
    let structured = match args.output {
        DpFormat::Table => None,
        DpFormat::Json => Some(output::Format::Json),
        DpFormat::Yaml => Some(output::Format::Yaml),
    };
    if let Some(format) = structured {
        let value = match args.what {
            DpWhat::Services => serde_json::to_value(&snapshot.services)?,
            DpWhat::Backends => serde_json::to_value(&snapshot.backends)?,
            DpWhat::Policies | DpWhat::Conntrack => unreachable!("handled above"),
        };
        return output::print_value(&value, format);
    }
    match args.what {
        DpWhat::Services => services_table(&snapshot),
        DpWhat::Backends => backends_table(&snapshot),
        DpWhat::Policies | DpWhat::Conntrack => unreachable!("handled above"),
    }
    .print()
}

fn services_table(snapshot: &MapSnapshot) -> Table {
    let mut table = Table::new(&["ID", "FRONTEND", "AFFINITY", "BACKENDS"]);
    for service in &snapshot.services {
        let backends: Vec<String> = service
            .backends
            .iter()
            .map(|b| b.map_or_else(|| "<missing>".to_owned(), |b| b.address.to_string()))
            .collect();
        table.row(vec![
            service.id.to_string(),
            service
                .frontend
                .map_or_else(|| "<unknown protocol>".to_owned(), |f| f.to_string()),
            service
                .affinity_timeout
                .map_or_else(|| "None".to_owned(), |t| format!("ClientIP {t}s")),
            if backends.is_empty() {
                "<none: refused>".to_owned()
            } else {
                backends.join(",")
            },
        ]);
    }
    table
}

fn backends_table(snapshot: &MapSnapshot) -> Table {
    let mut table = Table::new(&["ID", "ADDRESS"]);
    for backend in &snapshot.backends {
        table.row(vec![backend.id.to_string(), backend.address.to_string()]);
    }
    table
}

/// One endpoint of the policy maps, as `dp policies` shows it.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct PolicyEndpoint {
    ifindex: u32,
    interface: Option<String>,
    /// The policy isolating the pod for ingress; `None`: not isolated.
    ingress: Option<String>,
    egress: Option<String>,
    ingress_allowed: u64,
    ingress_dropped: u64,
    egress_allowed: u64,
    egress_dropped: u64,
}

fn policies(args: &DpArgs) -> Result<()> {
    let opening = || {
        format!(
            "opening the policy maps in {} (has `bosun run` installed them there?)",
            args.bpf_dir.display()
        )
    };
    let maps = PinnedPolicyMaps::open(&args.bpf_dir).with_context(opening)?;
    let counters = read_counters(&args.bpf_dir).with_context(opening)?;
    let names = read_names(&args.bpf_dir).with_context(opening)?;
    let isolation = |isolated: bool, id: u32| {
        isolated.then(|| names.get(&id).cloned().unwrap_or_else(|| format!("#{id}")))
    };
    let endpoints: Vec<PolicyEndpoint> = maps
        .endpoints()
        .context("reading the endpoint map")?
        .into_iter()
        .map(|(ifindex, value)| {
            let count = |direction| {
                counters
                    .get(&(ifindex, direction))
                    .copied()
                    .unwrap_or_default()
            };
            let (ingress, egress) = (count(Direction::Ingress), count(Direction::Egress));
            PolicyEndpoint {
                ifindex,
                interface: interface_name(ifindex),
                ingress: isolation(
                    value.flags & ENDPOINT_ISOLATED_INGRESS != 0,
                    value.ingress_policy,
                ),
                egress: isolation(
                    value.flags & ENDPOINT_ISOLATED_EGRESS != 0,
                    value.egress_policy,
                ),
                ingress_allowed: ingress.allowed,
                ingress_dropped: ingress.dropped,
                egress_allowed: egress.allowed,
                egress_dropped: egress.dropped,
            }
        })
        .collect();
    match args.output {
        DpFormat::Json => {
            output::print_value(&serde_json::to_value(&endpoints)?, output::Format::Json)
        }
        DpFormat::Yaml => {
            output::print_value(&serde_json::to_value(&endpoints)?, output::Format::Yaml)
        }
        DpFormat::Table => {
            let mut table = Table::new(&[
                "IFINDEX",
                "INTERFACE",
                "INGRESS",
                "EGRESS",
                "IN ALLOWED/DROPPED",
                "OUT ALLOWED/DROPPED",
            ]);
            let shown = |isolated: &Option<String>| {
                isolated
                    .as_ref()
                    .map_or_else(|| "open".to_owned(), |p| format!("isolated ({p})"))
            };
            for e in &endpoints {
                table.row(vec![
                    e.ifindex.to_string(),
                    e.interface.clone().unwrap_or_else(|| "<gone>".to_owned()),
                    shown(&e.ingress),
                    shown(&e.egress),
                    format!("{}/{}", e.ingress_allowed, e.ingress_dropped),
                    format!("{}/{}", e.egress_allowed, e.egress_dropped),
                ]);
            }
            table.print()
        }
    }
}

fn conntrack(args: &DpArgs) -> Result<()> {
    use bosun_netdp::nodeport::{monotonic_now, NodePortMaps};
    let maps = NodePortMaps::open(&args.bpf_dir).with_context(|| {
        format!(
            "opening the NAT table in {} (is bosun serving traffic from outside? not with \
             --external-interfaces none)",
            args.bpf_dir.display()
        )
    })?;
    let flows = maps
        .flows(monotonic_now())
        .context("reading the NAT table")?;
    match args.output {
        DpFormat::Json => output::print_value(&serde_json::to_value(&flows)?, output::Format::Json),
        DpFormat::Yaml => output::print_value(&serde_json::to_value(&flows)?, output::Format::Yaml),
        DpFormat::Table => {
            let mut table = Table::new(&[
                "PROTO", "CLIENT", "FRONTEND", "BACKEND", "SNAT", "IDLE", "STATE",
            ]);
            let at = |(address, port): (std::net::Ipv4Addr, u16)| format!("{address}:{port}");
            for flow in &flows {
                table.row(vec![
                    flow.protocol.to_string(),
                    at(flow.client),
                    at(flow.frontend),
                    at(flow.backend),
                    flow.snat.map_or_else(|| "-".to_owned(), at),
                    format!("{}s", flow.idle.as_secs()),
                    if flow.closing { "closing" } else { "open" }.to_owned(),
                ]);
            }
            table.print()
        }
    }
}
