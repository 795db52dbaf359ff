//! `bosun get pods`: the daemon's pods as Kubernetes `v1.Pod` objects, printed as kubectl
//! prints them.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use super::output::{self, Table};

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(subcommand)]
    pub what: GetWhat,
}

#[derive(Debug, Subcommand)]
pub enum GetWhat {
    /// Pods the daemon runs, with their status.
    Pods(GetPodsArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GetFormat {
    Wide,
    Json,
    Yaml,
}

#[derive(Debug, Args)]
pub struct GetPodsArgs {
    /// Only this pod.
    pub name: Option<String>,
    /// Output format (default: a table).
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<GetFormat>,
    /// The daemon's root directory, where its API socket is.
    #[arg(long, default_value = super::run::DEFAULT_ROOT_DIR)]
    pub root_dir: PathBuf,
}

pub async fn get(args: &GetArgs) -> Result<()> {
    let GetWhat::Pods(args) = &args.what;
    let mut pods = bosun::api::get_pods(&bosun::daemon::api_socket(&args.root_dir)).await?;
    if let Some(name) = &args.name {
        pods.retain(|p| p.metadata.name.as_deref() == Some(name.as_str()));
        if pods.is_empty() {
            anyhow::bail!("pod {name:?} not found");
        }
    }
    match args.output {
        Some(GetFormat::Json) | Some(GetFormat::Yaml) => {
            let format = if args.output == Some(GetFormat::Json) {
                output::Format::Json
            } else {
                output::Format::Yaml
            };
            let value = match (&args.name, pods.as_slice()) {
                (Some(_), [pod]) => serde_json::to_value(pod)?,
                _ => serde_json::json!({"apiVersion": "v1", "kind": "List", "items": pods}),
            };
            output::print_value(&value, format)
        }
        wide => {
            let wide = wide == Some(GetFormat::Wide);
            let mut header = vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"];
            if wide {
                header.extend(["IP", "NODE"]);
            }
            let mut table = Table::new(&header);
            let now = SystemTime::now();
            for pod in &pods {
                let mut row = vec![
                    pod.metadata.name.clone().unwrap_or_default(),
                    ready_column(pod),
                    status_column(pod),
                    restarts_column(pod),
                    age(pod, now),
                ];
                if wide {
                    let status = pod.status.as_ref();
                    row.push(
                        status
                            .and_then(|s| s.pod_ip.clone())
                            .unwrap_or_else(|| "<none>".into()),
                    );
                    row.push(
                        pod.spec
                            .as_ref()
                            .and_then(|s| s.node_name.clone())
                            .unwrap_or_default(),
                    );
                }
                table.row(row);
            }
            table.print()
        }
    }
}

fn statuses(pod: &Pod) -> (&[ContainerStatus], &[ContainerStatus]) {
    let status = pod.status.as_ref();
    (
        status
            .and_then(|s| s.init_container_statuses.as_deref())
            .unwrap_or_default(),
        status
            .and_then(|s| s.container_statuses.as_deref())
            .unwrap_or_default(),
    )
}

fn sidecar_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .map(|c| c.name.clone())
        .collect()
}

/// `READY`: ready containers (sidecars included) out of all of them.
fn ready_column(pod: &Pod) -> String {
    let (init, regular) = statuses(pod);
    let sidecars = sidecar_names(pod);
    let total = pod.spec.as_ref().map_or(0, |s| s.containers.len()) + sidecars.len();
    let ready = regular.iter().filter(|s| s.ready).count()
        + init
            .iter()
            .filter(|s| s.ready && sidecars.contains(&s.name))
            .count();
    format!("{ready}/{total}")
}

/// `STATUS`, as kubectl words it: the phase, or the reason a container gives.
fn status_column(pod: &Pod) -> String {
    let (init, regular) = statuses(pod);
    let sidecars = sidecar_names(pod);
    let mut reason = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".into());
    let init_total = init.len();
    for (i, s) in init.iter().enumerate() {
        let state = s.state.clone().unwrap_or_default();
        if let Some(t) = &state.terminated {
            if t.exit_code == 0 {
                continue;
            }
            reason = format!(
                "Init:{}",
                t.reason
                    .clone()
                    .unwrap_or_else(|| format!("ExitCode:{}", t.exit_code))
            );
            return reason;
        }
        if sidecars.contains(&s.name) && s.started == Some(true) {
            continue;
        }
        if let Some(w) = state.waiting.as_ref().and_then(|w| w.reason.clone()) {
            if w != "PodInitializing" {
                return format!("Init:{w}");
            }
        }
        return format!("Init:{i}/{init_total}");
    }
    let mut running = false;
    for s in regular.iter().rev() {
        let state = s.state.clone().unwrap_or_default();
        if let Some(w) = state.waiting.as_ref().and_then(|w| w.reason.clone()) {
            reason = w;
        } else if let Some(t) = &state.terminated {
            reason = t
                .reason
                .clone()
                .unwrap_or_else(|| format!("ExitCode:{}", t.exit_code));
        } else if state.running.is_some() && s.ready {
            running = true;
        }
    }
    if reason == "Completed" && running {
        reason = "Running".into();
    }
    reason
}

/// `RESTARTS`: the sum over containers, with how long ago the last one was.
fn restarts_column(pod: &Pod) -> String {
    let (init, regular) = statuses(pod);
    let restarts: i32 = init.iter().chain(regular).map(|s| s.restart_count).sum();
    let last = init
        .iter()
        .chain(regular)
        .filter_map(|s| {
            s.last_state
                .as_ref()?
                .terminated
                .as_ref()?
                .finished_at
                .clone()
        })
        .max();
    match last {
        Some(t) if restarts > 0 => {
            let finished = SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(u64::try_from(t.0.as_second()).unwrap_or(0));
            let ago = SystemTime::now()
                .duration_since(finished)
                .unwrap_or_default();
            format!("{restarts} ({} ago)", short_age(ago))
        }
        _ => restarts.to_string(),
    }
}

fn age(pod: &Pod, now: SystemTime) -> String {
    let Some(start) = pod.status.as_ref().and_then(|s| s.start_time.clone()) else {
        return "<unknown>".into();
    };
    let started = SystemTime::UNIX_EPOCH
        + std::time::Duration::from_secs(u64::try_from(start.0.as_second()).unwrap_or(0));
    short_age(now.duration_since(started).unwrap_or_default())
}

/// kubectl's short ages: `45s`, `3m12s`, `5h`, `2d`.
fn short_age(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=599 => format!("{}m{}s", s / 60, s % 60),
        600..=10_799 => format!("{}m", s / 60),
        10_800..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}
