//! A fake kube-apiserver for the benchmarks that feed bosun from the API server: plain HTTP
//! on 127.0.0.1, no authentication, serving generated Services, EndpointSlices
//! (`discovery.k8s.io/v1`) and one Node, and for NetworkPolicy the NetworkPolicies, Namespaces
//! and Pods a benchmark asks for (none by default), as kube-rs' watcher reads them: paginated lists
//! (`limit`, `metadata.continue`), the discovery document of `discovery.k8s.io/v1`, and watch
//! streams of newline-delimited JSON events. Events that clients POST are answered 201 with
//! the object, as kube-apiserver does, and dropped.
//!
//! The objects are not held: a list page is generated from [`Objects`] when it is asked for,
//! so the fake costs the same few MiB at 30,000 Services as at 1000. Only the EndpointSlices
//! the benchmark changes are kept, with the watch events that carried them (replayed to a
//! watch that starts from an older resourceVersion).
//!
//! The benchmark changes an EndpointSlice with [`FakeApi::modify_slice`] (a NetworkPolicy
//! with [`FakeApi::modify_policy`]), which sends a MODIFIED event on every open watch of that
//! kind and returns the instant the event's bytes
//! were handed to the connection (hyper takes them from the stream and writes them to the
//! socket at once: TCP_NODELAY is set). [`FakeApi::first_list`] tells when the first list
//! request since [`FakeApi::reset`] arrived.
//!
//! Simplifications, harmless for a client that only lists and watches these objects: label
//! selectors are not applied (no generated object carries a label kube-proxy's selector
//! excludes), of field selectors only the Pods' `spec.nodeName=` is, a continue token is the index of the next object (a list never needs a
//! consistent snapshot here: nothing changes while bosun lists), watches send no BOOKMARK and
//! stay open until the client leaves, and every other request is a 404 `Status`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use anyhow::{Context as _, Result};
use http_body_util::{BodyExt as _, Either, Full, Limited};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// The objects the fake serves: Services and EndpointSlices `0..count()`, one Node, and
/// NetworkPolicies `0..policy_count()`, Pods `0..pod_count()` and Namespaces
/// `0..namespace_count()` (none unless a benchmark serves them). Generated on demand; the same
/// index must give the same object every time.
pub trait Objects: Send + Sync + 'static {
    fn count(&self) -> usize;
    fn service(&self, i: usize) -> Service;
    fn slice(&self, i: usize) -> EndpointSlice;
    fn node(&self) -> Node;

    fn policy_count(&self) -> usize {
        0
    }
    fn policy(&self, _i: usize) -> NetworkPolicy {
        NetworkPolicy::default()
    }
    fn pod_count(&self) -> usize {
        0
    }
    fn pod(&self, _i: usize) -> Pod {
        Pod::default()
    }
    fn namespace_count(&self) -> usize {
        0
    }
    fn namespace(&self, _i: usize) -> Namespace {
        Namespace::default()
    }
}

/// The largest request body read (an Event is a few hundred bytes).
const MAX_BODY: usize = 1 << 20;
/// The resourceVersion of every object as generated.
const FIRST_REVISION: u64 = 1;

/// The fake API server, serving until dropped.
pub struct FakeApi {
    address: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

/// The requests the fake answered, by kind.
#[derive(Clone, Copy, Debug, Default)]
pub struct Requests {
    /// List pages of Services, EndpointSlices, NetworkPolicies, Namespaces and Pods.
    pub list_pages: u64,
    /// Lists of the Node and discovery documents.
    pub other_reads: u64,
    pub watches: u64,
    pub events_posted: u64,
    /// Answered 404 or 400.
    pub refused: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Resource {
    Services,
    EndpointSlices,
    Nodes,
    NetworkPolicies,
    Namespaces,
    Pods,
}

struct Shared {
    objects: Box<dyn Objects>,
    state: Mutex<State>,
}

struct State {
    revision: u64,
    /// The objects the benchmark changed, by kind and index, as JSON.
    changed: HashMap<(Resource, usize), Bytes>,
    /// Every event sent, with its kind and revision, for watches that start later.
    history: Vec<(Resource, u64, Bytes)>,
    /// Open watches: their kind, the node of a Pod watch's `spec.nodeName=` field selector,
    /// and where their events go.
    watches: Vec<(Resource, Option<String>, UnboundedSender<Chunk>)>,
    first_list: Option<Instant>,
    requests: Requests,
    /// The first few requests refused, for the report.
    refused: Vec<String>,
}

/// Bytes for a watch stream; `written` is set when the connection takes them.
struct Chunk {
    bytes: Bytes,
    written: Option<Arc<OnceLock<Instant>>>,
}

/// When the connection took a pushed event's bytes; set once, by the first watch that did.
pub type Written = Arc<OnceLock<Instant>>;

impl FakeApi {
    /// Serves `objects` on a free port of 127.0.0.1, on the calling runtime.
    pub async fn start(objects: impl Objects) -> Result<FakeApi> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the fake API server")?;
        let address = listener
            .local_addr()
            .context("reading the fake API server's address")?;
        let shared = Arc::new(Shared {
            objects: Box::new(objects),
            state: Mutex::new(State {
                revision: FIRST_REVISION,
                changed: HashMap::new(),
                history: Vec::new(),
                watches: Vec::new(),
                first_list: None,
                requests: Requests::default(),
                refused: Vec::new(),
            }),
        });
        let server = tokio::spawn(accept(listener, shared.clone()));
        Ok(FakeApi {
            address,
            shared,
            server,
        })
    }

