//! The host operations a node's teardown needs: finding and signalling processes, unmounting,
//! removing cgroups, deleting links and iptables rules. Each one is confined to what the
//! caller names (a socket path, a directory, a cgroup parent, a link, a CNI network); nothing
//! here acts on a process or object by its name alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// PATH for the host tools a node runs (ip, iptables, runc, the CNI plugins' iptables), so
/// that a test runner with a short PATH still finds the sbin directories.
pub(crate) const HOST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How often bounded waits look again.
const POLL: Duration = Duration::from_millis(20);

/// A host tool with the PATH above.
pub(crate) fn host_command(program: &str) -> Command {
    let mut command = Command::new(program);
    command.env("PATH", HOST_PATH);
    command
}

/// Runs a host tool and returns its stdout, or an error naming the command and its stderr.
pub(crate) fn run_tool(program: &str, args: &[&str]) -> Result<String> {
    run_command(host_command(program), program, args)
}

/// Runs `command` (`program` with `args`, already added) and returns its stdout, or an error
/// naming the command and its stderr.
pub(crate) fn run_command(mut command: Command, program: &str, args: &[&str]) -> Result<String> {
    let output = command
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

// ---- processes --------------------------------------------------------------------------

fn all_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .collect()
}

/// A process's arguments, or `None` once it is gone (or is a kernel thread).
pub(crate) fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if raw.is_empty() {
        return None;
    }
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// A process's state letter and parent, from /proc/PID/stat.
fn state_and_ppid(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether a process still runs: zombies count as gone, since nothing is left to stop.
pub(crate) fn is_running(pid: u32) -> bool {
    matches!(state_and_ppid(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// containerd shims serving the containerd at `socket`: their command line passes that
/// exact socket path as an argument.
pub(crate) fn shims_of(socket: &Path) -> Vec<u32> {
    let socket = socket.to_string_lossy();
    all_pids()
        .into_iter()
        .filter(|&pid| {
            cmdline(pid).is_some_and(|args| {
                args.first().is_some_and(|a| {
                    Path::new(a)
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("containerd-shim"))
                }) && args.iter().any(|a| *a == socket)
            })
        })
        .collect()
}

/// The direct children of `pid`.
pub(crate) fn children_of(pid: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&child| state_and_ppid(child).is_some_and(|(_, ppid)| ppid == pid))
        .collect()
}

/// Every descendant of `roots` (not the roots themselves).
pub(crate) fn descendants(roots: &[u32]) -> Vec<u32> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for pid in all_pids() {
        if let Some((_, ppid)) = state_and_ppid(pid) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut found = BTreeSet::new();
    let mut queue: Vec<u32> = roots.to_vec();
    while let Some(pid) = queue.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or_default() {
            if found.insert(child) {
                queue.push(child);
            }
        }
    }
    found.into_iter().collect()
}

/// Sends SIGKILL to `pids` (never to this process) and waits until they are gone or
/// `timeout` passes; returns those still running.
pub(crate) fn kill_and_wait(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let me = std::process::id();
    let pids: Vec<u32> = pids.iter().copied().filter(|&p| p != me).collect();
    for &pid in &pids {
        signal(pid, Signal::SIGKILL);
    }
    wait_gone(&pids, timeout)
}

pub(crate) fn signal(pid: u32, sig: Signal) {
    let Ok(raw) = i32::try_from(pid) else { return };
    // ESRCH (already gone) is the expected outcome for a racing exit.
    let _ = kill(Pid::from_raw(raw), sig);
}

/// Waits until none of `pids` runs, at most `timeout`; returns those still running.
pub(crate) fn wait_gone(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&p| is_running(p)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(POLL);
    }
}

// ---- mounts -----------------------------------------------------------------------------

/// Undoes mountinfo's octal escapes (`\040` for a space and so on).
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                out.push(
                    digits
                        .iter()
                        .fold(0u8, |acc, d| acc.wrapping_mul(8).wrapping_add(d - b'0')),
                );
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or under `dir`, from a mountinfo text, deepest first and, at the same
/// depth, the most recent mount first.
fn mounts_under_in(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<(usize, usize, PathBuf)> = mountinfo
        .lines()
        .enumerate()
        .filter_map(|(order, line)| {
            let mount_point = PathBuf::from(unescape_octal(line.split_whitespace().nth(4)?));
            mount_point
                .starts_with(dir)
                .then(|| (mount_point.components().count(), order, mount_point))
        })
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse((m.0, m.1)));
    found.into_iter().map(|(_, _, path)| path).collect()
}

/// Lazily unmounts everything mounted at or under `dir`, deepest first, until nothing is left
/// (mounts can be stacked).
pub(crate) fn unmount_under(dir: &Path) -> Result<()> {
    for _ in 0..8 {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .context("reading /proc/self/mountinfo")?;
        let mounts = mounts_under_in(&mountinfo, dir);
        if mounts.is_empty() {
            return Ok(());
        }
        for mount in mounts {
            if let Err(errno) = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH) {
                // EINVAL: no longer a mount point (a parent's lazy unmount took it along).
                if errno != nix::errno::Errno::EINVAL && errno != nix::errno::Errno::ENOENT {
                    bail!("unmounting {}: {errno}", mount.display());
                }
            }
        }
    }
    bail!("mounts under {} keep reappearing", dir.display())
}

