//! The pod lifecycle end to end, against a real containerd: init containers in order,
//! sidecars started in order and stopped last, restart policies, manifest edits and
//! deletes, and bad manifests that harm no other pod.
//!
//! Each test starts its own node (own containerd, socket, CNI bridge and subnet) and its
//! own bosun (own root, manifest directory and cgroup root under the node's), so the tests
//! run in parallel within the `containerd` test group.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use bosun_cri::{api, CriClient};
use bosun_tests::daemon::{self, busybox_pod, container, phase, ready, Daemon, SLEEP_FOREVER};
use bosun_tests::images::BUSYBOX_IMAGE;
use bosun_tests::node::TestNode;
use serde_json::Value;

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");
const WITHIN: Duration = Duration::from_secs(30);

async fn on_a_node<F, Fut>(name: &str, scenario: F) -> anyhow::Result<()>
where
    F: FnOnce(TestNode, Daemon) -> Fut,
    Fut: std::future::Future<Output = (TestNode, anyhow::Result<()>)>,
{
    daemon::on_a_node(Path::new(BOSUN), name, "", scenario).await
}

/// One container instance as CRI reports it, with nanosecond times.
#[derive(Debug)]
struct Instance {
    name: String,
    created_at: i64,
    started_at: i64,
    finished_at: i64,
}

/// Every container instance of the pod with this UID, oldest first.
async fn instances(client: &CriClient, uid: &str) -> anyhow::Result<Vec<Instance>> {
    let filter = api::ContainerFilter {
        label_selector: HashMap::from([("io.kubernetes.pod.uid".to_owned(), uid.to_owned())]),
        ..Default::default()
    };
    let mut out = Vec::new();
    for c in client.list_containers(Some(filter)).await? {
        let Some(s) = client.container_status(&c.id, false).await?.status else {
            continue;
        };
        out.push(Instance {
            name: s.metadata.map(|m| m.name).unwrap_or_default(),
            created_at: s.created_at,
            started_at: s.started_at,
            finished_at: s.finished_at,
        });
    }
    out.sort_by_key(|i| i.created_at);
    Ok(out)
}

