//! The manifests of `packaging/kubernetes/`: every document decodes strictly into its
//! k8s-openapi type (a field the type does not know is an error, as `kubectl apply
//! --validate=strict` makes it), the DaemonSet has what `bosun proxy` needs, and against a
//! real kube-apiserver (1.20.2) `kubectl apply --dry-run=server` accepts them all and the
//! ServiceAccount's ClusterRole is enough for `bosun proxy` and no more: a run with that
//! identity programs a Service, one whose role lacks EndpointSlices says it is forbidden,
//! and the account is refused what bosun proxy never does.
//!
//! Host-wide names are this test's own: the pods' namespaces `bpk-*` and addresses in
//! 10.234.9.0/24, the ClusterIP 10.96.234.30, the bpffs directory
//! /sys/fs/bpf/bosun-test-packaging, state under its control plane's directory.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bosun_tests::cluster::free_port;
use bosun_tests::control_plane::{self, ControlPlane};
use bosun_tests::netns::{ask_tcp, NetnsPod};
use bosun_tests::traffic;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;
use serde::{Deserialize as _, Serialize};
use serde_json::Value;

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");
const BPF_DIR: &str = "/sys/fs/bpf/bosun-test-packaging";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 234, 30);
const WITHIN: Duration = Duration::from_secs(30);
const CONNECT: Duration = Duration::from_secs(2);

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/kubernetes")
}

/// Every YAML document of every manifest file, with the file it came from.
fn documents() -> Result<Vec<(PathBuf, Value)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifests_dir())?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|path| path.extension().is_some_and(|ext| ext == "yaml"));
    files.sort();
    let mut documents = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(document)
                .with_context(|| format!("{}: not YAML", file.display()))?;
            if !value.is_null() {
                documents.push((file.clone(), value));
            }
        }
    }
    Ok(documents)
}

/// Decodes `value` into `T` and fails, naming the field, if the type dropped anything: an
/// unknown (misspelt, misplaced or too new) field, which a lenient decoder ignores.
fn decode_strictly<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T> {
    let typed: T = serde_json::from_value(value.clone())?;
    let back = serde_json::to_value(&typed)?;
    unknown_fields(value, &back, "")?;
    Ok(typed)
}

