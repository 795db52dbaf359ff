//! The kubelet API on the node's HTTPS port (kubelet's `pkg/kubelet/server`): what the API
//! server proxies `kubectl logs`, `exec`, `attach`, `port-forward` and `cp` to, what
//! metrics-server and Prometheus scrape, and `/healthz` on its own plain-HTTP port.
//!
//! Every request is authenticated and authorized ([`auth`]) before anything is read,
//! executed or streamed; refusals get kubelet's status codes and bodies.

pub mod auth;
pub mod logs;
pub mod query;
pub mod serving_cert;
pub mod stats;
pub mod streaming;
pub mod tls;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use bosun_cri::{api, CriClient};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::CertificateDer;

use crate::metrics;
use crate::pod::observed::keys;
use crate::store::PodStore;
use auth::{
    Attributes, AuthenticationConfig, Authenticator, AuthorizationConfig, Authorizer, Decision,
};
use query::Query;
use stats::StatsProvider;
use tls::{Tls, TlsConfig};

/// A response body: whole, or streamed (logs).
pub type Body = BoxBody<Bytes, std::io::Error>;

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn empty() -> Body {
    full(Bytes::new())
}

/// A 200 answer of `body` with the content type `content_type`.
pub(crate) fn typed(body: Body, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

pub(crate) fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut response = typed(full(message.into()), "text/plain; charset=utf-8");
    *response.status_mut() = status;
    response
}

fn json(value: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => typed(full(bytes), "application/json"),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// How long a connection may wait for a request's headers (kubelet's server: an idle
/// keep-alive connection is closed after 90 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's settings (kubelet's names).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// `address` and `port`.
    pub listen: SocketAddr,
    pub tls: TlsConfig,
    pub authentication: AuthenticationConfig,
    pub authorization: AuthorizationConfig,
}

/// What the handlers read.
pub struct State {
    pub node: String,
    pub pods: PodStore,
    pub runtime: CriClient,
    pub authenticator: Authenticator,
    pub authorizer: Authorizer,
    pub stats: Arc<StatsProvider>,
    pub policy_bpf_dir: Option<std::path::PathBuf>,
    /// `/configz`: the configuration in effect, as kubelet's `{"kubeletconfig": …}`.
    pub configz: serde_json::Value,
}

/// What the server serves from.
pub struct Sources {
    pub node: String,
    pub pods: PodStore,
    pub runtime: CriClient,
    /// The API server's client, for token and access reviews; `None` standalone.
    pub api: Option<kube::Client>,
    pub stats: Arc<StatsProvider>,
    pub configz: serde_json::Value,
    /// The bpffs directory of the NetworkPolicy datapath, whose counters `/metrics` adds;
    /// `None` where policy is not enforced.
    pub policy_bpf_dir: Option<std::path::PathBuf>,
}

/// Starts the HTTPS server. Fails if the port cannot be bound (kubelet exits then too).
pub async fn serve(config: &ServerConfig, sources: Sources) -> Result<JoinHandle<()>> {
    let tls = Tls::load(&config.tls).context("the kubelet API's TLS settings")?;
    let Sources {
        node,
        pods,
        runtime,
        api,
        stats,
        configz,
        policy_bpf_dir,
    } = sources;
    let certificate_api = api.clone();
    let state = Arc::new(State {
        authenticator: Authenticator::new(
            config.authentication.clone(),
            tls.client_ca.clone(),
            api.clone(),
        ),
        authorizer: Authorizer::new(config.authorization.clone(), node.clone(), api.clone()),
        node,
        pods,
        runtime,
        stats,
        configz,
        policy_bpf_dir,
    });
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {} (address, port)", config.listen))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server);
    tracing::info!(address = %config.listen, "serving the kubelet API");
    let certificate = match (tls.serving, certificate_api) {
        (Some(serving), Some(api)) => Some(serving_cert::run(
            api,
            serving_cert::Request {
                node: state.node.clone(),
                alternative_names: config.tls.hostnames.clone(),
                cert_dir: config.tls.cert_dir.clone(),
            },
            serving,
        )),
        (Some(_), None) => anyhow::bail!("serverTLSBootstrap needs an API server (--kubeconfig)"),
        _ => None,
    };
    Ok(tokio::spawn(async move {
        let served = serve_tls(listener, acceptor, state);
        match certificate {
            Some(certificate) => {
                tokio::join!(served, certificate);
            }
            None => served.await,
        }
    }))
}

