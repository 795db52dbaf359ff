//! Reading manifest directories: naming, UIDs, errors as the user sees them, isolation.

use std::fs;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::store::ObjectKey;

const NODE: &str = "Node1";

const WEB: &str = "
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: app
    image: nginx:1.27
    ports: [{containerPort: 80}]
";

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Dir(tempfile::tempdir().expect("tempdir"))
    }

    fn with(files: &[(&str, &str)]) -> Self {
        let dir = Self::new();
        for (name, content) in files {
            dir.write(name, content);
        }
        dir
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn write(&self, name: &str, content: &str) {
        fs::write(self.path().join(name), content).expect("write fixture");
    }

    fn scan(&self) -> Snapshot {
        scan(self.path(), NODE).0
    }

    /// Errors as displayed, with the temporary directory shown as `pods/`.
    fn errors(&self, snapshot: &Snapshot) -> Vec<String> {
        let prefix = format!("{}/", self.path().display());
        snapshot
            .errors
            .iter()
            .map(|e| e.to_string().replace(&prefix, "pods/"))
            .collect()
    }
}

/// The errors of a directory holding only `web.yaml` with `content`.
fn errors_of(content: &str) -> Vec<String> {
    let dir = Dir::with(&[("web.yaml", content)]);
    let snapshot = dir.scan();
    assert!(snapshot.pods.is_empty(), "a bad pod is not loaded");
    dir.errors(&snapshot)
}

fn uid_of(snapshot: &Snapshot) -> String {
    snapshot.pods["default/web-node1"].uid().to_string()
}

#[test]
fn static_pods_are_named_bound_and_annotated_like_kubelets() {
    let dir = Dir::with(&[("web.yaml", WEB)]);
    let snapshot = dir.scan();
    assert_eq!(snapshot.errors, []);
    assert_eq!(
        snapshot.pods.keys().collect::<Vec<_>>(),
        ["default/web-node1"]
    );

    let static_pod = &snapshot.pods["default/web-node1"];
    assert_eq!(static_pod.file, dir.path().join("web.yaml"));
    let meta = &static_pod.pod.metadata;
    assert_eq!(meta.name.as_deref(), Some("web-node1"));
    assert_eq!(meta.namespace.as_deref(), Some("default"));

    let uid = static_pod.uid();
    let groups: Vec<usize> = uid.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "{uid}");
    assert!(uid.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));

    let annotations = meta.annotations.as_ref().expect("annotations");
    assert_eq!(annotations[CONFIG_SOURCE_ANNOTATION], "file");
    assert_eq!(annotations[CONFIG_HASH_ANNOTATION], uid);
    let seen = &annotations[CONFIG_SEEN_ANNOTATION];
    assert!(
        seen.parse::<k8s_openapi::jiff::Timestamp>().is_ok(),
        "config.seen is RFC 3339: {seen}"
    );

    let spec = static_pod.pod.spec.as_ref().expect("spec");
    assert_eq!(spec.node_name.as_deref(), Some(NODE));
    let tolerations = spec.tolerations.as_ref().expect("tolerations");
    assert!(tolerations.iter().any(|t| {
        t.operator.as_deref() == Some("Exists") && t.effect.as_deref() == Some("NoExecute")
    }));
    // Defaults are applied.
    assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
    let port = &spec.containers[0].ports.as_ref().expect("ports")[0];
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
}

#[test]
fn namespace_from_the_manifest_is_kept() {
    let dir = Dir::with(&[(
        "dns.yaml",
        &WEB.replace("name: web\n", "name: web\n  namespace: kube-system\n"),
    )]);
    let snapshot = dir.scan();
    assert_eq!(snapshot.errors, []);
    assert!(snapshot.pods.contains_key("kube-system/web-node1"));
}

