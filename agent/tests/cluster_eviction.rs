//! Node-pressure eviction in a real cluster (kube-apiserver, etcd and
//! kube-controller-manager 1.20.2, a real containerd node, bosun joined as `node1`): the
//! eviction manager's MemoryPressure reaches the Node, an evicted pod's status (phase
//! Failed, reason Evicted, DisruptionTarget) reaches the API server through the status
//! manager, bosun deletes nothing, and a restarted bosun does not start the evicted pod
//! again. Memory pressure comes from a soft threshold of 99% of the node's memory, which no
//! machine running anything stays clear of, read from the real root memory cgroup: the host
//! is never starved.
//!
//! Own control plane (directory, ports) and node (directory, containerd, CNI subnet), so it
//! runs in parallel with other suites.

use std::time::Duration;

use anyhow::{ensure, Result};
use bosun_tests::cluster::{self, condition, get_json, in_a_cluster, wait_for};
use bosun_tests::control_plane::ControlPlane;
use bosun_tests::daemon::{Daemon, NODE_NAME, SLEEP_FOREVER};
use bosun_tests::images::BUSYBOX_IMAGE;
use bosun_tests::node::TestNode;

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");

const UNDER_MEMORY_PRESSURE: &str = "evictionHard: {memory.available: 100Mi}\nevictionSoft: {memory.available: \"99%\"}\nevictionSoftGracePeriod: {memory.available: 3s}\nevictionMonitoringPeriod: 1s\n";

async fn join(plane: &ControlPlane, node: &TestNode) -> Result<Daemon> {
    cluster::join_with_config(BOSUN.as_ref(), plane, node, &[], UNDER_MEMORY_PRESSURE).await
}

#[tokio::test]
async fn memory_pressure_is_on_the_node_and_the_evicted_pod_in_the_api() -> Result<()> {
    in_a_cluster("evict", |plane, node| async move {
        let mut daemon = match join(&plane, &node).await {
            Ok(daemon) => Some(daemon),
            Err(e) => panic!("starting bosun: {e:#}"),
        };
        let result = async {
            let node_object = wait_for(&plane, &["node", NODE_NAME], Duration::from_secs(30), |n| {
                condition(n, "MemoryPressure") == "True"
            })
            .await?;
            let pressure = node_object["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "MemoryPressure"))
                .cloned()
                .unwrap_or_default();
            ensure!(pressure["reason"] == "KubeletHasInsufficientMemory", "{pressure:#}");
            ensure!(pressure["message"] == "kubelet has insufficient memory available");
            ensure!(condition(&node_object, "DiskPressure") == "False");

            // BestEffort, admitted under memory pressure as it tolerates the taint.
            let manifest = node.dir().join("victim.yaml");
            std::fs::write(
                &manifest,
                format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: victim, namespace: default}}\nspec:\n  nodeName: {NODE_NAME}\n  tolerations: [{{key: node.kubernetes.io/memory-pressure, operator: Exists, effect: NoSchedule}}]\n  containers:\n  - name: app\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, {SLEEP_FOREVER:?}]\n"
                ),
            )?;
            plane
                .kubectl(["apply", "-f", manifest.to_str().unwrap_or_default()])
                .await?;
            let pod = wait_for(&plane, &["pod", "victim"], Duration::from_secs(60), |p| {
                p["status"]["phase"] == "Failed"
            })
            .await?;
            ensure!(pod["status"]["reason"] == "Evicted", "{pod:#}");
            let message = pod["status"]["message"].as_str().unwrap_or_default();
            ensure!(
                message.starts_with("The node was low on resource: memory. Threshold quantity: "),
                "{message}"
            );
            ensure!(condition(&pod, "DisruptionTarget") == "True", "{pod:#}");
            ensure!(
                pod["status"]["containerStatuses"][0]["state"]["terminated"].is_object(),
                "{pod:#}"
            );
            let uid = pod["metadata"]["uid"].clone();

            // A new BestEffort pod without the toleration is refused.
            let late = node.dir().join("late.yaml");
            std::fs::write(
                &late,
                format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: late, namespace: default}}\nspec:\n  nodeName: {NODE_NAME}\n  containers:\n  - name: app\n    image: {BUSYBOX_IMAGE}\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, {SLEEP_FOREVER:?}]\n"
                ),
            )?;
            plane
                .kubectl(["apply", "-f", late.to_str().unwrap_or_default()])
                .await?;
            let late = wait_for(&plane, &["pod", "late"], Duration::from_secs(30), |p| {
                p["status"]["phase"] == "Failed"
            })
            .await?;
            ensure!(late["status"]["reason"] == "Evicted", "{late:#}");
            ensure!(
                late["status"]["message"]
                    == "Pod was rejected: The node had condition: [MemoryPressure]. ",
                "{late:#}"
            );

            // bosun deletes neither, and a restarted bosun leaves the evicted pod Failed.
            if let Some(old) = daemon.take() {
                old.kill().await?;
            }
            daemon = Some(join(&plane, &node).await?);
            tokio::time::sleep(Duration::from_secs(8)).await;
            let after = get_json(&plane, &["pod", "victim"]).await?;
            ensure!(after["metadata"]["uid"] == uid, "{after:#}");
            ensure!(after["status"]["phase"] == "Failed", "{after:#}");
            ensure!(after["status"]["reason"] == "Evicted", "{after:#}");
            let client = node.cri().await?;
            let running = client.list_containers(None).await?;
            ensure!(
                running.iter().all(|c| {
                    c.labels.get("io.kubernetes.pod.uid").map(String::as_str) != uid.as_str()
                        || c.state != bosun_cri::api::ContainerState::ContainerRunning as i32
                }),
                "the evicted pod runs again"
            );
            plane
                .kubectl(["delete", "pod", "victim", "late", "--timeout=30s"])
                .await?;
            Ok(())
        }
        .await;
        let daemon = match daemon {
            Some(daemon) => daemon,
            None => join(&plane, &node).await.expect("a daemon to return"),
        };
        (plane, node, daemon, result)
    })
    .await
}
