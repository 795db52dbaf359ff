//! `cgroupDriver: systemd` end to end: a real systemd (PID 1 of the node's own container, see
//! `bosun_tests::SystemdHost`: this machine's PID 1 is not systemd), a real containerd whose
//! runc uses systemd (`SystemdCgroup = true`, kubeadm's default), and bosun configured as
//! kubelet is on such a node. The pod's slice is systemd's unit with the pod's limit, the
//! containers' scopes are in it, and the slice goes with the pod.
//!
//! The node takes its own slot (directory, bridge, subnet, cgroup) like every test node; the
//! container shares the host's network and lives in the node's cgroup, which the node's
//! teardown removes.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bosun_tests::daemon::{self, busybox_pod, container_id, phase, Daemon, SLEEP_FOREVER};
use bosun_tests::node::TestNode;
use bosun_tests::{NodeOptions, SystemdHost};

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");
const WITHIN: Duration = Duration::from_secs(60);
/// The pods' pids limit (`podPidsLimit`), which systemd must write as the slice's TasksMax.
const PIDS_LIMIT: u32 = 42;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_systemd_driver_pods_live_in_slices_systemd_owns() -> anyhow::Result<()> {
    let mut options = NodeOptions::new("systemd-driver");
    options.systemd = true;
    // No datapath: this container has no bpffs of its own, and the test is about cgroups.
    let config = format!("serviceProxy: false\nnetworkPolicy: false\npodPidsLimit: {PIDS_LIMIT}\n");
    daemon::on_a_node_with(
        Path::new(BOSUN),
        options,
        &config,
        |node, daemon| async move {
            let result = scenario(&node, daemon).await;
            (node, result)
        },
    )
    .await
}

async fn scenario(node: &TestNode, daemon: Daemon) -> anyhow::Result<()> {
    let systemd = node.systemd().context("the node has no systemd")?;
    daemon.write_manifest("web.yaml", &busybox_pod("web", "", "", SLEEP_FOREVER))?;
    let pod = daemon
        .wait_for("web", "Running", WITHIN, |p| phase(p) == "Running")
        .await?;
    let uid = pod["metadata"]["uid"]
        .as_str()
        .context("the pod has no uid")?;
    let slice = format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_"));

    // The pod's slice is a unit of systemd's, active, with the pods' limit as TasksMax.
    let shown = show(systemd, &slice, "ActiveState,TasksMax,Slice")?;
    assert!(shown.contains("ActiveState=active"), "{slice}: {shown}");
    assert!(
        shown.contains(&format!("TasksMax={PIDS_LIMIT}")),
        "{slice}: {shown}"
    );
    assert!(
        shown.contains("Slice=kubepods-besteffort.slice"),
        "{slice}: {shown}"
    );

    // runc put the container into a scope of that slice, and systemd wrote the limit into the
    // pids controller of the slice's cgroup (the node's cgroup is the container's root).
    let id = container_id(&pod, "app");
    let scope = format!("cri-containerd-{id}.scope");
    let shown = show(systemd, &scope, "ActiveState,Slice")?;
    assert!(shown.contains("ActiveState=active"), "{scope}: {shown}");
    assert!(
        shown.contains(&format!("Slice={slice}")),
        "{scope}: {shown}"
    );
    let pids_max = Path::new("/sys/fs/cgroup/pids")
        .join(node.cgroup_parent().trim_start_matches('/'))
        .join("kubepods.slice/kubepods-besteffort.slice")
        .join(&slice)
        .join("pids.max");
    let limit = std::fs::read_to_string(&pids_max)
        .with_context(|| format!("reading {}", pids_max.display()))?;
    assert_eq!(
        limit.trim(),
        PIDS_LIMIT.to_string(),
        "{}",
        pids_max.display()
    );

    // The pod goes, and its slice with it.
    daemon.remove_manifest("web.yaml")?;
    daemon.wait_gone("web", WITHIN).await?;
    let deadline = Instant::now() + WITHIN;
    loop {
        let shown = show(systemd, &slice, "LoadState,ActiveState")?;
        if shown.contains("ActiveState=inactive") || shown.contains("LoadState=not-found") {
            break;
        }
        if Instant::now() >= deadline {
            bail!("{slice} is still there after the pod went: {shown}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!pids_max.exists(), "{} is left", pids_max.display());
    Ok(())
}

fn show(systemd: &SystemdHost, unit: &str, properties: &str) -> anyhow::Result<String> {
    systemd.systemctl(&["show", unit, &format!("--property={properties}")])
}
