//! Small helpers shared by the daemon's parts, which know nothing of each other.

use std::time::Duration;

/// The environment variable that names the node's cgroup2 root where /proc/self/mounts
/// cannot: in a container, the runtime's own /sys/fs/cgroup is the container's cgroup
/// namespace, so the DaemonSet mounts the host's root elsewhere and names it here.
pub const CGROUP2_ROOT_ENV: &str = "BOSUN_CGROUP2_ROOT";

/// The cgroup2 directory the service programs attach to: [`CGROUP2_ROOT_ENV`] when set, else
/// the first cgroup2 mount.
pub fn cgroup2_root() -> Result<std::path::PathBuf, bosun_netdp::Error> {
    match std::env::var_os(CGROUP2_ROOT_ENV) {
        Some(root) if !root.is_empty() => Ok(root.into()),
        _ => bosun_netdp::service::find_cgroup2(),
    }
}

/// An error and its causes on one line, `outer: inner: innermost`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Sleeps for `duration`, or for ever when there is none (a `select!` branch that never
/// fires).
pub async fn sleep_or_never(duration: Option<Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}

/// A Go duration, as Kubernetes' config files write them (`metav1.Duration`): `30s`, `2m0s`,
/// `1h30m`, `500ms`.
pub fn go_duration(text: &str) -> Result<std::time::Duration, String> {
    let mut rest = text.trim();
    if rest == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let mut total = 0f64;
    if rest.is_empty() {
        return Err("empty".into());
    }
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or("a number without a unit")?;
        let (number, tail) = rest.split_at(number_end);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("bad number {number:?}"))?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("unknown unit {other:?}")),
        };
        total += value * seconds;
        rest = tail;
    }
    Ok(std::time::Duration::from_secs_f64(total))
}

/// Has glibc keep one heap for all threads (`M_ARENA_MAX` 1), as `MALLOC_ARENA_MAX=1` would.
/// By default each thread that allocates gets an arena of its own and keeps what it freed:
/// the blocking threads that compile the datapaths and read manifests left some 19 MiB that
/// way (45.5 → 26.1 MiB RSS, a node in a cluster with 10 probed pods). The daemon's work is
/// on one thread, so one heap costs it no contention that matters. Call it first in `main`,
/// before any other thread exists; an environment's `MALLOC_ARENA_MAX` still wins.
pub fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a tunable of glibc's allocator; with no other thread
        // running yet, nothing allocates concurrently. A refusal (0) leaves the default.
        unsafe {
            nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
        }
    }
}

/// Hands memory freed since to the kernel. Reading a large manifest directory allocates
/// hundreds of megabytes for a moment (the YAML, its documents, their decoded copies); glibc
/// keeps what was freed in its arenas, so without this the daemon's RSS would stay at that
/// peak. Called after large events, and every [`TRIM_PERIOD`] by
/// [`release_freed_memory_periodically`].
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only gives whole free pages of glibc's heaps back to the kernel; it
    // touches no memory in use and is thread-safe (it takes each arena's lock in turn).
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// How often a long-running daemon gives freed heap pages back to the kernel.
pub const TRIM_PERIOD: std::time::Duration = std::time::Duration::from_secs(30);

/// Gives freed heap pages back every [`TRIM_PERIOD`], as Go's background scavenger does for
/// kubelet and kube-proxy. glibc returns only the top of its heap on its own; what bursts of
/// work free below it (a hundred pods started at once, the kernel's BTF parsed while the
/// datapath loads) stays resident: 4.6 of 15.5 MiB of anonymous memory with 100 probed pods.
pub async fn release_freed_memory_periodically() {
    let mut tick = tokio::time::interval(TRIM_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        release_freed_memory();
    }
}
