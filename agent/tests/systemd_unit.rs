//! The shipped systemd unit under a real systemd (PID 1 of the node's own container, see
//! `bosun_tests::SystemdHost`: this machine's PID 1 is not systemd), driven as the packages
//! drive it: `systemctl start`, then an upgrade as the deb's postinst and the rpm's `%post` do
//! it (the binary replaced by a rename, as dpkg and rpm replace files, then `systemctl
//! try-restart bosun.service`), then `systemctl stop`, as a removal does. The pod's container
//! runs on through all of it and is never restarted; the new bosun (a new main process, running
//! the new file) adopts it.
//!
//! The unit is `packaging/systemd/bosun.service` with its two paths moved into the node's
//! directory (the container's `/usr` is the host's, read only), linked with `systemctl link`,
//! and its flags in the container's `/etc/default/bosun`, where the deb puts them. No datapath:
//! the container has no bpffs of its own (the datapath's own restarts are tested elsewhere,
//! with `kill -9`). The node takes its own slot like every test node.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bosun_tests::daemon::{busybox_pod, SLEEP_FOREVER};
use bosun_tests::{NodeOptions, SystemdHost, TestNode};
use serde_json::Value;

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");
const WITHIN: Duration = Duration::from_secs(60);
const POD: &str = "web-node1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_and_a_stop_under_systemd_leave_the_pods_running() -> Result<()> {
    let mut options = NodeOptions::new("systemd-unit");
    options.systemd = true;
    let node = TestNode::start_with(options).await?;
    let result = scenario(&node).await;
    if result.is_err() {
        if let Some(systemd) = node.systemd() {
            let journal = systemd
                .command("journalctl")
                .args(["-u", "bosun.service", "--no-pager", "-n", "200"])
                .output();
            if let Ok(journal) = journal {
                println!(
                    "--- journal of bosun.service ---\n{}",
                    String::from_utf8_lossy(&journal.stdout)
                );
            }
        }
    }
    node.shutdown().await?;
    result
}

/// Where the test installs what the package installs, inside the node's directory.
struct Installed {
    binary: PathBuf,
    root: PathBuf,
}

async fn scenario(node: &TestNode) -> Result<()> {
    let systemd = node.systemd().context("the node has no systemd")?;
    let installed = install(node, systemd)?;
    systemd.systemctl(&["start", "bosun.service"])?;
    let before = wait_running(&installed, None).await?;
    let first = main_pid(systemd)?;
    ensure!(first != 0, "bosun.service has no main process");

    // The upgrade: the new file renamed over the old one while the old bosun runs, then the
    // postinst's restart.
    let new = installed.binary.with_extension("dpkg-new");
    std::fs::copy(BOSUN, &new).context("writing the new binary")?;
    std::fs::rename(&new, &installed.binary).context("renaming the new binary into place")?;
    systemd.systemctl(&["try-restart", "bosun.service"])?;
    let second = main_pid(systemd)?;
    ensure!(
        second != 0 && second != first,
        "bosun.service's main process was {first}, is {second} after try-restart"
    );
    // The running process is the new file: the old one's is "(deleted)" since the rename.
    let exe = systemd
        .command("readlink")
        .arg(format!("/proc/{second}/exe"))
        .output()?;
    let exe = String::from_utf8_lossy(&exe.stdout).trim().to_owned();
    assert_eq!(
        Path::new(&exe),
        installed.binary,
        "the new bosun runs {exe}"
    );
    let after = wait_running(&installed, Some(&before)).await?;
    assert_eq!(after, before, "the pod's container after the upgrade");

    // The stop, as a removal stops it: bosun goes, the pod stays.
    systemd.systemctl(&["stop", "bosun.service"])?;
    assert_eq!(main_pid(systemd)?, 0, "bosun.service still runs");
    let client =
        bosun_cri::CriClient::connect(&node.cri_endpoint(), Duration::from_secs(10)).await?;
    let status = client.container_status(&before.container_id, false).await?;
    let state = status.status.map(|s| s.state).unwrap_or_default();
    assert_eq!(
        state,
        bosun_cri::api::ContainerState::ContainerRunning as i32,
        "the pod's container once bosun is stopped"
    );
    Ok(())
}

