//! `bosun run` against a real containerd: static pods from a manifest directory start,
//! crash and restart with back-off, survive bosun being killed and restarted, and stop
//! when their manifest goes; a bad manifest is reported and harms no other pod.
//!
//! The test starts its own node (own containerd, socket, CNI bridge and subnet) and its own
//! bosun with its own root directory, manifest directory and cgroup root under the node's,
//! so it runs in parallel with other suites.

use std::path::Path;
use std::time::Duration;

use bosun_cri::api;
use bosun_tests::daemon::{self, busybox_pod, phase, ready, Daemon, NODE_NAME, SLEEP_FOREVER};
use bosun_tests::node::TestNode;

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");
const WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_pods_start_restart_survive_bosun_and_stop() -> anyhow::Result<()> {
    daemon::on_a_node(Path::new(BOSUN), "daemon", "", |node, daemon| async move {
        let result = scenario(&node, daemon).await;
        (node, result)
    })
    .await
}

async fn scenario(node: &TestNode, daemon: Daemon) -> anyhow::Result<()> {
    daemon.write_manifest("web.yaml", &busybox_pod("web", "", "", SLEEP_FOREVER))?;
    daemon.write_manifest(
        "crash.yaml",
        &busybox_pod("crash", "", "", "echo crashing; exit 3"),
    )?;
    daemon.write_manifest("broken.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: broken}\nspec:\n  containers:\n  - name: app\n    imagePullPolicy: Sometimes\n    image: x\n")?;

    let web = daemon
        .wait_for("web", "Running and Ready", WITHIN, |p| {
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
        .wait_for("crash", "CrashLoopBackOff", WITHIN, |p| {
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
    let text = daemon.log();
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
    let daemon = Daemon::start(Path::new(BOSUN), node, "").await?;
    let web = daemon
        .wait_for("web", "Running and Ready after the restart", WITHIN, |p| {
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
    daemon.remove_manifest("web.yaml")?;
    daemon.wait_gone("web", WITHIN).await?;
    let client = node.cri().await?;
    let deadline = tokio::time::Instant::now() + WITHIN;
    while client
        .list_pod_sandbox(None)
        .await?
        .iter()
        .any(|s| s.labels.get("io.kubernetes.pod.uid") == Some(&uid))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deleted pod's sandbox is still there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let running: Vec<api::Container> = client.list_containers(None).await?;
    assert!(running
        .iter()
        .all(|c| c.labels.get("io.kubernetes.pod.uid") != Some(&uid)));
    // Its logs go with it; the crash pod's stay.
    let logs = node.dir().join("pod-logs");
    let log_dirs = || -> Vec<String> {
        std::fs::read_dir(&logs)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = tokio::time::Instant::now() + WITHIN;
    while log_dirs().iter().any(|d| d.ends_with(&uid)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the deleted pod's logs are still there: {:?}",
            log_dirs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        log_dirs().iter().any(|d| d.contains("_crash")),
        "{:?}",
        log_dirs()
    );
    daemon.kill().await?;

    // What is left (the crash pod) is removed by the node's teardown.
    Ok(())
}
