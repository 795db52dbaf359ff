//! Who may use the kubelet API, decided as kubelet decides it
//! (`authentication` and `authorization` of its configuration): a client certificate signed
//! by `x509.clientCAFile`, else a bearer token the API server vouches for (TokenReview), else
//! anonymous if allowed; then the user's request is authorized, by the API server
//! (SubjectAccessReview, `Webhook`) or always (`AlwaysAllow`). Nothing is served before both
//! have said yes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::Method;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use tokio::time::Instant;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, UnixTime};
use tokio_rustls::rustls::server::danger::ClientCertVerifier;

/// The user a request is made as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

const ANONYMOUS: &str = "system:anonymous";
const UNAUTHENTICATED: &str = "system:unauthenticated";
const AUTHENTICATED: &str = "system:authenticated";

impl User {
    fn anonymous() -> Self {
        User {
            name: ANONYMOUS.to_owned(),
            uid: String::new(),
            groups: vec![UNAUTHENTICATED.to_owned()],
            extra: BTreeMap::new(),
        }
    }

    /// Every user an authenticator vouched for is also in `system:authenticated`.
    fn authenticated(mut self) -> Self {
        if !self.groups.iter().any(|g| g == AUTHENTICATED) {
            self.groups.push(AUTHENTICATED.to_owned());
        }
        self
    }
}

/// Why a request could not be decided; answered with 500 (kubelet's "Authorization error").
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("TokenReview: {0}")]
    TokenReview(#[source] kube::Error),
    #[error("SubjectAccessReview: {0}")]
    SubjectAccessReview(#[source] kube::Error),
}

/// kubelet's `authentication` settings.
#[derive(Clone, Debug)]
pub struct AuthenticationConfig {
    /// `anonymous.enabled`.
    pub anonymous: bool,
    /// `webhook.enabled`: bearer tokens are checked with TokenReview.
    pub webhook: bool,
    /// `webhook.cacheTTL`.
    pub webhook_cache_ttl: Duration,
}

impl Default for AuthenticationConfig {
    /// The defaults of kubelet's configuration file (KubeletConfiguration v1beta1).
    fn default() -> Self {
        AuthenticationConfig {
            anonymous: false,
            webhook: true,
            webhook_cache_ttl: Duration::from_secs(120),
        }
    }
}

/// kubelet's `authorization.mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthorizationMode {
    AlwaysAllow,
    Webhook,
}

/// kubelet's `authorization` settings.
#[derive(Clone, Debug)]
pub struct AuthorizationConfig {
    pub mode: AuthorizationMode,
    /// `webhook.cacheAuthorizedTTL`.
    pub authorized_ttl: Duration,
    /// `webhook.cacheUnauthorizedTTL`.
    pub unauthorized_ttl: Duration,
}

impl Default for AuthorizationConfig {
    fn default() -> Self {
        AuthorizationConfig {
            mode: AuthorizationMode::Webhook,
            authorized_ttl: Duration::from_secs(300),
            unauthorized_ttl: Duration::from_secs(30),
        }
    }
}

/// At most this many cached decisions of each kind; when full, expired ones are dropped, and
/// if none had expired, all.
const CACHE_ENTRIES: usize = 4096;

/// A cache of answers that expire.
struct Cache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> Cache<K, V> {
    fn new() -> Self {
        Cache {
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(value, _)| value.clone())
    }

    fn put(&self, key: K, value: V, ttl: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if entries.len() >= CACHE_ENTRIES {
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= CACHE_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, (value, now + ttl));
    }
}

/// Tells who made a request.
pub struct Authenticator {
    /// Checks client certificates against `x509.clientCAFile`; `None`: certificates are not
    /// an identity.
    client_ca: Option<Arc<dyn ClientCertVerifier>>,
    /// Reviews bearer tokens; `None` without `webhook.enabled` or an API server.
    tokens: Option<kube::Client>,
    config: AuthenticationConfig,
    reviewed: Cache<String, Option<User>>,
}

impl Authenticator {
    pub fn new(
        config: AuthenticationConfig,
        client_ca: Option<Arc<dyn ClientCertVerifier>>,
        api: Option<kube::Client>,
    ) -> Self {
        Authenticator {
            client_ca,
            tokens: api.filter(|_| config.webhook),
            config,
            reviewed: Cache::new(),
        }
    }

