//! One kind of object from the API server into one store, decoded at the edge (kube-runtime's
//! reflector, with the store's own writer): each object is narrowed as it arrives, so a list
//! of 100,000 objects is never held whole in the API's shape, only page by page.
//!
//! Each relist replaces the source's objects whole, so that objects deleted while the watch
//! was down (its history compacted: 410 Gone) go too; the first marks the source synced.
//! Errors are logged and the watch resumes with kube-runtime's default backoff.

use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

use crate::store::{Keyed, ObjectKey, Writer};

/// Keeps `writer`'s source equal to what `api` lists and watches with `config`, each object
/// as `narrow` makes it (`None`: left out), until the task is dropped. `what` names the
/// objects in logs.
pub async fn reflect<K, N>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<N>,
    what: &'static str,
    narrow: impl Fn(K) -> Option<N>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    N: Keyed + PartialEq,
{
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    // During a relist: the objects listed so far.
    let mut listing: Option<Vec<Arc<N>>> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => listing = Some(Vec::new()),
            Ok(Event::InitApply(object)) => {
                if let Some(object) = narrow(object) {
                    listing.get_or_insert_with(Vec::new).push(Arc::new(object));
                }
            }
            Ok(Event::InitDone) => {
                let listed = listing.take().unwrap_or_default();
                tracing::debug!(objects = listed.len(), what, "listed");
                writer.replace(listed);
            }
            Ok(Event::Apply(object)) => {
                let key = ObjectKey::of(object.meta());
                match narrow(object) {
                    Some(object) => writer.apply(Arc::new(object)),
                    None => writer.delete(&key),
                }
            }
            Ok(Event::Delete(object)) => writer.delete(&ObjectKey::of(object.meta())),
            Err(e) if forbidden(&e) => tracing::error!(
                error = %e,
                what,
                "watching is forbidden to this identity; retrying. The service proxy reads what kube-proxy reads: bind ClusterRole system:node-proxier to it, or for `bosun proxy` apply packaging/kubernetes/proxy-rbac.yaml (see the README)"
            ),
            Err(e) => tracing::warn!(error = %e, what, "watching; retrying"),
        }
    }
}

fn forbidden(error: &watcher::Error) -> bool {
    matches!(
        error,
        watcher::Error::InitialListFailed(kube::Error::Api(e))
            | watcher::Error::WatchStartFailed(kube::Error::Api(e))
            if e.code == 403
    )
}