#[test]
fn uid_is_stable_and_follows_the_content() {
    let dir = Dir::with(&[("web.yaml", WEB)]);
    let first = dir.scan();
    let again = dir.scan();
    assert_eq!(
        uid_of(&first),
        uid_of(&again),
        "same content, same UID across reads"
    );

    // Spelling out a default asks for the same pod.
    dir.write("web.yaml", &format!("{WEB}  restartPolicy: Always\n"));
    assert_eq!(uid_of(&dir.scan()), uid_of(&first));

    dir.write("web.yaml", &WEB.replace("nginx:1.27", "nginx:1.28"));
    let changed = dir.scan();
    assert_ne!(uid_of(&changed), uid_of(&first), "new content, new UID");

    dir.write("web.yaml", WEB);
    assert_eq!(
        uid_of(&dir.scan()),
        uid_of(&first),
        "back to the old content"
    );

    let other_node = scan(dir.path(), "node2").0;
    let other_uid = other_node.pods["default/web-node2"].uid();
    assert_ne!(other_uid, uid_of(&first), "the node is part of the UID");

    let moved = Dir::with(&[("web.yaml", WEB)]);
    assert_ne!(
        uid_of(&moved.scan()),
        uid_of(&first),
        "the file is part of the UID"
    );
}

#[test]
fn rescans_of_unchanged_files_are_identical() {
    let dir = Dir::with(&[("web.yaml", WEB)]);
    let mut source = ManifestSource::new(dir.path(), NODE);
    let first = source.rescan().0;
    let second = source.rescan().0;
    assert!(first.same_desired_state(&second));
    assert_eq!(
        first, second,
        "config.seen keeps the time the pod was first seen"
    );
}

#[test]
fn a_rescan_reads_only_files_changed_or_recently_written() {
    let dir = Dir::with(&[("web.yaml", WEB)]);
    // Just written: not settled, so read every time.
    let mut source = ManifestSource::new(dir.path(), NODE);
    let first = source.rescan().0;
    source.rescan();
    assert_eq!(source.files_read(), 2);

    // Settled (at once, here): read once, then reused while its stamp stays.
    let mut source = ManifestSource::new(dir.path(), NODE).with_settle(Duration::ZERO);
    source.rescan();
    let again = source.rescan().0;
    assert_eq!(source.files_read(), 1);
    assert!(again.same_desired_state(&first));

    // Rewritten with the same length: a new stamp, read again.
    let same_length = WEB.replacen("web", "bew", 1);
    assert_eq!(same_length.len(), WEB.len());
    dir.write("web.yaml", &same_length);
    let changed = source.rescan().0;
    assert_eq!(source.files_read(), 2);
    assert!(
        changed.pods.contains_key("default/bew-node1"),
        "{:?}",
        changed.pods.keys()
    );
}