fn unknown_fields(given: &Value, decoded: &Value, at: &str) -> Result<()> {
    match (given, decoded) {
        (Value::Object(given), Value::Object(decoded)) => {
            for (key, value) in given {
                let path = format!("{at}.{key}");
                match decoded.get(key) {
                    Some(decoded) => unknown_fields(value, decoded, &path)?,
                    // An explicit null or empty value the type leaves out is no unknown field.
                    None if value.is_null() => {}
                    None => bail!("unknown field {path}"),
                }
            }
            Ok(())
        }
        (Value::Array(given), Value::Array(decoded)) => {
            anyhow::ensure!(given.len() == decoded.len(), "{at}: items were dropped");
            for (i, (given, decoded)) in given.iter().zip(decoded).enumerate() {
                unknown_fields(given, decoded, &format!("{at}[{i}]"))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The manifests' objects, decoded by kind.
#[derive(Default)]
struct Objects {
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    daemon_sets: Vec<DaemonSet>,
}

fn objects() -> Result<Objects> {
    let mut objects = Objects::default();
    for (file, value) in documents()? {
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        let api_version = value["apiVersion"].as_str().unwrap_or_default().to_owned();
        let decoded = match (api_version.as_str(), kind.as_str()) {
            ("v1", "ServiceAccount") => {
                decode_strictly(&value).map(|o| objects.service_accounts.push(o))
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                decode_strictly(&value).map(|o| objects.cluster_roles.push(o))
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                decode_strictly(&value).map(|o| objects.bindings.push(o))
            }
            ("apps/v1", "DaemonSet") => {
                decode_strictly(&value).map(|o| objects.daemon_sets.push(o))
            }
            _ => Err(anyhow::anyhow!("unexpected {api_version} {kind}")),
        };
        decoded
            .with_context(|| format!("{}: {kind} {}", file.display(), value["metadata"]["name"]))?;
    }
    Ok(objects)
}

#[test]
fn every_manifest_decodes_strictly_into_its_kubernetes_type() -> Result<()> {
    let objects = objects()?;
    assert_eq!(objects.service_accounts.len(), 1);
    assert_eq!(objects.daemon_sets.len(), 1);
    assert_eq!(
        objects.cluster_roles.len(),
        2,
        "bosun:proxy and bosun:network-policy"
    );
    assert_eq!(objects.bindings.len(), 6);
    Ok(())
}

#[test]
fn an_unknown_field_is_an_error() -> Result<()> {
    let (_, mut daemon_set) = documents()?
        .into_iter()
        .find(|(_, v)| v["kind"] == "DaemonSet")
        .context("the DaemonSet")?;
    daemon_set["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilites"] =
        serde_json::json!({"add": ["BPF"]});
    let error = decode_strictly::<DaemonSet>(&daemon_set)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(".spec.template.spec.containers[0].securityContext.capabilites"),
        "{error}"
    );
    Ok(())
}

#[test]
fn the_daemon_set_runs_bosun_proxy_as_kube_proxy_runs() -> Result<()> {
    let objects = objects()?;
    let daemon_set = &objects.daemon_sets[0];
    let pod = daemon_set
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .context("a pod spec")?;
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("bosun-proxy"));
    // Tolerates every taint: one toleration with operator Exists and no key.
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "{tolerations:?}"
    );
    let container = &pod.containers[0];
    assert_eq!(container.args.as_deref().unwrap_or_default()[0], "proxy");
    let security = container
        .security_context
        .as_ref()
        .context("a security context")?;
    assert_ne!(
        security.privileged,
        Some(true),
        "capabilities, not privileged"
    );
    let mut added = security
        .capabilities
        .as_ref()
        .and_then(|c| c.add.clone())
        .unwrap_or_default();
    added.sort();
    assert_eq!(
        added,
        ["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_RESOURCE"]
    );
    let readiness = container
        .readiness_probe
        .as_ref()
        .context("a readiness probe")?;
    let get = readiness
        .http_get
        .as_ref()
        .context("an HTTP readiness probe")?;
    assert_eq!(get.path.as_deref(), Some("/healthz"));
    assert_eq!(
        get.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(10256)
    );

    // The host paths, and where they are mounted with which propagation.
    let host_paths: BTreeMap<&str, &str> = pod
        .volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter_map(|v| Some((v.name.as_str(), v.host_path.as_ref()?.path.as_str())))
        .collect();
    let mounts: BTreeMap<&str, (&str, Option<&str>)> = container
        .volume_mounts
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|m| {
            (
                m.name.as_str(),
                (m.mount_path.as_str(), m.mount_propagation.as_deref()),
            )
        })
        .collect();
    let mounted = |host: &str| {
        let (name, _) = host_paths
            .iter()
            .find(|(_, path)| **path == host)
            .unwrap_or_else(|| panic!("no hostPath volume of {host}: {host_paths:?}"));
        mounts[name]
    };
    assert_eq!(
        mounted("/sys/fs/bpf"),
        ("/sys/fs/bpf", Some("HostToContainer"))
    );
    let (cgroup_at, propagation) = mounted("/sys/fs/cgroup");
    assert_eq!(propagation, Some("HostToContainer"));
    assert_eq!(mounted("/run/xtables.lock").0, "/run/xtables.lock");
    // bosun attaches to the host's cgroup2 root where it is mounted, not the container's own.
    let env = container.env.as_deref().unwrap_or_default();
    assert!(
        env.iter()
            .any(|e| e.name == "BOSUN_CGROUP2_ROOT" && e.value.as_deref() == Some(cgroup_at)),
        "{env:?}"
    );
    // A rolling update, one node at a time: the pinned maps forward while a pod is replaced.
    let strategy = daemon_set
        .spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .context("an update strategy")?;
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    Ok(())
}

