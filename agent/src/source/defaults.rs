//! The defaults the API server fills into a pod that omits them. A static pod never passes
//! through the API server, so kubelet applies them itself when it decodes a manifest; doing
//! the same here means the rest of bosun never has to guess what an absent field means.

use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Pod, Probe};

/// Fills every field the API server would default and the manifest left out. Fields that
/// are set are never changed, so applying it twice changes nothing more.
pub fn apply_defaults(pod: &mut Pod) {
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".into());
    spec.security_context.get_or_insert_with(Default::default);
    spec.enable_service_links.get_or_insert(true);

    let host_network = spec.host_network == Some(true);
    let init_containers = spec.init_containers.iter_mut().flatten();
    for container in spec.containers.iter_mut().chain(init_containers) {
        default_container(container, host_network);
    }

    for volume in spec.volumes.iter_mut().flatten() {
        // 0644, the mode the API server gives projected files when none is asked for.
        const DEFAULT_MODE: i32 = 0o644;
        if let Some(source) = volume.config_map.as_mut() {
            source.default_mode.get_or_insert(DEFAULT_MODE);
        }
        if let Some(source) = volume.secret.as_mut() {
            source.default_mode.get_or_insert(DEFAULT_MODE);
        }
        if let Some(source) = volume.projected.as_mut() {
            source.default_mode.get_or_insert(DEFAULT_MODE);
        }
        if let Some(source) = volume.downward_api.as_mut() {
            source.default_mode.get_or_insert(DEFAULT_MODE);
        }
    }
}

fn default_container(container: &mut Container, host_network: bool) {
    if container.image_pull_policy.is_none() {
        let policy = default_pull_policy(container.image.as_deref().unwrap_or_default());
        container.image_pull_policy = Some(policy.into());
    }
    container
        .termination_message_path
        .get_or_insert_with(|| "/dev/termination-log".into());
    container
        .termination_message_policy
        .get_or_insert_with(|| "File".into());

    for port in container.ports.iter_mut().flatten() {
        port.protocol.get_or_insert_with(|| "TCP".into());
        // With the host's network the container port is the host port; the API server
        // records that so port conflicts are visible.
        if host_network && port.host_port.is_none() {
            port.host_port = Some(port.container_port);
        }
    }

    let probes = [
        &mut container.liveness_probe,
        &mut container.readiness_probe,
        &mut container.startup_probe,
    ];
    for probe in probes.into_iter().flatten() {
        default_probe(probe);
    }
    if let Some(lifecycle) = container.lifecycle.as_mut() {
        let handlers = [&mut lifecycle.post_start, &mut lifecycle.pre_stop];
        for handler in handlers.into_iter().flatten() {
            if let Some(http_get) = handler.http_get.as_mut() {
                default_http_get(http_get);
            }
        }
    }

    // Requests default to limits, which is what makes a pod that sets only limits
    // Guaranteed rather than BestEffort.
    if let Some(resources) = container.resources.as_mut() {
        if let Some(limits) = resources.limits.as_ref() {
            let requests = resources.requests.get_or_insert_with(Default::default);
            for (resource, quantity) in limits {
                requests
                    .entry(resource.clone())
                    .or_insert_with(|| quantity.clone());
            }
        }
    }

    for env in container.env.iter_mut().flatten() {
        let field_ref = env
            .value_from
            .as_mut()
            .and_then(|from| from.field_ref.as_mut());
        if let Some(field_ref) = field_ref {
            field_ref.api_version.get_or_insert_with(|| "v1".into());
        }
    }
}

fn default_probe(probe: &mut Probe) {
    probe.timeout_seconds.get_or_insert(1);
    probe.period_seconds.get_or_insert(10);
    probe.success_threshold.get_or_insert(1);
    probe.failure_threshold.get_or_insert(3);
    if let Some(http_get) = probe.http_get.as_mut() {
        default_http_get(http_get);
    }
}

fn default_http_get(http_get: &mut HTTPGetAction) {
    http_get.scheme.get_or_insert_with(|| "HTTP".into());
    http_get.path.get_or_insert_with(|| "/".into());
}

