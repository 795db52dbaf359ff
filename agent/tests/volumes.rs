//! Volumes end to end, against a real containerd: emptyDir shared between an init
//! container and the app, a Memory emptyDir on tmpfs, hostPath, configMap and secret from
//! the manifest directory (and a configMap edit reaching the running container), the
//! pod's /etc/hosts, the termination message, a bad hostPath reported without harm to
//! other pods, and everything removed with the pod.
//!
//! The test starts its own node and bosun (see `bosun_tests::daemon`); its hostPath lives
//! in the node's own directory.

use std::path::Path;
use std::time::Duration;

use bosun_tests::daemon::{
    self, busybox_pod, container, container_id, phase, ready, sh, Daemon, SLEEP_FOREVER,
};
use bosun_tests::images::BUSYBOX_IMAGE;
use bosun_tests::node::TestNode;
use serde_json::Value;

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");
const WITHIN: Duration = Duration::from_secs(30);

fn config_map(value: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata:\n  greeting: {value}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_are_set_up_shared_refreshed_and_removed() -> anyhow::Result<()> {
    daemon::on_a_node(Path::new(BOSUN), "volumes", "", |node, daemon| async move {
        let result = scenario(&node, daemon).await;
        (node, result)
    })
    .await
}

async fn scenario(node: &TestNode, daemon: Daemon) -> anyhow::Result<()> {
    let host_dir = node.dir().join("host-data");
    daemon.write_manifest("settings.yaml", &config_map("hello"))?;
    daemon.write_manifest(
        "secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\ndata:\n  password: czNjcjN0\n",
    )?;
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: vols\nspec:\n  terminationGracePeriodSeconds: 2\n  volumes:\n  - {{name: scratch, emptyDir: {{}}}}\n  - {{name: fast, emptyDir: {{medium: Memory, sizeLimit: 16Mi}}}}\n  - name: host\n    hostPath: {{path: {host}, type: DirectoryOrCreate}}\n  - {{name: settings, configMap: {{name: settings}}}}\n  - {{name: creds, secret: {{secretName: creds, defaultMode: 0400}}}}\n  initContainers:\n  - name: seed\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: Never\n    command: [sh, -c, 'echo seeded > /scratch/seed']\n    volumeMounts: [{{name: scratch, mountPath: /scratch}}]\n  containers:\n  - name: app\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: Never\n    command: [sh, -c, {SLEEP_FOREVER:?}]\n    volumeMounts:\n    - {{name: scratch, mountPath: /scratch}}\n    - {{name: fast, mountPath: /fast}}\n    - {{name: host, mountPath: /host}}\n    - {{name: settings, mountPath: /etc/settings}}\n    - {{name: creds, mountPath: /etc/creds}}\n",
        host = host_dir.display()
    );
    daemon.write_manifest("vols.yaml", &manifest)?;
    let pod = daemon.wait_for("vols", "Ready", WITHIN, ready).await?;
    let client = node.cri().await?;
    let id = container_id(&pod, "app");

    // emptyDir: what the init container wrote, the app reads.
    assert_eq!(sh(&client, &id, "cat /scratch/seed").await?, "seeded\n");
    // Memory emptyDir: a tmpfs of the asked size.
    let mounts = sh(&client, &id, "grep ' /fast ' /proc/mounts").await?;
    assert!(
        mounts.contains("tmpfs") && mounts.contains("size=16384k"),
        "{mounts}"
    );
    // hostPath: created on the host, shared both ways.
    sh(&client, &id, "echo from-pod > /host/out").await?;
    assert_eq!(std::fs::read_to_string(host_dir.join("out"))?, "from-pod\n");
    // configMap and secret: their keys as files, read-only.
    assert_eq!(
        sh(&client, &id, "cat /etc/settings/greeting").await?,
        "hello"
    );
    assert_eq!(sh(&client, &id, "cat /etc/creds/password").await?, "s3cr3t");
    let mode = sh(&client, &id, "stat -L -c %a /etc/creds/password").await?;
    assert_eq!(mode.trim(), "400");
    assert!(sh(&client, &id, "touch /etc/settings/x").await.is_err());
    // /etc/hosts names the pod.
    let hosts = sh(&client, &id, "cat /etc/hosts").await?;
    let ip = pod["status"]["podIP"].as_str().unwrap_or("");
    assert!(hosts.contains(&format!("{ip}\tvols-node1")), "{hosts}");

    // Editing the ConfigMap reaches the running container.
    daemon.write_manifest("settings.yaml", &config_map("goodbye"))?;
    let deadline = tokio::time::Instant::now() + WITHIN;
    while sh(&client, &id, "cat /etc/settings/greeting").await? != "goodbye" {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the configMap edit never reached the container"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The termination message comes from the file, and from the log on request.
    daemon.write_manifest(
        "last-words.yaml",
        &busybox_pod(
            "last-words",
            "  restartPolicy: Never\n",
            "",
            "echo 'it was the config' > /dev/termination-log; exit 2",
        ),
    )?;
    daemon.write_manifest(
        "from-log.yaml",
        &busybox_pod(
            "from-log",
            "  restartPolicy: Never\n",
            "    terminationMessagePolicy: FallbackToLogsOnError\n",
            "echo 'panic: out of cheese'; exit 1",
        ),
    )?;
    let last = daemon
        .wait_for("last-words", "Failed", WITHIN, |p| phase(p) == "Failed")
        .await?;
    assert_eq!(
        container(&last, "app")["state"]["terminated"]["message"],
        "it was the config\n"
    );
    let from_log = daemon
        .wait_for("from-log", "Failed", WITHIN, |p| phase(p) == "Failed")
        .await?;
    assert!(
        container(&from_log, "app")["state"]["terminated"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("panic: out of cheese"),
        "{from_log:#}"
    );

    // A hostPath of the wrong type is reported and starts nothing; the other pod runs on.
    daemon.write_manifest(
        "wrong.yaml",
        &busybox_pod(
            "wrong",
            "  volumes:\n  - name: missing\n    hostPath: {path: /nonexistent/bosun-file, type: File}\n",
            "    volumeMounts: [{name: missing, mountPath: /x}]\n",
            SLEEP_FOREVER,
        ),
    )?;
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let events = daemon.events().await.unwrap_or(Value::Null).to_string();
        if events.contains("FailedMount") && events.contains("/nonexistent/bosun-file") {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no FailedMount event: {events}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wrong = daemon.pod("wrong").await.unwrap_or_default();
    assert_eq!(phase(&wrong), "Pending", "{wrong:#}");
    assert_eq!(
        container(&wrong, "app")["state"]["waiting"]["reason"],
        "ContainerCreating"
    );
    let still = daemon.pod("vols").await.unwrap_or_default();
    assert_eq!(container_id(&still, "app"), id);

    // Deleting the pod removes its directory and unmounts its tmpfs; hostPath stays.
    let uid = pod["metadata"]["uid"].as_str().unwrap_or("").to_owned();
    daemon.remove_manifest("vols.yaml")?;
    daemon.wait_gone("vols", WITHIN).await?;
    let pod_dir = daemon.root().join("pods").join(&uid);
    assert!(!pod_dir.exists(), "{} is still there", pod_dir.display());
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    assert!(
        !mounts.contains(&uid),
        "a mount of the pod is left:\n{mounts}"
    );
    assert!(host_dir.join("out").exists());
    daemon.kill().await
}