#[test]
fn the_proxy_role_reads_what_bosun_proxy_reads_and_writes_only_events() -> Result<()> {
    let objects = objects()?;
    let role = objects
        .cluster_roles
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some("bosun:proxy"))
        .context("ClusterRole bosun:proxy")?;
    let mut granted = Vec::new();
    for rule in role.rules.as_deref().unwrap_or_default() {
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                for verb in &rule.verbs {
                    granted.push(format!("{verb} {resource}.{group}"));
                }
            }
        }
    }
    granted.sort();
    let mut wanted: Vec<String> = ["get", "list", "watch"]
        .iter()
        .flat_map(|verb| {
            [
                "services.",
                "namespaces.",
                "pods.",
                "nodes.",
                "endpointslices.discovery.k8s.io",
                "networkpolicies.networking.k8s.io",
            ]
            .map(|resource| format!("{verb} {resource}"))
        })
        .chain(["create", "patch"].iter().flat_map(|verb| {
            ["events.", "events.events.k8s.io"].map(|resource| format!("{verb} {resource}"))
        }))
        .collect();
    wanted.sort();
    assert_eq!(granted, wanted);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Against a real API server.

fn at(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

/// The name of whoever answered a connection to `to`.
fn name_at(to: SocketAddr) -> Result<String> {
    Ok(ask_tcp(to, CONNECT)?.name)
}

/// A kubeconfig for a ServiceAccount of kube-system: the cluster of the admin kubeconfig and
/// the account's token, as a pod of the DaemonSet would have it mounted.
async fn service_account_kubeconfig(plane: &ControlPlane, account: &str) -> Result<PathBuf> {
    let deadline = tokio::time::Instant::now() + WITHIN;
    // kube-controller-manager's token controller makes the account's token Secret (1.20).
    let secret = loop {
        let name = plane
            .kubectl([
                "-n",
                "kube-system",
                "get",
                "serviceaccount",
                account,
                "-o",
                "jsonpath={.secrets[0].name}",
            ])
            .await
            .unwrap_or_default();
        if !name.trim().is_empty() {
            break name.trim().to_owned();
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no token Secret for ServiceAccount {account}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let encoded = plane
        .kubectl([
            "-n",
            "kube-system",
            "get",
            "secret",
            &secret,
            "-o",
            "jsonpath={.data.token}",
        ])
        .await?;
    use base64::Engine as _;
    let token = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .context("the token's base64")?,
    )?;
    let admin: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(plane.admin_kubeconfig())?)?;
    let cluster = admin["clusters"][0]["cluster"].clone();
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": cluster}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "default", "context": {"cluster": "cluster", "user": account}}],
        "current-context": "default",
    });
    let path = plane.dir().join(format!("{account}.kubeconfig"));
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig)?)?;
    Ok(path)
}

/// `kubectl auth can-i VERB RESOURCE --as WHO`: "yes" or "no" (kubectl exits 1 for "no").
async fn can_i(plane: &ControlPlane, verb: &str, resource: &str, who: &str) -> Result<String> {
    let output = tokio::process::Command::new(plane.kubectl_path())
        .arg("--kubeconfig")
        .arg(plane.admin_kubeconfig())
        .args(["auth", "can-i", verb, resource, "--as", who])
        .output()
        .await?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// `bosun proxy` with `kubeconfig`, killed when dropped; its log in `log`.
fn start_proxy(
    kubeconfig: &Path,
    state: &Path,
    healthz: u16,
    log: &Path,
) -> Result<tokio::process::Child> {
    let file = std::fs::File::create(log).context("the proxy's log")?;
    tokio::process::Command::new(BOSUN)
        .arg("proxy")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "--hostname-override",
            "packaging-node",
            "--bpf-dir",
            BPF_DIR,
            // The machine's own uplink is not this test's to serve node ports on.
            "--external-interfaces=none",
        ])
        .arg("--state-dir")
        .arg(state)
        .arg(format!("--healthz-bind-address=127.0.0.1:{healthz}"))
        .arg("--metrics-bind-address=")
        .env("RUST_LOG", "bosun=debug")
        .stdout(Stdio::null())
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .context("starting bosun proxy")
}

