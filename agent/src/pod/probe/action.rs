//! Running one probe or lifecycle hook action against a container.

use std::time::Duration;

use bosun_cri::{api, CriError};
use bosun_proto::grpc_health::v1::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};
use hyper::header::{HeaderValue, USER_AGENT};
use hyper::Uri;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{
    ExecAction, GRPCAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use tokio::time::{timeout, timeout_at, Instant};

use super::http::{join_host_port, HttpGet, HttpResponse, Scheme, MAX_BODY};
use super::{command_line, net, HookError, Outcome, PortError, ProbeError, Target};
use crate::runtime::Runtime;

/// Runs `probe`'s action once against `target`, within the probe's `timeoutSeconds`.
pub async fn run_probe<R: Runtime>(runtime: &R, probe: &Probe, target: &Target) -> Outcome {
    let within = probe_timeout(probe);
    if let Some(exec) = &probe.exec {
        exec_probe(runtime, exec, target, within).await
    } else if let Some(action) = &probe.http_get {
        http_probe(action, target, within).await
    } else if let Some(action) = &probe.tcp_socket {
        tcp_probe(action, target, within).await
    } else if let Some(action) = &probe.grpc {
        grpc_probe(action, target, within).await
    } else {
        Outcome::Unknown(ProbeError::NoAction)
    }
}

/// Runs a lifecycle hook (postStart or preStop) against `target`; it has `within` to finish.
///
/// Unlike a probe, an httpGet hook does not judge the status code: any answer is a success.
pub async fn run_hook<R: Runtime>(
    runtime: &R,
    handler: &LifecycleHandler,
    target: &Target,
    within: Duration,
) -> Result<(), HookError> {
    let run = async {
        if let Some(exec) = &handler.exec {
            exec_hook(runtime, exec, target, within).await
        } else if let Some(action) = &handler.http_get {
            http_hook(action, target).await
        } else if let Some(sleep) = &handler.sleep {
            tokio::time::sleep(Duration::from_secs(
                u64::try_from(sleep.seconds).unwrap_or(0),
            ))
            .await;
            Ok(())
        } else {
            Err(HookError::NoAction)
        }
    };
    timeout(within, run)
        .await
        .unwrap_or(Err(HookError::TimedOut { within }))
}

/// `timeoutSeconds`, 1 when unset or not positive.
pub(super) fn probe_timeout(probe: &Probe) -> Duration {
    Duration::from_secs(positive_or(probe.timeout_seconds, 1))
}

/// A whole number of seconds from the spec, or `default` when unset or not positive: the API
/// server rejects such values, but a manifest read from disk has not been through it.
pub(super) fn positive_or(value: Option<i32>, default: u64) -> u64 {
    value
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

// ---- exec -------------------------------------------------------------------------------

/// How an ExecSync ended.
enum Exec {
    Exited { exit_code: i32, output: String },
    TimedOut,
    Failed(CriError),
}

/// Runs `command` in the container; the runtime kills it after `within`, and so do we in
/// case the runtime does not answer.
async fn exec_in<R: Runtime>(
    runtime: &R,
    container_id: &str,
    command: Vec<String>,
    within: Duration,
) -> Exec {
    // The runtime counts whole seconds and reads 0 as no limit.
    let runtime_timeout = Duration::from_secs(within.as_secs_f64().ceil().max(1.0) as u64);
    match timeout(
        within,
        runtime.exec_sync(container_id, command, runtime_timeout),
    )
    .await
    {
        Err(_) => Exec::TimedOut,
        // containerd answers a command it killed for its timeout with DEADLINE_EXCEEDED,
        // not with an exit code.
        Ok(Err(CriError::Timeout { .. }))
        | Ok(Err(CriError::Status {
            code: tonic::Code::DeadlineExceeded,
            ..
        })) => Exec::TimedOut,
        Ok(Err(e)) => Exec::Failed(e),
        Ok(Ok(response)) => Exec::Exited {
            exit_code: response.exit_code,
            output: combined_output(&response),
        },
    }
}

/// stdout then stderr, at most [`MAX_BODY`] of them, as kubelet keeps them.
fn combined_output(response: &api::ExecSyncResponse) -> String {
    let mut output = response.stdout.clone();
    output.extend_from_slice(&response.stderr);
    output.truncate(MAX_BODY);
    String::from_utf8_lossy(&output).into_owned()
}

async fn exec_probe<R: Runtime>(
    runtime: &R,
    exec: &ExecAction,
    target: &Target,
    within: Duration,
) -> Outcome {
    let command = exec.command.clone().unwrap_or_default();
    if command.is_empty() {
        return Outcome::Unknown(ProbeError::NoCommand);
    }
    let line = command_line(&command);
    match exec_in(runtime, &target.container_id, command, within).await {
        Exec::Exited { exit_code: 0, .. } => Outcome::Success,
        Exec::Exited { output, .. } => Outcome::Failure(output),
        Exec::TimedOut => Outcome::Failure(format!("command {line:?} timed out")),
        Exec::Failed(source) => Outcome::Unknown(ProbeError::Exec {
            command: line,
            source,
        }),
    }
}

async fn exec_hook<R: Runtime>(
    runtime: &R,
    exec: &ExecAction,
    target: &Target,
    within: Duration,
) -> Result<(), HookError> {
    let command = exec.command.clone().unwrap_or_default();
    if command.is_empty() {
        return Err(HookError::NoCommand);
    }
    let line = command_line(&command);
    match exec_in(runtime, &target.container_id, command, within).await {
        Exec::Exited { exit_code: 0, .. } => Ok(()),
        Exec::Exited { exit_code, output } => Err(HookError::ExecFailed {
            command: line,
            exit_code,
            output,
        }),
        Exec::TimedOut => Err(HookError::TimedOut { within }),
        Exec::Failed(source) => Err(HookError::Exec {
            command: line,
            source,
        }),
    }
}

// ---- httpGet ----------------------------------------------------------------------------

async fn http_probe(action: &HTTPGetAction, target: &Target, within: Duration) -> Outcome {
    let host = match target.host(action.host.as_deref()) {
        Ok(host) => host,
        Err(e) => return Outcome::Unknown(e.into()),
    };
    let get = match target
        .port(&action.port)
        .map_err(|e| e.to_string())
        .and_then(|port| HttpGet::new(action, host, port, "probe").map_err(|e| e.to_string()))
    {
        Ok(get) => get,
        Err(message) => return Outcome::Failure(message),
    };
    match timeout(within, get.send()).await {
        Err(_) => Outcome::Failure(format!("Get {:?}: timed out after {within:?}", get.url())),
        Ok(Err(e)) => Outcome::Failure(e.to_string()),
        Ok(Ok(response)) => judge_http(&response),
    }
}

/// kubelet's reading of an HTTP probe's answer: 2xx succeeds, 3xx (a redirect not followed)
/// succeeds with a warning, anything else fails.
fn judge_http(response: &HttpResponse) -> Outcome {
    match response.status.as_u16() {
        200..=299 => Outcome::Success,
        300..=399 => Outcome::Warning(format!(
            "Probe terminated redirects, Response body: {}",
            String::from_utf8_lossy(&response.body)
        )),
        code => Outcome::Failure(format!("HTTP probe failed with statuscode: {code}")),
    }
}

async fn http_hook(action: &HTTPGetAction, target: &Target) -> Result<(), HookError> {
    let host = target.host(action.host.as_deref())?;
    let port = target.port(&action.port)?;
    let get = HttpGet::new(action, host, port, "lifecycle")?;
    match get.send().await {
        Err(e) if get.scheme == Scheme::Https && e.is_http_answer_to_https() => {
            tracing::warn!(
                url = get.url(),
                "HTTPS lifecycle hook got an HTTP answer; retrying over HTTP"
            );
            get.over_plain_http().send().await?;
            Ok(())
        }
        result => result.map(drop).map_err(HookError::from),
    }
}

// ---- tcpSocket --------------------------------------------------------------------------

async fn tcp_probe(action: &TCPSocketAction, target: &Target, within: Duration) -> Outcome {
    let host = match target.host(action.host.as_deref()) {
        Ok(host) => host,
        Err(e) => return Outcome::Unknown(e.into()),
    };
    let port = match target.port(&action.port) {
        Ok(port) => port,
        Err(e) => return Outcome::Failure(e.to_string()),
    };
    match timeout(within, net::connect(host, port)).await {
        Err(_) => Outcome::Failure(format!(
            "dial tcp {}: i/o timeout",
            join_host_port(host, port)
        )),
        Ok(Err(e)) => Outcome::Failure(e.to_string()),
        // Dropping the stream resets the connection (see `net::connect`).
        Ok(Ok(_stream)) => Outcome::Success,
    }
}

// ---- grpc -------------------------------------------------------------------------------

async fn grpc_probe(action: &GRPCAction, target: &Target, within: Duration) -> Outcome {
    let host = match target.host(None) {
        Ok(host) => host,
        Err(e) => return Outcome::Unknown(e.into()),
    };
    let port = match u16::try_from(action.port).ok().filter(|p| *p != 0) {
        Some(port) => port,
        None => {
            return Outcome::Failure(
                PortError::OutOfRange {
                    number: action.port,
                }
                .to_string(),
            )
        }
    };
    let service = action.service.clone().unwrap_or_default();
    grpc_check(host, port, service, within).await
}

/// `grpc.health.v1.Health/Check` over plaintext HTTP/2 on a connection of our own (so it
/// resets on close like every probe connection), all of it within `within`.
async fn grpc_check(host: &str, port: u16, service: String, within: Duration) -> Outcome {
    let deadline = Instant::now() + within;
    let address = join_host_port(host, port);
    let connect = async {
        let stream = net::connect(host, port).await.map_err(|e| e.to_string())?;
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())
    };
    let (sender, connection) = match timeout_at(deadline, connect).await {
        Err(_) => {
            return Outcome::Failure(format!(
                "timeout: failed to connect service {address:?} within {within:?}"
            ))
        }
        Ok(Err(e)) => {
            return Outcome::Failure(format!(
                "error: failed to connect service at {address:?}: {e}"
            ))
        }
        Ok(Ok(connected)) => connected,
    };
    let origin = match Uri::builder()
        .scheme("http")
        .authority(address.as_str())
        .path_and_query("/")
        .build()
    {
        Ok(origin) => origin,
        Err(e) => return Outcome::Failure(format!("error: invalid address {address:?}: {e}")),
    };
    let agent = HeaderValue::from_str(&format!("kube-probe/{}", super::KUBE_VERSION))
        .unwrap_or(HeaderValue::from_static("kube-probe"));
    let channel = tower::service_fn(move |mut request: hyper::Request<tonic::body::Body>| {
        let mut sender = sender.clone();
        request.headers_mut().insert(USER_AGENT, agent.clone());
        async move {
            sender.ready().await?;
            sender.send_request(request).await
        }
    });
    let mut client = HealthClient::with_origin(channel, origin);
    let mut request = tonic::Request::new(HealthCheckRequest { service });
    // Tells the server the deadline too (the grpc-timeout header).
    request.set_timeout(deadline.saturating_duration_since(Instant::now()));

    let check = timeout_at(deadline, client.check(request));
    tokio::pin!(connection);
    let answer = tokio::select! {
        answer = check => answer,
        Err(e) = &mut connection => Ok(Err(tonic::Status::unavailable(e.to_string()))),
    };
    let rpc_timed_out = || {
        Outcome::Failure(format!(
            "timeout: health rpc did not complete within {within:?}"
        ))
    };
    match answer {
        Err(_) => rpc_timed_out(),
        Ok(Err(status)) => match status.code() {
            tonic::Code::DeadlineExceeded => rpc_timed_out(),
            tonic::Code::Unimplemented => Outcome::Failure(format!(
                "this server does not implement the grpc health protocol \
                 (grpc.health.v1.Health): {}",
                status.message()
            )),
            code => Outcome::Failure(format!(
                "error: health rpc probe failed: rpc error: code = {code:?} desc = {}",
                status.message()
            )),
        },
        Ok(Ok(response)) => match response.into_inner().status() {
            ServingStatus::Serving => Outcome::Success,
            status => Outcome::Failure(format!(
                "service unhealthy (responded with {:?})",
                status.as_str_name()
            )),
        },
    }
}
