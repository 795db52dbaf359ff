//! The status manager's API half (kubelet's `status_manager.go` syncPod): follows the pod
//! store and patches `pods/status` of the pods that came from the API server, only when
//! their status changed, with the pod's UID in the patch so that a pod deleted and created
//! again under the same name is never written by mistake. A pod the store forgets (its
//! worker terminated it) is deleted from the API with grace 0 and its UID as precondition,
//! which ends a graceful deletion. Failed writes are retried with backoff, with the latest
//! status.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::Api;

use super::from_api;
use crate::store::{ObjectKey, PodStore};
use crate::util::sleep_or_never;

/// Longest wait between two attempts at a failing write.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What was last written for a pod.
struct Written {
    uid: String,
    status: Option<PodStatus>,
}

/// Runs until the task is dropped.
pub async fn run(client: kube::Client, pods: PodStore) {
    let mut changes = pods.subscribe();
    let mut written: HashMap<ObjectKey, Written> = HashMap::new();
    let mut pending: BTreeSet<ObjectKey> = pods.entries().into_iter().map(|(k, _)| k).collect();
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut failed = BTreeSet::new();
        for key in std::mem::take(&mut pending) {
            let result = match pods.get(&key) {
                Some(pod) if from_api(&pod) => {
                    write_status(&client, &key, &pod, &mut written).await
                }
                Some(_) => Ok(()),
                None => match written.get(&key) {
                    Some(gone) => delete(&client, &key, &gone.uid).await.map(|()| {
                        written.remove(&key);
                    }),
                    None => Ok(()),
                },
            };
            if let Err(e) = result {
                tracing::warn!(pod = %key, error = %e, "writing pod status to the API server; retrying");
                failed.insert(key);
            }
        }
        let retry = (!failed.is_empty()).then_some(backoff);
        backoff = if failed.is_empty() {
            Duration::from_millis(200)
        } else {
            (backoff * 2).min(MAX_BACKOFF)
        };
        pending = failed;
        tokio::select! {
            changed = changes.changed() => pending.extend(changed.keys),
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
    let api: Api<Pod> = Api::namespaced(client.clone(), &key.namespace);
    let patch = serde_json::json!({
        "metadata": {"uid": uid},
        "status": pod.status,
    });
    let started = std::time::Instant::now();
    match api
        .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        // Gone, or another pod of that name: nothing of ours to write.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 || e.code == 422 => {
            tracing::debug!(pod = %key, code = e.code, "pod status not written: {}", e.message);
        }
        Err(e) => return Err(e),
    }
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

/// Deletes the API object of a pod bosun has finished with, at once and only if it is still
/// the same pod.
async fn delete(client: &kube::Client, key: &ObjectKey, uid: &str) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &key.namespace);
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&key.name, &params).await {
        Ok(_) => {
            tracing::info!(pod = %key, "pod deleted from the API server");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}