    /// Writes a kubeconfig that reaches the fake, without credentials.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             users:\n- name: anonymous\n  user: {{}}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: anonymous\n\
             current-context: fake\n",
            self.address
        );
        std::fs::write(path, kubeconfig).with_context(|| format!("writing {}", path.display()))
    }

    /// Forgets when the first list arrived, for the next client.
    pub fn reset(&self) {
        self.shared.lock().first_list = None;
    }

    /// When the first list of any kind but Nodes since [`FakeApi::reset`] arrived.
    pub fn first_list(&self) -> Option<Instant> {
        self.shared.lock().first_list
    }

    pub fn requests(&self) -> Requests {
        self.shared.lock().requests
    }

    /// The first few requests answered 404 or 400, as "METHOD PATH?QUERY → CODE".
    pub fn refused(&self) -> Vec<String> {
        self.shared.lock().refused.clone()
    }

    /// How long the fake takes to generate all Services and EndpointSlices in pages of `limit`,
    /// without a client: its own share of a client's initial list.
    pub fn list_cost(&self, limit: usize) -> Result<std::time::Duration> {
        let state = self.shared.lock();
        let started = Instant::now();
        for resource in [Resource::Services, Resource::EndpointSlices] {
            for start in (0..self.shared.objects.count()).step_by(limit.max(1)) {
                self.shared
                    .page(&state, resource, start, limit, None)
                    .context("generating a list page")?;
            }
        }
        Ok(started.elapsed())
    }

    /// Open EndpointSlice watches.
    pub fn slice_watches(&self) -> usize {
        self.watches(Resource::EndpointSlices)
    }

    /// Open NetworkPolicy watches.
    pub fn policy_watches(&self) -> usize {
        self.watches(Resource::NetworkPolicies)
    }

    fn watches(&self, kind: Resource) -> usize {
        let mut state = self.shared.lock();
        state.watches.retain(|(_, _, events)| !events.is_closed());
        state
            .watches
            .iter()
            .filter(|(resource, _, _)| *resource == kind)
            .count()
    }

    /// EndpointSlice `i` as it is now: as generated, or as last changed.
    pub fn slice(&self, i: usize) -> Result<EndpointSlice> {
        let state = self.shared.lock();
        match state.changed.get(&(Resource::EndpointSlices, i)) {
            Some(json) => serde_json::from_slice(json).context("decoding a changed EndpointSlice"),
            None => Ok(with_revision(self.shared.objects.slice(i))),
        }
    }

    /// Replaces EndpointSlice `i` with `slice` and sends a MODIFIED event for it on every open
    /// EndpointSlice watch; fails if none is open. The returned cell is set when the first
    /// connection took the event's bytes.
    pub fn modify_slice(&self, i: usize, mut slice: EndpointSlice) -> Result<Written> {
        anyhow::ensure!(
            i < self.shared.objects.count(),
            "there is no EndpointSlice {i}"
        );
        let mut state = self.shared.lock();
        state.revision += 1;
        slice.metadata.resource_version = Some(state.revision.to_string());
        self.shared
            .modify(&mut state, Resource::EndpointSlices, i, &slice)
    }

    /// Pod `i` as it is now: as generated, or as last changed.
    pub fn pod(&self, i: usize) -> Result<Pod> {
        let state = self.shared.lock();
        match state.changed.get(&(Resource::Pods, i)) {
            Some(json) => serde_json::from_slice(json).context("decoding a changed Pod"),
            None => Ok(self.shared.objects.pod(i)),
        }
    }

    /// As [`FakeApi::modify_slice`], for Pod `i`; a watch of another node's pods is not told.
    pub fn modify_pod(&self, i: usize, mut pod: Pod) -> Result<Written> {
        anyhow::ensure!(i < self.shared.objects.pod_count(), "there is no Pod {i}");
        let mut state = self.shared.lock();
        state.revision += 1;
        pod.metadata.resource_version = Some(state.revision.to_string());
        self.shared.modify(&mut state, Resource::Pods, i, &pod)
    }

    /// As [`FakeApi::modify_slice`], for NetworkPolicy `i`.
    pub fn modify_policy(&self, i: usize, mut policy: NetworkPolicy) -> Result<Written> {
        anyhow::ensure!(
            i < self.shared.objects.policy_count(),
            "there is no NetworkPolicy {i}"
        );
        let mut state = self.shared.lock();
        state.revision += 1;
        policy.metadata.resource_version = Some(state.revision.to_string());
        self.shared
            .modify(&mut state, Resource::NetworkPolicies, i, &policy)
    }
}

