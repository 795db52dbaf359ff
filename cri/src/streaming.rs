//! The client side of CRI's streaming server (the URLs `Exec`, `Attach`, `PortForward`
//! return), and of kubelet's API that proxies it, over WebSocket with Kubernetes' channel
//! protocol: each binary message starts with a channel byte (for exec and attach: 0 stdin,
//! 1 stdout, 2 stderr, 3 error/status, 4 terminal resize; for port-forward a data and an
//! error channel per port).

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::WebSocketStream;

/// The protocols an exec or attach session offers, best first. v5 can signal the end of
/// stdin; v4 cannot (a non-interactive command reading stdin then waits for more).
pub const EXEC_PROTOCOLS: &str = "v5.channel.k8s.io, v4.channel.k8s.io";
const PROTOCOL_V5: &str = "v5.channel.k8s.io";

/// The channels of an exec or attach session.
pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
/// The process's end, as a `metav1.Status`.
pub const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// A terminal size, as sent on the resize channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TerminalSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// An error in a streaming session. Not retryable: the URL is single-use.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("streaming URL {url:?} is not usable: {reason}")]
    Url { url: String, reason: String },
    #[error("connecting to the streaming server at {url}: {source}")]
    Dial {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("opening a WebSocket to the streaming server at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    #[error("streaming session: {source}")]
    Io {
        #[source]
        source: std::io::Error,
    },
    #[error("streaming session: {source}")]
    WebSocket {
        #[source]
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    #[error("the runtime reported: {message}")]
    Remote { message: String },
}

/// What a process's session delivered: its exit code, as the streaming server reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitCode(pub i32);

/// TLS for an `https://` streaming URL: the server to trust and, for kubelet's API, the
/// client certificate to present.
pub type TlsConnector = tokio_rustls::TlsConnector;

/// What a session's WebSocket runs over: plain TCP (the runtime's streaming server) or TLS
/// (kubelet's API).
trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

/// An open streaming session: binary WebSocket messages, each a channel byte and its
/// payload.
pub struct Session {
    socket: WebSocketStream<Box<dyn Transport>>,
    protocol: Option<String>,
}

/// Opens a session on `url` (`http://` or `https://`), offering the subprotocols
/// `protocols` (comma-separated, best first). An `https://` URL needs `tls`.
pub async fn connect(
    url: &str,
    protocols: &str,
    tls: Option<&TlsConnector>,
) -> Result<Session, StreamError> {
    let url_error = |reason: String| StreamError::Url {
        url: url.to_owned(),
        reason,
    };
    let ws_url = websocket_url(url)?;
    let mut request = ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| url_error(e.to_string()))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(protocols).map_err(|e| url_error(e.to_string()))?,
    );
    let secure = ws_url.starts_with("wss://");
    let host = request
        .uri()
        .host()
        .ok_or_else(|| url_error("no host".to_owned()))?
        // An IPv6 address comes in brackets.
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = request
        .uri()
        .port_u16()
        .unwrap_or(if secure { 443 } else { 80 });
    let dial_error = |source| StreamError::Dial {
        url: url.to_owned(),
        source,
    };
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(dial_error)?;
    // Interactive sessions send a keystroke at a time: no waiting to fill a segment.
    tcp.set_nodelay(true).map_err(dial_error)?;
    let transport: Box<dyn Transport> = if secure {
        let tls =
            tls.ok_or_else(|| url_error("an https:// URL needs a TLS configuration".to_owned()))?;
        let name = ServerName::try_from(host).map_err(|e| url_error(e.to_string()))?;
        Box::new(tls.connect(name, tcp).await.map_err(dial_error)?)
    } else {
        Box::new(tcp)
    };
    let (socket, response) = tokio_tungstenite::client_async(request, transport)
        .await
        .map_err(|e| StreamError::Connect {
            url: url.to_owned(),
            source: Box::new(e),
        })?;
    let protocol = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|p| p.to_str().ok())
        .map(str::to_owned);
    Ok(Session { socket, protocol })
}

impl Session {
    /// The subprotocol the server chose, if it named one.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// Sends `payload` on `channel`.
    pub async fn send(&mut self, channel: u8, payload: &[u8]) -> Result<(), StreamError> {
        let mut frame = Vec::with_capacity(payload.len() + 1);
        frame.push(channel);
        frame.extend_from_slice(payload);
        self.socket
            .send(Message::binary(frame))
            .await
            .map_err(websocket_error)
    }

    /// The next message: its channel and payload; `None` once the server has closed the
    /// session. Cancel-safe: a message is either returned or left for the next call.
    pub async fn recv(&mut self) -> Result<Option<(u8, Bytes)>, StreamError> {
        loop {
            let data = match self.socket.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Err(e)) => return Err(websocket_error(e)),
                Some(Ok(Message::Binary(data))) => data,
                Some(Ok(_)) => continue,
            };
            if let Some(&channel) = data.first() {
                return Ok(Some((channel, data.slice(1..))));
            }
        }
    }

    /// Ends the session from this side (a WebSocket Close), without waiting for the
    /// server's answer.
    pub async fn close(mut self) -> Result<(), StreamError> {
        self.socket.close(None).await.map_err(websocket_error)
    }
}

