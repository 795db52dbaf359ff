//! What the runtime holds for one pod, read back from CRI by the labels and annotations
//! bosun (like kubelet) puts on every sandbox and container. This is also how a restarted
//! bosun adopts what it finds: nothing is kept in memory that CRI does not also hold.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use bosun_cri::api;

/// Labels and annotations on CRI objects (kubelet's own keys, so tools that know kubelet
/// read bosun's pods the same way).
pub mod keys {
    pub use crate::pod::spec::{
        CONTAINER_HASH_ANNOTATION as CONTAINER_HASH, CONTAINER_NAME_LABEL as CONTAINER_NAME,
        POD_NAMESPACE_LABEL as POD_NAMESPACE, POD_NAME_LABEL as POD_NAME, POD_UID_LABEL as POD_UID,
        RESTART_COUNT_ANNOTATION as CONTAINER_RESTART_COUNT,
        TERMINATION_MESSAGE_PATH_ANNOTATION as TERMINATION_MESSAGE_PATH,
        TERMINATION_MESSAGE_POLICY_ANNOTATION as TERMINATION_MESSAGE_POLICY,
    };
    /// Marks sandboxes bosun created, so it never touches the runtime's other tenants.
    pub const MANAGED_BY: &str = "io.bosun.managed-by";
    pub const MANAGED_BY_VALUE: &str = "bosun";
}

/// One container as the runtime reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedContainer {
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    pub restart_count: u32,
    pub hash: String,
    pub state: ContainerState,
    pub created_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub image: String,
    pub image_ref: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

impl ObservedContainer {
    /// How long the container ran before it exited (zero if it never started).
    pub fn ran_for(&self) -> Duration {
        match (self.started_at, self.finished_at) {
            (Some(start), Some(end)) => end.duration_since(start).unwrap_or_default(),
            _ => Duration::ZERO,
        }
    }

    /// Reads a container from its CRI status; `None` if it lacks bosun's labels.
    pub fn from_status(status: &api::ContainerStatus, sandbox_id: &str) -> Option<Self> {
        let name = status.labels.get(keys::CONTAINER_NAME)?.clone();
        let annotations = &status.annotations;
        Some(ObservedContainer {
            id: status.id.clone(),
            sandbox_id: sandbox_id.to_owned(),
            name,
            restart_count: annotations
                .get(keys::CONTAINER_RESTART_COUNT)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0),
            hash: annotations
                .get(keys::CONTAINER_HASH)
                .cloned()
                .unwrap_or_default(),
            state: match api::ContainerState::try_from(status.state) {
                Ok(api::ContainerState::ContainerCreated) => ContainerState::Created,
                Ok(api::ContainerState::ContainerRunning) => ContainerState::Running,
                Ok(api::ContainerState::ContainerExited) => ContainerState::Exited,
                _ => ContainerState::Unknown,
            },
            created_at: from_nanos(status.created_at).unwrap_or(SystemTime::UNIX_EPOCH),
            started_at: from_nanos(status.started_at),
            finished_at: from_nanos(status.finished_at),
            exit_code: status.exit_code,
            reason: status.reason.clone(),
            message: status.message.clone(),
            image: status
                .image
                .as_ref()
                .map(|i| i.image.clone())
                .unwrap_or_default(),
            image_ref: status.image_ref.clone(),
        })
    }
}

/// One sandbox as the runtime reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedSandbox {
    pub id: String,
    pub attempt: u32,
    pub ready: bool,
    pub created_at: SystemTime,
    pub ip: String,
    pub additional_ips: Vec<String>,
}

/// Everything the runtime holds for one pod UID.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObservedPod {
    /// Newest first.
    pub sandboxes: Vec<ObservedSandbox>,
    /// All containers of all the pod's sandboxes, newest first.
    pub containers: Vec<ObservedContainer>,
}

impl ObservedPod {
    /// The newest sandbox, which is the pod's current one.
    pub fn sandbox(&self) -> Option<&ObservedSandbox> {
        self.sandboxes.first()
    }

    /// The newest container of this name in the current sandbox.
    pub fn latest(&self, name: &str) -> Option<&ObservedContainer> {
        let sandbox = self.sandbox()?;
        self.containers
            .iter()
            .find(|c| c.name == name && c.sandbox_id == sandbox.id)
    }

    /// The newest container of this name in any sandbox (for restart counts across
    /// sandbox re-creation).
    pub fn latest_anywhere(&self, name: &str) -> Option<&ObservedContainer> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// The container that ran before `latest` (for `lastState`).
    pub fn previous(&self, name: &str) -> Option<&ObservedContainer> {
        self.containers.iter().filter(|c| c.name == name).nth(1)
    }

