//! The clsact fallback on a kernel without tcx, for real: Debian bookworm's own kernel (6.1),
//! fetched by `scripts/setup.sh` into `.tools/kernel-6.1`, booted under qemu (emulated: this
//! machine's KVM does not run a nested guest) with an initramfs made here of busybox,
//! iproute2's `ip` and `tc`, the `bosun` binary, and the test binaries of netdp's clsact
//! scenarios, with the shared libraries each needs.
//!
//! In the guest: `bosun preflight` (which must choose clsact filters on this kernel), the node
//! port served through clsact filters, and the policy programs on clsact filters surviving a
//! restart and removed by cleanup — the same tests that run on this machine's kernel with the
//! fallback forced, here on a kernel that has nothing else.
//!
//! Needs root (only for what the guest does; the host side needs none), qemu-system-x86_64,
//! busybox (Debian's busybox-static), iproute2, and cargo on the PATH: netdp's test binaries
//! are built (or found built) by `cargo test --no-run`. Touches nothing of the host's beyond a
//! temporary directory.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

const BOSUN: &str = env!("CARGO_BIN_EXE_bosun");
/// Emulated, the guest runs the debug test binaries some ten times slower than the host.
const GUEST_TIMEOUT: Duration = Duration::from_secs(900);

/// netdp's test binaries and the clsact scenario each runs in the guest.
const SCENARIOS: [(&str, &str); 2] = [
    (
        "nodeport",
        "a_node_port_is_served_by_clsact_filters_on_kernels_without_tcx",
    ),
    (
        "policy_datapath",
        "clsact_filters_enforce_survive_restarts_and_cleanup_removes_them",
    ),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The executables of netdp's test targets `names`, built if they are not yet, as cargo
/// reports them.
fn netdp_tests(names: &[&str]) -> Result<Vec<(String, PathBuf)>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(workspace()).args([
        "test",
        "-p",
        "bosun-netdp",
        "--no-run",
        "--message-format=json",
    ]);
    for name in names {
        command.args(["--test", name]);
    }
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run for netdp's tests")?;
    ensure!(output.status.success(), "building netdp's tests failed");
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let name = message["target"]["name"].as_str().unwrap_or_default();
        if let Some(executable) = message["executable"].as_str() {
            if names.contains(&name) {
                found.push((name.to_owned(), PathBuf::from(executable)));
            }
        }
    }
    ensure!(
        found.len() == names.len(),
        "cargo named {found:?} for {names:?}"
    );
    Ok(found)
}