async fn serve_tls(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor, state: Arc<State>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a kubelet API connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Small writes (an exec's echo, a terminal's keystroke) go out at once, as Go's
        // sockets (kubelet's) send them.
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            let certificates: Option<Arc<[CertificateDer<'static>]>> = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect());
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                let certificates = certificates.clone();
                async move {
                    Ok::<_, Infallible>(handle(request, certificates.as_deref(), &state).await)
                }
            });
            let served = http1()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "kubelet API connection");
            }
        });
    }
}

/// How long to wait before trying again to listen on a plain-HTTP port.
const LISTEN_RETRY: Duration = Duration::from_secs(5);

/// Serves `/healthz` in plain HTTP on `address` (`healthzBindAddress`, `healthzPort`). As
/// kubelet's, a port that cannot be bound is logged and tried again, and stops nothing else.
pub async fn serve_healthz(address: SocketAddr) {
    serve_plain(
        address,
        "/healthz (healthzBindAddress, healthzPort)",
        |request: Request<Incoming>| async move {
            if request.uri().path() == "/healthz" {
                text(StatusCode::OK, "ok")
            } else {
                not_found()
            }
        },
    )
    .await
}

/// Serves plain HTTP/1 on `address`, each request answered by `handle`. A port that cannot
/// be bound is logged (naming `what` is served there) and tried again every 5 s; nothing
/// else waits on it. Never returns.
pub(crate) async fn serve_plain<F, R>(address: SocketAddr, what: &str, handle: F)
where
    F: Fn(Request<Incoming>) -> R + Clone + Send + 'static,
    R: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let listener = listen_retrying(address, what, |_| {}).await;
    serve_listener(listener, handle).await
}

/// Listens on `address`, trying again every 5 s while it cannot; each failure is logged
/// (naming `what` is served there) and handed to `failed`.
pub(crate) async fn listen_retrying(
    address: SocketAddr,
    what: &str,
    mut failed: impl FnMut(&std::io::Error),
) -> TcpListener {
    loop {
        match TcpListener::bind(address).await {
            Ok(listener) => return listener,
            Err(e) => {
                tracing::error!(%address, error = %e, "listening for {what}; trying again");
                failed(&e);
                tokio::time::sleep(LISTEN_RETRY).await;
            }
        }
    }
}

/// Serves plain HTTP/1 on `listener`, each request answered by `handle`. Never returns;
/// dropping it closes the listener and every connection it accepted.
pub(crate) async fn serve_listener<F, R>(listener: TcpListener, handle: F)
where
    F: Fn(Request<Incoming>) -> R + Clone + Send + 'static,
    R: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Finished connections are reaped so the set holds only live ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let handle = handle.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let answer = handle(request);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let _ = http1()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// HTTP/1 as both servers speak it: a connection that sends no request for
/// [`IDLE_TIMEOUT`] (idle between requests, or slow with its headers) is closed.
fn http1() -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(IDLE_TIMEOUT);
    builder
}

/// Go's answer to an unknown path, as kubelet gives it.
pub(crate) fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "404 page not found\n")
}

/// Authenticates, authorizes, then routes one request.
pub async fn handle(
    request: Request<Incoming>,
    certificates: Option<&[CertificateDer<'static>]>,
    state: &State,
) -> Response<Body> {
    let authorization = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let user = match state
        .authenticator
        .authenticate(certificates, authorization)
        .await
    {
        Ok(Some(user)) => user,
        Ok(None) => return text(StatusCode::UNAUTHORIZED, "Unauthorized"),
        Err(e) => {
            tracing::warn!(error = %e, "authenticating a kubelet API request");
            return text(StatusCode::UNAUTHORIZED, "Unauthorized");
        }
    };
    let attributes = Attributes::of(request.method(), request.uri().path());
    let described = format!(
        "(user={}, verb={}, resource=nodes, subresource={})",
        user.name, attributes.verb, attributes.subresource
    );
    match state.authorizer.authorize(&user, &attributes).await {
        Ok(Decision::Allow) => {}
        Ok(Decision::Deny(reason)) => {
            tracing::debug!(%reason, "Forbidden {described}");
            return text(StatusCode::FORBIDDEN, format!("Forbidden {described}"));
        }
        Err(e) => {
            tracing::warn!(error = %e, "Authorization error {described}");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Authorization error {described}"),
            );
        }
    }
    route(request, state).await
}

