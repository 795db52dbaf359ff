//! Node-pressure eviction against a real containerd, without starving the host: the node's
//! `memory.available` is read from the real root memory cgroup, and a soft threshold of 99%
//! of the node's memory is one that no machine running anything meets, so the node is under
//! memory pressure from the first observation. An emptyDir's `sizeLimit` is overfilled by a
//! few MiB.
//!
//! Each test starts its own node (containerd, socket, CNI bridge, subnet) and its own bosun
//! with its own root, manifest directory and cgroup root, so they run in parallel with other
//! suites; everything goes with the node.

use std::path::Path;
use std::time::Duration;

use bosun_tests::daemon::{self, busybox_pod, condition, phase, Daemon, SLEEP_FOREVER};
use bosun_tests::node::TestNode;
use serde_json::Value;

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");
const WITHIN: Duration = Duration::from_secs(60);

/// Memory pressure at once (a soft threshold no machine can stay clear of), acted on after
/// 3 s of it, observed every second; the default hard thresholds of the disk are left out
/// so that a fuller disk on the test machine cannot change what is evicted.
const UNDER_MEMORY_PRESSURE: &str = "evictionHard: {memory.available: 100Mi}\nevictionSoft: {memory.available: \"99%\"}\nevictionSoftGracePeriod: {memory.available: 3s}\nevictionMaxPodGracePeriod: 5\nevictionMonitoringPeriod: 1s\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_pressure_evicts_best_effort_first_spares_critical_pods_and_refuses_new_ones(
) -> anyhow::Result<()> {
    daemon::on_a_node(
        Path::new(BOSUN),
        "evict-mem",
        UNDER_MEMORY_PRESSURE,
        |node, daemon| async move {
            let result = memory_pressure(&node, &daemon).await;
            (node, result)
        },
    )
    .await
}