async fn cleanup() -> Result<()> {
    let out = tokio::process::Command::new(BOSUN)
        .args(["proxy", "--cleanup", "--bpf-dir", BPF_DIR])
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "bosun proxy --cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn service(ips: &[Ipv4Addr]) -> String {
    let endpoints: String = ips
        .iter()
        .map(|ip| format!("  - addresses: [\"{ip}\"]\n    conditions: {{ready: true}}\n"))
        .collect();
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIP: {VIP}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
{endpoints}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_accepts_the_manifests_and_the_proxy_runs_with_its_service_account(
) -> Result<()> {
    control_plane::require();
    cleanup().await?;
    let plane = ControlPlane::start("packaging").await?;
    let dir = plane.dir().to_owned();
    let result = with_control_plane(&plane, &dir).await;
    if result.is_err() {
        for log in ["proxy.log", "proxy-less.log"] {
            eprintln!(
                "--- {log} ---\n{}",
                std::fs::read_to_string(dir.join(log)).unwrap_or_default()
            );
        }
    }
    let cleaned = cleanup().await;
    plane.shutdown().await?;
    result.and(cleaned)
}

async fn with_control_plane(plane: &ControlPlane, dir: &Path) -> Result<()> {
    let manifests = manifests_dir();
    let manifests = manifests.to_string_lossy();
    // The server's own validation and admission, without keeping anything.
    let dry = plane
        .kubectl(["apply", "--dry-run=server", "-f", &manifests])
        .await?;
    assert!(
        dry.contains("daemonset.apps/bosun-proxy created (server dry run)"),
        "{dry}"
    );
    assert!(
        dry.contains("clusterrole.rbac.authorization.k8s.io/bosun:proxy created (server dry run)"),
        "{dry}"
    );

    plane
        .kubectl(["apply", "-f", &format!("{manifests}/proxy-rbac.yaml")])
        .await?;
    let who = "system:serviceaccount:kube-system:bosun-proxy";
    // What bosun proxy does is allowed, what it never does is refused.
    for (verb, resource, allowed) in [
        ("watch", "endpointslices.discovery.k8s.io", "yes"),
        ("list", "networkpolicies.networking.k8s.io", "yes"),
        ("create", "events", "yes"),
        ("list", "secrets", "no"),
        ("create", "pods", "no"),
        ("delete", "services", "no"),
        ("update", "nodes", "no"),
    ] {
        let answer = can_i(plane, verb, resource, who).await?;
        assert_eq!(answer, allowed, "may {who} {verb} {resource}?");
    }

    let mut a = NetnsPod::create("bpk-a", "bpkh0", Ipv4Addr::new(10, 234, 9, 0))?;
    a.serve_tcp(8080, "a")?;
    let web = dir.join("web.yaml");
    std::fs::write(&web, service(&[a.ip()]))?;
    plane
        .kubectl(["apply", "-f", &web.to_string_lossy()])
        .await?;

    // The DaemonSet's identity: the Service is programmed and answers through the ClusterIP.
    let kubeconfig = service_account_kubeconfig(plane, "bosun-proxy").await?;
    let healthz = free_port()?;
    let proxy = start_proxy(
        &kubeconfig,
        &dir.join("proxy-state"),
        healthz,
        &dir.join("proxy.log"),
    )?;
    traffic::until_answered_by(at(VIP, 80), &["a"], name_at, WITHIN).await?;
    let log = std::fs::read_to_string(dir.join("proxy.log"))?;
    assert!(!log.contains("forbidden"), "{log}");
    drop(proxy);
    cleanup().await?;

    // The same role less EndpointSlices: bosun proxy says what is forbidden, and the
    // ClusterIP reaches nothing.
    let less = dir.join("less.yaml");
    let rbac = std::fs::read_to_string(manifests_dir().join("proxy-rbac.yaml"))?
        .replace("bosun-proxy", "bosun-proxy-less")
        .replace("bosun:proxy", "bosun:proxy-less")
        .replace("resources: [endpointslices]", "resources: [endpoints]");
    std::fs::write(&less, rbac)?;
    plane
        .kubectl(["apply", "-f", &less.to_string_lossy()])
        .await?;
    let kubeconfig = service_account_kubeconfig(plane, "bosun-proxy-less").await?;
    let log_path = dir.join("proxy-less.log");
    let proxy = start_proxy(
        &kubeconfig,
        &dir.join("proxy-less-state"),
        free_port()?,
        &log_path,
    )?;
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("watching is forbidden to this identity") && log.contains("endpointslices")
        {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "bosun proxy did not say its watch is forbidden: {log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let answer = tokio::task::spawn_blocking(|| {
        ask_tcp(at(VIP, 80), Duration::from_millis(300)).map(|a| a.name)
    })
    .await?;
    assert!(
        answer.is_err(),
        "the ClusterIP reached {answer:?} without EndpointSlices"
    );
    drop(proxy);
    drop(a);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// bosun's image, as a pod under `bosun run`.

const POD_BPF_DIR: &str = "/sys/fs/bpf/bosun-test-packaging-pod";
const POD_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 234, 31);

