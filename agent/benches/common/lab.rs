//! What the benchmarks that build their own networks share: turning Ctrl-C into a clean
//! exit, running `ip`, entering network namespaces, pinning threads to CPUs, and reading what
//! the machine is and what the hypervisor took from it.
//!
//! A module of its own beside `common`, included only by the benchmarks that use it, so that
//! the pod benchmark does not carry it unused.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::{SigSet, Signal};

// ---- interrupts ---------------------------------------------------------------------------

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread, and so in every thread started after it
/// (children get a clean mask from `Command`), and turns them into a flag that every long step
/// checks, so that an interrupted run still removes what it created. A second signal exits at
/// once; the next run sweeps up what that leaves. `bench` names the benchmark in messages.
pub fn catch_interrupts(bench: &'static str) -> Result<()> {
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(signal);
    }
    signals.thread_block().context("blocking signals")?;
    std::thread::Builder::new()
        .name(format!("{bench}-signals"))
        .spawn(move || loop {
            let Ok(signal) = signals.wait() else { return };
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                eprintln!("{bench} bench: {signal}: exiting now; the next run cleans up");
                std::process::exit(130);
            }
            eprintln!("{bench} bench: {signal}: cleaning up (again to exit at once)");
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Whether a signal asked the run to stop.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

// ---- commands, namespaces, CPUs -----------------------------------------------------------

pub fn ip(args: &[&str]) -> Result<String> {
    run_command("ip", args)
}

pub fn run_command(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        output.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Where the clients run, and the softirq work of their packets with them (a veth delivers on
/// the sender's CPU), and where the server accepts, out of the way.
pub const CLIENT_CPU: usize = 0;
pub const SERVER_CPU: usize = 1;

/// Keeps the calling thread on one CPU: a connect's latency depends on whether its client
/// last ran on the CPU it runs on now, and letting the scheduler decide would spread that over
/// the targets unevenly.
pub fn pin(cpu: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu % online_cpus()).context("naming a CPU")?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("pinning a thread to CPU {cpu}"))
}

/// The CPUs online, whatever the calling thread may run on (which is what
/// `available_parallelism` counts, and a pinned thread's children inherit).
fn online_cpus() -> usize {
    // SAFETY: sysconf reads a system constant and touches no memory of the caller's.
    let n = unsafe { nix::libc::sysconf(nix::libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).ok().filter(|n| *n > 0).unwrap_or(1)
}

/// Moves the calling thread, and only it, into the named network namespace.
pub fn enter_netns(name: &str) -> Result<()> {
    let path = Path::new("/run/netns").join(name);
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {name}"))
}

// ---- the machine --------------------------------------------------------------------------

/// "N CPUs (model), kernel RELEASE", for the head of a report.
pub fn machine() -> String {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "?".to_owned())
    };
    let cpus = online_cpus();
    let model = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or_else(|| "?".to_owned(), |m| m.trim().to_owned());
    format!(
        "{cpus} CPUs ({model}), kernel {}",
        read("/proc/sys/kernel/osrelease")
    )
}

/// The CPU time all CPUs have lost to the hypervisor since boot (`steal` in /proc/stat), a
/// source of noise no interleaving removes.
pub fn stolen() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    // "cpu user nice system idle iowait irq softirq steal ...", in clock ticks.
    let ticks: u64 = stat
        .lines()
        .next()?
        .split_whitespace()
        .nth(8)?
        .parse()
        .ok()?;
    Some(Duration::from_millis(
        ticks * 1000 / crate::common::CLOCK_TICKS_PER_SECOND,
    ))
}

// ---- reporting ----------------------------------------------------------------------------

pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// A ratio as printed (two decimals), so that a verdict never contradicts the number shown.
pub fn hundredths(ratio: f64) -> i64 {
    (ratio * 100.0).round() as i64
}

pub fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}
