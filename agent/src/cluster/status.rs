//! The status manager's API half (kubelet's `status_manager.go` syncPod): follows the pod
//! store and patches `pods/status` of the pods that came from the API server, only when
//! their status changed, with the pod's UID in the patch so that a pod deleted and created
//! again under the same name is never written by mistake. A pod bosun is done with (its
//! worker terminated it, or it never ran) is deleted from the API with grace 0 and its UID as
//! precondition, which ends a graceful deletion. Failed writes are retried with backoff, with
//! the latest status.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};

use tokio::sync::mpsc::UnboundedReceiver;

use super::{delete_pod, patch_pod_status};
use crate::source::from_api;
use crate::store::{ObjectKey, PodStore};
use crate::util::sleep_or_never;

/// Longest wait between two attempts at a failing write.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What was last written for a pod.
struct Written {
    uid: String,
    status: Option<PodStatus>,
}

/// Runs until the task is dropped. `finished` names the pods (key and UID) whose API
/// objects are to be deleted.
pub async fn run(
    client: kube::Client,
    pods: PodStore,
    mut finished: UnboundedReceiver<(ObjectKey, String)>,
) {
    let mut changes = pods.subscribe();
    let mut written: HashMap<ObjectKey, Written> = HashMap::new();
    let mut pending: BTreeSet<ObjectKey> = pods.entries().into_iter().map(|(k, _)| k).collect();
    let mut deletions: BTreeMap<ObjectKey, String> = BTreeMap::new();
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut failed = false;
        for key in std::mem::take(&mut pending) {
            let Some(pod) = pods.get(&key).filter(|pod| from_api(pod)) else {
                continue;
            };
            if let Err(e) = write_status(&client, &key, &pod, &mut written).await {
                tracing::warn!(pod = %key, error = %e, "writing pod status to the API server; retrying");
                pending.insert(key);
                failed = true;
            }
        }
        for (key, uid) in std::mem::take(&mut deletions) {
            written.remove(&key);
            if let Err(e) = delete_pod(&client, &key, &uid).await {
                tracing::warn!(pod = %key, error = %e, "deleting a finished pod; retrying");
                deletions.insert(key, uid);
                failed = true;
            }
        }
        let retry = failed.then_some(backoff);
        backoff = if failed {
            (backoff * 2).min(MAX_BACKOFF)
        } else {
            Duration::from_millis(200)
        };
        tokio::select! {
            changed = changes.changed() => pending.extend(changed.keys),
            Some((key, uid)) = finished.recv() => {
                deletions.insert(key, uid);
            }
            () = sleep_or_never(retry) => {}
        }
    }
}

/// Patches the status of `pod` if it differs from what was last written.
async fn write_status(
    client: &kube::Client,
    key: &ObjectKey,
    pod: &Pod,
    written: &mut HashMap<ObjectKey, Written>,
) -> Result<(), kube::Error> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if written
        .get(key)
        .is_some_and(|w| w.uid == uid && w.status == pod.status)
    {
        return Ok(());
    }
    let started = std::time::Instant::now();
    patch_pod_status(client, key, &uid, pod.status.as_ref()).await?;
    tracing::debug!(pod = %key, took_ms = started.elapsed().as_millis() as u64, "pod status written");
    written.insert(
        key.clone(),
        Written {
            uid,
            status: pod.status.clone(),
        },
    );
    Ok(())
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod status_tests;
