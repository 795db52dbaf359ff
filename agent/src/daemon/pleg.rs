//! The pod lifecycle event generator (kubelet's `pkg/kubelet/pleg`): tells the daemon which
//! pods' containers changed in the runtime. containerd's lifecycle events drive it, as
//! kubelet's evented PLEG is driven by CRI's container events: an exit is reported at once
//! (once CRI shows it), and any start, exit or removal has every sandbox and container
//! relisted within a second, which reports the pods whose containers changed, names the pods
//! the runtime holds (so that pods no source wants are found) and sets kubelet's running pod
//! and container counts. With nothing happening, a relist every five minutes is the safety
//! net; while the event stream is down, the relist runs every second, as kubelet's generic
//! PLEG does. Each relist is timed, as kubelet's is.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bosun_cri::{api, ContainerdClient, CriClient, LifecycleEvent, CRI_NAMESPACE};
use futures::StreamExt;
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::{self, ContainerCounts};
use crate::pod::observed::{keys, pod_digests, sandboxes_by_pod};

/// How soon the runtime is relisted after a lifecycle event, and how often while the event
/// stream is down (kubelet's generic PLEG relist period).
pub const RELIST: Duration = Duration::from_secs(1);

/// How often the runtime is relisted while the event stream is up and quiet (kubelet's
/// evented PLEG relist period).
pub const QUIET_RELIST: Duration = Duration::from_secs(300);

/// What the generator reports.
#[derive(Debug, PartialEq, Eq)]
pub enum PodLifecycleEvent {
    /// A container of the pod `uid` exited, or its sandboxes or containers changed.
    Changed(String),
    /// A relist: every pod UID the runtime holds with bosun's labels.
    Relisted(Vec<String>),
}

/// What the event watcher tells the generator.
enum Watched {
    /// The stream is registered: events from now on arrive. Those before may have been lost.
    Subscribed,
    /// The stream ended; until the next `Subscribed`, events are lost.
    Lost,
    Event(LifecycleEvent),
}

/// When the next relist is due: a second after the last one while something happened since
/// (or the event stream is down), the quiet period otherwise.
fn next_relist(last: Option<Instant>, changed: bool, subscribed: bool) -> Instant {
    match last {
        None => Instant::now(),
        Some(last) if changed || !subscribed => last + RELIST,
        Some(last) => last + QUIET_RELIST,
    }
}

