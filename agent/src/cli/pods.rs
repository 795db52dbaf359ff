//! `pods`, `inspectp`, `stopp`, `rmp`.

use std::collections::HashMap;
use std::time::SystemTime;

use anyhow::{bail, Result};
use bosun_cri::api;
use bosun_cri::CriClient;
use clap::{Args, ValueEnum};

use super::output::{self, ago, short_id, Format, Table};
use super::{parse_label, resolve, InspectArgs};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PodState {
    Ready,
    #[value(name = "notready")]
    NotReady,
}

#[derive(Debug, Args)]
pub struct PodsArgs {
    /// Only the pod sandbox with this ID (or ID prefix).
    #[arg(long)]
    pub id: Option<String>,
    /// Only pods whose name contains this.
    #[arg(long)]
    pub name: Option<String>,
    /// Only pods whose namespace contains this.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only pods with this label (key=value); repeat for several.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Only pods in this state.
    #[arg(long, value_enum)]
    pub state: Option<PodState>,
    /// Only the most recently created pod.
    #[arg(short = 'l', long)]
    pub latest: bool,
    /// Only the N most recently created pods.
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// Print only IDs.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Show full IDs.
    #[arg(long)]
    pub no_trunc: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct IdsArgs {
    /// Pod sandbox IDs (or unique prefixes).
    #[arg(required = true)]
    pub ids: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmpArgs {
    /// Pod sandbox IDs (or unique prefixes).
    #[arg(required_unless_present = "all")]
    pub ids: Vec<String>,
    /// Stop the pods first if they are running.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Remove all pods.
    #[arg(short = 'a', long, conflicts_with = "ids")]
    pub all: bool,
}

pub async fn list(client: &CriClient, args: &PodsArgs) -> Result<()> {
    let mut filter = api::PodSandboxFilter {
        label_selector: args.labels.iter().cloned().collect::<HashMap<_, _>>(),
        ..Default::default()
    };
    if let Some(state) = args.state {
        filter.state = Some(api::PodSandboxStateValue {
            state: match state {
                PodState::Ready => api::PodSandboxState::SandboxReady,
                PodState::NotReady => api::PodSandboxState::SandboxNotready,
            } as i32,
        });
    }
    let mut pods = client.list_pod_sandbox(Some(filter)).await?;
    if let Some(id) = &args.id {
        pods.retain(|p| p.id.starts_with(id.as_str()));
    }
    let metadata = |p: &api::PodSandbox| p.metadata.clone().unwrap_or_default();
    if let Some(name) = &args.name {
        pods.retain(|p| metadata(p).name.contains(name.as_str()));
    }
    if let Some(namespace) = &args.namespace {
        pods.retain(|p| metadata(p).namespace.contains(namespace.as_str()));
    }
    // Newest first, as crictl lists them.
    pods.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| a.id.cmp(&b.id))
    });
    let keep = if args.latest { Some(1) } else { args.last };
    if let Some(n) = keep {
        pods.truncate(n);
    }

    if args.quiet {
        let ids: String = pods.iter().map(|p| format!("{}\n", p.id)).collect();
        return output::print_stdout(&ids);
    }
    match args.output {
        Format::Table => {
            let now = SystemTime::now();
            let mut table = Table::new(&[
                "POD ID",
                "CREATED",
                "STATE",
                "NAME",
                "NAMESPACE",
                "ATTEMPT",
                "RUNTIME",
            ]);
            for pod in &pods {
                let meta = metadata(pod);
                table.row(vec![
                    short_id(&pod.id, args.no_trunc),
                    ago(pod.created_at, now),
                    pod_state(pod.state).to_owned(),
                    meta.name,
                    meta.namespace,
                    meta.attempt.to_string(),
                    runtime_handler(&pod.runtime_handler).to_owned(),
                ]);
            }
            table.print()
        }
        format => {
            let response = api::ListPodSandboxResponse { items: pods };
            output::print_value(&output::proto_json(&response)?, format)
        }
    }
}

/// The pod state as crictl words it.
pub fn pod_state(state: i32) -> &'static str {
    match api::PodSandboxState::try_from(state) {
        Ok(api::PodSandboxState::SandboxReady) => "Ready",
        Ok(api::PodSandboxState::SandboxNotready) => "NotReady",
        Err(_) => "Unknown",
    }
}

fn runtime_handler(handler: &str) -> &str {
    if handler.is_empty() {
        "(default)"
    } else {
        handler
    }
}

pub async fn inspect(client: &CriClient, args: &InspectArgs) -> Result<()> {
    for prefix in &args.ids {
        let id = resolve::pod(client, prefix).await?;
        let response = client.pod_sandbox_status(&id, true).await?;
        let mut value = serde_json::Map::new();
        if let Some(status) = &response.status {
            value.insert("status".to_owned(), output::proto_json(status)?);
        }
        value.insert("info".to_owned(), info_map(&response.info));
        output::print_value(&serde_json::Value::Object(value), args.output)?;
    }
    Ok(())
}

/// The runtime's verbose info: a map whose values are JSON documents in strings.
pub fn info_map(info: &HashMap<String, String>) -> serde_json::Value {
    let mut keys: Vec<&String> = info.keys().collect();
    keys.sort();
    let map = keys
        .into_iter()
        .map(|k| {
            let raw = &info[k];
            let value = serde_json::from_str(raw)
                .unwrap_or_else(|_| serde_json::Value::String(raw.clone()));
            (k.clone(), value)
        })
        .collect();
    serde_json::Value::Object(map)
}

pub async fn stop(client: &CriClient, args: &IdsArgs) -> Result<()> {
    for prefix in &args.ids {
        let id = resolve::pod(client, prefix).await?;
        client.stop_pod_sandbox(&id).await?;
        output::print_stdout(&format!("Stopped sandbox {id}\n"))?;
    }
    Ok(())
}

pub async fn remove(client: &CriClient, args: &RmpArgs) -> Result<()> {
    let pods = client.list_pod_sandbox(None).await?;
    let ids: Vec<String> = if args.all {
        pods.iter().map(|p| p.id.clone()).collect()
    } else {
        let mut ids = Vec::new();
        for prefix in &args.ids {
            ids.push(resolve::unique_prefix(
                "pod sandbox",
                prefix,
                pods.iter().map(|p| p.id.as_str()),
            )?);
        }
        ids
    };
    let mut failed = 0;
    for id in ids {
        let ready = pods
            .iter()
            .any(|p| p.id == id && p.state == api::PodSandboxState::SandboxReady as i32);
        let result = async {
            if ready {
                if !args.force {
                    bail!("pod sandbox {id} is running, stop it first or use --force");
                }
                client.stop_pod_sandbox(&id).await?;
            }
            client.remove_pod_sandbox(&id).await?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => output::print_stdout(&format!("Removed sandbox {id}\n"))?,
            Err(e) => {
                eprintln!("bosun: error: removing pod sandbox {id}: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} pod sandbox(es) could not be removed");
    }
    Ok(())
}