/// The image archive `./scripts/package.sh` wrote beside this build's binaries.
fn image_archive() -> Result<PathBuf> {
    let target = Path::new(BOSUN)
        .parent()
        .and_then(Path::parent)
        .context("the target directory")?;
    let dir = target.join("package");
    let found = std::fs::read_dir(&dir)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("bosun-image-"))
        });
    found.with_context(|| {
        format!(
            "no bosun-image-*.tar in {}: run ./scripts/package.sh first",
            dir.display()
        )
    })
}

/// The cgroup2 mount of this host (hybrid machines have it at /sys/fs/cgroup/unified).
fn host_cgroup2() -> Result<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(2) == Some(&"cgroup2"))
        .and_then(|fields| fields.get(1).map(|s| (*s).to_owned()))
        .context("no cgroup2 mount")
}

/// Whether the mount at `path` (the last one there) propagates: `shared:N` or `master:N` in
/// /proc/self/mountinfo. On a host whose PID 1 is systemd every mount is shared; on a test
/// machine booted without it they are private, and containerd refuses HostToContainer
/// propagation from a private mount.
fn host_mount_propagates(path: &str) -> Result<bool> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let fields = mountinfo
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .rfind(|fields| fields.get(4) == Some(&path));
    Ok(fields.is_some_and(|fields| {
        fields[6..]
            .iter()
            .take_while(|f| **f != "-")
            .any(|f| f.starts_with("shared:") || f.starts_with("master:"))
    }))
}

