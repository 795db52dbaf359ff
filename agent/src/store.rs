//! The typed object store: what every part of the daemon reads of the objects it does not own
//! (Services, EndpointSlices, NetworkPolicies, Namespaces, ConfigMaps, Secrets, and the pods
//! with their status), in the manner of kube-runtime's reflector `Store`.
//!
//! - **One copy of each object.** A [`Store<K>`] holds one `Arc<K>` per key; readers get
//!   clones of the `Arc`, never of the object, and a writer that hands in an object equal to
//!   the one held announces no change.
//! - **Sources.** Objects come from the manifest directory ([`Source::File`]) or the API
//!   server ([`Source::Api`]), each through its own [`Writer`]. When both hold an object of
//!   the same key, the API server's is the one read: the cluster is the truth, a manifest's
//!   copy only fills in where there is no cluster.
//! - **Readiness per source.** A store is [`synced`](Store::is_synced) once every source it
//!   expects has delivered a complete list (a manifest read, a watcher's initial list).
//!   Before that, "not in the store" does not mean "does not exist".
//! - **Changes name what changed.** A [`Subscription`] collects the keys written since it was
//!   last read, coalesced, so a consumer recomputes only what those keys touch and a burst of
//!   writes is one wake-up.
//!
//! The store knows nothing of where objects come from or what reads them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};

use bosun_netdp::policy::PolicyPod;
use bosun_netdp::service::{ServiceInfo, SliceInfo};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::Metadata;
use tokio::sync::Notify;

use crate::pod::references::RefKind;

/// Where an object came from. Declared in read priority: the first source holding a key is
/// the one read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// The kube-apiserver's watchers.
    Api = 0,
    /// The manifest directory (`staticPodPath`).
    File = 1,
    /// bosun itself: the EndpointSlices of static pods, which no controller writes
    /// standalone.
    Local = 2,
}

const SOURCES: usize = 3;

