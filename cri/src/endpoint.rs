//! Runtime endpoints: `unix:///path` (or a bare absolute path) and the gRPC channel over it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use crate::error::CriError;

/// The endpoint kubelet and crictl use when none is given.
pub const DEFAULT_RUNTIME_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";

/// Parses a runtime endpoint as crictl accepts it: `unix:///run/x.sock` or `/run/x.sock`.
/// Other schemes (tcp, npipe) are refused: bosun only talks to a local runtime.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, CriError> {
    let invalid = |reason: &'static str| CriError::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let path = match endpoint.split_once("://") {
        Some(("unix", path)) => path,
        Some(_) => return Err(invalid("only unix:// endpoints are supported")),
        None => endpoint,
    };
    if path.is_empty() {
        return Err(invalid("the socket path is empty"));
    }
    if !path.starts_with('/') {
        return Err(invalid("the socket path must be absolute"));
    }
    Ok(PathBuf::from(path))
}

/// Opens a gRPC channel to a unix socket, giving up after `timeout`.
pub(crate) async fn connect_unix(path: &Path, timeout: Duration) -> Result<Channel, CriError> {
    let endpoint_name = format!("unix://{}", path.display());
    let connect_error = |source| CriError::Connect {
        endpoint: endpoint_name.clone(),
        source,
    };
    // The authority is a placeholder: the connector below ignores it and dials the socket.
    // No channel-wide request timeout: it would also cut long-lived event streams; unary
    // calls carry their own deadlines.
    let endpoint = Endpoint::from_static("http://localhost").connect_timeout(timeout);
    let path = path.to_path_buf();
    let connecting = endpoint.connect_with_connector(tower::service_fn(move |_| {
        let path = path.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
    }));
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(source)) => Err(connect_error(source)),
        Err(_) => Err(CriError::Timeout {
            call: "connect",
            timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_unix_urls_and_bare_paths() {
        assert_eq!(
            socket_path("unix:///run/containerd/containerd.sock").unwrap(),
            PathBuf::from("/run/containerd/containerd.sock")
        );
        assert_eq!(
            socket_path("/tmp/c.sock").unwrap(),
            PathBuf::from("/tmp/c.sock")
        );
    }

    #[test]
    fn refuses_other_schemes_and_relative_paths() {
        for bad in [
            "tcp://127.0.0.1:1234",
            "npipe:////./pipe/x",
            "unix://",
            "run/x.sock",
            "",
        ] {
            let err = socket_path(bad).unwrap_err();
            assert!(
                matches!(err, CriError::InvalidEndpoint { .. }),
                "{bad}: {err}"
            );
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