/// A request's path split into its segments: `/exec/ns/pod/c` → `["exec", "ns", "pod", "c"]`.
fn segments(path: &str) -> Vec<&str> {
    path.trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect()
}

async fn route(request: Request<Incoming>, state: &State) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let parts = segments(&path);
    let method = request.method().clone();
    let read_only = method == Method::GET || method == Method::HEAD;
    match (parts.as_slice(), read_only) {
        (["healthz"], true) => text(StatusCode::OK, "ok"),
        (["pods"], true) => pod_list(&state.pods.list()),
        (["runningpods"], true) => running_pods(state).await,
        (["configz"], true) => json(&serde_json::json!({ "kubeletconfig": state.configz })),
        (["stats", "summary"], true) => {
            let only_cpu_and_memory = query(&request).first("only_cpu_and_memory") == Some("true");
            let summary = if only_cpu_and_memory {
                state.stats.cpu_and_memory(&state.runtime).await
            } else {
                state.stats.summary(&state.runtime).await
            };
            match summary {
                Ok(summary) => json(&summary),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        (["metrics"], true) => {
            let mut body = metrics::encode();
            if let Some(dir) = state.policy_bpf_dir.clone() {
                match tokio::task::spawn_blocking(move || policy_packets(&dir)).await {
                    Ok(Ok(text)) => body.push_str(&text),
                    Ok(Err(e)) => tracing::debug!(error = %e, "reading the policy counters"),
                    Err(e) => tracing::debug!(error = %e, "reading the policy counters"),
                }
            }
            typed(full(body), metrics::CONTENT_TYPE)
        }
        (["metrics", "probes"], true) => {
            typed(full(metrics::encode_probes()), metrics::CONTENT_TYPE)
        }
        (["metrics", "resource"], true) => {
            let body = state.stats.scrape_resource_metrics(&state.runtime).await;
            typed(full(body), stats::RESOURCE_METRICS_CONTENT_TYPE)
        }
        (["containerLogs", namespace, pod, container], true) => {
            container_logs(&request, state, namespace, pod, container).await
        }
        (["exec" | "attach", namespace, pod, container], _)
        | (["exec" | "attach", namespace, pod, _, container], _)
            if method == Method::GET || method == Method::POST =>
        {
            let uid = (parts.len() == 5).then(|| parts[3]);
            let kind = parts[0].to_owned();
            let (namespace, pod, container) = (
                (*namespace).to_owned(),
                (*pod).to_owned(),
                (*container).to_owned(),
            );
            stream_container(
                request,
                state,
                &kind,
                &namespace,
                &pod,
                uid.map(str::to_owned),
                &container,
            )
            .await
        }
        (["portForward", namespace, pod], _) | (["portForward", namespace, pod, _], _)
            if method == Method::GET || method == Method::POST =>
        {
            let uid = parts.get(3).map(|u| (*u).to_owned());
            let (namespace, pod) = ((*namespace).to_owned(), (*pod).to_owned());
            port_forward(request, state, &namespace, &pod, uid).await
        }
        (["run", namespace, pod, container], _) | (["run", namespace, pod, _, container], _)
            if method == Method::POST =>
        {
            let uid = (parts.len() == 5).then(|| parts[3].to_owned());
            run_in_container(&request, state, namespace, pod, uid, container).await
        }
        _ => not_found(),
    }
}

/// A page of metrics in Prometheus' text format.
fn pod_list(pods: &[Arc<Pod>]) -> Response<Body> {
    let items: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
    json(&serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": items,
    }))
}

