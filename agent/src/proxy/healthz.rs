//! `bosun proxy`'s health server, with kube-proxy's rules, status codes and bodies
//! (`pkg/proxy/healthcheck/proxy_health.go`, `ProxyHealthServer`), and its metrics server.
//! Load balancers probe `/healthz` on every node to choose where to send traffic, and the
//! DaemonSet's liveness probe asks `/livez`; both expect kube-proxy's answers.
//!
//! The rules:
//! - The proxy is healthy while it starts up (before its first update of the datapath),
//!   when no change is waiting, or while the oldest change queued since the last update is
//!   younger than the health timeout. kube-proxy's timeout is 2 × `syncPeriod`
//!   (`newProxyServer`), 60 s by default ([`ProxyConfig::health_timeout`]).
//! - `/healthz` is 200 when the proxy is healthy and the node is eligible, 503 otherwise. A
//!   node is not eligible while it is being deleted or is tainted
//!   [`TO_BE_DELETED_TAINT`], so that load balancers drain it first.
//! - `/livez` is the same without the node: 200 or 503 on the proxy's health alone.
//! - Both answer JSON with `Content-Type: application/json` and
//!   `X-Content-Type-Options: nosniff`: `lastUpdated`, `currentTime`, `nodeEligible`
//!   (`/healthz` only), `healthy`, and `status` per IP family once the proxier has updated
//!   (IPv4 alone here). `lastUpdated` is the current time while healthy, as in releases where it
//!   was the last run of the sync loop, and the last update otherwise.
//!
//! Older kube-proxy (the single-stack `ProxierHealthServer`) also failed a change queued
//! before the first update once it was older than the timeout; the current one does not, and
//! neither does bosun.
//!
//! This module knows those rules and HTTP; the proxy loop tells it what happened.
//!
//! [`ProxyConfig::health_timeout`]: super::config::ProxyConfig::health_timeout

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use hyper::body::Incoming;
use hyper::header::{HeaderValue, X_CONTENT_TYPE_OPTIONS};
use hyper::{Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use tokio::time::Instant;

use crate::metrics;
use crate::server::query::Query;
use crate::server::{full, not_found, serve_plain, text, typed, Body};

/// The taint the cluster autoscaler puts on a node it is about to remove.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// How Go writes its zero `time.Time`, kube-proxy's `lastUpdated` before any update.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// The proxy's health as `/healthz` and `/livez` report it. Clones are cheap and share one
/// state; the proxy loop writes it, the servers read it.
#[derive(Clone, Debug)]
pub struct ProxyHealth {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    timeout: Duration,
    /// Both clocks read together once: an instant is shown as this wall-clock time plus what
    /// has elapsed since (so paused tokio time drives the bodies too).
    start: (Instant, SystemTime),
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    last_updated: Option<Instant>,
    /// The oldest change queued since the last update.
    oldest_queued: Option<Instant>,
    node_eligible: bool,
}

/// The health at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Report {
    now: Instant,
    healthy: bool,
    node_eligible: bool,
    last_updated: Option<Instant>,
}

impl ProxyHealth {
    /// A proxy that has written nothing yet, on an eligible node; `health_timeout` is how
    /// long a queued change may wait for the datapath.
    pub fn new(health_timeout: Duration) -> Self {
        Self::starting_at(health_timeout, Instant::now(), SystemTime::now())
    }

    fn starting_at(timeout: Duration, now: Instant, wall_clock: SystemTime) -> Self {
        ProxyHealth {
            shared: Arc::new(Shared {
                timeout,
                start: (now, wall_clock),
                // As kube-proxy, the node counts as eligible until it is known otherwise.
                state: Mutex::new(State {
                    last_updated: None,
                    oldest_queued: None,
                    node_eligible: true,
                }),
            }),
        }
    }

    /// A change arrived that the datapath does not hold yet (kube-proxy's `QueuedUpdate`).
    pub fn queued(&self) {
        let now = Instant::now();
        self.with_state(|state| {
            state.oldest_queued.get_or_insert(now);
        });
    }

    /// The datapath now holds everything queued (kube-proxy's `Updated`).
    pub fn updated(&self) {
        let now = Instant::now();
        self.with_state(|state| {
            state.oldest_queued = None;
            state.last_updated = Some(now);
        });
    }

    /// Whether this node may take load-balancer traffic: false while it is being deleted or
    /// tainted [`TO_BE_DELETED_TAINT`] ([`node_eligible`] tells from the Node).
    pub fn set_node_eligible(&self, eligible: bool) {
        self.with_state(|state| state.node_eligible = eligible);
    }