/// The shared libraries `elf` loads, and the loader, as `ldd` lists them.
fn libraries(elf: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(elf)
        .output()
        .with_context(|| format!("ldd {}", elf.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text
        .lines()
        .filter_map(|line| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
            let path = line.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Where `command` is on the PATH.
fn which(command: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(command))
        .find(|path| path.is_file())
        .with_context(|| format!("{command} is not on the PATH"))
}

/// Copies `from` to `root` + `at`, making the directories.
fn install(root: &Path, from: &Path, at: &Path) -> Result<()> {
    let to = root.join(at.strip_prefix("/").unwrap_or(at));
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
    Ok(())
}

/// The guest's `/init`: mounts what the tests need, loads the modules, runs each check and
/// says how it ended on a line of its own, then powers off.
fn init_script() -> String {
    let mut script = String::from(
        "#!/bin/sh\n\
         export PATH=/bin:/sbin:/usr/bin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n\
         mount -t tmpfs tmpfs /run\n\
         mount -t tmpfs tmpfs /tmp\n\
         mount -t bpf bpf /sys/fs/bpf\n\
         mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
         for module in /modules/*.ko; do insmod \"$module\" || echo \"GUEST: insmod $module failed\"; done\n\
         ip link set lo up\n\
         echo \"GUEST: kernel $(uname -r)\"\n\
         /usr/bin/bosun preflight; echo \"GUEST: preflight exited $?\"\n",
    );
    for (binary, test) in SCENARIOS {
        script.push_str(&format!(
            "/tests/{binary} --exact {test} --test-threads 1; echo \"GUEST: {binary} exited $?\"\n"
        ));
    }
    script.push_str("poweroff -f\n");
    script
}

/// Builds the initramfs in `dir`: a tree, then its cpio archive (uncompressed, which the
/// kernel takes as is); returns the archive's path.
fn initramfs(dir: &Path, tests: &[(String, PathBuf)], kernel: &Path) -> Result<PathBuf> {
    let root = dir.join("root");
    for sub in [
        "bin", "sbin", "usr/bin", "proc", "sys", "dev", "run", "tmp", "tests",
    ] {
        std::fs::create_dir_all(root.join(sub))?;
    }
    let busybox = which("busybox")?;
    install(&root, &busybox, Path::new("/bin/busybox"))?;
    for applet in [
        "sh", "mount", "insmod", "poweroff", "echo", "uname", "cat", "mkdir",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    let mut elves: Vec<(PathBuf, PathBuf)> = vec![
        (which("ip")?, PathBuf::from("/sbin/ip")),
        (which("tc")?, PathBuf::from("/sbin/tc")),
        (PathBuf::from(BOSUN), PathBuf::from("/usr/bin/bosun")),
    ];
    for (name, path) in tests {
        elves.push((path.clone(), PathBuf::from(format!("/tests/{name}"))));
    }
    let mut shared = BTreeSet::new();
    for (from, at) in &elves {
        install(&root, from, at)?;
        shared.extend(libraries(from)?);
    }
    for library in &shared {
        // The real file, at the path the loader looks for it.
        let real = std::fs::canonicalize(library)?;
        install(&root, &real, library)?;
    }
    for module in std::fs::read_dir(kernel.join("modules"))? {
        let module = module?.path();
        let name = module.file_name().context("a module's name")?;
        install(&root, &module, &Path::new("/modules").join(name))?;
    }
    let init = root.join("init");
    std::fs::write(&init, init_script())?;
    std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let archive = dir.join("initramfs.cpio");
    let status = Command::new("sh")
        .arg("-c")
        .arg("cd root && find . | busybox cpio -o -H newc > ../initramfs.cpio 2>/dev/null")
        .current_dir(dir)
        .status()?;
    ensure!(status.success(), "making the initramfs archive");
    Ok(archive)
}

/// Boots the kernel with the initramfs; the serial console's output once the guest is off.
fn boot(kernel: &Path, archive: &Path) -> Result<String> {
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2"])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(kernel.join("vmlinuz"))
        .arg("-initrd")
        .arg(archive)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (Debian's qemu-system-x86)")?;
    let mut stdout = child.stdout.take().context("qemu's output")?;
    let reader = std::thread::spawn(move || {
        let mut output = Vec::new();
        let _ = stdout.read_to_end(&mut output);
        String::from_utf8_lossy(&output).into_owned()
    });
    let started = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if started.elapsed() > GUEST_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let output = reader.join().unwrap_or_default();
            bail!("the guest ran past {GUEST_TIMEOUT:?}:\n{output}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("reading qemu's output"))
}

#[test]
fn the_tc_programs_fall_back_to_clsact_on_debian_bookworms_6_1_kernel() -> Result<()> {
    let kernel = workspace().join(".tools/kernel-6.1");
    ensure!(
        kernel.join("vmlinuz").is_file(),
        "no kernel in {}: run ./scripts/setup.sh",
        kernel.display()
    );
    let names: Vec<&str> = SCENARIOS.iter().map(|(binary, _)| *binary).collect();
    let tests = netdp_tests(&names)?;
    let dir = tempfile::tempdir()?;
    let archive = initramfs(dir.path(), &tests, &kernel)?;
    let started = Instant::now();
    let console = boot(&kernel, &archive)?;
    let guest: Vec<&str> = console
        .lines()
        .map(|line| line.trim_end_matches('\r'))
        .collect();
    eprintln!("{}", guest.join("\n"));
    eprintln!("the guest ran for {:?}", started.elapsed());
    let said = |wanted: &str| guest.iter().any(|line| line.contains(wanted));
    ensure!(said("GUEST: kernel 6.1."), "not the 6.1 kernel");
    ensure!(!said("GUEST: insmod"), "a module did not load");
    ensure!(said("GUEST: preflight exited 0"), "bosun preflight failed");
    ensure!(
        said("tc programs on the node's interfaces: clsact filters"),
        "bosun did not choose clsact on 6.1"
    );
    for (binary, test) in SCENARIOS {
        ensure!(
            said(&format!("GUEST: {binary} exited 0")),
            "{binary} {test} failed in the guest"
        );
        ensure!(
            said(&format!("test {test} ... ok")),
            "{binary} did not run {test}"
        );
    }
    Ok(())
}