impl Shared {
    /// Keeps `object` (at the state's revision) as object `i` of `kind` and sends a MODIFIED
    /// event for it on every open watch of that kind; fails if none is open.
    fn modify(
        &self,
        state: &mut State,
        kind: Resource,
        i: usize,
        object: &impl Serialize,
    ) -> Result<Written> {
        let json = Bytes::from(serde_json::to_vec(object).context("encoding the object")?);
        let line = event_line("MODIFIED", object).context("encoding the event")?;
        state.changed.insert((kind, i), json);
        state.history.push((kind, state.revision, line.clone()));
        let written: Written = Arc::new(OnceLock::new());
        let mut sent = 0;
        // A Pod's node, for the watches of one node's pods.
        let on = serde_json::to_value(object)
            .ok()
            .and_then(|v| v["spec"]["nodeName"].as_str().map(str::to_owned));
        state.watches.retain(|(resource, node, events)| {
            if *resource != kind || node.as_ref().is_some_and(|node| Some(node) != on.as_ref()) {
                return !events.is_closed();
            }
            let chunk = Chunk {
                bytes: line.clone(),
                written: Some(written.clone()),
            };
            let open = events.send(chunk).is_ok();
            sent += usize::from(open);
            open
        });
        anyhow::ensure!(sent > 0, "no {kind:?} watch is open");
        Ok(written)
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.server.abort();
        // Ends every watch stream: their connections close.
        self.shared.lock().watches.clear();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves nothing half-written that matters here.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many objects of `resource` there are (Nodes are answered apart).
    fn count(&self, resource: Resource) -> usize {
        match resource {
            Resource::Services | Resource::EndpointSlices => self.objects.count(),
            Resource::NetworkPolicies => self.objects.policy_count(),
            Resource::Namespaces => self.objects.namespace_count(),
            Resource::Pods => self.objects.pod_count(),
            Resource::Nodes => 0,
        }
    }

    /// Object `i` of `resource` as it is now, as JSON: as last changed, or as generated.
    /// `None` for a Pod on another node than `node`, if given.
    fn item(
        &self,
        state: &State,
        resource: Resource,
        i: usize,
        node: Option<&str>,
    ) -> serde_json::Result<Option<Bytes>> {
        if let Some(json) = state.changed.get(&(resource, i)) {
            return Ok(Some(json.clone()));
        }
        fn encode(object: &impl Serialize) -> serde_json::Result<Option<Bytes>> {
            serde_json::to_vec(object).map(|json| Some(Bytes::from(json)))
        }
        let revision = Some(FIRST_REVISION.to_string());
        match resource {
            Resource::Services => {
                let mut service = self.objects.service(i);
                service.metadata.resource_version = revision;
                encode(&service)
            }
            Resource::EndpointSlices => encode(&with_revision(self.objects.slice(i))),
            Resource::NetworkPolicies => {
                let mut policy = self.objects.policy(i);
                policy.metadata.resource_version = revision;
                encode(&policy)
            }
            Resource::Namespaces => {
                let mut namespace = self.objects.namespace(i);
                namespace.metadata.resource_version = revision;
                encode(&namespace)
            }
            Resource::Pods => {
                let mut pod = self.objects.pod(i);
                let on = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
                if node.is_some_and(|node| on != Some(node)) {
                    return Ok(None);
                }
                pod.metadata.resource_version = revision;
                encode(&pod)
            }
            Resource::Nodes => Ok(None),
        }
    }
}

fn with_revision(mut slice: EndpointSlice) -> EndpointSlice {
    slice.metadata.resource_version = Some(FIRST_REVISION.to_string());
    slice
}

async fn accept(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // Watch events are small writes that must leave at once.
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(answer(&shared, request).await) }
            });
            // A client that goes away mid-request is no concern of the fake's.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Reply = Response<Either<Full<Bytes>, WatchBody>>;

