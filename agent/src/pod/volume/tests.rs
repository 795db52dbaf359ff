//! Pods as YAML in, directories, files, mount calls and CRI mounts out; on a temporary
//! directory with the fake mounter, except for one test that mounts a real tmpfs.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use bosun_cri::api;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde::Deserialize as _;
use serde_json::Value;

use super::*;
use crate::pod::spec::{NodeResources, RuntimeFacts};

const UID: &str = "0b7c5a10-1111-4c2e-9c1e-2f8b2f1f0001";
const GI: i64 = 1 << 30;
const MI: i64 = 1 << 20;

/// A node whose pod directories are in a temporary directory.
struct Node {
    _root: tempfile::TempDir,
    ctx: NodeContext,
    mounter: FakeMounter,
}

impl Node {
    fn new() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let ctx = NodeContext {
            node_name: "node-a".into(),
            pods_dir: root.path().join("pods"),
            node: NodeResources {
                allocatable_memory_bytes: 8 * GI,
                ..NodeResources::default()
            },
            ..NodeContext::default()
        };
        fs::create_dir(&ctx.pods_dir).expect("creates the pods directory");
        Node {
            _root: root,
            ctx,
            mounter: FakeMounter::new(),
        }
    }

    fn prepare(&self, pod: &Pod, objects: &Objects) -> Result<PodVolumes, VolumeError> {
        prepare(pod, &self.ctx, objects, &self.mounter)
    }

    fn pod_dir(&self) -> PathBuf {
        fs::canonicalize(&self.ctx.pods_dir)
            .expect("pods dir exists")
            .join(UID)
    }

    fn volume_dir(&self, plugin: &str, name: &str) -> PathBuf {
        self.pod_dir().join("volumes").join(plugin).join(name)
    }

    fn tmpfs_mounts(&self) -> Vec<(PathBuf, Option<u64>)> {
        self.mounter
            .calls()
            .into_iter()
            .filter_map(|call| match call {
                MountCall::MountTmpfs { target, size_bytes } => Some((target, size_bytes)),
                MountCall::Unmount { .. } => None,
            })
            .collect()
    }
}

type Objects = crate::store::Objects;

/// A pod from YAML, with the test UID and namespace `default` unless it has them.
fn pod(yaml: &str) -> Pod {
    let mut pod: Pod = match serde_yaml::from_str(yaml) {
        Ok(pod) => pod,
        Err(error) => panic!("test pod does not parse: {error}\n{yaml}"),
    };
    pod.metadata.uid.get_or_insert_with(|| UID.to_owned());
    pod.metadata
        .namespace
        .get_or_insert_with(|| "default".to_owned());
    pod
}

/// ConfigMaps and Secrets from a multi-document YAML, in namespace `default` unless they say
/// otherwise, as the manifest source stores them.
fn objects(yaml: &str) -> Objects {
    use crate::store::Source;
    let out = Objects::default();
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let mut value = Value::deserialize(document).expect("test object parses");
        if value.pointer("/metadata/namespace").is_none() {
            value["metadata"]["namespace"] = "default".into();
        }
        match value["kind"].as_str() {
            Some("ConfigMap") => out
                .config_maps
                .writer(Source::File)
                .apply(std::sync::Arc::new(
                    serde_json::from_value(value).expect("a ConfigMap"),
                )),
            Some("Secret") => out.secrets.writer(Source::File).apply(std::sync::Arc::new(
                serde_json::from_value(value).expect("a Secret"),
            )),
            other => panic!("test objects are ConfigMaps and Secrets, not {other:?}"),
        }
    }
    out
}

fn no_objects() -> Objects {
    Objects::default()
}

fn container<'a>(pod: &'a Pod, name: &str) -> &'a Container {
    let spec = pod.spec.as_ref().expect("spec");
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .expect("container")
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("exists").permissions().mode() & 0o7777
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn data_link(dir: &Path) -> PathBuf {
    fs::read_link(dir.join("..data")).expect("..data is a link")
}

fn facts(ip: &str) -> RuntimeFacts {
    RuntimeFacts {
        pod_ip: ip.into(),
        pod_ips: vec![ip.into()],
        restart_count: 0,
    }
}

const CONFIG: &str = "
kind: ConfigMap
apiVersion: v1
metadata: {name: conf, namespace: default}
data:
  game.properties: |
    lives=3
  ui.properties: colour=blue
binaryData:
  logo.bin: AAEC
---
kind: Secret
apiVersion: v1
metadata: {name: creds, namespace: default}
data:
  password: czNjcjN0
stringData:
  user: admin
";

