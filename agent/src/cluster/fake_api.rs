//! An in-memory kube-apiserver for the cluster components' logic tests, served to a real
//! `kube::Client` through a tower service, so that kube-rs' own requests, watcher and error
//! handling run as they do against a real server.
//!
//! It keeps objects of any resource by path (`/api/v1/namespaces/NS/pods/NAME`,
//! `/apis/coordination.k8s.io/v1/…/leases/NAME`, …) and answers as kube-apiserver does: create
//! (409 AlreadyExists; uid, resourceVersion and creationTimestamp assigned), get (404 as a
//! `Status`), list and watch with field and label selectors and resourceVersions (a watch
//! from before the last compaction gets an ERROR event with 410 Gone; bookmarks when the test
//! sends them), replace and patch with the UID and resourceVersion they carry as
//! preconditions (409), the `status` subresource (which changes only `.status`, where
//! kube-apiserver lets labels and annotations through too; the main resource of pods and
//! nodes leaves `.status` alone), deletion with a UID precondition and, for pods bound to a
//! node, a grace period (the pod is marked, not removed, until deleted with grace 0), and
//! TokenRequests (a made-up token).
//!
//! Unlike the 1.20 API server the end-to-end tests run against, it drops no field it does not
//! know: what a newer server keeps (an init container's `restartPolicy: Always`) it keeps too.
//!
//! Simplifications, each harmless for the code under test: a strategic merge patch is applied
//! as a JSON merge patch (lists are replaced, not merged by key; the components send whole
//! lists), `limit` is ignored (every list is one page), and timestamps are the wall clock's.
//! Objects are kept as `serde_json::Value`: this is a test double, it decodes nothing.
//!
//! Tests drive it directly too: seed and read objects, compact the history, close every
//! watch, fail the next requests or become unreachable, and read back the requests made.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper::{Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
use tokio::sync::Notify;

type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub(crate) struct Recorded {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: String,
    /// The JSON body, `Null` when there was none.
    pub body: Value,
    /// The HTTP status answered; 0 when the fake was unreachable.
    pub code: u16,
}

impl Recorded {
    pub fn is(&self, method: &str, path: &str) -> bool {
        self.method == method && self.path == path
    }
}

/// The fake API server; clones share it.
#[derive(Clone, Default)]
pub(crate) struct FakeApi {
    state: Arc<Mutex<State>>,
    /// Woken on every request and every change.
    changed: Arc<Notify>,
}

/// An object's place: its resource (`pods`, `leases.coordination.k8s.io`), namespace (empty
/// for cluster-scoped ones) and name.
type Key = (String, String, String);

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    revision: u64,
    /// Changes after `compacted`, oldest first.
    history: Vec<Change>,
    compacted: u64,
    watches: Vec<Watch>,
    requests: Vec<Recorded>,
    /// The next requests to fail, with this code each.
    failures: Vec<u16>,
    unreachable: bool,
    uids: u64,
    /// The resources of each group version the fake lists (`/apis/GROUP/VERSION`); others
    /// are 404, as on a server that does not serve them.
    discovery: BTreeMap<String, Vec<String>>,
}

/// One write: the object before and after it (`None`: absent).
struct Change {
    revision: u64,
    resource: String,
    before: Option<Value>,
    after: Option<Value>,
}

struct Watch {
    resource: String,
    namespace: Option<String>,
    selector: Selector,
    bookmarks: bool,
    events: UnboundedSender<Bytes>,
}

/// Where a request goes.
struct Route {
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

impl Route {
    fn parse(path: &str) -> Option<Route> {
        let (group, rest) = match path.strip_prefix("/api/v1/") {
            Some(rest) => ("", rest),
            None => {
                let rest = path.strip_prefix("/apis/")?;
                let (group, rest) = rest.split_once('/')?;
                (group, rest.split_once('/')?.1)
            }
        };
        let mut segments: Vec<&str> = rest.split('/').collect();
        let namespace = if segments.len() >= 3 && segments[0] == "namespaces" {
            let namespace = segments[1].to_owned();
            segments.drain(..2);
            Some(namespace)
        } else {
            None
        };
        let resource = match group {
            "" => segments.first()?.to_string(),
            group => format!("{}.{group}", segments.first()?),
        };
        Some(Route {
            resource,
            namespace,
            name: segments.get(1).map(|s| s.to_string()),
            subresource: segments.get(2).map(|s| s.to_string()),
        })
    }

