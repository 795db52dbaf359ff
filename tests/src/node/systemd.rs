//! A systemd host for a test node: systemd as PID 1 of a container (systemd-nspawn) that runs
//! on the host's own `/usr` with a fresh `/etc`, shares the host's network, and lives in the
//! node's cgroup, so that the node's teardown (which stops every process of that cgroup and
//! removes it) removes the container too. containerd and bosun are started inside its mount,
//! PID and cgroup namespaces: they reach this systemd over D-Bus and see its cgroups, as on a
//! host whose PID 1 is systemd. The machine's own PID 1 is not systemd (see node-env.md).
//!
//! The container's cgroup v1 controllers are made writable before systemd starts (nspawn
//! mounts them read-only on a hybrid host), so systemd manages them and writes unit
//! properties such as `TasksMax` into the cgroup files, as it does on a real host.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sched::CloneFlags;

use super::host::{self, HOST_PATH};

/// How long systemd may take to finish booting in the container.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// PID 1's command in the container: make `/proc/sys`, `/sys` and the cgroup hierarchies
/// writable (the CNI plugins write sysctls and bridge settings; systemd and runc write
/// cgroups), then become systemd, booting no further than `basic.target` (D-Bus, no
/// services).
const INIT: &str = "mount -o remount,bind,rw /proc/sys; mount -o remount,rw /sys; \
    for c in /sys/fs/cgroup/*/; do mount -o remount,bind,rw \"$c\"; done; \
    exec /lib/systemd/systemd systemd.firstboot=off systemd.unit=basic.target";

/// The shell that runs a program in the container (see [`SystemdHost::command`]); the
/// program and its arguments follow.
const WRAPPER: [&str; 7] = [
    "-c",
    "trap 'kill -TERM $child 2>/dev/null' TERM INT; \
     \"$@\" & child=$!; wait $child; status=$?; \
     while kill -0 $child 2>/dev/null; do wait $child; status=$?; done; exit $status",
    "sh",
    "setpriv",
    "--pdeathsig",
    "KILL",
    "--",
];

/// The running container, entered through its namespaces.
#[derive(Debug)]
pub struct SystemdHost {
    nspawn: Child,
    leader: u32,
    namespaces: Namespaces,
}

#[derive(Debug, Clone)]
struct Namespaces {
    mount: std::sync::Arc<OwnedFd>,
    pid: std::sync::Arc<OwnedFd>,
    cgroup: std::sync::Arc<OwnedFd>,
}

