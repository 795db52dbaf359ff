//! The pod lifecycle event generator (kubelet's `pkg/kubelet/pleg`): tells the daemon which
//! pods' containers changed in the runtime. containerd's task-exit events make a death seen
//! at once; a relist of every sandbox and container each second is the safety net, and also
//! names the pods the runtime holds, so that pods no source wants are found.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bosun_cri::{ContainerdClient, CriClient, CRI_NAMESPACE};
use futures::StreamExt;
use tokio::sync::mpsc::UnboundedSender;

use crate::pod::observed::{keys, pod_digests};

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
    loop {
        tokio::select! {
            () = events.closed() => break,
            Some(container_id) = exits.recv() => {
                tracing::debug!(%container_id, "container exited");
                tokio::spawn(pod_of_exited(client.clone(), container_id, events.clone()));
            }
            _ = relist.tick() => {
                let listed = tokio::try_join!(client.list_pod_sandbox(None), client.list_containers(None));
                match listed {
                    Ok((sandboxes, containers)) => {
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
            }
        }
    }
    watcher.abort();
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
