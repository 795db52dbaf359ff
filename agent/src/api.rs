//! The daemon's local API: HTTP on a unix socket only root can open (mode 0600), serving
//! the pods and the node's events as Kubernetes objects. `bosun get` is its client.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Event, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::de::DeserializeOwned;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use crate::events::{FieldSelector, Recorder};
use crate::store::{Objects, PodStore};

/// The path of the pod list.
pub const PODS_PATH: &str = "/api/v1/pods";
/// The path of the event list; it takes a `fieldSelector` query parameter.
pub const EVENTS_PATH: &str = "/api/v1/events";
/// The path of the Service list: those of the object store.
pub const SERVICES_PATH: &str = "/api/v1/services";
/// The path of the EndpointSlice list: from manifests or the API server, and computed from
/// static pods.
pub const ENDPOINT_SLICES_PATH: &str = "/apis/discovery.k8s.io/v1/endpointslices";

/// The path of the NetworkPolicy list: those of the object store.
pub const NETWORK_POLICIES_PATH: &str = "/apis/networking.k8s.io/v1/networkpolicies";

/// What the API serves: it reads the stores, and writes nothing.
#[derive(Clone)]
pub struct ApiState {
    pub pods: PodStore,
    pub events: Recorder,
    pub objects: Objects,
}

/// Serves the API on `socket` until the returned task is aborted, with event, Service and
/// EndpointSlice lists that stay empty: [`serve_with`] serves them all.
pub fn serve(socket: &Path, store: PodStore) -> Result<JoinHandle<()>> {
    serve_with(
        socket,
        ApiState {
            pods: store,
            events: Recorder::new(""),
            objects: Objects::default(),
        },
    )
}

/// Serves `state` on `socket` until the returned task is aborted.
pub fn serve_with(socket: &Path, state: ApiState) -> Result<JoinHandle<()>> {
    // A socket left by a daemon that was killed is in the way; nothing else should be there.
    if socket.exists() {
        std::fs::remove_file(socket)
            .with_context(|| format!("removing the stale socket {}", socket.display()))?;
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("listening on {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", socket.display()))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = respond(&request, &state);
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }))
}

fn respond<B>(request: &Request<B>, state: &ApiState) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if ![
        PODS_PATH,
        EVENTS_PATH,
        SERVICES_PATH,
        ENDPOINT_SLICES_PATH,
        NETWORK_POLICIES_PATH,
    ]
    .contains(&path)
    {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no such path {path}"),
        );
    }
    if request.method() != Method::GET {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{} is read-only", path),
        );
    }
    match path {
        PODS_PATH => return list("PodList", &state.pods.list()),
        NETWORK_POLICIES_PATH => {
            return list("NetworkPolicyList", &state.objects.network_policies.list())
        }
        SERVICES_PATH => return list("ServiceList", &state.objects.services.list()),
        ENDPOINT_SLICES_PATH => {
            return list("EndpointSliceList", &state.objects.endpoint_slices.list())
        }
        _ => {}
    }
    let selector = match field_selector(request.uri().query().unwrap_or_default()) {
        Ok(selector) => selector,
        Err(message) => return status(StatusCode::BAD_REQUEST, "BadRequest", message),
    };
    let items: Vec<Arc<Event>> = state
        .events
        .events()
        .into_iter()
        .filter(|e| selector.matches(e))
        .map(Arc::new)
        .collect();
    list("EventList", &items)
}

/// The `fieldSelector` parameter of a query string; none selects everything.
fn field_selector(query: &str) -> Result<FieldSelector, String> {
    let raw = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == "fieldSelector")
        .map(|(_, value)| percent_decode(value))
        .transpose()?
        .unwrap_or_default();
    FieldSelector::parse(&raw).map_err(|e| e.to_string())
}

/// Decodes a query value (`%XX` escapes, and `+` for a space as forms send it).
fn percent_decode(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("invalid percent-encoding in {value:?}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{value:?} is not UTF-8 once decoded"))
}

/// Encodes a query value: everything but RFC 3986's unreserved characters is escaped.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn list<T: serde::Serialize>(kind: &str, items: &[Arc<T>]) -> Response<Full<Bytes>> {
    let items: Vec<&T> = items.iter().map(|item| &**item).collect();
    json(
        StatusCode::OK,
        &serde_json::json!({"kind": kind, "apiVersion": "v1", "metadata": {}, "items": items}),
    )
}

/// A `v1.Status` failure, as the API server answers one.
fn status(code: StatusCode, reason: &str, message: String) -> Response<Full<Bytes>> {
    json(
        code,
        &serde_json::json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        }),
    )
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Fetches the pods from a running daemon.
pub async fn get_pods(socket: &Path) -> Result<Vec<Pod>> {
    get_list(socket, PODS_PATH, "pods").await
}

/// Fetches the node's events from a running daemon, least recently seen first; with a
/// `fieldSelector` (e.g. `involvedObject.kind=Pod,involvedObject.name=web`), only those it
/// selects.
pub async fn get_events(socket: &Path, field_selector: Option<&str>) -> Result<Vec<Event>> {
    let path = match field_selector {
        Some(selector) => format!("{EVENTS_PATH}?fieldSelector={}", percent_encode(selector)),
        None => EVENTS_PATH.to_owned(),
    };
    get_list(socket, &path, "events").await
}