/// Installs the binary, the configuration, the flags and the unit, as the package does.
fn install(node: &TestNode, systemd: &SystemdHost) -> Result<Installed> {
    let dir = node.dir();
    let binary = dir.join("usr/bin/bosun");
    std::fs::create_dir_all(dir.join("usr/bin"))?;
    std::fs::copy(BOSUN, &binary).context("installing the binary")?;
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    std::fs::write(
        manifests.join("web.yaml"),
        busybox_pod("web", "", "", SLEEP_FOREVER),
    )?;
    // As the test daemons' configuration (see bosun_tests::daemon), with a pod source and no
    // datapath.
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "cgroupDriver: systemd\ncgroupRoot: /\npodLogsDir: {}\nclusterDomain: cluster.local\n\
             healthzPort: 0\nevictionHard: {{memory.available: 100Mi}}\nserviceProxy: false\n\
             networkPolicy: false\nstaticPodPath: {}\n",
            dir.join("pod-logs").display(),
            manifests.display()
        ),
    )?;
    let root = dir.join("bosun");
    let flags = format!(
        "BOSUN_ARGS=\"--hostname-override node1 --container-runtime-endpoint {} --root-dir {}\"\n",
        node.cri_endpoint(),
        root.display()
    );
    let written = systemd
        .command("sh")
        .args([
            "-c",
            "mkdir -p /etc/default && printf '%s' \"$1\" > /etc/default/bosun",
            "sh",
            &flags,
        ])
        .status()?;
    ensure!(written.success(), "writing /etc/default/bosun");
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd/bosun.service"),
    )?;
    let unit = dir.join("bosun.service");
    std::fs::write(
        &unit,
        shipped
            .replace("/usr/bin/bosun", &binary.to_string_lossy())
            .replace("/etc/bosun/config.yaml", &config.to_string_lossy()),
    )?;
    systemd.systemctl(&["link", &unit.to_string_lossy()])?;
    systemd.systemctl(&["daemon-reload"])?;
    Ok(Installed { binary, root })
}

/// `MainPID` of bosun.service, as the container numbers it; 0 when it has none.
fn main_pid(systemd: &SystemdHost) -> Result<u32> {
    let shown = systemd.systemctl(&["show", "bosun.service", "--property=MainPID", "--value"])?;
    shown
        .trim()
        .parse()
        .with_context(|| format!("MainPID {shown:?}"))
}

/// The pod's one container as bosun reports it.
#[derive(Debug, PartialEq, Eq)]
struct Running {
    container_id: String,
    restarts: u64,
    started_at: String,
}

/// Waits until bosun answers with the pod Running and Ready (the same container as `same`, if
/// given).
async fn wait_running(installed: &Installed, same: Option<&Running>) -> Result<Running> {
    let deadline = Instant::now() + WITHIN;
    let mut last = Value::Null;
    loop {
        if let Some(pod) = pod(installed).await {
            let status = &pod["status"]["containerStatuses"][0];
            if pod["status"]["phase"] == "Running" && status["ready"] == true {
                let running = Running {
                    container_id: status["containerID"]
                        .as_str()
                        .unwrap_or_default()
                        .trim_start_matches("containerd://")
                        .to_owned(),
                    restarts: status["restartCount"].as_u64().unwrap_or(u64::MAX),
                    started_at: status["state"]["running"]["startedAt"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                };
                if same.is_none_or(|same| *same == running) {
                    return Ok(running);
                }
            }
            last = pod;
        }
        if Instant::now() > deadline {
            bail!("{POD} is not running as wanted ({same:?}) within {WITHIN:?}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The pod, from `bosun get pods` against the running daemon; `None` while it does not
/// answer.
async fn pod(installed: &Installed) -> Option<Value> {
    let output = tokio::process::Command::new(BOSUN)
        .args(["get", "pods", "-o", "json", "--root-dir"])
        .arg(&installed.root)
        .output()
        .await
        .ok()?;
    let list: Value = serde_json::from_slice(&output.stdout).ok()?;
    list["items"]
        .as_array()?
        .iter()
        .find(|p| p["metadata"]["name"] == POD)
        .cloned()
}