    /// The user of a request with the client certificate chain `certificates` (leaf first)
    /// and the `Authorization` header `authorization`; `None`: unauthenticated (401).
    pub async fn authenticate(
        &self,
        certificates: Option<&[CertificateDer<'static>]>,
        authorization: Option<&str>,
    ) -> Result<Option<User>, AuthError> {
        if let Some(user) = self.certificate_user(certificates) {
            return Ok(Some(user));
        }
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        if let (Some(token), Some(api)) = (token, &self.tokens) {
            if let Some(user) = self.review_token(api, token).await? {
                return Ok(Some(user));
            }
        }
        Ok(self.config.anonymous.then(User::anonymous))
    }

    /// The user a verified client certificate names: its common name, and its organizations
    /// as groups (as the API server's x509 authenticator reads them).
    fn certificate_user(&self, certificates: Option<&[CertificateDer<'static>]>) -> Option<User> {
        let verifier = self.client_ca.as_ref()?;
        let (leaf, intermediates) = certificates?.split_first()?;
        if let Err(e) = verifier.verify_client_cert(leaf, intermediates, UnixTime::now()) {
            tracing::debug!(error = %e, "client certificate not accepted");
            return None;
        }
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
        let subject = parsed.subject();
        let name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .filter(|cn| !cn.is_empty())?
            .to_owned();
        let groups = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok())
            .map(str::to_owned)
            .collect();
        Some(
            User {
                name,
                uid: String::new(),
                groups,
                extra: BTreeMap::new(),
            }
            .authenticated(),
        )
    }

    async fn review_token(
        &self,
        api: &kube::Client,
        token: &str,
    ) -> Result<Option<User>, AuthError> {
        if let Some(known) = self.reviewed.get(&token.to_owned()) {
            return Ok(known);
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let reviewed = kube::Api::<TokenReview>::all(api.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(AuthError::TokenReview)?;
        let user = reviewed
            .status
            .filter(|s| s.authenticated == Some(true))
            .and_then(|s| s.user)
            .and_then(|u| {
                Some(
                    User {
                        name: u.username.filter(|n| !n.is_empty())?,
                        uid: u.uid.unwrap_or_default(),
                        groups: u.groups.unwrap_or_default(),
                        extra: u.extra.unwrap_or_default().into_iter().collect(),
                    }
                    .authenticated(),
                )
            });
        self.reviewed.put(
            token.to_owned(),
            user.clone(),
            self.config.webhook_cache_ttl,
        );
        Ok(user)
    }
}

/// What a request asks of the node, in the terms of the API server's authorizers: always
/// `nodes/<subresource>` of this node, with a verb from the HTTP method.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Attributes {
    pub verb: &'static str,
    pub subresource: &'static str,
}

impl Attributes {
    /// kubelet's mapping: the method gives the verb, the path's first segment the
    /// subresource (`/stats/*` → `stats`, `/metrics/*` → `metrics`, `/logs/*` → `log`,
    /// `/spec/*` → `spec`, `/checkpoint/*` → `checkpoint`, everything else → `proxy`).
    pub fn of(method: &Method, path: &str) -> Self {
        let verb = match *method {
            Method::POST => "create",
            Method::GET | Method::HEAD => "get",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "",
        };
        let under = |prefix: &str| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        let subresource = if under("/stats") {
            "stats"
        } else if under("/metrics") {
            "metrics"
        } else if path.starts_with("/logs/") {
            "log"
        } else if path.starts_with("/spec/") {
            "spec"
        } else if path.starts_with("/checkpoint/") {
            "checkpoint"
        } else {
            "proxy"
        };
        Attributes { verb, subresource }
    }
}

/// A decision: allowed, or denied with the API server's reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
}

/// Decides whether a user may make a request of this node.
pub struct Authorizer {
    mode: AuthorizationMode,
    node: String,
    api: Option<kube::Client>,
    config: AuthorizationConfig,
    decided: Cache<(String, String, Vec<String>, Attributes), Decision>,
}

impl Authorizer {
    /// `api` is needed for `Webhook`; without it every request is denied with a reason that
    /// says so.
    pub fn new(config: AuthorizationConfig, node: String, api: Option<kube::Client>) -> Self {
        Authorizer {
            mode: config.mode,
            node,
            api,
            config,
            decided: Cache::new(),
        }
    }

    pub async fn authorize(
        &self,
        user: &User,
        attributes: &Attributes,
    ) -> Result<Decision, AuthError> {
        if self.mode == AuthorizationMode::AlwaysAllow {
            return Ok(Decision::Allow);
        }
        let Some(api) = &self.api else {
            return Ok(Decision::Deny(
                "Webhook authorization needs an API server".to_owned(),
            ));
        };
        let key = (
            user.name.clone(),
            user.uid.clone(),
            user.groups.clone(),
            attributes.clone(),
        );
        if let Some(known) = self.decided.get(&key) {
            return Ok(known);
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                uid: Some(user.uid.clone()).filter(|u| !u.is_empty()),
                groups: Some(user.groups.clone()),
                extra: Some(user.extra.clone()).filter(|e| !e.is_empty()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(attributes.verb.to_owned()),
                    group: Some(String::new()),
                    version: Some("v1".to_owned()),
                    resource: Some("nodes".to_owned()),
                    subresource: Some(attributes.subresource.to_owned()),
                    name: Some(self.node.clone()),
                    namespace: Some(String::new()),
                    ..ResourceAttributes::default()
                }),
                non_resource_attributes: None,
            },
            ..SubjectAccessReview::default()
        };
        let reviewed = kube::Api::<SubjectAccessReview>::all(api.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(AuthError::SubjectAccessReview)?;
        let status = reviewed.status.unwrap_or_default();
        let (decision, ttl) = if status.allowed && status.denied != Some(true) {
            (Decision::Allow, self.config.authorized_ttl)
        } else {
            (
                Decision::Deny(status.reason.unwrap_or_default()),
                self.config.unauthorized_ttl,
            )
        };
        self.decided.put(key, decision.clone(), ttl);
        Ok(decision)
    }
}