#[test]
fn validation_errors_name_file_field_and_value() {
    let pod =
        |spec: &str| format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n{spec}");
    let cases: &[(String, &str)] = &[
        (
            pod("  containers: [{name: app, image: nginx, imagePullPolicy: Sometimes}]\n"),
            r#"pods/web.yaml: spec.containers[0].imagePullPolicy: unsupported value "Sometimes": supported values: "Always", "IfNotPresent", "Never""#,
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {labels: {a: b}}\nspec:\n  containers: [{name: app, image: nginx}]\n".into(),
            "pods/web.yaml: metadata.name: required value",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: Web_1}\nspec:\n  containers: [{name: app, image: nginx}]\n".into(),
            r#"pods/web.yaml: metadata.name: invalid value "Web_1": must be a lowercase RFC 1123 subdomain: at most 253 characters, lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter or digit"#,
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: Kube_System}\nspec:\n  containers: [{name: app, image: nginx}]\n".into(),
            r#"pods/web.yaml: metadata.namespace: invalid value "Kube_System": must be a lowercase RFC 1123 label: at most 63 characters, lowercase letters, digits and '-', starting and ending with a letter or digit"#,
        ),
        (pod("  containers: []\n"), "pods/web.yaml: spec.containers: required value"),
        (pod("  restartPolicy: Always\n"), "pods/web.yaml: spec.containers: required value"),
        (
            pod("  containers: [{name: App, image: nginx}]\n"),
            r#"pods/web.yaml: spec.containers[0].name: invalid value "App": must be a lowercase RFC 1123 label: at most 63 characters, lowercase letters, digits and '-', starting and ending with a letter or digit"#,
        ),
        (
            pod("  initContainers: [{name: app, image: busybox}]\n  containers: [{name: app, image: nginx}]\n"),
            r#"pods/web.yaml: spec.containers[0].name: duplicate value "app": already used by spec.initContainers[0].name"#,
        ),
        (pod("  containers: [{name: app}]\n"), "pods/web.yaml: spec.containers[0].image: required value"),
        (pod("  containers: [{name: app, image: ' '}]\n"), "pods/web.yaml: spec.containers[0].image: required value"),
        (
            pod("  restartPolicy: Sometimes\n  containers: [{name: app, image: nginx}]\n"),
            r#"pods/web.yaml: spec.restartPolicy: unsupported value "Sometimes": supported values: "Always", "OnFailure", "Never""#,
        ),
        (
            pod("  dnsPolicy: Google\n  containers: [{name: app, image: nginx}]\n"),
            r#"pods/web.yaml: spec.dnsPolicy: unsupported value "Google": supported values: "ClusterFirstWithHostNet", "ClusterFirst", "Default", "None""#,
        ),
        (
            pod("  containers: [{name: app, image: nginx, ports: [{containerPort: 53, protocol: udp}]}]\n"),
            r#"pods/web.yaml: spec.containers[0].ports[0].protocol: unsupported value "udp": supported values: "TCP", "UDP", "SCTP""#,
        ),
        (
            pod("  containers: [{name: app, image: nginx, ports: [{containerPort: 70000}]}]\n"),
            "pods/web.yaml: spec.containers[0].ports[0].containerPort: invalid value 70000: must be between 1 and 65535, inclusive",
        ),
        (
            pod("  containers: [{name: app, image: nginx, ports: [{containerPort: 80, hostPort: -1}]}]\n"),
            "pods/web.yaml: spec.containers[0].ports[0].hostPort: invalid value -1: must be between 1 and 65535, inclusive",
        ),
        (
            pod("  containers: [{name: app, image: nginx, ports: [{hostPort: 80}]}]\n"),
            "pods/web.yaml: spec.containers[0].ports[0].containerPort: required value",
        ),
        (
            pod("  containers: [{name: app, image: nginx, ports: [{containerPort: http}]}]\n"),
            r#"pods/web.yaml: spec.containers[0].ports[0].containerPort: invalid type: string "http", expected i32"#,
        ),
        (
            pod("  containers: [{name: app, image: nginx, ports: [{containerPort: 80, name: Web_Port}]}]\n"),
            r#"pods/web.yaml: spec.containers[0].ports[0].name: invalid value "Web_Port": must be an IANA service name: at most 15 characters, lowercase letters, digits and '-', with at least one letter, no '--', and starting and ending with a letter or digit"#,
        ),
        (
            pod("  containers: [{name: app, image: nginx, livenessProbe: {httpGet: {path: /healthz}}}]\n"),
            "pods/web.yaml: spec.containers[0].livenessProbe.httpGet.port: required value",
        ),
        (
            pod("  containers: [{name: app, image: nginx, readinessProbe: {tcpSocket: {port: 0x10000}}}]\n"),
            "pods/web.yaml: spec.containers[0].readinessProbe.tcpSocket.port: invalid value 65536: must be between 1 and 65535, inclusive",
        ),
        (
            pod("  containers: [{name: app, image: nginx, lifecycle: {preStop: {httpGet: {port: 99999}}}}]\n"),
            "pods/web.yaml: spec.containers[0].lifecycle.preStop.httpGet.port: invalid value 99999: must be between 1 and 65535, inclusive",
        ),
        (
            pod("  initContainers: [{name: setup, image: busybox, restartPolicy: OnFailure}]\n  containers: [{name: app, image: nginx}]\n"),
            r#"pods/web.yaml: spec.initContainers[0].restartPolicy: unsupported value "OnFailure": supported values: "Always""#,
        ),
        (
            pod("  containers: [{name: app, image: nginx, restartPolicy: Always}]\n"),
            "pods/web.yaml: spec.containers[0].restartPolicy: forbidden: may only be set on init containers",
        ),
        (
            pod("  containers: [{name: app, image: nginx, imagePullPolcy: Always}]\n"),
            "pods/web.yaml: spec.containers[0].imagePullPolcy: unknown field",
        ),
        (
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\n".into(),
            "pods/web.yaml: spec: required value",
        ),
        (
            "apiVersion: apps/v1\nkind: Pod\nmetadata: {name: web}\n".into(),
            r#"pods/web.yaml: apiVersion: unsupported value "apps/v1": supported values: "v1""#,
        ),
        ("apiVersion: v1\nmetadata: {name: web}\n".into(), "pods/web.yaml: kind: required value"),
        ("kind: Pod\nmetadata: {name: web}\n".into(), "pods/web.yaml: apiVersion: required value"),
        ("- just\n- a list\n".into(), "pods/web.yaml: expected a Kubernetes object, found a list"),
    ];
    for (content, want) in cases {
        assert_eq!(errors_of(content), [*want], "manifest:\n{content}");
    }
}

