//! Probe and hook actions against real sockets on 127.0.0.1 (servers run in-process, no root
//! needed), and exec and sleep against the fake runtime in paused time.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bosun_proto::grpc_health::v1::health_check_response::ServingStatus;
use bosun_proto::grpc_health::v1::health_server::{Health, HealthServer};
use bosun_proto::grpc_health::v1::{HealthCheckRequest, HealthCheckResponse};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, ExecAction, GRPCAction, HTTPGetAction, HTTPHeader, LifecycleHandler,
    Probe, SleepAction, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::rustls;
use tokio_stream::wrappers::TcpListenerStream;

use super::fake::{FakeRuntime, Reply};
use super::{run_hook, run_probe, HookError, HttpError, Outcome, ProbeError, Target};

fn target(ip: &str) -> Target {
    Target {
        pod_ip: ip.to_owned(),
        container_id: "c1".to_owned(),
        named_ports: vec![],
    }
}

const LOCAL: &str = "127.0.0.1";

fn success(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Success)
}

fn failure(outcome: Outcome) -> String {
    match outcome {
        Outcome::Failure(message) => message,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind((LOCAL, 0)).await.expect("bind");
    listener.local_addr().expect("local address").port()
}

// ---- an HTTP server with a few routes ---------------------------------------------------

/// Every request the server saw: its path and headers.
type Seen = Arc<Mutex<Vec<(String, HeaderMap)>>>;

async fn serve_http(tls: bool) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind((LOCAL, 0)).await.expect("bind");
    let address = listener.local_addr().expect("local address");
    let seen: Seen = Arc::default();
    let acceptor = tls.then(tls_acceptor);
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let log = log.clone();
                    async move { Ok::<_, Infallible>(route(address.port(), request, &log).await) }
                });
                let http = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            });
        }
    });
    (address, seen)
}

async fn route(port: u16, request: Request<Incoming>, seen: &Seen) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    seen.lock()
        .expect("seen lock")
        .push((path.clone(), request.headers().clone()));
    let redirect = |to: String| {
        Response::builder()
            .status(StatusCode::FOUND)
            .header("location", to)
            .body(Full::new(Bytes::from_static(b"moved")))
    };
    let response = match path.as_str() {
        "/ok" => Response::builder().body(Full::new(Bytes::from_static(b"fine"))),
        "/fail" => Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .body(Full::default()),
        "/redirect" => redirect("ok".to_owned()),
        // The same server under another host name: kubelet does not follow it.
        "/away" => redirect(format!("http://localhost:{port}/ok")),
        "/loop" => redirect("/loop".to_owned()),
        "/slow" => std::future::pending().await,
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::default()),
    };
    response.expect("a valid response")
}

fn http_get(port: IntOrString, path: &str) -> HTTPGetAction {
    HTTPGetAction {
        port,
        path: Some(path.to_owned()),
        ..Default::default()
    }
}

fn http_probe(port: u16, path: &str) -> Probe {
    Probe {
        http_get: Some(http_get(IntOrString::Int(port.into()), path)),
        ..Default::default()
    }
}

async fn probe(probe: &Probe) -> Outcome {
    run_probe(&FakeRuntime::default(), probe, &target(LOCAL)).await
}

#[tokio::test]
async fn http_success_is_2xx_and_other_codes_fail() {
    let (address, _) = serve_http(false).await;
    assert!(success(&probe(&http_probe(address.port(), "/ok")).await));
    assert_eq!(
        failure(probe(&http_probe(address.port(), "/fail")).await),
        "HTTP probe failed with statuscode: 503"
    );
    assert_eq!(
        failure(probe(&http_probe(address.port(), "/missing")).await),
        "HTTP probe failed with statuscode: 404"
    );
}

#[tokio::test]
async fn http_redirects_to_the_same_host_are_followed() {
    let (address, seen) = serve_http(false).await;
    assert!(success(
        &probe(&http_probe(address.port(), "/redirect")).await
    ));
    let paths: Vec<String> = seen
        .lock()
        .expect("seen")
        .iter()
        .map(|s| s.0.clone())
        .collect();
    assert_eq!(paths, ["/redirect", "/ok"]);
}