    pub fn sort(&mut self) {
        self.sandboxes.sort_by(|a, b| {
            b.attempt
                .cmp(&a.attempt)
                .then(b.created_at.cmp(&a.created_at))
        });
        self.containers.sort_by(|a, b| {
            b.restart_count
                .cmp(&a.restart_count)
                .then(b.created_at.cmp(&a.created_at))
        });
    }
}

/// Groups sandboxes by pod UID from a `ListPodSandbox` answer (only bosun's own).
pub fn sandboxes_by_pod(sandboxes: &[api::PodSandbox]) -> HashMap<String, Vec<&api::PodSandbox>> {
    let mut by_pod: HashMap<String, Vec<&api::PodSandbox>> = HashMap::new();
    for sandbox in sandboxes {
        let ours = sandbox.labels.get(keys::MANAGED_BY).map(String::as_str)
            == Some(keys::MANAGED_BY_VALUE);
        if let (true, Some(uid)) = (ours, sandbox.labels.get(keys::POD_UID)) {
            by_pod.entry(uid.clone()).or_default().push(sandbox);
        }
    }
    by_pod
}

/// What a relist sees of each pod (kubelet's PLEG): a digest of its sandboxes' and
/// containers' IDs and states, by pod UID. A pod whose digest changed between two relists
/// had something happen to it that its worker must look at.
pub fn pod_digests(
    sandboxes: &[api::PodSandbox],
    containers: &[api::Container],
) -> HashMap<String, u64> {
    use std::hash::{Hash, Hasher};
    let mut parts: HashMap<String, Vec<(&str, i32)>> = HashMap::new();
    for (uid, sandboxes) in sandboxes_by_pod(sandboxes) {
        parts
            .entry(uid)
            .or_default()
            .extend(sandboxes.iter().map(|s| (s.id.as_str(), s.state)));
    }
    for c in containers {
        let list = c
            .labels
            .get(keys::POD_UID)
            .and_then(|uid| parts.get_mut(uid));
        if let Some(list) = list {
            // Offset so that a container's state never reads as a sandbox's.
            list.push((c.id.as_str(), 100 + c.state));
        }
    }
    parts
        .into_iter()
        .map(|(uid, mut list)| {
            list.sort_unstable();
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            list.hash(&mut hasher);
            (uid, hasher.finish())
        })
        .collect()
}

pub fn from_nanos(nanos: i64) -> Option<SystemTime> {
    u64::try_from(nanos)
        .ok()
        .filter(|n| *n > 0)
        .map(|n| SystemTime::UNIX_EPOCH + Duration::from_nanos(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(id: &str, uid: &str, state: api::PodSandboxState) -> api::PodSandbox {
        api::PodSandbox {
            id: id.to_owned(),
            state: state as i32,
            labels: HashMap::from([
                (keys::POD_UID.to_owned(), uid.to_owned()),
                (
                    keys::MANAGED_BY.to_owned(),
                    keys::MANAGED_BY_VALUE.to_owned(),
                ),
            ]),
            ..Default::default()
        }
    }

    fn container(id: &str, uid: &str, state: api::ContainerState) -> api::Container {
        api::Container {
            id: id.to_owned(),
            state: state as i32,
            labels: HashMap::from([(keys::POD_UID.to_owned(), uid.to_owned())]),
            ..Default::default()
        }
    }

    #[test]
    fn a_digest_changes_only_for_the_pod_that_changed() {
        use api::{ContainerState as C, PodSandboxState as S};
        let sandboxes = [
            sandbox("s1", "a", S::SandboxReady),
            sandbox("s2", "b", S::SandboxReady),
        ];
        let mut containers = vec![
            container("c1", "a", C::ContainerRunning),
            container("c2", "b", C::ContainerRunning),
        ];
        let before = pod_digests(&sandboxes, &containers);
        assert_eq!(before.len(), 2);
        containers[1].state = C::ContainerExited as i32;
        let after = pod_digests(&sandboxes, &containers);
        assert_eq!(before["a"], after["a"]);
        assert_ne!(before["b"], after["b"]);
        // The order the runtime lists things in does not matter.
        containers.reverse();
        assert_eq!(after, pod_digests(&sandboxes, &containers));
        // A new container instance is a change, and so is the sandbox's state.
        containers.push(container("c3", "a", C::ContainerCreated));
        assert_ne!(after["a"], pod_digests(&sandboxes, &containers)["a"]);
        let stopped = [
            sandbox("s1", "a", S::SandboxNotready),
            sandbox("s2", "b", S::SandboxReady),
        ];
        assert_ne!(after["a"], pod_digests(&stopped, &containers)["a"]);
    }

    #[test]
    fn sandboxes_of_others_are_not_ours() {
        let mut foreign = sandbox("s9", "z", api::PodSandboxState::SandboxReady);
        foreign.labels.remove(keys::MANAGED_BY);
        assert!(pod_digests(&[foreign], &[]).is_empty());
    }
}