/// `/runningpods/`: the pods the runtime holds, whatever the sources want: names, UIDs and
/// their running containers' names and images (kubelet builds them from its runtime cache).
async fn running_pods(state: &State) -> Response<Body> {
    let listed = tokio::try_join!(
        state.runtime.list_pod_sandbox(None),
        state.runtime.list_containers(None)
    );
    let (sandboxes, containers) = match listed {
        Ok(listed) => listed,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
    for sandbox in sandboxes
        .iter()
        .filter(|s| s.state == api::PodSandboxState::SandboxReady as i32)
    {
        let Some(meta) = &sandbox.metadata else {
            continue;
        };
        if sandbox.labels.get(keys::MANAGED_BY).map(String::as_str) != Some(keys::MANAGED_BY_VALUE)
        {
            continue;
        }
        pods.entry(meta.uid.clone()).or_insert_with(|| Pod {
            metadata: ObjectMeta {
                name: Some(meta.name.clone()),
                namespace: Some(meta.namespace.clone()),
                uid: Some(meta.uid.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec::default()),
            status: None,
        });
    }
    for container in containers
        .iter()
        .filter(|c| c.state == api::ContainerState::ContainerRunning as i32)
    {
        let Some(pod) = container
            .labels
            .get(keys::POD_UID)
            .and_then(|uid| pods.get_mut(uid))
        else {
            continue;
        };
        if let Some(spec) = pod.spec.as_mut() {
            spec.containers.push(Container {
                name: container
                    .metadata
                    .as_ref()
                    .map(|m| m.name.clone())
                    .unwrap_or_default(),
                image: container.image.as_ref().map(|i| i.image.clone()),
                ..Container::default()
            });
        }
    }
    let pods: Vec<Arc<Pod>> = pods.into_values().map(Arc::new).collect();
    pod_list(&pods)
}

/// The request's query, decoded as kubelet decodes it.
fn query(request: &Request<Incoming>) -> Query {
    Query::parse(request.uri().query().unwrap_or_default())
}

/// A streaming flag as the API server passes it (`1`; `true` is taken too).
fn flag(values: &Query, name: &str) -> bool {
    values
        .first(name)
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The pod `namespace/name`, checked against `uid` when the path gave one.
fn find_pod(
    state: &State,
    namespace: &str,
    name: &str,
    uid: Option<&str>,
) -> Result<Arc<Pod>, Box<Response<Body>>> {
    let pod = state.pods.get_named(namespace, name).ok_or_else(|| {
        Box::new(text(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{name} does not exist"),
        ))
    })?;
    if let Some(uid) = uid {
        if pod.metadata.uid.as_deref() != Some(uid) {
            return Err(Box::new(text(
                StatusCode::NOT_FOUND,
                format!("pod {namespace}/{name} with UID {uid} does not exist"),
            )));
        }
    }
    Ok(pod)
}

/// The status of the container `name` of a pod: app, init or ephemeral.
fn container_status<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    let status = pod.status.as_ref()?;
    [
        &status.container_statuses,
        &status.init_container_statuses,
        &status.ephemeral_container_statuses,
    ]
    .into_iter()
    .flatten()
    .flatten()
    .find(|s| s.name == name)
}

/// A container ID without its runtime prefix (`containerd://…`).
fn runtime_id(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, id)| id)
}

/// The ID of the running instance of the container `name` of a pod, or the answer to give.
fn running_container(pod: &Pod, name: &str) -> Result<String, Box<Response<Body>>> {
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    let status = container_status(pod, name).ok_or_else(|| {
        Box::new(text(
            StatusCode::NOT_FOUND,
            format!("container {name:?} not found in pod {pod_name:?}"),
        ))
    })?;
    let running = status.state.as_ref().is_some_and(|s| s.running.is_some());
    match status.container_id.as_deref().filter(|_| running) {
        Some(id) => Ok(runtime_id(id).to_owned()),
        None => Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            format!("container {name:?} in pod {pod_name:?} is not running"),
        ))),
    }
}

/// The running container `container` of the pod `namespace/name` (checked against `uid`).
fn running_container_of(
    state: &State,
    namespace: &str,
    name: &str,
    uid: Option<&str>,
    container: &str,
) -> Result<String, Box<Response<Body>>> {
    let pod = find_pod(state, namespace, name, uid)?;
    running_container(&pod, container)
}