#[tokio::test]
async fn http_redirect_to_another_host_is_a_warning() {
    let (address, seen) = serve_http(false).await;
    match probe(&http_probe(address.port(), "/away")).await {
        Outcome::Warning(message) => {
            assert_eq!(message, "Probe terminated redirects, Response body: moved")
        }
        other => panic!("expected a warning, got {other:?}"),
    }
    assert_eq!(seen.lock().expect("seen").len(), 1, "not followed");
}

#[tokio::test]
async fn http_redirect_loops_stop_after_ten_requests() {
    let (address, seen) = serve_http(false).await;
    let message = failure(probe(&http_probe(address.port(), "/loop")).await);
    assert!(message.ends_with("stopped after 10 redirects"), "{message}");
    assert_eq!(seen.lock().expect("seen").len(), 10);
}

#[tokio::test]
async fn http_sends_kubelets_headers_and_the_actions_own() {
    let (address, seen) = serve_http(false).await;
    let header = |name: &str, value: &str| HTTPHeader {
        name: name.to_owned(),
        value: value.to_owned(),
    };
    let mut plain = http_probe(address.port(), "/ok");
    assert!(success(&probe(&plain).await));
    plain.http_get.as_mut().expect("httpGet").http_headers = Some(vec![
        header("X-Token", "secret"),
        header("Host", "example.com"),
        header("user-agent", "mine/1"),
        header("Accept", ""),
    ]);
    assert!(success(&probe(&plain).await));

    let seen = seen.lock().expect("seen");
    let value = |i: usize, name: &str| {
        seen[i]
            .1
            .get(name)
            .map(|v| v.to_str().expect("ascii header").to_owned())
    };
    assert_eq!(value(0, "user-agent").as_deref(), Some("kube-probe/1.34"));
    assert_eq!(value(0, "accept").as_deref(), Some("*/*"));
    assert_eq!(
        value(0, "host"),
        Some(format!("127.0.0.1:{}", address.port()))
    );
    assert_eq!(value(0, "connection").as_deref(), Some("close"));
    assert_eq!(value(1, "x-token").as_deref(), Some("secret"));
    assert_eq!(value(1, "host").as_deref(), Some("example.com"));
    assert_eq!(value(1, "user-agent").as_deref(), Some("mine/1"));
    assert_eq!(value(1, "accept"), None, "an empty Accept sends none");
}

