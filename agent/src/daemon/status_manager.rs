//! The status manager (kubelet's `pkg/kubelet/status`): the one writer of pod status. Pod
//! workers hand it the status they computed; it keeps each pod, with that status, in the pod
//! store that the local API, the EndpointSlice controller and the policy enforcer read, and
//! announces only real changes (the store compares). In a cluster, a syncer that follows the
//! same store patches `pods/status` in the API server.
//!
//! The store is marked synced once every pod that the sources want has reported a status:
//! after a restart, readers that must not act on half a picture (the service proxy's first
//! write) wait for that.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::source::from_api;
use crate::store::{ObjectKey, PodStore, Source, Writer};

/// See the module documentation. Clones share one writer.
#[derive(Clone)]
pub struct StatusManager {
    writer: Writer<Pod>,
    expected: Arc<Mutex<Expected>>,
    /// Told the key and UID of each pod from the API server that bosun is done with, so
    /// that its API object can be deleted.
    finished: Option<UnboundedSender<(ObjectKey, String)>>,
}

#[derive(Default)]
struct Expected {
    /// The UIDs of the pods the sources want, once every source has listed them.
    wanted: Option<BTreeSet<String>>,
    /// The UIDs that have reported a status.
    reported: HashSet<String>,
    synced: bool,
}

impl StatusManager {
    /// A manager writing into a new pod store.
    pub fn new() -> (Self, PodStore) {
        let store = PodStore::new(&[Source::Local]);
        let manager = StatusManager {
            writer: store.writer(Source::Local),
            expected: Arc::default(),
            finished: None,
        };
        (manager, store)
    }