async fn stream_container(
    request: Request<Incoming>,
    state: &State,
    kind: &str,
    namespace: &str,
    name: &str,
    uid: Option<String>,
    container: &str,
) -> Response<Body> {
    let id = match running_container_of(state, namespace, name, uid.as_deref(), container) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    // The API server's names for the streams (core/v1 `ExecStdinParam` and the rest).
    let values = query(&request);
    let tty = flag(&values, "tty");
    let stdin = flag(&values, "input");
    let stdout = flag(&values, "output");
    // With a terminal, stderr is merged into stdout, as kubelet has it.
    let stderr = flag(&values, "error") && !tty;
    if !stdin && !stdout && !stderr {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 of stdin, stdout, stderr",
        );
    }
    let url = if kind == "exec" {
        let command: Vec<String> = values.all("command").map(str::to_owned).collect();
        if command.is_empty() {
            return text(
                StatusCode::BAD_REQUEST,
                "you must specify a command (command)",
            );
        }
        state
            .runtime
            .exec(api::ExecRequest {
                container_id: id,
                cmd: command,
                tty,
                stdin,
                stdout,
                stderr,
                ..api::ExecRequest::default()
            })
            .await
    } else {
        state
            .runtime
            .attach(api::AttachRequest {
                container_id: id,
                stdin,
                tty,
                stdout,
                stderr,
                ..api::AttachRequest::default()
            })
            .await
    };
    match url {
        Ok(url) => proxied(request, &url).await,
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn proxied(request: Request<Incoming>, url: &str) -> Response<Body> {
    match streaming::proxy(request, url).await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(error = %e, "proxying a stream");
            text(StatusCode::BAD_GATEWAY, e.to_string())
        }
    }
}

async fn port_forward(
    request: Request<Incoming>,
    state: &State,
    namespace: &str,
    name: &str,
    uid: Option<String>,
) -> Response<Body> {
    let pod = match find_pod(state, namespace, name, uid.as_deref()) {
        Ok(pod) => pod,
        Err(response) => return *response,
    };
    let Some(pod_uid) = pod.metadata.uid.clone() else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{name} has no UID"),
        );
    };
    // WebSocket clients name their ports in the query; SPDY clients per stream, to the
    // runtime directly.
    let mut ports = Vec::new();
    let values = query(&request);
    for value in values.all("port") {
        for port in value.split(',').filter(|p| !p.is_empty()) {
            match port.parse::<u16>() {
                Ok(port) if port > 0 => ports.push(i32::from(port)),
                _ => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("invalid port {port:?} (port): must be 1-65535"),
                    )
                }
            }
        }
    }
    let sandbox = match ready_sandbox(&state.runtime, &pod_uid).await {
        Ok(Some(id)) => id,
        Ok(None) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("pod {namespace}/{name} has no ready sandbox"),
            )
        }
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    match state.runtime.port_forward(&sandbox, ports).await {
        Ok(url) => proxied(request, &url).await,
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The newest ready sandbox of the pod `uid`.
async fn ready_sandbox(
    runtime: &CriClient,
    uid: &str,
) -> Result<Option<String>, bosun_cri::CriError> {
    let sandboxes = runtime
        .list_pod_sandbox(Some(api::PodSandboxFilter {
            label_selector: [(keys::POD_UID.to_owned(), uid.to_owned())].into(),
            ..api::PodSandboxFilter::default()
        }))
        .await?;
    Ok(sandboxes
        .into_iter()
        .filter(|s| s.state == api::PodSandboxState::SandboxReady as i32)
        .max_by_key(|s| s.created_at)
        .map(|s| s.id))
}

/// `POST /run/…?cmd=…`: runs a command to its end and answers its output.
async fn run_in_container(
    request: &Request<Incoming>,
    state: &State,
    namespace: &str,
    name: &str,
    uid: Option<String>,
    container: &str,
) -> Response<Body> {
    let id = match running_container_of(state, namespace, name, uid.as_deref(), container) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let command: Vec<String> = query(request)
        .first("cmd")
        .map(|c| c.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    if command.is_empty() {
        return text(StatusCode::BAD_REQUEST, "you must specify a command (cmd)");
    }
    match state.runtime.exec_sync(&id, command, Duration::ZERO).await {
        Ok(result) => {
            let mut output = result.stdout;
            output.extend_from_slice(&result.stderr);
            typed(full(output), "text/plain")
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `/containerLogs/{namespace}/{pod}/{container}`: the container's CRI log file, read as
/// kubelet reads it ([`logs`]), streamed as the response body.
async fn container_logs(
    request: &Request<Incoming>,
    state: &State,
    namespace: &str,
    name: &str,
    container: &str,
) -> Response<Body> {
    let options = match logs::LogOptions::from_query(request.uri().query(), SystemTime::now()) {
        Ok(options) => options,
        Err(e) => return text(e.status(), e.to_string()),
    };
    let pod = match find_pod(state, namespace, name, None) {
        Ok(pod) => pod,
        Err(response) => return *response,
    };
    let Some(status) = container_status(&pod, container) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container} is not valid for pod {name}"),
        );
    };
    let id = if options.previous {
        let previous = status
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.container_id.as_deref());
        match previous {
            Some(id) => runtime_id(id).to_owned(),
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "previous terminated container {container:?} in pod {name:?} not found"
                    ),
                )
            }
        }
    } else {
        match status.container_id.as_deref() {
            Some(id) => runtime_id(id).to_owned(),
            None => {
                let reason = status
                    .state
                    .as_ref()
                    .and_then(|s| s.waiting.as_ref())
                    .and_then(|w| w.reason.clone())
                    .unwrap_or_else(|| "ContainerCreating".to_owned());
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "container {container:?} in pod {name:?} is waiting to start: {reason}"
                    ),
                );
            }
        }
    };
    let log_path = match state.runtime.container_status(&id, false).await {
        Ok(reply) => reply.status.map(|s| s.log_path).unwrap_or_default(),
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if log_path.is_empty() {
        return text(
            StatusCode::NOT_FOUND,
            format!("container {container:?} in pod {name:?} has no log file"),
        );
    }
    let log = match logs::ContainerLog::open(std::path::Path::new(&log_path), &options).await {
        Ok(log) => log,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    // The reader runs on its own task and writes into a pipe the body reads; the body going
    // away (the client left) ends the reader even while it waits for a quiet container.
    let (mut writer, reader) = tokio::io::duplex(LOG_PIPE_BYTES);
    let (gone_tx, gone_rx) = tokio::sync::oneshot::channel::<()>();
    let runtime = state.runtime.clone();
    tokio::spawn(async move {
        let running = move || {
            let (runtime, id) = (runtime.clone(), id.clone());
            async move { is_running(&runtime, &id).await }
        };
        tokio::select! {
            result = log.copy_to(&mut writer, running) => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "container log request ended");
                }
            }
            _ = gone_rx => {}
        }
    });
    let chunks = futures::stream::unfold((reader, gone_tx), |(mut reader, gone)| async move {
        let mut buffer = vec![0u8; LOG_CHUNK_BYTES];
        match tokio::io::AsyncReadExt::read(&mut reader, &mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((
                    Ok(hyper::body::Frame::data(Bytes::from(buffer))),
                    (reader, gone),
                ))
            }
            Err(e) => Some((Err(e), (reader, gone))),
        }
    });
    typed(
        BodyExt::boxed(http_body_util::StreamBody::new(chunks)),
        "text/plain",
    )
}