fn websocket_error(e: tokio_tungstenite::tungstenite::Error) -> StreamError {
    StreamError::WebSocket {
        source: Box::new(e),
    }
}

/// Connects to a streaming URL and pumps stdin/stdout/stderr until the remote process ends.
/// `stdin` is `None` when the session was created without stdin. Returns the exit code
/// carried on the error channel (0 when the server closes without a status).
pub async fn stream<I, O, E>(
    url: &str,
    stdin: Option<I>,
    mut stdout: O,
    mut stderr: E,
    mut resize: Option<mpsc::Receiver<TerminalSize>>,
) -> Result<ExitCode, StreamError>
where
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
    E: AsyncWrite + Unpin,
{
    let mut session = connect(url, EXEC_PROTOCOLS, None).await?;
    let v5 = session.protocol() == Some(PROTOCOL_V5);
    let io_err = |source| StreamError::Io { source };

    let mut stdin = stdin;
    let mut buf = vec![0u8; 32 * 1024];
    let mut status: Option<Vec<u8>> = None;
    loop {
        tokio::select! {
            message = session.recv() => {
                let Some((channel, payload)) = message? else { break };
                match channel {
                    STDOUT if !payload.is_empty() => {
                        stdout.write_all(&payload).await.map_err(io_err)?;
                        stdout.flush().await.map_err(io_err)?;
                    }
                    STDERR if !payload.is_empty() => {
                        stderr.write_all(&payload).await.map_err(io_err)?;
                        stderr.flush().await.map_err(io_err)?;
                    }
                    ERROR if !payload.is_empty() => {
                        status.get_or_insert_with(Vec::new).extend_from_slice(&payload);
                    }
                    _ => {}
                }
            }
            read = async { stdin.as_mut()?.read(&mut buf).await.ok() }, if stdin.is_some() => {
                match read {
                    Some(n) if n > 0 => session.send(STDIN, &buf[..n]).await?,
                    _ => {
                        stdin = None;
                        if v5 {
                            session.send(CLOSE, &[STDIN]).await?;
                        }
                    }
                }
            }
            size = async { resize.as_mut()?.recv().await }, if resize.is_some() => {
                match size {
                    Some(size) => {
                        // Serializing two integers cannot fail.
                        let json = serde_json::to_vec(&size).unwrap_or_default();
                        session.send(RESIZE, &json).await?;
                    }
                    None => resize = None,
                }
            }
        }
    }
    match status {
        None => Ok(ExitCode(0)),
        Some(json) => exit_code_from_status(&json),
    }
}

fn websocket_url(url: &str) -> Result<String, StreamError> {
    let rest = url
        .strip_prefix("http://")
        .map(|r| ("ws://", r))
        .or_else(|| url.strip_prefix("https://").map(|r| ("wss://", r)));
    match rest {
        Some((scheme, rest)) => Ok(format!("{scheme}{rest}")),
        None => Err(StreamError::Url {
            url: url.to_owned(),
            reason: "expected an http:// or https:// URL".to_owned(),
        }),
    }
}

#[derive(Deserialize)]
struct Status {
    #[serde(default)]
    status: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    details: Option<StatusDetails>,
}

#[derive(Deserialize)]
struct StatusDetails {
    #[serde(default)]
    causes: Vec<StatusCause>,
}

#[derive(Deserialize)]
struct StatusCause {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    message: String,
}

/// Reads the `metav1.Status` the server sends on the error channel when the process ends.
fn exit_code_from_status(json: &[u8]) -> Result<ExitCode, StreamError> {
    let status: Status = serde_json::from_slice(json).map_err(|_| StreamError::Remote {
        message: String::from_utf8_lossy(json).into_owned(),
    })?;
    if status.status == "Success" {
        return Ok(ExitCode(0));
    }
    if status.reason == "NonZeroExitCode" {
        let code = status
            .details
            .iter()
            .flat_map(|d| &d.causes)
            .find(|c| c.reason == "ExitCode")
            .and_then(|c| c.message.parse().ok());
        if let Some(code) = code {
            return Ok(ExitCode(code));
        }
    }
    Err(StreamError::Remote {
        message: status.message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_gives_exit_codes() {
        let ok = br#"{"metadata":{},"status":"Success"}"#;
        assert_eq!(exit_code_from_status(ok).unwrap(), ExitCode(0));
        let failed = br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
        assert_eq!(exit_code_from_status(failed).unwrap(), ExitCode(3));
        let broken = br#"{"status":"Failure","message":"container not running"}"#;
        let err = exit_code_from_status(broken).unwrap_err();
        assert!(err.to_string().contains("container not running"));
    }

    #[test]
    fn urls_become_websocket_urls() {
        assert_eq!(
            websocket_url("http://127.0.0.1:3456/exec/abc").unwrap(),
            "ws://127.0.0.1:3456/exec/abc"
        );
        assert!(websocket_url("ftp://x").is_err());
    }

    #[test]
    fn resize_frames_use_kubernetes_field_names() {
        let json = serde_json::to_string(&TerminalSize {
            width: 80,
            height: 24,
        })
        .unwrap();
        assert_eq!(json, r#"{"Width":80,"Height":24}"#);
    }
}
