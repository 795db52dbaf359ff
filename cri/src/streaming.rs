//! The client side of CRI's streaming server (the URLs `Exec`, `Attach` return), over
//! WebSocket with Kubernetes' channel protocol: each binary message starts with a channel
//! byte (0 stdin, 1 stdout, 2 stderr, 3 error/status, 4 terminal resize).

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

/// Protocols we offer, best first. v5 can signal the end of stdin; v4 cannot (a
/// non-interactive command reading stdin then waits for more).
const PROTOCOLS: &str = "v5.channel.k8s.io, v4.channel.k8s.io";
const PROTOCOL_V5: &str = "v5.channel.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
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
    let ws_url = websocket_url(url)?;
    let mut request = ws_url
        .as_str()
        .into_client_request()
        .map_err(|e| StreamError::Url {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(PROTOCOLS),
    );
    let (socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| StreamError::Connect {
            url: url.to_owned(),
            source: Box::new(e),
        })?;
    let v5 = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .is_some_and(|p| p.as_bytes() == PROTOCOL_V5.as_bytes());
    let (mut sink, mut source) = socket.split();
    let ws_err = |e| StreamError::WebSocket {
        source: Box::new(e),
    };
    let io_err = |source| StreamError::Io { source };

    let mut stdin = stdin;
    let mut buf = vec![0u8; 32 * 1024];
    let mut status: Option<Vec<u8>> = None;
    loop {
        tokio::select! {
            message = source.next() => {
                let data = match message {
                    None => break,
                    Some(Err(e)) => return Err(ws_err(e)),
                    Some(Ok(Message::Binary(data))) => data.to_vec(),
                    Some(Ok(Message::Close(_))) => break,
                    Some(Ok(_)) => continue,
                };
                let Some((&channel, payload)) = data.split_first() else { continue };
                match channel {
                    STDOUT if !payload.is_empty() => {
                        stdout.write_all(payload).await.map_err(io_err)?;
                        stdout.flush().await.map_err(io_err)?;
                    }
                    STDERR if !payload.is_empty() => {
                        stderr.write_all(payload).await.map_err(io_err)?;
                        stderr.flush().await.map_err(io_err)?;
                    }
                    ERROR if !payload.is_empty() => {
                        status.get_or_insert_with(Vec::new).extend_from_slice(payload);
                    }
                    _ => {}
                }
            }
            read = async { stdin.as_mut()?.read(&mut buf).await.ok() }, if stdin.is_some() => {
                match read {
                    Some(n) if n > 0 => {
                        let mut frame = Vec::with_capacity(n + 1);
                        frame.push(STDIN);
                        frame.extend_from_slice(&buf[..n]);
                        sink.send(Message::binary(frame)).await.map_err(ws_err)?;
                    }
                    _ => {
                        stdin = None;
                        if v5 {
                            sink.send(Message::binary(vec![CLOSE, STDIN])).await.map_err(ws_err)?;
                        }
                    }
                }
            }
            size = async { resize.as_mut()?.recv().await }, if resize.is_some() => {
                match size {
                    Some(size) => {
                        let mut frame = vec![RESIZE];
                        // Serializing two integers cannot fail.
                        frame.extend(serde_json::to_vec(&size).unwrap_or_default());
                        sink.send(Message::binary(frame)).await.map_err(ws_err)?;
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