    /// The proxy's own health, whatever the node (kube-proxy's `IsHealthy`; `/livez`).
    pub fn is_healthy(&self) -> bool {
        self.report(Instant::now()).healthy
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // Every write leaves the state valid, so a holder's panic does not spoil it.
        let mut state = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(&mut state)
    }

    fn report(&self, now: Instant) -> Report {
        let timeout = self.shared.timeout;
        self.with_state(|state| {
            let healthy = match (state.last_updated, state.oldest_queued) {
                // Starting up: nothing written yet, nothing judged yet.
                (None, _) => true,
                (Some(_), None) => true,
                (Some(_), Some(queued)) => now.saturating_duration_since(queued) < timeout,
            };
            Report {
                now,
                healthy,
                node_eligible: state.node_eligible,
                last_updated: state.last_updated,
            }
        })
    }

    /// The answer to `path` at `now`: `/healthz` or `/livez`, else `None`.
    fn answer(&self, path: &str, now: Instant) -> Option<(StatusCode, String)> {
        let report = self.report(now);
        let (ok, node_eligible) = match path {
            "/healthz" => (
                report.healthy && report.node_eligible,
                Some(report.node_eligible),
            ),
            "/livez" => (report.healthy, None),
            _ => return None,
        };
        let current_time = self.wall_clock(Some(now));
        let body = HealthBody {
            last_updated: if report.healthy {
                current_time.clone()
            } else {
                self.wall_clock(report.last_updated)
            },
            current_time,
            node_eligible,
            healthy: report.healthy,
            status: report
                .last_updated
                .map(|updated| {
                    let ipv4 = FamilyHealth {
                        last_updated: self.wall_clock(Some(updated)),
                        healthy: report.healthy,
                    };
                    BTreeMap::from([("IPv4", ipv4)])
                })
                .unwrap_or_default(),
        };
        let status = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        // Serializing strings and booleans cannot fail.
        Some((status, serde_json::to_string(&body).unwrap_or_default()))
    }

    /// `at` as Go marshals a `time.Time` (RFC 3339, UTC, nanoseconds as needed); `None` is
    /// Go's zero time.
    fn wall_clock(&self, at: Option<Instant>) -> String {
        let Some(at) = at else {
            return GO_ZERO_TIME.to_owned();
        };
        let (start, wall_start) = self.shared.start;
        let wall = wall_start + at.saturating_duration_since(start);
        let since_epoch = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let seconds = i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX);
        let nanoseconds = i32::try_from(since_epoch.subsec_nanos()).unwrap_or_default();
        // Fails only for clocks set past the year 9999.
        Timestamp::new(seconds, nanoseconds)
            .unwrap_or(Timestamp::MAX)
            .to_string()
    }
}

/// kube-proxy's `ProxyHealth`, in its field order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HealthBody {
    last_updated: String,
    current_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_eligible: Option<bool>,
    healthy: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    status: BTreeMap<&'static str, FamilyHealth>,
}

/// kube-proxy's `ProxierHealth`: one IP family's proxier.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FamilyHealth {
    last_updated: String,
    healthy: bool,
}