#[test]
fn lays_out_every_kind_as_kubelet_does() {
    let node = Node::new();
    let pod = pod("
metadata: {name: web, labels: {app: web}}
spec:
  containers: [{name: app, image: busybox}]
  volumes:
  - {name: scratch, emptyDir: {}}
  - {name: host, hostPath: {path: /var/log}}
  - {name: conf, configMap: {name: conf}}
  - {name: creds, secret: {secretName: creds}}
  - name: info
    downwardAPI:
      items: [{path: labels, fieldRef: {fieldPath: metadata.labels}}]
  - name: all
    projected:
      sources:
      - configMap: {name: conf, items: [{key: ui.properties, path: ui}]}
");
    let volumes = node.prepare(&pod, &objects(CONFIG)).expect("prepares");

    assert_eq!(mode(&node.pod_dir()), 0o750);
    let scratch = node.volume_dir("kubernetes.io~empty-dir", "scratch");
    assert!(scratch.is_dir());
    assert_eq!(mode(&scratch), 0o777);
    let expected = [
        (
            "scratch",
            VolumeKind::EmptyDir,
            scratch.clone(),
            false,
            false,
        ),
        (
            "host",
            VolumeKind::HostPath,
            PathBuf::from("/var/log"),
            false,
            false,
        ),
        (
            "conf",
            VolumeKind::ConfigMap,
            node.volume_dir("kubernetes.io~configmap", "conf"),
            true,
            false,
        ),
        (
            "creds",
            VolumeKind::Secret,
            node.volume_dir("kubernetes.io~secret", "creds"),
            true,
            true,
        ),
        (
            "info",
            VolumeKind::DownwardApi,
            node.volume_dir("kubernetes.io~downward-api", "info"),
            true,
            true,
        ),
        (
            "all",
            VolumeKind::Projected,
            node.volume_dir("kubernetes.io~projected", "all"),
            true,
            true,
        ),
    ];
    for (name, kind, host_path, read_only, tmpfs) in expected {
        let want = PreparedVolume {
            name: name.into(),
            kind,
            host_path,
            read_only,
            tmpfs,
        };
        assert_eq!(volumes.get(name), Some(&want), "{name}");
    }
    assert!(!node
        .pod_dir()
        .join("volumes/kubernetes.io~host-path")
        .exists());
    assert_eq!(
        volumes.updated(),
        ["conf", "creds", "info", "all"].map(String::from)
    );

    let conf = node.volume_dir("kubernetes.io~configmap", "conf");
    assert_eq!(mode(&conf), 0o777);
    assert_eq!(read(&conf.join("game.properties")), "lives=3\n");
    assert_eq!(read(&conf.join("ui.properties")), "colour=blue");
    assert_eq!(fs::read(conf.join("logo.bin")).expect("reads"), [0, 1, 2]);
    assert_eq!(
        fs::read_link(conf.join("game.properties")).expect("a link"),
        Path::new("..data/game.properties")
    );
    assert!(data_link(&conf).to_string_lossy().starts_with("..20"));
    assert_eq!(mode(&conf.join("..data/game.properties")), 0o644);

    let creds = node.volume_dir("kubernetes.io~secret", "creds");
    assert_eq!(read(&creds.join("password")), "s3cr3t");
    assert_eq!(read(&creds.join("user")), "admin");
    assert_eq!(
        read(
            &node
                .volume_dir("kubernetes.io~downward-api", "info")
                .join("labels")
        ),
        "app=\"web\""
    );
    assert_eq!(
        read(&node.volume_dir("kubernetes.io~projected", "all").join("ui")),
        "colour=blue"
    );

    // Secrets, downward API and projected volumes are on tmpfs, bounded by the node's
    // allocatable memory as no container has a memory limit.
    let size = Some(8 << 30);
    assert_eq!(
        node.tmpfs_mounts(),
        vec![
            (creds, size),
            (node.volume_dir("kubernetes.io~downward-api", "info"), size),
            (node.volume_dir("kubernetes.io~projected", "all"), size),
        ]
    );
}

#[test]
fn memory_empty_dir_size_is_the_smallest_known_bound() {
    let cases = [
        // sizeLimit below everything else.
        (
            "sizeLimit: 64Mi",
            "{limits: {memory: 1Gi}}",
            8 * GI,
            Some(64 * MI),
        ),
        // No sizeLimit: the pod's memory limit.
        ("{}", "{limits: {memory: 1Gi}}", 8 * GI, Some(GI)),
        // A sizeLimit above the pod's limit does not raise it.
        (
            "sizeLimit: 2Gi",
            "{limits: {memory: 1Gi}}",
            8 * GI,
            Some(GI),
        ),
        // No limits: the node's allocatable memory.
        ("{}", "{}", 8 * GI, Some(8 * GI)),
        // Nothing known: the kernel's default.
        ("{}", "{}", 0, None),
        ("sizeLimit: 100M", "{}", 0, Some(100_000_000)),
    ];
    for (empty_dir, resources, allocatable, want) in cases {
        let mut node = Node::new();
        node.ctx.node.allocatable_memory_bytes = allocatable;
        let empty_dir = if empty_dir == "{}" {
            "{medium: Memory}".to_owned()
        } else {
            format!("{{medium: Memory, {empty_dir}}}")
        };
        let pod = pod(&format!(
            "metadata: {{name: web}}\n\
             spec:\n  containers: [{{name: app, image: busybox, resources: {resources}}}]\n  \
             volumes: [{{name: cache, emptyDir: {empty_dir}}}]\n"
        ));
        let volumes = node.prepare(&pod, &no_objects()).expect("prepares");
        let dir = node.volume_dir("kubernetes.io~empty-dir", "cache");
        let want = want.map(|w: i64| u64::try_from(w).expect("positive"));
        assert_eq!(
            node.tmpfs_mounts(),
            vec![(dir.clone(), want)],
            "{empty_dir} {resources}"
        );
        assert!(volumes
            .get("cache")
            .is_some_and(|v| v.tmpfs && !v.read_only));
        assert_eq!(mode(&dir), 0o777);
    }
}

#[test]
fn pod_memory_limit_counts_sidecars_and_init_containers() {
    let limit = |yaml: &str| pod_memory_limit(&pod(yaml));
    let base = "metadata: {name: p}\nspec:\n";
    assert_eq!(
        limit(&format!(
            "{base}  containers:\n  - {{name: a, resources: {{limits: {{memory: 100Mi}}}}}}\n  \
             - {{name: b, resources: {{limits: {{memory: 50Mi}}}}}}\n"
        )),
        Some(150 * MI)
    );
    assert_eq!(
        limit(&format!(
            "{base}  containers:\n  - {{name: a, resources: {{limits: {{memory: 100Mi}}}}}}\n  \
             - {{name: b}}\n"
        )),
        None,
        "one container without a limit"
    );
    assert_eq!(
        limit(&format!(
            "{base}  initContainers:\n  \
             - {{name: log, restartPolicy: Always, resources: {{limits: {{memory: 10Mi}}}}}}\n  \
             - {{name: big, resources: {{limits: {{memory: 500Mi}}}}}}\n  \
             containers:\n  - {{name: a, resources: {{limits: {{memory: 100Mi}}}}}}\n"
        )),
        Some(510 * MI),
        "the init container runs beside the sidecar started before it"
    );
}

#[test]
fn config_map_items_modes_and_optional() {
    let node = Node::new();
    let pod = pod("
metadata: {name: web}
spec:
  containers: [{name: app, image: busybox}]
  volumes:
  - name: some
    configMap:
      name: conf
      defaultMode: 0o600
      items:
      - {key: game.properties, path: game/props}
      - {key: ui.properties, path: ui, mode: 0o444}
      - {key: logo.bin, path: logo}
  - name: missing-ok
    configMap: {name: nope, optional: true}
  - name: key-missing-ok
    configMap:
      name: conf
      optional: true
      items: [{key: nope, path: nope}, {key: ui.properties, path: ui}]
");
    node.prepare(&pod, &objects(CONFIG)).expect("prepares");

    let some = node.volume_dir("kubernetes.io~configmap", "some");
    assert_eq!(read(&some.join("game/props")), "lives=3\n");
    assert_eq!(
        fs::read_link(some.join("game")).expect("a link"),
        Path::new("..data/game")
    );
    assert_eq!(mode(&some.join("..data/game/props")), 0o600);
    assert_eq!(mode(&some.join("..data/ui")), 0o444);
    assert_eq!(mode(&some.join("..data/logo")), 0o600);
    assert!(!some.join("ui.properties").exists(), "only the items");

    // A missing optional object gives an empty volume, still in the writer's layout.
    let missing = node.volume_dir("kubernetes.io~configmap", "missing-ok");
    let entries: Vec<_> = fs::read_dir(&missing).expect("lists").collect();
    assert_eq!(entries.len(), 2, "..data and its directory");
    assert!(missing.join("..data").is_dir());

    let key_missing = node.volume_dir("kubernetes.io~configmap", "key-missing-ok");
    assert!(key_missing.join("ui").exists());
    assert!(!key_missing.join("nope").exists());
}

#[test]
fn missing_objects_and_keys_are_errors_unless_optional() {
    let node = Node::new();
    let cases = [
        (
            "configMap: {name: nope}",
            "volume \"v\": ConfigMap \"default/nope\" not found",
        ),
        (
            "secret: {secretName: nope}",
            "volume \"v\": Secret \"default/nope\" not found",
        ),
        (
            "configMap: {name: conf, items: [{key: nope, path: x}]}",
            "volume \"v\": ConfigMap \"default/conf\" has no key \"nope\"",
        ),
        (
            "secret: {secretName: creds, items: [{key: nope, path: x}]}",
            "volume \"v\": Secret \"default/creds\" has no key \"nope\"",
        ),
        (
            "projected: {sources: [{secret: {name: nope}}]}",
            "volume \"v\": Secret \"default/nope\" not found",
        ),
        (
            "configMap: {name: conf, items: [{key: ui.properties, path: ../x}]}",
            "volume \"v\": spec.volumes[0].configMap.items[0].path: invalid value \"../x\": \
             must not contain '..'",
        ),
        (
            "configMap: {name: conf, items: [{key: ui.properties, path: x, mode: 0o1777}]}",
            "volume \"v\": spec.volumes[0].configMap.items[0].mode: invalid value \"0o1777\": \
             must be a number between 0 and 0777 (octal), both inclusive",
        ),
    ];
    for (source, message) in cases {
        let pod = pod(&format!(
            "metadata: {{name: web}}\nspec:\n  containers: [{{name: app, image: busybox}}]\n  \
             volumes: [{{name: v, {source}}}]\n"
        ));
        let error = node.prepare(&pod, &objects(CONFIG)).expect_err(source);
        assert_eq!(error.to_string(), message, "{source}");
    }
    // Objects are looked up in the pod's namespace.
    let mut other = pod("
metadata: {name: web, namespace: other}
spec:
  containers: [{name: app, image: busybox}]
  volumes: [{name: v, configMap: {name: conf}}]
");
    other.metadata.uid = Some("other-uid".into());
    let error = node
        .prepare(&other, &objects(CONFIG))
        .expect_err("other namespace");
    assert!(
        matches!(error, VolumeError::ObjectNotFound { ref namespace, .. } if namespace == "other")
    );
}

#[test]
fn unsupported_kinds_name_the_volume_and_kind_and_do_not_stop_the_others() {
    let node = Node::new();
    let pod = pod("
metadata: {name: web}
spec:
  containers: [{name: app, image: busybox}]
  volumes:
  - {name: claim, persistentVolumeClaim: {claimName: data}}
  - {name: conf, configMap: {name: conf}}
  - {name: share, nfs: {server: nfs.local, path: /export}}
");
    let error = node
        .prepare(&pod, &objects(CONFIG))
        .expect_err("unsupported");
    assert_eq!(
        error.to_string(),
        "volume \"claim\": spec.volumes[0].persistentVolumeClaim: persistentVolumeClaim volumes \
         are not supported by bosun"
    );
    assert!(
        node.volume_dir("kubernetes.io~configmap", "conf")
            .join("ui.properties")
            .exists(),
        "the volume after the bad one was still set up"
    );

    let cases = [
        (
            "{name: v, emptyDir: {medium: HugePages}}",
            "volume \"v\": spec.volumes[0].emptyDir.medium: emptyDir medium HugePages volumes \
             are not supported by bosun",
        ),
        (
            "{name: v, projected: {sources: [{serviceAccountToken: {path: token}}]}}",
            "volume \"v\": spec.volumes[0].projected.sources[0].serviceAccountToken: projected \
             serviceAccountToken volumes are not supported by bosun",
        ),
        (
            "{name: v, downwardAPI: {items: [{path: cpu, resourceFieldRef: {resource: limits.cpu}}]}}",
            "volume \"v\": spec.volumes[0].downwardAPI.items[0].resourceFieldRef: downwardAPI \
             resourceFieldRef volumes are not supported by bosun",
        ),
        (
            "{name: v}",
            "volume \"v\": spec.volumes[0]: invalid value \"\": must specify a volume type",
        ),
        (
            "{name: v, emptyDir: {}, hostPath: {path: /tmp}}",
            "volume \"v\": spec.volumes[0]: invalid value \"\": may not specify more than 1 \
             volume type: emptyDir, hostPath",
        ),
    ];
    for (volume, message) in cases {
        let pod = pod_with_volume(volume);
        let error = node.prepare(&pod, &no_objects()).expect_err(volume);
        assert_eq!(error.to_string(), message, "{volume}");
    }
}

fn pod_with_volume(volume: &str) -> Pod {
    pod(&format!(
        "metadata: {{name: web}}\nspec:\n  containers: [{{name: app, image: busybox}}]\n  \
         volumes: [{volume}]\n"
    ))
}

#[test]
fn host_path_type_failures_name_volume_path_and_type() {
    let node = Node::new();
    let file = node.ctx.pods_dir.join("not-a-dir");
    fs::write(&file, "").expect("writes");
    let pod = pod_with_volume(&format!(
        "{{name: logs, hostPath: {{path: {}, type: Directory}}}}",
        file.display()
    ));
    let error = node.prepare(&pod, &no_objects()).expect_err("a file");
    assert_eq!(
        error.to_string(),
        format!(
            "volume \"logs\": hostPath type check failed: {} is not a directory",
            file.display()
        )
    );
    let created = node.ctx.pods_dir.join("made/here");
    let pod = pod_with_volume(&format!(
        "{{name: logs, hostPath: {{path: {}, type: DirectoryOrCreate}}}}",
        created.display()
    ));
    let volumes = node.prepare(&pod, &no_objects()).expect("creates");
    assert_eq!(mode(&created), 0o755);
    assert_eq!(
        volumes.get("logs").map(|v| v.host_path.clone()),
        Some(created)
    );
}

#[test]
fn downward_api_files() {
    let node = Node::new();
    let pod = pod(r#"
metadata:
  name: web
  labels: {app: web, tier: front}
  annotations: {build: "two\nlines"}
spec:
  containers: [{name: app, image: busybox}]
  volumes:
  - name: info
    downwardAPI:
      defaultMode: 0o400
      items:
      - {path: name, fieldRef: {fieldPath: metadata.name}}
      - {path: ns, fieldRef: {fieldPath: metadata.namespace}}
      - {path: uid, fieldRef: {fieldPath: metadata.uid}, mode: 0o444}
      - {path: labels, fieldRef: {fieldPath: metadata.labels}}
      - {path: annotations, fieldRef: {fieldPath: metadata.annotations}}
      - {path: app, fieldRef: {fieldPath: "metadata.labels['app']"}}
      - {path: none, fieldRef: {fieldPath: "metadata.labels['none']"}}
"#);
    node.prepare(&pod, &no_objects()).expect("prepares");
    let dir = node.volume_dir("kubernetes.io~downward-api", "info");
    assert_eq!(read(&dir.join("name")), "web");
    assert_eq!(read(&dir.join("ns")), "default");
    assert_eq!(read(&dir.join("uid")), UID);
    assert_eq!(read(&dir.join("labels")), "app=\"web\"\ntier=\"front\"");
    assert_eq!(read(&dir.join("annotations")), "build=\"two\\nlines\"");
    assert_eq!(read(&dir.join("app")), "web");
    assert_eq!(read(&dir.join("none")), "");
    assert_eq!(mode(&dir.join("..data/name")), 0o400);
    assert_eq!(mode(&dir.join("..data/uid")), 0o444);

    let bad = pod_with_volume(
        "{name: v, downwardAPI: {items: [{path: ip, fieldRef: {fieldPath: status.podIP}}]}}",
    );
    let error = node
        .prepare(&bad, &no_objects())
        .expect_err("not for volumes");
    assert!(
        error.to_string().starts_with(
            "volume \"v\": spec.volumes[0].downwardAPI.items[0].fieldRef.fieldPath: invalid \
             value \"status.podIP\": supported values: metadata.name"
        ),
        "{error}"
    );
}

#[test]
fn projected_sources_merge_in_order() {
    let node = Node::new();
    let pod = pod("
metadata: {name: web}
spec:
  containers: [{name: app, image: busybox}]
  volumes:
  - name: all
    projected:
      defaultMode: 0o440
      sources:
      - configMap: {name: conf}
      - secret: {name: creds, items: [{key: password, path: ui.properties, mode: 0o400}]}
      - secret: {name: nope, optional: true}
      - downwardAPI: {items: [{path: meta/name, fieldRef: {fieldPath: metadata.name}}]}
");
    node.prepare(&pod, &objects(CONFIG)).expect("prepares");
    let dir = node.volume_dir("kubernetes.io~projected", "all");
    assert_eq!(read(&dir.join("game.properties")), "lives=3\n");
    assert_eq!(mode(&dir.join("..data/game.properties")), 0o440);
    assert_eq!(
        read(&dir.join("ui.properties")),
        "s3cr3t",
        "a later source wins"
    );
    assert_eq!(mode(&dir.join("..data/ui.properties")), 0o400);
    assert_eq!(read(&dir.join("meta/name")), "web");
}

#[test]
fn refresh_writes_nothing_until_an_object_changes_then_swaps_atomically() {
    let node = Node::new();
    let pod = pod("
metadata: {name: web}
spec:
  containers: [{name: app, image: busybox}]
  volumes:
  - {name: conf, configMap: {name: conf}}
  - {name: creds, secret: {secretName: creds}}
  - {name: cache, emptyDir: {medium: Memory}}
");
    let first = node.prepare(&pod, &objects(CONFIG)).expect("prepares");
    assert_eq!(first.updated(), ["conf", "creds"].map(String::from));
    let conf = node.volume_dir("kubernetes.io~configmap", "conf");
    let creds = node.volume_dir("kubernetes.io~secret", "creds");
    let old_ts = data_link(&conf);
    let old_secret_ts = data_link(&creds);
    let calls = node.mounter.calls().len();
    assert_eq!(calls, 2, "two tmpfs: the secret and the Memory emptyDir");

    let again = node.prepare(&pod, &objects(CONFIG)).expect("refreshes");
    assert!(again.updated().is_empty());
    assert_eq!(
        again,
        PodVolumes {
            updated: Vec::new(),
            ..first
        }
    );
    assert_eq!(data_link(&conf), old_ts);
    assert_eq!(
        node.mounter.calls().len(),
        calls,
        "mounted already: no new mount"
    );

    // What a running container holds open keeps the old content.
    let mut held = fs::File::open(conf.join("ui.properties")).expect("opens");
    let changed = CONFIG.replace("colour=blue", "colour=red").replace(
        "  game.properties: |\n    lives=3\n",
        "  new.properties: x\n",
    );
    let refreshed = node.prepare(&pod, &objects(&changed)).expect("refreshes");
    assert_eq!(refreshed.updated(), ["conf"].map(String::from));
    let new_ts = data_link(&conf);
    assert_ne!(new_ts, old_ts);
    assert!(
        !conf.join(&old_ts).exists(),
        "the old timestamped directory is removed"
    );
    assert_eq!(read(&conf.join("ui.properties")), "colour=red");
    assert_eq!(read(&conf.join("new.properties")), "x");
    assert!(
        fs::symlink_metadata(conf.join("game.properties")).is_err(),
        "a key that went away goes away"
    );
    let mut old_content = String::new();
    std::io::Read::read_to_string(&mut held, &mut old_content).expect("reads");
    assert_eq!(old_content, "colour=blue");
    assert_eq!(
        data_link(&creds),
        old_secret_ts,
        "the secret did not change"
    );
}

#[test]
fn prepare_picks_up_after_a_restart() {
    let node = Node::new();
    let pod = pod_with_volume("{name: creds, secret: {secretName: creds}}");
    node.prepare(&pod, &objects(CONFIG)).expect("prepares");
    // A new process: same mount table, nothing in memory.
    let fresh = prepare(&pod, &node.ctx, &objects(CONFIG), &node.mounter).expect("adopts");
    assert!(fresh.updated().is_empty());
    assert_eq!(node.tmpfs_mounts().len(), 1);
}

#[test]
fn a_failed_mount_is_an_error_naming_the_volume() {
    let node = Node::new();
    node.mounter
        .fail_with(Some(std::io::ErrorKind::PermissionDenied));
    let pod = pod_with_volume("{name: cache, emptyDir: {medium: Memory}}");
    let error = node.prepare(&pod, &no_objects()).expect_err("cannot mount");
    assert!(
        error
            .to_string()
            .starts_with("volume \"cache\": mounting a tmpfs on "),
        "{error}"
    );
}

const MOUNTS_POD: &str = "
metadata: {name: web}
spec:
  containers:
  - name: app
    image: busybox
    env: [{name: POD_NAME, value: web}]
    volumeMounts:
    - {name: scratch, mountPath: /scratch}
    - {name: conf, mountPath: /etc/conf}
    - {name: scratch, mountPath: /logs, subPathExpr: $(POD_NAME)/logs, readOnly: true}
    - {name: host, mountPath: /host, mountPropagation: HostToContainer}
    - {name: scratch, mountPath: /nested, subPath: a/b}
  volumes:
  - {name: scratch, emptyDir: {}}
  - {name: conf, configMap: {name: conf}}
  - {name: host, hostPath: {path: /var/log}}
";

fn envs(pairs: &[(&str, &str)]) -> Vec<api::KeyValue> {
    pairs
        .iter()
        .map(|(key, value)| api::KeyValue {
            key: (*key).into(),
            value: (*value).into(),
        })
        .collect()
}

#[test]
fn container_mounts_in_kubelet_order() {
    let node = Node::new();
    let pod = pod(MOUNTS_POD);
    let volumes = node.prepare(&pod, &objects(CONFIG)).expect("prepares");
    let app = container(&pod, "app");
    let mounts = container_mounts(
        &pod,
        app,
        &volumes,
        &facts("10.244.0.5"),
        &envs(&[("POD_NAME", "web")]),
    )
    .expect("mounts");

    let scratch = node.volume_dir("kubernetes.io~empty-dir", "scratch");
    let conf = node.volume_dir("kubernetes.io~configmap", "conf");
    let mount = |container_path: &str, host_path: &Path, readonly: bool, propagation| api::Mount {
        container_path: container_path.into(),
        host_path: host_path.to_string_lossy().into_owned(),
        readonly,
        propagation: propagation as i32,
        ..Default::default()
    };
    let private = api::MountPropagation::PropagationPrivate;
    assert_eq!(mounts.len(), 7, "{mounts:#?}");
    assert_eq!(mounts[0], mount("/scratch", &scratch, false, private));
    assert_eq!(
        mounts[1],
        mount("/etc/conf", &conf, true, private),
        "configMaps are read-only"
    );
    assert_eq!(
        mounts[2],
        mount("/logs", &scratch.join("web/logs"), true, private)
    );
    assert_eq!(
        mounts[3],
        mount(
            "/host",
            Path::new("/var/log"),
            false,
            api::MountPropagation::PropagationHostToContainer
        )
    );
    assert_eq!(
        mounts[4],
        mount("/nested", &scratch.join("a/b"), false, private)
    );
    assert_eq!(
        mounts[5],
        mount(
            "/etc/hosts",
            &node.pod_dir().join("etc-hosts"),
            false,
            private
        )
    );
    assert_eq!(mounts[6].container_path, "/dev/termination-log");
    let termination_file = PathBuf::from(&mounts[6].host_path);
    assert_eq!(
        termination_file.parent(),
        Some(node.pod_dir().join("containers/app").as_path())
    );
    assert_eq!(mode(&termination_file), 0o666);

    // subPath directories are created with the volume's mode.
    assert_eq!(mode(&scratch.join("web")), 0o777);
    assert_eq!(mode(&scratch.join("a/b")), 0o777);
    assert!(read(&node.pod_dir().join("etc-hosts")).ends_with("10.244.0.5\tweb\n"));

    // Each container instance gets its own termination-log file.
    let next = container_mounts(
        &pod,
        app,
        &volumes,
        &facts("10.244.0.5"),
        &envs(&[("POD_NAME", "web")]),
    )
    .expect("mounts");
    assert_ne!(next[6].host_path, mounts[6].host_path);
    assert_eq!(
        termination_message_file(&next, "/dev/termination-log"),
        Some(PathBuf::from(&next[6].host_path))
    );
}

#[test]
fn etc_hosts_is_skipped_without_an_ip_or_when_the_container_mounts_it() {
    let node = Node::new();
    let pod = pod("
metadata: {name: web}
spec:
  containers:
  - name: own
    image: busybox
    terminationMessagePath: ''
    volumeMounts: [{name: hosts, mountPath: /etc/hosts, subPath: hosts}]
  - name: plain
    image: busybox
    terminationMessagePath: /tmp/msg
  volumes: [{name: hosts, emptyDir: {}}]
");
    let volumes = node.prepare(&pod, &no_objects()).expect("prepares");
    let own = container_mounts(
        &pod,
        container(&pod, "own"),
        &volumes,
        &facts("10.0.0.1"),
        &[],
    )
    .expect("mounts");
    let paths: Vec<&str> = own.iter().map(|m| m.container_path.as_str()).collect();
    assert_eq!(
        paths,
        ["/etc/hosts"],
        "its own /etc/hosts, no termination log"
    );
    assert!(own[0]
        .host_path
        .ends_with("kubernetes.io~empty-dir/hosts/hosts"));

    let no_ip = container_mounts(
        &pod,
        container(&pod, "plain"),
        &volumes,
        &RuntimeFacts::default(),
        &[],
    )
    .expect("mounts");
    let paths: Vec<&str> = no_ip.iter().map(|m| m.container_path.as_str()).collect();
    assert_eq!(paths, ["/tmp/msg"]);
}

#[test]
fn etc_hosts_content_follows_the_pod() {
    let node = Node::new();
    let pod = pod("
metadata: {name: web-0}
spec:
  hostname: db
  subdomain: dbs
  setHostnameAsFQDN: true
  hostAliases: [{ip: 10.1.2.3, hostnames: [foo.remote, bar.remote]}]
  containers: [{name: app, image: busybox}]
");
    let volumes = node.prepare(&pod, &no_objects()).expect("prepares");
    let facts = RuntimeFacts {
        pod_ip: "10.244.0.9".into(),
        pod_ips: vec!["10.244.0.9".into(), "fd00::9".into()],
        restart_count: 0,
    };
    container_mounts(&pod, container(&pod, "app"), &volumes, &facts, &[]).expect("mounts");
    let content = read(&node.pod_dir().join("etc-hosts"));
    assert!(
        content.ends_with(
            "fe00::2\tip6-allrouters\n\
             10.244.0.9\tdb.dbs.default.svc.cluster.local\tdb\n\
             fd00::9\tdb.dbs.default.svc.cluster.local\tdb\n\
             \n\
             # Entries added by HostAliases.\n\
             10.1.2.3\tfoo.remote\tbar.remote\n"
        ),
        "{content}"
    );
    assert!(content.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
}

#[test]
fn host_network_pods_get_a_copy_of_the_nodes_hosts_file() {
    let node = Node::new();
    let pod = pod("
metadata: {name: web}
spec:
  hostNetwork: true
  containers: [{name: app, image: busybox}]
");
    let mut volumes = node.prepare(&pod, &no_objects()).expect("prepares");
    assert_eq!(
        volumes.hosts,
        HostsSource::Node {
            file: PathBuf::from("/etc/hosts")
        }
    );
    let node_hosts = node.ctx.pods_dir.join("node-hosts");
    fs::write(&node_hosts, "127.0.0.1 localhost\n192.168.1.10 node-a\n").expect("writes");
    volumes.hosts = HostsSource::Node {
        file: node_hosts.clone(),
    };
    let mounts = container_mounts(
        &pod,
        container(&pod, "app"),
        &volumes,
        &RuntimeFacts::default(),
        &[],
    )
    .expect("mounts");
    assert_eq!(mounts[0].container_path, "/etc/hosts");
    assert_eq!(
        read(&node.pod_dir().join("etc-hosts")),
        "# Kubernetes-managed hosts file (host network).\n\
         127.0.0.1 localhost\n192.168.1.10 node-a\n"
    );
}

#[test]
fn bad_volume_mounts_name_the_container_and_the_mount() {
    let node = Node::new();
    let outside = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "{name: nope, mountPath: /x}",
            "container \"app\": volumeMounts[0]: cannot find volume \"nope\" to mount into the \
             container",
        ),
        (
            "{name: scratch, mountPath: /x, subPath: ../../etc}",
            "container \"app\": volumeMounts[0].subPath: invalid value \"../../etc\": must not \
             contain '..'",
        ),
        (
            "{name: scratch, mountPath: /x, subPath: /etc}",
            "container \"app\": volumeMounts[0].subPath: invalid value \"/etc\": must be a \
             relative path",
        ),
        (
            "{name: scratch, mountPath: /x, subPathExpr: $(NOPE)/$(EMPTY)}",
            "container \"app\": volumeMounts[0].subPathExpr: invalid value \"$(NOPE)/$(EMPTY)\": \
             missing value for EMPTY, NOPE",
        ),
        (
            "{name: scratch, mountPath: /x, subPathExpr: $(DOTS)}",
            "container \"app\": volumeMounts[0].subPathExpr: invalid value \"..\": must not \
             contain '..'",
        ),
        (
            "{name: scratch, mountPath: /x, subPath: a, subPathExpr: b}",
            "container \"app\": volumeMounts[0].subPathExpr: invalid value \"b\": subPath and \
             subPathExpr are mutually exclusive",
        ),
        (
            "{name: scratch, mountPath: /x, mountPropagation: Bidirectional}",
            "container \"app\": volumeMounts[0].mountPropagation: invalid value \
             \"Bidirectional\": Bidirectional mount propagation is available only to \
             privileged containers",
        ),
        (
            "{name: scratch, mountPath: /x, mountPropagation: Sideways}",
            "container \"app\": volumeMounts[0].mountPropagation: invalid value \"Sideways\": \
             supported values: \"None\", \"HostToContainer\", \"Bidirectional\"",
        ),
        (
            "{name: scratch, mountPath: /x, subPath: escape/etc}",
            "container \"app\": volumeMounts[0].subPath: invalid value \"escape/etc\": leads out \
             of the volume through a symbolic link",
        ),
    ];
    for (volume_mount, message) in cases {
        let pod = pod(&format!(
            "metadata: {{name: web}}\n\
             spec:\n  containers: [{{name: app, image: busybox, volumeMounts: [{volume_mount}]}}]\n  \
             volumes: [{{name: scratch, emptyDir: {{}}}}]\n"
        ));
        let volumes = node.prepare(&pod, &no_objects()).expect("prepares");
        let escape = node
            .volume_dir("kubernetes.io~empty-dir", "scratch")
            .join("escape");
        if fs::symlink_metadata(&escape).is_err() {
            // What a container could leave in its emptyDir for another to trip over.
            symlink(outside.path(), &escape).expect("links");
        }
        let envs = envs(&[("EMPTY", ""), ("DOTS", "..")]);
        let error = container_mounts(
            &pod,
            container(&pod, "app"),
            &volumes,
            &facts("10.0.0.1"),
            &envs,
        )
        .expect_err(volume_mount);
        assert_eq!(error.to_string(), message, "{volume_mount}");
    }
    assert!(
        fs::read_dir(outside.path())
            .expect("lists")
            .next()
            .is_none(),
        "nothing was created outside the volume"
    );
}

#[test]
fn sub_paths_follow_links_that_stay_in_the_volume() {
    let node = Node::new();
    let pod = pod("
metadata: {name: web}
spec:
  containers:
  - name: priv
    image: busybox
    securityContext: {privileged: true}
    volumeMounts:
    - {name: scratch, mountPath: /data, subPath: current/file.txt, mountPropagation: Bidirectional}
    - {name: conf, mountPath: /etc/ui.properties, subPath: ui.properties}
  volumes:
  - {name: scratch, emptyDir: {}}
  - {name: conf, configMap: {name: conf}}
");
    let volumes = node.prepare(&pod, &objects(CONFIG)).expect("prepares");
    let scratch = node.volume_dir("kubernetes.io~empty-dir", "scratch");
    fs::create_dir(scratch.join("v1")).expect("creates");
    fs::write(scratch.join("v1/file.txt"), "x").expect("writes");
    symlink("v1", scratch.join("current")).expect("links");
    let mounts = container_mounts(
        &pod,
        container(&pod, "priv"),
        &volumes,
        &facts("10.0.0.1"),
        &[],
    )
    .expect("mounts");
    assert_eq!(
        mounts[0].host_path,
        scratch.join("v1/file.txt").to_string_lossy()
    );
    assert_eq!(
        mounts[0].propagation,
        api::MountPropagation::PropagationBidirectional as i32
    );
    // A single file of a configMap: its current version, read-only (and, as with kubelet,
    // not updated when the configMap changes).
    let conf = node.volume_dir("kubernetes.io~configmap", "conf");
    let file = conf.join(data_link(&conf)).join("ui.properties");
    assert_eq!(mounts[1].host_path, file.to_string_lossy());
    assert!(mounts[1].readonly);
}

#[test]
fn cleanup_unmounts_deepest_first_and_removes_only_the_pod_directory() {
    let node = Node::new();
    let pod = pod("
metadata: {name: web}
spec:
  containers: [{name: app, image: busybox}]
  volumes:
  - {name: cache, emptyDir: {medium: Memory}}
  - {name: creds, secret: {secretName: creds}}
  - {name: scratch, emptyDir: {}}
");
    node.prepare(&pod, &objects(CONFIG)).expect("prepares");
    let pod_dir = node.pod_dir();
    let cache = node.volume_dir("kubernetes.io~empty-dir", "cache");
    // Something a container propagated back with Bidirectional, inside the tmpfs.
    let nested = cache.join("inner");
    fs::create_dir(&nested).expect("creates");
    node.mounter.mount_tmpfs(&nested, None).expect("mounts");
    // A link a container left in its emptyDir, pointing at the node's files.
    let outside = tempfile::tempdir().expect("tempdir");
    fs::write(outside.path().join("precious"), "keep").expect("writes");
    let scratch = node.volume_dir("kubernetes.io~empty-dir", "scratch");
    symlink(outside.path(), scratch.join("escape")).expect("links");

    let before = node.mounter.calls().len();
    cleanup(&node.ctx.pods_dir, UID, &node.mounter).expect("cleans up");
    let unmounts: Vec<MountCall> = node.mounter.calls().split_off(before);
    assert_eq!(unmounts.len(), 3);
    assert_eq!(unmounts[0], MountCall::Unmount { target: nested });
    assert!(node.mounter.mounted().is_empty());
    assert!(!pod_dir.exists());
    assert_eq!(read(&outside.path().join("precious")), "keep");

    cleanup(&node.ctx.pods_dir, UID, &node.mounter).expect("nothing left to do");
    assert!(matches!(
        cleanup(&node.ctx.pods_dir, "../etc", &node.mounter),
        Err(VolumeError::InvalidUid { .. })
    ));
}

#[test]
fn cleanup_keeps_the_directory_while_anything_is_mounted() {
    let node = Node::new();
    let pod = pod_with_volume("{name: cache, emptyDir: {medium: Memory}}");
    node.prepare(&pod, &no_objects()).expect("prepares");
    node.mounter
        .fail_with(Some(std::io::ErrorKind::ResourceBusy));
    let error = cleanup(&node.ctx.pods_dir, UID, &node.mounter).expect_err("busy");
    assert!(matches!(error, VolumeError::Unmount { .. }), "{error}");
    assert!(node.pod_dir().join("volumes").exists());
    node.mounter.fail_with(None);
    cleanup(&node.ctx.pods_dir, UID, &node.mounter).expect("cleans up");
    assert!(!node.pod_dir().exists());
}

#[test]
fn cleanup_removes_a_link_in_place_of_the_pod_directory_without_following_it() {
    let node = Node::new();
    let outside = tempfile::tempdir().expect("tempdir");
    fs::write(outside.path().join("precious"), "keep").expect("writes");
    fs::create_dir_all(&node.ctx.pods_dir).expect("creates");
    symlink(outside.path(), node.ctx.pods_dir.join(UID)).expect("links");
    cleanup(&node.ctx.pods_dir, UID, &node.mounter).expect("cleans up");
    assert!(fs::symlink_metadata(node.ctx.pods_dir.join(UID)).is_err());
    assert_eq!(read(&outside.path().join("precious")), "keep");
    assert!(node.mounter.calls().is_empty());
}

#[test]
fn lists_pod_directories() {
    let node = Node::new();
    assert!(pod_uids(&node.ctx.pods_dir).expect("lists").is_empty());
    let pod = pod_with_volume("{name: scratch, emptyDir: {}}");
    node.prepare(&pod, &no_objects()).expect("prepares");
    assert_eq!(pod_uids(&node.ctx.pods_dir).expect("lists"), [UID]);
}

/// Real tmpfs mounts through [`HostMounter`]: needs root, and skips itself (saying why) where
/// mounting is not allowed.
#[test]
fn real_tmpfs_is_mounted_sized_and_cleaned_up() {
    let root = tempfile::tempdir().expect("tempdir");
    let probe = root.path().join("probe");
    fs::create_dir(&probe).expect("creates");
    if let Err(error) = HostMounter.mount_tmpfs(&probe, Some(1 << 20)) {
        eprintln!("skipping: cannot mount a tmpfs here: {error}");
        return;
    }
    HostMounter.unmount(&probe).expect("unmounts the probe");

    let ctx = NodeContext {
        node_name: "node-a".into(),
        pods_dir: root.path().join("pods"),
        ..NodeContext::default()
    };
    let pod = pod("
metadata: {name: web}
spec:
  containers: [{name: app, image: busybox}]
  volumes:
  - {name: cache, emptyDir: {medium: Memory, sizeLimit: 4Mi}}
  - {name: creds, secret: {secretName: creds}}
");
    let volumes = prepare(&pod, &ctx, &objects(CONFIG), &HostMounter).expect("prepares");
    let pod_dir = volumes.pod_dir().to_path_buf();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mounted = HostMounter
            .mount_points_under(&pod_dir)
            .expect("reads mountinfo");
        let cache = pod_dir.join("volumes/kubernetes.io~empty-dir/cache");
        let creds = pod_dir.join("volumes/kubernetes.io~secret/creds");
        assert_eq!(mounted.len(), 2, "{mounted:?}");
        assert!(
            mounted.contains(&cache) && mounted.contains(&creds),
            "{mounted:?}"
        );
        let statfs = nix::sys::statfs::statfs(&cache).expect("statfs");
        assert_eq!(statfs.filesystem_type(), nix::sys::statfs::TMPFS_MAGIC);
        let size = statfs.blocks() * u64::try_from(statfs.block_size()).unwrap_or(0);
        assert_eq!(size, 4 << 20);
        assert_eq!(read(&creds.join("password")), "s3cr3t");
        assert_eq!(
            mode(&cache),
            0o1777,
            "a tmpfs root keeps its own mode, as in kubelet"
        );

        let again = prepare(&pod, &ctx, &objects(CONFIG), &HostMounter).expect("refreshes");
        assert!(again.updated().is_empty());
        let remounted = HostMounter
            .mount_points_under(&pod_dir)
            .expect("reads mountinfo");
        assert_eq!(remounted.len(), 2, "no second mount: {remounted:?}");
    }));
    cleanup(&ctx.pods_dir, UID, &HostMounter).expect("cleans up");
    assert!(HostMounter
        .mount_points_under(&pod_dir)
        .expect("reads mountinfo")
        .is_empty());
    assert!(!pod_dir.exists());
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
