//! Container probes and lifecycle hooks, as kubelet's prober and lifecycle handlers run them.
//!
//! Two layers:
//! - [`run_probe`] and [`run_hook`] perform one action (exec through the [`Runtime`] seam,
//!   httpGet, tcpSocket, grpc, sleep) against one container, bounded in time;
//! - [`ContainerProbes`] schedules a container's startup, liveness and readiness probes on
//!   their periods, applies the thresholds and keeps the result as a [`ProbeState`].
//!
//! It knows a container's spec and where to reach it ([`Target`]); it does not know pods'
//! status or what to do about a failed probe: the pod worker reads [`ProbeState`] and acts.
//!
//! [`Runtime`]: crate::runtime::Runtime

mod action;
mod http;
mod net;
mod prober;

#[cfg(test)]
mod action_tests;
#[cfg(test)]
mod fake;
#[cfg(test)]
mod prober_tests;

use std::fmt;
use std::time::Duration;

use bosun_cri::CriError;
use k8s_openapi::api::core::v1::Container;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub use action::{run_hook, run_probe};
pub use http::HttpError;
pub use net::ConnectError;
pub use prober::{ContainerProbes, ProbeEvent, ProbeEventKind, ProbeFailure, ProbeState, Reports};

/// The Kubernetes version bosun speaks for, as kubelet puts it in its probes' `User-Agent`.
const KUBE_VERSION: &str = "1.34";

/// What a probe or hook acts on: one container of one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// The pod's IP, the host of httpGet, tcpSocket and grpc actions that name none. Empty while
    /// the sandbox has no IP; such actions then cannot run.
    pub pod_ip: String,
    /// The CRI ID of the container exec actions run in.
    pub container_id: String,
    /// The container's `ports[]` that have a name, so an action can say `port: http`.
    pub named_ports: Vec<(String, i32)>,
}

impl Target {
    pub fn new(
        pod_ip: impl Into<String>,
        container_id: impl Into<String>,
        container: &Container,
    ) -> Self {
        let named_ports = container
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone()?, p.container_port)))
            .collect();
        Target {
            pod_ip: pod_ip.into(),
            container_id: container_id.into(),
            named_ports,
        }
    }

    /// The host an action connects to: its own `host`, or else the pod's IP.
    fn host<'a>(&'a self, host: Option<&'a str>) -> Result<&'a str, NoPodIp> {
        match host.filter(|h| !h.is_empty()) {
            Some(host) => Ok(host),
            None if self.pod_ip.is_empty() => Err(NoPodIp),
            None => Ok(&self.pod_ip),
        }
    }

    /// Turns an action's `port` into a number: an integer as is, a string of digits as its
    /// value, any other string by the container's port of that name.
    fn port(&self, port: &IntOrString) -> Result<u16, PortError> {
        let number = match port {
            IntOrString::Int(n) => *n,
            IntOrString::String(s) => match s.parse::<i32>() {
                Ok(n) => n,
                Err(_) => self
                    .named_ports
                    .iter()
                    .find(|(name, _)| name == s)
                    .map(|(_, n)| *n)
                    .ok_or_else(|| PortError::UnknownName { name: s.clone() })?,
            },
        };
        u16::try_from(number)
            .ok()
            .filter(|n| *n != 0)
            .ok_or(PortError::OutOfRange { number })
    }
}

/// The pod has no IP yet, so an action without a `host` has nowhere to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the pod has no IP yet")]
pub struct NoPodIp;

/// An action's `port` that names no port of the container. Not retryable: the spec must change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("the container has no port named {name:?}")]
    UnknownName { name: String },
    #[error("port {number} is not between 1 and 65535")]
    OutOfRange { number: i32 },
}

/// Which of a container's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    /// kubelet's name of the probe type, in events and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of running a probe's action once.
#[derive(Debug)]
pub enum Outcome {
    Success,
    /// Counts as a success, and is worth telling: an HTTP redirect to another host, which
    /// kubelet does not follow.
    Warning(String),
    /// The container answered, and the answer is a failure; the message says why.
    Failure(String),
    /// The probe could not be run at all; like kubelet, the scheduler throws this result away
    /// rather than count it for or against the container.
    Unknown(ProbeError),
}

/// Why a probe could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The probe names no action bosun runs. Not retryable: the spec must change.
    #[error("the probe has no exec, httpGet, tcpSocket or grpc action")]
    NoAction,
    /// The exec action has an empty command. Not retryable.
    #[error("the exec action has no command")]
    NoCommand,
    /// Retryable: the sandbox gets its IP soon.
    #[error(transparent)]
    NoPodIp(#[from] NoPodIp),
    /// The runtime failed to run the command (not the command failing). Retryable when
    /// `source` is.
    #[error("running {command:?} in the container: {source}")]
    Exec {
        command: String,
        #[source]
        source: CriError,
    },
}

/// Why a lifecycle hook did not complete. kubelet does not retry hooks, and neither does its
/// caller here: a failed postStart hook kills the container, a failed preStop hook is
/// reported and the container stopped anyway.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The handler names no action bosun runs (tcpSocket is not one: Kubernetes accepts it in
    /// the API only for compatibility and kubelet refuses to run it).
    #[error("the lifecycle handler has no exec, httpGet or sleep action")]
    NoAction,
    #[error("the exec action has no command")]
    NoCommand,
    #[error("command {command:?} exited with {exit_code}: {output}")]
    ExecFailed {
        command: String,
        exit_code: i32,
        output: String,
    },
    #[error("running {command:?} in the container: {source}")]
    Exec {
        command: String,
        #[source]
        source: CriError,
    },
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    NoPodIp(#[from] NoPodIp),
    /// The hook had not finished when its time was up. For a sleep hook longer than the time
    /// left this is the expected end.
    #[error("did not finish within {within:?}")]
    TimedOut { within: Duration },
}

/// The command as one string, the way kubelet quotes it in messages.
fn command_line(command: &[String]) -> String {
    command.join(" ")
}