/// Runs the generator until `events` is closed.
pub async fn run(client: CriClient, socket: PathBuf, events: UnboundedSender<PodLifecycleEvent>) {
    let (watched_tx, mut watched) = tokio::sync::mpsc::unbounded_channel::<Watched>();
    let watcher = tokio::spawn(watch_lifecycle(socket, watched_tx));
    let mut digests: HashMap<String, u64> = HashMap::new();
    // When the last relist began, and the last that listed the runtime (what kubelet's relist
    // interval is measured from).
    let mut last_relist: Option<Instant> = None;
    let mut last_listed: Option<Instant> = None;
    // Whether anything happened in the runtime since that relist began.
    let mut changed = true;
    let mut subscribed = false;
    loop {
        let due = next_relist(last_relist, changed, subscribed);
        tokio::select! {
            () = events.closed() => break,
            Some(watched) = watched.recv() => match watched {
                Watched::Subscribed => {
                    subscribed = true;
                    changed = true;
                }
                Watched::Lost => subscribed = false,
                Watched::Event(event) => {
                    changed = true;
                    if let LifecycleEvent::Exited { container_id, .. } = event {
                        tracing::debug!(%container_id, "container exited");
                        tokio::spawn(pod_of_exited(client.clone(), container_id, events.clone()));
                    }
                }
            },
            () = tokio::time::sleep_until(due.into()) => {
                let began = Instant::now();
                if let Some(last) = last_listed {
                    metrics::global().observe_relist_interval(began.duration_since(last));
                }
                // Events from here on are for the next relist.
                changed = false;
                let listed = client.relist().await;
                match listed {
                    Ok((sandboxes, containers)) => {
                        last_listed = Some(began);
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
                    Err(e) => {
                        tracing::warn!(error = %e, "relisting the runtime's pods");
                        changed = true;
                    }
                }
                last_relist = Some(began);
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

/// Sends the pod UID of a container or sandbox whose task exited, once CRI reports it exited
/// too: containerd's CRI plugin records the exit a moment after the task is reaped, and a
/// worker woken before that would see the container still running.
async fn pod_of_exited(
    client: CriClient,
    container_id: String,
    events: UnboundedSender<PodLifecycleEvent>,
) {
    const SETTLE: Duration = Duration::from_millis(5);
    for _ in 0..400 {
        match exit_seen(&client, &container_id).await {
            Ok(ExitSeen::Not) => tokio::time::sleep(SETTLE).await,
            Ok(ExitSeen::By(uid)) => {
                let _ = events.send(PodLifecycleEvent::Changed(uid));
                return;
            }
            Ok(ExitSeen::NotOurs) => return,
            Err(e) => {
                tracing::debug!(%container_id, error = %e, "status of an exited container");
                return;
            }
        }
    }
}

/// Whether CRI shows an exit yet.
enum ExitSeen {
    /// CRI still shows the container running (or the sandbox ready).
    Not,
    /// It shows it stopped, in the pod with this UID.
    By(String),
    /// Stopped, but no pod of bosun's.
    NotOurs,
}

/// Whether CRI shows the container (or sandbox) `id` stopped.
async fn exit_seen(client: &CriClient, id: &str) -> Result<ExitSeen, bosun_cri::CriError> {
    let labels = match client.container_status(id, false).await {
        Ok(r) => match r.status {
            Some(s) if s.state == api::ContainerState::ContainerRunning as i32 => {
                return Ok(ExitSeen::Not)
            }
            Some(s) => s.labels,
            None => HashMap::new(),
        },
        // Not a container: a sandbox's own process.
        Err(e) if e.is_not_found() => match client.pod_sandbox_status(id, false).await?.status {
            Some(s) if s.state == api::PodSandboxState::SandboxReady as i32 => {
                return Ok(ExitSeen::Not)
            }
            Some(s) => s.labels,
            None => HashMap::new(),
        },
        Err(e) => return Err(e),
    };
    Ok(match labels.get(keys::POD_UID) {
        Some(uid) => ExitSeen::By(uid.clone()),
        None => ExitSeen::NotOurs,
    })
}

/// Forwards containerd's lifecycle events, resubscribing when the stream ends.
async fn watch_lifecycle(socket: PathBuf, tx: UnboundedSender<Watched>) {
    loop {
        let subscribed = async {
            let containerd = ContainerdClient::connect(&socket).await?;
            containerd.lifecycle_events(Some(CRI_NAMESPACE)).await
        }
        .await;
        match subscribed {
            Ok(stream) => {
                if tx.send(Watched::Subscribed).is_err() {
                    return;
                }
                let mut stream = Box::pin(stream);
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(event) => {
                            if tx.send(Watched::Event(event)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "containerd event stream");
                            break;
                        }
                    }
                }
                if tx.send(Watched::Lost).is_err() {
                    return;
                }
            }
            Err(e) => tracing::warn!(error = %e, "subscribing to containerd's lifecycle events"),
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
    fn the_relist_waits_for_quiet_only_while_events_arrive() {
        let last = Instant::now();
        // The first relist is at once.
        assert!(next_relist(None, false, true) <= Instant::now());
        // Something happened: a second after the last, subscribed or not.
        assert_eq!(next_relist(Some(last), true, true), last + RELIST);
        assert_eq!(next_relist(Some(last), true, false), last + RELIST);
        // Nothing happened, but events could have been missed: a second too.
        assert_eq!(next_relist(Some(last), false, false), last + RELIST);
        // Nothing happened and the stream is up: the quiet period.
        assert_eq!(next_relist(Some(last), false, true), last + QUIET_RELIST);
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
