//! kube-proxy's service health server (`pkg/proxy/healthcheck/service_health.go`): for each
//! `LoadBalancer` Service with `externalTrafficPolicy: Local`, an HTTP server on its
//! `spec.healthCheckNodePort` telling load balancers whether this node has a ready endpoint
//! of it, so that they send its traffic only to nodes that do.
//!
//! The rules, kube-proxy's:
//! - Every path and every method gets the answer: 200 when the Service has a ready endpoint
//!   on this node and the proxy is healthy, 503 otherwise. The proxy's health is its own
//!   (`/livez`'s, [`ProxyHealth::is_healthy`]): a node being deleted or drained fails
//!   `/healthz` but not these checks.
//! - The body is JSON as kube-proxy writes it, indented with tabs, without a final newline:
//!   `service` (`namespace`, `name`), `localEndpoints`, `serviceProxyHealthy`; with
//!   `Content-Type: application/json` and `X-Content-Type-Options: nosniff`.
//! - The local endpoints are counted per Service, not per Service port: its ready endpoints on
//!   this node, each address once ([`ServiceTable::health_check`] counts them).
//! - A Service's server listens on every address of the node or, when `nodePortAddresses`
//!   narrows the node ports, on the node's addresses in those ranges (chosen at the start, as
//!   kube-proxy chooses them: [`External::health_check_addresses`]), from when the Service
//!   asks for it until it no longer does or asks for another port.
//! - A port that cannot be listened on is reported as a Warning event
//!   `FailedToStartServiceHealthcheck` on the Service, naming `spec.healthCheckNodePort` and
//!   its value, and tried again; the other Services' servers go on. kube-proxy tries again at
//!   each sync and records an event each time; bosun tries every 5 s and records an event
//!   when the error is new.
//!
//! This module knows those rules and HTTP; the proxy loop tells it what the Services ask for.
//!
//! [`ServiceTable::health_check`]: bosun_netdp::service::ServiceTable::health_check
//! [`External::health_check_addresses`]: crate::service::proxy::External::health_check_addresses

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bosun_netdp::service::{HealthCheck, ServiceRef};
use hyper::{Response, StatusCode};
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::Resource;
use tokio::task::JoinHandle;

use super::healthz::{nosniff, ProxyHealth};
use crate::events::{EventType, Recorder};
use crate::server::{full, listen_retrying, serve_listener, typed, Body};

/// Event reason for a health check node port that cannot be listened on (kube-proxy's).
pub const FAILED_TO_START: &str = "FailedToStartServiceHealthcheck";

/// The field a Service names its health check port in.
const FIELD: &str = "spec.healthCheckNodePort";

/// The health check servers of this node's Services. The proxy loop owns it and tells it
/// what changed; each server runs as its own task and is stopped when its Service no longer
/// asks for it (or this is dropped).
pub struct ServiceHealthServer {
    node: String,
    /// Where each server listens (every address: the unspecified one).
    addresses: Vec<IpAddr>,
    events: Recorder,
    /// The proxy's health, `serviceProxyHealthy`; `None`: always healthy.
    proxy: Option<ProxyHealth>,
    services: HashMap<ServiceRef, Instance>,
}

/// One Service's server.
struct Instance {
    port: u16,
    answer: Answer,
    listeners: Vec<JoinHandle<()>>,
}

impl Instance {
    /// Stops its server; returns once its port is closed.
    async fn close(mut self) {
        for listener in std::mem::take(&mut self.listeners) {
            listener.abort();
            // An aborted task's future, and the listener in it, is dropped by the time its
            // handle answers.
            let _ = listener.await;
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        for listener in &self.listeners {
            listener.abort();
        }
    }
}

impl ServiceHealthServer {
    /// Servers for the node `node`, listening on `addresses` (`0.0.0.0`: every address; see
    /// [`External::health_check_addresses`]), reporting to `events`.
    ///
    /// [`External::health_check_addresses`]: crate::service::proxy::External::health_check_addresses
    pub fn listening_on(
        node: &str,
        addresses: Vec<IpAddr>,
        events: Recorder,
        proxy: Option<ProxyHealth>,
    ) -> Self {
        ServiceHealthServer {
            node: node.to_owned(),
            addresses,
            events,
            proxy,
            services: HashMap::new(),
        }
    }

