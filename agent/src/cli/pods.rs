//! `pods`, `inspectp`, `stopp`, `rmp`.

use std::collections::HashMap;
use std::time::SystemTime;

use anyhow::Result;
use bosun_cri::api;
use bosun_cri::CriClient;
use clap::{Args, ValueEnum};

use super::output::{self, ago, short_id, Format, ListOutput, Table};
use super::remove::{self, Listed};
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
    #[command(flatten)]
    pub list: ListOutput,
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

    if args.list.quiet {
        let ids: String = pods.iter().map(|p| format!("{}\n", p.id)).collect();
        return output::print_stdout(&ids);
    }
    match args.list.output {
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
                    short_id(&pod.id, args.list.no_trunc),
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
        output::print_inspected(response.status.as_ref(), &response.info, args.output)?;
    }
    Ok(())
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
    let listed = client
        .list_pod_sandbox(None)
        .await?
        .into_iter()
        .map(|p| Listed {
            running: p.state == api::PodSandboxState::SandboxReady as i32,
            id: p.id,
        })
        .collect();
    let targets = remove::targets("pod sandbox", args.all, &args.ids, listed)?;
    remove::remove_each(
        "pod sandbox",
        targets,
        args.force,
        async |id| client.stop_pod_sandbox(id).await,
        async |id| client.remove_pod_sandbox(id).await,
        |id| format!("Removed sandbox {id}\n"),
    )
    .await
}