// ---- cgroups ----------------------------------------------------------------------------

/// Mount points of every cgroup hierarchy, v1 and v2, from a /proc/mounts text.
fn cgroup_mounts_in(mounts: &str) -> Vec<PathBuf> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, mount_point, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            matches!(fstype, "cgroup" | "cgroup2")
                .then(|| PathBuf::from(unescape_octal(mount_point)))
        })
        .collect()
}

/// The directory of `cgroup` (an absolute cgroup path such as `/bosun-test-x-3`) in every
/// hierarchy where it exists.
pub(crate) fn cgroup_dirs(cgroup: &str) -> Vec<PathBuf> {
    let mut dirs = cgroup_dirs_to_create(cgroup);
    dirs.retain(|dir| dir.is_dir());
    dirs
}

/// The directory `cgroup` has (or would have) in every mounted hierarchy; never the root.
pub(crate) fn cgroup_dirs_to_create(cgroup: &str) -> Vec<PathBuf> {
    let relative = cgroup.trim_start_matches('/');
    if relative.is_empty() {
        return Vec::new();
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    cgroup_mounts_in(&mounts)
        .into_iter()
        .map(|mount| mount.join(relative))
        .collect()
}

/// `dir` and every cgroup below it, children before parents.
fn cgroup_tree_leaf_first(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(cgroup_tree_leaf_first(&entry.path()));
            }
        }
    }
    out.push(dir.to_owned());
    out
}

/// Processes in `cgroup` or below, in any hierarchy.
pub(crate) fn cgroup_processes(cgroup: &str) -> Vec<u32> {
    let mut pids = BTreeSet::new();
    for dir in cgroup_dirs(cgroup) {
        for sub in cgroup_tree_leaf_first(&dir) {
            let procs = std::fs::read_to_string(sub.join("cgroup.procs")).unwrap_or_default();
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
    }
    pids.into_iter().collect()
}

/// Removes `cgroup` and everything below it in every hierarchy, leaf first. A cgroup whose
/// last process is still exiting refuses removal (EBUSY) for a moment, so this retries for
/// up to `timeout`.
pub(crate) fn remove_cgroup_tree(cgroup: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut failures = Vec::new();
        for dir in cgroup_dirs(cgroup) {
            for sub in cgroup_tree_leaf_first(&dir) {
                if let Err(err) = std::fs::remove_dir(&sub) {
                    if err.kind() != std::io::ErrorKind::NotFound {
                        failures.push(format!("{}: {err}", sub.display()));
                    }
                }
            }
        }
        if failures.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("cannot remove cgroups: {}", failures.join("; "));
        }
        std::thread::sleep(POLL);
    }
}

// ---- links ------------------------------------------------------------------------------

