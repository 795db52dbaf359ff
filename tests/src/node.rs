//! A test node: a private containerd with CRI, its own CNI network and the test images,
//! confined to a directory, a bridge, a subnet and a cgroup parent of its own, and removed
//! again when the test ends however it ends.
//!
//! This module returns `anyhow` errors: its callers are tests, which only report them.

mod config;
mod host;
mod slot;
mod systemd;
mod teardown;

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bosun_cri::{ContainerdClient, CriClient, CRI_NAMESPACE};

use crate::images::{self, TestImages};
use config::{NetworkPlan, NodeLayout};
use slot::SlotLock;
pub use systemd::SystemdHost;
use teardown::{teardown, NodeRecord};

/// Where nodes live unless told otherwise: one directory per node, plus `slots/` (slot locks
/// and records) and `images/` (the image archive cache).
pub const BASE_DIR: &str = "/run/bosun-tests";
/// How long containerd may take to answer CRI after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long CRI may take to list an image after it was imported.
const IMAGE_VISIBLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The per-call deadline of the CRI clients this module hands out.
const CRI_TIMEOUT: Duration = Duration::from_secs(30);
/// Names longer than this are cut, to keep socket paths within their limit.
const MAX_NAME: usize = 24;
/// Written into a node's directory; a directory holding it may be reused by a later node.
const MARKER: &str = "bosun-test-node.json";

/// How to start a [`TestNode`].
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Names the node's directory and cgroup parent; reduced to `[a-z0-9-]`, at most 24 bytes.
    pub name: String,
    /// The node's directory; `BASE_DIR/<name>-<slot>` when `None`. It must be empty, absent,
    /// or left by an earlier node, and is removed with the node.
    pub dir: Option<PathBuf>,
    /// Holds the slot locks and records; shared by every node that must not collide.
    pub slots_dir: PathBuf,
    /// Where built image archives are cached between nodes.
    pub image_cache: PathBuf,
    /// Runs containerd (with `SystemdCgroup`) under a systemd of the node's own, in a
    /// container (see [`SystemdHost`]); daemons started on the node enter it too.
    pub systemd: bool,
}

impl NodeOptions {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            dir: None,
            slots_dir: Path::new(BASE_DIR).join("slots"),
            image_cache: Path::new(BASE_DIR).join("images"),
            systemd: false,
        }
    }
}

/// How long the phases of [`TestNode::start`] took.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartTimings {
    /// Building the images, or finding them in the cache.
    pub images: Duration,
    /// Starting containerd until CRI answers `Version`.
    pub containerd: Duration,
    /// Importing both images until CRI lists them.
    pub import: Duration,
}

/// A running node. Dropping it removes everything it created (see [`TestNode::shutdown`] for
/// the same with errors reported).
#[derive(Debug)]
pub struct TestNode {
    record: NodeRecord,
    layout: NodeLayout,
    socket: PathBuf,
    subnet: Ipv4Net,
    images: TestImages,
    containerd: Option<Child>,
    /// `None` once torn down.
    slot: Option<SlotLock>,
    timings: StartTimings,
    /// The node's systemd, when it has one; the teardown stops it with the node's other
    /// processes (it lives in the node's cgroup).
    systemd: Option<SystemdHost>,
    systemd_wanted: bool,
}

impl TestNode {
    /// Starts a node named `name` in its own slot under [`BASE_DIR`]. Needs root.
    pub async fn start(name: &str) -> Result<TestNode> {
        Self::start_with(NodeOptions::new(name)).await
    }

    /// Starts a node as `options` say.
    pub async fn start_with(options: NodeOptions) -> Result<TestNode> {
        if !nix::unistd::geteuid().is_root() {
            bail!("a test node needs root: it runs containerd, mounts, cgroups and links");
        }
        let began = Instant::now();
        let cache = options.image_cache.clone();
        let images = tokio::task::spawn_blocking(move || images::build_all(&cache))
            .await
            .context("the image build panicked")?
            .context("building the test images")?;
        let images_took = began.elapsed();

        let slot = SlotLock::acquire_any(&options.slots_dir, reap)?;
        let name = sanitize_name(&options.name);
        let dir = match &options.dir {
            Some(dir) => {
                std::path::absolute(dir).with_context(|| format!("resolving {}", dir.display()))?
            }
            None => Path::new(BASE_DIR).join(format!("{name}-{}", slot.slot)),
        };
        let layout = NodeLayout::new(&dir);
        layout.check().map_err(anyhow::Error::msg)?;
        reclaim_dir(&dir, &options.slots_dir, slot.slot)?;

        let record = NodeRecord::new(&name, slot.slot, &dir);
        // Recorded before anything exists, so that nothing can exist unrecorded.
        slot.write_record(&record)?;
        let subnet = Ipv4Net::parse(&record.subnet)?;
        let mut node = TestNode {
            socket: layout.socket(),
            subnet,
            record,
            layout,
            images,
            containerd: None,
            slot: Some(slot),
            timings: StartTimings {
                images: images_took,
                ..StartTimings::default()
            },
            systemd: None,
            systemd_wanted: options.systemd,
        };
        // On failure `node` is dropped here, which removes whatever was created.
        node.boot().await?;
        Ok(node)
    }