/// `bosun_network_policy_packets_total`: what the NetworkPolicy programs counted on every
/// pod interface, by direction and verdict (counters the kernel keeps, read at each scrape).
fn policy_packets(bpf_dir: &std::path::Path) -> Result<String, bosun_netdp::Error> {
    use bosun_netdp::policy::Direction;
    let mut sums = [[0u64; 2]; 2];
    for ((_, direction), counters) in bosun_netdp::policy::read_counters(bpf_dir)? {
        let d = usize::from(direction == Direction::Egress);
        sums[d][0] = sums[d][0].wrapping_add(counters.allowed);
        sums[d][1] = sums[d][1].wrapping_add(counters.dropped);
    }
    Ok(policy_packets_text(sums))
}

/// The text of `bosun_network_policy_packets_total` for `[ingress, egress]` × `[allowed,
/// dropped]`.
fn policy_packets_text(sums: [[u64; 2]; 2]) -> String {
    let mut text = String::from(
        "# HELP bosun_network_policy_packets_total Packets the NetworkPolicy programs passed or \
         dropped on pods' interfaces.\n# TYPE bosun_network_policy_packets_total counter\n",
    );
    for (d, direction) in ["ingress", "egress"].iter().enumerate() {
        for (v, verdict) in ["allowed", "dropped"].iter().enumerate() {
            text.push_str(&format!(
                "bosun_network_policy_packets_total{{direction=\"{direction}\",verdict=\"{verdict}\"}} {}\n",
                sums[d][v]
            ));
        }
    }
    text
}

/// The pipe between a log reader and its response body, and the body's chunks.
const LOG_PIPE_BYTES: usize = 64 * 1024;
const LOG_CHUNK_BYTES: usize = 16 * 1024;

