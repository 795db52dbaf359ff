//! `ps`, `inspect`, `stop`, `rm`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use bosun_cri::api;
use bosun_cri::CriClient;
use clap::{Args, ValueEnum};

use super::output::{self, ago, short_id, Format, ListOutput, Table};
use super::remove::{self, Listed};
use super::{parse_label, resolve, InspectArgs};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ContainerStateArg {
    Created,
    Running,
    Exited,
    Unknown,
}

impl ContainerStateArg {
    fn to_api(self) -> api::ContainerState {
        match self {
            ContainerStateArg::Created => api::ContainerState::ContainerCreated,
            ContainerStateArg::Running => api::ContainerState::ContainerRunning,
            ContainerStateArg::Exited => api::ContainerState::ContainerExited,
            ContainerStateArg::Unknown => api::ContainerState::ContainerUnknown,
        }
    }
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show all containers (by default only running ones).
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only the container with this ID (or ID prefix).
    #[arg(long)]
    pub id: Option<String>,
    /// Only containers whose name contains this.
    #[arg(long)]
    pub name: Option<String>,
    /// Only containers of this pod sandbox (ID or ID prefix).
    #[arg(short = 'p', long)]
    pub pod: Option<String>,
    /// Only containers with this label (key=value); repeat for several.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Only containers in this state.
    #[arg(short = 's', long, value_enum)]
    pub state: Option<ContainerStateArg>,
    /// Only containers whose image contains this.
    #[arg(long)]
    pub image: Option<String>,
    /// Only the most recently created container.
    #[arg(short = 'l', long)]
    pub latest: bool,
    /// Only the N most recently created containers.
    #[arg(short = 'n', long, value_name = "N")]
    pub last: Option<usize>,
    #[command(flatten)]
    pub list: ListOutput,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Container IDs (or unique prefixes).
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Seconds to wait after the stop signal before killing.
    #[arg(short = 't', long, default_value_t = 0)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Container IDs (or unique prefixes).
    #[arg(required_unless_present = "all")]
    pub ids: Vec<String>,
    /// Stop running containers first.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Remove all containers.
    #[arg(short = 'a', long, conflicts_with = "ids")]
    pub all: bool,
}

pub async fn list(client: &CriClient, args: &PsArgs) -> Result<()> {
    let mut filter = api::ContainerFilter {
        label_selector: args.labels.iter().cloned().collect::<HashMap<_, _>>(),
        ..Default::default()
    };
    let state = args
        .state
        .map(ContainerStateArg::to_api)
        .or((!args.all).then_some(api::ContainerState::ContainerRunning));
    if let Some(state) = state {
        filter.state = Some(api::ContainerStateValue {
            state: state as i32,
        });
    }
    let pods = client.list_pod_sandbox(None).await?;
    if let Some(pod) = &args.pod {
        filter.pod_sandbox_id =
            resolve::unique_prefix("pod sandbox", pod, pods.iter().map(|p| p.id.as_str()))?;
    }
    let mut containers = client.list_containers(Some(filter)).await?;
    if let Some(id) = &args.id {
        containers.retain(|c| c.id.starts_with(id.as_str()));
    }
    if let Some(name) = &args.name {
        containers.retain(|c| {
            c.metadata
                .as_ref()
                .is_some_and(|m| m.name.contains(name.as_str()))
        });
    }
    if let Some(image) = &args.image {
        containers.retain(|c| {
            image_name(c).contains(image.as_str()) || c.image_ref.contains(image.as_str())
        });
    }
    containers.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| a.id.cmp(&b.id))
    });
    let keep = if args.latest { Some(1) } else { args.last };
    if let Some(n) = keep {
        containers.truncate(n);
    }

    if args.list.quiet {
        let ids: String = containers.iter().map(|c| format!("{}\n", c.id)).collect();
        return output::print_stdout(&ids);
    }
    match args.list.output {
        Format::Table => {
            let pod_names: HashMap<&str, &str> = pods
                .iter()
                .map(|p| {
                    let name = p.metadata.as_ref().map_or("", |m| m.name.as_str());
                    (p.id.as_str(), name)
                })
                .collect();
            let now = SystemTime::now();
            let mut table = Table::new(&[
                "CONTAINER",
                "IMAGE",
                "CREATED",
                "STATE",
                "NAME",
                "ATTEMPT",
                "POD ID",
                "POD",
            ]);
            for c in &containers {
                let meta = c.metadata.clone().unwrap_or_default();
                let image = image_name(c);
                let image = if image.starts_with("sha256:") {
                    short_id(&image, args.list.no_trunc)
                } else {
                    image
                };
                table.row(vec![
                    short_id(&c.id, args.list.no_trunc),
                    image,
                    ago(c.created_at, now),
                    container_state(c.state).to_owned(),
                    meta.name,
                    meta.attempt.to_string(),
                    short_id(&c.pod_sandbox_id, args.list.no_trunc),
                    pod_names
                        .get(c.pod_sandbox_id.as_str())
                        .copied()
                        .unwrap_or("")
                        .to_owned(),
                ]);
            }
            table.print()
        }
        format => {
            let response = api::ListContainersResponse { containers };
            output::print_value(&output::proto_json(&response)?, format)
        }
    }
}

fn image_name(c: &api::Container) -> String {
    c.image
        .as_ref()
        .map(|i| i.image.clone())
        .unwrap_or_default()
}

/// The container state as crictl words it.
pub fn container_state(state: i32) -> &'static str {
    match api::ContainerState::try_from(state) {
        Ok(api::ContainerState::ContainerCreated) => "Created",
        Ok(api::ContainerState::ContainerRunning) => "Running",
        Ok(api::ContainerState::ContainerExited) => "Exited",
        Ok(api::ContainerState::ContainerUnknown) | Err(_) => "Unknown",
    }
}

pub async fn inspect(client: &CriClient, args: &InspectArgs) -> Result<()> {
    for prefix in &args.ids {
        let id = resolve::container(client, prefix).await?;
        let response = client.container_status(&id, true).await?;
        output::print_inspected(response.status.as_ref(), &response.info, args.output)?;
    }
    Ok(())
}

pub async fn stop(client: &CriClient, args: &StopArgs) -> Result<()> {
    for prefix in &args.ids {
        let id = resolve::container(client, prefix).await?;
        client
            .stop_container(&id, Duration::from_secs(args.timeout))
            .await?;
        output::print_stdout(&format!("{id}\n"))?;
    }
    Ok(())
}

pub async fn remove(client: &CriClient, args: &RmArgs) -> Result<()> {
    let listed = client
        .list_containers(None)
        .await?
        .into_iter()
        .map(|c| Listed {
            running: c.state == api::ContainerState::ContainerRunning as i32,
            id: c.id,
        })
        .collect();
    let targets = remove::targets("container", args.all, &args.ids, listed)?;
    remove::remove_each(
        "container",
        targets,
        args.force,
        async |id| client.stop_container(id, Duration::ZERO).await,
        async |id| client.remove_container(id).await,
        |id| format!("{id}\n"),
    )
    .await
}
