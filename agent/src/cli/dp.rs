//! `bosun dp services|backends`: what the service datapath's pinned maps hold right now, read
//! from bpffs directly, so it works while the daemon is down.

use std::path::PathBuf;

use anyhow::{Context, Result};
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DpFormat {
    Table,
    Json,
    Yaml,
}

pub fn dp(args: &DpArgs) -> Result<()> {
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
        };
        return output::print_value(&value, format);
    }
    match args.what {
        DpWhat::Services => services_table(&snapshot),
        DpWhat::Backends => backends_table(&snapshot),
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
