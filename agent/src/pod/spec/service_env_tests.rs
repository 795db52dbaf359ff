//! Golden tests of the Service environment variables: Services and a pod as YAML in, the
//! container's environment out, as kubelet 1.34 makes it.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};

use super::services_pending;
use crate::pod::spec::{container_config_with, ContainerKind, NodeContext, RuntimeFacts};
use crate::store::{ObjectGetter, Objects, Source};

/// The store with these Services (YAML documents) from the API server.
fn services(yaml: &str) -> Objects {
    let objects = Objects::default();
    let writer = objects.services.writer(Source::Api);
    for document in yaml.split("\n---\n") {
        let service: Service = match serde_yaml::from_str(document) {
            Ok(service) => service,
            Err(error) => panic!("test Service does not parse: {error}\n{document}"),
        };
        writer.apply(Arc::new(service));
    }
    objects
}

const CLUSTER: &str = "
metadata: {name: kubernetes, namespace: default}
spec:
  clusterIP: 10.96.0.1
  ports: [{name: https, port: 443, protocol: TCP}]
---
metadata: {name: web-front, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  ports:
  - {name: http, port: 80, protocol: TCP}
  - {name: dns-udp, port: 53, protocol: UDP}
---
metadata: {name: cache, namespace: shop}
spec:
  clusterIP: 10.96.0.30
  ports: [{port: 6379}]
---
metadata: {name: db, namespace: shop}
spec:
  clusterIP: None
  ports: [{port: 5432}]
---
metadata: {name: mail, namespace: shop}
spec:
  type: ExternalName
  externalName: mail.example.com
---
metadata: {name: elsewhere, namespace: other}
spec:
  clusterIP: 10.96.0.40
  ports: [{port: 80}]
";

fn pod(yaml: &str) -> Pod {
    let mut pod: Pod = match serde_yaml::from_str(yaml) {
        Ok(pod) => pod,
        Err(error) => panic!("test pod does not parse: {error}\n{yaml}"),
    };
    pod.metadata.uid.get_or_insert_with(|| "uid-1".to_owned());
    pod
}

/// The environment of the pod's first container.
fn environment(pod: &Pod, objects: &dyn ObjectGetter) -> Vec<(String, String)> {
    let container = &pod.spec.as_ref().expect("a spec").containers[0];
    let config = container_config_with(
        pod,
        container,
        ContainerKind::Regular,
        &NodeContext::default(),
        &RuntimeFacts::default(),
        objects,
    );
    match config {
        Ok(config) => config
            .envs
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect(),
        Err(error) => panic!("unexpected error: {error}"),
    }
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

fn names(env: &[(String, String)]) -> Vec<&str> {
    env.iter().map(|(name, _)| name.as_str()).collect()
}

#[test]
fn every_service_of_the_namespace_with_a_cluster_ip_and_the_kubernetes_service() {
    let pod = pod("
metadata: {name: p, namespace: shop}
spec:
  containers: [{name: c, image: busybox}]
");
    assert_eq!(
        environment(&pod, &services(CLUSTER)),
        pairs(&[
            ("CACHE_SERVICE_HOST", "10.96.0.30"),
            ("CACHE_SERVICE_PORT", "6379"),
            ("CACHE_PORT", "tcp://10.96.0.30:6379"),
            ("CACHE_PORT_6379_TCP", "tcp://10.96.0.30:6379"),
            ("CACHE_PORT_6379_TCP_PROTO", "tcp"),
            ("CACHE_PORT_6379_TCP_PORT", "6379"),
            ("CACHE_PORT_6379_TCP_ADDR", "10.96.0.30"),
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
            ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
            ("KUBERNETES_PORT_443_TCP", "tcp://10.96.0.1:443"),
            ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
            ("KUBERNETES_PORT_443_TCP_PORT", "443"),
            ("KUBERNETES_PORT_443_TCP_ADDR", "10.96.0.1"),
            ("WEB_FRONT_SERVICE_HOST", "10.96.0.20"),
            ("WEB_FRONT_SERVICE_PORT", "80"),
            ("WEB_FRONT_SERVICE_PORT_HTTP", "80"),
            ("WEB_FRONT_SERVICE_PORT_DNS_UDP", "53"),
            ("WEB_FRONT_PORT", "tcp://10.96.0.20:80"),
            ("WEB_FRONT_PORT_80_TCP", "tcp://10.96.0.20:80"),
            ("WEB_FRONT_PORT_80_TCP_PROTO", "tcp"),
            ("WEB_FRONT_PORT_80_TCP_PORT", "80"),
            ("WEB_FRONT_PORT_80_TCP_ADDR", "10.96.0.20"),
            ("WEB_FRONT_PORT_53_UDP", "udp://10.96.0.20:53"),
            ("WEB_FRONT_PORT_53_UDP_PROTO", "udp"),
            ("WEB_FRONT_PORT_53_UDP_PORT", "53"),
            ("WEB_FRONT_PORT_53_UDP_ADDR", "10.96.0.20"),
        ])
    );
}

#[test]
fn without_service_links_only_the_kubernetes_service_is_linked() {
    let in_shop = pod("
metadata: {name: p, namespace: shop}
spec:
  enableServiceLinks: false
  containers: [{name: c, image: busybox}]
");
    let env = environment(&in_shop, &services(CLUSTER));
    assert!(
        names(&env)
            .iter()
            .all(|name| name.starts_with("KUBERNETES_")),
        "{env:?}"
    );
    assert_eq!(env.len(), 8);
    // Nor in the default namespace itself.
    let in_default = pod("
metadata: {name: p, namespace: default}
spec:
  enableServiceLinks: false
  containers: [{name: c, image: busybox}]
");
    let objects = services(&format!(
        "{CLUSTER}---\nmetadata: {{name: other, namespace: default}}\nspec: {{clusterIP: 10.96.0.9, ports: [{{port: 1}}]}}\n"
    ));
    assert_eq!(environment(&in_default, &objects).len(), 8);
}

#[test]
fn a_service_of_the_pods_namespace_shadows_the_kubernetes_service() {
    let pod = pod("
metadata: {name: p, namespace: shop}
spec:
  containers: [{name: c, image: busybox}]
");
    let value = |env: &[(String, String)], name: &str| {
        env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    };
    let own = "metadata: {name: kubernetes, namespace: shop}
spec: {clusterIP: 10.96.7.7, ports: [{port: 8443}]}";
    let env = environment(&pod, &services(&format!("{CLUSTER}---\n{own}")));
    assert_eq!(
        value(&env, "KUBERNETES_SERVICE_HOST").as_deref(),
        Some("10.96.7.7")
    );
    assert_eq!(
        value(&env, "KUBERNETES_SERVICE_PORT").as_deref(),
        Some("8443")
    );
    assert_eq!(value(&env, "KUBERNETES_SERVICE_PORT_HTTPS"), None);

    // Not with service links off, nor when it is headless: then the master service's.
    let headless = "metadata: {name: kubernetes, namespace: shop}
spec: {clusterIP: None, ports: [{port: 8443}]}";
    let env = environment(&pod, &services(&format!("{CLUSTER}---\n{headless}")));
    assert_eq!(
        value(&env, "KUBERNETES_SERVICE_HOST").as_deref(),
        Some("10.96.0.1")
    );
    let mut unlinked = pod.clone();
    unlinked.spec.as_mut().expect("a spec").enable_service_links = Some(false);
    let env = environment(&unlinked, &services(&format!("{CLUSTER}---\n{own}")));
    assert_eq!(
        value(&env, "KUBERNETES_SERVICE_HOST").as_deref(),
        Some("10.96.0.1")
    );
}

#[test]
fn the_containers_own_variables_win_and_may_use_the_services() {
    let objects = services(CLUSTER);
    objects.config_maps.writer(Source::Api).apply(Arc::new(
        serde_yaml::from_str(
            "metadata: {name: settings, namespace: shop}\ndata: {CACHE_PORT: from-config-map}",
        )
        .expect("a ConfigMap"),
    ));
    let pod = pod("
metadata: {name: p, namespace: shop}
spec:
  containers:
  - name: c
    image: busybox
    args: ['$(WEB_FRONT_SERVICE_HOST):$(WEB_FRONT_SERVICE_PORT)', '$(CACHE_PORT)']
    envFrom: [{configMapRef: {name: settings}}]
    env:
    - {name: URL, value: 'http://$(WEB_FRONT_SERVICE_HOST):$(WEB_FRONT_SERVICE_PORT_HTTP)/'}
    - {name: WEB_FRONT_SERVICE_HOST, value: web.shop}
    - {name: AFTER, value: '$(WEB_FRONT_SERVICE_HOST)'}
");
    let env = environment(&pod, &objects);
    let value = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    // Expanded against the Service's value before the container redefined it, after with
    // its own.
    assert_eq!(value("URL"), Some("http://10.96.0.20:80/"));
    assert_eq!(value("AFTER"), Some("web.shop"));
    assert_eq!(value("WEB_FRONT_SERVICE_HOST"), Some("web.shop"));
    assert_eq!(value("CACHE_PORT"), Some("from-config-map"));
    assert_eq!(value("CACHE_SERVICE_HOST"), Some("10.96.0.30"));
    // Each once, the container's first.
    let listed = names(&env);
    assert_eq!(
        listed[..4],
        ["CACHE_PORT", "URL", "WEB_FRONT_SERVICE_HOST", "AFTER"]
    );
    let mut unique = listed.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), listed.len());
    // Arguments are expanded against the whole environment.
    let container = &pod.spec.as_ref().expect("a spec").containers[0];
    let config = container_config_with(
        &pod,
        container,
        ContainerKind::Regular,
        &NodeContext::default(),
        &RuntimeFacts::default(),
        &objects,
    )
    .expect("a config");
    assert_eq!(config.args, ["web.shop:80", "from-config-map"]);
}

#[test]
fn an_ipv6_cluster_ip_is_bracketed_in_urls_only() {
    let objects = services(
        "metadata: {name: v6, namespace: default}
spec: {clusterIP: 'fd00:10:96::a', ports: [{port: 80}]}",
    );
    let pod = pod("
metadata: {name: p, namespace: default}
spec:
  containers: [{name: c, image: busybox}]
");
    let env = environment(&pod, &objects);
    assert_eq!(
        env,
        pairs(&[
            ("V6_SERVICE_HOST", "fd00:10:96::a"),
            ("V6_SERVICE_PORT", "80"),
            ("V6_PORT", "tcp://[fd00:10:96::a]:80"),
            ("V6_PORT_80_TCP", "tcp://[fd00:10:96::a]:80"),
            ("V6_PORT_80_TCP_PROTO", "tcp"),
            ("V6_PORT_80_TCP_PORT", "80"),
            ("V6_PORT_80_TCP_ADDR", "fd00:10:96::a"),
        ])
    );
}

/// Services not listed yet, as in a cluster just after bosun started.
struct Unlisted;

impl ObjectGetter for Unlisted {
    fn config_map(&self, _: &str, _: &str) -> Option<Arc<k8s_openapi::api::core::v1::ConfigMap>> {
        None
    }
    fn secret(&self, _: &str, _: &str) -> Option<Arc<k8s_openapi::api::core::v1::Secret>> {
        None
    }
    fn services_pending(&self) -> bool {
        true
    }
}

#[test]
fn only_pods_of_the_api_server_wait_for_its_services() {
    let from = |source: &str| {
        pod(&format!(
            "metadata: {{name: p, namespace: default, annotations: {{kubernetes.io/config.source: {source}}}}}
spec:
  containers: [{{name: c, image: busybox}}]
"
        ))
    };
    assert!(services_pending(&from("api"), &Unlisted));
    assert!(!services_pending(&from("file"), &Unlisted));
    assert!(!services_pending(&from("api"), &Objects::default()));
}