/// The namespace and name of an object; the namespace is empty for cluster-scoped kinds.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Interned: every key of a namespace shares one copy.
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ObjectKey {
    pub fn new(namespace: impl AsRef<str>, name: impl Into<Arc<str>>) -> Self {
        ObjectKey {
            namespace: bosun_netdp::intern::intern(namespace.as_ref()),
            name: name.into(),
        }
    }

    /// The key of an object by its metadata.
    pub fn of(meta: &ObjectMeta) -> Self {
        ObjectKey::new(
            meta.namespace.clone().unwrap_or_default(),
            meta.name.clone().unwrap_or_default(),
        )
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// What a store keys an object by.
pub trait Keyed {
    fn key(&self) -> ObjectKey;
}

macro_rules! keyed_by_metadata {
    ($($kind:ty),*) => {$(
        impl Keyed for $kind {
            fn key(&self) -> ObjectKey {
                ObjectKey::of(self.metadata())
            }
        }
    )*};
}

keyed_by_metadata!(
    Service,
    EndpointSlice,
    NetworkPolicy,
    Namespace,
    ConfigMap,
    Secret,
    Pod
);

impl Keyed for ServiceInfo {
    fn key(&self) -> ObjectKey {
        ObjectKey {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

impl Keyed for PolicyPod {
    fn key(&self) -> ObjectKey {
        ObjectKey {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

impl Keyed for SliceInfo {
    fn key(&self) -> ObjectKey {
        ObjectKey {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// One key's object as each source has it.
struct Slot<K> {
    by_source: [Option<Arc<K>>; SOURCES],
}

impl<K> Slot<K> {
    fn empty() -> Self {
        Slot {
            by_source: std::array::from_fn(|_| None),
        }
    }

    /// The object read: the first source's that has one.
    fn current(&self) -> Option<&Arc<K>> {
        self.by_source.iter().flatten().next()
    }
}

struct State<K> {
    objects: BTreeMap<ObjectKey, Slot<K>>,
    expected: [bool; SOURCES],
    synced: [bool; SOURCES],
}

/// What a subscriber has not read yet.
#[derive(Default)]
struct Pending {
    changes: Mutex<Changes>,
    notify: Notify,
}

/// What changed in a store since a [`Subscription`] last looked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Keys whose object was added, changed or removed.
    pub keys: BTreeSet<ObjectKey>,
    /// A source delivered its first complete list: the store may now be synced.
    pub synced: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && !self.synced
    }
}

struct Shared<K> {
    state: RwLock<State<K>>,
    subscribers: Mutex<Vec<Weak<Pending>>>,
}

/// A typed object store; clones are cheap handles to the same store. See the module docs.
pub struct Store<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for Store<K> {
    fn clone(&self) -> Self {
        Store {
            shared: self.shared.clone(),
        }
    }
}

impl<K> fmt::Debug for Store<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("len", &self.len())
            .field("synced", &self.is_synced())
            .finish()
    }
}

impl<K> Default for Store<K> {
    /// A store that expects nothing and so is synced from the start (for tests and for
    /// parts that are not configured).
    fn default() -> Self {
        Store::new(&[])
    }
}

impl<K> Store<K> {
    /// An empty store that is synced once each of `sources` has delivered a full list.
    pub fn new(sources: &[Source]) -> Self {
        let mut expected = [false; SOURCES];
        for source in sources {
            expected[*source as usize] = true;
        }
        Store {
            shared: Arc::new(Shared {
                state: RwLock::new(State {
                    objects: BTreeMap::new(),
                    expected,
                    synced: [false; SOURCES],
                }),
                subscribers: Mutex::new(Vec::new()),
            }),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State<K>> {
        // A writer that panicked left a consistent map behind: every write is one insert.
        self.shared
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The object of `key`, if any source has it.
    pub fn get(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.read().objects.get(key)?.current().cloned()
    }

    /// The object `name` in `namespace` (empty for cluster-scoped kinds).
    pub fn get_named(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.get(&ObjectKey::new(namespace, name))
    }

    /// Every object, in key order.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.read()
            .objects
            .values()
            .filter_map(Slot::current)
            .cloned()
            .collect()
    }

    /// The objects of `namespace`, in name order.
    pub fn list_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        self.read()
            .objects
            .range(ObjectKey::new(namespace, "")..)
            .take_while(|(key, _)| &*key.namespace == namespace)
            .filter_map(|(_, slot)| slot.current())
            .cloned()
            .collect()
    }

    /// Every object `source` holds, in key order, whether or not another source's object of
    /// the same key is the one read.
    pub fn list_of(&self, source: Source) -> Vec<Arc<K>> {
        self.read()
            .objects
            .values()
            .filter_map(|slot| slot.by_source[source as usize].clone())
            .collect()
    }

    /// Every object with its key, in key order.
    pub fn entries(&self) -> Vec<(ObjectKey, Arc<K>)> {
        self.read()
            .objects
            .iter()
            .filter_map(|(key, slot)| Some((key.clone(), slot.current()?.clone())))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.read().objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every expected source has delivered a complete list.
    pub fn is_synced(&self) -> bool {
        let state = self.read();
        (0..SOURCES).all(|i| !state.expected[i] || state.synced[i])
    }

    /// Whether `source` has delivered a complete list.
    pub fn is_source_synced(&self, source: Source) -> bool {
        self.read().synced[source as usize]
    }

    /// Changes from now on. Nothing before the call is reported.
    pub fn subscribe(&self) -> Subscription {
        let pending = Arc::new(Pending::default());
        let mut subscribers = self
            .shared
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        subscribers.retain(|s| s.strong_count() > 0);
        subscribers.push(Arc::downgrade(&pending));
        Subscription { pending }
    }

    /// Announces `key` as changed without changing it: wakes those waiting for it (an
    /// object found missing after waiting is news too).
    pub fn touch(&self, key: &ObjectKey) {
        self.publish(Changes {
            keys: BTreeSet::from([key.clone()]),
            synced: false,
        });
    }

    /// The writer of `source`'s objects. There should be one per source: two would each
    /// take the other's objects for their own.
    pub fn writer(&self, source: Source) -> Writer<K> {
        Writer {
            store: self.clone(),
            source,
        }
    }

    fn publish(&self, changes: Changes) {
        if changes.is_empty() {
            return;
        }
        let subscribers = self
            .shared
            .subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for pending in subscribers.iter().filter_map(Weak::upgrade) {
            {
                let mut held = pending
                    .changes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                held.keys.extend(changes.keys.iter().cloned());
                held.synced |= changes.synced;
            }
            pending.notify.notify_one();
        }
    }
}

/// Changes of a store not yet read; see [`Store::subscribe`].
pub struct Subscription {
    pending: Arc<Pending>,
}

impl Subscription {
    /// Waits until something changed, then returns everything that did since the last call.
    pub async fn changed(&mut self) -> Changes {
        self.ready().await;
        self.take()
    }

    /// Waits until something changed, leaving the changes to be taken.
    pub async fn ready(&mut self) {
        loop {
            if !self.lock().is_empty() {
                return;
            }
            self.pending.notify.notified().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Changes> {
        self.pending
            .changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// What changed since the last call, without waiting (empty if nothing did).
    pub fn take(&mut self) -> Changes {
        std::mem::take(&mut *self.lock())
    }
}

/// Writes one source's objects into a store.
pub struct Writer<K> {
    store: Store<K>,
    source: Source,
}

impl<K> Clone for Writer<K> {
    fn clone(&self) -> Self {
        Writer {
            store: self.store.clone(),
            source: self.source,
        }
    }
}

impl<K: Keyed + PartialEq> Writer<K> {
    /// Makes `objects` the whole of this source's objects (a manifest read, a watcher's
    /// relist) and marks the source synced. Objects equal to those held are not announced.
    pub fn replace(&self, objects: impl IntoIterator<Item = Arc<K>>) {
        let index = self.source as usize;
        let mut wanted: BTreeMap<ObjectKey, Arc<K>> = objects
            .into_iter()
            .map(|object| (object.key(), object))
            .collect();
        let mut changes = Changes::default();
        {
            let mut state = self.write();
            let mut emptied = Vec::new();
            for (key, slot) in state.objects.iter_mut() {
                let before = slot.current().cloned();
                match wanted.remove(key) {
                    Some(object) => slot.by_source[index] = Some(object),
                    None => slot.by_source[index] = None,
                }
                if !same(before.as_ref(), slot.current()) {
                    changes.keys.insert(key.clone());
                }
                if slot.current().is_none() {
                    emptied.push(key.clone());
                }
            }
            for key in emptied {
                state.objects.remove(&key);
            }
            let added = wanted.len();
            for (key, object) in wanted {
                let mut slot = Slot::empty();
                slot.by_source[index] = Some(object);
                state.objects.insert(key.clone(), slot);
                changes.keys.insert(key);
            }
            // A list comes in key order, and a B-tree filled in order one key at a time keeps
            // its nodes half full (each split leaves one behind). Built again in one pass from
            // its sorted entries, its nodes are full (a tree of 100,000 pods took 10.8 MB).
            if added > state.objects.len() / 2 {
                state.objects = std::mem::take(&mut state.objects).into_iter().collect();
            }
            changes.synced = !state.synced[index];
            state.synced[index] = true;
        }
        self.store.publish(changes);
    }

    /// Adds or replaces one object of this source.
    pub fn apply(&self, object: Arc<K>) {
        let key = object.key();
        self.update(&key, |_| Some(object));
    }

    /// Removes this source's object of `key`, if it has one.
    pub fn delete(&self, key: &ObjectKey) {
        self.update(key, |_| None);
    }

    /// Replaces this source's object of `key` with what `update` makes of it (`None`:
    /// removes it). Announced only if the object read changed.
    pub fn update(&self, key: &ObjectKey, update: impl FnOnce(Option<&Arc<K>>) -> Option<Arc<K>>) {
        let index = self.source as usize;
        let changed = {
            let mut state = self.write();
            let slot = state.objects.entry(key.clone()).or_insert_with(Slot::empty);
            let before = slot.current().cloned();
            slot.by_source[index] = update(slot.by_source[index].as_ref());
            let changed = !same(before.as_ref(), slot.current());
            if slot.current().is_none() {
                state.objects.remove(key);
            }
            changed
        };
        if changed {
            self.store.touch(key);
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State<K>> {
        self.store
            .shared
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The store written to.
    pub fn store(&self) -> &Store<K> {
        &self.store
    }
}

/// Keeps `to`'s source equal to what `from` reads, each object as `narrow` makes it (`None`:
/// left out), until the task is dropped: `to` is synced once `from` is, and then follows
/// `from`'s changes key by key. For a consumer that reads a narrower type than the store's
/// other readers.
pub async fn mirror<K, N: Keyed + PartialEq>(
    from: Store<K>,
    to: Writer<N>,
    narrow: fn(&K) -> Option<N>,
) {
    let mut changes = from.subscribe();
    let mut primed = false;
    loop {
        if !primed && from.is_synced() {
            changes.take();
            to.replace(
                from.list()
                    .iter()
                    .filter_map(|object| narrow(object).map(Arc::new)),
            );
            primed = true;
        }
        let changed = changes.changed().await;
        if !primed {
            continue;
        }
        for key in changed.keys {
            match from.get(&key).and_then(|object| narrow(&object)) {
                Some(object) => to.apply(Arc::new(object)),
                None => to.delete(&key),
            }
        }
    }
}

/// Whether two reads are the same object: the same `Arc`, or equal contents.
fn same<K: PartialEq>(a: Option<&Arc<K>>, b: Option<&Arc<K>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b) || **a == **b,
        _ => false,
    }
}

/// The stores of every kind of object the daemon reads but does not own. Clones share them.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub services: Store<Service>,
    pub endpoint_slices: Store<EndpointSlice>,
    pub network_policies: Store<NetworkPolicy>,
    pub namespaces: Store<Namespace>,
    pub config_maps: Store<ConfigMap>,
    pub secrets: Store<Secret>,
}

impl Objects {
    /// Stores that are synced once each of `sources` has delivered its objects.
    pub fn new(sources: &[Source]) -> Self {
        Objects {
            services: Store::new(sources),
            endpoint_slices: Store::new(sources),
            network_policies: Store::new(sources),
            namespaces: Store::new(sources),
            config_maps: Store::new(sources),
            secrets: Store::new(sources),
        }
    }
}

/// Objects that pods refer to by name (configMap and secret volumes, `configMapKeyRef`,
/// `secretKeyRef`, `envFrom`), looked up in the pod's namespace, and the Services that make
/// their containers' service environment variables. Standalone, they are the manifest
/// directory's objects; in a cluster, those the API server holds: ConfigMaps and Secrets
/// fetched and watched per referenced object, Services all watched.
pub trait ObjectGetter: Send + Sync {
    fn config_map(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>>;
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>>;
    /// The Service `name` in `namespace`.
    fn service(&self, _namespace: &str, _name: &str) -> Option<Arc<Service>> {
        None
    }
    /// The Services of `namespace`, in name order.
    fn services(&self, _namespace: &str) -> Vec<Arc<Service>> {
        Vec::new()
    }
    /// Whether the API server's Services have not been listed yet: a pod from the API server
    /// waits for them, or its containers would miss their variables (kubelet's
    /// `serviceHasSynced`).
    fn services_pending(&self) -> bool {
        false
    }
    /// Whether the object is not known yet either way (its watch has not listed it): a
    /// pod that needs it waits without an error, and is woken when it arrives.
    fn pending(&self, _kind: RefKind, _namespace: &str, _name: &str) -> bool {
        false
    }
    /// A token for a projected `serviceAccountToken` volume. Only the API server issues
    /// them, so there are none standalone.
    fn service_account_token(&self, _key: &TokenKey) -> TokenLookup {
        TokenLookup::Unsupported
    }
}

/// A service account token as a pod's projected volume asks for it, and as kubelet's token
/// manager keys its cache: the account, the audience, the lifetime and the pod it is bound to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TokenKey {
    pub namespace: String,
    pub service_account: String,
    /// Empty: the API server's own audiences.
    pub audience: String,
    pub expiration_seconds: i64,
    pub pod_name: String,
    pub pod_uid: String,
}

/// What [`ObjectGetter::service_account_token`] has for a [`TokenKey`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenLookup {
    /// A token that is still valid.
    Token(Arc<str>),
    /// Being requested: the pod waits without an error, and is woken when it arrives.
    Pending,
    /// The last request failed, and there is no valid token; it is requested again later.
    Failed(String),
    /// No API server issues tokens here.
    Unsupported,
}

impl ObjectGetter for Objects {
    fn config_map(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>> {
        self.config_maps.get_named(namespace, name)
    }

    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.secrets.get_named(namespace, name)
    }

    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.services.get_named(namespace, name)
    }

    fn services(&self, namespace: &str) -> Vec<Arc<Service>> {
        self.services.list_namespace(namespace)
    }
}

/// The pods of this node with the status their workers last computed, by namespace and
/// name; written by the status manager alone.
pub type PodStore = Store<Pod>;

#[cfg(test)]
mod tests {
    use super::*;

    fn config_map(namespace: &str, name: &str, value: &str) -> Arc<ConfigMap> {
        Arc::new(ConfigMap {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([("k".to_owned(), value.to_owned())])),
            ..Default::default()
        })
    }

    fn value(store: &Store<ConfigMap>, name: &str) -> Option<String> {
        store
            .get_named("default", name)
            .and_then(|c| c.data.as_ref()?.get("k").cloned())
    }

    #[test]
    fn replace_announces_only_what_changed_and_marks_the_source_synced() {
        let store = Store::new(&[Source::File]);
        let mut changes = store.subscribe();
        assert!(!store.is_synced());
        let file = store.writer(Source::File);
        file.replace([
            config_map("default", "a", "1"),
            config_map("default", "b", "1"),
        ]);
        assert!(store.is_synced());
        let first = changes.take();
        assert!(first.synced);
        assert_eq!(first.keys.len(), 2);

        // An equal object is no change, even as a new Arc; b changed, a was removed, c added.
        file.replace([
            config_map("default", "b", "2"),
            config_map("default", "c", "1"),
        ]);
        let second = changes.take();
        assert!(!second.synced);
        let names: Vec<&str> = second.keys.iter().map(|k| &*k.name).collect();
        assert_eq!(names, ["a", "b", "c"]);
        file.replace([
            config_map("default", "b", "2"),
            config_map("default", "c", "1"),
        ]);
        assert!(changes.take().is_empty());
        assert_eq!(value(&store, "b").as_deref(), Some("2"));
        assert_eq!(value(&store, "a"), None);
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn the_api_servers_object_shadows_the_manifests() {
        let store = Store::new(&[Source::File, Source::Api]);
        let file = store.writer(Source::File);
        let api = store.writer(Source::Api);
        file.replace([config_map("default", "a", "file")]);
        assert!(!store.is_synced(), "the API source has not listed yet");
        let mut changes = store.subscribe();
        api.replace([config_map("default", "a", "api")]);
        assert!(store.is_synced());
        assert_eq!(value(&store, "a").as_deref(), Some("api"));
        assert_eq!(changes.take().keys.len(), 1);
        // The manifest changing under the API's object changes nothing read.
        file.replace([config_map("default", "a", "file 2")]);
        assert!(changes.take().keys.is_empty());
        // The API's object going shows the manifest's again.
        api.delete(&ObjectKey::new("default", "a"));
        assert_eq!(value(&store, "a").as_deref(), Some("file 2"));
        assert_eq!(changes.take().keys.len(), 1);
        file.replace([]);
        assert!(store.is_empty());
    }

    #[test]
    fn apply_update_and_delete_announce_their_key() {
        let store: Store<ConfigMap> = Store::default();
        let mut changes = store.subscribe();
        let api = store.writer(Source::Api);
        api.apply(config_map("ns", "a", "1"));
        api.apply(config_map("ns", "a", "1"));
        let key = ObjectKey::new("ns", "a");
        assert_eq!(changes.take().keys, BTreeSet::from([key.clone()]));
        api.update(&key, |held| {
            let mut next = (**held.expect("held")).clone();
            next.data = None;
            Some(Arc::new(next))
        });
        assert_eq!(changes.take().keys.len(), 1);
        api.delete(&key);
        api.delete(&key);
        assert_eq!(changes.take().keys.len(), 1);
        assert!(store.get(&key).is_none());
    }

    #[test]
    fn listing_a_namespace_or_a_source() {
        let store = Store::new(&[Source::File, Source::Api]);
        let file = store.writer(Source::File);
        let api = store.writer(Source::Api);
        file.replace([
            config_map("a", "x", "file"),
            config_map("b", "y", "file"),
            config_map("bb", "z", "file"),
        ]);
        api.replace([config_map("b", "y", "api"), config_map("b", "w", "api")]);
        let data = |objects: Vec<Arc<ConfigMap>>| -> Vec<String> {
            objects
                .iter()
                .map(|c| {
                    let key = ObjectKey::of(&c.metadata);
                    format!("{key}={}", c.data.as_ref().expect("data")["k"])
                })
                .collect()
        };
        assert_eq!(data(store.list_namespace("b")), ["b/w=api", "b/y=api"]);
        assert_eq!(data(store.list_namespace("c")), Vec::<String>::new());
        // A source's own objects, even where another source's are read.
        assert_eq!(
            data(store.list_of(Source::File)),
            ["a/x=file", "b/y=file", "bb/z=file"]
        );
        assert_eq!(data(store.list_of(Source::Local)), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_subscriber_wakes_once_for_a_burst() {
        let store: Store<ConfigMap> = Store::default();
        let mut changes = store.subscribe();
        let api = store.writer(Source::Api);
        for i in 0..10 {
            api.apply(config_map("ns", &format!("o{i}"), "1"));
        }
        let burst = changes.changed().await;
        assert_eq!(burst.keys.len(), 10);
        assert!(changes.take().is_empty());
        let waiter = tokio::spawn(async move { changes.changed().await });
        tokio::task::yield_now().await;
        api.delete(&ObjectKey::new("ns", "o3"));
        let next = waiter.await.expect("the waiter ends");
        assert_eq!(next.keys, BTreeSet::from([ObjectKey::new("ns", "o3")]));
    }
}