/// Fetches the Services the daemon's service proxy last compiled.
pub async fn get_services(socket: &Path) -> Result<Vec<Service>> {
    get_list(socket, SERVICES_PATH, "services").await
}

/// Fetches the EndpointSlices the daemon's service proxy last compiled: from manifests and
/// computed from static pods.
pub async fn get_endpoint_slices(socket: &Path) -> Result<Vec<EndpointSlice>> {
    get_list(socket, ENDPOINT_SLICES_PATH, "endpointslices").await
}

/// Fetches the NetworkPolicies the daemon's policy enforcer last compiled.
pub async fn get_network_policies(socket: &Path) -> Result<Vec<NetworkPolicy>> {
    get_list(socket, NETWORK_POLICIES_PATH, "networkpolicies").await
}

/// GETs the list at `path` and returns its items; `what` names them in errors.
async fn get_list<T: DeserializeOwned>(socket: &Path, path: &str, what: &str) -> Result<Vec<T>> {
    let stream = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "connecting to the bosun daemon at {} (is `bosun run` running?)",
            socket.display()
        )
    })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("talking to the bosun daemon")?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(hyper::header::HOST, "localhost")
        .body(Full::new(Bytes::new()))
        .context("building the request")?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("asking the daemon for {what}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading the daemon's answer")?
        .to_bytes();
    if !status.is_success() {
        #[derive(serde::Deserialize)]
        struct Status {
            message: String,
        }
        let message = serde_json::from_slice::<Status>(&body)
            .map(|s| s.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        anyhow::bail!("the daemon answered {status}: {message}");
    }
    #[derive(serde::Deserialize)]
    struct List<T> {
        items: Vec<T>,
    }
    let list: List<T> = serde_json::from_slice(&body)
        .with_context(|| format!("decoding the daemon's list of {what}"))?;
    Ok(list.items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{reason, EventType};

    fn pod(name: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {"containers": [{"name": "app"}]},
        }))
        .expect("a valid pod")
    }

    #[tokio::test]
    async fn events_round_trip_over_the_socket() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("bosun.sock");
        let recorder = Recorder::new("node-1");
        let web = pod("web-node-1");
        let db = pod("db-node-1");
        recorder.normal(&web, reason::PULLING_IMAGE, "Pulling image \"busybox\"");
        recorder.warning(&db, reason::BACK_OFF_START_CONTAINER, "Back-off restarting");
        recorder.normal(&web, reason::PULLING_IMAGE, "Pulling image \"busybox\"");
        recorder.record(
            recorder.node_reference(),
            EventType::Warning,
            reason::FAILED_VALIDATION,
            "bad.yaml: not a pod",
        );
        let server = serve_with(
            &socket,
            ApiState {
                pods: PodStore::default(),
                events: recorder.clone(),
                objects: Objects::default(),
            },
        )?;

        let all = get_events(&socket, None).await?;
        let names = |events: &[Event]| -> Vec<Option<String>> {
            events.iter().map(|e| e.metadata.name.clone()).collect()
        };
        assert_eq!(names(&all), names(&recorder.events()));
        let reasons: Vec<_> = all.iter().filter_map(|e| e.reason.as_deref()).collect();
        assert_eq!(reasons, ["BackOff", "Pulling", "FailedValidation"]);
        assert_eq!(all[1].count, Some(2));

        let web_events = get_events(
            &socket,
            Some("involvedObject.kind=Pod,involvedObject.name=web-node-1"),
        )
        .await?;
        assert_eq!(web_events.len(), 1);
        assert_eq!(
            web_events[0].involved_object.name.as_deref(),
            Some("web-node-1")
        );

        let error = get_events(&socket, Some("spec.nodeName=node-1"))
            .await
            .expect_err("an unsupported field is refused");
        assert_eq!(
            error.to_string(),
            "the daemon answered 400 Bad Request: field label not supported: spec.nodeName"
        );

        // The pods are still served beside the events.
        assert!(get_pods(&socket).await?.is_empty());
        server.abort();
        Ok(())
    }

    #[tokio::test]
    async fn a_missing_daemon_is_named_in_the_error() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let socket = dir.path().join("bosun.sock");
        let error = get_events(&socket, None).await.expect_err("no daemon");
        assert!(
            format!("{error:#}").contains("is `bosun run` running?"),
            "{error:#}"
        );
    }

    #[test]
    fn query_values_survive_encoding() {
        let selector = "involvedObject.name=web node/1,type!=Normal%";
        let query = format!("limit=5&fieldSelector={}", percent_encode(selector));
        assert_eq!(
            field_selector(&query),
            FieldSelector::parse(selector).map_err(|e| e.to_string())
        );
        assert_eq!(percent_decode("a+b%2Cc").as_deref(), Ok("a b,c"));
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("%ff").is_err());
    }

    #[test]
    fn unknown_paths_and_methods_get_a_status() {
        let state = ApiState {
            pods: PodStore::default(),
            events: Recorder::new("node-1"),
            objects: Objects::default(),
        };
        let get = |uri: &str| Request::get(uri).body(()).expect("a request");
        assert_eq!(
            respond(&get("/api/v1/nodes"), &state).status(),
            StatusCode::NOT_FOUND
        );
        let post = Request::post(EVENTS_PATH).body(()).expect("a request");
        assert_eq!(
            respond(&post, &state).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            respond(&get("/api/v1/events?fieldSelector=bogus"), &state).status(),
            StatusCode::BAD_REQUEST
        );
    }
}