/// What kube-apiserver would answer, as far as the fake knows the request.
async fn answer(shared: &Shared, request: Request<Incoming>) -> Reply {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query: HashMap<String, String> = request
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let resource = match segments.as_slice() {
        ["api", "v1", "services"] => Some(Resource::Services),
        ["apis", "discovery.k8s.io", "v1", "endpointslices"] => Some(Resource::EndpointSlices),
        ["api", "v1", "nodes"] => Some(Resource::Nodes),
        ["apis", "networking.k8s.io", "v1", "networkpolicies"] => Some(Resource::NetworkPolicies),
        ["api", "v1", "namespaces"] => Some(Resource::Namespaces),
        ["api", "v1", "pods"] => Some(Resource::Pods),
        _ => None,
    };
    let reply = match (&method, resource, segments.as_slice()) {
        (&Method::GET, Some(resource), _) if watch => Ok(shared.watch(resource, &query)),
        (&Method::GET, Some(Resource::Nodes), _) => Ok(shared.nodes(&query)),
        (&Method::GET, Some(resource), _) => shared.list(resource, &query),
        (&Method::GET, None, ["apis", "discovery.k8s.io", "v1"]) => {
            shared.lock().requests.other_reads += 1;
            Ok(json_reply(StatusCode::OK, discovery()))
        }
        (&Method::POST, None, ["api", "v1", "namespaces", _, "events"]) => {
            post_event(shared, request.into_body()).await
        }
        _ => Err((
            StatusCode::NOT_FOUND,
            "the fake serves no such thing".to_owned(),
        )),
    };
    reply.unwrap_or_else(|(code, message)| {
        let mut state = shared.lock();
        state.requests.refused += 1;
        if state.refused.len() < 10 {
            let query = request_query(&query);
            state
                .refused
                .push(format!("{method} {path}{query} → {}", code.as_u16()));
        }
        status_reply(code, &message)
    })
}

fn request_query(query: &HashMap<String, String>) -> String {
    if query.is_empty() {
        return String::new();
    }
    let mut pairs: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    format!("?{}", pairs.join("&"))
}

type Refusal = (StatusCode, String);