/// `Always` for an image without a tag or tagged `latest`, which may change under the same
/// name; `IfNotPresent` for any other tag or a digest.
fn default_pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    // A colon before the last slash belongs to a registry port, not a tag.
    let last_component = image.rsplit('/').next().unwrap_or(image);
    match last_component.split_once(':') {
        Some((_, tag)) if tag != "latest" => "IfNotPresent",
        _ => "Always",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).expect("fixture parses")
    }

    fn defaulted(yaml: &str) -> serde_json::Value {
        let mut pod = pod(yaml);
        apply_defaults(&mut pod);
        serde_json::to_value(&pod).expect("serializes")
    }

    #[test]
    fn fills_pod_and_container_defaults() {
        let got = defaulted(
            "
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  initContainers:
  - name: setup
    image: busybox:1.36
  containers:
  - name: app
    image: nginx
    ports:
    - containerPort: 80
    livenessProbe:
      httpGet: {port: 80}
    readinessProbe:
      tcpSocket: {port: 80}
      periodSeconds: 5
",
        );
        let want: serde_json::Value = serde_yaml::from_str(
            "
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  restartPolicy: Always
  dnsPolicy: ClusterFirst
  terminationGracePeriodSeconds: 30
  schedulerName: default-scheduler
  securityContext: {}
  enableServiceLinks: true
  initContainers:
  - name: setup
    image: busybox:1.36
    imagePullPolicy: IfNotPresent
    terminationMessagePath: /dev/termination-log
    terminationMessagePolicy: File
  containers:
  - name: app
    image: nginx
    imagePullPolicy: Always
    terminationMessagePath: /dev/termination-log
    terminationMessagePolicy: File
    ports:
    - containerPort: 80
      protocol: TCP
    livenessProbe:
      httpGet: {port: 80, path: /, scheme: HTTP}
      timeoutSeconds: 1
      periodSeconds: 10
      successThreshold: 1
      failureThreshold: 3
    readinessProbe:
      tcpSocket: {port: 80}
      timeoutSeconds: 1
      periodSeconds: 5
      successThreshold: 1
      failureThreshold: 3
",
        )
        .expect("fixture parses");
        assert_eq!(got, want);
    }

    #[test]
    fn keeps_what_the_manifest_sets() {
        let yaml = "
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  restartPolicy: Never
  dnsPolicy: Default
  terminationGracePeriodSeconds: 5
  schedulerName: mine
  securityContext: {runAsUser: 1000}
  enableServiceLinks: false
  containers:
  - name: app
    image: nginx
    imagePullPolicy: Never
    terminationMessagePath: /tmp/msg
    terminationMessagePolicy: FallbackToLogsOnError
    ports: [{containerPort: 53, protocol: UDP}]
    startupProbe:
      httpGet: {port: 80, path: /healthz, scheme: HTTPS}
      timeoutSeconds: 2
      periodSeconds: 3
      successThreshold: 1
      failureThreshold: 30
";
        let once = defaulted(yaml);
        let as_written: serde_json::Value = serde_yaml::from_str(yaml).expect("fixture parses");
        assert_eq!(once, as_written);
    }

    #[test]
    fn is_idempotent() {
        let mut pod = pod("
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers: [{name: app, image: nginx, ports: [{containerPort: 80}]}]
");
        apply_defaults(&mut pod);
        let once = pod.clone();
        apply_defaults(&mut pod);
        assert_eq!(pod, once);
    }

    #[test]
    fn pull_policy_follows_the_tag() {
        for (image, want) in [
            ("nginx", "Always"),
            ("nginx:latest", "Always"),
            ("registry.local:5000/nginx", "Always"),
            ("registry.local:5000/nginx:latest", "Always"),
            ("nginx:1.27", "IfNotPresent"),
            ("registry.local:5000/team/nginx:1.27", "IfNotPresent"),
            ("nginx@sha256:0123abcd", "IfNotPresent"),
            ("nginx:latest@sha256:0123abcd", "IfNotPresent"),
        ] {
            assert_eq!(default_pull_policy(image), want, "{image}");
        }
    }

    #[test]
    fn host_network_ports_requests_env_and_volumes() {
        let got = defaulted(
            "
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  hostNetwork: true
  containers:
  - name: app
    image: nginx:1
    ports: [{containerPort: 8080}]
    resources:
      limits: {cpu: 500m, memory: 64Mi}
      requests: {cpu: 100m}
    env:
    - name: NODE
      valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
    lifecycle:
      preStop: {httpGet: {port: 8080}}
  volumes:
  - name: conf
    configMap: {name: conf}
  - name: data
    emptyDir: {}
",
        );
        let container = &got["spec"]["containers"][0];
        assert_eq!(container["ports"][0]["hostPort"], 8080);
        assert_eq!(
            container["resources"]["requests"],
            serde_json::json!({"cpu": "100m", "memory": "64Mi"})
        );
        assert_eq!(
            container["env"][0]["valueFrom"]["fieldRef"]["apiVersion"],
            "v1"
        );
        assert_eq!(
            container["lifecycle"]["preStop"]["httpGet"],
            serde_json::json!({"port": 8080, "path": "/", "scheme": "HTTP"})
        );
        assert_eq!(got["spec"]["volumes"][0]["configMap"]["defaultMode"], 420);
        assert_eq!(
            got["spec"]["volumes"][1],
            serde_json::json!({"name": "data", "emptyDir": {}})
        );
    }
}
