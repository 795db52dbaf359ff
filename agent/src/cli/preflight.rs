//! `bosun preflight`: whether this host can run bosun's datapath, checked before the daemon
//! starts (the systemd unit's `ExecStartPre`), so an old kernel or a missing cgroup2 mount is
//! one clear line in the journal instead of a program the verifier refuses.

use anyhow::{bail, Context as _, Result};

/// The oldest kernel bosun's programs load on: the tc programs' `bpf_ktime_get_coarse_ns`
/// (5.11) is the newest feature they need, after cgroup `getpeername4` hooks (5.8) and cgroup
/// bpf_links (5.7). Kernels before 6.6 (no tcx) get the tc programs on clsact instead.
pub const MIN_KERNEL: (u32, u32) = (5, 11);

/// The kernel's `major.minor` from a release string such as `6.1.0-18-amd64`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Refuses a kernel older than [`MIN_KERNEL`], naming both.
pub fn check_kernel(release: &str) -> Result<()> {
    let Some(version) = kernel_version(release) else {
        bail!("cannot read the kernel version from its release {release:?}");
    };
    if version < MIN_KERNEL {
        bail!(
            "kernel {release} is too old: bosun's eBPF datapath needs Linux {}.{} or newer",
            MIN_KERNEL.0,
            MIN_KERNEL.1
        );
    }
    Ok(())
}

/// Checks the running kernel and the cgroup2 mount; prints what it found.
pub fn preflight() -> Result<()> {
    let uname = nix::sys::utsname::uname().context("reading the kernel's release (uname)")?;
    let release = uname.release().to_string_lossy().into_owned();
    check_kernel(&release)?;
    let cgroup2 = bosun::util::cgroup2_root().map_err(|e| {
        anyhow::anyhow!(
            "{e}: bosun needs a cgroup v2 hierarchy (unified, or hybrid with cgroup2 mounted, e.g. at /sys/fs/cgroup/unified)"
        )
    })?;
    println!(
        "kernel {release}: ok (needs {}.{}+); cgroup2 at {}: ok",
        MIN_KERNEL.0,
        MIN_KERNEL.1,
        cgroup2.display()
    );
    // What the daemon will use on the node's external interfaces (pods' interfaces get clsact
    // filters on every kernel).
    let node = bosun_netdp::tc::TcMode::detect(bosun_netdp::tc::Interfaces::Node)
        .context("choosing how tc programs attach")?;
    println!(
        "tc programs on the node's interfaces: {}",
        match node {
            bosun_netdp::tc::TcMode::Tcx => "tcx links",
            bosun_netdp::tc::TcMode::Clsact => "clsact filters (no tcx before Linux 6.6)",
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_are_compared_by_major_and_minor() {
        assert!(check_kernel("6.18.0").is_ok());
        assert!(check_kernel("5.11.0").is_ok());
        assert!(check_kernel("5.10.0-28-amd64").is_err());
        assert!(check_kernel("6.1.0-18-cloud-amd64").is_ok());
        let old = check_kernel("5.4.0-150-generic").unwrap_err().to_string();
        assert!(
            old.contains("5.4.0-150-generic") && old.contains("5.11"),
            "{old}"
        );
        assert!(check_kernel("4.19.0").is_err());
        assert!(check_kernel("garbage").is_err());
    }
}
