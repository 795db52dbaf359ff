//! The pod lifecycle event generator (kubelet's `pkg/kubelet/pleg`): tells the daemon which
//! pods' containers changed in the runtime. containerd's task-exit events make a death seen
//! at once; a relist of every sandbox and container each second is the safety net, and also
//! names the pods the runtime holds, so that pods no source wants are found. Each relist sets
//! kubelet's running pod and container counts and is timed, as kubelet's is.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bosun_cri::{api, ContainerdClient, CriClient, CRI_NAMESPACE};
use futures::StreamExt;
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::{self, ContainerCounts};
use crate::pod::observed::{keys, pod_digests, sandboxes_by_pod};

/// How often every sandbox and container is listed (kubelet's PLEG relist period).
pub const RELIST: Duration = Duration::from_secs(1);

/// What the generator reports.
#[derive(Debug, PartialEq, Eq)]
pub enum PodLifecycleEvent {
    /// A container of the pod `uid` exited, or its sandboxes or containers changed.
    Changed(String),
    /// A relist: every pod UID the runtime holds with bosun's labels.
    Relisted(Vec<String>),
}

/// Runs the generator until `events` is closed.
pub async fn run(client: CriClient, socket: PathBuf, events: UnboundedSender<PodLifecycleEvent>) {
    let (exit_tx, mut exits) = tokio::sync::mpsc::unbounded_channel::<String>();
    let watcher = tokio::spawn(watch_exits(socket, exit_tx));
    let mut relist = tokio::time::interval(RELIST);
    relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut digests: HashMap<String, u64> = HashMap::new();
    // When the last relist that listed the runtime began.
    let mut last_relist: Option<Instant> = None;
    loop {
        tokio::select! {
            () = events.closed() => break,
            Some(container_id) = exits.recv() => {
                tracing::debug!(%container_id, "container exited");
                tokio::spawn(pod_of_exited(client.clone(), container_id, events.clone()));
            }
            _ = relist.tick() => {
                let began = Instant::now();
                if let Some(last) = last_relist {
                    metrics::global().observe_relist_interval(began.duration_since(last));
                }
                let listed = client.relist().await;
                match listed {
                    Ok((sandboxes, containers)) => {
                        last_relist = Some(began);
                        let (running_pods, by_state) = running(&sandboxes, &containers);
                        metrics::global().set_running(running_pods, by_state);
                        let now = pod_digests(&sandboxes, &containers);
                        for (uid, digest) in &now {
                            if digests.get(uid) != Some(digest) {
                                let _ = events.send(PodLifecycleEvent::Changed(uid.clone()));
                            }
                        }
                        // A pod whose last sandbox went away changed too.
                        for uid in digests.keys().filter(|uid| !now.contains_key(*uid)) {
                            let _ = events.send(PodLifecycleEvent::Changed(uid.clone()));
                        }
                        let _ = events.send(PodLifecycleEvent::Relisted(now.keys().cloned().collect()));
                        digests = now;
                    }
                    Err(e) => tracing::warn!(error = %e, "relisting the runtime's pods"),
                }
                metrics::global().observe_relist(began.elapsed());
            }
        }
    }
    watcher.abort();
}

/// What kubelet counts at a relist among the pods bosun runs: those with a ready sandbox, and
/// their containers by state.
fn running(
    sandboxes: &[api::PodSandbox],
    containers: &[api::Container],
) -> (usize, ContainerCounts) {
    let pods = sandboxes_by_pod(sandboxes);
    let ready = api::PodSandboxState::SandboxReady as i32;
    let running_pods = pods
        .values()
        .filter(|sandboxes| sandboxes.iter().any(|s| s.state == ready))
        .count();
    let mut by_state = ContainerCounts::default();
    let ours = containers.iter().filter(|c| {
        c.labels
            .get(keys::POD_UID)
            .is_some_and(|uid| pods.contains_key(uid))
    });
    for container in ours {
        let count = match api::ContainerState::try_from(container.state) {
            Ok(api::ContainerState::ContainerCreated) => &mut by_state.created,
            Ok(api::ContainerState::ContainerRunning) => &mut by_state.running,
            Ok(api::ContainerState::ContainerExited) => &mut by_state.exited,
            Ok(api::ContainerState::ContainerUnknown) | Err(_) => &mut by_state.unknown,
        };
        *count += 1;
    }
    (running_pods, by_state)
}

