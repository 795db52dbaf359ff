//! The HTTP GET of httpGet probes and hooks, built and sent as kubelet does: HTTP/1.1 without
//! keep-alive, HTTPS without certificate verification, redirects followed only to the same
//! host, at most 10 KiB of the body read.

use std::io;
use std::sync::{Arc, OnceLock};

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::HTTPGetAction;
use tokio_rustls::rustls;

use super::net::{self, ConnectError};

/// How much of a response body is read; the rest is never received.
pub(super) const MAX_BODY: usize = 10 * 1024;
/// How many requests one GET may take, the first one included, as Go's HTTP client allows.
const MAX_REQUESTS: usize = 10;

/// Why an HTTP GET got no response. All of these are conditions of the container's server or
/// of the spec, not of bosun: a probe counts them as failures and tries again next period.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("unsupported protocol scheme {scheme:?}")]
    Scheme { scheme: String },
    #[error("invalid HTTP header {name:?}")]
    Header { name: String },
    #[error("invalid HTTP path {path:?}")]
    Path { path: String },
    #[error("Get {url:?}: {source}")]
    Connect {
        url: String,
        #[source]
        source: ConnectError,
    },
    #[error("Get {url:?}: TLS handshake: {source}")]
    Tls {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error("Get {url:?}: {source}")]
    Exchange {
        url: String,
        #[source]
        source: hyper::Error,
    },
    #[error("Get {url:?}: invalid redirect to {location:?}")]
    Redirect { url: String, location: String },
    #[error("Get {url:?}: stopped after {MAX_REQUESTS} redirects")]
    TooManyRedirects { url: String },
}

impl HttpError {
    /// Whether a server answered a TLS handshake in plain HTTP: a container serving HTTP on a
    /// hook declared as HTTPS, which kubelet then retries over HTTP.
    pub(super) fn is_http_answer_to_https(&self) -> bool {
        let HttpError::Tls { source, .. } = self else {
            return false;
        };
        // The first byte of "HTTP/1.1 ..." is not a TLS record type.
        matches!(
            source
                .get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>()),
            Some(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            ))
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    fn parse(scheme: &str) -> Option<Self> {
        if scheme.eq_ignore_ascii_case("http") {
            Some(Scheme::Http)
        } else if scheme.eq_ignore_ascii_case("https") {
            Some(Scheme::Https)
        } else {
            None
        }
    }
}

/// The part of a response a probe or hook looks at.
#[derive(Debug)]
pub(super) struct HttpResponse {
    pub status: StatusCode,
    location: Option<String>,
    /// At most [`MAX_BODY`] bytes.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// Where a redirect points, for the codes Go's client follows.
    fn redirect(&self) -> Option<&str> {
        match self.status.as_u16() {
            301 | 302 | 303 | 307 | 308 => self.location.as_deref(),
            _ => None,
        }
    }
}

/// One GET, ready to send.
#[derive(Debug, Clone)]
pub(super) struct HttpGet {
    pub(super) scheme: Scheme,
    /// Without brackets, also for IPv6.
    host: String,
    port: u16,
    path: PathAndQuery,
    /// A `Host` given in `httpHeaders`, which replaces `host:port` in the Host header.
    host_header: Option<HeaderValue>,
    headers: HeaderMap,
}

impl HttpGet {
    /// The request kubelet builds for `action`, sent to `host:port` (both already resolved
    /// from the action and the pod) with `User-Agent: kube-{agent}/1.34` unless the action
    /// sets one.
    pub(super) fn new(
        action: &HTTPGetAction,
        host: &str,
        port: u16,
        agent: &str,
    ) -> Result<Self, HttpError> {
        let scheme = match action.scheme.as_deref().filter(|s| !s.is_empty()) {
            None => Scheme::Http,
            Some(s) => Scheme::parse(s).ok_or_else(|| HttpError::Scheme {
                scheme: s.to_owned(),
            })?,
        };
        let raw_path = action.path.as_deref().unwrap_or_default();
        let path = origin_form(raw_path).ok_or_else(|| HttpError::Path {
            path: raw_path.to_owned(),
        })?;

        let mut headers = HeaderMap::new();
        let mut host_header = None;
        for h in action.http_headers.iter().flatten() {
            let invalid = || HttpError::Header {
                name: h.name.clone(),
            };
            let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| invalid())?;
            let value = HeaderValue::from_str(&h.value).map_err(|_| invalid())?;
            if name == header::HOST {
                // Go's client takes the first Host and never sends the header itself.
                if host_header.is_none() {
                    host_header = Some(value);
                }
            } else {
                headers.append(name, value);
            }
        }
        // An empty Host falls back to the URL's, as in Go.
        host_header = host_header.filter(|h| !h.is_empty());
        if !headers.contains_key(header::USER_AGENT) {
            let agent = format!("kube-{agent}/{}", super::KUBE_VERSION);
            headers.insert(
                header::USER_AGENT,
                HeaderValue::from_str(&agent).map_err(|_| HttpError::Header {
                    name: "User-Agent".to_owned(),
                })?,
            );
        }
        match headers.get(header::ACCEPT) {
            None => {
                headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
            }
            // An empty Accept is kubelet's way to send none at all.
            Some(v) if v.is_empty() => {
                headers.remove(header::ACCEPT);
            }
            Some(_) => {}
        }
        // kubelet's client disables keep-alive: one connection per probe, closed after it.
        headers
            .entry(header::CONNECTION)
            .or_insert(HeaderValue::from_static("close"));

