//! Service account tokens against the in-process fake API server: the TokenRequest made.

use serde_json::json;
use tokio::sync::mpsc::unbounded_channel;

use super::TokenManager;
use crate::cluster::fake_api::FakeApi;
use crate::store::{TokenKey, TokenLookup};

#[tokio::test]
async fn a_token_is_requested_bound_to_its_pod() {
    let fake = FakeApi::new();
    let (ready, mut woken) = unbounded_channel();
    let tokens = TokenManager::new(fake.client(), ready);
    let key = TokenKey {
        namespace: "default".into(),
        service_account: "builder".into(),
        audience: "vault".into(),
        expiration_seconds: 3600,
        pod_name: "web".into(),
        pod_uid: "uid-web".into(),
    };
    assert_eq!(tokens.get(&key), TokenLookup::Pending);
    assert_eq!(woken.recv().await.as_deref(), Some("uid-web"));
    assert_eq!(tokens.get(&key), TokenLookup::Token("fake-token".into()));

    let asked = fake.requests();
    assert_eq!(asked.len(), 1, "served from the cache after");
    let path = "/api/v1/namespaces/default/serviceaccounts/builder/token";
    assert!(asked[0].is("POST", path), "{asked:?}");
    let spec = &asked[0].body["spec"];
    assert_eq!(spec["audiences"], json!(["vault"]));
    assert_eq!(spec["expirationSeconds"], 3600);
    assert_eq!(
        spec["boundObjectRef"],
        json!({"apiVersion": "v1", "kind": "Pod", "name": "web", "uid": "uid-web"})
    );
}
