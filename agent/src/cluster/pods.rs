//! The API server as a pod source (kubelet's `config/apiserver.go`): a watch of the pods
//! bound to this node (`spec.nodeName=NAME`, which is all the Node authorizer lets a node
//! list), each relist delivered whole so that pods deleted while the watch was down are
//! noticed.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use kube::Api;
use tokio::sync::mpsc::UnboundedSender;

use super::mirror::is_mirror;
use crate::source::{PodUpdate, CONFIG_SOURCE_ANNOTATION, CONFIG_SOURCE_API};
use crate::store::{ObjectKey, Writer};

/// Sends the pods bound to `node` as updates of the API source until `updates` closes.
/// Errors are logged and the watch resumes with kube-runtime's default backoff.
///
/// Mirror pods (the API server's copies of this node's static pods) are no pods to run:
/// they go into `mirrors` instead.
pub async fn watch(
    client: kube::Client,
    node: String,
    updates: UnboundedSender<PodUpdate>,
    mirrors: Writer<Pod>,
) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    // During a relist: the pods, and the mirror pods.
    let mut listing: Option<Listing> = None;
    while let Some(event) = events.next().await {
        let update = match event {
            Ok(Event::Init) => {
                listing = Some(Default::default());
                None
            }
            Ok(Event::InitApply(pod)) => {
                let (pods, mirrored) = listing.get_or_insert_with(Default::default);
                if is_mirror(&pod) {
                    mirrored.push(Arc::new(super::narrowed(pod)));
                } else {
                    pods.push(marked(pod));
                }
                None
            }
            Ok(Event::InitDone) => {
                let (pods, mirrored) = listing.take().unwrap_or_default();
                mirrors.replace(mirrored);
                Some(PodUpdate::Set(pods))
            }
            Ok(Event::Apply(pod)) if is_mirror(&pod) => {
                mirrors.apply(Arc::new(super::narrowed(pod)));
                None
            }
            Ok(Event::Delete(pod)) if is_mirror(&pod) => {
                mirrors.delete(&ObjectKey::of(&pod.metadata));
                None
            }
            Ok(Event::Apply(pod)) => Some(PodUpdate::Apply(marked(pod))),
            Ok(Event::Delete(pod)) => Some(PodUpdate::Delete(marked(pod))),
            Err(e) => {
                tracing::warn!(error = %e, "watching this node's pods; retrying");
                None
            }
        };
        if let Some(update) = update {
            if updates.send(update).is_err() {
                return;
            }
        }
    }
}

/// A relist in progress: the pods to run, and the mirror pods.
type Listing = (Vec<Arc<Pod>>, Vec<Arc<Pod>>);

/// The pod with kubelet's in-memory `kubernetes.io/config.source: api` annotation, without
/// its managed fields.
fn marked(pod: Pod) -> Arc<Pod> {
    let mut pod = super::narrowed(pod);
    pod.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            CONFIG_SOURCE_ANNOTATION.to_owned(),
            CONFIG_SOURCE_API.to_owned(),
        );
    Arc::new(pod)
}

#[cfg(test)]
#[path = "pods_tests.rs"]
mod pods_tests;