pub(crate) fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Interfaces enslaved to `bridge` (the host ends of pods' veth pairs).
fn ports_of(bridge: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(Path::new("/sys/class/net").join(bridge).join("brif"))
    else {
        return Vec::new();
    };
    entries
        .filter_map(|e| Some(e.ok()?.file_name().to_str()?.to_owned()))
        .collect()
}

/// Deletes `bridge` and the veths attached to it (a veth whose pod network namespace leaked
/// would otherwise outlive the bridge).
pub(crate) fn delete_bridge(bridge: &str) -> Result<()> {
    if !link_exists(bridge) {
        return Ok(());
    }
    for port in ports_of(bridge) {
        delete_link(&port).with_context(|| format!("deleting {port}, a port of {bridge}"))?;
    }
    delete_link(bridge)
}

/// Deletes a link. A veth may vanish on its own meanwhile, when the kernel frees its peer's
/// network namespace, so a link that is gone afterwards counts as deleted.
fn delete_link(name: &str) -> Result<()> {
    match run_tool("ip", &["link", "del", "dev", name]) {
        Err(_) if !link_exists(name) => Ok(()),
        result => result.map(drop),
    }
}

// ---- iptables ---------------------------------------------------------------------------

/// Splits one line of `iptables -S` into arguments: words separated by spaces, where double
/// quotes group words and a backslash escapes the next character inside quotes.
fn split_rule(line: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            ' ' if !quoted => {
                if in_word {
                    args.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            c => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        args.push(current);
    }
    args
}

/// The rules (as `-A CHAIN …` argument lists) that CNI plugins tagged with `network` in their
/// comment: the bridge plugin's masquerade rules (`name: "NET" id: "…"`) and portmap's DNAT
/// jumps (`dnat name: "NET" id: "…"`).
fn rules_of_network(listing: &str, network: &str) -> Vec<Vec<String>> {
    let tag = format!("name: \"{network}\" ");
    listing
        .lines()
        .filter(|line| line.starts_with("-A "))
        .map(split_rule)
        .filter(|args| {
            args.windows(2)
                .any(|w| w[0] == "--comment" && w[1].contains(&tag))
        })
        .collect()
}

/// Per-container chains that the rules jump to. portmap's shared CNI-HOSTPORT-* chains are
/// used by every node and are never among them.
fn private_chains(rules: &[Vec<String>]) -> BTreeSet<String> {
    rules
        .iter()
        .flat_map(|args| args.windows(2))
        .filter(|w| w[0] == "-j" && w[1].starts_with("CNI-") && !w[1].starts_with("CNI-HOSTPORT-"))
        .map(|w| w[1].clone())
        .collect()
}

/// Deletes the nat rules and per-container chains that CNI left for `network` (normally none:
/// CNI DEL on RemovePodSandbox removes them). Rules are attributed by the network name in
/// their comment, which is unique to the node's slot.
pub(crate) fn delete_iptables_of_network(network: &str) -> Result<()> {
    let listing = run_tool("iptables", &["-w", "-t", "nat", "-S"])?;
    let rules = rules_of_network(&listing, network);
    let chains = private_chains(&rules);
    for rule in &rules {
        let mut args = vec![
            "-w".to_owned(),
            "-t".to_owned(),
            "nat".to_owned(),
            "-D".to_owned(),
        ];
        args.extend(rule.iter().skip(1).cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_tool("iptables", &args)?;
    }
    for chain in &chains {
        run_tool("iptables", &["-w", "-t", "nat", "-F", chain])?;
        run_tool("iptables", &["-w", "-t", "nat", "-X", chain])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_octal(r"/run/a\040b"), "/run/a b");
        assert_eq!(unescape_octal(r"/plain"), "/plain");
        assert_eq!(unescape_octal(r"/trailing\04"), r"/trailing\04");
    }

    #[test]
    fn mounts_under_a_dir_come_deepest_and_newest_first() {
        let mountinfo = "\
22 1 0:21 / /run rw - tmpfs tmpfs rw
40 22 0:50 / /run/n/state/a/rootfs rw - overlay overlay rw
41 22 0:51 / /run/n/state/b/shm rw - tmpfs shm rw
42 22 0:52 / /run/n rw - tmpfs tmpfs rw
43 40 0:53 / /run/n/state/a/rootfs/proc rw - proc proc rw
44 22 0:54 / /run/nn rw - tmpfs tmpfs rw
45 22 0:55 / /run/n/state/b/shm rw - tmpfs shm rw";
        let mounts = mounts_under_in(mountinfo, Path::new("/run/n"));
        let expected: Vec<PathBuf> = [
            "/run/n/state/a/rootfs/proc",
            "/run/n/state/b/shm",
            "/run/n/state/b/shm",
            "/run/n/state/a/rootfs",
            "/run/n",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(mounts, expected);
    }

    #[test]
    fn cgroup_hierarchies_v1_and_v2_are_found() {
        let mounts = "\
tmpfs /sys/fs/cgroup tmpfs rw 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0
proc /proc proc rw 0 0";
        assert_eq!(
            cgroup_mounts_in(mounts),
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu"),
                PathBuf::from("/sys/fs/cgroup/systemd"),
                PathBuf::from("/sys/fs/cgroup/unified"),
            ]
        );
    }

    #[test]
    fn the_root_cgroup_is_never_a_node_cgroup() {
        assert!(cgroup_dirs("/").is_empty());
        assert!(cgroup_dirs("").is_empty());
    }

    #[test]
    fn iptables_rules_are_split_like_a_shell_would() {
        assert_eq!(
            split_rule(
                r#"-A POSTROUTING -s 10.244.3.2/32 -m comment --comment "name: \"bosun-test-3\" id: \"abc\"" -j CNI-1f2e"#
            ),
            vec![
                "-A",
                "POSTROUTING",
                "-s",
                "10.244.3.2/32",
                "-m",
                "comment",
                "--comment",
                r#"name: "bosun-test-3" id: "abc""#,
                "-j",
                "CNI-1f2e",
            ]
        );
    }

    #[test]
    fn only_rules_of_the_named_network_are_selected() {
        let listing = r#"-P POSTROUTING ACCEPT
-N CNI-1f2e
-N CNI-HOSTPORT-DNAT
-A POSTROUTING -s 10.244.3.2/32 -m comment --comment "name: \"bosun-test-3\" id: \"abc\"" -j CNI-1f2e
-A POSTROUTING -s 10.244.31.2/32 -m comment --comment "name: \"bosun-test-31\" id: \"def\"" -j CNI-9a9a
-A CNI-1f2e -d 10.244.3.0/24 -m comment --comment "name: \"bosun-test-3\" id: \"abc\"" -j ACCEPT
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"bosun-test-3\" id: \"abc\"" -m multiport --dports 8080 -j CNI-DN-77
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"bosun-test-31\" id: \"def\"" -m multiport --dports 8081 -j CNI-DN-88
-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE"#;
        let rules = rules_of_network(listing, "bosun-test-3");
        assert_eq!(rules.len(), 3);
        assert!(rules
            .iter()
            .all(|r| !r.iter().any(|a| a.contains("bosun-test-31"))));
        let chains: Vec<String> = private_chains(&rules).into_iter().collect();
        assert_eq!(chains, vec!["CNI-1f2e".to_owned(), "CNI-DN-77".to_owned()]);
    }
}