#[tokio::test]
async fn http_ports_resolve_by_name() {
    let (address, _) = serve_http(false).await;
    let container = Container {
        ports: Some(vec![ContainerPort {
            name: Some("web".to_owned()),
            container_port: address.port().into(),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let target = Target::new(LOCAL, "c1", &container);
    let by_name = |name: &str| Probe {
        http_get: Some(http_get(IntOrString::String(name.to_owned()), "/ok")),
        ..Default::default()
    };
    let runtime = FakeRuntime::default();
    assert!(success(
        &run_probe(&runtime, &by_name("web"), &target).await
    ));
    let digits = by_name(&address.port().to_string());
    assert!(success(&run_probe(&runtime, &digits, &target).await));
    let message = failure(run_probe(&runtime, &by_name("metrics"), &target).await);
    assert_eq!(message, "the container has no port named \"metrics\"");
}

#[tokio::test]
async fn https_is_probed_without_verifying_the_certificate() {
    let (address, _) = serve_http(true).await;
    let mut https = http_probe(address.port(), "/ok");
    https.http_get.as_mut().expect("httpGet").scheme = Some("HTTPS".to_owned());
    assert!(success(&probe(&https).await));
}

#[tokio::test]
async fn http_probes_time_out() {
    let (address, _) = serve_http(false).await;
    let started = std::time::Instant::now();
    let message = failure(probe(&http_probe(address.port(), "/slow")).await);
    assert!(
        message.ends_with("/slow\": timed out after 1s"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn http_without_a_pod_ip_cannot_run() {
    let outcome = run_probe(&FakeRuntime::default(), &http_probe(80, "/"), &target("")).await;
    assert!(
        matches!(outcome, Outcome::Unknown(ProbeError::NoPodIp(_))),
        "{outcome:?}"
    );
}

// ---- tcpSocket --------------------------------------------------------------------------

fn tcp_probe(port: u16) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(port.into()),
            host: None,
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn tcp_succeeds_on_an_open_port_and_resets_the_connection() {
    let listener = TcpListener::bind((LOCAL, 0)).await.expect("bind");
    let port = listener.local_addr().expect("local address").port();
    assert!(success(&probe(&tcp_probe(port)).await));

    // The probe's side closed with RST, not FIN: the server reads a reset, not an end of
    // stream, and the probe's side keeps no TIME_WAIT.
    let (mut accepted, _) = listener.accept().await.expect("the probe connected");
    let mut buf = [0u8; 1];
    let read = accepted.read(&mut buf).await;
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionReset)
    );
}

#[tokio::test]
async fn probe_connections_linger_zero_seconds() {
    let listener = TcpListener::bind((LOCAL, 0)).await.expect("bind");
    let port = listener.local_addr().expect("local address").port();
    let stream = super::net::connect(LOCAL, port).await.expect("connected");
    assert_eq!(stream.linger().expect("SO_LINGER"), Some(Duration::ZERO));
}

#[tokio::test]
async fn tcp_fails_on_a_closed_port() {
    let port = closed_port().await;
    let message = failure(probe(&tcp_probe(port)).await);
    assert!(
        message.starts_with(&format!("dial tcp 127.0.0.1:{port}: ")),
        "{message}"
    );
}

// ---- grpc -------------------------------------------------------------------------------

/// Answers `Check` from a fixed table; an unknown service is NOT_FOUND, as the protocol says.
struct Statuses(HashMap<&'static str, ServingStatus>);

#[tonic::async_trait]
impl Health for Statuses {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        let agent = request
            .metadata()
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !agent.starts_with("kube-probe/1.34") {
            return Err(tonic::Status::permission_denied(format!("agent {agent}")));
        }
        match self.0.get(request.get_ref().service.as_str()) {
            Some(status) => Ok(tonic::Response::new(HealthCheckResponse {
                status: *status as i32,
            })),
            None => Err(tonic::Status::not_found("unknown service")),
        }
    }
}

async fn serve_grpc(router: tonic::transport::server::Router) -> u16 {
    let listener = TcpListener::bind((LOCAL, 0)).await.expect("bind");
    let port = listener.local_addr().expect("local address").port();
    tokio::spawn(router.serve_with_incoming(TcpListenerStream::new(listener)));
    port
}

fn grpc_probe(port: u16, service: &str) -> Probe {
    Probe {
        grpc: Some(GRPCAction {
            port: port.into(),
            service: Some(service.to_owned()),
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn grpc_asks_the_health_service() {
    let health = HealthServer::new(Statuses(HashMap::from([
        ("", ServingStatus::Serving),
        ("db", ServingStatus::NotServing),
    ])));
    let port = serve_grpc(tonic::transport::Server::builder().add_service(health)).await;
    assert!(success(&probe(&grpc_probe(port, "")).await));
    assert_eq!(
        failure(probe(&grpc_probe(port, "db")).await),
        "service unhealthy (responded with \"NOT_SERVING\")"
    );
    assert_eq!(
        failure(probe(&grpc_probe(port, "cache")).await),
        "error: health rpc probe failed: rpc error: code = NotFound desc = unknown service"
    );
}

#[tokio::test]
async fn grpc_without_the_health_service_fails() {
    use bosun_proto::cri::runtime_service_server::{RuntimeService, RuntimeServiceServer};
    struct NotHealth;
    #[tonic::async_trait]
    impl RuntimeService for NotHealth {}

    let port = serve_grpc(
        tonic::transport::Server::builder().add_service(RuntimeServiceServer::new(NotHealth)),
    )
    .await;
    let message = failure(probe(&grpc_probe(port, "")).await);
    assert!(
        message.starts_with(
            "this server does not implement the grpc health protocol (grpc.health.v1.Health)"
        ),
        "{message}"
    );
}

#[tokio::test]
async fn grpc_fails_when_unreachable_or_silent() {
    let port = closed_port().await;
    let message = failure(probe(&grpc_probe(port, "")).await);
    assert!(
        message.starts_with(&format!(
            "error: failed to connect service at \"127.0.0.1:{port}\""
        )),
        "{message}"
    );

    // Accepts connections and never says a word.
    let silent = TcpListener::bind((LOCAL, 0)).await.expect("bind");
    let port = silent.local_addr().expect("local address").port();
    let started = std::time::Instant::now();
    let message = failure(probe(&grpc_probe(port, "")).await);
    assert!(message.starts_with("timeout: "), "{message}");
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(silent);
}

// ---- exec -------------------------------------------------------------------------------

fn exec(command: &str) -> ExecAction {
    ExecAction {
        command: Some(vec![command.to_owned(), "--flag".to_owned()]),
    }
}

#[tokio::test(start_paused = true)]
async fn exec_probes_judge_the_exit_code() {
    let runtime = FakeRuntime::default();
    runtime
        .script("ok", [], Reply::Exit(0, "fine"))
        .script("bad", [], Reply::Exit(3, "broken\n"))
        .script("gone", [], Reply::Status(tonic::Code::NotFound))
        .script("hang", [], Reply::Hang);
    let run = |command: &str| {
        let probe = Probe {
            exec: Some(exec(command)),
            timeout_seconds: Some(4),
            ..Default::default()
        };
        let runtime = runtime.clone();
        async move { run_probe(&runtime, &probe, &target(LOCAL)).await }
    };
    assert!(success(&run("ok").await));
    assert_eq!(failure(run("bad").await), "broken\n");
    let outcome = run("gone").await;
    assert!(
        matches!(outcome, Outcome::Unknown(ProbeError::Exec { .. })),
        "{outcome:?}"
    );
    let started = Instant::now();
    assert_eq!(
        failure(run("hang").await),
        "command \"hang --flag\" timed out"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(4));
}

// ---- hooks ------------------------------------------------------------------------------

fn sleep_hook(seconds: i64) -> LifecycleHandler {
    LifecycleHandler {
        sleep: Some(SleepAction { seconds }),
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_sleep_hook_is_cut_short_at_the_deadline() {
    let runtime = FakeRuntime::default();
    let started = Instant::now();
    let result = run_hook(
        &runtime,
        &sleep_hook(30),
        &target(LOCAL),
        Duration::from_secs(2),
    )
    .await;
    assert!(
        matches!(result, Err(HookError::TimedOut { within }) if within == Duration::from_secs(2)),
        "{result:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(2));

    let started = Instant::now();
    run_hook(
        &runtime,
        &sleep_hook(1),
        &target(LOCAL),
        Duration::from_secs(5),
    )
    .await
    .expect("a short sleep completes");
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn exec_hooks_fail_on_a_non_zero_exit() {
    let runtime = FakeRuntime::default();
    runtime
        .script("ok", [], Reply::Exit(0, ""))
        .script("bad", [], Reply::Exit(2, "no such file"))
        .script("hang", [], Reply::Hang);
    let hook = |command: &str| LifecycleHandler {
        exec: Some(exec(command)),
        ..Default::default()
    };
    let within = Duration::from_secs(3);
    run_hook(&runtime, &hook("ok"), &target(LOCAL), within)
        .await
        .expect("exit 0");
    let err = run_hook(&runtime, &hook("bad"), &target(LOCAL), within)
        .await
        .expect_err("exit 2");
    assert_eq!(
        err.to_string(),
        "command \"bad --flag\" exited with 2: no such file"
    );
    let started = Instant::now();
    let err = run_hook(&runtime, &hook("hang"), &target(LOCAL), within)
        .await
        .expect_err("hangs");
    assert!(matches!(err, HookError::TimedOut { .. }), "{err:?}");
    assert_eq!(started.elapsed(), within);
}

fn http_hook(port: u16, path: &str) -> LifecycleHandler {
    LifecycleHandler {
        http_get: Some(http_get(IntOrString::Int(port.into()), path)),
        ..Default::default()
    }
}

#[tokio::test]
async fn http_hooks_do_not_judge_the_status_code() {
    let (address, seen) = serve_http(false).await;
    let within = Duration::from_secs(5);
    let runtime = FakeRuntime::default();
    run_hook(
        &runtime,
        &http_hook(address.port(), "/fail"),
        &target(LOCAL),
        within,
    )
    .await
    .expect("any answer will do");
    let agent = seen.lock().expect("seen")[0].1.get("user-agent").cloned();
    assert_eq!(
        agent.as_ref().and_then(|v| v.to_str().ok()),
        Some("kube-lifecycle/1.34")
    );

    let port = closed_port().await;
    let err = run_hook(&runtime, &http_hook(port, "/"), &target(LOCAL), within)
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(err, HookError::Http(HttpError::Connect { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_https_hook_answered_in_http_is_retried_over_http() {
    let (address, seen) = serve_http(false).await;
    let mut hook = http_hook(address.port(), "/ok");
    hook.http_get.as_mut().expect("httpGet").scheme = Some("HTTPS".to_owned());
    run_hook(
        &FakeRuntime::default(),
        &hook,
        &target(LOCAL),
        Duration::from_secs(5),
    )
    .await
    .expect("the HTTP retry answers");
    let paths: Vec<String> = seen
        .lock()
        .expect("seen")
        .iter()
        .map(|s| s.0.clone())
        .collect();
    assert_eq!(paths, ["/ok"], "only the plain request is understood");
}

#[tokio::test]
async fn handlers_without_a_runnable_action_are_refused() {
    let runtime = FakeRuntime::default();
    let within = Duration::from_secs(1);
    let tcp = LifecycleHandler {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(80),
            host: None,
        }),
        ..Default::default()
    };
    for handler in [LifecycleHandler::default(), tcp] {
        let err = run_hook(&runtime, &handler, &target(LOCAL), within)
            .await
            .expect_err("nothing to run");
        assert!(matches!(err, HookError::NoAction), "{err:?}");
    }
    let outcome = run_probe(&runtime, &Probe::default(), &target(LOCAL)).await;
    assert!(
        matches!(outcome, Outcome::Unknown(ProbeError::NoAction)),
        "{outcome:?}"
    );
}

// ---- TLS for the test server ------------------------------------------------------------

/// A self-signed certificate for 127.0.0.1 (P-256, valid until 2126), made for these tests
/// only: the probe does not verify it, which is what the HTTPS test shows.
const TEST_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBnjCCAUSgAwIBAgIUXFh5quEG5s+5XpbFuU8e6EwWG1EwCgYIKoZIzj0EAwIw
GzEZMBcGA1UEAwwQYm9zdW4tcHJvYmUtdGVzdDAgFw0yNjExMjIxMDQ1MzlaGA8y
MTI2MTAyOTEwNDUzOVowGzEZMBcGA1UEAwwQYm9zdW4tcHJvYmUtdGVzdDBZMBMG
ByqGSM49AgEGCCqGSM49AwEHA0IABG/u9U3aVZshpJyfj7hjOtqPVeRrhmqBzT7Z
khHqcmr+bT6HYAEgaPyTPDiFE4Ibmh+UbooyQEE9XJEQwchUhhOjZDBiMB0GA1Ud
DgQWBBT9BPnCaqR62bSlvVZEjyZIUkhLnDAfBgNVHSMEGDAWgBT9BPnCaqR62bSl
vVZEjyZIUkhLnDAPBgNVHRMBAf8EBTADAQH/MA8GA1UdEQQIMAaHBH8AAAEwCgYI
KoZIzj0EAwIDSAAwRQIgdSr163zQAYpY8UHDIc+vrGFx7xnpxeRUHhDumvJz+IoC
IQCq+q6+j1HH7xg+Bf3Sa5lJWcSqHIgW3QIT95RiieuKfQ==
-----END CERTIFICATE-----
";

const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgIiw323D/nA6p2bqy
jUWKvZgmnIV6QdEmNuDBrxrGnCOhRANCAARv7vVN2lWbIaScn4+4Yzraj1Xka4Zq
gc0+2ZIR6nJq/m0+h2ABIGj8kzw4hROCG5oflG6KMkBBPVyREMHIVIYT
-----END PRIVATE KEY-----
";

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let cert = CertificateDer::from_pem_slice(TEST_CERT.as_bytes()).expect("test certificate");
    let key = PrivateKeyDer::from_pem_slice(TEST_KEY.as_bytes()).expect("test key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .expect("the test certificate matches its key");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}
