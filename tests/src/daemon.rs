//! A `bosun run` daemon on a [`TestNode`]: its own root directory, manifest directory, log
//! file and cgroup root under the node's directory, so daemons of different tests never
//! meet. Tests read the pods' status through `bosun get pods -o json`, as a user would.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::node::{NodeOptions, TestNode};

/// The node name every test daemon runs as: static pods are named `NAME-node1`.
pub const NODE_NAME: &str = "node1";

/// A running `bosun run`; killed (SIGKILL) when dropped.
pub struct Daemon {
    bin: PathBuf,
    child: tokio::process::Child,
    root: PathBuf,
    manifests: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts `bin run` for `node`, laid out in the node's directory (see [`Daemon::start_at`]).
    pub async fn start(bin: &Path, node: &TestNode, extra_config: &str) -> Result<Daemon> {
        Self::start_at(bin, node, node.dir(), extra_config).await
    }

    /// Starts `bin run` for `node` with everything of its own under `dir`: manifests from
    /// `dir/manifests` (created if missing), root directory `dir/bosun`, config file
    /// `dir/bosun.yaml` (`extra_config` appended) and log `dir/bosun.log`. Pod logs and
    /// cgroups go under the node's.
    pub async fn start_at(
        bin: &Path,
        node: &TestNode,
        dir: &Path,
        extra_config: &str,
    ) -> Result<Daemon> {
        Self::start_with_args(bin, node, dir, extra_config, &[]).await
    }

    /// As [`Daemon::start_at`], with more flags for `bosun run` (e.g. `--kubeconfig`).
    pub async fn start_with_args(
        bin: &Path,
        node: &TestNode,
        dir: &Path,
        extra_config: &str,
        args: &[&std::ffi::OsStr],
    ) -> Result<Daemon> {
        Self::start_with_env(bin, node, dir, extra_config, args, &[]).await
    }