    fn key(&self) -> Key {
        (
            self.resource.clone(),
            self.namespace.clone().unwrap_or_default(),
            self.name.clone().unwrap_or_default(),
        )
    }
}

/// What a `!key` label term is kept as: "not equal to" a value no label can have.
const ABSENT: &str = "\u{0}absent";

/// `a=b,c!=d` of a field or label selector; a bare `key` (labels) asks that it exists, `!key`
/// that it does not.
#[derive(Clone, Default)]
struct Selector {
    fields: Vec<(String, bool, String)>,
    labels: Vec<(String, Option<(bool, String)>)>,
}

impl Selector {
    fn parse(fields: Option<&String>, labels: Option<&String>) -> Selector {
        let terms = |s: Option<&String>| -> Vec<String> {
            s.map(|s| {
                s.split(',')
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
        };
        let split = |term: &str| -> Option<(String, bool, String)> {
            if let Some((k, v)) = term.split_once("!=") {
                return Some((k.to_owned(), false, v.to_owned()));
            }
            let (k, v) = term.split_once('=')?;
            Some((k.to_owned(), true, v.trim_start_matches('=').to_owned()))
        };
        Selector {
            fields: terms(fields).iter().filter_map(|t| split(t)).collect(),
            labels: terms(labels)
                .iter()
                .map(|t| match split(t) {
                    Some((k, eq, v)) => (k, Some((eq, v))),
                    None => match t.strip_prefix('!') {
                        Some(absent) => (absent.to_owned(), Some((false, ABSENT.to_owned()))),
                        None => (t.clone(), None),
                    },
                })
                .collect(),
        }
    }

    fn matches(&self, object: &Value) -> bool {
        let fields = self.fields.iter().all(|(path, eq, value)| {
            let pointer = format!("/{}", path.replace('.', "/"));
            let found = object.pointer(&pointer).and_then(Value::as_str);
            (found.unwrap_or_default() == value) == *eq
        });
        let labels = self.labels.iter().all(|(key, wanted)| {
            let found = object["metadata"]["labels"][key].as_str();
            match wanted {
                None => found.is_some(),
                Some((false, value)) if value == ABSENT => found.is_none(),
                Some((eq, value)) => (found == Some(value.as_str())) == *eq,
            }
        });
        fields && labels
    }
}

impl Watch {
    fn wants(&self, object: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| object["metadata"]["namespace"] == ns)
            && self.selector.matches(object)
    }

    /// The event this watch sees of `change`, as kube-apiserver filters it: an object that
    /// leaves the selection is DELETED, one that enters it ADDED.
    fn event(&self, change: &Change) -> Option<Bytes> {
        if change.resource != self.resource {
            return None;
        }
        let before = change.before.as_ref().filter(|o| self.wants(o));
        let after = change.after.as_ref().filter(|o| self.wants(o));
        let kind = match (before, after) {
            (None, Some(_)) => "ADDED",
            (Some(_), Some(_)) => "MODIFIED",
            (Some(_), None) => "DELETED",
            (None, None) => return None,
        };
        let object = match after {
            Some(object) => object.clone(),
            // The last state of a deleted object, at the revision of its deletion.
            None => {
                let mut object = before?.clone();
                object["metadata"]["resourceVersion"] = json!(change.revision.to_string());
                object
            }
        };
        Some(line(&json!({"type": kind, "object": object})))
    }
}

fn line(value: &Value) -> Bytes {
    let mut text = value.to_string();
    text.push('\n');
    Bytes::from(text)
}

/// Where `object` of `resource` is kept, by its metadata.
fn key_of(resource: &str, object: &Value) -> Key {
    let field = |name: &str| {
        object["metadata"][name]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    (resource.to_owned(), field("namespace"), field("name"))
}

/// The `Kind` of a resource, for lists and bookmarks.
fn kind_of(resource: &str) -> &'static str {
    match resource.split('.').next().unwrap_or_default() {
        "pods" => "Pod",
        "nodes" => "Node",
        "configmaps" => "ConfigMap",
        "secrets" => "Secret",
        "services" => "Service",
        "events" => "Event",
        "leases" => "Lease",
        "serviceaccounts" => "ServiceAccount",
        "endpointslices" => "EndpointSlice",
        "networkpolicies" => "NetworkPolicy",
        "namespaces" => "Namespace",
        _ => "Object",
    }
}

fn api_version_of(resource: &str) -> String {
    match resource.split_once('.') {
        Some((_, group)) => format!("{group}/v1"),
        None => "v1".to_owned(),
    }
}

/// Resources whose `.status` only the `status` subresource writes.
fn has_status_subresource(resource: &str) -> bool {
    matches!(resource, "pods" | "nodes" | "services")
}

fn now() -> Value {
    json!(Time(crate::events::now()))
}

fn respond(code: u16, body: &Value) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed_unsync());
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    response
}

