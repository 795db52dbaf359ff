//! Referenced ConfigMaps against the in-process fake API server.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use tokio::sync::mpsc::unbounded_channel;

use super::ReferencedObjects;
use crate::cluster::fake_api::{pod, FakeApi};
use crate::cluster::tokens::TokenManager;
use crate::pod::references::RefKind;
use crate::store::{ObjectGetter, Objects, Subscription};

fn settings(value: &str) -> Value {
    json!({"metadata": {"name": "settings", "namespace": "default"}, "data": {"mode": value}})
}

/// `default/web`, which mounts the ConfigMap `settings`.
fn web() -> Pod {
    let mut web = pod("default", "web", "node-a");
    web["spec"]["volumes"] = json!([{"name": "config", "configMap": {"name": "settings"}}]);
    serde_json::from_value(web).expect("a pod")
}

async fn changed(changes: &mut Subscription) {
    tokio::time::timeout(Duration::from_secs(60), changes.changed())
        .await
        .expect("a change within a minute");
}

fn mode(referenced: &ReferencedObjects) -> Option<String> {
    let settings = referenced.config_map("default", "settings")?;
    settings.data.as_ref()?.get("mode").cloned()
}

#[tokio::test(start_paused = true)]
async fn a_referenced_config_map_is_watched_by_name_while_a_pod_refers_to_it() {
    let fake = FakeApi::new();
    fake.insert("configmaps", settings("fast"));
    fake.insert(
        "configmaps",
        json!({"metadata": {"name": "unrelated", "namespace": "default"}}),
    );
    let objects = Objects::default();
    let mut changes = objects.config_maps.subscribe();
    let (ready, _woken) = unbounded_channel();
    let tokens = TokenManager::new(fake.client(), ready);
    let referenced = ReferencedObjects::new(fake.client(), objects.clone(), tokens);

    referenced.track("uid-web", Some(&web()));
    assert!(referenced.pending(RefKind::ConfigMap, "default", "settings"));
    while mode(&referenced).is_none() {
        changed(&mut changes).await;
    }
    assert_eq!(mode(&referenced).as_deref(), Some("fast"));
    assert!(!referenced.pending(RefKind::ConfigMap, "default", "settings"));
    assert!(referenced.config_map("default", "unrelated").is_none());

    fake.insert("configmaps", settings("safe"));
    changed(&mut changes).await;
    assert_eq!(
        mode(&referenced).as_deref(),
        Some("safe"),
        "an edit arrives"
    );

    // Only by name in its namespace: all the Node authorizer lets a node read.
    for request in fake.requests() {
        assert_eq!(request.path, "/api/v1/namespaces/default/configmaps");
        let selector = request.query.get("fieldSelector").map(String::as_str);
        assert_eq!(selector, Some("metadata.name=settings"));
    }

    referenced.track("uid-web", None);
    assert_eq!(mode(&referenced), None, "dropped with its last pod");
}
