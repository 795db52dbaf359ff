//! Service account tokens for projected `serviceAccountToken` volumes (kubelet's token
//! manager, `pkg/kubelet/token`): each is asked of the API server with a TokenRequest
//! (`POST …/serviceaccounts/NAME/token`) bound to its pod, which is all the Node authorizer
//! and the NodeRestriction admission plugin let a node ask for, and cached per
//! [`TokenKey`]. A token is requested anew once 80 % of its lifetime or 24 hours have
//! passed, while the old one is still handed out; a pod that has none waits without an
//! error.
//!
//! Requests run in the background: a lookup never waits for the API server. When one ends,
//! the pod's UID is sent on the `ready` channel so that its worker writes the new token (or
//! reports the failure) at once rather than at its next resync.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;
use kube::Api;
use tokio::sync::mpsc::UnboundedSender;

use super::ClusterError;
use crate::store::{TokenKey, TokenLookup};

/// A token is requested anew once it is this old, whatever its lifetime (kubelet's
/// `maxTTL`).
const MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// The first wait before a failed request is made again; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(120);

/// Why no token came back. Every one is retried with back-off.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Api(#[from] ClusterError),
    /// The API server answered without a token or its lifetime.
    #[error("{call}: the answer has no {missing}")]
    Incomplete { call: String, missing: &'static str },
}

/// A token as the API server issued it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    pub token: Arc<str>,
    pub expires: SystemTime,
    /// The lifetime the API server granted (`spec.expirationSeconds` of its answer), which
    /// may be longer than asked.
    pub lifetime: Duration,
}

impl Issued {
    /// Whether it is time to ask for a new one (kubelet's `requiresRefresh`, without its
    /// jitter of up to 10 s, which spreads the requests of many pods over time).
    fn needs_refresh(&self, now: SystemTime) -> bool {
        let issued = self
            .expires
            .checked_sub(self.lifetime)
            .unwrap_or(self.expires);
        now >= issued + MAX_AGE || now + self.lifetime / 5 >= self.expires
    }
}

type Request =
    Arc<dyn Fn(TokenKey) -> BoxFuture<'static, Result<Issued, TokenError>> + Send + Sync>;
type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

#[derive(Default)]
struct Entry {
    token: Option<Issued>,
    requesting: bool,
    /// The last request's error, until one succeeds.
    error: Option<String>,
    /// Requests failed in a row.
    failures: u32,
    /// When a failed request may be made again.
    retry_at: Option<SystemTime>,
}

struct Shared {
    request: Request,
    now: Clock,
    ready: UnboundedSender<String>,
    cache: Mutex<HashMap<TokenKey, Entry>>,
}

/// The tokens of this node's pods; see the module documentation. Clones share the cache.
#[derive(Clone)]
pub struct TokenManager {
    shared: Arc<Shared>,
}

impl TokenManager {
    /// Tokens from the API server of `client`; the UID of a pod whose request ended is sent
    /// on `ready`.
    pub fn new(client: kube::Client, ready: UnboundedSender<String>) -> Self {
        let request: Request = Arc::new(move |key| Box::pin(request(client.clone(), key)));
        TokenManager::with(request, Arc::new(SystemTime::now), ready)
    }

