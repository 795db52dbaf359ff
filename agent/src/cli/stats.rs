//! `stats`: containers' CPU, memory and writable-layer usage.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use bosun_cri::api;
use bosun_cri::CriClient;
use clap::Args;

use super::output::{self, human_size, short_id, Format, Table};
use super::{parse_label, resolve};

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Only this container (ID or unique prefix).
    pub container: Option<String>,
    /// Include containers that are not running.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only containers of this pod sandbox (ID or unique prefix).
    #[arg(short = 'p', long)]
    pub pod: Option<String>,
    /// Only containers with this label (key=value).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Seconds between the two samples CPU usage is computed from.
    #[arg(short = 's', long, default_value_t = 1)]
    pub seconds: u64,
    /// Show full IDs.
    #[arg(long)]
    pub no_trunc: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

pub async fn stats(client: &CriClient, args: &StatsArgs) -> Result<()> {
    let mut filter = api::ContainerStatsFilter {
        label_selector: args.labels.iter().cloned().collect(),
        ..Default::default()
    };
    if let Some(c) = &args.container {
        filter.id = resolve::container(client, c).await?;
    }
    if let Some(p) = &args.pod {
        filter.pod_sandbox_id = resolve::pod(client, p).await?;
    }
    let containers = client.list_containers(None).await?;
    let running: HashMap<&str, &api::Container> = containers
        .iter()
        .filter(|c| args.all || c.state == api::ContainerState::ContainerRunning as i32)
        .map(|c| (c.id.as_str(), c))
        .collect();

    let first = client.list_container_stats(Some(filter.clone())).await?;
    tokio::time::sleep(Duration::from_secs(args.seconds.max(1))).await;
    let mut second = client.list_container_stats(Some(filter)).await?;
    second.retain(|s| {
        s.attributes
            .as_ref()
            .is_some_and(|a| running.contains_key(a.id.as_str()))
    });
    second.sort_by_key(|s| s.attributes.as_ref().map(|a| a.id.clone()));

    if args.output != Format::Table {
        let response = api::ListContainerStatsResponse { stats: second };
        return output::print_value(&output::proto_json(&response)?, args.output);
    }
    let before: HashMap<String, (u64, i64)> = first
        .iter()
        .filter_map(|s| Some((s.attributes.as_ref()?.id.clone(), cpu_sample(s)?)))
        .collect();
    let mut table = Table::new(&["CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES"]);
    for s in &second {
        let Some(attributes) = &s.attributes else {
            continue;
        };
        let name = attributes
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let cpu = match (before.get(&attributes.id), cpu_sample(s)) {
            (Some(a), Some(b)) => cpu_percent(*a, b),
            _ => 0.0,
        };
        let memory = s
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes.as_ref())
            .map_or(0, |v| v.value);
        let fs = s.writable_layer.as_ref();
        let disk = fs
            .and_then(|f| f.used_bytes.as_ref())
            .map_or(0, |v| v.value);
        let inodes = fs
            .and_then(|f| f.inodes_used.as_ref())
            .map_or(0, |v| v.value);
        table.row(vec![
            short_id(&attributes.id, args.no_trunc),
            name,
            format!("{cpu:.2}"),
            human_size(memory),
            human_size(disk),
            inodes.to_string(),
        ]);
    }
    table.print()
}

/// Cumulative CPU time (ns) and when it was read (ns since the epoch).
fn cpu_sample(s: &api::ContainerStats) -> Option<(u64, i64)> {
    let cpu = s.cpu.as_ref()?;
    Some((cpu.usage_core_nano_seconds.as_ref()?.value, cpu.timestamp))
}

/// CPU use between two samples, in percent of one core.
fn cpu_percent(before: (u64, i64), after: (u64, i64)) -> f64 {
    let used = after.0.saturating_sub(before.0) as f64;
    let elapsed = (after.1 - before.1) as f64;
    if elapsed <= 0.0 {
        0.0
    } else {
        used / elapsed * 100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_percent_is_share_of_one_core() {
        assert_eq!(cpu_percent((0, 0), (500_000_000, 1_000_000_000)), 50.0);
        assert_eq!(cpu_percent((10, 5), (10, 5)), 0.0);
        assert_eq!(
            cpu_percent((100, 0), (50, 10)),
            0.0,
            "a counter reset is not negative"
        );
    }
}