fn uid(pod: &Value) -> String {
    pod["metadata"]["uid"].as_str().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_run_in_order_and_sidecars_stop_last() -> anyhow::Result<()> {
    on_a_node("life-init", |node, daemon| async move {
        let result = async {
            let manifest = format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: ordered\nspec:\n  terminationGracePeriodSeconds: 5\n  initContainers:\n  - name: first\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: Never\n    command: [sh, -c, 'sleep 0.2']\n  - name: sidecar\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: Never\n    restartPolicy: Always\n    command: [sh, -c, \"trap 'sleep 0.3; exit 0' TERM; while true; do sleep 1; done\"]\n  - name: second\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: Never\n    command: [sh, -c, 'sleep 0.2']\n  containers:\n  - name: app\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: Never\n    command: [sh, -c, {SLEEP_FOREVER:?}]\n"
            );
            daemon.write_manifest("ordered.yaml", &manifest)?;
            let pod = daemon
                .wait_for("ordered", "Running and Ready", WITHIN, |p| {
                    phase(p) == "Running" && ready(p)
                })
                .await?;
            assert_eq!(
                container(&pod, "first")["state"]["terminated"]["reason"],
                "Completed"
            );
            assert_eq!(
                container(&pod, "second")["state"]["terminated"]["reason"],
                "Completed"
            );
            assert!(container(&pod, "sidecar")["state"]["running"].is_object());
            assert_eq!(container(&pod, "sidecar")["started"], true);

            let client = node.cri().await?;
            let uid = uid(&pod);
            let seen = instances(&client, &uid).await?;
            let names: Vec<&str> = seen.iter().map(|i| i.name.as_str()).collect();
            assert_eq!(names, ["first", "sidecar", "second", "app"], "{seen:?}");
            // Each init container finished before the next one was created; the sidecar
            // was running before `second` was created.
            assert!(seen[0].finished_at <= seen[1].created_at, "{seen:?}");
            assert!(seen[1].started_at <= seen[2].created_at, "{seen:?}");
            assert!(seen[2].finished_at <= seen[3].created_at, "{seen:?}");

            // Deleting the pod stops the main container before the sidecar.
            daemon.remove_manifest("ordered.yaml")?;
            let deadline = tokio::time::Instant::now() + WITHIN;
            let stopped = loop {
                let seen = instances(&client, &uid).await?;
                if seen.iter().all(|i| i.finished_at > 0) || seen.is_empty() {
                    break seen;
                }
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "containers still running: {seen:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            if !stopped.is_empty() {
                let at = |n: &str| stopped.iter().find(|i| i.name == n).map(|i| i.finished_at);
                assert!(at("app") <= at("sidecar"), "{stopped:?}");
            }
            daemon.wait_gone("ordered", WITHIN).await?;
            daemon.kill().await
        }
        .await;
        (node, result)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_policies_end_pods_as_kubelet_does() -> anyhow::Result<()> {
    on_a_node("life-policy", |node, daemon| async move {
        let result = async {
            daemon.write_manifest(
                "done.yaml",
                &busybox_pod("done", "  restartPolicy: OnFailure\n", "", "exit 0"),
            )?;
            daemon.write_manifest(
                "failed.yaml",
                &busybox_pod("failed", "  restartPolicy: Never\n", "", "exit 7"),
            )?;
            daemon.write_manifest(
                "retried.yaml",
                &busybox_pod("retried", "  restartPolicy: OnFailure\n", "", "exit 1"),
            )?;
            let done = daemon
                .wait_for("done", "Succeeded", WITHIN, |p| phase(p) == "Succeeded")
                .await?;
            assert_eq!(container(&done, "app")["restartCount"], 0);
            assert_eq!(
                container(&done, "app")["state"]["terminated"]["reason"],
                "Completed"
            );
            let failed = daemon
                .wait_for("failed", "Failed", WITHIN, |p| phase(p) == "Failed")
                .await?;
            assert_eq!(
                container(&failed, "app")["state"]["terminated"]["exitCode"],
                7
            );
            assert_eq!(container(&failed, "app")["restartCount"], 0);
            let retried = daemon
                .wait_for("retried", "a restart", WITHIN, |p| {
                    container(p, "app")["restartCount"].as_i64() >= Some(1)
                })
                .await?;
            assert_eq!(phase(&retried), "Running", "{retried:#}");
            daemon.kill().await
        }
        .await;
        (node, result)
    })
    .await
}

/// The sandboxes of the pod with this UID: (ID, ready), oldest first.
async fn sandboxes(client: &CriClient, uid: &str) -> anyhow::Result<Vec<(String, bool)>> {
    let filter = api::PodSandboxFilter {
        label_selector: HashMap::from([("io.kubernetes.pod.uid".to_owned(), uid.to_owned())]),
        ..Default::default()
    };
    let mut listed = client.list_pod_sandbox(Some(filter)).await?;
    listed.sort_by_key(|s| s.created_at);
    let ready = api::PodSandboxState::SandboxReady as i32;
    Ok(listed
        .into_iter()
        .map(|s| (s.id, s.state == ready))
        .collect())
}

// The runtime's events are what tell bosun: with the pods quiet, its relist of the runtime
// runs only every few minutes, far beyond this test's deadlines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_that_dies_is_replaced_with_its_containers() -> anyhow::Result<()> {
    on_a_node("life-sandbox", |node, daemon| async move {
        let result = async {
            daemon.write_manifest("web.yaml", &busybox_pod("web", "", "", SLEEP_FOREVER))?;
            let pod = daemon
                .wait_for("web", "Running and Ready", WITHIN, |p| {
                    phase(p) == "Running" && ready(p)
                })
                .await?;
            let uid = uid(&pod);
            let first_container = container(&pod, "app")["containerID"].clone();
            let client = node.cri().await?;
            let listed = sandboxes(&client, &uid).await?;
            let [(sandbox, true)] = &listed[..] else {
                anyhow::bail!("not one ready sandbox: {listed:?}");
            };
            let sandbox = sandbox.clone();
            let info = client
                .pod_sandbox_status(&sandbox, true)
                .await?
                .info
                .remove("info")
                .unwrap_or_default();
            let pid = serde_json::from_str::<Value>(&info)?["pid"]
                .as_u64()
                .filter(|pid| *pid > 1)
                .ok_or_else(|| anyhow::anyhow!("no pid in the sandbox's info: {info}"))?;
            // Let the relists that follow the pod's start pass: from here the runtime is
            // quiet until the sandbox's own process dies.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let killed = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()?;
            anyhow::ensure!(killed.success(), "kill -KILL {pid}: {killed}");

            // As kubelet does: a new sandbox, and the pod's containers started again in it.
            let again = daemon
                .wait_for("web", "Ready in a new sandbox", WITHIN, |p| {
                    ready(p) && container(p, "app")["containerID"] != first_container
                })
                .await?;
            assert_eq!(phase(&again), "Running", "{again:#}");
            let now = sandboxes(&client, &uid).await?;
            assert!(
                now.iter().any(|(id, ready)| *ready && *id != sandbox),
                "{now:?}"
            );
            assert!(
                !now.iter().any(|(id, ready)| *ready && *id == sandbox),
                "{now:?}"
            );
            daemon.kill().await
        }
        .await;
        (node, result)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_manifest_replaces_its_pod() -> anyhow::Result<()> {
    on_a_node("life-edit", |node, daemon| async move {
        let result = async {
            daemon.write_manifest(
                "web.yaml",
                &busybox_pod(
                    "web",
                    "  terminationGracePeriodSeconds: 3\n",
                    "",
                    SLEEP_FOREVER,
                ),
            )?;
            let before = daemon.wait_for("web", "Ready", WITHIN, ready).await?;
            let edited = format!("echo edited; {SLEEP_FOREVER}");
            daemon.write_manifest(
                "web.yaml",
                &busybox_pod("web", "  terminationGracePeriodSeconds: 3\n", "", &edited),
            )?;
            let after = daemon
                .wait_for("web", "a new UID and Ready", WITHIN, |p| {
                    uid(p) != uid(&before) && ready(p)
                })
                .await?;
            assert!(
                after["spec"]["containers"][0]["command"]
                    .to_string()
                    .contains("edited"),
                "{after:#}"
            );
            // The old pod's sandbox is gone from the runtime.
            let client = node.cri().await?;
            let deadline = tokio::time::Instant::now() + WITHIN;
            loop {
                let sandboxes = client.list_pod_sandbox(None).await?;
                let uids: Vec<&String> = sandboxes
                    .iter()
                    .filter_map(|s| s.labels.get("io.kubernetes.pod.uid"))
                    .collect();
                if !uids.contains(&&uid(&before)) {
                    assert_eq!(uids, [&uid(&after)]);
                    break;
                }
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "the old sandbox is still there: {uids:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            daemon.kill().await
        }
        .await;
        (node, result)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_are_reported_and_harm_no_other_pod() -> anyhow::Result<()> {
    on_a_node("life-bad", |node, daemon| async move {
        let result = async {
            daemon.write_manifest("good.yaml", &busybox_pod("good", "", "", SLEEP_FOREVER))?;
            let good = daemon.wait_for("good", "Ready", WITHIN, ready).await?;

            daemon.write_manifest(
                "syntax.yaml",
                "apiVersion: v1\nkind: Pod\nmetadata: {name: [\n",
            )?;
            daemon.write_manifest(
                "policy.yaml",
                &busybox_pod("policy", "  restartPolicy: Sometimes\n", "", "true"),
            )?;
            daemon.write_manifest(
                "noimage.yaml",
                &busybox_pod("noimage", "", "", "true")
                    .replace(BUSYBOX_IMAGE, "localhost/bosun/absent:1")
                    .replace("IfNotPresent", "Never"),
            )?;
            daemon.write_manifest(
                "rootless.yaml",
                &busybox_pod(
                    "rootless",
                    "  securityContext: {runAsNonRoot: true}\n",
                    "",
                    "true",
                ),
            )?;
            daemon.write_manifest(
                "twin.yaml",
                &busybox_pod("good", "", "", "echo twin; sleep 1000"),
            )?;

            // The image that does not exist shows in the container's waiting state.
            let noimage = daemon
                .wait_for("noimage", "ErrImageNeverPull", WITHIN, |p| {
                    container(p, "app")["state"]["waiting"]["reason"] == "ErrImageNeverPull"
                })
                .await?;
            assert!(
                container(&noimage, "app")["state"]["waiting"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("localhost/bosun/absent:1"),
                "{noimage:#}"
            );

            // runAsNonRoot refuses the image that runs as root, before creating anything.
            let rootless = daemon
                .wait_for("rootless", "CreateContainerConfigError", WITHIN, |p| {
                    container(p, "app")["state"]["waiting"]["reason"]
                        == "CreateContainerConfigError"
                })
                .await?;
            assert!(
                container(&rootless, "app")["state"]["waiting"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("runAsNonRoot"),
                "{rootless:#}"
            );

            // Each bad file is named in the log with its field and value.
            let deadline = tokio::time::Instant::now() + WITHIN;
            loop {
                let log = daemon.log();
                let reported = log.contains("syntax.yaml")
                    && log.contains("policy.yaml")
                    && log.contains("restartPolicy")
                    && log.contains("Sometimes")
                    && log.contains("twin.yaml");
                if reported {
                    break;
                }
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "bad manifests not reported:\n{log}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(daemon.pod("policy").await.is_none());

            // The good pod was never touched.
            let still = daemon.wait_for("good", "Ready", WITHIN, ready).await?;
            assert_eq!(
                container(&still, "app")["containerID"],
                container(&good, "app")["containerID"]
            );
            assert_eq!(container(&still, "app")["restartCount"], 0);
            daemon.kill().await
        }
        .await;
        (node, result)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_beyond_max_pods_are_rejected() -> anyhow::Result<()> {
    daemon::on_a_node(
        Path::new(BOSUN),
        "life-maxpods",
        "maxPods: 2\n",
        |node, daemon| async move {
            let result = async {
                for name in ["a", "b", "c"] {
                    daemon.write_manifest(
                        &format!("{name}.yaml"),
                        &busybox_pod(name, "", "", SLEEP_FOREVER),
                    )?;
                }
                for name in ["a", "b"] {
                    daemon.wait_for(name, "Ready", WITHIN, ready).await?;
                }
                let c = daemon
                    .wait_for("c", "Failed", WITHIN, |p| phase(p) == "Failed")
                    .await?;
                assert_eq!(c["status"]["reason"], "OutOfpods");
                assert!(
                    c["status"]["message"]
                        .as_str()
                        .unwrap_or("")
                        .contains("used: 2, capacity: 2"),
                    "{c:#}"
                );
                // Nothing of it reached the runtime.
                let client = node.cri().await?;
                let sandboxes = client.list_pod_sandbox(None).await?;
                assert_eq!(sandboxes.len(), 2, "{sandboxes:?}");
                // Its manifest gone, it is gone too.
                daemon.remove_manifest("c.yaml")?;
                daemon.wait_gone("c", WITHIN).await?;
                daemon.kill().await
            }
            .await;
            (node, result)
        },
    )
    .await
}