/// The DaemonSet's pod as a static pod for this test's node: the same image, command,
/// capabilities, host namespaces, mounts and probes, with this test's own bpffs directory,
/// state directory, healthz port and credentials (a static pod has no ServiceAccount, so the
/// account's token comes as a kubeconfig on a hostPath), and the host's cgroup2 mount.
/// CAP_SYS_RESOURCE is left out: root on the test machines lacks it, and kernels from 5.11 on
/// need it for nothing bosun does. Mount propagation is left out for a host path whose mount
/// does not propagate (see [`host_mount_propagates`]).
fn static_pod(kubeconfig_dir: &Path, state: &Path, healthz: u16) -> Result<String> {
    let (_, daemon_set) = documents()?
        .into_iter()
        .find(|(_, v)| v["kind"] == "DaemonSet")
        .context("the DaemonSet")?;
    let mut spec = daemon_set["spec"]["template"]["spec"].clone();
    let spec_map = spec.as_object_mut().context("a pod spec")?;
    spec_map.remove("serviceAccountName");
    spec_map.insert("automountServiceAccountToken".into(), false.into());
    let cgroup2 = host_cgroup2()?;
    let mut private = Vec::new();
    for volume in spec["volumes"].as_array_mut().context("volumes")? {
        let path = volume["hostPath"]["path"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let host_path = if path == "/sys/fs/cgroup" {
            cgroup2.clone()
        } else {
            path
        };
        if !host_mount_propagates(&host_path)? {
            private.push(volume["name"].as_str().unwrap_or_default().to_owned());
        }
    }
    for volume in spec["volumes"].as_array_mut().context("volumes")? {
        let path = volume["hostPath"]["path"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let replaced = match path.as_str() {
            "/sys/fs/cgroup" => cgroup2.clone(),
            "/var/lib/bosun-proxy" => state.display().to_string(),
            _ => continue,
        };
        volume["hostPath"]["path"] = replaced.into();
    }
    spec["volumes"]
        .as_array_mut()
        .context("volumes")?
        .push(serde_json::json!({
            "name": "kubeconfig",
            "hostPath": {"path": kubeconfig_dir.display().to_string(), "type": "Directory"},
        }));
    let container = &mut spec["containers"][0];
    let mut args: Vec<String> = container["args"]
        .as_array()
        .context("args")?
        .iter()
        .filter_map(|a| a.as_str())
        .map(|arg| {
            if arg.starts_with("--bpf-dir=") {
                format!("--bpf-dir={POD_BPF_DIR}")
            } else if arg.starts_with("--healthz-bind-address=") {
                format!("--healthz-bind-address=0.0.0.0:{healthz}")
            } else {
                arg.to_owned()
            }
        })
        .collect();
    args.push("--kubeconfig=/etc/bosun-proxy/kubeconfig".to_owned());
    args.push("--metrics-bind-address=".to_owned());
    // The machine's own uplink is not this test's to serve node ports on.
    args.push("--external-interfaces=none".to_owned());
    container["args"] = serde_json::json!(args);
    container["volumeMounts"]
        .as_array_mut()
        .context("volumeMounts")?
        .push(serde_json::json!({"name": "kubeconfig", "mountPath": "/etc/bosun-proxy", "readOnly": true}));
    container["ports"][0]["containerPort"] = healthz.into();
    container["ports"][0]["hostPort"] = healthz.into();
    // The probes go where this test's healthz listens, at the pod's IP: a hostNetwork pod's
    // is the node's, as under kubelet.
    for probe in ["readinessProbe", "livenessProbe"] {
        container[probe]["httpGet"]["port"] = healthz.into();
    }
    container["imagePullPolicy"] = "Never".into();
    for mount in container["volumeMounts"]
        .as_array_mut()
        .context("volumeMounts")?
    {
        let name = mount["name"].as_str().unwrap_or_default().to_owned();
        if private.contains(&name) {
            mount
                .as_object_mut()
                .context("a volume mount")?
                .remove("mountPropagation");
        }
    }
    let caps = &mut container["securityContext"]["capabilities"]["add"];
    let kept: Vec<Value> = caps
        .as_array()
        .context("capabilities")?
        .iter()
        .filter(|c| *c != "SYS_RESOURCE")
        .cloned()
        .collect();
    *caps = Value::Array(kept);
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bosun-proxy", "namespace": "kube-system"},
        "spec": spec,
    });
    Ok(serde_json::to_string_pretty(&pod)?)
}