        Ok(HttpGet {
            scheme,
            host: host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host)
                .to_owned(),
            port,
            path,
            host_header,
            headers,
        })
    }

    pub(super) fn url(&self) -> String {
        format!(
            "{}://{}{}",
            self.scheme.as_str(),
            join_host_port(&self.host, self.port),
            self.path
        )
    }

    /// The same request in plain HTTP, as kubelet retries a hook whose HTTPS request got an
    /// HTTP answer; credentials meant for TLS are not sent in the clear.
    pub(super) fn over_plain_http(&self) -> Self {
        let mut plain = self.clone();
        plain.scheme = Scheme::Http;
        plain.headers.remove(header::AUTHORIZATION);
        plain
    }

    /// Sends the request and follows redirects to the same host name (any port or scheme);
    /// a redirect to another host is not followed, and its 3xx is the response.
    pub(super) async fn send(&self) -> Result<HttpResponse, HttpError> {
        let mut current = self.clone();
        let mut requests = 1;
        loop {
            let response = current.send_once().await?;
            let Some(location) = response.redirect() else {
                return Ok(response);
            };
            let next = current
                .redirected(location)
                .ok_or_else(|| HttpError::Redirect {
                    url: current.url(),
                    location: location.to_owned(),
                })?;
            if !next.host.eq_ignore_ascii_case(&self.host) {
                return Ok(response);
            }
            if requests >= MAX_REQUESTS {
                return Err(HttpError::TooManyRedirects { url: next.url() });
            }
            requests += 1;
            current = next;
        }
    }

    async fn send_once(&self) -> Result<HttpResponse, HttpError> {
        let url = self.url();
        let stream = net::connect(&self.host, self.port)
            .await
            .map_err(|source| HttpError::Connect {
                url: url.clone(),
                source,
            })?;
        let request = self.request();
        let response = match self.scheme {
            Scheme::Http => exchange(TokioIo::new(stream), request).await,
            Scheme::Https => {
                let tls_error = |source| HttpError::Tls {
                    url: url.clone(),
                    source,
                };
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| tls_error(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
                let stream = tls_connector()
                    .map_err(|e| tls_error(io::Error::other(e)))?
                    .connect(name, stream)
                    .await
                    .map_err(tls_error)?;
                exchange(TokioIo::new(stream), request).await
            }
        };
        response.map_err(|source| HttpError::Exchange { url, source })
    }

    fn request(&self) -> Request<Empty<Bytes>> {
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = Uri::from(self.path.clone());
        *request.headers_mut() = self.headers.clone();
        let host = self
            .host_header
            .clone()
            .or_else(|| HeaderValue::from_str(&join_host_port(&self.host, self.port)).ok());
        if let Some(host) = host {
            request.headers_mut().insert(header::HOST, host);
        }
        request
    }

    /// The request a redirect to `location` makes, resolved against this one.
    fn redirected(&self, location: &str) -> Option<HttpGet> {
        // A fragment is never sent.
        let location = location.split('#').next().unwrap_or_default();
        let mut next = self.clone();
        let absolute = if location.starts_with("//") {
            Some(format!("{}:{location}", self.scheme.as_str()))
        } else if has_scheme(location) {
            // Go keeps a custom Host only across a relative redirect.
            next.host_header = None;
            Some(location.to_owned())
        } else {
            None
        };
        match absolute {
            Some(url) => {
                let uri: Uri = url.parse().ok()?;
                next.scheme = Scheme::parse(uri.scheme_str()?)?;
                let host = uri.host()?;
                next.host = host
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(host)
                    .to_owned();
                next.port = uri.port_u16().unwrap_or(next.scheme.default_port());
                next.path = origin_form(uri.path_and_query().map_or("/", |p| p.as_str()))?;
            }
            None => {
                let current = self.path.path();
                let joined = if location.is_empty() {
                    self.path.as_str().to_owned()
                } else if location.starts_with('/') {
                    location.to_owned()
                } else if location.starts_with('?') {
                    format!("{current}{location}")
                } else {
                    let directory = &current[..current.rfind('/').map_or(0, |i| i + 1)];
                    format!("{directory}{location}")
                };
                next.path = origin_form(&joined)?;
            }
        }
        Some(next)
    }
}

/// `host:port`, with an IPv6 host in brackets.
pub(super) fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A path (and query) as sent on the request line: starting with `/`, without a fragment,
/// dot segments resolved, and bytes a URI may not hold percent-encoded.
fn origin_form(raw: &str) -> Option<PathAndQuery> {
    let raw = raw.split('#').next().unwrap_or_default();
    let (path, query) = match raw.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (raw, None),
    };
    let mut out = remove_dot_segments(&format!("/{}", path.trim_start_matches('/')));
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    let mut escaped = String::with_capacity(out.len());
    for b in out.bytes() {
        if b <= b' ' || b >= 0x7f || b"\"<>\\^`{|}".contains(&b) {
            escaped.push_str(&format!("%{b:02X}"));
        } else {
            escaped.push(char::from(b));
        }
    }
    PathAndQuery::try_from(escaped).ok()
}