    /// Applies what the Services named now ask for (`None`: no health check).
    pub async fn update(
        &mut self,
        changes: impl IntoIterator<Item = (ServiceRef, Option<HealthCheck>)>,
    ) {
        let changes: Vec<(ServiceRef, Option<HealthCheck>)> = changes.into_iter().collect();
        // The servers to stop go first: a port one Service lets go of may be another's now.
        for (key, check) in &changes {
            let moved = match (self.services.get(key), check) {
                (Some(instance), Some(check)) => instance.port != check.port,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if !moved {
                continue;
            }
            if let Some(instance) = self.services.remove(key) {
                tracing::info!(service = %name(key), port = instance.port, "closing the health check");
                instance.close().await;
            }
        }
        for (key, check) in changes {
            if let Some(check) = check {
                self.set(key, check);
            }
        }
    }

    /// Makes `all` the whole set of Services with a health check: the others' servers stop.
    pub async fn replace(&mut self, all: Vec<(ServiceRef, HealthCheck)>) {
        let wanted: HashSet<&ServiceRef> = all.iter().map(|(k, _)| k).collect();
        let gone: Vec<ServiceRef> = self
            .services
            .keys()
            .filter(|key| !wanted.contains(key))
            .cloned()
            .collect();
        let changes = gone
            .into_iter()
            .map(|key| (key, None))
            .chain(all.into_iter().map(|(key, check)| (key, Some(check))));
        self.update(changes.collect::<Vec<_>>()).await;
    }

    /// The port each Service's server is on, sorted.
    pub fn ports(&self) -> Vec<(String, u16)> {
        let mut ports: Vec<(String, u16)> = self
            .services
            .iter()
            .map(|(key, instance)| (name(key), instance.port))
            .collect();
        ports.sort();
        ports
    }

    /// Sets the Service's count, or starts its server if it has none (any other was closed
    /// by [`Self::update`]).
    fn set(&mut self, key: ServiceRef, check: HealthCheck) {
        if let Some(instance) = self.services.get(&key) {
            instance
                .answer
                .local_endpoints
                .store(check.local_endpoints, Ordering::Relaxed);
            return;
        }
        tracing::info!(service = %name(&key), port = check.port, "opening the health check");
        let answer = Answer {
            namespace: key.0.clone(),
            name: key.1.clone(),
            local_endpoints: Arc::new(AtomicUsize::new(check.local_endpoints)),
            proxy: self.proxy.clone(),
        };
        let listeners = self
            .addresses
            .iter()
            .map(|ip| {
                let address = SocketAddr::new(*ip, check.port);
                let reporter = self.reporter(&key, address);
                tokio::spawn(serve(address, answer.clone(), reporter))
            })
            .collect();
        self.services.insert(
            key,
            Instance {
                port: check.port,
                answer,
                listeners,
            },
        );
    }

    fn reporter(&self, key: &ServiceRef, address: SocketAddr) -> Reporter {
        Reporter {
            node: self.node.clone(),
            events: self.events.clone(),
            service: key.clone(),
            address,
            last: None,
        }
    }
}

/// Reports a server's failures to listen: one event per new error.
struct Reporter {
    node: String,
    events: Recorder,
    service: ServiceRef,
    address: SocketAddr,
    last: Option<String>,
}

impl Reporter {
    fn failed(&mut self, error: &std::io::Error) {
        let error = error.to_string();
        if self.last.as_ref() == Some(&error) {
            return;
        }
        let port = self.address.port();
        let message = format!(
            "{FIELD}: \"{port}\": node {} failed to start healthcheck \"{}\" on port {port}: listen tcp {}: {error}",
            self.node,
            name(&self.service),
            self.address,
        );
        let involved = ObjectReference {
            api_version: Some(Service::API_VERSION.into()),
            kind: Some(Service::KIND.into()),
            namespace: Some(self.service.0.to_string()),
            name: Some(self.service.1.to_string()),
            ..ObjectReference::default()
        };
        self.events
            .record(involved, EventType::Warning, FAILED_TO_START, message);
        self.last = Some(error);
    }
}

/// Listens on `address` (trying again while it cannot) and answers every request with the
/// Service's health. Never returns; aborting it closes the listener and its connections.
async fn serve(address: SocketAddr, answer: Answer, mut reporter: Reporter) {
    let what = format!(
        "the health check of Service {} ({FIELD})",
        name(&reporter.service)
    );
    let listener = listen_retrying(address, &what, |e| reporter.failed(e)).await;
    if reporter.last.is_some() {
        tracing::info!(%address, "listening for {what} at last");
    }
    serve_listener(listener, move |_request| {
        let response = answer.response();
        async move { response }
    })
    .await
}

/// What one Service's server answers from.
#[derive(Clone, Debug)]
struct Answer {
    namespace: Arc<str>,
    name: Arc<str>,
    local_endpoints: Arc<AtomicUsize>,
    proxy: Option<ProxyHealth>,
}

impl Answer {
    /// The status and body kube-proxy's `hcHandler` gives.
    fn answer(&self) -> (StatusCode, String) {
        let count = self.local_endpoints.load(Ordering::Relaxed);
        let healthy = self.proxy.as_ref().is_none_or(ProxyHealth::is_healthy);
        let status = if count != 0 && healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        // Quoting a string as JSON cannot fail.
        let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let body = format!(
            "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {count},\n\t\"serviceProxyHealthy\": {healthy}\n}}",
            quote(&self.namespace),
            quote(&self.name),
        );
        (status, body)
    }