/// Sends the pod UID of a container whose task exited, once CRI reports it exited too:
/// containerd's CRI plugin learns of the exit from the same event, a moment later, and a
/// worker woken before that would see the container still running.
async fn pod_of_exited(
    client: CriClient,
    container_id: String,
    events: UnboundedSender<PodLifecycleEvent>,
) {
    const SETTLE: Duration = Duration::from_millis(5);
    for _ in 0..400 {
        match client.container_status(&container_id, false).await {
            Ok(r) => {
                let Some(status) = r.status else { return };
                if status.state != bosun_cri::api::ContainerState::ContainerRunning as i32 {
                    if let Some(uid) = status.labels.get(keys::POD_UID) {
                        let _ = events.send(PodLifecycleEvent::Changed(uid.clone()));
                    }
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(%container_id, error = %e, "status of an exited container");
                return;
            }
        }
        tokio::time::sleep(SETTLE).await;
    }
}

/// Forwards the IDs of containers whose task exited, resubscribing when the stream ends.
async fn watch_exits(socket: PathBuf, tx: UnboundedSender<String>) {
    loop {
        let subscribed = async {
            let containerd = ContainerdClient::connect(&socket).await?;
            containerd.task_exits(Some(CRI_NAMESPACE)).await
        }
        .await;
        match subscribed {
            Ok(exits) => {
                let mut exits = Box::pin(exits);
                while let Some(exit) = exits.next().await {
                    match exit {
                        Ok(exit) if exit.id == exit.container_id => {
                            if tx.send(exit.container_id).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "containerd event stream");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "subscribing to containerd's task exits"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(uid: &str, ours: bool) -> HashMap<String, String> {
        let mut labels = HashMap::from([(keys::POD_UID.to_owned(), uid.to_owned())]);
        if ours {
            labels.insert(
                keys::MANAGED_BY.to_owned(),
                keys::MANAGED_BY_VALUE.to_owned(),
            );
        }
        labels
    }

    fn sandbox(uid: &str, state: api::PodSandboxState, ours: bool) -> api::PodSandbox {
        api::PodSandbox {
            id: format!("sandbox-{uid}-{}", state as i32),
            state: state as i32,
            labels: labels(uid, ours),
            ..Default::default()
        }
    }

    fn container(uid: &str, state: api::ContainerState) -> api::Container {
        api::Container {
            state: state as i32,
            labels: labels(uid, false),
            ..Default::default()
        }
    }

    #[test]
    fn a_relist_counts_the_pods_with_a_ready_sandbox_and_their_containers_by_state() {
        use api::ContainerState::*;
        use api::PodSandboxState::*;
        let sandboxes = [
            // Re-created: an old sandbox stopped, the new one ready; one pod.
            sandbox("a", SandboxNotready, true),
            sandbox("a", SandboxReady, true),
            // Stopped: held, not running.
            sandbox("b", SandboxNotready, true),
            // Not bosun's.
            sandbox("c", SandboxReady, false),
        ];
        let containers = [
            container("a", ContainerRunning),
            container("a", ContainerExited),
            container("a", ContainerCreated),
            container("b", ContainerExited),
            container("c", ContainerRunning),
            container("none", ContainerRunning),
        ];
        assert_eq!(
            running(&sandboxes, &containers),
            (
                1,
                ContainerCounts {
                    created: 1,
                    running: 1,
                    exited: 2,
                    unknown: 0,
                }
            )
        );
    }
}