fn status(code: u16, reason: &str, message: String) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

fn failure(code: u16, reason: &str, message: String) -> Response<ResponseBody> {
    respond(code, &status(code, reason, message))
}

fn not_found(key: &Key) -> Response<ResponseBody> {
    failure(
        404,
        "NotFound",
        format!("{} \"{}\" not found", key.0, key.2),
    )
}

fn conflict(message: String) -> Response<ResponseBody> {
    failure(409, "Conflict", message)
}

/// RFC 7386: `patch` merged into `target`, `null` removing.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (name, value) in fields {
        if value.is_null() {
            target.as_object_mut().map(|t| t.remove(name));
        } else {
            merge_patch(&mut target[name], value);
        }
    }
}

fn decode(text: &str) -> String {
    let text = text.replace('+', " ");
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_of(query: Option<&str>) -> BTreeMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

impl FakeApi {
    pub fn new() -> Self {
        FakeApi::default()
    }

    /// A client of this fake, as the components get one.
    pub fn client(&self) -> kube::Client {
        let fake = self.clone();
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let fake = fake.clone();
            async move { fake.serve(request).await }
        });
        kube::Client::new(service, "default")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // ---- test-side controls ---------------------------------------------------------------

    /// Stores `object` as a create would (uid, resourceVersion, creationTimestamp filled in
    /// unless given), telling the watches.
    /// An object already there is replaced, keeping its UID unless `object` has one.
    pub fn insert(&self, resource: &str, mut object: Value) {
        let key = key_of(resource, &object);
        let mut state = self.lock();
        if object["metadata"]["uid"].is_null() {
            let held = state
                .objects
                .get(&key)
                .map(|o| o["metadata"]["uid"].clone());
            object["metadata"]["uid"] = held.unwrap_or_else(|| json!(state.uid()));
        }
        if object["metadata"]["creationTimestamp"].is_null() {
            object["metadata"]["creationTimestamp"] = now();
        }
        state.commit(&key, Some(object));
        drop(state);
        self.changed.notify_waiters();
    }

    /// The object `namespace/name` of `resource` (namespace empty for cluster-scoped ones).
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (resource.to_owned(), namespace.to_owned(), name.to_owned());
        self.lock().objects.get(&key).cloned()
    }

    /// The object decoded as `K`.
    pub fn object<K: DeserializeOwned>(&self, resource: &str, ns: &str, name: &str) -> Option<K> {
        let value = self.get(resource, ns, name)?;
        Some(serde_json::from_value(value).expect("the fake holds a valid object"))
    }

    /// Every object of `resource`, in namespace and name order.
    pub fn list(&self, resource: &str) -> Vec<Value> {
        let state = self.lock();
        let of_resource = |((r, _, _), _): &(&Key, &Value)| r == resource;
        state
            .objects
            .iter()
            .filter(of_resource)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Removes an object at once (someone else deleted it with grace 0).
    pub fn remove(&self, resource: &str, namespace: &str, name: &str) {
        let key = (resource.to_owned(), namespace.to_owned(), name.to_owned());
        self.lock().commit(&key, None);
        self.changed.notify_waiters();
    }

    /// Lists `resources` under `/apis/GROUP_VERSION` for discovery.
    pub fn serve_group_version(&self, group_version: &str, resources: &[&str]) {
        self.lock().discovery.insert(
            group_version.to_owned(),
            resources.iter().map(|r| r.to_string()).collect(),
        );
    }

    /// Forgets the history: a watch from any resourceVersion before now gets 410 Gone.
    pub fn compact(&self) {
        let mut state = self.lock();
        state.compacted = state.revision;
        state.history.clear();
    }

    /// Ends every open watch, as an API server restart or a load balancer does.
    pub fn close_watches(&self) {
        self.lock().watches.clear();
    }

    /// Sends a BOOKMARK at the current resourceVersion to the watches that allow them.
    pub fn send_bookmarks(&self) {
        let state = self.lock();
        for watch in state.watches.iter().filter(|w| w.bookmarks) {
            let object = json!({
                "kind": kind_of(&watch.resource),
                "apiVersion": api_version_of(&watch.resource),
                "metadata": {"resourceVersion": state.revision.to_string()},
            });
            let _ = watch
                .events
                .send(line(&json!({"type": "BOOKMARK", "object": object})));
        }
    }

    /// Answers the next `n` requests with `code` (a `Status` of that code).
    pub fn fail_next(&self, n: usize, code: u16) {
        self.lock().failures.extend(std::iter::repeat_n(code, n));
    }

    /// While set, every request fails as a refused connection does, and open watches end.
    pub fn set_unreachable(&self, unreachable: bool) {
        let mut state = self.lock();
        state.unreachable = unreachable;
        if unreachable {
            state.watches.clear();
        }
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// How many requests `method path` were answered with a success.
    pub fn succeeded(&self, method: &str, path: &str) -> usize {
        let state = self.lock();
        let ok = |r: &&Recorded| r.is(method, path) && (200..300).contains(&r.code);
        state.requests.iter().filter(ok).count()
    }

    /// Waits until `done` holds of the fake, checking after every request and change.
    /// Panics, naming `what`, if it does not within a minute (of paused time, in most tests).
    pub async fn until(&self, what: &str, done: impl Fn(&FakeApi) -> bool) {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                if done(self) {
                    return;
                }
                changed.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .is_err()
        {
            panic!(
                "waited a minute for {what}; requests: {:#?}",
                self.requests()
            );
        }
    }

    // ---- the server -------------------------------------------------------------------------

    async fn serve(
        &self,
        request: Request<kube::client::Body>,
    ) -> Result<Response<ResponseBody>, tower::BoxError> {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await?;
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let content_type = parts
            .headers
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut recorded = Recorded {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: query_of(parts.uri.query()),
            content_type,
            body,
            code: 0,
        };
        let answer = {
            let mut state = self.lock();
            let answer = if state.unreachable {
                None
            } else if !state.failures.is_empty() {
                let code = state.failures.remove(0);
                Some(failure(
                    code,
                    "InternalError",
                    "injected by the test".into(),
                ))
            } else {
                Some(state.handle(&recorded))
            };
            recorded.code = answer.as_ref().map_or(0, |a| a.status().as_u16());
            state.requests.push(recorded);
            answer
        };
        self.changed.notify_waiters();
        answer.ok_or_else(|| "connection refused (the fake API server is unreachable)".into())
    }
}

impl State {
    fn uid(&mut self) -> String {
        self.uids += 1;
        format!("00000000-0000-0000-0000-{:012}", self.uids)
    }

    /// Writes (or with `None` removes) the object of `key` at a new revision, telling the
    /// watches. Returns what is stored.
    fn commit(&mut self, key: &Key, after: Option<Value>) -> Option<Value> {
        self.revision += 1;
        let after = after.map(|mut object| {
            object["metadata"]["resourceVersion"] = json!(self.revision.to_string());
            object
        });
        let before = match &after {
            Some(object) => self.objects.insert(key.clone(), object.clone()),
            None => self.objects.remove(key),
        };
        let change = Change {
            revision: self.revision,
            resource: key.0.clone(),
            before,
            after: after.clone(),
        };
        self.watches.retain(|watch| match watch.event(&change) {
            Some(event) => watch.events.send(event).is_ok(),
            None => !watch.events.is_closed(),
        });
        self.history.push(change);
        after
    }

    fn handle(&mut self, request: &Recorded) -> Response<ResponseBody> {
        if let Some(resources) = request
            .path
            .strip_prefix("/apis/")
            .and_then(|gv| self.discovery.get(gv))
        {
            let list: Vec<Value> = resources
                .iter()
                .map(|name| json!({"name": name, "namespaced": true, "kind": kind_of(name), "verbs": ["list", "watch"]}))
                .collect();
            let group_version = request.path.trim_start_matches("/apis/");
            return respond(
                200,
                &json!({"kind": "APIResourceList", "groupVersion": group_version, "resources": list}),
            );
        }
        let Some(route) = Route::parse(&request.path) else {
            return failure(404, "NotFound", format!("no route {}", request.path));
        };
        let watch = request.query.get("watch").is_some_and(|w| w == "true");
        match (
            request.method.as_str(),
            &route.name,
            route.subresource.as_deref(),
        ) {
            ("GET", None, _) if watch => self.watch(&route, &request.query),
            ("GET", None, _) => self.list(&route, &request.query),
            ("GET", Some(_), None | Some("status")) => match self.objects.get(&route.key()) {
                Some(object) => respond(200, object),
                None => not_found(&route.key()),
            },
            ("POST", None, _) => self.create(&route, request.body.clone()),
            ("POST", Some(_), Some("token")) => token(&request.body),
            ("PUT", Some(_), sub @ (None | Some("status"))) => {
                let body = request.body.clone();
                self.update(&route, sub, |_| body)
            }
            ("PATCH", Some(_), sub @ (None | Some("status"))) => {
                if !request.content_type.contains("merge-patch") {
                    let message = format!(
                        "the fake applies merge patches only, not {}",
                        request.content_type
                    );
                    return failure(415, "UnsupportedMediaType", message);
                }
                self.update(&route, sub, |current| {
                    let mut next = current.clone();
                    merge_patch(&mut next, &request.body);
                    next
                })
            }
            ("DELETE", Some(_), None) => self.delete(&route, &request.body),
            _ => failure(
                405,
                "MethodNotAllowed",
                format!("{} {}", request.method, request.path),
            ),
        }
    }

    fn list(&self, route: &Route, query: &BTreeMap<String, String>) -> Response<ResponseBody> {
        let selector = Selector::parse(query.get("fieldSelector"), query.get("labelSelector"));
        let items: Vec<&Value> = self
            .objects
            .iter()
            .filter(|((resource, namespace, _), object)| {
                *resource == route.resource
                    && route.namespace.as_ref().is_none_or(|ns| ns == namespace)
                    && selector.matches(object)
            })
            .map(|(_, object)| object)
            .collect();
        respond(
            200,
            &json!({
                "kind": format!("{}List", kind_of(&route.resource)),
                "apiVersion": api_version_of(&route.resource),
                "metadata": {"resourceVersion": self.revision.to_string()},
                "items": items,
            }),
        )
    }

    /// Streams the changes after the asked resourceVersion (or every object, as ADDED, when
    /// none is asked), then every change to come.
    fn watch(&mut self, route: &Route, query: &BTreeMap<String, String>) -> Response<ResponseBody> {
        let (events, mut received) = unbounded_channel();
        let watch = Watch {
            resource: route.resource.clone(),
            namespace: route.namespace.clone(),
            selector: Selector::parse(query.get("fieldSelector"), query.get("labelSelector")),
            bookmarks: query
                .get("allowWatchBookmarks")
                .is_some_and(|b| b == "true"),
            events,
        };
        let from = query
            .get("resourceVersion")
            .and_then(|rv| rv.parse::<u64>().ok())
            .filter(|rv| *rv != 0);
        match from {
            Some(rv) if rv < self.compacted => {
                let gone = status(
                    410,
                    "Expired",
                    format!("too old resource version: {rv} ({})", self.compacted),
                );
                let _ = watch
                    .events
                    .send(line(&json!({"type": "ERROR", "object": gone})));
            }
            Some(rv) => {
                for change in self.history.iter().filter(|c| c.revision > rv) {
                    if let Some(event) = watch.event(change) {
                        let _ = watch.events.send(event);
                    }
                }
                self.watches.push(watch);
            }
            None => {
                let wanted = self.objects.iter().filter(|((resource, _, _), object)| {
                    *resource == route.resource && watch.wants(object)
                });
                for (_, object) in wanted {
                    let _ = watch
                        .events
                        .send(line(&json!({"type": "ADDED", "object": object})));
                }
                self.watches.push(watch);
            }
        }
        let frames = futures::stream::poll_fn(move |cx| {
            received
                .poll_recv(cx)
                .map(|event| event.map(|bytes| Ok(Frame::data(bytes))))
        });
        Response::new(StreamBody::new(frames).boxed_unsync())
    }

    fn create(&mut self, route: &Route, mut object: Value) -> Response<ResponseBody> {
        if let Some(namespace) = &route.namespace {
            object["metadata"]["namespace"] = json!(namespace);
        }
        if object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
        {
            let prefix = object["metadata"]["generateName"]
                .as_str()
                .unwrap_or_default();
            let generated = format!("{prefix}{}", self.uids + 1);
            object["metadata"]["name"] = json!(generated);
        }
        let key = key_of(&route.resource, &object);
        if self.objects.contains_key(&key) {
            let message = format!("{} \"{}\" already exists", key.0, key.2);
            return failure(409, "AlreadyExists", message);
        }
        object["metadata"]["uid"] = json!(self.uid());
        object["metadata"]["creationTimestamp"] = now();
        // kube-apiserver's pod strategy resets the status a create carries; a Node keeps it.
        if route.resource == "pods" {
            object["status"] = json!({"phase": "Pending"});
        }
        let stored = self.commit(&key, Some(object));
        respond(201, &stored.unwrap_or_default())
    }

    /// A replace or patch: `next` makes the new object of the current one. A UID or
    /// resourceVersion in it that is not the object's is a failed precondition.
    fn update(
        &mut self,
        route: &Route,
        subresource: Option<&str>,
        next: impl FnOnce(&Value) -> Value,
    ) -> Response<ResponseBody> {
        let key = route.key();
        let Some(current) = self.objects.get(&key).cloned() else {
            return not_found(&key);
        };
        let mut next = next(&current);
        for (field, what) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
            let asked = &next["metadata"][field];
            if !asked.is_null() && *asked != current["metadata"][field] {
                return conflict(format!(
                    "Operation cannot be fulfilled on {} \"{}\": Precondition failed: {what} in precondition: {asked}, {what} in object meta: {}",
                    key.0, key.2, current["metadata"][field]
                ));
            }
        }
        match subresource {
            Some(_) => {
                let status = next["status"].take();
                next = current.clone();
                next["status"] = status;
            }
            None if has_status_subresource(&key.0) => next["status"] = current["status"].clone(),
            None => {}
        }
        for field in [
            "uid",
            "name",
            "namespace",
            "creationTimestamp",
            "resourceVersion",
        ] {
            next["metadata"][field] = current["metadata"][field].clone();
        }
        // A write that changes nothing is no new revision, as in kube-apiserver.
        if next == current {
            return respond(200, &current);
        }
        let stored = self.commit(&key, Some(next));
        respond(200, &stored.unwrap_or_default())
    }

    fn delete(&mut self, route: &Route, options: &Value) -> Response<ResponseBody> {
        let key = route.key();
        let Some(current) = self.objects.get(&key).cloned() else {
            return not_found(&key);
        };
        let uid = &options["preconditions"]["uid"];
        if !uid.is_null() && *uid != current["metadata"]["uid"] {
            return conflict(format!(
                "Operation cannot be fulfilled on {} \"{}\": Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                key.0, key.2, current["metadata"]["uid"]
            ));
        }
        // Only a pod on a node is deleted gracefully: its kubelet has to stop it first.
        let on_node = key.0 == "pods"
            && current["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty());
        let grace = options["gracePeriodSeconds"]
            .as_i64()
            .or_else(|| current["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(30);
        if on_node && grace > 0 {
            let marked = current["metadata"]["deletionGracePeriodSeconds"].as_i64();
            if marked.is_some_and(|m| m <= grace) {
                return respond(200, &current);
            }
            let mut next = current;
            next["metadata"]["deletionTimestamp"] = now();
            next["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            let stored = self.commit(&key, Some(next));
            return respond(200, &stored.unwrap_or_default());
        }
        self.commit(&key, None);
        respond(200, &current)
    }
}

/// A TokenRequest answered with a made-up token of the lifetime asked.
fn token(request: &Value) -> Response<ResponseBody> {
    let seconds = request["spec"]["expirationSeconds"]
        .as_i64()
        .unwrap_or(3600);
    let expires = crate::events::now()
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(seconds))
        .unwrap_or_else(|_| crate::events::now());
    let mut answer = request.clone();
    answer["spec"]["expirationSeconds"] = json!(seconds);
    answer["status"] = json!({"token": "fake-token", "expirationTimestamp": Time(expires)});
    respond(201, &answer)
}

/// A pod `namespace/name` bound to `node`, of one busybox container, as a fixture.
pub(crate) fn pod(namespace: &str, name: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "busybox"}]},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_name_resource_namespace_name_and_subresource() {
        let route = Route::parse("/api/v1/namespaces/ns/pods/web/status").expect("a route");
        assert_eq!(
            (route.key(), route.subresource.as_deref()),
            (("pods".into(), "ns".into(), "web".into()), Some("status"))
        );
        let route = Route::parse("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases")
            .expect("a route");
        assert_eq!(route.resource, "leases.coordination.k8s.io");
        assert_eq!(route.name, None);
        let route = Route::parse("/api/v1/nodes/node-a").expect("a route");
        assert_eq!(
            (route.namespace, route.name.as_deref()),
            (None, Some("node-a"))
        );
    }

    #[test]
    fn selectors_match_fields_and_labels() {
        let pod = json!({"metadata": {"name": "a", "labels": {"app": "web"}}, "spec": {"nodeName": "n1"}});
        let select = |fields: &str, labels: &str| {
            Selector::parse(Some(&fields.to_owned()), Some(&labels.to_owned())).matches(&pod)
        };
        assert!(select("spec.nodeName=n1", ""));
        assert!(!select("spec.nodeName=n2", ""));
        assert!(select("spec.nodeName!=n2,metadata.name==a", "app=web"));
        assert!(!select("", "app!=web"));
        assert!(select("", "app"));
        assert!(!select("", "tier"));
    }

    fn api_error(result: Result<impl std::fmt::Debug, kube::Error>) -> (u16, String) {
        match result {
            Err(kube::Error::Api(status)) => (status.code, status.reason),
            other => panic!("expected an API error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn writes_follow_kube_apiserver() {
        use k8s_openapi::api::core::v1::Pod;
        use kube::api::{Patch, PatchParams, PostParams};

        let fake = FakeApi::new();
        let api: kube::Api<Pod> = kube::Api::namespaced(fake.client(), "default");
        let mut web: Pod = serde_json::from_value(pod("default", "web", "")).unwrap();
        web.status = Some(Default::default());
        let created = api.create(&PostParams::default(), &web).await.unwrap();
        assert!(created.metadata.uid.is_some());
        let status = created.status.clone().and_then(|s| s.phase);
        assert_eq!(
            status.as_deref(),
            Some("Pending"),
            "a create sets the status"
        );
        let again = api.create(&PostParams::default(), &web).await;
        assert_eq!(api_error(again), (409, "AlreadyExists".into()));
        assert_eq!(api_error(api.get("db").await), (404, "NotFound".into()));

        // The main resource leaves the status alone; the subresource changes only it.
        let mut labelled = created.clone();
        labelled.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
        labelled.status.as_mut().unwrap().phase = Some("Running".into());
        let replaced = api
            .replace("web", &PostParams::default(), &labelled)
            .await
            .unwrap();
        assert_eq!(replaced.status, created.status);
        let stale = api.replace("web", &PostParams::default(), &labelled).await;
        assert_eq!(api_error(stale).0, 409, "an old resourceVersion conflicts");
        let patch = json!({"status": {"phase": "Running"}});
        let params = PatchParams::default();
        let patched = api
            .patch_status("web", &params, &Patch::Merge(&patch))
            .await
            .unwrap();
        assert_eq!(
            patched.status.and_then(|s| s.phase).as_deref(),
            Some("Running")
        );
        let other_uid = json!({"metadata": {"uid": "other"}, "status": {"phase": "Failed"}});
        let refused = api
            .patch_status("web", &params, &Patch::Merge(&other_uid))
            .await;
        assert_eq!(
            api_error(refused).0,
            409,
            "the UID in a patch is a precondition"
        );
    }

    #[test]
    fn a_merge_patch_merges_objects_and_removes_nulls() {
        let mut object = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge_patch(&mut object, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(object, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
    }
}