    fn response(&self) -> Response<Body> {
        let (status, body) = self.answer();
        let mut response = nosniff(typed(full(body), "application/json"));
        *response.status_mut() = status;
        response
    }
}

fn name(key: &ServiceRef) -> String {
    format!("{}/{}", key.0, key.1)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use super::super::healthz::tests::{free_port, http_get};
    use super::*;

    fn key(name: &str) -> ServiceRef {
        (Arc::from("default"), Arc::from(name))
    }

    fn answer(local_endpoints: usize, proxy: Option<ProxyHealth>) -> Answer {
        Answer {
            namespace: Arc::from("default"),
            name: Arc::from("web"),
            local_endpoints: Arc::new(AtomicUsize::new(local_endpoints)),
            proxy,
        }
    }

    fn check(port: u16, local_endpoints: usize) -> Option<HealthCheck> {
        Some(HealthCheck {
            port,
            local_endpoints,
        })
    }

    #[tokio::test]
    async fn ok_with_a_local_endpoint_and_a_healthy_proxy_and_kube_proxys_body() {
        let (status, body) = answer(2, None).answer();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"default\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        let (status, body) = answer(0, None).answer();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(body["localEndpoints"], 0);
        assert_eq!(body["serviceProxyHealthy"], true);
    }

    #[tokio::test]
    async fn an_unhealthy_proxy_fails_the_check_but_a_node_being_deleted_does_not() {
        // No timeout: a change queued after an update is late at once.
        let proxy = ProxyHealth::new(Duration::ZERO);
        proxy.updated();
        proxy.set_node_eligible(false);
        let (status, body) = answer(1, Some(proxy.clone())).answer();
        assert_eq!(status, StatusCode::OK, "{body}");
        proxy.queued();
        let (status, body) = answer(1, Some(proxy.clone())).answer();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(
            (&body["localEndpoints"], &body["serviceProxyHealthy"]),
            (&1.into(), &false.into())
        );
    }

    async fn assert_closed(address: SocketAddr) {
        assert!(
            tokio::net::TcpStream::connect(address).await.is_err(),
            "{address} is still listened on"
        );
    }

    #[tokio::test]
    async fn servers_open_follow_and_close_with_their_services() {
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let events = Recorder::new("node-a");
        let mut server = ServiceHealthServer::listening_on("node-a", vec![localhost], events, None);
        let (first, second) = (free_port(), free_port());
        server.update([(key("web"), check(first.port(), 1))]).await;
        let (status, headers, body) = http_get(first, "/any/path").await;
        assert_eq!(status, 200, "{body}");
        for header in [
            ("content-type", "application/json"),
            ("x-content-type-options", "nosniff"),
        ] {
            assert!(
                headers.contains(&(header.0.to_owned(), header.1.to_owned())),
                "{header:?} in {headers:?}"
            );
        }
        let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(body["service"]["name"], "web");
        assert_eq!(body["localEndpoints"], 1);

        server.update([(key("web"), check(first.port(), 0))]).await;
        assert_eq!(http_get(first, "/").await.0, 503);

        // Another port: the server moves.
        server.update([(key("web"), check(second.port(), 3))]).await;
        assert_closed(first).await;
        let (status, _, body) = http_get(second, "/healthz").await;
        assert_eq!(status, 200);
        assert!(body.contains("\"localEndpoints\": 3"), "{body}");
        assert_eq!(server.ports(), [("default/web".to_owned(), second.port())]);

        // A whole replace without it closes it.
        server.replace(Vec::new()).await;
        assert_closed(second).await;
        assert!(server.ports().is_empty());
    }

    #[tokio::test]
    async fn a_port_in_use_is_reported_on_its_service_and_stops_no_other() {
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let events = Recorder::new("node-a");
        let mut recorded = events.subscribe();
        let mut server = ServiceHealthServer::listening_on("node-a", vec![localhost], events, None);
        let taken = std::net::TcpListener::bind((localhost, 0)).expect("a port");
        let taken_port = taken.local_addr().expect("its address").port();
        let free = free_port();
        server
            .update([
                (key("busy"), check(taken_port, 1)),
                (key("web"), check(free.port(), 1)),
            ])
            .await;
        assert_eq!(http_get(free, "/").await.0, 200);
        let event = tokio::time::timeout(Duration::from_secs(5), recorded.recv())
            .await
            .expect("an event in time")
            .expect("an event");
        assert_eq!(event.reason.as_deref(), Some(FAILED_TO_START));
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert_eq!(event.involved_object.kind.as_deref(), Some("Service"));
        assert_eq!(event.involved_object.name.as_deref(), Some("busy"));
        let message = event.message.unwrap_or_default();
        assert!(
            message.starts_with(&format!(
                "spec.healthCheckNodePort: \"{taken_port}\": node node-a failed to start healthcheck \"default/busy\" on port {taken_port}: listen tcp 127.0.0.1:{taken_port}: "
            )),
            "{message}"
        );
        drop(taken);
    }

    #[tokio::test]
    async fn a_port_one_service_lets_go_of_is_anothers_at_once() {
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let events = Recorder::new("node-a");
        let mut recorded = events.subscribe();
        let mut server = ServiceHealthServer::listening_on("node-a", vec![localhost], events, None);
        let (first, second) = (free_port(), free_port());
        server.update([(key("web"), check(first.port(), 1))]).await;
        // In one change, db takes web's port (named first) and web moves.
        server
            .update([
                (key("db"), check(first.port(), 2)),
                (key("web"), check(second.port(), 1)),
            ])
            .await;
        let (status, _, body) = http_get(first, "/").await;
        assert_eq!(status, 200);
        let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(body["service"]["name"], "db");
        assert_eq!(body["localEndpoints"], 2);
        assert_eq!(http_get(second, "/").await.0, 200);
        assert!(recorded.try_recv().is_err(), "no port was found taken");
    }
}
