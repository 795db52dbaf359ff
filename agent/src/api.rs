//! The daemon's local API: HTTP on a unix socket only root can open (mode 0600), serving
//! the pods as Kubernetes objects. `bosun get` is its client.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use crate::daemon::PodStore;

/// The path of the pod list.
pub const PODS_PATH: &str = "/api/v1/pods";

/// Serves the API on `socket` until the returned task is aborted.
pub fn serve(socket: &Path, store: PodStore) -> Result<JoinHandle<()>> {
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
            let store = store.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let store = store.clone();
                    async move { Ok::<_, Infallible>(respond(&request, &store)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }))
}

fn respond<B>(request: &Request<B>, store: &PodStore) -> Response<Full<Bytes>> {
    if request.method() != hyper::Method::GET || request.uri().path() != PODS_PATH {
        return json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"kind": "Status", "status": "Failure", "reason": "NotFound"}),
        );
    }
    let pods: Vec<Pod> = match store.read() {
        Ok(pods) => pods.values().cloned().collect(),
        Err(_) => Vec::new(),
    };
    let list =
        serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": pods});
    json(StatusCode::OK, &list)
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
    let request = Request::get(PODS_PATH)
        .header(hyper::header::HOST, "localhost")
        .body(Full::new(Bytes::new()))
        .context("building the request")?;
    let response = sender
        .send_request(request)
        .await
        .context("asking the daemon for pods")?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading the daemon's answer")?
        .to_bytes();
    if !status.is_success() {
        anyhow::bail!(
            "the daemon answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    #[derive(serde::Deserialize)]
    struct List {
        items: Vec<Pod>,
    }
    let list: List = serde_json::from_slice(&body).context("decoding the daemon's pod list")?;
    Ok(list.items)
}