async fn is_running(runtime: &CriClient, id: &str) -> bool {
    runtime
        .container_status(id, false)
        .await
        .ok()
        .and_then(|r| r.status)
        .is_some_and(|s| s.state == api::ContainerState::ContainerRunning as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_segments() {
        assert_eq!(segments("/exec/ns/pod/c"), ["exec", "ns", "pod", "c"]);
        assert_eq!(segments("/runningpods/"), ["runningpods"]);
        assert_eq!(segments("/"), Vec::<&str>::new());
    }

    #[test]
    fn container_ids_lose_their_runtime_prefix() {
        assert_eq!(runtime_id("containerd://abc"), "abc");
        assert_eq!(runtime_id("abc"), "abc");
    }

    /// What the handlers read, over a runtime that answers `Version` only; anonymous
    /// requests are allowed everything.
    async fn state(dir: &std::path::Path) -> State {
        let socket = dir.join("cri.sock");
        bosun_tests::fake_cri::serve(bosun_tests::fake_cri::VersionOnly, &socket);
        let runtime = CriClient::connect(
            &format!("unix://{}", socket.display()),
            Duration::from_secs(10),
        )
        .await
        .expect("connected to the fake runtime");
        let authentication = AuthenticationConfig {
            anonymous: true,
            webhook: false,
            ..AuthenticationConfig::default()
        };
        let authorization = AuthorizationConfig {
            mode: auth::AuthorizationMode::AlwaysAllow,
            ..AuthorizationConfig::default()
        };
        State {
            node: "node-a".to_owned(),
            pods: PodStore::new(&[crate::store::Source::Local]),
            runtime,
            authenticator: Authenticator::new(authentication, None, None),
            authorizer: Authorizer::new(authorization, "node-a".to_owned(), None),
            stats: Arc::new(StatsProvider::new(
                stats::HostPaths::host(),
                String::new(),
                dir.to_owned(),
                "node-a".to_owned(),
            )),
            configz: serde_json::Value::Null,
            policy_bpf_dir: None,
        }
    }

    /// `GET path` through [`handle`] over an in-memory HTTP/1 connection: the status, the
    /// content type and the body.
    async fn get(state: Arc<State>, path: &str) -> (StatusCode, String, String) {
        let (client, server) = tokio::io::duplex(1 << 16);
        let service = hyper::service::service_fn(move |request| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(handle(request, None, &state).await) }
        });
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), service),
        );
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client))
            .await
            .expect("an HTTP/1 connection");
        tokio::spawn(connection);
        let request = Request::get(path)
            .header(hyper::header::HOST, "node-a")
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("a request");
        let response = sender.send_request(request).await.expect("an answer");
        let status = response.status();
        let content_type = response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("the body")
            .to_bytes();
        (
            status,
            content_type,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    #[tokio::test]
    async fn prometheus_metrics_are_served_on_metrics_and_metrics_probes() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let state = Arc::new(state(dir.path()).await);
        metrics::global().set_node_name("node-a");
        metrics::global()
            .probe_series("default", "served", "uid-served", "app")
            .record(
                crate::pod::probe::ProbeKind::Readiness,
                metrics::ProbeResult::Successful,
                Duration::from_millis(3),
            );

        let (status, content_type, body) = get(state.clone(), "/metrics").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert!(
            body.lines()
                .any(|l| l == r#"kubelet_node_name{node="node-a"} 1"#),
            "{body}"
        );
        assert!(body.contains("# TYPE kubelet_running_pods gauge"), "{body}");
        assert!(!body.contains("prober_probe"), "{body}");

        let (status, content_type, body) = get(state, "/metrics/probes").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert!(
            body.lines().any(|l| l
                == r#"prober_probe_total{container="app",namespace="default",pod="served",pod_uid="uid-served",probe_type="Readiness",result="successful"} 1"#),
            "{body}"
        );
        assert!(!body.contains("kubelet_node_name"), "{body}");
    }

    /// Paths of every shape answer without a panic: unknown ones with 404, the known
    /// routes with what their handlers decide (here the pods are unknown and the runtime
    /// answers nothing but its version).
    #[tokio::test]
    async fn any_path_gets_an_answer_and_unknown_paths_404() {
        use rand::{Rng as _, SeedableRng as _};
        const WORDS: &[&str] = &[
            "exec",
            "attach",
            "portForward",
            "run",
            "containerLogs",
            "pods",
            "runningpods",
            "stats",
            "summary",
            "metrics",
            "resource",
            "probes",
            "configz",
            "healthz",
            "logs",
            "spec",
            "checkpoint",
            "ns",
            "pod",
            "c",
            "uid",
            "..",
            ".",
            "%2e%2e",
            "%00",
            "%ff",
            "%",
            "a%2Fb",
            "~",
            "*",
            "x",
        ];
        const QUERIES: &[&str] = &[
            "",
            "?",
            "?follow=true",
            "?tailLines=-1",
            "?tailLines=x",
            "?sinceSeconds=0",
            "?command=sh&input=1",
            "?port=0",
            "?port=70000",
            "?port=8080,,9",
            "?cmd=",
            "?only_cpu_and_memory=true",
            "?%zz=1",
            "?a=%",
        ];
        let dir = tempfile::tempdir().expect("a temporary directory");
        let state = Arc::new(state(dir.path()).await);
        let mut rng = rand::rngs::StdRng::seed_from_u64(10250);
        let known = [
            "exec",
            "attach",
            "portForward",
            "run",
            "containerLogs",
            "pods",
            "runningpods",
            "stats",
            "metrics",
            "configz",
            "healthz",
        ];
        for _ in 0..600 {
            let depth = rng.random_range(0..7);
            let mut path = String::new();
            for _ in 0..depth {
                path.push('/');
                path.push_str(WORDS[rng.random_range(0..WORDS.len())]);
            }
            if path.is_empty() || rng.random_bool(0.1) {
                path.push('/');
            }
            if rng.random_bool(0.02) {
                path.push_str(&"a".repeat(8000));
            }
            path.push_str(QUERIES[rng.random_range(0..QUERIES.len())]);
            let (status, _, body) = get(state.clone(), &path).await;
            let first = segments(path.split('?').next().unwrap_or_default())
                .first()
                .copied()
                .unwrap_or_default();
            if !known.contains(&first) {
                assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
            } else {
                assert!(
                    status.is_success() || status.is_client_error() || status.is_server_error(),
                    "{path}: {status}"
                );
            }
        }
    }

    /// An idle connection is closed after kubelet's 90 s, a busy one is not; 100 of them
    /// cost the server no task once closed.
    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed_after_ninety_seconds() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let dir = tempfile::tempdir().expect("a temporary directory");
        let state = Arc::new(state(dir.path()).await);
        let mut clients = Vec::new();
        let mut served = Vec::new();
        for _ in 0..100 {
            let (mut client, server) = tokio::io::duplex(1 << 12);
            let state = state.clone();
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(request, None, &state).await) }
            });
            served.push(tokio::spawn(
                http1().serve_connection(TokioIo::new(server), service),
            ));
            client
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: node-a\r\n\r\n")
                .await
                .expect("a request");
            let mut answer = [0u8; 256];
            let n = client.read(&mut answer).await.expect("an answer");
            assert!(
                answer[..n].starts_with(b"HTTP/1.1 200"),
                "{:?}",
                &answer[..n]
            );
            clients.push(client);
        }
        tokio::time::sleep(IDLE_TIMEOUT - Duration::from_secs(1)).await;
        assert!(served.iter().all(|s| !s.is_finished()), "closed too soon");
        tokio::time::sleep(Duration::from_secs(2)).await;
        for served in served {
            tokio::time::timeout(Duration::from_secs(1), served)
                .await
                .expect("closed at the idle timeout")
                .expect("the connection task")
                .ok();
        }
    }

    #[test]
    fn policy_packets_are_counted_by_direction_and_verdict() {
        let text = policy_packets_text([[10, 2], [7, 0]]);
        assert!(
            text.contains("# TYPE bosun_network_policy_packets_total counter\n"),
            "{text}"
        );
        for line in [
            r#"bosun_network_policy_packets_total{direction="ingress",verdict="allowed"} 10"#,
            r#"bosun_network_policy_packets_total{direction="ingress",verdict="dropped"} 2"#,
            r#"bosun_network_policy_packets_total{direction="egress",verdict="allowed"} 7"#,
            r#"bosun_network_policy_packets_total{direction="egress",verdict="dropped"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
    }
}
