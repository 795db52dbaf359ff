//! `exec`, `attach` and `port-forward` streams, proxied to the runtime's streaming server as
//! kubelet proxies them: the client's upgrade request (SPDY/3.1 or WebSocket, whatever
//! protocol it offers) goes to the URL CRI returned, and once both sides have switched
//! protocols the bytes are copied both ways until either side closes. The protocol is the
//! runtime's to speak; nothing here reads the frames.

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, HOST};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::Body;

/// How much of a refused (non-upgrade) answer of the runtime is passed on.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Why a stream could not be set up; answered with 502 and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the runtime's streaming URL {url:?} is not usable: {reason}")]
    Url { url: String, reason: String },
    #[error("connecting to the runtime's streaming server at {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the runtime's streaming server: {0}")]
    Http(#[source] hyper::Error),
}

/// Sends `request` on to the streaming URL `url`; the answer goes back to the client, and
/// an upgrade on both sides is joined in a task of its own.
pub async fn proxy(
    mut request: Request<Incoming>,
    url: &str,
) -> Result<Response<Body>, ProxyError> {
    let target: Uri = url
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| ProxyError::Url {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    if target.scheme_str() != Some("http") {
        return Err(ProxyError::Url {
            url: url.to_owned(),
            reason: "only plain-HTTP streaming servers are supported (the runtime's default)"
                .to_owned(),
        });
    }
    let authority = target
        .authority()
        .ok_or_else(|| ProxyError::Url {
            url: url.to_owned(),
            reason: "no host".to_owned(),
        })?
        .clone();
    let address = match authority.port_u16() {
        Some(_) => authority.as_str().to_owned(),
        None => format!("{}:80", authority.host()),
    };
    let stream = TcpStream::connect(&address)
        .await
        .map_err(|source| ProxyError::Connect {
            address: address.clone(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(ProxyError::Http)?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "streaming server connection");
        }
    });

    // The runtime's URL names the session; the client's query (the ports of a WebSocket
    // port-forward) goes with it, as kubelet's proxy keeps it.
    let path = target.path();
    let path_and_query = match request.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut upstream = Request::builder()
        .method(request.method().clone())
        .uri(path_and_query);
    for (name, value) in request.headers() {
        // The client's credentials were for this server, not the runtime's.
        if name != AUTHORIZATION && name != HOST {
            upstream = upstream.header(name, value);
        }
    }
    let upstream = upstream
        .header(
            HOST,
            HeaderValue::from_str(authority.as_str())
                .unwrap_or(HeaderValue::from_static("localhost")),
        )
        .body(Full::new(Bytes::new()))
        .map_err(|e| ProxyError::Url {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    let protocol = request
        .headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let client_upgrade = hyper::upgrade::on(&mut request);
    let mut answer = sender
        .send_request(upstream)
        .await
        .map_err(ProxyError::Http)?;

    tracing::debug!(%protocol, status = %answer.status(), "the runtime answered a stream");
    if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
        // A refusal (an unsupported protocol, an expired session): passed on as it is.
        let status = answer.status();
        let headers = answer.headers().clone();
        let body = http_body_util::Limited::new(answer.into_body(), MAX_ERROR_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut response = Response::new(super::full(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        return Ok(response);
    }

    let runtime_upgrade = hyper::upgrade::on(&mut answer);
    let mut response = Response::new(super::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *response.headers_mut() = answer.headers().clone();
    tokio::spawn(async move {
        let (client, runtime) = match tokio::try_join!(client_upgrade, runtime_upgrade) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(error = %e, "a stream did not upgrade");
                return;
            }
        };
        let (mut client, mut runtime) = (TokioIo::new(client), TokioIo::new(runtime));
        match tokio::io::copy_bidirectional(&mut client, &mut runtime).await {
            Ok((sent, received)) => {
                tracing::debug!(sent, received, "stream ended");
            }
            Err(e) => tracing::debug!(error = %e, "stream ended"),
        }
    });
    Ok(response)
}