async fn memory_pressure(node: &TestNode, daemon: &Daemon) -> anyhow::Result<()> {
    // BestEffort, admitted under memory pressure because it tolerates the taint.
    daemon.write_manifest(
        "best-effort.yaml",
        &busybox_pod(
            "best-effort",
            "  tolerations: [{key: node.kubernetes.io/memory-pressure, operator: Exists, effect: NoSchedule}]\n",
            "",
            SLEEP_FOREVER,
        ),
    )?;
    // Burstable, using far less than it requests.
    daemon.write_manifest(
        "burstable.yaml",
        &busybox_pod(
            "burstable",
            "",
            "    resources: {requests: {memory: 64Mi}}\n",
            SLEEP_FOREVER,
        ),
    )?;
    // BestEffort too, but critical: never evicted, and admitted under any pressure.
    daemon.write_manifest(
        "critical.yaml",
        &busybox_pod(
            "critical",
            "  priorityClassName: system-node-critical\n",
            "",
            SLEEP_FOREVER,
        ),
    )?;

    let evicted = daemon
        .wait_for("best-effort", "evicted", WITHIN, |p| phase(p) == "Failed")
        .await?;
    assert_eq!(evicted["status"]["reason"], "Evicted", "{evicted:#}");
    let message = evicted["status"]["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with("The node was low on resource: memory. Threshold quantity: ")
            && message.contains(", available: ")
            && message.contains("Container app was using ")
            && message.ends_with(", request is 0, has larger consumption of memory. "),
        "{message}"
    );
    let disruption = evicted["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "DisruptionTarget"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(disruption["status"], "True", "{evicted:#}");
    assert_eq!(disruption["reason"], "TerminationByKubelet");
    assert_eq!(disruption["message"], message);
    // Its container was stopped and is not restarted.
    let app = daemon::container(&evicted, "app");
    assert!(app["state"]["terminated"].is_object(), "{evicted:#}");

    // The Burstable pod goes next, on a later round, and without a container named: it
    // uses less than it requests.
    let burstable = daemon
        .wait_for("burstable", "evicted", WITHIN, |p| phase(p) == "Failed")
        .await?;
    assert_eq!(burstable["status"]["reason"], "Evicted");
    let burstable_message = burstable["status"]["message"].as_str().unwrap_or("");
    assert!(
        burstable_message.starts_with("The node was low on resource: memory. ")
            && !burstable_message.contains("Container"),
        "{burstable_message}"
    );

    // Events: the pods' Evicted warnings, BestEffort's first; the node's.
    let events = daemon.events().await.unwrap_or(Value::Null);
    let items = events["items"].as_array().cloned().unwrap_or_default();
    let evicted_index = |pod: &str| {
        items.iter().position(|e| {
            e["reason"] == "Evicted"
                && e["involvedObject"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(pod))
        })
    };
    let (first, second) = (evicted_index("best-effort-"), evicted_index("burstable-"));
    assert!(
        matches!((first, second), (Some(a), Some(b)) if a < b),
        "{events:#}"
    );
    let event = &items[first.unwrap_or_default()];
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["message"], message);
    daemon
        .wait_for_event(
            "EvictionThresholdMet",
            "Attempting to reclaim memory",
            WITHIN,
        )
        .await?;
    daemon
        .wait_for_event(
            "NodeHasInsufficientMemory",
            "status is now: NodeHasInsufficientMemory",
            WITHIN,
        )
        .await?;

    // The critical pod is never evicted, however many rounds pass.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < deadline {
        let critical = daemon.pod("critical").await.unwrap_or(Value::Null);
        assert_eq!(phase(&critical), "Running", "{critical:#}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let log = daemon.log();
    assert!(log.contains("cannot evict a critical pod"), "{log}");

    // A new BestEffort pod is refused while the node is under memory pressure.
    daemon.write_manifest("late.yaml", &busybox_pod("late", "", "", SLEEP_FOREVER))?;
    let late = daemon
        .wait_for("late", "rejected", WITHIN, |p| phase(p) == "Failed")
        .await?;
    assert_eq!(late["status"]["reason"], "Evicted", "{late:#}");
    assert_eq!(
        late["status"]["message"],
        "Pod was rejected: The node had condition: [MemoryPressure]. "
    );

    // The evicted pods' containers stay stopped in the runtime.
    let client = node.cri().await?;
    let uid = evicted["metadata"]["uid"].as_str().unwrap_or("").to_owned();
    let running = client.list_containers(None).await?;
    assert!(
        running
            .iter()
            .all(|c| c.labels.get("io.kubernetes.pod.uid") != Some(&uid)
                || c.state != bosun_cri::api::ContainerState::ContainerRunning as i32),
        "an evicted pod's container runs"
    );

    // Cleaned up with the node: stop the pods first.
    for file in [
        "best-effort.yaml",
        "burstable.yaml",
        "critical.yaml",
        "late.yaml",
    ] {
        daemon.remove_manifest(file)?;
    }
    for name in ["best-effort", "burstable", "critical", "late"] {
        daemon.wait_gone(name, WITHIN).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overfilled_empty_dir_evicts_its_pod() -> anyhow::Result<()> {
    daemon::on_a_node(
        Path::new(BOSUN),
        "evict-disk",
        "evictionHard: {memory.available: 100Mi}\nevictionMonitoringPeriod: 1s\n",
        |node, daemon| async move {
            let result = overfilled_empty_dir(&daemon).await;
            (node, result)
        },
    )
    .await
}

async fn overfilled_empty_dir(daemon: &Daemon) -> anyhow::Result<()> {
    daemon.write_manifest(
        "filler.yaml",
        &busybox_pod(
            "filler",
            "  volumes: [{name: scratch, emptyDir: {sizeLimit: 1Mi}}]\n",
            "    volumeMounts: [{name: scratch, mountPath: /scratch}]\n",
            "dd if=/dev/zero of=/scratch/fill bs=1M count=4 && trap 'exit 0' TERM; while true; do sleep 1; done",
        ),
    )?;
    daemon.write_manifest(
        "quiet.yaml",
        &busybox_pod(
            "quiet",
            "  volumes: [{name: scratch, emptyDir: {sizeLimit: 1Mi}}]\n",
            "    volumeMounts: [{name: scratch, mountPath: /scratch}]\n",
            SLEEP_FOREVER,
        ),
    )?;
    let filler = daemon
        .wait_for("filler", "evicted", WITHIN, |p| phase(p) == "Failed")
        .await?;
    assert_eq!(filler["status"]["reason"], "Evicted", "{filler:#}");
    assert_eq!(
        filler["status"]["message"],
        "Usage of EmptyDir volume \"scratch\" exceeds the limit \"1Mi\". "
    );
    // No threshold was met: no DisruptionTarget, as kubelet adds none for local storage.
    assert_eq!(condition(&filler, "DisruptionTarget"), "", "{filler:#}");
    daemon
        .wait_for_event(
            "Evicted",
            "Usage of EmptyDir volume \"scratch\" exceeds the limit",
            WITHIN,
        )
        .await?;
    // The pod within its limit runs on.
    let quiet = daemon.pod("quiet").await.unwrap_or(Value::Null);
    assert_eq!(phase(&quiet), "Running", "{quiet:#}");
    for file in ["filler.yaml", "quiet.yaml"] {
        daemon.remove_manifest(file)?;
    }
    for name in ["filler", "quiet"] {
        daemon.wait_gone(name, WITHIN).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_pressure_refuses_pods_and_reclaims_without_removing_the_sandbox_image_or_young_ones(
) -> anyhow::Result<()> {
    // nodefs.available below 100% of the file system: always met, without writing a byte.
    daemon::on_a_node(
        Path::new(BOSUN),
        "evict-nodefs",
        "evictionHard: {nodefs.available: \"100%\"}\nevictionMonitoringPeriod: 1s\n",
        |node, daemon| async move {
            let result = disk_pressure(&node, &daemon).await;
            (node, result)
        },
    )
    .await
}

async fn disk_pressure(node: &TestNode, daemon: &Daemon) -> anyhow::Result<()> {
    daemon
        .wait_for_event(
            "NodeHasDiskPressure",
            "status is now: NodeHasDiskPressure",
            WITHIN,
        )
        .await?;
    // Under disk pressure every pod but a critical one is refused.
    daemon.write_manifest(
        "refused.yaml",
        &busybox_pod(
            "refused",
            "",
            "    resources: {requests: {memory: 16Mi}}\n",
            SLEEP_FOREVER,
        ),
    )?;
    let refused = daemon
        .wait_for("refused", "rejected", WITHIN, |p| phase(p) == "Failed")
        .await?;
    assert_eq!(refused["status"]["reason"], "Evicted", "{refused:#}");
    assert_eq!(
        refused["status"]["message"],
        "Pod was rejected: The node had condition: [DiskPressure]. "
    );
    daemon
        .wait_for_event(
            "EvictionThresholdMet",
            "Attempting to reclaim ephemeral-storage",
            WITHIN,
        )
        .await?;
    // The runtime named its sandbox image, so reclaim knows what it must never remove;
    // the images are younger than kubelet's imageMinimumGCAge (2 min), so none goes yet.
    let log = daemon.log();
    assert!(!log.contains("does not name its sandbox image"), "{log}");
    let client = node.cri().await?;
    let images = client.list_images(None).await?;
    let names: Vec<&String> = images.iter().flat_map(|i| i.repo_tags.iter()).collect();
    for image in [
        bosun_tests::images::PAUSE_IMAGE,
        bosun_tests::images::BUSYBOX_IMAGE,
    ] {
        assert!(
            names.iter().any(|n| *n == image),
            "{image} was removed: {names:?}"
        );
    }
    daemon.remove_manifest("refused.yaml")?;
    daemon.wait_gone("refused", WITHIN).await?;
    Ok(())
}
