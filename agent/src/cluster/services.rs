//! The API server's Services (kubelet's Service informer): every Service of the cluster,
//! listed and watched whole (the Node authorizer lets a node list and watch Services), kept
//! in the object store under [`Source::Api`] for the containers' service environment
//! variables. Each relist replaces the source's Services whole, so that Services deleted
//! while the watch was down go too; the first marks the source synced, which pods from the
//! API server wait for.
//!
//! [`Source::Api`]: crate::store::Source::Api

use k8s_openapi::api::core::v1::Service;
use kube::runtime::watcher;
use kube::Api;

use super::narrowed;
use crate::store::Writer;

/// Keeps `services` (the API source's writer) equal to the cluster's Services until the task
/// is dropped. Errors are logged and the watch resumes with kube-runtime's default backoff.
pub async fn watch(client: kube::Client, services: Writer<Service>) {
    let api: Api<Service> = Api::all(client);
    super::reflect::reflect(
        api,
        watcher::Config::default(),
        services,
        "Services",
        |service| Some(narrowed(service)),
    )
    .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::cluster::fake_api::FakeApi;
    use crate::store::{Source, Store};

    fn service(namespace: &str, name: &str, ip: &str) -> serde_json::Value {
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "namespace": namespace,
                "name": name,
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
            "spec": {"clusterIP": ip, "ports": [{"port": 80, "protocol": "TCP"}]},
        })
    }

    /// Waits (in paused time) until `done` holds for the store.
    async fn until(store: &Store<Service>, done: impl Fn(&Store<Service>) -> bool) {
        for _ in 0..6000 {
            if done(store) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the Services never got there: {:?}", store.entries());
    }

    #[tokio::test(start_paused = true)]
    async fn services_are_listed_watched_and_relisted_after_410_gone() {
        let fake = FakeApi::new();
        fake.insert("services", service("default", "kubernetes", "10.96.0.1"));
        fake.insert("services", service("shop", "web", "10.96.0.20"));
        let store = Store::new(&[Source::Api]);
        tokio::spawn(watch(fake.client(), store.writer(Source::Api)));

        until(&store, |s| s.is_source_synced(Source::Api) && s.len() == 2).await;
        let web = store.get_named("shop", "web").expect("listed");
        assert!(web.metadata.managed_fields.is_none(), "kept narrow");

        fake.insert("services", service("shop", "db", "10.96.0.30"));
        until(&store, |s| s.get_named("shop", "db").is_some()).await;

        // Deleted while the watch is down and its history compacted: only the relist can
        // tell, and it does.
        fake.until("the watch", |f| {
            f.requests().iter().any(|r| r.query.contains_key("watch"))
        })
        .await;
        fake.close_watches();
        fake.remove("services", "shop", "web");
        fake.compact();
        until(&store, |s| s.get_named("shop", "web").is_none()).await;
        assert!(store.get_named("shop", "db").is_some());
        assert!(store.get_named("default", "kubernetes").is_some());
    }
}