    /// From now on, the pods from the API server that bosun is done with (terminated, or
    /// deleted before they were admitted) are sent on the returned channel. Call before
    /// cloning the manager.
    pub fn report_finished(&mut self) -> UnboundedReceiver<(ObjectKey, String)> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.finished = Some(tx);
        rx
    }

    /// Forgets `pod`, which will not run (deleted before admission, or rejected and then
    /// deleted): its API object can go.
    pub fn finished_without_running(&self, pod: &Pod) {
        let key = ObjectKey::of(&pod.metadata);
        self.writer.delete(&key);
        self.report(key, pod);
    }

    fn report(&self, key: ObjectKey, pod: &Pod) {
        if let (Some(finished), Some(uid)) = (&self.finished, pod.metadata.uid.clone()) {
            if from_api(pod) {
                let _ = finished.send((key, uid));
            }
        }
    }

    /// The pods every source wants, once all of them have listed theirs.
    pub fn expect(&self, wanted: BTreeSet<String>) {
        let mut expected = self.lock();
        expected.reported.retain(|uid| wanted.contains(uid));
        expected.wanted = Some(wanted);
        self.mark_synced_if_complete(&mut expected);
    }

    /// Records `status` as the status of `pod` (its desired spec), keeping what kubelet
    /// keeps of the pod's own status: the scheduler's PodScheduled condition, and a terminal
    /// phase, which a pod never leaves.
    pub fn set_status(&self, pod: &Pod, status: Option<PodStatus>) {
        let key = ObjectKey::of(&pod.metadata);
        let status = status.map(|status| kept_from(pod.status.as_ref(), status));
        self.writer.update(&key, |held| {
            // Checked against what this writer set last as well (kubelet checks its own
            // cache): a worker's late report must not undo a terminal phase the API has
            // not echoed back yet.
            let own = held
                .filter(|held| held.metadata.uid == pod.metadata.uid)
                .and_then(|held| held.status.as_ref());
            let status = status.map(|status| kept_from(own, status));
            if let Some(held) = held.filter(|held| {
                held.status == status && held.spec == pod.spec && same_but_deletion(held, pod)
            }) {
                return Some(held.clone());
            }
            let mut next = pod.clone();
            next.status = status;
            // A pod being terminated keeps the deletion mark its worker set.
            if let Some(held) = held {
                if next.metadata.deletion_timestamp.is_none() {
                    next.metadata.deletion_timestamp = held.metadata.deletion_timestamp.clone();
                }
            }
            Some(Arc::new(next))
        });
        if let Some(uid) = pod.metadata.uid.clone() {
            let mut expected = self.lock();
            expected.reported.insert(uid);
            self.mark_synced_if_complete(&mut expected);
        }
    }

    /// Marks the pod as being terminated, as an API server marks a deleted pod: its
    /// endpoints stop taking new connections.
    pub fn terminating(&self, key: &ObjectKey) {
        self.writer.update(key, |held| {
            let held = held?;
            if held.metadata.deletion_timestamp.is_some() {
                return Some(held.clone());
            }
            let mut next = (**held).clone();
            next.metadata.deletion_timestamp = Some(Time(crate::events::now()));
            Some(Arc::new(next))
        });
    }

    /// Forgets a pod that is gone (its worker terminated it).
    pub fn remove(&self, key: &ObjectKey) {
        let held = self.writer.store().get(key);
        self.writer.delete(key);
        if let Some(held) = held {
            self.report(key.clone(), &held);
        }
    }

    /// The pod store written to.
    pub fn store(&self) -> &PodStore {
        self.writer.store()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Expected> {
        self.expected.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn mark_synced_if_complete(&self, expected: &mut Expected) {
        if expected.synced {
            return;
        }
        let Some(wanted) = &expected.wanted else {
            return;
        };
        if wanted.iter().all(|uid| expected.reported.contains(uid)) {
            expected.synced = true;
            // Writing what is there again marks the source synced without changing a pod.
            self.writer.replace(self.writer.store().list());
        }
    }
}

/// `status` with what it must keep of `previous`: PodScheduled, and a terminal phase.
fn kept_from(previous: Option<&PodStatus>, mut status: PodStatus) -> PodStatus {
    let Some(previous) = previous else {
        return status;
    };
    let terminal = |phase: Option<&str>| matches!(phase, Some("Succeeded" | "Failed"));
    if terminal(previous.phase.as_deref()) && !terminal(status.phase.as_deref()) {
        status.phase = previous.phase.clone();
    }
    if let Some(scheduled) = previous
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled")
    {
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        if !conditions.iter().any(|c| c.type_ == "PodScheduled") {
            conditions.insert(0, scheduled.clone());
        }
    }
    status
}

/// Whether the metadata of `held` is that of `pod`, leaving out the deletion mark a worker
/// may have set.
fn same_but_deletion(held: &Pod, pod: &Pod) -> bool {
    let (a, b) = (&held.metadata, &pod.metadata);
    (pod.metadata.deletion_timestamp.is_none() || a.deletion_timestamp == b.deletion_timestamp)
        && a.uid == b.uid
        && a.labels == b.labels
        && a.annotations == b.annotations
        && a.resource_version == b.resource_version
        && a.generation == b.generation
        && a.name == b.name
        && a.namespace == b.namespace
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": uid, "namespace": "default", "uid": uid},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        }))
        .expect("a pod")
    }

    fn running() -> Option<PodStatus> {
        Some(PodStatus {
            phase: Some("Running".into()),
            ..Default::default()
        })
    }

    #[test]
    fn the_store_is_synced_once_every_wanted_pod_reported() {
        let (manager, store) = StatusManager::new();
        manager.set_status(&pod("a"), running());
        assert!(!store.is_synced(), "the sources have not listed their pods");
        manager.expect(BTreeSet::from(["a".to_owned(), "b".to_owned()]));
        assert!(!store.is_synced());
        manager.set_status(&pod("b"), None);
        assert!(store.is_synced());
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn pod_scheduled_and_terminal_phases_are_kept() {
        use k8s_openapi::api::core::v1::PodCondition;
        let previous = PodStatus {
            phase: Some("Failed".into()),
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let kept = kept_from(Some(&previous), running().expect("a status"));
        assert_eq!(kept.phase.as_deref(), Some("Failed"));
        let types: Vec<&str> = kept
            .conditions
            .iter()
            .flatten()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(types, ["PodScheduled"]);
    }

    #[test]
    fn an_unchanged_status_is_no_change_and_termination_is_kept() {
        let (manager, store) = StatusManager::new();
        let mut changes = store.subscribe();
        manager.set_status(&pod("a"), running());
        assert_eq!(changes.take().keys.len(), 1);
        manager.set_status(&pod("a"), running());
        assert!(changes.take().is_empty());
        let key = ObjectKey::new("default", "a");
        manager.terminating(&key);
        assert_eq!(changes.take().keys.len(), 1);
        manager.set_status(&pod("a"), running());
        assert!(changes.take().is_empty(), "still terminating");
        assert!(store
            .get(&key)
            .is_some_and(|p| p.metadata.deletion_timestamp.is_some()));
        manager.remove(&key);
        assert!(store.is_empty());
    }
}