/// Whether `node` may take load-balancer traffic, as kube-proxy judges it: not while it is
/// being deleted or tainted [`TO_BE_DELETED_TAINT`].
pub fn node_eligible(node: &Node) -> bool {
    let deleting = node.metadata.deletion_timestamp.is_some();
    let draining = node
        .spec
        .as_ref()
        .and_then(|spec| spec.taints.as_ref())
        .is_some_and(|taints| taints.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
    !deleting && !draining
}

/// Serves `/healthz` and `/livez` in plain HTTP on `address` (`healthzBindAddress`). A port
/// that cannot be bound is logged and tried again, as kube-proxy does unless told to fail
/// (`bindAddressHardFail`); the proxy goes on meanwhile. Never returns.
pub async fn serve(address: SocketAddr, health: ProxyHealth) {
    serve_plain(
        address,
        "/healthz and /livez (healthzBindAddress)",
        move |request: Request<Incoming>| {
            let answer = health.answer(request.uri().path(), Instant::now());
            async move {
                match answer {
                    Some((status, body)) => {
                        let mut response = nosniff(typed(full(body), "application/json"));
                        *response.status_mut() = status;
                        response
                    }
                    None => not_found(),
                }
            }
        },
    )
    .await
}

/// Serves `/metrics` (Prometheus' text format) in plain HTTP on `address`
/// (`metricsBindAddress`), and `/healthz` as kube-proxy's metrics port does (the API
/// server library's ping check: `ok`). Binding is retried as in [`serve`]. Never returns.
pub async fn serve_metrics(address: SocketAddr) {
    serve_plain(
        address,
        "/metrics (metricsBindAddress)",
        |request: Request<Incoming>| {
            let response = metrics_answer(request.uri().path(), request.uri().query());
            async move { response }
        },
    )
    .await
}

fn metrics_answer(path: &str, query: Option<&str>) -> Response<Body> {
    match path {
        "/metrics" => typed(full(metrics::encode()), metrics::CONTENT_TYPE),
        "/healthz" => ping_healthz(query),
        "/healthz/ping" => nosniff(text(StatusCode::OK, "ok")),
        _ => not_found(),
    }
}

/// `k8s.io/apiserver`'s `/healthz` with only its ping check: `ok`, or with `?verbose` each
/// check on a line (`?exclude=ping` skips it).
fn ping_healthz(query: Option<&str>) -> Response<Body> {
    let query = Query::parse(query.unwrap_or_default());
    if query.first("verbose").is_none() {
        return nosniff(text(StatusCode::OK, "ok"));
    }
    let check = if query.all("exclude").any(|name| name == "ping") {
        "[+]ping excluded: ok"
    } else {
        "[+]ping ok"
    };
    nosniff(text(
        StatusCode::OK,
        format!("{check}\nhealthz check passed\n"),
    ))
}

/// `response` with `X-Content-Type-Options: nosniff`, as kube-proxy's health answers have.
pub(crate) fn nosniff(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use k8s_openapi::api::core::v1::{NodeSpec, Taint};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TIMEOUT: Duration = Duration::from_secs(60);

    /// A health whose wall clock starts at 2023-11-14T22:13:20Z.
    fn health() -> ProxyHealth {
        let wall_clock = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        ProxyHealth::starting_at(TIMEOUT, Instant::now(), wall_clock)
    }

    fn get(health: &ProxyHealth, path: &str) -> (StatusCode, serde_json::Value) {
        let (status, body) = health
            .answer(path, Instant::now())
            .unwrap_or_else(|| panic!("{path} is served"));
        let body = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body}: {e}"));
        (status, body)
    }

    #[tokio::test(start_paused = true)]
    async fn healthy_while_starting_up_even_with_changes_queued() {
        let health = health();
        let (status, body) = health
            .answer("/healthz", Instant::now())
            .expect("/healthz is served");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            r#"{"lastUpdated":"2023-11-14T22:13:20Z","currentTime":"2023-11-14T22:13:20Z","nodeEligible":true,"healthy":true}"#
        );
        // kube-proxy judges a proxier only once it has updated.
        health.queued();
        tokio::time::advance(TIMEOUT * 3).await;
        assert_eq!(get(&health, "/healthz").0, StatusCode::OK);
        assert!(health.is_healthy());
    }

    #[tokio::test(start_paused = true)]
    async fn unhealthy_once_a_queued_change_outlives_the_timeout() {
        let health = health();
        tokio::time::advance(Duration::from_millis(1500)).await;
        health.updated();
        tokio::time::advance(Duration::from_secs(100)).await;
        // Nothing queued: healthy however long ago the update was.
        assert_eq!(get(&health, "/healthz").0, StatusCode::OK);

        health.queued();
        tokio::time::advance(TIMEOUT - Duration::from_secs(1)).await;
        // A second change does not restart the wait.
        health.queued();
        assert_eq!(get(&health, "/healthz").0, StatusCode::OK);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!health.is_healthy());
        for path in ["/healthz", "/livez"] {
            let (status, body) = get(&health, path);
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert_eq!(body["healthy"], false);
            // Unhealthy: lastUpdated is the last update, not now.
            assert_eq!(body["lastUpdated"], "2023-11-14T22:13:21.5Z");
            assert_eq!(body["currentTime"], "2023-11-14T22:16:01.5Z");
            assert_eq!(
                body["status"]["IPv4"]["lastUpdated"],
                "2023-11-14T22:13:21.5Z"
            );
            assert_eq!(body["status"]["IPv4"]["healthy"], false);
        }

        health.updated();
        let (status, body) = get(&health, "/healthz");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["lastUpdated"], body["currentTime"]);
        assert_eq!(body["status"]["IPv4"]["healthy"], true);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ineligible_node_fails_healthz_but_not_livez() {
        let health = health();
        health.updated();
        health.set_node_eligible(false);
        let (status, body) = get(&health, "/healthz");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            (&body["healthy"], &body["nodeEligible"]),
            (&true.into(), &false.into())
        );
        let (status, body) = get(&health, "/livez");
        assert_eq!(status, StatusCode::OK);
        assert!(body.get("nodeEligible").is_none(), "{body}");
        health.set_node_eligible(true);
        assert_eq!(get(&health, "/healthz").0, StatusCode::OK);
        assert!(health.answer("/healthz/", Instant::now()).is_none());
    }

    #[test]
    fn nodes_being_deleted_or_drained_are_not_eligible() {
        let mut node = Node::default();
        assert!(node_eligible(&node));
        node.spec = Some(NodeSpec {
            taints: Some(vec![Taint {
                key: "other".into(),
                effect: "NoSchedule".into(),
                ..Taint::default()
            }]),
            ..NodeSpec::default()
        });
        assert!(node_eligible(&node));
        let mut drained = node.clone();
        if let Some(taints) = drained.spec.as_mut().and_then(|s| s.taints.as_mut()) {
            taints.push(Taint {
                key: TO_BE_DELETED_TAINT.into(),
                effect: "NoSchedule".into(),
                ..Taint::default()
            });
        }
        assert!(!node_eligible(&drained));
        node.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::UNIX_EPOCH),
        );
        assert!(!node_eligible(&node));
    }

    #[tokio::test]
    async fn the_metrics_port_answers_healthz_as_kube_proxys() {
        async fn body(response: Response<Body>) -> String {
            let bytes = response
                .into_body()
                .collect()
                .await
                .expect("a body")
                .to_bytes();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        assert_eq!(body(metrics_answer("/healthz", None)).await, "ok");
        assert_eq!(
            body(metrics_answer("/healthz", Some("verbose"))).await,
            "[+]ping ok\nhealthz check passed\n"
        );
        assert_eq!(
            body(metrics_answer("/healthz", Some("verbose=1&exclude=ping"))).await,
            "[+]ping excluded: ok\nhealthz check passed\n"
        );
        assert_eq!(body(metrics_answer("/healthz/ping", None)).await, "ok");
        assert_eq!(
            metrics_answer("/livez", None).status(),
            StatusCode::NOT_FOUND
        );
    }

    /// One HTTP/1.1 GET over a fresh connection: the status, the headers (names lower-cased)
    /// and the body.
    pub(crate) async fn http_get(
        address: SocketAddr,
        path: &str,
    ) -> (u16, Vec<(String, String)>, String) {
        // The server binds when its task first runs; yield until it has.
        let mut stream = None;
        for _ in 0..1000 {
            match tokio::net::TcpStream::connect(address).await {
                Ok(connected) => {
                    stream = Some(connected);
                    break;
                }
                Err(_) => tokio::task::yield_now().await,
            }
        }
        let mut stream = stream.unwrap_or_else(|| panic!("nothing listens on {address}"));
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("the request is sent");
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .await
            .expect("the answer is read");
        let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .expect("a status line");
        let headers = lines
            .filter_map(|line| line.split_once(": "))
            .map(|(name, value)| (name.to_ascii_lowercase(), value.to_owned()))
            .collect();
        (status, headers, body.to_owned())
    }

    pub(crate) fn free_port() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener.local_addr().expect("its address")
    }

    #[tokio::test]
    async fn healthz_and_livez_over_a_socket() {
        // No timeout: a change queued after the first update is late at once.
        let health = ProxyHealth::new(Duration::ZERO);
        let address = free_port();
        let server = tokio::spawn(serve(address, health.clone()));

        let (status, headers, body) = http_get(address, "/healthz").await;
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
        assert_eq!(body["healthy"], true);
        assert_eq!(body["nodeEligible"], true);
        assert_eq!(body["lastUpdated"], body["currentTime"]);
        assert!(body["currentTime"]
            .as_str()
            .is_some_and(|t| t.parse::<Timestamp>().is_ok()));

        health.updated();
        health.queued();
        for path in ["/healthz", "/livez"] {
            let (status, _, body) = http_get(address, path).await;
            assert_eq!(status, 503, "{path}: {body}");
            let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            assert_eq!(body["healthy"], false);
            assert_eq!(body["status"]["IPv4"]["healthy"], false);
            assert_eq!(body.get("nodeEligible").is_some(), path == "/healthz");
        }

        health.updated();
        health.set_node_eligible(false);
        assert_eq!(http_get(address, "/healthz").await.0, 503);
        assert_eq!(http_get(address, "/livez").await.0, 200);
        assert_eq!(http_get(address, "/metrics").await.0, 404);
        server.abort();
    }

    #[tokio::test]
    async fn metrics_over_a_socket() {
        let address = free_port();
        let server = tokio::spawn(serve_metrics(address));
        let (status, headers, _) = http_get(address, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            headers.contains(&("content-type".to_owned(), metrics::CONTENT_TYPE.to_owned())),
            "{headers:?}"
        );
        assert_eq!(http_get(address, "/healthz").await.2, "ok");
        server.abort();
    }
}