/// RFC 3986's removal of `.` and `..` segments from an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let segments: Vec<&str> = path.split('/').collect();
    // The first segment is the empty one before the leading slash; `..` never pops it.
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match *segment {
            "." | ".." => {
                if *segment == ".." && out.len() > 1 {
                    out.pop();
                }
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    out.join("/")
}

/// Whether a URI reference starts with `scheme:` (RFC 3986: a letter, then letters, digits,
/// `+`, `-` or `.`).
fn has_scheme(reference: &str) -> bool {
    let Some((scheme, _)) = reference.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
}

/// Sends `request` on a fresh connection and reads the response, at most [`MAX_BODY`] of
/// its body.
async fn exchange<IO>(io: IO, request: Request<Empty<Bytes>>) -> Result<HttpResponse, hyper::Error>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    let exchange = async move {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(str::to_owned);
        let mut body = response.into_body();
        let mut data = Vec::new();
        while data.len() < MAX_BODY {
            let Some(frame) = body.frame().await else {
                break;
            };
            if let Ok(chunk) = frame?.into_data() {
                data.extend_from_slice(&chunk);
            }
        }
        data.truncate(MAX_BODY);
        Ok(HttpResponse {
            status,
            location,
            body: data,
        })
    };
    // The connection is driven here rather than spawned, so that it ends (and its socket is
    // closed) when this GET ends, whether it completed or was cut off by a timeout.
    tokio::pin!(connection);
    tokio::select! {
        response = exchange => response,
        Err(e) = &mut connection => Err(e),
    }
}

/// TLS as kubelet's probes do it: any certificate is accepted, since a pod's certificate is
/// rarely issued for its IP and the probe only asks whether the server answers.
fn tls_connector() -> Result<tokio_rustls::TlsConnector, rustls::Error> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, rustls::Error>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
        .map(tokio_rustls::TlsConnector::from)
}

/// Accepts any certificate, but still checks that the server holds the key of the one it
/// showed, as Go's `InsecureSkipVerify` does.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> HttpGet {
        let action = HTTPGetAction {
            path: Some(path.to_owned()),
            ..Default::default()
        };
        HttpGet::new(&action, "10.0.0.1", 8080, "probe").expect("valid request")
    }

    #[test]
    fn paths_are_sent_in_origin_form() {
        for (given, sent) in [
            ("", "/"),
            ("healthz", "/healthz"),
            ("/a/b?x=1#frag", "/a/b?x=1"),
            ("/a/./b/../c", "/a/c"),
            ("/../..", "/"),
            ("/with space", "/with%20space"),
        ] {
            assert_eq!(get(given).path.as_str(), sent, "{given:?}");
        }
        assert_eq!(get("/x").url(), "http://10.0.0.1:8080/x");
    }

    #[test]
    fn redirects_resolve_against_the_current_url() {
        let base = get("/a/b?q=1");
        let cases = [
            ("/c", "http://10.0.0.1:8080/c"),
            ("c", "http://10.0.0.1:8080/a/c"),
            ("../c", "http://10.0.0.1:8080/c"),
            ("?r=2", "http://10.0.0.1:8080/a/b?r=2"),
            ("https://10.0.0.1/x", "https://10.0.0.1:443/x"),
            ("//other:81/y#f", "http://other:81/y"),
            ("http://[::1]:90", "http://[::1]:90/"),
        ];
        for (location, url) in cases {
            let next = base.redirected(location).expect("resolvable");
            assert_eq!(next.url(), url, "{location:?}");
        }
        assert!(base.redirected("ftp://10.0.0.1/").is_none());
    }

    #[test]
    fn only_a_relative_redirect_keeps_a_custom_host() {
        let action = HTTPGetAction {
            http_headers: Some(vec![k8s_openapi::api::core::v1::HTTPHeader {
                name: "Host".to_owned(),
                value: "example.com".to_owned(),
            }]),
            ..Default::default()
        };
        let base = HttpGet::new(&action, "10.0.0.1", 80, "probe").expect("valid request");
        assert!(base.redirected("/x").and_then(|r| r.host_header).is_some());
        assert!(base
            .redirected("http://10.0.0.1/x")
            .and_then(|r| r.host_header)
            .is_none());
    }

    #[test]
    fn ipv6_hosts_are_bracketed_once() {
        assert_eq!(join_host_port("fd00::1", 80), "[fd00::1]:80");
        assert_eq!(join_host_port("10.0.0.1", 80), "10.0.0.1:80");
        let action = HTTPGetAction::default();
        let get = HttpGet::new(&action, "[fd00::1]", 80, "probe").expect("valid request");
        assert_eq!(get.url(), "http://[fd00::1]:80/");
    }
}
