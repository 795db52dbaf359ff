//! The errors of a CRI call, sorted by what the caller should do about them.

use std::time::Duration;

use tonic::Code;

/// An error from a CRI call or from reaching the runtime.
///
/// [`CriError::is_retryable`] says whether trying the same call again later can succeed
/// (the runtime was busy, restarting or slow); the other errors need different input.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The endpoint string is not one bosun can dial. Not retryable.
    #[error("invalid runtime endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        endpoint: String,
        reason: &'static str,
    },

    /// Nothing answered on the socket (missing, refused, not a gRPC server). Retryable: the
    /// runtime may be starting.
    #[error("cannot connect to the runtime at {endpoint}: {}", transport_detail(.source))]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },

    /// The runtime answered but does not serve CRI `runtime.v1`. Not retryable.
    #[error("the runtime at {endpoint} does not serve CRI runtime.v1: {message}")]
    UnsupportedApi { endpoint: String, message: String },

    /// The call did not finish within its deadline. Retryable.
    #[error("{call}: timed out after {}", humantime(*.timeout))]
    Timeout {
        call: &'static str,
        timeout: Duration,
    },

    /// The object named in the call does not exist. Not retryable.
    #[error("{call}: not found: {message}")]
    NotFound { call: &'static str, message: String },

    /// The runtime does not implement this call. Not retryable.
    #[error("{call}: not implemented by the runtime")]
    Unimplemented { call: &'static str },

    /// Any other status from the runtime; retryable when the code says the runtime was
    /// unavailable, overloaded or aborted the call.
    #[error("{call}: {message} ({code:?})")]
    Status {
        call: &'static str,
        code: Code,
        message: String,
    },
}

impl CriError {
    /// Whether the same call may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            CriError::Connect { .. } | CriError::Timeout { .. } => true,
            CriError::Status { code, .. } => matches!(
                code,
                Code::Unavailable
                    | Code::ResourceExhausted
                    | Code::Aborted
                    | Code::DeadlineExceeded
                    | Code::Unknown
            ),
            CriError::InvalidEndpoint { .. }
            | CriError::UnsupportedApi { .. }
            | CriError::NotFound { .. }
            | CriError::Unimplemented { .. } => false,
        }
    }

    /// Whether the runtime said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, CriError::NotFound { .. })
    }

    pub(crate) fn from_status(call: &'static str, status: tonic::Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            Code::NotFound => CriError::NotFound { call, message },
            Code::Unimplemented => CriError::Unimplemented { call },
            // containerd answers "not found" for unknown IDs with Unknown on some calls.
            Code::Unknown if message.contains("not found") => CriError::NotFound { call, message },
            code => CriError::Status {
                call,
                code,
                message,
            },
        }
    }
}

/// The innermost cause of a transport error: tonic's own message ("transport error") says
/// nothing; the io error under it ("No such file or directory") is what a user needs.
fn transport_detail(error: &tonic::transport::Error) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn humantime(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_kinds() {
        let nf = CriError::from_status("ContainerStatus", tonic::Status::not_found("no such"));
        assert!(nf.is_not_found() && !nf.is_retryable());
        let un = CriError::from_status("X", tonic::Status::unimplemented("nope"));
        assert!(matches!(un, CriError::Unimplemented { call: "X" }));
        let busy = CriError::from_status("X", tonic::Status::unavailable("restarting"));
        assert!(busy.is_retryable());
        let bad = CriError::from_status("X", tonic::Status::invalid_argument("bad"));
        assert!(!bad.is_retryable());
        let t = CriError::Timeout {
            call: "ListContainers",
            timeout: Duration::from_secs(2),
        };
        assert_eq!(t.to_string(), "ListContainers: timed out after 2s");
    }
}