/// The TLS layer asks for a client certificate, takes any (or none), and checks only that
/// the client holds the certificate's key; whether the certificate is an identity is the
/// [`Authenticator`]'s question, per request, so that one from another CA is answered with
/// 401 as kubelet answers it, not with a failed handshake.
#[derive(Debug)]
pub struct AnyClientCertificate {
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// The subjects of the client CA, offered to clients to choose a certificate.
    hints: Vec<rustls::DistinguishedName>,
}

impl AnyClientCertificate {
    pub fn new(
        provider: Arc<rustls::crypto::CryptoProvider>,
        hints: Vec<rustls::DistinguishedName>,
    ) -> Self {
        AnyClientCertificate { provider, hints }
    }
}

impl ClientCertVerifier for AnyClientCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_kubelets_subresources_and_methods_to_verbs() {
        let cases = [
            (Method::GET, "/stats/summary", "get", "stats"),
            (Method::GET, "/stats", "get", "stats"),
            (Method::GET, "/statsx", "get", "proxy"),
            (Method::GET, "/metrics", "get", "metrics"),
            (Method::GET, "/metrics/resource", "get", "metrics"),
            (Method::GET, "/metrics/cadvisor", "get", "metrics"),
            (Method::GET, "/logs/syslog", "get", "log"),
            (Method::GET, "/spec/", "get", "spec"),
            (Method::POST, "/checkpoint/ns/pod/c", "create", "checkpoint"),
            (Method::POST, "/exec/ns/pod/c", "create", "proxy"),
            (Method::GET, "/containerLogs/ns/pod/c", "get", "proxy"),
            (Method::HEAD, "/pods", "get", "proxy"),
            (Method::PUT, "/pods", "update", "proxy"),
            (Method::PATCH, "/pods", "patch", "proxy"),
            (Method::DELETE, "/pods", "delete", "proxy"),
        ];
        for (method, path, verb, subresource) in cases {
            assert_eq!(
                Attributes::of(&method, path),
                Attributes { verb, subresource },
                "{method} {path}"
            );
        }
    }

    #[tokio::test]
    async fn without_credentials_only_an_allowed_anonymous_gets_a_user() {
        let refuse = Authenticator::new(AuthenticationConfig::default(), None, None);
        assert_eq!(
            refuse.authenticate(None, None).await.expect("decided"),
            None
        );
        assert_eq!(
            refuse
                .authenticate(None, Some("Bearer abc"))
                .await
                .expect("decided"),
            None,
            "no API server to review the token"
        );
        let allow = Authenticator::new(
            AuthenticationConfig {
                anonymous: true,
                ..AuthenticationConfig::default()
            },
            None,
            None,
        );
        let user = allow
            .authenticate(None, None)
            .await
            .expect("decided")
            .expect("anonymous");
        assert_eq!(user.name, "system:anonymous");
        assert_eq!(user.groups, ["system:unauthenticated"]);
    }

    #[tokio::test(start_paused = true)]
    async fn cached_answers_expire() {
        let cache: Cache<&str, u32> = Cache::new();
        cache.put("a", 1, Duration::from_secs(30));
        assert_eq!(cache.get(&"a"), Some(1));
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(cache.get(&"a"), None);
    }

    #[tokio::test]
    async fn webhook_without_an_api_server_denies_and_always_allow_allows() {
        let user = User::anonymous();
        let attributes = Attributes::of(&Method::GET, "/pods");
        let webhook = Authorizer::new(AuthorizationConfig::default(), "node-a".into(), None);
        assert!(matches!(
            webhook
                .authorize(&user, &attributes)
                .await
                .expect("decided"),
            Decision::Deny(_)
        ));
        let always = Authorizer::new(
            AuthorizationConfig {
                mode: AuthorizationMode::AlwaysAllow,
                ..AuthorizationConfig::default()
            },
            "node-a".into(),
            None,
        );
        assert_eq!(
            always.authorize(&user, &attributes).await.expect("decided"),
            Decision::Allow
        );
    }
}