    /// As [`Daemon::start_with_args`], with variables added to the daemon's environment.
    pub async fn start_with_env(
        bin: &Path,
        node: &TestNode,
        dir: &Path,
        extra_config: &str,
        args: &[&std::ffi::OsStr],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Daemon> {
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests)
            .with_context(|| format!("creating {}", manifests.display()))?;
        let root = dir.join("bosun");
        let config = dir.join("bosun.yaml");
        // Daemons of tests running at once would fight over the one /healthz port: none is
        // served unless a test asks for it.
        let healthz = if extra_config.contains("healthzPort") {
            ""
        } else {
            "healthzPort: 0\n"
        };
        // A node with its own systemd has its own cgroup namespace: pods go under the
        // default root there, named by the systemd driver as its containerd's runc names them.
        let cgroups = match node.systemd() {
            Some(_) => "cgroupDriver: systemd\ncgroupRoot: /\n".to_owned(),
            None => format!("cgroupRoot: {}\n", node.cgroup_parent()),
        };
        // The machines tests run on share their disk with other builds, whose space comes
        // and goes: kubelet's default disk thresholds would put a test's node under disk
        // pressure (refusing pods, removing the test's images) depending on them. Only the
        // memory threshold stays, unless a test sets its own.
        let eviction = if extra_config.contains("evictionHard") {
            ""
        } else {
            "evictionHard: {memory.available: 100Mi}\n"
        };
        std::fs::write(
            &config,
            format!(
                "{cgroups}podLogsDir: {}\nclusterDomain: cluster.local\n{healthz}{eviction}{extra_config}",
                node.dir().join("pod-logs").display()
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let log = dir.join("bosun.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut command = match node.systemd() {
            Some(systemd) => systemd.tokio_command(bin),
            None => tokio::process::Command::new(bin),
        };
        let child = command
            .args(["run", "--hostname-override", NODE_NAME])
            .arg("--pod-manifest-path")
            .arg(&manifests)
            .arg("--container-runtime-endpoint")
            .arg(node.cri_endpoint())
            .arg("--root-dir")
            .arg(&root)
            .arg("--config")
            .arg(&config)
            .arg("--bpf-dir")
            .arg(node.bpf_dir())
            // The machine's own uplink is not a test node's to serve node ports on; a test
            // names its own external interfaces (the flag's lists add up).
            .arg("--external-interfaces=none")
            .args(args)
            .envs(env.iter().copied())
            // BOSUN_TEST_LOG raises (or lowers) the daemon's log level in a test.
            .env(
                "RUST_LOG",
                std::env::var("BOSUN_TEST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Daemon {
            bin: bin.to_owned(),
            child,
            root,
            manifests,
            log,
        })
    }

    pub fn manifests(&self) -> &Path {
        &self.manifests
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Writes (or replaces) a manifest file, atomically, as an editor that renames would.
    pub fn write_manifest(&self, file: &str, text: &str) -> Result<()> {
        let tmp = self.manifests.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, self.manifests.join(file))
            .with_context(|| format!("renaming into {file}"))?;
        Ok(())
    }

    pub fn remove_manifest(&self, file: &str) -> Result<()> {
        std::fs::remove_file(self.manifests.join(file)).with_context(|| format!("removing {file}"))
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The daemon's exit status, if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, what: &str) -> Option<Value> {
        let output = tokio::process::Command::new(&self.bin)
            .args(["get", what, "-o", "json", "--root-dir"])
            .arg(&self.root)
            .output()
            .await
            .ok()?;
        output
            .status
            .success()
            .then(|| serde_json::from_slice(&output.stdout).ok())?
    }

    /// `bosun get pods -o json`, or `None` while the daemon does not answer.
    pub async fn pods(&self) -> Option<Value> {
        self.get("pods").await
    }

    /// `bosun get events -o json`, or `None` while the daemon does not answer.
    pub async fn events(&self) -> Option<Value> {
        self.get("events").await
    }

    /// The pod of the manifest named `name` (its static pod is `name-node1`).
    pub async fn pod(&self, name: &str) -> Option<Value> {
        let full = format!("{name}-{NODE_NAME}");
        let list = self.pods().await?;
        list["items"]
            .as_array()?
            .iter()
            .find(|p| p["metadata"]["name"] == full.as_str())
            .cloned()
    }

    /// Polls the pod's status every 20 ms until `check` holds, for at most `within`.
    pub async fn wait_for(
        &self,
        name: &str,
        what: &str,
        within: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + within;
        let mut last = Value::Null;
        loop {
            if let Some(pod) = self.pod(name).await {
                if check(&pod) {
                    return Ok(pod);
                }
                last = pod;
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "pod {name}-{NODE_NAME} never got {what} within {within:?}; last seen:\n{last:#}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until the pod is no longer listed.
    pub async fn wait_gone(&self, name: &str, within: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.pods().await.is_some() && self.pod(name).await.is_none() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("pod {name}-{NODE_NAME} is still listed after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, as `kill -9` would: the pods stay behind for the next daemon to adopt.
    pub async fn kill(mut self) -> Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }
}

/// A Pod manifest with one busybox container `app` running `script` under `sh -c`;
/// `spec_extra` is spliced into `spec:` (two-space indented lines) and `container_extra`
/// into the container (four-space indented lines).
pub fn busybox_pod(name: &str, spec_extra: &str, container_extra: &str, script: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{spec_extra}  containers:\n  - name: app\n    image: {image}\n    imagePullPolicy: IfNotPresent\n    command: [sh, -c, {script:?}]\n{container_extra}",
        image = crate::images::BUSYBOX_IMAGE,
    )
}

/// A script for a container's PID 1 that exits 0 on SIGTERM (PID 1 ignores it otherwise).
pub const SLEEP_FOREVER: &str = "trap 'exit 0' TERM; while true; do sleep 1; done";

pub fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or("")
}

/// The status (`"True"`/`"False"`) of the pod condition `type_`.
pub fn condition<'a>(pod: &'a Value, type_: &str) -> &'a str {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
}

pub fn ready(pod: &Value) -> bool {
    condition(pod, "Ready") == "True"
}

/// The status of the container `name` (regular or init).
pub fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    let find = |list: &'a Value| {
        list.as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == name))
    };
    find(&pod["status"]["containerStatuses"])
        .or_else(|| find(&pod["status"]["initContainerStatuses"]))
        .unwrap_or(&Value::Null)
}