    fn with(request: Request, now: Clock, ready: UnboundedSender<String>) -> Self {
        TokenManager {
            shared: Arc::new(Shared {
                request,
                now,
                ready,
                cache: Mutex::default(),
            }),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<TokenKey, Entry>> {
        // Every write under the lock leaves the map consistent.
        self.shared
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The token of `key` if there is a valid one, starting a request when there is none
    /// or it is due for a refresh. Must be called within a Tokio runtime.
    pub fn get(&self, key: &TokenKey) -> TokenLookup {
        let now = (self.shared.now)();
        let mut cache = self.cache();
        let entry = cache.entry(key.clone()).or_default();
        let may_request = !entry.requesting && entry.retry_at.is_none_or(|at| now >= at);
        let valid = entry.token.clone().filter(|t| now < t.expires);
        let (answer, request) = match valid {
            Some(issued) => {
                let refresh = may_request && issued.needs_refresh(now);
                (TokenLookup::Token(issued.token), refresh)
            }
            None if may_request => (TokenLookup::Pending, true),
            None => match &entry.error {
                Some(error) if !entry.requesting => (TokenLookup::Failed(error.clone()), false),
                _ => (TokenLookup::Pending, false),
            },
        };
        if request {
            entry.requesting = true;
            tokio::spawn(self.clone().request(key.clone()));
        }
        answer
    }

    /// Forgets the tokens of the pod of UID `uid`, which is gone.
    pub fn forget_pod(&self, uid: &str) {
        self.cache().retain(|key, _| key.pod_uid != uid);
    }

    async fn request(self, key: TokenKey) {
        let result = (self.shared.request)(key.clone()).await;
        let now = (self.shared.now)();
        {
            let mut cache = self.cache();
            // A pod gone meanwhile has no use for the token.
            let Some(entry) = cache.get_mut(&key) else {
                return;
            };
            entry.requesting = false;
            match result {
                Ok(issued) => {
                    *entry = Entry {
                        token: Some(issued),
                        ..Entry::default()
                    };
                }
                Err(e) => {
                    tracing::warn!(namespace = %key.namespace, service_account = %key.service_account, pod = %key.pod_name, error = %e, "requesting a service account token; retrying");
                    let wait = FIRST_RETRY
                        .saturating_mul(1 << entry.failures.min(16))
                        .min(MAX_RETRY);
                    entry.failures += 1;
                    entry.retry_at = Some(now + wait);
                    entry.error = Some(e.to_string());
                }
            }
        }
        // The daemon may be shutting down, in which case no pod needs waking.
        let _ = self.shared.ready.send(key.pod_uid);
    }
}

/// Asks the API server for the token of `key`.
async fn request(client: kube::Client, key: TokenKey) -> Result<Issued, TokenError> {
    let call = format!(
        "TokenRequest for ServiceAccount {}/{}",
        key.namespace, key.service_account
    );
    let api: Api<ServiceAccount> = Api::namespaced(client, &key.namespace);
    let asked = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Some(key.audience.clone())
                .filter(|a| !a.is_empty())
                .into_iter()
                .collect(),
            expiration_seconds: Some(key.expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Pod".to_owned()),
                name: Some(key.pod_name.clone()),
                uid: Some(key.pod_uid.clone()),
            }),
        },
        ..TokenRequest::default()
    };
    let answer = api
        .create_token_request(&key.service_account, &PostParams::default(), &asked)
        .await
        .map_err(|source| ClusterError::Api {
            call: call.clone(),
            source,
        })?;
    let incomplete = |missing| TokenError::Incomplete {
        call: call.clone(),
        missing,
    };
    let status = answer.status.ok_or_else(|| incomplete("status"))?;
    if status.token.is_empty() {
        return Err(incomplete("token"));
    }
    let lifetime = answer
        .spec
        .expiration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .ok_or_else(|| incomplete("spec.expirationSeconds"))?;
    let expires = status.expiration_timestamp.0;
    let since_epoch = u64::try_from(expires.as_second())
        .map(|s| Duration::new(s, u32::try_from(expires.subsec_nanosecond()).unwrap_or(0)))
        .map_err(|_| incomplete("valid expirationTimestamp"))?;
    Ok(Issued {
        token: status.token.into(),
        expires: SystemTime::UNIX_EPOCH + since_epoch,
        lifetime: Duration::from_secs(lifetime),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::VecDeque;

    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    const HOUR: Duration = Duration::from_secs(3600);

    fn key(pod_uid: &str) -> TokenKey {
        TokenKey {
            namespace: "default".into(),
            service_account: "default".into(),
            audience: "api".into(),
            expiration_seconds: 3600,
            pod_name: "web".into(),
            pod_uid: pod_uid.into(),
        }
    }

    /// A manager whose API server answers from `answers` in turn, at a time the test sets.
    struct Fixture {
        tokens: TokenManager,
        now: Arc<Mutex<SystemTime>>,
        ready: UnboundedReceiver<String>,
        asked: Arc<Mutex<Vec<TokenKey>>>,
    }

    fn fixture(answers: Vec<Result<&'static str, ()>>) -> Fixture {
        let now = Arc::new(Mutex::new(SystemTime::UNIX_EPOCH + 1000 * HOUR));
        let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let clock = now.clone();
        let log = asked.clone();
        let request: Request = Arc::new(move |key: TokenKey| {
            log.lock().unwrap().push(key);
            let answer = answers.lock().unwrap().pop_front().expect("an answer left");
            let issued_at = *clock.lock().unwrap();
            Box::pin(async move {
                match answer {
                    Ok(token) => Ok(Issued {
                        token: token.into(),
                        expires: issued_at + HOUR,
                        lifetime: HOUR,
                    }),
                    Err(()) => Err(TokenError::Incomplete {
                        call: "TokenRequest".into(),
                        missing: "token",
                    }),
                }
            })
        });
        let clock = now.clone();
        let (ready_tx, ready) = unbounded_channel();
        Fixture {
            tokens: TokenManager::with(request, Arc::new(move || *clock.lock().unwrap()), ready_tx),
            now,
            ready,
            asked,
        }
    }

    impl Fixture {
        fn advance(&self, by: Duration) {
            *self.now.lock().unwrap() += by;
        }
    }

    #[test]
    fn a_token_is_refreshed_after_80_percent_of_its_lifetime_or_a_day() {
        let start = SystemTime::UNIX_EPOCH + 1000 * HOUR;
        let hour = Issued {
            token: "t".into(),
            expires: start + HOUR,
            lifetime: HOUR,
        };
        assert!(!hour.needs_refresh(start));
        assert!(!hour.needs_refresh(start + Duration::from_secs(2879)));
        assert!(hour.needs_refresh(start + Duration::from_secs(2880)));
        let year = Issued {
            token: "t".into(),
            expires: start + 365 * 24 * HOUR,
            lifetime: 365 * 24 * HOUR,
        };
        assert!(!year.needs_refresh(start + 23 * HOUR));
        assert!(year.needs_refresh(start + 24 * HOUR));
    }

    #[tokio::test]
    async fn a_token_is_pending_then_cached_then_refreshed_while_still_handed_out() {
        let mut f = fixture(vec![Ok("first"), Ok("second"), Ok("other")]);
        let key = key("uid-1");
        assert_eq!(f.tokens.get(&key), TokenLookup::Pending);
        assert_eq!(
            f.tokens.get(&key),
            TokenLookup::Pending,
            "one request at a time"
        );
        assert_eq!(f.ready.recv().await.as_deref(), Some("uid-1"));
        assert_eq!(f.tokens.get(&key), TokenLookup::Token("first".into()));
        assert_eq!(f.asked.lock().unwrap().len(), 1, "served from the cache");

        // Due for a refresh: the old token is still good while the new one comes.
        f.advance(Duration::from_secs(50 * 60));
        assert_eq!(f.tokens.get(&key), TokenLookup::Token("first".into()));
        assert_eq!(f.ready.recv().await.as_deref(), Some("uid-1"));
        assert_eq!(f.tokens.get(&key), TokenLookup::Token("second".into()));
        assert_eq!(f.asked.lock().unwrap().len(), 2);

        // Each key has its own token; a pod's tokens go with it.
        let other = TokenKey {
            audience: String::new(),
            ..key.clone()
        };
        assert_eq!(f.tokens.get(&other), TokenLookup::Pending);
        assert_eq!(f.ready.recv().await.as_deref(), Some("uid-1"));
        assert_eq!(f.tokens.get(&other), TokenLookup::Token("other".into()));
        assert_eq!(f.asked.lock().unwrap()[2].audience, "");
        assert_eq!(f.tokens.cache().len(), 2);
        f.tokens.forget_pod("uid-1");
        assert!(f.tokens.cache().is_empty());
    }

    #[tokio::test]
    async fn a_failed_request_is_reported_and_retried_with_back_off() {
        let mut f = fixture(vec![Err(()), Err(()), Ok("token")]);
        let key = key("uid-1");
        assert_eq!(f.tokens.get(&key), TokenLookup::Pending);
        f.ready.recv().await;
        let TokenLookup::Failed(message) = f.tokens.get(&key) else {
            panic!("the failure is reported");
        };
        assert!(message.contains("no token"), "{message}");
        // Not asked again before its back-off of 1 s, then again after 2 s.
        assert_eq!(f.asked.lock().unwrap().len(), 1);
        f.advance(Duration::from_secs(1));
        assert_eq!(f.tokens.get(&key), TokenLookup::Pending);
        f.ready.recv().await;
        f.advance(Duration::from_secs(1));
        assert!(matches!(f.tokens.get(&key), TokenLookup::Failed(_)));
        f.advance(Duration::from_secs(1));
        assert_eq!(f.tokens.get(&key), TokenLookup::Pending);
        f.ready.recv().await;
        assert_eq!(f.tokens.get(&key), TokenLookup::Token("token".into()));
        assert_eq!(f.asked.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn an_expired_token_is_not_handed_out() {
        let mut f = fixture(vec![Ok("first"), Err(())]);
        let key = key("uid-1");
        f.tokens.get(&key);
        f.ready.recv().await;
        f.advance(HOUR);
        assert_eq!(f.tokens.get(&key), TokenLookup::Pending);
        f.ready.recv().await;
        assert!(matches!(f.tokens.get(&key), TokenLookup::Failed(_)));
    }

    #[tokio::test]
    async fn a_token_of_a_pod_gone_meanwhile_is_dropped() {
        let mut f = fixture(vec![Ok("first")]);
        f.tokens.get(&key("uid-1"));
        f.tokens.forget_pod("uid-1");
        // The request ends with nothing to write it to; nobody is woken.
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert!(f.tokens.cache().is_empty());
        assert!(f.ready.try_recv().is_err());
    }
}

#[cfg(test)]
#[path = "tokens_tests.rs"]
mod tokens_tests;