impl Shared {
    /// One page of `resource` from the `continue` token's index, at most `limit` long (all the
    /// rest without a limit).
    fn list(&self, resource: Resource, query: &HashMap<String, String>) -> Result<Reply, Refusal> {
        let bad = |what: &str, value: &str| {
            (StatusCode::BAD_REQUEST, format!("invalid {what} {value:?}"))
        };
        let start = match query.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => token.parse::<usize>().map_err(|_| bad("continue", token))?,
            None => 0,
        };
        let limit = match query.get("limit") {
            Some(limit) => limit.parse::<usize>().map_err(|_| bad("limit", limit))?,
            None => 0,
        };
        let node = query
            .get("fieldSelector")
            .and_then(|s| s.strip_prefix("spec.nodeName="));
        let mut state = self.lock();
        state.first_list.get_or_insert_with(Instant::now);
        state.requests.list_pages += 1;
        let page = self
            .page(&state, resource, start, limit, node)
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        Ok(bytes_reply(StatusCode::OK, page))
    }

    /// The list of `resource` from index `start`, at most `limit` items long (all the rest
    /// with 0), of only the Pods on `node` if given.
    fn page(
        &self,
        state: &State,
        resource: Resource,
        start: usize,
        limit: usize,
        node: Option<&str>,
    ) -> serde_json::Result<Bytes> {
        let count = self.count(resource);
        let limit = if limit == 0 { usize::MAX } else { limit };
        let (kind, api_version) = match resource {
            Resource::Services => ("ServiceList", "v1"),
            Resource::EndpointSlices => ("EndpointSliceList", "discovery.k8s.io/v1"),
            Resource::NetworkPolicies => ("NetworkPolicyList", "networking.k8s.io/v1"),
            Resource::Namespaces => ("NamespaceList", "v1"),
            Resource::Pods | Resource::Nodes => ("PodList", "v1"),
        };
        let mut items = Vec::with_capacity(limit.min(count.saturating_sub(start)) * 600);
        let (mut taken, mut end) = (0, start);
        while end < count && taken < limit {
            if let Some(item) = self.item(state, resource, end, node)? {
                if taken > 0 {
                    items.push(b',');
                }
                items.extend_from_slice(&item);
                taken += 1;
            }
            end += 1;
        }
        let mut metadata = json!({ "resourceVersion": state.revision.to_string() });
        if end < count {
            metadata["continue"] = json!(end.to_string());
            if node.is_none() {
                metadata["remainingItemCount"] = json!(count - end);
            }
        }
        let mut body = format!(
            r#"{{"apiVersion":"{api_version}","kind":"{kind}","metadata":{metadata},"items":["#
        )
        .into_bytes();
        body.extend_from_slice(&items);
        body.extend_from_slice(b"]}");
        Ok(Bytes::from(body))
    }

    /// The Node, if the field selector (`metadata.name=NAME`, or none) names it.
    fn nodes(&self, query: &HashMap<String, String>) -> Reply {
        let node = self.objects.node();
        let wanted = query
            .get("fieldSelector")
            .and_then(|s| s.strip_prefix("metadata.name="));
        let matches = wanted.is_none_or(|name| node.metadata.name.as_deref() == Some(name));
        let mut state = self.lock();
        state.requests.other_reads += 1;
        let items: Vec<Node> = if matches {
            let mut node = node;
            node.metadata.resource_version = Some(FIRST_REVISION.to_string());
            vec![node]
        } else {
            Vec::new()
        };
        json_reply(
            StatusCode::OK,
            json!({
                "apiVersion": "v1",
                "kind": "NodeList",
                "metadata": { "resourceVersion": state.revision.to_string() },
                "items": items,
            }),
        )
    }

    /// A watch stream, replaying the events of its kind after the requested resourceVersion
    /// first.
    fn watch(&self, resource: Resource, query: &HashMap<String, String>) -> Reply {
        let since = query
            .get("resourceVersion")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let (events, receiver) = unbounded_channel();
        let mut state = self.lock();
        state.requests.watches += 1;
        for (kind, revision, line) in &state.history {
            if *kind == resource && *revision > since {
                let _ = events.send(Chunk {
                    bytes: line.clone(),
                    written: None,
                });
            }
        }
        let node = query
            .get("fieldSelector")
            .and_then(|s| s.strip_prefix("spec.nodeName="))
            .map(str::to_owned);
        state.watches.push((resource, node, events));
        let mut reply = Response::new(Either::Right(WatchBody { events: receiver }));
        reply.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        reply
    }
}

/// `discovery.k8s.io/v1` as kube-apiserver 1.21+ lists it.
fn discovery() -> serde_json::Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "discovery.k8s.io/v1",
        "resources": [{
            "name": "endpointslices",
            "singularName": "endpointslice",
            "namespaced": true,
            "kind": "EndpointSlice",
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        }],
    })
}

/// An Event a client records: answered with itself, as created.
async fn post_event(shared: &Shared, body: Incoming) -> Result<Reply, Refusal> {
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("reading the body: {e}")))?
        .to_bytes();
    serde_json::from_slice::<serde_json::Value>(&body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON: {e}"),
        )
    })?;
    shared.lock().requests.events_posted += 1;
    Ok(bytes_reply(StatusCode::CREATED, body))
}

fn event_line(kind: &str, object: &impl Serialize) -> serde_json::Result<Bytes> {
    let mut line = serde_json::to_vec(&json!({ "type": kind, "object": object }))?;
    line.push(b'\n');
    Ok(Bytes::from(line))
}

fn bytes_reply(code: StatusCode, body: Bytes) -> Reply {
    let mut reply = Response::new(Either::Left(Full::new(body)));
    *reply.status_mut() = code;
    reply.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    reply
}

fn json_reply(code: StatusCode, value: serde_json::Value) -> Reply {
    bytes_reply(code, Bytes::from(value.to_string()))
}

/// A `Status` failure, as kube-apiserver answers one.
fn status_reply(code: StatusCode, message: &str) -> Reply {
    let reason = match code {
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::BAD_REQUEST => "BadRequest",
        _ => "InternalError",
    };
    json_reply(
        code,
        json!({
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        }),
    )
}

/// A watch stream's body: the events sent to it, each stamped when the connection takes it.
pub struct WatchBody {
    events: UnboundedReceiver<Chunk>,
}

impl Body for WatchBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.events.poll_recv(cx) {
            Poll::Ready(Some(chunk)) => {
                if let Some(written) = chunk.written {
                    let _ = written.set(Instant::now());
                }
                Poll::Ready(Some(Ok(Frame::data(chunk.bytes))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