    async fn boot(&mut self) -> Result<()> {
        let layout = &self.layout;
        for dir in [
            layout.root(),
            layout.state(),
            layout.cni_conf_dir(),
            layout.ipam_dir(),
            layout.logs(),
        ] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        write(
            &layout.dir.join(MARKER),
            &serde_json::to_vec_pretty(&self.record)?,
        )?;
        write(
            &layout.config(),
            config::containerd_config(layout, self.systemd_wanted).as_bytes(),
        )?;
        write(
            &layout.cni_conflist(),
            config::cni_conflist(layout, &self.plan()).as_bytes(),
        )?;

        if self.systemd_wanted {
            self.boot_systemd()?;
        }
        let began = Instant::now();
        self.spawn_containerd()?;
        self.wait_until_ready().await?;
        self.timings.containerd = began.elapsed();

        let began = Instant::now();
        self.import_images().await?;
        self.timings.import = began.elapsed();
        Ok(())
    }

    /// Boots the node's systemd in the node's cgroup, with the test directories (nodes,
    /// images) and the build's binaries visible inside at the same paths.
    fn boot_systemd(&mut self) -> Result<()> {
        let mut binds = vec![PathBuf::from(BASE_DIR)];
        if !self.record.dir.starts_with(BASE_DIR) {
            binds.push(self.record.dir.clone());
        }
        // The test binary is in <target>/<profile>/deps; bosun is in <target>/<profile>.
        let exe = std::env::current_exe().context("finding the test binary")?;
        if let Some(profile_dir) = exe.parent().and_then(Path::parent) {
            binds.push(profile_dir.to_owned());
        }
        let machine = format!("bosun-test-{}", self.record.slot);
        let host = SystemdHost::boot(
            &machine,
            &self.record.cgroup_parent,
            &binds,
            &self.layout.logs().join("systemd.log"),
        )?;
        self.systemd = Some(host);
        Ok(())
    }

    /// The node's systemd, if it was started with one.
    pub fn systemd(&self) -> Option<&SystemdHost> {
        self.systemd.as_ref()
    }

    /// A command for `program` on this node: inside the node's systemd container when it has
    /// one, else on the host.
    pub fn command(&self, program: &str) -> std::process::Command {
        match &self.systemd {
            Some(systemd) => systemd.command(program),
            None => host::host_command(program),
        }
    }