#[test]
fn volume_names_are_checked() {
    let errors = errors_of(
        "
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers: [{name: app, image: nginx}]
  volumes:
  - {name: data, emptyDir: {}}
  - {name: data, emptyDir: {}}
",
    );
    assert_eq!(
        errors,
        [
            r#"pods/web.yaml: spec.volumes[1].name: duplicate value "data": already used by spec.volumes[0].name"#
        ]
    );
}

#[test]
fn every_problem_of_a_pod_is_reported() {
    let errors = errors_of(
        "
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers:
  - {name: app, image: nginx, imagePullPolicy: Sometimes}
  - {name: app}
",
    );
    assert_eq!(
        errors,
        [
            r#"pods/web.yaml: spec.containers[0].imagePullPolicy: unsupported value "Sometimes": supported values: "Always", "IfNotPresent", "Never""#,
            r#"pods/web.yaml: spec.containers[1].name: duplicate value "app": already used by spec.containers[0].name"#,
            "pods/web.yaml: spec.containers[1].image: required value",
        ]
    );
}

#[test]
fn syntax_errors_give_the_line() {
    let errors = errors_of("apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n   bad: indent\n");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("pods/web.yaml: invalid YAML: "),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("line 5"), "{}", errors[0]);

    let dir = Dir::with(&[(
        "web.json",
        "{\"apiVersion\": \"v1\",\n \"kind\": \"Pod\",,}",
    )]);
    let errors = dir.errors(&dir.scan());
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("pods/web.json: invalid JSON: "),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("line 2"), "{}", errors[0]);
}

#[test]
fn json_manifests_are_read() {
    let json = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}}"#;
    let dir = Dir::with(&[("web.json", json)]);
    let snapshot = dir.scan();
    assert_eq!(snapshot.errors, []);
    assert!(snapshot.pods.contains_key("default/web-node1"));
}

#[test]
fn multi_document_files_hold_pods_and_other_objects() {
    let dir = Dir::with(&[(
        "app.yaml",
        &format!(
            "{WEB}---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 80}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: conf, namespace: apps}}
data: {{key: value}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: apps}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: deny}}
spec: {{podSelector: {{}}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1}}
addressType: IPv4
endpoints: [{{addresses: [10.0.0.1]}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: token}}
stringData: {{token: s3cret}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: ignored}}
---
kind: SomethingElse
---
"
        ),
    )]);
    let (snapshot, objects) = scan(dir.path(), NODE);
    assert_eq!(snapshot.errors, []);
    assert_eq!(
        snapshot.pods.keys().collect::<Vec<_>>(),
        ["default/web-node1"]
    );

    let keys = |metas: Vec<&ObjectMeta>| -> Vec<String> {
        metas
            .into_iter()
            .map(|m| ObjectKey::of(m).to_string())
            .collect()
    };
    assert_eq!(
        keys(objects.config_maps.iter().map(|o| &o.metadata).collect()),
        ["apps/conf"]
    );
    assert_eq!(
        keys(
            objects
                .endpoint_slices
                .iter()
                .map(|o| &o.metadata)
                .collect()
        ),
        ["default/web-1"]
    );
    assert_eq!(
        keys(objects.namespaces.iter().map(|o| &o.metadata).collect()),
        ["apps"]
    );
    assert_eq!(
        keys(
            objects
                .network_policies
                .iter()
                .map(|o| &o.metadata)
                .collect()
        ),
        ["default/deny"]
    );
    assert_eq!(
        keys(objects.secrets.iter().map(|o| &o.metadata).collect()),
        ["default/token"]
    );
    assert_eq!(
        keys(objects.services.iter().map(|o| &o.metadata).collect()),
        ["default/web"],
        "namespace filled in"
    );
    let port = objects.services[0]
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .map(|p| p[0].port);
    assert_eq!(port, Some(80), "otherwise as written");
}