/// `ctr images import` of the archive into the node's containerd, in CRI's namespace.
async fn ctr_import(node: &bosun_tests::TestNode, archive: &Path) -> Result<()> {
    let output = tokio::process::Command::new("ctr")
        .arg("--address")
        .arg(node.containerd_socket())
        .args(["-n", "k8s.io", "images", "import"])
        .arg(archive)
        .output()
        .await
        .context("running ctr")?;
    anyhow::ensure!(
        output.status.success(),
        "ctr images import {}: {}",
        archive.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

async fn pod_cleanup() -> Result<()> {
    let out = tokio::process::Command::new(BOSUN)
        .args(["proxy", "--cleanup", "--bpf-dir", POD_BPF_DIR])
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "bosun proxy --cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bosun_proxy_from_its_image_runs_as_a_pod_under_bosun_run() -> Result<()> {
    control_plane::require();
    let archive = image_archive()?;
    pod_cleanup().await?;
    let plane = ControlPlane::start("packaging-pod").await?;
    let node = match bosun_tests::TestNode::start("pkgpod").await {
        Ok(node) => node,
        Err(e) => {
            plane.shutdown().await?;
            return Err(e);
        }
    };
    let result = image_as_pod(&plane, &node, &archive).await;
    if result.is_err() {
        let log = node.dir().join("bosun.log");
        eprintln!(
            "--- {} ---\n{}",
            log.display(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    let cleaned = pod_cleanup().await;
    node.shutdown().await?;
    plane.shutdown().await?;
    result.and(cleaned)
}

async fn image_as_pod(
    plane: &ControlPlane,
    node: &bosun_tests::TestNode,
    archive: &Path,
) -> Result<()> {
    let opened = bosun_tests::ImageArchive::open(archive)?;
    ctr_import(node, archive).await?;
    let cri = node.cri().await?;
    // Under each of its names: the version's, and the one with the git revision.
    anyhow::ensure!(
        opened.aliases.iter().any(|alias| alias.contains("-git")),
        "the image has no name with the git revision: {opened:?}"
    );
    for name in std::iter::once(&opened.reference).chain(&opened.aliases) {
        anyhow::ensure!(
            cri.wait_for_image(name, Duration::from_secs(10)).await?,
            "CRI does not list {name} after ctr imported it"
        );
    }

    let manifests = manifests_dir();
    plane
        .kubectl([
            "apply",
            "-f",
            &format!("{}/proxy-rbac.yaml", manifests.display()),
        ])
        .await?;
    let kubeconfig = service_account_kubeconfig(plane, "bosun-proxy").await?;
    let kubeconfig_dir = node.dir().join("proxy-kubeconfig");
    std::fs::create_dir_all(&kubeconfig_dir)?;
    std::fs::copy(&kubeconfig, kubeconfig_dir.join("kubeconfig"))?;
    let state = node.dir().join("proxy-state");
    std::fs::create_dir_all(&state)?;

    let mut a = NetnsPod::create("bpk-b", "bpkh1", Ipv4Addr::new(10, 234, 9, 16))?;
    a.serve_tcp(8080, "b")?;
    let web = node.dir().join("web.yaml");
    std::fs::write(
        &web,
        service(&[a.ip()]).replace(&VIP.to_string(), &POD_VIP.to_string()),
    )?;
    plane
        .kubectl(["apply", "-f", &web.to_string_lossy()])
        .await?;

    // bosun run's own service proxy and policy agent stay off: what answers on the ClusterIP
    // is the pod's.
    let daemon = bosun_tests::daemon::Daemon::start(
        Path::new(BOSUN),
        node,
        "serviceProxy: false\nnetworkPolicy: false\n",
    )
    .await?;
    let healthz = free_port()?;
    daemon.write_manifest(
        "bosun-proxy.json",
        &static_pod(&kubeconfig_dir, &state, healthz)?,
    )?;
    let pod = daemon
        .wait_for(
            "bosun-proxy",
            "Ready",
            Duration::from_secs(60),
            bosun_tests::daemon::ready,
        )
        .await
        .context("the bosun-proxy pod becoming Ready (its /healthz)")?;
    assert_eq!(pod["status"]["phase"], "Running", "{pod}");
    traffic::until_answered_by(at(POD_VIP, 80), &["b"], name_at, WITHIN).await?;

    // The pod goes; its pinned datapath keeps forwarding, as a rolling update relies on.
    daemon.remove_manifest("bosun-proxy.json")?;
    daemon
        .wait_gone("bosun-proxy", Duration::from_secs(60))
        .await?;
    let answer =
        tokio::task::spawn_blocking(move || ask_tcp(at(POD_VIP, 80), CONNECT).map(|a| a.name))
            .await??;
    assert_eq!(answer, "b");
    daemon.kill().await?;
    drop(a);
    Ok(())
}
