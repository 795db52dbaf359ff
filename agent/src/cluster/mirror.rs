//! Mirror pods (kubelet's `pod/mirror_client.go` and the mirror half of the status manager):
//! each static pod this node runs has a copy in the API server, so that `kubectl get pods`
//! shows it. The mirror carries `kubernetes.io/config.mirror` (the static pod's hash, which is
//! its UID here), the other `config.*` annotations, and an owner reference to the Node, which
//! the NodeRestriction admission plugin requires. A mirror that is deleted, or whose hash is
//! not its static pod's, is made again; one whose static pod is gone is deleted. The static
//! pod's status is written onto its mirror.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::PostParams;
use kube::Api;

use super::{delete_pod, patch_pod_status};
use crate::source::{from_api, CONFIG_HASH_ANNOTATION};
use crate::store::{ObjectKey, PodStore, Store};
use crate::util::sleep_or_never;

/// The annotation that marks a mirror pod, holding its static pod's hash.
pub const CONFIG_MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Whether `pod` (as the API server has it) is a mirror pod.
pub fn is_mirror(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(CONFIG_MIRROR_ANNOTATION))
}

/// Keeps the mirror pods (`mirrors`: those the API server has for this node) in line with
/// the static pods of `pods`, until the task is dropped.
pub async fn run(client: kube::Client, node: String, pods: PodStore, mirrors: Store<Pod>) {
    let mut pod_changes = pods.subscribe();
    let mut mirror_changes = mirrors.subscribe();
    let mut node_uid: Option<String> = None;
    // The status last written on each mirror, by the mirror's UID.
    let mut written: HashMap<String, Option<PodStatus>> = HashMap::new();
    // Static pods (and hashes) whose mirror the API server refused.
    let mut refused = BTreeSet::new();
    let mut retry = None;
    loop {
        tokio::select! {
            _ = pod_changes.ready() => {}
            _ = mirror_changes.ready() => {}
            () = sleep_or_never(retry) => {}
        }
        pod_changes.take();
        mirror_changes.take();
        retry = None;
        if node_uid.is_none() {
            let nodes: Api<Node> = Api::all(client.clone());
            match nodes.get(&node).await {
                Ok(object) => node_uid = object.metadata.uid,
                Err(e) => {
                    tracing::debug!(error = %e, "reading the Node for mirror pods' owner");
                    retry = Some(Duration::from_secs(1));
                    continue;
                }
            }
        }
        let Some(owner) = node_uid.clone() else {
            continue;
        };
        let result = sync(
            &client,
            &node,
            &owner,
            &pods,
            &mirrors,
            &mut written,
            &mut refused,
        )
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "mirror pods; retrying");
            retry = Some(Duration::from_secs(2));
        }
    }
}

async fn sync(
    client: &kube::Client,
    node: &str,
    node_uid: &str,
    pods: &PodStore,
    mirrors: &Store<Pod>,
    written: &mut HashMap<String, Option<PodStatus>>,
    refused: &mut BTreeSet<(ObjectKey, String)>,
) -> Result<(), kube::Error> {
    let statics: HashMap<ObjectKey, Arc<Pod>> = pods
        .entries()
        .into_iter()
        .filter(|(_, pod)| !from_api(pod))
        .collect();
    for (key, pod) in &statics {
        let api: Api<Pod> = Api::namespaced(client.clone(), &key.namespace);
        let hash = pod.metadata.uid.clone().unwrap_or_default();
        let mirror = mirrors.get(key);
        // A mirror being deleted is finished off and made again, as kubelet does.
        let current = mirror.filter(|m| {
            mirror_hash(m) == Some(hash.as_str()) && m.metadata.deletion_timestamp.is_none()
        });
        let mirror = match current {
            Some(mirror) => mirror,
            None => {
                if let Some(stale) = mirrors.get(key).and_then(|m| m.metadata.uid.clone()) {
                    delete_pod(client, key, &stale).await?;
                }
                match api
                    .create(&PostParams::default(), &mirror_of(pod, node, node_uid))
                    .await
                {
                    Ok(created) => {
                        tracing::info!(pod = %key, "mirror pod created");
                        Arc::new(created)
                    }
                    // The watch has not shown it yet; the next round writes its status.
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    // Refused for good: NodeRestriction forbids mirror pods that refer to
                    // API objects (ConfigMaps, Secrets, service accounts), as for kubelet.
                    // Said once per static pod; the other mirrors go on.
                    Err(kube::Error::Api(e)) if e.code == 403 || e.code == 422 => {
                        if refused.insert((key.clone(), hash.clone())) {
                            tracing::warn!(pod = %key, reason = %e.message, "mirror pod refused by the API server");
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let Some(uid) = mirror.metadata.uid.clone() else {
            continue;
        };
        if pod.status.is_some() && written.get(&uid) != Some(&pod.status) {
            patch_pod_status(client, key, &uid, pod.status.as_ref()).await?;
            written.insert(uid, pod.status.clone());
        }
    }
    // Mirrors whose static pod is gone, once the pods are all known.
    if pods.is_synced() {
        for (key, mirror) in mirrors.entries() {
            if let Some(uid) = mirror
                .metadata
                .uid
                .as_deref()
                .filter(|_| !statics.contains_key(&key))
            {
                delete_pod(client, &key, uid).await?;
            }
        }
    }
    let live: BTreeSet<String> = mirrors
        .list()
        .iter()
        .filter_map(|m| m.metadata.uid.clone())
        .collect();
    written.retain(|uid, _| live.contains(uid));
    Ok(())
}

fn mirror_hash(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(CONFIG_MIRROR_ANNOTATION)
        .map(String::as_str)
}

/// The mirror of a static pod: its metadata and spec, marked and owned by the Node.
fn mirror_of(pod: &Pod, node: &str, node_uid: &str) -> Pod {
    let mut annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let hash = annotations
        .get(CONFIG_HASH_ANNOTATION)
        .cloned()
        .or_else(|| pod.metadata.uid.clone())
        .unwrap_or_default();
    annotations.insert(CONFIG_MIRROR_ANNOTATION.to_owned(), hash);
    Pod {
        metadata: ObjectMeta {
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            labels: pod.metadata.labels.clone(),
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: node.to_owned(),
                uid: node_uid.to_owned(),
                controller: Some(true),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        spec: pod.spec.clone(),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_is_marked_with_the_hash_and_owned_by_the_node() {
        let pod: Pod = serde_yaml::from_str(
            "metadata:\n  name: web-node1\n  namespace: default\n  uid: abc\n  labels: {app: web}\n  annotations: {kubernetes.io/config.hash: abc, kubernetes.io/config.source: file}\nspec:\n  nodeName: node1\n  containers: [{name: c, image: busybox}]\n",
        )
        .expect("a pod");
        let mirror = mirror_of(&pod, "node1", "node-uid");
        assert!(is_mirror(&mirror));
        assert_eq!(mirror_hash(&mirror), Some("abc"));
        assert_eq!(mirror.metadata.uid, None, "the API server gives it its own");
        let owner = &mirror.metadata.owner_references.as_ref().expect("owners")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Node", "node-uid")
        );
        assert_eq!(mirror.spec, pod.spec);
    }
}

#[cfg(test)]
#[path = "mirror_tests.rs"]
mod mirror_tests;
