//! A test node starts, serves CRI with both test images, runs a pod sandbox, and leaves
//! nothing behind when it is shut down, dropped during a panic, or abandoned by a process
//! that died.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bosun_tests::fixtures::sandbox_config;
use bosun_tests::{reap_stale_nodes, TestNode, BASE_DIR, BUSYBOX_IMAGE, PAUSE_IMAGE};

/// Everything a node's teardown must remove, captured while the node runs.
struct Footprint {
    dir: PathBuf,
    bridge: String,
    containerd_pid: Option<u32>,
    socket: PathBuf,
    cgroup_dirs: Vec<PathBuf>,
}

impl Footprint {
    fn of(node: &TestNode) -> Self {
        Footprint {
            dir: node.dir().to_owned(),
            bridge: node.bridge().to_owned(),
            containerd_pid: node.containerd_pid(),
            socket: node.containerd_socket().to_owned(),
            cgroup_dirs: cgroup_dirs(node.cgroup_parent()),
        }
    }

    fn assert_gone(&self) {
        assert!(!self.dir.exists(), "{} is still there", self.dir.display());
        assert!(
            !link_exists(&self.bridge),
            "bridge {} is still there",
            self.bridge
        );
        if let Some(pid) = self.containerd_pid {
            assert!(!running(pid), "containerd (pid {pid}) still runs");
        }
        let socket = self.socket.to_string_lossy();
        let survivors: Vec<u32> = pids()
            .into_iter()
            .filter(|&pid| cmdline(pid).iter().any(|arg| *arg == socket))
            .collect();
        assert!(
            survivors.is_empty(),
            "processes naming {socket} survive: {survivors:?}"
        );
        for dir in &self.cgroup_dirs {
            assert!(!dir.exists(), "cgroup {} is still there", dir.display());
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mounted: Vec<&str> = mountinfo
            .lines()
            .filter_map(|line| line.split_whitespace().nth(4))
            .filter(|mount_point| Path::new(mount_point).starts_with(&self.dir))
            .collect();
        assert!(mounted.is_empty(), "still mounted: {mounted:?}");
    }
}

#[tokio::test]
async fn a_node_serves_cri_and_leaves_nothing_behind() -> Result<()> {
    let node = TestNode::start("node-lifecycle").await?;
    eprintln!("started in {:?}", node.timings());
    let cri = node.cri().await?;
    assert_eq!(cri.version().runtime_name, "containerd");

    let images = cri.list_images(None).await?;
    for reference in [PAUSE_IMAGE, BUSYBOX_IMAGE] {
        assert!(
            images
                .iter()
                .any(|image| image.repo_tags.iter().any(|tag| tag == reference)),
            "ListImages lacks {reference}: {images:?}"
        );
    }

    // A sandbox left running makes teardown work for it: CNI creates the bridge and a veth,
    // containerd a shim, mounts, a network namespace and cgroups under the node's parent.
    let sandbox = cri
        .run_pod_sandbox(sandbox_config(&node, "probe"), "")
        .await?;
    let status = cri.pod_sandbox_status(&sandbox, false).await?;
    let ip = status
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap_or_default();
    assert!(
        node.subnet_contains(&ip),
        "pod IP {ip:?} is outside {}",
        node.subnet()
    );
    assert!(
        link_exists(node.bridge()),
        "CNI did not create {}",
        node.bridge()
    );
    let footprint = Footprint::of(&node);
    assert!(
        !footprint.cgroup_dirs.is_empty(),
        "no cgroups under {}",
        node.cgroup_parent()
    );

    node.shutdown().await?;
    footprint.assert_gone();
    Ok(())
}

/// When containerd dies first, nothing runs CNI DEL: teardown must find the pod's network
/// namespace, veth, iptables rules (masquerade and hostPort DNAT) and processes itself.
#[tokio::test]
async fn teardown_cleans_up_after_containerd_died() -> Result<()> {
    let node = TestNode::start("containerd-died").await?;
    let cri = node.cri().await?;
    let mut config = sandbox_config(&node, "orphan");
    config.port_mappings.push(bosun_cri::api::PortMapping {
        protocol: bosun_cri::api::Protocol::Tcp as i32,
        container_port: 8080,
        host_port: 30000 + i32::from(node.slot()),
        host_ip: String::new(),
    });
    cri.run_pod_sandbox(config, "").await?;
    let tag = format!("name: \\\"{}\\\"", node.network_name());
    let rules = || nat_rules_mentioning(&tag);
    assert!(rules()?.len() >= 2, "CNI added no rules tagged {tag}");

    let footprint = Footprint::of(&node);
    let pid = node.containerd_pid().context("containerd runs")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    node.shutdown().await?;
    footprint.assert_gone();
    assert_eq!(rules()?, Vec::<String>::new());
    Ok(())
}

#[tokio::test]
async fn concurrent_nodes_get_their_own_slot_subnet_and_bridge() -> Result<()> {
    let (a, b) = tokio::try_join!(TestNode::start("twin"), TestNode::start("twin"))?;
    assert_ne!(a.slot(), b.slot());
    assert_ne!(a.dir(), b.dir());
    assert_ne!(a.subnet(), b.subnet());
    assert_ne!(a.bridge(), b.bridge());
    assert_ne!(a.cgroup_parent(), b.cgroup_parent());
    let (fa, fb) = (Footprint::of(&a), Footprint::of(&b));
    a.shutdown().await?;
    // The other node still works after its neighbour is gone.
    assert_eq!(b.cri().await?.version().runtime_name, "containerd");
    b.shutdown().await?;
    fa.assert_gone();
    fb.assert_gone();
    Ok(())
}

#[test]
fn a_node_is_removed_when_its_test_panics() {
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let runtime = runtime.expect("a runtime");
        runtime.block_on(async move {
            let node = TestNode::start("panics").await.expect("the node starts");
            let cri = node.cri().await.expect("CRI answers");
            cri.run_pod_sandbox(sandbox_config(&node, "doomed"), "")
                .await
                .expect("the sandbox runs");
            tx.send(Footprint::of(&node))
                .expect("the test thread listens");
            panic!("a failing test");
        })
    })
    .join();
    assert!(outcome.is_err(), "the thread was meant to panic");
    rx.recv().expect("the node had started").assert_gone();
}

