//! `bosun run` against a real containerd: static pods from a manifest directory start,
//! crash and restart with back-off, survive bosun being killed and restarted, and stop
//! when their manifest goes; a bad manifest is reported and harms no other pod.
//!
//! The test starts its own node (own containerd, socket, CNI bridge and subnet) and its own
//! bosun with its own root directory, manifest directory and cgroup root under the node's,
//! so it runs in parallel with other suites.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bosun_cri::api;
use bosun_tests::images::BUSYBOX_IMAGE;
use bosun_tests::node::TestNode;
use serde_json::Value;

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");
const NODE_NAME: &str = "node1";

struct Daemon {
    child: tokio::process::Child,
    root: PathBuf,
}

impl Daemon {
    async fn start(node: &TestNode, manifests: &Path, log: &Path) -> anyhow::Result<Daemon> {
        let root = node.dir().join("bosun");
        let config = node.dir().join("bosun.yaml");
        std::fs::write(
            &config,
            format!(
                "cgroupRoot: {}/kubepods\npodLogsDir: {}\nclusterDomain: cluster.local\n",
                node.cgroup_parent(),
                node.dir().join("pod-logs").display()
            ),
        )?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = tokio::process::Command::new(BOSUN)
            .args(["run", "--hostname-override", NODE_NAME])
            .arg("--pod-manifest-path")
            .arg(manifests)
            .arg("--container-runtime-endpoint")
            .arg(node.cri_endpoint())
            .arg("--root-dir")
            .arg(&root)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        Ok(Daemon { child, root })
    }

    async fn pods(&self) -> Option<Value> {
        let output = tokio::process::Command::new(BOSUN)
            .args(["get", "pods", "-o", "json", "--root-dir"])
            .arg(&self.root)
            .output()
            .await
            .ok()?;
        output
            .status
            .success()
            .then(|| serde_json::from_slice(&output.stdout).ok())?
    }

    /// Polls `get pods` (bounded) until `check` holds for the pod named `name`.
    async fn wait_for(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let full = format!("{name}-{NODE_NAME}");
        let mut last = Value::Null;
        for _ in 0..300 {
            if let Some(list) = self.pods().await {
                let pod = list["items"]
                    .as_array()
                    .and_then(|items| {
                        items
                            .iter()
                            .find(|p| p["metadata"]["name"] == full.as_str())
                    })
                    .cloned();
                if let Some(pod) = pod {
                    if check(&pod) {
                        return Ok(pod);
                    }
                    last = pod;
                } else {
                    last = list;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("pod {full} never got {what}; last seen:\n{last:#}")
    }

    async fn kill(mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }
}

fn manifest(name: &str, extra: &str, script: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{extra}  containers:\n  - name: app\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, \"{script}\"]\n"
    )
}

fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or("")
}

fn ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_pods_start_restart_survive_bosun_and_stop() -> anyhow::Result<()> {
    let node = TestNode::start("daemon").await?;
    let manifests = node.dir().join("manifests");
    std::fs::create_dir_all(&manifests)?;
    let log = node.dir().join("bosun.log");
    let result = scenario(&node, &manifests, &log).await;
    if result.is_err() {
        println!(
            "--- bosun log ---\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    node.shutdown().await?;
    result
}

async fn scenario(node: &TestNode, manifests: &Path, log: &Path) -> anyhow::Result<()> {
    std::fs::write(
        manifests.join("web.yaml"),
        manifest(
            "web",
            "",
            "trap 'exit 0' TERM; while true; do sleep 1; done",
        ),
    )?;
    std::fs::write(
        manifests.join("crash.yaml"),
        manifest("crash", "", "echo crashing; exit 3"),
    )?;
    std::fs::write(manifests.join("broken.yaml"), "apiVersion: v1\nkind: Pod\nmetadata: {name: broken}\nspec:\n  containers:\n  - name: app\n    imagePullPolicy: Sometimes\n    image: x\n")?;

    let daemon = Daemon::start(node, manifests, log).await?;
    let web = daemon
        .wait_for("web", "Running and Ready", |p| {
            phase(p) == "Running" && ready(p)
        })
        .await?;
    assert_eq!(web["metadata"]["namespace"], "default");
    assert_eq!(web["spec"]["nodeName"], NODE_NAME);
    assert!(
        node.subnet_contains(web["status"]["podIP"].as_str().unwrap_or("")),
        "{web:#}"
    );
    let web_container = web["status"]["containerStatuses"][0]["containerID"].clone();

    // The crashing pod restarts at once, then backs off.
    let crash = daemon
        .wait_for("crash", "CrashLoopBackOff", |p| {
            p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        })
        .await?;
    let status = &crash["status"]["containerStatuses"][0];
    assert!(
        status["restartCount"].as_i64().unwrap_or(0) >= 1,
        "{crash:#}"
    );
    assert_eq!(status["lastState"]["terminated"]["exitCode"], 3);
    assert_eq!(status["lastState"]["terminated"]["reason"], "Error");
    assert!(
        status["state"]["waiting"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("back-off 10s"),
        "{crash:#}"
    );

    // The broken manifest is reported with its file, field and value, and is not a pod.
    let text = std::fs::read_to_string(log)?;
    assert!(
        text.contains("broken.yaml")
            && text.contains("imagePullPolicy")
            && text.contains("Sometimes"),
        "{text}"
    );
    assert!(daemon
        .pods()
        .await
        .is_some_and(|l| !l.to_string().contains("broken-")));

    // kill -9 bosun and start it again: the running pod is adopted, not restarted.
    daemon.kill().await?;
    let daemon = Daemon::start(node, manifests, log).await?;
    let web = daemon
        .wait_for("web", "Running and Ready after the restart", |p| {
            phase(p) == "Running" && ready(p)
        })
        .await?;
    assert_eq!(
        web["status"]["containerStatuses"][0]["containerID"], web_container,
        "the container was not replaced"
    );
    assert_eq!(web["status"]["containerStatuses"][0]["restartCount"], 0);

    // Deleting a manifest stops its pod and removes it from the runtime.
    let uid = web["metadata"]["uid"].as_str().unwrap_or("").to_owned();
    std::fs::remove_file(manifests.join("web.yaml"))?;
    let client = node.cri().await?;
    let mut gone = false;
    for _ in 0..200 {
        let left = client.list_pod_sandbox(None).await?;
        let listed = daemon
            .pods()
            .await
            .is_some_and(|l| l.to_string().contains("web-node1"));
        if !listed
            && !left
                .iter()
                .any(|s| s.labels.get("io.kubernetes.pod.uid") == Some(&uid))
        {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the deleted pod's sandbox is still there");
    let running: Vec<api::Container> = client.list_containers(None).await?;
    assert!(running
        .iter()
        .all(|c| c.labels.get("io.kubernetes.pod.uid") != Some(&uid)));
    daemon.kill().await?;

    // What is left (the crash pod) is removed by the node's teardown.
    Ok(())
}