#[test]
fn a_bad_document_names_its_position_and_spares_the_others() {
    let dir = Dir::with(&[(
        "app.yaml",
        &format!(
            "{WEB}---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  prots: [{{port: 80}}]
---
{}",
            WEB.replace("name: web\n", "name: api\n")
        ),
    )]);
    let snapshot = dir.scan();
    assert_eq!(
        dir.errors(&snapshot),
        ["pods/app.yaml: document 2: spec.prots: unknown field"]
    );
    assert_eq!(
        snapshot.pods.keys().collect::<Vec<_>>(),
        ["default/api-node1", "default/web-node1"]
    );
    assert!(scan(dir.path(), NODE).1.is_empty());
}

#[test]
fn documents_are_numbered_only_in_a_file_of_several_the_broken_one_included() {
    // One good document and one that does not parse: two documents, so both get numbers; the
    // good one is read.
    let dir = Dir::with(&[(
        "app.yaml",
        &format!("{WEB}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: broken\n"),
    )]);
    let snapshot = dir.scan();
    let errors = dir.errors(&snapshot);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("pods/app.yaml: document 2: invalid YAML: "),
        "{}",
        errors[0]
    );
    assert_eq!(
        snapshot.pods.keys().collect::<Vec<_>>(),
        ["default/web-node1"]
    );
    // A file of one document gives its errors without a number: see
    // a_bad_file_does_not_stop_the_others.
}

#[test]
fn a_bad_file_does_not_stop_the_others() {
    let dir = Dir::with(&[
        ("a-broken.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: broken\n"),
        ("b-web.yaml", WEB),
        ("c-bad.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: bad}\nspec:\n  containers: [{name: app}]\n"),
    ]);
    let snapshot = dir.scan();
    assert_eq!(
        snapshot.pods.keys().collect::<Vec<_>>(),
        ["default/web-node1"]
    );
    let errors = dir.errors(&snapshot);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].starts_with("pods/a-broken.yaml: invalid YAML: "),
        "{}",
        errors[0]
    );
    assert_eq!(
        errors[1],
        "pods/c-bad.yaml: spec.containers[0].image: required value"
    );
}

#[test]
fn the_first_file_to_define_a_pod_wins() {
    let service =
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n";
    let dir = Dir::with(&[
        ("a.yaml", WEB),
        ("b.yaml", &WEB.replace("nginx:1.27", "nginx:1.28")),
        ("c.yaml", service),
        ("d.yaml", service),
    ]);
    let snapshot = dir.scan();
    assert_eq!(
        snapshot.pods["default/web-node1"].file,
        dir.path().join("a.yaml")
    );
    assert_eq!(
        dir.errors(&snapshot),
        [
            r#"pods/b.yaml: metadata.name: duplicate value "default/web-node1": a Pod of that name is already defined in pods/a.yaml"#,
            r#"pods/d.yaml: metadata.name: duplicate value "default/web": a Service of that name is already defined in pods/c.yaml"#,
        ]
    );
}

#[test]
fn only_manifest_files_directly_in_the_directory_are_read() {
    let dir = Dir::with(&[
        ("web.yml", WEB),
        (
            ".hidden.yaml",
            &WEB.replace("name: web\n", "name: hidden\n"),
        ),
        ("notes.txt", "not a manifest"),
        ("web.yaml~", "editor backup"),
    ]);
    fs::create_dir(dir.path().join("sub.yaml")).expect("mkdir");
    fs::write(
        dir.path().join("sub.yaml").join("deep.yaml"),
        WEB.replace("name: web\n", "name: deep\n"),
    )
    .expect("write");
    let snapshot = dir.scan();
    assert_eq!(snapshot.errors, []);
    assert_eq!(
        snapshot.pods.keys().collect::<Vec<_>>(),
        ["default/web-node1"]
    );
}

#[test]
fn a_missing_directory_is_one_error() {
    let dir = Dir::new();
    let missing = dir.path().join("manifests");
    let snapshot = scan(&missing, NODE).0;
    assert!(snapshot.pods.is_empty());
    assert_eq!(
        snapshot
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [format!(
            "{}: manifest directory does not exist",
            missing.display()
        )]
    );
}