    fn spawn_containerd(&mut self) -> Result<()> {
        let log_path = self.layout.containerd_log();
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let child = self
            .command("containerd")
            .arg("--config")
            .arg(self.layout.config())
            .current_dir(&self.layout.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file")?)
            .stderr(log)
            // Its own process group: a Ctrl-C in a terminal must reach only the test, which
            // then removes the pods through containerd before stopping it.
            .process_group(0)
            .spawn()
            .context("starting containerd")?;
        self.record.containerd_pid = Some(child.id());
        self.containerd = Some(child);
        if let Some(slot) = &self.slot {
            slot.write_record(&self.record)?;
        }
        Ok(())
    }

    /// Polls until CRI answers `Version`, containerd exits, or the timeout passes.
    async fn wait_until_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let endpoint = self.cri_endpoint();
        loop {
            if let Some(child) = &mut self.containerd {
                if let Some(status) = child.try_wait().context("waiting for containerd")? {
                    bail!(
                        "containerd exited ({status}) while starting{}",
                        self.log_tail()
                    );
                }
            }
            let last_error = match CriClient::connect(&endpoint, Duration::from_secs(2)).await {
                Ok(_) => return Ok(()),
                Err(err) if err.is_retryable() => err,
                Err(err) => bail!("containerd does not serve CRI: {err}{}", self.log_tail()),
            };
            if Instant::now() >= deadline {
                bail!(
                    "containerd did not answer CRI at {endpoint} within {READY_TIMEOUT:?}: {last_error}{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Imports both images into CRI's namespace and waits until CRI lists them (its image
    /// cache follows containerd's image events).
    async fn import_images(&self) -> Result<()> {
        let containerd = ContainerdClient::connect(&self.layout.socket())
            .await
            .context("connecting to containerd's API")?;
        for archive in self.images.all() {
            let imported = containerd
                .import_oci_archive(CRI_NAMESPACE, &archive.path)
                .await
                .with_context(|| format!("importing {}", archive.path.display()))?;
            if !imported.iter().any(|image| image.name == archive.reference) {
                bail!(
                    "importing {} did not create {}",
                    archive.path.display(),
                    archive.reference
                );
            }
        }
        let cri = self.cri().await?;
        for archive in self.images.all() {
            if !cri
                .wait_for_image(&archive.reference, IMAGE_VISIBLE_TIMEOUT)
                .await?
            {
                bail!("CRI does not list {} after importing it", archive.reference);
            }
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.layout.containerd_log()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!(
            "\n--- last lines of {} ---\n{tail}",
            self.layout.containerd_log().display()
        )
    }

    /// The CRI endpoint, as kubelet's `--container-runtime-endpoint` takes it.
    pub fn cri_endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// containerd's socket (CRI and containerd's own API).
    pub fn containerd_socket(&self) -> &Path {
        &self.socket
    }

    /// A connected CRI client for this node.
    pub async fn cri(&self) -> Result<CriClient> {
        CriClient::connect(&self.cri_endpoint(), CRI_TIMEOUT)
            .await
            .with_context(|| format!("connecting to CRI at {}", self.cri_endpoint()))
    }

    /// The node's directory; everything containerd stores lives below it.
    pub fn dir(&self) -> &Path {
        &self.record.dir
    }

    /// The name this node was started with, reduced as [`NodeOptions::name`] says.
    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// The bpffs directory a daemon on this node pins its service datapath in; removed with
    /// the node.
    pub fn bpf_dir(&self) -> PathBuf {
        self.record.bpf_dir()
    }

    /// The slot this node holds; it numbers the bridge, subnet and network.
    pub fn slot(&self) -> u16 {
        self.record.slot
    }

    /// The pod subnet, e.g. `10.244.3.0/24`.
    pub fn subnet(&self) -> &str {
        &self.record.subnet
    }

    /// Whether `ip` (a pod IP as CRI reports it) is in the node's subnet.
    pub fn subnet_contains(&self, ip: &str) -> bool {
        ip.parse().is_ok_and(|ip| self.subnet.contains(ip))
    }

    /// The Linux bridge CNI creates for this node's pods (when the first pod starts).
    pub fn bridge(&self) -> &str {
        &self.record.bridge
    }

    /// The CNI network name.
    pub fn network_name(&self) -> &str {
        &self.record.network
    }

    /// The cgroup parent (cgroupfs form, e.g. `/bosun-test-name-3`) under which tests put
    /// their pod sandboxes, so that cleanup finds and removes them.
    pub fn cgroup_parent(&self) -> &str {
        &self.record.cgroup_parent
    }

    /// The image archives the node imported.
    pub fn images(&self) -> &TestImages {
        &self.images
    }

    /// containerd's process id while it runs.
    pub fn containerd_pid(&self) -> Option<u32> {
        self.containerd.as_ref().map(Child::id)
    }

    /// containerd's log.
    pub fn containerd_log(&self) -> PathBuf {
        self.layout.containerd_log()
    }

    /// How long starting took.
    pub fn timings(&self) -> StartTimings {
        self.timings
    }

    /// Removes everything the node created: its pods (through CRI), containerd, leftover
    /// shims and workloads, mounts, cgroups, the bridge, CNI's iptables rules and the
    /// directory. Returns an error listing each step that failed; all steps run regardless.
    pub async fn shutdown(mut self) -> Result<()> {
        let record = self.record.clone();
        let containerd = self.containerd.take();
        let slot = self.slot.take();
        tokio::task::spawn_blocking(move || finish(&record, containerd, slot))
            .await
            .context("the teardown panicked")?
    }

    fn plan(&self) -> NetworkPlan {
        self.record.plan()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else { return };
        if let Err(err) = finish(&self.record, self.containerd.take(), Some(slot)) {
            // Drop cannot return it; stderr is what a failing test shows.
            eprintln!("{err:#}");
        }
    }
}

/// Tears the node down and, if that left nothing behind, releases its slot record.
fn finish(record: &NodeRecord, containerd: Option<Child>, slot: Option<SlotLock>) -> Result<()> {
    let problems = teardown(record, containerd);
    if !problems.is_empty() {
        // The record stays, so the next owner of the slot tries again.
        bail!(
            "test node {} (slot {}) left things behind:\n  {}",
            record.name,
            record.slot,
            problems.join("\n  ")
        );
    }
    if let Some(slot) = slot {
        slot.clear_record()?;
    }
    Ok(())
}

/// Cleans up after a previous owner of `slot` that died before its own teardown finished.
fn reap(slot: &SlotLock) -> Result<()> {
    if let Some(stale) = slot.read_record()? {
        tracing::info!(slot = stale.slot, dir = %stale.dir.display(), "cleaning up a dead test node");
        finish(&stale, None, None)?;
        slot.clear_record()?;
    }
    Ok(())
}

/// Cleans up every node whose process died before its own teardown finished (each is also
/// cleaned up when its slot is next taken). Returns the slots that were cleaned.
pub fn reap_stale_nodes(slots_dir: &Path) -> Result<Vec<u16>> {
    let mut reaped = Vec::new();
    let Ok(entries) = std::fs::read_dir(slots_dir) else {
        return Ok(reaped);
    };
    let mut slots: Vec<u16> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".json")?.parse().ok())
        .collect();
    slots.sort_unstable();
    for number in slots {
        if let Some(slot) = SlotLock::try_acquire(slots_dir, number)? {
            if slot.read_record()?.is_some() {
                reap(&slot)?;
                reaped.push(number);
            }
        }
    }
    Ok(reaped)
}

/// Makes `dir` ready for a new node: absent and empty directories are fine; a directory an
/// earlier node left is cleaned up if that node is dead; anything else is refused, since the
/// node's teardown removes its directory.
fn reclaim_dir(dir: &Path, slots_dir: &Path, own_slot: u16) -> Result<()> {
    let mut entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err).with_context(|| format!("reading {}", dir.display())),
    };
    if entries.next().is_none() {
        return Ok(());
    }
    let marker = dir.join(MARKER);
    let Ok(bytes) = std::fs::read(&marker) else {
        bail!(
            "{} is not empty and was not made by a test node; refusing to use it",
            dir.display()
        );
    };
    let previous: NodeRecord =
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", marker.display()))?;
    // A node in another slot is dead only if that slot's lock can be taken.
    let other = match previous.slot == own_slot {
        true => None,
        false => match SlotLock::try_acquire(slots_dir, previous.slot)? {
            Some(lock) => Some(lock),
            None => bail!(
                "{} belongs to a running test node (slot {})",
                dir.display(),
                previous.slot
            ),
        },
    };
    finish(&previous, None, None)?;
    if let Some(other) = other {
        if other.read_record()?.as_ref() == Some(&previous) {
            other.clear_record()?;
        }
    }
    Ok(())
}

/// An IPv4 prefix such as `10.244.3.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ipv4Net {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Net {
    fn parse(text: &str) -> Result<Self> {
        let parsed = text.split_once('/').and_then(|(addr, len)| {
            Some(Ipv4Net {
                network: addr.parse().ok()?,
                prefix_len: len.parse().ok().filter(|l| *l <= 32)?,
            })
        });
        parsed.with_context(|| format!("{text:?} is not an IPv4 prefix"))
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.network) & mask
    }
}

fn sanitize_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    out.truncate(MAX_NAME);
    let out = out.trim_matches('-');
    if out.is_empty() {
        "node".to_owned()
    } else {
        out.to_owned()
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_membership() {
        let net = Ipv4Net::parse("10.244.3.0/24").unwrap();
        assert!(net.contains(Ipv4Addr::new(10, 244, 3, 7)));
        assert!(!net.contains(Ipv4Addr::new(10, 244, 31, 7)));
        assert!(Ipv4Net::parse("0.0.0.0/0")
            .unwrap()
            .contains(Ipv4Addr::new(1, 2, 3, 4)));
        assert!(Ipv4Net::parse("10.0.0.0/33").is_err());
        assert!(Ipv4Net::parse("10.0.0.0").is_err());
    }

    #[test]
    fn names_are_reduced_to_safe_short_words() {
        assert_eq!(
            sanitize_name("cri::exec_sync works"),
            "cri--exec-sync-works"
        );
        assert_eq!(sanitize_name("--"), "node");
        assert_eq!(sanitize_name(&"x".repeat(100)).len(), MAX_NAME);
    }
}