impl SystemdHost {
    /// Boots the container `machine` in cgroup `cgroup` (an absolute path, the same in every
    /// hierarchy), with `binds` (host directories) visible at the same paths inside, and
    /// waits until systemd has finished booting.
    pub(crate) fn boot(machine: &str, cgroup: &str, binds: &[PathBuf], log: &Path) -> Result<Self> {
        if host::run_tool("systemd-nspawn", &["--version"]).is_err() {
            bail!("a systemd test node needs systemd-nspawn (Debian package systemd-container)");
        }
        // The xtables lock is shared with the host's iptables users.
        let xtables_lock = Path::new("/run/xtables.lock");
        if !xtables_lock.exists() {
            File::create(xtables_lock).context("creating /run/xtables.lock")?;
        }
        let mut procs = Vec::new();
        for dir in host::cgroup_dirs_to_create(cgroup) {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            // A v1 cpuset cgroup takes no process until it has CPUs and memory nodes.
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let (own, parent) = (dir.join(file), dir.parent().map(|p| p.join(file)));
                if let Some(parent) = parent.filter(|_| own.exists()) {
                    let value = std::fs::read_to_string(&parent)
                        .with_context(|| format!("reading {}", parent.display()))?;
                    std::fs::write(&own, value.trim())
                        .with_context(|| format!("writing {}", own.display()))?;
                }
            }
            procs.push(dir.join("cgroup.procs"));
        }
        // The shell moves itself into the node's cgroup in every hierarchy, then becomes
        // nspawn, so the whole container is in that cgroup from its first process on.
        let mut nspawn_args: Vec<String> = vec![
            "--keep-unit".into(),
            "--register=no".into(),
            "--directory=/".into(),
            "--volatile=yes".into(),
            format!("--machine={machine}"),
            "--console=read-only".into(),
            format!("--bind={}", xtables_lock.display()),
            // The container's /etc is new and empty: containerd copies the host's hosts file
            // into sandboxes; iptables is found through Debian's alternatives and reads the
            // protocol names.
            "--bind-ro=/etc/hosts".into(),
            "--bind-ro=/etc/protocols".into(),
            "--bind-ro=/etc/alternatives".into(),
            "--resolv-conf=copy-host".into(),
        ];
        for bind in binds {
            nspawn_args.push(format!("--bind={}", bind.display()));
        }
        nspawn_args.extend(["/bin/sh".into(), "-c".into(), INIT.into()]);
        let script = format!(
            "for f in {procs}; do echo $$ > \"$f\" || exit 1; done; exec systemd-nspawn {args}",
            procs = procs
                .iter()
                .map(|p| shell_quote(&p.to_string_lossy()))
                .collect::<Vec<_>>()
                .join(" "),
            args = nspawn_args
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
        );
        let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let nspawn = Command::new("/bin/sh")
            .env("PATH", HOST_PATH)
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().context("duplicating the log file")?)
            .stderr(log_file)
            .spawn()
            .context("starting systemd-nspawn")?;
        let mut host = SystemdHost {
            leader: 0,
            namespaces: Namespaces::placeholder()?,
            nspawn,
        };
        host.wait_for_boot(log)?;
        Ok(host)
    }

    fn wait_for_boot(&mut self, log: &Path) -> Result<()> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let tail = || {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        loop {
            if let Some(status) = self.nspawn.try_wait().context("waiting for nspawn")? {
                bail!(
                    "systemd-nspawn exited ({status}) while booting:\n{}",
                    tail()
                );
            }
            if self.leader == 0 {
                // The container's PID 1 is nspawn's child, once it has become systemd.
                self.leader = host::children_of(self.nspawn.id())
                    .into_iter()
                    .find(|&pid| {
                        host::cmdline(pid).is_some_and(|args| {
                            args.first().is_some_and(|a| a.ends_with("/systemd"))
                        })
                    })
                    .unwrap_or(0);
                if self.leader != 0 {
                    self.namespaces = Namespaces::of(self.leader)?;
                }
            }
            if self.leader != 0 {
                let output = self
                    .command("systemctl")
                    .args(["is-system-running"])
                    .output()
                    .context("running systemctl in the container")?;
                let state = String::from_utf8_lossy(&output.stdout).trim().to_owned();
                if matches!(state.as_str(), "running" | "degraded") {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "systemd did not finish booting within {BOOT_TIMEOUT:?}:\n{}",
                    tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A command that runs `program` (its arguments added by the caller) inside the
    /// container's mount, PID and cgroup namespaces, with the host's network and the
    /// container's systemd as PID 1.
    ///
    /// A process cannot enter another PID namespace itself, only its children can; so the
    /// command is a shell that enters the namespaces before it starts and runs `program` as
    /// its child: SIGTERM and SIGINT are passed on, the shell exits with `program`'s status,
    /// and `program` is killed if the shell is (its parent-death signal).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("/bin/sh");
        command.env("PATH", HOST_PATH).args(WRAPPER).arg(program);
        let namespaces = self.namespaces.clone();
        // SAFETY: the closure runs between fork and exec and only makes setns system calls
        // on descriptors opened before the fork; it allocates nothing.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || namespaces.enter());
        }
        command
    }

    /// As [`SystemdHost::command`], for tokio.
    pub fn tokio_command(&self, program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("/bin/sh");
        command.env("PATH", HOST_PATH).args(WRAPPER).arg(program);
        let namespaces = self.namespaces.clone();
        // SAFETY: as in `command`.
        unsafe {
            command.pre_exec(move || namespaces.enter());
        }
        command
    }

    /// Runs `systemctl args` in the container and returns its stdout.
    pub fn systemctl(&self, args: &[&str]) -> Result<String> {
        host::run_command(self.command("systemctl"), "systemctl", args)
    }

    /// The container's PID 1 (systemd), as the host numbers it.
    pub fn leader(&self) -> u32 {
        self.leader
    }

    /// systemd-nspawn's process id, as the host numbers it.
    pub fn nspawn_pid(&self) -> u32 {
        self.nspawn.id()
    }
}

impl Namespaces {
    fn of(pid: u32) -> Result<Self> {
        let open = |kind: &str| -> Result<std::sync::Arc<OwnedFd>> {
            let path = format!("/proc/{pid}/ns/{kind}");
            let file = File::open(&path).with_context(|| format!("opening {path}"))?;
            Ok(std::sync::Arc::new(OwnedFd::from(file)))
        };
        Ok(Namespaces {
            mount: open("mnt")?,
            pid: open("pid")?,
            cgroup: open("cgroup")?,
        })
    }

    /// Stand-ins (this process's own namespaces) until the container's are known.
    fn placeholder() -> Result<Self> {
        Self::of(std::process::id())
    }

    fn enter(&self) -> std::io::Result<()> {
        for (fd, kind) in [
            (&self.pid, CloneFlags::CLONE_NEWPID),
            (&self.cgroup, CloneFlags::CLONE_NEWCGROUP),
            (&self.mount, CloneFlags::CLONE_NEWNS),
        ] {
            nix::sched::setns(fd.as_fd(), kind).map_err(std::io::Error::from)?;
        }
        Ok(())
    }
}

/// `text` quoted for a POSIX shell.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}
