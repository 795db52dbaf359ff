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
/// At each tick it also lets go of the code that only the start-up or a burst of work ran
/// ([`CodeRelease`]).
pub async fn release_freed_memory_periodically() {
    let mut tick = tokio::time::interval(TRIM_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut code = CodeRelease::default();
    loop {
        tick.tick().await;
        release_freed_memory();
        if code.due(file_backed_rss()) {
            release_binary_pages();
        }
    }
}

/// When to page bosun's own binary out ([`release_binary_pages`]): a period after the start
/// (the first tick is at once), and after a burst of work (a hundred pods started) once it is
/// over: the resident file-backed pages have grown by [`CodeRelease::GROWTH`] over what the
/// daemon mapped again in the period after the last release, and stopped growing (by less
/// than [`CodeRelease::STILL`] since the last tick). In a steady state the daemon maps again
/// only the code it keeps running, and is not paged out again.
#[derive(Debug, Default)]
pub struct CodeRelease {
    ticks: u32,
    /// The file-backed RSS a period after the last release.
    settled: Option<u64>,
    /// The file-backed RSS at the last tick.
    last: Option<u64>,
    released_last_tick: bool,
}

impl CodeRelease {
    /// Growth of the file-backed RSS, in bytes, that has the binary paged out again.
    pub const GROWTH: u64 = 2 << 20;
    /// Growth over one tick, in bytes, under which a burst of work is taken to be over.
    pub const STILL: u64 = 256 << 10;

    /// Whether to release at this tick, given the file-backed RSS now (`None`: unknown).
    pub fn due(&mut self, rss: Option<u64>) -> bool {
        self.ticks = self.ticks.saturating_add(1);
        let last = std::mem::replace(&mut self.last, rss);
        let release = match (self.ticks, rss) {
            (1, _) => false,
            (2, _) => true,
            (_, None) => false,
            (_, Some(rss)) if self.released_last_tick => {
                self.settled = Some(rss);
                false
            }
            (_, Some(rss)) => {
                let grown = self
                    .settled
                    .is_some_and(|settled| rss > settled.saturating_add(Self::GROWTH));
                let still = last.is_some_and(|last| rss <= last.saturating_add(Self::STILL));
                grown && still
            }
        };
        self.released_last_tick = release;
        release
    }
}

/// The process's file-backed resident memory (`RssFile` of `/proc/self/status`), in bytes.
fn file_backed_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("RssFile:"))?
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// Unmaps the pages of bosun's own binary (its code and read-only data) from the process, so
/// that what only the start-up or a burst of work ran (the command line, the kernel's BTF
/// parsed by the loader, the first lists, a hundred pods started) stops counting in its memory;
/// what runs later is mapped again as it runs. The kernel maps 64 KiB of a file around each
/// page touched; the steady state's functions are placed together at the front of the code
/// (agent/build.rs) so that what it maps again is little. `MADV_PAGEOUT` (Linux 5.4); an older
/// kernel's refusal changes nothing.
pub fn release_binary_pages() {
    #[cfg(target_os = "linux")]
    {
        let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
            return;
        };
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return;
        };
        for (start, end) in binary_mappings(&maps, &exe.to_string_lossy()) {
            // SAFETY: the range is a mapping of this process's own binary, read-only; paging
            // it out only drops pages the kernel maps again from the file when touched.
            unsafe {
                nix::libc::madvise(
                    start as *mut nix::libc::c_void,
                    end - start,
                    nix::libc::MADV_PAGEOUT,
                );
            }
        }
    }
}

/// The address ranges of `/proc/self/maps` (`maps`) that map the file `exe` without write
/// permission.
fn binary_mappings(maps: &str, exe: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let permissions = fields.next()?;
            // offset, device, inode, then the path
            let path = fields.nth(3)?;
            if path != exe || permissions.contains('w') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            (end > start).then_some((start, end))
        })
        .collect()
}

#[cfg(test)]
mod startup_code_tests {
    use super::{binary_mappings, CodeRelease};

    #[test]
    fn the_binary_is_paged_out_after_the_start_and_after_bursts_only() {
        const MIB: u64 = 1 << 20;
        let mut code = CodeRelease::default();
        // The first tick comes at the start; the second, a period later, releases.
        assert!(!code.due(Some(40 * MIB)));
        assert!(code.due(Some(40 * MIB)));
        // The period after it tells what the daemon keeps running.
        assert!(!code.due(Some(5 * MIB)));
        assert!(!code.due(Some(6 * MIB)));
        assert!(!code.due(None));
        // A burst grows it beyond that: released once it stops growing, then settled again.
        assert!(!code.due(Some(12 * MIB)));
        assert!(!code.due(Some(18 * MIB)));
        assert!(code.due(Some(18 * MIB)));
        assert!(!code.due(Some(6 * MIB)));
        assert!(!code.due(Some(7 * MIB)));
        assert!(!code.due(Some(7 * MIB)));
        assert!(!code.due(Some(9 * MIB)));
        assert!(code.due(Some(9 * MIB)));
    }

    #[test]
    fn the_binarys_read_only_mappings_are_found_in_maps() {
        let maps = "\
55d6790c0000-55d6790e0000 r--p 00000000 fd:01 123 /usr/bin/bosun
55d6790e0000-55d67aa00000 r-xp 00020000 fd:01 123 /usr/bin/bosun
55d67aa00000-55d67aa80000 rw-p 01940000 fd:01 123 /usr/bin/bosun
55d67b000000-55d67b100000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000020000 r-xp 00000000 fd:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
";
        assert_eq!(
            binary_mappings(maps, "/usr/bin/bosun"),
            [
                (0x55d6790c0000, 0x55d6790e0000),
                (0x55d6790e0000, 0x55d67aa00000)
            ]
        );
    }
}