/// Starts a node named `name` and a daemon on it (with `config` added to its config file),
/// runs `scenario`, prints the daemon's log if it failed, and tears the node down either way.
pub async fn on_a_node<F, Fut>(bin: &Path, name: &str, config: &str, scenario: F) -> Result<()>
where
    F: FnOnce(TestNode, Daemon) -> Fut,
    Fut: std::future::Future<Output = (TestNode, Result<()>)>,
{
    on_a_node_with(bin, NodeOptions::new(name), config, scenario).await
}

/// As [`on_a_node`], for a node started as `options` say.
pub async fn on_a_node_with<F, Fut>(
    bin: &Path,
    options: NodeOptions,
    config: &str,
    scenario: F,
) -> Result<()>
where
    F: FnOnce(TestNode, Daemon) -> Fut,
    Fut: std::future::Future<Output = (TestNode, Result<()>)>,
{
    let (bin, config) = (bin.to_owned(), config.to_owned());
    on_a_node_set_up(
        options,
        |node| Box::pin(async move { Daemon::start(&bin, node, &config).await }),
        scenario,
    )
    .await
}

/// Starts a node as `options` say, sets it up with `set_up` (which starts its daemon, and
/// whatever else the test needs), runs `scenario`, prints the daemon's log if it failed, and
/// tears the node down either way.
pub async fn on_a_node_set_up<S, Set, F, Fut>(
    options: NodeOptions,
    set_up: Set,
    scenario: F,
) -> Result<()>
where
    Set: for<'n> FnOnce(
        &'n TestNode,
    )
        -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<S>> + 'n>>,
    F: FnOnce(TestNode, S) -> Fut,
    Fut: std::future::Future<Output = (TestNode, Result<()>)>,
{
    let node = TestNode::start_with(options).await?;
    let state = match set_up(&node).await {
        Ok(state) => state,
        Err(e) => {
            node.shutdown().await?;
            return Err(e);
        }
    };
    let log = node.dir().join("bosun.log");
    let (node, result) = scenario(node, state).await;
    if result.is_err() {
        println!(
            "--- bosun log ---\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    node.shutdown().await?;
    result
}

/// The CRI ID of the pod's container `name` (without the `containerd://` prefix).
pub fn container_id(pod: &Value, name: &str) -> String {
    container(pod, name)["containerID"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("containerd://")
        .to_owned()
}

/// Runs `script` with `sh -c` in the container through CRI ExecSync; its stdout, or an
/// error with its exit code and stderr.
pub async fn sh(client: &bosun_cri::CriClient, id: &str, script: &str) -> Result<String> {
    let out = client
        .exec_sync(
            id,
            vec!["sh".into(), "-c".into(), script.into()],
            Duration::from_secs(5),
        )
        .await?;
    anyhow::ensure!(
        out.exit_code == 0,
        "{script}: exit {}: {}",
        out.exit_code,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Daemon {
    /// Polls `get events` until an event with this reason whose message contains `text`
    /// is listed, for at most `within`.
    pub async fn wait_for_event(
        &self,
        reason: &str,
        text: &str,
        within: Duration,
    ) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let events = self.events().await.unwrap_or(Value::Null);
            let found = events["items"].as_array().and_then(|items| {
                items
                    .iter()
                    .find(|e| {
                        e["reason"] == reason
                            && e["message"].as_str().is_some_and(|m| m.contains(text))
                    })
                    .cloned()
            });
            if let Some(event) = found {
                return Ok(event);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "no {reason} event with {text:?}; events:\n{events:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