/// A node whose process is killed outright is cleaned up by the next owner of its slot, or
/// by `reap_stale_nodes`.
#[test]
fn a_node_abandoned_by_a_killed_process_is_reaped() -> Result<()> {
    std::fs::create_dir_all(BASE_DIR)?;
    let dir = tempfile::Builder::new()
        .prefix("abandoned-")
        .tempdir_in(BASE_DIR)?;
    let node_dir = dir.path().join("node");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bosun-testnode"))
        .args(["up", "--name", "abandoned", "--dir"])
        .arg(&node_dir)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting bosun-testnode")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut endpoint = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if line.starts_with("unix://") {
            endpoint = line;
            break;
        }
    }
    assert!(!endpoint.is_empty(), "bosun-testnode printed no endpoint");
    let config = node_dir
        .join("containerd.toml")
        .to_string_lossy()
        .into_owned();
    let containerd: Vec<u32> = pids()
        .into_iter()
        .filter(|&p| cmdline(p).contains(&config))
        .collect();
    assert_eq!(containerd.len(), 1, "expected one containerd for {config}");

    child.kill()?;
    child.wait()?;
    assert!(
        node_dir.exists() && running(containerd[0]),
        "the dead node's leftovers are there"
    );

    reap_stale_nodes(&Path::new(BASE_DIR).join("slots"))?;
    // A test in another process may have taken the freed slot first; then it is the one
    // cleaning up, and this waits (bounded) for it to finish.
    let deadline = Instant::now() + Duration::from_secs(10);
    while node_dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!node_dir.exists(), "{} was not removed", node_dir.display());
    assert!(
        !running(containerd[0]),
        "the dead node's containerd still runs"
    );
    Ok(())
}

fn nat_rules_mentioning(text: &str) -> Result<Vec<String>> {
    let output = Command::new("iptables")
        .args(["-w", "-t", "nat", "-S"])
        .output()?;
    anyhow::ensure!(output.status.success(), "iptables -S failed: {output:?}");
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains(text))
        .map(str::to_owned)
        .collect())
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Running and not a zombie.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit(')')
                .next()
                .map(|rest| rest.trim_start().to_owned())
        })
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

fn cgroup_dirs(cgroup: &str) -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            matches!(fields.get(2), Some(&"cgroup" | &"cgroup2"))
                .then(|| Path::new(fields[1]).join(cgroup.trim_start_matches('/')))
        })
        .filter(|dir| dir.exists())
        .collect()
}