#[test]
fn the_path_may_be_a_single_manifest_file() {
    let dir = Dir::with(&[("pod.manifest", WEB)]);
    let snapshot = scan(&dir.path().join("pod.manifest"), NODE).0;
    assert_eq!(snapshot.errors, []);
    assert!(snapshot.pods.contains_key("default/web-node1"));
}

#[test]
fn unquoted_octal_file_modes_read_as_kubectl_reads_them() {
    let dir = Dir::with(&[(
        "web.yaml",
        &format!(
            "{}  volumes:
  - name: conf
    configMap:
      name: conf
      defaultMode: 0600
      items: [{{key: a, path: a, mode: 0755}}]
",
            WEB.replace("labels: {app: web}", "labels: {app: web, mode: 0644}")
        ),
    )]);
    let snapshot = dir.scan();
    assert_eq!(snapshot.errors, []);
    let spec = snapshot.pods["default/web-node1"]
        .pod
        .spec
        .clone()
        .expect("spec");
    let config_map = spec.volumes.expect("volumes")[0]
        .config_map
        .clone()
        .expect("configMap");
    assert_eq!(config_map.default_mode, Some(0o600));
    assert_eq!(config_map.items.expect("items")[0].mode, Some(0o755));
    let labels = snapshot.pods["default/web-node1"]
        .pod
        .metadata
        .labels
        .clone();
    assert_eq!(
        labels.expect("labels")["mode"],
        "0644",
        "only volumes are read the YAML 1.1 way"
    );
}

#[test]
fn a_file_that_turns_bad_keeps_its_last_good_pods() {
    let dir = Dir::with(&[("web.yaml", WEB)]);
    let mut source = ManifestSource::new(dir.path(), NODE);
    let good = source.rescan().0;
    let uid = uid_of(&good);

    // Half written: parses, but the container lost its image.
    dir.write(
        "web.yaml",
        &WEB[..WEB.find("    image").expect("fixture has an image")],
    );
    let bad = source.rescan().0;
    assert_eq!(uid_of(&bad), uid, "the last good pod stays");
    assert_eq!(
        dir.errors(&bad),
        ["pods/web.yaml: spec.containers[0].image: required value"]
    );

    dir.write(
        "web.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web\n",
    );
    assert_eq!(
        uid_of(&source.rescan().0),
        uid,
        "also through syntax errors"
    );

    dir.write("web.yaml", &WEB.replace("nginx:1.27", "nginx:1.28"));
    let fixed = source.rescan().0;
    assert_ne!(uid_of(&fixed), uid, "the fixed file replaces it");
    assert_eq!(fixed.errors, []);

    dir.write("web.yaml", "not: [valid");
    assert_eq!(uid_of(&source.rescan().0), uid_of(&fixed));
    fs::remove_file(dir.path().join("web.yaml")).expect("remove");
    let deleted = source.rescan().0;
    assert!(
        deleted.pods.is_empty(),
        "deleting the file deletes its pods"
    );
    assert_eq!(deleted.errors, []);

    // Its last good content is forgotten with it.
    dir.write("web.yaml", "not: [valid");
    assert!(source.rescan().0.pods.is_empty());
}

#[test]
fn invalid_objects_are_refused_with_their_file_field_and_value() {
    let dir = Dir::with(&[
        (
            "svc.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 10.96.0.9\n  ports: [{port: 80, targetPort: 70000}]\n",
        ),
        (
            "netpol.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}]\n",
        ),
        (
            "ok.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: fine}\ndata: {k: v}\n",
        ),
    ]);
    let (snapshot, objects) = scan(dir.path(), NODE);
    let errors = dir.errors(&snapshot);
    assert_eq!(errors.len(), 2, "{errors:?} {objects:?}");
    assert!(
        errors[0].starts_with("pods/netpol.yaml: spec.ingress[0].from[0].ipBlock.except[0]: "),
        "{errors:?}"
    );
    assert!(
        errors[1].starts_with("pods/svc.yaml: spec.ports[0].targetPort: ")
            && errors[1].contains("70000"),
        "{errors:?}"
    );
    // Neither reaches the store; the valid object does.
    assert!(objects.services.is_empty() && objects.network_policies.is_empty());
    assert_eq!(objects.config_maps.len(), 1);
}
