//! ConfigMaps and Secrets from the API server, for the pods that refer to them (kubelet's
//! watch-based configmap and secret managers, its default `configMapAndSecretChangeDetectionStrategy`):
//! one watch per referenced object (`metadata.name=NAME` in its namespace, which is all the
//! Node authorizer lets a node read), started when the first pod of this node refers to it
//! and stopped when the last one is gone. What they see goes into the object store, where
//! volumes and the environment read it; an edit reaches running pods' volumes at once.
//! Nothing is ever listed cluster-wide here; the Services, which every pod's environment
//! reads, are watched whole by [`super::services`].

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, NamespaceResourceScope, Resource};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use kube::Api;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use super::tokens::TokenManager;
use crate::pod::references::{references, RefKind, Reference};
use crate::store::{ObjectGetter, ObjectKey, Objects, Source, Store, TokenKey, TokenLookup};

struct Watch {
    /// How many pods refer to the object.
    pods: usize,
    /// Set once the watch has listed the object (or found it missing).
    listed: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Inner {
    watches: HashMap<Reference, Watch>,
    /// What each pod (by UID) refers to.
    by_pod: HashMap<String, BTreeSet<Reference>>,
}

/// The referenced objects of this node's pods; see the module documentation. Also the
/// [`ObjectGetter`] of pods in cluster mode, which has their service account tokens from
/// `tokens`.
pub struct ReferencedObjects {
    client: kube::Client,
    objects: Objects,
    tokens: TokenManager,
    inner: Mutex<Inner>,
}

impl ReferencedObjects {
    pub fn new(client: kube::Client, objects: Objects, tokens: TokenManager) -> Arc<Self> {
        Arc::new(ReferencedObjects {
            client,
            objects,
            tokens,
            inner: Mutex::default(),
        })
    }

    /// Follows what `pod` (of UID `uid`) refers to now; `None`: the pod is gone.
    pub fn track(&self, uid: &str, pod: Option<&Pod>) {
        let now = pod.map(references).unwrap_or_default();
        if pod.is_none() {
            self.tokens.forget_pod(uid);
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let before = inner.by_pod.remove(uid).unwrap_or_default();
        for reference in now.difference(&before) {
            match inner.watches.get_mut(reference) {
                Some(watch) => watch.pods += 1,
                None => {
                    let watch = self.start(reference);
                    inner.watches.insert(reference.clone(), watch);
                }
            }
        }
        for reference in before.difference(&now) {
            let done = inner.watches.get_mut(reference).is_some_and(|watch| {
                watch.pods -= 1;
                watch.pods == 0
            });
            if done {
                if let Some(watch) = inner.watches.remove(reference) {
                    watch.task.abort();
                }
                let (kind, namespace, name) = reference;
                let key = ObjectKey::new(namespace.clone(), name.clone());
                match kind {
                    RefKind::ConfigMap => self.objects.config_maps.writer(Source::Api).delete(&key),
                    RefKind::Secret => self.objects.secrets.writer(Source::Api).delete(&key),
                }
            }
        }
        if !now.is_empty() {
            inner.by_pod.insert(uid.to_owned(), now);
        }
    }

    fn start(&self, reference: &Reference) -> Watch {
        let (kind, namespace, name) = reference.clone();
        let listed = Arc::new(AtomicBool::new(false));
        let task = match kind {
            RefKind::ConfigMap => tokio::spawn(follow::<ConfigMap>(
                self.client.clone(),
                self.objects.config_maps.clone(),
                namespace,
                name,
                listed.clone(),
            )),
            RefKind::Secret => tokio::spawn(follow::<Secret>(
                self.client.clone(),
                self.objects.secrets.clone(),
                namespace,
                name,
                listed.clone(),
            )),
        };
        Watch {
            pods: 1,
            listed,
            task,
        }
    }
}

impl Drop for ReferencedObjects {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(PoisonError::into_inner);
        for watch in inner.watches.values() {
            watch.task.abort();
        }
    }
}

impl ObjectGetter for ReferencedObjects {
    fn config_map(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>> {
        self.objects.config_map(namespace, name)
    }

    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.objects.secret(namespace, name)
    }

    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.objects.service(namespace, name)
    }

    fn services(&self, namespace: &str) -> Vec<Arc<Service>> {
        self.objects.services(namespace)
    }

    fn services_pending(&self) -> bool {
        !self.objects.services.is_source_synced(Source::Api)
    }

    fn pending(&self, kind: RefKind, namespace: &str, name: &str) -> bool {
        let reference = (kind, namespace.to_owned(), name.to_owned());
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .watches
            .get(&reference)
            .is_some_and(|watch| !watch.listed.load(Ordering::Acquire))
    }

    fn service_account_token(&self, key: &TokenKey) -> TokenLookup {
        self.tokens.get(key)
    }
}

/// Keeps the object `namespace/name` of kind `K` in `store` as the API server has it.
async fn follow<K>(
    client: kube::Client,
    store: Store<K>,
    namespace: String,
    name: String,
    listed: Arc<AtomicBool>,
) where
    K: Resource<Scope = NamespaceResourceScope>
        + Metadata<Ty = ObjectMeta>
        + crate::store::Keyed
        + DeserializeOwned
        + Clone
        + std::fmt::Debug
        + PartialEq
        + Send
        + Sync
        + 'static,
{
    let writer = store.writer(Source::Api);
    let key = ObjectKey::new(namespace.clone(), name.clone());
    let api: Api<K> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut seen = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => seen = false,
            Ok(Event::InitApply(object)) | Ok(Event::Apply(object)) => {
                seen = true;
                writer.apply(Arc::new(object));
            }
            Ok(Event::InitDone) => {
                if !seen {
                    writer.delete(&key);
                }
                listed.store(true, Ordering::Release);
                // Wake the pods that wait for it even when it does not exist, so that they
                // report it missing.
                store.touch(&key);
            }
            Ok(Event::Delete(_)) => writer.delete(&key),
            Err(e) => {
                tracing::warn!(kind = K::KIND, object = %key, error = %e, "watching a referenced object; retrying")
            }
        }
    }
}

#[cfg(test)]
#[path = "objects_tests.rs"]
mod objects_tests;
